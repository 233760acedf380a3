"""Enumeration through usb.core: real descriptors and strings from the kernel's gadgets."""

from __future__ import annotations

import usb.core
import usb.util

from .peer import KINDS, open_device
from .peer import devlist
from usbip_backend import get_backend

PRODUCT = {"ss": "SourceSink", "lb": "Loopback", "acm": "ACM serial", "msc": "Mass storage",
           "hid": "HID keyboard"}
#: (bInterfaceClass, bInterfaceSubClass, bInterfaceProtocol) of interface 0 per gadget
CLASS0 = {"ss": 0xFF, "lb": 0xFF, "acm": 0x02, "msc": 0x08, "hid": 0x03}


def test_find_all_enumerates_five_devices_with_strings(flavour, kernel_peer):
    be = get_backend(flavour.host, flavour.port, timeout=10)
    try:
        devs = list(usb.core.find(find_all=True, backend=be))
        by_pid = {d.idProduct: d for d in devs}
        assert sorted(by_pid) == sorted(flavour.pids.values()), be.skipped
        prefix = "vudc" if flavour.name == "device" else "dummy"
        for kind in KINDS:
            d = by_pid[flavour.pids[kind]]
            assert (d.idVendor, d.bcdUSB, d.bMaxPacketSize0, d.bNumConfigurations) == (0x1D6B, 0x0200, 64, 1)
            assert d.speed == usb.util.SPEED_HIGH
            assert (d.manufacturer, d.product, d.serial_number) == ("usbip-test", PRODUCT[kind], f"{prefix}-{kind}")
            cfg = d[0]
            assert cfg.bConfigurationValue == 1
            assert usb.util.get_string(d, cfg.iConfiguration) == {"ss": "sourcesink", "lb": "loopback"}.get(kind, kind)
            assert cfg[(0, 0)].bInterfaceClass == CLASS0[kind]
        acm = by_pid[flavour.pids["acm"]][0]
        # CDC functional descriptors (type 0x24) stay in extra_descriptors, as with libusb1
        assert 0x24 in bytes(acm[(0, 0)].extra_descriptors)[1:2]
        assert {i.bInterfaceClass for i in acm} == {0x02, 0x0A}
        hid = by_pid[flavour.pids["hid"]][0][(0, 0)]
        assert bytes(hid.extra_descriptors)[1] == 0x21  # the HID class descriptor
        eps = {e.bEndpointAddress for e in by_pid[flavour.pids["lb"]][0][(0, 0)]}
        assert eps == {0x81, flavour.out_ep}
        if flavour.name == "stub":
            assert sorted((d.bus, d.address) for d in devs) == [(i, 2) for i in range(1, 6)]
            assert {d.port_numbers for d in devs} == {(1,)}
    finally:
        be.close()
    for kind in KINDS:
        kernel_peer.wait_available(flavour, kind)


def test_set_configuration_on_freshly_bound_stub_device(stub_flavour):
    stub_flavour.rebind("ss")
    busid = stub_flavour.busids["ss"]
    listed = {d.busid: d for d in devlist(stub_flavour.host, stub_flavour.port)}[busid]
    assert (listed.bConfigurationValue, listed.bNumInterfaces) == (0, 0)  # as "usbip bind" leaves it
    with open_device(stub_flavour, "ss", configure=False) as dev:
        try:
            dev.get_active_configuration()
            raise AssertionError("an unconfigured device reported an active configuration")
        except usb.core.USBError:
            pass
        dev.set_configuration()
        assert dev.get_active_configuration().bConfigurationValue == 1
        assert len(dev.read(0x81, 512, timeout=5000)) == 512  # SourceSink streams once configured
    listed = {d.busid: d for d in devlist(stub_flavour.host, stub_flavour.port)}[busid]
    # the stub now lists the configuration and its interface (the reset on disconnect keeps it)
    assert (listed.bConfigurationValue, listed.bNumInterfaces) == (1, 1)
    assert [(i.bInterfaceClass, i.bInterfaceSubClass) for i in listed.interfaces] == [(0xFF, 0)]


def test_find_by_vid_pid(flavour, kernel_peer):
    with get_backend(flavour.host, flavour.port, timeout=10) as be:
        dev = usb.core.find(backend=be, idVendor=0x1D6B, idProduct=flavour.pids["msc"])
        assert dev is not None and dev.product == "Mass storage"
        assert usb.core.find(backend=be, idVendor=0x1D6B, idProduct=0x7777) is None
        held = [d.busid for d in be.devices]
    for busid in held:
        kernel_peer.wait_available(flavour, next(k for k, b in flavour.busids.items() if b == busid))


def test_find_by_busid(flavour):
    with open_device(flavour, "hid", configure=False) as dev:
        assert dev.idProduct == flavour.pids["hid"] and dev.product == "HID keyboard"
