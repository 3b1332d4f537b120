"""The IO edge: a WallLink or CarLink on a python-can bus, inside the daemon's asyncio loop.

python-can's Notifier thread reads the bus; can-isotp (NotifierBasedCanStack on the same
Notifier) reassembles and segments invoices; raw 1998/1999/0x7C0 frames and finished
payloads are handed to the loop thread with ``call_soon_threadsafe``, fed to the link with
``loop.time()`` as ``now``, and whatever the link wants sent goes out. Link events land on
:attr:`SwcanPort.events` (``Dropped`` ones are logged; those at "debug" level are not queued).

Frames whose identifier this role transmits itself are ignored: buses such as
``udp_multicast`` hand a sender its own frames back.

Flow control: STmin and block size are what *this* end advertises, i.e. how fast the
peer may send to it. The car's default is STmin 0, block size 0: an MCP2515 on a Pi keeps
up with back-to-back frames at 33.3 kbit/s (about 300 frames/s), and one flow control per
invoice saves the pauses. The wall receives no payloads, so its values do not matter.
Whatever a v1 peer advertises, can-isotp obeys it when sending. Frames are not padded,
as with the Linux isotp defaults the original uses.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import can
import isotp

from distributedcharge import log
from distributedcharge.canloop import LoopListener
from distributedcharge.config import Field, between
from distributedcharge.swcan import messages as msg
from distributedcharge.swcan.link import CarLink, Dropped, Event, WallLink

__all__ = [
    "DEFAULT_BLOCKSIZE", "DEFAULT_STMIN_MS", "SWCAN_FIELDS", "SwcanPort", "TransferFailed", "open_bus", "open_port",
]

_log = log.get("swcan")

DEFAULT_STMIN_MS = 0
DEFAULT_BLOCKSIZE = 0
PROTOCOL_IDS = (msg.ISOTP_CAR_TX_ID, msg.ISOTP_WALL_TX_ID, msg.OFFER_ID, msg.ANSWER_ID, msg.V2_OFFER_ID)
# After a failed bus read python-can retries at once; this keeps a dead interface from spinning.
BUS_ERROR_BACKOFF_S = 0.5
PAYLOAD_POLL_S = 0.1
# A peer flooding the bus with garbage must not flood the journal too: each distinct
# refusal is logged once per interval, with the count of its repeats left out.
DROP_LOG_INTERVAL_S = 10.0


class _DropLog:
    def __init__(self, interval_s: float = DROP_LOG_INTERVAL_S) -> None:
        self.interval_s = interval_s
        self._last: dict[tuple[str, int | None, str], float] = {}
        self._suppressed: dict[tuple[str, int | None, str], int] = {}

    def __call__(self, event: Dropped, now: float) -> None:
        key = (event.level, event.can_id, event.reason)
        last = self._last.get(key)
        if last is not None and now - last < self.interval_s:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return
        self._last[key] = now
        getattr(_log, event.level)("swcan input dropped", reason=event.reason, can_id=event.can_id,
                                   data=event.data[:16].hex(), suppressed=self._suppressed.pop(key, 0))

Link = WallLink | CarLink
T = TypeVar("T")


def _check_stmin(value: Any) -> str | None:
    if 0 <= value <= 127 or 0xF1 <= value <= 0xF9:
        return None
    return f"must be 0-127 (ms) or 241-249 (100-900 us), got {value}"


SWCAN_FIELDS: list[Field] = [
    Field("swcan.interface", str, "socketcan",
          doc="python-can interface: socketcan on the Pi; virtual, remote or udp_multicast for tests"),
    Field("swcan.channel", str, "can0", doc="python-can channel, e.g. can0, or 127.0.0.1:54701 for remote"),
    Field("swcan.bitrate", int, 33_300, between(5_000, 1_000_000),
          doc="bit/s; for socketcan it is set on the interface (systemd-networkd), not here"),
    Field("swcan.stmin", int, DEFAULT_STMIN_MS, _check_stmin,
          doc="ISO-TP STmin this end advertises: the pause the peer leaves between frames it sends us"),
    Field("swcan.blocksize", int, DEFAULT_BLOCKSIZE, between(0, 255),
          doc="ISO-TP block size this end advertises; 0 = the peer sends a whole invoice after one flow control"),
    Field("swcan.v2", bool, True, doc="offer and accept protocol v2 when the peer speaks it"),
    Field("swcan.send_timeout", float, 10.0, between(0.5, 120),
          doc="seconds an invoice may take to go out before the transfer is reported failed"),
]


def open_bus(section: Mapping[str, Any]) -> can.BusABC:
    """The SWCAN bus named by a validated ``[swcan]`` section, filtered to the protocol's ids."""
    return can.Bus(
        interface=section["interface"],
        channel=section["channel"],
        bitrate=section["bitrate"],
        can_filters=[{"can_id": can_id, "can_mask": 0x7FF, "extended": False} for can_id in PROTOCOL_IDS],
    )


