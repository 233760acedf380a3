"""usbip_backend.usb1 against the Linux kernel's servers: asynchronous transfers on real gadgets."""

from __future__ import annotations

import contextlib
import time

from usbip_backend import usb1

from .peer import Flavour


@contextlib.contextmanager
def opened(flav: Flavour, kind: str):
    """A usb1 handle on one gadget; on exit the gadget is offered to the next test again."""
    with usb1.USBContext(host=flav.host, port=flav.port, busids=[flav.busids[kind]], timeout=10) as ctx:
        device = next(iter(ctx.getDeviceList()))
        handle = device.open()
        try:
            handle.setConfiguration(1)
            yield ctx, handle
        finally:
            handle.close()
    flav.peer.wait_available(flav, kind)


def handle_until(ctx, done, seconds=30.0):
    deadline = time.monotonic() + seconds
    while not done():
        assert time.monotonic() < deadline, "events did not come"
        ctx.handleEventsTimeout(1)


def test_bulk_in_pump_from_sourcesink(flavour):
    """8 bulk IN transfers from the SourceSink gadget, each resubmitted from its callback."""
    with opened(flavour, "ss") as (ctx, handle):
        got = []

        def on_done(transfer):
            assert transfer.getStatus() == usb1.TRANSFER_COMPLETED, transfer.getStatus()
            got.append(bytes(transfer.getBuffer()[:transfer.getActualLength()]))
            if len(got) + sum(t.isSubmitted() for t in transfers) < 64:
                transfer.submit()

        transfers = []
        for _ in range(8):
            t = handle.getTransfer()
            t.setBulk(0x81, 4096, callback=on_done, timeout=10000)
            t.submit()
            transfers.append(t)
        handle_until(ctx, lambda: not any(t.isSubmitted() for t in transfers))
        # SourceSink with pattern=1: byte i of every 512-byte packet is (i % 512) % 63
        assert len(got) == 64 and set(got) == {bytes((i % 512) % 63 for i in range(4096))}


def test_cancelled_read_from_the_acm_gadget(flavour):
    with opened(flavour, "acm") as (ctx, handle):
        statuses = []
        t = handle.getTransfer()
        t.setBulk(0x81, 512, callback=lambda tr: statuses.append(tr.getStatus()))
        t.submit()
        t.cancel()
        handle_until(ctx, lambda: statuses)
        assert statuses == [usb1.TRANSFER_CANCELLED]


def test_isochronous_on_device_mode_reports_the_kernels_error(device_flavour):
    """Device mode does not implement isochronous URBs: -EXDEV, no data, per-packet status 0."""
    with opened(device_flavour, "ss") as (ctx, handle):
        handle.setInterfaceAltSetting(0, 1)
        done = []
        t = handle.getTransfer(iso_packets=4)
        t.setIsochronous(0x82, 4 * 1024, callback=done.append, timeout=5000)
        t.submit()
        handle_until(ctx, lambda: done)
        assert t.getStatus() == usb1.TRANSFER_ERROR
        assert [p["actual_length"] for p in t.getISOSetupList()] == [0] * 4
        assert [status for status, _ in t.iterISO()] == [usb1.TRANSFER_COMPLETED] * 4
        handle.setInterfaceAltSetting(0, 0)
        assert len(handle.bulkRead(0x81, 512, timeout=5000)) == 512  # the connection survives
