"""Stock virtual devices: loopback/source/sink, CDC-ACM echo, HID keyboard, isochronous.

All use VID 0x1209 (pid.codes) with test PIDs 0x0001..0x0004.
"""

from __future__ import annotations

import collections
import importlib
import struct
import threading
import time
from typing import Deque, Dict, List, Optional, Sequence, Tuple, Type, Union

from ..ch9 import gadget_pattern
from ..protocol import Speed
from .device import (
    Bulk, Device, Function, Interface, Interrupt, Iso, Setup, Stall, cdc_acm, cdc_call_management,
    cdc_header, cdc_union,
)

#: The source/sink pattern (as the kernel's SourceSink gadget with pattern=1): byte i is i % 63.
pattern = gadget_pattern


class LoopbackDevice(Device):
    """Vendor bulk loopback + source + sink, interrupt echo, vendor control loopback.

    ========  =========  =====================================================================
    0x01      bulk OUT   loopback: what is written comes back on 0x81 (packet by packet)
    0x81      bulk IN    stays pending until 0x01 was written (like the Loopback gadget)
    0x82      bulk IN    source: always returns the pattern ``i % 63``
    0x02      bulk OUT   sink: must carry the pattern, anything else halts 0x02 (SourceSink)
    0x03      intr OUT   interrupt echo: each report comes back on 0x83
    0x83      intr IN    pending until 0x03 was written
    ========  =========  =====================================================================

    Vendor requests: 0x5B OUT stores up to 4096 bytes, 0x5C IN returns them (SourceSink's control
    loopback); 0x5D IN returns wLength bytes of the pattern; 0x5F stalls (both directions).
    """

    pid = 0x0001
    product = "USB/IP loopback/source/sink"
    interfaces = [
        Interface(0, name="Loopback, source and sink", endpoints=[
            Bulk(0x01), Bulk(0x81), Bulk(0x82), Bulk(0x02),
            Interrupt(0x03, 64), Interrupt(0x83, 64),
        ]),
    ]
    REQ_WRITE, REQ_READ, REQ_PATTERN, REQ_STALL = 0x5B, 0x5C, 0x5D, 0x5F
    MAX_QUEUED = 16 * 1024 * 1024

    def __init__(self, busid: Optional[str] = None) -> None:
        super().__init__(busid)
        self.packets: Deque[bytes] = collections.deque()
        self.queued = 0
        self.reports: Deque[bytes] = collections.deque()
        self.control_buffer = b""
        self.sunk = 0

    def on_reset(self) -> None:
        self.packets.clear()
        self.queued = 0
        self.reports.clear()

    # loopback: keep USB packet boundaries, so a read smaller than a packet babbles as on hardware
    def bulk_out_1(self, data: bytearray) -> Optional[bool]:
        if self.queued + len(data) > self.MAX_QUEUED:
            return False
        mps = 512 if self.speed >= Speed.HIGH else 64
        view = bytes(data)
        if not view:
            self.packets.append(b"")
        for i in range(0, len(view), mps):
            self.packets.append(view[i:i + mps])
        self.queued += len(view)
        self.notify(0x81)
        return None

    def bulk_in_1(self, length: int) -> Optional[bytes]:
        if not self.packets:
            return None
        first = self.packets[0]
        if len(first) > length:  # babble: the packet does not fit in the buffer
            self.packets.popleft()
            self.queued -= len(first)
            return first
        out: List[bytes] = []
        total = 0
        while self.packets and total + len(self.packets[0]) <= length:
            pkt = self.packets.popleft()
            out.append(pkt)
            total += len(pkt)
            if len(pkt) < (512 if self.speed >= Speed.HIGH else 64):  # a short packet ends the transfer
                break
        self.queued -= total
        return b"".join(out)

    def bulk_in_2(self, length: int) -> bytes:
        return pattern(length)

    def bulk_out_2(self, data: bytearray) -> None:
        if data != pattern(len(data)):
            raise Stall()  # SourceSink halts its OUT endpoint on a bad pattern
        self.sunk += len(data)

    def interrupt_out_3(self, data: bytearray) -> None:
        if len(self.reports) < 1024:
            self.reports.append(bytes(data))
        self.notify(0x83)

    def interrupt_in_3(self, length: int) -> Optional[bytes]:
        return self.reports.popleft() if self.reports else None

    def vendor_request_out(self, setup: Setup, data: bytes) -> Optional[bool]:
        if setup.bRequest == self.REQ_WRITE:
            self.control_buffer = bytes(data[:4096])
            return None
        return False

    def vendor_request_in(self, setup: Setup) -> Optional[bytes]:
        if setup.bRequest == self.REQ_READ:
            return self.control_buffer
        if setup.bRequest == self.REQ_PATTERN:
            return pattern(setup.wLength)
        return None


