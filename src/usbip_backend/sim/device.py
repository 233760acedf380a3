"""Device framework of the virtual USB/IP server: declare a device, define the methods it supports.

A device is a subclass of :class:`Device`. Class attributes declare what the host sees (ids,
strings, interfaces, endpoints); methods define what it does. Endpoint handlers are found by name
from the endpoint's type, direction and number::

    bulk_out_1(self, data) -> None | False | int   # OUT data (a bytearray); see "OUT handlers"
    bulk_in_1(self, length) -> bytes | None # None: nothing yet, the URB stays pending until the
                                            # device calls self.notify(0x81)
    interrupt_in_2 / interrupt_out_2        # same signatures as bulk
    iso_in_3(self, packet_lengths) -> list[bytes] | None   # one bytes per packet
    iso_out_3(self, packets)                # list of bytes, one per packet
    vendor_request_in(self, setup) -> bytes | None   # None = stall
    vendor_request_out(self, setup, data) -> None | False   # False = stall
    class_request_in / class_request_out    # same, for class requests (HID, CDC ...)

A method that is absent means the capability is absent: the request or endpoint answers with a
stall (-EPIPE), exactly as a real device without that feature. Raising :class:`Stall` from a
handler stalls the request; on a bulk/interrupt endpoint it also halts the endpoint until the host
sends CLEAR_FEATURE(ENDPOINT_HALT). Standard requests (descriptors, configuration, interface, halt,
status, reset) are answered by the framework from the declaration.

OUT handlers (``bulk_out_N`` / ``interrupt_out_N``) are called with the URB's whole payload, a
bytearray, and say what the device did with it (as :class:`~.devices.CdcAcmDevice` and the other
serial echoes of :mod:`.devices` do, whose transmit buffer drains at the line rate):

* ``None``: the device took everything (it may keep the bytearray); the URB completes
  (RET_SUBMIT, status 0, ``actual_length`` the URB's length). A count of ``len(data)`` or more
  means the same.
* ``False``: the URB fails with -EPIPE (a stall of this URB only; raise :class:`Stall` to halt
  the endpoint as well).
* a count ``n``, ``0 <= n < len(data)``: the device took the first ``n`` bytes and has no room
  for the rest, as a device NAKs OUT packets. The server deletes those bytes from ``data`` and
  keeps the URB pending: no RET_SUBMIT yet, and later OUT URBs of the endpoint wait behind it, in
  order. When the device has made room, it calls ``self.notify(address)`` with the OUT endpoint's
  address (``0x01``), typically from a thread of its own (the serial echoes' UART, sending at the
  line rate); the server then calls the handler again with the same bytearray, now holding only
  what is left, and the answer counts the same way, until the URB completes with
  ``actual_length`` the sum taken. Call ``notify`` for an OUT endpoint outside its handler (from
  inside, the URB is not queued yet, or the handler is re-entered). A pending URB that is
  unlinked is answered RET_UNLINK -ECONNRESET and never RET_SUBMIT, as Linux's stub does: what
  the device took of it stays taken, and the host is not told how much.

Methods run under the device's lock, one at a time; ``notify`` (IN endpoints: data to offer
pending IN URBs; OUT endpoints: room for pending OUT URBs) and any public method a device adds may
be called from other threads.
"""

from __future__ import annotations

import logging
import struct
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Sequence, Set, Tuple

from ..protocol import SETUP_STRUCT, Speed, TransferType

if TYPE_CHECKING:  # pragma: no cover
    from .server import _Connection

log = logging.getLogger(__name__)

