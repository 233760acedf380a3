"""python-libusb1's API (``import usb1``) over USB/IP: libusb code runs against a remote device.

::

    from usbip_backend import usb1

    with usb1.USBContext(host="192.168.1.20", port=3240) as ctx:   # only this line differs
        handle = ctx.openByVendorIDAndProductID(0x1209, 0x0001)
        ...

Same names, argument order, millisecond timeouts, status constants and exceptions as
python-libusb1 3.x; the transfers run on this package's URB engine. Differences (USB/IP is not a
local bus; see README's comparison table): the device list needs no import, descriptors and
strings do (an import is exclusive); there are no kernel drivers; callbacks run in
``handleEvents*()`` as in libusb, and beyond it: an exception from a callback is raised from
``handleEvents()``, transfers on one endpoint come back in submission order, ``close()`` is safe
inside a callback, leaving the context with transfers in flight cancels them.
"""

from __future__ import annotations

from typing import Any, Tuple

from ._constants import *  # noqa: F401,F403  (python-libusb1 exposes libusb's constants at top level)
from ._constants import __all__ as _constant_names
from ._context import USBContext, USBDevice, USBDeviceHandle
from ._descriptors import USBConfiguration, USBEndpoint, USBInterface, USBInterfaceSetting
from ._errors import (
    STATUS_TO_EXCEPTION_DICT, DoomedTransferError, USBError, USBErrorAccess, USBErrorBusy, USBErrorInterrupted,
    USBErrorInvalidParam, USBErrorIO, USBErrorNoDevice, USBErrorNoMem, USBErrorNotFound, USBErrorNotSupported,
    USBErrorOther, USBErrorOverflow, USBErrorPipe, USBErrorTimeout, mayRaiseUSBError, raiseUSBError,
)
from ._transfer import USBTransfer, USBTransferHelper


def getVersion() -> Tuple[int, int, int, int, str, str]:
    """python-libusb1 reports libusb's version; here, this package's (no libusb is involved)."""
    from .. import __version__

    parts = [int(p) for p in __version__.split(".")[:3]] + [0, 0, 0]
    return (parts[0], parts[1], parts[2], 0, "", f"usbip_backend {__version__}")


def hasCapability(capability: int) -> bool:
    """CAP_HAS_CAPABILITY and CAP_HAS_HOTPLUG... as a USB/IP client has them: capabilities of
    libusb's own platform backends (HID access, detaching kernel drivers) are absent."""
    from . import _constants as _C

    return capability in (_C.CAP_HAS_CAPABILITY,)


def loadLibrary(libusb: Any = None) -> None:
    """No libusb to load over USB/IP: kept so code that calls it runs unchanged."""


def setLocale(locale: str) -> None:
    """libusb's message locale; our messages are English whatever it is (kept for compatibility)."""


def __getattr__(name: str) -> Any:
    raise AttributeError(f"module {__name__!r} has no attribute {name!r} (python-libusb1 has it? "
                         f"see README's usb1 comparison table)")


__all__ = [
    "USBContext", "USBDevice", "USBDeviceHandle", "USBTransfer", "USBTransferHelper", "USBConfiguration",
    "USBInterface", "USBInterfaceSetting", "USBEndpoint", "USBError", "USBErrorIO", "USBErrorInvalidParam",
    "USBErrorAccess", "USBErrorNoDevice", "USBErrorNotFound", "USBErrorBusy", "USBErrorTimeout",
    "USBErrorOverflow", "USBErrorPipe", "USBErrorInterrupted", "USBErrorNoMem", "USBErrorNotSupported",
    "USBErrorOther", "DoomedTransferError", "STATUS_TO_EXCEPTION_DICT", "raiseUSBError", "mayRaiseUSBError",
    "getVersion", "hasCapability", "loadLibrary", "setLocale", *_constant_names,
]
