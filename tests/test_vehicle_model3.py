"""The simulated Model 3's frames read back through the car daemon's reader and meter."""

from __future__ import annotations

import asyncio
from collections import Counter
from fractions import Fraction

import can
import pytest

from distributedcharge.sim.model3 import CHARGER_EFFICIENCY, Model3Emitter, Model3State, run_emitter
from distributedcharge.vehicle import signals
from distributedcharge.vehicle.meter import EnergyMeter
from distributedcharge.vehicle.reader import VehicleState
from distributedcharge.vehicle.signals import AcChargeState


def charging(volts, amps, pilot=32, soc=55) -> Model3State:
    return Model3State(plugged=True, latched=True, swcan_established=True, ac_charge_state=AcChargeState.ENABLED,
                       line_voltage=Fraction(volts), charger_current=Fraction(amps), pilot_current=pilot,
                       soc_percent=soc)


def drive(emitter: Model3Emitter, state: Model3State, reader: VehicleState, meter: EnergyMeter | None = None,
          seconds: float = 5, step: float = 0.01, start: float = 0.0):
    for index in range(round(seconds / step)):
        now = start + index * step
        for frame_id, data in emitter.frames_at(now, state):
            for event in reader.feed(frame_id, data, now):
                if meter is not None:
                    meter.observe(event)


def quantised(value: Fraction, step: Fraction) -> Fraction:
    return ((Fraction(value) / step + Fraction(1, 2)).__floor__()) * step


@pytest.mark.parametrize("generation", signals.GENERATIONS)
@pytest.mark.parametrize("reader_layout", ["same", "auto"])
@pytest.mark.parametrize("volts, amps", [
    ("120.0", "12"), ("208.3", "15.55"), ("240.1", "31.97"), ("247.9", "48"), ("0", "0"),
])
def test_emitted_frames_read_back_with_car_instrument_resolution(generation, reader_layout, volts, amps):
    reader = VehicleState(generation if reader_layout == "same" else "auto")
    drive(Model3Emitter(generation), charging(volts, amps, pilot=40, soc=Fraction("61.3")), reader)
    assert reader.layout_name == generation
    assert not reader.malformed
    assert Fraction(reader.line_voltage.value, 10) == quantised(Fraction(volts), Fraction("0.2"))
    assert Fraction(reader.charger_current.value, 10) == quantised(Fraction(amps), Fraction("0.1"))
    assert reader.line_status.deciamps == reader.charger_current.value
    assert abs(reader.line_status.volts - Fraction(volts)) <= Fraction("0.0333")
    assert reader.plug_latched and reader.swcan_established
    assert reader.ac_charge_state is AcChargeState.ENABLED
    assert reader.pilot_current_da == 400
    assert reader.soc_permille.value == 613
    assert reader.charging is (Fraction(amps) > 1)
    assert reader.relay_should_be_closed


@pytest.mark.parametrize("generation", signals.GENERATIONS)
def test_the_cars_meter_agrees_with_the_physics_within_instrument_resolution(generation):
    volts, amps, seconds = Fraction("240.1"), Fraction("31.97"), 120
    reader = VehicleState(generation)
    meter = EnergyMeter()
    drive(Model3Emitter(generation), charging(volts, amps), reader, meter, seconds=seconds, step=0.05)
    delivered_nj = volts * amps * seconds * 10**9
    assert meter.gaps == 0
    # The car starts metering when it first has both readings (0.5 s in) and its
    # instruments read 240.2 V and 32.0 A: within 1 % of what flowed.
    assert abs(meter.energy_nj - delivered_nj) / delivered_nj < Fraction(1, 100)
    last_reading_us = max(reader.line_voltage.at_us, reader.charger_current.at_us)
    assert meter.energy_nj == 2402 * 320 * 10 * (last_reading_us - 500_000)


