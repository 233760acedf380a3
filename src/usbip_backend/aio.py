"""asyncio API: await USB transfers on a device a USB/IP server exports (in ausb's shape).

::

    async with aio.Context("192.168.1.20") as ctx:              # OP_REQ_DEVLIST on enter
        desc = ctx.device_get(vendor_id=0x1209, product_id=0x0001)
        async with await desc.open() as device:                  # OP_REQ_IMPORT
            data = await device.read(0xC0, 0x5C, 0, 0, 64)        # control IN
            intf = device.interface_claim(0)
            ep_in = intf.open(intf.descriptor[0].endpoint_by_address(0x81))
            data = await asyncio.wait_for(ep_in.read(512), 1.5)  # cancelled: CMD_UNLINK

How it runs. Each imported device is one engine :class:`~usbip_backend.engine.Connection`. The
loop reads its socket: a reader callback (``loop.add_reader``) takes what has arrived without
waiting and dispatches each reply that is whole (:meth:`Connection.pump_ready`), so completions
happen on the loop's thread with no thread hop. An IN stream whose head URB has not ended runs
that same read itself before it waits (the server is often ahead: its replies are there
already), and waits on the loop after :attr:`AsyncInStream.DIRECT_READS` such reads in a row, so
other tasks get their turn. A reply bigger than the engine's read buffer
(64 KiB) is handed to the connection's reader thread, which reads it (waiting for its bytes on its
own thread) and gives the socket back. The reader thread also keeps the timers (timeouts,
unlink graces). Submits never block (``submit(block=False)``: a CMD_SUBMIT and its payload go
out as far as the socket takes them at once, the reader thread sends the rest as it drains, so
even a 64 MiB write never blocks the loop); cancels post CMD_UNLINK and never wait. URBs ended on
another thread reach the loop through a per-loop inbox, one wake-up per batch
(:class:`_Inbox`). No thread waits per transfer. Loops without ``add_reader`` (Windows'
proactor loop) leave all reading to the reader thread. Imports, closes and OP_REQ_DEVLIST, short
blocking exchanges, run in the loop's default executor.

Both designs were measured (``tools/bench/run.py --only aio``): handing every completion from
the reader thread to the loop costs two thread wake-ups and GIL hand-overs per URB, several
times slower with many transfers in flight than reading on the loop, as an ``asyncio.Protocol``
does.

Cancellation. A task awaiting a transfer that is cancelled (``asyncio.wait_for`` timing out,
``task.cancel()``) sends CMD_UNLINK and waits for the server's verdict (or the engine's unlink
grace) before :class:`asyncio.CancelledError` propagates, so the transfer is over when the
cancellation is. If the transfer completed first (its reply crossed the CMD_UNLINK), nothing is
lost: IN data goes to the endpoint handle and the next :meth:`InEndpoint.read` or
:meth:`InEndpoint.read_into` returns it first; the count of an OUT write that completed is in
:attr:`OutEndpoint.written_while_cancelled`.

Where USB/IP differs from a local bus: the device list (OP_REQ_DEVLIST) carries the ids, class
and interfaces of each device, not its configuration descriptors or strings; those need the
device imported, which is exclusive (one client at a time). So a :class:`DeviceDescriptor`'s
``configurations`` is None until the device has been opened once, and strings are read by
:meth:`DeviceDescriptor.open`. A device another client has imported is not listed.
"""

from __future__ import annotations

import asyncio
import functools
import socket
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import (
    Any, AsyncIterator, Callable, Deque, Dict, Iterator, List, NoReturn, Optional, Sequence,
    Tuple, TypeVar, Union,
)

from . import protocol as P
from .client import DEFAULT_TIMEOUT, import_device, list_devices
from .engine.transport import Connector, TlsArg, tls_context
from .descriptors import (
    ConfigurationDescriptor, DeviceDescriptor as RawDeviceDescriptor, EndpointDescriptor,
    InterfaceDescriptor, endpoint_max_packet,
)
from .device import Device as _Device
from .device import libusb_speed, read_descriptors
from .engine import Connection, Urb, UrbState, flat
from .ch9 import DT_STRING
from .errors import (
    ConnectionLostError, LinuxErrno, NotFoundError, UrbCancelledError, UrbError, UsbipError, UsbipTimeoutError,
)
from .usbnames import transfer_type_name
from .stream import (
    CANCEL_WAIT, DEFAULT_BUDGET, DEFAULT_PROGRESS_EVERY, DEFAULT_SLOW, Pipe, Progress,
    ProgressCallback, Source, StreamError, _InPlan, _OutPlan, opened,
)

_CONTROL = P.TransferType.CONTROL
_BULK = P.TransferType.BULK
_INTERRUPT = P.TransferType.INTERRUPT
_ISOCHRONOUS = P.TransferType.ISOCHRONOUS
_EPIPE, _EOVERFLOW, _EXDEV = -LinuxErrno.EPIPE, -LinuxErrno.EOVERFLOW, -LinuxErrno.EXDEV
_STRING_LENGTH = 255
_SETUP_PACK = P.SETUP_STRUCT.pack
_DONE = UrbState.DONE
#: The loop reads sockets itself where a non-blocking recv on a blocking socket exists.
_LOOP_READS = hasattr(socket, "MSG_DONTWAIT")
T = TypeVar("T")


# -- errors -------------------------------------------------------------------------------------------
class TransferError(UsbipError):
    """A transfer failed. ``status`` is the wire status (negative Linux errno, 0 if none) and
    ``transferred`` the bytes that moved before it failed."""

    def __init__(self, message: str, *, status: int = 0, transferred: int = 0) -> None:
        super().__init__(message)
        self.status = status
        self.transferred = transferred


class TransferStalled(TransferError, BrokenPipeError):
    """The endpoint stalled (-EPIPE); clear it with :meth:`Device.clear_halt`."""


class TransferOverflow(TransferError):
    """The device sent more than the buffer holds (babble, -EOVERFLOW)."""


class TransferTimeout(TransferError, TimeoutError):
    """The transfer's own ``timeout=`` expired (the engine unlinked it)."""


