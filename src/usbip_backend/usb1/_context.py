"""USBContext, USBDevice and USBDeviceHandle: python-libusb1's device side, over USB/IP.

Where USB/IP differs from a local bus:

* The device list comes from OP_REQ_DEVLIST: ids, class, bus/device numbers and speed are known
  without touching the device. Anything read from the device itself (bcdUSB, bMaxPacketSize0,
  configurations, strings) needs it imported, and an import is exclusive: other clients of the
  server no longer see it. So a :class:`USBDevice` imports its device the first time such a
  thing is asked, or when it is opened, and releases it when its last handle closes (or when the
  device or the context is closed).
* There is no kernel driver on the client side: the kernel-driver calls are no-ops, and claiming
  an interface is bookkeeping.
* Events are not file descriptors of libusb's: completions are queued by the URB engine and handed
  to callbacks by ``handleEvents*()``. ``getPollFDList()`` gives one socket that is readable while
  completions wait, for event loops.
"""

from __future__ import annotations

import collections
import functools
import logging
import select
import socket
import threading
import time
from typing import Any, Callable, Deque, Dict, Iterator, List, NoReturn, Optional, Sequence, Set, Tuple, TypeVar

from .. import protocol as P
from ..client import list_devices, socket_timeout
from ..descriptors import DeviceDescriptor, EndpointDescriptor, endpoint_max_packet
from ..device import (
    Device, libusb_speed, natural_busid_key, open_device, port_numbers_from_busid, retry_busy_after_release,
    seconds,
)
from ..engine import Urb, UrbState, flat
from ..engine.transport import Connector, TlsArg, tls_context
from ..errors import UsbipError
from ..hooks import UrbHook
from . import _constants as C
from ._descriptors import USBConfiguration, USBInterfaceSetting, iter_settings
from ._errors import USBError, USBErrorNoDevice, USBErrorNotFound, USBErrorPipe, usb_error
from ._transfer import USBTransfer

_log = logging.getLogger(__name__)
_T = TypeVar("_T")

#: libusb_handle_events() gives up after 60 s without an event.
_HANDLE_EVENTS_TIMEOUT = 60.0
#: How long handleEvents() reads one connection's socket itself before it looks again at
#: interrupts and at completions another thread read.
_PUMP_SLICE = 0.02
#: How many times one handleEvents*() call goes on with replies already read (bounded: the
#: caller's own loop must get a turn).
_MORE_ROUNDS = 4
_DONE = UrbState.DONE
#: "Some devices choke on size > 255" (libusb, descriptor.c).
_STRING_LENGTH = 255


class _ReleaseInterface:
    """What claimInterface() returns: releases the interface on exit."""

    def __init__(self, handle: "USBDeviceHandle", interface: int) -> None:
        self._handle = handle
        self._interface = interface

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: Any) -> None:
        self._handle.releaseInterface(self._interface)


