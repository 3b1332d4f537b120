"""Paying through LND with the journal first: every way the answer can go missing pays at most once.

``FakeLnd`` stands in for ``LndClient``: it keeps payments by hash the way LND does (a hash
that is in flight or paid cannot be sent again) and plays scripted stream events.
"""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass

import pytest

from car.journal import Journal
from car.payer import NEVER_INITIATED, Payer
from car.policy import BuyerPolicy, BuyerSettings, Pay, Terms
from distributedcharge.lightning import bolt11, errors

NOW = 1_750_000_000
KEY = bytes([5]) * 32


@dataclass
class Status:
    payment_hash: str
    status: str
    preimage: str = ""
    value_msat: int = 0
    fee_msat: int = 0
    failure_reason: str = ""


def preimage_for(n: int) -> bytes:
    return n.to_bytes(32, "big")


def invoice(n: int, amount_msat: int = 2_500) -> str:
    return bolt11.encode(network="mainnet", amount_msat=amount_msat,
                         payment_hash=hashlib.sha256(preimage_for(n)).digest(), private_key=KEY,
                         payment_secret=bytes(32), description="energy", timestamp=NOW)


def approve(n: int, policy: BuyerPolicy | None = None) -> Pay:
    if policy is None:
        policy = BuyerPolicy(BuyerSettings())
        policy.consider_offer(Terms(100_000, 2_500), NOW)
    decision = policy.consider_invoice(invoice(n), None, 0, 320, 10**9, NOW, 0, 0)
    assert isinstance(decision, Pay), decision
    return decision


class FakeLnd:
    """Scripts are lists of Status templates ("IN_FLIGHT", "SUCCEEDED", "FAILED") or exceptions."""

    def __init__(self, journal: Journal | None = None, *, fee_msat: int = 9):
        self.journal = journal
        self.fee_msat = fee_msat
        self.sends: list[dict] = []
        self.tracks: list[bytes] = []
        self.send_scripts: list[list] = []
        self.track_scripts: list[list] = []
        self.lnd_payments: dict[bytes, str] = {}
        self.rows_seen_at_send: list[str | None] = []

    def _status(self, payment_hash: bytes, state: str) -> Status:
        if state == "SUCCEEDED":
            self.lnd_payments[payment_hash] = "SUCCEEDED"
            n = next(i for i in range(1000) if hashlib.sha256(preimage_for(i)).digest() == payment_hash)
            return Status(payment_hash.hex(), state, preimage_for(n).hex(), 2_500, self.fee_msat)
        if state == "FAILED":
            self.lnd_payments[payment_hash] = "FAILED"
            return Status(payment_hash.hex(), state, failure_reason="FAILURE_REASON_NO_ROUTE")
        self.lnd_payments[payment_hash] = "IN_FLIGHT"
        return Status(payment_hash.hex(), state)

    async def _play(self, payment_hash: bytes, script: list):
        for step in script:
            await asyncio.sleep(0)
            if isinstance(step, BaseException):
                raise step
            yield self._status(payment_hash, step)

    def send_payment(self, payment_request, *, timeout_s, fee_limit_msat, allow_self_payment=False):
        payment_hash = bolt11.decode(payment_request).payment_hash
        self.sends.append({"hash": payment_hash, "timeout_s": timeout_s, "fee_limit_msat": fee_limit_msat,
                           "allow_self_payment": allow_self_payment})
        if self.journal is not None:
            row = self.journal.payment(payment_hash)
            self.rows_seen_at_send.append(row.state if row else None)
        if self.lnd_payments.get(payment_hash) in ("IN_FLIGHT", "SUCCEEDED"):
            return self._play(payment_hash, [errors.AlreadyPaid("invoice is already paid")])
        script = self.send_scripts.pop(0) if self.send_scripts else ["IN_FLIGHT", "SUCCEEDED"]
        return self._play(payment_hash, script)

    def track_payment(self, payment_hash):
        self.tracks.append(payment_hash)
        if self.track_scripts:
            return self._play(payment_hash, self.track_scripts.pop(0))
        known = self.lnd_payments.get(payment_hash)
        if known is None:
            return self._play(payment_hash, [errors.NotFound("payment isn't initiated")])
        return self._play(payment_hash, [known])


@pytest.fixture
def journal(tmp_path):
    with Journal(tmp_path / "car.sqlite3") as opened:
        yield opened


def run(coroutine):
    return asyncio.run(coroutine)


