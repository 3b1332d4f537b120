"""VehicleState: what the car daemon learns from the car's own CAN frames."""

from __future__ import annotations

import math
from fractions import Fraction

import can
import pytest

from distributedcharge.vehicle import signals
from distributedcharge.vehicle.meter import CurrentReading, EnergyMeter, VoltageReading
from distributedcharge.vehicle.reader import LayoutDetected, Malformed, VehicleState, vehicle_can_filters
from distributedcharge.vehicle.signals import AcChargeState, PcsChargeState, Proximity, SwcanState, layout


def evse(generation: str, ac: AcChargeState = AcChargeState.ENABLED, *, proximity: int = Proximity.LATCHED,
         swcan: int = SwcanState.ESTABLISHED, comms: int = 1, pilot_amps: int = 32) -> bytes:
    return layout(generation).encode(signals.EVSE_STATUS, {
        "CP_proximity": proximity, "CP_pilot": 2, "CP_pilotCurrent": pilot_amps * 2,
        "CP_teslaSwcanState": swcan, "CP_digitalCommsEstablished": comms, "CP_acChargeState": ac,
    })


def volts(decivolts: int) -> bytes:
    return layout("2025").encode(signals.PCS_LOGGING, {"PCS_logMessageSelect": 3, "PCS_chgInputL2NVrms": decivolts // 2})


def amps(deciamps: int) -> bytes:
    return layout("2025").encode(signals.PCS_LOGGING, {"PCS_logMessageSelect": 5, "PCS_chgPhManCurrentToDist": deciamps})


def pcs(state: PcsChargeState) -> bytes:
    return layout("2025").encode(signals.PCS_CHARGE_STATUS, {"PCS_chgMainState": state})


def feed_all(state: VehicleState, frames, at: float = 10.0):
    events = []
    for frame_id, data in frames:
        events.extend(state.feed(frame_id, data, at))
    return events


@pytest.mark.parametrize("generation", signals.GENERATIONS)
def test_plug_swcan_charge_state_and_pilot_current_are_read(generation):
    car = VehicleState(generation)
    feed_all(car, [(signals.EVSE_STATUS, evse(generation, AcChargeState.STANDBY, pilot_amps=40))])
    assert car.plug_latched
    assert car.swcan_established
    assert car.ac_charge_state is AcChargeState.STANDBY
    assert car.pilot_current_da == 400


def test_line_voltage_and_charger_current_become_meter_readings():
    car = VehicleState("2025")
    assert car.feed(signals.PCS_LOGGING, volts(2402), 5.25) == (VoltageReading(5_250_000, 2402),)
    assert car.feed(signals.PCS_LOGGING, amps(319), 5.5) == (CurrentReading(5_500_000, 319),)
    assert car.feed(signals.PCS_LOGGING, bytes([4, 0, 0, 0, 0, 0, 0, 0]), 5.6) == ()
    assert car.line_voltage.value == 2402
    assert car.charger_current.value == 319


def test_a_2025_fault_misread_as_enabled_does_not_count_as_charging():
    """Section 1.4: with the 2020 table a 2025 car's FAULT reads as ENABLED."""
    car = VehicleState("2020")
    feed_all(car, [(signals.EVSE_STATUS, evse("2025", AcChargeState.FAULT)),
                   (signals.PCS_CHARGE_STATUS, pcs(PcsChargeState.FAULTED)),
                   (signals.PCS_LOGGING, volts(2400)), (signals.PCS_LOGGING, amps(0))])
    assert car.ac_charge_state is AcChargeState.ENABLED
    assert not car.charging


def test_a_2025_charge_misread_as_blocked_still_counts_as_charging():
    car = VehicleState("2020")
    feed_all(car, [(signals.EVSE_STATUS, evse("2025", AcChargeState.ENABLED)),
                   (signals.PCS_LOGGING, amps(320))])
    assert car.ac_charge_state is AcChargeState.CONNECTED_CHARGE_BLOCKED
    assert car.charging


@pytest.mark.parametrize("deciamps, charging", [(0, False), (10, False), (11, True), (480, True)])
def test_charging_needs_more_than_an_amp(deciamps, charging):
    car = VehicleState("2025")
    feed_all(car, [(signals.EVSE_STATUS, evse("2025")), (signals.PCS_LOGGING, amps(deciamps))])
    assert car.charging is charging


def test_current_without_a_latched_plug_is_not_charging():
    car = VehicleState("2025")
    feed_all(car, [(signals.EVSE_STATUS, evse("2025", proximity=Proximity.UNLATCHED)),
                   (signals.PCS_LOGGING, amps(320))])
    assert not car.charging


def test_pcs_enable_confirms_charging_when_the_ac_state_says_otherwise():
    car = VehicleState("2025")
    feed_all(car, [(signals.EVSE_STATUS, evse("2025", AcChargeState.STANDBY)), (signals.PCS_LOGGING, amps(320))])
    assert not car.charging
    feed_all(car, [(signals.PCS_CHARGE_STATUS, pcs(PcsChargeState.ENABLE))])
    assert car.charging


def test_charge_line_status_current_counts_when_the_logging_page_is_missing():
    line = layout("2025").encode(signals.CHARGE_LINE_STATUS, {
        "ChargeLineVoltage264": 7280, "ChargeLineCurrent264": 320, "ChargeLinePower264": 77,
        "ChargeLineCurrentLimit264": 320})
    car = VehicleState("2025")
    feed_all(car, [(signals.EVSE_STATUS, evse("2025")), (signals.CHARGE_LINE_STATUS, line)])
    assert car.measured_current_da == 320
    assert car.charging
    assert car.line_status.volts == Fraction("240.24")


def test_readings_go_stale_when_the_bus_falls_silent():
    car = VehicleState("2025")
    feed_all(car, [(signals.EVSE_STATUS, evse("2025")), (signals.PCS_LOGGING, amps(320))], at=100.0)
    assert car.charging and car.relay_should_be_closed
    car.tick(101.9)
    assert car.charging
    car.tick(102.5)
    assert not car.charging
    assert not car.plug_latched
    assert not car.relay_should_be_closed
    assert car.ac_charge_state is None


def test_relay_follows_the_original_rule():
    car = VehicleState("2025")
    at = 0.0

    def step(frame: bytes) -> bool:
        nonlocal at
        at += 0.1
        car.feed(signals.EVSE_STATUS, frame, at)
        return car.relay_should_be_closed

    assert not step(evse("2025", AcChargeState.INACTIVE, swcan=SwcanState.INACTIVE, comms=0))
    assert not step(evse("2025", AcChargeState.ENABLED, swcan=SwcanState.ACCEPT, comms=0))
    assert step(evse("2025", AcChargeState.ENABLED))
    assert step(evse("2025", AcChargeState.CONNECTED_CHARGE_BLOCKED))
    # Shutdown states keep the previous decision, as the original does.
    assert step(evse("2025", AcChargeState.VEH_SHUTDOWN))
    assert not step(evse("2025", AcChargeState.STANDBY))
    assert not step(evse("2025", AcChargeState.VEH_SHUTDOWN))
    assert step(evse("2025", AcChargeState.CONNECTED_CHARGE_BLOCKED))
    assert not step(evse("2025", AcChargeState.CONNECTED_CHARGE_BLOCKED, swcan=SwcanState.FAULT))
    assert not step(evse("2025", AcChargeState.INACTIVE, proximity=Proximity.DISCONNECTED, swcan=0, comms=0))
    # Re-plugged: a stale "charge wanted" from before the unplug must not close it.
    assert not step(evse("2025", AcChargeState.INACTIVE))


@pytest.mark.parametrize("generation", signals.GENERATIONS)
def test_auto_reads_nothing_that_moved_until_a_frame_shows_the_layout(generation):
    car = VehicleState("auto")
    counters = layout(generation).encode(signals.BMS_COUNTERS, {"BMSCountersIndex3F2": 0, "BMStotalACcharge3F2": 5})
    before = feed_all(car, [(signals.EVSE_STATUS, evse(generation, AcChargeState.ENABLED, swcan=0, comms=0)),
                            (signals.BMS_COUNTERS, counters)])
    assert before == []
    assert car.layout_name is None
    assert car.plug_latched
    assert car.ac_charge_state is None
    assert car.ac_charge_wh is None
    assert not car.relay_should_be_closed

    after = feed_all(car, [(signals.EVSE_STATUS, evse(generation, AcChargeState.ENABLED))])
    assert after == [LayoutDetected(generation)]
    assert car.layout_name == generation
    assert car.ac_charge_state is AcChargeState.ENABLED
    assert car.relay_should_be_closed
    feed_all(car, [(signals.BMS_COUNTERS, counters)])
    assert car.ac_charge_wh.value == 5


def test_auto_reads_the_reference_demonstration_frames_right():
    car = VehicleState("auto")
    for state in AcChargeState:
        feed_all(car, [(signals.EVSE_STATUS, evse("2025", state))])
        assert car.ac_charge_state is state
    assert car.layout_name == "2025"


BAD_FRAMES = [
    (signals.EVSE_STATUS, bytes(3), 1.0, "3 data bytes"),
    (signals.EVSE_STATUS, bytes(12), 1.0, "at most 8"),
    (signals.EVSE_STATUS, evse("2025", swcan=0)[:4] + bytes([0x3C, 0, 0, 0]), 1.0, "not a defined value"),
    (signals.EVSE_STATUS, [1, 2, 3, 4, 5, 6, 7, 8], 1.0, "not bytes"),
    (signals.EVSE_STATUS, 8, 1.0, "not bytes"),
    (signals.PCS_LOGGING, bytes(8), math.nan, "bad timestamp"),
    (signals.PCS_LOGGING, bytes(8), "now", "bad timestamp"),
    (signals.PCS_LOGGING, bytes(8), math.inf, "bad timestamp"),
    (signals.PCS_LOGGING, bytes([5]), 1.0, "1 data bytes; 7 needed"),
    (signals.PCS_LOGGING, b"", 1.0, "multiplexer needs 1"),
    (signals.CHARGE_LINE_STATUS, bytes(5), 1.0, "5 data bytes; 6 needed"),
    (signals.PCS_CHARGE_STATUS, bytes([0x0F] + [0] * 7), 1.0, "PCS_chgMainState = 15"),
]


@pytest.mark.parametrize("frame_id, data, timestamp, reason", BAD_FRAMES)
def test_malformed_frames_are_counted_per_id_and_skipped(frame_id, data, timestamp, reason):
    car = VehicleState("2025")
    good = [(signals.EVSE_STATUS, evse("2025")), (signals.PCS_LOGGING, volts(2400)),
            (signals.PCS_LOGGING, amps(320)), (signals.PCS_CHARGE_STATUS, pcs(PcsChargeState.ENABLE))]
    feed_all(car, good, at=0.5)
    before = (car.evse, car.line_voltage, car.charger_current, car.pcs_state)

    events = car.feed(frame_id, data, timestamp)

    assert len(events) == 1 and isinstance(events[0], Malformed)
    assert reason in events[0].reason
    assert car.malformed == {frame_id: 1}
    assert (car.evse, car.line_voltage, car.charger_current, car.pcs_state) == before
    feed_all(car, good, at=1.5)
    assert car.charging


def test_frames_older_than_the_last_of_their_id_are_skipped():
    car = VehicleState("2025")
    car.feed(signals.EVSE_STATUS, evse("2025", AcChargeState.STANDBY), 2.0)
    events = car.feed(signals.EVSE_STATUS, evse("2025", AcChargeState.ENABLED), 1.0)
    assert isinstance(events[0], Malformed)
    assert car.ac_charge_state is AcChargeState.STANDBY


def test_a_non_integer_id_is_counted_not_raised():
    car = VehicleState("2025")
    assert isinstance(car.feed("0x21D", bytes(8), 1.0)[0], Malformed)
    assert car.malformed == {-1: 1}


def test_frames_we_do_not_read_are_ignored_without_counting():
    car = VehicleState("2025")
    assert car.feed(0x132, bytes(6), 1.0) == ()
    assert car.feed(0x7FF, bytes(200), 1.0) == ()
    assert not car.malformed


def test_counters_soc_and_range():
    gen = layout("2025")
    car = VehicleState("2025")
    feed_all(car, [
        (signals.TOTAL_CHARGE_DISCHARGE, gen.encode(signals.TOTAL_CHARGE_DISCHARGE,
                                                   {"TotalDischargeKWh3D2": 9_000_123, "TotalChargeKWh3D2": 10_000_456})),
        (signals.BMS_COUNTERS, gen.encode(signals.BMS_COUNTERS, {"BMSCountersIndex3F2": 0, "BMStotalACcharge3F2": 8_000_001})),
        (signals.BMS_COUNTERS, gen.encode(signals.BMS_COUNTERS, {"BMSCountersIndex3F2": 1, "BMStotalDCcharge3F2": 7})),
        (signals.BMS_SOC, gen.encode(signals.BMS_SOC, {"SOCUI292": 613})),
        (signals.UI_RANGE_SOC, gen.encode(signals.UI_RANGE_SOC, {"UI_Range": 190, "UI_SOC": 61})),
    ])
    assert car.total_discharge_wh.value == 9_000_123
    assert car.total_charge_wh.value == 10_000_456
    assert car.ac_charge_wh.value == 8_000_001
    assert car.soc_permille.value == 613
    assert car.rated_range_mi.value == 190


def test_unknown_layout_is_refused():
    with pytest.raises(ValueError, match="unknown layout"):
        VehicleState("2019")


def test_reader_and_meter_together_measure_what_the_frames_say():
    car = VehicleState("2025")
    meter = EnergyMeter()
    for tenth in range(0, 101):
        at = tenth / 10
        frame = volts(2400) if tenth % 2 == 0 else amps(320)
        for event in car.feed(signals.PCS_LOGGING, frame, at):
            meter.observe(event)
    # Current first arrives at 0.1 s and voltage last at 10.0 s: 9.9 s at 7,680 W.
    assert meter.energy_nj == 2400 * 320 * 9_900_000 * 10


def test_bus_filters_pass_exactly_the_frames_the_reader_reads():
    filters = vehicle_can_filters()
    assert {f["can_id"] for f in filters} == set(layout("2025").messages)
    with can.Bus(interface="virtual", channel="vehicle-filter-test", receive_own_messages=False) as car_bus, \
            can.Bus(interface="virtual", channel="vehicle-filter-test", can_filters=filters) as daemon_bus:
        for frame_id in (0x132, signals.EVSE_STATUS, 0x3D3, signals.PCS_LOGGING):
            car_bus.send(can.Message(arbitration_id=frame_id, data=bytes(8), is_extended_id=False))
        received = []
        while (message := daemon_bus.recv(timeout=0.2)) is not None:
            received.append(message.arbitration_id)
    assert received == [signals.EVSE_STATUS, signals.PCS_LOGGING]


def test_a_frame_that_fails_to_decode_does_not_settle_the_layout():
    car = VehicleState("auto")
    # Bit 7 says 2025, but a 2025 acChargeState of 7 is undefined.
    impossible = bytes([0x8C, 0, 0, 0, 0x0C, 0, 0x70, 0])
    events = car.feed(signals.EVSE_STATUS, impossible, 1.0)
    assert isinstance(events[0], Malformed)
    assert car.layout_name is None