class DeviceError(UsbipError, ConnectionError):
    """The device is gone: its connection was lost or closed."""


def _translate(exc: BaseException) -> BaseException:
    if isinstance(exc, ConnectionLostError):
        return DeviceError(str(exc))
    if isinstance(exc, UsbipTimeoutError):
        return TransferTimeout(str(exc), transferred=exc.transferred)
    if isinstance(exc, UrbError):
        cls = {_EPIPE: TransferStalled, _EOVERFLOW: TransferOverflow}.get(exc.status, TransferError)
        return cls(str(exc), status=exc.status, transferred=exc.transferred)
    if isinstance(exc, UrbCancelledError):
        return TransferError(str(exc), status=exc.status, transferred=exc.transferred)
    return exc


def _raise(exc: BaseException) -> NoReturn:
    translated = _translate(exc)
    if translated is exc:
        raise exc
    raise translated from exc


# -- the bridge from the reader thread to the loop ---------------------------------------------------
class _Inbox:
    """Ended URBs on their way to the loop: appended by whatever thread ended them, drained on
    the loop; one ``call_soon_threadsafe`` per batch, not per URB."""

    _by_loop: "Dict[asyncio.AbstractEventLoop, _Inbox]" = {}
    _guard = threading.Lock()

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.thread = threading.get_ident()  # made from a coroutine: the loop's thread
        self.items: Deque[Tuple["asyncio.Future[Urb]", Urb]] = deque()
        self.scheduled = False

    @classmethod
    def of(cls, loop: asyncio.AbstractEventLoop) -> "_Inbox":
        inbox = cls._by_loop.get(loop)
        if inbox is None:
            with cls._guard:
                # Loops that are closed drop out, so the map holds only live loops.
                for old in [lp for lp in cls._by_loop if lp.is_closed()]:
                    del cls._by_loop[old]
                inbox = cls._by_loop.setdefault(loop, cls(loop))
        return inbox

    def watch(self, urb: Urb) -> "asyncio.Future[Urb]":
        """A future the loop sees done once ``urb`` has ended."""
        fut: "asyncio.Future[Urb]" = self.loop.create_future()
        urb.add_done_callback(lambda u: self._post(fut, u))
        return fut

    def _post(self, fut: "asyncio.Future[Urb]", urb: Urb) -> None:
        if threading.get_ident() == self.thread:
            if not fut.done():  # ended by the loop's own read (pump_ready): no hop needed
                fut.set_result(urb)
            return
        self.items.append((fut, urb))
        if not self.scheduled:
            self.scheduled = True
            try:
                self.loop.call_soon_threadsafe(self._drain)
            except RuntimeError:  # the loop is closed: nobody awaits any more
                self.items.clear()

    def _drain(self) -> None:
        self.scheduled = False
        items = self.items
        while items:
            fut, urb = items.popleft()
            if not fut.done():
                fut.set_result(urb)


async def _ended(urb: Urb, on_cancel_done: Optional[Callable[[Urb], None]] = None) -> Urb:
    """Wait for ``urb`` to end. Cancelled meanwhile: see :func:`_cancelled`."""
    if urb.done():
        return urb
    fut = _Inbox.of(asyncio.get_running_loop()).watch(urb)
    try:
        return await fut
    except asyncio.CancelledError:
        await _cancelled(urb, on_cancel_done)
        raise


async def _cancelled(urb: Urb, on_cancel_done: Optional[Callable[[Urb], None]]) -> None:
    """The task awaiting ``urb`` was cancelled: unlink it, wait until it has ended (cancelled
    again meanwhile: go on waiting, the unlink's grace bounds it), and hand a result that won
    the race to ``on_cancel_done``. The caller then re-raises the cancellation."""
    urb.cancel()
    inbox = _Inbox.of(asyncio.get_running_loop())
    while not urb.done():
        try:
            await inbox.watch(urb)
        except asyncio.CancelledError:
            continue
    if on_cancel_done is not None and urb.status == 0:
        on_cancel_done(urb)


def _result(urb: Urb) -> Urb:
    try:
        return urb.result()
    except UsbipError as exc:
        _raise(exc)


class _IdleUrbs:
    """Ended URBs that nobody holds, by what they ask for (a SETUP packet, a length), to be
    made again in place by the next transfer asking the same (Connection.resubmit): polling
    the same request or reading the same size saves building a URB each time. Bounded: this
    many keys (the oldest goes first), this many URBs a key (transfers of it at once)."""

    __slots__ = ("kept",)
    KEYS = 8
    EACH = 16

    def __init__(self) -> None:
        self.kept: Dict[Any, List[Urb]] = {}

    def take(self, key: Any) -> Optional[Urb]:
        urbs = self.kept.get(key)
        return urbs.pop() if urbs else None

    def give(self, key: Any, urb: Urb) -> None:
        urbs = self.kept.get(key)
        if urbs is None:
            if len(self.kept) >= self.KEYS:
                del self.kept[next(iter(self.kept))]
            urbs = self.kept[key] = []
        if len(urbs) < self.EACH:
            urbs.append(urb)


# -- descriptors --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EndpointInfo:
    """One endpoint of an alternate setting (ausb's endpoint descriptor)."""

    address: int
    type: str  #: "control", "isochronous", "bulk" or "interrupt"
    direction: str  #: "in" or "out"
    number: int
    max_packet_size: int  #: bytes per packet (mult included for high-bandwidth endpoints)
    interval: int  #: bInterval as in the descriptor
    extra: bytes = b""
    raw: Optional[EndpointDescriptor] = field(default=None, compare=False, repr=False)

    @classmethod
    def of(cls, ep: EndpointDescriptor) -> "EndpointInfo":
        address = ep.bEndpointAddress
        return cls(address, transfer_type_name(ep.bmAttributes), "in" if address & 0x80 else "out",
                   address & 0x0F, endpoint_max_packet(ep), ep.bInterval, bytes(ep.extra_descriptors), ep)


