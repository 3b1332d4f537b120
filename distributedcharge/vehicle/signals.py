"""Tesla Model 3 vehicle-CAN signals the car daemon reads, for each firmware generation.

Every signal layout lives in :data:`SIGNAL_TABLE`; nothing else in the project knows a
bit position. Two generations are known (see shared/reference/tesla-model3-can.md):

* ``"2020"``: joshwardell/model3dbc as DistributedCharge uses it (CP_acChargeState 53|3,
  CP_teslaSwcanState 34|3, CP_digitalCommsEstablished at bit 37, 8-byte 0x264).
* ``"2025"``: the 2025.20.8 / 2026 definitions (CP_acChargeState 52|3, swcanState 34|4
  with the V2L states, CP_digitalCommsEstablished at bit 7, 6-byte 0x264, 4-bit 0x3F2
  multiplexer, UI_SOC moved to 20|7).

0x204 PCS_chgStatus is absent from model3dbc; the 2021 (onyx-m2) and 2026 definitions
agree on PCS_chgMainState 0|4, so both generations carry it.

All signals are Intel (little-endian, start bit = LSB). Decoding yields raw integers;
``Signal.scale`` is the exact ratio from raw counts to the unit, so callers convert to
integer units (decivolts, deciamps, Wh) without floats.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum
from fractions import Fraction
from typing import Mapping

GENERATIONS = ("2020", "2025")
AUTO = "auto"
LAYOUT_CHOICES = (*GENERATIONS, AUTO)

MAX_CLASSIC_CAN_BYTES = 8


class Proximity(IntEnum):
    SNA = 0
    DISCONNECTED = 1
    UNLATCHED = 2
    LATCHED = 3


class Pilot(IntEnum):
    NONE = 0
    FAULTED = 1
    LINE_CHARGE = 2
    FAST_CHARGE = 3
    IDLE = 4
    INVALID = 5
    UNUSED_6 = 6
    SNA = 7


class SwcanState(IntEnum):
    INACTIVE = 0
    ACCEPT = 1
    RECEIVE = 2
    ESTABLISHED = 3
    FAULT = 4
    GO_TO_SLEEP = 5
    OFFBOARD_UPDATE_IN_PROGRESS = 6
    V2L_RECEIVE = 7
    V2L_ESTABLISHED = 8


class AcChargeState(IntEnum):
    INACTIVE = 0
    CONNECTED_CHARGE_BLOCKED = 1
    STANDBY = 2
    ENABLED = 3
    ONBOARD_CHARGER_SHUTDOWN = 4
    VEH_SHUTDOWN = 5
    FAULT = 6


class PcsChargeState(IntEnum):
    INIT = 0
    IDLE = 1
    STARTUP = 2
    WAIT_FOR_LINE_VOLTAGE = 3
    QUALIFY_LINE_CONFIG = 4
    SYSTEM_CONFIG = 5
    ENABLE = 6
    SHUTDOWN = 7
    FAULTED = 8
    CLEAR_FAULTS = 9


def _names(enum: type[IntEnum], prefix: str, highest: int | None = None) -> dict[int, str]:
    return {m.value: prefix + m.name for m in enum if highest is None or m.value <= highest}


PROXIMITY_NAMES = _names(Proximity, "CHG_PROXIMITY_")
PILOT_NAMES = _names(Pilot, "CHG_PILOT_")
SWCAN_NAMES_2020 = _names(SwcanState, "TESLA_SWCAN_", SwcanState.OFFBOARD_UPDATE_IN_PROGRESS)
SWCAN_NAMES_2025 = _names(SwcanState, "TESLA_SWCAN_")
AC_CHARGE_NAMES = _names(AcChargeState, "AC_CHARGE_")
PCS_CHARGE_NAMES = _names(PcsChargeState, "PCS_CHG_STATE_")

EVSE_STATUS = 0x21D
PCS_LOGGING = 0x2C4
CHARGE_LINE_STATUS = 0x264
PCS_CHARGE_STATUS = 0x204
BMS_SOC = 0x292
UI_RANGE_SOC = 0x33A
TOTAL_CHARGE_DISCHARGE = 0x3D2
BMS_COUNTERS = 0x3F2

# 0x2C4 pages and 0x3F2 pages the daemon reads.
PCS_PAGE_CHARGER_LINE_VOLTAGES = 3
PCS_PAGE_CHARGER_PHASE_MANAGER = 5
BMS_COUNTERS_PAGE_AC_CHARGE = 0

BOTH = GENERATIONS
ONLY_2020 = ("2020",)
ONLY_2025 = ("2025",)
SELECTOR = "M"

# frame id -> (name, cycle in ms as seen on a recorded car, data length per generation)
MESSAGE_TABLE: Mapping[int, tuple[str, int, Mapping[str, int]]] = {
    EVSE_STATUS: ("CP_evseStatus", 100, {"2020": 8, "2025": 8}),
    PCS_CHARGE_STATUS: ("PCS_chgStatus", 100, {"2020": 8, "2025": 8}),
    CHARGE_LINE_STATUS: ("ChargeLineStatus", 100, {"2020": 8, "2025": 6}),
    BMS_SOC: ("BMS_SOC", 100, {"2020": 8, "2025": 8}),
    PCS_LOGGING: ("PCS_logging", 100, {"2020": 8, "2025": 8}),
    UI_RANGE_SOC: ("UI_rangeSOC", 1000, {"2020": 8, "2025": 8}),
    TOTAL_CHARGE_DISCHARGE: ("TotalChargeDischarge", 1000, {"2020": 8, "2025": 8}),
    BMS_COUNTERS: ("BMSCounters", 1000, {"2020": 8, "2025": 8}),
}

# generations, frame id, page (None = every frame, "M" = the multiplexer), signal name,
# start bit, length, signed, scale (exact: raw count -> unit), unit, value names
SIGNAL_TABLE: tuple[tuple, ...] = (
    (BOTH, EVSE_STATUS, None, "CP_proximity", 2, 2, False, "1", "", PROXIMITY_NAMES),
    (BOTH, EVSE_STATUS, None, "CP_pilot", 4, 3, False, "1", "", PILOT_NAMES),
    (ONLY_2025, EVSE_STATUS, None, "CP_digitalCommsEstablished", 7, 1, False, "1", "", None),
    (BOTH, EVSE_STATUS, None, "CP_pilotCurrent", 8, 8, False, "0.5", "A", None),
    (ONLY_2020, EVSE_STATUS, None, "CP_teslaSwcanState", 34, 3, False, "1", "", SWCAN_NAMES_2020),
    (ONLY_2025, EVSE_STATUS, None, "CP_teslaSwcanState", 34, 4, False, "1", "", SWCAN_NAMES_2025),
    (ONLY_2020, EVSE_STATUS, None, "CP_digitalCommsEstablished", 37, 1, False, "1", "", None),
    (ONLY_2020, EVSE_STATUS, None, "CP_acChargeState", 53, 3, False, "1", "", AC_CHARGE_NAMES),
    (ONLY_2025, EVSE_STATUS, None, "CP_acChargeState", 52, 3, False, "1", "", AC_CHARGE_NAMES),

    (BOTH, PCS_CHARGE_STATUS, None, "PCS_chgMainState", 0, 4, False, "1", "", PCS_CHARGE_NAMES),

    (ONLY_2020, CHARGE_LINE_STATUS, None, "ChargeLineVoltage264", 0, 14, False, "0.0333", "V", None),
    (ONLY_2025, CHARGE_LINE_STATUS, None, "ChargeLineVoltage264", 0, 14, False, "0.033", "V", None),
    (BOTH, CHARGE_LINE_STATUS, None, "ChargeLineCurrent264", 14, 9, False, "0.1", "A", None),
    (BOTH, CHARGE_LINE_STATUS, None, "ChargeLinePower264", 24, 8, False, "0.1", "kW", None),
    (BOTH, CHARGE_LINE_STATUS, None, "ChargeLineCurrentLimit264", 32, 10, False, "0.1", "A", None),

    (BOTH, BMS_SOC, None, "SOCUI292", 10, 10, False, "0.1", "%", None),
    (BOTH, BMS_SOC, None, "SOCave292", 30, 10, False, "0.1", "%", None),

    (BOTH, PCS_LOGGING, SELECTOR, "PCS_logMessageSelect", 0, 5, False, "1", "", None),
    (BOTH, PCS_LOGGING, 0, "PCS_chgPhAInputIrms", 5, 9, False, "0.1", "A", None),
    (BOTH, PCS_LOGGING, 1, "PCS_chgPhBInputIrms", 5, 9, False, "0.1", "A", None),
    (BOTH, PCS_LOGGING, 2, "PCS_chgPhCInputIrms", 5, 9, False, "0.1", "A", None),
    (BOTH, PCS_LOGGING, 3, "PCS_chgInputL1NVrms", 5, 12, False, "0.2", "V", None),
    (BOTH, PCS_LOGGING, 3, "PCS_chgInputL2NVrms", 17, 12, False, "0.2", "V", None),
    (BOTH, PCS_LOGGING, 5, "PCS_chgPhManCurrentToDist", 44, 10, False, "0.1", "A", None),

    (BOTH, UI_RANGE_SOC, None, "UI_Range", 0, 10, False, "1", "mi", None),
    (ONLY_2020, UI_RANGE_SOC, None, "UI_SOC", 48, 7, False, "1", "%", None),
    (ONLY_2025, UI_RANGE_SOC, None, "UI_SOC", 20, 7, False, "1", "%", None),

    (BOTH, TOTAL_CHARGE_DISCHARGE, None, "TotalDischargeKWh3D2", 0, 32, False, "0.001", "kWh", None),
    (BOTH, TOTAL_CHARGE_DISCHARGE, None, "TotalChargeKWh3D2", 32, 32, False, "0.001", "kWh", None),

    (ONLY_2020, BMS_COUNTERS, SELECTOR, "BMSCountersIndex3F2", 0, 3, False, "1", "", None),
    (ONLY_2025, BMS_COUNTERS, SELECTOR, "BMSCountersIndex3F2", 0, 4, False, "1", "", None),
    (BOTH, BMS_COUNTERS, 0, "BMStotalACcharge3F2", 8, 32, False, "0.001", "kWh", None),
    (BOTH, BMS_COUNTERS, 1, "BMStotalDCcharge3F2", 8, 32, False, "0.001", "kWh", None),
    (BOTH, BMS_COUNTERS, 2, "BMStotalRegenCharge3F2", 8, 32, False, "0.001", "kWh", None),
    (BOTH, BMS_COUNTERS, 3, "BMStotalDriveDischarge3F2", 8, 32, False, "0.001", "kWh", None),
)


class FrameError(ValueError):
    """A frame that cannot be what the layout says: too short, too long, undefined value."""


@dataclass(frozen=True)
class Signal:
    name: str
    start: int
    length: int
    signed: bool
    scale: Fraction
    unit: str
    value_names: Mapping[int, str] | None = None

    @property
    def mask(self) -> int:
        return (1 << self.length) - 1

    @property
    def bytes_needed(self) -> int:
        return (self.start + self.length + 7) // 8

    @property
    def raw_range(self) -> tuple[int, int]:
        if self.signed:
            return -(1 << (self.length - 1)), (1 << (self.length - 1)) - 1
        return 0, self.mask

    def insert(self, frame_value: int, raw: int) -> int:
        low, high = self.raw_range
        if not low <= raw <= high:
            raise ValueError(f"{self.name}: {raw} does not fit {self.length} bits")
        return (frame_value & ~(self.mask << self.start)) | ((raw & self.mask) << self.start)

    def raw_for(self, physical: Fraction | int) -> int:
        """Nearest raw count (halves round up) for a physical value, clamped to the field."""
        counts = Fraction(physical) / self.scale
        low, high = self.raw_range
        return max(low, min(high, (counts + Fraction(1, 2)).__floor__()))


# How to read one page of a message: bytes needed, then per signal
# (name, start, mask, sign bit or 0, defined raw values or None).
_Plan = tuple[int, tuple[tuple[str, int, int, int, "frozenset[int] | None"], ...]]
_NOTHING: _Plan = (0, ())


def _plan(signals: tuple[Signal, ...]) -> _Plan:
    needed = max((s.bytes_needed for s in signals), default=0)
    steps = tuple(
        (s.name, s.start, s.mask, 1 << (s.length - 1) if s.signed else 0,
         None if s.value_names is None else frozenset(s.value_names))
        for s in signals)
    return needed, steps


@dataclass(frozen=True)
class Message:
    frame_id: int
    name: str
    length: int
    cycle_ms: int
    signals: tuple[Signal, ...]
    multiplexer: Signal | None = None
    pages: Mapping[int, tuple[Signal, ...]] = field(default_factory=dict)
    _plans: dict[int | None, _Plan] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.multiplexer is None:
            plans = {None: _plan(self.signals)}
        else:
            plans = {page: _plan(signals) for page, signals in self.pages.items()}
        object.__setattr__(self, "_plans", plans)

    def signals_for(self, page: int | None) -> tuple[Signal, ...]:
        return self.signals if self.multiplexer is None else self.pages.get(page, ())

    def all_signals(self) -> tuple[Signal, ...]:
        if self.multiplexer is None:
            return self.signals
        return (self.multiplexer, *(s for page in self.pages.values() for s in page))

    def decode(self, data: bytes) -> dict[str, int]:
        """Raw integer of every signal this frame carries; pages we do not define give just
        the multiplexer. Raises :class:`FrameError` for a frame that cannot be right."""
        size = len(data)
        if size > MAX_CLASSIC_CAN_BYTES:
            raise FrameError(f"{size} data bytes; classic CAN carries at most 8")
        value = int.from_bytes(data, "little")
        mux = self.multiplexer
        if mux is None:
            decoded: dict[str, int] = {}
            needed, steps = self._plans[None]
        else:
            if size < mux.bytes_needed:
                raise FrameError(f"{size} data bytes; the multiplexer needs {mux.bytes_needed}")
            page = (value >> mux.start) & mux.mask
            decoded = {mux.name: page}
            needed, steps = self._plans.get(page, _NOTHING)
        if size < needed:
            raise FrameError(f"{size} data bytes; {needed} needed")
        for name, start, mask, sign, defined in steps:
            raw = (value >> start) & mask
            if sign and raw & sign:
                raw -= sign << 1
            if defined is not None and raw not in defined:
                raise FrameError(f"{name} = {raw} is not a defined value")
            decoded[name] = raw
        return decoded

    def encode(self, raw_values: Mapping[str, int]) -> bytes:
        """A frame of this message's length; signals not given are zero."""
        page = None
        value = 0
        if self.multiplexer is not None:
            page = raw_values.get(self.multiplexer.name, 0)
            value = self.multiplexer.insert(value, page)
        signals = self.signals_for(page)
        known = {s.name for s in signals} | ({self.multiplexer.name} if self.multiplexer else set())
        unknown = set(raw_values) - known
        if unknown:
            raise ValueError(f"{self.name} page {page}: no signal {', '.join(sorted(unknown))}")
        for signal in signals:
            value = signal.insert(value, raw_values.get(signal.name, 0))
        return value.to_bytes(self.length, "little")


