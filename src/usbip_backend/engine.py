"""The URB engine: one TCP connection per imported device, many URBs in flight.

A :class:`Connection` owns the socket left over from OP_REQ_IMPORT. Callers on any thread
:meth:`~Connection.submit` URBs; each gets a seqnum and goes straight onto the wire under a
send lock. One named daemon reader thread reads RET_SUBMIT / RET_UNLINK replies and completes the
matching :class:`Urb` by seqnum, in whatever order the server answers. IN data is received
straight into the caller's buffer.

Timeouts and cancellation follow the kernel's unlink rules (usbip_protocol.rst, "USBIP_CMD_UNLINK"
and "USBIP_RET_UNLINK"): the URB is never abandoned by closing the socket — Linux's usbip-host
resets the real device when the connection drops. Instead a CMD_UNLINK goes out and

* RET_UNLINK status -ECONNRESET: the URB was cancelled; no RET_SUBMIT follows for it;
* RET_UNLINK status 0: the URB had completed first; its RET_SUBMIT is (or was) on the wire and is
  delivered normally — so data that won the race is never lost;
* nothing within ``unlink_grace`` seconds: the caller gets its timeout anyway and the seqnum is
  remembered as abandoned, so a late reply is read and dropped, never delivered to another URB.

Who reads the socket (leader/follower). Handing every reply from the reader thread to the waiting
caller costs two thread wake-ups per URB, which dominated synchronous round trips (PyUSB does one
transfer at a time). So the socket is read by whoever holds the *read token* (``_token``):

* :meth:`Connection.transfer` (submit + wait, what PyUSB uses) tries to take the token without
  blocking. If it gets it, the caller is the *leader*: it sends its URB and reads replies itself
  until its own URB completes (completing any other URB whose reply comes first), then gives the
  token back. One wake-up per URB, no hand-off.
* A leader whose reply has not begun within ``_LEAD_WAIT`` (20 ms: a bulk IN waiting for data)
  gives the token back and waits as a follower, so a long wait never keeps other threads from
  leading their own short transfers.
* If the token is taken, the caller is a *follower*: it waits on its URB and the token holder
  completes it.
* :meth:`Urb.wait` leads the same way when it finds the token free (once per URB: a caller
  that led in vain then waits as a follower), so a caller pipelining with
  :meth:`~Connection.submit` reads its own replies on its own thread, as the raw loop does.
* The reader thread reads only replies no leader is reading for (``_unled``): after an
  asynchronous :meth:`~Connection.submit`, a CMD_UNLINK, or a leader that gave up with its URB
  still outstanding. With one such reply owed it waits for bytes with poll() *without* the token
  (a transfer() may lead meanwhile) and takes the token to read what arrived; if a leader holds
  it, the leader dispatches what arrives, so the reader thread looks again ``_READER_BACKOFF``
  later rather than queue on the token. With several replies owed (pipelining) it reads them
  back to back. When none is owed it sleeps on ``_need_reader``.
* The PyUSB backend's control and bulk calls take a lane (:meth:`Connection._count`) that is a
  leader without a :class:`Urb`: send, one recv, return the count. Only when something unusual
  happens (another reply first, a reply in pieces, none yet, an error status) does the
  transfer become an ordinary URB in the pending table.

Only the token holder touches the buffered :class:`_Reader`, so messages are never interleaved.
A leader waits in one blocking recv bounded by SO_RCVTIMEO (set once, see :meth:`_Reader.arm`)
and honours its deadline only between messages; once a reply has started, it is read to the end,
bounded by the timeout plus ``unlink_grace``, extended while bytes keep arriving (a server that
stops moving inside a reply for longer is broken: the connection is failed). Since nobody reads an idle socket, a server that goes away while nothing
is in flight is noticed by the next transfer.
"""

from __future__ import annotations

import logging
import select
import socket
import struct
import sys
import threading
import time
from collections import OrderedDict
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from . import protocol as P
from .errors import (
    ConnectionLostError, ProtocolError, UrbError, UsbipTimeoutError, describe_status,
)
from .hooks import UrbHook

_log = logging.getLogger(__name__)

ECONNRESET = -104
ESHUTDOWN = -108

_allocate_lock = threading.Lock  # the cheapest waitable primitive CPython has
_HAVE_SENDMSG = hasattr(socket.socket, "sendmsg")
_HAVE_POLL = hasattr(select, "poll")
#: Windows takes SO_RCVTIMEO as a DWORD of milliseconds, not a timeval, and leaves a socket whose
#: receive timed out in an indeterminate state, so it is not used there. (Windows has no poll()
#: either: there, callers never lead and the reader thread reads every reply.)
_HAVE_RCVTIMEO = sys.platform != "win32"
_IOV_MAX = 1024

#: Largest transfer_buffer_length a URB may ask for. The kernel warns and drops the connection
#: on absurd lengths (PROTOCOL-NOTES, "Hostile or broken input"); we refuse before sending.
MAX_URB_LENGTH = 64 * 1024 * 1024

_SUBMIT_PACK = P.CMD_SUBMIT_STRUCT.pack
_UNLINK_PACK = P.CMD_UNLINK_STRUCT.pack
_RET_SUBMIT_UNPACK = P.RET_SUBMIT_STRUCT.unpack_from
_ISO_UNPACK = P.ISO_PACKET_STRUCT.unpack_from
# Hot-path constants (one global lookup instead of module + class attribute lookups per URB).
_CONTROL = P.TransferType.CONTROL
_ISOCHRONOUS = P.TransferType.ISOCHRONOUS
_PERIODIC = (P.TransferType.INTERRUPT, P.TransferType.ISOCHRONOUS)
_CMD_SUBMIT = P.USBIP_CMD_SUBMIT
_URB_DIR_IN = P.USBIP_URB_DIR_IN
_NO_SETUP = bytes(8)
_RET_SUBMIT = P.USBIP_RET_SUBMIT
_RET_UNLINK = P.USBIP_RET_UNLINK
_HEADER = P.URB_HEADER_SIZE


