"""What each reply means: seqnums, the URBs in flight, unlinks, and the engine's deadlines.

Pure, in the manner of h11: no sockets, no threads, no clock. The connection holds one lock
around every call, passes the time in, and does whatever I/O the answer asks for. Every table is
bounded: a URB is in ``pending`` until it ends, each URB has at most one unlink, ``retired`` keeps
the last :data:`RETIRED_LIMIT` seqnums given up on, and stale timers are swept out.

The unlink rules (kernel ``Documentation/usb/usbip_protocol.rst``, "USBIP_CMD_UNLINK" and
"USBIP_RET_UNLINK", and how Linux's vhci treats them in ``vhci_rx.c``):

* a RET_UNLINK ends its URB if the URB's RET_SUBMIT has not come yet, whatever its status:
  -ECONNRESET means cancelled, and status 0 means "it had completed" -- but a server that drops
  unlinked URBs (PyPI ``usbip`` 0.7.0) also says 0 and never sends the RET_SUBMIT, so waiting
  for one could last forever. The kernel's stub sends a completed URB's RET_SUBMIT before its
  RET_UNLINK, so data that won the race has already been delivered;
* a RET_SUBMIT for a URB given up on (its RET_UNLINK came first, or no verdict came within the
  unlink grace) is read and dropped, never delivered to anyone;
* a RET_SUBMIT for a seqnum never used is fatal: without knowing the URB, nobody knows how many
  bytes follow (vhci drops the connection too).
"""

from __future__ import annotations

import heapq
import itertools
from collections import OrderedDict, deque
from typing import Deque, Dict, List, NamedTuple, Optional, Tuple, Union

from .. import protocol as P
from ..errors import ProtocolError
from .urb import ECONNRESET, ESHUTDOWN, EndedBy, Urb, UrbState

_NEW, _PENDING, _RECEIVING, _DONE = UrbState.NEW, UrbState.PENDING, UrbState.RECEIVING, UrbState.DONE

#: How many given-up seqnums are remembered (so their late replies are dropped, not fatal).
RETIRED_LIMIT = 1024

#: :meth:`UrbTable.due` sweeps stale DEADLINEs out once there are more timers than this, and
#: than twice those the last sweep left.
SWEEP_MIN = 64

#: Timer kinds.
DEADLINE = 0  #: a URB's own timeout: unlink it
GRACE = 1  #: an unlink's verdict is overdue: give the URB up


class Retired(NamedTuple):
    """A seqnum given up on: enough to skip its late reply's bytes."""

    direction: int
    length: int
    iso_packets: int


#: What a RET_SUBMIT means: deliver to this URB (now RECEIVING), or skip a retired reply.
Delivery = Union[Urb, Retired]


def _lapsed(urb: Urb, seq: int) -> bool:
    """Whether a DEADLINE set for ``urb``'s life under ``seq`` is stale: that life has ended (the
    URB is DONE, or made again in place under another seqnum)."""
    return urb.state is _DONE or urb.seqnum != seq


