"""A simulated Tesla Wall Connector Gen 2 in slave mode (rotary switch at F), sans-IO.

It behaves as ``/work/shared/reference/twc-gen2-rs485.md`` describes a real unit: slave
linkready every 10 s until a master heartbeats it (and a burst of five after the second
master linkready2), heartbeat replies that mirror the last non-zero limit, states
00/01/03/04/08 and the protocol-2 command echoes, a car load that draws a little below
the offer, ``FD EB`` lifetime kWh and volts, ``FC B1``/``FC B2`` on firmware 4.5.3, the
contactor opening after 30 s without heartbeats, and a car that refuses to charge after
three such interruptions until it is re-plugged.

The car is pluggable (:class:`VehicleLoad`) so a charge-session simulator can drive this
unit and a simulated car from one physical model. The unit's lifetime energy is
integrated exactly in integer units (volts x centiamps x microseconds), because the wall
unit meters what it sells from these numbers.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Callable, Protocol

from distributedcharge import log
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
    PlugStateReport,
    Query,
    QueryKind,
    SerialReport,
    SlaveHeartbeat,
    SlaveLinkready,
    SlaveState,
    VinReport,
)
from distributedcharge.units import NJ_PER_KWH, US_PER_S

_log = log.get("sim.twc_slave")

# volts x centiamps x microseconds is 1e-8 J, which is 10 nJ.
NJ_PER_VOLT_CENTIAMP_US = 10

EXTENDED_FIRMWARE = (4, 5, 3)
PROTOCOL_MIN_CENTIAMPS = {1: 500, 2: 600}


class VehicleLoad(Protocol):
    """The car behind the cable, as the Wall Connector sees it."""

    plugged: bool
    vin: str | None

    def draw_centiamps(self, offered_centiamps: int, now: float) -> int:
        """Current the car draws at ``now`` when the pilot offers ``offered_centiamps``."""

    def power_interrupted(self, now: float) -> None:
        """The contactor opened under the car without a CAN message."""

    def plug(self, now: float) -> None: ...

    def unplug(self, now: float) -> None: ...


@dataclass
class SimpleCar:
    """A car that ramps its draw up to ``draw_percent`` % of the offer.

    It follows a lowered offer at once, takes nothing below 1 A, and after
    ``refuse_after_interruptions`` power interruptions in one plug-in refuses to charge
    until it is unplugged and plugged in again.
    """

    plugged: bool = True
    vin: str | None = "5YJ3E1EA0KF000316"
    draw_percent: int = 97
    ramp_centiamps_per_s: int = 1_000
    refuse_after_interruptions: int = 3
    interruptions: int = 0
    _draw: int = 0
    _last: float | None = None

    @property
    def refusing(self) -> bool:
        return self.interruptions >= self.refuse_after_interruptions

    def draw_centiamps(self, offered_centiamps: int, now: float) -> int:
        elapsed = 0.0 if self._last is None else max(0.0, now - self._last)
        self._last = now
        if not self.plugged or self.refusing or offered_centiamps < 100:
            self._draw = 0
            return 0
        target = offered_centiamps * self.draw_percent // 100
        if target <= self._draw:
            self._draw = target
        else:
            self._draw = min(target, self._draw + int(elapsed * self.ramp_centiamps_per_s))
        return self._draw

    def power_interrupted(self, now: float) -> None:
        if self._draw > 0:
            self.interruptions += 1
        self._draw = 0

    def plug(self, now: float) -> None:
        self.plugged = True
        self.interruptions = 0
        self._draw = 0

    def unplug(self, now: float) -> None:
        self.plugged = False
        self._draw = 0


@dataclass(frozen=True)
class SlaveConfig:
    slave_id: int | None = None
    sign: int | None = None
    max_centiamps: int = 3200
    protocol: int = 2
    firmware: tuple[int, int, int, int] | None = (4, 5, 3, 0)
    volts: tuple[int, int, int] = (230, 0, 0)
    lifetime_kwh: int = 0
    serial: bytes = b"A17J0012345"
    # Real units follow each frame with one line-turnaround byte that receivers skip.
    trailer: bytes = b"\xfe"
    linkready_interval: float = 10.0
    master_silence: float = 10.0
    power_off_after: float = 30.0
    starting_duration: float = 2.0


@dataclass
class SlaveCounters:
    heartbeats_answered: int = 0
    queries_answered: int = 0
    id_changes: int = 0
    power_offs: int = 0
    highest_limit_centiamps: int = 0


@dataclass
class _Timers:
    next_linkready: float | None = None
    burst_left: int = 0
    next_burst: float | None = None
    linkready2_window_start: float | None = None
    linkready2_seen: int = 0
    last_burst: float | None = None
    starting_until: float | None = None
    lowered_until: float | None = None


class TwcSlave:
    """``receive(data, now)`` and ``tick(now)`` in, ``bytes_to_send()`` out."""

    def __init__(
        self,
        config: SlaveConfig | None = None,
        load: VehicleLoad | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.config = config or SlaveConfig()
        if self.config.protocol not in (1, 2):
            raise ValueError("protocol must be 1 or 2")
        self.load: VehicleLoad = load if load is not None else SimpleCar()
        self._rng = rng or random.Random()
        self.slave_id = self.config.slave_id if self.config.slave_id is not None else self._random_id()
        self.sign = self.config.sign if self.config.sign is not None else self._rng.randrange(256)
        self.counters = SlaveCounters()
        self.receiver = FrameReceiver()
        self.energy_nj = 0
        self._tx = bytearray()
        self._boot(None)

    def _random_id(self) -> int:
        return self._rng.randrange(1, 0xFFFF)

    def _boot(self, now: float | None) -> None:
        self.master_id: int | None = None
        self._last_heartbeat: float | None = None
        self._limit = 0
        self._reported_max = 0
        self._charging_session = False
        self._stopped_by_command = False
        self._powered_off = False
        self._error_bitmap: int | None = None
        self._adjustment_done = False
        self.actual_centiamps = 0
        self._now = now
        self._last_us: int | None = None if now is None else round(now * US_PER_S)
        self._timers = _Timers(next_linkready=now)

    # -- controls for people and simulators ---------------------------------------------

    def plug(self, now: float) -> None:
        self._advance(now)
        self.load.plug(now)
        self._charging_session = False
        _log.info("twcsim_plugged", slave=f"{self.slave_id:04X}")

    def unplug(self, now: float) -> None:
        self._advance(now)
        self.load.unplug(now)
        self._charging_session = False
        self._stopped_by_command = False
        self.actual_centiamps = 0
        _log.info("twcsim_unplugged", slave=f"{self.slave_id:04X}")

    def restart(self, now: float) -> None:
        """Power cycle: the ID survives (it is in flash), the sign and the link do not."""
        self._advance(now)
        if self.actual_centiamps:
            self.load.power_interrupted(now)
        self.sign = self._rng.randrange(256)
        self._boot(now)

    # -- what the unit reports ------------------------------------------------------------

    @property
    def extended(self) -> bool:
        firmware = self.config.firmware
        return self.config.protocol == 2 and firmware is not None and tuple(firmware[:3]) >= EXTENDED_FIRMWARE

    @property
    def lifetime_kwh(self) -> int:
        return self.config.lifetime_kwh + self.energy_nj // NJ_PER_KWH

    @property
    def relay_closed(self) -> bool:
        return self.load.plugged and self._pilot_centiamps() > 0 and not self._starting()

    @property
    def linked(self) -> bool:
        return self._last_heartbeat is not None and self._error_bitmap is None

    @property
    def state(self) -> int:
        if self._error_bitmap is not None:
            return SlaveState.ERROR
        if not self.load.plugged:
            return SlaveState.READY
        if self._stopped_by_command or self._powered_off:
            return SlaveState.PLUGGED_DO_NOT_CHARGE
        if self._pilot_centiamps() == 0:
            return SlaveState.PLUGGED_DO_NOT_CHARGE if self._charging_session else SlaveState.PLUGGED_READY
        if self._starting():
            return SlaveState.STARTING
        if self.actual_centiamps > 0:
            return SlaveState.CHARGING
        return SlaveState.PLUGGED_DO_NOT_CHARGE

    @property
    def offered_centiamps(self) -> int:
        """What the pilot signal offers the car right now."""
        return self._pilot_centiamps()

    # -- sans-IO interface ----------------------------------------------------------------

    def bytes_to_send(self) -> bytes:
        data, self._tx = bytes(self._tx), bytearray()
        return data

    def tick(self, now: float) -> None:
        self._advance(now)
        self.receiver.expire(now)
        timers = self._timers
        if self._error_bitmap is not None:
            return
        if self._last_heartbeat is not None and now - self._last_heartbeat >= self.config.power_off_after:
            if not self._powered_off:
                self._powered_off = True
                self.counters.power_offs += 1
                if self.actual_centiamps:
                    self.load.power_interrupted(now)
                self.actual_centiamps = 0
                _log.info("twcsim_power_off_no_heartbeat", slave=f"{self.slave_id:04X}")
        if self._master_silent(now) and (timers.next_linkready is None or now >= timers.next_linkready):
            self._send_linkready()
            timers.next_linkready = now + self.config.linkready_interval
        if timers.burst_left and timers.next_burst is not None and now >= timers.next_burst:
            self._send_linkready()
            timers.burst_left -= 1
            timers.next_burst = now + 0.1 if timers.burst_left else None
        if timers.lowered_until is not None and now >= timers.lowered_until:
            timers.lowered_until = None
            self._adjustment_done = True

    def receive(self, data: bytes, now: float) -> None:
        self._advance(now)
        for message in self.receiver.feed(data, now):
            self._handle(message, now)

    # -- internals ------------------------------------------------------------------------

    def _master_silent(self, now: float) -> bool:
        return self._last_heartbeat is None or now - self._last_heartbeat >= self.config.master_silence

    def _starting(self) -> bool:
        until = self._timers.starting_until
        return until is not None and self._now is not None and self._now < until

    def _pilot_centiamps(self) -> int:
        if not self.load.plugged or self._stopped_by_command or self._powered_off:
            return 0
        limit = self._limit
        if self._timers.lowered_until is not None:
            limit = max(0, limit - 200)
        if limit == 0 and self.config.protocol == 2 and self._charging_session:
            # Protocol 2 cannot stop a car with 0 A: the car keeps the minimum.
            return PROTOCOL_MIN_CENTIAMPS[2]
        return limit

    def _advance(self, now: float) -> None:
        now_us = round(now * US_PER_S)
        if self._last_us is not None and now_us > self._last_us:
            volts = sum(self.config.volts)
            self.energy_nj += volts * self.actual_centiamps * (now_us - self._last_us) * NJ_PER_VOLT_CENTIAMP_US
        if self._last_us is None or now_us > self._last_us:
            self._last_us = now_us
            self._now = now
        pilot = self._pilot_centiamps()
        if pilot > 0 and not self._charging_session and self.load.plugged:
            self._charging_session = True
            self._timers.starting_until = now + self.config.starting_duration
        offered_to_car = 0 if self._starting() else pilot
        self.actual_centiamps = self.load.draw_centiamps(offered_to_car, now)

    def _send(self, message: codec.Message) -> None:
        self._tx += codec.encode(message) + self.config.trailer

    def _send_linkready(self) -> None:
        self._send(SlaveLinkready(self.slave_id, self.sign, self.config.max_centiamps, self.config.protocol))

    def _change_id(self) -> None:
        old = self.slave_id
        while self.slave_id == old:
            self.slave_id = self._random_id()
        self.sign = self._rng.randrange(256)
        self.counters.id_changes += 1
        self.master_id = None
        self._last_heartbeat = None
        self._timers.next_linkready = None
        _log.info("twcsim_id_conflict_new_id", old=f"{old:04X}", new=f"{self.slave_id:04X}")

    def _handle(self, message: codec.Message, now: float) -> None:
        if isinstance(message, (MasterLinkready1, MasterLinkready2)):
            if message.master_id == self.slave_id:
                self._change_id()
            elif isinstance(message, MasterLinkready2):
                self._linkready2(now)
        elif self._error_bitmap is not None:
            return
        elif isinstance(message, MasterHeartbeat) and message.slave_id == self.slave_id:
            self._heartbeat(message, now)
        elif isinstance(message, Query) and message.slave_id == self.slave_id:
            self._query(message)
        elif isinstance(message, ChargeCommand) and message.slave_id == self.slave_id:
            self._charge_command(message, now)

    def _linkready2(self, now: float) -> None:
        timers = self._timers
        if timers.linkready2_window_start is None or now - timers.linkready2_window_start > 5.0:
            timers.linkready2_window_start = now
            timers.linkready2_seen = 0
        timers.linkready2_seen += 1
        recently_answered = timers.last_burst is not None and now - timers.last_burst < 5.0
        if timers.linkready2_seen == 2 and not recently_answered:
            timers.burst_left = 5
            timers.next_burst = now + 0.2
            timers.last_burst = now

    def _heartbeat(self, message: MasterHeartbeat, now: float) -> None:
        self.master_id = message.master_id
        self._last_heartbeat = now
        if self._powered_off:
            self._powered_off = False
            self._charging_session = False
        command = message.command
        value = message.centiamps
        protocol = self.config.protocol
        echo: int | None = None
        if command == HeartbeatCommand.ERROR:
            self._error_bitmap = value >> 8
            _log.warning("twcsim_error_latched", bitmap=f"{self._error_bitmap:08b}")
        elif command == HeartbeatCommand.LIMIT_P1 and (protocol == 1 or not self._charging_session):
            self._set_limit(value)
        elif command == HeartbeatCommand.LIMIT and protocol == 2:
            if value != self._limit:
                echo = SlaveState.ECHO_LIMIT
            self._set_limit(value)
        elif command == HeartbeatCommand.RAISE_2A and protocol == 2:
            self._set_limit(self._limit + 200)
            echo = SlaveState.ECHO_RAISE
        elif command == HeartbeatCommand.LOWER_2A and protocol == 2:
            self._timers.lowered_until = now + 10.0
            echo = SlaveState.ECHO_LOWER
        self._advance(now)
        if echo is None and self._adjustment_done:
            echo, self._adjustment_done = SlaveState.ADJUSTMENT_DONE, False
        state = echo if echo is not None else self.state
        self.counters.heartbeats_answered += 1
        self._send(
            SlaveHeartbeat(
                self.slave_id, message.master_id, state, self._reported_max, self.actual_centiamps, protocol
            )
        )

    def _set_limit(self, centiamps: int) -> None:
        centiamps = min(centiamps, 0xFFFF)
        self._limit = centiamps
        if centiamps:
            self._reported_max = centiamps
        self.counters.highest_limit_centiamps = max(self.counters.highest_limit_centiamps, centiamps)

    def _query(self, message: Query) -> None:
        if not self.extended:
            return
        reply: codec.Message | None = None
        if message.kind == QueryKind.KWH_VOLTAGE:
            halves = tuple(self.actual_centiamps // 50 if volts else 0 for volts in self.config.volts)
            reply = KwhVoltageReport(self.slave_id, self.lifetime_kwh, self.config.volts, halves)
        elif message.kind in codec.VIN_QUERIES:
            part = codec.VIN_QUERIES.index(message.kind)
            vin = (self.load.vin or "") if self.load.plugged else ""
            chars = vin.encode("ascii", "replace")[part * 7:part * 7 + 7]
            reply = VinReport(self.slave_id, part, chars.ljust(7, b"\0"))
        elif message.kind == QueryKind.FIRMWARE and self.config.firmware is not None:
            reply = FirmwareReport(self.slave_id, *self.config.firmware)
        elif message.kind == QueryKind.SERIAL:
            reply = SerialReport(self.slave_id, self.config.serial)
        elif message.kind == QueryKind.PLUG_STATE:
            plug_state = 0 if not self.load.plugged else 1 if self.actual_centiamps else 3
            reply = PlugStateReport(self.slave_id, plug_state)
        if reply is not None:
            self.counters.queries_answered += 1
            self._send(reply)

    def _charge_command(self, message: ChargeCommand, now: float) -> None:
        if not self.extended:
            return
        if message.kind == ChargeCommandKind.STOP:
            if not self._stopped_by_command:
                if self.actual_centiamps:
                    self.load.power_interrupted(now)
                self._stopped_by_command = True
                self.actual_centiamps = 0
                _log.info("twcsim_stop_command", slave=f"{self.slave_id:04X}")
        elif self._stopped_by_command:
            self._stopped_by_command = False
            self._charging_session = False
            _log.info("twcsim_start_command", slave=f"{self.slave_id:04X}")
        self._send(ChargeCommandAck(message.kind, self.slave_id))


class BusEndpoint(Protocol):
    def receive(self, data: bytes, now: float) -> Any: ...

    def tick(self, now: float) -> Any: ...

    def bytes_to_send(self) -> bytes: ...


class SimulatedBus:
    """An RS-485 bus in simulated time: whatever one endpoint sends, all others hear.

    ``line`` may rewrite the bytes on their way (noise, lost frames); ``run`` collects
    whatever the endpoints' ``tick`` and ``receive`` return (the master's events).
    """

    def __init__(
        self,
        endpoints: list[BusEndpoint],
        step: float = 0.01,
        line: Callable[[BusEndpoint, bytes, float], bytes] | None = None,
    ) -> None:
        self.endpoints = endpoints
        self.step = step
        self.line = line
        self.now = 0.0
        self._steps = 0

    def run_for(self, seconds: float) -> list[Any]:
        return self.run_until(self.now + seconds)

    def run_until(self, until: float) -> list[Any]:
        events: list[Any] = []
        while self.now < until:
            self._steps += 1
            self.now = round(self._steps * self.step, 9)
            for endpoint in list(self.endpoints):
                events += endpoint.tick(self.now) or []
                self._deliver(endpoint, events)
        return events

    def _deliver(self, sender: BusEndpoint, events: list[Any]) -> None:
        pending = [(sender, sender.bytes_to_send())]
        while pending:
            source, data = pending.pop(0)
            if self.line is not None and data:
                data = self.line(source, data, self.now)
            if not data:
                continue
            for endpoint in list(self.endpoints):
                if endpoint is not source:
                    events += endpoint.receive(data, self.now) or []
                    reply = endpoint.bytes_to_send()
                    if reply:
                        pending.append((endpoint, reply))
