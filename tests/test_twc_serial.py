"""The serial adapter and master against the slave simulator over a real pty and TCP."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
import structlog

from distributedcharge.config import ConfigError, validate
from distributedcharge.sim.twc_slave import SimpleCar, SlaveConfig, TwcSlave
from distributedcharge.sim.twcsim_cli import PtyLink, TcpLink, run_slave
from distributedcharge.twc.master import (
    MasterSettings,
    Reading,
    SlaveLinked,
    SlaveLost,
    SlaveStateChanged,
    StopResult,
    TwcMaster,
)
from distributedcharge.twc.serial_port import TWC_FIELDS, PortDown, PortUp, TwcPort, settings_from_config

FAST_SLAVE = SlaveConfig(slave_id=0x1234, sign=0x21, starting_duration=0.5)


@pytest.fixture(autouse=True)
def default_logging():
    """Another test may leave structlog writing to a stream pytest has since closed."""
    structlog.reset_defaults()


def fast_slave() -> TwcSlave:
    return TwcSlave(FAST_SLAVE, SimpleCar(ramp_centiamps_per_s=5_000), random.Random(5))


@contextmanager
def serving(slave: TwcSlave, link):
    link.open()
    stop = threading.Event()
    thread = threading.Thread(target=run_slave, args=(slave, link, stop), daemon=True)
    thread.start()
    try:
        yield link
    finally:
        stop.set()
        thread.join(5)
        link.close()


class Clock:
    """Monotonic time that a test can move forward for the master alone."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.monotonic() + self.offset


async def expect(port: TwcPort, predicate, timeout: float = 5.0):
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        remaining = deadline - asyncio.get_running_loop().time()
        if remaining <= 0:
            raise AssertionError("expected event did not arrive in time")
        event = await asyncio.wait_for(port.events.get(), remaining)
        if predicate(event):
            return event


def run_port(url: str, scenario, clock=time.monotonic) -> None:
    async def main() -> None:
        master = TwcMaster(MasterSettings(wiring_limit_a=32), random.Random(9))
        port = TwcPort(url, master, clock=clock, reopen_delays=(0.2, 0.4))
        task = asyncio.create_task(port.run())
        try:
            await scenario(port)
        finally:
            port.close()
            await asyncio.wait_for(task, 5)

    asyncio.run(main())


def test_master_links_sets_current_and_confirms_a_stop_over_a_pty(tmp_path):
    slave = fast_slave()

    async def scenario(port: TwcPort) -> None:
        await expect(port, lambda e: isinstance(e, PortUp))
        linked = await expect(port, lambda e: isinstance(e, SlaveLinked))
        assert linked == SlaveLinked(0x1234, 2, 32, (4, 5, 3))
        port.set_offer(16)
        await expect(port, lambda e: isinstance(e, Reading) and e.actual_centiamps > 1500)
        assert slave.offered_centiamps == 1600
        port.set_offer(20)
        await expect(port, lambda e: isinstance(e, Reading) and e.offered_amps == 20)
        assert slave.offered_centiamps == 2000
        port.stop_charging()
        result = await expect(port, lambda e: isinstance(e, StopResult))
        assert result.confirmed and result.actual_centiamps == 0
        assert not slave.relay_closed

    with serving(slave, PtyLink(tmp_path / "twc")):
        run_port(str(tmp_path / "twc"), scenario)


def test_port_survives_unplug_and_the_master_keeps_time_meanwhile(tmp_path):
    path = tmp_path / "ttyTWC"
    slave = fast_slave()
    clock = Clock()
    outage = {}

    async def scenario(port: TwcPort) -> None:
        await expect(port, lambda e: isinstance(e, SlaveLinked))
        port.set_offer(16)
        await expect(port, lambda e: isinstance(e, Reading) and e.actual_centiamps > 1500)
        outage["unplug"].set()
        down = await expect(port, lambda e: isinstance(e, PortDown))
        assert "read failed" in down.reason
        clock.offset += 27
        assert await expect(port, lambda e: isinstance(e, SlaveLost)) == SlaveLost(0x1234, "no reply for 26 s")
        await asyncio.sleep(1.0)
        assert not port.connected
        outage["replug"].set()
        await expect(port, lambda e: isinstance(e, PortUp), timeout=5)
        await expect(port, lambda e: isinstance(e, SlaveLinked))
        await expect(port, lambda e: isinstance(e, Reading) and e.actual_centiamps > 1500, timeout=8)

    outage["unplug"], outage["replug"] = threading.Event(), threading.Event()

    def adapter_comes_and_goes() -> None:
        with serving(slave, PtyLink(path)):
            outage["unplug"].wait(15)
        outage["replug"].wait(30)
        slave.restart(time.monotonic())
        with serving(slave, PtyLink(path)):
            outage["done"].wait(30)

    outage["done"] = threading.Event()
    hardware = threading.Thread(target=adapter_comes_and_goes, daemon=True)
    hardware.start()
    while not path.exists():
        time.sleep(0.01)
    try:
        run_port(str(path), scenario, clock)
    finally:
        outage["unplug"].set()
        outage["replug"].set()
        outage["done"].set()
        hardware.join(10)


