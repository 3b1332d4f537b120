"""``distributedcharge car``: the car daemon, from the car's own CAN bus to the owner's LND node.

This module only wires; every decision is made by a sans-IO core:

* vehicle CAN frames -> :class:`~distributedcharge.vehicle.reader.VehicleState` (plug, SWCAN
  link, charge state, current) and :class:`~distributedcharge.vehicle.meter.EnergyMeter`
  (energy from the frames' own timestamps);
* SWCAN events from :class:`~distributedcharge.swcan.link.CarLink` -> :class:`~car.policy.BuyerPolicy`
  (answer offers, judge invoices in the order they came);
* approved invoices -> :class:`~car.payer.Payer` (journal row first, then SendPaymentV2),
  one payment at a time.

A session follows the plug: it starts when the car reports the plug latched and ends
when the car reports it unlatched or gone (or its bus stays silent for
:data:`PLUG_UNKNOWN_GRACE_S`); the link, the accepted offer and the invoice queue end with
it, and the journal keeps both meters' energy. A daemon that died mid-session and comes back with
the plug still latched (within :data:`RESUME_WITHIN_S`) carries the session on from the
journal: acceptance, payee, payments and meter. An invoice that is not yet due stays at
the head of the queue and is judged again once the meter has moved. While LND cannot be
reached the daemon keeps metering and answering offers, invoices wait in the queue, and
it retries with backoff; a payment whose outcome is unknown blocks the next one until
TrackPaymentV2 settles it. Every timer and timestamp comes from the injected
:class:`~distributedcharge.clock.Clock`, so a simulation may compress time.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import sqlite3
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import can

from car import config as car_config
from car import journal as car_journal
from car import policy as car_policy
from car.journal import Journal, OpenSession
from car.payer import FAILED, REFUSED, SUCCEEDED, UNRESOLVED, Payer, PaymentOutcome
from car.policy import (
    Accept,
    BuyerPolicy,
    NotYetDue,
    Pay,
    Refuse,
    SessionPayment,
    Terms,
    wh_bought,
)
from distributedcharge import config, daemon, log
from distributedcharge.backoff import Backoff
from distributedcharge.canloop import LoopListener
from distributedcharge.clock import Clock
from distributedcharge.daemon import StartupError
from distributedcharge.lightning import errors, macaroons, privilege
from distributedcharge.lightning.client import LndClient
from distributedcharge.lightning.node import NodeAddress, address_from_config
from distributedcharge.relay import RelayError, SwcanRelay
from distributedcharge.swcan import messages as msg
from distributedcharge.swcan.adapter import SwcanPort, TransferFailed, open_port
from distributedcharge.swcan.errors import LinkStateError
from distributedcharge.swcan.link import Dropped, InvoiceReceived, OfferReceived
from distributedcharge.vehicle import config as vehicle_config
from distributedcharge.vehicle.reader import (
    LayoutDetected,
    Malformed,
    vehicle_can_filters,
)

DEFAULT_CONFIG = "/etc/distributedcharge/car.toml"

TICK_S = 0.25
ENERGY_RECORD_EVERY_S = 10.0
MALFORMED_LOG_EVERY_S = 10.0
# A silent vehicle bus says nothing about the plug; a brief silence must not end a session
# the wall would then never offer again.
PLUG_UNKNOWN_GRACE_S = 10.0
# A daemon restarted within this long of its last journal entry, with the plug still
# latched, carries the session on (the wall is still selling and will not offer again).
# Longer, and the cable may have come out and gone into another wall meanwhile.
RESUME_WITHIN_S = 60.0
# A wall keeps one invoice outstanding (two around a tariff change); more is a flood.
MAX_QUEUED_INVOICES = 16
RETRY_FIRST_S = 1.0
RETRY_MAX_S = 30.0
# The original car's SendPaymentV2 timeout.
PAYMENT_TIMEOUT_S = 25
VEHICLE_BUS_ERROR_BACKOFF_S = 0.5

# Verdict codes of the daemon itself, beside the policy's car.policy.Code values.
QUEUE_FULL = "queue_full"
DROPPED = "dropped"


@dataclass
class _QueuedInvoice:
    bolt11: str
    bound_offer: msg.Offer | None  # v2: the offer the wall bound it to; v1: the session's offer
    wall_energy_nj: int | None
    wall_session_id: int | None = None
    noted_not_yet_due: bool = False


@dataclass
class _Session:
    journal_id: int
    baseline_nj: int  # the meter's total at plug-in
    wall_energy_nj: int | None = None
    protocol_version: int | None = None
    payee_recorded: bool = False
    energy_recorded_at: float = field(default=0.0)


class CarDaemon:
    def __init__(self, cfg: config.Config, clock: Clock = Clock(), *, relay_pin_factory: Any = None):
        self.cfg = cfg
        self.clock = clock
        self.log = log.get("car")
        self.settings = car_config.buyer_settings_from_config(cfg["buyer"])
        self.vehicle, self.meter = vehicle_config.build(cfg["vehicle"])
        self._relay_pin_factory = relay_pin_factory
        self.journal: Journal | None = None
        self.client: LndClient | None = None
        self.policy: BuyerPolicy | None = None
        self.payer: Payer | None = None
        self.port: SwcanPort | None = None
        self.vehicle_bus: can.BusABC | None = None
        self.relay: SwcanRelay | None = None
        self.session: _Session | None = None
        self.invoices: deque[_QueuedInvoice] = deque()
        self._notifier: can.Notifier | None = None
        self._offer_before_plug_in: OfferReceived | None = None
        self._resumable: OpenSession | None = None
        self._wake = asyncio.Event()
        self._held_at_nj: int | None = None
        self._plug_unknown_since: float | None = None
        self._charging = False
        self._backoff = Backoff(RETRY_FIRST_S, RETRY_MAX_S)
        self._lnd_trouble: str | None = None
        self._malformed_logged_at: float | None = None
        self._malformed_unlogged = 0
        self._bus_error_logged_at: float | None = None

    # --- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        try:
            await self._start()
        except BaseException:
            await self.stop()
            raise

    async def _start(self) -> None:
        cfg = self.cfg
        self.journal = self._open_journal(Path(cfg["state"]["dir"]))
        address = self._node_address()
        for warning in self._check_macaroon(address.macaroon):
            self.log.warning("overprivileged macaroon allowed by lightning.allow_overprivileged_macaroon",
                             detail=warning)
        self.client = LndClient(address, timeout_s=cfg["lightning"]["rpc_timeout_s"], clock=self.clock.monotonic)
        self.policy = BuyerPolicy(self.settings, self.journal.settled_or_pending_hashes(self.settings.max_attempts))
        self.payer = Payer(self.journal, self.client, timeout_s=PAYMENT_TIMEOUT_S, clock=self.clock.time)
        self.relay = self._open_relay()
        self.vehicle_bus = self._open_bus("vehicle_can", lambda: can.Bus(
            interface=cfg["vehicle_can"]["interface"], channel=cfg["vehicle_can"]["channel"],
            bitrate=cfg["vehicle_can"]["bitrate"], can_filters=vehicle_can_filters()))
        self.port = self._open_bus("swcan", lambda: open_port(cfg["swcan"], "car"))
        await self.port.start()
        listener = LoopListener(asyncio.get_running_loop(), self._on_vehicle_frame, self._on_vehicle_bus_error,
                                error_backoff_s=VEHICLE_BUS_ERROR_BACKOFF_S)
        self._notifier = can.Notifier(self.vehicle_bus, [listener], timeout=0.5)
        self.log.info("car daemon ready", node=address.target, network=self.settings.network,
                      swcan=cfg["swcan"]["channel"], vehicle_can=cfg["vehicle_can"]["channel"],
                      relay_gpio=self.relay.pin if self.relay else None)

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(self._swcan_events(), name="swcan")
            tasks.create_task(self._ticks(), name="ticks")
            tasks.create_task(self._payments(), name="payments")

    async def stop(self) -> None:
        if self.session is not None and self.journal is not None:
            session, self.session = self.session, None
            self._journal_write(self._record_energy, session)
            self._journal_write(self.journal.end_session, session.journal_id, self.clock.time(), "daemon stopped")
        if self._notifier is not None:
            notifier, self._notifier = self._notifier, None
            await asyncio.to_thread(notifier.stop)
        if self.port is not None:
            port, self.port = self.port, None
            await port.close()
            self._shut_down(port.bus)
        if self.vehicle_bus is not None:
            bus, self.vehicle_bus = self.vehicle_bus, None
            self._shut_down(bus)
        if self.relay is not None:
            relay, self.relay = self.relay, None
            relay.close()
        if self.client is not None:
            client, self.client = self.client, None
            await client.close()
        if self.journal is not None:
            journal, self.journal = self.journal, None
            journal.close()

    def _shut_down(self, bus: can.BusABC) -> None:
        try:
            bus.shutdown()
        except (can.CanError, OSError) as exc:
            self.log.warning("bus did not shut down cleanly", channel=bus.channel_info, error=str(exc))

    # --- start-up checks -----------------------------------------------------------------

    def _open_journal(self, state_dir: Path) -> Journal:
        try:
            state_dir.mkdir(parents=True, exist_ok=True)
            journal = Journal.in_dir(state_dir)
        except (OSError, sqlite3.Error) as exc:
            raise StartupError(f"state.dir {state_dir}: cannot open the payment journal: {exc}") from None
        try:
            self._resumable = journal.open_session(self.clock.time(), RESUME_WITHIN_S)
            keep = self._resumable.id if self._resumable else None
            abandoned = journal.close_abandoned_sessions(self.clock.time(), keep=keep)
        except sqlite3.Error as exc:
            journal.close()
            raise StartupError(f"state.dir {state_dir}: cannot write the payment journal: {exc}") from None
        if abandoned:
            self.log.warning("closed sessions left open by an earlier run", sessions=abandoned)
        return journal

    def _node_address(self) -> NodeAddress:
        try:
            return address_from_config(self.cfg["lightning"], "car config")
        except config.ConfigError as exc:
            raise StartupError("; ".join(exc.problems)) from None

    def _check_macaroon(self, raw: bytes) -> list[str]:
        try:
            macaroon = macaroons.parse(raw)
            return privilege.check("car", macaroon, self.cfg["lightning"]["allow_overprivileged_macaroon"])
        except macaroons.MacaroonError as exc:
            raise StartupError(f"lightning macaroon: {exc}") from None
        except privilege.PrivilegeError as exc:
            raise StartupError(str(exc)) from None

    def _open_relay(self) -> SwcanRelay | None:
        pin = car_config.relay_pin(self.cfg["relay"])
        if pin is None:
            return None
        try:
            return SwcanRelay(pin, active_high=self.cfg["relay"]["active_high"], pin_factory=self._relay_pin_factory)
        except RelayError as exc:
            raise StartupError(str(exc)) from None

    def _open_bus(self, section: str, opener: Callable[[], Any]) -> Any:
        where = f"{self.cfg[section]['interface']} {self.cfg[section]['channel']}"
        try:
            return opener()
        except (can.CanError, OSError, ValueError, ImportError) as exc:
            raise StartupError(f"{section}: cannot open {where}: {type(exc).__name__}: {exc}") from None

    # --- vehicle CAN (called in the loop for each frame) ---------------------------------

    def _on_vehicle_frame(self, message: can.Message) -> None:
        if message.is_error_frame or message.is_remote_frame or message.is_extended_id:
            return
        timestamp = self.clock.from_frame_timestamp(message.timestamp)
        for event in self.vehicle.feed(message.arbitration_id, bytes(message.data), timestamp):
            if isinstance(event, Malformed):
                self._note_malformed(event)
            elif isinstance(event, LayoutDetected):
                self.log.info("vehicle signal layout detected", layout=event.layout)
            else:
                self.meter.observe(event)

    def _note_malformed(self, event: Malformed) -> None:
        self._malformed_unlogged += 1
        now = self.clock.monotonic()
        if self._malformed_logged_at is not None and now - self._malformed_logged_at < MALFORMED_LOG_EVERY_S:
            return
        self.log.warning("vehicle frame skipped", can_id=f"0x{event.arbitration_id:03X}", reason=event.reason,
                         skipped_since_last_report=self._malformed_unlogged,
                         skipped_total=sum(self.vehicle.malformed.values()))
        self._malformed_logged_at = now
        self._malformed_unlogged = 0

    def _on_vehicle_bus_error(self, exc: Exception) -> None:
        now = self.clock.monotonic()
        if self._bus_error_logged_at is None or now - self._bus_error_logged_at >= MALFORMED_LOG_EVERY_S:
            self.log.warning("vehicle CAN read failed", error=f"{type(exc).__name__}: {exc}")
            self._bus_error_logged_at = now

    # --- periodic work -------------------------------------------------------------------

    async def _ticks(self) -> None:
        while True:
            await self._tick()
            await self.clock.sleep(TICK_S)

    async def _tick(self) -> None:
        # The reader's clock is the frames' own; this is "now" on that axis.
        self.vehicle.tick(self.clock.from_frame_timestamp(self.clock.time()))
        if self.relay is not None and self.relay.set(self.vehicle.relay_should_be_closed):
            self.log.info("swcan relay " + ("closed" if self.relay.closed else "opened"), gpio=self.relay.pin)
        charging = self.vehicle.charging
        if charging != self._charging:
            self._charging = charging
            self.log.info("charging" if charging else "not charging", current_da=self.vehicle.measured_current_da,
                          ac_charge_state=self.vehicle.ac_charge_state)
        await self._follow_plug()
        session = self.session
        if session is None:
            return
        now = self.clock.monotonic()
        if now - session.energy_recorded_at >= ENERGY_RECORD_EVERY_S:
            session.energy_recorded_at = now
            self._journal_write(self._record_energy, session)
        if self._held_at_nj is not None and self._energy_nj(session) > self._held_at_nj:
            self._wake.set()

    async def _follow_plug(self) -> None:
        if self.vehicle.plug_latched:
            self._plug_unknown_since = None
            if self.session is None:
                if self._resumable is not None:
                    self._resume_session(self._resumable)
                else:
                    self._begin_session()
            return
        if self.session is None:
            if self._resumable is not None and self.vehicle.pilot_current_da is not None:
                self._close_resumable("unplugged while the daemon was down")
            return
        # pilot_current_da is None exactly when the car's charge-port status is stale.
        if self.vehicle.pilot_current_da is not None:
            await self._end_session("unplugged")
            return
        now = self.clock.monotonic()
        if self._plug_unknown_since is None:
            self._plug_unknown_since = now
            self.log.warning("vehicle CAN silent: plug state unknown", grace_s=PLUG_UNKNOWN_GRACE_S)
        elif now - self._plug_unknown_since >= PLUG_UNKNOWN_GRACE_S:
            await self._end_session("vehicle CAN silent")

    # --- sessions ------------------------------------------------------------------------

    def _begin_session(self) -> None:
        assert self.journal is not None and self.policy is not None
        now = self.clock.time()
        try:
            journal_id = self.journal.start_session(now)
        except sqlite3.Error as exc:
            self.log.error("cannot record the session start; will retry", error=str(exc))
            return
        self.policy.start_session(now)
        self.session = _Session(journal_id, self.meter.energy_nj, energy_recorded_at=self.clock.monotonic())
        self.invoices.clear()
        self._held_at_nj = None
        self._backoff.reset()
        self.log.info("plugged in: session started", session=journal_id)
        waiting, self._offer_before_plug_in = self._offer_before_plug_in, None
        if waiting is not None:
            self._answer_offer(waiting)

    def _resume_session(self, record: OpenSession) -> None:
        """Carry on the session the journal left open: plug, acceptance, payments and meter.

        Energy that flowed while the daemon was down went unmetered: the car then counts
        less received than the wall and pays later, never sooner.
        """
        assert self.journal is not None and self.policy is not None and self.port is not None
        self._resumable = None
        # Read again: reconciliation at start may have settled its payments since.
        try:
            fresh = self.journal.open_session(self.clock.time(), math.inf)
        except sqlite3.Error as exc:
            self.log.error("cannot read the earlier session; will retry", error=str(exc))
            self._resumable = record
            return
        if fresh is None or fresh.id != record.id:
            self._begin_session()
            return
        record = fresh
        accepted = record.accepted_offers[-1] if record.accepted_offers else None
        if accepted is not None:
            offer = msg.Offer(accepted.rate_msat_per_kwh, accepted.payment_msat)
            try:
                self.port.apply(lambda link, _: link.resume(
                    offer, accepted.protocol_version, accepted.wall_session_id, accepted.offer_number))
            except (LinkStateError, ValueError, TypeError) as exc:
                self.log.warning("cannot take up the earlier session's acceptance; starting afresh",
                                 session=record.id, reason=str(exc))
                self._close_resumable("daemon stopped during the session")
                self._begin_session()
                return
        self.policy.resume_session(
            record.started_at, _distinct_in_order(Terms(o.rate_msat_per_kwh, o.payment_msat)
                                                  for o in record.accepted_offers),
            record.payee, _session_payments(record))
        self.session = _Session(record.id, self.meter.energy_nj - record.car_energy_nj, record.wall_energy_nj,
                                record.protocol_version, payee_recorded=record.payee is not None,
                                energy_recorded_at=self.clock.monotonic())
        self.invoices = deque(
            _QueuedInvoice(w.bolt11, msg.Offer(*w.terms) if w.terms else None, w.wall_energy_nj,
                           wall_session_id=w.wall_session_id, noted_not_yet_due=True)
            for w in record.waiting)
        self._held_at_nj = None
        self._backoff.reset()
        self.log.info("plug still latched: session resumed", session=record.id,
                      accepted=accepted is not None, car_energy_nj=record.car_energy_nj,
                      invoices_waiting=len(self.invoices))
        self._wake.set()

    def _close_resumable(self, reason: str) -> None:
        assert self.journal is not None
        record, self._resumable = self._resumable, None
        if record is not None:
            self._journal_write(self.journal.end_session, record.id, self.clock.time(), reason)
            self.log.info("earlier session closed", session=record.id, reason=reason)

    async def _end_session(self, reason: str) -> None:
        assert self.journal is not None and self.policy is not None and self.port is not None
        session, self.session = self.session, None
        if session is None:
            return
        self.invoices.clear()
        self._held_at_nj = None
        self._offer_before_plug_in = None
        self._plug_unknown_since = None
        await self.port.unplugged()
        record = self.policy.end_session(self.clock.time())
        self._journal_write(self._record_energy, session)
        self._journal_write(self.journal.end_session, session.journal_id, self.clock.time(), reason)
        self.log.info("session ended", session=session.journal_id, reason=reason,
                      car_energy_nj=self._energy_nj(session), wall_energy_nj=session.wall_energy_nj,
                      paid_msat=record.paid_msat, fees_msat=record.fees_msat, refusals=len(record.refusals))

    def _energy_nj(self, session: _Session) -> int:
        return self.meter.energy_nj - session.baseline_nj

    def _record_energy(self, session: _Session) -> None:
        assert self.journal is not None
        self.journal.update_energy(session.journal_id, self._energy_nj(session), session.wall_energy_nj,
                                   now=self.clock.time())

    def _journal_write(self, write: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        # The records matter, but a full disk must not stop the meter or the refusals;
        # payments themselves never go out without their journal row (car.payer).
        try:
            write(*args, **kwargs)
        except sqlite3.Error as exc:
            self.log.error("journal write failed", error=str(exc))

    # --- SWCAN ---------------------------------------------------------------------------

    async def _swcan_events(self) -> None:
        assert self.port is not None
        while True:
            event = await self.port.events.get()
            if isinstance(event, OfferReceived):
                if self.session is None:
                    self.log.info("offer before the plug is latched; answering at plug-in",
                                  rate_msat_per_kwh=event.offer.rate_msat_per_kwh,
                                  payment_msat=event.offer.payment_msat)
                    self._offer_before_plug_in = event
                else:
                    self._answer_offer(event)
            elif isinstance(event, InvoiceReceived):
                self._queue_invoice(event)
            elif isinstance(event, Dropped):
                self._note_dropped(event)
            elif isinstance(event, TransferFailed):
                self.log.debug("swcan transfer failed", reason=event.reason)

    def _answer_offer(self, event: OfferReceived) -> None:
        assert self.port is not None and self.policy is not None and self.journal is not None
        session = self.session
        if session is None or self.port.link.pending != event:
            return  # newer terms replaced these; the link reports them as a new event
        now = self.clock.time()
        decision = self.policy.consider_offer(event.offer, now)
        accepted = isinstance(decision, Accept)
        self.port.apply(lambda link, _: link.accept(event.offer) if accepted else link.reject(event.offer))
        offer = event.offer
        if isinstance(decision, Accept):
            self.log.info("offer accepted", rate_msat_per_kwh=offer.rate_msat_per_kwh,
                          payment_msat=offer.payment_msat, version=event.version, tariff_change=decision.is_change,
                          wall_session=event.session_id)
            if session.protocol_version is None:
                session.protocol_version = event.version
                self._journal_write(self.journal.set_protocol_version, session.journal_id, event.version)
            self._journal_write(self.journal.record_offer, session.journal_id, now, offer.rate_msat_per_kwh,
                                offer.payment_msat, is_change=decision.is_change, accepted=True,
                                protocol_version=event.version, wall_session_id=event.session_id,
                                offer_number=event.offer_number)
            if event.session_id is not None:
                self._forget_other_wall_sessions(event.session_id)
            self._wake.set()
        else:
            self.log.warning("offer rejected", code=str(decision.code), reason=decision.reason,
                             rate_msat_per_kwh=offer.rate_msat_per_kwh, payment_msat=offer.payment_msat,
                             tariff_change=event.mid_session)
            self._journal_write(self.journal.record_offer, session.journal_id, now, offer.rate_msat_per_kwh,
                                offer.payment_msat, is_change=event.mid_session, accepted=False,
                                reason=f"{decision.code}: {decision.reason}")

    def _forget_other_wall_sessions(self, wall_session_id: int) -> None:
        """A restarted wall cancels what it issued before, so those invoices are not worth paying."""
        kept = deque(i for i in self.invoices if i.wall_session_id in (None, wall_session_id))
        if len(kept) < len(self.invoices):
            dropped = len(self.invoices) - len(kept)
            self.invoices = kept
            self._held_at_nj = None
            self.log.info("invoices of the wall's earlier session dropped", count=dropped)

    def _queue_invoice(self, event: InvoiceReceived) -> None:
        assert self.journal is not None
        session = self.session
        if session is None:
            self.log.warning("invoice outside a session ignored")
            return
        if event.wall_energy_nj is not None:
            session.wall_energy_nj = event.wall_energy_nj
        if len(self.invoices) >= MAX_QUEUED_INVOICES:
            reason = f"{len(self.invoices)} invoices already wait to be judged"
            self.log.warning("invoice refused", code=QUEUE_FULL, reason=reason)
            self._journal_write(self.journal.record_invoice, session.journal_id, self.clock.time(), event.bolt11,
                                "refused", code=QUEUE_FULL, reason=reason, car_energy_nj=self._energy_nj(session),
                                wall_energy_nj=event.wall_energy_nj)
            return
        bound = event.offer if event.version == msg.PROTOCOL_V2 else None
        self.invoices.append(_QueuedInvoice(event.bolt11, bound, event.wall_energy_nj,
                                            wall_session_id=event.session_id))
        self._wake.set()

    def _note_dropped(self, event: Dropped) -> None:
        """The adapter has logged it; a payload (an invoice slot) also goes into the session record."""
        session = self.session
        if session is None or event.can_id is not None or self.journal is None:
            return
        reason = f"{event.reason} ({len(event.data)} bytes, starting {event.data[:16].hex()})"
        self._journal_write(self.journal.record_invoice, session.journal_id, self.clock.time(), "", "refused",
                            code=DROPPED, reason=reason, car_energy_nj=self._energy_nj(session))

    # --- payments ------------------------------------------------------------------------

    async def _payments(self) -> None:
        # A resumed session counts these payments as pending until it hears how they ended.
        for outcome in await self._reconcile("at start"):
            self._apply(outcome)
        while True:
            await self._wake.wait()
            self._wake.clear()
            delay = await self._judge_invoices()
            if delay is not None:
                await self.clock.sleep(delay)
                self._wake.set()

    async def _reconcile(self, when: str) -> list[PaymentOutcome]:
        assert self.payer is not None
        outcomes = await self.payer.reconcile_until_resolved(
            sleep=self.clock.sleep, first_delay_s=RETRY_FIRST_S, max_delay_s=RETRY_MAX_S)
        for outcome in outcomes:
            self.log.info("payment reconciled", when=when, payment_hash=outcome.payment_hash.hex(),
                          state=outcome.state, amount_msat=outcome.amount_msat, fee_msat=outcome.fee_msat,
                          reason=outcome.reason)
        return outcomes

    async def _judge_invoices(self) -> float | None:
        """Judge the queue in order until it is empty or its head must wait; returns seconds
        to wait before trying again, or None to wait for the next invoice or energy."""
        assert self.client is not None and self.policy is not None and self.journal is not None
        while self.session is not None and self.invoices:
            session, head = self.session, self.invoices[0]
            try:
                balance = await self.client.channel_balance_msat()
            except errors.LightningError as exc:
                return self._lnd_unavailable(exc)
            self._lnd_available()
            if self.session is not session or not self.invoices or self.invoices[0] is not head:
                continue
            now = self.clock.time()
            received = self._energy_nj(session)
            try:
                spent_session = self.journal.spent_session_msat(session.journal_id)
                spent_today = self.journal.spent_today_msat(now)
            except sqlite3.Error as exc:
                # Without the totals the caps cannot be checked, so nothing is paid.
                self.log.error("journal unreadable; invoices wait", error=str(exc))
                return self._backoff.next()
            decision = self.policy.consider_invoice(
                head.bolt11, head.bound_offer, received, self.vehicle.measured_current_da, balance, now,
                spent_session, spent_today)
            if isinstance(decision, NotYetDue):
                self._held_at_nj = received
                if not head.noted_not_yet_due:
                    head.noted_not_yet_due = True
                    self.log.info("invoice not yet due", payment_hash=decision.invoice.payment_hash_hex,
                                  reason=decision.reason)
                    self._record_verdict(session, head, "not_yet_due", decision.code, decision.reason,
                                         decision.invoice)
                return None
            self._held_at_nj = None
            self.invoices.popleft()
            if isinstance(decision, Refuse):
                self.log.warning("invoice refused", code=str(decision.code), reason=decision.reason,
                                 payment_hash=decision.invoice.payment_hash_hex if decision.invoice else None)
                self._record_verdict(session, head, "refused", decision.code, decision.reason, decision.invoice)
                continue
            delay = await self._pay(session, head, decision)
            if delay is not None:
                return delay
        return None

    def _record_verdict(self, session: _Session, head: _QueuedInvoice, verdict: str, code: str | None,
                        reason: str | None, invoice: Any, terms: Any = None) -> None:
        """``terms``: what a payment buys energy at; else the offer the wall bound the invoice to."""
        assert self.journal is not None
        bound = terms if terms is not None else head.bound_offer
        self._journal_write(
            self.journal.record_invoice, session.journal_id, self.clock.time(), head.bolt11, verdict,
            code=code, reason=reason, payment_hash=invoice.payment_hash if invoice else None,
            amount_msat=invoice.amount_msat if invoice else None, payee=invoice.payee if invoice else None,
            car_energy_nj=self._energy_nj(session), wall_energy_nj=head.wall_energy_nj,
            terms=(bound.rate_msat_per_kwh, bound.payment_msat) if bound is not None else None,
            wall_session_id=head.wall_session_id)

    async def _pay(self, session: _Session, head: _QueuedInvoice, decision: Pay) -> float | None:
        assert self.payer is not None and self.journal is not None
        self._record_verdict(session, head, "pay", None, None, decision.invoice, decision.terms)
        if not session.payee_recorded:
            session.payee_recorded = True
            self._journal_write(self.journal.set_payee, session.journal_id, decision.invoice.payee)
        outcome = await self.payer.pay(decision, session.journal_id)
        if outcome.state == UNRESOLVED:
            settled = {o.payment_hash: o for o in await self._reconcile("after an unresolved payment")}
            for other in settled.values():
                self._apply(other)
            outcome = settled.get(outcome.payment_hash, outcome)
        else:
            self._apply(outcome)
        if outcome.state == FAILED:
            if self.session is session:
                # Judged again after a pause: the policy allows max_attempts tries of one invoice.
                self.invoices.appendleft(head)
            return self._backoff.next()
        if outcome.state == SUCCEEDED:
            self._backoff.reset()
        return None

    def _apply(self, outcome: PaymentOutcome) -> None:
        assert self.policy is not None
        if outcome.state == SUCCEEDED:
            self.policy.payment_succeeded(outcome.payment_hash, outcome.amount_msat, outcome.fee_msat)
        elif outcome.state in (FAILED, REFUSED):
            self.policy.payment_failed(outcome.payment_hash, outcome.reason or outcome.state)

    def _lnd_unavailable(self, exc: errors.LightningError) -> float:
        if self._lnd_trouble is None:
            self.log.warning("LND unavailable: metering goes on, invoices wait", error=exc.message, code=exc.code)
        self._lnd_trouble = exc.message
        return self._backoff.next()

    def _lnd_available(self) -> None:
        if self._lnd_trouble is not None:
            self.log.info("LND reachable again", after=self._lnd_trouble)
            self._lnd_trouble = None
            self._backoff.reset()


_POLICY_STATES = {
    car_journal.SUCCEEDED: car_policy.SUCCEEDED,
    car_journal.FAILED: car_policy.FAILED,
    car_journal.INTENT: car_policy.PENDING,
    car_journal.IN_FLIGHT: car_policy.PENDING,
}


def _session_payments(record: OpenSession) -> list[SessionPayment]:
    """The journal's payments as the policy books them. A payment whose terms went unrecorded
    is priced at the session's lowest accepted rate: the most energy it could have bought, so
    the car counts itself further ahead and pays later rather than sooner."""
    rates = [o.rate_msat_per_kwh for o in record.accepted_offers]
    payments = []
    for payment, terms in record.payments:
        if terms is None:
            if not rates:
                continue
            terms = (min(rates), payment.amount_msat)
        payments.append(SessionPayment(
            payment.payment_hash, payment.amount_msat, payment.fee_limit_msat,
            wh_bought(payment.amount_msat, terms[0]), Terms(*terms), state=_POLICY_STATES[payment.state],
            attempts=payment.attempts, fee_msat=payment.fee_msat or 0, failure_reason=payment.failure_reason))
    return payments


def _distinct_in_order(terms: Any) -> list[Terms]:
    kept: list[Terms] = []
    for each in terms:
        if not kept or kept[-1] != each:
            kept.append(each)
    return kept


def build(cfg: config.Config, clock: Clock = Clock()) -> CarDaemon:
    return CarDaemon(cfg, clock=clock)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=DEFAULT_CONFIG, metavar="FILE",
                        help=f"the car's configuration (default {DEFAULT_CONFIG})")


def run(args: argparse.Namespace) -> int:
    return daemon.main("car", args.config, build)
