"""The main job end to end: real C-STORE in, routed to a licensed reader, both ledgers written."""

from __future__ import annotations

import datetime as dt
import os
import re
import time
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from pydicom import dcmread
from sqlalchemy import select

from router.db.models import Assignment, InfrastructureEntry, Instance, License, ProfessionalEntry, Radiologist, Study
from router.domain.enums import ExamStateSource, HoldReason, InfrastructureKind, LicenseStatus, StudyStatus
from router.domain.infra_cost import days_in_month, next_month
from router.errors import IneligibleError
from router.server import RouterServer
from router.services.accrual import AccrualService
from router.services.studies import StudyViews
from tests.conftest import DEMO_CONFIG, SAMPLES
from tests.dicom_helpers import make_dataset, send_paths, write_part10

pytestmark = pytest.mark.network

EXPECTED = {
    # case folder: (status after routing, exam state, source, hold reason)
    "facility_tx": (StudyStatus.ASSIGNED, "TX", ExamStateSource.FACILITY, None),
    "institution_address_ok": (StudyStatus.ASSIGNED, "OK", ExamStateSource.INSTITUTION_ADDRESS, None),
    # the patient's residence alone is provisional and off by default (issue 13): held for an admin
    "patient_address_hl7": (StudyStatus.HELD, None, None, HoldReason.NO_EXAM_STATE),
    "patient_address_zip4": (StudyStatus.HELD, None, None, HoldReason.NO_EXAM_STATE),
    "territory_pr": (StudyStatus.HELD, "PR", ExamStateSource.INSTITUTION_ADDRESS, HoldReason.NO_ELIGIBLE_RADIOLOGIST),
    "conflict_ok_tx": (StudyStatus.ASSIGNED, "OK", ExamStateSource.INSTITUTION_ADDRESS, None),
    "no_state": (StudyStatus.HELD, None, None, HoldReason.NO_EXAM_STATE),
    "mammo_wy": (StudyStatus.ASSIGNED, "WY", ExamStateSource.INSTITUTION_ADDRESS, None),
}


def _load_demo_roster(server: RouterServer) -> None:
    server.app.roster.load_demo(
        (DEMO_CONFIG / "facilities.csv").read_text(),
        (DEMO_CONFIG / "roster.csv").read_text(),
        (DEMO_CONFIG / "radiologists.csv").read_text(),
        "tester",
    )


def _wait_routed(server: RouterServer, count: int, timeout: float = 20.0) -> list[Study]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with server.app.sessions() as session:
            studies = list(session.scalars(select(Study)))
        if len(studies) >= count and all(study.status != StudyStatus.RECEIVING for study in studies):
            return studies
        time.sleep(0.1)
    raise AssertionError("studies were not routed in time")


def _case_of(files: list[Path]) -> str:
    return str(dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)


def test_samples_are_routed_to_licensed_readers_and_billed_apart(server: RouterServer) -> None:
    _load_demo_roster(server)
    cases = {}
    for ae_dir in sorted(SAMPLES.iterdir()):
        if not ae_dir.is_dir():
            continue
        for case_dir in sorted(ae_dir.iterdir()):
            files = sorted(case_dir.glob("*.dcm"))
            if not files:
                continue
            assert send_paths(server.ports[0], files, calling_ae=ae_dir.name) == [0x0000] * len(files)
            cases[_case_of(files)] = (case_dir.name, len(files), sum(f.stat().st_size for f in files))
    studies = _wait_routed(server, len(EXPECTED))
    assert len(studies) == len(EXPECTED)
    app = server.app
    with app.sessions() as session:
        for study in studies:
            case, instances, _ = cases[study.study_instance_uid]
            status, state, source, hold = EXPECTED[case]
            assert (study.status, study.exam_state, study.exam_state_source, study.hold_reason) == (
                status,
                state,
                source,
                hold,
            ), case
            assert study.instance_count == instances
            if status != StudyStatus.ASSIGNED:
                assert session.scalar(select(Assignment).where(Assignment.study_id == study.id)) is None
                continue
            assignment = session.scalars(select(Assignment).where(Assignment.study_id == study.id)).one()
            # Never to someone not eligible: the license relied on is active, in the exam state,
            # and covers today.
            license_row = session.get(License, assignment.license_id)
            assert license_row is not None and license_row.state == state == assignment.license_state
            assert license_row.status == LicenseStatus.ACTIVE
            assert license_row.expires >= dt.date.today()
            if case == "mammo_wy":
                assert session.get(Radiologist, assignment.radiologist_id).mqsa_qualified
            if case == "conflict_ok_tx":  # the patient's TX residence is not read (use_patient_address off)
                assert study.location_conflicts is None
        # storage is not charged when routed: it accrues per month held
        assert session.scalar(select(InfrastructureEntry)) is None
    # accrued as if this month were over: one record per study, for exactly the bytes stored
    # from the day received to the month's end, at the configured rate per GiB-month
    today = dt.datetime.now(dt.UTC).date()
    month_over = dt.datetime.combine(next_month(today), dt.time(0), tzinfo=dt.UTC)
    assert AccrualService(app.sessions, app.accrual.policy, lambda: month_over).accrue().written == len(EXPECTED)
    with app.sessions() as session:
        by_study = {entry.study_instance_uid: entry for entry in session.scalars(select(InfrastructureEntry))}
    for study in studies:
        entry = by_study[study.study_instance_uid]
        held_days = (next_month(today) - study.first_received_at.date()).days
        assert (entry.kind, entry.size_bytes, entry.quantity) == (
            InfrastructureKind.STORAGE,
            study.size_bytes,
            study.size_bytes * held_days,
        )
        assert entry.rate_microcents == 2_300_000 and entry.unit_quantity == 2**30 * days_in_month(today)
        assert entry.client_ae_title == study.first_calling_ae_title  # the demo facilities are keyed by AE
    # no professional record before the read is reported
    with app.sessions() as session:
        assert session.scalar(select(ProfessionalEntry)) is None
    facility_study = next(s for s in studies if cases[s.study_instance_uid][0] == "facility_tx")
    done = app.reads.complete(facility_study.study_instance_uid)
    assert done.cpt_codes == ("71260",)
    with app.sessions() as session:
        (entry,) = session.scalars(select(ProfessionalEntry))
        assert (entry.cpt_code, entry.modifier, entry.cpt_source.value, entry.exam_state) == (
            "71260",
            "26",
            "procedure_code_sequence",
            "TX",
        )
        assert entry.rendering_npi == done.npi and entry.license_state == "TX"
        assert entry.accession_number == facility_study.accession_number
        assert entry.facility_ae_title == "CT_NORTH"
        # the facility is in America/Chicago: the date of service is the interpretation day there
        assert entry.date_of_service == dt.datetime.now(ZoneInfo("America/Chicago")).date()
        assert session.get(Study, facility_study.id).status == StudyStatus.COMPLETED
    with pytest.raises(IneligibleError, match="already completed"):
        app.reads.complete(facility_study.study_instance_uid)


