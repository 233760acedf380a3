"""A virtual ESP32-S3 on its USB-Serial-JTAG port (303a:1001): enough ROM bootloader for esptool.

The serial side is a CDC-ACM function (:class:`~.devices.CdcAcmDevice`). The chip runs its
"application" (which ignores what it is sent) until esptool's USB-JTAG reset sequence, seen as
SET_CONTROL_LINE_STATE requests: DTR high with RTS low straps GPIO0 low ("download"), then RTS
high with DTR low resets the chip, which starts in download mode if the strap was set and
cleared by nothing but (DTR, RTS) = (0, 0) in between; otherwise it resets into the application
(esptool's ``--after hard-reset``).

In download mode it speaks the ROM loader's serial protocol (esptool's loader.py; SLIP-framed
requests ``00 op len(LE16) checksum(LE32) data``, replies ``01 op len value data status(4)``):
SYNC (answered eight times, as the ROM does), READ_REG / WRITE_REG (registers kept in a dict; the
SPI controller runs RDID and RDSR when its USR bit is written), GET_SECURITY_INFO (chip id 9),
SPI_ATTACH, SPI_SET_PARAMS, CHANGE_BAUDRATE, FLASH_BEGIN / DATA / END, FLASH_DEFL_BEGIN / DATA /
END (zlib), SPI_FLASH_MD5 (32 hex digits, as the ROM answers) and READ_FLASH_SLOW (64-byte
blocks). The flash is :attr:`flash` (4 MiB, erased to 0xFF), and survives resets and reconnects.
The flasher stub is not emulated: run esptool with ``--no-stub``.
"""

from __future__ import annotations

import hashlib
import struct
import time
import zlib
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Tuple

from .device import Setup
from .devices import CdcAcmDevice, Ch34xDevice, Cp210xDevice, FtdiDevice

if TYPE_CHECKING:
    from .devices import _SerialEcho

    class _BridgeBase(_SerialEcho):
        """What :class:`_ClassicCircuit` uses of the USB-UART bridge it is mixed into."""

        dtr: bool
        rts: bool

        def vendor_request_out(self, setup: Setup, data: bytes) -> Optional[bool]: ...
else:
    # At run time the mixin stays a plain class: the bridge after it in the MRO supplies these.
    _BridgeBase = object

SLIP_END, SLIP_ESC, SLIP_ESC_END, SLIP_ESC_ESC = 0xC0, 0xDB, 0xDC, 0xDD
SYNC, WRITE_REG, READ_REG, SPI_SET_PARAMS, SPI_ATTACH, CHANGE_BAUDRATE = 0x08, 0x09, 0x0A, 0x0B, 0x0D, 0x0F
FLASH_BEGIN, FLASH_DATA, FLASH_END = 0x02, 0x03, 0x04
FLASH_DEFL_BEGIN, FLASH_DEFL_DATA, FLASH_DEFL_END = 0x10, 0x11, 0x12
SPI_FLASH_MD5, GET_SECURITY_INFO, READ_FLASH_SLOW = 0x13, 0x14, 0x0E
CHECKSUM_MAGIC = 0xEF
SPI_REG_BASE = 0x60002000
SPI_CMD_REG, SPI_USR2_REG, SPI_W0_REG = SPI_REG_BASE, SPI_REG_BASE + 0x20, SPI_REG_BASE + 0x58
SPI_CMD_USR = 1 << 18
#: JEDEC id the virtual flash answers RDID with: Winbond (0xEF), 4 MiB (0x16)
FLASH_ID = 0x1640EF
ESP32S3_CHIP_ID = 9
#: ROM error codes (esptool's loader.py: 0x05 invalid message, 0x07 invalid CRC...)
ERR_INVALID = 0x05
ERR_CRC = 0x07


def slip(frame: bytes) -> bytes:
    out = bytearray([SLIP_END])
    for b in frame:
        if b == SLIP_END:
            out += bytes([SLIP_ESC, SLIP_ESC_END])
        elif b == SLIP_ESC:
            out += bytes([SLIP_ESC, SLIP_ESC_ESC])
        else:
            out.append(b)
    out.append(SLIP_END)
    return bytes(out)


def checksum(data: bytes) -> int:
    state = CHECKSUM_MAGIC
    for b in data:
        state ^= b
    return state


