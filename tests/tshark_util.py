"""Run Debian's tshark on a capture in tests: JSON layers, fields, verbose text, cleanliness.

Tests that need tshark call :func:`require_tshark` first: it skips locally with the command that
installs tshark, and fails when ``CI=true`` (CI must install it; see ``.ci/run``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from typing import Any, Dict, List, Optional, Sequence

import pytest

INSTALL_HINT = "tshark not installed: run `sudo apt-get install -y tshark` (Debian/Ubuntu) to run this test"

#: Wireshark expert severities (epan/proto.h PI_*): comment 0x00100000 ... warn 0x00600000, error 0x00800000.
PI_WARN = 0x00600000


def tshark_path() -> Optional[str]:
    return shutil.which("tshark")


def require_tshark() -> str:
    """Path to tshark; skip (locally) or fail (CI=true) when it is missing."""
    path = tshark_path()
    if path is None:
        if os.environ.get("CI") == "true":
            pytest.fail(INSTALL_HINT + " (CI=true: tshark is required)")
        pytest.skip(INSTALL_HINT)
    return path


def _run(args: Sequence[str], timeout: float = 60.0) -> str:
    proc = subprocess.run(
        [require_tshark(), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=timeout,
        env={**os.environ, "LC_ALL": "C"},
    )
    if proc.returncode != 0:
        raise AssertionError(f"tshark {' '.join(args)} failed ({proc.returncode}): {proc.stderr.decode(errors='replace')}")
    return proc.stdout.decode("utf-8", errors="replace")


def packets(path: str, display_filter: Optional[str] = None) -> List[Dict[str, Any]]:
    """``tshark -T json`` layers of every packet (duplicate field names merged into lists)."""
    args = ["-r", str(path), "-T", "json", "--no-duplicate-keys"]
    if display_filter:
        args += ["-Y", display_filter]
    out = _run(args)
    return [p["_source"]["layers"] for p in json.loads(out or "[]")]


def verbose(path: str, display_filter: Optional[str] = None) -> str:
    """``tshark -V`` text."""
    args = ["-r", str(path), "-V"]
    if display_filter:
        args += ["-Y", display_filter]
    return _run(args)


def fields(path: str, names: Sequence[str], display_filter: Optional[str] = None) -> List[List[str]]:
    """``tshark -T fields`` rows, one list of values per packet (empty string for absent)."""
    args = ["-r", str(path), "-T", "fields", "-E", "separator=\t", "-E", "occurrence=a", "-E", "aggregator=,"]
    for n in names:
        args += ["-e", n]
    if display_filter:
        args += ["-Y", display_filter]
    out = _run(args)
    return [line.split("\t") for line in out.splitlines()]


def count(path: str, display_filter: str) -> int:
    return len(fields(path, ["frame.number"], display_filter))


def find(layers: Dict[str, Any], name: str) -> Any:
    """First value of field ``name`` anywhere in a packet's (nested) layers, or None."""
    stack: List[Any] = [layers]
    while stack:
        node = stack.pop(0)
        if isinstance(node, dict):
            if name in node:
                return node[name]
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return None


def assert_clean(path: str) -> None:
    """No malformed packets and no expert info of severity warning or worse."""
    bad = fields(path, ["frame.number", "_ws.expert.message", "_ws.malformed"],
                 f"_ws.malformed || _ws.expert.severity >= {PI_WARN}")
    assert not bad, f"tshark found malformed packets / warnings in {path}: {bad}"


def assert_all_urbs_paired(path: str) -> None:
    """Every usbmon Submit has exactly one Complete/Error pointing back to it (usb.request_in)."""
    rows = fields(path, ["frame.number", "usb.urb_type", "usb.request_in", "usb.urb_id"], "usb")
    submits = {r[0] for r in rows if r[1] == "'S'"}
    completes = [r for r in rows if r[1] in ("'C'", "'E'")]
    answered = [r[2] for r in completes]
    assert all(answered), f"completions without [Request in]: {[r for r in completes if not r[2]]}"
    assert sorted(answered) == sorted(submits), f"unpaired URBs: submits {sorted(submits)}, answered {answered}"


# --- URB stand-ins for unit tests (the attributes the engine's Urb gives hooks) -------------------
def fake_urb(**kw: Any) -> Any:
    """An object with the Urb attributes hooks read (see hooks.py / COMMON brief); no engine needed.

    Defaults describe a control IN URB on bus 1, device 2; pass overrides as keywords.
    Completion attributes (status, actual_length, in_data, iso_results, complete_time) can be set
    later with :func:`complete`.
    """
    import time
    import types

    busnum = kw.pop("busnum", 1)
    devnum = kw.pop("devnum", 2)
    attrs: Dict[str, Any] = dict(
        seqnum=1, devid=(busnum << 16) | devnum, busnum=busnum, devnum=devnum,
        transfer_type=2, endpoint=0x80, direction=1, setup=None, transfer_flags=0, length=0,
        interval=0, start_frame=0, out_data=None, iso_packets=None, submit_time=time.time(),
        status=None, actual_length=0, in_data=None, iso_results=None, error_count=0,
        complete_time=0.0,
    )
    attrs.update(kw)
    return types.SimpleNamespace(**attrs)


def complete(urb: Any, status: int = 0, data: Optional[bytes] = None, actual_length: Optional[int] = None,
             iso_results: Any = None, when: Optional[float] = None) -> Any:
    """Fill a fake URB's completion attributes like the engine does before urb_completed()."""
    import time

    urb.status = status
    if data is not None:
        urb.in_data = memoryview(bytes(data))
    if actual_length is None:
        if status:
            actual_length = 0
        elif urb.direction:
            actual_length = len(data) if data is not None else 0
        else:
            actual_length = urb.length
    urb.actual_length = actual_length
    if iso_results is not None:
        urb.iso_results = iso_results
    urb.complete_time = time.time() if when is None else when
    return urb


def read_blocks(data: bytes) -> List[Any]:
    """Split little-endian pcapng bytes into (block_type, body) pairs; a trailing partial block
    is left out. An independent reader for tests (does not share code with the writer)."""
    import struct

    out = []
    pos = 0
    while pos + 12 <= len(data):
        btype, total = struct.unpack_from("<II", data, pos)
        assert total >= 12 and total % 4 == 0, f"bad block length {total} at {pos}"
        if pos + total > len(data):
            break
        (trailer,) = struct.unpack_from("<I", data, pos + total - 4)
        assert trailer == total, f"block at {pos}: trailing length {trailer} != {total}"
        out.append((btype, data[pos + 8: pos + total - 4]))
        pos += total
    return out
