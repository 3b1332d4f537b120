"""One physical charge, seen through two sets of instruments.

:class:`Plant` is what really happens at the charge port: the supply's line voltage
(a slow sag and recovery plus a little flicker), the current the car's charger draws
(the TWC's pilot offer times a draw a little below it, capped by the car's own maximum,
ramping up and tapering near a full battery), the state of charge rising, and the plug
going in and out. It is the one model behind both meters:

* the simulated Wall Connector (:class:`~distributedcharge.sim.twc_slave.TwcSlave`) uses
  the plant as its :class:`~distributedcharge.sim.twc_slave.VehicleLoad` and reports the
  current in whole centiamps and the voltage in whole volts (:meth:`Plant.wall_volts`);
* the simulated Model 3 (:class:`~distributedcharge.sim.model3.Model3Emitter`) puts
  :meth:`Plant.model3_state` on the vehicle bus, where the charger's signals carry
  0.2 V and 0.1 A steps.

So the wall's and the car's meters see the same energy through slightly different
instruments and agree within a fraction of a percent, as on a real installation. The
plant also integrates the true energy exactly, for the simulator's report.

Pure: time comes in as ``now`` (seconds on any monotonic axis); nothing here sleeps,
reads a clock or touches a device.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from fractions import Fraction

from distributedcharge.sim.model3 import CHARGER_EFFICIENCY, Model3State
from distributedcharge.units import NJ_PER_KWH
from distributedcharge.vehicle.signals import AcChargeState

# The physics is resolved to the millivolt and milliamp, finer than either instrument.
RESOLUTION = 1000
NJ_PER_J = 10**9
# Below this pilot offer a car does not charge (J1772: 6 A minimum; cars ignore < 1 A).
MIN_PILOT_CENTIAMPS = 100


def _resolved(value: float | Fraction) -> Fraction:
    return Fraction(round(value * RESOLUTION), RESOLUTION)


@dataclass(frozen=True)
class PlantSettings:
    nominal_voltage: Fraction = Fraction(230)
    # Supply voltage sags and recovers slowly with the neighbourhood's load...
    voltage_swing: Fraction = Fraction(3, 2)
    voltage_period_s: float = 900.0
    # ...and flickers a little from one second to the next.
    voltage_flicker: Fraction = Fraction(3, 10)
    flicker_interval_s: float = 1.0
    car_max_amps: Fraction = Fraction(48)
    draw_share: Fraction = Fraction(97, 100)
    ramp_amps_per_s: Fraction = Fraction(10)
    battery_kwh: Fraction = Fraction(75)
    start_soc_percent: Fraction = Fraction(40)
    taper_from_soc_percent: Fraction = Fraction(90)
    # After the plug latches the car needs a moment to bring up its SWCAN link.
    swcan_delay_s: float = 1.0
    # A Tesla stops accepting charge after repeated power cuts without a CAN message.
    refuse_after_interruptions: int = 3
    vin: str = "5YJ3E1EA0KF000316"
    seed: int = 1

    def __post_init__(self) -> None:
        if self.nominal_voltage <= self.voltage_swing + self.voltage_flicker:
            raise ValueError("the voltage swing and flicker must stay below the nominal voltage")
        if not 0 < self.draw_share <= 1:
            raise ValueError("draw_share must be in (0, 1]")
        if self.car_max_amps <= 0 or self.battery_kwh <= 0 or self.ramp_amps_per_s <= 0:
            raise ValueError("car_max_amps, battery_kwh and ramp_amps_per_s must be positive")
        if not 0 <= self.start_soc_percent <= 100 or not 0 < self.taper_from_soc_percent <= 100:
            raise ValueError("state-of-charge settings must be percentages")


@dataclass(frozen=True)
class PlantSnapshot:
    """What is physically true at one moment, for progress lines and reports."""

    at: float
    plugged: bool
    pilot_centiamps: int
    amps: Fraction
    volts: Fraction
    soc_percent: Fraction
    energy_nj: Fraction
    interruptions: int


class Plant:
    """The car, its charger and the supply behind the Wall Connector. Implements
    :class:`~distributedcharge.sim.twc_slave.VehicleLoad`."""

    def __init__(self, settings: PlantSettings | None = None, *, plugged: bool = False, now: float = 0.0):
        self.settings = settings or PlantSettings()
        self.vin: str | None = self.settings.vin
        self.plugged = plugged
        self.soc_percent = Fraction(self.settings.start_soc_percent)
        self.energy_nj = Fraction(0)
        self.interruptions = 0
        self.amps = Fraction(0)
        self.pilot_centiamps = 0
        self._last: float | None = None
        self._volts = self.settings.nominal_voltage
        self._plugged_at: float | None = now if plugged else None
        self._flicker_slot: int | None = None
        self._flicker = Fraction(0)
        self.advance(now)

    # -- the VehicleLoad side (called by the TWC slave) ------------------------------------

    def draw_centiamps(self, offered_centiamps: int, now: float) -> int:
        """What the Wall Connector's current transformer reads: whole centiamps, rounded down."""
        self.advance(now)
        self.pilot_centiamps = max(0, offered_centiamps)
        self._follow_pilot()
        return math.floor(self.amps * 100)

    def power_interrupted(self, now: float) -> None:
        self.advance(now)
        if self.amps > 0:
            self.interruptions += 1
        self.amps = Fraction(0)

    def plug(self, now: float) -> None:
        self.advance(now)
        self.plugged = True
        self._plugged_at = now
        self.interruptions = 0
        self.amps = Fraction(0)

    def unplug(self, now: float) -> None:
        self.advance(now)
        self.plugged = False
        self._plugged_at = None
        self.amps = Fraction(0)
        self.pilot_centiamps = 0

    # -- physics -----------------------------------------------------------------------------

    @property
    def refusing(self) -> bool:
        return self.interruptions >= self.settings.refuse_after_interruptions

    @property
    def volts(self) -> Fraction:
        return self._volts

    def advance(self, now: float) -> None:
        """Move the physics on to ``now``: the energy of the interval at the values held
        over it, then the new voltage and the current's ramp. Earlier times are ignored."""
        if self._last is not None and now <= self._last:
            return
        if self._last is not None:
            seconds = Fraction(now - self._last)
            joules = self._volts * self.amps * seconds
            self.energy_nj += joules * NJ_PER_J
            into_pack_kwh = joules * NJ_PER_J * CHARGER_EFFICIENCY / NJ_PER_KWH
            self.soc_percent = min(Fraction(100), self.soc_percent + into_pack_kwh * 100 / self.settings.battery_kwh)
            self._ramp(seconds)
        self._last = now
        self._volts = self._voltage_at(now)

    def _target_amps(self) -> Fraction:
        s = self.settings
        if not self.plugged or self.refusing or self.pilot_centiamps < MIN_PILOT_CENTIAMPS:
            return Fraction(0)
        target = min(Fraction(self.pilot_centiamps, 100) * s.draw_share, s.car_max_amps)
        if self.soc_percent >= s.taper_from_soc_percent:
            headroom = (100 - self.soc_percent) / (100 - s.taper_from_soc_percent) if s.taper_from_soc_percent < 100 \
                else Fraction(0)
            target *= max(Fraction(0), headroom)
        return _resolved(target)

    def _follow_pilot(self) -> None:
        # A charger obeys a lowered pilot at once (J1772 gives it 5 s; Teslas take well under one).
        self.amps = min(self.amps, self._target_amps())

    def _ramp(self, seconds: Fraction) -> None:
        target = self._target_amps()
        if target <= self.amps:
            self.amps = target
        else:
            self.amps = min(target, _resolved(self.amps + self.settings.ramp_amps_per_s * seconds))

    def _voltage_at(self, now: float) -> Fraction:
        s = self.settings
        slot = math.floor(now / s.flicker_interval_s)
        if slot != self._flicker_slot:
            # One draw per slot, seeded by the slot, so the supply does not depend on who asks how often.
            self._flicker_slot = slot
            self._flicker = _resolved(random.Random(f"{s.seed}:{slot}").uniform(-1, 1) * float(s.voltage_flicker))
        sag = _resolved(float(s.voltage_swing) * math.sin(2 * math.pi * now / s.voltage_period_s))
        return s.nominal_voltage - sag + self._flicker

    # -- the instruments ------------------------------------------------------------------

    @property
    def energised(self) -> bool:
        """The Wall Connector's contactor is closed: the pilot offers current."""
        return self.plugged and self.pilot_centiamps > 0

    def wall_volts(self) -> int:
        """The Wall Connector's voltage reading: whole volts."""
        return round(self._volts)

    def model3_state(self, now: float) -> Model3State:
        """The car's side of the same moment, exact; the emitter encodes it at the car's resolution."""
        self.advance(now)
        if not self.plugged:
            return Model3State(soc_percent=self.soc_percent)
        assert self._plugged_at is not None
        if self.energised:
            charge_state = AcChargeState.ENABLED
        else:
            charge_state = AcChargeState.CONNECTED_CHARGE_BLOCKED
        return Model3State(
            plugged=True,
            latched=True,
            swcan_established=now - self._plugged_at >= self.settings.swcan_delay_s,
            ac_charge_state=charge_state,
            line_voltage=self._volts if self.energised else 0,
            charger_current=self.amps,
            pilot_current=Fraction(self.pilot_centiamps, 100),
            soc_percent=self.soc_percent,
        )

    def snapshot(self, now: float) -> PlantSnapshot:
        self.advance(now)
        return PlantSnapshot(now, self.plugged, self.pilot_centiamps, self.amps, self._volts, self.soc_percent,
                             self.energy_nj, self.interruptions)