class _SerialEcho(Device):
    """A USB serial device whose other side echoes: what the host writes on bulk OUT
    :attr:`UART_OUT` goes out on the UART, whose TX is wired to its RX, and comes back on bulk IN
    :attr:`UART_IN`, up to :attr:`MAX_BUFFER` bytes held for the host.

    Paced (:attr:`paced`, the default), the UART sends at the line rate the host set (the baud
    rate over the bits of a character: start, data, parity and stop bits; 960 bytes/s at 9600
    8N1) from a transmit buffer of :attr:`TX_FIFO` bytes. The device takes the host's OUT packets
    (of the endpoint's max packet size) while they fit in that buffer and NAKs the rest, so a
    bulk OUT URB stays pending until the UART has made room for its last packet, and a write
    bigger than the buffer takes its line time, as on a real bridge; each packet comes back on IN
    once the line has sent its last byte. Unpaced, everything written is taken at once (beyond
    MAX_BUFFER held bytes, OUT stalls), for echo-throughput tests. Paced, the echo stops while
    MAX_BUFFER bytes wait for the host (the line is held, nothing is lost).
    """

    UART_IN = 0x81
    UART_OUT = 0x01
    MAX_BUFFER = 1024 * 1024
    #: Bytes of host data the device holds for its UART (its transmit buffer).
    TX_FIFO = 512
    #: Send at the line rate (False: take every OUT at once). Set per device before its import.
    paced = True
    #: Longest the UART goes without looking at its line settings (the host may change the rate).
    TICK = 0.05

    def __init__(self, busid: Optional[str] = None) -> None:
        super().__init__(busid)
        self.buffer = bytearray()
        #: bytes the device took from the host (bulk OUT), in total
        self.received = 0
        self._fifo = bytearray()  # taken from the host, not sent on the line yet
        self._packets: Deque[int] = collections.deque()  # the sizes of the packets in _fifo
        self._line_t = 0.0  # when the line started sending the packet at the FIFO's head
        self._out_waiting = False  # an OUT URB waits for room in the FIFO
        self._pacer: Optional[threading.Thread] = None
        self._pacer_wake = threading.Condition(self.lock)

    # -- the line -------------------------------------------------------------------------------
    def line_settings(self) -> Tuple[int, int, int, float]:
        """(baud rate, data bits, parity bits (0 or 1), stop bits) as the host set them."""
        return 9600, 8, 0, 1.0

    def line_rate(self) -> float:
        """Characters (bytes) per second the UART sends; 0 when the baud rate is unusable."""
        baud, data, parity, stop = self.line_settings()
        if baud <= 0:
            return 0.0
        return baud / (1 + (data or 8) + parity + stop)

    @property
    def tx_pending(self) -> int:
        """Bytes taken from the host that the UART has not sent yet."""
        with self.lock:
            self._advance(time.monotonic())
            return len(self._fifo)

    def _out_packet(self) -> int:
        for itf in self.interfaces:
            for ep in itf.endpoints:
                if ep.address == self.UART_OUT:
                    return self._max_packet(ep)
        return 64

    def _advance(self, now: float) -> None:
        """Hand the packets the line has sent since it was last looked at to the host's side."""
        packets = self._packets
        rate = self.line_rate()
        moved = 0
        while packets:
            size = packets[0]
            if rate > 0 and self._line_t + size / rate > now:
                break
            if len(self.buffer) + size > self.MAX_BUFFER:
                self._line_t = now  # the host's side is full: the line is held
                break
            packets.popleft()
            self.buffer += memoryview(self._fifo)[:size]
            del self._fifo[:size]
            self._line_t = self._line_t + size / rate if rate > 0 else now
            moved += size
        if not packets:
            self._line_t = now  # an idle line banks no time
        if moved:
            self.notify(self.UART_IN)

    def _reset_line(self) -> None:
        self._fifo.clear()
        self._packets.clear()
        self._out_waiting = False
        self._pacer_wake.notify_all()

    # -- the USB side ---------------------------------------------------------------------------
    def _echo_out(self, data: bytearray) -> Optional[Union[bool, int]]:
        if not self.paced:
            if len(self.buffer) + len(data) > self.MAX_BUFFER:
                return False
            self.buffer += data
            self.received += len(data)
            self.notify(self.UART_IN)
            return None
        self._advance(time.monotonic())
        packet = self._out_packet()
        took = 0
        while took < len(data):
            size = min(packet, len(data) - took)
            if self._fifo and len(self._fifo) + size > self.TX_FIFO:
                break
            self._fifo += memoryview(data)[took:took + size]
            self._packets.append(size)
            took += size
        self.received += took
        self._out_waiting = took < len(data)
        if self._packets:
            self._start_pacer()
        return None if took == len(data) else took

    def _echo_in(self, length: int) -> Optional[bytes]:
        if not self.buffer:
            return None
        out = bytes(self.buffer[:length])
        del self.buffer[:length]
        return out

    def _start_pacer(self) -> None:
        if self._pacer is None and self._conn is not None:
            self._pacer = threading.Thread(target=self._pace, name=f"usbip-sim-uart-{self.busid}", daemon=True)
            self._pacer.start()
        else:
            self._pacer_wake.notify_all()

    def _pace(self) -> None:
        """The UART (a thread while it has something to send): hands each packet to the host's
        side when the line has sent it, and offers a waiting OUT URB the room that made."""
        with self.lock:
            try:
                while self._conn is not None and self.paced and self._packets:
                    now = time.monotonic()
                    self._advance(now)
                    if self._out_waiting and len(self._fifo) + self._out_packet() <= self.TX_FIFO:
                        # The server offers the rest; the handler says again if it still waits.
                        self._out_waiting = False
                        self.notify(self.UART_OUT)
                        continue
                    rate = self.line_rate()
                    wait = self.TICK
                    if self._packets and rate > 0:
                        wait = min(wait, max(self._line_t + self._packets[0] / rate - now, 0.0002))
                    self._pacer_wake.wait(wait)
            finally:
                self._pacer = None


