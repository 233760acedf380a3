"""USB descriptor parser: raw GET_DESCRIPTOR bytes -> PyUSB-shaped descriptor objects.

Pure (no I/O). Field names are the USB specification's, exactly as PyUSB's ``usb.core`` reads
them from a backend (``bDeviceSubClass``, ``bcdUSB`` as an int, ...). Class-specific and unknown
descriptors inside a configuration are kept in ``extra_descriptors`` (a list of ints, as PyUSB's
libusb1 backend exposes them), placed where libusb places them (``descriptor.c``):

* between the configuration descriptor and the first interface -> the configuration's extra
  (e.g. an Interface Association Descriptor);
* between an interface descriptor and its first endpoint (or the next interface) -> that
  interface's extra (CDC functional descriptors, the HID descriptor);
* after an endpoint, up to the next endpoint/interface -> that endpoint's extra (e.g. a
  SuperSpeed endpoint companion, class-specific audio endpoints, or an IAD that precedes the
  next function).

Malformed input (bLength below 2, a descriptor running past the data, a truncated
configuration) raises :class:`~usbip_backend.errors.ProtocolError`. Every loop advances by at
least two bytes, so no input can make the parser loop forever.
"""

from __future__ import annotations

import logging
import struct
from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Optional, Tuple

from .errors import ProtocolError

_log = logging.getLogger(__name__)

# bDescriptorType values (USB 2.0 table 9-5, USB 3.x table 9-6).
DT_DEVICE = 0x01
DT_CONFIG = 0x02
DT_STRING = 0x03
DT_INTERFACE = 0x04
DT_ENDPOINT = 0x05
DT_DEVICE_QUALIFIER = 0x06
DT_OTHER_SPEED_CONFIG = 0x07
DT_INTERFACE_POWER = 0x08
DT_OTG = 0x09
DT_DEBUG = 0x0A
DT_INTERFACE_ASSOCIATION = 0x0B
DT_BOS = 0x0F
DT_HID = 0x21
DT_CS_INTERFACE = 0x24
DT_CS_ENDPOINT = 0x25
DT_SS_ENDPOINT_COMPANION = 0x30

DEVICE_DESCRIPTOR_STRUCT = struct.Struct("<BBHBBBBHHHBBBB")  # 18 bytes
CONFIG_DESCRIPTOR_STRUCT = struct.Struct("<BBHBBBBB")  # 9 bytes
INTERFACE_DESCRIPTOR_STRUCT = struct.Struct("<BBBBBBBBB")  # 9 bytes
ENDPOINT_DESCRIPTOR_STRUCT = struct.Struct("<BBBBHB")  # 7 bytes (9 with bRefresh, bSynchAddress)
AUDIO_ENDPOINT_EXTRA_STRUCT = struct.Struct("<BB")  # bRefresh, bSynchAddress (bLength >= 9)

DEVICE_DESCRIPTOR_SIZE = DEVICE_DESCRIPTOR_STRUCT.size
CONFIG_DESCRIPTOR_SIZE = CONFIG_DESCRIPTOR_STRUCT.size
INTERFACE_DESCRIPTOR_SIZE = INTERFACE_DESCRIPTOR_STRUCT.size
ENDPOINT_DESCRIPTOR_SIZE = ENDPOINT_DESCRIPTOR_STRUCT.size
AUDIO_ENDPOINT_DESCRIPTOR_SIZE = ENDPOINT_DESCRIPTOR_SIZE + AUDIO_ENDPOINT_EXTRA_STRUCT.size

#: Descriptors that end an "extra" run (libusb stops collecting extras at these).
_STRUCTURAL = frozenset({DT_DEVICE, DT_CONFIG, DT_INTERFACE, DT_ENDPOINT})

#: USB allows at most 32 interfaces per configuration and 32 endpoints per interface
#: (16 numbers x 2 directions, endpoint 0 excluded).
MAX_INTERFACES = 32
MAX_ENDPOINTS = 32


