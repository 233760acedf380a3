"""python-libusb1's descriptor classes over this project's parsed descriptors.

:class:`USBConfiguration`, :class:`USBInterface`, :class:`USBInterfaceSetting` and
:class:`USBEndpoint` have python-libusb1's names, methods and errors, but wrap the objects of
:mod:`usbip_backend.descriptors` instead of libusb's C structures.

Counts (``getNumInterfaces``, ``getNumSettings``, ``getNumEndpoints``) are the lengths of the
lists the objects hold. libusb's parser guarantees ``bNumInterfaces`` and ``bNumEndpoints`` equal
the lengths of the arrays it allocates, and :func:`~usbip_backend.descriptors.parse_configuration`
sets both fields to what it kept, so for parsed descriptors this is the same number; for a
hand-built object whose count field disagrees with its list, indexing and iteration stay within
what exists instead of failing half-way.
"""

from __future__ import annotations

from typing import Iterable, Iterator, List, Sequence, Tuple

from ..descriptors import ConfigurationDescriptor, EndpointDescriptor, InterfaceDescriptor
from ..usbnames import transfer_type_name
from ._constants import SPEED_SUPER  # libusb_speed (the kernel's usb_device_speed numbers it 5)

__all__ = [
    "USBConfiguration",
    "USBInterface",
    "USBInterfaceSetting",
    "USBEndpoint",
    "split_extra",
    "iter_settings",
]



def split_extra(extra_descriptors: Sequence[int]) -> List[bytes]:
    """Split raw extra descriptors into one ``bytes`` per descriptor, as python-libusb1's
    ``get_extra`` does.

    Each descriptor is ``bLength`` bytes long; a zero ``bLength`` or one running past the end
    raises ``ValueError("Extra descriptor N is incomplete/invalid")``, N counting from 0.
    python-libusb1 accepts a ``bLength`` of 1 (libusb never produces one); so does this.
    """
    raw = bytes(extra_descriptors)
    result: List[bytes] = []
    pos = 0
    end = len(raw)
    while pos < end:
        length = raw[pos]
        if not 0 < length <= end - pos:
            raise ValueError(f"Extra descriptor {len(result)} is incomplete/invalid")
        result.append(raw[pos:pos + length])
        pos += length
    return result


class USBConfiguration:
    """One configuration of a device; yields :class:`USBInterface` objects."""

    __slots__ = ("_config", "_device_speed")

    def __init__(self, config: ConfigurationDescriptor, device_speed: int) -> None:
        """``device_speed`` is the device's speed in libusb's numbering (``SPEED_*``)."""
        if not isinstance(config, ConfigurationDescriptor):
            raise TypeError("Unexpected descriptor type.")
        self._config = config
        self._device_speed = device_speed

    def getNumInterfaces(self) -> int:
        return len(self._config.interfaces)

    __len__ = getNumInterfaces

    def getConfigurationValue(self) -> int:
        return self._config.bConfigurationValue

    def getDescriptor(self) -> int:
        """The iConfiguration string descriptor index."""
        return self._config.iConfiguration

    def getAttributes(self) -> int:
        return self._config.bmAttributes

    def getMaxPower(self) -> int:
        """Power consumption in mA: bMaxPower is in 8 mA units at SuperSpeed, 2 mA otherwise.

        As in python-libusb1, only ``SPEED_SUPER`` selects 8 mA units (not SuperSpeedPlus).
        """
        unit = 8 if self._device_speed == SPEED_SUPER else 2
        return self._config.bMaxPower * unit

    def getExtra(self) -> List[bytes]:
        """Class-specific descriptors between the configuration and its first interface."""
        return split_extra(self._config.extra_descriptors)

    def __iter__(self) -> Iterator[USBInterface]:
        for alternates in self._config.interfaces:
            yield USBInterface(alternates)

    iterInterfaces = __iter__

    def __getitem__(self, interface: int) -> USBInterface:
        if not isinstance(interface, int):
            raise TypeError("interface parameter must be an integer")
        if not 0 <= interface < len(self._config.interfaces):
            raise IndexError(f"No such interface: {interface!r}")
        return USBInterface(self._config.interfaces[interface])

    def __repr__(self) -> str:
        count = len(self._config.interfaces)
        return (f"<USBConfiguration {self._config.bConfigurationValue}: {count} "
                f"interface{'' if count == 1 else 's'}, {self.getMaxPower()} mA>")


