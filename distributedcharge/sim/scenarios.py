"""The sessions ``distributedcharge simulate --scenario NAME`` plays, and how each is judged.

A scenario says who plays each role (the real daemon or a scripted cheat), what goes
wrong and when, and what must be true afterwards. Every judgement is made from the books
a real installation keeps (simnet's, the wall's ledger, the car's journal) and from the
plant, never from a daemon's memory.

The money rules every scenario with both daemons must keep:

* **car paid what the wall received**: the car node's succeeded payments equal the wall
  node's settled invoices, payment hash by payment hash, and both daemons' own records
  agree with their node (no payment twice, no receipt lost);
* **at the rate**: each settled invoice asks exactly the price of its energy at the rate
  of an offer the car accepted (``msat_for_energy(energy, rate) == amount``, no rounding);
* **matches the energy** (the v1 tolerances): the energy the payments bought is at least
  the wall meter's energy less one payment (the seller's exposure never passes one
  payment: it cuts power well before), and at most the car meter's energy plus the v1
  prepay allowance at its most generous (1.4 payments + 20 % of the energy + 75 Wh) plus
  the one payment the car may make from there.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from fractions import Fraction
from typing import TYPE_CHECKING, Awaitable, Callable

from car.policy import PrepayTolerance
from distributedcharge.sim.books import Books
from distributedcharge.sim.plant_runner import PlantStatus
from distributedcharge.sim.stage import CAR_NODE, WALL_NODE, Terms
from distributedcharge.sim.world import Live, World
from distributedcharge.units import MSAT_PER_SAT, NJ_PER_WH, msat_for_energy
from wallunit.policy import make_offer

if TYPE_CHECKING:
    from distributedcharge.daemon import Daemon
    from distributedcharge.sim.inprocess import InProcessWorld, RoleFactory

MIN_HONEST_PAYMENTS = 6
# The hostile car pays this many invoices, then never another.
PAID_BEFORE_STOPPING = 2
FAULT_AT_S = 40.0
OUTAGE_S = 60.0
# After the node is back the daemons' probes may still be in a 30 s backoff, and a step
# at 11 kW takes 8 s: leave room for several paid steps even on a loaded machine.
OUTAGE_END_CHARGE_S = FAULT_AT_S + OUTAGE_S + 100.0


@dataclass(frozen=True)
class Check:
    name: str
    passed: bool
    detail: str


@dataclass(frozen=True)
class Fault:
    """``action`` at ``after_plug_s`` simulated seconds after the cable goes in."""

    after_plug_s: float
    label: str
    action: Callable[[World], Awaitable[None]]


@dataclass
class Outcome:
    """Everything a scenario is judged on."""

    terms: Terms
    books: Books
    samples: list[Live]
    plant: PlantStatus | None
    # label of each timeline step -> (simulated time, car payments by then)
    marks: dict[str, tuple[float, int]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    def payments_after(self, label: str) -> int:
        return self.books.payments - self.marks[label][1]

    def plant_before(self, label: str) -> PlantStatus | None:
        """The plant as last sampled before the step ``label``."""
        at = self.marks[label][0]
        earlier = [s.plant for s in self.samples if s.at_s < at and s.plant is not None]
        return earlier[-1] if earlier else None

    @property
    def payment_msat(self) -> int:
        """The largest payment any accepted offer asked for."""
        offers = [o.payment_msat for o in self.books.wall_offers + self.books.car_offers if o.accepted]
        first = make_offer(self.terms.rate_sat_per_kwh * MSAT_PER_SAT, Fraction(self.terms.wh_per_payment))
        return max(offers, default=first.payment_msat)

    @property
    def max_seller_exposure_msat(self) -> int:
        live = [s.seller_exposure_msat for s in self.samples if s.seller_exposure_msat is not None]
        return max([self.books.wall_max_exposure_msat, *map(math.ceil, live)])


@dataclass(frozen=True)
class Scenario:
    name: str
    summary: str
    expected: str
    judge: Callable[[Outcome], list[Check]]
    charge_s: float = 150.0
    tariff_change: bool = False
    faults: tuple[Fault, ...] = ()
    wall_role: "RoleFactory | None" = None
    car_role: "RoleFactory | None" = None
    car_hears_wall: bool = True

    @property
    def scripted(self) -> bool:
        return self.wall_role is not None or self.car_role is not None


# -- the shared money rules ---------------------------------------------------------------------

def _wh(value: Fraction | int) -> str:
    return f"{float(Fraction(value)):.1f} Wh"


def money_checks(outcome: Outcome) -> list[Check]:
    books = outcome.books
    checks = [
        paid_what_received(books),
        Check("no invoice paid twice", not books.hashes_paid_more_than_once()
              and books.payments == len(books.wall_settled),
              f"{books.payments} payments for {len(books.wall_settled)} settled invoices"),
        Check("car journal agrees with its node", books.car_journal_paid_msat == books.paid_by_car_msat,
              f"journal {books.car_journal_paid_msat} msat, node {books.paid_by_car_msat} msat"),
        Check("no receipt lost: wall ledger agrees with its node",
              books.wall_ledger_paid_msat == books.received_by_wall_msat,
              f"ledger {books.wall_ledger_paid_msat} msat, node {books.received_by_wall_msat} msat"),
    ]
    return checks + rate_checks(outcome) + energy_checks(outcome)


def paid_what_received(books: Books) -> Check:
    """Hash by hash: every payment the car's node made is an invoice the wall's node saw settled, for as much."""
    paid = {p.payment_hash: p.value_msat for p in books.car_payments if p.succeeded}
    return Check("car paid what the wall received", paid == books.wall_settled,
                 f"car node paid {books.paid_by_car_msat} msat in {len(paid)} payments, wall node received "
                 f"{books.received_by_wall_msat} msat for {len(books.wall_settled)} invoices")


def rate_checks(outcome: Outcome) -> list[Check]:
    books = outcome.books
    accepted = {o.rate_msat_per_kwh for o in books.car_offers if o.accepted}
    wrong = [i.ref for i in books.settled_energy_invoices()
             if msat_for_energy(i.energy_nj, i.rate_msat_per_kwh) != i.amount_msat
             or i.rate_msat_per_kwh not in accepted]
    return [Check("every invoice at an accepted rate", not wrong,
                  f"{len(books.settled_energy_invoices())} settled invoices"
                  + (f"; wrong: {', '.join(wrong)}" if wrong else ""))]


def energy_checks(outcome: Outcome) -> list[Check]:
    books = outcome.books
    paid_wh = books.wall_paid_for_nj / NJ_PER_WH
    wall_wh = Fraction(books.wall_delivered_nj, NJ_PER_WH)
    car_wh = Fraction(books.car_energy_nj, NJ_PER_WH)
    wh_per_payment = Fraction(outcome.terms.wh_per_payment)
    tolerance = PrepayTolerance()
    allowance = tolerance.allowance_wh(wh_per_payment, car_wh, int(tolerance.low_current_deciamps))
    return [
        Check("seller paid for all but at most one payment", paid_wh >= wall_wh - wh_per_payment,
              f"paid for {_wh(paid_wh)}, wall meter {_wh(wall_wh)}"),
        Check("buyer prepaid within the v1 allowance", paid_wh <= car_wh + allowance + wh_per_payment,
              f"paid for {_wh(paid_wh)}, car meter {_wh(car_wh)}, allowance {_wh(allowance)} + one payment"),
    ]


def exposure_check(outcome: Outcome) -> Check:
    worst, limit = outcome.max_seller_exposure_msat, outcome.payment_msat
    return Check("seller exposure below one payment", worst <= limit, f"at most {worst} msat, one payment {limit} msat")


def goes_on_check(outcome: Outcome, label: str) -> Check:
    after = outcome.payments_after(label)
    return Check(f"payments go on after '{label}'", after > 0, f"{after} payments after it")


def _events(outcome: Outcome, kind: str) -> list[str]:
    return outcome.books.wall_events_of(kind)


def cut_and_resumed(outcome: Outcome, reason: str) -> list[Check]:
    """The wall cut power for ``reason`` (as its ledger words it) and later turned it back on."""
    events = outcome.books.wall_events
    cut = next((i for i, (kind, detail) in enumerate(events) if kind == "CutPower" and detail == reason), None)
    resumed = cut is not None and any(kind == "ResumePower" for kind, _ in events[cut + 1:])
    cuts = [detail for kind, detail in events if kind == "CutPower"]
    return [
        Check(f"power cut: {reason}", cut is not None, f"cuts: {'; '.join(cuts) or 'none'}"),
        Check("power back on after it", resumed, f"{len(_events(outcome, 'ResumePower'))} resumptions in all"),
    ]


def no_current_before_unplug(outcome: Outcome) -> Check:
    plant = outcome.plant_before("unplug")
    return Check("no current flowing before the unplug", plant is not None and plant.amps == 0,
                 f"plant drew {float(plant.amps) if plant else '?'} A")


# -- the scenarios ------------------------------------------------------------------------------

def judge_honest(outcome: Outcome) -> list[Check]:
    books = outcome.books
    rates = sorted({i.rate_msat_per_kwh for i in books.settled_energy_invoices()})
    ended = [row["end_reason"] for row in books.wall_sessions] + [row["end_reason"] for row in books.car_sessions]
    return money_checks(outcome) + [
        exposure_check(outcome),
        Check("a stream of paid steps", books.payments >= MIN_HONEST_PAYMENTS,
              f"{books.payments} payments (at least {MIN_HONEST_PAYMENTS})"),
        Check("tariff change accepted mid-session", len(rates) >= 2 and any(o.accepted for o in books.car_offers[1:]),
              f"invoices settled at {', '.join(f'{r // MSAT_PER_SAT} sat/kWh' for r in rates)}"),
        Check("unplug ended both sessions", bool(ended) and all(reason == "unplugged" for reason in ended),
              f"end reasons: {', '.join(map(str, ended))}"),
    ]


def judge_hostile_wall(outcome: Outcome) -> list[Check]:
    books = outcome.books
    refusals = books.refusals()
    car_wh = Fraction(books.car_energy_nj, NJ_PER_WH)
    tolerance = PrepayTolerance()
    wh_per_payment = Fraction(outcome.terms.wh_per_payment)
    allowance_wh = tolerance.allowance_wh(wh_per_payment, car_wh, int(tolerance.low_current_deciamps))
    allowance_msat = msat_for_energy((allowance_wh + wh_per_payment) * NJ_PER_WH,
                                     outcome.terms.rate_sat_per_kwh * MSAT_PER_SAT)
    over = [v for v in books.car_verdicts if v.verdict == "pay" and v.amount_msat is not None
            and v.amount_msat > 2 * outcome.payment_msat]
    rejected = [o for o in books.car_offers if not o.accepted]
    exposure = books.max_buyer_exposure_msat()
    return [
        paid_what_received(books),
        Check("car journal agrees with its node", books.car_journal_paid_msat == books.paid_by_car_msat,
              f"journal {books.car_journal_paid_msat} msat, node {books.paid_by_car_msat} msat"),
        Check("over-asking invoice refused", refusals["over_offer"] >= 1 and not over,
              f"{refusals['over_offer']} refused as over the offer"),
        Check("repeated invoice refused", refusals["duplicate"] >= 1, f"{refusals['duplicate']} refused as duplicates"),
        Check("rate above the ceiling rejected", any(o.rate_msat_per_kwh > 1000 * MSAT_PER_SAT for o in rejected),
              f"{len(rejected)} offers rejected"),
        Check("never prepaid beyond the v1 allowance", exposure <= allowance_msat,
              f"buyer exposure at most {exposure} msat, allowance {float(allowance_msat):.0f} msat"),
    ]


def judge_hostile_car(outcome: Outcome) -> list[Check]:
    books = outcome.books
    stops = _events(outcome, "TWC stop")
    cut = _events(outcome, "CutPower")
    return [
        paid_what_received(books),
        Check("no receipt lost: wall ledger agrees with its node",
              books.wall_ledger_paid_msat == books.received_by_wall_msat,
              f"ledger {books.wall_ledger_paid_msat} msat, node {books.received_by_wall_msat} msat"),
        Check("the car paid only its first invoices", books.payments == PAID_BEFORE_STOPPING,
              f"{books.payments} payments"),
        Check("power cut for arrears", cut[:1] == ["buyer behind on payments"], f"cuts: {'; '.join(cut) or 'none'}"),
        Check("the cut confirmed by the current", bool(stops) and stops[0].startswith("confirmed"),
              "; ".join(stops) or "no TWC stop recorded"),
        no_current_before_unplug(outcome),
        exposure_check(outcome),
        *energy_checks(outcome)[:1],
    ]


def judge_node_outage(label: str, cut_reason: str) -> Callable[[Outcome], list[Check]]:
    def judge(outcome: Outcome) -> list[Check]:
        return money_checks(outcome) + [exposure_check(outcome), *cut_and_resumed(outcome, cut_reason),
                                        goes_on_check(outcome, label)]

    return judge


def judge_serial_unplugged(outcome: Outcome) -> list[Check]:
    kinds = [kind for kind, _ in outcome.books.wall_events]
    down = kinds.index("TWC port down") if "TWC port down" in kinds else None
    back = down is not None and "TWC port up" in kinds[down + 1:]
    return money_checks(outcome) + [
        exposure_check(outcome),
        Check("the wall noticed the adapter gone and back", back,
              f"{kinds.count('TWC port down')} down, {kinds.count('TWC port up')} up (the first at start)"),
        goes_on_check(outcome, "RS-485 adapter plugged back"),
    ]


def judge_swcan_silent(outcome: Outcome) -> list[Check]:
    books = outcome.books
    wall_wh = Fraction(books.wall_delivered_nj, NJ_PER_WH)
    modes = [row["mode"] for row in books.wall_sessions]
    return [
        Check("nothing paid", books.paid_by_car_msat == 0 and books.received_by_wall_msat == 0,
              f"car paid {books.paid_by_car_msat} msat, wall received {books.received_by_wall_msat} msat"),
        Check("the car never saw an offer", not books.car_offers, f"{len(books.car_offers)} offers in the journal"),
        Check("the wall fell back to manual pay", "manual" in modes, f"session modes: {', '.join(modes)}"),
        Check("at most one payment's energy given away", wall_wh <= outcome.terms.wh_per_payment,
              f"wall meter {_wh(wall_wh)}"),
        no_current_before_unplug(outcome),
    ]


def _hostile_wall(world: InProcessWorld) -> Daemon:
    # Imported when played: the scripted roles pull in the gRPC client.
    from distributedcharge.sim.hostile import HostileWall

    return HostileWall(world)


def _hostile_car(world: InProcessWorld) -> Daemon:
    from distributedcharge.sim.hostile import HostileCar

    return HostileCar(world, PAID_BEFORE_STOPPING)


def _node(node: str, online: bool) -> Callable[[World], Awaitable[None]]:
    async def act(world: World) -> None:
        await world.set_node_online(node, online)

    return act


def _plant(command: str) -> Callable[[World], Awaitable[None]]:
    async def act(world: World) -> None:
        world.plant_command(command)

    return act


SCENARIOS: dict[str, Scenario] = {s.name: s for s in (
    Scenario("honest", "both daemons, a tariff change half way", "every step paid, at both rates, nothing owed",
             judge_honest, tariff_change=True),
    Scenario("hostile-wall", "a wall that over-asks, repeats invoices, invoices ahead of the energy and raises the "
             "rate above the car's ceiling", "the car refuses each trick and never prepays beyond the v1 allowance",
             judge_hostile_wall, charge_s=130.0, wall_role=_hostile_wall),
    Scenario("hostile-car", "a car that pays twice, then takes energy without paying",
             "the wall cuts power, confirmed by the current, before it is owed a payment", judge_hostile_car,
             charge_s=90.0, car_role=_hostile_car),
    Scenario("car-node-offline", "the car's Lightning node unreachable for a minute",
             "the wall cuts power while unpaid, the car pays what is due once back, the session goes on",
             judge_node_outage("car node back", "buyer behind on payments"), charge_s=OUTAGE_END_CHARGE_S,
             faults=(Fault(FAULT_AT_S, "car node offline", _node(CAR_NODE, False)),
                     Fault(FAULT_AT_S + OUTAGE_S, "car node back", _node(CAR_NODE, True)))),
    Scenario("wall-node-offline", "the wall's Lightning node unreachable for a minute",
             "the wall stops selling safely and resumes once its node is back",
             judge_node_outage("wall node back", "Lightning node unreachable"),
             charge_s=OUTAGE_END_CHARGE_S,
             faults=(Fault(FAULT_AT_S, "wall node offline", _node(WALL_NODE, False)),
                     Fault(FAULT_AT_S + OUTAGE_S, "wall node back", _node(WALL_NODE, True)))),
    Scenario("twc-serial-unplugged", "the RS-485 adapter pulled out for 40 s and put back",
             "no energy billed that the wall did not see, selling resumes", judge_serial_unplugged, charge_s=150.0,
             faults=(Fault(FAULT_AT_S, "RS-485 adapter unplugged", _plant("serial-off")),
                     Fault(FAULT_AT_S + 40.0, "RS-485 adapter plugged back", _plant("serial-on")))),
    Scenario("swcan-silent", "the car never hears the wall on SWCAN",
             "no offer accepted, nothing paid, power cut before a payment's worth, manual pay offered",
             judge_swcan_silent, charge_s=80.0, car_hears_wall=False),
)}
