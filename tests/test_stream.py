"""usbip_backend.stream: windowed IN/OUT streams against the virtual server over TCP.

The loopback device (1-1) gives back on 0x81 what was written to 0x01, packet by packet, so a
stream written out and read back must come back byte for byte; 0x82 is a source of the pattern
``i % 63`` (each URB starts it afresh: with chunks a multiple of 63 bytes the stream is one
pattern); 0x02 is a sink that stalls on a wrong pattern.
"""

from __future__ import annotations

import random
import socket

import pytest
import usb.core

from usbip_backend import get_backend, protocol as P
from usbip_backend import stream as S
from usbip_backend.device import open_device
from usbip_backend.errors import ConnectionLostError, UrbError
from usbip_backend.sim import SimServer
from usbip_backend.sim.devices import LoopbackDevice, pattern

BULK = P.TransferType.BULK
SOURCE_CHUNK = 63 * 512  # whole packets and whole pattern periods


@pytest.fixture
def server():
    with SimServer([LoopbackDevice("1-1")]) as srv:
        yield srv


@pytest.fixture
def small_server():
    """A server that refuses URBs over 4 KiB with -EMSGSIZE, like the ESP32 bridge."""
    with SimServer([LoopbackDevice("1-1")], max_urb=4096) as srv:
        yield srv


def open_loopback(srv):
    dev = open_device("127.0.0.1", srv.port, "1-1")
    dev.set_configuration(1, 5)
    return dev


def noise(n: int) -> bytes:
    return random.Random(n).randbytes(n)


# -- the window -----------------------------------------------------------------------------------
def test_window_slow_start_doubles_then_halves_and_grows_by_one():
    w = S.Window(64)
    sizes = [w.size]
    for _ in range(1 + 2 + 4 + 8):
        w.completed(slow=False)
        sizes.append(w.size)
    assert sizes[0] == 1 and w.size == 16  # 1, 2, 4, 8, 16 after one round each
    w.completed(slow=True)
    assert w.size == 8 and not w.slow_start
    for _ in range(8):
        w.completed(slow=False)
    assert w.size == 9  # congestion avoidance: one more per round
    w.failed()
    assert w.size == 4


def test_window_is_capped_and_fixed_when_not_adaptive():
    w = S.Window(4)
    for _ in range(100):
        w.completed(slow=False)
    assert w.size == 4
    fixed = S.Window(16, adaptive=False)
    assert fixed.size == 16
    fixed.failed()
    assert fixed.size == 16
    with pytest.raises(ValueError):
        S.Window(0)


def test_whole_packets():
    assert S.whole_packets(16384, 512) == 16384
    assert S.whole_packets(1000, 512) == 512
    assert S.whole_packets(100, 512) == 512
    assert S.whole_packets(100, 0) == 100


# -- IN -----------------------------------------------------------------------------------------------
def test_out_then_in_comes_back_in_order(server):
    data = noise(3 * 1024 * 1024 + 100)
    dev = open_loopback(server)
    try:
        done = S.stream_out(dev, 0x01, data, chunk=16384, window=16)
        assert done.offset == done.confirmed == len(data) and done.total == len(data)
        got = bytearray()
        stream = S.stream_in(dev, 0x81, len(data), chunk=16384, window=16, timeout=5)
        for view in stream:
            got += view
        assert bytes(got) == data
        assert stream.offset == len(data)
        assert stream.window.size == 16  # it grew to the limit
    finally:
        dev.close()


def test_source_stream_is_one_pattern_and_reports_progress(server):
    reports = []
    total = 40 * SOURCE_CHUNK + 1000
    dev = open_loopback(server)
    try:
        got = bytearray()
        for view in S.stream_in(dev, 0x82, total, chunk=SOURCE_CHUNK, window=8, progress=reports.append,
                                progress_every=0):
            got += view
    finally:
        dev.close()
    assert bytes(got) == pattern(total)
    offsets = [r.offset for r in reports]
    assert offsets == sorted(offsets) and offsets[-1] == total
    last = reports[-1]
    assert last.total == total and last.percent == 100.0 and last.rate > 0 and last.eta == 0
    assert last.chunk == SOURCE_CHUNK


def test_until_short_ends_at_the_short_packet_and_keeps_what_followed(server):
    dev = open_loopback(server)
    try:
        dev.write(BULK, 0x01, memoryview(b"A" * 1000), 5)   # packets 512 + 488 (short)
        dev.write(BULK, 0x01, memoryview(b"B" * 700), 5)    # the device's next transfer
        stream = S.stream_in(dev, 0x81, chunk=512, window=4, until_short=True, adaptive=False, timeout=5)
        got = b"".join(bytes(v) for v in stream)
        assert got == b"A" * 1000
        rest = bytearray(stream.leftover)
        while len(rest) < 700:
            buf = bytearray(512)
            n = dev.read(BULK, 0x81, memoryview(buf), 5)
            rest += buf[:n]
        assert bytes(rest) == b"B" * 700  # nothing of the next transfer lost or repeated
    finally:
        dev.close()


def test_emsgsize_shrinks_the_chunk_without_losing_a_byte(small_server):
    data = noise(200 * 1024 + 77)
    dev = open_loopback(small_server)
    try:
        out = S.stream_out(dev, 0x01, data, chunk=65536, window=16)
        assert out.offset == len(data) and out.chunk == 4096
        stream = S.stream_in(dev, 0x81, len(data), chunk=65536, window=16, adaptive=False, timeout=5)
        got = b"".join(bytes(v) for v in stream)
        assert got == data
        assert stream.chunk == 4096
    finally:
        dev.close()