@dataclass
class DeviceDescriptor:
    """The 18-byte device descriptor, plus the location fields PyUSB's core reads."""

    bLength: int
    bDescriptorType: int
    bcdUSB: int
    bDeviceClass: int
    bDeviceSubClass: int
    bDeviceProtocol: int
    bMaxPacketSize0: int
    idVendor: int
    idProduct: int
    bcdDevice: int
    iManufacturer: int
    iProduct: int
    iSerialNumber: int
    bNumConfigurations: int
    # Filled by the backend (usb.core.Device copies them): bus number, device address, the
    # port path, and the speed as PyUSB's usb.util.SPEED_* constant. None when unknown.
    bus: Optional[int] = None
    address: Optional[int] = None
    port_number: Optional[int] = None
    port_numbers: Optional[Tuple[int, ...]] = None
    speed: Optional[int] = None
    busid: Optional[str] = None


@dataclass
class EndpointDescriptor:
    """A standard endpoint descriptor (7 bytes, or 9 for audio-class endpoints)."""

    bLength: int
    bDescriptorType: int
    bEndpointAddress: int
    bmAttributes: int
    wMaxPacketSize: int
    bInterval: int
    bRefresh: int = 0
    bSynchAddress: int = 0
    extra_descriptors: List[int] = field(default_factory=list)

    @property
    def transfer_type(self) -> int:
        """0 control, 1 isochronous, 2 bulk, 3 interrupt (bmAttributes bits 1..0)."""
        return self.bmAttributes & 0x03


@dataclass
class InterfaceDescriptor:
    """One alternate setting of an interface, with its endpoints."""

    bLength: int
    bDescriptorType: int
    bInterfaceNumber: int
    bAlternateSetting: int
    bNumEndpoints: int
    bInterfaceClass: int
    bInterfaceSubClass: int
    bInterfaceProtocol: int
    iInterface: int
    extra_descriptors: List[int] = field(default_factory=list)
    endpoints: List[EndpointDescriptor] = field(default_factory=list)


@dataclass
class ConfigurationDescriptor:
    """A full configuration: ``interfaces[i]`` lists interface *i*'s alternate settings."""

    bLength: int
    bDescriptorType: int
    wTotalLength: int
    bNumInterfaces: int
    bConfigurationValue: int
    iConfiguration: int
    bmAttributes: int
    bMaxPower: int
    extra_descriptors: List[int] = field(default_factory=list)
    interfaces: List[List[InterfaceDescriptor]] = field(default_factory=list)

    def find_interface(self, number: int, alt: int) -> Optional[InterfaceDescriptor]:
        """The alternate setting ``alt`` of interface ``bInterfaceNumber == number``, or None."""
        for group in self.interfaces:
            for intf in group:
                if intf.bInterfaceNumber == number and intf.bAlternateSetting == alt:
                    return intf
        return None


def parse_device_descriptor(data: bytes) -> DeviceDescriptor:
    """Parse a device descriptor (GET_DESCRIPTOR(DEVICE) answer, at least 18 bytes)."""
    data = bytes(data)
    if len(data) < DEVICE_DESCRIPTOR_SIZE:
        raise ProtocolError(
            f"device descriptor truncated: got {len(data)} bytes, need {DEVICE_DESCRIPTOR_SIZE}"
        )
    fields = DEVICE_DESCRIPTOR_STRUCT.unpack_from(data)
    desc = DeviceDescriptor(*fields)
    if desc.bDescriptorType != DT_DEVICE:
        raise ProtocolError(
            f"not a device descriptor: bDescriptorType 0x{desc.bDescriptorType:02x} (expected 0x01)"
        )
    if desc.bLength < DEVICE_DESCRIPTOR_SIZE:
        raise ProtocolError(f"device descriptor bLength {desc.bLength} is below {DEVICE_DESCRIPTOR_SIZE}")
    return desc


