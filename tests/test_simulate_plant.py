"""The simulated plant: one physics, two instruments that agree as a real wall and car do."""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from fractions import Fraction

import can
import pytest
import structlog
from hypothesis import given, settings
from hypothesis import strategies as st

from distributedcharge.sim.model3 import Model3Emitter
from distributedcharge.sim.plant import Plant, PlantSettings
from distributedcharge.sim.plant_runner import PlantStatus, build_runner, open_vehicle_bus
from distributedcharge.sim.twc_slave import SimulatedBus, SlaveConfig, TwcSlave
from distributedcharge.twc.master import MasterSettings, Reading, TwcMaster
from distributedcharge.units import NJ_PER_WH
from distributedcharge.vehicle import signals
from distributedcharge.vehicle.meter import EnergyMeter
from distributedcharge.vehicle.reader import VehicleState
from wallunit.wallmeter import WallMeter


@pytest.fixture(autouse=True)
def default_logging():
    """Another test may leave structlog writing to a stream pytest has since closed."""
    structlog.reset_defaults()


def charge(seconds: float, offer_amps: int = 48, settings: PlantSettings | None = None):
    """A wall (TWC master + its meter) and a car (vehicle reader + its meter) around one plant."""
    plant = Plant(settings, plugged=True, now=0.0)
    slave = TwcSlave(SlaveConfig(slave_id=0x1234, sign=1, max_centiamps=8000, volts=(plant.wall_volts(), 0, 0)),
                     plant)
    master = TwcMaster(MasterSettings(wiring_limit_a=80, master_id=0x7777, sign=7, poll_interval=60.0))
    master.set_offer(offer_amps)
    bus = SimulatedBus([master, slave], step=0.02)
    emitter = Model3Emitter("2025")
    vehicle, car_meter = VehicleState("2025"), EnergyMeter()
    wall_meter = WallMeter(230, 5_000_000)
    while bus.now < seconds:
        slave.config = dataclasses.replace(slave.config, volts=(plant.wall_volts(), 0, 0))
        for event in bus.run_for(0.1):
            if isinstance(event, Reading):
                wall_meter.reading(round(bus.now * 1_000_000), event.actual_centiamps, event.voltage_v)
        for frame_id, data in emitter.frames_at(bus.now, plant.model3_state(bus.now)):
            for event in vehicle.feed(frame_id, data, bus.now):
                car_meter.observe(event)
    return plant, wall_meter, car_meter


def test_wall_and_car_meters_agree_within_a_fraction_of_a_percent():
    plant, wall_meter, car_meter = charge(600)
    truth = plant.energy_nj
    assert truth > 1500 * NJ_PER_WH  # about 11 kW for ten minutes, less the link-up
    for measured in (wall_meter.total_nj, car_meter.energy_nj):
        assert abs(measured - truth) / truth < Fraction(5, 1000)
    assert wall_meter.total_nj != car_meter.energy_nj  # different instruments, as on a real installation


def test_current_follows_the_pilot_and_the_cars_own_limit():
    plant = Plant(PlantSettings(car_max_amps=Fraction(32)), plugged=True, now=0.0)
    plant.draw_centiamps(1600, 0.0)
    assert plant.draw_centiamps(1600, 10.0) == 1552  # 97 % of a 16 A pilot
    plant.draw_centiamps(4800, 10.1)
    assert plant.draw_centiamps(4800, 20.0) == 3200  # the car's onboard charger stops at 32 A
    assert plant.draw_centiamps(0, 20.5) == 0  # a lowered pilot is obeyed at once
    assert plant.model3_state(20.5).line_voltage == 0  # contactor open


def test_energy_raises_the_state_of_charge():
    plant = Plant(PlantSettings(battery_kwh=Fraction(50), start_soc_percent=Fraction(20)), plugged=True, now=0.0)
    for second in range(3601):
        plant.draw_centiamps(4800, float(second))
    delivered_kwh = plant.energy_nj / (1000 * NJ_PER_WH)
    assert 10 < delivered_kwh < 11.2
    assert plant.soc_percent == pytest.approx(20 + float(delivered_kwh) * 0.92 / 50 * 100, abs=0.01)


