"""USB 2.0 chapter 9 numbers, once for the whole package: descriptor types (table 9-5, and the
class-specific ones the package reads or serves), standard requests (table 9-4), feature
selectors (table 9-6), bmRequestType bits, and the source/sink test pattern.

The device layer, the descriptor parser, the virtual server, ``usb1`` (under libusb's names) and
the conformance run all take them from here.
"""

from __future__ import annotations

# bDescriptorType (USB 2.0 table 9-5, USB 3.x table 9-6, class specifications).
DT_DEVICE = 0x01
DT_CONFIG = 0x02
DT_STRING = 0x03
DT_INTERFACE = 0x04
DT_ENDPOINT = 0x05
DT_DEVICE_QUALIFIER = 0x06
DT_OTHER_SPEED_CONFIG = 0x07
DT_INTERFACE_POWER = 0x08
DT_OTG = 0x09
DT_DEBUG = 0x0A
DT_INTERFACE_ASSOCIATION = 0x0B
DT_BOS = 0x0F
DT_HID = 0x21
DT_HID_REPORT = 0x22
DT_HID_PHYSICAL = 0x23
DT_CS_INTERFACE = 0x24
DT_CS_ENDPOINT = 0x25
DT_HUB = 0x29
DT_SS_ENDPOINT_COMPANION = 0x30

# bRequest of the standard requests (USB 2.0 table 9-4).
REQ_GET_STATUS = 0x00
REQ_CLEAR_FEATURE = 0x01
REQ_SET_FEATURE = 0x03
REQ_SET_ADDRESS = 0x05
REQ_GET_DESCRIPTOR = 0x06
REQ_SET_DESCRIPTOR = 0x07
REQ_GET_CONFIGURATION = 0x08
REQ_SET_CONFIGURATION = 0x09
REQ_GET_INTERFACE = 0x0A
REQ_SET_INTERFACE = 0x0B
REQ_SYNCH_FRAME = 0x0C

# Feature selectors (USB 2.0 table 9-6).
FEATURE_ENDPOINT_HALT = 0
FEATURE_DEVICE_REMOTE_WAKEUP = 1
#: The hub-class port feature PORT_RESET (USB 2.0 table 11-17): SET_PORT_FEATURE(PORT_RESET),
#: which Linux's usbip-host stub turns into a reset of the device.
HUB_PORT_RESET = 4

# bmRequestType (USB 2.0 table 9-2).
RT_IN = 0x80
RT_TYPE_STANDARD = 0x00
RT_TYPE_CLASS = 0x20
RT_TYPE_VENDOR = 0x40
RT_RECIPIENT_DEVICE = 0x00
RT_RECIPIENT_INTERFACE = 0x01
RT_RECIPIENT_ENDPOINT = 0x02
RT_RECIPIENT_OTHER = 0x03
#: Host-to-device, class, recipient "other" (a hub port): SET_PORT_FEATURE(PORT_RESET).
RT_PORT = RT_TYPE_CLASS | RT_RECIPIENT_OTHER

#: String descriptor language ID of US English, the one most devices list.
LANGID_EN_US = 0x0409


#: Period of the source/sink pattern.
PATTERN_PERIOD = 63
_PATTERN = bytes(i % PATTERN_PERIOD for i in range(PATTERN_PERIOD * 1024))


def gadget_pattern(length: int) -> bytes:
    """The first ``length`` bytes of the source/sink pattern of Linux's gadget zero (pattern=1):
    byte i is i % 63. A sink accepts it, a source sends it, an echo returns it, so it is the safe
    payload for an endpoint of unknown purpose."""
    if length <= len(_PATTERN):
        return _PATTERN[:length]
    return (_PATTERN[:PATTERN_PERIOD] * (length // PATTERN_PERIOD + 1))[:length]
