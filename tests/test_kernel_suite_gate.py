"""The kernel suite's gate (tests/kernel/conftest.py) on hosts that cannot run its VM.

Each case runs pytest on tests/kernel in a subprocess with a PATH that lacks a tool (every other
program on PATH is still there, as on a real host) and an empty image cache, so nothing is
downloaded and no VM boots. Locally the whole suite must be skipped with one line naming what is
missing; under CI=true the same host must fail.
"""

from __future__ import annotations

import fnmatch
import os
import re
import shutil
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def path_without(dest, *patterns: str) -> str:
    """A PATH of one directory holding links to every program on PATH except ``patterns``."""
    dest.mkdir()
    for d in os.environ.get("PATH", "").split(os.pathsep):
        if not os.path.isdir(d):
            continue
        for name in os.listdir(d):
            link = dest / name
            if any(fnmatch.fnmatch(name, p) for p in patterns) or os.path.lexists(link):
                continue
            link.symlink_to(os.path.join(d, name))
    return str(dest)


def run_suite(tmp_path, ci: bool, path=None, prefix=(), **extra_env: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items()
           if k not in ("CI", "KERNEL_PEER_REUSE", "PYTEST_ADDOPTS", "KPKG")}
    env["KERNEL_PEER_CACHE"] = str(tmp_path / "cache")  # empty: the image would have to be built
    if path is not None:
        env["PATH"] = path
    if ci:
        env["CI"] = "true"
    env.update(extra_env)
    return subprocess.run([*prefix, sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "tests/kernel"], cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=45)


def assert_skipped_once(proc, reason: str) -> None:
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    skips = [ln for ln in proc.stdout.splitlines() if ln.startswith("SKIPPED ")]
    assert len(skips) == 1, out  # one line for the whole suite, not one per test
    assert re.match(r"SKIPPED \[\d+\] tests/kernel/conftest\.py:\d+: kernel suite skipped: ", skips[0]), out
    assert reason in skips[0], out
    summary = proc.stdout.strip().splitlines()[-1]
    assert re.fullmatch(r"\d+ skipped in [\d.]+s( \(.*\))?", summary), out  # nothing passed, failed or errored
    # also said once as it happened, past pytest's capture of the test that set the fixture up
    live = [ln for ln in proc.stdout.splitlines() if ln.startswith("kernel suite skipped: ")]
    assert len(live) == 1 and reason in live[0], out
    assert "booting the VM" not in out


def assert_failed_under_ci(proc, reason: str) -> None:
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    assert "kernel suite cannot run under CI=true: " + reason in proc.stdout, out
    assert "skipped" not in proc.stdout.strip().splitlines()[-1], out
    assert re.search(r"\d+ errors? in ", proc.stdout), out


NO_QEMU = "qemu-system-x86_64 not found (apt-get install qemu-system-x86"
NO_APT = "apt-get, apt-cache, dpkg-deb not found"


def test_without_qemu_the_suite_is_skipped_once_with_the_install_line(tmp_path):
    proc = run_suite(tmp_path, ci=False, path=path_without(tmp_path / "bin", "qemu-system-*"))
    assert_skipped_once(proc, NO_QEMU)


def test_without_qemu_under_ci_the_suite_fails(tmp_path):
    proc = run_suite(tmp_path, ci=True, path=path_without(tmp_path / "bin", "qemu-system-*"))
    assert_failed_under_ci(proc, NO_QEMU)


def test_without_apt_and_dpkg_the_suite_is_skipped_once(tmp_path):
    if shutil.which("qemu-system-x86_64") is None:
        pytest.skip("needs qemu-system-x86_64, so that the missing apt is what stops the build")
    proc = run_suite(tmp_path, ci=False, path=path_without(tmp_path / "bin", "apt*", "dpkg*"))
    assert_skipped_once(proc, NO_APT)
    assert "kernel suite: building the VM image in " in proc.stdout  # progress before the skip


def test_without_apt_and_dpkg_under_ci_the_suite_fails(tmp_path):
    if shutil.which("qemu-system-x86_64") is None:
        pytest.skip("needs qemu-system-x86_64, so that the missing apt is what stops the build")
    proc = run_suite(tmp_path, ci=True, path=path_without(tmp_path / "bin", "apt*", "dpkg*"))
    assert_failed_under_ci(proc, NO_APT)


def _no_network_prefix():
    """A command prefix that runs its command in a new network namespace (no interfaces but lo)."""
    unshare = shutil.which("unshare")
    if unshare is None:
        return None
    for prefix in ([unshare, "-n"], [unshare, "-rn"]):
        if subprocess.run([*prefix, "true"], capture_output=True, timeout=10).returncode == 0:
            return prefix
    return None


def test_without_network_the_download_failure_is_a_skip(tmp_path):
    prefix = _no_network_prefix()
    if prefix is None:
        pytest.skip("unshare cannot make a network namespace here")
    for tool in ("qemu-system-x86_64", "apt-get", "dpkg-deb", "cpio"):
        if shutil.which(tool) is None:
            pytest.skip(f"needs {tool}, so that the download is what fails")
    if not os.path.exists("/bin/busybox"):
        pytest.skip("needs /bin/busybox, so that the download is what fails")
    # apt's retries only slow a download that cannot succeed
    conf = tmp_path / "apt.conf"
    conf.write_text('Acquire::Retries "0";\n')
    proc = run_suite(tmp_path, ci=False, prefix=prefix, APT_CONFIG=str(conf))
    # the download fails, or the apt-get update before it where apt's lists were never fetched
    assert_skipped_once(proc, " failed (no network or no Debian mirror reachable?)")
    assert not list((tmp_path / "cache" / "debs").glob("*.deb"))  # nothing half-downloaded kept
