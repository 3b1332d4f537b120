"""The car daemon end to end, in-process: a simulated Lightning network over TLS (simnet, nodes
car and wall), python-can virtual buses for SWCAN and the vehicle, the real adapters, a Model 3
feeding realistic frames, and a wall driven by the test, honest or hostile.

Money is asserted exactly: what the simnet moved out of the car's channel, what reached the
wall and what the journal recorded must agree to the msat, and equal what the buyer policy
allows. Time runs :data:`SPEED` times faster than real through a ScaledClock, as the
simulator runs the daemon.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import os
import sqlite3
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import can
import pytest
import structlog

from car import config as car_config
from car import daemon as car_daemon
from car.daemon import CarDaemon
from car.journal import Journal
from car.policy import PrepayTolerance
from distributedcharge import config
from distributedcharge.clock import ScaledClock
from distributedcharge.daemon import StartupError
from distributedcharge.lightning import bolt11, macaroons
from distributedcharge.lightning.client import LndClient
from distributedcharge.sim.model3 import CHARGER_EFFICIENCY, Model3Emitter, Model3State, run_emitter
from distributedcharge.simnet.server import Simnet
from distributedcharge.swcan import messages as m
from distributedcharge.swcan.adapter import SwcanPort
from distributedcharge.swcan.link import CarAccepted, CarRejected, Offer, TariffRejected, WallLink
from distributedcharge.units import NJ_PER_WH
from distributedcharge.vehicle.signals import AcChargeState

SPEED = 8
RATE = 100_000  # msat per kWh: 100 sat/kWh
PAYMENT = 2_500  # msat: 25 Wh at RATE
WH_PER_PAYMENT = Fraction(PAYMENT * 1000, RATE)
OFFER = Offer(RATE, PAYMENT)
# With the default v1 tolerance and no energy received, the car pays while it is less than
# 1.4 x 25 + 75 = 110 Wh ahead: five payments of 25 Wh.
PAYMENTS_BEFORE_ANY_ENERGY = 5
WAIT_S = 30.0
OTHER_KEY = bytes([7]) * 32

IDLE = Model3State(plugged=True, latched=True, swcan_established=True, ac_charge_state=AcChargeState.ENABLED,
                   line_voltage=240, charger_current=0, pilot_current=32)
CHARGING = Model3State(plugged=True, latched=True, swcan_established=True, ac_charge_state=AcChargeState.ENABLED,
                       line_voltage=240, charger_current=48, pilot_current=48)
UNPLUGGED = Model3State()


async def eventually(condition: Callable[[], Any], what: str, timeout_s: float = WAIT_S) -> Any:
    """Wait for ``condition()`` to be truthy; a deadline only so that a broken daemon fails the test."""
    deadline = time.monotonic() + timeout_s
    while not (result := condition()):
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        await asyncio.sleep(0.02)
    return result


def car_macaroon(simnet: Simnet, path: Path, permissions: str = "offchain:read offchain:write") -> Path:
    ops = [tuple(op.split(":")) for op in permissions.split()]
    path.write_bytes(macaroons.bake(simnet.state.root_keys("car")["0"], ops))
    return path


def car_settings(simnet: Simnet, state_dir: Path, macaroon: Path, *, swcan: dict, vehicle_can: dict,
                 buyer: dict | None = None, **sections: dict) -> dict:
    """A car config (as TOML data) that reaches the simnet's car node and the given buses."""
    node = simnet.node("car")
    data: dict[str, Any] = {
        "role": "car",
        "buyer": {"network": "regtest", **(buyer or {})},
        "state": {"dir": str(state_dir)},
        "lightning": {"host": node.host, "port": node.port, "tls_cert": str(node.tls_cert_path),
                      "macaroon": str(macaroon), "rpc_timeout_s": 5.0},
        "swcan": swcan,
        "vehicle_can": vehicle_can,
        "log": {"level": "debug"},
    }
    for name, values in sections.items():
        data.setdefault(name, {}).update(values)
    return data


def validated(data: dict) -> config.Config:
    cfg = config.validate(data, car_config.SCHEMA, "test.toml")
    assert car_config.cross_check(cfg, "test.toml") == []
    return cfg


