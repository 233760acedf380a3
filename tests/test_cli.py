"""usbip-pyusb-test through its real entry points, against the virtual server over TCP."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

from usbip_backend import cli
from usbip_backend.client import import_device
from conftest import closed_port

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
LOOP = ["--vid", "0x1209", "--pid", "0x0001"]  # the virtual loopback/source/sink device, busid 1-1


def run(capsys, *argv: str):
    """``main(argv)`` in-process; returns (exit code, stdout, stderr)."""
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def host_args(server) -> list:
    return ["--host", server[0], "--port", str(server[1])]


def subprocess_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.path.join(ROOT, "src") + os.pathsep + env.get("PYTHONPATH", "")
    return env


def run_module(*argv: str, timeout: float = 60):
    """``python -m usbip_backend ...`` in a subprocess."""
    return subprocess.run([sys.executable, "-m", "usbip_backend", *argv], capture_output=True, text=True,
                          env=subprocess_env(), timeout=timeout)




# --- usage and help -----------------------------------------------------------------------------
def test_help_lists_every_command(capsys):
    code, out, _ = run(capsys, "--help")
    assert code == 0
    for command in ("discover", "list", "probe", "control", "read", "write", "loopback", "check", "demo", "sim"):
        assert f"\n    {command} " in out, command
    assert "examples:" in out and "Exit codes: 0 ok" in out
    code, out, _ = run(capsys, "control", "--help")
    assert code == 0
    assert "--bm-request-type N" in out and "--data-hex HEX" in out
    assert "may come before or after the command" in out


@pytest.mark.parametrize("argv, message", [
    ([], "a command is needed"),
    (["frobnicate"], "invalid choice"),
    (["probe", "--vid", "303g"], "invalid USB ID '303g'"),
    (["probe", "--vid", "0x10000"], "invalid USB ID"),
    (["probe", "--id", "1209"], "write VID:PID in hex"),
    (["probe", "--id", "1209:0001", "--vid", "1209"], "--id VID:PID gives both IDs"),
    (["read", "--ep", "0x80", "--length", "8"], "invalid endpoint address"),
    (["read", "--ep", "0x81"], "--length"),
    (["control", "--direction", "in", "--bm-request-type", "0x80", "--b-request", "6",
      "--length", "4", "--data-hex", "00"], "not allowed with argument"),
    (["write", "--ep", "1", "--data-hex", "xyz"], "invalid hex data"),
    (["--port", "70000", "list"], "out of range"),
    (["--timeout", "-1", "list"], ">= 0"),
])
def test_usage_errors_exit_2(capsys, argv, message):
    code, out, err = run(capsys, *argv)
    assert code == 2
    assert message in err
    assert "Traceback" not in err


def test_semantic_usage_errors_exit_2(capsys, sim_server):
    h = host_args(sim_server)
    code, _, err = run(capsys, *h, "control", *LOOP, "--direction", "in", "--bm-request-type", "0x40",
                       "--b-request", "1")
    assert code == 2 and "bit 7 of bmRequestType is the direction" in err
    code, _, err = run(capsys, *h, "read", *LOOP, "--ep", "0x01", "--length", "8")
    assert code == 2 and "0x01 is an OUT endpoint" in err and "0x81" in err
    code, _, err = run(capsys, *h, "write", *LOOP, "--ep", "0x81", "--data-hex", "00")
    assert code == 2 and "0x81 is an IN endpoint" in err
    code, _, err = run(capsys, *h, "probe", "--vid", "0x1209")  # four devices match
    assert code == 2 and "choose one with --busid" in err and "1-1 1209:0001" in err


def test_ids_are_hex_as_lsusb_writes_them():
    assert cli.usb_id("1209") == 0x1209 and cli.usb_id("0x1209") == 0x1209 and cli.usb_id("303A") == 0x303A
    assert cli.id_pair("1209:0001") == (0x1209, 0x0001)


def test_vid_without_0x_finds_the_device_lsusb_names(capsys, sim_server):
    h = host_args(sim_server)
    code, out, err = run(capsys, *h, "probe", "--vid", "1209", "--pid", "0001", "--busid", "1-1")
    assert code == 0, err
    assert "Device 1209:0001 at busid 1-1" in out
    code, out, err = run(capsys, *h, "probe", "--id", "1209:0001", "--busid", "1-1")
    assert code == 0, err
    assert "Device 1209:0001 at busid 1-1" in out


def test_version(capsys):
    from usbip_backend import __version__

    code, out, _ = run(capsys, "--version")
    assert code == 0 and out.strip() == f"usbip-pyusb-test {__version__}"


def test_numbers_accept_hex_and_decimal():
    assert cli.number("0x1f") == 31 and cli.number("31") == 31 and cli.number("010") == 10
    assert cli.number("0b101") == 5
    assert cli.hex_data("de ad:be-ef") == b"\xde\xad\xbe\xef"


# --- unreachable hosts --------------------------------------------------------------------------
def test_connection_refused_is_one_line_naming_host_and_port(capsys):
    port = closed_port()
    code, out, err = run(capsys, "--host", "127.0.0.1", "--port", str(port), "list")
    assert code == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert f"127.0.0.1:{port}" in lines[0] and "refused" in lines[0]
    assert "Traceback" not in err and out == ""


def test_connection_refused_subprocess_and_json():
    port = closed_port()
    proc = run_module("probe", *LOOP, "--host", "127.0.0.1", "--port", str(port), "--json")
    assert proc.returncode == 1
    assert proc.stderr.strip().count("\n") == 0 and f"127.0.0.1:{port}" in proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["schema"] == 1 and doc["command"] == "probe" and "refused" in doc["error"]


# --- list ---------------------------------------------------------------------------------------
def test_list_text(capsys, sim_server):
    code, out, err = run(capsys, *host_args(sim_server), "list")
    assert code == 0, err
    assert f"Exportable USB devices on 127.0.0.1:{sim_server[1]}: 4" in out
    assert "1-1: pid.codes (1209:0001)" in out
    assert "speed     high (480 Mb/s)" in out
    assert "class     Miscellaneous (ef/02/01)" in out  # the CDC-ACM device with an IAD


def test_list_json_schema_and_options_after_command(capsys, sim_server):
    code, out, _ = run(capsys, "list", "--json", *host_args(sim_server))  # globals after the command
    assert code == 0
    doc = json.loads(out)
    assert doc["schema"] == 1 and doc["command"] == "list"
    assert (doc["host"], doc["port"]) == sim_server
    dev = {d["busid"]: d for d in doc["devices"]}["1-1"]
    assert set(dev) == {"busid", "path", "busnum", "devnum", "speed", "speed_code", "vid", "pid", "id", "vendor",
                        "product", "bcdDevice", "class", "subclass", "protocol", "class_name", "configuration",
                        "num_configurations", "num_interfaces", "interfaces"}
    assert (dev["vid"], dev["pid"], dev["id"], dev["speed"]) == (0x1209, 1, "1209:0001", "high")
    assert dev["vendor"] == "pid.codes" and dev["bcdDevice"] == 0x0100


def test_list_subprocess(sim_server):
    proc = run_module(*host_args(sim_server), "list")
    assert proc.returncode == 0, proc.stderr
    assert "1-4: pid.codes (1209:0004)" in proc.stdout


# --- probe --------------------------------------------------------------------------------------
def test_probe_tree(capsys, sim_server):
    code, out, err = run(capsys, *host_args(sim_server), "probe", *LOOP, "--get-device-desc")
    assert code == 0, err
    assert out.startswith(f"Device 1209:0001 at busid 1-1 on 127.0.0.1:{sim_server[1]}, speed high\n")
    assert "Device Descriptor:\n  bLength                  18\n" in out
    assert "iProduct                  2  USB/IP loopback/source/sink" in out
    assert "    Interface Descriptor:" in out and "iInterface                4  Loopback, source and sink" in out
    assert "bEndpointAddress       0x81  EP 1 IN" in out
    assert "bmAttributes              2  Bulk" in out and "bmAttributes              3  Interrupt" in out
    assert "GET_DESCRIPTOR(DEVICE) raw bytes:\n  0000  12 01 00 02 00 00 00 40  09 12 01 00" in out


def test_probe_extra_descriptors_and_busid(capsys, sim_server):
    code, out, err = run(capsys, *host_args(sim_server), "probe", "--busid", "1-2")
    assert code == 0, err
    assert "** extra descriptor type 0x24: 05 24 00 10 01" in out  # CDC header functional descriptor
    assert "bInterfaceClass           2  Communications" in out


def test_probe_json(capsys, sim_server):
    code, out, _ = run(capsys, *host_args(sim_server), "probe", *LOOP, "--json", "--get-device-desc")
    assert code == 0
    doc = json.loads(out)
    assert doc["schema"] == 1 and doc["command"] == "probe" and doc["busid"] == "1-1"
    assert doc["device"]["idVendor"] == 0x1209 and doc["device"]["bcdUSB"] == 0x0200
    assert doc["strings"] == {"manufacturer": "usbip_backend", "product": "USB/IP loopback/source/sink",
                              "serial": "SIM-LOOPBACKDEVICE-1-1"}
    assert doc["device_descriptor_hex"].startswith("1201000200000040")
    (cfg,) = doc["configurations"]
    eps = {e["bEndpointAddress"]: e for e in cfg["interfaces"][0]["endpoints"]}
    assert eps[0x81]["transfer_type"] == "bulk" and eps[0x81]["direction"] == "in"
    assert eps[0x83]["transfer_type"] == "interrupt"


def test_no_such_device_lists_what_is_there(capsys, sim_server):
    code, out, err = run(capsys, *host_args(sim_server), "probe", "--vid", "0xdead", "--pid", "0xbeef")
    assert code == 1
    line = err.strip()
    assert "\n" not in line
    assert "no device dead:beef" in line and "1-1 1209:0001 (pid.codes)" in line and "1-4 1209:0004" in line
    code, _, err = run(capsys, *host_args(sim_server), "probe", "--busid", "7-7")
    assert code == 1 and "no device with busid 7-7" in err and "1-2 1209:0002" in err


def test_busy_device_says_so(capsys, fresh_sim_server):
    host, port = fresh_sim_server
    with import_device(host, port, "1-1"):
        code, _, err = run(capsys, *host_args(fresh_sim_server), "probe", "--busid", "1-1")
    assert code == 1
    assert err.count("\n") == 1 and "1-1" in err and "busy: another client has imported it" in err


# --- control ------------------------------------------------------------------------------------
def test_control_in_hexdump(capsys, sim_server):
    code, out, err = run(capsys, *host_args(sim_server), "control", *LOOP, "--direction", "in",
                         "--bm-request-type", "0x80", "--b-request", "6", "--w-value", "0x0100", "--length", "18")
    assert code == 0, err
    assert "control IN bmRequestType=0x80 bRequest=0x06 wValue=0x0100 wIndex=0x0000 wLength=18: 18 bytes" in out
    assert "  0000  12 01 00 02 00 00 00 40  09 12 01 00 00 01 01 02  |.......@........|" in out


def test_control_out_and_in_json(capsys, sim_server):
    h = host_args(sim_server)
    code, out, err = run(capsys, *h, "control", *LOOP, "--direction", "out", "--bm-request-type", "0x40",
                         "--b-request", "0x5b", "--data-hex", "01 02 03 04 05", "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["direction"] == "out" and doc["length"] == 5 and doc["data_hex"] == "0102030405"
    assert doc["request"] == {"bmRequestType": 0x40, "bRequest": 0x5B, "wValue": 0, "wIndex": 0, "wLength": 5}
    code, out, _ = run(capsys, *h, "control", *LOOP, "--direction", "in", "--bm-request-type", "0xc0",
                       "--b-request", "0x5d", "--length", "70", "--json")  # vendor request: 70 bytes of i % 63
    assert code == 0
    doc = json.loads(out)
    assert doc["direction"] == "in" and doc["length"] == 70
    assert bytes.fromhex(doc["data_hex"]) == bytes(i % 63 for i in range(70))


def test_control_stall_is_one_line(capsys, sim_server):
    code, _, err = run(capsys, *host_args(sim_server), "control", *LOOP, "--direction", "in",
                       "--bm-request-type", "0xc0", "--b-request", "0x5f", "--length", "4")
    assert code == 1
    assert err.count("\n") == 1 and "stalled it (EPIPE)" in err and "Traceback" not in err


# --- read / write / loopback --------------------------------------------------------------------
# Each command imports the device on its own connection and releases it at exit; like Linux's
# stub, the virtual server resets the device then, so echo checks belong to 'loopback'.
def test_write_and_read(capsys, sim_server):
    h = host_args(sim_server)
    code, out, err = run(capsys, *h, "write", *LOOP, "--ep", "0x01", "--data-hex", "48656c6c6f")
    assert code == 0, err
    assert out.strip() == "bulk OUT 0x01: 5 of 5 bytes written"
    code, out, err = run(capsys, *h, "read", *LOOP, "--ep", "0x82", "--length", "512")  # the source
    assert code == 0, err
    assert "bulk IN 0x82: 512 of 512 bytes" in out
    assert "  0000  00 01 02 03 04 05 06 07  08 09 0a 0b 0c 0d 0e 0f  |................|" in out


def test_interrupt_write_and_read_json(capsys, sim_server):
    h = host_args(sim_server)
    code, out, _ = run(capsys, *h, "write", *LOOP, "--ep", "3", "--data-hex", "aabb", "--json")
    assert code == 0
    assert json.loads(out) == {"schema": 1, "command": "write", "busid": "1-1", "endpoint": 3,
                               "transfer_type": "interrupt", "requested": 2, "length": 2, "data_hex": "aabb"}
    code, out, _ = run(capsys, *h, "read", *LOOP, "--ep", "0x82", "--length", "4", "--json",
                       "--timeout-ms", "500")
    assert code == 0
    assert json.loads(out) == {"schema": 1, "command": "read", "busid": "1-1", "endpoint": 0x82,
                               "transfer_type": "bulk", "requested": 4, "length": 4, "data_hex": "00010203"}


def test_read_timeout(capsys, sim_server):
    code, _, err = run(capsys, *host_args(sim_server), "read", *LOOP, "--ep", "0x81", "--length", "64",
                       "--timeout-ms", "200")
    assert code == 1
    assert err.count("\n") == 1 and "timed out after 200 ms" in err and "--timeout-ms" in err


def test_unknown_endpoint_lists_endpoints(capsys, sim_server):
    code, _, err = run(capsys, *host_args(sim_server), "read", *LOOP, "--ep", "0x85", "--length", "8")
    assert code == 1 and "no endpoint 0x85" in err and "0x81 (bulk)" in err and "0x83 (interrupt)" in err


def test_loopback(capsys, sim_server):
    code, out, err = run(capsys, *host_args(sim_server), "loopback", *LOOP, "--size", "1000")
    assert code == 0, err
    assert out.strip() == "loopback 0x01 -> 0x81: wrote 1000, read 1000, data matches"


# --- capture ------------------------------------------------------------------------------------
def test_pcap_option_writes_pcapng(capsys, sim_server, tmp_path):
    path = tmp_path / "cli.pcapng"
    code, _, err = run(capsys, "--pcap", str(path), *host_args(sim_server), "control", *LOOP, "--direction", "in",
                       "--bm-request-type", "0x80", "--b-request", "6", "--w-value", "0x0100", "--length", "18")
    assert code == 0, err
    assert f"capturing to {path}" in err
    raw = path.read_bytes()
    assert raw[:4] == b"\x0a\x0d\x0d\x0a"  # pcapng section header block
    assert bytes.fromhex("12010002") in raw  # the device descriptor was recorded


# --- check / demo / sim -------------------------------------------------------------------------
@pytest.mark.timeout(120)
def test_check_command(capsys, sim_server):
    code, out, err = run(capsys, *host_args(sim_server), "check", "--busid", "1-1")
    assert code == 0, out + err
    assert "PASS  1-1       stall" in out and "PASS  1-1       timeout" in out
    assert out.strip().splitlines()[-1].endswith("0 failed")


@pytest.mark.timeout(120)
def test_demo_command(capsys):
    code, out, err = run(capsys, "demo")
    assert code == 0, out + err
    assert "virtual USB/IP server on 127.0.0.1:" in err
    port = err.split("virtual USB/IP server on 127.0.0.1:")[1].split()[0]
    # announced and found over mDNS on 127.0.0.1, as 'discover' finds it, then checked there
    assert "mDNS: found usbip-sim-" in out and f".local:{port}  [127.0.0.1]" in out and "target=sim" in out
    assert "isochronous IN 0x81" in out
    assert out.strip().splitlines()[-1].split(",")[1].strip() == "0 failed"


def test_sim_command_subprocess():
    proc = subprocess.Popen([sys.executable, "-u", "-m", "usbip_backend", "sim", "--port", "0", "--devices", "hid"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=subprocess_env())
    try:
        line = proc.stdout.readline()
        assert line.startswith("LISTENING 127.0.0.1 "), line + proc.stderr.read()
        port = line.split()[2]
        listed = run_module("--host", "127.0.0.1", "--port", port, "list", "--json")
        assert listed.returncode == 0, listed.stderr
        assert [d["id"] for d in json.loads(listed.stdout)["devices"]] == ["1209:0003"]
    finally:
        proc.terminate()
        proc.communicate(timeout=10)
    assert proc.returncode == 0


@pytest.mark.timeout(60)
def test_sim_command_mdns_is_found_by_discover():
    proc = subprocess.Popen([sys.executable, "-u", "-m", "usbip_backend", "sim", "--port", "0", "--devices", "hid",
                             "--mdns", "--mdns-name", "usbip-cli-test"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=subprocess_env())
    try:
        line = proc.stdout.readline()
        assert line.startswith("LISTENING 127.0.0.1 "), line + proc.stderr.read()
        port = line.split()[2]
        assert proc.stdout.readline().split() == ["MDNS", "_usbip._tcp.local.", "usbip-cli-test"]
        found = run_module("discover", "--interface", "127.0.0.1", "--json")
        assert found.returncode == 0, found.stderr
        (ours,) = [s for s in json.loads(found.stdout)["servers"] if s["name"] == "usbip-cli-test"]
        assert ours["port"] == int(port) and ours["properties"]["count"] == "1"
    finally:
        proc.terminate()
        proc.communicate(timeout=10)
    assert proc.returncode == 0


def test_sim_command_unlink_behaviour():
    """``sim --unlink status0``: the server answers every CMD_UNLINK with 0 and drops the URB, and
    a timeout against it still comes on time, ended by that RET_UNLINK."""
    from usbip_backend import protocol as P
    from usbip_backend.errors import UsbipTimeoutError

    proc = subprocess.Popen([sys.executable, "-u", "-m", "usbip_backend", "sim", "--port", "0", "--devices",
                             "loopback", "--unlink", "status0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=subprocess_env())
    try:
        line = proc.stdout.readline()
        assert line.startswith("LISTENING 127.0.0.1 "), line + proc.stderr.read()
        with import_device("127.0.0.1", int(line.split()[2]), "1-1", timeout=5, unlink_grace=5.0) as conn:
            conn.control_transfer(0x00, 9, 1, 0, b"", 5)
            with pytest.raises(UsbipTimeoutError, match="answered, status 0"):
                conn.transfer(P.TransferType.BULK, 0x81, length=8, timeout=0.05)
    finally:
        proc.terminate()
        proc.communicate(timeout=10)
    assert proc.returncode == 0


# --- discovery ----------------------------------------------------------------------------------
def _advertise(port: int, stype: str):
    from test_discovery import ESP32_TXT, advertise

    return advertise([("usbip-c0ffee", "usbip-c0ffee.local", port, ["127.0.0.1"], ESP32_TXT)], stype)


def _mdns_type() -> str:
    """A service type of this test's own (loopback multicast is shared with other processes)."""
    from test_discovery import unique_type

    return unique_type()


