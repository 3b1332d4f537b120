"""Wall-unit configuration: the seller's terms, manual pay, plug detection, metering, state,
and the devices and node the daemon talks to ([lightning], [swcan], [twc], [adc], [relay], [log]).

``SCHEMA`` covers what each key may hold on its own; :func:`cross_check` covers what
keys say together (a fixed rate *or* a schedule, thresholds in the right order, one way
to reach the node, ADC windows that do not overlap), and :func:`wall_settings` builds the
objects the policy runs on, raising ``ConfigError`` with every problem at once. Nothing
here opens a file or a device: a missing macaroon is the daemon's start-up refusal, so
``config check`` passes on a machine that is not the wall unit.

Thresholds are written in "payments" (multiples of the energy one payment buys) and
read exactly: 1.8 in the file is the fraction 9/5, not a binary float.
"""

from __future__ import annotations

import zoneinfo
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

from distributedcharge.config import Config, ConfigError, Field, between, one_of
from distributedcharge.daemon import LOG_FIELDS
from distributedcharge.lightning.node import LIGHTNING_FIELDS, config_problems
from distributedcharge.swcan.adapter import SWCAN_FIELDS
from distributedcharge.twc.serial_port import TWC_FIELDS, settings_from_config
from distributedcharge.units import wh_to_nj

from .manual import ManualSettings
from .plug import PlugTiming
from .policy import SellerSettings
from .tariff import MAX_RATE_SAT_PER_KWH, Tariff, TariffError, periods_from_config
from .wallmeter import WallMeter

LEDGER_FILENAME = "wallunit-ledger.sqlite3"


def _exact(value: int | float) -> Fraction:
    return Fraction(str(value))


def _tariff_check(value: Any) -> str | None:
    if not value:
        return None
    try:
        Tariff(periods_from_config(value))
    except TariffError as exc:
        return "; ".join(exc.problems)
    return None


def _timezone_check(value: Any) -> str | None:
    if value == "":
        return None
    try:
        zoneinfo.ZoneInfo(value)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return f"unknown time zone {value!r} (use a name like \"Europe/Berlin\", or \"\" for the system's)"
    return None


def _wh_check(value: Any) -> str | None:
    if problem := between(1, 1000)(value):
        return problem
    try:
        wh_to_nj(_exact(value))
    except ValueError as exc:
        return str(exc)
    return None


SELLER_FIELDS = [
    Field("seller.rate_sat_per_kwh", int, None, between(1, MAX_RATE_SAT_PER_KWH),
          "fixed price in sat per kWh; leave out when [[seller.tariff]] periods are given"),
    Field("seller.tariff", list, [], _tariff_check,
          "time-of-use periods: tables with start, end (\"HH:MM\", local), rate_sat_per_kwh and optional days"),
    Field("seller.timezone", str, "", _timezone_check, "time zone for the tariff; \"\" means the system's"),
    Field("seller.wh_per_payment", (int, float), 25, _wh_check,
          "energy per payment; v1 sessions round the payment up to a whole sat and sell exactly what it buys"),
    Field("seller.next_invoice_below_payments", (int, float), 1.8, between(0, 10),
          "send the next invoice when the buyer's credit falls below this many payments (v1: 2 x 0.9)"),
    Field("seller.cut_below_payments", (int, float), 0.202, between(-10, 10),
          "cut power when credit falls below this many payments, once one payment arrived (v1: 0.2 x 1.01)"),
    Field("seller.cut_below_payments_before_first", (int, float), -0.303, between(-10, 10),
          "cut power when credit falls below this many payments before the first payment (v1: -0.3 x 1.01)"),
    Field("seller.invoice_expiry_s", int, 600, between(60, 86400), "lifetime of each invoice"),
    Field("seller.offer_timeout_s", (int, float), 30, between(1, 600),
          "with no answer to the offer by then, switch to manual pay (when enabled)"),
    Field("seller.v1_repeat_offer_after_s", (int, float), 10, between(2, 600),
          "a v1 car behind on payments this long is offered its terms again, in case it restarted"),
    Field("manual.enabled", bool, True, None, "offer manual pay (QR code) to cars without the car daemon"),
    Field("manual.deposit_kwh", int, 250, between(1, 10_000), "the deposit covers this much energy"),
    Field("manual.cltv_expiry", int, 144, between(40, 2016), "CLTV expiry of the deposit's hold invoice, blocks"),
    Field("manual.reserve_blocks", int, 25, between(6, 2000),
          "settle the deposit at the latest this many blocks before its HTLC would expire"),
    Field("manual.block_time_s", int, 600, between(1, 3600),
          "average block interval of the node's chain, which times the deposit's HTLC (600 on mainnet)"),
    Field("manual.invoice_expiry_s", int, 600, between(60, 86400), "lifetime of an unpaid deposit invoice"),
    Field("manual.qr_png", str, "manual-pay.png", None, "PNG of the current manual-pay QR code, relative to state.dir"),
]

