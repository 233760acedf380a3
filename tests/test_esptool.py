"""esptool's real command line through ``usbip://`` against the virtual ESP32-S3
(:mod:`usbip_backend.sim.esp`): its USB-Serial-JTAG (303a:1001) and a DevKit's USB-UART bridge.

esptool is unmodified and never imports this package: ``usbip://`` reaches pyserial through the
installed package's .pth. By default esptool uploads its flasher stub and talks to it (compressed
writes, the stub's READ_FLASH, ERASE_REGION...); ``--no-stub`` keeps it on the ROM loader. Both
are run. ``--before usb-reset`` is esptool's USB-Serial-JTAG reset, which the virtual chip must see
to start its bootloader; ``--after hard-reset`` (the default) starts the application, which makes
the USB-Serial-JTAG device re-enumerate in the tests at the end (elsewhere it stays on the bus, so
esptool runs follow each other at once).
"""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import json
import os
import random
import shutil
import subprocess
import sys
import time

import pytest
import serial

import usbip_backend  # noqa: F401  (registers usbip:// with pyserial for the in-process sessions)
from usbip_backend.client import list_devices
from usbip_backend.sim import SimServer
from usbip_backend.sim.esp import Esp32S3Device, Esp32S3Rom, slip


def esptool_command():
    exe = shutil.which("esptool", path=os.path.dirname(sys.executable))
    if exe is None:
        if os.environ.get("CI") == "true":
            pytest.fail("esptool is not installed (it is in the test extra: pip install '.[test]')")
        pytest.skip("esptool not installed: pip install 'esptool==5.6.0' (or '.[test]')")
    return exe


def esptool_stub(chip="esp32s3"):
    """The flasher stub esptool uploads (its first stub directory holding one for the chip)."""
    spec = importlib.util.find_spec("esptool")
    assert spec is not None and spec.submodule_search_locations
    base = os.path.join(list(spec.submodule_search_locations)[0], "targets", "stub_flasher")
    for subdir in ("2", "1"):  # esptool's StubFlasher.STUB_SUBDIRS order
        path = os.path.join(base, subdir, f"{chip}.json")
        if os.path.exists(path):
            with open(path) as f:
                return json.load(f)
    raise AssertionError(f"esptool ships no stub for {chip}")


def run_esptool(url, *args, stub=True, before="usb-reset", timeout=120):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["NO_COLOR"] = "1"
    options = ["--port", url, "--before", before] + ([] if stub else ["--no-stub"])
    done = subprocess.run([esptool_command(), *options, *args], capture_output=True, text=True,
                          timeout=timeout, env=env)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    return out


class Jtag:
    """The virtual chip on its USB-Serial-JTAG and the server exporting it."""

    def __init__(self, srv, chip):
        self.srv, self.chip = srv, chip
        self.url = f"usbip://127.0.0.1:{srv.port}/303a:1001"

    def esptool(self, *args, **kw):
        # The last run's hard reset started the application, which may re-enumerate: wait.
        assert self.chip.wait_enumerated(10), "the device did not come back on the bus"
        return run_esptool(self.url, *args, **kw)


def _jtag(reenumerate):
    chip = Esp32S3Device("1-1", reenumerate=reenumerate)
    with SimServer([chip]) as srv:
        yield Jtag(srv, chip)
        assert chip.wait_enumerated(10)  # no re-enumeration thread outlives the test


@pytest.fixture
def esp():
    """The chip on its USB-Serial-JTAG, staying on the bus through its resets (re-enumeration
    has tests of its own; without it, esptool runs follow each other at once)."""
    yield from _jtag(None)


@pytest.fixture
def esp_reenumerating():
    """The chip on its USB-Serial-JTAG, re-enumerating when its application starts."""
    yield from _jtag(0.3)


