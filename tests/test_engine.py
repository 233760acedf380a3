"""URB engine against a scripted peer over real TCP sockets on 127.0.0.1."""

from __future__ import annotations

import random
import select
import socket
import threading
import time

import pytest

from usbip_backend import protocol as P
from usbip_backend.client import import_device, list_devices
from usbip_backend.errors import (
    ConnectionLostError, ImportRefusedError, UrbCancelledError, UrbError, UsbipTimeoutError,
)
from scripted import DEVICE, ScriptedServer, read_cmd, recv_exact, ret_submit, ret_unlink

BULK, CTRL, INTR, ISO = (P.TransferType.BULK, P.TransferType.CONTROL, P.TransferType.INTERRUPT,
                         P.TransferType.ISOCHRONOUS)
GET_DEVICE_DESCRIPTOR = P.pack_setup(0x80, 6, 0x0100, 0, 18)


def connect(server: ScriptedServer, **kw):
    return import_device("127.0.0.1", server.port, "2-1", timeout=5, **kw)


def hold_until_client_closes(sock):
    """Keep the connection open (so the client can check it is still up) until the client closes."""
    try:
        recv_exact(sock, 1)
    except (EOFError, OSError):
        pass


def send_in_pieces(sock, reply: bytes, cuts) -> None:
    """Send ``reply`` cut at the given offsets, one sendall per piece."""
    pos = 0
    for cut in tuple(cuts) + (len(reply),):
        sock.sendall(reply[pos:cut])
        pos = cut


def echo_script(sock):
    """Answer every IN URB with its seqnum repeated, every OUT with its length."""
    while True:
        cmd, _, data, _ = read_cmd(sock)
        if isinstance(cmd, P.CmdUnlink):
            sock.sendall(ret_unlink(cmd.seqnum, 0))
        elif cmd.direction:
            sock.sendall(ret_submit(cmd.seqnum, data=bytes([cmd.seqnum & 0xFF]) * cmd.transfer_buffer_length))
        else:
            sock.sendall(ret_submit(cmd.seqnum, actual=len(data)))


def test_request_fields_on_the_wire():
    seen = []

    def script(sock):
        for _ in range(3):
            cmd, raw, data, _ = read_cmd(sock)
            seen.append((cmd, raw, data))
            sock.sendall(ret_submit(cmd.seqnum, data=bytes(cmd.transfer_buffer_length) if cmd.direction else b"",
                                    actual=None if cmd.direction else len(data)))

    with ScriptedServer(script) as srv, connect(srv) as conn:
        conn.control_transfer(0x80, 6, 0x0100, 0, 18, timeout=2)
        conn.transfer(BULK, 0x02, data=b"abc", timeout=2)
        conn.transfer(INTR, 0x83, length=8, interval=8, timeout=2)
    ctrl, bulk, intr = seen
    devid = (2 << 16) | 5
    # control IN: devid from the import reply, direction IN, ep 0, URB_DIR_IN, setup as given
    assert (ctrl[0].devid, ctrl[0].direction, ctrl[0].ep) == (devid, 1, 0)
    assert ctrl[0].transfer_flags & P.USBIP_URB_DIR_IN
    assert ctrl[0].setup == GET_DEVICE_DESCRIPTOR and ctrl[0].transfer_buffer_length == 18
    assert ctrl[0].number_of_packets == 0
    # bulk OUT to endpoint 2: the number without the direction bit, data follows the header
    assert (bulk[0].direction, bulk[0].ep, bulk[2]) == (0, 2, b"abc")
    assert bulk[0].transfer_flags & P.USBIP_URB_DIR_IN == 0
    # interrupt IN carries its interval (the kernel rejects 0)
    assert (intr[0].direction, intr[0].ep, intr[0].interval) == (1, 3, 8)


def test_out_of_order_replies_reach_their_urbs():
    def script(sock):
        cmds = [read_cmd(sock)[0] for _ in range(3)]
        for cmd in reversed(cmds):
            sock.sendall(ret_submit(cmd.seqnum, data=bytes([cmd.seqnum]) * 4))

    with ScriptedServer(script) as srv, connect(srv) as conn:
        urbs = [conn.submit(BULK, 0x81, length=4) for _ in range(3)]
        for urb in urbs:
            urb.wait(2)
            assert bytes(urb.in_data) == bytes([urb.seqnum]) * 4


def test_hundred_urbs_in_flight_answered_in_random_order():
    def script(sock):
        cmds = [read_cmd(sock)[0] for _ in range(100)]
        random.Random(7).shuffle(cmds)
        sock.sendall(b"".join(ret_submit(c.seqnum, data=c.seqnum.to_bytes(4, "big") * 16) for c in cmds))

    with ScriptedServer(script) as srv, connect(srv) as conn:
        urbs = [conn.submit(BULK, 0x81, length=64) for _ in range(100)]
        assert len({u.seqnum for u in urbs}) == 100
        for urb in urbs:
            urb.wait(5)
            assert bytes(urb.in_data) == urb.seqnum.to_bytes(4, "big") * 16