def test_late_instance_joins_the_assignment_and_accrues_with_the_study(server: RouterServer, tmp_path: Path) -> None:
    _load_demo_roster(server)
    study_uid = "1.2.826.0.1.3680043.10.777.1"
    first = [write_part10(make_dataset(StudyInstanceUID=study_uid), tmp_path / f"a{i}.dcm") for i in range(2)]
    assert send_paths(server.ports[0], first, calling_ae="CT_NORTH") == [0, 0]
    (study,) = _wait_routed(server, 1)
    assert study.status == StudyStatus.ASSIGNED
    late = write_part10(make_dataset(StudyInstanceUID=study_uid), tmp_path / "late.dcm")
    assert send_paths(server.ports[0], [late], calling_ae="CT_NORTH") == [0]
    _wait_routed(server, 1)  # quiet again: the late instance joined the assignment
    # the month's accrual counts the late instance with the others, in the study's one record
    month_over = dt.datetime.combine(next_month(dt.datetime.now(dt.UTC).date()), dt.time(0), tzinfo=dt.UTC)
    AccrualService(server.app.sessions, server.app.accrual.policy, lambda: month_over).accrue()
    with server.app.sessions() as session:
        records = list(session.scalars(select(InfrastructureEntry)))
        assignments = list(session.scalars(select(Assignment)))
        paths = list(session.scalars(select(Instance.relative_path)))
    assert [(r.kind, r.instance_count, r.client_ae_title) for r in records] == [
        (InfrastructureKind.STORAGE, 3, "CT_NORTH")
    ]
    assert records[0].size_bytes == sum(server.app.archive.path(path).stat().st_size for path in paths)
    assert len(assignments) == 1  # same reader, no second assignment
    server.app.reads.complete(study_uid)
    with server.app.sessions() as session:
        assert len(list(session.scalars(select(ProfessionalEntry)))) == 1


