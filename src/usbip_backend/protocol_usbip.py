"""pyserial's handler module for ``usbip://`` (``serial.protocol_handler_packages`` names this
package, so ``serial_for_url`` imports ``usbip_backend.protocol_usbip`` and takes ``Serial``)."""

from .serialport.port import Serial

__all__ = ["Serial"]
