"""pcapng capture: block layout, usbmon records, tshark decoding, FIFOs, thread safety."""

from __future__ import annotations

import io
import logging
import os
import select
import struct
import subprocess
import threading
import time

import pytest

import tshark_util as ts
from tshark_util import complete, fake_urb, read_blocks
from usbip_backend.pcap import (
    EVENT_COMPLETE, EVENT_SUBMIT, LINKTYPE_USB_LINUX_MMAPPED, LINKTYPE_WIRESHARK_UPPER_PDU,
    PcapWriter, exported_pdu, usbmon_record, urb_id,
)
from usbip_backend.protocol import IsoPacket, TransferType, pack_setup

#: 18-byte device descriptor: bcdUSB 2.00, bMaxPacketSize0 64, VID 0x1234, PID 0x5678.
DEVICE_DESCRIPTOR = bytes([
    18, 1,        # bLength, bDescriptorType DEVICE
    0x00, 0x02,   # bcdUSB 2.00
    0xFF, 0, 0,   # class, subclass, protocol
    64,           # bMaxPacketSize0
    0x34, 0x12,   # idVendor 0x1234
    0x78, 0x56,   # idProduct 0x5678
    0x00, 0x01,   # bcdDevice 1.00
    1, 2, 3,      # iManufacturer, iProduct, iSerialNumber
    1,            # bNumConfigurations
])

USBMON = struct.Struct("<QBBBBHBBqiiII8siiII")
RFC5424_SD = (b'<165>1 2003-10-11T22:14:15.003Z mymachine.example.com evntslog - ID47 '
              b'[exampleSDID@32473 iut="3" eventSource="Application" eventID="1011"] '
              b'\xef\xbb\xbfAn application event log entry...')


def _get_descriptor(w: PcapWriter, seqnum: int = 1) -> None:
    urb = fake_urb(seqnum=seqnum, transfer_type=TransferType.CONTROL, endpoint=0x80, direction=1,
                   setup=pack_setup(0x80, 6, 0x0100, 0, 18), length=18)
    w.urb_submitted(urb)
    w.urb_completed(complete(urb, data=DEVICE_DESCRIPTOR))


def _interrupt_in(w: PcapWriter, seqnum: int = 2) -> None:
    urb = fake_urb(seqnum=seqnum, transfer_type=TransferType.INTERRUPT, endpoint=0x81, direction=1,
                   length=8, interval=8)
    w.urb_submitted(urb)
    w.urb_completed(complete(urb, data=b"\x01\x02\x03\x04"))


def _bulk_out_stall(w: PcapWriter, seqnum: int = 3) -> None:
    urb = fake_urb(seqnum=seqnum, transfer_type=TransferType.BULK, endpoint=0x02, direction=0,
                   length=5, out_data=memoryview(b"hello"))
    w.urb_submitted(urb)
    w.urb_completed(complete(urb, status=-32))


def _bulk_in_unlinked(w: PcapWriter, seqnum: int = 4) -> None:
    urb = fake_urb(seqnum=seqnum, transfer_type=TransferType.BULK, endpoint=0x81, direction=1, length=64)
    w.urb_submitted(urb)
    w.urb_unlink_sent(urb, seqnum + 100)
    w.urb_unlink_returned(urb, seqnum + 100, -104)
    w.urb_completed(complete(urb, status=-104))


def _iso_in(w: PcapWriter, seqnum: int = 5) -> None:
    urb = fake_urb(seqnum=seqnum, transfer_type=TransferType.ISOCHRONOUS, endpoint=0x83, direction=1,
                   length=30, interval=1, transfer_flags=0x0002,
                   iso_packets=[IsoPacket(0, 10), IsoPacket(10, 10), IsoPacket(20, 10)])
    w.urb_submitted(urb)
    buf = bytearray(30)  # the engine spreads ISO IN data to each packet's offset
    buf[0:10] = b"A" * 10
    buf[20:25] = b"B" * 5
    w.urb_completed(complete(urb, data=bytes(buf), actual_length=15, iso_results=[
        IsoPacket(0, 10, 10, 0), IsoPacket(10, 10, 0, -18), IsoPacket(20, 10, 5, 0)]))