def test_the_intent_is_committed_before_lnd_is_asked_and_the_result_after(journal):
    lnd = FakeLnd(journal)
    decision = approve(1)
    outcome = run(Payer(journal, lnd, clock=lambda: NOW).pay(decision, session_id=None))
    assert lnd.rows_seen_at_send == ["intent"]
    assert lnd.sends[0]["fee_limit_msat"] == 2_000 and lnd.sends[0]["timeout_s"] == 25
    assert lnd.sends[0]["allow_self_payment"] is True
    assert (outcome.state, outcome.amount_msat, outcome.fee_msat) == ("succeeded", 2_500, 9)
    assert outcome.preimage == preimage_for(1)
    row = journal.payment(decision.payment_hash)
    assert (row.state, row.fee_msat, row.preimage) == ("succeeded", 9, preimage_for(1))
    assert journal.spent_today_msat(NOW) == 2_509


def test_a_failed_payment_is_recorded_with_lnds_reason_and_costs_nothing(journal):
    lnd = FakeLnd(journal)
    lnd.send_scripts.append(["IN_FLIGHT", "FAILED"])
    outcome = run(Payer(journal, lnd).pay(approve(1)))
    assert (outcome.state, outcome.reason) == ("failed", "FAILURE_REASON_NO_ROUTE")
    assert journal.payment(approve(1).payment_hash).state == "failed"
    assert journal.spent_today_msat(NOW) == 0


def test_a_payment_failed_error_is_a_final_failure(journal):
    lnd = FakeLnd(journal)
    lnd.send_scripts.append(["IN_FLIGHT", errors.PaymentFailed("FAILURE_REASON_TIMEOUT")])
    outcome = run(Payer(journal, lnd).pay(approve(1)))
    assert (outcome.state, outcome.reason) == ("failed", "FAILURE_REASON_TIMEOUT")


def test_lnd_unreachable_leaves_the_intent_and_reconciliation_finds_the_payment(journal):
    lnd = FakeLnd(journal)
    decision = approve(1)
    lnd.send_scripts.append([errors.Unreachable("deadline exceeded")])
    payer = Payer(journal, lnd, clock=lambda: NOW)
    outcome = run(payer.pay(decision))
    assert outcome.state == "unresolved"
    assert [p.state for p in journal.unresolved_payments()] == ["intent"]
    assert journal.spent_today_msat(NOW) == 2_500 + 2_000  # held against the caps meanwhile
    lnd.lnd_payments[decision.payment_hash] = "SUCCEEDED"  # it went through; only the answer was lost
    [settled] = run(payer.reconcile())
    assert (settled.state, settled.fee_msat) == ("succeeded", 9)
    assert len(lnd.sends) == 1
    assert journal.unresolved_payments() == []


def test_an_unresolved_hash_is_never_sent_again(journal):
    lnd = FakeLnd(journal)
    lnd.send_scripts.append(["IN_FLIGHT", errors.Unreachable("connection reset")])
    payer = Payer(journal, lnd)
    decision = approve(1)
    assert run(payer.pay(decision)).state == "unresolved"
    assert journal.payment(decision.payment_hash).state == "in_flight"
    again = run(payer.pay(decision))
    assert again.state == "refused" and "in_flight" in again.reason
    assert len(lnd.sends) == 1
    lnd.track_scripts.append(["IN_FLIGHT", "FAILED"])
    [final] = run(payer.reconcile())
    assert final.state == "failed"


def test_already_paid_is_tracked_not_counted_twice(journal):
    lnd = FakeLnd(journal)
    decision = approve(1)
    lnd.lnd_payments[decision.payment_hash] = "SUCCEEDED"  # paid by an earlier run whose journal was lost
    outcome = run(Payer(journal, lnd).pay(decision))
    assert outcome.state == "succeeded"
    assert lnd.tracks == [decision.payment_hash]
    assert journal.spent_today_msat(NOW) == 2_509


def test_not_found_means_never_initiated_so_the_invoice_may_be_paid_once_more(journal):
    lnd = FakeLnd(journal)
    lnd.send_scripts.append([errors.Unreachable("node restarting")])
    payer = Payer(journal, lnd)
    decision = approve(1)
    run(payer.pay(decision))
    [resolved] = run(payer.reconcile())
    assert (resolved.state, resolved.reason) == ("failed", NEVER_INITIATED)
    retried = run(payer.pay(decision))
    assert retried.state == "succeeded"
    assert journal.payment(decision.payment_hash).attempts == 2
    assert len(lnd.sends) == 2 and journal.spent_today_msat(NOW + 1) == 2_509