@pytest.mark.timeout(60)
def test_discover_command(capsys):
    pytest.importorskip("zeroconf")
    stype = _mdns_type()
    with _advertise(3240, stype):
        code, out, err = run(capsys, "discover", "--interface", "127.0.0.1", "--mdns-timeout", "2",
                             "--mdns-type", stype)
        assert code == 0, err
        assert out.startswith("1 USB/IP server found:\n")
        assert "usbip-c0ffee  usbip-c0ffee.local:3240  [127.0.0.1]" in out
        assert "board_id=a1b2c3" in out and "busid=multi" in out
        code, out, _ = run(capsys, "discover", "--interface", "127.0.0.1", "--mdns-timeout", "2", "--json",
                           "--mdns-type", stype)
    assert code == 0
    doc = json.loads(out)
    assert doc["schema"] == 1 and doc["command"] == "discover"
    (server,) = doc["servers"]
    assert server == {"name": "usbip-c0ffee", "host": "usbip-c0ffee.local", "port": 3240, "address": "127.0.0.1",
                      "addresses": ["127.0.0.1"], "properties": server["properties"]}
    assert server["properties"]["target"] == "esp32s3"


@pytest.mark.timeout(60)
def test_no_host_uses_the_one_discovered_server(capsys, sim_server):
    pytest.importorskip("zeroconf")
    stype = _mdns_type()
    with _advertise(sim_server[1], stype):
        code, out, err = run(capsys, "--mdns-interface", "127.0.0.1", "--mdns-timeout", "2", "--mdns-type", stype,
                             "list")
    assert code == 0, err
    assert f"using usbip-c0ffee (usbip-c0ffee.local) at 127.0.0.1:{sim_server[1]}, the only server found" in err
    assert "1-1: pid.codes (1209:0001)" in out


