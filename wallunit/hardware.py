"""The wall unit's optional pilot/proximity ADC (the SWCAN relay is :mod:`distributedcharge.relay`).

gpiozero (the ``pi`` extra) is imported only when the config enables the ADC, so a
simulation or a test machine never needs it. The ADC is an MCP3008 reading the pilot or
proximity line through a divider;
:class:`AdcWindows` turns a raw reading into "cable in", "no cable" or "cannot tell",
which is all :class:`~wallunit.plug.PlugDetector` wants from it.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

ADC_FULL_SCALE = 1023  # the MCP3008 is a 10-bit converter


class HardwareError(Exception):
    """A configured device cannot be used (library missing, pin busy, no SPI)."""


def _gpiozero() -> Any:
    try:
        return importlib.import_module("gpiozero")
    except ImportError as exc:
        raise HardwareError(
            f"gpiozero is not installed ({exc}); install the pi extra: pip install 'distributedcharge[pi]'"
        ) from None


@dataclass(frozen=True)
class AdcWindows:
    """Raw reading ranges (inclusive) that mean a cable is in, or that none is."""

    plugged_min: int
    plugged_max: int
    unplugged_min: int
    unplugged_max: int

    @classmethod
    def from_config(cls, adc: dict[str, Any]) -> AdcWindows:
        return cls(adc["plugged_min"], adc["plugged_max"], adc["unplugged_min"], adc["unplugged_max"])

    def classify(self, raw: int) -> bool | None:
        """True: a cable is in; False: none; None: a reading that says neither (a fault, a transition)."""
        if isinstance(raw, bool) or not isinstance(raw, int) or not 0 <= raw <= ADC_FULL_SCALE:
            return None
        if self.plugged_min <= raw <= self.plugged_max:
            return True
        if self.unplugged_min <= raw <= self.unplugged_max:
            return False
        return None


class PlugAdc:
    """One MCP3008 input; :meth:`plugged` reads it and classifies the reading."""

    def __init__(self, channel: int, spi_device: int, windows: AdcWindows, pin_factory: Any = None) -> None:
        gpiozero = _gpiozero()
        self.windows = windows
        self._read_errors = (OSError, gpiozero.GPIOZeroError)
        try:
            self._adc = gpiozero.MCP3008(channel=channel, device=spi_device, pin_factory=pin_factory)
        except gpiozero.GPIOZeroError as exc:
            raise HardwareError(f"MCP3008 on SPI device {spi_device}, channel {channel}: {exc}") from None

    @classmethod
    def from_config(cls, adc: dict[str, Any], pin_factory: Any = None) -> PlugAdc:
        return cls(adc["channel"], adc["spi_device"], AdcWindows.from_config(adc), pin_factory)

    def read_raw(self) -> int:
        try:
            return int(self._adc.raw_value)
        except self._read_errors as exc:
            raise HardwareError(f"reading the MCP3008 failed: {exc}") from None

    def plugged(self) -> bool | None:
        """Blocks for one SPI transfer (well under a millisecond with hardware SPI)."""
        return self.windows.classify(self.read_raw())

    def close(self) -> None:
        self._adc.close()
