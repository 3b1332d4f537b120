"""A charge session played by the daemons' sans-IO cores in virtual time.

The wall's cores (TWC master, plug detector, wall meter, seller policy, SWCAN wall link,
ledger) and the car's (vehicle reader and meter, SWCAN car link, buyer policy, payment
journal) are wired to each other the way the daemons wire them, minus the sockets. The
world around them is the plant (one physical model), the simulated Wall Connector and
Model 3 that measure it, and a zero-latency Lightning stand-in that signs real BOLT11
invoices and settles them at once. Every ``TICK_S`` of virtual time the world hands each
role what arrived for it (RS-485 bytes, CAN frames, ISO-TP payloads, Lightning results)
and takes back what it sends.

:func:`play` runs the world and both roles in this process, as fast as they go, and can
record every message each role received. :func:`replay` then feeds one recording to one
role in a freshly spawned interpreter of its own, so that role's CPU time
(``time.process_time``) and peak RSS (``VmHWM``) are its alone; the digest of its
outputs proves the replay took the same decisions as the original run. Everything is
deterministic (fixed ids, keys and session id) for that reason. The journals are SQLite
in memory: the cost of a durable write (fsync) depends on the storage, not on our code,
and would hide it.

A role that only *reads* the traffic (:class:`BareWall`, :class:`BareCar`: decode every
RS-485 frame, CAN frame, offer and invoice, decide nothing) replayed on the same
recording is the baseline: a bare loop doing the same I/O.
"""

from __future__ import annotations

import dataclasses
import hashlib
import multiprocessing
import pickle
import resource
import time
from collections import deque
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from fractions import Fraction
from pathlib import Path
from typing import Any

from distributedcharge import log
from distributedcharge.lightning import bolt11
from distributedcharge.sim.model3 import Model3Emitter
from distributedcharge.sim.plant import Plant, PlantSettings
from distributedcharge.sim.plant_runner import METERED_PAGES
from distributedcharge.sim.twc_slave import SlaveConfig, TwcSlave
from distributedcharge.swcan import messages as msg
from distributedcharge.swcan.link import (
    CarAccepted, CarLink, CarRejected, InvoiceReceived, OfferReceived, TariffRejected, WallLink, WallState,
)
from distributedcharge.twc.codec import FrameReceiver
from distributedcharge.twc.master import MasterSettings, Reading, SlaveStateChanged, StopResult, TwcMaster
from distributedcharge.units import MSAT_PER_SAT, NJ_PER_WH
from distributedcharge.vehicle import signals as sig
from distributedcharge.vehicle.meter import EnergyMeter
from distributedcharge.vehicle.reader import VehicleState

TICK_S = 0.5
START = datetime(2025, 3, 3, 18, 0, tzinfo=timezone.utc)
START_UNIX = int(START.timestamp())
RATE_MSAT_PER_KWH = 100 * MSAT_PER_SAT
AMPS = 48
PLUG_AT_S = 2.0
SESSION_ID = 0xBEEF
WALL_KEY = hashlib.sha256(b"bench wall node").digest()


def _dt(now: float) -> datetime:
    return START + timedelta(seconds=now)


def _us(now: float) -> int:
    return round(now * 1_000_000)


# -- the roles --------------------------------------------------------------------------------

