"""pcapng capture of USB/IP traffic (as Linux usbmon records) and device syslog messages.

One section with two interfaces:

* ``usbip0``: LINKTYPE_USB_LINUX_MMAPPED (220). Each URB becomes a usbmon ``'S'`` (Submit) record
  and a ``'C'`` (Complete) record with the same URB id, exactly as ``usbmon`` on a Linux host with
  ``vhci-hcd`` would show the same transfer: USB/IP carries Linux URBs, so the transfer flags and
  the negative-errno status mean the same thing. Wireshark pairs the two (``usb.request_in``) and
  dissects descriptors, setup packets and class requests.
* ``syslog0``: LINKTYPE_WIRESHARK_UPPER_PDU (252). Each device log message is an "exported PDU"
  that names the ``syslog`` dissector, so Wireshark shows it as Syslog without a fake IP/UDP
  header around it.

Byte layouts (all little-endian, written in the section's byte order): pcapng blocks per
draft-ietf-opsawg-pcapng; the 64-byte usbmon header per the kernel's
``Documentation/usb/usbmon.rst`` ("Raw binary format and API") and libpcap's
``pcap_usb_header_mmapped``; exported-PDU TLVs per Wireshark's ``wsutil/exported_pdu_tlvs.h``.

Threading: the hook methods (called by the URB engine's reader thread and user threads) and
:meth:`PcapWriter.write_syslog` only build a block and put it on a bounded queue; one writer
thread writes and flushes each block. If the queue overflows or the reader of a FIFO goes away,
capture stops with ONE warning and USB traffic carries on. Version 0.0.1's call forms
(``write_submit``, ``write_complete``, ``write_urb`` with fields, ``write_syslog(ts=)``) wrote
before returning, and still do: they queue the block and wait for it (:meth:`PcapWriter.flush`).
"""

from __future__ import annotations

import errno
import importlib
import logging
import os
import queue
import re
import select
import socket
import stat
import struct
import sys
import threading
import time
from typing import IO, TYPE_CHECKING, Any, Dict, List, Optional, Sequence, Tuple, Union, overload

from .errors import LinuxErrno
from .hooks import UrbHook
from .protocol import TransferType, USBIP_URB_DIR_IN

if TYPE_CHECKING:  # pragma: no cover
    from .engine import Urb

log = logging.getLogger(__name__)

# --- pcapng constants ---------------------------------------------------------------------------
BT_SHB = 0x0A0D0D0A
BT_IDB = 0x00000001
BT_EPB = 0x00000006
BYTE_ORDER_MAGIC = 0x1A2B3C4D

OPT_ENDOFOPT = 0
OPT_COMMENT = 1
SHB_HARDWARE = 2
SHB_OS = 3
SHB_USERAPPL = 4
IF_NAME = 2
IF_DESCRIPTION = 3
IF_TSRESOL = 9

LINKTYPE_USB_LINUX_MMAPPED = 220
LINKTYPE_WIRESHARK_UPPER_PDU = 252

#: Interface ids inside the section (order of the IDBs).
IF_USB = 0
IF_SYSLOG = 1

# --- usbmon (mon_bin) header, 64 bytes --------------------------------------------------------
#: id u64, type, xfer_type, epnum, devnum (u8), busnum u16, flag_setup, flag_data (char),
#: ts_sec s64, ts_usec s32, status s32, length u32, len_cap u32, setup[8] (or, for ISO:
#: error_count s32 + numdesc s32), interval s32, start_frame s32, xfer_flags u32, ndesc u32.
USBMON_STRUCT = struct.Struct("<QBBBBHBBqiiII8siiII")
#: mon_bin_isodesc: status s32, offset u32, length u32, pad u32 (follows the header, ndesc times).
USBMON_ISODESC_STRUCT = struct.Struct("<iIII")
_ISO_EC_STRUCT = struct.Struct("<ii")
assert USBMON_STRUCT.size == 64

EVENT_SUBMIT = ord("S")
EVENT_COMPLETE = ord("C")
EVENT_ERROR = ord("E")
EINPROGRESS = -LinuxErrno.EINPROGRESS
ECONNRESET = -LinuxErrno.ECONNRESET

# Names of version 0.0.1 for what its write_urb()/write_submit() took.
XFER_ISO = int(TransferType.ISOCHRONOUS)
XFER_INTERRUPT = int(TransferType.INTERRUPT)
XFER_CONTROL = int(TransferType.CONTROL)
XFER_BULK = int(TransferType.BULK)
USB_INTERFACE_ID = IF_USB
SYSLOG_INTERFACE_ID = IF_SYSLOG

