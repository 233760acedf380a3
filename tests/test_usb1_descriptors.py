"""python-libusb1's descriptor classes (usbip_backend.usb1._descriptors) over parsed descriptors.

Descriptors come from the virtual server's device framework (real configuration bytes, parsed
by this project's parser), or, for what no stock device has, from hand-written bytes.
"""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from usbip_backend import open_device
from usbip_backend.descriptors import (
    ConfigurationDescriptor,
    EndpointDescriptor,
    InterfaceDescriptor,
    parse_configuration,
)
from usbip_backend.sim import Bulk, Device, Interface, SimServer
from usbip_backend.sim.devices import (
    KEYBOARD_REPORT_DESCRIPTOR,
    CdcAcmDevice,
    HidKeyboard,
    IsoDevice,
    LoopbackDevice,
)
from usbip_backend.usb1._descriptors import (
    USBConfiguration,
    USBEndpoint,
    USBInterface,
    USBInterfaceSetting,
    iter_settings,
    split_extra,
)

# libusb_speed
SPEED_FULL, SPEED_HIGH, SPEED_SUPER, SPEED_SUPER_PLUS = 2, 3, 4, 5

IAD = bytes([8, 0x0B, 0, 2, 0x02, 0x02, 0x01, 6])  # interfaces 0..1, CDC/ACM/AT, iFunction 6
CDC_HEADER = bytes([5, 0x24, 0x00, 0x10, 0x01])
CDC_CALL_MANAGEMENT = bytes([5, 0x24, 0x01, 0x00, 0x01])
CDC_ACM = bytes([4, 0x24, 0x02, 0x02])
CDC_UNION = bytes([5, 0x24, 0x06, 0x00, 0x01])
HID = struct.pack("<BBHBBBH", 9, 0x21, 0x0111, 0, 1, 0x22, len(KEYBOARD_REPORT_DESCRIPTOR))
SS_COMPANION = bytes([6, 0x30, 15, 0, 0, 0])


def config_of(device: Device, speed: int = SPEED_HIGH) -> USBConfiguration:
    return USBConfiguration(parse_configuration(device.configuration_descriptor()), speed)


@pytest.fixture
def acm() -> USBConfiguration:
    return config_of(CdcAcmDevice("1-2"))


@pytest.fixture
def hid() -> USBConfiguration:
    return config_of(HidKeyboard("1-3"))


@pytest.fixture
def iso() -> USBConfiguration:
    return config_of(IsoDevice("1-4"))


def check_acm(cfg: USBConfiguration) -> None:
    """The CDC-ACM device's configuration, as CdcAcmDevice declares it."""
    assert cfg.getNumInterfaces() == len(cfg) == 2
    assert cfg.getConfigurationValue() == 1
    assert cfg.getDescriptor() == 0  # no configuration string
    assert cfg.getAttributes() == 0x80
    assert cfg.getMaxPower() == 100
    assert cfg.getExtra() == [IAD]

    comm, data = list(cfg)
    assert len(comm) == 1 and len(data) == 1
    control = comm[0]
    assert control.getNumber() == 0
    assert control.getAlternateSetting() == 0
    assert control.getClassTuple() == (0x02, 0x02)
    assert control.getProtocol() == 0x01
    assert control.getExtra() == [CDC_HEADER, CDC_CALL_MANAGEMENT, CDC_ACM, CDC_UNION]
    (notify,) = control
    assert (notify.getAddress(), notify.getAttributes(), notify.getMaxPacketSize(),
            notify.getInterval()) == (0x83, 0x03, 16, 4)

    bulk = data[0]
    assert bulk.getNumber() == 1
    assert bulk.getClassTuple() == (0x0A, 0x00)
    assert bulk.getExtra() == []
    assert [(ep.getAddress(), ep.getAttributes(), ep.getMaxPacketSize(), ep.getInterval())
            for ep in bulk] == [(0x01, 0x02, 512, 0), (0x81, 0x02, 512, 0)]


# --- USBConfiguration ------------------------------------------------------------------------------
def test_acm_configuration_fields_and_extras(acm):
    check_acm(acm)


def test_string_indexes_are_the_devices(acm):
    dev = CdcAcmDevice("1-2")
    assert dev.get_string(acm[0][0].getDescriptor()) == "CDC ACM control"
    assert dev.get_string(acm[1][0].getDescriptor()) == "CDC ACM data"
    assert dev.get_string(acm.getExtra()[0][7]) == "CDC serial"  # the IAD's iFunction


