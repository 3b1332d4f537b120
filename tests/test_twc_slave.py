"""The simulated Wall Connector slave behaves as the reference describes a real one."""

from __future__ import annotations

import random

import pytest
import structlog

from distributedcharge.sim.twc_slave import NJ_PER_VOLT_CENTIAMP_US, SimpleCar, SlaveConfig, TwcSlave
from distributedcharge.twc import codec
from distributedcharge.twc.codec import (
    ChargeCommand,
    ChargeCommandAck,
    ChargeCommandKind,
    FirmwareReport,
    FrameReceiver,
    HeartbeatCommand,
    KwhVoltageReport,
    MasterHeartbeat,
    MasterLinkready1,
    MasterLinkready2,
    Query,
    QueryKind,
    SlaveHeartbeat,
    SlaveLinkready,
    SlaveState,
    VinReport,
)
from distributedcharge.units import NJ_PER_KWH

MASTER = 0x7777
SLAVE = 0x1234


@pytest.fixture(autouse=True)
def default_logging():
    """Another test may leave structlog writing to a stream pytest has since closed."""
    structlog.reset_defaults()


class Harness:
    """Drives one slave as a master would, in simulated time."""

    def __init__(self, slave: TwcSlave) -> None:
        self.slave = slave
        self.receiver = FrameReceiver()
        self.now = 0.0
        self.sent: list[tuple[float, codec.Message]] = []

    def collect(self) -> list[codec.Message]:
        out = self.receiver.feed(self.slave.bytes_to_send(), self.now)
        self.sent += [(self.now, m) for m in out]
        return out

    def send(self, message: codec.Message) -> list[codec.Message]:
        self.slave.receive(codec.encode(message), self.now)
        return self.collect()

    def heartbeat(self, command: int = HeartbeatCommand.NOP, centiamps: int = 0) -> SlaveHeartbeat:
        (reply,) = self.send(MasterHeartbeat(MASTER, self.slave.slave_id, command, centiamps,
                                             protocol=self.slave.config.protocol))
        return reply

    def run(self, seconds: float, heartbeats: bool = True, step: float = 0.05) -> None:
        end = self.now + seconds
        next_heartbeat = self.now
        while self.now < end - 1e-9:
            self.now = round(self.now + step, 6)
            self.slave.tick(self.now)
            self.collect()
            if heartbeats and self.now >= next_heartbeat:
                self.heartbeat()
                next_heartbeat = self.now + 1.0


def slave(**overrides) -> TwcSlave:
    car = overrides.pop("car", None) or SimpleCar()
    overrides.setdefault("slave_id", SLAVE)
    overrides.setdefault("sign", 0x42)
    return TwcSlave(SlaveConfig(**overrides), car, random.Random(1))


def charging(**overrides) -> Harness:
    h = Harness(slave(**overrides))
    h.run(0.1)
    h.heartbeat(HeartbeatCommand.LIMIT if h.slave.config.protocol == 2 else HeartbeatCommand.LIMIT_P1, 1600)
    h.run(6)
    assert h.slave.state == SlaveState.CHARGING
    return h


def test_linkready_every_ten_seconds_until_a_master_heartbeats():
    h = Harness(slave())
    h.run(35, heartbeats=False)
    times = [t for t, m in h.sent if isinstance(m, SlaveLinkready)]
    assert times == [0.05, 10.05, 20.05, 30.05]
    assert h.sent[0][1] == SlaveLinkready(SLAVE, 0x42, 3200, 2)
    h.heartbeat()
    h.run(30)
    assert len([m for _, m in h.sent if isinstance(m, SlaveLinkready)]) == 4


def test_the_second_linkready2_gets_five_linkreadies():
    h = Harness(slave())
    h.run(0.1, heartbeats=False)
    h.sent.clear()
    h.send(MasterLinkready2(MASTER, 1))
    h.run(1, heartbeats=False)
    assert not h.sent
    h.send(MasterLinkready2(MASTER, 1))
    h.run(1, heartbeats=False)
    times = [t for t, m in h.sent if isinstance(m, SlaveLinkready)]
    assert len(times) == 5 and 0.15 <= times[0] - 1.1 <= 0.25


def test_a_master_linkready_with_our_id_makes_the_slave_pick_a_new_id_and_sign():
    h = Harness(slave())
    h.send(MasterLinkready1(SLAVE, 9))
    assert h.slave.slave_id != SLAVE and h.slave.sign != 0x42
    h.run(0.1, heartbeats=False)
    assert h.sent[-1][1] == SlaveLinkready(h.slave.slave_id, h.slave.sign, 3200, 2)


def test_states_follow_plug_offer_and_charge():
    h = Harness(slave(car=SimpleCar(plugged=False)))
    assert h.heartbeat().state == SlaveState.READY
    h.slave.plug(h.now)
    assert h.heartbeat().state == SlaveState.PLUGGED_READY
    reply = h.heartbeat(HeartbeatCommand.LIMIT, 1600)
    assert (reply.state, reply.max_centiamps) == (SlaveState.ECHO_LIMIT, 1600)
    assert h.heartbeat().state == SlaveState.STARTING
    h.run(5)
    reply = h.heartbeat()
    assert reply.state == SlaveState.CHARGING and reply.actual_centiamps == 1552
    h.slave.unplug(h.now)
    assert h.heartbeat() == SlaveHeartbeat(SLAVE, MASTER, SlaveState.READY, 1600, 0)


def test_protocol_2_keeps_the_car_at_six_amps_on_zero():
    h = charging()
    reply = h.heartbeat(HeartbeatCommand.LIMIT, 0)
    h.run(3)
    reply = h.heartbeat()
    assert reply.state == SlaveState.CHARGING and reply.actual_centiamps == 582
    assert reply.max_centiamps == 1600


