"""The PyUSB backend, exercised through ``usb.core`` against the virtual USB/IP server.

Stock devices of ``python -m usbip_backend.sim`` (VID 0x1209, high speed): 1-1 loopback (PID 1),
1-2 CDC-ACM echo (PID 2), 1-3 HID keyboard (PID 3), 1-4 isochronous (PID 4).
"""

from __future__ import annotations

import array
import errno
import logging
import threading
import time

import pytest
import usb.core
import usb.util

from conftest import start_sim_process, stop_sim_process
from usbip_backend import UsbipBackend, get_backend
from usbip_backend import protocol as P
from usbip_backend.backend import (
    LIBUSB_ERROR_IO, LIBUSB_ERROR_NO_DEVICE, LIBUSB_ERROR_OVERFLOW, LIBUSB_ERROR_PIPE,
    LIBUSB_ERROR_TIMEOUT, _usb_error, port_numbers_from_busid, speed_to_pyusb, urb_interval,
)
from usbip_backend.errors import ConnectionLostError, UrbError, UsbipTimeoutError
from usbip_backend.hooks import UrbHook
from usbip_backend.sim.device import cdc_acm, cdc_call_management, cdc_header, cdc_union
from usbip_backend.sim.devices import KEYBOARD_REPORT_DESCRIPTOR, pattern

VID = 0x1209
PID_LOOPBACK, PID_ACM, PID_HID, PID_ISO = 1, 2, 3, 4


class Recorder(UrbHook):
    """Keeps every completed URB (the engine calls hooks from its reader thread)."""

    def __init__(self) -> None:
        self.completed = []
        self.lock = threading.Lock()

    def urb_completed(self, urb) -> None:
        with self.lock:
            self.completed.append(urb)

    def of(self, endpoint: int, ttype: P.TransferType):
        with self.lock:
            return [u for u in self.completed if u.endpoint == endpoint and u.transfer_type == ttype]


@pytest.fixture
def backend(sim_server):
    be = get_backend(*sim_server)
    yield be
    be.close()


def find(be, pid):
    dev = usb.core.find(backend=be, idVendor=VID, idProduct=pid)
    assert dev is not None, f"device {VID:04x}:{pid:04x} not found (skipped: {be.skipped})"
    return dev


@pytest.fixture
def loopback(backend):
    dev = find(backend, PID_LOOPBACK)
    dev.set_configuration()
    yield dev
    usb.util.dispose_resources(dev)


# --- pure helpers ---------------------------------------------------------------------------------
def test_helpers():
    assert port_numbers_from_busid("1-1.3") == (1, 3)
    assert port_numbers_from_busid("3-2") == (2,)
    assert port_numbers_from_busid("usbip-vudc.0") is None
    assert [speed_to_pyusb(s) for s in range(7)] == [
        usb.util.SPEED_UNKNOWN, usb.util.SPEED_LOW, usb.util.SPEED_FULL, usb.util.SPEED_HIGH,
        usb.util.SPEED_HIGH, usb.util.SPEED_SUPER, 5]
    T = P.TransferType
    assert urb_interval(P.Speed.HIGH, T.INTERRUPT, 4) == 8  # 2^(4-1) microframes
    assert urb_interval(P.Speed.SUPER, T.ISOCHRONOUS, 1) == 1
    assert urb_interval(P.Speed.FULL, T.INTERRUPT, 10) == 10  # frames
    assert urb_interval(P.Speed.FULL, T.ISOCHRONOUS, 4) == 8
    assert urb_interval(P.Speed.LOW, T.INTERRUPT, 0) == 1  # never 0
    assert urb_interval(P.Speed.HIGH, T.INTERRUPT, 0) == 1
    assert urb_interval(P.Speed.HIGH, T.INTERRUPT, 200) == 1 << 15


