"""Sans-IO codec for the TWC Gen 2 RS-485 load-sharing protocol.

A frame on the wire is ``C0`` + SLIP-escaped(body + checksum) + ``C0``. The body starts
with a marker (``FB`` master request, ``FC`` master command, ``FD`` slave reply) and a
command byte; the checksum is the low byte of the sum of every body byte after the marker.
Facts and sources: ``/work/shared/reference/twc-gen2-rs485.md``.

Three commands are known to crash or permanently disable a Wall Connector (``FC 19`` and
``FC 1A`` write to flash, ``FB E8`` crashes it). Every frame this module produces passes
through :func:`frame`, which refuses them, so no message object, however built, can put
them on the wire.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

START = 0xC0
ESCAPE = 0xDB
ESCAPED_START = 0xDC
ESCAPED_ESCAPE = 0xDD

REQUEST = 0xFB
COMMAND = 0xFC
REPLY = 0xFD
MARKERS = frozenset({REQUEST, COMMAND, REPLY})

# Unescaped frame length, checksum included: 14 on protocol 1, 16 on protocol 2, 20 for
# the 4.5.3 extended replies; 15 is TWCManager's request length, which real units answer.
MIN_FRAME_LENGTH = 14
MAX_FRAME_LENGTH = 20

DANGEROUS = {
    bytes([COMMAND, 0x19]): "FC 19 writes the unit's ID to flash and may disable it permanently",
    bytes([COMMAND, 0x1A]): "FC 1A writes the model number to flash and may disable the unit permanently",
    bytes([REQUEST, 0xE8]): "FB E8 crashes the unit",
}


class DangerousCommandError(ValueError):
    """Raised for any attempt to frame a command that can damage a Wall Connector."""


class HeartbeatCommand(enum.IntEnum):
    """Byte 0 of a master heartbeat's data block."""

    NOP = 0x00
    ERROR = 0x02
    LIMIT_P1 = 0x05  # on protocol 2 honoured only before the car starts charging
    RAISE_2A = 0x06
    LOWER_2A = 0x07
    ACK_STOPPED = 0x08
    LIMIT = 0x09


class SlaveState(enum.IntEnum):
    """Byte 0 of a slave heartbeat's data block."""

    READY = 0x00
    CHARGING = 0x01
    ERROR = 0x02
    PLUGGED_DO_NOT_CHARGE = 0x03
    PLUGGED_READY = 0x04
    BUSY = 0x05
    ECHO_RAISE = 0x06
    ECHO_LOWER = 0x07
    STARTING = 0x08
    ECHO_LIMIT = 0x09
    ADJUSTMENT_DONE = 0x0A


class QueryKind(enum.IntEnum):
    """``FB`` requests that carry master and slave ID and a zero payload."""

    KWH_VOLTAGE = 0xEB
    VIN_PART_1 = 0xEE
    VIN_PART_2 = 0xEF
    VIN_PART_3 = 0xF1
    FIRMWARE = 0xEC
    FIRMWARE_OLD = 0x1B
    SERIAL = 0xED
    SERIAL_OLD = 0x19
    MODEL = 0x1A
    PLUG_STATE = 0xB4


VIN_QUERIES = (QueryKind.VIN_PART_1, QueryKind.VIN_PART_2, QueryKind.VIN_PART_3)
_QUERY_COMMANDS = frozenset(QueryKind)


class ChargeCommandKind(enum.IntEnum):
    """Firmware 4.5.3 only; ``STOP`` opens the contactor without telling the car."""

    START = 0xB1
    STOP = 0xB2


_CHARGE_COMMANDS = frozenset(ChargeCommandKind)


def _u16(value: int) -> bytes:
    return value.to_bytes(2, "big")


def _pad(body: bytes, length: int) -> bytes:
    """Zero-pad ``body`` so that body + checksum is ``length`` bytes."""
    if len(body) + 1 > length:
        raise ValueError(f"message needs {len(body) + 1} bytes, longer than {length}")
    return body + bytes(length - 1 - len(body))


