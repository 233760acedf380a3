"""Ctrl-C in the command line: one interrupt stops the command with one line and 130; more
interrupts while it stops and closes end it quietly (no traceback from a thread being joined)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from typing import Optional

import pytest

from conftest import ROOT, closed_port, start_sim_process, stop_sim_process


@pytest.fixture
def private_sim():
    # The interrupted client may hold its import until the OS closes its socket; a server of
    # its own keeps that away from the other tests.
    proc, port = start_sim_process()
    yield port
    stop_sim_process(proc)


def _start_stream(port: int, out_file: str, *extra: str) -> subprocess.Popen:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.path.join(ROOT, "src") + os.pathsep + env.get("PYTHONPATH", "")
    # 0x82 of the loopback device is a source: it never runs dry, so the read goes on until stopped.
    return subprocess.Popen(
        [sys.executable, "-m", "usbip_backend.cli", *extra, "--host", "127.0.0.1", "--port", str(port), "read",
         "--busid", "1-1", "--ep", "0x82", "--length", "64G", "--out", out_file],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)




def _wait_streaming(proc: subprocess.Popen, out_file: str, deadline: float) -> None:
    """Until data reaches the file (the command is mid-stream, URBs in flight)."""
    while not (os.path.exists(out_file) and os.path.getsize(out_file) > 0):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "no data streamed"
        time.sleep(0.01)


def _interrupt(port: int, out_file: str, *extra: str, every: Optional[float] = None) -> str:
    """Start a stream, wait until it is streaming, then SIGINT it once (``every`` None) or every
    ``every`` seconds until it is gone; it must exit with 130 and no traceback. Its stderr."""
    proc = _start_stream(port, out_file, *extra)
    try:
        _wait_streaming(proc, out_file, time.monotonic() + 30)
        if every is None:
            proc.send_signal(signal.SIGINT)
        else:
            deadline = time.monotonic() + 30
            while proc.poll() is None and time.monotonic() < deadline:
                proc.send_signal(signal.SIGINT)
                time.sleep(every)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, err
    assert "Traceback" not in err, err
    return err


@pytest.mark.timeout(60)
def test_one_ctrl_c_stops_with_one_line(private_sim, tmp_path):
    err = _interrupt(private_sim, str(tmp_path / "data.bin"))
    assert [line for line in err.splitlines() if "interrupted" in line] == ["usbip-pyusb-test: interrupted"]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("round", range(3))
def test_repeated_ctrl_c_while_closing_exits_quietly(private_sim, tmp_path, round):
    """Interrupts keep coming (every 2 ms) until the process is gone, so they land in the
    command, in its error handling, in closing (the capture, the syslog receiver's thread, the
    reader thread) and in the interpreter's shutdown: every one of those ends quietly with 130."""
    err = _interrupt(private_sim, str(tmp_path / "data.bin"), "--pcap", str(tmp_path / "c.pcapng"), "--syslog",
                     "--syslog-port", str(closed_port()), every=0.002)
    assert "Exception ignored" not in err, err
