"""One line for a failure: what happened, where, and what to do."""

from __future__ import annotations

import errno
import socket
from typing import List, Optional, Tuple, Type, TypeVar, Union

from .. import protocol as P
from ..errors import (
    ConnectionLostError, DiscoveryError, ImportRefusedError, ProtocolError, TlsError, UrbError, UsbipError,
    UsbipTimeoutError, describe_status,
)
from .args import CliError
from .context import PROG, Context


def _chain(exc: BaseException) -> List[BaseException]:
    seen: List[BaseException] = []
    current: Optional[BaseException] = exc
    while current is not None and current not in seen and len(seen) < 16:
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


E = TypeVar("E", bound=BaseException)


def _first(exc: BaseException, types: Union[Type[E], Tuple[Type[E], ...]]) -> Optional[E]:
    for e in _chain(exc):
        if isinstance(e, types):
            return e
    return None


def explain(exc: BaseException, ctx: Optional[Context]) -> str:
    """One line for a failure: what happened, where, and what to do."""
    try:
        import usb.core
        usb_error: Tuple[Type[Exception], ...] = (usb.core.USBError,)
        usb_timeout: Tuple[Type[Exception], ...] = (usb.core.USBTimeoutError,)
    except ImportError:  # pragma: no cover
        usb_error = usb_timeout = ()

    where = ctx.where() if ctx is not None else "the server"
    if isinstance(exc, (DiscoveryError, CliError)):
        return str(exc)
    refused = _first(exc, ImportRefusedError)
    if refused is not None:
        busid = getattr(refused, "busid", "") or "?"
        status = getattr(refused, "status", None)
        if status == P.Status.ST_DEV_BUSY:
            return (f"device {busid} on {where} is busy: another client has imported it (USB/IP does not say "
                    "which); release it there (usbip detach, or close that program) and retry")
        if status == P.Status.ST_NODEV:
            return f"no device with busid {busid} on {where}; run '{PROG} list' to see what is exported"
        return f"{where} refused to import {busid}: {refused}"
    if _first(exc, ConnectionRefusedError) is not None:
        return (f"connection refused by {where}: no USB/IP server listens there; check --host/--port "
                f"(or start one: {PROG} sim)")
    tls = _first(exc, TlsError)
    if tls is not None:
        if tls.verify_message:
            return (f"TLS with {where}: the server's certificate was refused ({tls.verify_message}); trust "
                    "its CA with --tls-ca FILE, or check that --host is the name in the certificate")
        return str(tls)
    gai = _first(exc, socket.gaierror)
    if gai is not None:
        host = ctx.args.host if ctx is not None else "?"
        return f"cannot resolve host {host!r}: {gai.strerror or gai}; check --host"
    timeout = _first(exc, (UsbipTimeoutError, socket.timeout, TimeoutError) + usb_timeout)
    if timeout is not None:
        what = str(timeout) or "operation timed out"
        return f"timed out talking to {where}: {what} (raise the timeout option, or check the device)"
    lost = _first(exc, (ConnectionLostError, ConnectionError))
    if lost is not None:
        return f"connection to {where} lost: {lost}; check the server and retry"
    urb = _first(exc, UrbError)
    if urb is not None:
        if urb.status == -errno.EPIPE:
            return "the device stalled the request (EPIPE): it does not support the request or its arguments"
        return f"transfer failed: {describe_status(urb.status)}"
    if usb_error:
        ue = _first(exc, usb_error)
        if ue is not None:
            code = getattr(ue, "errno", None)
            if code == errno.EPIPE:
                return f"the device stalled the request (EPIPE): it does not support it or its arguments ({ue})"
            if code == errno.ETIMEDOUT:
                return f"timed out: {ue} (raise the timeout option, or check the device)"
            return f"USB error: {ue}"
    proto = _first(exc, ProtocolError)
    if proto is not None:
        return f"{where} does not speak USB/IP as expected: {proto}"
    if isinstance(exc, OSError):
        return f"{where}: {exc.strerror or exc}"
    if isinstance(exc, UsbipError):
        return f"{exc}"
    return f"unexpected error: {type(exc).__name__}: {exc} (run with -v for the traceback)"