# Chapter 9 numbers, re-exported: device classes written for the server use these names.
from ..ch9 import (
    DT_CONFIG as DT_CONFIG, DT_CS_INTERFACE as DT_CS_INTERFACE, DT_DEVICE as DT_DEVICE,
    DT_DEVICE_QUALIFIER as DT_DEVICE_QUALIFIER, DT_ENDPOINT as DT_ENDPOINT, DT_HID as DT_HID,
    DT_HID_REPORT as DT_HID_REPORT, DT_INTERFACE as DT_INTERFACE, DT_STRING as DT_STRING,
    FEATURE_DEVICE_REMOTE_WAKEUP as FEATURE_DEVICE_REMOTE_WAKEUP,
    FEATURE_ENDPOINT_HALT as FEATURE_ENDPOINT_HALT, HUB_PORT_RESET as HUB_PORT_RESET,
    LANGID_EN_US as LANGID_EN_US, REQ_CLEAR_FEATURE as REQ_CLEAR_FEATURE,
    REQ_GET_CONFIGURATION as REQ_GET_CONFIGURATION, REQ_GET_DESCRIPTOR as REQ_GET_DESCRIPTOR,
    REQ_GET_INTERFACE as REQ_GET_INTERFACE, REQ_GET_STATUS as REQ_GET_STATUS,
    REQ_SET_ADDRESS as REQ_SET_ADDRESS, REQ_SET_CONFIGURATION as REQ_SET_CONFIGURATION,
    REQ_SET_DESCRIPTOR as REQ_SET_DESCRIPTOR, REQ_SET_FEATURE as REQ_SET_FEATURE,
    REQ_SET_INTERFACE as REQ_SET_INTERFACE,
)
from ..ch9 import DT_INTERFACE_ASSOCIATION as DT_IAD

_DEVICE_DESC = struct.Struct("<BBHBBBBHHHBBBB")  # 18
_QUALIFIER_DESC = struct.Struct("<BBHBBBBBB")  # 10
_CONFIG_DESC = struct.Struct("<BBHBBBBB")  # 9
_IAD_DESC = struct.Struct("<BBBBBBBB")  # 8
_INTERFACE_DESC = struct.Struct("<BBBBBBBBB")  # 9
_ENDPOINT_DESC = struct.Struct("<BBBBHB")  # 7
_HID_DESC = struct.Struct("<BBHBBBH")  # 9
_U16 = struct.Struct("<H")

#: bmAttributes transfer type bits (USB 2.0 table 9-13). Not TransferType's values, which are
#: numbered as in the usbmon header (0 iso, 1 interrupt, 2 control, 3 bulk).
_BM_ATTRIBUTES = {
    TransferType.ISOCHRONOUS: 0x01 | 0x04,  # isochronous, asynchronous, data
    TransferType.BULK: 0x02,
    TransferType.INTERRUPT: 0x03,
}

_TYPE_NAMES = {
    TransferType.BULK: "bulk",
    TransferType.INTERRUPT: "interrupt",
    TransferType.ISOCHRONOUS: "iso",
}


class Stall(Exception):
    """Raise from a handler to answer with a stall (-EPIPE)."""


@dataclass(frozen=True)
class Setup:
    """A decoded 8-byte SETUP packet."""

    bmRequestType: int
    bRequest: int
    wValue: int
    wIndex: int
    wLength: int

    @classmethod
    def unpack(cls, raw: bytes) -> "Setup":
        return cls(*SETUP_STRUCT.unpack_from(raw))

    @property
    def is_in(self) -> bool:
        return bool(self.bmRequestType & 0x80)

    @property
    def type(self) -> int:
        """0 standard, 1 class, 2 vendor, 3 reserved."""
        return (self.bmRequestType >> 5) & 3

    @property
    def recipient(self) -> int:
        """0 device, 1 interface, 2 endpoint, 3 other."""
        return self.bmRequestType & 0x1F


@dataclass(frozen=True)
class Endpoint:
    """One endpoint of an interface. ``address`` carries the direction bit (0x81 = IN 1)."""

    address: int
    type: TransferType = TransferType.BULK
    max_packet: Optional[int] = None  # None: the largest the speed allows (512 bulk high speed)
    interval: Optional[int] = None  # bInterval; None: 4 (1 ms) at high speed, 1 at full speed
    handler: Optional[str] = None  # method name; None: "<type>_<in|out>_<number>"
    extra: bytes = b""  # class-specific endpoint descriptors following this one

    @property
    def number(self) -> int:
        return self.address & 0x0F

    @property
    def is_in(self) -> bool:
        return bool(self.address & 0x80)

    @property
    def handler_name(self) -> str:
        if self.handler:
            return self.handler
        return f"{_TYPE_NAMES[self.type]}_{'in' if self.is_in else 'out'}_{self.number}"