@dataclass(frozen=True)
class AltSetting:
    """One alternate setting of an interface."""

    number: int  #: bInterfaceNumber
    alternate: int
    interface_class: int
    interface_subclass: int
    interface_protocol: int
    endpoints: Tuple[EndpointInfo, ...]
    extra: bytes = b""

    def endpoint_by_address(self, address: int) -> EndpointInfo:
        for ep in self.endpoints:
            if ep.address == address:
                return ep
        raise NotFoundError(f"interface {self.number} alternate {self.alternate} has no endpoint 0x{address:02x}")

    def __iter__(self) -> Iterator[EndpointInfo]:
        return iter(self.endpoints)

    def __getitem__(self, i: int) -> EndpointInfo:
        return self.endpoints[i]

    def __len__(self) -> int:
        return len(self.endpoints)

    @classmethod
    def of(cls, intf: InterfaceDescriptor) -> "AltSetting":
        return cls(intf.bInterfaceNumber, intf.bAlternateSetting, intf.bInterfaceClass,
                   intf.bInterfaceSubClass, intf.bInterfaceProtocol,
                   tuple(EndpointInfo.of(e) for e in intf.endpoints), bytes(intf.extra_descriptors))


@dataclass(frozen=True)
class InterfaceInfo:
    """One interface: its alternate settings, ``[0]`` the default one."""

    number: int
    alternates: Tuple[AltSetting, ...]

    def __getitem__(self, i: int) -> AltSetting:
        return self.alternates[i]

    def __iter__(self) -> Iterator[AltSetting]:
        return iter(self.alternates)

    def __len__(self) -> int:
        return len(self.alternates)


@dataclass(frozen=True)
class ConfigurationInfo:
    """One configuration and its interfaces."""

    value: int
    attributes: int
    max_power: int
    interfaces: Tuple[InterfaceInfo, ...]
    extra: bytes = b""

    def __iter__(self) -> Iterator[InterfaceInfo]:
        return iter(self.interfaces)

    def interface(self, number: int) -> InterfaceInfo:
        for intf in self.interfaces:
            if intf.number == number:
                return intf
        raise NotFoundError(f"configuration {self.value} has no interface {number}")

    @classmethod
    def of(cls, cfg: ConfigurationDescriptor) -> "ConfigurationInfo":
        return cls(cfg.bConfigurationValue, cfg.bmAttributes, cfg.bMaxPower,
                   tuple(InterfaceInfo(group[0].bInterfaceNumber, tuple(AltSetting.of(i) for i in group))
                         for group in cfg.interfaces if group),
                   bytes(cfg.extra_descriptors))


class DeviceDescriptor:
    """A device the server lists (ausb's device descriptor); :meth:`open` imports it.

    ``configurations`` is None until the device was opened once (the device list carries no
    configuration descriptors; see the module docstring); ``interfaces`` are the listed
    (class, subclass, protocol) triples of the active configuration.
    """

    def __init__(self, context: "Context", record: P.UsbDevice) -> None:
        self.context = context
        self.record = record
        self.busid: str = record.busid
        self.bus: int = record.busnum
        self.address: int = record.devnum
        self.vendor_id: int = record.idVendor
        self.product_id: int = record.idProduct
        self.bcd_device: int = record.bcdDevice
        self.device_class: int = record.bDeviceClass
        self.device_subclass: int = record.bDeviceSubClass
        self.device_protocol: int = record.bDeviceProtocol
        self.speed: int = libusb_speed(record.speed)  #: libusb's numbering (3 high, 4 super)
        self.interfaces: Tuple[Tuple[int, int, int], ...] = tuple(
            (i.bInterfaceClass, i.bInterfaceSubClass, i.bInterfaceProtocol) for i in record.interfaces)
        self.configurations: Optional[Tuple[ConfigurationInfo, ...]] = None

    def __repr__(self) -> str:
        return (f"<DeviceDescriptor {self.busid} on {self.context.host}:{self.context.port} "
                f"{self.vendor_id:04x}:{self.product_id:04x}>")

    def matches(self, **criteria: Any) -> bool:
        for key, want in criteria.items():
            if not hasattr(self, key):
                raise TypeError(f"unknown device criterion {key!r}")
            if getattr(self, key) != want:
                return False
        return True

    async def open(self, *, timeout: Optional[float] = None) -> "Device":
        """Import the device (OP_REQ_IMPORT in the executor), read its descriptors and strings;
        returns the open :class:`Device` (an async context manager)."""
        ctx = self.context
        t = ctx.timeout if timeout is None else timeout
        loop = asyncio.get_running_loop()

        host = ctx.host
        assert host is not None, "open the context first"

        def blocking() -> Tuple[Connection, RawDeviceDescriptor, List[ConfigurationDescriptor]]:
            conn = import_device(host, ctx.port, self.busid, timeout=t, hook=ctx.hook, ssl=ctx.ssl,
                                 connect=ctx.connect)
            try:
                desc, configs = read_descriptors(conn, t)
            except BaseException:
                conn.close()
                raise
            return conn, desc, configs

        try:
            conn, desc, configs = await loop.run_in_executor(None, blocking)
        except UsbipError as exc:
            _raise(exc)
        dev = _Device(conn, desc, configs, name=f"{self.busid} on {ctx.host}:{ctx.port}", timeout=t)
        device = Device(self, dev)
        device._attach(loop)
        self.configurations = device.configurations
        ctx._opened.add(device)
        try:
            await device._read_strings()
        except BaseException:
            await device.close()
            raise
        return device


# -- the context --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DeviceEvent:
    """What :meth:`Context.watch` yields."""

    kind: str  #: "added" or "removed"
    device: DeviceDescriptor


