"""Either end restarting mid-session, cable still in: the car resumes its acceptance, a
restarted v2 wall's new session is judged and rebound to, and nothing lets invoices of a
session the car never accepted through."""

from __future__ import annotations

import pytest

from distributedcharge.swcan import messages as m
from distributedcharge.swcan.errors import LinkStateError
from distributedcharge.swcan.link import CarAccepted, CarLink, Dropped, InvoiceReceived, OfferReceived, WallLink
from test_swcan_link import CHEAPER, INVOICES, OFFER, SESSION, Pair, drain, without_debug

RESTARTED_SESSION = 0x1234


def restarted_car(pair: Pair, version: int, session_id: int | None, offer_number: int | None,
                  offer=OFFER) -> CarLink:
    """A fresh car link given back the acceptance its journal recorded."""
    car = CarLink(v2=True)
    car.resume(offer, version, session_id, offer_number)
    pair.car = car
    return car


@pytest.mark.parametrize("wall_v2", [False, True])
def test_a_restarted_car_takes_invoices_under_the_acceptance_it_resumed(wall_v2: bool) -> None:
    pair = Pair(wall_v2=wall_v2, car_v2=True)
    _, accepted = pair.agree()
    car = restarted_car(pair, accepted.version, accepted.session_id, accepted.offer_number, accepted.offer)
    assert car.frames_to_send() == []  # the wall heard the answer long ago
    pair.wall.send_invoice(INVOICES[0], 7_200_000_000)
    pair.deliver()
    [invoice] = drain(car)
    assert isinstance(invoice, InvoiceReceived)
    assert (invoice.bolt11, invoice.offer, invoice.session_id) == (INVOICES[0], accepted.offer, accepted.session_id)


def test_a_resumed_car_answers_again_when_the_wall_repeats_the_offer_it_accepted() -> None:
    pair = Pair(wall_v2=True, car_v2=True)
    heard, accepted = pair.agree()
    car = restarted_car(pair, m.PROTOCOL_V2, SESSION, 0)
    car.receive_frame(m.V2_OFFER_ID, m.encode_v2_offer(0, SESSION, OFFER.payment_msat), pair.now)
    car.receive_frame(m.OFFER_ID, m.encode_v1_offer(OFFER), pair.now)
    assert without_debug(drain(car)) == []
    assert car.frames_to_send() == [(m.ANSWER_ID, m.encode_v2_answer(True, 0, SESSION))]


def test_a_resumed_v2_session_still_drops_invoices_of_other_sessions_and_offers() -> None:
    pair = Pair(wall_v2=True, car_v2=True)
    pair.agree()
    car = restarted_car(pair, m.PROTOCOL_V2, SESSION, 0)
    car.receive_payload(m.encode_v2_invoice(INVOICES[0], SESSION ^ 1, 0, 0), pair.now)
    car.receive_payload(m.encode_v2_invoice(INVOICES[1], SESSION, 1, 0), pair.now)
    car.receive_payload(INVOICES[2].encode(), pair.now)
    assert [type(e) for e in drain(car)] == [Dropped] * 3


@pytest.mark.parametrize("version, session_id, offer_number, error", [
    (m.PROTOCOL_V2, None, 0, ValueError),
    (m.PROTOCOL_V2, 70_000, 0, ValueError),
    (m.PROTOCOL_V2, SESSION, 256, ValueError),
    (m.PROTOCOL_V1, SESSION, 0, ValueError),
    (3, None, None, ValueError),
])
def test_resume_refuses_a_binding_the_wire_cannot_carry(version, session_id, offer_number, error) -> None:
    car = CarLink(v2=True)
    with pytest.raises(error):
        car.resume(OFFER, version, session_id, offer_number)
    car.receive_payload(INVOICES[0].encode(), 0.0)
    assert [e.reason for e in drain(car)] == ["invoice before any offer was accepted"]


def test_resume_is_only_for_a_link_that_has_heard_nothing() -> None:
    pair = Pair(wall_v2=True, car_v2=True)
    pair.agree()
    with pytest.raises(LinkStateError):
        pair.car.resume(OFFER, m.PROTOCOL_V2, SESSION, 0)
    with pytest.raises(LinkStateError):
        CarLink(v2=False).resume(OFFER, m.PROTOCOL_V2, SESSION, 0)


def restart_wall(pair: Pair, offer=OFFER) -> OfferReceived:
    """The wall daemon restarts: a new link, a new v2 session id, the cable never left."""
    pair.wall = WallLink(v2=True, session_ids=lambda: RESTARTED_SESSION)
    pair.wall.plugged_in(offer, pair.now)
    pair.deliver()
    [heard] = without_debug(drain(pair.car))
    return heard


@pytest.mark.parametrize("offer", [OFFER, CHEAPER])
def test_a_restarted_wall_is_judged_afresh_and_the_car_rebinds_to_its_session(offer) -> None:
    pair = Pair(wall_v2=True, car_v2=True)
    pair.agree()
    heard = restart_wall(pair, offer)
    assert isinstance(heard, OfferReceived)
    assert (heard.offer, heard.session_id, heard.offer_number, heard.mid_session) == (
        offer, RESTARTED_SESSION, 0, True)
    assert pair.car.accept(offer)
    pair.deliver()
    [accepted] = drain(pair.wall)
    assert isinstance(accepted, CarAccepted) and accepted.session_id == RESTARTED_SESSION
    assert pair.car.session_id == RESTARTED_SESSION

    pair.wall.send_invoice(INVOICES[0], 0)
    pair.deliver()
    [invoice] = drain(pair.car)
    assert isinstance(invoice, InvoiceReceived) and (invoice.offer, invoice.session_id) == (offer, RESTARTED_SESSION)
    # What the dead wall issued is canceled on its restart: no longer accepted.
    pair.car.receive_payload(m.encode_v2_invoice(INVOICES[1], SESSION, 0, 0), pair.now)
    [dropped] = drain(pair.car)
    assert isinstance(dropped, Dropped) and f"session {SESSION}" in dropped.reason


def test_a_restarted_wall_the_car_rejects_gets_no_invoice_through() -> None:
    pair = Pair(wall_v2=True, car_v2=True)
    pair.agree()
    heard = restart_wall(pair)
    assert pair.car.reject(heard.offer)
    pair.deliver()
    drain(pair.wall)
    pair.car.receive_payload(m.encode_v2_invoice(INVOICES[0], RESTARTED_SESSION, 0, 0), pair.now)
    [dropped] = drain(pair.car)
    assert isinstance(dropped, Dropped) and f"session {RESTARTED_SESSION}" in dropped.reason
    assert pair.car.session_id == SESSION
