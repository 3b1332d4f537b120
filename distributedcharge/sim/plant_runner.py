"""The simulated plant on real links: the Wall Connector on a pty, the Model 3 on a CAN bus.

:class:`PlantRunner` owns one :class:`~distributedcharge.sim.plant.Plant`, the TWC slave
that measures it for the wall and the Model 3 emitter that reports it to the car, and
serves them from one thread so the physics has a single owner. Commands (plug, unplug,
take the RS-485 adapter away and give it back) arrive through :meth:`PlantRunner.command`
from any thread; the latest :class:`PlantStatus` is always in :attr:`PlantRunner.status`.

Run as a process (``python -m distributedcharge.sim.plant_runner``) it is the plant of
``distributedcharge simulate --processes``: commands are lines on stdin, status is one
JSON object per line on stdout, and end of stdin ends the plant, so it never outlives
the simulator that started it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import queue
import selectors
import signal
import sys
import threading
import time
from dataclasses import dataclass
from fractions import Fraction
from typing import Callable

import can

from distributedcharge import log
from distributedcharge.sim.model3 import DEFAULT_PCS_PAGES, Model3Emitter
from distributedcharge.sim.plant import Plant, PlantSettings
from distributedcharge.sim.twc_slave import SlaveConfig, TwcSlave
from distributedcharge.sim.twcsim_cli import PtyLink
from distributedcharge.vehicle.signals import PCS_PAGE_CHARGER_LINE_VOLTAGES, PCS_PAGE_CHARGER_PHASE_MANAGER

_log = log.get("sim.plant")

POLL_S = 0.005
# A stalled plant thread sends the frames it owes, each stamped with its own moment, as a
# real car's bus would have carried them; a stall longer than this is a silent bus instead.
CATCH_UP_LIMIT_S = 30.0
# Interfaces that carry a sender's timestamp through to the receivers when asked to.
TIMESTAMP_PRESERVING_INTERFACES = ("virtual", "remote")
COMMANDS = ("plug", "unplug", "serial-off", "serial-on")
# The car meters from two 0x2C4 pages. With every page in the cycle, each comes round once a
# second of car time only while the loop keeps up with the 100 ms frame period; past this
# speed-up the loop would fall behind and the car's meter would see gaps, so only the two
# metered pages are sent.
FULL_PAGE_CYCLE_MAX_SPEED = 20
METERED_PAGES = (PCS_PAGE_CHARGER_LINE_VOLTAGES, PCS_PAGE_CHARGER_PHASE_MANAGER)


def pcs_pages_for(speed: float) -> tuple[int, ...]:
    return DEFAULT_PCS_PAGES if speed <= FULL_PAGE_CYCLE_MAX_SPEED else METERED_PAGES


@dataclass(frozen=True)
class PlantStatus:
    """The plant and the Wall Connector as they stand, in exact units."""

    at: float
    plugged: bool
    amps: Fraction
    volts: Fraction
    soc_percent: Fraction
    energy_nj: Fraction
    interruptions: int
    twc_state: int
    twc_linked: bool
    offered_centiamps: int
    serial_connected: bool
    frames_sent: int

    def to_json(self) -> dict:
        row = dataclasses.asdict(self)
        for key, value in row.items():
            if isinstance(value, Fraction):
                row[key] = f"{value.numerator}/{value.denominator}"
        return row

    @classmethod
    def from_json(cls, row: dict) -> PlantStatus:
        fields = {f.name for f in dataclasses.fields(cls)}
        if set(row) != fields:
            raise ValueError(f"plant status fields {sorted(row)} are not {sorted(fields)}")
        values = dict(row)
        for key in ("amps", "volts", "soc_percent", "energy_nj"):
            values[key] = Fraction(values[key])
        return cls(**values)


class PlantRunner:
    def __init__(
        self,
        plant: Plant,
        slave: TwcSlave,
        emitter: Model3Emitter,
        pty: PtyLink,
        vehicle_bus: can.BusABC,
        clock: Callable[[], float] = time.monotonic,
        poll_s: float = POLL_S,
        speed: float = 1.0,
    ) -> None:
        if slave.load is not plant:
            raise ValueError("the TWC slave must measure this plant")
        self.plant = plant
        self.slave = slave
        self.emitter = emitter
        self.pty = pty
        self.vehicle_bus = vehicle_bus
        self.clock = clock
        self.poll_s = poll_s
        self.speed = speed
        self.frames_sent = 0
        self._commands: queue.SimpleQueue[str] = queue.SimpleQueue()
        self._serial_connected = False
        self._send_failures = 0
        self.status = self._status(clock())

    def command(self, name: str) -> None:
        """Queue ``plug``, ``unplug``, ``serial-off`` or ``serial-on``; safe from any thread."""
        if name not in COMMANDS:
            raise ValueError(f"unknown plant command {name!r}; choose one of {', '.join(COMMANDS)}")
        self._commands.put(name)

    def run(self, stop: threading.Event) -> None:
        """Serve until ``stop`` is set. Opens the pty first; closes it on the way out."""
        selector = self._connect_serial()
        try:
            while not stop.is_set():
                received = [key.data.on_readable(key.fileobj) for key, _ in selector.select(self.poll_s)] \
                    if selector else []
                if selector is None:
                    time.sleep(self.poll_s)
                now, wall_now = self.clock(), time.time()
                # Before anything moves the plant on to now: the frames owed are built at their own moments.
                self._send_vehicle_frames(now, wall_now)
                for data in received:
                    if data:
                        self.slave.receive(data, now)
                selector = self._apply_commands(now, selector)
                self._step(now)
        finally:
            if selector is not None:
                selector.close()
            if self._serial_connected:
                self.pty.close()
                self._serial_connected = False

    def _connect_serial(self) -> selectors.BaseSelector:
        self.pty.open()
        self._serial_connected = True
        selector = selectors.DefaultSelector()
        self.pty.register(selector)
        return selector

    def _apply_commands(self, now: float, selector: selectors.BaseSelector | None) -> selectors.BaseSelector | None:
        while True:
            try:
                name = self._commands.get_nowait()
            except queue.Empty:
                return selector
            _log.info("plant_command", command=name)
            if name == "plug" and not self.plant.plugged:
                self.slave.plug(now)
            elif name == "unplug" and self.plant.plugged:
                self.slave.unplug(now)
            elif name == "serial-off" and selector is not None:
                selector.close()
                selector = None
                self.pty.close()
                self._serial_connected = False
            elif name == "serial-on" and selector is None:
                selector = self._connect_serial()

    def _step(self, now: float) -> None:
        volts = (self.plant.wall_volts(), 0, 0)
        if self.slave.config.volts != volts:
            # The Wall Connector reports the supply it sits on; the slave's config is its instrument.
            self.slave.config = dataclasses.replace(self.slave.config, volts=volts)
        self.slave.tick(now)
        outgoing = self.slave.bytes_to_send()
        if outgoing and self._serial_connected:
            self.pty.write(outgoing)
        self.status = self._status(now)

    def _send_vehicle_frames(self, now: float, wall_now: float) -> None:
        """Every frame due by ``now``, each from the plant at its due moment and stamped with
        that moment on the wall clock python-can stamps with (``wall_now`` is ``now`` on it)."""
        while True:
            due = self.emitter.next_due()
            if due is None or now - due > CATCH_UP_LIMIT_S:
                due = now
            elif due > now:
                return
            stamp = wall_now - (now - due) / self.speed
            for frame_id, data in self.emitter.frames_at(due, self.plant.model3_state(due)):
                self._send(can.Message(timestamp=stamp, arbitration_id=frame_id, data=data, is_extended_id=False))

    def _send(self, message: can.Message) -> None:
        try:
            self.vehicle_bus.send(message)
        except can.CanError as exc:
            self._send_failures += 1
            if self._send_failures == 1 or self._send_failures % 1000 == 0:
                _log.warning("plant_vehicle_frame_not_sent", error=str(exc), failures=self._send_failures)
            return
        self.frames_sent += 1

    def _status(self, now: float) -> PlantStatus:
        snap = self.plant.snapshot(now)
        return PlantStatus(
            at=now, plugged=snap.plugged, amps=snap.amps, volts=snap.volts, soc_percent=snap.soc_percent,
            energy_nj=snap.energy_nj, interruptions=snap.interruptions, twc_state=self.slave.state,
            twc_linked=self.slave.linked, offered_centiamps=self.slave.offered_centiamps,
            serial_connected=self._serial_connected, frames_sent=self.frames_sent,
        )


def build_runner(
    pty_path: str,
    vehicle_bus: can.BusABC,
    *,
    clock: Callable[[], float] = time.monotonic,
    speed: float = 1.0,
    settings: PlantSettings | None = None,
    max_amps: int = 48,
    plugged: bool = False,
) -> PlantRunner:
    """A plant behind a 230 V single-phase Wall Connector (firmware 4.5.3, protocol 2)."""
    now = clock()
    plant = Plant(settings, plugged=plugged, now=now)
    slave = TwcSlave(SlaveConfig(max_centiamps=max_amps * 100, volts=(plant.wall_volts(), 0, 0)), plant)
    emitter = Model3Emitter("2025", pcs_pages=pcs_pages_for(speed))
    return PlantRunner(plant, slave, emitter, PtyLink(pty_path), vehicle_bus, clock, speed=speed)


def open_vehicle_bus(interface: str, channel: str) -> can.BusABC:
    """The plant's side of the vehicle bus, keeping the frames' own timestamps where the
    interface can, so a stall of the simulator is not a gap on the car's bus."""
    extra = {"preserve_timestamps": True} if interface in TIMESTAMP_PRESERVING_INTERFACES else {}
    return can.Bus(interface=interface, channel=channel, **extra)


