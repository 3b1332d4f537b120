"""An 8-hour 11 kW session at full speed-up: wall time, cost per paid step, peak RSS per daemon.

The session is played by the daemons' sans-IO cores in virtual time
(:mod:`benchmarks.session_cores`), then each role's recorded input is replayed in a
process of its own for its CPU time and peak RSS. Every figure is a ratio against a
baseline from the same run:

* speed-up: virtual seconds per wall-clock second (baseline: real time);
* cost per paid step in the last hour against the first hour (flat means nothing grows
  with the session: no list scanned per step, no leak);
* cost per paid step against a bare loop that reads the same traffic and decides nothing
  (the daemon's overhead on top of the I/O it cannot avoid), Lightning excluded;
* peak RSS after 8 hours against after the first hour.

Run with ``python -m benchmarks.long_session [HOURS]``.
"""

from __future__ import annotations

import sys
import tempfile
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

from benchmarks import session_cores
from distributedcharge import log


@dataclass(frozen=True)
class RoleFigures:
    role: str
    us_per_step_first_hour: float
    us_per_step_last_hour: float
    bare_us_per_step_first_hour: float
    rss_kib_first_hour: int
    rss_kib_end: int

    @property
    def growth(self) -> float:
        return self.us_per_step_last_hour / self.us_per_step_first_hour

    @property
    def over_bare(self) -> float:
        return self.us_per_step_first_hour / self.bare_us_per_step_first_hour

    @property
    def rss_growth(self) -> float:
        return self.rss_kib_end / self.rss_kib_first_hour


@dataclass(frozen=True)
class LongSession:
    hours: float
    wall_time_s: float
    paid_steps: int
    paid_msat: int
    plant_wh: Fraction
    wall_wh: Fraction
    car_wh: Fraction
    replay_faithful: bool
    roles: tuple[RoleFigures, ...]

    @property
    def speed_up(self) -> float:
        return self.hours * 3600 / self.wall_time_s


def _per_step_us(cpu_s: tuple[float, ...], steps: list[int], first: int, last: int) -> float:
    return (cpu_s[last] - cpu_s[first]) / max(1, steps[last] - steps[first]) * 1e6


def run(hours: float = 8.0) -> LongSession:
    if hours < 1:
        raise ValueError("the comparison needs at least one hour")
    with tempfile.TemporaryDirectory(prefix="dc-bench-") as directory:
        record = Path(directory)
        result = session_cores.play(hours, checkpoint_every_s=3600, record_dir=record)
        # Checkpoints: plug-in, then every hour; the last one is the end of the session.
        ticks = tuple(point.tick for point in result.checkpoints)
        replays = session_cores.replay(
            [("wall", record / "wall.pickles"), ("car", record / "car.pickles"),
             ("bare-wall", record / "wall.pickles"), ("bare-car", record / "car.pickles")], ticks)
    by_role = {replay.role: replay for replay in replays}
    steps = [point.paid_steps for point in result.checkpoints]
    roles = []
    for role in ("wall", "car"):
        real, bare = by_role[role], by_role[f"bare-{role}"]
        roles.append(RoleFigures(
            role,
            _per_step_us(real.cpu_s_at, steps, 0, 1),
            _per_step_us(real.cpu_s_at, steps, len(steps) - 2, len(steps) - 1),
            _per_step_us(bare.cpu_s_at, steps, 0, 1),
            real.peak_rss_kib_at[1],
            real.peak_rss_kib_at[-1],
        ))
    faithful = all(by_role[role].digest == result.digests[role] for role in ("wall", "car"))
    return LongSession(hours, result.wall_time_s, result.paid_steps, result.paid_msat, result.plant_energy_wh,
                       result.wall_meter_wh, result.car_meter_wh, faithful, tuple(roles))


def report(figures: LongSession) -> list[str]:
    lines = [
        f"{figures.hours:g} h session at 48 A: {figures.paid_steps} paid steps, {figures.paid_msat / 1000:,.0f} sat, "
        f"energy plant {float(figures.plant_wh) / 1000:.3f} kWh, wall meter {float(figures.wall_wh) / 1000:.3f}, "
        f"car meter {float(figures.car_wh) / 1000:.3f}",
        f"played in {figures.wall_time_s:.1f} s wall time: x{figures.speed_up:,.0f} real time; "
        f"replays took the same decisions: {'yes' if figures.replay_faithful else 'NO'}",
        f"{'role':5} {'us/step h1':>10} {'us/step last h':>14} {'last/h1':>7} {'bare us/step':>12} "
        f"{'x bare':>6} {'RSS h1 MiB':>10} {'RSS end MiB':>11} {'end/h1':>6}",
    ]
    for role in figures.roles:
        lines.append(
            f"{role.role:5} {role.us_per_step_first_hour:>10.0f} {role.us_per_step_last_hour:>14.0f} "
            f"{role.growth:>7.2f} {role.bare_us_per_step_first_hour:>12.0f} {role.over_bare:>6.2f} "
            f"{role.rss_kib_first_hour / 1024:>10.1f} {role.rss_kib_end / 1024:>11.1f} {role.rss_growth:>6.2f}")
    return lines


def main() -> None:
    log.configure("warning")
    hours = float(sys.argv[1]) if len(sys.argv) > 1 else 8.0
    print("\n".join(report(run(hours))))


if __name__ == "__main__":
    main()
