"""The relay that puts a SWCAN transceiver on the charge port's pilot wire, for either role.

The Tesla charge port carries the car's own single-wire CAN on the pilot, so our
transceiver stays off it until it is wanted: in the car once the vehicle has set up its
Tesla SWCAN link and asks for AC (distributedcharge-v1.md step 1), in the wall unit once a
plug-in is confirmed. This module only switches; the daemons decide. gpiozero (the ``pi``
extra) is imported when a relay is built, so a machine with no relay never needs it.
"""

from __future__ import annotations

import importlib
from typing import Any


class RelayError(Exception):
    """The relay's GPIO cannot be driven (gpiozero missing, no such pin, not a Pi...)."""


class SwcanRelay:
    """One GPIO output: open at start, switched by :meth:`set`, open again at :meth:`close`."""

    def __init__(self, pin: int, *, active_high: bool = True, pin_factory: Any = None) -> None:
        try:
            gpiozero = importlib.import_module("gpiozero")
        except ImportError:
            raise RelayError(
                f"the SWCAN relay on GPIO {pin} needs gpiozero: install the pi extra "
                "(pip install 'distributedcharge[pi]')"
            ) from None
        try:
            self._device = gpiozero.DigitalOutputDevice(pin, active_high=active_high, initial_value=False,
                                                        pin_factory=pin_factory)
        except (gpiozero.GPIOZeroError, OSError, RuntimeError, ValueError) as exc:
            raise RelayError(f"cannot drive GPIO {pin} for the SWCAN relay: {type(exc).__name__}: {exc}") from None
        self.pin = pin
        self.closed = False

    def set(self, closed: bool) -> bool:
        """Close or open the relay; True if that changed it (the caller logs the change)."""
        if closed == self.closed:
            return False
        if closed:
            self._device.on()
        else:
            self._device.off()
        self.closed = closed
        return True

    def close(self) -> None:
        """Open the relay and release the pin."""
        self.set(False)
        self._device.close()
