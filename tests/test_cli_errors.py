"""Failures print one line, as README promises: no library warning repeating the error, no
message that says the same thing twice."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from conftest import ROOT, start_sim_process, stop_sim_process


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.path.join(ROOT, "src") + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _problem_lines(err: str) -> list:
    return [line for line in err.splitlines() if "error" in line.lower() or "warning" in line.lower()
            or "Traceback" in line]


@pytest.mark.timeout(60)
def test_server_dying_mid_read_is_one_line(tmp_path):
    sim, port = start_sim_process()
    out_file = str(tmp_path / "data.bin")
    proc = subprocess.Popen(
        [sys.executable, "-m", "usbip_backend.cli", "--host", "127.0.0.1", "--port", str(port), "read",
         "--busid", "1-1", "--ep", "0x82", "--length", "64G", "--out", out_file],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
    try:
        deadline = time.monotonic() + 30
        while not (os.path.exists(out_file) and os.path.getsize(out_file) > 0):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "no data streamed"
            time.sleep(0.01)
        sim.kill()  # mid-stream, URBs in flight
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        stop_sim_process(sim)
    assert proc.returncode == 1
    problems = _problem_lines(err)
    assert len(problems) == 1, err
    assert problems[0].startswith("usbip-pyusb-test: error: ") and "--offset" in problems[0]


@pytest.mark.skipif(os.name == "nt", reason="on Windows the path is a real named pipe")
def test_windows_pipe_capture_path_elsewhere_is_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "usbip_backend.cli", "--host", "127.0.0.1", "--pcap",
                           "\\\\.\\pipe\\usbip", "list"], capture_output=True, text=True, env=_env(), timeout=60,
                          cwd=str(tmp_path))
    assert proc.returncode == 1
    assert _problem_lines(proc.stderr) == [
        "usbip-pyusb-test: error: cannot open capture file \\\\.\\pipe\\usbip: \\\\.\\pipe\\usbip is a Windows named "
        "pipe; on this system Wireshark reads a FIFO instead: mkfifo /tmp/usb && wireshark -k -i /tmp/usb"]
    assert os.listdir(str(tmp_path)) == []


def test_main_leaves_the_log_levels_as_it_found_them(capsys, sim_server):
    """main() quiets the library's warnings for its own run only: a program (or a test) that
    calls it keeps its logging as it was."""
    import logging

    from usbip_backend import cli

    names = ("usbip_backend.engine", "usbip_backend.backend", "zeroconf")
    before = {n: logging.getLogger(n).level for n in names}
    assert cli.main(["--host", sim_server[0], "--port", str(sim_server[1]), "list"]) == 0
    capsys.readouterr()
    assert {n: logging.getLogger(n).level for n in names} == before


@pytest.mark.timeout(60)
def test_a_failed_import_is_worded_once(capsys):
    """A server that takes OP_REQ_IMPORT and hangs up: the one line names the import once."""
    import socket
    import threading

    from usbip_backend import cli

    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)
    port = srv.getsockname()[1]

    def serve():
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            with conn:
                want = 8 + 32  # OP_REQ_IMPORT: the common header and the busid
                got = b""
                while len(got) < want:
                    chunk = conn.recv(want - len(got))
                    if not chunk:
                        break
                    got += chunk

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        code = cli.main(["--host", "127.0.0.1", "--port", str(port), "probe", "--busid", "1-1"])
        err = capsys.readouterr().err
    finally:
        srv.shutdown(socket.SHUT_RDWR)  # wakes the accept() (close alone does not, on Linux)
        srv.close()
        thread.join(10)
    assert code == 1
    (line,) = _problem_lines(err)
    assert line.count("import of 1-1") == 1 and "closed the connection" in line, line
