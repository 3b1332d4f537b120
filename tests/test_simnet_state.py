"""The simnet's books without any network: msat accounting, payment and invoice transitions."""

from __future__ import annotations

import hashlib
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from distributedcharge.simnet.state import (
    NS_PER_S,
    FailureReason,
    InvoiceState,
    LndError,
    NetworkState,
    PaymentStatus,
    routing_fee_msat,
)

T0 = 1_700_000_000 * NS_PER_S
FEES = {"fee_base_msat": 1000, "fee_ppm": 1}


def everyone_reachable(name: str) -> bool:
    return True


def new_state(path=":memory:", nodes=(("car", 1_000_000), ("wall", 0))) -> NetworkState:
    state = NetworkState(path)
    state.ensure_nodes(list(nodes), T0)
    return state


def add_invoice(state, node, value_msat, *, hold=False, expiry=3600, now_ns=T0):
    preimage = os.urandom(32)
    invoice = state.add_invoice(
        node,
        payment_hash=hashlib.sha256(preimage).digest(),
        preimage=None if hold else preimage,
        payment_addr=os.urandom(32),
        memo="test",
        description_hash=None,
        value_msat=value_msat,
        creation_date=now_ns // NS_PER_S,
        expiry=expiry,
        cltv_expiry=80,
        payment_request=f"lnbcrt-test-{preimage.hex()}",
    )
    return invoice, preimage


def pay(state, payer, invoice, *, fee_limit_msat=10_000, value_msat=None, forced_failure=False,
        reachable=everyone_reachable, now_ns=T0):
    state.begin_payment(
        payer,
        payment_hash=invoice.payment_hash,
        payee_pubkey=state.node(invoice.node).pubkey,
        payment_addr=invoice.payment_addr,
        payment_request=invoice.payment_request,
        value_msat=value_msat or invoice.value_msat,
        fee_limit_msat=fee_limit_msat,
        now_ns=now_ns,
    )
    return state.route_payment(
        payer, invoice.payment_hash, forced_failure=forced_failure, reachable=reachable, now_ns=now_ns, **FEES
    )


def money(state) -> int:
    """Everything the nodes own or have locked in HTLCs, plus what the router earned."""
    total = state.fees_msat()
    for name in state.node_names():
        balance = state.balance(name)
        total += balance.local_msat + balance.unsettled_local_msat
    return total


def capacities(state) -> dict[str, int]:
    return {name: state.balance(name).capacity_msat for name in state.node_names()}


def test_default_channel_is_seen_from_both_ends():
    state = new_state()
    assert state.balance("car").local_msat == 1_000_000_000
    assert state.balance("car").remote_msat == 0
    assert state.balance("wall").local_msat == 0
    assert state.balance("wall").remote_msat == 1_000_000_000


def test_payment_moves_the_amount_and_charges_base_plus_rounded_up_ppm():
    state = new_state()
    invoice, preimage = add_invoice(state, "wall", 25_000)
    change = pay(state, "car", invoice)
    assert change.payment.status == PaymentStatus.SUCCEEDED
    assert change.payment.fee_msat == 1001  # 1000 base + ceil(25000 * 1 / 1e6)
    assert change.payment.preimage == preimage
    assert state.balance("car").local_msat == 1_000_000_000 - 26_001
    assert state.balance("wall").local_msat == 25_000
    assert state.balance("wall").remote_msat == 1_000_000_000 - 25_000
    assert state.fees_msat() == 1001
    settled = state.find_invoice("wall", invoice.payment_hash)
    assert settled.state == InvoiceState.SETTLED
    assert settled.amt_paid_msat == 25_000
    assert settled.settle_index == 1


@pytest.mark.parametrize(
    ("amount", "base", "ppm", "fee"),
    [(1, 0, 1, 1), (1_000_000, 0, 1, 1), (1_000_001, 0, 1, 2), (0, 7, 500, 7), (3_000_000, 1000, 10, 1030)],
)
def test_routing_fee_is_never_rounded_down(amount, base, ppm, fee):
    assert routing_fee_msat(amount, base, ppm) == fee


