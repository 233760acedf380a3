"""The URB engine: one TCP connection per imported device, many URBs in flight.

Three parts, each in its own module:

* :mod:`.urb` -- the URB record and its state machine (NEW, PENDING, RECEIVING, DONE), its
  result and errors, done callbacks;
* :mod:`.table` -- pure: seqnums, the URBs in flight, what each RET_SUBMIT / RET_UNLINK means,
  the deadlines, the round-trip estimate behind the unlink grace;
* :mod:`.connection` -- the socket, who sends and who reads it (the read token), the reader
  thread and its timers;
* :mod:`.transport` -- how that socket reaches the server: TCP, TLS, an SSH channel or a
  command's stdio, relayed through a socketpair when it is not a kernel socket.

The public names are re-exported here and from :mod:`usbip_backend`.
"""

from __future__ import annotations

from ..protocol import TransferType
from .connection import MAX_URB_LENGTH, Connection, flat
from .table import RttEstimator, UrbTable
from .transport import Connector, SocketLike, TlsArg, TlsError, command_connector
from .urb import ECONNRESET, ESHUTDOWN, DoneCallback, EndedBy, Urb, UrbState

__all__ = [
    "Connection", "Urb", "UrbState", "EndedBy", "TransferType", "DoneCallback", "UrbTable",
    "RttEstimator", "MAX_URB_LENGTH", "ECONNRESET", "ESHUTDOWN", "flat", "Connector", "SocketLike",
    "TlsArg", "TlsError", "command_connector",
]
