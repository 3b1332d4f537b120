"""The serial edge of the TWC master: pyserial in, asyncio out.

:class:`TwcPort` owns one :class:`~distributedcharge.twc.master.TwcMaster` and one serial
link (a device such as ``/dev/ttyUSB0`` or ``/dev/ttyAMA1``, a pty, or any pyserial URL
such as ``socket://127.0.0.1:6000``) at 9600 8N1. A reader thread feeds received bytes to
the event loop; the loop ticks the master every 25 ms and writes what it asks for.

When the adapter is unplugged the port reports :class:`PortDown` once, keeps ticking the
master (its heartbeats are lost, so slaves time out after 26 s exactly as on a cut bus)
and retries opening with backoff until the device is back, then reports :class:`PortUp`
and re-announces the master so the slaves relink within about a second.
"""

from __future__ import annotations

import asyncio
import queue
import re
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

import serial

from distributedcharge import log
from distributedcharge.config import REQUIRED, ConfigError, Field, between
from distributedcharge.twc.master import Event, MasterSettings, TwcMaster

_log = log.get("twc.serial")

BAUD_RATE = 9600
READ_TIMEOUT = 0.05
WRITE_TIMEOUT = 1.0
TICK_INTERVAL = 0.025
REOPEN_DELAYS = (0.5, 1.0, 2.0, 5.0, 10.0)
STATS_LOG_INTERVAL = 60.0


def _twc_id(value: Any) -> str | None:
    if value == "" or re.fullmatch(r"[0-9A-Fa-f]{4}", value) and int(value, 16) not in (0, 0xFFFF):
        return None
    return f"must be 4 hex digits other than 0000 and FFFF (or empty for a random ID), got {value!r}"


TWC_FIELDS = [
    Field("twc.port", str, "/dev/ttyUSB0",
          doc="RS-485 adapter: a device path or a pyserial URL such as socket://127.0.0.1:6000"),
    Field("twc.wiring_limit_a", int, REQUIRED, between(1, 80),
          doc="most amps one Wall Connector may ever be offered: 80 % of its breaker rating"),
    Field("twc.circuit_limit_a", int, 0, between(0, 400),
          doc="most amps all Wall Connectors together may draw; 0 means the same as wiring_limit_a"),
    Field("twc.min_amps", int, 6, between(5, 80),
          doc="smallest offer worth making; below it the master offers an explicit 0 A"),
    Field("twc.master_id", str, "", _twc_id,
          doc="the master's 4-hex-digit TWCID; empty picks a random one at each start"),
    Field("twc.poll_interval_s", int, 60, between(60, 3600),
          doc="how often to ask each slave for its volts and lifetime kWh (not below 60 s, as TWCManager)"),
    Field("twc.stop_timeout_s", int, 10, between(2, 120),
          doc="how long one stop attempt waits for the current to fall below 1 A"),
    Field("twc.stop_attempts", int, 3, between(1, 10),
          doc="stop attempts before the stop is reported as failed"),
]


def settings_from_config(twc: dict[str, Any], source: str = "config") -> MasterSettings:
    """``MasterSettings`` from a validated ``[twc]`` section (see :data:`TWC_FIELDS`)."""
    problems = []
    if twc["min_amps"] > twc["wiring_limit_a"]:
        problems.append(f"{source}: twc.min_amps: {twc['min_amps']} is above twc.wiring_limit_a "
                        f"({twc['wiring_limit_a']}), so no offer could ever be made")
    if twc["circuit_limit_a"] and twc["circuit_limit_a"] < twc["min_amps"]:
        problems.append(f"{source}: twc.circuit_limit_a: {twc['circuit_limit_a']} is below twc.min_amps")
    if problems:
        raise ConfigError(problems)
    return MasterSettings(
        wiring_limit_a=twc["wiring_limit_a"],
        circuit_limit_a=twc["circuit_limit_a"] or None,
        min_amps=twc["min_amps"],
        master_id=int(twc["master_id"], 16) if twc["master_id"] else None,
        poll_interval=float(twc["poll_interval_s"]),
        stop_timeout=float(twc["stop_timeout_s"]),
        stop_attempts=twc["stop_attempts"],
    )


@dataclass(frozen=True)
class PortUp:
    url: str


@dataclass(frozen=True)
class PortDown:
    url: str
    reason: str


PortEvent = Event | PortUp | PortDown


def open_serial(url: str) -> serial.SerialBase:
    return serial.serial_for_url(
        url, baudrate=BAUD_RATE, bytesize=serial.EIGHTBITS, parity=serial.PARITY_NONE,
        stopbits=serial.STOPBITS_ONE, timeout=READ_TIMEOUT, write_timeout=WRITE_TIMEOUT,
    )


class _Reader(threading.Thread):
    """Blocking reads in a thread; bytes, or the error that ended them, go to ``inbox``."""

    def __init__(self, link: serial.SerialBase, inbox: queue.SimpleQueue, clock: Callable[[], float]) -> None:
        super().__init__(name="twc-serial-reader", daemon=True)
        self.link = link
        self.inbox = inbox
        self.clock = clock
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.is_set():
            try:
                data = self.link.read(max(1, self.link.in_waiting))
            except Exception as exc:  # pyserial raises more than SerialException when unplugged
                if not self.stopping.is_set():
                    self.inbox.put((self, exc, self.clock()))
                return
            if data:
                self.inbox.put((self, bytes(data), self.clock()))


