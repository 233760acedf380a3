"""The virtual USB/IP server, checked through raw sockets: what exactly does it send?"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
from typing import Dict, List, Optional, Tuple

import pytest

from usbip_backend import protocol as P
from usbip_backend.sim import (
    Bulk, Device, HidKeyboard, Interface, Iso, IsoDevice, LoopbackDevice, SimServer, stock_devices,
)
from usbip_backend.sim.devices import KEYBOARD_REPORT_DESCRIPTOR, pattern

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.join(os.path.dirname(HERE), "src")
TIMEOUT = 5.0


def recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise EOFError(f"closed after {len(buf)} of {n} bytes")
        buf += chunk
    return bytes(buf)


def assert_closed(sock: socket.socket) -> None:
    """The server closed the connection without sending anything (more)."""
    sock.settimeout(TIMEOUT)
    try:
        data = sock.recv(4096)
    except ConnectionResetError:
        data = b""
    assert data == b""


def op_exchange(port: int, request: bytes) -> bytes:
    """One OP request; everything the server sends until it closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as s:
        s.sendall(request)
        out = bytearray()
        while True:
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:  # closed with our unread bytes pending: a reset
                chunk = b""
            if not chunk:
                return bytes(out)
            out += chunk


def devlist(port: int) -> List[P.UsbDevice]:
    return P.unpack_rep_devlist(op_exchange(port, P.pack_req_devlist()))


class Raw:
    """A minimal raw USB/IP client: imports a device, sends CMD_*, decodes RET_* by seqnum."""

    def __init__(self, port: int, busid: str) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        self.sock.sendall(P.pack_req_import(busid))
        head = P.OpHeader.unpack(recv_exact(self.sock, 8), P.OP_REP_IMPORT)
        assert head.status == P.Status.ST_OK, P.status_text(head.status)
        self.record = P.UsbDevice.unpack(recv_exact(self.sock, P.USB_DEVICE_SIZE))
        self.devid = self.record.devid
        self.seq = 0
        self.kinds: Dict[int, Tuple[int, int]] = {}  # seqnum -> (direction, number_of_packets)

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> "Raw":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def submit(self, direction: int, ep: int, length: int = 0, data: bytes = b"", setup: bytes = bytes(8),
               interval: int = 0, iso: Optional[List[int]] = None, devid: Optional[int] = None,
               flags: int = 0) -> int:
        self.seq += 1
        npk = len(iso) if iso is not None else 0
        descs = b""
        if iso is not None:
            offset = 0
            for n in iso:
                descs += P.IsoPacket(offset, n).pack()
                offset += n
        self.kinds[self.seq] = (direction, npk)
        hdr = P.CmdSubmit(self.seq, self.devid if devid is None else devid, direction, ep, flags, length,
                          0, npk, interval, setup).pack()
        self.sock.sendall(hdr + data + descs)
        return self.seq

    def control(self, bmRequestType: int, bRequest: int, wValue: int, wIndex: int, length_or_data) -> int:
        if isinstance(length_or_data, int):
            setup = P.pack_setup(bmRequestType, bRequest, wValue, wIndex, length_or_data)
            return self.submit(1, 0, length_or_data, setup=setup)
        data = bytes(length_or_data)
        setup = P.pack_setup(bmRequestType, bRequest, wValue, wIndex, len(data))
        return self.submit(0, 0, len(data), data, setup=setup)

    def unlink(self, target: int) -> int:
        self.seq += 1
        self.sock.sendall(P.CmdUnlink(self.seq, self.devid, 0, 0, target).pack())
        return self.seq

    def reply(self):
        """(header, data, iso descriptors) of the next RET_*."""
        hdr = P.unpack_urb_header(recv_exact(self.sock, 48))
        if isinstance(hdr, P.RetUnlink):
            return hdr, b"", []
        assert isinstance(hdr, P.RetSubmit)
        direction, npk = self.kinds.pop(hdr.seqnum)
        data = recv_exact(self.sock, hdr.actual_length) if direction == 1 and hdr.actual_length else b""
        descs = P.unpack_iso_packets(recv_exact(self.sock, npk * 16), npk) if hdr.number_of_packets else []
        return hdr, data, descs

    def call(self, *args, **kw):
        seq = self.submit(*args, **kw)
        hdr, data, descs = self.reply()
        assert hdr.seqnum == seq
        return hdr, data, descs

    def ctrl(self, *args):
        seq = self.control(*args)
        hdr, data, _ = self.reply()
        assert hdr.seqnum == seq
        return hdr, data

    def configure(self, value: int = 1) -> None:
        hdr, _ = self.ctrl(0x00, 9, value, 0, b"")
        assert hdr.status == 0


