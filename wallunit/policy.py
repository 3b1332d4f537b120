"""The seller's policy: when to offer, invoice, cut and resume. Sans-IO.

Every input is a method taking ``now`` (an aware datetime: the tariff is local time)
and returning the actions to take, in order. Nothing here blocks, sleeps or talks to a
device; the daemon records each action in the ledger, carries it out and reports back.
Call :meth:`SellerPolicy.tick` at least once a second.

Money and energy stay exact: credit is ``Wh paid for - Wh delivered`` in nanojoules as a
Fraction, from our own meter, and the v1 thresholds are exact fractions of the energy
one payment buys:

* next invoice when credit < 2 x 0.9 x that energy, at most one invoice outstanding;
* cut power when credit < 0.2 x 1.01 x it after the first payment, or < -0.3 x 1.01 x it
  before; power comes back when payments lift the credit above the line again, as long
  as the cable has stayed in.

An offer prices one payment of ``wh_per_payment`` in exact msat. The v1 offer frame
carries whole sat, so a v1 car agrees to the payment rounded up to a whole sat (the SWCAN
link reports those terms, ``Offer.as_v1()``) and the energy per payment follows exactly:
25 Wh at 100 sat/kWh is 2.5 sat, so a v1 car pays 3 sat for exactly 30 Wh. When the
tariff period changes a v2 session is offered the new rate and no invoice goes out until
the car answers; a refusal ends the sale until unplug. A v1 session cannot change its
rate, so it keeps the one it accepted until unplug. Every invoice is at the rate of the
offer in force when it is issued.

Power: ``CutPower`` is answered with ``stop_confirmed`` or ``stop_failed`` (the TWC
master's StopResult, which it confirms by the measured current); a failed stop is asked
again every ``retry_s``. ``ResumePower`` needs no answer. While the Lightning node is
unreachable nothing can be invoiced or seen paid, so power is cut and comes back with
the node; an invoice still open then is replaced, as the car's tries to pay it failed
meanwhile and a car stops trying after a few. Between sessions the TWC stays off: an unplug cuts power and the next plug-in
turns it back on.

If the car never answers the offer within ``offer_timeout_s`` and manual pay is on, the
session becomes a manual-pay sale (see :mod:`wallunit.manual`).

A v1 car that restarts mid-session has lost its acceptance: it waits for an offer and drops
every invoice, while the wall, still selling, never offers again. So once a v1 car has been
behind on payments for ``v1_repeat_offer_after_s`` with an invoice open, the accepted terms
go out again (``RepeatOffer``). An original car that still holds its acceptance ignores
offers, and its next payment stops the repeats; one that restarted answers, and as it has
dropped the invoices it held, the open ones are canceled and a fresh one follows.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from fractions import Fraction

from distributedcharge.units import format_msat, msat_for_energy

from .actions import (
    Action,
    energy_per_payment,
    CancelInvoice,
    CreateInvoice,
    CutPower,
    Ignored,
    MakeOffer,
    Offer,
    RepeatOffer,
    ResumePower,
    SendInvoice,
    SessionEnded,
    StopRepeatingOffer,
    StopSale,
)
from .manual import ManualPay, ManualSettings, format_kwh
from .tariff import Tariff


@dataclass(frozen=True)
class SellerSettings:
    wh_per_payment: Fraction = Fraction(25)
    next_invoice_below: Fraction = Fraction(2) * Fraction(9, 10)
    cut_below: Fraction = Fraction(2, 10) * Fraction(101, 100)
    cut_below_before_first: Fraction = Fraction(-3, 10) * Fraction(101, 100)
    invoice_expiry_s: int = 600
    offer_timeout_s: float = 30.0
    retry_s: float = 5.0
    v1_repeat_offer_after_s: float = 10.0
    manual: ManualSettings | None = field(default_factory=ManualSettings)


def make_offer(rate_msat_per_kwh: int, wh_per_payment: Fraction) -> Offer:
    """One payment of ``wh_per_payment`` at the rate, rounded up to a whole msat."""
    return Offer(rate_msat_per_kwh, math.ceil(Fraction(rate_msat_per_kwh) * Fraction(wh_per_payment) / 1000))


class Phase(enum.Enum):
    OFFERING = "offering"  # waiting for the car's answer to the first offer
    SELLING = "selling"
    REOFFERING = "re-offering"  # v2: a new period's rate is out, waiting for the answer
    REFUSED = "refused"  # the car turned the first offer down; a new period brings a new offer
    STOPPED = "stopped"  # the car refused a tariff change: no more sales until unplug
    MANUAL = "manual pay"


class Power(enum.Enum):
    ON = "on"
    CUTTING = "cutting"  # stop asked for, waiting for the TWC master's current-confirmed result
    CUT = "cut"


@dataclass
class _Invoice:
    ref: str
    amount_msat: int
    energy_nj: Fraction
    r_hash: bytes | None = None
    expires_at: datetime | None = None
    state: str = "creating"  # creating, open, settled, canceled


@dataclass
class _Session:
    session_id: int
    started_at: datetime
    offer: Offer
    phase: Phase = Phase.OFFERING
    accepted: Offer | None = None
    version: int | None = None
    delivered_nj: int = 0
    value_msat: Fraction = Fraction(0)
    paid_msat: int = 0
    paid_energy_nj: Fraction = Fraction(0)
    max_exposure_msat: Fraction = Fraction(0)
    invoices: dict[str, _Invoice] = field(default_factory=dict)
    by_hash: dict[bytes, _Invoice] = field(default_factory=dict)
    # The invoices still being created or open, in the order issued: every meter reading and
    # tick looks at them, so they are kept apart from the session's thousands of others.
    pending: dict[str, _Invoice] = field(default_factory=dict)
    count: int = 0
    invoice_retry_at: datetime | None = None
    manual: ManualPay | None = None
    behind_since: datetime | None = None
    repeating_offer: bool = False

    @property
    def outstanding(self) -> _Invoice | None:
        return next(iter(self.pending.values()), None)

    def add(self, invoice: _Invoice) -> None:
        self.invoices[invoice.ref] = invoice
        self.pending[invoice.ref] = invoice

    def close(self, invoice: _Invoice, state: str) -> None:
        """Mark ``invoice`` settled or canceled: it is no longer outstanding."""
        invoice.state = state
        self.pending.pop(invoice.ref, None)

    def cancel_open(self, reason: str, expired_by: datetime | None = None) -> list[Action]:
        """Close the open invoices (with ``expired_by``, only those expired by then) and ask
        the node to cancel them. Should the car have paid one after all, the node reports it
        settled and it is counted."""
        cancels: list[Action] = []
        for invoice in list(self.pending.values()):
            if invoice.state == "open" and (expired_by is None or expired_by >= invoice.expires_at):
                self.close(invoice, "canceled")
                cancels.append(CancelInvoice(invoice.r_hash, reason))
        return cancels


class SellerPolicy:
    def __init__(self, settings: SellerSettings, tariff: Tariff, power_on: bool = True, node_up: bool = True):
        self.settings = settings
        self.tariff = tariff
        self.power = Power.ON if power_on else Power.CUT
        self.node_up = node_up
        self.session: _Session | None = None
        self._power_retry_at: datetime | None = None
        self._manual_tails: list[ManualPay] = []
        self._late_refs: set[str] = set()

    # views ------------------------------------------------------------------------------

    @property
    def energy_per_payment_nj(self) -> Fraction:
        s = self._need_session()
        return energy_per_payment(s.accepted or s.offer)

    @property
    def credit_nj(self) -> Fraction:
        s = self._need_session()
        return s.paid_energy_nj - s.delivered_nj

    @property
    def exposure_msat(self) -> Fraction:
        """Value delivered minus money paid (or held, for manual pay) this session."""
        s = self._need_session()
        secured = s.manual.secured_msat if s.manual else s.paid_msat
        return s.value_msat - secured

    def cut_line_nj(self) -> Fraction:
        s = self._need_session()
        share = self.settings.cut_below if s.paid_msat else self.settings.cut_below_before_first
        return share * self.energy_per_payment_nj

    def _need_session(self) -> _Session:
        if self.session is None:
            raise LookupError("no car is plugged in")
        return self.session

    # plug -------------------------------------------------------------------------------

    def plugged_in(self, now: datetime, session_id: int) -> list[Action]:
        if self.session is not None:
            return [Ignored("plug-in reported while a session is open")]
        offer = make_offer(self.tariff.rate_at(now), self.settings.wh_per_payment)
        self.session = _Session(session_id, now, offer)
        return [MakeOffer(offer)] + self._settle_power(now)

    def unplugged(self, now: datetime) -> list[Action]:
        s = self.session
        if s is None:
            return [Ignored("unplug reported with no session open")]
        actions = s.cancel_open("car unplugged before paying")
        self._late_refs.update(invoice.ref for invoice in s.pending.values() if invoice.state == "creating")
        if s.manual is not None:
            actions += s.manual.unplugged(now)
            if not s.manual.finished:
                self._manual_tails.append(s.manual)
        if self.power is Power.ON:
            # A TWC left on would hand the next car energy before its session (and bill) starts.
            self.power, self._power_retry_at = Power.CUTTING, None
            actions.append(CutPower("car unplugged"))
        actions.append(
            SessionEnded(s.session_id, s.delivered_nj, s.paid_msat, math.ceil(self.exposure_msat),
                         math.ceil(s.max_exposure_msat))
        )
        self.session = None
        return actions

    # car --------------------------------------------------------------------------------

    def car_accepted(self, now: datetime, offer: Offer, version: int) -> list[Action]:
        """The car agreed to ``offer``: the current offer, or for v1 its whole-sat rounding."""
        s = self.session
        if s is not None and s.repeating_offer:
            return self._accepted_again(now, s, offer, version)
        if s is None or s.phase not in (Phase.OFFERING, Phase.REOFFERING, Phase.REFUSED):
            return [Ignored("car accepted with no offer waiting for an answer")]
        if version not in (1, 2):
            return [Ignored(f"car accepted with unknown protocol version {version!r}")]
        agreed = (offer.rate_msat_per_kwh, offer.payment_msat)
        allowed = {(s.offer.rate_msat_per_kwh, s.offer.payment_msat)}
        if version == 1:
            v1 = s.offer.as_v1()
            allowed.add((v1.rate_msat_per_kwh, v1.payment_msat))
        if agreed not in allowed:
            return [Ignored(f"car accepted {offer}, which is not the current offer {s.offer}")]
        if s.version is not None and version != s.version:
            return [Ignored(f"car switched protocol version mid-session ({s.version} -> {version})")]
        s.accepted, s.version, s.phase = Offer(*agreed), version, Phase.SELLING
        return self._after(now)

    def car_rejected(self, now: datetime) -> list[Action]:
        """The car refused the current offer; mid-session (a tariff change) that ends the sale."""
        s = self.session
        if s is not None and s.repeating_offer:
            s.repeating_offer, s.phase = False, Phase.STOPPED
            return [StopSale("car refused its own earlier terms after restarting")] + self._after(now)
        if s is None or s.phase not in (Phase.OFFERING, Phase.REOFFERING):
            return [Ignored("car rejected with no offer waiting for an answer")]
        s.phase = Phase.STOPPED if s.phase is Phase.REOFFERING else Phase.REFUSED
        return [StopSale(f"car refused {format_msat(s.offer.rate_msat_per_kwh)}/kWh")] + self._after(now)

    # meter ------------------------------------------------------------------------------

    def energy_delivered(self, now: datetime, nj: int) -> list[Action]:
        s = self.session
        if isinstance(nj, bool) or not isinstance(nj, int) or nj < 0:
            return [Ignored(f"energy reading {nj!r} nJ is not a non-negative integer")]
        if s is None:
            # An idle TWC reads about 0.25 A; with no session there is nobody to bill.
            return []
        s.delivered_nj += nj
        rate = s.manual.rate_msat_per_kwh if s.manual else (s.accepted or s.offer).rate_msat_per_kwh
        s.value_msat += msat_for_energy(nj, rate)
        actions = s.manual.energy(now, nj) if s.manual else []
        return actions + self._after(now)

    # node -------------------------------------------------------------------------------

    def invoice_created(self, now: datetime, ref: str, r_hash: bytes, payment_request: str) -> list[Action]:
        manual = self._manual_for(ref=ref)
        if manual is not None:
            return manual.invoice_created(now, ref, r_hash, payment_request) + self._after(now)
        s = self.session
        invoice = s.invoices.get(ref) if s else None
        if invoice is None or invoice.state != "creating":
            if ref in self._late_refs:
                self._late_refs.discard(ref)
                return [CancelInvoice(r_hash, "session ended before the invoice was ready")]
            return [Ignored(f"creation reported for unknown invoice {ref}")]
        invoice.r_hash, invoice.state = r_hash, "open"
        invoice.expires_at = now + timedelta(seconds=self.settings.invoice_expiry_s)
        s.by_hash[r_hash] = invoice
        return [SendInvoice(ref, payment_request, s.delivered_nj)] + self._after(now)

    def invoice_failed(self, now: datetime, ref: str, reason: str) -> list[Action]:
        manual = self._manual_for(ref=ref)
        if manual is not None:
            return manual.invoice_failed(now, ref, reason)
        self._late_refs.discard(ref)
        s = self.session
        invoice = s.invoices.get(ref) if s else None
        if invoice is None or invoice.state != "creating":
            return [Ignored(f"failure reported for unknown invoice {ref}")]
        s.close(invoice, "canceled")
        s.invoice_retry_at = now + timedelta(seconds=self.settings.retry_s)
        return [Ignored(f"creating invoice {ref} failed ({reason}); retrying")]

    def invoice_settled(self, now: datetime, r_hash: bytes, amt_paid_msat: int) -> list[Action]:
        if isinstance(amt_paid_msat, bool) or not isinstance(amt_paid_msat, int) or amt_paid_msat < 0:
            return [Ignored(f"settlement with impossible amount {amt_paid_msat!r}")]
        manual = self._manual_for(r_hash=r_hash)
        if manual is not None:
            return manual.invoice_settled(now, r_hash, amt_paid_msat) + self._after(now)
        s = self.session
        invoice = s.by_hash.get(r_hash) if s else None
        if invoice is None:
            return [Ignored(f"settlement for an invoice not in this session: {r_hash.hex()}")]
        if invoice.state == "settled":
            return []
        s.close(invoice, "settled")
        s.paid_msat += amt_paid_msat
        # An honest node never settles below the amount; if it ever does, credit only what came in.
        s.paid_energy_nj += invoice.energy_nj * min(Fraction(1), Fraction(amt_paid_msat, invoice.amount_msat))
        actions: list[Action] = []
        if s.repeating_offer:
            s.repeating_offer = False
            actions.append(StopRepeatingOffer("the car paid: it still holds its acceptance"))
        return actions + self._after(now)

    def invoice_canceled(self, now: datetime, r_hash: bytes) -> list[Action]:
        manual = self._manual_for(r_hash=r_hash)
        if manual is not None:
            return manual.invoice_canceled(now, r_hash) + self._after(now)
        s = self.session
        invoice = s.by_hash.get(r_hash) if s else None
        if invoice is None or invoice.state == "settled":
            return []
        s.close(invoice, "canceled")
        return self._after(now)

    def invoice_accepted(self, now: datetime, r_hash: bytes, amt_paid_msat: int) -> list[Action]:
        manual = self._manual_for(r_hash=r_hash)
        if manual is not None:
            return manual.invoice_accepted(now, r_hash, amt_paid_msat) + self._after(now)
        return [Ignored(f"held payment on an invoice that is not a manual-pay hold invoice: {r_hash.hex()}")]

    def node_reachable(self, now: datetime) -> list[Action]:
        was_down, self.node_up = not self.node_up, True
        actions: list[Action] = []
        for manual in self._manuals():
            actions += manual.retry(now)
        s = self.session
        if was_down and s is not None and s.manual is None:
            # While our node was away the car's payments failed, and a car gives up on an
            # invoice after a few tries: waiting for it would stall the sale until it expired.
            actions += s.cancel_open("replaced after the node outage")
        return actions + self._after(now)

    def node_unreachable(self, now: datetime) -> list[Action]:
        if not self.node_up:
            return []
        self.node_up = False
        actions: list[Action] = [StopSale("Lightning node unreachable")] if self.session else []
        return actions + self._after(now)

    # TWC --------------------------------------------------------------------------------

    def stop_confirmed(self, now: datetime) -> list[Action]:
        if self.power is not Power.CUTTING:
            return [Ignored("TWC stop confirmed, but no stop was asked for")]
        self.power = Power.CUT
        return self._after(now)

    def stop_failed(self, now: datetime, reason: str = "") -> list[Action]:
        if self.power is not Power.CUTTING:
            return [Ignored("TWC stop failed, but no stop was asked for")]
        self.power = Power.ON
        self._power_retry_at = now + timedelta(seconds=self.settings.retry_s)
        return [Ignored(f"TWC did not stop ({reason}); will try again")]

    # time -------------------------------------------------------------------------------

    def tick(self, now: datetime) -> list[Action]:
        actions: list[Action] = []
        for manual in list(self._manual_tails):
            actions += manual.tick(now)
            if manual.finished:
                self._manual_tails.remove(manual)
        s = self.session
        if s is not None:
            actions += self._check_offer(now, s)
            if s.manual is not None:
                actions += s.manual.tick(now)
            actions += s.cancel_open("invoice expired unpaid", expired_by=now)
        return actions + self._after(now)

    def _check_offer(self, now: datetime, s: _Session) -> list[Action]:
        if (
            s.phase is Phase.OFFERING
            and self.settings.manual is not None
            and now - s.started_at >= timedelta(seconds=self.settings.offer_timeout_s)
        ):
            return self._start_manual(now, s)
        if s.phase in (Phase.MANUAL, Phase.STOPPED) or s.version == 1:
            return []
        rate = self.tariff.rate_at(now)
        if rate == s.offer.rate_msat_per_kwh:
            return []
        s.offer = make_offer(rate, self.settings.wh_per_payment)
        s.phase = Phase.OFFERING if s.accepted is None else Phase.REOFFERING
        return [MakeOffer(s.offer)]

    def _start_manual(self, now: datetime, s: _Session) -> list[Action]:
        s.phase = Phase.MANUAL
        rate = self.tariff.rate_at(now)
        payment_value = Fraction(rate) * self.settings.wh_per_payment / 1000
        reserve = max(0, math.ceil(self.settings.cut_below * payment_value))
        s.manual = ManualPay(self.settings.manual, s.session_id, rate, reserve_msat=reserve)
        s.manual.energy_nj = s.delivered_nj
        s.value_msat = msat_for_energy(s.delivered_nj, rate)
        return [StopSale("no answer from the car; switching to manual pay")] + s.manual.begin(now)

    # decisions --------------------------------------------------------------------------

    def _manuals(self) -> list[ManualPay]:
        current = [self.session.manual] if self.session and self.session.manual else []
        return current + self._manual_tails

    def _manual_for(self, ref: str | None = None, r_hash: bytes | None = None) -> ManualPay | None:
        return next((m for m in self._manuals() if m.owns(ref=ref, r_hash=r_hash)), None)

    def _after(self, now: datetime) -> list[Action]:
        """Re-decide invoicing and power after any change."""
        s = self.session
        if s is None:
            return []
        s.max_exposure_msat = max(s.max_exposure_msat, self.exposure_msat)
        return self._maybe_invoice(now, s) + self._maybe_repeat_offer(now, s) + self._settle_power(now)

    def _accepted_again(self, now: datetime, s: _Session, offer: Offer, version: int) -> list[Action]:
        """A v1 car that restarted took up its terms again; it dropped the invoices it held."""
        if version != 1 or offer != s.accepted:
            return [Ignored(f"car answered the repeated offer with v{version} {offer}, not v1 {s.accepted}")]
        s.repeating_offer = False
        s.behind_since = None
        return s.cancel_open("the car restarted and dropped it") + self._after(now)

    def _maybe_repeat_offer(self, now: datetime, s: _Session) -> list[Action]:
        if s.version != 1 or s.phase is not Phase.SELLING or not self.node_up:
            return []
        invoice = s.outstanding
        if self.credit_nj >= self.cut_line_nj() or invoice is None or invoice.state != "open":
            s.behind_since = None
            return []
        if s.behind_since is None:
            s.behind_since = now
        if s.repeating_offer or now - s.behind_since < timedelta(seconds=self.settings.v1_repeat_offer_after_s):
            return []
        s.repeating_offer = True
        return [RepeatOffer(f"no payment for {self.settings.v1_repeat_offer_after_s:g} s: the car may have "
                            "restarted and lost its acceptance")]

    def _maybe_invoice(self, now: datetime, s: _Session) -> list[Action]:
        if s.phase is not Phase.SELLING or not self.node_up or s.outstanding is not None:
            return []
        if s.invoice_retry_at is not None and now < s.invoice_retry_at:
            return []
        if self.credit_nj >= self.settings.next_invoice_below * self.energy_per_payment_nj:
            return []
        s.invoice_retry_at = None
        s.count += 1
        offer = s.accepted
        energy = energy_per_payment(offer)
        ref = f"{s.session_id}.{s.count}"
        invoice = _Invoice(ref, offer.payment_msat, energy)
        s.add(invoice)
        memo = (
            f"DistributedCharge {format_kwh(energy)} kWh at "
            f"{format_msat(offer.rate_msat_per_kwh)}/kWh, session {s.session_id} payment {s.count}"
        )
        return [
            CreateInvoice(ref, offer.payment_msat, energy, offer.rate_msat_per_kwh, memo,
                          self.settings.invoice_expiry_s)
        ]

    def _power_wanted(self) -> tuple[bool, str]:
        s = self._need_session()
        if not self.node_up:
            return False, "Lightning node unreachable"
        if s.manual is not None:
            return s.manual.power_wanted, s.manual.power_reason
        if self.credit_nj < self.cut_line_nj():
            return False, "buyer behind on payments"
        return True, "buyer's credit is above the cut line"

    def _settle_power(self, now: datetime) -> list[Action]:
        if self.session is None:
            return []
        if self._power_retry_at is not None and now < self._power_retry_at:
            return []
        wanted, reason = self._power_wanted()
        if not wanted and self.power is Power.ON:
            self.power, self._power_retry_at = Power.CUTTING, None
            return [CutPower(reason)]
        if wanted and self.power is Power.CUT:
            # The TWC master starts at once and reports nothing; the meter shows if current flows.
            self.power, self._power_retry_at = Power.ON, None
            return [ResumePower(reason)]
        return []
