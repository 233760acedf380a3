"""The URB record: what was asked, how it ended, and the one way it gets there.

A :class:`Urb` moves through four states, each change made by :class:`~.connection.Connection`
under its lock (the table, :mod:`.table`, decides which change a reply means)::

    NEW --submit--> PENDING --RET_SUBMIT header--> RECEIVING --payload read--> DONE
                       |                                                         ^
                       +-- RET_UNLINK / unlink grace over / connection lost -----+

``RECEIVING`` belongs to whoever holds the read token and is reading the reply: nothing else may
end the URB meanwhile (a half-read reply must be read to its end, or the stream is lost). Once
``DONE``, the result (``status``, ``actual_length``, ``in_data``, ``iso_results``) never changes:
a reply that arrives for a URB already given up on is read into scratch space and dropped.
"""

from __future__ import annotations

import enum
import threading
from typing import TYPE_CHECKING, Callable, List, Optional

from .. import protocol as P
from ..errors import (
    ConnectionLostError, LinuxErrno, UrbCancelledError, UrbError, UsbipError, UsbipTimeoutError, describe_status,
)

if TYPE_CHECKING:  # pragma: no cover
    from .connection import Connection

ECONNRESET = -LinuxErrno.ECONNRESET
ESHUTDOWN = -LinuxErrno.ESHUTDOWN

#: A done callback: called once with the URB, when it is done.
DoneCallback = Callable[["Urb"], None]


class UrbState(enum.IntEnum):
    """Where a URB is in its life (see the module docstring)."""

    NEW = 0  #: built, not yet submitted
    PENDING = 1  #: CMD_SUBMIT sent (or being sent); waiting for the reply
    RECEIVING = 2  #: the reply is being read; only its reader may end the URB
    DONE = 3  #: ended; the result is frozen


class EndedBy(enum.IntEnum):
    """Why a URB was unlinked, which decides the error it raises when the unlink wins."""

    REPLY = 0  #: not unlinked
    TIMEOUT = 1  #: its timeout expired (UsbipTimeoutError)
    CANCEL = 2  #: its owner cancelled it (UrbCancelledError)


_NEW, _PENDING, _RECEIVING, _DONE = UrbState.NEW, UrbState.PENDING, UrbState.RECEIVING, UrbState.DONE
# (a module global: an enum member looked up on its class costs ten times as much, per URB)
_NOT_UNLINKED = EndedBy.REPLY


