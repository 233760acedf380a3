"""pyserial's ``Serial`` for ``usbip://`` URLs: a USB serial device on a USB/IP server.

``serial.serial_for_url("usbip://192.168.1.20/1-2", timeout=1)`` after ``import usbip_backend``
(which registers the handler with pyserial). URL options (:mod:`.url`): ``?baudrate=N``,
``?interface=N``, ``?timeout=SECONDS`` (the import and each request), ``?wait=SECONDS`` (how
long opening waits for a device that is not on the server, see below; 0: fail at once),
``?logging=debug``.

The SerialBase contract, as pyserial 3.5 and esptool rely on it:

* DTR and RTS: every assignment sends one request carrying both lines, and returns once the
  device has it, so a sequence of assignments reaches the device in order (esptool's USB-JTAG
  reset must never pass through DTR=0, RTS=0 on its way). The port opens with both asserted
  unless ``dsrdtr`` / ``rtscts`` say otherwise, as a tty does.
* Line coding goes out only when baud rate, byte size, parity or stop bits changed: pyserial calls
  ``_reconfigure_port`` on every ``timeout`` assignment, and esptool sets timeouts per command.
* Reading: a window of bulk IN URBs stays in flight in the background (16, as Linux's cdc-acm), so
  ``in_waiting`` sees data as it arrives and no byte is lost or reordered; ``read(n)`` honours
  ``timeout`` (None waits for n bytes, 0 returns what is there, else at most that long). The
  input buffer is bounded (``MAX_BUFFER``): beyond it the window stops asking the device, which
  then holds its data, until ``read`` makes room.
* Writing: ``write`` returns once the device has taken everything; a device draining at its
  baud rate holds a bulk OUT URB until its buffer has room, so a big write takes its line time.
  ``write_timeout`` bounds it: a write cut short raises ``SerialTimeoutException`` whose
  ``written`` is what the device took, so writing the rest next sends every byte once, in order
  (``write_timeout=0`` returns that count instead, as pyserial's POSIX port does). To keep that
  count exact, URBs carry at most ``URB_LINE_TIME`` of line time until the device has shown it
  takes data faster than its baud rate (then ``WRITE_CHUNK``); with a ``write_timeout``, a URB
  of several packets goes out only if the line can finish it before the deadline, one-packet
  URBs after that, and a write cut short unlinks only those (taken whole or not at all) and lets
  the others finish. ``cancel_write`` from another thread makes a blocked ``write`` return
  that count; ``reset_output_buffer`` drops what is in flight at once; ``flush`` waits for the
  writes in flight; ``out_waiting`` counts their bytes. A write of a whole number of max-size
  packets ends with a zero-length packet.
* ``fileno()`` raises ``OSError(ENOTTY)``: there is no file descriptor (esptool then falls back
  from its ioctl-based reset). A closed port can be opened again.
* Opening waits for a device that is not on the server (not listed, or ST_NODEV) to be exported,
  polling the server's device list a few times a second: a first open up to ``?wait=``
  (``FIRST_OPEN_WAIT``, 3 s, if not given: a program started right after another one's reset,
  esptool's ``--after hard-reset``, finds the board re-enumerating), a port opened again after
  its device dropped off the bus (a board resetting) up to ``?wait=`` or ``REENUMERATE_WAIT``
  (10 s), for the same busid or, for a VID:PID URL, the same VID on that busid. A busy device
  (another client imported it) or an unreachable server fails at once; a device still missing
  fails saying how long it was waited for and what the server exports. A port's own connection
  loss (the device left the bus) is not logged as a warning: ``read`` and ``write`` raise
  ``SerialException``, and ``usbip_backend.serial`` says so at INFO.
"""

from __future__ import annotations

import errno
import logging
import threading
import time
import weakref
from collections import deque
from typing import Any, Deque, Dict, List, Optional, Tuple

import serial
from serial.serialutil import PortNotOpenError, SerialBase, SerialException, SerialTimeoutException, Timeout

from .. import protocol as P
from ..client import list_devices
from ..device import OUT_WINDOW, Device, open_device, retry_busy_after_release
from ..engine import Urb
from ..errors import ImportRefusedError, UrbCancelledError, UrbError, UsbipError, UsbipTimeoutError
from ..stream import EMSGSIZE, whole_packets
from .drivers import Driver, LineCoding, NotSerialError, pick_driver
from .url import SerialUrl, parse_url

