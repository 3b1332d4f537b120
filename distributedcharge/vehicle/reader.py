"""What the car's own CAN bus says about charging, as a sans-IO state machine.

Feed it every received frame as ``(arbitration_id, data, timestamp)``; it returns the
events the frame produced (readings for :class:`~distributedcharge.vehicle.meter.EnergyMeter`,
refusals to log, a detected layout) and keeps the latest plug, SWCAN, charge state,
pilot current, line voltage and charger current. Time only comes from frame
timestamps and :meth:`VehicleState.tick`; a value older than ``stale_after_us`` counts as
unknown.

Firmware moved CP_acChargeState by one bit (see :mod:`.signals`), so no decision rests
on that signal alone: ``charging`` also needs a measured charger current above a
threshold, and in ``"auto"`` mode nothing that moved is read until a frame shows which
layout the car uses.

Line voltage is ``PCS_chgInputL2NVrms`` (0x2C4 page 3), the signal DistributedCharge
meters with (L1-N and L1-L2 sit on the same page). The original's car-versus-wall
energy check tolerates only 2.5-20 % disagreement and worked against a wall meter, which
suggests L2-N carries the full single-phase supply on a North-American car; we have not
confirmed it on a car. 0x264's line voltage is kept as a cross-check, not metered,
because its scale differs by 0.9 % between definitions.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from fractions import Fraction
from typing import Callable, Union

from distributedcharge.vehicle import signals as sig
from distributedcharge.vehicle.meter import (
    DEFAULT_MAX_GAP_US,
    CurrentReading,
    VoltageReading,
    timestamp_us,
)
from distributedcharge.vehicle.signals import AcChargeState, PcsChargeState, Proximity, SwcanState

DEFAULT_CHARGING_CURRENT_DA = 10
VOLTAGE_SIGNAL = "PCS_chgInputL2NVrms"
CURRENT_SIGNAL = "PCS_chgPhManCurrentToDist"

# The original treats both as "the car wants to charge"; newer firmware reports
# CONNECTED_CHARGE_BLOCKED for most of a session.
CHARGE_WANTED = frozenset({AcChargeState.ENABLED, AcChargeState.CONNECTED_CHARGE_BLOCKED})

WANTED_IDS = (
    sig.EVSE_STATUS,
    sig.PCS_CHARGE_STATUS,
    sig.CHARGE_LINE_STATUS,
    sig.BMS_SOC,
    sig.PCS_LOGGING,
    sig.UI_RANGE_SOC,
    sig.TOTAL_CHARGE_DISCHARGE,
    sig.BMS_COUNTERS,
)


def vehicle_can_filters() -> list[dict]:
    """python-can ``can_filters`` for just the frames :class:`VehicleState` reads (~53 of
    the bus's ~1,900 frames per second)."""
    return [{"can_id": frame_id, "can_mask": 0x7FF, "extended": False} for frame_id in WANTED_IDS]


@dataclass(frozen=True)
class Malformed:
    arbitration_id: int
    reason: str


@dataclass(frozen=True)
class LayoutDetected:
    layout: str


Event = Union[VoltageReading, CurrentReading, Malformed, LayoutDetected]


@dataclass(frozen=True)
class Timed:
    value: int
    at_us: int


@dataclass(frozen=True)
class LineStatus:
    """0x264, the non-multiplexed cross-check of the metered values."""

    voltage_raw: int | None
    volts_per_raw: Fraction | None
    deciamps: int
    hectowatts: int
    limit_deciamps: int
    at_us: int

    @property
    def volts(self) -> Fraction | None:
        """None until the layout is known: the two generations scale it differently."""
        if self.voltage_raw is None or self.volts_per_raw is None:
            return None
        return self.voltage_raw * self.volts_per_raw


@dataclass(frozen=True)
class EvseStatus:
    proximity: int
    pilot_current_da: int
    swcan_state: int | None
    ac_charge_state: int | None
    at_us: int


# Signals the state keeps in tenths of their unit (decivolts, deciamps) or in Wh.
_IN_TENTHS = (
    (sig.EVSE_STATUS, "CP_pilotCurrent"),
    (sig.CHARGE_LINE_STATUS, "ChargeLineCurrent264"),
    (sig.CHARGE_LINE_STATUS, "ChargeLineCurrentLimit264"),
    (sig.PCS_LOGGING, VOLTAGE_SIGNAL),
    (sig.PCS_LOGGING, CURRENT_SIGNAL),
)
_IN_WH = (
    (sig.TOTAL_CHARGE_DISCHARGE, "TotalDischargeKWh3D2"),
    (sig.TOTAL_CHARGE_DISCHARGE, "TotalChargeKWh3D2"),
    (sig.BMS_COUNTERS, "BMStotalACcharge3F2"),
)


def _units_per_raw(layout: sig.Layout) -> dict[tuple[int, str], int]:
    """Whole units per raw count, worked out once per layout so no frame needs a Fraction."""
    factors = {}
    for keys, units_per_unit in ((_IN_TENTHS, 10), (_IN_WH, 1000)):
        for frame_id, name in keys:
            if frame_id in layout.messages:
                try:
                    per_raw = layout.signal(frame_id, name).scale * units_per_unit
                except KeyError:
                    continue
                if per_raw.denominator != 1:
                    raise ValueError(f"{name}: one raw count is not a whole number of units")
                factors[frame_id, name] = int(per_raw)
    return factors


class VehicleState:
    def __init__(
        self,
        layout: str = sig.AUTO,
        *,
        stale_after_us: int = DEFAULT_MAX_GAP_US,
        charging_current_da: int = DEFAULT_CHARGING_CURRENT_DA,
    ):
        if layout not in sig.LAYOUT_CHOICES:
            raise ValueError(f"unknown layout {layout!r}; choose one of {', '.join(sig.LAYOUT_CHOICES)}")
        self.layout_name: str | None = None if layout == sig.AUTO else layout
        self._use_layout(sig.COMMON if self.layout_name is None else sig.layout(self.layout_name))
        self.stale_after_us = stale_after_us
        self.charging_current_da = charging_current_da
        self.malformed: Counter[int] = Counter()
        self.now_us: int | None = None
        self.evse: EvseStatus | None = None
        self.line_voltage: Timed | None = None
        self.charger_current: Timed | None = None
        self.line_status: LineStatus | None = None
        self.pcs_state: Timed | None = None
        self.soc_permille: Timed | None = None
        self.rated_range_mi: Timed | None = None
        self.total_discharge_wh: Timed | None = None
        self.total_charge_wh: Timed | None = None
        self.ac_charge_wh: Timed | None = None
        self._charge_wanted = False
        self._last_frame_us: dict[int, int] = {}
        self._handlers: dict[int, Callable[[dict[str, int], int], tuple[Event, ...]]] = {
            sig.EVSE_STATUS: self._evse_status,
            sig.PCS_CHARGE_STATUS: self._pcs_status,
            sig.CHARGE_LINE_STATUS: self._line_status,
            sig.BMS_SOC: self._bms_soc,
            sig.PCS_LOGGING: self._pcs_logging,
            sig.UI_RANGE_SOC: self._ui_range,
            sig.TOTAL_CHARGE_DISCHARGE: self._kwh_counters,
            sig.BMS_COUNTERS: self._bms_counters,
        }

    # --- input -------------------------------------------------------------------------

    def feed(self, arbitration_id: int, data: bytes, timestamp: float) -> tuple[Event, ...]:
        """Take one received frame. Frames we do not read give ``()``; frames we cannot
        believe are counted in :attr:`malformed`, change nothing and give a
        :class:`Malformed` to log."""
        if isinstance(arbitration_id, bool) or not isinstance(arbitration_id, int):
            return self._refuse(-1, f"arbitration id {arbitration_id!r} is not an integer")
        if arbitration_id not in self._handlers:
            return ()
        if not isinstance(data, (bytes, bytearray, memoryview)):
            return self._refuse(arbitration_id, f"data is {type(data).__name__}, not bytes")
        try:
            at_us = timestamp_us(timestamp)
        except (TypeError, ValueError, OverflowError) as exc:
            return self._refuse(arbitration_id, f"bad timestamp: {exc}")
        previous = self._last_frame_us.get(arbitration_id)
        if previous is not None and at_us < previous:
            return self._refuse(arbitration_id, "timestamp earlier than the previous frame of this id")

        layout = self._layout
        detected = self.layout_name is None and sig.layout_evidence(arbitration_id, data)
        if detected:
            layout = sig.layout(detected)
        if arbitration_id not in layout.messages:
            return ()
        try:
            values = layout.decode(arbitration_id, data)
        except sig.FrameError as exc:
            return self._refuse(arbitration_id, str(exc))

        events: tuple[Event, ...] = ()
        if detected:
            # Only a frame that also decodes cleanly in that layout may settle it.
            self.layout_name = detected
            self._use_layout(layout)
            events = (LayoutDetected(detected),)
        self._last_frame_us[arbitration_id] = at_us
        self.tick_us(at_us)
        return events + self._handlers[arbitration_id](values, at_us)

    def tick(self, timestamp: float) -> None:
        """Let time pass without a frame (same clock as the frame timestamps), so values
        go stale when the bus falls silent."""
        self.tick_us(timestamp_us(timestamp))

    def tick_us(self, at_us: int) -> None:
        if self.now_us is None or at_us > self.now_us:
            self.now_us = at_us

    def _use_layout(self, layout: sig.Layout) -> None:
        self._layout = layout
        self._per_raw = _units_per_raw(layout)

    def _refuse(self, arbitration_id: int, reason: str) -> tuple[Event, ...]:
        self.malformed[arbitration_id] += 1
        return (Malformed(arbitration_id, reason),)

    def _units(self, frame_id: int, name: str, values: dict[str, int]) -> int:
        return values[name] * self._per_raw[frame_id, name]

    # --- per-message decoding ----------------------------------------------------------

    def _evse_status(self, values: dict[str, int], at_us: int) -> tuple[Event, ...]:
        ac_state = values.get("CP_acChargeState")
        self.evse = EvseStatus(
            proximity=values["CP_proximity"],
            pilot_current_da=self._units(sig.EVSE_STATUS, "CP_pilotCurrent", values),
            swcan_state=values.get("CP_teslaSwcanState"),
            ac_charge_state=ac_state,
            at_us=at_us,
        )
        if self.evse.proximity != Proximity.LATCHED:
            self._charge_wanted = False
        elif ac_state in CHARGE_WANTED:
            self._charge_wanted = True
        elif ac_state == AcChargeState.STANDBY:
            self._charge_wanted = False
        return ()

    def _pcs_status(self, values: dict[str, int], at_us: int) -> tuple[Event, ...]:
        self.pcs_state = Timed(values["PCS_chgMainState"], at_us)
        return ()

    def _line_status(self, values: dict[str, int], at_us: int) -> tuple[Event, ...]:
        frame = sig.CHARGE_LINE_STATUS
        voltage = values.get("ChargeLineVoltage264")
        volts_per_raw = None if voltage is None else self._layout.signal(frame, "ChargeLineVoltage264").scale
        self.line_status = LineStatus(
            voltage_raw=voltage,
            volts_per_raw=volts_per_raw,
            deciamps=self._units(frame, "ChargeLineCurrent264", values),
            hectowatts=values["ChargeLinePower264"],
            limit_deciamps=self._units(frame, "ChargeLineCurrentLimit264", values),
            at_us=at_us,
        )
        return ()

    def _pcs_logging(self, values: dict[str, int], at_us: int) -> tuple[Event, ...]:
        if VOLTAGE_SIGNAL in values:
            decivolts = self._units(sig.PCS_LOGGING, VOLTAGE_SIGNAL, values)
            self.line_voltage = Timed(decivolts, at_us)
            return (VoltageReading(at_us, decivolts),)
        if CURRENT_SIGNAL in values:
            deciamps = self._units(sig.PCS_LOGGING, CURRENT_SIGNAL, values)
            self.charger_current = Timed(deciamps, at_us)
            return (CurrentReading(at_us, deciamps),)
        return ()

    def _bms_soc(self, values: dict[str, int], at_us: int) -> tuple[Event, ...]:
        self.soc_permille = Timed(values["SOCUI292"], at_us)
        return ()

    def _ui_range(self, values: dict[str, int], at_us: int) -> tuple[Event, ...]:
        self.rated_range_mi = Timed(values["UI_Range"], at_us)
        return ()

    def _kwh_counters(self, values: dict[str, int], at_us: int) -> tuple[Event, ...]:
        frame = sig.TOTAL_CHARGE_DISCHARGE
        self.total_discharge_wh = Timed(self._units(frame, "TotalDischargeKWh3D2", values), at_us)
        self.total_charge_wh = Timed(self._units(frame, "TotalChargeKWh3D2", values), at_us)
        return ()

    def _bms_counters(self, values: dict[str, int], at_us: int) -> tuple[Event, ...]:
        if "BMStotalACcharge3F2" in values:
            self.ac_charge_wh = Timed(self._units(sig.BMS_COUNTERS, "BMStotalACcharge3F2", values), at_us)
        return ()

    # --- what the daemon asks ----------------------------------------------------------

    def _fresh(self, at_us: int | None) -> bool:
        return at_us is not None and self.now_us is not None and self.now_us - at_us <= self.stale_after_us

    def _fresh_evse(self) -> EvseStatus | None:
        return self.evse if self.evse is not None and self._fresh(self.evse.at_us) else None

    @property
    def plug_latched(self) -> bool:
        evse = self._fresh_evse()
        return evse is not None and evse.proximity == Proximity.LATCHED

    @property
    def swcan_established(self) -> bool:
        evse = self._fresh_evse()
        return evse is not None and evse.swcan_state == SwcanState.ESTABLISHED

    @property
    def ac_charge_state(self) -> AcChargeState | None:
        """None while unknown: stale, or ``"auto"`` has not yet seen which layout applies."""
        evse = self._fresh_evse()
        return None if evse is None or evse.ac_charge_state is None else AcChargeState(evse.ac_charge_state)

    @property
    def pilot_current_da(self) -> int | None:
        evse = self._fresh_evse()
        return None if evse is None else evse.pilot_current_da

    @property
    def measured_current_da(self) -> int | None:
        """The newest fresh charger current, from 0x2C4 page 5 or 0x264."""
        candidates = []
        if self.charger_current is not None:
            candidates.append((self.charger_current.at_us, self.charger_current.value))
        if self.line_status is not None:
            candidates.append((self.line_status.at_us, self.line_status.deciamps))
        fresh = [c for c in candidates if self._fresh(c[0])]
        return max(fresh)[1] if fresh else None

    @property
    def charging(self) -> bool:
        """Plug latched, the car's state signals say a charge is on, and current flows.

        Any one alone can be wrong: a one-bit layout shift turns a FAULT into ENABLED, a
        PCS can sit in ENABLE at 0 A, and a current reading says nothing about the plug.
        """
        current = self.measured_current_da
        if not self.plug_latched or current is None or current <= self.charging_current_da:
            return False
        pcs_enabled = self.pcs_state is not None and self._fresh(self.pcs_state.at_us) \
            and self.pcs_state.value == PcsChargeState.ENABLE
        return self.ac_charge_state in CHARGE_WANTED or pcs_enabled

    @property
    def relay_should_be_closed(self) -> bool:
        """Connect the car's SWCAN relay (distributedcharge-v1.md step 1): plug latched,
        the Tesla SWCAN link established and AC charging enabled or connected-blocked;
        release on standby or unplug. Other charge states keep the previous decision, as
        the original does. Unknown (stale, or layout not yet known) means open."""
        return self.plug_latched and self.swcan_established and self._charge_wanted