class WallCores:
    """The wall daemon's decisions without its IO."""

    def __init__(self) -> None:
        from wallunit.ledger import Ledger
        from wallunit.plug import PlugDetector
        from wallunit.policy import SellerPolicy, SellerSettings
        from wallunit.tariff import Tariff
        from wallunit.wallmeter import WallMeter

        self.master = TwcMaster(MasterSettings(wiring_limit_a=AMPS, master_id=0x7777, sign=0x77))
        # As the daemon does: nothing flows until a session asks for it.
        self.master.set_offer(AMPS)
        self.master.stop_charging()
        self.link = WallLink(v2=True, session_ids=lambda: SESSION_ID)
        self.policy = SellerPolicy(SellerSettings(manual=None), Tariff.fixed(RATE_MSAT_PER_KWH), power_on=False)
        self.meter = WallMeter(230, 5_000_000)
        self.plug = PlugDetector()
        self.ledger = Ledger(":memory:")
        self.session_id: int | None = None
        self._next_policy_tick = 0.0

    def step(self, now: float, twc: bytes, frames: list, lightning: list) -> tuple:
        dt = _dt(now)
        actions: list = []
        requests: list = []
        for event in self.master.receive(twc, now) + self.master.tick(now):
            actions += self._twc_event(event, now, dt)
        for event in self.plug.tick(now):
            actions += self._plug_event(event, dt)
        for can_id, data in frames:
            self.link.receive_frame(can_id, data, now)
        self.link.tick(now)
        while (event := self.link.next_event()) is not None:
            if isinstance(event, CarAccepted) and self.session_id is not None:
                self.ledger.record_answer(self.session_id, dt, True, event.version)
                actions += self.policy.car_accepted(dt, event.offer, event.version)
            elif isinstance(event, (CarRejected, TariffRejected)):
                actions += self.policy.car_rejected(dt)
        for result in lightning:
            actions += self._lightning(result, dt)
        if now >= self._next_policy_tick:
            self._next_policy_tick = now + 1.0
            actions += self.policy.tick(dt)
        for action in actions:
            self._execute(action, now, dt, requests)
        return self.master.bytes_to_send(), self.link.frames_to_send(), self.link.payloads_to_send(), requests

    def _twc_event(self, event: Any, now: float, dt: datetime) -> list:
        if isinstance(event, SlaveStateChanged):
            return [a for plug_event in self.plug.observe(now, twc_state=event.state)
                    for a in self._plug_event(plug_event, dt)]
        if isinstance(event, Reading):
            added = self.meter.reading(_us(now), event.actual_centiamps, event.voltage_v)
            return self.policy.energy_delivered(dt, added) if self.policy.session else []
        if isinstance(event, StopResult):
            return self.policy.stop_confirmed(dt) if event.confirmed else self.policy.stop_failed(dt, event.reason)
        return []

    def _plug_event(self, event: Any, dt: datetime) -> list:
        from wallunit.plug import PluggedIn

        if isinstance(event, PluggedIn):
            self.session_id = self.ledger.start_session(dt)
            return self.policy.plugged_in(dt, self.session_id)
        self.link.unplugged()
        return self.policy.unplugged(dt)

    def _lightning(self, result: tuple, dt: datetime) -> list:
        kind = result[0]
        if kind == "created":
            _, ref, r_hash, payment_request = result
            self.ledger.invoice_created(ref, dt, r_hash, payment_request)
            return self.policy.invoice_created(dt, ref, r_hash, payment_request)
        _, r_hash, amount_msat = result
        self.ledger.record_settled(r_hash, amount_msat, dt)
        return self.policy.invoice_settled(dt, r_hash, amount_msat)

    def _execute(self, action: Any, now: float, dt: datetime, requests: list) -> None:
        from wallunit.actions import CancelInvoice, CreateInvoice, CutPower, MakeOffer, ResumePower, SendInvoice

        self.ledger.record_action(dt, action, session_id=self.session_id)
        if isinstance(action, MakeOffer):
            if self.link.state is WallState.UNPLUGGED:
                self.link.plugged_in(action.offer, now)
            elif self.link.state is WallState.REJECTED:
                self.link.offer(action.offer, now)
            else:
                self.link.change_offer(action.offer, now)
        elif isinstance(action, CreateInvoice):
            requests.append(("create", action.ref, action.amount_msat, action.memo, action.expiry_s))
        elif isinstance(action, SendInvoice):
            self.link.send_invoice(action.payment_request, action.meter_nj)
        elif isinstance(action, CutPower):
            self.master.stop_charging()
        elif isinstance(action, ResumePower):
            self.master.start_charging()
        elif isinstance(action, CancelInvoice):
            requests.append(("cancel", action.r_hash))


