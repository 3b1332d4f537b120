"""The TWC master against simulated slaves on a simulated bus, in simulated time."""

from __future__ import annotations

import random
from fractions import Fraction

import pytest
import structlog

from distributedcharge.sim.twc_slave import SimpleCar, SimulatedBus, SlaveConfig, TwcSlave
from distributedcharge.twc import codec
from distributedcharge.twc.codec import (
    ChargeCommand,
    ChargeCommandKind,
    FrameReceiver,
    HeartbeatCommand,
    MasterHeartbeat,
    MasterLinkready1,
    MasterLinkready2,
    Query,
    QueryKind,
)
from distributedcharge.twc.master import (
    BusWarning,
    MasterSettings,
    Reading,
    SlaveLinked,
    SlaveLost,
    SlaveStateChanged,
    StartResult,
    StopResult,
    TwcMaster,
    VinRead,
    vin_is_valid,
)


@pytest.fixture(autouse=True)
def default_logging():
    """Another test may leave structlog writing to a stream pytest has since closed."""
    structlog.reset_defaults()


class Wire:
    """Records every frame on the bus by sender; can silence senders or add noise."""

    def __init__(self) -> None:
        self.receivers: dict[int, FrameReceiver] = {}
        self.frames: list[tuple[float, object, codec.Message]] = []
        self.muted: set[int] = set()
        self.mangle = None

    def __call__(self, sender, data: bytes, now: float) -> bytes:
        receiver = self.receivers.setdefault(id(sender), FrameReceiver())
        for message in receiver.feed(data, now):
            assert message.body()[:2] not in codec.DANGEROUS
            # TWCManager drops every frame that is not 14, 16 or 20 bytes long.
            assert len(message.body()) + 1 in (14, 16, 20)
            self.frames.append((now, sender, message))
        if id(sender) in self.muted:
            return b""
        return self.mangle(data) if self.mangle else data

    def sent_by(self, sender, kind=object, since: float = 0.0):
        return [(t, m) for t, s, m in self.frames if s is sender and isinstance(m, kind) and t >= since]

    def heartbeats_to(self, master, slave_id: int, since: float = 0.0):
        return [(t, m) for t, m in self.sent_by(master, MasterHeartbeat, since) if m.slave_id == slave_id]


def setup(slave_configs=(SlaveConfig(slave_id=0x1234, sign=0x11),), cars=None, slave_class=TwcSlave,
          **settings):
    settings.setdefault("wiring_limit_a", 32)
    master = TwcMaster(MasterSettings(**settings), rng=random.Random(7))
    cars = cars or [SimpleCar() for _ in slave_configs]
    slaves = [slave_class(config, car, random.Random(i)) for i, (config, car) in enumerate(zip(slave_configs, cars))]
    wire = Wire()
    bus = SimulatedBus([master, *slaves], step=0.01, line=wire)
    return master, slaves, bus, wire


def of(events, kind):
    return [e for e in events if isinstance(e, kind)]


def linked(bus, seconds=3.0):
    events = bus.run_for(seconds)
    assert of(events, SlaveLinked), events
    return events


def test_links_and_heartbeats_once_a_second():
    master, (slave,), bus, wire = setup()
    events = bus.run_for(31)
    assert of(events, SlaveLinked) == [SlaveLinked(0x1234, 2, 32, (4, 5, 3))]
    assert of(events, SlaveStateChanged)[0] == SlaveStateChanged(0x1234, 4, True)
    times = [t for t, _ in wire.heartbeats_to(master, 0x1234)]
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert 29 <= len(times) <= 32
    assert max(gaps) <= 1.2 and min(gaps) >= 1.0 - 1e-9
    announcements = [type(m) for _, m in wire.sent_by(master) if isinstance(m, (MasterLinkready1, MasterLinkready2))]
    assert announcements == [MasterLinkready1] * 5 + [MasterLinkready2] * 5
    assert slave.linked and slave.master_id == master.master_id


