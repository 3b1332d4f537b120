"""Manual pay: a person with a phone wallet buys energy for a car without our car daemon.

Per the v1 reference:

1. The wall shows a hold invoice as a deposit big enough for ``deposit_kwh`` (250 kWh)
   at the session rate. An unpaid deposit is replaced every ``invoice_expiry_s``.
2. Once the deposit is ACCEPTED (held, not settled) the car may charge.
3. On unplug the wall shows a final hold invoice for the energy used. When that one is
   ACCEPTED the wall settles it and cancels the deposit, so the payer only ever pays
   for what the car took.
4. If the final invoice is not paid before the deposit's HTLC would expire (modelled as
   ``cltv_expiry - reserve_blocks`` blocks of ``block_time_s`` after the deposit was
   accepted), or the deposit's worth of energy has been delivered, the wall settles the
   deposit instead. A car still plugged in when that deadline nears is treated as if it
   left: power off and the final invoice shown, so it can still be paid in time.

The session keeps the rate it started at: the deposit was sized and shown with it.
Settles and cancels the node has not confirmed yet are kept and can be re-sent with
:meth:`ManualPay.retry` after a node outage.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from fractions import Fraction

from distributedcharge.units import NJ_PER_KWH, format_msat, msat_for_energy

from .actions import (
    Action,
    CancelInvoice,
    CreateHoldInvoice,
    HidePaymentRequest,
    Ignored,
    SettleInvoice,
    ShowPaymentRequest,
)


# A final invoice shown with less time than this left before the deadline could not be paid
# in time, so the deposit is settled instead.
MIN_FINAL_WINDOW = timedelta(seconds=60)


def format_kwh(nj: int | Fraction) -> str:
    """Energy for people to read, rounded to the Wh."""
    wh = round(Fraction(nj) * 1000 / NJ_PER_KWH)
    return f"{wh // 1000}.{wh % 1000:03d}"


@dataclass(frozen=True)
class ManualSettings:
    deposit_kwh: int = 250
    cltv_expiry: int = 144
    reserve_blocks: int = 25
    block_time_s: int = 600
    invoice_expiry_s: int = 600
    retry_s: float = 5.0

    @property
    def htlc_window(self) -> timedelta:
        return timedelta(seconds=(self.cltv_expiry - self.reserve_blocks) * self.block_time_s)


class Stage(enum.Enum):
    CREATING_DEPOSIT = "creating deposit"
    DEPOSIT_SHOWN = "deposit shown"
    CHARGING = "charging"
    CREATING_FINAL = "creating final"
    FINAL_SHOWN = "final shown"
    CLOSED = "closed"


@dataclass
class _Hold:
    ref: str
    purpose: str
    amount_msat: int
    r_hash: bytes | None = None
    expires_at: datetime | None = None


@dataclass
class ManualPay:
    """One manual-pay sale. Every input takes ``now`` (an aware datetime) and returns actions."""

    settings: ManualSettings
    session_id: int
    rate_msat_per_kwh: int
    reserve_msat: int = 0  # stop and settle once less than this much deposit is left
    energy_nj: int = 0
    stage: Stage = Stage.CREATING_DEPOSIT
    plugged: bool = True
    paid_msat: int = 0
    deadline: datetime | None = None
    deposit_lost: bool = False
    _deposit: _Hold | None = None
    _final: _Hold | None = None
    _count: int = 0
    _retry_create_at: datetime | None = None
    _unconfirmed: dict[bytes, Action] = field(default_factory=dict)
    _discarded: set[bytes] = field(default_factory=set)
    _settled: set[bytes] = field(default_factory=set)

    @property
    def deposit_msat(self) -> int:
        return self.settings.deposit_kwh * self.rate_msat_per_kwh

    @property
    def value_msat(self) -> Fraction:
        return msat_for_energy(self.energy_nj, self.rate_msat_per_kwh)

    @property
    def power_wanted(self) -> bool:
        return self.plugged and self.stage is Stage.CHARGING and not self.deposit_lost

    @property
    def power_reason(self) -> str:
        if self.deposit_lost:
            return "manual pay: the deposit was canceled by the node"
        if self.stage in (Stage.CREATING_DEPOSIT, Stage.DEPOSIT_SHOWN):
            return "manual pay: waiting for the deposit"
        if self.stage is Stage.CHARGING:
            return "manual pay: deposit held"
        return "manual pay: sale closed"

    @property
    def secured_msat(self) -> int:
        """Money paid, plus the deposit while it is held for this sale."""
        held = self.stage in (Stage.CHARGING, Stage.CREATING_FINAL, Stage.FINAL_SHOWN) and not self.deposit_lost
        return self.paid_msat + (self._deposit.amount_msat if held else 0)

    @property
    def finished(self) -> bool:
        return self.stage is Stage.CLOSED and not self._unconfirmed and self._retry_create_at is None

    def owns(self, ref: str | None = None, r_hash: bytes | None = None) -> bool:
        holds = [h for h in (self._deposit, self._final) if h is not None]
        if ref is not None and any(h.ref == ref for h in holds):
            return True
        return r_hash is not None and (
            any(h.r_hash == r_hash for h in holds) or r_hash in self._discarded or r_hash in self._unconfirmed
        )

    # inputs ---------------------------------------------------------------------------

    def begin(self, now: datetime) -> list[Action]:
        return self._create_deposit(now)

    def energy(self, now: datetime, nj: int) -> list[Action]:
        self.energy_nj += nj
        if self.stage is Stage.CHARGING and not self.deposit_lost:
            left = self.deposit_msat - self.value_msat
            if left < self.reserve_msat:
                return self._settle_deposit("deposit used up")
        return []

    def unplugged(self, now: datetime) -> list[Action]:
        self.plugged = False
        if self.stage is Stage.DEPOSIT_SHOWN:
            return self._drop_deposit("car left before the deposit was paid")
        if self.stage is Stage.CHARGING:
            return self._bill(now)
        return []

    def invoice_created(self, now: datetime, ref: str, r_hash: bytes, payment_request: str) -> list[Action]:
        hold = next((h for h in (self._deposit, self._final) if h is not None and h.ref == ref), None)
        if hold is None or hold.r_hash is not None:
            return [Ignored(f"manual pay: creation report for unknown or known invoice {ref}")]
        hold.r_hash = r_hash
        if hold.purpose == "deposit" and self.stage is Stage.CREATING_DEPOSIT:
            if not self.plugged:
                return self._drop_deposit("car left before the deposit was shown")
            hold.expires_at = now + timedelta(seconds=self.settings.invoice_expiry_s)
            self.stage = Stage.DEPOSIT_SHOWN
            return [ShowPaymentRequest(ref, "deposit", payment_request, hold.amount_msat)]
        if hold.purpose == "final" and self.stage is Stage.CREATING_FINAL:
            self.stage = Stage.FINAL_SHOWN
            return [ShowPaymentRequest(ref, "final", payment_request, hold.amount_msat)]
        self._discarded.add(r_hash)
        return self._request(CancelInvoice(r_hash, "manual pay moved on before this invoice was shown"))

    def invoice_failed(self, now: datetime, ref: str, reason: str) -> list[Action]:
        if self.stage in (Stage.CREATING_DEPOSIT, Stage.CREATING_FINAL) and self.owns(ref=ref):
            self._retry_create_at = now + timedelta(seconds=self.settings.retry_s)
            return [Ignored(f"manual pay: creating {ref} failed ({reason}); retrying")]
        return []

    def invoice_accepted(self, now: datetime, r_hash: bytes, amt_paid_msat: int) -> list[Action]:
        deposit, final = self._deposit, self._final
        if deposit and r_hash == deposit.r_hash and self.stage is Stage.DEPOSIT_SHOWN:
            if amt_paid_msat < deposit.amount_msat:
                return [Ignored(f"manual pay: deposit held with {amt_paid_msat} msat, short of {deposit.amount_msat}")]
            self.stage = Stage.CHARGING
            self.deadline = now + self.settings.htlc_window
            return [HidePaymentRequest(deposit.ref)]
        if final and r_hash == final.r_hash and self.stage is Stage.FINAL_SHOWN:
            if amt_paid_msat < final.amount_msat:
                return [Ignored(f"manual pay: final held with {amt_paid_msat} msat, short of {final.amount_msat}")]
            self.stage = Stage.CLOSED
            actions: list[Action] = [HidePaymentRequest(final.ref)]
            actions += self._request(SettleInvoice(r_hash, "final invoice paid"))
            if deposit and deposit.r_hash and not self.deposit_lost:
                actions += self._request(CancelInvoice(deposit.r_hash, "final invoice paid; deposit returned"))
            return actions
        if r_hash in self._unconfirmed or r_hash in self._settled:
            return []
        # A payment held on an invoice we no longer stand behind (an expired deposit QR
        # someone still paid): hand the money back.
        self._discarded.add(r_hash)
        return self._request(CancelInvoice(r_hash, "payment on an invoice that is no longer in use"))

    def invoice_settled(self, now: datetime, r_hash: bytes, amt_paid_msat: int) -> list[Action]:
        self._unconfirmed.pop(r_hash, None)
        if r_hash in self._settled:
            return []
        self._settled.add(r_hash)
        self.paid_msat += amt_paid_msat
        return []

    def invoice_canceled(self, now: datetime, r_hash: bytes) -> list[Action]:
        requested = self._unconfirmed.pop(r_hash, None)
        if requested is not None or r_hash in self._discarded:
            return []
        deposit, final = self._deposit, self._final
        if deposit and r_hash == deposit.r_hash:
            if self.stage is Stage.DEPOSIT_SHOWN:
                return self._replace_deposit(now)
            if self.deadline is not None and not self.deposit_lost:
                self.deposit_lost = True
                return [Ignored("manual pay: the node canceled the held deposit; power stays off")]
        if final and r_hash == final.r_hash and self.stage is Stage.FINAL_SHOWN:
            self.stage = Stage.CLOSED
            actions: list[Action] = [HidePaymentRequest(final.ref)]
            if not self.deposit_lost:
                actions += self._request(SettleInvoice(deposit.r_hash, "final invoice lapsed unpaid"))
            return actions
        return []

    def tick(self, now: datetime) -> list[Action]:
        if self._retry_create_at is not None and now >= self._retry_create_at:
            self._retry_create_at = None
            if self.stage is Stage.CREATING_DEPOSIT:
                return self._create_deposit(now)
            if self.stage is Stage.CREATING_FINAL:
                return self._create_final(now, self._final.amount_msat)
        deposit = self._deposit
        if self.stage is Stage.DEPOSIT_SHOWN and deposit.expires_at and now >= deposit.expires_at:
            return self._replace_deposit(now)
        if self.deadline is not None and not self.deposit_lost:
            if self.stage is Stage.CHARGING and now >= self.deadline - self._final_window:
                return self._bill(now)
            if self.stage in (Stage.CREATING_FINAL, Stage.FINAL_SHOWN) and now >= self.deadline:
                return self._settle_deposit("final invoice not paid before the deposit's deadline")
        if self.deposit_lost and self.stage is Stage.FINAL_SHOWN and self._final.expires_at and now >= self._final.expires_at:
            self.stage = Stage.CLOSED
            return [HidePaymentRequest(self._final.ref)] + self._request(
                CancelInvoice(self._final.r_hash, "final invoice lapsed unpaid")
            )
        return []

    def retry(self, now: datetime) -> list[Action]:
        """Settles and cancels the node has not confirmed, to send again once it is back."""
        return list(self._unconfirmed.values())

    # internals ------------------------------------------------------------------------

    @property
    def _final_window(self) -> timedelta:
        # Billing a car still plugged in must leave the final invoice its minimum even when the
        # tick that bills comes a little late; with a window equal to the minimum it never would.
        return max(timedelta(seconds=self.settings.invoice_expiry_s), 2 * MIN_FINAL_WINDOW)

    def _request(self, action: SettleInvoice | CancelInvoice) -> list[Action]:
        self._unconfirmed[action.r_hash] = action
        return [action]

    def _next_ref(self, purpose: str) -> str:
        self._count += 1
        return f"{self.session_id}.{purpose}{self._count}"

    def _create_deposit(self, now: datetime) -> list[Action]:
        self.stage = Stage.CREATING_DEPOSIT
        self._deposit = _Hold(self._next_ref("deposit"), "deposit", self.deposit_msat)
        memo = (
            f"DistributedCharge deposit for up to {self.settings.deposit_kwh} kWh at "
            f"{format_msat(self.rate_msat_per_kwh)}/kWh; you pay only for what the car takes"
        )
        return [
            CreateHoldInvoice(
                self._deposit.ref, "deposit", self.deposit_msat,
                Fraction(self.settings.deposit_kwh * NJ_PER_KWH), self.rate_msat_per_kwh, memo,
                self.settings.invoice_expiry_s, self.settings.cltv_expiry,
            )
        ]

    def _replace_deposit(self, now: datetime) -> list[Action]:
        old = self._deposit
        actions: list[Action] = [HidePaymentRequest(old.ref)]
        if old.r_hash is not None:
            self._discarded.add(old.r_hash)
            actions += self._request(CancelInvoice(old.r_hash, "deposit invoice expired unpaid"))
        return actions + self._create_deposit(now)

    def _drop_deposit(self, reason: str) -> list[Action]:
        self.stage = Stage.CLOSED
        deposit = self._deposit
        actions: list[Action] = [HidePaymentRequest(deposit.ref)]
        if deposit.r_hash is not None:
            self._discarded.add(deposit.r_hash)
            actions += self._request(CancelInvoice(deposit.r_hash, reason))
        return actions

    def _bill(self, now: datetime) -> list[Action]:
        """End of charging: ask for what was used, or settle/cancel the deposit outright."""
        amount = math.ceil(self.value_msat)
        if self.deposit_lost:
            if amount == 0:
                self.stage = Stage.CLOSED
                return []
            return self._create_final(now, amount)
        if amount == 0:
            self.stage = Stage.CLOSED
            return self._request(CancelInvoice(self._deposit.r_hash, "no energy used; deposit returned"))
        if amount >= self._deposit.amount_msat:
            return self._settle_deposit("energy used is worth the whole deposit")
        if self.deadline - now < MIN_FINAL_WINDOW:
            return self._settle_deposit("too close to the deposit's deadline for a final invoice")
        return self._create_final(now, amount)

    def _create_final(self, now: datetime, amount: int) -> list[Action]:
        self.stage = Stage.CREATING_FINAL
        if self.deposit_lost:
            expiry = self.settings.invoice_expiry_s
        else:
            expiry = int((self.deadline - now).total_seconds())
        ref = self._next_ref("final")
        self._final = _Hold(ref, "final", amount, expires_at=now + timedelta(seconds=expiry))
        memo = (
            f"DistributedCharge: {format_kwh(self.energy_nj)} kWh at {format_msat(self.rate_msat_per_kwh)}/kWh"
            + ("" if self.deposit_lost else "; paying this returns your deposit")
        )
        return [
            CreateHoldInvoice(
                ref, "final", amount, Fraction(self.energy_nj), self.rate_msat_per_kwh, memo, expiry,
                self.settings.cltv_expiry,
            )
        ]

    def _settle_deposit(self, reason: str) -> list[Action]:
        self.stage = Stage.CLOSED
        actions: list[Action] = []
        final = self._final
        if final is not None:
            actions.append(HidePaymentRequest(final.ref))
            if final.r_hash is not None:
                self._discarded.add(final.r_hash)
                actions += self._request(CancelInvoice(final.r_hash, reason))
        return self._request(SettleInvoice(self._deposit.r_hash, reason)) + actions
