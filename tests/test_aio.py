"""usbip_backend.aio: asyncio programs against the virtual server over TCP.

Stock devices (VID 0x1209): 1-1 loopback (0x01 -> 0x81 loopback, 0x82 source, 0x02 sink, 0x5B/
0x5C control loopback), 1-2 CDC-ACM echo, 1-3 HID keyboard, 1-4 isochronous (interface 0 alt 1).
Each test runs its own loop with asyncio.run (which also shuts the default executor down).
"""

from __future__ import annotations

import asyncio
import gc
import random
import sys
import threading
import time

import pytest

from usbip_backend import aio
from usbip_backend.client import import_device
from usbip_backend.errors import NotFoundError
from usbip_backend.sim import SimServer
from usbip_backend.sim.devices import LoopbackDevice, pattern, stock_devices

VID = 0x1209


@pytest.fixture
def server():
    with SimServer(stock_devices()) as srv:
        yield srv


def run(coro):
    return asyncio.run(coro)


def wait_for(condition, timeout=10.0):
    """Poll a condition another thread makes true (bounded)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        threading.Event().wait(0.001)


async def open_loopback(ctx):
    device = await ctx.device_get(vendor_id=VID, product_id=0x0001).open()
    await device.set_configuration(1)
    intf = device.interface_claim(0)
    alt = intf.descriptor[0]
    return device, intf.open(alt.endpoint_by_address(0x81)), intf.open(alt.endpoint_by_address(0x01))


def test_the_readme_example(server):
    async def main():
        async with aio.Context("127.0.0.1", port=server.port) as ctx:
            listed = {(d.bus, d.address, d.vendor_id, d.product_id) for d in ctx}
            assert (1, 2, VID, 0x0001) in listed and len(ctx) == 4
            desc = ctx.device_get(vendor_id=VID, product_id=0x0001)
            assert desc.configurations is None  # USB/IP lists no configuration descriptors
            async with await desc.open() as device:
                assert device.manufacturer == "usbip_backend"
                assert device.product == "USB/IP loopback/source/sink"
                assert desc.configurations is not None
                await device.write(0x40, 0x5B, 0, 0, b"hello")
                assert await device.read(0xC0, 0x5C, 0, 0, 64) == b"hello"
                await device.set_configuration(1)
                intf = device.interface_claim(0)
                ep_in = intf.open(intf.descriptor[0].endpoint_by_address(0x81))
                ep_out = intf.open(intf.descriptor[0].endpoint_by_address(0x01))
                assert isinstance(ep_in, aio.InEndpoint) and isinstance(ep_out, aio.OutEndpoint)
                info = ep_in.info
                assert (info.type, info.direction, info.number, info.max_packet_size) == ("bulk", "in", 1, 512)
                await ep_out.write(b"ping")
                assert await ep_in.read(512) == b"ping"
                t0 = time.monotonic()
                try:
                    data = await asyncio.wait_for(ep_in.read(512), timeout=0.3)
                except asyncio.TimeoutError:
                    data = None
                assert data is None and time.monotonic() - t0 >= 0.3
                assert device.conn.in_flight == 0  # the cancelled read is over, not abandoned
                await ep_out.write(b"pong")
                assert await ep_in.read(512) == b"pong"  # nothing lost, nothing stale
        assert server.wait_free("1-1")

    run(main())


def test_device_get_wants_exactly_one(server):
    async def main():
        async with aio.Context("127.0.0.1", port=server.port) as ctx:
            with pytest.raises(NotFoundError, match="4 devices match"):
                ctx.device_get(vendor_id=VID)
            with pytest.raises(NotFoundError, match="no device"):
                ctx.device_get(vendor_id=0xDEAD)
            assert ctx.device_get_any(vendor_id=VID).vendor_id == VID
            assert [d.busid for d in ctx.device_filter(product_id=0x0003)] == ["1-3"]
            with pytest.raises(TypeError, match="criterion"):
                ctx.device_filter(colour="red")

    run(main())


def test_stall_and_gone_raise_the_builtin_subclasses(server):
    async def main():
        async with aio.Context("127.0.0.1", port=server.port) as ctx:
            device, ep_in, ep_out = await open_loopback(ctx)
            with pytest.raises(aio.TransferStalled) as info:
                await device.read(0xC0, 0x5F, 0, 0, 8)
            assert isinstance(info.value, BrokenPipeError) and info.value.status == -32
            with pytest.raises(aio.TransferTimeout):
                await ep_in.read(512, timeout=0.05)
            reads = [asyncio.ensure_future(ep_in.read(512)) for _ in range(4)]
            await asyncio.sleep(0)
            wait_for(lambda: device.conn.in_flight == 4)
            server.stop()  # the server hangs up with four reads pending
            results = await asyncio.gather(*reads, return_exceptions=True)
            assert all(isinstance(r, aio.DeviceError) and isinstance(r, ConnectionError) for r in results)
            with pytest.raises(aio.DeviceError):
                await ep_out.write(b"x")

    run(main())


def test_the_same_control_read_again_brings_fresh_data_each_time(server):
    # A control IN request made again reuses the URB of its last run: what it returns is what
    # the device answered this time, never the last run's bytes (shorter answers included), and
    # a request that stalled is made afresh.
    async def main():
        async with aio.Context("127.0.0.1", port=server.port) as ctx:
            device, _, _ = await open_loopback(ctx)
            for data in (b"first answer", b"2nd", b"", b"a longer third answer"):
                await device.write(0x40, 0x5B, 0, 0, data)
                assert await device.read(0xC0, 0x5C, 0, 0, 64) == data
            reads = await asyncio.gather(*(device.read(0xC0, 0x5C, 0, 0, 64) for _ in range(4)))
            assert reads == [b"a longer third answer"] * 4
            for _ in range(2):
                with pytest.raises(aio.TransferStalled):
                    await device.read(0xC0, 0x5F, 0, 0, 8)
            assert await device.read(0xC0, 0x5C, 0, 0, 64) == b"a longer third answer"
            kept = device._idle_reads.kept
            assert len(kept) <= 8 and all(len(urbs) <= 16 for urbs in kept.values())

    run(main())


def test_the_same_bulk_read_again_brings_fresh_data_each_time(server):
    # ep.read(size) made again reuses the URB of an earlier read of that size: each returns what
    # the device sent this time (a shorter packet included), with reads of other sizes between.
    async def main():
        async with aio.Context("127.0.0.1", port=server.port) as ctx:
            device, ep_in, ep_out = await open_loopback(ctx)
            for data, size in ((b"one" * 100, 512), (b"2", 512), (b"x" * 64, 64), (b"three" * 50, 512)):
                await ep_out.write(data)
                assert await ep_in.read(size) == data
            kept = ep_in._idle_reads.kept
            assert sorted(kept) == [64, 512] and all(len(urbs) == 1 for urbs in kept.values())

    run(main())


def test_a_read_that_completed_during_its_cancellation_is_not_lost(server):
    async def main():
        async with aio.Context("127.0.0.1", port=server.port) as ctx:
            device, ep_in, ep_out = await open_loopback(ctx)
            sync_dev = device.device
            task = asyncio.ensure_future(ep_in.read(512))
            await asyncio.sleep(0)
            wait_for(lambda: device.conn.in_flight == 1)
            # On the loop's thread, without yielding: the data arrives and the read completes in
            # the engine (read here as the loop's reader callback would), then the task is
            # cancelled before it has run again.
            from usbip_backend.protocol import TransferType
            sync_dev.write(TransferType.BULK, 0x01, memoryview(b"raced"), 5)
            wait_for(lambda: device.conn.pump_ready(lambda: None) is not None and device.conn.in_flight == 0)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert list(ep_in.unclaimed) == [b"raced"]
            assert await ep_in.read(512) == b"raced"  # the next read returns it first
            await device.close()

    run(main())


def test_cancelling_while_the_unlink_is_unanswered_waits_for_the_grace():
    """A server that never answers CMD_UNLINK: the cancelled task ends only once the engine
    has given the URB up, even when cancelled again meanwhile."""
    async def main(port):
        async with aio.Context("127.0.0.1", port=port) as ctx:
            device, ep_in, _ = await open_loopback(ctx)
            task = asyncio.ensure_future(ep_in.read(512))
            await asyncio.sleep(0)
            wait_for(lambda: device.conn.in_flight == 1)
            task.cancel()
            await asyncio.sleep(0)
            task.cancel()  # a second cancel during the wait for the verdict
            with pytest.raises(asyncio.CancelledError):
                await task
            assert device.conn.in_flight == 0
            await device.close()

    with SimServer([LoopbackDevice("1-1")], unlink="ignore") as srv:
        run(main(srv.port))


def test_cancel_before_the_submit_has_run(server):
    async def main():
        async with aio.Context("127.0.0.1", port=server.port) as ctx:
            device, ep_in, ep_out = await open_loopback(ctx)
            task = asyncio.ensure_future(ep_in.read(512))
            task.cancel()  # before the coroutine ever ran: nothing was submitted
            with pytest.raises(asyncio.CancelledError):
                await task
            assert device.conn.in_flight == 0
            await ep_out.write(b"after")
            assert await ep_in.read(512) == b"after"
            await device.close()

    run(main())


def test_read_into_transfer_reuse_and_many_in_flight(server):
    async def main():
        async with aio.Context("127.0.0.1", port=server.port) as ctx:
            device, ep_in, ep_out = await open_loopback(ctx)
            buf = bytearray(512)
            await ep_out.write(b"into")
            assert await ep_in.read_into(buf) == 4 and buf[:4] == b"into"
            t_out = ep_out.transfer(bytearray(b"reused!!"))
            t_in = ep_in.transfer(512)
            for i in range(5):
                await t_out.run(length=1 + i)
                assert bytes(await t_in.run(timeout=5)) == b"reused!!"[:1 + i]
            src = device.interface_claim(0).open(0x82)
            chunks = await asyncio.gather(*(src.read(1000 + i) for i in range(32)))
            assert [len(c) for c in chunks] == [1000 + i for i in range(32)]
            controls = await asyncio.gather(*(device.read(0xC0, 0x5D, 0, 0, 10 + i) for i in range(16)))
            assert controls == [pattern(10 + i) for i in range(16)]
            await device.close()

    run(main())


def test_isochronous_read_and_write_report_each_packet(server):
    async def main():
        async with aio.Context("127.0.0.1", port=server.port) as ctx:
            device = await ctx.device_get(product_id=0x0004).open()
            await device.set_configuration(1)
            await device.set_interface(0, 1)
            intf = device.interface_claim(0)
            iso_in = intf.open(intf.descriptor[1].endpoint_by_address(0x81))
            iso_out = intf.open(intf.descriptor[1].endpoint_by_address(0x01))
            assert isinstance(iso_in, aio.IsoEndpoint)
            sent = await iso_out.iso_write([b"a" * 100, b"b" * 200, b"c" * 3])
            assert [(r.status, r.actual_length) for r in sent] == [(0, 100), (0, 200), (0, 3)]
            got = await iso_in.iso_read([1024, 1024, 1024, 64])
            assert [r.data for r in got[:3]] == [b"a" * 100, b"b" * 200, b"c" * 3]
            assert got[3].status == 0 and len(got[3].data) == 64
            await device.close()

    run(main())


def test_streams_in_and_out_with_emsgsize_and_progress():
    data = random.Random(7).randbytes(300 * 1024 + 5)

    async def main(port):
        async with aio.Context("127.0.0.1", port=port) as ctx:
            device, ep_in, ep_out = await open_loopback(ctx)
            reports = []
            done = await ep_out.stream(data, chunk=65536, window=16, progress=reports.append, progress_every=0)
            assert done.offset == len(data) and done.chunk == 4096
            assert reports[-1].offset == len(data)
            got = bytearray()
            stream = ep_in.stream(len(data), chunk=65536, window=16, timeout=5)
            async for view in stream:
                got += view
            assert bytes(got) == data
            source = device.interface_claim(0).open(0x82)
            async with source.stream(chunk=63 * 64, window=4, timeout=5) as endless:
                first = await endless.__anext__()
                assert len(first) and bytes(first) == pattern(len(first))
            assert device.conn.in_flight == 0
            await device.close()

    with SimServer([LoopbackDevice("1-1")], max_urb=4096) as srv:
        run(main(srv.port))


def test_an_in_stream_reading_waiting_replies_itself_still_lets_other_tasks_run(sim_server):
    """A stream whose replies are already waiting takes them itself rather than waiting on the
    loop, but gives the loop its turn after DIRECT_READS such reads: a heartbeat task never
    sees more than that many reads' worth of chunks go by between two of its ticks."""
    window, chunks = 16, 3000

    async def main():
        async with aio.Context(*sim_server) as ctx:
            device = await ctx.device_get(product_id=0x0001).open()
            await device.set_configuration(1)
            source = device.interface_claim(0).open(0x82)
            seen = [0]
            between = []
            stop = asyncio.Event()

            async def heartbeat():
                last = 0
                while not stop.is_set():
                    await asyncio.sleep(0)
                    between.append(seen[0] - last)
                    last = seen[0]

            beat = asyncio.ensure_future(heartbeat())
            await asyncio.sleep(0)
            async for view in source.stream(chunks * 512, chunk=512, window=window, adaptive=False, timeout=10):
                assert bytes(view) == pattern(512)  # each URB of the source starts its pattern afresh
                seen[0] += 1
            stop.set()
            await beat
            await device.close()
            return seen[0], between

    got, between = run(main())
    assert got == chunks
    assert len(between) > 1
    assert 1 <= aio.AsyncInStream.DIRECT_READS <= 64  # a turn for the loop every few reads
    assert max(between) <= (aio.AsyncInStream.DIRECT_READS + 1) * window, max(between)


