"""The simulated network's books: nodes, keys, channels, invoices and payments in one SQLite file.

Every transition that moves msat (a payment settling, a hold invoice locking, settling or
being cancelled) is one SQLite transaction, so a kill at any instant leaves either the state
before or the state after, never a lost or doubled msat. Nothing here reads a clock or
touches the network: callers pass ``now_ns``.

Channel model. Each node has a single channel to a hidden routing node, so that a payment
between any two nodes is a two-hop route whose hop charges the routing fee. A node listed as
``NAME:SATS`` funds ``SATS`` on its own side, and the router mirrors the same amount towards
the next listed node (the last one's towards the first), giving that node inbound liquidity:
the default ``car:1000000 wall`` is "car has a 1,000,000 sat channel to wall" as both nodes see
it. A payment of A msat with routing fee F moves A+F from the payer's side to the router's
side of the payer's channel, and A from the router's side to the payee's side of the payee's
channel; the router keeps F. Capacities therefore never change, and
``sum(local + unsettled_local) + router fees`` is constant. Channel reserves, commitment fees
and on-chain activity are not modelled.
"""

from __future__ import annotations

import enum
import hashlib
import os
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import coincurve

from distributedcharge.journal import open_journal, transaction

NS_PER_S = 1_000_000_000
# Regtest chain the nodes pretend to follow: a block every ten minutes from the network's birth.
GENESIS_HEIGHT = 200
BLOCK_INTERVAL_S = 600
# A short channel id shape (block, tx, output) for the single channel each node has.
CHANNEL_BLOCK = 101


class InvoiceState(enum.IntEnum):
    """Numbers as in ``lnrpc.Invoice.InvoiceState``."""

    OPEN = 0
    SETTLED = 1
    CANCELED = 2
    ACCEPTED = 3


class HtlcState(enum.IntEnum):
    """Numbers as in ``lnrpc.InvoiceHTLCState``."""

    ACCEPTED = 0
    SETTLED = 1
    CANCELED = 2


class PaymentStatus(enum.IntEnum):
    """Numbers as in ``lnrpc.Payment.PaymentStatus``."""

    IN_FLIGHT = 1
    SUCCEEDED = 2
    FAILED = 3


class FailureReason(enum.IntEnum):
    """Numbers as in ``lnrpc.PaymentFailureReason``."""

    NONE = 0
    TIMEOUT = 1
    NO_ROUTE = 2
    ERROR = 3
    INCORRECT_PAYMENT_DETAILS = 4
    INSUFFICIENT_BALANCE = 5
    CANCELED = 6


class LndError(Exception):
    """A refusal as lnd words it; ``code`` names the ``grpc.StatusCode`` lnd answers with."""

    def __init__(self, message: str, code: str = "UNKNOWN"):
        super().__init__(message)
        self.message = message
        self.code = code


@dataclass(frozen=True)
class NodeRecord:
    name: str
    position: int
    private_key: bytes
    pubkey: bytes
    port: int | None

    @property
    def pubkey_hex(self) -> str:
        return self.pubkey.hex()

    @property
    def channel_id(self) -> int:
        return CHANNEL_BLOCK << 40 | self.position << 16


@dataclass(frozen=True)
class Balance:
    local_msat: int
    remote_msat: int
    unsettled_local_msat: int
    unsettled_remote_msat: int

    @property
    def capacity_msat(self) -> int:
        return self.local_msat + self.remote_msat + self.unsettled_local_msat + self.unsettled_remote_msat


@dataclass(frozen=True)
class Htlc:
    index: int
    payer: str
    amt_msat: int
    state: HtlcState
    accept_time: int
    accept_height: int
    expiry_height: int
    resolve_time: int


