"""A progress display for streams (:class:`~usbip_backend.stream.Progress`) on a terminal or a log.

On a terminal: one line redrawn in place (bar, percent, rate, ETA). Elsewhere (a pipe, a CI log):
a plain line every ``every`` seconds, so logs stay readable.
"""

from __future__ import annotations

import time
from typing import Optional, TextIO

from .stream import Progress

_BAR = 24


def human_bytes(n: float) -> str:
    """``1536 -> '1.5 KiB'``."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"  # pragma: no cover


def human_seconds(s: float) -> str:
    s = int(s + 0.5)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s // 60 % 60:02d}m"


def describe(p: Progress) -> str:
    """One line about ``p``: where it is, how fast, how long to go."""
    parts = [human_bytes(p.offset) + ("" if p.total is None else f" of {human_bytes(p.total)}")]
    if p.percent is not None:
        parts.append(f"{p.percent:5.1f}%")
    parts.append(f"{human_bytes(p.rate)}/s")
    if p.eta is not None:
        parts.append(f"ETA {human_seconds(p.eta)}")
    return "  ".join(parts)


class ProgressBar:
    """A progress callback drawing on ``out`` (stderr, usually)."""

    def __init__(self, out: TextIO, label: str = "", *, every: float = 1.0, tty: Optional[bool] = None) -> None:
        self.out = out
        self.label = label
        self.tty = out.isatty() if tty is None else tty
        self.every = every
        self._next = 0.0
        self._drawn = False

    def __call__(self, p: Progress) -> None:
        if self.tty:
            bar = ""
            if p.percent is not None:
                filled = int(_BAR * min(p.percent, 100.0) / 100)
                bar = "[" + "#" * filled + " " * (_BAR - filled) + "] "
            self.out.write(f"\r{self.label}{bar}{describe(p)}\x1b[K")
            self.out.flush()
            self._drawn = True
            return
        now = time.monotonic()
        if now >= self._next:
            self._next = now + self.every
            print(f"{self.label}{describe(p)}", file=self.out, flush=True)

    @property
    def interval(self) -> float:
        """How often the stream should call it (redraws are cheap on a terminal)."""
        return 0.1 if self.tty else self.every

    def finish(self) -> None:
        """End the redrawn line (terminal)."""
        if self.tty and self._drawn:
            self.out.write("\n")
            self.out.flush()
            self._drawn = False
