"""Syslog: RFC 5424/3164 parsing, RFC 6587 framing, the TCP receiver (client and listen modes)."""

from __future__ import annotations

import io
import logging
import queue
import socket
import threading
import time
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tshark_util as ts
from tshark_util import complete, fake_urb
from usbip_backend.pcap import PcapWriter
from usbip_backend.protocol import TransferType
from usbip_backend.syslog import FrameDecoder, SyslogMessage, SyslogReceiver, parse_message, parse_structured_data

BOM = b"\xef\xbb\xbf"
# RFC 5424 section 6.5, examples 1-4 (BOM written as the bytes it stands for).
EX1 = b"<34>1 2003-10-11T22:14:15.003Z mymachine.example.com su - ID47 - " + BOM + \
      b"'su root' failed for lonvick on /dev/pts/8"
EX2 = b"<165>1 2003-08-24T05:14:15.000003-07:00 192.0.2.1 myproc 8710 - - %% It's time to make the do-nuts."
EX3 = b'<165>1 2003-10-11T22:14:15.003Z mymachine.example.com evntslog - ID47 [exampleSDID@32473 iut="3" ' \
      b'eventSource="Application" eventID="1011"] ' + BOM + b"An application event log entry..."
EX4 = b'<165>1 2003-10-11T22:14:15.003Z mymachine.example.com evntslog - ID47 [exampleSDID@32473 iut="3" ' \
      b'eventSource="Application" eventID="1011"][examplePriority@32473 class="high"]'


# --- parsing ----------------------------------------------------------------------------------
def test_rfc5424_example_1():
    m = parse_message(EX1)
    assert (m.facility, m.severity, m.severity_name, m.facility_name, m.version) == (4, 2, "CRIT", "auth", 1)
    assert m.timestamp == datetime(2003, 10, 11, 22, 14, 15, 3000, tzinfo=timezone.utc)
    assert (m.hostname, m.app_name, m.procid, m.msgid) == ("mymachine.example.com", "su", None, "ID47")
    assert m.structured_data == []
    assert m.msg == "'su root' failed for lonvick on /dev/pts/8"  # BOM stripped
    assert m.raw == EX1 and m.format == "rfc5424"


def test_rfc5424_example_2():
    m = parse_message(EX2)
    assert (m.facility, m.severity) == (20, 5)  # local4.notice
    assert m.timestamp == datetime(2003, 8, 24, 5, 14, 15, 3, tzinfo=timezone(timedelta(hours=-7)))
    assert (m.hostname, m.app_name, m.procid, m.msgid) == ("192.0.2.1", "myproc", "8710", None)
    assert m.msg == "%% It's time to make the do-nuts."


def test_rfc5424_example_3_structured_data():
    m = parse_message(EX3)
    assert m.structured_data == [
        ("exampleSDID@32473", [("iut", "3"), ("eventSource", "Application"), ("eventID", "1011")])]
    assert m.msg == "An application event log entry..."


def test_rfc5424_example_4_two_sd_elements_no_msg():
    m = parse_message(EX4)
    assert [sid for sid, _ in m.structured_data] == ["exampleSDID@32473", "examplePriority@32473"]
    assert m.structured_data[1][1] == [("class", "high")]
    assert m.msg == ""


def test_sd_escapes():
    sd, rest = parse_structured_data(r'[id@1 a="x\"y" b="c\\d" c="e\]f" d="g\h"] tail')
    assert sd == [("id@1", [("a", 'x"y'), ("b", "c\\d"), ("c", "e]f"), ("d", "g\\h")])]
    assert rest == " tail"
    with pytest.raises(ValueError):
        parse_structured_data('[id a="unterminated]')


def test_nil_values_and_bad_structured_data():
    m = parse_message(b"<13>1 - - - - - - just text")
    assert (m.timestamp, m.hostname, m.app_name, m.procid, m.msgid) == (None, None, None, None, None)
    assert m.msg == "just text"
    bad = parse_message(b'<13>1 - host app - - [broken sd "here" text')
    assert bad.hostname == "host" and bad.structured_data == []
    assert bad.msg == '[broken sd "here" text'