class CdcAcmDevice(_SerialEcho):
    """CDC-ACM serial port that echoes: bulk OUT 0x01 comes back on bulk IN 0x81.

    Comm interface 0 (IAD, header/call management/ACM/union functional descriptors, interrupt IN
    0x83 for SERIAL_STATE notifications), data interface 1 (bulk 0x01 / 0x81). SET_LINE_CODING,
    GET_LINE_CODING, SET_CONTROL_LINE_STATE and SEND_BREAK are supported. Python code can push
    bytes to the host with :meth:`feed`. Paced by its line coding, with a 512-byte receive
    buffer (TinyUSB's CDC default at high speed: one packet).
    """

    pid = 0x0002
    product = "USB/IP CDC-ACM echo"
    functions = [Function(0, 2, 0x02, 0x02, 0x01, name="CDC serial")]
    interfaces = [
        Interface(0, cls=0x02, subclass=0x02, protocol=0x01, name="CDC ACM control",
                  extra=cdc_header() + cdc_call_management(0, 1) + cdc_acm(0x02) + cdc_union(0, 1),
                  endpoints=[Interrupt(0x83, 16)]),
        Interface(1, cls=0x0A, name="CDC ACM data", endpoints=[Bulk(0x01), Bulk(0x81)]),
    ]
    SET_LINE_CODING, GET_LINE_CODING, SET_CONTROL_LINE_STATE, SEND_BREAK = 0x20, 0x21, 0x22, 0x23
    TX_FIFO = 512

    def __init__(self, busid: Optional[str] = None) -> None:
        super().__init__(busid)
        self.line_coding = struct.pack("<IBBB", 115200, 0, 0, 8)
        self.control_line_state = 0
        #: every SET_CONTROL_LINE_STATE received, in order: (DTR, RTS) as 0/1
        self.line_state_history: List[Tuple[int, int]] = []
        #: how many SET_LINE_CODING requests arrived
        self.line_coding_requests = 0
        self.breaks: List[int] = []  #: SEND_BREAK wValues, in order
        self.notifications: Deque[bytes] = collections.deque()

    def on_reset(self) -> None:
        self.buffer.clear()
        self._reset_line()
        self.notifications.clear()
        self.control_line_state = 0

    def line_settings(self) -> Tuple[int, int, int, float]:
        baud, char_format, parity, data = struct.unpack("<IBBB", self.line_coding)
        return baud, data, 1 if parity else 0, {1: 1.5, 2: 2.0}.get(char_format, 1.0)

    def feed(self, data: bytes) -> None:
        """Bytes the 'serial port' sends to the host (as if typed on the other side)."""
        with self.lock:
            self.buffer += data
            self.notify(0x81)

    def bulk_out_1(self, data: bytearray) -> Optional[Union[bool, int]]:
        return self._echo_out(data)

    def bulk_in_1(self, length: int) -> Optional[bytes]:
        return self._echo_in(length)

    def interrupt_in_3(self, length: int) -> Optional[bytes]:
        return self.notifications.popleft() if self.notifications else None

    def class_request_out(self, setup: Setup, data: bytes) -> Optional[bool]:
        if setup.bRequest == self.SET_LINE_CODING and len(data) == 7:
            self.line_coding = bytes(data)
            self.line_coding_requests += 1
            return None
        if setup.bRequest == self.SET_CONTROL_LINE_STATE:
            self.control_line_state = setup.wValue & 3
            if len(self.line_state_history) < 4096:
                self.line_state_history.append((setup.wValue & 1, setup.wValue >> 1 & 1))
            if setup.wValue & 1 and len(self.notifications) < 64:  # DTR: report DCD + DSR
                self.notifications.append(bytes([0xA1, 0x20, 0, 0, 0, 0, 2, 0, 0x03, 0x00]))
                self.notify(0x83)
            return None
        if setup.bRequest == self.SEND_BREAK:
            if len(self.breaks) < 4096:
                self.breaks.append(setup.wValue)
            return None
        return False

    def class_request_in(self, setup: Setup) -> Optional[bytes]:
        if setup.bRequest == self.GET_LINE_CODING:
            return self.line_coding
        return None

    @property
    def baudrate(self) -> int:
        baud: int = struct.unpack_from("<I", self.line_coding)[0]
        return baud


