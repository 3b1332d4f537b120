"""The car's buyer policy against honest and hostile wall units.

Invoices here are real signed BOLT11 strings, forged with our own encoder and keys, so
every check (signature, payee, network, expiry, amount) runs on what a wall would send.
"""

from __future__ import annotations

import hashlib
import math
from fractions import Fraction

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from car.policy import (
    Accept,
    BuyerPolicy,
    BuyerSettings,
    Code,
    NotYetDue,
    Pay,
    PrepayTolerance,
    Refuse,
    Reject,
    Terms,
    fee_limit_msat,
)
from distributedcharge.lightning import bech32, bolt11
from distributedcharge.units import NJ_PER_WH

NOW = 1_750_000_000
WALL_KEY = bytes([7]) * 32
OTHER_KEY = bytes([9]) * 32
OFFER = Terms(rate_msat_per_kwh=100_000, payment_msat=2_500)  # 100 sat/kWh, 25 Wh per payment
RICH = 10**12  # channel balance that never limits
AMPS_32 = 320


def payee_of(key: bytes) -> bytes:
    return bolt11.decode(forge(1, key=key)).payee


_counter = iter(range(1, 10**9))


def forge(amount_msat: int | None, *, key: bytes = WALL_KEY, network: str = "mainnet", timestamp: int = NOW,
          expiry: int = 3600, payment_hash: bytes | None = None) -> str:
    if payment_hash is None:
        payment_hash = hashlib.sha256(next(_counter).to_bytes(8, "big")).digest()
    return bolt11.encode(network=network, amount_msat=amount_msat, payment_hash=payment_hash, private_key=key,
                         payment_secret=bytes(32), description="energy", expiry=expiry, timestamp=timestamp)


def wh(value: int | Fraction) -> int:
    return int(Fraction(value) * NJ_PER_WH)


class Car:
    """The policy plus what the daemon would do around it: pay at once, succeed, count spending."""

    def __init__(self, settings: BuyerSettings | None = None, known_hashes=frozenset(), offer: Terms = OFFER):
        self.policy = BuyerPolicy(settings or BuyerSettings(), known_hashes)
        self.policy.start_session(NOW)
        self.received_nj = 0
        self.spent_msat = 0
        self.fee_msat = 0
        if offer is not None:
            assert isinstance(self.policy.consider_offer(offer, NOW), Accept)

    def consider(self, text, *, bound=None, now=NOW, current=AMPS_32, balance=RICH, spent_today=None):
        spent_today = self.spent_msat if spent_today is None else spent_today
        return self.policy.consider_invoice(text, bound, self.received_nj, current, balance, now,
                                            self.spent_msat, spent_today)

    def offer_and_pay(self, text, *, fee_msat=0, **kwargs):
        decision = self.consider(text, **kwargs)
        if isinstance(decision, Pay):
            self.policy.payment_succeeded(decision.payment_hash, decision.amount_msat, fee_msat)
            self.spent_msat += decision.amount_msat + fee_msat
            self.fee_msat += fee_msat
        return decision

    @property
    def paid_msat(self) -> int:
        return self.policy.session.paid_msat


# --- the allowance model ----------------------------------------------------------------


def test_allowed_error_falls_linearly_from_20_percent_at_5_a_to_2_5_percent_at_48_a():
    tolerance = PrepayTolerance()
    assert tolerance.allowed_error(50) == Fraction(1, 5)
    assert tolerance.allowed_error(480) == Fraction(1, 40)
    assert tolerance.allowed_error(265) == (Fraction(1, 5) + Fraction(1, 40)) / 2
    assert tolerance.allowed_error(0) == Fraction(1, 5)
    assert tolerance.allowed_error(800) == Fraction(1, 40)
    assert tolerance.allowed_error(None) == Fraction(1, 40)


@pytest.mark.parametrize(
    "amount, ppm, floor, expected",
    [
        (2_500, 30_000, 2_000, 2_000),  # 3 % is 75 msat: the 2 sat floor wins
        (100_000, 30_000, 2_000, 3_000),  # 3 % exactly
        (33_334, 30_000, 0, 1_001),  # 1000.02 msat rounds up, never down
        (41_000, 0, 2_000, 2_000),
    ],
)
def test_fee_limit_is_the_larger_of_the_share_rounded_up_and_the_floor(amount, ppm, floor, expected):
    assert fee_limit_msat(amount, ppm, floor) == expected


