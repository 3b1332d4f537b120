from datetime import timedelta

from test_wall_harness import Wall

from distributedcharge.units import NJ_PER_KWH, NJ_PER_WH
from wallunit.actions import (
    CancelInvoice,
    CreateHoldInvoice,
    CutPower,
    HidePaymentRequest,
    ResumePower,
    SettleInvoice,
    ShowPaymentRequest,
    StopSale,
)
from wallunit.manual import ManualSettings
from wallunit.policy import SellerSettings

WH = NJ_PER_WH
HTLC_WINDOW = timedelta(minutes=10 * (144 - 25))


def manual_wall(**manual) -> Wall:
    wall = Wall(settings=SellerSettings(manual=ManualSettings(**manual)))
    wall.plug_in()
    wall.advance(30)  # no answer to the offer: no car daemon
    return wall


def charge(wall: Wall, wh: int) -> None:
    for _ in range(wh // 10):
        wall.deliver(10 * WH)


def test_car_without_daemon_gets_a_deposit_qr_and_no_power_until_it_is_held():
    wall = manual_wall()
    assert wall.of(StopSale)[-1].reason == "no answer from the car; switching to manual pay"
    deposit = wall.of(CreateHoldInvoice)[0]
    assert (deposit.purpose, deposit.amount_msat, deposit.cltv_expiry, deposit.expiry_s) == (
        "deposit", 250 * 100_000, 144, 600,
    )
    assert wall.shown["deposit"].amount_msat == 25_000_000
    assert wall.of(CutPower)[-1].reason == "manual pay: waiting for the deposit" and not wall.power_on
    charge(wall, 100)
    assert wall.policy.session.delivered_nj == 0
    wall.hold(deposit.ref)
    assert wall.power_on and wall.of(ResumePower)
    assert HidePaymentRequest(deposit.ref) in wall.actions


def test_final_invoice_paid_settles_it_and_returns_the_deposit():
    wall = manual_wall()
    deposit = wall.of(CreateHoldInvoice)[0]
    wall.hold(deposit.ref)
    charge(wall, 2000)
    wall.unplug()
    final = wall.of(CreateHoldInvoice)[-1]
    assert final.purpose == "final" and final.amount_msat == 200_000  # 2 kWh at 100 sat/kWh
    assert final.expiry_s == HTLC_WINDOW.total_seconds() - 200  # pays until the deposit's deadline
    assert wall.shown["final"].payment_request
    done = wall.hold(final.ref)
    settles = [a for a in done if isinstance(a, SettleInvoice)]
    cancels = [a for a in done if isinstance(a, CancelInvoice)]
    assert [wall.node[s.r_hash].ref for s in settles] == [final.ref]
    assert [wall.node[c.r_hash].ref for c in cancels] == [deposit.ref]
    assert wall.node[cancels[0].r_hash].state == "CANCELED"
    assert wall.ledger.paid_total_msat() == 200_000


def test_final_invoice_not_paid_in_time_settles_the_deposit():
    wall = manual_wall()
    deposit = wall.of(CreateHoldInvoice)[0]
    wall.hold(deposit.ref)
    accepted_at = wall.now
    charge(wall, 500)
    wall.unplug()
    final = wall.of(CreateHoldInvoice)[-1]
    wall.advance((accepted_at + HTLC_WINDOW - wall.now).total_seconds() - 1)
    assert not wall.of(SettleInvoice)
    wall.advance(1)
    [settle] = wall.of(SettleInvoice)
    assert wall.node[settle.r_hash].ref == deposit.ref
    assert wall.node[wall._hash_of(final.ref)].state == "CANCELED"
    assert wall.ledger.paid_total_msat() == 25_000_000


def test_deposit_used_up_is_settled_and_power_cut():
    wall = manual_wall(deposit_kwh=1)
    deposit = wall.of(CreateHoldInvoice)[0]
    assert deposit.amount_msat == 100_000
    wall.hold(deposit.ref)
    for _ in range(200):
        wall.deliver(10 * WH)
    delivered = wall.policy.session.delivered_nj
    assert NJ_PER_KWH - 10 * WH < delivered <= NJ_PER_KWH
    assert wall.of(CutPower)[-1].reason == "manual pay: sale closed" and not wall.power_on
    [settle] = wall.of(SettleInvoice)
    assert settle.reason == "deposit used up"
    wall.unplug()
    assert len(wall.of(CreateHoldInvoice)) == 1  # nothing more to bill
    assert wall.ledger.paid_total_msat() == 100_000


def test_unpaid_deposit_is_replaced_when_it_expires_and_a_late_payment_on_the_old_one_is_returned():
    wall = manual_wall()
    first = wall.of(CreateHoldInvoice)[0]
    wall.advance(600)
    second = wall.of(CreateHoldInvoice)[-1]
    assert second.ref != first.ref and second.purpose == "deposit"
    assert wall.node[wall._hash_of(first.ref)].state == "CANCELED"
    assert wall.shown["deposit"].ref == second.ref
    late = wall.policy.invoice_accepted(wall.now, wall._hash_of(first.ref), first.amount_msat)
    assert [type(a) for a in late] == [CancelInvoice] and not wall.power_on
    wall.hold(second.ref)
    assert wall.power_on


def test_car_leaving_before_paying_the_deposit_cancels_it():
    wall = manual_wall()
    deposit = wall.of(CreateHoldInvoice)[0]
    wall.unplug()
    assert wall.node[wall._hash_of(deposit.ref)].state == "CANCELED"
    assert HidePaymentRequest(deposit.ref) in wall.actions
    assert len(wall.of(CreateHoldInvoice)) == 1


def test_car_plugged_until_the_deadline_nears_is_billed_while_still_plugged_in():
    wall = manual_wall()
    deposit = wall.of(CreateHoldInvoice)[0]
    wall.hold(deposit.ref)
    charge(wall, 100)
    wall.advance((HTLC_WINDOW - timedelta(minutes=10)).total_seconds())
    final = wall.of(CreateHoldInvoice)[-1]
    assert final.purpose == "final" and not wall.power_on
    wall.hold(final.ref)
    assert wall.node[wall._hash_of(deposit.ref)].state == "CANCELED"
    assert wall.ledger.paid_total_msat() == final.amount_msat == 10_000


def test_no_energy_used_returns_the_deposit_without_a_final_invoice():
    wall = manual_wall()
    deposit = wall.of(CreateHoldInvoice)[0]
    wall.hold(deposit.ref)
    wall.unplug()
    assert len(wall.of(CreateHoldInvoice)) == 1
    assert wall.node[wall._hash_of(deposit.ref)].state == "CANCELED"


def test_settle_during_a_node_outage_is_sent_again_when_the_node_is_back():
    wall = manual_wall()
    deposit = wall.of(CreateHoldInvoice)[0]
    wall.hold(deposit.ref)
    charge(wall, 300)
    wall.unplug()
    final = wall.of(CreateHoldInvoice)[-1]
    wall.node_up = False
    wall.hold(final.ref)
    assert wall.node[wall._hash_of(final.ref)].state == "ACCEPTED"
    wall.node_up = True
    wall.run(wall.policy.node_reachable(wall.now))
    assert wall.node[wall._hash_of(final.ref)].state == "SETTLED"
    assert wall.node[wall._hash_of(deposit.ref)].state == "CANCELED"
    assert wall.ledger.paid_total_msat() == 30_000


def test_manual_sale_finishes_after_unplug_while_a_new_car_buys_with_autopay():
    wall = manual_wall()
    deposit = wall.of(CreateHoldInvoice)[0]
    wall.hold(deposit.ref)
    charge(wall, 1000)
    wall.unplug()
    final = wall.of(CreateHoldInvoice)[-1]
    wall.advance(20)
    wall.plug_in()
    wall.accept()
    assert len(wall.sent) == 1
    wall.hold(final.ref)
    assert wall.node[wall._hash_of(final.ref)].state == "SETTLED"
    assert wall.ledger.paid_total_msat() == 100_000
    wall.pay_all()
    assert wall.ledger.paid_total_msat() == 103_000


def test_show_payment_request_carries_a_real_invoice_for_the_qr():
    wall = manual_wall()
    shown = wall.shown["deposit"]
    assert isinstance(shown, ShowPaymentRequest) and shown.payment_request.startswith("lnbcrt")
