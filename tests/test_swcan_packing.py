"""Packed invoices (SWCAN v2): exact round trip, at most 65 % of the ASCII bytes, hostile input refused.

Also home of the invoice helpers the other SWCAN tests import.
"""

from __future__ import annotations

import hashlib

import pytest
from coincurve import PrivateKey
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from distributedcharge.lightning import bech32, bolt11
from distributedcharge.swcan import messages, packing
from distributedcharge.swcan.errors import SwcanProtocolError

# The 303-character mainnet example from the team's reference (tesla-model3-can.md 3.2).
REFERENCE_INVOICE = (
    "lnbc15u1p5ww7qqpp57kck2gj2tzmerhm278vrq0npehzthpkr68zzwypux3xyrz0t9u0qdp0g35hxarjd9382ar9v3pksctjvajn5gp39"
    "ccrqgrt2a5zqsqxqrrsscqzzssp5002agljydl8v9g7cz9ekzy890qduen4xjemzucgkcm5ujtvehu6s9qyysgqylmvked0asmm0dqnwff"
    "tk84w9jjgzestuhevqpvwhtrra20ex9qqcf2kdnu20ay6pq9nhdlkch93646vkxccdwmfrrf6hjflhfcs4ccq7a3vmw"
)


def _key(label: str, seed: int) -> bytes:
    return hashlib.sha256(f"{label}/{seed}".encode()).digest()


def make_invoice(amount_msat: int = 2_500, memo: str = "DistributedCharge: 25 Wh @ 100 sat/kWh",
                 seed: int = 0, route_hints: int = 0, network: str = "mainnet") -> str:
    """A signed invoice with the fields LND writes (expiry 24 h, final CLTV 80, secret, features)."""
    hints = [[bolt11.RouteHop(pubkey=PrivateKey(_key("hop", seed * 10 + n)).public_key.format(),
                              short_channel_id=800_000 << 40 | seed << 16 | n, fee_base_msat=1_000,
                              fee_ppm=1, cltv_delta=144)] for n in range(route_hints)]
    return bolt11.encode(network=network, amount_msat=amount_msat, payment_hash=_key("hash", seed),
                         private_key=_key("node", seed), payment_secret=_key("secret", seed),
                         description=memo, expiry=86_400, timestamp=1_750_000_000 + seed,
                         min_final_cltv_expiry=80, route_hints=hints)


@st.composite
def lnd_invoices(draw: st.DrawFn) -> str:
    """Invoices as an LND node would stream them: any msat amount, memo, 0-1 route hints, 300-400 chars."""
    invoice = make_invoice(
        amount_msat=draw(st.integers(1, 10**8)),
        memo=draw(st.text(st.characters(min_codepoint=32, max_codepoint=126), min_size=0, max_size=90)),
        seed=draw(st.integers(0, 2**16)),
        route_hints=draw(st.integers(0, 1)),
        network=draw(st.sampled_from(["mainnet", "testnet", "regtest"])),
    )
    assume(300 <= len(invoice) <= 400)
    return invoice


@settings(max_examples=200, deadline=None)
@given(lnd_invoices())
def test_packed_invoice_unpacks_to_the_same_signed_invoice(invoice: str) -> None:
    unpacked = packing.unpack(packing.pack(invoice))
    assert unpacked == invoice
    assert bolt11.decode(unpacked).raw == invoice


@settings(max_examples=200, deadline=None)
@given(lnd_invoices())
def test_v2_invoice_with_header_is_at_most_65_percent_of_the_v1_bytes(invoice: str) -> None:
    v1 = messages.encode_v1_invoice(invoice)
    v2 = messages.encode_v2_invoice(invoice, session_id=0xFFFF, offer_number=255, wall_energy_nj=10**17)
    assert len(v2) <= 0.65 * len(v1)


def test_reference_invoice_shrinks_from_303_to_193_bytes() -> None:
    v2 = messages.encode_v2_invoice(REFERENCE_INVOICE, 0xBEEF, 0, 0)
    assert (len(REFERENCE_INVOICE), len(v2)) == (303, 193)
    assert messages.decode_v2_invoice(v2).bolt11 == REFERENCE_INVOICE


@pytest.mark.parametrize("memo_symbols", [None, *range(0, 16)])
def test_every_padding_length_round_trips(memo_symbols: int | None) -> None:
    # Timestamp, an optional tagged field of each length, signature: every bit count mod 8 occurs.
    memo = [] if memo_symbols is None else [bech32.CHARSET.index("d"), 0, memo_symbols] + [3] * memo_symbols
    invoice = bech32.encode("lnbcrt25010p", [1] * 7 + memo + [2] * 104)
    assert packing.unpack(packing.pack(invoice)) == invoice


def test_uppercase_invoice_packs_to_its_lowercase_form() -> None:
    assert packing.unpack(packing.pack(REFERENCE_INVOICE.upper())) == REFERENCE_INVOICE


PACKED = packing.pack(REFERENCE_INVOICE)


@pytest.mark.parametrize("packed, reason", [
    (b"", "empty"),
    (bytes([0x60]) + PACKED[1:], "reserved bits"),
    (bytes([0x00]) + PACKED[1:], "empty human-readable part"),
    (bytes([31]) + b"bc15u", "ends inside"),
    (PACKED[:1] + b"BC15U" + PACKED[6:], "a-z and 0-9"),
    (PACKED[:-1] + bytes([PACKED[-1] | 1]), "padding"),
    (bytes([PACKED[0] ^ 0x80]) + PACKED[1:], "padding"),
    (PACKED[:-1], "tagged fields run into the signature"),
    (PACKED[:-2], "non-zero padding"),
    (PACKED[:6] + bytes(range(50)), "80 symbols"),
    (PACKED[:6] + bytes(range(100)), "tagged fields"),
])
def test_malformed_packed_invoices_are_refused_with_the_reason(packed: bytes, reason: str) -> None:
    with pytest.raises(SwcanProtocolError, match=reason):
        packing.unpack(packed)


def test_a_truncated_packed_invoice_never_yields_an_invoice_the_payer_would_accept() -> None:
    refused_by_the_link = 0
    for length in range(len(PACKED)):
        try:
            text = packing.unpack(PACKED[:length])
        except SwcanProtocolError:
            refused_by_the_link += 1
            continue
        # The rare cut that lands on a field boundary still breaks the signature.
        with pytest.raises(bolt11.InvoiceError):
            bolt11.decode(text)
    assert refused_by_the_link >= 0.9 * len(PACKED)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=400))
def test_random_bytes_never_unpack_into_anything_but_a_bech32_invoice(garbage: bytes) -> None:
    try:
        text = packing.unpack(garbage)
    except SwcanProtocolError:
        return
    assert packing.parse_bolt11(text)[0].startswith("ln")


@pytest.mark.parametrize("text, reason", [
    (bech32.encode("bc", [0] * 120), "does not start with 'ln'"),
    (bech32.encode("ln" + "b" * 32, [0] * 111), "expected 1 to 31"),
    (bech32.encode("lnbc", [0] * 110), "at least 111"),
    (REFERENCE_INVOICE[:-1] + "q", "bad checksum"),
])
def test_pack_refuses_what_is_not_a_bolt11_invoice(text: str, reason: str) -> None:
    with pytest.raises(SwcanProtocolError, match=reason):
        packing.pack(text)
