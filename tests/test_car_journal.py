"""The car's payment journal: intent before payment, one row per hash, totals, ledger output."""

from __future__ import annotations

import csv
import hashlib
import io
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap

import pytest

from car.journal import DAY_S, JOURNAL_FILE, DuplicatePayment, Journal
from distributedcharge.units import NJ_PER_WH

NOW = 1_750_000_000.0


def h(n: int) -> bytes:
    return hashlib.sha256(n.to_bytes(4, "big")).digest()


@pytest.fixture
def journal(tmp_path):
    with Journal(tmp_path / JOURNAL_FILE) as opened:
        yield opened


def test_the_journal_file_is_in_wal_mode(journal):
    assert journal.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_a_kill_right_after_the_intent_commit_leaves_it_unresolved_for_the_next_start(tmp_path):
    path = tmp_path / "state" / JOURNAL_FILE
    script = textwrap.dedent(f"""
        import hashlib, os, signal
        from car.journal import Journal
        journal = Journal({str(path)!r})
        session = journal.start_session({NOW})
        journal.record_intent(hashlib.sha256(b"invoice").digest(), "lnbc25n1...", 2500, 2000, {NOW}, session)
        os.kill(os.getpid(), signal.SIGKILL)  # before SendPaymentV2 returns anything
    """)
    child = subprocess.run([sys.executable, "-c", script], cwd=os.getcwd(), capture_output=True, timeout=60)
    assert child.returncode == -signal.SIGKILL, child.stderr.decode()
    with Journal.in_dir(tmp_path / "state") as reopened:
        [entry] = reopened.unresolved_payments()
        assert entry.payment_hash == hashlib.sha256(b"invoice").digest()
        assert (entry.state, entry.amount_msat, entry.fee_limit_msat) == ("intent", 2500, 2000)
        with pytest.raises(DuplicatePayment):
            reopened.record_intent(entry.payment_hash, entry.bolt11, 2500, 2000, NOW + 1)
        assert reopened.close_abandoned_sessions(NOW + 5) == [1]


def test_a_hash_never_gets_a_second_intent_while_unresolved_or_paid(journal):
    journal.record_intent(h(1), "inv", 2500, 2000, NOW)
    with pytest.raises(DuplicatePayment, match="already intent"):
        journal.record_intent(h(1), "inv", 2500, 2000, NOW)
    journal.mark_in_flight(h(1), NOW)
    with pytest.raises(DuplicatePayment, match="already in_flight"):
        journal.record_intent(h(1), "inv", 2500, 2000, NOW)
    journal.mark_succeeded(h(1), 12, b"\x01" * 32, NOW)
    with pytest.raises(DuplicatePayment, match="already succeeded"):
        journal.record_intent(h(1), "inv", 2500, 2000, NOW)
    assert journal.payment(h(1)).attempts == 1


def test_the_database_itself_refuses_a_second_row_for_a_hash(journal):
    journal.record_intent(h(1), "inv", 2500, 2000, NOW)
    with pytest.raises(sqlite3.IntegrityError):
        journal.conn.execute(
            "INSERT INTO payments (payment_hash, bolt11, amount_msat, fee_limit_msat, state, created_at,"
            " attempted_at, updated_at) VALUES (?, 'x', 1, 0, 'intent', 0, 0, 0)", (h(1).hex(),))


def test_only_a_definitely_failed_payment_may_be_attempted_again(journal):
    journal.record_intent(h(1), "inv", 2500, 2000, NOW)
    assert journal.mark_failed(h(1), "FAILURE_REASON_NO_ROUTE", NOW)
    again = journal.record_intent(h(1), "inv", 2500, 2000, NOW + 10)
    assert (again.state, again.attempts, again.failure_reason) == ("intent", 2, None)


def test_a_success_is_never_overwritten_by_a_failure_but_lnds_success_overrides_a_failure(journal):
    journal.record_intent(h(1), "inv", 2500, 2000, NOW)
    assert journal.mark_succeeded(h(1), 5, b"\x02" * 32, NOW)
    assert not journal.mark_failed(h(1), "late failure", NOW)
    assert journal.payment(h(1)).state == "succeeded"
    journal.record_intent(h(2), "inv", 2500, 2000, NOW)
    journal.mark_failed(h(2), "never initiated", NOW)
    assert journal.mark_succeeded(h(2), 7, None, NOW)
    assert journal.payment(h(2)).fee_msat == 7