def config_total_length(header: bytes) -> int:
    """wTotalLength from the first 9 (or more) bytes of a configuration descriptor."""
    header = bytes(header)
    if len(header) < CONFIG_DESCRIPTOR_SIZE:
        raise ProtocolError(
            f"configuration descriptor truncated: got {len(header)} bytes, need {CONFIG_DESCRIPTOR_SIZE}"
        )
    bLength, bDescriptorType, wTotalLength = struct.unpack_from("<BBH", header)
    if bDescriptorType != DT_CONFIG:
        raise ProtocolError(
            f"not a configuration descriptor: bDescriptorType 0x{bDescriptorType:02x} (expected 0x02)"
        )
    if bLength < CONFIG_DESCRIPTOR_SIZE:
        raise ProtocolError(f"configuration descriptor bLength {bLength} is below {CONFIG_DESCRIPTOR_SIZE}")
    if wTotalLength < bLength:
        raise ProtocolError(f"configuration wTotalLength {wTotalLength} is shorter than its bLength {bLength}")
    return wTotalLength


def iter_descriptors(data: bytes, start: int = 0) -> Iterator[Tuple[int, int, int]]:
    """Yield ``(offset, bLength, bDescriptorType)`` for each descriptor in ``data[start:]``.

    Raises ProtocolError on a bLength below 2 or a descriptor running past the end.
    """
    pos = start
    end = len(data)
    while pos < end:
        if end - pos < 2:
            raise ProtocolError(f"descriptor header truncated at offset {pos}: {end - pos} byte(s) left")
        length = data[pos]
        dtype = data[pos + 1]
        if length < 2:
            raise ProtocolError(
                f"invalid descriptor at offset {pos}: bLength {length} (type 0x{dtype:02x}); must be >= 2"
            )
        if pos + length > end:
            raise ProtocolError(
                f"descriptor at offset {pos} (type 0x{dtype:02x}, bLength {length}) runs past the end "
                f"of the data ({end} bytes)"
            )
        yield pos, length, dtype
        pos += length


