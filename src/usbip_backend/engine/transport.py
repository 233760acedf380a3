"""Transports: how the engine's byte stream reaches a server (TCP, TLS, SSH, a command's stdio).

USB/IP has no encryption or authentication of its own: servers are put behind a TLS terminator
(stunnel), an SSH jump host or a VPN. :func:`open_stream` opens the stream an OP_* exchange, and
then the engine, run on:

* plain TCP (``host:port``), the default;
* TLS (``ssl=True`` for ``ssl.create_default_context()``, or an ``ssl.SSLContext`` used as
  given), the certificate checked against ``host`` (``server_hostname = host``);
* ``connect=callable``: ``connect(host, port, timeout)`` returns a connected socket-like object
  (:class:`SocketLike`), e.g. a paramiko ``direct-tcpip`` channel, or a socket already connected
  through a proxy; :func:`command_connector` makes one that runs a command (``ssh -W %h:%p
  jumphost``) whose stdin/stdout carry the stream. With ``ssl`` too, TLS runs inside it.

The engine works on a kernel stream socket and nothing else. Its fast paths need one: receives
into preallocated buffers bounded by SO_RCVTIMEO, ``sendmsg`` scatter-gather, non-blocking
``MSG_DONTWAIT`` sends and reads (``pump_ready``), poll()/select() and an event loop's
``add_reader`` on the descriptor, with a reader thread and the sending thread on the socket at
once. A TLS socket breaks each of them: ``ssl.SSLSocket`` has no ``sendmsg`` and refuses flags;
a receive timeout set with SO_RCVTIMEO is swallowed (OpenSSL retries the read, so a 20 ms bound
waits until data comes); decrypted bytes buffered inside OpenSSL (``pending()``) are invisible to
poll() and to the event loop; and OpenSSL does not allow one connection's ``SSL`` object to be
used by two threads at once. A paramiko channel or a pipe has no socket options at all. So
:func:`engine_socket` is the one place that decides: a kernel stream socket (TCP, a Unix socket,
an end of ``socket.socketpair()``) is used as it is; anything else is *relayed*: the engine gets
one end of a ``socket.socketpair()`` and a relay carries the bytes between the other end and the
transport (one thread for TLS, driving the ``SSLSocket`` non-blocking, so OpenSSL is only ever
used by that thread; two blocking threads for any other socket-like object). The relay is owned
by the engine's socket: closing it stops the relay and closes the transport. The cost is one
thread hand-over each way per message (``tools/bench/run.py --only tls`` measures it against
plain TCP).

A commanded transport (:func:`command_connector`) needs no relay on POSIX: the command's stdin
and stdout *are* one end of a socketpair, the engine has the other.
"""

from __future__ import annotations

import logging
import os
import select
import shlex
import socket
import ssl as _ssl
import subprocess
import tempfile
import threading
import time
from typing import IO, Callable, List, Optional, Protocol, Sequence, Union

from ..errors import ConnectionLostError, TlsError, UsbipTimeoutError

_log = logging.getLogger("usbip_backend.transport")

__all__ = [
    "SocketLike", "Connector", "TlsArg", "TlsError", "open_stream", "engine_socket", "closed_reason",
    "command_connector", "tls_context",
]


class SocketLike(Protocol):
    """The least a ``connect=`` callable's result must offer: a connected, blocking byte stream.

    ``recv(n)`` returns up to ``n`` bytes, blocking until at least one is there, and ``b""`` at
    the end of the stream; ``sendall(data)`` sends all of it (blocking); ``close()`` ends it and
    must wake a ``recv`` blocked in another thread. If it has ``shutdown(how)``, that is called
    first (a socket's ``close()`` alone wakes no ``recv``; its ``shutdown()`` does; a paramiko
    channel's ``close()`` does). Nothing else is used: no ``fileno()``, no options, no timeouts
    (the engine times everything on its own side of the relay), and the two directions are used
    by two threads at once. A ``socket.socket`` (TCP or Unix) is used directly, with no relay; an
    ``ssl.SSLSocket`` is relayed by one thread that drives it non-blocking.
    """

    def recv(self, bufsize: int, /) -> bytes: ...

    def sendall(self, data: bytes, /) -> object: ...

    def close(self) -> None: ...


