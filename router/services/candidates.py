"""Judge the roster for one study without loading all of it: rank, then evaluate in rank order.

The assignment policy picks, among eligible readers, the one with the fewest open assignments,
then the longest since their last assignment, then the lowest NPI
(:func:`router.domain.assignment.choose_reader`). So the router:

1. reads, in one query, every radiologist holding a license row in the exam state, with their
   open workload and last assignment time (indexed aggregates);
2. settles from that row alone those who cannot be eligible: inactive readers, and readers
   whose exam-state license is not active or does not cover the day (the same reason strings
   as the full rules give);
3. ranks the rest by the policy's own keys and evaluates them in full (all licenses, Compact
   status, discipline, privileges, MQSA), a few at a time, in rank order, stopping at the first
   eligible one: by construction it is the one the policy would choose among all eligible.

The decision records every reader: the full verdict of each one evaluated, the license reason
of each one settled in step 2, and "not evaluated: ranked after the chosen reader" with the
workload that ranked them for the rest; readers with no license in the state are listed by NPI.
Routing time then grows with the readers who must be looked at, not with the roster.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from router.db.models import Assignment, License, Radiologist
from router.domain.assignment import choose_reader
from router.domain.enums import LicensePathway, LicenseStatus
from router.domain.licensure import (
    EligibilityRules,
    LicenseFacts,
    ReaderFacts,
    StudyFacts,
    Verdict,
    evaluate_reader,
    license_standing,
)
from router.services.facts import load_readers

#: Readers evaluated in full per database round trip.
BATCH = 8
_NEVER = dt.datetime.min.replace(tzinfo=dt.timezone.utc)


@dataclass(frozen=True)
class Ranked:
    """One radiologist holding a license row in the exam state, with the policy's keys."""

    radiologist_id: int
    npi: str
    name: str
    active: bool
    open_assignments: int
    last_assigned_at: dt.datetime | None
    license: LicenseFacts

    @property
    def rank_key(self) -> tuple[int, dt.datetime, str]:
        """Fewest open assignments, then longest since the last one (never first), then NPI."""
        return (self.open_assignments, self.last_assigned_at or _NEVER, self.npi)


@dataclass
class Judgement:
    """The outcome of judging the roster for one study."""

    chosen: Verdict | None
    records: list[dict[str, Any]] = field(default_factory=list)  # JSON-ready, one per licensed reader
    evaluated: list[ReaderFacts] = field(default_factory=list)


def ranked_readers(session: Session, state: str) -> list[Ranked]:
    """Every radiologist with a license row in ``state``, with open workload and last assignment."""
    open_count = (
        select(func.count(Assignment.id))
        .where(Assignment.radiologist_id == Radiologist.id, Assignment.superseded_at.is_(None), Assignment.completed_at.is_(None))
        .scalar_subquery()
    )
    last_assigned = select(func.max(Assignment.assigned_at)).where(Assignment.radiologist_id == Radiologist.id).scalar_subquery()
    rows = session.execute(
        select(
            Radiologist.id,
            Radiologist.npi,
            Radiologist.name,
            Radiologist.active,
            open_count,
            last_assigned,
            License.id,
            License.number,
            License.pathway,
            License.status,
            License.status_since,
            License.in_lieu_of_discipline,
            License.issued,
            License.expires,
            License.compact_hold_cleared_on,
        )
        .join(License, License.radiologist_id == Radiologist.id)
        .where(License.state == state)
    ).all()
    ranked = []
    for row in rows:
        last = row[5]
        if isinstance(last, str):  # SQLite returns a scalar subquery's datetime untyped
            last = dt.datetime.fromisoformat(last)
        if last is not None and last.tzinfo is None:
            last = last.replace(tzinfo=dt.timezone.utc)
        ranked.append(
            Ranked(
                radiologist_id=row[0],
                npi=row[1],
                name=row[2],
                active=bool(row[3]),
                open_assignments=int(row[4] or 0),
                last_assigned_at=last,
                license=LicenseFacts(
                    state=state,
                    number=row[7],
                    pathway=LicensePathway(row[8]),
                    status=LicenseStatus(row[9]),
                    status_since=row[10],
                    in_lieu_of_discipline=bool(row[11]),
                    issued=row[12],
                    expires=row[13],
                    compact_hold_cleared_on=row[14],
                    license_id=row[6],
                ),
            )
        )
    return sorted(ranked, key=lambda item: item.rank_key)


def _settled_reason(item: Ranked, day: dt.date, rules: EligibilityRules) -> list[str] | None:
    """Reasons that settle a reader from the ranking row alone, or ``None`` to evaluate in full.

    Status and dates are the first checks of :func:`license_standing` and need nothing but the
    license, so the reason strings are the rules' own.
    """
    reasons = [] if item.active else ["inactive"]
    alone = ReaderFacts(radiologist_id=item.radiologist_id, npi=item.npi, name=item.name, licenses=(item.license,))
    lic = item.license
    if lic.status is not LicenseStatus.ACTIVE or not lic.covers(day):
        usable, reason = license_standing(alone, lic, day, rules)
        assert not usable and reason
        reasons.append(reason)
    return reasons or None


def judge(session: Session, study: StudyFacts, day: dt.date, rules: EligibilityRules) -> Judgement:
    """Find the reader the assignment policy chooses for ``study`` on ``day``, and why.

    Returns a :class:`Judgement` whose ``chosen`` is ``None`` when nobody is eligible (every
    licensed reader has then been evaluated or settled).
    """
    ranked = ranked_readers(session, study.exam_state)
    judgement = Judgement(chosen=None)
    pending: list[Ranked] = []
    settled: list[dict[str, Any]] = []
    for item in ranked:
        reasons = _settled_reason(item, day, rules)
        if reasons is None:
            pending.append(item)
        else:
            settled.append(_record(item, eligible=False, reasons=reasons))
    position = 0
    while position < len(pending) and judgement.chosen is None:
        group = pending[position : position + BATCH]
        position += len(group)
        readers = {reader.radiologist_id: reader for reader in load_readers(session, [item.radiologist_id for item in group])}
        for item in group:
            reader = readers[item.radiologist_id]
            verdict = evaluate_reader(reader, study, day, rules)
            judgement.evaluated.append(reader)
            judgement.records.append({**verdict.to_json(), "open_assignments": reader.open_assignments})
            if verdict.eligible:
                # the first eligible in rank order is the policy's choice; the domain confirms it
                judgement.chosen = choose_reader([verdict], {reader.radiologist_id: reader})
                skipped = group[group.index(item) + 1 :]
                pending_rest = skipped + pending[position:]
                judgement.records += [
                    _record(rest, eligible=None, reasons=["not evaluated: ranked after the chosen reader (more open assignments or more recently assigned)"])
                    for rest in pending_rest
                ]
                break
    judgement.records += settled
    return judgement


def _record(item: Ranked, eligible: bool | None, reasons: list[str]) -> dict[str, Any]:
    return {
        "radiologist_id": item.radiologist_id,
        "npi": item.npi,
        "name": item.name,
        "eligible": eligible,
        "reasons": reasons,
        "license": None,
        "open_assignments": item.open_assignments,
    }
