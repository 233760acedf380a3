"""A virtual ESP32-S3 esptool can flash: its ROM bootloader, esptool's flasher stub, and the two
ways a host reaches it (the chip's own USB-Serial-JTAG, or a DevKit's USB-UART bridge).

The chip (:class:`Esp32S3Rom`) runs its "application" (which ignores what it is sent) until a
reset with GPIO0 strapped low starts the ROM loader ("download" mode). Requests are SLIP frames
``00 op len(LE16) checksum(LE32) data``, replies ``01 op len value(LE32) data status``.

ROM loader (esptool's loader.py; status is 4 bytes: failed, error, 0, 0): SYNC (answered eight
times, value 0x20120707), READ_REG / WRITE_REG (registers kept in a dict; the SPI controller runs
RDID and RDSR when its USR bit is written), GET_SECURITY_INFO (chip id 9), SPI_ATTACH,
SPI_SET_PARAMS, CHANGE_BAUDRATE, FLASH_BEGIN / DATA / END, FLASH_DEFL_BEGIN / DATA / END (zlib),
SPI_FLASH_MD5 (32 hex digits), READ_FLASH_SLOW (64-byte blocks), MEM_BEGIN / DATA / END (loading
code into RAM and jumping to it). FLASH_END leaves the loader for the application.

Flasher stub: code can't run here, so whatever esptool loads into RAM and jumps to is taken for
its flasher stub (esp-flasher-stub, what esptool 5.x uploads), provided the upload is
well-formed: every segment arrived whole with good checksums, none overlap, and the entry point
lies in a segment in IRAM. :attr:`Esp32S3Rom.runs` keeps what was loaded, for a test to compare
with the stub esptool ships. The stub then greets with an "OHAI" frame and speaks its own dialect
(esp-flasher-stub's command_handler.c): 2 status bytes (a big-endian code: 0xC000 bad length,
0xC100 bad checksum, 0xC300 invalid command, 0xC400 failed SPI operation, 0xC600 not in flash
mode, 0xC700 inflate error, 0xC900 too much data); FLASH_DATA and FLASH_DEFL_DATA are answered
before the data is written, so a write error is answered to the *next* command; FLASH_BEGIN and
FLASH_DEFL_BEGIN take the image size and erase sector by sector as the data arrives;
FLASH_(DEFL_)END fails unless every byte arrived; SPI_FLASH_MD5 answers 16 raw bytes; ERASE_FLASH,
ERASE_REGION (sector aligned); READ_FLASH sends the data as bare SLIP frames of ``packet_size``
bytes, each acknowledged by the host with the running total (one packet in flight: the stub
keeps to one whatever esptool asks for), then the MD5 of it all; SYNC is answered eight times with value
0; CHANGE_BAUDRATE is answered at the old rate. RUN_USER_CODE gets no answer (the stub does
nothing with it). Encrypted writes are stored as sent.

The flash is :attr:`Esp32S3Rom.flash` (4 MiB, erased to 0xFF) and survives resets and
reconnects. On each start the ROM prints its boot log (esptool reads it to see the boot mode);
booting from flash, the application's console then says :attr:`Esp32S3Rom.app_output` if an image
(magic 0xE9) is at 0x0, or "invalid header" if not.

:class:`Esp32S3Device` is the chip on its USB-Serial-JTAG (CDC-ACM, 303a:1001): esptool's usb-reset
sequence seen as SET_CONTROL_LINE_STATE. When the application starts, it re-enumerates: it leaves
the bus (the importing client loses its connection, as :meth:`SimServer.unplug` does) and comes
back under the same busid a moment later, with the same PID or ``reenumerate_pid`` (an
application's TinyUSB CDC, say). A real USB-Serial-JTAG stays on the bus through a chip reset;
what drops it is an application that takes over or re-initialises USB, which is what this models.
The DevKits (:class:`Esp32S3DevKit` and the CH340 / FT232R variants) put the chip behind a
USB-UART bridge with the classic EN/IO0 circuit; they never leave the bus.
"""

from __future__ import annotations

import hashlib
import struct
import threading
import time
import zlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Dict, List, NamedTuple, Optional, Tuple

from .device import Setup
from .devices import CdcAcmDevice, Ch34xDevice, Cp210xDevice, FtdiDevice

if TYPE_CHECKING:
    from .devices import _SerialEcho
    from .server import SimServer

    class _BridgeBase(_SerialEcho):
        """What :class:`_ClassicCircuit` uses of the USB-UART bridge it is mixed into."""

        dtr: bool
        rts: bool

        def vendor_request_out(self, setup: Setup, data: bytes) -> Optional[bool]: ...
else:
    # At run time the mixin stays a plain class: the bridge after it in the MRO supplies these.
    _BridgeBase = object

