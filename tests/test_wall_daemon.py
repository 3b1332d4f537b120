"""The wall-unit daemon end to end, in one process: simnet, a simulated TWC on a real pty, a car on
python-can.

Each test runs the real :class:`WallDaemon` on a :class:`ScaledClock` against an in-process
:class:`Simnet` (nodes ``car`` and ``wall``), the TWC slave simulator served on a pseudo-terminal
by a thread (exactly as ``distributedcharge twcsim --pty-link`` does) and a buyer speaking the
SWCAN protocol on a python-can ``virtual`` bus with :class:`CarLink` + :class:`SwcanPort`, paying
with the simnet car node through :class:`LndClient` when the scenario wants it to.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import sqlite3
import threading
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import can
import pytest
import structlog

from distributedcharge import config
from distributedcharge.clock import ScaledClock
from distributedcharge.lightning.client import LndClient
from distributedcharge.lightning.errors import LightningError
from distributedcharge.sim.twc_slave import SimpleCar, SlaveConfig, TwcSlave
from distributedcharge.sim.twcsim_cli import PtyLink, run_slave
from distributedcharge.simnet.server import SimNode, Simnet
from distributedcharge.swcan import messages as m
from distributedcharge.swcan.adapter import SwcanPort
from distributedcharge.swcan.link import CarLink, InvoiceReceived, OfferReceived
from distributedcharge.units import NJ_PER_WH, US_PER_S, msat_for_energy
from wallunit import qr
from wallunit.config import LEDGER_FILENAME, SCHEMA
from wallunit.daemon import WallDaemon
from wallunit.policy import Power
from wallunit.wallmeter import NJ_PER_VOLT_CENTIAMP_MICROSECOND

SPEED = 8  # simulated seconds per real second
RATE_SAT_PER_KWH = 100
WH_PER_PAYMENT = 5
PAYMENT_MSAT = RATE_SAT_PER_KWH * WH_PER_PAYMENT  # 5 Wh at 100 sat/kWh: exactly 500 msat
PAYMENT_NJ = WH_PER_PAYMENT * NJ_PER_WH
CUT_BEFORE_FIRST_MSAT = math.ceil(Fraction(303, 1000) * PAYMENT_MSAT)


def full_power_nj(seconds: int) -> int:
    """What the simulated car draws at the offered 32 A and 230 V in ``seconds``."""
    return 230 * 3200 * seconds * US_PER_S * NJ_PER_VOLT_CENTIAMP_MICROSECOND


# A cut shows in the meter up to 3 s after the reading that called for it: FC B2 goes out
# within a heartbeat, and the meter holds the last current until the next reading.
STOP_OVERSHOOT_NJ = full_power_nj(3)
STOP_OVERSHOOT_MSAT = math.ceil(msat_for_energy(STOP_OVERSHOOT_NJ, RATE_SAT_PER_KWH * 1000))
WAIT_S = 30.0  # real seconds any awaited condition may take before the test fails


@pytest.fixture(autouse=True)
def logs() -> Any:
    # Captured rather than printed: threads log too, and pytest may have closed the stream by then.
    with structlog.testing.capture_logs() as captured:
        yield captured


def wall_config(state_dir: Path, node: SimNode, twc_port: str, swcan: dict[str, str], **sections: dict) -> dict:
    data: dict[str, Any] = {
        "role": "wallunit",
        "seller": {"rate_sat_per_kwh": RATE_SAT_PER_KWH, "wh_per_payment": WH_PER_PAYMENT},
        "manual": {"enabled": False},
        "plug": {"stable_s": 0.5, "after_unplug_s": 1.0, "unplug_confirm_s": 0.5},
        "state": {"dir": str(state_dir)},
        "lightning": {"host": node.host, "port": node.port, "tls_cert": str(node.tls_cert_path),
                      "macaroon": str(node.macaroon_path("invoice"))},
        "swcan": swcan,
        "twc": {"port": twc_port, "wiring_limit_a": 32},
    }
    for name, values in sections.items():
        data.setdefault(name, {}).update(values)
    return data


def toml_text(data: dict) -> str:
    """Enough TOML for a flat config: tables of strings, numbers and booleans."""

    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, str):
            return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
        return repr(v)

    lines = [f"role = {value(data['role'])}"]
    for section, keys in data.items():
        if section == "role":
            continue
        lines.append(f"[{section}]")
        lines += [f"{key} = {value(v)}" for key, v in keys.items()]
    return "\n".join(lines) + "\n"


class TwcSim:
    """The Wall Connector simulator served on a real pty by a thread, as ``twcsim --pty-link`` does."""

    def __init__(self, path: Path, clock: Callable[[], float]) -> None:
        self.path = path
        self.car = SimpleCar(plugged=False)
        self.slave = TwcSlave(SlaveConfig(slave_id=0x5A5A, sign=0x11), self.car, random.Random(7))
        self.link = PtyLink(path)
        self.pending: list[Callable[[float], None]] = []
        self._stop = threading.Event()
        self._clock = clock
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._stop.clear()
        self.link.open()
        self._thread = threading.Thread(target=run_slave, name="twcsim",
                                        args=(self.slave, self.link, self._stop, self._clock, self.pending))
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        self.link.close()

    def plug(self) -> None:
        self.pending.append(self.slave.plug)

    def unplug(self) -> None:
        self.pending.append(self.slave.unplug)

    @property
    def drawing_ca(self) -> int:
        return self.slave.actual_centiamps


Plan = Callable[[int], "float | None"]


def pay_at_once(number: int) -> float | None:
    return 0.0


def never(number: int) -> float | None:
    return None


@dataclass
class Buyer:
    """A car on the SWCAN bus. ``plan(n)`` says how many real seconds after receiving invoice n
    (0-based) it pays, or None for never; ``answer`` handles each offer."""

    bus: can.BusABC
    lnd: LndClient
    plan: Plan = pay_at_once
    answer: str = "accept"  # accept, reject, garbage, silent
    v2: bool = True
    invoices: list[InvoiceReceived] = field(default_factory=list)
    paid_msat: list[int] = field(default_factory=list)
    receipts: dict[str, int] = field(default_factory=dict)  # payment hash (hex) -> msat
    failed: list[str] = field(default_factory=list)
    offers: list[OfferReceived] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.port = SwcanPort(CarLink(v2=self.v2), self.bus)
        self._tasks: set[asyncio.Task] = set()

    async def run(self) -> None:
        await self.port.start()
        while True:
            event = await self.port.events.get()
            if isinstance(event, OfferReceived):
                self.offers.append(event)
                self._answer(event)
            elif isinstance(event, InvoiceReceived):
                number = len(self.invoices)
                self.invoices.append(event)
                delay = self.plan(number)
                if delay is not None:
                    task = asyncio.create_task(self._pay(event.bolt11, delay))
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)

    def _answer(self, event: OfferReceived) -> None:
        if self.answer == "accept":
            self.port.apply(lambda link, now: link.accept(event.offer))
        elif self.answer == "reject":
            self.port.apply(lambda link, now: link.reject(event.offer))
        elif self.answer == "garbage":
            for data in (b"\x07", b"\x01\x09", b"\x01\x02\x00", b"", b"\xff" * 8):
                self.bus.send(can.Message(arbitration_id=m.ANSWER_ID, data=data, is_extended_id=False))

    async def _pay(self, bolt11: str, delay: float) -> None:
        await asyncio.sleep(delay)
        await self.pay_now(bolt11)

    async def pay_now(self, bolt11: str) -> None:
        """Pay, trying again while the wall's node cannot be reached."""
        for _ in range(40):
            try:
                status = await self.lnd.pay(bolt11, timeout_s=10, fee_limit_msat=10_000)
            except LightningError as exc:
                self.failed.append(str(exc))
                await asyncio.sleep(0.25)
                continue
            self.paid_msat.append(status.value_msat)
            self.receipts[status.payment_hash] = status.value_msat
            return

    def forget_session(self) -> None:
        """What a car does when the wall's session ends under it (unplug, or the wall restarted)."""
        self.port.link.unplugged()

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.port.close()
        self.bus.shutdown()


