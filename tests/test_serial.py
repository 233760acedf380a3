"""The pyserial ``usbip://`` handler against the virtual server's CDC-ACM echo (busid 1-2).

Real pyserial calls (``serial.serial_for_url``) over real TCP to the virtual server; the virtual
CDC-ACM device records the requests it gets (DTR/RTS states in order, line-coding requests,
breaks), which is what the assertions look at. The virtual serial devices send at their line rate
(a write bigger than their buffer takes its line time), so tests that echo a lot through them
at a low baud rate use an unpaced one (``paced = False``, the stock name's ``-unpaced``).
"""

from __future__ import annotations

import errno
import logging
import os
import random
import struct
import subprocess
import sys
import threading
import time

import pytest
import serial

import usbip_backend  # noqa: F401  (registers usbip:// with pyserial)
from usbip_backend.serialport import parse_url
from usbip_backend.sim import SimServer
from usbip_backend.sim.devices import stock_devices

from conftest import ROOT


@pytest.fixture
def server():
    with SimServer(stock_devices()) as srv:
        yield srv


def url(srv, target="1-2", query=""):
    return f"usbip://127.0.0.1:{srv.port}/{target}{query}"


def read_exactly(ser, count):
    """``count`` bytes from the port, read as they come (each read bounded by its timeout)."""
    got = bytearray()
    while len(got) < count:
        chunk = ser.read(count - len(got))
        assert chunk, f"timed out after {len(got)} of {count} bytes"
        got += chunk
    return bytes(got)


def wait_for(condition, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.001)  # polls a condition the server's thread makes true, bounded


# -- URLs ----------------------------------------------------------------------------------------------
def test_url_forms():
    u = parse_url("usbip://192.168.1.20/1-2")
    assert (u.host, u.port, u.busid, u.vid) == ("192.168.1.20", 3240, "1-2", None)
    u = parse_url("usbip://192.168.1.20:3241/303a:1001?interface=2&timeout=1.5&baudrate=115200")
    assert (u.port, u.vid, u.pid, u.interface, u.timeout, u.baudrate) == (3241, 0x303A, 0x1001, 2, 1.5, 115200)
    u = parse_url("usbip://[fe80::1]:3240/1-1.3?logging=debug")
    assert (u.host, u.busid, u.logging, u.where) == ("fe80::1", "1-1.3", "debug", "[fe80::1]:3240")
    assert u.wait is None  # not given: the port's defaults (FIRST_OPEN_WAIT, REENUMERATE_WAIT)
    assert parse_url("usbip://h/1-1?wait=2.5").wait == 2.5 and parse_url("usbip://h/1-1?wait=0").wait == 0


@pytest.mark.parametrize("bad, says", [
    ("usbip://host", "no device"),
    ("usbip:///1-1", "no host"),
    ("usbip://host/abc", "neither a busid"),
    ("usbip://host/1-1?colour=red", "unknown option"),
    ("usbip://host:99999/1-1", "bad usbip:// URL"),
    ("usbip://host/1-1?interface=x", "interface"),
    ("usbip://host/1-1?wait=soon", "wait='soon': expected seconds >= 0"),
    ("usbip://host/1-1?wait=-1", "wait='-1': expected seconds >= 0"),
    ("usbip://host/1-1?wait=inf", "wait='inf': expected seconds >= 0"),
    ("socket://host/1-1", "not a usbip:// URL"),
])
def test_bad_urls_say_what_is_wrong(bad, says):
    with pytest.raises(ValueError, match=says):
        parse_url(bad)


# -- the port --------------------------------------------------------------------------------------------
def test_echo_through_serial_for_url(server):
    acm = server.device("1-2")
    acm.paced = False  # 100 KiB at 115200 baud would take 9 s
    with serial.serial_for_url(url(server, query="?baudrate=115200"), timeout=2) as ser:
        assert acm.baudrate == 115200
        assert acm.control_line_state == 3  # opened with DTR and RTS asserted, as a tty
        ser.write(b"hello world")
        assert ser.read(11) == b"hello world"
        payload = bytes(range(256)) * 400  # 100 KiB: many URBs each way, order kept
        assert ser.write(payload) == len(payload)
        assert read_exactly(ser, len(payload)) == payload
        assert ser._unpaced  # it took more than 115200 baud explains: the URBs grew to 16 KiB


