"""usbip_backend.usb1's constants and exceptions: python-libusb1's names and values, and how the
engine's URB outcomes become libusb transfer statuses and USBErrors."""

from __future__ import annotations

import pickle
import re

import pytest

from usbip_backend import protocol as P
from usbip_backend.client import import_device
from usbip_backend.engine import EndedBy
from usbip_backend.errors import (
    ConnectionLostError, ImportRefusedError, NotFoundError, ProtocolError, UrbCancelledError,
    UrbError, UsbipError, UsbipTimeoutError,
)
from usbip_backend.usb1 import _constants as C
from usbip_backend.usb1 import _errors as E
from scripted import ScriptedServer, read_cmd, ret_submit, ret_unlink

BULK = P.TransferType.BULK

# -- constants ------------------------------------------------------------------------------------

# Values from libusb.h, written out independently of _constants.py.
LIBUSB_H_VALUES = {
    "TRANSFER_COMPLETED": 0, "TRANSFER_ERROR": 1, "TRANSFER_TIMED_OUT": 2,
    "TRANSFER_CANCELLED": 3, "TRANSFER_STALL": 4, "TRANSFER_NO_DEVICE": 5, "TRANSFER_OVERFLOW": 6,
    "TRANSFER_SHORT_NOT_OK": 1, "TRANSFER_FREE_BUFFER": 2, "TRANSFER_FREE_TRANSFER": 4,
    "TRANSFER_ADD_ZERO_PACKET": 8,
    "TRANSFER_TYPE_CONTROL": 0, "TRANSFER_TYPE_ISOCHRONOUS": 1, "TRANSFER_TYPE_BULK": 2,
    "TRANSFER_TYPE_INTERRUPT": 3, "TRANSFER_TYPE_MASK": 3,
    "ENDPOINT_IN": 0x80, "ENDPOINT_OUT": 0x00, "ENDPOINT_DIR_MASK": 0x80,
    "ENDPOINT_ADDRESS_MASK": 0x0F,
    "TYPE_STANDARD": 0x00, "TYPE_CLASS": 0x20, "TYPE_VENDOR": 0x40, "TYPE_RESERVED": 0x60,
    "REQUEST_TYPE_VENDOR": 0x40,
    "RECIPIENT_DEVICE": 0, "RECIPIENT_INTERFACE": 1, "RECIPIENT_ENDPOINT": 2, "RECIPIENT_OTHER": 3,
    "REQUEST_GET_STATUS": 0, "REQUEST_CLEAR_FEATURE": 1, "REQUEST_SET_FEATURE": 3,
    "REQUEST_SET_ADDRESS": 5, "REQUEST_GET_DESCRIPTOR": 6, "REQUEST_SET_CONFIGURATION": 9,
    "REQUEST_SET_INTERFACE": 11, "REQUEST_SYNCH_FRAME": 12,
    "SPEED_UNKNOWN": 0, "SPEED_LOW": 1, "SPEED_FULL": 2, "SPEED_HIGH": 3, "SPEED_SUPER": 4,
    "SPEED_SUPER_PLUS": 5,
    "SUCCESS": 0, "ERROR_IO": -1, "ERROR_INVALID_PARAM": -2, "ERROR_ACCESS": -3,
    "ERROR_NO_DEVICE": -4, "ERROR_NOT_FOUND": -5, "ERROR_BUSY": -6, "ERROR_TIMEOUT": -7,
    "ERROR_OVERFLOW": -8, "ERROR_PIPE": -9, "ERROR_INTERRUPTED": -10, "ERROR_NO_MEM": -11,
    "ERROR_NOT_SUPPORTED": -12, "ERROR_OTHER": -99,
    "DT_DEVICE": 1, "DT_CONFIG": 2, "DT_STRING": 3, "DT_INTERFACE": 4, "DT_ENDPOINT": 5,
    "DT_HID": 0x21, "DT_REPORT": 0x22, "DT_HUB": 0x29,
    "DT_DEVICE_SIZE": 18, "DT_CONFIG_SIZE": 9, "DT_INTERFACE_SIZE": 9, "DT_ENDPOINT_SIZE": 7,
    "DT_ENDPOINT_AUDIO_SIZE": 9, "DT_BOS_MAX_SIZE": 42,
    "CLASS_PER_INTERFACE": 0, "CLASS_HID": 3, "CLASS_MASS_STORAGE": 8, "CLASS_HUB": 9,
    "CLASS_IMAGE": 6, "CLASS_VENDOR_SPEC": 0xFF,
    "ISO_SYNC_TYPE_MASK": 0x0C, "ISO_SYNC_TYPE_ADAPTIVE": 2, "ISO_USAGE_TYPE_MASK": 0x30,
    "ISO_USAGE_TYPE_IMPLICIT": 2,
    "CONTROL_SETUP_SIZE": 8,
    "SUPER_SPEED_OPERATION": 8,
    "CAP_HAS_HOTPLUG": 1, "CAP_SUPPORTS_DETACH_KERNEL_DRIVER": 0x0101,
    "LOG_LEVEL_NONE": 0, "LOG_LEVEL_DEBUG": 4,
    "HOTPLUG_EVENT_DEVICE_ARRIVED": 1, "HOTPLUG_EVENT_DEVICE_LEFT": 2, "HOTPLUG_MATCH_ANY": -1,
}