@dataclass(frozen=True)
class InvoiceRecord:
    node: str
    add_index: int
    payment_hash: bytes
    preimage: bytes | None
    payment_addr: bytes
    memo: str
    description_hash: bytes | None
    value_msat: int
    creation_date: int
    expiry: int
    cltv_expiry: int
    is_hold: bool
    payment_request: str
    state: InvoiceState
    amt_paid_msat: int
    settle_index: int
    settle_date: int
    htlc: Htlc | None

    @property
    def is_final(self) -> bool:
        return self.state in (InvoiceState.SETTLED, InvoiceState.CANCELED)

    def is_expired(self, now_ns: int) -> bool:
        return now_ns > (self.creation_date + self.expiry) * NS_PER_S


@dataclass(frozen=True)
class PaymentRecord:
    payment_index: int
    payer: str
    payment_hash: bytes
    payee_pubkey: bytes
    payment_addr: bytes | None
    payment_request: str
    value_msat: int
    fee_limit_msat: int
    fee_msat: int
    status: PaymentStatus
    failure_reason: FailureReason
    preimage: bytes | None
    creation_time_ns: int
    attempt_time_ns: int | None
    resolve_time_ns: int | None
    htlc_locked: bool

    @property
    def is_final(self) -> bool:
        return self.status != PaymentStatus.IN_FLIGHT


@dataclass(frozen=True)
class Change:
    """What one transition altered, for the caller to tell subscribers about."""

    payment: PaymentRecord | None = None
    invoice: InvoiceRecord | None = None