def test_rfc3164_and_lines_without_pri():
    m = parse_message(b"<34>Oct 11 22:14:15 mymachine su: 'su root' failed for lonvick on /dev/pts/8",
                      now=datetime(2024, 11, 1))
    assert (m.facility, m.severity, m.format) == (4, 2, "rfc3164")
    assert m.timestamp == datetime(2024, 10, 11, 22, 14, 15)
    assert (m.hostname, m.app_name, m.msg) == ("mymachine", "su", "'su root' failed for lonvick on /dev/pts/8")
    m = parse_message(b"<13>Feb  5 17:32:18 10.0.0.99 sshd[1234]: Accepted key", now=datetime(2024, 3, 1))
    assert (m.hostname, m.app_name, m.procid, m.msg) == ("10.0.0.99", "sshd", "1234", "Accepted key")
    assert m.timestamp == datetime(2024, 2, 5, 17, 32, 18)
    m = parse_message(b"<14>Dec 31 23:59:59 host app: x", now=datetime(2025, 1, 1, 0, 0, 5))
    assert m.timestamp.year == 2024  # no year in RFC 3164: the most recent past date
    plain = parse_message(b"I (1234) wifi: connected")
    assert (plain.facility, plain.severity, plain.format) == (1, 5, "plain")  # user.notice per RFC 3164
    assert plain.msg == "I (1234) wifi: connected"
    assert parse_message(b"<999>out of range").format == "plain"
    esp = parse_message(b"<11>\x1b[0;31mE (99) app: boom\x1b[0m")
    assert esp.severity_name == "ERR" and esp.format_line() == "ERR: E (99) app: boom"


def test_format_line_is_one_readable_line():
    line = parse_message(EX3).format_line()
    assert line == ("NOTICE 2003-10-11T22:14:15.003Z mymachine.example.com evntslog ID47: "
                    "An application event log entry... "
                    "[exampleSDID@32473 iut='3' eventSource='Application' eventID='1011']")
    multi = parse_message(b"<12>1 - h a 7 - - two\nlines\x07")
    assert multi.format_line() == "WARNING h a[7]: two\\nlines\\x07"


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_parse_never_raises(raw):
    m = parse_message(raw)
    assert isinstance(m, SyslogMessage) and m.raw == raw
    assert "\n" not in m.format_line()


# --- framing ----------------------------------------------------------------------------------
def _frames(chunks, max_frame=1024):
    d = FrameDecoder(max_frame)
    out = []
    for c in chunks:
        out += d.feed(c)
    return out, d


def test_octet_counting_without_lf():
    stream = b"".join(b"%d %s" % (len(m), m) for m in (EX1, EX2, EX3))
    out, d = _frames([stream])
    assert [f.data for f in out] == [EX1, EX2, EX3] and not d.pending
    assert all(f.problem is None for f in out)


def test_mixed_framing_and_terminators():
    stream = (b"%d %s" % (len(EX1), EX1) + b"<13>lf line\n" + b"<13>crlf line\r\n" + b"<13>nul line\0"
              + b"%d %s\n" % (len(EX4), EX4) + b"<13>last\n")
    expected = [EX1, b"<13>lf line", b"<13>crlf line", b"<13>nul line", EX4, b"<13>last"]
    out, _ = _frames([stream])
    assert [f.data for f in out] == expected
    # byte by byte gives the same frames
    out, _ = _frames([stream[i:i + 1] for i in range(len(stream))])
    assert [f.data for f in out] == expected


def test_message_containing_lf_inside_octet_count():
    body = b"<13>1 - h a - - - line one\nline two"
    out, _ = _frames([b"%d %s" % (len(body), body)])
    assert [f.data for f in out] == [body]
    assert parse_message(out[0].data).msg == "line one\nline two"


def test_final_unterminated_message_delivered_at_flush():
    out, d = _frames([b"<13>first\n<13>second, no LF"])
    assert [f.data for f in out] == [b"<13>first"]
    assert d.pending
    final = d.flush()
    assert [f.data for f in final] == [b"<13>second, no LF"] and final[0].problem is None
    assert not d.pending


def test_oversized_octet_count_is_cut_and_stream_resyncs():
    big = b"<13>" + b"x" * 5000
    out, d = _frames([b"%d %s" % (len(big), big[:3000]), big[3000:] + b"<13>after\n"], max_frame=1024)
    assert len(out) == 2
    assert out[0].data == big[:1024] and "exceeds max_frame" in out[0].problem
    assert out[1].data == b"<13>after" and out[1].problem is None
    assert len(d._buf) == 0


def test_oversized_line_is_cut_and_bounded():
    d = FrameDecoder(1024)
    out = []
    for _ in range(100):  # 100 KB without a terminator never sits in the buffer
        out += d.feed(b"y" * 1000)
        assert len(d._buf) <= 2048
    out += d.feed(b"tail of the long line\n<13>next\n")
    assert [len(f.data) for f in out] == [1024, 8]
    assert "no line terminator" in out[0].problem and out[1].data == b"<13>next"


