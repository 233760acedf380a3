"""Wire codec: golden bytes (one comment per field) and round trips. No sockets."""

from __future__ import annotations

import pytest
from hypothesis import given, strategies as st

from usbip_backend import protocol as P
from usbip_backend.errors import ProtocolError

CMD_SUBMIT_GET_DESCRIPTOR = bytes([
    0x00, 0x00, 0x00, 0x01,  # command: USBIP_CMD_SUBMIT
    0x00, 0x00, 0x00, 0x0D,  # seqnum 13
    0x00, 0x01, 0x00, 0x02,  # devid: busnum 1 << 16 | devnum 2
    0x00, 0x00, 0x00, 0x01,  # direction: IN
    0x00, 0x00, 0x00, 0x00,  # ep 0
    0x00, 0x00, 0x02, 0x00,  # transfer_flags: URB_DIR_IN
    0x00, 0x00, 0x00, 0x12,  # transfer_buffer_length 18
    0x00, 0x00, 0x00, 0x00,  # start_frame 0
    0x00, 0x00, 0x00, 0x00,  # number_of_packets 0 (non-ISO)
    0x00, 0x00, 0x00, 0x00,  # interval 0
    0x80, 0x06, 0x00, 0x01, 0x00, 0x00, 0x12, 0x00,  # setup: GET_DESCRIPTOR(DEVICE), wLength 18 (LE)
])

RET_SUBMIT_STALL = bytes([
    0x00, 0x00, 0x00, 0x03,  # command: USBIP_RET_SUBMIT
    0x00, 0x00, 0x00, 0x0E,  # seqnum 14
    0x00, 0x00, 0x00, 0x00,  # devid (kernel sends 0)
    0x00, 0x00, 0x00, 0x00,  # direction (kernel sends 0)
    0x00, 0x00, 0x00, 0x00,  # ep (kernel sends 0)
    0xFF, 0xFF, 0xFF, 0xE0,  # status -32 (-EPIPE, stall)
    0x00, 0x00, 0x00, 0x00,  # actual_length 0
    0x00, 0x00, 0x00, 0x00,  # start_frame
    0x00, 0x00, 0x00, 0x00,  # number_of_packets
    0x00, 0x00, 0x00, 0x00,  # error_count
    0, 0, 0, 0, 0, 0, 0, 0,  # padding
])

CMD_UNLINK = bytes([
    0x00, 0x00, 0x00, 0x02,  # command: USBIP_CMD_UNLINK
    0x00, 0x00, 0x00, 0x10,  # seqnum 16 (its own)
    0x00, 0x01, 0x00, 0x02,  # devid
    0x00, 0x00, 0x00, 0x01,  # direction IN
    0x00, 0x00, 0x00, 0x01,  # ep 1
    0x00, 0x00, 0x00, 0x0F,  # unlink_seqnum 15
]) + bytes(24)  # padding

RET_UNLINK = bytes([
    0x00, 0x00, 0x00, 0x04,  # command: USBIP_RET_UNLINK
    0x00, 0x00, 0x00, 0x10,  # seqnum 16 = the CMD_UNLINK's seqnum
    0x00, 0x00, 0x00, 0x00,  # devid
    0x00, 0x00, 0x00, 0x00,  # direction
    0x00, 0x00, 0x00, 0x00,  # ep
    0xFF, 0xFF, 0xFF, 0x98,  # status -104 (-ECONNRESET: cancelled)
]) + bytes(24)

OP_REQ_IMPORT = bytes([
    0x01, 0x11,  # version 1.1.1
    0x80, 0x03,  # OP_REQ_IMPORT
    0x00, 0x00, 0x00, 0x00,  # status 0
]) + b"1-1.3" + bytes(27)  # busid, NUL padded to 32

ISO_DESCRIPTOR = bytes([
    0x00, 0x00, 0x04, 0x00,  # offset 1024
    0x00, 0x00, 0x04, 0x00,  # length 1024
    0x00, 0x00, 0x01, 0x00,  # actual_length 256
    0xFF, 0xFF, 0xFF, 0xEE,  # status -18 (-EXDEV)
])


def test_cmd_submit_golden():
    cmd = P.CmdSubmit(13, 0x00010002, 1, 0, P.USBIP_URB_DIR_IN, 18, 0, 0, 0, P.pack_setup(0x80, 6, 0x100, 0, 18))
    assert cmd.pack() == CMD_SUBMIT_GET_DESCRIPTOR
    assert P.unpack_urb_header(CMD_SUBMIT_GET_DESCRIPTOR) == cmd


def test_ret_submit_golden():
    ret = P.unpack_urb_header(RET_SUBMIT_STALL)
    assert ret == P.RetSubmit(seqnum=14, status=-32)
    assert ret.pack() == RET_SUBMIT_STALL


def test_unlink_golden():
    assert P.CmdUnlink(16, 0x00010002, 1, 1, 15).pack() == CMD_UNLINK
    assert P.unpack_urb_header(CMD_UNLINK).unlink_seqnum == 15
    ret = P.unpack_urb_header(RET_UNLINK)
    assert (ret.seqnum, ret.status) == (16, -104)
    assert ret.pack() == RET_UNLINK


def test_op_req_import_golden():
    assert P.pack_req_import("1-1.3") == OP_REQ_IMPORT
    assert P.unpack_req_import(OP_REQ_IMPORT[8:]) == "1-1.3"
    assert P.pack_req_devlist() == bytes([0x01, 0x11, 0x80, 0x05, 0, 0, 0, 0])


