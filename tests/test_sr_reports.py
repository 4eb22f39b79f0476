"""A report SR (pydicom's test-SR.dcm, Comprehensive SR) received by C-STORE completes the read.

The SR is kept in the archive and recorded as a report; it is never indexed as a late image, so
it is never forwarded and never re-opens routing. SQLite and, with ROUTER_TEST_DATABASE_URL,
PostgreSQL.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

import pytest
from dicom_helpers import make_dataset, pydicom_file, send_datasets
from hl7_helpers import wait_for
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from roster_fixtures import NPI_A, roster_with_readers
from sqlalchemy import func, select

from router.config import Settings
from router.db.models import Instance, ProfessionalEntry, Report, Study
from router.domain.enums import ReportOutcome, ReportSource, ReportStatus, StudyStatus
from router.server import RouterServer
from tests.conftest import running_router

pytestmark = pytest.mark.network


@pytest.fixture
def server(settings: Settings) -> Iterator[RouterServer]:
    with running_router(settings) as router_server:
        yield router_server


def _assigned(server: RouterServer, accession: str) -> str:
    ds = make_dataset(AccessionNumber=accession)
    (status,) = send_datasets(server.ports[0], [ds], calling_ae="CT_NORTH")
    assert status.Status == 0
    uid = str(ds.StudyInstanceUID)

    def assigned() -> bool:
        with server.app.sessions() as session:
            study = session.scalars(select(Study).where(Study.study_instance_uid == uid)).one_or_none()
            return study is not None and study.status == StudyStatus.ASSIGNED

    wait_for(assigned)
    return uid


def _sr(study_uid: str, accession: str, npi: str, signed: dt.datetime, flag: str = "VERIFIED") -> Dataset:
    """pydicom's Comprehensive SR, re-identified into our study and signed by ``npi``."""
    ds = dcmread(pydicom_file("test-SR.dcm"))
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = generate_uid()
    ds.SOPInstanceUID = generate_uid()
    ds.AccessionNumber = accession
    ds.VerificationFlag = flag
    ds.CompletionFlag = "COMPLETE"
    del ds.PredecessorDocumentsSequence  # the sample is itself an amended document
    observer = ds.VerifyingObserverSequence[-1]  # the last verifier is the signer
    observer.VerifyingObserverName = "Reader^Avery"
    observer.VerificationDateTime = signed.strftime("%Y%m%d%H%M%S+0000")
    code = Dataset()
    observer.VerifyingObserverIdentificationCodeSequence = [code]
    code.CodeValue = npi
    code.CodingSchemeDesignator = "NPI"
    code.CodeMeaning = "National Provider Identifier"
    return ds


def test_final_sr_bills_the_read_and_is_not_a_late_image(server: RouterServer) -> None:
    roster_with_readers(server.app, (NPI_A, "TX"))
    uid = _assigned(server, "ACC-SR-1")
    signed = dt.datetime.now(dt.UTC).replace(microsecond=0) - dt.timedelta(minutes=2)
    preliminary = _sr(uid, "ACC-SR-1", NPI_A, signed, flag="UNVERIFIED")
    assert [s.Status for s in send_datasets(server.ports[0], [preliminary], calling_ae="REPORTS")] == [0]
    with server.app.sessions() as session:
        assert session.scalars(select(ProfessionalEntry)).all() == []
    final = _sr(uid, "ACC-SR-1", NPI_A, signed)
    assert [s.Status for s in send_datasets(server.ports[0], [final], calling_ae="REPORTS")] == [0]
    with server.app.sessions() as session:
        (entry,) = session.scalars(select(ProfessionalEntry)).all()
        reports = session.scalars(select(Report).order_by(Report.id)).all()
        study = session.scalars(select(Study).where(Study.study_instance_uid == uid)).one()
        instances = session.scalar(select(func.count()).select_from(Instance).where(Instance.study_id == study.id))
    assert (entry.rendering_npi, entry.date_of_service, entry.interpreted_at) == (NPI_A, signed.date(), signed)
    assert study.status == StudyStatus.COMPLETED
    assert [(r.source, r.status, r.outcome, r.signer_npi) for r in reports] == [
        (ReportSource.DICOM_SR, ReportStatus.PRELIMINARY, ReportOutcome.NOT_BILLED, NPI_A),
        (ReportSource.DICOM_SR, ReportStatus.FINAL, ReportOutcome.BILLED, NPI_A),
    ]
    assert instances == 1  # the SRs are reports, not late images: nothing to forward, no re-routing
    assert reports[1].archive_path is not None
    kept = dcmread(server.app.archive.path(reports[1].archive_path))
    assert kept.SOPInstanceUID == final.SOPInstanceUID
    # The same SR again is a duplicate; an addendum (PredecessorDocumentsSequence) bills nothing again.
    assert [s.Status for s in send_datasets(server.ports[0], [final], calling_ae="REPORTS")] == [0]
    addendum = _sr(uid, "ACC-SR-1", NPI_A, signed)
    reference = Dataset()
    reference.StudyInstanceUID = uid
    addendum.PredecessorDocumentsSequence = [reference]
    assert [s.Status for s in send_datasets(server.ports[0], [addendum], calling_ae="REPORTS")] == [0]
    with server.app.sessions() as session:
        assert len(session.scalars(select(ProfessionalEntry)).all()) == 1
        statuses = [r.status for r in session.scalars(select(Report).order_by(Report.id))]
    assert statuses == [ReportStatus.PRELIMINARY, ReportStatus.FINAL, ReportStatus.CORRECTED]