@pytest.mark.timeout(60)
def test_no_host_and_no_server_is_a_clear_error(capsys):
    pytest.importorskip("zeroconf")
    code, _, err = run(capsys, "--mdns-interface", "127.0.0.1", "--mdns-timeout", "0.5", "--mdns-type", _mdns_type(),
                       "list")
    assert code == 1
    assert "no USB/IP server answered mDNS" in err and "--host" in err and "Traceback" not in err


# --- syslog -------------------------------------------------------------------------------------
SYSLOG_LINE = b'<134>1 2026-01-02T03:04:05Z usbip-c0ffee bridge 42 usb - [meta x="1"] imported 1-1\n'


def test_syslog_option_prints_and_captures(capsys, sim_server, tmp_path):
    """--syslog connects to the device's log port and records messages next to the URBs."""
    import threading

    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(20)
    syslog_port = listener.getsockname()[1]

    def serve():
        try:
            conn, _ = listener.accept()
        except OSError:
            return
        with conn:
            conn.sendall(SYSLOG_LINE)
            conn.settimeout(20)
            try:
                while conn.recv(64):  # until the receiver disconnects
                    pass
            except OSError:
                pass

    t = threading.Thread(target=serve, name="fake-syslog", daemon=True)
    t.start()
    capture = tmp_path / "with-syslog.pcapng"
    try:
        # A read that times out keeps the command running long enough for the receiver to connect.
        code, _, err = run(capsys, *host_args(sim_server), "--syslog", "--syslog-port", str(syslog_port),
                           "--pcap", str(capture), "read", *LOOP, "--ep", "0x81", "--length", "64",
                           "--timeout-ms", "3000")
    finally:
        listener.close()
        t.join(timeout=20)
    assert code == 1 and "timed out after 3000 ms" in err
    assert "imported 1-1" in err  # printed by the receiver's console output
    raw = capture.read_bytes()
    assert b"imported 1-1" in raw and b"syslog" in raw  # exported-PDU record in the same capture