@pytest.fixture
def server():
    with SimServer() as srv:
        yield srv


# --- OP_* -----------------------------------------------------------------------------------------
def test_devlist_lists_stock_devices_unconfigured(server):
    raw = op_exchange(server.port, P.pack_req_devlist())
    devices = P.unpack_rep_devlist(raw)
    # newest first, as usbipd lists them (tests/kernel saw 5-1 ... 1-1)
    assert [d.busid for d in devices] == ["1-4", "1-3", "1-2", "1-1"]
    assert [(d.idVendor, d.idProduct) for d in devices] == [(0x1209, p) for p in (4, 3, 2, 1)]
    devices = devices[::-1]
    first = devices[0]
    assert (first.busnum, first.devnum, first.speed) == (1, 2, P.Speed.HIGH)
    assert first.bConfigurationValue == 0 and first.bNumInterfaces == 0 and first.interfaces == ()
    assert devices[1].bDeviceClass == 0xEF  # the ACM device uses an IAD: misc/common/IAD
    # golden: header (version 0x0111, OP_REP_DEVLIST, ST_OK), count 4, 4 x 312-byte records
    assert raw[:12] == bytes.fromhex("0111 0005 00000000 00000004")
    assert len(raw) == 12 + 4 * 312


def test_import_ok_busy_nodev_and_reimport_after_disconnect(server):
    with Raw(server.port, "1-1") as first:
        assert first.record.busid == "1-1" and first.devid == (1 << 16) | 2
        # imported devices vanish from the list
        assert [d.busid for d in devlist(server.port)] == ["1-4", "1-3", "1-2"]
        busy = op_exchange(server.port, P.pack_req_import("1-1"))
        assert busy == P.OpHeader(P.OP_REP_IMPORT, P.Status.ST_DEV_BUSY).pack()  # header alone, close
    nodev = op_exchange(server.port, P.pack_req_import("9-9"))
    assert nodev == bytes.fromhex("0111 0003 00000004")
    # after the client left, the server's connection thread frees (and resets) the device
    assert server.wait_free("1-1", TIMEOUT)
    with Raw(server.port, "1-1") as again:
        hdr, data = again.ctrl(0x80, 6, 0x0100, 0, 18)
        assert hdr.status == 0 and len(data) == 18


def test_garbage_wrong_version_unknown_op_close_without_reply(server):
    for request in (b"GET / HTTP/1.0\r\n\r\n", bytes.fromhex("0106 8005 00000000"),
                    bytes.fromhex("0111 1234 00000000")):
        assert op_exchange(server.port, request) == b""


def test_set_configuration_then_devlist_shows_interfaces(server):
    with Raw(server.port, "1-2") as c:
        c.configure(1)
        hdr, data = c.ctrl(0x80, 8, 0, 0, 1)  # GET_CONFIGURATION
        assert data == b"\x01"
    assert server.wait_free("1-2")  # the server releases it a moment after the client closes
    rec = [d for d in devlist(server.port) if d.busid == "1-2"][0]
    assert rec.bConfigurationValue == 1 and rec.bNumInterfaces == 2
    assert rec.interfaces == (P.UsbInterface(2, 2, 1), P.UsbInterface(0x0A, 0, 0))


