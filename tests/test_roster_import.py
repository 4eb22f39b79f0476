"""Roster import/export (all or nothing, exact line numbers, round trip) and the demo loader."""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

import pytest
from roster_fixtures import NPI_A, NPI_B, NPI_C, OS_USER, TODAY, add_study, audit_rows, study_state
from sqlalchemy import func, select

from router.app import RouterApp
from router.db.models import DisciplinaryAction, License, Radiologist
from router.domain.enums import LicenseStatus, StudyStatus
from router.errors import ValidationError
from router.services.roster_import import ROSTER_COLUMNS, parse_roster_csv

DEMO = Path(__file__).resolve().parent.parent / "config" / "demo"
HEADER = ",".join(ROSTER_COLUMNS)
GOOD_ROWS = [
    f"{NPI_A},Reader^Avery,TX,TX-1,full,active,2015-07-01,2029-08-31",
    f"{NPI_A},Reader^Avery,OK,OK-1,full,active,,2028-12-31",
    f"{NPI_B},Reader^Blake,CO,CO-1,full,active,2012-06-01,2029-04-30",
    f"{NPI_B},Reader^Blake,TX,TX-2,imlc,active,2024-02-01,2029-02-28",
]


def roster_text(*rows: str, header: str = HEADER) -> str:
    return "\n".join([header, *rows]) + "\n"


def counts(app: RouterApp) -> tuple[int, int, int]:
    """Radiologists, licenses and audit rows in the database."""
    with app.sessions() as session:
        radiologists = session.scalar(select(func.count(Radiologist.id))) or 0
        licenses = session.scalar(select(func.count(License.id))) or 0
    return radiologists, licenses, len(audit_rows(app))


@pytest.mark.parametrize(
    ("bad_row", "reason"),
    [
        ("1234567890,Doe^Jane,TX,X,full,active,,2027-01-01", "NPI 1234567890 fails the check digit (expected 3)"),
        ("123456789,Doe^Jane,TX,X,full,active,,2027-01-01", "NPI must be 10 digits"),
        (
            f"{NPI_C},Doe^Jane,ZZ,X,full,active,,2027-01-01",
            "unknown license_state 'ZZ' (not a US licensing jurisdiction)",
        ),
        (
            f"{NPI_C},Doe^Jane,AE,X,full,active,,2027-01-01",
            "unknown license_state 'AE' (not a US licensing jurisdiction)",
        ),
        (
            f"{NPI_C},Doe^Jane,PW,X,full,active,,2027-01-01",
            "unknown license_state 'PW' (not a US licensing jurisdiction)",
        ),
        (
            f"{NPI_C},Doe^Jane,TX,X,compact,active,,2027-01-01",
            "bad pathway 'compact' (expected one of full, imlc, telehealth_registration, federal_va, federal_dod)",
        ),
        (
            f"{NPI_C},Doe^Jane,TX,X,full,lapsed,,2027-01-01",
            "bad status 'lapsed' (expected one of active, expired, suspended, revoked, surrendered)",
        ),
        (f"{NPI_C},Doe^Jane,TX,X,full,active,,2027-6-30", "bad expires '2027-6-30' (expected YYYY-MM-DD)"),
        (f"{NPI_C},Doe^Jane,TX,X,full,active,06/30/2020,2027-06-30", "bad issued '06/30/2020' (expected YYYY-MM-DD)"),
        (f"{NPI_C},Doe^Jane,TX,X,full,active,2027-02-30,2027-06-30", "bad issued '2027-02-30' (expected YYYY-MM-DD)"),
        (
            f"{NPI_C},Doe^Jane,TX,X,full,active,2027-07-01,2027-06-30",
            "license expires 2027-06-30 before it is issued 2027-07-01",
        ),
        (f"{NPI_C},Doe^Jane,TX,X,full,active,,", "expires is required"),
        (f"{NPI_C},,TX,X,full,active,,2027-01-01", "name must not be empty"),
        (f"{NPI_C},Doe^Jane,TX,,full,active,,2027-01-01", "license number must not be empty"),
        (f"{NPI_C},Doe^Jane,TX,X,full,active,2027-01-01", "expected 8 columns, got 7"),
        (
            f"{NPI_A},Reader^Other,CA,X,full,active,,2027-01-01",
            f"name 'Reader^Other' differs from 'Reader^Avery' given for NPI {NPI_A} on line 2",
        ),
        (
            f"{NPI_A},Reader^Avery,tx,X,full,active,,2027-01-01",
            f"second license for NPI {NPI_A} in TX (first on line 2)",
        ),
    ],
)
def test_one_bad_row_rejects_the_whole_file(app: RouterApp, bad_row: str, reason: str) -> None:
    # the bad row is line 6: header, four good rows, then it; a good row follows it
    text = roster_text(*GOOD_ROWS, bad_row, f"{NPI_C},Doe^Jane,NM,NM-1,full,active,,2027-01-01")
    with pytest.raises(ValidationError) as caught:
        app.roster.import_csv(text, OS_USER)
    assert str(caught.value) == f"line 6: {reason}"
    assert counts(app) == (0, 0, 0)


