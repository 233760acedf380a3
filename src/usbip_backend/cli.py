"""``usbip-pyusb-test``: find USB/IP servers, list their devices and talk to one, from a shell.

Also runnable as ``python -m usbip_backend``. Exit codes: 0 ok, 1 the operation failed,
2 usage error. Ordinary failures print one line on stderr that says what to do; ``-v`` adds
debug logging and the traceback of unexpected errors. ``--json`` output is documented in the
README ("Command line", "JSON output") and carries ``"schema": 1``.
"""

from __future__ import annotations

import argparse
import errno
import json
import logging
import os
import socket
import sys
import traceback
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

from . import protocol as P
from .errors import (
    ConnectionLostError,
    ImportRefusedError,
    ProtocolError,
    UrbError,
    UsbipError,
    UsbipTimeoutError,
    describe_status,
)

log = logging.getLogger(__name__)

PROG = "usbip-pyusb-test"
JSON_SCHEMA = 1
DEFAULT_PORT = P.USBIP_PORT
DEFAULT_SYSLOG_PORT = 1514
#: Largest read/control length the CLI accepts (a typo should not allocate gigabytes).
MAX_LENGTH = 1 << 20

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


# --------------------------------------------------------------------------------------------
# Names (a few well-known vendors; device classes from usb.org "Defined Class Codes")
# --------------------------------------------------------------------------------------------
VENDOR_NAMES = {
    0x0403: "Future Technology Devices International (FTDI)",
    0x0483: "STMicroelectronics",
    0x04B4: "Cypress Semiconductor",
    0x0525: "Netchip Technology (Linux USB gadget)",
    0x067B: "Prolific Technology",
    0x0D28: "ARM (DAPLink)",
    0x10C4: "Silicon Labs",
    0x1209: "pid.codes",
    0x1366: "SEGGER",
    0x16C0: "Van Ooijen Technische Informatica (V-USB)",
    0x1915: "Nordic Semiconductor",
    0x1A86: "QinHeng Electronics (WCH)",
    0x1D50: "OpenMoko (open hardware)",
    0x1D6B: "Linux Foundation",
    0x1FC9: "NXP Semiconductors",
    0x2341: "Arduino",
    0x239A: "Adafruit",
    0x2E8A: "Raspberry Pi",
    0x303A: "Espressif Systems",
    0xCAFE: "TinyUSB example (unregistered)",
}

CLASS_NAMES = {
    0x00: "Defined at interface level",
    0x01: "Audio",
    0x02: "Communications",
    0x03: "Human Interface Device",
    0x05: "Physical",
    0x06: "Image",
    0x07: "Printer",
    0x08: "Mass Storage",
    0x09: "Hub",
    0x0A: "CDC Data",
    0x0B: "Smart Card",
    0x0D: "Content Security",
    0x0E: "Video",
    0x0F: "Personal Healthcare",
    0x10: "Audio/Video",
    0x11: "Billboard",
    0x12: "USB Type-C Bridge",
    0xDC: "Diagnostic",
    0xE0: "Wireless Controller",
    0xEF: "Miscellaneous",
    0xFE: "Application Specific",
    0xFF: "Vendor Specific",
}

SPEED_TEXT = {
    P.Speed.UNKNOWN: ("unknown", ""),
    P.Speed.LOW: ("low", "1.5 Mb/s"),
    P.Speed.FULL: ("full", "12 Mb/s"),
    P.Speed.HIGH: ("high", "480 Mb/s"),
    P.Speed.WIRELESS: ("wireless", "480 Mb/s"),
    P.Speed.SUPER: ("super", "5 Gb/s"),
    P.Speed.SUPER_PLUS: ("super-plus", "10 Gb/s"),
}

TRANSFER_NAMES = {0: "control", 1: "isochronous", 2: "bulk", 3: "interrupt"}  # bmAttributes & 3


def vendor_name(vid: int) -> Optional[str]:
    return VENDOR_NAMES.get(vid)


def class_name(code: int) -> str:
    return CLASS_NAMES.get(code, f"class 0x{code:02x}")


def speed_name(speed: int) -> str:
    try:
        return SPEED_TEXT[P.Speed(speed)][0]
    except ValueError:
        return f"speed {speed}"


def bcd(value: int) -> str:
    """0x0200 -> '2.00'."""
    return f"{(value >> 8) & 0xFF:x}.{value & 0xFF:02x}"


def hexdump(data: bytes, indent: str = "  ") -> str:
    """``0000  12 01 00 02 ...  |......|`` lines, 16 bytes each."""
    if not data:
        return f"{indent}(no data)"
    lines = []
    for off in range(0, len(data), 16):
        chunk = bytes(data[off:off + 16])
        hexpart = " ".join(f"{b:02x}" for b in chunk[:8])
        if len(chunk) > 8:
            hexpart += "  " + " ".join(f"{b:02x}" for b in chunk[8:])
        text = "".join(chr(b) if 32 <= b < 127 else "." for b in chunk)
        lines.append(f"{indent}{off:04x}  {hexpart:<48}  |{text}|")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Errors and argument types
# --------------------------------------------------------------------------------------------
class CliError(Exception):
    """A failure to report as one line; ``code`` is the exit code."""

    def __init__(self, message: str, code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.code = code


def number(text: str) -> int:
    """argparse type: ``0x1f``, ``0b101``, ``0o17`` or decimal (``010`` is ten)."""
    text = text.strip().replace("_", "")
    try:
        if text.lower().startswith(("0x", "0b", "0o", "-0x")):
            return int(text, 0)
        return int(text, 10)
    except ValueError:
        hint = f" (write hex as 0x{text})" if all(c in "0123456789abcdefABCDEF" for c in text) and text else ""
        raise argparse.ArgumentTypeError(f"invalid number {text!r}{hint}") from None


def _ranged(name: str, lo: int, hi: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        value = number(text)
        if not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"{name} {text} out of range {lo:#x}..{hi:#x}")
        return value
    parse.__name__ = name
    return parse


u8 = _ranged("8-bit value", 0, 0xFF)
u16 = _ranged("16-bit value", 0, 0xFFFF)
port_number = _ranged("port", 0, 0xFFFF)
length_arg = _ranged("length", 0, MAX_LENGTH)
_SIZE_UNITS = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}


def size_arg(text: str) -> int:
    """argparse type: a byte count, ``100M``, ``64K``, ``1G`` (1024-based, ``MiB`` also read)."""
    t = text.strip().lower().replace("_", "")
    for suffix in ("ib", "b"):
        if t.endswith(suffix) and len(t) > len(suffix) and t[-len(suffix) - 1] in _SIZE_UNITS:
            t = t[:-len(suffix)]
            break
    scale = _SIZE_UNITS.get(t[-1:], 1) if t else 1
    if scale > 1:
        t = t[:-1]
    try:
        value = int(float(t) * scale) if scale > 1 else number(t)
    except (ValueError, argparse.ArgumentTypeError):
        raise argparse.ArgumentTypeError(f"invalid size {text!r} (examples: 4096, 0x1000, 64K, 100M, 1G)") from None
    if value < 0:
        raise argparse.ArgumentTypeError("a size must be >= 0")
    return value


def endpoint_arg(text: str) -> int:
    value = number(text)
    if not 0 <= value <= 0xFF or (value & 0x0F) == 0 or (value & 0x70):
        raise argparse.ArgumentTypeError(
            f"invalid endpoint address {text!r}: use 0x01..0x0f for OUT, 0x81..0x8f for IN")
    return value


def hex_data(text: str) -> bytes:
    cleaned = text.replace(" ", "").replace(":", "").replace("-", "")
    if cleaned.lower().startswith("0x"):
        cleaned = cleaned[2:]
    try:
        data = bytes.fromhex(cleaned)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid hex data {text!r} (example: --data-hex 'de ad be ef')") from None
    if len(data) > MAX_LENGTH:
        raise argparse.ArgumentTypeError(f"hex data longer than {MAX_LENGTH} bytes")
    return data


def seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number of seconds {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError("a time must be >= 0")
    return value


def milliseconds(text: str) -> int:
    value = number(text)
    if value < 0:
        raise argparse.ArgumentTypeError("a timeout must be >= 0 ms (0 waits forever)")
    return value


# --------------------------------------------------------------------------------------------
# Run context: server address, capture, syslog, backend
# --------------------------------------------------------------------------------------------
class Context:
    """What one command run needs; ``close()`` releases everything it opened."""

    def __init__(self, args: argparse.Namespace, out, err) -> None:
        self.args = args
        self.out = out
        self.err = err
        self.json = bool(getattr(args, "json", False))
        self._server: Optional[Tuple[str, int]] = None
        self._pcap = None
        self._syslog = None
        self._backends: List[Any] = []

    # -- output --
    def print(self, text: str = "") -> None:
        print(text, file=self.out)

    def note(self, text: str) -> None:
        """A remark for the person (stderr), kept out of stdout so --json stays parseable."""
        print(text, file=self.err)

    def emit_json(self, obj: Dict[str, Any]) -> None:
        doc = {"schema": JSON_SCHEMA, "command": self.args.command}
        doc.update(obj)
        print(json.dumps(doc, indent=2), file=self.out)

    # -- server --
    def server(self) -> Tuple[str, int]:
        """``(host, port)`` from --host/--port, or the only server mDNS finds."""
        if self._server is None:
            host, port = self.args.host, self.args.port
            if host is None:
                from .discovery import resolve_single_server

                mdns_timeout = self.args.mdns_timeout
                self.note(f"no --host given: looking for USB/IP servers with mDNS for {mdns_timeout:g} s ...")
                info = resolve_single_server(timeout=mdns_timeout, interfaces=self.args.mdns_interface or None,
                                             service_type=self.args.mdns_type)
                host = info.address
                if port is None:
                    port = info.port
                self.note(f"using {info.name} ({info.host}) at {host}:{port}, the only server found")
            self._server = (host, DEFAULT_PORT if port is None else port)
        return self._server

    def where(self) -> str:
        if self._server is None:
            return f"{self.args.host or '(mDNS)'}:{self.args.port or DEFAULT_PORT}"
        host, port = self._server
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    # -- capture --
    def pcap(self):
        """The PcapWriter for --pcap (created on first use), or None."""
        if self._pcap is None and self.args.pcap:
            from .pcap import PcapWriter

            try:
                self._pcap = PcapWriter(self.args.pcap)
            except OSError as exc:
                raise CliError(f"cannot open capture file {self.args.pcap}: {exc.strerror or exc}") from exc
            self.note(f"capturing to {self.args.pcap} (open it in Wireshark)")
        return self._pcap

    def start_syslog(self) -> None:
        if not self.args.syslog or self._syslog is not None:
            return
        from .syslog import SyslogReceiver

        host, _ = self.server()
        port = self.args.syslog_port
        self._syslog = SyslogReceiver(host, port=port, pcap=self.pcap(), console=self.err)
        self._syslog.start()
        log.debug("syslog receiver started for %s:%d", host, port)

    def backend(self, busids: Optional[Sequence[str]] = None):
        from .backend import get_backend

        host, port = self.server()
        be = get_backend(host, port, timeout=self.args.timeout, busids=list(busids) if busids else None,
                         pcap=self.pcap())
        if be is None:
            raise CliError(f"could not create a USB/IP backend for {self.where()}")
        self._backends.append(be)
        return be

    def close(self) -> None:
        for be in reversed(self._backends):
            try:
                be.close()
            except Exception:  # noqa: BLE001 - closing must go on
                log.debug("closing backend failed", exc_info=True)
        self._backends.clear()
        if self._syslog is not None:
            try:
                self._syslog.stop()
            except Exception:  # noqa: BLE001
                log.debug("stopping syslog failed", exc_info=True)
            self._syslog = None
        if self._pcap is not None:
            try:
                self._pcap.close()
            except Exception:  # noqa: BLE001
                log.debug("closing capture failed", exc_info=True)
            self._pcap = None


# --------------------------------------------------------------------------------------------
# Device list helpers
# --------------------------------------------------------------------------------------------
def device_json(dev: P.UsbDevice) -> Dict[str, Any]:
    return {
        "busid": dev.busid,
        "path": dev.path,
        "busnum": dev.busnum,
        "devnum": dev.devnum,
        "speed": speed_name(dev.speed),
        "speed_code": int(dev.speed),
        "vid": dev.idVendor,
        "pid": dev.idProduct,
        "id": f"{dev.idVendor:04x}:{dev.idProduct:04x}",
        "vendor": vendor_name(dev.idVendor),
        "product": None,
        "bcdDevice": dev.bcdDevice,
        "class": dev.bDeviceClass,
        "subclass": dev.bDeviceSubClass,
        "protocol": dev.bDeviceProtocol,
        "class_name": class_name(dev.bDeviceClass),
        "configuration": dev.bConfigurationValue,
        "num_configurations": dev.bNumConfigurations,
        "num_interfaces": dev.bNumInterfaces,
        "interfaces": [
            {"number": n, "class": i.bInterfaceClass, "subclass": i.bInterfaceSubClass,
             "protocol": i.bInterfaceProtocol, "class_name": class_name(i.bInterfaceClass)}
            for n, i in enumerate(dev.interfaces)
        ],
    }


def short_device(dev: P.UsbDevice) -> str:
    vendor = vendor_name(dev.idVendor)
    text = f"{dev.busid} {dev.idVendor:04x}:{dev.idProduct:04x}"
    return f"{text} ({vendor})" if vendor else text


def _list(ctx: Context) -> List[P.UsbDevice]:
    from .client import list_devices

    host, port = ctx.server()
    return list_devices(host, port, timeout=ctx.args.timeout)


def _what_is_there(devices: Sequence[P.UsbDevice]) -> str:
    if not devices:
        return "the server exports no devices right now (an imported device is not listed until released)"
    return "exported there: " + ", ".join(short_device(d) for d in devices)


def select_busid(ctx: Context, vid: Optional[int], pid: Optional[int], busid: Optional[str]) -> str:
    """The busid of the one exported device matching the filters; a clear error otherwise.

    An explicit ``busid`` is returned as is: a device another client holds is missing from the
    device list, and the import itself says whether it is busy or absent.
    """
    if busid is not None:
        return busid
    devices = _list(ctx)
    matches = [d for d in devices
               if (vid is None or d.idVendor == vid) and (pid is None or d.idProduct == pid)]
    if not matches:
        if vid is not None and pid is not None:
            what = f"{vid:04x}:{pid:04x}"
        elif vid is not None:
            what = f"with vendor {vid:04x}"
        elif pid is not None:
            what = f"with product {pid:04x}"
        else:
            what = "at all"
        raise CliError(f"no device {what} on {ctx.where()}; {_what_is_there(devices)}"
                       + (" (a device imported by another client is not listed)" if devices else ""))
    if len(matches) > 1:
        raise CliError(f"{len(matches)} devices match on {ctx.where()}; choose one with --busid (or --vid/--pid): "
                       + ", ".join(short_device(d) for d in matches), EXIT_USAGE)
    return matches[0].busid


def open_device(ctx: Context, args: argparse.Namespace):
    """Import the selected device through the PyUSB backend; returns a ``usb.core.Device``."""
    import usb.core

    busid = select_busid(ctx, args.vid, args.pid, args.busid)
    be = ctx.backend(busids=[busid])
    dev = usb.core.find(backend=be, custom_match=lambda d: (args.vid is None or d.idVendor == args.vid)
                        and (args.pid is None or d.idProduct == args.pid))
    if dev is None:
        reason = getattr(be, "skipped", {}).get(busid)
        if reason and "ST_DEV_BUSY" in reason:
            raise CliError(f"device {busid} on {ctx.where()} is busy: another client has imported it (USB/IP "
                           "does not say which); release it there (usbip detach, or close that program) and retry")
        if reason and "ST_NODEV" in reason:
            raise CliError(f"no device with busid {busid} on {ctx.where()}; {_what_is_there(_list(ctx))}")
        if reason:
            raise CliError(f"cannot use device {busid} on {ctx.where()}: {reason}")
        if args.busid is not None:
            raise CliError(f"the device at busid {busid} on {ctx.where()} is not "
                           f"{args.vid or 0:04x}:{args.pid or 0:04x}; run '{PROG} list'")
        raise CliError(f"device at busid {busid} on {ctx.where()} is gone (it was listed a moment ago); "
                       "list again and retry")
    log.debug("opened %04x:%04x at busid %s", dev.idVendor, dev.idProduct, busid)
    return dev, busid


def active_configuration(dev):
    import usb.core

    try:
        return dev.get_active_configuration()
    except usb.core.USBError:
        dev.set_configuration()
        return dev.get_active_configuration()


def find_endpoint(dev, address: int):
    """``(interface, endpoint)`` descriptors of ``address`` in the active configuration."""
    cfg = active_configuration(dev)
    available = []
    for intf in cfg:
        for ep in intf:
            available.append(f"0x{ep.bEndpointAddress:02x} ({TRANSFER_NAMES[ep.bmAttributes & 3]})")
            if ep.bEndpointAddress == address:
                return intf, ep
    raise CliError(f"no endpoint 0x{address:02x} in configuration {cfg.bConfigurationValue}; "
                   f"endpoints: {', '.join(dict.fromkeys(available)) or 'none'}")


def transfer(what: str, timeout_ms: int, option: str, fn: Callable[[], Any]) -> Any:
    """Run one PyUSB transfer; a timeout or a stall becomes a one-line :class:`CliError`."""
    import usb.core

    try:
        return fn()
    except usb.core.USBTimeoutError as exc:
        raise CliError(f"{what} timed out after {timeout_ms} ms (no answer from the device; "
                       f"raise {option} if it is slow)") from exc
    except usb.core.USBError as exc:
        if getattr(exc, "errno", None) == errno.EPIPE:
            raise CliError(f"{what}: the device stalled it (EPIPE): the request or endpoint is not "
                           "supported, or the endpoint is halted") from exc
        if getattr(exc, "errno", None) == errno.EOVERFLOW:
            raise CliError(f"{what}: the device sent more than asked for (babble, EOVERFLOW): "
                           "ask for a multiple of the endpoint's max packet size") from exc
        raise


def get_string(dev, index: int) -> Optional[str]:
    """String descriptor ``index`` (None for 0); an error becomes a bracketed note."""
    import usb.util

    if not index:
        return None
    try:
        return usb.util.get_string(dev, index)
    except Exception as exc:  # noqa: BLE001 - a bad string must not end the probe
        return f"[error reading string {index}: {exc}]"


# --------------------------------------------------------------------------------------------
# Commands
# --------------------------------------------------------------------------------------------
def cmd_discover(ctx: Context) -> int:
    from .discovery import discover

    args = ctx.args
    interfaces = args.interface or args.mdns_interface or None
    servers = discover(timeout=args.mdns_timeout, interfaces=interfaces, service_type=args.mdns_type)
    if ctx.json:
        ctx.emit_json({"servers": [s.to_json() for s in servers]})
        return EXIT_OK
    if not servers:
        where = ", ".join(interfaces) if interfaces else "all interfaces"
        ctx.print(f"no USB/IP servers ({args.mdns_type.rstrip('.')}) answered within {args.mdns_timeout:g} s on {where}")
        return EXIT_OK
    ctx.print(f"{len(servers)} USB/IP server{'s' if len(servers) != 1 else ''} found:")
    for s in servers:
        ctx.print(f"  {s.describe()}")
    return EXIT_OK


def cmd_list(ctx: Context) -> int:
    devices = _list(ctx)
    host, port = ctx.server()
    if ctx.json:
        ctx.emit_json({"host": host, "port": port, "devices": [device_json(d) for d in devices]})
        return EXIT_OK
    ctx.print(f"Exportable USB devices on {ctx.where()}: {len(devices)}")
    for d in devices:
        vendor = vendor_name(d.idVendor) or "unknown vendor"
        ctx.print(f"  {d.busid}: {vendor} ({d.idVendor:04x}:{d.idProduct:04x})")
        ctx.print(f"      path      {d.path}")
        sp = SPEED_TEXT.get(d.speed, (speed_name(d.speed), ""))
        ctx.print(f"      speed     {sp[0]}{' (' + sp[1] + ')' if sp[1] else ''}, bus {d.busnum} device {d.devnum}, "
                  f"bcdDevice {bcd(d.bcdDevice)}")
        ctx.print(f"      class     {class_name(d.bDeviceClass)} "
                  f"({d.bDeviceClass:02x}/{d.bDeviceSubClass:02x}/{d.bDeviceProtocol:02x}), "
                  f"configuration {d.bConfigurationValue} of {d.bNumConfigurations}")
        for n, i in enumerate(d.interfaces):
            ctx.print(f"      interface {n}: {class_name(i.bInterfaceClass)} "
                      f"({i.bInterfaceClass:02x}/{i.bInterfaceSubClass:02x}/{i.bInterfaceProtocol:02x})")
        if not d.interfaces:
            ctx.print(f"      interfaces {d.bNumInterfaces} (not listed by the server)")
    return EXIT_OK


_DEVICE_FIELDS = ("bLength", "bDescriptorType", "bcdUSB", "bDeviceClass", "bDeviceSubClass",
                  "bDeviceProtocol", "bMaxPacketSize0", "idVendor", "idProduct", "bcdDevice",
                  "iManufacturer", "iProduct", "iSerialNumber", "bNumConfigurations")
_CONFIG_FIELDS = ("bLength", "bDescriptorType", "wTotalLength", "bNumInterfaces", "bConfigurationValue",
                  "iConfiguration", "bmAttributes", "bMaxPower")
_INTF_FIELDS = ("bLength", "bDescriptorType", "bInterfaceNumber", "bAlternateSetting", "bNumEndpoints",
                "bInterfaceClass", "bInterfaceSubClass", "bInterfaceProtocol", "iInterface")
_EP_FIELDS = ("bLength", "bDescriptorType", "bEndpointAddress", "bmAttributes", "wMaxPacketSize", "bInterval")


def _fields(obj, names: Iterable[str]) -> Dict[str, int]:
    return {n: int(getattr(obj, n)) for n in names}


def _extra(obj) -> List[int]:
    return list(getattr(obj, "extra_descriptors", None) or [])


def probe_json(dev, busid: str, strings: Dict[int, Optional[str]], raw_desc: Optional[bytes]) -> Dict[str, Any]:
    configs = []
    for cfg in dev:
        intfs = []
        for intf in cfg:
            eps = []
            for ep in intf:
                e = _fields(ep, _EP_FIELDS)
                e["transfer_type"] = TRANSFER_NAMES[ep.bmAttributes & 3]
                e["direction"] = "in" if ep.bEndpointAddress & 0x80 else "out"
                e["extra_hex"] = bytes(_extra(ep)).hex()
                eps.append(e)
            i = _fields(intf, _INTF_FIELDS)
            i["class_name"] = class_name(intf.bInterfaceClass)
            i["interface_string"] = strings.get(intf.iInterface)
            i["extra_hex"] = bytes(_extra(intf)).hex()
            i["endpoints"] = eps
            intfs.append(i)
        c = _fields(cfg, _CONFIG_FIELDS)
        c["configuration_string"] = strings.get(cfg.iConfiguration)
        c["extra_hex"] = bytes(_extra(cfg)).hex()
        c["interfaces"] = intfs
        configs.append(c)
    d = _fields(dev, _DEVICE_FIELDS)
    return {
        "busid": busid,
        "id": f"{dev.idVendor:04x}:{dev.idProduct:04x}",
        "speed": _pyusb_speed(dev),
        "device": d,
        "strings": {
            "manufacturer": strings.get(dev.iManufacturer),
            "product": strings.get(dev.iProduct),
            "serial": strings.get(dev.iSerialNumber),
        },
        "device_descriptor_hex": raw_desc.hex() if raw_desc is not None else None,
        "configurations": configs,
    }


def _pyusb_speed(dev) -> Optional[str]:
    import usb.util

    names = {usb.util.SPEED_LOW: "low", usb.util.SPEED_FULL: "full", usb.util.SPEED_HIGH: "high",
             usb.util.SPEED_SUPER: "super", getattr(usb.util, "SPEED_UNKNOWN", 0): "unknown"}
    speed = getattr(dev, "speed", None)
    return names.get(speed, None if speed is None else f"speed {speed}")


def _line(ctx: Context, indent: int, name: str, value: Any, note: Optional[str] = None) -> None:
    text = f"{' ' * indent}{name:<20} {value:>6}"
    ctx.print(f"{text}  {note}" if note else text)


def _print_extra(ctx: Context, indent: int, obj) -> None:
    extra = bytes(_extra(obj))
    off = 0
    while off + 2 <= len(extra):
        n = extra[off]
        if n < 2:
            break
        chunk = extra[off:off + n]
        ctx.print(f"{' ' * indent}** extra descriptor type 0x{chunk[1]:02x}: {chunk.hex(' ')}")
        off += n
    if off < len(extra):
        ctx.print(f"{' ' * indent}** trailing bytes: {extra[off:].hex(' ')}")


def print_probe(ctx: Context, dev, busid: str, strings: Dict[int, Optional[str]], raw_desc: Optional[bytes]) -> None:
    vendor = vendor_name(dev.idVendor)
    ctx.print(f"Device {dev.idVendor:04x}:{dev.idProduct:04x} at busid {busid} on {ctx.where()}, "
              f"speed {_pyusb_speed(dev) or 'unknown'}")
    ctx.print("Device Descriptor:")
    i = 2
    _line(ctx, i, "bLength", dev.bLength)
    _line(ctx, i, "bDescriptorType", dev.bDescriptorType)
    _line(ctx, i, "bcdUSB", bcd(dev.bcdUSB))
    _line(ctx, i, "bDeviceClass", dev.bDeviceClass, class_name(dev.bDeviceClass))
    _line(ctx, i, "bDeviceSubClass", dev.bDeviceSubClass)
    _line(ctx, i, "bDeviceProtocol", dev.bDeviceProtocol)
    _line(ctx, i, "bMaxPacketSize0", dev.bMaxPacketSize0)
    _line(ctx, i, "idVendor", f"0x{dev.idVendor:04x}", vendor)
    _line(ctx, i, "idProduct", f"0x{dev.idProduct:04x}", strings.get(dev.iProduct))
    _line(ctx, i, "bcdDevice", bcd(dev.bcdDevice))
    _line(ctx, i, "iManufacturer", dev.iManufacturer, strings.get(dev.iManufacturer))
    _line(ctx, i, "iProduct", dev.iProduct, strings.get(dev.iProduct))
    _line(ctx, i, "iSerialNumber", dev.iSerialNumber, strings.get(dev.iSerialNumber))
    _line(ctx, i, "bNumConfigurations", dev.bNumConfigurations)
    for cfg in dev:
        i = 2
        ctx.print(f"{' ' * i}Configuration Descriptor:")
        i = 4
        for name in _CONFIG_FIELDS:
            value = getattr(cfg, name)
            note = None
            if name == "iConfiguration":
                note = strings.get(value)
            elif name == "bmAttributes":
                value = f"0x{value:02x}"
                bits = ["Self Powered" if cfg.bmAttributes & 0x40 else "Bus Powered"]
                if cfg.bmAttributes & 0x20:
                    bits.append("Remote Wakeup")
                note = ", ".join(bits)
            elif name == "bMaxPower":
                note = f"{cfg.bMaxPower * 2} mA"
            elif name == "wTotalLength":
                value = f"0x{value:04x}"
            _line(ctx, i, name, value, note)
        _print_extra(ctx, i, cfg)
        for intf in cfg:
            ctx.print(f"{' ' * 4}Interface Descriptor:")
            for name in _INTF_FIELDS:
                value = getattr(intf, name)
                note = None
                if name == "bInterfaceClass":
                    note = class_name(value)
                elif name == "iInterface":
                    note = strings.get(value)
                _line(ctx, 6, name, value, note)
            _print_extra(ctx, 6, intf)
            for ep in intf:
                ctx.print(f"{' ' * 6}Endpoint Descriptor:")
                addr = ep.bEndpointAddress
                _line(ctx, 8, "bLength", ep.bLength)
                _line(ctx, 8, "bDescriptorType", ep.bDescriptorType)
                _line(ctx, 8, "bEndpointAddress", f"0x{addr:02x}",
                      f"EP {addr & 0x0F} {'IN' if addr & 0x80 else 'OUT'}")
                _line(ctx, 8, "bmAttributes", ep.bmAttributes, TRANSFER_NAMES[ep.bmAttributes & 3].capitalize())
                mps = ep.wMaxPacketSize
                extra = (mps >> 11) & 3
                _line(ctx, 8, "wMaxPacketSize", f"0x{mps:04x}",
                      f"{1 + extra}x {mps & 0x7FF} bytes" if extra else f"{mps & 0x7FF} bytes")
                _line(ctx, 8, "bInterval", ep.bInterval)
                _print_extra(ctx, 8, ep)
    if raw_desc is not None:
        ctx.print("GET_DESCRIPTOR(DEVICE) raw bytes:")
        ctx.print(hexdump(raw_desc))


def cmd_probe(ctx: Context) -> int:
    dev, busid = open_device(ctx, ctx.args)
    indices = {dev.iManufacturer, dev.iProduct, dev.iSerialNumber}
    for cfg in dev:
        indices.add(cfg.iConfiguration)
        for intf in cfg:
            indices.add(intf.iInterface)
    strings = {idx: get_string(dev, idx) for idx in sorted(indices) if idx}
    raw = None
    if ctx.args.get_device_desc:
        ms = ctx.args.ctrl_timeout_ms
        raw = bytes(transfer("GET_DESCRIPTOR(DEVICE)", ms, "--ctrl-timeout-ms",
                             lambda: dev.ctrl_transfer(0x80, 6, 0x0100, 0, 18, timeout=ms)))
    if ctx.json:
        ctx.emit_json(probe_json(dev, busid, strings, raw))
    else:
        print_probe(ctx, dev, busid, strings, raw)
    return EXIT_OK


def cmd_control(ctx: Context) -> int:
    args = ctx.args
    is_in = args.direction == "in"
    if bool(args.bm_request_type & 0x80) != is_in:
        raise CliError(f"--bm-request-type 0x{args.bm_request_type:02x} says "
                       f"{'IN' if args.bm_request_type & 0x80 else 'OUT'} but --direction is {args.direction}: "
                       "bit 7 of bmRequestType is the direction (0x80 = IN)", EXIT_USAGE)
    if is_in and args.data_hex is not None:
        raise CliError("--data-hex is for --direction out; use --length N for IN", EXIT_USAGE)
    if not is_in and args.length is not None:
        raise CliError("--length is for --direction in; give the OUT payload with --data-hex", EXIT_USAGE)
    if args.length is not None and args.length > 0xFFFF:
        raise CliError("a control transfer carries at most 65535 bytes (wLength is 16 bits)", EXIT_USAGE)
    dev, busid = open_device(ctx, args)
    setup = (f"bmRequestType=0x{args.bm_request_type:02x} bRequest=0x{args.b_request:02x} "
             f"wValue=0x{args.w_value:04x} wIndex=0x{args.w_index:04x}")
    if is_in:
        length = 64 if args.length is None else args.length
        data = bytes(transfer(f"control IN {setup}", args.ctrl_timeout_ms, "--ctrl-timeout-ms",
                              lambda: dev.ctrl_transfer(args.bm_request_type, args.b_request, args.w_value,
                                                        args.w_index, length, timeout=args.ctrl_timeout_ms)))
        if ctx.json:
            ctx.emit_json({"busid": busid, "request": _request_json(args, length), "direction": "in",
                           "length": len(data), "data_hex": data.hex()})
        else:
            ctx.print(f"control IN {setup} wLength={length}: {len(data)} byte{'s' if len(data) != 1 else ''}")
            ctx.print(hexdump(data))
    else:
        payload = args.data_hex or b""
        written = transfer(f"control OUT {setup}", args.ctrl_timeout_ms, "--ctrl-timeout-ms",
                           lambda: dev.ctrl_transfer(args.bm_request_type, args.b_request, args.w_value,
                                                     args.w_index, payload, timeout=args.ctrl_timeout_ms))
        if ctx.json:
            ctx.emit_json({"busid": busid, "request": _request_json(args, len(payload)), "direction": "out",
                           "length": int(written), "data_hex": payload.hex()})
        else:
            ctx.print(f"control OUT {setup} wLength={len(payload)}: {int(written)} byte"
                      f"{'s' if int(written) != 1 else ''} written")
            if payload:
                ctx.print(hexdump(payload))
    return EXIT_OK


def _request_json(args, length: int) -> Dict[str, int]:
    return {"bmRequestType": args.bm_request_type, "bRequest": args.b_request,
            "wValue": args.w_value, "wIndex": args.w_index, "wLength": length}


def _open_data_endpoint(ctx: Context, want_in: bool):
    """For read/write: check --ep's direction, import the device, return (dev, busid, kind)."""
    args = ctx.args
    if bool(args.ep & 0x80) != want_in:
        if want_in:
            raise CliError(f"--ep 0x{args.ep:02x} is an OUT endpoint; IN endpoints have bit 7 set "
                           f"(0x{args.ep | 0x80:02x}), or use 'write'", EXIT_USAGE)
        raise CliError(f"--ep 0x{args.ep:02x} is an IN endpoint; OUT endpoints have bit 7 clear "
                       f"(0x{args.ep & 0x0F:02x}), or use 'read'", EXIT_USAGE)
    dev, busid = open_device(ctx, args)
    _, ep = find_endpoint(dev, args.ep)
    kind = TRANSFER_NAMES[ep.bmAttributes & 3]
    if kind == "isochronous":
        raise CliError(f"endpoint 0x{args.ep:02x} is isochronous; read/write handle bulk and interrupt endpoints",
                       EXIT_USAGE)
    return dev, busid, kind


def _stream_options(args) -> Dict[str, Any]:
    return {"chunk": args.chunk, "window": args.window, "offset": args.offset,
            "timeout": args.timeout_ms / 1000.0 if args.timeout_ms else None}


def _streamed(ctx: Context, what: str, fn: Callable[..., Any], label: str) -> Any:
    """Run a stream with a progress display on stderr; a StreamError says where to resume."""
    from .progressbar import ProgressBar
    from .stream import StreamError

    bar = ProgressBar(ctx.err, label)
    try:
        return fn(progress=None if ctx.json else bar, progress_every=bar.interval)
    except StreamError as exc:
        bar.finish()
        cause = exc.cause if exc.cause is not None else exc
        raise CliError(f"{what} stopped at byte {exc.offset}: {cause}; run the same command with "
                       f"--offset {exc.offset} to resume") from exc
    finally:
        bar.finish()


def cmd_read(ctx: Context) -> int:
    args = ctx.args
    if args.out is not None:
        return _read_to_file(ctx)
    if args.length > MAX_LENGTH:
        raise CliError(f"--length {args.length} is more than one read takes ({MAX_LENGTH}); "
                       "give --out FILE to stream it into a file", EXIT_USAGE)
    dev, busid, kind = _open_data_endpoint(ctx, want_in=True)
    data = bytes(transfer(f"{kind} read from endpoint 0x{args.ep:02x} of {busid}", args.timeout_ms, "--timeout-ms",
                          lambda: dev.read(args.ep, args.length, timeout=args.timeout_ms)))
    if ctx.json:
        ctx.emit_json({"busid": busid, "endpoint": args.ep, "transfer_type": kind, "requested": args.length,
                       "length": len(data), "data_hex": data.hex()})
    else:
        ctx.print(f"{kind} IN 0x{args.ep:02x}: {len(data)} of {args.length} bytes")
        ctx.print(hexdump(data))
    return EXIT_OK


def _read_to_file(ctx: Context) -> int:
    from .progressbar import describe
    from .stream import read_into_file

    args = ctx.args
    if args.offset > args.length:
        raise CliError(f"--offset {args.offset} is beyond --length {args.length}", EXIT_USAGE)
    dev, busid, kind = _open_data_endpoint(ctx, want_in=True)
    what = f"{kind} IN stream from endpoint 0x{args.ep:02x} of {busid}"
    done = _streamed(ctx, what, lambda **kw: read_into_file(dev, args.ep, args.out, args.length,
                                                            **_stream_options(args), **kw), "read ")
    if ctx.json:
        ctx.emit_json({"busid": busid, "endpoint": args.ep, "transfer_type": kind, "file": args.out,
                       "offset": done.offset, "bytes": done.confirmed, "seconds": round(done.elapsed, 6),
                       "rate": round(done.rate)})
    else:
        ctx.print(f"read {done.confirmed} bytes from {kind} IN 0x{args.ep:02x} into {args.out} in "
                  f"{done.elapsed:.2f} s: {describe(done)}")
    return EXIT_OK


def cmd_write(ctx: Context) -> int:
    args = ctx.args
    if args.file is not None:
        return _write_from_file(ctx)
    dev, busid, kind = _open_data_endpoint(ctx, want_in=False)
    written = int(transfer(f"{kind} write to endpoint 0x{args.ep:02x} of {busid}", args.timeout_ms, "--timeout-ms",
                           lambda: dev.write(args.ep, args.data_hex, timeout=args.timeout_ms)))
    if ctx.json:
        ctx.emit_json({"busid": busid, "endpoint": args.ep, "transfer_type": kind, "requested": len(args.data_hex),
                       "length": written, "data_hex": args.data_hex.hex()})
    else:
        ctx.print(f"{kind} OUT 0x{args.ep:02x}: {written} of {len(args.data_hex)} bytes written")
    return EXIT_OK


def _write_from_file(ctx: Context) -> int:
    from .progressbar import describe
    from .stream import write_from_file

    args = ctx.args
    try:
        size = os.path.getsize(args.file)
    except OSError as exc:
        raise CliError(f"cannot read --file {args.file}: {exc.strerror or exc}", EXIT_USAGE) from exc
    if args.offset > size:
        raise CliError(f"--offset {args.offset} is beyond the end of {args.file} ({size} bytes)", EXIT_USAGE)
    dev, busid, kind = _open_data_endpoint(ctx, want_in=False)
    what = f"{kind} OUT stream to endpoint 0x{args.ep:02x} of {busid}"
    done = _streamed(ctx, what, lambda **kw: write_from_file(dev, args.ep, args.file,
                                                             **_stream_options(args), **kw), "write ")
    if ctx.json:
        ctx.emit_json({"busid": busid, "endpoint": args.ep, "transfer_type": kind, "file": args.file,
                       "offset": done.offset, "bytes": done.confirmed, "seconds": round(done.elapsed, 6),
                       "rate": round(done.rate)})
    else:
        ctx.print(f"wrote {done.confirmed} bytes of {args.file} to {kind} OUT 0x{args.ep:02x} in "
                  f"{done.elapsed:.2f} s: {describe(done)}")
    return EXIT_OK


def cmd_loopback(ctx: Context) -> int:
    args = ctx.args
    if args.out_ep & 0x80 or not args.in_ep & 0x80:
        raise CliError("--out-ep needs an OUT address (0x01..0x0f) and --in-ep an IN address (0x81..0x8f)",
                       EXIT_USAGE)
    payload = args.data_hex if args.data_hex is not None else bytes(i & 0xFF for i in range(args.size))
    dev, busid = open_device(ctx, args)
    _, out_ep = find_endpoint(dev, args.out_ep)
    find_endpoint(dev, args.in_ep)
    written = int(transfer(f"write to endpoint 0x{args.out_ep:02x}", args.timeout_ms, "--timeout-ms",
                           lambda: dev.write(args.out_ep, payload, timeout=args.timeout_ms)))
    back = bytearray()
    while len(back) < written:
        chunk = bytes(transfer(f"read back from endpoint 0x{args.in_ep:02x}", args.timeout_ms, "--timeout-ms",
                               lambda: dev.read(args.in_ep, written - len(back), timeout=args.timeout_ms)))
        if not chunk:
            break
        back += chunk
    same = bytes(back) == payload
    if ctx.json:
        ctx.emit_json({"busid": busid, "out_endpoint": args.out_ep, "in_endpoint": args.in_ep,
                       "written": written, "read": len(back), "match": same,
                       "sent_hex": payload.hex(), "received_hex": bytes(back).hex()})
    else:
        ctx.print(f"loopback 0x{args.out_ep:02x} -> 0x{args.in_ep:02x}: wrote {written}, read {len(back)}, "
                  f"{'data matches' if same else 'DATA DIFFERS'}")
        if not same:
            ctx.print("sent:")
            ctx.print(hexdump(payload))
            ctx.print("received:")
            ctx.print(hexdump(bytes(back)))
    return EXIT_OK if same else EXIT_FAILED


def cmd_sim(ctx: Context) -> int:
    from . import sim

    args = ctx.args
    argv = ["--host", args.host or "127.0.0.1", "--port", str(DEFAULT_PORT if args.port is None else args.port)]
    if args.devices:
        argv += ["--devices", ",".join(n for item in args.devices for n in item.split(",") if n)]
    if args.count is not None:
        argv += ["--count", str(args.count)]
    if args.unlink:
        argv += ["--unlink", args.unlink]
    argv += args.sim_args
    rc = sim.main(argv)
    return int(rc or 0)


# --------------------------------------------------------------------------------------------
# Check sequence (the 'check' and 'demo' commands, tools/integration.py)
# --------------------------------------------------------------------------------------------
class SkipCheck(Exception):
    """A check that does not apply to this device (counted as skipped, not failed)."""


#: The source/sink pattern of Linux's gadget zero (pattern=1): byte i is i % 63. A sink accepts
#: it, an echo endpoint returns it, so it is the safe payload for endpoints of unknown purpose.
def gadget_pattern(length: int) -> bytes:
    return bytes(i % 63 for i in range(length))


class CheckRun:
    """Counts and prints PASS / FAIL / SKIP lines."""

    def __init__(self, out, verbose: bool = False) -> None:
        self.out = out
        self.verbose = verbose
        self.passed = self.failed = self.skipped = 0
        self.failures: List[str] = []

    def _line(self, status: str, where: str, name: str, detail: str) -> None:
        text = f"{status:<4}  {where:<8}  {name}"
        print(f"{text}: {detail}" if detail else text, file=self.out, flush=True)

    def check(self, where: str, name: str, fn: Callable[[], Any]) -> Any:
        """Run ``fn``; its return value (str or None) is the detail of a PASS. Returns it, or None."""
        try:
            detail = fn()
        except SkipCheck as exc:
            self.skipped += 1
            self._line("SKIP", where, name, str(exc))
            return None
        except Exception as exc:  # noqa: BLE001 - every failure is a result line
            self.failed += 1
            self.failures.append(f"{where} {name}")
            self._line("FAIL", where, name, f"{type(exc).__name__}: {exc}")
            if self.verbose:
                traceback.print_exception(type(exc), exc, exc.__traceback__, file=self.out)
            return None
        self.passed += 1
        self._line("PASS", where, name, detail if isinstance(detail, str) else "")
        return detail if detail is not None else True

    def summary(self) -> str:
        text = f"{self.passed} passed, {self.failed} failed"
        return f"{text}, {self.skipped} skipped" if self.skipped else text


def _round_up(n: int, mps: int) -> int:
    return max(mps, -(-n // mps) * mps) if mps else n


def _read_all(dev, ep: int, want: int, mps: int, timeout_ms: int) -> bytes:
    """Read until ``want`` bytes arrived (IN lengths rounded up to whole packets: no babble)."""
    got = bytearray()
    while len(got) < want:
        chunk = bytes(dev.read(ep, _round_up(want - len(got), mps), timeout=timeout_ms))
        if not chunk:
            break
        got += chunk
    return bytes(got)


def _check_device(run: CheckRun, host: str, port: int, listed: P.UsbDevice, *, timeout: float, hook,
                  transfer_ms: int) -> None:
    import usb.core
    import usb.util

    from .backend import get_backend
    from .client import import_device, list_devices

    where = listed.busid
    be = get_backend(host, port, timeout=timeout, busids=[listed.busid], pcap=hook)
    try:
        def do_import():
            dev = usb.core.find(backend=be)
            if dev is None:
                raise RuntimeError(be.skipped.get(listed.busid) or "the backend found no device")
            if (dev.idVendor, dev.idProduct) != (listed.idVendor, listed.idProduct):
                raise RuntimeError(f"imported {dev.idVendor:04x}:{dev.idProduct:04x}, listed as "
                                   f"{listed.idVendor:04x}:{listed.idProduct:04x}")
            return dev
        dev = run.check(where, "import", do_import)
        if not dev:
            return

        def busy():
            try:
                conn = import_device(host, port, listed.busid, timeout=timeout)
            except ImportRefusedError as exc:
                if exc.status != P.Status.ST_DEV_BUSY:
                    raise RuntimeError(f"second import refused with {P.status_text(exc.status)}, "
                                       "expected ST_DEV_BUSY") from exc
            else:
                conn.close()
                raise RuntimeError("a second import succeeded while we hold the device")
            hidden = all(d.busid != listed.busid for d in list_devices(host, port, timeout=timeout))
            return "second import refused (ST_DEV_BUSY)" + ("; hidden from the device list" if hidden else "")
        run.check(where, "exclusive import", busy)

        def descriptors():
            raw = bytes(dev.ctrl_transfer(0x80, 6, 0x0100, 0, 18, timeout=transfer_ms))
            if len(raw) != 18 or raw[0] != 18 or raw[1] != 1:
                raise RuntimeError(f"bad device descriptor {raw.hex()}")
            vid, pid = int.from_bytes(raw[8:10], "little"), int.from_bytes(raw[10:12], "little")
            if (vid, pid) != (dev.idVendor, dev.idProduct):
                raise RuntimeError("GET_DESCRIPTOR(DEVICE) disagrees with PyUSB's device")
            parts = []
            for index, cfg in enumerate(dev):
                head = bytes(dev.ctrl_transfer(0x80, 6, 0x0200 | index, 0, 9, timeout=transfer_ms))
                total = int.from_bytes(head[2:4], "little")
                full = bytes(dev.ctrl_transfer(0x80, 6, 0x0200 | index, 0, total, timeout=transfer_ms))
                if len(full) != total or total != cfg.wTotalLength:
                    raise RuntimeError(f"configuration {index}: wTotalLength {total}, got {len(full)} bytes")
                n_eps = sum(intf.bNumEndpoints for intf in cfg)
                parts.append(f"configuration {cfg.bConfigurationValue}: {cfg.bNumInterfaces} interface(s), "
                             f"{n_eps} endpoint(s), {total} bytes")
            return f"{dev.idVendor:04x}:{dev.idProduct:04x} bcdUSB {bcd(dev.bcdUSB)}; " + "; ".join(parts)
        run.check(where, "descriptors", descriptors)

        def strings():
            indices = [("manufacturer", dev.iManufacturer), ("product", dev.iProduct),
                       ("serial", dev.iSerialNumber)]
            for cfg in dev:
                indices += [(f"interface {i.bInterfaceNumber}.{i.bAlternateSetting}", i.iInterface) for i in cfg]
            indices = [(n, i) for n, i in indices if i]
            if not indices:
                raise SkipCheck("the device has no string descriptors")
            langids = usb.util.get_langids(dev)
            texts = [f"{name}={usb.util.get_string(dev, idx)!r}" for name, idx in indices]
            return f"langids {','.join(f'0x{x:04x}' for x in langids)}; " + ", ".join(texts)
        run.check(where, "strings", strings)

        cfg = run.check(where, "set configuration",
                        lambda: f"configuration {active_configuration(dev).bConfigurationValue} active")
        if not cfg:
            return
        cfg = active_configuration(dev)
        timeout_candidates: List[Tuple[int, int, int]] = []  # (ep, mps, intf) IN endpoints, alt 0
        used = {ep.bEndpointAddress for intf in cfg for ep in intf}

        for intf in cfg:
            eps = list(intf)
            if not eps:
                continue
            alt = intf.bAlternateSetting
            label = f"interface {intf.bInterfaceNumber}.{alt}"
            if alt:
                ok = run.check(where, f"select {label}", lambda: dev.set_interface_altsetting(
                    interface=intf.bInterfaceNumber, alternate_setting=alt) or "SET_INTERFACE accepted")
                if not ok:
                    continue
            by_addr = {ep.bEndpointAddress: ep for ep in eps}
            for ep in eps:
                addr = ep.bEndpointAddress
                kind = TRANSFER_NAMES[ep.bmAttributes & 3]
                mps = ep.wMaxPacketSize & 0x7FF
                if kind == "control":
                    run.check(where, f"endpoint 0x{addr:02x}", lambda addr=addr: _raise(RuntimeError(
                        f"descriptor of endpoint 0x{addr:02x} says control type (bmAttributes "
                        f"0x{by_addr[addr].bmAttributes:02x}); only endpoint 0 may be control")))
                    continue
                if kind == "isochronous":
                    run.check(where, f"isochronous {'IN' if addr & 0x80 else 'OUT'} 0x{addr:02x}",
                              lambda addr=addr, mps=mps: _iso_check(dev, addr, mps, transfer_ms))
                    continue
                if addr & 0x80:
                    partner = by_addr.get(addr & 0x0F)
                    if partner is not None and (partner.bmAttributes & 3) == (ep.bmAttributes & 3):
                        continue  # read back by the loopback of its OUT partner
                    if not alt:
                        timeout_candidates.append((addr, mps, intf.bInterfaceNumber))
                    run.check(where, f"{kind} IN 0x{addr:02x}",
                              lambda addr=addr, mps=mps, kind=kind: _read_check(dev, addr, mps, transfer_ms))
                    continue
                partner = by_addr.get(addr | 0x80)
                if partner is None or (partner.bmAttributes & 3) != (ep.bmAttributes & 3):
                    run.check(where, f"{kind} OUT 0x{addr:02x}",
                              lambda addr=addr, mps=mps: _write_check(dev, addr, mps, transfer_ms))
                    continue
                if not alt:
                    timeout_candidates.append((addr | 0x80, mps, intf.bInterfaceNumber))
                run.check(where, f"{kind} loopback 0x{addr:02x} -> 0x{addr | 0x80:02x}",
                          lambda addr=addr, mps=mps, kind=kind: _loopback_check(dev, addr, mps, kind, transfer_ms))
            if alt:
                run.check(where, f"back to interface {intf.bInterfaceNumber}.0", lambda: dev.set_interface_altsetting(
                    interface=intf.bInterfaceNumber, alternate_setting=0) or "SET_INTERFACE accepted")

        run.check(where, "stall", lambda: _stall_check(dev, used, transfer_ms))
        run.check(where, "timeout", lambda: _timeout_check(dev, timeout_candidates))
    finally:
        be.close()


def _raise(exc: BaseException):
    raise exc


def _alive(dev) -> None:
    """GET_STATUS(device): the device still answers on endpoint 0."""
    status = bytes(dev.ctrl_transfer(0x80, 0, 0, 0, 2, timeout=2000))
    if len(status) != 2:
        raise RuntimeError(f"GET_STATUS answered {len(status)} bytes")


def _loopback_check(dev, out_ep: int, mps: int, kind: str, timeout_ms: int) -> str:
    import usb.core

    sizes = [mps, 3 * mps + 7] if kind == "bulk" else [min(mps, 8), mps]
    results = []
    for size in sizes:
        payload = gadget_pattern(size)
        written = int(dev.write(out_ep, payload, timeout=timeout_ms))
        if written != size:
            raise RuntimeError(f"wrote {written} of {size} bytes")
        try:
            back = _read_all(dev, out_ep | 0x80, size, mps, timeout_ms)
        except usb.core.USBTimeoutError:
            raise SkipCheck(f"wrote {size} bytes to 0x{out_ep:02x}; nothing came back on 0x{out_ep | 0x80:02x} "
                            "(not an echo pair)") from None
        if back != payload:
            if back and back == gadget_pattern(len(back)):
                return (f"0x{out_ep:02x} took {size} bytes of the pattern (a sink), 0x{out_ep | 0x80:02x} "
                        f"returned {len(back)} bytes of it (a source)")
            raise SkipCheck(f"wrote {size} bytes; 0x{out_ep | 0x80:02x} returned other data (not an echo pair)")
        results.append(str(size))
    return f"{' + '.join(results)} bytes echoed"


def _read_check(dev, ep: int, mps: int, timeout_ms: int) -> str:
    import usb.core

    try:
        data = bytes(dev.read(ep, mps or 64, timeout=min(timeout_ms, 300)))
    except usb.core.USBTimeoutError:
        _alive(dev)
        return "no data within 300 ms (URB unlinked; device still answers)"
    return f"{len(data)} bytes: {data[:16].hex(' ')}{' ...' if len(data) > 16 else ''}"


def _write_check(dev, ep: int, mps: int, timeout_ms: int) -> str:
    payload = gadget_pattern(min(mps or 8, 8))
    written = int(dev.write(ep, payload, timeout=timeout_ms))
    return f"{written} bytes written (the source/sink pattern)"


def _iso_check(dev, ep: int, mps: int, timeout_ms: int) -> str:
    import usb.core

    size = max(mps, 1) * 4
    try:
        if ep & 0x80:
            data = dev.read(ep, size, timeout=timeout_ms)
            return f"4 packets asked, {len(data)} bytes received"
        written = dev.write(ep, gadget_pattern(size), timeout=timeout_ms)
        return f"{int(written)} bytes in 4 packets"
    except usb.core.USBError as exc:
        if getattr(exc, "errno", None) in (errno.EOPNOTSUPP, getattr(errno, "ENOTSUP", -1), errno.EXDEV):
            raise SkipCheck(f"the server does not do isochronous transfers ({exc})") from exc
        raise


def _stall_check(dev, used_endpoints, timeout_ms: int) -> str:
    """A request the device must refuse (USB 2.0 9.4.5: GET_STATUS of an endpoint it does not have)."""
    import usb.core

    missing = next((a for a in range(0x8F, 0x80, -1) if a not in used_endpoints), None)
    candidates = []
    if missing is not None:
        candidates.append((f"GET_STATUS(endpoint 0x{missing:02x}), an endpoint it does not have",
                           0x82, 0, 0, missing, 2))
    candidates.append(("an undefined vendor request 0xff", 0xC0, 0xFF, 0, 0, 8))
    answered = []
    for text, bm, req, val, idx, length in candidates:
        try:
            dev.ctrl_transfer(bm, req, val, idx, length, timeout=timeout_ms)
        except usb.core.USBError as exc:
            if getattr(exc, "errno", None) != errno.EPIPE:
                raise
            _alive(dev)
            return f"{text} stalled (EPIPE); endpoint 0 still answers"
        answered.append(text)
    raise SkipCheck(f"the device answered instead of stalling: {'; '.join(answered)}")


def _timeout_check(dev, candidates) -> str:
    import usb.core

    if not candidates:
        raise SkipCheck("no bulk or interrupt IN endpoint in alternate setting 0")
    had_data = []
    for ep, mps, _intf in candidates:
        try:
            dev.read(ep, mps or 64, timeout=200)
        except usb.core.USBTimeoutError:
            _alive(dev)
            return f"read from idle 0x{ep:02x} timed out after 200 ms; the URB was unlinked and the device still answers"
        had_data.append(f"0x{ep:02x}")
    raise SkipCheck(f"every IN endpoint had data ({', '.join(had_data)})")


def run_checks(host: str, port: int, *, busids: Optional[Sequence[str]] = None, timeout: float = 5.0,
               hook=None, out=None, verbose: bool = False, transfer_ms: int = 2000) -> CheckRun:
    """The full sequence against one server: list, then for each device import, descriptors,
    strings, configuration, every endpoint, a stall and a timeout. Returns the counts."""
    from .client import list_devices

    run = CheckRun(out or sys.stdout, verbose)
    server = f"{host}:{port}"
    devices = run.check(server, "list", lambda: list_devices(host, port, timeout=timeout))
    if devices is None:
        return run
    if devices is True or not devices:  # True: an empty list counted as a pass
        run.failed += 1
        run.passed -= 1
        run._line("FAIL", server, "list", "the server exports no devices")
        return run
    print(f"      {server}  {len(devices)} device(s): {', '.join(short_device(d) for d in devices)}",
          file=run.out, flush=True)
    if busids:
        wanted = set(busids)
        missing = wanted - {d.busid for d in devices}
        for busid in sorted(missing):
            run.failed += 1
            run._line("FAIL", busid, "list", f"busid {busid} is not exported by {server}")
        devices = [d for d in devices if d.busid in wanted]
    for listed in devices:
        try:
            _check_device(run, host, port, listed, timeout=timeout, hook=hook, transfer_ms=transfer_ms)
        except Exception as exc:  # noqa: BLE001 - one device's disaster must not hide the others
            run.failed += 1
            run._line("FAIL", listed.busid, "device", explain(exc, None))
    return run


def cmd_check(ctx: Context) -> int:
    host, port = ctx.server()
    run = run_checks(host, port, busids=getattr(ctx.args, "busid", None), timeout=ctx.args.timeout, hook=ctx.pcap(),
                     out=ctx.out, verbose=bool(ctx.args.verbose))
    ctx.print(run.summary())
    return EXIT_OK if run.failed == 0 else EXIT_FAILED


def cmd_demo(ctx: Context) -> int:
    from .sim import SimServer, stock_devices

    server = SimServer(stock_devices(), host="127.0.0.1", port=0)
    server.start()
    try:
        ctx.note(f"virtual USB/IP server on 127.0.0.1:{server.port} (the same as '{PROG} sim')")
        ctx._server = ("127.0.0.1", server.port)
        return cmd_check(ctx)
    finally:
        server.stop()


# --------------------------------------------------------------------------------------------
# Parser
# --------------------------------------------------------------------------------------------
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
  {PROG} --host esp.local probe --vid 0x303a --pid 0x1001
  {PROG} --host esp.local control --vid 0x303a --pid 0x1001 --direction in \\
      --bm-request-type 0x80 --b-request 6 --w-value 0x0100 --length 18
  {PROG} --host esp.local --pcap usb.pcapng --syslog probe --vid 0x303a --pid 0x1001
  {PROG} sim                             a virtual server on 127.0.0.1:3240 to try it all

without --host, the one server that answers mDNS is used (it says which).
'{PROG} COMMAND --help' shows a command's options."""


SUB_EPILOG = f"""\
The connection options (--host, --port, --timeout, --pcap, --syslog, --syslog-port,
--mdns-timeout, --mdns-interface, --mdns-type, -v) may come before or after the command; see {PROG} --help."""


def _global_options(parser: argparse.ArgumentParser, suppress: bool) -> None:
    """Options valid before the command, and (with ``suppress``) after it too."""
    def d(value):
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
                   help=h("write every URB to a pcapng file (or a FIFO Wireshark reads: wireshark -k -i PATH)"))
    g.add_argument("--syslog", action="store_true", default=d(False),
                   help=h("also receive the server's syslog (TCP, RFC 5424) into the capture/log"))
    g.add_argument("--syslog-port", type=port_number, default=d(DEFAULT_SYSLOG_PORT), metavar="N",
                   help=h(f"syslog TCP port on the server (default {DEFAULT_SYSLOG_PORT})"))
    g.add_argument("--mdns-timeout", type=seconds, default=d(2.0), metavar="S",
                   help=h("how long to browse mDNS (default 2 s)"))
    g.add_argument("--mdns-interface", action="append", default=d(None), metavar="ADDR",
                   help=h("local address to use for mDNS (repeatable; default all interfaces)"))
    g.add_argument("--mdns-type", default=d("_usbip._tcp.local."), metavar="TYPE",
                   help=h("DNS-SD service type to browse (default _usbip._tcp.local.)"))
    g.add_argument("-v", "--verbose", action="count", default=d(0), help=h("debug logging (and tracebacks)"))


def _device_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("device selection")
    g.add_argument("--vid", type=u16, help="vendor ID, e.g. 0x303a")
    g.add_argument("--pid", type=u16, help="product ID, e.g. 0x1001")
    g.add_argument("--busid", help="the server's bus ID, e.g. 1-1 (needed when several devices match)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=DESCRIPTION, epilog=EPILOG, formatter_class=_Formatter)
    _global_options(parser, suppress=False)
    common = argparse.ArgumentParser(add_help=False)
    _global_options(common, suppress=True)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")

    def add(name: str, func, help_: str, description: str, parents=(common,)):
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
        p.add_argument("--chunk", type=size_arg, default=16384, metavar="N",
                       help="streaming: bytes per URB, whole packets (default 16K)")
        p.add_argument("--window", type=int, default=16, metavar="N",
                       help="streaming: most URBs in flight (default 16; the window grows to it)")
        p.add_argument("--offset", type=size_arg, default=0, metavar="N",
                       help="streaming: resume at this byte (as an interrupted run reports)")

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
    p.add_argument("--timeout-ms", type=milliseconds, default=1000, metavar="N",
                   help="timeout (per URB when streaming; default 1000; 0 waits forever)")
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = add("write", cmd_write, "write to a bulk or interrupt OUT endpoint",
            "Write once to an OUT endpoint (bulk or interrupt, taken from its descriptor); with --file, "
            "stream a file with a window of URBs in flight and a progress display on stderr.")
    _device_options(p)
    p.add_argument("--ep", type=endpoint_arg, required=True, metavar="EP", help="OUT endpoint address, e.g. 0x01")
    payload = p.add_mutually_exclusive_group(required=True)
    payload.add_argument("--data-hex", type=hex_data, metavar="HEX", help="payload as hex")
    payload.add_argument("--file", metavar="FILE", help="stream this file")
    stream_options(p)
    p.add_argument("--timeout-ms", type=milliseconds, default=1000, metavar="N",
                   help="timeout (per URB when streaming; default 1000; 0 waits forever)")
    p.add_argument("--json", action="store_true", help="machine-readable output")

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

    add("demo", cmd_demo, "start the virtual server in-process and run 'check' against it",
        "Start the virtual USB/IP server on 127.0.0.1 (a free port) and run the check sequence "
        "against it through PyUSB: everything works with no hardware.")

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
    p.add_argument("sim_args", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    return parser


# --------------------------------------------------------------------------------------------
# Error reporting
# --------------------------------------------------------------------------------------------
def _chain(exc: BaseException) -> List[BaseException]:
    seen: List[BaseException] = []
    while exc is not None and exc not in seen and len(seen) < 16:
        seen.append(exc)
        exc = exc.__cause__ or exc.__context__
    return seen


def _first(exc: BaseException, types) -> Optional[BaseException]:
    for e in _chain(exc):
        if isinstance(e, types):
            return e
    return None


def explain(exc: BaseException, ctx: Optional[Context]) -> str:
    """One line for a failure: what happened, where, and what to do."""
    try:
        import usb.core
        usb_error: Tuple[type, ...] = (usb.core.USBError,)
        usb_timeout: Tuple[type, ...] = (usb.core.USBTimeoutError,)
    except ImportError:  # pragma: no cover
        usb_error = usb_timeout = ()
    from .discovery import DiscoveryError

    where = ctx.where() if ctx is not None else "the server"
    if isinstance(exc, (DiscoveryError, CliError)):
        return str(exc)
    refused = _first(exc, ImportRefusedError)
    if refused is not None:
        busid = getattr(refused, "busid", "") or "?"
        status = getattr(refused, "status", None)
        if status == P.Status.ST_DEV_BUSY:
            return (f"device {busid} on {where} is busy: another client has imported it (USB/IP does not say "
                    "which); release it there (usbip detach, or close that program) and retry")
        if status == P.Status.ST_NODEV:
            return f"no device with busid {busid} on {where}; run '{PROG} list' to see what is exported"
        return f"{where} refused to import {busid}: {refused}"
    if _first(exc, ConnectionRefusedError) is not None:
        return (f"connection refused by {where}: no USB/IP server listens there; check --host/--port "
                f"(or start one: {PROG} sim)")
    gai = _first(exc, socket.gaierror)
    if gai is not None:
        host = ctx.args.host if ctx is not None else "?"
        return f"cannot resolve host {host!r}: {gai.strerror or gai}; check --host"
    timeout = _first(exc, (UsbipTimeoutError, socket.timeout, TimeoutError) + usb_timeout)
    if timeout is not None:
        what = str(timeout) or "operation timed out"
        return f"timed out talking to {where}: {what} (raise the timeout option, or check the device)"
    lost = _first(exc, (ConnectionLostError, ConnectionError))
    if lost is not None:
        return f"connection to {where} lost: {lost}; check the server and retry"
    urb = _first(exc, UrbError)
    if urb is not None:
        if urb.status == -errno.EPIPE:
            return "the device stalled the request (EPIPE): it does not support the request or its arguments"
        return f"transfer failed: {describe_status(urb.status)}"
    if usb_error:
        ue = _first(exc, usb_error)
        if ue is not None:
            code = getattr(ue, "errno", None)
            if code == errno.EPIPE:
                return f"the device stalled the request (EPIPE): it does not support it or its arguments ({ue})"
            if code == errno.ETIMEDOUT:
                return f"timed out: {ue} (raise the timeout option, or check the device)"
            return f"USB error: {ue}"
    proto = _first(exc, ProtocolError)
    if proto is not None:
        return f"{where} does not speak USB/IP as expected: {proto}"
    if isinstance(exc, OSError):
        return f"{where}: {exc.strerror or exc}"
    if isinstance(exc, UsbipError):
        return f"{exc}"
    return f"unexpected error: {type(exc).__name__}: {exc} (run with -v for the traceback)"


def _setup_logging(verbosity: int) -> None:
    level = logging.DEBUG if verbosity > 0 else logging.WARNING
    logging.basicConfig(level=level, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    if verbosity < 2:  # zeroconf's own debug output is noisy; -vv shows it
        logging.getLogger("zeroconf").setLevel(max(level, logging.INFO))
    if verbosity == 0:  # the CLI reports a skipped (busy, broken) device itself, in one line
        logging.getLogger("usbip_backend.backend").setLevel(logging.ERROR)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the command line; returns the exit code (0 ok, 1 failed, 2 usage)."""
    out, err = sys.stdout, sys.stderr
    parser = build_parser()
    try:
        args = parser.parse_args(list(argv) if argv is not None else None)
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2), already printed
        return exc.code if isinstance(exc.code, int) else (EXIT_OK if exc.code is None else EXIT_USAGE)
    if not args.command:
        parser.print_usage(err)
        print(f"{PROG}: error: a command is needed (discover, list, probe, control, read, write, loopback, check, demo, sim); "
              f"see {PROG} --help", file=err)
        return EXIT_USAGE
    _setup_logging(args.verbose)
    ctx = Context(args, out, err)
    try:
        if args.command != "sim":
            ctx.start_syslog()
        return int(args.func(ctx) or 0)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=err)
        return 130
    except BrokenPipeError:  # output piped into head
        return EXIT_FAILED
    except Exception as exc:  # noqa: BLE001 - every failure becomes one line
        code = exc.code if isinstance(exc, CliError) else EXIT_FAILED
        message = explain(exc, ctx)
        if args.verbose:
            traceback.print_exception(type(exc), exc, exc.__traceback__, file=err)
        if ctx.json and code == EXIT_FAILED:
            ctx.emit_json({"error": message})
        print(f"{PROG}: error: {message}", file=err)
        return code
    finally:
        ctx.close()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