def test_an_in_stream_cut_by_a_hang_up_reports_the_offset_it_reached(server):
    # The server vanishes while the stream reads its replies (the stream's own reads and the
    # loop's): the iteration raises StreamError with the offset of the bytes it yielded, and
    # every URB of the window has ended.
    async def main():
        async with aio.Context("127.0.0.1", port=server.port) as ctx:
            device = await ctx.device_get(product_id=0x0001).open()
            await device.set_configuration(1)
            source = device.interface_claim(0).open(0x82)
            got = 0
            stream = source.stream(chunk=4096, window=16, adaptive=False, timeout=10)
            with pytest.raises(aio.StreamError) as info:
                async for view in stream:
                    got += len(view)
                    if got == 64 * 4096:
                        server.stop()
            assert info.value.offset == got == stream.offset >= 64 * 4096
            assert isinstance(info.value.cause, aio.DeviceError)
            assert device.conn.in_flight == 0

    run(main())


def test_an_out_stream_cut_by_a_hang_up_reports_the_offset_it_reached(server):
    # As for IN: the server vanishes with OUT URBs in flight; the failure's cause is this
    # module's DeviceError, and the offset reached is what the server confirmed.
    async def main():
        async with aio.Context("127.0.0.1", port=server.port) as ctx:
            device = await ctx.device_get(product_id=0x0001).open()
            await device.set_configuration(1)
            sink = device.interface_claim(0).open(0x02)
            reports = []

            def progress(p):
                reports.append(p.offset)
                if p.offset >= 64 * 4096:
                    server.stop()

            with pytest.raises(aio.StreamError) as info:
                await sink.stream(pattern(4096) * 1024, chunk=4096, window=16, adaptive=False, timeout=10,
                                  progress=progress, progress_every=0)
            assert isinstance(info.value.cause, aio.DeviceError)
            assert 64 * 4096 <= info.value.offset < 1024 * 4096
            assert device.conn.in_flight == 0

    run(main())


