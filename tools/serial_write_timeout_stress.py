#!/usr/bin/env python3
"""Does a write cut short by write_timeout report exactly what the device took?

    python tools/serial_write_timeout_stress.py [ROUNDS] [DEVICE:BAUD ...]

Against the virtual server's paced bridges (their OUT drains at the line rate), each round writes
0.9 s of line time beyond the device's buffer with ``write_timeout=0.3``, compares the
SerialTimeoutException's ``written`` with what the device counted, writes the rest and checks the
echo byte for byte. Run it with the machine loaded (``for i in 1 2; do (timeout 300 sh -c 'while
:; do :; done' &); done``): the race it looks for, an unlinked multi-packet URB the device was
part-way through, shows when replies are late. Exit status 1 if any round went wrong. Not a test:
it takes a minute or two.
"""

from __future__ import annotations

import os
import random
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src"))

import serial  # noqa: E402

import usbip_backend  # noqa: E402,F401  (registers usbip://)
from usbip_backend.sim import SimServer  # noqa: E402
from usbip_backend.sim.devices import stock_devices  # noqa: E402

BRIDGES = {"acm": "1-1", "cp210x": "1-2", "ch34x": "1-3", "ftdi": "1-4"}
DEFAULT_CASES = ["ftdi:921600", "ftdi:3000000", "cp210x:921600", "acm:3000000", "ch34x:921600"]


def read_exactly(ser: serial.Serial, count: int) -> bytes:
    got = bytearray()
    while len(got) < count:
        chunk = ser.read(count - len(got))
        if not chunk:
            raise RuntimeError(f"echo timed out after {len(got)} of {count} bytes")
        got += chunk
    return bytes(got)


def main(argv: list) -> int:
    rounds = int(argv[0]) if argv else 10
    cases = [(name, int(baud)) for name, baud in (a.split(":") for a in (argv[1:] or DEFAULT_CASES))]
    bad = 0
    took = []
    with SimServer(stock_devices(list(BRIDGES))) as srv:
        for r in range(rounds):
            for name, baud in cases:
                dev = srv.device(BRIDGES[name])
                url = f"usbip://127.0.0.1:{srv.port}/{BRIDGES[name]}?baudrate={baud}"
                with serial.serial_for_url(url, timeout=2, write_timeout=0.3) as ser:
                    data = random.Random(r).randbytes(dev.TX_FIFO + int(dev.line_rate() * 0.9))
                    before = dev.received
                    t0 = time.monotonic()
                    try:
                        ser.write(data)
                        print(f"{name} {baud}: the write did not time out")
                        bad += 1
                        continue
                    except serial.SerialTimeoutException as exc:
                        written = exc.written
                    took.append(time.monotonic() - t0)
                    if dev.received - before != written:
                        bad += 1
                        print(f"{name} {baud}: said {written} written, the device took {dev.received - before}")
                    ser.write_timeout = None
                    ser.write(data[written:])
                    if read_exactly(ser, len(data)) != data:
                        bad += 1
                        print(f"{name} {baud}: the echo differs from what was written")
    print(f"{bad} of {rounds * len(cases)} rounds went wrong; write took {min(took):.3f}-{max(took):.3f} s")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
