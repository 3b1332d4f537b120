"""A safe TWC Gen 2 load-sharing master, sans-IO.

Bytes and ``now`` (monotonic seconds) go in through :meth:`TwcMaster.receive` and
:meth:`TwcMaster.tick`; events come back from both; frames to transmit come out of
:meth:`TwcMaster.bytes_to_send`. No sockets, sleeps or threads in here.

A slave accepts any current it is offered, even above its rating, so this class is the
only safety layer between the sale and the wiring (reference §4). Every offer is clamped
to the slave's reported maximum, the per-TWC wiring limit and what is left of the shared
circuit (other slaves counted at the larger of their offer and their draw, which is
stricter than the reference so that two slaves raised in the same second cannot add up
past the breaker), whole amps only, at least the protocol minimum or an explicit 0, and a
reduction at most every 5 s except when stopping a sale.

Stopping is never assumed: :meth:`TwcMaster.stop_charging` offers 0 A, sends ``FC B2``
where the firmware has it, and emits a :class:`StopResult` once two fresh heartbeat
replies show less than 1 A, or after the retries run out. Starting is reported the same
way (:class:`StartResult`, at least 1 A measured).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

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
    MasterIdle,
    MasterLinkready1,
    MasterLinkready2,
    Query,
    QueryKind,
    RawMessage,
    SlaveHeartbeat,
    SlaveLinkready,
    SlaveState,
    VinReport,
)

_log = log.get("twc.master")

PROTOCOL_MIN_AMPS = {1: 5, 2: 6}
MAX_SLAVES = 3
STOP_FIRMWARE = (4, 5, 3)
NO_CURRENT_CENTIAMPS = 100  # cars treat anything below 1 A as "not charging"
MEANINGFUL_STATES = {
    SlaveState.READY: False,
    SlaveState.CHARGING: True,
    SlaveState.PLUGGED_DO_NOT_CHARGE: True,
    SlaveState.PLUGGED_READY: True,
    SlaveState.STARTING: True,
}


def _fmt(twc_id: int) -> str:
    return f"{twc_id:04X}"


_VIN_VALUES = {**{str(d): d for d in range(10)}, **dict(zip("ABCDEFGH", range(1, 9))),
               **dict(zip("JKLMN", range(1, 6))), "P": 7, "R": 9, **dict(zip("STUVWXYZ", range(2, 10)))}
_VIN_WEIGHTS = (8, 7, 6, 5, 4, 3, 2, 10, 0, 9, 8, 7, 6, 5, 4, 3, 2)


def vin_is_valid(vin: str) -> bool:
    """17 characters without I, O or Q and a matching check digit in position 9."""
    if len(vin) != 17 or any(c not in _VIN_VALUES for c in vin):
        return False
    remainder = sum(_VIN_VALUES[c] * w for c, w in zip(vin, _VIN_WEIGHTS)) % 11
    return vin[8] == ("X" if remainder == 10 else str(remainder))


# -- events ------------------------------------------------------------------------------

@dataclass(frozen=True)
class SlaveLinked:
    slave_id: int
    protocol: int
    max_amps: int
    firmware: tuple[int, int, int] | None


@dataclass(frozen=True)
class SlaveLost:
    slave_id: int
    reason: str


@dataclass(frozen=True)
class SlaveStateChanged:
    slave_id: int
    state: int
    plugged: bool


@dataclass(frozen=True)
class Reading:
    """One heartbeat reply: measured current, last known volts and lifetime energy."""

    slave_id: int
    actual_centiamps: int
    voltage_v: int | None
    lifetime_wh: int | None
    offered_amps: int


@dataclass(frozen=True)
class StopResult:
    slave_id: int | None
    confirmed: bool
    attempts: int
    actual_centiamps: int | None
    reason: str


@dataclass(frozen=True)
class StartResult:
    slave_id: int | None
    confirmed: bool
    attempts: int
    actual_centiamps: int | None
    reason: str


@dataclass(frozen=True)
class VinRead:
    slave_id: int
    vin: str


@dataclass(frozen=True)
class BusWarning:
    """Something on the bus needs a person: ID conflicts, a second master, a full bus."""

    kind: str
    slave_id: int | None
    detail: str


Event = SlaveLinked | SlaveLost | SlaveStateChanged | Reading | StopResult | StartResult | VinRead | BusWarning


# -- configuration and bookkeeping -------------------------------------------------------

@dataclass(frozen=True)
class MasterSettings:
    wiring_limit_a: int
    circuit_limit_a: int | None = None  # all TWCs together; None: same as wiring_limit_a
    min_amps: int = 6
    master_id: int | None = None  # random when None
    sign: int | None = None
    heartbeat_interval: float = 1.0
    tx_gap: float = 0.1  # half-duplex bus: leave the slave time to answer each frame
    slave_timeout: float = 26.0
    reduce_interval: float = 5.0
    poll_interval: float = 60.0
    query_timeout: float = 2.0
    firmware_queries: int = 3
    vin_attempts: int = 3
    vin_retry_interval: float = 60.0
    stop_timeout: float = 10.0
    stop_attempts: int = 3
    foreign_master_warning_interval: float = 60.0

    def __post_init__(self) -> None:
        for name in ("wiring_limit_a", "min_amps", "stop_attempts"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive whole number, got {value!r}")
        if self.circuit_limit_a is not None and (
            not isinstance(self.circuit_limit_a, int) or self.circuit_limit_a < 1
        ):
            raise ValueError(f"circuit_limit_a must be a positive whole number, got {self.circuit_limit_a!r}")
        if self.master_id is not None and not 0 < self.master_id < 0xFFFF:
            raise ValueError(f"master_id must be in 0001..FFFE, got {self.master_id!r}")
        if self.sign is not None and not 0 <= self.sign <= 0xFF:
            raise ValueError(f"sign must be in 0..255, got {self.sign!r}")


@dataclass
class MasterCounters:
    id_conflicts: int = 0
    duplicate_ids: int = 0
    rejected_slaves: int = 0
    evicted_slaves: int = 0
    lost_slaves: int = 0
    slave_restarts: int = 0
    foreign_master_frames: int = 0
    own_echoes: int = 0
    unknown_messages: int = 0
    unexpected_replies: int = 0
    heartbeats_sent: int = 0
    stops_confirmed: int = 0
    stops_failed: int = 0


@dataclass
class _Switch:
    """A stop or start in progress, waiting for the measured current to confirm it."""

    kind: ChargeCommandKind
    attempts: int = 0
    since: float | None = None
    deadline: float | None = None
    good_readings: int = 0

    def satisfied_by(self, actual_centiamps: int, state: int) -> bool:
        if self.kind == ChargeCommandKind.STOP:
            return actual_centiamps < NO_CURRENT_CENTIAMPS and state != SlaveState.STARTING
        return actual_centiamps >= NO_CURRENT_CENTIAMPS


@dataclass
class _Slave:
    slave_id: int
    sign: int
    protocol: int
    max_centiamps: int
    last_rx: float
    next_heartbeat: float
    heartbeat_sent_at: float | None = None
    replies_since_heartbeat: int = 0
    duplicate: bool = False
    answered: bool = False
    announced: bool = False
    firmware: tuple[int, int, int] | None = None
    firmware_queries: int = 0
    extended_seen: bool = False
    state: int | None = None
    plugged: bool | None = None
    reported_max: int = 0
    actual: int = 0
    volts: int | None = None
    lifetime_kwh: int | None = None
    offered: int = 0
    last_offer_change: float = -math.inf
    last_sent: int | None = None
    switch: _Switch | None = None
    pending_command: ChargeCommandKind | None = None
    next_poll: float | None = None
    awaiting: QueryKind | None = None
    awaiting_until: float = -math.inf
    vin_parts: list[bytes] = field(default_factory=list)
    vin_attempts: int = 0
    next_vin_query: float | None = None
    vin_done: bool = False

    @property
    def supports_stop(self) -> bool:
        return self.extended_seen or (self.firmware is not None and self.firmware >= STOP_FIRMWARE)

    @property
    def drawn_amps(self) -> int:
        return -(-self.actual // 100)


class TwcMaster:
    def __init__(self, settings: MasterSettings, rng: random.Random | None = None) -> None:
        self.settings = settings
        self._rng = rng or random.Random()
        self.master_id = settings.master_id if settings.master_id is not None else self._rng.randrange(1, 0xFFFF)
        self.sign = settings.sign if settings.sign is not None else self._rng.randrange(256)
        self.receiver = FrameReceiver()
        self.counters = MasterCounters()
        self._slaves: dict[int, _Slave] = {}
        # Targets and halts are kept by ID, not in the slave record, so a slave that is
        # dropped and relinks (or links after a stop) cannot come back with power on.
        self._target = 0
        self._slave_targets: dict[int, int] = {}
        self._halt_all = False
        self._halted: set[int] = set()
        self._tx = bytearray()
        self._next_tx = -math.inf
        self._linkready_queue: list[codec.Message] = []
        self._events: list[Event] = []
        self._last_rx_at = -math.inf
        self._last_foreign_warning = -math.inf
        self.announce()

    # -- commands -------------------------------------------------------------------------

    @property
    def slaves(self) -> tuple[int, ...]:
        return tuple(self._slaves)

    def announce(self) -> None:
        """Queue the boot linkready burst (5 x linkready1, 5 x linkready2).

        Slaves answer the second linkready2 with linkreadies of their own, so after the
        serial link comes back the master finds its slaves in about a second instead of
        waiting up to 10 s for their periodic linkready.
        """
        if not self._linkready_queue:
            self._linkready_queue = [MasterLinkready1(self.master_id, self.sign)] * 5 + [
                MasterLinkready2(self.master_id, self.sign)
            ] * 5

    def set_offer(self, amps: int, slave_id: int | None = None) -> None:
        """Target current in whole amps, for one slave ID or (``None``) every slave.

        The offer actually sent is clamped and rate-limited per the safety rules. A
        per-slave target outlives the link, as a global one does.
        """
        if not isinstance(amps, int) or isinstance(amps, bool):
            raise TypeError(f"offers are whole amps, got {amps!r}")
        if amps < 0:
            raise ValueError(f"an offer cannot be negative, got {amps}")
        if slave_id is None:
            self._target = amps
            self._slave_targets.clear()
        else:
            self._slave_targets[slave_id] = amps

    def stop_charging(self, slave_id: int | None = None) -> None:
        """Cut power: explicit 0 A, ``FC B2`` where supported, confirmed by current.

        Emits one :class:`StopResult` per slave (or one with ``slave_id=None`` when no
        slave is linked) from a later :meth:`tick` or :meth:`receive`. The stop holds
        for slaves that link later, until :meth:`start_charging`.
        """
        if slave_id is None:
            self._halt_all = True
        else:
            self._halted.add(slave_id)
        targets = self._targets(slave_id)
        if not targets:
            self._emit(StopResult(slave_id, False, 0, None, "no linked slave to stop"))
        for slave in targets:
            self._begin_switch(slave, ChargeCommandKind.STOP)

    def start_charging(self, slave_id: int | None = None) -> None:
        """Lift a stop: offers follow the target again; ``FC B1`` where supported.

        Emits one :class:`StartResult` per slave once at least 1 A flows, or after the
        retries run out (a full car, or one that refuses until it is re-plugged).
        ``start_charging(ID)`` lifts a stop of that slave, not a stop of every slave.
        """
        if slave_id is None:
            self._halt_all = False
            self._halted.clear()
        else:
            self._halted.discard(slave_id)
        targets = [slave for slave in self._targets(slave_id) if not self._is_halted(slave)]
        if not targets:
            self._emit(StartResult(slave_id, False, 0, None, "no linked slave that may start"))
        for slave in targets:
            self._begin_switch(slave, ChargeCommandKind.START)

    def _begin_switch(self, slave: _Slave, kind: ChargeCommandKind) -> None:
        if slave.switch is not None:
            self._finish_switch(slave, False, f"cancelled by {kind.name.lower()}_charging")
        slave.pending_command = None
        slave.switch = _Switch(kind)

    def _is_halted(self, slave: _Slave) -> bool:
        return self._halt_all or slave.slave_id in self._halted

    def _targets(self, slave_id: int | None) -> list[_Slave]:
        if slave_id is None:
            return list(self._slaves.values())
        slave = self._slaves.get(slave_id)
        return [slave] if slave is not None else []

    # -- sans-IO interface ----------------------------------------------------------------

    def bytes_to_send(self) -> bytes:
        data, self._tx = bytes(self._tx), bytearray()
        return data

    def receive(self, data: bytes, now: float) -> list[Event]:
        if data:
            self._last_rx_at = now
        for message in self.receiver.feed(data, now):
            self._handle(message, now)
        return self._drain()

    def tick(self, now: float) -> list[Event]:
        self.receiver.expire(now)
        self._drop_silent_slaves(now)
        for slave in list(self._slaves.values()):
            self._advance_switch(slave, now)
            self._announce_if_ready(slave, now)
        bus_busy = self.receiver.in_frame and now - self._last_rx_at < self.settings.tx_gap
        if now >= self._next_tx and not bus_busy:
            message = self._next_message(now)
            if message is not None:
                self._tx += codec.encode(message)
                self._next_tx = now + self.settings.tx_gap
        return self._drain()

    def _emit(self, event: Event) -> None:
        self._events.append(event)

    def _drain(self) -> list[Event]:
        events, self._events = self._events, []
        return events

    # -- transmit scheduling --------------------------------------------------------------

    def _next_message(self, now: float) -> codec.Message | None:
        due = [s for s in self._slaves.values() if s.next_heartbeat <= now]
        if due:
            return self._heartbeat(min(due, key=lambda s: s.next_heartbeat), now)
        if self._linkready_queue:
            return self._linkready_queue.pop(0)
        for slave in self._slaves.values():
            if slave.pending_command is not None:
                kind, slave.pending_command = slave.pending_command, None
                return ChargeCommand(kind, self.master_id, slave.slave_id)
        # Queries go only where they cannot push a heartbeat back (#453: a VIN query storm
        # dropped the link every few minutes).
        quiet_until = now + 2 * self.settings.tx_gap
        if any(s.next_heartbeat < quiet_until for s in self._slaves.values()):
            return None
        for slave in self._slaves.values():
            query = self._query_for(slave, now)
            if query is not None:
                slave.awaiting = query
                slave.awaiting_until = now + self.settings.query_timeout
                return Query(query, self.master_id, slave.slave_id)
        return None

    def _heartbeat(self, slave: _Slave, now: float) -> MasterHeartbeat:
        amps = self._plan_offer(slave, now)
        limit = HeartbeatCommand.LIMIT if slave.protocol == 2 else HeartbeatCommand.LIMIT_P1
        # 0 A always goes out as an explicit limit: with a NOP the slave flips between
        # states 01 and 03 every second and clicks its relay.
        if amps == 0 or amps * 100 != slave.reported_max or amps != slave.last_sent:
            command, centiamps = limit, amps * 100
            slave.last_sent = amps
        else:
            command, centiamps = HeartbeatCommand.NOP, 0
        slave.next_heartbeat = now + self.settings.heartbeat_interval
        slave.heartbeat_sent_at = now
        slave.replies_since_heartbeat = 0
        self.counters.heartbeats_sent += 1
        return MasterHeartbeat(self.master_id, slave.slave_id, command, centiamps, False, slave.protocol)

    def _plan_offer(self, slave: _Slave, now: float) -> int:
        if self._is_halted(slave):
            desired = 0
        else:
            target = self._slave_targets.get(slave.slave_id, self._target)
            cap = min(slave.max_centiamps // 100, self.settings.wiring_limit_a)
            desired = min(target, cap, self._budget(slave))
            if desired < max(self.settings.min_amps, PROTOCOL_MIN_AMPS[slave.protocol]):
                desired = 0
            if desired < slave.offered and now - slave.last_offer_change < self.settings.reduce_interval:
                # Hold the previous offer, but never above a hard limit that has since
                # come down (a slave relinking with a lower rating).
                desired = min(slave.offered, cap)
        if desired != slave.offered:
            _log.info("twc_offer", slave=_fmt(slave.slave_id), amps=desired, previous=slave.offered)
            slave.offered = desired
            slave.last_offer_change = now
        return slave.offered

    def _budget(self, slave: _Slave) -> int:
        circuit = self.settings.circuit_limit_a or self.settings.wiring_limit_a
        used = 0
        for other in self._slaves.values():
            if other is not slave:
                used += max(other.offered, other.drawn_amps) * (2 if other.duplicate else 1)
        budget = max(0, circuit - used)
        return budget // 2 if slave.duplicate else budget

    def _query_for(self, slave: _Slave, now: float) -> QueryKind | None:
        if slave.protocol != 2 or not slave.answered:
            return None
        if slave.awaiting is not None and now < slave.awaiting_until:
            return None
        if slave.awaiting is not None:
            self._query_timed_out(slave, now)
        if slave.firmware is None and not slave.extended_seen and slave.firmware_queries < self.settings.firmware_queries:
            slave.firmware_queries += 1
            return QueryKind.FIRMWARE
        if not slave.announced:
            return None
        if slave.next_poll is not None and now >= slave.next_poll and self._may_have_extended(slave):
            slave.next_poll = now + self.settings.poll_interval
            return QueryKind.KWH_VOLTAGE
        if slave.next_vin_query is not None and now >= slave.next_vin_query and self._may_have_extended(slave):
            slave.next_vin_query = None
            slave.vin_attempts += 1
            slave.vin_parts = []
            return codec.VIN_QUERIES[0]
        if slave.vin_parts and len(slave.vin_parts) < 3 and slave.next_vin_query is None and not slave.vin_done:
            return codec.VIN_QUERIES[len(slave.vin_parts)]
        return None

    def _query_timed_out(self, slave: _Slave, now: float) -> None:
        kind, slave.awaiting = slave.awaiting, None
        if kind in codec.VIN_QUERIES and not slave.vin_done:
            slave.vin_parts = []
            self._schedule_vin_retry(slave, now)

    def _may_have_extended(self, slave: _Slave) -> bool:
        return slave.firmware is None or slave.supports_stop

    def _schedule_vin_retry(self, slave: _Slave, now: float) -> None:
        if slave.vin_attempts < self.settings.vin_attempts:
            slave.next_vin_query = now + self.settings.vin_retry_interval
        else:
            slave.vin_done = True

    # -- receive --------------------------------------------------------------------------

    def _handle(self, message: codec.Message, now: float) -> None:
        if isinstance(message, SlaveLinkready):
            self._on_linkready(message, now)
        elif isinstance(message, SlaveHeartbeat):
            self._on_heartbeat(message, now)
        elif isinstance(message, (MasterLinkready1, MasterLinkready2, MasterHeartbeat, Query, ChargeCommand)):
            self._on_master_frame(message.master_id, now)
        elif isinstance(message, MasterIdle):
            self._on_master_frame(None, now)
        elif isinstance(message, RawMessage):
            self.counters.unknown_messages += 1
            _log.debug("twc_unknown_message", body=message.data.hex(" "))
        else:
            self._on_report(message, now)

    def _on_master_frame(self, master_id: int | None, now: float) -> None:
        if master_id == self.master_id:
            self.counters.own_echoes += 1
            return
        self.counters.foreign_master_frames += 1
        if now - self._last_foreign_warning >= self.settings.foreign_master_warning_interval:
            self._last_foreign_warning = now
            detail = (
                "another master is on the bus: set every Wall Connector's rotary switch to F"
                + ("" if master_id is None else f" (master {_fmt(master_id)})")
            )
            _log.warning("twc_foreign_master", detail=detail)
            self._emit(BusWarning("foreign_master", None, detail))

    def _on_linkready(self, message: SlaveLinkready, now: float) -> None:
        sid = message.slave_id
        if sid == self.master_id:
            self.counters.id_conflicts += 1
            detail = f"a slave uses the master's ID {_fmt(sid)}; asking it to pick another"
            _log.warning("twc_id_conflict", detail=detail)
            self._emit(BusWarning("id_conflict", sid, detail))
            self.announce()
            return
        slave = self._slaves.get(sid)
        if slave is not None:
            if message.sign != slave.sign:
                self.counters.slave_restarts += 1
                _log.info("twc_slave_restarted", slave=_fmt(sid), sign=message.sign)
            slave.sign, slave.protocol, slave.max_centiamps = message.sign, message.protocol, message.max_centiamps
            # A slave that lost us (or restarted) wants a heartbeat now; one answering on
            # time is only echoing our linkready2 burst and keeps its rhythm.
            if now - slave.last_rx >= self.settings.heartbeat_interval:
                slave.next_heartbeat = min(slave.next_heartbeat, now)
            slave.last_rx = now
            return
        if len(self._slaves) >= MAX_SLAVES and not self._evict_silent(now):
            self.counters.rejected_slaves += 1
            detail = f"slave {_fmt(sid)} ignored: a master drives at most {MAX_SLAVES} slaves"
            _log.warning("twc_too_many_slaves", detail=detail)
            self._emit(BusWarning("too_many_slaves", sid, detail))
            return
        _log.info("twc_slave_linkready", slave=_fmt(sid), protocol=message.protocol,
                  max_amps=message.max_centiamps / 100)
        self._slaves[sid] = _Slave(sid, message.sign, message.protocol, message.max_centiamps, now, now)

    def _evict_silent(self, now: float) -> bool:
        """Make room for a new slave by dropping one that has stopped answering."""
        quietest = min(self._slaves.values(), key=lambda s: s.last_rx)
        if now - quietest.last_rx < 3 * self.settings.heartbeat_interval:
            return False
        self.counters.evicted_slaves += 1
        self._lose(quietest, "silent, replaced by a new slave")
        return True

    def _on_heartbeat(self, message: SlaveHeartbeat, now: float) -> None:
        slave = self._slaves.get(message.slave_id)
        if slave is None or message.master_id != self.master_id:
            self.counters.unexpected_replies += 1
            _log.debug("twc_unexpected_heartbeat", slave=_fmt(message.slave_id), to=_fmt(message.master_id))
            return
        slave.replies_since_heartbeat += 1
        if slave.replies_since_heartbeat > 1 and not slave.duplicate:
            slave.duplicate = True
            self.counters.duplicate_ids += 1
            detail = (f"two units answer as slave {_fmt(slave.slave_id)}; each gets half of its share of "
                      "the circuit; reset one of them so it picks a new ID")
            _log.warning("twc_duplicate_slave_id", detail=detail)
            self._emit(BusWarning("duplicate_id", slave.slave_id, detail))
        slave.last_rx = now
        slave.reported_max = message.max_centiamps
        slave.actual = message.actual_centiamps
        if not slave.answered:
            slave.answered = True
            if slave.protocol == 1:
                self._announce(slave, now)
        self._track_state(slave, message.state, now)
        if slave.announced:
            self._emit(Reading(
                slave.slave_id, slave.actual, slave.volts,
                None if slave.lifetime_kwh is None else slave.lifetime_kwh * 1000, slave.offered,
            ))
        self._check_switch(slave, message.state)

    def _track_state(self, slave: _Slave, state: int, now: float) -> None:
        if state == SlaveState.ERROR:
            plugged = bool(slave.plugged)
        elif state in MEANINGFUL_STATES:
            plugged = MEANINGFUL_STATES[SlaveState(state)]
        else:
            return
        if (state, plugged) != (slave.state, slave.plugged):
            slave.state, slave.plugged = state, plugged
            _log.info("twc_slave_state", slave=_fmt(slave.slave_id), state=f"{state:02X}", plugged=plugged)
            if slave.announced:
                self._emit(SlaveStateChanged(slave.slave_id, state, plugged))
            if not plugged:
                slave.vin_parts, slave.vin_attempts, slave.vin_done = [], 0, False
                slave.next_vin_query = None
        if (state == SlaveState.CHARGING and slave.actual >= NO_CURRENT_CENTIAMPS and not slave.vin_done
                and not slave.vin_parts and slave.next_vin_query is None and slave.vin_attempts == 0):
            slave.next_vin_query = now

    def _on_report(self, message: codec.Message, now: float) -> None:
        slave = self._slaves.get(message.slave_id)  # type: ignore[union-attr]
        if slave is None:
            self.counters.unexpected_replies += 1
            return
        if isinstance(message, KwhVoltageReport):
            slave.volts = message.volts[0]
            slave.lifetime_kwh = message.lifetime_kwh
            slave.extended_seen = slave.extended_seen or message.extended
            self._clear_awaiting(slave, QueryKind.KWH_VOLTAGE)
        elif isinstance(message, FirmwareReport):
            slave.firmware = message.version
            self._clear_awaiting(slave, QueryKind.FIRMWARE)
            self._announce_if_ready(slave, now)
        elif isinstance(message, VinReport):
            self._on_vin(slave, message, now)
        elif isinstance(message, ChargeCommandAck):
            _log.info("twc_command_acknowledged", slave=_fmt(slave.slave_id), command=message.kind.name)

    def _clear_awaiting(self, slave: _Slave, kind: QueryKind) -> None:
        if slave.awaiting == kind:
            slave.awaiting = None

    def _on_vin(self, slave: _Slave, message: VinReport, now: float) -> None:
        if slave.vin_done or message.part != len(slave.vin_parts) or slave.awaiting != codec.VIN_QUERIES[message.part]:
            self.counters.unexpected_replies += 1
            return
        slave.awaiting = None
        slave.vin_parts.append(message.chars)
        if len(slave.vin_parts) < 3:
            return
        raw = b"".join(slave.vin_parts)
        if not any(raw):
            _log.info("twc_no_vin", slave=_fmt(slave.slave_id), detail="car gives no VIN (non-Tesla or CAN off)")
            slave.vin_done = True
            return
        vin = raw.rstrip(b"\0").decode("ascii", "replace").upper()
        if vin_is_valid(vin):
            slave.vin_done = True
            self._emit(VinRead(slave.slave_id, vin))
        else:
            _log.info("twc_bad_vin", slave=_fmt(slave.slave_id), vin=vin)
            slave.vin_parts = []
            self._schedule_vin_retry(slave, now)

    # -- linking and losing ---------------------------------------------------------------

    def _announce_if_ready(self, slave: _Slave, now: float) -> None:
        if slave.announced or not slave.answered:
            return
        resolved = slave.firmware is not None or slave.extended_seen
        gave_up = (slave.firmware_queries >= self.settings.firmware_queries
                   and (slave.awaiting != QueryKind.FIRMWARE or now >= slave.awaiting_until))
        if resolved or gave_up:
            self._announce(slave, now)

    def _announce(self, slave: _Slave, now: float) -> None:
        slave.announced = True
        slave.next_poll = now
        _log.info("twc_slave_linked", slave=_fmt(slave.slave_id), protocol=slave.protocol,
                  max_amps=slave.max_centiamps // 100, firmware=slave.firmware)
        self._emit(SlaveLinked(slave.slave_id, slave.protocol, slave.max_centiamps // 100, slave.firmware))
        if slave.state is not None and slave.plugged is not None:
            self._emit(SlaveStateChanged(slave.slave_id, slave.state, slave.plugged))

    def _drop_silent_slaves(self, now: float) -> None:
        for slave in list(self._slaves.values()):
            if now - slave.last_rx > self.settings.slave_timeout:
                self._lose(slave, f"no reply for {self.settings.slave_timeout:g} s")

    def _lose(self, slave: _Slave, reason: str) -> None:
        del self._slaves[slave.slave_id]
        self.counters.lost_slaves += 1
        if slave.switch is not None:
            self._finish_switch(slave, False, f"slave lost before the current confirmed it ({reason})")
        _log.warning("twc_slave_lost", slave=_fmt(slave.slave_id), reason=reason)
        self._emit(SlaveLost(slave.slave_id, reason))

    # -- stopping and starting -----------------------------------------------------------

    def _advance_switch(self, slave: _Slave, now: float) -> None:
        switch = slave.switch
        if switch is None or (switch.deadline is not None and now < switch.deadline):
            return
        if switch.attempts >= self.settings.stop_attempts:
            reason = f"current still {slave.actual / 100:.2f} A after {switch.attempts} attempts"
            if switch.kind == ChargeCommandKind.STOP and not slave.supports_stop and slave.protocol == 2:
                reason += "; this firmware has no stop command and a protocol 2 car keeps the minimum at 0 A"
            if switch.kind == ChargeCommandKind.START and slave.offered == 0:
                reason += "; the offer is 0 A (target below the minimum, or no budget left)"
            self._finish_switch(slave, False, reason)
            return
        switch.attempts += 1
        switch.since = now
        switch.deadline = now + self.settings.stop_timeout
        switch.good_readings = 0
        slave.next_heartbeat = min(slave.next_heartbeat, now)
        if slave.supports_stop:
            slave.pending_command = switch.kind
        _log.info("twc_switch_attempt", slave=_fmt(slave.slave_id), switch=switch.kind.name,
                  attempt=switch.attempts, command=slave.supports_stop)

    def _check_switch(self, slave: _Slave, state: int) -> None:
        switch = slave.switch
        if switch is None or switch.since is None or slave.heartbeat_sent_at is None:
            return
        if slave.heartbeat_sent_at < switch.since:
            return
        switch.good_readings = switch.good_readings + 1 if switch.satisfied_by(slave.actual, state) else 0
        if switch.good_readings >= 2:
            self._finish_switch(slave, True, f"current {slave.actual / 100:.2f} A")

    def _finish_switch(self, slave: _Slave, confirmed: bool, reason: str) -> None:
        switch = slave.switch
        assert switch is not None
        slave.switch = None
        stopping = switch.kind == ChargeCommandKind.STOP
        if stopping:
            self.counters.stops_confirmed += confirmed
            self.counters.stops_failed += not confirmed
        name = "twc_stop" if stopping else "twc_start"
        if confirmed:
            _log.info(f"{name}_confirmed", slave=_fmt(slave.slave_id), attempts=switch.attempts, reason=reason)
        else:
            _log.warning(f"{name}_failed", slave=_fmt(slave.slave_id), attempts=switch.attempts, reason=reason)
        result = StopResult if stopping else StartResult
        self._emit(result(slave.slave_id, confirmed, switch.attempts, slave.actual, reason))