class USBDeviceHandle:
    """An opened device (python-libusb1's ``USBDeviceHandle``): synchronous I/O, transfers."""

    def __init__(self, context: "USBContext", device: "USBDevice", dev: Device) -> None:
        self._context = context
        self._device = device
        self._dev = dev
        self._inflight: Set[USBTransfer] = set()
        self._queues: Dict[int, Deque[USBTransfer]] = {}  # endpoint -> submitted, in order
        self._claimed: Set[int] = set()
        self._closed = False

    def __repr__(self) -> str:
        return f"<USBDeviceHandle {self._dev.name}{' closed' if self._closed else ''}>"

    def _alive(self) -> Device:
        if self._closed:
            raise USBErrorNoDevice()
        return self._dev

    def _raise(self, exc: BaseException) -> NoReturn:
        raise usb_error(exc) from exc

    # -- lifetime -----------------------------------------------------------------------------------
    def close(self) -> None:
        """Cancel every transfer in flight and let events be handled until each has ended
        (their callbacks run, with TRANSFER_CANCELLED or whatever won the race), then close."""
        if self._closed:
            return
        context = self._context
        cancelled: Set[USBTransfer] = set()
        while self._inflight:
            for transfer in tuple(self._inflight):
                if transfer not in cancelled:
                    try:
                        transfer.cancel()
                    except USBError:
                        pass
                    cancelled.add(transfer)
            context._handle_events(_HANDLE_EVENTS_TIMEOUT, until=lambda: not self._inflight)
        self._closed = True
        self._device._handle_closed(self)

    def __enter__(self) -> "USBDeviceHandle":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def getDevice(self) -> "USBDevice":
        return self._device

    # -- configuration and interfaces -----------------------------------------------------------------
    def getConfiguration(self) -> int:
        dev = self._alive()
        try:
            return dev.configuration()
        except UsbipError as exc:
            self._raise(exc)

    def setConfiguration(self, configuration: int) -> None:
        dev = self._alive()
        try:
            dev.set_configuration(configuration, self._context._timeout)
        except UsbipError as exc:
            self._raise(exc)

    def claimInterface(self, interface: int) -> _ReleaseInterface:
        """Claim an interface (bookkeeping over USB/IP); usable as a context manager."""
        self._alive()
        self._claimed.add(interface)
        return _ReleaseInterface(self, interface)

    def releaseInterface(self, interface: int) -> None:
        self._alive()
        if interface not in self._claimed:
            raise USBErrorNotFound()
        self._claimed.discard(interface)

    def setInterfaceAltSetting(self, interface: int, alt_setting: int) -> None:
        dev = self._alive()
        try:
            dev.set_interface(interface, alt_setting, self._context._timeout)
        except UsbipError as exc:
            self._raise(exc)

    def clearHalt(self, endpoint: int) -> None:
        dev = self._alive()
        try:
            dev.clear_halt(endpoint, self._context._timeout)
        except UsbipError as exc:
            self._raise(exc)

    def resetDevice(self) -> None:
        """SET_PORT_FEATURE(PORT_RESET), which Linux's stub turns into a device reset (device-mode
        servers stall it: USBErrorPipe)."""
        dev = self._alive()
        try:
            dev.reset(self._context._timeout)
        except UsbipError as exc:
            self._raise(exc)

    def kernelDriverActive(self, interface: int) -> bool:
        return False  # no local kernel driver binds a device imported this way

    def detachKernelDriver(self, interface: int) -> None:
        pass

    def attachKernelDriver(self, interface: int) -> None:
        pass

    def setAutoDetachKernelDriver(self, enable: bool) -> None:
        pass

    # -- strings ------------------------------------------------------------------------------------
    def _string(self, index: int, lang_id: int) -> bytes:
        buf = bytearray(_STRING_LENGTH)
        n = self._control(C.ENDPOINT_IN, C.REQUEST_GET_DESCRIPTOR, (C.DT_STRING << 8) | index, lang_id, buf,
                          self._context._timeout)
        return bytes(buf[:n])

    def _string_text(self, index: int, lang_id: int, errors: str) -> Optional[str]:
        """String ``index`` in ``lang_id`` decoded; None if the device has no such string."""
        try:
            raw = self._string(index, lang_id)
        except (USBErrorNotFound, USBErrorPipe):
            return None
        if len(raw) < 2 or raw[1] != C.DT_STRING:
            raise ValueError("Invalid string descriptor")
        return raw[2:min(len(raw), raw[0])].decode("UTF-16-LE", errors=errors)

    def getSupportedLanguageList(self) -> List[int]:
        try:
            raw = self._string(0, 0)
        except USBErrorPipe:
            return []  # string descriptors not supported by the device
        return [raw[i] | (raw[i + 1] << 8) for i in range(2, min(len(raw), raw[0] if raw else 0) - 1, 2)]

    def getStringDescriptor(self, descriptor: int, lang_id: int, errors: str = "strict") -> Optional[str]:
        """The string ``descriptor`` in language ``lang_id``; None for index 0 or no such string."""
        if descriptor == 0:
            return None
        return self._string_text(descriptor, lang_id, errors)

    def getASCIIStringDescriptor(self, descriptor: int, errors: str = "strict") -> Optional[str]:
        """The string ``descriptor`` in the device's first language, as libusb's
        get_string_descriptor_ascii (characters beyond ASCII become '?')."""
        if descriptor == 0:
            return None
        langs = self.getSupportedLanguageList()
        if not langs:
            return None
        text = self._string_text(descriptor, langs[0], "replace")
        if text is None:
            return None
        ascii_bytes = "".join(ch if ord(ch) < 0x80 else "?" for ch in text).encode("ascii")
        return ascii_bytes.decode("ASCII", errors=errors)

    def getManufacturer(self) -> Optional[str]:
        return self.getASCIIStringDescriptor(self._dev.descriptor.iManufacturer)

    def getProduct(self) -> Optional[str]:
        return self.getASCIIStringDescriptor(self._dev.descriptor.iProduct)

    def getSerialNumber(self) -> Optional[str]:
        return self.getASCIIStringDescriptor(self._dev.descriptor.iSerialNumber)

    # -- synchronous I/O ------------------------------------------------------------------------------
    def _control(self, request_type: int, request: int, value: int, index: int, data: Any,
                 timeout: Optional[float]) -> int:
        dev = self._alive()
        try:
            return dev.control(request_type, request, value, index, data, timeout)
        except UsbipError as exc:
            self._raise(exc)

    def controlWrite(self, request_type: int, request: int, value: int, index: int, data: Any,
                     timeout: int = 0) -> int:
        """Synchronous control OUT; returns the count sent."""
        request_type = (request_type & ~C.ENDPOINT_DIR_MASK) | C.ENDPOINT_OUT
        return self._control(request_type, request, value, index, data, seconds(timeout))

    def controlRead(self, request_type: int, request: int, value: int, index: int, length: int,
                    timeout: int = 0) -> bytes:
        """Synchronous control IN; returns the data received."""
        request_type = (request_type & ~C.ENDPOINT_DIR_MASK) | C.ENDPOINT_IN
        buf = bytearray(length)
        n = self._control(request_type, request, value, index, buf, seconds(timeout))
        return bytes(buf[:n])

    def _write(self, kind: P.TransferType, endpoint: int, data: Any, timeout: int) -> int:
        dev = self._alive()
        try:
            return dev.write(kind, (endpoint & ~C.ENDPOINT_DIR_MASK) | C.ENDPOINT_OUT, flat(data), seconds(timeout))
        except UsbipError as exc:
            self._raise(exc)

    def _read(self, kind: P.TransferType, endpoint: int, length: int, timeout: int) -> bytes:
        dev = self._alive()
        buf = bytearray(length)
        try:
            n = dev.read(kind, (endpoint & ~C.ENDPOINT_DIR_MASK) | C.ENDPOINT_IN, memoryview(buf), seconds(timeout))
        except UsbipError as exc:
            err = usb_error(exc)
            err.received = bytes(buf[:err.transferred])
            raise err from exc
        return bytes(buf[:n])

    def bulkWrite(self, endpoint: int, data: Any, timeout: int = 0) -> int:
        """Synchronous bulk OUT; on a timeout USBErrorTimeout carries ``transferred``."""
        return self._write(P.TransferType.BULK, endpoint, data, timeout)

    def bulkRead(self, endpoint: int, length: int, timeout: int = 0) -> bytes:
        """Synchronous bulk IN; on a timeout USBErrorTimeout carries ``transferred`` and
        ``received``."""
        return self._read(P.TransferType.BULK, endpoint, length, timeout)

    def interruptWrite(self, endpoint: int, data: Any, timeout: int = 0) -> int:
        return self._write(P.TransferType.INTERRUPT, endpoint, data, timeout)

    def interruptRead(self, endpoint: int, length: int, timeout: int = 0) -> bytes:
        return self._read(P.TransferType.INTERRUPT, endpoint, length, timeout)

    # -- asynchronous transfers -----------------------------------------------------------------------
    def getTransfer(self, iso_packets: int = 0, short_is_error: bool = False,
                    add_zero_packet: bool = False) -> USBTransfer:
        """A new USBTransfer for this handle."""
        self._alive()
        return USBTransfer(self, iso_packets, short_is_error, add_zero_packet)

    def _submit(self, transfer: USBTransfer) -> None:
        """Queue ``transfer`` on its endpoint and send its URB: batched (queued, sent after the
        batch) when a callback of handleEvents' batch submits it."""
        if self._closed:
            raise USBErrorNoDevice()
        dev = self._dev
        args = transfer._args
        last = transfer._urb
        queue = transfer._queue
        engine_type = None
        if args is None or last is None or transfer._urb_args is not args \
                or last.conn is not dev.conn or last.state is not _DONE or queue is None:
            # Not a transfer submitted again as it was set up (a pump, which the engine makes
            # again in place, without checking its arguments: only the transfer holds its URB,
            # and its result was taken before the callback that resubmits it).
            last = None
            kind = transfer._type
            assert kind is not None
            engine_type = P.transfer_type_from_attributes(kind)  # libusb numbers them as bmAttributes
            if args is None:
                # What the engine is given, made once per setup (a pump resubmits the same transfer).
                interval = 0
                if kind in (C.TRANSFER_TYPE_INTERRUPT, C.TRANSFER_TYPE_ISOCHRONOUS):
                    interval = dev.interval(engine_type, dev.endpoint(transfer._endpoint))
                args = transfer._args = transfer._engine_args(interval)
                args["callback"] = functools.partial(self._context._urb_done, transfer)
            if queue is None:
                queue = self._queues.get(transfer._endpoint)
                if queue is None:
                    queue = self._queues[transfer._endpoint] = collections.deque()
                transfer._queue = queue
        conn = dev.conn
        transfer._completed = False
        transfer._submitted = True
        # deque.append and set.add are atomic: handleEvents' thread may be popping meanwhile.
        queue.append(transfer)
        self._inflight.add(transfer)
        context = self._context
        try:
            batched = context._batch_thread == threading.get_ident()
            if last is not None:
                transfer._urb = conn.resubmit(last, timeout=args["timeout"], callback=args["callback"],
                                              block=not batched, flush=not batched, in_place=True)
            else:
                assert engine_type is not None
                transfer._urb = conn.submit(engine_type, transfer._endpoint, block=not batched,
                                            flush=not batched, **args)
                transfer._urb_args = args
            if batched:
                context._batch_conns.add(conn)
        except BaseException as exc:
            with context._events:
                queue.remove(transfer)
                self._inflight.discard(transfer)
            transfer._submitted = False
            if isinstance(exc, UsbipError):
                raise usb_error(exc) from exc
            raise


