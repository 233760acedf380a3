"""The conformance run: every check a USB/IP server and its devices should pass, through PyUSB.

For each exported device (or the chosen busids): import, a refused second import, descriptors,
strings, configuration, every endpoint the device has (bulk/interrupt loopback where an OUT/IN
pair echoes, reads, writes, isochronous), a deliberate stall and a timeout. Each check prints one
``PASS``/``FAIL``/``SKIP`` line. Used by ``usbip-pyusb-test check``/``demo`` and
``tools/integration.py``::

    from usbip_backend.conformance import run_checks
    run = run_checks("192.168.1.20", 3240)
    print(run.summary())          # "23 passed, 0 failed, 2 skipped"
"""

from __future__ import annotations

import errno
import sys
import traceback
from typing import IO, Any, Callable, Dict, List, NoReturn, Optional, Sequence, Set, Tuple

from . import protocol as P
from .ch9 import gadget_pattern
from .errors import ImportRefusedError
from .engine.transport import Connector, TlsArg
from .hooks import UrbHook
from .usbnames import bcd, transfer_type_name, vendor_name

__all__ = ["CheckRun", "SkipCheck", "run_checks", "gadget_pattern", "active_configuration"]


def active_configuration(dev: Any) -> Any:
    """The PyUSB device's active configuration, setting the first one if none is set."""
    import usb.core

    try:
        return dev.get_active_configuration()
    except usb.core.USBError:
        dev.set_configuration()
        return dev.get_active_configuration()


def _short(dev: P.UsbDevice) -> str:
    vendor = vendor_name(dev.idVendor)
    text = f"{dev.busid} {dev.idVendor:04x}:{dev.idProduct:04x}"
    return f"{text} ({vendor})" if vendor else text


class SkipCheck(Exception):
    """A check that does not apply to this device (counted as skipped, not failed)."""


class CheckRun:
    """Counts and prints PASS / FAIL / SKIP lines."""

    def __init__(self, out: IO[str], verbose: bool = False) -> None:
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


def _read_all(dev: Any, ep: int, want: int, mps: int, timeout_ms: int) -> bytes:
    """Read until ``want`` bytes arrived (IN lengths rounded up to whole packets: no babble)."""
    got = bytearray()
    while len(got) < want:
        chunk = bytes(dev.read(ep, _round_up(want - len(got), mps), timeout=timeout_ms))
        if not chunk:
            break
        got += chunk
    return bytes(got)


def _check_device(run: CheckRun, host: str, port: int, listed: P.UsbDevice, *, timeout: float, hook: Optional[UrbHook],
                  transfer_ms: int, net: Dict[str, Any]) -> None:
    import usb.core
    import usb.util

    from .backend import get_backend
    from .client import import_device, list_devices

    where = listed.busid
    be = get_backend(host, port, timeout=timeout, busids=[listed.busid], pcap=hook, **net)
    try:
        def do_import() -> Any:
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

        def busy() -> str:
            try:
                conn = import_device(host, port, listed.busid, timeout=timeout, **net)
            except ImportRefusedError as exc:
                if exc.status != P.Status.ST_DEV_BUSY:
                    raise RuntimeError(f"second import refused with {P.status_text(exc.status)}, "
                                       "expected ST_DEV_BUSY") from exc
            else:
                conn.close()
                raise RuntimeError("a second import succeeded while we hold the device")
            hidden = all(d.busid != listed.busid for d in list_devices(host, port, timeout=timeout, **net))
            return "second import refused (ST_DEV_BUSY)" + ("; hidden from the device list" if hidden else "")
        run.check(where, "exclusive import", busy)

        def descriptors() -> str:
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

        def strings() -> str:
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
                kind = transfer_type_name(ep.bmAttributes)
                mps = ep.wMaxPacketSize & 0x7FF
                if kind == "control":
                    run.check(where, f"endpoint 0x{addr:02x}", lambda: _raise(RuntimeError(
                        f"descriptor of endpoint 0x{addr:02x} says control type (bmAttributes "
                        f"0x{by_addr[addr].bmAttributes:02x}); only endpoint 0 may be control")))
                    continue
                if kind == "isochronous":
                    run.check(where, f"isochronous {'IN' if addr & 0x80 else 'OUT'} 0x{addr:02x}",
                              lambda: _iso_check(dev, addr, mps, transfer_ms))
                    continue
                if addr & 0x80:
                    partner = by_addr.get(addr & 0x0F)
                    if partner is not None and (partner.bmAttributes & 3) == (ep.bmAttributes & 3):
                        continue  # read back by the loopback of its OUT partner
                    if not alt:
                        timeout_candidates.append((addr, mps, intf.bInterfaceNumber))
                    run.check(where, f"{kind} IN 0x{addr:02x}",
                              lambda: _read_check(dev, addr, mps, transfer_ms))
                    continue
                partner = by_addr.get(addr | 0x80)
                if partner is None or (partner.bmAttributes & 3) != (ep.bmAttributes & 3):
                    run.check(where, f"{kind} OUT 0x{addr:02x}",
                              lambda: _write_check(dev, addr, mps, transfer_ms))
                    continue
                if not alt:
                    timeout_candidates.append((addr | 0x80, mps, intf.bInterfaceNumber))
                run.check(where, f"{kind} loopback 0x{addr:02x} -> 0x{addr | 0x80:02x}",
                          lambda: _loopback_check(dev, addr, mps, kind, transfer_ms))
            if alt:
                run.check(where, f"back to interface {intf.bInterfaceNumber}.0", lambda: dev.set_interface_altsetting(
                    interface=intf.bInterfaceNumber, alternate_setting=0) or "SET_INTERFACE accepted")

        run.check(where, "stall", lambda: _stall_check(dev, used, transfer_ms))
        run.check(where, "timeout", lambda: _timeout_check(dev, timeout_candidates))
    finally:
        be.close()