def test_protocol_1_slave_gets_short_frames_and_the_05_command():
    config = SlaveConfig(slave_id=0x0AB1, sign=3, protocol=1, firmware=None, max_centiamps=8000)
    master, (slave,), bus, wire = setup([config], wiring_limit_a=40, min_amps=5)
    events = linked(bus)
    assert of(events, SlaveLinked) == [SlaveLinked(0x0AB1, 1, 80, None)]
    master.set_offer(5)
    bus.run_for(2)
    assert slave.offered_centiamps == 500
    heartbeats = [m for _, m in wire.heartbeats_to(master, 0x0AB1)]
    assert all(len(m.body()) + 1 == 14 for m in heartbeats)
    assert heartbeats[-2].command == HeartbeatCommand.LIMIT_P1 or heartbeats[-1].command == HeartbeatCommand.LIMIT_P1
    assert not wire.sent_by(master, Query)


def test_raising_is_immediate_and_lowering_waits_five_seconds():
    master, (slave,), bus, wire = setup()
    linked(bus)
    master.set_offer(20)
    bus.run_for(1.1)
    assert slave.offered_centiamps == 2000
    bus.run_for(6)
    master.set_offer(10)
    bus.run_for(1.1)
    assert slave.offered_centiamps == 1000
    master.set_offer(8)
    bus.run_for(3)
    assert slave.offered_centiamps == 1000
    bus.run_for(2.2)
    assert slave.offered_centiamps == 800
    master.set_offer(24)
    bus.run_for(1.1)
    assert slave.offered_centiamps == 2400
    master.set_offer(12)
    bus.run_for(3.5)
    assert slave.offered_centiamps == 2400
    bus.run_for(2)
    assert slave.offered_centiamps == 1200


@pytest.mark.parametrize(
    "wiring, circuit, rating, expected",
    [(20, None, 3200, 2000), (32, None, 1600, 1600), (32, 13, 3200, 1300), (80, None, 3200, 3200)],
)
def test_offers_never_exceed_any_limit(wiring, circuit, rating, expected):
    config = SlaveConfig(slave_id=0x1234, sign=1, max_centiamps=rating)
    master, (slave,), bus, _ = setup([config], wiring_limit_a=wiring, circuit_limit_a=circuit)
    linked(bus)
    master.set_offer(50)
    bus.run_for(10)
    assert slave.offered_centiamps == expected
    assert slave.counters.highest_limit_centiamps == expected


@pytest.mark.parametrize("bad", [12.5, Fraction(25, 2), True])
def test_offers_are_whole_amps(bad):
    master, _, _, _ = setup()
    with pytest.raises(TypeError):
        master.set_offer(bad)
    with pytest.raises(ValueError):
        master.set_offer(-1)


def test_below_the_minimum_the_offer_is_an_explicit_zero():
    master, (slave,), bus, wire = setup(min_amps=10)
    linked(bus)
    master.set_offer(9)
    since = bus.now
    bus.run_for(5)
    sent = [m for _, m in wire.heartbeats_to(master, 0x1234, since)]
    assert sent and all((m.command, m.centiamps) == (HeartbeatCommand.LIMIT, 0) for m in sent)
    assert slave.offered_centiamps == 0
    master.set_offer(10)
    bus.run_for(1.1)
    assert slave.offered_centiamps == 1000


def test_protocol_2_minimum_is_six_amps():
    master, (slave,), bus, _ = setup(min_amps=5)
    linked(bus)
    master.set_offer(5)
    bus.run_for(2)
    assert slave.offered_centiamps == 0
    master.set_offer(6)
    bus.run_for(1.1)
    assert slave.offered_centiamps == 600


def test_an_offer_the_slave_already_reports_is_a_nop():
    master, (slave,), bus, wire = setup()
    linked(bus)
    master.set_offer(16)
    since = bus.now
    bus.run_for(6)
    commands = [m.command for _, m in wire.heartbeats_to(master, 0x1234, since)]
    assert commands[0] == HeartbeatCommand.LIMIT
    assert set(commands[1:]) == {HeartbeatCommand.NOP}
    assert slave.offered_centiamps == 1600


def test_slaves_share_the_circuit_limit():
    configs = [SlaveConfig(slave_id=0x1111, sign=1), SlaveConfig(slave_id=0x2222, sign=2)]
    master, slaves, bus, _ = setup(configs, wiring_limit_a=32, circuit_limit_a=40)
    linked(bus)
    master.set_offer(32)
    for _ in range(100):
        bus.run_for(0.1)
        assert sum(s.offered_centiamps for s in slaves) <= 4000
    assert sorted(s.offered_centiamps for s in slaves) == [800, 3200]


