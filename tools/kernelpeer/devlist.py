#!/usr/bin/env python3
"""OP_REQ_DEVLIST over a raw socket, decoded with the project's own wire codec.

    devlist.py [--port 3240] [--wait N] [--timeout 60]

Prints one line per device (busid vid:pid speed busnum/devnum config interfaces). With --wait N
it retries until the server lists at least N devices (start.sh uses this for readiness).
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "src"))
from usbip_backend import protocol  # noqa: E402
from usbip_backend.errors import ProtocolError  # noqa: E402

MAX_REPLY = 1 << 20  # bound on what a devlist reply may occupy


def devlist(host: str, port: int, timeout: float = 5.0) -> list:
    """One OP_REQ_DEVLIST exchange; the server closes after replying, so read to EOF."""
    with socket.create_connection((host, port), timeout=timeout) as s:
        s.sendall(protocol.pack_req_devlist())
        buf = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
            if len(buf) > MAX_REPLY:
                raise ProtocolError("OP_REP_DEVLIST larger than %d bytes" % MAX_REPLY)
    return protocol.unpack_rep_devlist(buf)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=3240)
    ap.add_argument("--wait", type=int, default=0, help="retry until at least this many devices")
    ap.add_argument("--timeout", type=float, default=60.0)
    a = ap.parse_args()
    deadline = time.monotonic() + a.timeout
    while True:
        try:
            devs = devlist(a.host, a.port, timeout=min(5.0, a.timeout))
            if len(devs) >= a.wait:
                break
        except (OSError, ProtocolError) as e:
            if not a.wait:
                print("devlist: %s" % e, file=sys.stderr)
                return 1
        if time.monotonic() > deadline:
            print("devlist: port %d did not list %d devices in %.0f s" % (a.port, a.wait, a.timeout), file=sys.stderr)
            return 1
        time.sleep(0.2)
    for d in devs:
        ifs = " ".join("%02x/%02x/%02x" % (i.bInterfaceClass, i.bInterfaceSubClass, i.bInterfaceProtocol)
                       for i in d.interfaces)
        print("%s %04x:%04x speed=%d bus=%d dev=%d config=%d interfaces=%d %s" % (
            d.busid, d.idVendor, d.idProduct, d.speed, d.busnum, d.devnum,
            d.bConfigurationValue, d.bNumInterfaces, ifs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
