"""``lsusbip``: list the USB devices USB/IP servers export, the way ``lsusb`` lists local ones.

::

    lsusbip                          # every server announcing _usbip._tcp over mDNS
    lsusbip 192.168.1.20 bench:3241  # these servers (HOST, HOST:PORT, [IPv6]:PORT)
    lsusbip -t 192.168.1.20          # as a tree: bus, port, device, interfaces
    lsusbip -v 192.168.1.20          # with every descriptor, as lsusb -v shows them

One line per device, ``Bus 001 Device 002: ID 1209:0001 Vendor Product (busid 1-1)``; the busid
is what ``usbip attach -b`` and ``get_backend(busids=...)`` take. With several servers (or
servers found by mDNS) each server's devices follow a heading line naming it.

The device list is one OP_REQ_DEVLIST per server, which takes no device away from anyone.
``-v`` imports each device for a moment to read its descriptors and strings, then gives it
back; a device that another client holds cannot be imported, so it is shown without them (and
a note on stderr says so), as ``lsusb -v`` does for a device it cannot open.

Exit status: 0 when every server answered, 1 when one could not be reached or mDNS found none
(each failure is one line on stderr), 2 for a usage error.
"""

from __future__ import annotations

import argparse
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

from . import lsusb_text
from . import protocol as P
from .ch9 import DT_STRING, LANGID_EN_US
from .ch9 import REQ_GET_DESCRIPTOR as GET_DESCRIPTOR
from .client import list_devices
from .descriptors import (
    ConfigurationDescriptor, DeviceDescriptor, parse_string_descriptor,
)
from .device import natural_busid_key, open_device, port_numbers_from_busid
from .engine import Connection
from .errors import DiscoveryError, UsbipError
from .usbnames import SPEEDS, class_name, speed_name, transfer_type_name, vendor_name

PROG = "lsusbip"
EXIT_OK, EXIT_FAILED = 0, 1  # argparse exits 2 for a usage error

Emit = lsusb_text.Emit


class Target(NamedTuple):
    host: str
    port: int
    #: How output and errors name the server (``host:port``, or ``name (address:port)``).
    label: str


@dataclass
class Details:
    """What ``-v`` reads from an imported device."""

    descriptor: DeviceDescriptor
    configurations: List[ConfigurationDescriptor]
    #: string index -> text, for every index the descriptors name that the device answered
    strings: Dict[int, str] = field(default_factory=dict)


@dataclass
class Report:
    """One server's answer: its devices, or why there are none."""

    target: Target
    devices: List[P.UsbDevice] = field(default_factory=list)
    error: Optional[str] = None
    details: Dict[str, Details] = field(default_factory=dict)
    #: busid -> why ``-v`` could not read that device's descriptors
    detail_errors: Dict[str, str] = field(default_factory=dict)


# --- arguments ---------------------------------------------------------------------------------
def host_port(text: str, default_port: int = P.USBIP_PORT) -> Tuple[str, int]:
    """``host``, ``host:port``, ``[v6]``, ``[v6]:port`` or a bare IPv6 address -> (host, port).

    Raises ValueError with a message for argparse.
    """
    spec = text.strip()
    port_text: Optional[str] = None
    if spec.startswith("["):
        end = spec.find("]")
        if end < 0 or (end + 1 < len(spec) and spec[end + 1] != ":"):
            raise ValueError(f"invalid server {text!r}: write an IPv6 address with a port as [addr]:port")
        host = spec[1:end]
        if end + 1 < len(spec):
            port_text = spec[end + 2:]
    elif spec.count(":") == 1:
        host, port_text = spec.split(":")
    else:
        host = spec  # a name, an IPv4 address or a bare IPv6 address (several colons)
    if not host:
        raise ValueError(f"invalid server {text!r}: no host name or address")
    if port_text is None:
        return host, default_port
    if not port_text.isdigit() or not 1 <= int(port_text) <= 0xFFFF:
        raise ValueError(f"invalid port in {text!r}: give a TCP port 1..65535 (USB/IP uses {P.USBIP_PORT})")
    return host, int(port_text)


def where(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number of seconds {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"seconds must be more than 0, not {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    p = argparse.ArgumentParser(
        prog=PROG,
        description="List the USB devices that USB/IP servers export, like lsusb. Without a "
                    "server, finds the servers announcing themselves over mDNS.",
    )
    p.add_argument("host", nargs="*", metavar="HOST[:PORT]",
                   help=f"USB/IP server: name or address, :PORT (default {P.USBIP_PORT}), "
                        "IPv6 as [addr]:port; several may be given")
    p.add_argument("-t", "--tree", action="store_true",
                   help="show each server's devices as a tree of bus, port, device and interfaces")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="read and show every descriptor and string of each device (imports each "
                        "device for a moment)")
    p.add_argument("--timeout", type=_positive_seconds, default=2.0, metavar="S",
                   help="seconds to connect and get each answer (default 2)")
    p.add_argument("--mdns-timeout", type=_positive_seconds, default=3.0, metavar="S",
                   help="seconds to listen for mDNS announcements when no server is given (default 3)")
    p.add_argument("--mdns-interface", action="append", default=None, metavar="ADDR",
                   help="local address to use for mDNS (repeatable; default: every interface)")
    p.add_argument("--mdns-type", default="_usbip._tcp.local.", metavar="TYPE",
                   help="DNS-SD service type to browse (default _usbip._tcp.local.)")
    p.add_argument("-V", "--version", action="version", version=f"{PROG} (pyusb-usbip-backend) {__version__}")
    return p