def _check_u(name: str, value: int, bits: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 1 << bits:
        raise ValueError(f"{name} must be an integer in 0..{(1 << bits) - 1}, got {value!r}")


def _check_protocol(protocol: int) -> None:
    if protocol not in (1, 2):
        raise ValueError(f"protocol must be 1 or 2, got {protocol!r}")


def _check_length(length: int, allowed: tuple[int, ...]) -> None:
    if length not in allowed:
        raise ValueError(f"length must be one of {allowed}, got {length!r}")


@dataclass(frozen=True)
class MasterLinkready1:
    master_id: int
    sign: int

    def __post_init__(self) -> None:
        _check_u("master_id", self.master_id, 16)
        _check_u("sign", self.sign, 8)

    def body(self) -> bytes:
        return _pad(bytes([COMMAND, 0xE1]) + _u16(self.master_id) + bytes([self.sign]), 14)


@dataclass(frozen=True)
class MasterLinkready2:
    master_id: int
    sign: int

    def __post_init__(self) -> None:
        _check_u("master_id", self.master_id, 16)
        _check_u("sign", self.sign, 8)

    def body(self) -> bytes:
        return _pad(bytes([REQUEST, 0xE2]) + _u16(self.master_id) + bytes([self.sign]), 14)


@dataclass(frozen=True)
class SlaveLinkready:
    slave_id: int
    sign: int
    max_centiamps: int
    protocol: int = 2

    def __post_init__(self) -> None:
        _check_u("slave_id", self.slave_id, 16)
        _check_u("sign", self.sign, 8)
        _check_u("max_centiamps", self.max_centiamps, 16)
        _check_protocol(self.protocol)

    def body(self) -> bytes:
        head = bytes([REPLY, 0xE2]) + _u16(self.slave_id) + bytes([self.sign]) + _u16(self.max_centiamps)
        return _pad(head, 14 if self.protocol == 1 else 16)


@dataclass(frozen=True)
class MasterHeartbeat:
    """Data block: command, amps x 100 (a bitmap in the high byte for ``ERROR``), own plug."""

    master_id: int
    slave_id: int
    command: int = HeartbeatCommand.NOP
    centiamps: int = 0
    master_plugged: bool = False
    protocol: int = 2

    def __post_init__(self) -> None:
        _check_u("master_id", self.master_id, 16)
        _check_u("slave_id", self.slave_id, 16)
        _check_u("command", self.command, 8)
        _check_u("centiamps", self.centiamps, 16)
        _check_protocol(self.protocol)

    def body(self) -> bytes:
        head = (
            bytes([REQUEST, 0xE0]) + _u16(self.master_id) + _u16(self.slave_id)
            + bytes([self.command]) + _u16(self.centiamps) + bytes([int(self.master_plugged)])
        )
        return _pad(head, 14 if self.protocol == 1 else 16)


@dataclass(frozen=True)
class SlaveHeartbeat:
    slave_id: int
    master_id: int
    state: int = SlaveState.READY
    max_centiamps: int = 0
    actual_centiamps: int = 0
    protocol: int = 2

    def __post_init__(self) -> None:
        _check_u("slave_id", self.slave_id, 16)
        _check_u("master_id", self.master_id, 16)
        _check_u("state", self.state, 8)
        _check_u("max_centiamps", self.max_centiamps, 16)
        _check_u("actual_centiamps", self.actual_centiamps, 16)
        _check_protocol(self.protocol)

    def body(self) -> bytes:
        head = (
            bytes([REPLY, 0xE0]) + _u16(self.slave_id) + _u16(self.master_id)
            + bytes([self.state]) + _u16(self.max_centiamps) + _u16(self.actual_centiamps)
        )
        return _pad(head, 14 if self.protocol == 1 else 16)


@dataclass(frozen=True)
class Query:
    """An addressed ``FB`` request (kWh/voltage, VIN parts, firmware, serial, plug state)."""

    kind: QueryKind
    master_id: int
    slave_id: int
    length: int = 16

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", QueryKind(self.kind))
        _check_u("master_id", self.master_id, 16)
        _check_u("slave_id", self.slave_id, 16)
        _check_length(self.length, (15, 16))

    def body(self) -> bytes:
        return _pad(bytes([REQUEST, self.kind]) + _u16(self.master_id) + _u16(self.slave_id), self.length)


@dataclass(frozen=True)
class ChargeCommand:
    kind: ChargeCommandKind
    master_id: int
    slave_id: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", ChargeCommandKind(self.kind))
        _check_u("master_id", self.master_id, 16)
        _check_u("slave_id", self.slave_id, 16)

    def body(self) -> bytes:
        return _pad(bytes([COMMAND, self.kind]) + _u16(self.master_id) + _u16(self.slave_id), 16)


@dataclass(frozen=True)
class ChargeCommandAck:
    kind: ChargeCommandKind
    slave_id: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", ChargeCommandKind(self.kind))
        _check_u("slave_id", self.slave_id, 16)

    def body(self) -> bytes:
        return _pad(bytes([REPLY, self.kind]) + _u16(self.slave_id), 16)


@dataclass(frozen=True)
class KwhVoltageReport:
    """``FD EB``: lifetime kWh and per-phase volts; 4.5.3 adds per-phase current in 0.5 A."""

    slave_id: int
    lifetime_kwh: int
    volts: tuple[int, int, int]
    phase_half_amps: tuple[int, int, int] | None = None

    def __post_init__(self) -> None:
        _check_u("slave_id", self.slave_id, 16)
        _check_u("lifetime_kwh", self.lifetime_kwh, 32)
        object.__setattr__(self, "volts", tuple(self.volts))
        if len(self.volts) != 3:
            raise ValueError("volts needs three phases (0 for an absent phase)")
        for volts in self.volts:
            _check_u("volts", volts, 16)
        if self.phase_half_amps is not None:
            object.__setattr__(self, "phase_half_amps", tuple(self.phase_half_amps))
            if len(self.phase_half_amps) != 3:
                raise ValueError("phase_half_amps needs three phases")
            for half_amps in self.phase_half_amps:
                _check_u("phase_half_amps", half_amps, 8)

    @property
    def extended(self) -> bool:
        return self.phase_half_amps is not None

    def body(self) -> bytes:
        head = bytes([REPLY, 0xEB]) + _u16(self.slave_id) + self.lifetime_kwh.to_bytes(4, "big")
        head += b"".join(_u16(v) for v in self.volts)
        if self.phase_half_amps is None:
            return _pad(head, 16)
        return _pad(head + bytes(self.phase_half_amps), 20)


@dataclass(frozen=True)
class VinReport:
    """Seven VIN characters (part 0, 1 or 2); all zero bytes when the car gives none."""

    slave_id: int
    part: int
    chars: bytes

    def __post_init__(self) -> None:
        _check_u("slave_id", self.slave_id, 16)
        if self.part not in (0, 1, 2):
            raise ValueError(f"part must be 0, 1 or 2, got {self.part!r}")
        object.__setattr__(self, "chars", bytes(self.chars))
        if len(self.chars) != 7:
            raise ValueError(f"a VIN part is 7 bytes, got {len(self.chars)}")

    def body(self) -> bytes:
        return _pad(bytes([REPLY, VIN_QUERIES[self.part]]) + _u16(self.slave_id) + self.chars, 20)


@dataclass(frozen=True)
class FirmwareReport:
    """``FD EC``: the extended firmware version reply of 4.5.3 units."""

    slave_id: int
    major: int
    minor: int
    revision: int
    build: int = 0

    def __post_init__(self) -> None:
        _check_u("slave_id", self.slave_id, 16)
        for name in ("major", "minor", "revision", "build"):
            _check_u(name, getattr(self, name), 8)

    @property
    def version(self) -> tuple[int, int, int]:
        return (self.major, self.minor, self.revision)

    def body(self) -> bytes:
        head = bytes([REPLY, 0xEC]) + _u16(self.slave_id)
        return _pad(head + bytes([self.major, self.minor, self.revision, self.build]), 16)


@dataclass(frozen=True)
class SerialReport:
    """``FD ED``: eleven ASCII bytes of the unit's serial number (4.5.3)."""

    slave_id: int
    serial: bytes

    def __post_init__(self) -> None:
        _check_u("slave_id", self.slave_id, 16)
        object.__setattr__(self, "serial", bytes(self.serial))
        if len(self.serial) != 11:
            raise ValueError(f"a serial is 11 bytes, got {len(self.serial)}")

    def body(self) -> bytes:
        return _pad(bytes([REPLY, 0xED]) + _u16(self.slave_id) + self.serial, 20)


@dataclass(frozen=True)
class PlugStateReport:
    """``FD B4`` (layout unverified): 0 unplugged, 1 charging, 3 plugged in, not charging."""

    slave_id: int
    state: int

    def __post_init__(self) -> None:
        _check_u("slave_id", self.slave_id, 16)
        _check_u("state", self.state, 8)

    def body(self) -> bytes:
        return _pad(bytes([REPLY, 0xB4]) + _u16(self.slave_id) + bytes([self.state]), 16)


@dataclass(frozen=True)
class MasterIdle:
    """``FC 1D``: sent by a master that has no slaves; it carries no ID."""

    def body(self) -> bytes:
        return _pad(bytes([COMMAND, 0x1D]), 14)


@dataclass(frozen=True)
class RawMessage:
    """A checksum-valid frame whose layout this codec does not know (or malformed)."""

    data: bytes = field(default=b"")

    def __post_init__(self) -> None:
        object.__setattr__(self, "data", bytes(self.data))

    def body(self) -> bytes:
        return self.data


Message = (
    MasterLinkready1 | MasterLinkready2 | SlaveLinkready | MasterHeartbeat | SlaveHeartbeat | Query
    | ChargeCommand | ChargeCommandAck | KwhVoltageReport | VinReport | FirmwareReport | SerialReport
    | PlugStateReport | MasterIdle | RawMessage
)


def checksum(body: bytes) -> int:
    return sum(body[1:]) & 0xFF


def refuse_dangerous(body: bytes) -> None:
    reason = DANGEROUS.get(bytes(body[:2]))
    if reason is not None:
        raise DangerousCommandError(f"refusing to send {body[:2].hex(' ').upper()}: {reason}")


def frame(body: bytes) -> bytes:
    """Checksum, escape and delimit ``body``: the only way bytes for the wire are made."""
    refuse_dangerous(body)
    if len(body) < 2:
        raise ValueError("a frame needs at least a marker and a command byte")
    raw = bytes(body) + bytes([checksum(body)])
    escaped = raw.replace(bytes([ESCAPE]), bytes([ESCAPE, ESCAPED_ESCAPE])).replace(
        bytes([START]), bytes([ESCAPE, ESCAPED_START])
    )
    return bytes([START]) + escaped + bytes([START])


def encode(message: Message) -> bytes:
    return frame(message.body())


def _u16_at(body: bytes, index: int) -> int:
    return int.from_bytes(body[index:index + 2], "big")


def parse(body: bytes) -> Message:
    """Turn an unescaped, checksum-checked frame (checksum removed) into a message.

    Never raises: a frame too short for its command's fields, or of an unknown command,
    comes back as :class:`RawMessage`.
    """
    body = bytes(body)
    length = len(body) + 1
    protocol = 1 if length == 14 else 2
    key = body[:2]
    try:
        if key == bytes([COMMAND, 0xE1]):
            return MasterLinkready1(_u16_at(body, 2), body[4])
        if key == bytes([REQUEST, 0xE2]):
            return MasterLinkready2(_u16_at(body, 2), body[4])
        if key == bytes([REPLY, 0xE2]):
            return SlaveLinkready(_u16_at(body, 2), body[4], _u16_at(body, 5), protocol)
        if key == bytes([REQUEST, 0xE0]):
            return MasterHeartbeat(
                _u16_at(body, 2), _u16_at(body, 4), body[6], _u16_at(body, 7), body[9] == 1, protocol
            )
        if key == bytes([REPLY, 0xE0]):
            return SlaveHeartbeat(
                _u16_at(body, 2), _u16_at(body, 4), body[6], _u16_at(body, 7), _u16_at(body, 9), protocol
            )
        if body[0] == REQUEST and body[1] in _QUERY_COMMANDS and length in (15, 16):
            return Query(QueryKind(body[1]), _u16_at(body, 2), _u16_at(body, 4), length)
        if body[0] == COMMAND and body[1] in _CHARGE_COMMANDS:
            return ChargeCommand(ChargeCommandKind(body[1]), _u16_at(body, 2), _u16_at(body, 4))
        if body[0] == REPLY and body[1] in _CHARGE_COMMANDS:
            return ChargeCommandAck(ChargeCommandKind(body[1]), _u16_at(body, 2))
        if key == bytes([REPLY, 0xEB]):
            volts = (_u16_at(body, 8), _u16_at(body, 10), _u16_at(body, 12))
            halves = tuple(body[14:17]) if length == 20 else None
            return KwhVoltageReport(_u16_at(body, 2), int.from_bytes(body[4:8], "big"), volts, halves)
        if body[0] == REPLY and body[1] in VIN_QUERIES:
            return VinReport(_u16_at(body, 2), VIN_QUERIES.index(body[1]), body[4:11])
        if key == bytes([REPLY, 0xEC]):
            return FirmwareReport(_u16_at(body, 2), body[4], body[5], body[6], body[7])
        if key == bytes([REPLY, 0xED]):
            return SerialReport(_u16_at(body, 2), body[4:15])
        if key == bytes([REPLY, 0xB4]):
            return PlugStateReport(_u16_at(body, 2), body[4])
        if key == bytes([COMMAND, 0x1D]) and not any(body[2:]):
            return MasterIdle()
    except (IndexError, ValueError):
        pass
    return RawMessage(body)


@dataclass
class ReceiverStats:
    frames: int = 0
    bad_checksum: int = 0
    bad_length: int = 0
    bad_escape: int = 0
    timeouts: int = 0
    noise_bytes: int = 0

    def errors(self) -> int:
        return self.bad_checksum + self.bad_length + self.bad_escape + self.timeouts


class FrameReceiver:
    """Bytes in, messages out; survives any byte sequence.

    Each ``C0`` both ends a frame and may start the next. A ``C0`` that arrives before a
    body is long enough to be a frame restarts the frame there (noise on unterminated
    buses). A fragment that does not start with a marker byte is line noise and counts
    byte by byte in ``noise_bytes`` (the trailer byte real units send after a frame lands
    there); a fragment that does is a damaged frame and counts once, under the first thing
    found wrong with it.
    """

    def __init__(self, partial_timeout: float = 2.0) -> None:
        self.partial_timeout = partial_timeout
        self.stats = ReceiverStats()
        self._body: bytearray | None = None
        self._raw_count = 0
        self._escaping = False
        self._discarding = False
        self._last_byte_at: float | None = None

    @property
    def in_frame(self) -> bool:
        """A frame has started and not yet ended: the bus is busy."""
        return self._body is not None and not self._discarding and self._looks_like_frame()

    def feed(self, data: bytes, now: float) -> list[Message]:
        self.expire(now)
        messages: list[Message] = []
        for byte in data:
            message = self._take(byte)
            if message is not None:
                messages.append(message)
        if data:
            self._last_byte_at = now
        return messages

    def expire(self, now: float) -> None:
        """Drop a partial frame after ``partial_timeout`` seconds of silence."""
        if self._last_byte_at is None or now - self._last_byte_at < self.partial_timeout:
            return
        if self._body is not None and self._raw_count and not self._discarding:
            self._count_damage("timeouts")
        self._restart()

    def _restart(self) -> None:
        self._body = bytearray()
        self._raw_count = 0
        self._escaping = False
        self._discarding = False

    def _take(self, byte: int) -> Message | None:
        if byte == START:
            message = self._end_of_frame()
            self._restart()
            return message
        if self._body is None:
            self.stats.noise_bytes += 1
            return None
        if self._discarding:
            return None
        self._raw_count += 1
        if self._escaping:
            self._escaping = False
            if byte == ESCAPED_START:
                byte = START
            elif byte == ESCAPED_ESCAPE:
                byte = ESCAPE
            else:
                self._damaged("bad_escape")
                return None
        elif byte == ESCAPE:
            self._escaping = True
            return None
        self._body.append(byte)
        if len(self._body) > MAX_FRAME_LENGTH:
            self._damaged("bad_length")
        return None

    def _end_of_frame(self) -> Message | None:
        body = self._body
        if body is None or self._discarding or not self._raw_count:
            return None
        if self._escaping:
            self._count_damage("bad_escape")
            return None
        if len(body) < MIN_FRAME_LENGTH:
            self._count_damage("bad_length")
            return None
        if checksum(body[:-1]) != body[-1]:
            self._count_damage("bad_checksum")
            return None
        self.stats.frames += 1
        return parse(bytes(body[:-1]))

    def _looks_like_frame(self) -> bool:
        return bool(self._body) and self._body[0] in MARKERS

    def _damaged(self, counter: str) -> None:
        """Mid-frame damage: skip a damaged frame to its end, or treat noise as noise."""
        looks_like_frame = self._looks_like_frame()
        self._count_damage(counter)
        self._escaping = False
        if looks_like_frame:
            self._discarding = True
        else:
            self._body = None

    def _count_damage(self, counter: str) -> None:
        if self._looks_like_frame():
            setattr(self.stats, counter, getattr(self.stats, counter) + 1)
        else:
            self.stats.noise_bytes += self._raw_count