@pytest.mark.parametrize("name,value", sorted(LIBUSB_H_VALUES.items()))
def test_constant_has_libusb_value(name, value):
    assert getattr(C, name) == value
    assert type(getattr(C, name)) is int


def test_all_lists_every_public_name_once_and_each_is_an_int():
    assert len(C.__all__) == len(set(C.__all__))
    public = {name for name in vars(C) if name.isupper() and not name.startswith("_")}
    assert set(C.__all__) == public
    assert all(type(getattr(C, name)) is int for name in C.__all__ if name != "EVENT_CALLBACK_SET")


def test_names_are_python_libusb1s_without_the_libusb_prefix():
    # 5GBPS_OPERATION is no identifier; python-libusb1 spells it SUPER_SPEED_OPERATION.
    assert "SUPER_SPEED_OPERATION" in C.__all__
    assert not any(name.startswith(("LIBUSB_", "5")) for name in C.__all__)
    assert C.TYPE_VENDOR == C.REQUEST_TYPE_VENDOR and C.CLASS_IMAGE == C.CLASS_PTP


def test_request_type_bits_compose_a_bmrequesttype():
    assert C.ENDPOINT_IN | C.TYPE_VENDOR | C.RECIPIENT_INTERFACE == 0xC1
    assert C.ENDPOINT_OUT | C.TYPE_CLASS | C.RECIPIENT_ENDPOINT == 0x22
    assert 0x81 & C.ENDPOINT_DIR_MASK == C.ENDPOINT_IN and 0x81 & C.ENDPOINT_ADDRESS_MASK == 1


def test_event_callback_set_is_the_seven_transfer_statuses():
    assert isinstance(C.EVENT_CALLBACK_SET, frozenset)
    assert C.EVENT_CALLBACK_SET == frozenset(range(7))
    assert C.EVENT_CALLBACK_SET == {
        C.TRANSFER_COMPLETED, C.TRANSFER_ERROR, C.TRANSFER_TIMED_OUT, C.TRANSFER_CANCELLED,
        C.TRANSFER_STALL, C.TRANSFER_NO_DEVICE, C.TRANSFER_OVERFLOW,
    }
    assert "EVENT_CALLBACK_SET" in C.__all__


# -- USBError hierarchy ---------------------------------------------------------------------------

