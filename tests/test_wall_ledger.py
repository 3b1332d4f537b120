import csv
import hashlib
import io
import signal
import subprocess
import sys
import textwrap
from datetime import datetime, timezone
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_wall_harness import Wall

from distributedcharge.units import NJ_PER_WH
from wallunit.actions import CreateHoldInvoice
from wallunit.ledger import Ledger, LedgerError, open_ledger
from wallunit.manual import ManualSettings
from wallunit.policy import SellerSettings

NOW = datetime(2024, 6, 3, 12, tzinfo=timezone.utc)


def h(tag: str) -> bytes:
    return hashlib.sha256(tag.encode()).digest()


def add_invoice(ledger: Ledger, sid: int, n: int, amount: int = 3000) -> bytes:
    ref = f"{sid}.{n}"
    ledger.invoice_requested(NOW, ref, "energy", amount, Fraction(30 * NJ_PER_WH), 100_000, "memo", 600)
    ledger.invoice_created(ref, NOW, h(ref), f"lnbcrt{ref}")
    return h(ref)


def test_settlement_seen_twice_counts_once():
    ledger = Ledger(":memory:")
    sid = ledger.start_session(NOW)
    r_hash = add_invoice(ledger, sid, 1)
    assert ledger.record_settled(r_hash, 3000, NOW) is True
    assert ledger.record_settled(r_hash, 3000, NOW) is False
    assert ledger.paid_total_msat() == 3000 == ledger.paid_total_msat(sid)
    assert ledger.open_invoices() == []


def test_settlement_of_an_invoice_that_is_not_ours_is_not_counted():
    ledger = Ledger(":memory:")
    assert ledger.record_settled(h("someone else's"), 5000) is False
    assert ledger.paid_total_msat() == 0


def test_settlement_wins_over_a_cancel_we_asked_for():
    ledger = Ledger(":memory:")
    sid = ledger.start_session(NOW)
    r_hash = add_invoice(ledger, sid, 1)
    ledger.cancel_requested(r_hash, NOW, "expired")
    assert ledger.record_settled(r_hash, 3000) is True
    assert ledger.record_canceled(r_hash) is False
    assert ledger.paid_total_msat() == 3000


def test_bad_hash_or_amount_is_refused_clearly():
    ledger = Ledger(":memory:")
    with pytest.raises(LedgerError):
        ledger.record_settled(b"short", 1)
    with pytest.raises(LedgerError):
        ledger.record_settled(h("x"), -1)


def test_hold_invoice_needs_its_preimage_first():
    ledger = Ledger(":memory:")
    sid = ledger.start_session(NOW)
    with pytest.raises(LedgerError):
        ledger.invoice_requested(NOW, f"{sid}.deposit1", "deposit", 1, Fraction(1), 1, "m", 600)


WRITER = textwrap.dedent("""
    import hashlib, os, signal, sys
    from datetime import datetime, timezone
    from fractions import Fraction
    from wallunit.ledger import Ledger
    now = datetime(2024, 6, 3, 12, tzinfo=timezone.utc)
    ledger = Ledger(sys.argv[1])
    sid = ledger.start_session(now)
    for n in (1, 2, 3):
        ref = f"{sid}.{n}"
        ledger.invoice_requested(now, ref, "energy", 3000, Fraction(108 * 10**9), 100000, "memo", 600)
        ledger.invoice_created(ref, now, hashlib.sha256(ref.encode()).digest(), "lnbcrt" + ref)
    ledger.invoice_requested(now, f"{sid}.4", "energy", 3000, Fraction(108 * 10**9), 100000, "memo", 600)
    ledger.record_settled(hashlib.sha256(f"{sid}.1".encode()).digest(), 3000, now)
    ledger.record_energy(sid, 70 * 3600 * 10**9)
    os.kill(os.getpid(), signal.SIGKILL)
""")


