"""The integer constants python-libusb1 exposes as ``usb1.<NAME>``.

python-libusb1 binds every ``LIBUSB_*`` name of its ctypes module with the ``LIBUSB_`` prefix
stripped, so ``LIBUSB_TRANSFER_COMPLETED`` is ``usb1.TRANSFER_COMPLETED``. The one exception is
``LIBUSB_5GBPS_OPERATION``, which is not a Python identifier once stripped and is spelled
``SUPER_SPEED_OPERATION``. The values are libusb's (``libusb.h``); the set of names is exactly
python-libusb1 3.x's, so code written against ``import usb1`` finds the same names here, no more
and no fewer.
"""

from __future__ import annotations

from typing import FrozenSet

from ..errors import (  # enum libusb_error: one definition, shared with the PyUSB backend
    LIBUSB_ERROR_ACCESS as ERROR_ACCESS,
    LIBUSB_ERROR_BUSY as ERROR_BUSY,
    LIBUSB_ERROR_INTERRUPTED as ERROR_INTERRUPTED,
    LIBUSB_ERROR_INVALID_PARAM as ERROR_INVALID_PARAM,
    LIBUSB_ERROR_IO as ERROR_IO,
    LIBUSB_ERROR_NO_DEVICE as ERROR_NO_DEVICE,
    LIBUSB_ERROR_NO_MEM as ERROR_NO_MEM,
    LIBUSB_ERROR_NOT_FOUND as ERROR_NOT_FOUND,
    LIBUSB_ERROR_NOT_SUPPORTED as ERROR_NOT_SUPPORTED,
    LIBUSB_ERROR_OTHER as ERROR_OTHER,
    LIBUSB_ERROR_OVERFLOW as ERROR_OVERFLOW,
    LIBUSB_ERROR_PIPE as ERROR_PIPE,
    LIBUSB_ERROR_TIMEOUT as ERROR_TIMEOUT,
)

# -- enum libusb_class_code: bDeviceClass / bInterfaceClass ---------------------------------------
CLASS_PER_INTERFACE = 0x00
CLASS_AUDIO = 0x01
CLASS_COMM = 0x02
CLASS_HID = 0x03
CLASS_PHYSICAL = 0x05
CLASS_PTP = 0x06
CLASS_IMAGE = CLASS_PTP  # libusb.h names 0x06 both ways
CLASS_PRINTER = 0x07
CLASS_MASS_STORAGE = 0x08
CLASS_HUB = 0x09
CLASS_DATA = 0x0A
CLASS_SMART_CARD = 0x0B
CLASS_CONTENT_SECURITY = 0x0D
CLASS_VIDEO = 0x0E
CLASS_PERSONAL_HEALTHCARE = 0x0F
CLASS_DIAGNOSTIC_DEVICE = 0xDC
CLASS_WIRELESS = 0xE0
CLASS_APPLICATION = 0xFE
CLASS_VENDOR_SPEC = 0xFF

# -- enum libusb_descriptor_type: bDescriptorType -------------------------------------------------
DT_DEVICE = 0x01
DT_CONFIG = 0x02
DT_STRING = 0x03
DT_INTERFACE = 0x04
DT_ENDPOINT = 0x05
DT_HID = 0x21
DT_REPORT = 0x22
DT_PHYSICAL = 0x23
DT_HUB = 0x29

# -- LIBUSB_DT_*_SIZE / LIBUSB_BT_*_SIZE: fixed descriptor lengths (bLength) ---------------------
DT_DEVICE_SIZE = 18
DT_CONFIG_SIZE = 9
DT_INTERFACE_SIZE = 9
DT_ENDPOINT_SIZE = 7
DT_ENDPOINT_AUDIO_SIZE = 9  # an audio-class endpoint descriptor has bRefresh and bSynchAddress
DT_HUB_NONVAR_SIZE = 7
DT_SS_ENDPOINT_COMPANION_SIZE = 6
DT_BOS_SIZE = 5
DT_DEVICE_CAPABILITY_SIZE = 3
DT_INTERFACE_ASSOCIATION_SIZE = 8
BT_USB_2_0_EXTENSION_SIZE = 7
BT_SS_USB_DEVICE_CAPABILITY_SIZE = 10
BT_SSPLUS_USB_DEVICE_CAPABILITY_SIZE = 12
BT_CONTAINER_ID_SIZE = 20
BT_PLATFORM_DESCRIPTOR_MIN_SIZE = 20
# A BOS descriptor holding the three capabilities every SuperSpeed device reports.
DT_BOS_MAX_SIZE = (
    DT_BOS_SIZE + BT_USB_2_0_EXTENSION_SIZE + BT_SS_USB_DEVICE_CAPABILITY_SIZE
    + BT_CONTAINER_ID_SIZE
)

