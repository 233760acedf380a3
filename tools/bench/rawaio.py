"""The other asyncio design, reduced to its floor: the event loop drives the socket itself.

An ``asyncio.Protocol`` per imported device parses RET_SUBMITs in ``data_received`` and resolves
one future per seqnum; no reader thread, no engine (no timers, unlinks, hooks or error paths).
``usbip_backend.aio`` instead lets the engine's reader thread read and wakes the loop through done
callbacks; the benchmark puts the two side by side to show what that choice costs. Like
rawclient.py it imports nothing from ``usbip_backend`` (it takes the wire layout from rawclient.py).
"""

from __future__ import annotations

import asyncio
import struct
from typing import Dict, List, Optional

# The floor's own restatement of the wire layout (rawclient.py), shared by both floors.
from rawclient import (  # noqa: F401
    _CMD, _CMD_SUBMIT, _DEVICE_RECORD, _DIR_IN_FLAG, _OP, _OP_REQ_IMPORT, _RET, GET_DEVICE_DESCRIPTOR,
)


class RawAioDevice(asyncio.Protocol):
    def __init__(self) -> None:
        self.buf = bytearray()
        self.imported: "asyncio.Future[None]" = asyncio.get_running_loop().create_future()
        self.waiting: Dict[int, "asyncio.Future[bytes]"] = {}
        self.transport: Optional[asyncio.Transport] = None
        self.devid = 0
        self.seq = 0
        self.closed: "asyncio.Future[None]" = asyncio.get_running_loop().create_future()

    @classmethod
    async def open(cls, host: str, port: int, busid: str) -> "RawAioDevice":
        loop = asyncio.get_running_loop()
        _, dev = await loop.create_connection(cls, host, port)
        assert dev.transport is not None
        dev.transport.write(_OP.pack(0x0111, _OP_REQ_IMPORT, 0) + busid.encode().ljust(32, b"\0"))
        await dev.imported
        await dev.urb(0, 0, bytes([0x00, 0x09, 1, 0, 0, 0, 0, 0]), 0)  # SET_CONFIGURATION(1)
        return dev

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        if not self.imported.done():
            if len(buf) < _OP.size + _DEVICE_RECORD:
                return
            status = _OP.unpack_from(buf)[2]
            if status:
                self.imported.set_exception(RuntimeError(f"import refused (status {status})"))
                return
            busnum, devnum = struct.unpack_from(">II", buf, _OP.size + 288)
            self.devid = (busnum << 16) | devnum
            del buf[:_OP.size + _DEVICE_RECORD]
            self.imported.set_result(None)
        start = 0
        while len(buf) - start >= 48:
            fields = _RET.unpack_from(buf, start)
            actual = fields[6]
            end = start + 48 + actual
            if len(buf) < end:
                break
            fut = self.waiting.pop(fields[1], None)
            if fut is not None and not fut.done():
                fut.set_result(bytes(buf[start + 48:end]))
            start = end
        if start:
            del buf[:start]

    def connection_lost(self, exc: Optional[Exception]) -> None:
        for fut in self.waiting.values():
            if not fut.done():
                fut.set_exception(EOFError("server closed the connection"))
        if not self.closed.done():
            self.closed.set_result(None)

    def urb(self, ep: int, size: int, setup: bytes, direction: int = 1) -> "asyncio.Future[bytes]":
        assert self.transport is not None
        self.seq += 1
        fut: "asyncio.Future[bytes]" = asyncio.get_running_loop().create_future()
        self.waiting[self.seq] = fut
        self.transport.write(_CMD.pack(_CMD_SUBMIT, self.seq, self.devid, direction, ep,
                                       _DIR_IN_FLAG if direction else 0, size, 0, 0, 0, setup))
        return fut

    def control(self) -> "asyncio.Future[bytes]":
        return self.urb(0, 18, GET_DEVICE_DESCRIPTOR)

    def bulk_in(self, ep: int, size: int) -> "asyncio.Future[bytes]":
        return self.urb(ep, size, bytes(8))

    async def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
            await self.closed


async def window(dev: RawAioDevice, kind: str, depth: int, size: int, count: int) -> None:
    """``count`` URBs, ``depth`` in flight, in order (as rawclient.pipelined_loop)."""
    make = dev.control if kind == "control" else (lambda: dev.bulk_in(0x82 & 0x0F, size))
    flight: List["asyncio.Future[bytes]"] = [make() for _ in range(min(depth, count))]
    sent = len(flight)
    head = 0
    for _ in range(count):
        await flight[head]
        if sent < count:
            flight[head] = make()
            sent += 1
        head = (head + 1) % len(flight)