def _direction(transfer_type: P.TransferType, endpoint: int, setup: Optional[bytes], interval: int):
    """(direction, endpoint address) of a URB, after the checks the wire needs: a control URB's
    direction comes from its 8-byte setup packet; interrupt and ISO URBs need an interval."""
    if transfer_type == _CONTROL:
        if setup is None or len(setup) != 8:
            raise ValueError("a control URB needs an 8-byte setup packet")
        direction = setup[0] >> 7
        return direction, (endpoint & 0x0F) | (0x80 if direction else 0)
    if interval <= 0 and transfer_type in _PERIODIC:
        # The kernel rejects interval 0 for these (usb_submit_urb -EINVAL) and the stub then
        # drops the whole connection.
        raise ValueError(f"{transfer_type.name.lower()} URBs need a positive interval")
    return (1 if endpoint & 0x80 else 0), endpoint


class Urb:
    """One USB request block in flight (or done). Attributes are read-only for users/hooks."""

    __slots__ = (
        "conn", "seqnum", "devid", "busnum", "devnum", "transfer_type", "endpoint", "direction",
        "setup", "transfer_flags", "length", "interval", "start_frame", "out_data", "iso_packets",
        "buffer", "submit_time", "status", "actual_length", "in_data", "iso_results",
        "error_count", "complete_time", "submit_failed", "_done", "_unlink_seqnum", "_error",
    )

    def __init__(self, conn: "Connection", transfer_type: P.TransferType, endpoint: int, direction: int,
                 setup: Optional[bytes], length: int, interval: int, data: memoryview) -> None:
        self.conn = conn
        self.devid = conn.devid
        self.busnum = conn.busnum
        self.devnum = conn.devnum
        self.transfer_type = transfer_type
        self.endpoint = endpoint
        self.direction = direction
        self.setup = setup
        self.transfer_flags = 0
        self.length = length
        self.interval = interval
        self.start_frame = 0
        self.iso_packets: Optional[List[P.IsoPacket]] = None
        if direction:
            self.buffer: Optional[memoryview] = data  # IN: the caller's buffer
            self.out_data: Optional[memoryview] = None
        else:
            self.buffer = None
            self.out_data = data
        self.seqnum = 0
        self.submit_time = 0.0
        self.status: Optional[int] = None
        self.actual_length = 0
        self.in_data: Optional[memoryview] = None
        self.iso_results: Optional[List[P.IsoPacket]] = None
        self.error_count = 0
        self.complete_time = 0.0
        self.submit_failed = False  # True: the CMD_SUBMIT never reached the wire (capture: 'E')
        self._unlink_seqnum = 0
        self._error: Optional[BaseException] = None
        self._done = _allocate_lock()
        self._done.acquire()

    def __repr__(self) -> str:
        return (f"<Urb seq={self.seqnum} {self.transfer_type.name.lower()} ep=0x{self.endpoint:02x} "
                f"len={self.length} status={self.status} actual={self.actual_length}>")

    # -- completion ------------------------------------------------------------------------------
    def done(self) -> bool:
        return self.status is not None

    def wait(self, timeout: Optional[float] = None) -> "Urb":
        """Wait for completion; ``None`` or ``0`` waits forever (as PyUSB's timeout=0).

        Raises:
            UsbipTimeoutError: not complete in time; a CMD_UNLINK was sent first.
            UrbError: completed with a non-zero status.
            ConnectionLostError: the connection went away.
        """
        if self.status is None:
            conn = self.conn
            if conn._can_lead and conn._token.acquire(False):
                # Nobody is reading: read for this URB ourselves, as transfer() does, instead of
                # having the reader thread read the reply and wake us (a pipelining caller
                # then runs on one thread, like the raw loop).
                deadline = conn._lead_for(self, timeout)
                if self.status is not None:
                    return self._result()
                if deadline is not None:
                    timeout = deadline - time.monotonic()
                    if timeout <= 0:
                        conn._timed_out(self)
                        return self._result()
            return self._wait_done(timeout)
        return self._result()

    def _wait_done(self, timeout: Optional[float]) -> "Urb":
        """wait() without leading: for the token holder (or the reader thread) to complete it.
        A caller that already led for this URB in vain waits here, so that a long wait (a bulk IN
        waiting for data) does not keep taking the token from other threads' transfers."""
        if self.status is None:
            if not timeout or timeout < 0:
                self._done.acquire()
                self._done.release()
            elif self._done.acquire(True, timeout):
                self._done.release()
            else:
                self.conn._timed_out(self)
        return self._result()

    def _result(self) -> "Urb":
        status = self.status
        if status == 0:
            return self
        if self._error is not None:
            raise self._error
        if status == ECONNRESET and self._unlink_seqnum:
            raise UsbipTimeoutError(
                f"URB {self.seqnum} to endpoint 0x{self.endpoint:02x} of {self.conn.name} timed out "
                f"(cancelled with CMD_UNLINK)", transferred=self.actual_length,
            )
        raise UrbError(
            f"URB to endpoint 0x{self.endpoint:02x} of {self.conn.name} failed: {describe_status(status)}",
            status=status, actual_length=self.actual_length,
        )

    def cancel(self) -> None:
        """Ask the server to unlink this URB (no-op if it already completed)."""
        self.conn._send_unlink(self)