PLUG_FIELDS = [
    Field("plug.stable_s", (int, float), 3.0, between(0, 60), "a plug must read steadily this long (v1: 3 s)"),
    Field("plug.after_unplug_s", (int, float), 15.0, between(0, 300), "no new plug-in this soon after an unplug"),
    Field("plug.unplug_confirm_s", (int, float), 5.0, between(0, 60), "an unplug must read steadily this long"),
]

ADC_FIELDS = [
    Field("adc.enabled", bool, False, None,
          "confirm the cable with the pilot/proximity voltage on an MCP3008 (needs the pi extra); "
          "a plug-in then needs the TWC and the ADC to agree, and only the ADC can report an unplug"),
    Field("adc.spi_device", int, 0, one_of(0, 1), "SPI chip select of the MCP3008 (CE0 or CE1)"),
    Field("adc.channel", int, 0, between(0, 7), "MCP3008 input the pilot/proximity divider feeds"),
    Field("adc.plugged_min", int, 0, between(0, 1023), "lowest raw reading (0-1023) that means a cable is in"),
    Field("adc.plugged_max", int, 511, between(0, 1023), "highest raw reading that means a cable is in"),
    Field("adc.unplugged_min", int, 768, between(0, 1023), "lowest raw reading that means no cable"),
    Field("adc.unplugged_max", int, 1023, between(0, 1023),
          "highest raw reading that means no cable; readings in neither window say nothing"),
    Field("adc.poll_s", (int, float), 0.2, between(0.05, 5), "seconds between ADC readings"),
]

RELAY_FIELDS = [
    Field("relay.enabled", bool, False, None,
          "switch the SWCAN line onto the charge cable with a relay once a plug-in is confirmed (needs the pi extra)"),
    Field("relay.gpio", int, 16, between(0, 27), "BCM number of the relay's GPIO pin (16 on the original boards)"),
    Field("relay.active_high", bool, True, None, "false when the relay board energises on a low pin"),
]

METER_FIELDS = [
    Field("meter.nominal_voltage_v", int, 230, between(100, 480),
          "voltage used until (or if never) the TWC reports one"),
    Field("meter.max_gap_s", (int, float), 5, between(1, 60), "readings further apart than this add no energy"),
    Field("meter.phases", int, 1, one_of(1, 3), "phases the TWC's current flows on"),
]

STATE_FIELDS = [
    Field("state.dir", str, "/var/lib/distributedcharge-wallunit", None, "ledger and QR files"),
]

SCHEMA = (SELLER_FIELDS + PLUG_FIELDS + METER_FIELDS + STATE_FIELDS + LIGHTNING_FIELDS + SWCAN_FIELDS
          + TWC_FIELDS + ADC_FIELDS + RELAY_FIELDS + LOG_FIELDS)