@dataclass(frozen=True)
class Layout:
    name: str
    messages: Mapping[int, Message]
    _by_name: dict[tuple[int, str], Signal] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        index = {(frame_id, s.name): s for frame_id, m in self.messages.items() for s in m.all_signals()}
        object.__setattr__(self, "_by_name", index)

    def decode(self, frame_id: int, data: bytes) -> dict[str, int]:
        try:
            message = self.messages[frame_id]
        except KeyError:
            raise FrameError(f"0x{frame_id:03X} is not in the {self.name} layout") from None
        return message.decode(data)

    def encode(self, frame_id: int, raw_values: Mapping[str, int]) -> bytes:
        return self.messages[frame_id].encode(raw_values)

    def signal(self, frame_id: int, name: str) -> Signal:
        try:
            return self._by_name[frame_id, name]
        except KeyError:
            raise KeyError(f"0x{frame_id:03X} has no {name} in the {self.name} layout") from None


def _build(generation: str) -> Layout:
    grouped: dict[int, list[tuple]] = {}
    for row in SIGNAL_TABLE:
        generations, frame_id, page, name, start, length, signed, scale, unit, names = row
        if generation in generations:
            signal = Signal(name, start, length, signed, Fraction(scale), unit, names)
            grouped.setdefault(frame_id, []).append((page, signal))
    messages = {}
    for frame_id, rows in grouped.items():
        name, cycle_ms, lengths = MESSAGE_TABLE[frame_id]
        messages[frame_id] = _message(frame_id, name, lengths[generation], cycle_ms, rows)
    return Layout(generation, messages)


