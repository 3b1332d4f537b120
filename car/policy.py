"""The car's buyer policy: which offers to accept and which invoices to pay.

It spends the owner's money, so every rule exists to stop a dishonest or broken wall unit
from taking more than the energy is worth. Sans-IO like h11: offers, invoices, meter
readings and ``now`` go in, decisions come out; it never talks to LND, the bus or the
journal itself. The daemon pays a :class:`Pay` (through ``car.payer``), reports the result
back with :meth:`BuyerPolicy.payment_succeeded` / :meth:`BuyerPolicy.payment_failed`, puts a
:class:`NotYetDue` invoice back at the head of its queue to be judged again when more
energy has arrived, and logs every :class:`Reject` / :class:`Refuse` with its reason.

All arithmetic on money and energy is exact: msat are integers, Wh are Fractions.
"""

from __future__ import annotations

from collections.abc import Container, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from fractions import Fraction
from types import MappingProxyType
from typing import Protocol

from distributedcharge.lightning import bolt11
from distributedcharge.units import MSAT_PER_SAT, NJ_PER_WH

NETWORKS = tuple(bolt11.NETWORK_PREFIXES.values())

# The original car lets the very first invoice of a session ask for up to two payments,
# so the wall can ask for the energy it delivers while the first payment is routed.
FIRST_PAYMENT_MULTIPLE = 2

# After the car accepts a tariff change the wall may already have one invoice outstanding
# under the old terms (it keeps at most one); anything more under old terms is refused.
STALE_OFFER_GRACE_INVOICES = 1


class Code(StrEnum):
    """Why an offer was rejected or an invoice refused or held back."""

    BAD_OFFER = "bad_offer"
    RATE_TOO_HIGH = "rate_too_high"
    PAYMENT_TOO_LARGE = "payment_too_large"
    UNDECODABLE = "undecodable"
    WRONG_NETWORK = "wrong_network"
    UNTRUSTED_PAYEE = "untrusted_payee"
    PAYEE_CHANGED = "payee_changed"
    DUPLICATE = "duplicate"
    ATTEMPTS_EXHAUSTED = "attempts_exhausted"
    EXPIRED = "expired"
    AMOUNTLESS = "amountless"
    NO_OFFER = "no_offer"
    UNKNOWN_OFFER = "unknown_offer"
    OFFER_SUPERSEDED = "offer_superseded"
    OVER_OFFER = "over_offer"
    TOO_EARLY = "too_early"
    SESSION_CAP = "session_cap"
    DAILY_CAP = "daily_cap"
    BALANCE_TOO_LOW = "balance_too_low"


class OfferTerms(Protocol):
    """What the SWCAN link's ``Offer`` carries; any object with these two attributes will do."""

    @property
    def rate_msat_per_kwh(self) -> int: ...

    @property
    def payment_msat(self) -> int: ...


@dataclass(frozen=True)
class Terms:
    """An offer reduced to what prices energy; two offers with equal terms are the same deal."""

    rate_msat_per_kwh: int
    payment_msat: int

    @property
    def wh_per_payment(self) -> Fraction:
        return wh_bought(self.payment_msat, self.rate_msat_per_kwh)


def wh_bought(amount_msat: int, rate_msat_per_kwh: int) -> Fraction:
    """Exact Wh that ``amount_msat`` buys at ``rate_msat_per_kwh``."""
    return Fraction(amount_msat * 1000, rate_msat_per_kwh)


