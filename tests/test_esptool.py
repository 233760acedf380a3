"""esptool's real command line through ``usbip://`` against the virtual ESP32-S3 (its
USB-Serial-JTAG, 303a:1001, with a ROM bootloader: :mod:`usbip_backend.sim.esp`).

esptool is unmodified and never imports this package: ``usbip://`` reaches pyserial through the
installed package's .pth. ``--before usb-reset`` is esptool's USB-Serial-JTAG reset, which the
virtual chip must see to start its bootloader; ``--no-stub`` because the flasher stub is not
emulated.
"""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import subprocess
import sys

import pytest

from usbip_backend.sim import SimServer
from usbip_backend.sim.esp import Esp32S3Device


def esptool_command():
    exe = shutil.which("esptool", path=os.path.dirname(sys.executable))
    if exe is None:
        if os.environ.get("CI") == "true":
            pytest.fail("esptool is not installed (it is in the test extra: pip install '.[test]')")
        pytest.skip("esptool not installed: pip install 'esptool==5.6.0' (or '.[test]')")
    return exe


@pytest.fixture
def esp():
    chip = Esp32S3Device("1-1")
    with SimServer([chip]) as srv:
        yield srv, chip


def run_esptool(srv, *args, timeout=240):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["NO_COLOR"] = "1"
    url = f"usbip://127.0.0.1:{srv.port}/303a:1001"
    done = subprocess.run([esptool_command(), "--port", url, "--before", "usb-reset", "--no-stub", *args],
                          capture_output=True, text=True, timeout=timeout, env=env)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    return out


@pytest.mark.timeout(300)
def test_chip_id_enters_the_bootloader_with_the_usb_jtag_reset(esp):
    srv, chip = esp
    out = run_esptool(srv, "chip-id")
    assert "Detecting chip type... ESP32-S3" in out and "Chip type:" in out
    assert chip.resets[0] == "download"  # the reset sequence put it in its bootloader
    assert chip.resets[-1] == "app"  # and the hard reset after it back into the application


@pytest.mark.timeout(600)
def test_write_verify_and_read_flash(esp, tmp_path):
    srv, chip = esp
    image = random.Random(3).randbytes(300_000)
    app = tmp_path / "app.bin"
    app.write_bytes(image)
    out = run_esptool(srv, "write-flash", "0x10000", str(app))
    assert "Hash of data verified." in out
    assert hashlib.md5(bytes(chip.flash[0x10000:0x10000 + len(image)])).digest() == hashlib.md5(image).digest()
    out = run_esptool(srv, "verify-flash", "0x10000", str(app))  # a second session
    assert "Verification successful (digest matched)." in out
    back = tmp_path / "back.bin"
    run_esptool(srv, "read-flash", "0x10000", "8192", str(back))
    assert back.read_bytes() == image[:8192]


@pytest.mark.timeout(600)
@pytest.mark.parametrize("kind", ["Esp32S3DevKit", "Esp32S3DevKitCh340", "Esp32S3DevKitFtdi"],
                         ids=["cp210x", "ch34x", "ftdi"])
def test_esptool_default_reset_behind_each_bridge(tmp_path, kind):
    """A DevKit's UART port: the classic EN/IO0 circuit behind a CP2102, a CH340 or an FT232R,
    esptool's default reset (its tight reset needs a file descriptor: fileno() raises ENOTTY and
    it falls back), write-flash with its MD5 verify through each driver."""
    from usbip_backend.sim import esp as sim_esp

    kit = getattr(sim_esp, kind)("1-3")
    with SimServer([kit]) as srv:
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        env["NO_COLOR"] = "1"
        image = random.Random(5).randbytes(100_000)
        app = tmp_path / "app.bin"
        app.write_bytes(image)
        done = subprocess.run([esptool_command(), "--port", f"usbip://127.0.0.1:{srv.port}/1-3", "--no-stub",
                               "write-flash", "0x0", str(app)], capture_output=True, text=True, timeout=300, env=env)
        out = done.stdout + done.stderr
        assert done.returncode == 0, out
        assert "Hash of data verified." in out
        assert bytes(kit.flash[:len(image)]) == image
        assert kit.resets[0] == "download" and kit.resets[-1] == "app"
