"""Benchmark worker: one client implementation in its own process, driven over stdin/stdout.

``python worker.py IMPL HOST PORT BUSID`` with IMPL one of

* ``raw``    - the socket+struct floor (rawclient.py, no usbip_backend import at all);
* ``rawpump`` - a bare python-libusb1-shaped callback pump on a raw socket (rawclient.py): what a
  pump costs without the engine's guarantees;
* ``engine`` - our URB engine used directly (usbip_backend.client.import_device);
* ``ceiling`` - usb.core over ceiling.CeilingBackend (raw socket code in the backend methods);
* ``stream`` - our windowed streaming layer (usbip_backend.stream.stream_in);
* ``aio``    - our asyncio API (usbip_backend.aio) on a loop the worker keeps;
* ``rawaio`` - the asyncio floor: an asyncio.Protocol per device, the loop reading the socket
  (rawaio.py, no usbip_backend import), the design aio did not take;
* ``serial`` - pyserial's ``serial_for_url("usbip://...")`` (our handler) on a CDC-ACM echo;
* ``pyusb``  - whatever ``usbip_backend.get_backend`` the interpreter imports, driven through
  ``usb.core``. run.py starts it twice: with our src/ on the path, and with the published
  ``pyusb-usbip-backend==0.0.1`` venv's python, so both do exactly the same PyUSB calls.

Each stdin line is a JSON command ``{"op": NAME, ...params}``; each reply is one JSON line
``{"ok": true, "result": {...}}`` or ``{"ok": false, "error": "..."}``. The worker keeps its
imported device between commands; "close" (or EOF) ends it. CPU figures are process CPU time
(time.process_time: every thread of this process, the reader thread included), never wall time.
"""

from __future__ import annotations

import array
import json
import os
import sys
import threading
import time
import traceback
from typing import Any, Callable, Dict, List, Optional

BULK_SOURCE_IN = 0x82  # sim LoopbackDevice: always returns the pattern
BULK_SINK_OUT = 0x02  # sim LoopbackDevice: accepts the pattern
LOOP_IN = 0x81  # pending until something is written to LOOP_OUT
LOOP_OUT = 0x01
MiB = 1 << 20


