"""Random frame and payload streams into both SWCAN roles: nothing raises, the state stays coherent."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

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
from test_swcan_packing import make_invoice

SESSION = 0xBEEF
INVOICE = make_invoice(seed=7)
WALL_EVENTS = (CarAccepted, CarRejected, TariffRejected, Dropped)
CAR_EVENTS = (OfferReceived, InvoiceReceived, Dropped)

offers = st.builds(Offer, st.integers(1, 4_294_966), st.integers(1, 10**7))
can_ids = st.one_of(st.sampled_from([m.ISOTP_CAR_TX_ID, m.ISOTP_WALL_TX_ID, m.OFFER_ID, m.ANSWER_ID,
                                     m.V2_OFFER_ID]), st.integers(0, 0x7FF))
well_formed_frames = st.one_of(
    offers.map(m.encode_v1_offer),
    st.builds(m.encode_v2_offer, st.integers(0, 3), st.sampled_from([SESSION, 1]), st.integers(1, 10**7)),
    st.builds(m.encode_v1_answer, st.booleans()),
    st.builds(m.encode_v2_answer, st.booleans(), st.integers(0, 3), st.sampled_from([SESSION, 1])),
)
frame_data = st.one_of(st.binary(max_size=8), st.binary(min_size=9, max_size=64), well_formed_frames)
well_formed_payloads = st.one_of(
    st.just(INVOICE.encode()),
    st.builds(m.encode_v2_invoice, st.just(INVOICE), st.sampled_from([SESSION, 1]), st.integers(0, 3),
              st.integers(0, 10**16)),
)


@st.composite
def damaged(draw: st.DrawFn, payloads: st.SearchStrategy[bytes]) -> bytes:
    payload = draw(payloads)
    cut = draw(st.integers(0, len(payload)))
    flip = draw(st.integers(0, 255))
    return payload[:cut] + bytes([payload[cut] ^ flip]) + payload[cut + 1:] if cut < len(payload) else payload


payload_data = st.one_of(st.binary(max_size=300), well_formed_payloads, damaged(well_formed_payloads),
                         well_formed_payloads.map(lambda p: p[: len(p) // 2]),
                         st.binary(min_size=4096, max_size=4200))
deliver = st.just(("deliver",))
# The next sensible protocol step, so random streams also reach selling and tariff changes.
protocol_step = st.tuples(st.just("step"), st.integers(0, 9), offers)
operations = st.lists(st.one_of(
    deliver, deliver, protocol_step, protocol_step, protocol_step,
    st.tuples(st.just("frame"), can_ids, frame_data),
    st.tuples(st.just("payload"), payload_data),
    st.tuples(st.just("wait"), st.floats(0, 2)),
    st.tuples(st.just("wall"), st.sampled_from(["plug", "plug", "offer", "change", "invoice", "invoice"]), offers),
    st.tuples(st.just("car"), st.sampled_from(["accept", "accept", "accept", "reject"]), offers),
    st.just(("unplug",)),
), min_size=20, max_size=60)


def check_wall(wall: WallLink, frames: list[tuple[int, bytes]], payloads: list[bytes]) -> None:
    for index, (can_id, data) in enumerate(frames):
        assert can_id in (m.OFFER_ID, m.V2_OFFER_ID)
        if can_id == m.OFFER_ID:
            m.decode_v1_offer(data)
        else:
            assert wall.v2 and frames[index + 1][0] == m.OFFER_ID
            m.decode_v2_offer(data)
    for payload in payloads:
        if wall.version == 2:
            m.decode_v2_invoice(payload)
        else:
            m.decode_v1_invoice(payload)
    while (event := wall.next_event()) is not None:
        assert isinstance(event, WALL_EVENTS)
        if isinstance(event, Dropped):
            assert event.reason and event.level in ("debug", "info", "warning")
    selling = wall.state in (WallState.SELLING, WallState.CHANGING, WallState.STOPPED)
    assert selling == (wall.accepted_offer is not None) == (wall.version is not None)
    awaiting = wall.state in (WallState.OFFERING, WallState.CHANGING)
    assert awaiting == (wall.next_deadline() is not None) == (wall.proposed_offer is not None)
    assert (wall.session_id is not None) == (wall.v2 and wall.state is not WallState.UNPLUGGED)


def check_car(car: CarLink, frames: list[tuple[int, bytes]], accepted: set[Offer]) -> None:
    for can_id, data in frames:
        assert can_id == m.ANSWER_ID
        answer = m.decode_answer(data, v2=True)
        assert car.v2 or answer.version == 1
    while (event := car.next_event()) is not None:
        assert isinstance(event, CAR_EVENTS)
        if isinstance(event, InvoiceReceived):
            assert event.offer in accepted and event.version == car.version
        if isinstance(event, OfferReceived):
            assert car.v2 or event.version == 1
    assert (car.version is None) == (car.accepted_offer is None)


def run_wall_local(wall: WallLink, action: str, offer: Offer, now: float) -> None:
    before = (wall.state, wall.accepted_offer, wall.proposed_offer)
    try:
        if action == "plug":
            wall.plugged_in(offer, now)
        elif action == "offer":
            wall.offer(offer, now)
        elif action == "change":
            wall.change_offer(offer, now)
        elif action == "invoice":
            wall.send_invoice(INVOICE, int(now * 10**12))
    except LinkStateError:
        assert (wall.state, wall.accepted_offer, wall.proposed_offer) == before


def run_car_local(car: CarLink, action: str, offer: Offer, accepted: set[Offer]) -> None:
    pending = car.pending
    # Mostly decide on what is pending; sometimes on other terms, which must be refused.
    target = pending.offer if pending is not None and offer.payment_msat % 4 else offer
    decided = car.accept(target) if action == "accept" else car.reject(target)
    assert decided == (pending is not None and pending.offer == target)
    if decided and action == "accept":
        accepted.add(target)


def take_protocol_step(wall: WallLink, car: CarLink, dice: int, offer: Offer, now: float,
                       accepted: set[Offer]) -> None:
    if wall.state is WallState.UNPLUGGED:
        run_wall_local(wall, "plug", offer, now)
    elif car.pending is not None:
        run_car_local(car, "reject" if dice == 0 else "accept", car.pending.offer, accepted)
    elif wall.state in (WallState.SELLING, WallState.CHANGING):
        run_wall_local(wall, "change" if dice < 2 else "invoice", offer, now)
    elif wall.state is WallState.REJECTED:
        run_wall_local(wall, "offer", offer, now)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.booleans(), st.booleans(), operations)
def test_random_streams_into_both_roles_never_raise_and_keep_state_coherent(wall_v2, car_v2, ops) -> None:
    wall = WallLink(v2=wall_v2, session_ids=lambda: SESSION)
    car = CarLink(v2=car_v2)
    accepted: set[Offer] = set()
    # What each side sent and the other has not yet received: "deliver" hands it over.
    from_wall: list[tuple[int, bytes]] = []
    from_car: list[tuple[int, bytes]] = []
    invoices: list[bytes] = []
    now = 0.0
    for op in ops:
        if op[0] == "frame":
            wall.receive_frame(op[1], op[2], now)
            car.receive_frame(op[1], op[2], now)
        elif op[0] == "payload":
            wall.receive_payload(op[1], now)
            car.receive_payload(op[1], now)
        elif op[0] == "wait":
            now += op[1]
            wall.tick(now)
        elif op[0] == "deliver":
            for can_id, data in from_wall:
                car.receive_frame(can_id, data, now)
            for can_id, data in from_car:
                wall.receive_frame(can_id, data, now)
            for payload in invoices:
                car.receive_payload(payload, now)
            from_wall, from_car, invoices = [], [], []
        elif op[0] == "step":
            take_protocol_step(wall, car, op[1], op[2], now, accepted)
        elif op[0] == "wall":
            run_wall_local(wall, op[1], op[2], now)
        elif op[0] == "car":
            run_car_local(car, op[1], op[2], accepted)
        else:
            wall.unplugged()
            car.unplugged()
            accepted.clear()
            from_wall, from_car, invoices = [], [], []
        wall_frames, wall_payloads, car_frames = wall.frames_to_send(), wall.payloads_to_send(), car.frames_to_send()
        check_wall(wall, wall_frames, wall_payloads)
        check_car(car, car_frames, accepted)
        from_wall += wall_frames
        from_car += car_frames
        invoices += wall_payloads


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.booleans(), st.booleans(), operations)
def test_after_any_noise_a_fresh_session_still_completes(wall_v2, car_v2, ops) -> None:
    wall = WallLink(v2=wall_v2, session_ids=lambda: SESSION)
    car = CarLink(v2=car_v2)
    now = 0.0
    for op in ops:
        if op[0] == "frame":
            car.receive_frame(op[1], op[2], now)
            wall.receive_frame(op[1], op[2], now)
        elif op[0] == "payload":
            car.receive_payload(op[1], now)
        elif op[0] == "wait":
            now += op[1]
    wall.unplugged()
    car.unplugged()
    while car.next_event() is not None or wall.next_event() is not None:
        pass

    offer = Offer(100_000, 2_500)
    wall.plugged_in(offer, now)
    for can_id, data in wall.frames_to_send():
        car.receive_frame(can_id, data, now)
    [heard] = [e for e in iter(car.next_event, None) if not isinstance(e, Dropped)]
    assert isinstance(heard, OfferReceived) and car.accept(heard.offer)
    for can_id, data in car.frames_to_send():
        wall.receive_frame(can_id, data, now)
    agreed = wall.next_event()
    assert isinstance(agreed, CarAccepted) and agreed.version == (2 if wall_v2 and car_v2 else 1)
    wall.send_invoice(INVOICE, 0)
    for payload in wall.payloads_to_send():
        car.receive_payload(payload, now)
    received = car.next_event()
    assert isinstance(received, InvoiceReceived) and received.bolt11 == INVOICE