# --- descriptors ------------------------------------------------------------------------------------
def test_get_descriptor_device_config_string(server):
    with Raw(server.port, "1-1") as c:
        hdr, dev = c.ctrl(0x80, 6, 0x0100, 0, 64)
        assert (hdr.status, hdr.actual_length) == (0, 18)
        assert (hdr.devid, hdr.direction, hdr.ep) == (0, 0, 0)  # kernel-style replies
        # bLength 18, DEVICE, bcdUSB 2.00, class 0/0/0, mps0 64, 1209:0001, bcdDevice 1.00,
        # strings 1/2/3, one configuration
        assert dev == bytes.fromhex("1201 0002 000000 40 0912 0100 0001 010203 01")
        hdr, head = c.ctrl(0x80, 6, 0x0200, 0, 9)
        total = int.from_bytes(head[2:4], "little")
        hdr, config = c.ctrl(0x80, 6, 0x0200, 0, total)
        assert len(config) == total and config[:9] == head
        assert config[4] == 1 and config[5] == 1  # one interface, bConfigurationValue 1
        eps = {config[i + 2]: config[i + 3:i + 7] for i in range(len(config) - 6)
               if config[i:i + 2] == b"\x07\x05"}
        # bmAttributes 2 = bulk (wMaxPacketSize 512), 3 = interrupt (64, bInterval 4)
        assert eps == {0x01: bytes.fromhex("02 0002 00"), 0x81: bytes.fromhex("02 0002 00"),
                       0x82: bytes.fromhex("02 0002 00"), 0x02: bytes.fromhex("02 0002 00"),
                       0x03: bytes.fromhex("03 4000 04"), 0x83: bytes.fromhex("03 4000 04")}
        hdr, langs = c.ctrl(0x80, 6, 0x0300, 0, 255)
        assert langs == bytes.fromhex("0403 0904")
        hdr, s = c.ctrl(0x80, 6, 0x0302, 0x0409, 255)
        assert s[1] == 3 and s[2:].decode("utf-16-le") == "USB/IP loopback/source/sink"
        _, s = c.ctrl(0x80, 6, 0x0301, 0x0409, 255)
        assert s[2:].decode("utf-16-le") == "usbip_backend"
        _, s = c.ctrl(0x80, 6, 0x0303, 0x0409, 4)  # truncated to wLength
        assert len(s) == 4 and s[0] > 4
        hdr, _ = c.ctrl(0x80, 6, 0x0363, 0x0409, 255)  # no such string
        assert hdr.status == -32


def test_acm_descriptors_and_line_coding(server):
    with Raw(server.port, "1-2") as c:
        _, head = c.ctrl(0x80, 6, 0x0200, 0, 9)
        _, config = c.ctrl(0x80, 6, 0x0200, 0, int.from_bytes(head[2:4], "little"))
        assert bytes.fromhex("080b 0002 020201") in config  # IAD: interfaces 0-1, CDC ACM
        assert bytes.fromhex("052400 1001") in config  # CDC header 1.10
        assert bytes.fromhex("052406 0001") in config  # union: control 0, data 1
        assert bytes.fromhex("0705 83 03 1000 04") in config  # notification: interrupt IN 16
        c.configure(1)
        _, got = c.ctrl(0xA1, 0x21, 0, 0, 7)
        assert got == bytes.fromhex("00c20100 00 00 08")  # default 115200 8N1
        assert c.ctrl(0x21, 0x20, 0, 0, bytes.fromhex("80250000 00 00 08"))[0].status == 0  # 9600
        _, got = c.ctrl(0xA1, 0x21, 0, 0, 7)
        assert got == bytes.fromhex("80250000 00 00 08")
        assert c.ctrl(0x21, 0x22, 3, 0, b"")[0].status == 0
        hdr, note, _ = c.call(1, 3, 16, interval=8)  # SERIAL_STATE after DTR
        assert note[:2] == b"\xa1\x20"
        hdr, _, _ = c.call(0, 1, 6, b"abcdef")
        assert hdr.actual_length == 6
        hdr, data, _ = c.call(1, 1, 512)
        assert data == b"abcdef"


# --- bulk, unlink, stall, babble ----------------------------------------------------------------------
def test_bulk_loopback_and_source(server):
    with Raw(server.port, "1-1") as c:
        c.configure(1)
        payload = bytes(range(256)) * 8  # 2048 bytes = 4 packets
        hdr, _, _ = c.call(0, 1, len(payload), payload)
        assert (hdr.status, hdr.actual_length) == (0, len(payload))
        hdr, data, _ = c.call(1, 1, 4096)
        assert hdr.status == 0 and data == payload
        hdr, data, _ = c.call(1, 2, 1000)  # source
        assert data == bytes(i % 63 for i in range(1000))