class Esp32S3Rom:
    """The chip: its 4 MiB flash, its mode, and the ROM loader's protocol on its UART.

    ``emit(bytes)`` is how it sends (the USB side of whatever bridge it sits behind).
    """

    FLASH_SIZE = 4 * 1024 * 1024
    MAX_FRAME = 0x4000 + 64  # a FLASH_DATA block of 16 KiB and its header

    def __init__(self, emit: Callable[[bytes], None]) -> None:
        self.emit = emit
        self.flash = bytearray(b"\xff" * self.FLASH_SIZE)
        self.mode = "app"
        self.resets: List[str] = []  #: the mode of each reset, in order
        self._frame: Optional[bytearray] = None
        self._esc = False
        self.regs: Dict[int, int] = {}
        self._write: Optional[Dict[str, int]] = None
        self._inflate: Any = None

    def reset(self, mode: str) -> None:
        """The chip resets and starts its bootloader ("download") or its application ("app")."""
        self.mode = mode
        self.resets.append(mode)
        self._frame = None
        self._write = self._inflate = None
        if mode == "download":
            self.emit(b"ESP-ROM:esp32s3-20210327\r\nwaiting for download\r\n")

    def feed(self, data: bytes) -> None:
        """Bytes arriving on the chip's UART."""
        if self.mode != "download":
            return  # the application does not read its console here
        for b in data:
            if b == SLIP_END:
                if self._frame:
                    self._command(bytes(self._frame))
                self._frame = bytearray()
                self._esc = False
            elif self._frame is None:
                continue  # noise between frames
            elif self._esc:
                self._frame.append(SLIP_END if b == SLIP_ESC_END else SLIP_ESC if b == SLIP_ESC_ESC else b)
                self._esc = False
            elif b == SLIP_ESC:
                self._esc = True
            elif len(self._frame) < self.MAX_FRAME:
                self._frame.append(b)

    def _reply(self, op: int, value: int = 0, data: bytes = b"", error: int = 0) -> None:
        body = data + bytes([1 if error else 0, error, 0, 0])
        self.emit(slip(struct.pack("<BBHI", 1, op, len(body), value) + body))

    def _command(self, frame: bytes) -> None:
        if len(frame) < 8 or frame[0] != 0:
            return
        _, op, size, chk = struct.unpack_from("<BBHI", frame)
        data = frame[8:8 + size]
        handler = getattr(self, f"_op_{op:02x}", None)
        if handler is None:
            self._reply(op, error=ERR_INVALID)
            return
        handler(op, data, chk)

    def _op_08(self, op: int, data: bytes, chk: int) -> None:  # SYNC
        for _ in range(8):
            self._reply(op, value=0x20120707)

    def _op_0a(self, op: int, data: bytes, chk: int) -> None:  # READ_REG
        (addr,) = struct.unpack_from("<I", data)
        self._reply(op, value=self.regs.get(addr, 0))

    def _op_09(self, op: int, data: bytes, chk: int) -> None:  # WRITE_REG addr, value, mask, delay
        addr, value, mask, _ = struct.unpack_from("<IIII", data)
        old = self.regs.get(addr, 0)
        self.regs[addr] = (old & ~mask) | (value & mask) if mask != 0xFFFFFFFF else value
        if addr == SPI_CMD_REG and value & SPI_CMD_USR:
            command = self.regs.get(SPI_USR2_REG, 0) & 0xFFFF
            if command == 0x9F:  # RDID
                self.regs[SPI_W0_REG] = FLASH_ID
            elif command in (0x05, 0x35):  # RDSR, RDSR2: idle, unprotected
                self.regs[SPI_W0_REG] = 0
            self.regs[SPI_CMD_REG] = 0  # done at once
        self._reply(op)

    def _op_14(self, op: int, data: bytes, chk: int) -> None:  # GET_SECURITY_INFO
        self._reply(op, data=struct.pack("<IB7sII", 0, 0, bytes(7), ESP32S3_CHIP_ID, 0))

    def _ok(self, op: int, data: bytes, chk: int) -> None:
        self._reply(op)

    _op_0b = _op_0d = _op_0f = _ok  # SPI_SET_PARAMS, SPI_ATTACH, CHANGE_BAUDRATE

    def _op_02(self, op: int, data: bytes, chk: int) -> None:  # FLASH_BEGIN
        erase, _, _, offset = struct.unpack_from("<IIII", data)
        if offset + erase > self.FLASH_SIZE:
            self._reply(op, error=ERR_INVALID)
            return
        self.flash[offset:offset + erase] = b"\xff" * erase
        self._write = {"offset": offset, "at": offset}
        self._reply(op)

    def _op_03(self, op: int, data: bytes, chk: int) -> None:  # FLASH_DATA
        length = struct.unpack_from("<I", data)[0]
        payload = data[16:16 + length]
        if self._write is None or len(payload) != length or checksum(payload) != chk & 0xFF:
            self._reply(op, error=ERR_CRC if self._write is not None else ERR_INVALID)
            return
        self._store(payload)
        self._reply(op)

    def _store(self, payload: bytes) -> None:
        assert self._write is not None
        at = self._write["at"]
        payload = payload[:max(0, self.FLASH_SIZE - at)]
        self.flash[at:at + len(payload)] = payload
        self._write["at"] = at + len(payload)

    def _op_04(self, op: int, data: bytes, chk: int) -> None:  # FLASH_END
        self._write = None
        self._reply(op)

    def _op_10(self, op: int, data: bytes, chk: int) -> None:  # FLASH_DEFL_BEGIN
        size, _, _, offset = struct.unpack_from("<IIII", data)
        if offset + size > self.FLASH_SIZE:
            self._reply(op, error=ERR_INVALID)
            return
        erase = (size + 0xFFF) // 0x1000 * 0x1000
        self.flash[offset:offset + erase] = b"\xff" * min(erase, self.FLASH_SIZE - offset)
        self._write = {"offset": offset, "at": offset}
        self._inflate = zlib.decompressobj()
        self._reply(op)

    def _op_11(self, op: int, data: bytes, chk: int) -> None:  # FLASH_DEFL_DATA
        length = struct.unpack_from("<I", data)[0]
        payload = data[16:16 + length]
        if self._write is None or self._inflate is None or len(payload) != length \
                or checksum(payload) != chk & 0xFF:
            self._reply(op, error=ERR_CRC if self._write is not None else ERR_INVALID)
            return
        try:
            self._store(self._inflate.decompress(payload, self.FLASH_SIZE))
        except zlib.error:
            self._reply(op, error=ERR_INVALID)
            return
        self._reply(op)

    def _op_12(self, op: int, data: bytes, chk: int) -> None:  # FLASH_DEFL_END
        self._write = self._inflate = None
        self._reply(op)

    def _op_13(self, op: int, data: bytes, chk: int) -> None:  # SPI_FLASH_MD5
        addr, size = struct.unpack_from("<II", data)
        digest = hashlib.md5(bytes(self.flash[addr:addr + size])).hexdigest().encode()
        self._reply(op, data=digest)

    def _op_0e(self, op: int, data: bytes, chk: int) -> None:  # READ_FLASH_SLOW
        addr, size = struct.unpack_from("<II", data)
        block = bytes(self.flash[addr:addr + min(size, 64)])
        self._reply(op, data=block.ljust(64, b"\xff"))




