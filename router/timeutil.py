"""Time helpers: the router stores UTC and converts to a local calendar day where a rule needs one."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from zoneinfo import ZoneInfo

#: A clock returns the current time as a timezone-aware UTC datetime; services take one so
#: tests can pin "today" on both sides of a boundary.
Clock = Callable[[], dt.datetime]


def utcnow() -> dt.datetime:
    """The current time, timezone-aware, in UTC."""
    return dt.datetime.now(dt.UTC)


def local_date(moment: dt.datetime, timezone: str) -> dt.date:
    """The calendar date of ``moment`` in the IANA ``timezone`` (e.g. ``America/Chicago``)."""
    return moment.astimezone(ZoneInfo(timezone)).date()


def iso_utc(moment: dt.datetime | None) -> str | None:
    """ISO-8601 UTC with a ``Z`` suffix (``2026-11-29T13:09:16Z``), or ``None``."""
    if moment is None:
        return None
    text = moment.astimezone(dt.UTC).replace(tzinfo=None).isoformat(timespec="seconds")
    return f"{text}Z"


def parse_iso_datetime(text: str, default_timezone: str = "UTC") -> dt.datetime:
    """Parse an ISO-8601 date-time; a value without offset is taken in ``default_timezone``.

    Raises
    ------
    ValueError
        If ``text`` is not ISO-8601.
    """
    value = dt.datetime.fromisoformat(text.strip().replace("Z", "+00:00").replace("z", "+00:00"))
    if value.tzinfo is None:
        value = value.replace(tzinfo=ZoneInfo(default_timezone))
    try:
        return value.astimezone(dt.UTC)
    except OverflowError as exc:  # e.g. 9999-12-31T23:59-12:00 is past datetime.max in UTC
        raise ValueError(f"{text.strip()!r} is out of range") from exc
