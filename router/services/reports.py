"""Signed reports (ORU^R01 over MLLP, DICOM SR by C-STORE): the read completes itself.

A final report signed by the radiologist the study is assigned to completes the read through
:meth:`router.services.reads.ReadService.complete_in` (the same path as ``router studies
complete``): eligibility re-checked on the signing date, professional records with date of
service = the signing date in the facility's time zone (CMS MLN SE17023). A preliminary report
bills nothing; a corrected report or addendum bills nothing again. A final report signed by
someone else, by a signer not on the roster, or by a reader not eligible that day is never
billed: the report is kept with the reason and the study is flagged for an admin.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from zoneinfo import ZoneInfo

from sqlalchemy import select
from sqlalchemy.orm import Session

from router.db.models import Assignment, Facility, Radiologist, Report, Study
from router.domain.enums import ReportOutcome, ReportSource, ReportStatus, StudyStatus
from router.domain.npi import is_valid_npi
from router.domain.orders import names_match
from router.errors import IneligibleError, RouterError, ValidationError
from router.services.claims import Diagnosis
from router.services.reads import ReadService
from router.services.routing import RoutingService

LOG = logging.getLogger(__name__)


class ReportRefused(RouterError):
    """The report cannot be taken (no such study, unreadable status): the sender is told why.

    ``unknown_key``: the report names an accession number (or study) the router does not know.
    """

    def __init__(self, reason: str, *, unknown_key: bool = False) -> None:
        super().__init__(reason)
        self.unknown_key = unknown_key


@dataclass(frozen=True)
class SignedReport:
    """A report as both sources give it."""

    source: ReportSource
    status: ReportStatus
    accession_number: str | None
    study_instance_uid: str | None  # SR: the study it belongs to
    signer_id: str  # NPI where sent
    signer_family: str
    signer_given: str
    signed_at: dt.datetime | None  # naive: the facility's local time
    sop_instance_uid: str | None = None
    # ORU DG1-3 / OBR-31 as sent; an SR report carries none (its coded findings are not ICD-10-CM)
    diagnoses: tuple[Diagnosis, ...] = ()


class ReportService:
    """Applies signed reports."""

    def __init__(self, reads: ReadService, routing: RoutingService) -> None:
        self._reads = reads
        self._routing = routing

    def apply(
        self,
        session: Session,
        report: SignedReport,
        now: dt.datetime,
        hl7_message_id: int | None = None,
        archive_path: str | None = None,
    ) -> str:
        """Record ``report`` and bill the read when it is a final report by the assigned reader.

        Runs in the caller's transaction. Returns what it did (UIDs, NPIs, no PHI).

        Raises
        ------
        ReportRefused
            No study with that accession number / Study Instance UID.
        """
        study = self._study(session, report)
        facility = session.get(Facility, study.facility_id) if study.facility_id else None
        signed_at = self._aware(report.signed_at, facility) if report.signed_at else now
        signer = self._signer(session, report)
        row = Report(
            source=report.source,
            accession_number=report.accession_number or study.accession_number,
            study_id=study.id,
            status=report.status,
            signer_npi=signer.npi if signer else (report.signer_id if is_valid_npi(report.signer_id) else None),
            signer_name=(
                signer.name if signer else "^".join(p for p in (report.signer_family, report.signer_given) if p)
            )[:200]
            or None,
            signed_at=signed_at,
            hl7_message_id=hl7_message_id,
            sop_instance_uid=report.sop_instance_uid,
            archive_path=archive_path,
            received_at=now,
        )
        outcome, reason = self._decide(session, study, report, signer, signed_at, row)
        row.outcome = outcome
        row.reason = reason
        if outcome == ReportOutcome.FLAGGED:
            study.needs_review = True
        session.add(row)
        session.flush()
        line = f"{report.status.value} report for study {study.study_instance_uid}: {outcome.value}" + (
            f" ({reason})" if reason else ""
        )
        log = LOG.warning if outcome == ReportOutcome.FLAGGED else LOG.info
        log("%s", line)
        return line

    def _study(self, session: Session, report: SignedReport) -> Study:
        statement = select(Study)
        if report.study_instance_uid:
            statement = statement.where(Study.study_instance_uid == report.study_instance_uid)
        elif report.accession_number:
            statement = statement.where(Study.accession_number == report.accession_number).order_by(Study.id)
        else:
            raise ReportRefused("report without an accession number or study")
        study = session.scalars(statement).first()
        if study is None:
            raise ReportRefused(
                f"no study with accession number {report.accession_number} (send the images first)", unknown_key=True
            )
        return study

    def _aware(self, moment: dt.datetime, facility: Facility | None) -> dt.datetime:
        if moment.tzinfo is not None:
            return moment
        zone = facility.timezone if facility is not None and facility.timezone else self._routing.policy.timezone
        return moment.replace(tzinfo=ZoneInfo(zone))

    def _signer(self, session: Session, report: SignedReport) -> Radiologist | None:
        if is_valid_npi(report.signer_id):
            return session.scalars(select(Radiologist).where(Radiologist.npi == report.signer_id)).one_or_none()
        if not report.signer_family:
            return None
        matches = [
            radiologist
            for radiologist in session.scalars(select(Radiologist).where(Radiologist.active.is_(True)))
            if names_match(radiologist.name, report.signer_family, report.signer_given)
        ]
        return matches[0] if len(matches) == 1 else None

    def _decide(
        self,
        session: Session,
        study: Study,
        report: SignedReport,
        signer: Radiologist | None,
        signed_at: dt.datetime,
        row: Report,
    ) -> tuple[ReportOutcome, str | None]:
        status = report.status
        if status == ReportStatus.PRELIMINARY:
            return ReportOutcome.NOT_BILLED, "preliminary report: billed when the final report is signed"
        if status == ReportStatus.CORRECTED:
            return ReportOutcome.NOT_BILLED, "corrected report or addendum: the read is billed once"
        if study.status == StudyStatus.COMPLETED:
            return ReportOutcome.NOT_BILLED, "the read is already completed and billed"
        assignment = session.scalar(
            select(Assignment).where(Assignment.study_id == study.id, Assignment.superseded_at.is_(None))
        )
        if assignment is None or study.status != StudyStatus.ASSIGNED:
            return ReportOutcome.FLAGGED, f"signed while the study has no open assignment (status {study.status.value})"
        assigned = session.get(Radiologist, assignment.radiologist_id)
        assert assigned is not None
        if signer is None:
            return ReportOutcome.FLAGGED, f"signer not identified on the roster (study assigned to NPI {assigned.npi})"
        if signer.id != assigned.id:
            return ReportOutcome.FLAGGED, f"signed by NPI {signer.npi}, but the study is assigned to NPI {assigned.npi}"
        try:
            with session.begin_nested():
                completed = self._reads.complete_in(session, study.study_instance_uid, signed_at, report.diagnoses)
        except (IneligibleError, ValidationError) as exc:
            return ReportOutcome.FLAGGED, f"not billed: {exc}"
        row.professional_entry_ids = list(completed.entry_ids)
        return ReportOutcome.BILLED, (
            f"{len(completed.entry_ids)} professional record(s), NPI {completed.npi}, DOS {completed.date_of_service.isoformat()}"
        )
