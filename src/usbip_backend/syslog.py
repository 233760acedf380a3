"""Receive a device's syslog messages over TCP, print them, and record them into the capture.

Three layers, the first two pure (bytes in, objects out):

* :class:`FrameDecoder` splits a TCP byte stream into messages per RFC 6587: octet counting
  (``"LEN SP MSG"``, section 3.4.1) and non-transparent framing (LF, also CRLF and NUL
  terminators, section 3.4.2), mixed freely on one stream. Everything it buffers is bounded by
  ``max_frame``: an oversized frame or a lying length prefix is cut and reported.
* :func:`parse_message` turns one message into a :class:`SyslogMessage`: RFC 5424 (PRI, version,
  timestamp, hostname, app-name, procid, msgid, structured data with ``\\" \\\\ \\]`` escapes,
  MSG with its BOM stripped), tolerating RFC 3164 lines (``<34>Oct 11 22:14:15 host su: ...``)
  and lines without PRI. It never raises: a field it cannot make sense of (a timestamp with month
  13 or offset +24:00, say) is left unknown and the rest of the message is still parsed.
* :class:`SyslogReceiver` runs the socket side: it connects to the device's log port (the ESP32
  bridge serves its log on TCP 1514) and reconnects with exponential back-off when the device
  restarts or the port drops connections at once, or it listens for senders (standard syslog over
  TCP). Each message is printed as one readable line and written to a
  :class:`~usbip_backend.pcap.PcapWriter`. No single message, and no failing callback or console,
  stops it: such failures are logged and the next message is handled as usual.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import select
import socket
import sys
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import IO, Callable, List, Optional, Protocol, Tuple, TypedDict, Union

log = logging.getLogger(__name__)

DEFAULT_PORT = 1514
DEFAULT_MAX_FRAME = 65536

FACILITY_NAMES = (
    "kern", "user", "mail", "daemon", "auth", "syslog", "lpr", "news", "uucp", "cron", "authpriv",
    "ftp", "ntp", "audit", "alert", "clock", "local0", "local1", "local2", "local3", "local4",
    "local5", "local6", "local7",
)
SEVERITY_NAMES = ("EMERG", "ALERT", "CRIT", "ERR", "WARNING", "NOTICE", "INFO", "DEBUG")

#: RFC 3164 section 4.3.3: a message without PRI is treated as user.notice (PRI 13).
NO_PRI_FACILITY = 1
NO_PRI_SEVERITY = 5

SDParams = List[Tuple[str, str]]
StructuredData = List[Tuple[str, SDParams]]


@dataclass(frozen=True)
class SyslogMessage:
    """One parsed syslog message. Absent (NILVALUE ``-``) header fields are None."""

    facility: int
    severity: int
    #: 1 for RFC 5424; 0 for RFC 3164 and unstructured lines.
    version: int
    timestamp: Optional[datetime]
    hostname: Optional[str]
    app_name: Optional[str]
    procid: Optional[str]
    msgid: Optional[str]
    structured_data: StructuredData
    msg: str
    raw: bytes
    #: "rfc5424", "rfc3164" or "plain" (no recognisable header).
    format: str = "rfc5424"
    #: Set when framing cut the message (oversized, or a length prefix that lied).
    truncated: bool = False
    #: The TIMESTAMP field as sent (None when absent or NILVALUE). When it is set but
    #: :attr:`timestamp` is None, the sender's timestamp was out of range or malformed.
    timestamp_text: Optional[str] = None

    @property
    def severity_name(self) -> str:
        return SEVERITY_NAMES[self.severity] if 0 <= self.severity < 8 else str(self.severity)

    @property
    def facility_name(self) -> str:
        return FACILITY_NAMES[self.facility] if 0 <= self.facility < len(FACILITY_NAMES) else str(self.facility)

    def format_line(self, peer: Optional[str] = None) -> str:
        """One readable console line: ``[peer] SEVERITY time host app[pid] msgid: msg [sd]``."""
        parts = []
        if peer:
            parts.append(f"[{peer}]")
        parts.append(self.severity_name)
        if self.timestamp is not None:
            parts.append(_format_ts(self.timestamp))
        elif self.timestamp_text:
            parts.append(self.timestamp_text)  # unparseable: show it as sent rather than nothing
        if self.hostname:
            parts.append(self.hostname)
        if self.app_name or self.procid:
            tag = self.app_name or "-"
            if self.procid:
                tag += f"[{self.procid}]"
            parts.append(tag)
        if self.msgid:
            parts.append(self.msgid)
        # Header fields and SD names are the sender's bytes too: no raw control characters on
        # the console.
        head = _one_line(" ".join(parts))
        text = _one_line(self.msg)
        if self.structured_data:
            sd = _one_line(" ".join(f"[{sid}" + "".join(f" {k}={v!r}" for k, v in params) + "]"
                                    for sid, params in self.structured_data))
            text = f"{text} {sd}" if text else sd
        if self.truncated:
            text += " [truncated]"
        return f"{head}: {text}"


_ANSI_RE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
_CONTROL_RE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


def _one_line(text: str) -> str:
    """Strip ANSI colour codes (ESP-IDF logs use them) and escape control characters."""
    text = _ANSI_RE.sub("", text)
    return _CONTROL_RE.sub(lambda m: {"\n": "\\n", "\r": "\\r"}.get(m.group(), f"\\x{ord(m.group()):02x}"), text)


def _format_ts(ts: datetime) -> str:
    # isoformat rather than strftime: strftime's %Y is platform-dependent for years < 1000.
    text = ts.isoformat(timespec="milliseconds")
    if ts.tzinfo is not None and ts.utcoffset() == timedelta(0):
        return text[:-len("+00:00")] + "Z"
    return text


# --- parsing (pure) ---------------------------------------------------------------------------
_PRI_RE = re.compile(r"<(\d{1,3})>")
#: RFC 5424 section 6: VERSION SP TIMESTAMP SP HOSTNAME SP APP-NAME SP PROCID SP MSGID
_HEADER_5424_RE = re.compile(r"([1-9]\d{0,2}) (\S+) (\S+) (\S+) (\S+) (\S+)(?: |$)")
_TS_5424_RE = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})T([0-9]{2}):([0-9]{2}):([0-9]{2})(?:\.([0-9]{1,6}))?"
    r"(Z|[+-][0-9]{2}:[0-9]{2})\Z"
)
_MONTHS = {m: i for i, m in enumerate(
    ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"), 1)}
#: RFC 3164 section 4.1.2: TIMESTAMP "Mmm dd hh:mm:ss" (day space-padded) SP HOSTNAME SP
_TS_3164_RE = re.compile(r"([A-Z][a-z]{2}) ([ \d]\d) (\d\d):(\d\d):(\d\d) ")
_TAG_3164_RE = re.compile(r"([^\s:\[\]]{1,48})(?:\[([^\]\s]{0,32})\])?: ?")
_SD_NAME_RE = re.compile(r'[^\s=\]"]{1,32}')


def _nil(value: str) -> Optional[str]:
    return None if value == "-" else value


def _parse_ts_5424(text: str) -> Optional[datetime]:
    """RFC 5424 section 6.2.3 TIMESTAMP, or None when any field is out of range or malformed."""
    m = _TS_5424_RE.match(text)
    if not m:
        return None
    year, month, day, hour, minute, second = (int(g) for g in m.groups()[:6])
    frac = m.group(7) or ""
    zone = m.group(8)
    # TIME-HOUR 00-23, TIME-MINUTE 00-59, TIME-SECOND 00-60 (60: a leap second), and the same
    # for TIME-NUMOFFSET; datetime would reject some of these only by raising, some not at all.
    if hour > 23 or minute > 59 or second > 60:
        return None
    if zone == "Z":
        tz = timezone.utc
    else:
        off_hours, off_minutes = int(zone[1:3]), int(zone[4:6])
        if off_hours > 23 or off_minutes > 59:
            return None
        sign = -1 if zone[0] == "-" else 1
        tz = timezone(sign * timedelta(hours=off_hours, minutes=off_minutes))
    try:
        # datetime has no second 60: a leap second lands on :59
        return datetime(year, month, day, hour, minute, min(second, 59), int(frac.ljust(6, "0")), tzinfo=tz)
    except (ValueError, OverflowError):  # month 13, February 30, year 0
        return None


def parse_structured_data(text: str) -> Tuple[StructuredData, str]:
    """Parse STRUCTURED-DATA at the start of ``text``; return (elements, rest after it).

    Raises ValueError when it is malformed. PARAM-VALUE escapes per RFC 5424 section 6.3.3:
    ``\\"``, ``\\\\`` and ``\\]`` stand for the character; a backslash before anything else is
    kept as is.
    """
    if text.startswith("-"):
        return [], text[1:]
    elements: StructuredData = []
    i = 0
    n = len(text)
    while i < n and text[i] == "[":
        m = _SD_NAME_RE.match(text, i + 1)
        if not m:
            raise ValueError(f"bad SD-ID at {i + 1}")
        sd_id = m.group()
        i = m.end()
        params: SDParams = []
        while True:
            if i >= n:
                raise ValueError("unterminated SD-ELEMENT")
            if text[i] == "]":
                i += 1
                break
            if text[i] != " ":
                raise ValueError(f"expected SP or ] at {i}")
            m = _SD_NAME_RE.match(text, i + 1)
            if not m or m.end() + 1 >= n or text[m.end()] != "=" or text[m.end() + 1] != '"':
                raise ValueError(f"bad SD-PARAM at {i + 1}")
            name = m.group()
            i = m.end() + 2
            value = []
            while True:
                if i >= n:
                    raise ValueError("unterminated PARAM-VALUE")
                c = text[i]
                if c == "\\" and i + 1 < n and text[i + 1] in '"\\]':
                    value.append(text[i + 1])
                    i += 2
                elif c == '"':
                    i += 1
                    break
                else:
                    value.append(c)
                    i += 1
            params.append((name, "".join(value)))
        elements.append((sd_id, params))
    if not elements:
        raise ValueError("STRUCTURED-DATA is neither '-' nor '['")
    return elements, text[i:]


def _strip_msg(text: str) -> str:
    if text.startswith("\ufeff"):
        text = text[1:]
    return text.rstrip("\r\n\0")


class _CommonFields(TypedDict, total=False):
    """The :class:`SyslogMessage` fields every parse branch sets the same way."""

    raw: bytes
    truncated: bool
    timestamp_text: Optional[str]


def parse_message(raw: Union[bytes, bytearray, memoryview, str], *, truncated: bool = False,
                  now: Optional[datetime] = None) -> SyslogMessage:
    """Parse one syslog message (RFC 5424, RFC 3164, or a bare line). Never raises on any content.

    A header field that is out of range or malformed (a timestamp with month 13, hour 25 or
    offset +24:00) is left as None, its text kept (:attr:`SyslogMessage.timestamp_text`), and
    the rest of the message is parsed as usual.

    Args:
        raw: the message without framing: bytes, or text (stored UTF-8 encoded in ``raw``).
        truncated: framing cut it (carried into the result).
        now: reference time for RFC 3164 timestamps, which carry no year (default: now).
    """
    data = raw.encode("utf-8", errors="surrogatepass") if isinstance(raw, str) else bytes(raw)
    # Text is parsed exactly as its bytes would be (lone surrogates become U+FFFD).
    text = data.decode("utf-8", errors="replace")
    base: _CommonFields = {"raw": data, "truncated": truncated}
    m = _PRI_RE.match(text)
    pri = int(m.group(1)) if m else -1
    if not m or pri > 191:
        return SyslogMessage(NO_PRI_FACILITY, NO_PRI_SEVERITY, 0, None, None, None, None, None, [],
                             _strip_msg(text), format="plain", **base)
    facility, severity = divmod(pri, 8)
    rest = text[m.end():]

    h = _HEADER_5424_RE.match(rest)
    if h:
        ts_text = h.group(2)
        timestamp = None if ts_text == "-" else _parse_ts_5424(ts_text)
        base["timestamp_text"] = None if ts_text == "-" else ts_text
        after = rest[h.end():]
        try:
            sd, after_sd = parse_structured_data(after)
        except ValueError:
            sd, after_sd = None, after
        if sd is not None and (after_sd == "" or after_sd.startswith(" ")):
            return SyslogMessage(
                facility, severity, int(h.group(1)), timestamp,
                _nil(h.group(3)), _nil(h.group(4)), _nil(h.group(5)), _nil(h.group(6)),
                sd, _strip_msg(after_sd[1:]), format="rfc5424", **base,
            )
        # A header but broken STRUCTURED-DATA: keep the header, the rest is the message.
        return SyslogMessage(
            facility, severity, int(h.group(1)), timestamp,
            _nil(h.group(3)), _nil(h.group(4)), _nil(h.group(5)), _nil(h.group(6)),
            [], _strip_msg(after), format="rfc5424", **base,
        )

    t = _TS_3164_RE.match(rest)
    if t and t.group(1) in _MONTHS:
        ref = now or datetime.now()
        base["timestamp_text"] = rest[:t.end() - 1]
        ts: Optional[datetime]
        try:
            stamp = datetime(ref.year, _MONTHS[t.group(1)], int(t.group(2)),
                             int(t.group(3)), int(t.group(4)), int(t.group(5)))
            # "Dec 31" received in January. A difference, not ref + 1 day: that overflows near
            # datetime.max.
            if stamp - ref.replace(tzinfo=None) > timedelta(days=1):
                stamp = stamp.replace(year=ref.year - 1)
            ts = stamp
        except ValueError:  # "Feb 30", "Oct 11 25:00:00", or no year before the reference's
            ts = None
        after = rest[t.end():]
        hostname: Optional[str] = None
        tag = _TAG_3164_RE.match(after)
        if not tag:  # "HOSTNAME TAG: msg"
            host_m = re.match(r"(\S+) ", after)
            if host_m:
                hostname = host_m.group(1)
                after = after[host_m.end():]
                tag = _TAG_3164_RE.match(after)
        app = procid = None
        if tag:
            app, procid = tag.group(1), tag.group(2)
            after = after[tag.end():]
        return SyslogMessage(facility, severity, 0, ts, hostname, app, procid, None, [],
                             _strip_msg(after), format="rfc3164", **base)

    return SyslogMessage(facility, severity, 0, None, None, None, None, None, [], _strip_msg(rest),
                         format="plain", **base)


# --- framing (pure) ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Frame:
    """One message cut out of the stream; ``problem`` says what went wrong if it was cut."""

    data: bytes
    problem: Optional[str] = None

    @property
    def truncated(self) -> bool:
        return self.problem is not None


_COUNT_RE = re.compile(rb"([1-9][0-9]{0,9}) ")
_DIGITS_RE = re.compile(rb"[0-9]{1,10}\Z")
_TERMINATOR_RE = re.compile(rb"[\n\0]")
_FRAME_START = frozenset(b"0123456789<\r\n\0")


class FrameDecoder:
    """RFC 6587 de-framer for one TCP stream (sans I/O). Bounded by ``max_frame`` bytes.

    ``feed(data)`` returns the complete frames; ``flush()`` (at EOF or close) returns the final
    unterminated message, if any; ``idle()`` does the same for a sender that stopped mid-frame.

    An octet count beyond ``max_frame`` is never allocated: the first ``max_frame`` bytes are
    delivered (cut) and the rest is counted off without buffering it. Likewise a line longer than
    ``max_frame`` is cut and the rest of it discarded up to its terminator. Both discards trust
    the sender, so a lying count or a missing LF would swallow the messages after it; ``idle()``
    (the caller's idle timer, see :attr:`in_frame`) and ``flush()`` end them, so the next byte
    starts a new frame.
    """

    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        if max_frame < 16:
            raise ValueError("max_frame must be at least 16 bytes")
        self.max_frame = max_frame
        self._buf = bytearray()
        self._need = 0  # bytes still expected for an octet-counted frame (0: none in progress)
        self._claimed = 0  # the length prefix of that frame
        self._cut_rest = 0  # bytes of an oversized counted frame to discard after delivering
        self._skip = 0  # bytes being discarded now
        self._discard_line = False  # discarding an over-long LF frame until its terminator
        self._scan = 0  # bytes of _buf already searched for a terminator
        self._after_count = False  # previous frame was octet-counted (sync check)

    @property
    def pending(self) -> bool:
        """True while part of a frame is buffered."""
        return bool(self._buf) or self._need > 0

    @property
    def discarding(self) -> bool:
        """True while the rest of an oversized frame or line is being thrown away."""
        return self._skip > 0 or self._cut_rest > 0 or self._discard_line

    @property
    def in_frame(self) -> bool:
        """True mid-frame: buffering part of one, or discarding the rest of an oversized one.

        While this holds, a caller should call :meth:`idle` once the sender has been quiet for
        a while, or a lying length (or a line that never ends) takes the next message with it.
        """
        return self.pending or self.discarding

    def reset(self) -> None:
        """Forget everything buffered or being discarded: the next byte starts a new frame."""
        self._buf.clear()
        self._need = self._claimed = self._cut_rest = self._skip = self._scan = 0
        self._discard_line = self._after_count = False

    def feed(self, data: Union[bytes, bytearray, memoryview]) -> List[Frame]:
        if self._skip and not self._buf:
            # Count skipped bytes off the input without copying them into the buffer.
            n = min(self._skip, len(data))
            self._skip -= n
            data = memoryview(data)[n:]
        self._buf += data
        out: List[Frame] = []
        buf = self._buf
        mf = self.max_frame
        while True:
            if self._skip:
                n = min(self._skip, len(buf))
                del buf[:n]
                self._skip -= n
                if self._skip:
                    break
                continue
            if self._discard_line:
                m = _TERMINATOR_RE.search(buf)
                if not m:
                    buf.clear()
                    break
                del buf[:m.end()]
                self._discard_line = False
                continue
            if self._need:
                if len(buf) < self._need:
                    break
                frame = bytes(buf[:self._need])
                del buf[:self._need]
                problem = None
                if self._cut_rest:
                    problem = (f"octet-counted frame of {self._claimed} bytes exceeds max_frame {mf}: "
                               f"cut to {mf} bytes, {self._cut_rest} discarded")
                    self._skip = self._cut_rest
                    self._cut_rest = 0
                self._need = 0
                self._after_count = True
                out.append(Frame(frame, problem))
                continue
            # At a frame boundary: terminators between frames are harmless (senders often add
            # an LF after an octet-counted frame).
            start = 0
            while start < len(buf) and buf[start] in b"\r\n\0":
                start += 1
            if start:
                del buf[:start]
                self._scan = 0
            if not buf:
                break
            out_of_sync = self._after_count and buf[0] not in _FRAME_START
            self._after_count = False
            if 0x31 <= buf[0] <= 0x39:  # RFC 6587 3.4.1: MSG-LEN = NONZERO-DIGIT *DIGIT, then SP
                m = _COUNT_RE.match(buf)
                if m:
                    claimed = int(m.group(1))
                    del buf[:m.end()]
                    self._scan = 0
                    self._claimed = claimed
                    if claimed > mf:
                        self._need, self._cut_rest = mf, claimed - mf
                    else:
                        self._need = claimed
                    continue
                if _DIGITS_RE.match(buf):
                    break  # "123" so far: wait for the SP (or whatever follows)
            # RFC 6587 3.4.2: non-transparent framing, LF (also CRLF, NUL) terminated.
            m = _TERMINATOR_RE.search(buf, self._scan)
            if not m:
                if len(buf) > mf:
                    out.append(Frame(bytes(buf[:mf]), f"no line terminator within max_frame {mf} bytes: "
                                                      "cut, rest of the line discarded"))
                    buf.clear()
                    self._discard_line = True
                    self._scan = 0
                else:
                    self._scan = len(buf)
                break
            end = m.start()
            frame = bytes(buf[:end])
            del buf[:m.end()]
            self._scan = 0
            if frame.endswith(b"\r"):
                frame = frame[:-1]
            problem = None
            if len(frame) > mf:
                frame, problem = frame[:mf], f"line of {len(frame)} bytes exceeds max_frame {mf}: cut"
            elif out_of_sync:
                problem = "framing out of sync (an octet count was shorter than its message?)"
            if frame:
                out.append(Frame(frame, problem))
        return out

    def flush(self, reason: str = "connection closed") -> List[Frame]:
        """Deliver whatever partial frame is buffered (end of stream) and reset."""
        out: List[Frame] = []
        if self._need:
            got = len(self._buf)
            if got:
                out.append(Frame(bytes(self._buf), f"{reason}: length prefix said {self._claimed} bytes, "
                                                   f"only {got} arrived (cut)"))
            else:
                log.debug("%s: length prefix %d with no message bytes", reason, self._claimed)
        elif self._buf and not self._discard_line and not self._skip:
            frame = bytes(self._buf).rstrip(b"\r")
            if frame:
                out.append(Frame(frame))  # a final unterminated message is normal
        self.reset()
        return out

    def idle(self, seconds: float) -> List[Frame]:
        """The sender went quiet mid-frame for ``seconds``: deliver the partial frame, and stop
        discarding the rest of an oversized one (a sender that pauses has finished the frame,
        whatever its length prefix said), so the next byte starts a new frame."""
        return self.flush(f"no data for {seconds:g} s")


# --- the receiver -----------------------------------------------------------------------------
Address = Tuple[str, int]


class SyslogSink(Protocol):
    """Where received messages are recorded: :class:`~usbip_backend.pcap.PcapWriter` is one."""

    def write_syslog(self, message: bytes, timestamp: Optional[float] = None,
                     src: Optional[Address] = None, dst: Optional[Address] = None) -> None: ...


class SyslogReceiver:
    """Receive syslog over TCP: print each message and record it into a pcap writer.

    Args:
        host, port: client mode: the device's log service to connect to (ESP32 bridge: TCP 1514);
            listen mode: the address to listen on (port 0 picks a free port, see :attr:`port`).
        pcap: a :class:`~usbip_backend.pcap.PcapWriter` (or anything with ``write_syslog``).
        listen: accept senders instead of connecting out.
        on_message: called with each :class:`SyslogMessage` (from a receiver thread).
        console: True prints one line per message to stderr; a text stream prints there;
            False/None prints nothing. Client mode also tells the console, once per outage,
            that no device log is being captured (and why), and once when a connection
            succeeds after that; with no console these notices are logged instead.
        max_frame: bound on one message; longer frames are cut and reported.
        backoff_initial, backoff_max: reconnect delays in client mode, doubling up to the
            bound. They apply whether the port refuses or accepts and then closes at once.
        backoff_reset_after: client mode: a connection that delivered a message, or stayed up
            this many seconds, counts as healthy: the next reconnect starts again from
            ``backoff_initial``. Any other connection keeps doubling the delay.
        connect_timeout: for one connection attempt.
        partial_timeout: the idle bound, in seconds: when a sender is quiet this long in the
            middle of a frame, the partial frame is delivered as is (cut) and the discarding of
            an oversized frame's or line's rest ends, so a length prefix that lied cannot take
            the next message with it. None or 0: never (trust every length prefix).
        max_connections: listen mode: senders served at once.
    """

    def __init__(
        self,
        host: str,
        port: int = DEFAULT_PORT,
        pcap: Optional[SyslogSink] = None,
        *,
        listen: bool = False,
        on_message: Optional[Callable[[SyslogMessage], None]] = None,
        console: Union[bool, IO[str], None] = True,
        max_frame: int = DEFAULT_MAX_FRAME,
        backoff_initial: float = 0.5,
        backoff_max: float = 8.0,
        backoff_reset_after: float = 5.0,
        connect_timeout: float = 5.0,
        partial_timeout: Optional[float] = 1.0,
        max_connections: int = 16,
    ) -> None:
        if backoff_initial <= 0 or backoff_max < backoff_initial:
            raise ValueError("need 0 < backoff_initial <= backoff_max")
        if backoff_reset_after < 0:
            raise ValueError("backoff_reset_after must not be negative")
        if partial_timeout is not None and partial_timeout < 0:
            raise ValueError("partial_timeout must not be negative")
        self.host = host
        self.port = port
        self.pcap = pcap
        self.listen = listen
        self.on_message = on_message
        self.console = console
        self.max_frame = max_frame
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.backoff_reset_after = backoff_reset_after
        self.connect_timeout = connect_timeout
        self.partial_timeout = partial_timeout
        self.max_connections = max_connections
        self.messages_received = 0
        self.connections = 0
        self.problems = 0
        self._print_failures = 0
        self._lock = threading.Lock()
        self._print_lock = threading.Lock()
        #: client mode: connection attempts that failed (refused, unreachable, timed out)
        self.connect_failures = 0
        self._stopping = False
        self._stop_event = threading.Event()
        self._started = False
        self._connected = False
        self._state_changed = threading.Condition(self._lock)
        self._outage_told = False  # the "no device log" notice went out for the current outage
        self._wake_r: Optional[socket.socket] = None
        self._wake_w: Optional[socket.socket] = None
        self._listener: Optional[socket.socket] = None
        self._thread: Optional[threading.Thread] = None
        self._conn_threads: List[threading.Thread] = []

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> "SyslogReceiver":
        """Start the receiver thread (listen mode binds first, so a busy port raises here)."""
        with self._lock:
            if self._started:
                raise RuntimeError("SyslogReceiver already started")
            self._started = True
        self._wake_r, self._wake_w = socket.socketpair()
        try:
            if self.listen:
                self._listener = socket.create_server((self.host, self.port), backlog=8)
                self.port = self._listener.getsockname()[1]
                target = self._accept_loop
                name = f"usbip-syslog-listen-{self.port}"
            else:
                target = self._client_loop
                name = f"usbip-syslog-{self.host}:{self.port}"
            self._thread = threading.Thread(target=target, name=name, daemon=True)
            self._thread.start()
        except BaseException:
            self._close_sockets()
            with self._lock:
                self._started = False
            raise
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop, deliver any final unterminated message, join threads, close sockets."""
        with self._lock:
            if not self._started or self._stopping:
                return
            self._stopping = True
        self._stop_event.set()  # ends a back-off wait at once
        try:
            if self._wake_w is not None:
                self._wake_w.send(b"x")  # wakes every select() of ours (level-triggered, never read)
        except OSError:
            pass
        deadline = time.monotonic() + timeout
        if self._thread is not None:
            self._thread.join(max(0.0, deadline - time.monotonic()))
        with self._lock:
            threads = list(self._conn_threads)
        for t in threads:
            t.join(max(0.0, deadline - time.monotonic()))
        alive = [t.name for t in threads + ([self._thread] if self._thread else []) if t.is_alive()]
        if alive:
            log.warning("syslog receiver threads did not stop in time: %s", alive)
        self._close_sockets()

    def __enter__(self) -> "SyslogReceiver":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def address(self) -> Address:
        return (self.host, self.port)

    def _close_sockets(self) -> None:
        for s in (self._listener, self._wake_r, self._wake_w):
            if s is not None:
                s.close()
        self._listener = self._wake_r = self._wake_w = None

    # -- client mode -----------------------------------------------------------------------
    def _client_loop(self) -> None:
        # One delay sequence for refused attempts and for connections that end at once: a port
        # that accepts and closes immediately must not be hammered thousands of times a second.
        delay = self.backoff_initial
        failures = 0  # consecutive attempts that did not connect
        short_lived = 0  # consecutive connections that ended without proving healthy
        while not self._stopping:
            try:
                sock, error = self._connect()
            except Exception as exc:  # a bug here must not end the receiver for good
                log.exception("syslog connect to %s:%d failed unexpectedly", self.host, self.port)
                sock, error = None, repr(exc)
            if sock is None:
                if self._stopping:
                    break
                failures += 1
                with self._lock:
                    self.connect_failures += 1
                if not self._outage_told:
                    # Said once per outage, however many attempts fail; the capture is what the
                    # person misses, so the notice leads with that.
                    self._outage_told = True
                    self._notice(
                        f"syslog: no device log is being captured: cannot connect to {self._where()}: "
                        f"{error}; retrying (every {self.backoff_initial:g} s, backing off to "
                        f"{self.backoff_max:g} s) until stopped", logging.WARNING)
                else:
                    log.debug("syslog connect to %s failed again (%s); next try in %.2f s",
                              self._where(), error, delay)
                if self._wait(delay):
                    break
                delay = min(delay * 2, self.backoff_max)
                continue
            with self._lock:
                self.connections += 1
                received_before = self.messages_received
                self._connected = True
                self._state_changed.notify_all()
            if self._outage_told:
                self._outage_told = False
                attempts = f"{failures} failed attempt" + ("" if failures == 1 else "s")
                self._notice(f"syslog: connected to {self._where()} after {attempts}; capturing the device log",
                             logging.INFO)
            else:
                log.log(logging.DEBUG if short_lived else logging.INFO, "connected to syslog at %s", self._where())
            failures = 0
            started = time.monotonic()
            try:
                self._serve(sock)
            except Exception:
                log.exception("syslog connection to %s failed", self._where())
            finally:
                sock.close()
                with self._lock:
                    self._connected = False
                    self._state_changed.notify_all()
            if self._stopping:
                break
            lasted = time.monotonic() - started
            with self._lock:
                delivered = self.messages_received - received_before
            if delivered or lasted >= self.backoff_reset_after:
                short_lived = 0
                delay = self.backoff_initial
                log.info("syslog connection to %s closed after %.1f s (device restarting?); "
                         "reconnecting in %.2f s", self._where(), lasted, delay)
            else:
                short_lived += 1
                log.log(logging.WARNING if short_lived == 1 else logging.DEBUG,
                        "syslog at %s closed at once (after %.2f s, no message); reconnecting in %.2f s, "
                        "backing off up to %.1f s", self._where(), lasted, delay, self.backoff_max)
            if self._wait(delay):
                break
            delay = min(delay * 2, self.backoff_max)

    def _where(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def _wait(self, seconds: float) -> bool:
        """Wait up to ``seconds`` unless stop() is called; True when stopping."""
        return self._stop_event.wait(seconds) or self._stopping

    @property
    def connected(self) -> bool:
        """Client mode: True while a connection to the device's log port is up."""
        with self._lock:
            return self._connected

    def wait_connected(self, timeout: Optional[float] = None) -> bool:
        """Client mode: wait until a connection to the log port is up; True if it is."""
        with self._lock:
            return self._state_changed.wait_for(lambda: self._connected, timeout)

    def _notice(self, text: str, level: int) -> None:
        """Tell the person once: on the console when there is one (logged at INFO then, so a
        console and a log handler on the same terminal do not show it twice), else logged at
        ``level``."""
        stream = self._console_stream()
        if stream is None:
            log.log(level, "%s", text)
            return
        log.info("%s", text)
        try:
            with self._print_lock:
                stream.write(text + "\n")
                stream.flush()
        except Exception:  # a broken console must not end the receiver; the log has the text
            log.debug("printing a syslog notice failed", exc_info=True)

    def _console_stream(self) -> Optional[IO[str]]:
        if not self.console:
            return None
        return sys.stderr if self.console is True else self.console

    def _connect(self) -> Tuple[Optional[socket.socket], str]:
        """One non-blocking connection attempt that stop() can interrupt; (None, why) if it failed."""
        assert self._wake_r is not None
        try:
            infos = socket.getaddrinfo(self.host, self.port, type=socket.SOCK_STREAM)
        except OSError as exc:
            return None, f"cannot resolve {self.host}: {exc}"
        family, stype, proto, _, addr = infos[0]
        sock = socket.socket(family, stype, proto)
        try:
            sock.setblocking(False)
            err = sock.connect_ex(addr)
            if err not in (0, errno.EINPROGRESS, errno.EWOULDBLOCK, errno.EALREADY):
                sock.close()
                return None, _errno_text(err)
            if err:
                _, writable, _ = select.select([self._wake_r], [sock], [], self.connect_timeout)
                if self._stopping:
                    sock.close()
                    return None, "stopping"
                if not writable:
                    sock.close()
                    return None, f"timed out after {self.connect_timeout:g} s"
                err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err:
                    sock.close()
                    return None, _errno_text(err)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            return sock, ""
        except OSError as exc:
            sock.close()
            return None, _errno_text(exc.errno) if exc.errno else str(exc)

    # -- listen mode -----------------------------------------------------------------------
    def _accept_loop(self) -> None:
        assert self._listener is not None and self._wake_r is not None
        listener = self._listener
        listener.setblocking(False)
        while not self._stopping:
            readable, _, _ = select.select([listener, self._wake_r], [], [])
            if self._stopping or self._wake_r in readable:
                break
            try:
                conn, peer = listener.accept()
            except (BlockingIOError, InterruptedError):
                continue
            except OSError as exc:
                log.warning("syslog listener on port %d: accept failed: %s", self.port, exc)
                if self._wait(0.1):
                    break
                continue
            with self._lock:
                self._conn_threads = [t for t in self._conn_threads if t.is_alive()]
                busy = len(self._conn_threads) >= self.max_connections
                if not busy:
                    self.connections += 1
                    t = threading.Thread(target=self._serve_accepted, args=(conn,),
                                         name=f"usbip-syslog-conn-{peer[0]}:{peer[1]}", daemon=True)
                    self._conn_threads.append(t)
            if busy:
                log.warning("syslog listener: refusing %s:%d, already %d senders", peer[0], peer[1],
                            self.max_connections)
                conn.close()
                continue
            log.info("syslog sender connected from %s:%d", peer[0], peer[1])
            try:
                t.start()
            except RuntimeError as exc:  # "can't start new thread": refuse this one, keep listening
                log.warning("syslog listener: cannot serve %s:%d: %s", peer[0], peer[1], exc)
                with self._lock:
                    self._conn_threads.remove(t)
                conn.close()

    def _serve_accepted(self, conn: socket.socket) -> None:
        try:
            self._serve(conn)
        except Exception:
            log.exception("syslog connection from %s failed", _peer_text(_peername(conn)))
        finally:
            conn.close()

    # -- one stream ------------------------------------------------------------------------
    def _serve(self, sock: socket.socket) -> None:
        """Read one connection until EOF or stop(); deliver every message on the way.

        Each connection gets a new decoder, so nothing half-framed carries over a reconnect.
        """
        assert self._wake_r is not None
        peer = _peername(sock)
        try:
            local: Optional[Address] = sock.getsockname()[:2]
        except OSError:
            local = None
        sock.setblocking(False)
        decoder = FrameDecoder(self.max_frame)
        wake = self._wake_r
        while True:
            timeout = self.partial_timeout if self.partial_timeout and decoder.in_frame else None
            readable, _, _ = select.select([sock, wake], [], [], timeout)
            if not readable:
                assert timeout is not None
                if decoder.discarding:
                    log.info("syslog from %s: no data for %g s while discarding the rest of an oversized "
                             "frame: back in sync, the next byte starts a new message", _peer_text(peer), timeout)
                self._deliver(decoder.idle(timeout), peer, local)
                continue
            if sock in readable:
                try:
                    data = sock.recv(65536)
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError as exc:
                    log.info("syslog connection from %s: %s", _peer_text(peer), exc)
                    data = b""
                if not data:
                    self._deliver(decoder.flush(), peer, local)
                    return
                self._deliver(self._feed(decoder, data, peer), peer, local)
                continue
            # stop(): take what already arrived (bounded), then the final unterminated message.
            for _ in range(64):
                try:
                    data = sock.recv(65536)
                except OSError:
                    break
                if not data:
                    break
                self._deliver(self._feed(decoder, data, peer), peer, local)
            self._deliver(decoder.flush("receiver stopped"), peer, local)
            return

    @staticmethod
    def _feed(decoder: FrameDecoder, data: bytes, peer: Optional[Address]) -> List[Frame]:
        try:
            return decoder.feed(data)
        except Exception:  # a decoder bug: lose what it held, not the connection or the thread
            log.exception("syslog from %s: framing failed; %d bytes dropped, starting afresh",
                          _peer_text(peer), len(data))
            decoder.reset()
            return []

    def _deliver(self, frames: List[Frame], peer: Optional[Address], local: Optional[Address]) -> None:
        for frame in frames:
            try:
                self._deliver_one(frame, peer, local)
            except Exception:  # whatever one message does, the next one is still handled
                log.exception("syslog from %s: handling a message failed: %r", _peer_text(peer), frame.data[:200])

    def _deliver_one(self, frame: Frame, peer: Optional[Address], local: Optional[Address]) -> None:
        now = time.time()
        if frame.problem:
            with self._lock:
                self.problems += 1
                count = self.problems
            level = logging.WARNING if count <= 20 else logging.DEBUG
            log.log(level, "syslog from %s: %s", _peer_text(peer), frame.problem)
        try:
            msg = parse_message(frame.data, truncated=frame.truncated)
        except Exception:  # documented never to raise; if it does, deliver the bytes unparsed
            log.exception("syslog from %s: parsing failed; delivering the message unparsed", _peer_text(peer))
            msg = SyslogMessage(NO_PRI_FACILITY, NO_PRI_SEVERITY, 0, None, None, None, None, None, [],
                                frame.data.decode("utf-8", errors="replace"), raw=frame.data,
                                format="plain", truncated=frame.truncated)
        with self._lock:
            self.messages_received += 1
        if self.pcap is not None:
            try:
                self.pcap.write_syslog(frame.data, timestamp=now, src=peer, dst=local)
            except Exception:
                log.exception("writing a syslog message to the capture failed")
        self._print(msg, peer)
        if self.on_message is not None:
            try:
                self.on_message(msg)
            except Exception:
                log.exception("syslog on_message callback failed")

    def _print(self, msg: SyslogMessage, peer: Optional[Address]) -> None:
        stream = self._console_stream()
        if stream is None:
            return
        try:
            line = msg.format_line(_peer_text(peer) if self.listen else None)
            with self._print_lock:
                stream.write(line + "\n")
                stream.flush()
        except (OSError, ValueError):
            pass  # console closed (or cannot encode): the capture and callback still get it
        except Exception:
            with self._lock:
                self._print_failures += 1
                first = self._print_failures == 1
            # a console that keeps failing must not flood the log with tracebacks
            log.log(logging.WARNING if first else logging.DEBUG, "printing a syslog message failed",
                    exc_info=first)


def _errno_text(err: int) -> str:
    """``connection refused (ECONNREFUSED)``: the words for the person, the name for a search."""
    words = os.strerror(err)
    words = words[:1].lower() + words[1:]
    name = errno.errorcode.get(err)
    return f"{words} ({name})" if name else words


def _peername(sock: socket.socket) -> Optional[Address]:
    try:
        name = sock.getpeername()
    except OSError:
        return None
    host: str = name[0]  # IPv4 (host, port) or IPv6 (host, port, flowinfo, scope_id)
    port: int = name[1]
    return (host, port)


def _peer_text(peer: Optional[Address]) -> str:
    if not peer:
        return "?"
    return f"{peer[0]}:{peer[1]}"