# --- exported PDU TLVs (big-endian tag u16, length u16, value) --------------------------------
EXP_PDU_TAG_END_OF_OPT = 0
EXP_PDU_TAG_DISSECTOR_NAME = 12  # EXP_PDU_TAG_PROTO_NAME
EXP_PDU_TAG_IPV4_SRC = 20
EXP_PDU_TAG_IPV4_DST = 21
EXP_PDU_TAG_IPV6_SRC = 22
EXP_PDU_TAG_IPV6_DST = 23
EXP_PDU_TAG_PORT_TYPE = 24
EXP_PDU_TAG_SRC_PORT = 25
EXP_PDU_TAG_DST_PORT = 26
PT_TCP = 2  # Wireshark's port_type enum: PT_NONE 0, PT_SCTP 1, PT_TCP 2, PT_UDP 3

_U32 = struct.Struct("<I")
_TLV = struct.Struct(">HH")
_BE_U32 = struct.Struct(">I")

Address = Tuple[str, int]


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("pyusb-usbip-backend")
    except Exception:  # not installed (running from a source tree)
        return "dev"


def _pad4(raw: bytes) -> bytes:
    return raw + b"\0" * (-len(raw) % 4)


def _options(opts: Sequence[Tuple[int, bytes]]) -> bytes:
    """Encode pcapng options (code u16, length u16, value padded to 4) plus opt_endofopt."""
    if not opts:
        return b""
    out = bytearray()
    for code, value in opts:
        if len(value) > 0xFFFF:
            value = value[:0xFFFF]
        out += struct.pack("<HH", code, len(value)) + _pad4(value)
    out += struct.pack("<HH", OPT_ENDOFOPT, 0)
    return bytes(out)


def _block(block_type: int, body: bytes) -> bytes:
    body = _pad4(body)
    total = len(body) + 12
    return struct.pack("<II", block_type, total) + body + _U32.pack(total)


def section_header_block(application: str) -> bytes:
    """SHB naming the application (shb_userappl) and the OS, section length unknown (-1)."""
    opts = [
        (SHB_OS, f"{sys.platform} (Python {sys.version.split()[0]})".encode()),
        (SHB_USERAPPL, application.encode("utf-8")),
    ]
    body = struct.pack("<IHHq", BYTE_ORDER_MAGIC, 1, 0, -1) + _options(opts)
    return _block(BT_SHB, body)


def interface_description_block(linktype: int, name: str, description: str = "") -> bytes:
    """IDB with snaplen 0 (no limit), if_name and if_tsresol = 6 (microseconds)."""
    opts = [(IF_NAME, name.encode())]
    if description:
        opts.append((IF_DESCRIPTION, description.encode()))
    opts.append((IF_TSRESOL, b"\x06"))
    body = struct.pack("<HHI", linktype, 0, 0) + _options(opts)
    return _block(BT_IDB, body)


def enhanced_packet_block(if_id: int, timestamp: float, data: bytes, comment: Optional[str] = None) -> bytes:
    """EPB with a microsecond timestamp; ``comment`` becomes an opt_comment option."""
    ts = int(round(timestamp * 1_000_000))
    body = struct.pack("<IIIII", if_id, (ts >> 32) & 0xFFFFFFFF, ts & 0xFFFFFFFF, len(data), len(data))
    body += _pad4(data)
    if comment:
        body += _options([(OPT_COMMENT, comment.encode("utf-8"))])
    return _block(BT_EPB, body)


def capture_header(application: str) -> bytes:
    """SHB + the two IDBs every capture of ours starts with."""
    return (
        section_header_block(application)
        + interface_description_block(LINKTYPE_USB_LINUX_MMAPPED, "usbip0", "USB/IP URBs (usbmon format)")
        + interface_description_block(LINKTYPE_WIRESHARK_UPPER_PDU, "syslog0", "device syslog messages")
    )


# --- usbmon records -------------------------------------------------------------------------
def urb_id(urb: Any) -> int:
    """The usbmon URB id for a URB: unique per device (devid in the high half, seqnum low)."""
    devid = getattr(urb, "devid", None)
    if devid is None:
        devid = ((urb.busnum & 0xFFFF) << 16) | (urb.devnum & 0xFFFF)
    return ((int(devid) & 0xFFFFFFFF) << 32) | (int(urb.seqnum) & 0xFFFFFFFF)


