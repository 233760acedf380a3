"""Golden-byte tests of the pure descriptor parser (usbip_backend.descriptors)."""

from __future__ import annotations

import logging
import re
import struct
import tracemalloc

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from usbip_backend.descriptors import (
    USB_MAXALTSETTING,
    USB_MAXCONFIG,
    USB_MAXENDPOINTS,
    USB_MAXINTERFACES,
    ConfigurationDescriptor,
    config_total_length,
    configurations_to_read,
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


def intf(number: int, alt: int, num_endpoints: int) -> bytes:
    """A 9-byte vendor-specific interface descriptor."""
    return bytes([0x09, 0x04, number, alt, num_endpoints, 0xFF, 0x00, 0x00, 0x00])


def ep(address: int, attributes: int = 0x02) -> bytes:
    """A 7-byte endpoint descriptor (bulk unless told), wMaxPacketSize 64, bInterval 0."""
    return bytes([0x07, 0x05, address, attributes, 0x40, 0x00, 0x00])


#: The 30 endpoint addresses one alternate setting can use: OUT 0x01..0x0F, IN 0x81..0x8F.
ADDRESSES = [*range(0x01, 0x10), *range(0x81, 0x90)]


def parser_warnings(caplog) -> list:
    return [r.getMessage() for r in caplog.records
            if r.name == "usbip_backend.descriptors" and r.levelno == logging.WARNING]

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


def test_too_many_interfaces_keeps_the_first_32_like_linux(caplog):
    # 33 interface numbers, 32 down to 0. Linux keeps the first 32 to appear (config.c), so
    # interface 0 goes, with its class-specific descriptor and endpoint; a later altsetting of
    # a kept interface is parsed again.
    body = (
        b"".join(intf(n, 0, 0) for n in range(32, 0, -1))
        + intf(0, 0, 1) + CDC_HEADER + ep(0x81) + CS_EP  # the 33rd interface: ignored
        + intf(5, 1, 1) + ep(0x82)                       # interface 5 alt 1: kept
    )
    with caplog.at_level(logging.WARNING, logger="usbip_backend.descriptors"):
        cfg = parse_configuration(config(body, 33))
    assert USB_MAXINTERFACES == 32
    assert [g[0].bInterfaceNumber for g in cfg.interfaces] == list(range(32, 0, -1))
    assert cfg.bNumInterfaces == 32
    five = cfg.interfaces[32 - 5]
    assert [a.bAlternateSetting for a in five] == [0, 1]
    assert [e.bEndpointAddress for e in five[1].endpoints] == [0x82]
    everything = [a for g in cfg.interfaces for a in g]
    assert all(a.extra_descriptors == [] for a in everything)
    assert [e.bEndpointAddress for a in everything for e in a.endpoints] == [0x82]
    assert parser_warnings(caplog) == [
        "config 1 has too many interfaces: 33, using maximum allowed: 32 (1 interface descriptor(s) ignored)",
        "configuration 1 declares bNumInterfaces 33 but contains 32 interface(s); using 32",
    ]


@pytest.mark.parametrize("alternate_settings", [129, 256])
def test_too_many_alternate_settings_keeps_the_first_128_like_linux(caplog, alternate_settings):
    # Interface 0 has alternate settings 0..n-1, each with bulk IN 0x81; those from 128 on also
    # carry a class-specific descriptor and bulk IN 0x82, ignored with them. Interface 1 follows.
    body = (
        b"".join(intf(0, a, 1) + ep(0x81) for a in range(128))
        + b"".join(intf(0, a, 2) + CDC_HEADER + ep(0x81) + ep(0x82) + CS_EP
                   for a in range(128, alternate_settings))
        + intf(1, 0, 1) + ep(0x02)
    )
    with caplog.at_level(logging.WARNING, logger="usbip_backend.descriptors"):
        cfg = parse_configuration(config(body, 2))
    assert USB_MAXALTSETTING == 128
    first, second = cfg.interfaces
    assert [a.bAlternateSetting for a in first] == list(range(128))
    assert all([e.bEndpointAddress for e in a.endpoints] == [0x81] for a in first)
    assert all(a.extra_descriptors == [] and a.endpoints[0].extra_descriptors == [] for a in first)
    (data,) = second
    assert (data.bInterfaceNumber, [e.bEndpointAddress for e in data.endpoints]) == (1, [0x02])
    # One warning however many were ignored.
    assert parser_warnings(caplog) == [
        f"too many alternate settings for config 1 interface 0: {alternate_settings}, using maximum "
        f"allowed: 128 ({alternate_settings - 128} interface descriptor(s) ignored in all)",
    ]


def test_too_many_endpoints_keeps_the_first_30_like_linux(caplog):
    # Alternate settings 0 and 1 of interface 0 each declare and carry 31 endpoints: the 30
    # addresses an altsetting can have, then a 31st (0x81 again) followed by a class-specific
    # endpoint descriptor; Linux checks the limit first and skips both. Interface 1 follows
    # (without endpoints: interface 0 uses every address).
    def alt(a: int) -> bytes:
        return intf(0, a, 31) + b"".join(ep(x) for x in ADDRESSES) + ep(0x81) + CS_EP

    body = alt(0) + alt(1) + intf(1, 0, 0) + CDC_HEADER
    with caplog.at_level(logging.WARNING, logger="usbip_backend.descriptors"):
        cfg = parse_configuration(config(body, 2))
    assert USB_MAXENDPOINTS == 30
    alts = cfg.interfaces[0]
    assert [a.bAlternateSetting for a in alts] == [0, 1]
    for a in alts:
        assert [e.bEndpointAddress for e in a.endpoints] == ADDRESSES
        assert a.bNumEndpoints == 30
        assert all(e.extra_descriptors == [] for e in a.endpoints)  # CS_EP went with the 31st
    assert cfg.interfaces[1][0].extra_descriptors == list(CDC_HEADER)
    assert parser_warnings(caplog) == [
        "too many endpoints for config 1 interface 0 altsetting 0: 31, using maximum allowed: 30 "
        "(2 altsetting(s) affected)",
    ]


DUPLICATES_BODY = (
    intf(0, 0, 3) + ep(0x81) + ep(0x82)
    + ep(0x81) + CS_EP                        # 0x81 again in this altsetting: ignored, CS_EP too
    + intf(0, 1, 1) + ep(0x81)                # another altsetting of interface 0 may reuse 0x81
    + intf(0, 0, 1) + CDC_HEADER + ep(0x83)   # altsetting 0 again: ignored with all that follows
    + intf(1, 0, 5) + ep(0x01)
    + ep(0x81)                                # interface 0 uses 0x81: ignored
    + ep(0x91)                                # reserved bit 4 set: still 0x81, ignored
    + ep(0x02, attributes=0x00)               # control endpoint 2 while interface 0 has 0x82: ignored
    + ep(0x83)                                # 0x83 was only in the ignored altsetting: kept
)
DUPLICATES_IGNORED_BYTES = 7 + len(CS_EP) + 9 + len(CDC_HEADER) + 7 + 3 * 7


def test_duplicate_altsettings_and_endpoints_are_skipped_like_linux(caplog):
    with caplog.at_level(logging.WARNING, logger="usbip_backend.descriptors"):
        cfg = parse_configuration(config(DUPLICATES_BODY, 2))
    zero, one = cfg.interfaces
    assert [(a.bAlternateSetting, [e.bEndpointAddress for e in a.endpoints]) for a in zero] == [
        (0, [0x81, 0x82]), (1, [0x81])]
    assert [(a.bAlternateSetting, [e.bEndpointAddress for e in a.endpoints]) for a in one] == [
        (0, [0x01, 0x83])]
    assert [a.bNumEndpoints for a in zero + one] == [2, 1, 2]
    assert all(a.extra_descriptors == [] for a in zero + one)
    assert all(e.extra_descriptors == [] for a in zero + one for e in a.endpoints)
    # Nothing else is lost: kept descriptors and extras cover all but the ignored bytes.
    accounted = 9 + sum(a.bLength + sum(e.bLength for e in a.endpoints) for a in zero + one)
    assert accounted == cfg.wTotalLength - DUPLICATES_IGNORED_BYTES
    # One warning per kind, naming the first and counting all; declared counts matched what was
    # present, so no bNumEndpoints warning.
    assert parser_warnings(caplog) == [
        "config 1 interface 0 altsetting 0 has a duplicate endpoint with address 0x81, skipping "
        "(4 duplicate(s) in all)",
        "Duplicate descriptor for config 1 interface 0 altsetting 0, skipping (1 duplicate(s) in all)",
    ]


def test_endpoint_count_mismatches_warn_once_per_configuration(caplog):
    # 200 alternate settings each declaring 2 endpoints and having none: one warning, not 200.
    body = b"".join(intf(0, a, 2) for a in range(128)) + b"".join(intf(1, a, 2) for a in range(72))
    with caplog.at_level(logging.WARNING, logger="usbip_backend.descriptors"):
        cfg = parse_configuration(config(body, 2))
    assert all(a.bNumEndpoints == 0 for g in cfg.interfaces for a in g)
    assert parser_warnings(caplog) == [
        "config 1 interface 0 altsetting 0 has 0 endpoint descriptor(s), different from the "
        "interface descriptor's value: 2 (200 altsetting(s) differ)",
    ]


@pytest.mark.parametrize("declared, read", [(0, 0), (1, 1), (8, 8), (9, 8), (255, 8)])
def test_configurations_to_read_caps_at_8_like_linux(caplog, declared, read):
    with caplog.at_level(logging.WARNING, logger="usbip_backend.descriptors"):
        assert configurations_to_read(declared) == read
    assert USB_MAXCONFIG == 8
    expected = [] if declared <= 8 else [f"too many configurations: {declared}, using maximum allowed: 8"]
    assert parser_warnings(caplog) == expected


@pytest.mark.parametrize("declared", [-1, 256])
def test_configurations_to_read_rejects_non_u8(declared):
    with pytest.raises(ValueError, match="u8"):
        configurations_to_read(declared)


def worst_case_configuration() -> bytes:
    """65535 bytes (wTotalLength's maximum) past every limit, as a hostile device could send.

    Kept objects, not bytes, are what cost memory, so it maximises what survives the limits:
    interface 0 has 130 altsettings of 31 endpoints (128 x 30 kept), interfaces 1..30 have 129
    endpoint-less altsettings (128 kept), interface 31 has 100 and a duplicate, interfaces 32
    and 33 are one too many, and 2-byte unknown descriptors fill the rest (kept as extra).
    """
    body = b"".join(intf(0, a, 31) + b"".join(ep(x) for x in ADDRESSES) + ep(0x81) for a in range(130))
    body += b"".join(intf(n, a, 0) for n in range(1, 31) for a in range(129))
    body += b"".join(intf(31, a, 0) for a in range(100))
    body += intf(32, 0, 0) + intf(33, 0, 0) + intf(31, 0, 0) + intf(31, 100, 0)
    filler = 0xFFFF - 9 - len(body)
    assert filler >= 0 and filler % 2 == 0
    return config(body + bytes([0x02, 0xFF]) * (filler // 2), 34)


#: About 3.6x the tracemalloc peak measured for the configuration above (2.2 MiB, CPython
#: 3.11, 64-bit): enumeration holds at most USB_MAXCONFIG of these.
WORST_CASE_PEAK_BOUND = 8 * 2**20


def test_worst_case_configuration_is_bounded(caplog):
    raw = worst_case_configuration()
    assert len(raw) == 0xFFFF
    already = tracemalloc.is_tracing()
    if not already:
        tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        before = tracemalloc.get_traced_memory()[0]
        with caplog.at_level(logging.WARNING, logger="usbip_backend.descriptors"):
            cfg = parse_configuration(raw)
        peak = tracemalloc.get_traced_memory()[1] - before
    finally:
        if not already:
            tracemalloc.stop()
    assert peak < WORST_CASE_PEAK_BOUND
    # Exactly Linux's limits were kept (work is linear in what is kept and skipped).
    assert [len(g) for g in cfg.interfaces] == [USB_MAXALTSETTING] * 31 + [101]
    assert cfg.bNumInterfaces == USB_MAXINTERFACES
    assert [len(a.endpoints) for a in cfg.interfaces[0]] == [USB_MAXENDPOINTS] * USB_MAXALTSETTING
    assert sum(len(a.endpoints) for g in cfg.interfaces for a in g) == 3840
    assert cfg.interfaces[31][-1].extra_descriptors == [0x02, 0xFF] * 190
    assert parser_warnings(caplog) == [
        "too many endpoints for config 1 interface 0 altsetting 0: 31, using maximum allowed: 30 "
        "(128 altsetting(s) affected)",
        "too many alternate settings for config 1 interface 0: 130, using maximum allowed: 128 "
        "(32 interface descriptor(s) ignored in all)",
        "config 1 has too many interfaces: 34, using maximum allowed: 32 (2 interface descriptor(s) ignored)",
        "Duplicate descriptor for config 1 interface 31 altsetting 0, skipping (1 duplicate(s) in all)",
        "configuration 1 declares bNumInterfaces 34 but contains 32 interface(s); using 32",
    ]


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


_WARNING_KINDS = re.compile(
    r"config \d+ has too many interfaces|too many alternate settings|too many endpoints"
    r"|Duplicate descriptor|has a duplicate endpoint|endpoint descriptor\(s\), different"
    r"|declares bNumInterfaces")


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(
    st.tuples(st.just(4), st.integers(0, 2), st.integers(0, 2), st.integers(0, 3)),
    st.tuples(st.just(5), st.sampled_from([0x01, 0x81, 0x02, 0x82, 0x91]), st.sampled_from([0, 2, 3])),
    st.just((0x24,)),
), max_size=40))
def test_duplicates_never_raise_and_are_never_kept(parts):
    """Any mix of repeated interfaces and endpoints parses: limits hold, each warning once."""
    body = intf(0, 0, 0)
    for part in parts:
        if part[0] == 4:
            body += intf(*part[1:])
        elif part[0] == 5:
            body += ep(part[1], part[2])
        else:
            body += CDC_HEADER
    logger = logging.getLogger("usbip_backend.descriptors")
    handler = _Collect()  # caplog is function-scoped: hypothesis needs a fresh one per example
    logger.addHandler(handler)
    try:
        cfg = parse_configuration(config(body, 1))
    finally:
        logger.removeHandler(handler)
    owners: dict = {}
    for group in cfg.interfaces:
        number = group[0].bInterfaceNumber
        assert [a.bInterfaceNumber for a in group] == [number] * len(group)
        assert len({a.bAlternateSetting for a in group}) == len(group)
        for alt in group:
            addresses = [e.bEndpointAddress & 0x8F for e in alt.endpoints]
            assert len(set(addresses)) == len(addresses) and alt.bNumEndpoints == len(addresses)
            controls = [e.bEndpointAddress & 0x0F for e in alt.endpoints if e.transfer_type == 0]
            numbers = [e.bEndpointAddress & 0x0F for e in alt.endpoints]
            assert all(numbers.count(n) == 1 for n in controls)
            for a in addresses:
                owners.setdefault(a, set()).add(number)
    assert all(len(users) == 1 for users in owners.values())
    kinds = [_WARNING_KINDS.search(r.getMessage()).group(0) for r in handler.records]
    assert len(kinds) == len(set(kinds))


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
@given(st.lists(st.sampled_from(["iad", "cdc", "hid", "cs_ep", "intf0", "intf1", "ep"]), max_size=20))
def test_every_byte_lands_somewhere(parts):
    """Well-formed streams (no duplicates, within the limits): every byte is in exactly one
    descriptor or extra (nothing lost)."""
    extras = {"iad": IAD, "cdc": CDC_HEADER, "hid": HID_DESC, "cs_ep": CS_EP}
    next_alt = {"intf0": 0, "intf1": 0}
    addresses = iter(ADDRESSES)
    chunks = []
    for part in parts:
        if part in next_alt:
            chunks.append(intf(int(part[-1]), next_alt[part], 1))
            next_alt[part] += 1
        elif part == "ep":
            chunks.append(ep(next(addresses)))
        else:
            chunks.append(extras[part])
    body = b"".join(chunks)
    first_intf = next((i for i, p in enumerate(chunks) if p[1] == 4), None)
    if any(p[1] == 5 for p in chunks[:first_intf if first_intf is not None else len(chunks)]):
        with pytest.raises(ProtocolError, match="before any interface"):
            parse_configuration(config(body, 1))
        return
    cfg = parse_configuration(config(body, 1))
    accounted = 9 + len(cfg.extra_descriptors)
    for group in cfg.interfaces:
        for alt in group:
            accounted += alt.bLength + len(alt.extra_descriptors)
            accounted += sum(e.bLength + len(e.extra_descriptors) for e in alt.endpoints)
    assert accounted == cfg.wTotalLength