def test_lying_length_prefix_cut_at_eof_and_idle():
    out, d = _frames([b"500 <13>only a little"])
    assert out == []
    cut = d.flush()
    assert cut[0].data == b"<13>only a little" and "length prefix said 500" in cut[0].problem
    out, d = _frames([b"200 <13>sender went quiet"])
    idle = d.idle(2.0)
    assert "no data for 2 s" in idle[0].problem
    assert d.feed(b"<13>resynced\n")[0].data == b"<13>resynced"


def test_short_length_prefix_reported_as_out_of_sync():
    out, _ = _frames([b"8 <13>1 - hello world\n<13>ok\n"])
    assert out[0].data == b"<13>1 - "
    assert out[1].data == b"hello world" and "out of sync" in out[1].problem
    assert out[2].data == b"<13>ok" and out[2].problem is None


def test_garbage_bytes():
    garbage = bytes(range(256)) * 4 + b"\xff\xfe\x00\x00\n\n\r\n"
    out, d = _frames([garbage, b"<13>good\n"])
    assert out[-1].data == b"<13>good"
    for f in out:
        parse_message(f.data)  # never raises


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=200), max_size=20))
def test_decoder_bounded_for_any_input(chunks):
    d = FrameDecoder(64)
    for c in chunks:
        for f in d.feed(c):
            assert 0 < len(f.data) <= 64
        assert len(d._buf) <= 64 + 200 + 16
    for f in d.flush():
        assert 0 < len(f.data) <= 264


# --- receiver ---------------------------------------------------------------------------------
class _Events(logging.Handler):
    """Collects log records from usbip_backend.syslog into a queue (to synchronise on them)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: "queue.Queue[logging.LogRecord]" = queue.Queue()

    def emit(self, record: logging.LogRecord) -> None:
        self.records.put(record)

    def wait_for(self, text: str, timeout: float = 10.0) -> logging.LogRecord:
        """The next record containing ``text``; fails after ``timeout`` s in all (a flood of
        other records must not extend the wait)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                record = self.records.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no log record containing {text!r} within {timeout} s") from None
            if text in record.getMessage():
                return record


@pytest.fixture
def syslog_events():
    handler = _Events()
    logger = logging.getLogger("usbip_backend.syslog")
    old = logger.level
    logger.setLevel(logging.DEBUG)
    logger.addHandler(handler)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(old)


def _accept(server: socket.socket, timeout: float = 10.0) -> socket.socket:
    server.settimeout(timeout)
    conn, _ = server.accept()
    return conn


@pytest.mark.timeout(30)
def test_client_mode_receives_prints_and_delivers_final_message_on_stop():
    console = io.StringIO()
    got: "queue.Queue[SyslogMessage]" = queue.Queue()
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        rx = SyslogReceiver("127.0.0.1", port, on_message=got.put, console=console)
        rx.start()
        try:
            with _accept(server) as conn:
                conn.sendall(b"%d %s" % (len(EX1), EX1) + b"<14>1 - esp32 app - - - second line\n")
                assert got.get(timeout=10).msg == "'su root' failed for lonvick on /dev/pts/8"
                assert got.get(timeout=10).msg == "second line"
                conn.sendall(b"<11>1 - esp32 app - - - unterminated at stop")
                rx.stop()  # the connection is still open: stop() delivers what has arrived
                assert got.get(timeout=10).msg == "unterminated at stop"
        finally:
            rx.stop()
    lines = console.getvalue().splitlines()
    assert lines[0] == "CRIT 2003-10-11T22:14:15.003Z mymachine.example.com su ID47: " \
                       "'su root' failed for lonvick on /dev/pts/8"
    assert lines[1] == "INFO esp32 app: second line"
    assert lines[2] == "ERR esp32 app: unterminated at stop"
    assert rx.messages_received == 3 and rx.connections == 1


@pytest.mark.timeout(30)
def test_client_reconnects_after_device_restart(syslog_events):
    got: "queue.Queue[SyslogMessage]" = queue.Queue()
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    rx = SyslogReceiver("127.0.0.1", port, on_message=got.put, console=False,
                        backoff_initial=0.02, backoff_max=0.2)
    try:
        rx.start()
        with _accept(server) as conn:
            conn.sendall(b"<14>1 - dev app - - - before restart\n<14>1 - dev app - - - final, no LF")
            assert got.get(timeout=10).msg == "before restart"
        server.close()  # the device reboots: connection and listener gone
        assert got.get(timeout=10).msg == "final, no LF"  # delivered at EOF
        syslog_events.wait_for("cannot connect")  # refused while down: retrying with back-off
        syslog_events.wait_for("failed again")  # ... more than once
        server = socket.create_server(("127.0.0.1", port))  # back up, same port
        with _accept(server) as conn:
            conn.sendall(b"<14>1 - dev app - - - after restart\n")
            assert got.get(timeout=10).msg == "after restart"
            # stop while this connection is up: closing it first would make the receiver
            # (rightly) reconnect again before stop() runs
            rx.stop()
            assert rx.connections == 2
    finally:
        rx.stop()
        server.close()


