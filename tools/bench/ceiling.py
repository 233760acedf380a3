"""The ceiling for any PyUSB backend: ``usb.core`` over the least a backend can do.

The raw floor (rawclient.py) measures a bare socket loop, but the issue's usb.core figures also
pay for PyUSB itself (``Device.ctrl_transfer``/``read``/``write``: argument checks, buffer
creation, interface bookkeeping, locks). This module drives ``usb.core`` over a backend whose
transfer methods are nothing but the raw floor's pack/sendall/recv_into on one socket: no
seqnum table, no timeouts, no error handling, no thread safety. Whatever fraction of the raw
floor this reaches is the most *any* PyUSB backend could reach on this machine, so our
backend's usb.core figures are best read against it.

Descriptors are fetched once at start-up with raw control transfers and parsed with our
package's parsers (setup only; nothing from usbip_backend runs in the measured loops).
"""

from __future__ import annotations

import struct

import usb.backend
import usb.core

import rawclient
from usbip_backend.descriptors import parse_configuration, parse_device_descriptor

_SETUP = struct.Struct("<BBHHH")


class CeilingBackend(usb.backend.IBackend):
    """One imported device; every transfer is a synchronous raw round trip."""

    def __init__(self, raw: rawclient.RawDevice) -> None:
        self.raw = raw
        dev = self._control_in(0x80, 6, 0x0100, 0, 18)
        head = self._control_in(0x80, 6, 0x0200, 0, 9)
        total = struct.unpack_from("<H", head, 2)[0]
        self.device = parse_device_descriptor(dev)
        self.device.bus, self.device.address = int(raw.devid >> 16), int(raw.devid & 0xFFFF)
        self.config = parse_configuration(self._control_in(0x80, 6, 0x0200, 0, total))

    def _control_in(self, bm: int, br: int, wv: int, wi: int, length: int) -> bytes:
        buf = bytearray(length)
        n = self.ctrl_transfer(None, bm, br, wv, wi, memoryview(buf), 5000)
        return bytes(buf[:n])

    # -- what usb.core needs to find and set up the device -----------------------------------------
    def enumerate_devices(self):
        yield self.raw

    def get_device_descriptor(self, dev):
        return self.device

    def get_configuration_descriptor(self, dev, config):
        return self.config

    def get_interface_descriptor(self, dev, intf, alt, config):
        return self.config.interfaces[intf][alt]

    def get_endpoint_descriptor(self, dev, ep, intf, alt, config):
        return self.config.interfaces[intf][alt].endpoints[ep]

    def open_device(self, dev):
        return dev

    def close_device(self, dev_handle) -> None:
        pass

    def set_configuration(self, dev_handle, config_value) -> None:
        self.raw.set_configuration(config_value)

    def get_configuration(self, dev_handle) -> int:
        return self.config.bConfigurationValue

    def claim_interface(self, dev_handle, intf) -> None:
        pass

    def release_interface(self, dev_handle, intf) -> None:
        pass

    # -- the measured methods: the raw floor's loop bodies, nothing else ---------------------------
    def ctrl_transfer(self, dev_handle, bmRequestType, bRequest, wValue, wIndex, data, timeout):
        raw = self.raw
        raw.seq += 1
        view = memoryview(data)
        length = view.nbytes
        setup = _SETUP.pack(bmRequestType, bRequest, wValue, wIndex, length)
        if bmRequestType & 0x80:
            raw.sock.sendall(rawclient._CMD.pack(rawclient._CMD_SUBMIT, raw.seq, raw.devid, 1, 0,
                                                 rawclient._DIR_IN_FLAG, length, 0, 0, 0, setup))
            return self._reply(view)
        raw.sock.sendall(rawclient._CMD.pack(rawclient._CMD_SUBMIT, raw.seq, raw.devid, 0, 0, 0, length,
                                             0, 0, 0, setup))
        if length:
            raw.sock.sendall(view)
        return self._reply(None)

    def bulk_read(self, dev_handle, ep, intf, buff, timeout):
        raw = self.raw
        raw.seq += 1
        view = memoryview(buff)
        raw.sock.sendall(rawclient._CMD.pack(rawclient._CMD_SUBMIT, raw.seq, raw.devid, 1, ep & 0x0F,
                                             rawclient._DIR_IN_FLAG, view.nbytes, 0, 0, 0, bytes(8)))
        return self._reply(view)

    def bulk_write(self, dev_handle, ep, intf, data, timeout):
        raw = self.raw
        raw.seq += 1
        view = memoryview(data)
        raw.sock.sendall(rawclient._CMD.pack(rawclient._CMD_SUBMIT, raw.seq, raw.devid, 0, ep & 0x0F, 0,
                                             view.nbytes, 0, 0, 0, bytes(8)))
        raw.sock.sendall(view)
        return self._reply(None)

    def _reply(self, view):
        """Read one RET_SUBMIT (and its IN data into ``view``); return actual_length."""
        raw = self.raw
        recv_into, hview = raw.sock.recv_into, raw.hview
        got = 0
        while got < 48:
            n = recv_into(hview[got:], 48 - got)
            if not n:
                raise EOFError
            got += n
        status, actual = rawclient._RET.unpack_from(raw.header)[5:7]
        if status:
            raise usb.core.USBError(f"status {status}")
        if view is None:
            return actual
        got = 0
        while got < actual:
            n = recv_into(view[got:], actual - got)
            if not n:
                raise EOFError
            got += n
        return actual