def test_line_numbers_count_blank_lines_and_a_clean_row_before_the_limit_passes(app: RouterApp) -> None:
    text = "\n".join([HEADER, "", GOOD_ROWS[0], "", "1234567890,X,TX,X,full,active,,2027-01-01"]) + "\n"
    with pytest.raises(ValidationError, match=r"^line 5: NPI 1234567890 fails the check digit"):
        app.roster.import_csv(text, OS_USER)
    assert counts(app) == (0, 0, 0)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "",
            "line 1: empty file, expected header 'npi,name,license_state,license_number,pathway,status,issued,expires'",
        ),
        (
            "npi,name,state,number,pathway,status,issued,expires\n",
            "line 1: expected header 'npi,name,license_state,license_number,pathway,status,issued,expires', got 'npi,name,state,number,pathway,status,issued,expires'",
        ),
        (f"{HEADER},extra\n", f"line 1: expected header '{HEADER}', got '{HEADER},extra'"),
    ],
)
def test_header_must_be_exact(app: RouterApp, text: str, message: str) -> None:
    with pytest.raises(ValidationError) as caught:
        app.roster.import_csv(text, OS_USER)
    assert str(caught.value) == message


@pytest.mark.parametrize("state", ["DC", "PR", "GU", "VI", "AS", "MP", "dc", "Puerto Rico"])
def test_dc_and_territories_are_jurisdictions(state: str) -> None:
    rows = parse_roster_csv(roster_text(f"{NPI_C},Doe^Jane,{state},X-1,full,active,,2027-01-01"))
    assert len(rows) == 1 and len(rows[0].state) == 2 and rows[0].state.upper() == rows[0].state


def test_import_adds_then_updates_with_audit_and_discipline(app: RouterApp) -> None:
    first = app.roster.import_csv("\ufeff" + roster_text(*GOOD_ROWS).replace("\n", "\r\n"), OS_USER)
    assert first.counts() == {
        "rows": 4,
        "radiologists_added": 2,
        "radiologists_updated": 0,
        "licenses_added": 4,
        "licenses_updated": 0,
        "licenses_unchanged": 0,
        "facilities_added": 0,
        "facilities_updated": 0,
    }
    assert counts(app) == (2, 4, 6)
    assert {(row["npi"], row["state"], row["issued"]) for row in app.roster.licenses.list()} == {
        (NPI_A, "TX", dt.date(2015, 7, 1)),
        (NPI_A, "OK", None),
        (NPI_B, "CO", dt.date(2012, 6, 1)),
        (NPI_B, "TX", dt.date(2024, 2, 1)),
    }
    changed_rows = [
        GOOD_ROWS[0].replace("2029-08-31", "2030-08-31"),
        GOOD_ROWS[1].replace("active", "suspended"),
        GOOD_ROWS[2].replace("Reader^Blake", "Reader^Blake Q"),
        GOOD_ROWS[3].replace("Reader^Blake", "Reader^Blake Q"),
    ]
    second = app.roster.import_csv(roster_text(*changed_rows), OS_USER)
    assert (
        second.radiologists_added,
        second.radiologists_updated,
        second.licenses_added,
        second.licenses_updated,
        second.licenses_unchanged,
    ) == (0, 1, 0, 2, 2)
    new_rows = audit_rows(app)[6:]
    assert [(action, key, old, new) for action, key, _user, old, new in new_rows] == [
        ("radiologist.import", NPI_B, {"name": "Reader^Blake"}, {"name": "Reader^Blake Q"}),
        ("license.import", f"{NPI_A}/TX", {"expires": "2029-08-31"}, {"expires": "2030-08-31"}),
        (
            "license.import",
            f"{NPI_A}/OK",
            {"status": "active", "status_since": None},
            {
                "status": "suspended",
                "status_since": "2026-11-29",
                "disciplinary_action": {"state": "OK", "action": "suspended", "action_date": "2026-11-29"},
            },
        ),
    ]
    with app.sessions() as session:
        assert [(a.state, a.action, a.action_date) for a in session.scalars(select(DisciplinaryAction))] == [
            ("OK", LicenseStatus.SUSPENDED, TODAY)
        ]


def test_new_license_with_a_disciplinary_status_has_no_date(app: RouterApp) -> None:
    app.roster.import_csv(roster_text(f"{NPI_C},Doe^Jane,TX,X-1,full,revoked,,2027-01-01"), OS_USER)
    (row,) = app.roster.licenses.list()
    assert (row["status"], row["status_since"]) == (LicenseStatus.REVOKED, None)


def test_dry_run_writes_nothing(app: RouterApp) -> None:
    plan = app.roster.import_csv(roster_text(*GOOD_ROWS), OS_USER, dry_run=True)
    assert (plan.dry_run, plan.radiologists_added, plan.licenses_added, plan.changed) == (True, 2, 4, True)
    assert counts(app) == (0, 0, 0)