def test_if_every_logging_page_rotated_the_default_gap_would_drop_the_readings():
    """Which 0x2C4 pages a car sends is not measured yet; with all 26 the voltage and
    current pages come every 2.6 s, longer than the 2 s default gap."""
    emitter_pages = tuple(range(26))
    state = charging("240", "32")
    strict, relaxed = EnergyMeter(2_000_000), EnergyMeter(3_000_000)
    for meter in (strict, relaxed):
        drive(Model3Emitter("2025", pcs_pages=emitter_pages), state, VehicleState("2025"), meter, seconds=30, step=0.05)
    assert strict.energy_nj == 0
    assert relaxed.energy_nj > 0


def test_message_rates_match_the_recorded_car():
    emitter = Model3Emitter("2025")
    counts = Counter()
    for index in range(1000):
        counts.update(frame_id for frame_id, _ in emitter.frames_at(index / 100, charging("240", "32")))
    for frame_id in (signals.EVSE_STATUS, signals.PCS_LOGGING, signals.CHARGE_LINE_STATUS,
                     signals.PCS_CHARGE_STATUS, signals.BMS_SOC):
        assert abs(counts[frame_id] - 100) <= 1, hex(frame_id)
    for frame_id in (signals.UI_RANGE_SOC, signals.TOTAL_CHARGE_DISCHARGE, signals.BMS_COUNTERS):
        assert abs(counts[frame_id] - 10) <= 1, hex(frame_id)


def test_a_caller_that_falls_behind_gets_one_frame_per_message_not_a_burst():
    emitter = Model3Emitter("2025")
    emitter.frames_at(0.0, Model3State())
    late = emitter.frames_at(30.0, Model3State())
    assert sorted(frame_id for frame_id, _ in late) == sorted(signals.layout("2025").messages)


@pytest.mark.parametrize("generation, length", [("2020", 8), ("2025", 6)])
def test_charge_line_status_has_the_generations_frame_length(generation, length):
    frames = dict(Model3Emitter(generation).frames_at(0.0, charging("240", "32")))
    assert len(frames[signals.CHARGE_LINE_STATUS]) == length
    assert all(len(data) == 8 for frame_id, data in frames.items() if frame_id != signals.CHARGE_LINE_STATUS)


def test_battery_counters_rise_with_the_energy_put_into_the_pack():
    emitter = Model3Emitter("2025")
    reader = VehicleState("2025")
    drive(emitter, Model3State(plugged=True, latched=True), reader, seconds=2, step=0.1)
    start = reader.total_charge_wh.value
    drive(emitter, charging("240", "32"), reader, seconds=600, step=0.1, start=2.0)
    into_pack = 240 * 32 * Fraction(600, 3600) * CHARGER_EFFICIENCY
    assert abs(reader.total_charge_wh.value - start - into_pack) <= 3
    assert reader.total_discharge_wh.value == 9_000_000


def test_unplugged_car_reports_no_plug_and_keeps_the_relay_open():
    reader = VehicleState("auto")
    drive(Model3Emitter("2025"), Model3State(), reader)
    assert not reader.plug_latched
    assert not reader.swcan_established
    assert not reader.charging
    assert not reader.relay_should_be_closed
    assert reader.evse.proximity == signals.Proximity.DISCONNECTED


def test_run_emitter_puts_the_frames_on_a_python_can_bus():
    async def scenario() -> VehicleState:
        reader = VehicleState("auto")
        with can.Bus(interface="virtual", channel="model3-emitter-test") as car_bus, \
                can.Bus(interface="virtual", channel="model3-emitter-test") as daemon_bus:
            task = asyncio.create_task(run_emitter(car_bus, lambda: charging("240", "32"), layout="2025"))
            try:
                for _ in range(500):
                    while (message := daemon_bus.recv(timeout=0)) is not None:
                        reader.feed(message.arbitration_id, message.data, message.timestamp)
                    if reader.line_voltage and reader.charger_current and reader.relay_should_be_closed:
                        break
                    await asyncio.sleep(0.01)
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        return reader

    reader = asyncio.run(scenario())
    assert reader.layout_name == "2025"
    assert reader.relay_should_be_closed
    assert reader.line_voltage.value == 2400
    assert reader.charger_current.value == 320