# -- the plant as a process -------------------------------------------------------------------

def _read_commands(runner: PlantRunner, stop: threading.Event) -> None:
    for line in sys.stdin:
        name = line.strip()
        if not name:
            continue
        try:
            runner.command(name)
        except ValueError as exc:
            _log.warning("plant_bad_command", reason=str(exc))
    stop.set()


def _report_status(runner: PlantRunner, stop: threading.Event, interval_s: float) -> None:
    while not stop.wait(interval_s):
        try:
            print(json.dumps(runner.status.to_json()), flush=True)
        except (BrokenPipeError, ValueError):
            stop.set()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m distributedcharge.sim.plant_runner",
                                     description="the simulated plant of 'distributedcharge simulate --processes'")
    parser.add_argument("--pty-link", required=True, metavar="PATH", help="symlink to the TWC's pty")
    parser.add_argument("--vehicle-interface", default="remote", help="python-can interface of the vehicle bus")
    parser.add_argument("--vehicle-channel", required=True, help="e.g. 127.0.0.1:54701 for remote")
    parser.add_argument("--max-amps", type=int, default=48, help="the Wall Connector's rating")
    parser.add_argument("--start-soc", type=int, default=40, help="state of charge at start, %%")
    parser.add_argument("--status-interval", type=float, default=0.25, help="seconds between status lines")
    parser.add_argument("--log-level", default="warning", choices=("debug", "info", "warning", "error"))
    args = parser.parse_args(argv)
    log.configure(args.log_level, stream=sys.stderr)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())
    signal.signal(signal.SIGINT, lambda signum, frame: stop.set())
    try:
        bus = open_vehicle_bus(args.vehicle_interface, args.vehicle_channel)
    except (can.CanError, OSError, ValueError) as exc:
        _log.error("plant_vehicle_bus_failed", reason=str(exc))
        return 1
    try:
        runner = build_runner(args.pty_link, bus, settings=PlantSettings(start_soc_percent=Fraction(args.start_soc)),
                              max_amps=args.max_amps)
        for target, name in ((_read_commands, "plant-commands"), (_report_status, "plant-status")):
            extra = (args.status_interval,) if target is _report_status else ()
            threading.Thread(target=target, args=(runner, stop, *extra), name=name, daemon=True).start()
        runner.run(stop)
    except OSError as exc:
        _log.error("plant_failed", reason=str(exc))
        return 1
    finally:
        bus.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