def test_spent_totals_count_fees_and_the_fee_limit_of_unresolved_payments(journal):
    one = journal.start_session(NOW)
    two = journal.start_session(NOW + 100)
    journal.record_intent(h(1), "a", 2500, 2000, NOW, one)
    journal.mark_succeeded(h(1), 30, None, NOW)
    journal.record_intent(h(2), "b", 2500, 2000, NOW, one)
    journal.mark_failed(h(2), "no route", NOW)
    journal.record_intent(h(3), "c", 5000, 2000, NOW + 100, two)
    journal.mark_in_flight(h(3), NOW + 100)
    journal.record_intent(h(4), "d", 1000, 2000, NOW + 100, two)
    assert journal.spent_session_msat(one) == 2530
    assert journal.spent_session_msat(two) == 7000 + 3000
    assert journal.spent_today_msat(NOW + 100) == 2530 + 10_000
    assert journal.spent_today_msat(NOW + DAY_S) == 10_000  # the first session fell out of the window
    assert journal.spent_today_msat(NOW + 100 + DAY_S) == 0


def test_known_hashes_answers_for_every_payment_ever_attempted(journal):
    journal.record_intent(h(1), "a", 2500, 2000, NOW)
    journal.mark_failed(h(1), "x", NOW)
    assert h(1) in journal.known_hashes
    assert h(2) not in journal.known_hashes
    assert "not bytes" not in journal.known_hashes


def ledger_with_a_session(journal: Journal) -> int:
    session = journal.start_session(NOW)
    journal.set_protocol_version(session, 2)
    journal.record_offer(session, NOW, 100_000, 2_500, is_change=False, accepted=True)
    journal.record_offer(session, NOW + 60, 900_000_000, 2_500, is_change=True, accepted=False,
                         reason="rate too high")
    journal.record_invoice(session, NOW + 1, "lnbc-a", "pay", payment_hash=h(1), amount_msat=2500,
                           payee=b"\x02" * 33, car_energy_nj=0, wall_energy_nj=0)
    journal.record_intent(h(1), "lnbc-a", 2500, 2000, NOW + 1, session)
    journal.mark_failed(h(1), "FAILURE_REASON_TIMEOUT", NOW + 2)
    journal.record_invoice(session, NOW + 3, "lnbc-a", "pay", payment_hash=h(1), amount_msat=2500,
                           reason="attempt 2")
    journal.record_intent(h(1), "lnbc-a", 2500, 2000, NOW + 3, session)
    journal.mark_succeeded(h(1), 11, b"\x03" * 32, NOW + 4)
    journal.record_invoice(session, NOW + 5, "garbage", "refused", code="undecodable",
                           reason="not an invoice")
    journal.record_invoice(session, NOW + 6, "lnbc-b", "pay", payment_hash=h(2), amount_msat=2500)
    journal.record_intent(h(2), "lnbc-b", 2500, 2000, NOW + 6, session)
    journal.update_energy(session, 30 * NJ_PER_WH, 29 * NJ_PER_WH)
    journal.set_payee(session, b"\x02" * 33)
    journal.end_session(session, NOW + 3600)
    return session


def test_export_rows_sum_to_exactly_what_was_spent(journal):
    ledger_with_a_session(journal)
    header, rows = journal.export_rows()
    assert len(rows) == 4
    table = [dict(zip(header, row)) for row in rows]
    assert [r["verdict"] for r in table] == ["pay", "pay", "refused", "pay"]
    assert sum(r["paid_msat"] or 0 for r in table) == 2500
    assert sum(r["fee_msat"] or 0 for r in table) == 11
    assert table[1]["attempts"] == 2 and table[3]["payment_state"] == "intent"
    assert table[2]["code"] == "undecodable" and table[2]["payment_state"] is None
    assert table[0]["session_started_utc"] == "2025-06-15T15:06:40Z"
    assert table[0]["session_wall_energy_nj"] == 29 * NJ_PER_WH
    out = io.StringIO()
    csv.writer(out).writerows([header, *rows])
    assert out.getvalue().splitlines()[0].startswith("session_id,session_started_utc,")


def test_show_lines_summarise_each_session_and_flag_unresolved_payments(journal):
    ledger_with_a_session(journal)
    lines = journal.show_lines()
    assert lines[0] == (
        "session 1: 2025-06-15T15:06:40Z - 2025-06-15T16:06:40Z (unplugged) | v2 | 100 sat/kWh"
        " | car 0.030 kWh (wall 0.029 kWh) | paid 2.500 sat in 1 payments, fees 0.011 sat | refused 1"
    )
    assert lines[1] == "total: paid 2.500 sat, fees 0.011 sat"
    assert lines[2] == f"unresolved: {h(2).hex()} 2.500 sat intent since 2025-06-15T15:06:46Z"


def test_an_unknown_verdict_is_a_programming_error_not_a_row(journal):
    session = journal.start_session(NOW)
    with pytest.raises(ValueError):
        journal.record_invoice(session, NOW, "x", "maybe")
    assert journal.export_rows()[1] == []