def _iso_in_collated(buf: bytes, results: Sequence[Any]) -> int:
    """Like the kernel's mon_bin_collate_isodesc: bytes up to the end of the last filled packet."""
    end = 0
    for p in results:
        if p.actual_length:
            end = max(end, p.offset + p.actual_length)
    return min(end, len(buf))


def _setup_field(transfer_type: int, submit: bool, setup: Optional[bytes]) -> Tuple[int, bytes]:
    """(flag_setup, setup[8]): the setup packet travels in a control Submit only."""
    if transfer_type == TransferType.CONTROL and submit and setup is not None:
        return 0, bytes(setup)[:8].ljust(8, b"\0")
    return ord("-"), bytes(8)


def _data_flag(submit: bool, is_in: bool, captured: bytes) -> int:
    """flag_data: 0 when data follows; ``'<'`` / ``'>'`` when the direction carries none."""
    if captured:
        return 0
    if submit and is_in:
        return ord("<")
    if not submit and not is_in:
        return ord(">")
    return 0


def usbmon_header(uid: int, event: int, transfer_type: int, endpoint: int, devnum: int, busnum: int,
                  setup_flag: int, data_flag: int, timestamp: float, status: int, urb_len: int,
                  len_cap: int, setup: bytes, interval: int = 0, start_frame: int = 0,
                  xfer_flags: int = 0, ndesc: int = 0) -> bytes:
    """The 64-byte usbmon mmapped header (``endpoint`` with the direction bit 0x80 set for IN)."""
    usec = int(round(timestamp * 1_000_000))
    return USBMON_STRUCT.pack(
        uid & 0xFFFFFFFFFFFFFFFF, event, transfer_type, endpoint & 0xFF, devnum & 0xFF, busnum & 0xFFFF,
        setup_flag, data_flag, usec // 1_000_000, usec % 1_000_000, status,
        urb_len & 0xFFFFFFFF, len_cap, setup, interval, start_frame, xfer_flags & 0xFFFFFFFF, ndesc,
    )


def usbmon_record(urb: Any, event: int, timestamp: float) -> bytes:
    """One usbmon mmapped record (64-byte header + ISO descriptors + data) for ``urb``.

    Mirrors mon_bin_event(): Submit carries the setup packet (control only) and the OUT data,
    status -EINPROGRESS and urb_len = transfer_buffer_length; Complete carries the IN data,
    the URB status and urb_len = actual_length. ``data_flag`` is 0 when data follows, ``'<'``
    for an IN Submit and ``'>'`` for an OUT Complete (data not captured in that direction).
    """
    ttype = int(urb.transfer_type)
    is_in = bool(urb.direction)
    is_iso = ttype == TransferType.ISOCHRONOUS
    endpoint = (urb.endpoint & 0x7F) | (0x80 if is_in else 0)
    submit = event == EVENT_SUBMIT
    data = b""
    iso: Optional[Sequence[Any]] = None
    if submit:
        status = EINPROGRESS
        urb_len = int(urb.length or 0)
        if not is_in and urb.out_data is not None:
            data = bytes(urb.out_data[:urb_len])
        iso = urb.iso_packets
    else:
        status = int(urb.status if urb.status is not None else 0)
        urb_len = int(urb.actual_length or 0)
        iso = urb.iso_results if urb.iso_results is not None else urb.iso_packets
        if is_in and urb.in_data is not None:
            raw = bytes(urb.in_data)
            if is_iso and iso:
                data = raw[:_iso_in_collated(raw, iso)]
            else:
                data = raw[:urb_len]
    data_flag = _data_flag(submit, is_in, data)
    setup_flag, setup = _setup_field(ttype, submit, urb.setup)
    ndesc = 0
    descs = b""
    if is_iso and iso is not None:
        ndesc = len(iso)
        # For ISO the setup area holds error_count and numdesc (struct iso_rec in mon_bin.c).
        setup = _ISO_EC_STRUCT.pack(0 if submit else int(getattr(urb, "error_count", 0) or 0), ndesc)
        descs = b"".join(
            USBMON_ISODESC_STRUCT.pack(
                EINPROGRESS if submit else int(p.status), p.offset, p.length if submit else p.actual_length, 0
            )
            for p in iso
        )
    flags = int(urb.transfer_flags or 0) | (USBIP_URB_DIR_IN if is_in else 0)
    header = usbmon_header(
        urb_id(urb), event, ttype, endpoint, urb.devnum, urb.busnum, setup_flag, data_flag, timestamp,
        status, urb_len, len(data), setup, int(urb.interval or 0), int(urb.start_frame or 0), flags, ndesc,
    )
    return header + descs + data