#: ``connect(host, port, timeout)``: a connected :class:`SocketLike` to the server (``timeout``
#: in seconds, None for no limit). Errors it raises (OSError, an SSH library's own) become
#: :class:`~usbip_backend.errors.ConnectionLostError` (timeouts: ``UsbipTimeoutError``).
Connector = Callable[[str, int, Optional[float]], SocketLike]
#: ``ssl=``: None or False for plain TCP, True for ``ssl.create_default_context()``, or a context.
TlsArg = Union[bool, _ssl.SSLContext, None]

#: How long closing a relayed socket waits for its relay to end (it is told to at once).
_JOIN = 5.0
#: Most bytes a relay holds in each direction before it stops reading that side.
_LIMIT = 1 << 18
_CHUNK = 1 << 16
#: How long a command transport gets to exit by itself after its stdin closed, then after SIGTERM.
_COMMAND_GRACE = 1.0


def tls_context(ssl: TlsArg) -> Optional[_ssl.SSLContext]:
    """The context ``ssl=`` stands for (None: no TLS)."""
    if ssl is None or ssl is False:
        return None
    if ssl is True:
        return _ssl.create_default_context()
    if isinstance(ssl, _ssl.SSLContext):
        return ssl
    raise TypeError(f"ssl= takes True, False, None or an ssl.SSLContext, not {type(ssl).__name__}")


# -- opening a stream --------------------------------------------------------------------------------
def open_stream(host: str, port: int, timeout: Optional[float], *, ssl: TlsArg = None,
                connect: Optional[Connector] = None) -> socket.socket:
    """A connected kernel stream socket to the server, for an OP_* exchange and then the engine.

    ``timeout`` (seconds; None: no limit) bounds the connect and the TLS handshake together.

    Raises:
        UsbipTimeoutError: no connection (or no handshake) within ``timeout``.
        TlsError: the TLS handshake failed (certificate, name, not TLS on that port).
        ConnectionLostError: refused, unreachable, the ``connect`` callable failed.
        TypeError: ``ssl`` or ``connect``'s result is of the wrong kind.
    """
    context = tls_context(ssl)
    where = f"{host}:{port}"
    deadline = None if timeout is None else time.monotonic() + timeout
    if connect is None:
        sock = _tcp_connect(host, port, timeout)
    else:
        sock = engine_socket(_call_connector(connect, host, port, timeout), where)
    if context is None:
        return sock
    # wrap_socket() takes the descriptor over (the socket object is detached): whatever serves a
    # relayed socket's other end is handed on to the TLS relay, which stops it when it ends.
    behind: Optional[_Owner] = None
    if isinstance(sock, _OwnedSocket):
        behind, sock._owner = sock._owner, None
    left = None if deadline is None else max(deadline - time.monotonic(), 0.001)
    try:
        tls = _handshake(context, sock, host, where, left)
    except BaseException:
        if behind is not None:
            behind.stop()
        raise
    return _relayed(_TlsRelay, tls, where, behind)


def _tcp_connect(host: str, port: int, timeout: Optional[float]) -> socket.socket:
    """A TCP connection the way usbip_net_tcp_connect() makes one (TCP_NODELAY, SO_KEEPALIVE)."""
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except socket.timeout as exc:
        raise UsbipTimeoutError(f"connecting to {host}:{port} timed out after {timeout:g} s") from exc
    except ConnectionRefusedError as exc:
        raise ConnectionLostError(f"connection to {host}:{port} refused: is a USB/IP server running there?") from exc
    except OSError as exc:
        raise ConnectionLostError(f"cannot connect to {host}:{port}: {exc.strerror or exc}") from exc
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    except OSError:  # pragma: no cover - exotic platforms
        pass
    return sock