class Cp210xDevice(_SerialEcho):
    """A Silicon Labs CP2102 USB-UART bridge (10c4:ea60) that echoes, with its vendor protocol.

    Vendor requests to interface 0 (0x41 out, 0xC1 in), as Linux's cp210x.c sends them:
    IFC_ENABLE, SET_BAUDRATE (4 bytes), GET_BAUDRATE, SET_LINE_CTL, GET_LINE_CTL, SET_BREAK,
    SET_MHS (DTR/RTS with their mask bits), GET_MDMSTS (1 byte: DTR 0x01, RTS 0x02, CTS 0x10,
    DSR 0x20, RI 0x40, DCD 0x80; here CTS, DSR and DCD follow the host's lines as a loopback
    cable would wire them), PURGE, SET_FLOW. Bulk OUT 0x01 echoes on bulk IN 0x81 (64-byte
    packets, full speed) while the interface is enabled, paced by SET_BAUDRATE / SET_LINE_CTL
    from the CP2102's 640-byte transmit buffer.
    """

    vid, pid = 0x10C4, 0xEA60
    manufacturer = "Silicon Labs"
    product = "CP2102 USB to UART Bridge Controller"
    speed = Speed.FULL
    interfaces = [Interface(0, cls=0xFF, name="CP2102 USB to UART Bridge Controller",
                            endpoints=[Bulk(0x81, 64), Bulk(0x01, 64)])]
    IFC_ENABLE, SET_LINE_CTL, GET_LINE_CTL, SET_BREAK = 0x00, 0x03, 0x04, 0x05
    SET_MHS, GET_MDMSTS, PURGE, SET_FLOW, GET_BAUDRATE, SET_BAUDRATE = 0x07, 0x08, 0x12, 0x13, 0x1D, 0x1E
    TX_FIFO = 640

    def __init__(self, busid: Optional[str] = None) -> None:
        super().__init__(busid)
        self.enabled = False
        self.baudrate = 9600
        self.line_ctl = 0x0800  # 8N1
        self.dtr = self.rts = False
        #: every SET_MHS that changed a line, in order: (DTR, RTS) as 0/1 after it
        self.line_state_history: List[Tuple[int, int]] = []
        self.line_coding_requests = 0
        self.breaks: List[int] = []

    def on_reset(self) -> None:
        self.enabled = False
        self.buffer.clear()
        self._reset_line()
        self.dtr = self.rts = False

    def line_settings(self) -> Tuple[int, int, int, float]:
        ctl = self.line_ctl
        return self.baudrate, ctl >> 8, 1 if ctl >> 4 & 0xF else 0, {1: 1.5, 2: 2.0}.get(ctl & 0xF, 1.0)

    def bulk_out_1(self, data: bytearray) -> Optional[Union[bool, int]]:
        return self._echo_out(data) if self.enabled else False

    def bulk_in_1(self, length: int) -> Optional[bytes]:
        return self._echo_in(length) if self.enabled else None

    def vendor_request_out(self, setup: Setup, data: bytes) -> Optional[bool]:
        req, value = setup.bRequest, setup.wValue
        if req == self.IFC_ENABLE:
            self.enabled = bool(value & 1)
            if self.enabled:
                self.notify(0x81)
        elif req == self.SET_BAUDRATE and len(data) == 4:
            self.baudrate = struct.unpack("<I", data)[0]
            self.line_coding_requests += 1
        elif req == self.SET_LINE_CTL:
            self.line_ctl = value
            self.line_coding_requests += 1
        elif req == self.SET_MHS:
            if value & 0x0100:
                self.dtr = bool(value & 0x01)
            if value & 0x0200:
                self.rts = bool(value & 0x02)
            if len(self.line_state_history) < 4096:
                self.line_state_history.append((int(self.dtr), int(self.rts)))
        elif req == self.SET_BREAK:
            self.breaks.append(value)
        elif req == self.PURGE:
            self.buffer.clear()
            self._reset_line()
        elif req != self.SET_FLOW:
            return False
        return None

    def vendor_request_in(self, setup: Setup) -> Optional[bytes]:
        if setup.bRequest == self.GET_MDMSTS:
            bits = (0x01 if self.dtr else 0) | (0x02 if self.rts else 0)
            bits |= (0x10 if self.rts else 0) | (0x20 | 0x80 if self.dtr else 0)
            return bytes([bits])
        if setup.bRequest == self.GET_BAUDRATE:
            return struct.pack("<I", self.baudrate)
        if setup.bRequest == self.GET_LINE_CTL:
            return struct.pack("<H", self.line_ctl)
        return None


