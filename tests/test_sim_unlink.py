"""The virtual server's switchable CMD_UNLINK behaviours, checked byte for byte through raw sockets.

Deliberately independent of the client engine: the point is to pin down what the server puts on
the wire, so a client bug cannot hide a server bug. "Nothing was sent" is shown by a probe request
whose reply must be the next thing on the wire, since the server answers each request in order
and every read is bounded by the socket timeout.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from typing import Dict, Iterator, Tuple, Union

import pytest

from conftest import ROOT, start_sim_process, stop_sim_process
from test_sim import recv_exact
from usbip_backend import protocol as P
from usbip_backend.sim.__main__ import build_parser
from usbip_backend.sim.server import UNLINK_BEHAVIOURS, SimServer

TIMEOUT = 5.0
LOOPBACK = "1-1"  # stock_devices(): the loopback device is first on bus 1
EP_LOOP = 1  # bulk 0x01 OUT / 0x81 IN: 0x81 stays pending until 0x01 is written
EP_SOURCE = 2  # bulk 0x82 IN: answers at once with the source pattern
ECONNRESET = -104

Reply = Union[P.RetSubmit, P.RetUnlink]


class RawClient:
    """Imports one device over a plain socket and speaks CMD_SUBMIT / CMD_UNLINK by hand."""

    def __init__(self, port: int, busid: str) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        try:
            self.sock.sendall(P.pack_req_import(busid))
            head = P.OpHeader.unpack(recv_exact(self.sock, P.OP_COMMON_SIZE), P.OP_REP_IMPORT)
            assert head.status == P.Status.ST_OK, P.status_text(head.status)
            self.devid = P.UsbDevice.unpack(recv_exact(self.sock, P.USB_DEVICE_SIZE)).devid
        except BaseException:
            self.sock.close()
            raise
        self.seq = 0
        # The stub's RET_SUBMIT carries direction 0 whatever the URB was, so the client must
        # remember which seqnums are IN to know whether data follows the header.
        self.in_seqnums: set = set()

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> "RawClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _next_seq(self) -> int:
        self.seq += 1
        return self.seq

    def submit_in(self, ep: int, length: int, setup: bytes = bytes(8)) -> int:
        seq = self._next_seq()
        self.in_seqnums.add(seq)
        self.sock.sendall(P.CmdSubmit(seq, self.devid, 1, ep, 0, length, setup=setup).pack())
        return seq

    def submit_out(self, ep: int, data: bytes, setup: bytes = bytes(8)) -> int:
        seq = self._next_seq()
        self.sock.sendall(P.CmdSubmit(seq, self.devid, 0, ep, 0, len(data), setup=setup).pack() + data)
        return seq

    def unlink(self, target: int) -> int:
        seq = self._next_seq()
        self.sock.sendall(P.CmdUnlink(seq, self.devid, 0, 0, target).pack())
        return seq

    def reply(self) -> Tuple[Reply, bytes]:
        """The next RET_* on the wire and, for an IN RET_SUBMIT, its data."""
        hdr = P.unpack_urb_header(recv_exact(self.sock, P.URB_HEADER_SIZE))
        assert isinstance(hdr, (P.RetSubmit, P.RetUnlink)), hdr
        data = b""
        if isinstance(hdr, P.RetSubmit) and hdr.seqnum in self.in_seqnums:
            self.in_seqnums.discard(hdr.seqnum)
            if hdr.actual_length:
                data = recv_exact(self.sock, hdr.actual_length)
        return hdr, data

    def replies(self, count: int) -> Dict[int, Tuple[Reply, bytes]]:
        got: Dict[int, Tuple[Reply, bytes]] = {}
        for _ in range(count):
            hdr, data = self.reply()
            assert hdr.seqnum not in got, f"two replies for seqnum {hdr.seqnum}"
            got[hdr.seqnum] = (hdr, data)
        return got

    def configure(self) -> None:
        seq = self.submit_out(0, b"", setup=P.pack_setup(0x00, 9, 1, 0, 0))  # SET_CONFIGURATION(1)
        hdr, _ = self.reply()
        assert isinstance(hdr, P.RetSubmit) and (hdr.seqnum, hdr.status) == (seq, 0)

    def probe(self) -> None:
        """GET_CONFIGURATION; its reply must be the next thing the server sends."""
        seq = self.submit_in(0, 1, setup=P.pack_setup(0x80, 8, 0, 0, 1))
        hdr, data = self.reply()
        assert isinstance(hdr, P.RetSubmit), f"expected the probe's RET_SUBMIT, got {hdr}"
        assert hdr.seqnum == seq and hdr.status == 0 and len(data) == 1


def expect_ret_unlink(client: RawClient, unlink_seq: int, status: int) -> None:
    hdr, _ = client.reply()
    assert isinstance(hdr, P.RetUnlink), f"expected RET_UNLINK, got {hdr}"
    assert (hdr.seqnum, hdr.status) == (unlink_seq, status)


def expect_fresh_in_gets(client: RawClient, data: bytes) -> None:
    fresh = client.submit_in(EP_LOOP, 512)
    hdr, got = client.reply()
    assert isinstance(hdr, P.RetSubmit)
    assert (hdr.seqnum, hdr.status, got) == (fresh, 0, data)


@pytest.fixture(params=UNLINK_BEHAVIOURS)
def mode_server(request: pytest.FixtureRequest) -> Iterator[SimServer]:
    with SimServer(unlink=request.param) as srv:
        yield srv


# --- the option ---------------------------------------------------------------------------------
def test_behaviours_constant_default_and_validation() -> None:
    assert UNLINK_BEHAVIOURS == ("kernel", "status0", "ignore")
    assert SimServer().unlink == "kernel"  # constructing binds nothing: no socket, no thread
    for mode in UNLINK_BEHAVIOURS:
        assert SimServer(unlink=mode).unlink == mode
    for bad in ("Kernel", "", "status_0", "none"):
        with pytest.raises(ValueError) as info:
            SimServer(unlink=bad)
        message = str(info.value)
        assert all(name in message for name in UNLINK_BEHAVIOURS), message
        assert repr(bad) in message


def test_command_line_parser_defaults_to_kernel() -> None:
    assert build_parser().parse_args([]).unlink == "kernel"
    for mode in UNLINK_BEHAVIOURS:
        assert build_parser().parse_args(["--unlink", mode]).unlink == mode


# --- unlink of a pending URB --------------------------------------------------------------------
def test_kernel_pending_unlink_is_econnreset_and_never_completes() -> None:
    with SimServer(unlink="kernel") as srv, RawClient(srv.port, LOOPBACK) as c:
        c.configure()
        pending = c.submit_in(EP_LOOP, 512)
        unlink = c.unlink(pending)
        expect_ret_unlink(c, unlink, ECONNRESET)
        # Data that would have completed the cancelled URB: only the OUT's own reply comes.
        write = c.submit_out(EP_LOOP, b"kernel")
        hdr, _ = c.reply()
        assert isinstance(hdr, P.RetSubmit) and (hdr.seqnum, hdr.status) == (write, 0)
        expect_fresh_in_gets(c, b"kernel")
        c.probe()


def test_status0_pending_unlink_is_zero_and_the_urb_is_dropped() -> None:
    with SimServer(unlink="status0") as srv, RawClient(srv.port, LOOPBACK) as c:
        c.configure()
        pending = c.submit_in(EP_LOOP, 512)
        unlink = c.unlink(pending)
        expect_ret_unlink(c, unlink, 0)
        write = c.submit_out(EP_LOOP, b"dropped?")
        hdr, _ = c.reply()
        # Had the URB stayed queued, its RET_SUBMIT would come first (the OUT handler wakes
        # 0x81 before the OUT is answered).
        assert isinstance(hdr, P.RetSubmit) and (hdr.seqnum, hdr.status) == (write, 0)
        expect_fresh_in_gets(c, b"dropped?")
        c.probe()
        assert pending in c.in_seqnums  # never answered


def test_ignore_pending_unlink_is_unanswered_and_the_urb_completes_later() -> None:
    with SimServer(unlink="ignore") as srv, RawClient(srv.port, LOOPBACK) as c:
        c.configure()
        pending = c.submit_in(EP_LOOP, 512)
        c.unlink(pending)
        c.probe()  # no RET_UNLINK before the probe's reply...
        write = c.submit_out(EP_LOOP, b"still here")
        got = c.replies(2)
        assert set(got) == {pending, write}  # ...nor among these
        hdr, data = got[pending]
        assert isinstance(hdr, P.RetSubmit) and (hdr.status, data) == (0, b"still here")
        assert got[write][0].status == 0
        c.probe()  # and none afterwards either


# --- unlink of a completed, unknown or never-queued URB -----------------------------------------
def test_unlink_of_completed_urbs_comes_after_their_ret_submit(mode_server: SimServer) -> None:
    mode = mode_server.unlink
    with RawClient(mode_server.port, LOOPBACK) as c:
        c.configure()
        # Completed at once: the RET_SUBMIT is already on the wire when the unlink is read.
        done = c.submit_in(EP_SOURCE, 8)
        unlink = c.unlink(done)
        hdr, data = c.reply()
        assert isinstance(hdr, P.RetSubmit) and hdr.seqnum == done and data == bytes(range(8))
        if mode == "ignore":
            c.probe()
        else:
            expect_ret_unlink(c, unlink, 0)
        # Pending first, then completed by data: it must have left the pending set.
        was_pending = c.submit_in(EP_LOOP, 512)
        write = c.submit_out(EP_LOOP, b"done")
        got = c.replies(2)
        assert set(got) == {was_pending, write} and got[was_pending][1] == b"done"
        unlink = c.unlink(was_pending)
        if mode == "ignore":
            c.probe()
        else:
            expect_ret_unlink(c, unlink, 0)
        c.probe()


def test_unlink_of_unknown_seqnum(mode_server: SimServer) -> None:
    with RawClient(mode_server.port, LOOPBACK) as c:
        unlink = c.unlink(54321)
        if mode_server.unlink == "ignore":
            c.probe()
        else:
            expect_ret_unlink(c, unlink, 0)
        c.probe()


def test_unlink_of_urb_to_nonexistent_endpoint(mode_server: SimServer) -> None:
    with RawClient(mode_server.port, LOOPBACK) as c:
        lost = c.submit_in(EP_LOOP, 64)  # unconfigured: 0x81 does not exist, never answered
        unlink = c.unlink(lost)
        if mode_server.unlink == "ignore":
            c.probe()
        else:
            # The stub never allocated it, so even the kernel finds nothing to cancel: status 0.
            expect_ret_unlink(c, unlink, 0)
        c.probe()
        assert lost in c.in_seqnums


# --- the command line ---------------------------------------------------------------------------
@pytest.mark.timeout(30)
def test_command_line_unlink_status0() -> None:
    proc, port = start_sim_process("--unlink", "status0")
    try:
        with RawClient(port, LOOPBACK) as c:
            c.configure()
            pending = c.submit_in(EP_LOOP, 512)
            unlink = c.unlink(pending)
            expect_ret_unlink(c, unlink, 0)  # the kernel default would say -104 here
            write = c.submit_out(EP_LOOP, b"cli")
            hdr, _ = c.reply()
            assert hdr.seqnum == write
            expect_fresh_in_gets(c, b"cli")
    finally:
        stop_sim_process(proc)


@pytest.mark.timeout(30)
def test_command_line_rejects_unknown_unlink_value() -> None:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.path.join(ROOT, "src") + os.pathsep + env.get("PYTHONPATH", "")
    result = subprocess.run(
        [sys.executable, "-m", "usbip_backend.sim", "--host", "127.0.0.1", "--port", "0",
         "--unlink", "bogus"],
        check=False, capture_output=True, text=True, timeout=20, env=env,
    )
    assert result.returncode == 2, result.stderr
    assert "--unlink" in result.stderr and "invalid choice" in result.stderr
    assert result.stdout == ""  # it never got as far as listening