def Bulk(address: int, max_packet: Optional[int] = None, **kw: Any) -> Endpoint:
    """A bulk endpoint."""
    return Endpoint(address, TransferType.BULK, max_packet, **kw)


def Interrupt(address: int, max_packet: int = 64, interval: Optional[int] = None, **kw: Any) -> Endpoint:
    """An interrupt endpoint (bInterval defaults to 1 ms)."""
    return Endpoint(address, TransferType.INTERRUPT, max_packet, interval, **kw)


def Iso(address: int, max_packet: Optional[int] = None, interval: int = 1, **kw: Any) -> Endpoint:
    """An isochronous endpoint (asynchronous, data)."""
    return Endpoint(address, TransferType.ISOCHRONOUS, max_packet, interval, **kw)


@dataclass(frozen=True)
class Interface:
    """One alternate setting of one interface."""

    number: int
    endpoints: Sequence[Endpoint] = ()
    cls: int = 0xFF
    subclass: int = 0
    protocol: int = 0
    alt: int = 0
    name: Optional[str] = None  # iInterface string
    extra: bytes = b""  # class-specific descriptors between the interface and its endpoints
    hid_report: Optional[bytes] = None  # HID report descriptor: adds the HID descriptor


@dataclass(frozen=True)
class Function:
    """An Interface Association Descriptor grouping ``count`` interfaces from ``first``."""

    first: int
    count: int
    cls: int
    subclass: int = 0
    protocol: int = 0
    name: Optional[str] = None


# --- class-specific descriptor helpers ----------------------------------------------------------
def cdc_header(bcd: int = 0x0110) -> bytes:
    """CDC Header functional descriptor."""
    return bytes([5, DT_CS_INTERFACE, 0x00]) + _U16.pack(bcd)


def cdc_call_management(capabilities: int = 0, data_interface: int = 1) -> bytes:
    return bytes([5, DT_CS_INTERFACE, 0x01, capabilities, data_interface])


def cdc_acm(capabilities: int = 0x02) -> bytes:
    """ACM functional descriptor; 0x02 = line coding and serial state requests supported."""
    return bytes([4, DT_CS_INTERFACE, 0x02, capabilities])


def cdc_union(control: int, *subordinates: int) -> bytes:
    return bytes([3 + 1 + len(subordinates), DT_CS_INTERFACE, 0x06, control, *subordinates])


def string_descriptor(text: str) -> bytes:
    raw = text.encode("utf-16-le")[:252]
    return bytes([2 + len(raw), DT_STRING]) + raw