def _every_kind(w: PcapWriter) -> None:
    _get_descriptor(w)
    _interrupt_in(w)
    _bulk_out_stall(w)
    _bulk_in_unlinked(w)
    _iso_in(w)
    w.write_syslog(RFC5424_SD, src=("192.0.2.1", 1514))


# --- pure layout ------------------------------------------------------------------------------
def test_header_blocks_name_application_and_interfaces():
    buf = io.BytesIO()
    with PcapWriter(buf, application="unit-test 1.2") as w:
        assert w.wait_open(5)
    blocks = read_blocks(buf.getvalue())
    assert [b[0] for b in blocks] == [0x0A0D0D0A, 1, 1]
    magic, major, minor, section_len = struct.unpack_from("<IHHq", blocks[0][1])
    assert (magic, major, minor, section_len) == (0x1A2B3C4D, 1, 0, -1)
    assert b"unit-test 1.2" in blocks[0][1]
    linktypes = [struct.unpack_from("<HHI", b[1])[0] for b in blocks[1:]]
    assert linktypes == [LINKTYPE_USB_LINUX_MMAPPED, LINKTYPE_WIRESHARK_UPPER_PDU]
    assert b"usbip0" in blocks[1][1] and b"syslog0" in blocks[2][1]
    # if_tsresol (code 9, length 1) = 6: microseconds
    assert struct.pack("<HHB", 9, 1, 6) in blocks[1][1]
    assert not buf.closed, "a file object passed in belongs to the caller"


def test_usbmon_control_in_submit_and_complete_fields():
    urb = fake_urb(seqnum=7, busnum=3, devnum=5, setup=pack_setup(0x80, 6, 0x100, 0, 18), length=18)
    urb.submit_time = 1700000000.123456
    s = USBMON.unpack_from(usbmon_record(urb, EVENT_SUBMIT, urb.submit_time))
    (uid, ev, tt, ep, dev, bus, sflag, dflag, sec, usec, status, ulen, dlen, setup, interval, sframe,
     flags, ndesc) = s
    assert uid == ((3 << 16 | 5) << 32) | 7 == urb_id(urb)
    assert (chr(ev), tt, ep, dev, bus) == ("S", 2, 0x80, 5, 3)
    assert (sflag, chr(dflag)) == (0, "<")  # setup present, IN data not present in a Submit
    assert (sec, usec) == (1700000000, 123456)
    assert (status, ulen, dlen) == (-115, 18, 0)
    assert setup == bytes([0x80, 6, 0, 1, 0, 0, 18, 0])
    assert flags & 0x200  # URB_DIR_IN, as Linux sets it
    complete(urb, data=DEVICE_DESCRIPTOR, when=1700000000.5)
    rec = usbmon_record(urb, EVENT_COMPLETE, urb.complete_time)
    c = USBMON.unpack_from(rec)
    assert c[0] == uid and chr(c[1]) == "C"
    assert (chr(c[6]), c[7], c[10], c[11], c[12]) == ("-", 0, 0, 18, 18)
    assert rec[64:] == DEVICE_DESCRIPTOR


def test_usbmon_bulk_out_lengths_both_directions():
    urb = fake_urb(seqnum=9, transfer_type=TransferType.BULK, endpoint=0x02, direction=0, length=5,
                   out_data=memoryview(b"hello"))
    s_rec = usbmon_record(urb, EVENT_SUBMIT, 1.0)
    s = USBMON.unpack_from(s_rec)
    assert (s[2], s[3], chr(s[6]), s[7], s[11], s[12]) == (3, 0x02, "-", 0, 5, 5)
    assert s_rec[64:] == b"hello"
    complete(urb)
    c_rec = usbmon_record(urb, EVENT_COMPLETE, 2.0)
    c = USBMON.unpack_from(c_rec)
    assert (chr(c[7]), c[11], c[12], len(c_rec)) == (">", 5, 0, 64)  # urb_len = bytes sent, no data