def _call_connector(connect: Connector, host: str, port: int, timeout: Optional[float]) -> SocketLike:
    """Run a ``connect=`` callable, its failures as this package's errors."""
    try:
        stream = connect(host, port, timeout)
    except (socket.timeout, TimeoutError) as exc:
        raise UsbipTimeoutError(f"connecting to {host}:{port} through {_name(connect)} timed out: {exc}") from exc
    except Exception as exc:  # an SSH library's errors are its own classes: all mean "no connection"
        raise ConnectionLostError(f"cannot connect to {host}:{port} through {_name(connect)}: "
                                  f"{type(exc).__name__}: {exc}") from exc
    for method in ("recv", "sendall", "close"):
        if not callable(getattr(stream, method, None)):
            close = getattr(stream, "close", None)
            if callable(close):
                close()
            raise TypeError(f"{_name(connect)} returned {type(stream).__name__}, which has no {method}(); "
                            f"connect= must return a connected socket-like object (recv, sendall, close)")
    return stream


def _name(fn: object) -> str:
    return getattr(fn, "__qualname__", None) or repr(fn)


def _handshake(context: _ssl.SSLContext, sock: socket.socket, host: str, where: str,
               timeout: Optional[float]) -> _ssl.SSLSocket:
    """Wrap ``sock`` in TLS and shake hands within ``timeout`` (``sock`` is closed on failure)."""
    try:
        tls = context.wrap_socket(sock, server_hostname=host, do_handshake_on_connect=False)
    except BaseException:
        sock.close()
        raise
    try:
        tls.settimeout(timeout)
        tls.do_handshake()
        tls.settimeout(None)
        return tls
    except _ssl.SSLCertVerificationError as exc:
        tls.close()
        reason = exc.verify_message or exc.reason or str(exc)
        raise TlsError(f"TLS handshake with {where} failed: certificate verify failed: {reason} (the "
                       f"server's certificate is checked against {host!r} and the trusted CAs of the "
                       f"context; pass ssl=ssl.create_default_context(cafile=...) to trust another CA)",
                       verify_message=reason) from None
    except _ssl.SSLError as exc:
        tls.close()
        raise TlsError(f"TLS handshake with {where} failed: {exc.reason or exc} (is a TLS terminator "
                       f"listening on that port?)") from None
    except socket.timeout:
        tls.close()
        raise UsbipTimeoutError(f"TLS handshake with {where} timed out after {timeout:g} s") from None
    except OSError as exc:
        tls.close()
        raise TlsError(f"TLS handshake with {where} failed: the connection ended "
                       f"({exc.strerror or exc}); is a TLS terminator listening on that port?") from None
    except BaseException:
        tls.close()
        raise


# -- the engine's socket ---------------------------------------------------------------------------------
class _Owner(Protocol):
    def stop(self) -> None: ...

    def reason(self) -> str: ...


class _OwnedSocket(socket.socket):
    """A kernel socket whose other end something else serves (a relay, a command): closing it
    stops that too, and :func:`closed_reason` asks it why the stream ended."""

    _owner: Optional[_Owner] = None
    _last_reason = ""

    def close(self) -> None:
        super().close()
        owner, self._owner = self._owner, None
        if owner is not None:
            owner.stop()
            self._last_reason = owner.reason()

    def stream_reason(self) -> str:
        owner = self._owner
        return self._last_reason if owner is None else owner.reason()


def _pair() -> "tuple[_OwnedSocket, socket.socket]":
    a, b = socket.socketpair()
    near = _OwnedSocket(a.family, a.type, a.proto, fileno=a.detach())
    a.close()
    return near, b


def _is_kernel_stream(stream: object) -> bool:
    return isinstance(stream, socket.socket) and not isinstance(stream, _ssl.SSLSocket) \
        and stream.type == socket.SOCK_STREAM


def engine_socket(stream: Union[socket.socket, SocketLike], name: str = "transport") -> socket.socket:
    """The kernel stream socket the engine is to use for ``stream`` (see the module docstring):
    ``stream`` itself if it is one, else the near end of a socketpair a relay carries to it.
    The relay, and ``stream``, end when the returned socket is closed."""
    if _is_kernel_stream(stream):
        assert isinstance(stream, socket.socket)
        return stream
    if isinstance(stream, _ssl.SSLSocket):
        return _relayed(_TlsRelay, stream, name, None)
    return _relayed(_StreamRelay, stream, name, None)


def _relayed(kind: Callable[..., "_Relay"], stream: object, name: str, behind: Optional[_Owner]) -> socket.socket:
    near, far = _pair()
    relay = kind(stream, far, name, behind)
    near._owner = relay
    relay.start()
    return near


