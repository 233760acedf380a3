"""Short OP_* exchanges with a USB/IP server: list exported devices, import one.

Follows the flow of the kernel's ``usbip`` tool (usbip_network.c): connect with TCP_NODELAY and
SO_KEEPALIVE, send one OP_REQ_*, read the OP_REP_*. After a successful import the same stream
carries the URBs and is handed to :class:`~usbip_backend.engine.Connection`.

Every function that connects takes ``ssl=`` (TLS to a server behind a TLS terminator: True for
``ssl.create_default_context()``, or an ``ssl.SSLContext``; the certificate is checked against
``host``) and ``connect=`` (a callable ``connect(host, port, timeout)`` returning a connected
socket-like object: an SSH channel, a command's stdio from :func:`command_connector`); see
:mod:`usbip_backend.engine.transport`.
"""

from __future__ import annotations

import logging
import socket
import time
from typing import Any, List, Optional

from . import protocol as P
from .engine import Connection
from .engine.transport import (  # noqa: F401  (re-exported: the names callers of connect= need)
    Connector, SocketLike, TlsArg, TlsError, closed_reason, command_connector, open_stream,
)
from .errors import ConnectionLostError, ImportRefusedError, ProtocolError, UsbipTimeoutError
from .hooks import UrbHook

_log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 5.0
#: Bound on the device count we accept in OP_REP_DEVLIST (the field is a peer-chosen u32).
MAX_DEVICES = P.MAX_DEVICES


def socket_timeout(timeout: Optional[float]) -> Optional[float]:
    """A timeout as sockets take it: None (wait forever) for None, 0 or less, as everywhere in
    this package (a socket timeout of 0 would mean non-blocking instead)."""
    return timeout if timeout is not None and timeout > 0 else None


def connect(host: str, port: int = P.USBIP_PORT, timeout: Optional[float] = DEFAULT_TIMEOUT, *,
            ssl: TlsArg = None, connect: Optional[Connector] = None) -> socket.socket:
    """Open the stream to a server the way usbip_net_tcp_connect() does (``timeout`` 0: no
    limit), over TLS with ``ssl``, through ``connect`` if given. Returns a kernel socket (a
    relayed one for TLS and socket-like transports: see :mod:`~usbip_backend.engine.transport`).

    Raises:
        ConnectionLostError: refused, unreachable, the ``connect`` callable failed.
        TlsError: the TLS handshake failed (untrusted certificate, wrong name, not TLS).
        UsbipTimeoutError: no connection within ``timeout``.
    """
    return open_stream(host, port, socket_timeout(timeout), ssl=ssl, connect=connect)


class _Exchange:
    """Exact reads against one overall deadline (none for a timeout of 0); every failure becomes
    a clear UsbipError."""

    def __init__(self, sock: socket.socket, what: str, timeout: Optional[float]) -> None:
        self.sock = sock
        self.what = what
        self.timeout = socket_timeout(timeout)
        self.started = time.monotonic()
        self.deadline = None if self.timeout is None else self.started + self.timeout

    def _left(self) -> Optional[float]:
        return None if self.deadline is None else self.deadline - time.monotonic()

    def send(self, data: bytes) -> None:
        left = self._left()
        self.sock.settimeout(None if left is None else max(left, 0.001))
        try:
            self.sock.sendall(data)
        except socket.timeout as exc:
            raise UsbipTimeoutError(f"{self.what}: sending timed out") from exc
        except OSError as exc:
            raise ConnectionLostError(f"{self.what}: send failed: {exc}{_why(self.sock)}") from exc

    def recv(self, size: int, part: str) -> bytes:
        buf = bytearray(size)
        view = memoryview(buf)
        got = 0
        while got < size:
            remaining = self._left()
            if remaining is not None and remaining <= 0:
                raise UsbipTimeoutError(f"{self.what}: no complete {part} within {self.timeout:g} s")
            self.sock.settimeout(remaining)
            try:
                n = self.sock.recv_into(view[got:], size - got)
            except socket.timeout as exc:
                raise UsbipTimeoutError(f"{self.what}: no complete {part} within {self.timeout:g} s") from exc
            except OSError as exc:
                raise ConnectionLostError(f"{self.what}: connection failed while reading {part}: {exc}"
                                          f"{_why(self.sock)}") from exc
            if not n:
                why = _why(self.sock)
                if got == 0 and part.startswith("OP_REP"):
                    raise ConnectionLostError(f"{self.what}: server closed the connection without a reply{why}")
                raise ProtocolError(f"{self.what}: server closed the connection after {got} of {size} bytes of "
                                    f"{part}{why}")
            got += n
        return bytes(buf)


