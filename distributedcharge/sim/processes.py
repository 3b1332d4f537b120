"""The installation as separate OS processes, talking as they would in production.

* simnet: ``distributedcharge simnet --state-dir DIR`` (TLS, macaroons, control socket);
* two python-can-remote servers, ``python -m can_remote -i virtual -c NAME -H 127.0.0.1``,
  one the charge port's SWCAN, one the car's own CAN bus;
* the plant: ``python -m distributedcharge.sim.plant_runner`` with the TWC slave on a pty
  and the Model 3 on the vehicle CAN server; commands on its stdin, status on its stdout;
* the daemons: ``distributedcharge wallunit|car --config FILE``, with macaroons baked by
  ``distributedcharge simnet bake`` as an owner would bake them with ``lncli``.

Everything listens on 127.0.0.1 only. Time is real: the daemons run their production
clock. Each child is started through :mod:`distributedcharge.sim.die_with_parent`, so it
dies with its parent, and is terminated, then killed, when the world stops, also after Ctrl-C. :meth:`ProcessWorld.kill`
and :meth:`ProcessWorld.restart` are what the kill -9 tests use.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import IO

from distributedcharge.sim.plant_runner import PlantStatus
from distributedcharge.sim import stage
from distributedcharge.sim.stage import (
    CAR_NODE, CAR_PERMISSIONS, WALL_NODE, WALL_PERMISSIONS, Bus, Buses, Layout, Terms, write_car_config,
    write_wall_config,
)
from distributedcharge.sim.world import Live, books_of, error_lines, live_from_books
from distributedcharge.simnet import control

HOST = "127.0.0.1"
READY_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0
DAEMONS = ("wallunit", "car")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        return probe.getsockname()[1]


def _wait_for_port(port: int, child: subprocess.Popen, name: str) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if child.poll() is not None:
            raise RuntimeError(f"{name} exited with status {child.returncode} before listening on {port}")
        try:
            with socket.create_connection((HOST, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{name} did not listen on {HOST}:{port} within {READY_TIMEOUT_S:g} s")


class ProcessWorld:
    mode = "processes"

    def __init__(self, layout: Layout, terms: Terms, *, car_hears_wall: bool = True,
                 python: str = sys.executable) -> None:
        self.layout = layout
        self.terms = terms
        self.car_hears_wall = car_hears_wall
        self.python = python
        self.children: dict[str, subprocess.Popen] = {}
        self.exits: list[str] = []
        self._expected_exit: set[str] = set()
        self._logs: list[IO] = []
        self._plant_status: PlantStatus | None = None
        self._ports: dict[str, int] = {}
        self.buses: Buses | None = None
        self._t0 = time.monotonic()

    # -- lifecycle ---------------------------------------------------------------------------------

    async def start(self) -> None:
        await asyncio.to_thread(self.launch)

    async def stop(self) -> None:
        await asyncio.to_thread(self.shutdown)

    def launch(self) -> None:
        """Start everything and return once the daemons are running; on failure stop what started."""
        try:
            self._launch()
        except BaseException:
            self.shutdown()
            raise

    def _launch(self) -> None:
        self.layout.create()
        self._start_simnet()
        for node, permissions, path in ((CAR_NODE, CAR_PERMISSIONS, self.layout.car_macaroon),
                                        (WALL_NODE, WALL_PERMISSIONS, self.layout.wall_macaroon)):
            self._bake(node, permissions, path)
        swcan = self._start_can_server("swcan")
        car_swcan = swcan if self.car_hears_wall else self._start_can_server("swcan-unwired")
        vehicle = self._start_can_server("vehicle")
        self.buses = Buses(swcan, car_swcan, vehicle)
        write_wall_config(self.layout, self.buses, self._ports[WALL_NODE], self.terms)
        write_car_config(self.layout, self.buses, self._ports[CAR_NODE])
        self._start_plant(vehicle)
        for name in DAEMONS:
            self.start_daemon(name)

    def _spawn(self, name: str, argv: list[str], *, stdin: int | None = subprocess.DEVNULL,
               stdout: int | IO | None = None) -> subprocess.Popen:
        log_file = open(self.layout.logs / f"{name}.log", "ab")
        self._logs.append(log_file)
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        # A simulator killed with -9 leaves nothing behind.
        guarded = [self.python, "-m", "distributedcharge.sim.die_with_parent", str(os.getpid()), *argv]
        child = subprocess.Popen(guarded, stdin=stdin, stdout=log_file if stdout is None else stdout,
                                 stderr=log_file, env=env, cwd=self.layout.root)
        self.children[name] = child
        self._expected_exit.discard(name)
        return child

    def _cli(self, *args: str) -> list[str]:
        return [self.python, "-m", "distributedcharge", *args]

    def _start_simnet(self) -> None:
        child = self._spawn("simnet", self._cli("simnet", "--state-dir", str(self.layout.simnet_dir),
                                                "--fee-base-msat", str(stage.ROUTING_FEE_BASE_MSAT),
                                                "--fee-ppm", str(stage.ROUTING_FEE_PPM),
                                                "--log-level", "info"), stdout=subprocess.PIPE)
        assert child.stdout is not None
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            line = child.stdout.readline().decode(errors="replace")
            if not line:
                raise RuntimeError(f"simnet exited with status {child.wait()} before it was ready "
                                   f"(see {self.layout.logs / 'simnet.log'})")
            if line.startswith("simnet ready"):
                break
            name, address, *_ = line.split()
            self._ports[name] = int(address.rpartition(":")[2])
        else:
            raise RuntimeError(f"simnet not ready within {READY_TIMEOUT_S:g} s")
        # Nothing more is printed; reading keeps the pipe from filling all the same.
        threading.Thread(target=child.stdout.read, name="simnet-stdout", daemon=True).start()

    def _bake(self, node: str, permissions: tuple[tuple[str, str], ...], path: Path) -> None:
        argv = self._cli("simnet", "bake", "--state-dir", str(self.layout.simnet_dir), "--node", node,
                         *(f"{entity}:{action}" for entity, action in permissions), "--save-to", str(path))
        done = subprocess.run(argv, capture_output=True, text=True, timeout=READY_TIMEOUT_S)
        if done.returncode != 0:
            raise RuntimeError(f"baking the {node} macaroon failed: {done.stderr.strip()}")

    def _start_can_server(self, channel: str) -> Bus:
        port = free_port()
        child = self._spawn(f"can-{channel}", [self.python, "-m", "can_remote", "-i", "virtual", "-c", channel,
                                               "-H", HOST, "-p", str(port)])
        _wait_for_port(port, child, f"the {channel} CAN server")
        return Bus("remote", f"{HOST}:{port}")

    def _start_plant(self, vehicle: Bus) -> None:
        child = self._spawn("plant", [self.python, "-m", "distributedcharge.sim.plant_runner",
                                      "--pty-link", str(self.layout.twc_link), "--vehicle-interface",
                                      vehicle.interface, "--vehicle-channel", vehicle.channel],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        threading.Thread(target=self._read_plant, args=(child,), name="plant-status", daemon=True).start()
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not self.layout.twc_link.is_symlink():
            if child.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the plant did not open its pty (see {self.layout.logs / 'plant.log'})")
            time.sleep(0.02)

    def _read_plant(self, child: subprocess.Popen) -> None:
        assert child.stdout is not None
        for line in child.stdout:
            try:
                self._plant_status = PlantStatus.from_json(json.loads(line))
            except (ValueError, TypeError):
                continue

    def start_daemon(self, name: str) -> None:
        path = self.layout.wall_config if name == "wallunit" else self.layout.car_config
        self._spawn(name, self._cli(name, "--config", str(path)))

    def kill(self, name: str) -> None:
        """kill -9, as a power cut or the OOM killer would."""
        child = self.children[name]
        self._expected_exit.add(name)
        child.send_signal(signal.SIGKILL)
        child.wait()

    def restart(self, name: str) -> None:
        self.start_daemon(name)

    def stop_daemon(self, name: str) -> None:
        """SIGTERM, as systemd stops it: the daemon closes its books and exits 0."""
        self._stop_child(name)

    def shutdown(self) -> None:
        # The car first, so no payment starts while the wall is going; then the wall, while
        # simnet still answers both.
        order = [name for name in ("car", "wallunit") if name in self.children]
        order += [name for name in self.children if name not in order and name != "simnet"]
        order += ["simnet"] if "simnet" in self.children else []
        for name in order:
            self._stop_child(name)
        self.children.clear()
        for log_file in self._logs:
            log_file.close()
        self._logs.clear()

    def _stop_child(self, name: str) -> None:
        child = self.children[name]
        if child.poll() is None:
            self._expected_exit.add(name)
            if name == "plant" and child.stdin is not None:
                child.stdin.close()
            else:
                child.send_signal(signal.SIGTERM)
            try:
                child.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.exits.append(f"{name}: did not stop within {STOP_TIMEOUT_S:g} s of SIGTERM; killed")
                child.kill()
                child.wait()
                return
            if name in DAEMONS and child.returncode != 0:
                self.exits.append(f"{name}: stopped with status {child.returncode}")
        elif name not in self._expected_exit:
            self.exits.append(f"{name}: exited on its own with status {child.returncode}")

    # -- time and controls -------------------------------------------------------------------------

    def now(self) -> float:
        return time.monotonic() - self._t0

    def seller_now(self) -> datetime:
        return datetime.now(timezone.utc)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    def plant_command(self, name: str) -> None:
        stdin = self.children["plant"].stdin
        assert stdin is not None
        stdin.write(name.encode() + b"\n")
        stdin.flush()

    def plant_status(self) -> PlantStatus | None:
        return self._plant_status

    async def set_node_online(self, node: str, online: bool) -> None:
        await asyncio.to_thread(self.control_node, {"command": "online" if online else "offline", "node": node})

    def control_node(self, request: dict) -> None:
        """One request to simnet's control socket (offline, online, latency, fail-payments)."""
        answer = control.send(self.layout.simnet_dir, request)
        if not answer.get("ok"):
            raise RuntimeError(f"simnet refused {request}: {answer.get('error')}")

    # -- what the player reads ---------------------------------------------------------------------

    def live(self) -> Live:
        return live_from_books(self.now(), self._plant_status, books_of(self.layout))

    def errors(self) -> list[str]:
        found = list(self.exits)
        for name in DAEMONS:
            path = self.layout.logs / f"{name}.log"
            found += error_lines(path)
            if path.exists() and "Traceback" in path.read_text(errors="replace"):
                found.append(f"{name}: a traceback in {path}")
        return found
