"""What a connector reports and what it is asked: the one interface every charger kind speaks.

A wall unit sells through *connectors*. Each kind of charger (a Tesla Wall Connector Gen 2
slave on RS-485, an OCPP 1.6J charge point, ...) is an adapter at the edge that turns its
own wire into the events below and carries out the three commands: offer amps, stop,
start. The session core of a connector (``wallunit.session``) sees only these types, so a
decision taken for a TWC is the same decision taken for an OCPP charger.

Shaped after python-can's ``BusABC``: a small surface, the adapter owns its IO and its
threads or tasks, and a kind is named in one table (:mod:`distributedcharge.chargers`) and
imported only when a config uses it. Events are past-tense facts, each naming the
connector it concerns by its config name; none carries a clock reading of the adapter's
own except where the charger stamps a reading itself (OCPP meter values), because the
session takes ``now`` from the daemon.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import Protocol, runtime_checkable


@dataclass(frozen=True)
class ChargerLinked:
    """The connector's charger answers: a TWC slave linked, an OCPP charge point booted."""

    connector: str
    detail: str
    max_amps: int | None = None


@dataclass(frozen=True)
class ChargerLost:
    """The connector's charger stopped answering (slave silent, websocket closed, port gone)."""

    connector: str
    reason: str


@dataclass(frozen=True)
class PlugChanged:
    """The charger says a vehicle is, or is no longer, connected.

    ``debounced`` is True when the charger's own state machine already filters a
    bouncing contact (a TWC's state, an OCPP StatusNotification), so the session may act
    at once; False for a raw reading such as a pilot ADC sample.
    """

    connector: str
    plugged: bool
    debounced: bool
    state: str


@dataclass(frozen=True)
class CurrentMeasured:
    """One measurement of what flows: the charger's own ammeter, and volts where it reports them."""

    connector: str
    centiamps: int
    volts: int | None
    offered_amps: int | None


@dataclass(frozen=True)
class EnergyRegistered:
    """The charger's cumulative energy register, in Wh (OCPP Energy.Active.Import.Register)."""

    connector: str
    register_wh: Fraction
    stamped_at: float | None = None


@dataclass(frozen=True)
class StopReported:
    """The outcome of a stop the session asked for, as the measured current shows it."""

    connector: str
    confirmed: bool
    step: str
    measured_centiamps: int | None
    reason: str


@dataclass(frozen=True)
class StartReported:
    """The outcome of a start the session asked for."""

    connector: str
    confirmed: bool
    measured_centiamps: int | None
    reason: str


@dataclass(frozen=True)
class ChargerDiagnostic:
    """Something a person should know that changes no decision by itself (an ID clash, a limit ignored)."""

    connector: str | None
    kind: str
    detail: str


ChargerEvent = (ChargerLinked | ChargerLost | PlugChanged | CurrentMeasured | EnergyRegistered | StopReported
                | StartReported | ChargerDiagnostic)


@runtime_checkable
class Charger(Protocol):
    """One charger adapter: it may serve several connectors (three TWCs on one bus, an OCPP station)."""

    kind: str

    def connectors(self) -> tuple[str, ...]:
        """The config names of the connectors this adapter serves."""
        ...

    def offer_amps(self, connector: str, amps: int) -> None:
        """Allow up to ``amps`` on the connector; the adapter clamps to its wiring and circuit limits."""
        ...

    def stop(self, connector: str) -> None:
        """Stop the flow and confirm it by measurement, escalating until it holds (reported by StopReported)."""
        ...

    def start(self, connector: str) -> None:
        """Let the flow resume at the last offer (reported by StartReported)."""
        ...

    async def next_event(self) -> ChargerEvent:
        """Wait for the next event from any connector of this adapter."""
        ...

    async def run(self) -> None:
        """Drive the charger's wire until :meth:`close`."""
        ...

    def close(self) -> None:
        """Release the wire; :meth:`run` returns soon after."""
        ...
