"""What the three books say: the network's, the wall unit's ledger and the car's journal.

The simulator judges a session only from records a real installation keeps: simnet's
books (which payment hashes the car's node paid, which invoices the wall's node saw
settled), the wall unit's ledger and the car's payment journal. All three are SQLite
files written by other processes (or other tasks); they are opened read-only, so
reading them can never disturb a daemon. A book that does not exist yet (a daemon not
started, or a scripted role in its place) reads as empty.
"""

from __future__ import annotations

import math
import sqlite3
from collections import Counter
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

from distributedcharge.simnet.state import InvoiceState, PaymentStatus
from distributedcharge.units import msat_for_energy


@dataclass(frozen=True)
class NetworkPayment:
    payment_hash: bytes
    value_msat: int
    fee_msat: int
    succeeded: bool


@dataclass(frozen=True)
class WallInvoice:
    ref: str
    session_id: int
    kind: str
    amount_msat: int
    energy_nj: Fraction
    rate_msat_per_kwh: int
    state: str
    r_hash: bytes | None
    paid_msat: int | None


@dataclass(frozen=True)
class CarVerdict:
    session_id: int
    received_at: float
    verdict: str
    code: str | None
    payment_hash: bytes | None
    amount_msat: int | None
    car_energy_nj: int | None


@dataclass(frozen=True)
class Offer:
    at: str | float
    rate_msat_per_kwh: int
    payment_msat: int
    accepted: bool | None


@dataclass
class Books:
    # simnet
    car_payments: list[NetworkPayment] = field(default_factory=list)
    wall_settled: dict[bytes, int] = field(default_factory=dict)  # r_hash -> amt_paid_msat
    # wall unit ledger
    wall_sessions: list[sqlite3.Row] = field(default_factory=list)
    wall_invoices: list[WallInvoice] = field(default_factory=list)
    wall_offers: list[Offer] = field(default_factory=list)
    wall_events: list[tuple[str, str]] = field(default_factory=list)
    # car journal
    car_sessions: list[sqlite3.Row] = field(default_factory=list)
    car_offers: list[Offer] = field(default_factory=list)
    car_verdicts: list[CarVerdict] = field(default_factory=list)
    car_journal_payments: dict[bytes, tuple[str, int, int]] = field(default_factory=dict)  # state, amount, fee

    # -- the network ------------------------------------------------------------------------

    @property
    def paid_by_car_msat(self) -> int:
        return sum(p.value_msat for p in self.car_payments if p.succeeded)

    @property
    def fees_msat(self) -> int:
        return sum(p.fee_msat for p in self.car_payments if p.succeeded)

    @property
    def payments(self) -> int:
        return sum(1 for p in self.car_payments if p.succeeded)

    @property
    def received_by_wall_msat(self) -> int:
        return sum(self.wall_settled.values())

    def hashes_paid_more_than_once(self) -> list[bytes]:
        counts = Counter(p.payment_hash for p in self.car_payments if p.succeeded)
        return [payment_hash for payment_hash, count in counts.items() if count > 1]

    # -- the wall unit ----------------------------------------------------------------------

    @property
    def wall_delivered_nj(self) -> int:
        return sum(row["delivered_nj"] for row in self.wall_sessions)

    @property
    def wall_ledger_paid_msat(self) -> int:
        return sum(i.paid_msat or 0 for i in self.wall_invoices)

    @property
    def wall_max_exposure_msat(self) -> int:
        return max((row["max_exposure_msat"] for row in self.wall_sessions), default=0)

    def settled_energy_invoices(self) -> list[WallInvoice]:
        return [i for i in self.wall_invoices if i.kind == "energy" and i.paid_msat is not None]

    @property
    def wall_paid_for_nj(self) -> Fraction:
        """Energy the settled invoices bought, each at its own rate."""
        return sum((i.energy_nj for i in self.settled_energy_invoices()), Fraction(0))

    def wall_events_of(self, kind: str) -> list[str]:
        return [detail for event_kind, detail in self.wall_events if event_kind == kind]

    # -- the car ----------------------------------------------------------------------------

    @property
    def car_energy_nj(self) -> int:
        return sum(row["car_energy_nj"] for row in self.car_sessions)

    @property
    def car_journal_paid_msat(self) -> int:
        return sum(amount for state, amount, _ in self.car_journal_payments.values() if state == "succeeded")

    def refusals(self) -> Counter[str]:
        return Counter(v.code or "" for v in self.car_verdicts if v.verdict == "refused")

    def max_buyer_exposure_msat(self) -> int:
        """The most the car had paid beyond the value of what its own meter had received,
        taken at each payment (when it is largest). Each stretch of energy between two
        payments is valued at the rate of the offer the car had accepted last by then."""
        accepted = sorted((o.at, o.rate_msat_per_kwh) for o in self.car_offers if o.accepted)
        paid = 0
        value = Fraction(0)
        worst = Fraction(0)
        counted: set[bytes] = set()
        session, previous_nj = None, 0
        for verdict in sorted(self.car_verdicts, key=lambda v: v.received_at):
            if verdict.verdict != "pay" or verdict.amount_msat is None or verdict.car_energy_nj is None:
                continue
            rates = [rate for at, rate in accepted if at <= verdict.received_at]
            if not rates:
                continue
            if verdict.session_id != session:
                session, previous_nj = verdict.session_id, 0
            value += msat_for_energy(verdict.car_energy_nj - previous_nj, rates[-1])
            previous_nj = verdict.car_energy_nj
            state = self.car_journal_payments.get(verdict.payment_hash or b"", ("", 0, 0))[0]
            if state == "succeeded" and verdict.payment_hash not in counted:
                counted.add(verdict.payment_hash)
                paid += verdict.amount_msat
            worst = max(worst, paid - value)
        return math.ceil(worst)


