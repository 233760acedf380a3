"""The wheel pip builds from this checkout: metadata a packager and PyPI read, the console
scripts, and no deprecation warnings from setuptools while building it."""

from __future__ import annotations

import glob
import os
import subprocess
import sys
import zipfile

import pytest

from conftest import ROOT


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp("wheel")
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-v", "-w", str(out), ROOT],
                          capture_output=True, text=True, timeout=280)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (path,) = glob.glob(os.path.join(str(out), "pyusb_usbip_backend-*.whl"))
    return path, proc.stdout + proc.stderr


def _dist_info(path: str, name: str) -> str:
    with zipfile.ZipFile(path) as z:
        (member,) = [n for n in z.namelist() if n.endswith(".dist-info/" + name)]
        return z.read(member).decode()


@pytest.mark.timeout(300)
def test_license_is_an_spdx_expression_and_setuptools_does_not_warn(wheel):
    path, log = wheel
    meta = _dist_info(path, "METADATA")
    assert "License-Expression: MIT" in meta.splitlines()
    assert "License-File: LICENSE" in meta
    assert "SetuptoolsDeprecationWarning" not in log, log[-3000:]
    assert "License :: OSI Approved" not in meta  # a classifier beside an SPDX expression is an error


@pytest.mark.timeout(300)
def test_author_urls_and_console_scripts(wheel):
    path, _ = wheel
    meta = _dist_info(path, "METADATA")
    assert any(line.startswith("Author-email: ") for line in meta.splitlines())
    assert sum(line.startswith("Project-URL: ") for line in meta.splitlines()) >= 2
    scripts = _dist_info(path, "entry_points.txt")
    assert "usbip-pyusb-test = usbip_backend.cli:console" in scripts
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
    assert "usbip_backend/py.typed" in names and "usbip_backend/cli/__init__.py" in names
    assert "usbip_backend_serial.pth" in names
