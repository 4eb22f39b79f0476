"""Turnaround (TAT) clock per priority, and escalation when it is breached.

Each priority has a turnaround target (``[routing] tat_stat_minutes``, ``tat_asap_minutes``,
``tat_routine_minutes``; defaults 60 min, 4 h, 24 h) counted from the first instance received.
When an assigned study's read is still open past its target, the periodic recheck escalates it
once:

* to another reader eligible and on shift now (the routing policy's own choice with the late
  reader passed over): the old assignment is withdrawn with the reason, as a roster change does;
* or, when nobody else can take it, the study stays with its reader and is flagged for an admin
  (``needs_review``).

Either way a routing decision (trigger ``tat_escalation``, every reader considered and why) and
an audit row (action ``study.escalate``, user ``router``) record it.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging

from sqlalchemy import select

from router.db.models import Assignment, Facility, Radiologist, RoutingDecision, Study
from router.db.queries import for_update
from router.domain.enums import Priority, StudyStatus
from router.domain.priority import study_priority
from router.services.assignment_gates import load_gates
from router.services.audit_log import ChangeContext, record_audit
from router.services.candidates import judge
from router.services.facts import study_facts
from router.services.routing import RouteResult, RoutingService

LOG = logging.getLogger(__name__)

TRIGGER = "tat_escalation"


def turnaround_deadline(study: Study, targets: dict[Priority, float]) -> dt.datetime:
    """When the read of ``study`` is due (UTC): first instance received + its priority's target seconds."""
    return study.first_received_at + dt.timedelta(seconds=targets[study_priority(study.priority)])


def escalate_breached(routing: RoutingService) -> list[RouteResult]:
    """Escalate every open read past its turnaround target (each study at most once).

    Returns
    -------
    list of RouteResult
        One per escalated study: ``withdrawn_npi`` set when it was reassigned, ``None`` when it
        stayed with its reader and was flagged for an admin.
    """
    now = routing.now()
    targets = dict(routing.policy.turnaround_seconds)
    sessions = routing.sessions
    with sessions() as session:
        rows = session.execute(
            select(Assignment.id, Study.priority, Study.first_received_at)
            .join(Study, Study.id == Assignment.study_id)
            .where(
                Assignment.superseded_at.is_(None),
                Assignment.completed_at.is_(None),
                Study.status == StudyStatus.ASSIGNED,
            )
            .order_by(Assignment.id)
        ).all()
    due = [
        assignment_id
        for assignment_id, priority, received in rows
        if now >= received + dt.timedelta(seconds=targets[study_priority(priority)])
    ]
    results = []
    for assignment_id in due:
        result = _escalate(routing, assignment_id, now)
        if result is not None:
            results.append(result)
    return results


def _escalate(routing: RoutingService, assignment_id: int, now: dt.datetime) -> RouteResult | None:
    with routing.sessions.begin() as session:
        assignment = session.get(Assignment, assignment_id)
        if assignment is None or assignment.superseded_at is not None or assignment.completed_at is not None:
            return None
        study = session.scalars(for_update(select(Study).where(Study.id == assignment.study_id), session)).one()
        if study.status != StudyStatus.ASSIGNED or not study.exam_state:
            return None
        already = session.scalar(
            select(RoutingDecision.id).where(RoutingDecision.study_id == study.id, RoutingDecision.trigger == TRIGGER)
        )
        if already is not None:
            return None  # escalated once already: the admin has it
        npi = session.scalar(select(Radiologist.npi).where(Radiologist.id == assignment.radiologist_id)) or ""
        priority = study_priority(study.priority)
        deadline = turnaround_deadline(study, dict(routing.policy.turnaround_seconds))
        reason = (
            f"turnaround breached: {priority.value} read due {deadline.isoformat(timespec='minutes')} "
            f"still open with NPI {npi}"
        )
        facility = session.get(Facility, study.facility_id) if study.facility_id else None
        avoid = {assignment.radiologist_id: reason}
        gates = load_gates(
            session,
            facility,
            now,
            routing.policy.require_shift,
            avoid,
            routing.policy.max_open_reads,
            routing.need_for(study),
        )
        day = routing.read_day(facility, now, study.exam_state)
        judgement = judge(session, study_facts(study, study.exam_state, facility), day, routing.rules(), gates)
        context = ChangeContext.of("router", now, routing.policy.timezone)
        old = {"assigned_npi": npi, "needs_review": study.needs_review}
        if judgement.chosen is not None:
            routing.withdraw(session, study, assignment, reason)
            result = routing.decide(session, study, trigger=TRIGGER, note=f"reassigned: {reason}", avoid=avoid)
            record_audit(
                session, context, "study.escalate", "study", study.study_instance_uid, old,
                {"assigned_npi": result.assigned_npi, "reason": reason},
            )  # fmt: skip
            LOG.warning("study %s escalated: turnaround breached, reassigned", study.study_instance_uid)
            return dataclasses.replace(result, withdrawn_npi=npi)
        study.needs_review = True
        session.add(
            RoutingDecision(
                study_id=study.id,
                decided_at=now,
                read_date=day,
                trigger=TRIGGER,
                exam_state=study.exam_state,
                exam_state_source=study.exam_state_source,
                outcome=StudyStatus.ASSIGNED,
                chosen_npi=npi,
                candidates=judgement.records,
                note=f"{reason}; no other eligible reader on shift: flagged for an admin",
            )
        )
        record_audit(
            session, context, "study.escalate", "study", study.study_instance_uid, old,
            {"assigned_npi": npi, "needs_review": True, "reason": reason},
        )  # fmt: skip
        LOG.warning("study %s turnaround breached; no other reader: flagged for an admin", study.study_instance_uid)
        return RouteResult(
            study_instance_uid=study.study_instance_uid,
            status=study.status,
            exam_state=study.exam_state,
            exam_state_source=study.exam_state_source,
            assigned_npi=npi,
        )
