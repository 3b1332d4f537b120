"""Least privilege at start-up: refuse macaroons a daemon cannot work with or should not hold."""

from __future__ import annotations

import pytest

from distributedcharge.lightning import macaroons, privilege
from distributedcharge.lightning.macaroons import DEFAULT_MACAROON_PERMISSIONS
from distributedcharge.lightning.privilege import ROLE_METHODS, PrivilegeError


def mac(permissions) -> macaroons.Macaroon:
    return macaroons.parse(macaroons.bake(b"\x05" * 32, permissions))


def default(name: str) -> macaroons.Macaroon:
    return mac(DEFAULT_MACAROON_PERMISSIONS[name])


def test_minimal_macaroons_pass_without_warnings():
    assert privilege.check("car", mac([("offchain", "read"), ("offchain", "write")]), False) == []
    assert privilege.check("wallunit", mac([("invoices", "read"), ("invoices", "write")]), False) == []


def test_lnds_default_invoice_macaroon_is_enough_for_the_wall_unit():
    assert privilege.check("wallunit", default("invoice"), False) == []


@pytest.mark.parametrize("role", ["car", "wallunit"])
def test_per_method_uri_permissions_count(role):
    assert privilege.check(role, mac([("uri", m) for m in ROLE_METHODS[role]]), False) == []


def test_missing_permissions_are_all_named():
    with pytest.raises(PrivilegeError) as raised:
        privilege.check("car", default("invoice"), True)
    for method in ROLE_METHODS["car"]:
        assert method in str(raised.value)
    assert "needs offchain:write or uri:/routerrpc.Router/SendPaymentV2" in str(raised.value)


def test_readonly_macaroon_names_only_what_the_wall_unit_cannot_do():
    with pytest.raises(PrivilegeError) as raised:
        privilege.check("wallunit", default("readonly"), True)
    text = str(raised.value)
    assert "/lnrpc.Lightning/AddInvoice" in text and "/invoicesrpc.Invoices/SettleInvoice" in text
    assert "/lnrpc.Lightning/LookupInvoice" not in text and "SubscribeSingleInvoice" not in text


def test_uri_grant_for_one_method_does_not_cover_another():
    partial = mac([("uri", m) for m in ROLE_METHODS["car"][:-1]])
    with pytest.raises(PrivilegeError, match="DecodePayReq") as raised:
        privilege.check("car", partial, False)
    assert "SendPaymentV2" not in str(raised.value)


def test_admin_macaroon_on_the_wall_unit_is_refused_unless_allowed():
    with pytest.raises(PrivilegeError) as raised:
        privilege.check("wallunit", default("admin"), False)
    for power in ("offchain:write", "onchain:write", "macaroon:generate"):
        assert power in str(raised.value)
    assert "allow_overprivileged_macaroon" in str(raised.value)
    warnings = privilege.check("wallunit", default("admin"), True)
    assert len(warnings) == 1 and "offchain:write" in warnings[0]


@pytest.mark.parametrize(
    "extra",
    [("offchain", "write"), ("onchain", "write"), ("macaroon", "read"), ("uri", "/routerrpc.Router/SendPaymentV2"),
     ("uri", "/lnrpc.Lightning/BakeMacaroon")],
)
def test_any_spending_or_escalating_power_makes_a_wall_unit_macaroon_overprivileged(extra):
    with pytest.raises(PrivilegeError, match=":".join(extra)):
        privilege.check("wallunit", mac([("invoices", "read"), ("invoices", "write"), extra]), False)


def test_car_refuses_an_admin_macaroon_unless_the_owner_allows_it():
    with pytest.raises(PrivilegeError) as raised:
        privilege.check("car", default("admin"), False)
    assert "onchain:write" in str(raised.value) and "macaroon:generate" in str(raised.value)
    warnings = privilege.check("car", default("admin"), True)
    assert len(warnings) == 1 and "onchain:write" in warnings[0]


def test_unknown_role():
    with pytest.raises(ValueError, match="unknown role"):
        privilege.check("toaster", default("admin"), False)
