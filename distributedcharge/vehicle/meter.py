"""The car's energy meter: line voltage x charger current over the frames' own time.

Everything is an integer: decivolts x deciamps x microseconds is 1e-8 J, i.e. exactly
10 nJ, so the total is a whole number of nanojoules (``distributedcharge.units``) with
no rounding anywhere and no drift over a long session.

Sample and hold: each reading holds from its own timestamp until the next reading of
either kind, and each interval between consecutive readings is charged at the voltage
and current held at its start. Gap rule: an interval whose end lies more than
``max_gap_us`` after the voltage or the current it would use adds nothing, so a bus
that falls silent (or a multiplexed page that stops coming) never bills a stale value
across the silence. Readings older than the newest one already taken are refused and
counted; equal timestamps update the held value and add nothing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

DEFAULT_MAX_GAP_US = 2_000_000
NJ_PER_DECIVOLT_DECIAMP_MICROSECOND = 10
US_PER_S = 1_000_000


def timestamp_us(seconds: float | int) -> int:
    """A frame timestamp in seconds (python-can's float) as whole microseconds: the one
    place a float time becomes an integer."""
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
        raise TypeError(f"timestamp must be a number of seconds, got {type(seconds).__name__}")
    if isinstance(seconds, float) and not math.isfinite(seconds):
        raise ValueError(f"timestamp must be finite, got {seconds}")
    return round(seconds * US_PER_S)


@dataclass(frozen=True)
class VoltageReading:
    at_us: int
    decivolts: int


@dataclass(frozen=True)
class CurrentReading:
    at_us: int
    deciamps: int


@dataclass(frozen=True)
class _Held:
    at_us: int
    value: int


class EnergyMeter:
    def __init__(self, max_gap_us: int = DEFAULT_MAX_GAP_US):
        if not isinstance(max_gap_us, int) or max_gap_us <= 0:
            raise ValueError(f"max_gap_us must be a positive integer, got {max_gap_us!r}")
        self.max_gap_us = max_gap_us
        self.energy_nj = 0
        self.refused = 0
        self.gaps = 0
        self.gap_us = 0
        self._voltage: _Held | None = None
        self._current: _Held | None = None
        self._latest_us: int | None = None

    @property
    def power_mw(self) -> int | None:
        """Power at the held readings, in milliwatts (0.1 V x 0.1 A = 10 mW)."""
        if self._voltage is None or self._current is None:
            return None
        return self._voltage.value * self._current.value * 10

    @property
    def decivolts(self) -> int | None:
        return None if self._voltage is None else self._voltage.value

    @property
    def deciamps(self) -> int | None:
        return None if self._current is None else self._current.value

    def observe(self, event: object) -> int:
        """Take a reading from :meth:`VehicleState.feed`; anything else is not a reading
        and adds nothing. Returns the nanojoules this reading closed."""
        if isinstance(event, VoltageReading):
            return self.voltage(event.at_us, event.decivolts)
        if isinstance(event, CurrentReading):
            return self.current(event.at_us, event.deciamps)
        return 0

    def voltage(self, at_us: int, decivolts: int) -> int:
        return self._take(at_us, decivolts, is_voltage=True)

    def current(self, at_us: int, deciamps: int) -> int:
        return self._take(at_us, deciamps, is_voltage=False)

    def _take(self, at_us: int, value: int, *, is_voltage: bool) -> int:
        for name, number in (("timestamp", at_us), ("reading", value)):
            if isinstance(number, bool) or not isinstance(number, int):
                raise TypeError(f"{name} must be an integer, got {number!r}")
        if value < 0:
            raise ValueError(f"a line voltage or charger current cannot be negative, got {value}")
        if self._latest_us is not None and at_us < self._latest_us:
            self.refused += 1
            return 0
        added = self._close_interval(at_us)
        held = _Held(at_us, value)
        if is_voltage:
            self._voltage = held
        else:
            self._current = held
        self._latest_us = at_us
        return added

    def _close_interval(self, end_us: int) -> int:
        start_us = self._latest_us
        if start_us is None or end_us == start_us or self._voltage is None or self._current is None:
            return 0
        span_us = end_us - start_us
        oldest = min(self._voltage.at_us, self._current.at_us)
        if end_us - oldest > self.max_gap_us:
            self.gaps += 1
            self.gap_us += span_us
            return 0
        added = self._voltage.value * self._current.value * span_us * NJ_PER_DECIVOLT_DECIAMP_MICROSECOND
        self.energy_nj += added
        return added