# -- bEndpointAddress fields; enum libusb_endpoint_direction --------------------------------------
ENDPOINT_ADDRESS_MASK = 0x0F
ENDPOINT_DIR_MASK = 0x80
ENDPOINT_IN = 0x80
ENDPOINT_OUT = 0x00

# -- bmAttributes transfer type; enum libusb_transfer_type ----------------------------------------
TRANSFER_TYPE_MASK = 0x03
TRANSFER_TYPE_CONTROL = 0
TRANSFER_TYPE_ISOCHRONOUS = 1
TRANSFER_TYPE_BULK = 2
TRANSFER_TYPE_INTERRUPT = 3

# -- enum libusb_standard_request: bRequest of the standard requests (USB 2.0 table 9-4) ---------
REQUEST_GET_STATUS = 0x00
REQUEST_CLEAR_FEATURE = 0x01
REQUEST_SET_FEATURE = 0x03
REQUEST_SET_ADDRESS = 0x05
REQUEST_GET_DESCRIPTOR = 0x06
REQUEST_SET_DESCRIPTOR = 0x07
REQUEST_GET_CONFIGURATION = 0x08
REQUEST_SET_CONFIGURATION = 0x09
REQUEST_GET_INTERFACE = 0x0A
REQUEST_SET_INTERFACE = 0x0B
REQUEST_SYNCH_FRAME = 0x0C

# -- enum libusb_request_type: bits 6..5 of bmRequestType -----------------------------------------
REQUEST_TYPE_STANDARD = 0x00 << 5
REQUEST_TYPE_CLASS = 0x01 << 5
REQUEST_TYPE_VENDOR = 0x02 << 5
REQUEST_TYPE_RESERVED = 0x03 << 5
# The short spellings python-libusb1 also offers (and most of its users write).
TYPE_STANDARD = REQUEST_TYPE_STANDARD
TYPE_CLASS = REQUEST_TYPE_CLASS
TYPE_VENDOR = REQUEST_TYPE_VENDOR
TYPE_RESERVED = REQUEST_TYPE_RESERVED

# -- enum libusb_request_recipient: bits 4..0 of bmRequestType ------------------------------------
RECIPIENT_DEVICE = 0x00
RECIPIENT_INTERFACE = 0x01
RECIPIENT_ENDPOINT = 0x02
RECIPIENT_OTHER = 0x03

# -- enum libusb_iso_sync_type: bits 3..2 of an isochronous endpoint's bmAttributes --------------
ISO_SYNC_TYPE_MASK = 0x0C
ISO_SYNC_TYPE_NONE = 0
ISO_SYNC_TYPE_ASYNC = 1
ISO_SYNC_TYPE_ADAPTIVE = 2
ISO_SYNC_TYPE_SYNC = 3

# -- enum libusb_iso_usage_type: bits 5..4 of an isochronous endpoint's bmAttributes -------------
ISO_USAGE_TYPE_MASK = 0x30
ISO_USAGE_TYPE_DATA = 0
ISO_USAGE_TYPE_FEEDBACK = 1
ISO_USAGE_TYPE_IMPLICIT = 2

# -- LIBUSB_CONTROL_SETUP_SIZE: sizeof(struct libusb_control_setup), the 8-byte SETUP packet -----
CONTROL_SETUP_SIZE = 8

# -- enum libusb_speed: what USBDevice.getDeviceSpeed() returns -----------------------------------
SPEED_UNKNOWN = 0
SPEED_LOW = 1
SPEED_FULL = 2
SPEED_HIGH = 3
SPEED_SUPER = 4
SPEED_SUPER_PLUS = 5
SPEED_SUPER_PLUS_X2 = 6

# -- enum libusb_supported_speed: wSpeedSupported bits of the SuperSpeed device capability -------
LOW_SPEED_OPERATION = 1
FULL_SPEED_OPERATION = 2
HIGH_SPEED_OPERATION = 4
SUPER_SPEED_OPERATION = 8  # LIBUSB_5GBPS_OPERATION: "5GBPS_OPERATION" is not an identifier

# -- enum libusb_error: return codes of the synchronous calls -------------------------------------
SUCCESS = 0  # the ERROR_* codes are imported from ..errors, above