def test_iteration_and_aliases_yield_interfaces_in_order(acm):
    for interfaces in (list(acm), list(acm.iterInterfaces())):
        assert all(isinstance(i, USBInterface) for i in interfaces)
        assert [i[0].getNumber() for i in interfaces] == [0, 1]
    assert [acm[i][0].getNumber() for i in range(len(acm))] == [0, 1]


@pytest.mark.parametrize("bad", ["0", 0.0, None, slice(0, 1)])
def test_configuration_getitem_non_int_is_type_error(acm, bad):
    with pytest.raises(TypeError, match="interface parameter must be an integer"):
        acm[bad]


@pytest.mark.parametrize("bad", [-1, 2, 255])
def test_configuration_getitem_out_of_range_is_index_error(acm, bad):
    with pytest.raises(IndexError, match=f"No such interface: {bad}"):
        acm[bad]


@pytest.mark.parametrize("speed, expected", [
    (SPEED_FULL, 100), (SPEED_HIGH, 100), (SPEED_SUPER, 400),
    # python-libusb1 compares with SPEED_SUPER only, so SuperSpeedPlus counts 2 mA units
    (SPEED_SUPER_PLUS, 100),
])
def test_max_power_units_by_speed(speed, expected):
    assert config_of(CdcAcmDevice(), speed).getMaxPower() == expected


def test_max_power_full_range():
    class Hungry(LoopbackDevice):
        max_power_ma = 510

    assert config_of(Hungry(), SPEED_HIGH).getMaxPower() == 510
    assert config_of(Hungry(), SPEED_SUPER).getMaxPower() == 255 * 8


def test_configuration_without_extra_has_empty_list(hid):
    assert hid.getExtra() == []


# --- USBInterface ----------------------------------------------------------------------------------
def test_iso_alternate_settings(iso):
    assert len(iso) == 1
    interface = iso[0]
    assert interface.getNumSettings() == len(interface) == 2
    for settings in (list(interface), list(interface.iterSettings())):
        assert all(isinstance(s, USBInterfaceSetting) for s in settings)
        assert [(s.getNumber(), s.getAlternateSetting(), s.getNumEndpoints()) for s in settings] == [
            (0, 0, 0), (0, 1, 2)]
    idle, streaming = interface[0], interface[1]
    assert list(idle) == [] and len(idle) == 0
    assert IsoDevice().get_string(idle.getDescriptor()) == "Isochronous (idle)"
    assert IsoDevice().get_string(streaming.getDescriptor()) == "Isochronous streaming"
    assert [(ep.getAddress(), ep.getAttributes(), ep.getMaxPacketSize(), ep.getInterval())
            for ep in streaming] == [(0x81, 0x05, 1024, 1), (0x01, 0x05, 1024, 1)]


@pytest.mark.parametrize("bad", ["1", 1.0, None])
def test_interface_getitem_non_int_is_type_error(iso, bad):
    with pytest.raises(TypeError, match="alt_setting parameter must be an integer"):
        iso[0][bad]


@pytest.mark.parametrize("bad", [-1, 2])
def test_interface_getitem_out_of_range_is_index_error(iso, bad):
    with pytest.raises(IndexError, match=f"No such setting: {bad}"):
        iso[0][bad]


# --- USBInterfaceSetting ---------------------------------------------------------------------------
def test_hid_setting_fields_and_hid_descriptor_extra(hid):
    (setting,) = hid[0]
    assert setting.getNumber() == 0
    assert setting.getAlternateSetting() == 0
    assert setting.getNumEndpoints() == len(setting) == 2
    assert setting.getClass() == 0x03
    assert setting.getSubClass() == 0x01
    assert setting.getProtocol() == 0x01
    assert setting.getClassTuple() == setting.getClassTupple() == (0x03, 0x01)
    assert HidKeyboard().get_string(setting.getDescriptor()) == "Keyboard"
    (extra,) = setting.getExtra()
    assert extra == HID
    assert isinstance(extra, bytes)
    # indexes to ints as python-libusb1's buffer slices do: wDescriptorLength of the report
    assert extra[7] | (extra[8] << 8) == len(KEYBOARD_REPORT_DESCRIPTOR)
    for endpoints in (list(setting), list(setting.iterEndpoints())):
        assert all(isinstance(ep, USBEndpoint) for ep in endpoints)
        assert [ep.getAddress() for ep in endpoints] == [0x81, 0x02]
    assert setting[0].getAddress() == 0x81 and setting[1].getAddress() == 0x02