def test_pending_in_completes_when_data_arrives_out_of_order(server):
    with Raw(server.port, "1-1") as c:
        c.configure(1)
        pending = c.submit(1, 1, 512)  # nothing written yet: held
        source = c.submit(1, 2, 64)
        hdr, data, _ = c.reply()
        assert hdr.seqnum == source  # the source answers first: replies out of order
        write = c.submit(0, 1, 3, b"xyz")
        got = {}
        for _ in range(2):
            hdr, data, _ = c.reply()
            got[hdr.seqnum] = (hdr.status, data)
        assert got == {write: (0, b""), pending: (0, b"xyz")}


def test_unlink_pending_gives_econnreset_and_no_ret_submit(server):
    with Raw(server.port, "1-1") as c:
        c.configure(1)
        pending = c.submit(1, 1, 512)
        unlink = c.unlink(pending)
        hdr, _, _ = c.reply()
        assert isinstance(hdr, P.RetUnlink) and hdr.seqnum == unlink and hdr.status == -104
        # data written now must not complete the cancelled URB: the next reply is the OUT's,
        # then a fresh IN gets the data
        write = c.submit(0, 1, 2, b"hi")
        hdr, _, _ = c.reply()
        assert hdr.seqnum == write
        fresh = c.submit(1, 1, 512)
        hdr, data, _ = c.reply()
        assert (hdr.seqnum, data) == (fresh, b"hi")


def test_unlink_completed_or_unknown_gives_zero_after_ret_submit(server):
    with Raw(server.port, "1-1") as c:
        c.configure(1)
        done = c.submit(1, 2, 8)  # the source answers at once
        unlink = c.unlink(done)
        hdr, _, _ = c.reply()
        assert isinstance(hdr, P.RetSubmit) and hdr.seqnum == done
        hdr2, _, _ = c.reply()
        assert isinstance(hdr2, P.RetUnlink) and (hdr2.seqnum, hdr2.status) == (unlink, 0)
        unlink = c.unlink(12345)
        hdr, _, _ = c.reply()
        assert (hdr.seqnum, hdr.status) == (unlink, 0)


def test_in_to_nonexistent_endpoint_is_never_answered_until_unlinked(server):
    with Raw(server.port, "1-1") as c:
        lost = c.submit(1, 1, 64)  # unconfigured: no endpoint 0x81 yet, the stub stays silent
        probe = c.control(0x80, 8, 0, 0, 1)
        hdr, data, _ = c.reply()
        assert hdr.seqnum == probe and data == b"\x00"
        unlink = c.unlink(lost)
        hdr, _, _ = c.reply()
        # as the kernel stub: it never allocated the URB, so the unlink finds nothing (status 0)
        assert (hdr.seqnum, hdr.status) == (unlink, 0)
        probe = c.control(0x80, 8, 0, 0, 1)
        hdr, data, _ = c.reply()
        assert hdr.seqnum == probe and data == b"\x00"  # the next reply: no RET_SUBMIT for `lost`


def test_stall_by_bad_sink_pattern_then_clear_halt(server):
    with Raw(server.port, "1-1") as c:
        c.configure(1)
        good = pattern(512)
        assert c.call(0, 2, 512, good)[0].status == 0
        assert c.call(0, 2, 4, b"nope")[0].status == -32
        assert c.call(0, 2, 512, good)[0].status == -32  # stays halted
        _, status = c.ctrl(0x82, 0, 0, 0x02, 2)  # GET_STATUS(endpoint 0x02): halted
        assert status == b"\x01\x00"
        assert c.ctrl(0x02, 1, 0, 0x02, b"")[0].status == 0  # CLEAR_FEATURE(ENDPOINT_HALT)
        assert c.call(0, 2, 512, good)[0].status == 0
        assert c.ctrl(0xC0, 0x5F, 0, 0, 4)[0].status == -32  # vendor stall request
        hdr, _ = c.ctrl(0x40, 0x5B, 0, 0, b"control loop")
        assert hdr.status == 0
        assert c.ctrl(0xC0, 0x5C, 0, 0, 64)[1] == b"control loop"


