#!/usr/bin/env python3
"""Run the full USB/IP check sequence against a server: ``python tools/integration.py HOST``.

For every exported device (or the ``--busid`` ones): list, import (and a refused second
import), descriptors, strings, configuration, every endpoint type the device has (bulk and
interrupt loopback where an OUT/IN pair echoes, interrupt reads, isochronous in its alternate
setting), a deliberate stall and a timeout. Prints one PASS/FAIL/SKIP line per check and
``N passed, N failed`` at the end; the exit code is 1 if any check failed.

Works against any server (a Linux usbipd, an ESP32 bridge) and, in CI, the virtual one:
``python -m usbip_backend.sim --port 3240 & python tools/integration.py 127.0.0.1``.
It is the ``usbip-pyusb-test check`` command with a positional HOST, built on
:mod:`usbip_backend.conformance`.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import List, Optional

try:
    import usbip_backend  # noqa: F401
except ImportError:  # run from a source checkout without installing
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src"))

from usbip_backend.conformance import run_checks  # noqa: E402
from usbip_backend.pcap import PcapWriter  # noqa: E402
from usbip_backend.syslog import SyslogReceiver  # noqa: E402

USBIP_PORT = 3240
SYSLOG_PORT = 1514


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="integration.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("host", help="USB/IP server address")
    p.add_argument("--port", type=int, default=USBIP_PORT, help="TCP port (default 3240)")
    p.add_argument("--busid", action="append", metavar="B", help="check only this device (repeatable)")
    p.add_argument("--timeout", type=float, default=5.0, metavar="S", help="network timeout (default 5 s)")
    p.add_argument("--pcap", metavar="PATH", help="capture every URB (and syslog) as pcapng (file or FIFO)")
    p.add_argument("--syslog", action="store_true", help="also receive the server's syslog (TCP)")
    p.add_argument("--syslog-port", type=int, default=SYSLOG_PORT, metavar="N",
                   help="syslog TCP port (default 1514)")
    p.add_argument("-v", "--verbose", action="count", default=0, help="tracebacks of failed checks")
    try:
        args = p.parse_args(argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 2
    pcap = PcapWriter(args.pcap) if args.pcap else None
    syslog = SyslogReceiver(args.host, port=args.syslog_port, pcap=pcap, console=sys.stderr) if args.syslog else None
    try:
        if syslog is not None:
            syslog.start()
        run = run_checks(args.host, args.port, busids=args.busid, timeout=args.timeout, hook=pcap,
                         out=sys.stdout, verbose=bool(args.verbose))
        print(run.summary())
        return 0 if run.failed == 0 else 1
    finally:
        if syslog is not None:
            syslog.stop()
        if pcap is not None:
            pcap.close()


if __name__ == "__main__":
    sys.exit(main())
