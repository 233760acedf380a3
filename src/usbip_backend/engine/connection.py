"""The connection: one imported device's socket, who reads it, who sends on it, and the timers.

Sending. One message at a time goes on the wire under the sender's lock. CMD_SUBMITs are sent by
the submitting thread (blocking: a big OUT payload takes as long as it takes). CMD_UNLINKs never
wait for that lock: :meth:`Urb.cancel` and timers post them, and whoever holds the socket sends
them right after its own message, or the reader thread sends them when the socket can take them
(see :class:`_Sender`). So cancelling from an event loop, or from the reader thread, never blocks.

Reading. Handing every reply from a reader thread to the waiting caller costs two thread
wake-ups per URB, which dominates synchronous round trips (PyUSB does one transfer at a time).
So the socket is read by whoever holds the *read token*:

* a synchronous caller (:meth:`Connection.transfer`, :meth:`Connection.sync_transfer`,
  :meth:`Urb.wait`) that finds the token free *leads*: it reads replies itself until its own
  URB is done, completing any other URB whose reply comes first. One wake-up per URB;
* a leader whose reply has not begun within ``_LEAD_WAIT`` (a bulk IN waiting for data) gives
  the token back and waits as a *follower*, so a long wait never keeps other threads from
  leading their own short transfers; a caller that finds the token taken is a follower too;
* the reader thread reads the replies no leader reads for (asynchronous submits, unlinks,
  followers). It waits in poll() *without* the token, so a caller may lead meanwhile; when it
  finds a caller leading, or one that led since it last looked (a pipelining ``wait()`` loop), it
  looks again ``_READER_BACKOFF`` later (twice that while the caller keeps at it, up to
  ``_READER_BACKOFF_MOST``) rather than take the token between that caller's calls;
* the PyUSB backend's calls take a lane (:meth:`Connection.sync_transfer`) that builds no
  :class:`Urb` unless something unusual happens: one send, one recv (a scatter recv for a big IN
  reply: header into the buffer, data straight into the caller's), the count returned;
* whoever reads, with several IN replies owed (a pipeline, a stream's window), receives them
  straight into their URBs' buffers on the guess that they come in submission order
  (:meth:`Connection._take_scattered`); what breaks the guess is dispatched from the buffer.

Time. The reader thread owns the engine's clock: the table's deadlines (:mod:`.table`) it
sleeps on. A URB submitted with a timeout is unlinked at its deadline; every unlink has a grace
(``2 x RTO`` of the measured round-trip time, see :class:`~.table.RttEstimator`), counted from
when the CMD_UNLINK is on the wire, after which a URB the server never answers for is given up,
so every URB ends. A reply that has begun is read
to its end while bytes keep coming, each wait for more bounded by the *stall* time; a server that
stops in the middle of a reply fails the connection with a clear error (the stream cannot be
resynchronised). Synchronous waiters time themselves (a leader's receive timeout, a follower's
lock timeout) and need no heap entry.

Completion. Every transition of a URB's state happens under ``Connection._lock`` (the table's
lock), so exactly one thread ends each URB; that thread then runs the capture hook, the URB's done
callbacks, and wakes its waiters, in that order, outside the lock.

Transport. All of the above (SO_RCVTIMEO, sendmsg, MSG_DONTWAIT, poll() on the descriptor, an
event loop's add_reader) assumes a kernel stream socket, and gets one: :mod:`.transport` relays
TLS and any other socket-like transport through a socketpair (:func:`.transport.engine_socket`,
called by the constructor), the one place that decides.
"""

from __future__ import annotations

import array
import logging
import math
import select
import socket
import struct
import sys
import threading
import time
from collections import deque
from typing import Any, Callable, Deque, Iterable, List, Optional, Sequence, Tuple, Union

from .. import protocol as P
from ..errors import ConnectionLostError, ProtocolError
from ..hooks import UrbHook
from .table import DEADLINE, GRACE, Retired, RttEstimator, UrbTable, retired_skip
from .transport import SocketLike, closed_reason, engine_socket
from .urb import DoneCallback, EndedBy, Urb, UrbState, lost_error

_log = logging.getLogger("usbip_backend.engine")

_HAVE_SENDMSG = hasattr(socket.socket, "sendmsg")
_HAVE_RECVMSG = hasattr(socket.socket, "recvmsg_into")
try:  # how many bytes a socket holds (Linux, BSD, macOS), to size an in-place recv to them
    import fcntl
    import termios
    _FIONREAD: Optional[int] = termios.FIONREAD
except (ImportError, AttributeError):
    _FIONREAD = None
_HAVE_SCATTER = _HAVE_RECVMSG and hasattr(socket, "MSG_DONTWAIT") and _FIONREAD is not None
_HAVE_POLL = hasattr(select, "poll")
#: Windows takes SO_RCVTIMEO as a DWORD of milliseconds, not a timeval, and leaves a socket whose
#: receive timed out in an indeterminate state, so it is not used there: leaders wait for
#: readability with select() before each recv instead.
_HAVE_RCVTIMEO = sys.platform != "win32"
#: Non-blocking sends of CMD_UNLINK on a blocking socket (not on Windows, where they block).
_HAVE_DONTWAIT = hasattr(socket, "MSG_DONTWAIT")
_IOV_MAX = 1024

#: Largest transfer_buffer_length a URB may ask for. The kernel warns and drops the connection
#: on absurd lengths (PROTOCOL-NOTES, "Hostile or broken input"); we refuse before sending.
MAX_URB_LENGTH = 64 * 1024 * 1024

_SUBMIT_PACK = P.CMD_SUBMIT_STRUCT.pack
_UNLINK_PACK = P.CMD_UNLINK_STRUCT.pack
_RET_SUBMIT_UNPACK = P.RET_SUBMIT_STRUCT.unpack_from
_ISO_UNPACK = P.ISO_PACKET_STRUCT.unpack_from
# Hot-path constants (one global lookup instead of module + attribute lookups per URB).
_CONTROL = P.TransferType.CONTROL
_ISOCHRONOUS = P.TransferType.ISOCHRONOUS
_PERIODIC = (P.TransferType.INTERRUPT, P.TransferType.ISOCHRONOUS)
_CMD_SUBMIT = P.USBIP_CMD_SUBMIT
_CMD_UNLINK = P.USBIP_CMD_UNLINK
_URB_DIR_IN = P.USBIP_URB_DIR_IN
_NO_SETUP = bytes(8)
_RET_SUBMIT = P.USBIP_RET_SUBMIT
_RET_UNLINK = P.USBIP_RET_UNLINK
_HEADER = P.URB_HEADER_SIZE
_NEW, _PENDING, _DONE = UrbState.NEW, UrbState.PENDING, UrbState.DONE
_monotonic = time.monotonic
_time = time.time
_INF = math.inf

#: How long a synchronous caller reads the socket itself waiting for its reply before it hands
#: the reading to the reader thread and waits as a follower: a URB that stays pending (a bulk IN
#: waiting for data) must not keep other threads' transfers from leading.
_LEAD_WAIT = 0.02
#: How long the reader thread waits before looking at the socket again when a leader holds the
#: read token (the leader dispatches what arrives while it leads; this bounds how late a reply
#: that arrives just after the leader let go is read). It doubles, up to the most below, each
#: time the reader finds the leader still at it (a pipelining loop, a handleEvents pump): every
#: wake-up of the reader takes the GIL from that loop, which measurably slows it.
_READER_BACKOFF = 0.001
_READER_BACKOFF_MOST = 0.004
#: How long the reader thread, idle while a caller holds the read token (a synchronous transfer
#: that builds no URB), waits before it watches the socket for a hang-up again.
_IDLE_RECHECK = 0.25
#: Most one non-blocking send hands the kernel. On loopback with a fast reader a single
#: sendmsg can go on copying tens of MiB while space keeps freeing up; an event loop calling it
#: must get control back within a millisecond or so. The rest goes on when the socket is writable.
_SEND_SLICE = 1 << 20
#: Most a buffered recv asks for: one reply header plus a small payload (or many small pipelined
#: replies). Larger payloads then go straight into the caller's buffer instead of being copied.
_CHUNK = 4096
#: The read buffer once several replies are owed (pipelining), and what a buffered recv then
#: asks for: room for a window of 16 KiB replies, so a recv takes whole replies (one begun at
#: the end of the buffer costs a second lock hold and a recv).
_BATCH_BUF = _HEADER + 262144
#: Replies received in place (Connection._take_scattered): the smallest IN URB worth it (below,
#: the copy out of the read buffer costs less than the buffer slot in the recv), and the most
#: URBs one recv follows (two iovec entries each; IOV_MAX is 1024).
_SCATTER_MIN = 4096
_SCATTER_MAX = 64
#: ... and the most bytes it asks for: what a guess gone wrong moves to the read buffer.
_SCATTER_BYTES = 1 << 20
#: Rounds without receiving in place after replies came in another order than guessed
#: (doubling each time it happens again, up to the most; one round as guessed resets it).
_SCATTER_BACKOFF = 4
_SCATTER_BACKOFF_MOST = 256
_TIMEVAL = struct.Struct("@ll")  # struct timeval for SO_RCVTIMEO (Linux, BSD, macOS)
#: Set while a thread runs a done callback (the URB it was called for).
_in_callback = threading.local()
_RCVTIMEO_MARGIN_US = 10000

Buffer = Union[bytes, bytearray, memoryview, Any]


def _direction(transfer_type: P.TransferType, endpoint: int, setup: Optional[bytes],
               interval: int) -> Tuple[int, int]:
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


def _check_length(direction: int, view: memoryview) -> int:
    """The URB length of a flat byte view, refused if the wire must not carry it."""
    if direction and view.readonly:
        raise ValueError("the IN buffer must be writable")
    length = view.nbytes
    if length > MAX_URB_LENGTH:
        raise ValueError(f"URB length {length} outside 0..{MAX_URB_LENGTH}")
    return length


def flat(data: Buffer) -> memoryview:
    """A flat byte view of any buffer (array('B'), bytes and bytearray need no cast)."""
    view = memoryview(data)
    if view.format != "B" or view.ndim != 1:
        view = view.cast("B")
    return view


class _NoReply(Exception):
    """A leader's deadline passed before the next reply's first byte (nothing was consumed)."""


class _Stalled(ProtocolError):
    """The server stopped sending in the middle of a reply."""


#: A message queued to send: a lone header, or (its buffers, called once it is all on its way).
_Message = Union[bytes, Tuple[List[Any], Optional[Callable[[], None]]]]


