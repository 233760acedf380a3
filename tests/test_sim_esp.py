"""The virtual ESP32-S3's loaders spoken to directly (no USB, no esptool): the corners esptool
never reaches when all goes well, the flasher stub's error codes and deferred errors above all."""

from __future__ import annotations

import hashlib
import struct
import zlib

import pytest

from usbip_backend.sim.esp import (
    IRAM, Esp32S3Rom, checksum, slip, STUB_BAD_CHECKSUM, STUB_BAD_DATA_LEN, STUB_INVALID_COMMAND,
    STUB_NOT_IN_FLASH_MODE, STUB_TOO_MUCH_DATA, STUB_INFLATE_ERROR, STUB_FAILED_SPI_OP,
)

pytestmark = pytest.mark.timeout(30)


def frames(raw):
    """The SLIP frames in ``raw`` (empty ones skipped), unescaped."""
    out = []
    for part in raw.split(b"\xc0"):
        if part:
            out.append(part.replace(b"\xdb\xdc", b"\xc0").replace(b"\xdb\xdd", b"\xdb"))
    return out


class Chip:
    def __init__(self):
        self.sent = bytearray()
        self.started = []
        self.rom = Esp32S3Rom(self.sent.extend, on_run=self.started.append)
        self.rom.reset("download")
        self.sent.clear()

    def send(self, op, data=b"", chk=0):
        self.rom.feed(slip(struct.pack("<BBHI", 0, op, len(data), chk) + data))
        return self.take()

    def take(self):
        got = frames(bytes(self.sent))
        self.sent.clear()
        return got

    def stub(self, code=b"\x00" * 64):
        """Load ``code`` into IRAM and jump to it: the stub runs."""
        addr = IRAM[0] + 0x8000
        assert status(self.send(0x05, struct.pack("<IIII", len(code), 1, 0x1800, addr))[0]) == 0
        assert status(self.send(0x07, struct.pack("<IIII", len(code), 0, 0, 0) + code, checksum(code))[0]) == 0
        replies = self.send(0x06, struct.pack("<II", 0, addr + 4))
        assert replies[-1] == b"OHAI" and self.rom.mode == "stub"


def status(reply, stub=False):
    """The status of a reply: the stub's big-endian 16-bit code, or the ROM's error byte."""
    if stub:
        return struct.unpack(">H", reply[-2:])[0]
    return reply[-3] if reply[-4] else 0


def begin(c, op, size, offset, blocks=1):
    return status(c.send(op, struct.pack("<IIII", size, blocks, 0x4000, offset))[0], stub=True)


def block(c, op, payload, seq=0, chk=None):
    data = struct.pack("<IIII", len(payload), seq, 0, 0) + payload
    return status(c.send(op, data, checksum(payload) if chk is None else chk)[0], stub=True)


def test_the_rom_checks_ram_blocks_and_jumps_only_to_a_well_formed_upload():
    c = Chip()
    addr = IRAM[0]
    c.send(0x05, struct.pack("<IIII", 8, 1, 0x1800, addr))
    assert status(c.send(0x07, struct.pack("<IIII", 8, 0, 0, 0) + b"A" * 8, 0)[0]) == 0x07  # bad CRC
    c.send(0x06, struct.pack("<II", 0, addr))  # jumps into a segment that never arrived
    assert c.rom.mode == "halted" and not c.rom.runs[-1].ok and "incomplete" in c.rom.runs[-1].problem
    assert c.send(0x08, b"\x07\x07\x12\x20" + b"\x55" * 32) == []  # it answers nothing any more

    c = Chip()
    c.send(0x05, struct.pack("<IIII", 8, 1, 0x1800, 0x3FC90000))  # DRAM only
    c.send(0x07, struct.pack("<IIII", 8, 0, 0, 0) + b"A" * 8, checksum(b"A" * 8))
    c.send(0x06, struct.pack("<II", 0, 0x3FC90000))
    assert c.rom.mode == "halted" and "IRAM" in c.rom.runs[-1].problem

    c = Chip()
    c.stub(b"\x11" * 100)
    assert c.started == ["download", "stub"] and c.rom.runs[-1].segments == {IRAM[0] + 0x8000: b"\x11" * 100}


def test_stub_sync_status_codes_and_registers():
    c = Chip()
    c.stub()
    replies = c.send(0x08, b"\x07\x07\x12\x20" + b"\x55" * 32)
    assert len(replies) == 8 and all(struct.unpack_from("<I", r, 4)[0] == 0 for r in replies)
    assert all(r[2:4] == b"\x02\x00" for r in replies)  # two status bytes, not the ROM's four
    assert status(c.send(0x08, b"short")[0], stub=True) == STUB_BAD_DATA_LEN
    assert status(c.send(0x7E)[0], stub=True) == STUB_INVALID_COMMAND
    entries = struct.pack("<IIII", 0x6000_0000, 0x1234, 0xFFFFFFFF, 0) + struct.pack("<IIII", 0x6000_0004, 7, 0xF, 0)
    assert status(c.send(0x09, entries)[0], stub=True) == 0  # several writes in one request
    reply = c.send(0x0A, struct.pack("<I", 0x6000_0000))[0]
    assert struct.unpack_from("<I", reply, 4)[0] == 0x1234 and status(reply, stub=True) == 0
    assert c.send(0xD3) == []  # RUN_USER_CODE: no answer


