"""Corrections to the professional ledger: voids (claim frequency 8), replacements (7), audit.

In-process on a migrated database (SQLite, and PostgreSQL with ROUTER_TEST_DATABASE_URL); the
CLI commands run through click's runner against the same database.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest
import test_claims
from click.testing import CliRunner
from hl7_helpers import REFERRING_NPI
from roster_fixtures import NPI_A, NPI_B, OS_USER, add_study, audit_rows, study_state
from sqlalchemy import select
from test_claims import SIGNED, final_report, obr, order, read, roster

from router.app import RouterApp
from router.cli import cli
from router.config import Settings
from router.db.models import ProfessionalEntry
from router.domain.enums import CorrectionReason, ProfessionalEntryKind, StudyStatus
from router.errors import ConflictError, IneligibleError, NotFoundError, ValidationError
from router.services.claim_export import claim_export
from tests.conftest import FakeClock

UID = "1.2.826.0.1.3680043.10.1.1"
ACCESSION = "ACC-CORR-1"


# test_claims' fixture: a router app with a billing group NPI and TIN, on the fake clock (assigned,
# not imported: an imported name shadowed by the tests' ``app`` parameters trips the linter)
app = test_claims.app


def _billed(app: RouterApp, clock: FakeClock, codes: tuple[str, ...] = ("71260",)) -> None:
    """Study UID from CT_NORTH (TX) ordered with ``codes`` (an ER order with a referring NPI and
    a diagnosis), routed to NPI_A (NPI_B is licensed too) and billed from NPI_A's final report."""
    roster(app)
    app.roster.radiologists.add(NPI_B, "Reader^Blake", OS_USER)
    app.roster.licenses.add(NPI_B, "TX", "TX-0002", dt.date(2028, 6, 30), OS_USER, issued=dt.date(2020, 1, 1))
    obrs = [
        obr(index, ACCESSION, f"{code}^Procedure^C4", f"{REFERRING_NPI}^Refer^Rita", "R07.9^Chest pain^I10")
        for index, code in enumerate(codes, start=1)
    ]
    report = final_report(ACCESSION, "RPT-1", NPI_A, SIGNED)
    read(app, clock, UID, ACCESSION, order(ACCESSION, "ORD-1", obrs, patient_class="E"), report)


def _ledger(app: RouterApp) -> list[ProfessionalEntry]:
    with app.sessions() as session:
        return list(session.scalars(select(ProfessionalEntry).order_by(ProfessionalEntry.id)))


def _net(app: RouterApp) -> dict[tuple[str | None, str | None], int]:
    """Units per (CPT, modifier) standing after reversals: what a claim would carry."""
    out: dict[tuple[str | None, str | None], int] = {}
    for entry in _ledger(app):
        sign = 1 if entry.kind == ProfessionalEntryKind.CHARGE else -1
        key = (entry.cpt_code, entry.modifier)
        out[key] = out.get(key, 0) + sign * entry.units
    return {key: units for key, units in out.items() if units}


def test_a_coding_correction_writes_a_void_and_a_replacement_and_is_audited(app: RouterApp, clock: FakeClock) -> None:
    _billed(app, clock)
    (charge,) = _ledger(app)
    assert (charge.cpt_code, charge.modifiers, charge.charge_cents, charge.coder_review) == (
        "71260",
        ["26"],
        9000,
        False,
    )
    assert (charge.claim_frequency, charge.replaces_id) == ("1", None)
    done = app.corrections.correct(
        charge.id, CorrectionReason.CORRECTED_CODING, "coder", cpt="73030", modifiers=["RT"], note="shoulder, right"
    )
    original, reversal, replacement = _ledger(app)
    assert done.reversal_ids == (reversal.id,) and done.replacement_ids == (replacement.id,)
    assert (reversal.kind, reversal.reverses_id, reversal.claim_frequency) == (
        ProfessionalEntryKind.REVERSAL,
        charge.id,
        "8",
    )
    # the reversal nets the charge exactly: same code, modifiers, units and charge
    assert (reversal.cpt_code, reversal.modifiers, reversal.units, reversal.charge_cents) == ("71260", ["26"], 1, 9000)
    assert (replacement.kind, replacement.claim_frequency, replacement.replaces_id) == (
        ProfessionalEntryKind.CHARGE,
        "7",
        charge.id,
    )
    # repriced from fee_schedule_2026.csv (73030-26: 2500 cents, placeholder), 26 from the 2026 map
    assert (
        replacement.cpt_code,
        replacement.modifier,
        replacement.modifiers,
        replacement.charge_cents,
        replacement.fee_schedule_version,
        replacement.cpt_map_version,
    ) == ("73030", "26", ["26", "RT"], 2500, "2026", "2026")
    assert (replacement.correction_reason, replacement.correction_note, replacement.coder_review) == (
        "corrected_coding",
        "shoulder, right",
        False,
    )
    # everything else is the original's: reader, license, dates, accession, claim fields
    for column in (
        "rendering_npi",
        "license_state",
        "license_number",
        "date_of_service",
        "assignment_id",
        "exam_state",
        "accession_number",
        "place_of_service",
        "diagnosis_codes",
        "diagnosis_pointers",
        "referring_npi",
        "billing_npi",
        "billing_tin",
        "exam_date",
    ):
        assert getattr(replacement, column) == getattr(original, column), column
    assert _net(app) == {("73030", "26"): 1}
    # the export sends the claim again as a replacement (CLM05-3 7) with the line that stands
    exported = claim_export(app.ledgers)
    assert [[line["id"] for line in group] for _, _, group in exported.groups] == [[replacement.id]]
    text = exported.x12_lines()
    assert text[2].startswith(f"# claim accession {ACCESSION} DOS 2026-11-29 CLM05-3 7 (replacement of the claim")
    assert "SV1*HC:73030:26:RT*25*UN*1*23**1~" in text
    action, key, user, old, new = audit_rows(app)[-1]
    assert (action, key, user) == ("ledger.correct", str(charge.id), "coder")
    # only what changed (map and fee schedule versions are 2026 both times)
    assert old == {"cpt_code": "71260", "modifiers": ["26"], "charge_cents": 9000, "coder_review": False}
    assert new["cpt_code"] == "73030" and new["modifiers"] == ["26", "RT"] and new["charge_cents"] == 2500
    assert (new["reason"], new["reversal_id"], new["replacement_id"], new["note"]) == (
        "corrected_coding",
        reversal.id,
        replacement.id,
        "shoulder, right",
    )


