"""TWC Gen 2 codec: framing, escaping, checksums, every message, a receiver that resyncs."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from distributedcharge.twc import codec
from distributedcharge.twc.codec import (
    ChargeCommand,
    ChargeCommandAck,
    ChargeCommandKind,
    DangerousCommandError,
    FirmwareReport,
    FrameReceiver,
    KwhVoltageReport,
    MasterHeartbeat,
    MasterIdle,
    MasterLinkready1,
    MasterLinkready2,
    PlugStateReport,
    Query,
    QueryKind,
    RawMessage,
    SerialReport,
    SlaveHeartbeat,
    SlaveLinkready,
    VinReport,
)

PROPERTY = settings(max_examples=200, deadline=None)

u8 = st.integers(0, 0xFF)
u16 = st.integers(0, 0xFFFF)
protocols = st.sampled_from([1, 2])

messages = st.one_of(
    st.builds(MasterLinkready1, u16, u8),
    st.builds(MasterLinkready2, u16, u8),
    st.builds(SlaveLinkready, u16, u8, u16, protocols),
    st.builds(MasterHeartbeat, u16, u16, u8, u16, st.booleans(), protocols),
    st.builds(SlaveHeartbeat, u16, u16, u8, u16, u16, protocols),
    st.builds(Query, st.sampled_from(list(QueryKind)), u16, u16, st.sampled_from([15, 16])),
    st.builds(ChargeCommand, st.sampled_from(list(ChargeCommandKind)), u16, u16),
    st.builds(ChargeCommandAck, st.sampled_from(list(ChargeCommandKind)), u16),
    st.builds(KwhVoltageReport, u16, st.integers(0, 2**32 - 1), st.tuples(u16, u16, u16),
              st.none() | st.tuples(u8, u8, u8)),
    st.builds(VinReport, u16, st.integers(0, 2), st.binary(min_size=7, max_size=7)),
    st.builds(FirmwareReport, u16, u8, u8, u8, u8),
    st.builds(SerialReport, u16, st.binary(min_size=11, max_size=11)),
    st.builds(PlugStateReport, u16, u8),
    st.just(MasterIdle()),
)


def unescaped_length(wire: bytes) -> int:
    inner = wire[1:-1]
    return len(inner) - inner.count(codec.ESCAPE)


@PROPERTY
@given(messages)
def test_every_message_survives_the_wire(message):
    wire = codec.encode(message)
    assert wire[0] == wire[-1] == codec.START
    assert codec.START not in wire[1:-1]
    assert codec.MIN_FRAME_LENGTH <= unescaped_length(wire) <= codec.MAX_FRAME_LENGTH
    receiver = FrameReceiver()
    assert receiver.feed(wire, 0.0) == [message]
    assert receiver.stats.errors() == 0 and receiver.stats.noise_bytes == 0


@PROPERTY
@given(st.lists(messages, min_size=1, max_size=5), st.data())
def test_frames_split_anywhere_decode_the_same(batch, data):
    wire = b"".join(codec.encode(m) for m in batch)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(wire)), max_size=8)))
    receiver = FrameReceiver()
    decoded = []
    for start, end in zip([0, *cuts], [*cuts, len(wire)]):
        decoded += receiver.feed(wire[start:end], 0.0)
    assert decoded == batch


@PROPERTY
@given(st.binary(max_size=300), messages)
def test_receiver_resynchronises_after_any_noise(noise, message):
    receiver = FrameReceiver()
    decoded = receiver.feed(noise, 0.0)
    decoded += receiver.feed(codec.encode(message), 0.1)
    assert decoded[-1] == message


@PROPERTY
@given(st.binary(max_size=500))
def test_random_bytes_never_raise_and_are_all_accounted(noise):
    receiver = FrameReceiver()
    receiver.feed(noise, 0.0)
    receiver.expire(5.0)
    if codec.START not in noise:
        assert receiver.stats.noise_bytes == len(noise)
        assert receiver.stats.errors() == 0


@PROPERTY
@given(messages, st.data())
def test_a_corrupted_byte_after_the_marker_is_always_caught(message, data):
    raw = bytearray(message.body() + bytes([codec.checksum(message.body())]))
    index = data.draw(st.integers(1, len(raw) - 1))
    raw[index] = data.draw(u8.filter(lambda b: b != raw[index]))
    escaped = bytes(raw).replace(b"\xdb", b"\xdb\xdd").replace(b"\xc0", b"\xdb\xdc")
    receiver = FrameReceiver()
    assert receiver.feed(b"\xc0" + escaped + b"\xc0", 0.0) == []
    assert receiver.stats.bad_checksum == 1


def test_checksum_matches_the_reference_example():
    wire = codec.encode(MasterHeartbeat(0x7777, 0xAB12, 0x09, 0x0640))
    assert wire == bytes.fromhex("c0 fb e0 7777 ab12 09 0640 000000000000 da c0".replace(" ", ""))


def test_real_slave_linkready_decodes():
    body = bytes.fromhex("fde2 4085 1d 0c80 0000000000000000 50".replace(" ", ""))
    receiver = FrameReceiver()
    assert receiver.feed(b"\xc0" + body + b"\xc0\xfe", 0.0) == [SlaveLinkready(0x4085, 0x1D, 3200, 2)]
    assert receiver.stats.noise_bytes == 0


def test_real_extended_kwh_report_decodes():
    body = bytes.fromhex("fdeb 1234 0000039c 00f4 00f0 00f5 00 00 00 00 00".replace(" ", ""))
    (report,) = FrameReceiver().feed(codec.frame(body), 0.0)
    assert report == KwhVoltageReport(0x1234, 924, (244, 240, 245), (0, 0, 0))
    assert report.extended


def test_protocol_is_read_from_the_length():
    assert codec.parse(SlaveLinkready(1, 2, 8000, 1).body()).protocol == 1
    assert codec.parse(SlaveLinkready(1, 2, 8000, 2).body()).protocol == 2
    assert len(MasterHeartbeat(1, 2, protocol=1).body()) + 1 == 14


def test_twcmanager_fifteen_byte_requests_are_understood():
    body = bytes([0xFB, 0xEB, 0x77, 0x77, 0x12, 0x34]) + bytes(8)
    assert FrameReceiver().feed(codec.frame(body), 0.0) == [Query(QueryKind.KWH_VOLTAGE, 0x7777, 0x1234, 15)]


@pytest.mark.parametrize("prefix", ["fc19", "fc1a", "fbe8"])
def test_dangerous_commands_cannot_be_framed(prefix):
    body = bytes.fromhex(prefix) + bytes(13)
    with pytest.raises(DangerousCommandError):
        codec.encode(RawMessage(body))
    with pytest.raises(DangerousCommandError):
        codec.frame(body)


def test_no_query_kind_reaches_the_crash_command():
    with pytest.raises(ValueError):
        Query(0xE8, 1, 2)
    with pytest.raises(ValueError):
        ChargeCommand(0x19, 1, 2)


def test_fields_out_of_range_are_refused():
    with pytest.raises(ValueError):
        MasterHeartbeat(0x10000, 1)
    with pytest.raises(ValueError):
        SlaveHeartbeat(1, 2, actual_centiamps=-1)
    with pytest.raises(ValueError):
        VinReport(1, 3, b"ABCDEFG")


GOOD = codec.encode(SlaveHeartbeat(0x1234, 0x7777, 1, 1600, 1552))
GOOD_MESSAGE = SlaveHeartbeat(0x1234, 0x7777, 1, 1600, 1552)


def test_noise_between_frames_is_counted_and_skipped():
    receiver = FrameReceiver()
    out = receiver.feed(b"\x01\x02\x03" + GOOD + b"\xfe" + GOOD + b"\xff\xf8", 0.0)
    out += receiver.feed(GOOD, 0.5)
    assert out == [GOOD_MESSAGE] * 3
    assert receiver.stats.noise_bytes == 6
    assert receiver.stats.errors() == 0


def test_bad_checksum_is_counted_and_the_next_frame_decodes():
    damaged = bytearray(GOOD)
    damaged[-2] ^= 0x01
    receiver = FrameReceiver()
    assert receiver.feed(bytes(damaged) + GOOD, 0.0) == [GOOD_MESSAGE]
    assert receiver.stats.bad_checksum == 1


def test_start_byte_inside_a_short_fragment_restarts_the_frame():
    receiver = FrameReceiver()
    assert receiver.feed(b"\xc0\xfd\xe0\x12\x34" + GOOD, 0.0) == [GOOD_MESSAGE]
    assert receiver.stats.bad_length == 1


def test_escape_at_frame_end_is_counted():
    receiver = FrameReceiver()
    assert receiver.feed(GOOD[:-1] + b"\xdb\xc0" + GOOD, 0.0) == [GOOD_MESSAGE]
    assert receiver.stats.bad_escape == 1


def test_invalid_escape_drops_the_frame():
    receiver = FrameReceiver()
    assert receiver.feed(GOOD[:5] + b"\xdb\x00" + GOOD[5:] + GOOD, 0.0) == [GOOD_MESSAGE]
    assert receiver.stats.bad_escape == 1


@pytest.mark.parametrize("length", [13, 21, 40])
def test_frames_outside_14_to_20_bytes_are_refused(length):
    body = bytes([0xFD, 0xE0]) + bytes(length - 3)
    receiver = FrameReceiver()
    assert receiver.feed(codec.frame(body) + GOOD, 0.0) == [GOOD_MESSAGE]
    assert receiver.stats.bad_length == 1


@pytest.mark.parametrize("length", range(14, 21))
def test_every_length_from_14_to_20_is_accepted(length):
    body = bytes([0xFD, 0xE0, 0x12, 0x34, 0x77, 0x77, 0x01]) + bytes(length - 8)
    assert len(FrameReceiver().feed(codec.frame(body), 0.0)) == 1


def test_partial_frame_is_dropped_after_two_seconds_of_silence():
    receiver = FrameReceiver()
    assert receiver.feed(GOOD[:9], 0.0) == []
    receiver.expire(1.9)
    assert receiver.stats.timeouts == 0
    assert receiver.feed(GOOD[1:], 2.5) == [GOOD_MESSAGE]
    assert receiver.stats.timeouts == 1


def test_partial_frame_within_two_seconds_still_completes():
    receiver = FrameReceiver()
    receiver.feed(GOOD[:9], 0.0)
    assert receiver.feed(GOOD[9:], 1.5) == [GOOD_MESSAGE]


def test_unknown_but_valid_frames_come_back_raw():
    body = bytes([0xFD, 0x77]) + bytes(13)
    assert FrameReceiver().feed(codec.frame(body), 0.0) == [RawMessage(body)]
