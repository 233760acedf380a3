"""``python -m usbip_backend``: the ``usbip-pyusb-test`` command line."""

from __future__ import annotations

import sys

from .cli import console

if __name__ == "__main__":
    sys.exit(console())
