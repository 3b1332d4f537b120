"""The signal table decodes frames built bit by bit from the reference tables."""

from __future__ import annotations

from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from benchmarks.vehicle_decode import decode_disagreements, random_frames, session_frames, table_differences
from distributedcharge.vehicle import signals
from distributedcharge.vehicle.signals import AcChargeState, FrameError, layout, layout_evidence


def frame(*fields: tuple[int, int, int], length: int = 8) -> bytes:
    """Little-endian frame with each (start bit, bit length, raw value) placed by hand."""
    value = 0
    for start, bits, raw in fields:
        assert 0 <= raw < 1 << bits
        value |= raw << start
    return value.to_bytes(length, "little")


def evse_2025(ac_charge_state: int) -> bytes:
    """The 0x21D frame of the reference's section 1.4 demonstration, 2025/2026 layout."""
    return frame(
        (0, 1, 1),      # CP_evseAccept
        (2, 2, 3),      # CP_proximity LATCHED
        (4, 3, 2),      # CP_pilot LINE_CHARGE
        (7, 1, 1),      # CP_digitalCommsEstablished
        (8, 8, 64),     # CP_pilotCurrent 32 A
        (16, 3, 1),     # CP_cableType SAE
        (24, 7, 40),    # CP_cableCurrentLimit
        (34, 4, 3),     # CP_teslaSwcanState ESTABLISHED
        (52, 3, ac_charge_state),
        (56, 2, 1),     # CP_acChargeType
    )


# Section 1.4: what model3dbc (53|3) reads for each true 2025 state (52|3).
MISREAD_BY_2020 = {
    AcChargeState.INACTIVE: AcChargeState.INACTIVE,
    AcChargeState.CONNECTED_CHARGE_BLOCKED: AcChargeState.INACTIVE,
    AcChargeState.STANDBY: AcChargeState.CONNECTED_CHARGE_BLOCKED,
    AcChargeState.ENABLED: AcChargeState.CONNECTED_CHARGE_BLOCKED,
    AcChargeState.ONBOARD_CHARGER_SHUTDOWN: AcChargeState.STANDBY,
    AcChargeState.VEH_SHUTDOWN: AcChargeState.STANDBY,
    AcChargeState.FAULT: AcChargeState.ENABLED,
}


@pytest.mark.parametrize("true_state", list(AcChargeState))
def test_2025_frame_is_misread_by_the_2020_table_and_read_right_by_the_2025_table(true_state):
    data = evse_2025(true_state)
    old = layout("2020").decode(signals.EVSE_STATUS, data)
    new = layout("2025").decode(signals.EVSE_STATUS, data)
    assert old["CP_acChargeState"] == MISREAD_BY_2020[true_state]
    assert new["CP_acChargeState"] == true_state
    for decoded in (old, new):
        assert decoded["CP_proximity"] == signals.Proximity.LATCHED
        assert decoded["CP_teslaSwcanState"] == signals.SwcanState.ESTABLISHED
        assert decoded["CP_pilotCurrent"] * layout("2025").signal(signals.EVSE_STATUS, "CP_pilotCurrent").scale == 32
    assert new["CP_digitalCommsEstablished"] == 1
    assert old["CP_digitalCommsEstablished"] == 0


def test_2020_frame_decodes_with_model3dbc_positions():
    data = frame((2, 2, 3), (4, 3, 2), (8, 8, 80), (34, 3, 3), (37, 1, 1), (53, 3, AcChargeState.ENABLED))
    decoded = layout("2020").decode(signals.EVSE_STATUS, data)
    assert decoded == {
        "CP_proximity": 3, "CP_pilot": 2, "CP_pilotCurrent": 80, "CP_teslaSwcanState": 3,
        "CP_digitalCommsEstablished": 1, "CP_acChargeState": AcChargeState.ENABLED,
    }


@pytest.mark.parametrize("generation", signals.GENERATIONS)
def test_pcs_logging_pages_give_line_voltage_and_charger_current(generation):
    table = layout(generation)
    page3 = frame((0, 5, 3), (5, 12, 1195), (17, 12, 1201), (41, 12, 1200))
    page5 = frame((0, 5, 5), (44, 10, 319), (54, 1, 1))
    voltage = table.decode(signals.PCS_LOGGING, page3)
    current = table.decode(signals.PCS_LOGGING, page5)
    assert voltage["PCS_chgInputL2NVrms"] * table.signal(signals.PCS_LOGGING, "PCS_chgInputL2NVrms").scale \
        == Fraction("240.2")
    assert current["PCS_chgPhManCurrentToDist"] * table.signal(signals.PCS_LOGGING, "PCS_chgPhManCurrentToDist").scale \
        == Fraction("31.9")
    assert "PCS_chgInputL2NVrms" not in current


def test_unknown_pcs_page_gives_only_the_page_number():
    assert layout("2025").decode(signals.PCS_LOGGING, frame((0, 5, 14), (8, 40, 12345))) == {"PCS_logMessageSelect": 14}


def test_charge_line_status_differs_in_scale_and_length():
    data = frame((0, 14, 7280), (14, 9, 320), (24, 8, 77), (32, 10, 320), length=6)
    old = layout("2020")
    new = layout("2025")
    assert old.messages[signals.CHARGE_LINE_STATUS].length == 8
    assert new.messages[signals.CHARGE_LINE_STATUS].length == 6
    volts_2020 = old.decode(signals.CHARGE_LINE_STATUS, data)["ChargeLineVoltage264"] \
        * old.signal(signals.CHARGE_LINE_STATUS, "ChargeLineVoltage264").scale
    volts_2025 = new.decode(signals.CHARGE_LINE_STATUS, data)["ChargeLineVoltage264"] \
        * new.signal(signals.CHARGE_LINE_STATUS, "ChargeLineVoltage264").scale
    assert volts_2020 == Fraction("242.424")
    assert volts_2025 == Fraction("240.24")


