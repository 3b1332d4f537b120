"""The car's configuration: exact [buyer] limits, one way to reach the node, buses, relay, and a
precise line for every bad value."""

from __future__ import annotations

import argparse
from fractions import Fraction
from pathlib import Path

import pytest

from car import config as car_config
from car.policy import BuyerPolicy, BuyerSettings, PrepayTolerance
from distributedcharge import config, config_cli

EXAMPLE = Path(car_config.__file__).with_name("car.toml")
NODE = "02" + "79be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798"  # the secp256k1 generator


def load(buyer: dict) -> config.Config:
    return config.validate({"role": "car", "buyer": buyer}, car_config.SCHEMA, "car.toml")


def problems(buyer: dict) -> list[str]:
    with pytest.raises(config.ConfigError) as caught:
        load(buyer)
    return caught.value.problems


def test_the_example_file_is_valid_and_matches_the_defaults_but_for_the_node_it_names():
    role, cfg = config.load(EXAMPLE, "car")
    assert role == "car"
    defaults = load({})
    assert {name: section for name, section in cfg.items() if name != "lightning"} == {
        name: section for name, section in defaults.items() if name != "lightning"}
    assert cfg.lightning == {**defaults.lightning, "host": "mynode.local", "tls_cert": "/etc/distributedcharge/tls.cert",
                             "macaroon": "/etc/distributedcharge/car.macaroon"}
    assert cfg.state["dir"] == "/var/lib/distributedcharge-car"
    assert (cfg.swcan["interface"], cfg.swcan["channel"], cfg.swcan["bitrate"]) == ("socketcan", "can0", 33_300)
    assert cfg.vehicle_can == {"interface": "socketcan", "channel": "can1", "bitrate": 500_000}
    assert car_config.relay_pin(cfg.relay) is None


def test_config_check_passes_the_example_and_lists_every_problem_of_a_broken_copy(tmp_path, capsys):
    assert config_cli.run(argparse.Namespace(action="check", file=str(EXAMPLE))) == 0
    broken = tmp_path / "car.toml"
    text = EXAMPLE.read_text()
    for good, bad in [('network = "mainnet"', 'network = "lightning"'), ('channel = "can1"', "channel = 1"),
                      ('gpio_pin = "none"', "gpio_pin = 40"), ("stale_after = 2.0", "stale_after = 0"),
                      ('level = "info"', 'level = "loud"'), ("max_attempts = 3", "max_attemps = 3")]:
        assert good in text
        text = text.replace(good, bad, 1)
    broken.write_text(text)
    capsys.readouterr()
    assert config_cli.run(argparse.Namespace(action="check", file=str(broken))) == 1
    assert capsys.readouterr().err.splitlines() == [
        f"{broken}: buyer.network: must be one of 'mainnet', 'testnet', 'signet', 'regtest', got 'lightning'",
        f"{broken}: vehicle.stale_after: must be at least 0.1, got 0",
        f"{broken}: vehicle_can.channel: must be a string, got 1",
        f"{broken}: relay.gpio_pin: must be at most 27, got 40",
        f"{broken}: log.level: must be one of 'debug', 'info', 'warning', 'error', got 'loud'",
        f"{broken}: buyer.max_attemps: unknown key",
    ]


def lightning_problems(section: dict) -> list[str]:
    cfg = config.validate({"lightning": section}, car_config.SCHEMA, "car.toml")
    return car_config.cross_check(cfg, "car.toml")


@pytest.mark.parametrize("section, expected", [
    ({"host": "10.0.0.5", "macaroon": "/etc/car.macaroon"}, []),
    ({"host": "[::1]", "macaroon": "/etc/car.macaroon", "tls_cert": "/etc/tls.cert"}, []),
    ({}, ["car.toml: lightning.host: missing (required unless lndconnect is given)",
          "car.toml: lightning.macaroon: missing (required unless lndconnect is given)"]),
    ({"host": "bad host!", "macaroon": "/m"}, ["car.toml: lightning.host: host 'bad host!' is not a valid host name "
                                               "or IP address"]),
    ({"lndconnect": "lndconnect://node:10009?cert=abc", "macaroon": "/m", "host": "node"},
     ["car.toml: lightning: give either lndconnect or host/tls_cert/macaroon, not both "
      "(found lndconnect and host, macaroon)"]),
    ({"lndconnect": "https://node:10009?macaroon=AgED"},
     ["car.toml: lightning.lndconnect: not an lndconnect URI: it must start with 'lndconnect://'"]),
    ({"lndconnect": "lndconnect://node:10009?cert=abc"},
     ["car.toml: lightning.lndconnect: lndconnect URI has no macaroon parameter"]),
])
def test_the_node_is_reached_exactly_one_way(section, expected):
    assert lightning_problems(section) == expected


@pytest.mark.parametrize("value, pin", [("none", None), (0, None), (16, 16), (27, 27)])
def test_the_relay_pin_is_a_gpio_number_or_none(value, pin):
    cfg = config.validate({"relay": {"gpio_pin": value}}, car_config.SCHEMA, "car.toml")
    assert car_config.relay_pin(cfg.relay) == pin


@pytest.mark.parametrize("value, expected", [
    ("GPIO16", "must be a GPIO number or 'none', got 'GPIO16'"),
    (-1, "must be at least 0, got -1"),
    (28, "must be at most 27, got 28"),
    (True, "must be an integer or a string, got True"),
])
def test_a_bad_relay_pin_gets_one_precise_line(value, expected):
    with pytest.raises(config.ConfigError) as caught:
        config.validate({"relay": {"gpio_pin": value}}, car_config.SCHEMA, "car.toml")
    assert caught.value.problems == [f"car.toml: relay.gpio_pin: {expected}"]


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