class Context:
    """A USB/IP server's devices, for one event loop.

    Args:
        host: the server; None finds the only one on the network by mDNS (as ``get_backend``).
        port: its TCP port.
        busids: only these busids (others are left to other clients).
        timeout: seconds for imports, the device list and the requests an open sends.
        pcap: a capture: a path or a hook such as :class:`~usbip_backend.pcap.PcapWriter`.
        ssl: TLS to a server behind a TLS terminator: True for ``ssl.create_default_context()``,
            or an ``ssl.SSLContext`` used as given; the certificate is checked against ``host``.
        connect: ``connect(host, port, timeout)`` returning a connected socket-like object (an
            SSH channel, :func:`~usbip_backend.client.command_connector`'s); it runs in the
            loop's executor, as every connect does.
        mdns_interfaces: with ``host=None``, the local addresses mDNS asks on (None: all).

    Over TLS or ``connect``, the engine's socket is one end of a socketpair that a relay thread
    carries to the real transport (:mod:`usbip_backend.engine.transport`), so the loop still
    reads it with ``add_reader`` as it reads a TCP socket.
    """

    def __init__(self, host: Optional[str] = None, port: int = P.USBIP_PORT, *,
                 busids: Optional[Sequence[str]] = None, timeout: float = DEFAULT_TIMEOUT,
                 pcap: Any = None, ssl: TlsArg = None, connect: Optional[Connector] = None,
                 mdns_interfaces: Optional[Sequence[str]] = None) -> None:
        self.host = host
        self.port = port
        self.mdns_interfaces = mdns_interfaces
        self.ssl = tls_context(ssl)
        self.connect = connect
        self.busids = None if busids is None else set(busids)
        self.timeout = timeout
        self._pcap_arg = pcap
        self.hook: Any = None
        self._own_hook = False
        self.devices: List[DeviceDescriptor] = []
        self._opened: "set[Device]" = set()
        self._closed = False

    async def __aenter__(self) -> "Context":
        await self.open()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    async def open(self) -> "Context":
        """Resolve the host (mDNS if None), open the capture, list the devices."""
        loop = asyncio.get_running_loop()
        if self.host is None:
            from .discovery import resolve_single_server

            server = await loop.run_in_executor(
                None, functools.partial(resolve_single_server, interfaces=self.mdns_interfaces))
            self.host, self.port = server.address, server.port
        pcap = self._pcap_arg
        if isinstance(pcap, str):
            from .pcap import PcapWriter

            self.hook = PcapWriter(pcap)
            self._own_hook = True
        else:
            self.hook = pcap
        await self.refresh()
        return self

    async def _list(self) -> List[P.UsbDevice]:
        assert self.host is not None, "open the context first"
        loop = asyncio.get_running_loop()
        try:
            records = await loop.run_in_executor(None, functools.partial(
                list_devices, self.host, self.port, self.timeout, ssl=self.ssl, connect=self.connect))
        except UsbipError as exc:
            _raise(exc)
        return [r for r in records if self.busids is None or r.busid in self.busids]

    async def refresh(self) -> List[DeviceDescriptor]:
        """OP_REQ_DEVLIST again; returns (and keeps) the devices listed."""
        records = await self._list()
        old = {d.busid: d for d in self.devices}
        fresh = []
        for r in records:
            desc = old.get(r.busid)
            if desc is None or desc.record != r:
                known = desc.configurations if desc is not None and desc.record.idProduct == r.idProduct else None
                desc = DeviceDescriptor(self, r)
                desc.configurations = known
            fresh.append(desc)
        self.devices = fresh
        return fresh

    def __iter__(self) -> Iterator[DeviceDescriptor]:
        return iter(list(self.devices))

    def __len__(self) -> int:
        return len(self.devices)

    def device_filter(self, **criteria: Any) -> List[DeviceDescriptor]:
        """Devices whose attributes equal the criteria (``vendor_id=0x1209, busid="1-1"``...)."""
        return [d for d in self.devices if d.matches(**criteria)]

    def device_get(self, **criteria: Any) -> DeviceDescriptor:
        """The one device matching the criteria.

        Raises:
            NotFoundError: none, or more than one (the message lists them).
        """
        found = self.device_filter(**criteria)
        if len(found) != 1:
            what = ", ".join(f"{k}={v!r}" for k, v in criteria.items()) or "any"
            if not found:
                raise NotFoundError(f"no device matching {what} on {self.host}:{self.port}")
            raise NotFoundError(f"{len(found)} devices match {what} on {self.host}:{self.port}: "
                                f"{', '.join(d.busid for d in found)}; be more specific")
        return found[0]

    def device_get_any(self, **criteria: Any) -> DeviceDescriptor:
        """The first device matching the criteria (NotFoundError if none)."""
        found = self.device_filter(**criteria)
        if not found:
            what = ", ".join(f"{k}={v!r}" for k, v in criteria.items()) or "any"
            raise NotFoundError(f"no device matching {what} on {self.host}:{self.port}")
        return found[0]

    async def watch(self, interval: float = 1.0) -> AsyncIterator[DeviceEvent]:
        """Devices added and removed, forever (break out of the loop to stop).

        Polls OP_REQ_DEVLIST every ``interval`` seconds. A device counts as present while it is
        listed or imported through this context; one that another client imports leaves the
        list (USB/IP lists only devices free to import) and is reported removed. An imported
        device whose connection is lost is reported removed at the next poll, and added again
        when the server lists it again. The devices present at the start are reported added
        first.
        """
        present: Dict[str, DeviceDescriptor] = {}
        while True:
            try:
                await self.refresh()
                listed = self.devices
            except (UsbipError, OSError):
                listed = []  # the server is unreachable: nothing is present until it answers
            now: Dict[str, DeviceDescriptor] = {d.busid: d for d in listed}
            for device in list(self._opened):
                if device.alive:
                    now.setdefault(device.busid, device.descriptor_info)
            for busid, desc in present.items():
                current = now.get(busid)
                if current is None or current.record != desc.record:
                    yield DeviceEvent("removed", desc)
            for busid, desc in now.items():
                old = present.get(busid)
                if old is None or old.record != desc.record:
                    yield DeviceEvent("added", desc)
            present = now
            await asyncio.sleep(interval)

    async def close(self) -> None:
        """Close every device opened through this context, then the capture."""
        if self._closed:
            return
        self._closed = True
        for device in list(self._opened):
            await device.close()
        if self._own_hook and self.hook is not None:
            self.hook.close()