def test_paying_again_is_refused_in_flight_and_after_success():
    state = new_state()
    invoice, _ = add_invoice(state, "wall", 5_000)
    state.begin_payment("car", payment_hash=invoice.payment_hash, payee_pubkey=state.node("wall").pubkey,
                        payment_addr=invoice.payment_addr, payment_request="", value_msat=5_000,
                        fee_limit_msat=5_000, now_ns=T0)
    with pytest.raises(LndError) as in_flight:
        pay(state, "car", invoice)
    assert (in_flight.value.code, in_flight.value.message) == ("ALREADY_EXISTS", "payment is in transition")
    state.route_payment("car", invoice.payment_hash, forced_failure=False, reachable=everyone_reachable,
                        now_ns=T0, **FEES)
    with pytest.raises(LndError) as paid:
        pay(state, "car", invoice)
    assert (paid.value.code, paid.value.message) == ("ALREADY_EXISTS", "invoice is already paid")
    assert state.balance("wall").local_msat == 5_000


def test_a_failed_payment_may_be_retried():
    state = new_state()
    invoice, _ = add_invoice(state, "wall", 5_000)
    assert pay(state, "car", invoice, forced_failure=True).payment.failure_reason == FailureReason.NO_ROUTE
    retried = pay(state, "car", invoice)
    assert retried.payment.status == PaymentStatus.SUCCEEDED
    assert state.balance("wall").local_msat == 5_000


@pytest.mark.parametrize(
    ("setup", "reason"),
    [
        ({"forced_failure": True}, FailureReason.NO_ROUTE),
        ({"fee_limit_msat": 1000}, FailureReason.NO_ROUTE),
        ({"reachable": lambda name: name != "wall"}, FailureReason.NO_ROUTE),
        ({"value_msat": 4_999}, FailureReason.INCORRECT_PAYMENT_DETAILS),
        ({"value_msat": 10_001}, FailureReason.INCORRECT_PAYMENT_DETAILS),
        ({"value_msat": 999_999_000}, FailureReason.INSUFFICIENT_BALANCE),
    ],
)
def test_failed_payments_move_nothing(setup, reason):
    state = new_state()
    invoice, _ = add_invoice(state, "wall", 5_000)
    before = {name: state.balance(name) for name in state.node_names()}
    change = pay(state, "car", invoice, **setup)
    assert change.payment.status == PaymentStatus.FAILED
    assert change.payment.failure_reason == reason
    assert change.payment.fee_msat == 0
    assert {name: state.balance(name) for name in state.node_names()} == before
    assert state.fees_msat() == 0
    assert state.find_invoice("wall", invoice.payment_hash).state == InvoiceState.OPEN


def test_payee_without_inbound_liquidity_is_unreachable():
    state = new_state(nodes=(("car", 1000), ("wall", 0), ("shop", 0)))
    invoice, _ = add_invoice(state, "shop", 5_000)
    assert pay(state, "car", invoice).payment.failure_reason == FailureReason.NO_ROUTE


def test_expired_invoice_is_cancelled_and_cannot_be_paid():
    state = new_state()
    invoice, _ = add_invoice(state, "wall", 5_000, expiry=60)
    late = T0 + 61 * NS_PER_S
    change = pay(state, "car", invoice, now_ns=late)
    assert change.payment.failure_reason == FailureReason.INCORRECT_PAYMENT_DETAILS
    assert change.invoice.state == InvoiceState.CANCELED
    assert state.balance("wall").local_msat == 0


def test_expiry_sweep_cancels_only_open_invoices_past_their_time():
    state = new_state()
    short, _ = add_invoice(state, "wall", 5_000, expiry=60)
    long, _ = add_invoice(state, "wall", 5_000, expiry=3600)
    paid, _ = add_invoice(state, "wall", 5_000, expiry=60)
    pay(state, "car", paid)
    expired = state.expire_invoices(T0 + 61 * NS_PER_S)
    assert [invoice.payment_hash for invoice in expired] == [short.payment_hash]
    assert state.find_invoice("wall", long.payment_hash).state == InvoiceState.OPEN
    assert state.find_invoice("wall", paid.payment_hash).state == InvoiceState.SETTLED