def fee_limit_msat(amount_msat: int, max_fee_ppm: int, min_fee_msat: int) -> int:
    """The most routing fee the car will pay for one invoice: a share of it, but never below the floor."""
    return max(-(-amount_msat * max_fee_ppm // 1_000_000), min_fee_msat)


@dataclass(frozen=True)
class PrepayTolerance:
    """The original car's "v1" model of how far ahead of its own meter it will pay.

    The car pays the next invoice only while ``Wh paid for - Wh received`` (before this
    invoice) is below ``payments_ahead x Wh per payment + allowed error x Wh received +
    fixed Wh``. The allowed error falls linearly from ``error_at_low_current`` at
    ``low_current_deciamps`` to ``error_at_high_current`` at ``high_current_deciamps``,
    because the car's and the wall's meters disagree by more at low current. Outside that
    range it is held at the nearer end (the original extrapolates, which goes negative
    above about 53 A).
    """

    payments_ahead: Fraction = Fraction(7, 5)
    fixed_wh: Fraction = Fraction(75)
    error_at_low_current: Fraction = Fraction(1, 5)
    low_current_deciamps: Fraction = Fraction(50)
    error_at_high_current: Fraction = Fraction(1, 40)
    high_current_deciamps: Fraction = Fraction(480)

    def __post_init__(self) -> None:
        if self.low_current_deciamps >= self.high_current_deciamps:
            raise ValueError("the low-current point of the error line must be below the high-current point")
        if min(self.payments_ahead, self.fixed_wh, self.error_at_low_current, self.error_at_high_current) < 0:
            raise ValueError("prepay tolerances cannot be negative")

    def allowed_error(self, current_deciamps: int | None) -> Fraction:
        """Share of the received energy the meters may disagree by; unknown current gets the smaller share."""
        if current_deciamps is None:
            return min(self.error_at_low_current, self.error_at_high_current)
        current = min(max(Fraction(current_deciamps), self.low_current_deciamps), self.high_current_deciamps)
        slope = (self.error_at_high_current - self.error_at_low_current) / (
            self.high_current_deciamps - self.low_current_deciamps
        )
        return self.error_at_low_current + slope * (current - self.low_current_deciamps)

    def allowance_wh(
        self, wh_per_payment: Fraction, wh_received: Fraction, current_deciamps: int | None
    ) -> Fraction:
        """How many Wh the car may have paid for beyond what it received, before paying once more."""
        return (
            self.payments_ahead * wh_per_payment
            + self.allowed_error(current_deciamps) * wh_received
            + self.fixed_wh
        )


@dataclass(frozen=True)
class BuyerSettings:
    """The owner's limits, all exact. ``None`` caps mean no cap."""

    max_rate_msat_per_kwh: int = 1_000 * MSAT_PER_SAT
    max_payment_msat: int = 41 * MSAT_PER_SAT
    tolerance: PrepayTolerance = field(default_factory=PrepayTolerance)
    max_fee_ppm: int = 30_000
    min_fee_msat: int = 2 * MSAT_PER_SAT
    session_cap_msat: int | None = None
    daily_cap_msat: int | None = None
    network: str = "mainnet"
    trusted_payees: frozenset[bytes] = frozenset()
    balance_margin_percent: Fraction = Fraction(3)
    max_attempts: int = 3

    def __post_init__(self) -> None:
        if self.network not in NETWORKS:
            raise ValueError(f"unknown network {self.network!r}")
        if self.max_rate_msat_per_kwh <= 0 or self.max_payment_msat <= 0:
            raise ValueError("the rate and payment ceilings must be positive")
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")


# --- decisions -------------------------------------------------------------------------


@dataclass(frozen=True)
class Accept:
    terms: Terms
    is_change: bool


@dataclass(frozen=True)
class Reject:
    code: Code
    reason: str


@dataclass(frozen=True)
class Pay:
    invoice: bolt11.Invoice
    amount_msat: int
    fee_limit_msat: int
    terms: Terms
    energy_wh: Fraction
    attempt: int

    @property
    def payment_hash(self) -> bytes:
        return self.invoice.payment_hash

    @property
    def bolt11(self) -> str:
        return self.invoice.raw


@dataclass(frozen=True)
class NotYetDue:
    invoice: bolt11.Invoice
    code: Code
    reason: str


@dataclass(frozen=True)
class Refuse:
    code: Code
    reason: str
    invoice: bolt11.Invoice | None = None

    @property
    def payment_hash(self) -> bytes | None:
        return self.invoice.payment_hash if self.invoice else None


# --- session bookkeeping ---------------------------------------------------------------

PENDING, SUCCEEDED, FAILED = "pending", "succeeded", "failed"


@dataclass(frozen=True)
class SessionPayment:
    payment_hash: bytes
    amount_msat: int
    fee_limit_msat: int
    energy_wh: Fraction
    terms: Terms
    state: str = PENDING
    attempts: int = 1
    fee_msat: int = 0
    failure_reason: str | None = None


@dataclass(frozen=True)
class Refusal:
    at: float
    code: Code
    reason: str
    payment_hash: bytes | None


@dataclass
class BuyerSession:
    """One plug-in: the offers the car accepted, the payee it pinned, what it paid and refused.

    Payments enter the books only through :meth:`record`, which keeps the totals as running
    sums: every invoice is judged against them, so reading them must not cost more as the
    session's payments pile up (an 8-hour session makes thousands).
    """

    started_at: float | None = None
    ended_at: float | None = None
    offers: list[Terms] = field(default_factory=list)
    payee: bytes | None = None
    refusals: list[Refusal] = field(default_factory=list)
    stale_invoices_paid_since_change: int = 0
    _payments: dict[bytes, SessionPayment] = field(default_factory=dict, init=False, repr=False)
    _paid_msat: int = field(default=0, init=False, repr=False)
    _fees_msat: int = field(default=0, init=False, repr=False)
    _energy_paid_for_wh: Fraction = field(default=Fraction(0), init=False, repr=False)
    _unfailed_payments: int = field(default=0, init=False, repr=False)

    @property
    def current_terms(self) -> Terms | None:
        return self.offers[-1] if self.offers else None

    @property
    def payments(self) -> Mapping[bytes, SessionPayment]:
        """Each payment hash's latest attempt, read-only: change it with :meth:`record`."""
        return MappingProxyType(self._payments)

    @property
    def paid_msat(self) -> int:
        return self._paid_msat

    @property
    def fees_msat(self) -> int:
        return self._fees_msat

    @property
    def energy_paid_for_wh(self) -> Fraction:
        """Wh bought by payments that succeeded or may still succeed; failed ones bought nothing."""
        return self._energy_paid_for_wh

    @property
    def any_payment_made(self) -> bool:
        return self._unfailed_payments > 0

    def record(self, payment: SessionPayment) -> None:
        """Enter ``payment`` in the books in place of any earlier entry for its hash."""
        earlier = self._payments.get(payment.payment_hash)
        if earlier is not None:
            self._count(earlier, -1)
        self._payments[payment.payment_hash] = payment
        self._count(payment, 1)

    def _count(self, payment: SessionPayment, sign: int) -> None:
        if payment.state != FAILED:
            self._energy_paid_for_wh += sign * payment.energy_wh
            self._unfailed_payments += sign
        if payment.state == SUCCEEDED:
            self._paid_msat += sign * payment.amount_msat
            self._fees_msat += sign * payment.fee_msat


class BuyerPolicy:
    """Judges offers and invoices for one session at a time.

    ``known_hashes`` answers ``payment_hash in known_hashes`` for every hash the journal
    has ever recorded a payment for (``car.journal.Journal.known_hashes``), so an invoice
    paid in an earlier session is never paid again.
    """

    def __init__(self, settings: BuyerSettings, known_hashes: Container[bytes] = frozenset()):
        self.settings = settings
        self.known_hashes = known_hashes
        self.session = BuyerSession()

    def start_session(self, now: float) -> BuyerSession:
        """Plug-in: forget the previous session's offer, payee and hashes (the journal keeps them)."""
        self.session = BuyerSession(started_at=now)
        return self.session

    def resume_session(self, started_at: float, offers: Sequence[Terms], payee: bytes | None,
                       payments: Iterable[SessionPayment]) -> BuyerSession:
        """Carry on a session the daemon was killed in, as its journal recorded it.

        The paid and pending payments keep counting as energy paid for and the payee stays
        pinned, so a restart neither forgets what was paid nor lets the wall ask twice.
        """
        self.session = BuyerSession(started_at=started_at, offers=list(offers), payee=payee)
        for payment in payments:
            self.session.record(payment)
        return self.session

    def end_session(self, now: float) -> BuyerSession:
        """Unplug: the accepted offer no longer holds. Returns the finished session's record."""
        finished = self.session
        finished.ended_at = now
        self.session = BuyerSession()
        return finished

    # --- offers --------------------------------------------------------------------------

    def consider_offer(self, offer: OfferTerms, now: float) -> Accept | Reject:
        """First offer or mid-session tariff change: both must be within the owner's ceilings."""
        session = self._session(now)
        rate = getattr(offer, "rate_msat_per_kwh", None)
        payment = getattr(offer, "payment_msat", None)
        if not (_positive_int(rate) and _positive_int(payment)):
            return self._reject(
                now, Code.BAD_OFFER, f"offer terms are not positive whole msat: {rate!r}, {payment!r}"
            )
        if rate > self.settings.max_rate_msat_per_kwh:
            return self._reject(
                now, Code.RATE_TOO_HIGH,
                f"rate {rate} msat/kWh is above the maximum {self.settings.max_rate_msat_per_kwh}",
            )
        if payment > self.settings.max_payment_msat:
            return self._reject(
                now, Code.PAYMENT_TOO_LARGE,
                f"payment {payment} msat is above the maximum {self.settings.max_payment_msat}",
            )
        terms = Terms(rate, payment)
        is_change = bool(session.offers)
        if terms != session.current_terms:
            session.offers.append(terms)
            session.stale_invoices_paid_since_change = 0
        return Accept(terms, is_change)

    # --- invoices ------------------------------------------------------------------------

    def consider_invoice(
        self,
        invoice_text: str,
        bound_offer: OfferTerms | None,
        energy_received_nj: int,
        current_deciamps: int | None,
        channel_balance_msat: int,
        now: float,
        spent_session_msat: int,
        spent_today_msat: int,
    ) -> Pay | NotYetDue | Refuse:
        """Decide whether to pay ``invoice_text`` now, later, or never.

        ``bound_offer`` is the offer the wall issued it under (v2), or ``None`` for the
        session's one accepted offer (v1). ``energy_received_nj`` is the car's own meter
        since plug-in. ``spent_session_msat`` / ``spent_today_msat`` come from the journal
        (amounts plus fees; fee limits for payments still unresolved); "today" is the
        trailing 24 hours. A :class:`Pay` is recorded as pending at once, so its energy
        counts as paid for until :meth:`payment_failed` says otherwise.
        """
        settings = self.settings
        session = self._session(now)
        if not isinstance(invoice_text, str):
            return self._refuse(now, Code.UNDECODABLE, f"invoice is not text: {type(invoice_text).__name__}")
        try:
            invoice = bolt11.decode(invoice_text)
        except bolt11.InvoiceError as exc:
            return self._refuse(now, Code.UNDECODABLE, f"not a valid invoice: {exc}")

        def refuse(code: Code, reason: str) -> Refuse:
            return self._refuse(now, code, reason, invoice)

        if invoice.network != settings.network:
            return refuse(
                Code.WRONG_NETWORK, f"invoice is for {invoice.network}, the car pays on {settings.network}"
            )
        if settings.trusted_payees and invoice.payee not in settings.trusted_payees:
            return refuse(Code.UNTRUSTED_PAYEE, f"payee {invoice.payee_hex} is not in the trusted list")
        if session.payee is not None and invoice.payee != session.payee:
            return refuse(
                Code.PAYEE_CHANGED,
                f"payee {invoice.payee_hex} differs from this session's payee {session.payee.hex()}",
            )
        earlier = session.payments.get(invoice.payment_hash)
        if earlier is not None and earlier.state != FAILED:
            return refuse(Code.DUPLICATE, f"invoice {invoice.payment_hash_hex} is already {earlier.state}")
        if earlier is not None and earlier.attempts >= settings.max_attempts:
            return refuse(
                Code.ATTEMPTS_EXHAUSTED,
                f"invoice {invoice.payment_hash_hex} failed {earlier.attempts} times, last: "
                f"{earlier.failure_reason}",
            )
        if earlier is None and invoice.payment_hash in self.known_hashes:
            return refuse(Code.DUPLICATE, f"invoice {invoice.payment_hash_hex} was paid or attempted before")
        if invoice.is_expired(now):
            return refuse(Code.EXPIRED, f"invoice expired at {invoice.expires_at}")
        if invoice.amount_msat is None:
            return refuse(Code.AMOUNTLESS, "invoice has no amount")

        if session.current_terms is None:
            return refuse(Code.NO_OFFER, "no offer has been accepted in this session")
        terms = session.current_terms if bound_offer is None else _terms_of(bound_offer)
        if terms not in session.offers:
            return refuse(Code.UNKNOWN_OFFER, f"invoice is bound to an offer the car never accepted: {terms}")
        stale = terms != session.current_terms
        if stale and session.stale_invoices_paid_since_change >= STALE_OFFER_GRACE_INVOICES:
            return refuse(
                Code.OFFER_SUPERSEDED, f"invoice is bound to {terms}, superseded by {session.current_terms}"
            )

        amount = invoice.amount_msat
        first = not session.any_payment_made
        limit = terms.payment_msat * (FIRST_PAYMENT_MULTIPLE if first else 1)
        if amount > limit:
            which = "first payment" if first else "payment"
            return refuse(Code.OVER_OFFER, f"amount {amount} msat is above the {which} limit {limit} msat")

        wh_received = Fraction(energy_received_nj, NJ_PER_WH)
        ahead_wh = session.energy_paid_for_wh - wh_received
        allowance_wh = settings.tolerance.allowance_wh(terms.wh_per_payment, wh_received, current_deciamps)
        if ahead_wh >= allowance_wh:
            return NotYetDue(
                invoice, Code.TOO_EARLY,
                f"already {_wh(ahead_wh)} Wh ahead of the meter; "
                f"may be less than {_wh(allowance_wh)} Wh ahead",
            )

        fee_limit = fee_limit_msat(amount, settings.max_fee_ppm, settings.min_fee_msat)
        worst_case = amount + fee_limit
        session_cap = settings.session_cap_msat
        if session_cap is not None and spent_session_msat + worst_case > session_cap:
            return refuse(
                Code.SESSION_CAP,
                f"{spent_session_msat} msat spent this session + {worst_case} msat would exceed the cap "
                f"{session_cap} msat",
            )
        daily_cap = settings.daily_cap_msat
        if daily_cap is not None and spent_today_msat + worst_case > daily_cap:
            return refuse(
                Code.DAILY_CAP,
                f"{spent_today_msat} msat spent in 24 h + {worst_case} msat would exceed the cap "
                f"{daily_cap} msat",
            )
        if channel_balance_msat * 100 < amount * (100 + settings.balance_margin_percent):
            return refuse(
                Code.BALANCE_TOO_LOW,
                f"channel balance {channel_balance_msat} msat is below {amount} msat + "
                f"{settings.balance_margin_percent} %",
            )

        energy = wh_bought(amount, terms.rate_msat_per_kwh)
        attempt = 1 if earlier is None else earlier.attempts + 1
        session.record(SessionPayment(invoice.payment_hash, amount, fee_limit, energy, terms, attempts=attempt))
        session.payee = invoice.payee
        if stale:
            session.stale_invoices_paid_since_change += 1
        return Pay(invoice, amount, fee_limit, terms, energy, attempt)

    # --- payment results -----------------------------------------------------------------

    def payment_succeeded(self, payment_hash: bytes, amount_msat: int, fee_msat: int) -> bool:
        """Record a settled payment; False if it does not belong to the current session."""
        entry = self.session.payments.get(payment_hash)
        if entry is None:
            return False
        self.session.record(
            replace(entry, state=SUCCEEDED, amount_msat=amount_msat, fee_msat=fee_msat, failure_reason=None)
        )
        return True

    def payment_failed(self, payment_hash: bytes, reason: str) -> bool:
        """Record a failed payment: its energy is no longer counted as paid for."""
        entry = self.session.payments.get(payment_hash)
        if entry is None or entry.state == SUCCEEDED:
            return False
        self.session.record(replace(entry, state=FAILED, failure_reason=reason))
        return True

    # --- helpers -------------------------------------------------------------------------

    def _session(self, now: float) -> BuyerSession:
        if self.session.started_at is None:
            self.session.started_at = now
        return self.session

    def _reject(self, now: float, code: Code, reason: str) -> Reject:
        self.session.refusals.append(Refusal(now, code, reason, None))
        return Reject(code, reason)

    def _refuse(self, now: float, code: Code, reason: str, invoice: bolt11.Invoice | None = None) -> Refuse:
        self.session.refusals.append(Refusal(now, code, reason, invoice.payment_hash if invoice else None))
        return Refuse(code, reason, invoice)


def _positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _terms_of(offer: OfferTerms) -> Terms:
    return Terms(offer.rate_msat_per_kwh, offer.payment_msat)


def _wh(value: Fraction) -> str:
    milli = round(value * 1000)
    sign = "-" if milli < 0 else ""
    whole, rest = divmod(abs(milli), 1000)
    return f"{sign}{whole}.{rest:03d}"