def test_window_of_big_replies_in_random_pieces_reaches_each_urb():
    # Several replies owed: the read buffer grows to a window's worth and one recv may end in
    # the middle of any reply (header or data); every URB still gets its own bytes.
    size, count = 16384, 40
    rng = random.Random(11)

    def script(sock):
        cmds = [read_cmd(sock)[0] for _ in range(count)]
        blob = b"".join(ret_submit(c.seqnum, data=c.seqnum.to_bytes(4, "big") * (size // 4)) for c in cmds)
        send_in_pieces(sock, blob, sorted(rng.sample(range(1, len(blob)), 60)))
        hold_until_client_closes(sock)

    with ScriptedServer(script) as srv, connect(srv) as conn:
        urbs = [conn.submit(BULK, 0x81, buffer=bytearray(size)) for _ in range(count)]
        for urb in urbs:
            urb.wait(5)
            assert bytes(urb.in_data) == urb.seqnum.to_bytes(4, "big") * (size // 4)
        assert len(conn._rd.buf) > size * 4  # it grew (a window of replies in one recv)


def _seq_body(seq: int, n: int) -> bytes:
    return (seq.to_bytes(4, "big") * (n // 4 + 1))[:n]


def _pump_as_a_loop(conn, urbs) -> None:
    """Read as an event loop does: pump_ready() each time the socket is readable."""
    conn.set_loop_reader(True)
    deadline = time.monotonic() + 10
    while not all(u.done() for u in urbs):
        assert time.monotonic() < deadline, "replies not dispatched"
        select.select([conn.sock], [], [], 0.05)
        conn.pump_ready(lambda: None)
    conn.set_loop_reader(False)


@pytest.mark.parametrize("reader", ["leader", "loop"])
def test_pipelined_replies_that_break_the_in_place_guess_reach_their_own_urbs(reader):
    # A window of IN replies is received straight into the URBs' buffers on the guess that they
    # come in submission order. Replies that break it (short ones, another order, an unlink's
    # answer in between, recvs cut anywhere) and every reply after them still reach their own
    # URB, whole, in any of the readers (a leader waiting, an event loop pumping).
    size, count = 8192, 12
    rng = random.Random(5)
    batches = [
        # (index order of the replies, {index: (status, length)})
        (list(range(count)), {1: (0, 100), 4: (-32, 0), 9: (0, 5000)}),
        ([0, 2, 1, 3, 4, 5, 7, 6, 8, 11, 9, 10], {7: (0, 1)}),
        (list(range(count)), {}),
    ]

    def script(sock):
        for order, odd in batches:
            cmds = [read_cmd(sock)[0] for _ in range(count)]
            parts = []
            for i in order:
                status, n = odd.get(i, (0, size))
                parts.append(ret_submit(cmds[i].seqnum, status, data=_seq_body(cmds[i].seqnum, n)))
                if i == 5:
                    parts.append(ret_unlink(0x7FFFFFF0, 0))  # answers no unlink of the client's: ignored
            blob = b"".join(parts)
            send_in_pieces(sock, blob, sorted(rng.sample(range(1, len(blob)), 8)))
        hold_until_client_closes(sock)

    with ScriptedServer(script) as srv, connect(srv) as conn:
        for order, odd in batches:
            urbs = [conn.submit(BULK, 0x81, buffer=bytearray(size)) for _ in range(count)]
            if reader == "loop":
                _pump_as_a_loop(conn, urbs)
            for i, urb in enumerate(urbs):
                status, n = odd.get(i, (0, size))
                try:
                    urb.wait(5)
                except UrbError:
                    pass
                assert (urb.status, urb.actual_length) == (status, n)
                assert bytes(urb.in_data) == _seq_body(urb.seqnum, n)
        assert conn.in_flight == 0 and not conn.closed


def test_an_event_loop_keeps_a_reply_the_in_place_recv_cut_until_the_rest_comes():
    # pump_ready never waits: a header or data cut by the recv goes to the read buffer, the URB
    # stays pending, and the rest is dispatched when it comes. (The server sends each piece when
    # the client submits another URB, so the cuts fall where the test puts them.)
    size = 8192

    def script(sock):
        cmds = [read_cmd(sock)[0] for _ in range(4)]
        blob = b"".join(ret_submit(c.seqnum, data=_seq_body(c.seqnum, size)) for c in cmds)
        one = 48 + size
        cuts = [one + 20, 2 * one + 48 + 1000]  # in the second reply's header, the third's data
        sock.sendall(blob[:cuts[0]])
        signals = [read_cmd(sock)[0]]
        sock.sendall(blob[cuts[0]:cuts[1]])
        signals.append(read_cmd(sock)[0])
        sock.sendall(blob[cuts[1]:] + b"".join(ret_submit(c.seqnum, data=_seq_body(c.seqnum, size))
                                               for c in signals))
        hold_until_client_closes(sock)

    with ScriptedServer(script) as srv, connect(srv) as conn:
        urbs = [conn.submit(BULK, 0x81, buffer=bytearray(size), timeout=5) for _ in range(4)]
        _pump_as_a_loop(conn, urbs[:1])
        for n in (2, 3):
            urbs.append(conn.submit(BULK, 0x81, buffer=bytearray(size), timeout=5))
            _pump_as_a_loop(conn, urbs[:n])
        _pump_as_a_loop(conn, urbs)
        for urb in urbs:
            assert bytes(urb.wait(5).in_data) == _seq_body(urb.seqnum, size)


@pytest.mark.parametrize("reader", ["leader", "loop"])
def test_server_gone_in_the_middle_of_a_window_received_in_place(reader):
    # The replies that came whole are delivered; the one cut by the hang-up and those after it
    # end with the connection.
    size = 8192

    def script(sock):
        cmds = [read_cmd(sock)[0] for _ in range(6)]
        blob = b"".join(ret_submit(c.seqnum, data=_seq_body(c.seqnum, size)) for c in cmds)
        sock.sendall(blob[:2 * (48 + size) + 48 + 100])
        sock.shutdown(socket.SHUT_RDWR)

    with ScriptedServer(script) as srv, connect(srv) as conn:
        urbs = [conn.submit(BULK, 0x81, buffer=bytearray(size), timeout=5) for _ in range(6)]
        if reader == "loop":
            _pump_as_a_loop(conn, urbs)
        for urb in urbs[:2]:
            assert bytes(urb.wait(5).in_data) == _seq_body(urb.seqnum, size)
        for urb in urbs[2:]:
            with pytest.raises(ConnectionLostError):
                urb.wait(5)


@pytest.mark.parametrize("reader", ["leader", "loop"])
def test_a_reply_longer_than_its_urb_in_a_window_fails_the_connection(reader):
    # A lying actual_length inside a window received in place: the replies before it are
    # delivered, the connection fails with the lie named, and no URB gets more than it asked for.
    size = 8192

    def script(sock):
        cmds = [read_cmd(sock)[0] for _ in range(4)]
        blob = ret_submit(cmds[0].seqnum, data=_seq_body(cmds[0].seqnum, size))
        blob += ret_submit(cmds[1].seqnum, data=b"x" * 100, actual=size + 1)
        sock.sendall(blob + b"y" * (3 * size))
        hold_until_client_closes(sock)

    with ScriptedServer(script) as srv, connect(srv) as conn:
        urbs = [conn.submit(BULK, 0x81, buffer=bytearray(size), timeout=5) for _ in range(4)]
        if reader == "loop":
            _pump_as_a_loop(conn, urbs)
        assert bytes(urbs[0].wait(5).in_data) == _seq_body(urbs[0].seqnum, size)
        for urb in urbs[1:]:
            with pytest.raises(ConnectionLostError, match="actual_length"):
                urb.wait(5)
            assert urb.actual_length == 0


@pytest.mark.parametrize("order", ["as sent", "first two swapped"])
def test_a_window_of_a_mebibyte_waiting_whole_is_read_in_one_go(order):
    # The in-place recv follows up to a mebibyte of replies. All of them as guessed: each ends
    # its URB where it lies. The first not the one guessed: all the recv took moves to the read
    # buffer (grown for it) and is dispatched from there.
    import array
    fcntl = pytest.importorskip("fcntl", reason="FIONREAD (how many bytes a socket holds) is POSIX's")
    import termios
    size, count = 16384, 64
    blob_size = count * (48 + size)

    def script(sock):
        cmds = [read_cmd(sock)[0] for _ in range(count)]
        indices = list(range(count)) if order == "as sent" else [1, 0] + list(range(2, count))
        sock.sendall(b"".join(ret_submit(cmds[i].seqnum, data=_seq_body(cmds[i].seqnum, size)) for i in indices))
        hold_until_client_closes(sock)

    with ScriptedServer(script) as srv, connect(srv) as conn:
        conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * blob_size)
        conn.set_loop_reader(True)  # nothing reads until the test pumps
        urbs = [conn.submit(BULK, 0x81, buffer=bytearray(size), timeout=5) for _ in range(count)]
        waiting = array.array("i", [0])
        deadline = time.monotonic() + 10
        while waiting[0] < blob_size:  # every reply is in the socket
            assert time.monotonic() < deadline, f"only {waiting[0]} of {blob_size} bytes came"
            select.select([conn.sock], [], [], 0.05)
            fcntl.ioctl(conn.sock.fileno(), termios.FIONREAD, waiting, True)
        _pump_as_a_loop(conn, urbs)
        for urb in urbs:
            assert bytes(urb.wait(5).in_data) == _seq_body(urb.seqnum, size)


def test_read_buffer_grows_keeping_what_it_holds():
    from usbip_backend.engine.connection import _Reader

    with socket.create_server(("127.0.0.1", 0)) as listener:
        a = socket.create_connection(listener.getsockname(), timeout=5)
        b, _ = listener.accept()
        with a, b:
            rd = _Reader(a)
            b.sendall(bytes(range(200)))
            head = bytearray(10)
            rd.read_into(memoryview(head))  # one recv: the other 190 bytes wait in the buffer
            assert bytes(head) == bytes(range(10)) and rd.end - rd.start == 190
            rd.grow(1 << 18)
            rest = bytearray(190)
            rd.read_into(memoryview(rest))
            assert bytes(rest) == bytes(range(10, 200)) and len(rd.buf) == 1 << 18


def test_timeout_unlinks_and_server_cancels():
    unlinks = []

    def script(sock):
        sub = read_cmd(sock)[0]
        unl = read_cmd(sock)[0]
        unlinks.append((sub, unl))
        sock.sendall(ret_unlink(unl.seqnum, -104))  # cancelled: no RET_SUBMIT follows
        cmd = read_cmd(sock)[0]
        sock.sendall(ret_submit(cmd.seqnum, data=b"next"))

    with ScriptedServer(script) as srv, connect(srv) as conn:
        t0 = time.monotonic()
        with pytest.raises(UsbipTimeoutError, match="timed out"):
            conn.transfer(BULK, 0x81, length=4, timeout=0.1)
        elapsed = time.monotonic() - t0
        assert 0.1 <= elapsed < 0.2
        assert bytes(conn.transfer(BULK, 0x81, length=4, timeout=2).in_data) == b"next"
    sub, unl = unlinks[0]
    assert isinstance(unl, P.CmdUnlink) and unl.unlink_seqnum == sub.seqnum and unl.seqnum != sub.seqnum


def test_timeout_race_lost_by_unlink_delivers_the_data():
    """RET_UNLINK status 0: the RET_SUBMIT won the race and its data must not be lost."""
    def script(sock):
        sub = read_cmd(sock)[0]
        unl = read_cmd(sock)[0]
        sock.sendall(ret_submit(sub.seqnum, data=b"late but kept") + ret_unlink(unl.seqnum, 0))
        cmd = read_cmd(sock)[0]
        sock.sendall(ret_submit(cmd.seqnum, data=b"second"))

    with ScriptedServer(script) as srv, connect(srv) as conn:
        urb = conn.transfer(BULK, 0x81, length=13, timeout=0.05)
        assert bytes(urb.in_data) == b"late but kept"
        assert bytes(conn.transfer(BULK, 0x81, length=6, timeout=2).in_data) == b"second"


def test_unanswered_unlink_then_late_reply_is_dropped_not_misdelivered():
    go_late = threading.Event()

    def script(sock):
        sub = read_cmd(sock)[0]
        unl = read_cmd(sock)[0]
        go_late.wait(10)
        nxt = read_cmd(sock)[0]
        # the late reply for the abandoned URB, its RET_UNLINK, then the new URB's reply
        sock.sendall(ret_submit(sub.seqnum, data=b"STALE") + ret_unlink(unl.seqnum, 0)
                     + ret_submit(nxt.seqnum, data=b"fresh"))
        hold_until_client_closes(sock)

    with ScriptedServer(script) as srv, connect(srv, unlink_grace=0.05) as conn:
        t0 = time.monotonic()
        with pytest.raises(UsbipTimeoutError):
            conn.transfer(BULK, 0x81, length=5, timeout=0.1)
        assert time.monotonic() - t0 < 0.3
        go_late.set()
        assert bytes(conn.transfer(BULK, 0x81, length=5, timeout=2).in_data) == b"fresh"
        assert not conn.closed


def test_double_unlink_answers_are_tolerated():
    def script(sock):
        sub = read_cmd(sock)[0]
        unl = read_cmd(sock)[0]
        # cancelled, and (non-compliant) a RET_SUBMIT anyway: its bytes must be dropped cleanly
        sock.sendall(ret_unlink(unl.seqnum, -104) + ret_submit(sub.seqnum, data=b"xx"))
        cmd = read_cmd(sock)[0]
        sock.sendall(ret_submit(cmd.seqnum, data=b"ok"))

    with ScriptedServer(script) as srv, connect(srv) as conn:
        urb = conn.submit(BULK, 0x81, length=2)
        urb.cancel()
        with pytest.raises(UrbCancelledError):
            urb.wait(2)
        assert urb.status == -104
        assert bytes(conn.transfer(BULK, 0x81, length=2, timeout=2).in_data) == b"ok"


def test_server_closing_mid_transfer_fails_all_pending_and_later_calls_fast():
    def script(sock):
        read_cmd(sock)
        read_cmd(sock)
        # half a reply, then gone
        sock.sendall(ret_submit(1, data=b"abcd")[:30])

    with ScriptedServer(script) as srv, connect(srv) as conn:
        urbs = [conn.submit(BULK, 0x81, length=4), conn.submit(CTRL, 0x80, setup=GET_DEVICE_DESCRIPTOR, length=18)]
        for urb in urbs:
            with pytest.raises(ConnectionLostError, match="2-1"):
                urb.wait(5)
        t0 = time.monotonic()
        with pytest.raises(ConnectionLostError, match="2-1"):
            conn.submit(BULK, 0x81, length=4)
        assert time.monotonic() - t0 < 0.05


@pytest.mark.parametrize("reply, why", [
    (b"\xde\xad\xbe\xef" * 12, "unexpected command"),
    (None, "actual_length"),  # actual_length larger than requested
    (b"", "unknown seqnum"),  # reply to a seqnum never sent
])
def test_hostile_replies_close_the_connection_with_a_reason(reply, why):
    def script(sock):
        cmd = read_cmd(sock)[0]
        if reply is None:
            sock.sendall(ret_submit(cmd.seqnum, data=b"x" * 8, actual=1 << 30))
        elif reply == b"":
            sock.sendall(ret_submit(cmd.seqnum + 1000, data=b"x"))
        else:
            sock.sendall(reply)
        hold_until_client_closes(sock)

    with ScriptedServer(script) as srv, connect(srv) as conn:
        with pytest.raises(ConnectionLostError, match=why):
            conn.transfer(BULK, 0x81, length=8, timeout=5)


@pytest.mark.parametrize("actual", [1 << 30, -5])
def test_hostile_actual_length_of_an_out_reply_closes_the_connection(actual):
    # An OUT reply carries no data, so a bad actual_length is only a number, but it is still a
    # broken server (vhci_rx rejects it too), and the leader's fast path must not take it.
    def script(sock):
        cmd = read_cmd(sock)[0]
        sock.sendall(ret_submit(cmd.seqnum, actual=actual))
        hold_until_client_closes(sock)

    with ScriptedServer(script) as srv, connect(srv) as conn:
        with pytest.raises(ConnectionLostError, match="actual_length"):
            conn.transfer(BULK, 0x01, data=b"12345678", timeout=5)


@pytest.mark.parametrize("cuts", [(1,), (47,), (48,), (50,), (20, 48, 60), (4000, 4100)])
def test_reply_arriving_in_pieces_is_reassembled(cuts):
    # The leader reads its reply with one recv when it can; a reply cut anywhere (inside the
    # header, right after it, inside the data, across the first recv's size) must come out whole.
    payload = bytes(range(256)) * 20  # 5120 bytes

    def script(sock):
        for _ in range(3):
            cmd = read_cmd(sock)[0]
            send_in_pieces(sock, ret_submit(cmd.seqnum, data=payload[: cmd.transfer_buffer_length]), cuts)
        hold_until_client_closes(sock)

    with ScriptedServer(script) as srv, connect(srv) as conn:
        for length in (5120, 18, 4096):
            buf = bytearray(length)
            urb = conn.transfer(BULK, 0x81, buffer=buf, timeout=5)
            assert urb.actual_length == length and bytes(buf) == payload[:length]


def test_slow_but_flowing_reply_completes():
    # Gaps inside the data longer than the leader's receive timeout (it wakes every ~10 ms) are a
    # slow link, not a broken server: the reply is reassembled and nothing is lost.
    payload = bytes(range(256)) * 256

    def script(sock):
        cmd = read_cmd(sock)[0]
        reply = ret_submit(cmd.seqnum, data=payload)
        for pos in range(0, len(reply), 16384):
            sock.sendall(reply[pos:pos + 16384])
            threading.Event().wait(0.04)  # shapes the traffic; nothing waits on it
        hold_until_client_closes(sock)

    with ScriptedServer(script) as srv, connect(srv) as conn:
        buf = bytearray(len(payload))
        urb = conn.transfer(BULK, 0x81, buffer=buf, timeout=5)
        assert urb.actual_length == len(payload) and buf == payload


def test_server_stalling_inside_a_reply_fails_the_connection():
    def script(sock):
        cmd = read_cmd(sock)[0]
        sock.sendall(ret_submit(cmd.seqnum, data=bytes(65536))[:10000])
        hold_until_client_closes(sock)

    with ScriptedServer(script) as srv, connect(srv, reply_stall=0.2) as conn:
        t0 = time.monotonic()
        with pytest.raises(ConnectionLostError, match="stopped sending in the middle of a reply"):
            conn.transfer(BULK, 0x81, length=65536, timeout=0.2)
        assert time.monotonic() - t0 < 0.2 + 0.2 + 1.0


def test_leader_dispatches_another_urbs_reply_that_comes_first():
    # An asynchronous URB is outstanding when a synchronous transfer starts leading; the server
    # answers the asynchronous one first, so the leader's first recv brings a reply not its own.
    def script(sock):
        first = read_cmd(sock)[0]
        second = read_cmd(sock)[0]
        sock.sendall(ret_submit(first.seqnum, data=b"first") + ret_submit(second.seqnum, data=b"second"))
        hold_until_client_closes(sock)

    with ScriptedServer(script) as srv, connect(srv) as conn:
        early = conn.submit(BULK, 0x81, length=5)
        late = conn.transfer(BULK, 0x82, length=6, timeout=5)
        assert bytes(late.in_data) == b"second"
        assert bytes(early.wait(5).in_data) == b"first"


def test_seqnum_wraps_and_skips_zero():
    seen = []

    def script(sock):
        for _ in range(3):
            cmd = read_cmd(sock)[0]
            seen.append(cmd.seqnum)
            sock.sendall(ret_submit(cmd.seqnum, data=b"z"))

    with ScriptedServer(script) as srv, connect(srv) as conn:
        conn._table.seqnums_from(0xFFFFFFFF)
        for _ in range(3):
            conn.transfer(BULK, 0x81, length=1, timeout=2)
    assert seen == [0xFFFFFFFF, 1, 2]


def test_many_threads_submit_at_once():
    with ScriptedServer(echo_script) as srv, connect(srv) as conn:
        errors = []

        def worker(n):
            try:
                for i in range(50):
                    urb = conn.transfer(BULK, 0x81, length=16 + n, timeout=5)
                    assert bytes(urb.in_data) == bytes([urb.seqnum & 0xFF]) * (16 + n)
                    assert conn.transfer(BULK, 0x01, data=bytes(n + i), timeout=5).actual_length == n + i
            except BaseException as exc:  # reported below
                errors.append(exc)

        threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert not errors


@pytest.mark.timeout(30)
def test_resubmit_makes_the_same_urb_again_into_the_same_buffer():
    """resubmit(done): a new URB with the ended one's type, endpoint, flags and buffer (IN data
    lands in the same memory) or data (OUT sent again as it is now), a fresh seqnum and its
    own timeout and callback; a URB not ended, or of another connection, is refused."""
    seen = []

    def script(sock):
        while True:
            cmd, _, data, _ = read_cmd(sock)
            if isinstance(cmd, P.CmdUnlink):
                sock.sendall(ret_unlink(cmd.seqnum, -104))  # the held URB, unlinked
                continue
            if cmd.ep == 3:
                continue  # held: never answered
            seen.append((cmd.seqnum, cmd.direction, cmd.ep, cmd.transfer_flags, cmd.transfer_buffer_length, data))
            if cmd.direction:
                sock.sendall(ret_submit(cmd.seqnum, data=bytes([cmd.seqnum & 0xFF]) * cmd.transfer_buffer_length))
            else:
                sock.sendall(ret_submit(cmd.seqnum, actual=len(data)))

    with ScriptedServer(script) as srv, connect(srv) as conn, \
            ScriptedServer(script) as srv2, connect(srv2) as other:
        buf = bytearray(8)
        first = conn.submit(BULK, 0x81, buffer=buf, transfer_flags=P.USBIP_URB_SHORT_NOT_OK).wait(5)
        assert bytes(buf) == bytes([first.seqnum & 0xFF]) * 8
        with pytest.raises(ValueError, match="not an ended URB of this connection"):
            other.resubmit(first)
        done = []
        again = conn.resubmit(first, timeout=5, callback=done.append).wait(5)
        assert again is not first and again.seqnum != first.seqnum and done == [again]
        assert bytes(buf) == bytes([again.seqnum & 0xFF]) * 8 and again.in_data.obj is first.in_data.obj
        payload = bytearray(b"abcd")
        out = conn.submit(BULK, 0x02, data=payload).wait(5)
        payload[:] = b"wxyz"  # the buffer is sent as it is at the resubmit
        assert conn.resubmit(out).wait(5).actual_length == 4
        held = conn.submit(BULK, 0x83, length=4)
        with pytest.raises(ValueError, match="not an ended URB"):
            conn.resubmit(held)
        held.cancel()
        with pytest.raises(UrbCancelledError):
            held.wait(5)
    ins = [s for s in seen if s[1]]
    assert ins[0][2:5] == ins[1][2:5] == (1, P.USBIP_URB_SHORT_NOT_OK | 0x200, 8)
    assert [s[5] for s in seen if not s[1]] == [b"abcd", b"wxyz"]


def test_pending_bulk_in_does_not_delay_control():
    def script(sock):
        held = read_cmd(sock)[0]  # a bulk IN nobody answers yet
        for _ in range(20):
            cmd = read_cmd(sock)[0]
            sock.sendall(ret_submit(cmd.seqnum, data=bytes(18)))
        sock.sendall(ret_submit(held.seqnum, data=b"finally"))

    with ScriptedServer(script) as srv, connect(srv) as conn:
        held = conn.submit(BULK, 0x81, length=7)
        t0 = time.monotonic()
        for _ in range(20):
            assert len(conn.control_transfer(0x80, 6, 0x100, 0, 18, timeout=2)) == 18
        assert time.monotonic() - t0 < 2
        assert bytes(held.wait(2).in_data) == b"finally"


def test_stall_status_is_an_urb_error():
    def script(sock):
        cmd = read_cmd(sock)[0]
        sock.sendall(ret_submit(cmd.seqnum, status=-32))

    with ScriptedServer(script) as srv, connect(srv) as conn:
        with pytest.raises(UrbError, match="stall") as info:
            conn.transfer(BULK, 0x01, data=b"abc", timeout=2)
        assert info.value.status == -32 and info.value.errno == 32


def test_iso_in_packets_are_spread_to_their_offsets():
    def script(sock):
        cmd, _, _, isos = read_cmd(sock)
        assert [p.length for p in isos] == [4, 4, 4]
        results = [P.IsoPacket(0, 4, 2, 0), P.IsoPacket(4, 4, 4, 0), P.IsoPacket(8, 4, 1, -18)]
        sock.sendall(ret_submit(cmd.seqnum, data=b"aa" + b"bbbb" + b"c", isos=results))

    with ScriptedServer(script) as srv, connect(srv) as conn:
        urb = conn.transfer(ISO, 0x82, length=12, iso_packet_lengths=[4, 4, 4], interval=1, timeout=2)
        buf = bytes(urb.in_data)
        assert buf[0:2] == b"aa" and buf[4:8] == b"bbbb" and buf[8:9] == b"c"
        assert [r.actual_length for r in urb.iso_results] == [2, 4, 1]
        assert urb.iso_results[2].status == -18


def test_interval_zero_is_refused_before_sending():
    with ScriptedServer(echo_script) as srv, connect(srv) as conn:
        with pytest.raises(ValueError, match="interval"):
            conn.submit(INTR, 0x81, length=8, interval=0)


def test_receives_into_the_callers_buffer():
    def script(sock):
        cmd = read_cmd(sock)[0]
        sock.sendall(ret_submit(cmd.seqnum, data=bytes(range(256)) * 256))

    with ScriptedServer(script) as srv, connect(srv) as conn:
        buf = bytearray(65536)
        urb = conn.transfer(BULK, 0x81, buffer=buf, timeout=5)
        assert urb.actual_length == 65536 and buf == bytes(range(256)) * 256
        assert urb.in_data.obj is buf


def test_import_refused_names_busid_and_status():
    with ScriptedServer(echo_script, import_status=P.Status.ST_DEV_BUSY) as srv:
        with pytest.raises(ImportRefusedError, match=r"2-1.*ST_DEV_BUSY") as info:
            connect(srv)
        assert info.value.status == 2 and info.value.busid == "2-1"


def test_server_that_never_answers_times_out():
    with ScriptedServer(echo_script, answer=False) as srv:
        t0 = time.monotonic()
        with pytest.raises(UsbipTimeoutError, match="within 0.3"):
            import_device("127.0.0.1", srv.port, "2-1", timeout=0.3)
        assert time.monotonic() - t0 < 1.0


def test_connection_refused_is_clear():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    with pytest.raises(ConnectionLostError, match=f"127.0.0.1:{port} refused"):
        list_devices("127.0.0.1", port, timeout=2)


def test_list_devices_parses_records_and_interfaces():
    with ScriptedServer(echo_script) as srv:
        devs = list_devices("127.0.0.1", srv.port, timeout=2)
    assert devs == [DEVICE]
    assert devs[0].interfaces[0].bInterfaceClass == 0xFF


def test_close_fails_pending_and_joins_reader():
    def script(sock):
        read_cmd(sock)
        hold_until_client_closes(sock)

    with ScriptedServer(script) as srv:
        conn = connect(srv)
        urb = conn.submit(BULK, 0x81, length=4)
        conn.close()
        assert not conn._reader.is_alive()
        with pytest.raises(ConnectionLostError):
            urb.wait(1)
        assert conn.sock.fileno() == -1


@pytest.mark.parametrize("round_", range(30))
def test_reply_buffered_by_a_leader_reaches_the_follower(round_):
    """A leader's recv may pull in another URB's reply behind its own; that reply must still be
    delivered promptly (the reader thread may be asleep on an empty socket)."""
    def script(sock):
        follower = read_cmd(sock)[0]
        leader = read_cmd(sock)[0]
        # both replies in one segment, the leader's first
        sock.sendall(ret_submit(leader.seqnum, data=b"L" * 18) + ret_submit(follower.seqnum, data=b"F" * 8))
        hold_until_client_closes(sock)

    with ScriptedServer(script) as srv, connect(srv) as conn:
        pending = conn.submit(BULK, 0x81, length=8)  # read by the reader thread (async submit)
        assert len(conn.control_transfer(0x80, 6, 0x100, 0, 18, timeout=2)) == 18
        t0 = time.monotonic()
        assert bytes(pending.wait(3).in_data) == b"F" * 8
        assert time.monotonic() - t0 < 0.5


def test_send_failure_fails_fast_and_completes_the_urb_for_hooks():
    from usbip_backend.hooks import UrbHook

    release = threading.Event()

    class Recorder(UrbHook):
        def __init__(self):
            self.completed = []

        def urb_completed(self, urb):
            self.completed.append((urb.seqnum, urb.status, urb.submit_failed))

    def script(sock):
        release.wait(10)  # says nothing: only the client's sending side fails

    hook = Recorder()
    with ScriptedServer(script) as srv, connect(srv, hook=hook) as conn:
        # Our own sending side shut: the next send fails at once (EPIPE) while the socket still
        # reads, so the failure is the send's (a peer's reset would be seen by the idle reader).
        conn.sock.shutdown(socket.SHUT_WR)
        try:
            with pytest.raises(ConnectionLostError, match="2-1"):
                conn.transfer(BULK, 0x01, data=b"x" * 100, timeout=2)
            with pytest.raises(ConnectionLostError):
                conn.submit(BULK, 0x01, data=b"y")
        finally:
            release.set()
    # the URB whose CMD_SUBMIT never reached the wire still completes, marked for capture ('E')
    assert hook.completed and all(status == -108 for _, status, _ in hook.completed)
    assert hook.completed[-1][2] is True


def test_leader_and_reader_thread_poll_at_the_same_time():
    """The reader thread polls for an asynchronous URB's reply (without the token) while a leader
    runs down its own timeout, which also ends in poll(): one select.poll object refuses two
    concurrent poll() calls (seen in the kernel suite as 'concurrent poll() invocation')."""
    def script(sock):
        while True:  # answer nothing but unlinks (cancelled)
            cmd = read_cmd(sock)[0]
            if isinstance(cmd, P.CmdUnlink):
                sock.sendall(ret_unlink(cmd.seqnum, -104))

    with ScriptedServer(script) as srv, connect(srv) as conn:
        pending = conn.submit(BULK, 0x81, length=8)  # the reader thread waits for this one
        for timeout in (0.03, 0.05, 0.08):
            with pytest.raises(UsbipTimeoutError):
                conn.transfer(BULK, 0x01, data=b"x", timeout=timeout)
            assert not conn.closed
        pending.cancel()
        with pytest.raises(UrbCancelledError):
            pending.wait(2)
        assert not conn.closed


# -- the synchronous lane ----------------------------------------------------------------------------
# Connection.control_transfer (and the PyUSB backend) go through Connection._count, which builds no
# Urb unless something unusual happens. Each test runs both ways: the lane and transfer().
def _ctrl_lane(conn, timeout=5):
    return conn.control_transfer(0x80, 6, 0x0100, 0, 18, timeout)


def _ctrl_urb(conn, timeout=5):
    urb = conn.transfer(CTRL, 0x80, setup=GET_DEVICE_DESCRIPTOR, length=18, timeout=timeout)
    return bytes(urb.in_data)


BOTH_WAYS = pytest.mark.parametrize("ctrl", [_ctrl_lane, _ctrl_urb], ids=["lane", "urb"])


@BOTH_WAYS
@pytest.mark.parametrize("cuts", [(1,), (47,), (50,)])
def test_sync_control_reply_in_pieces(ctrl, cuts):
    def script(sock):
        cmd = read_cmd(sock)[0]
        send_in_pieces(sock, ret_submit(cmd.seqnum, data=bytes(range(18))), cuts)
        hold_until_client_closes(sock)

    with ScriptedServer(script) as srv, connect(srv) as conn:
        assert ctrl(conn) == bytes(range(18))


@BOTH_WAYS
def test_sync_control_stall_is_an_urb_error_and_the_connection_stays(ctrl):
    def script(sock):
        cmd = read_cmd(sock)[0]
        sock.sendall(ret_submit(cmd.seqnum, status=-32))
        cmd = read_cmd(sock)[0]
        sock.sendall(ret_submit(cmd.seqnum, data=b"x" * 18))
        hold_until_client_closes(sock)

    with ScriptedServer(script) as srv, connect(srv) as conn:
        with pytest.raises(UrbError, match="stall") as info:
            ctrl(conn)
        assert info.value.status == -32
        assert ctrl(conn) == b"x" * 18


@BOTH_WAYS
def test_sync_control_timeout_unlinks_then_works(ctrl, platform_mode):
    def script(sock):
        read_cmd(sock)
        unl = read_cmd(sock)[0]
        sock.sendall(ret_unlink(unl.seqnum, -104))
        cmd = read_cmd(sock)[0]
        sock.sendall(ret_submit(cmd.seqnum, data=b"y" * 18))
        hold_until_client_closes(sock)

    with ScriptedServer(script) as srv, connect(srv) as conn:
        t0 = time.monotonic()
        with pytest.raises(UsbipTimeoutError):
            ctrl(conn, 0.1)
        assert 0.1 <= time.monotonic() - t0 < 0.3
        assert ctrl(conn) == b"y" * 18


@BOTH_WAYS
def test_sync_control_skips_a_late_reply_to_an_abandoned_urb(ctrl):
    # The first transfer times out and its unlink is never answered (the URB is abandoned);
    # its late reply then arrives ahead of the next transfer's own.
    def script(sock):
        first = read_cmd(sock)[0]
        read_cmd(sock)  # the CMD_UNLINK, left unanswered
        second = read_cmd(sock)[0]
        sock.sendall(ret_submit(first.seqnum, data=b"L" * 18) + ret_submit(second.seqnum, data=b"S" * 18))
        hold_until_client_closes(sock)

    with ScriptedServer(script) as srv, connect(srv, unlink_grace=0.05) as conn:
        with pytest.raises(UsbipTimeoutError):
            ctrl(conn, 0.05)
        assert ctrl(conn) == b"S" * 18


@BOTH_WAYS
def test_sync_control_server_hanging_up_fails_fast(ctrl, platform_mode):
    def script(sock):
        read_cmd(sock)
        sock.shutdown(socket.SHUT_RDWR)

    with ScriptedServer(script) as srv, connect(srv) as conn:
        t0 = time.monotonic()
        with pytest.raises(ConnectionLostError, match="2-1"):
            ctrl(conn, 0)  # no timeout: must not hang
        assert time.monotonic() - t0 < 1.0
        with pytest.raises(ConnectionLostError):
            ctrl(conn)


@BOTH_WAYS
def test_sync_control_drops_a_stray_reply_after_a_cancelled_unlink(ctrl):
    # A server that cancels a URB (RET_UNLINK -ECONNRESET) and then sends its RET_SUBMIT anyway:
    # the stray reply comes first on the next transfer, with nothing else in flight.
    def script(sock):
        first = read_cmd(sock)[0]
        unl = read_cmd(sock)[0]
        sock.sendall(ret_unlink(unl.seqnum, -104))
        second = read_cmd(sock)[0]
        sock.sendall(ret_submit(first.seqnum, data=b"L" * 18) + ret_submit(second.seqnum, data=b"S" * 18))
        hold_until_client_closes(sock)

    with ScriptedServer(script) as srv, connect(srv) as conn:
        with pytest.raises(UsbipTimeoutError):
            ctrl(conn, 0.05)
        assert ctrl(conn) == b"S" * 18


@BOTH_WAYS
def test_sync_control_while_an_async_urb_is_answered_first(ctrl):
    # An asynchronous URB is outstanding; the server answers it just before the control
    # request: the synchronous caller dispatches it on the way to its own reply.
    def script(sock):
        early = read_cmd(sock)[0]
        control = read_cmd(sock)[0]
        sock.sendall(ret_submit(early.seqnum, data=b"early") + ret_submit(control.seqnum, data=b"c" * 18))
        hold_until_client_closes(sock)

    with ScriptedServer(script) as srv, connect(srv) as conn:
        early = conn.submit(BULK, 0x81, length=5)
        assert ctrl(conn) == b"c" * 18
        assert bytes(early.wait(5).in_data) == b"early"


@BOTH_WAYS
def test_async_reply_right_after_a_sync_one_is_delivered_promptly(ctrl):
    # The reader thread waits for the asynchronous URB's reply; a synchronous caller leads in
    # between. Whichever reads the late reply (the leader, or the reader thread after backing
    # off), it reaches its URB at once, not after some timeout.
    def script(sock):
        early = read_cmd(sock)[0]
        control = read_cmd(sock)[0]
        sock.sendall(ret_submit(control.seqnum, data=b"c" * 18))
        sock.sendall(ret_submit(early.seqnum, data=b"later"))
        hold_until_client_closes(sock)

    with ScriptedServer(script) as srv, connect(srv) as conn:
        early = conn.submit(BULK, 0x81, length=5)
        assert ctrl(conn) == b"c" * 18
        t0 = time.monotonic()
        assert bytes(early.wait(5).in_data) == b"later"
        assert time.monotonic() - t0 < 0.5


@BOTH_WAYS
def test_close_from_another_thread_ends_a_sync_call_waiting_forever(ctrl):
    def script(sock):
        read_cmd(sock)  # the request, never answered
        hold_until_client_closes(sock)

    with ScriptedServer(script) as srv:
        conn = connect(srv)
        outcome = {}

        def caller():
            try:
                outcome["result"] = ctrl(conn, 0)
            except Exception as exc:
                outcome["error"] = exc

        t = threading.Thread(target=caller)
        t.start()
        conn.close()
        t.join(5)
        assert not t.is_alive()
        assert isinstance(outcome.get("error"), ConnectionLostError), outcome
        assert "server closed" not in str(outcome["error"])  # ended by close(), not by the server


def test_wait_that_leads_in_vain_still_times_out_and_unlinks():
    # Urb.wait() finds the token free and reads for its URB itself; no reply comes, so it hands
    # the reading over and the timeout takes the usual unlink path.
    def script(sock):
        read_cmd(sock)
        unl = read_cmd(sock)[0]
        sock.sendall(ret_unlink(unl.seqnum, -104))
        cmd = read_cmd(sock)[0]
        sock.sendall(ret_submit(cmd.seqnum, data=b"next"))
        hold_until_client_closes(sock)

    with ScriptedServer(script) as srv, connect(srv) as conn:
        urb = conn.submit(BULK, 0x81, length=4)
        t0 = time.monotonic()
        with pytest.raises(UsbipTimeoutError, match="timed out"):
            urb.wait(0.1)
        assert 0.1 <= time.monotonic() - t0 < 0.3
        assert bytes(conn.submit(BULK, 0x81, length=4).wait(2).in_data) == b"next"


def test_pipelined_waits_get_their_own_replies(platform_mode):
    # A sliding window of submits, each wait() leading in turn; the server answers every window
    # in reverse order, so most replies a waiter reads are for the URBs behind it.
    def script(sock):
        for _ in range(25):
            cmds = [read_cmd(sock)[0] for _ in range(8)]
            sock.sendall(b"".join(ret_submit(c.seqnum, data=c.seqnum.to_bytes(4, "big")) for c in reversed(cmds)))
        hold_until_client_closes(sock)

    with ScriptedServer(script) as srv, connect(srv) as conn:
        for _ in range(25):
            urbs = [conn.submit(BULK, 0x81, length=4) for _ in range(8)]
            for urb in urbs:
                assert bytes(urb.wait(5).in_data) == urb.seqnum.to_bytes(4, "big")


# -- platforms without SO_RCVTIMEO (poll() before each recv) or without poll() too (Windows) --------
# Tests that take the platform_mode fixture run in all three modes.
@pytest.fixture(params=["rcvtimeo", "poll-only", "windows"])
def platform_mode(request, monkeypatch):
    from usbip_backend.engine import connection
    if request.param != "rcvtimeo":
        monkeypatch.setattr(connection, "_HAVE_RCVTIMEO", False)
    if request.param == "windows":  # neither: select() before each recv, blocking unlink sends
        monkeypatch.setattr(connection, "_HAVE_POLL", False)
        monkeypatch.setattr(connection, "_HAVE_DONTWAIT", False)
    return request.param


def test_platform_round_trips_both_ways(platform_mode):
    with ScriptedServer(echo_script) as srv, connect(srv) as conn:
        for _ in range(20):
            assert len(conn.control_transfer(0x80, 6, 0x0100, 0, 18, 5)) == 18
            assert conn.control_transfer(0x40, 1, 0, 0, b"abc", 5) == 3
            urb = conn.transfer(BULK, 0x81, length=4, timeout=5)
            assert bytes(urb.in_data) == bytes([urb.seqnum & 0xFF]) * 4


# -- the lane's big IN reply: one scatter recv, header to the reader's buffer, data to the caller's --
def _lane_read(conn, size, timeout=5):
    buf = bytearray(size)
    n = conn.sync_transfer(BULK, 0x81, None, memoryview(buf), timeout)
    return bytes(buf[:n])


def test_lane_big_in_reply_followed_by_another_message_in_the_same_recv():
    def script(sock):
        cmd = read_cmd(sock)[0]
        # a short answer to a 64 KiB request, and right behind it a stray RET_UNLINK (ignored)
        sock.sendall(ret_submit(cmd.seqnum, data=b"s" * 100) + ret_unlink(4242, 0))
        cmd = read_cmd(sock)[0]
        sock.sendall(ret_submit(cmd.seqnum, data=bytes(range(256)) * 256))
        hold_until_client_closes(sock)

    with ScriptedServer(script) as srv, connect(srv) as conn:
        assert _lane_read(conn, 65536) == b"s" * 100
        assert _lane_read(conn, 65536) == bytes(range(256)) * 256
        assert not conn.closed


def test_lane_big_in_after_a_late_reply_to_a_urb_given_up():
    def script(sock):
        first = read_cmd(sock)[0]
        read_cmd(sock)  # CMD_UNLINK, never answered: the URB is given up
        second = read_cmd(sock)[0]
        sock.sendall(ret_submit(first.seqnum, data=b"L" * 5000) + ret_submit(second.seqnum, data=b"S" * 70000))
        hold_until_client_closes(sock)

    with ScriptedServer(script) as srv, connect(srv, unlink_grace=0.05) as conn:
        with pytest.raises(UsbipTimeoutError):
            _lane_read(conn, 8192, timeout=0.05)
        assert _lane_read(conn, 1 << 20) == b"S" * 70000  # bigger than one scatter recv takes
        assert not conn.closed


@pytest.mark.parametrize("cuts", [(10,), (48,), (60,), (30000,), (65584,)])
def test_lane_big_in_reply_in_pieces(cuts):
    payload = bytes(range(256)) * 300  # 76800 bytes: more than one scatter recv

    def script(sock):
        cmd = read_cmd(sock)[0]
        send_in_pieces(sock, ret_submit(cmd.seqnum, data=payload), cuts)
        hold_until_client_closes(sock)

    with ScriptedServer(script) as srv, connect(srv) as conn:
        assert _lane_read(conn, len(payload)) == payload


def test_the_send_queue_keeps_order_through_partial_sends_and_calls_each_sent_once():
    """Lone headers (queued as bytes) between messages of several parts with a ``sent`` callback,
    more than the socket holds while nobody reads: every byte arrives in order, and each ``sent`` is called
    once, in order."""
    from usbip_backend.engine.connection import _Sender

    with socket.create_server(("127.0.0.1", 0)) as listener:
        a = socket.create_connection(listener.getsockname(), timeout=10)
        b, _ = listener.accept()
    with a, b:
        a.settimeout(None)  # blocking, as the engine's: MSG_DONTWAIT alone keeps sends from waiting
        b.settimeout(10)
        stuck = []
        sender = _Sender(a, lambda: stuck.append(True))
        expected = bytearray()
        ends = []  # the messages with a ``sent``
        called = []
        got = bytearray()

        def on_sent(i):
            called.append(i)

        for i in range(400):
            header = i.to_bytes(4, "big") * 12
            if i % 7 == 3:
                payload = bytearray([i % 251]) * 400000  # 23 MB in all: more than the socket holds
                expected += header + payload
                ends.append(i)
                sender.post([header, payload], sent=lambda i=i: on_sent(i))
            else:
                expected += header
                sender.post(header)
        while len(got) < len(expected):
            chunk = b.recv(1 << 20)
            assert chunk, "the stream ended early"
            got += chunk
            if sender.tail is not None:
                sender.resume()  # (the reader thread does this once the socket is writable)
            else:
                sender.kick()
        assert got == expected
        assert stuck, "the socket never filled: the test did not test partial sends"
        assert called == ends
        assert not sender.queue and sender.tail is None and not sender.lock.locked()
