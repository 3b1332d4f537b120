"""The two SWCAN roles as pure state machines: offers, answers, sessions, invoices, tariff changes."""

from __future__ import annotations

import pytest

from distributedcharge.swcan import messages as m
from distributedcharge.swcan.errors import LinkStateError
from distributedcharge.swcan.link import (
    CarAccepted,
    CarLink,
    CarRejected,
    Dropped,
    InvoiceReceived,
    Offer,
    OfferReceived,
    TariffRejected,
    WallLink,
    WallState,
)
from distributedcharge.units import NJ_PER_WH
from test_swcan_packing import make_invoice

OFFER = Offer(rate_msat_per_kwh=100_000, payment_msat=2_500)
CHEAPER = Offer(rate_msat_per_kwh=80_000, payment_msat=2_000)
SESSION = 0xBEEF
INVOICES = [make_invoice(seed=n) for n in range(4)]


def drain(link: WallLink | CarLink) -> list:
    events = []
    while (event := link.next_event()) is not None:
        events.append(event)
    return events


def without_debug(events: list) -> list:
    return [e for e in events if not (isinstance(e, Dropped) and e.level == "debug")]


class Pair:
    """A wall and a car joined by a perfect bus that (like the adapter) hands no one its own frames."""

    def __init__(self, wall_v2: bool, car_v2: bool) -> None:
        self.wall = WallLink(v2=wall_v2, session_ids=lambda: SESSION)
        self.car = CarLink(v2=car_v2)
        self.bus: list[tuple[int, bytes]] = []
        self.now = 100.0

    def deliver(self) -> None:
        while True:
            from_wall, from_car = self.wall.frames_to_send(), self.car.frames_to_send()
            payloads = self.wall.payloads_to_send()
            if not from_wall and not from_car and not payloads:
                return
            self.bus += from_wall + from_car
            for can_id, data in from_wall:
                self.car.receive_frame(can_id, data, self.now)
            for can_id, data in from_car:
                self.wall.receive_frame(can_id, data, self.now)
            for payload in payloads:
                self.car.receive_payload(payload, self.now)

    def agree(self, offer: Offer = OFFER) -> tuple[OfferReceived, CarAccepted]:
        self.wall.plugged_in(offer, self.now)
        self.deliver()
        [heard] = without_debug(drain(self.car))
        assert self.car.accept(heard.offer)
        self.deliver()
        [accepted] = drain(self.wall)
        return heard, accepted


# --- offers and answers ----------------------------------------------------------------------


def test_wall_offers_at_plug_in_and_once_a_second_until_answered() -> None:
    wall = WallLink(v2=False)
    wall.plugged_in(OFFER, now=10.0)
    assert wall.frames_to_send() == [(m.OFFER_ID, m.encode_v1_offer(OFFER))]
    assert wall.next_deadline() == 11.0
    wall.tick(10.9)
    assert wall.frames_to_send() == []
    wall.tick(11.0)
    assert wall.frames_to_send() == [(m.OFFER_ID, m.encode_v1_offer(OFFER))]
    wall.tick(12.3)
    assert len(wall.frames_to_send()) == 1 and wall.next_deadline() == pytest.approx(13.3)
    wall.receive_frame(m.ANSWER_ID, b"\x01", 12.5)
    assert wall.next_deadline() is None
    wall.tick(20.0)
    assert wall.frames_to_send() == []
    assert drain(wall) == [CarAccepted(Offer(100_000, 3_000), 1, None, None, mid_session=False)]


def test_v2_wall_puts_its_v2_frame_before_every_1998_frame() -> None:
    wall = WallLink(v2=True, session_ids=lambda: SESSION)
    wall.plugged_in(OFFER, 0.0)
    wall.tick(1.0)
    expected = [(m.V2_OFFER_ID, bytes.fromhex("0200efbec4090000")), (m.OFFER_ID, bytes.fromhex("00e1f50503000000"))]
    assert wall.frames_to_send() == expected * 2


@pytest.mark.parametrize("wall_v2, car_v2, version", [(False, False, 1), (False, True, 1), (True, False, 1),
                                                      (True, True, 2)])
