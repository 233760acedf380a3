"""Discovery against real zeroconf advertisements, kept on 127.0.0.1 (no multicast elsewhere)."""

from __future__ import annotations

import contextlib
import itertools
import os

import pytest

zeroconf = pytest.importorskip("zeroconf", reason="pip install zeroconf")

from usbip_backend.discovery import (  # noqa: E402
    SERVICE_TYPE,
    DiscoveryError,
    ServerInfo,
    discover,
    discover_usbip_servers,
    resolve_single_server,
)

LOOPBACK = ["127.0.0.1"]

#: What an ESP32 USB/IP bridge publishes in its TXT record.
ESP32_TXT = {
    "transport": "tcp",
    "state": "idle",
    "count": "2",
    "busid": "multi",
    "vid": "0x303a",
    "pid": "0x1001",
    "target": "esp32s3",
    "board_id": "a1b2c3",
}

_counter = itertools.count()


def unique_type() -> str:
    """A service type of this test's own, so tests never see each other's advertisements."""
    return f"_u{os.getpid() % 100000:05d}-{next(_counter)}._tcp.local."


@contextlib.contextmanager
def advertise(services, service_type: str = SERVICE_TYPE):
    """Register ``services`` [(instance, host, port, addresses, txt)] on 127.0.0.1 only."""
    zc = zeroconf.Zeroconf(interfaces=LOOPBACK, ip_version=zeroconf.IPVersion.V4Only)
    try:
        infos = []
        for instance, host, port, addresses, txt in services:
            info = zeroconf.ServiceInfo(
                service_type, f"{instance}.{service_type}", port=port,
                parsed_addresses=addresses, server=f"{host}.", properties=txt,
            )
            zc.register_service(info)
            infos.append(info)
        yield zc
        for info in infos:
            zc.unregister_service(info)
    finally:
        zc.close()


def test_default_service_type_is_the_esp32_bridges():
    import inspect

    assert SERVICE_TYPE == "_usbip._tcp.local."
    assert inspect.signature(discover).parameters["service_type"].default == SERVICE_TYPE
    assert inspect.signature(resolve_single_server).parameters["service_type"].default == SERVICE_TYPE


def test_discover_finds_esp32_style_advertisement():
    # Each test browses a service type of its own: loopback multicast is shared by every process
    # on the machine, so another test run advertising _usbip._tcp at the same time must not count.
    stype = unique_type()
    with advertise([("usbip-a1b2c3", "usbip-a1b2c3.local", 3240, ["127.0.0.1", "fd00::1"], ESP32_TXT)], stype):
        servers = discover(timeout=2.0, interfaces=LOOPBACK, service_type=stype)
    assert len(servers) == 1
    server = servers[0]
    assert isinstance(server, ServerInfo)
    assert server.name == "usbip-a1b2c3"
    assert server.host == "usbip-a1b2c3.local"
    assert server.port == 3240
    assert server.addresses == ("127.0.0.1", "fd00::1")  # IPv4 first, IPv6 kept
    assert server.address == "127.0.0.1"
    assert server.properties == ESP32_TXT  # every TXT key, decoded to str
    assert server.to_json()["properties"]["board_id"] == "a1b2c3"
    assert "busid=multi" in server.describe()


def test_resolve_single():
    stype = unique_type()
    with advertise([("bench", "bench-host.local", 4000, ["127.0.0.1"], {"state": "ready", "flag": None})], stype):
        server = resolve_single_server(timeout=1.5, interfaces=LOOPBACK, service_type=stype)
    assert (server.name, server.host, server.port) == ("bench", "bench-host.local", 4000)
    assert server.properties == {"state": "ready", "flag": ""}  # a key without value decodes to ""
    assert server.service_type == stype


