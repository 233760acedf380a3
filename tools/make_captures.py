#!/usr/bin/env python3
"""Make the sample captures in captures/ with the virtual USB/IP server (no hardware needed).

    PYTHONPATH=src python tools/make_captures.py [--out captures]

Starts ``python -m usbip_backend.sim`` on 127.0.0.1 (a free port), then:

* probe.pcapng          usbip-pyusb-test --pcap probe.pcapng probe --busid 1-1 --get-device-desc
* bulk-loopback.pcapng  usbip-pyusb-test --pcap bulk-loopback.pcapng loopback --busid 1-1 --size 64
* stall.pcapng          usbip-pyusb-test --pcap stall.pcapng control --busid 1-1 --direction in
                        --bm-request-type 0xc0 --b-request 0x5f --length 8   (a STALL, -EPIPE)
* syslog.pcapng         library: a SyslogReceiver connected to a stand-in device log port sends
                        RFC 5424 lines into the same capture as a session with a stall, so the
                        stall and the firmware's complaint about it sit side by side.

Each file is checked with tshark (when installed): no malformed packets, every URB paired.
"""

from __future__ import annotations

import argparse
import os
import queue
import shutil
import socket
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SRC = os.path.join(ROOT, "src")
sys.path.insert(0, SRC)

from usbip_backend.client import import_device  # noqa: E402
from usbip_backend.errors import UrbError  # noqa: E402
from usbip_backend.pcap import PcapWriter  # noqa: E402
from usbip_backend.syslog import SyslogReceiver  # noqa: E402


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = SRC + os.pathsep + env.get("PYTHONPATH", "")
    return env


def start_sim() -> "tuple[subprocess.Popen, int]":
    proc = subprocess.Popen([sys.executable, "-u", "-m", "usbip_backend.sim", "--host", "127.0.0.1", "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
    line = proc.stdout.readline()
    if not line.startswith("LISTENING"):
        proc.kill()
        raise SystemExit(f"virtual server did not start: {line!r} {proc.communicate(timeout=10)[1]}")
    return proc, int(line.split()[2])


def cli(port: int, pcap: str, *args: str, expect: int = 0) -> None:
    cmd = [sys.executable, "-m", "usbip_backend.cli", "--host", "127.0.0.1", "--port", str(port), "--pcap", pcap, *args]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(), timeout=60)
    if proc.returncode != expect:
        raise SystemExit(f"{' '.join(cmd)} exited {proc.returncode} (expected {expect}):\n{proc.stdout}{proc.stderr}")


def syslog_sample(port: int, path: str) -> None:
    """A session with a stall, plus the device's log lines about it, in one capture."""
    lines = [
        b"<14>1 - usbip-3c61 usbip 1 BOOT - USB/IP bridge ready, exporting 1-1",
        b'<13>1 - usbip-3c61 usbip 1 IMPORT [origin@32473 ip="127.0.0.1"] device 1-1 imported',
        b"<11>1 - usbip-3c61 usb 1 EP0 - STALL: vendor request 0x5f not supported",
        b"<15>1 - usbip-3c61 usb 1 EP0 - CLEAR_FEATURE not needed for EP0",
    ]
    got: "queue.Queue[object]" = queue.Queue()
    with socket.create_server(("127.0.0.1", 0)) as log_port, PcapWriter(path) as writer:
        receiver = SyslogReceiver("127.0.0.1", log_port.getsockname()[1], pcap=writer, on_message=got.put,
                                  console=False)
        receiver.start()
        try:
            log_port.settimeout(10)
            device_log, _ = log_port.accept()
            with device_log:
                def say(i: int) -> None:
                    device_log.sendall(b"%d %s" % (len(lines[i]), lines[i]))  # octet counting
                    got.get(timeout=10)

                say(0)
                with import_device("127.0.0.1", port, "1-1", hook=writer) as conn:
                    say(1)
                    conn.control_transfer(0x80, 6, 0x0100, 0, 18)
                    try:
                        conn.control_transfer(0xC0, 0x5F, 0, 0, 8)
                    except UrbError:
                        pass
                    say(2)
                    say(3)
                    conn.control_transfer(0x80, 0, 0, 0, 2)  # GET_STATUS: the device is fine again
        finally:
            receiver.stop()


def check(path: str) -> str:
    tshark = shutil.which("tshark")
    if tshark is None:
        return "not checked (install tshark)"
    out = subprocess.run([tshark, "-r", path, "-T", "fields", "-e", "frame.number", "-e", "_ws.malformed",
                          "-Y", "_ws.malformed || _ws.expert.severity >= 0x00600000"],
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, timeout=60).stdout
    if out.strip():
        raise SystemExit(f"{path}: tshark reports problems:\n{out}")
    rows = subprocess.run([tshark, "-r", path, "-T", "fields", "-e", "usb.urb_type", "-e", "usb.request_in"],
                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, timeout=60).stdout.splitlines()
    usb = [r.split("\t") for r in rows if r.strip()]
    submits = sum(1 for r in usb if r[0] == "'S'")
    paired = sum(1 for r in usb if r[0] in ("'C'", "'E'") and r[1])
    if submits != paired:
        raise SystemExit(f"{path}: {submits} submits but {paired} paired completions")
    return f"{len(rows)} packets, {submits} URBs all paired, no malformed packets"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.path.join(ROOT, "captures"))
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    sim, port = start_sim()
    try:
        made = {}
        p = os.path.join(args.out, "probe.pcapng")
        cli(port, p, "probe", "--busid", "1-1", "--get-device-desc")
        made[p] = None
        p = os.path.join(args.out, "bulk-loopback.pcapng")
        cli(port, p, "loopback", "--busid", "1-1", "--size", "64")
        made[p] = None
        p = os.path.join(args.out, "stall.pcapng")
        cli(port, p, "control", "--busid", "1-1", "--direction", "in", "--bm-request-type", "0xc0",
            "--b-request", "0x5f", "--length", "8", expect=1)
        made[p] = None
        p = os.path.join(args.out, "syslog.pcapng")
        syslog_sample(port, p)
        made[p] = None
    finally:
        sim.terminate()
        try:
            sim.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            sim.kill()
            sim.communicate(timeout=10)
    for path in made:
        print(f"{os.path.relpath(path, ROOT)}: {os.path.getsize(path)} bytes, {check(path)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
