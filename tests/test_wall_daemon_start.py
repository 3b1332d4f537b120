"""How the wall-unit daemon refuses to start, and what ``distributedcharge wallunit`` exits with."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest
import structlog

from distributedcharge import cli, config
from distributedcharge.daemon import StartupError
from distributedcharge.simnet.server import Simnet
from test_wall_daemon import toml_text, wall_config
from wallunit.config import SCHEMA
from wallunit.daemon import WallDaemon


@pytest.fixture(autouse=True)
def fresh_logging():
    # The CLI configures structlog for its stderr; leave no stream behind for later tests.
    yield
    structlog.reset_defaults()


def node_config(tmp_path: Path, simnet: Simnet, **sections) -> dict:
    swcan = {"interface": "virtual", "channel": uuid.uuid4().hex, **sections.pop("swcan", {})}
    return wall_config(tmp_path / "wall", simnet.node("wall"), str(tmp_path / "no-twc-here"), swcan, **sections)


def refusal(tmp_path: Path, **sections) -> str:
    async def attempt() -> str:
        async with Simnet(tmp_path / "simnet", control_socket=False) as simnet:
            data = node_config(tmp_path, simnet, **sections)
            daemon = WallDaemon(config.validate(data, SCHEMA, "wall.toml"), source="wall.toml")
            with pytest.raises(StartupError) as caught:
                await daemon.start()
            return str(caught.value)

    return asyncio.run(attempt())


def test_a_macaroon_that_can_spend_is_refused(tmp_path):
    reason = refusal(tmp_path, lightning={"macaroon": str(tmp_path / "simnet" / "wall" / "admin.macaroon")})
    assert "can spend the seller's funds" in reason and "invoices:read invoices:write" in reason


def test_a_missing_macaroon_file_is_refused_naming_the_key(tmp_path):
    reason = refusal(tmp_path, lightning={"macaroon": str(tmp_path / "missing.macaroon")})
    assert reason == f"wall.toml: lightning.macaroon: {tmp_path / 'missing.macaroon'}: file not found"


def test_a_swcan_interface_that_cannot_be_opened_is_refused(tmp_path):
    reason = refusal(tmp_path, swcan={"interface": "socketcan", "channel": "nocan9"})
    assert reason.startswith("SWCAN bus socketcan:nocan9 cannot be opened")


def test_cli_exits_2_on_a_bad_config_and_names_every_problem(tmp_path, capsys):
    path = tmp_path / "wallunit.toml"
    path.write_text('role = "wallunit"\n[seller]\nrate_sat_per_kwh = 0\n[twc]\nwiring_limit_a = 99\n')
    assert cli.main(["wallunit", "--config", str(path)]) == 2
    problems = capsys.readouterr().err.splitlines()
    assert problems == [
        f"{path}: seller.rate_sat_per_kwh: must be at least 1, got 0",
        f"{path}: twc.wiring_limit_a: must be at most 80, got 99",
    ]
    assert not (tmp_path / "wall").exists()


def test_cli_exits_1_when_the_daemon_refuses_to_start(tmp_path, capsys):
    async def write_config() -> Path:
        async with Simnet(tmp_path / "simnet", control_socket=False) as simnet:
            data = node_config(tmp_path, simnet, lightning={"macaroon": str(simnet.node("wall").macaroon_path("admin"))},
                               log={"json": "always"})
        path = tmp_path / "wallunit.toml"
        path.write_text(toml_text(data))
        return path

    path = asyncio.run(write_config())
    assert cli.main(["wallunit", "--config", str(path)]) == 1
    assert '"event": "refusing to start"' in capsys.readouterr().err
