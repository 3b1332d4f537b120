"""The wall unit's ledger: what was offered, invoiced, delivered and paid, per session.

SQLite in WAL mode with ``synchronous=FULL`` (:mod:`distributedcharge.journal`): the
daemon records every action here *before* it acts, so after a crash or kill -9 the
ledger lists every invoice that may exist on the node (:meth:`Ledger.open_invoices`)
and the daemon reconciles each with LND. Settlements are keyed by invoice, so a
settlement reported twice (stream + lookup after restart) counts once.

Hold-invoice preimages are stored here before the invoice is created, because they are
what lets the wall settle a deposit or final invoice after a restart.
"""

from __future__ import annotations

import hashlib
import sqlite3
from dataclasses import dataclass
from datetime import datetime, timezone
from fractions import Fraction
from pathlib import Path

from distributedcharge.journal import open_journal, transaction
from distributedcharge.units import NJ_PER_WH, format_msat

from .actions import (
    Action,
    CancelInvoice,
    CreateHoldInvoice,
    CreateInvoice,
    CutPower,
    HidePaymentRequest,
    Ignored,
    MakeOffer,
    RepeatOffer,
    ResumePower,
    SendInvoice,
    SessionEnded,
    SettleInvoice,
    ShowPaymentRequest,
    StopRepeatingOffer,
    StopSale,
)
from .manual import format_kwh

MIGRATIONS = [
    """
    CREATE TABLE sessions (
        id INTEGER PRIMARY KEY,
        started_at TEXT NOT NULL,
        ended_at TEXT,
        end_reason TEXT,
        mode TEXT NOT NULL DEFAULT 'autopay',
        protocol_version INTEGER,
        car_session_id INTEGER,
        delivered_nj INTEGER NOT NULL DEFAULT 0,
        max_exposure_msat INTEGER NOT NULL DEFAULT 0
    );
    CREATE TABLE offers (
        id INTEGER PRIMARY KEY,
        session_id INTEGER NOT NULL REFERENCES sessions(id),
        offered_at TEXT NOT NULL,
        rate_msat_per_kwh INTEGER NOT NULL,
        payment_msat INTEGER NOT NULL,
        answer TEXT CHECK (answer IN ('accepted', 'rejected')),
        answered_at TEXT
    );
    CREATE TABLE invoices (
        id INTEGER PRIMARY KEY,
        session_id INTEGER NOT NULL REFERENCES sessions(id),
        ref TEXT NOT NULL UNIQUE,
        kind TEXT NOT NULL CHECK (kind IN ('energy', 'deposit', 'final')),
        amount_msat INTEGER NOT NULL,
        energy_nj TEXT NOT NULL,
        rate_msat_per_kwh INTEGER NOT NULL,
        memo TEXT NOT NULL,
        expiry_s INTEGER NOT NULL,
        requested_at TEXT NOT NULL,
        r_hash BLOB UNIQUE,
        preimage BLOB,
        payment_request TEXT,
        created_at TEXT,
        sent_at TEXT,
        meter_nj INTEGER,
        accepted_at TEXT,
        state TEXT NOT NULL DEFAULT 'requested'
            CHECK (state IN ('requested', 'open', 'accepted', 'settled', 'canceled', 'failed'))
    );
    CREATE TABLE settlements (
        invoice_id INTEGER PRIMARY KEY REFERENCES invoices(id),
        amt_paid_msat INTEGER NOT NULL,
        settled_at TEXT NOT NULL
    );
    CREATE TABLE settle_requests (
        invoice_id INTEGER PRIMARY KEY REFERENCES invoices(id),
        requested_at TEXT NOT NULL,
        reason TEXT NOT NULL
    );
    CREATE TABLE cancellations (
        invoice_id INTEGER PRIMARY KEY REFERENCES invoices(id),
        requested_at TEXT,
        reason TEXT,
        confirmed_at TEXT
    );
    CREATE TABLE events (
        id INTEGER PRIMARY KEY,
        session_id INTEGER REFERENCES sessions(id),
        at TEXT NOT NULL,
        kind TEXT NOT NULL,
        detail TEXT NOT NULL
    );
    CREATE INDEX invoices_by_session ON invoices(session_id);
    CREATE INDEX invoices_by_state ON invoices(state);
    """,
]

OPEN_STATES = ("requested", "open", "accepted")


class LedgerError(ValueError):
    pass


