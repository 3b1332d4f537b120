"""The files a simulated installation is configured by, written as an owner would write them.

One state directory holds everything: simnet's books and node files, each daemon's
state directory, the two TOML configurations (validated by the same loader the daemons
use), least-privilege macaroons baked for each daemon, the TWC's pty link and the logs.
The configurations are production files in every respect but the devices: python-can
``virtual`` or ``remote`` buses instead of socketcan, a pty instead of /dev/ttyUSB0, and
simnet's regtest node on 127.0.0.1 instead of the owner's.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

from distributedcharge import config
from distributedcharge.units import MSAT_PER_SAT

CAR_PERMISSIONS = (("offchain", "read"), ("offchain", "write"))
WALL_PERMISSIONS = (("invoices", "read"), ("invoices", "write"))
CAR_NODE = "car"
WALL_NODE = "wall"
CAR_CHANNEL_SAT = 1_000_000
# A car paying every 25 Wh would route over a low-fee path: lnd's default base fee of
# 1 sat would be a third of each 3-sat step.
ROUTING_FEE_BASE_MSAT = 0
ROUTING_FEE_PPM = 1_000
# The plant's Wall Connector: 48 A on 230 V is the 11 kW of a Model 3's onboard charger.
TWC_AMPS = 48


@dataclass(frozen=True)
class Layout:
    """Where everything lives inside one simulation's state directory."""

    root: Path

    @property
    def simnet_dir(self) -> Path:
        return self.root / "simnet"

    @property
    def simnet_db(self) -> Path:
        return self.simnet_dir / "simnet.sqlite3"

    @property
    def car_dir(self) -> Path:
        return self.root / "car"

    @property
    def wall_dir(self) -> Path:
        return self.root / "wallunit"

    @property
    def car_journal(self) -> Path:
        from car.journal import JOURNAL_FILE

        return self.car_dir / JOURNAL_FILE

    @property
    def wall_ledger(self) -> Path:
        from wallunit.config import LEDGER_FILENAME

        return self.wall_dir / LEDGER_FILENAME

    @property
    def car_config(self) -> Path:
        return self.root / "car.toml"

    @property
    def wall_config(self) -> Path:
        return self.root / "wallunit.toml"

    @property
    def car_macaroon(self) -> Path:
        return self.car_dir / "car.macaroon"

    @property
    def wall_macaroon(self) -> Path:
        return self.wall_dir / "wallunit.macaroon"

    def tls_cert(self, node: str) -> Path:
        return self.simnet_dir / node / "tls.cert"

    @property
    def twc_link(self) -> Path:
        return self.root / "twc-rs485"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    def create(self) -> None:
        for directory in (self.root, self.car_dir, self.wall_dir, self.logs):
            directory.mkdir(parents=True, exist_ok=True)


@dataclass(frozen=True)
class Bus:
    interface: str
    channel: str


@dataclass(frozen=True)
class Buses:
    wall_swcan: Bus
    car_swcan: Bus
    vehicle: Bus


@dataclass(frozen=True)
class Terms:
    """The seller's terms: a rate, and optionally a second rate from a moment on (a tariff period)."""

    rate_sat_per_kwh: int = 100
    wh_per_payment: int = 25
    later_rate_sat_per_kwh: int = 120
    change_at: datetime | None = None

    def rate_at(self, moment: datetime) -> int:
        if self.change_at is not None and moment >= self.change_at:
            return self.later_rate_sat_per_kwh * MSAT_PER_SAT
        return self.rate_sat_per_kwh * MSAT_PER_SAT


def next_whole_minute(moment: datetime, at_least_s: float) -> datetime:
    """The first whole UTC minute at least ``at_least_s`` after ``moment``: tariff periods start on minutes."""
    earliest = moment.astimezone(timezone.utc) + timedelta(seconds=at_least_s)
    floor = earliest.replace(second=0, microsecond=0)
    return floor if floor == earliest else floor + timedelta(minutes=1)


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    raise TypeError(f"no TOML for {value!r}")


def _render(role: str, sections: dict[str, dict[str, object]], tables: dict[str, list[dict[str, object]]],
            header: str) -> str:
    lines = [header, f"role = {_toml(role)}", ""]
    for name, keys in sections.items():
        lines.append(f"[{name}]")
        lines += [f"{key} = {_toml(value)}" for key, value in keys.items()]
        lines.append("")
        for table in tables.get(name, []):
            lines.append(f"[[{name}.tariff]]")
            lines += [f"{key} = {_toml(value)}" for key, value in table.items()]
            lines.append("")
    return "\n".join(lines)


def _lightning(layout: Layout, node: str, port: int, macaroon: Path) -> dict[str, object]:
    return {"host": "127.0.0.1", "port": port, "tls_cert": str(layout.tls_cert(node)), "macaroon": str(macaroon),
            "rpc_timeout_s": 10.0}


def write_wall_config(layout: Layout, buses: Buses, wall_port: int, terms: Terms) -> Path:
    seller: dict[str, object] = {"wh_per_payment": terms.wh_per_payment, "timezone": "UTC"}
    tariff: list[dict[str, object]] = []
    if terms.change_at is None:
        seller["rate_sat_per_kwh"] = terms.rate_sat_per_kwh
    else:
        change = terms.change_at.astimezone(timezone.utc)
        # Two periods covering the day: the first rate until the change, the later one for 12 hours.
        other = change + timedelta(hours=12)
        tariff = [
            {"start": other.strftime("%H:%M"), "end": change.strftime("%H:%M"),
             "rate_sat_per_kwh": terms.rate_sat_per_kwh},
            {"start": change.strftime("%H:%M"), "end": other.strftime("%H:%M"),
             "rate_sat_per_kwh": terms.later_rate_sat_per_kwh},
        ]
    sections = {
        "seller": seller,
        "state": {"dir": str(layout.wall_dir)},
        "lightning": _lightning(layout, WALL_NODE, wall_port, layout.wall_macaroon),
        "swcan": {"interface": buses.wall_swcan.interface, "channel": buses.wall_swcan.channel, "v2": True},
        "twc": {"port": str(layout.twc_link), "wiring_limit_a": TWC_AMPS},
        "log": {"level": "info", "json": "always"},
    }
    text = _render("wallunit", sections, {"seller": tariff},
                   "# Written by 'distributedcharge simulate': a production wall-unit config on simulated devices.")
    layout.wall_config.write_text(text)
    config.load(layout.wall_config, "wallunit")
    return layout.wall_config


def write_car_config(layout: Layout, buses: Buses, car_port: int,
                     swcan: dict[str, object] | None = None) -> Path:
    """``swcan`` overrides the car's [swcan] keys, e.g. ``{"v2": False, "stmin": 25, "blocksize": 10}``
    for a car that talks like the original."""
    sections = {
        "buyer": {"network": "regtest"},
        "state": {"dir": str(layout.car_dir)},
        "lightning": _lightning(layout, CAR_NODE, car_port, layout.car_macaroon),
        "swcan": {"interface": buses.car_swcan.interface, "channel": buses.car_swcan.channel, "v2": True,
                  **(swcan or {})},
        "vehicle_can": {"interface": buses.vehicle.interface, "channel": buses.vehicle.channel},
        "log": {"level": "info", "json": "always"},
    }
    text = _render("car", sections, {},
                   "# Written by 'distributedcharge simulate': a production car config on simulated devices.")
    layout.car_config.write_text(text)
    config.load(layout.car_config, "car")
    return layout.car_config
