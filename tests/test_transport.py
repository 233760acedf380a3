"""Secure transports: TLS through a real TLS terminator, ``connect=`` callables (a socketpair
bridged to the server, a minimal socket-like object, a command's stdio), and how each fails.

The terminator is ``tools/bench/tlsproxy.py`` (asyncio's TLS, stunnel's job) in its own process
in front of the virtual server; certificates are the test CA's in ``tests/certs`` (see its
README). Also here: the OP_REP_DEVLIST parser the client and the codec share, and
``get_backend``'s positional parameters.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import importlib.util
import os
import select
import socket
import ssl
import struct
import subprocess
import sys
import threading
import time
from typing import Iterator, List, Optional

import pytest
import usb.core
import usb.util

from conftest import HERE, ROOT
from usbip_backend import aio, get_backend, usb1
from usbip_backend import protocol as P
from usbip_backend.client import (
    TlsError, command_connector, connect as client_connect, import_device, list_devices,
)
from usbip_backend.device import open_device
from usbip_backend.engine import transport
from usbip_backend.errors import ConnectionLostError, ImportRefusedError, ProtocolError, UsbipTimeoutError
from usbip_backend.sim.devices import pattern

CERTS = os.path.join(HERE, "certs")
CA = os.path.join(CERTS, "ca.pem")
BENCH = os.path.join(ROOT, "tools", "bench")
PROXY = os.path.join(BENCH, "tlsproxy.py")
VID, PID_LOOPBACK = 0x1209, 0x0001
BULK = P.TransferType.BULK
CONTROL = P.TransferType.CONTROL
GET_DEVICE_DESCRIPTOR = (0x80, 6, 0x0100, 0, 18)

# The least ``connect=`` may return (recv, sendall, close): the benchmark's, loaded by path.
_spec = importlib.util.spec_from_file_location("barestream", os.path.join(BENCH, "barestream.py"))
assert _spec is not None and _spec.loader is not None
_barestream = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_barestream)
BareStream = _barestream.BareStream

#: A command for command_connector: what ``ssh -W %h:%p jumphost`` does, minus ssh: connect
#: to argv[1]:argv[2] and carry stdin to it and it to stdout, exiting when it closes.
RELAY = r"""
import os, socket, sys, threading
s = socket.create_connection((sys.argv[1], int(sys.argv[2])))
def up():
    while True:
        data = os.read(0, 65536)
        if not data:
            break
        s.sendall(data)
    s.shutdown(socket.SHUT_WR)
threading.Thread(target=up, daemon=True).start()
while True:
    data = s.recv(65536)
    if not data:
        break
    view = memoryview(data)
    while view:
        view = view[os.write(1, view):]