# -- devices, interfaces, endpoints --------------------------------------------------------------------
class Device:
    """An imported device (from :meth:`DeviceDescriptor.open`); an async context manager."""

    def __init__(self, info: DeviceDescriptor, dev: _Device) -> None:
        self.descriptor_info = info
        self._dev = dev
        self.conn: Connection = dev.conn
        self.busid = dev.busid
        self.descriptor: RawDeviceDescriptor = dev.descriptor
        self.configurations: Tuple[ConfigurationInfo, ...] = tuple(ConfigurationInfo.of(c) for c in dev.configurations)
        self.manufacturer: Optional[str] = None
        self.product: Optional[str] = None
        self.serial_number: Optional[str] = None
        self._claimed: Dict[int, "Interface"] = {}
        self._closing = False
        # control IN URBs that ended well, by SETUP packet (read() returns a copy of their data)
        self._idle_reads = _IdleUrbs()

    def __repr__(self) -> str:
        return f"<aio.Device {self._dev.name}{'' if self.alive else ' gone'}>"

    # the loop reads the socket (see the module docstring)
    def _attach(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._fd = self.conn.sock.fileno()
        if not _LOOP_READS:
            return
        try:
            loop.add_reader(self._fd, self._readable)
        except (NotImplementedError, AttributeError, ValueError, OSError):
            return  # a loop that cannot watch sockets: the reader thread reads
        self._loop = loop
        self.conn.set_loop_reader(True)

    def _readable(self) -> Optional[bool]:
        self._sent = False
        got = self.conn.pump_ready(self._handed_back)
        if got is None or self.conn.closed:
            self._detach_reader()
        return got

    def _read_now(self) -> bool:
        """What the loop's reader callback does, done by a coroutine of the loop that would
        otherwise wait for it: True if a reply was dispatched."""
        if self._loop is None or not self._watching or self._closing:
            return False
        return bool(self._readable())

    def _handed_back(self) -> None:
        loop = self._loop
        if loop is None:
            return
        try:
            loop.call_soon_threadsafe(self._reattach)
        except RuntimeError:
            pass  # the loop is closed

    def _reattach(self) -> None:
        if self._loop is not None and not self.conn.closed and not self._closing and not self._watching:
            self._loop.add_reader(self._fd, self._readable)
            self._watching = True
            self._readable()  # what arrived meanwhile

    def _detach_reader(self) -> None:
        if self._loop is not None and self._watching:
            self._loop.remove_reader(self._fd)
            self._watching = False

    _watching = True
    _inbox: Optional[_Inbox] = None  # the inbox of the loop it last submitted from
    _sent = False  # a CMD_SUBMIT went out since the loop last read this socket (or flushed)
    _flush_soon = False

    def _flush(self) -> None:
        self._flush_soon = self._sent = False
        self.conn.flush()

    @property
    def alive(self) -> bool:
        return not self.conn.closed

    @property
    def device(self) -> _Device:
        """The device layer's :class:`~usbip_backend.device.Device` (for the sync API)."""
        return self._dev

    async def __aenter__(self) -> "Device":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    def _check(self) -> None:
        if self.conn.closed:
            raise DeviceError(f"{self._dev.name} is gone (its connection was lost or closed)")

    async def submit(self, transfer_type: P.TransferType, endpoint: int, *,
                     on_cancel_done: Optional[Callable[[Urb], None]] = None,
                     **kwargs: Any) -> Urb:
        """Submit one URB (never blocking the loop) and await its end; arguments as
        :meth:`Connection.submit`. Returns the URB (raises its error, translated)."""
        return await self._submit(transfer_type, endpoint, None, on_cancel_done, kwargs)

    async def _submit(self, transfer_type: P.TransferType, endpoint: int, again: Optional[Urb],
                      on_cancel_done: Optional[Callable[[Urb], None]], kwargs: Dict[str, Any]) -> Urb:
        """:meth:`submit`, or with ``again`` (an ended URB of ours nobody else holds) that URB
        made again in place (``kwargs`` then gives only its timeout)."""
        conn = self.conn
        if conn.closed:
            self._check()
        loop = asyncio.get_running_loop()
        inbox = self._inbox
        if inbox is None or inbox.loop is not loop:
            inbox = self._inbox = _Inbox.of(loop)
        fut: "asyncio.Future[Urb]" = loop.create_future()
        post = inbox._post
        # The first URB since the loop last read the socket goes out at once (a lone round
        # trip waits for nothing); what follows it goes out together at the end of the loop's
        # iteration, in one syscall (replies read together are resubmitted together).
        first = not self._sent
        try:
            if again is not None:
                urb = conn.resubmit(again, timeout=kwargs.get("timeout"), callback=functools.partial(post, fut),
                                    block=False, flush=first, in_place=True)
            else:
                urb = conn.submit(transfer_type, endpoint, block=False, flush=first,
                                  callback=functools.partial(post, fut), **kwargs)
        except UsbipError as exc:
            _raise(exc)
        if first:
            self._sent = True
        elif not self._flush_soon:
            self._flush_soon = True
            loop.call_soon(self._flush)
        if urb.state is not _DONE:
            try:
                await fut
            except asyncio.CancelledError:
                await _cancelled(urb, on_cancel_done)
                raise
        if urb.status == 0:
            return urb
        return _result(urb)

    # control (ausb's device.read / device.write)
    async def read(self, request_type: int, request: int, value: int, index: int, size: int,
                   timeout: Optional[float] = None) -> bytes:
        """A control IN transfer of up to ``size`` bytes; returns what came."""
        setup = _SETUP_PACK((request_type | 0x80) & 0xFF, request & 0xFF, value & 0xFFFF, index & 0xFFFF,
                            size & 0xFFFF)
        return await self._read_reusing(self._idle_reads, setup, _CONTROL, 0x80, size, None, timeout,
                                        {"setup": setup})

    async def _read_reusing(self, idle: _IdleUrbs, key: Any, transfer_type: P.TransferType, endpoint: int,
                            size: int, on_cancel_done: Optional[Callable[[Urb], None]],
                            timeout: Optional[float], fresh: Dict[str, Any]) -> bytes:
        """An IN transfer of ``size`` bytes by a URB ``idle`` keeps under ``key`` made again,
        else by a new one (``fresh``: its other submit arguments); returns a copy of the data
        and keeps the URB."""
        again = idle.take(key)
        if again is None:
            fresh["buffer"] = bytearray(size)
        fresh["timeout"] = timeout
        urb = await self._submit(transfer_type, endpoint, again, on_cancel_done, fresh)
        assert urb.buffer is not None
        data = bytes(urb.buffer[:urb.actual_length])
        idle.give(key, urb)
        return data

    async def write(self, request_type: int, request: int, value: int, index: int,
                    data: Any = b"", timeout: Optional[float] = None) -> int:
        """A control OUT transfer; returns the count sent. SET_CONFIGURATION and SET_INTERFACE
        keep the device's state in step, as usbfs does."""
        view = flat(data)
        if view.nbytes > 0xFFFF:
            raise ValueError(f"control transfers carry at most 65535 bytes, not {view.nbytes}")
        rt = request_type & 0x7F
        setup = P.pack_setup(rt, request & 0xFF, value & 0xFFFF, index & 0xFFFF, view.nbytes)
        urb = await self.submit(_CONTROL, 0x00, setup=setup, data=view, timeout=timeout)
        self._dev.note_control(rt, request & 0xFF, value & 0xFFFF, index & 0xFFFF)
        return urb.actual_length

    async def set_configuration(self, value: int) -> None:
        await self.write(0x00, 9, value, 0)

    async def get_configuration(self) -> int:
        return (await self.read(0x80, 8, 0, 0, 1))[0]

    async def set_interface(self, interface: int, alternate: int) -> None:
        await self.write(0x01, 11, alternate, interface)

    async def clear_halt(self, endpoint: int) -> None:
        await self.write(0x02, 1, 0, endpoint)

    async def string(self, index: int, lang_id: Optional[int] = None) -> Optional[str]:
        """String descriptor ``index`` (in the first language the device lists); None when it
        has none."""
        if not index:
            return None
        try:
            if lang_id is None:
                langs = await self.read(0x80, 6, DT_STRING << 8, 0, _STRING_LENGTH)
                if len(langs) < 4:
                    return None
                lang_id = langs[2] | langs[3] << 8
            raw = await self.read(0x80, 6, (DT_STRING << 8) | index, lang_id, _STRING_LENGTH)
        except TransferStalled:
            return None
        if len(raw) < 2 or raw[1] != DT_STRING:
            return None
        return raw[2:min(len(raw), raw[0])].decode("utf-16-le", "replace")

    async def _read_strings(self) -> None:
        d = self.descriptor
        self.manufacturer = await self.string(d.iManufacturer)
        self.product = await self.string(d.iProduct)
        self.serial_number = await self.string(d.iSerialNumber)

    async def active_configuration(self) -> Optional[ConfigurationInfo]:
        """The configuration in force (GET_CONFIGURATION the first time), None if unconfigured."""
        value = self._dev.current_config
        if value is None:
            value = await self.get_configuration()
            self._dev.current_config = value
        return next((c for c in self.configurations if c.value == value), None)

    def interface_claim(self, number: int, *, configuration: Optional[int] = None) -> "Interface":
        """Claim interface ``number`` (bookkeeping only: USB/IP imports the whole device)."""
        self._check()
        cfg_value = configuration or self._dev.current_config or (self.configurations[0].value if self.configurations else 1)
        cfg = next((c for c in self.configurations if c.value == cfg_value), None)
        if cfg is None:
            raise NotFoundError(f"{self._dev.name} has no configuration {cfg_value}")
        intf = Interface(self, cfg.interface(number))
        self._claimed[number] = intf
        return intf

    async def close(self) -> None:
        """Cancel what is in flight (waiting for each, bounded), then close the connection (in
        the executor: it joins the reader thread)."""
        if self._closing:
            return
        self._closing = True
        self.descriptor_info.context._opened.discard(self)
        self._detach_reader()
        self.conn.set_loop_reader(False)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self.conn.close)