@pytest.mark.parametrize("exc, cls, code, err", [
    (UsbipTimeoutError("t"), usb.core.USBTimeoutError, LIBUSB_ERROR_TIMEOUT, errno.ETIMEDOUT),
    (ConnectionLostError("gone"), usb.core.USBError, LIBUSB_ERROR_NO_DEVICE, errno.ENODEV),
    (UrbError("stall", status=-32), usb.core.USBError, LIBUSB_ERROR_PIPE, errno.EPIPE),
    (UrbError("babble", status=-75), usb.core.USBError, LIBUSB_ERROR_OVERFLOW, errno.EOVERFLOW),
    (UrbError("gone", status=-108), usb.core.USBError, LIBUSB_ERROR_NO_DEVICE, errno.ENODEV),
    (UrbError("server timeout", status=-110), usb.core.USBTimeoutError, LIBUSB_ERROR_TIMEOUT, errno.ETIMEDOUT),
    (UrbError("too big", status=-90), usb.core.USBError, LIBUSB_ERROR_IO, errno.EMSGSIZE),
    (UrbError("proto", status=-71), usb.core.USBError, LIBUSB_ERROR_IO, errno.EPROTO),
    (UrbError("io", status=-5), usb.core.USBError, LIBUSB_ERROR_IO, errno.EIO),
])
def test_error_mapping(exc, cls, code, err):
    e = _usb_error(exc, "bulk read from endpoint 0x81")
    assert type(e) is cls
    assert (e.backend_error_code, e.errno) == (code, err)
    assert "endpoint 0x81" in e.strerror


# --- enumeration and descriptors ----------------------------------------------------------------
def test_find_all_and_device_fields(backend):
    devs = list(usb.core.find(find_all=True, backend=backend))
    assert [(d.idVendor, d.idProduct) for d in devs] == [(VID, p) for p in (1, 2, 3, 4)]
    for port, d in enumerate(devs, start=1):
        assert (d.bus, d.port_number, d.port_numbers) == (1, port, (port,))
        assert d.address >= 1
        assert d.speed == usb.util.SPEED_HIGH
        # Real device descriptor fields, read with GET_DESCRIPTOR.
        assert d.bcdUSB == 0x0200 and d.bMaxPacketSize0 == 64
        assert d.iManufacturer and d.iProduct and d.iSerialNumber
    assert backend.skipped == {}
    assert [d.busid for d in backend.devices] == ["1-1", "1-2", "1-3", "1-4"]


def test_find_by_ids_imports_lazily(backend):
    dev = find(backend, PID_LOOPBACK)
    assert dev.product == "USB/IP loopback/source/sink"
    # find() stopped at the first match: the other devices were not imported.
    assert [d.busid for d in backend.devices] == ["1-1"]


def test_strings(backend):
    dev = find(backend, PID_ACM)
    assert dev.manufacturer == "usbip_backend"
    assert dev.product == "USB/IP CDC-ACM echo"
    assert dev.serial_number == "SIM-CDCACMDEVICE-1-2"
    assert usb.util.get_string(dev, dev.iProduct) == dev.product
    assert usb.util.get_string(dev, dev.iProduct, 0x0409) == dev.product
    assert 0x0409 in dev.langids
    usb.util.dispose_resources(dev)


def test_configuration_interface_endpoint_iteration(backend):
    dev = find(backend, PID_LOOPBACK)
    cfgs = list(dev)
    assert len(cfgs) == dev.bNumConfigurations == 1
    intfs = list(cfgs[0])
    assert [(i.bInterfaceNumber, i.bAlternateSetting) for i in intfs] == [(0, 0)]
    eps = [(e.bEndpointAddress, usb.util.endpoint_type(e.bmAttributes), e.wMaxPacketSize) for e in intfs[0]]
    B, I = usb.util.ENDPOINT_TYPE_BULK, usb.util.ENDPOINT_TYPE_INTR
    assert eps == [(0x01, B, 512), (0x81, B, 512), (0x82, B, 512), (0x02, B, 512), (0x03, I, 64), (0x83, I, 64)]
    assert usb.util.get_string(dev, intfs[0].iInterface) == "Loopback, source and sink"
    usb.util.dispose_resources(dev)


