"""The seller's price: one fixed rate, or a time-of-use schedule over the local week.

A schedule is a list of periods, each a local time-of-day span with a rate and
optionally the weekdays it applies to. A span whose end is not after its start runs
past midnight into the next day (``22:00``-``06:00``); equal start and end means the
whole day. Laid out on the 7 x 24 h week, the periods must cover every minute exactly
once, so a configuration mistake is refused at start instead of leaving an hour with
no price or two prices. Rates are integer msat per kWh.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from datetime import datetime, time, timedelta, tzinfo
from typing import Any, Iterable, Sequence

MINUTES_PER_DAY = 24 * 60
MINUTES_PER_WEEK = 7 * MINUTES_PER_DAY
DAY_NAMES = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
ALL_DAYS = frozenset(range(7))


class TariffError(ValueError):
    def __init__(self, problems: list[str]):
        super().__init__("; ".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class Period:
    start_minute: int
    end_minute: int
    rate_msat_per_kwh: int
    days: frozenset[int] = ALL_DAYS

    @property
    def length(self) -> int:
        span = (self.end_minute - self.start_minute) % MINUTES_PER_DAY
        return span or MINUTES_PER_DAY


@dataclass(frozen=True)
class _Span:
    start: int  # minute of the week, Monday 00:00 = 0
    end: int  # exclusive; may exceed MINUTES_PER_WEEK when the span wraps past Sunday midnight
    rate: int
    source: int  # index of the period in the configuration


def _clock(minute: int) -> str:
    return f"{minute // 60:02d}:{minute % 60:02d}"


def _week_clock(minute: int) -> str:
    minute %= MINUTES_PER_WEEK
    return f"{DAY_NAMES[minute // MINUTES_PER_DAY].capitalize()} {_clock(minute % MINUTES_PER_DAY)}"


class Tariff:
    """Answers what a kWh costs at a given moment and when that next changes."""

    def __init__(self, periods: Sequence[Period], timezone: tzinfo | None = None):
        if not periods:
            raise TariffError(["a tariff needs at least one period"])
        self.periods = tuple(periods)
        self.timezone = timezone
        self._spans = _tile_week(self.periods)
        self._starts = [span.start for span in self._spans]

    @classmethod
    def fixed(cls, rate_msat_per_kwh: int, timezone: tzinfo | None = None) -> Tariff:
        return cls([Period(0, 0, rate_msat_per_kwh)], timezone)

    @property
    def is_fixed(self) -> bool:
        return len({span.rate for span in self._spans}) == 1

    def _local(self, moment: datetime) -> datetime:
        if moment.tzinfo is None:
            return moment
        return moment.astimezone(self.timezone) if self.timezone else moment.astimezone()

    def _span_at(self, minute_of_week: int) -> int:
        index = bisect.bisect_right(self._starts, minute_of_week) - 1
        # Before the first start the last span (which wraps past Sunday midnight) applies.
        return index if index >= 0 else len(self._spans) - 1

    def rate_at(self, moment: datetime) -> int:
        local = self._local(moment)
        return self._spans[self._span_at(_minute_of_week(local))].rate

    def next_change_after(self, moment: datetime) -> datetime | None:
        """First moment after ``moment`` at which the rate differs, in local wall-clock time."""
        if self.is_fixed:
            return None
        local = self._local(moment)
        minute = _minute_of_week(local)
        index = self._span_at(minute)
        rate = self._spans[index].rate
        elapsed = 0
        cursor = minute
        while True:
            span = self._spans[index]
            end = span.end if span.end > cursor else span.end + MINUTES_PER_WEEK
            elapsed += end - cursor
            cursor = end % MINUTES_PER_WEEK
            index = (index + 1) % len(self._spans)
            if self._spans[index].rate != rate:
                break
        naive = local.replace(tzinfo=None, second=0, microsecond=0) + timedelta(minutes=elapsed)
        return naive.replace(tzinfo=local.tzinfo) if local.tzinfo else naive


def _minute_of_week(local: datetime) -> int:
    return local.weekday() * MINUTES_PER_DAY + local.hour * 60 + local.minute


def _tile_week(periods: Sequence[Period]) -> list[_Span]:
    problems: list[str] = []
    spans: list[_Span] = []
    for number, period in enumerate(periods, start=1):
        if not isinstance(period.rate_msat_per_kwh, int) or period.rate_msat_per_kwh <= 0:
            problems.append(f"period {number}: rate must be a positive whole number of msat/kWh")
        if not period.days:
            problems.append(f"period {number}: applies to no day")
        for day in sorted(period.days):
            start = day * MINUTES_PER_DAY + period.start_minute
            spans.append(_Span(start, start + period.length, period.rate_msat_per_kwh, number))
    if problems:
        raise TariffError(problems)
    # A span that runs past Sunday midnight is split so every span starts inside the week.
    pieces: list[_Span] = []
    for span in spans:
        if span.end > MINUTES_PER_WEEK:
            pieces.append(_Span(span.start, MINUTES_PER_WEEK, span.rate, span.source))
            pieces.append(_Span(0, span.end - MINUTES_PER_WEEK, span.rate, span.source))
        else:
            pieces.append(span)
    pieces.sort(key=lambda s: (s.start, s.end))
    cursor, cursor_source = 0, 0
    for span in pieces:
        if span.start > cursor:
            problems.append(f"no rate from {_week_clock(cursor)} to {_week_clock(span.start)}")
        elif span.start < cursor:
            first, second = sorted((cursor_source, span.source))
            problems.append(
                f"periods {first} and {second} overlap from {_week_clock(span.start)} to "
                f"{_week_clock(min(cursor, span.end))}"
            )
        if span.end > cursor:
            cursor, cursor_source = span.end, span.source
    if cursor < MINUTES_PER_WEEK:
        problems.append(f"no rate from {_week_clock(cursor)} to {_week_clock(MINUTES_PER_WEEK)}")
    if problems:
        raise TariffError(sorted(set(problems), key=problems.index))
    merged: list[_Span] = []
    for span in pieces:
        if merged and merged[-1].rate == span.rate and merged[-1].end == span.start:
            merged[-1] = _Span(merged[-1].start, span.end, span.rate, merged[-1].source)
        else:
            merged.append(span)
    return merged


def parse_clock(value: Any) -> int:
    """Minutes after midnight from ``"HH:MM"`` or a TOML local time; ``"24:00"`` is midnight."""
    if isinstance(value, time):
        if value.second or value.microsecond:
            raise ValueError(f"times are whole minutes, got {value.isoformat()}")
        return value.hour * 60 + value.minute
    if not isinstance(value, str):
        raise ValueError(f"expected a time like \"07:30\", got {value!r}")
    hours, sep, minutes = value.strip().partition(":")
    if not sep or not hours.isdigit() or not minutes.isdigit() or len(minutes) != 2:
        raise ValueError(f"expected a time like \"07:30\", got {value!r}")
    h, m = int(hours), int(minutes)
    if (h, m) == (24, 0):
        return 0
    if h > 23 or m > 59:
        raise ValueError(f"not a time of day: {value!r}")
    return h * 60 + m


def parse_days(value: Any) -> frozenset[int]:
    if not isinstance(value, list) or not value:
        raise ValueError(f"days must be a non-empty list like [\"mon\", \"tue\"], got {value!r}")
    days = set()
    for name in value:
        key = name.strip().lower()[:3] if isinstance(name, str) else None
        if key not in DAY_NAMES:
            raise ValueError(f"unknown day {name!r} (use {', '.join(DAY_NAMES)})")
        days.add(DAY_NAMES.index(key))
    return frozenset(days)


PERIOD_KEYS = {"start", "end", "rate_sat_per_kwh", "days"}


def periods_from_config(entries: Iterable[Any]) -> list[Period]:
    """``[[seller.tariff]]`` tables -> periods; every problem is collected into one TariffError."""
    problems: list[str] = []
    periods: list[Period] = []
    for number, entry in enumerate(entries, start=1):
        if not isinstance(entry, dict):
            problems.append(f"period {number}: must be a table with start, end, rate_sat_per_kwh")
            continue
        unknown = sorted(set(entry) - PERIOD_KEYS)
        if unknown:
            problems.append(f"period {number}: unknown key(s) {', '.join(unknown)}")
        missing = sorted({"start", "end", "rate_sat_per_kwh"} - set(entry))
        if missing:
            problems.append(f"period {number}: missing {', '.join(missing)}")
            continue
        rate = entry["rate_sat_per_kwh"]
        if isinstance(rate, bool) or not isinstance(rate, int) or not 1 <= rate <= MAX_RATE_SAT_PER_KWH:
            problems.append(
                f"period {number}: rate_sat_per_kwh must be a whole number from 1 to "
                f"{MAX_RATE_SAT_PER_KWH}, got {rate!r}"
            )
            continue
        try:
            start = parse_clock(entry["start"])
            end = parse_clock(entry["end"])
            days = parse_days(entry["days"]) if "days" in entry else ALL_DAYS
        except ValueError as exc:
            problems.append(f"period {number}: {exc}")
            continue
        periods.append(Period(start, end, rate * 1000, days))
    if problems:
        raise TariffError(problems)
    return periods


# The v1 offer frame carries the rate as u32 sat per GWh.
MAX_RATE_SAT_PER_KWH = (2**32 - 1) // 10**6