def test_a_pay_decision_carries_the_fee_limit_and_the_exact_energy_bought():
    car = Car(BuyerSettings(max_fee_ppm=30_000, min_fee_msat=2_000))
    decision = car.consider(forge(5_000))  # the first payment may be two
    assert isinstance(decision, Pay)
    assert decision.fee_limit_msat == 2_000
    assert decision.amount_msat == 5_000
    assert decision.energy_wh == 50


# --- honest sessions --------------------------------------------------------------------


def test_an_honest_wall_is_paid_for_what_it_delivered_plus_its_own_credit_margin():
    """The original wall sends the next invoice when its credit falls below 1.8 payments."""
    car = Car()
    delivered_wh = 0
    outstanding = None
    for _ in range(2_000):
        delivered_wh += 5
        car.received_nj = wh(delivered_wh)
        credit_wh = Fraction(car.paid_msat * 1000, OFFER.rate_msat_per_kwh) - delivered_wh
        if outstanding is None and credit_wh < Fraction(18, 10) * OFFER.wh_per_payment:
            outstanding = forge(OFFER.payment_msat)
        if outstanding is not None:
            decision = car.offer_and_pay(outstanding, fee_msat=7)
            assert isinstance(decision, Pay), decision
            outstanding = None
    payments = math.ceil(Fraction(10_000 + 45, 25))
    assert car.paid_msat == payments * 2_500 == 1_005_000
    assert car.fee_msat == payments * 7
    assert car.policy.session.refusals == []


def test_a_greedy_wall_gets_exactly_the_tolerance_and_no_more():
    """A wall that asks again the moment it is paid is paid only up to the v1 allowance."""
    car = Car()
    received_wh = 2_000
    car.received_nj = wh(received_wh)
    outcomes = [car.offer_and_pay(forge(OFFER.payment_msat)) for _ in range(120)]
    paid = sum(isinstance(o, Pay) for o in outcomes)
    error = PrepayTolerance().allowed_error(AMPS_32)
    # pays while (paid Wh - received Wh) < 1.4 x 25 + error x received + 75
    assert paid == math.ceil((received_wh * (1 + error) + 35 + 75) / 25)
    assert car.paid_msat == paid * 2_500
    assert all(isinstance(o, NotYetDue) for o in outcomes[paid:])


def test_an_invoice_held_back_is_paid_once_the_energy_arrives():
    car = Car()
    for _ in range(5):  # 110 Wh of allowance before any energy: 5 payments
        assert isinstance(car.offer_and_pay(forge(2_500)), Pay)
    early = forge(2_500)
    held = car.consider(early)
    assert isinstance(held, NotYetDue) and held.code is Code.TOO_EARLY
    car.received_nj = wh(20)
    assert isinstance(car.offer_and_pay(early), Pay)
    assert car.paid_msat == 6 * 2_500


# --- hostile walls: each refused with its reason, costing nothing ------------------------


def refused(decision, code: Code) -> bool:
    return isinstance(decision, Refuse) and decision.code is code


def test_over_asking_is_refused_but_the_first_payment_may_be_double():
    car = Car()
    assert refused(car.offer_and_pay(forge(5_001)), Code.OVER_OFFER)
    assert isinstance(car.offer_and_pay(forge(5_000)), Pay)
    assert refused(car.offer_and_pay(forge(2_501)), Code.OVER_OFFER)
    assert isinstance(car.offer_and_pay(forge(2_500)), Pay)
    assert car.paid_msat == 7_500


def test_asking_too_early_is_held_and_refused_if_it_expires_while_waiting():
    car = Car()
    for _ in range(5):
        car.offer_and_pay(forge(2_500))
    early = forge(2_500, expiry=60)
    assert isinstance(car.consider(early), NotYetDue)
    car.received_nj = wh(50)
    assert refused(car.offer_and_pay(early, now=NOW + 60), Code.EXPIRED)
    assert car.paid_msat == 5 * 2_500