class USBDevice:
    """A device the server exports (python-libusb1's ``USBDevice``).

    What the device list says is known at once; descriptors and strings import the device first
    (see the module docstring).
    """

    def __init__(self, context: "USBContext", record: P.UsbDevice) -> None:
        self._context = context
        self._record = record
        self._dev: Optional[Device] = None
        self._released: Optional[float] = None  # when this object last gave its import back
        self._handles: Set[USBDeviceHandle] = set()
        self._lock = threading.RLock()

    def __str__(self) -> str:
        return (f"Bus {self.getBusNumber():03} Device {self.getDeviceAddress():03}: "
                f"ID {self.getVendorID():04x}:{self.getProductID():04x}")

    def __repr__(self) -> str:
        return f"<USBDevice {self._record.busid} {self.getVendorID():04x}:{self.getProductID():04x}>"

    def __hash__(self) -> int:
        return hash((id(self._context), self._record.busid))

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, USBDevice) and other._context is self._context
                and other._record.busid == self._record.busid)

    @property
    def busid(self) -> str:
        """The server's name for the device (``1-1``...): what an import asks for."""
        return self._record.busid

    # -- import ----------------------------------------------------------------------------------------
    def _imported(self) -> Device:
        with self._lock:
            dev = self._dev
            if dev is not None and dev.alive:
                return dev
            busid = self._record.busid
            self._dev = dev = retry_busy_after_release(lambda: self._context._import(busid), self._released)
            return dev

    def _release(self) -> None:
        """Give the import back to the server's other clients (it is exclusive)."""
        with self._lock:
            if self._dev is not None:
                self._dev.close()
                self._dev = None
                self._released = time.monotonic()

    def _handle_closed(self, handle: USBDeviceHandle) -> None:
        with self._lock:
            self._handles.discard(handle)
            if not self._handles:
                self._release()

    def close(self) -> None:
        """Close this device's handles and release its import."""
        for handle in list(self._handles):
            handle.close()
        self._release()

    def _device(self) -> Device:
        """The imported device; a failed import raises the USBError libusb would."""
        try:
            return self._imported()
        except UsbipError as exc:
            raise usb_error(exc) from exc

    def open(self) -> USBDeviceHandle:
        """Import the device (if not yet) and return a handle to it."""
        dev = self._device()
        handle = USBDeviceHandle(self._context, self, dev)
        with self._lock:
            self._handles.add(handle)
        return handle

    def _descriptor(self) -> DeviceDescriptor:
        return self._device().descriptor

    # -- from the device list ----------------------------------------------------------------------------
    def getBusNumber(self) -> int:
        return self._record.busnum

    def getDeviceAddress(self) -> int:
        return self._record.devnum

    def getPortNumberList(self) -> List[int]:
        return list(port_numbers_from_busid(self._record.busid) or ())

    def getPortNumber(self) -> int:
        ports = self.getPortNumberList()
        return ports[-1] if ports else 0

    def getVendorID(self) -> int:
        return self._record.idVendor

    def getProductID(self) -> int:
        return self._record.idProduct

    def getbcdDevice(self) -> int:
        return self._record.bcdDevice

    def getDeviceClass(self) -> int:
        return self._record.bDeviceClass

    def getDeviceSubClass(self) -> int:
        return self._record.bDeviceSubClass

    def getDeviceProtocol(self) -> int:
        return self._record.bDeviceProtocol

    def getDeviceSpeed(self) -> int:
        return libusb_speed(self._record.speed)

    def getNumConfigurations(self) -> int:
        if self._dev is not None:
            return self._dev.descriptor.bNumConfigurations
        return self._record.bNumConfigurations

    # -- from the device (imports it) ----------------------------------------------------------------------
    def getbcdUSB(self) -> int:
        return self._descriptor().bcdUSB

    def getMaxPacketSize0(self) -> int:
        return self._descriptor().bMaxPacketSize0

    def getManufacturerDescriptor(self) -> int:
        return self._descriptor().iManufacturer

    def getProductDescriptor(self) -> int:
        return self._descriptor().iProduct

    def getSerialNumberDescriptor(self) -> int:
        return self._descriptor().iSerialNumber

    def _configurations(self) -> List[USBConfiguration]:
        dev = self._device()
        speed = self.getDeviceSpeed()
        return [USBConfiguration(cfg, speed) for cfg in dev.configurations]

    def __len__(self) -> int:
        return len(self._configurations())

    def __getitem__(self, index: int) -> USBConfiguration:
        return self._configurations()[index]

    def iterConfigurations(self) -> Iterator[USBConfiguration]:
        return iter(self._configurations())

    iterConfiguations = iterConfigurations  # python-libusb1's old misspelling

    def iterSettings(self) -> Iterator[USBInterfaceSetting]:
        return iter_settings(self._configurations())

    def getMaxPacketSize(self, endpoint: int) -> int:
        """wMaxPacketSize bits 10..0 of ``endpoint`` in the active configuration (libusb's
        libusb_get_max_packet_size)."""
        return self._endpoint(endpoint).wMaxPacketSize & 0x7FF

    def getMaxISOPacketSize(self, endpoint: int) -> int:
        """Bytes per (micro)frame of an isochronous ``endpoint`` (size x (1 + mult))."""
        return endpoint_max_packet(self._endpoint(endpoint))

    def _endpoint(self, endpoint: int) -> EndpointDescriptor:
        ep = self._device().endpoint(endpoint)
        if ep is None:
            raise USBErrorNotFound()
        return ep

    def _via_handle(self, call: Callable[[USBDeviceHandle], _T]) -> _T:
        """``call(handle)`` on a handle of its own (libusb opens one for these too). The handle
        is not registered, so the import stays, as after the descriptor getters."""
        return call(USBDeviceHandle(self._context, self, self._device()))

    def getManufacturer(self) -> Optional[str]:
        return self._via_handle(USBDeviceHandle.getManufacturer)

    def getProduct(self) -> Optional[str]:
        return self._via_handle(USBDeviceHandle.getProduct)

    def getSerialNumber(self) -> Optional[str]:
        return self._via_handle(USBDeviceHandle.getSerialNumber)

    def getSupportedLanguageList(self) -> List[int]:
        return self._via_handle(USBDeviceHandle.getSupportedLanguageList)


