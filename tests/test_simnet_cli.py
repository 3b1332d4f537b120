"""``distributedcharge simnet`` run in a subprocess, driven by ``simnet bake`` and ``simnet control``."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time

import pytest

from distributedcharge.cli import main
from distributedcharge.lightning import errors, macaroons
from distributedcharge.lightning.client import LndClient
from distributedcharge.lightning.node import from_files
from distributedcharge.simnet import control

START_TIMEOUT_S = 30


@pytest.fixture
def running_simnet(tmp_path):
    state_dir = tmp_path / "net"
    process = subprocess.Popen(
        [sys.executable, "-m", "distributedcharge", "simnet", "--state-dir", str(state_dir),
         "--node", "a:1000", "--node", "b", "--payment-latency-ms", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        _wait_until_serving(state_dir, process)
        yield state_dir, process
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=10)


def _wait_until_serving(state_dir, process):
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"simnet exited early: {process.communicate()[1].decode()[-2000:]}")
        try:
            if control.send(state_dir, {"command": "status"}, timeout_s=2)["ok"]:
                return
        except control.ControlError:
            time.sleep(0.1)
    raise AssertionError("simnet did not start in time")


def address(state_dir, node, macaroon_file):
    document = json.loads((state_dir / node / "node.json").read_text())
    return from_files(document["host"], document["port"], str(state_dir / node / "tls.cert"), str(macaroon_file))


def test_bake_and_control_round_trip_against_a_running_simnet(running_simnet, tmp_path, capsys):
    state_dir, process = running_simnet
    baked = tmp_path / "getinfo-and-invoices.macaroon"
    assert main(["simnet", "bake", "--state-dir", str(state_dir), "--node", "a", "-o", str(baked),
                 "invoices:write", "uri:/lnrpc.Lightning/GetInfo"]) == 0
    assert main(["simnet", "bake", "--state-dir", str(state_dir), "--node", "a", "--root-key-id", "7",
                 "--ip-address", "192.0.2.1", "info:read"]) == 0
    locked = tmp_path / "locked.macaroon"
    locked.write_text(capsys.readouterr().out.strip())
    assert macaroons.load(str(locked)).storage_id == "7"

    async def scenario():
        async with LndClient(address(state_dir, "a", baked), timeout_s=5) as minted, \
                LndClient(address(state_dir, "a", locked), timeout_s=5) as elsewhere, \
                LndClient(address(state_dir, "a", state_dir / "a" / "admin.macaroon"), timeout_s=5) as a, \
                LndClient(address(state_dir, "b", state_dir / "b" / "admin.macaroon"), timeout_s=5) as b:
            assert (await minted.get_info()).alias == "a"
            assert (await minted.add_invoice(1_000)).payment_request.startswith("lnbcrt")
            with pytest.raises(errors.PermissionDenied):
                await minted.channel_balance_msat()
            with pytest.raises(errors.PermissionDenied, match="locked to different IP address"):
                await elsewhere.get_info()

            assert main(["simnet", "control", "--state-dir", str(state_dir), "b", "offline"]) == 0
            assert json.loads(capsys.readouterr().out)["online"] is False
            with pytest.raises(errors.Unreachable):
                await b.get_info()
            assert main(["simnet", "control", "--state-dir", str(state_dir), "b", "online"]) == 0
            assert json.loads(capsys.readouterr().out)["port"] == b.address.port
            await b.wait_ready(10)
            bill = await b.add_invoice(5_000)

            assert main(["simnet", "control", "--state-dir", str(state_dir), "a", "fail-payments", "1"]) == 0
            assert json.loads(capsys.readouterr().out)["failing_payments"] == 1
            with pytest.raises(errors.PaymentFailed) as caught:
                await a.pay(bill.payment_request, timeout_s=10, fee_limit_msat=5_000)
            assert caught.value.reason == "FAILURE_REASON_NO_ROUTE"
            paid = await a.pay(bill.payment_request, timeout_s=10, fee_limit_msat=5_000)
            assert paid.fee_msat == 1001
            assert await b.channel_balance_msat() == 5_000

    asyncio.run(scenario())
    assert main(["simnet", "control", "--state-dir", str(state_dir), "a", "latency", "25"]) == 0
    assert json.loads(capsys.readouterr().out)["latency_ms"] == 25

    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=15) == 0
    assert not (state_dir / control.SOCKET_NAME).exists()


@pytest.mark.parametrize(
    ("arguments", "status", "message"),
    [
        (["bake", "--node", "a", "read"], 2, "unable to parse permission tuple: read"),
        (["bake", "--node", "a", "info:"], 2, "action cannot be empty"),
        (["bake", "--node", "a", "wallet:read"], 2, "invalid permission entity. supported actions are [read"),
        (["bake", "--node", "a", "info:steal"], 2, "invalid permission action. supported"),
        (["bake", "--node", "a", "uri:/lnrpc.Lightning/Nope"], 2, "must be an existing URI"),
        (["bake", "--node", "a", "info:read"], 2, "no simnet state in"),
        (["control", "a", "latency"], 1, "latency needs a value"),
        (["control", "a", "latency", "-5"], 1, "non-negative whole number"),
        (["control", "a", "offline"], 1, "no simnet is running"),
    ],
)
def test_cli_refuses_bad_input_with_a_message(tmp_path, capsys, arguments, status, message):
    action, rest = arguments[0], arguments[1:]
    assert main(["simnet", action, "--state-dir", str(tmp_path), *rest]) == status
    assert message in capsys.readouterr().err


def test_run_needs_a_state_dir_and_sane_nodes(tmp_path, capsys):
    assert main(["simnet"]) == 2
    assert "--state-dir is required" in capsys.readouterr().err
    assert main(["simnet", "--state-dir", str(tmp_path), "--node", "car:lots"]) == 2
    assert "SATS must be a whole number" in capsys.readouterr().err
    assert main(["simnet", "--state-dir", str(tmp_path), "--node", "a", "--node", "a"]) == 1
    assert "listed twice" in capsys.readouterr().err