class _Relay(_Owner, Protocol):
    def start(self) -> None: ...


def closed_reason(sock: object) -> str:
    """Why the transport behind an engine socket ended, if it knows ("" for a plain socket, or
    while nothing went wrong): a TLS error, a command's exit status and its last stderr line."""
    if isinstance(sock, _OwnedSocket):
        return sock.stream_reason()
    return ""


class _TlsRelay:
    """Carries bytes between an ``SSLSocket`` and the far end of the engine's socketpair, on one
    thread that drives both non-blocking: OpenSSL's object is only ever used by this thread, and
    reading until SSLWantReadError leaves nothing decrypted behind (``pending()`` is 0 whenever it
    waits in poll() for the socket)."""

    def __init__(self, tls: _ssl.SSLSocket, far: socket.socket, name: str, behind: Optional[_Owner]) -> None:
        self.tls = tls
        self.far = far
        self.behind = behind  # what carries the TLS stream itself (a relay, a command), if not TCP
        self.error = ""
        self._lock = threading.Lock()  # tls closed vs. stop()'s shutdown of its descriptor
        self._closed = False
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name=f"usbip-tls-{name}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """The engine closed its end: make the relay end now (even while it waits to write to a
        server that does not read), and wait for it."""
        self._stopping = True
        with self._lock:
            if not self._closed:
                try:
                    # The descriptor only: SSLSocket.shutdown() would drop the SSL object under
                    # the relay thread's feet. The relay's select() wakes and its next call fails.
                    socket.socket.shutdown(self.tls, socket.SHUT_RDWR)
                except OSError:
                    pass
        if self._thread is not threading.current_thread():
            self._thread.join(_JOIN)
        self.far.close()

    def reason(self) -> str:
        if self.error or self.behind is None:
            return self.error
        return self.behind.reason()

    def _run(self) -> None:
        clean = False
        try:
            self.tls.setblocking(False)
            self.far.setblocking(False)
            clean = self._pump()
        except (_ssl.SSLError, OSError, ValueError) as exc:
            if not self._stopping:
                # The engine reports it (closed_reason), with the connection's failure.
                self.error = f"TLS connection failed: {_tls_reason(exc)}"
                _log.debug("%s: %s", self._thread.name, self.error)
        finally:
            with self._lock:
                self._closed = True
                if clean:
                    try:
                        self.tls.unwrap()  # close_notify, best effort (no wait for the peer's)
                    except (_ssl.SSLError, OSError, ValueError):
                        pass
                self.tls.close()
            if self.behind is not None:
                self.behind.stop()
            _end_of_stream(self.far)

    def _pump(self) -> bool:
        """Relay until one side ends; True if the engine's side ended first (a clean close).
        Errors on the TLS side propagate; the engine's side failing (it closed or shut down its
        end) is a clean end.

        Each call is made only when it can go on (poll() said so, or it has not been refused
        since): every call that finds nothing to do costs a syscall, and a hand-over of the GIL
        to the thread that is waiting for this one's bytes."""
        tls, far = self.tls, self.far
        down = bytearray()  # decrypted, not yet handed to the engine
        up = bytearray()  # from the engine, not yet encrypted
        out: Optional[bytes] = None  # a TLS write that must be retried as it is (WANT_*)
        buf = bytearray(_CHUNK)
        view = memoryview(buf)
        tls_eof = far_eof = False
        read_wait = write_wait = ""  # what the TLS read / write waits for: "r", "w" or "" (none)
        far_readable = far_writable = True  # until a call on the far end is refused
        waiter = _Waiter(tls, far)
        while True:
            # Server -> engine.
            if not tls_eof and not read_wait and len(down) < _LIMIT:
                try:
                    # Until OpenSSL wants more bytes: then it holds no decrypted ones that
                    # poll() could not see.
                    tls_eof = _fill(tls.recv_into, down, buf, view)
                except _ssl.SSLWantReadError:
                    read_wait = "r"
                except _ssl.SSLWantWriteError:
                    read_wait = "w"
            while down and far_writable:
                try:
                    n = far.send(down)
                except BlockingIOError:
                    far_writable = False
                    break
                except OSError:
                    return True
                del down[:n]
            if tls_eof and not down:
                return False
            # Engine -> server.
            if not far_eof and far_readable and len(up) < _LIMIT:
                try:
                    far_eof = _fill(far.recv_into, up, buf, view)
                except BlockingIOError:
                    far_readable = False
                except OSError:
                    return True
            while (up or out is not None) and not write_wait:
                if out is None:
                    out = bytes(up[:_CHUNK])
                try:
                    n = tls.send(out)
                except _ssl.SSLWantWriteError:
                    write_wait = "w"
                    break
                except _ssl.SSLWantReadError:
                    write_wait = "r"
                    break
                del up[:n]
                out = None
            if far_eof and not up and out is None:
                return True
            if (not tls_eof and not read_wait and len(down) < _LIMIT) or (down and far_writable) \
                    or (not far_eof and far_readable and len(up) < _LIMIT):
                continue  # something can go on at once (a read stopped for room has room again)
            far_read = not far_eof and len(up) < _LIMIT
            tls_ready, far_in, far_out, gone = waiter.wait(
                tls_read="r" in (read_wait, write_wait), tls_write="w" in (read_wait, write_wait),
                far_read=far_read, far_write=bool(down))
            if gone and not far_read:
                return True  # the engine hung up while nothing was read from it
            if tls_ready:
                read_wait = write_wait = ""  # both are tried again (a wasted try is rare)
            far_readable = far_readable or far_in or gone
            far_writable = far_writable or far_out