class Interface:
    """A claimed interface; :meth:`open` an endpoint of it."""

    def __init__(self, device: Device, info: InterfaceInfo) -> None:
        self.device = device
        self.number = info.number
        self.descriptor = info  #: the interface's alternate settings (``[0]``: the default)

    def open(self, endpoint: Union[EndpointInfo, int]) -> "Endpoint":
        """An endpoint handle: :class:`InEndpoint` or :class:`OutEndpoint` (bulk, interrupt) or
        :class:`IsoEndpoint`."""
        if isinstance(endpoint, int):
            address = endpoint
            found = next((e for alt in self.descriptor for e in alt if e.address == address), None)
            if found is None:
                raise NotFoundError(f"interface {self.number} has no endpoint 0x{address:02x}")
            endpoint = found
        if endpoint.type == "isochronous":
            return IsoEndpoint(self.device, endpoint)
        if endpoint.type == "control":
            raise ValueError("endpoint 0 is used through device.read/device.write")
        return (InEndpoint if endpoint.direction == "in" else OutEndpoint)(self.device, endpoint)

    def release(self) -> None:
        self.device._claimed.pop(self.number, None)


class Endpoint:
    """An endpoint handle (base of the typed ones)."""

    def __init__(self, device: Device, info: EndpointInfo) -> None:
        self.device = device
        self.info = info
        self.address = info.address
        self.transfer_type = {"bulk": _BULK, "interrupt": _INTERRUPT, "isochronous": _ISOCHRONOUS}[info.type]

    def __repr__(self) -> str:
        return f"<{type(self).__name__} 0x{self.address:02x} of {self.device._dev.name}>"

    @property
    def interval(self) -> int:
        return self.device._dev.interval(self.transfer_type, self.info.raw)

    def pipe(self) -> Pipe:
        return Pipe(self.device.conn, self.address, self.transfer_type, self.info.max_packet_size,
                    self.interval, self.device._dev.name)


