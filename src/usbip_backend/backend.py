"""PyUSB backend over USB/IP: ``usb.core.find(backend=get_backend("host"))``.

:class:`UsbipBackend` implements every method of ``usb.backend.IBackend`` on top of the URB
engine (:mod:`usbip_backend.engine`), one TCP connection per imported device. Descriptors are
read from the device itself with GET_DESCRIPTOR (so string indexes, bcdUSB and bMaxPacketSize0
are real) and parsed by :mod:`usbip_backend.descriptors`.

Errors are raised as PyUSB's libusb1 backend raises them:

=================================================  ===================================================
engine error / URB status                          PyUSB exception (``backend_error_code``, errno)
=================================================  ===================================================
UsbipTimeoutError (our timeout, URB unlinked)      USBTimeoutError (-7 TIMEOUT, ETIMEDOUT)
status -110 ETIMEDOUT (server-side timeout)        USBTimeoutError (-7 TIMEOUT, ETIMEDOUT)
status -32 EPIPE (stall)                           USBError (-9 PIPE, EPIPE)
status -75 EOVERFLOW (babble)                      USBError (-8 OVERFLOW, EOVERFLOW)
ConnectionLostError, status -19 / -108             USBError (-4 NO_DEVICE, ENODEV)
status -22 EINVAL                                  USBError (-2 INVALID_PARAM, EINVAL)
status -12 ENOMEM                                  USBError (-11 NO_MEM, ENOMEM)
status -16 EBUSY                                   USBError (-6 BUSY, EBUSY)
status -95 EOPNOTSUPP                              USBError (-12 NOT_SUPPORTED, EOPNOTSUPP)
any other status (-5 EIO, -71 EPROTO, -90 EMSGSIZE, USBError (-1 IO, that errno)
-104 ECONNRESET, -18 EXDEV ...)
ProtocolError / other UsbipError                   USBError (-1 IO, EIO)
=================================================  ===================================================

As in libusb1, a bulk/interrupt transfer that times out after moving some bytes returns the
count instead of raising.
"""

from __future__ import annotations

import errno as _errno
import logging
import re
import threading
import time
from typing import Dict, Iterable, Iterator, List, NoReturn, Optional, Sequence, Set, Tuple

import usb.backend
import usb.core
import usb.util

from . import client
from . import protocol as P
from .descriptors import (
    ConfigurationDescriptor,
    DeviceDescriptor,
    EndpointDescriptor,
    InterfaceDescriptor,
    config_total_length,
    endpoint_max_packet,
    parse_configuration,
    parse_device_descriptor,
    ss_bytes_per_interval,
)
from .errors import (
    ConnectionLostError,
    ImportRefusedError,
    ProtocolError,
    UrbError,
    UsbipError,
    UsbipTimeoutError,
    describe_status,
    host_errno,
)
from .hooks import UrbHook

_log = logging.getLogger(__name__)

# libusb error codes, as PyUSB's libusb1 backend puts them in USBError.backend_error_code.
LIBUSB_ERROR_IO = -1
LIBUSB_ERROR_INVALID_PARAM = -2
LIBUSB_ERROR_ACCESS = -3
LIBUSB_ERROR_NO_DEVICE = -4
LIBUSB_ERROR_NOT_FOUND = -5
LIBUSB_ERROR_BUSY = -6
LIBUSB_ERROR_TIMEOUT = -7
LIBUSB_ERROR_OVERFLOW = -8
LIBUSB_ERROR_PIPE = -9
LIBUSB_ERROR_INTERRUPTED = -10
LIBUSB_ERROR_NO_MEM = -11
LIBUSB_ERROR_NOT_SUPPORTED = -12
LIBUSB_ERROR_OTHER = -99

#: Linux URB status (negative errno) -> libusb error code. Anything else is LIBUSB_ERROR_IO,
#: as libusb's Linux backend reports unknown URB failures (LIBUSB_TRANSFER_ERROR).
_STATUS_TO_LIBUSB = {
    -32: LIBUSB_ERROR_PIPE,
    -75: LIBUSB_ERROR_OVERFLOW,
    -19: LIBUSB_ERROR_NO_DEVICE,
    -108: LIBUSB_ERROR_NO_DEVICE,
    -110: LIBUSB_ERROR_TIMEOUT,
    -22: LIBUSB_ERROR_INVALID_PARAM,
    -12: LIBUSB_ERROR_NO_MEM,
    -16: LIBUSB_ERROR_BUSY,
    -95: LIBUSB_ERROR_NOT_SUPPORTED,
}

#: Kernel wire speed (usb_device_speed) -> PyUSB's usb.util.SPEED_* (libusb_speed). Wireless USB
#: is reported by Linux as a 480 Mbit/s device (sysfs "speed"), hence HIGH; libusb numbers
#: SuperSpeed+ 5, one above usb.util.SPEED_SUPER.
SPEED_SUPER_PLUS = 5
_SPEED_MAP = {
    P.Speed.UNKNOWN: usb.util.SPEED_UNKNOWN,
    P.Speed.LOW: usb.util.SPEED_LOW,
    P.Speed.FULL: usb.util.SPEED_FULL,
    P.Speed.HIGH: usb.util.SPEED_HIGH,
    P.Speed.WIRELESS: usb.util.SPEED_HIGH,
    P.Speed.SUPER: usb.util.SPEED_SUPER,
    P.Speed.SUPER_PLUS: SPEED_SUPER_PLUS,
}

