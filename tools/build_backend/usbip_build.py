"""The package's build backend: setuptools', plus one file setuptools cannot place.

pyserial finds URL handlers only in the packages listed in ``serial.protocol_handler_packages``
and has no entry points, so for ``esptool --port usbip://...`` to work with no code change the
wheel carries ``usbip_backend_serial.pth`` at the root of site-packages. Its one line imports
``_usbip_serial_hook`` (``sys`` only, well under a millisecond at interpreter start), which adds
``usbip_backend`` to that list once pyserial is imported. Everything else is setuptools'.
"""

from __future__ import annotations

import base64
import hashlib
import os
import zipfile

from setuptools import build_meta as _setuptools
from setuptools.build_meta import *  # noqa: F401,F403  (every hook not overridden here)

PTH_NAME = "usbip_backend_serial.pth"
PTH_TEXT = b"import _usbip_serial_hook\n"


def _add_pth(wheel_directory: str, name: str) -> None:
    """Add the .pth to a built wheel, with its RECORD line."""
    path = os.path.join(wheel_directory, name)
    with zipfile.ZipFile(path) as src:
        items = [(info, src.read(info.filename)) for info in src.infolist()]
    digest = base64.urlsafe_b64encode(hashlib.sha256(PTH_TEXT).digest()).rstrip(b"=").decode()
    line = f"{PTH_NAME},sha256={digest},{len(PTH_TEXT)}\n".encode()
    tmp = path + ".tmp"
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as out:
        out.writestr(PTH_NAME, PTH_TEXT)
        for info, content in items:
            if info.filename.endswith(".dist-info/RECORD"):
                content = content.rstrip(b"\n") + b"\n" + line
            out.writestr(info, content)
    os.replace(tmp, path)


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):  # type: ignore[no-untyped-def]
    name = _setuptools.build_wheel(wheel_directory, config_settings, metadata_directory)
    _add_pth(wheel_directory, name)
    return name


def build_editable(wheel_directory, config_settings=None, metadata_directory=None):  # type: ignore[no-untyped-def]
    name = _setuptools.build_editable(wheel_directory, config_settings, metadata_directory)
    _add_pth(wheel_directory, name)
    return name
