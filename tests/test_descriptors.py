"""Golden-byte tests of the pure descriptor parser (usbip_backend.descriptors)."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from usbip_backend.descriptors import (
    ConfigurationDescriptor,
    config_total_length,
    endpoint_max_packet,
    iter_descriptors,
    parse_configuration,
    parse_device_descriptor,
    parse_string_descriptor,
    ss_bytes_per_interval,
)
from usbip_backend.errors import ProtocolError

DEVICE = bytes([
    0x12,        # bLength 18
    0x01,        # bDescriptorType DEVICE
    0x00, 0x02,  # bcdUSB 2.00
    0xEF,        # bDeviceClass misc (IAD)
    0x02,        # bDeviceSubClass common
    0x01,        # bDeviceProtocol IAD
    0x40,        # bMaxPacketSize0 64
    0x3A, 0x30,  # idVendor 0x303A
    0x04, 0x40,  # idProduct 0x4004
    0x00, 0x01,  # bcdDevice 1.00
    0x01,        # iManufacturer
    0x02,        # iProduct
    0x03,        # iSerialNumber
    0x01,        # bNumConfigurations
])

IAD = bytes([0x08, 0x0B, 0x00, 0x02, 0x02, 0x02, 0x01, 0x04])  # first 0, count 2, CDC ACM, iFunction 4
CDC_HEADER = bytes([0x05, 0x24, 0x00, 0x10, 0x01])            # CS_INTERFACE header, bcdCDC 1.10
CDC_CALL_MGMT = bytes([0x05, 0x24, 0x01, 0x00, 0x01])         # call management, data intf 1
CDC_ACM = bytes([0x04, 0x24, 0x02, 0x02])                     # ACM, bmCapabilities 2
CDC_UNION = bytes([0x05, 0x24, 0x06, 0x00, 0x01])             # union: master 0, slave 1

CDC_ACM_CONFIG_BODY = (
    IAD
    # interface 0: CDC communications, 1 endpoint
    + bytes([0x09, 0x04, 0x00, 0x00, 0x01, 0x02, 0x02, 0x01, 0x00])
    + CDC_HEADER + CDC_CALL_MGMT + CDC_ACM + CDC_UNION
    + bytes([0x07, 0x05, 0x83, 0x03, 0x08, 0x00, 0x10])  # EP 0x83 interrupt, 8 bytes, bInterval 16
    # interface 1: CDC data, 2 bulk endpoints
    + bytes([0x09, 0x04, 0x01, 0x00, 0x02, 0x0A, 0x00, 0x00, 0x00])
    + bytes([0x07, 0x05, 0x02, 0x02, 0x40, 0x00, 0x00])  # EP 0x02 bulk OUT 64
    + bytes([0x07, 0x05, 0x82, 0x02, 0x40, 0x00, 0x00])  # EP 0x82 bulk IN 64
)


def config(body: bytes, num_interfaces: int, value: int = 1, total: int | None = None) -> bytes:
    """A configuration descriptor header (wTotalLength computed) followed by ``body``."""
    if total is None:
        total = 9 + len(body)
    return struct.pack("<BBHBBBBB", 9, 2, total, num_interfaces, value, 0, 0x80, 50) + body


CDC_ACM_CONFIG = config(CDC_ACM_CONFIG_BODY, 2)

HID_REPORT_DESC_LEN = 63
HID_DESC = bytes([0x09, 0x21, 0x11, 0x01, 0x00, 0x01, 0x22, HID_REPORT_DESC_LEN, 0x00])
HID_CONFIG = config(
    bytes([0x09, 0x04, 0x00, 0x00, 0x01, 0x03, 0x01, 0x01, 0x00])  # HID boot keyboard
    + HID_DESC
    + bytes([0x07, 0x05, 0x81, 0x03, 0x08, 0x00, 0x0A]),  # EP 0x81 interrupt IN 8, 10 ms
    1,
)

# Audio-streaming style: interface 1 alt 0 has no endpoints, alt 1 has an isochronous endpoint
# of the 9-byte audio form, followed by a class-specific endpoint descriptor.
CS_EP = bytes([0x07, 0x25, 0x01, 0x01, 0x00, 0x00, 0x00])
ALT_CONFIG = config(
    bytes([0x09, 0x04, 0x00, 0x00, 0x00, 0x01, 0x01, 0x00, 0x00])   # control interface, no EPs
    + bytes([0x09, 0x04, 0x01, 0x00, 0x00, 0x01, 0x02, 0x00, 0x00])  # streaming alt 0
    + bytes([0x09, 0x04, 0x01, 0x01, 0x01, 0x01, 0x02, 0x00, 0x05])  # streaming alt 1
    + bytes([0x07, 0x24, 0x01, 0x01, 0x01, 0x01, 0x00])              # CS_INTERFACE AS general
    + bytes([0x09, 0x05, 0x01, 0x05, 0xC0, 0x00, 0x01, 0x00, 0x00])  # EP 0x01 iso async OUT 192
    + CS_EP
    + bytes([0x09, 0x04, 0x01, 0x02, 0x01, 0x01, 0x02, 0x00, 0x00])  # streaming alt 2
    + bytes([0x09, 0x05, 0x01, 0x05, 0x80, 0x01, 0x01, 0x02, 0x03]),  # EP 0x01 iso 384, refresh 2
    2,
)


def test_device_descriptor_fields():
    d = parse_device_descriptor(DEVICE)
    assert (d.bLength, d.bDescriptorType, d.bcdUSB) == (18, 1, 0x0200)
    assert (d.bDeviceClass, d.bDeviceSubClass, d.bDeviceProtocol) == (0xEF, 2, 1)
    assert d.bMaxPacketSize0 == 64
    assert (d.idVendor, d.idProduct, d.bcdDevice) == (0x303A, 0x4004, 0x0100)
    assert (d.iManufacturer, d.iProduct, d.iSerialNumber, d.bNumConfigurations) == (1, 2, 3, 1)
    assert (d.bus, d.address, d.port_number, d.port_numbers, d.speed) == (None, None, None, None, None)


@pytest.mark.parametrize("raw, message", [
    (DEVICE[:17], "truncated"),
    (bytes([0x12, 0x02]) + DEVICE[2:], "not a device descriptor"),
    (bytes([0x08]) + DEVICE[1:], "bLength 8"),
    (b"", "truncated"),
])
def test_device_descriptor_malformed(raw, message):
    with pytest.raises(ProtocolError, match=message):
        parse_device_descriptor(raw)


def test_cdc_acm_configuration_with_iad_and_functional_descriptors():
    cfg = parse_configuration(CDC_ACM_CONFIG)
    assert isinstance(cfg, ConfigurationDescriptor)
    assert (cfg.wTotalLength, cfg.bNumInterfaces, cfg.bConfigurationValue) == (len(CDC_ACM_CONFIG), 2, 1)
    assert (cfg.bmAttributes, cfg.bMaxPower, cfg.iConfiguration) == (0x80, 50, 0)
    # The IAD sits between the configuration and the first interface: the config's extra.
    assert cfg.extra_descriptors == list(IAD)
    assert [len(g) for g in cfg.interfaces] == [1, 1]
    comm = cfg.interfaces[0][0]
    assert (comm.bInterfaceNumber, comm.bAlternateSetting, comm.bNumEndpoints) == (0, 0, 1)
    assert (comm.bInterfaceClass, comm.bInterfaceSubClass, comm.bInterfaceProtocol) == (2, 2, 1)
    # CDC functional descriptors belong to the communications interface, in order.
    assert comm.extra_descriptors == list(CDC_HEADER + CDC_CALL_MGMT + CDC_ACM + CDC_UNION)
    notify = comm.endpoints[0]
    assert (notify.bEndpointAddress, notify.bmAttributes, notify.wMaxPacketSize, notify.bInterval) == (
        0x83, 3, 8, 16)
    assert (notify.bRefresh, notify.bSynchAddress, notify.extra_descriptors) == (0, 0, [])
    data = cfg.interfaces[1][0]
    assert (data.bInterfaceClass, data.bNumEndpoints, data.extra_descriptors) == (0x0A, 2, [])
    assert [(e.bEndpointAddress, e.transfer_type, e.wMaxPacketSize) for e in data.endpoints] == [
        (0x02, 2, 64), (0x82, 2, 64)]
    assert cfg.find_interface(1, 0) is data
    assert cfg.find_interface(1, 1) is None


def test_hid_descriptor_is_interface_extra():
    cfg = parse_configuration(HID_CONFIG)
    intf = cfg.interfaces[0][0]
    assert intf.extra_descriptors == list(HID_DESC)
    # core slices extra_descriptors like the libusb1 backend's ctypes array: a list of ints
    assert intf.extra_descriptors[7] == HID_REPORT_DESC_LEN
    assert cfg.extra_descriptors == []
    (ep,) = intf.endpoints
    assert (ep.bEndpointAddress, ep.bInterval, ep.extra_descriptors) == (0x81, 10, [])


def test_alternate_settings_audio_endpoints_and_endpoint_extra():
    cfg = parse_configuration(ALT_CONFIG)
    assert cfg.bNumInterfaces == 2
    assert [[i.bAlternateSetting for i in g] for g in cfg.interfaces] == [[0], [0, 1, 2]]
    alt0, alt1, alt2 = cfg.interfaces[1]
    assert alt0.endpoints == [] and alt0.bNumEndpoints == 0
    assert alt1.iInterface == 5
    assert alt1.extra_descriptors == [0x07, 0x24, 0x01, 0x01, 0x01, 0x01, 0x00]
    (ep1,) = alt1.endpoints
    assert (ep1.bLength, ep1.transfer_type, ep1.wMaxPacketSize) == (9, 1, 192)
    assert ep1.extra_descriptors == list(CS_EP)  # class-specific endpoint after the endpoint
    (ep2,) = alt2.endpoints
    assert (ep2.wMaxPacketSize, ep2.bRefresh, ep2.bSynchAddress) == (384, 2, 3)


def test_bytes_beyond_wtotallength_are_ignored():
    cfg = parse_configuration(HID_CONFIG + b"\x09\x04garbage")
    assert cfg.wTotalLength == len(HID_CONFIG)
    assert len(cfg.interfaces) == 1


def test_empty_configuration():
    cfg = parse_configuration(config(b"", 0))
    assert (cfg.bNumInterfaces, cfg.interfaces) == (0, [])


def test_count_mismatches_follow_libusb():
    # bNumEndpoints says 3, only 1 present; bNumInterfaces says 4, only 1 present.
    body = bytes([0x09, 0x04, 0x00, 0x00, 0x03, 0xFF, 0, 0, 0]) + bytes([7, 5, 0x81, 2, 64, 0, 0])
    cfg = parse_configuration(config(body, 4))
    assert cfg.bNumInterfaces == 1
    assert cfg.interfaces[0][0].bNumEndpoints == 1


def test_high_bandwidth_max_packet():
    cfg = parse_configuration(config(
        bytes([9, 4, 0, 0, 1, 0xFF, 0, 0, 0]) + bytes([7, 5, 0x81, 1, 0x00, 0x14, 1]), 1))  # 1024 x 3
    ep = cfg.interfaces[0][0].endpoints[0]
    assert ep.wMaxPacketSize == 0x1400
    assert endpoint_max_packet(ep) == 3072


@pytest.mark.parametrize("raw, message", [
    (CDC_ACM_CONFIG[:20], r"truncated: wTotalLength \d+, got 20"),
    (CDC_ACM_CONFIG[:5], "truncated: got 5 bytes"),
    (config(bytes([0x00, 0x24, 0, 0]), 0), "bLength 0"),
    (config(bytes([0x01, 0x24]), 0), "bLength 1"),
    (config(bytes([0x09, 0x04, 0, 0]), 1), "runs past the end"),
    (config(bytes([0x05]), 0), "header truncated"),
    (config(bytes([0x05, 0x04, 0, 0, 0]), 1), "interface descriptor at offset 9 has bLength 5"),
    (config(bytes([0x07, 0x05, 0x81, 2, 64, 0, 0]), 0), "before any interface"),
    (config(bytes([9, 4, 0, 0, 1, 0, 0, 0, 0, 0x06, 0x05, 0x81, 2, 64, 0]), 1), "endpoint descriptor"),
    (config(bytes(DEVICE), 0), "unexpected descriptor type 0x01"),
    (struct.pack("<BBHBBBBB", 9, 4, 9, 0, 1, 0, 0x80, 50), "not a configuration"),
    (struct.pack("<BBHBBBBB", 9, 2, 4, 0, 1, 0, 0x80, 50), "wTotalLength 4 is shorter"),
    (struct.pack("<BBHBBBBB", 4, 2, 9, 0, 1, 0, 0x80, 50), "bLength 4 is below 9"),
])
def test_malformed_configurations(raw, message):
    with pytest.raises(ProtocolError, match=message):
        parse_configuration(raw)


def test_too_many_interfaces_and_endpoints():
    many = b"".join(bytes([9, 4, n, 0, 0, 0xFF, 0, 0, 0]) for n in range(33))
    with pytest.raises(ProtocolError, match="more than 32 interfaces"):
        parse_configuration(config(many, 33))
    eps = bytes([9, 4, 0, 0, 33, 0xFF, 0, 0, 0]) + b"".join(bytes([7, 5, 0x81, 2, 64, 0, 0]) for _ in range(33))
    with pytest.raises(ProtocolError, match="more than 32 endpoints"):
        parse_configuration(config(eps, 1))


def test_config_total_length_and_iter():
    assert config_total_length(CDC_ACM_CONFIG[:9]) == len(CDC_ACM_CONFIG)
    types = [t for _, _, t in iter_descriptors(CDC_ACM_CONFIG)]
    assert types == [2, 0x0B, 4, 0x24, 0x24, 0x24, 0x24, 5, 4, 5, 5]


def test_superspeed_companion_in_endpoint_extra():
    companion = bytes([6, 0x30, 3, 0, 0x00, 0x10])  # bMaxBurst 3, wBytesPerInterval 4096
    cfg = parse_configuration(config(
        bytes([9, 4, 0, 0, 2, 0xFF, 0, 0, 0])
        + bytes([7, 5, 0x81, 1, 0x00, 0x04, 1]) + companion   # iso IN 1024 + companion
        + bytes([7, 5, 0x02, 2, 0x00, 0x04, 0]), 1))          # bulk OUT, no companion
    iso, bulk = cfg.interfaces[0][0].endpoints
    assert iso.extra_descriptors == list(companion)
    assert ss_bytes_per_interval(iso) == 4096
    assert ss_bytes_per_interval(bulk) is None


def test_string_descriptor():
    raw = bytes([2 + 2 * 5, 3]) + "Hello".encode("utf-16-le")
    assert parse_string_descriptor(raw) == "Hello"
    with pytest.raises(ProtocolError):
        parse_string_descriptor(b"\x04\x02ab")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_parse_or_raise_protocol_error(blob):
    """Any input ends in a result or a ProtocolError, never another exception or a hang."""
    for raw in (blob, config(blob, 1), CDC_ACM_CONFIG[:9] + blob):
        try:
            cfg = parse_configuration(raw)
        except ProtocolError:
            continue
        assert cfg.bNumInterfaces == len(cfg.interfaces)
        for group in cfg.interfaces:
            for intf in group:
                assert intf.bNumEndpoints == len(intf.endpoints)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from([IAD, CDC_HEADER, HID_DESC, CS_EP,
                                 bytes([9, 4, 0, 0, 1, 0xFF, 0, 0, 0]),
                                 bytes([9, 4, 1, 1, 1, 0xFF, 0, 0, 0]),
                                 bytes([7, 5, 0x81, 2, 64, 0, 0])]), max_size=20))
def test_every_byte_lands_somewhere(parts):
    """Well-formed streams: every byte is in exactly one descriptor or extra (nothing lost)."""
    body = b"".join(parts)
    first_intf = next((i for i, p in enumerate(parts) if p[1] == 4), None)
    if any(p[1] == 5 for p in parts[:first_intf if first_intf is not None else len(parts)]):
        with pytest.raises(ProtocolError, match="before any interface"):
            parse_configuration(config(body, 1))
        return
    cfg = parse_configuration(config(body, 1))
    accounted = 9 + len(cfg.extra_descriptors)
    for group in cfg.interfaces:
        for intf in group:
            accounted += intf.bLength + len(intf.extra_descriptors)
            accounted += sum(e.bLength + len(e.extra_descriptors) for e in intf.endpoints)
    assert accounted == cfg.wTotalLength
