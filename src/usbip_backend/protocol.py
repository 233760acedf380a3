"""USB/IP wire codec: constants, one ``struct.Struct`` per wire struct, frozen dataclasses.

Pure: bytes in, dataclasses out, no sockets. Section names in comments refer to the kernel's
``Documentation/usb/usbip_protocol.rst``; signedness follows ``drivers/usb/usbip/usbip_common.h``.

Everything on the wire is big-endian except the 8-byte USB SETUP packet, which is sent as is
(its fields are little-endian USB values).

Hot paths (the engine's reader thread) may use the ``*_STRUCT`` objects directly through the
``pack_*``/``unpack_*`` helpers below, which share the one definition of each struct with the
dataclasses.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass, field, replace
from typing import Callable, List, Optional, Sequence, Tuple, Union

from .errors import ImportRefusedError, ProtocolError

USBIP_PORT = 3240
#: "Version of USB/IP protocol" in every OP_* header; the kernel speaks 1.1.1.
USBIP_VERSION = 0x0111

# --- OP_* codes (section "Message Format", OP_REQ_DEVLIST ... OP_REP_IMPORT) -------------------
OP_REQ_DEVLIST = 0x8005
OP_REP_DEVLIST = 0x0005
OP_REQ_IMPORT = 0x8003
OP_REP_IMPORT = 0x0003

# --- URB commands (section "USBIP_CMD_SUBMIT" ... "USBIP_RET_UNLINK") ---------------------------
USBIP_CMD_SUBMIT = 0x00000001
USBIP_CMD_UNLINK = 0x00000002
USBIP_RET_SUBMIT = 0x00000003
USBIP_RET_UNLINK = 0x00000004

USBIP_DIR_OUT = 0
USBIP_DIR_IN = 1

#: Largest busid (bytes, NUL-terminated) and path on the wire.
SYSFS_BUS_ID_SIZE = 32
SYSFS_PATH_MAX = 256


class Status(enum.IntEnum):
    """ST_* status of OP_REP_* replies (usbip_common.h / usbip_network.h)."""

    ST_OK = 0
    ST_NA = 1  # request not available / failed
    ST_DEV_BUSY = 2  # device already imported by another client
    ST_DEV_ERR = 3  # device in error state
    ST_NODEV = 4  # no such busid
    ST_ERROR = 5  # unexpected failure


STATUS_TEXT = {
    Status.ST_OK: "OK",
    Status.ST_NA: "request failed (ST_NA)",
    Status.ST_DEV_BUSY: "device busy: already imported by another client (ST_DEV_BUSY)",
    Status.ST_DEV_ERR: "device in error state on the server (ST_DEV_ERR)",
    Status.ST_NODEV: "no such device on the server (ST_NODEV)",
    Status.ST_ERROR: "server error (ST_ERROR)",
}


def status_text(status: int) -> str:
    try:
        return STATUS_TEXT[Status(status)]
    except ValueError:
        return f"unknown status {status}"


class Speed(enum.IntEnum):
    """The kernel's ``enum usb_device_speed`` as carried in the device record."""

    UNKNOWN = 0
    LOW = 1
    FULL = 2
    HIGH = 3
    WIRELESS = 4
    SUPER = 5
    SUPER_PLUS = 6


# --- URB transfer_flags (usbip_common.h USBIP_URB_*; the stub masks what it does not allow) ----
USBIP_URB_SHORT_NOT_OK = 0x0001
USBIP_URB_ISO_ASAP = 0x0002
USBIP_URB_NO_TRANSFER_DMA_MAP = 0x0004
USBIP_URB_ZERO_PACKET = 0x0040
USBIP_URB_NO_INTERRUPT = 0x0080
USBIP_URB_FREE_BUFFER = 0x0100
USBIP_URB_DIR_IN = 0x0200
USBIP_URB_DIR_OUT = 0
USBIP_URB_DIR_MASK = USBIP_URB_DIR_IN
USBIP_URB_DMA_MAP_SINGLE = 0x00010000
USBIP_URB_DMA_MAP_PAGE = 0x00020000
USBIP_URB_DMA_MAP_SG = 0x00040000
USBIP_URB_MAP_LOCAL = 0x00080000
USBIP_URB_SETUP_MAP_SINGLE = 0x00100000
USBIP_URB_SETUP_MAP_LOCAL = 0x00200000
USBIP_URB_DMA_SG_COMBINED = 0x00400000
USBIP_URB_ALIGNED_TEMP_BUFFER = 0x00800000