@dataclass
class Rig:
    daemon: WallDaemon
    simnet: Simnet
    twc: TwcSim
    clock: ScaledClock
    channel: str
    car_lnd: LndClient
    buyer: Buyer | None = None

    @property
    def ledger(self):
        return self.daemon.ledger

    def session_row(self, session_id: int | None = None) -> dict:
        query = "SELECT * FROM sessions ORDER BY id DESC LIMIT 1" if session_id is None else \
            "SELECT * FROM sessions WHERE id = ?"
        row = self.ledger.conn.execute(query, () if session_id is None else (session_id,)).fetchone()
        return dict(row)

    def invoices(self, kind: str | None = None) -> list[dict]:
        rows = self.ledger.conn.execute(
            "SELECT i.*, st.amt_paid_msat FROM invoices i LEFT JOIN settlements st ON st.invoice_id = i.id "
            "ORDER BY i.id").fetchall()
        return [dict(r) for r in rows if kind is None or r["kind"] == kind]

    def events(self, kind: str) -> list[dict]:
        rows = self.ledger.conn.execute("SELECT * FROM events WHERE kind = ? ORDER BY id", (kind,)).fetchall()
        return [dict(r) for r in rows]

    def node_state(self, r_hash: bytes) -> str:
        return self.simnet.state.find_invoice("wall", r_hash).state.name

    async def add_buyer(self, plan: Plan = pay_at_once, answer: str = "accept", v2: bool = True) -> Buyer:
        self.buyer = Buyer(can.Bus(interface="virtual", channel=self.channel), self.car_lnd, plan, answer, v2)
        self._buyer_task = asyncio.create_task(self.buyer.run())
        return self.buyer

    async def close_buyer(self) -> None:
        if self.buyer is not None:
            await stop_task(self._buyer_task)
            await self.buyer.close()

    async def until(self, condition: Callable[[], Any], what: str, timeout: float = WAIT_S) -> Any:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not (result := condition()):
            assert loop.time() < deadline, f"timed out waiting for {what}"
            await asyncio.sleep(0.02)
        return result

    async def session_started(self) -> int:
        await self.until(lambda: self.daemon.policy.session is not None, "the daemon to see the car")
        return self.daemon.policy.session.session_id

    async def unplug_and_wait(self) -> None:
        self.twc.unplug()
        await self.until(lambda: self.daemon.policy.session is None, "the daemon to see the unplug")
        await self.until(lambda: self.daemon.policy.power is Power.CUT, "the TWC to stop after the unplug")