def test_read_streams_into_a_file_and_write_streams_a_file(capsys, sim_server, tmp_path):
    from usbip_backend.sim.devices import pattern

    out = tmp_path / "data.bin"
    code, stdout, err = run(capsys, *host_args(sim_server), "read", *LOOP, "--ep", "0x82", "--length", "2M",
                            "--out", str(out), "--chunk", str(63 * 512), "--window", "64")
    assert code == 0, err
    assert out.read_bytes() == pattern(2 * 1024 * 1024)  # whole pattern periods per URB: one pattern
    assert stdout.startswith(f"read 2097152 bytes from bulk IN 0x82 into {out} in ") and "MiB/s" in stdout
    assert "100.0%" in err  # progress lines on stderr (not a terminal here: plain lines)
    # resume: the first half already there, the rest appended
    out.write_bytes(pattern(63 * 512 * 10))
    code, stdout, err = run(capsys, *host_args(sim_server), "read", *LOOP, "--ep", "0x82", "--length", "2M",
                            "--out", str(out), "--chunk", str(63 * 512), "--offset", str(63 * 512 * 10), "--json")
    assert code == 0, err
    doc = json.loads(stdout)
    assert doc["offset"] == 2 * 1024 * 1024 and doc["bytes"] == 2 * 1024 * 1024 - 63 * 512 * 10
    assert out.read_bytes() == pattern(2 * 1024 * 1024)
    src = tmp_path / "sink.bin"
    src.write_bytes(pattern(4096) * 100)  # the sink checks each URB carries the pattern
    code, stdout, err = run(capsys, *host_args(sim_server), "write", *LOOP, "--ep", "0x02", "--file", str(src),
                            "--chunk", "4K")
    assert code == 0, err
    assert stdout.startswith(f"wrote 409600 bytes of {src} to bulk OUT 0x02")