class TwcPort:
    """Runs a :class:`TwcMaster` on a serial link; events arrive on :attr:`events`."""

    def __init__(
        self,
        url: str,
        master: TwcMaster,
        *,
        clock: Callable[[], float] = time.monotonic,
        opener: Callable[[str], serial.SerialBase] = open_serial,
        tick_interval: float = TICK_INTERVAL,
        reopen_delays: tuple[float, ...] = REOPEN_DELAYS,
    ) -> None:
        self.url = url
        self.master = master
        self.events: asyncio.Queue[PortEvent] = asyncio.Queue()
        self._clock = clock
        self._opener = opener
        self._tick_interval = tick_interval
        self._reopen_delays = reopen_delays
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()
        self._link: serial.SerialBase | None = None
        self._reader: _Reader | None = None
        self._failures = 0
        self._next_open = 0.0
        self._down_since: float | None = None
        self._closing = False
        self._stats_logged_at = 0.0
        self._errors_logged = 0

    @classmethod
    def from_config(cls, twc: dict[str, Any], source: str = "config") -> TwcPort:
        """A port for a validated ``[twc]`` section; raises ``ConfigError`` on conflicts."""
        return cls(twc["port"], TwcMaster(settings_from_config(twc, source)))

    @property
    def connected(self) -> bool:
        return self._link is not None

    # -- commands, forwarded to the master ------------------------------------------------

    def set_offer(self, amps: int, slave_id: int | None = None) -> None:
        self.master.set_offer(amps, slave_id)

    def stop_charging(self, slave_id: int | None = None) -> None:
        self.master.stop_charging(slave_id)

    def start_charging(self, slave_id: int | None = None) -> None:
        self.master.start_charging(slave_id)

    def close(self) -> None:
        self._closing = True

    # -- the loop -------------------------------------------------------------------------

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while not self._closing:
                now = self._clock()
                if self._link is None and now >= self._next_open:
                    await self._try_open(loop, now)
                self._drain_inbox()
                self._publish(self.master.tick(self._clock()))
                outgoing = self.master.bytes_to_send()
                if outgoing and self._link is not None:
                    await self._write(loop, outgoing)
                self._log_line_errors(now)
                await asyncio.sleep(self._tick_interval)
        finally:
            await self._disconnect(loop)

    async def _try_open(self, loop: asyncio.AbstractEventLoop, now: float) -> None:
        try:
            link = await loop.run_in_executor(None, self._opener, self.url)
        except (serial.SerialException, OSError, ValueError) as exc:
            self._outage(str(exc), now)
            return
        self._link = link
        self._failures = 0
        self._reader = _Reader(link, self._inbox, self._clock)
        self._reader.start()
        self.master.announce()
        if self._down_since is not None:
            _log.warning("twc_port_restored", url=self.url, outage_s=round(now - self._down_since, 1))
        else:
            _log.info("twc_port_open", url=self.url)
        self._down_since = None
        self.events.put_nowait(PortUp(self.url))

    def _outage(self, reason: str, now: float) -> None:
        delay = self._reopen_delays[min(self._failures, len(self._reopen_delays) - 1)]
        self._failures += 1
        self._next_open = now + delay
        if self._down_since is None:
            self._down_since = now
            _log.warning("twc_port_down", url=self.url, reason=reason,
                         detail="heartbeats are lost until the adapter is back; retrying")
            self.events.put_nowait(PortDown(self.url, reason))

    def _drain_inbox(self) -> None:
        while True:
            try:
                reader, item, at = self._inbox.get_nowait()
            except queue.Empty:
                return
            if reader is not self._reader:
                continue
            if isinstance(item, Exception):
                self._lost(f"read failed: {item}", at)
            else:
                self._publish(self.master.receive(item, at))

    async def _write(self, loop: asyncio.AbstractEventLoop, data: bytes) -> None:
        link = self._link
        assert link is not None
        try:
            await loop.run_in_executor(None, link.write, data)
        except Exception as exc:  # same as reads: an unplugged adapter raises several types
            if link is self._link:
                self._lost(f"write failed: {exc}", self._clock())

    def _lost(self, reason: str, now: float) -> None:
        self._stop_reader()
        self._outage(reason, now)

    def _stop_reader(self) -> None:
        link, reader = self._link, self._reader
        self._link = self._reader = None
        if reader is not None:
            reader.stopping.set()
            # Join before closing: a closed descriptor's number can be reused by the next
            # open, and a reader still blocked on it would steal that link's bytes.
            if reader is not threading.current_thread():
                reader.join(2 * READ_TIMEOUT + 0.5)
        if link is not None:
            try:
                link.close()
            except Exception as exc:  # closing a vanished device may fail too; it is gone either way
                _log.debug("twc_port_close_failed", reason=str(exc))

    async def _disconnect(self, loop: asyncio.AbstractEventLoop) -> None:
        await loop.run_in_executor(None, self._stop_reader)

    def _publish(self, events: list[Event]) -> None:
        for event in events:
            self.events.put_nowait(event)

    def _log_line_errors(self, now: float) -> None:
        if now - self._stats_logged_at < STATS_LOG_INTERVAL:
            return
        self._stats_logged_at = now
        stats = self.master.receiver.stats
        if stats.errors() > self._errors_logged:
            self._errors_logged = stats.errors()
            _log.warning("twc_line_errors", frames=stats.frames, bad_checksum=stats.bad_checksum,
                         bad_length=stats.bad_length, bad_escape=stats.bad_escape, timeouts=stats.timeouts,
                         noise_bytes=stats.noise_bytes,
                         hint="check the twisted pair, 120 ohm termination and bias resistors")