class TransferType(enum.IntEnum):
    """USB transfer types, numbered as in the usbmon header (and Wireshark).

    Not the numbering of an endpoint's bmAttributes (0 control, 1 iso, 2 bulk, 3 interrupt):
    convert with :func:`transfer_type_from_attributes`.
    """

    ISOCHRONOUS = 0
    INTERRUPT = 1
    CONTROL = 2
    BULK = 3


_ATTR_TO_TYPE = (TransferType.CONTROL, TransferType.ISOCHRONOUS, TransferType.BULK, TransferType.INTERRUPT)


def transfer_type_from_attributes(bmAttributes: int) -> TransferType:
    """The transfer type an endpoint descriptor's bmAttributes (bits 1..0) declares."""
    return _ATTR_TO_TYPE[bmAttributes & 0x03]


# --- struct definitions (one each) --------------------------------------------------------------
#: OP header: version u16, code u16, status u32.
OP_COMMON_STRUCT = struct.Struct(">HHI")  # 8 bytes
#: OP_REP_DEVLIST adds "number of exported devices" u32 after the header.
DEVLIST_COUNT_STRUCT = struct.Struct(">I")
#: usbip_usb_device: path[256] busid[32] busnum devnum speed idVendor idProduct bcdDevice
#: bDeviceClass bDeviceSubClass bDeviceProtocol bConfigurationValue bNumConfigurations
#: bNumInterfaces.
USB_DEVICE_STRUCT = struct.Struct(">256s32sIIIHHHBBBBBB")  # 312 bytes
#: usbip_usb_interface: class, subclass, protocol, padding.
USB_INTERFACE_STRUCT = struct.Struct(">BBBx")  # 4 bytes
#: usbip_header_basic: command seqnum devid direction ep.
HEADER_BASIC_STRUCT = struct.Struct(">IIIII")  # 20 bytes
#: Full 48-byte CMD_SUBMIT header: basic + transfer_flags, transfer_buffer_length, start_frame,
#: number_of_packets, interval, setup[8].
CMD_SUBMIT_STRUCT = struct.Struct(">IIIII" "Iiiii8s")
#: Full 48-byte RET_SUBMIT header: basic + status, actual_length, start_frame, number_of_packets,
#: error_count, padding[8].
RET_SUBMIT_STRUCT = struct.Struct(">IIIII" "iiiii8x")
#: Full 48-byte CMD_UNLINK header: basic + unlink_seqnum, padding[24].
CMD_UNLINK_STRUCT = struct.Struct(">IIIII" "I24x")
#: Full 48-byte RET_UNLINK header: basic + status, padding[24].
RET_UNLINK_STRUCT = struct.Struct(">IIIII" "i24x")
#: usbip_iso_packet_descriptor: offset, length, actual_length, status.
ISO_PACKET_STRUCT = struct.Struct(">IIIi")  # 16 bytes

OP_COMMON_SIZE = OP_COMMON_STRUCT.size
USB_DEVICE_SIZE = USB_DEVICE_STRUCT.size
USB_INTERFACE_SIZE = USB_INTERFACE_STRUCT.size
URB_HEADER_SIZE = 48
ISO_PACKET_SIZE = ISO_PACKET_STRUCT.size

assert CMD_SUBMIT_STRUCT.size == RET_SUBMIT_STRUCT.size == URB_HEADER_SIZE
assert CMD_UNLINK_STRUCT.size == RET_UNLINK_STRUCT.size == URB_HEADER_SIZE
assert USB_DEVICE_SIZE == 312

