"""Least privilege, checked once at start-up before any energy flows.

A daemon refuses to start with a macaroon that cannot make every call it will need
(better now than at the first 25 Wh), and one that grants powers its role never uses:
the wall unit must not spend (offchain:write), neither may touch on-chain funds
(onchain:write) or mint macaroons (macaroon:*). Both Pis sit where anyone can walk off
with the SD card, which should then yield nothing beyond the role's own calls. The owner can override with ``allow_overprivileged_macaroon``; the daemon then
logs the returned warnings at every start.
"""

from __future__ import annotations

from distributedcharge.lightning.macaroons import METHOD_PERMISSIONS, Macaroon, Permission

ROLE_METHODS: dict[str, list[str]] = {
    "car": [
        "/routerrpc.Router/SendPaymentV2",
        "/routerrpc.Router/TrackPaymentV2",
        "/lnrpc.Lightning/ChannelBalance",
        "/lnrpc.Lightning/DecodePayReq",
    ],
    "wallunit": [
        "/lnrpc.Lightning/AddInvoice",
        "/invoicesrpc.Invoices/SubscribeSingleInvoice",
        "/lnrpc.Lightning/LookupInvoice",
        "/invoicesrpc.Invoices/AddHoldInvoice",
        "/invoicesrpc.Invoices/SettleInvoice",
        "/invoicesrpc.Invoices/CancelInvoice",
    ],
}

# What a stolen macaroon must not be able to do, per role: spend, or escalate by baking.
_SPEND_OR_ESCALATE = {("offchain", "write"), ("onchain", "write")}
_CAR_EXTRA = {("onchain", "write")}  # the car must pay off-chain, never on-chain


class PrivilegeError(Exception):
    """The macaroon is unusable for this role (lacks permissions, or grants too much)."""


def _describe(ops: frozenset[Permission]) -> str:
    return " ".join(f"{entity}:{action}" for entity, action in sorted(ops))


def _excess(mac: Macaroon, forbidden: set[Permission]) -> list[str]:
    """Granted operations, and uri: grants, that reach a forbidden power or any macaroon:* one."""

    def reaches(op: Permission) -> bool:
        return op in forbidden or op[0] == "macaroon"

    granted = sorted(mac.permissions)
    found = [f"{entity}:{action}" for entity, action in granted if reaches((entity, action))]
    found += [
        f"uri:{method}"
        for entity, method in granted
        if entity == "uri" and any(reaches(op) for op in METHOD_PERMISSIONS.get(method, ()))
    ]
    return found


def check(role: str, mac: Macaroon, allow_overprivileged: bool) -> list[str]:
    """Refuse (PrivilegeError) a macaroon ``role`` cannot work with; return warnings to log."""
    if role not in ROLE_METHODS:
        raise ValueError(f"unknown role {role!r}")
    missing = [
        f"{method} (needs {_describe(METHOD_PERMISSIONS[method])} or uri:{method})"
        for method in ROLE_METHODS[role]
        if not mac.allows(method)
    ]
    if missing:
        raise PrivilegeError(f"the {role} macaroon lacks permission for: " + "; ".join(missing))
    excess = _excess(mac, _SPEND_OR_ESCALATE if role == "wallunit" else _CAR_EXTRA)
    if not excess:
        return []
    if role == "wallunit":
        text = (f"the wall-unit macaroon can spend the seller's funds or make new macaroons "
                f"({', '.join(excess)}); bake one with only invoices:read invoices:write")
    else:
        text = (f"the car macaroon can move on-chain funds or make new macaroons ({', '.join(excess)}); "
                "bake one with only offchain:read offchain:write")
    if not allow_overprivileged:
        raise PrivilegeError(text + ", or set lightning.allow_overprivileged_macaroon = true")
    return [text]