SLIP_END, SLIP_ESC, SLIP_ESC_END, SLIP_ESC_ESC = 0xC0, 0xDB, 0xDC, 0xDD
FLASH_BEGIN, FLASH_DATA, FLASH_END = 0x02, 0x03, 0x04
MEM_BEGIN, MEM_END, MEM_DATA = 0x05, 0x06, 0x07
SYNC, WRITE_REG, READ_REG, SPI_SET_PARAMS, SPI_ATTACH, CHANGE_BAUDRATE = 0x08, 0x09, 0x0A, 0x0B, 0x0D, 0x0F
FLASH_DEFL_BEGIN, FLASH_DEFL_DATA, FLASH_DEFL_END = 0x10, 0x11, 0x12
SPI_FLASH_MD5, GET_SECURITY_INFO, READ_FLASH_SLOW = 0x13, 0x14, 0x0E
ERASE_FLASH, ERASE_REGION, READ_FLASH, RUN_USER_CODE = 0xD0, 0xD1, 0xD2, 0xD3
CHECKSUM_MAGIC = 0xEF
SPI_REG_BASE = 0x60002000
SPI_CMD_REG, SPI_USR2_REG, SPI_W0_REG = SPI_REG_BASE, SPI_REG_BASE + 0x20, SPI_REG_BASE + 0x58
SPI_CMD_USR = 1 << 18
#: JEDEC id the virtual flash answers RDID with: Winbond (0xEF), 4 MiB (0x16)
FLASH_ID = 0x1640EF
ESP32S3_CHIP_ID = 9
SECTOR = 0x1000
#: ROM error codes (esptool's loader.py: 0x05 invalid message, 0x07 invalid CRC...)
ERR_INVALID = 0x05
ERR_FAILED = 0x06
ERR_CRC = 0x07
#: The flasher stub's response codes (esp-flasher-stub commands.h), sent big-endian.
STUB_OK = 0x0000
STUB_BAD_DATA_LEN = 0xC000
STUB_BAD_CHECKSUM = 0xC100
STUB_INVALID_COMMAND = 0xC300
STUB_FAILED_SPI_OP = 0xC400
STUB_NOT_IN_FLASH_MODE = 0xC600
STUB_INFLATE_ERROR = 0xC700
STUB_NOT_ENOUGH_DATA = 0xC800
STUB_TOO_MUCH_DATA = 0xC900
#: Where code can be loaded and run (esptool's ESP32S3ROM.MEMORY_MAP: IRAM, DRAM).
IRAM = (0x40370000, 0x403E0000)
DRAM = (0x3FC88000, 0x3FD00000)
#: The USB-Serial-JTAG's ids (esptool's USB_JTAG_SERIAL_PID).
ESPRESSIF_VID, USB_JTAG_SERIAL_PID = 0x303A, 0x1001

_ROM_BANNER = b"ESP-ROM:esp32s3-20210327\r\nBuild:Mar 27 2021\r\n"
_BOOT_DOWNLOAD = b"boot:0x0 (DOWNLOAD(USB/UART0))\r\nwaiting for download\r\n"
_BOOT_FLASH = b"boot:0x8 (SPI_FAST_FLASH_BOOT)\r\n"


def slip(frame: bytes) -> bytes:
    body = bytes(frame).replace(b"\xdb", b"\xdb\xdd").replace(b"\xc0", b"\xdb\xdc")
    return b"\xc0" + body + b"\xc0"


def _unslip(raw: bytes) -> bytes:
    # Every 0xDB starts an escape, so the two replacements cannot mistake one for the other.
    return raw.replace(b"\xdb\xdc", b"\xc0").replace(b"\xdb\xdd", b"\xdb")


def checksum(data: bytes) -> int:
    state = CHECKSUM_MAGIC
    for b in data:
        state ^= b
    return state


def _align_up(value: int, to: int = SECTOR) -> int:
    return (value + to - 1) // to * to


@dataclass
class RamRun:
    """Code loaded with MEM_BEGIN / MEM_DATA and started by MEM_END: the segments by load
    address, the entry point, and whether the upload was well-formed (it then ran as the stub)."""

    entry: int
    segments: Dict[int, bytes] = field(default_factory=dict)
    ok: bool = False
    problem: str = ""


class _Answer(NamedTuple):
    """What a stub command handler decided: the response code, value and data, and what runs
    after the response went out (its error, if any, answers the next command)."""

    code: int = STUB_OK
    value: int = 0
    data: bytes = b""
    post: Optional[Callable[[], int]] = None