class CarCores:
    """The car daemon's decisions without its IO."""

    def __init__(self) -> None:
        from car.journal import Journal
        from car.policy import BuyerPolicy, BuyerSettings

        self.state = VehicleState("2025")
        self.meter = EnergyMeter()
        self.link = CarLink(v2=True)
        self.journal = Journal(":memory:")
        self.policy = BuyerPolicy(BuyerSettings(network="regtest"), self.journal.known_hashes)
        self.balance_msat = 10**12
        self.session_id: int | None = None
        self._energy_at_plug = 0
        self._queue: deque[InvoiceReceived] = deque()
        self._paying: bytes | None = None

    def step(self, now: float, vehicle: list, frames: list, payloads: list, lightning: list) -> tuple:
        unix = START_UNIX + now
        requests: list = []
        for frame_id, data in vehicle:
            for event in self.state.feed(frame_id, data, now):
                self.meter.observe(event)
        self.state.tick(now)
        self._follow_plug(unix)
        for can_id, data in frames:
            self.link.receive_frame(can_id, data, now)
        for payload in payloads:
            self.link.receive_payload(payload, now)
        while (event := self.link.next_event()) is not None:
            if isinstance(event, OfferReceived) and self.session_id is not None:
                self._offer(event, unix)
            elif isinstance(event, InvoiceReceived) and self.session_id is not None:
                self._queue.append(event)
        for _, payment_hash, amount_msat, fee_msat in lightning:
            self.journal.mark_succeeded(payment_hash, fee_msat, None, unix)
            self.policy.payment_succeeded(payment_hash, amount_msat, fee_msat)
            self.balance_msat -= amount_msat + fee_msat
            self._paying = None
        if self._paying is None and self._queue and self.session_id is not None:
            self._judge(unix, requests)
        return self.link.frames_to_send(), requests

    def _follow_plug(self, unix: float) -> None:
        if self.session_id is None and self.state.plug_latched and self.state.swcan_established:
            self.policy.start_session(unix)
            self.session_id = self.journal.start_session(unix)
            self._energy_at_plug = self.meter.energy_nj
        elif self.session_id is not None and not self.state.plug_latched:
            self.link.unplugged()
            self.policy.end_session(unix)
            self.journal.end_session(self.session_id, unix)
            self.session_id = None
            self._queue.clear()

    def _offer(self, event: OfferReceived, unix: float) -> None:
        from car.policy import Accept

        decision = self.policy.consider_offer(event.offer, unix)
        accepted = isinstance(decision, Accept)
        self.journal.record_offer(self.session_id, unix, event.offer.rate_msat_per_kwh, event.offer.payment_msat,
                                  is_change=event.mid_session, accepted=accepted,
                                  reason=None if accepted else decision.reason)
        if accepted:
            self.link.accept(event.offer)
        else:
            self.link.reject(event.offer)

    def _judge(self, unix: float, requests: list) -> None:
        from car.policy import NotYetDue, Pay

        invoice = self._queue[0]
        energy = self.meter.energy_nj - self._energy_at_plug
        verdict = self.policy.consider_invoice(
            invoice.bolt11, invoice.offer if invoice.version == msg.PROTOCOL_V2 else None, energy,
            self.state.measured_current_da, self.balance_msat, unix,
            self.journal.spent_session_msat(self.session_id), self.journal.spent_today_msat(unix))
        if isinstance(verdict, NotYetDue):
            return
        self._queue.popleft()
        if isinstance(verdict, Pay):
            self.journal.record_invoice(self.session_id, unix, verdict.bolt11, "pay", payment_hash=verdict.payment_hash,
                                        amount_msat=verdict.amount_msat, car_energy_nj=energy,
                                        wall_energy_nj=invoice.wall_energy_nj)
            self.journal.record_intent(verdict.payment_hash, verdict.bolt11, verdict.amount_msat,
                                       verdict.fee_limit_msat, unix, self.session_id)
            self.journal.mark_in_flight(verdict.payment_hash, unix)
            self._paying = verdict.payment_hash
            requests.append(("pay", verdict.bolt11))
        else:
            self.journal.record_invoice(self.session_id, unix, invoice.bolt11, "refused", code=verdict.code,
                                        reason=verdict.reason)


class BareWall:
    """Reads what the wall reads (every RS-485 frame, every SWCAN answer) and decides nothing."""

    def __init__(self) -> None:
        self.receiver = FrameReceiver()

    def step(self, now: float, twc: bytes, frames: list, lightning: list) -> tuple:
        self.receiver.feed(twc, now)
        for can_id, data in frames:
            if can_id == msg.ANSWER_ID:
                msg.decode_answer(data, v2=True)
        return b"", [], [], []