class Esp32S3Device(CdcAcmDevice):
    """An ESP32-S3's USB-Serial-JTAG with a ROM bootloader esptool can talk to (``--no-stub``).

    Its reset circuit: DTR high with RTS low straps GPIO0 low; RTS high with DTR low resets the
    chip, into download mode if the strap was set (and not cleared by (0, 0) since).
    """

    vid, pid = 0x303A, 0x1001
    manufacturer = "Espressif"
    product = "USB JTAG/serial debug unit"

    def __init__(self, busid: Optional[str] = None) -> None:
        super().__init__(busid)
        self.chip = Esp32S3Rom(self._emit)
        self._strap = False
        self._lines = (0, 0)

    @property
    def flash(self) -> bytearray:
        return self.chip.flash

    @property
    def resets(self) -> List[str]:
        return self.chip.resets

    def _emit(self, data: bytes) -> None:
        self.buffer += data
        self.notify(self.UART_IN)

    def class_request_out(self, setup: Setup, data: bytes) -> Optional[bool]:
        result = super().class_request_out(setup, data)
        if setup.bRequest == self.SET_CONTROL_LINE_STATE:
            self._lines_changed((setup.wValue & 1, setup.wValue >> 1 & 1))
        return result

    def _lines_changed(self, lines: Tuple[int, int]) -> None:
        if lines == (1, 0):
            self._strap = True  # GPIO0 held low
        elif lines == (0, 0):
            self._strap = False
        elif lines == (0, 1) and self._lines != (0, 1):
            self.buffer.clear()
            self.chip.reset("download" if self._strap else "app")
            self._strap = False
        self._lines = lines

    def bulk_out_1(self, data: bytearray) -> Optional[bool]:
        self.chip.feed(bytes(data))
        return None