def test_every_pairing_agrees_and_the_v1_side_sees_only_original_bytes(wall_v2: bool, car_v2: bool,
                                                                      version: int) -> None:
    pair = Pair(wall_v2, car_v2)
    heard, accepted = pair.agree()
    assert heard.version == accepted.version == pair.wall.version == pair.car.version == version
    assert accepted.offer == (OFFER if version == 2 else OFFER.as_v1())
    answers = [data for can_id, data in pair.bus if can_id == m.ANSWER_ID]
    if version == 1:
        assert answers == [b"\x01"]
    if not wall_v2:
        assert {can_id for can_id, _ in pair.bus} == {m.OFFER_ID, m.ANSWER_ID}
    pair.wall.send_invoice(INVOICES[0], wall_energy_nj=30 * NJ_PER_WH)
    if version == 1:
        assert pair.wall.payloads_to_send() == [INVOICES[0].encode()]
        pair.wall.send_invoice(INVOICES[0], wall_energy_nj=30 * NJ_PER_WH)
    pair.deliver()
    [invoice] = without_debug(drain(pair.car))
    assert invoice == InvoiceReceived(INVOICES[0], accepted.offer, version, accepted.session_id,
                                      accepted.offer_number, 30 * NJ_PER_WH if version == 2 else None)


def test_acceptance_holds_until_unplug_and_v1_ignores_later_offers() -> None:
    pair = Pair(wall_v2=False, car_v2=True)
    pair.agree()
    pair.car.receive_frame(m.OFFER_ID, m.encode_v1_offer(CHEAPER), pair.now)
    assert pair.car.frames_to_send() == []
    [ignored] = drain(pair.car)
    assert "no mid-session offer change" in ignored.reason
    for invoice in INVOICES:
        pair.wall.send_invoice(invoice, 0)
    pair.deliver()
    assert [e.bolt11 for e in drain(pair.car)] == INVOICES
    pair.car.unplugged()
    pair.car.receive_payload(INVOICES[0].encode(), pair.now)
    [dropped] = drain(pair.car)
    assert isinstance(dropped, Dropped) and dropped.reason == "invoice before any offer was accepted"


def test_car_answers_again_when_the_wall_repeats_an_offer_it_missed_the_answer_to() -> None:
    car = CarLink(v2=False)
    car.receive_frame(m.OFFER_ID, m.encode_v1_offer(OFFER), 0.0)
    car.receive_frame(m.OFFER_ID, m.encode_v1_offer(OFFER), 1.0)
    assert len(drain(car)) == 1
    car.reject(OFFER.as_v1())
    car.receive_frame(m.OFFER_ID, m.encode_v1_offer(OFFER), 2.0)
    assert car.frames_to_send() == [(m.ANSWER_ID, b"\x00"), (m.ANSWER_ID, b"\x00")]
    car.receive_frame(m.OFFER_ID, m.encode_v1_offer(CHEAPER), 3.0)
    [better] = drain(car)
    assert car.accept(better.offer)
    car.receive_frame(m.OFFER_ID, m.encode_v1_offer(CHEAPER), 4.0)
    assert car.frames_to_send() == [(m.ANSWER_ID, b"\x01"), (m.ANSWER_ID, b"\x01")]
    assert drain(car) == []


def test_a_decision_on_terms_a_newer_offer_replaced_is_not_sent() -> None:
    car = CarLink(v2=False)
    car.receive_frame(m.OFFER_ID, m.encode_v1_offer(OFFER), 0.0)
    car.receive_frame(m.OFFER_ID, m.encode_v1_offer(Offer(900_000, 3_000)), 0.5)
    first, second = drain(car)
    assert not car.accept(first.offer)
    assert car.frames_to_send() == []
    assert car.reject(second.offer)
    assert car.frames_to_send() == [(m.ANSWER_ID, b"\x00")]


