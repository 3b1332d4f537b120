"""Every frame and payload of the SWCAN conversation, encoded and decoded without IO.

v1 is the original DistributedCharge protocol byte for byte; v2 adds one frame
identifier, longer answers and packed invoices, none of which a v1 peer ever receives
(docs/protocol.md).
Each decoder raises :class:`SwcanProtocolError` saying exactly what is wrong.
"""

from __future__ import annotations

from dataclasses import dataclass

from distributedcharge.swcan import packing
from distributedcharge.swcan.errors import SwcanProtocolError
from distributedcharge.units import MSAT_PER_SAT, NJ_PER_WH

__all__ = [
    "ANSWER_ID", "ISOTP_CAR_TX_ID", "ISOTP_WALL_TX_ID", "MAX_PAYLOAD_BYTES", "OFFER_ID",
    "PROTOCOL_V1", "PROTOCOL_V2", "V2_OFFER_ID", "Answer", "Offer", "SwcanProtocolError",
    "V1OfferFrame", "V2Invoice", "V2OfferFrame", "combine_offer", "decode_answer",
    "decode_v1_invoice", "decode_v1_offer", "decode_v2_invoice", "decode_v2_offer",
    "encode_v1_answer", "encode_v1_invoice", "encode_v1_offer", "encode_v2_answer",
    "encode_v2_invoice", "encode_v2_offer", "offer_from_v1",
]

OFFER_ID = 1998           # 0x7CE wall -> car: v1 offer
ANSWER_ID = 1999          # 0x7CF car -> wall: accept or reject
ISOTP_WALL_TX_ID = 1997   # 0x7CD wall -> car ISO-TP data (the car's rxid)
ISOTP_CAR_TX_ID = 1996    # 0x7CC car -> wall ISO-TP flow control (the wall's rxid)
V2_OFFER_ID = 0x7C0       # 1984 wall -> car: v2 offer, sent just before each 1998 frame

PROTOCOL_V1 = 1
PROTOCOL_V2 = 2

U32_MAX = 0xFFFF_FFFF
U16_MAX = 0xFFFF
U8_MAX = 0xFF
# The rate travels as sat/GWh in v1: 1 msat/kWh = 1 000 sat/GWh.
SAT_PER_GWH_PER_MSAT_PER_KWH = 1_000
# The wall meter travels in 3 bytes of 0.1 Wh: 360 J resolution, 1.68 MWh before it
# saturates, far beyond any charge session.
NJ_PER_METER_UNIT = NJ_PER_WH // 10
U24_MAX = 0xFF_FFFF
# Classic ISO-TP (12-bit length) cannot carry more.
MAX_PAYLOAD_BYTES = 4095

V1_OFFER_LENGTH = 8
V2_OFFER_LENGTH = 8
V1_ANSWER_LENGTH = 1
V2_ANSWER_LENGTH = 5
V2_INVOICE_HEADER_LENGTH = 6
ACCEPT = 0x01
REJECT = 0x00


