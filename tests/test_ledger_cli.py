"""`distributedcharge ledger`: an owner reads what the daemons recorded, as text or CSV."""

from __future__ import annotations

import csv
import hashlib
import io
from datetime import datetime, timezone
from fractions import Fraction

from car.journal import Journal
from distributedcharge import cli
from wallunit.ledger import open_ledger

WHEN = datetime(2026, 11, 21, 20, 0, tzinfo=timezone.utc)


def _car_journal(path):
    journal = Journal(path)
    session = journal.start_session(WHEN.timestamp(), protocol_version=2)
    paid_hash, refused_hash = hashlib.sha256(b"paid").digest(), hashlib.sha256(b"refused").digest()
    journal.record_invoice(session, WHEN.timestamp(), "lnbcrt1paid", "pay", payment_hash=paid_hash, amount_msat=2500)
    journal.record_intent(paid_hash, "lnbcrt1paid", 2500, 2000, WHEN.timestamp(), session_id=session)
    journal.mark_succeeded(paid_hash, 3, bytes(32), WHEN.timestamp())
    journal.record_invoice(session, WHEN.timestamp(), "lnbcrt1refused", "refused", code="over_offer",
                           reason="asks 9000 msat, offer allows 2500", payment_hash=refused_hash, amount_msat=9000)
    journal.close()


def test_car_ledger_export_sums_to_what_was_paid(tmp_path, capsys):
    path = tmp_path / "car-journal.sqlite3"
    _car_journal(path)
    assert cli.main(["ledger", "--role", "car", "--db", str(path), "export", "--csv"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [row["verdict"] for row in rows] == ["pay", "refused"]
    assert sum(int(row["paid_msat"] or 0) for row in rows) == 2500
    assert rows[1]["reason"] == "asks 9000 msat, offer allows 2500"


def test_car_ledger_show_names_the_session_and_the_total(tmp_path, capsys):
    path = tmp_path / "car-journal.sqlite3"
    _car_journal(path)
    assert cli.main(["ledger", "--role", "car", "--db", str(path), "show"]) == 0
    out = capsys.readouterr().out
    assert "2.500 sat" in out


def test_wall_ledger_export_to_a_file(tmp_path, capsys):
    path = tmp_path / "wallunit-ledger.sqlite3"
    ledger = open_ledger(path)
    session = ledger.start_session(WHEN)
    ref = f"{session}.1"
    ledger.invoice_requested(WHEN, ref, "energy", 2500, Fraction(90_000_000_000_000), 100_000, "25 Wh", 600)
    r_hash = hashlib.sha256(b"x").digest()
    ledger.invoice_created(ref, WHEN, r_hash, "lnbcrt25n1x")
    assert ledger.record_settled(r_hash, 2500, WHEN)
    ledger.close()
    out_file = tmp_path / "wall.csv"
    assert cli.main(["ledger", "--role", "wallunit", "--db", str(path), "export", "--csv", "-o", str(out_file)]) == 0
    rows = list(csv.reader(out_file.open()))
    assert len(rows) >= 2 and any("2500" in cell for cell in rows[1])


def test_a_missing_ledger_is_one_clear_line(tmp_path, capsys):
    assert cli.main(["ledger", "--role", "car", "--db", str(tmp_path / "none.sqlite3"), "show"]) == 1
    err = capsys.readouterr().err
    assert "no ledger here yet" in err and err.count("\n") == 1
