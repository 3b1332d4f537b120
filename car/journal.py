"""The car's payment journal: sessions, offers, invoice verdicts and payments, in SQLite (WAL).

Crash safety rests on one rule: a payment's ``intent`` row is committed *before*
SendPaymentV2 is called, and completed (``in_flight`` -> ``succeeded`` | ``failed``) after.
A kill at any point leaves either no row (nothing was sent) or an unresolved row that
:meth:`Journal.unresolved_payments` hands to ``car.payer`` for TrackPaymentV2 at start.
``payment_hash`` is the primary key, so a hash never gets a second row; a row may go back
from ``failed`` to ``intent`` for another attempt, never from any other state.

Spending totals count a settled payment's amount plus its fee, and an unresolved one's
amount plus its fee *limit* (what it may still cost). The daily cap uses a trailing
24-hour window rather than a calendar day: it needs no time zone, and no midnight lets
two days' worth be spent within a few minutes. Times are unix seconds; the ledger shows
them in UTC.
"""

from __future__ import annotations

import math
import sqlite3
from dataclasses import dataclass
from datetime import datetime, timezone
from fractions import Fraction
from pathlib import Path
from typing import Any

from distributedcharge.journal import open_journal, transaction
from distributedcharge.units import NJ_PER_WH, format_msat

JOURNAL_FILE = "car-journal.sqlite3"
DAY_S = 24 * 3600
HOUR_S = 3600

INTENT, IN_FLIGHT, SUCCEEDED, FAILED = "intent", "in_flight", "succeeded", "failed"
UNRESOLVED = (INTENT, IN_FLIGHT)
VERDICTS = ("pay", "not_yet_due", "refused")