def test_cdc_extra_descriptors(backend):
    dev = find(backend, PID_ACM)
    cfg = dev[0]
    # The IAD (type 0x0B) precedes the first interface: the configuration's extra.
    iad = bytes(cfg.extra_descriptors)
    assert (iad[0], iad[1], iad[2], iad[3], iad[4]) == (8, 0x0B, 0, 2, 0x02)
    comm = cfg[(0, 0)]
    functional = cdc_header() + cdc_call_management(0, 1) + cdc_acm(0x02) + cdc_union(0, 1)
    assert bytes(comm.extra_descriptors) == functional
    assert list(comm.extra_descriptors[:5]) == list(cdc_header())  # sliceable like libusb1's
    assert cfg[(1, 0)].extra_descriptors == []
    assert [e.extra_descriptors for e in cfg[(1, 0)]] == [[], []]
    usb.util.dispose_resources(dev)


def test_hid_extra_descriptor(backend):
    dev = find(backend, PID_HID)
    intf = dev[0][(0, 0)]
    hid = bytes(intf.extra_descriptors)
    assert len(hid) == 9 and hid[1] == 0x21 and hid[6] == 0x22
    assert int.from_bytes(hid[7:9], "little") == len(KEYBOARD_REPORT_DESCRIPTOR)
    report = dev.ctrl_transfer(0x81, 6, 0x2200, 0, len(KEYBOARD_REPORT_DESCRIPTOR))
    assert bytes(report) == KEYBOARD_REPORT_DESCRIPTOR
    usb.util.dispose_resources(dev)


def test_set_configuration_and_alt_settings(backend):
    dev = find(backend, PID_ISO)
    dev.set_configuration()
    assert dev.get_active_configuration().bConfigurationValue == 1
    assert dev.ctrl_transfer(0x80, 8, 0, 0, 1)[0] == 1  # GET_CONFIGURATION on the wire
    assert [(i.bInterfaceNumber, i.bAlternateSetting, i.bNumEndpoints) for i in dev[0]] == [(0, 0, 0), (0, 1, 2)]
    dev.set_interface_altsetting(interface=0, alternate_setting=1)
    assert dev.ctrl_transfer(0x81, 10, 0, 0, 1)[0] == 1  # GET_INTERFACE agrees
    dev.set_interface_altsetting(interface=0, alternate_setting=0)
    assert dev.ctrl_transfer(0x81, 10, 0, 0, 1)[0] == 0
    usb.util.dispose_resources(dev)


# --- control ----------------------------------------------------------------------------------
def test_ctrl_transfer_out_and_in(loopback):
    payload = bytes(range(200))
    assert loopback.ctrl_transfer(0x40, 0x5B, 0, 0, payload) == 200
    assert bytes(loopback.ctrl_transfer(0xC0, 0x5C, 0, 0, 1024)) == payload  # short IN
    buf = array.array("B", bytes(300))
    assert loopback.ctrl_transfer(0xC0, 0x5D, 0, 0, buf) == 300
    assert bytes(buf) == pattern(300)
    assert loopback.ctrl_transfer(0x40, 0x5B, 0, 0) == 0  # no data stage


def test_ctrl_stall_is_epipe(loopback):
    with pytest.raises(usb.core.USBError) as info:
        loopback.ctrl_transfer(0xC0, 0x5F, 0, 0, 8)
    assert info.value.errno == errno.EPIPE
    assert info.value.backend_error_code == LIBUSB_ERROR_PIPE
    assert "stall" in str(info.value)
    assert loopback.ctrl_transfer(0xC0, 0x5D, 0, 0, 4).tolist() == [0, 1, 2, 3]  # still usable