def test_rejected_wall_can_offer_better_terms() -> None:
    pair = Pair(wall_v2=True, car_v2=True)
    pair.wall.plugged_in(OFFER, pair.now)
    with pytest.raises(LinkStateError, match="only after the car rejected"):
        pair.wall.offer(CHEAPER, pair.now)
    pair.deliver()
    [heard] = drain(pair.car)
    pair.car.reject(heard.offer)
    pair.deliver()
    assert drain(pair.wall) == [CarRejected(OFFER, 2, SESSION, 0)]
    assert pair.wall.state is WallState.REJECTED and pair.wall.next_deadline() is None
    with pytest.raises(LinkStateError):
        pair.wall.send_invoice(INVOICES[0], 0)
    pair.wall.offer(CHEAPER, pair.now)
    pair.deliver()
    [better] = drain(pair.car)
    assert (better.offer, better.offer_number) == (CHEAPER, 1)
    pair.car.accept(CHEAPER)
    pair.deliver()
    assert drain(pair.wall) == [CarAccepted(CHEAPER, 2, SESSION, 1, mid_session=False)]


def test_wall_refuses_terms_v1_cannot_carry_and_stays_unplugged() -> None:
    wall = WallLink()
    with pytest.raises(ValueError):
        wall.plugged_in(Offer(5_000_000, 1_000), 0.0)
    assert wall.state is WallState.UNPLUGGED and wall.frames_to_send() == []


def test_a_lone_v2_frame_is_not_paired_with_a_1998_frame_that_comes_too_late() -> None:
    car = CarLink(v2=True)
    car.receive_frame(m.V2_OFFER_ID, m.encode_v2_offer(0, SESSION, 2_500), 0.0)
    car.receive_frame(m.OFFER_ID, m.encode_v1_offer(OFFER), 0.6)
    [heard] = drain(car)
    assert heard.version == 1 and heard.offer == OFFER.as_v1()


def test_v2_and_1998_frames_that_disagree_are_dropped_without_an_answer() -> None:
    car = CarLink(v2=True)
    car.receive_frame(m.V2_OFFER_ID, m.encode_v2_offer(0, SESSION, 5_500), 0.0)
    car.receive_frame(m.OFFER_ID, m.encode_v1_offer(OFFER), 0.0)
    [dropped] = drain(car)
    assert isinstance(dropped, Dropped) and "does not round up" in dropped.reason
    assert car.frames_to_send() == [] and car.pending is None


# --- wall-side bad and stale answers ---------------------------------------------------------


def test_wall_ignores_malformed_and_stale_answers_and_keeps_offering() -> None:
    wall = WallLink(v2=True, session_ids=lambda: SESSION)
    wall.plugged_in(OFFER, 0.0)
    wall.frames_to_send()
    for data in (b"", b"\x07", b"\x01\x02", m.encode_v2_answer(True, 0, SESSION + 1),
                 m.encode_v2_answer(True, 9, SESSION)):
        wall.receive_frame(m.ANSWER_ID, data, 0.1)
    wall.receive_frame(0x123, b"\x01", 0.1)
    events = drain(wall)
    assert all(isinstance(e, Dropped) for e in events) and len(events) == 6
    assert wall.state is WallState.OFFERING
    wall.tick(1.0)
    assert len(wall.frames_to_send()) == 2


# --- sessions, binding and tariff changes ----------------------------------------------------


def test_invoices_bind_to_the_session_and_the_accepted_offer() -> None:
    pair = Pair(wall_v2=True, car_v2=True)
    pair.agree()
    for session, number, reason in ((SESSION + 1, 0, "session"), (SESSION, 1, "has not accepted")):
        pair.car.receive_payload(m.encode_v2_invoice(INVOICES[0], session, number, 0), pair.now)
        [dropped] = drain(pair.car)
        assert isinstance(dropped, Dropped) and reason in dropped.reason
    pair.car.receive_payload(INVOICES[0].encode(), pair.now)
    [ascii_in_v2] = drain(pair.car)
    assert "ASCII (v1) invoice" in ascii_in_v2.reason


def test_invoices_before_any_acceptance_are_dropped() -> None:
    for v2 in (False, True):
        car = CarLink(v2=v2)
        car.receive_frame(m.OFFER_ID, m.encode_v1_offer(OFFER), 0.0)
        drain(car)
        car.receive_payload(INVOICES[0].encode(), 0.0)
        car.receive_payload(m.encode_v2_invoice(INVOICES[0], SESSION, 0, 0), 0.0)
        assert [e.reason for e in drain(car)] == ["invoice before any offer was accepted"] * 2