class _ClassicCircuit(_BridgeBase):
    """An ESP32-S3 DevKit's UART port: the chip behind a USB-UART bridge with the classic
    two-transistor circuit. (DTR, RTS) = (0, 1) pulls EN low (the chip held in reset), (1, 0)
    pulls GPIO0 low, (0, 0) and (1, 1) leave both high. EN rises slowly (its capacitor:
    :attr:`EN_RISE` seconds) after the reset is let go, and the chip starts in download mode if
    GPIO0 is low by then. esptool's classic reset relies on exactly that: (0, 1); (1, 1) then
    (1, 0) at once; (0, 0). Mixed into a virtual bridge (its ``dtr``, ``rts``, ``buffer``).
    """

    EN_RISE = 0.02

    def _chip_init(self) -> None:
        self.chip = Esp32S3Rom(self._emit)
        self._released: Optional[float] = None  # when EN started rising

    @property
    def flash(self) -> bytearray:
        return self.chip.flash

    @property
    def resets(self) -> List[str]:
        self._settle()
        return self.chip.resets

    def _emit(self, data: bytes) -> None:
        self.buffer += data
        self.notify(self.UART_IN)

    def _boot(self, mode: str) -> None:
        self._released = None
        self.buffer.clear()
        self.chip.reset(mode)

    def _settle(self) -> None:
        """EN has risen if its time is up: the chip started (GPIO0 was high: the application)."""
        if self._released is not None and time.monotonic() - self._released > self.EN_RISE:
            self._boot("app")

    def _lines(self, before: Tuple[bool, bool], after: Tuple[bool, bool]) -> None:
        if after == before:
            return
        now = time.monotonic()
        if self._released is not None and now - self._released > self.EN_RISE:
            self._boot("app")  # EN rose with GPIO0 high before this change
        if after == (False, True):
            self._released = None  # held in reset again
        elif before == (False, True):
            self._released = now  # the reset let go: EN starts rising
        if self._released is not None and after == (True, False):
            self._boot("download")  # GPIO0 low while EN is still low: the ROM's download mode

    def vendor_request_out(self, setup: Setup, data: bytes) -> Optional[bool]:
        before = (self.dtr, self.rts)
        result = super().vendor_request_out(setup, data)
        self._lines(before, (self.dtr, self.rts))
        return result

    def _uart_out(self, data: bytearray) -> Optional[bool]:
        self._settle()
        self.chip.feed(bytes(data))
        return None


class Esp32S3DevKit(_ClassicCircuit, Cp210xDevice):
    """An ESP32-S3 behind a CP2102 (10c4:ea60) with the DevKit's EN/IO0 circuit."""

    def __init__(self, busid: Optional[str] = None) -> None:
        super().__init__(busid)
        self._chip_init()

    def _emit(self, data: bytes) -> None:
        if self.enabled:
            super()._emit(data)

    def bulk_out_1(self, data: bytearray) -> Optional[bool]:
        if not self.enabled:
            return False
        return self._uart_out(data)


class Esp32S3DevKitCh340(_ClassicCircuit, Ch34xDevice):
    """An ESP32-S3 behind a CH340 (1a86:7523) with the DevKit's EN/IO0 circuit."""

    def __init__(self, busid: Optional[str] = None) -> None:
        super().__init__(busid)
        self._chip_init()

    def bulk_out_2(self, data: bytearray) -> Optional[bool]:
        return self._uart_out(data)


class Esp32S3DevKitFtdi(_ClassicCircuit, FtdiDevice):
    """An ESP32-S3 behind an FT232R (0403:6001) with the DevKit's EN/IO0 circuit."""

    def __init__(self, busid: Optional[str] = None) -> None:
        super().__init__(busid)
        self._chip_init()

    def bulk_out_2(self, data: bytearray) -> Optional[bool]:
        return self._uart_out(data)


__all__ = ["Esp32S3Device", "Esp32S3DevKit", "Esp32S3DevKitCh340", "Esp32S3DevKitFtdi", "Esp32S3Rom", "slip", "checksum", "FLASH_ID"]
