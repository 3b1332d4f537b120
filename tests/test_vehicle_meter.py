"""The car's meter: exact nanojoules from decivolts x deciamps x microseconds."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from distributedcharge.units import nj_to_wh, wh_to_nj
from distributedcharge.vehicle.meter import (
    DEFAULT_MAX_GAP_US,
    CurrentReading,
    EnergyMeter,
    VoltageReading,
    timestamp_us,
)

GAP = DEFAULT_MAX_GAP_US
PROPERTY = settings(max_examples=200, deadline=None)

voltages = st.integers(0, 8190)   # 12 bits of 0.2 V, in decivolts
currents = st.integers(0, 1023)   # 10 bits of 0.1 A, in deciamps


def reading(kind: str, at_us: int, value: int):
    return VoltageReading(at_us, value) if kind == "V" else CurrentReading(at_us, value)


def energy(stream) -> int:
    meter = EnergyMeter()
    for event in stream:
        meter.observe(event)
    return meter.energy_nj


@st.composite
def streams(draw, max_step=3 * GAP, min_size=0):
    """Readings in time order (ties allowed), steps sometimes longer than the max gap."""
    steps = draw(st.lists(st.tuples(st.sampled_from("VI"), st.integers(0, max_step), st.integers(0, 8190)),
                          min_size=min_size, max_size=40))
    at = draw(st.integers(0, 10**12))
    events = []
    for kind, step, value in steps:
        at += step
        events.append(reading(kind, at, value if kind == "V" else value % 1024))
    return events


def test_25_wh_at_240_v_and_32_a_takes_exactly_11_71875_seconds():
    meter = EnergyMeter()
    for at in range(0, 11_000_001, 1_000_000):
        meter.voltage(at, 2400)
        meter.current(at, 320)
    meter.voltage(11_718_750, 2400)
    assert meter.energy_nj == wh_to_nj(25)
    assert nj_to_wh(meter.energy_nj) == 25
    assert meter.power_mw == 7_680_000


@PROPERTY
@given(decivolts=voltages, deciamps=currents, seconds=st.integers(1, 600), data=st.data())
def test_constant_voltage_and_current_give_exactly_v_times_i_times_t(decivolts, deciamps, seconds, data):
    start = data.draw(st.integers(0, 10**12))
    end = start + seconds * 1_000_000
    middle = data.draw(st.lists(st.tuples(st.sampled_from("VI"), st.integers(start, end)), max_size=60))
    meter = EnergyMeter()
    meter.voltage(start, decivolts)
    meter.current(start, deciamps)
    times = sorted(at for _, at in middle)
    kinds = [kind for kind, _ in middle]
    # Keep every reading fresh: one of each kind at least every second.
    for at in range(start + 1_000_000, end, 1_000_000):
        times.append(at)
        kinds.append("V")
        times.append(at)
        kinds.append("I")
    for kind, at in sorted(zip(kinds, times), key=lambda pair: pair[1]):
        meter.observe(reading(kind, at, decivolts if kind == "V" else deciamps))
    meter.voltage(end, decivolts)
    meter.current(end, deciamps)
    # (V/10) x (A/10) x seconds joules, in nanojoules.
    assert meter.energy_nj == decivolts * deciamps * seconds * 10**7
    assert meter.refused == 0
    assert meter.gaps == 0


@PROPERTY
@given(stream=streams(), split=st.integers(0, 40))
def test_feeding_a_stream_in_two_parts_gives_the_same_total(stream, split):
    whole = EnergyMeter()
    added = sum(whole.observe(event) for event in stream)
    parts = EnergyMeter()
    first = sum(parts.observe(event) for event in stream[:split])
    assert parts.energy_nj == first
    second = sum(parts.observe(event) for event in stream[split:])
    assert parts.energy_nj == whole.energy_nj == added == first + second


@st.composite
def gapless_streams(draw):
    """Alternating voltage and current readings, each step at most half the max gap, so
    every interval is within the gap rule."""
    count = draw(st.integers(2, 40))
    at = draw(st.integers(0, 10**12))
    events = []
    for index in range(count):
        at += draw(st.integers(0, GAP // 2))
        kind = "V" if index % 2 == 0 else "I"
        events.append(reading(kind, at, draw(voltages if kind == "V" else currents)))
    return events


@PROPERTY
@given(stream=gapless_streams(), data=st.data())
def test_splitting_an_interval_with_a_repeated_reading_changes_nothing(stream, data):
    index = data.draw(st.integers(1, len(stream) - 1))
    before, after = stream[index - 1], stream[index]
    at = data.draw(st.integers(before.at_us, after.at_us))
    kind = data.draw(st.sampled_from([VoltageReading, CurrentReading]))
    held = [e for e in stream[:index] if type(e) is kind]
    if not held:
        return
    repeat = dataclasses.replace(held[-1], at_us=at)
    assert energy(stream[:index] + [repeat] + stream[index:]) == energy(stream)


@PROPERTY
@given(first=streams(min_size=1), second=streams(), extra=st.integers(1, 10 * GAP))
def test_a_gap_longer_than_the_limit_adds_nothing(first, second, extra):
    shift = first[-1].at_us + GAP + extra - (second[0].at_us if second else 0)
    moved = [dataclasses.replace(e, at_us=e.at_us + shift) for e in second]
    joined = EnergyMeter()
    for event in first + moved:
        joined.observe(event)
    assert joined.energy_nj == energy(first) + energy(second)


@PROPERTY
@given(events=st.lists(st.tuples(st.sampled_from("VI"), st.integers(0, 10**7), st.integers(0, 1023))))
def test_energy_never_falls_and_is_never_negative_whatever_the_order(events):
    meter = EnergyMeter()
    latest = None
    refused = 0
    previous = 0
    for kind, at, value in events:
        if latest is not None and at < latest:
            refused += 1
        else:
            latest = at
        meter.observe(reading(kind, at, value))
        assert meter.energy_nj >= previous >= 0
        previous = meter.energy_nj
    assert meter.refused == refused


def test_readings_out_of_order_are_refused_and_not_held():
    meter = EnergyMeter()
    meter.voltage(1_000_000, 2400)
    meter.current(1_000_000, 100)
    assert meter.voltage(500_000, 9999) == 0
    assert meter.refused == 1
    assert meter.decivolts == 2400
    assert meter.current(2_000_000, 100) == 2400 * 100 * 1_000_000 * 10


def test_same_timestamp_updates_the_held_value_and_adds_nothing():
    meter = EnergyMeter()
    meter.voltage(0, 2000)
    meter.current(0, 100)
    assert meter.voltage(0, 2400) == 0
    meter.current(1_000_000, 100)
    assert meter.energy_nj == 2400 * 100 * 1_000_000 * 10


def test_a_stale_current_stops_the_meter_even_while_voltage_keeps_coming():
    meter = EnergyMeter(max_gap_us=2_000_000)
    meter.current(0, 320)
    for at in range(0, 10_000_001, 500_000):
        meter.voltage(at, 2400)
    assert meter.energy_nj == 2400 * 320 * 2_000_000 * 10
    assert meter.gaps == 16


def test_a_meter_with_only_one_kind_of_reading_measures_nothing():
    meter = EnergyMeter()
    for at in range(0, 5_000_000, 100_000):
        meter.voltage(at, 2400)
    assert meter.energy_nj == 0
    assert meter.power_mw is None


@pytest.mark.parametrize("bad, error", [(-1, ValueError), (1.5, TypeError), (True, TypeError), ("7", TypeError)])
def test_bad_readings_are_clear_errors(bad, error):
    with pytest.raises(error):
        EnergyMeter().current(0, bad)


def test_events_that_are_not_readings_add_nothing():
    meter = EnergyMeter()
    assert meter.observe("not a reading") == 0
    assert meter.energy_nj == 0


@pytest.mark.parametrize("max_gap", [0, -5, 1.5])
def test_max_gap_must_be_a_positive_integer(max_gap):
    with pytest.raises(ValueError):
        EnergyMeter(max_gap)


def test_timestamps_become_whole_microseconds_once():
    assert timestamp_us(1_763_500_000.123456) == 1_763_500_000_123_456
    assert timestamp_us(12) == 12_000_000
    for bad in (float("nan"), float("inf")):
        with pytest.raises(ValueError):
            timestamp_us(bad)
    for bad in (None, "1.0", True):
        with pytest.raises(TypeError):
            timestamp_us(bad)