def pattern(n: int) -> bytes:
    """The sim's source/sink pattern: byte i is i % 63."""
    return (bytes(range(63)) * (n // 63 + 1))[:n]


def rss_kib() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def _measure(fn: Callable[[], Any], units: float) -> Dict[str, float]:
    """Run fn once; wall rate in units/s and process CPU seconds per unit."""
    c0, t0 = time.process_time(), time.perf_counter()
    fn()
    t1, c1 = time.perf_counter(), time.process_time()
    wall = max(t1 - t0, 1e-9)
    return {"rate": units / wall, "cpu_per": (c1 - c0) / units, "wall": wall}


# -- implementations --------------------------------------------------------------------------------
class RawImpl:
    def __init__(self, host: str, port: int, busid: str) -> None:
        import rawclient  # tools/bench is sys.path[0]
        self.rc = rawclient
        self.dev = rawclient.RawDevice(host, port, busid)

    def ctrl(self, n: int) -> Dict[str, float]:
        return _measure(lambda: self.dev.control_loop(n), n)

    def bulk_in(self, size: int, n: int) -> Dict[str, float]:
        return _measure(lambda: self.dev.bulk_in_loop(BULK_SOURCE_IN & 0x0F, size, n), n * size / MiB)

    def bulk_out(self, size: int, n: int) -> Dict[str, float]:
        payload = pattern(size)
        return _measure(lambda: self.dev.bulk_out_loop(BULK_SINK_OUT, payload, n), n * size / MiB)

    def pipe(self, kind: str, depth: int, size: int, n: int) -> Dict[str, float]:
        ep = 0 if kind == "control" else BULK_SOURCE_IN & 0x0F
        return _measure(lambda: self.dev.pipelined_loop(ep, size, depth, n), n)

    def close(self) -> None:
        self.dev.close()


class RawPumpImpl(RawImpl):
    """rawclient.callback_pump_loop: a bare usb1-shaped callback pump on a raw socket."""

    def pipe(self, kind: str, depth: int, size: int, n: int) -> Dict[str, float]:
        ep = 0 if kind == "control" else BULK_SOURCE_IN & 0x0F
        return _measure(lambda: self.rc.callback_pump_loop(self.dev, ep, size, depth, n), n)


class EngineImpl:
    def __init__(self, host: str, port: int, busid: str) -> None:
        from usbip_backend import protocol as P
        from usbip_backend.client import import_device
        self.P = P
        self.conn = _retry_import(lambda: import_device(host, port, busid, timeout=5.0))
        self.conn.control_transfer(0x00, 9, 1, 0, b"", 5.0)  # SET_CONFIGURATION(1)

    def ctrl(self, n: int) -> Dict[str, float]:
        ct = self.conn.control_transfer

        def loop() -> None:
            for _ in range(n):
                ct(0x80, 6, 0x0100, 0, 18, 5.0)
        return _measure(loop, n)

    def bulk_in(self, size: int, n: int) -> Dict[str, float]:
        buf = bytearray(size)
        transfer, BULK = self.conn.transfer, self.P.TransferType.BULK

        def loop() -> None:
            for _ in range(n):
                transfer(BULK, BULK_SOURCE_IN, buffer=buf, timeout=5.0)
        return _measure(loop, n * size / MiB)

    def bulk_out(self, size: int, n: int) -> Dict[str, float]:
        payload = pattern(size)
        transfer, BULK = self.conn.transfer, self.P.TransferType.BULK

        def loop() -> None:
            for _ in range(n):
                transfer(BULK, BULK_SINK_OUT, data=payload, timeout=5.0)
        return _measure(loop, n * size / MiB)

    def pipe(self, kind: str, depth: int, size: int, n: int) -> Dict[str, float]:
        """A sliding window of ``depth`` URBs, exactly as RawDevice.pipelined_loop does."""
        P = self.P
        submit = self.conn.submit
        if kind == "control":
            setup = P.pack_setup(0x80, 6, 0x0100, 0, 18)
            args, kw = (P.TransferType.CONTROL, 0x80), {"setup": setup, "length": 18}
        else:
            args, kw = (P.TransferType.BULK, BULK_SOURCE_IN), {"length": size}
        # One buffer per window slot, reused (as a real streaming reader would).
        bufs = [bytearray(kw["length"]) for _ in range(depth)]

        def loop() -> None:
            window = []
            sent = 0
            for i in range(min(depth, n)):
                window.append(submit(*args, buffer=bufs[i], **kw))
                sent += 1
            head = 0
            for _ in range(n):
                urb = window[head]
                urb.wait(5.0)
                if sent < n:
                    window[head] = submit(*args, buffer=bufs[head], **kw)
                    sent += 1
                head = (head + 1) % len(window)
        return _measure(loop, n)

    def echo_bulk(self, total: int, block: int) -> Dict[str, float]:
        """Loopback: ``block`` bytes written to 0x01, then read back from 0x81 (a window of IN
        URBs), until ``total`` went round; what the serial handler's echo is compared with."""
        from usbip_backend import stream
        P = self.P
        data = pattern(block)
        pipe = stream.Pipe(self.conn, LOOP_IN, P.TransferType.BULK, 512, 0)

        def loop() -> None:
            for _ in range(total // block):
                self.conn.transfer(P.TransferType.BULK, LOOP_OUT, data=data, timeout=10.0)
                got = 0
                for view in stream.stream_in(pipe, LOOP_IN, block, chunk=16384, window=16, timeout=10.0):
                    got += len(view)
                if got != block:
                    raise RuntimeError(f"echoed {got} of {block} bytes")
        return _measure(loop, total / MiB)

    def pending(self, n: int, read_timeout_ms: int, release: bool) -> Dict[str, Any]:
        """Control latency while a bulk IN waits on another thread, vs idle (engine API)."""
        ct = self.conn.control_transfer
        idle = []
        for _ in range(n):
            t0 = time.perf_counter()
            ct(0x80, 6, 0x0100, 0, 18, 5.0)
            idle.append(time.perf_counter() - t0)
        outcome: Dict[str, Any] = {}

        def reader() -> None:
            try:
                urb = self.conn.transfer(self.P.TransferType.BULK, LOOP_IN, length=512,
                                         timeout=read_timeout_ms / 1000.0)
                outcome["read"] = f"{urb.actual_length} bytes"
            except Exception as exc:
                outcome["read"] = f"{type(exc).__name__}: {exc}"

        t = threading.Thread(target=reader, name="bench-pending-read", daemon=True)
        t.start()
        threading.Event().wait(0.05)  # let the IN URB reach the wire
        busy = []
        for _ in range(n):
            t0 = time.perf_counter()
            ct(0x80, 6, 0x0100, 0, 18, 5.0)
            busy.append(time.perf_counter() - t0)
        if release:
            self.conn.transfer(self.P.TransferType.BULK, LOOP_OUT, data=b"x", timeout=5.0)
        t.join(read_timeout_ms / 1000.0 + 10)
        idle.sort()
        busy.sort()
        return {"idle": idle[len(idle) // 2], "busy": busy[len(busy) // 2], "samples": len(busy), **outcome}

    def timeout(self, ms: int) -> Dict[str, Any]:
        from usbip_backend.errors import UsbipTimeoutError
        t0 = time.perf_counter()
        try:
            self.conn.transfer(self.P.TransferType.BULK, LOOP_IN, length=512, timeout=ms / 1000.0)
            kind = "returned data"
        except UsbipTimeoutError:
            kind = "UsbipTimeoutError"
        elapsed = time.perf_counter() - t0
        return {"elapsed": elapsed, "requested": ms / 1000.0, "raised": kind}

    def close(self) -> None:
        self.conn.close()


class Usb1Impl:
    """Our python-libusb1 API (usbip_backend.usb1): transfers resubmitted from their callbacks,
    which handleEvents() runs on this thread, as libusb1 programs do."""

    def __init__(self, host: str, port: int, busid: str) -> None:
        from usbip_backend import usb1
        self.usb1 = usb1
        self.ctx = usb1.USBContext(host=host, port=port, busids=[busid]).open()
        deadline = time.monotonic() + 5.0
        while True:
            device = next(iter(self.ctx.getDeviceList()), None)
            if device is not None or time.monotonic() > deadline:
                break
            threading.Event().wait(0.05)  # the previous worker's import may not be released yet
        if device is None:
            raise RuntimeError(f"{busid} not found through usb1")
        self.handle = _retry(device.open)
        self.handle.setConfiguration(1)

    def pipe(self, kind: str, depth: int, size: int, n: int) -> Dict[str, float]:
        """``n`` transfers, ``depth`` in flight, each resubmitted from its callback."""
        usb1, handle, ctx = self.usb1, self.handle, self.ctx
        state = {"done": 0, "submitted": 0}

        def on_done(transfer: Any) -> None:
            if transfer.getStatus() != usb1.TRANSFER_COMPLETED:
                raise RuntimeError(f"transfer ended with status {transfer.getStatus()}")
            state["done"] += 1
            if state["submitted"] < n:
                state["submitted"] += 1
                transfer.submit()

        transfers = []
        for _ in range(min(depth, n)):
            t = handle.getTransfer()
            if kind == "control":
                t.setControl(0x80, 6, 0x0100, 0, 18, callback=on_done, timeout=5000)
            else:
                t.setBulk(BULK_SOURCE_IN, bytearray(size), callback=on_done, timeout=5000)
            transfers.append(t)

        def loop() -> None:
            state["done"] = state["submitted"] = 0
            for t in transfers:
                state["submitted"] += 1
                t.submit()
            while state["done"] < n:
                ctx.handleEvents()
        return _measure(loop, n)

    def close(self) -> None:
        self.handle.close()
        self.ctx.close()


class StreamImpl:
    """usbip_backend.stream.stream_in: a window of bulk IN URBs, each into its slot."""

    def __init__(self, host: str, port: int, busid: str) -> None:
        from usbip_backend import protocol as P
        from usbip_backend.client import import_device
        from usbip_backend import stream
        self.stream = stream
        self.conn = _retry_import(lambda: import_device(host, port, busid, timeout=5.0))
        self.conn.control_transfer(0x00, 9, 1, 0, b"", 5.0)
        self.pipe_ = stream.Pipe(self.conn, BULK_SOURCE_IN, P.TransferType.BULK, 512, 0)

    def pipe(self, kind: str, depth: int, size: int, n: int) -> Dict[str, float]:
        if kind != "bulk":
            raise NotImplementedError("streams are bulk")
        stream_in, pipe = self.stream.stream_in, self.pipe_

        def loop() -> None:
            for _ in stream_in(pipe, 0x82, n * size, chunk=size, window=depth, timeout=5.0):
                pass
        return _measure(loop, n)

    def close(self) -> None:
        self.conn.close()


class AioImpl:
    """usbip_backend.aio: every op runs on one event loop the worker keeps."""

    def __init__(self, host: str, port: int, busid: str) -> None:
        import asyncio
        from usbip_backend import aio
        self.asyncio, self.aio = asyncio, aio
        self.loop = asyncio.new_event_loop()
        self.ctx = aio.Context(host, port=port, busids=[busid])
        self.dev = _retry(lambda: self.loop.run_until_complete(self._open()))

    async def _open(self) -> Any:
        await self.ctx.open()
        dev = await self.ctx.device_get().open()
        await dev.set_configuration(1)
        return dev

    def ctrl(self, n: int) -> Dict[str, float]:
        read = self.dev.read

        async def run() -> None:
            for _ in range(n):
                await read(0x80, 6, 0x0100, 0, 18, 5.0)
        return _measure(lambda: self.loop.run_until_complete(run()), n)

    def pipe(self, kind: str, depth: int, size: int, n: int) -> Dict[str, float]:
        asyncio, dev = self.asyncio, self.dev
        if kind == "control":
            async def one_lane(count: int) -> None:
                for _ in range(count):
                    await dev.read(0x80, 6, 0x0100, 0, 18, 5.0)

            async def run() -> None:  # depth coroutines, each one control round trip at a time
                await asyncio.gather(*(one_lane(n // depth + (i < n % depth)) for i in range(depth)))
        else:
            ep = dev.interface_claim(0).open(BULK_SOURCE_IN)

            async def run() -> None:
                async for _ in ep.stream(n * size, chunk=size, window=depth, timeout=5.0):
                    pass
        return _measure(lambda: self.loop.run_until_complete(run()), n)

    def close(self) -> None:
        self.loop.run_until_complete(self.ctx.close())
        self.loop.run_until_complete(self.loop.shutdown_default_executor())
        self.loop.close()


class RawAioImpl:
    """rawaio.py: the loop drives the socket (no engine)."""

    def __init__(self, host: str, port: int, busid: str) -> None:
        import asyncio
        import rawaio
        self.asyncio, self.rawaio = asyncio, rawaio
        self.loop = asyncio.new_event_loop()
        self.dev = _retry(lambda: self.loop.run_until_complete(rawaio.RawAioDevice.open(host, port, busid)))

    def ctrl(self, n: int) -> Dict[str, float]:
        dev = self.dev

        async def run() -> None:
            for _ in range(n):
                await dev.control()
        return _measure(lambda: self.loop.run_until_complete(run()), n)

    def pipe(self, kind: str, depth: int, size: int, n: int) -> Dict[str, float]:
        return _measure(lambda: self.loop.run_until_complete(self.rawaio.window(self.dev, kind, depth, size, n)), n)

    def close(self) -> None:
        self.loop.run_until_complete(self.dev.close())
        self.loop.close()


class SerialImpl:
    """pyserial's serial_for_url("usbip://...") on the virtual CDC-ACM echo."""

    def __init__(self, host: str, port: int, busid: str) -> None:
        import serial
        import usbip_backend  # noqa: F401  (registers usbip://)
        self.ser = _retry(lambda: serial.serial_for_url(f"usbip://{host}:{port}/{busid}", timeout=10))

    def echo1(self, n: int) -> Dict[str, float]:
        write, read = self.ser.write, self.ser.read

        def loop() -> None:
            for _ in range(n):
                write(b"x")
                if read(1) != b"x":
                    raise RuntimeError("echo lost a byte")
        return _measure(loop, n)

    def echo_bulk(self, total: int, block: int) -> Dict[str, float]:
        data = pattern(block)
        write, read = self.ser.write, self.ser.read

        def loop() -> None:
            for _ in range(total // block):
                write(data)
                got = read(block)
                if len(got) != block:
                    raise RuntimeError(f"echoed {len(got)} of {block} bytes")
        return _measure(loop, total / MiB)

    def close(self) -> None:
        self.ser.close()


class PyusbImpl:
    """usb.core on top of ``usbip_backend.get_backend`` (ours or the published one)."""

    def __init__(self, host: str, port: int, busid: str) -> None:
        import usb.core
        import usbip_backend
        self.usb = usb
        self.module = usbip_backend.__file__
        self.host, self.port, self.busid = host, port, busid
        busnum = int(busid.split("-")[0])
        self.backend = _get_backend(usbip_backend, host, port, [busid])
        dev = None
        deadline = time.monotonic() + 5.0
        while dev is None and time.monotonic() < deadline:
            devs = list(usb.core.find(find_all=True, backend=self.backend, idVendor=0x1209, idProduct=0x0001))
            dev = next((d for d in devs if d.bus == busnum), None)
            if dev is None:  # the previous worker's import may not be released yet
                threading.Event().wait(0.05)
                self.backend = _get_backend(usbip_backend, host, port, [busid])
        if dev is None:
            raise RuntimeError(f"loopback device on bus {busnum} not found through usb.core")
        self.dev = dev
        _retry(lambda: dev.set_configuration())

    def ctrl(self, n: int) -> Dict[str, float]:
        ct = self.dev.ctrl_transfer

        def loop() -> None:
            for _ in range(n):
                ct(0x80, 6, 0x0100, 0, 18, 5000)
        return _measure(loop, n)

    def bulk_in(self, size: int, n: int) -> Dict[str, float]:
        buf = array.array("B", bytes(size))
        read = self.dev.read

        def loop() -> None:
            for _ in range(n):
                read(BULK_SOURCE_IN, buf, 5000)
        return _measure(loop, n * size / MiB)

    def bulk_out(self, size: int, n: int) -> Dict[str, float]:
        payload = array.array("B", pattern(size))
        write = self.dev.write

        def loop() -> None:
            for _ in range(n):
                write(BULK_SINK_OUT, payload, 5000)
        return _measure(loop, n * size / MiB)

    def pending(self, n: int, read_timeout_ms: int, release: bool) -> Dict[str, Any]:
        """Control latency while a bulk IN on another thread waits for data, vs idle."""
        ct = self.dev.ctrl_transfer
        idle = []
        for _ in range(n):
            t0 = time.perf_counter()
            ct(0x80, 6, 0x0100, 0, 18, 5000)
            idle.append(time.perf_counter() - t0)
        outcome: Dict[str, Any] = {}
        started = threading.Event()

        def reader() -> None:
            started.set()
            try:
                got = self.dev.read(LOOP_IN, 512, read_timeout_ms)
                outcome["read"] = f"{len(got)} bytes"
            except Exception as exc:  # recorded, the benchmark goes on
                outcome["read"] = f"{type(exc).__name__}: {exc}"

        t = threading.Thread(target=reader, name="bench-pending-read", daemon=True)
        t.start()
        started.wait()
        # Give the reader thread time to put its IN URB on the wire. (No control request here to
        # prove it: with the published client that request would be the one that blocks.)
        threading.Event().wait(0.05)
        busy = []
        for _ in range(n):
            t0 = time.perf_counter()
            try:
                ct(0x80, 6, 0x0100, 0, 18, 5000 + read_timeout_ms)
            except Exception as exc:
                outcome["control"] = f"{type(exc).__name__}: {exc}"
                busy.append(time.perf_counter() - t0)
                break
            busy.append(time.perf_counter() - t0)
            if "read" in outcome:
                outcome["note"] = "the bulk read finished during the measurement"
                break
        if release and "read" not in outcome:
            self.dev.write(LOOP_OUT, b"x", 5000)
        t.join(read_timeout_ms / 1000.0 + 10)
        idle.sort()
        busy.sort()
        return {"idle": idle[len(idle) // 2], "busy": busy[len(busy) // 2], "samples": len(busy), **outcome}

    def timeout(self, ms: int) -> Dict[str, Any]:
        """How long a bulk IN that never gets data takes to raise, for a requested timeout."""
        t0 = time.perf_counter()
        try:
            self.dev.read(LOOP_IN, 512, ms)
            kind = "returned data"
        except self.usb.core.USBTimeoutError:
            kind = "USBTimeoutError"
        except self.usb.core.USBError as exc:
            kind = f"USBError({exc})"
        elapsed = time.perf_counter() - t0
        return {"elapsed": elapsed, "requested": ms / 1000.0, "raised": kind}

    def close(self) -> None:
        import usb.util
        try:
            usb.util.dispose_resources(self.dev)
        except Exception:
            pass
        close = getattr(self.backend, "close", None)
        if close is not None:
            close()
        else:  # the published backend has no close(): shut its sockets
            for conn in getattr(self.backend, "_conns", {}).values():
                conn.close()


class CeilingImpl(PyusbImpl):
    """usb.core over ceiling.CeilingBackend: the most any PyUSB backend could reach."""

    def __init__(self, host: str, port: int, busid: str) -> None:
        import usb.core
        import ceiling
        import rawclient
        self.usb = usb
        self.module = ceiling.__file__
        self.raw = _retry_import(lambda: rawclient.RawDevice(host, port, busid))
        self.backend = ceiling.CeilingBackend(self.raw)
        self.dev = usb.core.find(backend=self.backend)
        self.dev.set_configuration()

    def close(self) -> None:
        import usb.util
        usb.util.dispose_resources(self.dev)
        self.raw.close()


def _transport_kw() -> Dict[str, Any]:
    """TLS (BENCH_TLS_CA: the CA to trust) or the relay alone (BENCH_RELAY), for our backend."""
    kw: Dict[str, Any] = {}
    ca = os.environ.get("BENCH_TLS_CA")
    if ca:
        import ssl
        kw["ssl"] = ssl.create_default_context(cafile=ca)
    if os.environ.get("BENCH_RELAY"):
        import socket

        from barestream import BareStream  # tools/bench is sys.path[0]

        def connect(host: str, port: int, timeout: Optional[float]) -> BareStream:
            sock = socket.create_connection((host, port), timeout)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return BareStream(sock)
        kw["connect"] = connect
    return kw


def _get_backend(module: Any, host: str, port: int, busids: List[str]) -> Any:
    """Ours can be told which busids to import (else find() imports every listed device);
    the published get_backend has no such parameter and imports on first use anyway."""
    kw = _transport_kw()
    try:
        return module.get_backend(host, port, busids=busids, **kw)
    except TypeError:
        if kw:
            raise
        return module.get_backend(host, port)


def _retry(fn: Callable[[], Any], seconds: float = 5.0) -> Any:
    deadline = time.monotonic() + seconds
    while True:
        try:
            return fn()
        except Exception:
            if time.monotonic() > deadline:
                raise
            threading.Event().wait(0.05)


def _retry_import(fn: Callable[[], Any]) -> Any:
    # The previous worker's connection to the same busid may still be being released (ST_DEV_BUSY).
    return _retry(fn)


# -- scale: many devices from one process ------------------------------------------------------------
def scale(impl: str, host: str, port: int, busids: List[str], rounds: int, depth: int) -> Dict[str, Any]:
    """Import every busid, then keep ``depth`` control URBs in flight on each, from one thread."""
    threads0, rss0 = threading.active_count(), rss_kib()
    if impl == "raw":
        import rawclient
        devs = [rawclient.RawDevice(host, port, b) for b in busids]
        threads1, rss1 = threading.active_count(), rss_kib()
        result = _measure(lambda: rawclient.scale_round(devs, rounds), rounds * len(devs))
        rss2 = rss_kib()
        for d in devs:
            d.close()
    elif impl == "engine":
        from usbip_backend import protocol as P
        from usbip_backend.client import import_device
        conns = [_retry_import(lambda b=b: import_device(host, port, b, timeout=5.0)) for b in busids]
        for c in conns:
            c.control_transfer(0x00, 9, 1, 0, b"", 5.0)  # SET_CONFIGURATION(1)
        threads1, rss1 = threading.active_count(), rss_kib()
        setup = P.pack_setup(0x80, 6, 0x0100, 0, 18)
        CONTROL = P.TransferType.CONTROL

        def loop() -> None:
            for _ in range(rounds):
                urbs = [c.submit(CONTROL, 0x80, setup=setup, length=18) for c in conns for _ in range(depth)]
                for u in urbs:
                    u.wait(10.0)
        result = _measure(loop, rounds * len(conns) * depth)
        rss2 = rss_kib()
        for c in conns:
            c.close()
    elif impl in ("aio", "rawaio"):
        import asyncio
        loop = asyncio.new_event_loop()
        if impl == "aio":
            from usbip_backend import aio
            ctx = aio.Context(host, port=port, busids=busids)

            async def open_all() -> List[Any]:
                await ctx.open()
                devs = await asyncio.gather(*(d.open() for d in ctx))
                for d in devs:
                    await d.set_configuration(1)
                return list(devs)

            def one(d: Any) -> Any:
                return d.read(0x80, 6, 0x0100, 0, 18, 10.0)
        else:
            import rawaio

            async def open_all() -> List[Any]:
                return list(await asyncio.gather(*(rawaio.RawAioDevice.open(host, port, b) for b in busids)))

            def one(d: Any) -> Any:
                return d.control()
        devs = loop.run_until_complete(open_all())
        threads1, rss1 = threading.active_count(), rss_kib()

        async def rounds_() -> None:
            for _ in range(rounds):
                await asyncio.gather(*(one(d) for d in devs for _ in range(depth)))
        result = _measure(lambda: loop.run_until_complete(rounds_()), rounds * len(devs) * depth)
        rss2 = rss_kib()
        if impl == "aio":
            loop.run_until_complete(ctx.close())
        else:
            async def close_all() -> None:
                await asyncio.gather(*(d.close() for d in devs))
            loop.run_until_complete(close_all())
        loop.run_until_complete(loop.shutdown_default_executor())
        loop.close()
    elif impl == "pyusb":
        import usb.core
        import usbip_backend
        be = _get_backend(usbip_backend, host, port, busids)
        wanted = {int(b.split("-")[0]) for b in busids}
        devs = [d for d in usb.core.find(find_all=True, backend=be, idVendor=0x1209, idProduct=0x0001)
                if d.bus in wanted]
        for d in devs:  # import every device (first I/O opens it)
            d.ctrl_transfer(0x80, 6, 0x0100, 0, 18, 5000)
        threads1, rss1 = threading.active_count(), rss_kib()
        errors: List[str] = []

        def drive(d) -> None:
            try:
                for _ in range(rounds * depth):
                    d.ctrl_transfer(0x80, 6, 0x0100, 0, 18, 10000)
            except Exception as exc:
                errors.append(repr(exc))

        def loop() -> None:
            ts = [threading.Thread(target=drive, args=(d,), name="bench-drive") for d in devs]
            for t in ts:
                t.start()
            for t in ts:
                t.join()
        result = _measure(loop, rounds * len(devs) * depth)
        rss2 = rss_kib()
        if errors:
            result["errors"] = errors[:3]
        close = getattr(be, "close", None)
        if close is not None:
            close()
        busids = [str(d.bus) for d in devs]
    else:
        raise ValueError(impl)
    n = max(len(busids), 1)
    result.update({
        "devices": len(busids),
        "threads_per_device": (threads1 - threads0) / n,
        "rss_kib_per_device": (max(rss1, rss2) - rss0) / n,
    })
    return result


# -- main loop ---------------------------------------------------------------------------------------
def main(argv: List[str]) -> int:
    impl_name, host, port, busid = argv[0], argv[1], int(argv[2]), argv[3]
    out = sys.stdout
    impl: Optional[Any] = None

    def reply(obj: Dict[str, Any]) -> None:
        out.write(json.dumps(obj) + "\n")
        out.flush()

    for line in sys.stdin:
        cmd = json.loads(line)
        op = cmd.pop("op")
        if op == "close":
            break
        try:
            if op == "scale":
                result = scale(impl_name, host, port, **cmd)
            else:
                if impl is None:
                    cls = {"raw": RawImpl, "engine": EngineImpl, "pyusb": PyusbImpl,
                           "ceiling": CeilingImpl, "usb1": Usb1Impl, "stream": StreamImpl,
                           "aio": AioImpl, "rawaio": RawAioImpl, "serial": SerialImpl,
                           "rawpump": RawPumpImpl}[impl_name]
                    impl = cls(host, port, busid)
                if op == "hello":
                    result = {"module": getattr(impl, "module", None), "pid": os.getpid()}
                else:
                    method = getattr(impl, op, None)
                    if method is None:
                        reply({"ok": False, "error": f"{impl_name} cannot do {op}", "unsupported": True})
                        continue
                    result = method(**cmd)
            reply({"ok": True, "result": result})
        except Exception as exc:
            reply({"ok": False, "error": f"{type(exc).__name__}: {exc}",
                   "trace": traceback.format_exc(limit=6)})
    if impl is not None:
        try:
            impl.close()
        except Exception:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