# --- bulk -------------------------------------------------------------------------------------
@pytest.mark.timeout(120)
@pytest.mark.parametrize("size", [1, 63, 64, 511, 512, 4096, 65543, 1024 * 1024])
def test_bulk_loopback(loopback, size):
    data = bytes((i * 7 + size) & 0xFF for i in range(size))
    assert loopback.write(0x01, data, timeout=5000) == size
    got = loopback.read(0x81, size, timeout=5000)
    assert len(got) == size and bytes(got) == data


def test_bulk_read_into_array_and_source(loopback):
    buf = usb.util.create_buffer(1000)
    assert loopback.read(0x82, buf, timeout=1000) == 1000
    assert bytes(buf) == pattern(1000)


def test_stall_then_clear_halt(loopback):
    with pytest.raises(usb.core.USBError) as info:
        loopback.write(0x02, b"not the pattern", timeout=1000)
    assert info.value.errno == errno.EPIPE and info.value.backend_error_code == LIBUSB_ERROR_PIPE
    with pytest.raises(usb.core.USBError) as info:  # the endpoint stays halted...
        loopback.write(0x02, pattern(10), timeout=1000)
    assert info.value.errno == errno.EPIPE
    loopback.clear_halt(0x02)  # ...until CLEAR_FEATURE(ENDPOINT_HALT)
    assert loopback.write(0x02, pattern(100), timeout=1000) == 100


def test_babble_is_eoverflow(loopback):
    loopback.write(0x01, bytes(512), timeout=1000)  # one full 512-byte packet
    with pytest.raises(usb.core.USBError) as info:
        loopback.read(0x81, 100, timeout=1000)  # a buffer smaller than the packet
    assert info.value.errno == errno.EOVERFLOW
    assert info.value.backend_error_code == LIBUSB_ERROR_OVERFLOW


@pytest.mark.parametrize("timeout_ms", [50, 200])
def test_timeout(loopback, timeout_ms):
    start = time.monotonic()
    with pytest.raises(usb.core.USBTimeoutError) as info:
        loopback.read(0x81, 64, timeout=timeout_ms)
    elapsed = time.monotonic() - start
    assert info.value.errno == errno.ETIMEDOUT and info.value.backend_error_code == LIBUSB_ERROR_TIMEOUT
    assert timeout_ms / 1000 <= elapsed < timeout_ms / 1000 + 0.15, elapsed
    # The URB was unlinked, not left pending: data written now goes to the next read.
    loopback.write(0x01, b"after", timeout=1000)
    assert bytes(loopback.read(0x81, 64, timeout=1000)) == b"after"


def test_timeout_zero_waits_forever(loopback):
    result = {}

    def reader():
        try:
            result["data"] = bytes(loopback.read(0x81, 64, timeout=0))
        except Exception as exc:  # reported below
            result["error"] = exc

    t = threading.Thread(target=reader)
    t.start()
    # Whether the read is already pending or not, it must get exactly this data.
    loopback.write(0x01, b"late data", timeout=1000)
    t.join(10)
    assert not t.is_alive()
    assert result == {"data": b"late data"}


# --- interrupt and isochronous -----------------------------------------------------------------
def test_interrupt_in_out_with_interval(sim_server):
    rec = Recorder()
    with get_backend(*sim_server, pcap=rec) as be:
        dev = find(be, PID_LOOPBACK)
        dev.set_configuration()
        assert dev.write(0x03, b"report-1", timeout=1000) == 8
        assert bytes(dev.read(0x83, 64, timeout=1000)) == b"report-1"
        usb.util.dispose_resources(dev)
    urbs = rec.of(0x03, P.TransferType.INTERRUPT) + rec.of(0x83, P.TransferType.INTERRUPT)
    assert len(urbs) == 2
    # High speed, bInterval 4: 2^(4-1) = 8 microframes, as Linux's vhci would send.
    assert {u.interval for u in urbs} == {8}


