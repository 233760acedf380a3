"""The pure URB table (engine/table.py): what each reply means, with no socket and no thread.

The connection calls these under its lock; here they are called directly, as h11's state
machine is tested, so every rule of usbip_protocol.rst's unlink section has a test of its own.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from usbip_backend import protocol as P
from usbip_backend.engine import EndedBy, RttEstimator, UrbState, UrbTable
from usbip_backend.engine.table import DEADLINE, GRACE, RETIRED_LIMIT, Retired, retired_skip
from usbip_backend.engine.urb import Urb
from usbip_backend.errors import ProtocolError


class FakeConn:
    """The three attributes a Urb copies from its connection (no socket involved)."""

    devid, busnum, devnum, name = 0x20005, 2, 5, "table test"


def urb(length=8, direction=1, iso=None):
    u = Urb(FakeConn(), P.TransferType.BULK, 0x81 if direction else 0x01, direction, None, length, 0,
            memoryview(bytearray(length)))
    if iso is not None:
        u.iso_packets = [P.IsoPacket(i * 4, 4) for i in range(iso)]
    return u


def test_seqnums_are_fresh_nonzero_and_skip_those_in_use():
    t = UrbTable()
    a, b = urb(), urb()
    assert t.add(a) == 1 and t.add(b) == 2
    t.seqnums_from(0xFFFFFFFF)
    assert t.add(urb()) == 0xFFFFFFFF
    c = urb()
    assert t.add(c) == 3  # wraps, skips 0, 1 and 2 (still in flight)
    assert a.state is UrbState.PENDING


def test_a_urb_is_submitted_once():
    t = UrbTable()
    a = urb()
    t.add(a)
    with pytest.raises(RuntimeError):
        t.add(a)


def test_ret_submit_moves_the_urb_to_receiving_then_finish_freezes_it():
    t = UrbTable()
    a = urb()
    seq = t.add(a)
    assert t.ret_submit(seq, 8, 0) is a
    assert a.state is UrbState.RECEIVING and t.receiving is a and seq not in t.pending
    assert t.finish(a, 0) is True
    assert (a.state, a.status, t.receiving) == (UrbState.DONE, 0, None)
    assert t.finish(a, -32) is False and a.status == 0  # exactly once


@pytest.mark.parametrize("actual", [-1, 9, 1 << 30])
def test_ret_submit_with_a_length_the_urb_cannot_hold_is_fatal(actual):
    t = UrbTable()
    seq = t.add(urb(length=8))
    with pytest.raises(ProtocolError, match="actual_length"):
        t.ret_submit(seq, actual, 0)


def test_ret_submit_iso_descriptor_count_must_match():
    t = UrbTable()
    seq = t.add(urb(length=12, iso=3))
    with pytest.raises(ProtocolError, match="3 were sent"):
        t.ret_submit(seq, 12, 2)


def test_ret_submit_for_an_unknown_seqnum_is_fatal():
    with pytest.raises(ProtocolError, match="unknown seqnum 77"):
        UrbTable().ret_submit(77, 0, 0)


def test_unlink_answered_with_econnreset_ends_the_urb_and_retires_it():
    t = UrbTable()
    a = urb(length=16)
    seq = t.add(a)
    unlink = t.start_unlink(a, EndedBy.TIMEOUT, now=1.0)
    assert unlink and unlink != seq and t.start_unlink(a, EndedBy.CANCEL, 1.1) == 0  # one unlink each
    got, ended, rtt = t.ret_unlink(unlink, -104, now=1.25)
    assert (got, ended, rtt) == (a, True, 0.25)
    assert (a.state, a.status, a._ended_by) == (UrbState.DONE, -104, EndedBy.TIMEOUT)
    # a RET_SUBMIT that still comes (non-compliant servers) is skipped, not delivered
    assert t.ret_submit(seq, 16, 0) == Retired(1, 16, 0)


def test_unlink_answered_with_status_0_before_any_ret_submit_ends_the_urb_as_vhci_does():
    # PyPI usbip 0.7.0 answers 0 and drops the URB: waiting for a RET_SUBMIT would be forever.
    t = UrbTable()
    a = urb()
    seq = t.add(a)
    unlink = t.start_unlink(a, EndedBy.TIMEOUT, 0.0)
    got, ended, _ = t.ret_unlink(unlink, 0, 0.001)
    assert got is a and ended and a.status == -104
    assert isinstance(t.ret_submit(seq, 8, 0), Retired)


def test_ret_submit_that_wins_the_race_is_delivered_and_the_later_ret_unlink_only_reports():
    t = UrbTable()
    a = urb()
    seq = t.add(a)
    unlink = t.start_unlink(a, EndedBy.TIMEOUT, 5.0)
    assert t.ret_submit(seq, 8, 0) is a  # the kernel's stub sends it before RET_UNLINK 0
    t.finish(a, 0)
    assert t.ret_unlink(unlink, 0, 5.5) == (a, False, 0.5)
    assert a.status == 0 and unlink not in t.unlinks


def test_grace_over_gives_up_a_pending_urb_once():
    t = UrbTable()
    a = urb()
    seq = t.add(a)
    unlink = t.start_unlink(a, EndedBy.CANCEL, 0.0)
    assert t.give_up(a) is True
    assert (a.state, a.status, a._abandoned) == (UrbState.DONE, -104, True)
    assert t.give_up(a) is False
    assert t.ret_unlink(unlink, -104, 1.0) == (None, False, None)  # a late verdict is ignored
    assert isinstance(t.ret_submit(seq, 8, 0), Retired)  # a late reply is skipped


def test_grace_over_waits_for_a_reply_being_read():
    t = UrbTable()
    a = urb()
    seq = t.add(a)
    t.start_unlink(a, EndedBy.TIMEOUT, 0.0)
    t.ret_submit(seq, 8, 0)
    assert t.give_up(a) is None and a.state is UrbState.RECEIVING
    t.finish(a, 0)
    assert a.status == 0


def test_a_ret_submit_naming_an_unlinks_own_seqnum_is_fatal():
    t = UrbTable()
    a = urb()
    t.add(a)
    unlink = t.start_unlink(a, EndedBy.CANCEL, 0.0)
    t.give_up(a)
    with pytest.raises(ProtocolError, match="named a CMD_UNLINK"):
        t.ret_submit(unlink, 0, 0)


def test_retired_lengths_are_checked_and_the_skip_is_exact():
    t = UrbTable()
    a = urb(length=100)
    seq = t.add(a)
    t.start_unlink(a, EndedBy.TIMEOUT, 0.0)
    t.give_up(a)
    with pytest.raises(ProtocolError, match="outside 0..100"):
        t.ret_submit(seq, 1 << 30, 0)
    assert retired_skip(Retired(1, 100, 0), 60, 0) == 60
    assert retired_skip(Retired(0, 100, 0), 60, 0) == 0  # OUT replies carry no data
    assert retired_skip(Retired(1, 12, 3), 10, 3) == 10 + 3 * 16


def test_retired_is_bounded():
    t = UrbTable(retired_limit=4)
    for _ in range(10):
        a = urb()
        t.add(a)
        t.start_unlink(a, EndedBy.CANCEL, 0.0)
        t.give_up(a)
    assert len(t.retired) == 4


def test_fail_all_ends_pending_urbs_and_the_one_being_read_only_when_its_reader_asks():
    t = UrbTable()
    a, b, c = urb(), urb(), urb()
    for u in (a, b, c):
        t.add(u)
    t.ret_submit(c.seqnum, 8, 0)
    victims = t.fail_all(include_receiving=False)
    assert set(victims) == {a, b} and c.state is UrbState.RECEIVING
    assert t.fail_all(include_receiving=True) == [c] and c.status == -108
    with pytest.raises(RuntimeError):
        t.add(urb())


def test_timers_fire_in_order_and_deadlines_of_ended_urbs_are_dropped():
    t = UrbTable()
    a, b = urb(), urb()
    t.add(a)
    t.add(b)
    t.add_timer(2.0, DEADLINE, a)
    t.add_timer(1.0, DEADLINE, b)
    t.add_timer(3.0, GRACE, b)
    assert t.next_timer() == 1.0
    assert t.due(0.5) == []
    assert t.due(1.5) == [(DEADLINE, b)]
    t.finish(a, 0)
    assert t.next_timer() == 3.0  # a's deadline is gone with it
    t.finish(b, 0)
    assert t.due(10.0) == [(GRACE, b)]  # a grace still fires: it sweeps the unlink out


def test_a_deadline_of_a_urb_s_last_life_never_fires_in_the_next():
    """A URB made new in place (Connection.resubmit(in_place=True)) keeps its object: the timers
    of its ended life must not unlink the new one."""
    t = UrbTable()
    u = urb()
    t.add(u, deadline=1.0)
    t.finish(u, 0)
    u._renew()
    t.add(u, deadline=5.0)
    assert t.due(2.0) == []  # the first life's deadline: stale
    assert t.next_timer() == 5.0
    assert t.due(6.0) == [(DEADLINE, u)]


def test_seqnums_are_looked_up_once_they_can_come_round_again():
    t = UrbTable()
    a = urb()
    t.add(a)
    t.seqnums_from(a.seqnum)  # the next fresh seqnum would be a's, still pending
    b = urb()
    t.add(b)
    assert b.seqnum != a.seqnum and set(t.pending) == {a.seqnum, b.seqnum}


def test_stale_deadlines_are_swept_so_the_heap_stays_bounded():
    t = UrbTable()
    for _ in range(10000):
        u = urb()
        t.add(u)
        t.add_timer(1000.0, DEADLINE, u)
        t.finish(u, 0)  # ends long before its deadline
        t.due(0.0)
    assert t.timer_count() < 200


def test_stale_deadlines_armed_out_of_order_are_swept_from_the_heap_too():
    """Each deadline earlier than the live one armed first, so each goes to the heap; its URB
    ends before it. The heap is swept, and the live deadline still fires."""
    t = UrbTable()
    keep = urb()
    t.add(keep, deadline=2000.0)
    for i in range(10000):
        u = urb()
        t.add(u, deadline=1000.0 - i * 0.01)
        t.finish(u, 0)
        t.due(0.0)
    assert t.timer_count() < 200
    assert t.due(1999.0) == []
    assert t.due(2000.0) == [(DEADLINE, keep)]
    assert t.timer_count() == 0


def test_a_pump_s_deadlines_stay_as_many_as_its_urbs_in_flight_between_timer_runs():
    """16 URBs resubmitted in place over and over with one timeout, and no due() call (the
    reader thread sleeps until the first deadline): the ended lives' entries go as new ones come."""
    t = UrbTable()
    urbs = [urb() for _ in range(16)]
    now = 0.0
    for u in urbs:
        t.add(u, deadline=now + 5.0)
    for i in range(20000):
        u = urbs[i % 16]
        t.finish(u, 0)
        u._renew()
        now += 1e-5
        t.add(u, deadline=now + 5.0)
    assert t.timer_count() <= 17
    assert t.next_timer() == pytest.approx(now - 15e-5 + 5.0)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(
    st.tuples(st.just("arm"), st.integers(0, 7), st.sampled_from([DEADLINE, GRACE]), st.integers(0, 40)),
    st.tuples(st.just("end"), st.integers(0, 7)),
    st.tuples(st.just("renew"), st.integers(0, 7)),
    st.tuples(st.just("due"), st.integers(0, 40)),
), max_size=60))
def test_timers_fire_as_a_plain_list_of_them_says(ops):
    """Deadlines armed in and out of order, URBs ended and made again in place, due() at any
    time: what fires is what a list of (when, kind, urb, life) would say, earliest first."""
    t = UrbTable()
    urbs = [urb() for _ in range(8)]
    for u in urbs:
        t.add(u)
    model = []  # (when, order, kind, index, seqnum armed for)
    n = 0
    for op in ops:
        if op[0] == "arm":
            _, i, kind, when = op
            if urbs[i].state is UrbState.DONE and kind == DEADLINE:
                continue  # a deadline is armed for a URB in flight
            t.add_timer(float(when), kind, urbs[i])
            n += 1
            model.append((when, n, kind, i, urbs[i].seqnum))
        elif op[0] == "end":
            t.finish(urbs[op[1]], 0)
        elif op[0] == "renew":
            u = urbs[op[1]]
            if u.state is UrbState.DONE:
                u._renew()
                t.add(u)
        else:
            now = op[1]
            fired = [(k, urbs[i]) for w, _, k, i, seq in sorted(model) if w <= now and (
                k == GRACE or (urbs[i].state is not UrbState.DONE and urbs[i].seqnum == seq))]
            model = [m for m in model if m[0] > now]
            got = t.due(float(now))
            assert [k for k, _ in got] == [k for k, _ in fired]
            assert [u for _, u in got] == [u for _, u in fired]
            whens = [m[0] for m in model if m[2] == GRACE or (
                urbs[m[3]].state is not UrbState.DONE and urbs[m[3]].seqnum == m[4])]
            assert t.next_timer() == (min(whens) if whens else None)