def test_reopened_after_kill_9_lists_every_open_invoice_and_counts_a_settlement_made_meanwhile(tmp_path):
    path = tmp_path / "ledger.sqlite3"
    result = subprocess.run([sys.executable, "-c", WRITER, str(path)], capture_output=True, text=True)
    assert result.returncode == -signal.SIGKILL, result.stderr
    ledger = Ledger(path)
    open_now = ledger.open_invoices()
    assert [(i.ref, i.state) for i in open_now] == [("1.2", "open"), ("1.3", "open"), ("1.4", "requested")]
    assert open_now[0].r_hash == h("1.2") and open_now[2].r_hash is None
    assert ledger.paid_total_msat() == 3000
    # Reconciling with the node: 1.2 settled while we were down, 1.3 expired, 1.4 never made it.
    assert ledger.reconcile(h("1.2"), "SETTLED", 3000, NOW)
    assert not ledger.reconcile(h("1.2"), "SETTLED", 3000, NOW)
    assert ledger.reconcile(h("1.3"), "CANCELED", 0, NOW)
    ledger.invoice_failed("1.4", NOW, "not on the node after restart")
    assert ledger.open_invoices() == []
    assert ledger.paid_total_msat() == 6000
    assert ledger.close_interrupted(NOW) == [1]
    assert "session 1:" in ledger.show_lines()[0] and "daemon restarted" in ledger.show_lines()[0]
    assert "delivered 0.070 kWh, paid 6 sat" in ledger.show_lines()[0]


def test_export_and_show_tell_what_was_delivered_and_paid():
    wall = Wall()
    wall.plug_in()
    wall.accept()
    for _ in range(20):
        wall.deliver(2 * NJ_PER_WH)
        wall.pay_all()
    while not wall.unpaid():  # the car stops paying; the next invoice goes out and is left open
        wall.deliver(2 * NJ_PER_WH)
    wall.unplug()
    header, rows = wall.ledger.export_rows()
    table = list(csv.DictReader(io.StringIO(_csv(header, rows))))
    paid = [r for r in table if r["state"] == "settled"]
    # An instant payer runs up to 2.8 payments ahead: 40 Wh delivered, 4 x 30 Wh paid; the
    # fifth invoice goes out once credit (120 - delivered) drops below 1.8 x 30 Wh.
    assert sum(int(r["amt_paid_msat"]) for r in paid) == wall.ledger.paid_total_msat() == 12000
    assert {r["session_delivered_wh"] for r in table} == {"68.000000"}
    assert all(r["energy_wh"] == "30.000000" and r["rate_msat_per_kwh"] == "100000" for r in table)
    assert [r["state"] for r in table] == ["settled"] * 4 + ["canceled"]
    assert table[-1]["canceled_at"] and not table[-1]["amt_paid_msat"]
    show = wall.ledger.show_lines()
    assert show[0].startswith("session 1: ") and "autopay v1" in show[0]
    assert "delivered 0.068 kWh, paid 12 sat, invoices 5 (4 settled, 0 open)" in show[0]
    assert show[-1] == "total: 1 sessions, delivered 0.068 kWh, paid 12 sat"


def test_manual_session_keeps_the_preimages_needed_to_settle_after_a_restart(tmp_path):
    path = tmp_path / "ledger.sqlite3"
    wall = Wall(settings=SellerSettings(manual=ManualSettings()), ledger_path=path)
    wall.plug_in()
    wall.advance(30)
    deposit = wall.of(CreateHoldInvoice)[0]
    wall.hold(deposit.ref)
    wall.ledger.close()
    reopened = Ledger(path)
    [held] = reopened.open_invoices()
    assert (held.kind, held.state) == ("deposit", "accepted")
    assert hashlib.sha256(reopened.preimage(held.r_hash)).digest() == held.r_hash
    assert "manual" in reopened.show_lines()[0]


def _csv(header, rows) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(header)
    writer.writerows(rows)
    return out.getvalue()


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 9), st.integers(1, 10**7)), max_size=40))
def test_paid_total_is_the_sum_of_distinct_settlements(reports):
    ledger = Ledger(":memory:")
    sid = ledger.start_session(NOW)
    hashes = [add_invoice(ledger, sid, n) for n in range(10)]
    first_amount: dict[int, int] = {}
    for index, amount in reports:
        counted = ledger.record_settled(hashes[index], amount, NOW)
        assert counted == (index not in first_amount)
        first_amount.setdefault(index, amount)
    assert ledger.paid_total_msat() == sum(first_amount.values())
    assert len(ledger.open_invoices()) == 10 - len(first_amount)


def test_a_file_that_is_not_a_ledger_is_refused_with_its_name(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("not a database, just some words " * 50)
    with pytest.raises(LedgerError, match="notes.txt: not a usable ledger"):
        open_ledger(path)
