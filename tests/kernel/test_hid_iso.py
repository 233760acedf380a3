"""HID keyboard gadget (interrupt IN with the endpoint's interval) and isochronous on vudc."""

from __future__ import annotations

import errno
import threading

import pytest
import usb.core

from .peer import open_device

#: the boot keyboard report descriptor the guest gives f_hid (Documentation/usb/gadget_hid.rst)
KEYBOARD_REPORT_DESC = bytes.fromhex(
    "05010906a101050719e029e71500250175019508810295017508810395057501050819012905910295017503"
    "910395067508150025650507190029658100c0")


def test_hid_report_descriptor(flavour):
    with open_device(flavour, "hid") as dev:
        intf = dev.get_active_configuration()[(0, 0)]
        assert (intf.bInterfaceClass, intf.bInterfaceSubClass, intf.bInterfaceProtocol) == (3, 1, 1)
        hid_desc = bytes(intf.extra_descriptors)
        assert hid_desc[1] == 0x21 and hid_desc[6] == 0x22  # HID descriptor naming a report descriptor
        length = hid_desc[7] | hid_desc[8] << 8
        report = bytes(dev.ctrl_transfer(0x81, 0x06, 0x2200, 0, length, timeout=5000))  # GET_DESCRIPTOR(Report)
        assert report == KEYBOARD_REPORT_DESC
        ep = intf[0]
        assert ep.bEndpointAddress == 0x81 and ep.bInterval == 4


def _send_report(flavour, report: bytes) -> None:
    """Queue one report on the guest's /dev/hidgN with a single write(), in the background: the
    write blocks until the host has taken the previous report (and its zero-length packet)."""
    esc = "".join("\\%03o" % b for b in report)
    flavour.peer.guest(f"printf '{esc}' > /tmp/hid.report; "
                       f"( timeout 20 dd if=/tmp/hid.report of={flavour.hidg} bs=8 count=1 ) >/dev/null 2>&1 &")


def _read_report(dev) -> bytes:
    """The next report. f_hid follows every full-size (8-byte) report with a zero-length packet,
    which surfaces as an empty interrupt read; a HID host skips those (kernel-findings.md)."""
    for _ in range(3):
        data = bytes(dev.read(0x81, 8, timeout=10000))
        if data:
            return data
    raise AssertionError("only zero-length packets on the interrupt IN endpoint")


def test_hid_report_from_guest_arrives_on_interrupt_in(flavour):
    with open_device(flavour, "hid") as dev:
        got = {}

        def poll() -> None:  # the read is pending before the guest sends, as a keyboard poller's is
            try:
                got["down"] = _read_report(dev)
                got["up"] = _read_report(dev)
            except usb.core.USBError as exc:
                got["error"] = exc

        reader = threading.Thread(target=poll, name="hid-poll")
        reader.start()
        try:
            _send_report(flavour, bytes([0, 0, 4, 0, 0, 0, 0, 0]))  # 'a' down
            _send_report(flavour, bytes(8))  # all keys up (its write waits for the first report)
        finally:
            reader.join(60)
        assert not reader.is_alive()
        assert "error" not in got, got.get("error")
        assert got == {"down": bytes([0, 0, 4, 0, 0, 0, 0, 0]), "up": bytes(8)}


def test_iso_on_device_mode_is_exdev_error(device_flavour):
    with open_device(device_flavour, "ss") as dev:
        dev.set_interface_altsetting(interface=0, alternate_setting=1)
        eps = {e.bEndpointAddress: e for e in dev.get_active_configuration()[(0, 1)]}
        assert eps[0x82].bmAttributes & 3 == 1 and eps[0x02].bmAttributes & 3 == 1  # isochronous
        for call in (lambda: dev.read(0x82, 1024 * 4, timeout=5000),
                     lambda: dev.write(0x02, bytes(1024 * 4), timeout=5000)):
            with pytest.raises(usb.core.USBError) as info:
                call()
            assert not isinstance(info.value, usb.core.USBTimeoutError)
            assert info.value.errno == errno.EXDEV, info.value
            assert "EXDEV" in str(info.value) or "-18" in str(info.value), str(info.value)
        # the connection survives: back to alt 0, bulk streams again
        dev.set_interface_altsetting(interface=0, alternate_setting=0)
        assert len(dev.read(0x81, 512, timeout=5000)) == 512