@contextlib.asynccontextmanager
async def rig(tmp_path: Path, *, speed: float = SPEED, **sections: dict) -> AsyncIterator[Rig]:
    clock = ScaledClock(speed)
    async with contextlib.AsyncExitStack() as stack:
        simnet = Simnet(tmp_path / "simnet", control_socket=False)
        await simnet.start()
        stack.push_async_callback(simnet.stop)
        twc = TwcSim(tmp_path / "ttyTWC", clock.monotonic)
        twc.start()
        stack.callback(twc.stop)
        car_lnd = LndClient(simnet.node("car").address)
        stack.push_async_callback(car_lnd.close)
        channel = uuid.uuid4().hex
        data = wall_config(tmp_path / "wall", simnet.node("wall"), str(twc.path),
                           {"interface": "virtual", "channel": channel}, **sections)
        daemon = WallDaemon(config.validate(data, SCHEMA, "test.toml"), clock=clock, source="test.toml")
        the_rig = Rig(daemon, simnet, twc, clock, channel, car_lnd)
        stack.push_async_callback(the_rig.close_buyer)
        await daemon.start()
        stack.push_async_callback(daemon.stop)
        running = asyncio.create_task(daemon.run())
        stack.push_async_callback(stop_task, running)
        await the_rig.until(lambda: daemon.node_ok, "the wall's node")
        await the_rig.until(lambda: daemon.slave_id is not None, "the TWC to link")
        yield the_rig
        assert not running.done(), f"the daemon stopped: {running.exception()!r}"


async def stop_task(task: asyncio.Task) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


def run(coroutine) -> Any:
    return asyncio.run(coroutine)


# --- autopay -------------------------------------------------------------------------------