def test_hold_invoice_locks_then_settles():
    state = new_state()
    invoice, preimage = add_invoice(state, "wall", 40_000, hold=True)
    locked = pay(state, "car", invoice)
    assert locked.payment.status == PaymentStatus.IN_FLIGHT
    assert locked.invoice.state == InvoiceState.ACCEPTED
    assert state.balance("car").unsettled_local_msat == 41_001
    assert state.balance("wall").unsettled_remote_msat == 40_000
    assert state.balance("wall").local_msat == 0
    settled = state.settle_invoice("wall", preimage, T0)
    assert settled.payment.status == PaymentStatus.SUCCEEDED
    assert settled.payment.preimage == preimage
    assert settled.invoice.state == InvoiceState.SETTLED
    assert state.balance("car").unsettled_local_msat == 0
    assert state.balance("car").local_msat == 1_000_000_000 - 41_001
    assert state.balance("wall").local_msat == 40_000
    assert state.fees_msat() == 1001
    assert state.settle_invoice("wall", preimage, T0).payment is None  # settling twice is fine


def test_cancelling_an_accepted_hold_invoice_returns_the_locked_msat():
    state = new_state()
    invoice, _ = add_invoice(state, "wall", 40_000, hold=True)
    pay(state, "car", invoice)
    cancelled = state.cancel_invoice("wall", invoice.payment_hash, T0)
    assert cancelled.payment.status == PaymentStatus.FAILED
    assert cancelled.payment.failure_reason == FailureReason.INCORRECT_PAYMENT_DETAILS
    assert cancelled.invoice.state == InvoiceState.CANCELED
    assert state.balance("car").local_msat == 1_000_000_000
    assert state.balance("car").unsettled_local_msat == 0
    assert state.balance("wall").remote_msat == 1_000_000_000
    assert state.fees_msat() == 0
    assert state.cancel_invoice("wall", invoice.payment_hash, T0).invoice is None  # cancelling twice is fine


def test_settle_and_cancel_refusals_use_lnd_words():
    state = new_state()
    open_hold, open_preimage = add_invoice(state, "wall", 1_000, hold=True)
    with pytest.raises(LndError, match="^invoice still open$"):
        state.settle_invoice("wall", open_preimage, T0)
    state.cancel_invoice("wall", open_hold.payment_hash, T0)
    with pytest.raises(LndError, match="^invoice already canceled$"):
        state.settle_invoice("wall", open_preimage, T0)
    paid, _ = add_invoice(state, "wall", 1_000)
    pay(state, "car", paid)
    with pytest.raises(LndError, match="^invoice already settled$"):
        state.cancel_invoice("wall", paid.payment_hash, T0)
    with pytest.raises(LndError, match="^unable to locate invoice$"):
        state.cancel_invoice("wall", bytes(32), T0)
    with pytest.raises(LndError, match="^invoice with payment hash already exists$"):
        state.add_invoice("wall", payment_hash=paid.payment_hash, preimage=None, payment_addr=bytes(32), memo="",
                          description_hash=None, value_msat=1, creation_date=0, expiry=60, cltv_expiry=80,
                          payment_request="x")


def test_books_survive_reopening(tmp_path):
    path = tmp_path / "simnet.sqlite3"
    state = new_state(path)
    invoice, _ = add_invoice(state, "wall", 7_000)
    pay(state, "car", invoice)
    hold, preimage = add_invoice(state, "wall", 3_000, hold=True)
    pay(state, "car", hold)
    keys = {name: state.root_keys(name) for name in state.node_names()}
    pubkeys = {name: state.node(name).pubkey for name in state.node_names()}
    balances = {name: state.balance(name) for name in state.node_names()}
    state.close()

    reopened = NetworkState(path)
    assert reopened.ensure_nodes([("car", 5), ("wall", 5), ("shop", 0)], T0) == ["shop"]
    assert {name: reopened.root_keys(name) for name in ("car", "wall")} == keys
    assert {name: reopened.node(name).pubkey for name in ("car", "wall")} == pubkeys
    assert {name: reopened.balance(name) for name in ("car", "wall")} == balances
    assert reopened.find_payment("car", invoice.payment_hash).status == PaymentStatus.SUCCEEDED
    settled = reopened.settle_invoice("wall", preimage, T0)
    assert settled.payment.status == PaymentStatus.SUCCEEDED
    assert reopened.balance("wall").local_msat == 10_000


