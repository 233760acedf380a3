"""The raw floor: the least a Python USB/IP client can do, with nothing but ``socket`` and ``struct``.

Each loop is "pack, sendall, recv_into" with every struct precompiled and every buffer allocated
once, no reader thread, no seqnum table, no error handling beyond EOF. It is what the issue calls
the physical limit for Python on this machine: our client's figures are reported as ratios to it.
This module must not import anything from ``usbip_backend`` (the wire layout is restated here on
purpose, as the floor is independent of the code it measures).
"""

from __future__ import annotations

import socket
import struct
from typing import List

# OP_REQ_IMPORT / OP_REP_IMPORT (usbip_protocol.rst, "OP_REQ_IMPORT")
_OP = struct.Struct(">HHI")
_OP_REQ_IMPORT = 0x8003
_DEVICE_RECORD = 312
# CMD_SUBMIT: command seqnum devid direction ep transfer_flags length start_frame npackets interval setup
_CMD = struct.Struct(">IIIII" "Iiiii8s")
_RET = struct.Struct(">IIIII" "iiiii8x")
_CMD_SUBMIT = 1
_DIR_IN_FLAG = 0x200  # USBIP_URB_DIR_IN

GET_DEVICE_DESCRIPTOR = bytes([0x80, 0x06, 0x00, 0x01, 0x00, 0x00, 18, 0x00])


def _recv_exact(sock: socket.socket, view: memoryview) -> None:
    got, need = 0, len(view)
    while got < need:
        n = sock.recv_into(view[got:], need - got)
        if not n:
            raise EOFError("server closed the connection")
        got += n