def test_babble_fills_buffer_with_eoverflow(server):
    with Raw(server.port, "1-1") as c:
        c.configure(1)
        c.call(0, 1, 512, bytes(range(256)) * 2)  # one full 512-byte packet
        hdr, data, _ = c.call(1, 1, 100)
        assert (hdr.status, hdr.actual_length) == (-75, 100)
        assert data == bytes(range(100))


def test_port_reset_and_set_interface(server):
    with Raw(server.port, "1-4") as c:
        c.configure(1)
        assert c.ctrl(0x01, 11, 1, 0, b"")[0].status == 0  # SET_INTERFACE(0, alt 1)
        assert c.ctrl(0x81, 10, 0, 0, 1)[1] == b"\x01"
        assert c.ctrl(0x01, 11, 7, 0, b"")[0].status == -32  # no alt 7
        assert c.ctrl(0x23, 3, 4, 1, b"")[0].status == 0  # hub SET_PORT_FEATURE(PORT_RESET)
        assert c.ctrl(0x80, 8, 0, 0, 1)[1] == b"\x01"  # usb_reset_device keeps the configuration


# --- hostile input ------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", ["wrong_devid", "huge_length", "negative_length", "unknown_command",
                                  "interrupt_interval_0", "out_to_missing_endpoint",
                                  "iso_packets_to_bulk"])
def test_protocol_violations_drop_the_connection(server, case):
    with Raw(server.port, "1-1") as c:
        c.configure(1)
        if case == "wrong_devid":
            c.submit(1, 0, 18, setup=P.pack_setup(0x80, 6, 0x100, 0, 18), devid=0xDEAD)
        elif case == "huge_length":
            c.submit(0, 1, 0x7FFFFFFF)
        elif case == "negative_length":
            c.submit(1, 1, -5)
        elif case == "unknown_command":
            c.sock.sendall(b"\x00\x00\x00\x09" + bytes(44))
        elif case == "iso_packets_to_bulk":
            c.submit(1, 2, 64, iso=[32, 32])
        elif case == "interrupt_interval_0":
            c.submit(1, 3, 64, interval=0)
        else:
            c.submit(0, 9, 4, b"data")
        assert_closed(c.sock)
    # the device is released and reset: importable again
    with Raw(server.port, "1-1") as again:
        assert again.ctrl(0x80, 6, 0x0100, 0, 18)[0].status == 0


# --- interrupt / HID / ISO -----------------------------------------------------------------------------
def test_hid_report_descriptor_and_injected_reports(server):
    kbd = server.device("1-3")
    assert isinstance(kbd, HidKeyboard)
    with Raw(server.port, "1-3") as c:
        c.configure(1)
        _, head = c.ctrl(0x80, 6, 0x0200, 0, 9)
        _, config = c.ctrl(0x80, 6, 0x0200, 0, int.from_bytes(head[2:4], "little"))
        hid = bytes.fromhex("0921 1101 00 01 22") + len(KEYBOARD_REPORT_DESCRIPTOR).to_bytes(2, "little")
        assert hid in config
        hdr, report_desc = c.ctrl(0x81, 6, 0x2200, 0, 256)
        assert report_desc == KEYBOARD_REPORT_DESCRIPTOR
        assert c.ctrl(0x21, 0x0A, 0, 0, b"")[0].status == 0  # SET_IDLE
        pending = c.submit(1, 1, 8, interval=8)
        injector = threading.Thread(target=kbd.type_text, args=("A",))
        injector.start()
        injector.join()
        hdr, data, _ = c.reply()
        assert hdr.seqnum == pending and data == bytes([0x02, 0, 0x04, 0, 0, 0, 0, 0])
        hdr, data, _ = c.call(1, 1, 8, interval=8)
        assert data == bytes(8)  # the release
        assert c.call(0, 2, 1, b"\x02", interval=8)[0].status == 0  # LEDs: caps lock
        assert kbd.leds == 2


def test_interrupt_echo(server):
    with Raw(server.port, "1-1") as c:
        c.configure(1)
        assert c.call(0, 3, 3, b"int", interval=1)[0].status == 0
        hdr, data, _ = c.call(1, 3, 64, interval=1)
        assert data == b"int"