def test_exported_pdu_tlvs():
    pdu = exported_pdu(b"<13>hi", src=("10.0.0.1", 1514))
    assert pdu[:10] == struct.pack(">HH", 12, 6) + b"syslog"
    assert pdu.endswith(struct.pack(">HH", 0, 0) + b"<13>hi")
    assert struct.pack(">HH", 20, 4) + bytes([10, 0, 0, 1]) in pdu


def test_hooks_after_close_are_ignored(tmp_path):
    w = PcapWriter(str(tmp_path / "x.pcapng"))
    w.close()
    _get_descriptor(w)  # must not raise or write
    w.write_syslog(b"<13>late")
    w.close()  # idempotent
    assert len(read_blocks((tmp_path / "x.pcapng").read_bytes())) == 3
    assert w.records_written == 0


def test_write_urb_returns_the_urb_id_and_flush_waits_for_the_writer(tmp_path):
    path = tmp_path / "ids.pcapng"
    w = PcapWriter(str(path))
    try:
        urb = fake_urb(seqnum=9, busnum=1, devnum=4, transfer_type=TransferType.BULK, endpoint=0x81, length=8)
        assert w.write_urb(urb, EVENT_SUBMIT, 1.0) == urb_id(urb) == ((1 << 16 | 4) << 32) | 9
        assert w.flush(10)  # the record is in the file now, before close()
        assert len(read_blocks(path.read_bytes())) == 4
        with pytest.raises(TypeError):
            w.write_syslog(b"<13>x", 1.0, ts=2.0)  # timestamp and its 0.0.1 name ts: one only
        with pytest.raises(TypeError):
            w.write_urb(urb, EVENT_SUBMIT, 1.0, event_type=EVENT_SUBMIT)  # the two forms do not mix
    finally:
        w.close()
    assert not w.flush(1)  # nothing can be written after close()


# --- tshark -----------------------------------------------------------------------------------
@pytest.fixture
def every_kind_capture(tmp_path):
    path = str(tmp_path / "every.pcapng")
    with PcapWriter(path) as w:
        _every_kind(w)
    assert w.records_written == 11 and w.records_dropped == 0
    return path


def test_tshark_get_descriptor_pair(every_kind_capture):
    ts.require_tshark()
    pk = ts.packets(every_kind_capture, "usb.transfer_type == 0x02")
    assert len(pk) == 2
    req, resp = pk
    assert ts.find(req, "usb.urb_type") == "'S'"
    assert ts.find(req, "usb.setup.bRequest") == "6"  # GET_DESCRIPTOR
    assert ts.find(req, "usb.setup.wLength") == "18"
    assert ts.find(resp, "usb.request_in") == req["frame"]["frame.number"]
    assert ts.find(resp, "usb.bDescriptorType") == "0x01"
    assert ts.find(resp, "usb.idVendor") == "0x1234"
    assert ts.find(resp, "usb.idProduct") == "0x5678"
    assert ts.find(resp, "usb.bMaxPacketSize0") == "64"
    info = ts.fields(every_kind_capture, ["_ws.col.Info"], "usb.transfer_type == 0x02")
    assert info == [["GET DESCRIPTOR Request DEVICE"], ["GET DESCRIPTOR Response DEVICE"]]
    text = ts.verbose(every_kind_capture, "usb.transfer_type == 0x02")
    assert "DEVICE DESCRIPTOR" in text and "(0x1234)" in text and "bDescriptorType: 0x01 (DEVICE)" in text