def _fill(recv_into: Callable[[bytearray], int], into: bytearray, buf: bytearray, view: memoryview) -> bool:
    """The TLS relay's reads: ``recv_into`` through ``buf`` (``view`` is its memoryview) onto
    ``into`` until it holds _LIMIT bytes; True at the end of the stream. A refused call raises
    (the caller knows which errors mean "not now")."""
    while len(into) < _LIMIT:
        n = recv_into(buf)
        if not n:
            return True
        into += view[:n]
    return False


def _tls_reason(exc: BaseException) -> str:
    """OpenSSL's reason in words ("tlsv13 alert certificate required"), else the error's text."""
    reason = getattr(exc, "reason", None)
    if isinstance(exc, _ssl.SSLError) and isinstance(reason, str):
        return reason.lower().replace("_", " ")
    return str(exc) or type(exc).__name__


class _Waiter:
    """The TLS relay's wait: poll() where there is one (no FD_SETSIZE limit), else select().

    The far end stays registered even when nothing is wanted of it, so its hang-up (the engine
    shut its end down while the relay waits for the server) ends the wait; the TLS socket is
    registered only while a call on it waits, so its hang-up cannot spin the loop while the
    engine is slow to read."""

    _GONE = (select.POLLHUP | select.POLLERR | select.POLLNVAL) if hasattr(select, "poll") else 0

    def __init__(self, tls: socket.socket, far: socket.socket) -> None:
        self.tls, self.far = tls, far
        self._poll = select.poll() if hasattr(select, "poll") else None
        self._tls_fd, self._far_fd = tls.fileno(), far.fileno()
        self._tls_mask = 0  # 0: not registered
        self._far_mask = -1

    def wait(self, *, tls_read: bool, tls_write: bool, far_read: bool,
             far_write: bool) -> "tuple[bool, bool, bool, bool]":
        """Wait until something asked for may go on: (the TLS socket is ready, the far end is
        readable, it is writable, it hung up)."""
        poll = self._poll
        if poll is None:
            r = [s for s, on in ((self.tls, tls_read), (self.far, far_read)) if on]
            w = [s for s, on in ((self.tls, tls_write), (self.far, far_write)) if on]
            rr, ww, _ = select.select(r, w, [], None)
            return self.tls in rr or self.tls in ww, self.far in rr, self.far in ww, False
        mask = (select.POLLIN if tls_read else 0) | (select.POLLOUT if tls_write else 0)
        if mask != self._tls_mask:
            if mask:
                poll.register(self._tls_fd, mask)
            else:
                poll.unregister(self._tls_fd)
            self._tls_mask = mask
        mask = (select.POLLIN if far_read else 0) | (select.POLLOUT if far_write else 0)
        if mask != self._far_mask:
            poll.register(self._far_fd, mask)
            self._far_mask = mask
        tls_ready = far_in = far_out = gone = False
        for fd, ev in poll.poll():
            if fd == self._far_fd:
                far_in = bool(ev & select.POLLIN)
                far_out = bool(ev & select.POLLOUT)
                gone = bool(ev & self._GONE)
            else:
                tls_ready = True  # readable, writable, or an error the next call will raise
        return tls_ready, far_in, far_out, gone