MIGRATIONS = [
    """
    CREATE TABLE sessions (
        id INTEGER PRIMARY KEY,
        started_at REAL NOT NULL,
        ended_at REAL,
        end_reason TEXT,
        protocol_version INTEGER,
        payee TEXT,
        car_energy_nj INTEGER NOT NULL DEFAULT 0 CHECK (car_energy_nj >= 0),
        wall_energy_nj INTEGER CHECK (wall_energy_nj >= 0)
    );
    CREATE TABLE offers (
        id INTEGER PRIMARY KEY,
        session_id INTEGER NOT NULL REFERENCES sessions(id),
        received_at REAL NOT NULL,
        rate_msat_per_kwh INTEGER NOT NULL,
        payment_msat INTEGER NOT NULL,
        is_change INTEGER NOT NULL,
        verdict TEXT NOT NULL CHECK (verdict IN ('accepted', 'rejected')),
        reason TEXT
    );
    CREATE TABLE invoices (
        id INTEGER PRIMARY KEY,
        session_id INTEGER NOT NULL REFERENCES sessions(id),
        received_at REAL NOT NULL,
        payment_hash TEXT,
        amount_msat INTEGER,
        payee TEXT,
        verdict TEXT NOT NULL CHECK (verdict IN ('pay', 'not_yet_due', 'refused')),
        code TEXT,
        reason TEXT,
        car_energy_nj INTEGER,
        wall_energy_nj INTEGER,
        bolt11 TEXT NOT NULL
    );
    CREATE INDEX invoices_by_session ON invoices(session_id);
    CREATE TABLE payments (
        payment_hash TEXT PRIMARY KEY CHECK (length(payment_hash) = 64),
        session_id INTEGER REFERENCES sessions(id),
        bolt11 TEXT NOT NULL,
        amount_msat INTEGER NOT NULL CHECK (amount_msat > 0),
        fee_limit_msat INTEGER NOT NULL CHECK (fee_limit_msat >= 0),
        state TEXT NOT NULL CHECK (state IN ('intent', 'in_flight', 'succeeded', 'failed')),
        attempts INTEGER NOT NULL DEFAULT 1,
        fee_msat INTEGER,
        preimage TEXT,
        failure_reason TEXT,
        created_at REAL NOT NULL,
        attempted_at REAL NOT NULL,
        updated_at REAL NOT NULL
    );
    CREATE INDEX payments_by_session ON payments(session_id);
    CREATE INDEX payments_by_time ON payments(attempted_at);
    """,
    # What a restarted daemon needs to carry on a session: when it was last alive, how each
    # accepted offer was bound on the wire, and the terms and wall session of each verdict.
    """
    ALTER TABLE sessions ADD COLUMN seen_at REAL;
    ALTER TABLE offers ADD COLUMN protocol_version INTEGER;
    ALTER TABLE offers ADD COLUMN wall_session_id INTEGER;
    ALTER TABLE offers ADD COLUMN offer_number INTEGER;
    ALTER TABLE invoices ADD COLUMN terms_rate_msat_per_kwh INTEGER;
    ALTER TABLE invoices ADD COLUMN terms_payment_msat INTEGER;
    ALTER TABLE invoices ADD COLUMN wall_session_id INTEGER;
    """,
    # The spending caps are checked at every judgement of an invoice; summing the session's
    # or the day's payment rows each time cost more with every payment made. Triggers keep
    # running totals per session and per hour as the rows change, in the same transaction.
    # A row's cost is what it may still cost: settled -> amount + fee; unresolved -> amount +
    # fee limit. Hours are floored (CAST alone truncates toward zero before 1970).
    """
    ALTER TABLE payments ADD COLUMN cost_msat INTEGER GENERATED ALWAYS AS (
        CASE WHEN state = 'succeeded' THEN COALESCE(amount_msat + fee_msat, 0)
             WHEN state IN ('intent', 'in_flight') THEN amount_msat + fee_limit_msat
             ELSE 0 END) VIRTUAL;
    ALTER TABLE payments ADD COLUMN attempted_hour INTEGER GENERATED ALWAYS AS (
        CAST(attempted_at / 3600.0 AS INTEGER)
        - (attempted_at / 3600.0 < CAST(attempted_at / 3600.0 AS INTEGER))) VIRTUAL;
    ALTER TABLE sessions ADD COLUMN spent_msat INTEGER NOT NULL DEFAULT 0;
    UPDATE sessions SET spent_msat =
        (SELECT COALESCE(SUM(cost_msat), 0) FROM payments WHERE payments.session_id = sessions.id);
    CREATE TABLE spent_by_hour (hour INTEGER PRIMARY KEY, msat INTEGER NOT NULL);
    INSERT INTO spent_by_hour (hour, msat)
        SELECT attempted_hour, SUM(cost_msat) FROM payments GROUP BY attempted_hour;
    CREATE TRIGGER payments_spent_insert AFTER INSERT ON payments BEGIN
        UPDATE sessions SET spent_msat = spent_msat + NEW.cost_msat WHERE id = NEW.session_id;
        INSERT INTO spent_by_hour (hour, msat) VALUES (NEW.attempted_hour, NEW.cost_msat)
            ON CONFLICT (hour) DO UPDATE SET msat = msat + excluded.msat;
    END;
    CREATE TRIGGER payments_spent_update AFTER UPDATE ON payments BEGIN
        UPDATE sessions SET spent_msat = spent_msat - OLD.cost_msat WHERE id = OLD.session_id;
        UPDATE spent_by_hour SET msat = msat - OLD.cost_msat WHERE hour = OLD.attempted_hour;
        UPDATE sessions SET spent_msat = spent_msat + NEW.cost_msat WHERE id = NEW.session_id;
        INSERT INTO spent_by_hour (hour, msat) VALUES (NEW.attempted_hour, NEW.cost_msat)
            ON CONFLICT (hour) DO UPDATE SET msat = msat + excluded.msat;
    END;
    CREATE TRIGGER payments_spent_delete AFTER DELETE ON payments BEGIN
        UPDATE sessions SET spent_msat = spent_msat - OLD.cost_msat WHERE id = OLD.session_id;
        UPDATE spent_by_hour SET msat = msat - OLD.cost_msat WHERE hour = OLD.attempted_hour;
    END;
    """,
]


class DuplicatePayment(Exception):
    """A payment row for this hash exists and is not a failed one: sending again could pay twice."""

    def __init__(self, payment_hash: bytes, state: str):
        super().__init__(f"payment {payment_hash.hex()} is already {state}")
        self.payment_hash = payment_hash
        self.state = state


