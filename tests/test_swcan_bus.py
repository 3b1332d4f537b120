"""Both SWCAN roles on real python-can buses with can-isotp: every pairing, the original's exact bytes,
echoing buses, hostile traffic, failed transfers, and a bus shared across processes (python-can-remote)."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import time
import uuid
from contextlib import asynccontextmanager
from collections.abc import AsyncIterator, Callable, Iterator

import can
import isotp
import pytest
import structlog

from distributedcharge import config
from distributedcharge.swcan import messages as m
from distributedcharge.swcan.adapter import SWCAN_FIELDS, SwcanPort, TransferFailed, open_port
from distributedcharge.swcan.link import (
    CarAccepted,
    CarLink,
    Dropped,
    InvoiceReceived,
    Offer,
    OfferReceived,
    WallLink,
)
from distributedcharge.units import NJ_PER_WH
from test_swcan_packing import make_invoice

OFFER = Offer(rate_msat_per_kwh=100_000, payment_msat=2_500)
INVOICES = [make_invoice(seed=n, memo=f"DistributedCharge payment {n}") for n in range(3)]
EVENT_TIMEOUT_S = 5.0


@pytest.fixture(autouse=True)
def logs() -> Iterator[list[dict]]:
    # Captured rather than printed: the adapter logs from bus threads, and a test elsewhere may
    # leave structlog writing to a stream pytest has since closed.
    with structlog.testing.capture_logs() as captured:
        yield captured


def virtual_bus(channel: str, **kwargs) -> can.BusABC:
    return can.Bus(interface="virtual", channel=channel, **kwargs)


def drain_bus(bus: can.BusABC) -> list[tuple[int, bytes]]:
    frames = []
    while (message := bus.recv(0)) is not None:
        frames.append((message.arbitration_id, bytes(message.data)))
    return frames


async def next_event(port: SwcanPort):
    return await asyncio.wait_for(port.events.get(), EVENT_TIMEOUT_S)


@asynccontextmanager
async def ports(wall_bus: can.BusABC, car_bus: can.BusABC, *, wall_v2: bool, car_v2: bool,
                car_stmin: int = 0, car_blocksize: int = 0,
                session_ids: Callable[[], int] = lambda: 0xBEEF) -> AsyncIterator[tuple[SwcanPort, SwcanPort]]:
    wall = SwcanPort(WallLink(v2=wall_v2, session_ids=session_ids), wall_bus)
    car = SwcanPort(CarLink(v2=car_v2), car_bus, stmin=car_stmin, blocksize=car_blocksize)
    await wall.start()
    await car.start()
    try:
        yield wall, car
    finally:
        await wall.close()
        await car.close()
        wall_bus.shutdown()
        car_bus.shutdown()


async def sell(wall: SwcanPort, car: SwcanPort, invoices: list[str]) -> tuple[CarAccepted, list[InvoiceReceived]]:
    wall.apply(lambda link, now: link.plugged_in(OFFER, now))
    heard = await next_event(car)
    assert isinstance(heard, OfferReceived)
    assert car.apply(lambda link, now: link.accept(heard.offer))
    accepted = await next_event(wall)
    assert isinstance(accepted, CarAccepted)
    received = []
    for count, invoice in enumerate(invoices, start=1):
        wall.apply(lambda link, _, bolt11=invoice, meter=count * 25 * NJ_PER_WH: link.send_invoice(bolt11, meter))
        received.append(await next_event(car))
    return accepted, received


def original_isotp_frames(payload: bytes, fc: bytes, blocksize: int) -> list[tuple[int, bytes]]:
    """How the original (Linux isotp, no padding) segments one payload, flow control from the car."""
    frames = [(m.ISOTP_WALL_TX_ID, bytes([0x10 | len(payload) >> 8, len(payload) & 0xFF]) + payload[:6]),
              (m.ISOTP_CAR_TX_ID, fc)]
    rest = payload[6:]
    for index in range(0, len(rest), 7):
        number = index // 7
        if blocksize and number and number % blocksize == 0:
            frames.append((m.ISOTP_CAR_TX_ID, fc))
        frames.append((m.ISOTP_WALL_TX_ID, bytes([0x20 | (number + 1) % 16]) + rest[index:index + 7]))
    return frames


@pytest.mark.parametrize("wall_v2, car_v2", [(False, False), (False, True), (True, False), (True, True)],
                         ids=["v1-wall/v1-car", "v1-wall/v2-car", "v2-wall/v1-car", "v2-wall/v2-car"])
def test_every_pairing_sells_over_python_can_and_a_v1_side_sees_only_original_bytes(wall_v2, car_v2) -> None:
    channel = uuid.uuid4().hex
    version = 2 if wall_v2 and car_v2 else 1

    async def main() -> tuple[CarAccepted, list[InvoiceReceived]]:
        async with ports(virtual_bus(channel), virtual_bus(channel), wall_v2=wall_v2, car_v2=car_v2) as (wall, car):
            return await sell(wall, car, INVOICES)

    sniffer = virtual_bus(channel)
    try:
        accepted, received = asyncio.run(main())
        frames = drain_bus(sniffer)
    finally:
        sniffer.shutdown()
    assert accepted.version == version
    assert accepted.offer == (OFFER if version == 2 else Offer(100_000, 3_000))
    assert [r.bolt11 for r in received] == INVOICES
    assert all(r.offer == accepted.offer and r.version == version for r in received)
    assert [r.wall_energy_nj for r in received] == ([25 * NJ_PER_WH, 50 * NJ_PER_WH, 75 * NJ_PER_WH]
                                                    if version == 2 else [None] * 3)
    assert {can_id for can_id, _ in frames} <= {m.OFFER_ID, m.ANSWER_ID, m.V2_OFFER_ID, m.ISOTP_WALL_TX_ID,
                                                m.ISOTP_CAR_TX_ID}
    if not car_v2:
        assert [data for can_id, data in frames if can_id == m.ANSWER_ID] == [b"\x01"]
    if not wall_v2:
        assert [data for can_id, data in frames if can_id == m.OFFER_ID] == [bytes.fromhex("00e1f50503000000")]
        assert m.V2_OFFER_ID not in {can_id for can_id, _ in frames}
    if version == 1:
        expected = [frame for invoice in INVOICES
                    for frame in original_isotp_frames(invoice.encode(), b"\x30\x00\x00", 0)]
        assert [f for f in frames if f[0] in (m.ISOTP_WALL_TX_ID, m.ISOTP_CAR_TX_ID)] == expected


def test_v1_pair_configured_like_the_original_puts_exactly_its_bytes_on_the_bus() -> None:
    channel = uuid.uuid4().hex

    async def main() -> None:
        async with ports(virtual_bus(channel), virtual_bus(channel), wall_v2=False, car_v2=False,
                         car_stmin=25, car_blocksize=10) as (wall, car):
            await sell(wall, car, INVOICES[:1])

    sniffer = virtual_bus(channel)
    try:
        asyncio.run(main())
        frames = drain_bus(sniffer)
    finally:
        sniffer.shutdown()
    assert frames == [(m.OFFER_ID, bytes.fromhex("00e1f50503000000")), (m.ANSWER_ID, b"\x01"),
                      *original_isotp_frames(INVOICES[0].encode(), bytes.fromhex("300a19"), 10)]


def test_a_bus_that_echoes_our_own_frames_changes_nothing() -> None:
    channel = uuid.uuid4().hex

    async def main() -> None:
        async with ports(virtual_bus(channel, receive_own_messages=True),
                         virtual_bus(channel, receive_own_messages=True), wall_v2=True, car_v2=True) as (wall, car):
            accepted, received = await sell(wall, car, INVOICES[:2])
            assert accepted.version == 2 and [r.bolt11 for r in received] == INVOICES[:2]
            assert wall.events.empty() and car.events.empty()

    asyncio.run(main())


def test_after_unplug_and_replug_a_new_session_starts_from_scratch() -> None:
    channel = uuid.uuid4().hex
    sessions = iter([0x1111, 0x2222])

    async def main() -> None:
        async with ports(virtual_bus(channel), virtual_bus(channel), wall_v2=True, car_v2=True,
                         session_ids=lambda: next(sessions)) as (wall, car):
            first, _ = await sell(wall, car, INVOICES[:1])
            await wall.unplugged()
            await car.unplugged()
            assert car.link.accepted_offer is None
            second, received = await sell(wall, car, INVOICES[1:2])
            assert (first.session_id, second.session_id) == (0x1111, 0x2222)
            assert received[0].session_id == 0x2222 and received[0].bolt11 == INVOICES[1]

    asyncio.run(main())


def test_hostile_traffic_is_dropped_and_the_session_still_completes(logs: list[dict]) -> None:
    channel = uuid.uuid4().hex
    attacker = virtual_bus(channel)
    notifier = can.Notifier(attacker, [], timeout=0.1)
    forger = isotp.NotifierBasedCanStack(attacker, notifier, address=isotp.Address(
        isotp.AddressingMode.Normal_11bits, txid=m.ISOTP_WALL_TX_ID, rxid=m.ISOTP_CAR_TX_ID))
    forger.start()

    def inject(can_id: int, data: bytes, extended: bool = False) -> None:
        attacker.send(can.Message(arbitration_id=can_id, data=data, is_extended_id=extended))

    async def main() -> None:
        async with ports(virtual_bus(channel), virtual_bus(channel), wall_v2=True, car_v2=True) as (wall, car):
            inject(m.OFFER_ID, b"\x01\x02\x03")
            inject(m.OFFER_ID, bytes(8))
            inject(m.V2_OFFER_ID, b"\xff" * 8)
            inject(m.OFFER_ID, bytes(8), extended=True)
            inject(0x123, b"\x01")
            for payload in (INVOICES[0].encode(), bytes(range(200)), "ln€".encode()):
                forger.send(payload)
            reasons = [(await next_event(car)).reason for _ in range(6)]
            assert sorted(reasons) == sorted([
                "offer frame 1998: DLC 3, expected 8",
                "offered rate (sat/GWh) of 0 is not a real offer",
                "offered payment (msat) of 4294967295 is not a real offer",
                *["invoice before any offer was accepted"] * 3,
            ])
            accepted, received = await sell(wall, car, INVOICES[:1])
            assert accepted.version == 2 and received[0].bolt11 == INVOICES[0]
            forger.send(bytes(range(50)))
            dropped = await next_event(car)
            assert isinstance(dropped, Dropped) and dropped.level == "warning"
            assert car.events.empty()

    try:
        asyncio.run(main())
    finally:
        forger.stop()
        notifier.stop()
        attacker.shutdown()
    refusals = [entry for entry in logs if entry["event"] == "swcan input dropped"]
    assert {entry["log_level"] for entry in refusals} == {"warning"}
    # Seven drops, five distinct: the thrice-repeated "before any offer was accepted" is logged once.
    assert len(refusals) == 5
    assert {"reason": "offer frame 1998: DLC 3, expected 8", "can_id": m.OFFER_ID, "data": "010203"}.items() \
        <= refusals[0].items()


def test_a_flooding_peer_cannot_flood_the_log(logs: list[dict]) -> None:
    channel = uuid.uuid4().hex
    attacker = virtual_bus(channel)

    async def main() -> int:
        async with ports(virtual_bus(channel), virtual_bus(channel), wall_v2=True, car_v2=True) as (_, car):
            for _ in range(500):
                attacker.send(can.Message(arbitration_id=m.OFFER_ID, data=b"\x01", is_extended_id=False))
            return len([await next_event(car) for _ in range(500)])

    try:
        assert asyncio.run(main()) == 500
    finally:
        attacker.shutdown()
    refusals = [entry for entry in logs if entry["event"] == "swcan input dropped"]
    assert len(refusals) == 1 and refusals[0]["suppressed"] == 0


def test_an_invoice_nobody_receives_is_reported_as_a_failed_transfer() -> None:
    channel = uuid.uuid4().hex
    car_impostor = virtual_bus(channel)

    async def main() -> None:
        wall = SwcanPort(WallLink(v2=False), virtual_bus(channel), send_timeout=5.0)
        await wall.start()
        try:
            wall.apply(lambda link, now: link.plugged_in(OFFER, now))
            car_impostor.send(can.Message(arbitration_id=m.ANSWER_ID, data=b"\x01", is_extended_id=False))
            assert isinstance(await next_event(wall), CarAccepted)
            wall.apply(lambda link, now: link.send_invoice(INVOICES[0], 0))
            assert isinstance(await next_event(wall), TransferFailed)
        finally:
            await wall.close()
            wall.bus.shutdown()

    try:
        asyncio.run(main())
    finally:
        car_impostor.shutdown()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_ports_from_config_sell_across_a_python_can_remote_server_in_another_process() -> None:
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "can_remote", "-i", "virtual", "-c", "swcan", "-H", "127.0.0.1",
                               "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                assert server.poll() is None and time.monotonic() < deadline, "can_remote server did not start"
                time.sleep(0.05)
        section = config.validate({"swcan": {"interface": "remote", "channel": f"127.0.0.1:{port}"}},
                                  SWCAN_FIELDS, "test.toml").swcan

        async def main() -> None:
            wall, car = open_port(section, "wallunit"), open_port(section, "car")
            await wall.start()
            await car.start()
            try:
                accepted, received = await sell(wall, car, INVOICES[:2])
                assert accepted.version == 2 and [r.bolt11 for r in received] == INVOICES[:2]
            finally:
                for side in (wall, car):
                    await side.close()
                    side.bus.shutdown()

        asyncio.run(main())
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_swcan_config_section_defaults_and_checks() -> None:
    defaults = config.validate({}, SWCAN_FIELDS, "car.toml").swcan
    assert defaults == {"interface": "socketcan", "channel": "can0", "bitrate": 33_300, "stmin": 0,
                        "blocksize": 0, "v2": True, "send_timeout": 10.0}
    with pytest.raises(config.ConfigError) as caught:
        config.validate({"swcan": {"stmin": 200, "blocksize": -1}}, SWCAN_FIELDS, "car.toml")
    assert caught.value.problems == [
        "car.toml: swcan.stmin: must be 0-127 (ms) or 241-249 (100-900 us), got 200",
        "car.toml: swcan.blocksize: must be at least 0, got -1",
    ]


def test_after_the_interval_the_next_line_says_how_many_were_left_out(logs: list[dict]) -> None:
    from distributedcharge.swcan.adapter import _DropLog

    drop_log = _DropLog(interval_s=10.0)
    garbage = Dropped("offer frame 1998: DLC 1, expected 8", m.OFFER_ID, b"\x01", "warning")
    for second in range(12):
        drop_log(garbage, now=float(second))
    lines = [entry for entry in logs if entry["event"] == "swcan input dropped"]
    assert [entry["suppressed"] for entry in lines] == [0, 9]
