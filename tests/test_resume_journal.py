"""What the car journal hands a restarted daemon: the open session, if recent, with its bindings."""

from __future__ import annotations

from car.journal import AcceptedOffer, Journal, WaitingInvoice

NOW = 1_700_000_000.0


def h(n: int) -> bytes:
    return bytes([n]) * 32


def test_only_a_recent_open_session_is_offered_for_resuming(tmp_path) -> None:
    with Journal(tmp_path / "j.sqlite3") as journal:
        old = journal.start_session(NOW)
        journal.update_energy(old, 1_000, now=NOW + 30)
        assert journal.open_session(NOW + 80, within_s=60).id == old
        assert journal.open_session(NOW + 91, within_s=60) is None
        journal.end_session(old, NOW + 40)
        assert journal.open_session(NOW + 41, within_s=60) is None
        assert journal.close_abandoned_sessions(NOW + 50, keep=journal.start_session(NOW + 45)) == []


def test_the_open_session_carries_bindings_payments_and_the_invoice_still_waiting(tmp_path) -> None:
    with Journal(tmp_path / "j.sqlite3") as journal:
        sid = journal.start_session(NOW)
        journal.set_payee(sid, b"\x02" * 33)
        journal.record_offer(sid, NOW, 100_000, 2_500, is_change=False, accepted=True,
                             protocol_version=2, wall_session_id=0xBEEF, offer_number=0)
        journal.record_invoice(sid, NOW + 1, "lnbc-a", "pay", payment_hash=h(1), amount_msat=2_500,
                               car_energy_nj=5, terms=(100_000, 2_500), wall_session_id=0xBEEF)
        journal.record_intent(h(1), "lnbc-a", 2_500, 2_000, NOW + 1, session_id=sid)
        journal.record_invoice(sid, NOW + 2, "lnbc-b", "not_yet_due", payment_hash=h(2), amount_msat=2_500,
                               car_energy_nj=9, terms=(100_000, 2_500), wall_session_id=0xBEEF, wall_energy_nj=7)
        journal.record_invoice(sid, NOW + 3, "lnbc-c", "not_yet_due", payment_hash=h(3), car_energy_nj=8)
        journal.record_invoice(sid, NOW + 4, "lnbc-c", "refused", payment_hash=h(3), code="expired")
        journal.update_energy(sid, 6, now=NOW + 5)

        record = journal.open_session(NOW + 10, within_s=60)
        assert record is not None and record.id == sid and record.payee == b"\x02" * 33
        assert record.accepted_offers == [AcceptedOffer(100_000, 2_500, 2, 0xBEEF, 0)]
        [(payment, terms)] = record.payments
        assert (payment.payment_hash, payment.state, terms) == (h(1), "intent", (100_000, 2_500))
        assert record.waiting == [WaitingInvoice("lnbc-b", (100_000, 2_500), 0xBEEF, 7)]
        assert record.car_energy_nj == 9  # the latest reading any row holds
