"""python-libusb1's exceptions, and how the USB/IP engine's outcomes map onto libusb's.

``USBError`` and its subclasses keep python-libusb1's names, ``value`` codes and ``str()`` format
(``LIBUSB_ERROR_TIMEOUT [-7]``), so ``except usb1.USBErrorTimeout`` and code parsing the message
work unchanged. On top of that an error may carry:

* ``transferred``: bytes that moved before the failure (a partial bulk transfer is not lost);
* ``received``: for reads, the bytes that arrived before the failure;
* ``detail``: the engine's own explanation (which URB, which device, after how long), appended
  to ``str()`` after the libusb text.

:func:`transfer_status` / :func:`transfer_status_of` give the ``TRANSFER_*`` status an asynchronous
transfer reports; :func:`usb_error` gives the exception a synchronous call raises.
"""

from __future__ import annotations

from typing import Dict, NoReturn, Optional, Type, Union

from .. import errors as _engine
from . import _constants as C

#: What ``received`` may hold: the caller's buffer, a view of it, or a copy.
BytesLike = Union[bytes, bytearray, memoryview]

# libusb_error_name(): how str() names a code.
_ERROR_NAMES: Dict[int, str] = {
    C.SUCCESS: "LIBUSB_SUCCESS",
    C.ERROR_IO: "LIBUSB_ERROR_IO",
    C.ERROR_INVALID_PARAM: "LIBUSB_ERROR_INVALID_PARAM",
    C.ERROR_ACCESS: "LIBUSB_ERROR_ACCESS",
    C.ERROR_NO_DEVICE: "LIBUSB_ERROR_NO_DEVICE",
    C.ERROR_NOT_FOUND: "LIBUSB_ERROR_NOT_FOUND",
    C.ERROR_BUSY: "LIBUSB_ERROR_BUSY",
    C.ERROR_TIMEOUT: "LIBUSB_ERROR_TIMEOUT",
    C.ERROR_OVERFLOW: "LIBUSB_ERROR_OVERFLOW",
    C.ERROR_PIPE: "LIBUSB_ERROR_PIPE",
    C.ERROR_INTERRUPTED: "LIBUSB_ERROR_INTERRUPTED",
    C.ERROR_NO_MEM: "LIBUSB_ERROR_NO_MEM",
    C.ERROR_NOT_SUPPORTED: "LIBUSB_ERROR_NOT_SUPPORTED",
    C.ERROR_OTHER: "LIBUSB_ERROR_OTHER",
}

# libusb_strerror()'s English table (libusb/strerror.c). libusb answers any code outside the
# table with its last entry, "Other error".
_ERROR_MESSAGES: Dict[int, str] = {
    C.SUCCESS: "Success",
    C.ERROR_IO: "Input/Output Error",
    C.ERROR_INVALID_PARAM: "Invalid parameter",
    C.ERROR_ACCESS: "Access denied (insufficient permissions)",
    C.ERROR_NO_DEVICE: "No such device (it may have been disconnected)",
    C.ERROR_NOT_FOUND: "Entity not found",
    C.ERROR_BUSY: "Resource busy",
    C.ERROR_TIMEOUT: "Operation timed out",
    C.ERROR_OVERFLOW: "Overflow",
    C.ERROR_PIPE: "Pipe error",
    C.ERROR_INTERRUPTED: "System call interrupted (perhaps due to signal)",
    C.ERROR_NO_MEM: "Insufficient memory",
    C.ERROR_NOT_SUPPORTED: "Operation not supported or unimplemented on this platform",
    C.ERROR_OTHER: "Other error",
}


class USBError(Exception):
    """A libusb error; ``value`` is its ``ERROR_*`` code (None when raised without one).

    The keyword arguments go beyond python-libusb1 and may be omitted: ``USBError(value)`` is
    what python-libusb1 code writes.
    """

    value: Optional[int] = None
    #: bytes that moved before the failure
    transferred: int = 0
    #: for reads: what arrived before the failure
    received: Optional[BytesLike] = None
    #: the engine's explanation, appended to str(); None for a plain libusb-style error
    detail: Optional[str] = None

    def __init__(self, value: Optional[int] = None, *, transferred: int = 0,
                 received: Optional[BytesLike] = None, detail: Optional[str] = None) -> None:
        # No args to Exception, as python-libusb1: str() comes from value, not from args.
        Exception.__init__(self)
        if value is not None:
            self.value = value
        if transferred:
            self.transferred = transferred
        if received is not None:
            self.received = received
        if detail:
            self.detail = detail

    def __str__(self) -> str:
        value = self.value
        name = _ERROR_NAMES.get(value, "Unknown error") if value is not None else "Unknown error"
        text = f"{name} [{value}]"
        if self.detail:
            text = f"{text}: {self.detail}"
        return text

    def getMessage(self) -> str:
        """libusb_strerror()'s English text for :attr:`value`, e.g. ``"Operation timed out"``."""
        if self.value is None:
            return _ERROR_MESSAGES[C.ERROR_OTHER]
        return _ERROR_MESSAGES.get(self.value, _ERROR_MESSAGES[C.ERROR_OTHER])


