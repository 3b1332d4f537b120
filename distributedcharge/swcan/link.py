"""Sans-IO state machines for the two ends of the SWCAN conversation, in the manner of h11.

A link never touches a bus, a clock or a thread. Its owner (the adapter, or a test) feeds
it what arrived and the current time, calls its decision methods, and drains the output::

    link.receive_frame(can_id, data, now)     raw 11-bit frames: offers and answers
    link.receive_payload(payload, now)        reassembled ISO-TP messages (invoices)
    wall.tick(now)                            at wall.next_deadline(): repeats the offer
    link.frames_to_send()   -> [(can_id, data), ...]
    link.payloads_to_send() -> [payload, ...]       ISO-TP, wall -> car
    link.next_event()       -> event or None

Input from the bus never raises: what cannot be used becomes a :class:`Dropped` event with
the reason and leaves the state as it was. A local call that the state does not allow
raises :class:`LinkStateError`; terms or invoices that cannot be encoded raise ValueError.

With ``v2=False`` each role behaves like the original DistributedCharge; with ``v2=True``
it speaks v2 when the peer does and exactly v1 otherwise (docs/protocol.md).
"""

from __future__ import annotations

import enum
import secrets
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace

from distributedcharge.swcan import messages as msg
from distributedcharge.swcan.errors import LinkStateError, SwcanProtocolError
from distributedcharge.swcan.messages import Offer

__all__ = [
    "OFFER_REPEAT_S", "PAIRING_WINDOW_S", "CarAccepted", "CarLink", "CarRejected", "Dropped",
    "Event", "InvoiceReceived", "LinkStateError", "Offer", "OfferReceived", "TariffRejected",
    "WallLink", "WallState", "random_session_id",
]

OFFER_REPEAT_S = 1.0
# A v2 offer frame belongs to the 1998 frame that follows it at once; a lone 1998 frame
# much later is a v1 offer (or its v2 frame was lost) and must not inherit stale terms.
PAIRING_WINDOW_S = 0.5


@dataclass(frozen=True)
class CarAccepted:
    """The car accepted ``offer``; invoices may now be sent (bound to it from now on)."""

    offer: Offer
    version: int
    session_id: int | None
    offer_number: int | None
    mid_session: bool


@dataclass(frozen=True)
class CarRejected:
    """The car rejected the offer made at plug-in; the wall may offer other terms."""

    offer: Offer
    version: int
    session_id: int | None
    offer_number: int | None


@dataclass(frozen=True)
class TariffRejected:
    """The car rejected a tariff change: stop selling. The link sends nothing more until unplug."""

    offer: Offer
    session_id: int
    offer_number: int


@dataclass(frozen=True)
class OfferReceived:
    """The wall offers ``offer``; answer with ``accept(offer)`` or ``reject(offer)``."""

    offer: Offer
    version: int
    session_id: int | None
    offer_number: int | None
    mid_session: bool


@dataclass(frozen=True)
class InvoiceReceived:
    """An invoice bound to ``offer``, which the car accepted; ``wall_energy_nj`` is None in v1."""

    bolt11: str
    offer: Offer
    version: int
    session_id: int | None
    offer_number: int | None
    wall_energy_nj: int | None


@dataclass(frozen=True)
class Dropped:
    """Input that was not used. ``can_id`` is None for an ISO-TP payload.

    ``level`` is "debug" for traffic that is simply not ours, "info" for stale or repeated
    messages, "warning" for malformed or out-of-protocol input.
    """

    reason: str
    can_id: int | None
    data: bytes
    level: str


Event = CarAccepted | CarRejected | TariffRejected | OfferReceived | InvoiceReceived | Dropped


def random_session_id() -> int:
    return secrets.randbits(16)


class _Link:
    def __init__(self, v2: bool) -> None:
        self.v2 = v2
        self._events: deque[Event] = deque()
        self._frames: list[tuple[int, bytes]] = []
        self._payloads: list[bytes] = []

    def next_event(self) -> Event | None:
        return self._events.popleft() if self._events else None

    def frames_to_send(self) -> list[tuple[int, bytes]]:
        frames, self._frames = self._frames, []
        return frames

    def payloads_to_send(self) -> list[bytes]:
        payloads, self._payloads = self._payloads, []
        return payloads

    def _drop(self, reason: str, can_id: int | None, data: bytes, level: str = "warning") -> None:
        self._events.append(Dropped(reason, can_id, data, level))

    def _drop_other_frame(self, can_id: int, data: bytes, own_ids: tuple[int, ...]) -> None:
        if can_id in own_ids:
            self._drop(f"frame 0x{can_id:03X} is one this end sends itself", can_id, data, "debug")
        else:
            self._drop(f"unknown identifier 0x{can_id:03X}", can_id, data, "debug")


