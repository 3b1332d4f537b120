"""The car daemon across restarts, in-process (the harness of test_car_daemon): a wall that
"restarts" gets nothing it could not have had without restarting, and a car daemon that dies
mid-session carries the session on with its payments, payee and meter."""

from __future__ import annotations

import asyncio
from pathlib import Path

from car.daemon import CarDaemon
from distributedcharge.swcan.link import CarAccepted
from test_car_daemon import (
    OFFER,
    OTHER_KEY,
    PAYMENT,
    PAYMENTS_BEFORE_ANY_ENERGY,
    Scene,
    eventually,
    forge,
    run_async,
    scene,
)


async def restart_wall(here: Scene, session_id: int) -> CarAccepted:
    """The wall daemon comes back with a new link and session id; the cable never left."""
    here.wall.port.link = here.wall.link = type(here.wall.link)(v2=True, session_ids=lambda: session_id)
    accepted = await here.wall.plug_in(OFFER)
    assert isinstance(accepted, CarAccepted) and accepted.session_id == session_id
    return accepted


def test_a_wall_restarting_again_and_again_is_paid_no_more_than_one_that_never_restarts(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with scene(tmp_path) as here:  # plugged in, no energy flowing
            assert isinstance(await here.wall.plug_in(), CarAccepted)
            for restart in range(PAYMENTS_BEFORE_ANY_ENERGY + 2):
                await restart_wall(here, 0x1000 + restart)
                # Each "new session" asks as if it were the first: twice the payment, then one.
                here.wall.send(await here.wall.invoice(2 * PAYMENT))
                here.wall.send(await here.wall.invoice(PAYMENT))
                await eventually(lambda: len(here.verdicts()) >= 2 * (restart + 1), "both verdicts")
            await eventually(lambda: not here.unresolved(), "payments to settle")
            verdicts = here.verdicts()
            # Only the very first invoice of the plug-in may be a double one.
            assert verdicts[0] == ("pay", None)
            assert verdicts[2::2] == [("refused", "over_offer")] * (len(verdicts) // 2 - 1)
            # Without energy the tolerance still allows what it allows once: 110 Wh ahead.
            paid = sum(row["amount_msat"] for row in here.succeeded())
            assert paid <= PAYMENTS_BEFORE_ANY_ENERGY * PAYMENT
            assert ("not_yet_due", "too_early") in verdicts
            here.assert_books_agree(paid)

    run_async(scenario)


def test_a_restarted_wall_keeps_the_payee_the_session_pinned(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with scene(tmp_path) as here:
            assert isinstance(await here.wall.plug_in(), CarAccepted)
            here.wall.send(await here.wall.invoice(PAYMENT))
            await eventually(here.succeeded, "the first payment")
            await restart_wall(here, 0x2222)
            here.wall.send(forge(PAYMENT, key=OTHER_KEY))
            await eventually(lambda: len(here.verdicts()) == 2, "the second verdict")
            assert here.verdicts() == [("pay", None), ("refused", "payee_changed")]
            here.assert_books_agree(PAYMENT)

    run_async(scenario)


async def crash_and_restart(here: Scene) -> CarDaemon:
    """Stop the daemon the way kill -9 does as far as the journal goes (the session stays open),
    then start a new one on the same state directory and configuration."""
    old = here.daemon
    here.run.cancel()
    await asyncio.gather(here.run, return_exceptions=True)
    old.session = None  # nothing is written on the way down
    await old.stop()
    daemon = CarDaemon(old.cfg, clock=old.clock)
    await daemon.start()
    here.daemon, here.run = daemon, asyncio.create_task(daemon.run())
    await eventually(lambda: daemon.session is not None, "the session to be resumed")
    return daemon


def test_a_restarted_car_carries_the_session_on_and_pays_nothing_twice(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with scene(tmp_path) as here:  # plugged in, no energy flowing
            assert isinstance(await here.wall.plug_in(), CarAccepted)
            invoices = [await here.wall.invoice(PAYMENT) for _ in range(PAYMENTS_BEFORE_ANY_ENERGY + 1)]
            for invoice in invoices[:3]:
                here.wall.send(invoice)
            await eventually(lambda: len(here.succeeded()) == 3, "three payments")

            daemon = await crash_and_restart(here)
            assert daemon.session is not None
            assert [row[0] for row in here.journal.conn.execute("SELECT id FROM sessions")] == [1]
            # The wall, still selling, neither offers again nor notices: its invoices just go on.
            for invoice in invoices:
                here.wall.send(invoice)
            await eventually(lambda: len(here.verdicts()) == 3 + len(invoices), "every verdict")
            await eventually(lambda: not here.unresolved(), "payments to settle")
            assert here.verdicts()[3:] == [("refused", "duplicate")] * 3 + [("pay", None)] * 2 + [
                ("not_yet_due", "too_early")]
            # The tolerance counted the payments made before the restart.
            here.assert_books_agree(PAYMENTS_BEFORE_ANY_ENERGY * PAYMENT)

    run_async(scenario)


def test_a_restarted_car_whose_cable_came_out_meanwhile_starts_a_new_session(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with scene(tmp_path) as here:
            assert isinstance(await here.wall.plug_in(), CarAccepted)
            here.vehicle.state = type(here.vehicle.state)()  # unplugged while the daemon is down
            old = here.daemon
            here.run.cancel()
            await asyncio.gather(here.run, return_exceptions=True)
            old.session = None
            await old.stop()
            daemon = CarDaemon(old.cfg, clock=old.clock)
            await daemon.start()
            here.daemon, here.run = daemon, asyncio.create_task(daemon.run())
            reason = await eventually(lambda: here.journal.conn.execute(
                "SELECT end_reason FROM sessions WHERE id = 1").fetchone()[0], "the old session to close")
            assert reason == "unplugged while the daemon was down"
            assert daemon.session is None

    run_async(scenario)

