"""Killing the car daemon between its journal's intent row and the payment never pays twice.

The daemon runs as a real process (``python -m distributedcharge car --config ...``) against a
simnet in this process and two python-can ``remote`` buses (SWCAN and vehicle), each served by
a ``can_remote`` process on 127.0.0.1. The test watches the daemon's journal, SIGKILLs it the
moment a payment's row shows the chosen state, restarts it, and checks with the simnet that
the invoice was paid exactly once and that the car goes on paying.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import can
import pytest

from car.journal import JOURNAL_FILE
from distributedcharge.clock import Clock
from distributedcharge.lightning import bolt11
from distributedcharge.lightning.client import LndClient
from distributedcharge.simnet.server import Simnet
from test_car_daemon import IDLE, OFFER, PAYMENT, TestWall, Vehicle, car_macaroon, eventually

START_TIMEOUT_S = 20.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def can_remote_server(channel: str) -> Iterator[str]:
    """A python-can-remote server for one virtual channel; yields the clients' channel string."""
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "can_remote", "-i", "virtual", "-c", channel,
                               "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                assert server.poll() is None and time.monotonic() < deadline, "can_remote server did not start"
                time.sleep(0.05)
        yield f"127.0.0.1:{port}"
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def toml_config(simnet: Simnet, state_dir: Path, macaroon: Path, swcan: str, vehicle_can: str) -> str:
    node = simnet.node("car")
    return f"""role = "car"
[buyer]
network = "regtest"
[state]
dir = "{state_dir}"
[lightning]
host = "{node.host}"
port = {node.port}
tls_cert = "{node.tls_cert_path}"
macaroon = "{macaroon}"
rpc_timeout_s = 5.0
[swcan]
interface = "remote"
channel = "{swcan}"
[vehicle_can]
interface = "remote"
channel = "{vehicle_can}"
[log]
level = "info"
json = "always"
"""


class DaemonProcess:
    def __init__(self, config: Path, log: Path):
        self.config = config
        self.log = log
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen([sys.executable, "-m", "distributedcharge", "car", "--config",
                                             str(self.config)], stdout=log, stderr=log, env=os.environ.copy())

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> int | None:
        if self.process is None or self.process.poll() is not None:
            return None if self.process is None else self.process.returncode
        self.process.terminate()
        try:
            return self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            return None

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None


def journal_rows(path: Path, query: str, *args) -> list[sqlite3.Row]:
    if not path.exists():
        return []
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    conn.row_factory = sqlite3.Row
    try:
        return conn.execute(query, args).fetchall()
    except sqlite3.OperationalError:
        return []  # the daemon has not created its tables yet
    finally:
        conn.close()


@pytest.mark.parametrize("kill_at", ["intent", "in_flight"])
def test_a_daemon_killed_after_its_journal_entry_pays_the_invoice_exactly_once(tmp_path: Path, kill_at) -> None:
    with can_remote_server("swcan") as swcan, can_remote_server("vehicle") as vehicle_can:
        asyncio.run(kill_and_restart(tmp_path, swcan, vehicle_can, kill_at))


