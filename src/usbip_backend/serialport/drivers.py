"""USB serial drivers: the requests each kind of device wants, chosen from its descriptors.

A driver knows its interfaces and endpoints, how to send line coding, the DTR/RTS lines and a
break, how to read the modem inputs, and what (if anything) to strip from bulk IN data. It runs
on the device layer (:class:`~usbip_backend.device.Device`), without pyserial.

CDC-ACM (USB CDC PSTN subclass 1.2): class requests to the communication interface,
SERIAL_STATE notifications on its interrupt IN endpoint, data on the data interface's bulk pair.
This covers the ESP32-S2/S3/C3/C6 USB-Serial-JTAG (303a:1001) and TinyUSB's CDC.

CP210x (Silicon Labs, on many ESP32 DevKits): vendor requests to the interface (IFC_ENABLE at
open, SET_BAUDRATE + SET_LINE_CTL, SET_MHS for DTR/RTS with their mask bits, GET_MDMSTS for the
modem inputs, SET_BREAK), as Linux's drivers/usb/serial/cp210x.c sends them.

CH340/CH341 (WCH): READ_VERSION and SERIAL_INIT at open, the baud rate as a prescaler/divisor
register pair and the LCR register written with WRITE_REG, DTR/RTS with MODEM_CTRL (bits sent
inverted), the inverted status bits read from register 0x0706, as ch341.c does.

FTDI (FT232R and other single-port chips): RESET, SET_LATENCY_TIMER and SET_FLOW_CTRL at open,
SET_BAUD_RATE with the fractional divisor, SET_DATA (bits, parity, stop bits, break),
MODEM_CTRL, GET_MODEM_STATUS; the two status bytes that start every bulk IN packet are removed,
as ftdi_sio.c does; multi-port chips (FT2232H, FT4232H: one port per interface, ``?interface=N``
picks it, the first by default) and the H chips' 120 MHz divisor included.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple, Type

from ..descriptors import ConfigurationDescriptor, EndpointDescriptor, InterfaceDescriptor, endpoint_max_packet
from ..device import Device

# CDC class requests (CDC PSTN 1.2, table 13) and notifications (table 30)
SET_LINE_CODING, GET_LINE_CODING, SET_CONTROL_LINE_STATE, SEND_BREAK = 0x20, 0x21, 0x22, 0x23
SERIAL_STATE = 0x20
# SERIAL_STATE bits
DCD, DSR, BREAK, RI, FRAMING, PARITY, OVERRUN = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20, 0x40
CDC_CLASS, ACM_SUBCLASS, DATA_CLASS = 0x02, 0x02, 0x0A
CS_INTERFACE, UNION = 0x24, 0x06
_OUT_CLASS_INTERFACE = 0x21

_STOPBITS = {1: 0, 1.5: 1, 2: 2}
_PARITY = {"N": 0, "O": 1, "E": 2, "M": 3, "S": 4}

_CLASS_NAMES = {0x00: "per-interface", 0x01: "audio", 0x02: "communications", 0x03: "HID",
                0x07: "printer", 0x08: "mass storage", 0x09: "hub", 0x0A: "CDC data",
                0x0E: "video", 0xE0: "wireless", 0xEF: "miscellaneous", 0xFE: "application-specific",
                0xFF: "vendor-specific"}


class NotSerialError(ValueError):
    """The device (or the interface asked for) is not a serial port this package drives."""


@dataclass(frozen=True)
class LineCoding:
    baudrate: int
    bytesize: int
    parity: str  # pyserial's "N", "O", "E", "M", "S"
    stopbits: float


@dataclass(frozen=True)
class ModemStatus:
    cts: bool
    dsr: bool
    ri: bool
    cd: bool


class Driver:
    """One serial function of a device."""

    kind = "serial"
    #: bulk IN URBs the port keeps in flight (as Linux's cdc-acm keeps 16 reads queued)
    read_urbs = 16

    def __init__(self, dev: Device, config: int, control: int, data: int, ep_in: EndpointDescriptor,
                 ep_out: EndpointDescriptor, notify: Optional[EndpointDescriptor]) -> None:
        self.dev = dev
        self.config = config
        self.control_interface = control
        self.data_interface = data
        self.ep_in = ep_in.bEndpointAddress
        self.ep_out = ep_out.bEndpointAddress
        self.in_packet = endpoint_max_packet(ep_in)
        self.out_packet = endpoint_max_packet(ep_out)
        self.notify_ep = notify.bEndpointAddress if notify is not None else None
        self.notify_size = endpoint_max_packet(notify) if notify is not None else 0
        self.status = 0  # the last SERIAL_STATE bits

    def describe(self) -> str:
        return f"{self.kind} on interface {self.control_interface} of {self.dev.name}"

    def start(self, timeout: Optional[float]) -> None:
        """Make the device ready (configuration)."""
        if self.dev.configuration() != self.config:
            self.dev.set_configuration(self.config, timeout)

    def set_line_coding(self, coding: LineCoding, timeout: Optional[float]) -> None:
        raise NotImplementedError

    def set_lines(self, dtr: bool, rts: bool, timeout: Optional[float]) -> None:
        raise NotImplementedError

    def set_break(self, on: bool, timeout: Optional[float]) -> None:
        raise NotImplementedError

    def modem_status(self, timeout: Optional[float]) -> ModemStatus:
        raise NotImplementedError

    def notification(self, data: bytes) -> None:
        """An interrupt IN packet arrived on the notification endpoint."""

    def strip(self, data: memoryview) -> bytes:
        """The serial bytes of one bulk IN transfer (FTDI puts status bytes in front)."""
        return bytes(data)


class CdcAcm(Driver):
    kind = "CDC-ACM"

    def _request(self, request: int, value: int, data: Optional[bytes], timeout: Optional[float]) -> None:
        self.dev.control(_OUT_CLASS_INTERFACE, request, value, self.control_interface,
                         memoryview(data) if data else None, timeout)

    def set_line_coding(self, coding: LineCoding, timeout: Optional[float]) -> None:
        try:
            stop = _STOPBITS[coding.stopbits]
            parity = _PARITY[coding.parity]
        except KeyError:
            raise ValueError(f"CDC-ACM cannot do stopbits {coding.stopbits} parity {coding.parity}") from None
        self._request(SET_LINE_CODING, 0, struct.pack("<IBBB", coding.baudrate, stop, parity, coding.bytesize),
                      timeout)

    def set_lines(self, dtr: bool, rts: bool, timeout: Optional[float]) -> None:
        self._request(SET_CONTROL_LINE_STATE, (1 if dtr else 0) | (2 if rts else 0), None, timeout)

    def set_break(self, on: bool, timeout: Optional[float]) -> None:
        self._request(SEND_BREAK, 0xFFFF if on else 0, None, timeout)

    def modem_status(self, timeout: Optional[float]) -> ModemStatus:
        # CDC has no CTS input; Linux's cdc-acm reports it asserted, and so do we.
        bits = self.status
        return ModemStatus(cts=True, dsr=bool(bits & DSR), ri=bool(bits & RI), cd=bool(bits & DCD))

    def notification(self, data: bytes) -> None:
        # bmRequestType 0xA1, bNotification SERIAL_STATE, wValue, wIndex, wLength 2, then the bits
        if len(data) >= 10 and data[1] == SERIAL_STATE:
            self.status = data[8] | data[9] << 8


class Cp210x(Driver):
    """Silicon Labs CP210x (cp210x.c in Linux): vendor requests to the interface."""

    kind = "CP210x"
    IFC_ENABLE, SET_LINE_CTL, SET_BREAK, SET_MHS, GET_MDMSTS, SET_BAUDRATE = 0x00, 0x03, 0x05, 0x07, 0x08, 0x1E
    UART_ENABLE = 0x0001
    CONTROL_DTR, CONTROL_RTS, CONTROL_WRITE_DTR, CONTROL_WRITE_RTS = 0x0001, 0x0002, 0x0100, 0x0200
    _STOP = {1: 0, 1.5: 1, 2: 2}

    def _out(self, request: int, value: int, data: Optional[bytes], timeout: Optional[float]) -> None:
        self.dev.control(0x41, request, value, self.control_interface, memoryview(data) if data else None, timeout)

    def start(self, timeout: Optional[float]) -> None:
        super().start(timeout)
        self._out(self.IFC_ENABLE, self.UART_ENABLE, None, timeout)

    def set_line_coding(self, coding: LineCoding, timeout: Optional[float]) -> None:
        try:
            stop = self._STOP[coding.stopbits]
            parity = _PARITY[coding.parity]
        except KeyError:
            raise ValueError(f"CP210x cannot do stopbits {coding.stopbits} parity {coding.parity}") from None
        self._out(self.SET_BAUDRATE, 0, struct.pack("<I", coding.baudrate), timeout)
        self._out(self.SET_LINE_CTL, stop | parity << 4 | coding.bytesize << 8, None, timeout)

    def set_lines(self, dtr: bool, rts: bool, timeout: Optional[float]) -> None:
        value = self.CONTROL_WRITE_DTR | self.CONTROL_WRITE_RTS
        value |= (self.CONTROL_DTR if dtr else 0) | (self.CONTROL_RTS if rts else 0)
        self._out(self.SET_MHS, value, None, timeout)

    def set_break(self, on: bool, timeout: Optional[float]) -> None:
        self._out(self.SET_BREAK, 1 if on else 0, None, timeout)

    def modem_status(self, timeout: Optional[float]) -> ModemStatus:
        buf = bytearray(1)
        n = self.dev.control(0xC1, self.GET_MDMSTS, 0, self.control_interface, memoryview(buf), timeout)
        bits = buf[0] if n else 0
        return ModemStatus(cts=bool(bits & 0x10), dsr=bool(bits & 0x20), ri=bool(bits & 0x40), cd=bool(bits & 0x80))


class Ch34x(Driver):
    """WCH CH340/CH341 (ch341.c in Linux): registers written with vendor requests; the modem
    lines are sent inverted."""

    kind = "CH34x"
    READ_VERSION, WRITE_REG, READ_REG, SERIAL_INIT, MODEM_CTRL = 0x5F, 0x9A, 0x95, 0xA1, 0xA4
    REG_BREAK, REG_PRESCALER, REG_DIVISOR, REG_LCR, REG_LCR2, REG_STATUS = 0x05, 0x12, 0x13, 0x18, 0x25, 0x06
    CLKRATE = 48_000_000
    BIT_DTR, BIT_RTS = 0x20, 0x40
    LCR_ENABLE_RX, LCR_ENABLE_TX, LCR_MARK_SPACE, LCR_PAR_EVEN, LCR_ENABLE_PAR, LCR_STOP_BITS_2 = (
        0x80, 0x40, 0x20, 0x10, 0x08, 0x04)
    NBREAK_BITS = 0x01

    def _out(self, request: int, value: int, index: int, timeout: Optional[float]) -> None:
        self.dev.control(0x40, request, value, index, None, timeout)

    def _in(self, request: int, value: int, index: int, size: int, timeout: Optional[float]) -> bytes:
        buf = bytearray(size)
        n = self.dev.control(0xC0, request, value, index, memoryview(buf), timeout)
        return bytes(buf[:n])

    def start(self, timeout: Optional[float]) -> None:
        super().start(timeout)
        self._in(self.READ_VERSION, 0, 0, 2, timeout)
        self._out(self.SERIAL_INIT, 0, 0, timeout)

    @classmethod
    def divisor(cls, baudrate: int) -> int:
        """The prescaler/divisor register pair for ``baudrate`` (ch341_get_divisor's method:
        the highest base clock giving a divisor below 512, the nearer of two divisors)."""
        def clk_div(ps: int, fact: int) -> int:
            return 1 << (12 - 3 * ps - fact)
        min_rates = [-(-cls.CLKRATE // (clk_div(ps, 1) * 512)) for ps in range(4)]
        speed = min(max(baudrate, -(-cls.CLKRATE // (clk_div(0, 0) * 256))), cls.CLKRATE // (clk_div(3, 0) * 2))
        fact = 1
        ps = 3
        while ps >= 0 and speed <= min_rates[ps]:
            ps -= 1
        if ps < 0:
            raise ValueError(f"CH34x cannot do {baudrate} baud")
        cd = clk_div(ps, fact)
        div = cls.CLKRATE // (cd * speed)
        if div < 9 or div > 255:
            div //= 2
            cd *= 2
            fact = 0
        if div < 2:
            raise ValueError(f"CH34x cannot do {baudrate} baud")
        if 16 * cls.CLKRATE // (cd * div) - 16 * speed >= 16 * speed - 16 * cls.CLKRATE // (cd * (div + 1)):
            div += 1
        if fact == 1 and div % 2 == 0:
            div //= 2
            fact = 0
        return (0x100 - div) << 8 | fact << 2 | ps

    def set_line_coding(self, coding: LineCoding, timeout: Optional[float]) -> None:
        if coding.stopbits not in (1, 2) or coding.bytesize not in (5, 6, 7, 8) or coding.parity not in _PARITY:
            raise ValueError(f"CH34x cannot do {coding.bytesize} bits, parity {coding.parity}, "
                             f"stopbits {coding.stopbits}")
        lcr = self.LCR_ENABLE_RX | self.LCR_ENABLE_TX | (coding.bytesize - 5)
        lcr |= {"N": 0, "O": self.LCR_ENABLE_PAR, "E": self.LCR_ENABLE_PAR | self.LCR_PAR_EVEN,
                "M": self.LCR_ENABLE_PAR | self.LCR_MARK_SPACE,
                "S": self.LCR_ENABLE_PAR | self.LCR_MARK_SPACE | self.LCR_PAR_EVEN}[coding.parity]
        if coding.stopbits == 2:
            lcr |= self.LCR_STOP_BITS_2
        value = self.divisor(coding.baudrate) | 0x80  # bit 7: no buffering of received bytes
        self._out(self.WRITE_REG, self.REG_DIVISOR << 8 | self.REG_PRESCALER, value, timeout)
        self._out(self.WRITE_REG, self.REG_LCR2 << 8 | self.REG_LCR, lcr, timeout)

    def set_lines(self, dtr: bool, rts: bool, timeout: Optional[float]) -> None:
        bits = (self.BIT_DTR if dtr else 0) | (self.BIT_RTS if rts else 0)
        self._out(self.MODEM_CTRL, ~bits & 0xFFFF, 0, timeout)

    def set_break(self, on: bool, timeout: Optional[float]) -> None:
        regs = self._in(self.READ_REG, self.REG_LCR << 8 | self.REG_BREAK, 0, 2, timeout)
        brk, lcr = (regs + b"\0\0")[:2]
        if on:
            brk, lcr = brk & ~self.NBREAK_BITS, lcr & ~self.LCR_ENABLE_TX
        else:
            brk, lcr = brk | self.NBREAK_BITS, lcr | self.LCR_ENABLE_TX
        self._out(self.WRITE_REG, self.REG_LCR << 8 | self.REG_BREAK, (lcr & 0xFF) << 8 | (brk & 0xFF), timeout)

    def modem_status(self, timeout: Optional[float]) -> ModemStatus:
        raw = self._in(self.READ_REG, 0x0706, 0, 2, timeout)
        bits = ~(raw[0] if raw else 0xFF) & 0x0F  # the chip reports the inputs inverted
        return ModemStatus(cts=bool(bits & 0x01), dsr=bool(bits & 0x02), ri=bool(bits & 0x04), cd=bool(bits & 0x08))


class Ftdi(Driver):
    """FTDI bridges (ftdi_sio.c in Linux): vendor requests with the port in wIndex (0 on
    single-port chips, interface + 1 on FT2232/FT4232), the H chips' 120 MHz divisor, and two
    status bytes at the start of every bulk IN packet."""

    kind = "FTDI"
    RESET, MODEM_CTRL, SET_FLOW_CTRL, SET_BAUD_RATE, SET_DATA, GET_MODEM_STATUS, SET_LATENCY_TIMER = (
        0, 1, 2, 3, 4, 5, 9)
    BASE = 48_000_000
    _DIVFRAC = (0, 3, 2, 4, 1, 5, 6, 7)
    LATENCY_MS = 2

    def _out(self, request: int, value: int, index: int, timeout: Optional[float]) -> None:
        self.dev.control(0x40, request, value, index, None, timeout)

    @property
    def multi_port(self) -> bool:
        """FT2232/FT4232: one serial port per interface."""
        cfg = self.dev.config_by_value(self.config)
        return cfg is not None and len(cfg.interfaces) > 1

    @property
    def h_chip(self) -> bool:
        """FT2232H, FT4232H, FT232H (bcdDevice 7.00, 8.00, 9.00): a 120 MHz baud clock."""
        return self.dev.descriptor.bcdDevice in (0x0700, 0x0800, 0x0900)

    @property
    def port(self) -> int:
        """wIndex's port: 0 on single-port chips, the interface number + 1 on multi-port ones."""
        return self.control_interface + 1 if self.multi_port else 0

    def start(self, timeout: Optional[float]) -> None:
        super().start(timeout)
        self._out(self.RESET, 0, self.port, timeout)
        self._out(self.SET_LATENCY_TIMER, self.LATENCY_MS, self.port, timeout)
        self._out(self.SET_FLOW_CTRL, 0, self.port, timeout)

    @classmethod
    def divisor(cls, baudrate: int) -> int:
        """The 17-bit divisor of an FT232R/FT232BM for ``baudrate`` (eighths of the 3 MHz base,
        with the chip's fraction encoding, as ftdi_232bm_baud_base_to_divisor)."""
        if baudrate <= 0:
            raise ValueError(f"FTDI cannot do {baudrate} baud")
        divisor3 = (cls.BASE + baudrate) // (2 * baudrate)  # rounded to the closest eighth
        divisor = divisor3 >> 3 | cls._DIVFRAC[divisor3 & 7] << 14
        if divisor == 1:
            return 0  # 3 Mbaud
        if divisor == 0x4001:
            return 1  # 2 Mbaud
        return divisor

    @classmethod
    def h_divisor(cls, baudrate: int) -> int:
        """The divisor of an H chip's 120 MHz clock (bit 17 selects it), as
        ftdi_2232h_baud_base_to_divisor."""
        divisor3 = (8 * 120_000_000 + 5 * baudrate) // (10 * baudrate)  # rounded to the closest
        divisor = divisor3 >> 3 | cls._DIVFRAC[divisor3 & 7] << 14
        if divisor == 1:
            divisor = 0
        elif divisor == 0x4001:
            divisor = 1
        return divisor | 0x20000

    def set_line_coding(self, coding: LineCoding, timeout: Optional[float]) -> None:
        if coding.bytesize not in (7, 8) or coding.stopbits not in (1, 1.5, 2) or coding.parity not in _PARITY:
            raise ValueError(f"FTDI cannot do {coding.bytesize} bits, parity {coding.parity}, "
                             f"stopbits {coding.stopbits}")
        if self.h_chip and 1200 <= coding.baudrate <= 12_000_000:
            divisor = self.h_divisor(coding.baudrate)
        else:
            divisor = self.divisor(coding.baudrate)
        index = divisor >> 16
        if self.multi_port or self.h_chip:
            index = index << 8 | self.port  # these chips take the port in wIndex's low byte
        self._out(self.SET_BAUD_RATE, divisor & 0xFFFF, index, timeout)
        self._data = coding.bytesize | _PARITY[coding.parity] << 8 | _STOPBITS[coding.stopbits] << 11
        self._out(self.SET_DATA, self._data, self.port, timeout)

    _data = 8

    def set_lines(self, dtr: bool, rts: bool, timeout: Optional[float]) -> None:
        self._out(self.MODEM_CTRL, 0x0300 | (1 if dtr else 0) | (2 if rts else 0), self.port, timeout)

    def set_break(self, on: bool, timeout: Optional[float]) -> None:
        self._out(self.SET_DATA, self._data | (0x4000 if on else 0), self.port, timeout)

    def modem_status(self, timeout: Optional[float]) -> ModemStatus:
        buf = bytearray(2)
        n = self.dev.control(0xC0, self.GET_MODEM_STATUS, 0, self.port, memoryview(buf), timeout)
        bits = buf[0] if n else 0
        return ModemStatus(cts=bool(bits & 0x10), dsr=bool(bits & 0x20), ri=bool(bits & 0x40), cd=bool(bits & 0x80))

    def strip(self, data: memoryview) -> bytes:
        size = self.in_packet
        if len(data) >= 2:
            self.status = data[0]
        return b"".join(bytes(data[i + 2:i + size]) for i in range(0, len(data), size))


