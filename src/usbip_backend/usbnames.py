"""Names for numbers: vendors, device classes, speeds and transfer types, as lsusb shows them.

One table of each, shared by the command line, ``lsusbip``, the device layer and the front ends.
Device classes are usb.org's "Defined Class Codes"; the vendors are a few well-known ones (a
full usb.ids is not bundled).
"""

from __future__ import annotations

from typing import Dict, NamedTuple, Optional

from .protocol import Speed

VENDOR_NAMES: Dict[int, str] = {
    0x0403: "Future Technology Devices International (FTDI)",
    0x0483: "STMicroelectronics",
    0x04B4: "Cypress Semiconductor",
    0x0525: "Netchip Technology (Linux USB gadget)",
    0x067B: "Prolific Technology",
    0x0D28: "ARM (DAPLink)",
    0x10C4: "Silicon Labs",
    0x1209: "pid.codes",
    0x1366: "SEGGER",
    0x16C0: "Van Ooijen Technische Informatica (V-USB)",
    0x1915: "Nordic Semiconductor",
    0x1A86: "QinHeng Electronics (WCH)",
    0x1D50: "OpenMoko (open hardware)",
    0x1D6B: "Linux Foundation",
    0x1FC9: "NXP Semiconductors",
    0x2341: "Arduino",
    0x239A: "Adafruit",
    0x2E8A: "Raspberry Pi",
    0x303A: "Espressif Systems",
    0xCAFE: "TinyUSB example (unregistered)",
}

CLASS_NAMES: Dict[int, str] = {
    0x00: "Defined at interface level",
    0x01: "Audio",
    0x02: "Communications",
    0x03: "Human Interface Device",
    0x05: "Physical",
    0x06: "Image",
    0x07: "Printer",
    0x08: "Mass Storage",
    0x09: "Hub",
    0x0A: "CDC Data",
    0x0B: "Smart Card",
    0x0D: "Content Security",
    0x0E: "Video",
    0x0F: "Personal Healthcare",
    0x10: "Audio/Video",
    0x11: "Billboard",
    0x12: "USB Type-C Bridge",
    0xDC: "Diagnostic",
    0xE0: "Wireless Controller",
    0xEF: "Miscellaneous",
    0xFE: "Application Specific",
    0xFF: "Vendor Specific",
}


class SpeedInfo(NamedTuple):
    name: str       #: "high"
    rate: str       #: "480 Mb/s" ("" when unknown)
    libusb: int     #: libusb_speed, which PyUSB's usb.util.SPEED_* also number


#: The kernel's usb_device_speed (the device record's ``speed``) -> name, rate, libusb number.
#: Linux reports Wireless USB as a 480 Mbit/s device (sysfs "speed"), hence libusb's HIGH.
SPEEDS: Dict[int, SpeedInfo] = {
    Speed.UNKNOWN: SpeedInfo("unknown", "", 0),
    Speed.LOW: SpeedInfo("low", "1.5 Mb/s", 1),
    Speed.FULL: SpeedInfo("full", "12 Mb/s", 2),
    Speed.HIGH: SpeedInfo("high", "480 Mb/s", 3),
    Speed.WIRELESS: SpeedInfo("wireless", "480 Mb/s", 3),
    Speed.SUPER: SpeedInfo("super", "5 Gb/s", 4),
    Speed.SUPER_PLUS: SpeedInfo("super-plus", "10 Gb/s", 5),
}

#: libusb_speed (PyUSB's ``dev.speed``) -> name.
LIBUSB_SPEED_NAMES: Dict[int, str] = {0: "unknown", 1: "low", 2: "full", 3: "high", 4: "super", 5: "super-plus"}

#: bmAttributes & 3 of an endpoint descriptor (USB 2.0 table 9-13) -> name.
TRANSFER_TYPE_NAMES: Dict[int, str] = {0: "control", 1: "isochronous", 2: "bulk", 3: "interrupt"}


def vendor_name(vid: int) -> Optional[str]:
    return VENDOR_NAMES.get(vid)


def class_name(code: int) -> str:
    return CLASS_NAMES.get(code, f"class 0x{code:02x}")


def speed_name(speed: int) -> str:
    """Name of a wire speed (the device record's usb_device_speed)."""
    info = SPEEDS.get(speed)
    return info.name if info is not None else f"speed {speed}"


def libusb_speed_name(speed: Optional[int]) -> Optional[str]:
    """Name of a libusb/PyUSB speed number; None stays None."""
    if speed is None:
        return None
    return LIBUSB_SPEED_NAMES.get(speed, f"speed {speed}")


def transfer_type_name(bm_attributes: int) -> str:
    """An endpoint's transfer type from its bmAttributes."""
    return TRANSFER_TYPE_NAMES[bm_attributes & 3]


def bcd(value: int) -> str:
    """0x0200 -> '2.00'."""
    return f"{(value >> 8) & 0xFF:x}.{value & 0xFF:02x}"