class USBContext:
    """A USB/IP server seen as a libusb context (python-libusb1's ``USBContext``).

    Args:
        host, port: the server; ``host=None`` finds the one server announcing itself over mDNS.
        busids: see and import only these devices.
        timeout: seconds for the device list, imports, descriptor reads and the handles' own
            requests (0: no limit).
        pcap: record every URB as pcapng: a path, or a hook such as ``PcapWriter``.
        ssl: TLS to a server behind a TLS terminator: True for ``ssl.create_default_context()``,
            or an ``ssl.SSLContext`` used as given; the certificate is checked against ``host``.
        connect: ``connect(host, port, timeout)`` returning a connected socket-like object
            (an SSH channel, :func:`~usbip_backend.client.command_connector`'s); the device list
            and every import connect through it.
        mdns_interfaces: with ``host=None``, the local addresses mDNS asks on (None: all).

    Use it as ``with USBContext(host=...) as ctx:``; leaving it cancels the transfers still in
    flight, lets their callbacks run, and closes every connection.
    """

    def __init__(self, host: Optional[str] = None, port: int = P.USBIP_PORT, *,
                 busids: Optional[List[str]] = None, timeout: float = 5.0, pcap: Any = None,
                 ssl: TlsArg = None, connect: Optional[Connector] = None,
                 mdns_interfaces: Optional[Sequence[str]] = None) -> None:
        self.host = host
        self.port = port
        self._mdns_interfaces = mdns_interfaces
        self._ssl = tls_context(ssl)
        self._connect = connect
        self.busids = list(busids) if busids is not None else None
        self._timeout = socket_timeout(timeout)
        self._pcap = pcap
        self._hook: Optional[UrbHook] = None
        self._owns_hook = False
        self._open = False
        self._devices: Dict[str, USBDevice] = {}
        # Completions the engine queued, in the order they ended; handled by handleEvents*().
        self._events = threading.RLock()  # one event handler at a time (re-entered by callbacks)
        # _cond's lock, held directly where nothing waits or notifies (no Python frame per with)
        self._cond_lock = threading.Lock()
        self._cond = threading.Condition(self._cond_lock)
        self._ready: Deque[USBTransfer] = collections.deque()
        self._interrupted = False
        # While handleEvents*() runs callbacks, the transfers they resubmit are queued and their
        # connections flushed once after the batch: one send for many CMD_SUBMITs, as a pump of
        # transfers resubmitted from their callbacks does every round.
        self._batch_thread: Optional[int] = None
        self._batch_conns: Set[Any] = set()
        self._handler: Optional[int] = None  # the thread in handleEvents*(), if one is
        self._poll_r: Optional[socket.socket] = None
        self._poll_w: Optional[socket.socket] = None

    def __repr__(self) -> str:
        return f"<USBContext {self.host}:{self.port}{'' if self._open else ' closed'}>"

    # -- lifetime ---------------------------------------------------------------------------------------
    def open(self) -> "USBContext":
        if self._open:
            return self
        if self.host is None:
            from ..discovery import resolve_single_server  # lazy: zeroconf only when asked for

            server = resolve_single_server(interfaces=self._mdns_interfaces)
            self.host, self.port = server.address, server.port
        pcap = self._pcap
        if pcap is not None and not isinstance(pcap, UrbHook):
            from ..pcap import PcapWriter

            pcap = PcapWriter(pcap)
            self._owns_hook = True
        self._hook = pcap
        self._open = True
        return self

    def close(self) -> None:
        """Cancel every transfer in flight (their callbacks run), close every device."""
        if not self._open:
            return
        for device in list(self._devices.values()):
            device.close()
        self._devices.clear()
        self._open = False
        if self._owns_hook and self._hook is not None:
            self._hook.close()  # type: ignore[attr-defined]
        self._hook = None
        for s in (self._poll_r, self._poll_w):
            if s is not None:
                s.close()
        self._poll_r = self._poll_w = None

    exit = close  # python-libusb1's deprecated alias

    def __enter__(self) -> "USBContext":
        return self.open()

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _check_open(self) -> None:
        if not self._open:
            self.open()

    # -- devices -------------------------------------------------------------------------------------------
    def _import(self, busid: str) -> Device:
        assert self.host is not None
        return open_device(self.host, self.port, busid, timeout=self._timeout, hook=self._hook,
                           ssl=self._ssl, connect=self._connect)

    def getDeviceIterator(self, skip_on_error: bool = False) -> Iterator[USBDevice]:
        """The server's devices (OP_REQ_DEVLIST), plus those this context holds (a server does not
        list devices that are imported)."""
        self._check_open()
        assert self.host is not None
        try:
            records = list_devices(self.host, self.port, timeout=self._timeout, ssl=self._ssl,
                                   connect=self._connect)
        except UsbipError as exc:
            raise usb_error(exc) from exc
        seen = {r.busid: r for r in records}
        for busid, device in self._devices.items():
            seen.setdefault(busid, device._record)
        for busid in sorted(seen, key=natural_busid_key):
            if self.busids is not None and busid not in self.busids:
                continue
            known = self._devices.get(busid)
            if known is None:
                known = self._devices[busid] = USBDevice(self, seen[busid])
            yield known

    def getDeviceList(self, skip_on_access_error: bool = False, skip_on_error: bool = False) -> List[USBDevice]:
        return list(self.getDeviceIterator(skip_on_error=skip_on_access_error or skip_on_error))

    def getByVendorIDAndProductID(self, vendor_id: int, product_id: int, skip_on_access_error: bool = False,
                                  skip_on_error: bool = False) -> Optional[USBDevice]:
        """The first device with these ids (from the device list: nothing is imported)."""
        for device in self.getDeviceIterator(skip_on_error=skip_on_access_error or skip_on_error):
            if device.getVendorID() == vendor_id and device.getProductID() == product_id:
                return device
        return None

    def openByVendorIDAndProductID(self, vendor_id: int, product_id: int, skip_on_access_error: bool = False,
                                   skip_on_error: bool = False) -> Optional[USBDeviceHandle]:
        device = self.getByVendorIDAndProductID(vendor_id, product_id, skip_on_access_error, skip_on_error)
        return device.open() if device is not None else None

    # -- events ---------------------------------------------------------------------------------------------
    def _urb_done(self, transfer: USBTransfer, _urb: Optional[Urb] = None) -> None:
        """The engine ended a transfer's URB (any thread): queue it for handleEvents*()."""
        if self._handler == threading.get_ident():
            # Read by the thread handling events, which is the only one that waits on _cond:
            # nobody to wake (deque.append is atomic against the reader thread's).
            was_empty = not self._ready
            self._ready.append(transfer)
        else:
            with self._cond:
                was_empty = not self._ready
                self._ready.append(transfer)
                self._cond.notify_all()
        if was_empty and self._poll_w is not None:
            try:
                self._poll_w.send(b"\0")
            except OSError:
                pass

    def handleEvents(self) -> None:
        """Hand completed transfers to their callbacks, on this thread; waits (up to 60 s, as
        libusb) for at least one. A callback's exception is raised from here (the transfers
        that completed after it stay queued for the next call)."""
        self._handle_events(_HANDLE_EVENTS_TIMEOUT)

    def handleEventsTimeout(self, tv: Optional[float] = 0) -> None:
        """As :meth:`handleEvents`, waiting at most ``tv`` seconds (0: only what is pending)."""
        self._handle_events(float(tv or 0))

    def interruptEventHandler(self) -> None:
        """Make a handleEvents*() blocked in another thread return."""
        with self._cond:
            self._interrupted = True
            self._cond.notify_all()

    def getNextTimeout(self) -> Optional[float]:
        """None: the engine times transfers itself; nothing for the caller to wake up for."""
        return None

    def getPollFDList(self) -> List[Tuple[int, int]]:
        """One (fd, POLLIN) readable while completions wait: poll it, then call
        ``handleEventsTimeout(0)``."""
        if self._poll_r is None:
            self._poll_r, self._poll_w = socket.socketpair()
            self._poll_r.setblocking(False)
            self._poll_w.setblocking(False)
            if self._ready:
                self._poll_w.send(b"\0")
        return [(self._poll_r.fileno(), select.POLLIN if hasattr(select, "POLLIN") else 1)]

    def _busy_connection(self) -> Optional[Any]:
        """The one connection with transfers in flight, if there is exactly one."""
        found = None
        for device in self._devices.values():
            for handle in list(device._handles):
                if handle._inflight:
                    conn = handle._dev.conn
                    if found is not None and found is not conn:
                        return None
                    found = conn
        return found

    def _handle_events(self, timeout: float, until: Any = None) -> None:
        deadline = time.monotonic() + timeout
        with self._events:
            outer, self._handler = self._handler, threading.get_ident()
            try:
                self._handle_events_locked(deadline, until)
            finally:
                self._handler = outer

    def _handle_events_locked(self, deadline: float, until: Any) -> None:
        conn = self._busy_connection()
        if conn is not None:
            # Take what has arrived on this thread: the reader thread then leaves the socket
            # to us while we keep handling events (one thread, no hand-over per reply).
            conn.pump(0)
        while True:
            with self._cond_lock:
                if self._ready or self._interrupted or (until is not None and until()):
                    break
                left = deadline - time.monotonic()
                if left <= 0:
                    break
            conn = self._busy_connection()
            # One device busy: read its replies on this thread (the callbacks run here
            # anyway), in slices, so an interrupt or a completion from elsewhere is seen.
            if conn is not None and conn.pump(min(left, _PUMP_SLICE)):
                continue
            with self._cond:
                if not self._ready and not self._interrupted:
                    self._cond.wait(min(left, _PUMP_SLICE) if conn is not None else left)
        with self._cond_lock:
            self._interrupted = False
        if self._poll_r is not None:
            try:
                self._poll_r.recv(512)
            except (BlockingIOError, OSError):
                pass
        self._batch_thread = threading.get_ident()
        try:
            for _ in range(_MORE_ROUNDS):
                with self._cond_lock:
                    batch = list(self._ready)
                    self._ready.clear()
                for i, transfer in enumerate(batch):
                    transfer._completed = True
                    try:
                        self._deliver(transfer)
                    except BaseException:
                        with self._cond_lock:
                            self._ready.extendleft(reversed(batch[i + 1:]))
                        raise
                # Replies that came in the same recv: theirs too before the resubmitted
                # transfers go out, so one send carries more of them. (Only a connection this
                # thread pumped can hold them.)
                if conn is None or not conn.buffered or not conn.pump(0):
                    break
        finally:
            self._batch_thread = None
            conns, self._batch_conns = self._batch_conns, set()
            for conn in conns:
                conn.flush()

    def _deliver(self, transfer: USBTransfer) -> None:
        """Hand back ``transfer`` and those behind it on its endpoint, in submission order,
        each as soon as everything submitted before it on that endpoint has been."""
        queue = transfer._queue
        if queue is None:
            return
        while queue and queue[0]._completed:
            head = queue.popleft()
            handle = head._handle
            head._finish()
            head._submitted = False
            head._completed = False
            if handle is not None:
                handle._inflight.discard(head)
            callback = head._callback
            try:
                if callback is not None:
                    callback(head)
            finally:
                if head._doomed and not head._submitted:
                    head.close()


__all__ = ["USBContext", "USBDevice", "USBDeviceHandle"]