# --- exported PDU (syslog) ----------------------------------------------------------------
def _tlv(tag: int, value: bytes) -> bytes:
    return _TLV.pack(tag, len(value)) + value


def _addr_tlvs(addr: Optional[Address], v4_tag: int, v6_tag: int, port_tag: int) -> bytes:
    if addr is None:
        return b""
    host, port = addr[0], addr[1]
    out = b""
    for family, tag in ((socket.AF_INET, v4_tag), (socket.AF_INET6, v6_tag)):
        try:
            out = _tlv(tag, socket.inet_pton(family, host))
            break
        except (OSError, ValueError):
            continue
    if port is not None:
        out += _tlv(port_tag, _BE_U32.pack(int(port) & 0xFFFFFFFF))
    return out


def exported_pdu(payload: bytes, dissector: str = "syslog", src: Optional[Address] = None,
                 dst: Optional[Address] = None) -> bytes:
    """LINKTYPE_WIRESHARK_UPPER_PDU packet: TLVs naming the dissector (+ addresses), then payload."""
    tlvs = _tlv(EXP_PDU_TAG_DISSECTOR_NAME, dissector.encode("ascii"))
    addrs = _addr_tlvs(src, EXP_PDU_TAG_IPV4_SRC, EXP_PDU_TAG_IPV6_SRC, EXP_PDU_TAG_SRC_PORT)
    addrs += _addr_tlvs(dst, EXP_PDU_TAG_IPV4_DST, EXP_PDU_TAG_IPV6_DST, EXP_PDU_TAG_DST_PORT)
    if addrs:
        tlvs += _tlv(EXP_PDU_TAG_PORT_TYPE, _BE_U32.pack(PT_TCP)) + addrs
    return tlvs + _TLV.pack(EXP_PDU_TAG_END_OF_OPT, 0) + payload


# --- the writer -------------------------------------------------------------------------------
_WINDOWS_PIPE = re.compile(r"^[\\/]{2}\.[\\/]pipe[\\/](?P<name>[^\\/]+)$", re.IGNORECASE)


def is_windows_pipe(path: str) -> bool:
    r"""``\\.\pipe\NAME`` (or ``//./pipe/NAME``): where Wireshark on Windows reads a live
    capture (``wireshark -k -i \\.\pipe\NAME``), as it reads a FIFO on Linux and macOS."""
    return _WINDOWS_PIPE.match(path) is not None


def _windows_api() -> Any:
    """CPython's own Windows API module (what multiprocessing's pipes use); typeshed declares it
    for Windows only, so it is loaded by name."""
    return importlib.import_module("_winapi")


class _WindowsPipe:
    """The server end of a Windows named pipe, created by the writer thread; Wireshark connects
    as its client. Every wait (for the reader to connect, for a write to drain) is overlapped
    and checks ``abort`` every 0.1 s, so close() never hangs on an absent or stalled reader."""

    # winbase.h / winerror.h values (_winapi does not name them all)
    PIPE_ACCESS_OUTBOUND = 0x00000002
    FILE_FLAG_FIRST_PIPE_INSTANCE = 0x00080000
    FILE_FLAG_OVERLAPPED = 0x40000000
    PIPE_TYPE_MESSAGE = 0x00000004
    WAIT_OBJECT_0 = 0
    ERROR_IO_PENDING = 997
    READER_GONE = (109, 232, 233)  # ERROR_BROKEN_PIPE, ERROR_NO_DATA, ERROR_PIPE_NOT_CONNECTED

    def __init__(self, path: str, abort: threading.Event) -> None:
        self.path = path
        self._abort = abort
        self._handle: Optional[int] = None

    def open(self) -> None:
        _winapi = _windows_api()
        self._handle = _winapi.CreateNamedPipe(
            self.path, self.PIPE_ACCESS_OUTBOUND | self.FILE_FLAG_OVERLAPPED | self.FILE_FLAG_FIRST_PIPE_INSTANCE,
            self.PIPE_TYPE_MESSAGE, 1, 1 << 16, 1 << 16, 0, _winapi.NULL)
        log.info("waiting for a reader to open %s (e.g. wireshark -k -i %s)", self.path, self.path)
        ov = _winapi.ConnectNamedPipe(self._handle, overlapped=True)
        self._wait(ov, "waiting for a reader")

    def write(self, data: bytes) -> None:
        _winapi = _windows_api()
        try:
            ov, err = _winapi.WriteFile(self._handle, data, overlapped=True)
        except OSError as exc:
            if getattr(exc, "winerror", None) in self.READER_GONE:
                raise BrokenPipeError(str(exc)) from exc
            raise
        if err == self.ERROR_IO_PENDING:
            self._wait(ov, "the reader was not reading")
        written, err = ov.GetOverlappedResult(True)
        if err in self.READER_GONE:
            raise BrokenPipeError(f"the reader of {self.path} went away")
        if err:
            raise OSError(f"writing to {self.path} failed (Windows error {err})")
        if written != len(data):
            raise OSError(f"short write to {self.path}: {written} of {len(data)} bytes")

    def _wait(self, ov: Any, what: str) -> None:
        _winapi = _windows_api()
        while _winapi.WaitForMultipleObjects([ov.event], False, 100) != self.WAIT_OBJECT_0:
            if self._abort.is_set():
                ov.cancel()
                ov.GetOverlappedResult(True)
                raise _CaptureStopped(f"aborted while {what}")

    def close(self) -> None:
        if self._handle is not None:
            _winapi = _windows_api()
            _winapi.CloseHandle(self._handle)
            self._handle = None


