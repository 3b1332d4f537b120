from datetime import datetime, timedelta
from fractions import Fraction

import pytest
from test_wall_harness import START, Wall

from distributedcharge.units import NJ_PER_KWH, NJ_PER_WH, energy_for_msat, msat_for_energy
from wallunit.actions import (
    CancelInvoice,
    energy_per_payment,
    CreateInvoice,
    CutPower,
    Ignored,
    MakeOffer,
    Offer,
    RepeatOffer,
    ResumePower,
    SessionEnded,
    StopRepeatingOffer,
    StopSale,
)
from wallunit.policy import make_offer
from wallunit.tariff import Period, Tariff

WH = NJ_PER_WH
# 100 sat/kWh, 25 Wh -> 2.5 sat rounds up to 3 sat, which buys exactly 30 Wh.
PAYMENT_NJ = 30 * WH
CUT_BEFORE_FIRST_NJ = Fraction(303, 1000) * PAYMENT_NJ
CUT_AFTER_FIRST_NJ = Fraction(202, 1000) * PAYMENT_NJ
STEP_NJ = 2 * WH  # one meter reading in these tests


def test_offer_prices_25_wh_in_msat_and_v1_terms_round_up_to_a_whole_sat():
    offer = make_offer(100_000, Fraction(25))
    assert offer == Offer(100_000, 2_500)
    assert energy_per_payment(offer) == 25 * WH
    assert energy_per_payment(offer.as_v1()) == 30 * WH  # 3 sat buys exactly 30 Wh
    odd = make_offer(137_000, Fraction(25))
    assert odd.payment_msat == 3_425
    assert odd.as_v1().payment_msat == 4_000
    assert energy_per_payment(odd.as_v1()) == Fraction(4_000 * NJ_PER_KWH, 137_000)
    assert make_offer(10_000, Fraction(25)).as_v1().payment_msat == 1_000  # never below 1 sat


def test_honest_car_is_sold_energy_at_the_configured_rate_without_a_cut():
    wall = Wall()
    offer = wall.plug_in()[0]
    assert offer == MakeOffer(Offer(100_000, 2_500))
    wall.accept(version=1)
    worst = Fraction(0)
    for _ in range(500):  # 1 kWh in 2 Wh readings, the car paying each invoice it receives
        wall.deliver(STEP_NJ)
        wall.pay_all()
        worst = max(worst, wall.policy.exposure_msat)
    assert not wall.of(CutPower)
    invoices = wall.of(CreateInvoice)
    assert {i.amount_msat for i in invoices} == {3_000}
    assert all(i.rate_msat_per_kwh == 100_000 for i in invoices)
    delivered_value = msat_for_energy(1000 * WH, 100_000)
    paid = wall.ledger.paid_total_msat()
    # An instant payer is ahead by less than 1.8 payments (the next-invoice line) plus the
    # payment it just made.
    assert delivered_value <= paid < delivered_value + Fraction(28, 10) * 3_000
    assert worst <= msat_for_energy(int(CUT_BEFORE_FIRST_NJ), 100_000)
    ended = wall.unplug()[-1]
    assert isinstance(ended, SessionEnded) and ended.delivered_nj == 1000 * WH and ended.paid_msat == paid


def test_at_most_one_invoice_is_outstanding():
    wall = Wall()
    wall.plug_in()
    wall.accept()
    for _ in range(50):
        wall.deliver(STEP_NJ)
        assert len(wall.unpaid()) <= 1


def test_next_invoice_goes_out_below_1_8_payments_of_credit():
    wall = Wall()
    wall.plug_in()
    wall.accept()
    wall.pay(wall.sent[0])  # credit 1 payment: the second invoice goes straight out
    assert len(wall.sent) == 2
    wall.pay(wall.sent[1])  # credit 2 payments: no third yet
    assert len(wall.sent) == 2
    wall.deliver(int(Fraction(2, 10) * PAYMENT_NJ) - 1)  # credit just above 1.8 payments
    assert len(wall.sent) == 2
    wall.deliver(2)
    assert len(wall.sent) == 3


def test_car_that_accepts_and_never_pays_is_cut_within_the_first_payment_threshold():
    wall = Wall()
    wall.plug_in()
    wall.accept()
    while wall.power_on:
        wall.deliver(STEP_NJ)
    delivered = wall.policy.session.delivered_nj
    assert CUT_BEFORE_FIRST_NJ < delivered <= CUT_BEFORE_FIRST_NJ + STEP_NJ
    assert wall.of(CutPower)[0].reason == "buyer behind on payments"
    for _ in range(30):
        wall.deliver(STEP_NJ)
    assert wall.policy.session.delivered_nj == delivered  # stays off
    assert wall.ledger.paid_total_msat() == 0