def test_a_stall_stops_the_stream_with_its_offset(server):
    dev = open_loopback(server)
    try:
        good = pattern(4096)
        with pytest.raises(S.StreamError) as info:
            S.stream_out(dev, 0x02, iter([good, good, b"x" * 4096, good]), chunk=4096, window=1)
        err = info.value
        assert err.offset == 8192 and not err.connection_lost
        assert isinstance(err.cause, UrbError) and err.cause.status == -32
        dev.clear_halt(0x02, 5)
    finally:
        dev.close()


def test_in_stream_resumes_after_the_connection_is_lost(server):
    total = 64 * SOURCE_CHUNK
    cut_at = 10 * SOURCE_CHUNK
    dev = open_loopback(server)
    got = bytearray()
    cuts = []

    def cut(progress):
        if progress.offset >= cut_at and not cuts:
            cuts.append(progress.offset)
            dev.conn.sock.shutdown(socket.SHUT_RDWR)  # the network goes away under the stream

    try:
        with pytest.raises(S.StreamError) as info:
            for view in S.stream_in(dev, 0x82, total, chunk=SOURCE_CHUNK, window=8, progress=cut,
                                    progress_every=0, timeout=5):
                got += view
    finally:
        dev.close()
    err = info.value
    assert err.connection_lost and isinstance(err.cause, ConnectionLostError)
    got += err.data
    assert err.offset == len(got) >= cut_at
    assert server.wait_free("1-1")
    dev = open_loopback(server)
    try:
        for view in S.stream_in(dev, 0x82, total, chunk=SOURCE_CHUNK, offset=err.offset, timeout=5):
            got += view
    finally:
        dev.close()
    assert bytes(got) == pattern(total)


def test_out_stream_resumes_from_the_confirmed_offset(server, tmp_path):
    data = noise(50 * 4096)
    path = tmp_path / "data.bin"
    path.write_bytes(data)
    dev = open_loopback(server)

    def cut(progress):
        if progress.offset >= 20 * 4096 and not dev.conn.closed:
            dev.conn.sock.shutdown(socket.SHUT_RDWR)

    try:
        with pytest.raises(S.StreamError) as info:
            # one URB in flight: at the cut nothing unconfirmed is on its way
            S.write_from_file(dev, 0x01, str(path), chunk=4096, window=1, progress=cut, progress_every=0)
    finally:
        dev.close()
    err = info.value
    assert err.connection_lost and err.offset == 20 * 4096
    assert server.wait_free("1-1")
    dev = open_loopback(server)
    try:
        done = S.write_from_file(dev, 0x01, path, chunk=4096, offset=err.offset)
        assert done.offset == len(data) and done.confirmed == len(data) - err.offset and done.total == len(data)
        # The server reset the device when the first connection dropped (as the kernel's stub
        # does), so the loopback holds what the resumed stream sent: read it back into a file
        # that already holds the first part, appending in two resumed reads.
        back = tmp_path / "back.bin"
        back.write_bytes(data[:err.offset] + b"junk past the offset")
        middle = err.offset + 10 * 4096
        S.read_into_file(dev, 0x81, back, middle, chunk=4096, offset=err.offset, timeout=5)
        S.read_into_file(dev, 0x81, str(back), len(data), chunk=4096, offset=middle, timeout=5)
        assert back.read_bytes() == data
    finally:
        dev.close()


def test_iterable_and_file_sources_are_gathered_into_whole_chunks(server, tmp_path):
    pieces = [noise(n) for n in (1, 4095, 3000, 70000, 5)]
    data = b"".join(pieces)
    dev = open_loopback(server)
    try:
        done = S.stream_out(dev, 0x01, iter(pieces), chunk=8192)
        assert done.offset == len(data) and done.total is None
        with open(tmp_path / "f.bin", "wb") as f:
            f.write(data)
        with open(tmp_path / "f.bin", "rb") as f:
            assert S.stream_out(dev, 0x01, f, chunk=8192).total == len(data)
        got = b"".join(bytes(v) for v in S.stream_in(dev, 0x81, 2 * len(data), chunk=8192, timeout=5))
        assert got == data + data
    finally:
        dev.close()


def test_streams_on_a_pyusb_device(server):
    with get_backend("127.0.0.1", server.port) as be:
        dev = usb.core.find(backend=be, idVendor=0x1209, idProduct=0x0001)
        dev.set_configuration()
        data = noise(100000)
        assert S.stream_out(dev, 0x01, data).offset == len(data)
        assert b"".join(bytes(v) for v in S.stream_in(dev, 0x81, len(data), timeout=5)) == data


def test_bad_arguments_are_refused(server):
    dev = open_loopback(server)
    try:
        with pytest.raises(ValueError, match="OUT endpoint"):
            S.stream_in(dev, 0x01)
        with pytest.raises(ValueError, match="IN endpoint"):
            S.stream_out(dev, 0x81, b"x")
        with pytest.raises(ValueError, match="no endpoint"):
            S.stream_in(dev, 0x8F)
        with pytest.raises(ValueError, match="chunk"):
            S.stream_in(dev, 0x82, chunk=0)
        with pytest.raises(ValueError, match="offset"):
            S.stream_out(dev, 0x01, b"abc", offset=4)
        with pytest.raises(TypeError):
            S.stream_in(object(), 0x82)
    finally:
        dev.close()


def test_closing_a_stream_early_cancels_what_is_in_flight(server):
    dev = open_loopback(server)
    try:
        stream = S.stream_in(dev, 0x82, chunk=4096, window=8, adaptive=False, timeout=5)
        first = next(stream)
        assert bytes(first) == pattern(4096)
        stream.close()
        assert dev.conn.in_flight == 0
        with pytest.raises(StopIteration):
            next(stream)
    finally:
        dev.close()
