"""Read-only views of studies for ``router studies list|show|explain``.

Values are JSON-ready: missing values ``None``, times as ISO-8601 UTC with ``Z``. The views hold
UIDs, accession numbers, AE titles and states; the location evidence text (addresses) is shown
only where an admin asks to see how a state was found (``explain``).
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from router.db.models import (
    Assignment,
    Facility,
    InfrastructureEntry,
    Instance,
    InstanceConflict,
    OutboxJob,
    ProfessionalEntry,
    Radiologist,
    RoutingDecision,
    Series,
    Study,
)
from router.db.queries import study_by_uid
from router.domain.compact_paths import fastest_paths
from router.domain.eligibility_facts import license_tag
from router.domain.enums import StudyStatus
from router.domain.infra_cost import cents_text
from router.domain.licensure import evaluate_readers
from router.domain.location import LocationEvidence, resolve_exam_state
from router.services.assignment_gates import load_gates
from router.services.facts import load_readers, study_facts
from router.services.ledgers import entry_microcents
from router.services.routing import RoutingService, study_modalities
from router.timeutil import iso_utc


def study_summary(study: Study, assignment: Assignment | None, npi: str | None) -> dict[str, Any]:
    """The fields every study listing carries."""
    return {
        "study_instance_uid": study.study_instance_uid,
        "status": study.status.value,
        "hold_reason": study.hold_reason.value if study.hold_reason else None,
        "hold_detail": study.hold_detail,
        "exam_state": study.exam_state,
        "exam_state_source": study.exam_state_source.value if study.exam_state_source else None,
        "assigned_npi": npi,
        "license_state": assignment.license_state if assignment else None,
        "license_number": assignment.license_number if assignment else None,
        "accession_number": study.accession_number,
        "modalities": study.modalities,
        "instance_count": study.instance_count,
        "size_bytes": study.size_bytes,
        "calling_ae_title": study.first_calling_ae_title,
        "first_received_at": iso_utc(study.first_received_at),
        "last_received_at": iso_utc(study.last_received_at),
        "routed_at": iso_utc(study.routed_at),
        "needs_review": study.needs_review,
    }


@dataclass(frozen=True)
class StudyViews:
    """Builds the documents the CLI prints."""

    sessions: sessionmaker[Session]
    routing: RoutingService

    def list(
        self, status: StudyStatus | None = None, limit: int | None = None, needs_review: bool = False
    ) -> list[dict[str, Any]]:
        """Studies, newest first, optionally of one status, or only those flagged for an admin's
        review (``needs_review``: a report not billed, an assignment withdrawn, a voided read...)."""
        with self.sessions() as session:
            query = (
                select(Study, Assignment, Radiologist.npi)
                .outerjoin(Assignment, (Assignment.study_id == Study.id) & Assignment.superseded_at.is_(None))
                .outerjoin(Radiologist, Radiologist.id == Assignment.radiologist_id)
                .order_by(Study.last_received_at.desc(), Study.id.desc())
            )
            if status is not None:
                query = query.where(Study.status == status)
            if needs_review:
                query = query.where(Study.needs_review.is_(True))
            if limit:
                query = query.limit(limit)
            return [study_summary(study, assignment, npi) for study, assignment, npi in session.execute(query).all()]

    def show(self, study_instance_uid: str) -> dict[str, Any]:
        """One study in full: series, senders, conflicts, assignment history, decisions, ledgers.

        Raises
        ------
        NotFoundError
            Unknown study.
        """
        with self.sessions() as session:
            study = study_by_uid(session, study_instance_uid)
            assignments = list(
                session.scalars(select(Assignment).where(Assignment.study_id == study.id).order_by(Assignment.id))
            )
            current = next((item for item in assignments if item.superseded_at is None), None)
            document = study_summary(study, current, current.radiologist.npi if current else None)
            facility = session.get(Facility, study.facility_id) if study.facility_id else None
            document.update(
                {
                    "facility": facility.ae_title if facility else None,
                    "exam_state_detail": study.exam_state_detail,
                    "location_conflicts": study.location_conflicts or [],
                    "study_date": study.study_date.isoformat() if study.study_date else None,
                    "study_description": study.study_description,
                    "body_part": study.body_part,
                    "series": [
                        {
                            "series_instance_uid": series.series_instance_uid,
                            "modality": series.modality,
                            "instance_count": count,
                        }
                        for series, count in session.execute(
                            select(Series, func.count(Instance.id))
                            .outerjoin(Instance, Instance.series_id == Series.id)
                            .where(Series.study_id == study.id)
                            .group_by(Series.id)
                            .order_by(Series.id)
                        ).all()
                    ],
                    "senders": [
                        {
                            "calling_ae_title": sender.calling_ae_title,
                            "peer_address": sender.peer_address,
                            "instance_count": sender.instance_count,
                            "first_received_at": iso_utc(sender.first_received_at),
                            "last_received_at": iso_utc(sender.last_received_at),
                        }
                        for sender in study.senders
                    ],
                    "instance_conflicts": [
                        {
                            "sop_instance_uid": conflict.sop_instance_uid,
                            "quarantined_as": conflict.relative_path,
                            "calling_ae_title": conflict.calling_ae_title,
                            "received_at": iso_utc(conflict.received_at),
                            "reason": conflict.reason,
                        }
                        for conflict in session.scalars(
                            select(InstanceConflict)
                            .where(InstanceConflict.study_id == study.id)
                            .order_by(InstanceConflict.id)
                        )
                    ],
                    "assignments": [
                        {
                            "npi": item.radiologist.npi,
                            "name": item.radiologist.name,
                            "license": license_tag(item.license_state, item.license_number),
                            "assigned_at": iso_utc(item.assigned_at),
                            "assigned_by": item.assigned_by,
                            "completed_at": iso_utc(item.completed_at),
                            "superseded_at": iso_utc(item.superseded_at),
                            "superseded_reason": item.superseded_reason,
                        }
                        for item in assignments
                    ],
                    "decisions": [_decision_json(decision) for decision in _decisions(session, study.id)],
                    "forwarding": [
                        {
                            "destination": job.destination,
                            "status": job.status.value,
                            "attempts": job.attempts,
                            "send_round": job.send_round,  # 0, then 1 and up after `studies forward --all`
                            "sent_instance_count": job.sent_instance_count,  # accepted in this round
                            "last_error": job.last_error,
                        }
                        for job in session.scalars(
                            select(OutboxJob).where(OutboxJob.study_id == study.id).order_by(OutboxJob.id)
                        )
                    ],
                    # exact, cents with six decimals (router.domain.infra_cost): never rounded per study
                    "infrastructure_cents": cents_text(
                        sum(
                            (
                                entry_microcents(entry)
                                for entry in session.scalars(
                                    select(InfrastructureEntry).where(InfrastructureEntry.study_id == study.id)
                                )
                            ),
                            Fraction(0),
                        )
                    ),
                    "professional_records": int(
                        session.scalar(
                            select(func.count(ProfessionalEntry.id)).where(ProfessionalEntry.study_id == study.id)
                        )
                        or 0
                    ),
                }
            )
            return document

    def explain(self, study_instance_uid: str) -> dict[str, Any]:
        """How the exam state was found and, judged now, why each radiologist may or may not read it.

        Also includes the decisions stored at the time (what the router knew then).

        Raises
        ------
        NotFoundError
            Unknown study.
        """
        with self.sessions() as session:
            study = study_by_uid(session, study_instance_uid)
            facility = session.get(Facility, study.facility_id) if study.facility_id else None
            evidence = LocationEvidence(
                facility_state=facility.state if facility else None,
                facility_label=facility.ae_title if facility else None,
                institution_address=study.institution_address,
                region_of_residence=self.routing.policy.plain(study.region_of_residence, "region_of_residence"),
                patient_address=self.routing.policy.plain(study.patient_address, "patient_address"),
                country_of_residence=self.routing.policy.plain(study.country_of_residence, "country_of_residence"),
            )
            location = resolve_exam_state(evidence, use_patient_address=self.routing.policy.use_patient_address)
            now = self.routing.now()
            day = self.routing.read_day(facility, now, study.exam_state)
            document: dict[str, Any] = {
                "study_instance_uid": study.study_instance_uid,
                "status": study.status.value,
                "hold_reason": study.hold_reason.value if study.hold_reason else None,
                "exam_state": study.exam_state,
                "exam_state_source": study.exam_state_source.value if study.exam_state_source else None,
                "exam_state_detail": study.exam_state_detail,
                "location_findings": [
                    {"source": item.source.value, "state": item.state, "detail": item.detail}
                    for item in location.findings
                ],
                "location_conflicts": study.location_conflicts or [],
                "judged_on": day.isoformat(),
                "radiologists": [],
                "fastest_paths": [],
                "fastest_path_note": None,
                "decisions": [_decision_json(decision) for decision in _decisions(session, study.id)],
            }
            if not study.exam_state:
                return document
            readers = load_readers(session)
            rules = self.routing.rules()
            study.modalities = study_modalities(session, study.id)  # not flushed: a read-only view
            facts = study_facts(study, study.exam_state, facility)
            verdicts = evaluate_readers(readers, facts, day, rules)
            gates = load_gates(
                session,
                facility,
                now,
                self.routing.policy.require_shift,
                None,
                0,
                self.routing.need_for(study),
            )
            document["radiologists"] = []
            for verdict in verdicts:
                record = verdict.to_json()
                # licensure decides "eligible"; shifts, facility rules and credentials decide who is offered it now
                blocked = [
                    reason
                    for reason in (
                        gates.exclusion_reason(verdict.radiologist_id),
                        gates.shift_reason(verdict.radiologist_id),
                    )
                    if reason is not None
                ]
                record["reasons"] = [*record["reasons"], *blocked]
                record["offered_now"] = verdict.eligible and not blocked
                document["radiologists"].append(record)
            if not any(verdict.eligible for verdict in verdicts):
                document["fastest_paths"] = [
                    path.to_json() for path in fastest_paths(readers, study.exam_state, day, rules, study=facts)
                ]
                if not rules.imlc.is_operating(study.exam_state, day):
                    document["fastest_path_note"] = (
                        f"{study.exam_state} is not an operating IMLC member on {day.isoformat()} "
                        f"({rules.imlc.source_name or 'membership file'}, as of {rules.imlc.as_of.isoformat()}): "
                        f"only a license issued by its own board can make a reader eligible"
                    )
            return document


def _decisions(session: Session, study_id: int) -> list[RoutingDecision]:
    return list(
        session.scalars(
            select(RoutingDecision).where(RoutingDecision.study_id == study_id).order_by(RoutingDecision.id)
        )
    )


def _decision_json(decision: RoutingDecision) -> dict[str, Any]:
    return {
        "decided_at": iso_utc(decision.decided_at),
        "read_date": decision.read_date.isoformat() if decision.read_date else None,
        "trigger": decision.trigger,
        "exam_state": decision.exam_state,
        "exam_state_source": decision.exam_state_source.value if decision.exam_state_source else None,
        "outcome": decision.outcome.value,
        "hold_reason": decision.hold_reason.value if decision.hold_reason else None,
        "chosen_npi": decision.chosen_npi,
        "candidates": decision.candidates,
        "unlicensed_npis": decision.unlicensed_npis or [],
        "not_evaluated_npis": decision.not_evaluated_npis or [],
        "fastest_paths": decision.fastest_paths or [],
        "note": decision.note,
    }
