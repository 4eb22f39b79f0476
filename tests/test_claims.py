"""Claim lines of the professional ledger: a known ORM order + ORU final report through the real services.

The HL7 messages go through the router's own inbox (the code the MLLP listener calls) on a real
database (SQLite, and PostgreSQL with ROUTER_TEST_DATABASE_URL); the study is indexed as intake
does and routed by the routing service. The clock is Sunday 2026-11-29 15:00 UTC (09:00 in Chicago).
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from hl7_helpers import REFERRING_NPI, ack_fields, message
from roster_fixtures import NPI_A, OS_USER, study_state
from sqlalchemy import select

from router.app import RouterApp
from router.cli import cli
from router.config import Settings
from router.db.models import Facility, Series, Study
from router.domain.enums import CorrectionReason, StudyStatus
from router.errors import ValidationError
from router.services.claim_export import claim_export
from router.services.hl7_inbox import Hl7Inbox
from router.services.ledgers import PROFESSIONAL_COLUMNS
from router.services.orders import OrderService
from router.services.reports import ReportService
from router.services.roster_facilities import billing_fields
from tests.conftest import FakeClock, make_settings

CHICAGO = "America/Chicago"
GROUP_NPI = "1999999992"
TIN = "12-3456789"


def group_settings(tmp_path: Path, database_url: str) -> Settings:
    settings = make_settings(tmp_path, database_url, stable_seconds=60.0)
    return settings.replace("billing", group_npi=GROUP_NPI, tin=TIN)


@pytest.fixture
def app(tmp_path: Path, database_url: str, clock: FakeClock) -> Iterator[RouterApp]:
    router_app = RouterApp.open(group_settings(tmp_path, database_url), upgrade=True, clock=clock)
    try:
        yield router_app
    finally:
        router_app.close()


def inbox(app: RouterApp) -> Hl7Inbox:
    """The inbox the MLLP listener hands each frame to (as RouterServer builds it)."""
    return Hl7Inbox(
        app.sessions, OrderService(app.sessions, app.clock), ReportService(app.reads, app.routing), app.clock
    )


def obr(set_id: int, accession: str, procedure: str, referring: str = "", reason: str = "", modifiers: str = "") -> str:
    """An OBR: OBR-4 procedure, OBR-16 ordering provider, OBR-31 reason, OBR-45 procedure code modifiers."""
    fields = ["OBR", str(set_id), f"P{accession}", accession, procedure] + [""] * 11 + [referring]
    fields += [""] * 14 + [reason] + [""] * 13 + [modifiers]
    assert fields[16] == referring and fields[31] == reason and fields[45] == modifiers
    return "|".join(fields).rstrip("|")


def order(
    accession: str, control_id: str, obrs: list[str], patient_class: str = "E", diagnoses: tuple[str, ...] = ()
) -> bytes:
    """ORM^O01 v2.5.1: PV1-2 patient class, ORC-12 ordering provider, the OBRs, DG1 diagnoses."""
    return message(
        [
            f"MSH|^~\\&|RIS|NORTH|ROUTER|TELERAD|20261129080000||ORM^O01|{control_id}|P|2.5.1",
            "PID|1||MRN77^^^NORTH||Synthetic^Patient||19700101|F",
            f"PV1|1|{patient_class}|ER^12^B^NORTH",
            f"ORC|NW|P{accession}|{accession}|||||||||{REFERRING_NPI}^Refer^Rita",
            *obrs,
            *(f"DG1|{index}||{code}^Diagnosis^I10" for index, code in enumerate(diagnoses, start=1)),
        ]
    )


def final_report(accession: str, control_id: str, signer: str, signed: str, diagnoses: tuple[str, ...] = ()) -> bytes:
    """ORU^R01 v2.5.1, OBR-25 F, OBR-32 interpreter NPI, OBR-22 signing time, DG1 diagnoses."""
    fields = ["OBR", "1", "", accession, "71260^CT chest^C4"] + [""] * 17 + [signed, "", "", "F"]
    fields += ["", "", "", "", "", "", f"{signer}&Reader&Avery"]
    return message(
        [
            f"MSH|^~\\&|REPORTS|NORTH|ROUTER|TELERAD|20261129090500||ORU^R01|{control_id}|P|2.5.1",
            "PID|1||MRN77^^^NORTH||Synthetic^Patient",
            "|".join(fields),
            *(f"DG1|{index}||{code}^Diagnosis^I10" for index, code in enumerate(diagnoses, start=1)),
            "OBX|1|TX|IMP^Impression||Right lower lobe opacity||||||F",
        ]
    )


def roster(app: RouterApp, **billing: Any) -> None:
    """Facility CT_NORTH (TX, Chicago; ``billing``: :func:`billing_fields` keywords) and reader NPI_A reading from CO."""
    app.roster.facilities.add(
        "CT_NORTH", "TX", OS_USER, name="North Imaging", timezone=CHICAGO, billing=billing_fields(**billing)
    )
    app.roster.radiologists.add(NPI_A, "Reader^Avery", OS_USER)
    app.roster.radiologists.set(NPI_A, OS_USER, reading_state="CO")
    app.roster.licenses.add(NPI_A, "TX", "TX-0001", dt.date(2028, 6, 30), OS_USER, issued=dt.date(2020, 1, 1))


def study(app: RouterApp, uid: str, accession: str, modality: str = "CT", description: str = "CT chest") -> None:
    """A study as intake indexes it (quiet for two minutes, so the routing timer takes it)."""
    received = app.clock() - dt.timedelta(seconds=120)
    with app.sessions.begin() as session:
        session.add(
            Study(
                study_instance_uid=uid,
                status=StudyStatus.RECEIVING,
                accession_number=accession,
                study_date=dt.date(2026, 11, 28),
                first_calling_ae_title="CT_NORTH",
                modalities=modality,
                study_description=description,
                instance_count=1,
                size_bytes=1000,
                first_received_at=received,
                last_received_at=received,
                needs_review=False,
                series=[Series(series_instance_uid=f"{uid}.1", modality=modality)],
            )
        )


def read(app: RouterApp, clock: FakeClock, uid: str, accession: str, order_message: bytes, report: bytes) -> None:
    """Study indexed, order received (matched), routed to NPI_A, final report signed 10 minutes later."""
    study(app, uid, accession)
    assert ack_fields(inbox(app).handle(order_message, "127.0.0.1"))[0] == "AA"
    app.routing.route_due()
    assert study_state(app, uid)["current_npi"] == NPI_A
    clock.advance(600)
    assert ack_fields(inbox(app).handle(report, "127.0.0.1"))[0] == "AA"
    assert study_state(app, uid)["status"] is StudyStatus.COMPLETED


def lines(app: RouterApp) -> list[dict[str, Any]]:
    return app.ledgers.professional()


# Signed 09:05 in Chicago (-0600) = 15:05 UTC, ten minutes after the assignment at 15:00 UTC
SIGNED = "20261129090500-0600"


def test_every_claim_field_of_a_known_order_and_final_report(app: RouterApp, clock: FakeClock) -> None:
    roster(app)
    order_message = order(
        "ACC-CLAIM-1",
        "ORD-C1",
        [obr(1, "ACC-CLAIM-1", "71260^CT chest w contrast^C4", f"{REFERRING_NPI}^Refer^Rita", "R07.9^Chest pain^I10")],
        patient_class="E",
    )
    report = final_report("ACC-CLAIM-1", "RPT-C1", NPI_A, SIGNED, diagnoses=("R91.8", "J18.9"))
    read(app, clock, "1.2.840.10008.99.1", "ACC-CLAIM-1", order_message, report)
    (line,) = lines(app)
    expected = {
        "id": line["id"],  # the line item control number (REF*6R); its value is the database's
        "recorded_at": "2026-11-29T15:10:00Z",  # when the report came in (the fake clock)
        "kind": "charge",
        "reverses_id": None,
        "study_instance_uid": "1.2.840.10008.99.1",
        "accession_number": "ACC-CLAIM-1",
        "facility_ae_title": "CT_NORTH",
        "facility_name": "North Imaging",
        "exam_state": "TX",
        "rendering_npi": NPI_A,
        "rendering_name": "Reader^Avery",
        "license_state": "TX",
        "license_number": "TX-0001",
        "cpt_code": "71260",
        "modifier": "26",
        "units": 1,
        "cpt_source": "requested_procedure_code_sequence",
        "cpt_map_version": "2026",
        "coder_review": False,
        "review_reason": None,
        "date_of_service": "2026-11-29",  # signing date in Chicago (CMS MLN SE17023)
        "interpreted_at": "2026-11-29T15:05:00Z",
        "billing_arrangement": "payer",
        "modifiers": ["26"],
        "place_of_service": "23",  # PV1-2 E: emergency room - hospital
        "diagnosis_codes": ["R91.8", "J18.9"],  # the report's, before the order's R07.9
        "diagnosis_pointers": [1, 2],
        "diagnosis_source": "report",
        "referring_npi": REFERRING_NPI,
        "referring_name": "Refer^Rita",
        "billing_npi": GROUP_NPI,
        "billing_tin": "123456789",
        "reading_state": "CO",
        "exam_date": "2026-11-28",  # StudyDate, the day before the read
        "charge_cents": 9000,  # fee_schedule_2026.csv 71260-26 (placeholder)
        "fee_schedule_version": "2026",
        "contract_rate_percent": None,
        "claim_frequency": "1",  # an original (CLM05-3)
        "replaces_id": None,
        "correction_reason": None,
        "correction_note": None,
    }
    assert {key: line[key] for key in expected} == expected
    assert set(PROFESSIONAL_COLUMNS) == set(expected)


def test_order_diagnoses_used_when_the_report_has_none_and_bad_codes_go_to_review(
    app: RouterApp, clock: FakeClock
) -> None:
    roster(app, outpatient_pos="19")
    order_message = order(
        "ACC-CLAIM-2",
        "ORD-C2",
        [obr(1, "ACC-CLAIM-2", "71260^CT chest w contrast^C4", f"{REFERRING_NPI}^Refer^Rita")],
        patient_class="O",
        diagnoses=("R07.9", "R0602", "799.9"),  # 799.9 is ICD-9, sent as I10 by mistake
    )
    report = final_report("ACC-CLAIM-2", "RPT-C2", NPI_A, SIGNED)
    read(app, clock, "1.2.840.10008.99.2", "ACC-CLAIM-2", order_message, report)
    (line,) = lines(app)
    assert (line["place_of_service"], line["diagnosis_source"]) == ("19", "order")  # facility: off-campus
    assert (line["diagnosis_codes"], line["diagnosis_pointers"]) == (["R07.9", "R06.02"], [1, 2])
    assert line["coder_review"] is True
    assert line["review_reason"] == "order diagnosis '799.9' is not an ICD-10-CM code"


def test_multi_procedure_order_gives_one_line_per_procedure_with_modifiers(app: RouterApp, clock: FakeClock) -> None:
    roster(app, default_pos="11")
    order_message = order(
        "ACC-CLAIM-3",
        "ORD-C3",
        [
            obr(1, "ACC-CLAIM-3", "73030^XR shoulder 2 views^C4", modifiers="RT"),
            obr(2, "ACC-CLAIM-3", "73030^XR shoulder 2 views^C4", modifiers="LT~59"),
            obr(3, "ACC-CLAIM-3", "73562^XR knee 3 views^C4", modifiers="GT"),
        ],
        patient_class="",  # no class: the facility's default POS
        diagnoses=("M25.511",),
    )
    read(
        app, clock, "1.2.840.10008.99.3", "ACC-CLAIM-3", order_message, final_report("ACC-CLAIM-3", "R3", NPI_A, SIGNED)
    )
    got = [(row["cpt_code"], row["modifiers"], row["place_of_service"], row["coder_review"]) for row in lines(app)]
    assert got == [
        ("73030", ["26", "RT"], "11", False),
        ("73030", ["26", "LT", "59"], "11", False),
        ("73562", ["26"], "11", True),  # GT (telehealth) refused, left off, for review
    ]
    assert {row["accession_number"] for row in lines(app)} == {"ACC-CLAIM-3"}
    assert lines(app)[2]["review_reason"] == "modifier GT is a telehealth modifier: not used on a teleradiology read"
    assert [row["charge_cents"] for row in lines(app)] == [2500, 2500, 2500]


@pytest.mark.parametrize(
    ("billing", "arrangement", "modifiers", "charge", "percent"),
    [
        ({}, "payer", ["26"], 9000, None),
        ({"arrangement": "client", "contract_rate_percent": 65}, "client", ["26"], 5850, 65),
        ({"arrangement": "global"}, "global", [], 9000, None),
        ({"arrangement": "global", "contract_rate_percent": 50}, "global", [], 4500, 50),
        ({"arrangement": "none"}, "none", ["26"], 0, None),
    ],
)
def test_each_billing_arrangement(
    app: RouterApp,
    clock: FakeClock,
    billing: dict[str, Any],
    arrangement: str,
    modifiers: list[str],
    charge: int,
    percent: int | None,
) -> None:
    roster(app, **billing)
    order_message = order(
        "ACC-ARR", "ORD-ARR", [obr(1, "ACC-ARR", "71260^CT chest^C4", f"{REFERRING_NPI}^Refer^Rita")], "I", ("R07.9",)
    )
    read(app, clock, "1.2.840.10008.99.4", "ACC-ARR", order_message, final_report("ACC-ARR", "R4", NPI_A, SIGNED))
    (line,) = lines(app)
    assert (line["billing_arrangement"], line["modifiers"], line["charge_cents"], line["contract_rate_percent"]) == (
        arrangement,
        modifiers,
        charge,
        percent,
    )
    assert (line["place_of_service"], line["modifier"], line["coder_review"]) == (
        "21",
        "26" if "26" in modifiers else None,
        False,
    )


def test_client_arrangement_without_a_contract_rate_is_refused_and_an_old_one_goes_to_review(
    app: RouterApp, clock: FakeClock
) -> None:
    facilities = app.roster.facilities
    with pytest.raises(ValidationError, match="billing client needs --contract-rate"):
        facilities.add("CT_X", "TX", OS_USER, billing=billing_fields(arrangement="client"))
    with pytest.raises(ValidationError, match="billing payer takes no contract rate"):
        facilities.add("CT_X", "TX", OS_USER, billing=billing_fields(arrangement="payer", contract_rate_percent=80))
    facilities.add("CT_X", "TX", OS_USER, billing=billing_fields(arrangement="none"))
    assert facilities.show("CT_X")["billing_arrangement"] == "none"
    with pytest.raises(ValidationError, match="billing none takes no contract rate"):
        facilities.set("CT_X", OS_USER, billing=billing_fields(contract_rate_percent=40))
    # a client facility left without a rate (set before this check existed): its reads go to review
    roster(app, arrangement="client", contract_rate_percent=65)
    with app.sessions.begin() as session:
        session.scalars(select(Facility).where(Facility.ae_title == "CT_NORTH")).one().contract_rate_percent = None
    order_message = order("ACC-CL", "ORD-CL", [obr(1, "ACC-CL", "71260^CT chest^C4")], "I", ("R07.9",))
    read(app, clock, "1.2.840.10008.99.5", "ACC-CL", order_message, final_report("ACC-CL", "R5", NPI_A, SIGNED))
    (line,) = lines(app)
    assert (line["charge_cents"], line["coder_review"]) == (None, True)
    assert line["review_reason"] == "client arrangement without a contract rate (facilities set --contract-rate)"
    # once the facility has its rate, a coder approves the line at that rate
    app.roster.facilities.set("CT_NORTH", OS_USER, billing=billing_fields(contract_rate_percent=80))
    app.corrections.correct(line["id"], CorrectionReason.CODER_APPROVED, "coder")
    approved = lines(app)[-1]
    assert (approved["charge_cents"], approved["contract_rate_percent"], approved["claim_frequency"]) == (7200, 80, "1")


def test_dos_year_picks_the_map_and_a_year_without_a_map_is_coder_review(
    tmp_path: Path, database_url: str, clock: FakeClock
) -> None:
    maps = tmp_path / "maps"
    maps.mkdir()
    shipped = (Settings().billing.cpt_map).read_text(encoding="utf-8")
    (maps / "cpt_map_2026.csv").write_text(shipped, encoding="utf-8")
    # the 2027 map drops 71260 and lists 71261 (a made-up code for the test) in its place
    (maps / "cpt_map_2027.csv").write_text(
        shipped.replace("# version: 2026", "# version: 2027").replace("\n71260,", "\n71261,"), encoding="utf-8"
    )
    settings = group_settings(tmp_path, database_url).replace("billing", cpt_map=maps / "cpt_map_2026.csv")
    with RouterApp.open(settings, upgrade=True, clock=clock) as router_app:
        roster(router_app)
        assert router_app.reference.cpt_map_for_year(2027).row_for("71260") is None  # type: ignore[union-attr]
        assert router_app.reference.cpt_map_for_year(2028) is None
        for year, accession in ((2026, "Y26"), (2027, "Y27"), (2028, "Y28")):
            clock.set(dt.datetime(year, 1, 4, 15, 0, tzinfo=dt.UTC))
            message_ = order(accession, f"O{accession}", [obr(1, accession, "71260^CT chest^C4")], "E", ("R07.9",))
            signed = f"{year}0104090500-0600"
            read(
                router_app,
                clock,
                f"1.2.9.{year}",
                accession,
                message_,
                final_report(accession, accession, NPI_A, signed),
            )
        got = {row["accession_number"]: row for row in router_app.ledgers.professional()}
    assert (got["Y26"]["cpt_map_version"], got["Y26"]["modifier"]) == ("2026", "26")
    # 2027: the code is taken as sent, but that year's map does not know it: no 26, coder review
    assert (got["Y27"]["cpt_map_version"], got["Y27"]["modifier"], got["Y27"]["coder_review"]) == ("2027", None, True)
    assert got["Y27"]["review_reason"].startswith("code not in CPT map 2027: modifier 26 not applied")
    assert (got["Y28"]["cpt_map_version"], got["Y28"]["coder_review"]) == (None, True)
    assert got["Y28"]["review_reason"].startswith(
        f"no CPT map for date-of-service year 2028 ({maps / 'cpt_map_2028.csv'} not found)"
    )
    assert "no fee schedule for the date-of-service year" in got["Y28"]["review_reason"]


def _parse_x12(text: str) -> tuple[list[str], list[list[str]]]:
    """``(# lines, segments as element lists)`` of the X12 export."""
    comments = [line for line in text.splitlines() if line.startswith("#")]
    segments = [line.rstrip("~").split("*") for line in text.splitlines() if line and not line.startswith("#")]
    return comments, segments


def test_export_csv_and_x12_837p_lines(app: RouterApp, clock: FakeClock, tmp_path: Path) -> None:
    roster(app)
    two = order(
        "ACC-X1",
        "ORD-X1",
        [
            obr(1, "ACC-X1", "73030^XR shoulder^C4", f"{REFERRING_NPI}^Refer^Rita", modifiers="RT"),
            obr(2, "ACC-X1", "73030^XR shoulder^C4", modifiers="LT"),
        ],
        "O",
        ("M25.511", "M25.512"),
    )
    read(app, clock, "1.2.840.10008.99.6", "ACC-X1", two, final_report("ACC-X1", "R6", NPI_A, SIGNED))
    no_dx = order("ACC-X2", "ORD-X2", [obr(1, "ACC-X2", "71260^CT chest^C4", f"{REFERRING_NPI}^Refer^Rita")], "E")
    read(app, clock, "1.2.840.10008.99.7", "ACC-X2", no_dx, final_report("ACC-X2", "R7", NPI_A, SIGNED))
    ids = [row["id"] for row in lines(app)]
    config = tmp_path / "router.toml"
    config.write_text(
        f'[paths]\ndata_dir = "{app.settings.paths.data_dir}"\n[database]\nurl = "{app.settings.database_url}"\n'
        f'[billing]\ngroup_npi = "{GROUP_NPI}"\ntin = "{TIN}"\n',
        encoding="utf-8",
    )
    runner = CliRunner()
    result = runner.invoke(cli, ["--config", str(config), "ledger", "export", "--format", "csv"])
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert [row["id"] for row in rows] == [str(item) for item in ids]
    assert rows[0]["modifiers"] == "26:RT" and rows[1]["modifiers"] == "26:LT"
    assert (rows[0]["diagnosis_codes"], rows[0]["diagnosis_pointers"]) == ("M25.511:M25.512", "1:2")
    assert (rows[0]["charge_cents"], rows[0]["billing_tin"], rows[0]["place_of_service"]) == ("2500", "123456789", "22")
    assert (rows[2]["coder_review"], rows[2]["diagnosis_codes"]) == ("True", "")
    result = runner.invoke(cli, ["--config", str(config), "ledger", "export", "--format", "x12-837p-lines"])
    assert result.exit_code == 0, result.output
    comments, segments = _parse_x12(result.stdout)
    assert comments[1] == "# arrangement payer: 2 line(s), 50 dollars; bill the payer on an 837P"
    assert comments[2] == "# claim accession ACC-X1 DOS 2026-11-29 CLM05-3 1 (original): HI*ABK:M25511*ABF:M25512~"
    referring = ["NM1", "DK", "1", "REFER", "RITA", "", "", "", "XX", REFERRING_NPI]
    rendering = ["NM1", "82", "1", "READER", "AVERY", "", "", "", "XX", NPI_A]
    assert segments == [
        ["LX", "1"],
        ["SV1", "HC:73030:26:RT", "25", "UN", "1", "22", "", "1:2"],
        ["DTP", "472", "D8", "20261129"],
        ["REF", "6R", str(ids[0])],
        rendering,
        referring,
        ["LX", "2"],
        ["SV1", "HC:73030:26:LT", "25", "UN", "1", "22", "", "1:2"],
        ["DTP", "472", "D8", "20261129"],
        ["REF", "6R", str(ids[1])],
        rendering,
        referring,
    ]
    assert result.stderr.strip().splitlines() == [
        f"left out: line {ids[2]}: coder review: no ICD-10-CM diagnosis on the report or the order"
    ]
    later = runner.invoke(
        cli, ["--config", str(config), "ledger", "export", "--format", "x12-837p-lines", "--from", "2026-11-30"]
    )
    assert later.exit_code == 0 and _parse_x12(later.stdout)[1] == []


def test_export_groups_by_arrangement(app: RouterApp, clock: FakeClock) -> None:
    roster(app, arrangement="client", contract_rate_percent=50)
    message_ = order("ACC-G", "ORD-G", [obr(1, "ACC-G", "71260^CT chest^C4")], "I", ("R07.9",))
    read(app, clock, "1.2.840.10008.99.8", "ACC-G", message_, final_report("ACC-G", "R8", NPI_A, SIGNED))
    exported = claim_export(app.ledgers)
    assert [(key, len(group)) for key, _, group in exported.groups] == [("client", 1)]
    text = exported.x12_lines()
    assert (
        text[1]
        == "# arrangement client: 1 line(s), 45 dollars; invoice the client facility at its contract rate; not sent to a payer"
    )
    assert text[4] == "SV1*HC:71260:26*45*UN*1*21**1~"
    assert text[-1] == f"NM1*DK*1*REFER*RITA****XX*{REFERRING_NPI}~"  # OBR-16 empty: ORC-12


@pytest.mark.parametrize(
    ("extra", "line"),
    [
        (
            '[billing]\ndefault_pos = "02"\n',
            "error: config billing.default_pos: place of service 02 is a telehealth POS: a teleradiology "
            "interpretation takes the POS where the exam was done (CMS CR 7631)",
        ),
        (
            '[billing]\noutpatient_pos = "10"\n',
            "error: config billing.outpatient_pos: outpatient place of service 10 is a telehealth POS: a "
            "teleradiology interpretation takes the POS where the exam was done (CMS CR 7631)",
        ),
        (
            '[billing]\noutpatient_pos = "21"\n',
            "error: config billing.outpatient_pos: outpatient place of service "
            "must be 22 (on-campus) or 19 (off-campus outpatient hospital), got 21",
        ),
        (
            '[billing]\ngroup_npi = "1234567890"\n',
            "error: config billing.group_npi: NPI 1234567890 fails the check digit (expected 3)",
        ),
        (
            '[billing]\ntin = "12345678"\n',
            "error: config billing.tin: TIN '12345678' must be nine digits (an EIN may be written NN-NNNNNNN)",
        ),
    ],
)
def test_bad_billing_config_is_refused_in_one_line(tmp_path: Path, extra: str, line: str) -> None:
    config = tmp_path / "router.toml"
    config.write_text(f'[paths]\ndata_dir = "{tmp_path / "var"}"\n{extra}', encoding="utf-8")
    result = CliRunner().invoke(cli, ["--config", str(config), "ledger", "export", "--format", "csv"])
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [line]


def test_facility_billing_options_on_the_cli(tmp_path: Path, sqlite_url: str) -> None:
    config = tmp_path / "router.toml"
    config.write_text(f'[paths]\ndata_dir = "{tmp_path / "var"}"\n[database]\nurl = "{sqlite_url}"\n', encoding="utf-8")
    runner = CliRunner()

    def run(*args: str) -> Any:
        result = runner.invoke(cli, ["--config", str(config), *args])
        assert "Traceback" not in result.output
        return result

    assert run("db", "upgrade").exit_code == 0
    added = run("facilities", "add", "--ae-title", "CT_NORTH", "--state", "TX", "--default-pos", "11", "--json")
    assert added.exit_code == 0, added.output
    refused = run("facilities", "set", "CT_NORTH", "--default-pos", "02")
    assert refused.exit_code == 1
    assert refused.stderr.strip().splitlines() == [
        "error: default place of service 02 is a telehealth POS: a teleradiology interpretation takes the POS "
        "where the exam was done (CMS CR 7631)"
    ]
    assert run("facilities", "set", "CT_NORTH", "--contract-rate", "150").exit_code == 1
    assert run("facilities", "set", "CT_NORTH", "--contract-rate", "lots").exit_code == 2
    changed = run(
        "facilities", "set", "CT_NORTH", "--billing", "client", "--contract-rate", "65", "--outpatient-pos", "19"
    )
    assert changed.exit_code == 0, changed.output
    shown = run("facilities", "show", "CT_NORTH", "--json")
    doc = json.loads(shown.stdout)
    assert (doc["billing_arrangement"], doc["contract_rate_percent"], doc["outpatient_pos"], doc["default_pos"]) == (
        "client",
        65,
        "19",
        "11",
    )
    refused = run("facilities", "set", "CT_NORTH", "--contract-rate", "none")
    assert refused.exit_code == 1 and "billing client needs --contract-rate" in refused.stderr
    refused = run("facilities", "set", "CT_NORTH", "--billing", "payer")  # a payer pays the fee schedule
    assert refused.exit_code == 1 and "billing payer takes no contract rate" in refused.stderr
    # 'none' is the arrangement that bills nothing, not the word that clears a value
    cleared = run(
        "facilities", "set", "CT_NORTH", "--billing", "none", "--default-pos", "none", "--contract-rate", "none"
    )
    assert cleared.exit_code == 0, cleared.output
    doc = json.loads(run("facilities", "show", "CT_NORTH", "--json").stdout)
    assert (doc["billing_arrangement"], doc["default_pos"], doc["contract_rate_percent"]) == ("none", None, None)


def test_a_cancelled_order_reverses_the_claim_line_and_the_x12_export_sends_a_void(
    app: RouterApp, clock: FakeClock
) -> None:
    roster(app)
    message_ = order("ACC-RV", "ORD-RV", [obr(1, "ACC-RV", "71260^CT chest^C4")], "E", ("R07.9",))
    read(app, clock, "1.2.840.10008.99.9", "ACC-RV", message_, final_report("ACC-RV", "R9", NPI_A, SIGNED))
    cancel = message_.replace(b"ORC|NW|", b"ORC|CA|").replace(b"|ORD-RV|", b"|ORD-RV-CA|")
    assert ack_fields(inbox(app).handle(cancel, "127.0.0.1"))[0] == "AA"
    charge, reversal = lines(app)
    assert (reversal["kind"], reversal["reverses_id"]) == ("reversal", charge["id"])
    claim_columns = ("billing_arrangement", "modifiers", "place_of_service", "diagnosis_codes", "charge_cents")
    assert [reversal[key] for key in claim_columns] == ["payer", ["26"], "23", ["R07.9"], 9000]
    assert [reversal[key] for key in claim_columns] == [charge[key] for key in claim_columns]
    exported = claim_export(app.ledgers)
    # the claim had been billable: it goes out again as a void (CLM05-3 8) carrying the voided line
    assert [(arrangement, [line["id"] for line in group]) for arrangement, _, group in exported.groups] == [
        ("payer", [charge["id"]])
    ]
    assert exported.frequencies == {("payer", "ACC-RV", charge["date_of_service"]): "8"}
    text = exported.x12_lines()
    assert text[1] == "# arrangement payer: 0 line(s), 0 dollars, 1 void claim(s); bill the payer on an 837P"
    assert text[2].startswith("# claim accession ACC-RV DOS 2026-11-29 CLM05-3 8 (void of the claim sent before): HI")
    assert f"REF*6R*{charge['id']}~" in text
    assert exported.excluded == [
        (charge["id"], f"reversed by line {reversal['id']}"),
        (reversal["id"], f"reversal of line {charge['id']}"),
    ]