def test_honest_session_is_sold_at_the_configured_rate_and_the_ledger_matches_node_and_meter(tmp_path):
    async def scenario() -> None:
        async with rig(tmp_path) as r:
            buyer = await r.add_buyer()
            r.twc.plug()
            session_id = await r.session_started()
            await r.until(lambda: len(buyer.paid_msat) >= 6, "six payments")
            await r.until(lambda: r.twc.drawing_ca > 3000, "the car to charge at the offered 32 A")
            await r.unplug_and_wait()
            await r.until(lambda: all(i["state"] in ("settled", "canceled") for i in r.invoices()),
                          "every invoice to be closed on the node")

            row = r.session_row(session_id)
            invoices = r.invoices()
            settled = [i for i in invoices if i["state"] == "settled"]
            assert row["ended_at"] and row["protocol_version"] == 2
            # Every invoice: one payment of exactly 5 Wh at 100 sat/kWh, and each paid in full.
            assert {(i["amount_msat"], Fraction(i["energy_nj"]), i["rate_msat_per_kwh"]) for i in invoices} == {
                (PAYMENT_MSAT, PAYMENT_NJ, RATE_SAT_PER_KWH * 1000)}
            assert [i["amt_paid_msat"] for i in settled] == [PAYMENT_MSAT] * len(settled)
            assert r.ledger.paid_total_msat(session_id) == sum(buyer.paid_msat) == PAYMENT_MSAT * len(settled)
            # The invoice still open at unplug is canceled on the node, not left payable.
            for invoice in invoices:
                assert r.node_state(invoice["r_hash"]) == invoice["state"].upper()
            # Delivered energy is the wall meter's, and the buyer paid for it in advance, never
            # letting the seller be owed more than the before-first-payment line.
            delivered = row["delivered_nj"]
            assert 0 < delivered <= len(settled) * PAYMENT_NJ
            assert row["max_exposure_msat"] <= CUT_BEFORE_FIRST_MSAT
            assert not [e for e in r.events("CutPower") if e["detail"] != "car unplugged"]
            # The meter agrees with the energy the simulated Wall Connector put through, to the
            # second or two by which their samples differ.
            assert abs(delivered - r.twc.slave.energy_nj) <= full_power_nj(2)

    run(scenario())


# --- hostile cars ----------------------------------------------------------------------------


async def cut_confirmed(r: Rig) -> dict:
    """Wait for a cut for arrears, confirmed by the TWC's measured current; return the session row."""
    await r.until(lambda: r.events("CutPower"), "power to be cut")
    await r.until(lambda: r.daemon.policy.power is Power.CUT, "the TWC to confirm the stop")
    stop = r.events("TWC stop")[-1]
    assert stop["detail"].startswith("confirmed") and r.twc.drawing_ca < 100
    assert r.events("CutPower")[0]["detail"] == "buyer behind on payments"
    return r.session_row()


async def stays_cut(r: Rig) -> None:
    """A few more heartbeats go by and not one more nanojoule is sold."""
    delivered = r.daemon.policy.session.delivered_nj
    answered = r.twc.slave.counters.heartbeats_answered
    await r.until(lambda: r.twc.slave.counters.heartbeats_answered >= answered + 3, "three more heartbeats")
    assert r.daemon.policy.session.delivered_nj == delivered and r.twc.drawing_ca < 100


def exposure_within_thresholds(r: Rig, session_id: int) -> None:
    """What the ledger says was delivered and paid is what the policy and the node say."""
    session = r.daemon.policy.session
    r.ledger.record_energy(session_id, session.delivered_nj)
    assert r.session_row(session_id)["delivered_nj"] == session.delivered_nj
    assert r.ledger.paid_total_msat(session_id) == session.paid_msat == sum(r.buyer.paid_msat)
    assert math.ceil(session.max_exposure_msat) <= CUT_BEFORE_FIRST_MSAT + STOP_OVERSHOOT_MSAT


def test_car_that_accepts_and_never_pays_is_cut_at_the_before_first_payment_line(tmp_path):
    async def scenario() -> None:
        async with rig(tmp_path) as r:
            await r.add_buyer(plan=never)
            r.twc.plug()
            session_id = await r.session_started()
            await cut_confirmed(r)
            await stays_cut(r)
            session = r.daemon.policy.session
            value = msat_for_energy(session.delivered_nj, RATE_SAT_PER_KWH * 1000)
            assert CUT_BEFORE_FIRST_MSAT <= value <= CUT_BEFORE_FIRST_MSAT + STOP_OVERSHOOT_MSAT
            assert len(r.buyer.invoices) == 1 and r.ledger.paid_total_msat(session_id) == 0
            exposure_within_thresholds(r, session_id)
            await r.unplug_and_wait()
            (invoice,) = r.invoices()
            await r.until(lambda: r.node_state(invoice["r_hash"]) == "CANCELED", "the unpaid invoice to be canceled")
            row = r.session_row(session_id)
            assert row["delivered_nj"] == session.delivered_nj and row["max_exposure_msat"] == math.ceil(value)

    run(scenario())


