"""Reader shifts: weekly windows of local wall-clock time in the reader's own IANA time zone.

A shift ``mon-fri 19:00-07:00 America/Chicago`` starts on each listed weekday at 19:00 Chicago
time and, because it ends before it starts, runs across midnight to 07:00 the next morning. Wall
clock times follow daylight saving time (``zoneinfo``): a 07:00 start is 07:00 local on either
side of a DST change. A moment is on shift when it lies in ``[start, end)`` of some window.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


class ShiftError(ValueError):
    """A shift definition that cannot be used (bad weekday, time or time zone)."""


def parse_weekdays(text: str) -> tuple[int, ...]:
    """Weekdays from ``mon-fri``, ``sat,sun``, ``mon,wed-fri`` or ``daily``.

    Returns
    -------
    tuple of int
        Sorted ISO-like indexes, Monday 0 .. Sunday 6 (:meth:`datetime.date.weekday`).

    Raises
    ------
    ShiftError
        An unknown day name or an empty list.
    """
    cleaned = text.strip().lower()
    if cleaned in ("daily", "all", "*"):
        return tuple(range(7))
    days: set[int] = set()
    for part in cleaned.split(","):
        part = part.strip()
        if not part:
            continue
        first, _, last = part.partition("-")
        try:
            start = WEEKDAYS.index(first.strip()[:3])
            end = WEEKDAYS.index(last.strip()[:3]) if last else start
        except ValueError as exc:
            raise ShiftError(f"unknown weekday in {text!r}; use mon..sun, ranges like mon-fri, or daily") from exc
        index = start
        days.add(index)
        while index != end:  # ranges may wrap: fri-mon
            index = (index + 1) % 7
            days.add(index)
    if not days:
        raise ShiftError("no weekday given")
    return tuple(sorted(days))


def format_weekdays(days: Iterable[int]) -> str:
    """``mon,tue,...`` for stored weekday indexes."""
    return ",".join(WEEKDAYS[day] for day in sorted(days))


def parse_clock(text: str) -> dt.time:
    """``HH:MM`` (24-hour) as a time; ``24:00`` is refused (use ``00:00``).

    Raises
    ------
    ShiftError
        Not a 24-hour ``HH:MM`` time.
    """
    try:
        return dt.datetime.strptime(text.strip(), "%H:%M").time()
    except ValueError as exc:
        raise ShiftError(f"time {text!r} is not HH:MM (24-hour)") from exc


def check_timezone(name: str) -> str:
    """Return ``name`` if it is a known IANA time zone.

    Raises
    ------
    ShiftError
        Unknown zone.
    """
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ShiftError(f"unknown IANA time zone {name!r}") from exc
    return name


@dataclass(frozen=True)
class Shift:
    """One weekly shift of a reader.

    ``start == end`` means a 24-hour shift starting at ``start`` on each weekday.
    """

    weekdays: tuple[int, ...]
    start: dt.time
    end: dt.time
    timezone: str

    @property
    def overnight(self) -> bool:
        """Whether the shift ends on the next calendar day."""
        return self.end <= self.start

    def covers(self, moment: dt.datetime) -> bool:
        """Whether the aware ``moment`` lies within one of this shift's windows."""
        zone = ZoneInfo(self.timezone)
        local = moment.astimezone(zone)
        for offset in (0, -1):  # a window starting today, or an overnight one from yesterday
            day = local.date() + dt.timedelta(days=offset)
            if day.weekday() not in self.weekdays:
                continue
            begin = dt.datetime.combine(day, self.start, tzinfo=zone)
            end_day = day + dt.timedelta(days=1) if self.overnight else day
            finish = dt.datetime.combine(end_day, self.end, tzinfo=zone)
            # compare in UTC: wall times across a DST change are not ordered by their local fields
            if begin.astimezone(dt.UTC) <= moment.astimezone(dt.UTC) < finish.astimezone(dt.UTC):
                return True
        return False

    def describe(self) -> str:
        """e.g. ``mon,tue 19:00-07:00 America/Chicago``."""
        return f"{format_weekdays(self.weekdays)} {self.start:%H:%M}-{self.end:%H:%M} {self.timezone}"


def on_shift(shifts: Sequence[Shift], moment: dt.datetime, require_shift: bool) -> tuple[bool, str | None]:
    """Whether a reader with ``shifts`` may be assigned at ``moment``, and the reason if not.

    A reader without shifts is on duty unless ``require_shift`` (``[routing] require_shift``).
    """
    if not shifts:
        return (not require_shift, "no shifts defined and routing.require_shift is on" if require_shift else None)
    if any(shift.covers(moment) for shift in shifts):
        return True, None
    return False, "off shift (" + "; ".join(shift.describe() for shift in shifts) + ")"