def test_hid_keyboard_interrupt(backend):
    dev = find(backend, PID_HID)
    dev.set_configuration()
    assert dev.write(0x02, b"\x01", timeout=1000) == 1  # LED output report
    report = dev.ctrl_transfer(0xA1, 0x01, 0x0100, 0, 8)  # GET_REPORT(input)
    assert len(report) == 8
    with pytest.raises(usb.core.USBTimeoutError):
        dev.read(0x81, 8, timeout=30)  # no key pressed
    usb.util.dispose_resources(dev)


def test_isochronous_out_and_in(sim_server):
    rec = Recorder()
    with get_backend(*sim_server, pcap=rec) as be:
        dev = find(be, PID_ISO)
        dev.set_configuration()
        dev.set_interface_altsetting(0, 1)
        data = bytes(i & 0xFF for i in range(3000))
        assert dev.write(0x01, data, timeout=1000) == 3000
        out = rec.of(0x01, P.TransferType.ISOCHRONOUS)[-1]
        assert [p.length for p in out.iso_packets] == [1024, 1024, 952]  # as libusb splits
        assert out.interval == 1
        got = dev.read(0x81, 3072, timeout=1000)
        assert bytes(got) == data  # the stored packets come back; the short last one ends it
        # Packets of different lengths are packed: 100 stored bytes, then one generated packet.
        dev.write(0x01, b"\xAA" * 100, timeout=1000)
        got = dev.read(0x81, 2048, timeout=1000)
        assert len(got) == 1124 and bytes(got[:100]) == b"\xAA" * 100
        assert len(set(got[100:])) == 1
        usb.util.dispose_resources(dev)


def test_iso_endpoint_missing_in_alt0(backend):
    dev = find(backend, PID_ISO)
    dev.set_configuration()
    dev.set_interface_altsetting(0, 0)
    with pytest.raises(ValueError, match="Invalid endpoint"):  # PyUSB itself refuses
        dev.read(0x81, 1024, timeout=100)
    usb.util.dispose_resources(dev)


# --- reset, dispose, busids, busy ----------------------------------------------------------------
def test_reset(fresh_sim_server):
    with get_backend(*fresh_sim_server) as be:
        dev = find(be, PID_LOOPBACK)
        dev.set_configuration()
        dev.write(0x01, b"queued before reset", timeout=1000)
        dev.reset()
        # The device was reset: the queued data is gone, and it works again afterwards.
        dev.set_configuration()
        with pytest.raises(usb.core.USBTimeoutError):
            dev.read(0x81, 64, timeout=50)
        dev.write(0x01, b"after reset", timeout=1000)
        assert bytes(dev.read(0x81, 64, timeout=1000)) == b"after reset"
        usb.util.dispose_resources(dev)


def test_dispose_and_find_again(backend):
    dev = find(backend, PID_LOOPBACK)
    dev.set_configuration()
    dev.write(0x01, b"one", timeout=1000)
    conn = backend.devices[0].conn
    usb.util.dispose_resources(dev)
    del dev
    again = find(backend, PID_LOOPBACK)  # no ST_DEV_BUSY: the live import is reused
    assert backend.devices[0].conn is conn
    assert bytes(again.read(0x81, 64, timeout=1000)) == b"one"
    assert len(list(usb.core.find(find_all=True, backend=backend))) == 4
    usb.util.dispose_resources(again)


def test_busids_restriction(sim_server):
    with get_backend(*sim_server, busids=["1-3"]) as be:
        devs = list(usb.core.find(find_all=True, backend=be))
        assert [d.idProduct for d in devs] == [PID_HID]
        assert [d.busid for d in be.devices] == ["1-3"]