def test_stop_is_confirmed_by_the_measured_current():
    master, (slave,), bus, wire = setup()
    linked(bus)
    master.set_offer(16)
    events = bus.run_for(8)
    assert of(events, Reading)[-1].actual_centiamps > 1500
    master.set_offer(20)
    bus.run_for(1.1)
    master.stop_charging()
    since = bus.now
    events = bus.run_for(4)
    (result,) = of(events, StopResult)
    assert result.confirmed and result.attempts == 1 and result.actual_centiamps == 0
    first = wire.heartbeats_to(master, 0x1234, since)[0][1]
    assert (first.command, first.centiamps) == (HeartbeatCommand.LIMIT, 0)
    stops = [m for _, m in wire.sent_by(master, ChargeCommand) if m.kind == ChargeCommandKind.STOP]
    assert len(stops) == 1
    assert not slave.relay_closed and slave.actual_centiamps == 0
    master.set_offer(16)
    bus.run_for(5)
    assert slave.actual_centiamps == 0


def test_firmware_without_stop_command_reports_a_failed_stop():
    config = SlaveConfig(slave_id=0x1234, sign=1, firmware=(4, 0, 0, 0))
    master, (slave,), bus, wire = setup([config])
    events = linked(bus, 8)
    assert of(events, SlaveLinked)[0].firmware is None
    master.set_offer(16)
    bus.run_for(8)
    master.stop_charging()
    events = bus.run_for(35)
    (result,) = of(events, StopResult)
    assert not result.confirmed and result.attempts == 3
    assert result.actual_centiamps == 582
    assert "no stop command" in result.reason
    assert not wire.sent_by(master, ChargeCommand)


class DeafToStop(TwcSlave):
    """A unit that acknowledges FC B2 but keeps its contactor closed."""

    def _charge_command(self, message, now):
        self._send(codec.ChargeCommandAck(message.kind, self.slave_id))


def test_a_slave_that_ignores_stop_is_retried_then_reported():
    master, (slave,), bus, wire = setup(slave_class=DeafToStop, stop_timeout=5.0)
    linked(bus)
    master.set_offer(16)
    bus.run_for(8)
    master.stop_charging()
    events = bus.run_for(20)
    (result,) = of(events, StopResult)
    assert not result.confirmed and result.attempts == 3 and result.actual_centiamps > 500
    assert len(wire.sent_by(master, ChargeCommand)) == 3


def test_protocol_1_stops_with_zero_amps():
    config = SlaveConfig(slave_id=0x0AB1, sign=3, protocol=1, firmware=None)
    master, (slave,), bus, wire = setup([config])
    linked(bus)
    master.set_offer(16)
    bus.run_for(8)
    assert slave.actual_centiamps > 1000
    master.stop_charging()
    (result,) = of(bus.run_for(5), StopResult)
    assert result.confirmed
    assert not wire.sent_by(master, ChargeCommand)


def test_stop_with_no_slave_is_reported_and_holds_for_slaves_that_link_later():
    master, (slave,), bus, _ = setup()
    master.set_offer(16)
    master.stop_charging()
    assert master.tick(0.0) == [StopResult(None, False, 0, None, "no linked slave to stop")]
    linked(bus)
    bus.run_for(5)
    assert slave.offered_centiamps == 0
    master.start_charging()
    bus.run_for(2)
    assert slave.offered_centiamps == 1600


def test_a_stopped_slave_stays_stopped_when_it_relinks():
    master, (slave,), bus, wire = setup()
    linked(bus)
    master.set_offer(16, slave.slave_id)
    bus.run_for(8)
    master.stop_charging(slave.slave_id)
    assert of(bus.run_for(4), StopResult)[0].confirmed
    wire.muted.add(id(slave))
    assert of(bus.run_for(30), SlaveLost)
    wire.muted.clear()
    assert of(bus.run_for(12), SlaveLinked)
    bus.run_for(5)
    assert slave.offered_centiamps == 0
    master.start_charging(slave.slave_id)
    bus.run_for(6)
    assert slave.offered_centiamps == 1600 and slave.actual_centiamps > 1500