def test_tariff_change_applies_only_to_invoices_issued_after_the_car_accepts_it() -> None:
    pair = Pair(wall_v2=True, car_v2=True)
    pair.agree(OFFER)
    pair.wall.change_offer(CHEAPER, pair.now)
    pair.wall.send_invoice(INVOICES[0], 10 * NJ_PER_WH)
    pair.deliver()
    change, first = drain(pair.car)
    assert (first.bolt11, first.offer, first.offer_number) == (INVOICES[0], OFFER, 0)
    assert change == OfferReceived(CHEAPER, 2, SESSION, 1, mid_session=True)
    assert pair.wall.state is WallState.CHANGING

    # Issued before the wall hears the acceptance: still bound to the old terms.
    late_old = m.encode_v2_invoice(INVOICES[1], SESSION, 0, 20 * NJ_PER_WH)
    pair.car.accept(CHEAPER)
    pair.deliver()
    assert drain(pair.wall) == [CarAccepted(CHEAPER, 2, SESSION, 1, mid_session=True)]
    pair.car.receive_payload(late_old, pair.now)
    pair.wall.send_invoice(INVOICES[2], 30 * NJ_PER_WH)
    pair.deliver()
    pair.car.receive_payload(late_old, pair.now)
    late, new, stale = drain(pair.car)
    assert (late.offer, late.wall_energy_nj) == (OFFER, 20 * NJ_PER_WH)
    assert (new.bolt11, new.offer, new.offer_number) == (INVOICES[2], CHEAPER, 1)
    assert isinstance(stale, Dropped) and "has not accepted" in stale.reason


def test_rejected_tariff_change_stops_the_sale() -> None:
    pair = Pair(wall_v2=True, car_v2=True)
    pair.agree(CHEAPER)
    pair.wall.change_offer(OFFER, pair.now)
    pair.deliver()
    [change] = drain(pair.car)
    pair.car.reject(change.offer)
    pair.deliver()
    assert drain(pair.wall) == [TariffRejected(OFFER, SESSION, 1)]
    assert pair.wall.state is WallState.STOPPED and pair.wall.next_deadline() is None
    with pytest.raises(LinkStateError):
        pair.wall.send_invoice(INVOICES[0], 0)
    assert pair.car.accepted_offer == CHEAPER
    pair.wall.unplugged()
    pair.wall.plugged_in(OFFER, pair.now)
    assert pair.wall.state is WallState.OFFERING


def test_v1_sessions_have_no_tariff_change() -> None:
    pair = Pair(wall_v2=True, car_v2=False)
    pair.agree()
    with pytest.raises(LinkStateError, match="v1 has no mid-session"):
        pair.wall.change_offer(CHEAPER, pair.now)


def test_frames_of_the_other_version_are_dropped_inside_a_session() -> None:
    v1_session = Pair(wall_v2=False, car_v2=True)
    v1_session.agree()
    v1_session.car.receive_frame(m.V2_OFFER_ID, m.encode_v2_offer(1, SESSION, 2_000), 0.0)
    [dropped] = drain(v1_session.car)
    assert dropped.reason == "v2 offer frame in a v1 session"

    v2_session = Pair(wall_v2=True, car_v2=True)
    v2_session.agree()
    v2_session.car.receive_frame(m.OFFER_ID, m.encode_v1_offer(CHEAPER), 0.0)
    [dropped] = drain(v2_session.car)
    assert dropped.reason == "v1 offer in a v2 session"


def test_an_offer_number_cannot_be_reused_with_other_terms() -> None:
    pair = Pair(wall_v2=True, car_v2=True)
    pair.agree()
    pair.car.receive_frame(m.V2_OFFER_ID, m.encode_v2_offer(0, SESSION, 2_000), pair.now)
    pair.car.receive_frame(m.OFFER_ID, m.encode_v1_offer(CHEAPER), pair.now)
    [dropped] = drain(pair.car)
    assert "reused with other terms" in dropped.reason and pair.car.frames_to_send() == []


