"""Choosing the one device a command is about, importing it, and its endpoints.

Every failure is a :class:`CliError` that says what is exported instead, or what to change.
"""

from __future__ import annotations

import argparse
import errno
import logging
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from .. import protocol as P
from ..conformance import active_configuration
from ..usbnames import class_name, speed_name, transfer_type_name, vendor_name
from .args import EXIT_USAGE, CliError
from .context import PROG, Context

log = logging.getLogger("usbip_backend.cli")


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


def list_exported(ctx: Context) -> List[P.UsbDevice]:
    """The server's device list in busid order (usbipd and others list newest first)."""
    from ..client import list_devices
    from ..device import natural_busid_key

    host, port = ctx.server()
    return sorted(list_devices(host, port, timeout=ctx.args.timeout, **ctx.transport()),
                  key=lambda d: natural_busid_key(d.busid))


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
    devices = list_exported(ctx)
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


def open_device(ctx: Context, args: argparse.Namespace) -> Tuple[Any, str]:
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
            raise CliError(f"no device with busid {busid} on {ctx.where()}; {_what_is_there(list_exported(ctx))}")
        if reason and reason.startswith(f"import of {busid} "):  # says which device and where itself
            raise CliError(reason)
        if reason:
            raise CliError(f"cannot use device {busid} on {ctx.where()}: {reason}")
        if args.busid is not None:
            raise CliError(f"the device at busid {busid} on {ctx.where()} is not "
                           f"{args.vid or 0:04x}:{args.pid or 0:04x}; run '{PROG} list'")
        raise CliError(f"device at busid {busid} on {ctx.where()} is gone (it was listed a moment ago); "
                       "list again and retry")
    log.debug("opened %04x:%04x at busid %s", dev.idVendor, dev.idProduct, busid)
    return dev, busid


def find_endpoint(dev: Any, address: int) -> Tuple[Any, Any]:
    """``(interface, endpoint)`` descriptors of ``address`` in the active configuration."""
    cfg = active_configuration(dev)
    available = []
    for intf in cfg:
        for ep in intf:
            available.append(f"0x{ep.bEndpointAddress:02x} ({transfer_type_name(ep.bmAttributes)})")
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


def get_string(dev: Any, index: int) -> Optional[str]:
    """String descriptor ``index`` (None for 0); an error becomes a bracketed note."""
    import usb.util

    if not index:
        return None
    try:
        text: Optional[str] = usb.util.get_string(dev, index)
        return text
    except Exception as exc:  # noqa: BLE001 - a bad string must not end the probe
        return f"[error reading string {index}: {exc}]"
