"""``usbip://HOST[:PORT]/BUSID`` and ``usbip://HOST[:PORT]/VID:PID`` URLs (pure: no I/O)."""

from __future__ import annotations

import re
import urllib.parse
from dataclasses import dataclass
from typing import Any, Dict, Optional

from .. import protocol as P

_BUSID = re.compile(r"^\d+-\d+(\.\d+)*$")
_VIDPID = re.compile(r"^([0-9a-fA-F]{1,4}):([0-9a-fA-F]{1,4})$")
_LOGGING = ("debug", "info", "warning", "error")

FORMS = ("usbip://HOST[:PORT]/BUSID (e.g. usbip://192.168.1.20/1-2) or "
         "usbip://HOST[:PORT]/VID:PID (hex, e.g. usbip://192.168.1.20:3240/303a:1001), "
         "options ?baudrate=N&interface=N&timeout=SECONDS&wait=SECONDS&logging=debug")


@dataclass(frozen=True)
class SerialUrl:
    host: str
    port: int
    busid: Optional[str] = None  #: the device's busid, or None when chosen by ids
    vid: Optional[int] = None
    pid: Optional[int] = None
    interface: Optional[int] = None  #: which serial function (its first interface number)
    timeout: float = 5.0  #: seconds for the import and the requests the port sends
    logging: Optional[str] = None
    baudrate: Optional[int] = None  #: ``?baudrate=`` (applied when the port opens)
    #: ``?wait=``: seconds opening waits for a device that is not on the server to be exported
    #: (None: not given, the port's defaults apply; 0: fail at once)
    wait: Optional[float] = None

    @property
    def where(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def device(self) -> str:
        if self.busid is not None:
            return f"busid {self.busid}"
        return f"{self.vid:04x}:{self.pid:04x}"


def parse_url(url: str) -> SerialUrl:
    """Parse a ``usbip://`` URL.

    Raises:
        ValueError: anything else, saying what is wrong and what the forms are.
    """
    try:
        parts = urllib.parse.urlsplit(url)
        host = parts.hostname
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"bad usbip:// URL {url!r}: {exc}; expected {FORMS}") from None
    if parts.scheme.lower() != "usbip":
        raise ValueError(f"not a usbip:// URL: {url!r}; expected {FORMS}")
    if not host:
        raise ValueError(f"no host in {url!r}; expected {FORMS}")
    target = parts.path.strip("/")
    if not target:
        raise ValueError(f"no device in {url!r}: give a busid or VID:PID after the host; expected {FORMS}")
    fields: Dict[str, Any] = {}
    if _BUSID.match(target):
        P.encode_busid(target)
        fields["busid"] = target
    else:
        m = _VIDPID.match(target)
        if m is None:
            raise ValueError(f"{target!r} in {url!r} is neither a busid (like 1-2 or 1-1.3) nor a "
                             f"VID:PID in hex (like 303a:1001); expected {FORMS}")
        fields["vid"], fields["pid"] = int(m.group(1), 16), int(m.group(2), 16)
    interface: Optional[int] = None
    timeout = 5.0
    level: Optional[str] = None
    baudrate: Optional[int] = None
    wait: Optional[float] = None
    for name, values in urllib.parse.parse_qs(parts.query, keep_blank_values=True).items():
        value = values[-1]
        if name == "interface":
            if not value.isdigit() or int(value) > 255:
                raise ValueError(f"interface={value!r}: expected an interface number 0..255")
            interface = int(value)
        elif name == "timeout":
            try:
                timeout = float(value)
            except ValueError:
                raise ValueError(f"timeout={value!r}: expected seconds") from None
            if timeout < 0:
                raise ValueError(f"timeout={value!r}: expected seconds >= 0")
        elif name == "wait":
            try:
                wait = float(value)
            except ValueError:
                wait = None
            if wait is None or not 0 <= wait < float("inf"):  # (NaN fails both)
                raise ValueError(f"wait={value!r}: expected seconds >= 0 (how long opening waits for "
                                 "a device that is not on the server; 0: fail at once)")
        elif name == "logging":
            if value not in _LOGGING:
                raise ValueError(f"logging={value!r}: expected one of {', '.join(_LOGGING)}")
            level = value
        elif name == "baudrate":
            if not value.isdigit() or not 0 < int(value) < 2 ** 32:
                raise ValueError(f"baudrate={value!r}: expected a positive number")
            baudrate = int(value)
        else:
            raise ValueError(f"unknown option {name!r} in {url!r}; known: baudrate, interface, timeout, wait, logging")
    return SerialUrl(host, port if port is not None else P.USBIP_PORT, interface=interface,
                     timeout=timeout, logging=level, baudrate=baudrate, wait=wait, **fields)