def test_a_charge_is_corrected_once_and_a_reversal_never(app: RouterApp, clock: FakeClock) -> None:
    _billed(app, clock)
    (charge,) = _ledger(app)
    app.corrections.correct(charge.id, CorrectionReason.CORRECTED_CODING, "coder", units=2)
    assert (_ledger(app)[2].units, _ledger(app)[2].charge_cents) == (2, 18000)  # 2 x 9000
    with pytest.raises(ConflictError, match="already reversed"):
        app.corrections.correct(charge.id, CorrectionReason.CORRECTED_CODING, "coder", units=3)
    reversal = _ledger(app)[1]
    with pytest.raises(ValidationError, match="is a reversal"):
        app.corrections.void(reversal.id, CorrectionReason.WRONG_PATIENT, "coder")
    with pytest.raises(NotFoundError):
        app.corrections.void(999, CorrectionReason.WRONG_PATIENT, "coder")
    replacement = _ledger(app)[2]
    refused = (
        ({"units": 2}, "nothing to correct"),
        ({}, "nothing to correct"),
        ({"modifiers": ["ZZ"]}, "not one of"),
        ({"modifiers": ["TC"]}, "the arrangement decides 26"),
        ({"modifiers": ["GT"]}, "telehealth modifier"),
        ({"modifiers": ["LT", "RT"]}, "contradict"),
        ({"cpt": "7126"}, "CPT"),
        ({"cpt": "99999"}, "not in the CPT map 2026"),
        ({"place_of_service": "02"}, "telehealth POS"),
        ({"diagnoses": ["chest pain"]}, "not an ICD-10-CM code"),
        ({"referring_npi": "1234567890"}, "NPI"),
        ({"units": 0}, "between 1 and 99"),
    )
    for change, message in refused:
        with pytest.raises(ValidationError, match=message):
            app.corrections.correct(replacement.id, CorrectionReason.CORRECTED_CODING, "coder", **change)
    assert len(_ledger(app)) == 3  # nothing written by the refused ones


def test_a_line_held_for_coder_review_is_approved_as_an_original(app: RouterApp, clock: FakeClock) -> None:
    _billed(app, clock, codes=("99999",))  # a well-formed code the CPT map does not know: coder review
    (held,) = _ledger(app)
    assert (held.cpt_code, held.modifier, held.coder_review) == ("99999", None, True)
    with pytest.raises(ValidationError, match="not in the CPT map"):
        app.corrections.correct(held.id, CorrectionReason.CODER_APPROVED, "coder")
    app.corrections.correct(held.id, CorrectionReason.CODER_APPROVED, "coder", cpt="71260", diagnoses=["R91.8"])
    _, reversal, approved = _ledger(app)
    # the held line was never on a claim: its reversal stays in review, the approval is an original
    assert (reversal.claim_frequency, reversal.coder_review) == ("8", True)
    assert (
        approved.cpt_code,
        approved.modifiers,
        approved.charge_cents,
        approved.diagnosis_codes,
        approved.diagnosis_source,
        approved.claim_frequency,
        approved.coder_review,
    ) == ("71260", ["26"], 9000, ["R91.8"], None, "1", False)
    assert approved.review_reason is None and approved.replaces_id == held.id
    with pytest.raises(ValidationError, match="not held for coder review"):
        app.corrections.correct(approved.id, CorrectionReason.CODER_APPROVED, "coder")


