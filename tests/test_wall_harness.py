"""An in-process wall unit for the policy tests: a fake LND, a fake TWC and the ledger.

It plays the daemon's part: every action is written to the ledger first, then carried
out against the fakes, whose answers go back into the policy as events.
"""

from __future__ import annotations

import hashlib
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from fractions import Fraction
from pathlib import Path

from distributedcharge.lightning import bech32
from distributedcharge.units import NJ_PER_WH, msat_for_energy
from wallunit.actions import (
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
from wallunit.ledger import Ledger
from wallunit.policy import SellerPolicy, SellerSettings
from wallunit.tariff import Tariff

START = datetime(2024, 6, 3, 12, 0, tzinfo=timezone.utc)  # a Monday


def fake_bolt11(tag: str, amount_msat: int) -> str:
    data = bech32.convert_bits(hashlib.sha256(tag.encode()).digest() * 2, 8, 5, True)
    return bech32.encode(f"lnbcrt{amount_msat * 10}p", data)


@dataclass
class NodeInvoice:
    ref: str
    amount_msat: int
    hold: bool
    state: str = "OPEN"
    preimage: bytes | None = None


@dataclass
class Wall:
    settings: SellerSettings = field(default_factory=lambda: SellerSettings(manual=None))
    tariff: Tariff = field(default_factory=lambda: Tariff.fixed(100_000))
    ledger_path: Path | None = None
    now: datetime = START
    node_up: bool = True
    twc_obeys: bool = True

    def __post_init__(self) -> None:
        self.policy = SellerPolicy(self.settings, self.tariff)
        self.ledger = Ledger(self.ledger_path or ":memory:")
        self.node: dict[bytes, NodeInvoice] = {}
        self.power_on = True
        self.actions: list = []
        self.sent: list[SendInvoice] = []
        self.shown: dict[str, ShowPaymentRequest] = {}
        self.session_id: int | None = None
        self.events: deque = deque()
        self.settlements: list[tuple[bytes, int]] = []

    # driving --------------------------------------------------------------------------

    def run(self, actions: list) -> list:
        """Carry out actions, and whatever they lead to; return everything that happened."""
        done = []
        pending = deque(actions)
        while pending:
            action = pending.popleft()
            done.append(action)
            self.actions.append(action)
            pending.extend(self._execute(action))
        return done

    def advance(self, seconds: float) -> list:
        self.now += timedelta(seconds=seconds)
        return self.run(self.policy.tick(self.now))

    def plug_in(self) -> list:
        self.session_id = self.ledger.start_session(self.now)
        return self.run(self.policy.plugged_in(self.now, self.session_id))

    def unplug(self) -> list:
        return self.run(self.policy.unplugged(self.now))

    def accept(self, version: int = 1) -> list:
        """The car says yes; like the SWCAN link, report whole-sat terms for a v1 car."""
        offer = self.policy.session.offer
        offer = offer.as_v1() if version == 1 else offer
        self.ledger.record_answer(self.session_id, self.now, True, version)
        return self.run(self.policy.car_accepted(self.now, offer, version))

    def deliver(self, nj: int, seconds: float = 1.0) -> list:
        """One meter reading's energy; the TWC only delivers while its contactor is closed."""
        self.now += timedelta(seconds=seconds)
        if not self.power_on:
            nj = 0
        done = self.run(self.policy.energy_delivered(self.now, nj))
        return done + self.run(self.policy.tick(self.now))

    def charge_wh(self, wh: int | Fraction, step_wh: int | Fraction = 2, pay=None) -> None:
        """Deliver about ``wh`` in readings of ``step_wh``; ``pay`` is called after each."""
        remaining = Fraction(wh) * NJ_PER_WH
        step = int(Fraction(step_wh) * NJ_PER_WH)
        while remaining > 0:
            self.deliver(int(min(step, remaining)))
            remaining -= step
            if pay:
                pay()

    # the car paying -------------------------------------------------------------------

    def unpaid(self) -> list[SendInvoice]:
        return [s for s in self.sent if self.node[self._hash_of(s.ref)].state == "OPEN"]

    def pay(self, send: SendInvoice) -> list:
        r_hash = self._hash_of(send.ref)
        invoice = self.node[r_hash]
        if invoice.state != "OPEN" or not self.node_up:
            return []
        invoice.state = "SETTLED"
        return self._report_settled(r_hash, invoice.amount_msat)

    def pay_all(self) -> None:
        for send in self.unpaid():
            self.pay(send)

    def hold(self, ref: str) -> list:
        r_hash = self._hash_of(ref)
        invoice = self.node[r_hash]
        assert invoice.hold and invoice.state == "OPEN"
        invoice.state = "ACCEPTED"
        self.ledger.record_accepted(r_hash, self.now)
        return self.run(self.policy.invoice_accepted(self.now, r_hash, invoice.amount_msat))

    def _report_settled(self, r_hash: bytes, amount: int) -> list:
        self.settlements.append((r_hash, amount))
        self.ledger.record_settled(r_hash, amount, self.now)
        return self.run(self.policy.invoice_settled(self.now, r_hash, amount))

    def _hash_of(self, ref: str) -> bytes:
        return next(h for h, inv in self.node.items() if inv.ref == ref)

    # the daemon's side ----------------------------------------------------------------

    def _execute(self, action) -> list:
        preimage = None
        if isinstance(action, CreateHoldInvoice):
            preimage = hashlib.sha256(b"preimage" + action.ref.encode()).digest()
        sid = self.policy.session.session_id if self.policy.session else self.session_id
        self.ledger.record_action(self.now, action, session_id=sid, preimage=preimage)
        if isinstance(action, (CreateInvoice, CreateHoldInvoice)):
            if not self.node_up:
                return self.policy.invoice_failed(self.now, action.ref, "node unreachable")
            hold = isinstance(action, CreateHoldInvoice)
            r_hash = hashlib.sha256(preimage).digest() if hold else hashlib.sha256(action.ref.encode()).digest()
            self.node[r_hash] = NodeInvoice(action.ref, action.amount_msat, hold, preimage=preimage)
            payment_request = fake_bolt11(action.ref, action.amount_msat)
            self.ledger.invoice_created(action.ref, self.now, r_hash, payment_request)
            return self.policy.invoice_created(self.now, action.ref, r_hash, payment_request)
        if isinstance(action, SendInvoice):
            self.sent.append(action)
        elif isinstance(action, ShowPaymentRequest):
            self.shown[action.purpose] = action
        elif isinstance(action, CutPower):
            if self.twc_obeys:
                self.power_on = False
                return self.policy.stop_confirmed(self.now)
            return self.policy.stop_failed(self.now, "TWC ignored the stop")
        elif isinstance(action, ResumePower):
            self.power_on = True
        elif isinstance(action, CancelInvoice):
            invoice = self.node.get(action.r_hash)
            if invoice and self.node_up and invoice.state in ("OPEN", "ACCEPTED"):
                invoice.state = "CANCELED"
                self.ledger.record_canceled(action.r_hash, self.now)
                return self.policy.invoice_canceled(self.now, action.r_hash)
        elif isinstance(action, SettleInvoice):
            invoice = self.node.get(action.r_hash)
            assert self.ledger.preimage(action.r_hash) == invoice.preimage
            if self.node_up and invoice.state == "ACCEPTED":
                invoice.state = "SETTLED"
                self.settlements.append((action.r_hash, invoice.amount_msat))
                self.ledger.record_settled(action.r_hash, invoice.amount_msat, self.now)
                return self.policy.invoice_settled(self.now, action.r_hash, invoice.amount_msat)
        elif not isinstance(action, (MakeOffer, HidePaymentRequest, StopSale, RepeatOffer, StopRepeatingOffer, Ignored,
                                     SessionEnded)):
            raise AssertionError(f"unexpected action {action!r}")
        return []

    # what a user would look at --------------------------------------------------------

    def of(self, kind) -> list:
        return [a for a in self.actions if isinstance(a, kind)]

    def value_delivered_msat(self) -> Fraction:
        return msat_for_energy(self.policy.session.delivered_nj, self.policy.session.offer.rate_msat_per_kwh)


def test_harness_pays_what_it_sends():
    wall = Wall()
    wall.plug_in()
    wall.accept()
    assert len(wall.sent) == 1
    wall.pay(wall.sent[0])
    assert wall.ledger.paid_total_msat() == 3000
    assert wall.unpaid() == [wall.sent[1]]
