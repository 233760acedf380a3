"""The virtual USB/IP server: usbipd + usbip-host (stub mode) behaviour over real TCP.

One accept thread; one thread per TCP connection. A connection carries one OP_* request (as with
usbipd) and is then closed, except a successful OP_REQ_IMPORT, after which the same connection
carries the URB stream (CMD_SUBMIT / CMD_UNLINK) and its thread is the reader. Pending URBs (IN
waiting for data, bulk/interrupt OUT waiting for the device to take its data: see ``_try_out``) are
completed later from whatever thread calls ``Device.notify``; every reply goes out under the
connection's send lock while the device lock is held, so a RET_UNLINK(0) can never overtake the
RET_SUBMIT of the URB it names. How CMD_UNLINK is answered is switchable (``SimServer(unlink=...)``,
see :data:`UNLINK_BEHAVIOURS`) because real servers disagree and clients must cope with each.
"""

from __future__ import annotations

import collections
import ipaddress
import logging
import socket
import threading
from typing import TYPE_CHECKING, Any, Callable, Deque, Dict, Iterable, List, Optional, Sequence, Set, Tuple

from .. import protocol as P
from ..discovery import SERVICE_TYPE
from ..errors import LinuxErrno, ProtocolError
from ..protocol import (
    CMD_SUBMIT_STRUCT, ISO_PACKET_STRUCT, OP_COMMON_STRUCT, RET_SUBMIT_STRUCT, RET_UNLINK_STRUCT,
    USBIP_CMD_SUBMIT, USBIP_CMD_UNLINK, USBIP_RET_SUBMIT, USBIP_RET_UNLINK, TransferType,
)
from ..ch9 import (
    FEATURE_ENDPOINT_HALT, HUB_PORT_RESET, REQ_CLEAR_FEATURE, REQ_SET_CONFIGURATION, REQ_SET_FEATURE, REQ_SET_INTERFACE,
)
from .device import Device, Setup, Stall

if TYPE_CHECKING:
    from .mdns import MdnsAdvertiser

log = logging.getLogger(__name__)

#: Largest transfer_buffer_length accepted; larger (or negative) drops the connection, as the
#: kernel does for absurd lengths (it never allocates them).
MAX_TRANSFER = 16 * 1024 * 1024

# URB statuses the server answers with (negated Linux errno numbers, as in RET_SUBMIT.status).
EPIPE = -LinuxErrno.EPIPE
EOVERFLOW = -LinuxErrno.EOVERFLOW
ECONNRESET = -LinuxErrno.ECONNRESET
ESHUTDOWN = -LinuxErrno.ESHUTDOWN
EREMOTEIO = -LinuxErrno.EREMOTEIO
EPROTO = -LinuxErrno.EPROTO
EMSGSIZE = -LinuxErrno.EMSGSIZE

_EMPTY = b""

#: An ISO packet's place in the transfer buffer: (offset, length).
_IsoSlot = Tuple[int, int]
#: An endpoint handler of a device (``bulk_in_1`` and the like), as ``Device.endpoints`` gives it.
_Handler = Callable[..., Any]

#: The CMD_UNLINK behaviours :class:`SimServer` can imitate (its ``unlink`` argument).
#: "kernel" is the Linux stub (usbip-host): a pending URB is cancelled with RET_UNLINK
#: -ECONNRESET (-104) and never gets a RET_SUBMIT, while an already completed or unknown URB gets
#: RET_UNLINK 0 after its RET_SUBMIT. "status0" is the PyPI ``usbip`` 0.7.0 server: every
#: CMD_UNLINK gets RET_UNLINK 0, and a pending URB is silently dropped, so a status 0 never
#: promises that a RET_SUBMIT follows. "ignore" is a server that never answers CMD_UNLINK: no
#: RET_UNLINK is sent and the URB stays pending, completing normally if the device later has data.
UNLINK_BEHAVIOURS = ("kernel", "status0", "ignore")


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text.split("%")[0])
    except ValueError:
        return False
    return True


class _DropConnection(Exception):
    """The peer broke the protocol: close the connection (as the stub does)."""


class _Urb:
    """A URB held by the server: an IN URB the device has no data for yet, or an OUT URB whose
    data the device has not all taken yet (its buffer is full)."""

    __slots__ = ("seqnum", "address", "kind", "length", "flags", "iso", "handler", "data", "taken")

    def __init__(self, seqnum: int, address: int, kind: int, length: int, flags: int,
                 iso: Optional[List[_IsoSlot]], handler: Optional[_Handler],
                 data: Optional[bytearray] = None) -> None:
        self.seqnum = seqnum
        self.address = address
        self.kind = kind
        self.length = length
        self.flags = flags
        self.iso = iso  # [(offset, length)] for ISO IN
        self.handler = handler  # None: nonexistent endpoint, never completes
        self.data = data  # OUT: what the device has yet to take
        self.taken = 0  # OUT: bytes the device took so far