class UrbTable:
    """Seqnums and URBs of one connection. Call every method with the connection's lock held."""

    def __init__(self, retired_limit: int = RETIRED_LIMIT) -> None:
        self.pending: Dict[int, Urb] = {}  # seqnum -> URB awaiting its RET_SUBMIT
        self.unlinks: Dict[int, Urb] = {}  # CMD_UNLINK seqnum -> URB it names
        # seqnum -> what to skip of a late RET_SUBMIT (None: a given-up CMD_UNLINK's seqnum)
        self.retired: "OrderedDict[int, Optional[Retired]]" = OrderedDict()
        self.retired_limit = retired_limit
        self.receiving: Optional[Urb] = None  # the URB whose reply is being read, if any
        self.lost = False
        self._seqnums = itertools.count(1)
        self._reused = False  # seqnums may come round again (wrapped, or moved by seqnums_from)
        # heap of (when, n, kind, urb, seqnum): the seqnum tells a URB made again in place
        # (Connection.resubmit) from the life the timer was set for
        self._timers: List[Tuple[float, int, int, Urb, int]] = []
        # DEADLINEs armed in the order they fall due (a pump's transfers share one timeout), as
        # (when, n, urb, seqnum): O(1) to arm, and since such URBs mostly end in that order too, the
        # ended ones at its head are dropped as new ones come, so it stays near the number in
        # flight (its entries die young, which also spares the garbage collector)
        self._fifo: Deque[Tuple[float, int, Urb, int]] = deque()
        self._timer_n = 0
        self._sweep_at = SWEEP_MIN  # due() sweeps once there are more timers than this

    # -- seqnums and submission ----------------------------------------------------------------------
    def next_seqnum(self) -> int:
        """A fresh uint32 seqnum: never 0, never one still in use (it wraps after 2**32).

        The one call that needs no lock: next() on the counter is atomic, so the synchronous
        lane may take a seqnum without the table's lock (only the wrap, after 2**32 URBs, is not).
        """
        seq = next(self._seqnums)
        # Until the counter first wraps (or is moved), every seqnum in use was handed out
        # before, so is smaller: a fresh one needs no look-up.
        if seq > 0xFFFFFFFF or (self._reused and (seq in self.pending or seq in self.unlinks
                                                  or seq in self.retired)):
            return self._free_seqnum(seq)
        return seq

    def _free_seqnum(self, seq: int) -> int:
        self._reused = True
        while True:
            seq &= 0xFFFFFFFF
            if seq and seq not in self.pending and seq not in self.unlinks and seq not in self.retired:
                self._seqnums = itertools.count(seq + 1)
                return seq
            seq += 1

    def seqnums_from(self, seq: int) -> None:
        """Hand out seqnums from ``seq`` on (tests use it to cross the wrap)."""
        self._seqnums = itertools.count(seq)
        self._reused = True

    def add(self, urb: Urb, seq: int = 0, deadline: Optional[float] = None) -> int:
        """Enter a NEW URB as PENDING under ``seq`` (0: a fresh one), with a DEADLINE timer at
        ``deadline`` if given (see :meth:`add_timer`); returns its seqnum."""
        if self.lost:
            raise RuntimeError("the connection is lost")
        if urb.state is not _NEW:
            raise RuntimeError(f"{urb!r} was submitted already")
        if not seq:
            seq = self.next_seqnum()
        urb.seqnum = seq
        urb.state = _PENDING
        self.pending[seq] = urb
        if deadline is not None:
            self.add_timer(deadline, DEADLINE, urb)
        return seq

    # -- replies ------------------------------------------------------------------------------------
    def ret_submit(self, seq: int, actual: int, npackets: int) -> Delivery:
        """A RET_SUBMIT header arrived: the URB to receive it (now RECEIVING), or the Retired
        record of a URB given up on, whose bytes are to be skipped.

        Raises:
            ProtocolError: an unknown seqnum, or lengths the URB cannot hold (vhci_rx.c).
        """
        urb = self.pending.get(seq)
        if urb is not None:
            if actual < 0 or actual > urb.length:
                raise ProtocolError(f"RET_SUBMIT seqnum {seq}: actual_length {actual} outside 0..{urb.length}")
            iso = urb.iso_packets
            if iso is not None and npackets != len(iso):
                raise ProtocolError(
                    f"RET_SUBMIT seqnum {seq}: {npackets} ISO descriptors, {len(iso)} were sent")
            self.claim(urb)
            return urb
        if seq in self.retired:
            # Kept (until pushed out by newer ones): a server that sends a given-up URB's reply
            # twice (once for the URB, once more for its unlink) is dropped twice, not fatal.
            gone = self.retired[seq]
            if gone is None:
                raise ProtocolError(f"RET_SUBMIT with seqnum {seq}, which named a CMD_UNLINK")
            if actual < 0 or actual > gone.length:
                raise ProtocolError(f"RET_SUBMIT seqnum {seq}: actual_length {actual} outside 0..{gone.length}")
            if gone.iso_packets and npackets != gone.iso_packets:
                raise ProtocolError(
                    f"RET_SUBMIT seqnum {seq}: {npackets} ISO descriptors, {gone.iso_packets} were sent")
            return gone
        raise ProtocolError(f"RET_SUBMIT for unknown seqnum {seq}")

    def claim(self, urb: Urb) -> bool:
        """Its reply is about to be read: PENDING -> RECEIVING. False if it is not pending."""
        if urb.state is not _PENDING:
            return False
        del self.pending[urb.seqnum]
        urb.state = _RECEIVING
        self.receiving = urb
        return True

    def finish(self, urb: Urb, status: int) -> bool:
        """End a PENDING or RECEIVING URB with ``status``; False if it had ended already.

        Its unlink, if one is out, stays in ``unlinks`` until the RET_UNLINK comes (so the hook and
        the RTT estimate still see it) or its grace timer sweeps it out.
        """
        state = urb.state
        if state is _DONE:
            return False
        if state is _PENDING:
            self.pending.pop(urb.seqnum, None)
        elif self.receiving is urb:
            self.receiving = None
        urb.status = status
        urb.state = _DONE
        if urb._unlink_seqnum and urb.seqnum not in self.retired:
            # Its unlink is still out: a server may answer it with a second RET_SUBMIT (some do
            # after a RET_UNLINK -104); skip that, rather than take it for an unknown seqnum.
            self._retire(urb)
        return True

    def ret_unlink(self, seq: int, status: int, now: float) -> Tuple[Optional[Urb], bool, Optional[float]]:
        """A RET_UNLINK arrived: (the URB it names or None, whether that ended it now, the round
        trip of the unlink for the RTT estimate). Status 0 or not, a URB still waiting for its
        RET_SUBMIT ends here (as vhci gives it back); its seqnum is retired."""
        urb = self.unlinks.pop(seq, None)
        if urb is None:
            self.retired.pop(seq, None)
            return None, False, None
        rtt = now - urb._unlink_sent if urb._unlink_sent else None
        urb._verdict = status
        if urb.state is not _PENDING:
            return urb, False, rtt  # its RET_SUBMIT came first (not RECEIVING: one reader reads)
        self._retire(urb)
        self.finish(urb, status or ECONNRESET)
        return urb, True, rtt

    # -- unlinks ---------------------------------------------------------------------------------------
    def start_unlink(self, urb: Urb, why: EndedBy, now: float) -> int:
        """A PENDING URB is to be unlinked: its CMD_UNLINK seqnum, or 0 if there is nothing to do
        (not pending, or an unlink is already out)."""
        if urb.state is not _PENDING or urb._unlink_seqnum or self.lost:
            return 0
        seq = self.next_seqnum()
        urb._unlink_seqnum = seq
        urb._unlink_sent = now
        urb._ended_by = why
        self.unlinks[seq] = urb
        return seq

    def give_up(self, urb: Urb) -> Optional[bool]:
        """An unlink's grace is over. True: the URB was still PENDING and is now ended (its
        seqnum retired, so a late reply is dropped). False: it had ended; its unlink is forgotten
        (a late RET_UNLINK is ignored). None: its reply is being read right now; ask again later.
        """
        state = urb.state
        if state is _RECEIVING:
            return None
        unlink = urb._unlink_seqnum
        if unlink and self.unlinks.pop(unlink, None) is not None:
            self._remember(unlink, None)
        if state is not _PENDING:
            return False
        self._retire(urb)
        urb._abandoned = True
        self.finish(urb, ECONNRESET)
        return True

    def _retire(self, urb: Urb) -> None:
        iso = urb.iso_packets
        self._remember(urb.seqnum, Retired(urb.direction, urb.length, len(iso) if iso is not None else 0))

    def _remember(self, seq: int, what: Optional[Retired]) -> None:
        retired = self.retired
        retired[seq] = what
        while len(retired) > self.retired_limit:
            retired.popitem(last=False)

    # -- connection loss -------------------------------------------------------------------------------
    def fail_all(self, include_receiving: bool) -> List[Urb]:
        """The connection is lost: end every URB still waiting (ESHUTDOWN) and forget all state.
        The URB being received is ended too only if its reader asks (``include_receiving``)."""
        self.lost = True
        victims = list(self.pending.values())
        receiving = self.receiving
        if include_receiving and receiving is not None and receiving.state is _RECEIVING:
            victims.append(receiving)
        for urb in victims:
            self.finish(urb, ESHUTDOWN)
        self.pending.clear()
        self.unlinks.clear()
        self.retired.clear()
        self._timers.clear()
        self._fifo.clear()
        self._sweep_at = SWEEP_MIN
        return victims

    # -- timers ------------------------------------------------------------------------------------------
    def add_timer(self, when: float, kind: int, urb: Urb) -> None:
        """Have :meth:`due` return ``(kind, urb)`` at ``when``. A DEADLINE is dropped if the URB
        ends first; a GRACE always fires (it also sweeps the unlink out of ``unlinks``)."""
        if self.lost:
            return
        n = self._timer_n = self._timer_n + 1
        if kind == DEADLINE:
            fifo = self._fifo
            while fifo:
                # not _lapsed(head), written out: this runs once per URB submitted
                _, _, head, seq = fifo[0]
                if head.state is not _DONE and head.seqnum == seq:
                    if fifo[-1][0] > when:
                        break  # (out of order: the heap's)
                    fifo.append((when, n, urb, urb.seqnum))
                    return
                fifo.popleft()
            else:
                fifo.append((when, n, urb, urb.seqnum))
                return
        heapq.heappush(self._timers, (when, n, kind, urb, urb.seqnum))

    def next_timer(self) -> Optional[float]:
        """When the next timer is due (time.monotonic() value), None if none is set."""
        timers, fifo = self._timers, self._fifo
        while timers and timers[0][2] == DEADLINE and _lapsed(timers[0][3], timers[0][4]):
            heapq.heappop(timers)
        while fifo and _lapsed(fifo[0][2], fifo[0][3]):
            fifo.popleft()
        if fifo and (not timers or fifo[0][0] < timers[0][0]):
            return fifo[0][0]
        return timers[0][0] if timers else None

    def due(self, now: float) -> List[Tuple[int, Urb]]:
        """Pop the timers due by ``now``, as (kind, urb), earliest first (ties: as armed)."""
        out: List[Tuple[int, Urb]] = []
        timers, fifo = self._timers, self._fifo
        while True:
            if fifo and fifo[0][0] <= now and (not timers or fifo[0][:2] < timers[0][:2]):
                _, _, urb, seq = fifo.popleft()
                kind = DEADLINE
            elif timers and timers[0][0] <= now:
                _, _, kind, urb, seq = heapq.heappop(timers)
            else:
                break
            if kind == DEADLINE and _lapsed(urb, seq):
                continue
            out.append((kind, urb))
        if len(timers) + len(fifo) > self._sweep_at:
            # Sweep: URBs that end before their deadline leave entries behind (a stream of
            # transfers with long timeouts behind one that never ends would otherwise grow
            # them by rate x timeout). Next time once what is left has doubled: each sweep
            # costs no more than the entries added since the last.
            self._timers = [t for t in timers if t[2] != DEADLINE or not _lapsed(t[3], t[4])]
            heapq.heapify(self._timers)
            self._fifo = deque(t for t in fifo if not _lapsed(t[2], t[3]))
            self._sweep_at = max(SWEEP_MIN, 2 * self.timer_count())
        return out

    def timer_count(self) -> int:
        return len(self._timers) + len(self._fifo)


