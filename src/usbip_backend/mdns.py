"""Deprecated: version 0.0.1's discovery module; use :mod:`usbip_backend.discovery`.

Importing it warns once (DeprecationWarning). ``discover_usbip_servers`` is discovery's, which
returns :class:`~usbip_backend.discovery.ServerInfo` objects that also read as 0.0.1's dicts.
"""

from __future__ import annotations

import os
import sys
import warnings
from types import FrameType
from typing import Optional

from .discovery import SERVICE_TYPE, discover_usbip_servers

__all__ = ["USBIP_MDNS_SERVICE", "discover_usbip_servers"]

#: 0.0.1's name of :data:`usbip_backend.discovery.SERVICE_TYPE`.
USBIP_MDNS_SERVICE: str = SERVICE_TYPE


def _importer_stacklevel() -> int:
    """The stacklevel (from this module's body) of the code that imported it.

    The warnings module already skips importlib's bootstrap frames; an import through
    ``importlib.import_module`` or the package's ``__getattr__`` (``usbip_backend.mdns`` used
    as an attribute) adds frames it does not skip, so those are counted here.
    """
    level = 2
    frame: Optional[FrameType] = sys._getframe(2)  # 0: this function, 1: the module body
    while frame is not None:
        filename = frame.f_code.co_filename
        if "importlib" in filename and "_bootstrap" in filename:
            pass  # skipped by warnings itself, so not counted
        elif (filename.endswith(os.path.join("importlib", "__init__.py"))
              or frame.f_globals.get("__name__") == "usbip_backend"):
            level += 1
        else:
            break
        frame = frame.f_back
    return level


# A module body runs once per process (later imports come from sys.modules): one warning.
warnings.warn(
    "usbip_backend.mdns is deprecated; import discover_usbip_servers (or discover) and SERVICE_TYPE "
    "from usbip_backend.discovery",
    DeprecationWarning,
    stacklevel=_importer_stacklevel(),
)