def test_unpaid_invoice_expires_and_is_replaced_so_the_buyer_can_still_catch_up():
    wall = Wall()
    wall.plug_in()
    wall.accept()
    first = wall.sent[0]
    wall.advance(599)
    assert not wall.of(CancelInvoice)
    wall.advance(1)
    assert wall.of(CancelInvoice)[0].reason == "invoice expired unpaid"
    assert wall.node[wall._hash_of(first.ref)].state == "CANCELED"
    assert len(wall.sent) == 2 and wall.unpaid() == [wall.sent[1]]


def test_car_that_pays_late_is_cut_then_resumed_when_it_catches_up():
    wall = Wall()
    wall.plug_in()
    wall.accept()
    while wall.power_on:
        wall.deliver(STEP_NJ)
    wall.advance(30)
    wall.pay_all()  # the late payment
    assert wall.power_on
    assert wall.of(ResumePower)
    wall.deliver(STEP_NJ)
    assert wall.policy.session.delivered_nj > CUT_BEFORE_FIRST_NJ + STEP_NJ


def test_car_that_pays_some_and_stops_is_cut_while_still_in_credit():
    wall = Wall()
    wall.plug_in()
    wall.accept()
    paid = 0
    while paid < 3:
        wall.deliver(STEP_NJ)
        for send in wall.unpaid():
            if paid < 3:
                wall.pay(send)
                paid += 1
    while wall.power_on:
        wall.deliver(STEP_NJ)
    credit = wall.policy.credit_nj
    assert -STEP_NJ + CUT_AFTER_FIRST_NJ <= credit < CUT_AFTER_FIRST_NJ
    assert wall.ledger.paid_total_msat() == 9_000
    assert wall.policy.session.delivered_nj == 3 * PAYMENT_NJ - credit


def test_v1_session_keeps_whole_sat_payments_and_its_rate_across_a_tariff_change():
    tariff = Tariff([Period(7 * 60, 22 * 60, 137_000), Period(22 * 60, 7 * 60, 80_000)])
    wall = Wall(tariff=tariff, now=START.replace(hour=21, minute=59))
    wall.plug_in()
    wall.accept(version=1)
    wall.advance(120)  # now in the 80 sat/kWh period
    wall.pay_all()
    for _ in range(100):
        wall.deliver(STEP_NJ)
        wall.pay_all()
    assert len(wall.of(MakeOffer)) == 1
    invoices = wall.of(CreateInvoice)
    assert len(invoices) > 5
    assert {(i.amount_msat, i.rate_msat_per_kwh) for i in invoices} == {(4_000, 137_000)}
    assert all(i.energy_nj == energy_for_msat(4_000, 137_000) for i in invoices)
    assert all(i.amount_msat % 1000 == 0 for i in invoices)


def test_v2_session_is_offered_the_new_rate_when_the_period_changes():
    tariff = Tariff([Period(7 * 60, 22 * 60, 150_000), Period(22 * 60, 7 * 60, 80_000)])
    wall = Wall(tariff=tariff, now=START.replace(hour=21, minute=59, second=30))
    wall.plug_in()
    wall.accept(version=2)
    wall.pay_all()
    before = len(wall.of(CreateInvoice))
    wall.advance(30)  # 22:00:00
    reoffer = wall.of(MakeOffer)[-1]
    assert reoffer.offer == Offer(80_000, 2_000)  # 25 Wh at 80 sat/kWh
    for _ in range(20):  # no invoice at either rate while the car considers the new one
        wall.deliver(STEP_NJ)
        wall.pay_all()
    assert len(wall.of(CreateInvoice)) == before
    wall.accept(version=2)
    for _ in range(40):
        wall.deliver(STEP_NJ)
        wall.pay_all()
    later = wall.of(CreateInvoice)[before:]
    assert later and {(i.amount_msat, i.rate_msat_per_kwh) for i in later} == {(2_000, 80_000)}
    assert all(i.energy_nj == 25 * WH for i in later)
    assert {i.amount_msat for i in wall.of(CreateInvoice)[:before]} == {3_750}  # 25 Wh at 150 sat/kWh


def test_v2_car_refusing_the_new_rate_stops_the_sale_until_unplug_and_is_cut_when_credit_runs_out():
    tariff = Tariff([Period(7 * 60, 22 * 60, 100_000), Period(22 * 60, 7 * 60, 500_000)])
    wall = Wall(tariff=tariff, now=START.replace(hour=21, minute=59, second=50))
    wall.plug_in()
    wall.accept(version=2)
    wall.pay_all()
    wall.pay_all()
    wall.advance(10)
    wall.run(wall.policy.car_rejected(wall.now))
    assert wall.of(StopSale)[-1].reason == "car refused 500 sat/kWh"
    while wall.power_on:
        wall.deliver(STEP_NJ)
        wall.pay_all()  # would pay, but no new invoice comes
    assert wall.ledger.paid_total_msat() == 5_000  # two payments of 25 Wh at 100 sat/kWh
    assert wall.policy.credit_nj < Fraction(202, 1000) * 25 * WH
    wall.advance(12 * 3600)  # back to the cheap period: no new offer in this session
    assert len(wall.of(MakeOffer)) == 2 and not wall.of(CreateInvoice)[2:]