@pytest.mark.parametrize("error", [errors.PermissionDenied("permission denied"),
                                   errors.InvalidRequest("invoice expired")])
def test_a_request_lnd_refuses_before_starting_is_a_failure(journal, error):
    lnd = FakeLnd(journal)
    lnd.send_scripts.append([error])
    outcome = run(Payer(journal, lnd).pay(approve(1)))
    assert outcome.state == "failed" and str(error) in outcome.reason
    assert journal.unresolved_payments() == []


def test_the_same_refusal_after_the_payment_started_stays_unresolved(journal):
    lnd = FakeLnd(journal)
    lnd.send_scripts.append(["IN_FLIGHT", errors.InvalidRequest("stream broke oddly")])
    assert run(Payer(journal, lnd).pay(approve(1))).state == "unresolved"


def test_a_stream_that_ends_without_a_final_state_stays_unresolved(journal):
    lnd = FakeLnd(journal)
    lnd.send_scripts.append(["IN_FLIGHT"])
    assert run(Payer(journal, lnd).pay(approve(1))).state == "unresolved"
    assert journal.payment(approve(1).payment_hash).state == "in_flight"


def test_a_success_without_a_matching_preimage_is_still_recorded_as_paid(journal):
    lnd = FakeLnd(journal)
    decision = approve(1)

    async def wrong_preimage(*args, **kwargs):
        yield Status(decision.payment_hash.hex(), "SUCCEEDED", "00" * 32, 2_500, 4)

    lnd.send_payment = wrong_preimage
    outcome = run(Payer(journal, lnd).pay(decision))
    assert (outcome.state, outcome.preimage, outcome.fee_msat) == ("succeeded", None, 4)
    assert journal.spent_today_msat(NOW) == 2_504


def test_cancelling_a_payment_midway_leaves_the_intent_for_reconciliation(journal):
    lnd = FakeLnd(journal)
    lnd.send_scripts.append(["IN_FLIGHT", asyncio.CancelledError()])
    with pytest.raises(asyncio.CancelledError):
        run(Payer(journal, lnd).pay(approve(1)))
    assert [p.state for p in journal.unresolved_payments()] == ["in_flight"]


def test_nothing_is_sent_when_the_journal_cannot_record_the_intent(journal):
    lnd = FakeLnd()
    payer = Payer(journal, lnd)
    journal.conn.close()
    outcome = run(payer.pay(approve(1)))
    assert outcome.state == "refused" and "journal" in outcome.reason
    assert lnd.sends == []


def test_reconciliation_retries_with_backoff_until_lnd_answers(journal):
    lnd = FakeLnd(journal)
    lnd.send_scripts.append([errors.Unreachable("down")])
    payer = Payer(journal, lnd)
    decision = approve(1)
    run(payer.pay(decision))
    lnd.lnd_payments[decision.payment_hash] = "SUCCEEDED"
    lnd.track_scripts += [[errors.Unreachable("down")]] * 3
    delays: list[float] = []

    async def no_wait(delay: float) -> None:
        delays.append(delay)

    [final] = run(payer.reconcile_until_resolved(sleep=no_wait, first_delay_s=1, max_delay_s=3))
    assert final.state == "succeeded"
    assert delays == [1, 2, 3]
    assert len(lnd.sends) == 1


def test_after_a_crash_reconciliation_at_start_never_pays_twice(tmp_path):
    path = tmp_path / "car.sqlite3"
    lnd = FakeLnd()
    decision = approve(1)
    crashed = Journal(path)
    crashed.record_intent(decision.payment_hash, decision.bolt11, 2_500, 2_000, NOW)
    lnd.lnd_payments[decision.payment_hash] = "SUCCEEDED"  # LND paid; the daemon died before hearing it
    crashed.conn.close()

    with Journal(path) as journal:
        payer = Payer(journal, lnd)
        [outcome] = run(payer.reconcile())
        assert outcome.state == "succeeded"
        policy = BuyerPolicy(BuyerSettings(), journal.known_hashes)
        policy.consider_offer(Terms(100_000, 2_500), NOW)
        again = policy.consider_invoice(decision.bolt11, None, 0, 320, 10**9, NOW, 0, 0)
        assert again.code == "duplicate"
        assert run(payer.pay(decision)).state == "refused"
        assert lnd.sends == []
        assert journal.spent_today_msat(NOW) == 2_509
