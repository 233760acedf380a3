"""Spellings of version 0.0.1 whose behaviour needs more than a new name.

``usbip_backend.USBIPBackend`` resolves to :class:`USBIPBackend` here (and warns once, in the
package's ``__getattr__``); nothing in the package uses this module.
"""

from __future__ import annotations

from typing import Any

from . import protocol as P
from .backend import UsbipBackend

__all__ = ["USBIPBackend"]


class USBIPBackend(UsbipBackend):
    """:class:`~usbip_backend.backend.UsbipBackend` with 0.0.1's constructor.

    0.0.1 took ``USBIPBackend(host, port=3240, timeout=2.0, pcap=None)``, all four positional;
    :class:`UsbipBackend` takes ``timeout`` and ``pcap`` as keywords only (and waits 5 s by
    default). Further keywords (``busids``, ``max_transfer``, ``connect_timeout``) go through.
    """

    def __init__(self, host: str, port: int = P.USBIP_PORT, timeout: float = 2.0, pcap: Any = None,
                 **kwargs: Any) -> None:
        super().__init__(host, int(port), timeout=timeout, pcap=pcap, **kwargs)
