"""USBTransfer and USBTransferHelper: python-libusb1's asynchronous transfers on the URB engine.

A transfer is set up (``setBulk`` ...), submitted (one engine URB, whose done callback queues it on
its context), and handed back to the user only inside ``USBContext.handleEvents*()``, on the thread
that calls it, as libusb does: a callback may resubmit, run a synchronous transfer or close its
transfer, and never runs on the engine's reader thread. Transfers on one endpoint of one handle
are handed back in the order they were submitted.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Deque, Dict, Iterator, List, Optional, Tuple, Union

from .. import protocol as P
from ..device import seconds
from ..engine import ESHUTDOWN, Urb, flat
from . import _constants as C
from ._errors import DoomedTransferError, USBErrorNotFound, transfer_status, transfer_status_of

if TYPE_CHECKING:  # pragma: no cover
    from ._context import USBDeviceHandle

#: A transfer callback: called with the transfer, return value ignored.
TransferCallback = Callable[["USBTransfer"], Any]
BufferOrLength = Union[int, bytes, bytearray, memoryview, Any]


def _buffer(buffer_or_len: BufferOrLength, writable: bool) -> Tuple[memoryview, Any]:
    """(a flat byte view, the object it keeps alive) for a length or a buffer.

    A writable buffer is used as it is (no copy: the reply lands in it); a read-only one is copied
    only when it must receive data.
    """
    if isinstance(buffer_or_len, int):
        if buffer_or_len < 0:
            raise ValueError(f"a buffer length cannot be negative ({buffer_or_len})")
        owner: Any = bytearray(buffer_or_len)
        return memoryview(owner), owner
    view = flat(buffer_or_len)
    if writable and view.readonly:
        owner = bytearray(view)
        return memoryview(owner), owner
    return view, buffer_or_len


class USBTransfer:
    """One asynchronous transfer, reusable after it completed (python-libusb1's ``USBTransfer``).

    Get one with :meth:`USBDeviceHandle.getTransfer`. Modifying or submitting a submitted
    transfer raises ValueError; a doomed one, DoomedTransferError; an isochronous setter on a
    transfer made with ``iso_packets=0``, TypeError.
    """

    def __init__(self, handle: "USBDeviceHandle", iso_packets: int = 0, short_is_error: bool = False,
                 add_zero_packet: bool = False) -> None:
        if iso_packets < 0:
            raise ValueError("Cannot request a negative number of iso packets.")
        self._handle: Optional["USBDeviceHandle"] = handle
        self._num_iso = iso_packets
        self._short_is_error = bool(short_is_error)
        self._add_zero_packet = bool(add_zero_packet)
        self._type: Optional[int] = None
        self._endpoint = 0
        self._view: Optional[memoryview] = None  # the whole buffer (control: setup + data)
        self._owner: Any = None
        self._setup: Optional[bytes] = None
        self._timeout = 0
        self._callback: Optional[TransferCallback] = None
        self._user_data: Any = None
        self._iso_lengths: List[int] = []
        self._doomed = False
        self._submitted = False
        self._completed = False  # its URB ended; handed back by handleEvents, in order
        self._urb: Optional[Urb] = None
        self._urb_args: Optional[Dict[str, Any]] = None  # the _args _urb was made from
        self._status = C.TRANSFER_COMPLETED
        self._actual = 0
        self._iso_results: List[Tuple[int, int, int]] = []  # (length, actual_length, status)
        self._queue: Optional[Deque["USBTransfer"]] = None  # its endpoint's submission order
        self._args: Optional[Dict[str, Any]] = None  # engine submit() arguments (made at submit)

    def __repr__(self) -> str:
        kind = {C.TRANSFER_TYPE_CONTROL: "control", C.TRANSFER_TYPE_BULK: "bulk",
                C.TRANSFER_TYPE_INTERRUPT: "interrupt", C.TRANSFER_TYPE_ISOCHRONOUS: "iso"}.get(
                    self._type if self._type is not None else -1, "unset")
        state = "submitted" if self._submitted else f"status {self._status}"
        return f"<USBTransfer {kind} ep=0x{self._endpoint:02x} {state}>"

    # -- lifetime -----------------------------------------------------------------------------------
    def close(self) -> None:
        """Forget the buffer, callback and user data (raises if submitted)."""
        if self._submitted:
            raise ValueError("Cannot close a submitted transfer")
        self.doom()
        self._type = None
        self._callback = None
        self._user_data = None
        self._view = self._owner = None
        self._urb = None
        self._args = None
        self._handle = None

    def doom(self) -> None:
        """Prevent the transfer from being submitted again (it is closed after its callback)."""
        self._doomed = True

    def setCallback(self, callback: Optional[TransferCallback]) -> None:
        self._callback = callback

    def getCallback(self) -> Optional[TransferCallback]:
        return self._callback

    # -- setup --------------------------------------------------------------------------------------
    def _check_modifiable(self) -> None:
        if self._submitted:
            raise ValueError("Cannot alter a submitted transfer")
        if self._doomed:
            raise DoomedTransferError("Cannot reuse a doomed transfer")

    def setControl(self, request_type: int, request: int, value: int, index: int, buffer_or_len: BufferOrLength,
                   callback: Optional[TransferCallback] = None, user_data: Any = None, timeout: int = 0) -> None:
        """A control transfer; ``buffer_or_len``: the data to send, or the length to receive
        (the direction comes from ``request_type``). :meth:`getBuffer` hides the setup packet."""
        self._check_modifiable()
        data, owner = _buffer(buffer_or_len, bool(request_type & C.ENDPOINT_IN))
        if data.nbytes > 0xFFFF:
            raise ValueError(f"a control transfer carries at most 65535 bytes, not {data.nbytes}")
        self._setup = P.pack_setup(request_type, request, value, index, data.nbytes)
        self._set(C.TRANSFER_TYPE_CONTROL, 0x80 if request_type & C.ENDPOINT_IN else 0x00, data, owner,
                  callback, user_data, timeout)

    def setBulk(self, endpoint: int, buffer_or_len: BufferOrLength, callback: Optional[TransferCallback] = None,
                user_data: Any = None, timeout: int = 0) -> None:
        """A bulk transfer (direction from ``endpoint``); a writable buffer is used in place."""
        self._check_modifiable()
        data, owner = _buffer(buffer_or_len, bool(endpoint & C.ENDPOINT_IN))
        self._set(C.TRANSFER_TYPE_BULK, endpoint, data, owner, callback, user_data, timeout)

    def setInterrupt(self, endpoint: int, buffer_or_len: BufferOrLength,
                     callback: Optional[TransferCallback] = None, user_data: Any = None,
                     timeout: int = 0) -> None:
        """An interrupt transfer (direction from ``endpoint``); a writable buffer is used in place."""
        self._check_modifiable()
        data, owner = _buffer(buffer_or_len, bool(endpoint & C.ENDPOINT_IN))
        self._set(C.TRANSFER_TYPE_INTERRUPT, endpoint, data, owner, callback, user_data, timeout)

    def setIsochronous(self, endpoint: int, buffer_or_len: BufferOrLength,
                       callback: Optional[TransferCallback] = None, user_data: Any = None, timeout: int = 0,
                       iso_transfer_length_list: Optional[List[int]] = None) -> None:
        """An isochronous transfer of ``iso_transfer_length_list`` packets (None: the buffer split
        evenly over the transfer's iso_packets, ValueError if it does not divide)."""
        if self._submitted:
            raise ValueError("Cannot alter a submitted transfer")
        if self._num_iso == 0:
            raise TypeError("This transfer canot be used for isochronous I/O. You must get another one "
                            "with a non-zero iso_packets parameter.")
        if self._doomed:
            raise DoomedTransferError("Cannot reuse a doomed transfer")
        data, owner = _buffer(buffer_or_len, bool(endpoint & C.ENDPOINT_IN))
        size = data.nbytes
        if iso_transfer_length_list is None:
            each, remainder = divmod(size, self._num_iso)
            if remainder:
                raise ValueError(f"Buffer size {size} cannot be evenly distributed among "
                                 f"{self._num_iso} transfers")
            lengths = [each] * self._num_iso
        else:
            lengths = list(iso_transfer_length_list)
        if len(lengths) > self._num_iso:
            raise ValueError(f"Too many ISO transfer lengths ({len(lengths)}), there are only "
                             f"{self._num_iso} ISO transfers available")
        if sum(lengths) > size:
            raise ValueError(f"ISO transfers too long ({sum(lengths)}), there are only {size} bytes available")
        if any(n <= 0 for n in lengths):
            raise ValueError("Negative/null length transfers are not possible.")
        self._iso_lengths = lengths
        self._iso_results = [(n, 0, 0) for n in lengths]
        self._set(C.TRANSFER_TYPE_ISOCHRONOUS, endpoint, data, owner, callback, user_data, timeout)

    def _set(self, kind: int, endpoint: int, data: memoryview, owner: Any,
             callback: Optional[TransferCallback], user_data: Any, timeout: int) -> None:
        self._args = None
        if endpoint != self._endpoint:
            self._queue = None
        self._type = kind
        self._endpoint = endpoint
        self._view = data
        self._owner = owner
        self._callback = callback
        self._user_data = user_data
        self._timeout = timeout
        self._status = C.TRANSFER_COMPLETED
        self._actual = 0

    def setBuffer(self, buffer_or_len: BufferOrLength) -> None:
        """Replace the buffer (not for control transfers; same length for isochronous ones)."""
        if self._submitted:
            raise ValueError("Cannot alter a submitted transfer")
        if self._type == C.TRANSFER_TYPE_CONTROL:
            raise ValueError("To alter control transfer buffer, use setControl")
        data, owner = _buffer(buffer_or_len, bool(self._endpoint & C.ENDPOINT_IN))
        if self._type == C.TRANSFER_TYPE_ISOCHRONOUS and (self._view is None or data.nbytes != self._view.nbytes):
            raise ValueError("To alter isochronous transfer buffer length, use setIsochronous")
        self._view, self._owner = data, owner
        self._args = None

    def setUserData(self, user_data: Any) -> None:
        self._user_data = user_data

    def getUserData(self) -> Any:
        return self._user_data

    def isShortAnError(self) -> bool:
        return self._short_is_error

    def setShortIsError(self, state: bool) -> None:
        """Sends URB_SHORT_NOT_OK: a short IN transfer then ends in error (the kernel's stub
        honours it for non-isochronous IN only)."""
        self._short_is_error = bool(state)
        self._args = None

    def isZeroPacketAdded(self) -> bool:
        return self._add_zero_packet

    def setAddZeroPacket(self, state: bool) -> None:
        """Sends URB_ZERO_PACKET: a bulk OUT of a multiple of the packet size is followed by a
        zero-length packet (the kernel's stub honours it for bulk OUT only)."""
        self._add_zero_packet = bool(state)
        self._args = None

    # -- what it is and how it ended ----------------------------------------------------------------
    def getType(self) -> Optional[int]:
        """TRANSFER_TYPE_CONTROL, _ISOCHRONOUS, _BULK or _INTERRUPT (None before any setup)."""
        return self._type

    def getEndpoint(self) -> int:
        return self._endpoint

    def getStatus(self) -> int:
        """TRANSFER_COMPLETED .. TRANSFER_OVERFLOW (unspecified while submitted)."""
        return self._status

    def getActualLength(self) -> int:
        return self._actual

    def getBuffer(self) -> Optional[memoryview]:
        """The transfer's buffer (a control transfer's data, without its setup packet)."""
        return self._view

    def _require_iso(self) -> None:
        if self._type != C.TRANSFER_TYPE_ISOCHRONOUS:
            raise TypeError("This method cannot be called on non-iso transfers.")

    def getISOBufferList(self) -> List[memoryview]:
        """One view per ISO packet, each of its configured length."""
        self._require_iso()
        assert self._view is not None
        out, offset = [], 0
        for n in self._iso_lengths:
            out.append(self._view[offset:offset + n])
            offset += n
        return out

    def getISOSetupList(self) -> List[Dict[str, int]]:
        """One dict (length, actual_length, status) per ISO packet."""
        self._require_iso()
        return [{"length": n, "actual_length": a, "status": s} for n, a, s in self._iso_results]

    def iterISO(self) -> Iterator[Tuple[int, memoryview]]:
        """(status, data) per ISO packet, the data cut to its actual length."""
        self._require_iso()
        assert self._view is not None
        offset = 0
        for n, actual, status in self._iso_results:
            yield status, self._view[offset:offset + actual]
            offset += n

    # -- submission ---------------------------------------------------------------------------------
    def isSubmitted(self) -> bool:
        """True from submit() until the callback has been called from handleEvents*()."""
        return self._submitted

    def submit(self) -> None:
        """Submit the transfer; its callback is called from a later handleEvents*()."""
        if self._submitted:
            raise ValueError("Cannot submit a submitted transfer")
        if self._type is None or self._view is None or self._handle is None:
            raise ValueError("Cannot submit a transfer until it has been initialized")
        if self._doomed:
            raise DoomedTransferError("Cannot submit doomed transfer")
        self._handle._submit(self)

    def cancel(self) -> None:
        """Ask for the transfer to be cancelled (CMD_UNLINK); its callback then sees
        TRANSFER_CANCELLED, or the data if the transfer completed first. Returns at once.

        Raises:
            USBErrorNotFound: it is not submitted.
        """
        urb = self._urb
        if not self._submitted or urb is None:
            raise USBErrorNotFound()
        urb.cancel()

    # -- what the handle and context do with it -------------------------------------------------------
    def _engine_args(self, interval: int) -> Dict[str, Any]:
        """The engine submit() arguments for the transfer as set up."""
        assert self._type is not None and self._view is not None
        kind = self._type
        ep = self._endpoint
        flags = 0
        is_in = bool(ep & C.ENDPOINT_IN)
        if self._short_is_error and is_in and kind != C.TRANSFER_TYPE_ISOCHRONOUS:
            flags |= P.USBIP_URB_SHORT_NOT_OK
        if self._add_zero_packet and not is_in and kind == C.TRANSFER_TYPE_BULK:
            flags |= P.USBIP_URB_ZERO_PACKET
        view = self._view
        args: Dict[str, Any] = {"transfer_flags": flags,
                                "timeout": seconds(self._timeout)}
        if kind == C.TRANSFER_TYPE_CONTROL:
            args["setup"] = self._setup
        if kind == C.TRANSFER_TYPE_ISOCHRONOUS:
            view = view[:sum(self._iso_lengths)]
            args["iso_packet_lengths"] = self._iso_lengths
        if kind in (C.TRANSFER_TYPE_INTERRUPT, C.TRANSFER_TYPE_ISOCHRONOUS):
            args["interval"] = interval
        if is_in:
            args["buffer"] = view
        else:
            args["data"] = view
        return args

    def _finish(self) -> None:
        """Take the ended URB's result (handleEvents' thread, before the callback)."""
        urb = self._urb
        assert urb is not None
        status = urb.status if urb.status is not None else ESHUTDOWN
        error = urb._error
        if error is not None:
            self._status = transfer_status_of(error)
        elif status == 0:
            self._status = C.TRANSFER_COMPLETED  # (the common case, as transfer_status says)
        else:
            self._status = transfer_status(status, int(urb._ended_by), short_not_ok=self._short_is_error)
        self._actual = urb.actual_length
        if self._type == C.TRANSFER_TYPE_ISOCHRONOUS:
            results = urb.iso_results or []
            self._iso_results = [
                (n, r.actual_length, transfer_status(r.status, 0))
                for n, r in zip(self._iso_lengths, results)
            ] + [(n, 0, C.TRANSFER_ERROR) for n in self._iso_lengths[len(results):]]
            if urb.status == -18 and any(r.actual_length for r in results):
                # -EXDEV: some packets failed; libusb reports the transfer COMPLETED with the
                # packets' own statuses telling which.
                self._status = C.TRANSFER_COMPLETED
            if self._endpoint & C.ENDPOINT_IN:
                self._actual = sum(a for _, a, _ in self._iso_results)


class USBTransferHelper:
    """One callback per transfer status; a callback returning True resubmits the transfer
    (python-libusb1's ``USBTransferHelper``)."""

    def __init__(self, transfer: Optional[USBTransfer] = None) -> None:
        self._transfer = transfer
        if transfer is not None:
            transfer.setCallback(self)
        self._callbacks: Dict[int, Callable[[USBTransfer], Any]] = {}
        self._default: Callable[[USBTransfer], Any] = lambda _transfer: False

    def _given(self) -> USBTransfer:
        if self._transfer is None:
            raise AttributeError("no transfer given at construction")
        return self._transfer

    def submit(self) -> None:
        """Deprecated (python-libusb1 keeps it): submit the transfer given at construction."""
        self._given().submit()

    def cancel(self) -> None:
        """Deprecated (python-libusb1 keeps it): cancel the transfer given at construction."""
        self._given().cancel()

    def isSubmited(self) -> bool:
        """Deprecated spelling kept by python-libusb1."""
        return self._given().isSubmitted()

    def setEventCallback(self, event: int, callback: Callable[[USBTransfer], Any]) -> None:
        if event not in C.EVENT_CALLBACK_SET:
            raise ValueError(f"Unknown event {event!r}.")
        self._callbacks[event] = callback

    def setDefaultCallback(self, callback: Callable[[USBTransfer], Any]) -> None:
        """What runs for a status without its own callback (initially: nothing, no resubmit)."""
        self._default = callback

    def getEventCallback(self, event: int, default: Any = None) -> Any:
        return self._callbacks.get(event, default)

    def __call__(self, transfer: USBTransfer) -> None:
        if self._callbacks.get(transfer.getStatus(), self._default)(transfer):
            try:
                transfer.submit()
            except DoomedTransferError:
                pass


__all__ = ["USBTransfer", "USBTransferHelper"]
