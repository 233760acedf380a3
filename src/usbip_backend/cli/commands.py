"""The commands: ``discover``, ``list``, ``probe``, ``control``, ``read``, ``write``,
``loopback``, ``check``, ``demo`` and ``sim``. Each takes the run's :class:`Context` and returns
the exit code; failures raise :class:`CliError` (or library errors that ``explain`` words).
"""

from __future__ import annotations

import argparse
import os
from typing import Any, Callable, Dict, Optional, Tuple

from ..conformance import run_checks
from ..usbnames import SPEEDS, bcd, class_name, speed_name, transfer_type_name, vendor_name
from .args import EXIT_FAILED, EXIT_OK, EXIT_USAGE, MAX_LENGTH, CliError
from .context import DEFAULT_PORT, PROG, Context
from .devices import device_json, find_endpoint, get_string, list_exported, open_device, transfer
from .explain import explain
from .render import hexdump, print_probe, probe_json


def cmd_discover(ctx: Context) -> int:
    from ..discovery import discover

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
    devices = list_exported(ctx)
    host, port = ctx.server()
    if ctx.json:
        ctx.emit_json({"host": host, "port": port, "devices": [device_json(d) for d in devices]})
        return EXIT_OK
    ctx.print(f"Exportable USB devices on {ctx.where()}: {len(devices)}")
    for d in devices:
        vendor = vendor_name(d.idVendor) or "unknown vendor"
        ctx.print(f"  {d.busid}: {vendor} ({d.idVendor:04x}:{d.idProduct:04x})")
        ctx.print(f"      path      {d.path}")
        sp = SPEEDS.get(d.speed)
        rate = f" ({sp.rate})" if sp is not None and sp.rate else ""
        ctx.print(f"      speed     {speed_name(d.speed)}{rate}, bus {d.busnum} device {d.devnum}, "
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
        print_probe(ctx.print, dev, busid, ctx.where(), strings, raw)
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


def _request_json(args: argparse.Namespace, length: int) -> Dict[str, int]:
    return {"bmRequestType": args.bm_request_type, "bRequest": args.b_request,
            "wValue": args.w_value, "wIndex": args.w_index, "wLength": length}


def _open_data_endpoint(ctx: Context, want_in: bool) -> Tuple[Any, str, str]:
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
    kind = transfer_type_name(ep.bmAttributes)
    if kind == "isochronous":
        raise CliError(f"endpoint 0x{args.ep:02x} is isochronous; read/write handle bulk and interrupt endpoints",
                       EXIT_USAGE)
    return dev, busid, kind


def _stream_options(args: argparse.Namespace) -> Dict[str, Any]:
    return {"chunk": args.chunk, "window": args.window, "offset": args.offset,
            "timeout": args.timeout_ms / 1000.0 if args.timeout_ms else None}


def _streamed(ctx: Context, what: str, fn: Callable[..., Any], label: str) -> Any:
    """Run a stream with a progress display on stderr; a StreamError says where to resume."""
    from ..progressbar import ProgressBar
    from ..stream import StreamError

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


def _stream_report(ctx: Context, busid: str, kind: str, file: str, done: Any, summary: str) -> int:
    """The end of a streamed read or write: its JSON object, or ``summary`` with the time taken
    and the final progress line."""
    from ..progressbar import describe

    if ctx.json:
        ctx.emit_json({"busid": busid, "endpoint": ctx.args.ep, "transfer_type": kind, "file": file,
                       "offset": done.offset, "bytes": done.confirmed, "seconds": round(done.elapsed, 6),
                       "rate": round(done.rate)})
    else:
        ctx.print(f"{summary} in {done.elapsed:.2f} s: {describe(done)}")
    return EXIT_OK


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
    from ..stream import read_into_file

    args = ctx.args
    if args.offset > args.length:
        raise CliError(f"--offset {args.offset} is beyond --length {args.length}", EXIT_USAGE)
    dev, busid, kind = _open_data_endpoint(ctx, want_in=True)
    what = f"{kind} IN stream from endpoint 0x{args.ep:02x} of {busid}"
    done = _streamed(ctx, what, lambda **kw: read_into_file(dev, args.ep, args.out, args.length,
                                                            **_stream_options(args), **kw), "read ")
    return _stream_report(ctx, busid, kind, args.out, done,
                          f"read {done.confirmed} bytes from {kind} IN 0x{args.ep:02x} into {args.out}")


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
    from ..stream import write_from_file

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
    return _stream_report(ctx, busid, kind, args.file, done,
                          f"wrote {done.confirmed} bytes of {args.file} to {kind} OUT 0x{args.ep:02x}")


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
    from .. import sim

    args = ctx.args
    argv = ["--host", args.host or "127.0.0.1", "--port", str(DEFAULT_PORT if args.port is None else args.port)]
    if args.devices:
        argv += ["--devices", ",".join(n for item in args.devices for n in item.split(",") if n)]
    if args.count is not None:
        argv += ["--count", str(args.count)]
    if args.unlink:
        argv += ["--unlink", args.unlink]
    if args.mdns:
        argv.append("--mdns")
        for address in args.mdns_interface or ():
            argv += ["--mdns-interface", address]
        if args.mdns_name:
            argv += ["--mdns-name", args.mdns_name]
    argv += args.sim_args
    rc = sim.main(argv)
    return int(rc or 0)


def cmd_check(ctx: Context) -> int:
    host, port = ctx.server()
    run = run_checks(host, port, busids=getattr(ctx.args, "busid", None), timeout=ctx.args.timeout, hook=ctx.pcap(),
                     out=ctx.out, verbose=bool(ctx.args.verbose), describe=lambda exc: explain(exc, None),
                     **ctx.transport())
    ctx.print(run.summary())
    return EXIT_OK if run.failed == 0 else EXIT_FAILED


def cmd_demo(ctx: Context) -> int:
    from ..sim import MdnsError, SimServer, stock_devices

    mdns = not ctx.args.no_mdns
    server = SimServer(stock_devices(), host="127.0.0.1", port=0, mdns=mdns)
    try:
        server.start()
    except MdnsError as exc:
        ctx.note(f"mDNS does not work here ({exc}); the demo goes on without it")
        server = SimServer(stock_devices(), host="127.0.0.1", port=0)
        server.start()
    try:
        ctx.note(f"virtual USB/IP server on 127.0.0.1:{server.port} (the same as "
                 f"'{PROG} sim{' --mdns' if server.mdns is not None else ''}')")
        ctx._server = _found_over_mdns(ctx, server) or ("127.0.0.1", server.port)
        return cmd_check(ctx)
    finally:
        server.stop()


def _found_over_mdns(ctx: Context, server: Any) -> Optional[Tuple[str, int]]:
    """Find the demo's server as 'discover' and a command without --host do, on 127.0.0.1."""
    if server.mdns is None:
        return None
    from ..discovery import discover

    timeout = ctx.args.mdns_timeout
    found = [s for s in discover(timeout=timeout, interfaces=["127.0.0.1"]) if s.name == server.mdns.name]
    if not found:
        ctx.note(f"the server's mDNS announcement was not seen within {timeout:g} s on 127.0.0.1 "
                 "(multicast on loopback blocked?); using its address directly")
        return None
    ctx.print(f"mDNS: found {found[0].describe()}")
    return found[0].address, found[0].port