def forge(amount_msat: int | None, *, key: bytes, network: str = "regtest", timestamp: int | None = None,
          expiry: int = 600, payment_hash: bytes | None = None) -> str:
    return bolt11.encode(network=network, amount_msat=amount_msat,
                         payment_hash=payment_hash or hashlib.sha256(os.urandom(32)).digest(),
                         private_key=key, payment_secret=os.urandom(32), description="energy",
                         timestamp=int(time.time()) if timestamp is None else timestamp, expiry=expiry)


class HostileWallLink(WallLink):
    """A wall link that can also put any payload on the ISO-TP channel, whatever its state."""

    def queue_payload(self, payload: bytes) -> None:
        self._payloads.append(payload)


class TestWall:
    """The seller's end on the SWCAN bus, driven by the test, with the simnet wall node's invoices."""

    __test__ = False

    def __init__(self, bus: can.BusABC, lnd: LndClient, private_key: bytes, *, v2: bool):
        self.link = HostileWallLink(v2=v2)
        self.port = SwcanPort(self.link, bus)
        self.lnd = lnd
        self.private_key = private_key

    async def start(self) -> None:
        await self.port.start()

    async def close(self) -> None:
        await self.port.close()
        self.port.bus.shutdown()
        await self.lnd.close()

    async def event(self, kind: type) -> Any:
        while True:
            event = await asyncio.wait_for(self.port.events.get(), WAIT_S)
            if isinstance(event, kind):
                return event

    async def plug_in(self, offer: Offer = OFFER) -> CarAccepted | CarRejected:
        self.port.apply(lambda link, now: link.plugged_in(offer, now))
        return await self.event((CarAccepted, CarRejected))

    async def invoice(self, amount_msat: int, expiry: int = 600) -> str:
        return (await self.lnd.add_invoice(amount_msat, memo="energy", expiry=expiry)).payment_request

    def send(self, invoice: str, wall_energy_nj: int = 0) -> None:
        self.port.apply(lambda link, _: link.send_invoice(invoice, wall_energy_nj))

    def send_raw(self, payload: bytes) -> None:
        self.port.apply(lambda link, _: link.queue_payload(payload))


class Vehicle:
    """A Model 3 on the vehicle bus; ``state`` is what is physically true at the charge port."""

    def __init__(self, bus: can.BusABC, clock: ScaledClock):
        self.bus = bus
        self.clock = clock
        self.state = UNPLUGGED
        self.emitter = Model3Emitter("2025", pcs_pages=(3, 5))
        self._start_ac_wh = self.emitter.counters.ac_charge_wh

    def delivered_wh(self) -> Fraction:
        """Exact AC energy that has flowed (the emitter's pack counter, before charger losses)."""
        return (self.emitter.counters.ac_charge_wh - self._start_ac_wh) / CHARGER_EFFICIENCY

    async def run(self) -> None:
        await run_emitter(self.bus, lambda: self.state, clock=self.clock, interval=0.04, emitter=self.emitter)


@dataclass
class Scene:
    simnet: Simnet
    daemon: CarDaemon
    wall: TestWall
    vehicle: Vehicle
    state_dir: Path
    run: asyncio.Task
    car_start_msat: int = 0
    wall_start_msat: int = 0
    background: list[asyncio.Task] = field(default_factory=list)

    @property
    def journal(self) -> Journal:
        assert self.daemon.journal is not None
        return self.daemon.journal

    def verdicts(self) -> list[tuple[str, str | None]]:
        return [(row[0], row[1]) for row in self.journal.conn.execute(
            "SELECT verdict, code FROM invoices ORDER BY id")]

    def car_spent_msat(self) -> int:
        return self.car_start_msat - self.simnet.state.balance("car").local_msat

    def wall_received_msat(self) -> int:
        return self.simnet.state.balance("wall").local_msat - self.wall_start_msat

    def succeeded(self) -> list[sqlite3.Row]:
        return self.journal.conn.execute(
            "SELECT * FROM payments WHERE state = 'succeeded' ORDER BY updated_at").fetchall()

    def unresolved(self) -> int:
        return len(self.journal.unresolved_payments())

    async def unplug(self) -> sqlite3.Row:
        self.vehicle.state = UNPLUGGED

        def ended() -> sqlite3.Row | None:
            last = self.journal.conn.execute("SELECT * FROM sessions ORDER BY id DESC").fetchone()
            return last if last["ended_at"] is not None and not self.unresolved() else None

        return await eventually(ended, "the session to end")

    def assert_books_agree(self, paid_msat: int) -> None:
        """The simnet, the wall and the journal all say ``paid_msat`` moved, plus the journal's fees."""
        rows = self.succeeded()
        assert sum(row["amount_msat"] for row in rows) == paid_msat
        assert self.wall_received_msat() == paid_msat
        assert self.car_spent_msat() == paid_msat + sum(row["fee_msat"] for row in rows)
        assert self.run.done() is False, "the daemon stopped"