def test_payments_interrupted_before_routing_are_found_again(tmp_path):
    state = new_state(tmp_path / "simnet.sqlite3")
    invoice, _ = add_invoice(state, "wall", 7_000)
    state.begin_payment("car", payment_hash=invoice.payment_hash, payee_pubkey=state.node("wall").pubkey,
                        payment_addr=invoice.payment_addr, payment_request="", value_msat=7_000,
                        fee_limit_msat=5_000, now_ns=T0)
    hold, _ = add_invoice(state, "wall", 3_000, hold=True)
    pay(state, "car", hold)
    assert [p.payment_hash for p in state.unrouted_payments()] == [invoice.payment_hash]


def test_new_root_key_ids_are_created_once():
    state = new_state()
    first = state.root_key("car", "4200")
    assert state.root_key("car", "4200") == first
    assert set(state.root_keys("car")) == {"0", "4200"}
    assert state.root_keys("wall").keys() == {"0"}


operations = st.lists(
    st.one_of(
        st.tuples(st.just("invoice"), st.sampled_from(["a", "b", "c"]), st.integers(1, 3_000_000), st.booleans()),
        st.tuples(st.just("pay"), st.sampled_from(["a", "b", "c"]), st.integers(0, 30), st.integers(0, 5_000)),
        st.tuples(st.just("settle"), st.integers(0, 30)),
        st.tuples(st.just("cancel"), st.integers(0, 30)),
    ),
    max_size=40,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(operations)
def test_no_msat_is_ever_created_lost_or_counted_twice(ops):
    state = new_state(nodes=(("a", 5_000), ("b", 3_000), ("c", 0)))
    start_money, start_capacity = money(state), capacities(state)
    start_local = {name: state.balance(name).local_msat for name in state.node_names()}
    invoices, attempts = [], set()
    for op in ops:
        if op[0] == "invoice":
            invoices.append(add_invoice(state, op[1], op[2], hold=op[3]))
        elif invoices and op[0] == "pay":
            invoice, _ = invoices[op[2] % len(invoices)]
            attempts.add((op[1], invoice.payment_hash))
            try:
                pay(state, op[1], invoice, fee_limit_msat=op[3])
            except LndError as refused:
                assert refused.code == "ALREADY_EXISTS"
        elif invoices and op[0] in ("settle", "cancel"):
            invoice, preimage = invoices[op[1] % len(invoices)]
            try:
                if op[0] == "settle":
                    state.settle_invoice(invoice.node, preimage, T0)
                else:
                    state.cancel_invoice(invoice.node, invoice.payment_hash, T0)
            except LndError as refused:
                assert refused.message in ("invoice still open", "invoice already canceled", "invoice already settled")
        assert money(state) == start_money
        assert capacities(state) == start_capacity

    # Every node's balance is exactly what its own invoices and payments say it should be.
    expected_local, expected_locked, expected_fees = dict(start_local), dict.fromkeys(start_local, 0), 0
    for invoice, _ in invoices:
        current = state.find_invoice(invoice.node, invoice.payment_hash)
        if current.state == InvoiceState.SETTLED:
            expected_local[invoice.node] += current.amt_paid_msat
    for payer, payment_hash in attempts:
        payment = state.find_payment(payer, payment_hash)
        sent = payment.value_msat + payment.fee_msat
        if payment.status == PaymentStatus.SUCCEEDED:
            expected_local[payer] -= sent
            expected_fees += payment.fee_msat
        elif payment.htlc_locked:
            expected_local[payer] -= sent
            expected_locked[payer] += sent
    assert {name: state.balance(name).local_msat for name in start_local} == expected_local
    assert {name: state.balance(name).unsettled_local_msat for name in start_local} == expected_locked
    assert state.fees_msat() == expected_fees