# (class, value, libusb error name, libusb_strerror English text)
ERRORS = [
    (E.USBErrorIO, -1, "LIBUSB_ERROR_IO", "Input/Output Error"),
    (E.USBErrorInvalidParam, -2, "LIBUSB_ERROR_INVALID_PARAM", "Invalid parameter"),
    (E.USBErrorAccess, -3, "LIBUSB_ERROR_ACCESS", "Access denied (insufficient permissions)"),
    (E.USBErrorNoDevice, -4, "LIBUSB_ERROR_NO_DEVICE",
     "No such device (it may have been disconnected)"),
    (E.USBErrorNotFound, -5, "LIBUSB_ERROR_NOT_FOUND", "Entity not found"),
    (E.USBErrorBusy, -6, "LIBUSB_ERROR_BUSY", "Resource busy"),
    (E.USBErrorTimeout, -7, "LIBUSB_ERROR_TIMEOUT", "Operation timed out"),
    (E.USBErrorOverflow, -8, "LIBUSB_ERROR_OVERFLOW", "Overflow"),
    (E.USBErrorPipe, -9, "LIBUSB_ERROR_PIPE", "Pipe error"),
    (E.USBErrorInterrupted, -10, "LIBUSB_ERROR_INTERRUPTED",
     "System call interrupted (perhaps due to signal)"),
    (E.USBErrorNoMem, -11, "LIBUSB_ERROR_NO_MEM", "Insufficient memory"),
    (E.USBErrorNotSupported, -12, "LIBUSB_ERROR_NOT_SUPPORTED",
     "Operation not supported or unimplemented on this platform"),
    (E.USBErrorOther, -99, "LIBUSB_ERROR_OTHER", "Other error"),
]


@pytest.mark.parametrize("cls,value,name,message", ERRORS, ids=[e[0].__name__ for e in ERRORS])
def test_error_class(cls, value, name, message):
    err = cls()
    assert isinstance(err, E.USBError) and isinstance(err, Exception)
    assert cls.value == err.value == value == getattr(C, name[len("LIBUSB_"):])
    assert str(err) == f"{name} [{value}]"
    assert err.getMessage() == message
    assert err.transferred == 0 and err.received is None and err.detail is None
    assert E.STATUS_TO_EXCEPTION_DICT[value] is cls
    with pytest.raises(cls) as info:
        E.raiseUSBError(value)
    assert info.value.value == value


def test_class_names_follow_python_libusb1s_rule():
    # python-libusb1 names LIBUSB_ERROR_NO_DEVICE's class USBErrorNoDevice (IO is kept upper case).
    for name in C.__all__:
        if name.startswith("ERROR_"):
            expected = "USBErrorIO" if name == "ERROR_IO" else "USBError" + "".join(
                part.capitalize() for part in name.split("_")[1:])
            assert E.STATUS_TO_EXCEPTION_DICT[getattr(C, name)].__name__ == expected
    assert len(E.STATUS_TO_EXCEPTION_DICT) == 13


def test_base_error_without_a_value():
    err = E.USBError()
    assert err.value is None
    assert str(err) == "Unknown error [None]"
    assert err.getMessage() == "Other error"
    assert err.args == ()


def test_base_error_with_an_unknown_code():
    with pytest.raises(E.USBError) as info:
        E.raiseUSBError(-42)
    assert type(info.value) is E.USBError and info.value.value == -42
    assert str(info.value) == "Unknown error [-42]"
    assert info.value.getMessage() == "Other error"  # as libusb_strerror() answers


def test_a_value_given_to_a_subclass_wins():
    err = E.USBErrorIO(-7)
    assert err.value == -7 and str(err) == "LIBUSB_ERROR_TIMEOUT [-7]"
    assert E.USBErrorIO.value == -1  # the class attribute is untouched


def test_success_is_named_but_not_an_exception_class():
    assert str(E.USBError(0)) == "LIBUSB_SUCCESS [0]"
    assert E.USBError(0).getMessage() == "Success"
    assert 0 not in E.STATUS_TO_EXCEPTION_DICT


@pytest.mark.parametrize("value", [0, 1, 18, 4096])
def test_may_raise_returns_non_negative_values(value):
    assert E.mayRaiseUSBError(value) == value


@pytest.mark.parametrize("value,cls", [(-1, E.USBErrorIO), (-7, E.USBErrorTimeout),
                                       (-99, E.USBErrorOther), (-1000, E.USBError)])
def test_may_raise_raises_for_negative_values(value, cls):
    with pytest.raises(cls) as info:
        E.mayRaiseUSBError(value)
    assert type(info.value) is cls and info.value.value == value


def test_extra_attributes_and_detail_in_str():
    err = E.USBErrorTimeout(transferred=5, received=b"hello", detail="URB 5 timed out")
    assert err.transferred == 5 and bytes(err.received) == b"hello"
    assert str(err) == "LIBUSB_ERROR_TIMEOUT [-7]: URB 5 timed out"
    # The libusb text stays first, so code matching python-libusb1's format still matches.
    assert re.match(r"^LIBUSB_ERROR_TIMEOUT \[-7\]", str(err))