def test_by_vid_pid_and_reopen_of_the_same_instance(server):
    ser = serial.serial_for_url(url(server, "1209:0002"), timeout=2)
    ser.write(b"one")
    assert ser.read(3) == b"one"
    ser.close()
    assert server.wait_free("1-2")
    ser.open()  # esptool reopens the same instance after a reset
    ser.write(b"two")
    assert ser.read(3) == b"two"
    ser.close()


def test_read_timeouts(server):
    with serial.serial_for_url(url(server), timeout=0) as ser:
        assert ser.read(5) == b""  # non-blocking
        ser.timeout = 0.2
        t0 = time.monotonic()
        assert ser.read(5) == b""
        assert time.monotonic() - t0 >= 0.2
        ser.write(b"ab")
        wait_for(lambda: ser.in_waiting == 2)
        assert ser.read(5) == b"ab"  # what came within the timeout
        ser.write(b"line\nrest")
        assert ser.read_until(b"\n") == b"line\n"
        ser.reset_input_buffer()
        assert ser.in_waiting == 0


def test_dtr_rts_changes_reach_the_device_in_order(server):
    """esptool's USB-JTAG reset, as (DTR, RTS) after open's (1, 1): it must never pass through
    (0, 0) between (1, 0) and (0, 1)."""
    acm = server.device("1-2")
    with serial.serial_for_url(url(server)) as ser:
        start = len(acm.line_state_history)
        sequence = []
        ser.rts = False
        sequence.append((1, 0))
        ser.dtr = False
        sequence.append((0, 0))
        ser.dtr = True
        sequence.append((1, 0))
        ser.rts = True
        sequence.append((1, 1))
        ser.dtr = False
        sequence.append((0, 1))
        ser.rts = False
        sequence.append((0, 0))
        assert acm.line_state_history[start:] == sequence  # one request per assignment, both bits
        assert acm.line_state_history[:start] == [(1, 1), (1, 1)]


def test_line_coding_only_when_it_changes(server):
    acm = server.device("1-2")
    with serial.serial_for_url(url(server), baudrate=115200) as ser:
        first = acm.line_coding_requests
        for t in (0.1, 0.5, 1, 3, None):  # esptool sets a timeout per command
            ser.timeout = t
        assert acm.line_coding_requests == first
        ser.baudrate = 460800
        ser.parity = serial.PARITY_EVEN
        ser.stopbits = serial.STOPBITS_TWO
        assert acm.line_coding_requests == first + 3
        assert struct.unpack("<IBBB", acm.line_coding) == (460800, 2, 2, 8)


def test_modem_inputs_and_break(server):
    acm = server.device("1-2")
    with serial.serial_for_url(url(server)) as ser:
        wait_for(lambda: ser.dsr and ser.cd)  # the device reports DCD + DSR once DTR is up
        assert ser.cts and not ser.ri
        ser.break_condition = True
        ser.break_condition = False
        assert acm.breaks == [0xFFFF, 0]


def test_fileno_raises_enotty_and_aliases_work(server):
    with serial.serial_for_url(url(server), timeout=1) as ser:
        with pytest.raises(OSError) as info:
            ser.fileno()
        assert info.value.errno == errno.ENOTTY
        ser.write(b"x")
        wait_for(lambda: ser.inWaiting() == 1)
        ser.flushInput()
        ser.setDTR(True)
        assert ser.in_waiting == 0


