"""Exact units for money and energy.

Money is integer millisatoshis everywhere. Energy is integer nanojoules: the meters
multiply integer raw readings (tenths of volts, hundredths of amps, microseconds), so
every sample lands on a whole number of nanojoules and nothing drifts over an 8-hour
session. Prices are integer msat per kWh, so 25 Wh at 100 sat/kWh is exactly 2 500 msat.
"""

from __future__ import annotations

from fractions import Fraction

MSAT_PER_SAT = 1_000
NJ_PER_WH = 3_600 * 10**9
NJ_PER_KWH = 1_000 * NJ_PER_WH
US_PER_S = 1_000_000


def wh_to_nj(wh: int | Fraction) -> int:
    nj = Fraction(wh) * NJ_PER_WH
    if nj.denominator != 1:
        raise ValueError(f"{wh} Wh is not a whole number of nanojoules")
    return int(nj)


def nj_to_wh(nj: int) -> Fraction:
    return Fraction(nj, NJ_PER_WH)


def msat_for_energy(nj: int, msat_per_kwh: int) -> Fraction:
    """Exact price of ``nj`` nanojoules; callers choose how to round to whole msat."""
    return Fraction(nj * msat_per_kwh, NJ_PER_KWH)


def energy_for_msat(msat: int, msat_per_kwh: int) -> Fraction:
    """Exact nanojoules that ``msat`` buys at ``msat_per_kwh``."""
    if msat_per_kwh <= 0:
        raise ValueError("rate must be positive")
    return Fraction(msat * NJ_PER_KWH, msat_per_kwh)


def sat_per_kwh_to_msat(sat_per_kwh: int | Fraction) -> int:
    msat = Fraction(sat_per_kwh) * MSAT_PER_SAT
    if msat.denominator != 1:
        raise ValueError(f"{sat_per_kwh} sat/kWh is not a whole number of msat/kWh")
    return int(msat)


def format_msat(msat: int) -> str:
    sat, rest = divmod(msat, MSAT_PER_SAT)
    return f"{sat}.{rest:03d} sat" if rest else f"{sat} sat"