#: Bounds a client applies to lengths a peer asks for (never allocate what a length field says
#: without a bound). The kernel caps ISO packets per URB at 1024 (USBIP_MAX_ISO_PACKETS in
#: newer kernels); anything larger is hostile.
MAX_ISO_PACKETS = 1024
MAX_INTERFACES = 32  # bNumInterfaces in a u8; USB allows 32 interfaces per configuration
#: Most devices an OP_REP_DEVLIST may list (its count is a peer-chosen u32).
MAX_DEVICES = 4096


def _cstr(raw: bytes, what: str) -> str:
    """Decode a NUL-terminated fixed-size string field."""
    end = raw.find(b"\0")
    if end >= 0:
        raw = raw[:end]
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ProtocolError(f"{what} is not valid UTF-8: {raw[:40]!r}") from exc


def _need(buf: bytes, size: int, what: str) -> None:
    if len(buf) < size:
        raise ProtocolError(f"{what}: need {size} bytes, got {len(buf)} (truncated reply)")


def encode_busid(busid: str) -> bytes:
    raw = busid.encode("utf-8")
    if len(raw) >= SYSFS_BUS_ID_SIZE:
        raise ValueError(f"busid {busid!r} is longer than {SYSFS_BUS_ID_SIZE - 1} bytes")
    return raw.ljust(SYSFS_BUS_ID_SIZE, b"\0")


# --- OP_* messages ------------------------------------------------------------------------------
@dataclass(frozen=True)
class OpHeader:
    """The 8-byte header of every OP_REQ_* / OP_REP_* message."""

    code: int
    status: int = 0
    version: int = USBIP_VERSION

    def pack(self) -> bytes:
        return OP_COMMON_STRUCT.pack(self.version, self.code, self.status)

    @classmethod
    def unpack(cls, buf: bytes, expect_code: Optional[int] = None) -> "OpHeader":
        _need(buf, OP_COMMON_SIZE, "OP header")
        version, code, status = OP_COMMON_STRUCT.unpack_from(buf)
        if version != USBIP_VERSION:
            # The kernel (usbip_net_recv_op_common) refuses any other version.
            raise ProtocolError(
                f"unsupported USB/IP version 0x{version:04x} in OP header (expected 0x{USBIP_VERSION:04x})"
            )
        if expect_code is not None and code != expect_code:
            raise ProtocolError(f"unexpected OP code 0x{code:04x} (expected 0x{expect_code:04x})")
        return cls(code=code, status=status, version=version)


@dataclass(frozen=True)
class UsbInterface:
    """One interface triple of an OP_REP_DEVLIST record."""

    bInterfaceClass: int
    bInterfaceSubClass: int
    bInterfaceProtocol: int

    def pack(self) -> bytes:
        return USB_INTERFACE_STRUCT.pack(self.bInterfaceClass, self.bInterfaceSubClass, self.bInterfaceProtocol)

    @classmethod
    def unpack(cls, buf: bytes, offset: int = 0) -> "UsbInterface":
        _need(buf[offset:], USB_INTERFACE_SIZE, "interface record")
        return cls(*USB_INTERFACE_STRUCT.unpack_from(buf, offset))