def test_error_survives_pickling():
    err = E.USBErrorPipe(transferred=3, detail="stalled")
    copy = pickle.loads(pickle.dumps(err))
    assert type(copy) is E.USBErrorPipe
    assert (copy.value, copy.transferred, copy.detail, str(copy)) == (
        -9, 3, "stalled", "LIBUSB_ERROR_PIPE [-9]: stalled")
    base = pickle.loads(pickle.dumps(E.USBError(-42)))
    assert base.value == -42


def test_doomed_transfer_error_is_not_a_usb_error():
    err = E.DoomedTransferError("Cannot reuse a doomed transfer")
    assert isinstance(err, Exception) and not isinstance(err, E.USBError)
    assert str(err) == "Cannot reuse a doomed transfer"


# -- transfer_status ------------------------------------------------------------------------------

REPLY, TIMEOUT, CANCEL = 0, 1, 2


@pytest.mark.parametrize("ended_by", [REPLY, TIMEOUT, CANCEL])
def test_status_zero_is_completed_whoever_ended_it(ended_by):
    # The data won the race against the unlink: nothing was lost.
    assert E.transfer_status(0, ended_by) == C.TRANSFER_COMPLETED
    assert E.transfer_status(0, ended_by, short_not_ok=True) == C.TRANSFER_COMPLETED


def test_short_packet_is_completed_unless_short_not_ok():
    assert E.transfer_status(-121, REPLY) == C.TRANSFER_COMPLETED
    assert E.transfer_status(-121, REPLY, short_not_ok=True) == C.TRANSFER_ERROR
    assert E.transfer_status(-121, REPLY, True) == C.TRANSFER_ERROR


@pytest.mark.parametrize("status", [-104, -2, -32, -19, -71, -110])
def test_our_timeout_makes_timed_out(status):
    assert E.transfer_status(status, TIMEOUT) == C.TRANSFER_TIMED_OUT


@pytest.mark.parametrize("status", [-104, -2, -32, -108, -71])
def test_a_cancel_makes_cancelled(status):
    assert E.transfer_status(status, CANCEL) == C.TRANSFER_CANCELLED


@pytest.mark.parametrize("status,expected", [
    (-2, C.TRANSFER_CANCELLED),  # -ENOENT
    (-104, C.TRANSFER_CANCELLED),  # -ECONNRESET
    (-19, C.TRANSFER_NO_DEVICE),  # -ENODEV
    (-108, C.TRANSFER_NO_DEVICE),  # -ESHUTDOWN
    (-32, C.TRANSFER_STALL),  # -EPIPE
    (-75, C.TRANSFER_OVERFLOW),  # -EOVERFLOW
    (-110, C.TRANSFER_TIMED_OUT),  # -ETIMEDOUT from the server
    (-71, C.TRANSFER_ERROR),  # -EPROTO
    (-84, C.TRANSFER_ERROR),  # -EILSEQ
    (-62, C.TRANSFER_ERROR),  # -ETIME
    (-5, C.TRANSFER_ERROR),  # -EIO
    (-18, C.TRANSFER_ERROR),  # -EXDEV
    (-1000, C.TRANSFER_ERROR),
])
def test_server_status_mapping(status, expected):
    assert E.transfer_status(status, REPLY) == expected


def test_engine_ended_by_enum_is_accepted():
    assert E.transfer_status(-104, EndedBy.CANCEL) == C.TRANSFER_CANCELLED
    assert E.transfer_status(-104, EndedBy.TIMEOUT) == C.TRANSFER_TIMED_OUT
    assert E.transfer_status(-32, EndedBy.REPLY) == C.TRANSFER_STALL
    assert (E.ENDED_BY_REPLY, E.ENDED_BY_TIMEOUT, E.ENDED_BY_CANCEL) == tuple(EndedBy)


def test_unknown_ended_by_is_refused():
    with pytest.raises(ValueError, match="ended_by"):
        E.transfer_status(-32, 3)