def test_iso_descriptor_golden():
    pkt = P.IsoPacket(1024, 1024, 256, -18)
    assert pkt.pack() == ISO_DESCRIPTOR
    assert P.unpack_iso_packets(ISO_DESCRIPTOR, 1) == [pkt]


def test_devlist_reply_golden():
    dev = P.UsbDevice("/sys/devices/platform/vhci", "1-1", 1, 2, P.Speed.HIGH, 0x1D6B, 0x0104, 0x0100,
                      0xEF, 0x02, 0x01, 1, 1, 2, (P.UsbInterface(2, 2, 1), P.UsbInterface(10, 0, 0)))
    raw = P.pack_rep_devlist([dev])
    assert raw[:8] == bytes([0x01, 0x11, 0x00, 0x05, 0, 0, 0, 0])  # version, OP_REP_DEVLIST, ST_OK
    assert raw[8:12] == bytes([0, 0, 0, 1])  # one device
    rec = raw[12:12 + 312]
    assert rec[:26] == b"/sys/devices/platform/vhci" and rec[26:256] == bytes(230)  # path[256]
    assert rec[256:259] == b"1-1" and rec[259:288] == bytes(29)  # busid[32]
    assert rec[288:300] == bytes([0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 3])  # busnum, devnum, speed HIGH
    assert rec[300:306] == bytes([0x1D, 0x6B, 0x01, 0x04, 0x01, 0x00])  # idVendor, idProduct, bcdDevice
    assert rec[306:312] == bytes([0xEF, 0x02, 0x01, 1, 1, 2])  # class triple, cfg value, #cfgs, #ifs
    assert raw[324:] == bytes([2, 2, 1, 0, 10, 0, 0, 0])  # interface triples + padding
    assert P.unpack_rep_devlist(raw) == [dev]
    assert dev.devid == 0x00010002


def test_import_reply_carries_record_only_on_success():
    dev = P.UsbDevice("/p", "2-1", 2, 3, 2, 1, 2, 3, 0, 0, 0, 0, 1, 0)
    assert len(P.pack_rep_import(dev)) == 8 + 312
    refused = P.pack_rep_import(None, P.Status.ST_DEV_BUSY)
    assert refused == bytes([0x01, 0x11, 0x00, 0x03, 0, 0, 0, 2])


@pytest.mark.parametrize("raw, message", [
    (bytes([0x01, 0x06, 0x00, 0x05, 0, 0, 0, 0]), "version 0x0106"),
    (bytes([0x01, 0x11, 0x00, 0x09, 0, 0, 0, 0]), "unexpected OP code 0x0009"),
    (bytes([0x01, 0x11, 0x00]), "need 8 bytes, got 3"),
])
def test_malformed_op_header(raw, message):
    with pytest.raises(ProtocolError, match=message):
        P.OpHeader.unpack(raw, P.OP_REP_DEVLIST)


def test_malformed_urb_headers():
    with pytest.raises(ProtocolError, match="need 48 bytes, got 47"):
        P.unpack_urb_header(RET_SUBMIT_STALL[:47])
    with pytest.raises(ProtocolError, match="unknown USB/IP command 0x00000009"):
        P.unpack_urb_header(bytes([0, 0, 0, 9]) + bytes(44))


def test_malformed_devlist():
    good = P.pack_rep_devlist([P.UsbDevice("/p", "1-1", 1, 1, 2, 1, 2, 3, 0, 0, 0, 1, 1, 1,
                                           (P.UsbInterface(3, 0, 0),))])
    with pytest.raises(ProtocolError, match="truncated"):
        P.unpack_rep_devlist(good[:-2])
    with pytest.raises(ProtocolError, match="trailing"):
        P.unpack_rep_devlist(good + b"\0")
    huge = good[:8] + (0xFFFFFFFF).to_bytes(4, "big")
    with pytest.raises(ProtocolError, match="claims 4294967295 devices"):
        P.unpack_rep_devlist(huge)
    with pytest.raises(ProtocolError, match="ISO packet count"):
        P.unpack_iso_packets(b"", 100000)


u32 = st.integers(0, 2**32 - 1)
i32 = st.integers(-2**31, 2**31 - 1)


@given(seq=u32, devid=u32, direction=st.integers(0, 1), ep=st.integers(0, 15), flags=u32, length=i32,
       start=i32, npk=i32, interval=i32, setup=st.binary(min_size=8, max_size=8))
def test_cmd_submit_round_trip(seq, devid, direction, ep, flags, length, start, npk, interval, setup):
    cmd = P.CmdSubmit(seq, devid, direction, ep, flags, length, start, npk, interval, setup)
    assert P.unpack_urb_header(cmd.pack()) == cmd


@given(seq=u32, status=i32, actual=i32, start=i32, npk=i32, errs=i32)
def test_ret_submit_round_trip(seq, status, actual, start, npk, errs):
    ret = P.RetSubmit(seq, status, actual, start, npk, errs)
    assert P.unpack_urb_header(ret.pack()) == ret


@given(raw=st.binary(min_size=48, max_size=48))
def test_any_48_bytes_decode_or_raise_protocol_error(raw):
    command = int.from_bytes(raw[:4], "big")
    if command in (1, 2, 3, 4):
        msg = P.unpack_urb_header(raw)
        assert msg.pack() == raw[:20] + msg.pack()[20:] and msg.seqnum == int.from_bytes(raw[4:8], "big")
    else:
        with pytest.raises(ProtocolError, match="unknown USB/IP command"):
            P.unpack_urb_header(raw)