class Esp32S3Rom:
    """The chip: its 4 MiB flash, its mode, and the loader protocols on its UART.

    ``emit(bytes)`` is how it sends (the USB side of whatever bridge it sits behind);
    ``on_run(what)`` (optional) hears each start of "download", "stub" or "app".
    :attr:`mode` is "app", "download", "stub", "reset" (held in reset) or "halted" (it jumped to
    code that is not a well-formed stub).
    """

    FLASH_SIZE = 4 * 1024 * 1024
    MAX_FRAME = 0x4000 + 64  # a stub FLASH_DATA block of 16 KiB and its header
    #: Packets of READ_FLASH in flight: the stub sends one and waits for its ack, whatever the
    #: host asks for (esp-flasher-stub: esptool cannot keep up with more).
    STUB_READ_WINDOW = 1
    #: What the application says on its console when it starts (an image is in flash).
    APP_OUTPUT = b"I (0) app: Hello from the virtual ESP32-S3\r\n"

    def __init__(self, emit: Callable[[bytes], None], on_run: Optional[Callable[[str], None]] = None) -> None:
        self.emit = emit
        self.on_run = on_run
        self.flash = bytearray(b"\xff" * self.FLASH_SIZE)
        self.mode = "app"
        self.resets: List[str] = []  #: the mode of each reset, in order
        self.app_output = self.APP_OUTPUT
        self.reset_reason = b"0x15 (USB_UART_CHIP_RESET)"
        self.baudrate = 115200  #: the UART rate CHANGE_BAUDRATE last set
        self.regs: Dict[int, int] = {}
        #: every MEM_END that started code, in order
        self.runs: List[RamRun] = []
        self._frame: Optional[bytearray] = None
        self._write: Optional[Dict[str, int]] = None
        self._inflate: Any = None
        self._mem: Optional[Dict[str, int]] = None
        self._segments: Dict[int, bytearray] = {}
        self._sizes: Dict[int, int] = {}
        self._stub_error = STUB_OK
        self._read: Optional[Dict[str, Any]] = None

    # -- lifecycle -----------------------------------------------------------------------------
    def hold(self) -> None:
        """The chip is held in reset: it neither answers nor sends."""
        self.mode = "reset"
        self._clear()

    def reset(self, mode: str) -> None:
        """The chip resets and starts its bootloader ("download") or its application ("app")."""
        self.resets.append(mode)
        self._clear()
        self.mode = mode
        reason = b"rst:" + self.reset_reason + b","
        if mode == "download":
            self.emit(_ROM_BANNER + reason + _BOOT_DOWNLOAD)
        else:
            self.emit(_ROM_BANNER + reason + _BOOT_FLASH + self.app_console())
        self._started(mode)

    def app_console(self) -> bytes:
        """What the application prints when it starts (the ROM's complaint if flash holds no
        image)."""
        if self.flash[0] == 0xE9:
            return self.app_output
        return b"invalid header: 0x%08x\r\n" % struct.unpack_from("<I", self.flash)[0]

    def _clear(self) -> None:
        self._frame = None
        self._write = self._inflate = self._mem = self._read = None
        self._segments, self._sizes = {}, {}
        self._stub_error = STUB_OK

    def _started(self, what: str) -> None:
        if self.on_run is not None:
            self.on_run(what)

    def _run_app(self) -> None:
        """The loader jumps to the application in flash (no reset, so no boot log)."""
        self._clear()
        self.mode = "app"
        self.emit(self.app_console())
        self._started("app")

    # -- SLIP ------------------------------------------------------------------------------------
    def feed(self, data: bytes) -> None:
        """Bytes arriving on the chip's UART."""
        pos, size = 0, len(data)
        while pos < size and self.mode in ("download", "stub"):
            end = data.find(b"\xc0", pos)
            stop = size if end < 0 else end
            if self._frame is not None and len(self._frame) < 2 * self.MAX_FRAME:
                self._frame += data[pos:stop]
            if end < 0:
                return
            pos = end + 1
            raw, self._frame = self._frame, bytearray()
            if raw:  # (None: noise before the first frame; empty: two ENDs in a row)
                self._frame_in(_unslip(bytes(raw))[:self.MAX_FRAME])

    def _frame_in(self, frame: bytes) -> None:
        if self.mode == "stub":
            if self._read is not None:
                self._read_ack(frame)
            else:
                self._stub_command(frame)
            return
        if len(frame) < 8 or frame[0] != 0:
            return
        _, op, size, chk = struct.unpack_from("<BBHI", frame)
        data = frame[8:8 + size]
        handler = getattr(self, f"_op_{op:02x}", None)
        if handler is None:
            self._reply(op, error=ERR_INVALID)
            return
        handler(op, data, chk)

    # -- registers (shared by ROM and stub) -----------------------------------------------------
    def _write_reg(self, addr: int, value: int, mask: int) -> None:
        old = self.regs.get(addr, 0)
        self.regs[addr] = (old & ~mask) | (value & mask) if mask != 0xFFFFFFFF else value
        if addr == SPI_CMD_REG and value & SPI_CMD_USR:
            command = self.regs.get(SPI_USR2_REG, 0) & 0xFFFF
            if command == 0x9F:  # RDID
                self.regs[SPI_W0_REG] = FLASH_ID
            elif command in (0x05, 0x35):  # RDSR, RDSR2: idle, unprotected
                self.regs[SPI_W0_REG] = 0
            self.regs[SPI_CMD_REG] = 0  # done at once

    def _security_info(self) -> bytes:
        return struct.pack("<IB7sII", 0, 0, bytes(7), ESP32S3_CHIP_ID, 0)

    # -- RAM loading (shared) --------------------------------------------------------------------
    def _mem_begin(self, data: bytes) -> bool:
        if len(data) < 16:
            return False
        size, blocks, blocksize, offset = struct.unpack_from("<IIII", data)
        self._mem = {"offset": offset, "size": size, "blocks": blocks, "blocksize": blocksize, "seq": 0}
        self._segments[offset] = bytearray()
        self._sizes[offset] = size
        return True

    def _mem_data(self, data: bytes, chk: int, check: bool) -> int:
        """0, or what was wrong: 1 no MEM_BEGIN, 2 bad length, 3 bad checksum, 4 out of order."""
        mem = self._mem
        if mem is None:
            return 1
        length, seq = struct.unpack_from("<II", data) if len(data) >= 8 else (-1, -1)
        payload = data[16:16 + length] if length >= 0 else b""
        segment = self._segments[mem["offset"]]
        if len(payload) != length or len(segment) + length > mem["size"]:
            return 2
        if check and checksum(payload) != chk & 0xFF:
            return 3
        if check and seq != mem["seq"]:
            return 4
        segment += payload
        mem["seq"] += 1
        return 0

    def _run_ram(self, entry: int) -> None:
        """MEM_END jumped to ``entry``: the flasher stub starts if the upload was well-formed."""
        run = RamRun(entry, {a: bytes(s) for a, s in self._segments.items()})
        self.runs.append(run)
        spans = sorted((a, a + len(s)) for a, s in self._segments.items() if s)
        if any(len(s) != self._sizes[a] for a, s in self._segments.items()):
            run.problem = "a segment is incomplete"
        elif any(b[0] < a[1] for a, b in zip(spans, spans[1:])):
            run.problem = "segments overlap"
        elif not any(lo <= entry < hi and IRAM[0] <= lo and hi <= IRAM[1] for lo, hi in spans):
            run.problem = f"entry point 0x{entry:08x} is not in code loaded into IRAM"
        run.ok = not run.problem
        self._clear()
        if not run.ok:
            self.mode = "halted"  # a jump into garbage: it never answers again until reset
            return
        self.mode = "stub"
        self.emit(slip(b"OHAI"))
        self._started("stub")

    # -- ROM loader ------------------------------------------------------------------------------
    def _reply(self, op: int, value: int = 0, data: bytes = b"", error: int = 0) -> None:
        body = data + bytes([1 if error else 0, error, 0, 0])
        self.emit(slip(struct.pack("<BBHI", 1, op, len(body), value) + body))

    def _op_08(self, op: int, data: bytes, chk: int) -> None:  # SYNC
        for _ in range(8):
            self._reply(op, value=0x20120707)

    def _op_0a(self, op: int, data: bytes, chk: int) -> None:  # READ_REG
        (addr,) = struct.unpack_from("<I", data)
        self._reply(op, value=self.regs.get(addr, 0))

    def _op_09(self, op: int, data: bytes, chk: int) -> None:  # WRITE_REG addr, value, mask, delay
        addr, value, mask, _ = struct.unpack_from("<IIII", data)
        self._write_reg(addr, value, mask)
        self._reply(op)

    def _op_14(self, op: int, data: bytes, chk: int) -> None:  # GET_SECURITY_INFO
        self._reply(op, data=self._security_info())

    def _op_0f(self, op: int, data: bytes, chk: int) -> None:  # CHANGE_BAUDRATE new, 0
        self._reply(op)
        self.baudrate = struct.unpack_from("<I", data)[0]

    def _ok(self, op: int, data: bytes, chk: int) -> None:
        self._reply(op)

    _op_0b = _op_0d = _ok  # SPI_SET_PARAMS, SPI_ATTACH

    def _op_05(self, op: int, data: bytes, chk: int) -> None:  # MEM_BEGIN size, blocks, blocksize, offset
        self._reply(op, error=0 if self._mem_begin(data) else ERR_INVALID)

    def _op_07(self, op: int, data: bytes, chk: int) -> None:  # MEM_DATA
        problem = self._mem_data(data, chk, check=True)
        self._reply(op, error={0: 0, 3: ERR_CRC}.get(problem, ERR_INVALID))

    def _op_06(self, op: int, data: bytes, chk: int) -> None:  # MEM_END no_entry, entry
        no_entry, entry = struct.unpack_from("<II", data) if len(data) >= 8 else (1, 0)
        self._reply(op)
        if not no_entry:
            self._run_ram(entry)

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

    def _op_04(self, op: int, data: bytes, chk: int) -> None:  # FLASH_END 0 reboot, 1 run user code
        self._write = None
        self._reply(op)
        self._leave_loader(data)

    def _leave_loader(self, data: bytes) -> None:
        run_user_code = struct.unpack_from("<I", data)[0] if len(data) >= 4 else 1
        if run_user_code:
            self._run_app()
        else:
            self.reset("app")

    def _op_10(self, op: int, data: bytes, chk: int) -> None:  # FLASH_DEFL_BEGIN
        size, _, _, offset = struct.unpack_from("<IIII", data)
        if offset + size > self.FLASH_SIZE:
            self._reply(op, error=ERR_INVALID)
            return
        erase = _align_up(size)
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
        self._leave_loader(data)

    def _op_13(self, op: int, data: bytes, chk: int) -> None:  # SPI_FLASH_MD5
        addr, size = struct.unpack_from("<II", data)
        digest = hashlib.md5(bytes(self.flash[addr:addr + size])).hexdigest().encode()
        self._reply(op, data=digest)

    def _op_0e(self, op: int, data: bytes, chk: int) -> None:  # READ_FLASH_SLOW
        addr, size = struct.unpack_from("<II", data)
        block = bytes(self.flash[addr:addr + min(size, 64)])
        self._reply(op, data=block.ljust(64, b"\xff"))

    # -- the flasher stub ------------------------------------------------------------------------
    def _stub_reply(self, op: int, code: int, value: int = 0, data: bytes = b"") -> None:
        body = data + struct.pack(">H", code)
        self.emit(slip(struct.pack("<BBHI", 1, op, len(body), value) + body))

    def _stub_command(self, frame: bytes) -> None:
        if len(frame) < 8:
            return
        direction, op, size, chk = struct.unpack_from("<BBHI", frame)
        if direction != 0:
            self._stub_reply(op, STUB_INVALID_COMMAND)
            return
        if len(frame) != 8 + size:
            self._stub_reply(op, STUB_BAD_DATA_LEN)
            return
        if self._stub_error != STUB_OK:
            # The last command's deferred work failed: that is this command's answer.
            code, self._stub_error = self._stub_error, STUB_OK
            self._stub_reply(op, code)
            return
        if op == RUN_USER_CODE:
            return  # no answer, and esp-flasher-stub does nothing with it
        handler = getattr(self, f"_stub_{op:02x}", None)
        answer = handler(frame[8:], chk) if handler is not None else _Answer(STUB_INVALID_COMMAND)
        if answer.code != STUB_OK:
            self._stub_reply(op, answer.code)
            return
        self._stub_reply(op, STUB_OK, answer.value, answer.data)
        if answer.post is not None:
            self._stub_error = answer.post()

    def _stub_08(self, data: bytes, chk: int) -> _Answer:  # SYNC
        if len(data) != 36:
            return _Answer(STUB_BAD_DATA_LEN)
        for _ in range(7):
            self._stub_reply(SYNC, STUB_OK)
        return _Answer()

    def _stub_0a(self, data: bytes, chk: int) -> _Answer:  # READ_REG
        if len(data) != 4:
            return _Answer(STUB_BAD_DATA_LEN)
        return _Answer(value=self.regs.get(struct.unpack("<I", data)[0], 0))

    def _stub_09(self, data: bytes, chk: int) -> _Answer:  # WRITE_REG: one or more (addr, value, mask, delay)
        if not data or len(data) % 16:
            return _Answer(STUB_NOT_ENOUGH_DATA)
        for addr, value, mask, _ in struct.iter_unpack("<IIII", data):
            self._write_reg(addr, value, mask)
        return _Answer()

    def _stub_0d(self, data: bytes, chk: int) -> _Answer:  # SPI_ATTACH hspi
        return _Answer(STUB_OK if len(data) == 4 else STUB_BAD_DATA_LEN)

    def _stub_0b(self, data: bytes, chk: int) -> _Answer:  # SPI_SET_PARAMS id, size, block, sector, page, mask
        return _Answer(STUB_OK if len(data) == 24 else STUB_BAD_DATA_LEN)

    def _stub_0f(self, data: bytes, chk: int) -> _Answer:  # CHANGE_BAUDRATE new, old
        if len(data) != 8:
            return _Answer(STUB_BAD_DATA_LEN)

        def switch() -> int:  # after the answer went out at the old rate
            self.baudrate = struct.unpack_from("<I", data)[0]
            return STUB_OK
        return _Answer(post=switch)

    def _stub_14(self, data: bytes, chk: int) -> _Answer:  # GET_SECURITY_INFO
        return _Answer(data=self._security_info()) if not data else _Answer(STUB_BAD_DATA_LEN)

    def _stub_05(self, data: bytes, chk: int) -> _Answer:  # MEM_BEGIN
        return _Answer() if len(data) == 16 and self._mem_begin(data) else _Answer(STUB_BAD_DATA_LEN)

    def _stub_07(self, data: bytes, chk: int) -> _Answer:  # MEM_DATA (the stub checks no checksum)
        if len(data) < 16:
            return _Answer(STUB_NOT_ENOUGH_DATA)
        problem = self._mem_data(data, chk, check=False)
        return _Answer({0: STUB_OK, 1: STUB_NOT_IN_FLASH_MODE}.get(problem, STUB_TOO_MUCH_DATA))

    def _stub_06(self, data: bytes, chk: int) -> _Answer:  # MEM_END no_entry, entry
        if len(data) != 8:
            return _Answer(STUB_BAD_DATA_LEN)
        if self._mem is None:
            return _Answer(STUB_NOT_IN_FLASH_MODE)
        no_entry, entry = struct.unpack("<II", data)

        def jump() -> int:
            if not no_entry:
                self._run_ram(entry)
            return STUB_OK
        return _Answer(post=jump)

    # Flash writes: the stub erases each sector just before data reaches it.
    def _stub_begin(self, data: bytes, compressed: bool) -> _Answer:
        if len(data) not in (16, 20):
            return _Answer(STUB_BAD_DATA_LEN)
        size, blocks, blocksize, offset = struct.unpack_from("<IIII", data)
        if offset + size > self.FLASH_SIZE:
            return _Answer(STUB_FAILED_SPI_OP)
        self._write = {"at": offset, "remaining": size, "erased": offset // SECTOR * SECTOR,
                       "erase_end": _align_up(offset + size)}
        self._inflate = zlib.decompressobj() if compressed else None
        self._erase_to(offset + 1 if size else offset)  # the first erase starts at once
        return _Answer()

    def _erase_to(self, end: int) -> None:
        w = self._write
        assert w is not None
        stop = min(_align_up(end), w["erase_end"])
        if stop > w["erased"]:
            self.flash[w["erased"]:stop] = b"\xff" * (stop - w["erased"])
            w["erased"] = stop

    def _stub_write(self, payload: bytes) -> int:
        w = self._write
        if w is None:
            return STUB_NOT_IN_FLASH_MODE
        if len(payload) > w["remaining"]:
            return STUB_TOO_MUCH_DATA
        at = w["at"]
        self._erase_to(at + len(payload))
        self.flash[at:at + len(payload)] = payload
        w["at"] = at + len(payload)
        w["remaining"] -= len(payload)
        return STUB_OK

    def _stub_02(self, data: bytes, chk: int) -> _Answer:  # FLASH_BEGIN size, blocks, blocksize, offset[, encrypted]
        return self._stub_begin(data, compressed=False)

    def _stub_10(self, data: bytes, chk: int) -> _Answer:  # FLASH_DEFL_BEGIN
        return self._stub_begin(data, compressed=True)

    def _stub_03(self, data: bytes, chk: int) -> _Answer:  # FLASH_DATA len, seq, 0, 0, data
        if len(data) < 16:
            return _Answer(STUB_NOT_ENOUGH_DATA)
        if self._write is None:
            return _Answer(STUB_NOT_IN_FLASH_MODE)
        payload = data[16:]
        if struct.unpack_from("<I", data)[0] != len(payload):
            return _Answer(STUB_TOO_MUCH_DATA)
        if checksum(payload) != chk:
            return _Answer(STUB_BAD_CHECKSUM)
        w = self._write
        return _Answer(post=lambda: self._stub_write(payload[:w["remaining"]]))  # drops the padding

    def _stub_11(self, data: bytes, chk: int) -> _Answer:  # FLASH_DEFL_DATA len, seq, 0, 0, data
        if len(data) < 16:
            return _Answer(STUB_BAD_DATA_LEN)
        if self._write is None or self._inflate is None:
            return _Answer(STUB_NOT_IN_FLASH_MODE)
        length = struct.unpack_from("<I", data)[0]
        if self._write["remaining"] == 0 and length > 4:
            return _Answer(STUB_TOO_MUCH_DATA)  # all written: only the zlib trailer may follow
        payload = data[16:16 + length]
        if checksum(payload) != chk:
            return _Answer(STUB_BAD_CHECKSUM)
        inflate = self._inflate

        def write() -> int:
            try:
                out = inflate.decompress(payload, self.FLASH_SIZE)
            except zlib.error:
                return STUB_INFLATE_ERROR
            return self._stub_write(out)
        return _Answer(post=write)

    def _stub_end(self, data: bytes) -> _Answer:
        if len(data) != 4:
            return _Answer(STUB_BAD_DATA_LEN)
        if self._write is None:
            return _Answer(STUB_NOT_IN_FLASH_MODE)
        if self._write["remaining"]:
            return _Answer(STUB_BAD_DATA_LEN)
        self._write = self._inflate = None
        return _Answer()  # the reboot flag: esp-flasher-stub does not reboot either way

    def _stub_04(self, data: bytes, chk: int) -> _Answer:  # FLASH_END
        return self._stub_end(data)

    def _stub_12(self, data: bytes, chk: int) -> _Answer:  # FLASH_DEFL_END
        return self._stub_end(data)

    def _stub_13(self, data: bytes, chk: int) -> _Answer:  # SPI_FLASH_MD5 addr, size, 0, 0
        if len(data) != 16:
            return _Answer(STUB_BAD_DATA_LEN)
        addr, size = struct.unpack_from("<II", data)
        if addr + size > self.FLASH_SIZE:
            return _Answer(STUB_FAILED_SPI_OP)
        return _Answer(data=hashlib.md5(bytes(self.flash[addr:addr + size])).digest())

    def _stub_d0(self, data: bytes, chk: int) -> _Answer:  # ERASE_FLASH
        self.flash[:] = b"\xff" * self.FLASH_SIZE
        return _Answer()

    def _stub_d1(self, data: bytes, chk: int) -> _Answer:  # ERASE_REGION addr, size
        if len(data) != 8:
            return _Answer(STUB_BAD_DATA_LEN)
        addr, size = struct.unpack("<II", data)
        if addr % SECTOR or size % SECTOR:
            return _Answer(STUB_BAD_DATA_LEN)
        if addr + size > self.FLASH_SIZE:
            return _Answer(STUB_FAILED_SPI_OP)
        self.flash[addr:addr + size] = b"\xff" * size
        return _Answer()

    def _stub_d2(self, data: bytes, chk: int) -> _Answer:  # READ_FLASH offset, size, packet, in flight
        if len(data) != 16:
            return _Answer(STUB_BAD_DATA_LEN)
        offset, size, packet, _in_flight = struct.unpack("<IIII", data)

        def start() -> int:
            if packet > 4096 or (packet == 0 and size):
                return STUB_BAD_DATA_LEN
            self._read = {"at": offset, "remaining": size, "size": size, "packet": packet,
                          "sent": 0, "acked": 0, "acked_bytes": 0, "md5": hashlib.md5()}
            return self._read_pump()
        return _Answer(post=start)

    def _read_pump(self) -> int:
        """Send READ_FLASH data while the window allows; the digest once all is acknowledged."""
        r = self._read
        assert r is not None
        while r["remaining"] and r["sent"] - r["acked"] < self.STUB_READ_WINDOW:
            n = min(r["remaining"], r["packet"])
            if r["at"] + n > self.FLASH_SIZE:
                self._read = None  # the flash read fails; the host hears no digest
                return STUB_FAILED_SPI_OP
            chunk = bytes(self.flash[r["at"]:r["at"] + n])
            r["md5"].update(chunk)
            self.emit(slip(chunk))
            r["at"] += n
            r["remaining"] -= n
            r["sent"] += 1
        if not r["remaining"] and r["acked_bytes"] >= r["size"]:
            self._read_done()
        return STUB_OK

    def _read_ack(self, frame: bytes) -> None:
        r = self._read
        assert r is not None
        if len(frame) != 4:
            self._read_done()  # not an acknowledgement: the stub stops sending
            return
        r["acked_bytes"] = struct.unpack("<I", frame)[0]
        r["acked"] += 1
        self._stub_error = self._read_pump()

    def _read_done(self) -> None:
        r = self._read
        assert r is not None
        self._read = None
        self.emit(slip(r["md5"].digest()))