def test_unplugged_car_draws_nothing_and_reports_no_plug():
    plant = Plant(plugged=True, now=0.0)
    plant.draw_centiamps(4800, 5.0)
    plant.unplug(6.0)
    assert plant.draw_centiamps(4800, 7.0) == 0
    state = plant.model3_state(7.0)
    assert not state.plugged and not state.latched and state.charger_current == 0


def test_car_refuses_after_three_power_cuts_until_replugged():
    plant = Plant(plugged=True, now=0.0)
    now = 0.0
    for _ in range(3):
        plant.draw_centiamps(4800, now)
        now += 10
        assert plant.draw_centiamps(4800, now) > 0
        plant.power_interrupted(now)
    plant.draw_centiamps(4800, now + 1)
    assert plant.draw_centiamps(4800, now + 10) == 0
    plant.unplug(now + 11)
    plant.plug(now + 12)
    plant.draw_centiamps(4800, now + 13)
    assert plant.draw_centiamps(4800, now + 20) > 0


def test_status_lines_survive_json_exactly():
    plant = Plant(plugged=True, now=0.0)
    plant.draw_centiamps(3200, 3.0)
    snap = plant.snapshot(9.5)
    status = PlantStatus(snap.at, snap.plugged, snap.amps, snap.volts, snap.soc_percent, snap.energy_nj,
                         snap.interruptions, 1, True, 3200, True, 42)
    assert PlantStatus.from_json(json.loads(json.dumps(status.to_json()))) == status


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.floats(0.01, 30.0), st.integers(0, 8000), st.sampled_from(["draw", "cut", "unplug",
                                                                                            "plug"])),
                max_size=40))
def test_physics_stays_physical(steps):
    """Whatever the Wall Connector and the person do, energy only grows and the draw stays
    within the pilot and the car's limit."""
    plant = Plant(plugged=True, now=0.0)
    now, energy = 0.0, plant.energy_nj
    for seconds, offered, what in steps:
        now += seconds
        if what == "draw":
            reading = plant.draw_centiamps(offered, now)
            assert 0 <= reading <= min(offered, 4800)
            assert reading == 0 or plant.plugged
        elif what == "cut":
            plant.power_interrupted(now)
        elif what == "unplug":
            plant.unplug(now)
        else:
            plant.plug(now)
        assert plant.energy_nj >= energy
        energy = plant.energy_nj
        assert 0 <= plant.soc_percent <= 100


def test_a_stalled_plant_thread_is_not_a_silent_bus_to_the_cars_meter(tmp_path):
    """The simulator may stall (load, a GC pause); a real car's bus would not have. The frames
    owed arrive stamped with their own moments, so the car's meter sees no gap to refuse."""
    started, stalled = time.monotonic(), []

    def stalling_clock() -> float:
        # Once the metered pages have both come round, a stall longer than the 2 s gap rule.
        if not stalled and time.monotonic() - started > 1.5:
            stalled.append(True)
            time.sleep(2.5)
        return time.monotonic()

    plant_side = open_vehicle_bus("virtual", f"stall-{tmp_path.name}")
    car_side = can.Bus(interface="virtual", channel=f"stall-{tmp_path.name}")
    runner = build_runner(str(tmp_path / "twc"), plant_side, clock=stalling_clock, plugged=True)
    stop = threading.Event()
    thread = threading.Thread(target=runner.run, args=(stop,), daemon=True)
    received = []
    try:
        thread.start()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not (received and received[-1].timestamp - received[0].timestamp > 5):
            message = car_side.recv(0.05)
            if message is not None:
                received.append(message)
    finally:
        stop.set()
        thread.join(5)
        plant_side.shutdown()
        car_side.shutdown()

    vehicle, meter = VehicleState("2025"), EnergyMeter()
    for message in received:
        for event in vehicle.feed(message.arbitration_id, bytes(message.data), message.timestamp):
            meter.observe(event)
    assert meter.gaps == 0 and meter.refused == 0
    stamps = [m.timestamp for m in received if m.arbitration_id == signals.PCS_LOGGING]
    spacing = [later - earlier for earlier, later in zip(stamps, stamps[1:])]
    assert stalled and len(spacing) >= 45 and all(0.099 < gap < 0.101 for gap in spacing), spacing