@pytest.mark.timeout(30)
def test_stop_while_connecting_or_backing_off_is_quick():
    with socket.create_server(("127.0.0.1", 0)) as s:
        port = s.getsockname()[1]
    # nothing listens on port now; long back-off must not delay stop()
    rx = SyslogReceiver("127.0.0.1", port, console=False, backoff_initial=5.0, backoff_max=5.0)
    rx.start()
    rx.stop(timeout=3.0)
    assert not rx._thread.is_alive()


class _Console(io.StringIO):
    """A console stream whose lines a test can wait for (written by the receiver's thread)."""

    def __init__(self) -> None:
        super().__init__()
        self.cond = threading.Condition()

    def write(self, s: str) -> int:
        with self.cond:
            n = super().write(s)
            self.cond.notify_all()
            return n

    def lines(self) -> "list[str]":
        with self.cond:
            return self.getvalue().splitlines()

    def wait_for_line(self, text: str, timeout: float = 10.0) -> str:
        with self.cond:
            found = self.cond.wait_for(lambda: [ln for ln in self.getvalue().splitlines() if text in ln], timeout)
        assert found, f"no console line containing {text!r} within {timeout} s: {self.lines()}"
        return found[0]


def _closed_port() -> int:
    """A port on 127.0.0.1 with nothing listening, outside the ephemeral range: a connection
    attempt to a port inside it can (rarely) connect to itself, TCP simultaneous open."""
    low = 32768
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        pass
    for port in range(max(1025, low - 2000), low):
        probe = socket.socket()
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            continue
        finally:
            probe.close()
        return port
    raise AssertionError("no free port below the ephemeral range")


def test_default_backoff_is_half_a_second_doubling_to_eight():
    rx = SyslogReceiver("127.0.0.1")
    assert (rx.backoff_initial, rx.backoff_max) == (0.5, 8.0)


@pytest.mark.timeout(30)
def test_nothing_listening_is_said_once_then_the_late_listener_is_captured(syslog_events):
    port = _closed_port()
    console = _Console()
    got: "queue.Queue[SyslogMessage]" = queue.Queue()
    rx = SyslogReceiver("127.0.0.1", port, on_message=got.put, console=console,
                        backoff_initial=0.02, backoff_max=0.1)
    server = None
    try:
        rx.start()
        notice = console.wait_for_line("no device log")
        assert notice == (f"syslog: no device log is being captured: cannot connect to 127.0.0.1:{port}: "
                          "connection refused (ECONNREFUSED); retrying (every 0.02 s, backing off to 0.1 s) "
                          "until stopped")
        for _ in range(3):  # several more refused attempts, and still the one line
            syslog_events.wait_for("failed again")
        assert rx.connect_failures >= 4 and not rx.connected
        assert console.lines() == [notice]

        server = socket.create_server(("127.0.0.1", port))  # the device's log port comes up
        with _accept(server) as conn:
            assert rx.wait_connected(timeout=10)
            conn.sendall(b"<14>1 - esp32 app - - - booted\n")
            assert got.get(timeout=10).msg == "booted"
            lines = console.lines()
            failures = rx.connect_failures
            assert lines == [notice,
                             f"syslog: connected to 127.0.0.1:{port} after {failures} failed attempts; "
                             "capturing the device log",
                             "INFO esp32 app: booted"]
            rx.stop()
    finally:
        rx.stop()
        if server is not None:
            server.close()
    assert rx.connections == 1
    assert console.lines()[3:] == []  # nothing said after stop
    # with a console, the notices are logged below WARNING: a log handler on the same terminal
    # must not show them a second time
    records = []
    while not syslog_events.records.empty():
        records.append(syslog_events.records.get())
    assert not [r for r in records if r.levelno >= logging.WARNING and "device log" in r.getMessage()]