def _recv_exact(sock: socket.socket, view: memoryview) -> bool:
    """Fill ``view`` from the socket; False on EOF before the first byte... or mid-way."""
    got = 0
    size = len(view)
    while got < size:
        n = sock.recv_into(view[got:])
        if n == 0:
            return False
        got += n
    return True


class _Connection:
    """One TCP connection: the OP exchange, then (after an import) the URB stream."""

    def __init__(self, server: "SimServer", sock: socket.socket, peer: Any) -> None:
        self.server = server
        self.sock = sock
        self.peer = peer
        self.send_lock = threading.Lock()
        self.device: Optional[Device] = None
        self.devid = 0
        self.pending: Dict[int, _Urb] = {}
        self.queues: Dict[int, Deque[_Urb]] = collections.defaultdict(collections.deque)
        self.frame = 0
        self.thread = threading.Thread(target=self._run, name=f"usbip-sim-conn-{peer[1]}", daemon=True)

    # -- sending -------------------------------------------------------------------------------------
    def _send(self, header: bytes, data: Any = None) -> None:
        with self.send_lock:
            try:
                if data:
                    total = len(header) + len(data)
                    sent = self.sock.sendmsg([header, data])
                    if sent < total:
                        rest = memoryview(b"".join([header, bytes(data)]))[sent:]
                        self.sock.sendall(rest)
                else:
                    self.sock.sendall(header)
            except OSError as exc:
                log.debug("send to %s failed: %s", self.peer, exc)

    def _ret_submit(self, seqnum: int, status: int, actual: int, data: Any = None,
                    start_frame: int = 0, npk: int = 0, errors: int = 0) -> None:
        # The stub replies with devid, direction and ep 0 (usbip_protocol.rst, USBIP_RET_SUBMIT).
        self._send(RET_SUBMIT_STRUCT.pack(USBIP_RET_SUBMIT, seqnum, 0, 0, 0, status, actual,
                                          start_frame, npk, errors), data)

    def _fail(self, seqnum: int, status: int, iso: Optional[List[_IsoSlot]]) -> None:
        """An error RET_SUBMIT; ISO URBs still carry one descriptor per packet."""
        if iso is None:
            self._ret_submit(seqnum, status, 0)
            return
        descs = b"".join(ISO_PACKET_STRUCT.pack(o, n, 0, status) for o, n in iso)
        self._ret_submit(seqnum, status, 0, descs, start_frame=self.frame, npk=len(iso), errors=len(iso))

    def _ret_unlink(self, seqnum: int, status: int) -> None:
        self._send(RET_UNLINK_STRUCT.pack(USBIP_RET_UNLINK, seqnum, 0, 0, 0, status))

    # -- thread body ---------------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            self._serve_op()
        except (OSError, _DropConnection) as exc:
            log.debug("connection %s: %s", self.peer, exc)
        except Exception:  # pragma: no cover - a bug in a device must not kill the server
            log.exception("connection %s failed", self.peer)
        finally:
            self._detach()
            try:
                self.sock.close()
            except OSError:
                pass
            self.server._forget(self)

    def _serve_op(self) -> None:
        head = bytearray(OP_COMMON_STRUCT.size)
        if not _recv_exact(self.sock, memoryview(head)):
            return
        version, code, _status = OP_COMMON_STRUCT.unpack(head)
        if version != P.USBIP_VERSION:
            # usbipd (recv_request_op_common) closes on a version mismatch without a reply.
            log.info("%s: USB/IP version 0x%04x, closing", self.peer, version)
            return
        if code == P.OP_REQ_DEVLIST:
            self.sock.sendall(P.pack_rep_devlist(self.server.exported_records()))
            return
        if code != P.OP_REQ_IMPORT:
            log.info("%s: unknown OP code 0x%04x, closing", self.peer, code)
            return
        raw = bytearray(P.SYSFS_BUS_ID_SIZE)
        if not _recv_exact(self.sock, memoryview(raw)):
            return
        try:
            busid = P.unpack_req_import(bytes(raw))
        except ProtocolError:
            return
        status, device = self.server._claim(busid, self)
        if status != P.Status.ST_OK or device is None:
            log.info("%s: import of %s refused: %s", self.peer, busid, P.status_text(status))
            self.sock.sendall(P.pack_rep_import(None, status))
            return
        record = self.server.record(device)
        self.devid = record.devid
        self.sock.sendall(P.pack_rep_import(record))
        log.info("%s imported %s (%s)", self.peer, busid, type(device).__name__)
        self._serve_urbs()

    def _detach(self) -> None:
        device = self.device
        if device is None:
            return
        with device.lock:
            self.pending.clear()
            self.queues.clear()
            device._conn = None
            # On disconnect the stub resets the device (usb_reset_device keeps the configuration).
            device._bus_reset(keep_configuration=True)
        self.device = None
        self.server._release(device)
        log.info("%s released %s", self.peer, device.busid)

    # -- URB stream ----------------------------------------------------------------------------------
    def _serve_urbs(self) -> None:
        sock = self.sock
        header = bytearray(48)
        hview = memoryview(header)
        unpack = CMD_SUBMIT_STRUCT.unpack_from
        device = self.device
        assert device is not None
        while True:
            if not _recv_exact(sock, hview):
                return
            (command, seqnum, devid, direction, ep, flags, length, start_frame, npk, interval,
             setup) = unpack(header)
            if command == USBIP_CMD_SUBMIT:
                if devid != self.devid:
                    # stub_rx.c: a devid that is not ours is a fatal protocol error.
                    raise _DropConnection(f"CMD_SUBMIT seqnum {seqnum} has devid 0x{devid:08x}, "
                                          f"expected 0x{self.devid:08x}")
                if direction > 1 or ep > 15:
                    raise _DropConnection(f"CMD_SUBMIT direction {direction} ep {ep} invalid")
                if length < 0 or length > MAX_TRANSFER:
                    raise _DropConnection(f"CMD_SUBMIT transfer_buffer_length {length} out of range")
                self._submit(seqnum, direction, ep, flags, length, npk, interval, setup)
            elif command == USBIP_CMD_UNLINK:
                if devid != self.devid:
                    raise _DropConnection(f"CMD_UNLINK seqnum {seqnum} has devid 0x{devid:08x}")
                self._unlink(seqnum, flags)  # the unlink_seqnum sits where transfer_flags does
            else:
                raise _DropConnection(f"unknown URB command 0x{command:08x}")

    def _read_data(self, length: int) -> bytearray:
        data = bytearray(length)
        if length and not _recv_exact(self.sock, memoryview(data)):
            raise _DropConnection("connection closed inside OUT data")
        return data

    def _submit(self, seqnum: int, direction: int, ep: int, flags: int, length: int, npk: int,
                interval: int, setup: bytes) -> None:
        device = self.device
        assert device is not None
        if ep == 0:
            data = self._read_data(length) if direction == 0 else None
            self._control(seqnum, setup, direction, length, data)
            return
        address = ep | 0x80 if direction else ep
        with device.lock:
            entry = device.endpoints().get(address)
        if entry is None:
            self._no_endpoint(seqnum, address, direction, length, npk)
            return
        decl, handler = entry
        kind = decl.type
        limit = self.server.max_urb
        if limit is not None and length > limit and kind != TransferType.ISOCHRONOUS:
            # The ESP32 bridge refuses URBs above its buffer size with -EMSGSIZE, data unread by
            # the device (the OUT payload is still taken off the wire).
            if direction == 0:
                self._read_data(length)
            with device.lock:
                self._fail(seqnum, EMSGSIZE, None)
            return
        if kind in (TransferType.INTERRUPT, TransferType.ISOCHRONOUS) and interval <= 0:
            # usb_submit_urb() rejects interval 0 for periodic endpoints; the stub then drops the
            # connection (SDEV_EVENT_ERROR_SUBMIT) and resets the device.
            log.warning("%s: URB seqnum %d to periodic endpoint 0x%02x with interval %d: "
                        "usb_submit_urb fails, dropping the connection", self.peer, seqnum, address, interval)
            raise _DropConnection("interval 0 on a periodic endpoint")
        iso = None
        if kind == TransferType.ISOCHRONOUS:
            if npk <= 0 or npk > P.MAX_ISO_PACKETS:
                raise _DropConnection(f"ISO URB seqnum {seqnum} with {npk} packets")
        elif npk > 0:
            # The stub reads ISO descriptors only for ISO pipes: the client's descriptors stay in
            # the stream and desynchronise it, so the kernel drops the connection. Say why here.
            log.warning("%s: URB seqnum %d to %s endpoint 0x%02x carries %d ISO packets: "
                        "dropping the connection as the kernel stub does", self.peer, seqnum,
                        TransferType(kind).name.lower(), address, npk)
            raise _DropConnection("ISO packets on a non-ISO endpoint")
        if direction == 0:
            data = self._read_data(length)
            if kind == TransferType.ISOCHRONOUS:
                iso = self._read_iso(npk, length)
            with device.lock:
                self._out(seqnum, address, kind, handler, data, iso)
            return
        if kind == TransferType.ISOCHRONOUS:
            iso = self._read_iso(npk, length)
        if handler is None:
            # Declared endpoint whose handler method is absent: the capability is absent (stall).
            with device.lock:
                self._fail(seqnum, EPIPE, iso)
            return
        urb = _Urb(seqnum, address, kind, length, flags, iso, handler)
        with device.lock:
            if address in device.halted:
                self._fail(seqnum, EPIPE, iso)
                return
            if self.queues.get(address) or not self._try_in(urb):
                self.pending[seqnum] = urb
                self.queues[address].append(urb)

    def _read_iso(self, npk: int, length: int) -> List[_IsoSlot]:
        raw = self._read_data(npk * P.ISO_PACKET_SIZE)
        packets: List[_IsoSlot] = []
        for i in range(npk):
            offset, plen, _actual, _status = ISO_PACKET_STRUCT.unpack_from(raw, i * P.ISO_PACKET_SIZE)
            if offset + plen > length:
                raise _DropConnection(f"ISO packet {i} ({offset}+{plen}) beyond buffer {length}")
            packets.append((offset, plen))
        return packets

    def _no_endpoint(self, seqnum: int, address: int, direction: int, length: int, npk: int) -> None:
        """A URB to an endpoint the active configuration lacks (stub_rx.c get_pipe fails)."""
        if npk > 0:
            # The stub returns without reading the ISO descriptors either: the stream desyncs.
            log.warning("%s: ISO URB seqnum %d to nonexistent endpoint 0x%02x: dropping the "
                        "connection as the kernel stub does", self.peer, seqnum, address)
            raise _DropConnection("ISO URB to a nonexistent endpoint")
        if direction == 0 and length:
            # The stub does not read the OUT data, so the stream desynchronises and drops.
            log.warning("%s: OUT URB seqnum %d to nonexistent endpoint 0x%02x: dropping the "
                        "connection as the kernel stub does", self.peer, seqnum, address)
            raise _DropConnection("OUT to a nonexistent endpoint")
        log.info("%s: URB seqnum %d to nonexistent endpoint 0x%02x: never answered (unlink it)",
                 self.peer, seqnum, address)
        device = self.device
        assert device is not None
        with device.lock:
            urb = _Urb(seqnum, address, TransferType.BULK, length, 0, None, None)
            self.pending[seqnum] = urb
            self.queues[-1].append(urb)

    # -- OUT ---------------------------------------------------------------------------------------
    def _out(self, seqnum: int, address: int, kind: int, handler: Optional[_Handler], data: bytearray,
             iso: Optional[List[_IsoSlot]]) -> None:
        device = self.device
        assert device is not None
        if address in device.halted or handler is None:
            self._fail(seqnum, EPIPE, iso)
            return
        if iso is not None:
            packets = [bytes(data[o:o + n]) for o, n in iso]
            status = self._call(handler, address, packets)
            if status:
                self._fail(seqnum, status, iso)
                return
            descs = b"".join(ISO_PACKET_STRUCT.pack(o, n, n, 0) for o, n in iso)
            actual = sum(n for _o, n in iso)
            frame = self.frame
            self.frame = (self.frame + len(iso)) & 0x3FFF
            self._ret_submit(seqnum, 0, actual, descs, start_frame=frame, npk=len(iso))
            return
        urb = _Urb(seqnum, address, kind, len(data), 0, None, handler, data)
        if self.queues.get(address) or not self._try_out(urb):
            # The device's buffer is full (or an earlier URB waits for it): no RET_SUBMIT until
            # the device has taken every byte, as a device NAKs OUT packets it has no room for.
            self.pending[seqnum] = urb
            self.queues[address].append(urb)

    def _try_out(self, urb: _Urb) -> bool:
        """Offer the device what it has not taken of an OUT URB; send RET_SUBMIT and return True
        once it took all, or False to keep the URB pending. Called with the device lock held.

        The handler returns None (took all), False (stall) or how many bytes it took: fewer
        than it was given keeps the URB pending until the device calls ``notify`` on the OUT
        endpoint, when it is offered the rest (the same bytearray, the taken bytes removed).
        """
        device = self.device
        assert device is not None and urb.handler is not None and urb.data is not None
        if urb.address in device.halted:
            self._fail(urb.seqnum, EPIPE, None)
            return True
        data = urb.data
        try:
            result = urb.handler(data)
        except Stall:
            device.halted.add(urb.address)
            self._fail(urb.seqnum, EPIPE, None)
            return True
        except Exception:
            log.exception("%r: handler for endpoint 0x%02x failed", device, urb.address)
            self._fail(urb.seqnum, EPROTO, None)
            return True
        if result is False:
            self._fail(urb.seqnum, EPIPE, None)
            return True
        if isinstance(result, int) and not isinstance(result, bool) and 0 <= result < len(data):
            del data[:result]
            urb.taken += result
            return False
        self._ret_submit(urb.seqnum, 0, urb.taken + len(data))
        return True

    def _call(self, handler: _Handler, address: int, arg: Any) -> int:
        """Run an ISO OUT handler; return the URB status."""
        device = self.device
        assert device is not None
        try:
            result = handler(arg)
        except Stall:
            device.halted.add(address)
            return EPIPE
        except Exception:
            log.exception("%r: handler for endpoint 0x%02x failed", device, address)
            return EPROTO
        return EPIPE if result is False else 0

    # -- IN ----------------------------------------------------------------------------------------
    def _try_in(self, urb: _Urb) -> bool:
        """Ask the device for data; send RET_SUBMIT and return True, or False to keep it pending.

        Called with the device lock held.
        """
        device = self.device
        assert device is not None
        handler = urb.handler
        if handler is None:
            return False
        if urb.address in device.halted:
            self._fail(urb.seqnum, EPIPE, urb.iso)
            return True
        try:
            result = handler([n for _o, n in urb.iso] if urb.iso is not None else urb.length)
        except Stall:
            device.halted.add(urb.address)
            self._fail(urb.seqnum, EPIPE, urb.iso)
            return True
        except Exception:
            log.exception("%r: handler for endpoint 0x%02x failed", device, urb.address)
            self._fail(urb.seqnum, EPROTO, urb.iso)
            return True
        if result is None:
            return False
        if urb.iso is not None:
            self._complete_iso_in(urb, result)
            return True
        status = 0
        if len(result) > urb.length:
            # Babble: the device sent more than the buffer holds; the buffer is filled.
            result = memoryview(result)[:urb.length]
            status = EOVERFLOW
        elif len(result) < urb.length and urb.flags & P.USBIP_URB_SHORT_NOT_OK:
            status = EREMOTEIO
        self._ret_submit(urb.seqnum, status, len(result), result)
        return True

    def _complete_iso_in(self, urb: _Urb, packets: Sequence[bytes]) -> None:
        assert urb.iso is not None
        chunks = []
        descs = []
        errors = 0
        actual_total = 0
        for i, (offset, plen) in enumerate(urb.iso):
            data = packets[i] if i < len(packets) else b""
            status = 0
            if len(data) > plen:
                data = data[:plen]
                status = EOVERFLOW
                errors += 1
            chunks.append(data)
            actual_total += len(data)
            descs.append(ISO_PACKET_STRUCT.pack(offset, plen, len(data), status))
        # ISO IN data goes back to back (only the actual bytes); the client spreads it by offset.
        payload = b"".join(chunks) + b"".join(descs)
        frame = self.frame
        self.frame = (self.frame + len(urb.iso)) & 0x3FFF
        self._ret_submit(urb.seqnum, 0, actual_total, payload, start_frame=frame,
                         npk=len(urb.iso), errors=errors)

    def drain(self, address: int) -> None:
        """Complete pending URBs of ``address`` while the device has data for them (IN) or
        takes their data (OUT); device lock held."""
        queue = self.queues.get(address)
        attempt = self._try_in if address & 0x80 else self._try_out
        while queue:
            urb = queue[0]
            if not attempt(urb):
                return
            queue.popleft()
            self.pending.pop(urb.seqnum, None)

    def fail_pending(self, address: int, status: int) -> None:
        """Complete every pending URB of ``address`` with ``status`` (device lock held)."""
        queue = self.queues.pop(address, None)
        for urb in queue or ():
            self.pending.pop(urb.seqnum, None)
            self._fail(urb.seqnum, status, urb.iso)

    def _fail_all_endpoints(self, status: int) -> None:
        for address in [a for a in self.queues if a != -1]:
            self.fail_pending(address, status)

    # -- unlink --------------------------------------------------------------------------------------
    def _unlink(self, seqnum: int, target: int) -> None:
        device = self.device
        assert device is not None
        behaviour = self.server.unlink
        if behaviour == "ignore":
            # The URB is left exactly as it was: pending URBs still complete when data comes.
            log.debug("%s: CMD_UNLINK seqnum %d of %d ignored (unlink=ignore)", self.peer, seqnum, target)
            return
        with device.lock:
            urb = self.pending.pop(target, None)
            if urb is None:
                # Already completed (its RET_SUBMIT went out first) or unknown: status 0.
                self._ret_unlink(seqnum, 0)
                return
            queue = self.queues.get(urb.address if urb.handler is not None else -1)
            if queue is not None:
                try:
                    queue.remove(urb)
                except ValueError:
                    pass
            if urb.handler is None:
                # A URB to a nonexistent endpoint: stub_recv_cmd_submit() returned before
                # allocating anything for it, so the stub's unlink finds no such seqnum and
                # answers status 0, and no RET_SUBMIT ever follows. Clients must cope (a bounded
                # wait after the unlink), so the virtual server does the same.
                self._ret_unlink(seqnum, 0)
                return
            if behaviour == "status0":
                # usbip 0.7.0 drops the parked URB and reports success, as if it had completed;
                # removed under the device lock, so no RET_SUBMIT for it can follow.
                self._ret_unlink(seqnum, 0)
                return
            # Cancelled: RET_UNLINK carries the CMD_UNLINK's own seqnum and -ECONNRESET, and no
            # RET_SUBMIT is ever sent for the unlinked URB (usbip_protocol.rst, USBIP_RET_UNLINK).
            self._ret_unlink(seqnum, ECONNRESET)

    # -- control -------------------------------------------------------------------------------------
    def _control(self, seqnum: int, raw_setup: bytes, direction: int, length: int,
                 data: Optional[bytearray]) -> None:
        device = self.device
        assert device is not None
        setup = Setup.unpack(raw_setup)
        with device.lock:
            if direction == 1:
                try:
                    result = device._control_in(setup)
                except Stall:
                    result = None
                except Exception:
                    log.exception("%r: control IN %s failed", device, setup)
                    result = None
                if result is None:
                    self._ret_submit(seqnum, EPIPE, 0)
                    return
                limit = min(length, setup.wLength)
                if len(result) > limit:
                    result = result[:limit]
                self._ret_submit(seqnum, 0, len(result), result)
                return
            payload = bytes(data or b"")
            try:
                ok = self._control_out(device, setup, payload)
            except Stall:
                ok = False
            except Exception:
                log.exception("%r: control OUT %s failed", device, setup)
                ok = False
            self._ret_submit(seqnum, 0 if ok else EPIPE, len(payload) if ok else 0)

    def _control_out(self, device: Device, setup: Setup, data: bytes) -> bool:
        """The requests the stub intercepts (stub_rx.c tweak_special_requests), then the device."""
        req, rtype = setup.bRequest, setup.bmRequestType
        if rtype == 0x00 and req == REQ_SET_CONFIGURATION:
            self._fail_all_endpoints(ESHUTDOWN)
            return device._set_configuration(setup.wValue & 0xFF)
        if rtype == 0x01 and req == REQ_SET_INTERFACE:
            itf = device.find_interface(setup.wIndex, device.alt_settings.get(setup.wIndex, 0))
            if not device.configuration or device.find_interface(setup.wIndex, setup.wValue) is None:
                return False
            for ep in itf.endpoints if itf else ():
                self.fail_pending(ep.address, ESHUTDOWN)
            return device._set_interface(setup.wIndex, setup.wValue)
        if rtype == 0x02 and req == REQ_CLEAR_FEATURE and setup.wValue == FEATURE_ENDPOINT_HALT:
            address = setup.wIndex & 0xFF
            if address & 0x7F == 0:
                return True
            if address not in device.endpoints():
                return False
            device.halted.discard(address)
            if address & 0x80:
                self.drain(address)
            return True
        if rtype == 0x23 and req == REQ_SET_FEATURE and setup.wValue == HUB_PORT_RESET:
            # SET_PORT_FEATURE(PORT_RESET): Linux's vhci asks the stub to reset the device.
            self._fail_all_endpoints(ESHUTDOWN)
            device._bus_reset(keep_configuration=self.server.reset_keeps_configuration)
            return True
        return device._control_out(setup, data)


