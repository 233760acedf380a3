"""A device's descriptors laid out as ``lsusb -v`` prints them: one renderer for ``lsusbip -v``
(descriptors read by the device layer) and ``usbip-pyusb-test probe`` (PyUSB's objects). Both
kinds of object carry the descriptor fields under their USB names; the caller says how its
configurations, interfaces and endpoints nest (:func:`pyusb_tree`, :func:`layer_tree`).
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, List, Mapping, Optional, Sequence, Tuple

from .usbnames import bcd, class_name, transfer_type_name, vendor_name

Emit = Callable[[str], None]
#: (interface descriptor, its endpoint descriptors)
InterfaceTree = Tuple[Any, Sequence[Any]]
#: (configuration descriptor, its interfaces, every alternate setting)
ConfigTree = Tuple[Any, Sequence[InterfaceTree]]


def pyusb_tree(dev: Any) -> List[ConfigTree]:
    """The nesting of a PyUSB ``usb.core.Device``."""
    return [(cfg, [(intf, list(intf)) for intf in cfg]) for cfg in dev]


def layer_tree(configurations: Iterable[Any]) -> List[ConfigTree]:
    """The nesting of :mod:`usbip_backend.descriptors` configurations (interfaces grouped by
    number, alternate settings within)."""
    return [(cfg, [(intf, list(intf.endpoints)) for group in cfg.interfaces for intf in group])
            for cfg in configurations]


def line(emit: Emit, indent: int, name: str, value: object, note: Optional[str] = None) -> None:
    text = f"{' ' * indent}{name:<20} {value!s:>6}"
    emit(f"{text}  {note}" if note else text)


def extra(emit: Emit, indent: int, raw_extra: Sequence[int]) -> None:
    """Class-specific descriptors after a standard one, one line each, as hex."""
    raw = bytes(raw_extra or ())
    off = 0
    while off + 2 <= len(raw) and raw[off] >= 2:
        chunk = raw[off:off + raw[off]]
        emit(f"{' ' * indent}** extra descriptor type 0x{chunk[1]:02x}: {chunk.hex(' ')}")
        off += raw[off]
    if off < len(raw):
        emit(f"{' ' * indent}** trailing bytes: {raw[off:].hex(' ')}")


def max_packet(w_max_packet_size: int) -> str:
    """``0x1400`` -> ``3x 1024 bytes`` (high-bandwidth endpoints carry a multiplier in bits 12..11)."""
    more = (w_max_packet_size >> 11) & 3
    size = w_max_packet_size & 0x7FF
    return f"{1 + more}x {size} bytes" if more else f"{size} bytes"


def render(emit: Emit, d: Any, configurations: Sequence[ConfigTree], strings: Mapping[int, Optional[str]],
           super_speed: bool) -> None:
    """``d``: the device descriptor; ``strings``: string index -> text; ``super_speed``: whether
    bMaxPower counts 8 mA (SuperSpeed and above, USB 3.2 9.6.3) rather than 2 mA."""
    s = strings
    emit("Device Descriptor:")
    line(emit, 2, "bLength", d.bLength)
    line(emit, 2, "bDescriptorType", d.bDescriptorType)
    line(emit, 2, "bcdUSB", bcd(d.bcdUSB))
    line(emit, 2, "bDeviceClass", d.bDeviceClass, class_name(d.bDeviceClass))
    line(emit, 2, "bDeviceSubClass", d.bDeviceSubClass)
    line(emit, 2, "bDeviceProtocol", d.bDeviceProtocol)
    line(emit, 2, "bMaxPacketSize0", d.bMaxPacketSize0)
    line(emit, 2, "idVendor", f"0x{d.idVendor:04x}", vendor_name(d.idVendor) or s.get(d.iManufacturer))
    line(emit, 2, "idProduct", f"0x{d.idProduct:04x}", s.get(d.iProduct))
    line(emit, 2, "bcdDevice", bcd(d.bcdDevice))
    line(emit, 2, "iManufacturer", d.iManufacturer, s.get(d.iManufacturer))
    line(emit, 2, "iProduct", d.iProduct, s.get(d.iProduct))
    line(emit, 2, "iSerial", d.iSerialNumber, s.get(d.iSerialNumber))
    line(emit, 2, "bNumConfigurations", d.bNumConfigurations)
    for cfg, interfaces in configurations:
        emit("  Configuration Descriptor:")
        line(emit, 4, "bLength", cfg.bLength)
        line(emit, 4, "bDescriptorType", cfg.bDescriptorType)
        line(emit, 4, "wTotalLength", f"0x{cfg.wTotalLength:04x}")
        line(emit, 4, "bNumInterfaces", cfg.bNumInterfaces)
        line(emit, 4, "bConfigurationValue", cfg.bConfigurationValue)
        line(emit, 4, "iConfiguration", cfg.iConfiguration, s.get(cfg.iConfiguration))
        power = ["Self Powered" if cfg.bmAttributes & 0x40 else "Bus Powered"]
        if cfg.bmAttributes & 0x20:
            power.append("Remote Wakeup")
        line(emit, 4, "bmAttributes", f"0x{cfg.bmAttributes:02x}", ", ".join(power))
        line(emit, 4, "MaxPower", f"{cfg.bMaxPower * (8 if super_speed else 2)}mA")
        extra(emit, 4, cfg.extra_descriptors)
        for intf, endpoints in interfaces:
            _interface(emit, intf, endpoints, s)


def _interface(emit: Emit, intf: Any, endpoints: Sequence[Any], s: Mapping[int, Optional[str]]) -> None:
    emit("    Interface Descriptor:")
    line(emit, 6, "bLength", intf.bLength)
    line(emit, 6, "bDescriptorType", intf.bDescriptorType)
    line(emit, 6, "bInterfaceNumber", intf.bInterfaceNumber)
    line(emit, 6, "bAlternateSetting", intf.bAlternateSetting)
    line(emit, 6, "bNumEndpoints", intf.bNumEndpoints)
    line(emit, 6, "bInterfaceClass", intf.bInterfaceClass, class_name(intf.bInterfaceClass))
    line(emit, 6, "bInterfaceSubClass", intf.bInterfaceSubClass)
    line(emit, 6, "bInterfaceProtocol", intf.bInterfaceProtocol)
    line(emit, 6, "iInterface", intf.iInterface, s.get(intf.iInterface))
    extra(emit, 6, intf.extra_descriptors)
    for ep in endpoints:
        addr = ep.bEndpointAddress
        emit("      Endpoint Descriptor:")
        line(emit, 8, "bLength", ep.bLength)
        line(emit, 8, "bDescriptorType", ep.bDescriptorType)
        line(emit, 8, "bEndpointAddress", f"0x{addr:02x}", f"EP {addr & 0x0F} {'IN' if addr & 0x80 else 'OUT'}")
        line(emit, 8, "bmAttributes", ep.bmAttributes, transfer_type_name(ep.bmAttributes).capitalize())
        line(emit, 8, "wMaxPacketSize", f"0x{ep.wMaxPacketSize:04x}", max_packet(ep.wMaxPacketSize))
        line(emit, 8, "bInterval", ep.bInterval)
        extra(emit, 8, ep.extra_descriptors)