def test_iso_in_out_packet_descriptors(server):
    iso = server.device("1-4")
    assert isinstance(iso, IsoDevice)
    with Raw(server.port, "1-4") as c:
        c.configure(1)
        assert c.ctrl(0x01, 11, 1, 0, b"")[0].status == 0
        hdr, data, descs = c.call(1, 1, 300, iso=[100, 100, 100], interval=1)
        assert (hdr.status, hdr.actual_length, hdr.number_of_packets, hdr.error_count) == (0, 300, 3, 0)
        assert data == b"\x00" * 100 + b"\x01" * 100 + b"\x02" * 100  # back to back
        assert descs == [P.IsoPacket(0, 100, 100, 0), P.IsoPacket(100, 100, 100, 0),
                         P.IsoPacket(200, 100, 100, 0)]
        hdr, _, descs = c.call(0, 1, 30, b"a" * 10 + b"b" * 20, iso=[10, 20], interval=1)
        assert (hdr.status, hdr.actual_length, hdr.number_of_packets) == (0, 30, 2)
        assert descs == [P.IsoPacket(0, 10, 10, 0), P.IsoPacket(10, 20, 20, 0)]
        assert iso.received == 2
        _, head = c.ctrl(0x80, 6, 0x0200, 0, 9)
        _, config = c.ctrl(0x80, 6, 0x0200, 0, int.from_bytes(head[2:4], "little"))
        assert bytes.fromhex("0705 81 05 0004 01") in config  # iso IN, asynchronous, 1024, 1
        assert bytes.fromhex("0904 00 01 02 ff") in config  # interface 0 alt 1, 2 endpoints
        # loopback of the stored OUT packets: short packets back to back, offsets as requested
        hdr, data, descs = c.call(1, 1, 64, iso=[32, 32], interval=1)
        assert (hdr.actual_length, data) == (30, b"a" * 10 + b"b" * 20)
        assert descs == [P.IsoPacket(0, 32, 10, 0), P.IsoPacket(32, 32, 20, 0)]


# --- user devices, many URBs, the command line -----------------------------------------------------------
class Upper(Device):
    pid = 0x0010
    product = "Upper"
    interfaces = [Interface(0, endpoints=[Bulk(0x01), Bulk(0x81), Bulk(0x82)])]

    def __init__(self, busid=None):
        super().__init__(busid)
        self.out = bytearray()

    def bulk_out_1(self, data):
        self.out += data.upper()
        self.notify(0x81)

    def bulk_in_1(self, length):
        if not self.out:
            return None
        chunk, self.out = bytes(self.out[:length]), self.out[length:]
        return chunk


def test_user_device_absent_handler_stalls_and_many_urbs_in_flight():
    with SimServer([Upper(busid="3-1")]) as srv, Raw(srv.port, "3-1") as c:
        c.configure(1)
        assert c.call(1, 2, 8)[0].status == -32  # 0x82 declared, bulk_in_2 absent: stall
        assert c.ctrl(0xC0, 1, 0, 0, 1)[0].status == -32  # no vendor_request_in: stall
        ins = [c.submit(1, 1, 1) for _ in range(100)]
        out = c.submit(0, 1, 100, b"a" * 100)
        seen = {}
        for _ in range(101):
            hdr, data, _ = c.reply()
            seen[hdr.seqnum] = data
        assert all(seen[s] == b"A" for s in ins) and seen[out] == b""


def test_scale_count_copies():
    devices = stock_devices(count=8)
    assert len(devices) == 32 and devices[-1].busid == "8-4"
    with SimServer(devices) as srv:
        recs = devlist(srv.port)
        assert len(recs) == 32 and len({(r.busnum, r.devnum) for r in recs}) == 32


def test_stop_closes_imported_connections():
    srv = SimServer([LoopbackDevice(busid="1-1")]).start()
    c = Raw(srv.port, "1-1")
    try:
        c.configure(1)
        c.submit(1, 1, 64)  # held pending
        srv.stop()
        assert_closed(c.sock)
    finally:
        c.close()
        srv.stop()


