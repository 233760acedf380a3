"""Argument types of the command line: numbers, IDs, sizes, endpoints, hex data, times.

Each raises ``argparse.ArgumentTypeError`` with a message that says what was wrong and how to
write it. Also the exit codes and :class:`CliError`, the one-line failure every command raises.
"""

from __future__ import annotations

import argparse
from typing import Callable, Tuple, TypeVar

_N = TypeVar("_N", int, float)

#: Largest read/control length the CLI accepts (a typo should not allocate gigabytes).
MAX_LENGTH = 1 << 20

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report it


class CliError(Exception):
    """A failure to report as one line; ``code`` is the exit code."""

    def __init__(self, message: str, code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.code = code


def number(text: str) -> int:
    """argparse type: ``0x1f``, ``0b101``, ``0o17`` or decimal (``010`` is ten)."""
    text = text.strip().replace("_", "")
    try:
        if text.lower().startswith(("0x", "0b", "0o", "-0x")):
            return int(text, 0)
        return int(text, 10)
    except ValueError:
        hint = f" (write hex as 0x{text})" if all(c in "0123456789abcdefABCDEF" for c in text) and text else ""
        raise argparse.ArgumentTypeError(f"invalid number {text!r}{hint}") from None


def _ranged(name: str, lo: int, hi: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        value = number(text)
        if not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"{name} {text} out of range {lo:#x}..{hi:#x}")
        return value
    parse.__name__ = name
    return parse


u8 = _ranged("8-bit value", 0, 0xFF)
u16 = _ranged("16-bit value", 0, 0xFFFF)
port_number = _ranged("port", 0, 0xFFFF)
length_arg = _ranged("length", 0, MAX_LENGTH)
_SIZE_UNITS = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}


def size_arg(text: str) -> int:
    """argparse type: a byte count, ``100M``, ``64K``, ``1G`` (1024-based, ``MiB`` also read)."""
    t = text.strip().lower().replace("_", "")
    for suffix in ("ib", "b"):
        if t.endswith(suffix) and len(t) > len(suffix) and t[-len(suffix) - 1] in _SIZE_UNITS:
            t = t[:-len(suffix)]
            break
    scale = _SIZE_UNITS.get(t[-1:], 1) if t else 1
    if scale > 1:
        t = t[:-1]
    return _non_negative(lambda: int(float(t) * scale) if scale > 1 else number(t),
                         f"invalid size {text!r} (examples: 4096, 0x1000, 64K, 100M, 1G)", "a size must be >= 0")


def _non_negative(parse: Callable[[], _N], invalid: str, negative: str) -> _N:
    """``parse()``, which may not fail (``invalid`` says so) nor be below 0 (``negative``)."""
    try:
        value = parse()
    except (ValueError, argparse.ArgumentTypeError):
        raise argparse.ArgumentTypeError(invalid) from None
    if value < 0:
        raise argparse.ArgumentTypeError(negative)
    return value


def endpoint_arg(text: str) -> int:
    value = number(text)
    if not 0 <= value <= 0xFF or (value & 0x0F) == 0 or (value & 0x70):
        raise argparse.ArgumentTypeError(
            f"invalid endpoint address {text!r}: use 0x01..0x0f for OUT, 0x81..0x8f for IN")
    return value


def hex_data(text: str) -> bytes:
    cleaned = text.replace(" ", "").replace(":", "").replace("-", "")
    if cleaned.lower().startswith("0x"):
        cleaned = cleaned[2:]
    try:
        data = bytes.fromhex(cleaned)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid hex data {text!r} (example: --data-hex 'de ad be ef')") from None
    if len(data) > MAX_LENGTH:
        raise argparse.ArgumentTypeError(f"hex data longer than {MAX_LENGTH} bytes")
    return data


def seconds(text: str) -> float:
    return _non_negative(lambda: float(text), f"invalid number of seconds {text!r}", "a time must be >= 0")


def milliseconds(text: str) -> int:
    value = number(text)
    if value < 0:
        raise argparse.ArgumentTypeError("a timeout must be >= 0 ms (0 waits forever)")
    return value


def usb_id(text: str) -> int:
    """argparse type of a vendor or product ID, read as lsusb and usbip print them: hex, with or
    without ``0x`` (``1209`` is 0x1209, not decimal 1209)."""
    t = text.strip().lower()
    digits = t[2:] if t.startswith("0x") else t
    if not digits or len(digits) > 4 or any(c not in "0123456789abcdef" for c in digits):
        raise argparse.ArgumentTypeError(f"invalid USB ID {text!r}: four hex digits, as lsusb shows them "
                                         "(1209 or 0x1209)")
    return int(digits, 16)


def id_pair(text: str) -> Tuple[int, int]:
    """argparse type of ``VID:PID`` as lsusb prints it (``1209:0001``)."""
    vid, sep, pid = text.partition(":")
    if not sep:
        raise argparse.ArgumentTypeError(f"invalid --id {text!r}: write VID:PID in hex, e.g. 1209:0001")
    return usb_id(vid), usb_id(pid)
