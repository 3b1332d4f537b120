"""Scripted parties that cheat, in place of a daemon, for the simulator's hostile scenarios.

Each speaks the real protocols through the real adapters (SWCAN over python-can with
can-isotp, Lightning over TLS to simnet, RS-485 over the pty) but decides to take more
than it gives. They have the daemons' shape (``start``, ``run``, ``stop``) so a world can
run one in a daemon's place.
"""

from __future__ import annotations

import asyncio
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING

import can

from distributedcharge import log
from distributedcharge.lightning.client import LndClient
from distributedcharge.lightning.errors import LightningError
from distributedcharge.sim.stage import CAR_NODE, TWC_AMPS, WALL_NODE, Bus
from distributedcharge.swcan.adapter import Link, SwcanPort
from distributedcharge.swcan.link import CarAccepted, CarLink, InvoiceReceived, OfferReceived, TariffRejected, WallLink
from distributedcharge.swcan.messages import Offer
from distributedcharge.twc.master import MasterSettings, SlaveStateChanged, TwcMaster
from distributedcharge.twc.serial_port import TwcPort
from distributedcharge.units import MSAT_PER_SAT
from wallunit.policy import make_offer

if TYPE_CHECKING:
    from distributedcharge.sim.inprocess import InProcessWorld

_log = log.get("sim.hostile")

# The hostile wall's script, in simulated seconds.
BARRAGE_EVERY_S = 2.0
RAISE_RATE_AFTER_S = 90.0
# Twice the car's default ceiling of 1000 sat/kWh.
RAISED_RATE_MSAT_PER_KWH = 2_000 * MSAT_PER_SAT
OVER_ASK_MULTIPLE = 3
PAY_TIMEOUT_S = 25
FEE_LIMIT_MSAT = 10_000


class _ScriptedParty:
    """The SWCAN port and the Lightning client a scripted wall or car holds."""

    def __init__(self, world: InProcessWorld) -> None:
        self.world = world
        self.port: SwcanPort | None = None
        self.lnd: LndClient | None = None

    async def _connect(self, swcan: Bus, link: Link, node: str, macaroon: Path) -> None:
        self.port = SwcanPort(link, can.Bus(interface=swcan.interface, channel=swcan.channel))
        await self.port.start()
        self.lnd = LndClient(self.world.node_address(node, macaroon.read_bytes()))

    async def stop(self) -> None:
        if self.port is not None:
            port, self.port = self.port, None
            await port.close()
            port.bus.shutdown()
        if self.lnd is not None:
            lnd, self.lnd = self.lnd, None
            await lnd.close()


class HostileWall(_ScriptedParty):
    """Delivers energy honestly through the Wall Connector, but invoices to take more than it
    is worth: an invoice for three payments, the same invoice twice, a fresh invoice every
    two seconds whatever the meter says, and finally a rate twice the car's ceiling."""

    def __init__(self, world: InProcessWorld) -> None:
        super().__init__(world)
        self.offer = make_offer(world.terms.rate_sat_per_kwh * MSAT_PER_SAT, Fraction(world.terms.wh_per_payment))
        self.twc: TwcPort | None = None
        self.sent = 0

    async def start(self) -> None:
        world = self.world
        await self._connect(world.buses.wall_swcan, WallLink(v2=True), WALL_NODE, world.layout.wall_macaroon)
        self.twc = TwcPort(str(world.layout.twc_link), TwcMaster(MasterSettings(wiring_limit_a=TWC_AMPS)),
                           clock=world.clock.monotonic)
        self.twc.set_offer(TWC_AMPS)

    async def run(self) -> None:
        assert self.port is not None and self.twc is not None
        loop = asyncio.get_running_loop()
        plugged = asyncio.Event()
        tasks = [loop.create_task(self.twc.run()), loop.create_task(self._watch_twc(plugged))]
        try:
            await plugged.wait()
            self.port.apply(lambda link, now: link.plugged_in(self.offer, now))
            await self._until(CarAccepted)
            honest = await self._invoice(self.offer.payment_msat, "honest")
            self._send(await self._invoice(OVER_ASK_MULTIPLE * self.offer.payment_msat, "over-asking"))
            self._send(honest)
            self._send(honest)
            accepted_at = self.world.now()
            while self.world.now() - accepted_at < RAISE_RATE_AFTER_S:
                await self.world.sleep(BARRAGE_EVERY_S)
                self._send(await self._invoice(self.offer.payment_msat, "early"))
            raised = Offer(RAISED_RATE_MSAT_PER_KWH, self.offer.payment_msat)
            self.port.apply(lambda link, now: link.change_offer(raised, now))
            await self._until(TariffRejected)
            _log.info("hostile wall: the car refused the raised rate")
            await asyncio.Event().wait()
        finally:
            self.twc.close()
            tasks[1].cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _watch_twc(self, plugged: asyncio.Event) -> None:
        assert self.twc is not None
        while True:
            event = await self.twc.events.get()
            if isinstance(event, SlaveStateChanged) and event.plugged:
                plugged.set()

    async def _until(self, kind: type) -> None:
        assert self.port is not None
        while not isinstance(await self.port.events.get(), kind):
            pass

    async def _invoice(self, amount_msat: int, what: str) -> str:
        assert self.lnd is not None
        added = await self.lnd.add_invoice(amount_msat, f"hostile wall: {what}", 600)
        return added.payment_request

    def _send(self, payment_request: str) -> None:
        assert self.port is not None
        self.port.apply(lambda link, now: link.send_invoice(payment_request, 0))
        self.sent += 1


class HostileCar(_ScriptedParty):
    """Accepts the wall's offer, pays the first ``pay_first`` invoices, then takes energy without paying."""

    def __init__(self, world: InProcessWorld, pay_first: int) -> None:
        super().__init__(world)
        self.pay_first = pay_first
        self.paid = 0

    async def start(self) -> None:
        world = self.world
        await self._connect(world.buses.car_swcan, CarLink(v2=True), CAR_NODE, world.layout.car_macaroon)

    async def run(self) -> None:
        assert self.port is not None and self.lnd is not None
        while True:
            event = await self.port.events.get()
            if isinstance(event, OfferReceived):
                self.port.apply(lambda link, now, offer=event.offer: link.accept(offer))
            elif isinstance(event, InvoiceReceived) and self.paid < self.pay_first:
                try:
                    await self.lnd.pay(event.bolt11, timeout_s=PAY_TIMEOUT_S, fee_limit_msat=FEE_LIMIT_MSAT)
                except LightningError as exc:
                    _log.warning("hostile car: payment failed", reason=str(exc))
                    continue
                self.paid += 1