_BULK = P.TransferType.BULK
_INTERRUPT = P.TransferType.INTERRUPT
_log = logging.getLogger("usbip_backend.serial")
#: Most bytes one URB carries (each direction) until a server refuses that size with -EMSGSIZE
#: (the ESP32 bridge takes 4 KiB): then it is halved, in whole packets, with nothing lost.
WRITE_CHUNK = 16384
READ_CHUNK = 16384
#: How long closing waits for each cancelled URB.
CANCEL_WAIT = 1.0
#: Most line time (seconds at the line rate: the baud rate over the bits of a character) one OUT
#: URB carries while the device may be draining at that rate. The stub answers the unlink of a
#: pending URB with RET_UNLINK alone, never saying how much of it the device took, so a write cut
#: short lets the URBs the device may have begun finish (see ``Serial._keep``) and unlinks only
#: the others.
URB_LINE_TIME = 0.025
#: Bytes the device may have taken beyond what its line could have sent (a leaky bucket drained
#: at the line rate) before it counts as not paced by its baud rate, as a USB-native CDC-ACM (the
#: ESP32's USB-Serial-JTAG) is not: its URBs are then WRITE_CHUNK big. No UART bridge buffers that
#: much.
UNPACED_BACKLOG = 64 * 1024
#: What a write cut short gives the URBs it lets finish beyond their line time (the replies' way
#: back, on a loaded host too).
FINISH_MARGIN = 0.1
#: How long a waiting write reads replies at a time before it looks at cancel_write again.
WAIT_SLICE = 0.02
#: (host, port, busid) -> when this process last gave that import back (see REIMPORT_WINDOW):
#: a port closed and opened again (esptool, pyserial's tests) finds the server still freeing it.
_released: Dict[Tuple[str, int, str], float] = {}


class _Missing(Exception):
    """The device is not (or no longer) on the server."""


def _weak(port: "Serial", method: str, *args: Any) -> Any:
    """A done callback that does not keep the port alive: a port nobody holds any more is
    collected, and io's finaliser closes it (giving the import back), as a tty's fd is closed."""
    ref = weakref.ref(port)

    def done(urb: Urb) -> None:
        target = ref()
        if target is not None:
            getattr(target, method)(urb, *args)
    return done


def _char_rate(coding: LineCoding) -> float:
    """Characters per second a UART sends with this coding (start, data, parity, stop bits)."""
    parity = 0 if coding.parity == serial.PARITY_NONE else 1
    return coding.baudrate / (1 + coding.bytesize + parity + coding.stopbits)


