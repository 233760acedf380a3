"""A small USB mass-storage Bulk-Only Transport client over dev.write/dev.read (kernel f_mass_storage)."""

from __future__ import annotations

import errno
import struct
from typing import Optional, Tuple

import usb.core

from .peer import open_device

CBW = struct.Struct("<4sIIBBB16s")  # dCBWSignature, tag, length, flags, LUN, CB length, CB
CSW = struct.Struct("<4sIIB")  # dCSWSignature, tag, residue, status
BULK_IN = 0x81


class Bot:
    """Bulk-Only Transport (USB MSC BOT 1.0): CBW, optional data stage, CSW; stalls cleared."""

    def __init__(self, dev, out_ep: int) -> None:
        self.dev, self.out_ep, self.tag = dev, out_ep, 0

    def _read_in(self, length: int) -> Tuple[bytes, bool]:
        """Read the data stage; a stall (EPIPE) ends it early: clear the halt, report it."""
        try:
            return bytes(self.dev.read(BULK_IN, length, timeout=5000)), False
        except usb.core.USBError as exc:
            if exc.errno != errno.EPIPE:
                raise
            self.dev.clear_halt(BULK_IN)
            return b"", True

    def command(self, cb: bytes, in_length: int = 0) -> Tuple[int, bytes]:
        """Run one SCSI command with an optional IN data stage; returns (CSW status, data)."""
        self.tag += 1
        cbw = CBW.pack(b"USBC", self.tag, in_length, 0x80 if in_length else 0, 0, len(cb), cb.ljust(16, b"\0"))
        assert self.dev.write(self.out_ep, cbw, timeout=5000) == 31
        data = b""
        if in_length:
            data, _ = self._read_in(in_length)
        raw, stalled = self._read_in(CSW.size)
        if stalled:  # the CSW may follow a stall on the data stage: read it again after clearing
            raw, _ = self._read_in(CSW.size)
        sig, tag, residue, status = CSW.unpack(raw)
        assert (sig, tag) == (b"USBS", self.tag), raw.hex()
        return status, data

    def sense(self) -> Tuple[int, int, int]:
        status, data = self.command(bytes([0x03, 0, 0, 0, 18, 0]), 18)  # REQUEST SENSE
        assert status == 0 and len(data) >= 14
        return data[2] & 0x0F, data[12], data[13]

    def checked(self, cb: bytes, in_length: int = 0) -> Tuple[bytes, Optional[Tuple[int, int, int]]]:
        """Run a command; on a failed status read the sense and retry once after UNIT ATTENTION."""
        status, data = self.command(cb, in_length)
        seen = None
        if status == 1:
            seen = self.sense()
            assert seen[0] == 6, f"command 0x{cb[0]:02x} failed with sense {seen}"  # UNIT ATTENTION
            status, data = self.command(cb, in_length)
        assert status == 0, f"command 0x{cb[0]:02x} failed (CSW status {status})"
        return data, seen


def test_inquiry_read_capacity_and_boot_sector(flavour):
    with open_device(flavour, "msc") as dev:
        bot = Bot(dev, flavour.out_ep)
        status, inquiry = bot.command(bytes([0x12, 0, 0, 0, 36, 0]), 36)  # INQUIRY never sees UA
        assert status == 0 and len(inquiry) == 36
        assert inquiry[0] & 0x1F == 0x00 and inquiry[1] & 0x80  # direct access, removable
        assert inquiry[8:16].decode().strip() == "Linux"
        cap, ua = bot.checked(bytes([0x25] + [0] * 9), 8)  # READ CAPACITY(10)
        # the first medium-access command after configuration reports the reset (6/29/00)
        assert ua is not None and ua[:2] == (6, 0x29), ua
        last_lba, block = struct.unpack(">II", cap)
        assert block == 512 and (last_lba + 1) * block == 8 << 20
        sector, _ = bot.checked(bytes([0x28, 0, 0, 0, 0, 0, 0, 0, 1, 0]), 512)  # READ(10) LBA 0
        assert len(sector) == 512 and sector[510:512] == b"\x55\xaa"
        assert sector[54:62] == b"FAT16   " or sector[82:90] == b"FAT32   " or sector[54:59] == b"FAT12"