@pytest.mark.timeout(30)
def test_nothing_listening_without_console_is_logged_once_as_a_warning(syslog_events):
    port = _closed_port()
    rx = SyslogReceiver("127.0.0.1", port, console=False, backoff_initial=0.02, backoff_max=0.05)
    try:
        rx.start()
        first = syslog_events.wait_for("no device log is being captured")
        assert first.levelno == logging.WARNING and f"127.0.0.1:{port}" in first.getMessage()
        for _ in range(3):
            syslog_events.wait_for("failed again")
    finally:
        rx.stop()
    records = []
    while not syslog_events.records.empty():
        records.append(syslog_events.records.get())
    assert not [r for r in records if "no device log" in r.getMessage()]  # the one above only


@pytest.mark.timeout(30)
def test_stop_during_backoff_returns_promptly():
    port = _closed_port()
    console = _Console()
    # a back-off far longer than the bound below: stop() must not wait it out
    rx = SyslogReceiver("127.0.0.1", port, console=console, backoff_initial=60.0, backoff_max=60.0)
    rx.start()
    try:
        console.wait_for_line("no device log")  # said just before the back-off wait
        started = time.monotonic()
        rx.stop()
        elapsed = time.monotonic() - started
    finally:
        rx.stop()
    assert elapsed < 5.0
    assert rx._thread is not None and not rx._thread.is_alive()
    assert len(console.lines()) == 1  # no word of retrying once stopped


@pytest.mark.timeout(30)
def test_listen_mode_with_real_senders_and_garbage(syslog_events):
    got: "queue.Queue[SyslogMessage]" = queue.Queue()
    console = io.StringIO()
    with SyslogReceiver("127.0.0.1", 0, listen=True, on_message=got.put, console=console, max_frame=256) as rx:
        assert rx.port != 0
        with socket.create_connection(("127.0.0.1", rx.port), timeout=10) as sender:
            sender.sendall(b"%d %s\n" % (len(EX2), EX2))
            assert got.get(timeout=10).procid == "8710"
            sender.sendall(bytes(range(1, 256)) * 3 + b"\n")  # garbage, longer than max_frame
            sender.sendall(b"100000 " + b"z" * 300)  # a lying, oversized octet count
            syslog_events.wait_for("exceeds max_frame")
            while True:  # drain what the garbage turned into
                m = got.get(timeout=10)
                if m.truncated and m.raw.startswith(b"zzz"):
                    break
        with socket.create_connection(("127.0.0.1", rx.port), timeout=10) as second:
            second.sendall(b"<13>Oct 11 22:14:15 mymachine su: still alive")  # closed without LF
        m = got.get(timeout=10)
        assert (m.format, m.app_name, m.msg) == ("rfc3164", "su", "still alive")
    assert rx.connections == 2
    assert rx.problems >= 1
    assert any(line.startswith("[127.0.0.1:") and "still alive" in line for line in console.getvalue().splitlines())


@pytest.mark.timeout(30)
def test_listen_port_in_use_raises_from_start():
    with socket.create_server(("127.0.0.1", 0)) as busy:
        rx = SyslogReceiver("127.0.0.1", busy.getsockname()[1], listen=True, console=False)
        with pytest.raises(OSError):
            rx.start()
        rx.stop()


@pytest.mark.timeout(60)
def test_messages_land_in_pcap_in_time_order(tmp_path):
    path = str(tmp_path / "usb+syslog.pcapng")
    got: "queue.Queue[SyslogMessage]" = queue.Queue()
    with PcapWriter(path) as w:
        with SyslogReceiver("127.0.0.1", 0, listen=True, pcap=w, on_message=got.put, console=False) as rx:
            with socket.create_connection(("127.0.0.1", rx.port), timeout=10) as sender:
                for i in range(3):
                    urb = fake_urb(seqnum=i + 1, transfer_type=TransferType.BULK, endpoint=0x81, length=8)
                    w.urb_submitted(urb)
                    w.urb_completed(complete(urb, status=-32 if i == 1 else 0, data=b"" if i == 1 else b"12345678"))
                    sender.sendall(b"<%d>1 2024-05-01T10:00:0%dZ esp32 usbip 42 EP1 - message %d\n" % (8 + 3, i, i))
                    assert got.get(timeout=10).msg == f"message {i}"
    ts.require_tshark()
    ts.assert_clean(path)
    ts.assert_all_urbs_paired(path)
    rows = ts.fields(path, ["frame.time_epoch", "frame.interface_id", "usb.urb_type", "syslog.level",
                            "syslog.facility", "syslog.hostname", "syslog.appname", "syslog.procid"])
    times = [float(r[0]) for r in rows]
    assert times == sorted(times)
    kinds = [("usb" if r[1] == "0" else "syslog") for r in rows]
    assert kinds == ["usb", "usb", "syslog"] * 3
    syslog_rows = [r for r in rows if r[1] == "1"]
    assert all(r[3:] == ["3", "1", "esp32", "usbip", "42"] for r in syslog_rows)
    msgs = [r[0] for r in ts.fields(path, ["syslog.msg"], "syslog")]
    assert len(msgs) == 3 and all(f"message {i}" in msgs[i] for i in range(3))
    src = ts.fields(path, ["exported_pdu.ipv4_src", "exported_pdu.ipv4_dst"], "syslog")
    assert src[0] == ["127.0.0.1", "127.0.0.1"]


