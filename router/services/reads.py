"""Completing a read: eligibility re-checked on the interpretation date, then the professional record.

The reading radiologist bills the professional component (CPT + modifier 26) once the read is
reported; the date of service is the interpretation date, Medicare's rule when the professional
component is billed separately (CMS MLN SE17023). One record per ordered CPT code and modifiers;
the record names the rendering NPI and the license relied on, and carries the 837P claim fields
(:mod:`router.services.claims`). The CPT map and fee schedule are those of the date-of-service
year (CPT changes every January); a year without a map sends every line to coder review.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from router.db.models import Assignment, Facility, Order, ProfessionalEntry, Radiologist, Study
from router.db.queries import locked_study, share_roster
from router.domain.billing import BillingLine, resolve_billing_lines
from router.domain.cpt_map import CptMap
from router.domain.enums import CptSource, OrderStatus, ProfessionalEntryKind, StudyStatus
from router.domain.licensure import evaluate_reader
from router.errors import IneligibleError, ValidationError
from router.services.claims import ClaimDefaults, Diagnosis, claim_fields, order_of
from router.services.facts import load_readers, study_facts
from router.services.ledgers import open_charges
from router.services.reference import ReferenceData
from router.services.routing import RoutingService
from router.services.workload import study_procedure_codes
from router.timeutil import Clock, utcnow

LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class CompletedRead:
    """What completing a read wrote."""

    study_instance_uid: str
    npi: str
    date_of_service: dt.date
    entry_ids: tuple[int, ...]
    cpt_codes: tuple[str | None, ...]


class ReadService:
    """Records reported reads and writes the professional ledger."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        reference: ReferenceData,
        routing: RoutingService,
        clock: Clock = utcnow,
        claims: ClaimDefaults | None = None,
    ) -> None:
        self._sessions = sessions
        self._reference = reference
        self._routing = routing
        self._clock = clock
        self._claims = claims or ClaimDefaults()

    def complete(self, study_instance_uid: str, interpreted_at: dt.datetime | None = None) -> CompletedRead:
        """Record the read of the current assignment as reported at ``interpreted_at`` (default now).

        The assigned radiologist must still be eligible on the interpretation date (in the
        facility's time zone, else ``routing.timezone``).

        Raises
        ------
        NotFoundError
            Unknown study.
        IneligibleError
            No open assignment, already completed, or the reader is no longer eligible
            (the message gives every reason).
        ValidationError
            ``interpreted_at`` is in the future or before the assignment.
        """
        with self._sessions.begin() as session:
            return self.complete_in(session, study_instance_uid, interpreted_at)

    def complete_in(
        self,
        session: Session,
        study_instance_uid: str,
        interpreted_at: dt.datetime | None = None,
        report_diagnoses: Sequence[Diagnosis] = (),
    ) -> CompletedRead:
        """:meth:`complete` inside the caller's transaction (a signed report's message commits with it).

        ``report_diagnoses`` are the signed report's diagnoses (ORU DG1-3 / OBR-31): they come
        before the order's on the claim line. Nothing is written when it raises (the checks come
        first). Raises as :meth:`complete`.
        """
        now = self._clock()
        moment = interpreted_at or now
        if moment.tzinfo is None:
            raise ValidationError("interpretation time must carry a time zone")
        if moment > now + dt.timedelta(minutes=5):
            raise ValidationError("interpretation time is in the future")
        study = locked_study(session, study_instance_uid)
        if study.status == StudyStatus.COMPLETED:
            raise IneligibleError(f"study {study_instance_uid} is already completed")
        share_roster(session)  # eligibility re-checked on the roster as committed (routing.py)
        assignment = session.scalar(
            select(Assignment).where(Assignment.study_id == study.id, Assignment.superseded_at.is_(None))
        )
        if assignment is None or study.status != StudyStatus.ASSIGNED:
            raise IneligibleError(f"study {study_instance_uid} has no open assignment (status {study.status.value})")
        # Five minutes of slack for a reading workstation's clock, except after a
        # reassignment: the read cannot be billed to this reader for a time another held it.
        reassigned = session.scalar(
            select(Assignment.id).where(Assignment.study_id == study.id, Assignment.superseded_at.is_not(None)).limit(1)
        )
        slack = dt.timedelta(0) if reassigned is not None else dt.timedelta(minutes=5)
        if moment < assignment.assigned_at - slack:
            raise ValidationError("interpretation time is before the study was assigned to this radiologist")
        cancelled = session.scalar(
            select(Order.accession_number).where(Order.study_id == study.id, Order.status == OrderStatus.CANCELLED)
        )
        if cancelled is not None:
            raise IneligibleError(f"the order of study {study_instance_uid} (accession {cancelled}) was cancelled")
        standing = open_charges(session, study.id)
        if standing:  # one professional charge per interpretation: a reopened read was voided first
            raise IneligibleError(
                f"study {study_instance_uid} already has professional charge(s) "
                f"{', '.join(str(charge.id) for charge in standing)}; void them before billing the read again"
            )
        facility = session.get(Facility, study.facility_id) if study.facility_id else None
        radiologist = session.get(Radiologist, assignment.radiologist_id)
        assert radiologist is not None and study.exam_state
        day = self._routing.read_day(facility, moment, study.exam_state)
        readers = load_readers(session, [radiologist.id])
        verdict = evaluate_reader(
            readers[0], study_facts(study, study.exam_state, facility), day, self._routing.rules()
        )
        if not verdict.eligible or verdict.license is None:
            raise IneligibleError(
                f"NPI {radiologist.npi} may not report study {study_instance_uid} on {day.isoformat()}: {'; '.join(verdict.reasons)}"
            )
        cpt_map, lines = self._billing_lines(study, day.year)
        fees = self._reference.fee_schedule_for_year(day.year)
        fee_file = self._reference.year_file_name("fee_schedule", day.year)
        order = order_of(session, study)
        entries = []
        for line in lines:
            claim = claim_fields(
                line,
                study=study,
                order=order,
                facility=facility,
                radiologist=radiologist,
                report_diagnoses=report_diagnoses,
                fees=fees,
                fee_file=fee_file,
                defaults=self._claims,
            )
            reasons = [reason for reason in (line.review_reason, *claim.problems) if reason]
            entry = ProfessionalEntry(
                kind=ProfessionalEntryKind.CHARGE,
                study_id=study.id,
                assignment_id=assignment.id,
                study_instance_uid=study.study_instance_uid,
                accession_number=order.accession_number if order is not None else study.accession_number,
                facility_ae_title=facility.ae_title if facility else study.first_calling_ae_title,
                facility_name=(facility.name if facility else None) or study.institution_name,
                exam_state=study.exam_state,
                rendering_npi=radiologist.npi,
                rendering_name=radiologist.name,
                license_state=verdict.license.state,
                license_number=verdict.license.number,
                cpt_code=line.cpt_code,
                cpt_source=line.cpt_source,
                cpt_map_version=cpt_map.version if cpt_map is not None else None,
                modifier="26" if "26" in claim.modifiers else None,
                units=1,
                coder_review=bool(reasons),
                review_reason="; ".join(reasons) or None,
                date_of_service=day,
                interpreted_at=moment,
                recorded_at=now,
                **claim.columns(),
            )
            session.add(entry)
            entries.append(entry)
        assignment.completed_at = moment
        study.status = StudyStatus.COMPLETED
        session.flush()
        LOG.info(
            "read of study %s (accession %s) reported by NPI %s: %d professional record(s)",
            study.study_instance_uid,
            study.accession_number or "-",
            radiologist.npi,
            len(entries),
        )
        return CompletedRead(
            study_instance_uid=study.study_instance_uid,
            npi=radiologist.npi,
            date_of_service=day,
            entry_ids=tuple(entry.id for entry in entries),
            cpt_codes=tuple(entry.cpt_code for entry in entries),
        )

    def _billing_lines(self, study: Study, year: int) -> tuple[CptMap | None, list[BillingLine]]:
        """The map of the date-of-service year and the study's lines; without a map for that year
        every line goes to coder review with the file that was looked for."""
        cpt_map = self._reference.cpt_map_for_year(year)
        lines = resolve_billing_lines(
            study_procedure_codes(study),
            [item for item in (study.modalities or "").split("\\") if item],
            study.body_part,
            study.study_description,
            cpt_map if cpt_map is not None else CptMap(version=str(year), rows=()),
        )
        if cpt_map is not None:
            return cpt_map, lines
        missing = (
            f"no CPT map for date-of-service year {year} ({self._reference.year_file_name('cpt_map', year)} not found)"
        )
        return None, [
            replace(line, modifier=None, coder_review=True, review_reason=missing)
            if line.cpt_source is not CptSource.NONE
            else replace(line, review_reason=missing)
            for line in lines
        ]