def _connect(path: Path) -> sqlite3.Connection | None:
    if not path.exists():
        return None
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5.0)
    conn.row_factory = sqlite3.Row
    return conn


def _read(path: Path, fill) -> None:
    conn = _connect(path)
    if conn is None:
        return
    try:
        fill(conn)
    except sqlite3.OperationalError as exc:
        # A book whose schema is not there yet (the daemon is still creating it) reads as empty.
        if "no such table" not in str(exc):
            raise
    finally:
        conn.close()


def read_books(simnet_db: Path, wall_ledger: Path, car_journal: Path, *, payer: str = "car",
               payee: str = "wall") -> Books:
    books = Books()

    def network(conn: sqlite3.Connection) -> None:
        books.car_payments = [
            NetworkPayment(bytes(row["payment_hash"]), row["value_msat"], row["fee_msat"],
                           row["status"] == PaymentStatus.SUCCEEDED)
            for row in conn.execute("SELECT payment_hash, value_msat, fee_msat, status FROM payment "
                                    "WHERE payer = ? ORDER BY payment_index", (payer,))
        ]
        books.wall_settled = {
            bytes(row["payment_hash"]): row["amt_paid_msat"]
            for row in conn.execute("SELECT payment_hash, amt_paid_msat FROM invoice WHERE node = ? AND state = ?",
                                    (payee, int(InvoiceState.SETTLED)))
        }

    def wall(conn: sqlite3.Connection) -> None:
        books.wall_sessions = conn.execute("SELECT * FROM sessions ORDER BY id").fetchall()
        books.wall_invoices = [
            WallInvoice(row["ref"], row["session_id"], row["kind"], row["amount_msat"], Fraction(row["energy_nj"]),
                        row["rate_msat_per_kwh"], row["state"],
                        bytes(row["r_hash"]) if row["r_hash"] is not None else None, row["amt_paid_msat"])
            for row in conn.execute("SELECT i.*, st.amt_paid_msat FROM invoices i "
                                    "LEFT JOIN settlements st ON st.invoice_id = i.id ORDER BY i.id")
        ]
        books.wall_offers = [
            Offer(row["offered_at"], row["rate_msat_per_kwh"], row["payment_msat"],
                  None if row["answer"] is None else row["answer"] == "accepted")
            for row in conn.execute("SELECT * FROM offers ORDER BY id")
        ]
        books.wall_events = [(row["kind"], row["detail"]) for row in conn.execute("SELECT * FROM events ORDER BY id")]

    def car(conn: sqlite3.Connection) -> None:
        books.car_sessions = conn.execute("SELECT * FROM sessions ORDER BY id").fetchall()
        books.car_offers = [
            Offer(row["received_at"], row["rate_msat_per_kwh"], row["payment_msat"], row["verdict"] == "accepted")
            for row in conn.execute("SELECT * FROM offers ORDER BY id")
        ]
        books.car_verdicts = [
            CarVerdict(row["session_id"], row["received_at"], row["verdict"], row["code"],
                       bytes.fromhex(row["payment_hash"]) if row["payment_hash"] else None,
                       row["amount_msat"], row["car_energy_nj"])
            for row in conn.execute("SELECT * FROM invoices ORDER BY id")
        ]
        books.car_journal_payments = {
            bytes.fromhex(row["payment_hash"]): (row["state"], row["amount_msat"], row["fee_msat"] or 0)
            for row in conn.execute("SELECT payment_hash, state, amount_msat, fee_msat FROM payments")
        }

    _read(simnet_db, network)
    _read(wall_ledger, wall)
    _read(car_journal, car)
    return books