class BareCar:
    """Reads what the car reads (every vehicle frame, every offer and invoice) and decides nothing."""

    def __init__(self) -> None:
        self.layout = sig.layout("2025")

    def step(self, now: float, vehicle: list, frames: list, payloads: list, lightning: list) -> tuple:
        for frame_id, data in vehicle:
            self.layout.decode(frame_id, data)
        for can_id, data in frames:
            if can_id == msg.OFFER_ID:
                msg.decode_v1_offer(data)
            elif can_id == msg.V2_OFFER_ID:
                msg.decode_v2_offer(data)
        for payload in payloads:
            bolt11.decode(msg.decode_v2_invoice(payload).bolt11)
        return [], []


ROLES = {"wall": WallCores, "car": CarCores, "bare-wall": BareWall, "bare-car": BareCar}


# -- the world ----------------------------------------------------------------------------------

class LightningStandIn:
    """Invoices signed like LND's, paid and settled at once: no routing, no fees, no latency."""

    def __init__(self) -> None:
        self.open: dict[bytes, int] = {}
        self.by_request: dict[str, bytes] = {}
        self.paid_msat = 0
        self.payments = 0

    def create(self, ref: str, amount_msat: int, memo: str, expiry_s: int, now: float) -> tuple:
        preimage = hashlib.sha256(b"preimage " + ref.encode()).digest()
        r_hash = hashlib.sha256(preimage).digest()
        request = bolt11.encode(network="regtest", amount_msat=amount_msat, payment_hash=r_hash,
                                private_key=WALL_KEY, payment_secret=hashlib.sha256(r_hash).digest(),
                                description=memo, expiry=expiry_s, timestamp=int(START_UNIX + now))
        self.open[r_hash] = amount_msat
        self.by_request[request] = r_hash
        return ("created", ref, r_hash, request)

    def pay(self, request: str) -> tuple[tuple, tuple] | None:
        r_hash = self.by_request.get(request)
        if r_hash is None or r_hash not in self.open:
            return None
        amount = self.open.pop(r_hash)
        self.paid_msat += amount
        self.payments += 1
        return ("settled", r_hash, amount), ("succeeded", r_hash, amount, 0)

    def cancel(self, r_hash: bytes) -> None:
        self.open.pop(r_hash, None)


@dataclass
class Checkpoint:
    tick: int
    at_s: float
    paid_steps: int
    wall_energy_wh: Fraction
    wall_time_s: float


@dataclass
class SessionResult:
    checkpoints: list[Checkpoint]
    ticks: int
    paid_msat: int
    paid_steps: int
    plant_energy_wh: Fraction
    wall_meter_wh: Fraction
    car_meter_wh: Fraction
    wall_time_s: float
    digests: dict[str, str]


class _Recorder:
    """Each role's inbound messages, pickled one after another into a file, and a digest of its outputs."""

    def __init__(self, directory: Path | None, name: str) -> None:
        self.file = open(directory / f"{name}.pickles", "wb") if directory is not None else None
        self.digest = hashlib.sha256()

    def step(self, role: Any, request: tuple) -> Any:
        if self.file is not None:
            pickle.dump(request, self.file, pickle.HIGHEST_PROTOCOL)
        output = role.step(*request)
        self.digest.update(pickle.dumps(output, pickle.HIGHEST_PROTOCOL))
        return output

    def close(self) -> None:
        if self.file is not None:
            self.file.close()