class _StreamRelay:
    """Carries bytes between a blocking socket-like object and the far end of the engine's
    socketpair: one thread each way, so each blocks in its own ``recv``."""

    def __init__(self, stream: SocketLike, far: socket.socket, name: str, behind: Optional[_Owner]) -> None:
        assert behind is None  # a socket-like object is never wrapped over another relay
        self.stream = stream
        self.far = far
        self.error = ""
        self._lock = threading.Lock()
        self._stream_closed = False
        self._stopping = False
        self._down = threading.Thread(target=self._to_engine, name=f"usbip-relay-in-{name}", daemon=True)
        self._up = threading.Thread(target=self._to_server, name=f"usbip-relay-out-{name}", daemon=True)

    def start(self) -> None:
        self._down.start()
        self._up.start()

    def stop(self) -> None:
        self._stopping = True
        self._close_stream()
        me = threading.current_thread()
        for t in (self._down, self._up):
            if t is not me:
                t.join(_JOIN)
        self.far.close()

    def reason(self) -> str:
        return self.error

    def _failed(self, exc: BaseException, where: str) -> None:
        # Once the stream is being closed here (the engine's end closed or shut down), a call
        # that fails on it is that close, not news.
        if not self._stopping and not self._stream_closed and not self.error:
            self.error = f"{where} failed: {type(exc).__name__}: {exc}"
            _log.debug("%s: %s", threading.current_thread().name, self.error)

    def _to_engine(self) -> None:
        try:
            recv, far = self.stream.recv, self.far
            while True:
                data = recv(_CHUNK)
                if not data:
                    break
                try:
                    far.sendall(data)
                except OSError:
                    break  # the engine's end is gone: nothing to report
        except Exception as exc:
            self._failed(exc, "receiving from the transport")
        finally:
            _end_of_stream(self.far)

    def _to_server(self) -> None:
        try:
            recv, send = self.far.recv, self.stream.sendall
            while True:
                try:
                    data = recv(_CHUNK)
                except OSError:
                    break  # the engine's end is gone: nothing to report
                if not data:
                    break
                send(data)
        except Exception as exc:
            self._failed(exc, "sending to the transport")
        finally:
            self._close_stream()  # wakes _to_engine's recv

    def _close_stream(self) -> None:
        with self._lock:
            if self._stream_closed:
                return
            self._stream_closed = True
        shutdown = getattr(self.stream, "shutdown", None)  # optional in SocketLike
        if callable(shutdown):
            try:
                shutdown(socket.SHUT_RDWR)
            except Exception:
                pass
        try:
            self.stream.close()
        except Exception as exc:
            _log.debug("closing %r: %s", self.stream, exc)


def _end_of_stream(far: socket.socket) -> None:
    """The transport ended: the engine is to read what was delivered, then the end of the
    stream. Only the sending half is shut: closing the far end while the engine's last bytes sit
    unread in it would make the engine's next read fail with ECONNRESET instead (Unix sockets
    do), before it could hear why. The far end is closed when the engine closes its own."""
    try:
        far.shutdown(socket.SHUT_WR)
    except OSError:
        pass


