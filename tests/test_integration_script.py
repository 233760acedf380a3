"""tools/integration.py as CI runs it: a subprocess against the virtual server."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SCRIPT = os.path.join(ROOT, "tools", "integration.py")


def run_script(*argv: str, timeout: float = 110) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.path.join(ROOT, "src") + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, SCRIPT, *argv], capture_output=True, text=True, env=env,
                          timeout=timeout)


@pytest.mark.timeout(120)
def test_full_sequence_against_virtual_server(sim_server, tmp_path):
    capture = tmp_path / "integration.pcapng"
    proc = run_script(sim_server[0], "--port", str(sim_server[1]), "--pcap", str(capture))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.strip().splitlines()
    summary = lines[-1]
    assert " passed, 0 failed" in summary
    assert int(summary.split()[0]) >= 30
    text = proc.stdout
    for busid in ("1-1", "1-2", "1-3", "1-4"):  # every stock device was imported and checked
        assert f"PASS  {busid:<8}  import" in text
        assert f"PASS  {busid:<8}  descriptors" in text
        assert f"PASS  {busid:<8}  stall" in text
    assert "PASS  1-1       bulk loopback 0x01 -> 0x81: 512 + 1543 bytes echoed" in text
    assert "PASS  1-1       interrupt loopback 0x03 -> 0x83" in text
    assert "PASS  1-4       isochronous IN 0x81" in text and "PASS  1-4       isochronous OUT 0x01" in text
    assert "PASS  1-1       timeout: read from idle 0x81 timed out after 200 ms" in text
    assert not any(line.startswith("FAIL") for line in lines)
    raw = capture.read_bytes()
    assert raw[:4] == b"\x0a\x0d\x0d\x0a" and len(raw) > 10000  # every URB went into the capture


def test_unreachable_server_fails(tmp_path):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    proc = run_script("127.0.0.1", "--port", str(port))
    assert proc.returncode == 1
    assert proc.stdout.strip().splitlines()[-1] == "0 passed, 1 failed"
    assert f"FAIL  127.0.0.1:{port}  list" in proc.stdout and "refused" in proc.stdout


def test_usage_error():
    proc = run_script("--port", "x")
    assert proc.returncode == 2 and "usage: integration.py" in proc.stderr