def _message(frame_id: int, name: str, length: int, cycle_ms: int, rows: list[tuple]) -> Message:
    selectors = [s for page, s in rows if page == SELECTOR]
    if selectors:
        pages: dict[int, list[Signal]] = {}
        for page, signal in rows:
            if page != SELECTOR:
                pages.setdefault(page, []).append(signal)
        message = Message(frame_id, name, length, cycle_ms, (), selectors[0],
                          {p: tuple(s) for p, s in pages.items()})
    else:
        message = Message(frame_id, name, length, cycle_ms, tuple(s for _, s in rows))
    _check_bits(message)
    return message


def _check_bits(message: Message) -> None:
    """Refuse a table whose signals overlap or overrun the frame: a typo there would
    otherwise misread a frame silently."""
    if message.multiplexer is None:
        groups = [message.signals]
    else:
        groups = [(message.multiplexer, *page) for page in message.pages.values()] or [(message.multiplexer,)]
    for group in groups:
        used = 0
        for signal in group:
            bits = signal.mask << signal.start
            if used & bits:
                raise ValueError(f"0x{message.frame_id:03X}: {signal.name} overlaps another signal")
            if signal.bytes_needed > message.length:
                raise ValueError(f"0x{message.frame_id:03X}: {signal.name} runs past byte {message.length}")
            used |= bits