def test_an_expired_invoice_is_refused():
    car = Car()
    assert refused(car.offer_and_pay(forge(2_500, timestamp=NOW - 3600)), Code.EXPIRED)
    assert car.paid_msat == 0


def test_repeating_a_paid_invoice_is_refused():
    car = Car()
    text = forge(2_500)
    assert isinstance(car.offer_and_pay(text), Pay)
    again = car.offer_and_pay(text)
    assert refused(again, Code.DUPLICATE) and "already succeeded" in again.reason
    assert car.paid_msat == 2_500


def test_an_invoice_paid_in_an_earlier_session_is_refused():
    old_hash = hashlib.sha256(b"paid last week").digest()
    car = Car(known_hashes={old_hash})
    assert refused(car.offer_and_pay(forge(2_500, payment_hash=old_hash)), Code.DUPLICATE)
    assert car.paid_msat == 0


def test_switching_payee_mid_session_is_refused():
    car = Car()
    assert isinstance(car.offer_and_pay(forge(2_500)), Pay)
    switched = car.offer_and_pay(forge(2_500, key=OTHER_KEY))
    assert refused(switched, Code.PAYEE_CHANGED)
    assert car.paid_msat == 2_500


def test_a_payee_outside_the_trusted_list_is_refused():
    car = Car(BuyerSettings(trusted_payees=frozenset({payee_of(WALL_KEY)})))
    assert refused(car.offer_and_pay(forge(2_500, key=OTHER_KEY)), Code.UNTRUSTED_PAYEE)
    assert isinstance(car.offer_and_pay(forge(2_500)), Pay)
    assert car.paid_msat == 2_500


@pytest.mark.parametrize("network", ["testnet", "signet", "regtest"])
def test_an_invoice_for_another_network_is_refused(network):
    car = Car()
    decision = car.offer_and_pay(forge(2_500, network=network))
    assert refused(decision, Code.WRONG_NETWORK) and network in decision.reason
    assert car.paid_msat == 0


def test_an_amountless_invoice_is_refused():
    car = Car()
    assert refused(car.offer_and_pay(forge(None)), Code.AMOUNTLESS)
    assert car.paid_msat == 0


GOOD = forge(2_500)


@pytest.mark.parametrize(
    "garbage",
    ["", "hello", "lnbc1garbage", b"lnbc25n1", None, "\x00\xff" * 40,
     GOOD[:-1] + ("q" if GOOD[-1] != "q" else "p")],
)
def test_garbage_is_refused_without_an_exception(garbage):
    car = Car()
    decision = car.offer_and_pay(garbage)
    assert refused(decision, Code.UNDECODABLE)
    assert car.policy.session.refusals[-1].code is Code.UNDECODABLE
    assert car.paid_msat == 0


def tamper(text: str) -> str:
    """Flip one timestamp bit and recompute the checksum: well-formed, but no longer what was signed."""
    hrp, data = bech32.decode(text)
    data = list(data)
    data[6] ^= 1
    return bech32.encode(hrp, data)


def test_an_invoice_whose_signature_does_not_match_its_stated_payee_is_refused():
    text = bolt11.encode(network="mainnet", amount_msat=2_500, payment_hash=bytes(32), private_key=WALL_KEY,
                         payment_secret=bytes(32), description="energy", timestamp=NOW, include_payee=True)
    car = Car()
    assert refused(car.offer_and_pay(tamper(text)), Code.UNDECODABLE)
    assert car.paid_msat == 0


def test_a_tampered_invoice_recovers_to_a_stranger_and_is_refused_once_the_payee_is_pinned():
    car = Car()
    assert isinstance(car.offer_and_pay(forge(2_500)), Pay)
    assert refused(car.offer_and_pay(tamper(forge(2_500))), Code.PAYEE_CHANGED)
    assert car.paid_msat == 2_500


def test_invoices_before_any_accepted_offer_are_refused():
    car = Car(offer=None)
    assert refused(car.offer_and_pay(forge(2_500)), Code.NO_OFFER)