def parse_configuration(data: bytes) -> ConfigurationDescriptor:
    """Parse a full configuration (GET_DESCRIPTOR(CONFIGURATION) with wTotalLength bytes).

    Bytes beyond wTotalLength are ignored; fewer than wTotalLength raise ProtocolError.
    Interfaces are grouped by bInterfaceNumber in order of first appearance; each group lists
    the alternate settings in the order they appear (libusb's ``interface[i].altsetting[j]``).
    """
    data = bytes(data)
    total = config_total_length(data)
    if len(data) < total:
        raise ProtocolError(
            f"configuration descriptor truncated: wTotalLength {total}, got {len(data)} bytes"
        )
    data = data[:total]
    cfg = ConfigurationDescriptor(*CONFIG_DESCRIPTOR_STRUCT.unpack_from(data))

    groups: Dict[int, List[InterfaceDescriptor]] = {}
    current_intf: Optional[InterfaceDescriptor] = None
    current_ep: Optional[EndpointDescriptor] = None
    for pos, length, dtype in iter_descriptors(data, cfg.bLength):
        raw = data[pos:pos + length]
        if dtype == DT_INTERFACE:
            if length < INTERFACE_DESCRIPTOR_SIZE:
                raise ProtocolError(
                    f"interface descriptor at offset {pos} has bLength {length}, need {INTERFACE_DESCRIPTOR_SIZE}"
                )
            _close_interface(current_intf)
            current_intf = InterfaceDescriptor(*INTERFACE_DESCRIPTOR_STRUCT.unpack_from(raw))
            current_ep = None
            group = groups.get(current_intf.bInterfaceNumber)
            if group is None:
                if len(groups) >= MAX_INTERFACES:
                    raise ProtocolError(f"configuration has more than {MAX_INTERFACES} interfaces")
                group = groups[current_intf.bInterfaceNumber] = []
            group.append(current_intf)
        elif dtype == DT_ENDPOINT:
            if length < ENDPOINT_DESCRIPTOR_SIZE:
                raise ProtocolError(
                    f"endpoint descriptor at offset {pos} has bLength {length}, need {ENDPOINT_DESCRIPTOR_SIZE}"
                )
            if current_intf is None:
                raise ProtocolError(f"endpoint descriptor at offset {pos} comes before any interface descriptor")
            current_ep = EndpointDescriptor(*ENDPOINT_DESCRIPTOR_STRUCT.unpack_from(raw))
            if length >= AUDIO_ENDPOINT_DESCRIPTOR_SIZE:
                current_ep.bRefresh, current_ep.bSynchAddress = AUDIO_ENDPOINT_EXTRA_STRUCT.unpack_from(
                    raw, ENDPOINT_DESCRIPTOR_SIZE)
            if len(current_intf.endpoints) >= MAX_ENDPOINTS:
                raise ProtocolError(
                    f"interface {current_intf.bInterfaceNumber} alt {current_intf.bAlternateSetting} "
                    f"has more than {MAX_ENDPOINTS} endpoints"
                )
            current_intf.endpoints.append(current_ep)
        elif dtype in (DT_DEVICE, DT_CONFIG):
            raise ProtocolError(f"unexpected descriptor type 0x{dtype:02x} at offset {pos} inside a configuration")
        else:
            # Class-specific or unknown: attach to the closest preceding structural descriptor.
            target = current_ep if current_ep is not None else current_intf if current_intf is not None else cfg
            target.extra_descriptors.extend(raw)
    _close_interface(current_intf)

    cfg.interfaces = list(groups.values())
    if cfg.bNumInterfaces != len(cfg.interfaces):
        _log.warning(
            "configuration %d declares bNumInterfaces %d but contains %d interface(s); using %d",
            cfg.bConfigurationValue, cfg.bNumInterfaces, len(cfg.interfaces), len(cfg.interfaces),
        )
        cfg.bNumInterfaces = len(cfg.interfaces)
    return cfg


def _close_interface(intf: Optional[InterfaceDescriptor]) -> None:
    """Make bNumEndpoints agree with the endpoints found (libusb truncates it the same way)."""
    if intf is not None and intf.bNumEndpoints != len(intf.endpoints):
        _log.warning(
            "interface %d alt %d declares bNumEndpoints %d but has %d endpoint descriptor(s)",
            intf.bInterfaceNumber, intf.bAlternateSetting, intf.bNumEndpoints, len(intf.endpoints),
        )
        intf.bNumEndpoints = len(intf.endpoints)


def endpoint_max_packet(ep: EndpointDescriptor) -> int:
    """Bytes per (micro)frame: wMaxPacketSize bits 10..0 times (1 + bits 12..11) (high bandwidth)."""
    size = ep.wMaxPacketSize & 0x7FF
    mult = ((ep.wMaxPacketSize >> 11) & 0x3) + 1
    return size * mult


def ss_bytes_per_interval(ep: EndpointDescriptor) -> Optional[int]:
    """wBytesPerInterval of the endpoint's SuperSpeed companion descriptor, if it has one."""
    extra = ep.extra_descriptors
    pos = 0
    while pos + 6 <= len(extra):
        length = extra[pos]
        if length < 2:
            return None
        if extra[pos + 1] == DT_SS_ENDPOINT_COMPANION and length >= 6:
            return extra[pos + 4] | (extra[pos + 5] << 8)
        pos += length
    return None


def parse_string_descriptor(data: bytes) -> str:
    """Decode a string descriptor (UTF-16LE) for diagnostics; index 0 (LANGIDs) is not text."""
    data = bytes(data)
    if len(data) < 2 or data[1] != DT_STRING:
        raise ProtocolError("not a string descriptor")
    length = min(data[0], len(data))
    return data[2:length - (length % 2)].decode("utf-16-le", errors="replace")