# --- gathering ---------------------------------------------------------------------------------
def discover_targets(timeout: float, interfaces: Optional[Sequence[str]], service_type: str) -> List[Target]:
    """Servers found by mDNS (raises DiscoveryError when mDNS cannot start)."""
    from .discovery import discover_usbip_servers  # zeroconf only when discovery is used

    targets: List[Target] = []
    for server in discover_usbip_servers(timeout=timeout, interfaces=interfaces, service_type=service_type):
        if any((t.host, t.port) == (server.address, server.port) for t in targets):
            continue  # one server announced under several names
        name = server.host or server.name
        targets.append(Target(server.address, server.port, f"{name} ({where(server.address, server.port)})"))
    return targets


def read_strings(conn: Connection, indices: Sequence[int], timeout: float) -> Dict[int, str]:
    """The string descriptors ``indices`` in the device's first language; those it refuses
    (a stall, a malformed answer) are left out."""
    strings: Dict[int, str] = {}
    wanted = sorted({i for i in indices if i})
    if not wanted:
        return strings
    try:
        raw = conn.control_transfer(0x80, GET_DESCRIPTOR, DT_STRING << 8, 0, 255, timeout=timeout)
        assert isinstance(raw, bytes)
        langid = raw[2] | (raw[3] << 8) if len(raw) >= 4 and raw[1] == DT_STRING else LANGID_EN_US
    except UsbipError:
        langid = LANGID_EN_US
    for index in wanted:
        try:
            raw = conn.control_transfer(0x80, GET_DESCRIPTOR, (DT_STRING << 8) | index, langid, 255, timeout=timeout)
            assert isinstance(raw, bytes)
            strings[index] = parse_string_descriptor(raw)
        except UsbipError:
            continue
    return strings


def string_indices(desc: DeviceDescriptor, configs: Sequence[ConfigurationDescriptor]) -> List[int]:
    found = [desc.iManufacturer, desc.iProduct, desc.iSerialNumber]
    for cfg in configs:
        found.append(cfg.iConfiguration)
        found.extend(intf.iInterface for group in cfg.interfaces for intf in group)
    return found


def read_details(host: str, port: int, busid: str, timeout: float) -> Details:
    dev = open_device(host, port, busid, timeout=timeout)
    try:
        strings = read_strings(dev.conn, string_indices(dev.descriptor, dev.configurations), timeout)
        return Details(dev.descriptor, dev.configurations, strings)
    finally:
        dev.close()


def query(target: Target, timeout: float, verbose: bool) -> Report:
    """List one server's devices (and with ``verbose`` read each one's descriptors)."""
    report = Report(target)
    try:
        devices = list_devices(target.host, target.port, timeout=timeout)
    except (UsbipError, OSError) as exc:
        report.error = str(exc) or exc.__class__.__name__
        return report
    report.devices = sorted(devices, key=lambda d: (d.busnum, d.devnum, natural_busid_key(d.busid)))
    if verbose:
        for dev in report.devices:
            try:
                report.details[dev.busid] = read_details(target.host, target.port, dev.busid, timeout)
            except (UsbipError, OSError) as exc:
                report.detail_errors[dev.busid] = str(exc) or exc.__class__.__name__
    return report


# --- output ------------------------------------------------------------------------------------
def device_names(dev: P.UsbDevice, details: Optional[Details]) -> str:
    """``Vendor Product`` as lsusb names them: the vendor from the table, else the device's
    manufacturer string; the product string when the descriptors were read."""
    vendor = vendor_name(dev.idVendor)
    product = None
    if details is not None:
        d = details.descriptor
        vendor = vendor or details.strings.get(d.iManufacturer)
        product = details.strings.get(d.iProduct)
    return " ".join(n for n in (vendor, product) if n)


def device_line(dev: P.UsbDevice, details: Optional[Details]) -> str:
    names = device_names(dev, details)
    return (f"Bus {dev.busnum:03d} Device {dev.devnum:03d}: ID {dev.idVendor:04x}:{dev.idProduct:04x}"
            f"{' ' + names if names else ''} (busid {dev.busid})")


def _speed(dev: P.UsbDevice) -> str:
    info = SPEEDS.get(dev.speed)
    return info.rate if info is not None and info.rate else speed_name(dev.speed)


def render_descriptors(emit: Emit, details: Details, dev: P.UsbDevice) -> None:
    """The descriptors laid out as ``lsusb -v`` shows them (names and values, notes after)."""
    lsusb_text.render(emit, details.descriptor, lsusb_text.layer_tree(details.configurations), details.strings,
                      super_speed=dev.speed >= P.Speed.SUPER)


