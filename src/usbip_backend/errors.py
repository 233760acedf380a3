"""Exception hierarchy of usbip_backend.

::

    UsbipError
     +-- ProtocolError            malformed or unexpected bytes from the peer
     +-- ImportRefusedError       OP_REP_IMPORT / OP_REP_DEVLIST carried a non-zero ST_* status
     +-- ConnectionLostError      the TCP connection closed or failed (also a ConnectionError)
     |    +-- TlsError            the TLS handshake failed (untrusted certificate, wrong name, not TLS)
     +-- UsbipTimeoutError        an operation did not finish in time (also a TimeoutError)
     +-- UrbCancelledError        a URB was cancelled by its owner (Urb.cancel, CMD_UNLINK)
     +-- UrbError                 a URB completed with a negative errno status
     +-- NotFoundError            no such endpoint/interface/device (also a LookupError)
     +-- DiscoveryError           mDNS found no server (or several where one was needed)

The three URB outcomes carry ``transferred``: the bytes that moved before the URB ended.

At the PyUSB boundary (:mod:`usbip_backend.backend`) these become ``usb.core.USBError`` /
``usb.core.USBTimeoutError`` with a real ``errno``, the way PyUSB's libusb1 backend raises them.
"""

from __future__ import annotations

import enum
import errno as _errno
import os
import sys
from typing import TYPE_CHECKING, Dict, List, Sequence

if TYPE_CHECKING:  # pragma: no cover - discovery imports this module
    from .discovery import ServerInfo


class UsbipError(Exception):
    """Root of every error raised by usbip_backend."""


class ProtocolError(UsbipError):
    """The peer sent bytes that do not follow the USB/IP protocol."""


class ImportRefusedError(UsbipError):
    """The server refused an OP_REQ_IMPORT (or DEVLIST) with an ST_* status."""

    def __init__(self, message: str, *, busid: str = "", status: int = 0) -> None:
        super().__init__(message)
        self.busid = busid
        self.status = status


class ConnectionLostError(UsbipError, ConnectionError):
    """The connection to the server is gone; every pending and later URB fails with this."""


class TlsError(ConnectionLostError):
    """The TLS handshake failed: the certificate was not trusted or was for another name, the
    peer does not speak TLS, or the versions/ciphers do not match. ``verify_message`` is
    OpenSSL's reason for a certificate it refused ("" for other failures)."""

    def __init__(self, message: str, *, verify_message: str = "") -> None:
        super().__init__(message)
        self.verify_message = verify_message


class UsbipTimeoutError(UsbipError, TimeoutError):
    """An operation (connect, OP_* exchange, URB) did not complete in time."""

    def __init__(self, message: str, *, transferred: int = 0) -> None:
        super().__init__(message)
        #: bytes moved before the timeout (libusb1 reports partial transfers the same way)
        self.transferred = transferred


class UrbCancelledError(UsbipError):
    """A URB was cancelled by its owner (:meth:`Urb.cancel`) before it completed.

    ``status`` is the URB status it ended with: -104 (-ECONNRESET) as the server's RET_UNLINK
    reports it, or what a RET_SUBMIT that came with the cancellation said.
    """

    def __init__(self, message: str, *, transferred: int = 0, status: int = -104) -> None:
        super().__init__(message)
        #: bytes moved before the cancellation took effect
        self.transferred = transferred
        self.status = status


class UrbError(UsbipError):
    """A URB completed with a non-zero status (a negative Linux errno, e.g. -32 for a stall)."""

    def __init__(self, message: str, *, status: int, transferred: int = 0) -> None:
        super().__init__(message)
        self.status = status
        #: bytes moved before the failure (libusb1 reports partial transfers the same way)
        self.transferred = transferred

    @property
    def actual_length(self) -> int:
        """The old name of :attr:`transferred`."""
        return self.transferred

    @property
    def errno(self) -> int:
        return -self.status


class NotFoundError(UsbipError, LookupError):
    """What was asked for (an endpoint in the active configuration, a device) does not exist."""


class DiscoveryError(UsbipError):
    """mDNS discovery failed, found nothing, or found more than one server where one was needed.

    ``servers`` lists what was found (for the "several servers" case), so a caller can choose.
    """

    def __init__(self, message: str, *, servers: Sequence["ServerInfo"] = ()) -> None:
        super().__init__(message)
        self.servers: List["ServerInfo"] = list(servers)


class LinuxErrno(enum.IntEnum):
    """Linux errno numbers as they travel on the wire (a URB status is the negated number:
    ``-LinuxErrno.EPIPE`` is -32). Python's errno module has the host's numbers, which differ on
    macOS and Windows (ECONNRESET is 54 on macOS), so the wire's are spelled out here, once."""

    EPERM = 1
    ENOENT = 2
    EIO = 5
    EAGAIN = 11
    ENOMEM = 12
    EBUSY = 16
    EXDEV = 18
    ENODEV = 19
    EINVAL = 22
    EFBIG = 27
    ENOSPC = 28
    EPIPE = 32
    ENODATA = 61
    ETIME = 62
    ECOMM = 70
    EPROTO = 71
    EOVERFLOW = 75
    EILSEQ = 84
    EMSGSIZE = 90
    EOPNOTSUPP = 95
    ECONNRESET = 104
    ESHUTDOWN = 108
    ETIMEDOUT = 110
    EINPROGRESS = 115
    EREMOTEIO = 121