@pytest.mark.timeout(30)
def test_command_line_prints_listening_and_exits_on_sigterm():
    env = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen([sys.executable, "-m", "usbip_backend.sim", "--port", "0", "--devices", "hid,acm"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = proc.stdout.readline()
        parts = line.split()
        assert parts[:2] == ["LISTENING", "127.0.0.1"] and len(parts) == 3, line
        recs = devlist(int(parts[2]))
        assert [(r.busid, r.idProduct) for r in recs] == [("1-2", 2), ("1-1", 3)]  # newest first
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=10)
        assert proc.returncode == 0, err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=10)


def test_command_line_mdns_on_something_not_an_address_fails_before_listening(capsys):
    from usbip_backend.sim import main

    assert main(["--port", "0", "--mdns", "--mdns-interface", "eth0"]) == 1
    out, err = capsys.readouterr()
    assert out == ""  # no LISTENING line: nothing is served
    assert err == "error: mDNS interface 'eth0' is not an IP address\n"


def test_command_line_mdns_options_parse():
    from usbip_backend.discovery import SERVICE_TYPE
    from usbip_backend.sim.__main__ import build_parser

    args = build_parser().parse_args([])
    assert (args.mdns, args.mdns_interface, args.mdns_name, args.mdns_type) == (False, None, None, SERVICE_TYPE)
    args = build_parser().parse_args(["--mdns", "--mdns-interface", "127.0.0.1", "--mdns-interface", "::1",
                                      "--mdns-name", "bench", "--mdns-type", "_x._tcp.local."])
    assert (args.mdns, args.mdns_interface, args.mdns_name, args.mdns_type) == \
           (True, ["127.0.0.1", "::1"], "bench", "_x._tcp.local.")


@pytest.mark.timeout(60)
def test_help_lists_the_stock_devices_with_their_transmit_buffers():
    """--help names every stock device, the -unpaced variants of the paced serial echoes and
    each one's transmit buffer, as the classes have them (README's table says the same)."""
    from usbip_backend.sim.devices import STOCK, CdcAcmDevice, Ch34xDevice, Cp210xDevice, FtdiDevice

    out = subprocess.run([sys.executable, "-m", "usbip_backend.sim", "--help"], capture_output=True,
                         text=True, timeout=60).stdout
    listed = {line.split()[0]: line for line in out.split("stock devices", 1)[1].splitlines()[1:]
              if line.startswith("  ") and not line.startswith("   ")}
    assert set(STOCK) <= set(listed), out
    expected = {"acm": CdcAcmDevice, "cp210x": Cp210xDevice, "ch34x": Ch34xDevice, "ftdi": FtdiDevice}
    for name, cls in expected.items():
        assert f"{cls.vid:04x}:{cls.pid:04x}" in listed[name]
        assert f"paced, {cls.TX_FIFO} B transmit buffer" in listed[name], listed[name]
        assert stock_devices([f"{name}-unpaced"])[0].paced is False
    assert all("paced," not in listed[n] for n in STOCK if n not in expected)
    assert "acm-unpaced, cp210x-unpaced, ch34x-unpaced, ftdi-unpaced:" in out
    with open(os.path.join(os.path.dirname(__file__), "..", "README.md")) as f:
        readme = f.read()
    for name, cls in expected.items():
        assert f"| `{name}` | {cls.vid:04x}:{cls.pid:04x} | paced | {cls.TX_FIFO} B |" in readme


class IsoNoHandler(Device):
    pid = 0x0011
    interfaces = [Interface(0, endpoints=[Iso(0x81, 256, 1)])]


def test_iso_to_endpoint_without_handler_stalls_with_descriptors():
    with SimServer([IsoNoHandler(busid="2-1")]) as srv, Raw(srv.port, "2-1") as c:
        c.configure(1)
        hdr, data, descs = c.call(1, 1, 64, iso=[32, 32], interval=1)
        assert (hdr.status, hdr.actual_length, hdr.number_of_packets, hdr.error_count) == (-32, 0, 2, 2)
        assert descs == [P.IsoPacket(0, 32, 0, -32), P.IsoPacket(32, 32, 0, -32)] and data == b""