def test_node_outage_cuts_power_and_selling_resumes_when_it_is_back():
    wall = Wall()
    wall.plug_in()
    wall.accept()
    wall.pay_all()
    wall.deliver(STEP_NJ)
    wall.node_up = False
    done = wall.run(wall.policy.node_unreachable(wall.now))
    assert StopSale("Lightning node unreachable") in done
    assert CutPower("Lightning node unreachable") in done and not wall.power_on
    invoices_during_outage = len(wall.of(CreateInvoice))
    for _ in range(4):
        wall.advance(30)
    assert len(wall.of(CreateInvoice)) == invoices_during_outage
    wall.node_up = True
    [stale] = wall.unpaid()  # sent before the outage; the car may have given up on it
    done = wall.run(wall.policy.node_reachable(wall.now))
    assert any(isinstance(a, ResumePower) for a in done) and wall.power_on
    assert [a.r_hash for a in done if isinstance(a, CancelInvoice)] == [wall._hash_of(stale.ref)]
    assert wall.unpaid() == wall.sent[-1:] and wall.sent[-1] != stale
    for _ in range(40):
        wall.deliver(STEP_NJ)
        wall.pay_all()
    assert len(wall.of(CutPower)) == 1


def test_failed_invoice_creation_is_retried_after_a_pause():
    wall = Wall()
    wall.plug_in()
    wall.node_up = False  # the node errors on the call but has not been declared down
    wall.accept()
    assert not wall.sent and any("failed" in a.reason for a in wall.of(Ignored))
    wall.node_up = True
    wall.advance(1)
    assert not wall.sent
    wall.advance(5)
    assert len(wall.sent) == 1


def test_twc_that_ignores_the_stop_is_asked_again():
    wall = Wall(twc_obeys=False)
    wall.plug_in()
    wall.accept()
    while not wall.of(CutPower):
        wall.deliver(STEP_NJ)
    for _ in range(4):  # the retry waits 5 s, not a tight loop on a failing TWC
        wall.deliver(STEP_NJ)
    assert len(wall.of(CutPower)) == 1 and wall.power_on
    wall.deliver(STEP_NJ)
    assert len(wall.of(CutPower)) == 2


def test_garbage_from_the_car_or_meter_is_refused_and_the_session_goes_on():
    wall = Wall()
    wall.plug_in()
    policy, now = wall.policy, wall.now
    assert isinstance(policy.car_accepted(now, Offer(1, 1), 1)[0], Ignored)
    assert isinstance(policy.car_accepted(now, policy.session.offer, 9)[0], Ignored)
    assert isinstance(policy.energy_delivered(now, -5)[0], Ignored)
    assert isinstance(policy.energy_delivered(now, 1.5)[0], Ignored)
    assert isinstance(policy.invoice_settled(now, b"\x00" * 32, 3000)[0], Ignored)
    assert isinstance(policy.stop_confirmed(now)[0], Ignored)
    wall.accept()
    assert isinstance(policy.car_accepted(now, policy.session.offer, 1)[0], Ignored)  # answered twice
    assert len(wall.sent) == 1


def test_settlement_reported_twice_counts_once():
    wall = Wall()
    wall.plug_in()
    wall.accept()
    send = wall.sent[0]
    wall.pay(send)
    r_hash = wall._hash_of(send.ref)
    assert wall.policy.invoice_settled(wall.now, r_hash, 3000) == []
    assert wall.policy.session.paid_msat == 3000
    assert wall.policy.credit_nj == PAYMENT_NJ


def test_unplug_cancels_the_outstanding_invoice():
    wall = Wall()
    wall.plug_in()
    wall.accept()
    done = wall.unplug()
    assert any(isinstance(a, CancelInvoice) for a in done)
    assert wall.node[wall._hash_of(wall.sent[0].ref)].state == "CANCELED"
    assert wall.policy.session is None


def test_car_that_never_answers_is_cut_at_the_before_first_payment_line():
    wall = Wall()
    wall.plug_in()
    while wall.power_on:
        wall.deliver(STEP_NJ)
    line = Fraction(303, 1000) * 25 * WH  # no terms agreed yet: the offer's 25 Wh payment
    assert line < wall.policy.session.delivered_nj <= line + STEP_NJ
    assert not wall.sent