def test_busy_device_is_skipped_with_a_message(sim_server, caplog):
    with get_backend(*sim_server, busids=["1-1"]) as holder:
        held = find(holder, PID_LOOPBACK)
        with get_backend(*sim_server, busids=["1-1", "1-2"]) as be:
            with caplog.at_level(logging.WARNING, logger="usbip_backend.backend"):
                devs = list(usb.core.find(find_all=True, backend=be))
            assert [d.idProduct for d in devs] == [PID_ACM]
            assert "busy" in be.skipped["1-1"] and "1-1" in be.skipped["1-1"]
            assert any("1-1" in r.getMessage() and "busy" in r.getMessage() for r in caplog.records)
        # The holder is unaffected.
        held.set_configuration()
        held.write(0x01, b"x", timeout=1000)
        assert bytes(held.read(0x81, 64, timeout=1000)) == b"x"
        usb.util.dispose_resources(held)


def test_unknown_busid_is_skipped(sim_server):
    with get_backend(*sim_server, busids=["9-9"]) as be:
        assert usb.core.find(backend=be) is None
        assert "9-9" in be.skipped and "ST_NODEV" in be.skipped["9-9"]


# --- max_transfer ---------------------------------------------------------------------------------
def test_max_transfer_splits_both_directions(sim_server):
    rec = Recorder()
    with get_backend(*sim_server, max_transfer=4096, pcap=rec) as be:
        dev = find(be, PID_LOOPBACK)
        dev.set_configuration()
        data = bytes(i & 0xFF for i in range(10000))
        assert dev.write(0x01, data, timeout=2000) == 10000
        assert [u.length for u in rec.of(0x01, P.TransferType.BULK)] == [4096, 4096, 1808]
        got = dev.read(0x81, 10000, timeout=2000)
        assert bytes(got) == data
        assert [u.length for u in rec.of(0x81, P.TransferType.BULK)] == [4096, 4096, 1808]
        usb.util.dispose_resources(dev)


def test_max_transfer_in_stops_at_short_packet(sim_server):
    rec = Recorder()
    with get_backend(*sim_server, max_transfer=1000, pcap=rec) as be:  # rounded to 512 (max packet)
        dev = find(be, PID_LOOPBACK)
        dev.set_configuration()
        first, second = b"A" * 700, b"B" * 300  # 700 = one full packet + a short one
        dev.write(0x01, first, timeout=1000)
        dev.write(0x01, second, timeout=1000)
        assert bytes(dev.read(0x81, 4096, timeout=1000)) == first  # not a byte of `second`
        assert [u.length for u in rec.of(0x81, P.TransferType.BULK)] == [512, 512]
        assert bytes(dev.read(0x81, 4096, timeout=1000)) == second
        usb.util.dispose_resources(dev)


def test_timeout_after_some_data_returns_the_count(sim_server):
    """As libusb1: a timeout after some bytes arrived is not an error; the count is returned."""
    with get_backend(*sim_server, max_transfer=512) as be:
        dev = find(be, PID_LOOPBACK)
        dev.set_configuration()
        dev.write(0x01, b"F" * 512, timeout=1000)  # a full packet: the transfer is not over yet
        start = time.monotonic()
        got = dev.read(0x81, 2048, timeout=200)  # 512 arrive, the second chunk times out
        assert bytes(got) == b"F" * 512
        assert time.monotonic() - start < 0.2 + 0.15
        usb.util.dispose_resources(dev)


def test_max_transfer_out_failure_cancels_the_rest(sim_server):
    with get_backend(*sim_server, max_transfer=512) as be:
        dev = find(be, PID_LOOPBACK)
        dev.set_configuration()
        bad = bytes(512) * 8  # the sink stalls on the first chunk already
        with pytest.raises(usb.core.USBError) as info:
            dev.write(0x02, bad, timeout=2000)
        assert info.value.errno == errno.EPIPE
        assert "of 4096 bytes" in str(info.value)
        assert info.value.transferred <= 512  # nothing after the failed chunk went through
        dev.clear_halt(0x02)
        # The sink checks the pattern per URB, so each 512-byte chunk carries it from the start.
        assert dev.write(0x02, pattern(512) * 8, timeout=2000) == 4096
        usb.util.dispose_resources(dev)


