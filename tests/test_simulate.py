"""``distributedcharge simulate``: whole sessions in-process, each scenario with its expected outcome."""

from __future__ import annotations

import json

import pytest
import structlog

from distributedcharge import cli
from distributedcharge.sim.books import Books, NetworkPayment, WallInvoice
from distributedcharge.sim.scenarios import SCENARIOS, Outcome, money_checks
from distributedcharge.sim.simulate import report, simulate
from distributedcharge.sim.stage import Layout, Terms
from distributedcharge.units import NJ_PER_WH

# Twice the demo's default: the scenarios stay readable in the logs and the file stays short.
# The demo itself plays at its own default, as `make demo` shows it.
SPEED = 20
REPORT_KEYS = ("energy_wh_wall", "energy_wh_car", "payments", "msat_paid_by_car", "msat_received_by_wall",
               "fees_msat", "max_seller_exposure_msat", "max_buyer_exposure_msat", "errors")


@pytest.fixture(autouse=True)
def default_logging():
    """Another test may leave structlog writing to a stream pytest has since closed."""
    structlog.reset_defaults()


def test_demo_plays_an_honest_session_and_exits_0(tmp_path, capsys):
    report_file = tmp_path / "report.json"
    status = cli.main(["simulate", "--report", str(report_file), "--keep-state", str(tmp_path / "state")])
    shown = capsys.readouterr().out
    assert status == 0, shown
    result = json.loads(report_file.read_text())
    assert all(key in result for key in REPORT_KEYS)
    assert result["errors"] == []
    assert result["payments"] >= 10
    assert result["msat_paid_by_car"] == result["msat_received_by_wall"] > 0
    assert result["fees_msat"] > 0
    # The two meters see the same physics through different instruments.
    assert result["energy_wh_car"] == pytest.approx(result["energy_wh_wall"], rel=0.01)
    assert result["energy_wh_plant"] == pytest.approx(result["energy_wh_wall"], rel=0.01)
    # Paid for what the wall measured, ahead by less than the car's v1 allowance.
    assert result["energy_wh_wall"] - 25 <= result["energy_wh_paid_for"] <= result["energy_wh_car"] + 110 + 25
    assert result["rates_msat_per_kwh"] == [100_000, 120_000]
    assert result["max_seller_exposure_msat"] <= 3000
    # Live progress, the tariff change and the summary were shown.
    assert "tariff period changes" in shown and "sat/kWh" in shown and "result: as expected" in shown
    # The configuration the daemons ran from is a real one, and their books were kept.
    state = tmp_path / "state"
    assert (state / "car.toml").exists() and (state / "wallunit.toml").exists()
    assert cli.main(["config", "check", str(state / "wallunit.toml")]) == 0


EXPECTATIONS = {
    "hostile-wall": lambda r: r["refusals"].get("over_offer", 0) >= 1 and r["refusals"].get("duplicate", 0) >= 1,
    "hostile-car": lambda r: r["payments"] == 2 and r["msat_received_by_wall"] == 5000,
    "car-node-offline": lambda r: r["payments"] >= 8 and r["msat_paid_by_car"] == r["msat_received_by_wall"],
    "wall-node-offline": lambda r: r["payments"] >= 8 and r["msat_paid_by_car"] == r["msat_received_by_wall"],
    # The car meters energy the wall could not see while its RS-485 adapter was out.
    "twc-serial-unplugged": lambda r: r["energy_wh_car"] > r["energy_wh_wall"] + 50,
    "swcan-silent": lambda r: r["payments"] == 0 and r["energy_wh_wall"] <= 25,
}


@pytest.mark.parametrize("name", list(EXPECTATIONS))
def test_scenario_ends_as_expected(name, tmp_path):
    result = simulate(SCENARIOS[name], Layout(tmp_path / "state"), speed=SPEED)
    failed = [f"{c['name']}: {c['detail']}" for c in result["checks"] if not c["passed"]]
    assert not failed
    assert result["errors"] == []
    assert result["ok"]
    assert EXPECTATIONS[name](result), result


def _outcome(books: Books) -> Outcome:
    return Outcome(Terms(), books, [], None)


def paid_session(received_msat: int) -> Books:
    energy = 25 * NJ_PER_WH
    books = Books(car_payments=[NetworkPayment(b"h" * 32, 2500, 1000, True)], wall_settled={b"h" * 32: received_msat})
    books.wall_invoices = [WallInvoice("1.1", 1, "energy", 2500, energy, 100_000, "settled", b"h" * 32, received_msat)]
    books.car_journal_payments = {b"h" * 32: ("succeeded", 2500, 1000)}
    return books


def test_the_money_checks_catch_a_wall_that_received_less_than_the_car_paid():
    honest = {c.name: c.passed for c in money_checks(_outcome(paid_session(2500)))}
    short = {c.name: c.passed for c in money_checks(_outcome(paid_session(2000)))}
    assert honest["car paid what the wall received"]
    assert not short["car paid what the wall received"]


def test_a_failed_check_or_an_error_makes_the_run_fail():
    outcome = _outcome(paid_session(2000))
    checks = money_checks(outcome)
    assert not report(SCENARIOS["honest"], "in-process", 10, outcome, checks, 1.0)["ok"]
    outcome.errors.append("car: stopped by RuntimeError")
    passing = [c for c in checks if c.passed]
    assert not report(SCENARIOS["honest"], "in-process", 10, outcome, passing, 1.0)["ok"]


def test_refuses_what_it_cannot_play(tmp_path, capsys):
    assert cli.main(["simulate", "--speed", "1000"]) == 2
    assert cli.main(["simulate", "--processes", "--scenario", "hostile-wall"]) == 2
    (tmp_path / "taken").mkdir()
    assert cli.main(["simulate", "--keep-state", str(tmp_path / "taken")]) == 2
    errors = capsys.readouterr().err
    assert "--speed" in errors and "in-process only" in errors and "exists already" in errors