# Standard requests (USB 2.0 table 9-4) and the hub-class port reset the stub intercepts.
_GET_STATUS, _CLEAR_FEATURE, _SET_FEATURE = 0, 1, 3
_GET_DESCRIPTOR, _GET_CONFIGURATION, _SET_CONFIGURATION = 6, 8, 9
_SET_INTERFACE = 11
_FEATURE_ENDPOINT_HALT = 0
_PORT_RESET = 4
_RT_PORT = 0x23  # host-to-device, class, recipient "other" (a hub port)

#: OUT chunks of a split transfer that may be in flight at once (the ESP32 bridge takes 8).
OUT_WINDOW = 8
#: How long cleaning up after a failed split transfer may wait for each cancelled chunk.
_CANCEL_WAIT = 1.0
_SETUP_PACK = P.SETUP_STRUCT.pack
_CONTROL, _BULK = P.TransferType.CONTROL, P.TransferType.BULK
_EMPTY = memoryview(b"")
_EMPTY_IN = memoryview(bytearray(0))  # a writable empty buffer for a zero-length control IN


def speed_to_pyusb(wire_speed: int) -> int:
    """Kernel speed enum from the device record -> PyUSB's ``usb.util.SPEED_*``."""
    return _SPEED_MAP.get(wire_speed, usb.util.SPEED_UNKNOWN)


def port_numbers_from_busid(busid: str) -> Optional[Tuple[int, ...]]:
    """``"1-1.3"`` -> ``(1, 3)``; ``"3-2"`` -> ``(2,)``; other forms (``usbip-vudc.0``) -> None."""
    m = re.fullmatch(r"\d+-(\d+(?:\.\d+)*)", busid)
    if not m:
        return None
    return tuple(int(p) for p in m.group(1).split("."))


def urb_interval(speed: int, transfer_type: P.TransferType, bInterval: int) -> int:
    """The URB interval Linux gives an endpoint (usb_fill_int_urb / usbfs), never 0.

    High speed and faster: 2^(bInterval-1) microframes, bInterval clamped to 1..16. Full/low
    speed: bInterval frames for interrupt (at least 1), 2^(bInterval-1) frames for isochronous.
    """
    if speed in (P.Speed.HIGH, P.Speed.SUPER, P.Speed.SUPER_PLUS) or transfer_type == P.TransferType.ISOCHRONOUS:
        return 1 << (min(max(bInterval, 1), 16) - 1)
    return max(bInterval, 1)


def natural_busid_key(busid: str) -> Tuple:
    """Sort ``1-1.10`` after ``1-1.9`` (servers list devices in arbitrary order)."""
    return tuple((0, int(t), "") if t.isdigit() else (1, 0, t) for t in re.split(r"(\d+)", busid) if t)


def _usb_error(exc: BaseException, what: str) -> usb.core.USBError:
    """Translate an engine error into the PyUSB exception the libusb1 backend would raise."""
    if isinstance(exc, UsbipTimeoutError):
        return usb.core.USBTimeoutError(f"{what}: operation timed out ({exc})", LIBUSB_ERROR_TIMEOUT,
                                        _errno.ETIMEDOUT)
    if isinstance(exc, ConnectionLostError):
        return usb.core.USBError(f"{what}: no such device, the connection is gone ({exc})",
                                 LIBUSB_ERROR_NO_DEVICE, _errno.ENODEV)
    if isinstance(exc, UrbError):
        status = exc.status
        code = _STATUS_TO_LIBUSB.get(status, LIBUSB_ERROR_IO)
        text = f"{what}: {describe_status(status)}"
        if code == LIBUSB_ERROR_TIMEOUT:
            return usb.core.USBTimeoutError(text, code, _errno.ETIMEDOUT)
        if code == LIBUSB_ERROR_NO_DEVICE:
            return usb.core.USBError(text, code, _errno.ENODEV)
        return usb.core.USBError(text, code, host_errno(-status))
    return usb.core.USBError(f"{what}: {exc}", LIBUSB_ERROR_IO, _errno.EIO)


def _raise_usb(exc: BaseException, what: str) -> NoReturn:
    raise _usb_error(exc, what) from exc


def _what(ttype: P.TransferType, verb: str, ep: int, dev: "UsbipDevice") -> str:
    """Names a bulk/interrupt transfer in errors. Built only on error: formatting it on every
    transfer cost about 1 us, a sixth of the engine's own work per URB (issue 6)."""
    return f"{ttype.name.lower()} {verb} endpoint 0x{ep:02x} of {dev.name}"


