"""Serial ports over USB/IP for pyserial: the ``usbip://`` URL handler.

``import usbip_backend`` registers the handler, then::

    import serial
    ser = serial.serial_for_url("usbip://192.168.1.20/1-2?baudrate=115200", timeout=1)

URL forms: ``usbip://HOST[:PORT]/BUSID`` or ``usbip://HOST[:PORT]/VID:PID`` (hex, as lsusb
writes them), IPv6 literals in brackets, options ``?baudrate=N``, ``?interface=N`` (which serial
function of a composite device), ``?timeout=S`` (import and requests), ``?logging=debug``.
Drivers: CDC-ACM. Importing this module needs pyserial (the ``[serial]`` extra).
"""

from .drivers import NotSerialError, pick_driver
from .port import Serial
from .url import SerialUrl, parse_url

__all__ = ["Serial", "SerialUrl", "parse_url", "pick_driver", "NotSerialError"]