def test_start_after_stop_resumes_charging():
    master, (slave,), bus, wire = setup()
    linked(bus)
    master.set_offer(16)
    bus.run_for(8)
    master.stop_charging()
    assert of(bus.run_for(4), StopResult)[0].confirmed
    master.start_charging()
    (started,) = of(bus.run_for(6), StartResult)
    assert started.confirmed and started.attempts == 1
    assert [m.kind for _, m in wire.sent_by(master, ChargeCommand)] == [ChargeCommandKind.STOP, ChargeCommandKind.START]
    assert slave.actual_centiamps > 1500


def test_a_car_that_will_not_start_again_is_reported():
    master, (slave,), bus, wire = setup(cars=[SimpleCar(refuse_after_interruptions=1)], stop_timeout=3.0)
    linked(bus)
    master.set_offer(16)
    bus.run_for(8)
    master.stop_charging()
    assert of(bus.run_for(4), StopResult)[0].confirmed
    master.start_charging()
    (started,) = of(bus.run_for(12), StartResult)
    assert not started.confirmed and started.attempts == 3 and started.actual_centiamps == 0
    assert len([m for _, m in wire.sent_by(master, ChargeCommand) if m.kind == ChargeCommandKind.START]) == 3


def test_a_silent_slave_is_dropped_after_26_seconds_and_relinks():
    master, (slave,), bus, wire = setup()
    linked(bus)
    master.set_offer(16)
    bus.run_for(5)
    last_reply = wire.sent_by(slave)[-1][0]
    wire.muted.add(id(slave))
    lost = []
    while not lost and bus.now - last_reply < 30:
        lost = of(bus.run_for(0.1), SlaveLost)
    assert lost == [SlaveLost(0x1234, "no reply for 26 s")]
    assert 26.0 < bus.now - last_reply <= 26.2
    assert master.slaves == ()
    bus.run_for(5)
    last_heartbeat = wire.heartbeats_to(master, 0x1234)[-1][0]
    assert 25.0 <= last_heartbeat - last_reply <= 26.1
    wire.muted.clear()
    events = bus.run_for(12)
    assert of(events, SlaveLinked)
    bus.run_for(6)
    assert slave.offered_centiamps == 1600


def test_relinks_after_the_slave_restarts():
    master, (slave,), bus, _ = setup()
    linked(bus)
    master.set_offer(16)
    bus.run_for(8)
    slave.restart(bus.now)
    assert slave.offered_centiamps == 0
    events = bus.run_for(8)
    assert not of(events, SlaveLost)
    assert master.counters.slave_restarts == 1
    assert slave.offered_centiamps == 1600 and slave.actual_centiamps > 1500


def test_recovers_from_a_slave_that_was_off_longer_than_the_timeout():
    master, (slave,), bus, wire = setup()
    linked(bus)
    master.set_offer(16)
    bus.run_for(5)
    wire.muted.add(id(slave))
    events = bus.run_for(40)
    assert of(events, SlaveLost)
    wire.muted.clear()
    slave.restart(bus.now)
    events = bus.run_for(8)
    assert of(events, SlaveLinked) and slave.offered_centiamps == 1600


def test_two_slaves_with_one_id_are_flagged_and_share_one_budget():
    configs = [SlaveConfig(slave_id=0x1234, sign=1), SlaveConfig(slave_id=0x1234, sign=2)]
    master, slaves, bus, _ = setup(configs, wiring_limit_a=32)
    events = linked(bus, 5)
    master.set_offer(32)
    events += bus.run_for(10)
    warnings = [w for w in of(events, BusWarning) if w.kind == "duplicate_id"]
    assert len(warnings) == 1 and master.counters.duplicate_ids == 1
    assert all(s.offered_centiamps <= 1600 for s in slaves)
    assert sum(s.offered_centiamps for s in slaves) == 3200


def test_a_slave_using_the_master_id_is_made_to_change_it():
    config = SlaveConfig(slave_id=0x2222, sign=5)
    master, (slave,), bus, wire = setup([config], master_id=0x2222)
    wire.muted.add(id(master))
    events = bus.run_for(1.5)
    wire.muted.clear()
    events += bus.run_for(13)
    assert [w.kind for w in of(events, BusWarning)] == ["id_conflict", "id_conflict"]
    assert slave.slave_id != 0x2222
    assert of(events, SlaveLinked)[0].slave_id == slave.slave_id