# --- bad input must never kill the receiver or swallow the next message ------------------------
_BAD_TIMESTAMPS = [
    "2024-05-01T10:00:00+24:00",  # offset out of range (timezone() raises for >= 24 h)
    "2024-05-01T10:00:00+99:99",
    "2024-05-01T10:00:00-23:60",
    "2024-13-01T10:00:00Z",  # month 13
    "2024-05-01T25:00:00Z",  # hour 25
    "2024-05-01T10:61:00Z",
    "2024-05-01T10:00:61Z",
    "2024-02-30T10:00:00Z",
    "0000-05-01T10:00:00Z",
    "garbage",
]


@pytest.mark.parametrize("ts_text", _BAD_TIMESTAMPS)
def test_out_of_range_timestamp_is_unknown_not_an_error(ts_text):
    raw = f"<13>1 {ts_text} host app 42 ID1 - the message".encode()
    m = parse_message(raw)
    assert (m.format, m.timestamp, m.timestamp_text) == ("rfc5424", None, ts_text)
    assert (m.hostname, m.app_name, m.procid, m.msgid, m.msg) == ("host", "app", "42", "ID1", "the message")
    assert m.format_line() == f"NOTICE {ts_text} host app[42] ID1: the message"  # shown as sent


def test_timestamp_extremes_still_parse():
    m = parse_message(b"<13>1 2024-05-01T10:00:60.5+23:59 h a - - - leap second, largest offset")
    assert m.timestamp == datetime(2024, 5, 1, 10, 0, 59, 500000,
                                   tzinfo=timezone(timedelta(hours=23, minutes=59)))
    assert m.timestamp_text == "2024-05-01T10:00:60.5+23:59"
    assert parse_message(b"<13>1 - h a - - - nil").timestamp_text is None


def test_parse_accepts_text():
    m = parse_message("<13>1 - h a - - - caf\u00e9")
    assert m.msg == "caf\u00e9" and m.raw == "<13>1 - h a - - - caf\u00e9".encode()


def _field(lo: int, hi: int, width: int) -> st.SearchStrategy[str]:
    return st.integers(lo, hi).map(lambda n: str(n).zfill(width))


#: RFC 5424 headers whose timestamp has every field drawn from far beyond its legal range.
_near_5424 = st.builds(
    lambda y, mo, d, h, mi, s, frac, zone, rest: f"<13>1 {y}-{mo}-{d}T{h}:{mi}:{s}{frac}{zone} host app - - {rest}",
    _field(0, 9999, 4), _field(0, 99, 2), _field(0, 99, 2), _field(0, 99, 2), _field(0, 99, 2),
    _field(0, 99, 2), st.sampled_from(["", ".0", ".123456", ".9"]),
    st.one_of(st.just("Z"), st.builds(lambda sign, hh, mm: f"{sign}{hh}:{mm}", st.sampled_from("+-"),
                                      _field(0, 99, 2), _field(0, 99, 2))),
    st.text(max_size=40),
)
_near_3164 = st.builds(
    lambda mon, d, h, mi, s, rest: f"<13>{mon} {d} {h}:{mi}:{s} {rest}",
    st.sampled_from(["Jan", "Feb", "Dec", "Foo"]), _field(0, 99, 2), _field(0, 99, 2), _field(0, 99, 2),
    _field(0, 99, 2), st.text(max_size=40),
)


@settings(max_examples=500, deadline=None)
@given(st.one_of(st.binary(max_size=300), st.text(max_size=300), _near_5424, _near_3164,
                 _near_5424.map(lambda s: s.encode("utf-8", "surrogatepass"))))
def test_parse_never_raises_on_bytes_text_or_near_valid_headers(raw):
    m = parse_message(raw)
    expected_raw = raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else raw
    assert isinstance(m, SyslogMessage) and m.raw == expected_raw
    line = m.format_line("peer")
    assert "\n" not in line and "\x1b" not in line


