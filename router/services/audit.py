"""Audited roster changes: one transaction per change, audit rows inside it, re-evaluation after.

Every roster change (radiologists, licenses, facilities, privileges, imports) runs through
:class:`ChangeRunner`: the change and its :class:`~router.db.models.AuditEntry` rows (OS user,
time, action, entity, key, old and new values) commit together or not at all; after the commit
the routing service re-checks open assignments and re-routes held studies, so a roster change
made from the CLI takes effect whether or not a server is running (issue 2, "Roster, assignment
and reads"; issue 4, "Every decision explained, every change audited").

The audit table is append-only; nothing here updates or deletes its rows.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from sqlalchemy import or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from router.db.models import Assignment, AuditEntry, Radiologist, Study
from router.db.queries import bump_roster_version
from router.domain.enums import HoldReason, StudyStatus
from router.errors import ConflictError, RouterError
from router.services.audit_log import ChangeContext, jsonable, record_audit  # noqa: F401 - re-exported for the roster modules
from router.services.routing import RouteResult, RoutingService
from router.timeutil import Clock, utcnow


class _Unset(enum.Enum):
    """Marker for "argument not given" where ``None`` means "clear the value"."""

    UNSET = "unset"

    def __repr__(self) -> str:
        return "UNSET"


#: Default of partial-update arguments: leave the stored value as it is.
UNSET: Final = _Unset.UNSET


def diff_values(old: Mapping[str, Any], new: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The fields whose value differs, as ``(old subset, new subset)``."""
    keys = [key for key in new if old.get(key) != new[key]]
    return {key: old.get(key) for key in keys}, {key: new[key] for key in keys}


def audit_entries(
    session: Session, limit: int = 50, entity: str | None = None, key: str | None = None
) -> list[dict[str, Any]]:
    """Audit rows, newest first.

    Parameters
    ----------
    limit : int
        At most this many rows (>= 1).
    entity : str, optional
        Only rows about this kind of record (``license``...).
    key : str, optional
        Only rows whose key is ``key`` or starts with ``key/`` (so an NPI also finds that
        radiologist's licenses and privileges).
    """
    statement = select(AuditEntry).order_by(AuditEntry.at.desc(), AuditEntry.id.desc()).limit(max(1, int(limit)))
    if entity:
        statement = statement.where(AuditEntry.entity == entity)
    if key:
        statement = statement.where(
            or_(AuditEntry.entity_key == key, AuditEntry.entity_key.startswith(f"{key}/", autoescape=True))
        )
    return [
        {
            "id": row.id,
            "at": row.at,
            "os_user": row.os_user,
            "acting_as": row.acting_as,
            "action": row.action,
            "entity": row.entity,
            "entity_key": row.entity_key,
            "old_values": row.old_values,
            "new_values": row.new_values,
        }
        for row in session.scalars(statement)
    ]


@dataclass(frozen=True)
class Rerouted:
    """A study whose routing outcome changed when the roster changed."""

    study_instance_uid: str
    status: StudyStatus
    assigned_npi: str | None
    hold_reason: HoldReason | None
    previous_status: StudyStatus | None
    previous_npi: str | None

    def describe(self) -> str:
        """One line for people, e.g. ``study 1.2.3: reassigned from 1234567893 to 1245319599``."""
        head = f"study {self.study_instance_uid}: "
        if self.status is StudyStatus.ASSIGNED and self.previous_npi and self.previous_npi != self.assigned_npi:
            return head + f"reassigned from {self.previous_npi} to {self.assigned_npi}"
        if self.status is StudyStatus.ASSIGNED:
            return head + f"assigned to {self.assigned_npi}"
        if self.status is StudyStatus.HELD:
            reason = self.hold_reason.value if self.hold_reason else "held"
            withdrawn = f", withdrawn from {self.previous_npi}" if self.previous_npi else ""
            return head + f"held ({reason}){withdrawn}"
        return head + self.status.value

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {
            "study_instance_uid": self.study_instance_uid,
            "status": self.status.value,
            "assigned_npi": self.assigned_npi,
            "hold_reason": self.hold_reason.value if self.hold_reason else None,
            "previous_status": self.previous_status.value if self.previous_status else None,
            "previous_npi": self.previous_npi,
        }


