"""PyUSB backend over USB/IP: ``usb.core.find(backend=get_backend("host"))``.

:class:`UsbipBackend` implements every method of ``usb.backend.IBackend`` on top of the
PyUSB-free device layer (:mod:`usbip_backend.device`) and the URB engine, one TCP connection per
imported device: it lists and imports devices, and turns the engine's errors into PyUSB's.
Descriptors are read from the device itself with GET_DESCRIPTOR (so string indexes, bcdUSB and
bMaxPacketSize0 are real) and parsed by :mod:`usbip_backend.descriptors`.

Errors are raised as PyUSB's libusb1 backend raises them:

=================================================  ===================================================
engine error / URB status                          PyUSB exception (``backend_error_code``, errno)
=================================================  ===================================================
UsbipTimeoutError (our timeout, URB unlinked)      USBTimeoutError (-7 TIMEOUT, ETIMEDOUT)
status -110 ETIMEDOUT (server-side timeout)        USBTimeoutError (-7 TIMEOUT, ETIMEDOUT)
status -32 EPIPE (stall)                           USBError (-9 PIPE, EPIPE)
status -75 EOVERFLOW (babble)                      USBError (-8 OVERFLOW, EOVERFLOW)
TlsError (the TLS handshake failed)              USBError (-1 IO, EIO)
ConnectionLostError, status -19 / -108             USBError (-4 NO_DEVICE, ENODEV)
UrbCancelledError (another thread cancelled it)    USBError (-10 INTERRUPTED, EINTR)
NotFoundError (no such endpoint)                   USBError (-5 NOT_FOUND, ENOENT)
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
import threading
from typing import Any, Dict, Iterable, Iterator, List, NoReturn, Optional, Sequence, Set, Tuple

# PyUSB ships no type information (ignored, whether or not stubs are installed).
import usb.backend  # type: ignore[import-untyped, unused-ignore]
import usb.core  # type: ignore[import-untyped, unused-ignore]
import usb.util  # type: ignore[import-untyped, unused-ignore]

from . import client
from . import protocol as P
from .descriptors import ConfigurationDescriptor, DeviceDescriptor, EndpointDescriptor, InterfaceDescriptor
from .device import (  # noqa: F401  (urb_interval, port_numbers_from_busid: re-exported, as before)
    OUT_WINDOW, Device, natural_busid_key, port_numbers_from_busid, read_descriptors, seconds,
    urb_interval,
)
from .device import libusb_speed as speed_to_pyusb  # noqa: F401  (the backend's name for it, as before)
from .engine import flat
from .engine.transport import Connector, TlsArg, TlsError, tls_context
from .errors import (  # noqa: F401  (the LIBUSB_ERROR_* codes: re-exported, as before)
    LIBUSB_ERROR_ACCESS,
    LIBUSB_ERROR_BUSY,
    LIBUSB_ERROR_INTERRUPTED,
    LIBUSB_ERROR_INVALID_PARAM,
    LIBUSB_ERROR_IO,
    LIBUSB_ERROR_NO_DEVICE,
    LIBUSB_ERROR_NO_MEM,
    LIBUSB_ERROR_NOT_FOUND,
    LIBUSB_ERROR_NOT_SUPPORTED,
    LIBUSB_ERROR_OTHER,
    LIBUSB_ERROR_OVERFLOW,
    LIBUSB_ERROR_PIPE,
    LIBUSB_ERROR_TIMEOUT,
    ConnectionLostError,
    ImportRefusedError,
    NotFoundError,
    UrbCancelledError,
    UrbError,
    UsbipError,
    UsbipTimeoutError,
    describe_status,
    host_errno,
    libusb_error,
)
from .hooks import UrbHook
from .usbnames import SPEEDS

_log = logging.getLogger(__name__)

#: libusb numbers SuperSpeed+ 5, one above usb.util.SPEED_SUPER.
SPEED_SUPER_PLUS = SPEEDS[P.Speed.SUPER_PLUS].libusb

_CONTROL, _BULK, _INTERRUPT = P.TransferType.CONTROL, P.TransferType.BULK, P.TransferType.INTERRUPT
_EMPTY = memoryview(b"")


def _usb_error(exc: BaseException, what: str) -> usb.core.USBError:
    """Translate an engine error into the PyUSB exception the libusb1 backend would raise."""
    if isinstance(exc, UsbipTimeoutError):
        err: usb.core.USBError = usb.core.USBTimeoutError(f"{what}: operation timed out ({exc})",
                                                          LIBUSB_ERROR_TIMEOUT, _errno.ETIMEDOUT)
    elif isinstance(exc, TlsError):
        # Not "no such device": nothing was reached. libusb has no code for "untrusted peer".
        err = usb.core.USBError(f"{what}: {exc}", LIBUSB_ERROR_IO, _errno.EIO)
    elif isinstance(exc, ConnectionLostError):
        err = usb.core.USBError(f"{what}: no such device, the connection is gone ({exc})",
                                LIBUSB_ERROR_NO_DEVICE, _errno.ENODEV)
    elif isinstance(exc, UrbCancelledError):
        err = usb.core.USBError(f"{what}: {exc}", LIBUSB_ERROR_INTERRUPTED, _errno.EINTR)
    elif isinstance(exc, NotFoundError):
        err = usb.core.USBError(f"{what}: {exc}", LIBUSB_ERROR_NOT_FOUND, _errno.ENOENT)
    elif isinstance(exc, UrbError):
        status = exc.status
        code = libusb_error(status)
        text = f"{what}: {describe_status(status)}"
        if code == LIBUSB_ERROR_TIMEOUT:
            err = usb.core.USBTimeoutError(text, code, _errno.ETIMEDOUT)
        elif code == LIBUSB_ERROR_NO_DEVICE:
            err = usb.core.USBError(text, code, _errno.ENODEV)
        else:
            err = usb.core.USBError(text, code, host_errno(-status))
    else:
        err = usb.core.USBError(f"{what}: {exc}", LIBUSB_ERROR_IO, _errno.EIO)
    # Bytes that moved before the failure, as python-libusb1's exceptions carry them.
    err.transferred = getattr(exc, "transferred", 0)  # type: ignore[attr-defined, unused-ignore]
    return err


def _raise_usb(exc: BaseException, what: str) -> NoReturn:
    raise _usb_error(exc, what) from exc


def _what(ttype: P.TransferType, verb: str, ep: int, dev: "UsbipDevice") -> str:
    """Names a bulk/interrupt transfer in errors. Built only on error: formatting it on every
    transfer cost about 1 us, a sixth of the engine's own work per URB."""
    return f"{ttype.name.lower()} {verb} endpoint 0x{ep:02x} of {dev.name}"


