"""The car's whole configuration: the ``[buyer]`` limits, the node, both buses, the relay, state, logs.

Money limits are exact: sat values become integer msat, and a number such as 1.4 in the
file means exactly 7/5 (read through its decimal text, never as a binary float).

:func:`cross_check` checks the ``[lightning]`` section's shape (exactly one way to reach
the node, a well-formed lndconnect URI) without touching the filesystem, so an example
file with placeholder paths checks clean; the daemon reads the certificate and macaroon
at start and refuses to run if either is missing or unusable.
"""

from __future__ import annotations

import string
from collections.abc import Container
from fractions import Fraction
from typing import Any

import coincurve

from car.policy import NETWORKS, BuyerPolicy, BuyerSettings, PrepayTolerance
from distributedcharge import config
from distributedcharge.config import Field, between, one_of
from distributedcharge.daemon import LOG_FIELDS
from distributedcharge.lightning import node
from distributedcharge.lightning.node import LIGHTNING_FIELDS
from distributedcharge.swcan.adapter import SWCAN_FIELDS
from distributedcharge.units import MSAT_PER_SAT
from distributedcharge.vehicle.config import FIELDS as VEHICLE_FIELDS

PREPAY_MODELS = ("v1",)
TOTAL_SUPPLY_SAT = 21_000_000 * 100_000_000


def _exact(value: Any) -> Fraction:
    return Fraction(str(value))


def _all(*checks: config.Check) -> config.Check:
    def check(value: Any) -> str | None:
        for each in checks:
            if problem := each(value):
                return problem
        return None

    return check


def _whole_msat(unit: str) -> config.Check:
    def check(value: Any) -> str | None:
        if (_exact(value) * MSAT_PER_SAT).denominator != 1:
            return f"must be a whole number of msat {unit} (at most 3 decimals), got {value!r}"
        return None

    return check


def _finite(value: Any) -> str | None:
    if isinstance(value, float) and (value != value or value in (float("inf"), float("-inf"))):
        return f"must be a finite number, got {value!r}"
    return None


def _pubkey_list(value: Any) -> str | None:
    for position, item in enumerate(value):
        if not isinstance(item, str):
            return f"entry {position} must be a string, got {item!r}"
        if len(item) != 66 or any(c not in string.hexdigits for c in item):
            return f"entry {position} must be a node id of 66 hex digits, got {item!r}"
        try:
            coincurve.PublicKey(bytes.fromhex(item))
        except ValueError:
            return f"entry {position} is not a valid compressed public key: {item!r}"
    return None


BUYER_FIELDS: list[Field] = [
    Field("buyer.max_rate_sat_per_kwh", (int, float), 1000,
          _all(_finite, between(0.001, 10_000_000), _whole_msat("per kWh")),
          "highest rate the car accepts, sat per kWh"),
    Field("buyer.max_payment_msat", int, 41 * MSAT_PER_SAT, between(1, 100_000_000),
          "largest single payment the car accepts in an offer, msat (41 sat by default)"),
    Field("buyer.prepay_model", str, "v1", one_of(*PREPAY_MODELS),
          "how far ahead of its own meter the car pays; v1 = the original car's rule"),
    Field("buyer.prepay_payments_ahead", (int, float), 1.4, _all(_finite, between(0, 10)),
          "v1: payments the car may be ahead of its meter"),
    Field("buyer.prepay_fixed_wh", (int, float), 75, _all(_finite, between(0, 1000)),
          "v1: fixed Wh the car may be ahead (the meters start at different times)"),
    Field("buyer.prepay_error_low_current_percent", (int, float), 20, _all(_finite, between(0, 100)),
          "v1: meter disagreement allowed at the low-current point, % of energy received"),
    Field("buyer.prepay_low_current_a", (int, float), 5, _all(_finite, between(0, 24)),
          "v1: current of the low-current point, A"),
    Field("buyer.prepay_error_high_current_percent", (int, float), 2.5, _all(_finite, between(0, 100)),
          "v1: meter disagreement allowed at the high-current point, % of energy received"),
    Field("buyer.prepay_high_current_a", (int, float), 48, _all(_finite, between(25, 100)),
          "v1: current of the high-current point, A"),
    Field("buyer.max_fee_ppm", int, 30_000, between(0, 1_000_000),
          "routing fee limit per payment, parts per million of the amount"),
    Field("buyer.min_fee_sat", int, 2, between(0, 1000),
          "routing fee limit never below this, sat"),
    Field("buyer.session_cap_sat", int, 100_000, between(1, TOTAL_SUPPLY_SAT),
          "most the car spends in one plug-in, sat, fees included"),
    Field("buyer.daily_cap_sat", int, 200_000, between(1, TOTAL_SUPPLY_SAT),
          "most the car spends in any 24 hours, sat, fees included"),
    Field("buyer.network", str, "mainnet", one_of(*NETWORKS),
          "the Lightning network the owner's node is on; invoices for others are refused"),
    Field("buyer.trusted_payees", list, [], _pubkey_list,
          "node ids (66 hex) the car will pay; empty = any wall, pinned for the session"),
    Field("buyer.balance_margin_percent", (int, float), 3, _all(_finite, between(0, 100)),
          "channel balance must cover the amount plus this much, %"),
    Field("buyer.max_attempts", int, 3, between(1, 20),
          "times one invoice is tried when payments fail"),
]