def test_every_refusal_is_kept_in_the_session_record_with_its_reason():
    car = Car()
    car.offer_and_pay(forge(None))
    car.offer_and_pay(forge(2_500, network="testnet"))
    car.policy.consider_offer(Terms(10**9, 2_500), NOW)
    codes = [r.code for r in car.policy.session.refusals]
    assert codes == [Code.AMOUNTLESS, Code.WRONG_NETWORK, Code.RATE_TOO_HIGH]
    assert all(r.reason for r in car.policy.session.refusals)


# --- offers and tariff changes ----------------------------------------------------------


def test_offer_ceilings_are_inclusive_and_anything_above_is_rejected():
    limits = BuyerSettings(max_rate_msat_per_kwh=1_000_000, max_payment_msat=41_000)
    policy = BuyerPolicy(limits)
    assert isinstance(policy.consider_offer(Terms(1_000_000, 41_000), NOW), Accept)
    rate = BuyerPolicy(limits).consider_offer(Terms(1_000_001, 41_000), NOW)
    assert isinstance(rate, Reject) and rate.code is Code.RATE_TOO_HIGH
    payment = BuyerPolicy(limits).consider_offer(Terms(1_000_000, 41_001), NOW)
    assert isinstance(payment, Reject) and payment.code is Code.PAYMENT_TOO_LARGE


@pytest.mark.parametrize("terms", [Terms(0, 2_500), Terms(100_000, 0), Terms(-1, 2_500),
                                   Terms(100.5, 2_500), Terms(True, 2_500), Terms("100", 2_500)])
def test_malformed_offers_are_rejected(terms):
    decision = BuyerPolicy(BuyerSettings()).consider_offer(terms, NOW)
    assert isinstance(decision, Reject) and decision.code is Code.BAD_OFFER


def test_a_rate_raise_above_the_ceiling_is_rejected_and_the_old_terms_still_hold():
    car = Car(BuyerSettings(max_rate_msat_per_kwh=200_000))
    change = car.policy.consider_offer(Terms(200_001, 2_500), NOW)
    assert isinstance(change, Reject) and change.code is Code.RATE_TOO_HIGH
    assert car.policy.session.current_terms == OFFER
    assert refused(car.offer_and_pay(forge(2_500), bound=Terms(200_001, 2_500)), Code.UNKNOWN_OFFER)
    assert isinstance(car.offer_and_pay(forge(2_500), bound=OFFER), Pay)
    assert car.paid_msat == 2_500


def test_after_a_tariff_change_energy_is_counted_at_the_rate_each_invoice_was_bought_under():
    car = Car()
    assert isinstance(car.offer_and_pay(forge(2_500), bound=OFFER), Pay)  # 25 Wh at 100 sat/kWh
    dearer = Terms(200_000, 2_500)  # 12.5 Wh per payment
    change = car.policy.consider_offer(dearer, NOW)
    assert isinstance(change, Accept) and change.is_change
    decision = car.offer_and_pay(forge(2_500), bound=dearer)
    assert isinstance(decision, Pay) and decision.energy_wh == Fraction(25, 2)
    assert car.policy.session.energy_paid_for_wh == Fraction(75, 2)


def test_after_a_tariff_change_only_one_invoice_under_the_old_terms_is_paid():
    car = Car()
    car.offer_and_pay(forge(2_500), bound=OFFER)
    cheaper = Terms(50_000, 2_500)
    assert isinstance(car.policy.consider_offer(cheaper, NOW), Accept)
    assert isinstance(car.offer_and_pay(forge(2_500), bound=OFFER), Pay)  # was already outstanding
    assert refused(car.offer_and_pay(forge(2_500), bound=OFFER), Code.OFFER_SUPERSEDED)
    assert isinstance(car.offer_and_pay(forge(2_500), bound=cheaper), Pay)
    assert car.paid_msat == 3 * 2_500


def test_an_accepted_offer_holds_until_unplug():
    car = Car()
    car.offer_and_pay(forge(2_500))
    finished = car.policy.end_session(NOW + 10)
    assert finished.paid_msat == 2_500 and finished.ended_at == NOW + 10
    assert refused(car.offer_and_pay(forge(2_500)), Code.NO_OFFER)


# --- money limits -----------------------------------------------------------------------


