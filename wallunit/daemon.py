"""``distributedcharge wallunit``: the wall-unit daemon, wiring the sans-IO cores to their devices.

Inputs come from four edges and go through the cores; the actions that come back are
written to the ledger and only then carried out::

    TWC (RS-485, TwcPort)      states   -> PlugDetector -> plugged_in / unplugged
                               readings -> WallMeter    -> energy_delivered
                               stop     -> stop_confirmed / stop_failed
    SWCAN (SwcanPort)          answers  -> car_accepted / car_rejected
    LND (LndClient)            one SubscribeSingleInvoice stream per open invoice
                                        -> invoice_settled / _accepted / _canceled
    ADC (optional)             readings -> PlugDetector
    SellerPolicy actions -> Ledger.record_action -> LND call / SWCAN frame / TWC command / QR

Every timer, sleep and meter timestamp runs on the daemon's :class:`Clock`, so a
simulation with a :class:`~distributedcharge.clock.ScaledClock` plays a long session
quickly; ledger timestamps read ``clock.time()``. The policy's datetimes are the wall
time at start advanced by the (possibly scaled) monotonic clock: its timers compress with
the simulation and never jump with an NTP step, and its tariff sees local time.

The node is reached with an invoice-only macaroon and never polled: a stream per open
invoice reports its changes. When any call finds the node unreachable the policy stops
selling (power off) and a probe retries with backoff; once the node answers, every open
invoice in the ledger is reconciled with LookupInvoice and its stream restarted, and
selling resumes. On start the ledger closes the sessions a crash left open and reconciles
their invoices the same way, so a payment that settled while the daemon was down is
counted, once. Invoices left from before the restart are then closed: what was asked to
be settled (or a final manual-pay invoice the payer holds) is settled, the rest canceled.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import math
import secrets
from collections.abc import Callable, Coroutine, Iterable
from datetime import datetime, timezone
from typing import Any

import can

from distributedcharge import daemon as runner
from distributedcharge import log
from distributedcharge.clock import Clock
from distributedcharge.config import Config, ConfigError
from distributedcharge.lightning import macaroons, privilege
from distributedcharge.lightning.client import InvoiceStatus, LndClient
from distributedcharge.lightning.errors import (
    InvalidRequest,
    LightningError,
    NotFound,
    Unreachable,
)
from distributedcharge.lightning.node import NodeAddress, address_from_config
from distributedcharge.relay import RelayError, SwcanRelay
from distributedcharge.swcan.adapter import SwcanPort, TransferFailed, open_port
from distributedcharge.swcan.errors import LinkStateError
from distributedcharge.swcan.link import (
    CarAccepted,
    CarRejected,
    Offer,
    TariffRejected,
    WallLink,
    WallState,
)
from distributedcharge.swcan.messages import PROTOCOL_V2
from distributedcharge.twc.master import (
    BusWarning,
    Reading,
    SlaveLinked,
    SlaveLost,
    SlaveStateChanged,
    StartResult,
    StopResult,
    TwcMaster,
    VinRead,
)
from distributedcharge.twc.serial_port import (
    PortDown,
    PortUp,
    TwcPort,
    settings_from_config,
)
from distributedcharge.units import US_PER_S, format_msat

from . import qr
from .actions import (
    Action,
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
from .config import wall_settings
from .hardware import HardwareError, PlugAdc
from .ledger import InvoiceRecord, Ledger, LedgerError, open_ledger
from .manual import format_kwh
from .plug import PlugDetector, PlugEvent, PluggedIn
from .policy import Power, SellerPolicy
from .wallmeter import MeterError

_log = log.get("wallunit")

DEFAULT_CONFIG = "/etc/distributedcharge/wallunit.toml"
ROLE = "wallunit"
TICK_S = 0.25  # the policy wants a tick at least once a second; plug timing wants finer
ENERGY_RECORD_S = 10.0  # how much metered energy a kill -9 may leave out of the ledger
NODE_RETRY_FIRST_S = 0.5
NODE_RETRY_MAX_S = 30.0
# Any 32-byte hash the node has no invoice for: "not found" proves the node and our macaroon work.
PROBE_HASH = bytes(32)
INVOICE_RESENDS = 3
# On shutdown the TWC gets this long (real seconds) to confirm it stopped before the port closes.
SHUTDOWN_STOP_WAIT_S = 3.0


def _utc(timestamp: float) -> datetime:
    return datetime.fromtimestamp(timestamp, timezone.utc)


class WallDaemon:
    """The wall unit: ``await start()``, then ``await run()`` until cancelled, then ``await stop()``."""

    def __init__(self, cfg: Config, clock: Clock = Clock(), *, source: str = "config") -> None:
        self.cfg = cfg
        self.clock = clock
        self.source = source
        self.settings = wall_settings(cfg, source)
        self.policy = SellerPolicy(self.settings.seller, self.settings.tariff, power_on=False, node_up=False)
        self.plug = PlugDetector(self.settings.plug, self.settings.use_adc)
        self.meter = self.settings.new_meter()
        self.twc = TwcPort(cfg["twc"]["port"], TwcMaster(settings_from_config(cfg["twc"], source)),
                           clock=clock.monotonic)
        self.ledger: Ledger | None = None
        self.lnd: LndClient | None = None
        self.swcan: SwcanPort | None = None
        self.relay: SwcanRelay | None = None
        self.adc: PlugAdc | None = None
        self.node_ok = False
        self.slave_id: int | None = None
        self._wall_anchor = clock.time()
        self._mono_anchor = clock.monotonic()
        self._last_session_id: int | None = None
        self._orphans: set[bytes] = set()
        self._creating: set[str] = set()
        self._watchers: dict[bytes, asyncio.Task] = {}
        self._background: set[asyncio.Task] = set()
        self._failed: asyncio.Future | None = None
        self._node_lost_event = asyncio.Event()
        self._node_epoch = 0
        self._node_retry_s = NODE_RETRY_FIRST_S
        self._in_transfer: tuple[SendInvoice, int] | None = None
        self._shown_ref: str | None = None
        self._plug_lock = asyncio.Lock()
        self._adc_failing = False

    # time ---------------------------------------------------------------------------------

    def policy_now(self) -> datetime:
        return _utc(self._wall_anchor + (self.clock.monotonic() - self._mono_anchor))

    def _stamp(self) -> datetime:
        return _utc(self.clock.time())

    # lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        try:
            await self._open()
        except BaseException:
            await self.stop()
            raise

    async def _open(self) -> None:
        path = self.settings.ledger_path
        try:
            self.ledger = open_ledger(path)
        except (LedgerError, OSError, RuntimeError) as exc:
            raise runner.StartupError(f"ledger {path}: {exc}") from None
        address = self._node_address()
        self.lnd = LndClient(address, timeout_s=self.cfg["lightning"]["rpc_timeout_s"], clock=self.clock.monotonic)
        try:
            if self.settings.relay:
                relay = self.cfg["relay"]
                self.relay = SwcanRelay(relay["gpio"], active_high=relay["active_high"])
            if self.settings.use_adc:
                self.adc = PlugAdc.from_config(self.cfg["adc"])
        except (HardwareError, RelayError) as exc:
            raise runner.StartupError(str(exc)) from None
        section = self.cfg["swcan"]
        try:
            self.swcan = open_port(section, ROLE)
        except (can.CanError, OSError, ValueError) as exc:
            raise runner.StartupError(
                f"SWCAN bus {section['interface']}:{section['channel']} cannot be opened: {exc}") from None
        await self.swcan.start()
        self._recover_ledger()
        # Nothing flows until a session asks for it: the target is the wiring limit, the halt
        # is lifted by the policy's ResumePower at plug-in.
        self.twc.set_offer(self.cfg["twc"]["wiring_limit_a"])
        self.twc.stop_charging()
        _log.info("wall unit ready", node=address.target, twc=self.twc.url,
                  swcan=f"{section['interface']}:{section['channel']}", ledger=str(path),
                  rate=f"{format_msat(self.settings.tariff.rate_at(self.policy_now()))}/kWh",
                  wh_per_payment=str(self.settings.seller.wh_per_payment))

    def _node_address(self) -> NodeAddress:
        section = self.cfg["lightning"]
        try:
            address = address_from_config(section, self.source)
        except ConfigError as exc:
            raise runner.StartupError("; ".join(exc.problems)) from None
        try:
            warnings = privilege.check(ROLE, macaroons.parse(address.macaroon),
                                       section["allow_overprivileged_macaroon"])
        except (macaroons.MacaroonError, privilege.PrivilegeError) as exc:
            raise runner.StartupError(str(exc)) from None
        for warning in warnings:
            _log.warning("macaroon grants more than the wall unit needs", detail=warning)
        return address

    def _recover_ledger(self) -> None:
        assert self.ledger is not None
        stamp = self._stamp()
        interrupted = self.ledger.close_interrupted(stamp)
        if interrupted:
            _log.warning("sessions interrupted by a stop or crash closed", sessions=interrupted)
        for record in self.ledger.open_invoices():
            if record.r_hash is None:
                # The node never answered while we ran: if it made the invoice, nobody holds it.
                self.ledger.invoice_failed(record.ref, stamp, "daemon stopped before the node created it")
            else:
                self._orphans.add(record.r_hash)
        if self._orphans:
            _log.info("invoices from before the restart to reconcile", count=len(self._orphans))

    async def run(self) -> None:
        assert self.swcan is not None
        loop = asyncio.get_running_loop()
        self._failed = loop.create_future()
        self._node_lost_event.set()
        twc_task = self._spawn(self.twc.run())
        for work in (self._twc_events(), self._swcan_events(), self._ticker(), self._keep_node()):
            self._spawn(work)
        if self.adc is not None:
            self._spawn(self._poll_adc())
        try:
            await self._failed
        finally:
            self._background.discard(twc_task)
            await self._cancel_background()
            await self._power_down(twc_task)

    async def stop(self) -> None:
        await self._cancel_background()
        if self.swcan is not None:
            await self.swcan.close()
            self.swcan.bus.shutdown()
            self.swcan = None
        if self.lnd is not None:
            await self.lnd.close()
            self.lnd = None
        for device in (self.relay, self.adc):
            if device is not None:
                device.close()
        self.relay = self.adc = None
        if self._shown_ref is not None:
            self._hide_qr()
        if self.ledger is not None:
            session = self.policy.session
            if session is not None:
                # Its open invoices stay in the ledger; the next start reconciles and closes them.
                self.ledger.end_session(session.session_id, self._stamp(), session.delivered_nj,
                                        math.ceil(session.max_exposure_msat), reason="daemon stopped")
            self.ledger.close()
            self.ledger = None

    def _spawn(self, work: Coroutine[Any, Any, Any]) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(work)
        self._background.add(task)
        task.add_done_callback(self._finished)
        return task

    def _finished(self, task: asyncio.Task) -> None:
        self._background.discard(task)
        if task.cancelled() or task.exception() is None:
            return
        # A bug, not bad input: stop, and let the restart reconcile from the ledger.
        if self._failed is not None and not self._failed.done():
            self._failed.set_exception(task.exception())

    async def _cancel_background(self) -> None:
        tasks = list(self._background)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _power_down(self, twc_task: asyncio.Task) -> None:
        """Stop the TWC before the port closes: without heartbeats it would charge on for 30 s."""
        if twc_task.done():
            return
        if self.policy.power is not Power.CUT:
            if self.policy.power is Power.ON:
                self.twc.stop_charging()
            try:
                await asyncio.wait_for(self._stop_result(), SHUTDOWN_STOP_WAIT_S)
            except TimeoutError:
                _log.warning("TWC did not confirm the stop before shutdown")
        self.twc.close()
        await asyncio.gather(twc_task, return_exceptions=True)

    async def _stop_result(self) -> None:
        while not isinstance(await self.twc.events.get(), StopResult):
            pass

    # TWC ----------------------------------------------------------------------------------

    async def _twc_events(self) -> None:
        while True:
            await self._on_twc(await self.twc.events.get())

    async def _on_twc(self, event: Any) -> None:
        if isinstance(event, Reading):
            if event.slave_id == self.slave_id:
                self._metered(event)
        elif isinstance(event, SlaveStateChanged):
            if event.slave_id == self.slave_id:
                await self._plug_events(self.plug.observe(self.clock.monotonic(), twc_state=event.state))
        elif isinstance(event, StopResult):
            self._stopped(event)
        elif isinstance(event, StartResult):
            log_at = _log.info if event.confirmed else _log.warning
            log_at("TWC start", confirmed=event.confirmed, reason=event.reason)
        elif isinstance(event, SlaveLinked):
            self._linked(event)
        elif isinstance(event, SlaveLost):
            if event.slave_id == self.slave_id:
                self.slave_id = None
                self._record_event("TWC lost", event.reason)
        elif isinstance(event, PortDown):
            self._record_event("TWC port down", event.reason)
        elif isinstance(event, PortUp):
            self._record_event("TWC port up", event.url)
        elif isinstance(event, BusWarning):
            _log.warning("TWC bus needs attention", kind=event.kind, detail=event.detail)
        elif isinstance(event, VinRead):
            _log.debug("car identified by the TWC", vin=event.vin)

    def _linked(self, event: SlaveLinked) -> None:
        if self.slave_id is None:
            self.slave_id = event.slave_id
            _log.info("selling through Wall Connector", slave=f"{event.slave_id:04X}", max_amps=event.max_amps,
                      firmware=event.firmware)
        elif event.slave_id != self.slave_id:
            _log.warning("a second Wall Connector linked; only the first one is metered and sold from",
                         slave=f"{event.slave_id:04X}", selling=f"{self.slave_id:04X}")

    def _metered(self, reading: Reading) -> None:
        now_us = round(self.clock.monotonic() * US_PER_S)
        try:
            added = self.meter.reading(now_us, reading.actual_centiamps, reading.voltage_v)
        except MeterError as exc:
            _log.warning("TWC reading refused", reason=str(exc))
            return
        self._act(self.policy.energy_delivered(self.policy_now(), added))

    def _stopped(self, result: StopResult) -> None:
        if result.slave_id not in (None, self.slave_id) or self.policy.power is not Power.CUTTING:
            return
        detail = f"{'confirmed' if result.confirmed else 'failed'} after {result.attempts} attempt(s): {result.reason}"
        self._record_event("TWC stop", detail)
        now = self.policy_now()
        self._act(self.policy.stop_confirmed(now) if result.confirmed else self.policy.stop_failed(now, result.reason))

    # plug ---------------------------------------------------------------------------------

    async def _plug_events(self, events: Iterable[PlugEvent]) -> None:
        for event in events:
            async with self._plug_lock:
                if isinstance(event, PluggedIn):
                    self._plugged_in()
                else:
                    await self._unplugged()

    def _plugged_in(self) -> None:
        assert self.ledger is not None
        if self.relay is not None:
            self.relay.set(True)
        session_id = self.ledger.start_session(self._stamp())
        self._last_session_id = session_id
        _log.info("car plugged in", session=session_id)
        self._act(self.policy.plugged_in(self.policy_now(), session_id))

    async def _unplugged(self) -> None:
        assert self.swcan is not None
        _log.info("car unplugged", session=self._last_session_id)
        self._act(self.policy.unplugged(self.policy_now()))
        self._in_transfer = None
        if self.relay is not None:
            self.relay.set(False)
        await self.swcan.unplugged()

    async def _poll_adc(self) -> None:
        assert self.adc is not None
        while True:
            try:
                plugged = await asyncio.to_thread(self.adc.plugged)
            except HardwareError as exc:
                if not self._adc_failing:
                    _log.warning("pilot/proximity ADC unreadable; plug state held", reason=str(exc))
                self._adc_failing, plugged = True, None
            else:
                if self._adc_failing:
                    _log.info("pilot/proximity ADC readable again")
                self._adc_failing = False
            await self._plug_events(self.plug.observe(self.clock.monotonic(), adc_plugged=plugged))
            await self.clock.sleep(self.cfg["adc"]["poll_s"])

    async def _ticker(self) -> None:
        assert self.ledger is not None
        next_record = self.clock.monotonic() + ENERGY_RECORD_S
        while True:
            await self.clock.sleep(TICK_S)
            now = self.clock.monotonic()
            await self._plug_events(self.plug.tick(now))
            self._act(self.policy.tick(self.policy_now()))
            if now >= next_record:
                next_record = now + ENERGY_RECORD_S
                if self.policy.session is not None:
                    self.ledger.record_energy(self.policy.session.session_id, self.policy.session.delivered_nj)

    # SWCAN --------------------------------------------------------------------------------

    async def _swcan_events(self) -> None:
        assert self.swcan is not None
        while True:
            self._on_swcan(await self.swcan.events.get())

    def _on_swcan(self, event: Any) -> None:
        assert self.ledger is not None
        session = self.policy.session
        if isinstance(event, TransferFailed):
            self._resend(event.reason)
            return
        if not isinstance(event, (CarAccepted, CarRejected, TariffRejected)):
            return
        if session is None:
            _log.info("car answered with no session open", event=type(event).__name__)
            return
        accepted = isinstance(event, CarAccepted)
        version = event.version if isinstance(event, (CarAccepted, CarRejected)) else PROTOCOL_V2
        self.ledger.record_answer(session.session_id, self._stamp(), accepted, version, event.session_id)
        _log.info("car answered the offer", accepted=accepted, version=version,
                  rate=f"{format_msat(event.offer.rate_msat_per_kwh)}/kWh", payment=format_msat(event.offer.payment_msat))
        now = self.policy_now()
        self._act(self.policy.car_accepted(now, event.offer, version) if accepted else self.policy.car_rejected(now))

    def _offer(self, offer: Offer) -> None:
        def propose(link: WallLink, now: float) -> None:
            if link.state is WallState.UNPLUGGED:
                link.plugged_in(offer, now)
            elif link.state is WallState.REJECTED:
                link.offer(offer, now)
            elif link.state in (WallState.SELLING, WallState.CHANGING):
                link.change_offer(offer, now)
            elif link.state is WallState.OFFERING:
                # New terms before any answer: start over, so a v2 answer to the old terms
                # (bound to the old session id) cannot be taken for the new ones.
                link.unplugged()
                link.plugged_in(offer, now)
            else:
                raise LinkStateError(f"no new offer while the link is {link.state.value}")

        self._on_link(propose, "offer not sent")

    def _on_link(self, change: Callable[[WallLink, float], None], failure: str) -> None:
        assert self.swcan is not None
        try:
            self.swcan.apply(change)
        except (LinkStateError, ValueError) as exc:
            _log.warning(failure, reason=str(exc))

    def _send_invoice(self, send: SendInvoice, attempt: int) -> None:
        assert self.swcan is not None
        try:
            self.swcan.apply(lambda link, now: link.send_invoice(send.payment_request, send.meter_nj))
        except (LinkStateError, ValueError) as exc:
            _log.warning("invoice not sent to the car", ref=send.ref, reason=str(exc))
            return
        self._in_transfer = (send, attempt)

    def _resend(self, reason: str) -> None:
        if self._in_transfer is None:
            return
        send, attempt = self._in_transfer
        session = self.policy.session
        invoice = session.invoices.get(send.ref) if session is not None else None
        if invoice is None or invoice.state != "open":
            return
        if attempt >= INVOICE_RESENDS:
            _log.warning("invoice did not reach the car; giving up on sending it", ref=send.ref, reason=reason)
            self._in_transfer = None
            return
        _log.info("invoice did not reach the car; sending it again", ref=send.ref, reason=reason)
        self._send_invoice(send, attempt + 1)

    # actions ------------------------------------------------------------------------------

    def _act(self, actions: Iterable[Action]) -> None:
        for action in actions:
            self._carry_out(action)

    def _carry_out(self, action: Action) -> None:
        assert self.ledger is not None
        preimage = secrets.token_bytes(32) if isinstance(action, CreateHoldInvoice) else None
        session = self.policy.session
        session_id = session.session_id if session is not None else self._last_session_id
        self.ledger.record_action(self._stamp(), action, session_id=session_id, preimage=preimage)
        if isinstance(action, MakeOffer):
            self._offer(action.offer)
        elif isinstance(action, RepeatOffer):
            _log.info("offering the accepted terms again", reason=action.reason)
            self._on_link(lambda link, now: link.repeat_offer(now), "offer not repeated")
        elif isinstance(action, StopRepeatingOffer):
            _log.info("no longer repeating the offer", reason=action.reason)
            self._on_link(lambda link, now: link.stop_repeating(), "offer still repeated")
        elif isinstance(action, (CreateInvoice, CreateHoldInvoice)):
            self._creating.add(action.ref)
            self._spawn(self._create(action, preimage))
        elif isinstance(action, SendInvoice):
            self._send_invoice(action, 0)
        elif isinstance(action, CancelInvoice):
            self._spawn(self._cancel(action.r_hash))
        elif isinstance(action, SettleInvoice):
            self._spawn(self._settle(action.r_hash))
        elif isinstance(action, CutPower):
            _log.warning("cutting power", reason=action.reason)
            self.twc.stop_charging()
        elif isinstance(action, ResumePower):
            _log.info("power on", reason=action.reason)
            self.twc.start_charging()
        elif isinstance(action, ShowPaymentRequest):
            self._show_qr(action)
        elif isinstance(action, HidePaymentRequest):
            if action.ref == self._shown_ref:
                self._hide_qr()
        elif isinstance(action, (StopSale, Ignored)):
            _log.warning("policy: " + type(action).__name__, reason=action.reason)
        elif isinstance(action, SessionEnded):
            _log.info("session ended", session=action.session_id, delivered_kwh=format_kwh(action.delivered_nj),
                      paid=format_msat(action.paid_msat), max_exposure=format_msat(action.max_exposure_msat))

    def _record_event(self, kind: str, detail: str) -> None:
        assert self.ledger is not None
        session = self.policy.session
        self.ledger.record_event(session.session_id if session else None, self._stamp(), kind, detail)
        _log.info(kind, detail=detail)

    def _show_qr(self, show: ShowPaymentRequest) -> None:
        try:
            text = qr.terminal_text(show.payment_request)
        except qr.NotAnInvoice as exc:
            _log.error("node returned something that is not an invoice", ref=show.ref, reason=str(exc))
            return
        self._shown_ref = show.ref
        png: str | None = str(self.settings.qr_png)
        try:
            qr.write_png(show.payment_request, self.settings.qr_png)
        except OSError as exc:
            _log.error("manual-pay QR code not written", path=png, reason=str(exc))
            png = None
        _log.info("manual pay: scan to pay", purpose=show.purpose, amount=format_msat(show.amount_msat), png=png,
                  payment_request=show.payment_request, qr="\n" + text)

    def _hide_qr(self) -> None:
        self._shown_ref = None
        try:
            qr.remove_png(self.settings.qr_png)
        except OSError as exc:
            _log.warning("manual-pay QR code not removed", path=str(self.settings.qr_png), reason=str(exc))

    # Lightning ----------------------------------------------------------------------------

    async def _create(self, action: CreateInvoice | CreateHoldInvoice, preimage: bytes | None) -> None:
        assert self.lnd is not None and self.ledger is not None
        try:
            if preimage is None:
                added = await self.lnd.add_invoice(action.amount_msat, action.memo, action.expiry_s)
            else:
                added = await self.lnd.add_hold_invoice(hashlib.sha256(preimage).digest(), action.amount_msat,
                                                        action.memo, action.expiry_s, action.cltv_expiry)
            if len(added.r_hash) != 32 or not added.payment_request:
                raise InvalidRequest(f"node answered with no usable invoice (hash of {len(added.r_hash)} bytes)")
        except LightningError as exc:
            self._creating.discard(action.ref)
            self.ledger.invoice_failed(action.ref, self._stamp(), str(exc))
            if isinstance(exc, Unreachable):
                self._node_lost(str(exc))
            self._act(self.policy.invoice_failed(self.policy_now(), action.ref, str(exc)))
            return
        self._creating.discard(action.ref)
        self.ledger.invoice_created(action.ref, self._stamp(), added.r_hash, added.payment_request)
        self._watch(added.r_hash)
        self._act(self.policy.invoice_created(self.policy_now(), action.ref, added.r_hash, added.payment_request))

    async def _cancel(self, r_hash: bytes) -> None:
        assert self.lnd is not None
        self._watch(r_hash)
        try:
            await self.lnd.cancel_invoice(r_hash)
        except LightningError as exc:
            self._refused("cancel", r_hash, exc)

    async def _settle(self, r_hash: bytes) -> None:
        assert self.lnd is not None and self.ledger is not None
        preimage = self.ledger.preimage(r_hash)
        if preimage is None:
            _log.error("no preimage recorded for a hold invoice; it cannot be settled", r_hash=r_hash.hex())
            return
        self._watch(r_hash)
        try:
            await self.lnd.settle_invoice(preimage)
        except LightningError as exc:
            self._refused("settle", r_hash, exc)

    def _refused(self, what: str, r_hash: bytes, exc: LightningError) -> None:
        if isinstance(exc, Unreachable):
            self._node_lost(str(exc))
        else:
            # Already settled or canceled, most likely; the invoice's stream reports which.
            _log.warning(f"node refused to {what} an invoice", r_hash=r_hash.hex(), reason=str(exc))

    def _watch(self, r_hash: bytes) -> None:
        if r_hash not in self._watchers:
            self._watchers[r_hash] = self._spawn(self._follow(r_hash))

    async def _follow(self, r_hash: bytes) -> None:
        assert self.lnd is not None
        try:
            async with contextlib.aclosing(self.lnd.subscribe_single_invoice(r_hash)) as updates:
                async for status in updates:
                    self._invoice_update(r_hash, status)
        except Unreachable as exc:
            self._node_lost(f"invoice stream: {exc}")
        except LightningError as exc:
            _log.warning("invoice stream refused", r_hash=r_hash.hex(), reason=str(exc))
        finally:
            self._watchers.pop(r_hash, None)

    def _invoice_update(self, r_hash: bytes, status: InvoiceStatus) -> None:
        assert self.ledger is not None
        if status.r_hash != r_hash or status.amt_paid_msat < 0:
            _log.warning("node answered with an impossible invoice state", r_hash=r_hash.hex(),
                         answered=status.r_hash.hex(), amt_paid_msat=status.amt_paid_msat)
            return
        live = r_hash not in self._orphans
        now = self.policy_now()
        if status.state == "SETTLED":
            if self.ledger.record_settled(r_hash, status.amt_paid_msat, self._stamp()):
                _log.info("invoice paid", r_hash=r_hash.hex(), amount=format_msat(status.amt_paid_msat),
                          before_restart=not live)
                if live:
                    self._act(self.policy.invoice_settled(now, r_hash, status.amt_paid_msat))
        elif status.state == "ACCEPTED":
            if self.ledger.record_accepted(r_hash, self._stamp()) and live:
                self._act(self.policy.invoice_accepted(now, r_hash, status.amt_paid_msat))
        elif status.state == "CANCELED":
            if self.ledger.record_canceled(r_hash, self._stamp()) and live:
                self._act(self.policy.invoice_canceled(now, r_hash))

    # node outages -------------------------------------------------------------------------

    def _node_lost(self, reason: str) -> None:
        self._node_epoch += 1
        self._node_lost_event.set()
        if self.node_ok:
            self.node_ok = False
            self._node_retry_s = NODE_RETRY_FIRST_S
            _log.warning("Lightning node unreachable; selling stops until it is back", reason=reason)
            self._act(self.policy.node_unreachable(self.policy_now()))

    async def _keep_node(self) -> None:
        while True:
            await self._node_lost_event.wait()
            epoch = self._node_epoch
            if await self._probe() and await self._reconcile() and epoch == self._node_epoch:
                self._node_lost_event.clear()
                self.node_ok = True
                _log.info("Lightning node reachable; selling")
                self._act(self.policy.node_reachable(self.policy_now()))
                continue
            await self.clock.sleep(self._node_retry_s)
            self._node_retry_s = min(2 * self._node_retry_s, NODE_RETRY_MAX_S)

    async def _probe(self) -> bool:
        assert self.lnd is not None
        try:
            await self.lnd.lookup_invoice(PROBE_HASH)
        except NotFound:
            return True
        except LightningError as exc:
            _log.info("Lightning node not ready", reason=str(exc), retry_s=self._node_retry_s)
            return False
        return True

    async def _reconcile(self) -> bool:
        """LookupInvoice for every invoice the ledger holds open; False if the node went away again."""
        assert self.lnd is not None and self.ledger is not None
        for record in self.ledger.open_invoices():
            if record.r_hash is None or record.ref in self._creating:
                continue
            try:
                status = await self.lnd.lookup_invoice(record.r_hash)
            except NotFound:
                self._unknown_to_node(record)
                continue
            except InvalidRequest as exc:
                _log.warning("invoice lookup refused", ref=record.ref, reason=str(exc))
                continue
            except LightningError as exc:
                _log.info("reconciling stopped: node unreachable again", reason=str(exc))
                return False
            self._invoice_update(record.r_hash, status)
            if not status.final:
                self._close_or_resend(record, status)
                self._watch(record.r_hash)
        return True

    def _unknown_to_node(self, record: InvoiceRecord) -> None:
        assert self.ledger is not None and record.r_hash is not None
        stamp = self._stamp()
        if record.state == "requested":
            self.ledger.invoice_failed(record.ref, stamp, "the node never created it")
            if record.r_hash not in self._orphans:
                self._act(self.policy.invoice_failed(self.policy_now(), record.ref, "the node never created it"))
        else:
            _log.warning("node no longer knows an invoice it created; counted as canceled", ref=record.ref)
            if self.ledger.record_canceled(record.r_hash, stamp) and record.r_hash not in self._orphans:
                self._act(self.policy.invoice_canceled(self.policy_now(), record.r_hash))

    def _close_or_resend(self, record: InvoiceRecord, status: InvoiceStatus) -> None:
        """Finish settles and cancels the node missed; close what was left from before a restart."""
        assert self.ledger is not None and record.r_hash is not None
        orphan = record.r_hash in self._orphans
        held = status.state == "ACCEPTED"
        if held and (record.settle_requested or (orphan and record.kind == "final")):
            if not record.settle_requested:
                self.ledger.settle_requested(record.r_hash, self._stamp(), "final invoice held when the daemon restarted")
            self._spawn(self._settle(record.r_hash))
        elif record.cancel_requested or orphan:
            if not record.cancel_requested:
                self.ledger.cancel_requested(record.r_hash, self._stamp(), "its session ended when the daemon restarted")
            self._spawn(self._cancel(record.r_hash))


def build(cfg: Config, clock: Clock = Clock()) -> WallDaemon:
    return WallDaemon(cfg, clock)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=DEFAULT_CONFIG, help=f"wall-unit config file (default {DEFAULT_CONFIG})")


def run(args: argparse.Namespace) -> int:
    return runner.main(ROLE, args.config, build)