class USBInterface:
    """One interface: the list of its alternate settings (:class:`USBInterfaceSetting`)."""

    __slots__ = ("_alternates",)

    def __init__(self, alternates: List[InterfaceDescriptor]) -> None:
        if not isinstance(alternates, list) or not all(
                isinstance(alt, InterfaceDescriptor) for alt in alternates):
            raise TypeError("Unexpected descriptor type.")
        self._alternates = alternates

    def getNumSettings(self) -> int:
        return len(self._alternates)

    __len__ = getNumSettings

    def __iter__(self) -> Iterator[USBInterfaceSetting]:
        for setting in self._alternates:
            yield USBInterfaceSetting(setting)

    iterSettings = __iter__

    def __getitem__(self, alt_setting: int) -> USBInterfaceSetting:
        """The setting at position ``alt_setting`` (usually, not necessarily, its number)."""
        if not isinstance(alt_setting, int):
            raise TypeError("alt_setting parameter must be an integer")
        if not 0 <= alt_setting < len(self._alternates):
            raise IndexError(f"No such setting: {alt_setting!r}")
        return USBInterfaceSetting(self._alternates[alt_setting])

    def __repr__(self) -> str:
        count = len(self._alternates)
        settings = f"{count} setting{'' if count == 1 else 's'}"
        if not self._alternates:
            return f"<USBInterface: {settings}>"
        return f"<USBInterface {self._alternates[0].bInterfaceNumber}: {settings}>"


class USBInterfaceSetting:
    """One alternate setting of an interface; yields :class:`USBEndpoint` objects."""

    __slots__ = ("_setting",)

    def __init__(self, setting: InterfaceDescriptor) -> None:
        if not isinstance(setting, InterfaceDescriptor):
            raise TypeError("Unexpected descriptor type.")
        self._setting = setting

    def getNumber(self) -> int:
        return self._setting.bInterfaceNumber

    def getAlternateSetting(self) -> int:
        return self._setting.bAlternateSetting

    def getNumEndpoints(self) -> int:
        return len(self._setting.endpoints)

    __len__ = getNumEndpoints

    def getClass(self) -> int:
        return self._setting.bInterfaceClass

    def getSubClass(self) -> int:
        return self._setting.bInterfaceSubClass

    def getClassTuple(self) -> Tuple[int, int]:
        """(class, subclass), which are usually matched together."""
        return (self._setting.bInterfaceClass, self._setting.bInterfaceSubClass)

    # python-libusb1 keeps the misspelt name for backward compatibility.
    getClassTupple = getClassTuple

    def getProtocol(self) -> int:
        return self._setting.bInterfaceProtocol

    def getDescriptor(self) -> int:
        """The iInterface string descriptor index."""
        return self._setting.iInterface

    def getExtra(self) -> List[bytes]:
        """Class-specific descriptors between the interface and its first endpoint (CDC, HID)."""
        return split_extra(self._setting.extra_descriptors)

    def __iter__(self) -> Iterator[USBEndpoint]:
        for endpoint in self._setting.endpoints:
            yield USBEndpoint(endpoint)

    iterEndpoints = __iter__

    def __getitem__(self, endpoint: int) -> USBEndpoint:
        if not isinstance(endpoint, int):
            raise TypeError("endpoint parameter must be an integer")
        # ValueError, not IndexError: python-libusb1 raises this one here.
        if not 0 <= endpoint < len(self._setting.endpoints):
            raise ValueError(f"No such endpoint: {endpoint}")
        return USBEndpoint(self._setting.endpoints[endpoint])

    def __repr__(self) -> str:
        s = self._setting
        count = len(s.endpoints)
        return (f"<USBInterfaceSetting {s.bInterfaceNumber}.{s.bAlternateSetting} class "
                f"0x{s.bInterfaceClass:02x}/0x{s.bInterfaceSubClass:02x}/0x{s.bInterfaceProtocol:02x}, "
                f"{count} endpoint{'' if count == 1 else 's'}>")


class USBEndpoint:
    """One endpoint descriptor."""

    __slots__ = ("_endpoint",)

    def __init__(self, endpoint: EndpointDescriptor) -> None:
        if not isinstance(endpoint, EndpointDescriptor):
            raise TypeError("Unexpected descriptor type.")
        self._endpoint = endpoint

    def getAddress(self) -> int:
        return self._endpoint.bEndpointAddress

    def getAttributes(self) -> int:
        return self._endpoint.bmAttributes

    def getMaxPacketSize(self) -> int:
        """The raw wMaxPacketSize, high-bandwidth multiplier bits included."""
        return self._endpoint.wMaxPacketSize

    def getInterval(self) -> int:
        return self._endpoint.bInterval

    def getRefresh(self) -> int:
        """bRefresh of an audio-class (9-byte) endpoint descriptor; 0 otherwise."""
        return self._endpoint.bRefresh

    def getSyncAddress(self) -> int:
        """bSynchAddress of an audio-class (9-byte) endpoint descriptor; 0 otherwise."""
        return self._endpoint.bSynchAddress

    def getExtra(self) -> List[bytes]:
        """Descriptors following the endpoint (SuperSpeed companion, class-specific endpoint)."""
        return split_extra(self._endpoint.extra_descriptors)

    def __repr__(self) -> str:
        ep = self._endpoint
        kind = transfer_type_name(ep.bmAttributes)
        return f"<USBEndpoint 0x{ep.bEndpointAddress:02x} {kind} {ep.wMaxPacketSize}>"


def iter_settings(configs: Iterable[USBConfiguration]) -> Iterator[USBInterfaceSetting]:
    """Every setting of every interface of every configuration, in order (USBDevice.iterSettings)."""
    for config in configs:
        for interface in config:
            yield from interface
