"""``usbip-pyusb-test``: find USB/IP servers, list their devices and talk to one, from a shell.

Also runnable as ``python -m usbip_backend`` or ``python -m usbip_backend.cli``. Exit codes:
0 ok, 1 the operation failed, 2 usage error. Ordinary failures print one line on stderr that
says what to do; ``-v`` adds debug logging and the traceback of unexpected errors. ``--json``
output is documented in the README ("Command line", "JSON output") and carries ``"schema": 1``.

One module per concern: ``args`` (argument types, exit codes), ``context`` (server, capture,
syslog, backends of one run), ``devices`` (choosing and importing the device), ``render``
(``lsusb -v``-style output, hex dumps), ``commands``, ``parser``, ``explain`` (errors as one
line) and ``run`` (``main``). The check sequence itself is the library's
:mod:`usbip_backend.conformance`.
"""

from __future__ import annotations

from .args import (
    EXIT_FAILED, EXIT_OK, EXIT_USAGE, MAX_LENGTH, CliError, endpoint_arg, hex_data, id_pair, length_arg,
    milliseconds, number, port_number, seconds, size_arg, u8, u16, usb_id,
)
from .context import DEFAULT_PORT, DEFAULT_SYSLOG_PORT, JSON_SCHEMA, PROG, Context
from .explain import explain
from .parser import build_parser
from .run import console, main

__all__ = [
    "main", "console", "build_parser", "explain", "Context", "CliError", "PROG", "JSON_SCHEMA", "DEFAULT_PORT",
    "DEFAULT_SYSLOG_PORT", "MAX_LENGTH", "EXIT_OK", "EXIT_FAILED", "EXIT_USAGE", "number", "u8", "u16",
    "usb_id", "id_pair", "port_number", "length_arg", "size_arg", "endpoint_arg", "hex_data", "seconds",
    "milliseconds",
]