def test_tshark_interrupt_stall_unlink_iso(every_kind_capture):
    ts.require_tshark()
    rows = ts.fields(every_kind_capture, ["usb.urb_type", "usb.transfer_type", "usb.endpoint_address",
                                          "usb.urb_status", "usb.urb_len", "usb.data_len", "usb.interval"], "usb")
    assert len(rows) == 10
    assert rows[2:4] == [["'S'", "0x01", "0x81", "-115", "8", "0", "8"], ["'C'", "0x01", "0x81", "0", "4", "4", "8"]]
    assert rows[4:6] == [["'S'", "0x03", "0x02", "-115", "5", "5", "0"], ["'C'", "0x03", "0x02", "-32", "0", "0", "0"]]
    assert rows[7][:4] == ["'C'", "0x03", "0x81", "-104"]
    assert ts.count(every_kind_capture, "usb.urb_status == -32") == 1
    unlinked = ts.packets(every_kind_capture, "usb.urb_status == -104")
    comment = ts.find(unlinked[0], "frame.comment") or ts.find(unlinked[0], "pkt_comment")
    assert "USBIP_CMD_UNLINK" in str(comment) and "ECONNRESET" in str(comment)
    iso = ts.packets(every_kind_capture, "usb.transfer_type == 0x00 && usb.urb_type == 'C'")
    assert len(iso) == 1
    assert ts.find(iso[0], "usb.iso.numdesc") in ("3", ["3", "3"])
    iso_rows = ts.fields(every_kind_capture, ["usb.iso.iso_status", "usb.iso.iso_off", "usb.iso.iso_len",
                                              "usb.iso.data"], "usb.transfer_type == 0x00")
    assert iso_rows == [["-115,-115,-115", "0,10,20", "10,10,10", ""],
                        ["0,-18,0", "0,10,20", "10,0,5", "41414141414141414141,4242424242"]]


def test_tshark_syslog_record(every_kind_capture):
    ts.require_tshark()
    pk = ts.packets(every_kind_capture, "syslog")
    assert len(pk) == 1
    layers = pk[0]
    assert layers["frame"]["frame.interface_id"] == "1"
    assert ts.find(layers, "syslog.facility") == "20"  # LOCAL4
    assert ts.find(layers, "syslog.level") == "5"  # NOTICE
    assert ts.find(layers, "syslog.version") == "1"
    assert ts.find(layers, "syslog.hostname") == "mymachine.example.com"
    assert ts.find(layers, "syslog.appname") == "evntslog"
    assert "An application event log entry" in str(ts.find(layers, "syslog.msg"))
    assert ts.find(layers, "exported_pdu.ipv4_src") == "192.0.2.1"


def test_tshark_clean_and_paired(every_kind_capture):
    ts.require_tshark()
    ts.assert_clean(every_kind_capture)
    ts.assert_all_urbs_paired(every_kind_capture)


def test_tshark_error_event_and_timestamps(tmp_path):
    ts.require_tshark()
    path = str(tmp_path / "e.pcapng")
    urb = fake_urb(seqnum=1, transfer_type=TransferType.BULK, endpoint=0x81, length=64)
    urb.submit_time = 1700000000.000001
    urb.submit_failed = True  # the engine may flag a URB that never reached the wire
    with PcapWriter(path) as w:
        w.urb_submitted(urb)
        w.urb_completed(complete(urb, status=-108, when=1700000000.250002))
    rows = ts.fields(path, ["frame.time_epoch", "usb.urb_type", "usb.urb_status", "usb.request_in"])
    assert rows == [["1700000000.000001000", "'S'", "-115", ""], ["1700000000.250002000", "'E'", "-108", "1"]]
    ts.assert_clean(path)


@pytest.mark.timeout(60)
def test_concurrent_writers_lose_nothing(tmp_path):
    """Engine reader thread, user threads and the syslog thread all write at once."""
    path = str(tmp_path / "many.pcapng")
    n_threads, per_thread = 4, 50
    start = threading.Barrier(n_threads + 1)
    with PcapWriter(path) as w:
        def user(t: int) -> None:
            start.wait(10)
            for i in range(per_thread):
                urb = fake_urb(seqnum=t * 1000 + i, transfer_type=TransferType.BULK, endpoint=0x81,
                               length=16)
                w.urb_submitted(urb)
                w.urb_completed(complete(urb, data=bytes(range(16))))

        def logger() -> None:
            start.wait(10)
            for i in range(per_thread):
                w.write_syslog(b"<14>1 - host app - - - line %d" % i)

        threads = [threading.Thread(target=user, args=(t,)) for t in range(n_threads - 1)]
        threads.append(threading.Thread(target=logger))
        for t in threads:
            t.start()
        start.wait(10)
        for t in threads:
            t.join(30)
    blocks = read_blocks(open(path, "rb").read())
    epbs = [b for b in blocks if b[0] == 6]
    assert len(epbs) == (n_threads - 1) * per_thread * 2 + per_thread
    assert w.records_dropped == 0 and w.failed is None
    if ts.tshark_path():
        ts.assert_clean(path)
        ts.assert_all_urbs_paired(path)


