"""Audit rows: the primitives every audited change uses (roster commands, manual study actions).

Kept apart from :mod:`router.services.audit` (which re-evaluates studies after roster changes)
so that the routing service can record its manual actions without an import cycle. The audit
table is append-only (database triggers, migration 0002).
"""

from __future__ import annotations

import datetime as dt
import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from router.db.models import AuditEntry
from router.timeutil import iso_utc, local_date


def jsonable(value: Any) -> Any:
    """``value`` with dates as ISO strings, datetimes as ISO UTC ``Z``, enums as their values."""
    if isinstance(value, dt.datetime):
        return iso_utc(value)
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, Mapping):
        return {str(key): jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [jsonable(item) for item in value]
    return value


class Actor(str):
    """Who makes a change: the operating-system account, as the plain string every service takes,
    carrying the name given with ``router --as NAME`` (``acting_as``, ``None`` without it).

    The account is the one the CLI resolves from the real user id; ``acting_as`` is what a
    person running under a shared account says about themselves, recorded beside it.
    """

    acting_as: str | None

    def __new__(cls, os_user: str, acting_as: str | None = None) -> Actor:
        actor = super().__new__(cls, os_user)
        actor.acting_as = acting_as
        return actor


@dataclass(frozen=True)
class ChangeContext:
    """Who makes a change and when.

    Attributes
    ----------
    os_user : str
        Operating-system user recorded in the audit log (an :class:`Actor` also gives the
        ``--as`` name, recorded as ``acting_as``).
    at : datetime
        Time of the change (timezone-aware UTC, from the service clock).
    today : date
        Calendar day of ``at`` in ``[routing] timezone``: the default date of status changes.
    """

    os_user: str
    at: dt.datetime
    today: dt.date

    @classmethod
    def of(cls, os_user: str, at: dt.datetime, timezone: str) -> ChangeContext:
        """The context of a change by ``os_user`` at ``at``; ``today`` is that moment's calendar
        day in ``timezone`` (the IANA name of ``[routing] timezone``)."""
        return cls(os_user=os_user, at=at, today=local_date(at, timezone))


def record_audit(
    session: Session,
    ctx: ChangeContext,
    action: str,
    entity: str,
    entity_key: str,
    old: Mapping[str, Any] | None,
    new: Mapping[str, Any] | None,
) -> AuditEntry:
    """Add one audit row to the caller's transaction (it commits with the change it records).

    Parameters
    ----------
    action : str
        Dotted verb, e.g. ``license.set_status``.
    entity : str
        ``radiologist``, ``license``, ``facility`` or ``privilege``.
    entity_key : str
        Natural key: NPI, ``NPI/STATE``, AE title, or ``NPI/AE``.
    old, new : mapping or None
        Values before and after (only the fields that changed, for updates); dates are stored
        as ISO strings. ``old`` is ``None`` for a creation and ``new`` for a removal.
    """
    acting_as = getattr(ctx.os_user, "acting_as", None)
    entry = AuditEntry(
        at=ctx.at,
        os_user=ctx.os_user[:128],
        acting_as=acting_as[:128] if acting_as else None,
        action=action,
        entity=entity,
        entity_key=entity_key[:128],
        old_values=jsonable(dict(old)) if old is not None else None,
        new_values=jsonable(dict(new)) if new is not None else None,
    )
    session.add(entry)
    return entry