def test_errors_say_what_is_there(server):
    with pytest.raises(serial.SerialException, match="not a serial port.*1209:0001 with vendor-specific"):
        serial.serial_for_url(url(server, "1-1"))
    with pytest.raises(serial.SerialException, match="no device with busid 9-9") as info:
        serial.serial_for_url(url(server, "9-9", "?wait=0"))  # (no wait: see the tests below)
    assert "the server exports 1-4 (1209:0004), 1-3 (1209:0003), 1-2 (1209:0002), 1-1 (1209:0001)" \
        in str(info.value) and "waited" not in str(info.value)
    with pytest.raises(serial.SerialException, match="no device 1234:5678 is free"):
        serial.serial_for_url(url(server, "1234:5678", "?wait=0"))
    with serial.serial_for_url(url(server)):
        with pytest.raises(serial.SerialException, match="busy"):
            serial.serial_for_url(url(server))
    with pytest.raises(serial.SerialException, match="unknown option"):
        serial.serial_for_url(url(server, query="?speed=fast"))


def test_a_server_that_goes_away_fails_the_read(server):
    ser = serial.serial_for_url(url(server), timeout=5)
    try:
        server.stop()
        with pytest.raises(serial.SerialException, match="stopped answering"):
            ser.read(1)
    finally:
        ser.close()


def test_registration_needs_no_code_in_a_fresh_interpreter():
    """``import usbip_backend`` before or after pyserial: serial_for_url knows usbip:// either way
    (the URL's server does not exist: the error must come from our handler, not 'unknown')."""
    for order in ("import usbip_backend, serial", "import serial, usbip_backend"):
        code = (f"{order}\ntry:\n    serial.serial_for_url('usbip://127.0.0.1:1/1-1')\n"
                "except serial.SerialException as e:\n    print(e)\n")
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                             env={"PYTHONPATH": f"{ROOT}/src"}).stdout
        assert "cannot open usbip://127.0.0.1:1/1-1" in out, out


# -- CP210x --------------------------------------------------------------------------------------------
@pytest.fixture
def cp_server():
    with SimServer(stock_devices(["cp210x"])) as srv:
        yield srv


def test_cp210x_echo_lines_and_line_coding(cp_server):
    cp = cp_server.device("1-1")
    with serial.serial_for_url(url(cp_server, "10c4:ea60", "?baudrate=115200"), timeout=2) as ser:
        assert cp.enabled and cp.baudrate == 115200 and cp.line_ctl == 0x0800  # IFC_ENABLE, 8N1
        assert (cp.dtr, cp.rts) == (True, True)
        payload = bytes(range(256)) * 16  # 64 packets at the line rate: 0.36 s
        ser.write(payload)
        assert read_exactly(ser, len(payload)) == payload
        start = len(cp.line_state_history)
        ser.dtr = False  # the classic EN/IO0 reset: (0, 1), (1, 0), (0, 0)
        ser.rts = True
        ser.dtr = True
        ser.rts = False
        ser.dtr = False
        assert cp.line_state_history[start:] == [(0, 1), (0, 1), (1, 1), (1, 0), (0, 0)]
        ser.dtr = True
        ser.rts = True
        assert ser.cts and ser.dsr and ser.cd and not ser.ri  # GET_MDMSTS
        requests = cp.line_coding_requests
        ser.timeout = 0.5
        assert cp.line_coding_requests == requests
        ser.parity = serial.PARITY_ODD
        assert cp.line_ctl == 0x0810
        ser.break_condition = True
        ser.break_condition = False
        assert cp.breaks == [1, 0]


# -- CH34x ---------------------------------------------------------------------------------------------
def test_ch34x_echo_baud_registers_lines_and_break():
    with SimServer(stock_devices(["ch34x"])) as srv:
        ch = srv.device("1-1")
        with serial.serial_for_url(url(srv, "1a86:7523", "?baudrate=115200"), timeout=2) as ser:
            assert ch.initialised and abs(ch.baudrate - 115200) / 115200 < 0.003  # divisor registers
            assert ch.lcr == 0xC3  # RX, TX enabled, 8N1
            assert (ch.dtr, ch.rts) == (True, True)  # sent inverted, decoded by the device
            payload = bytes(range(256)) * 16
            ser.write(payload)
            assert read_exactly(ser, len(payload)) == payload
            for baud in (9600, 460800, 921600, 2000000):
                ser.baudrate = baud
                assert abs(ch.baudrate - baud) / baud < 0.003
            ser.parity = serial.PARITY_EVEN
            assert ch.lcr == 0xC3 | 0x18
            start = len(ch.line_state_history)
            ser.rts = False
            ser.dtr = False
            assert ch.line_state_history[start:] == [(1, 0), (0, 0)]
            ser.dtr = True
            assert ser.dsr and ser.cd and not ser.cts and not ser.ri  # READ_REG 0x0706, inverted
            ser.break_condition = True
            assert ch.regs[0x05] & 1 == 0 and not ch.lcr & 0x40
            ser.break_condition = False
            assert ch.regs[0x05] & 1 and ch.lcr & 0x40