class Connection:
    """An imported device: its socket, reader thread and table of URBs in flight."""

    def __init__(
        self,
        sock: socket.socket,
        device: P.UsbDevice,
        *,
        name: Optional[str] = None,
        hook: Optional[UrbHook] = None,
        unlink_grace: float = 0.25,
    ) -> None:
        self.sock = sock
        self.device = device
        self.busid = device.busid
        self.busnum = device.busnum
        self.devnum = device.devnum
        self.devid = device.devid
        self.speed = device.speed
        self.name = name or f"device {device.busid}"
        self.hook = hook
        self.unlink_grace = unlink_grace
        self._send_lock = threading.Lock()
        self._pending: Dict[int, Urb] = {}  # seqnum -> URB awaiting RET_SUBMIT
        self._unlinks: Dict[int, Urb] = {}  # CMD_UNLINK seqnum -> URB it targets
        # seqnum -> URB given up on (timed out with no unlink verdict, or cancelled): a reply that
        # still arrives for it is read into scratch space and dropped. Bounded; see _retire().
        self._retired: "OrderedDict[int, Urb]" = OrderedDict()
        self._seq = 0
        self._receiving: Optional[Urb] = None  # popped from _pending, reply being read
        self._closing = False
        self._lost: Optional[ConnectionLostError] = None
        sock.settimeout(None)
        # Leader/follower (module docstring): the read token, the buffered reader only its holder
        # uses, and the event that asks the reader thread to take the token.
        self._token = threading.Lock()
        self._need_reader = threading.Event()
        self._rd = _Reader(sock)
        self._header = bytearray(P.URB_HEADER_SIZE)
        self._hview = memoryview(self._header)
        self._can_lead = self._rd.can_time
        self._led = 0  # URBs whose transfer() caller is reading for them right now (token held)
        self._reader_idle = False  # the reader thread sleeps on _need_reader
        self._reader = threading.Thread(target=self._read_loop, name=f"usbip-reader-{self.busid}", daemon=True)
        self._reader.start()

    # -- public API -------------------------------------------------------------------------------
    @property
    def closed(self) -> bool:
        return self._lost is not None

    def submit(
        self,
        transfer_type: P.TransferType,
        endpoint: int,
        *,
        setup: Optional[bytes] = None,
        data=None,
        buffer=None,
        length: Optional[int] = None,
        interval: int = 0,
        iso_packet_lengths: Optional[Sequence[int]] = None,
        transfer_flags: int = 0,
    ) -> Urb:
        """Send one CMD_SUBMIT and return its :class:`Urb` at once (see module docstring)."""
        return self._submit(transfer_type, endpoint, setup, data, buffer, length, interval,
                            iso_packet_lengths, transfer_flags)

    def _submit(self, transfer_type: P.TransferType, endpoint: int, setup: Optional[bytes], data, buffer,
                length: Optional[int], interval: int, iso_packet_lengths: Optional[Sequence[int]],
                transfer_flags: int) -> Urb:
        urb = self._prepare(transfer_type, endpoint, setup, data, buffer, length, interval,
                            iso_packet_lengths, transfer_flags)
        self._post(urb)
        # Someone must read the reply: wake the reader thread if it sleeps (it re-checks for work
        # after saying it is idle and before sleeping, so a URB added here is never missed).
        if self._reader_idle:
            self._need_reader.set()
        return urb

    def _prepare(self, transfer_type: P.TransferType, endpoint: int, setup: Optional[bytes], data, buffer,
                 length: Optional[int], interval: int, iso_packet_lengths: Optional[Sequence[int]],
                 transfer_flags: int) -> Urb:
        """Check the arguments and build the URB (not sent yet; no seqnum)."""
        if self._lost is not None:
            raise self._lost
        direction, endpoint = _direction(transfer_type, endpoint, setup, interval)
        if direction:
            if buffer is None:
                if length is None:
                    raise ValueError("an IN URB needs a buffer or a length")
                buffer = bytearray(length)
            mv = memoryview(buffer)
            if mv.format != "B" or mv.ndim != 1:
                mv = mv.cast("B")
            if mv.readonly:
                raise ValueError("the IN buffer must be writable")
            if length is None:
                length = mv.nbytes
            elif length > mv.nbytes:
                raise ValueError(f"length {length} exceeds the buffer ({mv.nbytes} bytes)")
            transfer_flags |= _URB_DIR_IN
        else:
            mv = memoryview(data if data is not None else b"")
            if mv.format != "B" or mv.ndim != 1:
                mv = mv.cast("B")
            if length is not None and length != mv.nbytes:
                raise ValueError(f"length {length} differs from the OUT data ({mv.nbytes} bytes)")
            length = mv.nbytes
        if length < 0 or length > MAX_URB_LENGTH:
            raise ValueError(f"URB length {length} outside 0..{MAX_URB_LENGTH}")
        urb = Urb(self, transfer_type, endpoint, direction, setup, length, interval, mv)
        if transfer_type == _ISOCHRONOUS:
            lengths = list(iso_packet_lengths or [length])
            if not 0 < len(lengths) <= P.MAX_ISO_PACKETS:
                raise ValueError(f"an ISO URB needs 1..{P.MAX_ISO_PACKETS} packets")
            packets, offset = [], 0
            for plen in lengths:
                packets.append(P.IsoPacket(offset, plen))
                offset += plen
            if offset != length:
                raise ValueError(f"ISO packet lengths add up to {offset}, not the URB length {length}")
            urb.iso_packets = packets
            transfer_flags |= P.USBIP_URB_ISO_ASAP
        urb.transfer_flags = transfer_flags
        return urb

    def _post(self, urb: Urb) -> None:
        """Give the URB a seqnum, enter it in the pending table and send its CMD_SUBMIT."""
        hook = self.hook
        pending = self._pending
        iso = urb.iso_packets
        length = urb.length
        with self._send_lock:
            if self._lost is not None:
                raise self._lost
            urb.seqnum = seq = self._next_seqnum()
            setup = urb.setup
            header = _SUBMIT_PACK(
                _CMD_SUBMIT, seq, self.devid, urb.direction, urb.endpoint & 0x0F, urb.transfer_flags,
                length, 0, 0 if iso is None else len(iso), urb.interval,
                _NO_SETUP if setup is None else setup,
            )
            pending[seq] = urb
            urb.submit_time = time.time()
            if hook is not None:
                self._call_hook(hook.urb_submitted, urb)
            try:
                if iso is not None:
                    iso_raw = P.pack_iso_packets(iso)
                    self._send([header, iso_raw] if urb.direction or not length
                               else [header, urb.out_data, iso_raw])
                elif urb.direction or not length:
                    self.sock.sendall(header)
                else:
                    self._send([header, urb.out_data])
                return
            except OSError as exc:
                urb.submit_failed = True
                failure = exc
        # (outside the send lock, which _fail_all takes)
        lost = self._fail_all(f"send failed: {failure}")  # completes this URB too
        raise lost from failure

    def transfer(self, transfer_type: P.TransferType, endpoint: int, *, timeout: Optional[float] = None,
                 setup: Optional[bytes] = None, data=None, buffer=None, length: Optional[int] = None,
                 interval: int = 0, iso_packet_lengths: Optional[Sequence[int]] = None,
                 transfer_flags: int = 0) -> Urb:
        """Submit one URB and wait for it (see :meth:`submit` and :meth:`Urb.wait`).

        If nobody is reading the socket, the calling thread reads its reply itself (leader; see
        the module docstring); otherwise it waits for the token holder to complete its URB.
        """
        return self._sync(transfer_type, endpoint, setup, data, buffer, length, interval, timeout,
                          iso_packet_lengths, transfer_flags)

    def _sync(self, transfer_type: P.TransferType, endpoint: int, setup: Optional[bytes], data, buffer,
              length: Optional[int], interval: int, timeout: Optional[float],
              iso_packet_lengths: Optional[Sequence[int]] = None, transfer_flags: int = 0) -> Urb:
        """:meth:`transfer` with positional arguments (the backend calls it directly)."""
        if not self._can_lead or not self._token.acquire(False):
            # Follower: the token holder (reader thread or another leader) completes our URB.
            return self._submit(transfer_type, endpoint, setup, data, buffer, length, interval,
                                iso_packet_lengths, transfer_flags).wait(timeout)
        self._led += 1
        try:
            urb = self._prepare(transfer_type, endpoint, setup, data, buffer, length, interval,
                                iso_packet_lengths, transfer_flags)
            self._post(urb)
            deadline = self._lead(urb, timeout)
        finally:
            self._led -= 1
            self._release_token()
        return self._finish(urb, deadline)

    def _lead_for(self, urb: Urb, timeout: Optional[float]) -> Optional[float]:
        """:meth:`Urb.wait` got the token (held): lead for ``urb``; returns the deadline."""
        self._led += 1
        try:
            return self._lead(urb, timeout)
        finally:
            self._led -= 1
            self._release_token()

    def _release_token(self) -> None:
        self._token.release()
        # Replies still owed (our own if we stopped leading early, followers that queued behind
        # us, unlinks): hand the reading over to the reader thread, if it sleeps. (Awake, it
        # re-checks for work before sleeping; see submit(). Not waking it needlessly matters:
        # it would contend for the GIL with this caller's next transfer.)
        if self._reader_idle and (self._pending or self._unlinks):
            self._need_reader.set()

    def _finish(self, urb: Urb, deadline: Optional[float]) -> Urb:
        """After leading (token given back): the URB, its error, or wait for it as a follower."""
        status = urb.status
        if status == 0:
            return urb
        if status is None:
            # We stopped reading before our reply came: the deadline passed, or the reply is slow
            # and the reader thread took over (a long wait must not keep others from leading).
            # Either way, wait as a follower; a timeout takes the usual unlink path.
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                self._timed_out(urb)
                return urb._result()
            return urb._wait_done(left)
        return urb._result()

    def _count(self, transfer_type: P.TransferType, endpoint: int, setup: Optional[bytes],
               data: Optional[memoryview], buffer: Optional[memoryview], timeout: Optional[float]) -> int:
        """One control or bulk transfer for the PyUSB backend; returns actual_length.

        ``data`` (OUT) or ``buffer`` (IN) is a flat, writable-if-IN byte memoryview. When the
        caller can lead and no hook listens, no :class:`Urb` is built at all: the CMD_SUBMIT goes
        out, the leader takes its reply with one recv, and the count is returned. Anything
        unusual (another URB's reply first, a reply in pieces, none yet, an error status) turns
        the transfer into an ordinary URB in the pending table, read by the general loop. While
        it has no URB, the reader thread does not count on this caller for any reply (_unled).
        """
        if self.hook is not None or not self._can_lead or not self._token.acquire(False):
            return self._sync(transfer_type, endpoint, setup, data, buffer, None, 0, timeout).actual_length
        urb = None
        try:
            # What _prepare checks, for the two shapes of argument the backend passes.
            if self._lost is not None:
                raise self._lost
            direction, endpoint = _direction(transfer_type, endpoint, setup, 0)
            view = buffer if direction else data
            length = view.nbytes
            if direction and view.readonly:
                raise ValueError("the IN buffer must be writable")
            if length > MAX_URB_LENGTH:
                raise ValueError(f"URB length {length} outside 0..{MAX_URB_LENGTH}")
            flags = _URB_DIR_IN if direction else 0
            failure = None
            with self._send_lock:
                # What _post does (no hook here).
                if self._lost is not None:
                    raise self._lost
                seq = self._next_seqnum()
                header = _SUBMIT_PACK(_CMD_SUBMIT, seq, self.devid, direction, endpoint & 0x0F, flags, length,
                                      0, 0, 0, _NO_SETUP if setup is None else setup)
                try:
                    if direction or not length:
                        self.sock.sendall(header)
                    else:
                        self._send([header, view])
                except OSError as exc:
                    failure = exc
            if failure is not None:
                lost = self._fail_all(f"send failed: {failure}")
                raise lost from failure
            first, limit, deadline = self._lead_times(timeout)
            try:
                got = self._own_reply(seq, direction, view, length, limit)
            except BaseException as exc:
                self._fail_all(self._read_failed(exc))
                if not isinstance(exc, (ProtocolError, EOFError, OSError)):
                    raise
                raise self._lost from exc
            if got is not None:
                if self._rd.end > self._rd.start:
                    self._lead_loop(None, first, limit)  # replies the same recv brought
                if not got[0]:
                    return got[1]  # (the finally gives the token back)
            urb = Urb(self, transfer_type, endpoint, direction, setup, length, 0, view)
            urb.seqnum = seq
            urb.transfer_flags = flags
            if got is not None:
                status, urb.actual_length, urb.error_count = got
                if direction:
                    urb.in_data = view[:urb.actual_length]
                urb.status = status  # not 0: _finish raises the error
            else:
                # Unusual: make it an ordinary URB and let the general loop read for it. Under
                # the send lock, as _fail_all clears the table under it: if the connection was
                # lost while we waited, nobody would ever complete a URB entered after that.
                with self._send_lock:
                    if self._lost is None:
                        self._pending[seq] = urb
                if self._lost is not None:
                    raise self._lost
                self._led += 1
                try:
                    self._lead_loop(urb, first, limit)
                finally:
                    self._led -= 1
        finally:
            self._release_token()
        return self._finish(urb, deadline).actual_length

    def _lead_times(self, timeout: Optional[float]) -> Tuple[float, Optional[float], Optional[float]]:
        """(first, limit, deadline) for a leader, see _read_one; arms the receive timeout."""
        now = time.monotonic()
        first = now + _LEAD_WAIT
        wait = _LEAD_WAIT
        if timeout and timeout > 0:
            deadline = now + timeout
            if deadline < first:
                first = deadline
                wait = timeout
            limit = deadline + self.unlink_grace
        else:
            deadline = limit = None
        if self._rd.rcvtimeo != wait:
            self._rd.arm(wait)
        return first, limit, deadline

    def _own_reply(self, seq: int, direction: int, dest: Optional[memoryview], length: int,
                   limit: Optional[float]) -> Optional[Tuple[int, int, int]]:
        """The leader's fast path (token held): if nothing is buffered, take one recv and, if it
        holds the RET_SUBMIT for ``seq`` (non-ISO, sane length), consume it, IN data into ``dest``
        and return (status, actual_length, error_count). Otherwise return None with whatever
        arrived left in the buffer for _read_one: no byte is consumed that is not ours."""
        rd = self._rd
        if rd.end != rd.start or rd.rcvtimeo is None:
            return None  # (no SO_RCVTIMEO: only _Reader's poll() before each recv bounds a wait)
        try:
            n = self.sock.recv_into(rd.view, _CHUNK)
        except (BlockingIOError, InterruptedError):
            return None  # SO_RCVTIMEO expired: _read_one waits out the rest
        if not n:
            raise EOFError
        rd.start = 0
        rd.end = n
        if n < _HEADER:
            return None
        command, rseq, _, _, _, status, actual, _, npackets, error_count = _RET_SUBMIT_UNPACK(rd.buf)
        if command != _RET_SUBMIT or rseq != seq or npackets or not 0 <= actual <= length:
            return None
        if not direction:
            rd.start = _HEADER
            return status, actual, error_count
        end = _HEADER + actual
        if end <= n:
            dest[:actual] = rd.view[_HEADER:end]
            rd.start = end
            return status, actual, error_count
        # A big reply: the rest goes straight into the caller's buffer.
        got = n - _HEADER
        dest[:got] = rd.view[_HEADER:n]
        rd.start = rd.end = 0
        recv_into = self.sock.recv_into
        try:
            while got < actual:
                k = recv_into(dest[got:actual], actual - got)
                if not k:
                    raise EOFError
                got += k
        except (BlockingIOError, InterruptedError):
            # SO_RCVTIMEO expired mid-reply: _Reader bounds the rest (bytes were flowing until
            # now, so the stall clock starts now).
            rd.first = None
            rd.limit = None if limit is None else max(limit, time.monotonic() + _MID_REPLY_STALL)
            rd.read_into(dest[got:actual])
        return status, actual, error_count

    def _lead(self, urb: Urb, timeout: Optional[float]) -> Optional[float]:
        """Read replies (token held) until ``urb`` completes, or no reply began before the
        caller's deadline or within _LEAD_WAIT (then the caller hands the reading over).
        Returns the deadline (time.monotonic(); None: no timeout)."""
        first, limit, deadline = self._lead_times(timeout)
        if urb.iso_packets is None:
            try:
                got = self._own_reply(urb.seqnum, urb.direction, urb.buffer, urb.length, limit)
            except BaseException as exc:
                self._fail_all(self._read_failed(exc))  # fails the URB too: it is still pending
                if not isinstance(exc, (ProtocolError, EOFError, OSError)):
                    raise
                return deadline
            if got is not None:
                self._pending.pop(urb.seqnum, None)  # (gone already if _fail_all ran meanwhile)
                status, urb.actual_length, urb.error_count = got
                if urb.direction:
                    urb.in_data = urb.buffer[:urb.actual_length]
                self._complete(urb, status)
        self._lead_loop(urb, first, limit)
        return deadline

    def _lead_loop(self, urb: Optional[Urb], first: float, limit: Optional[float]) -> None:
        """The general leader loop: read and dispatch replies until ``urb`` completes (or none
        began by ``first``: return with it pending), then what the last recv buffered."""
        rd = self._rd
        try:
            while urb is not None and urb.status is None:
                if not self._read_one(first, limit):
                    return
            # The recv that brought our reply may have brought replies to other URBs behind it.
            # The reader thread may be asleep in poll() on a socket that now looks empty (Linux
            # re-checks readiness after a wake-up), so dispatch them before giving up the token.
            while rd.end > rd.start:
                self._read_one(None, limit)
        except BaseException as exc:
            self._fail_all(self._read_failed(exc))
            if not isinstance(exc, (ProtocolError, EOFError, OSError)):
                raise

    def control_transfer(self, bmRequestType: int, bRequest: int, wValue: int = 0, wIndex: int = 0,
                         data_or_length=0, timeout: Optional[float] = None):
        """One control transfer: returns the bytes read (IN) or the count written (OUT)."""
        if bmRequestType & 0x80:
            buf = bytearray(int(data_or_length))
            setup = P.pack_setup(bmRequestType, bRequest, wValue, wIndex, len(buf))
            return bytes(buf[:self._count(_CONTROL, 0x80, setup, None, memoryview(buf), timeout)])
        data = bytes(data_or_length or b"")
        setup = P.pack_setup(bmRequestType, bRequest, wValue, wIndex, len(data))
        return self._count(_CONTROL, 0x00, setup, memoryview(data), None, timeout)

    def close(self) -> None:
        """Close the connection: fail pending URBs, join the reader thread, close the socket."""
        self._closing = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._need_reader.set()
        if self._reader is not threading.current_thread():
            self._reader.join()
        self._fail_all("connection closed")
        self.sock.close()

    def __enter__(self) -> "Connection":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"{len(self._pending)} URBs in flight"
        return f"<Connection {self.name} devid=0x{self.devid:08x} {state}>"

    # -- sending ----------------------------------------------------------------------------------
    def _next_seqnum(self) -> int:
        # uint32, wraps; 0 is skipped and so is any seqnum still in use (called under _send_lock).
        seq = self._seq
        while True:
            seq = (seq + 1) & 0xFFFFFFFF
            if seq and seq not in self._pending and seq not in self._unlinks and seq not in self._retired:
                self._seq = seq
                return seq

    def _send(self, parts: list) -> None:
        sock = self.sock
        if len(parts) == 1:
            sock.sendall(parts[0])
            return
        if not _HAVE_SENDMSG:
            for part in parts:
                sock.sendall(part)
            return
        # One syscall for header + payload; loop on partial sends without copying the payload.
        sent = sock.sendmsg(parts)
        total = 0
        for p in parts:
            total += len(p) if isinstance(p, bytes) else memoryview(p).nbytes
        if sent == total:
            return
        views = [memoryview(p).cast("B") for p in parts]
        while True:
            while views and sent >= views[0].nbytes:
                sent -= views[0].nbytes
                views.pop(0)
            if not views:
                return
            if sent:
                views[0] = views[0][sent:]
            sent = sock.sendmsg(views[:_IOV_MAX])

    def _send_unlink(self, urb: Urb) -> Optional[int]:
        hook = self.hook
        with self._send_lock:
            if urb.status is not None or self._lost is not None:
                return None
            if urb._unlink_seqnum:
                return urb._unlink_seqnum
            seq = self._next_seqnum()
            urb._unlink_seqnum = seq
            self._unlinks[seq] = urb
            # Before the send, as urb_submitted: once CMD_UNLINK is out, the RET_UNLINK (and
            # the URB's completion) may be read at once, and a capture must see the unlink first.
            if hook is not None:
                self._call_hook(hook.urb_unlink_sent, urb, seq)
            try:
                self.sock.sendall(_UNLINK_PACK(P.USBIP_CMD_UNLINK, seq, self.devid, urb.direction,
                                               urb.endpoint & 0x0F, urb.seqnum))
                failure = None
            except OSError as exc:
                failure = exc
        if failure is not None:
            self._fail_all(f"send failed: {failure}")  # outside the send lock, which it takes
            return None
        self._need_reader.set()  # the RET_UNLINK must be read by someone
        return seq

    def _timed_out(self, urb: Urb) -> None:
        """The caller's timeout expired: unlink, wait a bounded grace for the verdict."""
        self._send_unlink(urb)
        if urb._done.acquire(True, self.unlink_grace):
            urb._done.release()
            return
        # No verdict in time (a stub may hold a status-0 RET_UNLINK back). Give up on the URB
        # without closing the socket. Retire it first, then take it out of the pending table: of
        # this thread and the reader, exactly one gets it out of _pending (dict.pop is atomic).
        seq = urb.seqnum
        self._retire(seq, urb)
        if self._pending.pop(seq, None) is None:
            # The reader got there first and is receiving the reply right now; let it finish.
            self._retired.pop(seq, None)
            if urb._done.acquire(True, self.unlink_grace):
                urb._done.release()
                return
        _log.debug("%s: URB %d abandoned after its timeout; a late reply will be dropped", self.name, seq)
        raise UsbipTimeoutError(
            f"URB {seq} to endpoint 0x{urb.endpoint:02x} of {self.name} timed out "
            f"(CMD_UNLINK sent, no answer within {self.unlink_grace:.3f} s)",
            transferred=0,
        )

    def _retire(self, seq: int, urb: Urb, limit: int = 1024) -> None:
        self._retired[seq] = urb
        while len(self._retired) > limit:
            self._retired.popitem(last=False)


    # -- completion -------------------------------------------------------------------------------
    def _complete(self, urb: Urb, status: int, error: Optional[BaseException] = None) -> None:
        if urb.status is not None:
            return
        urb._error = error
        urb.complete_time = time.time()
        urb.status = status
        hook = self.hook
        if hook is not None:
            self._call_hook(hook.urb_completed, urb)
        urb._done.release()

    def _fail_all(self, reason: str) -> ConnectionLostError:
        """Mark the connection lost and fail every pending URB at once."""
        with self._send_lock:
            if self._lost is None:
                self._lost = ConnectionLostError(f"{self.name}: connection lost ({reason})")
                if not self._closing:
                    _log.warning("%s", self._lost)
            lost = self._lost
            victims = list(self._pending.values())
            if self._receiving is not None:
                victims.append(self._receiving)
            self._pending.clear()
            victims += [u for u in self._unlinks.values() if u not in victims]
            victims += [u for u in self._retired.values() if u not in victims]
            self._unlinks.clear()
            self._retired.clear()
        for urb in victims:
            if urb.status is None:
                self._complete(urb, ESHUTDOWN, lost)
        self._need_reader.set()  # let the reader thread see the loss and end
        return lost

    def _call_hook(self, fn: Callable, *args) -> None:
        try:
            fn(*args)
        except Exception:  # a broken observer must never break USB traffic
            _log.exception("%s: capture hook %r failed", self.name, fn)

    # -- reader thread ----------------------------------------------------------------------------
    def _read_failed(self, exc: BaseException) -> str:
        """Why reading stopped, for _fail_all (a protocol error also shuts the socket)."""
        if self._closing:
            return "closed"
        if isinstance(exc, ProtocolError):
            _log.error("%s: %s; closing the connection", self.name, exc)
            try:
                self.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return f"protocol error: {exc}"
        if isinstance(exc, EOFError):
            return "server closed the connection"
        if isinstance(exc, OSError):
            return str(exc) or type(exc).__name__
        return f"{type(exc).__name__}: {exc}"

    def _unled(self) -> bool:
        """Are replies owed that no leader is reading for? (benign unlocked reads)"""
        return len(self._pending) + len(self._unlinks) > self._led

    def _read_loop(self) -> None:
        reason = "closed"
        need, token, rd = self._need_reader, self._token, self._rd
        # Its own poll object: this thread polls without the token while a leader may be polling
        # through rd.poll, and one select.poll object refuses concurrent poll() calls.
        poll = None
        if rd.poll is not None:
            poll = select.poll()
            poll.register(self.sock.fileno(), select.POLLIN | select.POLLPRI)
        try:
            while not self._closing and self._lost is None:
                self._reader_idle = True
                if not self._unled():
                    need.wait()
                need.clear()
                self._reader_idle = False
                while self._unled() and not self._closing and self._lost is None:
                    if poll is None:
                        # No poll(): read replies back to back, blocking, with the token.
                        with token:
                            self._read_one(None, None)
                        continue
                    if rd.end == rd.start:
                        # Wait for bytes *without* the token, so that a transfer() may lead (read
                        # its own reply) meanwhile. close() shuts the socket down, which wakes us.
                        poll.poll()
                    if not token.acquire(False):
                        # A leader is reading: it dispatches whatever arrives while it leads,
                        # very likely what woke us. Look again a little later instead of
                        # queueing on the token, which would wake us again the moment the
                        # leader lets go, in the middle of its caller's next transfer.
                        need.wait(_READER_BACKOFF)
                        need.clear()
                        continue
                    try:
                        # Read what is there (a burst of pipelined replies in one go); nothing
                        # there means a leader read what woke us.
                        while (rd.end > rd.start or poll.poll(0)) and self._unled() and not self._closing:
                            self._read_one(None, None)
                    finally:
                        token.release()
        except BaseException as exc:
            reason = self._read_failed(exc)
        finally:
            self._fail_all(reason)

    def _read_one(self, first: Optional[float], limit: Optional[float]) -> bool:
        """Read and dispatch one reply (the caller holds the token).

        ``first``: return False if this time.monotonic() deadline passes before the reply's first
        byte (nothing consumed). ``limit``: once a reply has begun, it is read to the end, each
        wait for more bytes bounded by it (ProtocolError beyond). None: block.
        """
        rd = self._rd
        header = self._header
        rd.first = first if rd.end == rd.start else None
        rd.limit = limit
        try:
            rd.read_into(self._hview)
        except _NoReply:
            return False
        pending = self._pending
        retired = self._retired
        # One unpack serves both replies: RET_UNLINK's status sits where RET_SUBMIT's does.
        (command, seq, _, _, _, status, actual, start_frame, npackets,
         error_count) = _RET_SUBMIT_UNPACK(header)
        if command == _RET_SUBMIT:
            urb = pending.pop(seq, None)
            if urb is not None:
                if (npackets or urb.iso_packets is not None or not urb.direction
                        or actual < 0 or actual > urb.length):
                    # ISO, OUT, or a bad length (raises): the general path.
                    self._receiving = urb
                    self._receive_submit(rd, urb, urb.buffer, status, actual, start_frame, npackets,
                                         error_count)
                    self._receiving = None
                    return True
                # Fast path, non-ISO IN (what _receive_submit does for it).
                self._receiving = urb
                urb.actual_length = actual
                urb.error_count = error_count
                dest = urb.buffer
                if actual:
                    rd.read_into(dest[:actual])
                urb.in_data = dest[:actual]
                self._receiving = None
                self._complete(urb, status)
                return True
            urb = self._receiving = retired.pop(seq, None)
            if urb is None:
                # vhci_rx treats this as fatal too: we cannot know how many bytes follow.
                raise ProtocolError(f"RET_SUBMIT for unknown seqnum {seq}")
            # A late reply to a URB the caller gave up on: read it into scratch, drop it.
            scratch = memoryview(bytearray(urb.length)) if urb.direction else None
            self._receive_submit(rd, urb, scratch, status, actual, start_frame, npackets, error_count)
            self._receiving = None
            _log.warning("%s: late reply to abandoned URB %d dropped (status %d, %d bytes)",
                         self.name, seq, status, actual if urb.direction else 0)
        elif command == _RET_UNLINK:
            urb = self._unlinks.pop(seq, None)
            if urb is None:
                _log.warning("%s: RET_UNLINK for unknown seqnum %d ignored", self.name, seq)
                return True
            if self.hook is not None:
                self._call_hook(self.hook.urb_unlink_returned, urb, seq, status)
            if status != 0:
                # Cancelled (-ECONNRESET from the kernel): per "USBIP_RET_UNLINK" no
                # RET_SUBMIT follows. Keep the seqnum retired in case a server sends one
                # anyway, so its bytes are dropped instead of breaking the stream.
                if pending.pop(urb.seqnum, None) is not None or retired.get(urb.seqnum) is urb:
                    self._retire(urb.seqnum, urb)
                    self._complete(urb, status)
            # status 0: the URB completed before the unlink; its RET_SUBMIT is delivered
            # (or was already) by the RET_SUBMIT branch.
        else:
            raise ProtocolError(f"unexpected command 0x{command:08x} from server (seqnum {seq})")
        return True

    def _receive_submit(self, rd: "_Reader", urb: Urb, dest: Optional[memoryview], status: int, actual: int,
                        start_frame: int, npackets: int, error_count: int) -> None:
        if actual < 0 or actual > urb.length:
            raise ProtocolError(
                f"RET_SUBMIT seqnum {urb.seqnum}: actual_length {actual} outside 0..{urb.length}"
            )
        urb.actual_length = actual
        urb.error_count = error_count
        iso = urb.iso_packets
        if urb.direction and actual:
            rd.read_into(dest[:actual])
        if iso is not None:
            if npackets != len(iso):
                # The kernel's usbip_recv_iso checks this too.
                raise ProtocolError(
                    f"RET_SUBMIT seqnum {urb.seqnum}: {npackets} ISO descriptors, {len(iso)} were sent"
                )
            raw = bytearray(npackets * P.ISO_PACKET_SIZE)
            rd.read_into(memoryview(raw))
            results = [P.IsoPacket(*_ISO_UNPACK(raw, i * P.ISO_PACKET_SIZE)) for i in range(npackets)]
            for req, res in zip(iso, results):
                if res.actual_length > req.length:
                    raise ProtocolError(f"ISO packet actual_length {res.actual_length} > length {req.length}")
            urb.iso_results = results
            urb.start_frame = start_frame
            if urb.direction:
                _spread_iso_in(dest, iso, results, actual)
        if urb.direction:
            urb.in_data = dest[: (urb.length if iso is not None else actual)]
        self._complete(urb, status)


