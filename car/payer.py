"""Paying one approved invoice through the owner's LND node, journal first.

The order never changes: commit an ``intent`` row, then SendPaymentV2, then record what
LND said. What happens when the answer does not come:

* **Unreachable** (node down, deadline) or any error we cannot classify: the row stays
  ``intent``/``in_flight`` and the payment is *unresolved*. Its amount plus fee limit keeps
  counting against the caps and its energy as paid for, so the car pays nothing more on
  the strength of it. :meth:`Payer.reconcile` settles it later with TrackPaymentV2.
* **AlreadyPaid** (LND knows the hash: paid or in flight): nothing is counted twice; the
  payment is tracked and the row gets LND's final state.
* **TrackPaymentV2 answers NotFound**: LND never initiated a payment to this hash, so no
  money moved. The row becomes ``failed`` ("never initiated"); the invoice may then be
  judged and tried again like any failed payment (``max_attempts`` in the policy). Should
  the first request still arrive at LND later, LND itself refuses the second one
  (AlreadyExists), which lands in the AlreadyPaid path above: still one payment.
* **PermissionDenied / InvalidRequest before any status**: LND refused the request before
  starting a payment (macaroon check, request validation), so the row becomes ``failed``.
  The same errors after a status was seen leave the row unresolved.

A hash whose row is ``intent``, ``in_flight`` or ``succeeded`` is never sent again:
:meth:`car.journal.Journal.record_intent` raises and :meth:`Payer.pay` reports ``refused``.
"""

from __future__ import annotations

import asyncio
import hashlib
import sqlite3
import time
from dataclasses import dataclass
from typing import Any, AsyncIterator, Awaitable, Callable, Protocol

from car.journal import DuplicatePayment, Journal
from car.policy import Pay
from distributedcharge import log
from distributedcharge.lightning import errors

SUCCEEDED, FAILED, UNRESOLVED, REFUSED = "succeeded", "failed", "unresolved", "refused"
NEVER_INITIATED = "never initiated (TrackPaymentV2: not found)"


class PaymentClient(Protocol):
    """The part of ``distributedcharge.lightning.client.LndClient`` the payer uses."""

    def send_payment(
        self, payment_request: str, *, timeout_s: int, fee_limit_msat: int, allow_self_payment: bool = False,
    ) -> AsyncIterator[Any]: ...

    def track_payment(self, payment_hash: bytes) -> AsyncIterator[Any]: ...


@dataclass(frozen=True)
class PaymentOutcome:
    """Where one payment stands: ``succeeded``, ``failed``, ``unresolved`` or ``refused`` (never sent)."""

    payment_hash: bytes
    state: str
    amount_msat: int
    fee_msat: int = 0
    preimage: bytes | None = None
    reason: str | None = None