@dataclass(frozen=True)
class RosterChange:
    """What one roster command changed, and what re-evaluation did afterwards.

    Attributes
    ----------
    action, entity, entity_key : str
        As in the audit row (``license.set_status``, ``license``, ``1234567893/TX``).
    changed : bool
        ``False`` when the request matched what was stored (nothing written, nothing audited).
    record : dict or None
        The record after the change (``None`` after a removal).
    rerouted : tuple of Rerouted
        Studies whose outcome changed (assigned, reassigned, held).
    reevaluation_error : str or None
        Set when the change committed but re-evaluation failed (e.g. the IMLC file is missing):
        held studies were not re-routed and the admin must act.
    """

    action: str
    entity: str
    entity_key: str
    changed: bool
    record: dict[str, Any] | None
    rerouted: tuple[Rerouted, ...] = ()
    reevaluation_error: str | None = None
    #: Open studies whose forwarding a destination change re-queued or stopped (``None``: the
    #: change did not touch a destination).
    forwarding_requeued: int | None = None

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict: the record plus the ``rerouted`` list."""
        return {
            "action": self.action,
            "entity": self.entity,
            "key": self.entity_key,
            "changed": self.changed,
            "record": jsonable(self.record),
            "rerouted": [item.to_json() for item in self.rerouted],
            "reevaluation_error": self.reevaluation_error,
            "forwarding_requeued": self.forwarding_requeued,
        }


@dataclass
class Outcome:
    """What a unit of work reports to :meth:`ChangeRunner.run`.

    ``radiologist_id`` limits the open-assignment re-check to one reader; ``None`` re-checks
    every open assignment (facility changes, imports).
    """

    entity: str
    entity_key: str
    record: dict[str, Any] | None
    changed: bool = True
    radiologist_id: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


_Snapshot = dict[str, tuple[StudyStatus, str | None, HoldReason | None]]


class ChangeRunner:
    """Runs a roster change in its own transaction, then re-evaluates routing."""

    def __init__(self, sessions: sessionmaker[Session], routing: RoutingService, clock: Clock = utcnow) -> None:
        self._sessions = sessions
        self._routing = routing
        self._clock = clock

    @property
    def sessions(self) -> sessionmaker[Session]:
        """The session factory (for read-only queries)."""
        return self._sessions

    def context(self, os_user: str) -> ChangeContext:
        """The change context for ``os_user`` now."""
        at = self._clock()
        return ChangeContext.of(os_user, at, self._routing.policy.timezone)

    def run(
        self, os_user: str, action: str, work: Callable[[Session, ChangeContext], Outcome], dry_run: bool = False
    ) -> tuple[Outcome, RosterChange]:
        """Run ``work`` in one transaction; after commit, re-evaluate routing when it changed something.

        ``dry_run`` rolls the transaction back (nothing written, no re-evaluation).
        Errors raised by ``work`` roll back and propagate.

        Raises
        ------
        ConflictError
            A unique constraint refused the change (another admin made the same change at the
            same time); nothing was written.
        """
        ctx = self.context(os_user)
        before = self._snapshot()
        with self._sessions() as session:
            transaction = session.begin()
            try:
                # First: waits for routing decisions under way, and holds later ones until commit
                bump_roster_version(session)
                outcome = work(session, ctx)
                if dry_run:
                    transaction.rollback()
                else:
                    transaction.commit()
            except IntegrityError as exc:
                # a unique constraint caught what the checks missed: a concurrent change
                transaction.rollback()
                raise ConflictError(
                    f"{action} conflicts with a change made at the same time; nothing was saved, try again"
                ) from exc
            except BaseException:
                transaction.rollback()
                raise
        rerouted: tuple[Rerouted, ...] = ()
        error = None
        if outcome.changed and not dry_run:
            try:
                results = self._routing.reevaluate(trigger=action, radiologist_id=outcome.radiologist_id)
            except RouterError as exc:
                error = str(exc)
            else:
                rerouted = _changed_studies(before, results)
        change = RosterChange(
            action=action,
            entity=outcome.entity,
            entity_key=outcome.entity_key,
            changed=outcome.changed,
            record=outcome.record,
            rerouted=rerouted,
            reevaluation_error=error,
            forwarding_requeued=outcome.extra.get("forwarding_requeued"),
        )
        return outcome, change

    def _snapshot(self) -> _Snapshot:
        """Status, assigned NPI and hold reason of every held or assigned study."""
        with self._sessions() as session:
            rows = session.execute(
                select(Study.study_instance_uid, Study.status, Study.hold_reason, Radiologist.npi)
                .outerjoin(Assignment, (Assignment.study_id == Study.id) & Assignment.superseded_at.is_(None))
                .outerjoin(Radiologist, Radiologist.id == Assignment.radiologist_id)
                .where(Study.status.in_([StudyStatus.HELD, StudyStatus.ASSIGNED]))
            )
            return {row[0]: (row[1], row[3], row[2]) for row in rows}


def _changed_studies(before: _Snapshot, results: Iterable[RouteResult]) -> tuple[Rerouted, ...]:
    """Results whose status, reader or hold reason differ from before (last result per study wins)."""
    latest: dict[str, RouteResult] = {}
    for result in results:
        latest[result.study_instance_uid] = result
    changed = []
    for uid, result in latest.items():
        previous = before.get(uid)
        if previous is not None and previous == (result.status, result.assigned_npi, result.hold_reason):
            continue
        changed.append(
            Rerouted(
                study_instance_uid=uid,
                status=result.status,
                assigned_npi=result.assigned_npi,
                hold_reason=result.hold_reason,
                previous_status=previous[0] if previous else None,
                previous_npi=previous[1] if previous else None,
            )
        )
    return tuple(changed)