class RawDevice:
    """One imported device on its own TCP connection, driven synchronously."""

    def __init__(self, host: str, port: int, busid: str, timeout: float = 5.0) -> None:
        sock = socket.create_connection((host, port), timeout=timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            sock.sendall(_OP.pack(0x0111, _OP_REQ_IMPORT, 0) + busid.encode().ljust(32, b"\0"))
            rep = bytearray(_OP.size)
            _recv_exact(sock, memoryview(rep))
            _version, _code, status = _OP.unpack(rep)
            if status:
                raise RuntimeError(f"import of {busid} refused (status {status})")
            record = bytearray(_DEVICE_RECORD)
            _recv_exact(sock, memoryview(record))
            busnum, devnum = struct.unpack_from(">II", record, 288)
        except BaseException:
            sock.close()
            raise
        sock.settimeout(None)
        self.sock = sock
        self.devid = (busnum << 16) | devnum
        self.seq = 0
        self.header = bytearray(48)
        self.hview = memoryview(self.header)
        self.data = bytearray(1 << 20)
        self.dview = memoryview(self.data)
        self.set_configuration(1)

    def set_configuration(self, value: int) -> None:
        """SET_CONFIGURATION (control OUT, no data), as every PyUSB user does first."""
        self.seq += 1
        setup = bytes([0x00, 0x09, value, 0, 0, 0, 0, 0])
        self.sock.sendall(_CMD.pack(_CMD_SUBMIT, self.seq, self.devid, 0, 0, 0, 0, 0, 0, 0, setup))
        _recv_exact(self.sock, self.hview)
        status = _RET.unpack_from(self.header)[5]
        if status:
            raise RuntimeError(f"SET_CONFIGURATION failed (status {status})")

    def close(self) -> None:
        self.sock.close()

    # -- one URB at a time ---------------------------------------------------------------------------
    def control_loop(self, count: int) -> None:
        """``count`` GET_DESCRIPTOR(DEVICE, 18) round trips."""
        self._in_loop(0, 18, GET_DEVICE_DESCRIPTOR, count)

    def bulk_in_loop(self, ep: int, size: int, count: int) -> None:
        self._in_loop(ep, size, bytes(8), count)

    def _in_loop(self, ep: int, size: int, setup: bytes, count: int) -> None:
        """``count`` IN URBs of ``size`` bytes, one at a time: pack, sendall, recv_into."""
        sock, pack, unpack, devid = self.sock, _CMD.pack, _RET.unpack_from, self.devid
        sendall, recv_into = sock.sendall, sock.recv_into
        hview, dview, header = self.hview, self.dview, self.header
        seq = self.seq
        for _ in range(count):
            seq += 1
            sendall(pack(_CMD_SUBMIT, seq, devid, 1, ep, _DIR_IN_FLAG, size, 0, 0, 0, setup))
            got = 0
            while got < 48:
                n = recv_into(hview[got:], 48 - got)
                if not n:
                    raise EOFError
                got += n
            actual = unpack(header)[6]
            got = 0
            while got < actual:
                n = recv_into(dview[got:], actual - got)
                if not n:
                    raise EOFError
                got += n
        self.seq = seq

    def bulk_out_loop(self, ep: int, payload: bytes, count: int) -> None:
        sock, pack, devid = self.sock, _CMD.pack, self.devid
        sendall, recv_into = sock.sendall, sock.recv_into
        hview = self.hview
        size = len(payload)
        setup = bytes(8)
        seq = self.seq
        for _ in range(count):
            seq += 1
            sendall(pack(_CMD_SUBMIT, seq, devid, 0, ep, 0, size, 0, 0, 0, setup))
            sendall(payload)
            got = 0
            while got < 48:
                n = recv_into(hview[got:], 48 - got)
                if not n:
                    raise EOFError
                got += n
        self.seq = seq

    # -- pipelined: a sliding window of ``depth`` URBs in flight ------------------------------------
    def pipelined_loop(self, ep: int, size: int, depth: int, count: int) -> None:
        """``count`` IN URBs (control GET_DESCRIPTOR if ep == 0, else bulk IN of ``size``), keeping
        ``depth`` in flight: send ``depth``, then one new request per reply read."""
        sock, pack, unpack, devid = self.sock, _CMD.pack, _RET.unpack_from, self.devid
        sendall, recv_into = sock.sendall, sock.recv_into
        hview, dview, header = self.hview, self.dview, self.header
        setup = GET_DEVICE_DESCRIPTOR if ep == 0 else bytes(8)
        if ep == 0:
            size = 18
        seq = self.seq
        sent = 0
        for _ in range(min(depth, count)):
            seq += 1
            sent += 1
            sendall(pack(_CMD_SUBMIT, seq, devid, 1, ep, _DIR_IN_FLAG, size, 0, 0, 0, setup))
        for _ in range(count):
            got = 0
            while got < 48:
                n = recv_into(hview[got:], 48 - got)
                if not n:
                    raise EOFError
                got += n
            actual = unpack(header)[6]
            got = 0
            while got < actual:
                n = recv_into(dview[got:], actual - got)
                if not n:
                    raise EOFError
                got += n
            if sent < count:
                seq += 1
                sent += 1
                sendall(pack(_CMD_SUBMIT, seq, devid, 1, ep, _DIR_IN_FLAG, size, 0, 0, 0, setup))
        self.seq = seq


class _PumpTransfer:
    __slots__ = ("view", "seq", "actual", "status", "callback")


def callback_pump_loop(dev: "RawDevice", ep: int, size: int, depth: int, count: int) -> None:
    """``count`` IN URBs through the least a python-libusb1-shaped pump does per URB: a transfer
    object per slot, a seqnum -> transfer table, the transfer's callback called with it, which
    resubmits it. One thread, no locks, no timers, no reader thread, no batching: what the
    engine's guarantees (timeouts, unlinks, exactly-once, thread safety, per-endpoint order)
    are measured against."""
    sock, pack, unpack, devid = dev.sock, _CMD.pack, _RET.unpack_from, dev.devid
    sendall = sock.sendall
    hview, header = dev.hview, dev.header
    setup = GET_DEVICE_DESCRIPTOR if ep == 0 else bytes(8)
    if ep == 0:
        size = 18
    pending = {}
    state = [dev.seq, count]  # last seqnum, URBs still to submit

    def submit(t: _PumpTransfer) -> None:
        state[0] += 1
        state[1] -= 1
        t.seq = state[0]
        pending[t.seq] = t
        sendall(pack(_CMD_SUBMIT, t.seq, devid, 1, ep, _DIR_IN_FLAG, size, 0, 0, 0, setup))

    def on_done(t: _PumpTransfer) -> None:
        if t.status != 0:
            raise RuntimeError(f"transfer ended with status {t.status}")
        if state[1] > 0:
            submit(t)

    for _ in range(min(depth, count)):
        t = _PumpTransfer()
        t.view = memoryview(bytearray(size))
        t.callback = on_done
        submit(t)
    for _ in range(count):
        _recv_exact(sock, hview)
        _, seq, _, _, _, status, actual, _, _, _ = unpack(header)
        t = pending.pop(seq)
        _recv_exact(sock, t.view[:actual])
        t.actual, t.status = actual, status
        t.callback(t)
    dev.seq = state[0]


def scale_round(devices: List[RawDevice], rounds: int) -> None:
    """One control URB in flight on every device at once, ``rounds`` times (one thread)."""
    pack, unpack = _CMD.pack, _RET.unpack_from
    for _ in range(rounds):
        for dev in devices:
            dev.seq += 1
            dev.sock.sendall(pack(_CMD_SUBMIT, dev.seq, dev.devid, 1, 0, _DIR_IN_FLAG, 18, 0, 0, 0,
                                  GET_DEVICE_DESCRIPTOR))
        for dev in devices:
            _recv_exact(dev.sock, dev.hview)
            actual = unpack(dev.header)[6]
            if actual:
                _recv_exact(dev.sock, dev.dview[:actual])