# -- commands ----------------------------------------------------------------------------------------
def command_connector(command: Union[str, Sequence[str]]) -> Connector:
    """A ``connect=`` callable that runs ``command`` and talks to the server through its stdin and
    stdout, as OpenSSH's ProxyCommand does: ``command_connector("ssh -W %h:%p jumphost")``.

    ``%h`` becomes the host, ``%p`` the port, ``%%`` a ``%``. A string is split as a POSIX shell
    would split it (no shell runs it: a host is one argument, never shell syntax); a list is used
    as it is. The command's stderr is kept (its tail explains a command that exits). It is given
    EOF on its stdin when the connection closes, then SIGTERM after a second if it is still there.

    On POSIX the command's stdin and stdout are one end of a socketpair and the engine has the
    other: no relay thread. Elsewhere they are pipes, relayed.
    """
    template = shlex.split(command) if isinstance(command, str) else list(command)
    if not template:
        raise ValueError("command_connector needs a command")

    def connect(host: str, port: int, timeout: Optional[float]) -> SocketLike:
        if host.startswith("-"):
            raise ValueError(f"host {host!r} would be read as an option by {template[0]!r}")
        argv = [_expand(arg, host, port) for arg in template]
        return _spawn(argv, pipes=os.name != "posix")

    connect.__qualname__ = f"command {' '.join(shlex.quote(a) for a in template)!r}"
    return connect


def _expand(arg: str, host: str, port: int) -> str:
    out = []
    i = 0
    while i < len(arg):
        c = arg[i]
        if c == "%" and i + 1 < len(arg) and arg[i + 1] in "hp%":
            out.append({"h": host, "p": str(port), "%": "%"}[arg[i + 1]])
            i += 2
            continue
        out.append(c)
        i += 1
    return "".join(out)


class _Command:
    """A running command whose stdin/stdout carry the stream: reaped when the stream closes."""

    def __init__(self, argv: List[str], proc: "subprocess.Popen[bytes]", stderr: IO[bytes]) -> None:
        self.argv = argv
        self.proc = proc
        self.stderr = stderr
        self._lock = threading.Lock()
        self._status: Optional[str] = None

    def stop(self) -> None:
        proc = self.proc
        try:
            proc.wait(_COMMAND_GRACE)  # it saw EOF on its stdin
        except subprocess.TimeoutExpired:
            proc.terminate()
            try:
                proc.wait(_COMMAND_GRACE)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.reason()
        with self._lock:
            if not self.stderr.closed:
                self.stderr.close()

    def reason(self) -> str:
        with self._lock:
            if self._status is not None:
                return self._status
            code = self.proc.poll()
            if code is None:
                try:  # the stream ended: the command is likely exiting right now
                    code = self.proc.wait(0.2)
                except subprocess.TimeoutExpired:
                    return ""
            tail = ""
            if not self.stderr.closed:
                self.stderr.seek(0, os.SEEK_END)
                size = self.stderr.tell()
                self.stderr.seek(max(size - 1024, 0))
                lines = self.stderr.read().decode("utf-8", "replace").strip().splitlines()
                tail = lines[-1].strip() if lines else ""
            self._status = f"command {self.argv[0]!r} exited with status {code}" + (f": {tail}" if tail else "")
            return self._status


class _PipeStream:
    """A command's stdin/stdout as a :class:`SocketLike` (where a socket cannot be its stdio)."""

    def __init__(self, command: _Command) -> None:
        self.command = command
        proc = command.proc
        assert proc.stdin is not None and proc.stdout is not None
        self._in = proc.stdin
        self._out = proc.stdout

    def recv(self, bufsize: int, /) -> bytes:
        # The file objects, not their descriptors: once closed they refuse, where a descriptor
        # number could already name another file.
        return self._out.read(bufsize) or b""

    def sendall(self, data: bytes, /) -> object:
        view = memoryview(data)
        while view:
            n = self._in.write(view)
            view = view[n or 0:]
        return None

    def close(self) -> None:
        try:
            self._in.close()
        except OSError:
            pass
        self.command.stop()
        self._out.close()


def _spawn(argv: List[str], pipes: bool) -> SocketLike:
    """Run ``argv`` with its stdin/stdout as the stream: a socketpair end (POSIX) or pipes."""
    stderr = tempfile.TemporaryFile()
    try:
        if pipes:
            proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr,
                                    bufsize=0)
            return _PipeStream(_Command(argv, proc, stderr))
        near, child = _pair()
        try:
            proc = subprocess.Popen(argv, stdin=child.fileno(), stdout=child.fileno(), stderr=stderr)
        except BaseException:
            near.close()
            raise
        finally:
            child.close()
        near._owner = _Command(argv, proc, stderr)
        return near
    except BaseException:
        stderr.close()
        raise
