"""`distributedcharge macaroon inspect|restrict` as an owner uses it."""

from __future__ import annotations

import base64
import json
import os
import stat
from datetime import datetime, timedelta, timezone

import pytest

from distributedcharge.cli import main
from distributedcharge.lightning import macaroons
from distributedcharge.lightning.macaroons import DEFAULT_MACAROON_PERMISSIONS

ROOT_KEY = b"\x09" * 32
INVOICE = macaroons.bake(ROOT_KEY, DEFAULT_MACAROON_PERMISSIONS["invoice"])
ADMIN = macaroons.bake(ROOT_KEY, DEFAULT_MACAROON_PERMISSIONS["admin"], storage_id="12")


@pytest.fixture
def invoice_file(tmp_path):
    path = tmp_path / "invoice.macaroon"
    path.write_bytes(INVOICE)
    return path


def fails_with(capsys, argv: list[str], message: str) -> None:
    assert main(argv) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1 and "Traceback" not in captured.err
    assert captured.err.startswith("distributedcharge macaroon: error: ") and message in captured.err


def test_inspect_a_file(capsys, invoice_file):
    assert main(["macaroon", "inspect", str(invoice_file)]) == 0
    out = capsys.readouterr().out
    assert "location:     lnd" in out and "root key id:  0" in out
    assert "same as lnd's default invoice.macaroon" in out
    assert "usable by:    wallunit" in out
    assert "  invoices:write" in out and "  onchain:read" in out and "caveats:      none" in out


def test_inspect_json_from_hex(capsys):
    restricted = macaroons.add_first_party_caveat(ADMIN, "ipaddr 10.0.0.2")
    assert main(["macaroon", "inspect", restricted.hex(), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["location"] == "lnd" and shown["root_key_id"] == "12"
    assert shown["permissions"] == sorted(f"{e}:{a}" for e, a in DEFAULT_MACAROON_PERMISSIONS["admin"])
    assert shown["caveats"] == ["ipaddr 10.0.0.2"]
    assert shown["default_macaroon"] == "admin" and shown["usable_for"] == ["car", "wallunit"]


def test_inspect_an_lndconnect_uri(capsys):
    uri = f"lndconnect://[::1]:10009?macaroon={base64.urlsafe_b64encode(INVOICE).decode().rstrip('=')}"
    assert main(["macaroon", "inspect", uri, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["default_macaroon"] == "invoice"


def test_inspect_bad_input_is_one_line(capsys, tmp_path):
    fails_with(capsys, ["macaroon", "inspect", str(tmp_path / "admin.macaroon")], "admin.macaroon: file not found")
    fails_with(capsys, ["macaroon", "inspect", "0203"], "malformed macaroon")
    fails_with(capsys, ["macaroon", "inspect", INVOICE[:40].hex()], "malformed macaroon")
    fails_with(capsys, ["macaroon", "inspect", "lndconnect://host:1?cert=x"], "no macaroon parameter")


def test_restrict_adds_ip_and_expiry_caveats(capsys, invoice_file, tmp_path):
    out = tmp_path / "wallunit.macaroon"
    before = datetime.now(timezone.utc)
    assert main(["macaroon", "restrict", str(invoice_file), "--ip", "10.0.0.2", "--expires", "30d",
                 "-o", str(out)]) == 0
    after = datetime.now(timezone.utc)
    assert "added caveat: ipaddr 10.0.0.2" in capsys.readouterr().err
    mac = macaroons.parse(out.read_bytes())
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o600
    assert mac.caveats[0] == "ipaddr 10.0.0.2"
    expires = datetime.fromisoformat(mac.caveats[1].removeprefix("time-before "))
    assert before + timedelta(days=30) <= expires + timedelta(microseconds=1) and expires <= after + timedelta(days=30)
    method = "/lnrpc.Lightning/AddInvoice"
    assert macaroons.verify(out.read_bytes(), {"0": ROOT_KEY}, method, "10.0.0.2", after)
    with pytest.raises(macaroons.MacaroonVerificationError, match="locked to different IP"):
        macaroons.verify(out.read_bytes(), {"0": ROOT_KEY}, method, "10.0.0.3", after)
    with pytest.raises(macaroons.MacaroonVerificationError, match="expired"):
        macaroons.verify(out.read_bytes(), {"0": ROOT_KEY}, method, "10.0.0.2", after + timedelta(days=31))


@pytest.mark.parametrize("duration, seconds", [("3600s", 3600), ("90m", 5400), ("12h", 43200), ("2d", 172800)])
def test_durations(duration, seconds):
    from distributedcharge.lightning.macaroon_cli import parse_duration

    assert parse_duration(duration) == timedelta(seconds=seconds)


def test_restrict_to_stdout_prints_hex(capsys, invoice_file):
    assert main(["macaroon", "restrict", str(invoice_file), "--ip", "::ffff:10.0.0.2", "-o", "-"]) == 0
    printed = capsys.readouterr().out.strip()
    assert macaroons.parse(bytes.fromhex(printed)).caveats == ("ipaddr 10.0.0.2",)


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--expires", "30x"], "duration '30x' must be a positive whole number"),
        (["--expires", "0d"], "duration '0d' must be a positive whole number"),
        (["--expires", "99999d"], "longer than ten years"),
        (["--ip", "charger.local"], "not an IP address: 'charger.local'"),
        ([], "give --ip, --expires or both"),
    ],
)
def test_restrict_refuses_bad_options(capsys, invoice_file, tmp_path, extra, message):
    out = tmp_path / "out.macaroon"
    fails_with(capsys, ["macaroon", "restrict", str(invoice_file), *extra, "-o", str(out)], message)
    assert not out.exists()


def test_restrict_reports_unwritable_output(capsys, invoice_file, tmp_path):
    fails_with(capsys, ["macaroon", "restrict", str(invoice_file), "--ip", "10.0.0.2", "-o",
                        str(tmp_path / "no" / "such" / "dir.macaroon")], "cannot write")
