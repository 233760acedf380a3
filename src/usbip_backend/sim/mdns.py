"""The virtual server's mDNS / DNS-SD advertisement, shaped like the ESP32 USB/IP bridge's.

The bridge advertises ``_usbip._tcp.local.`` with TXT keys ``transport``, ``state``, ``count``,
``busid`` (or ``multi``), ``vid``, ``pid``, ``target`` and ``board_id``, host name
``usbip-xxxxxx.local``. :func:`txt_record` fills the same keys from the virtual server's devices;
:class:`MdnsAdvertiser` registers them with python-zeroconf on the given interfaces only (by
default 127.0.0.1, so nothing leaves the machine) and re-publishes the TXT record whenever the
server's state changes (a client imports or releases a device, a device is plugged or unplugged).

zeroconf is imported when an advertisement starts: importing the virtual server costs nothing more.
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import socket
import threading
from typing import TYPE_CHECKING, Callable, Collection, Dict, List, Optional, Sequence

from ..discovery import SERVICE_TYPE

if TYPE_CHECKING:
    from zeroconf import IPVersion, ServiceInfo, Zeroconf

    from .device import Device

log = logging.getLogger(__name__)

#: Where the virtual server advertises unless told otherwise: loopback only.
DEFAULT_INTERFACES = ("127.0.0.1",)
#: The TXT ``target`` of the virtual server (the bridge puts its chip there, ``esp32s3``).
TARGET = "sim"
#: Longest wait for a TXT update or the goodbyes while stopping (zeroconf needs about 0.5 s).
_STOP_WAIT = 10.0


class MdnsError(Exception):
    """The advertisement could not start (no multicast socket on the interface, a name clash)."""


def txt_record(devices: Sequence["Device"], imported: Collection[str]) -> Dict[str, str]:
    """The TXT record for a server exporting ``devices``, of which the busids in ``imported``
    are held by clients: the ESP32 bridge's keys, values as text, but for ``board_id``, which
    names the advertisement and is added by :class:`MdnsAdvertiser`.

    ``state`` is ``busy`` while a client holds any device, else ``idle``; ``count`` is how many
    devices are on the bus; ``busid`` is the only device's busid, ``multi`` for several (empty
    for none); ``vid``/``pid`` (``0x303a`` style) are the first device's.
    """
    first = devices[0] if devices else None
    if len(devices) > 1:
        busid = "multi"
    else:
        busid = (first.busid or "") if first is not None else ""
    return {
        "transport": "tcp",
        "state": "busy" if any(d.busid in imported for d in devices) else "idle",
        "count": str(len(devices)),
        "busid": busid,
        "vid": f"0x{first.vid:04x}" if first is not None else "",
        "pid": f"0x{first.pid:04x}" if first is not None else "",
        "target": TARGET,
    }


def board_id(port: int) -> str:
    """Six hex digits naming one virtual server (host and TCP port), as the bridge's come from
    its MAC address: two servers on one network never share one."""
    return hashlib.sha256(f"{socket.gethostname()}:{port}".encode()).hexdigest()[:6]


def _ip_version(addresses: Sequence[str]) -> "IPVersion":
    from zeroconf import IPVersion

    versions = set()
    for address in addresses:
        try:
            versions.add(ipaddress.ip_address(address.split("%")[0]).version)
        except ValueError:
            raise MdnsError(f"mDNS interface {address!r} is not an IP address") from None
    if versions == {6}:
        return IPVersion.V6Only
    if versions == {4, 6}:
        return IPVersion.All
    return IPVersion.V4Only


class MdnsAdvertiser:
    """Advertise one USB/IP server over mDNS until :meth:`stop`.

    Args:
        port: the server's TCP port (the SRV record).
        addresses: IP addresses to publish for the host name (the A/AAAA records).
        properties: returns the current TXT record (called from the advertiser's thread after
            :meth:`changed`, and once in :meth:`start`); ``board_id`` is added to it here.
        interfaces: local addresses zeroconf sends and listens on; 127.0.0.1 by default.
        name: the service instance name; default ``usbip-sim-<board_id>``.
        service_type: default ``_usbip._tcp.local.``.
    """

    def __init__(self, port: int, addresses: Sequence[str], properties: Callable[[], Dict[str, str]], *,
                 interfaces: Sequence[str] = DEFAULT_INTERFACES, name: Optional[str] = None,
                 service_type: str = SERVICE_TYPE) -> None:
        if not service_type.endswith("."):
            service_type += "."
        self.port = port
        self.addresses: List[str] = list(addresses)
        self.interfaces: List[str] = list(interfaces)
        self.service_type = service_type
        self.board_id = board_id(port)
        #: the instance name (zeroconf may have renamed it on a clash: see :attr:`name` after start)
        self.name = name or f"usbip-sim-{self.board_id}"
        self.host = f"usbip-sim-{self.board_id}.local"
        self._properties = properties
        self._zc: Optional["Zeroconf"] = None
        self._info: Optional["ServiceInfo"] = None
        self._published: Dict[str, str] = {}
        self._cond = threading.Condition()
        self._wake = threading.Event()
        self._stopping = False
        self._thread: Optional[threading.Thread] = None

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self) -> "MdnsAdvertiser":
        """Register the service (probing, then announcing: about 1.7 s) and start following
        the server's state. Raises :class:`MdnsError` when it cannot."""
        import zeroconf

        if self._zc is not None:
            raise RuntimeError("advertisement already started")
        if not self.interfaces:
            raise MdnsError("no interface to advertise on")
        where = ", ".join(self.interfaces)
        try:
            zc = zeroconf.Zeroconf(interfaces=list(self.interfaces), ip_version=_ip_version(self.interfaces))
        except OSError as exc:
            raise MdnsError(f"cannot start mDNS on {where}: {exc}") from exc
        try:
            props = self._current()
            info = self._service_info(props)
            zc.register_service(info, allow_name_change=True)
        except (OSError, zeroconf.Error, ValueError) as exc:
            zc.close()
            raise MdnsError(f"cannot register {self.name}.{self.service_type} on {where}: "
                            f"{exc or type(exc).__name__}") from exc
        except BaseException:
            zc.close()
            raise
        self.name = info.name[: -len(self.service_type) - 1]
        self._zc, self._info = zc, info
        with self._cond:
            self._published = props
            self._cond.notify_all()
        self._thread = threading.Thread(target=self._follow, name=f"usbip-sim-mdns-{self.port}", daemon=True)
        self._thread.start()
        log.info("mDNS: advertising %s.%s on %s (port %d, %s)", self.name, self.service_type, where, self.port,
                 " ".join(f"{k}={v}" for k, v in props.items()))
        return self

    def changed(self) -> None:
        """The server's state changed: publish the new TXT record soon (never blocks)."""
        self._wake.set()

    def stop(self) -> None:
        """Withdraw the service (goodbye packets, so browsers drop it at once) and close."""
        zc = self._zc
        if zc is None:
            return
        self._stopping = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join(_STOP_WAIT)
            self._thread = None
        try:
            zc.unregister_all_services()  # waits for the goodbyes to go out
        except Exception:  # a stuck event loop must not keep the server from stopping
            log.warning("mDNS: withdrawing %s failed", self.name, exc_info=True)
        zc.close()
        self._zc = self._info = None
        log.info("mDNS: %s.%s withdrawn", self.name, self.service_type)

    # -- what is published -------------------------------------------------------------------------
    @property
    def properties(self) -> Dict[str, str]:
        """The TXT record published now."""
        with self._cond:
            return dict(self._published)

    def wait_published(self, predicate: Callable[[Dict[str, str]], bool], timeout: Optional[float] = None) -> bool:
        """Wait until the published TXT record satisfies ``predicate``; True if it does."""
        with self._cond:
            return self._cond.wait_for(lambda: predicate(dict(self._published)), timeout)

    def _current(self) -> Dict[str, str]:
        props = dict(self._properties())
        props["board_id"] = self.board_id
        return props

    def _service_info(self, props: Dict[str, str]) -> "ServiceInfo":
        from zeroconf import ServiceInfo

        # The instance name is registered exactly as given (zeroconf builds the PTR from it).
        full = f"{self.name}.{self.service_type}"
        return ServiceInfo(self.service_type, full, port=self.port, properties=dict(props),
                           server=f"{self.host}.", parsed_addresses=list(self.addresses))

    def _follow(self) -> None:
        """Re-publish the TXT record after each change (coalesced: one update for a burst)."""
        while True:
            self._wake.wait()
            if self._stopping:
                return
            self._wake.clear()  # before reading the state: a change after this wakes us again
            try:
                props = self._current()
                if props == self.properties:
                    continue
                info = self._service_info(props)
                zc = self._zc
                assert zc is not None
                zc.update_service(info)  # blocks while it announces (about 0.5 s)
            except Exception:  # the server keeps serving with the last TXT published
                log.warning("mDNS: updating the TXT record of %s failed", self.name, exc_info=True)
                continue
            self._info = info
            with self._cond:
                self._published = props
                self._cond.notify_all()
            log.debug("mDNS: %s now %s", self.name, " ".join(f"{k}={v}" for k, v in props.items()))