class Urb:
    """One USB request block. Attributes are read-only for users and hooks.

    ``status`` is None until the URB is done, then 0 or a negative Linux errno: the RET_SUBMIT's
    status, -104 (-ECONNRESET) when an unlink ended it, -108 (-ESHUTDOWN) when the connection
    was lost. ``in_data`` is a view of the caller's buffer holding what an IN URB received.
    """

    __slots__ = (
        "conn", "seqnum", "devid", "busnum", "devnum", "transfer_type", "endpoint", "direction",
        "setup", "transfer_flags", "length", "interval", "start_frame", "out_data", "iso_packets",
        "buffer", "submit_time", "status", "actual_length", "in_data", "iso_results",
        "error_count", "complete_time", "submit_failed", "state", "timeout",
        "_done", "_callbacks", "_unlink_seqnum", "_unlink_sent", "_grace_end", "_ended_by",
        "_error", "_led", "_abandoned", "_verdict",
    )

    def __init__(self, conn: "Connection", transfer_type: P.TransferType, endpoint: int, direction: int,
                 setup: Optional[bytes], length: int, interval: int, data: memoryview,
                 transfer_flags: int = 0) -> None:
        self.conn = conn
        self.devid = conn.devid
        self.busnum = conn.busnum
        self.devnum = conn.devnum
        self.transfer_type = transfer_type
        self.endpoint = endpoint
        self.direction = direction
        self.setup = setup
        self.transfer_flags = transfer_flags
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
        self.state = _NEW
        #: seconds the URB was given (submit(timeout=) or the wait() that timed it out), for errors
        self.timeout: Optional[float] = None
        self._done = threading.Lock()  # held until DONE: the cheapest waitable primitive
        self._done.acquire()
        self._callbacks: Optional[List[DoneCallback]] = None
        self._unlink_seqnum = 0
        self._unlink_sent = 0.0
        self._grace_end = 0.0
        self._ended_by = _NOT_UNLINKED
        self._error: Optional[UsbipError] = None
        self._led = False  # wait() has read the socket for it once already
        self._abandoned = False  # its unlink got no verdict within the grace
        self._verdict: Optional[int] = None  # the status its RET_UNLINK carried

    def _renew(self) -> None:
        """Back to NEW for :meth:`Connection.resubmit` in place (the caller knows nobody else
        looks at the ended life; its timers tell the lives apart by seqnum)."""
        self.status = None
        self.actual_length = 0
        self.in_data = None
        self.iso_results = None
        self.error_count = 0
        self.complete_time = 0.0
        self.start_frame = 0
        self.submit_failed = False
        self.state = _NEW
        self.timeout = None
        if not self._done.acquire(False):
            # Still held: renewed from a done callback, before the last life's waiters were let
            # go (they hold the old lock). Free: nobody waits on the last life any more.
            self._done = threading.Lock()
            self._done.acquire()
        self._error = None
        self._led = False

    def __repr__(self) -> str:
        return (f"<Urb seq={self.seqnum} {self.transfer_type.name.lower()} ep=0x{self.endpoint:02x} "
                f"len={self.length} {self.state.name.lower()} status={self.status} "
                f"actual={self.actual_length}>")

    # -- completion ------------------------------------------------------------------------------
    def done(self) -> bool:
        """True once the URB has ended (its result is final)."""
        return self.state is _DONE

    def wait(self, timeout: Optional[float] = None) -> "Urb":
        """Wait for the URB to end and return it; ``None`` or ``0`` waits forever.

        If nobody is reading the socket, the calling thread reads the reply itself. When
        ``timeout`` expires, a CMD_UNLINK is sent and the wait goes on until the server's verdict
        (or the connection's unlink grace) ends the URB: data that won the race is delivered.

        Raises:
            UsbipTimeoutError: it timed out (this wait's timeout or its submit timeout).
            UrbCancelledError: :meth:`cancel` ended it.
            UrbError: it completed with a non-zero status.
            ConnectionLostError: the connection went away.
        """
        if self.state is not _DONE:
            self.conn._wait(self, timeout)
        return self.result()

    def result(self) -> "Urb":
        """The URB if it completed with status 0; else raise its error (see :meth:`wait`).

        Raises:
            RuntimeError: it is not done yet.
        """
        if self.status == 0:
            return self
        raise self._exception()

    def exception(self) -> Optional[UsbipError]:
        """None if it completed with status 0, else the error :meth:`result` raises."""
        if self.status == 0:
            return None
        return self._exception()

    def _exception(self) -> UsbipError:
        if self.state is not _DONE:
            raise RuntimeError(f"{self!r} is not done yet")
        error = self._error
        if error is None:
            error = self._error = self._make_error()
        return error

    def _make_error(self) -> UsbipError:
        status = self.status
        assert status is not None
        where = f"URB {self.seqnum} to endpoint 0x{self.endpoint:02x} of {self.conn.name}"
        ended_by = self._ended_by
        if ended_by is EndedBy.TIMEOUT:
            after = f" after {self.timeout:g} s" if self.timeout else ""
            return UsbipTimeoutError(f"{where} timed out{after} ({self._unlink_verdict(status)})",
                                     transferred=self.actual_length)
        if ended_by is EndedBy.CANCEL:
            return UrbCancelledError(f"{where} was cancelled ({self._unlink_verdict(status)})",
                                     transferred=self.actual_length, status=status)
        return UrbError(f"{where} failed: {describe_status(status)}", status=status,
                        transferred=self.actual_length)

    def _unlink_verdict(self, status: int) -> str:
        if self.submit_failed:
            return "its CMD_SUBMIT never reached the server"
        if self._abandoned:
            return "CMD_UNLINK sent, no answer within the unlink grace; a late reply will be dropped"
        if self._verdict is None:
            return f"status {status}"
        return f"CMD_UNLINK answered, status {self._verdict}"

    def add_done_callback(self, fn: DoneCallback) -> None:
        """Call ``fn(urb)`` once the URB is done: at once (on this thread) if it already is, else
        on the thread that ends it (usually the connection's reader thread, or a thread reading
        its own reply). Also for failed, timed-out and cancelled URBs. An exception from ``fn``
        is logged, never raised into the engine. Keep it short: replies wait while it runs."""
        self.conn._add_done_callback(self, fn)

    def cancel(self) -> None:
        """Ask the server to unlink this URB; it then ends with :class:`UrbCancelledError` unless
        its reply won the race. Returns at once, from any thread (it never waits for the send
        lock); a no-op if the URB is done, not yet submitted, or already being unlinked."""
        self.conn._unlink(self, EndedBy.CANCEL)


def lost_error(conn_name: str, reason: str) -> ConnectionLostError:
    """The error every URB of a lost connection ends with."""
    return ConnectionLostError(f"{conn_name}: connection lost ({reason})")
