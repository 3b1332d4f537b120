"""Is a car on the cable? Decided from the TWC's slave states, optionally confirmed by an ADC.

Timing follows v1: a plug must read steadily for ``stable_s`` (3 s) before a session
starts, and after an unplug nothing is detected for ``after_unplug_s`` (15 s), so a
cable wiggled in the socket does not open a burst of sessions. An unplug must read for
``unplug_confirm_s`` (our addition, default 5 s) so a few odd heartbeats cannot end a paid
session.

Slave states: 01 charging, 03 plugged/no charge, 04 plugged ready and 08 starting mean
a car; 00 ready means none. With an ADC, a plug needs both the TWC and the ADC to agree,
and only the ADC can say the cable is out. Error, busy blips, echoes and unknown codes carry no plug information.
"""

from __future__ import annotations

from dataclasses import dataclass

PLUGGED_STATES = frozenset({0x01, 0x03, 0x04, 0x08})
UNPLUGGED_STATES = frozenset({0x00})


@dataclass(frozen=True)
class PluggedIn:
    at: float


@dataclass(frozen=True)
class Unplugged:
    at: float


PlugEvent = PluggedIn | Unplugged


@dataclass(frozen=True)
class PlugTiming:
    stable_s: float = 3.0
    after_unplug_s: float = 15.0
    unplug_confirm_s: float = 5.0


class PlugDetector:
    """Feed it TWC states and ADC readings with a monotonic ``now`` in seconds."""

    def __init__(self, timing: PlugTiming = PlugTiming(), use_adc: bool = False):
        self.timing = timing
        self.use_adc = use_adc
        self.plugged = False
        self._twc: bool | None = None
        self._adc: bool | None = None
        self._raw: bool | None = None
        self._raw_since = 0.0
        self._quiet_until = float("-inf")

    def observe(self, now: float, twc_state: int | None = None, adc_plugged: bool | None = None) -> list[PlugEvent]:
        if twc_state is not None:
            if isinstance(twc_state, bool) or not isinstance(twc_state, int) or not 0 <= twc_state <= 0xFF:
                raise ValueError(f"TWC state must be a byte, got {twc_state!r}")
            if twc_state in PLUGGED_STATES:
                self._twc = True
            elif twc_state in UNPLUGGED_STATES:
                self._twc = False
        if adc_plugged is not None:
            self._adc = bool(adc_plugged)
        raw = self._combined()
        if raw != self._raw:
            self._raw, self._raw_since = raw, now
        return self.tick(now)

    def _combined(self) -> bool | None:
        if not self.use_adc:
            return self._twc
        # State 00 is "ready, car may or may not be plugged in": with an ADC the pilot decides.
        if self._adc is False:
            return False
        if self._twc and self._adc:
            return True
        return None

    def tick(self, now: float) -> list[PlugEvent]:
        held = now - self._raw_since
        if not self.plugged and self._raw is True:
            if held >= self.timing.stable_s and now >= self._quiet_until:
                self.plugged = True
                return [PluggedIn(now)]
        elif self.plugged and self._raw is False and held >= self.timing.unplug_confirm_s:
            self.plugged = False
            self._quiet_until = now + self.timing.after_unplug_s
            return [Unplugged(now)]
        return []
