"""What ``probe`` prints: a device's descriptors as ``lsusb -v`` lays them out, or as JSON;
and the hex dumps of the data commands.

The renderers take ``emit`` (one line of text) rather than a stream, so ``lsusbip -v`` and the
CLI share them.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Iterable, List, Optional

from ..usbnames import bcd, class_name, libusb_speed_name, transfer_type_name, vendor_name

Emit = Callable[[str], None]


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


def _line(emit: Emit, indent: int, name: str, value: Any, note: Optional[str] = None) -> None:
    text = f"{' ' * indent}{name:<20} {value:>6}"
    emit(f"{text}  {note}" if note else text)


def _print_extra(emit: Emit, indent: int, obj: Any) -> None:
    extra = bytes(_extra(obj))
    off = 0
    while off + 2 <= len(extra):
        n = extra[off]
        if n < 2:
            break
        chunk = extra[off:off + n]
        emit(f"{' ' * indent}** extra descriptor type 0x{chunk[1]:02x}: {chunk.hex(' ')}")
        off += n
    if off < len(extra):
        emit(f"{' ' * indent}** trailing bytes: {extra[off:].hex(' ')}")


def print_probe(emit: Emit, dev: Any, busid: str, where: str, strings: Dict[int, Optional[str]],
                raw_desc: Optional[bytes]) -> None:
    """``dev``: a PyUSB device; ``strings``: string index -> text (or None)."""
    vendor = vendor_name(dev.idVendor)
    emit(f"Device {dev.idVendor:04x}:{dev.idProduct:04x} at busid {busid} on {where}, "
         f"speed {_pyusb_speed(dev) or 'unknown'}")
    emit("Device Descriptor:")
    i = 2
    _line(emit, i, "bLength", dev.bLength)
    _line(emit, i, "bDescriptorType", dev.bDescriptorType)
    _line(emit, i, "bcdUSB", bcd(dev.bcdUSB))
    _line(emit, i, "bDeviceClass", dev.bDeviceClass, class_name(dev.bDeviceClass))
    _line(emit, i, "bDeviceSubClass", dev.bDeviceSubClass)
    _line(emit, i, "bDeviceProtocol", dev.bDeviceProtocol)
    _line(emit, i, "bMaxPacketSize0", dev.bMaxPacketSize0)
    _line(emit, i, "idVendor", f"0x{dev.idVendor:04x}", vendor)
    _line(emit, i, "idProduct", f"0x{dev.idProduct:04x}", strings.get(dev.iProduct))
    _line(emit, i, "bcdDevice", bcd(dev.bcdDevice))
    _line(emit, i, "iManufacturer", dev.iManufacturer, strings.get(dev.iManufacturer))
    _line(emit, i, "iProduct", dev.iProduct, strings.get(dev.iProduct))
    _line(emit, i, "iSerialNumber", dev.iSerialNumber, strings.get(dev.iSerialNumber))
    _line(emit, i, "bNumConfigurations", dev.bNumConfigurations)
    for cfg in dev:
        i = 2
        emit(f"{' ' * i}Configuration Descriptor:")
        i = 4
        for name in _CONFIG_FIELDS:
            value = getattr(cfg, name)
            note = None
            if name == "iConfiguration":
                note = strings.get(value)
            elif name == "bmAttributes":
                value = f"0x{value:02x}"
                bits = ["Self Powered" if cfg.bmAttributes & 0x40 else "Bus Powered"]
                if cfg.bmAttributes & 0x20:
                    bits.append("Remote Wakeup")
                note = ", ".join(bits)
            elif name == "bMaxPower":
                note = f"{cfg.bMaxPower * 2} mA"
            elif name == "wTotalLength":
                value = f"0x{value:04x}"
            _line(emit, i, name, value, note)
        _print_extra(emit, i, cfg)
        for intf in cfg:
            emit(f"{' ' * 4}Interface Descriptor:")
            for name in _INTF_FIELDS:
                value = getattr(intf, name)
                note = None
                if name == "bInterfaceClass":
                    note = class_name(value)
                elif name == "iInterface":
                    note = strings.get(value)
                _line(emit, 6, name, value, note)
            _print_extra(emit, 6, intf)
            for ep in intf:
                emit(f"{' ' * 6}Endpoint Descriptor:")
                addr = ep.bEndpointAddress
                _line(emit, 8, "bLength", ep.bLength)
                _line(emit, 8, "bDescriptorType", ep.bDescriptorType)
                _line(emit, 8, "bEndpointAddress", f"0x{addr:02x}",
                      f"EP {addr & 0x0F} {'IN' if addr & 0x80 else 'OUT'}")
                _line(emit, 8, "bmAttributes", ep.bmAttributes, transfer_type_name(ep.bmAttributes).capitalize())
                mps = ep.wMaxPacketSize
                extra = (mps >> 11) & 3
                _line(emit, 8, "wMaxPacketSize", f"0x{mps:04x}",
                      f"{1 + extra}x {mps & 0x7FF} bytes" if extra else f"{mps & 0x7FF} bytes")
                _line(emit, 8, "bInterval", ep.bInterval)
                _print_extra(emit, 8, ep)
    if raw_desc is not None:
        emit("GET_DESCRIPTOR(DEVICE) raw bytes:")
        emit(hexdump(raw_desc))
