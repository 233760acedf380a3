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
import importlib.util
import sys
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence

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


# -- pyserial's usbip:// handler ---------------------------------------------------------------------
# serial_for_url("usbip://...") imports "<package>.protocol_usbip" for each package listed in
# serial.protocol_handler_packages; ours is added there as soon as pyserial is imported (now, or
# the moment it is: pyserial is not imported here, so this costs nothing without it).
def _add_handler_package(serial_module: Any) -> None:
    packages = getattr(serial_module, "protocol_handler_packages", None)
    if isinstance(packages, list) and __name__ not in packages:
        packages.append(__name__)


class _SerialImportHook:
    """A meta path finder that adds our handler package to pyserial once pyserial is loaded."""

    def find_spec(self, name: str, path: Optional[Sequence[str]] = None, target: Any = None) -> Any:
        if name != "serial":
            return None
        try:
            sys.meta_path.remove(self)  # the finders after us find pyserial itself
        except ValueError:
            pass
        spec = importlib.util.find_spec("serial")
        loader = getattr(spec, "loader", None)
        if loader is None or not hasattr(loader, "exec_module"):
            return spec
        exec_module = loader.exec_module

        def exec_and_register(module: Any) -> None:
            exec_module(module)
            _add_handler_package(module)

        loader.exec_module = exec_and_register
        return spec


def _register_serial() -> None:
    module = sys.modules.get("serial")
    if module is not None:
        _add_handler_package(module)
    elif not any(isinstance(f, _SerialImportHook) for f in sys.meta_path):
        sys.meta_path.insert(0, _SerialImportHook())


_register_serial()