def test_studies_views_report_the_required_json_fields(server: RouterServer) -> None:
    _load_demo_roster(server)
    files = sorted((SAMPLES / "MODALITY1").glob("*/*.dcm"))
    assert send_paths(server.ports[0], files, calling_ae="MODALITY1") == [0] * len(files)
    _wait_routed(server, 1)
    views = StudyViews(server.app.sessions, server.app.routing)
    (row,) = views.list()
    for key in (
        "study_instance_uid",
        "status",
        "hold_reason",
        "exam_state",
        "exam_state_source",
        "assigned_npi",
        "instance_count",
    ):
        assert key in row
    assert (row["status"], row["hold_reason"], row["exam_state"], row["assigned_npi"]) == (
        "held",
        "no_exam_state",
        None,
        None,
    )
    assert row["first_received_at"].endswith("Z")
    # the admin fixes it: manual state, then routed to the TX reader with fewest open reads
    result = server.app.routing.set_state(row["study_instance_uid"], "TX", "tester")
    assert result.status == StudyStatus.ASSIGNED and result.exam_state_source == ExamStateSource.MANUAL
    shown = views.show(row["study_instance_uid"])
    assert shown["exam_state"] == "TX" and shown["exam_state_source"] == "manual"
    decision = shown["decisions"][-1]
    assert decision["trigger"] == "manual_state"
    # both TX readers are idle; the policy's tie-break (never assigned, then lowest NPI) picks
    # 1000000012, evaluated first; 1000000020 ranks after it and is recorded as not evaluated
    by_npi = {c["npi"]: c for c in decision["candidates"]}
    assert by_npi["1000000012"]["eligible"] is True and "1000000020" not in by_npi
    assert decision["not_evaluated_npis"] == ["1000000020"]
    # Casey's TX license expired: settled from the license row with the rules' own words
    assert by_npi["1000000038"]["eligible"] is False
    assert by_npi["1000000038"]["reasons"] == ["license TX-TXSYN-10038 expired"]
    explained = views.explain(row["study_instance_uid"])
    assert {v["npi"] for v in explained["radiologists"] if v["eligible"]} == {"1000000012", "1000000020"}


def test_demo_command_runs_the_main_job_and_refuses_a_used_data_dir(tmp_path: Path) -> None:
    """The README's first quick-start command, as a real process (8 sample studies)."""
    import subprocess
    import sys

    data_dir = tmp_path / "demo"
    env = {**os.environ, "COLUMNS": "250"}
    result = subprocess.run(
        [sys.executable, "-m", "router", "demo", "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        timeout=240,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assignments = result.stdout.split("Hold reasons")[0].split("Assignments")[1]
    rows = {
        cells[0]: cells[2] for line in assignments.splitlines() if len(cells := re.split(r"\s{2,}", line.strip())) > 5
    }
    rows.pop("case")  # the header
    assert rows == {
        "conflict ok tx": "completed",
        "facility tx": "completed",
        "institution address ok": "completed",
        "mammo wy": "completed",
        "no state": "HELD",
        "patient address hl7": "HELD",
        "patient address zip4": "HELD",
        "territory pr": "HELD",
    }
    assert "Professional ledger" in result.stdout and "Infrastructure ledger" in result.stdout
    assert "sent 19 instance(s) of 8 stud(ies)" in result.stderr
    # No read is completed by hand: the four assigned studies are billed from their signed reports (ORU^R01).
    assert "sent 8 order(s) over MLLP" in result.stderr
    assert "sent 4 final signed report(s) over MLLP" in result.stderr
    ledger = result.stdout.split("Professional ledger")[1].split("Infrastructure ledger")[0]
    billed = {
        cells[1]: tuple(cells[2:6])
        for line in ledger.splitlines()
        if len(cells := re.split(r"\s{2,}", line.strip())) >= 7 and cells[1].startswith("SYNACC")
    }
    # claim lines from config/demo/orders.csv (PV1-2 class -> POS, DG1 ICD-10-CM) and the placeholder fee schedule
    assert billed == {
        "SYNACC0001": ("71260-26", "23", "R07.9 R06.02", "9000"),
        "SYNACC0002": ("71046-26", "22", "R05.9", "2500"),
        "SYNACC0006": ("74177-26", "23", "R10.31", "9000"),
        "SYNACC0008": ("77067-26", "22", "Z12.31", "4500"),
    }
    exported = subprocess.run(
        [sys.executable, "-m", "router", "--data-dir", str(data_dir), "ledger", "export", "--format", "x12-837p-lines"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert exported.returncode == 0 and exported.stderr == "", exported.stderr
    assert sorted(line for line in exported.stdout.splitlines() if line.startswith("SV1*")) == [
        "SV1*HC:71046:26*25*UN*1*22**1~",
        "SV1*HC:71260:26*90*UN*1*23**1:2~",
        "SV1*HC:74177:26*90*UN*1*23**1~",
        "SV1*HC:77067:26*45*UN*1*22**1~",
    ]
    renderings = [line for line in exported.stdout.splitlines() if line.startswith("NM1*82*")]
    assert sorted(renderings) == ["NM1*82*1*READER*AVERY****XX*1000000012~"] * 3 + [
        "NM1*82*1*READER*DEVON****XX*1000000046~"
    ]
    # the demo leaves a config beside its data: later commands bill with the same sample group
    config = data_dir / "router.toml"
    assert f"explore further: router --config {config} studies list" in result.stderr
    assert 'group_npi = "' in config.read_text() and (config.stat().st_mode & 0o077) == 0
    for args in (["demo", "--data-dir", str(data_dir)], ["--data-dir", str(data_dir), "demo"]):  # either place
        again = subprocess.run([sys.executable, "-m", "router", *args], capture_output=True, text=True, timeout=60)
        assert again.returncode == 1
        assert again.stderr.strip().splitlines() == [
            f"error: --data-dir {data_dir} is not empty: the demo loads a sample roster and bills sample reads, so it only runs in a new or empty folder"
        ]