@pytest.mark.parametrize("exc,expected", [
    (ConnectionLostError("1-1@127.0.0.1:3240: connection lost (EOF)"), C.TRANSFER_NO_DEVICE),
    (UsbipTimeoutError("URB 5 timed out", transferred=2), C.TRANSFER_TIMED_OUT),
    (UrbCancelledError("URB 5 was cancelled"), C.TRANSFER_CANCELLED),
    (UrbError("stall", status=-32), C.TRANSFER_STALL),
    (UrbError("gone", status=-108), C.TRANSFER_NO_DEVICE),
    (UrbError("babble", status=-75), C.TRANSFER_OVERFLOW),
    (UrbError("crc", status=-84), C.TRANSFER_ERROR),
    (UrbError("short", status=-121), C.TRANSFER_COMPLETED),
    (ProtocolError("bad header"), C.TRANSFER_ERROR),
    (NotFoundError("no endpoint 0x83"), C.TRANSFER_ERROR),
    (BrokenPipeError(32, "Broken pipe"), C.TRANSFER_NO_DEVICE),
    (TimeoutError("socket"), C.TRANSFER_TIMED_OUT),
    (E.USBErrorNoDevice(), C.TRANSFER_NO_DEVICE),
    (E.USBErrorPipe(), C.TRANSFER_STALL),
    (E.USBErrorTimeout(), C.TRANSFER_TIMED_OUT),
    (E.USBErrorOverflow(), C.TRANSFER_OVERFLOW),
    (E.USBErrorInterrupted(), C.TRANSFER_CANCELLED),
    (E.USBErrorIO(), C.TRANSFER_ERROR),
    (E.USBError(), C.TRANSFER_ERROR),
    (ValueError("bug"), C.TRANSFER_ERROR),
], ids=lambda v: type(v).__name__ if isinstance(v, BaseException) else str(v))
def test_transfer_status_of(exc, expected):
    assert E.transfer_status_of(exc) == expected


def test_transfer_status_of_short_urb_error_with_short_not_ok():
    assert E.transfer_status_of(UrbError("short", status=-121), short_not_ok=True) == \
        C.TRANSFER_ERROR


# -- usb_error ------------------------------------------------------------------------------------

@pytest.mark.parametrize("exc,cls", [
    (UsbipTimeoutError("t"), E.USBErrorTimeout),
    (UrbCancelledError("c"), E.USBErrorInterrupted),
    (ConnectionLostError("l"), E.USBErrorNoDevice),
    (NotFoundError("n"), E.USBErrorNotFound),
    (UrbError("u", status=-32), E.USBErrorPipe),
    (UrbError("u", status=-75), E.USBErrorOverflow),
    (UrbError("u", status=-19), E.USBErrorNoDevice),
    (UrbError("u", status=-108), E.USBErrorNoDevice),
    (UrbError("u", status=-110), E.USBErrorTimeout),
    (UrbError("u", status=-22), E.USBErrorInvalidParam),
    (UrbError("u", status=-12), E.USBErrorNoMem),
    (UrbError("u", status=-16), E.USBErrorBusy),
    (UrbError("u", status=-95), E.USBErrorNotSupported),
    (UrbError("u", status=-71), E.USBErrorIO),
    (UrbError("u", status=-104), E.USBErrorIO),
    (UrbError("u", status=-121), E.USBErrorIO),
    (ProtocolError("p"), E.USBErrorIO),
    (ImportRefusedError("r", busid="1-1", status=1), E.USBErrorIO),
    (UsbipError("other"), E.USBErrorIO),
    (BrokenPipeError(32, "Broken pipe"), E.USBErrorNoDevice),
    (TimeoutError("socket"), E.USBErrorTimeout),
    (MemoryError(), E.USBErrorNoMem),
    (ValueError("bug"), E.USBErrorOther),
], ids=lambda v: f"{type(v).__name__}{getattr(v, 'status', '')}" if isinstance(v, BaseException)
    else v.__name__)
def test_usb_error_class(exc, cls):
    err = E.usb_error(exc)
    assert type(err) is cls and err.value == cls.value


@pytest.mark.parametrize("exc", [
    UsbipTimeoutError("t", transferred=7),
    UrbCancelledError("c", transferred=7),
    UrbError("u", status=-32, transferred=7),
])
def test_usb_error_copies_transferred(exc):
    assert E.usb_error(exc).transferred == 7