def _timeout_s(timeout_ms: Optional[int]) -> Optional[float]:
    """PyUSB timeouts are milliseconds; 0 (or None) means wait forever."""
    if not timeout_ms or timeout_ms < 0:
        return None
    return timeout_ms / 1000.0


def _bytes_view(data) -> memoryview:
    """A flat byte view of a buffer (PyUSB passes array('B'), which needs no cast)."""
    view = memoryview(data)
    if view.format != "B" or view.ndim != 1:
        view = view.cast("B")
    return view


class _Deadline:
    """Remaining time of one PyUSB call that may span several URBs (None: no limit)."""

    def __init__(self, timeout_ms: Optional[int]) -> None:
        t = _timeout_s(timeout_ms)
        self.end = None if t is None else time.monotonic() + t

    def remaining(self) -> Optional[float]:
        if self.end is None:
            return None
        # A tiny positive value rather than 0, which the engine reads as "forever".
        return max(self.end - time.monotonic(), 1e-6)

    def expired(self) -> bool:
        return self.end is not None and time.monotonic() >= self.end


class UsbipDevice:
    """One imported device: what ``enumerate_devices`` yields and ``open_device`` takes."""

    def __init__(self, conn, host: str, port: int, descriptor: DeviceDescriptor,
                 configurations: List[ConfigurationDescriptor]) -> None:
        self.conn = conn
        self.busid: str = conn.busid
        self.host = host
        self.port = port
        self.descriptor = descriptor
        self.configurations = configurations
        self.wire_speed: int = conn.speed
        self.lock = threading.RLock()
        #: bConfigurationValue in force, or None when unknown (read with GET_CONFIGURATION).
        self.current_config: Optional[int] = None
        #: bInterfaceNumber -> bAlternateSetting in force (0 when absent).
        self.altsettings: Dict[int, int] = {}
        self._endpoints: Optional[Dict[int, EndpointDescriptor]] = None

    @property
    def name(self) -> str:
        return f"{self.busid} on {self.host}:{self.port}"

    @property
    def alive(self) -> bool:
        return not self.conn.closed

    def __repr__(self) -> str:
        d = self.descriptor
        return f"<UsbipDevice {self.name} {d.idVendor:04x}:{d.idProduct:04x}{'' if self.alive else ' gone'}>"

    def forget_state(self, config: Optional[int] = None) -> None:
        with self.lock:
            self.current_config = config
            self.altsettings.clear()
            self._endpoints = None

    def endpoint_map(self) -> Dict[int, EndpointDescriptor]:
        """bEndpointAddress -> descriptor in the active configuration and alternate settings."""
        with self.lock:
            if self._endpoints is None:
                eps: Dict[int, EndpointDescriptor] = {}
                cfg = self.config_by_value(self.current_config)
                if cfg is not None:
                    for group in cfg.interfaces:
                        for intf in group:
                            if intf.bAlternateSetting == self.altsettings.get(intf.bInterfaceNumber, 0):
                                for ep in intf.endpoints:
                                    eps.setdefault(ep.bEndpointAddress, ep)
                self._endpoints = eps
            return self._endpoints

    def config_by_value(self, value: Optional[int]) -> Optional[ConfigurationDescriptor]:
        for cfg in self.configurations:
            if cfg.bConfigurationValue == value:
                return cfg
        return None

    def any_endpoint(self, address: int) -> Optional[EndpointDescriptor]:
        """The first descriptor of ``address`` in any configuration/alternate setting."""
        for cfg in self.configurations:
            for group in cfg.interfaces:
                for intf in group:
                    for ep in intf.endpoints:
                        if ep.bEndpointAddress == address:
                            return ep
        return None


class UsbipHandle:
    """An open device (``open_device``): bookkeeping of claimed interfaces."""

    def __init__(self, dev: UsbipDevice) -> None:
        self.dev = dev
        self.claimed: Set[int] = set()
        self.closed = False

    def __repr__(self) -> str:
        return f"<UsbipHandle {self.dev.name}{' closed' if self.closed else ''}>"


