import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from distributedcharge.units import NJ_PER_KWH
from wallunit.wallmeter import MeterError, WallMeter

SECOND = 1_000_000


def meter(**kw) -> WallMeter:
    return WallMeter(nominal_voltage_v=kw.pop("nominal", 230), max_gap_us=kw.pop("gap", 5 * SECOND), **kw)


def test_one_hour_at_32_a_and_230_v_is_exactly_7_36_kwh():
    m = meter()
    m.voltage(0, 230)
    for second in range(3601):
        m.current(second * SECOND, 3200)
    assert m.total_nj == 736 * NJ_PER_KWH // 100


def test_each_current_is_held_until_the_next_reading():
    m = meter()
    m.voltage(0, 240)
    m.current(0, 1000)
    assert m.current(2 * SECOND, 0) == 240 * 10 * 2 * 10**9  # 10 A for 2 s at 240 V = 4800 J
    assert m.current(3 * SECOND, 1600) == 0


def test_nominal_voltage_until_the_twc_reports_one_and_zero_means_not_reported():
    m = meter(nominal=230)
    m.current(0, 1000)
    assert m.voltage(SECOND, 0) == 2300 * 10**9
    m.voltage(SECOND, 0)
    assert m.current(2 * SECOND, 1000) == 2300 * 10**9
    m.voltage(2 * SECOND, 245)
    assert m.current(3 * SECOND, 1000) == 2450 * 10**9


def test_gap_adds_nothing():
    m = meter(gap=5 * SECOND)
    m.current(0, 3200)
    assert m.current(6 * SECOND, 3200) == 0
    assert m.current(7 * SECOND, 3200) == 230 * 32 * 10**9


def test_three_phases_triple_the_energy():
    m = meter(phases=3)
    m.current(0, 1600)
    assert m.current(3600 * SECOND // 3600, 0) == 3 * 230 * 16 * 10**9


@pytest.mark.parametrize("bad", [-1, 10_001, 3.5, True])
def test_implausible_current_is_refused_and_the_meter_carries_on(bad):
    m = meter()
    m.current(0, 1000)
    with pytest.raises(MeterError):
        m.current(SECOND, bad)
    assert m.current(SECOND, 1000) == 230 * 10 * 10**9


def test_time_going_backwards_is_refused():
    m = meter()
    m.current(10 * SECOND, 1000)
    with pytest.raises(MeterError):
        m.current(9 * SECOND, 1000)
    with pytest.raises(MeterError):
        m.voltage(SECOND, 700)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(2, 4 * SECOND), st.integers(0, 8000)), min_size=1, max_size=60),
       st.data())
def test_extra_readings_of_an_unchanged_current_do_not_change_the_total(readings, data):
    coarse, fine = meter(), meter()
    for m in (coarse, fine):
        m.voltage(0, 231)
    now, previous = 0, 0
    for gap, current in readings:
        between = data.draw(st.integers(1, gap - 1))
        fine.current(now + between, previous)  # the same current, read once more mid-interval
        now += gap
        coarse.current(now, current)
        fine.current(now, current)
        previous = current
    assert coarse.total_nj == fine.total_nj
    assert coarse.total_nj % 10 == 0


def test_twc_master_readings_carry_current_and_the_last_polled_voltage():
    m = meter(nominal=230)
    m.reading(0, 1600, None)
    assert m.reading(SECOND, 1600, 240) == 230 * 16 * 10**9  # the first second ran at nominal
    assert m.reading(2 * SECOND, 1600, 240) == 240 * 16 * 10**9
    with pytest.raises(MeterError):
        m.reading(3 * SECOND, 1600, 9999)
    assert m.reading(3 * SECOND, 0, None) == 240 * 16 * 10**9  # the refused reading changed nothing