def test_stub_flash_write_errors_are_answered_to_the_next_command():
    c = Chip()
    c.stub()
    assert block(c, 0x03, b"x" * 16) == STUB_NOT_IN_FLASH_MODE
    c.rom.flash[0x10000:0x10100] = b"\x00" * 0x100
    assert begin(c, 0x02, 0x100, 0x10100) == 0  # unaligned: the stub may write anywhere
    assert block(c, 0x03, b"y" * 0x100, chk=0x42) == STUB_BAD_CHECKSUM
    assert block(c, 0x03, b"y" * 0x100 + b"\xff" * 0x100) == 0  # esptool pads the last block
    assert c.rom.flash[0x10000:0x10100] == b"\xff" * 0x100  # its sector was erased before the write
    assert c.rom.flash[0x10100:0x10200] == b"y" * 0x100 and c.rom.flash[0x10200] == 0xFF
    assert status(c.send(0x04, struct.pack("<I", 1))[0], stub=True) == 0

    image = bytes(range(256)) * 64
    packed = zlib.compress(image)
    assert begin(c, 0x10, len(image) - 1, 0x20000) == 0  # says one byte less than it sends
    assert block(c, 0x11, packed) == 0  # answered before inflating...
    reply = c.send(0x13, struct.pack("<IIII", 0x20000, 16, 0, 0))[0]
    assert status(reply, stub=True) == STUB_TOO_MUCH_DATA  # ...so the next command hears of it
    assert status(c.send(0x13, struct.pack("<IIII", 0x20000, 16, 0, 0))[0], stub=True) == 0

    assert begin(c, 0x10, 100, 0x30000) == 0
    assert block(c, 0x11, b"not zlib at all") == 0
    assert status(c.send(0x12, struct.pack("<I", 1))[0], stub=True) == STUB_INFLATE_ERROR
    assert status(c.send(0x12, struct.pack("<I", 1))[0], stub=True) == STUB_BAD_DATA_LEN  # 100 missing

    assert begin(c, 0x10, len(image), 0x40000) == 0
    assert block(c, 0x11, packed[:-4]) == 0
    assert block(c, 0x11, packed[-4:], seq=1) == 0  # the zlib trailer alone, after all the data
    assert status(c.send(0x12, struct.pack("<I", 1))[0], stub=True) == 0
    reply = c.send(0x13, struct.pack("<IIII", 0x40000, len(image), 0, 0))[0]
    assert reply[8:24] == hashlib.md5(image).digest()  # 16 raw bytes, not the ROM's 32 hex digits


def test_stub_erase_region_and_read_flash_with_acks():
    c = Chip()
    c.stub()
    assert status(c.send(0xD1, struct.pack("<II", 0x1000, 0x800))[0], stub=True) == STUB_BAD_DATA_LEN
    assert status(c.send(0xD1, struct.pack("<II", 0x3FF000, 0x2000))[0], stub=True) == STUB_FAILED_SPI_OP
    data = bytes(range(256)) * 40  # 10240 bytes: packets of 4096, 4096, 2048
    c.rom.flash[0x5000:0x5000 + len(data)] = data
    replies = c.send(0xD2, struct.pack("<IIII", 0x5000, len(data), 0x1000, 64))
    assert status(replies[0], stub=True) == 0 and replies[1:] == [data[:0x1000]]  # one in flight
    c.rom.feed(slip(struct.pack("<I", 0x1000)))
    assert c.take() == [data[0x1000:0x2000]]
    c.rom.feed(slip(struct.pack("<I", 0x2000)))
    assert c.take() == [data[0x2000:]]
    c.rom.feed(slip(struct.pack("<I", len(data))))
    assert c.take() == [hashlib.md5(data).digest()]
    replies = c.send(0xD2, struct.pack("<IIII", 0x5000, len(data), 0x1000, 64))
    c.take()
    c.rom.feed(slip(b"no ack"))  # not an acknowledgement: the stub stops and sends the digest
    assert c.take() == [hashlib.md5(data[:0x1000]).digest()]
    assert status(c.send(0xD1, struct.pack("<II", 0x5000, 0x1000))[0], stub=True) == 0
    assert c.rom.flash[0x5000:0x6000] == b"\xff" * 0x1000 and c.rom.flash[0x6000:0x6010] == data[0x1000:0x1010]