class SimServer:
    """A virtual USB/IP server on a real TCP socket.

    Args:
        devices: the devices to export (their ``busid`` set, or assigned "1-1", "1-2", ...);
            None exports the stock set (:func:`usbip_backend.sim.devices.stock_devices`).
        host, port: where to listen; port 0 picks a free port (see :attr:`port`).
        reset_keeps_configuration: what SET_PORT_FEATURE(PORT_RESET) does to the configuration.
            True (default) is the kernel's usb_reset_device(), which re-applies the configuration
            and alternate settings; False leaves the device unconfigured like a bare bus reset.
        unlink: how CMD_UNLINK is answered: "kernel" (default, the Linux stub), "status0" or
            "ignore", as :data:`UNLINK_BEHAVIOURS` describes them. Anything else raises ValueError.
        max_urb: bulk and interrupt URBs longer than this many bytes are answered -EMSGSIZE
            (-90) with no data moved, as the ESP32 USB/IP bridge answers URBs beyond its buffer
            (4096 bytes by default there); None (default) takes any length up to MAX_TRANSFER.
        mdns: advertise the server over mDNS as the ESP32 bridge does (``_usbip._tcp``, TXT
            keys transport, state, count, busid, vid, pid, target, board_id; see
            :mod:`usbip_backend.sim.mdns`). :meth:`start` then returns once the service is
            registered (about 1.7 s), raising :class:`~usbip_backend.sim.mdns.MdnsError` if it
            cannot be; :meth:`stop` withdraws it. The advertiser is :attr:`mdns`.
        mdns_interfaces: the local addresses zeroconf uses; only 127.0.0.1 by default, so the
            advertisement never leaves the machine.
        mdns_name: the service instance name (default ``usbip-sim-<board_id>``).
        mdns_type: the service type (default ``_usbip._tcp.local.``).
    """

    def __init__(self, devices: Optional[Iterable[Device]] = None, host: str = "127.0.0.1",
                 port: int = 0, reset_keeps_configuration: bool = True, unlink: str = "kernel",
                 max_urb: Optional[int] = None, *, mdns: bool = False,
                 mdns_interfaces: Sequence[str] = ("127.0.0.1",), mdns_name: Optional[str] = None,
                 mdns_type: str = SERVICE_TYPE) -> None:
        if unlink not in UNLINK_BEHAVIOURS:
            raise ValueError(f"unlink must be one of {', '.join(map(repr, UNLINK_BEHAVIOURS))}, "
                             f"not {unlink!r}")
        if devices is None:
            from .devices import stock_devices
            devices = stock_devices()
        self.devices: List[Device] = list(devices)
        seen: Set[str] = set()
        for i, dev in enumerate(self.devices):
            if dev.busid is None:
                dev.busid = f"1-{i + 1}"
            if dev.busid in seen:
                raise ValueError(f"duplicate busid {dev.busid!r}")
            seen.add(dev.busid)
        self.host = host
        self._requested_port = port
        self.reset_keeps_configuration = reset_keeps_configuration
        self.unlink = unlink
        self.max_urb = max_urb
        self._lock = threading.Lock()
        self._released = threading.Condition(self._lock)
        self._owners: Dict[str, _Connection] = {}
        self._conns: Set[_Connection] = set()
        self._listener: Optional[socket.socket] = None
        self._accept_thread: Optional[threading.Thread] = None
        self._stopping = threading.Event()
        self.port = 0
        self._mdns_wanted = mdns
        self.mdns_interfaces: List[str] = list(mdns_interfaces)
        self.mdns_name = mdns_name
        self.mdns_type = mdns_type
        #: The running mDNS advertisement (``mdns=True``, between start and stop), else None.
        self.mdns: Optional["MdnsAdvertiser"] = None
        self._records: Dict[str, P.UsbDevice] = {}
        self._devnums: Dict[int, int] = {}
        for dev in self.devices:
            self._records[dev.busid or ""] = self._new_record(dev)

    def _new_record(self, dev: Device) -> P.UsbDevice:
        """The device list record of a device plugged in now (a fresh devnum on its bus, as a
        real bus numbers devices in the order they appear)."""
        busnum = self._busnum(dev.busid or "1-1")
        self._devnums[busnum] = self._devnums.get(busnum, 1) + 1
        return P.UsbDevice(
            path=f"/sys/devices/platform/usbip-sim/usb{busnum}/{dev.busid}", busid=dev.busid or "",
            busnum=busnum, devnum=self._devnums[busnum], speed=int(dev.speed), idVendor=dev.vid,
            idProduct=dev.pid, bcdDevice=dev.bcd_device, bDeviceClass=dev.device_triple[0],
            bDeviceSubClass=dev.device_triple[1], bDeviceProtocol=dev.device_triple[2],
            bConfigurationValue=0, bNumConfigurations=1, bNumInterfaces=0)

    def unplug(self, busid: str) -> Device:
        """The device leaves the bus (as a board resetting drops off USB): it is no longer
        listed or importable, and a client that imported it loses its connection."""
        with self._lock:
            device = self.device(busid)
            self.devices.remove(device)
            self._records.pop(busid, None)
            owner = self._owners.pop(busid, None)
            self._released.notify_all()
        self._state_changed()
        if owner is not None:
            try:
                owner.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        return device

    def plug(self, device: Device) -> None:
        """A device arrives on the bus (maybe the one unplugged, with another PID): exported
        from now on under its busid (which must be free)."""
        with self._lock:
            if device.busid is None or any(d.busid == device.busid for d in self.devices):
                raise ValueError(f"busid {device.busid!r} is missing or taken")
            self.devices.append(device)
            self._records[device.busid] = self._new_record(device)
        self._state_changed()

    @staticmethod
    def _busnum(busid: str) -> int:
        head = busid.split("-", 1)[0]
        return int(head) if head.isdigit() else 1

    def device(self, busid: str) -> Device:
        """The exported device with this busid (KeyError if none)."""
        for dev in self.devices:
            if dev.busid == busid:
                return dev
        raise KeyError(busid)

    # -- records -------------------------------------------------------------------------------------
    def record(self, device: Device) -> P.UsbDevice:
        """The device's current usbip_usb_device record, with interface triples when configured."""
        from dataclasses import replace
        with device.lock:
            active = device.active_interfaces()
            ifs = tuple(P.UsbInterface(i.cls, i.subclass, i.protocol) for i in active)
            return replace(self._records[device.busid or ""], bConfigurationValue=device.configuration,
                           bNumInterfaces=len(ifs), interfaces=ifs)

    def exported_records(self) -> List[P.UsbDevice]:
        """What OP_REP_DEVLIST lists: every device no client has imported, newest first.

        usbipd walks its device list head-first and adds each exported device at the head, so
        the kernel lists devices in reverse order of export (5-1 ... 1-1); clients can see it.
        """
        with self._lock:
            free = [d for d in reversed(self.devices) if d.busid not in self._owners]
        return [self.record(d) for d in free]

    def _claim(self, busid: str, conn: _Connection) -> Tuple[P.Status, Optional[Device]]:
        with self._lock:
            try:
                device = self.device(busid)
            except KeyError:
                return P.Status.ST_NODEV, None
            if busid in self._owners or self._stopping.is_set():
                return P.Status.ST_DEV_BUSY, None
            self._owners[busid] = conn
        with device.lock:
            device._conn = conn
        conn.device = device
        self._state_changed()
        return P.Status.ST_OK, device

    def _release(self, device: Device) -> None:
        with self._lock:
            self._owners.pop(device.busid or "", None)
            self._released.notify_all()
        self._state_changed()

    def mdns_properties(self) -> Dict[str, str]:
        """The TXT record the server advertises now (without ``board_id``, which the
        advertiser adds): see :func:`usbip_backend.sim.mdns.txt_record`."""
        from .mdns import txt_record

        with self._lock:
            return txt_record(list(self.devices), set(self._owners))

    def _state_changed(self) -> None:
        advertiser = self.mdns
        if advertiser is not None:
            advertiser.changed()

    def wait_free(self, busid: str, timeout: float = 5.0) -> bool:
        """Wait until no client holds ``busid`` (a closed client is released by the server's
        connection thread, a moment after the client closed); True when free."""
        with self._lock:
            return self._released.wait_for(lambda: busid not in self._owners, timeout)

    def _forget(self, conn: _Connection) -> None:
        with self._lock:
            self._conns.discard(conn)

    # -- lifecycle -----------------------------------------------------------------------------------
    def start(self) -> "SimServer":
        """Bind, listen and serve in background threads; returns self."""
        if self._listener is not None:
            raise RuntimeError("server already started")
        listener = socket.socket(socket.AF_INET6 if ":" in self.host else socket.AF_INET, socket.SOCK_STREAM)
        try:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind((self.host, self._requested_port))
            listener.listen(64)
        except OSError:
            listener.close()
            raise
        self._listener = listener
        self.port = listener.getsockname()[1]
        self._accept_thread = threading.Thread(target=self._accept_loop, name=f"usbip-sim-accept-{self.port}",
                                               daemon=True)
        self._accept_thread.start()
        log.info("virtual USB/IP server on %s:%d with %d device(s)", self.host, self.port, len(self.devices))
        if self._mdns_wanted:
            try:
                self._start_mdns(listener)
            except BaseException:
                self.stop()
                raise
        return self

    def _start_mdns(self, listener: socket.socket) -> None:
        from .mdns import MdnsAdvertiser

        bound: str = listener.getsockname()[0]
        if bound in ("0.0.0.0", "::"):
            # Listening everywhere: the addresses to reach it are those of the mDNS interfaces.
            addresses = [a for a in self.mdns_interfaces if _is_ip(a)] or ["127.0.0.1"]
        else:
            addresses = [bound]
        advertiser = MdnsAdvertiser(self.port, addresses, self.mdns_properties,
                                    interfaces=self.mdns_interfaces, name=self.mdns_name,
                                    service_type=self.mdns_type)
        advertiser.start()
        self.mdns = advertiser
        advertiser.changed()  # a client may have imported while it registered

    def _accept_loop(self) -> None:
        listener = self._listener
        assert listener is not None
        while not self._stopping.is_set():
            try:
                sock, peer = listener.accept()
            except OSError:
                if self._stopping.is_set():
                    return
                continue
            if self._stopping.is_set():
                sock.close()
                return
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            conn = _Connection(self, sock, peer)
            with self._lock:
                self._conns.add(conn)
            conn.thread.start()

    def stop(self) -> None:
        """Withdraw the mDNS advertisement, close every connection and the listener; join every
        thread."""
        if self._listener is None:
            return
        advertiser, self.mdns = self.mdns, None
        if advertiser is not None:
            advertiser.stop()  # first: nobody should find a server that is going away
        self._stopping.set()
        listener = self._listener
        try:
            listener.shutdown(socket.SHUT_RDWR)  # wakes accept() on Linux
        except OSError:
            pass
        if self._accept_thread is not None and self._accept_thread.is_alive():
            try:  # elsewhere accept() may need a connection to wake up
                with socket.create_connection((self.host, self.port), timeout=1.0):
                    pass
            except OSError:
                pass
            self._accept_thread.join(timeout=5.0)
        listener.close()
        with self._lock:
            conns = list(self._conns)
        for conn in conns:
            try:
                conn.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for conn in conns:
            conn.thread.join(timeout=5.0)
        self._listener = None
        self._accept_thread = None
        log.info("virtual USB/IP server on port %d stopped", self.port)

    def __enter__(self) -> "SimServer":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
