"""Completing a read: eligibility re-checked on the interpretation date, then the professional record.

The reading radiologist bills the professional component (CPT + modifier 26) once the read is
reported; the date of service is the interpretation date, Medicare's rule when the professional
component is billed separately (CMS MLN SE17023). One record per CPT code; the record names the
rendering NPI and the license relied on.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from router.db.models import Assignment, Facility, Order, ProfessionalEntry, Radiologist, Study
from router.db.queries import for_update, share_roster, study_by_uid
from router.domain.billing import resolve_billing_lines
from router.domain.enums import OrderStatus, ProfessionalEntryKind, StudyStatus
from router.domain.licensure import evaluate_reader
from router.errors import IneligibleError, ValidationError
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
        self, sessions: sessionmaker[Session], reference: ReferenceData, routing: RoutingService, clock: Clock = utcnow
    ) -> None:
        self._sessions = sessions
        self._reference = reference
        self._routing = routing
        self._clock = clock

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
        self, session: Session, study_instance_uid: str, interpreted_at: dt.datetime | None = None
    ) -> CompletedRead:
        """:meth:`complete` inside the caller's transaction (a signed report's message commits with it).

        Nothing is written when it raises (the checks come first). Raises as :meth:`complete`.
        """
        now = self._clock()
        moment = interpreted_at or now
        if moment.tzinfo is None:
            raise ValidationError("interpretation time must carry a time zone")
        if moment > now + dt.timedelta(minutes=5):
            raise ValidationError("interpretation time is in the future")
        study = session.scalars(
            for_update(select(Study).where(Study.study_instance_uid == study_instance_uid), session)
        ).one_or_none()
        if study is None:
            study_by_uid(session, study_instance_uid)
            raise AssertionError  # pragma: no cover
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
        cpt_map = self._reference.cpt_map()
        lines = resolve_billing_lines(
            study_procedure_codes(study),
            [item for item in (study.modalities or "").split("\\") if item],
            study.body_part,
            study.study_description,
            cpt_map,
        )
        entries = []
        for line in lines:
            entry = ProfessionalEntry(
                kind=ProfessionalEntryKind.CHARGE,
                study_id=study.id,
                assignment_id=assignment.id,
                study_instance_uid=study.study_instance_uid,
                accession_number=study.accession_number,
                facility_ae_title=facility.ae_title if facility else study.first_calling_ae_title,
                facility_name=(facility.name if facility else None) or study.institution_name,
                exam_state=study.exam_state,
                rendering_npi=radiologist.npi,
                rendering_name=radiologist.name,
                license_state=verdict.license.state,
                license_number=verdict.license.number,
                cpt_code=line.cpt_code,
                cpt_source=line.cpt_source,
                cpt_map_version=cpt_map.version,
                modifier=line.modifier,
                units=1,
                coder_review=line.coder_review,
                review_reason=line.review_reason,
                date_of_service=day,
                interpreted_at=moment,
                recorded_at=now,
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