class Ch34xDevice(_SerialEcho):
    """A WCH CH340 USB-UART bridge (1a86:7523) that echoes, with ch341.c's register protocol.

    READ_VERSION (0x5F), SERIAL_INIT (0xA1), WRITE_REG (0x9A: wValue names two registers, wIndex
    holds their values), READ_REG (0x95; 0x0706 returns the inverted modem inputs, here CTS/DSR/
    DCD following RTS/DTR as a loopback cable wires them), MODEM_CTRL (0xA4, lines inverted).
    :attr:`baudrate` is decoded from the prescaler/divisor registers. Bulk OUT 0x02 echoes on
    bulk IN 0x82 (32-byte packets, full speed); interrupt IN 0x81 is declared and stays quiet.
    Paced by the divisor and LCR registers, from a 128-byte transmit buffer (WCH does not
    document its size; the FT232R's).
    """

    vid, pid = 0x1A86, 0x7523
    manufacturer = None
    product = "USB Serial"
    speed = Speed.FULL
    interfaces = [Interface(0, cls=0xFF, subclass=0x01, protocol=0x02, name="CH340",
                            endpoints=[Bulk(0x82, 32), Bulk(0x02, 32), Interrupt(0x81, 8)])]
    READ_VERSION, WRITE_REG, READ_REG, SERIAL_INIT, MODEM_CTRL = 0x5F, 0x9A, 0x95, 0xA1, 0xA4
    VERSION = 0x31
    UART_IN, UART_OUT = 0x82, 0x02
    TX_FIFO = 128

    def __init__(self, busid: Optional[str] = None) -> None:
        super().__init__(busid)
        self.regs: Dict[int, int] = {0x05: 0x01, 0x18: 0xC3}
        self.initialised = False
        self.dtr = self.rts = False
        self.line_state_history: List[Tuple[int, int]] = []
        self.line_coding_requests = 0

    def on_reset(self) -> None:
        self.buffer.clear()
        self._reset_line()
        self.dtr = self.rts = False

    def line_settings(self) -> Tuple[int, int, int, float]:
        lcr = self.lcr
        return self.baudrate or 9600, 5 + (lcr & 3), 1 if lcr & 0x08 else 0, 2.0 if lcr & 0x04 else 1.0

    @property
    def baudrate(self) -> Optional[int]:
        ps, div_reg = self.regs.get(0x12), self.regs.get(0x13)
        if ps is None or div_reg is None or div_reg == 0:
            return None
        fact = ps >> 2 & 1
        clk_div = 1 << (12 - 3 * (ps & 3) - fact)
        return round(48_000_000 / (clk_div * (0x100 - div_reg)))

    @property
    def lcr(self) -> int:
        return self.regs.get(0x18, 0)

    def bulk_out_2(self, data: bytearray) -> Optional[Union[bool, int]]:
        return self._echo_out(data)

    def bulk_in_2(self, length: int) -> Optional[bytes]:
        return self._echo_in(length)

    def interrupt_in_1(self, length: int) -> Optional[bytes]:
        return None

    def vendor_request_out(self, setup: Setup, data: bytes) -> Optional[bool]:
        req = setup.bRequest
        if req == self.SERIAL_INIT:
            self.initialised = True
        elif req == self.WRITE_REG:
            a, b = setup.wValue >> 8, setup.wValue & 0xFF
            self.regs[a], self.regs[b] = setup.wIndex >> 8, setup.wIndex & 0xFF
            if {a, b} & {0x12, 0x13, 0x18}:
                self.line_coding_requests += 1
        elif req == self.MODEM_CTRL:
            bits = ~setup.wValue & 0xFF
            self.dtr, self.rts = bool(bits & 0x20), bool(bits & 0x40)
            if len(self.line_state_history) < 4096:
                self.line_state_history.append((int(self.dtr), int(self.rts)))
        else:
            return False
        return None

    def vendor_request_in(self, setup: Setup) -> Optional[bytes]:
        if setup.bRequest == self.READ_VERSION:
            return bytes([self.VERSION, 0])[:setup.wLength]
        if setup.bRequest == self.READ_REG:
            if setup.wValue == 0x0706:
                inputs = (0x01 if self.rts else 0) | (0x02 | 0x08 if self.dtr else 0)
                return bytes([~inputs & 0xFF, 0xEE])[:setup.wLength]
            a, b = setup.wValue >> 8, setup.wValue & 0xFF
            return bytes([self.regs.get(b, 0), self.regs.get(a, 0)])[:setup.wLength]
        return None


class FtdiDevice(_SerialEcho):
    """An FTDI FT232R USB-UART bridge (0403:6001) that echoes, with ftdi_sio.c's requests.

    RESET (0), MODEM_CTRL (1), SET_FLOW_CTRL (2), SET_BAUD_RATE (3, decoded into
    :attr:`baudrate`), SET_DATA (4), GET_MODEM_STATUS (5: CTS/DSR/DCD follow RTS/DTR as a
    loopback cable wires them), SET_LATENCY_TIMER (9). Bulk OUT 0x02 echoes on bulk IN 0x81;
    every IN packet (64 bytes, full speed) starts with the two status bytes, as the chip sends.
    Paced by SET_BAUD_RATE / SET_DATA, from the FT232R's 128-byte transmit buffer.
    """

    vid, pid = 0x0403, 0x6001
    manufacturer = "FTDI"
    product = "FT232R USB UART"
    speed = Speed.FULL
    interfaces = [Interface(0, cls=0xFF, subclass=0xFF, protocol=0xFF, name="FT232R USB UART",
                            endpoints=[Bulk(0x81, 64), Bulk(0x02, 64)])]
    RESET, MODEM_CTRL, SET_FLOW_CTRL, SET_BAUD_RATE, SET_DATA, GET_MODEM_STATUS = 0, 1, 2, 3, 4, 5
    SET_LATENCY_TIMER = 9
    _FRACTIONS = {0: 0, 3: 1, 2: 2, 4: 3, 1: 4, 5: 5, 6: 6, 7: 7}  # the chip's code -> eighths
    UART_OUT = 0x02
    TX_FIFO = 128

    def __init__(self, busid: Optional[str] = None) -> None:
        super().__init__(busid)
        self.divisor = 0x4138  # 9600
        self.data = 0x0008
        self.latency = 16
        self.dtr = self.rts = False
        self.line_state_history: List[Tuple[int, int]] = []
        self.line_coding_requests = 0

    def on_reset(self) -> None:
        self.buffer.clear()
        self._reset_line()
        self.dtr = self.rts = False

    def line_settings(self) -> Tuple[int, int, int, float]:
        data = self.data
        return self.baudrate, data & 0xFF, 1 if data >> 8 & 7 else 0, {1: 1.5, 2: 2.0}.get(data >> 11 & 7, 1.0)

    @property
    def baudrate(self) -> int:
        d = self.divisor
        if d == 0:
            return 3_000_000
        if d == 1:
            return 2_000_000
        eighths = (d & 0x3FFF) * 8 + self._FRACTIONS[(d >> 14) & 7]
        return round(3_000_000 * 8 / eighths)

    def _modem(self) -> int:
        return 0x01 | (0x10 if self.rts else 0) | (0x20 | 0x80 if self.dtr else 0)

    def bulk_out_2(self, data: bytearray) -> Optional[Union[bool, int]]:
        return self._echo_out(data)

    def bulk_in_1(self, length: int) -> Optional[bytes]:
        if not self.buffer or length < 3:
            return None
        out = bytearray()
        status = bytes([self._modem(), 0x60])  # line status: TX holding and shift registers empty
        while self.buffer and len(out) + 3 <= length:
            room = min(62, length - len(out) - 2)
            out += status + self.buffer[:room]
            del self.buffer[:room]
            if room < 62:
                break
        return bytes(out)

    def vendor_request_out(self, setup: Setup, data: bytes) -> Optional[bool]:
        req = setup.bRequest
        if req == self.RESET:
            if setup.wValue in (0, 1):  # RX: what the chip holds for the host
                self.buffer.clear()
            if setup.wValue in (0, 2):  # TX: what it has yet to send
                self._reset_line()
        elif req == self.MODEM_CTRL:
            if setup.wValue & 0x0100:
                self.dtr = bool(setup.wValue & 1)
            if setup.wValue & 0x0200:
                self.rts = bool(setup.wValue & 2)
            if len(self.line_state_history) < 4096:
                self.line_state_history.append((int(self.dtr), int(self.rts)))
        elif req == self.SET_BAUD_RATE:
            self.divisor = setup.wValue | (setup.wIndex & 0x01) << 16  # bit 16 rides in wIndex
            self.line_coding_requests += 1
        elif req == self.SET_DATA:
            if (setup.wValue & ~0x4000) != (self.data & ~0x4000):
                self.line_coding_requests += 1
            self.data = setup.wValue
        elif req == self.SET_LATENCY_TIMER:
            self.latency = setup.wValue & 0xFF
        elif req != self.SET_FLOW_CTRL:
            return False
        return None

    def vendor_request_in(self, setup: Setup) -> Optional[bytes]:
        if setup.bRequest == self.GET_MODEM_STATUS:
            return bytes([self._modem(), 0x60])[:setup.wLength]
        return None


