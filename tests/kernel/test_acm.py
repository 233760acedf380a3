"""CDC-ACM gadget (kernel f_acm + u_serial): class requests, tty data, cancelled reads."""

from __future__ import annotations

import logging
import struct

import pytest
import usb.core

from .peer import Recorder, open_device

SET_LINE_CODING, GET_LINE_CODING, SET_CONTROL_LINE_STATE = 0x20, 0x21, 0x22
DATA_IN = 0x81


def _raw_tty(flavour) -> None:
    flavour.peer.guest(f"stty -F {flavour.tty} raw -echo")


def test_line_coding_and_control_lines(flavour):
    with open_device(flavour, "acm") as dev:
        coding = struct.pack("<IBBB", 115200, 0, 0, 8)  # 115200 8N1
        assert dev.ctrl_transfer(0x21, SET_LINE_CODING, 0, 0, coding, timeout=5000) == 7
        assert bytes(dev.ctrl_transfer(0xA1, GET_LINE_CODING, 0, 0, 7, timeout=5000)) == coding
        coding = struct.pack("<IBBB", 9600, 2, 1, 7)  # 9600 7O2
        dev.ctrl_transfer(0x21, SET_LINE_CODING, 0, 0, coding, timeout=5000)
        assert bytes(dev.ctrl_transfer(0xA1, GET_LINE_CODING, 0, 0, 7, timeout=5000)) == coding
        assert dev.ctrl_transfer(0x21, SET_CONTROL_LINE_STATE, 0x0003, 0, None, timeout=5000) == 0  # DTR+RTS
        assert dev.ctrl_transfer(0x21, SET_CONTROL_LINE_STATE, 0x0000, 0, None, timeout=5000) == 0


def test_guest_tty_text_arrives_on_bulk_in_and_host_text_reaches_tty(flavour):
    with open_device(flavour, "acm") as dev:
        _raw_tty(flavour)
        flavour.peer.guest(f"printf 'hello from the kernel' > {flavour.tty}")
        assert bytes(dev.read(DATA_IN, 512, timeout=10000)) == b"hello from the kernel"
        # The gadget drops what arrives while nobody has the tty open: open it in the guest first
        # (the marker file appears once the descriptor is open), then write from the host.
        tty = flavour.tty
        flavour.peer.guest(
            f"rm -f /tmp/acm.open /tmp/acm.rx; ( exec 3<{tty}; touch /tmp/acm.open; "
            f"timeout 10 head -c 12 <&3 > /tmp/acm.rx ) >/dev/null 2>&1 & "
            "i=0; while [ ! -e /tmp/acm.open ] && [ $i -lt 100 ]; do sleep 0.05; i=$((i+1)); done; "
            "test -e /tmp/acm.open")
        assert dev.write(flavour.out_ep, b"host to tty!", timeout=5000) == 12
        out = flavour.peer.guest(
            "i=0; while [ $(wc -c < /tmp/acm.rx) -lt 12 ] && [ $i -lt 100 ]; do sleep 0.05; i=$((i+1)); done; "
            "cat /tmp/acm.rx")
        assert out == "host to tty!"


def test_timeout_cancels_pending_read_cleanly_and_next_read_gets_next_bytes(flavour, caplog):
    rec = Recorder()
    caplog.set_level(logging.DEBUG, logger="usbip_backend")
    with open_device(flavour, "acm", hook=rec) as dev:
        _raw_tty(flavour)
        for _ in range(3):
            with pytest.raises(usb.core.USBTimeoutError):
                dev.read(DATA_IN, 512, timeout=300)
        flavour.peer.guest(f"printf one > {flavour.tty}")
        assert bytes(dev.read(DATA_IN, 512, timeout=10000)) == b"one"
        with pytest.raises(usb.core.USBTimeoutError):
            dev.read(DATA_IN, 512, timeout=300)
        flavour.peer.guest(f"printf two > {flavour.tty}")
        assert bytes(dev.read(DATA_IN, 512, timeout=10000)) == b"two"
        with rec.lock:
            unlinks = list(rec.unlinks)
            completed = list(rec.completed)
    # every timeout was a CMD_UNLINK answered with -ECONNRESET, and those URBs ended as -104
    assert len(unlinks) == 4 and {s for _, _, s in unlinks} == {-104}, unlinks
    cancelled = {seq for seq, _, _ in unlinks}
    assert {(seq, st) for seq, st, _ in completed if seq in cancelled} == {(seq, -104) for seq in cancelled}
    # each URB completed exactly once, and no RET_SUBMIT came for a cancelled one
    seqs = [seq for seq, _, _ in completed]
    assert len(seqs) == len(set(seqs))
    assert not [r for r in caplog.records if "late reply" in r.getMessage() or "unknown seqnum" in r.getMessage()]


@pytest.mark.parametrize("requested_ms", [50, 300])
def test_timeouts_are_raised_on_time_against_the_kernel(flavour, requested_ms):
    """Against the stub and vudc the unlink is answered (-ECONNRESET), which ends the URB: the
    timeout is raised within a few ms of the time asked for. The margin here is generous (QEMU
    emulates the guest in software on a shared machine); the measured lateness is printed."""
    import time

    with open_device(flavour, "acm") as dev:
        late = []
        for _ in range(5):
            t0 = time.monotonic()
            with pytest.raises(usb.core.USBTimeoutError):
                dev.read(DATA_IN, 512, timeout=requested_ms)
            late.append(time.monotonic() - t0 - requested_ms / 1000)
    print(f"{flavour.name} mode, {requested_ms} ms timeouts late by (ms): "
          f"{', '.join(f'{x * 1e3:.1f}' for x in late)}")
    assert min(late) >= -0.001
    assert max(late) < 0.2, late