def test_export_import_round_trip(app: RouterApp, tmp_path: Path) -> None:
    source = (DEMO / "roster.csv").read_text(encoding="utf-8")
    app.roster.import_csv(source, OS_USER)
    exported = app.roster.export_csv()
    assert exported.splitlines()[0] == HEADER
    assert sorted(exported.splitlines()[1:]) == sorted(line for line in source.splitlines()[1:] if line.strip())
    again = app.roster.import_csv(exported, OS_USER)
    assert (again.changed, again.licenses_unchanged) == (False, 10)
    assert app.roster.export_csv() == exported


def test_export_quotes_names_with_commas_and_reads_them_back(app: RouterApp) -> None:
    app.roster.radiologists.add(NPI_C, "Doe, Jane", OS_USER)
    app.roster.licenses.add(NPI_C, "TX", "N,1", dt.date(2027, 1, 1), OS_USER)
    exported = app.roster.export_csv()
    assert exported == f'{HEADER}\n{NPI_C},"Doe, Jane",TX,"N,1",full,active,,2027-01-01\n'
    rows = parse_roster_csv(exported)
    assert (rows[0].name, rows[0].number, rows[0].line) == ("Doe, Jane", "N,1", 2)


def test_import_reroutes_held_studies_once(app: RouterApp) -> None:
    app.roster.facilities.add("CT_NORTH", "TX", OS_USER)
    add_study(app, "1.2.3.1")
    app.routing.route_due()
    assert study_state(app, "1.2.3.1")["status"] is StudyStatus.HELD
    result = app.roster.import_csv(roster_text(*GOOD_ROWS), OS_USER)
    assert [(r.study_instance_uid, r.status, r.assigned_npi) for r in result.rerouted] == [
        ("1.2.3.1", StudyStatus.ASSIGNED, NPI_A)
    ]


def test_load_demo_files(app: RouterApp) -> None:
    texts = [(DEMO / name).read_text(encoding="utf-8") for name in ("facilities.csv", "roster.csv", "radiologists.csv")]
    result = app.roster.load_demo(*texts, OS_USER)
    assert (result.facilities_added, result.radiologists_added, result.licenses_added, result.radiologists_updated) == (
        1,
        5,
        10,
        0,
    )
    assert (
        str(result)
        == "10 license rows; 5 radiologists added, 0 updated; 10 licenses added, 0 updated, 0 unchanged; 1 facilities added, 0 updated"
    )
    (facility,) = app.roster.facilities.list()
    assert (facility["ae_title"], facility["state"], facility["timezone"], facility["aliases"]) == (
        "CT_NORTH",
        "TX",
        "America/Chicago",
        ["NORTH TEXAS IMAGING", "NTI CT NORTH"],
    )
    devon = app.roster.radiologists.show("1000000046")
    assert (
        devon["email"],
        devon["spl_state"],
        devon["loq_issued"],
        devon["mqsa_qualified"],
        devon["reading_state"],
    ) == (
        "reader.devon@example.org",
        "WY",
        dt.date(2022, 11, 1),
        True,
        "WY",
    )
    again = app.roster.load_demo(*texts, OS_USER)
    assert again.changed is False
    changed = texts[2].replace("reader.devon@example.org", "devon@example.org")
    third = app.roster.load_demo(texts[0], texts[1], changed, OS_USER)
    assert (third.radiologists_added, third.radiologists_updated, third.licenses_unchanged) == (0, 1, 10)
    assert audit_rows(app)[-1][0:2] == ("radiologist.set", "1000000046")


@pytest.mark.parametrize(
    ("which", "content", "message"),
    [
        (
            0,
            "ae_title,name,state,timezone,requires_privileges,federal,aliases\nCT_NORTH,N,TX,Mars/Base,false,,\n",
            "facilities.csv line 2: unknown time zone 'Mars/Base'",
        ),
        (
            0,
            "ae_title,name,state,timezone,requires_privileges,federal,aliases\nCT_NORTH,N,TX,,maybe,,\n",
            "facilities.csv line 2: bad requires_privileges 'maybe' (expected true or false)",
        ),
        (
            1,
            f"{HEADER}\n1000000012,Reader^Avery,XX,T,full,active,,2029-01-01\n",
            "roster.csv line 2: unknown license_state 'XX'",
        ),
        (
            2,
            "npi,email,spl_state,loq_issued,mqsa_qualified,reading_state\n1234567893,,CO,,false,CO\n",
            "radiologists.csv line 2: NPI 1234567893 is not in the roster file",
        ),
    ],
)
def test_load_demo_is_all_or_nothing(app: RouterApp, which: int, content: str, message: str) -> None:
    texts = [(DEMO / name).read_text(encoding="utf-8") for name in ("facilities.csv", "roster.csv", "radiologists.csv")]
    texts[which] = content
    with pytest.raises(ValidationError, match="^" + re.escape(message)):
        app.roster.load_demo(*texts, OS_USER)
    assert counts(app) == (0, 0, 0)
    assert app.roster.facilities.list() == []
