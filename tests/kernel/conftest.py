"""The kernel-peer VM (tools/kernelpeer): one boot for the whole session, both server flavours.

Every test in tests/kernel gets the ``kernel`` marker and a timeout on its call. Building and
booting the VM happens once, in the session fixture's setup, with its own deadline and progress
lines written past pytest's capture (a first run downloads about 72 MB). When this host cannot
run the VM (no QEMU, no apt/dpkg to build the image, the download failed) the whole suite is
skipped with that reason, once; under CI=true it fails instead.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import signal
import subprocess
import sys
import time

import pytest

from .peer import HERE, TOOLS, Flavour, KernelPeer, devlist, free_port, guestcmd

#: build (download included) plus boot; start.sh bounds the boot alone by its TIMEOUT (120 s)
START_DEADLINE = 900.0
#: start.sh's exit status for "this host cannot run the VM" (see start.sh and build.sh)
UNAVAILABLE = 3


def pytest_itemcollected(item):
    # here rather than in pytest_collection_modifyitems, so the marker exists before -m deselects
    if str(item.fspath).startswith(HERE + os.sep):
        item.add_marker(pytest.mark.kernel)
        if item.get_closest_marker("timeout") is None:
            # func_only: the first test's setup may build and boot the VM, which kernel_peer
            # bounds itself (START_DEADLINE); the test's own call gets 180 s
            item.add_marker(pytest.mark.timeout(180, func_only=True))


def progress(config, line: str) -> None:
    """Show ``line`` on the terminal now, even while pytest captures the running test's output."""
    capman = config.pluginmanager.getplugin("capturemanager")
    reporter = config.pluginmanager.getplugin("terminalreporter")
    with capman.global_and_fixture_disabled() if capman else contextlib.nullcontext():
        if reporter is not None:
            reporter.write_line(line)
        else:
            sys.stderr.write(line + "\n")
            sys.stderr.flush()


_SKIPPED = "kernel suite skipped: "


def _unavailable(config, reason: str):
    if os.environ.get("CI") == "true":
        progress(config, f"kernel suite cannot run under CI=true: {reason}")
        pytest.fail(f"kernel suite cannot run under CI=true: {reason}", pytrace=False)
    progress(config, _SKIPPED + reason)
    pytest.skip(_SKIPPED + reason)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    # pytest reports a skip raised in a fixture at each test's own line, which makes -ra list one
    # "SKIPPED" line per test; all share this one cause, so they get one location and fold into one
    if (report.skipped and isinstance(report.longrepr, tuple)
            and report.longrepr[2].startswith("Skipped: " + _SKIPPED)):
        report.longrepr = (os.path.join(HERE, "conftest.py"), _unavailable.__code__.co_firstlineno,
                           report.longrepr[2])
    return report


def _start_vm(config, env: dict, port: int):
    """Run start.sh PORT, relaying its progress lines; return (exit status, stdout, stderr lines)."""
    proc = subprocess.Popen([os.path.join(TOOLS, "start.sh"), str(port)], env=env,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    lines = []
    try:
        deadline = time.monotonic() + START_DEADLINE
        with selectors.DefaultSelector() as sel:
            sel.register(proc.stderr, selectors.EVENT_READ)
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"start.sh took longer than {START_DEADLINE:.0f} s")
                if not sel.select(timeout=left):
                    continue
                line = proc.stderr.readline()  # the scripts write whole lines
                if not line:
                    break
                line = line.rstrip("\n")
                lines.append(line)
                # build.sh's and start.sh's own lines are a handful; apt's and qemu's are kept
                # for the failure message only
                for prefix in ("build: ", "start.sh: "):
                    if line.startswith(prefix) and not line.startswith(prefix + "unavailable: "):
                        progress(config, "kernel suite: " + line[len(prefix):])
        out = proc.stdout.read()
        rc = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    except BaseException:
        # start.sh and its children (apt-get, build.sh, a qemu not yet daemonized) go; a qemu
        # that already daemonized is stop.sh's, which the caller runs
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        raise
    finally:
        proc.stdout.close()
        proc.stderr.close()
    return rc, out, lines


@pytest.fixture(scope="session")
def kernel_peer(request):
    """Boot ONE kernel-peer VM for the session (both flavours); stop it at the end."""
    config = request.config
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

    def stop():
        subprocess.run([os.path.join(TOOLS, "stop.sh"), str(dev_port)], env=env, stdin=subprocess.DEVNULL,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=30)

    progress(config, f"kernel suite: starting the kernel-peer VM (tools/kernelpeer/start.sh, cache {cache})")
    t0 = time.monotonic()
    try:
        rc, out, lines = _start_vm(config, env, dev_port)
    except BaseException:
        stop()
        raise
    ready = [ln for ln in out.splitlines() if ln.startswith("READY ")]
    if rc == UNAVAILABLE:
        why = [ln.split("unavailable: ", 1)[1] for ln in lines if "unavailable: " in ln]
        _unavailable(config, why[-1] if why else "\n".join(lines[-5:]))
    if rc != 0 or not ready:
        stop()
        tail = "\n".join(lines)[-3000:]
        pytest.fail(f"kernel-peer VM did not start (exit {rc}):\n{tail}", pytrace=False)
    fields = dict(kv.split("=", 1) for kv in ready[0].split()[1:])
    peer = KernelPeer(
        host="127.0.0.1", device_port=int(fields["port"]), stub_port=int(fields["stub_port"]),
        busids={"device": fields["busids"].split(","), "stub": fields["stub_busids"].split(",")},
        console_log=os.path.join(cache, "run", f"console-{dev_port}.log"), cache=cache,
    )
    progress(config, f"kernel suite: VM ready in {time.monotonic() - t0:.1f} s (device mode on "
                     f"127.0.0.1:{peer.device_port}, stub mode on 127.0.0.1:{peer.stub_port})")
    try:
        yield peer
    finally:
        stop()


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