class Serial(SerialBase):  # type: ignore[misc]  # pyserial ships no type information: SerialBase is Any
    """A serial port on a USB/IP server (see the module docstring)."""

    is_open: bool  # set by SerialBase.__init__ and by open()/close()

    BAUDRATES = (300, 600, 1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200, 230400, 460800,
                 921600, 1000000, 1500000, 2000000, 3000000)
    #: Most bytes kept in the input buffer before the IN window pauses.
    MAX_BUFFER = 1024 * 1024
    #: Seconds a port opened again waits for its device to be exported again (re-enumeration);
    #: the URL's ``?wait=`` replaces it.
    REENUMERATE_WAIT = 10.0
    #: Seconds a first open waits for a device that is not on the server (a board re-enumerating
    #: after the reset of the previous program's session); the URL's ``?wait=`` replaces it.
    FIRST_OPEN_WAIT = 3.0
    #: Seconds between two looks at the server's device list while waiting (the first ones
    #: quicker: a board is usually back within a second).
    POLL_FIRST, POLL_EVERY = 0.05, 0.25

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._dev: Optional[Device] = None
        self._driver: Optional[Driver] = None
        self._url: Optional[SerialUrl] = None
        self._rx = bytearray()
        self._cond = threading.Condition()
        self._reads: List[Urb] = []
        self._paused: List[bytearray] = []  # IN slots not resubmitted while the buffer is full
        self._notify: Optional[Urb] = None
        self._failure: Optional[BaseException] = None
        self._closing = False
        self._cancel_read = False
        self._cancel_write = False
        self._drop_write = False  # reset_output_buffer() during a write
        self._writing = 0  # write() calls under way
        self._writes: List[Urb] = []  # OUT URBs in flight
        self._line_rate = 0.0  # characters per second of the line coding set
        self._backlog = 0.0  # bytes taken beyond what the line could have sent (see UNPACED_BACKLOG)
        self._backlog_at = 0.0
        self._unpaced = False  # the device took more than its line rate explains
        self._line: Optional[LineCoding] = None
        self._want = 1  # bytes the waiting read() needs before it is worth waking
        self._write_chunk = WRITE_CHUNK  # halved while the server answers -EMSGSIZE
        self._read_size = READ_CHUNK
        self._write_proven = 0  # the largest OUT URB the server took
        self._last: Optional[Tuple[str, int, str, int]] = None  # (host, port, busid, VID) last opened
        self.logger: Optional[logging.Logger] = None
        super().__init__(*args, **kwargs)

    # -- opening ------------------------------------------------------------------------------------
    def open(self) -> None:
        if self.is_open:
            raise SerialException("Port is already open.")
        if self._port is None:
            raise SerialException("Port must be configured before it can be used.")
        url = self.from_url(self._port)
        dev = self._import(url)
        try:
            driver = pick_driver(dev, url.interface)
            driver.start(url.timeout)
        except NotSerialError as exc:
            dev.close()
            raise SerialException(str(exc)) from None
        except BaseException:
            dev.close()
            raise
        self._dev, self._driver, self._url = dev, driver, url
        self._rx.clear()
        self._failure = None
        self._closing = self._cancel_read = self._cancel_write = self._drop_write = False
        self._line = None
        self.is_open = True
        try:
            self._reconfigure_port()
            if not self._dsrdtr:
                self._update_dtr_state()
            if not self._rtscts:
                self._update_rts_state()
            self._start_reading()
        except BaseException:
            self.close()
            raise

    def from_url(self, url: str) -> SerialUrl:
        """Parse the URL and apply its options (``baudrate``, ``logging``)."""
        try:
            parsed = parse_url(url)
        except ValueError as exc:
            raise SerialException(str(exc)) from None
        if parsed.logging:
            logging.basicConfig()
            self.logger = logging.getLogger("pySerial.usbip")
            self.logger.setLevel(getattr(logging, parsed.logging.upper()))
        if parsed.baudrate is not None:
            self._baudrate = parsed.baudrate
        return parsed

    def _import(self, url: SerialUrl) -> Device:
        """Import the device the URL names. A device that is not on the server (not listed, or
        ST_NODEV) is waited for: a first open up to ``?wait=`` seconds (``FIRST_OPEN_WAIT`` if
        not given: the board may be re-enumerating after the previous program's reset); opened
        again after it was open (esptool after a reset), up to ``?wait=`` or
        ``REENUMERATE_WAIT``, for the same busid, or for a VID:PID URL the same VID on the same
        busid (a board that resets into its bootloader or application may come back with another
        PID). Meanwhile the server's device list is polled (``POLL_FIRST`` to ``POLL_EVERY``
        seconds apart). A busy device or an unreachable server fails at once."""
        last = self._last if self._last is not None and self._last[:2] == (url.host, url.port) else None
        wait = url.wait if url.wait is not None else self.FIRST_OPEN_WAIT if last is None else self.REENUMERATE_WAIT
        deadline = time.monotonic() + wait
        delay = self.POLL_FIRST
        records: Optional[List[P.UsbDevice]] = None  # the server's list, from the last poll
        listed = True  # worth an import attempt
        while True:
            if listed:
                try:
                    dev = self._import_once(url, last, records)
                    break
                except _Missing as exc:
                    missing = exc
                if delay == self.POLL_FIRST and wait > 0:
                    _log.info("%s: %s; waiting up to %g s for it to be exported", self._where(), missing, wait)
            left = deadline - time.monotonic()
            if left <= 0:
                if records is None:
                    try:
                        records = list_devices(url.host, url.port, timeout=url.timeout)
                    except UsbipError:
                        pass  # (only for the message)
                raise SerialException(f"{missing}{self._waited(wait, records)}") from None
            time.sleep(min(delay, left))  # polling the server's device list, at a modest rate
            delay = min(delay * 2, self.POLL_EVERY)
            records = self._list(url)
            # Listed now, or the wait is over: one more import (it may be back, or busy now).
            listed = bool(self._match(records, url, last)) or time.monotonic() >= deadline
        self._last = (url.host, url.port, dev.busid, dev.descriptor.idVendor)
        return dev

    @staticmethod
    def _waited(wait: float, records: Optional[List[P.UsbDevice]]) -> str:
        """The tail of the error of a device still missing: how long it was waited for and
        what the server does export."""
        parts = [f"waited {wait:g} s for it to be exported"] if wait > 0 else []
        if records is not None:
            listed = ", ".join(f"{r.busid} ({r.idVendor:04x}:{r.idProduct:04x})" for r in records)
            parts.append(f"the server exports {listed}" if listed else "the server exports no free device")
        return "".join(f"; {part}" for part in parts)

    def _list(self, url: SerialUrl) -> List[P.UsbDevice]:
        try:
            return list_devices(url.host, url.port, timeout=url.timeout)
        except UsbipError as exc:
            raise SerialException(f"cannot open usbip://{url.where}/{url.busid or url.device}: {exc}") from None

    @staticmethod
    def _match(records: List[P.UsbDevice], url: SerialUrl,
               last: Optional[Tuple[str, int, str, int]]) -> List[P.UsbDevice]:
        """The listed devices the URL names: its busid, or its VID:PID, or, for a port opened
        again whose device came back with another PID, the same VID on the same busid."""
        if url.busid is not None:
            return [r for r in records if r.busid == url.busid]
        found = [r for r in records if r.idVendor == url.vid and r.idProduct == url.pid]
        if not found and last is not None:
            found = [r for r in records if r.idVendor == last[3] and r.busid == last[2]]
        return found

    def _import_once(self, url: SerialUrl, last: Optional[Tuple[str, int, str, int]],
                     records: Optional[List[P.UsbDevice]] = None) -> Device:
        """One import: for a VID:PID URL, the device found in ``records`` (the server's list,
        asked for if None)."""
        where = url.where
        busid = url.busid
        try:
            if busid is None:
                if records is None:
                    records = list_devices(url.host, url.port, timeout=url.timeout)
                found = self._match(records, url, last)
                if not found:
                    raise _Missing(f"no device {url.device} is free on {where} (a device another "
                                   "client has imported is not listed)")
                if len(found) > 1:
                    raise SerialException(f"{len(found)} devices {url.device} on {where} "
                                          f"({', '.join(r.busid for r in found)}): give the busid instead")
                busid = found[0].busid
            key = (url.host, url.port, busid)
            return retry_busy_after_release(
                # Its connection's loss is the port's to report (read/write raise): not a warning.
                lambda: open_device(url.host, url.port, key[2], timeout=url.timeout, loss_level=logging.DEBUG),
                _released.get(key))
        except ImportRefusedError as exc:
            if exc.status == P.Status.ST_DEV_BUSY:
                raise SerialException(f"device {busid} on {where} is busy: another client has imported "
                                      "it; release it there and retry") from None
            if exc.status == P.Status.ST_NODEV:
                raise _Missing(f"no device with busid {busid} on {where}") from None
            raise SerialException(str(exc)) from None
        except UsbipError as exc:
            raise SerialException(f"cannot open usbip://{where}/{busid or url.device}: {exc}") from None

    # -- the IN window --------------------------------------------------------------------------------
    def _start_reading(self) -> None:
        driver = self._driver
        assert driver is not None
        self._read_size = whole_packets(READ_CHUNK, driver.in_packet)
        for _ in range(driver.read_urbs):
            self._submit_read(bytearray(self._read_size))
        if driver.notify_ep is not None and driver.notify_size:
            self._submit_notify(bytearray(driver.notify_size))

    def _submit_read(self, buf: bytearray) -> None:
        dev, driver = self._dev, self._driver
        assert dev is not None and driver is not None
        try:
            urb = dev.conn.submit(_BULK, driver.ep_in, buffer=buf, block=False,
                                  callback=_weak(self, "_read_done", buf))
        except UsbipError as exc:
            self._fail(exc)
            return
        self._reads.append(urb)

    def _read_done(self, urb: Urb, buf: bytearray) -> None:
        """A bulk IN URB ended (on the engine's thread): keep its bytes, ask again."""
        driver = self._driver
        with self._cond:
            try:
                self._reads.remove(urb)
            except ValueError:
                pass
            if urb.status == EMSGSIZE and not urb.actual_length and driver is not None \
                    and len(buf) > driver.in_packet and not self._closing:
                # The server refuses URBs this big: ask again with smaller ones, nothing lost.
                self._read_size = min(self._read_size, whole_packets(len(buf) // 2, driver.in_packet))
                buf = bytearray(self._read_size)
            elif urb.status == 0:
                if urb.actual_length and driver is not None:
                    self._rx += driver.strip(memoryview(buf)[:urb.actual_length])
                    if len(self._rx) >= self._want:
                        self._cond.notify_all()  # (a reader waiting for more sleeps on)
            elif not self._closing:
                if self._failure is None:
                    _log.info("%s: the device stopped answering (%s); reading and writing fail until "
                              "the port is opened again", self._where(), urb.exception())
                self._failure = urb.exception()
                self._cond.notify_all()
                return
            if self._closing or self._failure is not None:
                return
            if len(self._rx) >= self.MAX_BUFFER:
                self._paused.append(buf)
                return
        self._submit_read(buf)

    def _resume_reading(self) -> None:
        """Called under the lock after read() took bytes: resubmit paused slots."""
        if self._paused and len(self._rx) < self.MAX_BUFFER // 2 and not self._closing:
            slots, self._paused = self._paused, []
            for buf in slots:
                self._submit_read(buf)

    def _submit_notify(self, buf: bytearray) -> None:
        dev, driver = self._dev, self._driver
        assert dev is not None and driver is not None and driver.notify_ep is not None
        interval = dev.interval(_INTERRUPT, dev.endpoint(driver.notify_ep))
        try:
            self._notify = dev.conn.submit(_INTERRUPT, driver.notify_ep, buffer=buf, interval=interval,
                                           block=False, callback=_weak(self, "_notify_done", buf))
        except UsbipError as exc:
            self._fail(exc)

    def _notify_done(self, urb: Urb, buf: bytearray) -> None:
        driver = self._driver
        if urb.status == 0 and driver is not None:
            driver.notification(bytes(buf[:urb.actual_length]))
        elif urb.status != 0:
            return  # cancelled at close, or the device went away (the bulk reads say so)
        if not self._closing:
            self._submit_notify(buf)

    def _fail(self, exc: BaseException) -> None:
        with self._cond:
            if self._failure is None and not self._closing:
                self._failure = exc
            self._cond.notify_all()

    def _raise_failure(self) -> None:
        exc = self._failure
        if exc is not None:
            raise SerialException(f"{self._where()}: the device stopped answering: {exc}") from exc

    def _where(self) -> str:
        return self._port or "usbip://"

    # -- closing --------------------------------------------------------------------------------------
    def close(self) -> None:
        if not self.is_open:
            return
        self.is_open = False
        with self._cond:
            self._closing = True
            pending = list(self._reads) + list(self._writes)
            self._cond.notify_all()
        if self._notify is not None:
            pending.append(self._notify)
        for urb in pending:
            urb.cancel()
        for urb in pending:
            try:
                urb.wait(CANCEL_WAIT)
            except UsbipError:
                pass
        dev, self._dev, self._driver = self._dev, None, None
        self._reads, self._writes, self._paused, self._notify = [], [], [], None
        if dev is not None:
            dev.close()
            url = self._url
            if url is not None:
                now = time.monotonic()
                for key in [k for k, t in _released.items() if now - t > 60]:
                    del _released[key]
                _released[(url.host, url.port, dev.busid)] = now

    def fileno(self) -> int:
        raise OSError(errno.ENOTTY, "a usbip:// port has no file descriptor")

    # -- settings -------------------------------------------------------------------------------------
    def _reconfigure_port(self, force: bool = False) -> None:
        if not self.is_open or self._driver is None:
            return
        if not isinstance(self._baudrate, int) or not 0 < self._baudrate < 2 ** 32:
            raise ValueError(f"invalid baudrate: {self._baudrate!r}")
        coding = LineCoding(self._baudrate, self._bytesize, self._parity, self._stopbits)
        if coding == self._line and not force:
            return
        self._control(lambda d, t: d.set_line_coding(coding, t), "line coding")
        self._line = coding
        self._line_rate = _char_rate(coding)
        self._backlog, self._unpaced = 0.0, False

    def _control(self, fn: Any, what: str) -> None:
        driver, url = self._driver, self._url
        if driver is None or url is None:
            raise PortNotOpenError()
        try:
            fn(driver, url.timeout)
        except ValueError as exc:
            raise SerialException(f"{what}: {exc}") from None
        except UsbipError as exc:
            raise SerialException(f"{self._where()}: setting {what} failed: {exc}") from exc
        if self.logger:
            self.logger.info("%s set", what)

    def _update_dtr_state(self) -> None:
        if self.is_open:
            self._control(lambda d, t: d.set_lines(self._dtr_state, self._rts_state, t), "DTR/RTS")

    def _update_rts_state(self) -> None:
        if self.is_open:
            self._control(lambda d, t: d.set_lines(self._dtr_state, self._rts_state, t), "DTR/RTS")

    def _update_break_state(self) -> None:
        if self.is_open:
            self._control(lambda d, t: d.set_break(self._break_state, t), "break")

    def _modem(self) -> Any:
        driver, url = self._driver, self._url
        if driver is None or url is None:
            raise PortNotOpenError()
        return driver.modem_status(url.timeout)

    @property
    def cts(self) -> bool:
        return bool(self._modem().cts)

    @property
    def dsr(self) -> bool:
        return bool(self._modem().dsr)

    @property
    def ri(self) -> bool:
        return bool(self._modem().ri)

    @property
    def cd(self) -> bool:
        return bool(self._modem().cd)

    # -- reading --------------------------------------------------------------------------------------
    @property
    def in_waiting(self) -> int:
        if not self.is_open:
            raise PortNotOpenError()
        return len(self._rx)

    def read(self, size: int = 1) -> bytes:
        if not self.is_open:
            raise PortNotOpenError()
        if size <= 0:
            return b""
        timeout = Timeout(self._timeout)
        with self._cond:
            self._cancel_read = False
            try:
                while len(self._rx) < size:
                    if self._failure is not None and not self._rx:
                        self._raise_failure()
                    if self._cancel_read or timeout.expired() or self._failure is not None or not self.is_open:
                        break
                    self._want = size
                    self._cond.wait(None if timeout.is_infinite else timeout.time_left())
            finally:
                self._want = 1
            data = bytes(self._rx[:size])
            del self._rx[:size]
            self._resume_reading()
        return data

    def cancel_read(self) -> None:
        with self._cond:
            self._cancel_read = True
            self._cond.notify_all()

    def reset_input_buffer(self) -> None:
        if not self.is_open:
            raise PortNotOpenError()
        with self._cond:
            self._rx.clear()
            self._resume_reading()

    # -- writing --------------------------------------------------------------------------------------
    @property
    def out_waiting(self) -> int:
        """Bytes of the writes in flight (another thread's write) the device has not taken."""
        with self._cond:
            return sum(urb.length for urb in self._writes if not urb.done())

    def write(self, data: Any) -> int:
        if not self.is_open:
            raise PortNotOpenError()
        payload = serial.to_bytes(data)
        if not payload:
            return 0
        dev, driver = self._dev, self._driver
        assert dev is not None and driver is not None
        with self._cond:
            self._cancel_write = self._drop_write = False
            self._writing += 1
        try:
            return self._write(dev, driver, memoryview(payload))
        finally:
            with self._cond:
                self._writing -= 1
                self._writes = [u for u in self._writes if not u.done()]
                self._cond.notify_all()

    def _write(self, dev: Device, driver: Driver, view: memoryview) -> int:
        total = len(view)
        write_timeout = self._write_timeout
        deadline = None if write_timeout is None else time.monotonic() + write_timeout
        zlp = total % driver.out_packet == 0  # a zero-length packet ends a write of whole packets
        written = 0
        offset = 0
        flight: Deque[Tuple[Urb, int]] = deque()  # (urb, its size), in the device's order
        stop: Optional[str] = None  # why the write was cut short: "timeout", "cancel" or "drop"
        keep = 0  # after a stop: the URBs at the head of the flight left to finish, not unlinked
        finish_by = 0.0
        tail = False  # near the deadline: one-packet URBs only (see _before_deadline)
        try:
            while True:
                while stop is None and (offset < total or (zlp and not flight)):
                    size = self._urb_size(driver)
                    if deadline is not None and not self._unpaced and self._line_rate > 0:
                        size, tail = self._before_deadline(size, driver, deadline, flight, tail)
                    # One URB at a time until the server has taken one of this size: a refused
                    # size (-EMSGSIZE) is then learnt before anything is queued behind it.
                    if len(flight) >= (OUT_WINDOW if size <= self._write_proven else 1):
                        break
                    n = min(size, total - offset)
                    urb = dev.conn.submit(_BULK, driver.ep_out, data=view[offset:offset + n],
                                          callback=_weak(self, "_write_done"))
                    if offset >= total:
                        zlp = False
                    offset += n
                    flight.append((urb, n))
                    with self._cond:
                        self._writes.append(urb)
                        if urb.done():  # its callback ran before it was listed
                            self._writes.remove(urb)
                if not flight:
                    break
                head, n = flight[0]
                if stop is None:
                    if not self._await(dev, head, deadline, True):
                        stop = self._stop_reason()
                        keep = self._keep(flight, driver, stop)
                        self._unlink(flight, keep)
                        finish_by = time.monotonic() + self._finish_time([m for _, m in flight][:keep], driver)
                        continue
                elif keep and not self._await(dev, head, finish_by, False):
                    head.cancel()  # the device takes nothing more (flow control, a stall)
                if not head.done():
                    try:
                        head.wait(CANCEL_WAIT)  # the unlink's verdict (its grace bounds the wait)
                    except UsbipError:
                        pass
                flight.popleft()
                keep = max(keep - 1, 0)
                if head.status == 0:
                    written += head.actual_length
                    self._write_proven = max(self._write_proven, n)
                    self._took(head.actual_length)
                    continue
                error = head.exception()
                if isinstance(error, (UrbCancelledError, UsbipTimeoutError)):
                    # Unlinked unstarted (by us), or by close() / reset_output_buffer().
                    if stop is None:
                        stop = "drop"
                        self._unlink(flight, 0)
                    continue
                if isinstance(error, UrbError) and error.status == EMSGSIZE and stop is None \
                        and not head.actual_length and not flight and n > driver.out_packet:
                    offset -= n  # send it again in smaller pieces
                    self._write_chunk = whole_packets(n // 2, driver.out_packet)
                    continue
                assert error is not None
                raise error
        except UsbipError as exc:
            raise SerialException(f"{self._where()}: write failed: {exc}") from exc
        finally:
            self._unlink(flight, 0)
            for urb, _ in flight:
                try:
                    urb.wait(CANCEL_WAIT)
                except UsbipError:
                    pass
        if stop == "timeout" and written < total:
            self._backlog, self._unpaced = 0.0, False  # it backs up: the line rate holds again
            if write_timeout != 0:
                timed_out = SerialTimeoutException(f"Write timeout: {written} of {total} bytes written")
                timed_out.written = written
                raise timed_out
        return written

    def _urb_size(self, driver: Driver) -> int:
        if self._unpaced or self._line_rate <= 0:
            return self._write_chunk
        return min(self._write_chunk, whole_packets(int(self._line_rate * URB_LINE_TIME), driver.out_packet))

    def _before_deadline(self, size: int, driver: Driver, deadline: float,
                         flight: Deque[Tuple[Urb, int]], tail: bool) -> Tuple[int, bool]:
        """The size of the next URB of a write with a deadline, and whether the write is in its
        tail. A URB of several packets goes out only if the line can finish it, behind what is
        in flight, before the deadline; past that point every URB is one packet, taken whole or
        not at all, so a write cut short unlinks only those and lets the others finish: the
        count it reports is then exact (the unlink of a URB the device is part-way through is
        answered without saying how much it took)."""
        packet = driver.out_packet
        if not tail:
            queued = sum(n for urb, n in flight if not urb.done())
            room = (deadline - time.monotonic()) * self._line_rate - queued
            if room >= 2 * packet:
                return min(size, whole_packets(int(room), packet)), False
        return packet, True

    def _keep(self, flight: Deque[Tuple[Urb, int]], driver: Driver, stop: str) -> int:
        """How many URBs at the head of the flight a write cut short lets finish. Dropped
        (reset_output_buffer, close): none. Timed out on a paced line: every URB of several
        packets (the tail behind them is one-packet URBs, see _before_deadline). Otherwise (a
        cancel_write, or an unpaced device) the head, which the device may be part-way through,
        and for URBs of several packets the one behind it too: the head may have finished and the
        next begun before the unlinks reach the server (a round trip). One-packet URBs go whole
        or not at all."""
        if stop == "drop" or not flight:
            return 0
        packet = driver.out_packet
        if stop == "timeout" and not self._unpaced and self._line_rate > 0:
            keep = 0
            for _, n in flight:
                if n <= packet:
                    break
                keep += 1
            return keep
        return min(1 if flight[0][1] <= packet else 2, len(flight))

    def _finish_time(self, sizes: List[int], driver: Driver) -> float:
        """How long the URBs left to finish may take: the line time of all but the packet the
        device may be waiting to take, and a margin for the replies on a loaded host (bounded: a
        device that stopped draining is given up)."""
        rest = max(sum(sizes) - driver.out_packet, 0)
        line_time = rest / self._line_rate if self._line_rate > 0 else 0.0
        return FINISH_MARGIN + min(line_time, 4 * URB_LINE_TIME)

    def _took(self, count: int) -> None:
        """The device took ``count`` bytes: more than its line could have sent means unpaced."""
        if self._unpaced or self._line_rate <= 0:
            return
        now = time.monotonic()
        self._backlog = max(0.0, self._backlog - (now - self._backlog_at) * self._line_rate) + count
        self._backlog_at = now
        if self._backlog > UNPACED_BACKLOG:
            self._unpaced = True

    def _stop_reason(self) -> str:
        if self._drop_write or self._closing:
            return "drop"
        return "cancel" if self._cancel_write else "timeout"

    @staticmethod
    def _unlink(flight: Deque[Tuple[Urb, int]], keep: int) -> None:
        """Unlink the URBs of the flight but the first ``keep``, the last first: the server takes
        the unlinks in order, so what the device took stays a prefix of the write."""
        urbs = [urb for urb, _ in flight]
        for urb in reversed(urbs[keep:]):
            urb.cancel()

    def _await(self, dev: Device, urb: Urb, until: Optional[float], cancellable: bool) -> bool:
        """Wait for ``urb`` without unlinking it: True once it is done, False at ``until`` or
        (``cancellable``) when cancel_write / reset_output_buffer / close asks. Reads the replies
        itself when nobody else does (one thread wake-up less per URB)."""
        while not urb.done():
            if cancellable and (self._cancel_write or self._drop_write or self._closing):
                return False
            step = WAIT_SLICE
            if until is not None:
                step = min(step, until - time.monotonic())
                if step <= 0:
                    return False
            began = time.monotonic()
            if dev.conn.pump(step) or time.monotonic() - began >= step / 2:
                continue
            with self._cond:  # someone else reads the socket: _write_done wakes us
                if not urb.done() and not (cancellable and self._cancel_write):
                    self._cond.wait(step)
        return True

    def _write_done(self, urb: Urb) -> None:
        """An OUT URB ended (on the thread that read its reply)."""
        with self._cond:
            try:
                self._writes.remove(urb)
            except ValueError:
                pass
            self._cond.notify_all()

    def flush(self) -> None:
        """Wait until the writes in flight (another thread's write) are done."""
        if not self.is_open:
            raise PortNotOpenError()
        with self._cond:
            while (self._writing or self._writes) and self.is_open and not self._closing:
                self._cond.wait()

    def cancel_write(self) -> None:
        """Make a blocked write return, with what the device took (from another thread)."""
        with self._cond:
            self._cancel_write = True
            self._cond.notify_all()

    def reset_output_buffer(self) -> None:
        """Drop what is in flight: a write under way returns what the device took."""
        if not self.is_open:
            raise PortNotOpenError()
        with self._cond:
            if self._writing:
                self._drop_write = True
            writes = list(self._writes)
            self._cond.notify_all()
        for urb in reversed(writes):
            urb.cancel()

    # aliases pyserial 2 had (SerialBase provides inWaiting, setDTR, flushInput...)


__all__ = ["Serial"]