#: (VID, PID) of FTDI bridges: FT232R/BM, FT2232C/D/H, FT4232H, FT232H, FT-X
FTDI_IDS = {(0x0403, 0x6001), (0x0403, 0x6010), (0x0403, 0x6011), (0x0403, 0x6014), (0x0403, 0x6015)}

#: (VID, PID) of CH340/CH341 serial bridges (Linux's ch341.c id_table)
CH34X_IDS = {(0x1A86, 0x5523), (0x1A86, 0x7522), (0x1A86, 0x7523), (0x2184, 0x0057), (0x4348, 0x5523),
             (0x9986, 0x7523)}

#: (VID, PID) of CP210x bridges (Linux's cp210x.c id_table, the common ones)
CP210X_IDS = {(0x10C4, pid) for pid in (0xEA60, 0xEA61, 0xEA63, 0xEA70, 0xEA71, 0xEA7A, 0xEA7B)}


def _endpoints(intf: InterfaceDescriptor) -> Tuple[Optional[EndpointDescriptor], Optional[EndpointDescriptor],
                                                    Optional[EndpointDescriptor]]:
    bulk_in = bulk_out = intr_in = None
    for ep in intf.endpoints:
        kind = ep.bmAttributes & 3
        if kind == 2 and ep.bEndpointAddress & 0x80 and bulk_in is None:
            bulk_in = ep
        elif kind == 2 and not ep.bEndpointAddress & 0x80 and bulk_out is None:
            bulk_out = ep
        elif kind == 3 and ep.bEndpointAddress & 0x80 and intr_in is None:
            intr_in = ep
    return bulk_in, bulk_out, intr_in