# -- FTDI ----------------------------------------------------------------------------------------------
def test_ftdi_echo_strips_status_bytes_and_sets_divisors():
    with SimServer(stock_devices(["ftdi"])) as srv:
        ft = srv.device("1-1")
        with serial.serial_for_url(url(srv, "0403:6001", "?baudrate=115200"), timeout=2) as ser:
            assert abs(ft.baudrate - 115200) < 200 and ft.data == 0x0008 and ft.latency == 2  # 3 MHz / 26
            assert (ft.dtr, ft.rts) == (True, True)
            payload = bytes(range(256)) * 20  # many 64-byte packets, each with 2 status bytes
            ser.write(payload)
            assert read_exactly(ser, len(payload)) == payload
            for baud in (9600, 921600, 2000000, 3000000):
                ser.baudrate = baud
                assert abs(ft.baudrate - baud) / baud < 0.03
            ser.parity = serial.PARITY_ODD
            ser.stopbits = serial.STOPBITS_TWO
            assert ft.data == 0x0008 | 1 << 8 | 2 << 11
            start = len(ft.line_state_history)
            ser.dtr = False
            ser.rts = False
            assert ft.line_state_history[start:] == [(0, 1), (0, 0)]
            ser.dtr = ser.rts = True
            assert ser.cts and ser.dsr and ser.cd and not ser.ri
            ser.break_condition = True
            assert ft.data & 0x4000
            ser.break_condition = False
            assert not ft.data & 0x4000


def test_installed_package_registers_usbip_for_unmodified_programs():
    """The installed package's .pth (the wheel's usbip_backend_serial.pth) lets a program that
    never imports usbip_backend open usbip:// (esptool, miniterm), and imports nothing heavy at
    interpreter start."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    startup = subprocess.run([sys.executable, "-c", "import sys; print(sorted(m for m in ('serial', 'usbip_backend', "
                              "'_usbip_serial_hook') if m in sys.modules))"],
                             capture_output=True, text=True, timeout=60, env=env).stdout.strip()
    if startup == "[]":
        if os.environ.get("CI") == "true":
            pytest.fail("the .pth is not installed: install the package with pip (README's test command)")
        pytest.skip("the package is not installed with pip here (pip install -e . or pip install .)")
    assert startup == "['_usbip_serial_hook']"  # pyserial and the package stay unloaded
    code = ("import serial\ntry:\n    serial.serial_for_url('usbip://127.0.0.1:1/1-1')\n"
            "except serial.SerialException as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env).stdout
    assert "cannot open usbip://127.0.0.1:1/1-1" in out, out


def test_reopen_waits_for_a_device_that_reenumerates():
    """A board that resets drops off the bus and comes back (here with another PID): the port,
    opened again as esptool does after a reset, waits for it and re-imports it."""
    import threading

    from usbip_backend.sim.devices import CdcAcmDevice

    with SimServer(stock_devices(["loopback", "acm"])) as srv:
        ser = serial.serial_for_url(url(srv, "1209:0002"), timeout=2)
        ser.write(b"before")
        assert ser.read(6) == b"before"
        srv.unplug("1-2")  # the reset: the device leaves, our connection drops
        with pytest.raises(serial.SerialException):
            ser.read(1)
        ser.close()

        class Application(CdcAcmDevice):
            pid = 0x0012  # what the board enumerates as after the reset

        back = threading.Timer(0.3, lambda: srv.plug(Application("1-2")))
        back.start()
        try:
            ser.open()  # waits for the device to be exported again
            ser.write(b"after")
            assert ser.read(5) == b"after"
            ser.close()
        finally:
            back.join()
        with pytest.raises(serial.SerialException, match="no device 1209:7777"):
            serial.serial_for_url(url(srv, "1209:7777", "?wait=0"))  # a first open told not to wait


class SerialLog(logging.Handler):
    """What ``usbip_backend.serial`` logs at INFO and up; ``waiting`` is set once the port says
    it waits for its device to be exported (which a test can answer by plugging it back)."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.messages = []
        self.waiting = threading.Event()

    def emit(self, record):
        message = record.getMessage()
        self.messages.append(message)
        if "waiting up to" in message:
            self.waiting.set()


