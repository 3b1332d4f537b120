"""What the wall unit's sans-IO cores ask the daemon to do.

The daemon writes each action to the ledger and only then carries it out (LND call,
SWCAN frame, TWC command), then reports the outcome back as an event.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

from distributedcharge.swcan.messages import Offer
from distributedcharge.units import energy_for_msat


def energy_per_payment(offer: Offer) -> Fraction:
    """Exactly the energy one payment buys at ``offer``."""
    return energy_for_msat(offer.payment_msat, offer.rate_msat_per_kwh)


@dataclass(frozen=True)
class MakeOffer:
    offer: Offer


@dataclass(frozen=True)
class CreateInvoice:
    """A plain invoice for one payment; report back with ``invoice_created``/``invoice_failed``."""

    ref: str
    amount_msat: int
    energy_nj: Fraction
    rate_msat_per_kwh: int
    memo: str
    expiry_s: int


@dataclass(frozen=True)
class CreateHoldInvoice:
    """A hold invoice; the daemon picks the preimage and stores it before calling LND."""

    ref: str
    purpose: str  # "deposit" or "final"
    amount_msat: int
    energy_nj: Fraction
    rate_msat_per_kwh: int
    memo: str
    expiry_s: int
    cltv_expiry: int


@dataclass(frozen=True)
class SendInvoice:
    ref: str
    payment_request: str
    meter_nj: int


@dataclass(frozen=True)
class ShowPaymentRequest:
    """Put this invoice on the screen/QR file for a person to pay with a phone wallet."""

    ref: str
    purpose: str
    payment_request: str
    amount_msat: int


@dataclass(frozen=True)
class HidePaymentRequest:
    ref: str


@dataclass(frozen=True)
class CutPower:
    reason: str


@dataclass(frozen=True)
class ResumePower:
    reason: str


@dataclass(frozen=True)
class CancelInvoice:
    r_hash: bytes
    reason: str


@dataclass(frozen=True)
class SettleInvoice:
    """Settle a hold invoice with the preimage the daemon stored for it."""

    r_hash: bytes
    reason: str


@dataclass(frozen=True)
class StopSale:
    reason: str


@dataclass(frozen=True)
class RepeatOffer:
    """v1: put the accepted terms out again, for a car whose daemon restarted and lost them."""

    reason: str


@dataclass(frozen=True)
class StopRepeatingOffer:
    reason: str


@dataclass(frozen=True)
class Ignored:
    """An input that was refused; the daemon logs it and carries on."""

    reason: str


@dataclass(frozen=True)
class SessionEnded:
    session_id: int
    delivered_nj: int
    paid_msat: int
    exposure_msat: int
    max_exposure_msat: int


Action = (
    MakeOffer | CreateInvoice | CreateHoldInvoice | SendInvoice | ShowPaymentRequest | HidePaymentRequest
    | CutPower | ResumePower | CancelInvoice | SettleInvoice | StopSale | RepeatOffer | StopRepeatingOffer
    | Ignored | SessionEnded
)
