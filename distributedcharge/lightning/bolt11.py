"""BOLT #11 Lightning invoices: decode (full validation, signature check) and encode.

The car decodes every invoice the wall unit streams to it before paying, so ``decode`` treats
its input as hostile: every defect becomes an :class:`InvoiceError` with a message precise
enough to log. The simulated LND node issues its regtest invoices with ``encode``; anything
``encode`` returns, ``decode`` accepts.

Where the spec and our brief differ we follow the brief and say so:

* ``p``/``h``/``s``/``n`` fields of the wrong length are skipped (the rule until BOLT 11 was
  tightened in 2025; the spec's "fields which must be ignored" example still relies on it).
* An ``s`` field is required only when the ``payment_secret`` feature (bit 14/15) is set, so
  legacy invoices without a payment secret still decode (with ``payment_secret`` None).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import coincurve
from coincurve.ecdsa import cdata_to_der, deserialize_compact

from distributedcharge.lightning import bech32


class InvoiceError(ValueError):
    """The invoice (or the request to encode one) is defective; the message says how."""


NETWORK_PREFIXES = {"bc": "mainnet", "tb": "testnet", "tbs": "signet", "bcrt": "regtest"}
_PREFIX_FOR_NETWORK = {network: prefix for prefix, network in NETWORK_PREFIXES.items()}

DEFAULT_EXPIRY = 3600
DEFAULT_MIN_FINAL_CLTV_EXPIRY = 18

FEATURE_VAR_ONION_OPTIN = 8
FEATURE_PAYMENT_SECRET = 14
FEATURE_BASIC_MPP = 16
# What LND puts in its invoices: var_onion_optin and payment_secret required, basic_mpp optional.
DEFAULT_FEATURES = (
    1 << FEATURE_VAR_ONION_OPTIN | 1 << FEATURE_PAYMENT_SECRET | 1 << (FEATURE_BASIC_MPP + 1)
)
# Required (even) bits we let through. payment_metadata (48) is left out on purpose: we do not
# carry the `m` field, so we cannot promise a payer would hand it back to the payee.
_KNOWN_REQUIRED_FEATURES = frozenset(
    {FEATURE_VAR_ONION_OPTIN, FEATURE_PAYMENT_SECRET, FEATURE_BASIC_MPP}
)
_MAX_BITS_NAMED = 8

_MSAT_PER_BTC = 100_000_000_000
_MSAT_PER_MULTIPLIER = {"": _MSAT_PER_BTC, "m": 100_000_000, "u": 100_000, "n": 100}
MAX_AMOUNT_MSAT = 21_000_000 * _MSAT_PER_BTC
# 21 million BTC in pico-bitcoin has 20 digits; longer amounts are refused before int() sees them.
_MAX_AMOUNT_DIGITS = 20

_TIMESTAMP_LENGTH = 7  # 35 bits
_SIGNATURE_LENGTH = 104  # 520 bits: 64-byte R||S and a recovery id
_MAX_FIELD_LENGTH = 1023  # 10-bit data_length
_MAX_TIMESTAMP = (1 << 35) - 1
_MAX_EXPIRY = (1 << 64) - 1  # LND parses expiry as uint64
_MAX_CLTV = (1 << 32) - 1  # CLTV values are u32 on the wire, a larger `c` is unpayable
_SECP256K1_HALF_ORDER = 0x7FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF5D576E7357A4501DDFE92F46681B20A0

_TAG_P, _TAG_S, _TAG_D, _TAG_N, _TAG_H, _TAG_X, _TAG_C, _TAG_R, _TAG_FEATURES = (
    bech32.CHARSET.index(letter) for letter in "psdnhxcr9"
)
_FIXED_FIELD_LENGTH = {_TAG_P: 52, _TAG_S: 52, _TAG_H: 52, _TAG_N: 53}
_FIELD_NAMES = {
    _TAG_P: "payment hash",
    _TAG_S: "payment secret",
    _TAG_D: "description",
    _TAG_N: "payee node id",
    _TAG_H: "description hash",
    _TAG_X: "expiry",
    _TAG_C: "min_final_cltv_expiry",
    _TAG_FEATURES: "features",
    _TAG_R: "route hint",
}

_HOP_BYTES = 33 + 8 + 4 + 4 + 2
_MAX_HOPS_PER_HINT = _MAX_FIELD_LENGTH * 5 // 8 // _HOP_BYTES


@dataclass(frozen=True)
class RouteHop:
    pubkey: bytes  # 33-byte node id at the start of the channel
    short_channel_id: int
    fee_base_msat: int
    fee_ppm: int
    cltv_delta: int


@dataclass(frozen=True)
class Invoice:
    raw: str  # lowercase, as the payer's LND will be handed it
    network: str  # a value of NETWORK_PREFIXES
    amount_msat: int | None  # None: the payer chooses the amount
    timestamp: int  # unix seconds
    expiry: int  # seconds after timestamp
    payment_hash: bytes
    payment_secret: bytes | None  # None only in legacy invoices without the payment_secret feature
    description: str | None
    description_hash: bytes | None
    payee: bytes  # 33-byte node id: from a verified `n` field, else recovered from the signature
    min_final_cltv_expiry: int
    features: int  # bit i set = feature bit i; 0 without a `9` field
    route_hints: tuple[tuple[RouteHop, ...], ...]

    @property
    def expires_at(self) -> int:
        return self.timestamp + self.expiry

    def is_expired(self, now: float) -> bool:
        return now >= self.expires_at

    @property
    def payee_hex(self) -> str:
        return self.payee.hex()

    @property
    def payment_hash_hex(self) -> str:
        return self.payment_hash.hex()


def _tag_label(tag: int) -> str:
    return f"`{bech32.CHARSET[tag]}` field"


# --- decoding ---------------------------------------------------------------------------------


def decode(text: str) -> Invoice:
    """Parse, validate and signature-check a BOLT11 invoice; raise :class:`InvoiceError` if bad."""
    if not isinstance(text, str):
        raise InvoiceError(f"an invoice is text, not {type(text).__name__}")
    try:
        hrp, data = bech32.decode(text)
    except bech32.Bech32Error as exc:
        raise InvoiceError(f"not valid bech32: {exc}") from None
    network, amount_msat = _parse_hrp(hrp)
    if len(data) < _TIMESTAMP_LENGTH + _SIGNATURE_LENGTH:
        raise InvoiceError(
            f"too short: the data part has {len(data)} characters, a timestamp and signature alone "
            f"take {_TIMESTAMP_LENGTH + _SIGNATURE_LENGTH}"
        )
    signed, signature_data = data[:-_SIGNATURE_LENGTH], data[-_SIGNATURE_LENGTH:]
    fields = _collect_fields(signed[_TIMESTAMP_LENGTH:])

    node_id_data = _single(fields, _TAG_N)
    stated_payee = None if node_id_data is None else _bytes(node_id_data, _TAG_N)
    signature = bytes(bech32.convert_bits(signature_data, 5, 8, pad=False))
    payee = _verified_payee(signature, _signing_digest(hrp, signed), stated_payee)

    payment_hash_data = _single(fields, _TAG_P)
    if payment_hash_data is None:
        raise InvoiceError("no payment hash (`p` field of 52 characters)")
    secret_data = _single(fields, _TAG_S)
    payment_secret = None if secret_data is None else _bytes(secret_data, _TAG_S)
    description, description_hash = _description(fields)
    expiry_data = _single(fields, _TAG_X)
    cltv_data = _single(fields, _TAG_C)
    features_data = _single(fields, _TAG_FEATURES)
    expiry = DEFAULT_EXPIRY if expiry_data is None else _minimal_int(expiry_data, _TAG_X)
    if expiry > _MAX_EXPIRY:
        raise InvoiceError(f"expiry {expiry} s does not fit in 64 bits")
    cltv = DEFAULT_MIN_FINAL_CLTV_EXPIRY if cltv_data is None else _minimal_int(cltv_data, _TAG_C)
    if cltv > _MAX_CLTV:
        raise InvoiceError(f"min_final_cltv_expiry {cltv} does not fit in 32 bits")
    features = 0 if features_data is None else _minimal_int(features_data, _TAG_FEATURES)
    _check_features(features, has_payment_secret=payment_secret is not None)

    return Invoice(
        raw=text.lower(),
        network=network,
        amount_msat=amount_msat,
        timestamp=_int(signed[:_TIMESTAMP_LENGTH]),
        expiry=expiry,
        payment_hash=_bytes(payment_hash_data, _TAG_P),
        payment_secret=payment_secret,
        description=description,
        description_hash=description_hash,
        payee=payee,
        min_final_cltv_expiry=cltv,
        features=features,
        route_hints=tuple(_route_hint(hint, index) for index, hint in enumerate(fields.get(_TAG_R, ()))),
    )


def _parse_hrp(hrp: str) -> tuple[str, int | None]:
    if not hrp.startswith("ln"):
        raise InvoiceError(f"prefix {hrp!r} does not start with 'ln': not a Lightning invoice")
    # BIP-173 currency prefixes are letters only and an amount starts with a digit, which is what
    # keeps "lntbs" apart from "lntb" and "lnbcrt" apart from "lnbc".
    currency_end = 2
    while currency_end < len(hrp) and "a" <= hrp[currency_end] <= "z":
        currency_end += 1
    currency, amount = hrp[2:currency_end], hrp[currency_end:]
    network = NETWORK_PREFIXES.get(currency)
    if network is None:
        known = ", ".join(f"ln{prefix}" for prefix in NETWORK_PREFIXES)
        raise InvoiceError(f"unknown network {currency!r} (prefix 'ln{currency}'; known: {known})")
    if not amount:
        return network, None
    return network, _parse_amount(amount)


def _parse_amount(amount: str) -> int:
    match = re.fullmatch(r"([0-9]+)(.?)", amount)
    if match is None:
        raise InvoiceError(f"amount {amount!r} is not a number followed by an optional multiplier")
    digits, multiplier = match.groups()
    if multiplier not in _MSAT_PER_MULTIPLIER and multiplier != "p":
        raise InvoiceError(f"unknown amount multiplier {multiplier!r} (expected m, u, n or p)")
    if digits.strip("0") == "":
        raise InvoiceError("amount is zero; an invoice for any amount leaves the amount out")
    if digits.startswith("0"):
        raise InvoiceError(f"amount {digits!r} has a leading zero")
    if len(digits) > _MAX_AMOUNT_DIGITS:
        raise InvoiceError(f"amount {amount!r} is more than all bitcoin")
    if multiplier == "p":
        if not digits.endswith("0"):
            raise InvoiceError(
                f"amount {amount!r} has sub-millisatoshi precision (a pico amount must end in 0)"
            )
        amount_msat = int(digits) // 10
    else:
        amount_msat = int(digits) * _MSAT_PER_MULTIPLIER[multiplier]
    if amount_msat > MAX_AMOUNT_MSAT:
        raise InvoiceError(f"amount {amount!r} is more than all bitcoin")
    return amount_msat


def _tagged_fields(data: list[int]) -> Iterator[tuple[int, list[int]]]:
    position = 0
    while position < len(data):
        if len(data) - position < 3:
            raise InvoiceError("the data part ends inside a tagged field's header")
        tag = data[position]
        length = data[position + 1] << 5 | data[position + 2]
        start = position + 3
        if start + length > len(data):
            raise InvoiceError(
                f"{_tag_label(tag)} claims {length} characters but only {len(data) - start} "
                "remain before the signature"
            )
        yield tag, data[start : start + length]
        position = start + length


def _collect_fields(data: list[int]) -> dict[int, list[list[int]]]:
    fields: dict[int, list[list[int]]] = {}
    for tag, payload in _tagged_fields(data):
        expected_length = _FIXED_FIELD_LENGTH.get(tag)
        if expected_length is not None and len(payload) != expected_length:
            continue
        fields.setdefault(tag, []).append(payload)
    return fields


def _single(fields: dict[int, list[list[int]]], tag: int) -> list[int] | None:
    found = fields.get(tag, [])
    if len(found) > 1:
        raise InvoiceError(
            f"{len(found)} {_tag_label(tag)}s ({_FIELD_NAMES[tag]}); at most one is allowed"
        )
    return found[0] if found else None


def _bytes(payload: list[int], tag: int) -> bytes:
    try:
        return bytes(bech32.convert_bits(payload, 5, 8, pad=False))
    except bech32.Bech32Error:
        raise InvoiceError(
            f"{_tag_label(tag)} ({_FIELD_NAMES[tag]}): the bits after the last "
            "whole byte are not zero padding"
        ) from None


def _int(payload: list[int]) -> int:
    value = 0
    for digit in payload:
        value = value << 5 | digit
    return value


def _minimal_int(payload: list[int], tag: int) -> int:
    if payload and payload[0] == 0:
        raise InvoiceError(
            f"{_tag_label(tag)} ({_FIELD_NAMES[tag]}) starts with a zero digit (non-minimal encoding)"
        )
    return _int(payload)


def _description(fields: dict[int, list[list[int]]]) -> tuple[str | None, bytes | None]:
    description_data = _single(fields, _TAG_D)
    hash_data = _single(fields, _TAG_H)
    if description_data is not None and hash_data is not None:
        raise InvoiceError(
            "has both a description (`d`) and a description hash (`h`); only one is allowed"
        )
    if description_data is not None:
        try:
            return _bytes(description_data, _TAG_D).decode("utf-8"), None
        except UnicodeDecodeError as exc:
            raise InvoiceError(
                f"description (`d` field) is not valid UTF-8: {exc.reason} at byte {exc.start}"
            ) from None
    if hash_data is not None:
        return None, _bytes(hash_data, _TAG_H)
    raise InvoiceError("no description: needs a `d` field or a 52-character `h` field")


def _route_hint(payload: list[int], index: int) -> tuple[RouteHop, ...]:
    raw = _bytes(payload, _TAG_R)
    if not raw or len(raw) % _HOP_BYTES:
        raise InvoiceError(
            f"route hint {index} (`r` field) is {len(raw)} bytes, "
            f"not a positive multiple of {_HOP_BYTES}"
        )
    hops = []
    for offset in range(0, len(raw), _HOP_BYTES):
        hop = raw[offset : offset + _HOP_BYTES]
        pubkey = hop[:33]
        try:
            coincurve.PublicKey(pubkey)
        except ValueError:
            raise InvoiceError(
                f"route hint {index} hop {offset // _HOP_BYTES}: "
                f"{pubkey.hex()} is not a valid public key"
            ) from None
        hops.append(
            RouteHop(
                pubkey=pubkey,
                short_channel_id=int.from_bytes(hop[33:41], "big"),
                fee_base_msat=int.from_bytes(hop[41:45], "big"),
                fee_ppm=int.from_bytes(hop[45:49], "big"),
                cltv_delta=int.from_bytes(hop[49:51], "big"),
            )
        )
    return tuple(hops)


def _signing_digest(hrp: str, signed: list[int]) -> bytes:
    signed_bytes = bytes(bech32.convert_bits(signed, 5, 8, pad=True))
    return hashlib.sha256(hrp.encode("ascii") + signed_bytes).digest()


def _verified_payee(signature: bytes, digest: bytes, stated_payee: bytes | None) -> bytes:
    compact, recovery_id = signature[:64], signature[64]
    if recovery_id > 3:
        raise InvoiceError(f"signature recovery id is {recovery_id}, must be 0 to 3")
    if stated_payee is None:
        try:
            recovered = coincurve.PublicKey.from_signature_and_message(signature, digest, hasher=None)
        except ValueError:
            raise InvoiceError("signature is not recoverable: no public key fits it") from None
        return recovered.format(compressed=True)
    try:
        payee_key = coincurve.PublicKey(stated_payee)
    except ValueError:
        raise InvoiceError(
            f"payee node id in the `n` field ({stated_payee.hex()}) is not a valid public key"
        ) from None
    if int.from_bytes(compact[32:], "big") > _SECP256K1_HALF_ORDER:
        raise InvoiceError(
            "signature is not in low-S form, which is required when an `n` field names the payee"
        )
    try:
        valid = payee_key.verify(cdata_to_der(deserialize_compact(compact)), digest, hasher=None)
    except ValueError:
        valid = False
    if not valid:
        raise InvoiceError(
            f"signature was not made by the payee named in the `n` field ({stated_payee.hex()})"
        )
    return stated_payee


def _check_features(features: int, *, has_payment_secret: bool) -> None:
    unknown_required = [
        bit
        for bit in range(0, features.bit_length(), 2)
        if features >> bit & 1 and bit not in _KNOWN_REQUIRED_FEATURES
    ]
    if unknown_required:
        # A hostile `9` field can set thousands of bits; the log line names only the first few.
        shown = ", ".join(str(bit) for bit in unknown_required[:_MAX_BITS_NAMED])
        more = len(unknown_required) - _MAX_BITS_NAMED
        raise InvoiceError(
            f"unknown required feature bit{'s' if len(unknown_required) > 1 else ''} {shown}"
            + (f" and {more} more" if more > 0 else "")
        )
    if features >> FEATURE_PAYMENT_SECRET & 0b11 and not has_payment_secret:
        raise InvoiceError(
            "no payment secret (`s` field) although the payment_secret feature (bit 14/15) is set"
        )
    if features >> FEATURE_BASIC_MPP & 0b11 and not features >> FEATURE_PAYMENT_SECRET & 0b11:
        raise InvoiceError(
            "feature basic_mpp (bit 16/17) is set without its dependency payment_secret (bit 14/15)"
        )


# --- encoding ---------------------------------------------------------------------------------


def encode(
    *,
    network: str,
    amount_msat: int | None,
    payment_hash: bytes,
    private_key: bytes,
    payment_secret: bytes | None = None,
    description: str | None = None,
    description_hash: bytes | None = None,
    expiry: int = DEFAULT_EXPIRY,
    timestamp: int,
    min_final_cltv_expiry: int = DEFAULT_MIN_FINAL_CLTV_EXPIRY,
    features: int | None = None,
    route_hints: Sequence[Sequence[RouteHop]] = (),
    include_payee: bool = False,
) -> str:
    """Build and sign an invoice (lowercase). ``features=None`` means LND's defaults when a
    payment secret is given, none otherwise. ``x`` and ``c`` are left out when they equal the
    spec defaults, which keeps invoices short on the 33 kbit/s charge-port bus."""
    prefix = _PREFIX_FOR_NETWORK.get(network)
    if prefix is None:
        known = ", ".join(_PREFIX_FOR_NETWORK)
        raise InvoiceError(f"unknown network {network!r} (known: {known})")
    hrp = "ln" + prefix + _amount_text(amount_msat)
    secret = _checked_bytes(private_key, 32, "private_key")
    try:
        signing_key = coincurve.PrivateKey(secret)
    except ValueError as exc:
        raise InvoiceError(f"private_key is not a valid secp256k1 secret: {exc}") from None
    if features is None:
        features = DEFAULT_FEATURES if payment_secret is not None else 0
    if not _is_int(features) or features < 0:
        raise InvoiceError(f"features must be a non-negative int, not {features!r}")
    _check_features(features, has_payment_secret=payment_secret is not None)
    if (description is None) == (description_hash is None):
        raise InvoiceError("give exactly one of description and description_hash")
    if description is not None and not isinstance(description, str):
        raise InvoiceError(f"description must be str, not {type(description).__name__}")
    _checked_int(expiry, _MAX_EXPIRY, "expiry")
    _checked_int(min_final_cltv_expiry, _MAX_CLTV, "min_final_cltv_expiry")

    data = _digits(_checked_int(timestamp, _MAX_TIMESTAMP, "timestamp"), _TIMESTAMP_LENGTH)
    if payment_secret is not None:
        data += _field(_TAG_S, _checked_bytes(payment_secret, 32, "payment_secret"))
    data += _field(_TAG_P, _checked_bytes(payment_hash, 32, "payment_hash"))
    if description is not None:
        try:
            data += _field(_TAG_D, description.encode("utf-8"))
        except UnicodeEncodeError:
            raise InvoiceError("description cannot be encoded as UTF-8") from None
    if description_hash is not None:
        data += _field(_TAG_H, _checked_bytes(description_hash, 32, "description_hash"))
    if include_payee:
        data += _field(_TAG_N, signing_key.public_key.format(compressed=True))
    if expiry != DEFAULT_EXPIRY:
        data += _int_field(_TAG_X, expiry)
    if min_final_cltv_expiry != DEFAULT_MIN_FINAL_CLTV_EXPIRY:
        data += _int_field(_TAG_C, min_final_cltv_expiry)
    for index, hint in enumerate(route_hints):
        data += _field(_TAG_R, _route_hint_bytes(hint, index))
    if features:
        data += _int_field(_TAG_FEATURES, features)

    signature = signing_key.sign_recoverable(_signing_digest(hrp, data), hasher=None)
    return bech32.encode(hrp, data + bech32.convert_bits(signature, 8, 5, pad=True))


def _amount_text(amount_msat: int | None) -> str:
    if amount_msat is None:
        return ""
    if not _is_int(amount_msat) or not 0 < amount_msat <= MAX_AMOUNT_MSAT:
        raise InvoiceError(
            f"amount_msat must be an int from 1 to {MAX_AMOUNT_MSAT} (or None), not {amount_msat!r}"
        )
    # The largest unit that divides the amount gives the fewest digits.
    for multiplier, msat_per_unit in _MSAT_PER_MULTIPLIER.items():
        if amount_msat % msat_per_unit == 0:
            return f"{amount_msat // msat_per_unit}{multiplier}"
    return f"{amount_msat * 10}p"


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _checked_int(value: int, maximum: int, name: str) -> int:
    if not _is_int(value) or not 0 <= value <= maximum:
        raise InvoiceError(f"{name} must be an int from 0 to {maximum}, not {value!r}")
    return value


def _checked_bytes(value: bytes, length: int, name: str) -> bytes:
    if not isinstance(value, bytes) or len(value) != length:
        raise InvoiceError(f"{name} must be {length} bytes, not {value!r}")
    return value


def _digits(value: int, count: int) -> list[int]:
    return [value >> 5 * (count - 1 - i) & 31 for i in range(count)]


def _tagged(tag: int, payload: list[int]) -> list[int]:
    if len(payload) > _MAX_FIELD_LENGTH:
        raise InvoiceError(
            f"{_tag_label(tag)} would need {len(payload)} characters, "
            f"more than the {_MAX_FIELD_LENGTH} a field can hold"
        )
    return [tag, len(payload) >> 5, len(payload) & 31] + payload


def _field(tag: int, payload: bytes) -> list[int]:
    return _tagged(tag, bech32.convert_bits(payload, 8, 5, pad=True))


def _int_field(tag: int, value: int) -> list[int]:
    return _tagged(tag, _digits(value, (value.bit_length() + 4) // 5))


def _route_hint_bytes(hint: Sequence[RouteHop], index: int) -> bytes:
    if not 0 < len(hint) <= _MAX_HOPS_PER_HINT:
        raise InvoiceError(
            f"route hint {index} has {len(hint)} hops; it needs 1 to {_MAX_HOPS_PER_HINT}"
        )
    encoded = b""
    for hop in hint:
        if not isinstance(hop, RouteHop):
            raise InvoiceError(f"route hint {index} holds {hop!r}, not a RouteHop")
        _checked_bytes(hop.pubkey, 33, "route hop pubkey")
        try:
            coincurve.PublicKey(hop.pubkey)
        except ValueError:
            raise InvoiceError(f"route hint {index}: {hop.pubkey!r} is not a valid public key") from None
        encoded += (
            hop.pubkey
            + _checked_int(hop.short_channel_id, (1 << 64) - 1, "short_channel_id").to_bytes(8, "big")
            + _checked_int(hop.fee_base_msat, (1 << 32) - 1, "fee_base_msat").to_bytes(4, "big")
            + _checked_int(hop.fee_ppm, (1 << 32) - 1, "fee_ppm").to_bytes(4, "big")
            + _checked_int(hop.cltv_delta, (1 << 16) - 1, "cltv_delta").to_bytes(2, "big")
        )
    return encoded