# -- enum libusb_transfer_status: USBTransfer.getStatus() of a finished transfer -----------------
TRANSFER_COMPLETED = 0  # no error; not necessarily every requested byte moved
TRANSFER_ERROR = 1
TRANSFER_TIMED_OUT = 2
TRANSFER_CANCELLED = 3
TRANSFER_STALL = 4  # bulk/interrupt: endpoint halted; control: request not supported
TRANSFER_NO_DEVICE = 5
TRANSFER_OVERFLOW = 6  # the device sent more than was asked for

# -- enum libusb_transfer_flags: libusb_transfer.flags bits ---------------------------------------
TRANSFER_SHORT_NOT_OK = 1 << 0
TRANSFER_FREE_BUFFER = 1 << 1
TRANSFER_FREE_TRANSFER = 1 << 2
TRANSFER_ADD_ZERO_PACKET = 1 << 3

# -- enum libusb_capability: hasCapability() arguments --------------------------------------------
CAP_HAS_CAPABILITY = 0x0000
CAP_HAS_HOTPLUG = 0x0001
CAP_HAS_HID_ACCESS = 0x0100
CAP_SUPPORTS_DETACH_KERNEL_DRIVER = 0x0101

# -- enum libusb_log_level ------------------------------------------------------------------------
LOG_LEVEL_NONE = 0
LOG_LEVEL_ERROR = 1
LOG_LEVEL_WARNING = 2
LOG_LEVEL_INFO = 3
LOG_LEVEL_DEBUG = 4

# -- enum libusb_log_cb_mode ----------------------------------------------------------------------
LOG_CB_GLOBAL = 1 << 0
LOG_CB_CONTEXT = 1 << 1

# -- enum libusb_option: libusb_set_option() options ----------------------------------------------
OPTION_LOG_LEVEL = 0
OPTION_USE_USBDK = 1
OPTION_NO_DEVICE_DISCOVERY = 2
OPTION_LOG_CB = 3
OPTION_MAX = 4

# -- enum libusb_hotplug_flag, enum libusb_hotplug_event, LIBUSB_HOTPLUG_* defines ---------------
HOTPLUG_ENUMERATE = 1
HOTPLUG_EVENT_DEVICE_ARRIVED = 0x01
HOTPLUG_EVENT_DEVICE_LEFT = 0x02
HOTPLUG_NO_FLAGS = 0
HOTPLUG_MATCH_ANY = -1

#: The statuses a transfer callback can be registered for (USBTransferHelper.setEventCallback).
EVENT_CALLBACK_SET: FrozenSet[int] = frozenset((
    TRANSFER_COMPLETED,
    TRANSFER_ERROR,
    TRANSFER_TIMED_OUT,
    TRANSFER_CANCELLED,
    TRANSFER_STALL,
    TRANSFER_NO_DEVICE,
    TRANSFER_OVERFLOW,
))