class Transfer:
    """A reusable transfer with its own buffer (ausb's "transfer reuse"): ``await t.run()``
    submits it again each time; IN returns a view of the buffer valid until the next run."""

    def __init__(self, endpoint: "Endpoint", buffer: Any) -> None:
        self.endpoint = endpoint
        self.buffer = flat(buffer)
        if endpoint.address & 0x80 and self.buffer.readonly:
            raise TypeError("an IN transfer needs a writable buffer")
        self.actual_length = 0
        self.status: Optional[int] = None

    async def run(self, timeout: Optional[float] = None, length: Optional[int] = None) -> memoryview:
        """Submit and await it; OUT sends the first ``length`` bytes (all by default)."""
        ep = self.endpoint
        view = self.buffer if length is None else self.buffer[:length]
        kw: Dict[str, Any] = {"buffer": view} if ep.address & 0x80 else {"data": view}
        try:
            urb = await ep.device.submit(ep.transfer_type, ep.address, interval=ep.interval,
                                         timeout=timeout, **kw)
        except TransferError as exc:
            self.status = exc.status
            self.actual_length = exc.transferred
            raise
        self.status = urb.status
        self.actual_length = urb.actual_length
        return view[:urb.actual_length]


class InEndpoint(Endpoint):
    """A bulk or interrupt IN endpoint (ausb's BulkIn / InterruptIn)."""

    def __init__(self, device: Device, info: EndpointInfo) -> None:
        super().__init__(device, info)
        #: data of reads that completed while their task was being cancelled (returned first)
        self.unclaimed: Deque[bytes] = deque()
        self._idle_reads = _IdleUrbs()  # read()'s URBs that ended well, by length

    def _keep(self, urb: Urb) -> None:
        if urb.actual_length and urb.in_data is not None:
            self.unclaimed.append(bytes(urb.in_data))

    def _take(self, size: int) -> Optional[bytes]:
        if not self.unclaimed:
            return None
        head = self.unclaimed.popleft()
        if len(head) > size:
            self.unclaimed.appendleft(head[size:])
            head = head[:size]
        return head

    async def read(self, size: int, timeout: Optional[float] = None) -> bytes:
        """One IN transfer of up to ``size`` bytes (a short packet ends it); returns the data."""
        kept = self._take(size)
        if kept is not None:
            return kept
        return await self.device._read_reusing(self._idle_reads, size, self.transfer_type, self.address, size,
                                               self._keep, timeout, {"interval": self.interval})

    async def read_into(self, buffer: Any, timeout: Optional[float] = None) -> int:
        """One IN transfer straight into ``buffer`` (writable, not copied); returns the count."""
        view = flat(buffer)
        kept = self._take(view.nbytes)
        if kept is not None:
            view[:len(kept)] = kept
            return len(kept)
        urb = await self.device.submit(self.transfer_type, self.address, buffer=view,
                                       interval=self.interval, timeout=timeout, on_cancel_done=self._keep)
        return urb.actual_length

    def transfer(self, size_or_buffer: Union[int, Any]) -> Transfer:
        """A reusable :class:`Transfer` reading into its own (or the given) buffer."""
        buf = bytearray(size_or_buffer) if isinstance(size_or_buffer, int) else size_or_buffer
        return Transfer(self, buf)

    def stream(self, total: Optional[int] = None, *, chunk: int = 16384, window: int = 16,
               until_short: bool = False, progress: Optional[ProgressCallback] = None,
               offset: int = 0, timeout: Optional[float] = None, adaptive: bool = True,
               budget: int = DEFAULT_BUDGET, slow: float = DEFAULT_SLOW,
               progress_every: float = DEFAULT_PROGRESS_EVERY) -> "AsyncInStream":
        """``async for view in ep.stream(...)``: the windowed IN stream of
        :func:`usbip_backend.stream.stream_in` (same arguments, same rules; each view valid
        until the next one is asked for)."""
        plan = _InPlan(self.pipe(), total, chunk, window, until_short, progress, offset, timeout,
                       adaptive, budget, slow, progress_every, False)
        return AsyncInStream(plan, self.device)

    async def read_into_file(self, file: Any, total: Optional[int] = None, **kwargs: Any) -> Progress:
        """Stream into a binary file (or a path; ``offset=`` appends after that many bytes).
        File writes happen on the loop's thread: use a fast local file."""
        with opened(file, kwargs.get("offset", 0), writing=True) as f:
            stream = self.stream(total, **kwargs)
            try:
                async for view in stream:
                    f.write(view)
            except StreamError as exc:
                f.write(exc.data)
                raise
            return stream.progress()


class AsyncInStream:
    """An async iterator over a windowed IN stream (see :meth:`InEndpoint.stream`)."""

    #: Reads of the socket a stream may make itself in a row before it waits on the loop.
    DIRECT_READS = 16

    def __init__(self, plan: _InPlan, device: Device) -> None:
        self._plan = plan
        self._device = device
        self._direct = 0
        self.leftover = b""
        self._closed = False

    @property
    def offset(self) -> int:
        return self._plan.meter.offset

    def progress(self) -> Progress:
        plan = self._plan
        return plan.meter.snapshot(plan.window, plan.chunk)

    def __aiter__(self) -> "AsyncInStream":
        return self

    async def __anext__(self) -> memoryview:
        plan = self._plan
        if self._closed:
            raise StopAsyncIteration
        plan.give_back()
        try:
            while True:
                plan.fill()
                if plan.done:
                    await self.aclose()
                    raise StopAsyncIteration
                head = plan.flight[0][0]
                if not head.done():  # (often it is: one read of the socket ends several)
                    if self._direct < self.DIRECT_READS and self._device._read_now():
                        # Replies were waiting (the server is often ahead): taken without a
                        # trip through the loop, which still gets its turn every few reads.
                        self._direct += 1
                        continue
                    self._direct = 0
                    await _ended(head)
                view = plan.settle()
                if view is not None:
                    return view
        except StreamError as exc:
            _translate_cause(exc)
            await self._abort()
            raise
        except asyncio.CancelledError:
            await self._abort()
            raise

    async def _cancel(self) -> None:
        flight = list(self._plan.flight)
        for urb, _, _ in flight:
            urb.cancel()
        await _all_ended([u for u, _, _ in flight])

    async def _abort(self) -> None:
        self._closed = True
        await self._cancel()
        self._plan.flight.clear()
        self._plan.meter.report(self._plan.window, self._plan.chunk)

    async def aclose(self) -> None:
        """Stop: cancel the URBs in flight, wait for them (their data goes to ``leftover``)."""
        if self._closed:
            return
        self._closed = True
        await self._cancel()
        self.leftover = self._plan.leftovers()
        self._plan.meter.report(self._plan.window, self._plan.chunk)

    async def __aenter__(self) -> "AsyncInStream":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()