def _is_fifo(path: str) -> bool:
    try:
        return stat.S_ISFIFO(os.stat(path).st_mode)
    except OSError:
        return False


_STOP = object()


class _CaptureStopped(Exception):
    """Internal: the output went away; capture stops, traffic carries on."""


class PcapWriter(UrbHook):
    """Write URBs and syslog messages as pcapng, to a file object, a file path or a FIFO.

    Args:
        file_or_path: a binary file object opened for writing (``open(p, "wb")``,
            ``sys.stdout.buffer``) or a path. A plain file is created (truncated) at once, so a bad
            path raises OSError here. A path that is a FIFO (``mkfifo``) is opened by the
            writer thread, which waits (without blocking the caller) until a reader such as
            ``wireshark -k -i /tmp/usb.pcap`` opens it; records queue up meanwhile.
        application: written into the Section Header Block (shb_userappl).
        queue_size: bound on blocks waiting to be written; beyond it capture stops (one warning).
        close_timeout: how long :meth:`close` waits for the queue to drain (e.g. for a FIFO
            reader to appear) before it gives up and drops what is left.

    Use it as the ``hook=`` of ``import_device`` (or ``pcap=`` of ``get_backend``): every URB is
    recorded. Thread-safe. Each block is flushed as soon as it is written.
    """

    def __init__(
        self,
        file_or_path: Union[str, "os.PathLike[str]", IO[bytes]],
        *,
        application: Optional[str] = None,
        queue_size: int = 10000,
        close_timeout: float = 5.0,
    ) -> None:
        self.application = application or f"pyusb-usbip-backend {_version()}"
        self.close_timeout = close_timeout
        self._queue: "queue.Queue[Any]" = queue.Queue(maxsize=max(1, queue_size))
        self._lock = threading.Lock()
        self._closed = False
        self._failed: Optional[str] = None
        self._abort = threading.Event()
        self._opened = threading.Event()
        self._unlink_notes: Dict[int, List[str]] = {}
        self._id_counter = 0  # URB ids of 0.0.1's write_urb()/write_submit() without an urb_id
        self.records_written = 0
        self.records_dropped = 0
        self._file: Optional[IO[bytes]] = None
        self._path: Optional[str] = None
        self._fd: Optional[int] = None
        self._pipe: Optional[_WindowsPipe] = None
        if isinstance(file_or_path, (str, bytes, os.PathLike)):
            self._path = os.fsdecode(file_or_path)
            self.name = self._path
            if is_windows_pipe(self._path):
                if os.name != "nt":
                    raise OSError(errno.EINVAL, f"{self._path} is a Windows named pipe; on this system Wireshark "
                                  "reads a FIFO instead: mkfifo /tmp/usb && wireshark -k -i /tmp/usb", self._path)
                # Created by the writer thread, which then waits for Wireshark to connect.
                self._pipe = _WindowsPipe(self._path, self._abort)
            elif not _is_fifo(self._path):
                # A plain file opens here, so a bad path raises OSError to the caller at once;
                # a FIFO is opened by the writer thread (opening it waits for a reader).
                self._fd = os.open(self._path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        else:
            self._file = file_or_path
            self.name = getattr(file_or_path, "name", repr(file_or_path))
        self._header = capture_header(self.application)
        self._thread = threading.Thread(target=self._run, name="usbip-pcap-writer", daemon=True)
        self._thread.start()

    # -- public API ------------------------------------------------------------------------
    @property
    def failed(self) -> Optional[str]:
        """Why capture stopped early (reader gone, queue overflow), or None."""
        return self._failed

    def wait_open(self, timeout: Optional[float] = None) -> bool:
        """Wait until the output is open and the header written (a FIFO has a reader)."""
        return self._opened.wait(timeout)

    def wait_stopped(self, timeout: Optional[float] = None) -> bool:
        """Wait until the writer thread has ended (after close(), or when the output failed)."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def write_syslog(self, message: bytes, timestamp: Optional[float] = None,
                     src: Optional[Address] = None, dst: Optional[Address] = None, *,
                     ts: Optional[float] = None) -> None:
        """Record one syslog message (the message itself, without RFC 6587 framing).

        ``ts`` is 0.0.1's name of ``timestamp`` (seconds since the epoch; default now). Called
        with ``ts=`` (0.0.1's form), the message is written before this returns.
        """
        if ts is not None and timestamp is not None:
            raise TypeError("write_syslog() takes timestamp or ts, not both")
        when = timestamp if timestamp is not None else ts
        self._enqueue(enhanced_packet_block(IF_SYSLOG, time.time() if when is None else when,
                                            exported_pdu(bytes(message), "syslog", src, dst)))
        if ts is not None:
            self.flush(self.close_timeout)

    @overload
    def write_urb(self, urb: Any, event: int, timestamp: float, comment: Optional[str] = None) -> int: ...

    @overload
    def write_urb(self, *, event_type: int, transfer_type: int, ep: int, direction_in: bool, devnum: int,
                  busnum: int, setup: bytes = ..., status: int = ..., urb_len: int = ..., data: bytes = ...,
                  urb_id: Optional[int] = ..., ts: Optional[float] = ..., comment: Optional[str] = ...) -> int: ...

    def write_urb(self, *args: Any, **kwargs: Any) -> int:
        """Record one usbmon event; returns its URB id. Two forms:

        * ``write_urb(urb, event, timestamp, comment=None)``: a URB of the engine (or anything
          with its attributes) as :func:`usbmon_record` describes it; what the hooks write.
        * ``write_urb(event_type=, transfer_type=, ep=, direction_in=, devnum=, busnum=,
          setup=, status=, urb_len=, data=, urb_id=None, ts=None)``, version 0.0.1's: every
          field given, ``urb_id`` None numbers URBs 1, 2, ..., ``ts`` None is now. Written
          before this returns, as 0.0.1 wrote it.
        """
        if args or "urb" in kwargs:
            return self._write_urb_object(*args, **kwargs)
        return self._write_urb_fields(**kwargs)

    def write_submit(self, *, transfer_type: int, ep: int, direction_in: bool, devnum: int, busnum: int,
                     setup: bytes = b"\x00" * 8, data: bytes = b"", urb_len: int = 0,
                     ts: Optional[float] = None) -> int:
        """Record a Submit (``'S'``, status -EINPROGRESS); returns the URB id for
        :meth:`write_complete`. ``data`` is the OUT payload, ``urb_len`` the transfer length."""
        return self._write_urb_fields(
            event_type=EVENT_SUBMIT, transfer_type=transfer_type, ep=ep, direction_in=direction_in,
            devnum=devnum, busnum=busnum, setup=setup, status=EINPROGRESS, urb_len=urb_len, data=data, ts=ts,
        )

    def write_complete(self, *, urb_id: int, transfer_type: int, ep: int, direction_in: bool, devnum: int,
                       busnum: int, status: int = 0, data: bytes = b"", urb_len: int = 0,
                       ts: Optional[float] = None) -> None:
        """Record the Complete (``'C'``) of the Submit that returned ``urb_id``; ``data`` is the
        IN data, ``urb_len`` the actual length."""
        self._write_urb_fields(
            event_type=EVENT_COMPLETE, transfer_type=transfer_type, ep=ep, direction_in=direction_in,
            devnum=devnum, busnum=busnum, status=status, urb_len=urb_len, data=data, urb_id=urb_id, ts=ts,
        )

    def flush(self, timeout: Optional[float] = None) -> bool:
        """Wait until every record queued before this call is written and flushed.

        False when capture has stopped (closed, failed) or ``timeout`` seconds passed first.
        """
        if self._closed or self._failed or not self._thread.is_alive():
            return False
        done = threading.Event()
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            self._queue.put(done, timeout=timeout)
        except queue.Full:
            return False
        while True:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return done.is_set()
            # Bounded waits: the writer thread may end (output failed) before it reaches the marker.
            if done.wait(0.1 if left is None else min(left, 0.1)):
                return self._failed is None
            if not self._thread.is_alive():
                return done.is_set()

    def _write_urb_object(self, urb: Any, event: int, timestamp: float, comment: Optional[str] = None) -> int:
        self._enqueue(enhanced_packet_block(IF_USB, timestamp, usbmon_record(urb, event, timestamp), comment))
        return urb_id(urb)

    def _write_urb_fields(self, *, event_type: int, transfer_type: int, ep: int, direction_in: bool, devnum: int,
                          busnum: int, setup: bytes = b"\x00" * 8, status: int = 0, urb_len: int = 0,
                          data: bytes = b"", urb_id: Optional[int] = None, ts: Optional[float] = None,
                          comment: Optional[str] = None) -> int:
        """0.0.1's write_urb(): a usbmon record from its fields, written before returning."""
        if urb_id is None:
            with self._lock:
                self._id_counter += 1
                urb_id = self._id_counter
        when = time.time() if ts is None else ts
        submit = event_type == EVENT_SUBMIT
        data = bytes(data)
        setup_flag, setup_bytes = _setup_field(transfer_type, submit, setup)
        header = usbmon_header(
            urb_id, event_type, transfer_type, (ep & 0x0F) | (0x80 if direction_in else 0), devnum, busnum,
            setup_flag, _data_flag(submit, direction_in, data), when, status, urb_len, len(data), setup_bytes,
            xfer_flags=USBIP_URB_DIR_IN if direction_in else 0,
        )
        self._enqueue(enhanced_packet_block(IF_USB, when, header + data, comment))
        self.flush(self.close_timeout)
        return urb_id

    # -- UrbHook ---------------------------------------------------------------------------
    def urb_submitted(self, urb: "Urb") -> None:
        if self._closed or self._failed:
            self._count_dropped()
            return
        self.write_urb(urb, EVENT_SUBMIT, urb.submit_time or time.time())

    def urb_completed(self, urb: "Urb") -> None:
        key = urb_id(urb)
        with self._lock:
            notes = self._unlink_notes.pop(key, None)
        if self._closed or self._failed:
            self._count_dropped()
            return
        comment = None
        if notes:
            if urb.status == ECONNRESET:
                notes.append("URB cancelled by CMD_UNLINK: completes with -ECONNRESET (-104), as usbmon shows it")
            comment = "; ".join(notes)
        # usbmon writes 'E' only when submission itself failed; the engine may flag that.
        event = EVENT_ERROR if getattr(urb, "submit_failed", False) else EVENT_COMPLETE
        self.write_urb(urb, event, urb.complete_time or time.time(), comment)

    def urb_unlink_sent(self, urb: "Urb", unlink_seqnum: int) -> None:
        with self._lock:
            self._unlink_notes.setdefault(urb_id(urb), []).append(
                f"USBIP_CMD_UNLINK seqnum {unlink_seqnum} sent for URB seqnum {urb.seqnum}"
            )

    def urb_unlink_returned(self, urb: "Urb", unlink_seqnum: int, status: int) -> None:
        with self._lock:
            notes = self._unlink_notes.get(urb_id(urb))
            if notes is not None:  # the URB is still pending; else its Complete is written already
                notes.append(f"USBIP_RET_UNLINK seqnum {unlink_seqnum} status {status}")

    # -- lifecycle -------------------------------------------------------------------------
    def close(self, timeout: Optional[float] = None) -> None:
        """Write what is queued, stop the writer thread, close the file if this writer opened it."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        deadline = time.monotonic() + (self.close_timeout if timeout is None else timeout)
        try:
            self._queue.put(_STOP, timeout=max(0.0, deadline - time.monotonic()))
        except queue.Full:
            self._abort.set()
        self._thread.join(max(0.0, deadline - time.monotonic()))
        if self._thread.is_alive():
            if not self._opened.is_set() and self._path is not None:
                self._warn_once(f"nobody opened {self._path} for reading before close(); capture dropped")
            else:
                self._warn_once(f"capture to {self.name} did not drain in time; remaining records dropped")
            self._abort.set()
            self._thread.join(5.0)
        if self.records_dropped:
            log.info("capture %s: %d records written, %d dropped", self.name, self.records_written,
                     self.records_dropped)

    def __enter__(self) -> "PcapWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals -------------------------------------------------------------------------
    def _warn_once(self, reason: str) -> None:
        with self._lock:
            if self._failed is not None:
                return
            self._failed = reason
        log.warning("pcap capture stopped: %s (USB traffic continues; further records are dropped)", reason)

    def _enqueue(self, block: bytes) -> None:
        if self._closed or self._failed:
            self._count_dropped()
            return
        try:
            self._queue.put_nowait(block)
        except queue.Full:
            self._count_dropped()
            self._warn_once(f"capture queue to {self.name} overflowed ({self._queue.maxsize} blocks waiting; "
                            "is the reader keeping up?)")

    def _open_output(self) -> None:
        """Open a path (in the writer thread: opening a FIFO waits for its reader)."""
        assert self._path is not None
        if self._fd is not None:  # a plain file, opened by __init__
            return
        waiting_logged = False
        while True:
            try:
                # O_NONBLOCK: fails with ENXIO while no reader has the FIFO open, and later writes
                # never block (see _write_fd), so close() can always abort.
                self._fd = os.open(self._path, os.O_WRONLY | os.O_NONBLOCK)
                return
            except OSError as exc:
                if exc.errno != errno.ENXIO:
                    raise
            if not waiting_logged:
                log.info("waiting for a reader to open FIFO %s (e.g. wireshark -k -i %s)", self._path, self._path)
                waiting_logged = True
            if self._abort.wait(0.1):
                raise _CaptureStopped("aborted while waiting for a FIFO reader")

    def _write_fd(self, data: bytes) -> None:
        assert self._fd is not None
        view = memoryview(data)
        while view:
            try:
                n = os.write(self._fd, view)
                view = view[n:]
            except BlockingIOError:
                # Pipe full: wait for the reader, but stay abortable.
                while not self._abort.is_set():
                    _, writable, _ = select.select([], [self._fd], [], 0.2)
                    if writable:
                        break
                else:
                    raise _CaptureStopped("aborted while the reader was not reading")

    def _write(self, data: bytes) -> None:
        if self._pipe is not None:
            self._pipe.write(data)
        elif self._file is not None:
            view = memoryview(data)
            while view:  # raw (unbuffered) files may write part of it
                n = self._file.write(view)
                view = view[len(view) if n is None else n:]
            self._file.flush()
        else:
            self._write_fd(data)

    def _run(self) -> None:
        try:
            if self._pipe is not None:
                self._pipe.open()
            elif self._path is not None:
                self._open_output()
            self._write(self._header)
            self._opened.set()
            while True:
                item = self._queue.get()
                if item is _STOP:
                    break
                if isinstance(item, threading.Event):  # flush(): everything before it is written
                    item.set()
                    continue
                if self._abort.is_set():
                    raise _CaptureStopped("aborted")
                self._write(item)
                self.records_written += 1
        except _CaptureStopped:
            pass
        except BrokenPipeError:
            self._warn_once(f"the reader of {self.name} went away (broken pipe)")
        except (OSError, ValueError) as exc:  # ValueError: the caller closed the file object
            self._warn_once(f"cannot write capture to {self.name}: {exc}")
        except Exception:  # never let the writer thread die silently
            log.exception("pcap writer thread failed")
            self._warn_once(f"internal error writing {self.name}")
        finally:
            self._drain_dropped()
            if self._pipe is not None:
                self._pipe.close()
            if self._fd is not None:
                try:
                    os.close(self._fd)
                except OSError:
                    pass
                self._fd = None
            elif self._file is not None:
                try:
                    self._file.flush()
                except (OSError, ValueError):
                    pass
            self._opened.set()

    def _drain_dropped(self) -> None:
        """After the output failed or closed, count whatever is still queued as dropped."""
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            if isinstance(item, threading.Event):
                item.set()  # a flush() waiting for it: nothing more will be written
            elif item is not _STOP:
                self._count_dropped()

    def _count_dropped(self) -> None:
        with self._lock:
            self.records_dropped += 1