def test_void_study_for_wrong_patient_and_merge(app: RouterApp, clock: FakeClock) -> None:
    _billed(app, clock, codes=("71260", "74177"))
    first, second = _ledger(app)
    done = app.corrections.void_study(UID, CorrectionReason.WRONG_PATIENT, "admin", note="filed under MRN 2")
    reversals = _ledger(app)[2:]
    assert done.reversal_ids == tuple(item.id for item in reversals)
    assert [(item.reverses_id, item.claim_frequency, item.correction_reason) for item in reversals] == [
        (first.id, "8", "wrong_patient"),
        (second.id, "8", "wrong_patient"),
    ]
    assert _net(app) == {}
    assert study_state(app, UID)["needs_review"] is True
    with pytest.raises(ValidationError, match="no charge to void"):
        app.corrections.void_study(UID, CorrectionReason.STUDY_MERGED, "admin")
    with pytest.raises(ValidationError, match="not a void"):
        app.corrections.void_study(UID, CorrectionReason.CORRECTED_CODING, "admin")
    assert audit_rows(app)[-1][:3] == ("ledger.void", UID, "admin")


def test_a_reassigned_read_is_voided_and_billed_once_by_the_new_reader(app: RouterApp, clock: FakeClock) -> None:
    _billed(app, clock)
    assert len(_ledger(app)) == 1
    done = app.corrections.void_study(UID, CorrectionReason.READ_REASSIGNED, "admin")
    assert done.rerouted_to == NPI_B
    state = study_state(app, UID)
    assert state["status"] == StudyStatus.ASSIGNED and state["current_npi"] == NPI_B
    assert state["assignments"][0][:2] == (NPI_A, True)
    app.reads.complete(UID)
    entries = _ledger(app)
    assert [(item.kind, item.rendering_npi, item.claim_frequency) for item in entries] == [
        (ProfessionalEntryKind.CHARGE, NPI_A, "1"),
        (ProfessionalEntryKind.REVERSAL, NPI_A, "8"),
        (ProfessionalEntryKind.CHARGE, NPI_B, "1"),
    ]
    assert _net(app) == {("71260", "26"): 1}  # one charge per interpretation
    assert entries[2].charge_cents == 9000 and entries[2].place_of_service == "23"
    with pytest.raises(IneligibleError, match="already completed"):
        app.reads.complete(UID)


def test_ledger_cli_correct_and_void(app: RouterApp, clock: FakeClock, settings: Settings, tmp_path: Path) -> None:
    _billed(app, clock, codes=("71260", "74177"))
    first, second = _ledger(app)
    config = tmp_path / "cli.toml"
    config.write_text(f'[paths]\ndata_dir = "{settings.paths.data_dir}"\n[database]\nurl = "{settings.database_url}"\n')
    runner = CliRunner()

    def run(*args: str) -> tuple[int, str]:
        result = runner.invoke(cli, ["--config", str(config), *args], catch_exceptions=False)
        return result.exit_code, result.stdout if result.exit_code == 0 else result.stderr

    code, out = run("ledger", "correct", str(first.id), "--modifier", "59", "--note", "distinct procedure")
    assert code == 0, out
    assert out.strip() == f"study {UID}: corrected_coding: wrote reversal(s) 3 and replacement charge(s) 4"
    code, out = run("ledger", "void", str(second.id), "--reason", "study-merged")
    assert code == 0 and out.strip() == f"study {UID}: study_merged: wrote reversal(s) 5"
    assert [item.modifiers for item in _ledger(app)] == [["26"], ["26"], ["26"], ["26", "59"], ["26"]]
    assert _net(app) == {("71260", "26"): 1}
    for args, message in (
        (("ledger", "void", "--reason", "wrong-patient"), "give either a ledger record id or --study UID"),
        (("ledger", "void", "4", "--reason", "read-reassigned"), "use --study UID"),
        (("ledger", "correct", "4", "--modifier", "LT", "--no-modifiers"), "choose one of --modifier"),
        (("ledger", "correct", "4", "--pos", "10"), "telehealth POS"),
        (("ledger", "correct", "3", "--units", "2"), "ledger record 3 is a reversal"),
        (("ledger", "correct", "77", "--units", "2"), "no professional ledger record 77"),
        (("ledger", "void", "--study", "9.9", "--reason", "wrong-patient"), "9.9"),
    ):
        code, out = run(*args)
        assert code != 0 and message in out, (args, out)
        assert "Traceback" not in out
    # a UID shortened as tables show it is taken when exactly one study ends that way
    add_study(app, "1.2.840.99.10.1.1")
    code, out = run("studies", "show", "…3680043.10.1.1", "--json")
    assert code == 0 and f'"study_instance_uid": "{UID}"' in out
    for short, message in (
        ("...10.1.1", "several study UIDs end with 10.1.1"),
        ("...777", "no study UID ends with 777"),
    ):
        code, out = run("studies", "explain", short)
        assert code == 1 and message in out and len(out.strip().splitlines()) == 1, out
    code, out = run("ledger", "void", "--study", "...10.1.1", "--reason", "wrong-patient")
    assert code != 0 and "several study UIDs end with" in out
    # the merged read flagged the study: listed for review, cleared by an admin (audited)
    code, out = run("studies", "list", "--needs-review", "--json")
    assert code == 0 and [row["study_instance_uid"] for row in json.loads(out)] == [UID]
    code, out = run("studies", "reviewed", UID, "--note", "merged into ACC-2")
    assert code == 0 and out.strip() == f"study {UID}: review flag cleared"
    assert audit_rows(app)[-1][:2] == ("study.reviewed", UID)
    assert audit_rows(app)[-1][4] == {"needs_review": False, "note": "merged into ACC-2"}
    code, out = run("studies", "list", "--needs-review")
    assert code == 0 and out.strip() == "no studies flagged for review"
    code, out = run("studies", "reviewed", UID)
    assert code == 1 and out.strip() == f"error: study {UID} is not flagged for review"
    # the billed reader's date of service is kept on every record
    assert {item.date_of_service for item in _ledger(app)} == {first.date_of_service}
    assert isinstance(first.date_of_service, dt.date)