def test_master_links_over_a_pyserial_socket_url():
    slave = fast_slave()
    link = TcpLink(0)

    async def scenario(port: TwcPort) -> None:
        await expect(port, lambda e: isinstance(e, SlaveLinked))
        port.set_offer(10)
        await expect(port, lambda e: isinstance(e, Reading) and e.offered_amps == 10)

    with serving(slave, link):
        run_port(f"socket://127.0.0.1:{link.port}", scenario)
    assert slave.offered_centiamps == 1000


def test_twcsim_command_serves_a_pty_and_plugs_on_signals(tmp_path):
    path = tmp_path / "twc"
    process = subprocess.Popen(
        [sys.executable, "-m", "distributedcharge", "twcsim", "--pty-link", str(path), "--max-amps", "80",
         "--voltage", "240", "--log-level", "warning"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 10
        while not path.exists():
            assert process.poll() is None and time.monotonic() < deadline
            time.sleep(0.02)

        async def scenario(port: TwcPort) -> None:
            linked = await expect(port, lambda e: isinstance(e, SlaveLinked))
            assert (linked.max_amps, linked.protocol, linked.firmware) == (80, 2, (4, 5, 3))
            process.send_signal(signal.SIGUSR2)
            await expect(port, lambda e: isinstance(e, SlaveStateChanged) and not e.plugged)
            process.send_signal(signal.SIGUSR1)
            await expect(port, lambda e: isinstance(e, SlaveStateChanged) and e.plugged)

        run_port(str(path), scenario)
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=10)
        assert process.returncode == 0, output
        assert not path.exists()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_twcsim_refuses_bad_options():
    result = subprocess.run([sys.executable, "-m", "distributedcharge", "twcsim", "--tcp", "99999"],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2 and "--tcp" in result.stderr


def test_twc_config_section_becomes_master_settings():
    config = validate({"twc": {"wiring_limit_a": 24, "master_id": "7A7B", "min_amps": 8}}, TWC_FIELDS, "wall.toml")
    settings = settings_from_config(config["twc"])
    assert (settings.wiring_limit_a, settings.circuit_limit_a, settings.min_amps, settings.master_id) == (
        24, None, 8, 0x7A7B)
    port = TwcPort.from_config(config["twc"])
    assert (port.url, port.master.master_id) == ("/dev/ttyUSB0", 0x7A7B)


def test_twc_config_problems_are_all_reported():
    with pytest.raises(ConfigError) as caught:
        validate({"twc": {"master_id": "FFFF", "min_amps": 2, "stop_attempts": 0}}, TWC_FIELDS, "wall.toml")
    problems = "\n".join(caught.value.problems)
    for key in ("twc.wiring_limit_a", "twc.master_id", "twc.min_amps", "twc.stop_attempts"):
        assert f"wall.toml: {key}:" in problems
    config = validate({"twc": {"wiring_limit_a": 10, "min_amps": 16}}, TWC_FIELDS, "wall.toml")
    with pytest.raises(ConfigError, match="twc.min_amps"):
        settings_from_config(config["twc"], "wall.toml")


def test_pty_link_is_raw_from_the_start(tmp_path):
    link = PtyLink(tmp_path / "twc")
    link.open()
    try:
        device = os.open(tmp_path / "twc", os.O_RDWR | os.O_NOCTTY)
        try:
            link.write(b"\x0d\x0a\xc0")
            time.sleep(0.05)
            assert os.read(device, 16) == b"\x0d\x0a\xc0"
        finally:
            os.close(device)
    finally:
        link.close()
    assert not Path(tmp_path / "twc").exists()