@pytest.fixture
def serial_log():
    logger = logging.getLogger("usbip_backend.serial")
    handler, level = SerialLog(), logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("target", ["1-2", "1209:0002"])
def test_a_first_open_waits_for_a_device_off_the_bus(serial_log, target):
    """A new program opening the port while the board is off the bus (re-enumerating after
    another program's reset, esptool's --after hard-reset) waits for it (``FIRST_OPEN_WAIT``),
    by busid or VID:PID. The device is plugged back only once the port has said it waits."""
    with SimServer(stock_devices(["loopback", "acm"])) as srv:
        acm = srv.unplug("1-2")

        def plug_back():
            serial_log.waiting.wait(30)
            srv.plug(acm)
        back = threading.Thread(target=plug_back)
        back.start()
        try:
            with serial.serial_for_url(url(srv, target), timeout=2) as ser:
                ser.write(b"back")
                assert ser.read(4) == b"back"
        finally:
            serial_log.waiting.set()  # (the thread ends either way)
            back.join()
    said = [m for m in serial_log.messages if "waiting up to 3 s for it to be exported" in m]
    assert len(said) == 1 and ("no device with busid 1-2" in said[0] or "no device 1209:0002" in said[0]), said


@pytest.mark.timeout(60)
def test_wait_0_fails_at_once_and_a_busy_device_never_waits(serial_log):
    with SimServer(stock_devices(["loopback", "acm"])) as srv:
        acm = srv.unplug("1-2")
        with pytest.raises(serial.SerialException,
                           match=r"^no device with busid 1-2 on [^;]*; the server exports 1-1 \(1209:0001\)$"):
            serial.serial_for_url(url(srv, "1-2", "?wait=0"))
        srv.plug(acm)
        with serial.serial_for_url(url(srv)):
            with pytest.raises(serial.SerialException, match="busy: another client has imported it"):
                serial.serial_for_url(url(srv))  # the default wait: busy is not missing
    with SimServer([]) as empty:
        with pytest.raises(serial.SerialException, match="the server exports no free device$"):
            serial.serial_for_url(url(empty, "1209:0002", "?wait=0"))
    assert not serial_log.waiting.is_set(), serial_log.messages


@pytest.mark.timeout(60)
@pytest.mark.parametrize("target, says, query, seconds", [
    ("9-9", "no device with busid 9-9", "?wait=0.5", 0.5),
    ("1234:5678", "no device 1234:5678 is free", "?wait=0.5", 0.5),
    ("9-9", "no device with busid 9-9", "", 3),  # FIRST_OPEN_WAIT
])
def test_a_device_still_missing_fails_after_the_wait_saying_what_is_exported(server, target, says, query, seconds):
    t0 = time.monotonic()
    with pytest.raises(serial.SerialException, match=says) as info:
        serial.serial_for_url(url(server, target, query))
    assert time.monotonic() - t0 >= seconds
    assert str(info.value).endswith(f"; waited {seconds:g} s for it to be exported; the server exports "
                                    "1-4 (1209:0004), 1-3 (1209:0003), 1-2 (1209:0002), 1-1 (1209:0001)"), info.value


