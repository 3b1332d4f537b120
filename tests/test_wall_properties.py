"""Whatever a car, the node and time do, the seller's exposure stays bounded."""

from fractions import Fraction

from hypothesis import given, settings
from hypothesis import strategies as st
from test_wall_harness import Wall

from distributedcharge.units import NJ_PER_WH, msat_for_energy
from wallunit.policy import SellerSettings
from wallunit.tariff import Tariff

MAX_READING_NJ = 3 * NJ_PER_WH  # about 11 kW read once a second

# Readings dominate, as they do in a real session; a lazy payer lets the credit run down.
KINDS = ["energy"] * 8 + ["full reading"] * 4 + ["pay"] * 3 + [
    "pay twice", "wait", "accept", "reject", "node down", "node up", "replug",
]
events = st.tuples(st.sampled_from(KINDS), st.integers(0, MAX_READING_NJ), st.sampled_from([1, 2]),
                   st.integers(1, 700))


@settings(max_examples=200, deadline=None)
@given(st.sampled_from([10_000, 100_000, 137_000, 1_000_000]), st.lists(events, min_size=10, max_size=150))
def test_exposure_never_passes_the_cut_line_by_more_than_one_reading(rate, script):
    wall = Wall(settings=SellerSettings(manual=None), tariff=Tariff.fixed(rate))
    wall.plug_in()
    for kind, nj, version, seconds in script:
        if kind == "energy":
            wall.deliver(nj)
        elif kind == "full reading":
            wall.deliver(MAX_READING_NJ)
        elif kind == "pay" and wall.unpaid():
            wall.pay(wall.unpaid()[0])
        elif kind == "pay twice" and wall.settlements:
            r_hash, amount = wall.settlements[-1]
            wall._report_settled(r_hash, amount)
        elif kind == "wait":
            wall.advance(seconds)
        elif kind == "accept" and wall.policy.session.phase.value in ("offering", "refused"):
            wall.accept(version)
        elif kind == "reject" and wall.policy.session.phase.value == "offering":
            wall.run(wall.policy.car_rejected(wall.now))
        elif kind == "node down":
            wall.node_up = False
            wall.run(wall.policy.node_unreachable(wall.now))
        elif kind == "node up":
            wall.node_up = True
            wall.run(wall.policy.node_reachable(wall.now))
        elif kind == "replug":
            wall.unplug()
            wall.advance(20)
            wall.plug_in()

        policy = wall.policy
        payment_nj = policy.energy_per_payment_nj
        bound_nj = Fraction(303, 1000) * payment_nj + MAX_READING_NJ
        assert -policy.credit_nj <= bound_nj
        assert policy.exposure_msat <= msat_for_energy(1, rate) * bound_nj
        distinct = dict(wall.settlements)
        assert wall.ledger.paid_total_msat() == sum(distinct.values())
        assert policy.session.paid_msat == wall.ledger.paid_total_msat(policy.session.session_id)