class WallState(enum.Enum):
    UNPLUGGED = "unplugged"
    OFFERING = "offering"      # the offer goes out every second until the car answers
    REJECTED = "rejected"      # the car said no; offer() may propose other terms
    SELLING = "selling"        # accepted: invoices flow, bound to the accepted offer
    CHANGING = "changing"      # still selling on the accepted offer while a new one awaits its answer (v2)
    REPEATING = "repeating"    # still selling (v1), the accepted offer out again for a car that restarted
    STOPPED = "stopped"        # the car rejected a tariff change: no more sales until unplug


class WallLink(_Link):
    """The seller's end: offers terms, learns the car's answer, sends invoices."""

    _OWN_IDS = (msg.OFFER_ID, msg.V2_OFFER_ID, msg.ISOTP_WALL_TX_ID)

    def __init__(self, v2: bool = True, session_ids: Callable[[], int] = random_session_id) -> None:
        super().__init__(v2)
        self._session_ids = session_ids
        self._reset()

    def _reset(self) -> None:
        self.state = WallState.UNPLUGGED
        self.session_id: int | None = None
        self.version: int | None = None
        self.accepted_offer: Offer | None = None
        self.proposed_offer: Offer | None = None
        self._accepted_number = 0
        self._proposed_number = 0
        self._next_number = 0
        self._next_offer_at: float | None = None

    # --- local actions ---------------------------------------------------------------------

    def plugged_in(self, offer: Offer, now: float) -> None:
        """Start a session and offer ``offer`` until the car answers."""
        if self.state is not WallState.UNPLUGGED:
            raise LinkStateError(f"plugged_in() while {self.state.value}; call unplugged() first")
        msg.encode_v1_offer(offer)
        if self.v2:
            session_id = self._session_ids()
            if not isinstance(session_id, int) or not 0 <= session_id <= msg.U16_MAX:
                raise ValueError(f"session id must be an integer from 0 to 65535, got {session_id!r}")
            self.session_id = session_id
        self._propose(offer, WallState.OFFERING, now)

    def offer(self, offer: Offer, now: float) -> None:
        """Propose other terms after the car rejected the last ones.

        Not while an offer awaits its answer: a v1 answer names no offer, so one already on
        its way would be taken as the answer to the new terms.
        """
        if self.state is not WallState.REJECTED:
            raise LinkStateError(f"offer() while {self.state.value}; only after the car rejected an offer")
        self._propose(offer, WallState.OFFERING, now)

    def change_offer(self, offer: Offer, now: float) -> None:
        """Tariff change (v2 only): applies to invoices sent after the car accepts it."""
        if self.state not in (WallState.SELLING, WallState.CHANGING):
            raise LinkStateError(f"change_offer() while {self.state.value}; only while selling")
        if self.version != msg.PROTOCOL_V2:
            raise LinkStateError("v1 has no mid-session offer change; the acceptance holds until unplug")
        self._propose(offer, WallState.CHANGING, now)

    def repeat_offer(self, now: float) -> None:
        """v1: put the accepted terms out again, every second, while still selling on them.

        A v1 car whose daemon restarted has lost its acceptance and waits for an offer; an
        original car that still holds it ignores offers. An answer comes back as
        :class:`CarAccepted` or :class:`CarRejected` (then the link is STOPPED).
        """
        if self.state is not WallState.SELLING or self.version != msg.PROTOCOL_V1:
            raise LinkStateError(f"repeat_offer() while {self.state.value} (v{self.version}); "
                                 "only while selling to a v1 car")
        assert self.accepted_offer is not None
        self._propose(self.accepted_offer, WallState.REPEATING, now)

    def stop_repeating(self) -> None:
        """The car paid, so it still holds its acceptance: the repeated offer stops."""
        if self.state is WallState.REPEATING:
            self.state, self.proposed_offer, self._next_offer_at = WallState.SELLING, None, None

    def send_invoice(self, bolt11: str, wall_energy_nj: int) -> None:
        """Queue one invoice for the car; in v2 it carries the wall meter and the accepted offer."""
        if self.state not in (WallState.SELLING, WallState.CHANGING, WallState.REPEATING):
            raise LinkStateError(f"send_invoice() while {self.state.value}; the car has not accepted an offer")
        if self.version == msg.PROTOCOL_V2:
            assert self.session_id is not None
            payload = msg.encode_v2_invoice(bolt11, self.session_id, self._accepted_number, wall_energy_nj)
        else:
            payload = msg.encode_v1_invoice(bolt11)
        self._payloads.append(payload)

    def unplugged(self) -> None:
        """End the session: acceptance, offers and unsent output are gone."""
        self._reset()
        self._frames.clear()
        self._payloads.clear()

    # --- timers ----------------------------------------------------------------------------

    def next_deadline(self) -> float | None:
        return self._next_offer_at if self._awaiting_answer() else None

    def tick(self, now: float) -> None:
        if self._awaiting_answer() and self._next_offer_at is not None and now >= self._next_offer_at:
            self._send_offer(now)

    # --- input -----------------------------------------------------------------------------

    def receive_frame(self, can_id: int, data: bytes, now: float) -> None:
        data = bytes(data)
        if can_id == msg.ANSWER_ID:
            self._on_answer(data)
        else:
            self._drop_other_frame(can_id, data, self._OWN_IDS)

    def receive_payload(self, payload: bytes, now: float) -> None:
        self._drop("the car sends no ISO-TP payloads", None, bytes(payload))

    # --- internals -------------------------------------------------------------------------

    def _awaiting_answer(self) -> bool:
        return self.state in (WallState.OFFERING, WallState.CHANGING, WallState.REPEATING)

    def _propose(self, offer: Offer, state: WallState, now: float) -> None:
        msg.encode_v1_offer(offer)
        self.proposed_offer = offer
        self._proposed_number = self._next_number
        self._next_number = (self._next_number + 1) % (msg.U8_MAX + 1)
        self.state = state
        self._send_offer(now)

    def _send_offer(self, now: float) -> None:
        assert self.proposed_offer is not None
        if self.v2 and self.version != msg.PROTOCOL_V1:
            assert self.session_id is not None
            # Before the 1998 frame, so a v2 car knows the terms are v2 when the 1998 arrives.
            self._frames.append((msg.V2_OFFER_ID, msg.encode_v2_offer(
                self._proposed_number, self.session_id, self.proposed_offer.payment_msat)))
        self._frames.append((msg.OFFER_ID, msg.encode_v1_offer(self.proposed_offer)))
        self._next_offer_at = now + OFFER_REPEAT_S

    def _on_answer(self, data: bytes) -> None:
        if not self._awaiting_answer():
            level = "info" if self.state is not WallState.UNPLUGGED else "debug"
            self._drop(f"answer while no offer awaits one ({self.state.value})", msg.ANSWER_ID, data, level)
            return
        try:
            answer = msg.decode_answer(data, v2=self.v2)
        except SwcanProtocolError as exc:
            self._drop(str(exc), msg.ANSWER_ID, data)
            return
        if self.state is WallState.CHANGING and answer.version != msg.PROTOCOL_V2:
            self._drop("v1 answer in a v2 session", msg.ANSWER_ID, data)
            return
        if self.state is WallState.REPEATING and answer.version != msg.PROTOCOL_V1:
            self._drop("v2 answer in a v1 session", msg.ANSWER_ID, data)
            return
        if answer.version == msg.PROTOCOL_V2 and (
                answer.session_id != self.session_id or answer.offer_number != self._proposed_number):
            self._drop(
                f"answer to offer #{answer.offer_number} of session {answer.session_id}; "
                f"awaiting offer #{self._proposed_number} of session {self.session_id}",
                msg.ANSWER_ID, data, "info")
            return
        assert self.proposed_offer is not None
        proposed, mid_session = self.proposed_offer, self.state in (WallState.CHANGING, WallState.REPEATING)
        repeated = self.state is WallState.REPEATING
        self.proposed_offer = None
        self._next_offer_at = None
        v2_session = answer.version == msg.PROTOCOL_V2
        # A v1 car read whole sat from the 1998 frame, so that is what it agreed to.
        terms = proposed if v2_session else proposed.as_v1()
        session_id = self.session_id if v2_session else None
        number = self._proposed_number if v2_session else None
        if answer.accepted:
            self.state = WallState.SELLING
            self.version = answer.version
            self.accepted_offer = terms
            self._accepted_number = self._proposed_number
            self._events.append(CarAccepted(terms, answer.version, session_id, number, mid_session))
        elif repeated:
            self.state = WallState.STOPPED
            self._events.append(CarRejected(terms, answer.version, None, None))
        elif mid_session:
            assert self.session_id is not None
            self.state = WallState.STOPPED
            self._events.append(TariffRejected(terms, self.session_id, self._proposed_number))
        else:
            self.state = WallState.REJECTED
            self._events.append(CarRejected(terms, answer.version, session_id, number))