@dataclass(frozen=True)
class InvoiceRecord:
    ref: str
    session_id: int
    kind: str
    amount_msat: int
    energy_nj: Fraction
    state: str
    r_hash: bytes | None
    payment_request: str | None
    settle_requested: bool
    cancel_requested: bool


def session_of(ref: str) -> int:
    """Invoice refs made by the policy start with their session id: ``"12.3"``, ``"12.deposit1"``."""
    head, _, _ = ref.partition(".")
    if not head.isdigit():
        raise LedgerError(f"invoice ref {ref!r} does not name its session")
    return int(head)


def _stamp(now: datetime | None) -> str:
    return (now or datetime.now(timezone.utc)).isoformat()


def _check_hash(r_hash: bytes) -> bytes:
    if not isinstance(r_hash, (bytes, bytearray)) or len(r_hash) != 32:
        raise LedgerError(f"payment hash must be 32 bytes, got {r_hash!r}")
    return bytes(r_hash)


def _check_amount(msat: int) -> int:
    if isinstance(msat, bool) or not isinstance(msat, int) or msat < 0:
        raise LedgerError(f"amount must be a non-negative whole number of msat, got {msat!r}")
    return msat


class Ledger:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.conn = open_journal(path, MIGRATIONS)

    def close(self) -> None:
        self.conn.close()

    # sessions ---------------------------------------------------------------------------

    def start_session(self, now: datetime | None = None) -> int:
        cursor = self.conn.execute("INSERT INTO sessions (started_at) VALUES (?)", (_stamp(now),))
        return int(cursor.lastrowid)

    def record_energy(self, session_id: int, delivered_nj: int) -> None:
        self.conn.execute("UPDATE sessions SET delivered_nj = ? WHERE id = ?", (delivered_nj, session_id))

    def record_mode(self, session_id: int, mode: str) -> None:
        self.conn.execute("UPDATE sessions SET mode = ? WHERE id = ?", (mode, session_id))

    def end_session(self, session_id: int, now: datetime | None, delivered_nj: int, max_exposure_msat: int,
                    reason: str = "unplugged") -> None:
        self.conn.execute(
            "UPDATE sessions SET ended_at = ?, end_reason = ?, delivered_nj = ?, max_exposure_msat = ? "
            "WHERE id = ? AND ended_at IS NULL",
            (_stamp(now), reason, delivered_nj, max_exposure_msat, session_id),
        )

    def close_interrupted(self, now: datetime | None = None) -> list[int]:
        """Sessions left open by a crash; closed with the energy last recorded for them."""
        with transaction(self.conn):
            ids = [row[0] for row in self.conn.execute("SELECT id FROM sessions WHERE ended_at IS NULL")]
            self.conn.execute(
                "UPDATE sessions SET ended_at = ?, end_reason = 'daemon restarted' WHERE ended_at IS NULL",
                (_stamp(now),),
            )
        return ids

    # offers -----------------------------------------------------------------------------

    def record_offer(self, session_id: int, now: datetime | None, rate_msat_per_kwh: int, payment_msat: int) -> None:
        self.conn.execute(
            "INSERT INTO offers (session_id, offered_at, rate_msat_per_kwh, payment_msat) VALUES (?, ?, ?, ?)",
            (session_id, _stamp(now), rate_msat_per_kwh, payment_msat),
        )

    def record_answer(self, session_id: int, now: datetime | None, accepted: bool, version: int | None = None,
                      car_session_id: int | None = None) -> None:
        with transaction(self.conn):
            self.conn.execute(
                "UPDATE offers SET answer = ?, answered_at = ? WHERE id = "
                "(SELECT max(id) FROM offers WHERE session_id = ?)",
                ("accepted" if accepted else "rejected", _stamp(now), session_id),
            )
            if accepted:
                self.conn.execute(
                    "UPDATE sessions SET protocol_version = coalesce(?, protocol_version), "
                    "car_session_id = coalesce(?, car_session_id) WHERE id = ?",
                    (version, car_session_id, session_id),
                )

    # invoices ---------------------------------------------------------------------------

    def invoice_requested(self, now: datetime | None, ref: str, kind: str, amount_msat: int, energy_nj: Fraction,
                          rate_msat_per_kwh: int, memo: str, expiry_s: int, preimage: bytes | None = None) -> None:
        r_hash = hashlib.sha256(preimage).digest() if preimage is not None else None
        if kind in ("deposit", "final") and preimage is None:
            raise LedgerError(f"hold invoice {ref} needs its preimage recorded before it is created")
        self.conn.execute(
            "INSERT INTO invoices (session_id, ref, kind, amount_msat, energy_nj, rate_msat_per_kwh, memo, "
            "expiry_s, requested_at, r_hash, preimage) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (session_of(ref), ref, kind, _check_amount(amount_msat), str(Fraction(energy_nj)), rate_msat_per_kwh,
             memo, expiry_s, _stamp(now), r_hash, preimage),
        )

    def invoice_created(self, ref: str, now: datetime | None, r_hash: bytes, payment_request: str) -> None:
        self.conn.execute(
            "UPDATE invoices SET r_hash = ?, payment_request = ?, created_at = ?, "
            "state = CASE WHEN state = 'requested' THEN 'open' ELSE state END WHERE ref = ?",
            (_check_hash(r_hash), payment_request, _stamp(now), ref),
        )

    def invoice_failed(self, ref: str, now: datetime | None, reason: str) -> None:
        with transaction(self.conn):
            self.conn.execute("UPDATE invoices SET state = 'failed' WHERE ref = ? AND state = 'requested'", (ref,))
            self.record_event(session_of(ref), now, "invoice failed", f"{ref}: {reason}")

    def invoice_sent(self, ref: str, now: datetime | None, meter_nj: int) -> None:
        self.conn.execute("UPDATE invoices SET sent_at = ?, meter_nj = ? WHERE ref = ?", (_stamp(now), meter_nj, ref))

    def cancel_requested(self, r_hash: bytes, now: datetime | None, reason: str) -> None:
        self.conn.execute(
            "INSERT OR IGNORE INTO cancellations (invoice_id, requested_at, reason) "
            "SELECT id, ?, ? FROM invoices WHERE r_hash = ?",
            (_stamp(now), reason, _check_hash(r_hash)),
        )

    def settle_requested(self, r_hash: bytes, now: datetime | None, reason: str) -> None:
        self.conn.execute(
            "INSERT OR IGNORE INTO settle_requests (invoice_id, requested_at, reason) "
            "SELECT id, ?, ? FROM invoices WHERE r_hash = ?",
            (_stamp(now), reason, _check_hash(r_hash)),
        )

    def record_accepted(self, r_hash: bytes, now: datetime | None) -> bool:
        cursor = self.conn.execute(
            "UPDATE invoices SET state = 'accepted', accepted_at = ? WHERE r_hash = ? AND state IN ('requested', 'open')",
            (_stamp(now), _check_hash(r_hash)),
        )
        return cursor.rowcount == 1

    def record_settled(self, r_hash: bytes, amt_paid_msat: int, now: datetime | None = None) -> bool:
        """Count a settlement once; True if this call was the one that counted it.

        A settlement wins over a cancellation we asked for: if the node says the money
        arrived, it did.
        """
        r_hash, amount = _check_hash(r_hash), _check_amount(amt_paid_msat)
        with transaction(self.conn):
            row = self.conn.execute("SELECT id FROM invoices WHERE r_hash = ?", (r_hash,)).fetchone()
            if row is None:
                return False
            cursor = self.conn.execute(
                "INSERT OR IGNORE INTO settlements (invoice_id, amt_paid_msat, settled_at) VALUES (?, ?, ?)",
                (row[0], amount, _stamp(now)),
            )
            if cursor.rowcount != 1:
                return False
            self.conn.execute("UPDATE invoices SET state = 'settled' WHERE id = ?", (row[0],))
            return True

    def record_canceled(self, r_hash: bytes, now: datetime | None = None) -> bool:
        r_hash = _check_hash(r_hash)
        with transaction(self.conn):
            row = self.conn.execute("SELECT id, state FROM invoices WHERE r_hash = ?", (r_hash,)).fetchone()
            if row is None or row["state"] in ("settled", "canceled"):
                return False
            self.conn.execute("UPDATE invoices SET state = 'canceled' WHERE id = ?", (row["id"],))
            self.conn.execute(
                "INSERT INTO cancellations (invoice_id, confirmed_at) VALUES (?, ?) "
                "ON CONFLICT(invoice_id) DO UPDATE SET confirmed_at = excluded.confirmed_at",
                (row["id"], _stamp(now)),
            )
            return True

    def reconcile(self, r_hash: bytes, node_state: str, amt_paid_msat: int = 0, now: datetime | None = None) -> bool:
        """Bring one invoice in line with the node after a restart; True if the ledger changed.

        ``node_state`` is LND's name for it: OPEN, ACCEPTED, SETTLED or CANCELED.
        """
        if node_state == "SETTLED":
            return self.record_settled(r_hash, amt_paid_msat, now)
        if node_state == "CANCELED":
            return self.record_canceled(r_hash, now)
        if node_state == "ACCEPTED":
            return self.record_accepted(r_hash, now)
        if node_state == "OPEN":
            return False
        raise LedgerError(f"unknown invoice state {node_state!r}")

    def preimage(self, r_hash: bytes) -> bytes | None:
        row = self.conn.execute("SELECT preimage FROM invoices WHERE r_hash = ?", (_check_hash(r_hash),)).fetchone()
        return None if row is None else row[0]

    def open_invoices(self) -> list[InvoiceRecord]:
        """Invoices that may still be payable or held on the node: reconcile each at start."""
        rows = self.conn.execute(
            "SELECT i.*, s.invoice_id IS NOT NULL AS settle_requested, c.invoice_id IS NOT NULL AS cancel_requested "
            "FROM invoices i LEFT JOIN settle_requests s ON s.invoice_id = i.id "
            "LEFT JOIN cancellations c ON c.invoice_id = i.id "
            f"WHERE i.state IN ({', '.join('?' * len(OPEN_STATES))}) ORDER BY i.id",
            OPEN_STATES,
        ).fetchall()
        return [
            InvoiceRecord(
                row["ref"], row["session_id"], row["kind"], row["amount_msat"], Fraction(row["energy_nj"]),
                row["state"], row["r_hash"], row["payment_request"], bool(row["settle_requested"]),
                bool(row["cancel_requested"]),
            )
            for row in rows
        ]

    def paid_total_msat(self, session_id: int | None = None) -> int:
        if session_id is None:
            row = self.conn.execute("SELECT coalesce(sum(amt_paid_msat), 0) FROM settlements").fetchone()
        else:
            row = self.conn.execute(
                "SELECT coalesce(sum(st.amt_paid_msat), 0) FROM settlements st "
                "JOIN invoices i ON i.id = st.invoice_id WHERE i.session_id = ?",
                (session_id,),
            ).fetchone()
        return int(row[0])

    # events and actions -----------------------------------------------------------------

    def record_event(self, session_id: int | None, now: datetime | None, kind: str, detail: str) -> None:
        self.conn.execute(
            "INSERT INTO events (session_id, at, kind, detail) VALUES (?, ?, ?, ?)",
            (session_id, _stamp(now), kind, detail),
        )

    def record_action(self, now: datetime | None, action: Action, session_id: int | None = None,
                      preimage: bytes | None = None) -> None:
        """Write down what the daemon is about to do; call before carrying ``action`` out.

        ``session_id`` is the open session (for offers and power events); invoices name
        their own. A hold invoice needs the ``preimage`` the daemon chose for it.
        """
        if isinstance(action, MakeOffer):
            self._need(session_id, action)
            self.record_offer(session_id, now, action.offer.rate_msat_per_kwh, action.offer.payment_msat)
        elif isinstance(action, CreateInvoice):
            self.invoice_requested(now, action.ref, "energy", action.amount_msat, action.energy_nj,
                                   action.rate_msat_per_kwh, action.memo, action.expiry_s)
        elif isinstance(action, CreateHoldInvoice):
            self.invoice_requested(now, action.ref, action.purpose, action.amount_msat, action.energy_nj,
                                   action.rate_msat_per_kwh, action.memo, action.expiry_s, preimage)
            if action.purpose == "deposit":
                self.record_mode(session_of(action.ref), "manual")
        elif isinstance(action, SendInvoice):
            with transaction(self.conn):
                self.invoice_sent(action.ref, now, action.meter_nj)
                self.record_energy(session_of(action.ref), action.meter_nj)
        elif isinstance(action, CancelInvoice):
            self.cancel_requested(action.r_hash, now, action.reason)
        elif isinstance(action, SettleInvoice):
            self.settle_requested(action.r_hash, now, action.reason)
        elif isinstance(action, SessionEnded):
            self.end_session(action.session_id, now, action.delivered_nj, action.max_exposure_msat)
        elif isinstance(action, (ShowPaymentRequest, HidePaymentRequest)):
            self.record_event(session_of(action.ref), now, type(action).__name__, action.ref)
        elif isinstance(action, (CutPower, ResumePower, StopSale, RepeatOffer, StopRepeatingOffer, Ignored)):
            self.record_event(session_id, now, type(action).__name__, action.reason)
        else:
            raise LedgerError(f"no ledger record for {action!r}")

    @staticmethod
    def _need(session_id: int | None, action: Action) -> None:
        if session_id is None:
            raise LedgerError(f"{type(action).__name__} needs the session it belongs to")

    # reports ----------------------------------------------------------------------------

    EXPORT_HEADER = (
        "session", "started_at", "ended_at", "mode", "protocol_version", "session_delivered_wh",
        "session_max_exposure_msat", "invoice_ref", "kind", "rate_msat_per_kwh", "amount_msat", "energy_wh",
        "state", "requested_at", "sent_at", "meter_wh_at_send", "amt_paid_msat", "settled_at", "canceled_at",
        "payment_hash",
    )

    def export_rows(self) -> tuple[tuple[str, ...], list[tuple]]:
        """One row per invoice (sessions without invoices get one row), oldest first."""
        rows = self.conn.execute(
            "SELECT s.id, s.started_at, s.ended_at, s.mode, s.protocol_version, s.delivered_nj, "
            "s.max_exposure_msat, i.ref, i.kind, i.rate_msat_per_kwh, i.amount_msat, i.energy_nj, i.state, "
            "i.requested_at, i.sent_at, i.meter_nj, st.amt_paid_msat, st.settled_at, c.confirmed_at, i.r_hash "
            "FROM sessions s LEFT JOIN invoices i ON i.session_id = s.id "
            "LEFT JOIN settlements st ON st.invoice_id = i.id LEFT JOIN cancellations c ON c.invoice_id = i.id "
            "ORDER BY s.id, i.id"
        ).fetchall()
        out = []
        for row in rows:
            (sid, started, ended, mode, version, delivered, exposure, ref, kind, rate, amount, energy, state,
             requested, sent, meter, paid, settled, canceled, r_hash) = tuple(row)
            out.append((
                sid, started, ended or "", mode, version if version is not None else "", _wh_text(delivered),
                exposure, ref or "", kind or "", rate if rate is not None else "",
                amount if amount is not None else "", _wh_text(Fraction(energy)) if energy else "", state or "",
                requested or "", sent or "", _wh_text(meter) if meter is not None else "",
                paid if paid is not None else "", settled or "", canceled or "", r_hash.hex() if r_hash else "",
            ))
        return self.EXPORT_HEADER, out

    def show_lines(self) -> list[str]:
        sessions = self.conn.execute(
            "SELECT s.*, "
            "(SELECT count(*) FROM invoices i WHERE i.session_id = s.id) AS invoices, "
            "(SELECT count(*) FROM invoices i WHERE i.session_id = s.id AND i.state = 'settled') AS settled, "
            "(SELECT count(*) FROM invoices i WHERE i.session_id = s.id AND i.state IN ('requested','open','accepted'))"
            " AS still_open, "
            "(SELECT coalesce(sum(st.amt_paid_msat), 0) FROM settlements st JOIN invoices i ON i.id = st.invoice_id "
            " WHERE i.session_id = s.id) AS paid "
            "FROM sessions s ORDER BY s.id"
        ).fetchall()
        lines = []
        for row in sessions:
            version = f" v{row['protocol_version']}" if row["protocol_version"] else ""
            ended = row["ended_at"] or "open"
            reason = f" ({row['end_reason']})" if row["end_reason"] and row["end_reason"] != "unplugged" else ""
            lines.append(
                f"session {row['id']}: {row['started_at']} -> {ended}{reason}, {row['mode']}{version}, "
                f"delivered {format_kwh(row['delivered_nj'])} kWh, paid {format_msat(row['paid'])}, "
                f"invoices {row['invoices']} ({row['settled']} settled, {row['still_open']} open), "
                f"max exposure {format_msat(row['max_exposure_msat'])}"
            )
        total_nj = sum(row["delivered_nj"] for row in sessions)
        lines.append(
            f"total: {len(sessions)} sessions, delivered {format_kwh(total_nj)} kWh, "
            f"paid {format_msat(self.paid_total_msat())}"
        )
        return lines


def _wh_text(nj: int | Fraction) -> str:
    """Wh with 6 decimals, exact enough to add up in a spreadsheet."""
    micro_wh = round(Fraction(nj) * 10**6 / NJ_PER_WH)
    sign = "-" if micro_wh < 0 else ""
    whole, frac = divmod(abs(micro_wh), 10**6)
    return f"{sign}{whole}.{frac:06d}"


def open_ledger(path: str | Path) -> Ledger:
    try:
        return Ledger(path)
    except sqlite3.DatabaseError as exc:
        raise LedgerError(f"{path}: not a usable ledger: {exc}") from None