def test_migration_marks_existing_reversals_as_voids_and_keeps_the_ledger_append_only(
    app: RouterApp, clock: FakeClock
) -> None:
    from alembic import command
    from sqlalchemy import text, update
    from sqlalchemy.exc import DatabaseError, IntegrityError

    from router.db import migrate

    _billed(app, clock)
    app.corrections.void_study(UID, CorrectionReason.WRONG_PATIENT, "admin")
    engine = app.engine
    config = migrate.alembic_config(engine)
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.downgrade(config, "0009_accrual")
    migrate.upgrade(engine)
    with engine.connect() as connection:
        rows = connection.execute(
            text("SELECT kind, claim_frequency, replaces_id FROM professional_ledger ORDER BY id")
        ).all()
    assert [tuple(row) for row in rows] == [("charge", "1", None), ("reversal", "8", None)]
    with pytest.raises((IntegrityError, DatabaseError)) as caught, engine.begin() as connection:
        connection.execute(update(ProfessionalEntry).values(units=2))
    assert "append-only" in str(caught.value)


def test_export_claim_his_every_lines_codes_and_a_void_carries_the_claim_as_last_sent(
    app: RouterApp, clock: FakeClock
) -> None:
    _billed(app, clock, codes=("71260", "74177"))
    first, second = _ledger(app)
    app.corrections.correct(second.id, CorrectionReason.CORRECTED_CODING, "coder", diagnoses=["R10.9", "R07.9"])
    app.corrections.correct(first.id, CorrectionReason.CORRECTED_CODING, "coder", units=2)
    lines = _ledger(app)
    second_fix, first_fix = lines[3], lines[5]
    text = claim_export(app.ledgers).x12_lines()
    # HI: every standing line's codes, in order of first use (lines in ledger order); each line
    # points into that list
    assert (
        text[2]
        == f"# claim accession {ACCESSION} DOS 2026-11-29 CLM05-3 7 (replacement of the claim sent before): HI*ABK:R109*ABF:R079~"
    )
    assert [line for line in text if line.startswith("SV1")] == [
        "SV1*HC:74177:26*90*UN*1*23**1:2~",  # its R10.9, R07.9
        "SV1*HC:71260:26*180*UN*2*23**2~",  # its R07.9, second on the claim
    ]
    assert {line for line in text if line.startswith("REF*6R")} == {
        f"REF*6R*{second_fix.id}~",
        f"REF*6R*{first_fix.id}~",
    }
    app.corrections.void_study(UID, CorrectionReason.WRONG_PATIENT, "admin")
    exported = claim_export(app.ledgers)
    text = exported.x12_lines()
    assert text[2].startswith(f"# claim accession {ACCESSION} DOS 2026-11-29 CLM05-3 8 (void of the claim sent before)")
    # the void carries the last version of each line, never the versions replaced before it
    assert sorted(line for line in text if line.startswith("REF*6R")) == sorted(
        [f"REF*6R*{second_fix.id}~", f"REF*6R*{first_fix.id}~"]
    )
