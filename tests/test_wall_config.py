import tomllib
from fractions import Fraction
from pathlib import Path

import pytest

from distributedcharge.config import ConfigError, load, validate
from wallunit.config import SCHEMA, cross_check, wall_settings

EXAMPLE = Path(__file__).resolve().parent.parent / "wallunit" / "wallunit.toml"


# What every wall config needs besides a price: the TWC's wiring limit and the seller's node.
DEVICES = {"twc": {"wiring_limit_a": 32}, "lightning": {"host": "127.0.0.1", "macaroon": "wall.macaroon"}}


def validated(text: str):
    data = tomllib.loads('role = "wallunit"\n' + text)
    for section, keys in DEVICES.items():
        for key, value in keys.items():
            data.setdefault(section, {}).setdefault(key, value)
    return validate(data, SCHEMA, "wall.toml")


def settings_from(text: str):
    return wall_settings(validated(text), "wall.toml")


def problems_of(text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        settings_from(text)
    return caught.value.problems


def test_example_config_is_valid_and_carries_the_v1_defaults():
    role, config = load(EXAMPLE, "wallunit")
    wall = wall_settings(config, str(EXAMPLE))
    seller = wall.seller
    assert seller.next_invoice_below == Fraction(2) * Fraction(9, 10)
    assert seller.cut_below == Fraction(2, 10) * Fraction(101, 100)
    assert seller.cut_below_before_first == Fraction(-3, 10) * Fraction(101, 100)
    assert seller.wh_per_payment == 25 and seller.invoice_expiry_s == 600
    assert (seller.manual.deposit_kwh, seller.manual.cltv_expiry, seller.manual.reserve_blocks) == (250, 144, 25)
    assert (wall.plug.stable_s, wall.plug.after_unplug_s) == (3.0, 15.0)
    assert wall.tariff.is_fixed and wall.ledger_path.name == "wallunit-ledger.sqlite3"
    assert wall.qr_png == Path("/var/lib/distributedcharge-wallunit/manual-pay.png")


def test_minimal_config_needs_only_a_price():
    wall = settings_from("[seller]\nrate_sat_per_kwh = 250\n")
    assert wall.tariff.rate_at(__import__("datetime").datetime(2024, 1, 1)) == 250_000


def test_schedule_instead_of_a_fixed_rate():
    wall = settings_from(
        '[seller]\ntimezone = "Europe/Berlin"\n'
        '[[seller.tariff]]\nstart = "07:00"\nend = "22:00"\nrate_sat_per_kwh = 150\n'
        '[[seller.tariff]]\nstart = 22:00:00\nend = 07:00:00\nrate_sat_per_kwh = 80\n'
    )
    assert not wall.tariff.is_fixed and str(wall.tariff.timezone) == "Europe/Berlin"


def test_price_missing_or_given_twice_is_refused():
    assert problems_of("") == [
        "wall.toml: seller.rate_sat_per_kwh: set a fixed rate or give [[seller.tariff]] periods"
    ]
    both = problems_of(
        "[seller]\nrate_sat_per_kwh = 100\n"
        '[[seller.tariff]]\nstart = "00:00"\nend = "00:00"\nrate_sat_per_kwh = 80\n'
    )
    assert both == ["wall.toml: seller.tariff: give either rate_sat_per_kwh or [[seller.tariff]], not both"]


def test_schedule_with_a_gap_is_refused_at_load_with_where_the_gap_is():
    with pytest.raises(ConfigError) as caught:
        validated('[[seller.tariff]]\nstart = "07:00"\nend = "22:00"\nrate_sat_per_kwh = 150\n')
    assert caught.value.problems == ["wall.toml: seller.tariff: no rate from Mon 00:00 to Mon 07:00; "
                                     "no rate from Mon 22:00 to Tue 07:00; no rate from Tue 22:00 to Wed 07:00; "
                                     "no rate from Wed 22:00 to Thu 07:00; no rate from Thu 22:00 to Fri 07:00; "
                                     "no rate from Fri 22:00 to Sat 07:00; no rate from Sat 22:00 to Sun 07:00; "
                                     "no rate from Sun 22:00 to Mon 00:00"]


def test_every_bad_value_is_reported_at_once():
    with pytest.raises(ConfigError) as caught:
        validated(
            '[seller]\nrate_sat_per_kwh = 0\nwh_per_payment = "lots"\ntimezone = "Mars/Olympus"\n'
            "[meter]\nphases = 2\n[plug]\nstable_s = -1\ncolour = 3\n"
        )
    keys = [problem.split(": ")[1] for problem in caught.value.problems]
    assert keys == ["seller.rate_sat_per_kwh", "seller.timezone", "seller.wh_per_payment", "plug.stable_s",
                    "meter.phases", "plug.colour"]


def test_thresholds_in_the_wrong_order_are_refused():
    problems = problems_of(
        "[seller]\nrate_sat_per_kwh = 100\ncut_below_payments = 2.0\ncut_below_payments_before_first = 0.5\n"
        "[manual]\nreserve_blocks = 200\ncltv_expiry = 144\n"
    )
    assert [p.split(": ")[1] for p in problems] == [
        "seller.cut_below_payments", "seller.cut_below_payments_before_first", "manual.reserve_blocks",
    ]


def test_decimal_thresholds_are_read_exactly():
    wall = settings_from("[seller]\nrate_sat_per_kwh = 100\nnext_invoice_below_payments = 1.1\nwh_per_payment = 12.5\n")
    assert wall.seller.next_invoice_below == Fraction(11, 10)
    assert wall.seller.wh_per_payment == Fraction(25, 2)


def test_manual_pay_can_be_switched_off():
    assert settings_from("[seller]\nrate_sat_per_kwh = 100\n[manual]\nenabled = false\n").seller.manual is None


def test_cross_check_alone_lists_problems_for_config_check():
    assert cross_check(validated(""), "w") == [
        "w: seller.rate_sat_per_kwh: set a fixed rate or give [[seller.tariff]] periods"
    ]


def test_example_config_ships_production_devices_and_passes_config_check(capsys):
    from distributedcharge import cli

    _, config = load(EXAMPLE, "wallunit")
    assert (config["swcan"]["interface"], config["swcan"]["channel"]) == ("socketcan", "can0")
    assert config["twc"]["port"] == "/dev/ttyUSB0" and config["twc"]["wiring_limit_a"] == 32
    assert config["lightning"]["macaroon"].endswith(".macaroon") and config["lightning"]["lndconnect"] is None
    wall = wall_settings(config, str(EXAMPLE))
    assert not wall.use_adc and not wall.relay and wall.seller.manual.block_time_s == 600
    assert cli.main(["config", "check", str(EXAMPLE)]) == 0
    assert "valid wallunit configuration" in capsys.readouterr().out


def test_the_node_must_be_named_one_way():
    neither = tomllib.loads('role = "wallunit"\n[seller]\nrate_sat_per_kwh = 100\n[twc]\nwiring_limit_a = 16\n')
    with pytest.raises(ConfigError) as caught:
        wall_settings(validate(neither, SCHEMA, "w"), "w")
    assert caught.value.problems == [
        "w: lightning.host: missing (required unless lndconnect is given)",
        "w: lightning.macaroon: missing (required unless lndconnect is given)",
    ]
    both = problems_of('[seller]\nrate_sat_per_kwh = 100\n[lightning]\nlndconnect = "lndconnect://node?macaroon=AgED"\n')
    assert len(both) == 1 and "give either lndconnect or host/tls_cert/macaroon" in both[0]


def test_a_broken_lndconnect_uri_is_a_config_error_naming_the_key():
    data = tomllib.loads('role = "wallunit"\n[seller]\nrate_sat_per_kwh = 100\n[twc]\nwiring_limit_a = 16\n'
                         '[lightning]\nlndconnect = "lndconnect://node:99999?macaroon=AgED"\n')
    problems = cross_check(validate(data, SCHEMA, "w"), "w")
    assert len(problems) == 1 and problems[0].startswith("w: lightning.lndconnect: ")


def test_files_named_for_the_node_are_not_read_by_config_check():
    # They are on the wall unit, not where the file is edited; the daemon reads them at start.
    wall = settings_from('[seller]\nrate_sat_per_kwh = 100\n[lightning]\ntls_cert = "/nonexistent/tls.cert"\n')
    assert wall.seller.manual is not None


def test_adc_windows_must_be_ordered_and_apart():
    assert problems_of("[seller]\nrate_sat_per_kwh = 100\n[adc]\nplugged_max = 800\n") == [
        "wall.toml: adc.plugged_min: the plugged and unplugged windows overlap, so one reading would mean both"
    ]
    assert problems_of("[seller]\nrate_sat_per_kwh = 100\n[adc]\nunplugged_min = 1000\nunplugged_max = 900\n") == [
        "wall.toml: adc.unplugged_min: must not be above adc.unplugged_max"
    ]
    inverted = settings_from(
        "[seller]\nrate_sat_per_kwh = 100\n[adc]\nenabled = true\nplugged_min = 600\nplugged_max = 1023\n"
        "unplugged_min = 0\nunplugged_max = 300\n[relay]\nenabled = true\n"
    )
    assert inverted.use_adc and inverted.relay


def test_twc_limits_that_allow_no_offer_are_refused_at_load():
    assert problems_of("[seller]\nrate_sat_per_kwh = 100\n[twc]\nmin_amps = 40\n") == [
        "wall.toml: twc.min_amps: 40 is above twc.wiring_limit_a (32), so no offer could ever be made"
    ]


def test_block_time_sets_the_deposit_window():
    wall = settings_from("[seller]\nrate_sat_per_kwh = 100\n[manual]\nblock_time_s = 2\ncltv_expiry = 40\n"
                         "reserve_blocks = 6\n")
    assert wall.seller.manual.htlc_window.total_seconds() == 34 * 2