# --- the device goes away ------------------------------------------------------------------------
def test_device_gone_is_enodev():
    proc, port = start_sim_process()
    try:
        be = get_backend("127.0.0.1", port)
        dev = find(be, PID_LOOPBACK)
        dev.set_configuration()
        result = {}

        def reader():
            try:
                dev.read(0x81, 64, timeout=10000)
            except usb.core.USBError as exc:
                result["error"] = exc

        t = threading.Thread(target=reader)
        t.start()
    finally:
        stop_sim_process(proc)
    try:
        t.join(10)
        assert not t.is_alive()
        assert result["error"].errno == errno.ENODEV
        assert result["error"].backend_error_code == LIBUSB_ERROR_NO_DEVICE
        with pytest.raises(usb.core.USBError) as info:
            dev.write(0x01, b"x", timeout=1000)
        assert info.value.errno == errno.ENODEV
        with pytest.raises(usb.core.USBError, match="listing the devices"):
            usb.core.find(backend=be)
        usb.util.dispose_resources(dev)
    finally:
        be.close()


def test_backend_is_an_ibackend():
    import usb.backend

    be = UsbipBackend("127.0.0.1", 1)
    assert isinstance(be, usb.backend.IBackend)
    with pytest.raises(ValueError):
        UsbipBackend("127.0.0.1", 1, max_transfer=0)
    be.close()


# --- in-process virtual server: devices made for one test ---------------------------------------
from usbip_backend.sim.device import Bulk, Device, Interface, Interrupt  # noqa: E402
from usbip_backend.sim.devices import stock_devices  # noqa: E402
from usbip_backend.sim.server import SimServer  # noqa: E402


class GatedSink(Device):
    """Bulk OUT 0x01 whose first URB is held until the test opens the gate."""

    pid = 0x00F0
    product = "gated sink"
    interfaces = [Interface(0, endpoints=[Bulk(0x01)])]

    def __init__(self, busid=None, gate=None):
        super().__init__(busid)
        self.gate = gate
        self.received = bytearray()
        self.gate_was_open = None

    def bulk_out_1(self, data):
        if self.gate_was_open is None:
            self.gate_was_open = self.gate.wait(5.0)
        self.received += data


class FullSpeedInterrupt(Device):
    pid = 0x00F1
    product = "full-speed interrupt"
    speed = P.Speed.FULL
    interfaces = [Interface(0, endpoints=[Interrupt(0x81, 8, interval=10)])]

    def interrupt_in_1(self, length):
        return b"\x42" * min(length, 8)


def test_max_transfer_out_chunks_are_in_flight_together():
    gate = threading.Event()

    class OpenGateOnThirdSubmit(UrbHook):
        submitted = 0

        def urb_submitted(self, urb):
            if urb.endpoint == 0x01:
                self.submitted += 1
                if self.submitted == 3:
                    gate.set()  # three chunks sent while the first is still held by the device

    dev_model = GatedSink(gate=gate)
    with SimServer([dev_model]) as srv, get_backend("127.0.0.1", srv.port, max_transfer=512,
                                                    pcap=OpenGateOnThirdSubmit()) as be:
        dev = find(be, GatedSink.pid)
        dev.set_configuration()
        data = bytes(i & 0xFF for i in range(512 * 6))
        assert dev.write(0x01, data, timeout=10000) == len(data)
        assert dev_model.gate_was_open is True
        assert bytes(dev_model.received) == data
        usb.util.dispose_resources(dev)


def test_full_speed_interrupt_interval():
    rec = Recorder()
    with SimServer([FullSpeedInterrupt()]) as srv, get_backend("127.0.0.1", srv.port, pcap=rec) as be:
        dev = find(be, FullSpeedInterrupt.pid)
        assert dev.speed == usb.util.SPEED_FULL
        dev.set_configuration()
        assert bytes(dev.read(0x81, 8, timeout=1000)) == b"\x42" * 8
        (urb,) = rec.of(0x81, P.TransferType.INTERRUPT)
        assert urb.interval == 10  # full speed: bInterval frames
        usb.util.dispose_resources(dev)