def test_car_that_pays_some_and_stops_is_cut_with_its_credit_still_ahead(tmp_path):
    async def scenario() -> None:
        async with rig(tmp_path) as r:
            await r.add_buyer(plan=lambda n: 0.0 if n < 2 else None)
            r.twc.plug()
            session_id = await r.session_started()
            await cut_confirmed(r)
            await stays_cut(r)
            session = r.daemon.policy.session
            assert r.buyer.paid_msat == [PAYMENT_MSAT, PAYMENT_MSAT]
            # Cut once the credit fell under 0.202 payments; only the stop's own delay runs past it.
            line_nj = 2 * PAYMENT_NJ - Fraction(202, 1000) * PAYMENT_NJ
            assert line_nj < session.delivered_nj <= line_nj + STOP_OVERSHOOT_NJ
            exposure_within_thresholds(r, session_id)

    run(scenario())


def test_car_that_pays_late_is_cut_and_selling_resumes_once_it_catches_up(tmp_path):
    async def scenario() -> None:
        async with rig(tmp_path) as r:
            await r.add_buyer(plan=lambda n: 1.5 if n == 2 else 0.0)
            r.twc.plug()
            session_id = await r.session_started()
            await cut_confirmed(r)
            await r.until(lambda: r.events("ResumePower")[1:], "power to come back after the late payment")
            await r.until(lambda: r.twc.drawing_ca > 1000, "the car to draw current again")
            await r.until(lambda: len(r.buyer.paid_msat) >= 5, "payments to go on")
            assert [e["detail"] for e in r.events("CutPower")] == ["buyer behind on payments"]
            exposure_within_thresholds(r, session_id)

    run(scenario())


def test_v1_car_that_restarts_mid_session_is_offered_its_terms_again_and_buys_on(tmp_path):
    async def scenario() -> None:
        async with rig(tmp_path) as r:
            buyer = await r.add_buyer(plan=lambda n: None if n == 2 else 0.0, v2=False)
            r.twc.plug()
            session_id = await r.session_started()
            await r.until(lambda: len(buyer.invoices) == 3, "the third invoice")
            buyer.forget_session()  # the car's daemon restarted: it waits for an offer again
            await cut_confirmed(r)
            await r.until(lambda: r.events("RepeatOffer"), "the accepted terms to go out again")
            await r.until(lambda: len(buyer.offers) == 2, "the restarted car to hear them")
            assert buyer.offers[1].offer == buyer.offers[0].offer and buyer.offers[1].version == 1
            dropped = r.invoices()[2]
            await r.until(lambda: r.node_state(dropped["r_hash"]) == "CANCELED", "the dropped invoice to be canceled")
            await r.until(lambda: r.events("ResumePower")[1:], "power back once the car pays again")
            await r.until(lambda: len(buyer.paid_msat) >= 5, "payments to go on")
            assert set(buyer.paid_msat) == {1000}  # v1 terms: the 0.5 sat payment rounded up to a whole sat
            assert r.ledger.paid_total_msat(session_id) == sum(buyer.paid_msat)

    run(scenario())


def test_car_answering_garbage_never_gets_an_invoice_and_is_cut(tmp_path, logs):
    async def scenario() -> None:
        async with rig(tmp_path) as r:
            await r.add_buyer(answer="garbage")
            r.twc.plug()
            session_id = await r.session_started()
            await cut_confirmed(r)
            await stays_cut(r)
            assert r.invoices() == [] and r.buyer.invoices == []
            value = msat_for_energy(r.daemon.policy.session.delivered_nj, RATE_SAT_PER_KWH * 1000)
            assert value <= CUT_BEFORE_FIRST_MSAT + STOP_OVERSHOOT_MSAT
            assert r.session_row(session_id)["protocol_version"] is None

    run(scenario())
    assert any(entry["event"] == "swcan input dropped" for entry in logs)


