"""Shared fixtures: leak checks on every test, and a virtual USB/IP server in its own process."""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def _open_sockets() -> set:
    """Socket inodes this process holds (Linux); an empty set elsewhere."""
    fd_dir = "/proc/self/fd"
    if not os.path.isdir(fd_dir):
        return set()
    found = set()
    for name in os.listdir(fd_dir):
        try:
            target = os.readlink(os.path.join(fd_dir, name))
        except OSError:
            continue
        if target.startswith("socket:"):
            found.add(target)
    return found


@pytest.fixture(autouse=True)
def no_leaks(request):
    """Every test must end with no new threads alive and no new sockets open."""
    threads_before = set(threading.enumerate())
    sockets_before = _open_sockets()
    yield
    if request.node.get_closest_marker("allow_leaks"):
        return
    new_threads = [t for t in threading.enumerate() if t not in threads_before and t.is_alive()]
    for t in new_threads:  # give threads that are already finishing a bounded chance to end
        t.join(timeout=5.0)
    leaked = [t.name for t in new_threads if t.is_alive()]
    assert not leaked, f"test leaked threads: {leaked}"
    leaked_socks = _open_sockets() - sockets_before
    assert not leaked_socks, f"test leaked {len(leaked_socks)} socket(s)"


def closed_port() -> int:
    """A 127.0.0.1 port nobody listens on (bound, then closed)."""
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def start_sim_process(*extra_args: str):
    """Start ``python -m usbip_backend.sim`` on 127.0.0.1, port 0; return (proc, port)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.path.join(ROOT, "src") + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.Popen(
        [sys.executable, "-u", "-m", "usbip_backend.sim", "--host", "127.0.0.1", "--port", "0", *extra_args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    line = proc.stdout.readline()  # the server prints "LISTENING <host> <port>" when ready
    if not line.startswith("LISTENING"):
        proc.kill()
        out, err = proc.communicate(timeout=10)
        raise RuntimeError(f"virtual server did not start: {line!r} {err}")
    port = int(line.split()[2])
    return proc, port


def stop_sim_process(proc) -> None:
    proc.terminate()
    try:
        proc.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate(timeout=10)


@pytest.fixture(scope="session")
def _shared_sim_process():
    proc, port = start_sim_process()
    yield ("127.0.0.1", port)
    stop_sim_process(proc)


def wait_until_all_exported(address, count: int, timeout: float = 10.0) -> bool:
    """Wait until the server lists ``count`` devices again (it lists none that a client holds,
    and frees a closed client's devices a moment after the close)."""
    import time

    from usbip_backend.client import list_devices

    deadline = time.monotonic() + timeout
    while True:
        if len(list_devices(*address, timeout=5)) == count:
            return True
        if time.monotonic() > deadline:
            return False
        threading.Event().wait(0.01)  # polls a condition, bounded by the deadline


@pytest.fixture
def sim_server(_shared_sim_process):
    """A virtual USB/IP server process with the stock devices, shared by the session; yields
    ("127.0.0.1", port). After each test every device is free again, so the next test finds
    them all."""
    from usbip_backend.client import list_devices

    count = len(list_devices(*_shared_sim_process, timeout=5))
    yield _shared_sim_process
    assert wait_until_all_exported(_shared_sim_process, count), "a device stayed imported after the test"


@pytest.fixture
def fresh_sim_server():
    """A virtual server process of the test's own (for tests that disturb server state)."""
    proc, port = start_sim_process()
    yield ("127.0.0.1", port)
    stop_sim_process(proc)