class _FtdiPort:
    """The line state of one FTDI port."""

    def __init__(self) -> None:
        self.divisor = 0x4138
        self.data = 0x0008
        self.latency = 16
        self.dtr = self.rts = False
        self.line_state_history: List[Tuple[int, int]] = []
        self.buffer = bytearray()

    def modem(self) -> int:
        return 0x01 | (0x10 if self.rts else 0) | (0x20 | 0x80 if self.dtr else 0)


class Ft2232hDevice(Device):
    """An FTDI FT2232H (0403:6010, bcdDevice 7.00, high speed) with two echoing UARTs: port A
    on interface 0 (bulk IN 0x81, OUT 0x02), port B on interface 1 (IN 0x83, OUT 0x04), as on
    Espressif's ESP-Prog. Requests carry the port (1 or 2) in wIndex's low byte; SET_BAUD_RATE's
    wIndex high byte holds the divisor's bits 16-17 (bit 17: the 120 MHz clock), decoded into
    :meth:`baudrate`. IN packets (512 bytes) start with the two status bytes.
    """

    vid, pid = 0x0403, 0x6010
    bcd_device = 0x0700
    manufacturer = "FTDI"
    product = "Dual RS232-HS"
    interfaces = [
        Interface(0, cls=0xFF, subclass=0xFF, protocol=0xFF, name="Dual RS232-HS",
                  endpoints=[Bulk(0x81), Bulk(0x02)]),
        Interface(1, cls=0xFF, subclass=0xFF, protocol=0xFF, name="Dual RS232-HS",
                  endpoints=[Bulk(0x83), Bulk(0x04)]),
    ]
    _FRACTIONS = FtdiDevice._FRACTIONS
    MAX_BUFFER = 1024 * 1024

    def __init__(self, busid: Optional[str] = None) -> None:
        super().__init__(busid)
        self.ports = {1: _FtdiPort(), 2: _FtdiPort()}

    def on_reset(self) -> None:
        for port in self.ports.values():
            port.buffer.clear()
            port.dtr = port.rts = False

    def baudrate(self, port: int) -> int:
        d = self.ports[port].divisor
        base = 12_000_000 if d & 0x20000 else 3_000_000
        d &= 0x1FFFF
        if d == 0:
            return base
        if d == 1:
            return base * 2 // 3
        eighths = (d & 0x3FFF) * 8 + self._FRACTIONS[(d >> 14) & 7]
        return round(base * 8 / eighths)

    def _out(self, number: int, data: bytearray) -> Optional[bool]:
        port = self.ports[number]
        if len(port.buffer) + len(data) > self.MAX_BUFFER:
            return False
        port.buffer += data
        self.notify(0x81 if number == 1 else 0x83)
        return None

    def _in(self, number: int, length: int) -> Optional[bytes]:
        port = self.ports[number]
        if not port.buffer or length < 3:
            return None
        out = bytearray()
        status = bytes([port.modem(), 0x60])
        while port.buffer and len(out) + 3 <= length:
            room = min(510, length - len(out) - 2)
            out += status + port.buffer[:room]
            del port.buffer[:room]
            if room < 510:
                break
        return bytes(out)

    def bulk_out_2(self, data: bytearray) -> Optional[bool]:
        return self._out(1, data)

    def bulk_out_4(self, data: bytearray) -> Optional[bool]:
        return self._out(2, data)

    def bulk_in_1(self, length: int) -> Optional[bytes]:
        return self._in(1, length)

    def bulk_in_3(self, length: int) -> Optional[bytes]:
        return self._in(2, length)

    def vendor_request_out(self, setup: Setup, data: bytes) -> Optional[bool]:
        port = self.ports.get(setup.wIndex & 0xFF)
        if port is None:
            return False
        req = setup.bRequest
        if req == FtdiDevice.RESET:
            if setup.wValue in (0, 1):
                port.buffer.clear()
        elif req == FtdiDevice.MODEM_CTRL:
            if setup.wValue & 0x0100:
                port.dtr = bool(setup.wValue & 1)
            if setup.wValue & 0x0200:
                port.rts = bool(setup.wValue & 2)
            port.line_state_history.append((int(port.dtr), int(port.rts)))
        elif req == FtdiDevice.SET_BAUD_RATE:
            port.divisor = setup.wValue | (setup.wIndex >> 8 & 0x03) << 16
        elif req == FtdiDevice.SET_DATA:
            port.data = setup.wValue
        elif req == FtdiDevice.SET_LATENCY_TIMER:
            port.latency = setup.wValue & 0xFF
        elif req != FtdiDevice.SET_FLOW_CTRL:
            return False
        return None

    def vendor_request_in(self, setup: Setup) -> Optional[bytes]:
        port = self.ports.get(setup.wIndex & 0xFF)
        if setup.bRequest == FtdiDevice.GET_MODEM_STATUS and port is not None:
            return bytes([port.modem(), 0x60])[:setup.wLength]
        return None