@dataclass(frozen=True)
class UsbDevice:
    """The 312-byte device record of OP_REP_DEVLIST and OP_REP_IMPORT (usbip_usb_device)."""

    path: str
    busid: str
    busnum: int
    devnum: int
    speed: int
    idVendor: int
    idProduct: int
    bcdDevice: int
    bDeviceClass: int
    bDeviceSubClass: int
    bDeviceProtocol: int
    bConfigurationValue: int
    bNumConfigurations: int
    bNumInterfaces: int
    #: Filled from OP_REP_DEVLIST only; OP_REP_IMPORT carries no interface records.
    interfaces: Tuple[UsbInterface, ...] = field(default=())

    @property
    def devid(self) -> int:
        """The devid every URB to this device carries: (busnum << 16) | devnum."""
        return ((self.busnum & 0xFFFF) << 16) | (self.devnum & 0xFFFF)

    def pack(self, with_interfaces: bool = False) -> bytes:
        raw = USB_DEVICE_STRUCT.pack(
            self.path.encode("utf-8")[: SYSFS_PATH_MAX - 1],
            encode_busid(self.busid),
            self.busnum, self.devnum, int(self.speed),
            self.idVendor, self.idProduct, self.bcdDevice,
            self.bDeviceClass, self.bDeviceSubClass, self.bDeviceProtocol,
            self.bConfigurationValue, self.bNumConfigurations, self.bNumInterfaces,
        )
        if with_interfaces:
            raw += b"".join(i.pack() for i in self.interfaces)
        return raw

    @classmethod
    def unpack(cls, buf: bytes, offset: int = 0, interfaces: Sequence[UsbInterface] = ()) -> "UsbDevice":
        _need(buf[offset:], USB_DEVICE_SIZE, "device record")
        (path, busid, busnum, devnum, speed, vid, pid, bcd, cls_, sub, proto, cfg, ncfg,
         nif) = USB_DEVICE_STRUCT.unpack_from(buf, offset)
        return cls(
            path=_cstr(path, "device path"), busid=_cstr(busid, "busid"),
            busnum=busnum, devnum=devnum, speed=speed,
            idVendor=vid, idProduct=pid, bcdDevice=bcd,
            bDeviceClass=cls_, bDeviceSubClass=sub, bDeviceProtocol=proto,
            bConfigurationValue=cfg, bNumConfigurations=ncfg, bNumInterfaces=nif,
            interfaces=tuple(interfaces),
        )


def pack_req_devlist() -> bytes:
    """OP_REQ_DEVLIST: the header alone (status field 0)."""
    return OpHeader(OP_REQ_DEVLIST).pack()


def pack_req_import(busid: str) -> bytes:
    """OP_REQ_IMPORT: header + busid[32]."""
    return OpHeader(OP_REQ_IMPORT).pack() + encode_busid(busid)


def unpack_req_import(buf: bytes) -> str:
    """Server side: the busid of an OP_REQ_IMPORT body (32 bytes after the header)."""
    _need(buf, SYSFS_BUS_ID_SIZE, "OP_REQ_IMPORT busid")
    return _cstr(buf[:SYSFS_BUS_ID_SIZE], "busid")


def pack_rep_devlist(devices: Sequence[UsbDevice], status: int = 0) -> bytes:
    """OP_REP_DEVLIST: header, count, then each record followed by its interface records."""
    parts = [OpHeader(OP_REP_DEVLIST, status).pack(), DEVLIST_COUNT_STRUCT.pack(len(devices))]
    parts += [d.pack(with_interfaces=True) for d in devices]
    return b"".join(parts)


def read_rep_devlist(read: Callable[[int, str], bytes], max_devices: int = MAX_DEVICES,
                     where: str = "") -> List[UsbDevice]:
    """The one parser of OP_REP_DEVLIST, reading the message as it arrives: ``read(size, what)``
    returns exactly the next ``size`` bytes (``what`` names them for its errors) or raises.

    Bounded whatever the peer claims: at most ``max_devices`` devices and
    :data:`MAX_INTERFACES` interfaces each are read, one record at a time, so nothing is allocated
    or looped over for a count before its bytes have arrived. ``where`` (the server) prefixes
    the errors.

    Raises:
        ImportRefusedError: the reply carries a non-zero status.
        ProtocolError: a bad header, too many devices or interfaces, a malformed record (and
            whatever ``read`` raises for a short message).
    """
    prefix = f"{where}: " if where else ""
    header = OpHeader.unpack(read(OP_COMMON_SIZE, "OP_REP_DEVLIST header"), OP_REP_DEVLIST)
    if header.status != Status.ST_OK:
        raise ImportRefusedError(f"{where or 'the server'} refused the device list: {status_text(header.status)}",
                                 status=header.status)
    (count,) = DEVLIST_COUNT_STRUCT.unpack(read(DEVLIST_COUNT_STRUCT.size, "OP_REP_DEVLIST device count"))
    if count > max_devices:
        raise ProtocolError(f"{prefix}OP_REP_DEVLIST claims {count} devices (limit {max_devices})")
    devices = []
    for i in range(count):
        dev = UsbDevice.unpack(read(USB_DEVICE_SIZE, f"device record {i}"))
        nif = dev.bNumInterfaces
        if nif > MAX_INTERFACES:
            raise ProtocolError(f"{prefix}OP_REP_DEVLIST: device {dev.busid!r} claims {nif} interfaces "
                                f"(limit {MAX_INTERFACES})")
        raw = read(USB_INTERFACE_SIZE * nif, f"interfaces of {dev.busid}") if nif else b""
        ifs = tuple(UsbInterface.unpack(raw, j * USB_INTERFACE_SIZE) for j in range(nif))
        devices.append(replace(dev, interfaces=ifs))
    return devices


