"""The car's [buyer] section: exact limits from the file, and a precise line for every bad value."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import pytest

from car import config as car_config
from car.policy import BuyerPolicy, BuyerSettings, PrepayTolerance
from distributedcharge import config

EXAMPLE = Path(car_config.__file__).with_name("car.toml")
NODE = "02" + "79be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798"  # the secp256k1 generator


def load(buyer: dict) -> config.Config:
    return config.validate({"role": "car", "buyer": buyer}, car_config.SCHEMA, "car.toml")


def problems(buyer: dict) -> list[str]:
    with pytest.raises(config.ConfigError) as caught:
        load(buyer)
    return caught.value.problems


def test_the_example_file_is_valid_and_matches_the_defaults():
    role, cfg = config.load(EXAMPLE, "car")
    assert role == "car"
    assert cfg == load({})
    assert cfg.state["dir"] == "/var/lib/distributedcharge-car"


def test_defaults_give_the_original_cars_limits_in_exact_units():
    settings = car_config.buyer_settings_from_config(load({})["buyer"])
    assert settings == BuyerSettings(
        max_rate_msat_per_kwh=1_000_000,
        max_payment_msat=41_000,
        tolerance=PrepayTolerance(),
        max_fee_ppm=30_000,
        min_fee_msat=2_000,
        session_cap_msat=100_000_000,
        daily_cap_msat=200_000_000,
        network="mainnet",
        trusted_payees=frozenset(),
        balance_margin_percent=Fraction(3),
        max_attempts=3,
    )


def test_decimal_values_are_taken_exactly_not_as_binary_floats():
    settings = car_config.buyer_settings_from_config(load({
        "max_rate_sat_per_kwh": 0.123, "prepay_payments_ahead": 1.1, "prepay_error_high_current_percent": 2.5,
        "prepay_low_current_a": 6.5, "balance_margin_percent": 3.3,
    })["buyer"])
    assert settings.max_rate_msat_per_kwh == 123
    assert settings.tolerance.payments_ahead == Fraction(11, 10)
    assert settings.tolerance.error_at_high_current == Fraction(1, 40)
    assert settings.tolerance.low_current_deciamps == 65
    assert settings.balance_margin_percent == Fraction(33, 10)


def test_trusted_payees_become_node_ids_and_the_policy_is_built_from_the_section():
    section = load({"trusted_payees": [NODE, NODE.upper()], "network": "regtest"})["buyer"]
    policy = car_config.buyer_policy_from_config(section, known_hashes={b"x" * 32})
    assert isinstance(policy, BuyerPolicy)
    assert policy.settings.trusted_payees == frozenset({bytes.fromhex(NODE)})
    assert policy.settings.network == "regtest"
    assert b"x" * 32 in policy.known_hashes


@pytest.mark.parametrize(
    "buyer, expected",
    [
        ({"max_rate_sat_per_kwh": 0.0001},
         "car.toml: buyer.max_rate_sat_per_kwh: must be at least 0.001, got 0.0001"),
        ({"max_rate_sat_per_kwh": 1.0005},
         "car.toml: buyer.max_rate_sat_per_kwh: must be a whole number of msat per kWh (at most 3 decimals), "
         "got 1.0005"),
        ({"max_rate_sat_per_kwh": float("nan")},
         "car.toml: buyer.max_rate_sat_per_kwh: must be a finite number, got nan"),
        ({"max_payment_msat": 41.5}, "car.toml: buyer.max_payment_msat: must be an integer, got 41.5"),
        ({"max_payment_msat": 0}, "car.toml: buyer.max_payment_msat: must be at least 1, got 0"),
        ({"prepay_model": "v9"}, "car.toml: buyer.prepay_model: must be one of 'v1', got 'v9'"),
        ({"prepay_payments_ahead": -1}, "car.toml: buyer.prepay_payments_ahead: must be at least 0, got -1"),
        ({"prepay_low_current_a": 30}, "car.toml: buyer.prepay_low_current_a: must be at most 24, got 30"),
        ({"prepay_high_current_a": 10}, "car.toml: buyer.prepay_high_current_a: must be at least 25, got 10"),
        ({"max_fee_ppm": 1_000_001}, "car.toml: buyer.max_fee_ppm: must be at most 1000000, got 1000001"),
        ({"min_fee_sat": True}, "car.toml: buyer.min_fee_sat: must be an integer, got True"),
        ({"session_cap_sat": 0}, "car.toml: buyer.session_cap_sat: must be at least 1, got 0"),
        ({"daily_cap_sat": "lots"}, "car.toml: buyer.daily_cap_sat: must be an integer, got 'lots'"),
        ({"network": "bitcoin"},
         "car.toml: buyer.network: must be one of 'mainnet', 'testnet', 'signet', 'regtest', got 'bitcoin'"),
        ({"trusted_payees": NODE}, f"car.toml: buyer.trusted_payees: must be a list, got '{NODE}'"),
        ({"trusted_payees": [NODE, 7]}, "car.toml: buyer.trusted_payees: entry 1 must be a string, got 7"),
        ({"trusted_payees": [NODE[:-2]]},
         f"car.toml: buyer.trusted_payees: entry 0 must be a node id of 66 hex digits, got '{NODE[:-2]}'"),
        ({"trusted_payees": ["04" + NODE[2:]]},
         f"car.toml: buyer.trusted_payees: entry 0 is not a valid compressed public key: '04{NODE[2:]}'"),
        ({"balance_margin_percent": 101},
         "car.toml: buyer.balance_margin_percent: must be at most 100, got 101"),
        ({"max_attempts": 0}, "car.toml: buyer.max_attempts: must be at least 1, got 0"),
        ({"max_payment_sat": 41}, "car.toml: buyer.max_payment_sat: unknown key"),
    ],
)
def test_each_bad_value_gets_one_precise_line(buyer, expected):
    assert problems(buyer) == [expected]


def test_every_problem_is_reported_at_once():
    found = problems({"network": "x", "max_fee_ppm": -1, "trusted_payees": ["zz"]})
    assert [line.split(":")[1].strip() for line in found] == [
        "buyer.max_fee_ppm", "buyer.network", "buyer.trusted_payees"]