def test_new_plug_in_after_a_cut_turns_power_back_on():
    wall = Wall()
    wall.plug_in()
    while wall.power_on:
        wall.deliver(STEP_NJ)
    wall.unplug()
    wall.advance(20)
    wall.plug_in()
    assert wall.power_on and isinstance(wall.actions[-1], ResumePower)


@pytest.mark.parametrize("version, payment_msat, energy_nj", [
    (1, 4_000, energy_for_msat(4_000, 123_456)),  # v1: 3.0864 sat rounds up to 4 sat
    (2, 3_087, energy_for_msat(3_087, 123_456)),  # v2: 25 Wh rounded up to a whole msat
])
def test_invoices_follow_the_terms_the_car_agreed_to(version, payment_msat, energy_nj):
    wall = Wall(tariff=Tariff.fixed(123_456))
    wall.plug_in()
    wall.accept(version)
    first = wall.of(CreateInvoice)[0]
    assert (first.amount_msat, first.energy_nj) == (payment_msat, energy_nj)


def test_v2_car_cannot_claim_the_whole_sat_terms_meant_for_v1():
    wall = Wall()
    wall.plug_in()
    rounded = wall.policy.session.offer.as_v1()
    assert isinstance(wall.policy.car_accepted(wall.now, rounded, 2)[0], Ignored)


def test_rejected_car_is_offered_again_when_the_period_changes():
    tariff = Tariff([Period(7 * 60, 22 * 60, 500_000), Period(22 * 60, 7 * 60, 80_000)])
    wall = Wall(tariff=tariff, now=datetime(2024, 6, 3, 21, 59, 0, tzinfo=START.tzinfo))
    wall.plug_in()
    wall.run(wall.policy.car_rejected(wall.now))
    wall.advance(timedelta(minutes=1).total_seconds())
    assert wall.of(MakeOffer)[-1].offer.rate_msat_per_kwh == 80_000
    wall.accept()
    assert wall.sent


# --- a v1 car that restarted mid-session -------------------------------------------------------

def v1_car_that_stopped_paying(version: int = 1) -> tuple[Wall, dict]:
    """Accepted, paid its first invoice, then went quiet for a minute. Also returns when
    power was cut and when the offer went out again."""
    wall = Wall()
    wall.plug_in()
    wall.accept(version=version)
    wall.pay_all()
    seen: dict = {}
    for _ in range(60):
        for action in wall.deliver(STEP_NJ):
            seen.setdefault(type(action), wall.now)
    return wall, seen


def test_v1_car_behind_with_an_invoice_open_is_offered_its_terms_again_once():
    wall, seen = v1_car_that_stopped_paying()
    assert len(wall.of(RepeatOffer)) == 1
    assert seen[RepeatOffer] - seen[CutPower] == timedelta(seconds=10)
    assert len(wall.unpaid()) == 1


def test_v2_car_behind_is_never_offered_again_it_resumes_its_own_session():
    wall, _ = v1_car_that_stopped_paying(version=2)
    assert wall.of(CutPower) and not wall.of(RepeatOffer)


def test_a_payment_stops_the_repeat_and_the_invoice_it_paid_counts():
    wall, _ = v1_car_that_stopped_paying()
    [open_invoice] = wall.unpaid()
    after_payment = wall.pay(open_invoice)
    assert wall.of(StopRepeatingOffer) and not wall.of(CancelInvoice)
    assert any(isinstance(a, ResumePower) for a in after_payment)
    assert wall.policy.session.paid_msat == 2 * 3_000


def test_restarted_v1_car_accepting_again_gets_a_fresh_invoice_and_the_dropped_one_is_canceled():
    wall, _ = v1_car_that_stopped_paying()
    [dropped] = wall.unpaid()
    sent_before = len(wall.sent)
    wall.accept(version=1)
    [cancel] = wall.of(CancelInvoice)
    assert cancel.r_hash == wall._hash_of(dropped.ref) and "restarted" in cancel.reason
    assert len(wall.sent) == sent_before + 1 and wall.unpaid() == wall.sent[-1:]
    wall.pay_all()
    assert wall.power_on
    for _ in range(40):
        wall.deliver(STEP_NJ)
        wall.pay_all()
    assert len(wall.sent) > sent_before + 2 and len(wall.of(RepeatOffer)) == 1
    assert wall.policy.session.paid_msat == 3_000 * (len(wall.sent) - 1)


def test_restarted_v1_car_refusing_its_own_terms_ends_the_sale():
    wall, _ = v1_car_that_stopped_paying()
    sent_before = len(wall.sent)
    wall.run(wall.policy.car_rejected(wall.now))
    assert "restarting" in wall.of(StopSale)[-1].reason
    for _ in range(30):
        wall.deliver(STEP_NJ)
    assert len(wall.sent) == sent_before and len(wall.of(RepeatOffer)) == 1 and not wall.power_on
