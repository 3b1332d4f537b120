"""What a simulation world offers the session player, whichever way it runs.

A world is simnet, the plant and two roles (the real daemons, or a scripted hostile
party in place of one). :class:`~distributedcharge.sim.inprocess.InProcessWorld` runs them
all in this process on one scaled clock; :class:`~distributedcharge.sim.processes.ProcessWorld`
runs each as its own OS process in real time. The player only uses what is here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from fractions import Fraction
from pathlib import Path
from typing import Protocol

from distributedcharge.sim.books import Books, read_books
from distributedcharge.sim.plant_runner import PlantStatus
from distributedcharge.sim.stage import Layout, Terms
from distributedcharge.units import NJ_PER_WH


@dataclass(frozen=True)
class Live:
    """One progress sample. Energies in exact Wh; ``None`` where a role does not say."""

    at_s: float
    plant: PlantStatus | None
    wall_wh: Fraction | None
    car_wh: Fraction | None
    paid_msat: int
    received_msat: int
    rate_msat_per_kwh: int | None
    credit_wh: Fraction | None
    seller_exposure_msat: Fraction | None
    power_on: bool | None


class World(Protocol):
    layout: Layout
    terms: Terms
    mode: str

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def now(self) -> float:
        """Simulated seconds since the world started."""

    def seller_now(self) -> datetime:
        """The time of day the seller's tariff is reading now."""

    async def sleep(self, seconds: float) -> None:
        """Let ``seconds`` of simulated time pass."""

    def plant_command(self, name: str) -> None: ...

    def plant_status(self) -> PlantStatus | None: ...

    async def set_node_online(self, node: str, online: bool) -> None: ...

    def live(self) -> Live: ...

    def errors(self) -> list[str]: ...


def books_of(layout: Layout) -> Books:
    return read_books(layout.simnet_db, layout.wall_ledger, layout.car_journal)


def live_from_books(at_s: float, plant: PlantStatus | None, books: Books) -> Live:
    """A progress sample from the books alone (the daemons record their meters every 10 s)."""
    wall_wh = Fraction(books.wall_delivered_nj, NJ_PER_WH) if books.wall_sessions else None
    car_wh = Fraction(books.car_energy_nj, NJ_PER_WH) if books.car_sessions else None
    accepted = [offer for offer in books.wall_offers if offer.accepted] or [o for o in books.car_offers if o.accepted]
    rate = accepted[-1].rate_msat_per_kwh if accepted else None
    credit = books.wall_paid_for_nj / NJ_PER_WH - wall_wh if wall_wh is not None else None
    return Live(at_s, plant, wall_wh, car_wh, books.paid_by_car_msat, books.received_by_wall_msat, rate, credit,
                None, None)


def error_lines(log_file: Path) -> list[str]:
    """Records logged at error level or above, as ``component: event``."""
    found = []
    if not log_file.exists():
        return found
    for line in log_file.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("level") in ("error", "critical", "exception"):
            found.append(f"{record.get('component', log_file.stem)}: {record.get('event')}")
    return found