class UsbipDevice(Device):
    """One imported device: what ``enumerate_devices`` yields and ``open_device`` takes (the
    device layer's :class:`~usbip_backend.device.Device`, and the server it came from)."""

    def __init__(self, conn: Any, host: str, port: int, descriptor: DeviceDescriptor,
                 configurations: List[ConfigurationDescriptor], *, max_transfer: Optional[int] = None,
                 timeout: Optional[float] = 5.0) -> None:
        super().__init__(conn, descriptor, configurations, name=f"{conn.busid} on {host}:{port}",
                         max_transfer=max_transfer, timeout=timeout)
        self.host = host
        self.port = port

    def __repr__(self) -> str:
        d = self.descriptor
        return f"<UsbipDevice {self.name} {d.idVendor:04x}:{d.idProduct:04x}{'' if self.alive else ' gone'}>"


class UsbipHandle:
    """An open device (``open_device``): bookkeeping of claimed interfaces."""

    def __init__(self, dev: UsbipDevice) -> None:
        self.dev = dev
        self.claimed: Set[int] = set()
        self.closed = False

    def __repr__(self) -> str:
        return f"<UsbipHandle {self.dev.name}{' closed' if self.closed else ''}>"


class UsbipBackend(usb.backend.IBackend):  # type: ignore[misc, unused-ignore]
    """A PyUSB backend whose devices live on a USB/IP server.

    Args:
        host, port: the server.
        timeout: seconds for the device list, imports and descriptor reads at enumeration
            (0: no limit).
        busids: import only these busids (others are never touched).
        pcap: a :class:`~usbip_backend.hooks.UrbHook` (e.g. a ``PcapWriter``) or a file path to
            record every URB to as pcapng.
        max_transfer: split bulk/interrupt transfers larger than this many bytes into URBs of at
            most this size (rounded down to a multiple of the endpoint's max packet size).
        connect_timeout: seconds for the connect (and the OP_* exchange) of list and import.
        ssl: TLS to a server behind a TLS terminator: True for ``ssl.create_default_context()``,
            or an ``ssl.SSLContext`` used as given; the certificate is checked against ``host``.
        connect: ``connect(host, port, timeout)`` returning a connected socket-like object
            (recv, sendall, close), e.g. an SSH channel or :func:`~.client.command_connector`'s;
            every list and import connects through it.
    """

    def __init__(
        self,
        host: str,
        port: int = P.USBIP_PORT,
        *,
        timeout: float = 5.0,
        busids: Optional[Iterable[str]] = None,
        pcap: Any = None,
        max_transfer: Optional[int] = None,
        connect_timeout: Optional[float] = None,
        ssl: TlsArg = None,
        connect: Optional[Connector] = None,
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
        self.ssl = tls_context(ssl)  # made once: every import shares the context (and its sessions)
        self.connect = connect
        if pcap is not None and not isinstance(pcap, UrbHook):
            from .pcap import PcapWriter  # lazy: only capture users pay for it

            pcap = PcapWriter(pcap)
            self._owns_hook = True
        self.hook = pcap
        #: busid -> why enumeration skipped it (busy, not found, unreadable descriptors...).
        self.skipped: Dict[str, str] = {}

    def __repr__(self) -> str:
        return f"<UsbipBackend {self.host}:{self.port} {len(self._devices)} imported>"

    @property
    def _timeout_s(self) -> Optional[float]:
        return client.socket_timeout(self.timeout)

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

    def __exit__(self, *exc: Any) -> None:
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
                listed = client.list_devices(self.host, self.port, timeout=self.connect_timeout,
                                             ssl=self.ssl, connect=self.connect)
            except UsbipError as exc:
                _raise_usb(exc, f"listing the devices of {self.host}:{self.port}")
            # Devices we hold are absent from the list (the server hides imported devices).
            wanted = sorted({d.busid for d in listed} | set(cached), key=natural_busid_key)
        for busid in wanted:
            # One import at a time per backend: two threads enumerating at once must not import
            # the same busid twice (the second import would be refused as busy).
            with self._import_lock:
                dev: Optional[UsbipDevice] = cached.get(busid)
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
                                        hook=self.hook, ssl=self.ssl, connect=self.connect)
        except ImportRefusedError as exc:
            self._skip(busid, str(exc))
            return None
        except UsbipError as exc:
            # The client's own errors already begin "import of BUSID from HOST:PORT: ..."
            text = str(exc)
            self._skip(busid, text if text.startswith(f"import of {busid} ") else
                       f"import of {busid} from {where} failed: {text}")
            return None
        try:
            desc, configs = read_descriptors(conn, self._timeout_s)
        except (UsbipError, ValueError) as exc:
            conn.close()
            self._skip(busid, f"cannot read the descriptors of {busid} on {where}: {exc}")
            return None
        dev = UsbipDevice(conn, self.host, self.port, desc, configs, max_transfer=self.max_transfer,
                          timeout=self._timeout_s)
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
        try:
            dev.set_configuration(config_value, self._timeout_s)
        except UsbipError as exc:
            _raise_usb(exc, f"SET_CONFIGURATION {config_value} to {dev.name}")

    def get_configuration(self, dev_handle: UsbipHandle) -> int:
        dev = dev_handle.dev
        try:
            return dev.configuration()
        except UsbipError as exc:
            _raise_usb(exc, f"GET_CONFIGURATION of {dev.name}")

    def set_interface_altsetting(self, dev_handle: UsbipHandle, intf: int, altsetting: int) -> None:
        dev = dev_handle.dev
        try:
            dev.set_interface(intf, altsetting, self._timeout_s)
        except UsbipError as exc:
            _raise_usb(exc, f"SET_INTERFACE {intf} alt {altsetting} to {dev.name}")

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
                      wIndex: int, data: Any, timeout: int) -> int:
        dev = dev_handle.dev
        try:
            return dev.control(bmRequestType, bRequest, wValue, wIndex, data, seconds(timeout))
        except UsbipError as exc:
            _raise_usb(exc, f"control request 0x{bmRequestType:02x}/0x{bRequest:02x} to {dev.name}")
        except ValueError as exc:
            raise ValueError(f"control request 0x{bmRequestType:02x}/0x{bRequest:02x}: {exc}") from None

    def clear_halt(self, dev_handle: UsbipHandle, ep: int) -> None:
        dev = dev_handle.dev
        try:
            dev.clear_halt(ep, self._timeout_s)
        except UsbipError as exc:
            _raise_usb(exc, f"CLEAR_FEATURE(ENDPOINT_HALT) of endpoint 0x{ep:02x} to {dev.name}")

    def reset_device(self, dev_handle: UsbipHandle) -> None:
        """Hub-class SET_PORT_FEATURE(PORT_RESET): what Linux's vhci sends, and the stub resets."""
        dev = dev_handle.dev
        try:
            dev.reset(self._timeout_s)
        except UsbipError as exc:
            _raise_usb(exc, f"port reset of {dev.name} (the server stalls it if it cannot reset "
                            f"devices, as Linux's device-mode usbipd with usbip-vudc does)")

    # -- bulk, interrupt ----------------------------------------------------------------------------
    def bulk_write(self, dev_handle: UsbipHandle, ep: int, intf: int, data: Any, timeout: int) -> int:
        return self._write(dev_handle.dev, _BULK, ep, data, timeout)

    def bulk_read(self, dev_handle: UsbipHandle, ep: int, intf: int, buff: Any, timeout: int) -> int:
        return self._read(dev_handle.dev, _BULK, ep, buff, timeout)

    def intr_write(self, dev_handle: UsbipHandle, ep: int, intf: int, data: Any, timeout: int) -> int:
        return self._write(dev_handle.dev, _INTERRUPT, ep, data, timeout)

    def intr_read(self, dev_handle: UsbipHandle, ep: int, intf: int, buff: Any, timeout: int) -> int:
        return self._read(dev_handle.dev, _INTERRUPT, ep, buff, timeout)

    def _write(self, dev: UsbipDevice, ttype: P.TransferType, ep: int, data: Any, timeout: int) -> int:
        view = flat(data)
        try:
            return dev.write(ttype, ep, view, seconds(timeout))
        except UsbipError as exc:
            return self._partial(exc, ttype, "write to", ep, dev, view.nbytes)

    def _read(self, dev: UsbipDevice, ttype: P.TransferType, ep: int, buff: Any, timeout: int) -> int:
        view = flat(buff)
        try:
            return dev.read(ttype, ep, view, seconds(timeout))
        except UsbipError as exc:
            return self._partial(exc, ttype, "read from", ep, dev, view.nbytes)

    @staticmethod
    def _partial(exc: UsbipError, ttype: P.TransferType, verb: str, ep: int, dev: UsbipDevice,
                 total: int) -> int:
        """As libusb1: a timeout after some I/O returns that count; anything else raises (saying
        how far a transfer split into several URBs got)."""
        transferred = getattr(exc, "transferred", 0)
        if isinstance(exc, UsbipTimeoutError) and transferred:
            return transferred
        what = _what(ttype, verb, ep, dev)
        if transferred or (dev.max_transfer is not None and total > dev.max_transfer):
            what = f"{what} (after {transferred} of {total} bytes)"
        _raise_usb(exc, what)

    # -- isochronous ------------------------------------------------------------------------------
    def iso_write(self, dev_handle: UsbipHandle, ep: int, intf: int, data: Any, timeout: int) -> int:
        return self._iso(dev_handle.dev, ep, data, timeout, out=True)

    def iso_read(self, dev_handle: UsbipHandle, ep: int, intf: int, buff: Any, timeout: int) -> int:
        return self._iso(dev_handle.dev, ep, buff, timeout, out=False)

    def _iso(self, dev: UsbipDevice, ep: int, data: Any, timeout: int, out: bool) -> int:
        what = f"isochronous {'write to' if out else 'read from'} endpoint 0x{ep:02x} of {dev.name}"
        try:
            return dev.iso(ep, flat(data), seconds(timeout), out)
        except UsbipError as exc:
            _raise_usb(exc, what)