#: The HID 1.11 boot keyboard report descriptor (appendix B.1 / E.6): 8-byte input report
#: (modifiers, reserved, 6 key codes), 1-byte LED output report.
KEYBOARD_REPORT_DESCRIPTOR = bytes([
    0x05, 0x01, 0x09, 0x06, 0xA1, 0x01,              # Usage Page (Desktop), Usage (Keyboard), Collection (App)
    0x05, 0x07, 0x19, 0xE0, 0x29, 0xE7,              # Usage Page (Keys), Usage Min/Max (modifiers)
    0x15, 0x00, 0x25, 0x01, 0x75, 0x01, 0x95, 0x08,  # Logical 0..1, size 1, count 8
    0x81, 0x02,                                      # Input (Data, Var, Abs): modifiers
    0x95, 0x01, 0x75, 0x08, 0x81, 0x01,              # Input (Const): reserved byte
    0x95, 0x05, 0x75, 0x01, 0x05, 0x08, 0x19, 0x01, 0x29, 0x05,  # 5 LEDs
    0x91, 0x02,                                      # Output (Data, Var, Abs)
    0x95, 0x01, 0x75, 0x03, 0x91, 0x01,              # Output (Const): LED padding
    0x95, 0x06, 0x75, 0x08, 0x15, 0x00, 0x25, 0x65,  # 6 keys, 0..101
    0x05, 0x07, 0x19, 0x00, 0x29, 0x65, 0x81, 0x00,  # Usage Page (Keys), Input (Data, Array)
    0xC0,                                            # End Collection
])

_KEYCODES: Dict[str, Tuple[int, int]] = {}
for _i, _c in enumerate("abcdefghijklmnopqrstuvwxyz"):
    _KEYCODES[_c] = (0x04 + _i, 0)
    _KEYCODES[_c.upper()] = (0x04 + _i, 0x02)
for _i, _c in enumerate("1234567890"):
    _KEYCODES[_c] = (0x1E + _i, 0)
for _c, _code in (("\n", 0x28), ("\t", 0x2B), (" ", 0x2C), ("-", 0x2D), ("=", 0x2E), (".", 0x37),
                  (",", 0x36), ("/", 0x38), (";", 0x33)):
    _KEYCODES[_c] = (_code, 0)


class HidKeyboard(Device):
    """A HID boot keyboard: reports on interrupt IN 0x81, LED output reports on interrupt OUT 0x02.

    Python code injects keys with :meth:`send_report`, :meth:`press` or :meth:`type_text`; the
    reports queue up (at most 1024) until the host reads them. :attr:`leds` holds the last LED
    report (from interrupt OUT or SET_REPORT).
    """

    pid = 0x0003
    product = "USB/IP HID keyboard"
    interfaces = [
        Interface(0, cls=0x03, subclass=0x01, protocol=0x01, name="Keyboard",
                  hid_report=KEYBOARD_REPORT_DESCRIPTOR,
                  endpoints=[Interrupt(0x81, 8), Interrupt(0x02, 8)]),
    ]
    GET_REPORT, GET_IDLE, GET_PROTOCOL = 0x01, 0x02, 0x03
    SET_REPORT, SET_IDLE, SET_PROTOCOL = 0x09, 0x0A, 0x0B

    def __init__(self, busid: Optional[str] = None) -> None:
        super().__init__(busid)
        self.reports: Deque[bytes] = collections.deque(maxlen=1024)
        self.current = bytes(8)
        self.leds = 0
        self.idle = 0
        self.protocol = 1  # report protocol

    def on_reset(self) -> None:
        self.reports.clear()
        self.current = bytes(8)

    def send_report(self, modifiers: int = 0, keys: Sequence[int] = ()) -> None:
        """Queue one 8-byte input report (safe from any thread)."""
        keys = list(keys)[:6]
        report = bytes([modifiers & 0xFF, 0, *keys, *([0] * (6 - len(keys)))])
        with self.lock:
            self.reports.append(report)
            self.notify(0x81)

    def press(self, keycode: int, modifiers: int = 0) -> None:
        """A key press and its release: two reports."""
        self.send_report(modifiers, [keycode])
        self.send_report(0, [])

    def type_text(self, text: str) -> None:
        for ch in text:
            code, mods = _KEYCODES[ch]
            self.press(code, mods)

    def interrupt_in_1(self, length: int) -> Optional[bytes]:
        if not self.reports:
            return None
        self.current = self.reports.popleft()
        return self.current

    def interrupt_out_2(self, data: bytearray) -> None:
        if data:
            self.leds = data[0]

    def class_request_in(self, setup: Setup) -> Optional[bytes]:
        if setup.bRequest == self.GET_REPORT:
            return self.current if setup.wValue >> 8 == 1 else None
        if setup.bRequest == self.GET_IDLE:
            return bytes([self.idle])
        if setup.bRequest == self.GET_PROTOCOL:
            return bytes([self.protocol])
        return None

    def class_request_out(self, setup: Setup, data: bytes) -> Optional[bool]:
        if setup.bRequest == self.SET_REPORT and data:
            self.leds = data[0]
            return None
        if setup.bRequest == self.SET_IDLE:
            self.idle = setup.wValue >> 8
            return None
        if setup.bRequest == self.SET_PROTOCOL:
            self.protocol = setup.wValue & 1
            return None
        return False


