#!/usr/bin/env python3
"""A local TLS terminator (stunnel's job) in front of a USB/IP server, for tests and benchmarks.

    python tools/bench/tlsproxy.py --target HOST:PORT [--cert PEM --key PEM [--client-ca PEM]]
                                   [--listen HOST:PORT]

Accepts TLS connections (or, without ``--cert``, plain TCP: the same forwarder minus TLS, so a
benchmark can tell the cost of TLS from the cost of the extra hop) and forwards the bytes both
ways to the target, one target connection per client connection. ``--client-ca`` requires a
client certificate signed by that CA (stunnel's ``verify = 2``). Prints ``LISTENING HOST PORT``
once it accepts connections; ends on SIGTERM, SIGINT or EOF on stdin. Standard library only
(asyncio's TLS, which is not the client's code: the relay in
``usbip_backend.engine.transport`` drives an ``ssl.SSLSocket`` itself).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import ssl
import sys
from typing import Any, Dict, List, Optional, Set


def _split(addr: str) -> "tuple[str, int]":
    host, _, port = addr.rpartition(":")
    return host.strip("[]") or "127.0.0.1", int(port)


class _Half(asyncio.Protocol):
    """One side of a forwarded connection: what it receives is written to its peer at once (no
    coroutine per chunk: a protocol's data_received is the cheapest path asyncio has), and it
    stops reading while the peer's write buffer is full."""

    def __init__(self) -> None:
        self.transport: Optional[asyncio.Transport] = None
        self.peer: Optional["_Half"] = None
        self.early: List[bytes] = []  # what came before the peer was connected
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        peer = self.peer
        if peer is None or peer.transport is None:
            self.early.append(data)
            return
        peer.transport.write(data)

    def eof_received(self) -> Optional[bool]:
        peer = self.peer
        if peer is not None and peer.transport is not None:
            if peer.transport.can_write_eof():
                peer.transport.write_eof()
            else:
                peer.transport.close()
        # Keep the other direction open (a half-close), except over TLS, which cannot.
        return self.transport is not None and self.transport.get_extra_info("sslcontext") is None

    def connection_lost(self, exc: Optional[Exception]) -> None:
        self.closed = True
        peer = self.peer
        if peer is not None and peer.transport is not None:
            peer.transport.close()

    # The peer's writes back up: stop reading here until they drain.
    def pause_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.resume_reading()

    def link(self, peer: "_Half") -> None:
        self.peer, peer.peer = peer, self
        assert peer.transport is not None
        for data in self.early:
            peer.transport.write(data)
        self.early.clear()


async def serve(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    context: Optional[ssl.SSLContext] = None
    if args.cert:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(args.cert, args.key)
        if args.client_ca:
            context.load_verify_locations(args.client_ca)
            context.verify_mode = ssl.CERT_REQUIRED
    target_host, target_port = _split(args.target)
    halves: Set[_Half] = set()

    class Client(_Half):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            super().connection_made(transport)
            halves.add(self)
            loop.create_task(self.open_target())

        async def open_target(self) -> None:
            try:
                _, target = await loop.create_connection(_Half, target_host, target_port)
            except OSError:
                if self.transport is not None:
                    self.transport.close()
                return
            halves.add(target)
            if self.closed:
                assert target.transport is not None
                target.transport.close()
                return
            target.link(self)
            self.link(target)

    def quiet(loop: asyncio.AbstractEventLoop, ctx: Dict[str, Any]) -> None:
        # Refused handshakes (a client that does not trust us) are expected here, not news.
        pass

    loop.set_exception_handler(quiet)
    host, port = _split(args.listen)
    server = await loop.create_server(Client, host, port, ssl=context)
    bound = server.sockets[0].getsockname()
    print(f"LISTENING {bound[0]} {bound[1]}", flush=True)
    done = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, done.set)
    loop.add_reader(sys.stdin.fileno(), lambda: done.set() if not sys.stdin.buffer.read1(4096) else None)
    await done.wait()
    server.close()
    for half in list(halves):
        if half.transport is not None:
            half.transport.abort()


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--target", required=True, help="the USB/IP server, HOST:PORT")
    p.add_argument("--listen", default="127.0.0.1:0", help="where to accept (default 127.0.0.1:0)")
    p.add_argument("--cert", help="server certificate (PEM); without it: plain TCP")
    p.add_argument("--key", help="its private key (PEM)")
    p.add_argument("--client-ca", help="require client certificates signed by this CA")
    args = p.parse_args(argv)
    asyncio.run(serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
