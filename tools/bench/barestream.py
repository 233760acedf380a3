"""The least a ``connect=`` callable may return: recv, sendall, close (no fileno, no options).

The engine relays such an object through a socketpair. Shared by tests/test_transport.py and
worker.py (BENCH_RELAY: what the relay alone costs, without TLS); no usbip_backend import.
"""

from __future__ import annotations

import socket


class BareStream:
    """A socket seen only through recv, sendall and close."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock

    def recv(self, n: int) -> bytes:
        return self._sock.recv(n)

    def sendall(self, data: bytes) -> None:
        self._sock.sendall(data)

    def close(self) -> None:
        try:
            self._sock.shutdown(socket.SHUT_RDWR)  # wakes a recv blocked in another thread
        except OSError:
            pass
        self._sock.close()