def test_discover_usbip_servers_sorts_by_host_port_name_discover_by_name():
    import inspect

    assert inspect.signature(discover_usbip_servers).parameters["timeout"].default == 3.0  # as 0.0.1
    stype = unique_type()
    services = [
        ("alpha", "b-host.local", 3240, ["127.0.0.1"], {}),
        ("zeta", "a-host.local", 3241, ["127.0.0.1"], {}),
        ("mid", "a-host.local", 3240, ["127.0.0.1"], {}),
    ]
    # One browse per advertisement: a responder answers the same question at most once a second
    # (RFC 6762 section 6), so a second browse right after the first may hear nothing.
    with advertise(services, stype):
        by_host = discover_usbip_servers(timeout=2.0, interfaces=LOOPBACK, service_type=stype)
    assert [(s["host"], s["port"], s["name"]) for s in by_host] == [
        ("a-host.local", 3240, "mid"), ("a-host.local", 3241, "zeta"), ("b-host.local", 3240, "alpha")]
    assert all(isinstance(s, ServerInfo) for s in by_host)  # discover()'s objects, in 0.0.1's order


def test_server_info_reads_as_the_0_0_1_dict():
    s = ServerInfo("bench", "bench.local", 3240, ("192.0.2.7", "fd00::7"), {"state": "ready"}, "_usbip._tcp.local.")
    legacy = {
        "name": "bench", "host": "bench.local", "address": "192.0.2.7", "addresses": ["192.0.2.7", "fd00::7"],
        "port": 3240, "txt": {"state": "ready"}, "type": "_usbip._tcp.local.",
    }
    assert dict(s) == legacy and list(s.keys()) == list(legacy) and len(s) == 7
    assert s == legacy and legacy == s and [s] == [legacy]
    assert s["host"] == "bench.local" and s.get("port") == 3240 and s.get("nope", 5) == 5
    assert "txt" in s and "properties" not in s
    assert type(s["addresses"]) is list and type(s["txt"]) is dict and type(s["port"]) is int
    s["txt"]["state"] = "changed"  # a copy: the server info itself stays as found
    assert s.properties == {"state": "ready"}
    with pytest.raises(KeyError):
        s["properties"]
    with pytest.raises(TypeError):
        s["port"] = 1  # type: ignore[index]
    # Attributes keep their own meaning; only the mapping reads as 0.0.1 did.
    bare = ServerInfo("n", "h.local", 1)
    assert bare.address == "h.local" and bare["address"] == "" and bare["addresses"] == []
    assert s == ServerInfo("bench", "bench.local", 3240, ("192.0.2.7", "fd00::7"), {"state": "ready"})
    assert s != ServerInfo("bench", "bench.local", 3241, ("192.0.2.7", "fd00::7"), {"state": "ready"})
    assert hash(s) == hash(ServerInfo("bench", "bench.local", 3240, ("192.0.2.7", "fd00::7"), {"state": "ready"}))


def test_discovery_error_lives_in_errors():
    import usbip_backend
    from usbip_backend import errors

    assert DiscoveryError is errors.DiscoveryError is usbip_backend.DiscoveryError
    assert issubclass(DiscoveryError, errors.UsbipError)
    assert DiscoveryError("x", servers=[ServerInfo("n", "h", 1)]).servers[0].name == "n"


def test_resolve_single_with_several_lists_them():
    stype = unique_type()
    services = [
        ("alpha", "alpha.local", 3240, ["127.0.0.1"], {"busid": "1-1"}),
        ("beta", "beta.local", 3241, ["127.0.0.1"], {"busid": "2-1"}),
    ]
    with advertise(services, stype):
        with pytest.raises(DiscoveryError) as err:
            resolve_single_server(timeout=2.0, interfaces=LOOPBACK, service_type=stype)
    text = str(err.value)
    assert "2 USB/IP servers" in text and "--host" in text
    assert "alpha at 127.0.0.1:3240" in text and "beta at 127.0.0.1:3241" in text
    assert [s.name for s in err.value.servers] == ["alpha", "beta"]


def test_nothing_found_is_a_clear_error():
    stype = unique_type()
    assert discover(timeout=0.5, interfaces=LOOPBACK, service_type=stype) == []
    with pytest.raises(DiscoveryError, match="no USB/IP server answered mDNS .* --host"):
        resolve_single_server(timeout=0.5, interfaces=LOOPBACK, service_type=stype)


def test_bad_timeout_rejected():
    with pytest.raises(ValueError):
        discover(timeout=-1, interfaces=LOOPBACK)


def test_server_info_address_falls_back():
    assert ServerInfo("n", "h.local", 1).address == "h.local"
    assert ServerInfo("n", "h.local", 1, ("fe80::1%2",)).address == "fe80::1%2"