def test_the_session_cap_counts_the_worst_case_fee():
    car = Car(BuyerSettings(session_cap_msat=2_500 + 2_000 + 4_500))
    assert isinstance(car.offer_and_pay(forge(2_500)), Pay)
    car.spent_msat += 2_000  # the journal counts the fee limit of a payment still unresolved
    assert isinstance(car.offer_and_pay(forge(2_500), spent_today=0), Pay)
    capped = car.offer_and_pay(forge(2_500), spent_today=0)
    assert refused(capped, Code.SESSION_CAP)


def test_the_daily_cap_includes_earlier_sessions():
    car = Car(BuyerSettings(daily_cap_msat=100_000))
    assert isinstance(car.consider(forge(2_500), spent_today=95_500), Pay)
    assert refused(car.consider(forge(2_500), spent_today=95_501), Code.DAILY_CAP)


def test_the_channel_balance_must_cover_the_amount_plus_the_margin():
    car = Car()
    assert refused(car.consider(forge(2_500), balance=2_574), Code.BALANCE_TOO_LOW)
    assert isinstance(car.consider(forge(2_500), balance=2_575), Pay)


# --- failed payments --------------------------------------------------------------------


def test_a_failed_payment_buys_no_energy_and_may_be_retried_up_to_the_limit():
    car = Car(BuyerSettings(max_attempts=2))
    pending = [car.consider(forge(2_500)) for _ in range(5)]
    stuck = forge(2_500)
    assert isinstance(car.consider(stuck), NotYetDue)
    assert car.policy.payment_failed(pending[-1].payment_hash, "FAILURE_REASON_NO_ROUTE")
    assert car.policy.session.energy_paid_for_wh == 4 * 25
    first_try = car.consider(stuck)
    assert isinstance(first_try, Pay) and first_try.attempt == 1
    car.policy.payment_failed(first_try.payment_hash, "FAILURE_REASON_TIMEOUT")
    second_try = car.consider(stuck)
    assert isinstance(second_try, Pay) and second_try.attempt == 2
    car.policy.payment_failed(second_try.payment_hash, "FAILURE_REASON_TIMEOUT")
    assert refused(car.consider(stuck), Code.ATTEMPTS_EXHAUSTED)


def test_a_pending_payment_counts_as_paid_for_until_it_resolves():
    car = Car()
    pending = [car.consider(forge(2_500)) for _ in range(6)]
    assert [type(d) for d in pending] == [Pay] * 5 + [NotYetDue]
    assert car.policy.payment_succeeded(pending[0].payment_hash, 2_500, 3)
    assert not car.policy.payment_succeeded(hashlib.sha256(b"other session").digest(), 2_500, 3)
    assert car.policy.session.fees_msat == 3


# --- the property: whatever a wall sends, the car's exposure is bounded -----------------

PRIOR_HASH = hashlib.sha256(b"an old invoice").digest()

