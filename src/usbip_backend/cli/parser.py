"""The argument parser: global connection options (before or after the command) and each
command's own options."""

from __future__ import annotations

import argparse
from typing import Any, Callable, Optional, Tuple

from .. import __version__
from .args import (
    endpoint_arg, hex_data, id_pair, length_arg, milliseconds, number, port_number, seconds, size_arg, u8, u16,
    usb_id,
)
from .commands import (
    cmd_check, cmd_control, cmd_demo, cmd_discover, cmd_list, cmd_loopback, cmd_probe, cmd_read, cmd_sim,
    cmd_write,
)
from .context import DEFAULT_PORT, DEFAULT_SYSLOG_PORT, PROG, Context


class _Formatter(argparse.RawDescriptionHelpFormatter):
    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=32)


DESCRIPTION = """\
Find USB/IP servers, list their devices and talk to one through PyUSB, with no kernel
module, no root and no driver. Numbers accept 0x-hex and decimal. Exit codes: 0 ok,
1 the operation failed, 2 usage error."""

EPILOG = f"""\
examples:
  {PROG} discover                        servers announcing _usbip._tcp (mDNS)
  {PROG} --host 192.168.1.50 list        devices a server exports
  {PROG} --host esp.local probe --id 303a:1001
  {PROG} --host esp.local control --id 303a:1001 --direction in \\
      --bm-request-type 0x80 --b-request 6 --w-value 0x0100 --length 18
  {PROG} --host esp.local --pcap usb.pcapng --syslog probe --id 303a:1001
  {PROG} sim                             a virtual server on 127.0.0.1:3240 to try it all

without --host, the one server that answers mDNS is used (it says which).
'{PROG} COMMAND --help' shows a command's options."""


SUB_EPILOG = f"""\
The connection options (--host, --port, --timeout, --pcap, --syslog, --syslog-port,
--mdns-timeout, --mdns-interface, --mdns-type, -v) may come before or after the command; see {PROG} --help."""


def _global_options(parser: argparse.ArgumentParser, suppress: bool) -> None:
    """Options valid before the command, and (with ``suppress``) after it too."""
    def d(value: Any) -> Any:
        return argparse.SUPPRESS if suppress else value

    def h(text: str) -> str:  # after the command they work the same, documented once in the main help
        return argparse.SUPPRESS if suppress else text

    g = parser.add_argument_group("connection and capture (before or after the command)")
    g.add_argument("--host", default=d(None), metavar="H",
                   help=h("USB/IP server address or name (default: the one server mDNS finds)"))
    g.add_argument("--port", type=port_number, default=d(None), metavar="P",
                   help=h(f"USB/IP TCP port (default {DEFAULT_PORT})"))
    g.add_argument("--timeout", type=seconds, default=d(5.0), metavar="S",
                   help=h("network timeout in seconds for connecting and OP_* requests (default 5; 0 waits forever)"))
    g.add_argument("--pcap", default=d(None), metavar="PATH",
                   help=h("write every URB to a pcapng file, or live to Wireshark (wireshark -k -i PATH): a FIFO "
                          "(mkfifo) on Linux and macOS, a named pipe \\\\.\\pipe\\NAME on Windows"))
    g.add_argument("--syslog", action="store_true", default=d(False),
                   help=h("also receive the server's syslog (TCP, RFC 5424) into the capture/log"))
    g.add_argument("--syslog-port", type=port_number, default=d(DEFAULT_SYSLOG_PORT), metavar="N",
                   help=h(f"syslog TCP port on the server (default {DEFAULT_SYSLOG_PORT})"))
    g.add_argument("--tls", action="store_true", default=d(False),
                   help=h("TLS to a server behind a TLS terminator (stunnel), the certificate checked "
                          "against --host with the system's CAs"))
    g.add_argument("--tls-ca", default=d(None), metavar="FILE",
                   help=h("trust the CA certificates in FILE (PEM) instead; implies --tls"))
    g.add_argument("--via", default=d(None), metavar="CMD",
                   help=h("reach the server through a command whose stdin/stdout carry the connection, "
                          "%%h and %%p standing for --host and --port: --via 'ssh -W %%h:%%p jumphost'"))
    g.add_argument("--mdns-timeout", type=seconds, default=d(2.0), metavar="S",
                   help=h("how long to browse mDNS (default 2 s)"))
    g.add_argument("--mdns-interface", action="append", default=d(None), metavar="ADDR",
                   help=h("local address to use for mDNS (repeatable; default all interfaces)"))
    g.add_argument("--mdns-type", default=d("_usbip._tcp.local."), metavar="TYPE",
                   help=h("DNS-SD service type to browse (default _usbip._tcp.local.)"))
    g.add_argument("-v", "--verbose", action="count", default=d(0), help=h("debug logging (and tracebacks)"))


