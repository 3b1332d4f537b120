"""SWCAN frames and payloads: the original's bytes, v2 round trips, every bad input refused with its reason."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from distributedcharge.lightning import bech32
from distributedcharge.swcan import messages as m
from distributedcharge.swcan import wire
from distributedcharge.swcan.errors import SwcanProtocolError
from distributedcharge.swcan.messages import Answer, Offer, V1OfferFrame
from distributedcharge.units import NJ_PER_WH
from test_swcan_packing import REFERENCE_INVOICE, make_invoice

# --- offers ----------------------------------------------------------------------------------


def test_v1_offer_is_the_originals_frame_for_100_sat_per_kwh_and_3_sat() -> None:
    data = m.encode_v1_offer(Offer(rate_msat_per_kwh=100_000, payment_msat=3_000))
    assert data == bytes.fromhex("00e1f50503000000")
    assert m.decode_v1_offer(data) == V1OfferFrame(rate_sat_per_gwh=100_000_000, payment_sat=3)


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 4_294_966), st.integers(1, 4_294_966_000))
def test_v1_offer_round_trips_the_terms_a_v1_car_sees(rate: int, payment_msat: int) -> None:
    offer = Offer(rate, payment_msat)
    received = m.offer_from_v1(m.decode_v1_offer(m.encode_v1_offer(offer)))
    assert received == offer.as_v1()
    assert received.rate_msat_per_kwh == rate
    assert 0 <= received.payment_msat - payment_msat < 1_000


def test_payment_below_a_whole_sat_is_rounded_up_in_v1_and_exact_in_v2() -> None:
    offer = Offer(100_000, 2_500)
    assert offer.as_v1() == Offer(100_000, 3_000)
    v2 = m.decode_v2_offer(m.encode_v2_offer(offer_number=4, session_id=0xBEEF, payment_msat=2_500))
    assert m.combine_offer(m.decode_v1_offer(m.encode_v1_offer(offer)), v2) == offer
    assert (v2.version, v2.offer_number, v2.session_id) == (2, 4, 0xBEEF)


def test_rate_the_original_truncated_from_a_float_is_rounded_up_to_whole_msat() -> None:
    # The original sends int(1.001 * 1e9) = 1000999999 sat/GWh for 1001 sat/kWh.
    assert m.offer_from_v1(V1OfferFrame(1_000_999_999, 41)) == Offer(1_001_000, 41_000)


@pytest.mark.parametrize("data", [
    bytes(4) + (3).to_bytes(4, "little"),
    b"\xff\xff\xff\xff" + (3).to_bytes(4, "little"),
    (100_000_000).to_bytes(4, "little") + bytes(4),
    (100_000_000).to_bytes(4, "little") + b"\xff\xff\xff\xff",
])
def test_offers_of_zero_or_all_ones_are_refused(data: bytes) -> None:
    with pytest.raises(SwcanProtocolError, match="is not a real offer"):
        m.decode_v1_offer(data)


@pytest.mark.parametrize("length", [0, 1, 7, 9])
def test_offer_frames_with_the_wrong_dlc_are_refused(length: int) -> None:
    with pytest.raises(SwcanProtocolError, match=f"DLC {length}, expected 8"):
        m.decode_v1_offer(b"\x01" * length)
    with pytest.raises(SwcanProtocolError, match=f"DLC {length}, expected 8"):
        m.decode_v2_offer(b"\x02" * length)


def test_v2_offer_frames_name_version_2_or_later_and_a_real_payment() -> None:
    with pytest.raises(SwcanProtocolError, match="version 1"):
        m.decode_v2_offer(bytes([1, 0, 0, 0, 1, 0, 0, 0]))
    assert m.decode_v2_offer(bytes([3, 0, 0, 0, 1, 0, 0, 0])).version == 3
    with pytest.raises(SwcanProtocolError, match="is not a real offer"):
        m.decode_v2_offer(bytes([2, 0, 0, 0, 0, 0, 0, 0]))


def test_a_v2_offer_must_agree_with_the_1998_frame_beside_it() -> None:
    v2 = m.V2OfferFrame(2, 0, 1, 2_500)
    with pytest.raises(SwcanProtocolError, match="does not round up"):
        m.combine_offer(V1OfferFrame(100_000_000, 2), v2)
    with pytest.raises(SwcanProtocolError, match="not a whole msat/kWh"):
        m.combine_offer(V1OfferFrame(100_000_001, 3), v2)


@pytest.mark.parametrize("offer", [Offer(4_294_968, 1_000), Offer(100_000, 4_294_967_295_000)])
def test_terms_v1_cannot_carry_are_refused_before_anything_is_sent(offer: Offer) -> None:
    with pytest.raises(ValueError, match="does not fit"):
        m.encode_v1_offer(offer)


@pytest.mark.parametrize("rate, payment", [(0, 1), (1, 0), (-5, 1), (1.5, 1), (True, 1)])
def test_offers_need_positive_integer_terms(rate: object, payment: object) -> None:
    with pytest.raises(ValueError, match="positive integer"):
        Offer(rate, payment)  # type: ignore[arg-type]


# --- answers ---------------------------------------------------------------------------------


def test_v1_answers_are_one_byte_like_the_original() -> None:
    assert m.encode_v1_answer(True) == b"\x01"
    assert m.encode_v1_answer(False) == b"\x00"
    assert m.decode_answer(b"\x01", v2=True) == Answer(True)


def test_a_v1_wall_reads_only_byte_0_of_a_v2_answer() -> None:
    data = m.encode_v2_answer(True, offer_number=3, session_id=0xBEEF)
    assert data == bytes.fromhex("010203efbe")
    assert m.decode_answer(data, v2=False) == Answer(True)
    assert m.decode_answer(data, v2=True) == Answer(True, 2, 3, 0xBEEF)


@pytest.mark.parametrize("data, reason", [
    (b"", "DLC 0"),
    (b"\x02", "byte 0 is 0x02"),
    (b"\x01\x02\x00", "DLC 3, expected 1"),
    (b"\x00\x03\x00\xef\xbe", "version 3"),
])
def test_malformed_answers_are_refused(data: bytes, reason: str) -> None:
    with pytest.raises(SwcanProtocolError, match=reason):
        m.decode_answer(data, v2=True)


# --- invoices --------------------------------------------------------------------------------


def test_v1_invoice_is_the_ascii_text_and_comes_back_lowercase() -> None:
    assert m.encode_v1_invoice(REFERENCE_INVOICE) == REFERENCE_INVOICE.encode("ascii")
    assert m.decode_v1_invoice(REFERENCE_INVOICE.upper().encode()) == REFERENCE_INVOICE


@pytest.mark.parametrize("payload, reason", [
    (b"", "empty"),
    (REFERENCE_INVOICE.encode() + b"\x00", "not printable ASCII"),
    ("lnbc15u1pé".encode(), "not printable ASCII"),
    (bytes(range(256)), "not printable ASCII"),
    (REFERENCE_INVOICE[:-10].encode(), "bad checksum"),
    (REFERENCE_INVOICE.replace("q", "b", 1).encode(), "invalid bech32 character 'b'"),
    (b"q" * 4096, "4096 bytes"),
    (bech32.encode("bc", [0] * 120).encode(), "does not start with 'ln'"),
])
def test_bad_v1_invoices_are_refused(payload: bytes, reason: str) -> None:
    with pytest.raises(SwcanProtocolError, match=reason):
        m.decode_v1_invoice(payload)


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 0xFFFF), st.integers(0, 255), st.integers(0, 2_000_000 * NJ_PER_WH),
       st.integers(0, 50), st.integers(1, 10**7))
def test_v2_invoice_round_trips_with_the_wall_meter_to_a_tenth_of_a_wh(
        session_id: int, offer_number: int, wall_nj: int, seed: int, amount: int) -> None:
    invoice = make_invoice(amount_msat=amount, seed=seed)
    decoded = m.decode_v2_invoice(m.encode_v2_invoice(invoice, session_id, offer_number, wall_nj))
    assert (decoded.session_id, decoded.offer_number, decoded.bolt11) == (session_id, offer_number, invoice)
    tenth_wh = NJ_PER_WH // 10
    saturated = 0xFFFFFF * tenth_wh
    assert decoded.wall_energy_nj == min(wall_nj // tenth_wh * tenth_wh, saturated)


@pytest.mark.parametrize("payload, reason", [
    (REFERENCE_INVOICE.encode(), "ASCII \\(v1\\) invoice"),
    (b"\x01\x02\x03\x04\x05\x06", "shorter than"),
    (bytes(4096), "4096 bytes"),
    (b"\xef\xbe\x00\x00\x00\x00\x65" + bytes(range(1, 200)), "reserved bits"),
])
def test_bad_v2_invoices_are_refused(payload: bytes, reason: str) -> None:
    with pytest.raises(SwcanProtocolError, match=reason):
        m.decode_v2_invoice(payload)


def test_the_wall_refuses_to_send_what_is_not_an_invoice_or_a_meter_reading() -> None:
    with pytest.raises(SwcanProtocolError):
        m.encode_v1_invoice("hello")
    with pytest.raises(ValueError, match="non-negative"):
        m.encode_v2_invoice(REFERENCE_INVOICE, 1, 0, -1)


# --- wire model ------------------------------------------------------------------------------


def test_frame_bits_match_the_reference_count_for_the_example_invoice_padded() -> None:
    # tesla-model3-can.md 3.2 counts 5,590 bits for this invoice in 0xCC-padded frames at BS 10.
    frames = wire.isotp_frames(REFERENCE_INVOICE.encode(), stmin=25, blocksize=10)
    assert sum(wire.frame_bits(f.can_id, f.data.ljust(8, b"\xcc")) for f in frames) == 5_590


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 0x7FF), st.binary(max_size=8))
def test_frame_bits_stay_within_the_stuffing_bounds(can_id: int, data: bytes) -> None:
    unstuffed = 47 + 8 * len(data)
    # At most one stuff bit per four bits after the first five of the 34 + 8n stuffed bits.
    assert unstuffed <= wire.frame_bits(can_id, data) <= unstuffed + (34 + 8 * len(data) - 1) // 4


def test_original_needs_over_a_second_per_invoice_and_v2_under_a_quarter() -> None:
    v1_frames = wire.isotp_frames(m.encode_v1_invoice(REFERENCE_INVOICE), stmin=25, blocksize=10)
    v2_frames = wire.isotp_frames(m.encode_v2_invoice(REFERENCE_INVOICE, 1, 0, 0), stmin=0, blocksize=0)
    assert [f.kind for f in v1_frames].count("FC") == 5
    assert all(f.data == bytes.fromhex("300a19") for f in v1_frames if f.kind == "FC")
    assert 1.05 < wire.transfer_seconds(v1_frames, 25) < 1.25
    assert wire.transfer_seconds(v2_frames, 0) < 0.25