def test_dead_connection_is_imported_again():
    with SimServer(stock_devices(["loopback"])) as srv, get_backend("127.0.0.1", srv.port) as be:
        dev = find(be, PID_LOOPBACK)
        old = be.devices[0]
        old.conn.close()  # as if the server had dropped us
        assert srv.wait_free("1-1")
        with pytest.raises(usb.core.USBError) as info:
            dev.read(0x81, 8, timeout=100)
        assert info.value.errno == errno.ENODEV
        usb.util.dispose_resources(dev)
        again = find(be, PID_LOOPBACK)
        assert be.devices[0] is not old and be.devices[0].alive
        again.set_configuration()
        again.write(0x01, b"back", timeout=1000)
        assert bytes(again.read(0x81, 8, timeout=1000)) == b"back"
        usb.util.dispose_resources(again)


@pytest.mark.timeout(60)
def test_a_device_that_leaves_the_bus_is_still_a_warning_for_pyusb(caplog):
    """The engine's "connection lost" stays a WARNING for the PyUSB backend's connections (only
    the serial port, which raises SerialException itself, has it logged at debug level)."""
    with SimServer(stock_devices(["loopback"])) as srv, get_backend("127.0.0.1", srv.port) as be:
        dev = find(be, PID_LOOPBACK)
        dev.set_configuration()
        with caplog.at_level(logging.WARNING, logger="usbip_backend.engine"):
            srv.unplug("1-1")  # the server closes the connection
            with pytest.raises(usb.core.USBError) as info:
                dev.read(0x81, 8, timeout=5000)
        assert info.value.errno == errno.ENODEV
        lost = [r for r in caplog.records if r.name == "usbip_backend.engine" and "connection lost" in r.getMessage()]
        assert [r.levelno for r in lost] == [logging.WARNING], caplog.records
        usb.util.dispose_resources(dev)


def test_pcap_path_is_written_and_closed(tmp_path):
    path = tmp_path / "capture.pcapng"
    with SimServer(stock_devices(["loopback"])) as srv:
        with get_backend("127.0.0.1", srv.port, pcap=str(path)) as be:
            dev = find(be, PID_LOOPBACK)
            assert dev.product
            usb.util.dispose_resources(dev)
    raw = path.read_bytes()
    assert raw[:4] == b"\x0a\x0d\x0d\x0a" and len(raw) > 200  # SHB, then records


def test_threads_sharing_a_device_each_get_their_own_data(loopback):
    # Several threads call PyUSB on one device at once: each synchronous call either takes the
    # lane (no URB while it holds the read token) or becomes an ordinary URB another thread's
    # call may read for; a bulk IN stays pending on the side the whole time. Every call must get
    # exactly its own reply.
    descriptor = bytes(loopback.ctrl_transfer(0x80, 6, 0x0100, 0, 18, 1000))
    source = (bytes(range(63)) * 10)[:512]
    errors = []
    pending = {}

    def side_read():
        try:
            pending["data"] = bytes(loopback.read(0x81, 64, timeout=10000))
        except Exception as exc:
            pending["error"] = exc

    def worker(n):
        try:
            for i in range(150):
                if (n + i) % 2:
                    got = bytes(loopback.ctrl_transfer(0x80, 6, 0x0100, 0, 18, 5000))
                    assert got == descriptor, (n, i, got)
                else:
                    got = bytes(loopback.read(0x82, 512, timeout=5000))
                    assert got == source, (n, i, got[:16])
        except BaseException as exc:
            errors.append(exc)

    side = threading.Thread(target=side_read)
    side.start()
    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    loopback.write(0x01, b"released", timeout=1000)
    side.join(10)
    assert not errors, errors[:3]
    assert not any(t.is_alive() for t in threads + [side])
    assert pending == {"data": b"released"}
