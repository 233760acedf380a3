"""Reset, busy devices, the server dropping a device, and no device resets caused by timeouts."""

from __future__ import annotations

import errno
import os
import threading
import time

import pytest
import usb.core

from .peer import open_device
from usbip_backend import get_backend
from usbip_backend.client import import_device
from usbip_backend.errors import ImportRefusedError
from usbip_backend import protocol as P


def _loopback(dev, out_ep: int, size: int = 1024) -> None:
    data = os.urandom(size)
    assert dev.write(out_ep, data, timeout=5000) == size
    assert bytes(dev.read(0x81, size, timeout=5000)) == data


def test_reset_against_the_stub_leaves_the_device_usable(stub_flavour, kernel_peer):
    before = kernel_peer.count_resets()
    with open_device(stub_flavour, "lb") as dev:
        _loopback(dev, stub_flavour.out_ep)
        dev.reset()  # hub-class SET_PORT_FEATURE(PORT_RESET): usbip-host calls usb_reset_device
        assert kernel_peer.count_resets() == before + 1
        dev.set_configuration()
        _loopback(dev, stub_flavour.out_ep)
        assert dev.product == "Loopback"


def test_reset_against_device_mode_is_a_clear_error_or_works(device_flavour):
    """vudc has no port to reset: it hands the hub-class request to the gadget, which stalls it
    (kernel-findings.md). Either way the caller gets a USBError, never a hang, and the device
    stays usable."""
    with open_device(device_flavour, "lb") as dev:
        try:
            dev.reset()
        except usb.core.USBError as exc:
            assert exc.errno == errno.EPIPE and not isinstance(exc, usb.core.USBTimeoutError), exc
        dev.set_configuration()
        _loopback(dev, device_flavour.out_ep)


def test_busy_second_client_gets_clear_error_first_keeps_working(flavour):
    busid = flavour.busids["lb"]
    with open_device(flavour, "lb") as dev:
        be2 = get_backend(flavour.host, flavour.port, busids=[busid], timeout=10)
        try:
            assert usb.core.find(backend=be2) is None
            assert "busy" in be2.skipped[busid].lower() and busid in be2.skipped[busid]
        finally:
            be2.close()
        with pytest.raises(ImportRefusedError) as info:
            import_device(flavour.host, flavour.port, busid, timeout=10).close()
        assert info.value.status == P.Status.ST_DEV_BUSY and busid in str(info.value)
        _loopback(dev, flavour.out_ep)


def _drop_device_cmd(flavour, kind: str) -> str:
    busid = flavour.busids[kind]
    if flavour.name == "device":  # take the gadget off its virtual UDC
        return f"echo '' > /sys/kernel/config/usb_gadget/v{kind}/UDC"
    return f"usbip unbind -b {busid}"  # give the device back to the hub: the stub lets go of it


def test_server_dropping_the_device_mid_transfer_gives_enodev_promptly(flavour, kernel_peer):
    be = get_backend(flavour.host, flavour.port, busids=[flavour.busids["acm"]], timeout=10)
    result = {}
    try:
        dev = usb.core.find(backend=be)
        dev.set_configuration()

        def pending_read() -> None:
            try:
                result["data"] = dev.read(0x81, 512, timeout=60000)
            except usb.core.USBError as exc:
                result["error"], result["t"] = exc, time.monotonic()

        reader = threading.Thread(target=pending_read, name="acm-pending")
        reader.start()
        try:
            # the read is in flight once a second one is: ask something of the device first
            assert dev.ctrl_transfer(0xA1, 0x21, 0, 0, 7, timeout=5000) is not None
            t0 = time.monotonic()
            kernel_peer.guest(_drop_device_cmd(flavour, "acm"))
        finally:
            reader.join(30)
        assert not reader.is_alive()
        err = result.get("error")
        assert err is not None, result
        assert err.errno == errno.ENODEV, err
        assert result["t"] - t0 < 10, "the pending read took too long to fail"
        for call in (lambda: dev.write(flavour.out_ep, b"x", timeout=5000),
                     lambda: dev.read(0x81, 64, timeout=5000),
                     lambda: dev.ctrl_transfer(0x80, 0, 0, 0, 2, timeout=5000)):
            t1 = time.monotonic()
            with pytest.raises(usb.core.USBError) as info:
                call()
            assert info.value.errno == errno.ENODEV, info.value
            assert time.monotonic() - t1 < 1.0
    finally:
        be.close()
        if flavour.name == "stub":
            kernel_peer.guest(f"usbip bind -b {flavour.busids['acm']}")
        else:
            kernel_peer.guest(f"echo {flavour.busids['acm']} > /sys/kernel/config/usb_gadget/vacm/UDC")
        kernel_peer.wait_available(flavour, "acm")


@pytest.mark.timeout(300, func_only=True)  # setup may boot the VM (see conftest.py)
def test_many_timeouts_cause_no_device_reset(stub_flavour, kernel_peer):
    """Every timeout is a CMD_UNLINK; none abandons a URB by closing the socket, which would
    make usbip-host reset the device ("reset high-speed USB device" in the kernel log)."""
    with open_device(stub_flavour, "acm") as acm:
        kernel_peer.guest(f"stty -F {stub_flavour.tty} raw -echo")
        with open_device(stub_flavour, "lb") as lb:
            before = kernel_peer.count_resets()
            for i in range(20):
                with pytest.raises(usb.core.USBTimeoutError):
                    acm.read(0x81, 512, timeout=50 + 10 * i)
                with pytest.raises(usb.core.USBTimeoutError):
                    lb.read(0x81, 512, timeout=50)
            kernel_peer.guest(f"printf still-here > {stub_flavour.tty}")
            assert bytes(acm.read(0x81, 512, timeout=10000)) == b"still-here"
            _loopback(lb, stub_flavour.out_ep)
            assert kernel_peer.count_resets() == before