# --- FIFOs ------------------------------------------------------------------------------------
def _read_blocks_from_fd(fd: int, want: int, timeout: float = 10.0) -> list:
    data = b""
    deadline = time.monotonic() + timeout
    while True:
        blocks = read_blocks(data)
        if len(blocks) >= want:
            return blocks
        left = deadline - time.monotonic()
        assert left > 0, f"only {len(blocks)} of {want} blocks arrived through the FIFO"
        readable, _, _ = select.select([fd], [], [], left)
        if readable:
            chunk = os.read(fd, 65536)
            assert chunk, "writer closed the FIFO early"
            data += chunk


@pytest.mark.timeout(30)
def test_fifo_reader_gets_packets_before_close(tmp_path):
    fifo = str(tmp_path / "usb.pcap")
    os.mkfifo(fifo)
    rfd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # the reader comes first, like wireshark -k -i
    try:
        w = PcapWriter(fifo)
        try:
            assert w.wait_open(10)
            _get_descriptor(w)
            blocks = _read_blocks_from_fd(rfd, 5)
            # Both records arrived while the writer is still open: flushed per block.
            assert w.failed is None and not w._closed
            events = [chr(USBMON.unpack_from(b[1], 20)[1]) for b in blocks if b[0] == 6]
            assert events == ["S", "C"]
        finally:
            w.close()
    finally:
        os.close(rfd)


