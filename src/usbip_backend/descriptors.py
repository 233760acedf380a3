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

Counts are bounded the way Linux bounds them (``drivers/usb/core/config.c``): at most
:data:`USB_MAXINTERFACES` interfaces per configuration, :data:`USB_MAXALTSETTING` alternate
settings per interface and :data:`USB_MAXENDPOINTS` endpoints per alternate setting; enumeration
reads at most :data:`USB_MAXCONFIG` configurations (:func:`configurations_to_read`). What lies
beyond a limit, and duplicate alternate settings or endpoints, is ignored with one warning per
kind per configuration (a hostile device could otherwise flood the log), never an error: real
devices get these wrong and work on Linux. With wTotalLength a u16, this bounds what
enumerating one device allocates.
"""

from __future__ import annotations

import logging
import struct
from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Optional, Set, Tuple, Union

from .errors import ProtocolError

_log = logging.getLogger(__name__)

from .ch9 import (  # noqa: F401 - the descriptor types, importable from here as before
    DT_BOS, DT_CONFIG, DT_CS_ENDPOINT, DT_CS_INTERFACE, DT_DEBUG, DT_DEVICE, DT_DEVICE_QUALIFIER, DT_ENDPOINT, DT_HID,
    DT_INTERFACE, DT_INTERFACE_ASSOCIATION, DT_INTERFACE_POWER, DT_OTG, DT_OTHER_SPEED_CONFIG,
    DT_SS_ENDPOINT_COMPANION, DT_STRING,
)

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

# Limits of Linux's drivers/usb/core/config.c (and include/linux/usb.h), same names.
#: Configurations read from one device ("arbitrary limit" in config.c).
USB_MAXCONFIG = 8
#: Interfaces (distinct bInterfaceNumber) kept per configuration.
USB_MAXINTERFACES = 32
#: Alternate settings kept per interface ("hard limit" in config.c).
USB_MAXALTSETTING = 128
#: Endpoints kept per alternate setting: 15 numbers x 2 directions, endpoint 0 excluded.
USB_MAXENDPOINTS = 30

#: bEndpointAddress bits that name an endpoint (direction, number); Linux clears the others
#: before comparing addresses.
_EP_ADDRESS_MASK = 0x8F
_EP_NUMBER_MASK = 0x0F


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
    # Filled by device.read_descriptors (usb.core.Device copies them): bus number, device
    # address, the port path, and the speed as libusb's (= PyUSB's usb.util.SPEED_*) number.
    # None when unknown.
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
    bLength, bDescriptorType, wTotalLength = header[0], header[1], header[2] | (header[3] << 8)
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


def configurations_to_read(bNumConfigurations: int) -> int:
    """How many configurations enumeration reads: ``bNumConfigurations``, at most USB_MAXCONFIG.

    Linux (``usb_get_configuration()`` in drivers/usb/core/config.c) ignores the ones beyond
    USB_MAXCONFIG with a warning; reading all 255 a device may claim costs up to 255 transfers of
    64 KiB and their parsed objects.
    """
    if not 0 <= bNumConfigurations <= 0xFF:
        raise ValueError(f"bNumConfigurations is a u8, got {bNumConfigurations}")
    if bNumConfigurations > USB_MAXCONFIG:
        _log.warning("too many configurations: %d, using maximum allowed: %d",
                     bNumConfigurations, USB_MAXCONFIG)
        return USB_MAXCONFIG
    return bNumConfigurations


def parse_configuration(data: bytes) -> ConfigurationDescriptor:
    """Parse a full configuration (GET_DESCRIPTOR(CONFIGURATION) with wTotalLength bytes).

    Bytes beyond wTotalLength are ignored; fewer than wTotalLength raise ProtocolError.
    Interfaces are grouped by bInterfaceNumber in order of first appearance; each group lists
    the alternate settings in the order they appear (libusb's ``interface[i].altsetting[j]``).

    Like Linux (drivers/usb/core/config.c), this keeps the first USB_MAXINTERFACES interface
    numbers, the first USB_MAXALTSETTING alternate settings of each, and the first
    USB_MAXENDPOINTS endpoints of each alternate setting; it skips an alternate setting whose
    number its interface already has, and an endpoint whose address the same alternate setting
    or another interface already uses. A skipped interface descriptor takes everything up to the
    next interface descriptor with it (its endpoints and class-specific descriptors); a skipped
    endpoint takes everything up to the next endpoint or interface descriptor. Each kind of
    skip logs one warning per configuration. bNumInterfaces and bNumEndpoints are set to what
    was kept.
    """
    data = bytes(data)
    total = config_total_length(data)
    if len(data) < total:
        raise ProtocolError(
            f"configuration descriptor truncated: wTotalLength {total}, got {len(data)} bytes"
        )
    data = data[:total]
    cfg = ConfigurationDescriptor(*CONFIG_DESCRIPTOR_STRUCT.unpack_from(data))
    parser = _ConfigParser(cfg)
    for pos, length, dtype in iter_descriptors(data, cfg.bLength):
        if dtype == DT_INTERFACE:
            parser.interface(data, pos, length)
        elif dtype == DT_ENDPOINT:
            parser.endpoint(data, pos, length)
        elif dtype in (DT_DEVICE, DT_CONFIG):
            raise ProtocolError(f"unexpected descriptor type 0x{dtype:02x} at offset {pos} inside a configuration")
        else:
            parser.extra(data[pos:pos + length])
    parser.finish()
    return cfg


# What the parser discards, until the next descriptor that ends it (config.c's
# find_next_descriptor() after a skipped descriptor).
_KEEP = 0
_DROP_TO_ENDPOINT = 1  # after a skipped endpoint: up to the next endpoint or interface
_DROP_TO_INTERFACE = 2  # after a skipped interface descriptor: up to the next interface

# Kinds of ignored descriptors, each logged once per configuration.
_TOO_MANY_INTERFACES = "interfaces"
_TOO_MANY_ALTSETTINGS = "altsettings"
_TOO_MANY_ENDPOINTS = "endpoints"
_DUPLICATE_ALTSETTING = "duplicate altsetting"
_DUPLICATE_ENDPOINT = "duplicate endpoint"
_ENDPOINT_COUNT_MISMATCH = "bNumEndpoints"


def _used_elsewhere(owners: Dict[int, Set[int]], key: int, inum: int) -> bool:
    """Whether an interface other than ``inum`` owns ``key``."""
    users = owners.get(key)
    return users is not None and (len(users) > 1 or inum not in users)


class _ConfigParser:
    """State of one parse_configuration(): where descriptors go, what is ignored and why.

    Every lookup is a dict or set access, so parsing stays linear in wTotalLength.
    """

    def __init__(self, cfg: ConfigurationDescriptor) -> None:
        self.cfg = cfg
        self.groups: Dict[int, List[InterfaceDescriptor]] = {}
        self.alt_numbers: Dict[int, Set[int]] = {}  # bAlternateSetting values kept, per interface
        self.intf_descriptors: Dict[int, int] = {}  # interface descriptors seen, per interface
        self.seen_interface = False
        self.intf: Optional[InterfaceDescriptor] = None  # None after a skipped interface descriptor
        self.ep: Optional[EndpointDescriptor] = None
        self.drop = _KEEP
        # The current alternate setting: endpoint descriptors seen (kept or not), whether some
        # were beyond USB_MAXENDPOINTS, and the masked addresses / numbers of those kept.
        self.present = 0
        self.capped = False
        self.alt_addresses: Set[int] = set()
        self.alt_numbers_used: Set[int] = set()
        self.alt_control_numbers: Set[int] = set()
        # The same over every kept alternate setting: which interfaces use each.
        self.address_owners: Dict[int, Set[int]] = {}
        self.number_owners: Dict[int, Set[int]] = {}
        self.control_number_owners: Dict[int, Set[int]] = {}
        self.ignored: Dict[str, int] = {}  # kind -> how many
        self.first: Dict[str, Tuple[int, ...]] = {}  # kind -> details of the first one

    def interface(self, data: bytes, pos: int, length: int) -> None:
        if length < INTERFACE_DESCRIPTOR_SIZE:
            raise ProtocolError(
                f"interface descriptor at offset {pos} has bLength {length}, need {INTERFACE_DESCRIPTOR_SIZE}"
            )
        self._close_altsetting()
        self.seen_interface = True
        self.drop = _KEEP
        inum, alt = data[pos + 2], data[pos + 3]
        self.intf_descriptors[inum] = self.intf_descriptors.get(inum, 0) + 1
        group = self.groups.get(inum)
        # usb_parse_configuration(): the first USB_MAXINTERFACES interface numbers to appear;
        # usb_parse_interface(): the altsetting limit is checked before duplicates.
        if group is None and len(self.groups) >= USB_MAXINTERFACES:
            self._drop_interface(_TOO_MANY_INTERFACES, inum, alt)
            return
        if group is not None and len(group) >= USB_MAXALTSETTING:
            self._drop_interface(_TOO_MANY_ALTSETTINGS, inum, alt)
            return
        if group is not None and alt in self.alt_numbers[inum]:
            self._drop_interface(_DUPLICATE_ALTSETTING, inum, alt)
            return
        if group is None:
            group = self.groups[inum] = []
            self.alt_numbers[inum] = set()
        intf = InterfaceDescriptor(*INTERFACE_DESCRIPTOR_STRUCT.unpack_from(data, pos))
        group.append(intf)
        self.alt_numbers[inum].add(alt)
        self.intf = intf
        self.present = 0
        self.capped = False
        self.alt_addresses = set()
        self.alt_numbers_used = set()
        self.alt_control_numbers = set()

    def endpoint(self, data: bytes, pos: int, length: int) -> None:
        if length < ENDPOINT_DESCRIPTOR_SIZE:
            raise ProtocolError(
                f"endpoint descriptor at offset {pos} has bLength {length}, need {ENDPOINT_DESCRIPTOR_SIZE}"
            )
        if not self.seen_interface:
            raise ProtocolError(f"endpoint descriptor at offset {pos} comes before any interface descriptor")
        intf = self.intf
        if intf is None:
            return  # belongs to a skipped interface descriptor: skipped with it
        self.present += 1
        self.ep = None
        self.drop = _KEEP
        address, attributes = data[pos + 2], data[pos + 3]
        # usb_parse_endpoint(): the count limit is checked before duplicates.
        if len(intf.endpoints) >= USB_MAXENDPOINTS:
            self.capped = True
            self.drop = _DROP_TO_ENDPOINT
            return
        if self._is_duplicate(address, attributes, intf.bInterfaceNumber):
            self._note(_DUPLICATE_ENDPOINT, (intf.bInterfaceNumber, intf.bAlternateSetting, address))
            self.drop = _DROP_TO_ENDPOINT
            return
        ep = EndpointDescriptor(*ENDPOINT_DESCRIPTOR_STRUCT.unpack_from(data, pos))
        if length >= AUDIO_ENDPOINT_DESCRIPTOR_SIZE:
            ep.bRefresh, ep.bSynchAddress = AUDIO_ENDPOINT_EXTRA_STRUCT.unpack_from(
                data, pos + ENDPOINT_DESCRIPTOR_SIZE)
        intf.endpoints.append(ep)
        self.ep = ep
        self._record(address, attributes, intf.bInterfaceNumber)

    def extra(self, raw: bytes) -> None:
        """A class-specific or unknown descriptor: the closest preceding kept descriptor's extra."""
        if self.drop != _KEEP:
            return
        target: Union[EndpointDescriptor, InterfaceDescriptor, ConfigurationDescriptor]
        if self.ep is not None:
            target = self.ep
        elif self.intf is not None:
            target = self.intf
        else:
            target = self.cfg
        target.extra_descriptors.extend(raw)

    def finish(self) -> None:
        self._close_altsetting()
        self._report()
        cfg = self.cfg
        cfg.interfaces = list(self.groups.values())
        if cfg.bNumInterfaces != len(cfg.interfaces):
            _log.warning(
                "configuration %d declares bNumInterfaces %d but contains %d interface(s); using %d",
                cfg.bConfigurationValue, cfg.bNumInterfaces, len(cfg.interfaces), len(cfg.interfaces),
            )
            cfg.bNumInterfaces = len(cfg.interfaces)

    def _drop_interface(self, kind: str, inum: int, alt: int) -> None:
        self._note(kind, (inum, alt))
        self.intf = None
        self.ep = None
        self.drop = _DROP_TO_INTERFACE

    def _close_altsetting(self) -> None:
        """bNumEndpoints becomes the number kept (libusb and Linux count the same way)."""
        intf = self.intf
        if intf is None:
            return
        where = (intf.bInterfaceNumber, intf.bAlternateSetting)
        if self.capped:
            self._note(_TOO_MANY_ENDPOINTS, where + (self.present,))
        if intf.bNumEndpoints != self.present:
            self._note(_ENDPOINT_COUNT_MISMATCH, where + (self.present, intf.bNumEndpoints))
        intf.bNumEndpoints = len(intf.endpoints)
        self.intf = None
        self.ep = None

    def _is_duplicate(self, address: int, attributes: int, inum: int) -> bool:
        """config.c's config_endpoint_is_duplicate(): against this alternate setting and every
        alternate setting of the other interfaces, an endpoint is a duplicate if it has the same
        address, or the same number when either endpoint is a control endpoint."""
        masked = address & _EP_ADDRESS_MASK
        number = address & _EP_NUMBER_MASK
        control = attributes & 0x03 == 0
        if (masked in self.alt_addresses or number in self.alt_control_numbers
                or (control and number in self.alt_numbers_used)):
            return True
        return (_used_elsewhere(self.address_owners, masked, inum)
                or _used_elsewhere(self.control_number_owners, number, inum)
                or (control and _used_elsewhere(self.number_owners, number, inum)))

    def _record(self, address: int, attributes: int, inum: int) -> None:
        masked = address & _EP_ADDRESS_MASK
        number = address & _EP_NUMBER_MASK
        self.alt_addresses.add(masked)
        self.alt_numbers_used.add(number)
        self.address_owners.setdefault(masked, set()).add(inum)
        self.number_owners.setdefault(number, set()).add(inum)
        if attributes & 0x03 == 0:
            self.alt_control_numbers.add(number)
            self.control_number_owners.setdefault(number, set()).add(inum)

    def _note(self, kind: str, detail: Tuple[int, ...]) -> None:
        self.ignored[kind] = self.ignored.get(kind, 0) + 1
        self.first.setdefault(kind, detail)

    def _report(self) -> None:
        """One warning per kind (messages after config.c's), naming the first occurrence."""
        cfgno = self.cfg.bConfigurationValue
        for kind, count in self.ignored.items():
            d = self.first[kind]
            if kind == _TOO_MANY_INTERFACES:
                _log.warning(
                    "config %d has too many interfaces: %d, using maximum allowed: %d "
                    "(%d interface descriptor(s) ignored)",
                    cfgno, len(self.intf_descriptors), USB_MAXINTERFACES, count)
            elif kind == _TOO_MANY_ALTSETTINGS:
                _log.warning(
                    "too many alternate settings for config %d interface %d: %d, using maximum "
                    "allowed: %d (%d interface descriptor(s) ignored in all)",
                    cfgno, d[0], self.intf_descriptors[d[0]], USB_MAXALTSETTING, count)
            elif kind == _TOO_MANY_ENDPOINTS:
                _log.warning(
                    "too many endpoints for config %d interface %d altsetting %d: %d, using "
                    "maximum allowed: %d (%d altsetting(s) affected)",
                    cfgno, d[0], d[1], d[2], USB_MAXENDPOINTS, count)
            elif kind == _DUPLICATE_ALTSETTING:
                _log.warning(
                    "Duplicate descriptor for config %d interface %d altsetting %d, skipping "
                    "(%d duplicate(s) in all)", cfgno, d[0], d[1], count)
            elif kind == _DUPLICATE_ENDPOINT:
                _log.warning(
                    "config %d interface %d altsetting %d has a duplicate endpoint with address "
                    "0x%X, skipping (%d duplicate(s) in all)", cfgno, d[0], d[1], d[2], count)
            else:  # _ENDPOINT_COUNT_MISMATCH
                _log.warning(
                    "config %d interface %d altsetting %d has %d endpoint descriptor(s), different "
                    "from the interface descriptor's value: %d (%d altsetting(s) differ)",
                    cfgno, d[0], d[1], d[2], d[3], count)


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
