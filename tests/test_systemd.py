"""The shipped units are valid systemd units, and the notify protocol reaches the socket."""

from __future__ import annotations

import configparser
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from distributedcharge import systemd

UNITS = sorted((Path(__file__).parent.parent / "systemd").glob("*.service"))


def _sections(path: Path) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str
    parser.read(path)
    return parser


@pytest.mark.parametrize("unit", UNITS, ids=lambda p: p.name)
def test_units_are_notify_services_with_a_watchdog_and_a_sandbox_that_allows_can(unit):
    service = _sections(unit)["Service"]
    assert service["Type"] == "notify"
    assert service["WatchdogSec"]
    assert service["Restart"] == "on-failure"
    assert service["User"] == "distributedcharge"
    assert service["StateDirectory"].startswith("distributedcharge-")
    assert "AF_CAN" in service["RestrictAddressFamilies"].split()
    assert service["ProtectSystem"] == "strict"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
@pytest.mark.parametrize("unit", UNITS, ids=lambda p: p.name)
def test_systemd_analyze_verify_accepts_the_units(unit, tmp_path):
    # verify insists that ExecStart exists; point it at this checkout's console script.
    installed = Path(sys.executable).with_name("distributedcharge")
    text = unit.read_text().replace("/opt/distributedcharge/.venv/bin/distributedcharge", str(installed))
    copy = tmp_path / unit.name
    copy.write_text(text)
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(copy)], capture_output=True, text=True, timeout=60
    )
    complaints = [line for line in result.stderr.splitlines() if unit.name in line]
    assert result.returncode == 0 and not complaints, result.stderr


def test_networkd_files_set_the_two_bit_rates():
    folder = Path(__file__).parent.parent / "systemd"
    rates = {_sections(p)["Match"]["Name"]: _sections(p)["CAN"]["BitRate"] for p in folder.glob("*.network")}
    assert rates == {"can0": "33300", "can1": "500000"}


def test_notify_sends_datagrams_to_the_socket(tmp_path, monkeypatch):
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(str(path))
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        assert systemd.notify("READY=1")
        assert server.recv(64) == b"READY=1"


def test_notify_is_a_no_op_outside_systemd(monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    assert systemd.notify("WATCHDOG=1") is False
    assert systemd.watchdog_interval_s() is None


def test_watchdog_interval_is_half_the_unit_setting(monkeypatch):
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    assert systemd.watchdog_interval_s() == 15.0