def test_the_loop_is_never_blocked_by_a_64_mib_write(sim_server):
    """A heartbeat task measures the gaps between its ticks while 64 MiB go out as four 16 MiB
    URBs at once (each far more than the socket takes without waiting).

    Two figures per gap: the loop thread's own CPU time in it (its work between two ticks, which
    load elsewhere does not stretch) must stay under 5 ms; the wall time, which includes being
    descheduled on a loaded machine, must stay under 20 ms, less than one 16 MiB send blocking
    until the server has taken it would need.
    """
    size = 16 * 1024 * 1024
    block = pattern(size)  # the sink checks each URB carries the pattern from its start

    async def main():
        async with aio.Context(*sim_server) as ctx:
            device = await ctx.device_get(product_id=0x0001).open()
            await device.set_configuration(1)
            sink = device.interface_claim(0).open(0x02)
            gaps = []
            stop = asyncio.Event()

            async def heartbeat():
                last, last_cpu = time.perf_counter(), time.thread_time()
                while not stop.is_set():
                    await asyncio.sleep(0)
                    now, cpu = time.perf_counter(), time.thread_time()
                    gaps.append((now - last, cpu - last_cpu))
                    last, last_cpu = now, cpu

            beat = asyncio.ensure_future(heartbeat())
            await asyncio.sleep(0)
            written = await asyncio.gather(*(sink.write(block, timeout=60) for _ in range(4)))
            stop.set()
            await beat
            await device.close()
            return written, gaps

    old = sys.getswitchinterval()
    sys.setswitchinterval(0.0005)  # the reader thread must not hold the GIL for whole 5 ms slices
    # A full collection of everything the test session has built up can pause the loop for
    # longer than 5 ms by itself; that is the interpreter's collector, not this package.
    gc.collect()
    gc.disable()
    try:
        written, gaps = run(main())
    finally:
        gc.enable()
        sys.setswitchinterval(old)
    assert written == [size] * 4
    assert len(gaps) > 100
    worst_cpu = max(cpu for _, cpu in gaps)
    worst_wall = max(wall for wall, _ in gaps)
    assert worst_cpu < 0.005, f"the loop worked {worst_cpu * 1000:.1f} ms without yielding"
    assert worst_wall < 0.020, f"the loop was blocked for {worst_wall * 1000:.1f} ms"