def unpack_rep_devlist(buf: bytes, max_devices: int = MAX_DEVICES) -> List[UsbDevice]:
    """Parse a complete OP_REP_DEVLIST (header included) with :func:`read_rep_devlist`.
    Trailing bytes are an error."""
    view = memoryview(buf)
    pos = 0

    def read(size: int, what: str) -> bytes:
        nonlocal pos
        if len(buf) - pos < size:
            raise ProtocolError(f"{what}: need {size} bytes, got {len(buf) - pos} (truncated reply)")
        pos += size
        return bytes(view[pos - size:pos])

    devices = read_rep_devlist(read, max_devices)
    if pos != len(buf):
        raise ProtocolError(f"OP_REP_DEVLIST has {len(buf) - pos} unexpected trailing bytes")
    return devices


def pack_rep_import(device: Optional[UsbDevice], status: int = 0) -> bytes:
    """OP_REP_IMPORT: header, then the device record only when status is ST_OK."""
    raw = OpHeader(OP_REP_IMPORT, status).pack()
    if status == Status.ST_OK and device is not None:
        raw += device.pack()
    return raw


# --- URB messages -------------------------------------------------------------------------------
@dataclass(frozen=True)
class IsoPacket:
    """usbip_iso_packet_descriptor (section "USBIP_CMD_SUBMIT", ISO descriptors)."""

    offset: int
    length: int
    actual_length: int = 0
    status: int = 0

    def pack(self) -> bytes:
        return ISO_PACKET_STRUCT.pack(self.offset, self.length, self.actual_length, self.status)

    @classmethod
    def unpack(cls, buf: bytes, offset: int = 0) -> "IsoPacket":
        _need(buf[offset:], ISO_PACKET_SIZE, "ISO packet descriptor")
        return cls(*ISO_PACKET_STRUCT.unpack_from(buf, offset))


def pack_iso_packets(packets: Sequence[IsoPacket]) -> bytes:
    return b"".join(p.pack() for p in packets)


def unpack_iso_packets(buf: bytes, count: int) -> List[IsoPacket]:
    if count < 0 or count > MAX_ISO_PACKETS:
        raise ProtocolError(f"ISO packet count {count} out of range (0..{MAX_ISO_PACKETS})")
    _need(buf, count * ISO_PACKET_SIZE, f"{count} ISO packet descriptors")
    return [IsoPacket.unpack(buf, i * ISO_PACKET_SIZE) for i in range(count)]


@dataclass(frozen=True)
class CmdSubmit:
    """USBIP_CMD_SUBMIT header (48 bytes). OUT data and ISO descriptors follow it on the wire.

    ``ep`` is the endpoint *number* (0..15, no direction bit); ``direction`` is 0 OUT / 1 IN.
    For non-ISO URBs ``number_of_packets`` is sent as 0: the document's table says 0xffffffff
    but its own capture example, the kernel's vhci and every server tried use 0.
    """

    seqnum: int
    devid: int
    direction: int
    ep: int
    transfer_flags: int = 0
    transfer_buffer_length: int = 0
    start_frame: int = 0
    number_of_packets: int = 0
    interval: int = 0
    setup: bytes = bytes(8)

    def pack(self) -> bytes:
        return CMD_SUBMIT_STRUCT.pack(
            USBIP_CMD_SUBMIT, self.seqnum, self.devid, self.direction, self.ep,
            self.transfer_flags, self.transfer_buffer_length, self.start_frame,
            self.number_of_packets, self.interval, self.setup,
        )


