"""Short OP_* exchanges with a USB/IP server: list exported devices, import one.

Follows the flow of the kernel's ``usbip`` tool (usbip_network.c): connect with TCP_NODELAY and
SO_KEEPALIVE, send one OP_REQ_*, read the OP_REP_*. After a successful import the same socket
carries the URB stream and is handed to :class:`~usbip_backend.engine.Connection`.
"""

from __future__ import annotations

import logging
import socket
import time
from dataclasses import replace
from typing import Any, List, Optional

from . import protocol as P
from .engine import Connection
from .errors import ConnectionLostError, ImportRefusedError, ProtocolError, UsbipTimeoutError
from .hooks import UrbHook

_log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 5.0
#: Bound on the device count we accept in OP_REP_DEVLIST (the field is a peer-chosen u32).
MAX_DEVICES = 4096


def socket_timeout(timeout: Optional[float]) -> Optional[float]:
    """A timeout as sockets take it: None (wait forever) for None, 0 or less, as everywhere in
    this package (a socket timeout of 0 would mean non-blocking instead)."""
    return timeout if timeout is not None and timeout > 0 else None


def connect(host: str, port: int = P.USBIP_PORT, timeout: Optional[float] = DEFAULT_TIMEOUT) -> socket.socket:
    """Open a TCP connection the way usbip_net_tcp_connect() does (``timeout`` 0: no limit)."""
    try:
        sock = socket.create_connection((host, port), timeout=socket_timeout(timeout))
    except socket.timeout as exc:
        raise UsbipTimeoutError(f"connecting to {host}:{port} timed out after {timeout:g} s") from exc
    except ConnectionRefusedError as exc:
        raise ConnectionLostError(f"connection to {host}:{port} refused: is a USB/IP server running there?") from exc
    except OSError as exc:
        raise ConnectionLostError(f"cannot connect to {host}:{port}: {exc.strerror or exc}") from exc
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    except OSError:  # pragma: no cover - exotic platforms
        pass
    return sock


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
            raise ConnectionLostError(f"{self.what}: send failed: {exc}") from exc

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
                raise ConnectionLostError(f"{self.what}: connection failed while reading {part}: {exc}") from exc
            if not n:
                if got == 0 and part.startswith("OP_REP"):
                    raise ConnectionLostError(f"{self.what}: server closed the connection without a reply")
                raise ProtocolError(f"{self.what}: server closed the connection after {got} of {size} bytes of {part}")
            got += n
        return bytes(buf)


def list_devices(host: str, port: int = P.USBIP_PORT,
                 timeout: Optional[float] = DEFAULT_TIMEOUT) -> List[P.UsbDevice]:
    """OP_REQ_DEVLIST: the devices a server exports (busid, path, ids, speed, interfaces...).

    ``timeout`` bounds the connect and the whole exchange; 0 or None waits forever.

    Raises:
        ConnectionLostError: cannot connect / the server hung up.
        UsbipTimeoutError: no complete reply within ``timeout`` seconds.
        ProtocolError: a malformed reply.
    """
    where = f"{host}:{port}"
    sock = connect(host, port, timeout)
    try:
        ex = _Exchange(sock, f"device list from {where}", timeout)
        ex.send(P.pack_req_devlist())
        header = P.OpHeader.unpack(ex.recv(P.OP_COMMON_SIZE, "OP_REP_DEVLIST header"), P.OP_REP_DEVLIST)
        if header.status != P.Status.ST_OK:
            raise ImportRefusedError(f"{where} refused the device list: {P.status_text(header.status)}",
                                     status=header.status)
        (count,) = P.DEVLIST_COUNT_STRUCT.unpack(ex.recv(4, "device count"))
        if count > MAX_DEVICES:
            raise ProtocolError(f"{where}: OP_REP_DEVLIST claims {count} devices (limit {MAX_DEVICES})")
        devices = []
        for i in range(count):
            dev = P.UsbDevice.unpack(ex.recv(P.USB_DEVICE_SIZE, f"device record {i}"))
            raw = ex.recv(P.USB_INTERFACE_SIZE * dev.bNumInterfaces, f"interfaces of {dev.busid}")
            ifs = tuple(P.UsbInterface.unpack(raw, j * P.USB_INTERFACE_SIZE) for j in range(dev.bNumInterfaces))
            devices.append(replace(dev, interfaces=ifs))
        return devices
    finally:
        sock.close()


def import_device(
    host: str,
    port: int = P.USBIP_PORT,
    busid: str = "",
    timeout: Optional[float] = DEFAULT_TIMEOUT,
    hook: Optional[UrbHook] = None,
    **conn_kw: Any,
) -> Connection:
    """OP_REQ_IMPORT ``busid`` and return the live :class:`Connection` (one TCP connection each).

    ``timeout`` bounds the connect and the exchange (0 or None: forever); ``conn_kw`` go to
    :class:`Connection`. The exchange's round trip seeds the connection's RTT estimate.

    Raises:
        ImportRefusedError: the server answered ST_DEV_BUSY / ST_NODEV / ...; names the busid.
        UsbipTimeoutError, ConnectionLostError, ProtocolError: as for :func:`list_devices`.
    """
    if not busid:
        raise ValueError("import_device needs a busid")
    P.encode_busid(busid)  # validate before connecting
    where = f"{host}:{port}"
    sock = connect(host, port, timeout)
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