@contextlib.asynccontextmanager
async def scene(tmp_path: Path, *, wall_v2: bool = True, buyer: dict | None = None, state: Model3State = IDLE,
                relay_pin_factory: Any = None, **sections: dict) -> AsyncIterator[Scene]:
    swcan_channel, vehicle_channel = f"swcan-{uuid.uuid4().hex}", f"vehicle-{uuid.uuid4().hex}"
    async with Simnet(tmp_path / "net", control_socket=False) as simnet:
        macaroon = car_macaroon(simnet, tmp_path / "car.macaroon")
        state_dir = tmp_path / "car-state"
        data = car_settings(simnet, state_dir, macaroon, buyer=buyer,
                            swcan={"interface": "virtual", "channel": swcan_channel},
                            vehicle_can={"interface": "virtual", "channel": vehicle_channel}, **sections)
        clock = ScaledClock(SPEED)
        daemon = CarDaemon(validated(data), clock=clock, relay_pin_factory=relay_pin_factory)
        wall_node = simnet.node("wall")
        wall = TestWall(can.Bus(interface="virtual", channel=swcan_channel),
                        LndClient(wall_node.address_for("invoice"), timeout_s=5),
                        simnet.state.node("wall").private_key, v2=wall_v2)
        vehicle = Vehicle(can.Bus(interface="virtual", channel=vehicle_channel), clock)
        vehicle.state = state
        await daemon.start()
        run = asyncio.create_task(daemon.run())
        await wall.start()
        feeder = asyncio.create_task(vehicle.run())
        here = Scene(simnet, daemon, wall, vehicle, state_dir, run,
                     car_start_msat=simnet.state.balance("car").local_msat,
                     wall_start_msat=simnet.state.balance("wall").local_msat, background=[feeder])
        try:
            if state.latched:
                await eventually(lambda: daemon.session is not None, "the session to start")
            yield here
        finally:
            for task in (run, *here.background):
                task.cancel()
            await asyncio.gather(run, *here.background, return_exceptions=True)
            await daemon.stop()
            await wall.close()
            vehicle.bus.shutdown()


