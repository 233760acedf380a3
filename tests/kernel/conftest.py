"""The kernel-peer VM (tools/kernelpeer): one boot for the whole session, both server flavours.

Every test in tests/kernel gets the ``kernel`` marker and a generous timeout. Without QEMU the
suite skips (saying how to install it) except under CI=true, where it fails.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

import pytest

from .peer import HERE, INSTALL_HINT, TOOLS, Flavour, KernelPeer, devlist, free_port, guestcmd


def pytest_collection_modifyitems(config, items):
    for item in items:
        if str(item.fspath).startswith(HERE + os.sep):
            item.add_marker(pytest.mark.kernel)
            if item.get_closest_marker("timeout") is None:
                item.add_marker(pytest.mark.timeout(180))


def _unavailable(reason: str):
    if os.environ.get("CI") == "true":
        pytest.fail(f"kernel suite cannot run under CI=true: {reason}", pytrace=False)
    pytest.skip(f"{reason}; install with: {INSTALL_HINT}")


@pytest.fixture(scope="session")
def kernel_peer():
    """Boot ONE kernel-peer VM for the session (both flavours); stop it at the end."""
    missing = [t for t in ("qemu-system-x86_64", "cpio") if shutil.which(t) is None]
    if not os.path.exists("/bin/busybox"):
        missing.append("busybox-static")
    if missing:
        _unavailable(f"missing {', '.join(missing)}")
    cache = os.environ.get("KERNEL_PEER_CACHE") or guestcmd.cache_dir()
    reuse = os.environ.get("KERNEL_PEER_REUSE")  # "PORT": use a VM started by hand (start.sh PORT)
    if reuse:
        port = int(reuse)
        yield KernelPeer("127.0.0.1", port, port + 1,
                         {"device": [d.busid for d in devlist("127.0.0.1", port)],
                          "stub": [d.busid for d in devlist("127.0.0.1", port + 1)]},
                         os.path.join(cache, "run", f"console-{port}.log"), cache)
        return
    dev_port, stub_port = free_port(), free_port()
    env = dict(os.environ, KERNEL_PEER_CACHE=cache, STUB_PORT=str(stub_port), PYTHON=sys.executable)
    t0 = time.monotonic()
    proc = subprocess.run([os.path.join(TOOLS, "start.sh"), str(dev_port)], env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=900)
    ready = [ln for ln in proc.stdout.splitlines() if ln.startswith("READY ")]
    if proc.returncode != 0 or not ready:
        pytest.fail(f"kernel-peer VM did not start (exit {proc.returncode}):\n{proc.stderr[-3000:]}", pytrace=False)
    fields = dict(kv.split("=", 1) for kv in ready[0].split()[1:])
    peer = KernelPeer(
        host="127.0.0.1", device_port=int(fields["port"]), stub_port=int(fields["stub_port"]),
        busids={"device": fields["busids"].split(","), "stub": fields["stub_busids"].split(",")},
        console_log=os.path.join(cache, "run", f"console-{dev_port}.log"), cache=cache,
    )
    sys.stderr.write(f"\nkernel-peer VM ready in {time.monotonic() - t0:.1f} s: {ready[0]}\n")
    try:
        yield peer
    finally:
        subprocess.run([os.path.join(TOOLS, "stop.sh"), str(dev_port)], env=env,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=30)


@pytest.fixture(params=["device", "stub"])
def flavour(request, kernel_peer) -> Flavour:
    """Each test that takes this runs against both kernel servers."""
    return kernel_peer.flavour(request.param)


@pytest.fixture
def device_flavour(kernel_peer) -> Flavour:
    return kernel_peer.flavour("device")


@pytest.fixture
def stub_flavour(kernel_peer) -> Flavour:
    return kernel_peer.flavour("stub")