@dataclass(frozen=True)
class PaymentRecord:
    payment_hash: bytes
    session_id: int | None
    bolt11: str
    amount_msat: int
    fee_limit_msat: int
    state: str
    attempts: int
    fee_msat: int | None
    preimage: bytes | None
    failure_reason: str | None
    created_at: float
    attempted_at: float
    updated_at: float

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> PaymentRecord:
        return cls(
            payment_hash=bytes.fromhex(row["payment_hash"]),
            session_id=row["session_id"],
            bolt11=row["bolt11"],
            amount_msat=row["amount_msat"],
            fee_limit_msat=row["fee_limit_msat"],
            state=row["state"],
            attempts=row["attempts"],
            fee_msat=row["fee_msat"],
            preimage=bytes.fromhex(row["preimage"]) if row["preimage"] else None,
            failure_reason=row["failure_reason"],
            created_at=row["created_at"],
            attempted_at=row["attempted_at"],
            updated_at=row["updated_at"],
        )


class KnownHashes:
    """``payment_hash in journal.known_hashes``: has any payment to it ever been attempted?"""

    def __init__(self, conn: sqlite3.Connection):
        self._conn = conn

    def __contains__(self, payment_hash: object) -> bool:
        if not isinstance(payment_hash, bytes):
            return False
        row = self._conn.execute(
            "SELECT 1 FROM payments WHERE payment_hash = ?", (payment_hash.hex(),)
        ).fetchone()
        return row is not None


class SettledOrPendingHashes:
    """``payment_hash in journal.settled_or_pending_hashes(max_attempts)``: must it never be sent again?

    True while a payment to the hash is unresolved, once one succeeded, and after
    ``max_attempts`` tries that all failed. The daemon's policy takes this rather than
    :class:`KnownHashes`: a payment that definitely failed (LND never saw the request
    because the daemon was killed first, or no route) moved no money, so the invoice may be
    judged again in a later session as it may within its own, up to ``max_attempts`` tries.
    """

    def __init__(self, conn: sqlite3.Connection, max_attempts: int):
        self._conn = conn
        self._max_attempts = max_attempts

    def __contains__(self, payment_hash: object) -> bool:
        if not isinstance(payment_hash, bytes):
            return False
        row = self._conn.execute(
            "SELECT 1 FROM payments WHERE payment_hash = ? AND (state != ? OR attempts >= ?)",
            (payment_hash.hex(), FAILED, self._max_attempts),
        ).fetchone()
        return row is not None


@dataclass(frozen=True)
class AcceptedOffer:
    rate_msat_per_kwh: int
    payment_msat: int
    protocol_version: int | None
    wall_session_id: int | None
    offer_number: int | None


@dataclass(frozen=True)
class WaitingInvoice:
    """An invoice last judged not yet due and neither paid nor refused since."""

    bolt11: str
    terms: tuple[int, int] | None  # (rate msat/kWh, payment msat) it was bound to; None in v1
    wall_session_id: int | None
    wall_energy_nj: int | None


@dataclass(frozen=True)
class OpenSession:
    """A session a killed daemon left open, as the journal knows it."""

    id: int
    started_at: float
    seen_at: float
    protocol_version: int | None
    payee: bytes | None
    car_energy_nj: int
    wall_energy_nj: int | None
    accepted_offers: list[AcceptedOffer]
    payments: list[tuple[PaymentRecord, tuple[int, int] | None]]  # with the terms it was paid under
    waiting: list[WaitingInvoice]