def test_car_flooding_the_bus_is_cut_and_the_daemon_keeps_serving(tmp_path):
    async def scenario() -> None:
        async with rig(tmp_path) as r:
            buyer = await r.add_buyer(plan=never)
            r.twc.plug()
            session_id = await r.session_started()
            await r.until(lambda: buyer.invoices, "the first invoice")
            junk = [(m.ANSWER_ID, b"\x01\x02\x03\x04\x05"), (m.ISOTP_CAR_TX_ID, b"\x30\x00\x00"),
                    (m.ANSWER_ID, b"\x55"), (0x123, b"\x00" * 8), (m.OFFER_ID, b"\xff" * 8)]
            for burst in range(40):
                for count in range(100):
                    can_id, data = junk[count % len(junk)]
                    buyer.bus.send(can.Message(arbitration_id=can_id, data=data, is_extended_id=False))
                await asyncio.sleep(0)
            await cut_confirmed(r)
            exposure_within_thresholds(r, session_id)
            await r.unplug_and_wait()
            assert r.session_row(session_id)["ended_at"]

    run(scenario())


# --- outages -------------------------------------------------------------------------------


def test_seller_node_outage_stops_the_sale_safely_and_selling_resumes_when_it_returns(tmp_path):
    async def scenario() -> TwcSim:
        async with rig(tmp_path) as r:
            buyer = await r.add_buyer()
            r.twc.plug()
            session_id = await r.session_started()
            await r.until(lambda: len(buyer.paid_msat) >= 3, "three payments")
            await r.simnet.node("wall").go_offline()
            await r.until(lambda: not r.daemon.node_ok, "the daemon to notice the node is gone")
            await r.until(lambda: r.daemon.policy.power is Power.CUT, "power to be cut while the node is away")
            assert r.events("StopSale")[-1]["detail"] == "Lightning node unreachable"
            assert r.events("CutPower")[-1]["detail"] == "Lightning node unreachable"
            await stays_cut(r)
            await r.simnet.node("wall").go_online()
            await r.until(lambda: r.daemon.node_ok, "the daemon to find the node again")
            await r.until(lambda: r.twc.drawing_ca > 1000, "the car to charge again")
            paid_before = len(buyer.paid_msat)
            await r.until(lambda: len(buyer.paid_msat) >= paid_before + 2, "payments after the outage")
            exposure_within_thresholds(r, session_id)
            assert r.session_row(session_id)["max_exposure_msat"] <= CUT_BEFORE_FIRST_MSAT
            assert r.twc.drawing_ca > 1000
        return r

    stopped = run(scenario())
    # The daemon stopped mid-session: the TWC was told to stop first and the session is closed.
    assert stopped.twc.drawing_ca < 100
    with sqlite3.connect(tmp_path / "wall" / LEDGER_FILENAME) as ledger:
        assert ledger.execute("SELECT end_reason FROM sessions").fetchall() == [("daemon stopped",)]


def test_twc_serial_outage_is_survived_and_the_session_goes_on(tmp_path):
    async def scenario() -> None:
        async with rig(tmp_path) as r:
            buyer = await r.add_buyer()
            r.twc.plug()
            session_id = await r.session_started()
            await r.until(lambda: len(buyer.paid_msat) >= 3, "three payments")
            r.twc.stop()  # the USB adapter is pulled: the device disappears
            await r.until(lambda: r.events("TWC port down"), "the daemon to notice the serial link is gone")
            await r.clock.sleep(3)
            r.twc.start()
            await r.until(lambda: r.events("TWC port up")[1:], "the serial link to come back")
            paid_before = len(buyer.paid_msat)
            await r.until(lambda: len(buyer.paid_msat) >= paid_before + 2, "payments after the outage")
            assert r.daemon.policy.session.session_id == session_id
            exposure_within_thresholds(r, session_id)

    run(scenario())


# --- manual pay ----------------------------------------------------------------------------

MANUAL = {"manual": {"enabled": True, "deposit_kwh": 1}, "seller": {"offer_timeout_s": 1}}
DEPOSIT_MSAT = 1 * RATE_SAT_PER_KWH * 1000  # 1 kWh at 100 sat/kWh


class Phone:
    """A person paying the QR code with a wallet on the car node; hold invoices keep the payment in flight."""

    def __init__(self, lnd: LndClient) -> None:
        self.lnd = lnd
        self.payments: list[asyncio.Task] = []

    def pay(self, payment_request: str) -> asyncio.Task:
        task = asyncio.create_task(self.lnd.pay(payment_request, timeout_s=60, fee_limit_msat=10_000))
        self.payments.append(task)
        return task

    async def close(self) -> None:
        for task in self.payments:
            task.cancel()
        await asyncio.gather(*self.payments, return_exceptions=True)