# One class per LIBUSB_ERROR_* code, named as python-libusb1 derives them from the code's name.
class USBErrorIO(USBError):
    value = C.ERROR_IO


class USBErrorInvalidParam(USBError):
    value = C.ERROR_INVALID_PARAM


class USBErrorAccess(USBError):
    value = C.ERROR_ACCESS


class USBErrorNoDevice(USBError):
    value = C.ERROR_NO_DEVICE


class USBErrorNotFound(USBError):
    value = C.ERROR_NOT_FOUND


class USBErrorBusy(USBError):
    value = C.ERROR_BUSY


class USBErrorTimeout(USBError):
    value = C.ERROR_TIMEOUT


class USBErrorOverflow(USBError):
    value = C.ERROR_OVERFLOW


class USBErrorPipe(USBError):
    value = C.ERROR_PIPE


class USBErrorInterrupted(USBError):
    value = C.ERROR_INTERRUPTED


class USBErrorNoMem(USBError):
    value = C.ERROR_NO_MEM


class USBErrorNotSupported(USBError):
    value = C.ERROR_NOT_SUPPORTED


class USBErrorOther(USBError):
    value = C.ERROR_OTHER


#: ERROR_* code -> the USBError subclass raised for it.
STATUS_TO_EXCEPTION_DICT: Dict[int, Type[USBError]] = {
    C.ERROR_IO: USBErrorIO,
    C.ERROR_INVALID_PARAM: USBErrorInvalidParam,
    C.ERROR_ACCESS: USBErrorAccess,
    C.ERROR_NO_DEVICE: USBErrorNoDevice,
    C.ERROR_NOT_FOUND: USBErrorNotFound,
    C.ERROR_BUSY: USBErrorBusy,
    C.ERROR_TIMEOUT: USBErrorTimeout,
    C.ERROR_OVERFLOW: USBErrorOverflow,
    C.ERROR_PIPE: USBErrorPipe,
    C.ERROR_INTERRUPTED: USBErrorInterrupted,
    C.ERROR_NO_MEM: USBErrorNoMem,
    C.ERROR_NOT_SUPPORTED: USBErrorNotSupported,
    C.ERROR_OTHER: USBErrorOther,
}


def raiseUSBError(value: int) -> NoReturn:
    """Raise the USBError subclass for ``value``; a code without one raises USBError itself."""
    raise STATUS_TO_EXCEPTION_DICT.get(value, USBError)(value)


def mayRaiseUSBError(value: int) -> int:
    """Return ``value`` (a count or SUCCESS) unless it is negative, an error code: raise then."""
    if value < 0:
        raiseUSBError(value)
    return value


class DoomedTransferError(Exception):
    """A transfer that is being (or has been) closed was modified or submitted."""


# -- engine outcome -> libusb ---------------------------------------------------------------------

#: ``ended_by`` values of :func:`transfer_status` (the engine's ``EndedBy``, an IntEnum, fits).
ENDED_BY_REPLY = 0  # a RET_SUBMIT, or a status the engine set itself (-108 on connection loss)
ENDED_BY_TIMEOUT = 1  # our own timeout unlinked it
ENDED_BY_CANCEL = 2  # its owner cancelled it

# Negative Linux errno URB statuses, as usbfs and the USB/IP server report them.
_E = _engine.LinuxErrno
_EREMOTEIO = -_E.EREMOTEIO
_ENOENT = -_E.ENOENT
_ECONNRESET = -_E.ECONNRESET
_ENODEV = -_E.ENODEV
_ESHUTDOWN = -_E.ESHUTDOWN
_EPIPE = -_E.EPIPE
_EOVERFLOW = -_E.EOVERFLOW
_ETIMEDOUT = -_E.ETIMEDOUT

# The URB statuses with a TRANSFER_* of their own (libusb's linux_usbfs reaping); every other
# non-zero status is a TRANSFER_ERROR.
_URB_STATUS_TO_TRANSFER: Dict[int, int] = {
    _ENOENT: C.TRANSFER_CANCELLED,
    _ECONNRESET: C.TRANSFER_CANCELLED,
    _ENODEV: C.TRANSFER_NO_DEVICE,
    _ESHUTDOWN: C.TRANSFER_NO_DEVICE,
    _EPIPE: C.TRANSFER_STALL,
    _EOVERFLOW: C.TRANSFER_OVERFLOW,
    _ETIMEDOUT: C.TRANSFER_TIMED_OUT,  # the server's own URB timeout
}


