"""Bulk transfers through usb.core against the kernel's Loopback and SourceSink gadgets."""

from __future__ import annotations

import errno
import os
import threading

import pytest
import usb.core

from .peer import open_device

SIZES = [1, 63, 64, 511, 512, 513, 4096, 65536, 1 << 20]


def _pattern(n: int) -> bytes:
    """SourceSink pattern=1 on 512-byte packets: byte i of every packet is (i % 512) % 63."""
    return bytes((i % 512) % 63 for i in range(n))


def test_loopback_round_trips_1_byte_to_1_mib(flavour):
    """The gadget buffers only 32 packets, so large writes need the read running alongside."""
    with open_device(flavour, "lb") as dev:
        for size in SIZES:
            data = os.urandom(size)
            got = {}

            def reader() -> None:
                try:
                    got["data"] = bytes(dev.read(0x81, size, timeout=60000))
                except usb.core.USBError as exc:
                    got["error"] = exc

            t = threading.Thread(target=reader, name=f"lb-read-{size}")
            t.start()
            try:
                assert dev.write(flavour.out_ep, data, timeout=60000) == size
            finally:
                t.join(90)
            assert not t.is_alive()
            assert "error" not in got, got.get("error")
            assert got["data"] == data, f"{size} bytes did not come back identical"


def test_loopback_zero_length_packets(flavour):
    with open_device(flavour, "lb") as dev:
        assert dev.write(flavour.out_ep, b"", timeout=5000) == 0
        assert len(dev.read(0x81, 512, timeout=5000)) == 0  # the ZLP comes back as an empty read
        # a ZLP ends a transfer that is a whole number of packets
        data = os.urandom(512)
        assert dev.write(flavour.out_ep, data, timeout=5000) == 512
        assert dev.write(flavour.out_ep, b"", timeout=5000) == 0
        assert bytes(dev.read(0x81, 1024, timeout=5000)) == data
        with pytest.raises(usb.core.USBTimeoutError):
            dev.read(0x81, 512, timeout=300)  # nothing left over


def test_sourcesink_in_pattern(flavour):
    with open_device(flavour, "ss") as dev:
        assert bytes(dev.read(0x81, 4096, timeout=5000)) == _pattern(4096)
        assert bytes(dev.read(0x81, 512, timeout=5000)) == _pattern(512)


def test_sourcesink_bad_out_stalls_with_epipe_and_clear_halt_recovers(flavour, kernel_peer):
    with open_device(flavour, "ss") as dev:
        assert dev.write(flavour.out_ep, _pattern(1024), timeout=5000) == 1024
        # The gadget checks the packet after it took it: the bad packet itself is acknowledged,
        # the endpoint halts, and the next transfer stalls.
        dev.write(flavour.out_ep, bytes(512), timeout=5000)
        for _ in range(2):  # a halted endpoint keeps stalling until CLEAR_FEATURE(ENDPOINT_HALT)
            with pytest.raises(usb.core.USBError) as info:
                dev.write(flavour.out_ep, _pattern(512), timeout=5000)
            assert info.value.errno == errno.EPIPE, info.value
            assert not isinstance(info.value, usb.core.USBTimeoutError)
        dev.clear_halt(flavour.out_ep)
        assert dev.write(flavour.out_ep, _pattern(2048), timeout=5000) == 2048
        assert bytes(dev.read(0x81, 512, timeout=5000)) == _pattern(512)
