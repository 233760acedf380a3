"""``main()``: parse, run the command in a :class:`Context`, turn any failure into one line."""

from __future__ import annotations

import logging
import sys
import traceback
from typing import Optional, Sequence

from .args import EXIT_FAILED, EXIT_OK, EXIT_USAGE, CliError
from .context import PROG, Context
from .explain import explain
from .parser import build_parser, settle


def _setup_logging(verbosity: int) -> None:
    level = logging.DEBUG if verbosity > 0 else logging.WARNING
    logging.basicConfig(level=level, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    if verbosity < 2:  # zeroconf's own debug output is noisy; -vv shows it
        logging.getLogger("zeroconf").setLevel(max(level, logging.INFO))
    if verbosity == 0:  # the CLI reports a skipped (busy, broken) device itself, in one line
        logging.getLogger("usbip_backend.backend").setLevel(logging.ERROR)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the command line; returns the exit code (0 ok, 1 failed, 2 usage)."""
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
    _setup_logging(args.verbose)
    ctx = Context(args, out, err)
    try:
        if args.command != "sim":
            ctx.start_syslog()
        return int(args.func(ctx) or 0)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=err)
        return 130
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
    finally:
        ctx.close()