class Esp32S3Device(CdcAcmDevice):
    """An ESP32-S3's USB-Serial-JTAG (303a:1001), with the ROM bootloader and flasher stub of
    :class:`Esp32S3Rom` behind it.

    Its reset circuit (esptool's usb-reset and hard-reset sequences): DTR high with RTS low
    straps GPIO0 low; RTS high with DTR low holds the chip in reset, and it starts when that
    ends, in download mode if the strap was set (and not cleared by (0, 0) since) when the reset
    began, else its application.

    Re-enumeration: :attr:`APP_USB_START` seconds after the application starts (its USB stack
    taking over, as a TinyUSB application does), the device leaves the bus: it is unplugged from
    the server that exports it (the importing client's connection is shut down) and comes back
    ``reenumerate`` seconds later under the same busid, unconfigured, with ``reenumerate_pid``
    (None: its own PID); its buffer then holds the application's greeting. A reset before the
    application took over USB cancels that. Shown with another PID, it drops off the bus as soon
    as the chip is held in reset (the application's USB stack dies with it; the reset then ends,
    the host's lines gone with the device) and comes back as the USB-Serial-JTAG if the ROM loader
    runs, or with the application's PID if the application does. ``reenumerate=None`` keeps it on
    the bus through everything. :attr:`bus_events`
    records ("unplug", 1 if a client was cut off else 0) and ("plug", pid); :meth:`wait_enumerated`
    waits for the device to be back.
    """

    vid, pid = ESPRESSIF_VID, USB_JTAG_SERIAL_PID
    manufacturer = "Espressif"
    product = "USB JTAG/serial debug unit"
    #: Seconds from the application's start to its taking over USB (the second-stage bootloader
    #: and the application's start-up). Longer than esptool needs after letting the reset go:
    #: the last requests of its hard reset, or the 0.2 s from a port reopened with RTS asserted
    #: (which lets the chip start) to the usb-reset sequence holding it in reset again.
    APP_USB_START = 0.5

    def __init__(self, busid: Optional[str] = None, *, reenumerate: Optional[float] = 0.3,
                 reenumerate_pid: Optional[int] = None) -> None:
        super().__init__(busid)
        self.chip = Esp32S3Rom(self._emit, on_run=self._chip_runs)
        self.reenumerate = reenumerate
        self.reenumerate_pid = reenumerate_pid
        self.bus_events: List[Tuple[str, int]] = []
        self._strap = False
        self._lines = (0, 0)
        self._held: Optional[str] = None  # the mode the chip starts in when its reset ends
        self._generation = 0  # bumped by each reset and start: a pending drop checks it
        self._leaving = False  # committed to leaving the bus (until it is back)
        self._server: Optional["SimServer"] = None
        self._changed = threading.Condition(self.lock)
        self._on_bus = threading.Event()
        self._on_bus.set()

    @property
    def flash(self) -> bytearray:
        return self.chip.flash

    @property
    def resets(self) -> List[str]:
        return self.chip.resets

    def wait_enumerated(self, timeout: Optional[float] = None) -> bool:
        """Wait until no re-enumeration is under way (the device is on the bus); True if so."""
        return self._on_bus.wait(timeout)

    def _emit(self, data: bytes) -> None:
        self.buffer += data
        self.notify(self.UART_IN)

    def class_request_out(self, setup: Setup, data: bytes) -> Optional[bool]:
        result = super().class_request_out(setup, data)
        if setup.bRequest == self.SET_CONTROL_LINE_STATE:
            self._lines_changed((setup.wValue & 1, setup.wValue >> 1 & 1))
        return result

    def _lines_changed(self, lines: Tuple[int, int]) -> None:
        if lines == (0, 1):
            if self._held is None:
                self.buffer.clear()
                self._held = "download" if self._strap else "app"
                self.chip.hold()
                self._reset_asserted()
        elif self._held is not None:
            mode, self._held = self._held, None
            self.chip.reset(mode)
        if lines == (1, 0):
            self._strap = True  # GPIO0 held low
        elif lines in ((0, 0), (0, 1)):
            self._strap = False
        self._lines = lines

    def bulk_out_1(self, data: bytearray) -> Optional[bool]:
        self.chip.feed(bytes(data))
        return None

    # -- re-enumeration ----------------------------------------------------------------------------
    # Called under the device lock (from a request's handler, or the chip's own doing).
    def _reset_asserted(self) -> None:
        if self.reenumerate is None:
            return
        self._bump()  # an application not yet on USB never will be now
        if self._leaving:
            return
        if self.pid != type(self).pid:
            self._schedule(None)  # the application's USB stack dies with the chip: no way back
        else:
            self._on_bus.set()  # the USB-Serial-JTAG stays on the bus through a reset

    def _chip_runs(self, what: str) -> None:
        """The chip started ``what``."""
        if self.reenumerate is None:
            return
        self._bump()  # whatever was pending was for a start that is over
        if self._leaving:
            return  # it comes back as what it runs by then
        if what == "app":
            self._schedule(self.APP_USB_START)
        else:
            self._on_bus.set()

    def _bump(self) -> None:
        with self.lock:
            self._generation += 1
            self._changed.notify_all()

    def _pid_now(self) -> int:
        """The PID the device enumerates with: the application's own while it runs, else the
        USB-Serial-JTAG's."""
        jtag = type(self).pid
        return (self.reenumerate_pid or jtag) if self.chip.mode == "app" else jtag

    def _schedule(self, drop_after: Optional[float]) -> None:
        """Leave the bus ``drop_after`` seconds from now unless the chip is reset or started
        again meanwhile; None: now, whatever happens."""
        conn = self._conn
        server = conn.server if conn is not None else self._server
        if server is None:
            return  # not exported anywhere: no bus to leave
        self._server = server
        self._on_bus.clear()
        self._leaving = drop_after is None
        threading.Thread(target=self._reenumerate, args=(server, self._generation, drop_after),
                         name=f"esp32s3-reenumerate-{self.busid}", daemon=True).start()

    def _reenumerate(self, server: "SimServer", generation: int, drop_after: Optional[float]) -> None:
        assert self.reenumerate is not None
        with self.lock:  # (taken: the request that asked for this has been answered)
            if drop_after is not None:
                # the application starting up, unless a reset stops it first
                self._changed.wait_for(lambda: generation != self._generation, drop_after)
                if generation != self._generation:
                    return  # reset or started again meanwhile: that decides
            busid = self.busid or ""
            cut_off = int(self._conn is not None)
            self._leaving = True
        # Recorded before it is done: whoever sees the device gone then finds the event too.
        event = ("unplug", cut_off)
        self.bus_events.append(event)
        try:
            server.unplug(busid)
        except KeyError:
            self.bus_events.remove(event)
            with self.lock:
                self._leaving = False
            self._on_bus.set()  # unplugged by someone else: theirs to bring back
            return
        deadline = time.monotonic() + 5.0
        while self._conn is not None and time.monotonic() < deadline:
            time.sleep(0.005)  # the server's connection thread letting go of the device
        with self.lock:
            if self._held is not None:
                # Held in reset by the host's RTS: that line left with the host, so the reset ends.
                mode, self._held = self._held, None
                self.chip.reset(mode)
        time.sleep(self.reenumerate)  # off the bus
        with self.lock:
            self._bus_reset(keep_configuration=False)  # a new device to the host: unconfigured
            pid = self.pid = self._pid_now()
            self._strap, self._lines = False, (0, 0)
            if self.chip.mode == "app":
                self._emit(self.chip.app_console())  # what it printed once its USB was up
        event = ("plug", pid)
        self.bus_events.append(event)  # (before: a client that finds it back finds the event)
        try:
            server.plug(self)
        except ValueError:
            self.bus_events.remove(event)  # the busid was taken meanwhile: it stays off the bus
        with self.lock:
            self._leaving = False
        self._on_bus.set()


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
        self.chip.reset_reason = b"0x1 (POWERON)"
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
            self.chip.hold()
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


__all__ = ["Esp32S3Device", "Esp32S3DevKit", "Esp32S3DevKitCh340", "Esp32S3DevKitFtdi", "Esp32S3Rom",
           "RamRun", "slip", "checksum", "FLASH_ID"]
