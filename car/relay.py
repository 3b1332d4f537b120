"""The relay that connects the car's SWCAN transceiver to the charge port's pilot wire.

The Tesla charge port uses the same wire for its own single-wire CAN, so the car's
transceiver stays off it until the car has set up its Tesla SWCAN link and wants AC
charge, and comes off again on standby or unplug (distributedcharge-v1.md step 1):
:attr:`distributedcharge.vehicle.reader.VehicleState.relay_should_be_closed` decides, this
module only switches. gpiozero is imported when a relay is built, so a Pi without the
``pi`` extra only needs it when ``[relay] gpio_pin`` names a pin.
"""

from __future__ import annotations

from typing import Any

from distributedcharge import log


class RelayError(Exception):
    """The relay's GPIO cannot be driven (gpiozero missing, no such pin, not a Pi...)."""


class SwcanRelay:
    """One GPIO output: open at start, switched by :meth:`set`, open again at :meth:`close`."""

    def __init__(self, pin: int, *, active_high: bool = True, pin_factory: Any = None):
        try:
            from gpiozero import DigitalOutputDevice, GPIOZeroError
        except ImportError:
            raise RelayError(
                f"relay.gpio_pin = {pin} needs gpiozero: install the 'pi' extra (pip install 'distributedcharge[pi]')"
            ) from None
        try:
            self._device = DigitalOutputDevice(pin, active_high=active_high, initial_value=False,
                                               pin_factory=pin_factory)
        except (GPIOZeroError, OSError, RuntimeError, ValueError) as exc:
            raise RelayError(f"cannot drive GPIO {pin} for the SWCAN relay: {type(exc).__name__}: {exc}") from None
        self.pin = pin
        self.closed = False
        self._log = log.get("car.relay")

    def set(self, closed: bool) -> bool:
        """Close or open the relay; True if that changed it."""
        if closed == self.closed:
            return False
        if closed:
            self._device.on()
        else:
            self._device.off()
        self.closed = closed
        self._log.info("swcan relay " + ("closed" if closed else "opened"), gpio=self.pin)
        return True

    def close(self) -> None:
        """Open the relay and release the pin."""
        self.set(False)
        self._device.close()
