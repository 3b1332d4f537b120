"""``simulate --processes``: every part its own OS process; kill -9 each daemon mid-session.

simnet, two python-can-remote servers, the plant and both daemons run as real processes
configured by real files, all on 127.0.0.1. The books that count are simnet's (payments
by hash), the wall's ledger and the car's journal.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable

import pytest
import structlog

from distributedcharge.sim.books import Books, read_books
from distributedcharge.sim.processes import ProcessWorld
from distributedcharge.sim.stage import Layout, Terms
from distributedcharge.sim.world import books_of

# 5 Wh at 11 kW is a payment every 1.6 s of real time.
WH_PER_PAYMENT = 5
FIRST_PAYMENTS = 3
WAIT_S = 40.0
PAYING_LATENCY_MS = 600


@pytest.fixture(autouse=True)
def default_logging():
    """Another test may leave structlog writing to a stream pytest has since closed."""
    structlog.reset_defaults()


@pytest.fixture
def world():
    # A short path: simnet's control socket must fit in 107 bytes.
    root = Path(tempfile.mkdtemp(prefix="dc-kill-"))
    world = ProcessWorld(Layout(root), Terms(wh_per_payment=WH_PER_PAYMENT))
    world.launch()
    try:
        yield world
    finally:
        world.shutdown()
        shutil.rmtree(root, ignore_errors=True)


def wait_for(world: ProcessWorld, what: str, done: Callable[[Books], bool], timeout_s: float = WAIT_S) -> Books:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        books = books_of(world.layout)
        if done(books):
            return books
        time.sleep(0.01)
    pytest.fail(f"{what} within {timeout_s:g} s; payments so far: {books_of(world.layout).payments}")


def unresolved_car_payment(books: Books) -> bool:
    return any(state in ("intent", "in_flight") for state, _, _ in books.car_journal_payments.values())


def assert_books_agree(world: ProcessWorld) -> Books:
    books = books_of(world.layout)
    assert not books.hashes_paid_more_than_once()
    assert books.payments == len(books.wall_settled) >= FIRST_PAYMENTS
    assert books.paid_by_car_msat == books.received_by_wall_msat
    assert books.car_journal_paid_msat == books.paid_by_car_msat
    assert books.wall_ledger_paid_msat == books.received_by_wall_msat
    assert not unresolved_car_payment(books)
    return books


def settle_and_stop_car(world: ProcessWorld) -> None:
    """Stop the car and let the wall hear the last settlement before anything else stops."""
    world.stop_daemon("car")
    wait_for(world, "the wall ledger never caught up with its node",
             lambda b: b.wall_ledger_paid_msat == b.received_by_wall_msat, 10.0)


def test_car_killed_during_a_payment_pays_nothing_twice(world):
    world.plant_command("plug")
    wait_for(world, "no payments", lambda b: b.payments >= FIRST_PAYMENTS)
    # Kill -9 right after the journal committed a payment's intent, if the poll catches one.
    wait_for(world, "no payment seen in flight", unresolved_car_payment, 10.0)
    world.kill("car")
    killed = books_of(world.layout)
    world.restart("car")
    # On start the car reconciles the payment it left unresolved with TrackPaymentV2.
    wait_for(world, "the unresolved payment was never reconciled", lambda b: not unresolved_car_payment(b))
    settle_and_stop_car(world)
    books = assert_books_agree(world)
    assert books.payments >= killed.payments
    assert world.errors() == []


def test_wall_killed_mid_session_loses_no_receipt(world):
    world.plant_command("plug")
    wait_for(world, "no payments", lambda b: b.payments >= FIRST_PAYMENTS)
    # A slow car node: each payment takes over a second, long enough to kill the wall while
    # an invoice it sent is still being paid.
    world.control_node({"command": "latency", "node": "car", "ms": PAYING_LATENCY_MS})
    before = wait_for(world, "no invoice went out", lambda b: any(i.state == "open" for i in b.wall_invoices))
    time.sleep(PAYING_LATENCY_MS / 1000 / 2)
    world.kill("wallunit")
    assert books_of(world.layout).payments == before.payments  # that invoice's payment is still under way
    # The car pays the invoice it holds while the wall is down: a receipt the wall must not lose.
    wait_for(world, "the car paid nothing while the wall was down", lambda b: b.payments > before.payments)
    world.restart("wallunit")
    wait_for(world, "the restarted wall never counted the payment it missed",
             lambda b: b.wall_ledger_paid_msat == b.received_by_wall_msat)
    settle_and_stop_car(world)
    assert_books_agree(world)
    assert world.errors() == []


def test_session_goes_on_after_each_daemon_restarts(world):
    world.plant_command("plug")
    for role in ("car", "wallunit"):
        before = wait_for(world, "no payments", lambda b: b.payments >= FIRST_PAYMENTS)
        world.kill(role)
        world.restart(role)
        wait_for(world, f"no payments after the {role} restarted", lambda b: b.payments >= before.payments + 3, 25.0)


def test_the_books_are_read_only_to_the_simulator(tmp_path):
    books = read_books(tmp_path / "none.sqlite3", tmp_path / "none-ledger.sqlite3", tmp_path / "none-journal.sqlite3")
    assert books.payments == 0 and books.received_by_wall_msat == 0
    assert not list(tmp_path.iterdir())
