"""The live side of the simulated network: clock, payment tasks, faults and notifications.

:class:`NetworkState` keeps the books; this class decides *when* things happen. A payment is
recorded in flight at once and routed by a task of its own after ``payment_latency_s``, so
a client that hangs up mid-payment changes nothing (as with lnd, the payment goes on).
Subscribers (invoice and payment streams) receive every change through :class:`Hub`.

Every transition is one synchronous SQLite transaction run on the event loop's thread with
no ``await`` inside, so two RPCs can never interleave within one: of two concurrent
payments of one invoice, exactly one is recorded and the other is refused, without a lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Hashable
from dataclasses import dataclass, field

from distributedcharge import log
from distributedcharge.simnet.state import Change, InvoiceRecord, NetworkState, PaymentRecord

logger = log.get("simnet")

# How often open invoices are checked for expiry (lnd's watcher reacts within about a second too).
EXPIRY_SWEEP_S = 1.0


class Hub:
    """Fan-out of state changes to the streams that wait for them, keyed by topic."""

    def __init__(self) -> None:
        self._queues: dict[Hashable, set[asyncio.Queue]] = defaultdict(set)

    @contextlib.asynccontextmanager
    async def subscribe(self, topic: Hashable) -> AsyncIterator[asyncio.Queue]:
        queue: asyncio.Queue = asyncio.Queue()
        self._queues[topic].add(queue)
        try:
            yield queue
        finally:
            self._queues[topic].discard(queue)
            if not self._queues[topic]:
                del self._queues[topic]

    def publish(self, topic: Hashable, item: object) -> None:
        for queue in self._queues.get(topic, ()):
            queue.put_nowait(item)


def invoice_topic(node: str) -> tuple[str, str]:
    return ("invoices", node)


def payment_topic(payer: str, payment_hash: bytes) -> tuple[str, str, bytes]:
    return ("payment", payer, payment_hash)


@dataclass
class Faults:
    """Per-node fault injection, set by the control channel or by tests."""

    online: bool = True
    latency_s: float = 0.0
    failing_payments: int = 0


@dataclass
class Network:
    state: NetworkState
    fee_base_msat: int = 1000
    fee_ppm: int = 1
    payment_latency_s: float = 0.02
    clock: Callable[[], int] = time.time_ns
    hub: Hub = field(default_factory=Hub)
    faults: dict[str, Faults] = field(default_factory=lambda: defaultdict(Faults))
    _tasks: set[asyncio.Task] = field(default_factory=set)

    def now_ns(self) -> int:
        return self.clock()

    def publish(self, change: Change) -> None:
        if change.invoice is not None:
            self.publish_invoice(change.invoice)
        if change.payment is not None:
            self.publish_payment(change.payment)

    def publish_invoice(self, invoice: InvoiceRecord) -> None:
        self.hub.publish(invoice_topic(invoice.node), invoice)

    def publish_payment(self, payment: PaymentRecord) -> None:
        self.hub.publish(payment_topic(payment.payer, payment.payment_hash), payment)

    # --- payments --------------------------------------------------------------------------

    def start_payment(self, payer: str, **intent) -> PaymentRecord:
        """Record the payment in flight and schedule its routing; raises LndError if refused."""
        payment = self.state.begin_payment(payer, now_ns=self.now_ns(), **intent)
        faults = self.faults[payer]
        forced_failure = faults.failing_payments > 0
        if forced_failure:
            faults.failing_payments -= 1
        self.publish_payment(payment)
        self._schedule_route(payment, forced_failure)
        return payment

    def resume_payments(self) -> None:
        """Route payments a previous run recorded but never sent."""
        for payment in self.state.unrouted_payments():
            logger.info("resuming payment", payer=payment.payer, payment_hash=payment.payment_hash.hex())
            self._schedule_route(payment, forced_failure=False)

    def _schedule_route(self, payment: PaymentRecord, forced_failure: bool) -> None:
        task = asyncio.get_running_loop().create_task(self._route_later(payment, forced_failure))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _route_later(self, payment: PaymentRecord, forced_failure: bool) -> None:
        await asyncio.sleep(self.payment_latency_s)
        try:
            change = self.state.route_payment(
                payment.payer,
                payment.payment_hash,
                fee_base_msat=self.fee_base_msat,
                fee_ppm=self.fee_ppm,
                forced_failure=forced_failure,
                reachable=lambda name: self.faults[name].online,
                now_ns=self.now_ns(),
            )
        except sqlite3.Error as exc:
            # The transaction rolled back, so the payment stays in flight untouched; the next
            # start routes it again.
            logger.error("payment not routed", payer=payment.payer, payment_hash=payment.payment_hash.hex(),
                         error=str(exc))
            return
        if change.payment is not None:
            logger.info(
                "payment routed",
                payer=payment.payer,
                payment_hash=payment.payment_hash.hex(),
                status=change.payment.status.name,
                failure_reason=change.payment.failure_reason.name,
                value_msat=change.payment.value_msat,
                fee_msat=change.payment.fee_msat,
            )
        self.publish(change)

    # --- invoices --------------------------------------------------------------------------

    async def sweep_expired_invoices(self) -> None:
        while True:
            try:
                expired = self.state.expire_invoices(self.now_ns())
            except sqlite3.Error as exc:
                logger.error("expiry sweep failed", error=str(exc))
                expired = []
            for invoice in expired:
                logger.info("invoice expired", node=invoice.node, payment_hash=invoice.payment_hash.hex())
                self.publish_invoice(invoice)
            await asyncio.sleep(EXPIRY_SWEEP_S)

    async def close(self) -> None:
        """Stop routing; payments still waiting are resumed by the next run."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
