"""What ``probe`` prints: a device's descriptors as ``lsusb -v`` lays them out, or as JSON;
and the hex dumps of the data commands.

The renderers take ``emit`` (one line of text) rather than a stream, so ``lsusbip -v`` and the
CLI share them.
"""

from __future__ import annotations

from typing import Any, Dict, Iterable, List, Optional

from .. import lsusb_text
from ..usbnames import class_name, libusb_speed_name, transfer_type_name

#: libusb_speed of SuperSpeed (PyUSB's usb.util.SPEED_SUPER)
LIBUSB_SPEED_SUPER = 4

Emit = lsusb_text.Emit


def hexdump(data: bytes, indent: str = "  ") -> str:
    """``0000  12 01 00 02 ...  |......|`` lines, 16 bytes each."""
    if not data:
        return f"{indent}(no data)"
    lines = []
    for off in range(0, len(data), 16):
        chunk = bytes(data[off:off + 16])
        hexpart = " ".join(f"{b:02x}" for b in chunk[:8])
        if len(chunk) > 8:
            hexpart += "  " + " ".join(f"{b:02x}" for b in chunk[8:])
        text = "".join(chr(b) if 32 <= b < 127 else "." for b in chunk)
        lines.append(f"{indent}{off:04x}  {hexpart:<48}  |{text}|")
    return "\n".join(lines)


_DEVICE_FIELDS = ("bLength", "bDescriptorType", "bcdUSB", "bDeviceClass", "bDeviceSubClass",
                  "bDeviceProtocol", "bMaxPacketSize0", "idVendor", "idProduct", "bcdDevice",
                  "iManufacturer", "iProduct", "iSerialNumber", "bNumConfigurations")
_CONFIG_FIELDS = ("bLength", "bDescriptorType", "wTotalLength", "bNumInterfaces", "bConfigurationValue",
                  "iConfiguration", "bmAttributes", "bMaxPower")
_INTF_FIELDS = ("bLength", "bDescriptorType", "bInterfaceNumber", "bAlternateSetting", "bNumEndpoints",
                "bInterfaceClass", "bInterfaceSubClass", "bInterfaceProtocol", "iInterface")
_EP_FIELDS = ("bLength", "bDescriptorType", "bEndpointAddress", "bmAttributes", "wMaxPacketSize", "bInterval")


def _fields(obj: Any, names: Iterable[str]) -> Dict[str, Any]:
    return {n: int(getattr(obj, n)) for n in names}


def _extra(obj: Any) -> List[int]:
    return list(getattr(obj, "extra_descriptors", None) or [])


def probe_json(dev: Any, busid: str, strings: Dict[int, Optional[str]], raw_desc: Optional[bytes]) -> Dict[str, Any]:
    configs = []
    for cfg in dev:
        intfs = []
        for intf in cfg:
            eps = []
            for ep in intf:
                e = _fields(ep, _EP_FIELDS)
                e["transfer_type"] = transfer_type_name(ep.bmAttributes)
                e["direction"] = "in" if ep.bEndpointAddress & 0x80 else "out"
                e["extra_hex"] = bytes(_extra(ep)).hex()
                eps.append(e)
            i = _fields(intf, _INTF_FIELDS)
            i["class_name"] = class_name(intf.bInterfaceClass)
            i["interface_string"] = strings.get(intf.iInterface)
            i["extra_hex"] = bytes(_extra(intf)).hex()
            i["endpoints"] = eps
            intfs.append(i)
        c = _fields(cfg, _CONFIG_FIELDS)
        c["configuration_string"] = strings.get(cfg.iConfiguration)
        c["extra_hex"] = bytes(_extra(cfg)).hex()
        c["interfaces"] = intfs
        configs.append(c)
    d = _fields(dev, _DEVICE_FIELDS)
    return {
        "busid": busid,
        "id": f"{dev.idVendor:04x}:{dev.idProduct:04x}",
        "speed": _pyusb_speed(dev),
        "device": d,
        "strings": {
            "manufacturer": strings.get(dev.iManufacturer),
            "product": strings.get(dev.iProduct),
            "serial": strings.get(dev.iSerialNumber),
        },
        "device_descriptor_hex": raw_desc.hex() if raw_desc is not None else None,
        "configurations": configs,
    }


def _pyusb_speed(dev: Any) -> Optional[str]:
    return libusb_speed_name(getattr(dev, "speed", None))


def print_probe(emit: Emit, dev: Any, busid: str, where: str, strings: Dict[int, Optional[str]],
                raw_desc: Optional[bytes]) -> None:
    """``dev``: a PyUSB device; ``strings``: string index -> text (or None)."""
    emit(f"Device {dev.idVendor:04x}:{dev.idProduct:04x} at busid {busid} on {where}, "
         f"speed {_pyusb_speed(dev) or 'unknown'}")
    lsusb_text.render(emit, dev, lsusb_text.pyusb_tree(dev), strings,
                      super_speed=(getattr(dev, "speed", None) or 0) >= LIBUSB_SPEED_SUPER)
    if raw_desc is not None:
        emit("GET_DESCRIPTOR(DEVICE) raw bytes:")
        emit(hexdump(raw_desc))
