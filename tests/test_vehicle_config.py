"""The vehicle section of the car's config file."""

from __future__ import annotations

import tomllib

import pytest

from distributedcharge.config import ConfigError, validate
from distributedcharge.vehicle import config as vehicle_config
from distributedcharge.vehicle.meter import EnergyMeter


def load(text: str):
    return validate(tomllib.loads(text), vehicle_config.FIELDS, "car.toml")


def test_defaults_build_an_auto_reader_and_a_two_second_meter():
    state, meter = vehicle_config.build(load("").vehicle)
    assert state.layout_name is None
    assert state.stale_after_us == 2_000_000
    assert state.charging_current_da == 10
    assert isinstance(meter, EnergyMeter) and meter.max_gap_us == 2_000_000


def test_settings_reach_the_reader_and_meter():
    state, meter = vehicle_config.build(load(
        '[vehicle]\nlayout = "2020"\nmeter_max_gap = 3\nstale_after = 1.5\ncharging_current = 2.5\n').vehicle)
    assert state.layout_name == "2020"
    assert state.stale_after_us == 1_500_000
    assert state.charging_current_da == 25
    assert meter.max_gap_us == 3_000_000


def test_every_bad_value_is_reported_at_once():
    with pytest.raises(ConfigError) as caught:
        load('[vehicle]\nlayout = "2019"\nmeter_max_gap = nan\nstale_after = inf\ncharging_current = "1 A"\n')
    assert caught.value.problems == [
        "car.toml: vehicle.layout: must be one of '2020', '2025', 'auto', got '2019'",
        "car.toml: vehicle.meter_max_gap: must be a finite number, got nan",
        "car.toml: vehicle.stale_after: must be a finite number, got inf",
        "car.toml: vehicle.charging_current: must be a number, got '1 A'",
    ]