def transfer_status(urb_status: int, ended_by: int, short_not_ok: bool = False) -> int:
    """The TRANSFER_* status a finished URB reports to its transfer's callback.

    ``urb_status`` is the URB's final status (0 or a negative Linux errno); ``ended_by`` tells
    who ended it: :data:`ENDED_BY_REPLY`, :data:`ENDED_BY_TIMEOUT` or :data:`ENDED_BY_CANCEL`.
    ``short_not_ok`` says the transfer had TRANSFER_SHORT_NOT_OK: the URB was then submitted
    with URB_SHORT_NOT_OK, and the -EREMOTEIO a short packet ends it with is a failure, as libusb
    reports a short SHORT_NOT_OK transfer. (A short transfer that still ended with status 0 must
    be checked against its length by the caller.)

    A URB whose data won the race with its unlink (status 0) completed, whoever unlinked it.
    """
    if ended_by not in (ENDED_BY_REPLY, ENDED_BY_TIMEOUT, ENDED_BY_CANCEL):
        raise ValueError(f"ended_by must be 0 (reply), 1 (timeout) or 2 (cancel), not {ended_by!r}")
    if urb_status == 0:
        return C.TRANSFER_COMPLETED
    if urb_status == _EREMOTEIO:
        # A short packet ended the URB: the data is all there is, the transfer is over.
        return C.TRANSFER_ERROR if short_not_ok else C.TRANSFER_COMPLETED
    if ended_by == ENDED_BY_TIMEOUT:
        return C.TRANSFER_TIMED_OUT
    if ended_by == ENDED_BY_CANCEL:
        return C.TRANSFER_CANCELLED
    return _URB_STATUS_TO_TRANSFER.get(urb_status, C.TRANSFER_ERROR)


# A USBError's code -> the TRANSFER_* status meaning the same thing.
_USB_ERROR_TO_TRANSFER: Dict[int, int] = {
    C.ERROR_NO_DEVICE: C.TRANSFER_NO_DEVICE,
    C.ERROR_TIMEOUT: C.TRANSFER_TIMED_OUT,
    C.ERROR_PIPE: C.TRANSFER_STALL,
    C.ERROR_OVERFLOW: C.TRANSFER_OVERFLOW,
    C.ERROR_INTERRUPTED: C.TRANSFER_CANCELLED,
}


def transfer_status_of(exc: BaseException, short_not_ok: bool = False) -> int:
    """The TRANSFER_* status of a transfer that ended with ``exc`` instead of a URB result.

    Engine errors: ConnectionLostError -> NO_DEVICE, UsbipTimeoutError -> TIMED_OUT,
    UrbCancelledError -> CANCELLED, UrbError -> by its status (:func:`transfer_status`), any
    other (ProtocolError, NotFoundError, ...) -> ERROR. A USBError maps by its code; Python's own
    ConnectionError and TimeoutError (a socket failing under the engine) as the engine's do.
    """
    if isinstance(exc, USBError):
        if exc.value is None:
            return C.TRANSFER_ERROR
        return _USB_ERROR_TO_TRANSFER.get(exc.value, C.TRANSFER_ERROR)
    if isinstance(exc, _engine.UrbCancelledError):
        return C.TRANSFER_CANCELLED
    if isinstance(exc, _engine.UrbError):
        return transfer_status(exc.status, ENDED_BY_REPLY, short_not_ok)
    if isinstance(exc, ConnectionError):  # ConnectionLostError included
        return C.TRANSFER_NO_DEVICE
    if isinstance(exc, TimeoutError):  # UsbipTimeoutError included
        return C.TRANSFER_TIMED_OUT
    return C.TRANSFER_ERROR


def _usb_error_class(exc: BaseException) -> Type[USBError]:
    if isinstance(exc, _engine.UrbError):
        return STATUS_TO_EXCEPTION_DICT[_engine.libusb_error(exc.status)]
    if isinstance(exc, _engine.UrbCancelledError):
        return USBErrorInterrupted
    if isinstance(exc, _engine.NotFoundError):
        return USBErrorNotFound
    if isinstance(exc, ConnectionError):  # ConnectionLostError, or the socket itself failing
        return USBErrorNoDevice
    if isinstance(exc, TimeoutError):  # UsbipTimeoutError included
        return USBErrorTimeout
    if isinstance(exc, _engine.UsbipError):  # ProtocolError, ImportRefusedError, ...
        return USBErrorIO
    if isinstance(exc, MemoryError):
        return USBErrorNoMem
    return USBErrorOther


def usb_error(exc: BaseException) -> USBError:
    """The USBError a synchronous python-libusb1 call raises where the engine raised ``exc``.

    ``transferred`` (and ``received``, if ``exc`` has one) is copied from ``exc``; ``detail`` is
    ``str(exc)``. A USBError is returned as it is. Chaining ``exc`` as ``__cause__`` (``raise
    usb_error(exc) from exc``) is the caller's.
    """
    if isinstance(exc, USBError):
        return exc
    transferred = getattr(exc, "transferred", 0)
    received = getattr(exc, "received", None)
    return _usb_error_class(exc)(
        transferred=transferred if isinstance(transferred, int) else 0,
        received=received if isinstance(received, (bytes, bytearray, memoryview)) else None,
        detail=str(exc) or None,
    )
