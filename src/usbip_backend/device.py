"""An imported device, without PyUSB: descriptors, configuration state, transfers in windows.

What every front end (the PyUSB backend, ``usb1``, ``aio``, the serial handler) needs of a device
beyond single URBs:

* :func:`read_descriptors` -- GET_DESCRIPTOR(DEVICE) and each configuration, bounded as Linux's
  ``drivers/usb/core/config.c`` bounds them (8 configurations; see :mod:`.descriptors`);
* :class:`Device` -- the configuration and alternate settings in force (kept in step with the
  requests that change them), the endpoint map they give, the URB interval Linux gives each
  endpoint (:func:`urb_interval`), and transfers split into URBs of at most ``max_transfer``
  bytes: OUT chunks in a window of :data:`OUT_WINDOW` in flight, IN chunks one at a time so a
  short packet ends the transfer without consuming the device's next one.

Errors are the engine's (:mod:`.errors`); each carries ``transferred``, the bytes that moved.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple, TypeVar

from . import protocol as P
from .descriptors import (
    ConfigurationDescriptor, DeviceDescriptor, EndpointDescriptor, config_total_length,
    configurations_to_read, endpoint_max_packet, parse_configuration, parse_device_descriptor,
    ss_bytes_per_interval,
)
from .engine import Connection, Urb, flat
from .engine.transport import Connector, TlsArg
from .errors import ImportRefusedError, NotFoundError, ProtocolError, UrbError, UsbipError, UsbipTimeoutError

# Chapter 9 numbers under the names this module has always used (defined in ch9).
from .ch9 import (
    DT_CONFIG as DT_CONFIG, DT_DEVICE as DT_DEVICE, FEATURE_ENDPOINT_HALT as FEATURE_ENDPOINT_HALT,
    REQ_CLEAR_FEATURE as CLEAR_FEATURE, REQ_GET_CONFIGURATION as GET_CONFIGURATION,
    REQ_GET_DESCRIPTOR as GET_DESCRIPTOR, REQ_SET_CONFIGURATION as SET_CONFIGURATION,
    REQ_SET_FEATURE as SET_FEATURE, REQ_SET_INTERFACE as SET_INTERFACE, RT_PORT as RT_PORT,
)
from .ch9 import HUB_PORT_RESET as PORT_RESET
from .usbnames import SPEEDS

_log = logging.getLogger(__name__)

#: OUT chunks of a split transfer that may be in flight at once (the ESP32 bridge takes 8).
OUT_WINDOW = 8
#: How long cleaning up after a failed split transfer may wait for each cancelled chunk.
CANCEL_WAIT = 1.0
#: How long after giving an import back an import of the same device retries ST_DEV_BUSY: a
#: server frees the device a moment after it sees the connection close, not at once.
REIMPORT_WINDOW = 2.0
_T = TypeVar("_T")

_CONTROL = P.TransferType.CONTROL
_BULK = P.TransferType.BULK
_INTERRUPT = P.TransferType.INTERRUPT
_ISOCHRONOUS = P.TransferType.ISOCHRONOUS
_SETUP_PACK = P.SETUP_STRUCT.pack
_EMPTY = memoryview(b"")
_EMPTY_IN = memoryview(bytearray(0))  # a writable empty buffer for a zero-length control IN
_EXDEV = -18


def urb_interval(speed: int, transfer_type: P.TransferType, bInterval: int) -> int:
    """The URB interval Linux gives an endpoint (usb_fill_int_urb / usbfs), never 0.

    High speed and faster: 2^(bInterval-1) microframes, bInterval clamped to 1..16. Full/low
    speed: bInterval frames for interrupt (at least 1), 2^(bInterval-1) frames for isochronous.
    """
    if speed in (P.Speed.HIGH, P.Speed.SUPER, P.Speed.SUPER_PLUS) or transfer_type == _ISOCHRONOUS:
        return 1 << (min(max(bInterval, 1), 16) - 1)
    return max(bInterval, 1)


def port_numbers_from_busid(busid: str) -> Optional[Tuple[int, ...]]:
    """``"1-1.3"`` -> ``(1, 3)``; ``"3-2"`` -> ``(2,)``; other forms (``usbip-vudc.0``) -> None."""
    m = re.fullmatch(r"\d+-(\d+(?:\.\d+)*)", busid)
    if not m:
        return None
    return tuple(int(p) for p in m.group(1).split("."))


def libusb_speed(wire_speed: int) -> int:
    """The kernel speed enum of a device record -> libusb's (and PyUSB's) speed number."""
    info = SPEEDS.get(wire_speed)
    return info.libusb if info is not None else 0


def natural_busid_key(busid: str) -> Tuple[Tuple[int, int, str], ...]:
    """Sort ``1-1.10`` after ``1-1.9`` (servers list devices in arbitrary order)."""
    return tuple((0, int(t), "") if t.isdigit() else (1, 0, t) for t in re.split(r"(\d+)", busid) if t)


def seconds(timeout_ms: Optional[int]) -> Optional[float]:
    """Millisecond timeouts (PyUSB, libusb) in seconds; 0 or None means wait forever."""
    if not timeout_ms or timeout_ms < 0:
        return None
    return timeout_ms / 1000.0


class Deadline:
    """The time left of one call that may span several URBs (None: no limit)."""

    __slots__ = ("end",)

    def __init__(self, timeout: Optional[float]) -> None:
        self.end = None if timeout is None or timeout <= 0 else time.monotonic() + timeout

    def remaining(self) -> Optional[float]:
        if self.end is None:
            return None
        # A tiny positive value rather than 0, which the engine reads as "forever".
        return max(self.end - time.monotonic(), 1e-6)

    def expired(self) -> bool:
        return self.end is not None and time.monotonic() >= self.end


def read_descriptors(conn: Connection, timeout: Optional[float]) -> Tuple[DeviceDescriptor, List[ConfigurationDescriptor]]:
    """GET_DESCRIPTOR(DEVICE), then each configuration: 9 bytes, then wTotalLength.

    The device descriptor's location fields (bus, address, ports, busid, speed) come from the
    connection's device record.

    At most :data:`~.descriptors.USB_MAXCONFIG` configurations are read, as Linux reads them;
    ``bNumConfigurations`` is lowered to match, so callers that iterate over it find each one.

    Raises:
        ProtocolError: malformed descriptors; the engine's errors for failed transfers.
    """
    raw = conn.control_transfer(0x80, GET_DESCRIPTOR, DT_DEVICE << 8, 0, 18, timeout=timeout)
    assert isinstance(raw, bytes)
    desc = parse_device_descriptor(raw)
    count = configurations_to_read(desc.bNumConfigurations)
    desc.bNumConfigurations = count
    ports = port_numbers_from_busid(conn.busid)
    desc.bus, desc.address, desc.busid = conn.busnum, conn.devnum, conn.busid
    desc.port_numbers = ports
    desc.port_number = ports[-1] if ports else None
    desc.speed = libusb_speed(conn.speed)
    configs = []
    for index in range(count):
        head = conn.control_transfer(0x80, GET_DESCRIPTOR, (DT_CONFIG << 8) | index, 0, 9, timeout=timeout)
        assert isinstance(head, bytes)
        total = config_total_length(head)  # a u16: at most 65535 bytes asked for
        raw = conn.control_transfer(0x80, GET_DESCRIPTOR, (DT_CONFIG << 8) | index, 0, total, timeout=timeout)
        assert isinstance(raw, bytes)
        if len(raw) < total:
            raise ProtocolError(f"configuration {index}: wTotalLength {total}, device sent {len(raw)} bytes")
        configs.append(parse_configuration(raw))
    return desc, configs


class Device:
    """One imported device: its connection, descriptors and the state requests give it.

    Thread-safe. The configuration in force is read with GET_CONFIGURATION the first time it is
    needed (the import reply's value is trusted only when non-zero), then kept in step with
    SET_CONFIGURATION and SET_INTERFACE sent through :meth:`control`.

    Args:
        conn: the imported device's connection.
        descriptor, configurations: as :func:`read_descriptors` returns them.
        name: how errors name the device.
        max_transfer: split bulk/interrupt transfers into URBs of at most this many bytes
            (rounded down to whole packets of the endpoint); None: one URB per transfer.
        timeout: seconds for the requests the device sends on its own (GET_CONFIGURATION).
    """

    def __init__(self, conn: Connection, descriptor: DeviceDescriptor,
                 configurations: List[ConfigurationDescriptor], *, name: Optional[str] = None,
                 max_transfer: Optional[int] = None, timeout: Optional[float] = 5.0) -> None:
        if max_transfer is not None and max_transfer < 1:
            raise ValueError(f"max_transfer must be a positive number of bytes, not {max_transfer}")
        self.conn = conn
        self.busid: str = conn.busid
        self.descriptor = descriptor
        self.configurations = configurations
        self.wire_speed: int = conn.speed
        self.name = name or conn.name
        self.max_transfer = max_transfer
        self.timeout = timeout
        self.lock = threading.RLock()
        #: bConfigurationValue in force, or None when unknown (read with GET_CONFIGURATION).
        self.current_config: Optional[int] = None
        #: bInterfaceNumber -> bAlternateSetting in force (0 when absent).
        self.altsettings: Dict[int, int] = {}
        self._endpoints: Optional[Dict[int, EndpointDescriptor]] = None
        listed = conn.device.bConfigurationValue
        if listed and self.config_by_value(listed) is not None:
            self.current_config = listed

    @property
    def alive(self) -> bool:
        return not self.conn.closed

    def __repr__(self) -> str:
        d = self.descriptor
        return f"<Device {self.name} {d.idVendor:04x}:{d.idProduct:04x}{'' if self.alive else ' gone'}>"

    def close(self) -> None:
        self.conn.close()

    # -- configuration state ---------------------------------------------------------------------
    def forget_state(self, config: Optional[int] = None) -> None:
        """The device's configuration changed (or is unknown): ``config`` in force, alt 0 all."""
        with self.lock:
            self.current_config = config
            self.altsettings.clear()
            self._endpoints = None

    def config_by_value(self, value: Optional[int]) -> Optional[ConfigurationDescriptor]:
        for cfg in self.configurations:
            if cfg.bConfigurationValue == value:
                return cfg
        return None

    def configuration(self) -> int:
        """bConfigurationValue in force (GET_CONFIGURATION the first time)."""
        with self.lock:
            if self.current_config is None:
                buf = bytearray(1)
                n = self.control(0x80, GET_CONFIGURATION, 0, 0, buf, self.timeout)
                if n < 1:
                    raise ProtocolError(f"{self.name}: GET_CONFIGURATION returned no data")
                self.current_config = buf[0]
                self._endpoints = None
            return self.current_config

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

    def any_endpoint(self, address: int) -> Optional[EndpointDescriptor]:
        """The first descriptor of ``address`` in any configuration/alternate setting."""
        for cfg in self.configurations:
            for group in cfg.interfaces:
                for intf in group:
                    for ep in intf.endpoints:
                        if ep.bEndpointAddress == address:
                            return ep
        return None

    def endpoint(self, address: int) -> Optional[EndpointDescriptor]:
        """The endpoint's descriptor in the active configuration (any configuration as fallback)."""
        try:
            self.configuration()
        except UsbipError as exc:
            _log.debug("%s: active configuration unknown (%s)", self.name, exc)
        desc = self.endpoint_map().get(address)
        return desc if desc is not None else self.any_endpoint(address)

    def interval(self, transfer_type: P.TransferType, desc: Optional[EndpointDescriptor]) -> int:
        """The URB interval for a transfer to the endpoint ``desc`` (0 for bulk and control)."""
        if transfer_type == _BULK or transfer_type == _CONTROL:
            return 0
        return urb_interval(self.wire_speed, transfer_type, desc.bInterval if desc is not None else 1)

    def chunk_size(self, desc: Optional[EndpointDescriptor]) -> Optional[int]:
        """max_transfer rounded down to whole packets (a split must not create short packets)."""
        if self.max_transfer is None:
            return None
        mps = endpoint_max_packet(desc) if desc is not None else 0
        if mps <= 0:
            return self.max_transfer
        return max(mps, self.max_transfer // mps * mps)

    def plan(self, transfer_type: P.TransferType, ep: int) -> Tuple[int, Optional[int]]:
        """(URB interval, most bytes per URB or None) for a bulk/interrupt transfer."""
        if transfer_type == _BULK and self.max_transfer is None:
            return 0, None  # the common case: no descriptor lookup
        desc = self.endpoint(ep)
        return self.interval(transfer_type, desc), self.chunk_size(desc)

    # -- control ----------------------------------------------------------------------------------
    def control(self, bmRequestType: int, bRequest: int, wValue: int, wIndex: int,
                data: Optional[object], timeout: Optional[float]) -> int:
        """One control transfer: IN fills ``data`` (a writable buffer) and returns the count, OUT
        sends it. Requests that change the configuration or an alternate setting update the
        state here, as a kernel's usbfs does."""
        buf = flat(data) if data is not None else _EMPTY
        length = buf.nbytes
        if length > 0xFFFF:
            raise ValueError(f"control transfers carry at most 65535 bytes, not {length}")
        setup = _SETUP_PACK(bmRequestType & 0xFF, bRequest & 0xFF, wValue & 0xFFFF, wIndex & 0xFFFF, length)
        if bmRequestType & 0x80:
            return self.conn.sync_transfer(_CONTROL, 0x80, setup, buf if length else _EMPTY_IN, timeout)
        n = self.conn.sync_transfer(_CONTROL, 0x00, setup, buf, timeout)
        self.note_control(bmRequestType, bRequest, wValue, wIndex)
        return n

    def note_control(self, bmRequestType: int, bRequest: int, wValue: int, wIndex: int) -> None:
        """A control OUT request succeeded: keep the configuration state in step with it
        (front ends that send control URBs themselves, such as ``aio``, call this)."""
        if bRequest == SET_CONFIGURATION and bmRequestType == 0x00:
            self.forget_state(wValue & 0xFF)
        elif bRequest == SET_INTERFACE and bmRequestType == 0x01:
            with self.lock:
                self.altsettings[wIndex & 0xFF] = wValue & 0xFF
                self._endpoints = None

    def set_configuration(self, value: int, timeout: Optional[float]) -> None:
        self.control(0x00, SET_CONFIGURATION, value, 0, None, timeout)

    def set_interface(self, interface: int, alternate: int, timeout: Optional[float]) -> None:
        self.control(0x01, SET_INTERFACE, alternate, interface, None, timeout)

    def clear_halt(self, endpoint: int, timeout: Optional[float]) -> None:
        self.control(0x02, CLEAR_FEATURE, FEATURE_ENDPOINT_HALT, endpoint, None, timeout)

    def reset(self, timeout: Optional[float]) -> None:
        """Hub-class SET_PORT_FEATURE(PORT_RESET): what Linux's vhci sends, and the stub resets
        the device for (device-mode servers stall it)."""
        self.control(RT_PORT, SET_FEATURE, PORT_RESET, self.descriptor.port_number or 1, None, timeout)
        self.forget_state(None)

    # -- bulk and interrupt ---------------------------------------------------------------------------
    def read(self, transfer_type: P.TransferType, ep: int, buffer: memoryview, timeout: Optional[float]) -> int:
        """Fill ``buffer`` from IN endpoint ``ep``; returns the count (a short packet ends it).

        Split into URBs of at most ``max_transfer`` bytes, one at a time, straight into the
        buffer, stopping at the first short one so no byte of the device's next transfer is
        consumed. The deadline covers the whole call.

        Raises:
            UsbipTimeoutError: nothing came in time (``transferred`` tells what did, if any).
            UrbError, ConnectionLostError: as the engine raises them.
        """
        if self.max_transfer is None and transfer_type is _BULK:
            return self.conn.sync_transfer(_BULK, ep, None, buffer, timeout)  # nearly every call
        total = buffer.nbytes
        interval, chunk = self.plan(transfer_type, ep)
        if chunk is None or chunk >= total:
            return self.conn.sync_transfer(transfer_type, ep, None, buffer, timeout, interval)
        deadline = Deadline(timeout)
        got = 0
        while True:
            size = min(chunk, total - got)
            try:
                n = self.conn.sync_transfer(transfer_type, ep, None, buffer[got:got + size],
                                            deadline.remaining(), interval)
            except (UsbipTimeoutError, UrbError) as exc:
                exc.transferred += got
                raise
            got += n
            if n < size or got >= total or deadline.expired():
                return got

    def write(self, transfer_type: P.TransferType, ep: int, data: memoryview, timeout: Optional[float]) -> int:
        """Send ``data`` to OUT endpoint ``ep``; returns the count written.

        Split into URBs of at most ``max_transfer`` bytes, up to :data:`OUT_WINDOW` in flight; on
        a failure the rest are unlinked and the error raised with ``transferred`` = bytes
        written; a short write stops what follows.
        """
        if self.max_transfer is None and transfer_type is _BULK:
            return self.conn.sync_transfer(_BULK, ep, None, data, timeout)  # nearly every call
        interval, chunk = self.plan(transfer_type, ep)
        if chunk is None or data.nbytes <= chunk:
            return self.conn.sync_transfer(transfer_type, ep, None, data, timeout, interval)
        return self._write_window(transfer_type, ep, data, chunk, interval, Deadline(timeout))

    def _write_window(self, transfer_type: P.TransferType, ep: int, view: memoryview, chunk: int,
                      interval: int, deadline: Deadline) -> int:
        total = view.nbytes
        offsets = list(range(0, total, chunk))
        in_flight: List[Urb] = []
        written = 0
        next_index = 0
        conn = self.conn
        try:
            while next_index < len(offsets) or in_flight:
                while next_index < len(offsets) and len(in_flight) < OUT_WINDOW:
                    start = offsets[next_index]
                    in_flight.append(conn.submit(transfer_type, ep, data=view[start:start + chunk],
                                                 interval=interval))
                    next_index += 1
                urb = in_flight.pop(0)
                urb.wait(deadline.remaining())
                written += urb.actual_length
                if urb.actual_length < urb.length:
                    break  # a short OUT: the device took less; do not send what follows
        except (UsbipTimeoutError, UrbError) as exc:
            exc.transferred += written
            raise
        finally:
            cancel_all(in_flight)
        return written

    # -- isochronous ----------------------------------------------------------------------------------
    def iso(self, ep: int, view: memoryview, timeout: Optional[float], out: bool) -> int:
        """Packets of the endpoint's max packet size (times mult; on SuperSpeed its companion's
        wBytesPerInterval), the last one shorter, as libusb fills a synchronous ISO transfer.
        Returns the bytes moved; IN data is packed to the front of the buffer (packets that came
        back short leave no gaps).

        Raises:
            NotFoundError: no isochronous endpoint ``ep`` in the active configuration.
        """
        desc = self.endpoint(ep)
        packet = endpoint_max_packet(desc) if desc is not None and desc.transfer_type == 1 else 0  # 1: iso
        if desc is None or packet == 0:
            raise NotFoundError(f"no isochronous endpoint 0x{ep:02x} in the active configuration of {self.name}")
        if self.wire_speed >= P.Speed.SUPER:
            # SuperSpeed: bursts make the per-interval size the companion's wBytesPerInterval,
            # which is what libusb_get_max_iso_packet_size() returns there.
            packet = ss_bytes_per_interval(desc) or packet
        interval = self.interval(_ISOCHRONOUS, desc)
        total = view.nbytes
        if total == 0:
            return 0
        deadline = Deadline(timeout)
        per_urb = packet * P.MAX_ISO_PACKETS
        moved = 0
        for start in range(0, total, per_urb):
            size = min(per_urb, total - start)
            lengths = [packet] * (size // packet) + ([size % packet] if size % packet else [])
            part = view[start:start + size]
            if out:
                urb = self.conn.submit(_ISOCHRONOUS, ep, data=part, interval=interval, iso_packet_lengths=lengths)
            else:
                urb = self.conn.submit(_ISOCHRONOUS, ep, buffer=part, interval=interval, iso_packet_lengths=lengths)
            try:
                urb.wait(deadline.remaining())
            except UrbError as exc:
                # -EXDEV: some packets failed. Like libusb, report what did get through, unless
                # nothing did (device-mode servers answer -EXDEV for every ISO URB).
                if exc.status != _EXDEV or not any(r.actual_length for r in (urb.iso_results or [])):
                    raise
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


def cancel_all(urbs: Sequence[Urb], wait: float = CANCEL_WAIT) -> None:
    """Unlink URBs still in flight and wait (bounded) until each has ended."""
    for urb in urbs:
        urb.cancel()
    for urb in urbs:
        try:
            urb.wait(wait)
        except UsbipError:
            pass


def retry_busy_after_release(fn: Callable[[], _T], released: Optional[float],
                             window: float = REIMPORT_WINDOW) -> _T:
    """``fn()`` (an import); while it is refused ST_DEV_BUSY within ``window`` seconds of our own
    release at ``released`` (time.monotonic()), try again with a short back-off."""
    delay = 0.005
    while True:
        try:
            return fn()
        except ImportRefusedError as exc:
            if (exc.status != P.Status.ST_DEV_BUSY or released is None
                    or time.monotonic() - released + delay > window):
                raise
        time.sleep(delay)  # back-off while the server finishes our release
        delay = min(delay * 2, 0.1)


def open_device(host: str, port: int, busid: str, *, timeout: Optional[float] = 5.0,
                connect_timeout: Optional[float] = None, ssl: TlsArg = None,
                connect: Optional[Connector] = None, **kwargs: object) -> Device:
    """Import ``busid`` from ``host:port`` and read its descriptors.

    ``ssl`` (TLS to the server) and ``connect`` (a callable returning a connected socket-like
    object) are as for :func:`~.client.connect`. ``kwargs`` go to :func:`~.client.import_device`
    (``hook``, ``unlink_grace``, ``loss_level``...) except ``max_transfer``, which goes to :class:`Device`.
    """
    from .client import import_device

    max_transfer = kwargs.pop("max_transfer", None)
    conn = import_device(host, port, busid, timeout=connect_timeout if connect_timeout is not None else timeout,
                         ssl=ssl, connect=connect, **kwargs)  # type: ignore[arg-type]
    try:
        desc, configs = read_descriptors(conn, timeout)
    except BaseException:
        conn.close()
        raise
    return Device(conn, desc, configs, name=f"{busid} on {host}:{port}",
                  max_transfer=max_transfer, timeout=timeout)  # type: ignore[arg-type]