def _spread_iso_in(buf: memoryview, requested: List[P.IsoPacket], results: List[P.IsoPacket], packed: int) -> None:
    """ISO IN data arrives back to back (only actual lengths); move each packet to its offset.

    Same as the kernel's usbip_pad_iso(): walk from the last packet so nothing is overwritten.
    """
    total = sum(r.actual_length for r in results)
    if total != packed:
        raise ProtocolError(f"ISO IN: descriptors account for {total} bytes, {packed} were sent")
    pos = packed
    for req, res in zip(reversed(requested), reversed(results)):
        pos -= res.actual_length
        if res.actual_length and pos != req.offset:
            buf[req.offset: req.offset + res.actual_length] = bytes(buf[pos: pos + res.actual_length])


class _NoReply(Exception):
    """A leader's deadline passed before the next reply's first byte (nothing was consumed)."""


_TIMEVAL = struct.Struct("@ll")  # struct timeval for SO_RCVTIMEO (Linux, BSD, macOS)
_RCVTIMEO_MARGIN_US = 10000
#: Once a reply has begun, how long it may stop moving past the caller's deadline before the
#: server is taken as broken (ProtocolError: the stream cannot be resynchronised).
_MID_REPLY_STALL = 2.0
#: How long a transfer() caller reads the socket itself waiting for its reply before it hands the
#: reading to the reader thread and waits as a follower: a URB that stays pending (a bulk IN
#: waiting for data) must not keep other threads' transfers from leading.
_LEAD_WAIT = 0.02
#: How long the reader thread waits before looking at the socket again when bytes woke it but a
#: leader holds the read token (the leader dispatches what arrives while it leads; this bounds
#: how late a reply that arrives just after the leader let go is read).
_READER_BACKOFF = 0.001
#: Most a buffered recv asks for: one reply header plus a small payload (or many small pipelined
#: replies). Larger payloads then go straight into the caller's buffer instead of being copied.
_CHUNK = 4096


