"""Bech32 (BIP-173) as BOLT11 uses it: no 90-character limit, 5-bit data kept as is.

Shared by the invoice decoder and by the SWCAN v2 packer, which ships the 5-bit data
part in binary and rebuilds the checksum on receipt.
"""

from __future__ import annotations

CHARSET = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"
_CHARSET_INDEX = {c: i for i, c in enumerate(CHARSET)}
_GENERATORS = (0x3B6A57B2, 0x26508E6D, 0x1EA119FA, 0x3D4233DD, 0x2A1462B3)
CHECKSUM_LENGTH = 6


class Bech32Error(ValueError):
    pass


def _polymod(values: list[int]) -> int:
    chk = 1
    for value in values:
        top = chk >> 25
        chk = (chk & 0x1FFFFFF) << 5 ^ value
        for i, generator in enumerate(_GENERATORS):
            if (top >> i) & 1:
                chk ^= generator
    return chk


def _hrp_expand(hrp: str) -> list[int]:
    return [ord(c) >> 5 for c in hrp] + [0] + [ord(c) & 31 for c in hrp]


def checksum(hrp: str, data: list[int]) -> list[int]:
    polymod = _polymod(_hrp_expand(hrp) + data + [0] * CHECKSUM_LENGTH) ^ 1
    return [(polymod >> 5 * (5 - i)) & 31 for i in range(CHECKSUM_LENGTH)]


def encode(hrp: str, data: list[int]) -> str:
    """``data`` without checksum; the checksum is appended."""
    return hrp + "1" + "".join(CHARSET[d] for d in data + checksum(hrp, data))


def decode(text: str) -> tuple[str, list[int]]:
    """Return (hrp, data without checksum); raise :class:`Bech32Error` on any defect."""
    if any(ord(c) < 33 or ord(c) > 126 for c in text):
        raise Bech32Error("invalid character (only printable ASCII is allowed)")
    if text.lower() != text and text.upper() != text:
        raise Bech32Error("mixed upper and lower case")
    text = text.lower()
    separator = text.rfind("1")
    if separator < 1:
        raise Bech32Error("no human-readable part before the '1' separator")
    if len(text) - separator - 1 < CHECKSUM_LENGTH:
        raise Bech32Error("too short for a checksum")
    hrp = text[:separator]
    try:
        data = [_CHARSET_INDEX[c] for c in text[separator + 1 :]]
    except KeyError as exc:
        raise Bech32Error(f"invalid bech32 character {exc.args[0]!r}") from None
    if _polymod(_hrp_expand(hrp) + data) != 1:
        raise Bech32Error("bad checksum")
    return hrp, data[:-CHECKSUM_LENGTH]


def convert_bits(data: list[int] | bytes, from_bits: int, to_bits: int, pad: bool) -> list[int]:
    """Regroup a bit string; with ``pad`` False leftover bits must be zero padding."""
    acc = bits = 0
    out: list[int] = []
    maxv = (1 << to_bits) - 1
    for value in data:
        if value < 0 or value >> from_bits:
            raise Bech32Error(f"value {value} does not fit in {from_bits} bits")
        acc = (acc << from_bits) | value
        bits += from_bits
        while bits >= to_bits:
            bits -= to_bits
            out.append((acc >> bits) & maxv)
    if pad:
        if bits:
            out.append((acc << (to_bits - bits)) & maxv)
    elif bits >= from_bits or ((acc << (to_bits - bits)) & maxv):
        raise Bech32Error("non-zero padding")
    return out
