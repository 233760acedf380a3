"""One command run's context: the server (``--host`` or mDNS), the capture, syslog, backends.

``Context.close()`` releases everything a run opened, in reverse order.
"""

from __future__ import annotations

import argparse
import json
import logging
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence, TextIO, Tuple

from .. import protocol as P
from .args import EXIT_USAGE, CliError

if TYPE_CHECKING:
    from ..backend import UsbipBackend
    from ..pcap import PcapWriter
    from ..syslog import SyslogReceiver

if TYPE_CHECKING:
    pass

log = logging.getLogger("usbip_backend.cli")

PROG = "usbip-pyusb-test"
JSON_SCHEMA = 1
DEFAULT_PORT = P.USBIP_PORT
DEFAULT_SYSLOG_PORT = 1514


class Context:
    """What one command run needs; ``close()`` releases everything it opened."""

    def __init__(self, args: argparse.Namespace, out: TextIO, err: TextIO) -> None:
        self.args = args
        self.out = out
        self.err = err
        self.json = bool(getattr(args, "json", False))
        self._server: Optional[Tuple[str, int]] = None
        self._pcap: Optional[PcapWriter] = None
        self._syslog: Optional[SyslogReceiver] = None
        self._backends: List[UsbipBackend] = []
        self._transport: Optional[Dict[str, Any]] = None

    # -- output --
    def print(self, text: str = "") -> None:
        print(text, file=self.out)

    def note(self, text: str) -> None:
        """A remark for the person (stderr), kept out of stdout so --json stays parseable."""
        print(text, file=self.err)

    def emit_json(self, obj: Dict[str, Any]) -> None:
        doc = {"schema": JSON_SCHEMA, "command": self.args.command}
        doc.update(obj)
        print(json.dumps(doc, indent=2), file=self.out)

    # -- server --
    def server(self) -> Tuple[str, int]:
        """``(host, port)`` from --host/--port, or the only server mDNS finds."""
        if self._server is None:
            host, port = self.args.host, self.args.port
            if host is None:
                from ..discovery import resolve_single_server

                mdns_timeout = self.args.mdns_timeout
                self.note(f"no --host given: looking for USB/IP servers with mDNS for {mdns_timeout:g} s ...")
                info = resolve_single_server(timeout=mdns_timeout, interfaces=self.args.mdns_interface or None,
                                             service_type=self.args.mdns_type)
                host = info.address
                if port is None:
                    port = info.port
                self.note(f"using {info.name} ({info.host}) at {host}:{port}, the only server found")
            self._server = (host, DEFAULT_PORT if port is None else port)
        return self._server

    def where(self) -> str:
        if self._server is None:
            return f"{self.args.host or '(mDNS)'}:{self.args.port or DEFAULT_PORT}"
        host, port = self._server
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    # -- capture --
    def pcap(self) -> Optional[PcapWriter]:
        """The PcapWriter for --pcap (created on first use), or None."""
        if self._pcap is None and self.args.pcap:
            from ..pcap import PcapWriter

            try:
                self._pcap = PcapWriter(self.args.pcap)
            except OSError as exc:
                raise CliError(f"cannot open capture file {self.args.pcap}: {exc.strerror or exc}") from exc
            self.note(f"capturing to {self.args.pcap} (open it in Wireshark)")
        return self._pcap

    def start_syslog(self) -> None:
        if not self.args.syslog or self._syslog is not None:
            return
        from ..syslog import SyslogReceiver

        host, _ = self.server()
        port = self.args.syslog_port
        receiver = SyslogReceiver(host, port=port, pcap=self.pcap(), console=self.err)
        receiver.start()
        self._syslog = receiver
        log.debug("syslog receiver started for %s:%d", host, port)

    # -- transport --
    def transport(self) -> Dict[str, Any]:
        """``ssl``/``connect`` keywords for --tls, --tls-ca and --via (every connection uses them)."""
        if self._transport is None:
            args = self.args
            tls: Any = None
            if args.tls_ca:
                import ssl

                try:
                    tls = ssl.create_default_context(cafile=args.tls_ca)
                except (OSError, ssl.SSLError) as exc:
                    raise CliError(f"cannot read --tls-ca {args.tls_ca}: {getattr(exc, 'strerror', None) or exc}",
                                   EXIT_USAGE) from exc
            elif args.tls:
                tls = True
            connect = None
            if args.via:
                from ..engine.transport import command_connector

                try:
                    connect = command_connector(args.via)
                except ValueError as exc:
                    raise CliError(f"--via {args.via!r}: {exc}", EXIT_USAGE) from exc
            self._transport = {"ssl": tls, "connect": connect}
        return self._transport

    def backend(self, busids: Optional[Sequence[str]] = None) -> UsbipBackend:
        from ..backend import get_backend

        host, port = self.server()
        be = get_backend(host, port, timeout=self.args.timeout, busids=list(busids) if busids else None,
                         pcap=self.pcap(), **self.transport())
        if be is None:
            raise CliError(f"could not create a USB/IP backend for {self.where()}")
        self._backends.append(be)
        return be

    def close(self) -> None:
        for be in reversed(self._backends):
            try:
                be.close()
            except Exception:  # noqa: BLE001 - closing must go on
                log.debug("closing backend failed", exc_info=True)
        self._backends.clear()
        if self._syslog is not None:
            try:
                self._syslog.stop()
            except Exception:  # noqa: BLE001
                log.debug("stopping syslog failed", exc_info=True)
            self._syslog = None
        if self._pcap is not None:
            try:
                self._pcap.close()
            except Exception:  # noqa: BLE001
                log.debug("closing capture failed", exc_info=True)
            self._pcap = None