class Payer:
    def __init__(
        self,
        journal: Journal,
        client: PaymentClient,
        *,
        timeout_s: int = 25,
        allow_self_payment: bool = True,
        clock: Callable[[], float] = time.time,
    ):
        self.journal = journal
        self.client = client
        self.timeout_s = timeout_s
        self.allow_self_payment = allow_self_payment
        self.clock = clock
        self.log = log.get("car.payer")

    async def pay(self, decision: Pay, session_id: int | None = None) -> PaymentOutcome:
        payment_hash = decision.payment_hash
        amount = decision.amount_msat
        try:
            self.journal.record_intent(
                payment_hash, decision.bolt11, amount, decision.fee_limit_msat, self.clock(), session_id
            )
        except DuplicatePayment as exc:
            self.log.warning("payment refused: would pay twice",
                             payment_hash=payment_hash.hex(), state=exc.state)
            return PaymentOutcome(payment_hash, REFUSED, amount, reason=str(exc))
        except sqlite3.Error as exc:
            self.log.error("payment refused: journal cannot record the intent", error=str(exc))
            return PaymentOutcome(payment_hash, REFUSED, amount, reason=f"journal unavailable: {exc}")

        self.log.info("paying", payment_hash=payment_hash.hex(), amount_msat=amount,
                      fee_limit_msat=decision.fee_limit_msat, attempt=decision.attempt)
        started = False
        try:
            stream = self.client.send_payment(
                decision.bolt11, timeout_s=self.timeout_s, fee_limit_msat=decision.fee_limit_msat,
                allow_self_payment=self.allow_self_payment,
            )
            async for status in stream:
                if _hash_of(status) not in (None, payment_hash):
                    continue
                started = True
                outcome = self._apply(payment_hash, amount, status)
                if outcome.state != UNRESOLVED:
                    return outcome
        except errors.AlreadyPaid as exc:
            self.log.warning("LND already knows this payment; tracking it", payment_hash=payment_hash.hex(),
                             error=exc.message)
            return await self._track(payment_hash, amount)
        except errors.PaymentFailed as exc:
            return self._failed(payment_hash, amount, exc.reason)
        except (errors.PermissionDenied, errors.InvalidRequest) as exc:
            if not started:
                return self._failed(payment_hash, amount, f"LND refused the request: {exc.message}")
            return self._unresolved(payment_hash, amount, exc)
        except Exception as exc:  # noqa: BLE001 - whatever broke, the intent row keeps the money safe
            return self._unresolved(payment_hash, amount, exc)
        return self._unresolved(payment_hash, amount, None)

    async def reconcile(self) -> list[PaymentOutcome]:
        """Ask LND about every unresolved journal entry (at start, and after Unreachable)."""
        pending = self.journal.unresolved_payments()
        if pending:
            self.log.info("reconciling unresolved payments", count=len(pending))
        return list(await asyncio.gather(*(self._track(r.payment_hash, r.amount_msat) for r in pending)))

    async def reconcile_until_resolved(
        self,
        *,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
        first_delay_s: float = 1.0,
        max_delay_s: float = 60.0,
    ) -> list[PaymentOutcome]:
        """Reconcile, retrying with exponential backoff while anything stays unresolved.

        Returns the final outcome of every entry that was unresolved at some point. Run it
        as a background task; cancelling it leaves the journal as it was.
        """
        final: dict[bytes, PaymentOutcome] = {}
        delay = first_delay_s
        while True:
            outcomes = await self.reconcile()
            final.update((o.payment_hash, o) for o in outcomes)
            if all(o.state != UNRESOLVED for o in outcomes):
                return list(final.values())
            await sleep(delay)
            delay = min(delay * 2, max_delay_s)

    async def _track(self, payment_hash: bytes, amount: int) -> PaymentOutcome:
        try:
            async for status in self.client.track_payment(payment_hash):
                if _hash_of(status) not in (None, payment_hash):
                    continue
                outcome = self._apply(payment_hash, amount, status)
                if outcome.state != UNRESOLVED:
                    return outcome
        except errors.NotFound:
            return self._failed(payment_hash, amount, NEVER_INITIATED)
        except Exception as exc:  # noqa: BLE001 - unresolved stays unresolved until LND answers
            return self._unresolved(payment_hash, amount, exc)
        return self._unresolved(payment_hash, amount, None)

    def _apply(self, payment_hash: bytes, amount: int, status: Any) -> PaymentOutcome:
        state = getattr(status, "status", None)
        now = self.clock()
        if state == "SUCCEEDED":
            fee = getattr(status, "fee_msat", 0)
            fee = fee if isinstance(fee, int) and fee >= 0 else 0
            preimage = _preimage(payment_hash, getattr(status, "preimage", None))
            if preimage is None:
                self.log.warning("LND reports success without a matching preimage",
                                 payment_hash=payment_hash.hex())
            self._journal_write(self.journal.mark_succeeded, payment_hash, fee, preimage, now)
            self.log.info("paid", payment_hash=payment_hash.hex(), amount_msat=amount, fee_msat=fee)
            return PaymentOutcome(payment_hash, SUCCEEDED, amount, fee, preimage)
        if state == "FAILED":
            return self._failed(payment_hash, amount, str(getattr(status, "failure_reason", "") or "FAILED"))
        self._journal_write(self.journal.mark_in_flight, payment_hash, now)
        return PaymentOutcome(payment_hash, UNRESOLVED, amount, reason="in flight")

    def _failed(self, payment_hash: bytes, amount: int, reason: str) -> PaymentOutcome:
        self._journal_write(self.journal.mark_failed, payment_hash, reason, self.clock())
        self.log.warning("payment failed", payment_hash=payment_hash.hex(), amount_msat=amount, reason=reason)
        return PaymentOutcome(payment_hash, FAILED, amount, reason=reason)

    def _unresolved(self, payment_hash: bytes, amount: int, exc: BaseException | None) -> PaymentOutcome:
        reason = "LND stream ended before a final state" if exc is None else f"{type(exc).__name__}: {exc}"
        self.log.warning("payment unresolved; will reconcile", payment_hash=payment_hash.hex(), reason=reason)
        return PaymentOutcome(payment_hash, UNRESOLVED, amount, reason=reason)

    def _journal_write(self, write: Callable[..., bool], *args: Any) -> None:
        # A lost result write is recovered by reconciliation: the intent row is still there.
        try:
            write(*args)
        except sqlite3.Error as exc:
            self.log.error("journal write failed; reconciliation will redo it", error=str(exc))


def _hash_of(status: Any) -> bytes | None:
    text = getattr(status, "payment_hash", None)
    if not isinstance(text, str) or not text:
        return None
    try:
        return bytes.fromhex(text)
    except ValueError:
        return None


def _preimage(payment_hash: bytes, text: Any) -> bytes | None:
    if not isinstance(text, str):
        return None
    try:
        preimage = bytes.fromhex(text)
    except ValueError:
        return None
    return preimage if hashlib.sha256(preimage).digest() == payment_hash else None

