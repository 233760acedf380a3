"""The virtual server's mDNS advertisement (``--mdns`` / ``SimServer(mdns=True)``), on 127.0.0.1 only.

Loopback multicast is shared by every process on the machine, so each test that must find exactly
one server advertises a service type of its own; the one test on the real ``_usbip._tcp`` type
picks its server out by name.
"""

from __future__ import annotations

import functools
import itertools
import os
import re
import threading
from typing import Set

import pytest

zeroconf = pytest.importorskip("zeroconf", reason="pip install zeroconf")

from conftest import start_sim_process, stop_sim_process  # noqa: E402
from usbip_backend import discovery  # noqa: E402
from usbip_backend.client import import_device, list_devices  # noqa: E402
from usbip_backend.discovery import SERVICE_TYPE, discover, resolve_single_server  # noqa: E402
from usbip_backend.sim import MdnsError, SimServer, stock_devices, txt_record  # noqa: E402

LOOPBACK = ["127.0.0.1"]
#: The keys of the ESP32 bridge's TXT record, in its order.
BRIDGE_KEYS = ["transport", "state", "count", "busid", "vid", "pid", "target", "board_id"]
#: The stock device set (loopback acm hid iso) as the sim advertises it.
STOCK_TXT = {"transport": "tcp", "state": "idle", "count": "4", "busid": "multi", "vid": "0x1209",
             "pid": "0x0001", "target": "sim"}

_counter = itertools.count()


def unique_type() -> str:
    """A service type of this test's own (see the module docstring)."""
    return f"_s{os.getpid() % 100000:05d}-{next(_counter)}._tcp.local."


def start_advertised_sim(*extra_args: str):
    """``python -m usbip_backend.sim --mdns``; returns (proc, port, service type, instance name)."""
    proc, port = start_sim_process("--mdns", *extra_args)
    line = proc.stdout.readline()  # printed once the service is registered
    match = re.fullmatch(r"MDNS (\S+) (.+)\n", line)
    if match is None:
        stop_sim_process(proc)
        raise AssertionError(f"expected 'MDNS <type> <name>', got {line!r}")
    return proc, port, match.group(1), match.group(2)