class UsbipBackend(usb.backend.IBackend):
    """A PyUSB backend whose devices live on a USB/IP server.

    Args:
        host, port: the server.
        timeout: seconds for the device list, imports and descriptor reads at enumeration.
        busids: import only these busids (others are never touched).
        pcap: a :class:`~usbip_backend.hooks.UrbHook` (e.g. a ``PcapWriter``) or a file path to
            record every URB to as pcapng.
        max_transfer: split bulk/interrupt transfers larger than this many bytes into URBs of at
            most this size (rounded down to a multiple of the endpoint's max packet size).
        connect_timeout: seconds for the TCP connect (and the OP_* exchange) of list and import.
    """

    def __init__(
        self,
        host: str,
        port: int = P.USBIP_PORT,
        *,
        timeout: float = 5.0,
        busids: Optional[Iterable[str]] = None,
        pcap=None,
        max_transfer: Optional[int] = None,
        connect_timeout: Optional[float] = None,
    ) -> None:
        super().__init__()
        self._lock = threading.Lock()
        self._import_lock = threading.Lock()
        self._devices: Dict[str, UsbipDevice] = {}
        self._closed = False
        self._owns_hook = False
        self.hook: Optional[UrbHook] = None
        if max_transfer is not None and max_transfer < 1:
            raise ValueError(f"max_transfer must be a positive number of bytes, not {max_transfer}")
        self.host = host
        self.port = port
        self.timeout = timeout
        self.connect_timeout = connect_timeout if connect_timeout is not None else timeout
        self.busids: Optional[Tuple[str, ...]] = tuple(busids) if busids is not None else None
        self.max_transfer = max_transfer
        if pcap is not None and not isinstance(pcap, UrbHook):
            from .pcap import PcapWriter  # lazy: only capture users pay for it

            pcap = PcapWriter(pcap)
            self._owns_hook = True
        self.hook = pcap
        #: busid -> why enumeration skipped it (busy, not found, unreadable descriptors...).
        self.skipped: Dict[str, str] = {}

    def __repr__(self) -> str:
        return f"<UsbipBackend {self.host}:{self.port} {len(self._devices)} imported>"

    # -- lifetime ---------------------------------------------------------------------------------
    def close(self) -> None:
        """Close every imported device's connection (and a capture file this backend opened)."""
        with self._lock:
            devices = list(self._devices.values())
            self._devices.clear()
            self._closed = True
        for dev in devices:
            dev.conn.close()
        if self._owns_hook and self.hook is not None:
            self.hook.close()  # type: ignore[attr-defined]
            self._owns_hook = False

    def __enter__(self) -> "UsbipBackend":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _finalize_object(self) -> None:  # called by PyUSB's AutoFinalizedObject
        self.close()

    @property
    def devices(self) -> List[UsbipDevice]:
        """The devices imported so far (live or not)."""
        with self._lock:
            return list(self._devices.values())

    def release(self, busid: str) -> None:
        """Close one imported device's connection so other clients can import it."""
        with self._lock:
            dev = self._devices.pop(busid, None)
        if dev is not None:
            dev.conn.close()

    # -- enumeration ------------------------------------------------------------------------------
    def enumerate_devices(self) -> Iterator[UsbipDevice]:
        """Yield the server's devices, importing each on first sight (lazily, as find() asks).

        A device another client holds (ST_DEV_BUSY), or one whose descriptors cannot be read,
        is skipped with a warning; the reason is kept in :attr:`skipped`.
        """
        if self._closed:
            raise usb.core.USBError(f"backend for {self.host}:{self.port} is closed", LIBUSB_ERROR_IO,
                                    _errno.EIO)
        with self._lock:
            cached = {b: d for b, d in self._devices.items() if d.alive}
            for busid in [b for b in self._devices if b not in cached]:
                _log.info("%s: connection to %s is gone; will import it again if listed",
                          f"{self.host}:{self.port}", busid)
                self._devices.pop(busid).conn.close()
        if self.busids is not None:
            wanted: List[str] = list(dict.fromkeys(self.busids))
        else:
            try:
                listed = client.list_devices(self.host, self.port, timeout=self.connect_timeout)
            except UsbipError as exc:
                _raise_usb(exc, f"listing the devices of {self.host}:{self.port}")
            # Devices we hold are absent from the list (the server hides imported devices).
            wanted = sorted({d.busid for d in listed} | set(cached), key=natural_busid_key)
        for busid in wanted:
            # One import at a time per backend: two threads enumerating at once must not import
            # the same busid twice (the second import would be refused as busy).
            with self._import_lock:
                dev = cached.get(busid)
                if dev is None or not dev.alive:
                    with self._lock:
                        dev = self._devices.get(busid)
                    if dev is None or not dev.alive:
                        dev = self._import(busid)
            if dev is not None:
                yield dev

    def _import(self, busid: str) -> Optional[UsbipDevice]:
        where = f"{self.host}:{self.port}"
        try:
            conn = client.import_device(self.host, self.port, busid, timeout=self.connect_timeout,
                                        hook=self.hook)
        except ImportRefusedError as exc:
            return self._skip(busid, str(exc))
        except UsbipError as exc:
            return self._skip(busid, f"import of {busid} from {where} failed: {exc}")
        try:
            desc, configs = self._read_descriptors(conn)
        except (UsbipError, ValueError) as exc:
            conn.close()
            return self._skip(busid, f"cannot read the descriptors of {busid} on {where}: {exc}")
        ports = port_numbers_from_busid(busid)
        desc.bus = conn.busnum
        desc.address = conn.devnum
        desc.port_numbers = ports
        desc.port_number = ports[-1] if ports else None
        desc.speed = speed_to_pyusb(conn.speed)
        desc.busid = busid
        dev = UsbipDevice(conn, self.host, self.port, desc, configs)
        # The import reply says which configuration the server's device is in (0 on device-mode
        # servers, which do not know). Only trust a non-zero value; else ask the device later.
        if conn.device.bConfigurationValue and dev.config_by_value(conn.device.bConfigurationValue):
            dev.current_config = conn.device.bConfigurationValue
        with self._lock:
            if self._closed:
                conn.close()
                return None
            stale = self._devices.get(busid)
            self._devices[busid] = dev
            self.skipped.pop(busid, None)
        if stale is not None:
            stale.conn.close()
        _log.debug("imported %r", dev)
        return dev

    def _skip(self, busid: str, reason: str) -> None:
        _log.warning("skipping USB/IP device %s: %s", busid, reason)
        self.skipped[busid] = reason
        return None

    def _read_descriptors(self, conn) -> Tuple[DeviceDescriptor, List[ConfigurationDescriptor]]:
        """GET_DESCRIPTOR(DEVICE), then each configuration: 9 bytes, then wTotalLength."""
        t = self.timeout
        raw = conn.control_transfer(0x80, _GET_DESCRIPTOR, 0x0100, 0, 18, timeout=t)
        desc = parse_device_descriptor(raw)
        configs = []
        for index in range(desc.bNumConfigurations):
            head = conn.control_transfer(0x80, _GET_DESCRIPTOR, 0x0200 | index, 0, 9, timeout=t)
            total = config_total_length(head)  # a u16: at most 65535 bytes asked for
            raw = conn.control_transfer(0x80, _GET_DESCRIPTOR, 0x0200 | index, 0, total, timeout=t)
            if len(raw) < total:
                raise ProtocolError(f"configuration {index}: wTotalLength {total}, device sent {len(raw)} bytes")
            configs.append(parse_configuration(raw))
        return desc, configs

    def get_parent(self, dev: UsbipDevice) -> None:
        return None  # the server's hub topology is not visible over USB/IP

    # -- descriptors ------------------------------------------------------------------------------
    def get_device_descriptor(self, dev: UsbipDevice) -> DeviceDescriptor:
        return dev.descriptor

    def get_configuration_descriptor(self, dev: UsbipDevice, config: int) -> ConfigurationDescriptor:
        try:
            return dev.configurations[config]
        except IndexError:
            raise IndexError(f"invalid configuration index {config}") from None

    def get_interface_descriptor(self, dev: UsbipDevice, intf: int, alt: int, config: int) -> InterfaceDescriptor:
        cfg = self.get_configuration_descriptor(dev, config)
        if not 0 <= intf < len(cfg.interfaces):
            raise IndexError(f"invalid interface index {intf}")
        alts = cfg.interfaces[intf]
        if not 0 <= alt < len(alts):
            raise IndexError(f"invalid alternate setting index {alt}")
        return alts[alt]

    def get_endpoint_descriptor(self, dev: UsbipDevice, ep: int, intf: int, alt: int, config: int) -> EndpointDescriptor:
        i = self.get_interface_descriptor(dev, intf, alt, config)
        if not 0 <= ep < len(i.endpoints):
            raise IndexError(f"invalid endpoint index {ep}")
        return i.endpoints[ep]

    # -- handles, configuration, interfaces ----------------------------------------------------------
    def open_device(self, dev: UsbipDevice) -> UsbipHandle:
        if not dev.alive:
            raise usb.core.USBError(f"{dev.name}: no such device (the connection is gone)",
                                    LIBUSB_ERROR_NO_DEVICE, _errno.ENODEV)
        return UsbipHandle(dev)

    def close_device(self, dev_handle: UsbipHandle) -> None:
        # The connection stays open (cached for the next find()); close() ends it.
        dev_handle.claimed.clear()
        dev_handle.closed = True

    def set_configuration(self, dev_handle: UsbipHandle, config_value: int) -> None:
        dev = dev_handle.dev
        self._control(dev, 0x00, _SET_CONFIGURATION, config_value, 0, None, self._ms(self.timeout),
                      f"SET_CONFIGURATION {config_value}")
        dev.forget_state(config_value)

    def get_configuration(self, dev_handle: UsbipHandle) -> int:
        return self._current_config(dev_handle.dev)

    def _current_config(self, dev: UsbipDevice) -> int:
        with dev.lock:
            if dev.current_config is None:
                buf = bytearray(1)
                n = self._control(dev, 0x80, _GET_CONFIGURATION, 0, 0, buf, self._ms(self.timeout),
                                  "GET_CONFIGURATION")
                if n < 1:
                    raise usb.core.USBError(f"{dev.name}: GET_CONFIGURATION returned no data",
                                            LIBUSB_ERROR_IO, _errno.EIO)
                dev.current_config = buf[0]
                dev._endpoints = None
            return dev.current_config

    def set_interface_altsetting(self, dev_handle: UsbipHandle, intf: int, altsetting: int) -> None:
        dev = dev_handle.dev
        self._control(dev, 0x01, _SET_INTERFACE, altsetting, intf, None, self._ms(self.timeout),
                      f"SET_INTERFACE {intf} alt {altsetting}")
        with dev.lock:
            dev.altsettings[intf] = altsetting
            dev._endpoints = None

    def claim_interface(self, dev_handle: UsbipHandle, intf: int) -> None:
        dev_handle.claimed.add(intf)

    def release_interface(self, dev_handle: UsbipHandle, intf: int) -> None:
        dev_handle.claimed.discard(intf)

    def is_kernel_driver_active(self, dev_handle: UsbipHandle, intf: int) -> bool:
        return False  # no local kernel driver ever binds a USB/IP device imported this way

    def detach_kernel_driver(self, dev_handle: UsbipHandle, intf: int) -> None:
        pass

    def attach_kernel_driver(self, dev_handle: UsbipHandle, intf: int) -> None:
        pass

    # -- control ----------------------------------------------------------------------------------
    def ctrl_transfer(self, dev_handle: UsbipHandle, bmRequestType: int, bRequest: int, wValue: int,
                      wIndex: int, data, timeout: int) -> int:
        dev = dev_handle.dev
        n = self._control(dev, bmRequestType, bRequest, wValue, wIndex, data, timeout, None)
        # Keep track of state changes made through raw control requests too.
        if bmRequestType == 0x00 and bRequest == _SET_CONFIGURATION:
            dev.forget_state(wValue & 0xFF)
        elif bmRequestType == 0x01 and bRequest == _SET_INTERFACE:
            with dev.lock:
                dev.altsettings[wIndex & 0xFF] = wValue & 0xFF
                dev._endpoints = None
        return n

    def _control(self, dev: UsbipDevice, bmRequestType: int, bRequest: int, wValue: int, wIndex: int,
                 data, timeout: Optional[int], what: Optional[str]) -> int:
        """One control transfer: IN fills ``data`` (writable buffer) and returns the count.

        ``what`` names the request in errors (None: built from the request, only on error).
        """
        buf = _bytes_view(data) if data is not None else _EMPTY
        length = buf.nbytes
        if length > 0xFFFF:
            what = what or f"control request 0x{bmRequestType:02x}/0x{bRequest:02x}"
            raise ValueError(f"{what}: control transfers carry at most 65535 bytes, not {length}")
        setup = _SETUP_PACK(bmRequestType & 0xFF, bRequest & 0xFF, wValue & 0xFFFF, wIndex & 0xFFFF, length)
        try:
            if bmRequestType & 0x80:
                return dev.conn.sync_transfer(_CONTROL, 0x80, setup, buf if length else _EMPTY_IN,
                                              _timeout_s(timeout))
            return dev.conn.sync_transfer(_CONTROL, 0x00, setup, buf, _timeout_s(timeout))
        except UsbipError as exc:
            what = what or f"control request 0x{bmRequestType:02x}/0x{bRequest:02x}"
            _raise_usb(exc, f"{what} to {dev.name}")

    def clear_halt(self, dev_handle: UsbipHandle, ep: int) -> None:
        dev = dev_handle.dev
        self._control(dev, 0x02, _CLEAR_FEATURE, _FEATURE_ENDPOINT_HALT, ep, None, self._ms(self.timeout),
                      f"CLEAR_FEATURE(ENDPOINT_HALT) of endpoint 0x{ep:02x}")

    def reset_device(self, dev_handle: UsbipHandle) -> None:
        """Hub-class SET_PORT_FEATURE(PORT_RESET): what Linux's vhci sends, and the stub resets."""
        dev = dev_handle.dev
        port = dev.descriptor.port_number or 1
        self._control(dev, _RT_PORT, _SET_FEATURE, _PORT_RESET, port, None, self._ms(self.timeout),
                      "port reset (the server stalls it if it cannot reset devices, as Linux's "
                      "device-mode usbipd with usbip-vudc does)")
        dev.forget_state(None)

    @staticmethod
    def _ms(seconds: Optional[float]) -> int:
        return int(seconds * 1000) if seconds else 0

    # -- bulk, interrupt ----------------------------------------------------------------------------
    def bulk_write(self, dev_handle: UsbipHandle, ep: int, intf: int, data, timeout: int) -> int:
        return self._write(dev_handle.dev, P.TransferType.BULK, ep, data, timeout)

    def bulk_read(self, dev_handle: UsbipHandle, ep: int, intf: int, buff, timeout: int) -> int:
        return self._read(dev_handle.dev, P.TransferType.BULK, ep, buff, timeout)

    def intr_write(self, dev_handle: UsbipHandle, ep: int, intf: int, data, timeout: int) -> int:
        return self._write(dev_handle.dev, P.TransferType.INTERRUPT, ep, data, timeout)

    def intr_read(self, dev_handle: UsbipHandle, ep: int, intf: int, buff, timeout: int) -> int:
        return self._read(dev_handle.dev, P.TransferType.INTERRUPT, ep, buff, timeout)

    def _endpoint(self, dev: UsbipDevice, ep: int) -> Optional[EndpointDescriptor]:
        """The endpoint's descriptor in the active configuration (any configuration as fallback)."""
        try:
            self._current_config(dev)
        except usb.core.USBError as exc:
            _log.debug("%s: active configuration unknown (%s)", dev.name, exc)
        desc = dev.endpoint_map().get(ep)
        return desc if desc is not None else dev.any_endpoint(ep)

    def _interval(self, dev: UsbipDevice, ttype: P.TransferType, desc: Optional[EndpointDescriptor]) -> int:
        if ttype in (P.TransferType.BULK, P.TransferType.CONTROL):
            return 0
        return urb_interval(dev.wire_speed, ttype, desc.bInterval if desc is not None else 1)

    def _chunk_size(self, desc: Optional[EndpointDescriptor]) -> Optional[int]:
        """max_transfer rounded down to whole packets (a split must not create short packets)."""
        if self.max_transfer is None:
            return None
        mps = endpoint_max_packet(desc) if desc is not None else 0
        if mps <= 0:
            return self.max_transfer
        return max(mps, self.max_transfer // mps * mps)

    def _write(self, dev: UsbipDevice, ttype: P.TransferType, ep: int, data, timeout: int) -> int:
        view = _bytes_view(data)
        interval, chunk = self._plan(dev, ttype, ep)
        if chunk is None or view.nbytes <= chunk:
            return self._one_urb(dev, ttype, ep, view, None, interval, timeout, "write to")
        return self._write_split(dev, ttype, ep, view, chunk, interval, _Deadline(timeout),
                                 _what(ttype, "write to", ep, dev))

    def _plan(self, dev: UsbipDevice, ttype: P.TransferType, ep: int) -> Tuple[int, Optional[int]]:
        """(URB interval, most bytes per URB or None) for a bulk/interrupt transfer."""
        if ttype == _BULK and self.max_transfer is None:
            return 0, None  # the common case: no descriptor lookup
        desc = self._endpoint(dev, ep)
        return self._interval(dev, ttype, desc), self._chunk_size(desc)

    def _one_urb(self, dev: UsbipDevice, ttype: P.TransferType, ep: int, data: Optional[memoryview],
                 buffer: Optional[memoryview], interval: int, timeout: int, verb: str) -> int:
        """One URB straight from (OUT) or into (IN) the caller's buffer: what nearly every call
        is. Returns the count; a timeout after some I/O returns that count, as libusb1 does."""
        t = _timeout_s(timeout)
        try:
            return dev.conn.sync_transfer(ttype, ep, None, data if buffer is None else buffer, t, interval)
        except UsbipTimeoutError as exc:
            if exc.transferred:
                return exc.transferred
            _raise_usb(exc, _what(ttype, verb, ep, dev))
        except UsbipError as exc:
            _raise_usb(exc, _what(ttype, verb, ep, dev))

    def _write_split(self, dev: UsbipDevice, ttype: P.TransferType, ep: int, view: memoryview, chunk: int,
                     interval: int, deadline: _Deadline, what: str) -> int:
        """OUT chunks of at most ``chunk`` bytes, up to OUT_WINDOW in flight; on a failure the
        rest are unlinked and the error raised (or, after a timeout, the count written)."""
        total = view.nbytes
        offsets = list(range(0, total, chunk))
        in_flight: List = []
        written = 0
        error: Optional[BaseException] = None
        next_index = 0
        try:
            while next_index < len(offsets) or in_flight:
                while next_index < len(offsets) and len(in_flight) < OUT_WINDOW:
                    start = offsets[next_index]
                    in_flight.append(dev.conn.submit(ttype, ep, data=view[start:start + chunk], interval=interval))
                    next_index += 1
                urb = in_flight.pop(0)
                urb.wait(deadline.remaining())
                written += urb.actual_length
                if urb.actual_length < urb.length:
                    break  # a short OUT: the device took less; do not send what follows
        except UsbipError as exc:
            error = exc
            if isinstance(exc, (UrbError, UsbipTimeoutError)):
                written += exc.transferred
        finally:
            self._cancel_all(in_flight)
        if error is not None:
            if isinstance(error, UsbipTimeoutError) and written:
                return written
            err = _usb_error(error, f"{what} (after {written} of {total} bytes)")
            err.transferred = written  # type: ignore[attr-defined]
            raise err from error
        return written

    @staticmethod
    def _cancel_all(urbs: Sequence) -> None:
        """Unlink URBs still in flight and wait (bounded) until each has ended."""
        for urb in urbs:
            try:
                urb.cancel()
            except UsbipError:
                pass
        for urb in urbs:
            try:
                urb.wait(_CANCEL_WAIT)
            except UsbipError:
                pass

    def _read(self, dev: UsbipDevice, ttype: P.TransferType, ep: int, buff, timeout: int) -> int:
        view = _bytes_view(buff)
        total = view.nbytes
        interval, chunk = self._plan(dev, ttype, ep)
        chunk = chunk or total
        if chunk >= total:
            return self._one_urb(dev, ttype, ep, None, view, interval, timeout, "read from")
        deadline = _Deadline(timeout)
        got = 0
        # URBs of ``chunk`` bytes one at a time, straight into the caller's buffer; a short packet
        # ends the transfer, so no byte belonging to the device's next transfer is consumed.
        while True:
            size = min(chunk, total - got)
            try:
                n = dev.conn.sync_transfer(ttype, ep, None, view[got:got + size], deadline.remaining(), interval)
            except UsbipTimeoutError as exc:
                got += exc.transferred
                if got:
                    return got
                _raise_usb(exc, _what(ttype, "read from", ep, dev))
            except UsbipError as exc:
                _raise_usb(exc, _what(ttype, "read from", ep, dev))
            got += n
            if n < size or got >= total:
                return got
            if deadline.expired():
                return got

    # -- isochronous ------------------------------------------------------------------------------
    def iso_write(self, dev_handle: UsbipHandle, ep: int, intf: int, data, timeout: int) -> int:
        return self._iso(dev_handle.dev, ep, memoryview(data).cast("B"), timeout, out=True)

    def iso_read(self, dev_handle: UsbipHandle, ep: int, intf: int, buff, timeout: int) -> int:
        return self._iso(dev_handle.dev, ep, memoryview(buff).cast("B"), timeout, out=False)

    def _iso(self, dev: UsbipDevice, ep: int, view: memoryview, timeout: int, out: bool) -> int:
        """Packets of the endpoint's max packet size (times mult), the last one shorter, as libusb
        fills a synchronous ISO transfer. Returns the bytes moved; IN data is packed to the front
        of the buffer (packets that came back short leave no gaps)."""
        what = f"isochronous {'write to' if out else 'read from'} endpoint 0x{ep:02x} of {dev.name}"
        desc = self._endpoint(dev, ep)
        if desc is None or desc.transfer_type != 1 or endpoint_max_packet(desc) == 0:
            raise usb.core.USBError(f"{what}: no isochronous endpoint 0x{ep:02x} in the active configuration",
                                    LIBUSB_ERROR_NOT_FOUND, _errno.ENOENT)
        packet = endpoint_max_packet(desc)
        if dev.wire_speed >= P.Speed.SUPER:
            # SuperSpeed: bursts make the per-interval size the companion's wBytesPerInterval,
            # which is what libusb_get_max_iso_packet_size() returns there.
            packet = ss_bytes_per_interval(desc) or packet
        interval = self._interval(dev, P.TransferType.ISOCHRONOUS, desc)
        total = view.nbytes
        if total == 0:
            return 0
        deadline = _Deadline(timeout)
        per_urb = packet * P.MAX_ISO_PACKETS
        moved = 0
        for start in range(0, total, per_urb):
            size = min(per_urb, total - start)
            lengths = [packet] * (size // packet) + ([size % packet] if size % packet else [])
            part = view[start:start + size]
            try:
                if out:
                    urb = dev.conn.submit(P.TransferType.ISOCHRONOUS, ep, data=part, interval=interval,
                                          iso_packet_lengths=lengths)
                else:
                    urb = dev.conn.submit(P.TransferType.ISOCHRONOUS, ep, buffer=part, interval=interval,
                                          iso_packet_lengths=lengths)
                try:
                    urb.wait(deadline.remaining())
                except UrbError as exc:
                    # -EXDEV: some packets failed. Like libusb, report what did get through,
                    # unless nothing did (device-mode servers answer -EXDEV for every ISO URB).
                    if exc.status != -18 or not any(r.actual_length for r in (urb.iso_results or [])):
                        raise
            except UsbipError as exc:
                _raise_usb(exc, what)
            results = urb.iso_results or []
            if out:
                moved += sum(r.actual_length for r in results) or urb.actual_length
                continue
            for req, res in zip(urb.iso_packets or [], results):
                n = res.actual_length
                src = start + req.offset
                if n and src != moved:  # moved <= src: copying forward never overwrites unread data
                    view[moved:moved + n] = bytes(view[src:src + n])
                moved += n
        return moved


def get_backend(
    host: Optional[str] = None,
    port: int = P.USBIP_PORT,
    *,
    timeout: float = 5.0,
    busids: Optional[Iterable[str]] = None,
    pcap=None,
    max_transfer: Optional[int] = None,
    connect_timeout: Optional[float] = None,
) -> UsbipBackend:
    """A PyUSB backend for the USB/IP server at ``host:port``.

    Args:
        host: server address; None finds the one server announcing itself over mDNS.
        port: TCP port (3240).
        timeout: seconds for the device list, imports and reading descriptors.
        busids: import only these busids (e.g. ``["1-1"]``); others are left to other clients.
        pcap: record every URB as pcapng: a path, or a hook such as ``PcapWriter``.
        max_transfer: split bulk/interrupt transfers into URBs of at most this many bytes.
        connect_timeout: seconds to connect (defaults to ``timeout``).

    Use it as ``usb.core.find(backend=get_backend("host"))``; call ``close()`` (or use it as a
    context manager) to end the connections.
    """
    if host is None:
        from .discovery import resolve_single_server  # lazy: zeroconf only when asked for

        server = resolve_single_server()
        host, port = server.address, server.port
    return UsbipBackend(host, port, timeout=timeout, busids=busids, pcap=pcap, max_transfer=max_transfer,
                        connect_timeout=connect_timeout)