def routing_fee_msat(amount_msat: int, fee_base_msat: int, fee_ppm: int) -> int:
    """The router's fee: base plus the proportional part rounded up, so no hop works for free."""
    return fee_base_msat + -(-amount_msat * fee_ppm // 1_000_000)


MIGRATIONS = [
    """
    CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
    CREATE TABLE node (
        name TEXT PRIMARY KEY,
        position INTEGER NOT NULL UNIQUE,
        private_key BLOB NOT NULL,
        pubkey BLOB NOT NULL UNIQUE,
        port INTEGER,
        local_msat INTEGER NOT NULL CHECK (local_msat >= 0),
        remote_msat INTEGER NOT NULL CHECK (remote_msat >= 0),
        unsettled_local_msat INTEGER NOT NULL DEFAULT 0 CHECK (unsettled_local_msat >= 0),
        unsettled_remote_msat INTEGER NOT NULL DEFAULT 0 CHECK (unsettled_remote_msat >= 0)
    );
    CREATE TABLE root_key (
        node TEXT NOT NULL REFERENCES node(name),
        storage_id TEXT NOT NULL,
        key BLOB NOT NULL,
        PRIMARY KEY (node, storage_id)
    );
    CREATE TABLE router (id INTEGER PRIMARY KEY CHECK (id = 1), fees_msat INTEGER NOT NULL);
    INSERT INTO router VALUES (1, 0);
    CREATE TABLE invoice (
        node TEXT NOT NULL REFERENCES node(name),
        add_index INTEGER NOT NULL,
        payment_hash BLOB NOT NULL,
        preimage BLOB,
        payment_addr BLOB NOT NULL,
        memo TEXT NOT NULL,
        description_hash BLOB,
        value_msat INTEGER NOT NULL CHECK (value_msat >= 0),
        creation_date INTEGER NOT NULL,
        expiry INTEGER NOT NULL,
        cltv_expiry INTEGER NOT NULL,
        is_hold INTEGER NOT NULL,
        payment_request TEXT NOT NULL,
        state INTEGER NOT NULL,
        amt_paid_msat INTEGER NOT NULL DEFAULT 0,
        settle_index INTEGER NOT NULL DEFAULT 0,
        settle_date INTEGER NOT NULL DEFAULT 0,
        htlc_index INTEGER,
        htlc_payer TEXT,
        htlc_amt_msat INTEGER,
        htlc_state INTEGER,
        htlc_accept_time INTEGER,
        htlc_accept_height INTEGER,
        htlc_expiry_height INTEGER,
        htlc_resolve_time INTEGER,
        PRIMARY KEY (node, payment_hash),
        UNIQUE (node, add_index)
    );
    CREATE TABLE payment (
        payment_index INTEGER PRIMARY KEY AUTOINCREMENT,
        payer TEXT NOT NULL REFERENCES node(name),
        payment_hash BLOB NOT NULL,
        payee_pubkey BLOB NOT NULL,
        payment_addr BLOB,
        payment_request TEXT NOT NULL,
        value_msat INTEGER NOT NULL CHECK (value_msat > 0),
        fee_limit_msat INTEGER NOT NULL,
        fee_msat INTEGER NOT NULL DEFAULT 0,
        status INTEGER NOT NULL,
        failure_reason INTEGER NOT NULL DEFAULT 0,
        preimage BLOB,
        creation_time_ns INTEGER NOT NULL,
        attempt_time_ns INTEGER,
        resolve_time_ns INTEGER,
        htlc_locked INTEGER NOT NULL DEFAULT 0,
        UNIQUE (payer, payment_hash)
    );
    """
]


class NetworkState:
    """The SQLite-backed books of one simulated network (``DIR/simnet.sqlite3``)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.conn = open_journal(self.path, MIGRATIONS)

    def close(self) -> None:
        self.conn.close()

    # --- nodes, keys, chain --------------------------------------------------------------

    def ensure_nodes(self, specs: Sequence[tuple[str, int]], now_ns: int) -> list[str]:
        """Create the listed nodes that do not exist yet and open their channels.

        Returns the names created now. Nodes already in the books keep their keys and
        balances whatever ``specs`` says about them.
        """
        created: list[str] = []
        with transaction(self.conn) as conn:
            conn.execute("INSERT OR IGNORE INTO meta VALUES ('genesis_time', ?)", (now_ns // NS_PER_S,))
            known = {row["name"] for row in conn.execute("SELECT name FROM node")}
            next_position = conn.execute("SELECT COALESCE(MAX(position), -1) + 1 FROM node").fetchone()[0]
            for name, _ in specs:
                if name in known:
                    continue
                key = coincurve.PrivateKey()
                conn.execute(
                    "INSERT INTO node (name, position, private_key, pubkey, local_msat, remote_msat)"
                    " VALUES (?, ?, ?, ?, 0, 0)",
                    (name, next_position, key.secret, key.public_key.format(compressed=True)),
                )
                conn.execute("INSERT INTO root_key VALUES (?, '0', ?)", (name, os.urandom(32)))
                next_position += 1
                created.append(name)
            for index, (name, sats) in enumerate(specs):
                if name in created and sats > 0:
                    peer = specs[(index + 1) % len(specs)][0]
                    conn.execute("UPDATE node SET local_msat = local_msat + ? WHERE name = ?", (sats * 1000, name))
                    conn.execute("UPDATE node SET remote_msat = remote_msat + ? WHERE name = ?", (sats * 1000, peer))
        return created

    def node_names(self) -> list[str]:
        return [row["name"] for row in self.conn.execute("SELECT name FROM node ORDER BY position")]

    def node(self, name: str) -> NodeRecord:
        row = self.conn.execute("SELECT * FROM node WHERE name = ?", (name,)).fetchone()
        if row is None:
            raise KeyError(name)
        return _node(row)

    def node_by_pubkey(self, pubkey: bytes) -> NodeRecord | None:
        row = self.conn.execute("SELECT * FROM node WHERE pubkey = ?", (pubkey,)).fetchone()
        return None if row is None else _node(row)

    def set_port(self, name: str, port: int) -> None:
        with transaction(self.conn) as conn:
            conn.execute("UPDATE node SET port = ? WHERE name = ?", (port, name))

    def root_keys(self, name: str) -> dict[str, bytes]:
        rows = self.conn.execute("SELECT storage_id, key FROM root_key WHERE node = ?", (name,))
        return {row["storage_id"]: row["key"] for row in rows}

    def root_key(self, name: str, storage_id: str) -> bytes:
        """The root key with that id, created on first use as lnd's BakeMacaroon does."""
        self.node(name)
        with transaction(self.conn) as conn:
            conn.execute("INSERT OR IGNORE INTO root_key VALUES (?, ?, ?)", (name, storage_id, os.urandom(32)))
            row = conn.execute(
                "SELECT key FROM root_key WHERE node = ? AND storage_id = ?", (name, storage_id)
            ).fetchone()
        return row["key"]

    def block_height(self, now_ns: int) -> int:
        row = self.conn.execute("SELECT value FROM meta WHERE key = 'genesis_time'").fetchone()
        genesis = now_ns // NS_PER_S if row is None else row["value"]
        return GENESIS_HEIGHT + max(0, now_ns // NS_PER_S - genesis) // BLOCK_INTERVAL_S

    def balance(self, name: str) -> Balance:
        row = self.conn.execute("SELECT * FROM node WHERE name = ?", (name,)).fetchone()
        if row is None:
            raise KeyError(name)
        return _balance(row)

    def fees_msat(self) -> int:
        return self.conn.execute("SELECT fees_msat FROM router").fetchone()[0]

    # --- invoices --------------------------------------------------------------------------

    def add_invoice(
        self,
        node: str,
        *,
        payment_hash: bytes,
        preimage: bytes | None,
        payment_addr: bytes,
        memo: str,
        description_hash: bytes | None,
        value_msat: int,
        creation_date: int,
        expiry: int,
        cltv_expiry: int,
        payment_request: str,
    ) -> InvoiceRecord:
        """Store a new invoice; a hold invoice is one stored without its preimage."""
        with transaction(self.conn) as conn:
            if self._invoice_row(node, payment_hash) is not None:
                raise LndError("invoice with payment hash already exists")
            add_index = conn.execute(
                "SELECT COALESCE(MAX(add_index), 0) + 1 FROM invoice WHERE node = ?", (node,)
            ).fetchone()[0]
            conn.execute(
                "INSERT INTO invoice (node, add_index, payment_hash, preimage, payment_addr, memo,"
                " description_hash, value_msat, creation_date, expiry, cltv_expiry, is_hold,"
                " payment_request, state) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    node, add_index, payment_hash, preimage, payment_addr, memo, description_hash,
                    value_msat, creation_date, expiry, cltv_expiry, int(preimage is None),
                    payment_request, InvoiceState.OPEN,
                ),
            )
        return self._invoice(node, payment_hash)

    def find_invoice(self, node: str, payment_hash: bytes) -> InvoiceRecord | None:
        row = self._invoice_row(node, payment_hash)
        return None if row is None else _invoice(row)

    def find_invoice_by_addr(self, node: str, payment_addr: bytes) -> InvoiceRecord | None:
        row = self.conn.execute(
            "SELECT * FROM invoice WHERE node = ? AND payment_addr = ?", (node, payment_addr)
        ).fetchone()
        return None if row is None else _invoice(row)

    def has_invoices(self, node: str) -> bool:
        return self.conn.execute("SELECT 1 FROM invoice WHERE node = ? LIMIT 1", (node,)).fetchone() is not None

    def invoices_added_after(self, node: str, add_index: int) -> list[InvoiceRecord]:
        rows = self.conn.execute(
            "SELECT * FROM invoice WHERE node = ? AND add_index > ? ORDER BY add_index", (node, add_index)
        )
        return [_invoice(row) for row in rows]

    def invoices_settled_after(self, node: str, settle_index: int) -> list[InvoiceRecord]:
        rows = self.conn.execute(
            "SELECT * FROM invoice WHERE node = ? AND settle_index > ? ORDER BY settle_index", (node, settle_index)
        )
        return [_invoice(row) for row in rows]

    def expire_invoices(self, now_ns: int) -> list[InvoiceRecord]:
        """Cancel open invoices past their expiry, as lnd's expiry watcher does."""
        with transaction(self.conn) as conn:
            rows = conn.execute(
                "SELECT node, payment_hash FROM invoice WHERE state = ? AND (creation_date + expiry) * ? < ?",
                (InvoiceState.OPEN, NS_PER_S, now_ns),
            ).fetchall()
            for row in rows:
                self._set_invoice_state(row["node"], row["payment_hash"], InvoiceState.CANCELED)
        return [self._invoice(row["node"], row["payment_hash"]) for row in rows]

    def settle_invoice(self, node: str, preimage: bytes, now_ns: int) -> Change:
        """SettleInvoice: release an accepted hold invoice's HTLC to the payee."""
        payment_hash = hashlib.sha256(preimage).digest()
        with transaction(self.conn):
            invoice = self._existing_invoice(node, payment_hash)
            if invoice.state == InvoiceState.SETTLED:
                return Change()
            if invoice.state == InvoiceState.OPEN:
                raise LndError("invoice still open")
            if invoice.state == InvoiceState.CANCELED:
                raise LndError("invoice already canceled")
            htlc = invoice.htlc
            assert htlc is not None, "an accepted invoice always has its HTLC"
            payment = self._payment(htlc.payer, payment_hash)
            sent = payment.value_msat + payment.fee_msat
            self._move(htlc.payer, unsettled_local=-sent, remote=sent)
            self._move(node, unsettled_remote=-htlc.amt_msat, local=htlc.amt_msat)
            self.conn.execute("UPDATE router SET fees_msat = fees_msat + ?", (payment.fee_msat,))
            self._settle_invoice_row(node, payment_hash, preimage, now_ns)
            self._finish_payment(htlc.payer, payment_hash, PaymentStatus.SUCCEEDED, FailureReason.NONE,
                                 now_ns, preimage=preimage)
        return Change(self._payment(htlc.payer, payment_hash), self._invoice(node, payment_hash))

    def cancel_invoice(self, node: str, payment_hash: bytes, now_ns: int) -> Change:
        """CancelInvoice: an open invoice becomes unpayable; an accepted one returns the HTLC."""
        with transaction(self.conn):
            invoice = self._existing_invoice(node, payment_hash)
            if invoice.state == InvoiceState.CANCELED:
                return Change()
            if invoice.state == InvoiceState.SETTLED:
                raise LndError("invoice already settled")
            payment = None
            if invoice.state == InvoiceState.ACCEPTED:
                htlc = invoice.htlc
                assert htlc is not None, "an accepted invoice always has its HTLC"
                locked = self._payment(htlc.payer, payment_hash)
                sent = locked.value_msat + locked.fee_msat
                self._move(htlc.payer, unsettled_local=-sent, local=sent)
                self._move(node, unsettled_remote=-htlc.amt_msat, remote=htlc.amt_msat)
                self.conn.execute(
                    "UPDATE invoice SET htlc_state = ?, htlc_resolve_time = ? WHERE node = ? AND payment_hash = ?",
                    (HtlcState.CANCELED, now_ns // NS_PER_S, node, payment_hash),
                )
                self._finish_payment(htlc.payer, payment_hash, PaymentStatus.FAILED,
                                     FailureReason.INCORRECT_PAYMENT_DETAILS, now_ns, fee_msat=0)
                payment = htlc.payer
            self._set_invoice_state(node, payment_hash, InvoiceState.CANCELED)
        return Change(
            None if payment is None else self._payment(payment, payment_hash),
            self._invoice(node, payment_hash),
        )

    # --- payments --------------------------------------------------------------------------

    def begin_payment(
        self,
        payer: str,
        *,
        payment_hash: bytes,
        payee_pubkey: bytes,
        payment_addr: bytes | None,
        payment_request: str,
        value_msat: int,
        fee_limit_msat: int,
        now_ns: int,
    ) -> PaymentRecord:
        """Record a payment as in flight; lnd's control tower refuses a second live one."""
        with transaction(self.conn) as conn:
            existing = self._payment_row(payer, payment_hash)
            if existing is not None:
                if existing["status"] == PaymentStatus.IN_FLIGHT:
                    raise LndError("payment is in transition", "ALREADY_EXISTS")
                if existing["status"] == PaymentStatus.SUCCEEDED:
                    raise LndError("invoice is already paid", "ALREADY_EXISTS")
                conn.execute("DELETE FROM payment WHERE payer = ? AND payment_hash = ?", (payer, payment_hash))
            conn.execute(
                "INSERT INTO payment (payer, payment_hash, payee_pubkey, payment_addr, payment_request,"
                " value_msat, fee_limit_msat, status, creation_time_ns) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (payer, payment_hash, payee_pubkey, payment_addr, payment_request, value_msat,
                 fee_limit_msat, PaymentStatus.IN_FLIGHT, now_ns),
            )
        return self._payment(payer, payment_hash)

    def find_payment(self, payer: str, payment_hash: bytes) -> PaymentRecord | None:
        row = self._payment_row(payer, payment_hash)
        return None if row is None else _payment(row)

    def unrouted_payments(self) -> list[PaymentRecord]:
        """In-flight payments whose HTLC was never sent (the process stopped in between)."""
        rows = self.conn.execute(
            "SELECT * FROM payment WHERE status = ? AND htlc_locked = 0 ORDER BY payment_index",
            (PaymentStatus.IN_FLIGHT,),
        )
        return [_payment(row) for row in rows]

    def route_payment(
        self,
        payer: str,
        payment_hash: bytes,
        *,
        fee_base_msat: int,
        fee_ppm: int,
        forced_failure: bool,
        reachable: Callable[[str], bool],
        now_ns: int,
    ) -> Change:
        """Send the HTLC of an in-flight payment and resolve it as far as the payee allows.

        A plain invoice settles at once; a hold invoice locks the HTLC and leaves the payment
        in flight until the payee settles or cancels. Failures move nothing.
        """
        with transaction(self.conn):
            payment = self.find_payment(payer, payment_hash)
            if payment is None or payment.is_final or payment.htlc_locked:
                return Change()
            invoice_change, reason = self._try_route(payment, fee_base_msat, fee_ppm, forced_failure,
                                                     reachable, now_ns)
            if reason is not None:
                self._finish_payment(payer, payment_hash, PaymentStatus.FAILED, reason, now_ns, fee_msat=0)
        return Change(self._payment(payer, payment_hash), invoice_change)

    def _try_route(
        self,
        payment: PaymentRecord,
        fee_base_msat: int,
        fee_ppm: int,
        forced_failure: bool,
        reachable: Callable[[str], bool],
        now_ns: int,
    ) -> tuple[InvoiceRecord | None, FailureReason | None]:
        payer, value = payment.payer, payment.value_msat
        if forced_failure:
            return None, FailureReason.NO_ROUTE
        payee = self.node_by_pubkey(payment.payee_pubkey)
        if payee is None or not reachable(payee.name):
            return None, FailureReason.NO_ROUTE
        fee = routing_fee_msat(value, fee_base_msat, fee_ppm)
        payer_balance = self.balance(payer)
        if payer_balance.local_msat < value + fee:
            return None, FailureReason.INSUFFICIENT_BALANCE
        if fee > payment.fee_limit_msat:
            return None, FailureReason.NO_ROUTE
        # The router forwards before the incoming HTLC settles, so even a self-payment (a
        # circle through the router) needs inbound liquidity that is there already.
        if self.balance(payee.name).remote_msat < value:
            return None, FailureReason.NO_ROUTE

        self.conn.execute(
            "UPDATE payment SET attempt_time_ns = ? WHERE payer = ? AND payment_hash = ?",
            (now_ns, payer, payment.payment_hash),
        )
        invoice = self.find_invoice(payee.name, payment.payment_hash)
        if invoice is not None and invoice.state == InvoiceState.OPEN and invoice.is_expired(now_ns):
            self._set_invoice_state(payee.name, payment.payment_hash, InvoiceState.CANCELED)
            return self._invoice(payee.name, payment.payment_hash), FailureReason.INCORRECT_PAYMENT_DETAILS
        if (
            invoice is None
            or invoice.state != InvoiceState.OPEN
            or invoice.payment_addr != payment.payment_addr
            or value < invoice.value_msat
            or (invoice.value_msat and value > 2 * invoice.value_msat)
        ):
            return None, FailureReason.INCORRECT_PAYMENT_DETAILS

        self._record_htlc(payee, payment, now_ns)
        if invoice.is_hold:
            self._move(payer, local=-(value + fee), unsettled_local=value + fee)
            self._move(payee.name, remote=-value, unsettled_remote=value)
            self.conn.execute(
                "UPDATE payment SET htlc_locked = 1, fee_msat = ? WHERE payer = ? AND payment_hash = ?",
                (fee, payer, payment.payment_hash),
            )
            self._set_invoice_state(payee.name, payment.payment_hash, InvoiceState.ACCEPTED)
        else:
            self._move(payer, local=-(value + fee), remote=value + fee)
            self._move(payee.name, remote=-value, local=value)
            self.conn.execute("UPDATE router SET fees_msat = fees_msat + ?", (fee,))
            self._settle_invoice_row(payee.name, payment.payment_hash, invoice.preimage, now_ns)
            self._finish_payment(payer, payment.payment_hash, PaymentStatus.SUCCEEDED, FailureReason.NONE,
                                 now_ns, preimage=invoice.preimage, fee_msat=fee)
        return self._invoice(payee.name, payment.payment_hash), None

    # --- internals -------------------------------------------------------------------------

    def _record_htlc(self, payee: NodeRecord, payment: PaymentRecord, now_ns: int) -> None:
        height = self.block_height(now_ns)
        invoice = self._invoice(payee.name, payment.payment_hash)
        self.conn.execute(
            "UPDATE invoice SET amt_paid_msat = ?, htlc_index = ?, htlc_payer = ?, htlc_amt_msat = ?,"
            " htlc_state = ?, htlc_accept_time = ?, htlc_accept_height = ?, htlc_expiry_height = ?"
            " WHERE node = ? AND payment_hash = ?",
            (
                payment.value_msat, payment.payment_index, payment.payer, payment.value_msat,
                HtlcState.ACCEPTED, now_ns // NS_PER_S, height, height + invoice.cltv_expiry,
                payee.name, payment.payment_hash,
            ),
        )

    def _settle_invoice_row(self, node: str, payment_hash: bytes, preimage: bytes | None, now_ns: int) -> None:
        settle_index = self.conn.execute(
            "SELECT COALESCE(MAX(settle_index), 0) + 1 FROM invoice WHERE node = ?", (node,)
        ).fetchone()[0]
        now_s = now_ns // NS_PER_S
        self.conn.execute(
            "UPDATE invoice SET state = ?, preimage = ?, settle_index = ?, settle_date = ?, htlc_state = ?,"
            " htlc_resolve_time = ? WHERE node = ? AND payment_hash = ?",
            (InvoiceState.SETTLED, preimage, settle_index, now_s, HtlcState.SETTLED, now_s, node, payment_hash),
        )

    def _set_invoice_state(self, node: str, payment_hash: bytes, state: InvoiceState) -> None:
        self.conn.execute(
            "UPDATE invoice SET state = ? WHERE node = ? AND payment_hash = ?", (state, node, payment_hash)
        )

    def _finish_payment(
        self,
        payer: str,
        payment_hash: bytes,
        status: PaymentStatus,
        reason: FailureReason,
        now_ns: int,
        *,
        preimage: bytes | None = None,
        fee_msat: int | None = None,
    ) -> None:
        self.conn.execute(
            "UPDATE payment SET status = ?, failure_reason = ?, preimage = ?, resolve_time_ns = ?,"
            " htlc_locked = 0, fee_msat = COALESCE(?, fee_msat) WHERE payer = ? AND payment_hash = ?",
            (status, reason, preimage, now_ns, fee_msat, payer, payment_hash),
        )

    def _move(
        self,
        name: str,
        *,
        local: int = 0,
        remote: int = 0,
        unsettled_local: int = 0,
        unsettled_remote: int = 0,
    ) -> None:
        self.conn.execute(
            "UPDATE node SET local_msat = local_msat + ?, remote_msat = remote_msat + ?,"
            " unsettled_local_msat = unsettled_local_msat + ?, unsettled_remote_msat = unsettled_remote_msat + ?"
            " WHERE name = ?",
            (local, remote, unsettled_local, unsettled_remote, name),
        )

    def _invoice_row(self, node: str, payment_hash: bytes) -> sqlite3.Row | None:
        return self.conn.execute(
            "SELECT * FROM invoice WHERE node = ? AND payment_hash = ?", (node, payment_hash)
        ).fetchone()

    def _invoice(self, node: str, payment_hash: bytes) -> InvoiceRecord:
        row = self._invoice_row(node, payment_hash)
        assert row is not None, "caller checked the invoice exists"
        return _invoice(row)

    def _existing_invoice(self, node: str, payment_hash: bytes) -> InvoiceRecord:
        invoice = self.find_invoice(node, payment_hash)
        if invoice is None:
            raise LndError("unable to locate invoice")
        return invoice

    def _payment_row(self, payer: str, payment_hash: bytes) -> sqlite3.Row | None:
        return self.conn.execute(
            "SELECT * FROM payment WHERE payer = ? AND payment_hash = ?", (payer, payment_hash)
        ).fetchone()

    def _payment(self, payer: str, payment_hash: bytes) -> PaymentRecord:
        row = self._payment_row(payer, payment_hash)
        assert row is not None, "caller checked the payment exists"
        return _payment(row)


def _node(row: sqlite3.Row) -> NodeRecord:
    return NodeRecord(row["name"], row["position"], row["private_key"], row["pubkey"], row["port"])


def _balance(row: sqlite3.Row) -> Balance:
    return Balance(row["local_msat"], row["remote_msat"], row["unsettled_local_msat"], row["unsettled_remote_msat"])


def _invoice(row: sqlite3.Row) -> InvoiceRecord:
    htlc = None
    if row["htlc_state"] is not None:
        htlc = Htlc(
            index=row["htlc_index"],
            payer=row["htlc_payer"],
            amt_msat=row["htlc_amt_msat"],
            state=HtlcState(row["htlc_state"]),
            accept_time=row["htlc_accept_time"],
            accept_height=row["htlc_accept_height"],
            expiry_height=row["htlc_expiry_height"],
            resolve_time=row["htlc_resolve_time"] or 0,
        )
    return InvoiceRecord(
        node=row["node"],
        add_index=row["add_index"],
        payment_hash=row["payment_hash"],
        preimage=row["preimage"],
        payment_addr=row["payment_addr"],
        memo=row["memo"],
        description_hash=row["description_hash"],
        value_msat=row["value_msat"],
        creation_date=row["creation_date"],
        expiry=row["expiry"],
        cltv_expiry=row["cltv_expiry"],
        is_hold=bool(row["is_hold"]),
        payment_request=row["payment_request"],
        state=InvoiceState(row["state"]),
        amt_paid_msat=row["amt_paid_msat"],
        settle_index=row["settle_index"],
        settle_date=row["settle_date"],
        htlc=htlc,
    )


def _payment(row: sqlite3.Row) -> PaymentRecord:
    return PaymentRecord(
        payment_index=row["payment_index"],
        payer=row["payer"],
        payment_hash=row["payment_hash"],
        payee_pubkey=row["payee_pubkey"],
        payment_addr=row["payment_addr"],
        payment_request=row["payment_request"],
        value_msat=row["value_msat"],
        fee_limit_msat=row["fee_limit_msat"],
        fee_msat=row["fee_msat"],
        status=PaymentStatus(row["status"]),
        failure_reason=FailureReason(row["failure_reason"]),
        preimage=row["preimage"],
        creation_time_ns=row["creation_time_ns"],
        attempt_time_ns=row["attempt_time_ns"],
        resolve_time_ns=row["resolve_time_ns"],
        htlc_locked=bool(row["htlc_locked"]),
    )
