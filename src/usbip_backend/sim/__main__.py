"""``python -m usbip_backend.sim``: run the virtual USB/IP server until SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from typing import List, Optional

from .devices import DEFAULT_DEVICES, STOCK, stock_devices
from .server import UNLINK_BEHAVIOURS, SimServer


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m usbip_backend.sim",
                                description="Virtual USB/IP server with stock Python devices.")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=3240, help="TCP port (default 3240; 0 = any free port)")
    p.add_argument("--devices", default=",".join(DEFAULT_DEVICES),
                   help=f"comma-separated stock devices: {', '.join(STOCK)} (default {','.join(DEFAULT_DEVICES)})")
    p.add_argument("--count", type=int, default=1,
                   help="copies of the device set, copy N on bus N (default 1)")
    p.add_argument("--unlink", choices=UNLINK_BEHAVIOURS, default="kernel",
                   help="how CMD_UNLINK is answered: kernel (usbip-host: -ECONNRESET for a pending "
                        "URB), status0 (PyPI usbip 0.7.0: always 0, the pending URB dropped), ignore "
                        "(never answered, the URB stays pending); default kernel")
    p.add_argument("--max-urb", type=int, default=None, metavar="BYTES",
                   help="answer bulk/interrupt URBs longer than BYTES with -EMSGSIZE, as the ESP32 "
                        "bridge does beyond its buffer (4096 there); default: no limit")
    p.add_argument("-v", "--verbose", action="count", default=0, help="log to stderr (-vv: debug)")
    return p


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.verbose:
        logging.basicConfig(level=logging.DEBUG if args.verbose > 1 else logging.INFO,
                            format="%(asctime)s %(name)s %(levelname)s %(message)s", stream=sys.stderr)
    names = [n.strip() for n in args.devices.split(",") if n.strip()]
    if args.count < 1 or args.count > 255:
        print("error: --count must be 1..255", file=sys.stderr)
        return 2
    try:
        devices = stock_devices(names, count=args.count)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    server = SimServer(devices, host=args.host, port=args.port, unlink=args.unlink,
                       max_urb=args.max_urb)
    try:
        server.start()
    except OSError as exc:
        print(f"error: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    done = threading.Event()

    def _stop(signum, frame):  # noqa: ARG001
        done.set()

    old = {}
    in_main = threading.current_thread() is threading.main_thread()
    if in_main:
        for sig in (signal.SIGTERM, signal.SIGINT):
            old[sig] = signal.signal(sig, _stop)
    try:
        print(f"LISTENING {args.host} {server.port}", flush=True)
        if args.verbose:
            for dev in devices:
                print(f"  {dev.busid:6} {dev.vid:04x}:{dev.pid:04x} {dev.product}", file=sys.stderr)
        while not done.wait(1.0):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
        for sig, handler in old.items():
            signal.signal(sig, handler)
    return 0


if __name__ == "__main__":
    sys.exit(main())