class _Reader:
    """Buffered exact reads: small replies come out of one recv, big ones go straight to the
    caller's buffer (no copy through an intermediate buffer).

    Deadlines (time.monotonic() values) for a leader: ``first`` bounds the wait for the first
    byte of a reply (then :class:`_NoReply`), ``limit`` every later wait inside it (then
    ProtocolError: the server stalled in the middle of a reply). Both None: block.

    A timed wait is a plain blocking recv with the kernel's SO_RCVTIMEO set to the caller's
    timeout (set once, cached: PyUSB passes the same timeout every time), so waiting for a reply
    costs one syscall, as in the raw floor; an expired SO_RCVTIMEO shows as EAGAIN and is checked
    against the deadlines here. Where SO_RCVTIMEO cannot be set, poll() before each recv instead.
    """

    __slots__ = ("sock", "buf", "view", "start", "end", "first", "limit", "rcvtimeo", "poll")

    def __init__(self, sock: socket.socket, size: int = 65536) -> None:
        self.sock = sock
        self.buf = bytearray(size)
        self.view = memoryview(self.buf)
        self.start = 0
        self.end = 0
        self.first: Optional[float] = None
        self.limit: Optional[float] = None
        self.rcvtimeo: Optional[float] = 0.0  # seconds asked for; 0 = none; None = cannot set it
        self.poll = None
        if _HAVE_POLL:
            self.poll = select.poll()
            self.poll.register(sock.fileno(), select.POLLIN | select.POLLPRI)
        if not _HAVE_RCVTIMEO:
            self.rcvtimeo = None
            return
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, _TIMEVAL.pack(0, 0))
        except (OSError, AttributeError, struct.error):
            self.rcvtimeo = None

    @property
    def can_time(self) -> bool:
        return self.rcvtimeo is not None or self.poll is not None

    def arm(self, seconds: float) -> None:
        """Make a blocking recv give up after about ``seconds`` (no syscall if already so).

        The kernel counts SO_RCVTIMEO in scheduler ticks and wakes up to a tick or two late, so it
        is set a little short; the last stretch is waited with poll(), which is precise.
        """
        armed = self.rcvtimeo
        if armed is None or armed == seconds:
            return
        # Callers pass "time left" (slightly different every call) or alternate timeouts. An
        # armed value a little longer than asked is still safe (it is armed
        # _RCVTIMEO_MARGIN_US short); a shorter one only costs a wait that outlasts it one early
        # wake-up and a poll() for the rest. Re-arm only outside that band, so the steady state
        # has no setsockopt per URB.
        if seconds and armed and armed - 0.005 <= seconds <= 8 * armed:
            return
        usec = int(seconds * 1e6)
        if seconds:
            usec = max(usec - min(_RCVTIMEO_MARGIN_US, usec // 2), 1000)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, _TIMEVAL.pack(usec // 1000000, usec % 1000000))
        self.rcvtimeo = seconds

    def _expired(self) -> None:
        """A recv gave up (EAGAIN): re-arm for the time left, or raise if a deadline passed."""
        bound = self.first if self.first is not None else self.limit
        if bound is None:
            # An untimed read met a leader's SO_RCVTIMEO: block without a limit from now on.
            self.arm(0.0)
            return
        left = bound - time.monotonic()
        if left > 0:
            if self.poll is None:
                self.arm(left)
                return
            if self.poll.poll(int(left * 1000) + 1):
                return  # readable (or closed): the next recv returns at once
        if self.first is not None:
            raise _NoReply()
        raise ProtocolError("the server stalled in the middle of a reply")

    def _recv(self, dest: memoryview, size: int) -> int:
        while True:
            bound = self.first if self.first is not None else self.limit
            if self.rcvtimeo is None and self.poll is not None and bound is not None:
                left = bound - time.monotonic()
                if left <= 0 or not self.poll.poll(int(left * 1000) + 1):
                    if self.first is not None:
                        raise _NoReply()
                    raise ProtocolError("the server stalled in the middle of a reply")
            try:
                n = self.sock.recv_into(dest, size)
            except (BlockingIOError, InterruptedError):
                self._expired()
                continue
            self.first = None
            if self.limit is not None and n:
                # Bytes are flowing: a slow link (WiFi to a bridge, a big reply) is not a stalled
                # server. Only a reply that stops moving for _MID_REPLY_STALL s past the
                # caller's deadline is taken as broken.
                self.limit = max(self.limit, time.monotonic() + _MID_REPLY_STALL)
            return n

    def read_into(self, dest: memoryview) -> None:
        need = dest.nbytes
        have = self.end - self.start
        if have >= need:
            dest[:] = self.view[self.start: self.start + need]
            self.start += need
            return
        if have:
            dest[:have] = self.view[self.start: self.end]
        self.start = self.end = 0
        got = have
        recv = self._recv
        if need - got >= 4096:
            # Large remainder: receive directly into the destination.
            while got < need:
                n = recv(dest[got:], need - got)
                if not n:
                    raise EOFError
                got += n
            return
        view = self.view
        while got < need:
            n = recv(view, _CHUNK)
            if not n:
                raise EOFError
            take = min(n, need - got)
            dest[got: got + take] = view[:take]
            got += take
            self.start, self.end = take, n