def test_a_stream_that_stops_says_where_to_resume(capsys, sim_server, tmp_path):
    code, _, err = run(capsys, *host_args(sim_server), "read", *LOOP, "--ep", "0x81", "--length", "1M",
                       "--out", str(tmp_path / "x.bin"), "--timeout-ms", "200")
    assert code == 1
    assert "stopped at byte 0" in err and "--offset 0 to resume" in err


def test_size_argument():
    assert cli.size_arg("100M") == 100 << 20 and cli.size_arg("64K") == 65536 and cli.size_arg("1GiB") == 1 << 30
    assert cli.size_arg("0x1000") == 4096 and cli.size_arg("1.5K") == 1536 and cli.size_arg("512") == 512
    with pytest.raises(Exception, match="invalid size"):
        cli.size_arg("lots")


def test_progress_bar_on_a_terminal_redraws_one_line():
    import io

    from usbip_backend.progressbar import ProgressBar
    from usbip_backend.stream import Progress

    out = io.StringIO()
    bar = ProgressBar(out, "read ", tty=True)
    bar(Progress(512 << 20, 512 << 20, 1 << 30, 100 << 20, 5.0, 16, 16384))
    bar(Progress(1 << 30, 1 << 30, 1 << 30, 100 << 20, 10.0, 16, 16384))
    bar.finish()
    text = out.getvalue()
    assert text.count("\r") == 2 and text.endswith("\n")
    assert "[############            ] 512.0 MiB of 1.0 GiB   50.0%  100.0 MiB/s  ETA 5s" in text
    assert "[########################] 1.0 GiB of 1.0 GiB  100.0%" in text