class Journal:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.conn = open_journal(path, MIGRATIONS)
        self.known_hashes = KnownHashes(self.conn)

    @classmethod
    def in_dir(cls, state_dir: str | Path) -> Journal:
        return cls(Path(state_dir) / JOURNAL_FILE)

    def settled_or_pending_hashes(self, max_attempts: int) -> SettledOrPendingHashes:
        return SettledOrPendingHashes(self.conn, max_attempts)

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- sessions ------------------------------------------------------------------------

    def start_session(self, now: float, protocol_version: int | None = None) -> int:
        cursor = self.conn.execute(
            "INSERT INTO sessions (started_at, seen_at, protocol_version) VALUES (?, ?, ?)",
            (now, now, protocol_version),
        )
        return int(cursor.lastrowid)

    def set_protocol_version(self, session_id: int, protocol_version: int) -> None:
        self.conn.execute(
            "UPDATE sessions SET protocol_version = ? WHERE id = ?", (protocol_version, session_id)
        )

    def set_payee(self, session_id: int, payee: bytes) -> None:
        self.conn.execute("UPDATE sessions SET payee = ? WHERE id = ?", (payee.hex(), session_id))

    def update_energy(self, session_id: int, car_energy_nj: int, wall_energy_nj: int | None = None,
                      now: float | None = None) -> None:
        """Latest meter readings since plug-in; the wall's only when it reports one (v2).
        ``now`` marks the session as alive at that time (see :meth:`open_session`)."""
        self.conn.execute(
            "UPDATE sessions SET car_energy_nj = ?, wall_energy_nj = COALESCE(?, wall_energy_nj),"
            " seen_at = COALESCE(?, seen_at) WHERE id = ?",
            (car_energy_nj, wall_energy_nj, now, session_id),
        )

    def end_session(self, session_id: int, now: float, reason: str = "unplugged") -> None:
        self.conn.execute(
            "UPDATE sessions SET ended_at = ?, end_reason = ? WHERE id = ? AND ended_at IS NULL",
            (now, reason, session_id),
        )

    def close_abandoned_sessions(
        self, now: float, reason: str = "daemon stopped during the session", *, keep: int | None = None
    ) -> list[int]:
        """At start: sessions a crash left open, except ``keep``, are ended now. Returns their ids."""
        with transaction(self.conn):
            ids = [row[0] for row in self.conn.execute(
                "SELECT id FROM sessions WHERE ended_at IS NULL AND id IS NOT ?", (keep,))]
            self.conn.execute(
                "UPDATE sessions SET ended_at = ?, end_reason = ? WHERE ended_at IS NULL AND id IS NOT ?",
                (now, reason, keep),
            )
        return ids

    def open_session(self, now: float, within_s: float) -> OpenSession | None:
        """The latest session still open and alive within ``within_s`` before ``now``, if any.

        Its car energy is the highest reading the journal holds: the session row is updated
        every few seconds, each verdict row carries the reading of its moment.
        """
        row = self.conn.execute(
            "SELECT * FROM sessions WHERE ended_at IS NULL AND seen_at >= ? ORDER BY id DESC LIMIT 1",
            (now - within_s,),
        ).fetchone()
        if row is None:
            return None
        session_id = row["id"]
        latest_verdict_energy = self.conn.execute(
            "SELECT MAX(car_energy_nj) FROM invoices WHERE session_id = ?", (session_id,)
        ).fetchone()[0]
        offers = [
            AcceptedOffer(o["rate_msat_per_kwh"], o["payment_msat"], o["protocol_version"],
                          o["wall_session_id"], o["offer_number"])
            for o in self.conn.execute(
                "SELECT * FROM offers WHERE session_id = ? AND verdict = 'accepted' ORDER BY id", (session_id,))
        ]
        paid_terms = {
            t["payment_hash"]: (t["terms_rate_msat_per_kwh"], t["terms_payment_msat"])
            for t in self.conn.execute(
                "SELECT payment_hash, terms_rate_msat_per_kwh, terms_payment_msat FROM invoices"
                " WHERE session_id = ? AND verdict = 'pay' AND terms_rate_msat_per_kwh IS NOT NULL ORDER BY id",
                (session_id,))
        }
        payments = [
            (record, paid_terms.get(record.payment_hash.hex()))
            for record in (PaymentRecord.from_row(p) for p in self.conn.execute(
                "SELECT * FROM payments WHERE session_id = ? ORDER BY created_at", (session_id,)))
        ]
        return OpenSession(
            id=session_id, started_at=row["started_at"], seen_at=row["seen_at"],
            protocol_version=row["protocol_version"],
            payee=bytes.fromhex(row["payee"]) if row["payee"] else None,
            car_energy_nj=max(row["car_energy_nj"], latest_verdict_energy or 0),
            wall_energy_nj=row["wall_energy_nj"],
            accepted_offers=offers, payments=payments, waiting=self._waiting_invoices(session_id),
        )

    def _waiting_invoices(self, session_id: int) -> list[WaitingInvoice]:
        waiting: dict[str, WaitingInvoice] = {}
        for row in self.conn.execute(
            "SELECT i.*, p.state AS p_state FROM invoices i LEFT JOIN payments p ON p.payment_hash = i.payment_hash"
            " WHERE i.session_id = ? AND i.payment_hash IS NOT NULL ORDER BY i.id", (session_id,)
        ):
            key = row["payment_hash"]
            if row["verdict"] != "not_yet_due" or row["p_state"] not in (None, FAILED):
                waiting.pop(key, None)
                continue
            terms = None if row["terms_rate_msat_per_kwh"] is None else (
                row["terms_rate_msat_per_kwh"], row["terms_payment_msat"])
            waiting[key] = WaitingInvoice(row["bolt11"], terms, row["wall_session_id"], row["wall_energy_nj"])
        return list(waiting.values())

    def record_offer(
        self, session_id: int, now: float, rate_msat_per_kwh: int, payment_msat: int,
        *, is_change: bool, accepted: bool, reason: str | None = None,
        protocol_version: int | None = None, wall_session_id: int | None = None, offer_number: int | None = None,
    ) -> None:
        """``protocol_version``, ``wall_session_id`` and ``offer_number`` are how the offer came
        on the wire; a restarted daemon needs them to take up the acceptance again."""
        self.conn.execute(
            "INSERT INTO offers (session_id, received_at, rate_msat_per_kwh, payment_msat, is_change,"
            " verdict, reason, protocol_version, wall_session_id, offer_number)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (session_id, now, rate_msat_per_kwh, payment_msat, int(is_change),
             "accepted" if accepted else "rejected", reason, protocol_version, wall_session_id, offer_number),
        )

    def record_invoice(
        self, session_id: int, now: float, bolt11: str, verdict: str, *,
        code: str | None = None, reason: str | None = None, payment_hash: bytes | None = None,
        amount_msat: int | None = None, payee: bytes | None = None,
        car_energy_nj: int | None = None, wall_energy_nj: int | None = None,
        terms: tuple[int, int] | None = None, wall_session_id: int | None = None,
    ) -> None:
        """One verdict on one invoice. Record ``not_yet_due`` once per invoice, not at every re-judgement.

        ``terms`` (rate msat/kWh, payment msat) are those it was judged under: for ``pay``, the
        energy it buys; for ``not_yet_due`` in v2, the offer the wall bound it to.
        """
        if verdict not in VERDICTS:
            raise ValueError(f"verdict must be one of {VERDICTS}, got {verdict!r}")
        rate, payment = terms if terms is not None else (None, None)
        self.conn.execute(
            "INSERT INTO invoices (session_id, received_at, payment_hash, amount_msat, payee, verdict,"
            " code, reason, car_energy_nj, wall_energy_nj, bolt11, terms_rate_msat_per_kwh, terms_payment_msat,"
            " wall_session_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (session_id, now, payment_hash.hex() if payment_hash else None, amount_msat,
             payee.hex() if payee else None, verdict, code and str(code), reason,
             car_energy_nj, wall_energy_nj, bolt11, rate, payment, wall_session_id),
        )

    # --- payments ------------------------------------------------------------------------

    def record_intent(
        self, payment_hash: bytes, bolt11: str, amount_msat: int, fee_limit_msat: int,
        now: float, session_id: int | None = None,
    ) -> PaymentRecord:
        """Commit the intent to pay, before anything is sent. Raises :class:`DuplicatePayment`
        unless the hash is new or its last attempt definitely failed."""
        key = payment_hash.hex()
        with transaction(self.conn):
            row = self.conn.execute(
                "SELECT state FROM payments WHERE payment_hash = ?", (key,)
            ).fetchone()
            if row is None:
                self.conn.execute(
                    "INSERT INTO payments (payment_hash, session_id, bolt11, amount_msat, fee_limit_msat,"
                    " state, created_at, attempted_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (key, session_id, bolt11, amount_msat, fee_limit_msat, INTENT, now, now, now),
                )
            elif row["state"] == FAILED:
                self.conn.execute(
                    "UPDATE payments SET state = ?, attempts = attempts + 1, session_id = ?, bolt11 = ?,"
                    " amount_msat = ?, fee_limit_msat = ?, fee_msat = NULL, failure_reason = NULL,"
                    " attempted_at = ?, updated_at = ? WHERE payment_hash = ?",
                    (INTENT, session_id, bolt11, amount_msat, fee_limit_msat, now, now, key),
                )
            else:
                raise DuplicatePayment(payment_hash, row["state"])
        record = self.payment(payment_hash)
        assert record is not None
        return record

    def mark_in_flight(self, payment_hash: bytes, now: float) -> bool:
        return self._move(payment_hash, (INTENT,), "state = ?", (IN_FLIGHT,), now)

    def mark_succeeded(self, payment_hash: bytes, fee_msat: int, preimage: bytes | None, now: float) -> bool:
        """LND's word that money moved outranks whatever the row said, even ``failed``."""
        return self._move(
            payment_hash, (INTENT, IN_FLIGHT, FAILED),
            "state = ?, fee_msat = ?, preimage = ?, failure_reason = NULL",
            (SUCCEEDED, fee_msat, preimage.hex() if preimage else None), now,
        )

    def mark_failed(self, payment_hash: bytes, reason: str, now: float) -> bool:
        return self._move(
            payment_hash, UNRESOLVED, "state = ?, failure_reason = ?, fee_msat = NULL", (FAILED, reason), now
        )

    def _move(self, payment_hash: bytes, from_states: tuple[str, ...], assignments: str,
              values: tuple[Any, ...], now: float) -> bool:
        placeholders = ", ".join("?" for _ in from_states)
        cursor = self.conn.execute(
            f"UPDATE payments SET {assignments}, updated_at = ?"
            f" WHERE payment_hash = ? AND state IN ({placeholders})",
            (*values, now, payment_hash.hex(), *from_states),
        )
        return cursor.rowcount == 1

    def payment(self, payment_hash: bytes) -> PaymentRecord | None:
        row = self.conn.execute(
            "SELECT * FROM payments WHERE payment_hash = ?", (payment_hash.hex(),)
        ).fetchone()
        return PaymentRecord.from_row(row) if row else None

    def unresolved_payments(self) -> list[PaymentRecord]:
        rows = self.conn.execute(
            "SELECT * FROM payments WHERE state IN (?, ?) ORDER BY attempted_at", UNRESOLVED
        ).fetchall()
        return [PaymentRecord.from_row(row) for row in rows]

    def spent_session_msat(self, session_id: int) -> int:
        row = self.conn.execute("SELECT spent_msat FROM sessions WHERE id = ?", (session_id,)).fetchone()
        return int(row[0]) if row else 0

    def spent_today_msat(self, now: float) -> int:
        """Spent in the trailing 24 hours up to ``now`` (see the module docstring).

        The hours after the one the window starts in come from the hourly totals; only that
        one hour's rows are read one by one (none at all until payments are a day old).
        """
        cutoff = now - DAY_S
        hour = math.floor(cutoff / HOUR_S)
        row = self.conn.execute(
            "SELECT (SELECT COALESCE(SUM(msat), 0) FROM spent_by_hour WHERE hour > :hour)"
            " + (SELECT COALESCE(SUM(cost_msat), 0) FROM payments"
            "    WHERE attempted_at > :cutoff AND attempted_at < :past_hour AND attempted_hour = :hour)",
            # The bound on attempted_at lets the index stop early; attempted_hour decides.
            {"cutoff": cutoff, "hour": hour, "past_hour": (hour + 2) * HOUR_S},
        ).fetchone()
        return int(row[0])

    # --- ledger --------------------------------------------------------------------------

    EXPORT_HEADER = (
        "session_id", "session_started_utc", "session_ended_utc",
        "session_car_energy_nj", "session_wall_energy_nj",
        "received_utc", "payment_hash", "payee", "amount_msat", "verdict", "code", "reason",
        "car_energy_nj", "wall_energy_nj", "payment_state", "paid_msat", "fee_msat", "attempts",
    )

    def export_rows(self) -> tuple[tuple[str, ...], list[tuple[Any, ...]]]:
        """One row per invoice verdict. ``paid_msat``/``fee_msat`` are filled on the last ``pay``
        verdict of a settled hash only, so summing those columns gives exactly what was spent."""
        last_pay = {
            row[0]: row[1]
            for row in self.conn.execute(
                "SELECT payment_hash, MAX(id) FROM invoices WHERE verdict = 'pay' GROUP BY payment_hash"
            )
        }
        rows = []
        for row in self.conn.execute(
            "SELECT i.*, s.started_at, s.ended_at, s.car_energy_nj AS s_car, s.wall_energy_nj AS s_wall,"
            " p.state AS p_state, p.fee_msat AS p_fee, p.attempts AS p_attempts, p.amount_msat AS p_amount"
            " FROM invoices i JOIN sessions s ON s.id = i.session_id"
            " LEFT JOIN payments p ON p.payment_hash = i.payment_hash ORDER BY i.id"
        ):
            settled_here = row["p_state"] == SUCCEEDED and last_pay.get(row["payment_hash"]) == row["id"]
            rows.append((
                row["session_id"], _utc(row["started_at"]), _utc(row["ended_at"]),
                row["s_car"], row["s_wall"], _utc(row["received_at"]),
                row["payment_hash"], row["payee"], row["amount_msat"], row["verdict"],
                row["code"], row["reason"], row["car_energy_nj"], row["wall_energy_nj"],
                row["p_state"] if row["verdict"] == "pay" else None,
                row["p_amount"] if settled_here else None,
                row["p_fee"] if settled_here else None,
                row["p_attempts"] if row["verdict"] == "pay" else None,
            ))
        return self.EXPORT_HEADER, rows

    def show_lines(self) -> list[str]:
        """A human summary: one line per session, then totals and anything still unresolved."""
        lines = []
        total_paid = total_fees = 0
        for session in self.conn.execute("SELECT * FROM sessions ORDER BY id"):
            offers = self.conn.execute(
                "SELECT rate_msat_per_kwh, payment_msat FROM offers"
                " WHERE session_id = ? AND verdict = 'accepted' ORDER BY id", (session["id"],)
            ).fetchall()
            paid = self.conn.execute(
                "SELECT COUNT(*), COALESCE(SUM(amount_msat), 0), COALESCE(SUM(fee_msat), 0) FROM payments"
                " WHERE session_id = ? AND state = ?", (session["id"], SUCCEEDED)
            ).fetchone()
            refused = self.conn.execute(
                "SELECT COUNT(*) FROM invoices WHERE session_id = ? AND verdict = 'refused'", (session["id"],)
            ).fetchone()[0]
            total_paid += paid[1]
            total_fees += paid[2]
            rates = ", ".join(f"{format_msat(rate)}/kWh" for rate, _ in offers) or "no offer accepted"
            wall = "" if session["wall_energy_nj"] is None else f" (wall {_kwh(session['wall_energy_nj'])})"
            ended = _utc(session["ended_at"]) or "open"
            version = "" if session["protocol_version"] is None else f" | v{session['protocol_version']}"
            lines.append(
                f"session {session['id']}: {_utc(session['started_at'])} - {ended}"
                f"{'' if session['end_reason'] is None else ' (' + session['end_reason'] + ')'}"
                f"{version} | {rates} | car {_kwh(session['car_energy_nj'])}{wall}"
                f" | paid {format_msat(paid[1])} in {paid[0]} payments, fees {format_msat(paid[2])}"
                f" | refused {refused}"
            )
        lines.append(f"total: paid {format_msat(total_paid)}, fees {format_msat(total_fees)}")
        for record in self.unresolved_payments():
            lines.append(
                f"unresolved: {record.payment_hash.hex()} {format_msat(record.amount_msat)} {record.state}"
                f" since {_utc(record.attempted_at)}"
            )
        return lines


def _utc(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    moment = datetime.fromtimestamp(timestamp, timezone.utc)
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")


def _kwh(nj: int) -> str:
    whole, rest = divmod(round(Fraction(nj, NJ_PER_WH)), 1000)
    return f"{whole}.{rest:03d} kWh"