def render_flat(emit: Emit, report: Report, verbose: bool) -> None:
    for dev in report.devices:
        details = report.details.get(dev.busid)
        if verbose:
            emit("")  # lsusb -v separates devices by an empty line
        emit(device_line(dev, details))
        if details is not None:
            render_descriptors(emit, details, dev)


def _active_config(dev: P.UsbDevice, details: Details) -> Optional[ConfigurationDescriptor]:
    for cfg in details.configurations:
        if cfg.bConfigurationValue == dev.bConfigurationValue:
            return cfg
    return details.configurations[0] if details.configurations else None


def render_tree(emit: Emit, report: Report) -> None:
    """lsusb -t's layout: a bus, the devices by port path, each device's interfaces."""
    if not report.devices:
        emit("    (no devices)")
        return
    buses: Dict[int, List[P.UsbDevice]] = {}
    for dev in report.devices:
        buses.setdefault(dev.busnum, []).append(dev)
    for busnum in sorted(buses):
        emit(f"/:  Bus {busnum:03d}")
        for dev in sorted(buses[busnum], key=lambda d: natural_busid_key(d.busid)):
            ports = port_numbers_from_busid(dev.busid)
            depth = len(ports) if ports else 1
            pad = "    " * depth
            where_ = f"Port {ports[-1]:03d}" if ports else f"busid {dev.busid}"
            details = report.details.get(dev.busid)
            names = device_names(dev, details)
            emit(f"{pad}|__ {where_}: Dev {dev.devnum:03d}, ID {dev.idVendor:04x}:{dev.idProduct:04x}"
                 f"{' ' + names if names else ''}, {_speed(dev)}, busid {dev.busid}")
            cfg = _active_config(dev, details) if details is not None else None
            if cfg is not None and details is not None:
                for group in cfg.interfaces:
                    for intf in group:
                        label = details.strings.get(intf.iInterface)
                        emit(f"{pad}    |__ If {intf.bInterfaceNumber} Alt {intf.bAlternateSetting}, "
                             f"Class={class_name(intf.bInterfaceClass)}"
                             f"{', ' + repr(label) if label else ''}")
                        for ep in intf.endpoints:
                            addr = ep.bEndpointAddress
                            emit(f"{pad}        |__ EP 0x{addr:02x} {'IN' if addr & 0x80 else 'OUT'}, "
                                 f"{transfer_type_name(ep.bmAttributes).capitalize()}, {lsusb_text.max_packet(ep.wMaxPacketSize)}")
            else:
                for n, i in enumerate(dev.interfaces):
                    emit(f"{pad}    |__ If {n}, Class={class_name(i.bInterfaceClass)}")


# --- the command -------------------------------------------------------------------------------
def _targets(parser: argparse.ArgumentParser, specs: Sequence[str]) -> List[Target]:
    targets: List[Target] = []
    seen = set()
    for spec in specs:
        try:
            host, port = host_port(spec)
        except ValueError as exc:
            parser.error(str(exc))  # exits 2
        if (host, port) not in seen:
            seen.add((host, port))
            targets.append(Target(host, port, where(host, port)))
    return targets


def run(argv: Optional[Sequence[str]], out: Emit, err: Emit) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    targets = _targets(parser, args.host)
    from_mdns = not targets
    if from_mdns:
        try:
            targets = discover_targets(args.mdns_timeout, args.mdns_interface, args.mdns_type)
        except DiscoveryError as exc:
            err(f"{PROG}: {exc}")
            return EXIT_FAILED
        if not targets:
            err(f"{PROG}: no USB/IP server ({args.mdns_type.rstrip('.')}) answered mDNS within "
                f"{args.mdns_timeout:g} s; name one: {PROG} HOST[:PORT]")
            return EXIT_FAILED
    with ThreadPoolExecutor(max_workers=min(len(targets), 16), thread_name_prefix=PROG) as pool:
        reports = list(pool.map(lambda t: query(t, args.timeout, args.verbose), targets))
    headings = args.tree or from_mdns or len(targets) > 1
    status = EXIT_OK
    shown = 0
    for report in reports:
        if report.error is not None:
            err(f"{PROG}: {report.error}")
            status = EXIT_FAILED
            continue
        for busid, why in report.detail_errors.items():
            err(f"{PROG}: cannot read the descriptors of {busid} on {report.target.label}, "
                f"some information will be missing: {why}")
        if headings:
            if shown:
                out("")
            out(report.target.label)
        shown += 1
        if args.tree:
            render_tree(out, report)
        else:
            if not report.devices:
                err(f"{PROG}: {report.target.label} exports no USB devices")
            render_flat(out, report, args.verbose)
    return status


def main(argv: Optional[Sequence[str]] = None) -> int:
    def out(line: str) -> None:
        sys.stdout.write(line + "\n")

    def err(line: str) -> None:
        sys.stdout.flush()  # keep stderr lines after the stdout lines printed before them
        sys.stderr.write(line + "\n")

    try:
        status = run(argv, out, err)
        sys.stdout.flush()
        return status
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # lsusbip | head: the reader has gone, nothing to report
        # Point stdout at /dev/null so the interpreter's final flush does not fail again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return EXIT_OK

if __name__ == "__main__":
    raise SystemExit(main())