class IsoDevice(Device):
    """Isochronous IN 0x81 / OUT 0x01 on interface 0 alternate setting 1 (alt 0 has none).

    ISO OUT packets are kept (at most 1024) and come back on ISO IN, one per requested packet;
    when none is stored, a packet is filled with its sequence number (``seq & 0xFF``) to the full
    requested length. :attr:`received` counts the ISO OUT packets.
    """

    pid = 0x0004
    product = "USB/IP isochronous"
    interfaces = [
        Interface(0, alt=0, name="Isochronous (idle)"),
        Interface(0, alt=1, name="Isochronous streaming",
                  endpoints=[Iso(0x81, 1024, 1), Iso(0x01, 1024, 1)]),
    ]

    def __init__(self, busid: Optional[str] = None) -> None:
        super().__init__(busid)
        self.stored: Deque[bytes] = collections.deque(maxlen=1024)
        self.sequence = 0
        self.received = 0

    def on_reset(self) -> None:
        self.stored.clear()

    def iso_out_1(self, packets: List[bytes]) -> None:
        self.stored.extend(packets)
        self.received += len(packets)

    def iso_in_1(self, packet_lengths: List[int]) -> List[bytes]:
        out = []
        for n in packet_lengths:
            if self.stored:
                out.append(self.stored.popleft())
            else:
                out.append(bytes([self.sequence & 0xFF]) * n)
            self.sequence += 1
        return out


#: Stock device name -> class, or "module:Class" for a class in a module that imports this one.
STOCK: Dict[str, Union[Type[Device], str]] = {
    "loopback": LoopbackDevice,
    "acm": CdcAcmDevice,
    "hid": HidKeyboard,
    "iso": IsoDevice,
    "cp210x": Cp210xDevice,
    "ch34x": Ch34xDevice,
    "ftdi": FtdiDevice,
    "ft2232h": Ft2232hDevice,
    "esp32s3": "esp:Esp32S3Device",
    "esp32s3-uart": "esp:Esp32S3DevKit",
    "esp32s3-ch340": "esp:Esp32S3DevKitCh340",
    "esp32s3-ftdi": "esp:Esp32S3DevKitFtdi",
}


#: What the virtual server exports when not told otherwise (the others are chosen by name).
DEFAULT_DEVICES = ("loopback", "acm", "hid", "iso")


#: Appended to a serial echo's stock name ("acm-unpaced"): the device takes every write at once
#: instead of at its line rate (see :class:`_SerialEcho`), for echo-throughput benchmarks.
UNPACED = "-unpaced"


def stock_devices(names: Sequence[str] = DEFAULT_DEVICES, count: int = 1) -> List[Device]:
    """Fresh instances of the stock devices: copy ``c`` (0-based) on bus ``c + 1``, busids
    ``"<bus>-<port>"`` with ports 1, 2, ... in the order of ``names``. A serial echo's name
    followed by ``-unpaced`` (:data:`UNPACED`) gives it ``paced = False``."""
    devices: List[Device] = []
    for copy in range(count):
        for port, name in enumerate(names, start=1):
            base = name[:-len(UNPACED)] if name.endswith(UNPACED) else name
            try:
                entry = STOCK[base]
            except KeyError:
                raise ValueError(f"unknown stock device {name!r} (known: {', '.join(STOCK)}; a serial "
                                 f"echo's name{UNPACED} takes writes at once)") from None
            if isinstance(entry, str):  # defined in another module (which imports this one)
                module, _, attr = entry.partition(":")
                cls: Type[Device] = getattr(importlib.import_module(f"{__package__}.{module}"), attr)
            else:
                cls = entry
            device = cls(busid=f"{copy + 1}-{port}")
            if base != name:
                if not isinstance(device, _SerialEcho):
                    raise ValueError(f"{base!r} is not a serial echo: {name!r} means nothing")
                device.paced = False
            devices.append(device)
    return devices


__all__ = ["DEFAULT_DEVICES", "LoopbackDevice", "CdcAcmDevice", "Cp210xDevice", "Ch34xDevice", "FtdiDevice", "Ft2232hDevice", "HidKeyboard", "IsoDevice", "stock_devices", "STOCK",
           "UNPACED", "pattern", "KEYBOARD_REPORT_DESCRIPTOR"]