@pytest.mark.parametrize("bad", ["0", 0.5, None])
def test_setting_getitem_non_int_is_type_error(hid, bad):
    with pytest.raises(TypeError, match="endpoint parameter must be an integer"):
        hid[0][0][bad]


@pytest.mark.parametrize("bad", [-1, 2, 30])
def test_setting_getitem_out_of_range_is_value_error_as_in_libusb1(hid, bad):
    with pytest.raises(ValueError, match=f"No such endpoint: {bad}") as info:
        hid[0][0][bad]
    assert not isinstance(info.value, IndexError)


# --- USBEndpoint -----------------------------------------------------------------------------------
def test_endpoint_fields_and_extra_from_the_framework():
    class Companion(Device):
        interfaces = [Interface(0, endpoints=[Bulk(0x81, extra=SS_COMPANION + CDC_ACM), Bulk(0x02)])]

    (ep_in, ep_out) = config_of(Companion())[0][0]
    assert ep_in.getExtra() == [SS_COMPANION, CDC_ACM]
    assert ep_out.getExtra() == []
    assert (ep_in.getRefresh(), ep_in.getSyncAddress()) == (0, 0)  # 7-byte descriptors


def test_audio_endpoint_refresh_sync_and_raw_max_packet():
    # a 9-byte (audio class) iso endpoint with bRefresh/bSynchAddress, a high-bandwidth
    # wMaxPacketSize (2 extra transactions), and a class-specific endpoint descriptor after it
    cs_endpoint = bytes([7, 0x25, 0x01, 0x01, 0x00, 0x00, 0x00])
    body = (bytes([9, 0x04, 0, 0, 2, 0x01, 0x02, 0x00, 0])
            + struct.pack("<BBBBHBBB", 9, 0x05, 0x01, 0x05, 0x1400 | 0x0C0, 4, 3, 0x82)
            + cs_endpoint
            + struct.pack("<BBBBHBBB", 9, 0x05, 0x82, 0x11, 3, 1, 5, 0))
    raw = struct.pack("<BBHBBBBB", 9, 0x02, 9 + len(body), 1, 1, 0, 0xC0, 0) + body
    (data, feedback) = USBConfiguration(parse_configuration(raw), SPEED_HIGH)[0][0]
    assert data.getAddress() == 0x01
    assert data.getAttributes() == 0x05
    assert data.getMaxPacketSize() == 0x14C0  # raw, multiplier bits included
    assert data.getInterval() == 4
    assert data.getRefresh() == 3
    assert data.getSyncAddress() == 0x82
    assert data.getExtra() == [cs_endpoint]
    assert (feedback.getAddress(), feedback.getAttributes(), feedback.getRefresh(),
            feedback.getSyncAddress()) == (0x82, 0x11, 5, 0)


# --- getExtra splitting ----------------------------------------------------------------------------
def test_split_extra_returns_bytes_per_descriptor():
    parts = split_extra(list(CDC_HEADER + CDC_ACM))
    assert parts == [CDC_HEADER, CDC_ACM]
    assert all(type(p) is bytes for p in parts)
    assert split_extra([]) == []
    # python-libusb1's get_extra accepts bLength 1 (only 0 and overruns are invalid)
    assert split_extra([1, 2, 0x24]) == [b"\x01", b"\x02\x24"]


@pytest.mark.parametrize("extra, index", [
    ([0, 0x24], 0),  # bLength 0
    ([5, 0x24, 0, 0x10], 0),  # runs past the end
    (list(CDC_ACM) + [0], 1),
    (list(CDC_HEADER + CDC_ACM) + [9, 0x21, 0], 2),
])
def test_split_extra_bad_length_is_value_error(extra, index):
    with pytest.raises(ValueError, match=f"^Extra descriptor {index} is incomplete/invalid$"):
        split_extra(extra)


def test_get_extra_of_corrupt_descriptors_raises_value_error():
    ep = EndpointDescriptor(7, 0x05, 0x81, 0x02, 512, 0, extra_descriptors=[6, 0x30, 0])
    setting = InterfaceDescriptor(9, 0x04, 0, 0, 1, 0xFF, 0, 0, 0,
                                  extra_descriptors=list(CDC_HEADER) + [0, 0x24], endpoints=[ep])
    cfg = ConfigurationDescriptor(9, 0x02, 0, 1, 1, 0, 0x80, 50,
                                  extra_descriptors=list(IAD) + [9, 0x0B], interfaces=[[setting]])
    wrapped = USBConfiguration(cfg, SPEED_HIGH)
    with pytest.raises(ValueError, match="Extra descriptor 1 is incomplete/invalid"):
        wrapped.getExtra()
    with pytest.raises(ValueError, match="Extra descriptor 1 is incomplete/invalid"):
        wrapped[0][0].getExtra()
    with pytest.raises(ValueError, match="Extra descriptor 0 is incomplete/invalid"):
        wrapped[0][0][0].getExtra()
    # the rest of the object still works
    assert wrapped[0][0][0].getAddress() == 0x81