def test_rtt_estimate_follows_rfc6298_and_bounds_the_grace():
    est = RttEstimator(0.010)
    assert est.srtt == 0.010 and est.rttvar == 0.005
    assert est.rto == pytest.approx(0.030)
    assert est.grace() == pytest.approx(0.060)
    for _ in range(50):
        est.sample(0.0001)
    assert est.grace() == RttEstimator.MIN_GRACE  # loopback: the floor
    assert est.stall() == RttEstimator.MIN_STALL
    for _ in range(50):
        est.sample(5.0)
    assert est.grace() == RttEstimator.MAX_GRACE and est.stall() == RttEstimator.MAX_STALL
    assert RttEstimator().grace() == pytest.approx(0.2)  # no sample yet: 2 x 0.1 s


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["submit", "ret", "unlink", "ret_unlink0", "ret_unlink104",
                                           "grace", "finish"]),
                          st.integers(0, 7)), max_size=60))
def test_every_urb_ends_exactly_once_whatever_the_replies(ops):
    """Any sequence of events: a URB is DONE at most once, its status never changes after, and
    the tables never hold a URB that is done waiting for its RET_SUBMIT."""
    t = UrbTable()
    urbs = []
    ends = {}
    for op, i in ops:
        if op == "submit" or not urbs:
            u = urb()
            t.add(u)
            urbs.append(u)
            continue
        u = urbs[i % len(urbs)]
        try:
            if op == "ret" and u.state is UrbState.PENDING:
                t.ret_submit(u.seqnum, 4, 0)
            elif op == "unlink":
                t.start_unlink(u, EndedBy.TIMEOUT, 0.0)
            elif op.startswith("ret_unlink") and u._unlink_seqnum:
                t.ret_unlink(u._unlink_seqnum, 0 if op.endswith("0") else -104, 1.0)
            elif op == "grace" and u._unlink_seqnum:
                t.give_up(u)
            elif op == "finish" and u.state is UrbState.RECEIVING:
                t.finish(u, 0)
        except ProtocolError:
            pass
        for v in urbs:
            if v.state is UrbState.DONE:
                assert ends.setdefault(id(v), v.status) == v.status
        assert all(v.state is UrbState.PENDING for v in t.pending.values())
    assert len(t.retired) <= RETIRED_LIMIT
