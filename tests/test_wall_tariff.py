from datetime import datetime, time, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wallunit.tariff import Period, Tariff, TariffError, parse_clock, periods_from_config

UTC = timezone.utc
MONDAY = datetime(2024, 6, 3, tzinfo=UTC)

DAY_NIGHT = [
    {"start": "07:00", "end": "22:00", "rate_sat_per_kwh": 150},
    {"start": "22:00", "end": "07:00", "rate_sat_per_kwh": 80},
]


def at(day: int, hh: int, mm: int = 0) -> datetime:
    return MONDAY + timedelta(days=day, hours=hh, minutes=mm)


def test_fixed_rate_never_changes():
    tariff = Tariff.fixed(100_000)
    assert tariff.rate_at(at(3, 17)) == 100_000
    assert tariff.next_change_after(at(3, 17)) is None


def test_day_and_night_rates_and_the_change_across_midnight():
    tariff = Tariff(periods_from_config(DAY_NIGHT), UTC)
    assert tariff.rate_at(at(0, 6, 59)) == 80_000
    assert tariff.rate_at(at(0, 7)) == 150_000
    assert tariff.rate_at(at(0, 21, 59)) == 150_000
    assert tariff.rate_at(at(0, 23, 30)) == 80_000
    assert tariff.next_change_after(at(0, 12)) == at(0, 22)
    assert tariff.next_change_after(at(0, 23)) == at(1, 7)
    assert tariff.next_change_after(at(6, 23)) == at(7, 7)  # Sunday night into Monday


def test_weekend_periods_by_day():
    entries = [
        {"start": "07:00", "end": "22:00", "rate_sat_per_kwh": 150, "days": ["mon", "tue", "wed", "thu", "fri"]},
        {"start": "22:00", "end": "07:00", "rate_sat_per_kwh": 80, "days": ["mon", "tue", "wed", "thu", "fri"]},
        {"start": "07:00", "end": "07:00", "rate_sat_per_kwh": 80, "days": ["Saturday", "sun"]},
    ]
    tariff = Tariff(periods_from_config(entries), UTC)
    assert tariff.rate_at(at(5, 12)) == 80_000
    assert tariff.rate_at(at(4, 12)) == 150_000
    # Friday 22:00 cheap all weekend until Monday 07:00: equal-rate neighbours are one stretch.
    assert tariff.next_change_after(at(4, 21)) == at(4, 22)
    assert tariff.next_change_after(at(4, 22)) == at(7, 7)


def test_local_time_zone_decides_the_period():
    berlin = ZoneInfo("Europe/Berlin")
    tariff = Tariff(periods_from_config(DAY_NIGHT), berlin)
    assert tariff.rate_at(datetime(2024, 6, 3, 5, 30, tzinfo=UTC)) == 150_000  # 07:30 in Berlin
    change = tariff.next_change_after(datetime(2024, 6, 3, 12, 0, tzinfo=UTC))
    assert change == datetime(2024, 6, 3, 22, 0, tzinfo=berlin)
    assert change.astimezone(UTC).hour == 20


def test_gap_is_refused_with_where_it_is():
    with pytest.raises(TariffError) as caught:
        Tariff(periods_from_config([{"start": "07:00", "end": "22:00", "rate_sat_per_kwh": 150}]))
    assert "no rate from Mon 00:00 to Mon 07:00" in caught.value.problems


def test_overlap_is_refused_with_both_periods_named():
    entries = DAY_NIGHT + [{"start": "12:00", "end": "13:00", "rate_sat_per_kwh": 10, "days": ["wed"]}]
    with pytest.raises(TariffError) as caught:
        Tariff(periods_from_config(entries))
    assert caught.value.problems == ["periods 1 and 3 overlap from Wed 12:00 to Wed 13:00"]


def test_order_of_periods_in_the_file_does_not_matter():
    assert Tariff(periods_from_config(DAY_NIGHT[::-1]), UTC).rate_at(at(2, 8)) == 150_000


def test_bad_entries_collect_every_problem():
    entries = [
        {"start": "7am", "end": "22:00", "rate_sat_per_kwh": 150},
        {"start": "22:00", "end": "07:00", "rate_sat_per_kwh": 0},
        {"start": "22:00", "rate_sat_per_kwh": 5, "colour": "red"},
        {"start": "01:00", "end": "02:00", "rate_sat_per_kwh": 5, "days": ["funday"]},
    ]
    with pytest.raises(TariffError) as caught:
        periods_from_config(entries)
    text = "\n".join(caught.value.problems)
    for expected in ("period 1: expected a time", "period 2: rate_sat_per_kwh", "period 3: unknown key(s) colour",
                     "period 3: missing end", "period 4: unknown day 'funday'"):
        assert expected in text


def test_clock_parsing():
    assert parse_clock("07:30") == 450
    assert parse_clock(time(23, 15)) == 23 * 60 + 15
    assert parse_clock("24:00") == 0
    for bad in ("25:00", "7:5", "07:60", 7, time(1, 2, 3)):
        with pytest.raises(ValueError):
            parse_clock(bad)


@st.composite
def schedules(draw):
    cuts = sorted(draw(st.sets(st.integers(0, 24 * 60 - 1), min_size=1, max_size=6)))
    rates = draw(st.lists(st.integers(1, 500_000), min_size=len(cuts), max_size=len(cuts)))
    periods = [Period(cuts[i], cuts[(i + 1) % len(cuts)], rates[i]) for i in range(len(cuts))]
    return Tariff(periods, UTC)


@settings(max_examples=200, deadline=None)
@given(schedules(), st.integers(0, 7 * 24 * 60 - 1))
def test_rate_holds_until_the_next_change_and_differs_after(tariff, minute):
    moment = MONDAY + timedelta(minutes=minute)
    change = tariff.next_change_after(moment)
    if change is None:
        assert tariff.is_fixed
        return
    assert change > moment
    assert tariff.rate_at(change - timedelta(minutes=1)) == tariff.rate_at(moment)
    assert tariff.rate_at(change) != tariff.rate_at(moment)