def _why(sock: socket.socket) -> str:
    """What a relayed transport knows of why the stream ended, as a suffix for an error."""
    why = closed_reason(sock)
    return f" ({why})" if why else ""


def list_devices(host: str, port: int = P.USBIP_PORT, timeout: Optional[float] = DEFAULT_TIMEOUT, *,
                 ssl: TlsArg = None, connect: Optional[Connector] = None) -> List[P.UsbDevice]:
    """OP_REQ_DEVLIST: the devices a server exports (busid, path, ids, speed, interfaces...).

    ``timeout`` bounds the connect and the whole exchange; 0 or None waits forever. ``ssl`` and
    ``connect``: see :func:`connect`.

    Raises:
        ConnectionLostError: cannot connect / the server hung up (TlsError: the handshake failed).
        UsbipTimeoutError: no complete reply within ``timeout`` seconds.
        ImportRefusedError: the server answered with a non-zero status.
        ProtocolError: a malformed reply.
    """
    where = f"{host}:{port}"
    sock = _connect(host, port, timeout, ssl, connect)
    try:
        ex = _Exchange(sock, f"device list from {where}", timeout)
        ex.send(P.pack_req_devlist())
        return P.read_rep_devlist(ex.recv, MAX_DEVICES, where)
    finally:
        sock.close()


def _connect(host: str, port: int, timeout: Optional[float], ssl: TlsArg,
             connector: Optional[Connector]) -> socket.socket:
    return connect(host, port, timeout, ssl=ssl, connect=connector)


def import_device(
    host: str,
    port: int = P.USBIP_PORT,
    busid: str = "",
    timeout: Optional[float] = DEFAULT_TIMEOUT,
    hook: Optional[UrbHook] = None,
    *,
    ssl: TlsArg = None,
    connect: Optional[Connector] = None,
    **conn_kw: Any,
) -> Connection:
    """OP_REQ_IMPORT ``busid`` and return the live :class:`Connection` (one connection each).

    ``timeout`` bounds the connect and the exchange (0 or None: forever); ``ssl`` and
    ``connect``: see :func:`connect`; ``conn_kw`` go to :class:`Connection`. The exchange's round
    trip seeds the connection's RTT estimate.

    Raises:
        ImportRefusedError: the server answered ST_DEV_BUSY / ST_NODEV / ...; names the busid.
        UsbipTimeoutError, ConnectionLostError, ProtocolError: as for :func:`list_devices`.
    """
    if not busid:
        raise ValueError("import_device needs a busid")
    P.encode_busid(busid)  # validate before connecting
    where = f"{host}:{port}"
    sock = _connect(host, port, timeout, ssl, connect)
    try:
        ex = _Exchange(sock, f"import of {busid} from {where}", timeout)
        ex.send(P.pack_req_import(busid))
        sent = time.monotonic()
        header = P.OpHeader.unpack(ex.recv(P.OP_COMMON_SIZE, "OP_REP_IMPORT header"), P.OP_REP_IMPORT)
        rtt = time.monotonic() - sent
        if header.status != P.Status.ST_OK:
            raise ImportRefusedError(
                f"{where} refused to export {busid}: {P.status_text(header.status)}",
                busid=busid, status=header.status,
            )
        dev = P.UsbDevice.unpack(ex.recv(P.USB_DEVICE_SIZE, "OP_REP_IMPORT device record"))
        if dev.busid != busid:
            # usbip's query_import_device() refuses a reply for another device too.
            raise ProtocolError(f"{where}: asked to import {busid}, the server answered with {dev.busid!r}")
    except BaseException:
        sock.close()
        raise
    conn_kw.setdefault("rtt", rtt)
    return Connection(sock, dev, name=f"{busid}@{where}", hook=hook, **conn_kw)
