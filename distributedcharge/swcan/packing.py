"""BOLT11 invoices packed for the v2 link: the bech32 data part as 5-bit binary.

ASCII bech32 spends 8 bits on every 5-bit symbol; shipping the symbols as bits cuts an
invoice to about 62 % of its ASCII size. Layout (docs/protocol.md, "Packed invoice"):

- byte 0: bits 0-4 hold the length k (1-31) of the human-readable part after its "ln"
  prefix; bits 5-6 are zero; bit 7 is set when the last five or more bits of the data
  bytes are padding (so the last whole 5-bit group read from them is not a symbol);
- bytes 1..k: the human-readable part after "ln", ASCII (e.g. ``bc15u``);
- the rest: the data symbols without the bech32 checksum, 5 bits each, most significant
  bit first, zero padded to a whole byte.

The checksum is left out because CAN's CRC-15 and the ISO-TP length already protect the
transfer; :func:`unpack` recomputes it and checks the result parses as bech32 again.
"""

from __future__ import annotations

from distributedcharge.lightning import bech32
from distributedcharge.swcan.errors import SwcanProtocolError

HRP_PREFIX = "ln"
MAX_HRP_TAIL = 31
# A BOLT11 data part is a 35-bit timestamp, tagged fields (type, 10-bit length, data) and
# a 520-bit recoverable signature.
TIMESTAMP_SYMBOLS = 7
SIGNATURE_SYMBOLS = 104
MIN_SYMBOLS = TIMESTAMP_SYMBOLS + SIGNATURE_SYMBOLS
TAG_HEADER_SYMBOLS = 3
_HRP_TAIL_CHARS = frozenset(b"abcdefghijklmnopqrstuvwxyz0123456789")
_PAD_FLAG = 0x80
_RESERVED_BITS = 0x60


def _check_hrp(hrp: str) -> None:
    if not hrp.startswith(HRP_PREFIX):
        raise SwcanProtocolError(f"human-readable part {hrp!r} does not start with {HRP_PREFIX!r}")
    tail = hrp[len(HRP_PREFIX):]
    if not 1 <= len(tail) <= MAX_HRP_TAIL:
        raise SwcanProtocolError(
            f"human-readable part {hrp!r} has {len(tail)} characters after {HRP_PREFIX!r}, "
            f"expected 1 to {MAX_HRP_TAIL}")
    if not set(tail.encode()) <= _HRP_TAIL_CHARS:
        raise SwcanProtocolError(f"human-readable part {hrp!r} has characters other than a-z and 0-9")


def parse_bolt11(text: str) -> tuple[str, list[int]]:
    """(hrp, data symbols without checksum) of a BOLT11-shaped string, checksum verified."""
    try:
        hrp, data = bech32.decode(text)
    except bech32.Bech32Error as exc:
        raise SwcanProtocolError(f"invoice is not valid bech32: {exc}") from None
    _check_hrp(hrp)
    if len(data) < MIN_SYMBOLS:
        raise SwcanProtocolError(
            f"invoice data part has {len(data)} symbols, a BOLT11 invoice has at least {MIN_SYMBOLS}")
    _check_tagged_fields(data)
    return hrp, data


def _check_tagged_fields(data: list[int]) -> None:
    # Packed invoices carry no checksum, so this is what catches one cut short or padded out.
    end = len(data) - SIGNATURE_SYMBOLS
    position = TIMESTAMP_SYMBOLS
    while position < end:
        if position + TAG_HEADER_SYMBOLS > end:
            raise SwcanProtocolError("invoice ends inside a tagged field header")
        position += TAG_HEADER_SYMBOLS + (data[position + 1] << 5 | data[position + 2])
    if position != end:
        raise SwcanProtocolError("invoice tagged fields run into the signature (truncated or not BOLT11)")


def pack(bolt11: str) -> bytes:
    hrp, data = parse_bolt11(bolt11)
    tail = hrp[len(HRP_PREFIX):].encode("ascii")
    packed = bytes(bech32.convert_bits(data, 5, 8, pad=True))
    padded_symbol = len(packed) * 8 // 5 != len(data)
    return bytes([len(tail) | (_PAD_FLAG if padded_symbol else 0)]) + tail + packed


def unpack(packed: bytes) -> str:
    """The lowercase BOLT11 text of a packed invoice; raise SwcanProtocolError if it is not one."""
    if not packed:
        raise SwcanProtocolError("packed invoice is empty")
    header = packed[0]
    if header & _RESERVED_BITS:
        raise SwcanProtocolError(f"packed invoice header 0x{header:02x} has reserved bits set")
    tail_length = header & MAX_HRP_TAIL
    if tail_length == 0:
        raise SwcanProtocolError("packed invoice has an empty human-readable part")
    if len(packed) < 1 + tail_length:
        raise SwcanProtocolError(
            f"packed invoice of {len(packed)} bytes ends inside its {tail_length}-byte human-readable part")
    tail = packed[1:1 + tail_length]
    if not set(tail) <= _HRP_TAIL_CHARS:
        raise SwcanProtocolError("packed human-readable part has bytes other than ASCII a-z and 0-9")
    body = packed[1 + tail_length:]
    try:
        symbols = bech32.convert_bits(body, 8, 5, pad=False)
    except bech32.Bech32Error:
        raise SwcanProtocolError("packed invoice has non-zero padding bits") from None
    if header & _PAD_FLAG:
        # Without the flag the leftover is len*8 % 5 bits; the flagged extra group adds
        # five more, and padding must stay shorter than a byte.
        if len(body) * 8 % 5 + 5 > 7 or not symbols or symbols[-1] != 0:
            raise SwcanProtocolError("packed invoice padding flag does not match its padding")
        symbols.pop()
    text = bech32.encode(HRP_PREFIX + tail.decode("ascii"), symbols)
    parse_bolt11(text)
    return text