def test_64_devices_on_one_loop():
    async def main(port):
        async with aio.Context("127.0.0.1", port=port) as ctx:
            assert len(ctx) == 64
            devices = await asyncio.gather(*(d.open() for d in ctx))
            for dev in devices:
                await dev.set_configuration(1)

            async def work(dev):
                src = dev.interface_claim(0).open(0x82)
                for i in range(10):
                    got = await asyncio.gather(dev.read(0xC0, 0x5D, 0, 0, 8), src.read(512))
                    assert got == [pattern(8), pattern(512)]
                return dev.busid

            busids = await asyncio.gather(*(work(d) for d in devices))
            assert sorted(busids) == sorted(f"{i}-1" for i in range(1, 65))
            # the context closes all 64

    with SimServer(stock_devices(["loopback"], count=64)) as srv:
        run(main(srv.port))


def test_watch_reports_devices_added_and_removed():
    srv = SimServer(stock_devices(["loopback", "acm"])).start()

    async def main():
        events = []
        async with aio.Context("127.0.0.1", port=srv.port) as ctx:
            held = await ctx.device_get(busid="1-1").open()
            watcher = ctx.watch(interval=0.02)
            for _ in range(2):  # what is there at the start, the device held by us included
                events.append(await watcher.__anext__())
            assert {(e.kind, e.device.busid) for e in events} == {("added", "1-1"), ("added", "1-2")}
            other = await asyncio.get_running_loop().run_in_executor(
                None, lambda: import_device("127.0.0.1", srv.port, "1-2"))
            event = await watcher.__anext__()  # another client imported it: not free any more
            assert (event.kind, event.device.busid) == ("removed", "1-2")
            other.close()
            event = await watcher.__anext__()
            assert (event.kind, event.device.busid) == ("added", "1-2")
            srv.stop()  # the server goes away: everything is gone, the imported device too
            gone = {(e.kind, e.device.busid) for e in [await watcher.__anext__(), await watcher.__anext__()]}
            assert gone == {("removed", "1-1"), ("removed", "1-2")}
            assert not held.alive
            await watcher.aclose()

    try:
        run(main())
    finally:
        srv.stop()


def test_replies_bigger_than_the_read_buffer_go_through_the_reader_thread(server):
    """The loop reads only replies that fit its 64 KiB buffer whole; a bigger one is handed to
    the connection's reader thread, which gives the socket back when it is done."""
    async def main():
        async with aio.Context("127.0.0.1", port=server.port) as ctx:
            device, ep_in, ep_out = await open_loopback(ctx)
            source = device.interface_claim(0).open(0x82)
            big = await source.read(1024 * 1024, timeout=5)
            assert big == pattern(1024 * 1024)
            got = bytearray()
            async for view in source.stream(8 * 63 * 4096, chunk=63 * 4096, window=4, timeout=5):
                got += view  # 252 KiB URBs, whole pattern periods: one pattern
            assert bytes(got) == pattern(8 * 63 * 4096)
            small = await asyncio.gather(*(device.read(0xC0, 0x5D, 0, 0, 8) for _ in range(8)))
            assert small == [pattern(8)] * 8  # and the loop reads again
            await device.close()

    run(main())
