"""The whole installation in this process, on one scaled clock.

simnet serves both nodes over TLS on 127.0.0.1; the plant runs in a thread of its own
with the TWC slave on a real pty and the Model 3 on a python-can ``virtual`` bus; SWCAN
is another ``virtual`` bus; both daemons are built from the TOML files written into the
state directory, exactly as ``distributedcharge car|wallunit --config`` would build them,
but share a :class:`~distributedcharge.clock.ScaledClock` so a session plays ``speed``
times faster than real time. Either daemon may be replaced by a scripted role (a hostile
wall or car), built by a factory that gets this world.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import secrets
import threading
import time
from datetime import datetime, timedelta, timezone
from fractions import Fraction
from pathlib import Path
from typing import Any, Callable, TextIO

import can
import structlog

from distributedcharge import config, log
from distributedcharge.clock import ScaledClock
from distributedcharge.daemon import Daemon
from distributedcharge.lightning import macaroons
from distributedcharge.lightning.node import NodeAddress
from distributedcharge.sim.plant_runner import PlantRunner, PlantStatus, build_runner, open_vehicle_bus
from distributedcharge.sim import stage
from distributedcharge.sim.stage import (
    CAR_NODE, CAR_PERMISSIONS, WALL_NODE, WALL_PERMISSIONS, Bus, Buses, Layout, Terms, write_car_config,
    write_wall_config,
)
from distributedcharge.sim.world import Live, books_of, error_lines, live_from_books
from distributedcharge.simnet.server import Simnet
from distributedcharge.units import NJ_PER_WH

RoleFactory = Callable[["InProcessWorld"], Daemon]

LOG_FILE = "simulation.log"
PTY_WAIT_S = 5.0


class InProcessWorld:
    mode = "in-process"

    def __init__(self, layout: Layout, terms: Terms, *, speed: float = 10.0, car_hears_wall: bool = True,
                 wall_role: RoleFactory | None = None, car_role: RoleFactory | None = None,
                 car_swcan: dict[str, object] | None = None) -> None:
        self.layout = layout
        self.terms = terms
        self.speed = speed
        self.clock = ScaledClock(speed)
        suffix = secrets.token_hex(4)
        swcan = Bus("virtual", f"dc-swcan-{suffix}")
        self.buses = Buses(swcan, swcan if car_hears_wall else Bus("virtual", f"dc-swcan-unwired-{suffix}"),
                           Bus("virtual", f"dc-vehicle-{suffix}"))
        self.simnet: Simnet | None = None
        self.runner: PlantRunner | None = None
        self.roles: dict[str, Daemon] = {}
        self._factories = {"wallunit": wall_role, "car": car_role}
        self._car_swcan = car_swcan
        self._tasks: dict[str, asyncio.Task] = {}
        self._crashes: list[str] = []
        self._stop_plant = threading.Event()
        self._plant_thread: threading.Thread | None = None
        self._vehicle_bus: can.BusABC | None = None
        self._log_stream: TextIO | None = None
        self._saved_logging: tuple[dict, list[logging.Handler], int] | None = None
        self._t0 = self.clock.monotonic()
        self._started_at = datetime.now(timezone.utc)

    # -- lifecycle ---------------------------------------------------------------------------------

    async def start(self) -> None:
        try:
            await self._start()
        except BaseException:
            await self.stop()
            raise

    async def _start(self) -> None:
        self.layout.create()
        self._log_stream = open(self.layout.logs / LOG_FILE, "a", buffering=1)
        # Every component logs into one file, as the daemons would to journald; what the
        # caller had configured comes back at stop.
        self._saved_logging = (structlog.get_config(), logging.root.handlers[:], logging.root.level)
        log.configure("info", stream=self._log_stream, json=True)
        # python-can, can-isotp and grpc log through the standard library.
        logging.basicConfig(stream=self._log_stream, level=logging.WARNING, force=True)
        self.simnet = Simnet(self.layout.simnet_dir, control_socket=False,
                             fee_base_msat=stage.ROUTING_FEE_BASE_MSAT, fee_ppm=stage.ROUTING_FEE_PPM)
        await self.simnet.start()
        self._bake(CAR_NODE, CAR_PERMISSIONS, self.layout.car_macaroon)
        self._bake(WALL_NODE, WALL_PERMISSIONS, self.layout.wall_macaroon)
        write_wall_config(self.layout, self.buses, self.simnet.node(WALL_NODE).port, self.terms)
        write_car_config(self.layout, self.buses, self.simnet.node(CAR_NODE).port, self._car_swcan)
        self._start_plant()
        await self._wait_for_pty()
        for name in ("wallunit", "car"):
            await self._start_role(name)

    def _bake(self, node: str, permissions: tuple[tuple[str, str], ...], path: Path) -> None:
        assert self.simnet is not None and self.simnet.state is not None
        raw = macaroons.bake(self.simnet.state.root_key(node, "0"), list(permissions))
        path.write_bytes(raw)
        path.chmod(0o600)

    def _start_plant(self) -> None:
        vehicle = self.buses.vehicle
        self._vehicle_bus = open_vehicle_bus(vehicle.interface, vehicle.channel)
        self.runner = build_runner(str(self.layout.twc_link), self._vehicle_bus, clock=self.clock.monotonic,
                                   speed=self.speed)
        self._plant_thread = threading.Thread(target=self.runner.run, args=(self._stop_plant,), name="plant",
                                              daemon=True)
        self._plant_thread.start()

    async def _wait_for_pty(self) -> None:
        deadline = time.monotonic() + PTY_WAIT_S
        while not self.layout.twc_link.is_symlink():
            if time.monotonic() > deadline:
                raise RuntimeError(f"the plant did not create its TWC pty at {self.layout.twc_link}")
            await asyncio.sleep(0.01)

    async def _start_role(self, name: str) -> None:
        factory = self._factories[name]
        if factory is None:
            path = self.layout.wall_config if name == "wallunit" else self.layout.car_config
            _, cfg = config.load(path, name)
            role = importlib.import_module(f"{name}.daemon").build(cfg, self.clock)
        else:
            role = factory(self)
        await role.start()
        self.roles[name] = role
        task = asyncio.get_running_loop().create_task(role.run(), name=name)
        task.add_done_callback(lambda done, name=name: self._ended(name, done))
        self._tasks[name] = task

    def _ended(self, name: str, task: asyncio.Task) -> None:
        if not task.cancelled() and task.exception() is not None:
            error = task.exception()
            self._crashes.append(f"{name}: stopped by {type(error).__name__}: {error}")

    async def stop(self) -> None:
        for task in self._tasks.values():
            task.cancel()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)
        for name in ("car", "wallunit"):
            role = self.roles.pop(name, None)
            if role is not None:
                try:
                    await role.stop()
                except Exception as exc:  # a failing stop must not keep the others running
                    self._crashes.append(f"{name}: stop failed: {type(exc).__name__}: {exc}")
        self._stop_plant.set()
        if self._plant_thread is not None:
            await asyncio.to_thread(self._plant_thread.join, 5.0)
        if self._vehicle_bus is not None:
            self._vehicle_bus.shutdown()
            self._vehicle_bus = None
        if self.simnet is not None:
            await self.simnet.stop()
            self.simnet = None
        if self._saved_logging is not None:
            saved_structlog, handlers, level = self._saved_logging
            structlog.configure(**saved_structlog)
            logging.root.handlers[:] = handlers
            logging.root.setLevel(level)
            self._saved_logging = None
        if self._log_stream is not None:
            self._log_stream.close()
            self._log_stream = None

    # -- time and controls -------------------------------------------------------------------------

    def now(self) -> float:
        return self.clock.monotonic() - self._t0

    def seller_now(self) -> datetime:
        wall = self.roles.get("wallunit")
        policy_now = getattr(wall, "policy_now", None)
        if policy_now is not None:
            return policy_now()
        # A scripted wall keeps no tariff clock; the simulated time since start stands in.
        return self._started_at + timedelta(seconds=self.now())

    async def sleep(self, seconds: float) -> None:
        await self.clock.sleep(seconds)

    def plant_command(self, name: str) -> None:
        assert self.runner is not None
        self.runner.command(name)

    def plant_status(self) -> PlantStatus | None:
        return self.runner.status if self.runner is not None else None

    async def set_node_online(self, node: str, online: bool) -> None:
        assert self.simnet is not None
        if online:
            await self.simnet.node(node).go_online()
        else:
            await self.simnet.node(node).go_offline()

    def node_address(self, node: str, macaroon: bytes) -> NodeAddress:
        assert self.simnet is not None
        address = self.simnet.node(node).address
        return NodeAddress(address.host, address.port, address.tls_cert_pem, macaroon)

    # -- what the player reads ---------------------------------------------------------------------

    def live(self) -> Live:
        plant = self.plant_status()
        sample = live_from_books(self.now(), plant, books_of(self.layout))
        wall, car = self.roles.get("wallunit"), self.roles.get("car")
        wall_wh = sample.wall_wh
        credit = sample.credit_wh
        exposure = None
        power_on = None
        rate = sample.rate_msat_per_kwh
        session = getattr(getattr(wall, "policy", None), "session", None)
        if session is not None:
            # The seller's own books, live: the ledger only records the meter every 10 s.
            wall_wh = Fraction(session.delivered_nj, NJ_PER_WH)
            credit = wall.policy.credit_nj / NJ_PER_WH
            exposure = wall.policy.exposure_msat
            offer: Any = session.accepted or session.offer
            rate = offer.rate_msat_per_kwh
            power_on = wall.policy.power.value == "on"
        car_wh = sample.car_wh
        car_session = getattr(car, "session", None)
        if car_session is not None:
            car_wh = Fraction(car.meter.energy_nj - car_session.baseline_nj, NJ_PER_WH)
        return Live(sample.at_s, plant, wall_wh, car_wh, sample.paid_msat, sample.received_msat, rate, credit,
                    exposure, power_on)

    def errors(self) -> list[str]:
        return self._crashes + error_lines(self.layout.logs / LOG_FILE)
