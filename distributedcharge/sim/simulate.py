"""``distributedcharge simulate``: a whole charge session on one command.

simnet, a simulated plant (a TWC Gen 2 slave on a pty and a Model 3 on vehicle CAN, both
measuring one physical model) and the two real daemons, configured by real TOML files,
play a session: plug in, offer, acceptance, a stream of paid 25 Wh steps, a tariff change
(v2 re-offer), unplug. Progress lines show the energy each meter saw, what was paid, the
rate and the seller's credit; a summary table and an optional JSON report end it.

By default everything runs in this process on one clock ``--speed`` times faster than
real time. ``--processes`` runs simnet, the plant and both daemons as separate OS
processes in real time, talking over python-can's ``remote`` interface on 127.0.0.1, the
pty and TLS, as in production. ``--scenario`` plays one of the cheats or faults in
:mod:`distributedcharge.sim.scenarios` instead of the honest session.

Exit status 0 only when every check of the scenario passed (for the honest session: what
the car paid equals what the wall received, each invoice at an accepted rate, and the
energy bought within the v1 tolerances of both meters) and no daemon logged an error.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from fractions import Fraction
from pathlib import Path
from typing import Callable, TextIO

from distributedcharge.config import ConfigError
from distributedcharge.daemon import StartupError
from distributedcharge.sim.books import Books
from distributedcharge.sim.scenarios import SCENARIOS, Check, Outcome, Scenario
from distributedcharge.sim.stage import Layout, Terms, next_whole_minute
from distributedcharge.sim.world import Live, World, books_of
from distributedcharge.units import MSAT_PER_SAT, NJ_PER_WH

DEFAULT_SPEED = 10.0
# The TWC port ticks its master every 25 ms of real time; much faster than this and one
# tick spans several of the master's 0.1 s transmit slots, so the RS-485 link loses its heartbeats.
MAX_SPEED = 30.0
PLUG_AT_S = 2.0


@dataclass(frozen=True)
class Pace:
    """How long the phases of a session last, in simulated seconds.

    A tariff period starts on a whole minute, so the change comes at the first minute at
    least ``tariff_lead_s`` after plug-in. In real time (``--processes``) the phases are
    shorter; simulated time is cheap.
    """

    tariff_lead_s: float
    after_tariff_change_s: float
    progress_every_s: float


IN_PROCESS_PACE = Pace(60.0, 60.0, 10.0)
REAL_TIME_PACE = Pace(20.0, 45.0, 5.0)
# After the cable is out: the wall confirms an unplug for 5 s, the last payment settles.
AFTER_UNPLUG_S = 15.0
POLL_REAL_S = 0.05


@dataclass(frozen=True)
class Step:
    at_s: float
    label: str
    run: Callable[[World], object]


def timeline(scenario: Scenario, tariff_change_s: float | None, pace: Pace) -> tuple[list[Step], float]:
    """The session's steps in simulated seconds from the world's start, and its end."""
    steps = [Step(PLUG_AT_S, "plug in", lambda world: world.plant_command("plug"))]
    if tariff_change_s is not None:
        change_s = tariff_change_s
        steps.append(Step(change_s, "tariff period changes", lambda world: None))
        unplug_s = change_s + pace.after_tariff_change_s
    else:
        unplug_s = PLUG_AT_S + scenario.charge_s
    steps += [Step(PLUG_AT_S + fault.after_plug_s, fault.label, fault.action) for fault in scenario.faults]
    steps.append(Step(unplug_s, "unplug", lambda world: world.plant_command("unplug")))
    return sorted(steps, key=lambda step: step.at_s), unplug_s + AFTER_UNPLUG_S


def terms_for(scenario: Scenario, start: datetime, pace: Pace, wh_per_payment: int = 25) -> Terms:
    change = next_whole_minute(start, PLUG_AT_S + pace.tariff_lead_s) if scenario.tariff_change else None
    return Terms(wh_per_payment=wh_per_payment, change_at=change)


# -- playing --------------------------------------------------------------------------------------

async def play(world: World, scenario: Scenario, out: TextIO | None, pace: Pace) -> Outcome:
    """Start ``world``, play ``scenario`` on it, stop it, and gather the outcome."""
    samples: list[Live] = []
    marks: dict[str, tuple[float, int]] = {}
    await world.start()
    try:
        change = world.terms.change_at
        # The tariff follows the seller's own clock, which a scaled world runs faster than the wall's.
        change_s = None if change is None else world.now() + (change - world.seller_now()).total_seconds()
        steps, end_s = timeline(scenario, change_s, pace)
        next_progress = 0.0
        while True:
            now = world.now()
            while steps and steps[0].at_s <= now:
                step = steps.pop(0)
                result = step.run(world)
                if asyncio.iscoroutine(result):
                    await result
                marks[step.label] = (now, books_of(world.layout).payments)
                _say(out, f"{now:7.1f} s  {step.label}")
            if now >= next_progress:
                sample = world.live()
                samples.append(sample)
                _say(out, progress_line(sample))
                next_progress = now + pace.progress_every_s
            if now >= end_s:
                break
            await asyncio.sleep(POLL_REAL_S)
        plant = world.plant_status()
    finally:
        await world.stop()
    return Outcome(world.terms, books_of(world.layout), samples, plant, marks, world.errors())


def _say(out: TextIO | None, line: str) -> None:
    if out is not None:
        print(line, file=out, flush=True)


def _sat(msat: int | Fraction) -> str:
    return f"{float(Fraction(msat) / MSAT_PER_SAT):,.3f}".rstrip("0").rstrip(".")


def _opt_wh(value: Fraction | None) -> str:
    return "     -   " if value is None else f"{float(value):8.1f}"


def progress_line(sample: Live) -> str:
    plant = sample.plant
    kw = f"{float(plant.volts * plant.amps / 1000):5.2f} kW" if plant is not None else "    - kW"
    rate = f"{sample.rate_msat_per_kwh // MSAT_PER_SAT} sat/kWh" if sample.rate_msat_per_kwh else "no rate yet"
    credit = "" if sample.credit_wh is None else f"  credit {float(sample.credit_wh):+6.1f} Wh"
    power = "" if sample.power_on is None else ("  power on" if sample.power_on else "  power cut")
    return (f"{sample.at_s:7.1f} s  {kw}  wall {_opt_wh(sample.wall_wh)} Wh  car {_opt_wh(sample.car_wh)} Wh  "
            f"paid {_sat(sample.paid_msat):>7} sat  {rate}{credit}{power}")


# -- judging and reporting ------------------------------------------------------------------------

def report(scenario: Scenario, mode: str, speed: float, outcome: Outcome, checks: list[Check],
           wall_seconds: float) -> dict:
    books: Books = outcome.books
    plant = outcome.plant
    accepted = [o.rate_msat_per_kwh for o in books.car_offers if o.accepted]
    return {
        "scenario": scenario.name,
        "expected": scenario.expected,
        "mode": mode,
        "speed": speed,
        "simulated_s": round(outcome.samples[-1].at_s if outcome.samples else 0.0, 1),
        "wall_clock_s": round(wall_seconds, 1),
        "energy_wh_wall": float(Fraction(books.wall_delivered_nj, NJ_PER_WH)) if books.wall_sessions else None,
        "energy_wh_car": float(Fraction(books.car_energy_nj, NJ_PER_WH)) if books.car_sessions else None,
        "energy_wh_plant": float(plant.energy_nj / NJ_PER_WH) if plant is not None else None,
        "energy_wh_paid_for": float(books.wall_paid_for_nj / NJ_PER_WH),
        "payments": books.payments,
        "msat_paid_by_car": books.paid_by_car_msat,
        "msat_received_by_wall": books.received_by_wall_msat,
        "fees_msat": books.fees_msat,
        "max_seller_exposure_msat": outcome.max_seller_exposure_msat,
        "max_buyer_exposure_msat": books.max_buyer_exposure_msat(),
        "rates_msat_per_kwh": accepted,
        "refusals": dict(books.refusals()),
        "errors": outcome.errors,
        "checks": [{"name": c.name, "passed": c.passed, "detail": c.detail} for c in checks],
        "ok": all(c.passed for c in checks) and not outcome.errors,
    }


def summary(result: dict) -> str:
    rows = [
        ("energy, wall meter", "-" if result["energy_wh_wall"] is None else f"{result['energy_wh_wall']:.1f} Wh"),
        ("energy, car meter", "-" if result["energy_wh_car"] is None else f"{result['energy_wh_car']:.1f} Wh"),
        ("energy, true (plant)", "-" if result["energy_wh_plant"] is None else f"{result['energy_wh_plant']:.1f} Wh"),
        ("energy paid for (wall's invoices)", f"{result['energy_wh_paid_for']:.1f} Wh"),
        ("payments", str(result["payments"])),
        ("paid by the car", f"{_sat(result['msat_paid_by_car'])} sat"),
        ("received by the wall", f"{_sat(result['msat_received_by_wall'])} sat"),
        ("routing fees", f"{_sat(result['fees_msat'])} sat"),
        ("rates accepted", ", ".join(f"{r // MSAT_PER_SAT} sat/kWh" for r in result["rates_msat_per_kwh"]) or "-"),
        ("max seller exposure", f"{_sat(result['max_seller_exposure_msat'])} sat"),
        ("max buyer exposure", f"{_sat(result['max_buyer_exposure_msat'])} sat"),
        ("time", f"{result['simulated_s']:.0f} s simulated in {result['wall_clock_s']:.0f} s"),
    ]
    width = max(len(name) for name, _ in rows)
    lines = [f"scenario {result['scenario']} ({result['mode']}): {result['expected']}", ""]
    lines += [f"  {name:<{width}}  {value}" for name, value in rows]
    lines.append("")
    lines += [f"  [{'ok' if c['passed'] else 'FAIL'}] {c['name']}: {c['detail']}" for c in result["checks"]]
    lines += [f"  [ERROR] {error}" for error in result["errors"]]
    lines += ["", "result: " + ("as expected" if result["ok"] else "NOT as expected")]
    return "\n".join(lines)


# -- the command ----------------------------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--speed", type=float, default=DEFAULT_SPEED,
                        help=f"simulated seconds per real second, in-process only (default {DEFAULT_SPEED:g}, "
                             f"at most {MAX_SPEED:g})")
    parser.add_argument("--processes", action="store_true",
                        help="run simnet, the plant and both daemons as separate processes, in real time")
    parser.add_argument("--scenario", choices=list(SCENARIOS), default="honest",
                        help="what to play (default honest): " + "; ".join(
                            f"{s.name}: {s.summary}" for s in SCENARIOS.values()))
    parser.add_argument("--report", metavar="FILE", help="write a JSON report here")
    parser.add_argument("--keep-state", metavar="DIR",
                        help="keep configs, books and logs in DIR (must not exist yet) instead of a temporary one")
    parser.add_argument("--quiet", action="store_true", help="no progress lines, only the summary")


def run(args: argparse.Namespace) -> int:
    # gRPC's C core would print its connection notices (a node going offline) over the progress lines.
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    scenario = SCENARIOS[args.scenario]
    if not 0 < args.speed <= MAX_SPEED:
        print(f"distributedcharge simulate: --speed must be above 0 and at most {MAX_SPEED:g}", file=sys.stderr)
        return 2
    if args.processes and scenario.scripted:
        print(f"distributedcharge simulate: --scenario {scenario.name} replaces a daemon by a scripted role, "
              "which runs in-process only", file=sys.stderr)
        return 2
    if args.keep_state and Path(args.keep_state).exists():
        print(f"distributedcharge simulate: --keep-state {args.keep_state} exists already", file=sys.stderr)
        return 2
    root = Path(args.keep_state) if args.keep_state else Path(tempfile.mkdtemp(prefix="dc-sim-"))
    try:
        result = simulate(scenario, Layout(root.resolve()), processes=args.processes, speed=args.speed,
                          out=None if args.quiet else sys.stdout)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (OSError, RuntimeError, ConfigError, StartupError) as exc:
        print(f"distributedcharge simulate: cannot play the session: {exc}", file=sys.stderr)
        return 1
    finally:
        if not args.keep_state:
            shutil.rmtree(root, ignore_errors=True)
    print(summary(result))
    if args.keep_state:
        print(f"configs, books and logs kept in {root}")
    if args.report:
        try:
            Path(args.report).write_text(json.dumps(result, indent=2) + "\n")
        except OSError as exc:
            print(f"distributedcharge simulate: report not written: {exc}", file=sys.stderr)
            return 1
    return 0 if result["ok"] else 1


def simulate(scenario: Scenario, layout: Layout, *, processes: bool = False, speed: float = DEFAULT_SPEED,
             out: TextIO | None = None, wh_per_payment: int = 25) -> dict:
    """Play ``scenario`` in a fresh world under ``layout.root`` and return the report."""
    start = datetime.now(timezone.utc)
    pace = REAL_TIME_PACE if processes else IN_PROCESS_PACE
    terms = terms_for(scenario, start, pace, wh_per_payment)
    if processes:
        from distributedcharge.sim.processes import ProcessWorld

        world: World = ProcessWorld(layout, terms, car_hears_wall=scenario.car_hears_wall)
        speed = 1.0
    else:
        from distributedcharge.sim.inprocess import InProcessWorld

        world = InProcessWorld(layout, terms, speed=speed, car_hears_wall=scenario.car_hears_wall,
                               wall_role=scenario.wall_role, car_role=scenario.car_role)
    _say(out, f"scenario {scenario.name}: {scenario.summary} ({world.mode}, x{speed:g})")
    began = time.monotonic()
    outcome = asyncio.run(play(world, scenario, out, pace))
    checks = scenario.judge(outcome)
    return report(scenario, world.mode, speed, outcome, checks, time.monotonic() - began)