def get_backend(
    host: Optional[str] = None,
    port: int = P.USBIP_PORT,
    timeout: float = 5.0,
    pcap: Any = None,
    *,
    busids: Optional[Iterable[str]] = None,
    max_transfer: Optional[int] = None,
    connect_timeout: Optional[float] = None,
    ssl: TlsArg = None,
    connect: Optional[Connector] = None,
    mdns_interfaces: Optional[Sequence[str]] = None,
) -> UsbipBackend:
    """A PyUSB backend for the USB/IP server at ``host:port``.

    Args:
        host: server address; None finds the one server announcing itself over mDNS.
        port: TCP port (3240).
        timeout: seconds for the device list, imports and reading descriptors (0: no limit).
        pcap: record every URB as pcapng: a path, or a hook such as ``PcapWriter``.
        busids: import only these busids (e.g. ``["1-1"]``); others are left to other clients.
        max_transfer: split bulk/interrupt transfers into URBs of at most this many bytes.
        connect_timeout: seconds to connect (defaults to ``timeout``).
        ssl: TLS to a server behind a TLS terminator (stunnel...): True for
            ``ssl.create_default_context()`` (the system's CAs), or an ``ssl.SSLContext`` used
            as given (``ssl.create_default_context(cafile="ca.pem")`` for a private CA, with
            ``load_cert_chain()`` for a client certificate). The certificate must be valid for
            ``host``; with ``host=None`` that is the address mDNS found.
        connect: ``connect(host, port, timeout)`` returning a connected socket-like object
            (``recv``, ``sendall``, ``close``): a paramiko ``direct-tcpip`` channel, a socket
            connected through a proxy, or ``client.command_connector("ssh -W %h:%p jumphost")``.
            With ``ssl`` too, TLS runs inside it.
        mdns_interfaces: with ``host=None``, the local addresses mDNS asks on (e.g.
            ``["192.168.1.5"]``); None asks on every interface.

    ``timeout`` and ``pcap`` may be given by position (``get_backend(host, port, timeout,
    pcap)``, as 0.0.1 took them); the rest are keyword-only.

    Use it as ``usb.core.find(backend=get_backend("host"))``; call ``close()`` (or use it as a
    context manager) to end the connections.
    """
    if host is None:
        from .discovery import resolve_single_server  # lazy: zeroconf only when asked for

        server = resolve_single_server(interfaces=mdns_interfaces)
        host, port = server.address, server.port
    return UsbipBackend(host, port, timeout=timeout, busids=busids, pcap=pcap, max_transfer=max_transfer,
                        connect_timeout=connect_timeout, ssl=ssl, connect=connect)
