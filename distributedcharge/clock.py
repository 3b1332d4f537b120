"""Time for the daemons: the one place where a simulation may compress it.

Protocol timers and meters read ``monotonic()``; records, invoice expiry and anything a
Lightning node compares against read ``time()``, which is never scaled because the node
(real or simulated) keeps real time. A :class:`ScaledClock` lets a simulated 8-hour
session play in minutes with the daemons' real code; production uses :class:`Clock`.
"""

from __future__ import annotations

import asyncio
import time as _time


class Clock:
    speed = 1.0

    def monotonic(self) -> float:
        return _time.monotonic()

    def time(self) -> float:
        return _time.time()

    def from_frame_timestamp(self, timestamp: float) -> float:
        """Map a frame's own timestamp (wall time, as python-can stamps it) onto the meters' axis.

        Only differences on that axis mean anything; map "now" through here too when it is
        compared with frame times.
        """
        return timestamp

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class ScaledClock(Clock):
    def __init__(self, speed: float):
        if not speed > 0:
            raise ValueError("speed must be positive")
        self.speed = float(speed)
        self._real_start = _time.monotonic()
        self._wall_start = _time.time()

    def monotonic(self) -> float:
        return self._real_start + (_time.monotonic() - self._real_start) * self.speed

    def from_frame_timestamp(self, timestamp: float) -> float:
        return self._wall_start + (timestamp - self._wall_start) * self.speed

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds / self.speed)
