"""The kernel-peer VM as the kernel suite sees it: servers, guest shell, device helpers."""

from __future__ import annotations

import contextlib
import os
import re
import socket
import sys
import threading
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import usb.core
import usb.util

from usbip_backend import get_backend
from usbip_backend.hooks import UrbHook

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
TOOLS = os.path.join(ROOT, "tools", "kernelpeer")
sys.path.insert(0, TOOLS)
import guestcmd  # noqa: E402  (tools/kernelpeer/guestcmd.py)
from devlist import devlist  # noqa: E402,F401  (tools/kernelpeer/devlist.py)

KINDS = ("ss", "lb", "acm", "msc", "hid")
#: the reset line the hub driver logs whenever a device is reset (stub mode resets on disconnect)
RESET_LINE = re.compile(r"reset (?:high|full|low|super)[- ]speed.*USB device")


@dataclass
class Flavour:
    """One of the two kernel servers: where it listens and what it exports."""

    name: str  # "device" (usbipd --device, usbip-vudc) or "stub" (usbipd, usbip-host)
    host: str
    port: int
    busids: Dict[str, str]  # kind -> busid
    pids: Dict[str, int]  # kind -> idProduct
    out_ep: int  # bulk/interrupt OUT endpoint address of every gadget
    acm_notify_ep: int
    tty: str  # guest tty of the ACM gadget
    hidg: str  # guest hidg node of the HID gadget
    peer: "KernelPeer" = field(repr=False)

    def rebind(self, kind: str) -> None:
        """Re-arm one export in the guest (clears halts, error states, configuration)."""
        busid = self.busids[kind]
        if self.name == "device":
            gadget = "/sys/kernel/config/usb_gadget/v" + kind
            self.peer.guest(f"echo -1 > /sys/devices/platform/{busid}/usbip_sockfd 2>/dev/null; "
                            f"echo '' > {gadget}/UDC; echo {busid} > {gadget}/UDC")
        else:
            self.peer.guest(f"usbip unbind -b {busid} >/dev/null 2>&1; usbip bind -b {busid}")
        self.peer.wait_available(self, kind)


@dataclass
class KernelPeer:
    """The running VM: ports, busids, and a root shell in the guest."""

    host: str
    device_port: int
    stub_port: int
    busids: Dict[str, List[str]]  # "device"/"stub" -> busids as OP_REP_DEVLIST listed them
    console_log: str
    cache: str
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def guest(self, cmd: str, timeout: float = 20.0, check: bool = True) -> str:
        """Run a shell command in the guest as root; return its output (stdout+stderr)."""
        with self._lock:  # one serial shell: one command at a time
            rc, out = guestcmd.run(cmd, port=self.device_port, timeout=timeout, cache=self.cache)
        if check and rc != 0:
            raise AssertionError(f"guest command failed (exit {rc}): {cmd!r}\n{out}")
        return out

    def kernel_log(self) -> str:
        """The guest's console log (kernel messages at loglevel 7 and /init's output)."""
        with open(self.console_log, "rb") as f:
            return f.read().decode(errors="replace")

    def count_resets(self) -> int:
        return len(RESET_LINE.findall(self.guest("dmesg", check=True)))

    def wait_available(self, flav: "Flavour", kind: str, timeout: float = 15.0) -> None:
        """Wait until ``kind``'s export is available again (usbip_status 1: not imported, no error).

        The polling runs inside the guest; the host just waits for the command's reply.
        """
        busid = flav.busids[kind]
        path = (f"/sys/devices/platform/{busid}/usbip_status" if flav.name == "device"
                else f"/sys/bus/usb/devices/{busid}/usbip_status")
        n = int(timeout * 10)
        out = self.guest(f"i=0; while [ \"$(cat {path} 2>/dev/null)\" != 1 ] && [ $i -lt {n} ]; do "
                         f"sleep 0.1; i=$((i+1)); done; cat {path}", timeout=timeout + 10)
        assert out.strip().endswith("1"), f"{busid} ({flav.name} mode) not available after {timeout} s: {out!r}"

    def flavour(self, name: str) -> Flavour:
        if name == "device":
            return Flavour("device", self.host, self.device_port,
                           {k: f"usbip-vudc.{i}" for i, k in enumerate(KINDS)},
                           {k: 0x0201 + i for i, k in enumerate(KINDS)},
                           out_ep=0x01, acm_notify_ep=0x82, tty="/dev/ttyGS0", hidg="/dev/hidg0", peer=self)
        return Flavour("stub", self.host, self.stub_port,
                       {k: f"{i + 1}-1" for i, k in enumerate(KINDS)},
                       {k: 0x0301 + i for i, k in enumerate(KINDS)},
                       out_ep=0x02, acm_notify_ep=0x85, tty="/dev/ttyGS1", hidg="/dev/hidg1", peer=self)


class Recorder(UrbHook):
    """A capture hook that remembers every URB event (called from the engine's threads)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.submitted: list = []
        self.completed: list = []  # (seqnum, status, actual_length)
        self.unlinks: list = []  # (urb seqnum, unlink seqnum, status)

    def urb_submitted(self, urb) -> None:
        with self.lock:
            self.submitted.append(urb.seqnum)

    def urb_completed(self, urb) -> None:
        with self.lock:
            self.completed.append((urb.seqnum, urb.status, urb.actual_length))

    def urb_unlink_returned(self, urb, unlink_seqnum: int, status: int) -> None:
        with self.lock:
            self.unlinks.append((urb.seqnum, unlink_seqnum, status))


@contextlib.contextmanager
def open_device(flav: Flavour, kind: str, configure: bool = True, hook: Optional[UrbHook] = None,
                timeout: float = 10.0):
    """Import one gadget through get_backend(busids=[...]); close it and wait until the
    server offers it again at the end, so the next test can import it."""
    be = get_backend(flav.host, flav.port, busids=[flav.busids[kind]], timeout=timeout, pcap=hook)
    dev = None
    try:
        dev = usb.core.find(backend=be)
        assert dev is not None, f"{flav.busids[kind]} not found: {be.skipped}"
        if configure:
            dev.set_configuration()
        yield dev
    finally:
        if dev is not None:
            usb.util.dispose_resources(dev)
        be.close()
        flav.peer.wait_available(flav, kind)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