def test_bms_counter_multiplexer_grew_a_bit():
    page8 = frame((0, 4, 8), (8, 32, 1234))
    assert layout("2025").decode(signals.BMS_COUNTERS, page8) == {"BMSCountersIndex3F2": 8}
    # The 3-bit multiplexer aliases page 8 onto page 0, as the reference warns.
    assert layout("2020").decode(signals.BMS_COUNTERS, page8)["BMStotalACcharge3F2"] == 1234


@pytest.mark.parametrize("data, problem", [
    (bytes(4), "4 data bytes; 7 needed"),
    (bytes(9), "at most 8"),
    (frame((34, 4, 12)), "CP_teslaSwcanState = 12 is not a defined value"),
    (frame((52, 3, 7)), "CP_acChargeState = 7 is not a defined value"),
])
def test_impossible_evse_frames_are_refused(data, problem):
    with pytest.raises(FrameError, match=problem):
        layout("2025").decode(signals.EVSE_STATUS, data)


def test_truncated_frame_is_fine_when_every_signal_fits():
    six_bytes = frame((14, 9, 100), length=6)
    assert layout("2020").decode(signals.CHARGE_LINE_STATUS, six_bytes)["ChargeLineCurrent264"] == 100
    with pytest.raises(FrameError):
        layout("2020").decode(signals.CHARGE_LINE_STATUS, six_bytes[:5])


def test_unknown_layout_name_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown layout '2019'"):
        layout("2019")


def test_layout_evidence_comes_from_the_comms_established_bit():
    assert layout_evidence(signals.EVSE_STATUS, evse_2025(AcChargeState.ENABLED)) == "2025"
    old = frame((2, 2, 3), (34, 3, 3), (37, 1, 1), (53, 3, 3))
    assert layout_evidence(signals.EVSE_STATUS, old) == "2020"
    no_comms = frame((2, 2, 3), (34, 3, 0), (53, 3, 2))
    assert layout_evidence(signals.EVSE_STATUS, no_comms) is None
    assert layout_evidence(signals.PCS_LOGGING, evse_2025(3)) is None
    assert layout_evidence(signals.EVSE_STATUS, bytes(3)) is None


def test_common_layout_leaves_out_what_moved():
    common = signals.COMMON
    evse = {s.name for s in common.messages[signals.EVSE_STATUS].all_signals()}
    assert evse == {"CP_proximity", "CP_pilot", "CP_pilotCurrent"}
    assert signals.BMS_COUNTERS not in common.messages
    assert "ChargeLineVoltage264" not in {s.name for s in common.messages[signals.CHARGE_LINE_STATUS].all_signals()}


def _raw_values(message: signals.Message, page: int | None):
    chosen = message.signals_for(page)

    def value_for(signal: signals.Signal):
        if signal.value_names is not None:
            return st.sampled_from(sorted(signal.value_names))
        low, high = signal.raw_range
        return st.integers(low, high)

    fixed = {message.multiplexer.name: st.just(page)} if message.multiplexer else {}
    return st.fixed_dictionaries({**fixed, **{s.name: value_for(s) for s in chosen}})


def _message_pages():
    cases = []
    for generation in signals.GENERATIONS:
        for message in layout(generation).messages.values():
            for page in (message.pages if message.multiplexer else [None]):
                cases.append((generation, message.frame_id, page))
    return cases


@pytest.mark.parametrize("generation, frame_id, page", _message_pages())
@settings(max_examples=50, deadline=None)
@given(data=st.data())
def test_every_signal_round_trips_through_encode_and_decode(generation, frame_id, page, data):
    message = layout(generation).messages[frame_id]
    values = data.draw(_raw_values(message, page))
    encoded = message.encode(values)
    assert len(encoded) == message.length
    assert message.decode(encoded) == values


@pytest.mark.parametrize("generation", signals.GENERATIONS)
def test_table_matches_an_independently_written_dbc(generation):
    assert table_differences(generation) == []


@pytest.mark.parametrize("generation", signals.GENERATIONS)
def test_cantools_reads_the_same_raw_values_from_every_frame(generation):
    car_frames = [(frame_id, data) for _, frame_id, data in session_frames(generation, seconds=20)]
    assert len(car_frames) > 1000
    assert decode_disagreements(generation, car_frames) == []
    assert decode_disagreements(generation, random_frames(generation, 3000)) == []


def test_signed_signals_are_sign_extended_both_ways():
    # model3dbc's 0x132 SmoothBattCurrent132 (16|16, signed, x-0.1 A); not in our table.
    current = signals.Signal("SmoothBattCurrent132", 16, 16, True, Fraction("-0.1"), "A")
    message = signals.Message(0x132, "HVBattAmpVolt", 6, 10, (current,))
    data = frame((16, 16, 0x10000 - 123), length=6)
    assert message.decode(data) == {"SmoothBattCurrent132": -123}
    assert message.encode({"SmoothBattCurrent132": -123}) == data
    assert current.raw_for(Fraction("12.3")) == -123
    with pytest.raises(ValueError):
        message.encode({"SmoothBattCurrent132": 40_000})