def cross_check(config: Config, source: str) -> list[str]:
    """Problems that no single key shows; each as ``FILE: KEY: what is wrong``."""
    seller, manual = config["seller"], config["manual"]
    problems = []
    if seller["rate_sat_per_kwh"] is None and not seller["tariff"]:
        problems.append(f"{source}: seller.rate_sat_per_kwh: set a fixed rate or give [[seller.tariff]] periods")
    if seller["rate_sat_per_kwh"] is not None and seller["tariff"]:
        problems.append(f"{source}: seller.tariff: give either rate_sat_per_kwh or [[seller.tariff]], not both")
    invoice_line = _exact(seller["next_invoice_below_payments"])
    cut_line = _exact(seller["cut_below_payments"])
    if cut_line >= invoice_line:
        problems.append(
            f"{source}: seller.cut_below_payments: must be below next_invoice_below_payments, or power is cut "
            "before the next invoice goes out"
        )
    if _exact(seller["cut_below_payments_before_first"]) > 0:
        problems.append(
            f"{source}: seller.cut_below_payments_before_first: must not be positive; the car cannot have paid "
            "before its first payment"
        )
    if manual["reserve_blocks"] >= manual["cltv_expiry"]:
        problems.append(f"{source}: manual.reserve_blocks: must be less than manual.cltv_expiry")
    problems += config_problems(config["lightning"], source)
    problems += _adc_problems(config["adc"], source)
    try:
        settings_from_config(config["twc"], source)
    except ConfigError as exc:
        problems += exc.problems
    return problems


def _adc_problems(adc: dict[str, Any], source: str) -> list[str]:
    problems = []
    for window in ("plugged", "unplugged"):
        if adc[f"{window}_min"] > adc[f"{window}_max"]:
            problems.append(f"{source}: adc.{window}_min: must not be above adc.{window}_max")
    if not problems and (adc["plugged_min"] <= adc["unplugged_max"] and adc["unplugged_min"] <= adc["plugged_max"]):
        problems.append(f"{source}: adc.plugged_min: the plugged and unplugged windows overlap, so one reading "
                        "would mean both")
    return problems


@dataclass(frozen=True)
class WallSettings:
    seller: SellerSettings
    tariff: Tariff
    plug: PlugTiming
    use_adc: bool
    relay: bool
    state_dir: Path
    nominal_voltage_v: int
    max_gap_s: Fraction
    phases: int
    qr_png: Path

    @property
    def ledger_path(self) -> Path:
        return self.state_dir / LEDGER_FILENAME

    def new_meter(self) -> WallMeter:
        return WallMeter(self.nominal_voltage_v, int(self.max_gap_s * 1_000_000), self.phases)


def wall_settings(config: Config, source: str) -> WallSettings:
    problems = cross_check(config, source)
    if problems:
        raise ConfigError(problems)
    seller, manual, plug, meter = config["seller"], config["manual"], config["plug"], config["meter"]
    timezone = zoneinfo.ZoneInfo(seller["timezone"]) if seller["timezone"] else None
    if seller["tariff"]:
        tariff = Tariff(periods_from_config(seller["tariff"]), timezone)
    else:
        tariff = Tariff.fixed(seller["rate_sat_per_kwh"] * 1000, timezone)
    manual_settings = ManualSettings(
        deposit_kwh=manual["deposit_kwh"], cltv_expiry=manual["cltv_expiry"],
        reserve_blocks=manual["reserve_blocks"], block_time_s=manual["block_time_s"],
        invoice_expiry_s=manual["invoice_expiry_s"],
    ) if manual["enabled"] else None
    state_dir = Path(config["state"]["dir"])
    return WallSettings(
        seller=SellerSettings(
            wh_per_payment=_exact(seller["wh_per_payment"]),
            next_invoice_below=_exact(seller["next_invoice_below_payments"]),
            cut_below=_exact(seller["cut_below_payments"]),
            cut_below_before_first=_exact(seller["cut_below_payments_before_first"]),
            invoice_expiry_s=seller["invoice_expiry_s"],
            offer_timeout_s=float(seller["offer_timeout_s"]),
            v1_repeat_offer_after_s=float(seller["v1_repeat_offer_after_s"]),
            manual=manual_settings,
        ),
        tariff=tariff,
        plug=PlugTiming(float(plug["stable_s"]), float(plug["after_unplug_s"]), float(plug["unplug_confirm_s"])),
        use_adc=config["adc"]["enabled"],
        relay=config["relay"]["enabled"],
        state_dir=state_dir,
        nominal_voltage_v=meter["nominal_voltage_v"],
        max_gap_s=_exact(meter["max_gap_s"]),
        phases=meter["phases"],
        qr_png=state_dir / manual["qr_png"],
    )
