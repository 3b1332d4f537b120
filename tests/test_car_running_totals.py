"""The car's running totals (issue #8) always equal what summing every payment would give.

The buyer policy and the journal keep what the session has paid and spent as running
totals so that judging an invoice costs the same in the eighth hour as in the first. These
tests check the totals against a plain recomputation after arbitrary histories: a drift
would let the car overpay, or refuse to pay, without any error.
"""

from __future__ import annotations

import hashlib
from fractions import Fraction

from hypothesis import given, settings
from hypothesis import strategies as st

from car.journal import DAY_S, FAILED, IN_FLIGHT, INTENT, MIGRATIONS, SUCCEEDED, DuplicatePayment, Journal
from car.policy import FAILED as POLICY_FAILED
from car.policy import PENDING, BuyerSession, SessionPayment, Terms
from car.policy import SUCCEEDED as POLICY_SUCCEEDED
from distributedcharge.journal import open_journal

NOW = 1_750_000_000.0
HASHES = [hashlib.sha256(bytes([n])).digest() for n in range(6)]

# Times around NOW, a day later, and around 1970 (where flooring to the hour differs
# from truncating), on and off hour boundaries.
times = st.sampled_from([NOW, NOW + DAY_S, 0.0]).flatmap(
    lambda base: st.one_of(
        st.integers(-3 * 3600, 3 * 3600).map(lambda s: base + s * 600),
        st.floats(base - 2 * DAY_S, base + 2 * DAY_S, allow_nan=False),
    )
)

journal_ops = st.lists(
    st.one_of(
        st.tuples(st.just("intent"), st.integers(0, 5), st.integers(1, 10_000), st.integers(0, 3_000), times,
                  st.sampled_from([0, 1, 2, None])),
        st.tuples(st.just("in_flight"), st.integers(0, 5), times),
        st.tuples(st.just("succeeded"), st.integers(0, 5), st.integers(0, 100), times),
        st.tuples(st.just("failed"), st.integers(0, 5), times),
    ),
    max_size=40,
)


def _apply(journal: Journal, sessions: list[int], op: tuple) -> None:
    kind, index, *rest = op
    payment_hash = HASHES[index]
    if kind == "intent":
        amount, fee_limit, at, session = rest
        try:
            journal.record_intent(payment_hash, "lnbc", amount, fee_limit, at,
                                  None if session is None else sessions[session])
        except DuplicatePayment:
            pass
    elif kind == "in_flight":
        journal.mark_in_flight(payment_hash, rest[0])
    elif kind == "succeeded":
        journal.mark_succeeded(payment_hash, rest[0], None, rest[1])
    else:
        journal.mark_failed(payment_hash, "no route", rest[0])


def _cost(row) -> int:
    if row["state"] == SUCCEEDED:
        return row["amount_msat"] + (row["fee_msat"] or 0)
    if row["state"] in (INTENT, IN_FLIGHT):
        return row["amount_msat"] + row["fee_limit_msat"]
    assert row["state"] == FAILED
    return 0


def _check_against_rows(journal: Journal, sessions: list[int], nows: list[float]) -> None:
    rows = journal.conn.execute(
        "SELECT session_id, state, amount_msat, fee_msat, fee_limit_msat, attempted_at FROM payments").fetchall()
    for session in sessions:
        assert journal.spent_session_msat(session) == sum(_cost(r) for r in rows if r["session_id"] == session)
    for now in nows:
        assert journal.spent_today_msat(now) == sum(_cost(r) for r in rows if r["attempted_at"] > now - DAY_S)


@settings(max_examples=200, deadline=None)
@given(journal_ops, st.lists(times, min_size=1, max_size=5))
def test_journal_spending_totals_equal_the_sum_over_its_payment_rows(ops, nows):
    with Journal(":memory:") as journal:
        sessions = [journal.start_session(NOW + n) for n in range(3)]
        for op in ops:
            _apply(journal, sessions, op)
        _check_against_rows(journal, sessions, nows + [op[-1] for op in ops if op[0] != "intent"])


def test_a_journal_from_before_the_running_totals_gets_them_from_its_rows(tmp_path):
    path = tmp_path / "car-journal.sqlite3"
    totals_step = next(i for i, step in enumerate(MIGRATIONS) if "spent_by_hour" in step)
    old = open_journal(path, MIGRATIONS[:totals_step])
    old.execute("INSERT INTO sessions (started_at) VALUES (?)", (NOW,))
    old.execute("INSERT INTO sessions (started_at) VALUES (?)", (NOW,))
    for n, (session, state, amount, fee, at) in enumerate([
        (1, SUCCEEDED, 2_500, 30, NOW - DAY_S - 10),
        (1, SUCCEEDED, 2_500, 30, NOW - 10),
        (1, FAILED, 2_500, None, NOW - 5),
        (2, IN_FLIGHT, 5_000, None, NOW),
        (None, INTENT, 1_000, None, NOW),
    ]):
        old.execute(
            "INSERT INTO payments (payment_hash, session_id, bolt11, amount_msat, fee_limit_msat, state, fee_msat,"
            " created_at, attempted_at, updated_at) VALUES (?, ?, 'lnbc', ?, 2000, ?, ?, ?, ?, ?)",
            (HASHES[n].hex(), session, amount, state, fee, at, at, at))
    old.close()
    with Journal(path) as journal:
        assert journal.spent_session_msat(1) == 2 * 2_530
        assert journal.spent_session_msat(2) == 7_000
        assert journal.spent_today_msat(NOW) == 2_530 + 7_000 + 3_000
        journal.mark_succeeded(HASHES[3], 40, None, NOW + 1)
        assert journal.spent_session_msat(2) == 5_040
        _check_against_rows(journal, [1, 2], [NOW, NOW + DAY_S - 5])


TERMS = Terms(100_000, 2_500)

session_records = st.lists(
    st.tuples(st.integers(0, 5), st.sampled_from([PENDING, POLICY_SUCCEEDED, POLICY_FAILED]),
              st.integers(1, 10_000), st.integers(0, 100), st.integers(1, 500_000)),
    max_size=40,
)


@settings(max_examples=200, deadline=None)
@given(session_records)
def test_session_totals_equal_the_sum_over_its_payments(records):
    session = BuyerSession(started_at=NOW)
    for index, state, amount, fee, rate in records:
        session.record(SessionPayment(HASHES[index], amount, 2_000, Fraction(amount * 1000, rate), TERMS,
                                      state=state, fee_msat=fee if state == POLICY_SUCCEEDED else 0))
    latest = list(session.payments.values())
    settled = [p for p in latest if p.state == POLICY_SUCCEEDED]
    unfailed = [p for p in latest if p.state != POLICY_FAILED]
    assert session.paid_msat == sum(p.amount_msat for p in settled)
    assert session.fees_msat == sum(p.fee_msat for p in settled)
    assert session.energy_paid_for_wh == sum((p.energy_wh for p in unfailed), Fraction(0))
    assert session.any_payment_made == bool(unfailed)