def open_port(section: Mapping[str, Any], role: str) -> SwcanPort:
    """A port for ``role`` ("car" or "wallunit") on the bus a validated ``[swcan]`` section names."""
    if role not in ("car", "wallunit"):
        raise ValueError(f"role must be 'car' or 'wallunit', got {role!r}")
    link: Link = WallLink(v2=section["v2"]) if role == "wallunit" else CarLink(v2=section["v2"])
    return SwcanPort(link, open_bus(section), stmin=section["stmin"], blocksize=section["blocksize"],
                     send_timeout=section["send_timeout"])


@dataclass(frozen=True)
class TransferFailed:
    """An ISO-TP payload (an invoice) did not reach the peer; the daemon decides whether to resend."""

    reason: str


class _GuardedStack(isotp.NotifierBasedCanStack):
    """A bus error while sending one segment must fail that transfer, not end can-isotp's thread."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        send = self.txfn

        def guarded_send(message: isotp.CanMessage) -> None:
            try:
                send(message)
            except can.CanError as exc:
                _log.warning("swcan iso-tp frame not sent", can_id=message.arbitration_id, error=str(exc))

        self.txfn = guarded_send


class SwcanPort:
    """Runs one link on one bus. Call link methods through :meth:`apply` so output goes out."""

    def __init__(self, link: Link, bus: can.BusABC, *, stmin: int = DEFAULT_STMIN_MS,
                 blocksize: int = DEFAULT_BLOCKSIZE, send_timeout: float = 10.0,
                 notifier: can.Notifier | None = None) -> None:
        self.link = link
        self.bus = bus
        self.events: asyncio.Queue[Event | TransferFailed] = asyncio.Queue()
        if isinstance(link, WallLink):
            own_ids = {msg.OFFER_ID, msg.V2_OFFER_ID, msg.ISOTP_WALL_TX_ID}
            txid, rxid = msg.ISOTP_WALL_TX_ID, msg.ISOTP_CAR_TX_ID
        else:
            own_ids = {msg.ANSWER_ID, msg.ISOTP_CAR_TX_ID}
            txid, rxid = msg.ISOTP_CAR_TX_ID, msg.ISOTP_WALL_TX_ID
        self._raw_ids = frozenset({msg.OFFER_ID, msg.ANSWER_ID, msg.V2_OFFER_ID} - own_ids)
        self._address = isotp.Address(isotp.AddressingMode.Normal_11bits, txid=txid, rxid=rxid)
        self._isotp_params = {"stmin": stmin, "blocksize": blocksize, "max_frame_size": msg.MAX_PAYLOAD_BYTES,
                              "blocking_send": True}
        self._send_timeout = send_timeout
        self._own_notifier = notifier is None
        self._notifier = notifier
        self._stack: _GuardedStack | None = None
        self._listener: LoopListener | None = None
        self._drop_log = _DropLog()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._outgoing: asyncio.Queue[bytes] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []
        self._timer: asyncio.TimerHandle | None = None
        self._running = False

    # --- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._running = True
        if self._notifier is None:
            self._notifier = can.Notifier(self.bus, [], timeout=PAYLOAD_POLL_S)
        self._listener = LoopListener(self._loop, self._feed_frame, self._on_bus_error,
                                      error_backoff_s=BUS_ERROR_BACKOFF_S, wants=self._wants)
        self._notifier.add_listener(self._listener)
        self._stack = _GuardedStack(self.bus, self._notifier, address=self._address,
                                    error_handler=self._on_isotp_error, params=self._isotp_params)
        self._stack.start()
        self._tasks = [asyncio.create_task(self._receive_payloads(self._stack)),
                       asyncio.create_task(self._send_payloads(self._stack))]
        self._flush()

    async def close(self) -> None:
        """Stop listening and sending; the bus stays open (its owner shuts it down)."""
        self._running = False
        if self._timer is not None:
            self._timer.cancel()
        if self._notifier is not None and self._listener is not None:
            self._listener.active = False
            self._notifier.remove_listener(self._listener)
        if self._stack is not None:
            # Stopping the stack fails any blocking send, which frees the sending thread.
            await asyncio.to_thread(self._stack.stop)
            self._stack = None
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._own_notifier and self._notifier is not None:
            await asyncio.to_thread(self._notifier.stop)
            self._notifier = None

    async def unplugged(self) -> None:
        """End the session in the link and abandon any invoice still queued or on the wire."""
        if self._stack is None:
            raise RuntimeError("unplugged() before start()")
        self.link.unplugged()
        while not self._outgoing.empty():
            self._outgoing.get_nowait()
        await asyncio.to_thread(self._stack.stop_sending)
        await asyncio.to_thread(self._stack.stop_receiving)
        self._flush()

    def now(self) -> float:
        assert self._loop is not None
        return self._loop.time()

    def apply(self, action: Callable[[Link, float], T]) -> T:
        """Run ``action(link, now)`` (e.g. ``lambda wall, now: wall.plugged_in(offer, now)``) and send its output."""
        try:
            return action(self.link, self.now())
        finally:
            self._flush()

    # --- bus side (Notifier and can-isotp threads) ------------------------------------------

    def _wants(self, message: can.Message) -> bool:
        return (self._running and not (message.is_extended_id or message.is_error_frame or message.is_remote_frame)
                and message.arbitration_id in self._raw_ids)

    def _on_isotp_error(self, error: Exception) -> None:
        _log.warning("swcan iso-tp error", error=f"{type(error).__name__}: {error}")

    # --- loop side -------------------------------------------------------------------------

    def _on_bus_error(self, exc: Exception) -> None:
        _log.warning("swcan bus read failed", error=str(exc))

    def _feed_frame(self, message: can.Message) -> None:
        if self._running:
            self.link.receive_frame(message.arbitration_id, bytes(message.data), self.now())
            self._flush()

    def _on_timer(self) -> None:
        self._timer = None
        if self._running and isinstance(self.link, WallLink):
            self.link.tick(self.now())
            self._flush()

    async def _receive_payloads(self, stack: _GuardedStack) -> None:
        while self._running:
            payload = await asyncio.to_thread(stack.recv, True, PAYLOAD_POLL_S)
            if payload is not None and self._running:
                self.link.receive_payload(bytes(payload), self.now())
                self._flush()

    async def _send_payloads(self, stack: _GuardedStack) -> None:
        while True:
            payload = await self._outgoing.get()
            try:
                await asyncio.to_thread(stack.send, payload, send_timeout=self._send_timeout)
            except (isotp.BlockingSendFailure, RuntimeError, ValueError) as exc:
                reason = f"{type(exc).__name__}: {exc}"
                _log.warning("swcan payload not delivered", bytes=len(payload), error=reason)
                if self._running:
                    self.events.put_nowait(TransferFailed(reason))

    def _flush(self) -> None:
        for can_id, data in self.link.frames_to_send():
            try:
                self.bus.send(can.Message(arbitration_id=can_id, data=data, is_extended_id=False))
            except can.CanError as exc:
                _log.warning("swcan frame not sent", can_id=can_id, error=str(exc))
        for payload in self.link.payloads_to_send():
            self._outgoing.put_nowait(payload)
        while (event := self.link.next_event()) is not None:
            if isinstance(event, Dropped):
                self._drop_log(event, self.now())
                if event.level == "debug":
                    continue
            self.events.put_nowait(event)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        deadline = self.link.next_deadline() if isinstance(self.link, WallLink) else None
        if deadline is not None and self._running and self._loop is not None:
            self._timer = self._loop.call_at(deadline, self._on_timer)
