"""The calendar day of a moment in a US state or territory, for a study with no registered facility.

A license is valid through its expiry date *where the exam is performed* (the patient's
location; DESIGN.md "Which state"). Without a registered facility the router knows the state but
not the zone inside it, and several states span two zones (TX, FL, KS, NE, ND, SD, TN, KY, IN,
MI, OR, ID, AK). The state's zones come from the ``us`` package (``State.time_zones``).

Where they disagree on the date, the router takes the LATEST local date among them, i.e. the
zone where midnight comes first. That is the cautious choice for expiry, the common case: a
license expiring on Nov 30 stops counting when Nov 30 ends anywhere in the state (00:00 Dec 1 in
Houston, an hour before El Paso), so a read is never assigned on a license that has already
lapsed where the exam may have been done. The price is that a license whose first valid day is
tomorrow in the western zone is also counted an hour early there; new licenses are entered ahead
of time in practice, expiries are what the periodic recheck catches at midnight.
"""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import us


def state_timezones(state: str) -> tuple[str, ...]:
    """IANA zones of a state or territory (two-letter code), or ``()`` when unknown."""
    found = us.states.lookup(state.strip().upper()) if state and state.strip() else None
    if found is None:
        return ()
    return tuple(found.time_zones or ((found.capital_tz,) if found.capital_tz else ()))


def state_local_date(state: str, moment: dt.datetime, fallback_timezone: str = "UTC") -> tuple[dt.date, str]:
    """The cautious calendar day of the aware ``moment`` in ``state``, and the zone that gave it.

    Returns
    -------
    (datetime.date, str)
        The latest local date among the state's zones (see the module docstring) and that
        zone's name; ``fallback_timezone`` when the state has no known zone.
    """
    best: tuple[dt.date, str] | None = None
    for name in state_timezones(state):
        try:
            local = moment.astimezone(ZoneInfo(name)).date()
        except (ZoneInfoNotFoundError, ValueError):
            continue
        if best is None or local > best[0]:
            best = (local, name)
    if best is None:
        return moment.astimezone(ZoneInfo(fallback_timezone)).date(), fallback_timezone
    return best
