"""Report SR documents received by C-STORE: kept in the archive, applied as signed reports.

A Basic/Enhanced/Comprehensive SR (PS3.4 Table B.5-1) for a study already routed is a report
on that study, not a late image: the file is kept in the archive beside the study's images
(``<study>/<series>/<SOP Instance UID>.sr``) and a :class:`~router.db.models.Report` row records it (with the SOP Instance UID), in one
transaction with the report's effects (:class:`~router.services.reports.ReportService`).
It gets no instance row, so it is never forwarded to the reader and never re-opens routing.
An SR for a study the router does not know yet, or one still receiving, is an ordinary
instance (intake stores it as such).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from router.archive_backend import ArchiveBackend
from router.db.models import Report, Study
from router.domain.enums import ReportSource, StudyStatus
from router.domain.instance import InstanceHeader
from router.domain.orders import REPORT_SR_SOP_CLASSES, SrReportFacts, report_status_from_sr
from router.errors import IndexWriteError, first_line
from router.services.reports import ReportService, SignedReport
from router.timeutil import Clock, utcnow

LOG = logging.getLogger(__name__)

SrReader = Callable[[Path], SrReportFacts | None]


class SrReportIntake:
    """The intake hook for report SR documents (see :attr:`IntakeService.report_hook`)."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        archive: ArchiveBackend,
        reports: ReportService,
        read_facts: SrReader,
        clock: Clock = utcnow,
    ) -> None:
        self._sessions = sessions
        self._archive = archive
        self._reports = reports
        self._read_facts = read_facts
        self._clock = clock

    def __call__(self, header: InstanceHeader, temp_path: Path) -> bool:
        """Keep and apply ``temp_path`` if it is a report SR on a routed study.

        Returns
        -------
        bool
            True when handled (stored and recorded, or a copy already recorded); False when
            intake should store it as an ordinary instance.

        Raises
        ------
        ArchiveError
            The file could not be placed (answer 0xA700).
        IndexWriteError
            The database could not record it (answer 0xA701).
        """
        if header.sop_class_uid not in REPORT_SR_SOP_CLASSES:
            return False
        assert header.study_instance_uid and header.series_instance_uid and header.sop_instance_uid
        try:
            with self._sessions() as session:
                status = session.scalar(
                    select(Study.status).where(Study.study_instance_uid == header.study_instance_uid)
                )
                known = session.scalar(select(Report.id).where(Report.sop_instance_uid == header.sop_instance_uid))
        except SQLAlchemyError as exc:
            raise IndexWriteError(first_line(exc)) from exc
        if status is None or status == StudyStatus.RECEIVING:
            return False
        if known is not None:
            self._archive.remove_temp(temp_path)
            return True
        facts = self._read_facts(temp_path)
        if facts is None:
            return False
        report = SignedReport(
            source=ReportSource.DICOM_SR,
            status=report_status_from_sr(facts.verification_flag, facts.completion_flag, facts.has_predecessor),
            accession_number=header.accession_number,
            study_instance_uid=header.study_instance_uid,
            signer_id=facts.signer_id,
            signer_family=facts.signer_family,
            signer_given=facts.signer_given,
            signed_at=facts.verified_at,
            sop_instance_uid=header.sop_instance_uid,
        )
        # Beside the study's images with the suffix ``.sr``: recovery adopts only ``*.dcm``.
        relative = (
            self._archive.instance_relpath(
                header.study_instance_uid, header.series_instance_uid, header.sop_instance_uid
            ).removesuffix(".dcm")
            + ".sr"
        )
        self._archive.sync_temp(temp_path)
        try:
            with self._sessions.begin() as session:
                outcome = self._reports.apply(session, report, self._clock(), archive_path=relative)
                self._archive.place(temp_path, relative, replace=True, synced=True)
        except SQLAlchemyError as exc:
            raise IndexWriteError(first_line(exc)) from exc
        LOG.info("report SR %s kept: %s", header.sop_instance_uid, outcome)
        return True
