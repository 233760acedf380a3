"""Windowed streaming: a window of URBs in flight on one bulk or interrupt endpoint.

One URB at a time pays a network round trip per chunk; a window of them keeps the wire busy (as
Linux's cdc-acm keeps 16 reads queued, Glasgow 16 transfers of 16 KiB per endpoint). This module
moves large data that way, in both directions, with what Pigweed's pw_transfer adds on top:

* **Adaptive window** (:class:`Window`): it starts at one URB, doubles after each round in
  which every round trip stayed under ``slow`` seconds (slow start), halves on a slow round trip
  or an error, then grows by one URB per round (congestion avoidance), never beyond ``window``
  URBs nor ``budget`` bytes in flight.
* **Chunks of whole packets**: ``chunk`` is rounded down to a multiple of the endpoint's max
  packet size, so only the last URB of a stream can end in a short packet.
* **-EMSGSIZE**: a server that refuses URBs above a size (the ESP32 bridge's default is 4 KiB)
  answers them with -EMSGSIZE and no data. The chunk is halved (whole packets, at least one) and
  the refused ranges sent again, so no byte is lost or repeated. An OUT stream starts with one URB
  in flight, so a refused size is learnt before anything else is queued behind it.
* **Progress** (:class:`Progress`): offset, bytes confirmed, total, rate, window and chunk, to a
  callback at most every ``progress_every`` seconds and once at the end.
* **Resume**: every failure raises :class:`StreamError` whose ``offset`` is where the stream got
  to (counted from its start, ``offset=`` included) and whose ``data`` holds the bytes received
  before that offset that the caller has not been given yet. After a lost connection, import the
  device again and call again with ``offset=err.offset``.

Completion order: USB completes the URBs of one endpoint in submission order, and so does the
engine; IN data is yielded in that order, each chunk a view of its slot in one buffer that the
URB was received into. A yielded view is valid until the next item is asked for (its slot is
then reused): copy it (``bytes(view)``) to keep it.

The planning (:class:`_InPlan`, :class:`_OutPlan`) is shared by the synchronous drivers here and
the asyncio ones in :mod:`usbip_backend.aio`; only the waiting differs.
"""

from __future__ import annotations

import contextlib
import io
import os
import time
from collections import deque
from dataclasses import dataclass
from typing import (
    Any, BinaryIO, Callable, Deque, Iterable, Iterator, List, Optional, Tuple, Union,
)

from . import protocol as P
from .engine import Connection, Urb, flat
from .errors import ConnectionLostError, UrbError, UsbipError

#: Linux's -EMSGSIZE: what a server answers a URB too big for it with.
EMSGSIZE = -90
#: Most bytes a stream keeps in flight by default (``budget``).
DEFAULT_BUDGET = 4 * 1024 * 1024
#: Default round trip above which the window halves (``slow``).
DEFAULT_SLOW = 0.5
#: How often progress is reported at most by default (``progress_every``).
DEFAULT_PROGRESS_EVERY = 0.1
#: How long cleaning up after a failure waits for each cancelled URB.
CANCEL_WAIT = 1.0

_BULK = P.TransferType.BULK
_INTERRUPT = P.TransferType.INTERRUPT

Source = Union[bytes, bytearray, memoryview, BinaryIO, Iterable[bytes], Any]


@dataclass(frozen=True)
class Progress:
    """Where a stream is: what a progress callback receives."""

    offset: int  #: bytes of the stream done, counted from its start (a resume's offset included)
    confirmed: int  #: bytes this call has moved (the server confirmed them)
    total: Optional[int]  #: the stream's whole length (from its start), if known
    rate: float  #: bytes per second this call has moved, on average
    elapsed: float  #: seconds since this call began
    window: int  #: URBs the window allows in flight now
    chunk: int  #: bytes per URB now

    @property
    def percent(self) -> Optional[float]:
        """0..100 when the total is known."""
        if not self.total:
            return None
        return 100.0 * self.offset / self.total

    @property
    def eta(self) -> Optional[float]:
        """Seconds left at the current rate, when the total is known."""
        if self.total is None or self.rate <= 0:
            return None
        return max(self.total - self.offset, 0) / self.rate