def _raise(exc: BaseException) -> NoReturn:
    raise exc


def _alive(dev: Any) -> None:
    """GET_STATUS(device): the device still answers on endpoint 0."""
    status = bytes(dev.ctrl_transfer(0x80, 0, 0, 0, 2, timeout=2000))
    if len(status) != 2:
        raise RuntimeError(f"GET_STATUS answered {len(status)} bytes")


def _loopback_check(dev: Any, out_ep: int, mps: int, kind: str, timeout_ms: int) -> str:
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


def _read_check(dev: Any, ep: int, mps: int, timeout_ms: int) -> str:
    import usb.core

    try:
        data = bytes(dev.read(ep, mps or 64, timeout=min(timeout_ms, 300)))
    except usb.core.USBTimeoutError:
        _alive(dev)
        return "no data within 300 ms (URB unlinked; device still answers)"
    return f"{len(data)} bytes: {data[:16].hex(' ')}{' ...' if len(data) > 16 else ''}"


def _write_check(dev: Any, ep: int, mps: int, timeout_ms: int) -> str:
    payload = gadget_pattern(min(mps or 8, 8))
    written = int(dev.write(ep, payload, timeout=timeout_ms))
    return f"{written} bytes written (the source/sink pattern)"


def _iso_check(dev: Any, ep: int, mps: int, timeout_ms: int) -> str:
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


def _stall_check(dev: Any, used_endpoints: Set[int], timeout_ms: int) -> str:
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


def _timeout_check(dev: Any, candidates: Sequence[Tuple[int, int, int]]) -> str:
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
               hook: Optional[UrbHook] = None, out: Optional[IO[str]] = None, verbose: bool = False,
               transfer_ms: int = 2000, describe: Optional[Callable[[BaseException], str]] = None,
               ssl: TlsArg = None, connect: Optional[Connector] = None) -> CheckRun:
    """The full sequence against one server: list, then for each device import, descriptors,
    strings, configuration, every endpoint, a stall and a timeout. Returns the counts.

    ``hook``: an engine hook (a PcapWriter) that sees every URB; ``describe`` turns an error that
    ends a device's checks early into its FAIL line (default: the exception's type and text);
    ``ssl``, ``connect``: the transport, as for :func:`~usbip_backend.get_backend`.
    """
    from .client import list_devices
    from .device import natural_busid_key

    run = CheckRun(out or sys.stdout, verbose)
    server = f"{host}:{port}"
    net: Dict[str, Any] = {"ssl": ssl, "connect": connect}
    devices = run.check(server, "list", lambda: sorted(list_devices(host, port, timeout=timeout, **net),
                                                       key=lambda d: natural_busid_key(d.busid)))
    if devices is None:
        return run
    if devices is True or not devices:  # True: an empty list counted as a pass
        run.failed += 1
        run.passed -= 1
        run._line("FAIL", server, "list", "the server exports no devices")
        return run
    print(f"      {server}  {len(devices)} device(s): {', '.join(_short(d) for d in devices)}",
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
            _check_device(run, host, port, listed, timeout=timeout, hook=hook, transfer_ms=transfer_ms, net=net)
        except Exception as exc:  # noqa: BLE001 - one device's disaster must not hide the others
            run.failed += 1
            run._line("FAIL", listed.busid, "device",
                      describe(exc) if describe is not None else f"{type(exc).__name__}: {exc}")
    return run
