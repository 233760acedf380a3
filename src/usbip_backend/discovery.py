"""mDNS / DNS-SD discovery of USB/IP servers (``_usbip._tcp``) with python-zeroconf.

There is no registered DNS-SD type for USB/IP; the ESP32 USB/IP bridge advertises
``_usbip._tcp.local.`` with TXT keys ``transport``, ``state``, ``count``, ``busid`` (or
``multi``), ``vid``, ``pid``, ``target`` and ``board_id``, so that is the default type, and it
is a parameter.

zeroconf is imported lazily: importing this module costs nothing, and a missing zeroconf gives
a clear :class:`DiscoveryError` only when discovery is actually used.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

from .errors import DiscoveryError

log = logging.getLogger(__name__)

#: DNS-SD service type the ESP32 bridge (and this project's ``sim --mdns``) advertise.
SERVICE_TYPE = "_usbip._tcp.local."
#: Longest single resolve (SRV/TXT/A/AAAA) after browsing, in milliseconds.
_RESOLVE_MS = 1500
#: Bound on the number of services handled in one browse (a hostile network cannot grow it).
_MAX_SERVICES = 256

#: The keys a server reads as under ``server[key]``: the dict keys 0.0.1's discovery returned,
#: in its order, so code written for those dicts keeps working on :class:`ServerInfo`.
MAPPING_KEYS = ("name", "host", "address", "addresses", "port", "txt", "type")


@dataclass(frozen=True)
class ServerInfo(Mapping[str, Any]):
    """One USB/IP server found by mDNS.

    Also a read-only mapping with the keys of :data:`MAPPING_KEYS` (``server["host"]``,
    ``server.get("port")``, ``dict(server)``), valued as the dicts of version 0.0.1 were: ``name``,
    ``host`` and ``type`` are str, ``address`` the first address (``""`` when none),
    ``addresses`` a list of str, ``port`` an int and ``txt`` a dict of str to str.
    """

    #: Service instance name, without the service type (``"usbip-a1b2c3"``).
    name: str
    #: The server's host name from the SRV record, without the trailing dot (``"usbip-a1b2c3.local"``).
    host: str
    port: int
    #: Every address the server announced, IPv4 first, as strings (IPv6 link-local with ``%scope``).
    addresses: Tuple[str, ...] = ()
    #: TXT record, decoded to ``str`` (a key without value maps to ``""``).
    properties: Dict[str, str] = field(default_factory=dict, hash=False)
    #: The DNS-SD type it was found under, with the trailing dot (``"_usbip._tcp.local."``).
    service_type: str = SERVICE_TYPE

    @property
    def address(self) -> str:
        """Where to connect: the first IPv4 address, else the first address, else the host name."""
        for addr in self.addresses:
            if ":" not in addr:
                return addr
        return self.addresses[0] if self.addresses else self.host

    def describe(self) -> str:
        """One line: ``name  host:port  addresses  key=value ...``."""
        props = " ".join(f"{k}={v}" for k, v in sorted(self.properties.items()))
        addrs = ",".join(self.addresses) or "-"
        text = f"{self.name}  {self.host}:{self.port}  [{addrs}]"
        return f"{text}  {props}" if props else text

    def to_json(self) -> Dict[str, Any]:
        return {
            "name": self.name,
            "host": self.host,
            "port": self.port,
            "address": self.address,
            "addresses": list(self.addresses),
            "properties": dict(self.properties),
        }

    # -- the read-only mapping -------------------------------------------------------------------
    def __getitem__(self, key: str) -> Any:
        if key == "name":
            return self.name
        if key == "host":
            return self.host
        if key == "address":
            # Not the property: the mapping never falls back to the host name, a dict never did.
            return self.addresses[0] if self.addresses else ""
        if key == "addresses":
            return list(self.addresses)
        if key == "port":
            return self.port
        if key == "txt":
            return dict(self.properties)
        if key == "type":
            return self.service_type
        raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        return iter(MAPPING_KEYS)

    def __len__(self) -> int:
        return len(MAPPING_KEYS)

    def __contains__(self, key: object) -> bool:
        return key in MAPPING_KEYS

    def __eq__(self, other: object) -> bool:
        # Another ServerInfo compares field by field (as a dataclass); a plain mapping compares
        # as a mapping, so ``servers == [{"name": ..., ...}]`` holds as it did for dicts.
        if isinstance(other, ServerInfo):
            return self._key() == other._key()
        if isinstance(other, Mapping):
            return dict(self.items()) == dict(other.items())
        return NotImplemented

    def _key(self) -> Tuple[Any, ...]:
        return (self.name, self.host, self.port, self.addresses, self.properties, self.service_type)


def _import_zeroconf() -> Any:
    try:
        import zeroconf
    except ImportError as exc:  # pragma: no cover - zeroconf is a dependency; kept for slim installs
        raise DiscoveryError(
            "mDNS discovery needs python-zeroconf: pip install zeroconf (or pass a host explicitly)"
        ) from exc
    return zeroconf


def _decode(value: Optional[Any]) -> str:
    if value is None:
        return ""
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)


def _ip_version_for(zc_mod: Any, interfaces: Optional[Sequence[str]]) -> Any:
    """V4Only unless an IPv6 interface address is named (zeroconf's own default logic, made explicit)."""
    if not interfaces:
        return zc_mod.IPVersion.V4Only
    has4 = has6 = False
    for item in interfaces:
        try:
            version = ipaddress.ip_address(str(item).split("%")[0]).version
        except ValueError:
            has4 = True  # an interface index or name: let zeroconf decide per socket
            continue
        has4 |= version == 4
        has6 |= version == 6
    if has6 and not has4:
        return zc_mod.IPVersion.V6Only
    if has6:
        return zc_mod.IPVersion.All
    return zc_mod.IPVersion.V4Only


def _strip_type(name: str, service_type: str) -> str:
    suffix = "." + service_type
    return name[: -len(suffix)] if name.endswith(suffix) else name.rstrip(".")


def _sort_addresses(addrs: Sequence[str]) -> Tuple[str, ...]:
    v4 = [a for a in addrs if ":" not in a]
    v6 = [a for a in addrs if ":" in a]
    return tuple(dict.fromkeys(v4 + v6))


def discover(
    timeout: float = 2.0,
    interfaces: Optional[Sequence[str]] = None,
    service_type: str = SERVICE_TYPE,
) -> List[ServerInfo]:
    """Browse ``service_type`` for ``timeout`` seconds and return every server that resolved.

    ``interfaces`` is None for zeroconf's default (all interfaces) or a list of local addresses
    to send and listen on, e.g. ``["127.0.0.1"]`` to keep mDNS on loopback. The zeroconf
    instance and its threads are closed before this returns. Results are sorted by name.
    """
    if timeout < 0:
        raise ValueError("timeout must be >= 0")
    zc_mod = _import_zeroconf()
    if not service_type.endswith("."):
        service_type += "."
    iface_arg = list(interfaces) if interfaces else zc_mod.InterfaceChoice.All
    try:
        zc = zc_mod.Zeroconf(interfaces=iface_arg, ip_version=_ip_version_for(zc_mod, interfaces))
    except OSError as exc:
        where = ", ".join(interfaces) if interfaces else "all interfaces"
        raise DiscoveryError(f"cannot start mDNS on {where}: {exc}") from exc

    names: Dict[str, None] = {}  # insertion-ordered set
    lock = threading.Lock()

    class _Listener:
        def add_service(self, zc_: Any, type_: str, name: str) -> None:
            with lock:
                if len(names) < _MAX_SERVICES:
                    names[name] = None

        def update_service(self, zc_: Any, type_: str, name: str) -> None:
            self.add_service(zc_, type_, name)

        def remove_service(self, zc_: Any, type_: str, name: str) -> None:
            with lock:
                names.pop(name, None)

    found: List[ServerInfo] = []
    browser = None
    try:
        browser = zc_mod.ServiceBrowser(zc, service_type, _Listener())
        threading.Event().wait(timeout)  # the browse window: answers arrive on zeroconf's threads
        with lock:
            pending = list(names)
        for name in pending:
            info = zc_mod.ServiceInfo(service_type, name)
            if not info.request(zc, _RESOLVE_MS):
                log.debug("mDNS: %s did not resolve within %d ms", name, _RESOLVE_MS)
                continue
            addresses = _sort_addresses(info.parsed_scoped_addresses(zc_mod.IPVersion.All))
            props = {_decode(k): _decode(v) for k, v in (info.properties or {}).items()}
            server = ServerInfo(
                name=_strip_type(name, service_type),
                host=(info.server or "").rstrip("."),
                port=int(info.port or 0),
                addresses=addresses,
                properties=props,
                service_type=service_type,
            )
            log.debug("mDNS: found %s", server.describe())
            found.append(server)
    finally:
        if browser is not None:
            browser.cancel()  # joins the browser thread
        zc.close()  # stops and joins zeroconf's event-loop thread, closes its sockets
    found.sort(key=lambda s: (s.name, s.host, s.port))
    return found


def discover_usbip_servers(
    timeout: float = 3.0,
    interfaces: Optional[Sequence[str]] = None,
    service_type: str = SERVICE_TYPE,
) -> List[ServerInfo]:
    """:func:`discover` with the defaults of version 0.0.1: browse 3 s, sort by host, port, name.

    Each :class:`ServerInfo` also reads as 0.0.1's dict did (``s["host"]``, ``s["port"]``,
    ``s["txt"]``), so code written for either works on the result.
    """
    servers = discover(timeout=timeout, interfaces=interfaces, service_type=service_type)
    servers.sort(key=lambda s: (s.host, s.port, s.name))
    return servers


def resolve_single_server(
    timeout: float = 2.0,
    interfaces: Optional[Sequence[str]] = None,
    service_type: str = SERVICE_TYPE,
) -> ServerInfo:
    """Discover servers and return the only one; raise :class:`DiscoveryError` for none or several.

    Used when no host was given (``get_backend()`` without a host, the CLI without ``--host``).
    """
    servers = discover(timeout=timeout, interfaces=interfaces, service_type=service_type)
    if not servers:
        raise DiscoveryError(
            f"no USB/IP server answered mDNS ({service_type.rstrip('.')}) within {timeout:g} s; "
            "give the server's address with --host (or get_backend(host))"
        )
    if len(servers) > 1:
        listing = "; ".join(f"{s.name} at {s.address}:{s.port}" for s in servers)
        raise DiscoveryError(
            f"{len(servers)} USB/IP servers answered mDNS, choose one with --host: {listing}",
            servers=servers,
        )
    server = servers[0]
    log.info("mDNS: using the only USB/IP server found: %s at %s:%d", server.name, server.address, server.port)
    return server