async def kill_and_restart(tmp_path: Path, swcan: str, vehicle_can: str, kill_at: str) -> None:
    async with Simnet(tmp_path / "net", control_socket=False) as simnet:
        state_dir = tmp_path / "car-state"
        journal = state_dir / JOURNAL_FILE
        config = tmp_path / "car.toml"
        config.write_text(toml_config(simnet, state_dir, car_macaroon(simnet, tmp_path / "car.macaroon"),
                                      swcan, vehicle_can))
        daemon = DaemonProcess(config, tmp_path / "car.log")
        wall = TestWall(can.Bus(interface="remote", channel=swcan),
                        LndClient(simnet.node("wall").address_for("invoice"), timeout_s=5),
                        simnet.state.node("wall").private_key, v2=True)
        vehicle = Vehicle(can.Bus(interface="remote", channel=vehicle_can), Clock())
        vehicle.state = IDLE
        feeder = asyncio.create_task(vehicle.run())
        car_start = simnet.state.balance("car").local_msat
        wall_start = simnet.state.balance("wall").local_msat
        await wall.start()
        try:
            daemon.start()
            await eventually(lambda: journal_rows(journal, "SELECT id FROM sessions WHERE ended_at IS NULL"),
                             "the daemon to start a session", START_TIMEOUT_S)
            await wall.plug_in(OFFER)
            first = await wall.invoice(PAYMENT)
            wall.send(first)
            await eventually(lambda: journal_rows(journal, "SELECT 1 FROM payments WHERE state = 'succeeded'"),
                             "the first payment")

            # Hold the next payment where the kill should find it.
            node = simnet.node("car")
            if kill_at == "intent":
                node.set_latency_ms(2_000)  # SendPaymentV2 waits at the node's door
            else:
                simnet.network.payment_latency_s = 2.0  # LND has it in flight, routing
            second = await wall.invoice(PAYMENT)
            wall.send(second)
            await eventually(lambda: journal_rows(journal, "SELECT 1 FROM payments WHERE state = ?", kill_at),
                             f"a payment row in state {kill_at}")
            daemon.kill()
            node.set_latency_ms(0)
            simnet.network.payment_latency_s = 0.02
            killed = journal_rows(journal, "SELECT payment_hash, state FROM payments WHERE state != 'succeeded'")
            assert [row["state"] for row in killed] == [kill_at]

            verdicts_before = len(journal_rows(journal, "SELECT id FROM invoices"))
            daemon.start()
            # The plug is still latched, so the restarted daemon carries the session on.
            await eventually(lambda: "session resumed" in (tmp_path / "car.log").read_text(),
                             "the restarted daemon to resume the session", START_TIMEOUT_S)
            # The wall starts over too (a new v2 session id), still owed its second invoice.
            await wall.port.unplugged()
            await wall.plug_in(OFFER)
            wall.send(second)
            third = await wall.invoice(PAYMENT)
            wall.send(third)
            await eventually(lambda: len(journal_rows(
                journal, "SELECT 1 FROM payments WHERE state = 'succeeded'")) == 3, "three settled payments")
            await eventually(lambda: len(journal_rows(journal, "SELECT 1 FROM invoices WHERE id > ?",
                                                      verdicts_before)) == 2, "both verdicts after the restart")

            for invoice in (first, second, third):
                status = await wall.lnd.lookup_invoice(bolt11.decode(invoice).payment_hash)
                assert (status.state, status.amt_paid_msat) == ("SETTLED", PAYMENT)
            settled = journal_rows(journal, "SELECT * FROM payments ORDER BY created_at")
            assert [row["state"] for row in settled] == ["succeeded"] * 3
            assert simnet.state.balance("wall").local_msat - wall_start == 3 * PAYMENT
            assert car_start - simnet.state.balance("car").local_msat == 3 * PAYMENT + sum(
                row["fee_msat"] for row in settled)
            verdicts = [tuple(row) for row in journal_rows(
                journal, "SELECT verdict, code FROM invoices WHERE id > ? ORDER BY id", verdicts_before)]
            if kill_at == "intent":
                # LND never heard of it, so it was retried and paid once.
                assert verdicts == [("pay", None), ("pay", None)]
                assert settled[1]["attempts"] == 2
            else:
                # LND paid it while the daemon was dead; the journal learnt so at start.
                assert verdicts == [("refused", "duplicate"), ("pay", None)]
                assert settled[1]["attempts"] == 1
            assert len(journal_rows(journal, "SELECT id FROM sessions")) == 1
            assert daemon.alive()
            assert daemon.stop() == 0
        finally:
            daemon.stop()
            feeder.cancel()
            await asyncio.gather(feeder, return_exceptions=True)
            await wall.close()
            vehicle.bus.shutdown()