@pytest.mark.timeout(60)
def test_an_explicit_wait_bounds_the_reopen_wait_too():
    with SimServer(stock_devices(["loopback", "acm"])) as srv:
        ser = serial.serial_for_url(url(srv, "1-2", "?wait=0.3"), timeout=2)
        srv.unplug("1-2")
        with pytest.raises(serial.SerialException, match="stopped answering"):
            ser.read(1)
        ser.close()
        t0 = time.monotonic()
        with pytest.raises(serial.SerialException, match=r"no device with busid 1-2 .*; waited 0.3 s for it"):
            ser.open()  # REENUMERATE_WAIT (10 s) without ?wait=
        assert time.monotonic() - t0 >= 0.3


@pytest.mark.timeout(60)
def test_a_session_whose_device_leaves_prints_no_connection_lost_warning():
    """A program with no logging configured (esptool, miniterm): Python's last-resort handler
    would print the engine's WARNING "connection lost" on stderr. For a serial port's connection
    that is not a warning (the port raises SerialException itself), so stderr stays empty."""
    code = ("import sys, serial\n"  # registered by the installed package's .pth, as for esptool
            "ser = serial.serial_for_url(sys.argv[1], timeout=10)\n"
            "print('open', flush=True)\n"
            "sys.stdin.readline()\n"
            "try:\n    ser.read(1)\nexcept serial.SerialException as exc:\n    print('raised', exc)\n"
            "ser.close()\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    with SimServer(stock_devices(["loopback", "acm"])) as srv:
        proc = subprocess.Popen([sys.executable, "-c", code, url(srv)], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        try:
            assert proc.stdout.readline() == "open\n", proc.communicate(timeout=30)
            srv.unplug("1-2")  # the board resets: the server closes the session's connection
            out, err = proc.communicate("go\n", timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    assert "raised" in out and "stopped answering" in out and "connection lost" in out, out
    assert "connection lost" not in err and not err.strip(), err


def test_ft2232h_port_b_and_the_120_mhz_divisor():
    """An ESP-Prog-style FT2232H: ?interface= picks the port, requests carry it in wIndex, and
    the H chip's 120 MHz clock gives exact high rates."""
    with SimServer(stock_devices(["ft2232h"])) as srv:
        ft = srv.device("1-1")
        with serial.serial_for_url(url(srv, "0403:6010", "?interface=1&baudrate=3000000"), timeout=2) as ser:
            assert ft.baudrate(2) == 3_000_000 and ft.ports[2].divisor & 0x20000  # the 120 MHz clock
            assert ft.ports[1].line_state_history == []  # port A untouched
            assert (ft.ports[2].dtr, ft.ports[2].rts) == (True, True)
            payload = bytes(range(256)) * 20
            ser.write(payload)
            assert read_exactly(ser, len(payload)) == payload  # 512-byte packets, status bytes stripped
            ser.baudrate = 115200
            assert abs(ft.baudrate(2) - 115200) / 115200 < 0.01
            assert ser.cts and ser.dsr


def test_a_server_that_refuses_big_urbs_gets_smaller_ones_and_nothing_is_lost():
    """The ESP32 bridge answers URBs over 4 KiB with -EMSGSIZE: the port halves its 16 KiB URBs
    (both directions) until they fit, and the echo comes back whole and in order."""
    with SimServer(stock_devices(["acm-unpaced"]), max_urb=4096) as srv:
        with serial.serial_for_url(url(srv, "1-1"), timeout=2) as ser:
            payload = bytes(range(256)) * 400
            assert ser.write(payload) == len(payload)
            assert read_exactly(ser, len(payload)) == payload
            assert ser._write_chunk == 4096 and ser._read_size == 4096


# -- writes to a device that sends at its line rate ------------------------------------------------------
#: The paced echoes of the ``bridges`` server, by stock name.
BRIDGES = {"acm": "1-1", "cp210x": "1-2", "ch34x": "1-3", "ftdi": "1-4"}


@pytest.fixture
def bridges():
    with SimServer(stock_devices(list(BRIDGES))) as srv:
        yield srv


def noise(count, seed=0):
    """Bytes with no period: a byte sent twice or skipped shifts everything after it."""
    return random.Random(seed).randbytes(count)


def in_thread(fn):
    """Run ``fn`` in a thread; returns (thread, result dict with "value" or "error")."""
    result = {}

    def run():
        try:
            result["value"] = fn()
        except BaseException as exc:  # handed to the test
            result["error"] = exc
    thread = threading.Thread(target=run, name="test-writer")
    thread.start()
    return thread, result


@pytest.mark.timeout(60)
@pytest.mark.parametrize("name, baud", [("cp210x", 9600), ("cp210x", 115200), ("acm", 9600), ("acm", 460800),
                                        ("ch34x", 115200), ("ftdi", 921600), ("ftdi", 3000000)])
def test_write_timeout_reports_exactly_what_the_device_took(bridges, name, baud):
    """A write the line cannot carry in time raises SerialTimeoutException at about its
    write_timeout, its ``written`` what the device took; writing the rest then sends every byte
    once, in order (one-packet URBs at 9600 baud, several packets at the higher rates)."""
    dev = bridges.device(BRIDGES[name])
    with serial.serial_for_url(url(bridges, BRIDGES[name], f"?baudrate={baud}"), timeout=2,
                               write_timeout=0.3) as ser:
        data = noise(dev.TX_FIFO + int(dev.line_rate() * 0.9), baud)  # 0.9 s of line time beyond the buffer
        before = dev.received
        t0 = time.monotonic()
        with pytest.raises(serial.SerialTimeoutException) as info:
            ser.write(data)
        took = time.monotonic() - t0
        written = info.value.written
        assert dev.received - before == written and 0 < written < len(data)
        assert 0.3 <= took < 2.0  # cut short at about its write_timeout (what it let finish is bounded)
        ser.write_timeout = None
        assert ser.write(data[written:]) == len(data) - written
        assert read_exactly(ser, len(data)) == data
        assert dev.received - before == len(data)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("name, baud", [("acm", 460800), ("cp210x", 230400), ("ftdi", 115200)])
def test_writes_resumed_after_timeouts_send_every_byte_once_in_order(bridges, name, baud):
    dev = bridges.device(BRIDGES[name])
    with serial.serial_for_url(url(bridges, BRIDGES[name], f"?baudrate={baud}"), timeout=2,
                               write_timeout=0.07) as ser:
        data = noise(int(dev.line_rate() * 0.6), 7)
        sent = timeouts = 0
        while sent < len(data):
            try:
                sent += ser.write(data[sent:])
            except serial.SerialTimeoutException as exc:
                sent += exc.written
                timeouts += 1
        assert timeouts >= 3
        assert read_exactly(ser, len(data)) == data
        ser.timeout = 0.1
        assert ser.read(1) == b""


@pytest.mark.timeout(60)
@pytest.mark.parametrize("how", ["cancel_write", "reset_output_buffer"])
def test_cancel_write_and_reset_output_buffer_unblock_a_write(bridges, how):
    """A write with no write_timeout, 10 s of line time at 9600 baud: cancel_write (or
    reset_output_buffer) from another thread makes it return at once what the device took."""
    cp = bridges.device(BRIDGES["cp210x"])
    with serial.serial_for_url(url(bridges, BRIDGES["cp210x"], "?baudrate=9600"), timeout=2) as ser:
        data = noise(9600, 3)
        before = cp.received
        thread, result = in_thread(lambda: ser.write(data))
        try:
            wait_for(lambda: cp.received - before >= cp.TX_FIFO and ser.out_waiting > 0)  # blocked
            t0 = time.monotonic()
            getattr(ser, how)()
            thread.join(5)
            assert not thread.is_alive() and time.monotonic() - t0 < 0.5
        finally:
            ser.cancel_write()
            thread.join(5)
        assert "error" not in result, result
        went = result["value"]
        assert went == cp.received - before and cp.TX_FIFO <= went < len(data)
        assert ser.out_waiting == 0
        ser.baudrate = 921600  # what the device holds goes out at once
        assert read_exactly(ser, went) == data[:went]
        ser.timeout = 0.1
        assert ser.read(1) == b""  # nothing beyond what the write said


@pytest.mark.timeout(60)
def test_flush_waits_for_the_write_in_flight(bridges):
    cp = bridges.device(BRIDGES["cp210x"])
    with serial.serial_for_url(url(bridges, BRIDGES["cp210x"], "?baudrate=19200"), timeout=2) as ser:
        data = noise(cp.TX_FIFO + 1000, 4)  # about 0.5 s of line time beyond the device's buffer
        before = cp.received
        thread, result = in_thread(lambda: ser.write(data))
        try:
            wait_for(lambda: ser.out_waiting > 0)
            ser.flush()
            assert cp.received - before == len(data)  # everything went before flush returned
            assert ser.out_waiting == 0
        finally:
            ser.cancel_write()
            thread.join(5)
        assert result == {"value": len(data)}
        ser.flush()  # nothing in flight: at once
        assert read_exactly(ser, len(data)) == data


@pytest.mark.timeout(60)
def test_a_write_with_write_timeout_0_returns_what_the_device_took_at_once(bridges):
    cp = bridges.device(BRIDGES["cp210x"])
    with serial.serial_for_url(url(bridges, BRIDGES["cp210x"], "?baudrate=9600"), timeout=2,
                               write_timeout=0) as ser:
        data = noise(5000, 5)
        before = cp.received
        went = ser.write(data)  # no exception: pyserial's POSIX port returns the count too
        assert went == cp.received - before and 0 <= went <= cp.TX_FIFO
        assert read_exactly(ser, went) == data[:went]


@pytest.mark.timeout(60)
def test_a_paced_device_sends_at_its_line_rate(bridges):
    """The echo of what goes beyond the device's buffer takes its line time (19200 8E2: 12 bits a
    character, 1600 bytes/s), never less."""
    cp = bridges.device(BRIDGES["cp210x"])
    with serial.serial_for_url(url(bridges, BRIDGES["cp210x"], "?baudrate=19200"), timeout=2,
                               parity=serial.PARITY_EVEN, stopbits=serial.STOPBITS_TWO) as ser:
        assert cp.line_rate() == 19200 / 12
        data = noise(cp.TX_FIFO + 800, 6)
        t0 = time.monotonic()
        assert ser.write(data) == len(data)
        assert time.monotonic() - t0 >= 800 / 1600 - 0.02  # the write waited for the line
        assert read_exactly(ser, len(data)) == data
        assert time.monotonic() - t0 >= len(data) / 1600 - 0.02


@pytest.mark.timeout(60)
def test_a_bulk_out_urb_waits_for_room_and_an_unlink_cancels_it(bridges):
    """The sim holds an OUT URB the device has no room for (no RET_SUBMIT) and answers its
    CMD_UNLINK as the kernel stub does: RET_UNLINK -ECONNRESET, the data never taken."""
    from usbip_backend import protocol as P
    from usbip_backend.errors import UrbCancelledError

    cp = bridges.device(BRIDGES["cp210x"])
    with serial.serial_for_url(url(bridges, BRIDGES["cp210x"], "?baudrate=300"), timeout=2) as ser:
        conn, ep = ser._dev.conn, ser._driver.ep_out
        before = cp.received
        full = conn.submit(P.TransferType.BULK, ep, data=bytes(cp.TX_FIFO)).wait(5)
        assert full.actual_length == cp.TX_FIFO  # taken at once: it fits the buffer
        waiting = conn.submit(P.TransferType.BULK, ep, data=b"x" * 64)
        assert ser.cts  # a control round trip after it: had the URB completed, its reply came first
        assert not waiting.done()  # at 300 baud the buffer has room for a packet after 2.1 s
        waiting.cancel()
        with pytest.raises(UrbCancelledError) as info:
            waiting.wait(5)
        assert info.value.status == -104
        assert cp.received - before == cp.TX_FIFO
        ser.baudrate = 921600
        assert read_exactly(ser, cp.TX_FIFO) == bytes(cp.TX_FIFO)
