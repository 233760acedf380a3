"""Makes pyserial's ``serial_for_url`` find ``usbip://`` (imported by ``usbip_backend_serial.pth``
at interpreter start, and by ``usbip_backend``).

pyserial imports ``<package>.protocol_<scheme>`` for each package in
``serial.protocol_handler_packages``; ``usbip_backend`` is added there as soon as pyserial has
been imported, by a finder that waits for that import. Only ``sys`` is imported here: this runs
in every interpreter of the environment.
"""

from __future__ import annotations

import sys

# typing is not imported at run time (see above); mypy reads a name TYPE_CHECKING as true.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from importlib.machinery import ModuleSpec
    from types import ModuleType
    from typing import Optional, Sequence

PACKAGE = "usbip_backend"


def add_handler_package(serial_module: ModuleType) -> None:
    packages = getattr(serial_module, "protocol_handler_packages", None)
    if isinstance(packages, list) and PACKAGE not in packages:
        packages.append(PACKAGE)


class SerialImportHook:
    """A meta path finder that lets pyserial load, then registers our handler package."""

    def find_spec(self, name: str, path: Optional[Sequence[str]] = None,
                  target: Optional[ModuleType] = None) -> Optional[ModuleSpec]:
        if name != "serial":
            return None
        try:
            sys.meta_path.remove(self)
        except ValueError:
            pass
        spec: Optional[ModuleSpec] = None
        for finder in sys.meta_path:  # the finders after us find pyserial itself
            find = getattr(finder, "find_spec", None)
            if find is not None:
                spec = find(name, path, target)
                if spec is not None:
                    break
        loader = getattr(spec, "loader", None)
        if loader is None or not hasattr(loader, "exec_module"):
            return spec
        exec_module = loader.exec_module

        def exec_and_register(module: ModuleType) -> None:
            exec_module(module)
            add_handler_package(module)

        loader.exec_module = exec_and_register
        return spec


def register() -> None:
    module = sys.modules.get("serial")
    if module is not None:
        add_handler_package(module)
    elif not any(type(f).__name__ == "SerialImportHook" for f in sys.meta_path):
        sys.meta_path.insert(0, SerialImportHook())


register()
