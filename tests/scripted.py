"""A scripted USB/IP peer for engine tests: a real TCP server on 127.0.0.1 whose every byte the
test decides. It answers OP_REQ_IMPORT with a fixed record, then hands the socket to the test's
script function, which runs on the server thread."""

from __future__ import annotations

import socket
import struct
import threading
from typing import Callable, Optional

from usbip_backend import protocol as P

DEVICE = P.UsbDevice(
    path="/sys/devices/pci0000:00/0000:00:1d.0/usb2/2-1", busid="2-1", busnum=2, devnum=5,
    speed=P.Speed.HIGH, idVendor=0x1209, idProduct=0x0001, bcdDevice=0x0100,
    bDeviceClass=0, bDeviceSubClass=0, bDeviceProtocol=0, bConfigurationValue=1,
    bNumConfigurations=1, bNumInterfaces=1, interfaces=(P.UsbInterface(0xFF, 0, 0),),
)


def recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise EOFError
        buf += chunk
    return buf


def read_cmd(sock: socket.socket):
    """Read one CMD_SUBMIT (with its OUT data and ISO descriptors) or CMD_UNLINK."""
    raw = recv_exact(sock, 48)
    cmd = P.unpack_urb_header(raw)
    data = b""
    isos = []
    if isinstance(cmd, P.CmdSubmit):
        if cmd.direction == P.USBIP_DIR_OUT and cmd.transfer_buffer_length:
            data = recv_exact(sock, cmd.transfer_buffer_length)
        if cmd.number_of_packets:
            isos = P.unpack_iso_packets(recv_exact(sock, 16 * cmd.number_of_packets), cmd.number_of_packets)
    return cmd, raw, data, isos


def ret_submit(seqnum: int, status: int = 0, data: bytes = b"", actual: Optional[int] = None,
               isos=(), start_frame: int = 0) -> bytes:
    """A RET_SUBMIT as the kernel sends it (devid/direction/ep zero)."""
    actual = len(data) if actual is None else actual
    return P.RetSubmit(seqnum, status, actual, start_frame, len(isos)).pack() + data + P.pack_iso_packets(isos)


def ret_unlink(seqnum: int, status: int) -> bytes:
    return P.RetUnlink(seqnum, status).pack()


class ScriptedServer:
    """Accepts one import, then runs ``script(sock)`` on its thread. With ``then``, a second
    connection is accepted afterwards and runs ``then(sock)`` (to show a fresh import works after
    the first connection broke)."""

    def __init__(self, script: Callable[[socket.socket], None], device: P.UsbDevice = DEVICE,
                 import_status: int = 0, answer: bool = True,
                 then: Optional[Callable[[socket.socket], None]] = None) -> None:
        self.script = script
        self.then = then
        self.device = device
        self.import_status = import_status
        self.answer = answer
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(4)
        self.port = self.listener.getsockname()[1]
        self.error: Optional[BaseException] = None
        self.done = threading.Event()
        self.release = threading.Event()  # for scripts that must hold the connection open
        self.thread = threading.Thread(target=self._run, name="scripted-server", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        self._serve(self.script)
        if self.then is not None and self.error is None and not self.release.is_set():
            self._serve(self.then)
        self.done.set()

    def _serve(self, script: Callable[[socket.socket], None]) -> None:
        conn = None
        try:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return  # closed before a client came
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            hdr = P.OpHeader.unpack(recv_exact(conn, 8))
            if hdr.code == P.OP_REQ_DEVLIST:
                conn.sendall(P.pack_rep_devlist([self.device]))
                return
            recv_exact(conn, 32)
            if not self.answer:
                self.release.wait(30)
                return
            conn.sendall(P.pack_rep_import(self.device, self.import_status))
            if self.import_status == 0:
                script(conn)
        except (EOFError, ConnectionResetError, BrokenPipeError):
            pass
        except BaseException as exc:  # surfaced by close()
            self.error = exc
        finally:
            if conn is not None:
                conn.close()

    def close(self) -> None:
        self.release.set()
        try:
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes an accept() still waiting (Linux)
        except OSError:
            pass
        self.listener.close()
        self.thread.join(10)
        assert not self.thread.is_alive(), "scripted server thread did not end"
        if self.error is not None:
            raise self.error

    def __enter__(self) -> "ScriptedServer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def u32(raw: bytes, offset: int) -> int:
    return struct.unpack_from(">I", raw, offset)[0]
