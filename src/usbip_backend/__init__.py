"""A pure-Python PyUSB backend speaking the USB/IP protocol as a client.

::

    import usb.core
    from usbip_backend import get_backend
    dev = usb.core.find(backend=get_backend("192.168.1.20"), idVendor=0x303A)

Names are imported lazily (PEP 562), so ``import usbip_backend`` stays cheap and an optional
dependency (zeroconf for discovery) is only loaded when used. To export another name, add it to
``_EXPORTS`` (name -> submodule).

Names of version 0.0.1 that have a new spelling are in ``_DEPRECATED``: they still work, and the
first use of each warns (DeprecationWarning) with the name to use instead.
"""

from __future__ import annotations

import importlib
import warnings
from typing import TYPE_CHECKING, Any, Dict, List, Tuple

from . import errors

__version__ = "0.1.0"

#: public name -> submodule that defines it
_EXPORTS: Dict[str, str] = {
    "get_backend": "backend",
    "UsbipBackend": "backend",
    "Connection": "engine",
    "Urb": "engine",
    "UrbState": "engine",
    "TransferType": "protocol",
    "Device": "device",
    "open_device": "device",
    "UsbipError": "errors",
    "ProtocolError": "errors",
    "ImportRefusedError": "errors",
    "ConnectionLostError": "errors",
    "UsbipTimeoutError": "errors",
    "UrbCancelledError": "errors",
    "UrbError": "errors",
    "NotFoundError": "errors",
    "list_devices": "client",
    "import_device": "client",
    "discover": "discovery",
    "discover_usbip_servers": "discovery",
    "ServerInfo": "discovery",
    "DiscoveryError": "errors",
    "TlsError": "errors",
    "command_connector": "engine.transport",
    "PcapWriter": "pcap",
    "SyslogReceiver": "syslog",
    "SimServer": "sim",
    "stream_in": "stream",
    "stream_out": "stream",
    "read_into_file": "stream",
    "write_from_file": "stream",
    "StreamError": "stream",
    "Progress": "stream",
}

#: old public name -> (submodule that defines it, what to use instead)
_DEPRECATED: Dict[str, Tuple[str, str]] = {
    "USBIPBackend": ("_compat", "usbip_backend.UsbipBackend (timeout= and pcap= are keyword arguments there) "
                                "or usbip_backend.get_backend"),
}

#: old submodules reachable as attributes, as 0.0.1's package imported them eagerly
_DEPRECATED_MODULES = ("mdns",)

# USBIPBackend stays in __all__: a star import of 0.0.1 code must still bind it (and warns).
__all__: List[str] = ["errors", "__version__", *_EXPORTS, *_DEPRECATED]

if TYPE_CHECKING:  # pragma: no cover
    from .backend import UsbipBackend, get_backend
    from .client import import_device, list_devices
    from .device import Device, open_device
    from .engine import Connection, Urb, UrbState
    from .errors import (
        ConnectionLostError, ImportRefusedError, NotFoundError, ProtocolError, UrbCancelledError, UrbError,
        UsbipError, UsbipTimeoutError,
    )
    from .protocol import TransferType
    from .discovery import ServerInfo, discover, discover_usbip_servers
    from .errors import DiscoveryError, TlsError
    from .engine.transport import command_connector
    from ._compat import USBIPBackend
    from .pcap import PcapWriter
    from .sim import SimServer
    from .syslog import SyslogReceiver
    from .stream import Progress, StreamError, read_into_file, stream_in, stream_out, write_from_file


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None and name in _DEPRECATED:
        module, instead = _DEPRECATED[name]
        # Warned here only: the value is cached in globals() below, so later uses never get here.
        warnings.warn(f"usbip_backend.{name} is deprecated; use {instead}", DeprecationWarning, stacklevel=2)
    elif module is None and name in _DEPRECATED_MODULES:
        return importlib.import_module(f".{name}", __name__)  # the submodule warns on import
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> List[str]:
    return sorted(set(globals()) | set(__all__))


# pyserial's usbip:// handler: registered with pyserial as soon as pyserial is imported (see
# _usbip_serial_hook; installed wheels also load it from a .pth, for unmodified CLIs).
import _usbip_serial_hook  # noqa: E402,F401