ProgressCallback = Callable[[Progress], None]


class StreamError(UsbipError):
    """A stream stopped early.

    Attributes:
        offset: where the stream got to, from its start (resume with ``offset=``).
        data: bytes received before ``offset`` that were not yielded yet (IN streams; write
            them before resuming). Empty for OUT streams.
        cause: the error that stopped it (also ``__cause__``).
    """

    def __init__(self, message: str, *, offset: int, data: bytes = b"",
                 cause: Optional[BaseException] = None) -> None:
        super().__init__(message)
        self.offset = offset
        self.data = data
        self.cause = cause

    @property
    def connection_lost(self) -> bool:
        """True when the connection went away (import again, then resume)."""
        return isinstance(self.cause, ConnectionLostError)


class Window:
    """pw_transfer's adaptive window, counted in URBs.

    Args:
        limit: most URBs in flight.
        start: URBs in flight at first.
        adaptive: False keeps ``limit`` in flight from the start.
    """

    def __init__(self, limit: int, start: int = 1, adaptive: bool = True) -> None:
        if limit < 1:
            raise ValueError(f"window must be at least 1 URB, not {limit}")
        self.limit = limit
        self.size = min(max(start, 1), limit) if adaptive else limit
        self.adaptive = adaptive
        self.slow_start = True
        self._round = 0  # completions since the size last changed
        self._slow = False

    def completed(self, slow: bool) -> None:
        """One URB ended well; ``slow``: its round trip was too long."""
        if not self.adaptive:
            return
        if slow:
            self._shrink()
            return
        self._round += 1
        if self._round >= self.size:
            self._round = 0
            grown = self.size * 2 if self.slow_start else self.size + 1
            self.size = min(self.limit, grown)

    def failed(self) -> None:
        """A URB ended in an error the stream recovers from."""
        if self.adaptive:
            self._shrink()

    def _shrink(self) -> None:
        self.slow_start = False
        self._round = 0
        self.size = max(1, self.size // 2)


def whole_packets(chunk: int, max_packet: int) -> int:
    """``chunk`` rounded down to whole packets (at least one packet)."""
    if max_packet <= 0:
        return max(chunk, 1)
    return max(max_packet, chunk // max_packet * max_packet)


@dataclass
class Pipe:
    """What a stream needs to know of its endpoint."""

    conn: Connection
    endpoint: int
    transfer_type: P.TransferType = _BULK
    max_packet: int = 512
    interval: int = 0
    name: str = ""

    def describe(self) -> str:
        return f"{self.transfer_type.name.lower()} endpoint 0x{self.endpoint:02x} of {self.name or self.conn.name}"


def pipe_of(device: Any, endpoint: int) -> Pipe:
    """A :class:`Pipe` for ``endpoint`` of a device-layer :class:`~usbip_backend.device.Device`
    or of a PyUSB ``usb.core.Device`` found through this package's backend."""
    from .descriptors import endpoint_max_packet
    from .device import Device

    dev = device
    if not isinstance(dev, Device):
        ctx = getattr(device, "_ctx", None)
        dev = getattr(ctx, "dev", None)
        if not isinstance(dev, Device):
            raise TypeError(f"{device!r} is neither a usbip_backend Device nor a PyUSB device of its backend")
    desc = dev.endpoint(endpoint)
    if desc is None:
        raise ValueError(f"no endpoint 0x{endpoint:02x} in the configurations of {dev.name}")
    ttype = P.transfer_type_from_attributes(desc.bmAttributes)
    if ttype not in (_BULK, _INTERRUPT):
        raise ValueError(f"endpoint 0x{endpoint:02x} of {dev.name} is {ttype.name.lower()}: "
                         "streams run on bulk and interrupt endpoints")
    return Pipe(dev.conn, endpoint, ttype, endpoint_max_packet(desc), dev.interval(ttype, desc), dev.name)


class _Meter:
    """Progress accounting and the rate-limited callback."""

    def __init__(self, start: int, total: Optional[int], callback: Optional[ProgressCallback],
                 every: float) -> None:
        self.start = start
        self.total = total
        self.callback = callback
        self.every = every
        self.confirmed = 0
        self.began = time.monotonic()
        self._next = self.began + every

    @property
    def offset(self) -> int:
        return self.start + self.confirmed

    def add(self, n: int, window: Window, chunk: int) -> None:
        self.confirmed += n
        if self.callback is not None:
            now = time.monotonic()
            if now >= self._next:
                self._next = now + self.every
                self.report(window, chunk, now)

    def snapshot(self, window: Window, chunk: int, now: Optional[float] = None) -> Progress:
        elapsed = (time.monotonic() if now is None else now) - self.began
        return Progress(self.offset, self.confirmed, self.total,
                        self.confirmed / elapsed if elapsed > 0 else 0.0, elapsed, window.size, chunk)

    def report(self, window: Window, chunk: int, now: Optional[float] = None) -> Progress:
        progress = self.snapshot(window, chunk, now)
        if self.callback is not None:
            self.callback(progress)
        return progress


def _check_args(chunk: int, window: int, budget: int, offset: int, total: Optional[int]) -> None:
    if chunk < 1:
        raise ValueError(f"chunk must be at least 1 byte, not {chunk}")
    if window < 1:
        raise ValueError(f"window must be at least 1 URB, not {window}")
    if budget < 1:
        raise ValueError(f"budget must be at least 1 byte, not {budget}")
    if offset < 0:
        raise ValueError(f"offset must not be negative, not {offset}")
    if total is not None and total < offset:
        raise ValueError(f"total {total} is before the offset {offset}")


class _Plan:
    """What both directions' plans keep: the pipe, the chunk (whole packets), the window (also
    bounded by the byte budget), the timers' settings, the progress meter, and ``slots`` slot
    buffers of the first chunk's size (the chunk may shrink, the slots stay put)."""

    def __init__(self, pipe: Pipe, total: Optional[int], chunk: int, window: int,
                 progress: Optional[ProgressCallback], offset: int, timeout: Optional[float],
                 adaptive: bool, budget: int, slow: float, progress_every: float, block: bool,
                 slots: bool) -> None:
        _check_args(chunk, window, budget, offset, total)
        self.pipe = pipe
        self.chunk = whole_packets(chunk, pipe.max_packet)
        limit = max(1, min(window, budget // self.chunk))
        self.window = Window(limit, 1, adaptive)
        self.timeout = timeout
        self.slow = slow
        self.block = block
        self.meter = _Meter(offset, total, progress, progress_every)
        self.stride = self.chunk
        self.buffer = memoryview(bytearray(limit * self.stride if slots else 0))
        self.free: List[int] = list(range(limit - 1, -1, -1)) if slots else []


class _InPlan(_Plan):
    """An IN stream's state: slots, URBs in flight, what each completion means."""

    def __init__(self, pipe: Pipe, total: Optional[int], chunk: int, window: int, until_short: bool,
                 progress: Optional[ProgressCallback], offset: int, timeout: Optional[float],
                 adaptive: bool, budget: int, slow: float, progress_every: float, block: bool) -> None:
        super().__init__(pipe, total, chunk, window, progress, offset, timeout, adaptive, budget, slow,
                         progress_every, block, True)
        self.until_short = until_short
        self.remaining = None if total is None else total - offset  # not yet asked for
        self.lent: Optional[int] = None  # the slot the caller holds a view of
        self.flight: Deque[Tuple[Urb, int, int]] = deque()  # (urb, slot, size)
        # each slot's last URB: made again in place when the slot is refilled with as much
        # (the plan is the only holder of its URBs once settled)
        self.slot_urbs: List[Optional[Urb]] = [None] * len(self.free)
        self.proven = 0  # the largest URB the server has accepted
        self.ended = False

    def fill(self) -> None:
        """Submit URBs until the window is full or nothing more is to be asked for, all of them
        in one send: once a quarter of the window is free while the head URB is on its way (the
        caller is about to wait: the server gets work first), half of it while the head has
        ended (replies read together are consumed together, and go out again together: each
        send wakes the server)."""
        pipe, flight, window = self.pipe, self.flight, self.window
        if flight and window.size - len(flight) < window.size // (2 if flight[0][0].done() else 4):
            return
        try:
            self._fill()
        finally:
            pipe.conn.flush()

    def _fill(self) -> None:
        pipe, flight, window = self.pipe, self.flight, self.window
        while not self.ended and len(flight) < window.size and self.free:
            size = self.chunk if self.remaining is None else min(self.chunk, self.remaining)
            if size <= 0:
                return
            if size < self.chunk and any(sz > self.proven for _, _, sz in flight):
                # A tail sized now would be wrong if a URB ahead of it is refused (-EMSGSIZE):
                # the device would put later data into it. Size it once they have all ended.
                return
            slot = self.free.pop()
            start = slot * self.stride
            last = self.slot_urbs[slot]
            try:
                if last is not None and last.length == size and last.done():
                    urb = pipe.conn.resubmit(last, timeout=self.timeout, block=False, flush=False,
                                             in_place=True)
                else:
                    urb = pipe.conn.submit(pipe.transfer_type, pipe.endpoint,
                                           buffer=self.buffer[start:start + size], interval=pipe.interval,
                                           timeout=self.timeout, block=False, flush=False)
            except UsbipError as exc:
                self.free.append(slot)
                raise self.error(exc, b"") from exc
            self.slot_urbs[slot] = urb
            if self.remaining is not None:
                self.remaining -= size
            flight.append((urb, slot, size))

    def give_back(self) -> None:
        """The caller is done with the last view: its slot may be reused."""
        if self.lent is not None:
            self.free.append(self.lent)
            self.lent = None

    def settle(self) -> Optional[memoryview]:
        """The head URB has ended: its data (a view), or None when it brought nothing to yield.

        Raises:
            StreamError: the stream cannot go on (the caller then cancels what is in flight).
        """
        urb, slot, size = self.flight.popleft()
        status = urb.status
        n = urb.actual_length
        if status != 0:
            if self.remaining is not None:
                self.remaining += size - n
            if status == EMSGSIZE and n == 0 and self.shrink(size):
                self.free.append(slot)
                return None
            start = slot * self.stride
            self.free.append(slot)
            raise self.error(urb.exception(), bytes(self.buffer[start:start + n]))
        slow = urb.complete_time - urb.submit_time > self.slow
        self.window.completed(slow)
        if size > self.proven:
            self.proven = size
        if n < size:
            if self.remaining is not None:
                self.remaining += size - n
            if self.until_short:
                self.ended = True
        self.meter.add(n, self.window, self.chunk)
        if not n:
            self.free.append(slot)
            return None
        self.lent = slot
        start = slot * self.stride
        return self.buffer[start:start + n]

    def shrink(self, refused: int) -> bool:
        """A URB of ``refused`` bytes got -EMSGSIZE: a smaller chunk, if there is one."""
        self.window.failed()
        if refused > self.chunk:
            return True  # submitted before the chunk shrank already
        smaller = whole_packets(refused // 2, self.pipe.max_packet)
        if smaller >= refused:
            return False
        self.chunk = smaller
        return True

    @property
    def done(self) -> bool:
        return self.ended or (not self.flight and self.remaining == 0)

    def error(self, exc: Optional[BaseException], data: bytes) -> StreamError:
        offset = self.meter.offset + len(data)
        return StreamError(f"IN stream on {self.pipe.describe()} stopped at byte {offset}: {exc}",
                           offset=offset, data=data, cause=exc)

    def leftovers(self) -> bytes:
        """Data the URBs still in flight brought before they were cancelled (they have ended)."""
        out = bytearray()
        for urb, slot, _ in self.flight:
            if urb.actual_length and urb.done():
                start = slot * self.stride
                out += self.buffer[start:start + urb.actual_length]
        return bytes(out)


class InStream:
    """Iterator over an IN stream's chunks (see :func:`stream_in`); also a context manager.

    Attributes:
        offset: bytes of the stream yielded so far, from its start.
        leftover: with ``until_short``, bytes URBs queued behind the short one had received
            before they were cancelled (the device's next transfer): not lost, kept here.
    """

    def __init__(self, plan: _InPlan) -> None:
        self._plan = plan
        self.leftover = b""
        self._closed = False

    @property
    def offset(self) -> int:
        return self._plan.meter.offset

    @property
    def window(self) -> Window:
        return self._plan.window

    @property
    def chunk(self) -> int:
        return self._plan.chunk

    def progress(self) -> Progress:
        """Where the stream is now."""
        plan = self._plan
        return plan.meter.snapshot(plan.window, plan.chunk)

    def __iter__(self) -> "InStream":
        return self

    def __next__(self) -> memoryview:
        plan = self._plan
        if self._closed:
            raise StopIteration
        plan.give_back()
        try:
            while True:
                plan.fill()
                if plan.done:
                    self._finish()
                    raise StopIteration
                _wait_quietly(plan.flight[0][0], None)
                view = plan.settle()
                if view is not None:
                    return view
        except StreamError:
            self._abort()
            raise

    def _finish(self) -> None:
        plan = self._plan
        if not self._closed:
            self._closed = True
            self._cancel()
            self.leftover = plan.leftovers()
            plan.meter.report(plan.window, plan.chunk)

    def _cancel(self) -> None:
        flight = self._plan.flight
        for urb, _, _ in flight:
            urb.cancel()
        for urb, _, _ in flight:
            _wait_quietly(urb, CANCEL_WAIT)

    def _abort(self) -> None:
        self._closed = True
        self._cancel()
        self._plan.flight.clear()
        self._plan.meter.report(self._plan.window, self._plan.chunk)

    def close(self) -> None:
        """Stop: cancel the URBs in flight and wait for them (their data goes to ``leftover``)."""
        self._finish()

    def __enter__(self) -> "InStream":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def stream_in(device: Any, endpoint: int, total: Optional[int] = None, *, chunk: int = 16384,
              window: int = 16, until_short: bool = False, progress: Optional[ProgressCallback] = None,
              offset: int = 0, timeout: Optional[float] = None, adaptive: bool = True,
              budget: int = DEFAULT_BUDGET, slow: float = DEFAULT_SLOW,
              progress_every: float = DEFAULT_PROGRESS_EVERY) -> InStream:
    """Read an IN endpoint with a window of URBs in flight; iterate for the data, in order.

    Args:
        device: a :class:`~usbip_backend.device.Device`, a PyUSB device of this package's
            backend, or a :class:`Pipe`.
        endpoint: the IN endpoint address (bulk or interrupt).
        total: the stream's length from its start (``offset`` included); None reads until
            ``until_short`` ends it, an error, or :meth:`InStream.close`.
        chunk: bytes per URB (rounded down to whole packets).
        window: most URBs in flight (also bounded by ``budget`` bytes).
        until_short: end at the first short (or zero-length) packet, like nusb's
            ``until_short_packet``.
        progress: called with a :class:`Progress` every ``progress_every`` s and at the end.
        offset: where this call starts (resuming a stream: progress counts from it).
        timeout: seconds per URB (None waits forever); a timeout ends the stream.
        adaptive: False puts ``window`` URBs in flight at once instead of growing to it.

    Raises:
        StreamError: from the iteration, for any failure (see the module docstring).
    """
    pipe = device if isinstance(device, Pipe) else pipe_of(device, endpoint)
    if not pipe.endpoint & 0x80:
        raise ValueError(f"endpoint 0x{pipe.endpoint:02x} is an OUT endpoint: use stream_out")
    return InStream(_InPlan(pipe, total, chunk, window, until_short, progress, offset, timeout,
                            adaptive, budget, slow, progress_every, True))


# -- OUT ---------------------------------------------------------------------------------------------
class _Feed:
    """The OUT data as pieces of at most ``chunk`` bytes, from a buffer (no copy), a binary file
    (read into slot buffers) or an iterable of byte strings; refused pieces come back first."""

    def __init__(self, source: Source, offset: int) -> None:
        self.view: Optional[memoryview] = None
        self.file: Any = None
        self.iterator: Optional[Iterator[Any]] = None
        self.carry = memoryview(b"")
        self.again: Deque[memoryview] = deque()  # refused pieces, to send before anything new
        self.total: Optional[int] = None
        self.at = 0  # bytes taken from a buffer source
        if isinstance(source, (bytes, bytearray, memoryview)):
            self.view = flat(source)
            if offset > self.view.nbytes:
                raise ValueError(f"offset {offset} is beyond the {self.view.nbytes} bytes given")
            self.at = offset
            self.total = self.view.nbytes
        elif hasattr(source, "readinto") or hasattr(source, "read"):
            self.file = source
            source = self.file
            if offset:
                source.seek(offset)
            try:
                self.total = os.fstat(source.fileno()).st_size
            except (AttributeError, OSError, io.UnsupportedOperation):
                self.total = None
        else:
            self.iterator = iter(source)
            if offset:
                self._skip(offset)

    def _skip(self, count: int) -> None:
        while count > 0:
            piece = self._next_piece(count)
            if piece is None:
                raise ValueError(f"offset is beyond the end of the data ({count} bytes short)")
            count -= piece.nbytes

    def _next_piece(self, most: int) -> Optional[memoryview]:
        assert self.iterator is not None
        while not self.carry.nbytes:
            try:
                self.carry = flat(next(self.iterator))
            except StopIteration:
                return None
        piece, self.carry = self.carry[:most], self.carry[most:]
        return piece

    def take(self, size: int, slot: memoryview) -> Optional[memoryview]:
        """The next piece of at most ``size`` bytes (None at the end); ``slot`` is where a copy
        may go (files and iterables)."""
        if self.again:
            head = self.again.popleft()
            if head.nbytes > size:
                self.again.appendleft(head[size:])
                head = head[:size]
            return head
        if self.view is not None:
            if self.at >= self.view.nbytes:
                return None
            chunk = self.view[self.at:self.at + size]
            self.at += chunk.nbytes
            return chunk
        if self.file is not None:
            target = slot[:size]
            got = 0
            while got < size:
                if hasattr(self.file, "readinto"):
                    n = self.file.readinto(target[got:])
                else:
                    data = self.file.read(size - got)
                    n = len(data) if data else 0
                    target[got:got + n] = data
                if not n:
                    break
                got += n
            return target[:got] if got else None
        # an iterable: gather pieces into the slot until it is full
        got = 0
        while got < size:
            piece = self._next_piece(size - got)
            if piece is None:
                break
            slot[got:got + piece.nbytes] = piece
            got += piece.nbytes
        return slot[:got] if got else None


class _OutPlan(_Plan):
    """An OUT stream's state (see :func:`stream_out`)."""

    def __init__(self, pipe: Pipe, source: Source, chunk: int, window: int,
                 progress: Optional[ProgressCallback], offset: int, timeout: Optional[float],
                 adaptive: bool, budget: int, slow: float, progress_every: float, block: bool,
                 total: Optional[int]) -> None:
        self.feed = _Feed(source, offset)
        # A buffer is sent from where it is; files and iterables are copied into slots.
        super().__init__(pipe, total if total is not None else self.feed.total, chunk, window, progress,
                         offset, timeout, adaptive, budget, slow, progress_every, block,
                         self.feed.view is None)
        self.flight: Deque[Tuple[Urb, int, memoryview]] = deque()  # (urb, slot or -1, piece)
        self.exhausted = False

    def fill(self) -> None:
        pipe, flight, window = self.pipe, self.flight, self.window
        while not self.exhausted and len(flight) < window.size:
            slot = -1
            if self.free:
                slot = self.free.pop()
                room = self.buffer[slot * self.stride:(slot + 1) * self.stride]
            elif self.feed.view is None and not self.feed.again:
                return  # every slot is in flight
            else:
                room = memoryview(b"")
            piece = self.feed.take(self.chunk, room)
            if piece is None:
                if slot >= 0:
                    self.free.append(slot)
                self.exhausted = True
                return
            try:
                urb = pipe.conn.submit(pipe.transfer_type, pipe.endpoint, data=piece,
                                       interval=pipe.interval, timeout=self.timeout, block=self.block)
            except UsbipError as exc:
                if slot >= 0:
                    self.free.append(slot)
                raise self.error(exc) from exc
            flight.append((urb, slot, piece))

    def settle(self) -> None:
        """The head URB has ended: account for it, or requeue what a refusal sent back.

        Raises:
            StreamError: the stream cannot go on.
        """
        urb, slot, piece = self.flight[0]
        status = urb.status
        if self.refused() and self._requeue(piece.nbytes):
            return
        self.flight.popleft()
        if slot >= 0:
            self.free.append(slot)
        if status != 0:
            self.meter.confirmed += urb.actual_length
            raise self.error(urb.exception())
        n = urb.actual_length
        self.window.completed(urb.complete_time - urb.submit_time > self.slow)
        self.meter.add(n, self.window, self.chunk)
        if n < piece.nbytes:
            raise self.error(UrbError(f"short write: the device took {n} of {piece.nbytes} bytes",
                                      status=0, transferred=n))

    def refused(self) -> bool:
        """The head URB was refused with -EMSGSIZE: the driver must let every URB in flight end
        before :meth:`settle` (so it knows whether anything was written out of order)."""
        urb = self.flight[0][0]
        return urb.status == EMSGSIZE and urb.actual_length == 0

    def _requeue(self, size: int) -> bool:
        """After a refusal: if everything behind the head ended refused too (so nothing was
        written out of order), shrink and send all of it again."""
        if not all(u.done() and u.status == EMSGSIZE and u.actual_length == 0 for u, _, _ in self.flight):
            return False
        self.window.failed()
        if size <= self.chunk:
            smaller = whole_packets(size // 2, self.pipe.max_packet)
            if smaller >= size:
                return False
            self.chunk = smaller
        pieces = [bytes(piece) if slot >= 0 else piece for _, slot, piece in self.flight]
        for _, slot, _ in self.flight:
            if slot >= 0:
                self.free.append(slot)
        self.flight.clear()
        self.feed.again.extendleft(memoryview(p) for p in reversed(pieces))
        return True

    @property
    def done(self) -> bool:
        return self.exhausted and not self.flight

    def error(self, exc: Optional[BaseException]) -> StreamError:
        offset = self.meter.offset
        return StreamError(f"OUT stream on {self.pipe.describe()} stopped at byte {offset}: {exc}",
                           offset=offset, cause=exc)


def stream_out(device: Any, endpoint: int, data: Source, *, chunk: int = 16384, window: int = 16,
               progress: Optional[ProgressCallback] = None, offset: int = 0,
               timeout: Optional[float] = None, adaptive: bool = True, budget: int = DEFAULT_BUDGET,
               slow: float = DEFAULT_SLOW, progress_every: float = DEFAULT_PROGRESS_EVERY,
               total: Optional[int] = None) -> Progress:
    """Write ``data`` to an OUT endpoint with a window of URBs in flight; returns the final
    :class:`Progress`.

    Args:
        data: a buffer (sent without copying), a binary file (read into slot buffers as the
            window drains) or an iterable of byte strings (gathered into whole chunks).
        offset: resume: skip this many bytes of ``data`` (a file is seeked to it); progress
            counts from it.
        total: the stream's length from its start, for progress (found for buffers and files).
        Others as :func:`stream_in`.

    Raises:
        StreamError: for any failure; its ``offset`` is the first byte not confirmed.
    """
    pipe = device if isinstance(device, Pipe) else pipe_of(device, endpoint)
    if pipe.endpoint & 0x80:
        raise ValueError(f"endpoint 0x{pipe.endpoint:02x} is an IN endpoint: use stream_in")
    plan = _OutPlan(pipe, data, chunk, window, progress, offset, timeout, adaptive, budget, slow,
                    progress_every, True, total)
    try:
        while True:
            plan.fill()
            if plan.done:
                return plan.meter.report(plan.window, plan.chunk)
            _wait_quietly(plan.flight[0][0], None)
            if plan.refused():
                for urb, _, _ in plan.flight:
                    _wait_quietly(urb, None)
            plan.settle()
    except BaseException:
        for urb, _, _ in plan.flight:
            urb.cancel()
        for urb, _, _ in plan.flight:
            _wait_quietly(urb, CANCEL_WAIT)
        plan.meter.report(plan.window, plan.chunk)
        raise


def _wait_quietly(urb: Urb, timeout: Optional[float]) -> None:
    try:
        urb.wait(timeout)
    except UsbipError:
        pass  # the plan reads the status


@contextlib.contextmanager
def opened(file: Any, offset: int = 0, *, writing: bool) -> Iterator[Any]:
    """The file a stream reads from or writes into: a file object as given (flushed at the end
    when written), or a path opened here and closed at the end: for reading, or for writing
    after its first ``offset`` bytes (what follows them is cut off: a resume appends)."""
    if not isinstance(file, (str, os.PathLike)):
        try:
            yield file
        finally:
            if writing:
                file.flush()
        return
    f: BinaryIO
    if not writing:
        f = open(file, "rb")
    elif offset:
        f = open(file, "r+b")
        f.seek(offset)
        f.truncate()
    else:
        f = open(file, "wb")
    with f:
        yield f


def read_into_file(device: Any, endpoint: int, file: Union[str, "os.PathLike[str]", BinaryIO],
                   total: Optional[int] = None, **kwargs: Any) -> Progress:
    """:func:`stream_in` into a file (a path, or a binary file open for writing); returns the
    final progress. With ``offset=N`` a path is truncated to N bytes and appended to.

    Raises:
        StreamError: as :func:`stream_in`; bytes received before its ``offset`` are written
            first, so the file holds exactly ``offset`` bytes and a resume appends to it.
    """
    with opened(file, kwargs.get("offset", 0), writing=True) as f:
        stream = stream_in(device, endpoint, total, **kwargs)
        try:
            for view in stream:
                f.write(view)
        except StreamError as exc:
            f.write(exc.data)
            raise
        return stream.progress()


def write_from_file(device: Any, endpoint: int, file: Union[str, "os.PathLike[str]", BinaryIO],
                    **kwargs: Any) -> Progress:
    """:func:`stream_out` from a file (a path, or a binary file open for reading)."""
    with opened(file, writing=False) as f:
        return stream_out(device, endpoint, f, **kwargs)


__all__ = [
    "stream_in", "stream_out", "read_into_file", "write_from_file", "InStream", "Progress",
    "StreamError", "Window", "Pipe", "pipe_of", "whole_packets", "EMSGSIZE", "DEFAULT_BUDGET",
]
