"""Shared core: config validation, exact units, the durable journal, the command line."""

from __future__ import annotations

from fractions import Fraction

import pytest

from distributedcharge import cli, config, units
from distributedcharge.journal import open_journal, transaction

SCHEMA = [
    config.Field("seller.rate_sat_per_kwh", int, 100, config.between(1, 4294)),
    config.Field("seller.wh_per_payment", int, 25, config.between(1, 1000)),
    config.Field("state.dir", str),
    config.Field("twc.port", str, "/dev/ttyUSB0"),
    config.Field("twc.voltage", float, 240.0),
    config.Field("log.level", str, "info", config.one_of("debug", "info", "warning", "error")),
]


def test_defaults_are_filled_in_and_ints_become_floats_where_numbers_are_expected():
    cfg = config.validate({"state": {"dir": "/tmp/x"}, "twc": {"voltage": 230}}, SCHEMA, "w.toml")
    assert cfg.seller == {"rate_sat_per_kwh": 100, "wh_per_payment": 25}
    assert cfg.twc["voltage"] == 230.0 and isinstance(cfg.twc["voltage"], float)


def test_every_problem_is_reported_with_file_and_key():
    data = {
        "seller": {"rate_sat_per_kwh": 0, "wh_per_payment": "25", "colour": "red"},
        "log": {"level": "loud"},
        "mystery": 1,
    }
    with pytest.raises(config.ConfigError) as caught:
        config.validate(data, SCHEMA, "w.toml")
    problems = caught.value.problems
    assert "w.toml: seller.rate_sat_per_kwh: must be at least 1, got 0" in problems
    assert "w.toml: seller.wh_per_payment: must be an integer, got '25'" in problems
    assert "w.toml: seller.colour: unknown key" in problems
    assert "w.toml: state.dir: missing (required)" in problems
    assert "w.toml: mystery: unknown key" in problems
    assert any(p.startswith("w.toml: log.level: must be one of") for p in problems)
    assert len(problems) == 6


def test_a_bool_is_not_accepted_as_a_number():
    with pytest.raises(config.ConfigError, match="must be an integer, got True"):
        config.validate({"state": {"dir": "d"}, "seller": {"wh_per_payment": True}}, SCHEMA, "f")


@pytest.mark.parametrize(
    "content, message",
    [
        (b"role = \n", "not valid TOML"),
        (b"\xff\xfe", "not valid"),
        (b'role = "toaster"\n', "role: must be one of"),
    ],
)
def test_unreadable_files_get_one_clear_line(tmp_path, content, message):
    path = tmp_path / "bad.toml"
    path.write_bytes(content)
    with pytest.raises(config.ConfigError) as caught:
        config.load(path)
    assert len(caught.value.problems) == 1 and message in caught.value.problems[0]
    assert str(path) in caught.value.problems[0]


def test_missing_file(tmp_path):
    with pytest.raises(config.ConfigError, match="file not found"):
        config.load(tmp_path / "nope.toml")


def test_price_of_energy_is_exact():
    assert units.msat_for_energy(units.wh_to_nj(25), units.sat_per_kwh_to_msat(100)) == 2500
    third = units.msat_for_energy(units.wh_to_nj(25), 1)
    assert third == Fraction(1, 40)
    assert units.energy_for_msat(2500, 100_000) == units.wh_to_nj(25)
    total = sum(units.msat_for_energy(units.wh_to_nj(Fraction(1, 1000)), 123_457) for _ in range(25_000))
    assert total == units.msat_for_energy(units.wh_to_nj(25), 123_457)


def test_fractional_units_are_refused_rather_than_rounded():
    with pytest.raises(ValueError):
        units.wh_to_nj(Fraction(1, 7))
    with pytest.raises(ValueError):
        units.sat_per_kwh_to_msat(Fraction(1, 3000))
    assert units.format_msat(2500) == "2.500 sat" and units.format_msat(3000) == "3 sat"


def test_journal_commits_survive_reopening_and_failed_transactions_leave_nothing(tmp_path):
    path = tmp_path / "j.sqlite3"
    migrations = ["CREATE TABLE paid(hash TEXT PRIMARY KEY, msat INTEGER NOT NULL);"]
    conn = open_journal(path, migrations)
    with transaction(conn):
        conn.execute("INSERT INTO paid VALUES ('a', 2500)")
    with pytest.raises(RuntimeError):
        with transaction(conn):
            conn.execute("INSERT INTO paid VALUES ('b', 2500)")
            raise RuntimeError("killed mid-write")
    conn.close()
    again = open_journal(path, migrations)
    assert [tuple(r) for r in again.execute("SELECT * FROM paid")] == [("a", 2500)]
    assert again.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_journal_refuses_a_schema_from_the_future(tmp_path):
    path = tmp_path / "j.sqlite3"
    open_journal(path, ["CREATE TABLE a(x);", "CREATE TABLE b(y);"]).close()
    with pytest.raises(RuntimeError, match="newer than this program"):
        open_journal(path, ["CREATE TABLE a(x);"])


def test_help_lists_every_subcommand(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    for name in cli.COMMANDS:
        assert name in out


def test_unknown_subcommand_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["frobnicate"])
    assert exit_.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_config_check_reports_problems_and_exit_status(tmp_path, capsys):
    path = tmp_path / "car.toml"
    path.write_text('role = "wallunit"\n[seller]\nwh_per_payment = -1\n')
    status = cli.main(["config", "check", str(path)])
    err = capsys.readouterr().err
    assert status == 1
    assert f"{path}: seller.wh_per_payment:" in err