def _common(a: Layout, b: Layout) -> Layout:
    """What both generations agree on bit for bit: safe to read before we know which one
    the car runs. A message whose multiplexer moved is left out entirely."""
    messages = {}
    for frame_id, first in a.messages.items():
        second = b.messages[frame_id]
        length = min(first.length, second.length)
        if first.multiplexer is None:
            same = tuple(s for s in first.signals if s in second.signals)
            if same:
                messages[frame_id] = Message(frame_id, first.name, length, first.cycle_ms, same)
        elif first.multiplexer == second.multiplexer:
            pages = {page: tuple(s for s in signals if s in second.pages.get(page, ()))
                     for page, signals in first.pages.items()}
            messages[frame_id] = Message(frame_id, first.name, length, first.cycle_ms, (),
                                         first.multiplexer, {p: s for p, s in pages.items() if s})
    return Layout("common", messages)


LAYOUTS: Mapping[str, Layout] = {generation: _build(generation) for generation in GENERATIONS}
COMMON = _common(LAYOUTS["2020"], LAYOUTS["2025"])


def layout(name: str) -> Layout:
    try:
        return LAYOUTS[name]
    except KeyError:
        raise ValueError(f"unknown layout {name!r}; choose one of {', '.join(GENERATIONS)}") from None


def layout_evidence(frame_id: int, data: bytes) -> str | None:
    """The generation a 0x21D frame can only have come from, or None if it fits both.

    Two bits tell them apart, and both are set exactly when the charge port has
    established digital communication, which is when the daemon needs to know:
    bit 7 is CP_digitalCommsEstablished in 2025 and unused in 2020; bit 37 is
    CP_digitalCommsEstablished in 2020 but the top bit of the 4-bit 2025 swcanState,
    whose values 9..15 are undefined.
    """
    if frame_id != EVSE_STATUS or len(data) < 5 or len(data) > MAX_CLASSIC_CAN_BYTES:
        return None
    value = int.from_bytes(data, "little")
    looks_2025 = bool((value >> 7) & 1)
    looks_2020 = (value >> 34) & 0xF > max(SwcanState)
    if looks_2025 == looks_2020:
        return None
    return "2025" if looks_2025 else "2020"
