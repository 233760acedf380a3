"""The small hook through which capture (pcapng) and other observers watch the URB engine.

The engine calls, for every URB it sends:

* ``urb_submitted(urb)`` once, just before the CMD_SUBMIT goes on the wire (caller's thread);
* ``urb_completed(urb)`` exactly once when the URB ends, from whichever thread ended it
  (usually the engine's reader thread): ``urb.status`` is 0 or a negative Linux errno —
  the RET_SUBMIT status, ``-104`` (-ECONNRESET) when a CMD_UNLINK cancelled it, or ``-108``
  (-ESHUTDOWN) when the connection was lost;
* ``urb_unlink_sent(urb, unlink_seqnum)`` just before a CMD_UNLINK for it goes out, and
  ``urb_unlink_returned(urb, unlink_seqnum, status)`` when its RET_UNLINK arrives.

Hooks must be quick and must never raise into the engine (exceptions are logged and swallowed).
They must not block: a slow consumer (a FIFO nobody reads) has to queue and drop on its own.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from .engine import Urb


class UrbHook:
    """Base class with no-op methods; subclass and override what you need."""

    def urb_submitted(self, urb: "Urb") -> None:
        pass

    def urb_completed(self, urb: "Urb") -> None:
        pass

    def urb_unlink_sent(self, urb: "Urb", unlink_seqnum: int) -> None:
        pass

    def urb_unlink_returned(self, urb: "Urb", unlink_seqnum: int, status: int) -> None:
        pass