class RttEstimator:
    """Round-trip time of the server, as TCP estimates it (RFC 6298), for the unlink grace.

    Samples are exchanges the server answers at once, with no device in the way: the OP_REQ_IMPORT
    exchange and every CMD_UNLINK -> RET_UNLINK. A server that never answers unlinks keeps the
    import's estimate. Overestimating costs lateness against such a server; underestimating could
    give up on a reply already on its way, so the grace never goes below :data:`MIN_GRACE`.
    """

    #: Bounds of the unlink grace: the shortest is above a loaded machine's scheduling delay, the
    #: longest keeps a timeout against a server that never answers unlinks within reason.
    MIN_GRACE = 0.005
    MAX_GRACE = 2.0
    #: Bounds of how long a reply may stop moving before the server is taken as broken: above
    #: TCP's own retransmission timeout (200 ms minimum on Linux) so one lost segment on a slow
    #: link does not kill a healthy connection (and, with it, reset the device on the server).
    MIN_STALL = 0.5
    MAX_STALL = 10.0

    def __init__(self, first_sample: Optional[float] = None) -> None:
        self.srtt: Optional[float] = None
        self.rttvar = 0.0
        self.samples = 0
        if first_sample is not None:
            self.sample(first_sample)

    def sample(self, rtt: float) -> None:
        if rtt < 0:
            return
        self.samples += 1
        if self.srtt is None:
            self.srtt = rtt
            self.rttvar = rtt / 2
        else:
            self.rttvar = 0.75 * self.rttvar + 0.25 * abs(self.srtt - rtt)
            self.srtt = 0.875 * self.srtt + 0.125 * rtt

    @property
    def rto(self) -> float:
        """srtt + 4 rttvar (0.1 s before any sample)."""
        if self.srtt is None:
            return 0.1
        return self.srtt + 4 * self.rttvar

    def grace(self) -> float:
        """How long to wait for a RET_UNLINK: twice the RTO, within [MIN_GRACE, MAX_GRACE]."""
        return min(max(2 * self.rto, self.MIN_GRACE), self.MAX_GRACE)

    def stall(self) -> float:
        """How long a reply may stop moving: four times the RTO, within [MIN_STALL, MAX_STALL]."""
        return min(max(4 * self.rto, self.MIN_STALL), self.MAX_STALL)


def retired_skip(gone: Retired, actual: int, npackets: int) -> int:
    """How many bytes follow the RET_SUBMIT header of a retired URB's late reply."""
    return (actual if gone.direction else 0) + (npackets * P.ISO_PACKET_SIZE if gone.iso_packets else 0)
