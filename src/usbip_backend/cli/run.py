"""``main()``: parse, run the command in a :class:`Context`, turn any failure into one line."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
import threading
import traceback
from types import FrameType
from typing import Any, Iterator, Optional, Sequence, TextIO

from .args import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, CliError
from .context import PROG, Context
from .explain import explain
from .parser import build_parser, settle


@contextlib.contextmanager
def _logging(verbosity: int) -> Iterator[None]:
    """The run's log levels, put back afterwards (main() may run inside a program or a test)."""
    level = logging.DEBUG if verbosity > 0 else logging.WARNING
    logging.basicConfig(level=level, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    levels = {}
    if verbosity < 2:  # zeroconf's own debug output is noisy; -vv shows it
        levels["zeroconf"] = max(level, logging.INFO)
    if verbosity == 0:
        # The CLI words a skipped (busy, broken) device and a lost connection itself, in one
        # line; the library's warnings about them would say it a second time. -v shows them.
        levels["usbip_backend.backend"] = levels["usbip_backend.engine"] = logging.ERROR
    before = {name: logging.getLogger(name).level for name in levels}
    for name, value in levels.items():
        logging.getLogger(name).setLevel(value)
    try:
        yield
    finally:
        for name, value in before.items():
            logging.getLogger(name).setLevel(value)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the command line; returns the exit code (0 ok, 1 failed, 2 usage, 130 interrupted)."""
    return _main(argv, finally_ignore=False)


def console() -> int:
    """The ``usbip-pyusb-test`` program: :func:`main`, after which Ctrl-C stays ignored while the
    interpreter shuts down (nothing is left to stop, and a KeyboardInterrupt raised in its exit
    hooks would print a traceback)."""
    return _main(None, finally_ignore=True)


def _main(argv: Optional[Sequence[str]], finally_ignore: bool) -> int:
    out, err = sys.stdout, sys.stderr
    parser = build_parser()
    try:
        args = parser.parse_args(list(argv) if argv is not None else None)
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2), already printed
        return exc.code if isinstance(exc.code, int) else (EXIT_OK if exc.code is None else EXIT_USAGE)
    problem = settle(args)
    if problem is not None:
        parser.print_usage(err)
        print(f"{PROG}: error: {problem}", file=err)
        return EXIT_USAGE
    if not args.command:
        parser.print_usage(err)
        print(f"{PROG}: error: a command is needed (discover, list, probe, control, read, write, loopback, check, demo, sim); "
              f"see {PROG} --help", file=err)
        return EXIT_USAGE
    ctx = Context(args, out, err)
    with _logging(args.verbose), _Interrupts(finally_ignore) as interrupts:
        code = _run(ctx, args, err)
        interrupts.closing = True
        try:
            ctx.close()
        except KeyboardInterrupt:  # only reached where the quiet handler could not be installed
            code = EXIT_INTERRUPTED
    return code


def _run(ctx: Context, args: argparse.Namespace, err: TextIO) -> int:
    try:
        if args.command != "sim":
            ctx.pcap()  # a capture path that cannot be opened is the first thing to say
            ctx.start_syslog()
        return int(args.func(ctx) or 0)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=err)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # output piped into head
        return EXIT_FAILED
    except Exception as exc:  # noqa: BLE001 - every failure becomes one line
        code = exc.code if isinstance(exc, CliError) else EXIT_FAILED
        message = explain(exc, ctx)
        if args.verbose:
            traceback.print_exception(type(exc), exc, exc.__traceback__, file=err)
        if ctx.json and code == EXIT_FAILED:
            ctx.emit_json({"error": message})
        print(f"{PROG}: error: {message}", file=err)
        return code


class _Interrupts:
    """SIGINT while the command runs: the first Ctrl-C raises KeyboardInterrupt as usual (the
    command stops and the run closes what it opened); another Ctrl-C after that, or one while
    closing, ends the process at once with 130 and no traceback: the person asked to stop.

    Installed only in the main thread (Python delivers signals there). Afterwards the previous
    handler is put back, so calling ``main()`` from a program or a test leaves no trace; or,
    for the program itself, SIGINT is ignored (putting Python's handler back would leave a
    moment in which a Ctrl-C raises KeyboardInterrupt outside any handler).
    """

    def __init__(self, finally_ignore: bool) -> None:
        self.closing = False
        self._finally_ignore = finally_ignore
        self._installed = False
        self._previous: Any = None

    def __enter__(self) -> "_Interrupts":
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
            self._installed = True
        return self

    def __exit__(self, *exc: object) -> None:
        if self._installed:
            signal.signal(signal.SIGINT, signal.SIG_IGN if self._finally_ignore else self._previous)

    def _handle(self, signum: int, frame: Optional[FrameType]) -> None:
        if self.closing:
            for stream in (sys.stdout, sys.stderr):
                try:
                    stream.flush()
                except Exception:  # noqa: BLE001 - leaving anyway
                    pass
            os._exit(EXIT_INTERRUPTED)
        self.closing = True
        raise KeyboardInterrupt