def _ceil_div(numerator: int, denominator: int) -> int:
    return -(-numerator // denominator)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class Offer:
    """Sale terms: price in msat per kWh and the size of each payment in msat."""

    rate_msat_per_kwh: int
    payment_msat: int

    def __post_init__(self) -> None:
        for name in ("rate_msat_per_kwh", "payment_msat"):
            value = getattr(self, name)
            if not _is_int(value) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")

    def as_v1(self) -> Offer:
        """The terms a v1 car sees: v1 carries whole sat, so the payment is rounded up."""
        return Offer(self.rate_msat_per_kwh, _ceil_div(self.payment_msat, MSAT_PER_SAT) * MSAT_PER_SAT)


@dataclass(frozen=True)
class V1OfferFrame:
    rate_sat_per_gwh: int
    payment_sat: int


@dataclass(frozen=True)
class V2OfferFrame:
    version: int
    offer_number: int
    session_id: int
    payment_msat: int


@dataclass(frozen=True)
class Answer:
    accepted: bool
    version: int = PROTOCOL_V1
    offer_number: int | None = None
    session_id: int | None = None


@dataclass(frozen=True)
class V2Invoice:
    session_id: int
    offer_number: int
    wall_energy_nj: int
    bolt11: str


def _check_field(name: str, value: int, high: int) -> None:
    if not _is_int(value) or not 0 <= value <= high:
        raise ValueError(f"{name} must be an integer from 0 to {high}, got {value!r}")


def _check_length(what: str, data: bytes, expected: int) -> None:
    if len(data) != expected:
        raise SwcanProtocolError(f"{what}: DLC {len(data)}, expected {expected}")


def _check_amount(what: str, value: int) -> None:
    # 0 and all-ones are what a stuck or uninitialised sender puts on the bus.
    if value == 0 or value == U32_MAX:
        raise SwcanProtocolError(f"{what} of {value} is not a real offer")


# --- offers -------------------------------------------------------------------------------

def encode_v1_offer(offer: Offer) -> bytes:
    """Frame 1998; raise ValueError if v1 cannot carry the terms."""
    v1 = offer.as_v1()
    rate = v1.rate_msat_per_kwh * SAT_PER_GWH_PER_MSAT_PER_KWH
    sat = v1.payment_msat // MSAT_PER_SAT
    if rate >= U32_MAX:
        raise ValueError(f"rate {offer.rate_msat_per_kwh} msat/kWh does not fit v1's 32-bit sat/GWh")
    if sat >= U32_MAX:
        raise ValueError(f"payment {offer.payment_msat} msat does not fit v1's 32-bit sat")
    return rate.to_bytes(4, "little") + sat.to_bytes(4, "little")


def decode_v1_offer(data: bytes) -> V1OfferFrame:
    _check_length("offer frame 1998", data, V1_OFFER_LENGTH)
    rate = int.from_bytes(data[0:4], "little")
    sat = int.from_bytes(data[4:8], "little")
    _check_amount("offered rate (sat/GWh)", rate)
    _check_amount("offered payment (sat)", sat)
    return V1OfferFrame(rate, sat)


def offer_from_v1(frame: V1OfferFrame) -> Offer:
    """Exact except that a rate that is not a whole msat/kWh is rounded up.

    The original computes ``int(rate * 1e9)`` from a float, so 1 001 sat/kWh arrives as
    1 000 999 999 sat/GWh; rounding up recovers the intended price and never lets the car
    think the energy is cheaper than offered.
    """
    return Offer(_ceil_div(frame.rate_sat_per_gwh, SAT_PER_GWH_PER_MSAT_PER_KWH),
                 frame.payment_sat * MSAT_PER_SAT)


def encode_v2_offer(offer_number: int, session_id: int, payment_msat: int) -> bytes:
    _check_field("offer_number", offer_number, U8_MAX)
    _check_field("session_id", session_id, U16_MAX)
    if not _is_int(payment_msat) or not 0 < payment_msat < U32_MAX:
        raise ValueError(f"payment {payment_msat!r} msat does not fit v2's 32-bit msat")
    return (bytes([PROTOCOL_V2, offer_number]) + session_id.to_bytes(2, "little")
            + payment_msat.to_bytes(4, "little"))


def decode_v2_offer(data: bytes) -> V2OfferFrame:
    _check_length(f"v2 offer frame 0x{V2_OFFER_ID:03X}", data, V2_OFFER_LENGTH)
    if data[0] < PROTOCOL_V2:
        raise SwcanProtocolError(f"v2 offer frame names protocol version {data[0]}, expected 2 or more")
    payment = int.from_bytes(data[4:8], "little")
    _check_amount("offered payment (msat)", payment)
    return V2OfferFrame(data[0], data[1], int.from_bytes(data[2:4], "little"), payment)


def combine_offer(v1: V1OfferFrame, v2: V2OfferFrame) -> Offer:
    """The exact terms of a v2 offer, whose rate travels in the 1998 frame next to it."""
    if v1.rate_sat_per_gwh % SAT_PER_GWH_PER_MSAT_PER_KWH:
        raise SwcanProtocolError(
            f"v2 offer with a rate of {v1.rate_sat_per_gwh} sat/GWh, not a whole msat/kWh")
    if _ceil_div(v2.payment_msat, MSAT_PER_SAT) != v1.payment_sat:
        raise SwcanProtocolError(
            f"v2 payment of {v2.payment_msat} msat does not round up to the {v1.payment_sat} sat "
            "of the 1998 frame beside it")
    return Offer(v1.rate_sat_per_gwh // SAT_PER_GWH_PER_MSAT_PER_KWH, v2.payment_msat)


# --- answers ------------------------------------------------------------------------------

def encode_v1_answer(accepted: bool) -> bytes:
    return bytes([ACCEPT if accepted else REJECT])


def encode_v2_answer(accepted: bool, offer_number: int, session_id: int) -> bytes:
    _check_field("offer_number", offer_number, U8_MAX)
    _check_field("session_id", session_id, U16_MAX)
    return bytes([ACCEPT if accepted else REJECT, PROTOCOL_V2, offer_number]) + session_id.to_bytes(2, "little")


def decode_answer(data: bytes, v2: bool) -> Answer:
    """Frame 1999. With ``v2`` False only byte 0 counts, as in the original wall."""
    if not data:
        raise SwcanProtocolError("answer frame 1999: DLC 0, expected at least 1")
    if data[0] not in (ACCEPT, REJECT):
        raise SwcanProtocolError(f"answer frame 1999: byte 0 is 0x{data[0]:02x}, expected 0x01 or 0x00")
    accepted = data[0] == ACCEPT
    if not v2 or len(data) == V1_ANSWER_LENGTH:
        return Answer(accepted)
    if len(data) < V2_ANSWER_LENGTH:
        raise SwcanProtocolError(
            f"answer frame 1999: DLC {len(data)}, expected 1 (v1) or {V2_ANSWER_LENGTH} (v2)")
    if data[1] != PROTOCOL_V2:
        raise SwcanProtocolError(f"answer frame 1999 chooses protocol version {data[1]}, this wall speaks 2")
    return Answer(accepted, PROTOCOL_V2, data[2], int.from_bytes(data[3:5], "little"))


# --- invoices -----------------------------------------------------------------------------

def _check_payload_size(what: str, payload: bytes) -> None:
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise SwcanProtocolError(f"{what} of {len(payload)} bytes, at most {MAX_PAYLOAD_BYTES} allowed")


def _printable_ascii(payload: bytes) -> bool:
    return all(0x21 <= byte <= 0x7E for byte in payload)


def encode_v1_invoice(bolt11: str) -> bytes:
    """The original's payload: the invoice as lowercase ASCII, no terminator."""
    packing.parse_bolt11(bolt11)
    payload = bolt11.lower().encode("ascii")
    _check_payload_size("v1 invoice", payload)
    return payload


def decode_v1_invoice(payload: bytes) -> str:
    _check_payload_size("v1 invoice", payload)
    if not payload:
        raise SwcanProtocolError("v1 invoice is empty")
    if not _printable_ascii(payload):
        raise SwcanProtocolError("v1 invoice has bytes that are not printable ASCII")
    text = payload.decode("ascii")
    packing.parse_bolt11(text)
    return text.lower()


def encode_v2_invoice(bolt11: str, session_id: int, offer_number: int, wall_energy_nj: int) -> bytes:
    _check_field("session_id", session_id, U16_MAX)
    _check_field("offer_number", offer_number, U8_MAX)
    if not _is_int(wall_energy_nj) or wall_energy_nj < 0:
        raise ValueError(f"wall meter reading must be a non-negative integer of nJ, got {wall_energy_nj!r}")
    meter = min(wall_energy_nj // NJ_PER_METER_UNIT, U24_MAX)
    payload = (session_id.to_bytes(2, "little") + bytes([offer_number])
               + meter.to_bytes(3, "little") + packing.pack(bolt11))
    _check_payload_size("v2 invoice", payload)
    return payload


def decode_v2_invoice(payload: bytes) -> V2Invoice:
    _check_payload_size("v2 invoice", payload)
    if len(payload) <= V2_INVOICE_HEADER_LENGTH:
        raise SwcanProtocolError(
            f"v2 invoice of {len(payload)} bytes, shorter than its {V2_INVOICE_HEADER_LENGTH}-byte header and body")
    if _printable_ascii(payload):
        # Byte 6 of a v2 invoice has bits 5 and 6 clear, which no printable character has.
        raise SwcanProtocolError("ASCII (v1) invoice where a v2 packed invoice was expected")
    return V2Invoice(
        session_id=int.from_bytes(payload[0:2], "little"),
        offer_number=payload[2],
        wall_energy_nj=int.from_bytes(payload[3:6], "little") * NJ_PER_METER_UNIT,
        bolt11=packing.unpack(payload[V2_INVOICE_HEADER_LENGTH:]),
    )