class _Sender:
    """One message at a time on the socket.

    ``lock`` is held while a message is on its way. Blocking senders (the submitting thread)
    take it, send, then send whatever messages were queued meanwhile. :meth:`post` never
    blocks: it queues a message and sends it only if it can take the lock at once and the
    socket accepts it without waiting (MSG_DONTWAIT). A message the socket takes only in part is
    finished by the reader thread when the socket becomes writable (:meth:`resume`); the lock
    stays held meanwhile (a ``threading.Lock`` may be released by another thread), so nothing
    can interleave with it. A message is a list of buffers sent as one (a CMD_SUBMIT header
    with its OUT payload, never split by another message), and may come with a callback,
    called once it is all on its way (an unlink's grace starts then, not while it waited behind
    a big OUT payload).
    """

    __slots__ = ("sock", "lock", "queue", "tail", "tail_sent", "on_stuck")

    def __init__(self, sock: socket.socket, on_stuck: Callable[[], None]) -> None:
        self.sock = sock
        self.lock = threading.Lock()
        self.queue: Deque[_Message] = deque()
        self.tail: Optional[List[Any]] = None  # rest of a message sent in part (buffers); lock held
        self.tail_sent: Optional[Callable[[], None]] = None
        self.on_stuck = on_stuck

    def sendmsg(self, parts: List[Any]) -> None:
        """Send one message made of ``parts`` (lock held): one syscall for header + payload,
        looping on partial sends without copying the payload."""
        sock = self.sock
        if not _HAVE_SENDMSG:
            for part in parts:
                sock.sendall(part)
            return
        sent = sock.sendmsg(parts)
        total = 0
        for p in parts:
            total += len(p) if isinstance(p, bytes) else memoryview(p).nbytes
        if sent == total:
            return
        views = [memoryview(p).cast("B") for p in parts]
        while True:
            views = _advance(views, sent)
            if not views:
                return
            sent = sock.sendmsg(views[:_IOV_MAX])

    def flush_locked(self) -> None:
        """Send the queued messages, blocking (lock held, no tail)."""
        queue = self.queue
        while queue:
            parts, sent = _message_parts(queue.popleft())
            self.sendmsg(parts)
            if sent is not None:
                sent()

    def post(self, message: Union[bytes, List[Any]], sent: Optional[Callable[[], None]] = None) -> None:
        """Queue a message (bytes, or a list of buffers sent as one) and send it if that needs no
        waiting (any thread); ``sent`` is called (by whichever thread sends it) once it is all on
        its way."""
        if sent is None and type(message) is bytes:
            self.queue.append(message)
        else:
            self.queue.append(([message] if isinstance(message, bytes) else message, sent))
        self.kick()

    def push(self, parts: List[Any], total: int) -> None:
        """Send one message of ``total`` bytes (at most ``_SEND_SLICE``) at once, as ``post`` and
        ``kick`` would, without the queue when nothing waits in it and the lock is free (most
        submits from an event loop). What the socket does not take becomes the tail.

        Raises:
            OSError: the socket failed (the caller fails the connection).
        """
        if self.queue or not _HAVE_DONTWAIT or not self.lock.acquire(False):
            self.queue.append((parts, None))
            self.kick()
            return
        stuck = False
        try:
            try:
                if len(parts) == 1:
                    n = self.sock.send(parts[0], socket.MSG_DONTWAIT)
                else:
                    n = self.sock.sendmsg(parts, [], socket.MSG_DONTWAIT)
            except BlockingIOError:
                n = 0
            if n < total:
                self.tail = _advance([memoryview(v).cast("B") for v in parts], n)
                self.tail_sent = None
                stuck = True
        finally:
            if not stuck:
                self.lock.release()
        if stuck:
            self.on_stuck()
        elif self.queue:
            self.kick()  # queued by another thread while the lock was held

    def kick(self) -> None:
        """Send queued messages if the lock is free; never blocks (except on Windows).

        Raises:
            OSError: the socket failed (the caller fails the connection).
        """
        while self.queue and self.lock.acquire(False):
            stuck = False
            try:
                stuck = self._flush_nonblocking()
            finally:
                if not stuck:
                    self.lock.release()
            if stuck:
                self.on_stuck()
                return

    def resume(self) -> None:
        """The socket is writable again: go on with a message sent in part (reader thread)."""
        if self.tail is None:
            return
        try:
            stuck = self._flush_nonblocking()
        except BaseException:
            self.tail = self.tail_sent = None
            self.queue.clear()
            self.lock.release()
            raise
        if not stuck:
            self.lock.release()
            self.kick()

    def abandon(self) -> None:
        """The connection is gone: let go of a lock held for a message sent in part."""
        if self.tail is not None:
            self.tail = self.tail_sent = None
            self.queue.clear()
            self.lock.release()

    def _flush_nonblocking(self) -> bool:
        """Send the tail and the queue without waiting, queued messages together in one
        sendmsg; True if the socket is full (the rest kept as the tail and in the queue)."""
        sock, queue = self.sock, self.queue
        while True:
            batch: List[_Message]  # as queued, those with several parts as (their views, sent)
            every: List[Any] = []  # the batch's buffers, in order
            total = 0
            callbacks = False  # whether a message of the batch has a ``sent``
            if self.tail is not None:
                batch = [(self.tail, self.tail_sent)]
                every = self.tail
                total = sum(_nbytes(v) for v in every)
                callbacks = self.tail_sent is not None
                self.tail = self.tail_sent = None
            elif queue:
                batch = []
                parts = 0
                while queue and parts < _IOV_MAX - 3:
                    message = queue.popleft()
                    if isinstance(message, bytes):  # a lone CMD_SUBMIT or CMD_UNLINK header (most are)
                        batch.append(message)
                        every.append(message)
                        total += len(message)
                        parts += 1
                        continue
                    buffers, sent = message
                    views = [m if type(m) is bytes else memoryview(m).cast("B") for m in buffers]
                    total += sum(_nbytes(v) for v in views)
                    batch.append((views, sent))
                    every += views
                    parts += len(views)
                    callbacks = callbacks or sent is not None
            else:
                return False
            if not _HAVE_DONTWAIT:
                for message in batch:
                    views, sent = _message_parts(message)
                    for view in views:
                        sock.sendall(view)
                    if sent is not None:
                        sent()
                continue
            flat_views = every if total <= _SEND_SLICE else _head(every, _SEND_SLICE)
            try:
                if len(flat_views) == 1:
                    n = sock.send(flat_views[0], socket.MSG_DONTWAIT)
                else:
                    n = sock.sendmsg(flat_views, [], socket.MSG_DONTWAIT)
            except BlockingIOError:
                n = 0
            if n >= total:  # all of it went (the usual case): no message to split
                if callbacks:
                    for message in batch:
                        sent = _message_parts(message)[1]
                        if sent is not None:
                            sent()
                continue
            for i, message in enumerate(batch):
                views, sent = _message_parts(message)
                size = sum(_nbytes(v) for v in views)
                if n >= size:
                    n -= size
                    if sent is not None:
                        sent()
                    continue
                # This message went out in part (or not at all): it becomes the tail, the
                # messages after it go back to the head of the queue, in order.
                self.tail = _advance([memoryview(v) if type(v) is bytes else v for v in views], n)
                self.tail_sent = sent
                for later in reversed(batch[i + 1:]):
                    queue.appendleft(later)
                return True


def _head(views: List[Any], limit: int) -> List[Any]:
    """The first ``limit`` bytes of ``views`` (the views themselves when they hold no more)."""
    out: List[Any] = []
    left = limit
    for v in views:
        size = _nbytes(v)
        if size >= left:
            out.append(v if size == left else memoryview(v)[:left])
            return out
        out.append(v)
        left -= size
    return out


def _message_parts(message: _Message) -> Tuple[List[Any], Optional[Callable[[], None]]]:
    """A queued message as (its buffers, its ``sent`` callback)."""
    if isinstance(message, bytes):
        return [message], None
    return message


def _nbytes(buf: Any) -> int:
    return len(buf) if type(buf) is bytes else int(buf.nbytes)


def _advance(views: List[Any], sent: int) -> List[Any]:
    """What is left of ``views`` once ``sent`` bytes of them went out."""
    i = 0
    while i < len(views) and sent >= views[i].nbytes:
        sent -= views[i].nbytes
        i += 1
    rest = views[i:]
    if rest and sent:
        rest[0] = rest[0][sent:]
    return rest


class _Poller:
    """The reader thread's wait: for its wake-up socket, and for the connection's socket to be
    readable (``read``) or writable (``write``). poll() where it exists, else select()."""

    _IN = select.POLLIN | select.POLLPRI if _HAVE_POLL else 0
    _READY = select.POLLIN | select.POLLPRI | select.POLLHUP | select.POLLERR | select.POLLNVAL if _HAVE_POLL else 0
    _OUT = select.POLLOUT | select.POLLHUP | select.POLLERR if _HAVE_POLL else 0

    def __init__(self, sock: socket.socket, wake: socket.socket) -> None:
        self.sock = sock
        self.wake = wake
        self._fd = sock.fileno()
        self._poll: Any = None
        self._mask = 0  # what sock is registered for
        if _HAVE_POLL:
            self._poll = select.poll()
            self._poll.register(wake.fileno(), self._IN)

    def wait(self, read: bool, write: bool, timeout: Optional[float]) -> Tuple[bool, bool, bool]:
        """(sock readable, sock writable, woken); ``timeout`` None waits forever."""
        poll = self._poll
        if poll is None:
            rl = [self.wake, self.sock] if read else [self.wake]
            r, w, x = select.select(rl, [self.sock] if write else [], rl, timeout)
            ready = set(r) | set(x)
            return self.sock in ready, bool(w), self.wake in ready
        mask = (self._IN if read else 0) | (select.POLLOUT if write else 0)
        if mask != self._mask:
            if mask:
                poll.register(self._fd, mask)
            else:
                poll.unregister(self._fd)
            self._mask = mask
        readable = writable = woken = False
        for fd, ev in poll.poll(-1 if timeout is None else int(math.ceil(timeout * 1000))):
            if fd == self._fd:
                readable = read and bool(ev & self._READY)
                writable = write and bool(ev & self._OUT)
            else:
                woken = True
        return readable, writable, woken


def _readable(sock: socket.socket, poll: Any, timeout: float) -> bool:
    """Is ``sock`` readable within ``timeout`` seconds? (``poll``: a poll object on it, or None)"""
    if poll is not None:
        return bool(poll.poll(max(int(math.ceil(timeout * 1000)), 0)))
    r, _, x = select.select([sock], [], [sock], max(timeout, 0.0))
    return bool(r or x)