# --- the device ------------------------------------------------------------------------------------
class Device:
    """Base class of every virtual device. Subclass it, set the attributes, add handlers."""

    vid: int = 0x1209
    pid: int = 0x0000
    bcd_device: int = 0x0100
    bcd_usb: int = 0x0200
    #: (class, subclass, protocol); None: 0/0/0, or EF/02/01 when ``functions`` (IADs) exist
    device_class: Optional[Tuple[int, int, int]] = None
    max_packet0: int = 64
    speed: Speed = Speed.HIGH
    manufacturer: Optional[str] = "usbip_backend"
    product: Optional[str] = "Virtual device"
    serial: Optional[str] = None  # None: derived from the busid when exported
    configuration_value: int = 1
    configuration_name: Optional[str] = None
    config_attributes: int = 0x80  # bus powered
    max_power_ma: int = 100
    interfaces: Sequence[Interface] = ()
    functions: Sequence[Function] = ()

    def __init__(self, busid: Optional[str] = None) -> None:
        self.busid = busid  # set by the server when exported
        self.lock = threading.RLock()
        self._conn: Optional["_Connection"] = None
        self.configuration = 0  # 0 = unconfigured, as a freshly bound stub device
        self.alt_settings: Dict[int, int] = {}
        self.halted: Set[int] = set()  # endpoint addresses
        self._strings: List[str] = []
        self._string_index: Dict[str, int] = {}
        for text in (self.manufacturer, self.product, self.serial_number, self.configuration_name):
            self._string_id(text)
        for itf in self.interfaces:
            self._string_id(itf.name)
        for fn in self.functions:
            self._string_id(fn.name)
        self._endpoint_cache: Optional[Dict[int, Tuple[Endpoint, Optional[Callable[..., Any]]]]] = None

    # -- things a device calls --------------------------------------------------------------------
    def notify(self, endpoint: int) -> None:
        """Data became available on IN ``endpoint`` (0x81 style), or room on OUT ``endpoint``
        (0x01 style): offer the pending URBs of that endpoint to its handler again, in order,
        completing those it answers (see the module docstring's OUT handlers).

        Safe from any thread; a no-op when no client has the device imported.
        """
        with self.lock:
            conn = self._conn
            if conn is not None:
                conn.drain(endpoint)

    def halt(self, endpoint: int) -> None:
        """Halt ``endpoint`` (0x81 style): it answers -EPIPE until CLEAR_FEATURE(ENDPOINT_HALT)."""
        with self.lock:
            self.halted.add(endpoint)
            conn = self._conn
            if conn is not None:
                conn.fail_pending(endpoint, -32)

    @property
    def imported(self) -> bool:
        return self._conn is not None

    # -- hooks a device may override --------------------------------------------------------------
    def on_reset(self) -> None:
        """Bus reset or disconnect of the importing client: drop transient state."""

    def on_set_configuration(self, value: int) -> None:
        """Called after SET_CONFIGURATION (value 0 = unconfigured)."""

    def on_set_interface(self, interface: int, alt: int) -> None:
        """Called after SET_INTERFACE."""

    # -- declaration helpers ----------------------------------------------------------------------
    @property
    def serial_number(self) -> Optional[str]:
        if self.serial is not None:
            return self.serial
        return f"SIM-{type(self).__name__.upper()}-{self.busid or '0'}"

    def _string_id(self, text: Optional[str]) -> int:
        if not text:
            return 0
        if text not in self._string_index:
            self._strings.append(text)
            self._string_index[text] = len(self._strings)
        return self._string_index[text]

    def get_string(self, index: int) -> Optional[str]:
        if 1 <= index <= len(self._strings):
            return self._strings[index - 1]
        return None

    @property
    def device_triple(self) -> Tuple[int, int, int]:
        if self.device_class is not None:
            return self.device_class
        return (0xEF, 0x02, 0x01) if self.functions else (0, 0, 0)

    def interface_numbers(self) -> List[int]:
        return sorted({i.number for i in self.interfaces})

    def find_interface(self, number: int, alt: int) -> Optional[Interface]:
        for itf in self.interfaces:
            if itf.number == number and itf.alt == alt:
                return itf
        return None

    def active_interfaces(self) -> List[Interface]:
        """The current alternate setting of each interface (empty when unconfigured)."""
        if not self.configuration:
            return []
        found = []
        for n in self.interface_numbers():
            itf = self.find_interface(n, self.alt_settings.get(n, 0))
            if itf is not None:
                found.append(itf)
        return found

    def _max_packet(self, ep: Endpoint) -> int:
        if ep.max_packet is not None:
            return ep.max_packet
        high = self.speed >= Speed.HIGH
        if ep.type == TransferType.BULK:
            return 512 if high else 64
        if ep.type == TransferType.ISOCHRONOUS:
            return 1024 if high else 1023
        return 64

    def _interval(self, ep: Endpoint) -> int:
        if ep.type == TransferType.BULK:
            return 0
        if ep.interval is not None:
            return ep.interval
        return 4 if self.speed >= Speed.HIGH else 1

    def endpoints(self) -> Dict[int, Tuple[Endpoint, Optional[Callable[..., Any]]]]:
        """Active endpoints by address -> (declaration, bound handler or None)."""
        if self._endpoint_cache is None:
            table = {}
            for itf in self.active_interfaces():
                for ep in itf.endpoints:
                    table[ep.address] = (ep, getattr(self, ep.handler_name, None))
            self._endpoint_cache = table
        return self._endpoint_cache

    # -- descriptors ------------------------------------------------------------------------------
    def device_descriptor(self) -> bytes:
        cls, sub, proto = self.device_triple
        return _DEVICE_DESC.pack(
            18, DT_DEVICE, self.bcd_usb, cls, sub, proto, self.max_packet0, self.vid, self.pid,
            self.bcd_device, self._string_id(self.manufacturer), self._string_id(self.product),
            self._string_id(self.serial_number), 1,
        )

    def qualifier_descriptor(self) -> bytes:
        cls, sub, proto = self.device_triple
        return _QUALIFIER_DESC.pack(10, DT_DEVICE_QUALIFIER, self.bcd_usb, cls, sub, proto, self.max_packet0, 1, 0)

    def hid_descriptor(self, itf: Interface) -> bytes:
        assert itf.hid_report is not None
        return _HID_DESC.pack(9, DT_HID, 0x0111, 0, 1, DT_HID_REPORT, len(itf.hid_report))

    def configuration_descriptor(self) -> bytes:
        body = []
        numbers = self.interface_numbers()
        for n in numbers:
            for fn in self.functions:
                if fn.first == n:
                    body.append(_IAD_DESC.pack(8, DT_IAD, fn.first, fn.count, fn.cls, fn.subclass,
                                               fn.protocol, self._string_id(fn.name)))
            for itf in sorted((i for i in self.interfaces if i.number == n), key=lambda i: i.alt):
                body.append(_INTERFACE_DESC.pack(
                    9, DT_INTERFACE, itf.number, itf.alt, len(itf.endpoints), itf.cls, itf.subclass,
                    itf.protocol, self._string_id(itf.name)))
                if itf.hid_report is not None:
                    body.append(self.hid_descriptor(itf))
                body.append(itf.extra)
                for ep in itf.endpoints:
                    attrs = _BM_ATTRIBUTES[ep.type]
                    body.append(_ENDPOINT_DESC.pack(7, DT_ENDPOINT, ep.address, attrs,
                                                    self._max_packet(ep), self._interval(ep)))
                    body.append(ep.extra)
        raw = b"".join(body)
        power = min(255, self.max_power_ma // 2)
        return _CONFIG_DESC.pack(9, DT_CONFIG, 9 + len(raw), len(numbers), self.configuration_value,
                                 self._string_id(self.configuration_name), self.config_attributes,
                                 power) + raw

    # -- state changes (framework) ----------------------------------------------------------------
    def _set_configuration(self, value: int) -> bool:
        if value not in (0, self.configuration_value):
            return False
        self.configuration = value
        self.alt_settings = {}
        self.halted.clear()
        self._endpoint_cache = None
        self.on_set_configuration(value)
        return True

    def _set_interface(self, number: int, alt: int) -> bool:
        if not self.configuration or self.find_interface(number, alt) is None:
            return False
        self.alt_settings[number] = alt
        itf = self.find_interface(number, alt)
        for ep in itf.endpoints if itf else ():
            self.halted.discard(ep.address)
        self._endpoint_cache = None
        self.on_set_interface(number, alt)
        return True

    def _bus_reset(self, keep_configuration: bool) -> None:
        """A port reset. usb_reset_device() (what the stub calls) restores the configuration."""
        config, alts = self.configuration, dict(self.alt_settings)
        self.configuration = 0
        self.alt_settings = {}
        self.halted.clear()
        self._endpoint_cache = None
        self.on_reset()
        if keep_configuration and config:
            self.configuration = config
            self.alt_settings = alts
            self._endpoint_cache = None

    # -- control requests -------------------------------------------------------------------------
    def _get_descriptor(self, setup: Setup) -> Optional[bytes]:
        dtype, index = setup.wValue >> 8, setup.wValue & 0xFF
        if setup.recipient == 0:
            if dtype == DT_DEVICE:
                return self.device_descriptor()
            if dtype == DT_CONFIG and index == 0:
                return self.configuration_descriptor()
            if dtype == DT_STRING:
                if index == 0:
                    return bytes([4, DT_STRING]) + _U16.pack(LANGID_EN_US)
                if setup.wIndex != LANGID_EN_US:
                    return None
                text = self.get_string(index)
                return None if text is None else string_descriptor(text)
            if dtype == DT_DEVICE_QUALIFIER and self.speed == Speed.HIGH:
                return self.qualifier_descriptor()
            return None
        if setup.recipient == 1 and dtype in (DT_HID, DT_HID_REPORT):
            number = setup.wIndex & 0xFF
            itf = self.find_interface(number, self.alt_settings.get(number, 0))
            if itf is None or itf.hid_report is None:
                return None
            return itf.hid_report if dtype == DT_HID_REPORT else self.hid_descriptor(itf)
        return None

    def _standard_in(self, setup: Setup) -> Optional[bytes]:
        req, rcpt = setup.bRequest, setup.recipient
        if req == REQ_GET_DESCRIPTOR:
            return self._get_descriptor(setup)
        if req == REQ_GET_CONFIGURATION and rcpt == 0:
            return bytes([self.configuration])
        if req == REQ_GET_INTERFACE and rcpt == 1:
            if not self.configuration or setup.wIndex not in self.interface_numbers():
                return None
            return bytes([self.alt_settings.get(setup.wIndex, 0)])
        if req == REQ_GET_STATUS:
            if rcpt == 0:
                return _U16.pack(1 if self.config_attributes & 0x40 else 0)
            if rcpt == 1:
                return b"\0\0" if setup.wIndex in self.interface_numbers() else None
            if rcpt == 2:
                addr = setup.wIndex & 0xFF
                if addr & 0x7F == 0:
                    return b"\0\0"
                if addr not in self.endpoints():
                    return None
                return _U16.pack(1 if addr in self.halted else 0)
        return None

    def _standard_out(self, setup: Setup) -> bool:
        """Standard OUT requests other than SET_CONFIGURATION/SET_INTERFACE/CLEAR_HALT."""
        req, rcpt = setup.bRequest, setup.recipient
        if req == REQ_SET_ADDRESS and rcpt == 0:
            return True
        if req in (REQ_SET_FEATURE, REQ_CLEAR_FEATURE):
            if rcpt == 0 and setup.wValue == FEATURE_DEVICE_REMOTE_WAKEUP:
                return True
            if rcpt == 2 and setup.wValue == FEATURE_ENDPOINT_HALT and req == REQ_SET_FEATURE:
                addr = setup.wIndex & 0xFF
                if addr not in self.endpoints():
                    return False
                self.halt(addr)
                return True
        return False

    def _control_in(self, setup: Setup) -> Optional[bytes]:
        """Answer a control IN request: bytes, or None for a stall."""
        if setup.type == 0:
            return self._standard_in(setup)
        name = "class_request_in" if setup.type == 1 else "vendor_request_in" if setup.type == 2 else None
        method = getattr(self, name, None) if name else None
        if method is None:
            return None
        answer: Optional[bytes] = method(setup)
        return answer

    def _control_out(self, setup: Setup, data: bytes) -> bool:
        """Answer a control OUT request other than those the server intercepts: False = stall."""
        if setup.type == 0:
            return self._standard_out(setup)
        name = "class_request_out" if setup.type == 1 else "vendor_request_out" if setup.type == 2 else None
        method = getattr(self, name, None) if name else None
        if method is None:
            return False
        return method(setup, data) is not False

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.vid:04x}:{self.pid:04x} busid={self.busid}>"

