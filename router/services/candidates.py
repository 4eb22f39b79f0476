"""Judge the roster for one study without loading all of it: rank, then evaluate in rank order.

The assignment policy picks, among eligible readers, the one with the least open workload (the
work RVUs of their open reads, router.domain.workload; formerly the count of open assignments),
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
of each one settled in step 2, the NPIs ranked after the chosen reader (not evaluated: the
policy would not have chosen them even if eligible), and the NPIs with no license in the state.
Routing time then grows with the readers who must be looked at, not with the roster.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import and_, case, func, or_, select
from sqlalchemy.orm import Session

from router.db.models import Assignment, License, Radiologist
from router.domain.assignment import choose_reader
from router.domain.eligibility_facts import (
    EligibilityRules,
    LicenseFacts,
    ReaderFacts,
    StudyFacts,
)
from router.domain.enums import LicenseStatus
from router.domain.licensure import Verdict, evaluate_reader, license_standing
from router.services.assignment_gates import Gates
from router.services.facts import license_facts, load_readers

#: Workload of an open read assigned before work RVUs were recorded (1.00 wRVU).
UNKNOWN_WORK_RVU_CENTI = 100
#: Readers evaluated in full per database round trip.
BATCH = 8
_NEVER = dt.datetime.min.replace(tzinfo=dt.UTC)


@dataclass(frozen=True)
class Ranked:
    """One radiologist holding a license row in the exam state, with the policy's keys.

    ``license`` is loaded only when the row settles the reader (``usable_row`` false, or
    inactive): it then gives the reason.
    """

    radiologist_id: int
    npi: str
    name: str
    active: bool
    open_assignments: int
    last_assigned_at: dt.datetime | None
    usable_row: bool  # exam-state license active and covering the day
    license: LicenseFacts | None = None
    open_work_rvu_centi: int = 0  # work RVUs x 100 of the open reads (router.domain.workload)

    @property
    def rank_key(self) -> tuple[int, dt.datetime, str]:
        """Least open workload (work RVUs), then longest since the last assignment (never first), then NPI."""
        return (self.open_work_rvu_centi, self.last_assigned_at or _NEVER, self.npi)


@dataclass
class Judgement:
    """The outcome of judging the roster for one study."""

    chosen: Verdict | None
    records: list[dict[str, Any]] = field(default_factory=list)  # JSON-ready: evaluated and settled readers
    not_evaluated: list[str] = field(default_factory=list)  # NPIs ranked after the chosen reader
    evaluated: list[ReaderFacts] = field(default_factory=list)
    off_shift: list[str] = field(default_factory=list)  # NPIs eligible by licensure but off shift or at their cap


def ranked_readers(session: Session, state: str, day: dt.date) -> list[Ranked]:
    """Every radiologist with a license row in ``state``, with open workload and last assignment.

    Only plain columns come back for everyone (converting hundreds of dates and enums per study
    would cost more than the query); whether the exam-state license is active and covers
    ``day`` is decided in SQL. The license row itself is loaded for the readers it settles.
    """
    open_count = (
        select(func.count(Assignment.id))
        .where(
            Assignment.radiologist_id == Radiologist.id,
            Assignment.superseded_at.is_(None),
            Assignment.completed_at.is_(None),
        )
        .scalar_subquery()
    )
    open_load = (
        select(func.coalesce(func.sum(func.coalesce(Assignment.work_rvu_centi, UNKNOWN_WORK_RVU_CENTI)), 0))
        .where(
            Assignment.radiologist_id == Radiologist.id,
            Assignment.superseded_at.is_(None),
            Assignment.completed_at.is_(None),
        )
        .scalar_subquery()
    )
    last_assigned = (
        select(func.max(Assignment.assigned_at)).where(Assignment.radiologist_id == Radiologist.id).scalar_subquery()
    )
    usable = case(
        (
            and_(
                License.status == LicenseStatus.ACTIVE,
                or_(License.issued.is_(None), License.issued <= day),
                License.expires >= day,
            ),
            1,
        ),
        else_=0,
    )
    rows = session.execute(
        select(
            Radiologist.id,
            Radiologist.npi,
            Radiologist.name,
            Radiologist.active,
            open_count,
            last_assigned,
            usable,
            open_load,
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
            last = last.replace(tzinfo=dt.UTC)
        ranked.append(
            Ranked(
                row[0],
                row[1],
                row[2],
                bool(row[3]),
                int(row[4] or 0),
                last,
                bool(row[6]),
                open_work_rvu_centi=int(row[7] or 0),
            )
        )
    settled = [item.radiologist_id for item in ranked if not (item.active and item.usable_row)]
    if settled:
        licenses = {
            lic.radiologist_id: license_facts(lic)
            for lic in session.scalars(
                select(License).where(License.state == state, License.radiologist_id.in_(settled))
            )
        }
        ranked = [
            dataclasses.replace(item, license=licenses.get(item.radiologist_id))
            if item.radiologist_id in licenses
            else item
            for item in ranked
        ]
    return sorted(ranked, key=lambda item: item.rank_key)


def _settled_reason(item: Ranked, day: dt.date, rules: EligibilityRules) -> list[str] | None:
    """Reasons that settle a reader from the ranking row alone, or ``None`` to evaluate in full.

    Status and dates are the first checks of :func:`license_standing` and need nothing but the
    license, so the reason strings are the rules' own.
    """
    if item.active and item.usable_row:
        return None
    reasons = [] if item.active else ["inactive"]
    lic = item.license
    if not item.usable_row and lic is not None:
        alone = ReaderFacts(radiologist_id=item.radiologist_id, npi=item.npi, name=item.name, licenses=(lic,))
        usable, reason = license_standing(alone, lic, day, rules)
        assert not usable and reason
        reasons.append(reason)
    return reasons


def judge(
    session: Session, study: StudyFacts, day: dt.date, rules: EligibilityRules, gates: Gates | None = None
) -> Judgement:
    """Find the reader the assignment policy chooses for ``study`` on ``day``, and why.

    ``gates`` (shifts, facility preferences and exclusions) turn away readers licensure allows
    and make a preferred reader win ties on workload.

    Returns a :class:`Judgement` whose ``chosen`` is ``None`` when nobody is eligible (every
    licensed reader has then been evaluated or settled).
    """
    ranked = ranked_readers(session, study.exam_state, day)
    if gates is not None:
        ranked.sort(
            key=lambda item: (
                item.open_work_rvu_centi,
                not gates.has_subspecialty(item.radiologist_id),
                not gates.is_preferred(item.radiologist_id),
                item.last_assigned_at or _NEVER,
                item.npi,
            )
        )
    judgement = Judgement(chosen=None)
    pending: list[Ranked] = []
    settled: list[dict[str, Any]] = []
    for item in ranked:
        reasons = _settled_reason(item, day, rules)
        excluded = gates.exclusion_reason(item.radiologist_id) if gates is not None else None
        if excluded is not None:
            reasons = [*(reasons or []), excluded]
        if reasons is None:
            pending.append(item)
        else:
            settled.append(_record(item, eligible=False, reasons=reasons))
    position = 0
    while position < len(pending) and judgement.chosen is None:
        group = pending[position : position + BATCH]
        position += len(group)
        readers = {
            reader.radiologist_id: reader for reader in load_readers(session, [item.radiologist_id for item in group])
        }
        for item in group:
            reader = readers[item.radiologist_id]
            verdict = evaluate_reader(reader, study, day, rules)
            judgement.evaluated.append(reader)
            record = {
                **verdict.to_json(),
                "open_assignments": reader.open_assignments,
                "open_work_rvu": item.open_work_rvu_centi / 100,
            }
            if gates is not None:
                record["preferred"] = gates.is_preferred(item.radiologist_id)
                if gates.need is not None:
                    record["subspecialty_match"] = gates.has_subspecialty(item.radiologist_id)
                off = gates.availability_reason(item.radiologist_id, reader.open_assignments)
                if off is not None:
                    record["reasons"] = [*record.get("reasons", []), off]
                    if verdict.eligible:
                        record["eligible"] = False
                        judgement.off_shift.append(item.npi)
                    judgement.records.append(record)
                    continue
            judgement.records.append(record)
            if verdict.eligible:
                # the first eligible in rank order is the policy's choice; the domain confirms it
                judgement.chosen = choose_reader([verdict], {reader.radiologist_id: reader})
                skipped = group[group.index(item) + 1 :]
                judgement.not_evaluated = [rest.npi for rest in skipped + pending[position:]]
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
        "open_work_rvu": item.open_work_rvu_centi / 100,
    }