class _Reader:
    """Buffered exact reads for the token holder: small replies come out of one recv, big ones
    go straight to the caller's buffer.

    Bounds: ``first`` (a time.monotonic() value) bounds the wait for the first byte of a message
    (then :class:`_NoReply`, nothing consumed); once a message has begun (``busy``) each wait for
    more bytes is bounded by ``stall`` seconds (then :class:`_Stalled`). Neither: block.

    A bounded wait is a plain blocking recv with the kernel's SO_RCVTIMEO set to the caller's
    timeout (set once, cached: PyUSB passes the same timeout every time), so waiting for a reply
    costs one syscall, as in the raw floor; an expired SO_RCVTIMEO shows as EAGAIN and is checked
    against the bounds here. Where SO_RCVTIMEO cannot be set, poll()/select() before each recv.
    """

    __slots__ = ("sock", "buf", "view", "start", "end", "first", "stall", "busy", "rcvtimeo", "kernel",
                 "poll", "chunk")

    def __init__(self, sock: socket.socket, size: int = _HEADER + 65536) -> None:
        self.sock = sock
        self.buf = bytearray(size)
        self.view = memoryview(self.buf)
        self.start = 0
        self.end = 0
        self.first: Optional[float] = None
        self.stall = RttEstimator.MIN_STALL
        self.busy = False  # a message has begun and is not read to its end yet
        self.rcvtimeo: Optional[float] = 0.0  # seconds asked for; 0 = none; None = cannot set it
        self.kernel = 0.0  # what the kernel was given (a little shorter, see arm())
        self.chunk = _CHUNK  # what a buffered recv asks for (more when replies queue up)
        self.poll: Any = None
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
        # _RCVTIMEO_MARGIN_US short, and a bounded wait shorter than it polls first); a
        # shorter one only costs one early wake-up. Re-arm only outside that band, so the
        # steady state has no setsockopt per URB.
        if seconds and armed and armed - 0.005 <= seconds <= 8 * armed:
            return
        usec = int(seconds * 1e6)
        if seconds:
            usec = max(usec - min(_RCVTIMEO_MARGIN_US, usec // 2), 1000)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, _TIMEVAL.pack(usec // 1000000, usec % 1000000))
        self.rcvtimeo = seconds
        self.kernel = usec / 1e6

    def begin(self, first: Optional[float]) -> None:
        """A new message is to be read; ``first`` bounds the wait for its first byte."""
        if self.end != self.start:
            self.first = None
            self.busy = True
        else:
            self.first = first
            self.busy = False

    def _wait(self) -> None:
        """Wait (bounded) until a recv will not block for long, or raise."""
        first = self.first
        if first is not None:
            # A bound already passed still takes what has arrived (poll(0)): pump(0) relies on it.
            if not _readable(self.sock, self.poll, max(first - _monotonic(), 0.0)):
                raise _NoReply()
        elif self.busy:
            if not _readable(self.sock, self.poll, self.stall):
                raise self._stalled()

    def _stalled(self) -> _Stalled:
        return _Stalled(f"the server stopped sending in the middle of a reply (nothing for "
                        f"{self.stall:.3g} s); the stream cannot be resynchronised")

    def _recv(self, dest: memoryview, size: int) -> int:
        while True:
            first = self.first
            if first is not None and _HAVE_DONTWAIT and first <= _monotonic():
                # The bound has passed (pump(0)): take what has arrived, in one syscall.
                try:
                    n = self.sock.recv_into(dest, size, socket.MSG_DONTWAIT)
                except (BlockingIOError, InterruptedError):
                    raise _NoReply() from None
                self.first = None
                self.busy = True
                return n
            if not self.rcvtimeo:
                # No receive timeout armed (none possible, or nobody led yet): a bounded wait
                # polls first.
                if first is not None or self.busy:
                    self._wait()
            elif first is not None and first - _monotonic() < self.kernel:
                # Due before the kernel's receive timeout would wake us: poll() is precise. (A
                # bound beyond it is met by the EAGAIN, then poll() for the rest.)
                self._wait()
            try:
                n = self.sock.recv_into(dest, size)
            except (BlockingIOError, InterruptedError):
                # SO_RCVTIMEO expired. Before the first byte: the bound decides. Inside a message:
                # the armed time counts towards the stall. Unbounded: disarm and block.
                if first is None and not self.busy:
                    self.arm(0.0)
                    continue
                if first is None:
                    rest = self.stall - (self.rcvtimeo or 0.0)
                    if rest > 0 and _readable(self.sock, self.poll, rest):
                        continue
                    raise self._stalled()
                self._wait()
                continue
            self.first = None
            self.busy = True
            return n

    def read_into(self, dest: memoryview) -> None:
        need = dest.nbytes
        have = self.end - self.start
        if have >= need:
            dest[:] = self.view[self.start: self.start + need]
            self.start += need
            self.busy = True
            return
        if have:
            dest[:have] = self.view[self.start: self.end]
            self.busy = True
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
            n = recv(view, self.chunk)
            if not n:
                raise EOFError
            take = min(n, need - got)
            dest[got: got + take] = view[:take]
            got += take
            self.start, self.end = take, n

    def grow(self, size: int) -> None:
        """Make the buffer ``size`` bytes, keeping what it holds (nobody may hold a view of it)."""
        have = self.end - self.start
        buf = bytearray(size)
        buf[:have] = self.view[self.start:self.end]
        self.buf, self.view = buf, memoryview(buf)
        self.start, self.end = 0, have

    def skip(self, count: int) -> None:
        """Consume ``count`` bytes, through the buffer (never allocating what a peer asked for)."""
        while count > 0:
            have = self.end - self.start
            if have:
                take = min(have, count)
                self.start += take
                count -= take
                continue
            self.start = self.end = 0
            n = self._recv(self.view, min(count, len(self.buf)))
            if not n:
                raise EOFError
            count -= n


class Connection:
    """An imported device: its socket, reader thread, URBs in flight and timers.

    Made by :func:`usbip_backend.client.import_device`. Thread-safe: any thread may submit,
    wait, cancel and close.

    Args:
        sock: the stream left over from a successful OP_REQ_IMPORT: a kernel stream socket (what
            :func:`~usbip_backend.client.import_device` passes), used as it is by every fast
            path below; anything else (an ``ssl.SSLSocket``, a socket-like object) is relayed
            through a socketpair first (:func:`~.transport.engine_socket`), so this class
            never sees anything but a kernel socket.
        device: the device record the import returned.
        name: how errors and logs name the device (default ``"device BUSID"``).
        hook: a capture hook (:class:`~usbip_backend.hooks.UrbHook`).
        unlink_grace: seconds to wait for a RET_UNLINK before giving a URB up; None (default)
            follows the measured round-trip time (see :class:`~.table.RttEstimator`).
        reply_stall: seconds a reply may stop moving before the connection is failed; None
            (default) follows the round-trip time (at least 0.5 s).
        rtt: a first round-trip sample in seconds (the import exchange), for the estimator.
        loss_level: the logging level of the one message saying the connection was lost (the
            server closed it, a reset; a protocol error is logged as such too). WARNING
            (default) for users that report nothing themselves; an owner that reports the loss
            in its own way (the serial port: its read and write raise) passes ``logging.DEBUG``.
            Also the attribute of that name.
    """

    def __init__(
        self,
        sock: Union[socket.socket, SocketLike],
        device: P.UsbDevice,
        *,
        name: Optional[str] = None,
        hook: Optional[UrbHook] = None,
        unlink_grace: Optional[float] = None,
        reply_stall: Optional[float] = None,
        rtt: Optional[float] = None,
        loss_level: int = logging.WARNING,
    ) -> None:
        self.name = name or f"device {device.busid}"
        self.loss_level = loss_level
        self.sock = sock = engine_socket(sock, self.name)
        self.device = device
        self.busid = device.busid
        self.busnum = device.busnum
        self.devnum = device.devnum
        self.devid = device.devid
        self.speed = device.speed
        self.hook = hook
        self._fixed_grace = unlink_grace
        self._fixed_stall = reply_stall
        self._rtt = RttEstimator(rtt)
        self._lock = threading.Lock()  # the table and every URB state transition
        self._table = UrbTable()
        self._lost: Optional[ConnectionLostError] = None
        self._closing = False
        sock.settimeout(None)
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._woken = False
        self._sender = _Sender(sock, self._wake)
        # Leader/follower (module docstring): the read token, the buffered reader only its holder
        # uses, and what the reader thread is waiting for (written under _lock by the reader).
        self._token = threading.Lock()
        self._leading = False
        self._leads = 0  # how often a caller gave the token back (a hint for the reader thread)
        self._rd = _Reader(sock)
        self._rd.stall = self.reply_stall
        self._header = bytearray(_HEADER)
        self._hview = memoryview(self._header)
        # _take_scattered: one header slot per URB a recv follows (made once it is first needed:
        # a device that never pipelines does without), and how many rounds to skip it
        self._head_views: List[memoryview] = []
        self._scatter_skip = 0
        self._scatter_backoff = 0
        self._avail = array.array("i", [0])  # FIONREAD's answer
        self._r_sock = False  # the reader thread polls the socket
        self._r_until = _INF  # ... and sleeps until then at the latest (0: it is awake)
        self._r_backoff = False  # ... and that sleep is a backoff (it looks again by itself)
        # An event loop reads the socket (pump_ready); the reader thread keeps the timers, and
        # reads only while a reply too big for the loop is handed over to it.
        self._external = False
        self._handoff: Optional[Callable[[], None]] = None
        self._reader = threading.Thread(target=self._run, name=f"usbip-reader-{self.busid}", daemon=True)
        self._reader.start()

    # -- public API -------------------------------------------------------------------------------
    @property
    def closed(self) -> bool:
        """True once the connection is lost or closed (every URB then fails at once)."""
        return self._lost is not None

    @property
    def in_flight(self) -> int:
        """URBs submitted and not ended yet."""
        return len(self._table.pending)

    @property
    def unlink_grace(self) -> float:
        """Seconds an unlink waits for its verdict before the URB is given up (now)."""
        if self._fixed_grace is not None:
            return self._fixed_grace
        return self._rtt.grace()

    @property
    def reply_stall(self) -> float:
        """Seconds a reply may stop moving before the connection is failed (now)."""
        if self._fixed_stall is not None:
            return self._fixed_stall
        return self._rtt.stall()

    @property
    def rtt(self) -> Optional[float]:
        """The smoothed round-trip time to the server in seconds (None before any sample)."""
        return self._rtt.srtt

    def submit(
        self,
        transfer_type: P.TransferType,
        endpoint: int,
        *,
        setup: Optional[bytes] = None,
        data: Optional[Buffer] = None,
        buffer: Optional[Buffer] = None,
        length: Optional[int] = None,
        interval: int = 0,
        iso_packet_lengths: Optional[Sequence[int]] = None,
        transfer_flags: int = 0,
        timeout: Optional[float] = None,
        callback: Optional[DoneCallback] = None,
        block: bool = True,
        flush: bool = True,
    ) -> Urb:
        """Send one CMD_SUBMIT and return its :class:`Urb` at once.

        Args:
            transfer_type: control, bulk, interrupt or isochronous.
            endpoint: the endpoint address (bit 7 = IN; a control URB takes its direction from
                ``setup``).
            setup: the 8-byte SETUP packet of a control URB.
            data: OUT payload (any buffer; sent without copying).
            buffer: IN destination (writable; received into without copying), or ``length``.
                Its bytes past the actual_length the reply brings may be overwritten.
            interval: the URB interval (interrupt and ISO need one; see ``urb_interval``).
            iso_packet_lengths: ISO packet sizes (they add up to the length).
            transfer_flags: USBIP_URB_* flags (direction and ISO_ASAP are set for you).
            timeout: seconds; the engine unlinks the URB then (None or 0: no timeout).
            callback: called once when the URB is done (see :meth:`Urb.add_done_callback`).
            block: True (default) sends the CMD_SUBMIT and its payload on this thread, waiting
                while the socket is full. False never waits (for event loops): the message is
                sent at once as far as the socket takes it, and the rest by the reader thread as
                the socket drains, never split by another message (except on Windows, which
                has no non-blocking send on a blocking socket: there it blocks).
            flush: with ``block`` False, False leaves the message queued until :meth:`flush`
                (an event loop sends what one iteration submitted in one syscall).

        Raises:
            ValueError: arguments the wire cannot carry.
            ConnectionLostError: the connection is gone.
        """
        urb = self._prepare(transfer_type, endpoint, setup, data, buffer, length, interval,
                            iso_packet_lengths, transfer_flags)
        if callback is not None:
            urb._callbacks = [callback]
        self._post(urb, timeout, False, block, flush)
        return urb

    def resubmit(self, done: Urb, *, timeout: Optional[float] = None, callback: Optional[DoneCallback] = None,
                 block: bool = True, flush: bool = True, in_place: bool = False) -> Urb:
        """Submit a new URB like ``done``, an ended URB of this connection: the same type,
        endpoint, setup, flags, interval, ISO packet lengths and buffer (IN, received into
        again) or data (OUT, sent again as it is now). Its arguments were checked when ``done``
        was made, so this is the cheap way to keep a pump going (python-libusb1's transfer
        reuse). Other arguments as :meth:`submit`.

        ``in_place``: the caller is the only one holding ``done`` (nobody waits on it or reads
        its result any more), so ``done`` itself may be made new and returned, where nothing
        else could tell (no capture hook, never unlinked). Otherwise a new URB is made.

        Raises:
            ValueError: ``done`` is not an ended URB of this connection.
            ConnectionLostError: the connection is gone.
        """
        if done.conn is not self or done.state is not _DONE:
            raise ValueError(f"{done!r} is not an ended URB of this connection")
        if self._lost is not None:
            raise self._lost
        if in_place and self.hook is None and not done._unlink_seqnum:
            urb = done
            urb._renew()
            if not block and not flush and urb.direction and urb.iso_packets is None:
                # What a pump does once per URB: _post's queued case for an IN URB, written out.
                if callback is not None:
                    urb._callbacks = [callback]
                seq, wake = self._enter(urb, timeout, False)
                self._sender.queue.append(self._submit_header(seq, 1, urb.endpoint, urb.transfer_flags,
                                                              urb.length, urb.interval, urb.setup, None))
                if wake:
                    self._wake()
                return urb
        else:
            direction = done.direction
            urb = Urb(self, done.transfer_type, done.endpoint, direction, done.setup, done.length, done.interval,
                      done.buffer if direction else done.out_data, done.transfer_flags)  # type: ignore[arg-type]
            urb.iso_packets = done.iso_packets
        if callback is not None:
            urb._callbacks = [callback]
        self._post(urb, timeout, False, block, flush)
        return urb

    def transfer(self, transfer_type: P.TransferType, endpoint: int, *, timeout: Optional[float] = None,
                 setup: Optional[bytes] = None, data: Optional[Buffer] = None,
                 buffer: Optional[Buffer] = None, length: Optional[int] = None, interval: int = 0,
                 iso_packet_lengths: Optional[Sequence[int]] = None, transfer_flags: int = 0) -> Urb:
        """Submit one URB and wait for it (arguments as :meth:`submit`, errors as
        :meth:`Urb.wait`); ``timeout`` None or 0 waits forever."""
        urb = self._prepare(transfer_type, endpoint, setup, data, buffer, length, interval,
                            iso_packet_lengths, transfer_flags)
        if timeout is not None and timeout > 0:
            urb.timeout = timeout
        if not self._take_token():
            self._post(urb, None, False)
            return urb.wait(timeout)
        deadline, lead_end = self._lead_clock(timeout)
        done = False
        try:
            self._post(urb, None, True)
            done = self._lead(urb, deadline, lead_end, True)
        finally:
            self._release_token()
        if not done:
            self._follow(urb, deadline)
        return urb.result()

    def sync_transfer(self, transfer_type: P.TransferType, endpoint: int, setup: Optional[bytes],
                      view: memoryview, timeout: Optional[float], interval: int = 0) -> int:
        """One synchronous URB straight from (OUT) or into (IN) a flat byte view: what the PyUSB
        backend and other synchronous front ends call. Returns actual_length.

        When the caller can read its own reply and no hook listens, no :class:`Urb` is built:
        the CMD_SUBMIT goes out, one recv takes the reply, the count is returned. Anything
        unusual (another URB's reply first, a reply in pieces, none yet, an error status) makes
        it an ordinary URB in the table, read and timed like any other.

        Raises:
            as :meth:`Urb.wait`.
        """
        if self.hook is not None or not self._take_token():
            return self._sync_urb(transfer_type, endpoint, setup, view, timeout, interval)
        urb: Optional[Urb] = None
        done = False
        deadline: Optional[float] = None
        try:
            direction, endpoint = _direction(transfer_type, endpoint, setup, interval)
            length = _check_length(direction, view)
            flags = _URB_DIR_IN if direction else 0
            seq = self._send_submit(None, direction, endpoint, flags, length, interval, setup,
                                    None if direction else view, None)
            deadline, lead_end = self._lead_clock(timeout)
            try:
                got = self._own_reply(None, seq, direction, view, length)
            except BaseException as exc:
                self._read_error(exc)
                if self._lost is not None:
                    raise self._lost from exc
                raise
            if got is not None:
                status, actual, error_count = got
                if self._rd.end > self._rd.start:
                    self._drain()  # replies the same recv brought
                if not status:
                    return actual  # (the finally gives the token back)
            urb = Urb(self, transfer_type, endpoint, direction, setup, length, interval, view, flags)
            urb.seqnum = seq
            if deadline is not None:
                urb.timeout = timeout
            if got is not None:
                urb.actual_length = actual
                urb.error_count = error_count
                if direction:
                    urb.in_data = view[:actual]
                urb.status = status
                urb.state = _DONE  # never in the table: nobody else knows of it
                done = True
            else:
                # Unusual: make it an ordinary URB and lead for it as transfer() does. Under the
                # lock, as the table is lost under it: a URB entered after that would never end.
                with self._lock:
                    if self._table.lost:
                        assert self._lost is not None
                        raise self._lost
                    self._table.add(urb, seq)
                done = self._lead(urb, deadline, lead_end, False)
        finally:
            self._release_token()
        if not done:
            self._follow(urb, deadline)
        return urb.result().actual_length

    def control_transfer(self, bmRequestType: int, bRequest: int, wValue: int = 0, wIndex: int = 0,
                         data_or_length: Union[int, Buffer, None] = 0,
                         timeout: Optional[float] = None) -> Union[bytes, int]:
        """One control transfer: returns the bytes read (IN) or the count written (OUT)."""
        if bmRequestType & 0x80:
            buf = bytearray(int(data_or_length or 0))
            setup = P.pack_setup(bmRequestType, bRequest, wValue, wIndex, len(buf))
            return bytes(buf[:self.sync_transfer(_CONTROL, 0x80, setup, memoryview(buf), timeout)])
        data = bytes(data_or_length or b"")
        setup = P.pack_setup(bmRequestType, bRequest, wValue, wIndex, len(data))
        return self.sync_transfer(_CONTROL, 0x00, setup, memoryview(data), timeout)

    def close(self) -> None:
        """Close the connection: fail pending URBs, join the reader thread, close the socket."""
        self._closing = True
        self._fail_all("connection closed")
        if self._reader is not threading.current_thread():
            self._reader.join()
        self._sender.abandon()
        self.sock.close()
        self._wake_r.close()
        self._wake_w.close()

    def __enter__(self) -> "Connection":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"{len(self._table.pending)} URBs in flight"
        return f"<Connection {self.name} devid=0x{self.devid:08x} {state}>"

    # -- building and sending ------------------------------------------------------------------------
    def _prepare(self, transfer_type: P.TransferType, endpoint: int, setup: Optional[bytes],
                 data: Optional[Buffer], buffer: Optional[Buffer], length: Optional[int], interval: int,
                 iso_packet_lengths: Optional[Sequence[int]], transfer_flags: int) -> Urb:
        """Check the arguments and build the URB (not sent yet; no seqnum)."""
        if self._lost is not None:
            raise self._lost
        direction, endpoint = _direction(transfer_type, endpoint, setup, interval)
        if direction:
            if buffer is None:
                if length is None:
                    raise ValueError("an IN URB needs a buffer or a length")
                if length < 0:
                    raise ValueError(f"URB length {length} outside 0..{MAX_URB_LENGTH}")
                buffer = bytearray(min(length, MAX_URB_LENGTH + 1))
            mv = flat(buffer)
            if length is not None:
                if length > mv.nbytes:
                    raise ValueError(f"length {length} exceeds the buffer ({mv.nbytes} bytes)")
                mv = mv[:length]
            transfer_flags |= _URB_DIR_IN
        else:
            mv = flat(data if data is not None else b"")
            if length is not None and length != mv.nbytes:
                raise ValueError(f"length {length} differs from the OUT data ({mv.nbytes} bytes)")
        size = _check_length(direction, mv)
        urb = Urb(self, transfer_type, endpoint, direction, setup, size, interval, mv)
        if transfer_type == _ISOCHRONOUS:
            lengths = list(iso_packet_lengths or [size])
            if not 0 < len(lengths) <= P.MAX_ISO_PACKETS:
                raise ValueError(f"an ISO URB needs 1..{P.MAX_ISO_PACKETS} packets")
            packets, offset = [], 0
            for plen in lengths:
                if plen < 0:
                    raise ValueError(f"ISO packet length {plen} is negative")
                packets.append(P.IsoPacket(offset, plen))
                offset += plen
            if offset != size:
                raise ValueError(f"ISO packet lengths add up to {offset}, not the URB length {size}")
            urb.iso_packets = packets
            transfer_flags |= P.USBIP_URB_ISO_ASAP
        urb.transfer_flags = transfer_flags
        return urb

    def _post(self, urb: Urb, timeout: Optional[float], led: bool, block: bool = True,
              flush: bool = True) -> None:
        """Enter the URB in the table, arm its timeout, send its CMD_SUBMIT. ``led``: the caller
        holds the token and reads the reply itself (the reader thread need not be woken).
        ``block`` False: queue the message instead of waiting for the socket (see :meth:`submit`)."""
        iso = urb.iso_packets
        iso_raw = None if iso is None else P.pack_iso_packets(iso)
        payload = None if urb.direction else urb.out_data
        if block:
            self._send_submit(urb, urb.direction, urb.endpoint, urb.transfer_flags, urb.length,
                              urb.interval, urb.setup, payload, iso_raw, timeout, led)
            return
        seq, wake = self._enter(urb, timeout, led)
        parts: List[Any] = [self._submit_header(seq, urb.direction, urb.endpoint, urb.transfer_flags,
                                                urb.length, urb.interval, urb.setup, iso_raw)]
        total = _HEADER
        if payload is not None and urb.length:
            parts.append(payload)
            total += urb.length
        if iso_raw is not None:
            parts.append(iso_raw)
            total += len(iso_raw)
        if not flush:
            self._sender.queue.append(parts[0] if len(parts) == 1 else (parts, None))
        elif total <= _SEND_SLICE:
            try:
                self._sender.push(parts, total)
            except OSError as exc:
                self._fail_all(f"send failed: {exc}")
        else:
            self._sender.queue.append((parts, None))
            self._kick()
        if wake:
            self._wake()

    def flush(self) -> None:
        """Send what ``submit(block=False, flush=False)`` queued, as far as the socket takes it
        without waiting (the reader thread sends the rest); never blocks."""
        if self._sender.queue:
            self._kick()

    def _enter(self, urb: Urb, timeout: Optional[float], led: bool) -> Tuple[int, bool]:
        """Enter ``urb`` in the table under a fresh seqnum and arm its timeout; returns the
        seqnum and whether the reader thread must be woken (to read the reply or for the timer).

        Raises:
            ConnectionLostError: the connection is gone.
        """
        wake = False
        with self._lock:
            table = self._table
            if table.lost:
                assert self._lost is not None
                raise self._lost
            now = _monotonic()
            if timeout is not None and timeout > 0:
                urb.timeout = timeout
                when = now + timeout
                seq = table.add(urb, 0, when)
                wake = when < self._r_until
            else:
                seq = table.add(urb)
            if not led and not self._r_sock and not self._r_backoff \
                    and self._r_until - now > _READER_BACKOFF \
                    and (not self._external or self._handoff is not None):
                # Someone must read the reply: the reader thread sleeps. (Backing off or awake,
                # it looks again by itself: a pipelining caller submitting while it leads must
                # not cost a wake-up per URB.)
                wake = True
        urb.submit_time = time.time()
        if self.hook is not None:
            self._call_hook(self.hook.urb_submitted, urb)
        return seq, wake

    def _submit_header(self, seq: int, direction: int, endpoint: int, flags: int, length: int,
                       interval: int, setup: Optional[bytes], iso_raw: Optional[bytes]) -> bytes:
        return _SUBMIT_PACK(_CMD_SUBMIT, seq, self.devid, direction, endpoint & 0x0F, flags, length,
                            0, 0 if iso_raw is None else len(iso_raw) // P.ISO_PACKET_SIZE, interval,
                            _NO_SETUP if setup is None else setup)

    def _send_submit(self, urb: Optional[Urb], direction: int, endpoint: int, flags: int, length: int,
                     interval: int, setup: Optional[bytes], payload: Optional[memoryview],
                     iso_raw: Optional[bytes], timeout: Optional[float] = None, led: bool = True) -> int:
        """Give a seqnum (entering ``urb`` in the table if given), send the messages queued before
        it (``submit(flush=False)`` ones keep their order on the wire), then the CMD_SUBMIT with
        its payload and ISO descriptors, then what was queued meanwhile; returns the seqnum.
        Shared by every blocking path that submits (the lane passes no URB).

        Raises:
            ConnectionLostError: lost before, or the send failed (the URB then ends with it).
        """
        sender = self._sender
        wake = False
        failure: Optional[OSError] = None
        with sender.lock:
            if urb is None:
                # The lane: no table entry, so no table lock (a connection lost meanwhile shows
                # in the send or in the recv that follows).
                if self._lost is not None:
                    raise self._lost
                seq = self._table.next_seqnum()
            else:
                seq, wake = self._enter(urb, timeout, led)
            header = self._submit_header(seq, direction, endpoint, flags, length, interval, setup, iso_raw)
            try:
                if sender.queue:
                    sender.flush_locked()
                if iso_raw is not None:
                    sender.sendmsg([header, iso_raw] if payload is None or not length
                                   else [header, payload, iso_raw])
                elif payload is None or not length:
                    self.sock.sendall(header)
                else:
                    sender.sendmsg([header, payload])
                if sender.queue:
                    sender.flush_locked()
            except OSError as exc:
                failure = exc
                if urb is not None:
                    urb.submit_failed = True
        if failure is not None:
            raise self._fail_all(f"send failed: {failure}") from failure  # ends the URB too
        if sender.queue:
            self._kick()
        if wake:
            self._wake()
        return seq

    def _kick(self) -> None:
        try:
            self._sender.kick()
        except OSError as exc:
            self._fail_all(f"send failed: {exc}")

    # -- leading (reading for one's own URB) -------------------------------------------------------
    def _take_token(self) -> bool:
        # Every platform can lead: with SO_RCVTIMEO, or else with poll()/select() before a recv.
        if self._token.acquire(False):
            self._leading = True
            return True
        return False

    def _release_token(self) -> None:
        self._leading = False
        self._leads += 1
        self._token.release()
        # Replies still owed (our own if we stopped leading early, followers that queued behind
        # us, unlinks): hand the reading over to the reader thread if it sleeps. (Awake or
        # backing off, it looks again by itself. Not waking it needlessly matters: it would
        # contend for the GIL with this caller's next transfer.)
        table = self._table
        if (table.pending or table.unlinks) and not self._r_sock and not self._r_backoff \
                and self._r_until - _monotonic() > _READER_BACKOFF \
                and (not self._external or self._handoff is not None):
            self._wake()

    def _lead_clock(self, timeout: Optional[float]) -> Tuple[Optional[float], float]:
        """(deadline or None, end of the lead wait) for a caller about to lead; arms the receive
        timeout for its first wait."""
        now = _monotonic()
        self._arm_lead(timeout)
        return (now + timeout if timeout is not None and timeout > 0 else None), now + _LEAD_WAIT

    def _arm_lead(self, timeout: Optional[float]) -> None:
        """Arm the receive timeout for a leader's first wait: the lead wait, or less."""
        wait = timeout if timeout is not None and 0 < timeout < _LEAD_WAIT else _LEAD_WAIT
        if self._rd.rcvtimeo != wait:
            try:
                self._rd.arm(wait)
            except OSError as exc:  # close() from another thread got there first (EBADF)
                raise self._fail_all(f"socket failed: {exc}") from exc

    def _own_reply(self, urb: Optional[Urb], seq: int, direction: int, dest: Optional[memoryview],
                   length: int) -> Optional[Tuple[int, int, int]]:
        """The leader's fast path (token held): if nothing is buffered, take one recv and, if it
        holds the RET_SUBMIT for ``seq`` (non-ISO, sane length), consume it, IN data into
        ``dest``, and return (status, actual_length, error_count). Otherwise return None with
        whatever arrived left in the buffer for _read_one: no byte is consumed that is not ours.
        ``urb`` (None for the lane) is claimed (PENDING -> RECEIVING) before its data is written.
        """
        rd = self._rd
        if rd.end != rd.start or rd.rcvtimeo is None:
            return None  # (no SO_RCVTIMEO: only _Reader's poll() before each recv bounds a wait)
        if direction and length >= _SCATTER_MIN and _HAVE_SCATTER and len(self._table.pending) > 1 \
                and not self._scatter_skip:
            return None  # several replies owed: _read_one receives them in place
        if direction and length > _CHUNK and _HAVE_RECVMSG and urb is None:
            table = self._table
            if not table.pending and not table.unlinks:
                assert dest is not None
                return self._own_big_reply(seq, dest, length)
        try:
            # Other replies owed (pipelining): take as many as have come in one recv, ours first
            # with luck; the rest are dispatched from the buffer (_drain) without a recv each.
            chunk = self._chunk()  # first: it may replace rd.view
            n = self.sock.recv_into(rd.view, chunk)
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
        if urb is not None:
            with self._lock:
                if not self._table.claim(urb):
                    return None  # ended meanwhile (connection lost): _read_one sorts it out
        if not direction:
            rd.start = _HEADER
            return status, actual, error_count
        assert dest is not None
        end = _HEADER + actual
        if end <= n:
            dest[:actual] = rd.view[_HEADER:end]
            rd.start = end
            return status, actual, error_count
        # A big reply: the rest goes straight into the caller's buffer.
        got = n - _HEADER
        dest[:got] = rd.view[_HEADER:n]
        rd.start = rd.end = 0
        self._rest_into(dest, got, actual)
        return status, actual, error_count

    def _batching(self) -> bool:
        """Whether several replies are owed; if so, the read buffer is grown to hold a window of
        them (token held; it may replace the buffer, so call it before taking a view of it)."""
        if len(self._table.pending) <= 1:
            return False
        rd = self._rd
        if len(rd.buf) < _BATCH_BUF:
            rd.grow(_BATCH_BUF)
        return True

    def _chunk(self) -> int:
        """What a buffered recv asks for (see :meth:`_batching`). Several replies owed: one recv
        may bring several (copied out of the buffer, cheaper than a recv each), as many as the
        buffer holds. One owed: a small recv, so a big payload goes straight to its buffer."""
        return len(self._rd.buf) if self._batching() else _CHUNK

    def _rest_into(self, dest: memoryview, got: int, actual: int) -> None:
        """Receive bytes ``got`` .. ``actual`` of a reply straight into ``dest`` (buffer empty)."""
        rd = self._rd
        rd.busy = True
        recv_into = self.sock.recv_into
        try:
            while got < actual:
                k = recv_into(dest[got:actual], actual - got)
                if not k:
                    raise EOFError
                got += k
        except (BlockingIOError, InterruptedError):
            # SO_RCVTIMEO expired mid-reply: _Reader bounds the rest by the stall time.
            rd.first = None
            rd.read_into(dest[got:actual])
        rd.busy = False

    def _own_big_reply(self, seq: int, dest: memoryview, length: int) -> Optional[Tuple[int, int, int]]:
        """_own_reply for a big IN reply of the lane with nothing else in flight: one scatter
        recv takes the header into its own buffer and the data straight into the caller's, as
        the raw loop's two recvs do, without copying the first chunk through the buffer.

        Nothing else is owed, so what could follow the reply in the same recv is only a late
        reply to a URB given up on: it is moved to the buffer for _read_one, and the caller's
        buffer past actual_length is then not left as it was (as with :meth:`_take_scattered`).
        """
        rd = self._rd
        cap = min(length, len(rd.buf) - _HEADER)
        try:
            n = self.sock.recvmsg_into([self._hview, dest[:cap]])[0]
        except (BlockingIOError, InterruptedError):
            return None  # SO_RCVTIMEO expired: _read_one waits out the rest
        if not n:
            raise EOFError
        view = rd.view
        got = n - _HEADER
        if got < 0:
            view[:n] = self._hview[:n]
            rd.start, rd.end = 0, n
            return None
        command, rseq, _, _, _, status, actual, _, npackets, error_count = _RET_SUBMIT_UNPACK(self._header)
        if command != _RET_SUBMIT or rseq != seq or npackets or not 0 <= actual <= length:
            view[:_HEADER] = self._hview
            view[_HEADER:n] = dest[:got]  # not ours: all of it goes to the buffer
            rd.start, rd.end = 0, n
            return None
        if got > actual:
            extra = got - actual  # the start of what follows our reply
            view[:extra] = dest[actual:got]
            rd.start, rd.end = 0, extra
            return status, actual, error_count
        if got < actual:
            self._rest_into(dest, got, actual)
        return status, actual, error_count

    def _lead(self, urb: Urb, deadline: Optional[float], lead_end: float, own: bool) -> bool:
        """Read replies (token held) until ``urb`` is done: True. False: no reply began within the
        lead wait, and the caller is to hand the reading over and wait as a follower.

        The caller's deadline unlinks the URB; the unlink's grace end gives it up. ``own``: try
        the one-recv fast path for the URB's own reply first.
        """
        try:
            if own and urb.iso_packets is None and urb.state is _PENDING:
                got = self._own_reply(urb, urb.seqnum, urb.direction, urb.buffer, urb.length)
                if got is not None:
                    status, urb.actual_length, urb.error_count = got
                    if urb.direction:
                        assert urb.buffer is not None
                        urb.in_data = urb.buffer[:urb.actual_length]
                    self._complete(urb, status)
            while urb.state is not _DONE:
                limit = urb._grace_end if urb._unlink_seqnum else deadline
                bound = lead_end if limit is None or lead_end < limit else limit
                if self._read_one(bound):
                    continue
                now = _monotonic()
                if limit is not None and now >= limit:
                    if urb._unlink_seqnum:
                        self._grace_over(urb)
                    else:
                        self._unlink(urb, EndedBy.TIMEOUT)
                    continue
                if now >= lead_end:
                    return False
            self._drain()
        except BaseException as exc:
            self._read_error(exc, urb)
        return True

    def _drain(self) -> None:
        """Dispatch the replies the last recv buffered (token held). The reader thread may be
        asleep in poll() on a socket that now looks empty, so they must not wait for it."""
        rd = self._rd
        take = self._take_buffered
        while rd.end > rd.start:
            if rd.end - rd.start < _HEADER or not take():
                self._read_one(None)

    def _read_error(self, exc: BaseException, urb: Optional[Urb] = None) -> None:
        """Reading (token held) raised ``exc``. A broken stream fails the connection (the URB
        ends with it). Anything else (KeyboardInterrupt) is raised again, after failing the
        connection if it hit the middle of a reply, or cancelling the URB so it still ends."""
        if isinstance(exc, (ProtocolError, EOFError, OSError)):
            self._fail_all(self._read_failed(exc), True)
            return
        if self._rd.busy:
            self._fail_all(f"interrupted in the middle of a reply ({type(exc).__name__})", True,
                           warn=not isinstance(exc, KeyboardInterrupt))
        elif urb is not None:
            self._unlink(urb, EndedBy.CANCEL)
        raise exc

    def _follow(self, urb: Optional[Urb], deadline: Optional[float]) -> None:
        """Wait for the token holder (a leader or the reader thread) to end ``urb``; at the
        deadline unlink it and wait for the verdict (the unlink's grace timer bounds that)."""
        assert urb is not None
        done = urb._done
        try:
            if urb.state is _DONE:
                return
            if deadline is not None:
                left = deadline - _monotonic()
                if left > 0 and done.acquire(True, left):
                    done.release()
                    return
                self._unlink(urb, EndedBy.TIMEOUT)
            done.acquire()
            done.release()
        except BaseException:
            self._unlink(urb, EndedBy.CANCEL)  # nobody waits any more: it must still end
            raise

    @property
    def buffered(self) -> bool:
        """Bytes of a reply have been read and not dispatched yet (a :meth:`pump` of 0 would
        not start with a recv)."""
        return self._rd.end > self._rd.start

    def pump(self, timeout: float) -> bool:
        """Read and dispatch replies on this thread, as a waiting caller does: wait at most
        ``timeout`` seconds for one, then take what else has arrived. Returns False at once if
        someone else is reading the socket (their reading completes the URBs), or if no reply came.

        For event loops that run callbacks on their own thread (``usb1.USBContext.handleEvents``):
        reading here saves handing every reply over from the reader thread.
        """
        if self._lost is not None or not self._take_token():
            return False
        got = False
        try:
            now = _monotonic()
            self._arm_lead(timeout)
            got = self._read_one(now + max(timeout, 0.0))
            if got:
                self._drain()
        except BaseException as exc:
            self._read_error(exc)
        finally:
            self._release_token()
        return got

    def set_loop_reader(self, on: bool) -> None:
        """An event loop reads the socket from now on (``on``), calling :meth:`pump_ready`
        whenever it is readable; the reader thread keeps the timers and stops watching the
        socket. Off: the reader thread reads again."""
        self._external = on
        self._wake()

    def pump_ready(self, handed_back: Callable[[], None]) -> Optional[bool]:
        """For an event loop's reader callback: take what the socket holds without waiting and
        dispatch every reply that has arrived whole. Never blocks.

        Returns True if a reply was dispatched, False if none was whole (or someone else holds
        the read token), None if a reply too big for the read buffer has begun: the reader
        thread then reads (stop calling until it calls ``handed_back()``, from its thread).
        """
        if self._lost is not None or not self._take_token():
            return False
        got: Optional[bool] = False
        rd = self._rd
        self._batching()  # (the loop's recv below takes all the room the buffer has)
        drained = False
        try:
            while True:
                if rd.end - rd.start >= _HEADER:
                    self._short_by = 0
                    if self._take_buffered(False):
                        got = True
                        continue
                    short_by = self._short_by
                    need = rd.end - rd.start + short_by if short_by else self._whole_reply()
                    assert need is not None
                    if need > len(rd.buf):
                        self._handoff = handed_back
                        got = None
                        break
                    if rd.end - rd.start >= need:
                        self._read_one(None)  # all of it is in the buffer: no recv
                        got = True
                        continue
                if drained:
                    # The last recv did not fill the buffer: the socket was empty then. What
                    # came since makes it readable again (the loop's poll is level-triggered),
                    # so a recv that would most likely fail with EAGAIN is not tried.
                    break
                if rd.start == rd.end:
                    rd.start = rd.end = 0
                    if self._scatter_due():
                        took = self._take_scattered(False)
                        if took is not None:
                            got = got or took[0]
                            drained = took[1]
                            continue
                elif rd.start:
                    self._compact()
                space = len(rd.buf) - rd.end
                try:
                    n = self.sock.recv_into(rd.view[rd.end:], space, socket.MSG_DONTWAIT)
                except (BlockingIOError, InterruptedError):
                    break
                if n == 0:
                    raise EOFError
                rd.end += n
                drained = n < space
        except BaseException as exc:
            self._read_error(exc)
        finally:
            self._release_token()
        if got is None:
            self._wake()
        return got

    def _compact(self) -> None:
        rd = self._rd
        have = rd.end - rd.start
        if rd.start:
            rd.view[:have] = rd.view[rd.start:rd.end]
            rd.start, rd.end = 0, have

    def _whole_reply(self) -> Optional[int]:
        """The size of the next reply in the read buffer (header + what follows it), or None
        while its header is incomplete (token held)."""
        rd = self._rd
        if rd.end - rd.start < _HEADER:
            return None
        (command, seq, _, _, _, _, actual, _, npackets, _) = _RET_SUBMIT_UNPACK(rd.buf, rd.start)
        if command != _RET_SUBMIT:
            return _HEADER
        with self._lock:
            urb = self._table.pending.get(seq)
            gone = self._table.retired.get(seq) if urb is None else None
        if urb is not None:
            follows = (max(actual, 0) if urb.direction else 0) + \
                (max(npackets, 0) * P.ISO_PACKET_SIZE if urb.iso_packets is not None else 0)
        elif gone is not None:
            follows = retired_skip(gone, max(actual, 0), max(npackets, 0))
        else:
            follows = 0  # an unknown seqnum: _read_one fails the connection with it
        return _HEADER + follows

    def _wait(self, urb: Urb, timeout: Optional[float]) -> None:
        """:meth:`Urb.wait`: lead for the URB if nobody reads the socket (once per URB: a caller
        that led in vain then waits as a follower), else follow."""
        if urb.state is _DONE:
            return
        if urb.state is _NEW:
            raise RuntimeError(f"{urb!r} was never submitted")
        if timeout is not None and timeout > 0 and urb.timeout is None:
            urb.timeout = timeout
        if getattr(_in_callback, "urb", None) is not None:
            # The thread running callbacks may hold the read token: nobody else could end it.
            raise RuntimeError(f"wait() for {urb!r} inside a done callback would deadlock; "
                               "resubmit or hand the work to another thread instead")
        if not urb._led and urb.state is _PENDING and self._take_token():
            urb._led = True
            deadline, lead_end = self._lead_clock(timeout)
            try:
                done = self._lead(urb, deadline, lead_end, True)
            finally:
                self._release_token()
            if not done:
                self._follow(urb, deadline)
            return
        self._follow(urb, _monotonic() + timeout if timeout is not None and timeout > 0 else None)

    def _sync_urb(self, transfer_type: P.TransferType, endpoint: int, setup: Optional[bytes],
                  view: memoryview, timeout: Optional[float], interval: int) -> int:
        """sync_transfer() by way of an ordinary URB (a hook listens, or someone else reads)."""
        direction = _direction(transfer_type, endpoint, setup, interval)[0]
        if direction:
            urb = self.transfer(transfer_type, endpoint, timeout=timeout, setup=setup, buffer=view,
                                interval=interval)
        else:
            urb = self.transfer(transfer_type, endpoint, timeout=timeout, setup=setup, data=view,
                                interval=interval)
        return urb.actual_length

    # -- reading replies -----------------------------------------------------------------------------
    #: What the last _take_buffered(False) found missing of a plain reply begun: the event
    #: loop's read needs the reply's size, and parsing the header again cost it about 3%.
    _short_by = 0

    def _take_buffered(self, rest: bool = True) -> bool:
        """Dispatch the next reply in one step if its header is in the read buffer and it is
        plain (a RET_SUBMIT for a pending non-ISO URB with no unlink out, a sane length): True.
        Else False, nothing consumed, for :meth:`_read_one`'s general path (token held).

        Whole in the buffer, the URB goes from PENDING to DONE under one hold of the lock, its
        data copied meanwhile: nobody can see it done before its result is whole, and nothing
        else could end it first. Begun only (IN data running past what the last recv brought):
        with ``rest`` the URB is RECEIVING while the rest of its data comes straight into its
        buffer, each wait bounded by the stall time as for any begun reply; without (an event
        loop, which must not wait) False.
        """
        rd = self._rd
        start = rd.start
        if rd.end - start < _HEADER:
            return False
        (command, seq, _, _, _, status, actual, _, _,
         error_count) = _RET_SUBMIT_UNPACK(rd.buf, start)
        if command != _RET_SUBMIT:
            return False
        table = self._table
        begin = start + _HEADER
        with self._lock:
            urb = table.pending.get(seq)
            if urb is None or urb.iso_packets is not None or urb._unlink_seqnum or not 0 <= actual <= urb.length:
                return False
            dest = urb.buffer
            if urb.direction:
                assert dest is not None
                end = begin + actual
                if end > rd.end:
                    if not rest:
                        self._short_by = end - rd.end  # (pump_ready: no second parse)
                        return False
                    table.claim(urb)  # PENDING -> RECEIVING: ours until its data is in
                    end = -1
                elif actual:
                    dest[:actual] = rd.view[begin:end]
            else:
                end = begin
            if end >= 0:
                rd.start = end
                callbacks = self._end_taken(urb, status, actual, error_count,
                                            None if dest is None else dest[:actual])
        if end < 0:
            rd.start = begin  # the header is consumed; the data is read as any begun reply's
            self._receive_begun(urb, status, actual, error_count, 0)
            return True
        self._finished(urb, callbacks)
        return True

    def _receive_begun(self, urb: Urb, status: int, actual: int, error_count: int, got: int) -> None:
        """Read the rest of a claimed (RECEIVING) URB's reply whose header, and ``got`` bytes of
        data, a recv brought; bounded by the stall time as any begun reply."""
        rd = self._rd
        rd.first = None
        rd.busy = True
        rd.chunk = self._chunk()
        self._receive(urb, status, actual, 0, 0, error_count, got)
        rd.busy = False

    def _end_taken(self, urb: Urb, status: int, actual: int, error_count: int,
                   data: Optional[memoryview]) -> Optional[List[DoneCallback]]:
        """End a PENDING URB whose whole reply was just taken, its IN data (``data``) already in
        its buffer (lock held): one transition with its result, so nobody sees it done before
        its result is whole. Returns its callbacks, to be run outside the lock."""
        urb.actual_length = actual
        urb.error_count = error_count
        if data is not None:
            urb.in_data = data
        # UrbTable.finish for a PENDING URB with no unlink out (the only kind taken here),
        # without its checks: once per URB of a pipeline
        table = self._table
        del table.pending[urb.seqnum]
        urb.status = status
        urb.state = _DONE
        callbacks = urb._callbacks
        urb._callbacks = None
        return callbacks

    def _scatter_due(self) -> bool:
        """Whether the next recv should try :meth:`_take_scattered` (token held, buffer empty)."""
        if len(self._table.pending) < 2 or not _HAVE_SCATTER:
            return False
        if self._scatter_skip:
            self._scatter_skip -= 1
            return False
        return True

    def _take_scattered(self, wait: bool) -> Optional[Tuple[bool, bool]]:
        """Receive replies straight into their URBs' buffers (token held, read buffer empty).

        Pipelined IN URBs are answered in the order they were sent (per endpoint, and a window
        is usually one endpoint), so one recvmsg_into can follow the pending URBs in submission
        order: a header slot and the URB's buffer for each, then the read buffer for whatever
        comes after. Each reply found where it was guessed (its seqnum, full length) ends its URB
        without being copied. The first one that is not (another seqnum, an unlink's answer, a
        header cut by the recv) and everything after it are moved to the read buffer, for the
        usual dispatch: nothing is lost, it is only copied as it would have been anyway. A short
        reply ends its URB too, its buffer holding what follows it past ``actual_length``
        (as the buffers of URBs still pending may: an IN buffer's bytes past what a reply
        brought are not kept). The lock is held across the recv, which never waits
        (MSG_DONTWAIT): a URB is written into only while nothing else can end it.

        ``wait``: a reply the recv brought only the start of is read to its end into its buffer
        (bounded by the stall time); otherwise (an event loop) it goes to the read buffer.

        The recv follows only the URBs whose replies have begun to arrive (FIONREAD says how
        many bytes wait), so building it costs nothing for replies still on their way.

        Returns None if there was no URB to follow or not a whole header waiting (nothing
        received), else (whether a URB ended, whether the recv emptied the socket: less came
        than it asked for, or nothing, meanwhile).
        """
        rd = self._rd
        try:
            fcntl.ioctl(self.sock.fileno(), _FIONREAD, self._avail, True)  # type: ignore[arg-type]
        except OSError:
            return None  # (closed meanwhile: the usual recv reports it)
        avail = self._avail[0]
        if avail < _HEADER:
            return None  # (nothing: the usual recv waits, or sees the end of the stream)
        table = self._table
        heads = self._head_views
        if not heads:
            whole = memoryview(bytearray(_HEADER * _SCATTER_MAX))
            heads = self._head_views = [whole[i * _HEADER:(i + 1) * _HEADER] for i in range(_SCATTER_MAX)]
        ended: List[Tuple[Urb, Optional[List[DoneCallback]]]] = []
        begun: Optional[Tuple[Urb, int, int, int, int]] = None
        with self._lock:
            plan: List[Urb] = []
            iov: List[Any] = []
            planned = 0  # bytes the URBs' slots take (headers and data)
            asked = 0  # ... of them data
            for urb in table.pending.values():
                length = urb.length
                if planned >= avail or length < _SCATTER_MIN or not urb.direction \
                        or urb.iso_packets is not None or urb._unlink_seqnum:
                    break
                asked += length
                if asked > _SCATTER_BYTES:
                    break
                iov += (heads[len(plan)], urb.buffer)  # (an IN URB's buffer is its length: _prepare)
                planned += _HEADER + length
                plan.append(urb)
                if len(plan) == _SCATTER_MAX:
                    break
            if not plan:
                return None
            iov.append(rd.view)
            room = len(rd.buf) + planned  # what the recv asks for
            try:
                n = self.sock.recvmsg_into(iov, 0, socket.MSG_DONTWAIT)[0]
            except (BlockingIOError, InterruptedError):
                return False, True
            if not n:
                raise EOFError
            rd.start = rd.end = 0
            left = n  # bytes received and not consumed yet
            rest = -1  # iov index where the unconsumed bytes start (-1: all consumed or tail)
            offset = 0  # ... and the offset in it
            guessed = True
            for i, urb in enumerate(plan):
                if left < _HEADER:
                    if left:
                        rest = 2 * i
                    break
                (command, seq, _, _, _, status, actual, _, npackets,
                 error_count) = _RET_SUBMIT_UNPACK(heads[i])
                length = urb.length
                if command != _RET_SUBMIT or seq != urb.seqnum or npackets or not 0 <= actual <= length:
                    rest = 2 * i
                    guessed = False
                    break
                if left - _HEADER < actual:
                    if wait:
                        table.claim(urb)  # PENDING -> RECEIVING: the rest of its data comes next
                        begun = (urb, status, actual, error_count, left - _HEADER)
                        left = 0
                    else:
                        rest = 2 * i
                    break
                left -= _HEADER + actual
                data = iov[2 * i + 1]
                ended.append((urb, self._end_taken(urb, status, actual, error_count,
                                                   data if actual == length else data[:actual])))
                if actual < length:
                    if left:
                        rest, offset = 2 * i + 1, actual
                    break
            else:
                rd.end = left  # every guess held: what follows is in the read buffer already
                left = 0
            if rest >= 0:
                self._gather(iov, rest, offset, left)
            if guessed:
                self._scatter_backoff = 0
            else:
                self._scatter_backoff = min(max(2 * self._scatter_backoff, _SCATTER_BACKOFF),
                                            _SCATTER_BACKOFF_MOST)
                self._scatter_skip = self._scatter_backoff
        if ended:
            self._finished_all(ended)
        if begun is not None:
            self._receive_begun(*begun)
        return bool(ended) or begun is not None, n < room

    def _gather(self, iov: List[Any], index: int, offset: int, count: int) -> None:
        """Move ``count`` received bytes, from ``iov[index][offset:]`` on, to the read buffer
        (empty; the last iov entry is its view). At most _SCATTER_BYTES more than it holds."""
        rd = self._rd
        pieces = []
        while count:
            view = iov[index]
            take = min(view.nbytes - offset, count)
            pieces.append(view[offset:offset + take])
            count -= take
            index += 1
            offset = 0
        data = b"".join(pieces)
        if len(data) > len(rd.buf):
            rd.buf = bytearray(len(data))
            rd.view = memoryview(rd.buf)
        rd.view[:len(data)] = data
        rd.start, rd.end = 0, len(data)

    def _read_one(self, first: Optional[float]) -> bool:
        """Read and dispatch one reply (token held); False if none began by ``first``."""
        rd = self._rd
        if rd.end == rd.start and self._scatter_due():
            took = self._take_scattered(True)
            if took is not None and took[0]:
                return True
        if rd.end - rd.start >= _HEADER and self._take_buffered():
            return True
        rd.begin(first)
        rd.chunk = self._chunk()
        try:
            rd.read_into(self._hview)
        except _NoReply:
            return False
        (command, seq, _, _, _, status, actual, start_frame, npackets,
         error_count) = _RET_SUBMIT_UNPACK(self._header)
        if command == _RET_SUBMIT:
            with self._lock:
                got = self._table.ret_submit(seq, actual, npackets)
            if isinstance(got, Retired):
                self._skip(seq, got, status, actual, npackets)
            else:
                self._receive(got, status, actual, start_frame, npackets, error_count)
        elif command == _RET_UNLINK:
            self._ret_unlink(seq, status)
        else:
            raise ProtocolError(f"unexpected command 0x{command:08x} from server (seqnum {seq})")
        rd.busy = False
        return True

    def _receive(self, urb: Urb, status: int, actual: int, start_frame: int, npackets: int,
                 error_count: int, got: int = 0) -> None:
        """Read the rest of ``urb``'s reply (it is RECEIVING; ``got`` bytes of its data are in
        its buffer already) and end it."""
        rd = self._rd
        dest = urb.buffer
        iso = urb.iso_packets
        if dest is not None and actual > got:
            rd.read_into(dest[got:actual])
        if iso is not None:
            raw = bytearray(npackets * P.ISO_PACKET_SIZE)  # npackets == len(iso) <= MAX_ISO_PACKETS
            rd.read_into(memoryview(raw))
            results = [P.IsoPacket(*_ISO_UNPACK(raw, i * P.ISO_PACKET_SIZE)) for i in range(npackets)]
            for req, res in zip(iso, results):
                if res.actual_length > req.length:
                    raise ProtocolError(f"ISO packet actual_length {res.actual_length} > length {req.length}")
            if dest is not None:
                _spread_iso_in(dest, iso, results, actual)
                urb.in_data = dest[:urb.length]
            urb.iso_results = results
            urb.start_frame = start_frame
        elif dest is not None:
            urb.in_data = dest[:actual]
        urb.actual_length = actual
        urb.error_count = error_count
        self._complete(urb, status)

    def _skip(self, seq: int, gone: Retired, status: int, actual: int, npackets: int) -> None:
        """A late reply to a URB given up on: consume its bytes, deliver nothing."""
        self._rd.skip(retired_skip(gone, actual, npackets))
        _log.warning("%s: late reply to URB %d dropped (status %d, %d bytes): it had already ended "
                     "(unlinked, or given up after the unlink grace)", self.name, seq, status,
                     actual if gone.direction else 0)

    def _ret_unlink(self, seq: int, status: int) -> None:
        with self._lock:
            urb, ended, rtt = self._table.ret_unlink(seq, status, _monotonic())
            if rtt is not None:
                self._rtt.sample(rtt)
                self._rd.stall = self.reply_stall
            callbacks = None
            if ended and urb is not None:
                callbacks = urb._callbacks
                urb._callbacks = None
        if urb is None:
            _log.debug("%s: RET_UNLINK for seqnum %d ignored (no unlink of ours is waiting)", self.name, seq)
            return
        if self.hook is not None:
            self._call_hook(self.hook.urb_unlink_returned, urb, seq, status)
        if ended:
            self._finished(urb, callbacks)

    # -- ending URBs -------------------------------------------------------------------------------------
    def _complete(self, urb: Urb, status: int) -> None:
        """End a PENDING or RECEIVING URB with ``status`` (exactly once: later calls do nothing)."""
        with self._lock:
            if not self._table.finish(urb, status):
                return
            callbacks = urb._callbacks
            urb._callbacks = None
        self._finished(urb, callbacks)

    def _finished(self, urb: Urb, callbacks: Optional[List[DoneCallback]]) -> None:
        """After the transition to DONE (outside the lock): hook, callbacks, waiters."""
        self._finished_all(((urb, callbacks),))

    def _finished_all(self, ended: Iterable[Tuple[Urb, Optional[List[DoneCallback]]]]) -> None:
        """:meth:`_finished` for each URB of ``ended`` in turn (one recv's replies)."""
        hook = self.hook
        outer = getattr(_in_callback, "urb", None)
        try:
            for urb, callbacks in ended:
                urb.complete_time = _time()
                done = urb._done  # (a callback may make the URB new in place: it gets a new lock)
                if hook is not None:
                    self._call_hook(hook.urb_completed, urb)
                if callbacks:
                    _in_callback.urb = urb  # marked as running inside its callback (see _wait)
                    self._run_callbacks(callbacks, urb)
                done.release()
        finally:
            _in_callback.urb = outer

    def _call_back(self, callbacks: List[DoneCallback], urb: Urb) -> None:
        """Run ``urb``'s done callbacks, in order, marked as running inside one (see _wait)."""
        outer = getattr(_in_callback, "urb", None)
        _in_callback.urb = urb
        try:
            self._run_callbacks(callbacks, urb)
        finally:
            _in_callback.urb = outer

    def _run_callbacks(self, callbacks: List[DoneCallback], urb: Urb) -> None:
        for fn in callbacks:
            try:
                fn(urb)
            except Exception:  # a broken callback must never break the engine
                _log.exception("%s: done callback %r of %r failed", self.name, fn, urb)

    def _add_done_callback(self, urb: Urb, fn: DoneCallback) -> None:
        with self._lock:
            if urb.state is not _DONE:
                if urb._callbacks is None:
                    urb._callbacks = [fn]
                else:
                    urb._callbacks.append(fn)
                return
        self._call_back([fn], urb)

    def _unlink(self, urb: Urb, why: EndedBy) -> None:
        """Send a CMD_UNLINK for a PENDING URB (no-op otherwise) and arm its grace; never blocks."""
        if urb.conn is not self:
            raise ValueError(f"{urb!r} belongs to another connection")
        with self._lock:
            seq = self._table.start_unlink(urb, why, _monotonic())
            if not seq:
                return
            urb._grace_end = _INF  # until the CMD_UNLINK is on its way (see _unlink_sent)
        if self.hook is not None:
            # Before the send, as urb_submitted: once CMD_UNLINK is out, the RET_UNLINK (and the
            # URB's end) may be read at once, and a capture must see the unlink first.
            self._call_hook(self.hook.urb_unlink_sent, urb, seq)
        try:
            self._sender.post(_UNLINK_PACK(_CMD_UNLINK, seq, self.devid, urb.direction, urb.endpoint & 0x0F,
                                           urb.seqnum), lambda: self._unlink_sent(urb))
        except OSError as exc:
            self._fail_all(f"send failed: {exc}")

    def _unlink_sent(self, urb: Urb) -> None:
        """A CMD_UNLINK is all on its way: its grace starts now (it may have waited in the send
        queue behind another thread's big OUT payload), and so does its round trip."""
        now = _monotonic()
        with self._lock:
            if self._table.lost:
                return
            urb._unlink_sent = now
            urb._grace_end = now + self.unlink_grace
            self._table.add_timer(urb._grace_end, GRACE, urb)
            # The verdict must be read, and the grace timed, by someone: the reader thread if it
            # sleeps past the grace (or does not watch the socket while nobody leads).
            wake = urb._grace_end < self._r_until or (not self._r_sock and not self._leading)
        if wake:
            self._wake()

    def _grace_over(self, urb: Urb) -> None:
        """No verdict on the URB's unlink in time: give it up (exactly once; a late reply for it
        will be dropped). Called by the timer, or by the leader waiting for it."""
        with self._lock:
            ended = self._table.give_up(urb)
            if ended is None:  # its reply is being read right now: look again later
                self._table.add_timer(_monotonic() + self.unlink_grace, GRACE, urb)
                return
            callbacks = urb._callbacks
            if ended:
                urb._callbacks = None
        if ended:
            _log.debug("%s: URB %d given up: no answer to its CMD_UNLINK within %.3f s; a late reply "
                       "will be dropped", self.name, urb.seqnum, self.unlink_grace)
            self._finished(urb, callbacks)

    def _fail_all(self, reason: str, include_receiving: bool = False, warn: bool = True) -> ConnectionLostError:
        """Mark the connection lost and end every pending URB at once (the URB being received,
        too, if its reader asks). Shuts the socket down, which wakes every blocked recv. Logged at
        ``loss_level``; a loss the program caused itself (``warn=False``: a KeyboardInterrupt
        mid-reply) at debug level only: the interrupted caller knows."""
        with self._lock:
            first = self._lost is None
            if first:
                self._lost = lost_error(self.name, reason)
            lost = self._lost
            assert lost is not None
            victims = self._table.fail_all(include_receiving)
            ends = []
            for urb in victims:
                urb._error = lost
                ends.append((urb, urb._callbacks))
                urb._callbacks = None
        if first:
            if not self._closing:
                _log.log(self.loss_level if warn else logging.DEBUG, "%s", lost)
            try:
                self.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self._wake()
        for urb, callbacks in ends:
            self._finished(urb, callbacks)
        return lost

    def _call_hook(self, fn: Callable[..., None], *args: Any) -> None:
        try:
            fn(*args)
        except Exception:  # a broken observer must never break USB traffic
            _log.exception("%s: capture hook %r failed", self.name, fn)

    # -- the reader thread ------------------------------------------------------------------------------
    def _wake(self) -> None:
        """Make the reader thread look at its work again (any thread; idempotent until it does)."""
        if self._woken:
            return
        self._woken = True
        try:
            self._wake_w.send(b"\0")
        except (BlockingIOError, OSError):
            pass  # full (it will wake anyway) or closed (it is ending)

    def _read_failed(self, exc: BaseException) -> str:
        """Why reading stopped, for _fail_all."""
        if self._closing:
            return "connection closed"
        if isinstance(exc, ProtocolError):
            _log.error("%s: %s; closing the connection", self.name, exc)
            return f"protocol error: {exc}"
        # A relayed transport may know more of why the stream ended (TLS, a command's exit).
        why = closed_reason(self.sock)
        why = f" ({why})" if why else ""
        if isinstance(exc, EOFError):
            return f"server closed the connection{why}"
        if isinstance(exc, OSError):
            return (str(exc) or type(exc).__name__) + why
        return f"{type(exc).__name__}: {exc}"

    def _run(self) -> None:
        reason = "connection closed"
        sock, wake_r, rd, token, sender = self.sock, self._wake_r, self._rd, self._token, self._sender
        poller = _Poller(sock, wake_r)
        # Its own poll object for "anything more?": one select.poll object refuses two concurrent
        # poll() calls, and a leader may be polling through the reader's.
        quick: Any = None
        if _HAVE_POLL:
            quick = select.poll()
            quick.register(sock.fileno(), select.POLLIN | select.POLLPRI)
        seen_leads = -1
        called = False  # woken through the wake socket since it last decided
        backoff = _READER_BACKOFF
        try:
            while True:
                now = _monotonic()
                with self._lock:
                    table = self._table
                    if table.lost:
                        return
                    due = table.due(now)
                    if not due:
                        owed = bool(table.pending or table.unlinks)
                        # A caller reading (or who just read) for its own URBs is likely to go on
                        # (a pipelining wait() loop): leave the socket to it for a moment rather
                        # than take the token between its calls and turn it into a follower.
                        leads = self._leads
                        # Idle, it watches the socket too, so a server that hangs up is noticed
                        # at once (the connection fails, and whoever watches it sees that).
                        # Woken (a follower's unlink, a leader handing over): look now.
                        watch = not self._leading and (called or leads == seen_leads or not owed)
                        seen_leads = leads
                        called = False
                        nxt = table.next_timer()
                        until = _INF if nxt is None else nxt
                        backing_off = False
                        if self._external and self._handoff is None:
                            watch = False  # the loop reads (and notices a hang-up)
                        elif not watch:
                            if owed:
                                pause, backing_off = backoff, True
                                backoff = min(backoff * 2, _READER_BACKOFF_MOST)
                            else:
                                pause = _IDLE_RECHECK
                            if until > now + pause:
                                until = now + pause
                        if not backing_off:
                            backoff = _READER_BACKOFF
                        self._r_sock = watch
                        self._r_until = until
                        self._r_backoff = backing_off
                if due:
                    for kind, urb in due:
                        if kind == DEADLINE:
                            self._unlink(urb, EndedBy.TIMEOUT)
                        else:
                            self._grace_over(urb)
                    continue
                if watch and rd.end > rd.start:
                    readable, writable, woken = True, False, False
                else:
                    readable, writable, woken = poller.wait(
                        watch, sender.tail is not None,
                        None if until == _INF else max(until - _monotonic(), 0.0))
                self._r_sock = False
                self._r_until = 0.0  # awake: wakers need not write to the wake socket
                self._r_backoff = False
                if woken:
                    # Drain first, then say so: a waker that sees _woken still set skips its
                    # byte, but made its change before calling, and the loop re-reads the state.
                    # (_woken lets few bytes through: one recv takes them; any later one makes
                    # the next poll return at once.)
                    try:
                        wake_r.recv(512)
                    except (BlockingIOError, InterruptedError):
                        pass
                    self._woken = False
                    called = True
                if writable:
                    sender.resume()
                if readable and token.acquire(False):
                    try:
                        while not self._table.lost and (
                                rd.end > rd.start or _readable(sock, quick, 0)):
                            self._read_one(None)
                    finally:
                        token.release()
                    handed, self._handoff = self._handoff, None
                    if handed is not None:
                        handed()  # the loop reads again
        except BaseException as exc:
            reason = self._read_failed(exc)
        finally:
            self._fail_all(reason, True)
            self._sender.abandon()


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
