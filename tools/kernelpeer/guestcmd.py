#!/usr/bin/env python3
"""Run a shell command as root inside the kernel-peer VM and print its output.

    guestcmd.py [--port 3240] [--timeout 10] 'cat /sys/devices/platform/usbip-vudc.0/usbip_status'

The guest runs a shell on its 2nd serial port, which start.sh exposes as the unix socket
$KERNEL_PEER_CACHE/run/shell-<PORT>.sock. One command at a time per VM (callers serialise).
Importable: ``run(command, port=3240, timeout=10.0) -> (exit status, output)``.
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import sys
import time
import uuid
from typing import Optional, Tuple

MAX_OUTPUT = 4 << 20


def cache_dir() -> str:
    return os.environ.get("KERNEL_PEER_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "usbip-kernel-peer")


def shell_socket(port: int, cache: Optional[str] = None) -> str:
    return os.path.join(cache or cache_dir(), "run", "shell-%d.sock" % port)


def run(command: str, port: int = 3240, timeout: float = 10.0, cache: Optional[str] = None) -> Tuple[int, str]:
    """Run ``command`` in the guest shell; return (exit status, stdout+stderr). TimeoutError if no reply."""
    tag = uuid.uuid4().hex[:12]
    # The command runs in its own shell under the guest's `timeout`, so a command that blocks
    # (a shell builtin writing to a gadget node nobody reads) cannot wedge the one serial shell.
    # Exit status 137 means the guest killed it. The begin/end markers are assembled by printf,
    # so the echoed command line never contains them.
    quoted = "'" + command.replace("'", "'\\''") + "'"
    limit = max(1, int(timeout) - 1)
    line = ("stty -echo 2>/dev/null; printf '%s%s\\n' B " + tag + "; timeout -s KILL " + str(limit)
            + " sh -c " + quoted + " 2>&1 </dev/null; printf '\\n%s%s %d\\n' E " + tag + " $?\n")
    pat = re.compile(r"\nB%s\n(.*)\nE%s (\d+)\n" % (tag, tag), re.S)
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(shell_socket(port, cache))
        s.settimeout(0.05)
        try:  # drop whatever an earlier command left behind (prompt, echo)
            while s.recv(65536):
                pass
        except socket.timeout:
            pass
        s.sendall(line.encode())
        buf = b""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("guest command gave no complete reply in %.0f s: %r; raw output %r"
                                   % (timeout, command, buf[-400:]))
            s.settimeout(min(left, 1.0))
            try:
                chunk = s.recv(65536)
            except socket.timeout:
                continue
            if not chunk:
                raise ConnectionError("guest shell socket closed (VM gone?)")
            buf += chunk
            if len(buf) > MAX_OUTPUT:
                raise RuntimeError("guest command output over %d bytes" % MAX_OUTPUT)
            m = pat.search("\n" + buf.decode(errors="replace").replace("\r", ""))
            if m:
                return int(m.group(2)), m.group(1)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, default=int(os.environ.get("PORT", 3240)))
    ap.add_argument("--timeout", type=float, default=10.0)
    ap.add_argument("command")
    a = ap.parse_args()
    try:
        rc, out = run(a.command, a.port, a.timeout)
    except (OSError, TimeoutError) as e:
        print("guestcmd: %s" % e, file=sys.stderr)
        return 255
    sys.stdout.write(out)
    return rc


if __name__ == "__main__":
    sys.exit(main())