@dataclass(frozen=True)
class RetSubmit:
    """USBIP_RET_SUBMIT header (48 bytes). IN data and ISO descriptors follow it on the wire.

    The kernel sends devid, direction and ep as 0 in replies; other servers echo the request.
    """

    seqnum: int
    status: int = 0
    actual_length: int = 0
    start_frame: int = 0
    number_of_packets: int = 0
    error_count: int = 0
    devid: int = 0
    direction: int = 0
    ep: int = 0

    def pack(self) -> bytes:
        return RET_SUBMIT_STRUCT.pack(
            USBIP_RET_SUBMIT, self.seqnum, self.devid, self.direction, self.ep,
            self.status, self.actual_length, self.start_frame, self.number_of_packets,
            self.error_count,
        )


@dataclass(frozen=True)
class CmdUnlink:
    """USBIP_CMD_UNLINK (48 bytes): its own seqnum, and the seqnum of the URB to cancel."""

    seqnum: int
    devid: int
    direction: int
    ep: int
    unlink_seqnum: int

    def pack(self) -> bytes:
        return CMD_UNLINK_STRUCT.pack(
            USBIP_CMD_UNLINK, self.seqnum, self.devid, self.direction, self.ep, self.unlink_seqnum
        )


@dataclass(frozen=True)
class RetUnlink:
    """USBIP_RET_UNLINK (48 bytes). ``seqnum`` is the CMD_UNLINK's own seqnum.

    status -ECONNRESET (-104): the URB was cancelled and no RET_SUBMIT follows for it.
    status 0: the URB had already completed; its RET_SUBMIT was (or will be) sent.
    (section "USBIP_RET_UNLINK")
    """

    seqnum: int
    status: int = 0
    devid: int = 0
    direction: int = 0
    ep: int = 0

    def pack(self) -> bytes:
        return RET_UNLINK_STRUCT.pack(
            USBIP_RET_UNLINK, self.seqnum, self.devid, self.direction, self.ep, self.status
        )


def unpack_urb_header(buf: bytes) -> Union[CmdSubmit, RetSubmit, CmdUnlink, RetUnlink]:
    """Decode any 48-byte URB header into CmdSubmit / RetSubmit / CmdUnlink / RetUnlink."""
    _need(buf, URB_HEADER_SIZE, "URB header")
    command = HEADER_BASIC_STRUCT.unpack_from(buf)[0]
    if command == USBIP_RET_SUBMIT:
        (_, seq, devid, direction, ep, status, actual, start, npk, errs) = RET_SUBMIT_STRUCT.unpack_from(buf)
        return RetSubmit(seq, status, actual, start, npk, errs, devid, direction, ep)
    if command == USBIP_RET_UNLINK:
        (_, seq, devid, direction, ep, status) = RET_UNLINK_STRUCT.unpack_from(buf)
        return RetUnlink(seq, status, devid, direction, ep)
    if command == USBIP_CMD_SUBMIT:
        (_, seq, devid, direction, ep, flags, length, start, npk, interval, setup) = CMD_SUBMIT_STRUCT.unpack_from(buf)
        return CmdSubmit(seq, devid, direction, ep, flags, length, start, npk, interval, setup)
    if command == USBIP_CMD_UNLINK:
        (_, seq, devid, direction, ep, unlink) = CMD_UNLINK_STRUCT.unpack_from(buf)
        return CmdUnlink(seq, devid, direction, ep, unlink)
    raise ProtocolError(f"unknown USB/IP command 0x{command:08x} in URB header")


# --- SETUP packet helpers (little-endian USB fields) ---------------------------------------------
SETUP_STRUCT = struct.Struct("<BBHHH")


def pack_setup(bmRequestType: int, bRequest: int, wValue: int, wIndex: int, wLength: int) -> bytes:
    return SETUP_STRUCT.pack(bmRequestType & 0xFF, bRequest & 0xFF, wValue & 0xFFFF, wIndex & 0xFFFF, wLength & 0xFFFF)


def unpack_setup(setup: bytes) -> Tuple[int, int, int, int, int]:
    _need(setup, 8, "SETUP packet")
    return SETUP_STRUCT.unpack_from(setup)
