"""Settings for reading the car's own CAN bus, for the car daemon's config schema."""

from __future__ import annotations

import math
from typing import Any, Mapping

from distributedcharge.config import Check, Field, between, one_of
from distributedcharge.vehicle.meter import US_PER_S, EnergyMeter
from distributedcharge.vehicle.reader import VehicleState
from distributedcharge.vehicle.signals import LAYOUT_CHOICES


def _finite_between(low: float, high: float) -> Check:
    inside = between(low, high)

    def check(value: float) -> str | None:
        # TOML allows nan, which every comparison in between() lets through.
        return inside(value) if math.isfinite(value) else f"must be a finite number, got {value}"

    return check


FIELDS = [
    Field("vehicle.layout", str, "auto", one_of(*LAYOUT_CHOICES),
          "signal layout of the car's firmware: 2020 (model3dbc), 2025, or auto (decided from the "
          "first frame that shows it; until then the SWCAN relay stays open)"),
    Field("vehicle.meter_max_gap", float, 2.0, _finite_between(0.1, 60.0),
          "seconds without a fresh voltage or current reading after which the meter adds nothing"),
    Field("vehicle.stale_after", float, 2.0, _finite_between(0.1, 60.0),
          "seconds after which a vehicle reading counts as unknown"),
    Field("vehicle.charging_current", float, 1.0, _finite_between(0.1, 10.0),
          "amps the charger must draw before the car counts as charging"),
]


def build(section: Mapping[str, Any]) -> tuple[VehicleState, EnergyMeter]:
    """A reader and a meter from a validated ``vehicle`` section."""
    state = VehicleState(
        section["layout"],
        stale_after_us=round(section["stale_after"] * US_PER_S),
        charging_current_da=round(section["charging_current"] * 10),
    )
    return state, EnergyMeter(round(section["meter_max_gap"] * US_PER_S))
