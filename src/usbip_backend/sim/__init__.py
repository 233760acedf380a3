"""A virtual USB/IP server (usbipd + usbip-host behaviour) with devices written in Python.

Start it from Python::

    from usbip_backend.sim import SimServer
    with SimServer() as server:          # stock devices on 127.0.0.1, a free port
        print(server.port)

or from the shell: ``python -m usbip_backend.sim --port 3240`` (prints ``LISTENING host port``).

``SimServer(mdns=True)`` (shell: ``--mdns``) also advertises it over mDNS as the ESP32 bridge
does, on 127.0.0.1 only unless told otherwise, so discovery can be tried without hardware::

    from usbip_backend.discovery import discover
    with SimServer(mdns=True) as server:
        print(discover(interfaces=["127.0.0.1"]))   # [ServerInfo(name='usbip-sim-…', port=…)]

Write a device in a few lines: declare interfaces/endpoints, define the handlers you support (an
absent handler means a stall, see :mod:`usbip_backend.sim.device`)::

    from usbip_backend.sim import Device, Interface, Bulk, SimServer

    class Upper(Device):
        vid, pid = 0x1209, 0x0010
        product = "Upper-caser"
        interfaces = [Interface(0, endpoints=[Bulk(0x01), Bulk(0x81)])]

        def __init__(self, busid=None):
            super().__init__(busid)
            self.out = bytearray()

        def bulk_out_1(self, data):
            self.out += data.upper()
            self.notify(0x81)             # wake pending IN URBs

        def bulk_in_1(self, length):
            if not self.out:
                return None               # nothing yet: the URB stays pending
            chunk, self.out = bytes(self.out[:length]), self.out[length:]
            return chunk

    SimServer([Upper(busid="1-1")], port=3240).start()
"""

from __future__ import annotations

from typing import List, Optional

from .device import (
    Bulk, Device, Endpoint, Function, Interface, Interrupt, Iso, Setup, Stall, cdc_acm,
    cdc_call_management, cdc_header, cdc_union, string_descriptor,
)
from .devices import CdcAcmDevice, HidKeyboard, IsoDevice, LoopbackDevice, stock_devices
from .mdns import MdnsAdvertiser, MdnsError, txt_record
from .server import MAX_TRANSFER, SimServer


def main(argv: Optional[List[str]] = None) -> int:
    """Command-line entry point (``python -m usbip_backend.sim``)."""
    from .__main__ import main as _main
    return _main(argv)


__all__ = [
    "SimServer", "Device", "Interface", "Function", "Endpoint", "Bulk", "Interrupt", "Iso", "Setup",
    "Stall", "cdc_header", "cdc_call_management", "cdc_acm", "cdc_union", "string_descriptor",
    "LoopbackDevice", "CdcAcmDevice", "HidKeyboard", "IsoDevice", "stock_devices", "MAX_TRANSFER",
    "MdnsAdvertiser", "MdnsError", "txt_record", "main",
]
