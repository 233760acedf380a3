"""Code written for the published 0.0.1 runs on this version, against the real virtual server.

0.0.1's public surface: ``USBIPBackend`` / ``get_backend(host, port, timeout, pcap)`` /
``discover_usbip_servers`` at the top, the ``mdns`` module, ``PcapWriter(stream)`` with
``write_urb`` / ``write_submit`` / ``write_complete`` / ``write_syslog(message, ts=)``, and the
``lsusbip`` command. Old spellings warn once (DeprecationWarning) and name the new one.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import struct
import subprocess
import sys
import warnings

import pytest
import usb.core
import usb.util

import tshark_util as ts
from conftest import ROOT
from test_discovery import LOOPBACK, advertise, unique_type  # the same loopback-only mDNS helpers
from tshark_util import read_blocks

VID = 0x1209
USBMON = struct.Struct("<QBBBBHBBqiiII8siiII")
GET_DEVICE_DESCRIPTOR = bytes([0x80, 6, 0x00, 0x01, 0, 0, 18, 0])
DEVICE_DESCRIPTOR = bytes([18, 1, 0x00, 0x02, 0, 0, 0, 64, 0x09, 0x12, 0x01, 0x00, 0x00, 0x01, 1, 2, 3, 1])
SYSLOG_LINE = b"<165>1 2003-10-11T22:14:15.003Z host app - ID47 - compat message"
DEVICE_LINE = re.compile(r"^Bus 00(\d) Device 0(\d\d): ID 1209:000(\d) pid\.codes(?: .+)? \(busid (\d-\d)\)$")


def _deprecations(caught):
    return [w for w in caught if issubclass(w.category, DeprecationWarning)]


# --- top-level names ---------------------------------------------------------------------------
def test_usbipbackend_alias_warns_once_and_names_the_new_spelling(monkeypatch):
    import usbip_backend
    from usbip_backend.backend import UsbipBackend

    monkeypatch.delitem(usbip_backend.__dict__, "USBIPBackend", raising=False)  # as in a fresh process
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        from usbip_backend import USBIPBackend, discover_usbip_servers, get_backend  # noqa: F401
        again = usbip_backend.USBIPBackend
    deps = _deprecations(caught)
    assert len(deps) == 1, [str(w.message) for w in deps]
    assert "UsbipBackend" in str(deps[0].message) and "USBIPBackend" in str(deps[0].message)
    assert deps[0].filename == __file__  # points at the line that used the old name
    assert again is USBIPBackend and issubclass(USBIPBackend, UsbipBackend)
    assert "USBIPBackend" in usbip_backend.__all__  # a star import of 0.0.1 code still binds it


def test_usbipbackend_positional_as_0_0_1_with_pcap_writer(sim_server, tmp_path):
    """USBIPBackend(host, port, timeout, pcap) with pyusb, recording to PcapWriter(stream)."""
    from usbip_backend._compat import USBIPBackend  # what usbip_backend.USBIPBackend is
    from usbip_backend.pcap import PcapWriter

    host, port = sim_server
    path = tmp_path / "old.pcapng"
    with open(path, "wb") as stream:
        writer = PcapWriter(stream)
        backend = USBIPBackend(host, port, 2.0, writer)
        try:
            assert backend.timeout == 2.0 and backend.port == port
            devices = list(usb.core.find(find_all=True, backend=backend, idVendor=VID))
            assert sorted(d.idProduct for d in devices) == [1, 2, 3, 4]
            dev = next(d for d in devices if d.idProduct == 1)
            assert usb.util.get_string(dev, dev.iProduct) == "USB/IP loopback/source/sink"
            raw = dev.ctrl_transfer(0x80, 6, 0x0100, 0, 18)
            assert bytes(raw[:2]) == b"\x12\x01"
            for d in devices:
                usb.util.dispose_resources(d)
        finally:
            backend.close()
            writer.close()
    blocks = read_blocks(path.read_bytes())
    usbmon = [USBMON.unpack_from(body, 20) for btype, body in blocks if btype == 6]
    assert len(usbmon) >= 4 and len(usbmon) % 2 == 0
    assert {chr(r[1]) for r in usbmon} == {"S", "C"}
    if ts.tshark_path():
        ts.assert_clean(str(path))
        ts.assert_all_urbs_paired(str(path))
        assert ts.fields(str(path), ["usb.idVendor"], "usb.idVendor")[0] == ["0x1209"]


def test_get_backend_positional_as_0_0_1(sim_server):
    from usbip_backend import get_backend

    host, port = sim_server
    backend = get_backend(host, port, 2.0, None)  # 0.0.1: get_backend(host, port, timeout, pcap)
    try:
        assert backend.timeout == 2.0
        dev = usb.core.find(backend=backend, idVendor=VID, idProduct=1)
        assert dev is not None
        usb.util.dispose_resources(dev)
    finally:
        backend.close()


def test_discovery_error_moved_to_errors_still_found_everywhere():
    import usbip_backend
    from usbip_backend import discovery, errors

    assert usbip_backend.DiscoveryError is errors.DiscoveryError is discovery.DiscoveryError
    assert usbip_backend._EXPORTS["DiscoveryError"] == "errors"


# --- discovery -------------------------------------------------------------------------------
def test_mdns_module_warns_once_on_import(monkeypatch):
    import usbip_backend

    # As in a fresh process. Through __dict__: getattr(usbip_backend, "mdns") would import it.
    monkeypatch.delitem(sys.modules, "usbip_backend.mdns", raising=False)
    monkeypatch.delitem(usbip_backend.__dict__, "mdns", raising=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        from usbip_backend.mdns import USBIP_MDNS_SERVICE, discover_usbip_servers
        import usbip_backend.mdns as again  # noqa: F401
        from usbip_backend import mdns  # noqa: F401
    deps = _deprecations(caught)
    assert len(deps) == 1, [str(w.message) for w in deps]
    assert "usbip_backend.discovery" in str(deps[0].message)
    assert deps[0].filename == __file__
    from usbip_backend import discovery

    assert USBIP_MDNS_SERVICE == "_usbip._tcp.local." == discovery.SERVICE_TYPE
    assert discover_usbip_servers is discovery.discover_usbip_servers


def test_discover_usbip_servers_results_read_as_0_0_1_dicts(monkeypatch):
    """0.0.1 code: ``for s in discover_usbip_servers(): connect(s["address"], s["port"])``."""
    from usbip_backend import discover_usbip_servers
    from usbip_backend.discovery import ServerInfo

    import usbip_backend

    monkeypatch.delitem(sys.modules, "usbip_backend.mdns", raising=False)
    monkeypatch.delitem(usbip_backend.__dict__, "mdns", raising=False)
    with pytest.warns(DeprecationWarning):
        from usbip_backend.mdns import discover_usbip_servers as old_discover
    assert old_discover is discover_usbip_servers
    stype = unique_type()
    txt = {"transport": "tcp", "busid": "1-1", "flag": None}
    with advertise([("usbip-a1b2c3", "usbip-a1b2c3.local", 3240, ["127.0.0.1", "fd00::1"], txt)], stype):
        servers = old_discover(timeout=2.0, interfaces=LOOPBACK, service_type=stype)
    assert len(servers) == 1
    s = servers[0]
    assert isinstance(s, ServerInfo)  # the new API on the same object
    assert dict(s) == {
        "name": "usbip-a1b2c3",
        "host": "usbip-a1b2c3.local",  # no trailing dot
        "address": "127.0.0.1",
        "addresses": ["127.0.0.1", "fd00::1"],
        "port": 3240,
        "txt": {"transport": "tcp", "busid": "1-1", "flag": ""},
        "type": stype,
    }
    assert s["host"] == s.host and s.get("port") == 3240 and "txt" in s
    assert list(s.keys()) == ["name", "host", "address", "addresses", "port", "txt", "type"]
    assert isinstance(s["port"], int) and all(isinstance(v, str) for v in s["txt"].values())


# --- pcap --------------------------------------------------------------------------------------
def test_pcap_writer_0_0_1_methods_written_at_once_and_decoded(tmp_path):
    from usbip_backend.pcap import (
        EVENT_COMPLETE, EVENT_SUBMIT, SYSLOG_INTERFACE_ID, USB_INTERFACE_ID, XFER_BULK, XFER_CONTROL,
        XFER_INTERRUPT, PcapWriter,
    )

    path = tmp_path / "compat.pcapng"
    with open(path, "wb") as stream:
        w = PcapWriter(stream)  # 0.0.1: a binary stream
        dev = dict(devnum=2, busnum=1)
        get = w.write_submit(transfer_type=XFER_CONTROL, ep=0, direction_in=True, setup=GET_DEVICE_DESCRIPTOR,
                             urb_len=18, **dev)
        w.write_complete(urb_id=get, transfer_type=XFER_CONTROL, ep=0, direction_in=True, data=DEVICE_DESCRIPTOR,
                         urb_len=18, **dev)
        out = w.write_submit(transfer_type=XFER_BULK, ep=2, direction_in=False, data=b"hello", urb_len=5, **dev)
        w.write_complete(urb_id=out, transfer_type=XFER_BULK, ep=2, direction_in=False, status=-32, **dev)
        intr = w.write_urb(event_type=EVENT_SUBMIT, transfer_type=XFER_INTERRUPT, ep=1, direction_in=True,
                           status=-115, urb_len=8, urb_id=77, ts=1700000000.25, **dev)
        w.write_urb(event_type=EVENT_COMPLETE, transfer_type=XFER_INTERRUPT, ep=1, direction_in=True,
                    data=b"\x01\x02", urb_len=2, urb_id=intr, ts=1700000000.5, **dev)
        w.write_syslog(SYSLOG_LINE, ts=1700000001.0)
        # 0.0.1 wrote each record before returning: all of them are in the file before close().
        assert len(read_blocks(path.read_bytes())) == 3 + 7
        w.close()
    assert (get, out, intr) == (1, 2, 77)
    blocks = read_blocks(path.read_bytes())
    assert [b[0] for b in blocks] == [0x0A0D0D0A, 1, 1] + [6] * 7
    epbs = [b[1] for b in blocks[3:]]
    assert [struct.unpack_from("<I", e)[0] for e in epbs] == [USB_INTERFACE_ID] * 6 + [SYSLOG_INTERFACE_ID]
    recs = [USBMON.unpack_from(e, 20) for e in epbs[:6]]
    # id, event, xfer, epnum, devnum, busnum, flag_setup, flag_data, ..., status, urb_len, len_cap, setup
    s, c = recs[0], recs[1]
    assert (s[0], chr(s[1]), s[2], s[3], s[4], s[5], s[6], chr(s[7])) == (1, "S", 2, 0x80, 2, 1, 0, "<")
    assert (s[10], s[11], s[12], s[13]) == (-115, 18, 0, GET_DEVICE_DESCRIPTOR)
    assert (c[0], chr(c[1]), chr(c[6]), c[7], c[10], c[11], c[12]) == (1, "C", "-", 0, 0, 18, 18)
    assert epbs[1][20 + 64:20 + 64 + 18] == DEVICE_DESCRIPTOR
    bs, bc = recs[2], recs[3]
    assert (bs[2], bs[3], bs[7], bs[11], bs[12]) == (3, 0x02, 0, 5, 5) and epbs[2][84:89] == b"hello"
    assert (bc[2], bc[3], chr(bc[7]), bc[10]) == (3, 0x02, ">", -32)
    assert (recs[4][0], recs[4][8], recs[4][9], recs[5][9]) == (77, 1700000000, 250000, 500000)
    if ts.tshark_path():
        p = str(path)
        ts.assert_clean(p)
        ts.assert_all_urbs_paired(p)
        info = [r[0] for r in ts.fields(p, ["_ws.col.Info"], "usb.transfer_type == 0x02")]
        assert info == ["GET DESCRIPTOR Request DEVICE", "GET DESCRIPTOR Response DEVICE"]
        assert ts.fields(p, ["usb.idVendor"], "usb.idVendor") == [["0x1209"]]
        assert ts.count(p, "usb.urb_status == -32") == 1
        assert ts.fields(p, ["usb.capdata"], "usb.transfer_type == 0x01 && usb.urb_type == 'C'") in ([["0102"]], [["01:02"]])
        sys_rows = ts.fields(p, ["syslog.facility", "syslog.level", "syslog.msg"], "syslog")
        assert len(sys_rows) == 1 and sys_rows[0][:2] == ["20", "5"] and "compat message" in sys_rows[0][2]


# --- lsusbip -----------------------------------------------------------------------------------
def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.path.join(ROOT, "src") + os.pathsep + env.get("PYTHONPATH", "")
    return env


def lsusbip(*args, command=None):
    cmd = command or [sys.executable, "-m", "usbip_backend.lsusbip"]
    return subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=40, env=_env())


def closed_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (bound, then closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _device_lines(text):
    return [line for line in text.splitlines() if line.startswith("Bus ")]


def test_lsusbip_one_host_lists_like_lsusb(sim_server):
    host, port = sim_server
    r = lsusbip(f"{host}:{port}")
    assert (r.returncode, r.stderr) == (0, "")
    lines = r.stdout.splitlines()
    assert len(lines) == 4, r.stdout  # one server given: no heading, one line per device
    parsed = [DEVICE_LINE.match(line) for line in lines]
    assert all(parsed), lines
    assert [m.group(3) for m in parsed] == ["1", "2", "3", "4"]
    assert [m.group(4) for m in parsed] == ["1-1", "1-2", "1-3", "1-4"]
    assert lines[0].startswith("Bus 001 Device 002: ID 1209:0001 pid.codes")


def test_lsusbip_two_hosts_heading_each(sim_server, fresh_sim_server):
    a = "%s:%d" % sim_server
    b = "%s:%d" % fresh_sim_server
    r = lsusbip(a, b)
    assert (r.returncode, r.stderr) == (0, "")
    lines = r.stdout.splitlines()
    assert lines[0] == a and lines[6] == b and lines[5] == ""  # given order, a blank line between
    assert len(_device_lines(r.stdout)) == 8


def test_lsusbip_tree(sim_server, fresh_sim_server):
    a = "%s:%d" % sim_server
    b = "%s:%d" % fresh_sim_server
    r = lsusbip("-t", a, b)
    assert (r.returncode, r.stderr) == (0, "")
    lines = r.stdout.splitlines()
    assert lines[:2] == [a, "/:  Bus 001"]
    assert lines[2] == "    |__ Port 001: Dev 002, ID 1209:0001 pid.codes, 480 Mb/s, busid 1-1"
    assert b in lines and lines.count("/:  Bus 001") == 2


def test_lsusbip_verbose_descriptors(sim_server):
    host, port = sim_server
    r = lsusbip("-v", f"{host}:{port}")
    assert (r.returncode, r.stderr) == (0, "")
    out = r.stdout
    assert len(_device_lines(out)) == 4 and all(DEVICE_LINE.match(line) for line in _device_lines(out))
    assert "Bus 001 Device 002: ID 1209:0001 pid.codes USB/IP loopback/source/sink (busid 1-1)" in out
    assert out.count("Device Descriptor:") == 4
    assert re.search(r"^  idVendor +0x1209  pid\.codes$", out, re.M)
    assert re.search(r"^  iProduct +2  USB/IP loopback/source/sink$", out, re.M)
    assert re.search(r"^      iInterface +\d+  Loopback, source and sink$", out, re.M)
    assert re.search(r"^        bEndpointAddress +0x81  EP 1 IN$", out, re.M)
    assert re.search(r"^        bmAttributes +\d+  Isochronous$", out, re.M)  # the iso device's endpoints


def test_lsusbip_tree_verbose(sim_server):
    host, port = sim_server
    r = lsusbip("-t", "-v", f"{host}:{port}")
    assert (r.returncode, r.stderr) == (0, "")
    lines = r.stdout.splitlines()
    assert "    |__ Port 002: Dev 003, ID 1209:0002 pid.codes USB/IP CDC-ACM echo, 480 Mb/s, busid 1-2" in lines
    assert "        |__ If 1 Alt 0, Class=CDC Data, 'CDC ACM data'" in lines
    assert "            |__ EP 0x81 IN, Bulk, 512 bytes" in lines


def test_lsusbip_unreachable_host_one_line_exit_1(sim_server):
    port = closed_port()
    r = lsusbip(f"127.0.0.1:{port}")
    assert r.returncode == 1 and r.stdout == ""
    assert len(r.stderr.splitlines()) == 1, r.stderr
    assert r.stderr.startswith("lsusbip: ") and f"127.0.0.1:{port}" in r.stderr and "refused" in r.stderr
    # Next to a good server: the good one is listed, the bad one is one line, the status is 1.
    r = lsusbip("%s:%d" % sim_server, f"127.0.0.1:{port}")
    assert r.returncode == 1 and len(_device_lines(r.stdout)) == 4
    assert len(r.stderr.splitlines()) == 1 and f"127.0.0.1:{port}" in r.stderr


@pytest.mark.parametrize("args", [["127.0.0.1:notaport"], ["127.0.0.1:70000"], ["[::1"], ["--no-such-option"],
                                  ["--timeout", "0", "127.0.0.1"]])
def test_lsusbip_usage_errors_exit_2(args):
    r = lsusbip(*args)
    assert r.returncode == 2 and r.stdout == ""
    assert "usage: lsusbip" in r.stderr and r.stderr.splitlines()[-1].startswith("lsusbip: error: ")


def test_lsusbip_host_port_forms():
    from usbip_backend.lsusbip import host_port

    assert host_port("bench") == ("bench", 3240)
    assert host_port("10.0.0.5:3241") == ("10.0.0.5", 3241)
    assert host_port("[fe80::1%eth0]:4000") == ("fe80::1%eth0", 4000)
    assert host_port("[::1]") == ("::1", 3240)
    assert host_port("fd00::5") == ("fd00::5", 3240)  # 0.0.1 split this at the last colon
    for bad in ("", ":3240", "host:", "host:0", "[::1]x"):
        with pytest.raises(ValueError):
            host_port(bad)


def test_lsusbip_finds_servers_by_mdns(sim_server):
    host, port = sim_server
    stype = unique_type()
    with advertise([("usbip-sim", "sim-host.local", port, [host], {"busid": "multi"})], stype):
        r = lsusbip("--mdns-interface", "127.0.0.1", "--mdns-type", stype, "--mdns-timeout", "1.5")
    assert (r.returncode, r.stderr) == (0, "")
    lines = r.stdout.splitlines()
    assert lines[0] == f"sim-host.local (127.0.0.1:{port})"  # found servers always get a heading
    assert len(_device_lines(r.stdout)) == 4


def test_lsusbip_mdns_finds_nothing_exit_1():
    stype = unique_type()
    r = lsusbip("--mdns-interface", "127.0.0.1", "--mdns-type", stype, "--mdns-timeout", "0.5")
    assert r.returncode == 1 and r.stdout == ""
    assert len(r.stderr.splitlines()) == 1 and "no USB/IP server" in r.stderr and "HOST[:PORT]" in r.stderr


def _console_script():
    found = os.path.join(os.path.dirname(sys.executable), "lsusbip")
    return found if os.access(found, os.X_OK) else shutil.which("lsusbip")


def test_lsusbip_console_script(sim_server):
    script = _console_script()
    if script is None:
        if os.environ.get("CI") == "true":
            pytest.fail("the lsusbip console script is not installed (README's test command installs it)")
        pytest.skip("the lsusbip console script is not installed (pip install -e . installs it)")
    r = lsusbip("-t", "%s:%d" % sim_server, command=[script])
    assert (r.returncode, r.stderr) == (0, "")
    assert "/:  Bus 001" in r.stdout and "busid 1-4" in r.stdout