"""


def client_context(**certs: str) -> ssl.SSLContext:
    """What a user of a private CA passes as ``ssl=``: the default checks, our CA trusted."""
    ctx = ssl.create_default_context(cafile=CA)
    if certs:
        ctx.load_cert_chain(os.path.join(CERTS, certs["cert"]), os.path.join(CERTS, certs["key"]))
    return ctx


class Terminator:
    """tools/bench/tlsproxy.py in its own process: TLS (or plain, ``cert=None``) on 127.0.0.1 in
    front of ``target``."""

    def __init__(self, target, cert: Optional[str] = "server", client_ca: bool = False) -> None:
        args = [sys.executable, PROXY, "--target", f"{target[0]}:{target[1]}"]
        if cert:
            args += ["--cert", os.path.join(CERTS, f"{cert}.pem"), "--key", os.path.join(CERTS, f"{cert}.key")]
        if client_ca:
            args += ["--client-ca", CA]
        self.proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, text=True)
        ready, _, _ = select.select([self.proc.stdout], [], [], 30)
        line = self.proc.stdout.readline() if ready else ""
        if not line.startswith("LISTENING"):
            self.close()
            raise RuntimeError(f"TLS terminator did not start: {line!r}")
        self.port = int(line.split()[2])

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(10)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()  # EOF on stdin ends it
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()
        for f in (self.proc.stdin, self.proc.stdout):
            if not f.closed:
                f.close()


@pytest.fixture(scope="module")
def tls_port(_shared_sim_process):
    term = Terminator(_shared_sim_process)
    yield term.port
    term.close()


@contextlib.contextmanager
def backend(port: int, **kw) -> Iterator:
    be = get_backend("127.0.0.1", port, busids=["1-1"], **kw)
    try:
        dev = usb.core.find(backend=be, idVendor=VID, idProduct=PID_LOOPBACK)
        assert dev is not None, f"loopback device not found (skipped: {be.skipped})"
        dev.set_configuration()
        yield be, dev
        usb.util.dispose_resources(dev)
    finally:
        be.close()


def exercise(dev) -> None:
    """Control and bulk transfers of every kind the loopback device has, checked."""
    desc = dev.ctrl_transfer(*GET_DEVICE_DESCRIPTOR)
    assert len(desc) == 18 and desc[1] == 1 and desc[8] | desc[9] << 8 == VID
    dev.ctrl_transfer(0x40, 0x5B, 0, 0, b"over the wire")  # vendor write, read back
    assert bytes(dev.ctrl_transfer(0xC0, 0x5C, 0, 0, 64)) == b"over the wire"
    assert dev.write(0x01, b"ping" * 100, 2000) == 400  # loopback OUT -> IN
    assert bytes(dev.read(0x81, 4096, 2000)) == b"ping" * 100
    assert bytes(dev.read(0x82, 16384, 2000)) == pattern(16384)  # source
    assert dev.write(0x02, pattern(16384), 2000) == 16384  # sink (halts on a wrong byte)


# -- TLS ------------------------------------------------------------------------------------------
@pytest.mark.timeout(60)
def test_pyusb_over_tls_does_control_and_bulk(sim_server, tls_port):
    with backend(tls_port, ssl=client_context()) as (be, dev):
        exercise(dev)
        conn = be.devices[0].conn
        assert conn.sock.family == socket.AF_UNIX  # the engine's end of the TLS relay


@pytest.mark.timeout(30)
def test_default_context_refuses_the_test_ca_clearly(sim_server, tls_port):
    t0 = time.monotonic()
    with pytest.raises(TlsError) as info:
        list_devices("127.0.0.1", tls_port, ssl=True)
    assert "certificate verify failed: unable to get local issuer certificate" in str(info.value)
    assert info.value.verify_message == "unable to get local issuer certificate"
    assert isinstance(info.value, ConnectionLostError)
    be = get_backend("127.0.0.1", tls_port, ssl=True)
    try:
        with pytest.raises(usb.core.USBError) as uinfo:
            usb.core.find(backend=be)
    finally:
        be.close()
    assert uinfo.value.errno == errno.EIO and "certificate verify failed" in str(uinfo.value)
    assert "no such device" not in str(uinfo.value)
    assert time.monotonic() - t0 < 10


@pytest.mark.timeout(30)
def test_certificate_for_another_name_is_refused(sim_server):
    term = Terminator(sim_server, cert="other")  # a valid certificate, for other.invalid
    try:
        with pytest.raises(TlsError, match="IP address mismatch"):
            list_devices("127.0.0.1", term.port, ssl=client_context())
        # The name it is for, reached through connect=: accepted.
        to_proxy = lambda host, port, timeout: socket.create_connection(("127.0.0.1", port), timeout)  # noqa: E731
        assert list_devices("other.invalid", term.port, ssl=client_context(), connect=to_proxy)
    finally:
        term.close()


@pytest.mark.timeout(30)
def test_dns_name_in_certificate(sim_server, tls_port):
    assert "1-1" in [d.busid for d in list_devices("localhost", tls_port, ssl=client_context())]


@pytest.mark.timeout(30)
def test_tls_to_a_plain_server_fails_clearly(sim_server):
    with pytest.raises(TlsError, match="is a TLS terminator listening on that port"):
        list_devices(*sim_server, ssl=client_context(), timeout=5)


@pytest.mark.timeout(30)
def test_tls_handshake_is_bounded_by_the_timeout():
    silent = socket.create_server(("127.0.0.1", 0))  # connects (backlog), never answers
    try:
        t0 = time.monotonic()
        with pytest.raises(UsbipTimeoutError, match="TLS handshake with .* timed out"):
            list_devices("127.0.0.1", silent.getsockname()[1], ssl=client_context(), timeout=0.3)
        assert time.monotonic() - t0 < 3
    finally:
        silent.close()


@pytest.mark.timeout(30)
def test_client_certificate(sim_server):
    term = Terminator(sim_server, client_ca=True)
    try:
        devs = list_devices("127.0.0.1", term.port, ssl=client_context(cert="client.pem", key="client.key"))
        assert "1-1" in [d.busid for d in devs]
        with pytest.raises(ConnectionLostError, match="server closed the connection"):
            list_devices("127.0.0.1", term.port, ssl=client_context())
    finally:
        term.close()


@pytest.mark.timeout(30)
def test_refusal_after_the_handshake_is_named():
    """TLS 1.3 checks a client certificate after the client's handshake is done: the refusal is
    an alert on the first read, which the relay reports (asyncio's terminator drops the
    connection without sending it; OpenSSL's own server, as stunnel uses, sends it)."""
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(os.path.join(CERTS, "server.pem"), os.path.join(CERTS, "server.key"))
    server_ctx.load_verify_locations(CA)
    server_ctx.verify_mode = ssl.CERT_REQUIRED
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        conn, _ = listener.accept()
        try:
            with server_ctx.wrap_socket(conn, server_side=True) as tls:
                tls.recv(1)
        except (ssl.SSLError, OSError):
            pass
        finally:
            conn.close()

    t = threading.Thread(target=serve, name="test-tls-server")
    t.start()
    try:
        with pytest.raises(ConnectionLostError, match="TLS connection failed: tlsv13 alert certificate required"):
            list_devices("127.0.0.1", listener.getsockname()[1], ssl=client_context())
    finally:
        t.join(10)
        listener.close()


@pytest.mark.timeout(60)
def test_big_bulk_transfers_over_tls_are_intact(sim_server, tls_port):
    with backend(tls_port, ssl=client_context()) as (be, dev):
        for size in (1 << 20, 4 << 20):
            buf = usb.util.create_buffer(size)
            assert dev.read(0x82, buf, 10000) == size
            assert bytes(buf) == pattern(size)
            assert dev.write(0x02, pattern(size), 10000) == size
        data = os.urandom(1 << 20)
        assert dev.write(0x01, data, 10000) == len(data)
        got = bytearray()
        while len(got) < len(data):
            got += dev.read(0x81, 1 << 20, 10000)
        assert got == data


@pytest.mark.timeout(60)
def test_many_urbs_in_flight_over_tls(sim_server, tls_port):
    conn = import_device("127.0.0.1", tls_port, "1-1", ssl=client_context())
    try:
        conn.control_transfer(0x00, 9, 1, 0, b"", 5.0)  # SET_CONFIGURATION(1)
        setup = P.pack_setup(*GET_DEVICE_DESCRIPTOR)
        urbs = []
        for i in range(300):
            if i % 3:
                urbs.append(conn.submit(BULK, 0x82, length=16384 + i))
            else:
                urbs.append(conn.submit(CONTROL, 0x80, setup=setup, length=18))
        assert conn.in_flight > 0
        for i, urb in enumerate(urbs):
            urb.wait(20)
            if i % 3:
                assert bytes(urb.in_data) == pattern(16384 + i)
            else:
                assert urb.actual_length == 18
    finally:
        conn.close()


@pytest.mark.timeout(60)
def test_tls_terminator_dying_mid_transfer_fails_promptly(sim_server):
    term = Terminator(sim_server)
    try:
        with backend(term.port, ssl=client_context()) as (be, dev):
            pending = import_device("127.0.0.1", term.port, "1-2", ssl=client_context())
            try:
                urb = pending.submit(BULK, 0x81, length=64)  # the CDC echo: no data until written
                moving = threading.Event()
                failed: List[tuple] = []

                def reader() -> None:
                    buf = usb.util.create_buffer(1 << 20)
                    try:
                        while True:
                            dev.read(0x82, buf, 10000)
                            moving.set()
                    except usb.core.USBError as exc:
                        failed.append((exc, time.monotonic()))

                t = threading.Thread(target=reader, name="test-bulk-reader")
                t.start()
                try:
                    assert moving.wait(10)
                    killed = time.monotonic()
                    term.kill()
                finally:
                    t.join(15)
                assert failed, "the bulk reads went on after the terminator died"
                exc, when = failed[0]
                assert exc.errno == errno.ENODEV and "connection is gone" in str(exc)
                assert when - killed < 3
                with pytest.raises(ConnectionLostError):
                    urb.wait(5)
                assert time.monotonic() - killed < 5
            finally:
                pending.close()
    finally:
        term.close()


@pytest.mark.timeout(60)
def test_usb1_context_over_tls(sim_server, tls_port):
    with usb1.USBContext(host="127.0.0.1", port=tls_port, busids=["1-1"], ssl=client_context()) as ctx:
        (device,) = ctx.getDeviceList()
        with device.open() as handle:
            handle.setConfiguration(1)
            assert len(handle.controlRead(*GET_DEVICE_DESCRIPTOR)) == 18
            assert handle.bulkRead(0x82, 8192, 2000) == pattern(8192)


@pytest.mark.timeout(60)
def test_open_device_over_tls(sim_server, tls_port):
    dev = open_device("127.0.0.1", tls_port, "1-1", ssl=client_context())
    try:
        buf = bytearray(18)
        assert dev.control(0x80, 6, 0x0100, 0, buf, 5.0) == 18
    finally:
        dev.close()


@pytest.mark.timeout(60)
def test_aio_over_tls_reads_on_the_loop(sim_server, tls_port):
    async def main() -> None:
        async with aio.Context("127.0.0.1", port=tls_port, busids=["1-1"], ssl=client_context()) as ctx:
            async with await ctx.device_get(vendor_id=VID, product_id=PID_LOOPBACK).open() as device:
                assert device._loop is not None  # the relayed socket is watched by the loop
                await device.set_configuration(1)
                got = await asyncio.gather(*(device.read(0x80, 6, 0x0100, 0, 18, 5.0) for _ in range(64)))
                assert all(len(g) == 18 for g in got)
                ep = device.interface_claim(0).open(0x82)
                total = 0
                async for chunk in ep.stream(2 << 20, chunk=65536, window=16, timeout=10.0):
                    assert bytes(chunk) == pattern(len(chunk))
                    total += len(chunk)
                assert total == 2 << 20

    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(main())
        loop.run_until_complete(loop.shutdown_default_executor())
    finally:
        loop.close()


# -- connect= -------------------------------------------------------------------------------------
class Bridge:
    """One end of a socketpair wired to the server by two threads (what ``ssh -W`` on the other
    end of a socketpair would be); the client gets the other end."""

    def __init__(self, host: str, port: int) -> None:
        self.mine, self.theirs = socket.socketpair()
        self.tcp = socket.create_connection((host, port), 5)
        self.threads = [threading.Thread(target=self._pump, args=(a, b), name="test-bridge")
                        for a, b in ((self.mine, self.tcp), (self.tcp, self.mine))]
        for t in self.threads:
            t.start()

    @staticmethod
    def _pump(a: socket.socket, b: socket.socket) -> None:
        try:
            while True:
                data = a.recv(65536)
                if not data:
                    break
                b.sendall(data)
        except OSError:
            pass
        finally:
            try:
                b.shutdown(socket.SHUT_WR)
            except OSError:
                pass

    def close(self) -> None:
        for t in self.threads:  # they end once the client closed its end
            t.join(10)
            assert not t.is_alive()
        self.mine.close()
        self.tcp.close()


@pytest.mark.timeout(60)
def test_connect_with_a_socketpair_bridged_to_the_server(sim_server):
    bridges: List[Bridge] = []

    def connect(host: str, port: int, timeout: Optional[float]) -> socket.socket:
        assert (host, port) == sim_server and timeout == 5.0
        bridges.append(Bridge(host, port))
        return bridges[-1].theirs

    try:
        with backend(sim_server[1], connect=connect) as (be, dev):
            exercise(dev)
            assert be.devices[0].conn.sock is bridges[-1].theirs  # a kernel socket: no relay
    finally:
        for b in bridges:
            b.close()
    assert len(bridges) == 1  # the import (busids given: no device list)


@pytest.mark.timeout(60)
def test_connect_with_a_bare_socket_like_object_is_relayed(sim_server):
    def connect(host: str, port: int, timeout: Optional[float]) -> BareStream:
        return BareStream(socket.create_connection((host, port), timeout))

    with backend(sim_server[1], connect=connect) as (be, dev):
        exercise(dev)
        buf = usb.util.create_buffer(2 << 20)
        assert dev.read(0x82, buf, 10000) == len(buf) and bytes(buf) == pattern(len(buf))
        assert be.devices[0].conn.sock.family == socket.AF_UNIX


@pytest.mark.timeout(30)
def test_connect_failures_are_clear(sim_server):
    def refuses(host: str, port: int, timeout: Optional[float]) -> socket.socket:
        raise OSError(errno.EHOSTUNREACH, "no route to jumphost")

    with pytest.raises(ConnectionLostError, match="through .*refuses.*no route to jumphost"):
        list_devices(*sim_server, connect=refuses)

    def slow(host: str, port: int, timeout: Optional[float]) -> socket.socket:
        raise socket.timeout("timed out")

    with pytest.raises(UsbipTimeoutError, match="timed out"):
        list_devices(*sim_server, connect=slow)
    with pytest.raises(TypeError, match="socket-like"):
        list_devices(*sim_server, connect=lambda h, p, t: 42)
    with pytest.raises(TypeError, match="ssl= takes"):
        client_connect(*sim_server, ssl="yes")  # type: ignore[arg-type]


@pytest.mark.timeout(60)
def test_tls_inside_a_connect_stream(sim_server, tls_port):
    def connect(host: str, port: int, timeout: Optional[float]) -> BareStream:
        return BareStream(socket.create_connection((host, port), timeout))

    with backend(tls_port, ssl=client_context(), connect=connect) as (be, dev):
        exercise(dev)


# -- command_connector ---------------------------------------------------------------------------
@pytest.mark.timeout(60)
def test_command_connector_carries_the_stream(sim_server):
    via = command_connector([sys.executable, "-c", RELAY, "%h", "%p"])
    with backend(sim_server[1], connect=via) as (be, dev):
        exercise(dev)
        sock = be.devices[0].conn.sock
        command = sock._owner
        assert sock.family == socket.AF_UNIX and command.proc.poll() is None
    assert command.proc.returncode is not None  # reaped when the connection closed


@pytest.mark.timeout(60)
def test_command_connector_string_template_and_tls(sim_server, tls_port):
    template = f"{sys.executable} -c '{RELAY}' %h %p"
    with backend(tls_port, ssl=client_context(), connect=command_connector(template)) as (be, dev):
        exercise(dev)


@pytest.mark.timeout(60)
def test_command_over_pipes(sim_server):
    """The pipe form (platforms where a socket cannot be a process's stdio), relayed."""
    def connect(host: str, port: int, timeout: Optional[float]):
        return transport._spawn([sys.executable, "-c", RELAY, host, str(port)], pipes=True)

    with backend(sim_server[1], connect=connect) as (be, dev):
        exercise(dev)


@pytest.mark.timeout(30)
def test_command_that_exits_says_why(sim_server):
    fails = command_connector([sys.executable, "-c", "import sys; sys.stderr.write('ssh: connect to "
                               "host jumphost port 22: Connection refused\\n'); sys.exit(255)"])
    with pytest.raises(ConnectionLostError, match="exited with status 255: ssh: connect to host jumphost port 22"):
        list_devices(*sim_server, connect=fails)
    with pytest.raises(ConnectionLostError, match="through command .*FileNotFoundError"):
        list_devices(*sim_server, connect=command_connector(["/nonexistent/ssh", "-W", "%h:%p", "jump"]))
    with pytest.raises(ConnectionLostError, match="would be read as an option"):
        list_devices("-oProxyCommand=evil", 1, connect=command_connector("ssh -W %h:%p jump"))


def test_command_template_expansion():
    assert transport._expand("%h:%p", "10.0.0.5", 3240) == "10.0.0.5:3240"
    assert transport._expand("100%%-%h", "h", 1) == "100%-h"
    assert transport._expand("%x%", "h", 1) == "%x%"
    with pytest.raises(ValueError):
        command_connector("")


# -- OP_REP_DEVLIST: one parser, bounded ------------------------------------------------------------
GOOD = P.UsbDevice("/sys/x", "1-1", 1, 2, P.Speed.HIGH, VID, 1, 0x100, 0, 0, 0, 1, 1, 2,
                   (P.UsbInterface(3, 0, 0), P.UsbInterface(0xFF, 1, 2)))


@contextlib.contextmanager
def replies(raw: bytes) -> Iterator[int]:
    """A server that answers one OP_REQ_DEVLIST with ``raw`` and hangs up."""
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        try:
            conn, _ = listener.accept()
        except OSError:
            return
        with conn:
            got = b""
            while len(got) < 8:
                chunk = conn.recv(8 - len(got))
                if not chunk:
                    return
                got += chunk
            conn.sendall(raw)

    t = threading.Thread(target=serve, name="test-devlist-server")
    t.start()
    try:
        yield listener.getsockname()[1]
    finally:
        t.join(10)
        listener.close()


def devlist(*devices: P.UsbDevice, count: Optional[int] = None, status: int = 0) -> bytes:
    raw = P.pack_rep_devlist(list(devices), status)
    if count is not None:
        raw = raw[:8] + struct.pack(">I", count) + raw[12:]
    return raw


@pytest.mark.timeout(30)
def test_client_and_codec_share_the_devlist_parser():
    raw = devlist(GOOD, GOOD)
    assert P.unpack_rep_devlist(raw) == [GOOD, GOOD]
    with replies(raw) as port:
        assert list_devices("127.0.0.1", port) == [GOOD, GOOD]


@pytest.mark.timeout(30)
@pytest.mark.parametrize("raw, error, message", [
    (devlist(count=0xFFFFFFFF), ProtocolError, "claims 4294967295 devices"),
    (devlist(P.UsbDevice("/x", "1-1", 1, 2, 3, 1, 2, 3, 0, 0, 0, 1, 1, 200)), ProtocolError,
     "'1-1' claims 200 interfaces"),
    (devlist(GOOD)[:-3], ProtocolError, "interfaces of 1-1"),
    (devlist(GOOD, count=2), ProtocolError, "device record 1"),
    (devlist(status=1), ImportRefusedError, "refused the device list"),
])
def test_hostile_devlists_fail_clearly(raw, error, message):
    with replies(raw) as port:
        with pytest.raises(error, match=message):
            list_devices("127.0.0.1", port, timeout=5)
    with pytest.raises(error, match=message if error is ImportRefusedError or "claims" in message else "truncated"):
        P.unpack_rep_devlist(raw)


# -- get_backend as 0.0.1 took it ----------------------------------------------------------------
def test_get_backend_takes_timeout_and_pcap_by_position(tmp_path):
    be = get_backend("127.0.0.1", 3240, 2.0, None)
    assert (be.host, be.port, be.timeout, be.hook) == ("127.0.0.1", 3240, 2.0, None)
    be.close()
    be = get_backend("127.0.0.1", 3240, 2.0, str(tmp_path / "cap.pcapng"))
    assert be.hook is not None
    be.close()
    with pytest.raises(TypeError):
        get_backend("127.0.0.1", 3240, 2.0, None, ["1-1"])  # type: ignore[misc]