@settings(max_examples=100, deadline=None)
@given(st.datetimes(), st.sampled_from(["Jan", "Feb", "Dec"]), st.integers(0, 99))
def test_rfc3164_never_raises_for_any_reference_time(now, mon, day):
    m = parse_message(f"<13>{mon} {day:2d} 00:00:00 host app: x".encode(), now=now)
    assert (m.format, m.app_name, m.msg, m.timestamp_text) == ("rfc3164", "app", "x", f"{mon} {day:2d} 00:00:00")
    if m.timestamp is not None:  # never in the future (beyond a day of clock skew)
        assert m.timestamp - now <= timedelta(days=1) and m.timestamp.day == day


def test_rfc3164_year_inference_at_the_ends_of_time():
    m = parse_message(b"<13>Dec 31 23:59:59 host app: x", now=datetime.max)
    assert m.timestamp == datetime(9999, 12, 31, 23, 59, 59)
    m = parse_message(b"<13>Jan  1 00:00:00 host app: x", now=datetime.min)
    assert m.timestamp == datetime(1, 1, 1)
    m = parse_message(b"<13>Dec 31 23:59:59 host app: x", now=datetime.min)
    assert (m.timestamp, m.timestamp_text) == (None, "Dec 31 23:59:59")  # would be year 0


class _ExplodingConsole(io.StringIO):
    """A console stream that fails on one line (as a broken pipe wrapper or a GUI sink might)."""

    def write(self, s: str) -> int:
        if "explode" in s:
            raise RuntimeError("console sink failed")
        return super().write(s)


@pytest.mark.timeout(30)
def test_receiver_survives_hostile_messages(syslog_events):
    got: "queue.Queue[SyslogMessage]" = queue.Queue()

    def handler(msg: SyslogMessage) -> None:
        if "handler bomb" in msg.msg:
            raise KeyError("handler failed")
        got.put(msg)

    console = _ExplodingConsole()
    with socket.create_server(("127.0.0.1", 0)) as server:
        rx = SyslogReceiver("127.0.0.1", server.getsockname()[1], on_message=handler, console=console)
        rx.start()
        try:
            with _accept(server) as conn:
                conn.sendall(b"<13>1 2024-05-01T10:00:00+24:00 host app - - - offset out of range\n")
                assert got.get(timeout=10).timestamp is None
                conn.sendall(b"<13>1 - host app - - - handler bomb\n")
                syslog_events.wait_for("on_message callback failed")
                conn.sendall(b"<13>1 - host app - - - explode the console\n")
                syslog_events.wait_for("printing")
                assert "explode" in got.get(timeout=10).msg  # the console failed, the handler still got it
                conn.sendall(b"<13>1 2024-05-01T10:00:00Z host app - - - still delivered\n")
                m = got.get(timeout=10)
                assert m.msg == "still delivered" and m.timestamp is not None
                assert rx._thread.is_alive()
                rx.stop()
        finally:
            rx.stop()
    assert rx.messages_received == 4
    # every message printed except the one the console choked on
    printed = [line.split(": ", 1)[1] for line in console.getvalue().splitlines()]
    assert printed == ["offset out of range", "handler bomb", "still delivered"]


@pytest.mark.timeout(30)
def test_idle_sender_resets_skip_states_so_the_next_message_survives(syslog_events):
    """A lying octet count, or an over-long line, then silence: the next message is whole."""
    got: "queue.Queue[SyslogMessage]" = queue.Queue()
    with SyslogReceiver("127.0.0.1", 0, listen=True, on_message=got.put, console=False,
                        max_frame=256, partial_timeout=0.3) as rx:
        assert rx.partial_timeout == 0.3
        with socket.create_connection(("127.0.0.1", rx.port), timeout=10) as sender:
            # octet count far beyond max_frame, with more than max_frame bytes sent: the first 256
            # are delivered cut, the rest of the claimed 100000 would be skipped...
            sender.sendall(b"100000 <13>" + b"z" * 400)
            m = got.get(timeout=10)
            assert m.truncated and len(m.raw) == 256
            # ... but the sender went quiet, so the skip ends there
            syslog_events.wait_for("back in sync")
            sender.sendall(b"<13>after the lying count\n")
            m = got.get(timeout=10)
            assert (m.msg, m.truncated) == ("after the lying count", False)

            # an over-long line: cut, the rest of the line discarded until LF... or silence
            sender.sendall(b"<13>" + b"y" * 1000)
            m = got.get(timeout=10)
            assert m.truncated and len(m.raw) == 256
            syslog_events.wait_for("back in sync")
            sender.sendall(b"<13>after the long line\n")
            m = got.get(timeout=10)
            assert (m.msg, m.truncated) == ("after the long line", False)

            # a lying count with only a few bytes behind it: delivered cut when the sender idles
            sender.sendall(b"999999 <13>short")
            m = got.get(timeout=10)
            assert (m.msg, m.truncated) == ("short", True)
            sender.sendall(b"<13>after the short one\n")
            m = got.get(timeout=10)
            assert (m.msg, m.truncated) == ("after the short one", False)
    assert rx.connections == 1