def compressible(seed, size):
    """Half random, half a pattern: esptool compresses it (it sends random data uncompressed)."""
    rnd = random.Random(seed)
    return rnd.randbytes(size // 2) + bytes(range(256)) * (size // 2 // 256)


def assert_stub_uploaded(rom):
    """esptool's stub for the ESP32-S3 arrived whole at the addresses its JSON gives, and ran."""
    stub = esptool_stub()
    run = rom.runs[0]
    assert run.ok, run.problem
    assert run.entry == stub["entry"]
    assert run.segments[stub["text_start"]] == base64.b64decode(stub["text"])
    assert run.segments[stub["data_start"]] == base64.b64decode(stub["data"])


# -- the flasher stub (esptool's default) -----------------------------------------------------------
@pytest.mark.timeout(120)
def test_chip_id_through_the_stub(esp):
    out = esp.esptool("--baud", "460800", "chip-id")
    assert "Detecting chip type... ESP32-S3" in out and "Chip type:" in out
    assert "Stub flasher running." in out and "Changing baud rate to 460800" in out
    assert_stub_uploaded(esp.chip.chip)
    assert esp.chip.chip.baudrate == 460800  # the stub's CHANGE_BAUDRATE
    assert esp.chip.resets == ["download", "app"]  # usb-reset into the bootloader, hard reset out


@pytest.mark.timeout(180)
def test_stub_write_verify_read_and_erase(esp, tmp_path):
    chip = esp.chip
    image = compressible(3, 128 * 1024)
    app = tmp_path / "app.bin"
    app.write_bytes(image)
    chip.flash[0x10000 - 16:0x10000] = b"\x00" * 16  # before the write, in the sector below it
    out = esp.esptool("write-flash", "0x10000", str(app))
    assert "compressed) at 0x00010000" in out and "Hash of data verified." in out
    assert bytes(chip.flash[0x10000:0x10000 + len(image)]) == image
    assert chip.flash[0x10000 - 16:0x10000] == b"\x00" * 16  # the stub erases only what it writes

    raw = tmp_path / "raw.bin"
    raw.write_bytes(random.Random(4).randbytes(5000))
    out = esp.esptool("write-flash", "--no-compress", "0x40000", str(raw))  # FLASH_BEGIN / DATA
    assert "Wrote 5000 bytes at 0x00040000" in out and "Hash of data verified." in out
    assert bytes(chip.flash[0x40000:0x40000 + 5000]) == raw.read_bytes()

    out = esp.esptool("verify-flash", "0x10000", str(app))  # another session, another stub
    assert "Verification successful (digest matched)." in out

    back = tmp_path / "back.bin"
    out = esp.esptool("read-flash", "0x10000", str(len(image)), str(back))  # the stub's READ_FLASH
    assert back.read_bytes() == image

    esp.esptool("erase-region", "0x10000", "0x4000")
    assert chip.flash[0x10000:0x14000] == b"\xff" * 0x4000
    assert bytes(chip.flash[0x14000:0x10000 + len(image)]) == image[0x4000:]
    assert len(chip.chip.runs) == 5 and all(run.ok for run in chip.chip.runs)


@pytest.mark.timeout(180)
def test_stub_behind_a_cp2102(tmp_path):
    """A DevKit's UART port (the CP2102 and the classic EN/IO0 circuit): esptool's default reset,
    the stub at 460800 Bd, a compressed write with its MD5 check; then, the stub left running
    (``--after no-reset``) and found again by its SYNC answer (``--before no-reset``), verify,
    read, erase-region and erase-flash in further sessions."""
    from usbip_backend.sim.esp import Esp32S3DevKit

    kit = Esp32S3DevKit("1-3")
    with SimServer([kit]) as srv:
        url = f"usbip://127.0.0.1:{srv.port}/1-3"

        def esptool(*args, before="no-reset", after="no-reset"):
            return run_esptool(url, "--baud", "460800", "--after", after, *args, before=before)

        image = compressible(5, 64 * 1024)
        app = tmp_path / "app.bin"
        app.write_bytes(image)
        out = esptool("write-flash", "0x0", str(app), before="default-reset")
        assert "Stub flasher running." in out and "Hash of data verified." in out
        assert bytes(kit.flash[:len(image)]) == image
        assert kit.baudrate == 460800 and kit.chip.baudrate == 460800  # bridge and chip agree
        out = esptool("verify-flash", "0x0", str(app))
        assert "Stub flasher is already running." in out
        assert "Verification successful (digest matched)." in out
        back = tmp_path / "back.bin"
        esptool("read-flash", "0x8000", "0x2000", str(back))
        assert back.read_bytes() == image[0x8000:0xA000]
        esptool("erase-region", "0x4000", "0x2000")
        assert kit.flash[0x4000:0x6000] == b"\xff" * 0x2000
        assert bytes(kit.flash[:0x4000]) == image[:0x4000] and bytes(kit.flash[0x6000:len(image)]) == image[0x6000:]
        esptool("erase-flash")
        assert kit.flash == b"\xff" * Esp32S3Rom.FLASH_SIZE
        assert_stub_uploaded(kit.chip)
        assert len(kit.chip.runs) == 1  # uploaded once, then found running
        # (A hard reset now would not reset it: the port opened with DTR asserted, and the RTS
        # pulse with DTR high leaves EN alone in the DevKit's circuit.)
        assert kit.resets == ["download"] and kit.chip.mode == "stub"


# -- the ROM loader (--no-stub) ----------------------------------------------------------------------
@pytest.mark.timeout(120)
def test_chip_id_enters_the_bootloader_with_the_usb_jtag_reset(esp):
    out = esp.esptool("chip-id", stub=False)
    assert "Detecting chip type... ESP32-S3" in out and "Chip type:" in out
    assert esp.chip.resets[0] == "download"  # the reset sequence put it in its bootloader
    assert esp.chip.resets[-1] == "app"  # and the hard reset after it back into the application
    assert esp.chip.chip.runs == []  # no stub


@pytest.mark.timeout(180)
def test_write_verify_and_read_flash(esp, tmp_path):
    chip = esp.chip
    image = random.Random(3).randbytes(100_000)
    app = tmp_path / "app.bin"
    app.write_bytes(image)
    out = esp.esptool("write-flash", "0x10000", str(app), stub=False)
    assert "Hash of data verified." in out
    assert hashlib.md5(bytes(chip.flash[0x10000:0x10000 + len(image)])).digest() == hashlib.md5(image).digest()
    out = esp.esptool("verify-flash", "0x10000", str(app), stub=False)  # a second session
    assert "Verification successful (digest matched)." in out
    back = tmp_path / "back.bin"
    esp.esptool("read-flash", "0x10000", "8192", str(back), stub=False)
    assert back.read_bytes() == image[:8192]


@pytest.mark.timeout(180)
@pytest.mark.parametrize("kind", ["Esp32S3DevKit", "Esp32S3DevKitCh340", "Esp32S3DevKitFtdi"],
                         ids=["cp210x", "ch34x", "ftdi"])
def test_esptool_default_reset_behind_each_bridge(tmp_path, kind):
    """A DevKit's UART port: the classic EN/IO0 circuit behind a CP2102, a CH340 or an FT232R,
    esptool's default reset (its tight reset needs a file descriptor: fileno() raises ENOTTY and
    it falls back), write-flash with its MD5 verify through each driver, ROM loader only."""
    from usbip_backend.sim import esp as sim_esp

    kit = getattr(sim_esp, kind)("1-3")
    with SimServer([kit]) as srv:
        image = random.Random(5).randbytes(64 * 1024)
        app = tmp_path / "app.bin"
        app.write_bytes(image)
        out = run_esptool(f"usbip://127.0.0.1:{srv.port}/1-3", "write-flash", "0x0", str(app),
                          stub=False, before="default-reset")
        assert "Hash of data verified." in out
        assert bytes(kit.flash[:len(image)]) == image
        assert kit.resets[0] == "download" and kit.resets[-1] == "app"


# -- re-enumeration --------------------------------------------------------------------------------
def app_image(seed=7, size=32 * 1024):
    """Something the virtual ROM boots: the image magic first."""
    return b"\xe9" + random.Random(seed).randbytes(size - 1)


def usb_reset(port):
    """esptool's usb-reset sequence, one line at a time: idle, GPIO0 low, reset held, let go."""
    port.rts = False
    port.dtr = False
    port.dtr = True
    port.rts = True
    port.dtr = False
    port.rts = False


def read_until(port, marker, timeout=10.0):
    """Read from a pyserial port until ``marker`` arrived (each read bounded by its timeout)."""
    got = bytearray()
    deadline = time.monotonic() + timeout
    while marker not in got:
        assert time.monotonic() < deadline, f"no {marker!r} in {bytes(got)!r}"
        got += port.read(port.in_waiting or 1)
    return bytes(got)


def read_until_dropped(port, timeout=10.0):
    """Read until the server closes the connection (the device left the bus); what came first."""
    got = bytearray()
    deadline = time.monotonic() + timeout
    while True:
        assert time.monotonic() < deadline, f"the connection stayed up ({bytes(got)!r})"
        try:
            got += port.read(port.in_waiting or 1)
        except serial.SerialException:
            return bytes(got)


@pytest.mark.timeout(120)
def test_hard_reset_reenumerates_and_the_device_is_found_again(esp_reenumerating, tmp_path):
    """esptool's --after hard-reset starts the application: the device leaves the bus and comes
    back; a pyserial session on the same URL then hears the application, and another esptool run
    finds the chip again."""
    esp = esp_reenumerating
    chip = esp.chip
    url = f"usbip://127.0.0.1:{esp.srv.port}/1-1"
    image = app_image()
    app = tmp_path / "app.bin"
    app.write_bytes(image)
    out = run_esptool(url, "--after", "hard-reset", "write-flash", "0x0", str(app))
    assert "Hard resetting via RTS pin..." in out and "Hash of data verified." in out
    assert chip.wait_enumerated(10)
    assert chip.bus_events == [("unplug", chip.bus_events[0][1]), ("plug", 0x1001)]
    with serial.serial_for_url(url, timeout=1) as port:
        assert Esp32S3Rom.APP_OUTPUT in read_until(port, Esp32S3Rom.APP_OUTPUT)
    out = esp.esptool("chip-id")
    assert "Chip type:" in out and bytes(chip.flash[:len(image)]) == image
    assert chip.wait_enumerated(10) and len(chip.bus_events) == 4  # (its hard reset: once more)


@pytest.mark.timeout(120)
def test_an_application_with_its_own_pid_and_esptool_finds_the_rom_again(tmp_path):
    """The application comes back as another device (303a:4001, a TinyUSB CDC); esptool's
    usb-reset then drops it as soon as the chip is held in reset (the application's USB dies
    with it) and the ROM's USB-Serial-JTAG appears: esptool's reset fails half-way, its retry
    opens the port again, the handler waits for the busid to be back, and the reset is done
    again on the ROM's device."""
    chip = Esp32S3Device("1-1", reenumerate_pid=0x4001)
    with SimServer([chip]) as srv:
        url = f"usbip://127.0.0.1:{srv.port}/1-1"
        app = tmp_path / "app.bin"
        app.write_bytes(app_image())
        run_esptool(url, "write-flash", "0x0", str(app))
        assert chip.wait_enumerated(10)
        assert [(r.idVendor, r.idProduct) for r in list_devices("127.0.0.1", srv.port, timeout=5)] \
            == [(0x303A, 0x4001)]
        out = run_esptool(url, "verify-flash", "0x0", str(app))
        assert "Verification successful (digest matched)." in out
        # Its connection cut by the reset is the port's to report: Python's last-resort handler
        # (esptool configures no logging) prints no engine warning about it.
        assert "connection lost" not in out, out
        assert chip.wait_enumerated(10)
        assert chip.bus_events[2:] == [("unplug", 1), ("plug", 0x1001), ("unplug", 0), ("plug", 0x4001)]


#: A new program (as miniterm) reading the application's output: pyserial only (the installed
#: package's .pth registers usbip://), Python's default logging (warnings and up on stderr) but
#: the handler's INFO lines, which say when it waits for the device.
NEW_SESSION = """
import logging, sys, time, serial
logging.basicConfig(format="%(name)s %(levelname)s %(message)s")
logging.getLogger("usbip_backend.serial").setLevel(logging.INFO)
with serial.serial_for_url(sys.argv[1], timeout=0.5) as port:
    got, deadline = b"", time.monotonic() + 20
    while sys.argv[2].encode() not in got and time.monotonic() < deadline:
        got += port.read(port.in_waiting or 1)
print(got)
"""


@pytest.mark.timeout(120)
def test_a_program_started_while_the_board_is_off_the_bus_waits_for_it(tmp_path):
    """esptool --before usb-reset --after hard-reset write-flash; the application takes over USB
    (the device leaves the bus) and a new program opens the port while it is away: its first
    open waits for the device (``FIRST_OPEN_WAIT``) and hears the application. Neither program
    prints the engine's "connection lost". (Off the bus 1.5 s here, longer than a process takes
    to start; a program started within the 0.5 s before the device leaves opens it and is cut off
    with it: its read raises.)"""
    chip = Esp32S3Device("1-1", reenumerate=1.5)
    with SimServer([chip]) as srv:
        url = f"usbip://127.0.0.1:{srv.port}/1-1"
        app = tmp_path / "app.bin"
        app.write_bytes(app_image())
        out = run_esptool(url, "--after", "hard-reset", "write-flash", "0x0", str(app))
        assert "Hard resetting via RTS pin..." in out and "connection lost" not in out
        deadline = time.monotonic() + 10
        while not chip.bus_events:  # the device leaving (APP_USB_START after the application starts)
            assert time.monotonic() < deadline, "the device did not leave the bus"
            time.sleep(0.005)  # polls what the chip's thread records, bounded
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        done = subprocess.run([sys.executable, "-c", NEW_SESSION, url, Esp32S3Rom.APP_OUTPUT.decode("latin-1")],
                              capture_output=True, text=True, timeout=60, env=env)
        assert done.returncode == 0, done.stdout + done.stderr
        assert repr(Esp32S3Rom.APP_OUTPUT)[2:-1] in done.stdout, done.stdout
        assert "no device with busid 1-1" in done.stderr and "waiting up to 3 s" in done.stderr, done.stderr
        assert "connection lost" not in done.stderr and "WARNING" not in done.stderr, done.stderr
        assert chip.wait_enumerated(10) and chip.bus_events[1:] == [("plug", 0x1001)]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("app_pid", [None, 0x4001], ids=["same-pid", "tinyusb-pid"])
def test_a_reset_drops_the_open_session_and_reopen_finds_the_device(app_pid):
    """A pyserial session resets the chip into its bootloader and out again (esptool's sequences
    by hand): the server closes the session's connection when the application takes over USB,
    the device is missing from the server's list for a while, and ``open()`` of the same port
    waits for it (``REENUMERATE_WAIT``), by busid or, with another PID, the same VID there."""
    chip = Esp32S3Device("1-1", reenumerate=0.3, reenumerate_pid=app_pid)
    chip.flash[:4] = b"\xe9\x03\x02\x20"
    with SimServer([chip]) as srv:
        port = serial.serial_for_url(f"usbip://127.0.0.1:{srv.port}/303a:1001", timeout=0.5)
        try:
            usb_reset(port)
            assert b"waiting for download" in read_until(port, b"waiting for download")
            port.rts = True  # hard reset: EN low...
            port.rts = False  # ...and high: the application starts
            before = read_until_dropped(port)
            assert b"boot:0x8 (SPI_FAST_FLASH_BOOT)" in before  # the ROM's log, before USB went
            assert chip.bus_events[0] == ("unplug", 1)  # the session's connection was cut
            assert all(r.busid != "1-1" for r in list_devices("127.0.0.1", srv.port, timeout=5)) \
                or chip.bus_events[-1][0] == "plug"  # (either seen gone or already back)
            port.close()
            port.open()  # waits for the device to come back
            assert chip.bus_events[-1] == ("plug", app_pid or 0x1001)
            assert Esp32S3Rom.APP_OUTPUT in read_until(port, Esp32S3Rom.APP_OUTPUT)
            if app_pid is not None:
                # Into the bootloader again: the application's USB dies with the reset (the
                # rest of the sequence may fail: the device is gone) and the ROM's
                # USB-Serial-JTAG (303a:1001) appears instead.
                try:
                    usb_reset(port)
                    read_until_dropped(port)
                except serial.SerialException:
                    pass
                port.close()
                port.open()
                assert chip.bus_events[-1] == ("plug", 0x1001) and chip.chip.mode == "download"
                port.write(slip(b"\x00\x08\x24\x00\x00\x00\x00\x00\x07\x07\x12\x20" + b"\x55" * 32))
                assert b"\x01\x08\x04\x00\x07\x07\x12\x20" in read_until(port, b"\x07\x07\x12\x20")
        finally:
            port.close()
        assert chip.wait_enumerated(10)


@pytest.mark.timeout(30)
def test_a_reset_before_the_application_took_over_usb_keeps_the_device():
    """Back into the bootloader before the application got to its USB: no re-enumeration."""
    chip = Esp32S3Device("1-1")
    chip.APP_USB_START = 5.0  # an application slow to start, so the reset below is surely first
    with SimServer([chip]) as srv:
        with serial.serial_for_url(f"usbip://127.0.0.1:{srv.port}/1-1", timeout=0.5) as port:
            port.rts = False
            port.dtr = False
            port.rts = True  # hard reset...
            port.rts = False  # ...the application starts
            assert b"invalid header: 0xffffffff" in read_until(port, b"invalid header")
            assert not chip.wait_enumerated(0)  # its USB take-over pending
            usb_reset(port)
            assert b"waiting for download" in read_until(port, b"waiting for download")
            assert chip.wait_enumerated(0) and chip.chip.mode == "download"
            port.write(slip(b"\x00\x08\x24\x00\x00\x00\x00\x00\x07\x07\x12\x20" + b"\x55" * 32))
            assert b"\x07\x07\x12\x20" in read_until(port, b"\x07\x07\x12\x20")
        assert chip.bus_events == [] and chip.resets == ["app", "download"]
