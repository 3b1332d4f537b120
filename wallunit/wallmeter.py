"""The wall unit's own energy meter: TWC voltage x actual current, integrated exactly.

The TWC reports actual current in every slave heartbeat (hundredths of an amp, about
once a second) and phase voltage only when polled (whole volts, every minute or so),
so the meter holds the last voltage until the next poll, and each current until the
next heartbeat. V x cA x us is 10^-8 J, so every interval lands on a whole number of
nanojoules (x10) and a session of any length sums without drift.

A gap longer than ``max_gap_us`` between readings (a lost RS-485 link, a stalled
daemon) adds nothing: we sell only energy we watched flow.
"""

from __future__ import annotations

from dataclasses import dataclass

NJ_PER_VOLT_CENTIAMP_MICROSECOND = 10  # 1 V x 0.01 A x 1e-6 s = 1e-8 J = 10 nJ
MAX_CURRENT_CA = 100_00  # a Gen 2 TWC is rated 80 A; anything past 100 A is a corrupt reading
MAX_VOLTAGE_V = 600


class MeterError(ValueError):
    """A reading that cannot be real; the meter keeps its previous state."""


@dataclass
class WallMeter:
    nominal_voltage_v: int
    max_gap_us: int
    phases: int = 1
    total_nj: int = 0
    _voltage_v: int | None = None
    _current_ca: int | None = None
    _last_us: int | None = None

    def __post_init__(self) -> None:
        if not 0 < self.nominal_voltage_v <= MAX_VOLTAGE_V:
            raise ValueError(f"nominal voltage must be 1..{MAX_VOLTAGE_V} V")
        if self.max_gap_us <= 0:
            raise ValueError("max gap must be positive")
        if self.phases not in (1, 3):
            raise ValueError("phases must be 1 or 3")

    @property
    def voltage_v(self) -> int:
        return self._voltage_v if self._voltage_v else self.nominal_voltage_v

    def voltage(self, now_us: int, volts: int) -> int:
        """A polled phase voltage; 0 (a unit that does not report it) falls back to nominal.

        Returns the energy of the interval that ends here, at the voltage held until now.
        """
        _check_volts(volts)
        added = self._advance(now_us)
        self._voltage_v = volts or None
        return added

    def current(self, now_us: int, centiamps: int) -> int:
        """An actual-current reading; returns the nanojoules of the interval that ends here."""
        _check_centiamps(centiamps)
        added = self._advance(now_us)
        self._current_ca = centiamps
        return added

    def reading(self, now_us: int, centiamps: int, volts: int | None) -> int:
        """One TWC master reading: actual current and the last polled voltage (None: not yet)."""
        _check_centiamps(centiamps)
        if volts is not None:
            _check_volts(volts)
        added = self._advance(now_us)
        self._current_ca = centiamps
        if volts is not None:
            self._voltage_v = volts or None
        return added

    def _advance(self, now_us: int) -> int:
        if isinstance(now_us, bool) or not isinstance(now_us, int):
            raise MeterError(f"time {now_us!r} is not integer microseconds")
        if self._last_us is not None and now_us < self._last_us:
            raise MeterError(f"time went backwards ({now_us} < {self._last_us} us)")
        added = 0
        if self._last_us is not None and self._current_ca is not None:
            elapsed = now_us - self._last_us
            if elapsed <= self.max_gap_us:
                added = (
                    self.voltage_v * self._current_ca * elapsed * self.phases
                    * NJ_PER_VOLT_CENTIAMP_MICROSECOND
                )
        self._last_us = now_us
        self.total_nj += added
        return added


def _check_volts(volts: object) -> None:
    if isinstance(volts, bool) or not isinstance(volts, int) or not 0 <= volts <= MAX_VOLTAGE_V:
        raise MeterError(f"voltage {volts!r} V is not a plausible reading")


def _check_centiamps(centiamps: object) -> None:
    if isinstance(centiamps, bool) or not isinstance(centiamps, int) or not 0 <= centiamps <= MAX_CURRENT_CA:
        raise MeterError(f"current {centiamps!r} cA is not a plausible reading")
