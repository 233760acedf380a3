"""A pure-Python PyUSB backend speaking the USB/IP protocol as a client.

::

    import usb.core
    from usbip_backend import get_backend
    dev = usb.core.find(backend=get_backend("192.168.1.20"), idVendor=0x303A)

Names are imported lazily (PEP 562), so ``import usbip_backend`` stays cheap and an optional
dependency (zeroconf for discovery) is only loaded when used. To export another name, add it to
``_EXPORTS`` (name -> submodule).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any, Dict, List

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
    "DiscoveryError": "discovery",
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

__all__: List[str] = ["errors", "__version__", *_EXPORTS]

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
    from .discovery import DiscoveryError, ServerInfo, discover, discover_usbip_servers
    from .pcap import PcapWriter
    from .sim import SimServer
    from .syslog import SyslogReceiver
    from .stream import Progress, StreamError, read_into_file, stream_in, stream_out, write_from_file


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
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
