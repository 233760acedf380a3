"""OP_REQ_DEVLIST / OP_REQ_IMPORT against both kernel servers, over raw sockets with the codec."""

from __future__ import annotations

import socket


from usbip_backend import protocol as P

from .peer import devlist


def _import(host: str, port: int, busid: str):
    """Raw OP_REQ_IMPORT; returns (status, device or None, the open socket)."""
    s = socket.create_connection((host, port), timeout=10)
    s.sendall(P.pack_req_import(busid))
    f = s.makefile("rb")
    head = P.OpHeader.unpack(f.read(P.OP_COMMON_SIZE), P.OP_REP_IMPORT)
    dev = None
    if head.status == P.Status.ST_OK:
        dev = P.UsbDevice.unpack(f.read(P.USB_DEVICE_SIZE))
    f.close()
    return head.status, dev, s


def test_devlist_lists_all_five_gadgets(flavour):
    devs = devlist(flavour.host, flavour.port)
    by_busid = {d.busid: d for d in devs}
    assert sorted(by_busid) == sorted(flavour.busids.values())
    for kind, busid in flavour.busids.items():
        d = by_busid[busid]
        assert (d.idVendor, d.idProduct) == (0x1D6B, flavour.pids[kind]), kind
        assert d.speed == P.Speed.HIGH
        assert d.bNumConfigurations == 1
        assert len(d.interfaces) == d.bNumInterfaces
        if flavour.name == "device":
            # vudc never knows the configuration: always 0, no interface records
            assert (d.busnum, d.devnum, d.bConfigurationValue, d.bNumInterfaces) == (0, 0, 0, 0)
        else:
            assert d.busnum == int(busid.split("-")[0]) and d.devnum >= 2
            # as bound: unconfigured; once a client configured it, the stub lists its interfaces
            assert (d.bConfigurationValue, d.bNumInterfaces > 0) in ((0, False), (1, True))


def test_import_unknown_busid_is_nodev(flavour):
    status, dev, s = _import(flavour.host, flavour.port, "9-9")
    with s:
        assert status == P.Status.ST_NODEV and dev is None
        s.settimeout(10)
        assert s.recv(1) == b""  # the server closes after the refusal


def test_second_import_is_busy_and_device_unlisted(flavour, kernel_peer):
    busid = flavour.busids["lb"]
    status, dev, s = _import(flavour.host, flavour.port, busid)
    with s:
        assert status == P.Status.ST_OK and dev.busid == busid
        assert busid not in [d.busid for d in devlist(flavour.host, flavour.port)]
        status2, dev2, s2 = _import(flavour.host, flavour.port, busid)
        s2.close()
        assert status2 == P.Status.ST_DEV_BUSY and dev2 is None
    kernel_peer.wait_available(flavour, "lb")
    assert busid in [d.busid for d in devlist(flavour.host, flavour.port)]