def test_a_slave_that_changes_its_id_is_followed():
    master, (slave,), bus, _ = setup()
    linked(bus)
    master.set_offer(16)
    bus.run_for(3)
    slave.slave_id = 0x4321
    events = bus.run_for(30)
    assert [e.slave_id for e in of(events, SlaveLinked)] == [0x4321]
    assert [e.slave_id for e in of(events, SlaveLost)] == [0x1234]
    assert master.slaves == (0x4321,)
    assert slave.offered_centiamps == 1600


def test_at_most_three_slaves_and_a_silent_one_makes_room():
    configs = [SlaveConfig(slave_id=0x1000 + i, sign=i) for i in range(4)]
    master, slaves, bus, wire = setup(configs)
    events = bus.run_for(5)
    assert len(of(events, SlaveLinked)) == 3
    refused = [w.slave_id for w in of(events, BusWarning) if w.kind == "too_many_slaves"]
    assert len(refused) >= 1 and len(set(refused)) == 1
    assert not wire.heartbeats_to(master, refused[0])
    linked_ids = set(master.slaves)
    quiet = next(s for s in slaves if s.slave_id in linked_ids)
    wire.muted.add(id(quiet))
    events = bus.run_for(15)
    assert of(events, SlaveLost)[0].slave_id == quiet.slave_id
    assert refused[0] in master.slaves and master.counters.evicted_slaves == 1


def test_polls_and_vin_queries_never_starve_heartbeats():
    configs = [SlaveConfig(slave_id=0x1000 + i, sign=i) for i in range(3)]
    master, slaves, bus, wire = setup(configs, wiring_limit_a=10, circuit_limit_a=30)
    linked(bus)
    master.set_offer(10)
    events = bus.run_for(130)
    for slave in slaves:
        times = [t for t, _ in wire.heartbeats_to(master, slave.slave_id)]
        assert max(b - a for a, b in zip(times, times[1:])) <= 1.2
        polls = [m for _, m in wire.sent_by(master, Query) if m.slave_id == slave.slave_id
                 and m.kind == QueryKind.KWH_VOLTAGE]
        assert 2 <= len(polls) <= 3
    assert {e.slave_id for e in of(events, VinRead)} == set(master.slaves)
    last = of(events, Reading)[-1]
    assert last.voltage_v == 230 and last.lifetime_wh == 0


def test_a_noisy_line_is_survived_and_counted():
    master, (slave,), bus, wire = setup()
    noise = random.Random(3)

    def mangle(data: bytes) -> bytes:
        data = bytearray(data)
        if noise.random() < 0.1:
            data[noise.randrange(len(data))] ^= 1 << noise.randrange(8)
        if noise.random() < 0.3:
            data = bytearray(noise.randbytes(noise.randrange(1, 6))) + data
        return bytes(data)

    wire.mangle = mangle
    events = bus.run_for(60)
    master.set_offer(16)
    events += bus.run_for(30)
    assert of(events, SlaveLinked) and not of(events, SlaveLost)
    stats = master.receiver.stats
    assert stats.frames > 50 and stats.noise_bytes > 0 and stats.errors() > 0
    assert slave.offered_centiamps == 1600


def test_another_master_on_the_bus_is_reported():
    master = TwcMaster(MasterSettings(wiring_limit_a=32, master_id=0x7777))
    events = master.receive(codec.encode(MasterLinkready1(0x5555, 1)) * 2, 0.0)
    events += master.receive(codec.encode(MasterLinkready1(0x7777, 1)), 0.1)
    assert [w.kind for w in of(events, BusWarning)] == ["foreign_master"]
    assert master.counters.foreign_master_frames == 2 and master.counters.own_echoes == 1


def test_unexpected_replies_are_counted_not_trusted():
    master = TwcMaster(MasterSettings(wiring_limit_a=32, master_id=0x7777))
    events = master.receive(codec.encode(codec.SlaveHeartbeat(0x1234, 0x7777, 1, 3200, 3000)), 0.0)
    events += master.receive(codec.encode(codec.KwhVoltageReport(0x1234, 5, (230, 0, 0))), 0.0)
    assert events == [] and master.counters.unexpected_replies == 2


def test_vin_check_digit():
    assert vin_is_valid("1M8GDM9AXKP042788")
    assert vin_is_valid(SimpleCar.vin)
    assert not vin_is_valid("1M8GDM9A1KP042788")
    assert not vin_is_valid("\0" * 17)