def run_async(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(scenario())


@pytest.fixture(autouse=True)
def logs() -> Any:
    with structlog.testing.capture_logs() as captured:
        yield captured


# --- an honest session -----------------------------------------------------------------------


async def honest_seller(here: Scene, paid_wh: list[Fraction]) -> None:
    """The original wall's rule: keep one invoice outstanding, send the next once the car's
    credit (Wh paid for - Wh delivered) falls below 1.8 payments."""
    outstanding: bytes | None = None
    while True:
        if outstanding is not None:
            status = await here.wall.lnd.lookup_invoice(outstanding)
            if status.state == "SETTLED":
                paid_wh.append(WH_PER_PAYMENT)
                outstanding = None
        delivered = here.vehicle.delivered_wh()
        if outstanding is None and sum(paid_wh) - delivered < Fraction(18, 10) * WH_PER_PAYMENT:
            added = await here.wall.lnd.add_invoice(PAYMENT, memo="energy", expiry=600)
            outstanding = added.r_hash
            here.wall.send(added.payment_request, int(delivered * NJ_PER_WH))
        await asyncio.sleep(0.02)


def allowance_wh(received_wh: Fraction, current_deciamps: int) -> Fraction:
    return PrepayTolerance().allowance_wh(WH_PER_PAYMENT, received_wh, current_deciamps)


def test_an_honest_session_pays_for_what_the_cars_meter_measured(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with scene(tmp_path) as here:
            assert isinstance(await here.wall.plug_in(), CarAccepted)
            here.vehicle.state = CHARGING
            paid_wh: list[Fraction] = []
            here.background.append(asyncio.create_task(honest_seller(here, paid_wh)))
            await eventually(lambda: len(paid_wh) >= 7, "seven payments")
            session = await here.unplug()

            car_wh = Fraction(session["car_energy_nj"], NJ_PER_WH)
            paid_msat = sum(row["amount_msat"] for row in here.succeeded())
            assert paid_msat % PAYMENT == 0
            bought_wh = Fraction(paid_msat * 1000, RATE)
            # The wall stays ahead, and the car never lets it get further ahead than its tolerance.
            assert car_wh <= bought_wh <= car_wh + allowance_wh(car_wh, 480)
            assert car_wh > 3 * WH_PER_PAYMENT
            here.assert_books_agree(paid_msat)
            # The wall's meter, as its last invoice reported it, watched the same flow.
            wall_wh = Fraction(session["wall_energy_nj"], NJ_PER_WH)
            assert car_wh - 2 * WH_PER_PAYMENT <= wall_wh <= car_wh + 1
            assert session["ended_at"] is not None and session["end_reason"] == "unplugged"
            assert session["protocol_version"] == 2
            assert session["payee"] == here.simnet.node("wall").pubkey
            assert set(here.verdicts()) == {("pay", None)}
            header, rows = here.journal.export_rows()
            column = header.index("paid_msat")
            assert sum(row[column] for row in rows if row[column] is not None) == paid_msat
            lines = here.journal.show_lines()
            assert "| v2 | 100 sat/kWh |" in lines[0] and "(unplugged)" in lines[0]

    run_async(scenario)


# --- hostile walls ---------------------------------------------------------------------------


async def over_asking(here: Scene) -> tuple[int, list]:
    wall = here.wall
    wall.send(await wall.invoice(3 * PAYMENT))  # the first payment may be twice the offer, not three times
    wall.send(await wall.invoice(PAYMENT))
    wall.send(await wall.invoice(2 * PAYMENT))
    return PAYMENT, [("refused", "over_offer"), ("pay", None), ("refused", "over_offer")]


async def asking_too_early(here: Scene) -> tuple[int, list]:
    for _ in range(PAYMENTS_BEFORE_ANY_ENERGY + 2):
        here.wall.send(await here.wall.invoice(PAYMENT))
    return PAYMENTS_BEFORE_ANY_ENERGY * PAYMENT, [("pay", None)] * PAYMENTS_BEFORE_ANY_ENERGY + [
        ("not_yet_due", "too_early")]


async def raising_the_rate_mid_session(here: Scene) -> tuple[int, list]:
    wall = here.wall
    wall.send(await wall.invoice(PAYMENT))
    await eventually(lambda: here.succeeded(), "the first payment")
    wall.port.apply(lambda link, now: link.change_offer(Offer(20 * RATE, PAYMENT), now))
    rejected = await wall.event(TariffRejected)
    # The wall goes on selling at the terms the car refused.
    dear = await wall.invoice(PAYMENT)
    wall.send_raw(m.encode_v2_invoice(dear, rejected.session_id, rejected.offer_number, 0))
    return PAYMENT, [("pay", None), ("refused", "dropped")]


async def repeating_an_invoice(here: Scene) -> tuple[int, list]:
    invoice = await here.wall.invoice(PAYMENT)
    here.wall.send(invoice)
    await eventually(lambda: here.succeeded(), "the first payment")
    here.wall.send(invoice)
    return PAYMENT, [("pay", None), ("refused", "duplicate")]


async def switching_payee(here: Scene) -> tuple[int, list]:
    here.wall.send(await here.wall.invoice(PAYMENT))
    here.wall.send(forge(PAYMENT, key=OTHER_KEY))
    return PAYMENT, [("pay", None), ("refused", "payee_changed")]


async def expired_invoice(here: Scene) -> tuple[int, list]:
    an_hour_ago = int(time.time()) - 3600
    here.wall.send(forge(PAYMENT, key=here.wall.private_key, timestamp=an_hour_ago, expiry=600))
    here.wall.send(await here.wall.invoice(PAYMENT))
    return PAYMENT, [("refused", "expired"), ("pay", None)]


async def another_network(here: Scene) -> tuple[int, list]:
    here.wall.send(forge(PAYMENT, key=here.wall.private_key, network="mainnet"))
    here.wall.send(forge(PAYMENT, key=here.wall.private_key, network="testnet"))
    here.wall.send(await here.wall.invoice(PAYMENT))
    return PAYMENT, [("refused", "wrong_network"), ("refused", "wrong_network"), ("pay", None)]


async def amountless(here: Scene) -> tuple[int, list]:
    here.wall.send(await here.wall.invoice(0))
    here.wall.send(await here.wall.invoice(PAYMENT))
    return PAYMENT, [("refused", "amountless"), ("pay", None)]


async def garbage(here: Scene) -> tuple[int, list]:
    wall = here.wall
    session_id, number = wall.link.session_id, 0
    honest = await wall.invoice(PAYMENT)
    payloads = [
        b"",
        os.urandom(300),
        b"\x00" * 4095,
        m.encode_v1_invoice(honest),  # ASCII in a v2 session
        m.encode_v2_invoice(honest, session_id, number, 0)[:-20],  # cut short
        m.encode_v2_invoice(honest, session_id ^ 1, number, 0),  # another session
    ]
    for payload in payloads:
        wall.send_raw(payload)
    for can_id, data in [(m.OFFER_ID, b"\x01\x02\x03"), (m.V2_OFFER_ID, b"\xff" * 8), (m.OFFER_ID, b"\xff" * 8)]:
        wall.port.bus.send(can.Message(arbitration_id=can_id, data=data, is_extended_id=False))
    wall.send(honest)
    # The empty payload never leaves can-isotp, so it reaches no one.
    return PAYMENT, [("refused", "dropped")] * (len(payloads) - 1) + [("pay", None)]


HOSTILE = [over_asking, asking_too_early, raising_the_rate_mid_session, repeating_an_invoice, switching_payee,
           expired_invoice, another_network, amountless, garbage]


@pytest.mark.parametrize("hostile", HOSTILE, ids=[case.__name__ for case in HOSTILE])
def test_a_hostile_wall_gets_nothing_beyond_the_policy(tmp_path: Path, hostile, logs) -> None:
    async def scenario() -> None:
        async with scene(tmp_path) as here:
            assert isinstance(await here.wall.plug_in(), CarAccepted)
            expected_msat, expected_verdicts = await hostile(here)
            await eventually(lambda: len(here.verdicts()) >= len(expected_verdicts), "every verdict")
            session = await here.unplug()
            assert here.verdicts() == expected_verdicts
            here.assert_books_agree(expected_msat)
            assert session["end_reason"] == "unplugged"
            refusals = [entry for entry in logs if entry["event"] in ("invoice refused", "swcan input dropped")]
            assert len(refusals) >= sum(1 for verdict, _ in expected_verdicts if verdict == "refused")
            assert all(entry.get("reason") for entry in refusals)

    run_async(scenario)


def test_an_invoice_held_back_as_too_early_is_paid_once_the_energy_arrives(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with scene(tmp_path) as here:
            assert isinstance(await here.wall.plug_in(), CarAccepted)
            for _ in range(PAYMENTS_BEFORE_ANY_ENERGY + 1):
                here.wall.send(await here.wall.invoice(PAYMENT))
            await eventually(lambda: ("not_yet_due", "too_early") in here.verdicts(), "the invoice held back")
            assert len(here.succeeded()) == PAYMENTS_BEFORE_ANY_ENERGY
            here.vehicle.state = CHARGING
            await eventually(lambda: len(here.succeeded()) == PAYMENTS_BEFORE_ANY_ENERGY + 1, "the last payment")
            last = here.journal.conn.execute(
                "SELECT car_energy_nj FROM invoices WHERE verdict = 'pay' ORDER BY id DESC").fetchone()
            received_wh = Fraction(last["car_energy_nj"], NJ_PER_WH)
            ahead_wh = PAYMENTS_BEFORE_ANY_ENERGY * WH_PER_PAYMENT - received_wh
            assert received_wh > 0
            assert ahead_wh < allowance_wh(received_wh, 480)
            await here.unplug()
            here.assert_books_agree((PAYMENTS_BEFORE_ANY_ENERGY + 1) * PAYMENT)

    run_async(scenario)


def test_offers_above_the_owners_ceiling_are_rejected_and_recorded(tmp_path: Path) -> None:
    whole_sat = 3_000  # a v1 offer carries whole sat

    async def scenario() -> None:
        async with scene(tmp_path, wall_v2=False) as here:
            answer = await here.wall.plug_in(Offer(2_000_000, whole_sat))
            assert isinstance(answer, CarRejected)
            here.wall.port.apply(lambda link, now: link.offer(Offer(RATE, 100_000), now))
            assert isinstance(await here.wall.event((CarAccepted, CarRejected)), CarRejected)
            here.wall.port.apply(lambda link, now: link.offer(Offer(RATE, whole_sat), now))
            accepted = await here.wall.event((CarAccepted, CarRejected))
            assert isinstance(accepted, CarAccepted) and accepted.version == 1
            here.wall.send(await here.wall.invoice(whole_sat))
            await eventually(lambda: here.succeeded(), "the payment")
            session = await here.unplug()
            offers = here.journal.conn.execute(
                "SELECT rate_msat_per_kwh, payment_msat, verdict, reason FROM offers ORDER BY id").fetchall()
            assert [(o[0], o[1], o[2]) for o in offers] == [
                (2_000_000, whole_sat, "rejected"), (RATE, 100_000, "rejected"), (RATE, whole_sat, "accepted")]
            assert offers[0]["reason"].startswith("rate_too_high")
            assert offers[1]["reason"].startswith("payment_too_large")
            assert session["protocol_version"] == 1 and session["wall_energy_nj"] is None
            here.assert_books_agree(whole_sat)

    run_async(scenario)


# --- Lightning outages -----------------------------------------------------------------------


def test_while_lnd_is_down_the_car_meters_and_waits_then_pays_what_is_due(tmp_path: Path, logs) -> None:
    async def scenario() -> None:
        async with scene(tmp_path) as here:
            assert isinstance(await here.wall.plug_in(), CarAccepted)
            here.vehicle.state = CHARGING
            paid_wh: list[Fraction] = []
            here.background.append(asyncio.create_task(honest_seller(here, paid_wh)))
            await eventually(lambda: len(here.succeeded()) >= 3, "three payments")
            node = here.simnet.node("car")
            await node.go_offline()
            await eventually(lambda: any(e["event"].startswith("LND unavailable") for e in logs), "the outage")
            paid_during_outage = len(here.succeeded())
            energy_at_outage = here.daemon.meter.energy_nj
            await eventually(lambda: here.daemon.meter.energy_nj - energy_at_outage > 2 * WH_PER_PAYMENT * NJ_PER_WH,
                             "two payments' worth of energy during the outage")
            assert len(here.succeeded()) == paid_during_outage
            assert not here.run.done()
            await node.go_online()
            await eventually(lambda: len(here.succeeded()) >= paid_during_outage + 3, "payments after the outage")
            session = await here.unplug()
            car_wh = Fraction(session["car_energy_nj"], NJ_PER_WH)
            paid_msat = sum(row["amount_msat"] for row in here.succeeded())
            bought_wh = Fraction(paid_msat * 1000, RATE)
            assert bought_wh <= car_wh + allowance_wh(car_wh, 480)
            assert bought_wh >= car_wh - 2 * WH_PER_PAYMENT
            here.assert_books_agree(paid_msat)
            assert any(e["event"] == "LND reachable again" for e in logs)

    run_async(scenario)


def test_a_payment_cut_off_by_an_outage_is_reconciled_then_paid_once(tmp_path: Path, logs) -> None:
    async def scenario() -> None:
        async with scene(tmp_path) as here:
            assert isinstance(await here.wall.plug_in(), CarAccepted)
            node = here.simnet.node("car")
            node.set_latency_ms(500)  # SendPaymentV2 is still at the node's door when it goes down
            here.wall.send(await here.wall.invoice(PAYMENT))
            await eventually(lambda: here.unresolved(), "the payment's journal row")
            await node.go_offline()
            node.set_latency_ms(0)
            await eventually(lambda: any(e["event"] == "payment unresolved; will reconcile" for e in logs),
                             "the payment to be unresolved")
            assert not here.succeeded() and not here.run.done()
            await node.go_online()
            await eventually(lambda: here.succeeded(), "the payment")
            session = await here.unplug()
            here.assert_books_agree(PAYMENT)
            reconciled = [e for e in logs if e["event"] == "payment reconciled"]
            assert [(e["when"], e["state"]) for e in reconciled] == [("after an unresolved payment", "failed")]
            assert here.succeeded()[0]["attempts"] == 2
            assert here.verdicts() == [("pay", None), ("pay", None)]
            assert session["end_reason"] == "unplugged"

    run_async(scenario)


# --- plug, relay and bus --------------------------------------------------------------------


def test_malformed_vehicle_frames_are_counted_and_skipped(tmp_path: Path, logs) -> None:
    async def scenario() -> None:
        async with scene(tmp_path) as here:
            bus = here.vehicle.bus
            for data in (b"\x03", b"", b"\x01\x02"):
                bus.send(can.Message(arbitration_id=0x21D, data=data, is_extended_id=False))
            bus.send(can.Message(arbitration_id=0x2C4, data=b"\x03", is_extended_id=False))
            await eventually(lambda: sum(here.daemon.vehicle.malformed.values()) >= 4, "the frames to be counted")
            assert here.daemon.vehicle.malformed[0x21D] >= 3
            skipped = [e for e in logs if e["event"] == "vehicle frame skipped"]
            assert len(skipped) == 1 and "bytes" in skipped[0]["reason"]
            assert here.daemon.session is not None and here.daemon.vehicle.plug_latched

    run_async(scenario)


def test_an_offer_heard_before_the_plug_latches_is_answered_at_plug_in(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with scene(tmp_path, state=UNPLUGGED) as here:
            here.wall.port.apply(lambda link, now: link.plugged_in(OFFER, now))
            await eventually(lambda: here.daemon._offer_before_plug_in is not None, "the offer to be heard")
            assert here.daemon.session is None
            here.vehicle.state = IDLE
            accepted = await here.wall.event(CarAccepted)
            assert accepted.offer == OFFER
            assert here.daemon.session is not None

    run_async(scenario)


def test_the_swcan_relay_follows_the_cars_charge_port(tmp_path: Path) -> None:
    mock = pytest.importorskip("gpiozero.pins.mock")
    factory = mock.MockFactory()

    async def scenario() -> None:
        async with scene(tmp_path, state=UNPLUGGED, relay={"gpio_pin": 16}, relay_pin_factory=factory) as here:
            pin = factory.pin(16)
            assert here.daemon.relay is not None and pin.state == 0
            here.vehicle.state = Model3State(plugged=True, latched=True, ac_charge_state=AcChargeState.ENABLED)
            await eventually(lambda: here.daemon.session is not None, "the plug-in")
            assert pin.state == 0  # no Tesla SWCAN link yet
            here.vehicle.state = IDLE
            await eventually(lambda: pin.state == 1, "the relay to close")
            here.vehicle.state = Model3State(plugged=True, latched=True, swcan_established=True,
                                             ac_charge_state=AcChargeState.STANDBY)
            await eventually(lambda: pin.state == 0, "the relay to open on standby")
            here.vehicle.state = IDLE
            await eventually(lambda: pin.state == 1, "the relay to close again")
            await here.unplug()
            assert pin.state == 0

    run_async(scenario)


def test_the_policy_may_retry_a_hash_only_while_every_payment_to_it_failed_and_tries_remain(tmp_path: Path) -> None:
    with Journal(tmp_path / "journal.sqlite3") as journal:
        blocked = journal.settled_or_pending_hashes(max_attempts=2)
        retried, paid = hashlib.sha256(b"retried").digest(), hashlib.sha256(b"paid").digest()
        journal.record_intent(retried, "lnbcrt1", PAYMENT, 2_000, 1.0)
        assert retried in blocked  # unresolved: it may still be paid
        journal.mark_failed(retried, "never initiated", 2.0)
        assert retried not in blocked
        journal.record_intent(retried, "lnbcrt1", PAYMENT, 2_000, 3.0)
        journal.mark_failed(retried, "no route", 4.0)
        assert retried in blocked  # two tries, both failed: no third
        journal.record_intent(paid, "lnbcrt2", PAYMENT, 2_000, 5.0)
        journal.mark_succeeded(paid, 1, None, 6.0)
        assert paid in blocked
        assert "not a hash" not in blocked


# --- start-up ----------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def started_or_refused(tmp_path: Path, *, permissions: str = "offchain:read offchain:write",
                             **sections: dict) -> AsyncIterator[tuple[CarDaemon | None, str | None]]:
    async with Simnet(tmp_path / "net", control_socket=False) as simnet:
        macaroon = car_macaroon(simnet, tmp_path / "car.macaroon", permissions)
        buses = {"swcan": {"interface": "virtual", "channel": uuid.uuid4().hex},
                 "vehicle_can": {"interface": "virtual", "channel": uuid.uuid4().hex}}
        for name, values in sections.items():
            buses.setdefault(name, {}).update(values)
        data = car_settings(simnet, tmp_path / "state", macaroon, **buses)
        daemon = CarDaemon(validated(data))
        try:
            await daemon.start()
        except StartupError as exc:
            assert daemon.journal is None and daemon.port is None and daemon.client is None
            yield None, str(exc)
            return
        try:
            yield daemon, None
        finally:
            await daemon.stop()


@pytest.mark.parametrize("permissions, sections, expected", [
    ("offchain:read offchain:write onchain:write", {},
     "the car macaroon can move on-chain funds or make new macaroons (onchain:write)"),
    ("offchain:read", {}, "lacks permission for: /routerrpc.Router/SendPaymentV2"),
    ("offchain:read offchain:write", {"lightning": {"macaroon": "/nonexistent/car.macaroon"}},
     "lightning.macaroon: /nonexistent/car.macaroon: file not found"),
    ("offchain:read offchain:write", {"vehicle_can": {"interface": "no-such-interface"}},
     "vehicle_can: cannot open no-such-interface"),
    ("offchain:read offchain:write", {"state": {"dir": "/proc/no-such-dir"}},
     "state.dir /proc/no-such-dir: cannot open the payment journal"),
])
def test_the_daemon_refuses_to_start_and_says_why(tmp_path: Path, permissions, sections, expected) -> None:
    async def scenario() -> None:
        async with started_or_refused(tmp_path, permissions=permissions, **sections) as (daemon, refusal):
            assert daemon is None
            assert refusal is not None and expected in refusal

    run_async(scenario)


def test_an_overprivileged_macaroon_the_owner_allowed_starts_with_a_warning(tmp_path: Path, logs) -> None:
    async def scenario() -> None:
        async with started_or_refused(tmp_path, permissions="offchain:read offchain:write onchain:write",
                                      lightning={"allow_overprivileged_macaroon": True}) as (daemon, refusal):
            assert refusal is None and daemon is not None
            warnings = [e for e in logs if e["event"].startswith("overprivileged macaroon")]
            assert len(warnings) == 1 and "onchain:write" in warnings[0]["detail"]

    run_async(scenario)


def test_a_bad_config_stops_the_command_before_any_hardware(tmp_path: Path, capsys) -> None:
    broken = tmp_path / "car.toml"
    broken.write_text('role = "car"\n[buyer]\nnetwork = "bitcoin"\n[relay]\ngpio_pin = 99\n')
    assert car_daemon.run(argparse.Namespace(config=str(broken))) == 2
    err = capsys.readouterr().err
    assert f"{broken}: buyer.network: must be one of" in err
    assert f"{broken}: relay.gpio_pin: must be at most 27, got 99" in err