LINUX_ERRNO_NAMES: Dict[int, str] = {e.value: e.name for e in LinuxErrno}

#: What a URB status means for a USB transfer (Documentation/driver-api/usb/error-codes.rst).
URB_STATUS_TEXT = {
    -1: "operation not permitted",
    -2: "URB was unlinked (ENOENT)",
    -5: "input/output error",
    -11: "resource temporarily unavailable",
    -12: "out of memory on the server",
    -16: "device busy",
    -18: "isochronous transfer not completed (EXDEV)",
    -19: "no such device (ENODEV)",
    -22: "invalid request (EINVAL)",
    -27: "transfer too large (EFBIG)",
    -28: "no bandwidth left for the transfer (ENOSPC)",
    -32: "endpoint stalled (EPIPE)",
    -61: "no data",
    -62: "device did not respond (ETIME)",
    -70: "data overrun/underrun (ECOMM)",
    -71: "bitstuff or unknown USB error (EPROTO)",
    -75: "babble: device sent more data than requested (EOVERFLOW)",
    -84: "CRC or timeout error (EILSEQ)",
    -90: "URB larger than the server accepts (EMSGSIZE)",
    -95: "operation not supported by the server (EOPNOTSUPP)",
    -104: "URB was cancelled (ECONNRESET)",
    -108: "device or host controller shut down (ESHUTDOWN)",
    -110: "server-side timeout (ETIMEDOUT)",
    -115: "URB still in progress (EINPROGRESS)",
    -121: "short packet (EREMOTEIO)",
}


def linux_errno_name(err: int) -> str:
    """``32 -> 'EPIPE'``; unknown numbers come back as ``'errno 123'``."""
    return LINUX_ERRNO_NAMES.get(abs(err), f"errno {abs(err)}")


def describe_status(status: int) -> str:
    """A readable text for a negative URB status."""
    text = URB_STATUS_TEXT.get(status)
    if text is None:
        if status >= 0:
            text = f"{linux_errno_name(status)} (ok)"
        elif sys.platform.startswith("linux"):
            text = f"{linux_errno_name(status)} ({os.strerror(-status)})"
        else:
            # The host's errno table is not the wire's (Linux) one: its text could be another
            # error's; the name comes from the Linux table when it is known.
            text = f"{linux_errno_name(status)} (a Linux errno)"
    return f"{text}, status {status}"


def host_errno(linux_err: int) -> int:
    """Translate a positive Linux errno number to this host's errno number (same on Linux)."""
    name = LINUX_ERRNO_NAMES.get(linux_err)
    if name is None:
        return linux_err
    return getattr(_errno, name, linux_err)


# libusb error codes (libusb.h, enum libusb_error): what PyUSB's libusb1 backend puts in
# USBError.backend_error_code and python-libusb1 names usb1.ERROR_*.
LIBUSB_ERROR_IO = -1
LIBUSB_ERROR_INVALID_PARAM = -2
LIBUSB_ERROR_ACCESS = -3
LIBUSB_ERROR_NO_DEVICE = -4
LIBUSB_ERROR_NOT_FOUND = -5
LIBUSB_ERROR_BUSY = -6
LIBUSB_ERROR_TIMEOUT = -7
LIBUSB_ERROR_OVERFLOW = -8
LIBUSB_ERROR_PIPE = -9
LIBUSB_ERROR_INTERRUPTED = -10
LIBUSB_ERROR_NO_MEM = -11
LIBUSB_ERROR_NOT_SUPPORTED = -12
LIBUSB_ERROR_OTHER = -99

#: Linux URB status (negative errno) -> the libusb error code a synchronous libusb call returns
#: for it. Anything else is LIBUSB_ERROR_IO, as libusb's Linux backend reports unknown URB
#: failures (LIBUSB_TRANSFER_ERROR).
URB_STATUS_TO_LIBUSB = {
    -32: LIBUSB_ERROR_PIPE,
    -75: LIBUSB_ERROR_OVERFLOW,
    -19: LIBUSB_ERROR_NO_DEVICE,
    -108: LIBUSB_ERROR_NO_DEVICE,
    -110: LIBUSB_ERROR_TIMEOUT,
    -22: LIBUSB_ERROR_INVALID_PARAM,
    -12: LIBUSB_ERROR_NO_MEM,
    -16: LIBUSB_ERROR_BUSY,
    -95: LIBUSB_ERROR_NOT_SUPPORTED,
}


def libusb_error(status: int) -> int:
    """The libusb error code for a URB that failed with ``status``."""
    return URB_STATUS_TO_LIBUSB.get(status, LIBUSB_ERROR_IO)