async def shown(r: Rig, kind: str) -> dict:
    """The hold invoice of ``kind`` once the wall shows it, and check the PNG holds exactly it."""
    invoice = await r.until(lambda: next((i for i in r.invoices(kind) if i["payment_request"]), None),
                            f"the {kind} invoice")
    png = r.daemon.settings.qr_png
    await r.until(lambda: png.exists() and r.daemon._shown_ref == invoice["ref"], f"the {kind} QR code")
    expected = qr.write_png(invoice["payment_request"], png.with_name("expected.png"))
    assert png.read_bytes() == expected.read_bytes()
    return invoice


def test_manual_pay_deposit_held_turns_power_on_and_paying_the_final_returns_the_deposit(tmp_path, logs):
    async def scenario() -> None:
        async with rig(tmp_path, **MANUAL) as r:
            phone = Phone(r.car_lnd)
            r.twc.plug()  # a car without our car daemon: nobody answers the offer
            session_id = await r.session_started()
            deposit = await shown(r, "deposit")
            assert deposit["amount_msat"] == DEPOSIT_MSAT and r.daemon.policy.power is not Power.ON
            deposit_payment = phone.pay(deposit["payment_request"])
            await r.until(lambda: r.twc.drawing_ca > 1000, "power on once the deposit is held")
            assert r.node_state(deposit["r_hash"]) == "ACCEPTED" and not r.daemon.settings.qr_png.exists()
            await r.until(lambda: r.daemon.policy.session.delivered_nj > 2 * NJ_PER_WH, "2 Wh to flow")
            r.twc.unplug()
            final = await shown(r, "final")
            delivered = r.session_row(session_id)["delivered_nj"]
            assert final["amount_msat"] == math.ceil(msat_for_energy(delivered, RATE_SAT_PER_KWH * 1000))
            final_payment = phone.pay(final["payment_request"])
            assert (await asyncio.wait_for(final_payment, WAIT_S)).value_msat == final["amount_msat"]
            with pytest.raises(LightningError):
                await asyncio.wait_for(deposit_payment, WAIT_S)
            await r.until(lambda: [i["state"] for i in r.invoices()] == ["canceled", "settled"],
                          "the deposit canceled and the final settled")
            assert r.ledger.paid_total_msat(session_id) == final["amount_msat"]
            assert r.node_state(deposit["r_hash"]) == "CANCELED" and r.node_state(final["r_hash"]) == "SETTLED"
            assert r.session_row(session_id)["mode"] == "manual"
            await r.until(lambda: not r.daemon.settings.qr_png.exists(), "the QR code to be taken down")
            await phone.close()

    run(scenario())
    qr_lines = [entry for entry in logs if entry["event"] == "manual pay: scan to pay"]
    assert [entry["purpose"] for entry in qr_lines] == ["deposit", "final"]
    assert all("\u2588" in entry["qr"] or "\u2580" in entry["qr"] for entry in qr_lines)


def test_manual_pay_final_invoice_unpaid_by_the_deadline_settles_the_deposit(tmp_path):
    # Blocks of 4 s make the deposit's HTLC window (40 - 6 blocks) 136 s: under 6 s of this test.
    window = {"manual": {**MANUAL["manual"], "block_time_s": 4, "cltv_expiry": 40, "reserve_blocks": 6,
                         "invoice_expiry_s": 60}, "seller": MANUAL["seller"]}

    async def scenario() -> None:
        async with rig(tmp_path, speed=24, **window) as r:
            phone = Phone(r.car_lnd)
            r.twc.plug()
            session_id = await r.session_started()
            deposit = await shown(r, "deposit")
            deposit_payment = phone.pay(deposit["payment_request"])
            await r.until(lambda: r.twc.drawing_ca > 1000, "power on once the deposit is held")
            r.twc.unplug()
            final = await r.until(lambda: next((i for i in r.invoices("final") if i["payment_request"]), None),
                                  "the final invoice")
            status = await asyncio.wait_for(deposit_payment, WAIT_S)
            assert status.value_msat == DEPOSIT_MSAT
            await r.until(lambda: [i["state"] for i in r.invoices()] == ["settled", "canceled"],
                          "the deposit settled and the final canceled")
            assert r.ledger.paid_total_msat(session_id) == DEPOSIT_MSAT
            assert r.node_state(final["r_hash"]) == "CANCELED"
            await phone.close()

    run(scenario())