def _same_offer(a: OfferReceived, b: OfferReceived) -> bool:
    return (a.offer, a.version, a.session_id, a.offer_number) == (b.offer, b.version, b.session_id, b.offer_number)


class CarLink(_Link):
    """The buyer's end: hears offers, answers them, receives invoices bound to accepted offers."""

    _OWN_IDS = (msg.ANSWER_ID, msg.ISOTP_CAR_TX_ID)

    def __init__(self, v2: bool = True) -> None:
        super().__init__(v2)
        self._reset()

    def _reset(self) -> None:
        self.version: int | None = None
        self.session_id: int | None = None
        self._accepted: OfferReceived | None = None
        # After a tariff change, invoices the wall issued before it heard the acceptance.
        self._previous: OfferReceived | None = None
        self.pending: OfferReceived | None = None
        self._last_answer: tuple[OfferReceived, bool] | None = None
        self._v2_frame: tuple[msg.V2OfferFrame, float] | None = None

    @property
    def accepted_offer(self) -> Offer | None:
        return self._accepted.offer if self._accepted else None

    # --- local actions ---------------------------------------------------------------------

    def accept(self, offer: Offer) -> bool:
        """Accept the pending offer if it is still ``offer``; False if newer terms replaced it."""
        return self._decide(offer, True)

    def reject(self, offer: Offer) -> bool:
        """Reject the pending offer if it is still ``offer``; False if newer terms replaced it."""
        return self._decide(offer, False)

    def unplugged(self) -> None:
        """End the session: the acceptance and any pending offer are gone."""
        self._reset()
        self._frames.clear()

    def resume(self, offer: Offer, version: int, session_id: int | None = None,
               offer_number: int | None = None) -> None:
        """Carry on an acceptance this car made before its daemon restarted, cable still in.

        A wall that is selling does not offer again, so without this the invoices it keeps
        sending would be dropped as arriving before any acceptance. Nothing is sent: the
        wall heard the answer long ago. ``session_id`` and ``offer_number`` are the v2
        binding the acceptance answered; a v1 acceptance has neither.
        """
        if self._accepted is not None or self.pending is not None:
            raise LinkStateError("resume() only on a link that has heard nothing yet")
        msg.encode_v1_offer(offer)
        if version == msg.PROTOCOL_V2:
            if not self.v2:
                raise LinkStateError("cannot resume a v2 session on a link with v2 turned off")
            if not (isinstance(session_id, int) and 0 <= session_id <= msg.U16_MAX
                    and isinstance(offer_number, int) and 0 <= offer_number <= msg.U8_MAX):
                raise ValueError(f"a v2 acceptance needs a u16 session id and a u8 offer number, "
                                 f"got {session_id!r} and {offer_number!r}")
        elif version == msg.PROTOCOL_V1:
            if session_id is not None or offer_number is not None:
                raise ValueError("a v1 acceptance has no session id or offer number")
        else:
            raise ValueError(f"unknown protocol version {version!r}")
        accepted = OfferReceived(offer, version, session_id, offer_number, mid_session=False)
        self.version, self.session_id, self._accepted = version, session_id, accepted
        self._last_answer = (accepted, True)

    # --- input -----------------------------------------------------------------------------

    def receive_frame(self, can_id: int, data: bytes, now: float) -> None:
        data = bytes(data)
        if can_id == msg.OFFER_ID:
            self._on_offer(data, now)
        elif can_id == msg.V2_OFFER_ID and self.v2:
            self._on_v2_offer(data, now)
        else:
            self._drop_other_frame(can_id, data, self._OWN_IDS)

    def receive_payload(self, payload: bytes, now: float) -> None:
        payload = bytes(payload)
        if self._accepted is None:
            self._drop("invoice before any offer was accepted", None, payload)
            return
        try:
            if self.version == msg.PROTOCOL_V2:
                self._on_v2_invoice(payload)
            else:
                bolt11 = msg.decode_v1_invoice(payload)
                self._events.append(InvoiceReceived(bolt11, self._accepted.offer, msg.PROTOCOL_V1, None, None, None))
        except SwcanProtocolError as exc:
            self._drop(str(exc), None, payload)

    # --- internals -------------------------------------------------------------------------

    def _on_v2_offer(self, data: bytes, now: float) -> None:
        try:
            frame = msg.decode_v2_offer(data)
        except SwcanProtocolError as exc:
            self._drop(str(exc), msg.V2_OFFER_ID, data)
            return
        if self.version == msg.PROTOCOL_V1:
            self._drop("v2 offer frame in a v1 session", msg.V2_OFFER_ID, data)
            return
        self._v2_frame = (frame, now)

    def _on_offer(self, data: bytes, now: float) -> None:
        v2_frame, self._v2_frame = self._v2_frame, None
        try:
            v1_frame = msg.decode_v1_offer(data)
            if v2_frame is not None and now - v2_frame[1] <= PAIRING_WINDOW_S:
                frame = v2_frame[0]
                proposal = OfferReceived(msg.combine_offer(v1_frame, frame), msg.PROTOCOL_V2,
                                         frame.session_id, frame.offer_number, mid_session=False)
            else:
                proposal = OfferReceived(msg.offer_from_v1(v1_frame), msg.PROTOCOL_V1, None, None, False)
        except SwcanProtocolError as exc:
            self._drop(str(exc), msg.OFFER_ID, data)
            return
        if self._accepted is not None:
            if proposal.version != self.version:
                self._drop(f"v{proposal.version} offer in a v{self.version} session", msg.OFFER_ID, data)
                return
            if proposal.session_id != self.session_id:
                # A v2 wall draws a session id only at plug-in, so with the cable still in a new
                # one means the wall restarted and lost the session. Its offer is judged like any
                # other; accepting it rebinds the car to the new session (see _decide).
                proposal = replace(proposal, mid_session=True)
            elif _same_offer(proposal, self._accepted):
                # The wall repeats an offer until it hears the answer: it missed ours.
                self._send_answer(proposal, True)
                return
            elif self._previous is not None and _same_offer(proposal, self._previous):
                self._drop("repeat of an offer a later acceptance replaced", msg.OFFER_ID, data, "info")
                return
            elif self.version == msg.PROTOCOL_V1:
                self._drop("v1 has no mid-session offer change; the acceptance holds until unplug",
                           msg.OFFER_ID, data, "info")
                return
            else:
                bound_numbers = {p.offer_number for p in (self._accepted, self._previous) if p is not None}
                if proposal.offer_number in bound_numbers:
                    # Invoices name their offer by number, so a number must keep its terms.
                    self._drop(f"offer #{proposal.offer_number} reused with other terms", msg.OFFER_ID, data)
                    return
                proposal = replace(proposal, mid_session=True)
        if self.pending is not None and _same_offer(proposal, self.pending):
            return
        if self._last_answer is not None and _same_offer(proposal, self._last_answer[0]):
            self._send_answer(proposal, self._last_answer[1])
            return
        self.pending = proposal
        self._events.append(proposal)

    def _decide(self, offer: Offer, accepted: bool) -> bool:
        proposal = self.pending
        if proposal is None or proposal.offer != offer:
            return False
        self.pending = None
        self._send_answer(proposal, accepted)
        self._last_answer = (proposal, accepted)
        if accepted:
            if self._accepted is None:
                self.version, self.session_id = proposal.version, proposal.session_id
            elif proposal.session_id != self.session_id:
                # The restarted wall cancels what it issued before, so the old binding goes.
                self.session_id, self._previous = proposal.session_id, None
            else:
                self._previous = self._accepted
            self._accepted = proposal
        return True

    def _send_answer(self, proposal: OfferReceived, accepted: bool) -> None:
        if proposal.version == msg.PROTOCOL_V2:
            assert proposal.offer_number is not None and proposal.session_id is not None
            data = msg.encode_v2_answer(accepted, proposal.offer_number, proposal.session_id)
        else:
            data = msg.encode_v1_answer(accepted)
        self._frames.append((msg.ANSWER_ID, data))

    def _on_v2_invoice(self, payload: bytes) -> None:
        invoice = msg.decode_v2_invoice(payload)
        accepted, previous = self._accepted, self._previous
        assert accepted is not None
        if invoice.session_id != self.session_id:
            raise SwcanProtocolError(f"invoice for session {invoice.session_id} in session {self.session_id}")
        if invoice.offer_number == accepted.offer_number:
            bound = accepted
            # The wall has switched to the new terms, so older invoices are stale from now on.
            self._previous = None
        elif previous is not None and invoice.offer_number == previous.offer_number:
            bound = previous
        else:
            raise SwcanProtocolError(f"invoice bound to offer #{invoice.offer_number}, which the car has not accepted")
        self._events.append(InvoiceReceived(invoice.bolt11, bound.offer, msg.PROTOCOL_V2, invoice.session_id,
                                            invoice.offer_number, invoice.wall_energy_nj))