def play(hours: float, checkpoint_every_s: float = 3600.0, record_dir: Path | None = None) -> SessionResult:
    """Plug in once the Wall Connector has linked (not before ``PLUG_AT_S``), charge at up to
    48 A for ``hours`` of virtual time as fast as the cores go, with a checkpoint at plug-in
    and every ``checkpoint_every_s`` after it. With ``record_dir``, every message each role
    received is kept there for :func:`replay`."""
    plant = Plant(PlantSettings(battery_kwh=Fraction(200), start_soc_percent=Fraction(10)), now=0.0)
    slave = TwcSlave(SlaveConfig(slave_id=0x1234, sign=0x12, max_centiamps=AMPS * 100), plant)
    emitter = Model3Emitter("2025", pcs_pages=METERED_PAGES)
    lightning = LightningStandIn()
    wall, car = WallCores(), CarCores()
    recorders = {"wall": _Recorder(record_dir, "wall"), "car": _Recorder(record_dir, "car")}
    checkpoints: list[Checkpoint] = []
    length_s = hours * 3600
    to_wall: tuple[list, list] = ([], [])  # SWCAN frames, Lightning results
    to_car: tuple[list, list, list] = ([], [], [])  # SWCAN frames, payloads, Lightning results
    started = time.perf_counter()
    tick = 0
    plug_at: float | None = None
    try:
        while True:
            tick += 1
            now = round(tick * TICK_S, 6)
            if plug_at is None and now >= PLUG_AT_S and slave.linked:
                plug_at = now
                slave.plug(now)
            volts = (plant.wall_volts(), 0, 0)
            if slave.config.volts != volts:
                slave.config = dataclasses.replace(slave.config, volts=volts)
            slave.tick(now)
            twc_out, wall_frames, wall_payloads, wall_requests = recorders["wall"].step(
                wall, (now, slave.bytes_to_send(), *to_wall))
            car_frames, car_requests = recorders["car"].step(
                car, (now, emitter.frames_at(now, plant.model3_state(now)), *to_car))
            slave.receive(twc_out, now)
            to_wall, to_car = (car_frames, []), (wall_frames, wall_payloads, [])
            for request in wall_requests:
                if request[0] == "create":
                    to_wall[1].append(lightning.create(*request[1:], now))
                else:
                    lightning.cancel(request[1])
            for request in car_requests:
                outcome = lightning.pay(request[1])
                if outcome is not None:
                    to_wall[1].append(outcome[0])
                    to_car[2].append(outcome[1])
            if plug_at is None:
                continue
            charging_s = now - plug_at
            if charging_s >= len(checkpoints) * checkpoint_every_s or charging_s >= length_s:
                checkpoints.append(Checkpoint(tick, now, lightning.payments, Fraction(wall.meter.total_nj, NJ_PER_WH),
                                              time.perf_counter() - started))
            if charging_s >= length_s:
                break
    finally:
        for recorder in recorders.values():
            recorder.close()
    return SessionResult(checkpoints, tick, lightning.paid_msat, lightning.payments, plant.energy_nj / NJ_PER_WH,
                         Fraction(wall.meter.total_nj, NJ_PER_WH), Fraction(car.meter.energy_nj, NJ_PER_WH),
                         time.perf_counter() - started,
                         {name: recorder.digest.hexdigest() for name, recorder in recorders.items()})


# -- replaying one role in a process of its own ---------------------------------------------------

@dataclass(frozen=True)
class Replay:
    role: str
    cpu_s_at: tuple[float, ...]  # CPU seconds spent on steps at each checkpoint tick
    peak_rss_kib_at: tuple[int, ...]
    digest: str


def peak_rss_kib() -> int:
    """This process's peak resident set. ``VmHWM`` belongs to the running program alone;
    ``ru_maxrss`` would also count the parent it was forked from before ``exec``."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _replay_in_child(role_name: str, path: str, checkpoint_ticks: tuple[int, ...]) -> Replay:
    log.configure("warning")
    role = ROLES[role_name]()
    digest = hashlib.sha256()
    cpu_at: list[float] = []
    rss_at: list[int] = []
    wanted = set(checkpoint_ticks)
    started = time.process_time()
    with open(path, "rb") as handle:
        tick = 0
        while True:
            try:
                request = pickle.load(handle)
            except EOFError:
                break
            tick += 1
            digest.update(pickle.dumps(role.step(*request), pickle.HIGHEST_PROTOCOL))
            if tick in wanted:
                cpu_at.append(time.process_time() - started)
                rss_at.append(peak_rss_kib())
    return Replay(role_name, tuple(cpu_at), tuple(rss_at), digest.hexdigest())


def replay(jobs: list[tuple[str, Path]], checkpoint_ticks: tuple[int, ...]) -> list[Replay]:
    """Replay each ``(role, recording)`` in a freshly spawned interpreter of its own, two at a
    time, so each role's CPU time and peak RSS are its alone."""
    context = multiprocessing.get_context("spawn")
    with context.Pool(processes=2, maxtasksperchild=1) as pool:
        return pool.starmap(_replay_in_child, [(role, str(path), checkpoint_ticks) for role, path in jobs])