@pytest.mark.timeout(30)
def test_fifo_live_tshark_sees_packets_while_writer_runs(tmp_path):
    """Same as `wireshark -k -i /tmp/usb.pcap`: tshark prints each URB before the writer closes."""
    tshark = ts.require_tshark()
    fifo = str(tmp_path / "usb.pcap")
    os.mkfifo(fifo)
    proc = subprocess.Popen([tshark, "-l", "-i", fifo, "-T", "fields", "-e", "usb.urb_type", "-e", "usb.idVendor"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        with PcapWriter(fifo) as w:  # opened by the writer thread once tshark has the FIFO open
            _get_descriptor(w)
            first = proc.stdout.readline().split("\t")
            second = proc.stdout.readline().rstrip("\n").split("\t")
            assert w.failed is None and not w._closed
        assert first[0] == "'S'"
        assert second == ["'C'", "0x1234"]
        assert proc.wait(15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        proc.stdout.close()


@pytest.mark.timeout(30)
def test_fifo_reader_goes_away_one_warning_traffic_continues(tmp_path, caplog):
    fifo = str(tmp_path / "usb.pcap")
    os.mkfifo(fifo)
    rfd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    caplog.set_level(logging.WARNING, logger="usbip_backend.pcap")
    w = PcapWriter(fifo)
    try:
        assert w.wait_open(10)
        _read_blocks_from_fd(rfd, 3)
        os.close(rfd)  # Wireshark quits
        rfd = -1
        t0 = time.monotonic()
        _get_descriptor(w, seqnum=1)  # the writer thread hits EPIPE writing this
        assert w.wait_stopped(10)
        assert w.failed and "went away" in w.failed
        for seq in range(2, 102):  # hooks keep returning at once; the engine is never stalled
            _get_descriptor(w, seqnum=seq)
        assert time.monotonic() - t0 < 5.0
    finally:
        w.close(timeout=5)
        if rfd >= 0:
            os.close(rfd)
    warnings = [r for r in caplog.records if r.name == "usbip_backend.pcap" and r.levelno >= logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert "broken pipe" in warnings[0].getMessage() and "USB traffic continues" in warnings[0].getMessage()
    assert w.records_dropped >= 100


@pytest.mark.timeout(30)
def test_fifo_without_reader_overflow_and_close_do_not_block(tmp_path, caplog):
    fifo = str(tmp_path / "usb.pcap")
    os.mkfifo(fifo)
    caplog.set_level(logging.WARNING, logger="usbip_backend.pcap")
    w = PcapWriter(fifo, queue_size=6)  # nobody ever opens it for reading
    t0 = time.monotonic()
    for seq in range(1, 10):
        _get_descriptor(w, seqnum=seq)
    assert time.monotonic() - t0 < 1.0
    assert w.failed and "overflowed" in w.failed
    w.close(timeout=0.5)
    assert time.monotonic() - t0 < 5.0
    assert not w._thread.is_alive()
    warnings = [r for r in caplog.records if r.name == "usbip_backend.pcap" and r.levelno >= logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert w.records_written == 0 and w.records_dropped >= 6


@pytest.mark.timeout(60)
def test_fifo_slow_reader_loses_nothing_and_the_hooks_never_wait(tmp_path):
    """A reader that takes its time (a loaded Wireshark): the pipe fills, the writer thread
    waits for it (abortably), the hooks go on returning at once, and every block arrives."""
    fifo = str(tmp_path / "usb.pcap")
    os.mkfifo(fifo)
    rfd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    got = bytearray()
    w = PcapWriter(fifo, queue_size=100000)
    try:
        assert w.wait_open(10)
        for seq in range(1, 2001):  # some 600 KiB: ten times a Linux pipe's buffer
            _get_descriptor(w, seqnum=seq)
        written_before = w.records_written
        done = threading.Thread(target=w.close, kwargs={"timeout": 60})
        done.start()
        while True:  # read 4 KiB at a time, pausing between reads
            readable, _, _ = select.select([rfd], [], [], 10)
            assert readable, "the writer stopped writing"
            chunk = os.read(rfd, 4096)
            if not chunk:
                break
            got += chunk
            time.sleep(0.001)
        done.join(30)
    finally:
        os.close(rfd)
    assert not done.is_alive() and w.failed is None
    assert written_before < 4000  # the pipe was full: the writer was behind while the hooks ran
    blocks = read_blocks(bytes(got))
    assert sum(1 for b in blocks if b[0] == 6) == 4000  # every Submit and Complete arrived


def test_windows_pipe_paths_are_recognised():
    from usbip_backend.pcap import is_windows_pipe

    for path in ("\\\\.\\pipe\\usbip", "//./pipe/usbip", "\\\\.\\PIPE\\Wireshark-1"):
        assert is_windows_pipe(path), path
    for path in ("/tmp/usb.pcap", "C:\\pipe\\x", "\\\\server\\pipe\\x", "\\\\.\\pipe\\", "pipe\\x"):
        assert not is_windows_pipe(path), path


@pytest.mark.skipif(os.name == "nt", reason="the FIFO hint is for systems without named pipes")
def test_windows_pipe_elsewhere_is_a_clear_error_and_creates_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(OSError, match="Windows named pipe.*mkfifo /tmp/usb && wireshark -k -i /tmp/usb"):
        PcapWriter("\\\\.\\pipe\\usbip")
    assert os.listdir(str(tmp_path)) == []


@pytest.mark.skipif(os.name != "nt", reason="Windows named pipes exist only on Windows")
@pytest.mark.timeout(30)
def test_windows_pipe_reader_gets_the_capture():  # pragma: no cover - runs on Windows only
    path = "\\\\.\\pipe\\usbip-test-%d" % os.getpid()
    w = PcapWriter(path)
    try:
        deadline = time.monotonic() + 10
        while True:  # the writer thread creates the pipe; connect as Wireshark does
            try:
                reader = open(path, "rb", buffering=0)
                break
            except OSError:
                assert time.monotonic() < deadline, "the pipe was never created"
                time.sleep(0.01)
        with reader:
            assert w.wait_open(10)
            _get_descriptor(w)
            w.close()
            data = reader.read()
    finally:
        w.close()
    assert [b[0] for b in read_blocks(data)][:1] == [0x0A0D0D0A]


# --- end to end: a real session with the virtual server ---------------------------------------
@pytest.mark.timeout(60)
def test_end_to_end_capture_of_a_sim_session(sim_server, tmp_path):
    """import_device(hook=writer) records every URB of a real session; tshark decodes it cleanly."""
    from usbip_backend.client import import_device
    from usbip_backend.errors import UrbError

    host, port = sim_server
    path = str(tmp_path / "session.pcapng")
    with PcapWriter(path) as w:
        with import_device(host, port, "1-1", hook=w) as conn:  # loopback device
            assert conn.control_transfer(0x80, 6, 0x0100, 0, 18)[:2] == b"\x12\x01"
            conn.control_transfer(0x80, 6, 0x0200, 0, 255)  # configuration descriptor
            conn.control_transfer(0x00, 9, 1, 0, b"")  # SET_CONFIGURATION 1
            conn.transfer(TransferType.BULK, 0x01, data=b"hello usbip", timeout=10)
            back = conn.transfer(TransferType.BULK, 0x81, length=64, timeout=10)
            assert bytes(back.in_data) == b"hello usbip"
            conn.transfer(TransferType.INTERRUPT, 0x03, data=b"ping", interval=1, timeout=10)
            echo = conn.transfer(TransferType.INTERRUPT, 0x83, length=64, interval=1, timeout=10)
            assert bytes(echo.in_data) == b"ping"
            with pytest.raises(UrbError) as stall:
                conn.control_transfer(0xC0, 0x5F, 0, 0, 8)  # the vendor request that stalls
            assert stall.value.status == -32
            pending = conn.submit(TransferType.BULK, 0x81, length=64)  # nothing to loop back
            pending.cancel()
            with pytest.raises(Exception):
                pending.wait(10)
            assert pending.status == -104
        with import_device(host, port, "1-4", hook=w) as iso:
            iso.control_transfer(0x00, 9, 1, 0, b"")
            iso.control_transfer(0x01, 11, 1, 0, b"")  # SET_INTERFACE alt 1
            urb = iso.transfer(TransferType.ISOCHRONOUS, 0x81, length=3 * 16, interval=1,
                               iso_packet_lengths=[16, 16, 16], timeout=10)
            assert urb.status == 0
    assert w.failed is None and w.records_dropped == 0
    ts.require_tshark()
    ts.assert_clean(path)
    ts.assert_all_urbs_paired(path)
    info = [r[0] for r in ts.fields(path, ["_ws.col.Info"])]
    assert info[:2] == ["GET DESCRIPTOR Request DEVICE", "GET DESCRIPTOR Response DEVICE"]
    assert "GET DESCRIPTOR Response CONFIGURATION" in info
    assert ts.fields(path, ["usb.idVendor"], "usb.idVendor")[0] == ["0x1209"]
    assert ts.count(path, "usb.transfer_type == 0x01 && usb.endpoint_address == 0x83") == 2
    assert ts.count(path, "usb.transfer_type == 0x03 && usb.capdata == 68:65:6c:6c:6f:20:75:73:62:69:70") == 2
    assert ts.count(path, "usb.urb_status == -32") == 1
    unlinked = ts.packets(path, "usb.urb_status == -104")
    assert len(unlinked) == 1 and "USBIP_CMD_UNLINK" in str(ts.find(unlinked[0], "frame.comment"))
    iso_rows = ts.fields(path, ["usb.iso.numdesc", "usb.iso.iso_len"], "usb.transfer_type == 0x00 && usb.urb_type == 'C'")
    assert iso_rows[0][1] == "16,16,16"


def test_bad_path_raises_at_once(tmp_path):
    with pytest.raises(OSError):
        PcapWriter(str(tmp_path / "no-such-dir" / "x.pcapng"))