def _union_data_interface(intf: InterfaceDescriptor) -> Optional[int]:
    """The data interface a CDC union functional descriptor names (its first subordinate)."""
    extra = bytes(intf.extra_descriptors)
    i = 0
    while i + 2 <= len(extra):
        length = extra[i]
        if length < 3 or i + length > len(extra):
            break
        if extra[i + 1] == CS_INTERFACE and extra[i + 2] == UNION and length >= 5:
            return extra[i + 4]
        i += length
    return None


def _acm_functions(config: ConfigurationDescriptor) -> List[Tuple[InterfaceDescriptor, InterfaceDescriptor]]:
    """(communication, data) interface pairs of every CDC-ACM function (alternate setting 0)."""
    by_number = {group[0].bInterfaceNumber: group[0] for group in config.interfaces if group}
    found = []
    for number in sorted(by_number):
        intf = by_number[number]
        if intf.bInterfaceClass != CDC_CLASS or intf.bInterfaceSubClass != ACM_SUBCLASS:
            continue
        data_number = _union_data_interface(intf)
        data = by_number.get(data_number) if data_number is not None else by_number.get(number + 1)
        if data is None or data.bInterfaceClass != DATA_CLASS:
            continue
        found.append((intf, data))
    return found


def describe_device(dev: Device) -> str:
    """What a device is, in a few words (for "not a serial port" errors)."""
    d = dev.descriptor
    classes: List[str] = []
    for cfg in dev.configurations:
        for group in cfg.interfaces:
            if group:
                name = _CLASS_NAMES.get(group[0].bInterfaceClass, f"class 0x{group[0].bInterfaceClass:02x}")
                if name not in classes:
                    classes.append(name)
    what = ", ".join(classes) or "no interfaces"
    return f"{d.idVendor:04x}:{d.idProduct:04x} with {what} interfaces"