STATE_FIELDS: list[Field] = [
    Field("state.dir", str, "/var/lib/distributedcharge-car",
          doc="directory of the payment journal (SQLite)"),
]

VEHICLE_CAN_FIELDS: list[Field] = [
    Field("vehicle_can.interface", str, "socketcan",
          doc="python-can interface of the car's own CAN tap: socketcan on the Pi; virtual or remote in tests"),
    Field("vehicle_can.channel", str, "can1", doc="python-can channel, e.g. can1, or 127.0.0.1:54702 for remote"),
    Field("vehicle_can.bitrate", int, 500_000, between(10_000, 1_000_000),
          doc="bit/s; for socketcan it is set on the interface (systemd-networkd), not here"),
]

NO_RELAY = "none"
# BCM numbers of the GPIO pins on the Raspberry Pi's 40-pin header.
HIGHEST_HEADER_GPIO = 27


def _gpio_pin(value: Any) -> str | None:
    if isinstance(value, str):
        return None if value == NO_RELAY else f"must be a GPIO number or {NO_RELAY!r}, got {value!r}"
    return between(0, HIGHEST_HEADER_GPIO)(value)


RELAY_FIELDS: list[Field] = [
    Field("relay.gpio_pin", (int, str), NO_RELAY, _gpio_pin,
          "BCM number of the GPIO that switches the SWCAN relay (16 on the original boards); "
          "\"none\" or 0: no relay, the SWCAN wire is always connected"),
    Field("relay.active_high", bool, True, doc="the relay closes when the pin is driven high"),
]

SCHEMA: list[Field] = (
    BUYER_FIELDS + STATE_FIELDS + LIGHTNING_FIELDS + SWCAN_FIELDS + VEHICLE_FIELDS + VEHICLE_CAN_FIELDS
    + RELAY_FIELDS + LOG_FIELDS
)


def relay_pin(section: dict[str, Any]) -> int | None:
    """The relay's GPIO from a validated ``[relay]`` section, or None when there is no relay."""
    pin = section["gpio_pin"]
    return None if pin in (NO_RELAY, 0) else pin


def buyer_settings_from_config(section: dict[str, Any]) -> BuyerSettings:
    """A validated ``[buyer]`` section (``config.validate(...)["buyer"]``) as exact settings."""
    tolerance = PrepayTolerance(
        payments_ahead=_exact(section["prepay_payments_ahead"]),
        fixed_wh=_exact(section["prepay_fixed_wh"]),
        error_at_low_current=_exact(section["prepay_error_low_current_percent"]) / 100,
        low_current_deciamps=_exact(section["prepay_low_current_a"]) * 10,
        error_at_high_current=_exact(section["prepay_error_high_current_percent"]) / 100,
        high_current_deciamps=_exact(section["prepay_high_current_a"]) * 10,
    )
    return BuyerSettings(
        max_rate_msat_per_kwh=int(_exact(section["max_rate_sat_per_kwh"]) * MSAT_PER_SAT),
        max_payment_msat=section["max_payment_msat"],
        tolerance=tolerance,
        max_fee_ppm=section["max_fee_ppm"],
        min_fee_msat=section["min_fee_sat"] * MSAT_PER_SAT,
        session_cap_msat=section["session_cap_sat"] * MSAT_PER_SAT,
        daily_cap_msat=section["daily_cap_sat"] * MSAT_PER_SAT,
        network=section["network"],
        trusted_payees=frozenset(bytes.fromhex(node) for node in section["trusted_payees"]),
        balance_margin_percent=_exact(section["balance_margin_percent"]),
        max_attempts=section["max_attempts"],
    )


def buyer_policy_from_config(
    section: dict[str, Any], known_hashes: Container[bytes] = frozenset()
) -> BuyerPolicy:
    """The policy for a validated ``[buyer]`` section; a daemon passes
    ``journal.settled_or_pending_hashes(max_attempts)``."""
    return BuyerPolicy(buyer_settings_from_config(section), known_hashes)


def cross_check(cfg: config.Config, source: str) -> list[str]:
    """Rules spanning several keys: exactly one way to reach the node. The [buyer] ranges
    are chosen so that each key stands alone (the low-current point's range ends below
    the high-current point's)."""
    return node.config_problems(cfg["lightning"], source)
