"""``python -m usbip_backend.sim``: run the virtual USB/IP server until SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import importlib
import logging
import signal
import sys
import threading
from types import FrameType
from typing import Any, Callable, Dict, List, Optional, Type, Union

from ..discovery import SERVICE_TYPE
from .device import Device
from .devices import DEFAULT_DEVICES, STOCK, UNPACED, _SerialEcho, stock_devices
from .mdns import DEFAULT_INTERFACES, MdnsError
from .server import UNLINK_BEHAVIOURS, SimServer

#: What signal.signal() returns: the previous handler.
_Handler = Union[Callable[[int, Optional[FrameType]], Any], int, None]

#: What each stock device is, for --help (ids and transmit buffers come from the classes).
DESCRIPTIONS = {
    "loopback": "bulk and interrupt loopback, source and sink, vendor control requests",
    "acm": "CDC-ACM serial echo",
    "hid": "HID boot keyboard",
    "iso": "isochronous OUT -> IN",
    "cp210x": "Silicon Labs CP2102 serial echo",
    "ch34x": "WCH CH340 serial echo",
    "ftdi": "FTDI FT232R serial echo",
    "ft2232h": "FTDI FT2232H, two serial echoes (?interface=0/1), not paced",
    "esp32s3": "ESP32-S3 USB-Serial-JTAG: ROM bootloader and flasher stub (takes writes at once)",
    "esp32s3-uart": "ESP32-S3 DevKit: the chip behind a CP2102 and the EN/IO0 transistors",
    "esp32s3-ch340": "the same behind a CH340",
    "esp32s3-ftdi": "the same behind an FT232R",
}


def _stock_class(name: str) -> Type[Device]:
    entry = STOCK[name]
    if isinstance(entry, str):  # "module:Class" (a module importing devices)
        module, _, attr = entry.partition(":")
        cls: Type[Device] = getattr(importlib.import_module(f"{__package__}.{module}"), attr)
        return cls
    return entry


def _paced(cls: Type[Device]) -> bool:
    """A serial echo of devices.py: its OUT drains at the line rate (the ESP32-S3 models, also
    _SerialEcho subclasses, hand OUT to the chip at once)."""
    return issubclass(cls, _SerialEcho) and cls.__module__ == _SerialEcho.__module__


def stock_help() -> str:
    """--help's list of the stock devices: name, VID:PID, what it is, and for a paced serial
    echo its transmit buffer."""
    lines = ["stock devices (--devices, in busid order 1-1, 1-2, ...):"]
    paced = []
    for name in STOCK:
        cls = _stock_class(name)
        what = DESCRIPTIONS.get(name, cls.product or cls.__name__)
        if _paced(cls):
            assert issubclass(cls, _SerialEcho)
            what += f", paced, {cls.TX_FIFO} B transmit buffer"
            paced.append(name + UNPACED)
        lines.append(f"  {name:14} {cls.vid:04x}:{cls.pid:04x}  {what}")
    lines += [f"  {', '.join(paced)}:",
              "                 the same echoes, not paced (every write taken at once: throughput tests)",
              "paced: the device drains OUT at the line rate the host set (the baud rate over the bits of",
              "a character: 960 B/s at 9600 8N1) through its transmit buffer; while the buffer has no",
              "room a bulk OUT URB stays pending (the packets NAKed), so a write bigger than the buffer",
              "takes its line time and write_timeout / cancel_write have a write to cut short, as on a",
              "real bridge."]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m usbip_backend.sim",
                                description="Virtual USB/IP server with stock Python devices.",
                                epilog=stock_help(), formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=3240, help="TCP port (default 3240; 0 = any free port)")
    p.add_argument("--devices", default=",".join(DEFAULT_DEVICES),
                   help=f"comma-separated stock devices: {', '.join(STOCK)}, and a paced serial echo's "
                        f"name{UNPACED} (listed below; default {','.join(DEFAULT_DEVICES)})")
    p.add_argument("--count", type=int, default=1,
                   help="copies of the device set, copy N on bus N (default 1)")
    p.add_argument("--unlink", choices=UNLINK_BEHAVIOURS, default="kernel",
                   help="how CMD_UNLINK is answered: kernel (usbip-host: -ECONNRESET for a pending "
                        "URB), status0 (PyPI usbip 0.7.0: always 0, the pending URB dropped), ignore "
                        "(never answered, the URB stays pending); default kernel")
    p.add_argument("--max-urb", type=int, default=None, metavar="BYTES",
                   help="answer bulk/interrupt URBs longer than BYTES with -EMSGSIZE, as the ESP32 "
                        "bridge does beyond its buffer (4096 there); default: no limit")
    p.add_argument("--mdns", action="store_true",
                   help="advertise the server over mDNS (_usbip._tcp, TXT keys as the ESP32 bridge's), "
                        "on 127.0.0.1 only unless --mdns-interface says otherwise; prints "
                        "'MDNS <type> <name>' once registered")
    p.add_argument("--mdns-interface", action="append", default=None, metavar="ADDR",
                   help="local address to advertise on (repeatable; default 127.0.0.1)")
    p.add_argument("--mdns-name", default=None, metavar="NAME",
                   help="service instance name (default usbip-sim-<board_id>)")
    p.add_argument("--mdns-type", default=SERVICE_TYPE, metavar="TYPE",
                   help=f"service type (default {SERVICE_TYPE})")
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
    interfaces = args.mdns_interface or list(DEFAULT_INTERFACES)
    server = SimServer(devices, host=args.host, port=args.port, unlink=args.unlink,
                       max_urb=args.max_urb, mdns=args.mdns, mdns_interfaces=interfaces,
                       mdns_name=args.mdns_name, mdns_type=args.mdns_type)
    try:
        server.start()
    except MdnsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"error: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    done = threading.Event()

    def _stop(signum: int, frame: Optional[FrameType]) -> None:  # noqa: ARG001
        done.set()

    old: Dict[signal.Signals, _Handler] = {}
    in_main = threading.current_thread() is threading.main_thread()
    if in_main:
        for sig in (signal.SIGTERM, signal.SIGINT):
            old[sig] = signal.signal(sig, _stop)
    try:
        print(f"LISTENING {args.host} {server.port}", flush=True)
        if server.mdns is not None:
            print(f"MDNS {server.mdns.service_type} {server.mdns.name}", flush=True)
            if args.verbose:
                txt = " ".join(f"{k}={v}" for k, v in server.mdns.properties.items())
                print(f"  mDNS on {', '.join(interfaces)}: {server.mdns.host}:{server.port} {txt}",
                      file=sys.stderr)
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