def test_usb_error_without_transferred_defaults_to_zero():
    err = E.usb_error(ConnectionLostError("lost"))
    assert err.transferred == 0 and err.received is None


def test_usb_error_detail_follows_the_libusb_text():
    exc = UsbipTimeoutError("URB 5 to endpoint 0x81 of 1-1@127.0.0.1:3240 timed out after 1 s "
                            "(CMD_UNLINK answered, status -104)", transferred=0)
    err = E.usb_error(exc)
    assert err.detail == str(exc)
    assert str(err) == ("LIBUSB_ERROR_TIMEOUT [-7]: URB 5 to endpoint 0x81 of 1-1@127.0.0.1:3240 "
                        "timed out after 1 s (CMD_UNLINK answered, status -104)")
    assert err.__cause__ is None  # chaining is the caller's


def test_usb_error_without_a_message_has_no_detail():
    err = E.usb_error(MemoryError())
    assert err.detail is None and str(err) == "LIBUSB_ERROR_NO_MEM [-11]"


def test_usb_error_passes_a_usb_error_through():
    err = E.USBErrorBusy(transferred=1)
    assert E.usb_error(err) is err


def test_usb_error_is_raisable_with_its_cause():
    exc = UrbError("URB 3 to endpoint 0x02 failed: endpoint stalled (EPIPE), status -32",
                   status=-32, transferred=4)
    with pytest.raises(E.USBErrorPipe) as info:
        try:
            raise exc
        except UrbError as caught:
            raise E.usb_error(caught) from caught
    assert info.value.__cause__ is exc and info.value.transferred == 4
    assert str(info.value).startswith("LIBUSB_ERROR_PIPE [-9]: URB 3 to endpoint 0x02 failed")


# -- real URBs against a scripted USB/IP server ---------------------------------------------------

def connect(server: ScriptedServer):
    return import_device("127.0.0.1", server.port, "2-1", timeout=5)


def test_real_stall_maps_to_stall_and_pipe_error():
    def script(sock):
        cmd = read_cmd(sock)[0]
        sock.sendall(ret_submit(cmd.seqnum, status=-32))

    with ScriptedServer(script) as srv, connect(srv) as conn:
        urb = conn.submit(BULK, 0x01, data=b"abc")
        with pytest.raises(UrbError) as info:
            urb.wait(5)
    assert E.transfer_status(urb.status, EndedBy.REPLY) == C.TRANSFER_STALL
    assert E.transfer_status_of(info.value) == C.TRANSFER_STALL
    err = E.usb_error(info.value)
    assert type(err) is E.USBErrorPipe
    assert str(err).startswith("LIBUSB_ERROR_PIPE [-9]: URB ") and "0x01" in str(err)


def test_real_timeout_maps_to_timed_out_and_timeout_error():
    def script(sock):
        read_cmd(sock)  # the CMD_SUBMIT, never answered
        unl = read_cmd(sock)[0]
        sock.sendall(ret_unlink(unl.seqnum, -104))

    with ScriptedServer(script) as srv, connect(srv) as conn:
        with pytest.raises(UsbipTimeoutError) as info:
            conn.transfer(BULK, 0x81, length=4, timeout=0.1)
    assert E.transfer_status_of(info.value) == C.TRANSFER_TIMED_OUT
    assert E.transfer_status(-104, EndedBy.TIMEOUT) == C.TRANSFER_TIMED_OUT
    err = E.usb_error(info.value)
    assert type(err) is E.USBErrorTimeout and err.transferred == 0
    assert re.match(r"LIBUSB_ERROR_TIMEOUT \[-7\]: URB \d+ to endpoint 0x81 .* timed out", str(err))


def test_real_connection_loss_maps_to_no_device():
    def script(sock):
        read_cmd(sock)  # then the server hangs up

    with ScriptedServer(script) as srv, connect(srv) as conn:
        urb = conn.submit(BULK, 0x81, length=4)
        with pytest.raises(ConnectionLostError) as info:
            urb.wait(5)
    assert E.transfer_status(urb.status, EndedBy.REPLY) == C.TRANSFER_NO_DEVICE
    assert E.transfer_status_of(info.value) == C.TRANSFER_NO_DEVICE
    assert type(E.usb_error(info.value)) is E.USBErrorNoDevice
