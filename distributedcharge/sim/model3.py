"""A simulated Tesla Model 3 that puts its real vehicle-CAN frames out.

:class:`Model3Emitter` turns a physical state (plug, SWCAN, charge state, the line
voltage and current actually flowing, pilot current, state of charge) into the frames
the car daemon reads, encoded with the same signal table it decodes with, at the rates
a recorded car sends them. The car's instruments are coarser than physics: the charger
reports voltage in 0.2 V and current in 0.1 A steps, so the car's meter sees the energy
the wall measures through slightly different instruments, as on a real car.

The emitter is pure (state and time in, frames out); :func:`run_emitter` is the small
asyncio loop that writes them to a python-can bus.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import Callable, Iterable

import can

from distributedcharge.clock import Clock
from distributedcharge.vehicle import signals as sig
from distributedcharge.vehicle.signals import AcChargeState, PcsChargeState, Pilot, Proximity, SwcanState

# Assumptions of the simulation, not facts about any one car.
CHARGER_EFFICIENCY = Fraction(92, 100)
RATED_RANGE_AT_FULL_MI = 310
DEFAULT_PCS_PAGES = tuple(range(10))
BMS_COUNTER_PAGES = (0, 1, 2, 3)
SECONDS_PER_HOUR = 3600


@dataclass(frozen=True)
class Model3State:
    """What is physically true at the charge port; volts and amps are exact numbers."""

    plugged: bool = False
    latched: bool = False
    swcan_established: bool = False
    ac_charge_state: AcChargeState = AcChargeState.INACTIVE
    line_voltage: Fraction | int = 0
    charger_current: Fraction | int = 0
    pilot_current: Fraction | int = 0
    soc_percent: Fraction | int = 50


@dataclass
class _Counters:
    """Lifetime battery counters in exact Wh (what 0x3D2 and 0x3F2 report)."""

    discharge_wh: Fraction = Fraction(9_000_000)
    charge_wh: Fraction = Fraction(10_000_000)
    ac_charge_wh: Fraction = Fraction(8_000_000)
    dc_charge_wh: Fraction = Fraction(500_000)
    regen_wh: Fraction = Fraction(1_500_000)
    drive_discharge_wh: Fraction = Fraction(9_000_000)


class Model3Emitter:
    def __init__(self, layout: str = "2025", *, pcs_pages: Iterable[int] = DEFAULT_PCS_PAGES):
        self.layout = sig.layout(layout)
        self.pcs_pages = tuple(pcs_pages)
        if not self.pcs_pages:
            raise ValueError("pcs_pages must name at least one 0x2C4 page")
        self.counters = _Counters()
        self._next_due: dict[int, float] = {}
        self._pcs_index = 0
        self._counter_index = 0
        self._last: tuple[float, Model3State] | None = None
        self._builders: dict[int, Callable[[Model3State], bytes]] = {
            sig.EVSE_STATUS: self._evse_status,
            sig.PCS_CHARGE_STATUS: self._pcs_status,
            sig.CHARGE_LINE_STATUS: self._line_status,
            sig.BMS_SOC: self._bms_soc,
            sig.PCS_LOGGING: self._pcs_logging,
            sig.UI_RANGE_SOC: self._ui_range,
            sig.TOTAL_CHARGE_DISCHARGE: self._kwh_counters,
            sig.BMS_COUNTERS: self._bms_counters,
        }

    def next_due(self) -> float | None:
        """When the next frame falls due; None before the first call, when every frame is due."""
        if len(self._next_due) < len(self._builders):
            return None
        return min(self._next_due.values())

    def frames_at(self, now: float, state: Model3State) -> list[tuple[int, bytes]]:
        """Frames due at ``now`` (seconds, any monotonic clock), at most one per message:
        a caller that falls behind gets the current values, not a burst of old ones.
        A caller that wants the frames it missed asks again at each :meth:`next_due`."""
        self._integrate(now, state)
        frames = []
        for frame_id, build in self._builders.items():
            due = self._next_due.get(frame_id, now)
            if now < due:
                continue
            period = self.layout.messages[frame_id].cycle_ms / 1000
            self._next_due[frame_id] = due + period if due + period > now else now + period
            frames.append((frame_id, build(state)))
        return frames

    def _integrate(self, now: float, state: Model3State) -> None:
        """Move the battery counters on by the energy that flowed since the last call
        (held at the previous state, like the car's own coulomb counting)."""
        if self._last is not None:
            then, previous = self._last
            if now > then:
                hours = Fraction(now - then) / SECONDS_PER_HOUR
                ac_wh = Fraction(previous.line_voltage) * Fraction(previous.charger_current) * hours
                into_pack = ac_wh * CHARGER_EFFICIENCY
                self.counters.charge_wh += into_pack
                self.counters.ac_charge_wh += into_pack
        self._last = (now, state)

    def _encode(self, frame_id: int, values: dict[str, int]) -> bytes:
        return self.layout.encode(frame_id, values)

    def _raw(self, frame_id: int, name: str, physical: Fraction | int) -> int:
        return self.layout.signal(frame_id, name).raw_for(physical)

    def _evse_status(self, state: Model3State) -> bytes:
        if state.latched:
            proximity = Proximity.LATCHED
        elif state.plugged:
            proximity = Proximity.UNLATCHED
        else:
            proximity = Proximity.DISCONNECTED
        if not state.plugged:
            pilot = Pilot.NONE
        elif state.pilot_current > 0:
            pilot = Pilot.LINE_CHARGE
        else:
            pilot = Pilot.IDLE
        swcan = SwcanState.ESTABLISHED if state.swcan_established else SwcanState.INACTIVE
        return self._encode(sig.EVSE_STATUS, {
            "CP_proximity": proximity,
            "CP_pilot": pilot,
            "CP_pilotCurrent": self._raw(sig.EVSE_STATUS, "CP_pilotCurrent", state.pilot_current),
            "CP_teslaSwcanState": swcan,
            "CP_digitalCommsEstablished": int(state.swcan_established),
            "CP_acChargeState": state.ac_charge_state if state.plugged else AcChargeState.INACTIVE,
        })

    def _pcs_status(self, state: Model3State) -> bytes:
        if state.plugged and state.ac_charge_state == AcChargeState.ENABLED:
            main = PcsChargeState.ENABLE if state.line_voltage > 0 else PcsChargeState.WAIT_FOR_LINE_VOLTAGE
        else:
            main = PcsChargeState.IDLE
        return self._encode(sig.PCS_CHARGE_STATUS, {"PCS_chgMainState": main})

    def _line_status(self, state: Model3State) -> bytes:
        frame = sig.CHARGE_LINE_STATUS
        kilowatts = Fraction(state.line_voltage) * Fraction(state.charger_current) / 1000
        return self._encode(frame, {
            "ChargeLineVoltage264": self._raw(frame, "ChargeLineVoltage264", state.line_voltage),
            "ChargeLineCurrent264": self._raw(frame, "ChargeLineCurrent264", state.charger_current),
            "ChargeLinePower264": self._raw(frame, "ChargeLinePower264", kilowatts),
            "ChargeLineCurrentLimit264": self._raw(frame, "ChargeLineCurrentLimit264", state.pilot_current),
        })

    def _bms_soc(self, state: Model3State) -> bytes:
        return self._encode(sig.BMS_SOC, {
            "SOCUI292": self._raw(sig.BMS_SOC, "SOCUI292", state.soc_percent),
            "SOCave292": self._raw(sig.BMS_SOC, "SOCave292", state.soc_percent),
        })

    def _pcs_logging(self, state: Model3State) -> bytes:
        frame = sig.PCS_LOGGING
        page = self.pcs_pages[self._pcs_index % len(self.pcs_pages)]
        self._pcs_index += 1
        values = {"PCS_logMessageSelect": page}
        # A single-phase supply is shared by the three phase modules.
        phase_current = Fraction(state.charger_current) / 3
        by_page = {
            0: {"PCS_chgPhAInputIrms": phase_current},
            1: {"PCS_chgPhBInputIrms": phase_current},
            2: {"PCS_chgPhCInputIrms": phase_current},
            3: {"PCS_chgInputL1NVrms": state.line_voltage, "PCS_chgInputL2NVrms": state.line_voltage},
            5: {"PCS_chgPhManCurrentToDist": state.charger_current},
        }
        for name, physical in by_page.get(page, {}).items():
            values[name] = self._raw(frame, name, physical)
        return self._encode(frame, values)

    def _ui_range(self, state: Model3State) -> bytes:
        frame = sig.UI_RANGE_SOC
        miles = Fraction(state.soc_percent) * RATED_RANGE_AT_FULL_MI / 100
        return self._encode(frame, {
            "UI_Range": self._raw(frame, "UI_Range", miles),
            "UI_SOC": self._raw(frame, "UI_SOC", state.soc_percent),
        })

    def _kwh_counters(self, state: Model3State) -> bytes:
        frame = sig.TOTAL_CHARGE_DISCHARGE
        counters = {"TotalDischargeKWh3D2": self.counters.discharge_wh, "TotalChargeKWh3D2": self.counters.charge_wh}
        return self._encode(frame, {name: self._raw(frame, name, self._kwh(wh)) for name, wh in counters.items()})

    def _bms_counters(self, state: Model3State) -> bytes:
        frame = sig.BMS_COUNTERS
        page = BMS_COUNTER_PAGES[self._counter_index % len(BMS_COUNTER_PAGES)]
        self._counter_index += 1
        name, wh = {
            0: ("BMStotalACcharge3F2", self.counters.ac_charge_wh),
            1: ("BMStotalDCcharge3F2", self.counters.dc_charge_wh),
            2: ("BMStotalRegenCharge3F2", self.counters.regen_wh),
            3: ("BMStotalDriveDischarge3F2", self.counters.drive_discharge_wh),
        }[page]
        return self._encode(frame, {"BMSCountersIndex3F2": page, name: self._raw(frame, name, self._kwh(wh))})

    @staticmethod
    def _kwh(wh: Fraction) -> Fraction:
        # A counter shows whole Wh it has completed, never a Wh still being delivered.
        return Fraction(int(wh), 1000)


async def run_emitter(
    bus: can.BusABC,
    source: Callable[[], Model3State],
    *,
    layout: str = "2025",
    clock: Clock | None = None,
    interval: float = 0.01,
    emitter: Model3Emitter | None = None,
) -> None:
    """Send the car's frames on ``bus`` until cancelled, reading the physical state from
    ``source()`` every ``interval`` seconds of ``clock`` time."""
    clock = clock or Clock()
    emitter = emitter or Model3Emitter(layout)
    while True:
        for frame_id, data in emitter.frames_at(clock.monotonic(), source()):
            bus.send(can.Message(arbitration_id=frame_id, data=data, is_extended_id=False))
        await clock.sleep(interval)