def test_decoder_skip_state_is_visible_and_idle_ends_it():
    d = FrameDecoder(64)
    out = d.feed(b"9999999999 " + b"a" * 100)  # claims ~10 GB: never allocated
    assert len(out) == 1 and len(out[0].data) == 64 and out[0].truncated
    assert not d.pending and d.in_frame  # nothing buffered, but still skipping the claimed rest
    for _ in range(50):
        assert d.feed(b"b" * 10000) == [] and len(d._buf) == 0
    assert d.idle(0.5) == [] and not d.in_frame
    assert [f.data for f in d.feed(b"<13>next\n")] == [b"<13>next"]
    d.feed(b"x" * 100)  # over-long line: cut, then discarding
    assert d.in_frame and not d.pending
    d.idle(0.5)
    assert [f.data for f in d.feed(b"<13>next\n")] == [b"<13>next"]


class _AcceptAndClose:
    """A real TCP listener on 127.0.0.1 that accepts and closes at once, noting each time.

    ``greet`` (optional) lists what to send on each connection before closing (b"": nothing).
    """

    def __init__(self, greet: "list[bytes]" = ()) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.server.settimeout(0.05)
        self.port = self.server.getsockname()[1]
        self.greet = list(greet)
        self.times: "list[float]" = []
        self.cond = threading.Condition()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="test-accept-and-close", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.server.accept()
            except socket.timeout:
                continue
            with conn:
                with self.cond:
                    n = len(self.times)
                    self.times.append(time.monotonic())
                    self.cond.notify_all()
                if n < len(self.greet) and self.greet[n]:
                    conn.sendall(self.greet[n])

    def wait_for_connections(self, n: int, timeout: float = 20.0) -> "list[float]":
        with self.cond:
            assert self.cond.wait_for(lambda: len(self.times) >= n, timeout), \
                f"only {len(self.times)} connection(s) within {timeout} s"
            return list(self.times)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self.server.close()


@pytest.mark.timeout(60)
def test_port_that_accepts_and_closes_gets_exponential_backoff(syslog_events):
    peer = _AcceptAndClose()
    rx = SyslogReceiver("127.0.0.1", peer.port, console=False, backoff_initial=0.1, backoff_max=0.8)
    try:
        rx.start()
        times = peer.wait_for_connections(5)
    finally:
        rx.stop()
        peer.close()
    gaps = [b - a for a, b in zip(times, times[1:])]
    # waits of 0.1, 0.2, 0.4, 0.8 s between the first five connections (lower bounds only: a
    # loaded machine makes them longer, never shorter); without back-off they come in microseconds
    for gap, wait in zip(gaps, (0.1, 0.2, 0.4, 0.8)):
        assert gap >= wait * 0.9, gaps
    assert times[4] - times[0] >= 1.5 * 0.9
    syslog_events.wait_for("closed at once", timeout=1)


@pytest.mark.timeout(60)
def test_backoff_resets_after_a_connection_that_delivered(syslog_events):
    big = b"<13>" + b"q" * 500
    # three empty connections, one that delivers (a lying octet count, cut), then empty ones
    peer = _AcceptAndClose([b"", b"", b"", b"100000 " + big])
    got: "queue.Queue[SyslogMessage]" = queue.Queue()
    rx = SyslogReceiver("127.0.0.1", peer.port, console=False, on_message=got.put, max_frame=256,
                        backoff_initial=0.05, backoff_max=10.0)
    try:
        rx.start()
        delays = []
        for _ in range(5):
            record = syslog_events.wait_for("reconnecting in")
            delays.append(float(record.getMessage().split("reconnecting in ")[1].split(" s")[0]))
        m = got.get(timeout=10)
        assert m.truncated and len(m.raw) == 256  # cut; the next connection starts a new decoder
    finally:
        rx.stop()
        peer.close()
    # 0.05, 0.1, 0.2 doubling after empty connections; the 4th delivered: back to 0.05, then 0.1
    assert delays == [0.05, 0.1, 0.2, 0.05, 0.1]
    assert rx.messages_received == 1