def test_unplugged_wall_forgets_the_session_and_sends_nothing_queued() -> None:
    pair = Pair(wall_v2=True, car_v2=True)
    pair.agree()
    pair.wall.send_invoice(INVOICES[0], 0)
    pair.wall.unplugged()
    assert pair.wall.payloads_to_send() == [] and pair.wall.frames_to_send() == []
    assert (pair.wall.state, pair.wall.session_id, pair.wall.accepted_offer) == (WallState.UNPLUGGED, None, None)
    with pytest.raises(LinkStateError):
        pair.wall.send_invoice(INVOICES[0], 0)
    pair.wall.receive_frame(m.ANSWER_ID, b"\x01", pair.now)
    assert [e.level for e in drain(pair.wall)] == ["debug"]


# --- a v1 car that restarted mid-session -----------------------------------------------------


def test_v1_wall_repeats_the_accepted_terms_for_a_restarted_car_which_takes_them_up_again() -> None:
    pair = Pair(wall_v2=True, car_v2=False)
    _, first = pair.agree()
    pair.car.unplugged()  # its daemon restarted with the cable in: the acceptance is gone
    pair.wall.send_invoice(INVOICES[0], 0)
    pair.deliver()
    [dropped] = drain(pair.car)
    assert "before any offer was accepted" in dropped.reason
    pair.wall.repeat_offer(pair.now)
    assert pair.wall.state is WallState.REPEATING
    # Only the frame a v1 car reads, once a second, until it answers.
    assert pair.wall.frames_to_send() == [(m.OFFER_ID, m.encode_v1_offer(first.offer))]
    pair.wall.tick(pair.now + 1)
    pair.deliver()
    [heard] = without_debug(drain(pair.car))
    assert heard.offer == first.offer and heard.version == 1
    assert pair.car.accept(heard.offer)
    pair.deliver()
    assert drain(pair.wall) == [CarAccepted(first.offer, 1, None, None, mid_session=True)]
    assert pair.wall.state is WallState.SELLING and pair.wall.next_deadline() is None
    pair.wall.send_invoice(INVOICES[1], 0)
    pair.deliver()
    [invoice] = without_debug(drain(pair.car))
    assert invoice.bolt11 == INVOICES[1] and invoice.offer == first.offer


def test_a_restarted_car_refusing_its_old_terms_stops_the_link() -> None:
    pair = Pair(wall_v2=False, car_v2=False)
    _, first = pair.agree()
    pair.car.unplugged()
    pair.wall.repeat_offer(pair.now)
    pair.deliver()
    [heard] = without_debug(drain(pair.car))
    assert pair.car.reject(heard.offer)
    pair.deliver()
    assert drain(pair.wall) == [CarRejected(first.offer, 1, None, None)]
    assert pair.wall.state is WallState.STOPPED
    with pytest.raises(LinkStateError):
        pair.wall.send_invoice(INVOICES[0], 0)


def test_the_repeat_stops_when_the_car_shows_it_still_holds_its_acceptance() -> None:
    pair = Pair(wall_v2=False, car_v2=False)
    pair.agree()
    pair.wall.repeat_offer(pair.now)
    pair.wall.frames_to_send()
    pair.wall.send_invoice(INVOICES[0], 0)  # selling goes on meanwhile
    assert pair.wall.payloads_to_send() == [INVOICES[0].encode()]
    pair.wall.stop_repeating()
    assert pair.wall.state is WallState.SELLING and pair.wall.next_deadline() is None
    pair.wall.tick(pair.now + 5)
    assert pair.wall.frames_to_send() == []


@pytest.mark.parametrize("wall_v2, car_v2", [(True, True), (False, False)])
def test_only_a_v1_sale_is_repeated(wall_v2: bool, car_v2: bool) -> None:
    pair = Pair(wall_v2, car_v2)
    with pytest.raises(LinkStateError):
        pair.wall.repeat_offer(pair.now)  # nothing accepted yet
    pair.agree()
    if car_v2:
        with pytest.raises(LinkStateError, match="only while selling to a v1 car"):
            pair.wall.repeat_offer(pair.now)
    else:
        pair.wall.repeat_offer(pair.now)
        with pytest.raises(LinkStateError):
            pair.wall.repeat_offer(pair.now)