def _translate_cause(exc: StreamError) -> None:
    """Give a stream failure's cause (the engine's error) as this module's errors."""
    if exc.cause is not None:
        exc.cause = _translate(exc.cause)


async def _all_ended(urbs: Sequence[Urb]) -> None:
    """Wait (shielded from cancellation, bounded by the engine's grace) until each has ended."""
    loop = asyncio.get_running_loop()
    inbox = _Inbox.of(loop)
    futs = [inbox.watch(u) for u in urbs if not u.done()]
    if not futs:
        return
    gathered = asyncio.gather(*futs)
    cancelled = False
    while not gathered.done():
        try:
            await asyncio.wait_for(asyncio.shield(gathered), CANCEL_WAIT * 10)
        except asyncio.TimeoutError:
            break
        except asyncio.CancelledError:
            cancelled = True
    if cancelled:
        raise asyncio.CancelledError


class OutEndpoint(Endpoint):
    """A bulk or interrupt OUT endpoint (ausb's BulkOut / InterruptOut)."""

    #: bytes of writes that completed while their task was being cancelled
    written_while_cancelled = 0

    def _keep(self, urb: Urb) -> None:
        self.written_while_cancelled += urb.actual_length

    async def write(self, data: Any, timeout: Optional[float] = None) -> int:
        """One OUT transfer (never blocks the loop, whatever its size); returns the count."""
        urb = await self.device.submit(self.transfer_type, self.address, data=flat(data),
                                       interval=self.interval, timeout=timeout, on_cancel_done=self._keep)
        return urb.actual_length

    def transfer(self, buffer: Any) -> Transfer:
        """A reusable :class:`Transfer` sending (a prefix of) ``buffer`` each run."""
        return Transfer(self, buffer)

    async def stream(self, data: Source, *, chunk: int = 16384, window: int = 16,
                     progress: Optional[ProgressCallback] = None, offset: int = 0,
                     timeout: Optional[float] = None, adaptive: bool = True,
                     budget: int = DEFAULT_BUDGET, slow: float = DEFAULT_SLOW,
                     progress_every: float = DEFAULT_PROGRESS_EVERY,
                     total: Optional[int] = None) -> Progress:
        """The windowed OUT stream of :func:`usbip_backend.stream.stream_out` (same arguments);
        returns the final progress."""
        plan = _OutPlan(self.pipe(), data, chunk, window, progress, offset, timeout, adaptive, budget,
                        slow, progress_every, False, total)
        try:
            while True:
                plan.fill()
                if plan.done:
                    return plan.meter.report(plan.window, plan.chunk)
                await _ended(plan.flight[0][0])
                if plan.refused():
                    await _all_ended([u for u, _, _ in plan.flight])
                plan.settle()
        except BaseException as exc:
            if isinstance(exc, StreamError):
                _translate_cause(exc)
            flight = [u for u, _, _ in plan.flight]
            for urb in flight:
                urb.cancel()
            await _all_ended(flight)
            plan.meter.report(plan.window, plan.chunk)
            raise

    async def write_from_file(self, file: Any, **kwargs: Any) -> Progress:
        """Stream a binary file (or a path) out."""
        with opened(file, writing=False) as f:
            return await self.stream(f, **kwargs)


@dataclass(frozen=True)
class IsoPacketResult:
    """One isochronous packet's outcome."""

    status: int  #: 0 or a negative Linux errno
    actual_length: int
    data: bytes = b""  #: IN: what the packet carried


class IsoEndpoint(Endpoint):
    """An isochronous endpoint: one URB of many packets per call, with per-packet results."""

    async def iso_read(self, packet_lengths: Sequence[int], timeout: Optional[float] = None) -> List[IsoPacketResult]:
        """One ISO IN URB asking for these packet lengths; returns each packet's status and data."""
        return await self._iso(list(packet_lengths), None, timeout)

    async def iso_write(self, packets: Sequence[Any], timeout: Optional[float] = None) -> List[IsoPacketResult]:
        """One ISO OUT URB carrying these packets; returns each packet's status and length."""
        views = [flat(p) for p in packets]
        return await self._iso([v.nbytes for v in views], b"".join(bytes(v) for v in views), timeout)

    async def _iso(self, lengths: List[int], out: Optional[bytes], timeout: Optional[float]) -> List[IsoPacketResult]:
        if not lengths:
            raise ValueError("an isochronous URB needs at least one packet")
        total = sum(lengths)
        kw: Dict[str, Any] = {"data": out} if out is not None else {"buffer": bytearray(total)}
        self.device._check()
        try:
            urb = self.device.conn.submit(_ISOCHRONOUS, self.address, block=False, interval=self.interval,
                                          iso_packet_lengths=lengths, timeout=timeout, **kw)
        except UsbipError as exc:
            _raise(exc)
        await _ended(urb)
        if urb.status not in (0, _EXDEV) or urb.iso_results is None:
            _result(urb)
        results = urb.iso_results or []
        buf = urb.buffer
        out_list = []
        offset = 0
        for length, res in zip(lengths, results):
            data = b"" if out is not None or buf is None else bytes(buf[offset:offset + res.actual_length])
            out_list.append(IsoPacketResult(res.status, res.actual_length, data))
            offset += length
        return out_list


__all__ = [
    "Context", "DeviceDescriptor", "Device", "Interface", "Endpoint", "InEndpoint", "OutEndpoint",
    "IsoEndpoint", "Transfer", "AsyncInStream", "DeviceEvent", "ConfigurationInfo", "InterfaceInfo",
    "AltSetting", "EndpointInfo", "IsoPacketResult", "TransferError", "TransferStalled",
    "TransferOverflow", "TransferTimeout", "DeviceError", "Progress", "StreamError",
]