def _device_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("device selection")
    g.add_argument("--vid", type=usb_id, help="vendor ID in hex as lsusb shows it, e.g. 303a (0x303a also)")
    g.add_argument("--pid", type=usb_id, help="product ID in hex, e.g. 1001")
    g.add_argument("--id", type=id_pair, metavar="VID:PID", help="both at once, as lsusb prints them: 303a:1001")
    g.add_argument("--busid", help="the server's bus ID, e.g. 1-1 (needed when several devices match)")


def settle(args: argparse.Namespace) -> Optional[str]:
    """Fold ``--id VID:PID`` into ``vid``/``pid``; a usage error's message, or None."""
    pair = getattr(args, "id", None)
    if pair is None:
        return None
    if args.vid is not None or args.pid is not None:
        return "--id VID:PID gives both IDs; use it instead of --vid/--pid, not with them"
    args.vid, args.pid = pair
    return None


def build_parser() -> argparse.ArgumentParser:
    # No abbreviations: the top-level parser would otherwise claim a command's own option
    # (sim --mdns) as an ambiguous prefix of its --mdns-* options.
    parser = argparse.ArgumentParser(prog=PROG, description=DESCRIPTION, epilog=EPILOG, formatter_class=_Formatter,
                                     allow_abbrev=False)
    _global_options(parser, suppress=False)
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    _global_options(common, suppress=True)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")

    def add(name: str, func: Callable[[Context], int], help_: str, description: str,
            parents: Tuple[argparse.ArgumentParser, ...] = (common,)) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_, description=description, parents=list(parents),
                           formatter_class=_Formatter, epilog=SUB_EPILOG if parents == (common,) else None)
        p.set_defaults(func=func)
        return p

    p = add("discover", cmd_discover, "find USB/IP servers with mDNS (_usbip._tcp)",
            "Browse mDNS for _usbip._tcp servers and print one line each: name, host:port, "
            "addresses and TXT properties (ESP32 bridges publish transport, state, count, busid, vid, "
            "pid, target, board_id).")
    p.add_argument("--interface", action="append", metavar="ADDR",
                   help="local address to browse on, repeatable (--interface 127.0.0.1 keeps mDNS on loopback)")
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = add("list", cmd_list, "list the devices a server exports (like 'usbip list -r')",
            "List exported devices: busid, VID:PID, vendor when known, class, speed and interfaces. "
            "A device imported by another client is not listed until it is released.")
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = add("probe", cmd_probe, "import a device and print its descriptors and strings",
            "Import a device through the PyUSB backend and print its descriptors and strings as a tree, "
            "like 'lsusb -v'.")
    _device_options(p)
    p.add_argument("--get-device-desc", action="store_true",
                   help="also send GET_DESCRIPTOR(DEVICE) and hex-dump the raw 18 bytes")
    p.add_argument("--ctrl-timeout-ms", type=milliseconds, default=1000, metavar="N",
                   help="timeout of each control transfer (default 1000)")
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = add("control", cmd_control, "send one control transfer",
            "Send one control transfer on endpoint 0 and hex-dump the data.")
    _device_options(p)
    r = p.add_argument_group("request")
    r.add_argument("--direction", choices=("in", "out"), required=True, help="data stage direction")
    r.add_argument("--bm-request-type", type=u8, required=True, metavar="N",
                   help="bmRequestType (bit 7 = IN, e.g. 0x80 standard device IN, 0xc0 vendor IN)")
    r.add_argument("--b-request", type=u8, required=True, metavar="N", help="bRequest (e.g. 6 = GET_DESCRIPTOR)")
    r.add_argument("--w-value", type=u16, default=0, metavar="N", help="wValue (default 0)")
    r.add_argument("--w-index", type=u16, default=0, metavar="N", help="wIndex (default 0)")
    data = r.add_mutually_exclusive_group()
    data.add_argument("--length", type=length_arg, metavar="N", help="IN: bytes to read (wLength, default 64)")
    data.add_argument("--data-hex", type=hex_data, metavar="HEX", help="OUT: payload as hex, e.g. 'de ad be ef'")
    r.add_argument("--ctrl-timeout-ms", type=milliseconds, default=1000, metavar="N",
                   help="transfer timeout (default 1000; 0 waits forever)")
    p.add_argument("--json", action="store_true", help="machine-readable output")

    def stream_options(p: argparse.ArgumentParser) -> None:
        """The options read and write end with: streaming, timeout, output."""
        p.add_argument("--chunk", type=size_arg, default=16384, metavar="N",
                       help="streaming: bytes per URB, whole packets (default 16K)")
        p.add_argument("--window", type=int, default=16, metavar="N",
                       help="streaming: most URBs in flight (default 16; the window grows to it)")
        p.add_argument("--offset", type=size_arg, default=0, metavar="N",
                       help="streaming: resume at this byte (as an interrupted run reports)")
        p.add_argument("--timeout-ms", type=milliseconds, default=1000, metavar="N",
                       help="timeout (per URB when streaming; default 1000; 0 waits forever)")
        p.add_argument("--json", action="store_true", help="machine-readable output")

    p = add("read", cmd_read, "read from a bulk or interrupt IN endpoint",
            "Read once from an IN endpoint (bulk or interrupt, taken from its descriptor) and hex-dump "
            "it; with --out, stream --length bytes into a file with a window of URBs in flight and a "
            "progress display on stderr.")
    _device_options(p)
    p.add_argument("--ep", type=endpoint_arg, required=True, metavar="EP", help="IN endpoint address, e.g. 0x81")
    p.add_argument("--length", type=size_arg, required=True, metavar="N",
                   help="bytes to ask for (100M, 64K: 1024-based)")
    p.add_argument("--out", metavar="FILE", help="stream into FILE instead of hex-dumping one read")
    stream_options(p)

    p = add("write", cmd_write, "write to a bulk or interrupt OUT endpoint",
            "Write once to an OUT endpoint (bulk or interrupt, taken from its descriptor); with --file, "
            "stream a file with a window of URBs in flight and a progress display on stderr.")
    _device_options(p)
    p.add_argument("--ep", type=endpoint_arg, required=True, metavar="EP", help="OUT endpoint address, e.g. 0x01")
    payload = p.add_mutually_exclusive_group(required=True)
    payload.add_argument("--data-hex", type=hex_data, metavar="HEX", help="payload as hex")
    payload.add_argument("--file", metavar="FILE", help="stream this file")
    stream_options(p)

    p = add("loopback", cmd_loopback, "write to an OUT endpoint, read it back from IN, compare",
            "Write a pattern to an OUT endpoint, read the same number of bytes back from an IN endpoint "
            "and compare (for devices that echo, like the virtual server's loopback device). "
            "Exit code 1 when the data differs.")
    _device_options(p)
    p.add_argument("--out-ep", type=endpoint_arg, default=0x01, metavar="EP", help="OUT endpoint (default 0x01)")
    p.add_argument("--in-ep", type=endpoint_arg, default=0x81, metavar="EP", help="IN endpoint (default 0x81)")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--size", type=length_arg, default=64, metavar="N", help="pattern length (default 64)")
    size.add_argument("--data-hex", type=hex_data, metavar="HEX", help="payload as hex instead of a pattern")
    p.add_argument("--timeout-ms", type=milliseconds, default=1000, metavar="N", help="timeout (default 1000)")
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = add("check", cmd_check, "run the full check sequence against a server",
            "Run the full sequence against every exported device (or --busid ones): import, exclusive "
            "import, descriptors, strings, configuration, every endpoint (bulk/interrupt loopback where an "
            "OUT/IN pair echoes, interrupt and isochronous reads), a deliberate stall and a timeout. "
            "Prints PASS/FAIL/SKIP lines and 'N passed, N failed'; exit code 1 if any failed.")
    p.add_argument("--busid", action="append", metavar="B", help="check only this device (repeatable)")

    p = add("demo", cmd_demo, "start the virtual server in-process and run 'check' against it",
            "Start the virtual USB/IP server on 127.0.0.1 (a free port), announce it over mDNS on "
            "127.0.0.1 and find it there as 'discover' does, then run the check sequence against it "
            "through PyUSB: everything works with no hardware.")
    p.add_argument("--no-mdns", action="store_true", help="skip the mDNS announcement and discovery")

    sim_common = argparse.ArgumentParser(add_help=False)
    g = sim_common.add_argument_group("server")
    g.add_argument("--host", default=argparse.SUPPRESS, metavar="H", help="address to listen on (default 127.0.0.1)")
    g.add_argument("--port", type=port_number, default=argparse.SUPPRESS, metavar="P",
                   help=f"TCP port (default {DEFAULT_PORT}; 0 picks a free one)")
    g.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS, help="debug logging")
    p = add("sim", cmd_sim, "run the virtual USB/IP server (try everything without hardware)",
            "Run the virtual USB/IP server until Ctrl-C. It prints 'LISTENING <host> <port>' when ready; "
            f"then, in another terminal: {PROG} --host 127.0.0.1 list", parents=(sim_common,))
    p.add_argument("--devices", nargs="+", metavar="NAME",
                   help="stock devices to export, space or comma separated (default: loopback acm hid iso)")
    p.add_argument("--count", type=number, metavar="N", help="how many copies of each device")
    p.add_argument("--unlink", choices=("kernel", "status0", "ignore"),
                   help="how CMD_UNLINK is answered: kernel (default: -ECONNRESET for a pending URB, as "
                        "usbip-host), status0 (always 0, the URB dropped, as PyPI usbip 0.7.0), ignore "
                        "(never answered)")
    g = p.add_argument_group("mDNS")
    g.add_argument("--mdns", action="store_true",
                   help="announce the server as _usbip._tcp (TXT records like the ESP32 bridge's), on "
                        "127.0.0.1 only unless --mdns-interface says otherwise; then 'discover "
                        "--interface 127.0.0.1' and commands without --host find it")
    g.add_argument("--mdns-interface", action="append", metavar="ADDR",
                   help="local address to announce on (repeatable; default 127.0.0.1)")
    g.add_argument("--mdns-name", metavar="NAME", help="service instance name (default usbip-sim-<id>)")
    p.add_argument("sim_args", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    return parser