@given(st.lists(st.binary(min_size=1, max_size=40), max_size=8))
def test_split_extra_inverts_concatenation(bodies):
    descriptors = [bytes([len(b) + 1]) + b for b in bodies if len(b) + 1 <= 255]
    assert split_extra(list(b"".join(descriptors))) == descriptors


# --- construction, repr, iter_settings ------------------------------------------------------------
def test_constructors_reject_other_objects():
    cfg = parse_configuration(CdcAcmDevice().configuration_descriptor())
    with pytest.raises(TypeError, match="Unexpected descriptor type"):
        USBConfiguration(cfg.interfaces[0][0], SPEED_HIGH)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="Unexpected descriptor type"):
        USBInterface(cfg.interfaces[0][0])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="Unexpected descriptor type"):
        USBInterfaceSetting(cfg)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="Unexpected descriptor type"):
        USBEndpoint(cfg.interfaces[0][0])  # type: ignore[arg-type]


def test_reprs(acm, iso):
    assert repr(acm) == "<USBConfiguration 1: 2 interfaces, 100 mA>"
    assert repr(acm[0]) == "<USBInterface 0: 1 setting>"
    assert repr(iso[0]) == "<USBInterface 0: 2 settings>"
    assert repr(USBInterface([])) == "<USBInterface: 0 settings>"
    assert repr(acm[0][0]) == "<USBInterfaceSetting 0.0 class 0x02/0x02/0x01, 1 endpoint>"
    assert repr(iso[0][1]) == "<USBInterfaceSetting 0.1 class 0xff/0x00/0x00, 2 endpoints>"
    assert repr(acm[0][0][0]) == "<USBEndpoint 0x83 interrupt 16>"
    assert repr(acm[1][0][1]) == "<USBEndpoint 0x81 bulk 512>"
    assert repr(iso[0][1][1]) == "<USBEndpoint 0x01 isochronous 1024>"


def test_iter_settings_walks_every_configuration(acm, iso, hid):
    got = [(s.getClass(), s.getNumber(), s.getAlternateSetting())
           for s in iter_settings([acm, iso, hid])]
    assert got == [(0x02, 0, 0), (0x0A, 1, 0), (0xFF, 0, 0), (0xFF, 0, 1), (0x03, 0, 0)]
    assert all(isinstance(s, USBInterfaceSetting) for s in iter_settings([iso]))
    assert list(iter_settings([])) == []
    assert list(iter_settings(iter([acm]))) != []  # any iterable, consumed once


def test_hand_built_count_fields_do_not_break_iteration():
    setting = InterfaceDescriptor(9, 0x04, 0, 0, bNumEndpoints=3, bInterfaceClass=0xFF,
                                  bInterfaceSubClass=0, bInterfaceProtocol=0, iInterface=0,
                                  endpoints=[EndpointDescriptor(7, 0x05, 0x81, 0x02, 64, 0)])
    cfg = ConfigurationDescriptor(9, 0x02, 0, bNumInterfaces=4, bConfigurationValue=1,
                                  iConfiguration=0, bmAttributes=0x80, bMaxPower=0,
                                  interfaces=[[setting]])
    wrapped = USBConfiguration(cfg, SPEED_HIGH)
    assert len(wrapped) == 1 and len(wrapped[0][0]) == 1
    assert [ep.getAddress() for s in iter_settings([wrapped]) for ep in s] == [0x81]
    with pytest.raises(IndexError):
        wrapped[1]
    with pytest.raises(ValueError):
        wrapped[0][0][1]


# --- through the network ---------------------------------------------------------------------------
def test_acm_configuration_read_over_usbip():
    with SimServer() as srv:
        dev = open_device("127.0.0.1", srv.port, "1-2")
        try:
            assert dev.descriptor.idProduct == CdcAcmDevice.pid
            cfg = USBConfiguration(dev.configurations[0], SPEED_HIGH)
            check_acm(cfg)
            assert [s.getClass() for s in iter_settings([cfg])] == [0x02, 0x0A]
        finally:
            dev.close()
