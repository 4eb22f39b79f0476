"""Infrastructure cost arithmetic: rates with sub-cent precision, GiB-month accrual, statements.

Money here is exact. A rate is held in integer micro-cents (1 micro-cent = 10**-6 cent =
10**-8 dollar, so $0.023 per GiB-month is 2,300,000 micro-cents). A ledger row holds integers
only: a ``quantity`` (bytes, or byte-days for storage), the ``unit_quantity`` the rate is per
(``2**30`` bytes for a GiB; ``2**30 * days in the month`` byte-days for a GiB-month) and the
rate, so its exact amount is the rational ``quantity * rate / unit_quantity`` micro-cents. Rows
are never rounded to cents: only a statement total (per client per month) is, half up, once
(:func:`round_half_up_cents`), and the rounding difference is exact.

Day-count rule for storage (actual days / actual days in the month, by UTC calendar day): an
instance is held on every UTC day from the day it was received (counted in full) to the day
before it is deleted or its retention ends (not counted). A GiB-month is 2**30 bytes held on
every day of a month, so a month's accrual is ``sum(size_bytes * days held) / (2**30 * days in
the month)`` GiB-months. One GiB is 2**30 bytes (IEC 80000-13).
"""

from __future__ import annotations

import calendar
import datetime as dt
import re
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from fractions import Fraction

from router.errors import ValidationError

GIB = 2**30  # bytes in a gibibyte (IEC 80000-13)
MICROCENTS_PER_CENT = 10**6
#: Largest rate accepted, in cents (per GiB or per GiB-month): $10,000.
MAX_RATE_CENTS = 10**6

_MONTH = re.compile(r"(\d{4})-(\d{2})")


def rate_microcents(cents: object, name: str = "rate") -> int:
    """A rate given in cents with up to six decimals, as integer micro-cents.

    ``2.3`` (cents, i.e. $0.023) gives ``2_300_000``. A ``float`` is read by its shortest
    decimal form (``repr``), as TOML and JSON write it, so ``2.3`` is exactly 2.3.

    Raises
    ------
    ValidationError
        If ``cents`` is not a number (``bool`` is refused), is negative, not finite, above
        :data:`MAX_RATE_CENTS`, or has more than six decimals (finer than a micro-cent).
    """
    if isinstance(cents, bool) or not isinstance(cents, (int, float, str, Decimal)):
        raise ValidationError(f"{name} must be a number of cents, got {type(cents).__name__}")
    try:
        value = Decimal(repr(cents) if isinstance(cents, float) else str(cents))
    except InvalidOperation as exc:
        raise ValidationError(f"{name} must be a number of cents, got {cents!r}") from exc
    if not value.is_finite() or value < 0:
        raise ValidationError(f"{name} must be zero or more cents, got {cents}")
    if value > MAX_RATE_CENTS:
        raise ValidationError(f"{name} must be at most {MAX_RATE_CENTS} cents, got {cents}")
    micro = value * MICROCENTS_PER_CENT
    if micro != micro.to_integral_value():
        raise ValidationError(f"{name} has more than 6 decimals of a cent: {cents}")
    return int(micro)


def parse_month(text: str) -> dt.date:
    """``"YYYY-MM"`` as the first day of that month.

    Raises
    ------
    ValidationError
        If ``text`` is not a month in that form.
    """
    match = _MONTH.fullmatch(text.strip())
    if match is None or not 1 <= int(match.group(2)) <= 12 or int(match.group(1)) < 1:
        raise ValidationError(f"{text!r} is not a month (YYYY-MM)")
    return dt.date(int(match.group(1)), int(match.group(2)), 1)


def month_start(day: dt.date) -> dt.date:
    """The first day of ``day``'s month."""
    return day.replace(day=1)


def next_month(month: dt.date) -> dt.date:
    """The first day of the month after ``month``'s."""
    return dt.date(month.year + month.month // 12, month.month % 12 + 1, 1)


def previous_month(month: dt.date) -> dt.date:
    """The first day of the month before ``month``'s."""
    return dt.date(month.year - (month.month == 1), (month.month - 2) % 12 + 1, 1)


def days_in_month(month: dt.date) -> int:
    """Calendar days in ``month``'s month (28 to 31)."""
    return calendar.monthrange(month.year, month.month)[1]


def days_held(first_day: dt.date, end_day: dt.date | None, month: dt.date) -> int:
    """UTC days of ``month``'s month on which an instance is held (see the module docstring).

    Parameters
    ----------
    first_day : date
        The UTC day it was received (counted).
    end_day : date or None
        The first UTC day it is no longer held (deleted or retention over; not counted), or
        ``None`` while it is kept.
    month : date
        Any day of the month asked about.
    """
    start = max(first_day, month_start(month))
    stop = next_month(month) if end_day is None else min(end_day, next_month(month))
    return max(0, (stop - start).days)


def exact_microcents(quantity: int, rate: int, unit_quantity: int) -> Fraction:
    """The exact amount of a row, in micro-cents: ``quantity * rate / unit_quantity``.

    Raises
    ------
    ValidationError
        If ``unit_quantity`` is not positive or ``quantity`` or ``rate`` is negative.
    """
    if unit_quantity <= 0 or quantity < 0 or rate < 0:
        raise ValidationError(f"bad cost row: quantity {quantity}, rate {rate}, unit {unit_quantity}")
    return Fraction(quantity * rate, unit_quantity)


def round_half_up(value: Fraction) -> int:
    """``value`` rounded to the nearest integer, halves up (value >= 0)."""
    return int((value + Fraction(1, 2)) // 1)


def round_half_up_cents(microcents: Fraction) -> int:
    """A statement total: exact micro-cents rounded half up to whole cents."""
    return round_half_up(microcents / MICROCENTS_PER_CENT)


def cents_text(microcents: Fraction | int, places: int = 6) -> str:
    """Exact micro-cents as cents with ``places`` decimals (half up), e.g. ``"0.001071"``.

    With six places (a micro-cent) it is the exact amount whenever that is a whole number of
    micro-cents, as JSON and CSV show it. A non-zero amount is never written as zero: below
    half the last place it gets the decimals its first significant digit needs
    (``"0.000000007"`` for 7/1000 of a micro-cent).
    """
    value = Fraction(microcents) / MICROCENTS_PER_CENT
    exact = Decimal(value.numerator) / Decimal(value.denominator)
    text = format(exact.quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_UP), "f")
    if value != 0 and Decimal(text) == 0:
        places = -exact.adjusted()  # the place of the first significant digit
        text = format(exact.quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_UP), "f")
    return text


def cents_for_people(microcents: Fraction | int) -> str:
    """Cents to four decimals for a table; a non-zero amount below that shows as ``<0.0001``,
    never as a misleading ``0.0000``."""
    if 0 < Fraction(microcents) < 50:  # below 0.00005 cents: 0.0000 at four decimals
        return "<0.0001"
    return cents_text(microcents, 4)
