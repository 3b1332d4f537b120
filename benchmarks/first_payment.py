"""Plug-in to the first paid step, with the real daemons, simnet and the simulated plant.

Measured in real time (speed 1), so can-isotp's STmin pauses count as they would on the
wire. Our car (protocol v2, packed invoices, advertising STmin 0 and one flow control per
invoice) against the baseline of a car set up like the original (v1 ASCII invoices, STmin
25 ms, block size 10) in the same run. Most of the time is the v1 plug timing both share:
the wall waits 3 s for a stable plug before it offers. Run with
``python -m benchmarks.first_payment``.
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from distributedcharge.sim.inprocess import InProcessWorld
from distributedcharge.sim.stage import Layout, Terms
from distributedcharge.sim.world import books_of

ORIGINAL_CAR = {"v2": False, "stmin": 25, "blocksize": 10}
OURS = {"v2": True, "stmin": 0, "blocksize": 0}
RUNS = 3
GIVE_UP_S = 60.0


@dataclass(frozen=True)
class FirstPayment:
    ours_s: float
    original_s: float

    @property
    def ratio(self) -> float:
        return self.ours_s / self.original_s


async def _plug_to_paid(car_swcan: dict) -> float:
    with tempfile.TemporaryDirectory(prefix="dc-bench-") as directory:
        layout = Layout(Path(directory))
        world = InProcessWorld(layout, Terms(), speed=1.0, car_swcan=car_swcan)
        await world.start()
        try:
            plugged_at = time.monotonic()
            world.plant_command("plug")
            while books_of(layout).payments == 0:
                if time.monotonic() - plugged_at > GIVE_UP_S:
                    raise RuntimeError(f"no payment within {GIVE_UP_S:g} s of plug-in ({car_swcan})")
                await asyncio.sleep(0.005)
            return time.monotonic() - plugged_at
        finally:
            await world.stop()


def run(runs: int = RUNS) -> FirstPayment:
    ours, original = [], []
    for _ in range(runs):
        ours.append(asyncio.run(_plug_to_paid(OURS)))
        original.append(asyncio.run(_plug_to_paid(ORIGINAL_CAR)))
    return FirstPayment(statistics.median(ours), statistics.median(original))


def main() -> None:
    result = run()
    print(f"plug-in to first paid step: ours {result.ours_s:.2f} s, original settings {result.original_s:.2f} s, "
          f"ratio {result.ratio:.2f}")


if __name__ == "__main__":
    main()