# Every action draws all its parameters; the kind decides which are used. The weights make
# most invoices pass every static check, so sequences reach the tolerance edge.
wall_actions = st.lists(
    st.fixed_dictionaries({
        "kind": st.sampled_from(["invoice"] * 10 + ["energy"] * 2 + ["repeat", "prior", "garbage", "offer",
                                                                      "fail_next"]),
        "wh": st.integers(0, 30),
        "size": st.sampled_from(["payment"] * 6 + ["double", "over", "tiny", "huge"]),
        "key": st.sampled_from([WALL_KEY] * 9 + [OTHER_KEY]),
        "network": st.sampled_from(["mainnet"] * 9 + ["testnet"]),
        "age": st.sampled_from([0] * 9 + [-3600]),
        "amountless": st.sampled_from([False] * 19 + [True]),
        "binding": st.sampled_from(["current"] * 8 + ["first", "unknown"]),
        "index": st.integers(0, 50),
        "garbage": st.sampled_from(["", "lnbc", "lnbc25n1qqqq", "\x00" * 30, GOOD[:-1] + "x",
                                    GOOD.upper()[:-2]]),
        "rate": st.integers(50_000, 400_000),
        "payment": st.integers(1_000, 6_000),
    }),
    min_size=10,
    max_size=60,
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(actions=wall_actions, current=st.integers(0, 800))
def test_no_wall_can_make_the_car_pay_more_than_energy_plus_tolerance(actions, current):
    limits = BuyerSettings(max_rate_msat_per_kwh=300_000, max_payment_msat=5_000,
                           session_cap_msat=None, daily_cap_msat=None)
    car = Car(limits, known_hashes={PRIOR_HASH})
    accepted = [OFFER]
    sent: list[str] = []
    fail_next = False
    now = NOW
    tolerance = limits.tolerance
    paid_wh = Fraction(0)
    worst_overshoot_wh = Fraction(0)
    max_rate_paid = 0
    fee_cap_msat = 0
    payees = set()
    for action in actions:
        now += 1
        kind = action["kind"]
        if kind == "energy":
            car.received_nj += wh(action["wh"])
            continue
        if kind == "offer":
            terms = Terms(action["rate"], action["payment"])
            if isinstance(car.policy.consider_offer(terms, now), Accept):
                accepted.append(terms)
            continue
        if kind == "fail_next":
            fail_next = True
            continue
        bound = None
        if kind == "invoice":
            bound = {"current": None, "first": accepted[0], "unknown": Terms(1, 1)}[action["binding"]]
            payment = (bound or accepted[-1]).payment_msat
            amount = {"payment": payment, "double": 2 * payment, "over": payment + 1, "tiny": 1,
                      "huge": 10**9}[action["size"]]
            text = forge(None if action["amountless"] else amount, key=action["key"],
                         network=action["network"], timestamp=now + action["age"])
            sent.append(text)
        elif kind == "repeat":
            if not sent:
                continue
            text = sent[action["index"] % len(sent)]
        elif kind == "prior":
            text = forge(2_500, payment_hash=PRIOR_HASH)
        else:
            text = action["garbage"]
        decision = car.consider(text, bound=bound, now=now, current=current)
        if not isinstance(decision, Pay):
            continue
        terms = bound or accepted[-1]
        bought_wh = Fraction(decision.amount_msat * 1000, terms.rate_msat_per_kwh)
        payees.add(decision.invoice.payee)
        received_wh = Fraction(car.received_nj, NJ_PER_WH)
        allowance_wh = tolerance.allowance_wh(terms.wh_per_payment, received_wh, current)
        # The rule itself, checked from outside: paid for before this invoice is within the allowance.
        assert paid_wh - received_wh < allowance_wh
        if fail_next:
            car.policy.payment_failed(decision.payment_hash, "FAILURE_REASON_NO_ROUTE")
            fail_next = False
            continue
        fee = decision.fee_limit_msat
        assert fee == fee_limit_msat(decision.amount_msat, limits.max_fee_ppm, limits.min_fee_msat)
        car.policy.payment_succeeded(decision.payment_hash, decision.amount_msat, fee)
        car.spent_msat += decision.amount_msat + fee
        car.fee_msat += fee
        paid_wh += bought_wh
        worst_overshoot_wh = max(worst_overshoot_wh, allowance_wh + bought_wh)
        max_rate_paid = max(max_rate_paid, terms.rate_msat_per_kwh)
        fee_cap_msat += fee

    received_wh = Fraction(car.received_nj, NJ_PER_WH)
    assert car.paid_msat * 1000 <= max_rate_paid * (received_wh + worst_overshoot_wh)
    assert car.fee_msat <= fee_cap_msat
    assert car.spent_msat == car.paid_msat + car.fee_msat
    session = car.policy.session
    assert PRIOR_HASH not in session.payments
    assert len(payees) <= 1


def test_the_swcan_links_offer_objects_are_judged_and_bound_by_their_terms():
    from distributedcharge.swcan.messages import Offer

    policy = BuyerPolicy(BuyerSettings())
    accepted = policy.consider_offer(Offer(100_000, 2_500), NOW)
    assert accepted == Accept(OFFER, is_change=False)
    decision = policy.consider_invoice(forge(2_500), Offer(100_000, 2_500), 0, AMPS_32, RICH, NOW, 0, 0)
    assert isinstance(decision, Pay) and decision.terms == OFFER
