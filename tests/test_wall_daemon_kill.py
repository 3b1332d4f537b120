"""kill -9 mid-session loses no receipt: the wall-unit daemon as a real process.

``python -m distributedcharge wallunit --config ...`` runs against the simnet in this process,
the TWC simulator on a pty served by a thread here, and a SWCAN bus shared through a
``python -m can_remote`` server, on which this process plays the car. The daemon is killed
with SIGKILL twice: once just as a payment settles, and once with an invoice in the car's
hands that the car then pays while the daemon is down. After each restart the ledger must
count every settled invoice exactly once.
"""

from __future__ import annotations

import asyncio
import csv
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import can

from distributedcharge import cli
from distributedcharge.lightning import bolt11
from distributedcharge.lightning.client import LndClient
from distributedcharge.simnet.server import Simnet
from test_wall_daemon import Buyer, TwcSim, toml_text, wall_config
from wallunit.config import LEDGER_FILENAME

WH_PER_PAYMENT = 1  # a payment every half second at 32 A
PAYMENT_MSAT = 100 * WH_PER_PAYMENT
WAIT_S = 30.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_can_server(port: int) -> subprocess.Popen:
    server = subprocess.Popen([sys.executable, "-m", "can_remote", "-i", "virtual", "-c", "swcan",
                               "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + WAIT_S
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return server
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                server.kill()
                raise RuntimeError("can_remote server did not start") from None
            time.sleep(0.05)


class Ledger:
    """The daemon's ledger read as any other reader would, beside the running daemon."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def query(self, sql: str, *args) -> list[sqlite3.Row]:
        if not self.path.exists():
            return []
        with sqlite3.connect(self.path) as conn:
            conn.row_factory = sqlite3.Row
            try:
                return conn.execute(sql, args).fetchall()
            except sqlite3.OperationalError:  # the daemon has not made its tables yet
                return []

    def sessions(self) -> list[sqlite3.Row]:
        return self.query("SELECT * FROM sessions ORDER BY id")

    def settled(self) -> dict[str, int]:
        rows = self.query("SELECT i.r_hash, st.amt_paid_msat FROM settlements st JOIN invoices i ON i.id = st.invoice_id")
        return {bytes(row["r_hash"]).hex(): row["amt_paid_msat"] for row in rows}


class Daemon:
    def __init__(self, config_path: Path, log_path: Path) -> None:
        self.config_path = config_path
        self.log_path = log_path
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        with self.log_path.open("a") as log_file:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "distributedcharge", "wallunit", "--config", str(self.config_path)],
                stdout=log_file, stderr=subprocess.STDOUT,
            )

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def terminate(self) -> int:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(20)

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def cleanup(self) -> None:
        if self.alive():
            self.process.kill()
            self.process.wait(10)


async def until(condition, what: str, daemon: Daemon | None = None, poll_s: float = 0.05):
    deadline = time.monotonic() + WAIT_S
    while not (result := condition()):
        if daemon is not None and daemon.process is not None and not daemon.alive():
            raise AssertionError(f"the daemon exited while waiting for {what}:\n{daemon.log_path.read_text()[-3000:]}")
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(poll_s)
    return result


def test_kill_9_mid_session_loses_no_receipt(tmp_path):
    async def scenario() -> None:
        can_port = free_port()
        can_server = start_can_server(can_port)
        simnet = Simnet(tmp_path / "simnet", control_socket=False)
        twc = TwcSim(tmp_path / "ttyTWC", time.monotonic)
        daemon = Daemon(tmp_path / "wallunit.toml", tmp_path / "wallunit.log")
        buyer: Buyer | None = None
        buyer_task: asyncio.Task | None = None
        car_lnd: LndClient | None = None
        try:
            await simnet.start()
            twc.start()
            state_dir = tmp_path / "wall"
            data = wall_config(state_dir, simnet.node("wall"), str(twc.path),
                               {"interface": "remote", "channel": f"127.0.0.1:{can_port}"},
                               seller={"wh_per_payment": WH_PER_PAYMENT}, log={"json": "always"})
            daemon.config_path.write_text(toml_text(data))
            ledger = Ledger(state_dir / LEDGER_FILENAME)
            car_lnd = LndClient(simnet.node("car").address)
            held: set[int] = set()
            buyer = Buyer(can.Bus(interface="remote", channel=f"127.0.0.1:{can_port}"), car_lnd,
                          plan=lambda n: None if n in held else 0.0)
            buyer_task = asyncio.create_task(buyer.run())

            # Run 1: a few payments, then SIGKILL just as the next payment settles.
            held.add(2)
            daemon.start()
            twc.plug()
            await until(lambda: len(buyer.invoices) >= 3, "three invoices in run 1", daemon)
            third = buyer.invoices[2].bolt11
            settling = asyncio.create_task(buyer.pay_now(third))
            # simnet routes a payment 20 ms after taking it: the kill lands as it settles.
            await until(lambda: simnet.state.find_payment("car", bolt11.decode(third).payment_hash),
                        "the payment to be in flight", poll_s=0.001)
            daemon.kill()
            await asyncio.wait_for(settling, WAIT_S)
            assert len(buyer.paid_msat) == 3

            # Run 2: the car is still plugged in; a new session, then SIGKILL with an invoice
            # in the car's hands, which it pays while the daemon is down.
            buyer.forget_session()
            paid_before, invoices_before = len(buyer.paid_msat), len(buyer.invoices)
            held.add(invoices_before + 2)
            daemon.start()
            await until(lambda: len(buyer.invoices) > invoices_before + 2, "three invoices in run 2", daemon)
            await until(lambda: len(buyer.paid_msat) == paid_before + 2, "two payments in run 2", daemon)
            daemon.kill()
            await buyer.pay_now(buyer.invoices[invoices_before + 2].bolt11)

            # Run 3: the restart counts what was paid while the daemon was down, once. The car
            # buys nothing more, so every receipt it holds is one the ledger must have.
            buyer.plan = lambda n: None
            buyer.forget_session()
            daemon.start()
            await until(lambda: set(ledger.settled()) == set(buyer.receipts), "every payment in the ledger", daemon)
            assert daemon.terminate() == 0, daemon.log_path.read_text()[-3000:]

            assert ledger.settled() == buyer.receipts
            assert sum(ledger.settled().values()) == sum(buyer.paid_msat) == PAYMENT_MSAT * len(buyer.paid_msat)
            (rows,) = [ledger.query("SELECT count(*) AS n FROM settlements")]
            assert rows[0]["n"] == len(buyer.receipts)
            sessions = ledger.sessions()
            assert [s["end_reason"] for s in sessions[:2]] == ["daemon restarted", "daemon restarted"]
            assert all(s["ended_at"] for s in sessions)
            # Nothing is left payable on the node for sessions that are over.
            open_rows = ledger.query("SELECT ref FROM invoices WHERE state IN ('requested', 'open', 'accepted') "
                                     "AND session_id < ?", sessions[-1]["id"])
            assert open_rows == []
            # The owner's export, through the same config file, lists every payment.
            export = tmp_path / "ledger.csv"
            assert cli.main(["ledger", "--role", "wallunit", "--config", str(daemon.config_path),
                             "export", "--csv", "-o", str(export)]) == 0
            with export.open() as handle:
                paid = [row for row in csv.DictReader(handle) if row["amt_paid_msat"]]
            assert {row["payment_hash"]: int(row["amt_paid_msat"]) for row in paid} == buyer.receipts
        finally:
            daemon.cleanup()
            if buyer_task is not None:
                buyer_task.cancel()
                await asyncio.gather(buyer_task, return_exceptions=True)
            if buyer is not None:
                await buyer.close()
            if car_lnd is not None:
                await car_lnd.close()
            twc.stop()
            await simnet.stop()
            can_server.terminate()
            can_server.wait(10)

    asyncio.run(scenario())