def test_protocol_1_stops_the_car_on_zero():
    h = charging(protocol=1, firmware=None)
    h.heartbeat(HeartbeatCommand.LIMIT_P1, 0)
    h.run(2)
    reply = h.heartbeat()
    assert reply.state == SlaveState.PLUGGED_DO_NOT_CHARGE and reply.actual_centiamps == 0


def test_command_05_is_ignored_on_protocol_2_once_charging():
    h = charging()
    h.heartbeat(HeartbeatCommand.LIMIT_P1, 1000)
    h.run(2)
    assert h.slave.offered_centiamps == 1600
    h.heartbeat(HeartbeatCommand.LIMIT, 1000)
    assert h.slave.offered_centiamps == 1000


def test_an_absurd_limit_is_mirrored_and_obeyed():
    h = charging()
    reply = h.heartbeat(HeartbeatCommand.LIMIT, 0xFFFF)
    assert reply.max_centiamps == 0xFFFF and h.slave.counters.highest_limit_centiamps == 0xFFFF


def test_stop_and_start_commands_on_4_5_3():
    h = charging()
    assert h.send(ChargeCommand(ChargeCommandKind.STOP, MASTER, SLAVE)) == [
        ChargeCommandAck(ChargeCommandKind.STOP, SLAVE)
    ]
    reply = h.heartbeat()
    assert (reply.state, reply.actual_centiamps) == (SlaveState.PLUGGED_DO_NOT_CHARGE, 0)
    h.send(ChargeCommand(ChargeCommandKind.START, MASTER, SLAVE))
    h.run(6)
    assert h.heartbeat().state == SlaveState.CHARGING


def test_older_firmware_ignores_stop_and_queries():
    h = charging(firmware=(4, 0, 0, 0))
    assert h.send(ChargeCommand(ChargeCommandKind.STOP, MASTER, SLAVE)) == []
    assert h.send(Query(QueryKind.KWH_VOLTAGE, MASTER, SLAVE)) == []
    assert h.heartbeat().actual_centiamps > 1500


def test_thirty_seconds_without_heartbeats_cut_power_and_the_third_time_the_car_refuses():
    h = charging()
    for interruption in range(3):
        h.heartbeat()
        h.run(29.9, heartbeats=False)
        assert h.slave.actual_centiamps > 1500
        h.run(0.2, heartbeats=False)
        assert h.slave.actual_centiamps == 0 and h.slave.counters.power_offs == interruption + 1
        h.run(8)
    assert h.slave.load.refusing and h.slave.actual_centiamps == 0
    h.slave.unplug(h.now)
    h.slave.plug(h.now)
    h.run(8)
    assert h.slave.actual_centiamps > 1500


def test_lifetime_energy_is_exact_and_reported():
    class Steady:
        plugged, vin = True, None

        def draw_centiamps(self, offered, now):
            return 1000 if offered >= 100 else 0

        def power_interrupted(self, now):
            pass

    h = Harness(slave(car=Steady(), starting_duration=0.0, volts=(230, 0, 0), lifetime_kwh=7))
    h.run(0.1)
    h.heartbeat(HeartbeatCommand.LIMIT, 1600)
    started = h.now
    h.run(3600, step=0.25)
    elapsed_us = round(h.now * 1_000_000) - round(started * 1_000_000)
    assert h.slave.energy_nj == 230 * 1000 * elapsed_us * NJ_PER_VOLT_CENTIAMP_US
    assert h.slave.energy_nj // NJ_PER_KWH == 2
    (report,) = h.send(Query(QueryKind.KWH_VOLTAGE, MASTER, SLAVE, length=15))
    assert report == KwhVoltageReport(SLAVE, 9, (230, 0, 0), (20, 0, 0))


def test_vin_and_firmware_queries():
    h = charging()
    parts = [h.send(Query(kind, MASTER, SLAVE))[0] for kind in codec.VIN_QUERIES]
    assert b"".join(p.chars for p in parts).decode() == SimpleCar.vin + "\0" * 4
    assert h.send(Query(QueryKind.FIRMWARE, MASTER, SLAVE)) == [FirmwareReport(SLAVE, 4, 5, 3, 0)]
    h.slave.unplug(h.now)
    assert h.send(Query(QueryKind.VIN_PART_1, MASTER, SLAVE)) == [VinReport(SLAVE, 0, bytes(7))]


def test_an_error_command_latches_the_slave_until_restart():
    h = charging()
    assert h.heartbeat(HeartbeatCommand.ERROR, 0x0200).state == SlaveState.ERROR
    assert h.send(MasterHeartbeat(MASTER, SLAVE)) == []
    h.slave.restart(h.now)
    h.run(0.1, heartbeats=False)
    assert h.heartbeat().state == SlaveState.PLUGGED_READY


def test_messages_for_other_slaves_are_ignored():
    h = Harness(slave())
    assert h.send(MasterHeartbeat(MASTER, 0x9999, HeartbeatCommand.LIMIT, 3200)) == []
    assert h.slave.offered_centiamps == 0


def test_protocol_1_slave_takes_the_nine_byte_heartbeats_twcmanager_sends():
    h = Harness(slave(protocol=1, firmware=None))
    h.run(0.1, heartbeats=False)
    (reply,) = h.send(MasterHeartbeat(MASTER, SLAVE, HeartbeatCommand.LIMIT_P1, 1600, protocol=2))
    assert reply.protocol == 1 and reply.max_centiamps == 1600
    assert len(codec.encode(reply)) == 16