__all__ = (
    "CLASS_PER_INTERFACE", "CLASS_AUDIO", "CLASS_COMM", "CLASS_HID", "CLASS_PHYSICAL", "CLASS_PTP",
    "CLASS_IMAGE", "CLASS_PRINTER", "CLASS_MASS_STORAGE", "CLASS_HUB", "CLASS_DATA",
    "CLASS_SMART_CARD", "CLASS_CONTENT_SECURITY", "CLASS_VIDEO", "CLASS_PERSONAL_HEALTHCARE",
    "CLASS_DIAGNOSTIC_DEVICE", "CLASS_WIRELESS", "CLASS_APPLICATION", "CLASS_VENDOR_SPEC",
    "DT_DEVICE", "DT_CONFIG", "DT_STRING", "DT_INTERFACE", "DT_ENDPOINT", "DT_HID", "DT_REPORT",
    "DT_PHYSICAL", "DT_HUB",
    "DT_DEVICE_SIZE", "DT_CONFIG_SIZE", "DT_INTERFACE_SIZE", "DT_ENDPOINT_SIZE",
    "DT_ENDPOINT_AUDIO_SIZE", "DT_HUB_NONVAR_SIZE", "DT_SS_ENDPOINT_COMPANION_SIZE", "DT_BOS_SIZE",
    "DT_DEVICE_CAPABILITY_SIZE", "DT_INTERFACE_ASSOCIATION_SIZE", "BT_USB_2_0_EXTENSION_SIZE",
    "BT_SS_USB_DEVICE_CAPABILITY_SIZE", "BT_SSPLUS_USB_DEVICE_CAPABILITY_SIZE",
    "BT_CONTAINER_ID_SIZE", "BT_PLATFORM_DESCRIPTOR_MIN_SIZE", "DT_BOS_MAX_SIZE",
    "ENDPOINT_ADDRESS_MASK", "ENDPOINT_DIR_MASK", "ENDPOINT_IN", "ENDPOINT_OUT",
    "TRANSFER_TYPE_MASK", "TRANSFER_TYPE_CONTROL", "TRANSFER_TYPE_ISOCHRONOUS",
    "TRANSFER_TYPE_BULK", "TRANSFER_TYPE_INTERRUPT",
    "REQUEST_GET_STATUS", "REQUEST_CLEAR_FEATURE", "REQUEST_SET_FEATURE", "REQUEST_SET_ADDRESS",
    "REQUEST_GET_DESCRIPTOR", "REQUEST_SET_DESCRIPTOR", "REQUEST_GET_CONFIGURATION",
    "REQUEST_SET_CONFIGURATION", "REQUEST_GET_INTERFACE", "REQUEST_SET_INTERFACE",
    "REQUEST_SYNCH_FRAME",
    "REQUEST_TYPE_STANDARD", "REQUEST_TYPE_CLASS", "REQUEST_TYPE_VENDOR", "REQUEST_TYPE_RESERVED",
    "TYPE_STANDARD", "TYPE_CLASS", "TYPE_VENDOR", "TYPE_RESERVED",
    "RECIPIENT_DEVICE", "RECIPIENT_INTERFACE", "RECIPIENT_ENDPOINT", "RECIPIENT_OTHER",
    "ISO_SYNC_TYPE_MASK", "ISO_SYNC_TYPE_NONE", "ISO_SYNC_TYPE_ASYNC", "ISO_SYNC_TYPE_ADAPTIVE",
    "ISO_SYNC_TYPE_SYNC",
    "ISO_USAGE_TYPE_MASK", "ISO_USAGE_TYPE_DATA", "ISO_USAGE_TYPE_FEEDBACK",
    "ISO_USAGE_TYPE_IMPLICIT",
    "CONTROL_SETUP_SIZE",
    "SPEED_UNKNOWN", "SPEED_LOW", "SPEED_FULL", "SPEED_HIGH", "SPEED_SUPER", "SPEED_SUPER_PLUS",
    "SPEED_SUPER_PLUS_X2",
    "LOW_SPEED_OPERATION", "FULL_SPEED_OPERATION", "HIGH_SPEED_OPERATION",
    "SUPER_SPEED_OPERATION",
    "SUCCESS", "ERROR_IO", "ERROR_INVALID_PARAM", "ERROR_ACCESS", "ERROR_NO_DEVICE",
    "ERROR_NOT_FOUND", "ERROR_BUSY", "ERROR_TIMEOUT", "ERROR_OVERFLOW", "ERROR_PIPE",
    "ERROR_INTERRUPTED", "ERROR_NO_MEM", "ERROR_NOT_SUPPORTED", "ERROR_OTHER",
    "TRANSFER_COMPLETED", "TRANSFER_ERROR", "TRANSFER_TIMED_OUT", "TRANSFER_CANCELLED",
    "TRANSFER_STALL", "TRANSFER_NO_DEVICE", "TRANSFER_OVERFLOW",
    "TRANSFER_SHORT_NOT_OK", "TRANSFER_FREE_BUFFER", "TRANSFER_FREE_TRANSFER",
    "TRANSFER_ADD_ZERO_PACKET",
    "CAP_HAS_CAPABILITY", "CAP_HAS_HOTPLUG", "CAP_HAS_HID_ACCESS",
    "CAP_SUPPORTS_DETACH_KERNEL_DRIVER",
    "LOG_LEVEL_NONE", "LOG_LEVEL_ERROR", "LOG_LEVEL_WARNING", "LOG_LEVEL_INFO", "LOG_LEVEL_DEBUG",
    "LOG_CB_GLOBAL", "LOG_CB_CONTEXT",
    "OPTION_LOG_LEVEL", "OPTION_USE_USBDK", "OPTION_NO_DEVICE_DISCOVERY", "OPTION_LOG_CB",
    "OPTION_MAX",
    "HOTPLUG_ENUMERATE", "HOTPLUG_EVENT_DEVICE_ARRIVED", "HOTPLUG_EVENT_DEVICE_LEFT",
    "HOTPLUG_NO_FLAGS", "HOTPLUG_MATCH_ANY",
    "EVENT_CALLBACK_SET",
)