class _Watch:
    """A zeroconf service listener that notes names as they come and go."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.added: Set[str] = set()
        self.removed: Set[str] = set()

    def add_service(self, zc, type_: str, name: str) -> None:
        with self.cond:
            self.added.add(name)
            self.cond.notify_all()

    def update_service(self, zc, type_: str, name: str) -> None:
        pass

    def remove_service(self, zc, type_: str, name: str) -> None:
        with self.cond:
            self.removed.add(name)
            self.cond.notify_all()

    def wait(self, which: Set[str], name: str, timeout: float = 10.0) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: name in which, timeout)


@pytest.mark.timeout(60)
def test_sim_process_advertises_usbip_tcp_on_loopback_with_the_bridges_txt_keys():
    proc, port, stype, name = start_advertised_sim()
    try:
        assert stype == SERVICE_TYPE
        assert re.fullmatch(r"usbip-sim-[0-9a-f]{6}", name)
        servers = [s for s in discover(timeout=2.0, interfaces=LOOPBACK) if s.name == name]
        assert len(servers) == 1, servers
        server = servers[0]
        assert server.port == port
        assert server.address == "127.0.0.1" and server.addresses == ("127.0.0.1",)
        assert server.host == f"{name}.local"  # usbip-xxxxxx.local, as the bridge's
        assert list(server.properties) == BRIDGE_KEYS
        board_id = server.properties["board_id"]
        assert re.fullmatch(r"[0-9a-f]{6}", board_id) and name.endswith(board_id)
        assert {k: v for k, v in server.properties.items() if k != "board_id"} == STOCK_TXT
        # what discovery found is the server: its device list comes from there
        assert len(list_devices(server.address, server.port, timeout=5)) == 4
    finally:
        stop_sim_process(proc)


@pytest.mark.timeout(60)
def test_get_backend_without_host_finds_the_sim(monkeypatch):
    usb_core = pytest.importorskip("usb.core")
    import usb.util

    from usbip_backend.backend import get_backend

    proc, port, stype, name = start_advertised_sim("--mdns-type", unique_type(), "--devices", "loopback,acm")
    try:
        info = resolve_single_server(timeout=2.0, interfaces=LOOPBACK, service_type=stype)
        assert (info.name, info.address, info.port) == (name, "127.0.0.1", port)
        assert info.properties["count"] == "2" and info.properties["busid"] == "multi"
        # get_backend(None) resolves with resolve_single_server(); keep that on loopback too
        monkeypatch.setattr(discovery, "resolve_single_server",
                            functools.partial(resolve_single_server, timeout=2.0, interfaces=LOOPBACK,
                                              service_type=stype))
        with get_backend(timeout=5.0) as backend:
            found = list(usb_core.find(find_all=True, backend=backend))
            assert sorted((d.idVendor, d.idProduct) for d in found) == [(0x1209, 0x0001), (0x1209, 0x0002)]
            for dev in found:
                usb.util.dispose_resources(dev)
    finally:
        stop_sim_process(proc)


@pytest.mark.timeout(60)
def test_every_front_end_asks_mdns_on_the_interfaces_it_is_given(monkeypatch):
    """get_backend, usb1.USBContext and aio.Context with host=None and mdns_interfaces: mDNS
    asks on those addresses only (here 127.0.0.1; the service type is the test's own)."""
    import asyncio

    from usbip_backend import aio, usb1
    from usbip_backend.backend import get_backend

    proc, port, stype, _name = start_advertised_sim("--mdns-type", unique_type(), "--devices", "loopback")
    asked = []

    def resolve(timeout=2.0, interfaces=None, service_type=SERVICE_TYPE):
        asked.append(interfaces)
        return resolve_single_server(timeout=2.0, interfaces=interfaces, service_type=stype)

    monkeypatch.setattr(discovery, "resolve_single_server", resolve)
    try:
        with get_backend(timeout=5.0, mdns_interfaces=LOOPBACK) as backend:
            assert [d.busid for d in backend.enumerate_devices()] == ["1-1"]
        with usb1.USBContext(mdns_interfaces=LOOPBACK) as ctx:
            assert (ctx.host, ctx.port) == ("127.0.0.1", port)
            assert [(d.getVendorID(), d.getProductID()) for d in ctx.getDeviceList()] == [(0x1209, 0x0001)]

        async def main():
            async with aio.Context(mdns_interfaces=LOOPBACK) as actx:
                return actx.host, actx.port, [d.vendor_id for d in actx]
        assert asyncio.run(main()) == ("127.0.0.1", port, [0x1209])
    finally:
        stop_sim_process(proc)
    assert asked == [LOOPBACK] * 3


@pytest.mark.timeout(60)
def test_stopping_the_sim_withdraws_the_service():
    stype = unique_type()
    watch = _Watch()
    proc, _port, _stype, name = start_advertised_sim("--mdns-type", stype, "--mdns-name", "bench sim")
    full = f"{name}.{stype}"
    zc = zeroconf.Zeroconf(interfaces=LOOPBACK, ip_version=zeroconf.IPVersion.V4Only)
    browser = zeroconf.ServiceBrowser(zc, stype, watch)
    try:
        assert name == "bench sim"
        assert watch.wait(watch.added, full), "the browser never saw the sim"
        stop_sim_process(proc)
        assert proc.returncode == 0
        assert watch.wait(watch.removed, full), "no goodbye: the browser still lists the stopped sim"
    finally:
        browser.cancel()
        zc.close()
        if proc.poll() is None:
            stop_sim_process(proc)
    assert discover(timeout=1.0, interfaces=LOOPBACK, service_type=stype) == []


@pytest.mark.timeout(60)
def test_txt_state_follows_imports_in_process():
    stype = unique_type()
    with SimServer(stock_devices(["loopback"]), mdns=True, mdns_type=stype) as server:
        advertiser = server.mdns
        assert advertiser is not None and advertiser.service_type == stype
        props = advertiser.properties
        assert list(props) == BRIDGE_KEYS
        assert {k: props[k] for k in ("state", "count", "busid", "vid", "pid")} == \
               {"state": "idle", "count": "1", "busid": "1-1", "vid": "0x1209", "pid": "0x0001"}
        conn = import_device("127.0.0.1", server.port, "1-1", timeout=5)
        try:
            assert advertiser.wait_published(lambda p: p["state"] == "busy", timeout=10)
            [found] = discover(timeout=1.5, interfaces=LOOPBACK, service_type=stype)
            assert (found.port, found.properties["state"]) == (server.port, "busy")
        finally:
            conn.close()
        assert advertiser.wait_published(lambda p: p["state"] == "idle", timeout=10)
        server.unplug("1-1")
        assert advertiser.wait_published(lambda p: p["count"] == "0", timeout=10)
        assert advertiser.properties["busid"] == ""
    assert server.mdns is None  # stopped: withdrawn


def test_txt_record_from_the_devices():
    one = stock_devices(["acm"])
    assert txt_record(one, set()) == {"transport": "tcp", "state": "idle", "count": "1", "busid": "1-1",
                                      "vid": "0x1209", "pid": "0x0002", "target": "sim"}
    several = stock_devices(["loopback", "acm"], count=2)
    assert txt_record(several, {"2-2"})["state"] == "busy"
    assert txt_record(several, set())["busid"] == "multi" and txt_record(several, set())["count"] == "4"
    assert txt_record([], set())["count"] == "0"


@pytest.mark.timeout(30)
def test_advertising_on_a_name_is_refused_and_leaves_nothing_running():
    server = SimServer(stock_devices(["loopback"]), mdns=True, mdns_interfaces=["eth0"])
    with pytest.raises(MdnsError, match="not an IP address"):
        server.start()
    assert server.mdns is None and server._listener is None