def pick_driver(dev: Device, interface: Optional[int] = None) -> Driver:
    """The driver for ``dev``'s serial function (the one whose first interface is ``interface``,
    or the first found).

    Raises:
        NotSerialError: no serial function (the message says what the device is).
    """
    for cfg in dev.configurations:
        functions = _acm_functions(cfg)
        for comm, data in functions:
            if interface is not None and interface not in (comm.bInterfaceNumber, data.bInterfaceNumber):
                continue
            ep_in, ep_out, _ = _endpoints(data)
            _, _, notify = _endpoints(comm)
            if ep_in is None or ep_out is None:
                continue
            return CdcAcm(dev, cfg.bConfigurationValue, comm.bInterfaceNumber, data.bInterfaceNumber,
                          ep_in, ep_out, notify)
        if functions and interface is not None:
            numbers = ", ".join(str(c.bInterfaceNumber) for c, _ in functions)
            raise NotSerialError(f"{dev.name} has no serial port on interface {interface} "
                                 f"(CDC-ACM on interface {numbers})")
    d = dev.descriptor
    ids = (d.idVendor, d.idProduct)
    vendor_driver: Optional[Type[Driver]] = (Cp210x if ids in CP210X_IDS else Ch34x if ids in CH34X_IDS
                                             else Ftdi if ids in FTDI_IDS else None)
    if vendor_driver is not None:
        for cfg in dev.configurations:
            for group in cfg.interfaces:
                intf = group[0] if group else None
                if intf is None or (interface is not None and intf.bInterfaceNumber != interface):
                    continue
                ep_in, ep_out, _ = _endpoints(intf)
                if ep_in is not None and ep_out is not None:
                    return vendor_driver(dev, cfg.bConfigurationValue, intf.bInterfaceNumber,
                                         intf.bInterfaceNumber, ep_in, ep_out, None)
    raise NotSerialError(f"{dev.name} is not a serial port this handler drives: it is "
                         f"{describe_device(dev)} (drivers: CDC-ACM, CP210x, CH34x, FTDI)")


__all__: Sequence[str] = ["Driver", "CdcAcm", "Ftdi", "FTDI_IDS", "Cp210x", "CP210X_IDS", "Ch34x", "CH34X_IDS", "LineCoding", "ModemStatus", "NotSerialError", "pick_driver",
                          "describe_device"]
