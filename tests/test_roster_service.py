"""RosterService: validation, audit rows in the same transaction, disciplinary actions, re-routing.

Runs on SQLite and, with ROUTER_TEST_DATABASE_URL set, on PostgreSQL (fixtures in conftest.py).
The clock is pinned at 2026-11-29 15:00 UTC; routing.timezone is UTC, so "today" is 2026-11-29.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import shutil
from pathlib import Path

import pytest
from conftest import REPO, FakeClock, make_settings
from roster_fixtures import NPI_A, NPI_B, NPI_C, OS_USER, TODAY, add_study, audit_rows, roster_with_readers, study_state
from sqlalchemy import select
from sqlalchemy.orm import Session

from router.app import RouterApp
from router.db.models import DisciplinaryAction, Facility, FacilityAlias, License, Privilege, Radiologist
from router.domain.enums import HoldReason, LicensePathway, LicenseStatus, StudyStatus
from router.errors import ConflictError, NotFoundError, ValidationError
from router.services.audit import ChangeContext, ChangeRunner, Outcome
from router.services.roster import UNSET, parse_destination

D = dt.date


# --------------------------------------------------------------------------- radiologists


@pytest.mark.parametrize(
    ("npi", "message"),
    [
        ("123456789", "NPI must be 10 digits"),
        ("12345678931", "NPI must be 10 digits"),
        ("12345678a3", "NPI must be 10 digits"),
        ("3234567893", "NPI must start with 1 or 2"),
        ("1234567890", "NPI 1234567890 fails the check digit (expected 3)"),
    ],
)
def test_add_radiologist_refuses_bad_npi(app: RouterApp, npi: str, message: str) -> None:
    with pytest.raises(ValidationError) as caught:
        app.roster.radiologists.add(npi, "Doe^Jane", OS_USER)
    assert str(caught.value) == message
    assert app.roster.radiologists.list() == []
    assert audit_rows(app) == []


def test_add_radiologist_is_audited_and_duplicate_refused(app: RouterApp) -> None:
    change = app.roster.radiologists.add(" 1234567893 ", " Doe^Jane ", OS_USER, email="jane@example.org")
    assert change.changed and change.entity_key == NPI_C and change.action == "radiologist.add"
    assert change.record is not None and change.record["name"] == "Doe^Jane" and change.record["active"] is True
    assert audit_rows(app) == [
        (
            "radiologist.add",
            NPI_C,
            OS_USER,
            None,
            {
                "npi": NPI_C,
                "name": "Doe^Jane",
                "email": "jane@example.org",
                "active": True,
                "spl_state": None,
                "loq_issued": None,
                "mqsa_qualified": False,
                "reading_state": None,
                "destination": None,
            },
        )
    ]
    with pytest.raises(ConflictError, match="NPI 1234567893 is already on the roster"):
        app.roster.radiologists.add(NPI_C, "Other^Name", OS_USER)
    assert len(audit_rows(app)) == 1


@pytest.mark.parametrize(
    ("email", "ok"), [("jane@example.org", True), ("jane", False), ("jane@example", False), ("a b@example.org", False)]
)
def test_email_is_checked(app: RouterApp, email: str, ok: bool) -> None:
    if ok:
        assert app.roster.radiologists.add(NPI_C, "Doe^Jane", OS_USER, email=email).record["email"] == email  # type: ignore[index]
    else:
        with pytest.raises(ValidationError, match="bad email"):
            app.roster.radiologists.add(NPI_C, "Doe^Jane", OS_USER, email=email)


def test_set_radiologist_audits_only_changed_fields_and_clears(app: RouterApp) -> None:
    roster = app.roster.radiologists
    roster.add(NPI_C, "Doe^Jane", OS_USER)
    change = roster.set(
        NPI_C,
        OS_USER,
        spl_state="co",
        loq_issued=D(2026, 6, 15),
        mqsa=True,
        reading_state="Colorado",
        destination=parse_destination("READER1@10.0.0.5:104"),
    )
    assert change.record is not None
    assert (change.record["spl_state"], change.record["loq_issued"], change.record["mqsa_qualified"]) == (
        "CO",
        D(2026, 6, 15),
        True,
    )
    assert (change.record["reading_state"], change.record["destination"]) == ("CO", "READER1@10.0.0.5:104")
    action, key, _user, old, new = audit_rows(app)[-1]
    assert (action, key) == ("radiologist.set", NPI_C)
    assert old == {
        "spl_state": None,
        "loq_issued": None,
        "mqsa_qualified": False,
        "reading_state": None,
        "destination": None,
    }
    assert new == {
        "spl_state": "CO",
        "loq_issued": "2026-06-15",
        "mqsa_qualified": True,
        "reading_state": "CO",
        "destination": "READER1@10.0.0.5:104",
    }
    assert roster.set(NPI_C, OS_USER, destination="READER2@[::1]:11112").record["destination"] == "READER2@[::1]:11112"  # type: ignore[index]
    with pytest.raises(ValidationError, match="bad destination port '0' \\(expected 1-65535\\)"):
        roster.set(NPI_C, OS_USER, destination="READER2@host:0")
    cleared = roster.set(NPI_C, OS_USER, spl_state=None, destination=None, mqsa=True)
    assert cleared.record is not None and cleared.record["spl_state"] is None and cleared.record["destination"] is None
    assert audit_rows(app)[-1][3:] == (
        {"spl_state": "CO", "destination": "READER2@[::1]:11112"},
        {"spl_state": None, "destination": None},
    )
    with app.sessions() as session:
        row = session.scalars(select(Radiologist)).one()
        assert (row.destination_ae_title, row.destination_host, row.destination_port) == (None, None, None)


def test_set_radiologist_without_a_difference_writes_nothing(app: RouterApp) -> None:
    app.roster.radiologists.add(NPI_C, "Doe^Jane", OS_USER)
    change = app.roster.radiologists.set(NPI_C, OS_USER, name="Doe^Jane", mqsa=False)
    assert change.changed is False and change.rerouted == ()
    assert [row[0] for row in audit_rows(app)] == ["radiologist.add"]
    with pytest.raises(ValidationError, match="nothing to change"):
        app.roster.radiologists.set(NPI_C, OS_USER)


@pytest.mark.parametrize(("loq", "ok"), [(TODAY, True), (TODAY + dt.timedelta(days=1), False)])
def test_letter_of_qualification_cannot_be_dated_in_the_future(app: RouterApp, loq: dt.date, ok: bool) -> None:
    app.roster.radiologists.add(NPI_C, "Doe^Jane", OS_USER)
    if ok:
        assert app.roster.radiologists.set(NPI_C, OS_USER, loq_issued=loq).record["loq_issued"] == loq  # type: ignore[index]
    else:
        with pytest.raises(ValidationError, match="is in the future"):
            app.roster.radiologists.set(NPI_C, OS_USER, loq_issued=loq)


@pytest.mark.parametrize("state", ["AA", "AE", "AP", "MH", "FM", "PW", "ZZ", "Texass", ""])
def test_set_radiologist_refuses_non_jurisdictions(app: RouterApp, state: str) -> None:
    app.roster.radiologists.add(NPI_C, "Doe^Jane", OS_USER)
    with pytest.raises(ValidationError, match="not a US licensing jurisdiction"):
        app.roster.radiologists.set(NPI_C, OS_USER, spl_state=state)


def test_unknown_npi_is_not_found(app: RouterApp) -> None:
    with pytest.raises(NotFoundError, match="no radiologist with NPI 1234567893"):
        app.roster.radiologists.show(NPI_C)
    with pytest.raises(NotFoundError):
        app.roster.licenses.add(NPI_C, "TX", "X1", D(2027, 1, 1), OS_USER)


# --------------------------------------------------------------------------- licenses


@pytest.mark.parametrize(
    ("given", "code"),
    [
        ("tx", "TX"),
        ("Texas", "TX"),
        ("dc", "DC"),
        ("District of Columbia", "DC"),
        ("PR", "PR"),
        ("GU", "GU"),
        ("VI", "VI"),
        ("AS", "AS"),
        ("MP", "MP"),
    ],
)
def test_license_states_include_dc_and_territories(app: RouterApp, given: str, code: str) -> None:
    app.roster.radiologists.add(NPI_C, "Doe^Jane", OS_USER)
    change = app.roster.licenses.add(NPI_C, given, "N-1", D(2027, 6, 30), OS_USER)
    assert change.entity_key == f"{NPI_C}/{code}"
    assert [row["state"] for row in app.roster.licenses.list(npi=NPI_C)] == [code]


@pytest.mark.parametrize(
    ("issued", "expires", "ok"),
    [(D(2026, 1, 1), D(2026, 1, 1), True), (D(2026, 1, 2), D(2026, 1, 1), False), (None, D(2020, 1, 1), True)],
)
def test_license_expiry_not_before_issue(app: RouterApp, issued: dt.date | None, expires: dt.date, ok: bool) -> None:
    app.roster.radiologists.add(NPI_C, "Doe^Jane", OS_USER)
    if ok:
        app.roster.licenses.add(NPI_C, "TX", "N-1", expires, OS_USER, issued=issued)
        assert app.roster.licenses.list()[0]["expires"] == expires
    else:
        with pytest.raises(ValidationError, match="license expires 2026-01-01 before it is issued 2026-01-02"):
            app.roster.licenses.add(NPI_C, "TX", "N-1", expires, OS_USER, issued=issued)


def test_license_add_audit_and_duplicate(app: RouterApp) -> None:
    app.roster.radiologists.add(NPI_C, "Doe^Jane", OS_USER)
    app.roster.licenses.add(
        NPI_C, "TX", "ABC123", D(2027, 6, 30), OS_USER, issued=D(2020, 1, 1), pathway="imlc", verified_on=D(2026, 11, 1)
    )
    action, key, user, old, new = audit_rows(app)[-1]
    assert (action, key, user, old) == ("license.add", "1234567893/TX", OS_USER, None)
    assert new is not None and (
        new["number"],
        new["pathway"],
        new["status"],
        new["issued"],
        new["expires"],
        new["verified_on"],
    ) == ("ABC123", "imlc", "active", "2020-01-01", "2027-06-30", "2026-11-01")
    with pytest.raises(ConflictError, match="already holds a license in TX"):
        app.roster.licenses.add(NPI_C, "Texas", "OTHER", D(2027, 6, 30), OS_USER)
    with pytest.raises(ValidationError, match="bad pathway 'compact'"):
        app.roster.licenses.add(NPI_C, "CO", "X", D(2027, 6, 30), OS_USER, pathway="compact")


@pytest.mark.parametrize(
    ("status", "in_lieu", "action"),
    [
        ("active", False, None),
        ("expired", False, None),
        ("suspended", False, LicenseStatus.SUSPENDED),
        ("revoked", False, LicenseStatus.REVOKED),
        ("surrendered", False, None),  # a plain surrender is not discipline
        ("surrendered", True, LicenseStatus.SURRENDERED),
    ],
)
def test_set_status_records_disciplinary_actions(
    app: RouterApp, status: str, in_lieu: bool, action: LicenseStatus | None
) -> None:
    app.roster.radiologists.add(NPI_C, "Doe^Jane", OS_USER)
    app.roster.licenses.add(
        NPI_C, "TX", "ABC123", D(2027, 6, 30), OS_USER, status="expired" if status == "active" else "active"
    )
    change = app.roster.licenses.set_status(
        NPI_C, "TX", status, OS_USER, since=D(2026, 10, 2), in_lieu_of_discipline=in_lieu
    )
    assert change.record is not None
    assert (change.record["status"], change.record["status_since"], change.record["in_lieu_of_discipline"]) == (
        LicenseStatus(status),
        D(2026, 10, 2),
        in_lieu,
    )
    with app.sessions() as session:
        actions = [(a.state, a.action, a.action_date) for a in session.scalars(select(DisciplinaryAction))]
    assert actions == ([] if action is None else [("TX", action, D(2026, 10, 2))])
    _action, key, _user, old, new = audit_rows(app)[-1]
    assert key == "1234567893/TX" and old is not None and new is not None
    assert new["status"] == status and new["status_since"] == "2026-10-02"
    assert ("disciplinary_action" in new) == (action is not None)


def test_set_status_defaults_to_today_in_the_routing_time_zone(app: RouterApp, clock) -> None:  # type: ignore[no-untyped-def]
    app.roster.radiologists.add(NPI_C, "Doe^Jane", OS_USER)
    app.roster.licenses.add(NPI_C, "TX", "ABC123", D(2027, 6, 30), OS_USER)
    clock.set(dt.datetime(2026, 11, 29, 3, 0, tzinfo=dt.UTC))  # 2026-11-28 21:00 in Chicago
    app.routing.policy = dataclasses.replace(app.routing.policy, timezone="America/Chicago")
    change = app.roster.licenses.set_status(NPI_C, "TX", "suspended", OS_USER)
    assert change.record is not None and change.record["status_since"] == D(2026, 11, 28)


@pytest.mark.parametrize(("since", "ok"), [(TODAY, True), (TODAY + dt.timedelta(days=1), False)])
def test_set_status_since_cannot_be_in_the_future(app: RouterApp, since: dt.date, ok: bool) -> None:
    app.roster.radiologists.add(NPI_C, "Doe^Jane", OS_USER)
    app.roster.licenses.add(NPI_C, "TX", "ABC123", D(2027, 6, 30), OS_USER)
    if ok:
        assert app.roster.licenses.set_status(NPI_C, "TX", "suspended", OS_USER, since=since).changed
    else:
        with pytest.raises(ValidationError, match="since 2026-11-30 is in the future"):
            app.roster.licenses.set_status(NPI_C, "TX", "suspended", OS_USER, since=since)


def test_set_status_twice_is_a_no_op_and_in_lieu_needs_surrender(app: RouterApp) -> None:
    app.roster.radiologists.add(NPI_C, "Doe^Jane", OS_USER)
    app.roster.licenses.add(NPI_C, "TX", "ABC123", D(2027, 6, 30), OS_USER)
    assert app.roster.licenses.set_status(NPI_C, "TX", "revoked", OS_USER, since=D(2026, 11, 1)).changed
    again = app.roster.licenses.set_status(NPI_C, "TX", "revoked", OS_USER, since=D(2026, 11, 1))
    assert again.changed is False
    with app.sessions() as session:
        assert len(list(session.scalars(select(DisciplinaryAction)))) == 1
    assert [row[0] for row in audit_rows(app)].count("license.set_status") == 1
    with pytest.raises(ValidationError, match="in lieu of discipline applies only to status surrendered"):
        app.roster.licenses.set_status(NPI_C, "TX", "suspended", OS_USER, in_lieu_of_discipline=True)
    with pytest.raises(NotFoundError, match="NPI 1234567893 holds no license in CO"):
        app.roster.licenses.set_status(NPI_C, "CO", "suspended", OS_USER)


def test_license_set_renews_and_checks_dates(app: RouterApp) -> None:
    app.roster.radiologists.add(NPI_C, "Doe^Jane", OS_USER)
    app.roster.licenses.add(NPI_C, "TX", "ABC123", D(2027, 6, 30), OS_USER, issued=D(2020, 1, 1))
    change = app.roster.licenses.set(NPI_C, "TX", OS_USER, expires=D(2029, 6, 30), number="ABC124", verified_on=TODAY)
    assert change.record is not None and (
        change.record["expires"],
        change.record["number"],
        change.record["verified_on"],
    ) == (D(2029, 6, 30), "ABC124", TODAY)
    assert audit_rows(app)[-1][3:] == (
        {"expires": "2027-06-30", "number": "ABC123", "verified_on": None},
        {"expires": "2029-06-30", "number": "ABC124", "verified_on": "2026-11-29"},
    )
    with pytest.raises(ValidationError, match="license expires 2019-12-31 before it is issued 2020-01-01"):
        app.roster.licenses.set(NPI_C, "TX", OS_USER, expires=D(2019, 12, 31))
    assert app.roster.licenses.set(NPI_C, "TX", OS_USER, expires=D(2020, 1, 1)).record["expires"] == D(2020, 1, 1)  # type: ignore[index]
    with pytest.raises(ValidationError, match="nothing to change"):
        app.roster.licenses.set(NPI_C, "TX", OS_USER)
    with pytest.raises(ValidationError, match="verified-on date 2026-11-30 is in the future"):
        app.roster.licenses.set(NPI_C, "TX", OS_USER, verified_on=TODAY + dt.timedelta(days=1))


def test_clear_hold_only_on_compact_licenses(app: RouterApp) -> None:
    app.roster.radiologists.add(NPI_C, "Doe^Jane", OS_USER)
    app.roster.licenses.add(NPI_C, "TX", "T1", D(2027, 6, 30), OS_USER, pathway="imlc")
    app.roster.licenses.add(NPI_C, "CO", "C1", D(2027, 6, 30), OS_USER)
    with pytest.raises(
        ValidationError, match="license TX-T1 has no Compact hold to clear: no disciplinary action is recorded"
    ):
        app.roster.licenses.clear_hold(NPI_C, "TX", OS_USER)
    app.roster.licenses.add(NPI_C, "OK", "O1", D(2027, 6, 30), OS_USER)
    app.roster.licenses.set_status(NPI_C, "OK", "suspended", OS_USER)  # the action that holds TX-T1
    change = app.roster.licenses.clear_hold(NPI_C, "TX", OS_USER)
    assert change.record is not None and change.record["compact_hold_cleared_on"] == TODAY
    assert audit_rows(app)[-1][0::3] == ("license.clear_hold", {"compact_hold_cleared_on": None})
    with pytest.raises(ValidationError, match="license CO-C1 is a full license; only IMLC licenses are held"):
        app.roster.licenses.clear_hold(NPI_C, "CO", OS_USER)


# --------------------------------------------------------------------------- facilities


@pytest.mark.parametrize(
    ("ae_title", "message"),
    [
        ("", "AE title must not be empty"),
        ("   ", "AE title must not be empty"),
        ("A" * 17, "AE title 'AAAAAAAAAAAAAAAAA' is longer than 16 characters"),
        ("CT\\NORTH", "AE title 'CT\\\\NORTH' holds a backslash or a non-printable character"),
    ],
)
def test_facility_ae_title_is_checked(app: RouterApp, ae_title: str, message: str) -> None:
    with pytest.raises(ValidationError) as caught:
        app.roster.facilities.add(ae_title, "TX", OS_USER)
    assert str(caught.value) == message


def test_facility_sixteen_character_ae_title_is_accepted(app: RouterApp) -> None:
    assert app.roster.facilities.add("A" * 16, "TX", OS_USER).entity_key == "A" * 16


def test_facility_add_set_show_remove(app: RouterApp) -> None:
    roster = app.roster.facilities
    change = roster.add(
        "CT_NORTH",
        "tx",
        OS_USER,
        name="North",
        timezone="America/Chicago",
        federal="va",
        aliases=["North  Texas imaging", "NTI CT North", "nti ct north"],
    )
    assert change.record is not None and change.record["aliases"] == ["NORTH TEXAS IMAGING", "NTI CT NORTH"]
    assert change.record["federal"].value == "va" and change.record["state"] == "TX"
    with pytest.raises(ConflictError, match="facility CT_NORTH is already registered"):
        roster.add("CT_NORTH", "TX", OS_USER)
    with pytest.raises(ConflictError, match="alias 'NTI CT NORTH' already belongs to facility CT_NORTH"):
        roster.add("MR_SOUTH", "TX", OS_USER, aliases=["NTI CT North"])
    with pytest.raises(ValidationError, match="unknown time zone 'Mars/Base'"):
        roster.add("MR_SOUTH", "TX", OS_USER, timezone="Mars/Base")
    updated = roster.set(
        "CT_NORTH",
        OS_USER,
        state="OK",
        federal=None,
        requires_privileges=True,
        add_aliases=["Okla Imaging"],
        remove_aliases=["nti ct north"],
    )
    assert updated.record is not None
    assert (updated.record["state"], updated.record["federal"], updated.record["requires_privileges"]) == (
        "OK",
        None,
        True,
    )
    assert updated.record["aliases"] == ["NORTH TEXAS IMAGING", "OKLA IMAGING"]
    assert audit_rows(app)[-1][3:] == (
        {
            "state": "TX",
            "requires_privileges": False,
            "federal": "va",
            "aliases": ["NORTH TEXAS IMAGING", "NTI CT NORTH"],
        },
        {
            "state": "OK",
            "requires_privileges": True,
            "federal": None,
            "aliases": ["NORTH TEXAS IMAGING", "OKLA IMAGING"],
        },
    )
    with pytest.raises(NotFoundError, match="facility CT_NORTH has no alias 'NOPE'"):
        roster.set("CT_NORTH", OS_USER, remove_aliases=["nope"])
    assert roster.show("CT_NORTH")["study_count"] == 0
    removed = roster.remove("CT_NORTH", OS_USER)
    assert removed.record is None and roster.list() == []
    with app.sessions() as session:
        assert list(session.scalars(select(FacilityAlias))) == []
    assert audit_rows(app)[-1][0] == "facility.remove"
    with pytest.raises(NotFoundError, match="no facility with AE title CT_NORTH"):
        roster.show("CT_NORTH")


def test_removing_a_facility_with_privileges_needs_force_and_keeps_studies(app: RouterApp) -> None:
    roster_with_readers(app, (NPI_A, "TX"))
    app.roster.privileges.grant(NPI_A, "CT_NORTH", D(2026, 1, 1), D(2027, 1, 1), OS_USER)
    add_study(app, "1.2.3.1")
    app.routing.route_due()
    assert study_state(app, "1.2.3.1")["facility_id"] is not None
    with pytest.raises(ConflictError, match="facility CT_NORTH has 1 privilege grant"):
        app.roster.facilities.remove("CT_NORTH", OS_USER)
    app.roster.facilities.remove("CT_NORTH", OS_USER, force=True)
    with app.sessions() as session:
        assert list(session.scalars(select(Privilege))) == [] and list(session.scalars(select(Facility))) == []
    state = study_state(app, "1.2.3.1")
    assert state["facility_id"] is None and state["status"] is StudyStatus.ASSIGNED and state["current_npi"] == NPI_A
    old = audit_rows(app)[-1][3]
    assert old is not None and [grant["npi"] for grant in old["privileges"]] == [NPI_A]


# --------------------------------------------------------------------------- privileges


@pytest.mark.parametrize(
    ("start", "end", "ok"), [(D(2026, 1, 1), D(2026, 1, 1), True), (D(2026, 1, 2), D(2026, 1, 1), False)]
)
def test_privilege_period_is_checked(app: RouterApp, start: dt.date, end: dt.date, ok: bool) -> None:
    roster_with_readers(app, (NPI_A, "TX"))
    if ok:
        assert app.roster.privileges.grant(NPI_A, "CT_NORTH", start, end, OS_USER).record["valid_until"] == end  # type: ignore[index]
    else:
        with pytest.raises(ValidationError, match="privileges end 2026-01-01 before they start 2026-01-02"):
            app.roster.privileges.grant(NPI_A, "CT_NORTH", start, end, OS_USER)


def test_privilege_revoke_by_id_and_by_pair(app: RouterApp, clock) -> None:  # type: ignore[no-untyped-def]
    roster_with_readers(app, (NPI_A, "TX"))
    app.roster.facilities.set("CT_NORTH", OS_USER, timezone="Pacific/Honolulu")  # 05:00 there on 11-29
    first = app.roster.privileges.grant(NPI_A, "CT_NORTH", D(2026, 1, 1), D(2027, 1, 1), OS_USER, by_proxy=True).record
    with pytest.raises(ConflictError, match="already grants"):
        app.roster.privileges.grant(NPI_A, "CT_NORTH", D(2026, 1, 1), D(2027, 1, 1), OS_USER)
    second = app.roster.privileges.grant(NPI_A, "CT_NORTH", D(2027, 1, 2), D(2028, 1, 1), OS_USER).record
    assert first is not None and second is not None
    clock.set(dt.datetime(2026, 11, 29, 9, 0, tzinfo=dt.UTC))  # 2026-11-28 23:00 in Honolulu
    change = app.roster.privileges.revoke(OS_USER, privilege_id=first["id"])
    assert change.record is not None and change.record["revoked_on"] == D(2026, 11, 28)
    with pytest.raises(ConflictError, match=f"privilege {first['id']} was already revoked on 2026-11-28"):
        app.roster.privileges.revoke(OS_USER, privilege_id=first["id"])
    pair = app.roster.privileges.revoke(OS_USER, npi=NPI_A, facility_ae="CT_NORTH", on=D(2027, 3, 1))
    assert pair.record is not None and [item["id"] for item in pair.record["revoked"]] == [second["id"]]
    with pytest.raises(NotFoundError, match="holds no unrevoked privileges at CT_NORTH"):
        app.roster.privileges.revoke(OS_USER, npi=NPI_A, facility_ae="CT_NORTH")
    with pytest.raises(ValidationError, match="name the privilege"):
        app.roster.privileges.revoke(OS_USER, npi=NPI_A)
    assert [row[0] for row in audit_rows(app)][-2:] == ["privilege.revoke", "privilege.revoke"]
    assert [(row["id"], row["revoked_on"], row["by_proxy"]) for row in app.roster.privileges.list(npi=NPI_A)] == [
        (first["id"], D(2026, 11, 28), True),
        (second["id"], D(2027, 3, 1), False),
    ]


# --------------------------------------------------------------------------- audit


def test_audit_list_newest_first_with_filters(app: RouterApp, clock) -> None:  # type: ignore[no-untyped-def]
    app.roster.radiologists.add(NPI_C, "Doe^Jane", OS_USER)
    clock.advance(60)
    app.roster.licenses.add(NPI_C, "TX", "T1", D(2027, 6, 30), OS_USER)
    clock.advance(60)
    app.roster.facilities.add("CT_NORTH", "TX", "someone-else")
    rows = app.roster.audit_list()
    assert [(r["action"], r["entity_key"], r["os_user"]) for r in rows] == [
        ("facility.add", "CT_NORTH", "someone-else"),
        ("license.add", "1234567893/TX", OS_USER),
        ("radiologist.add", NPI_C, OS_USER),
    ]
    assert rows[0]["at"] == dt.datetime(2026, 11, 29, 15, 2, tzinfo=dt.UTC)
    assert [r["action"] for r in app.roster.audit_list(limit=1)] == ["facility.add"]
    assert [r["action"] for r in app.roster.audit_list(entity="license")] == ["license.add"]
    assert [r["action"] for r in app.roster.audit_list(key=NPI_C)] == ["license.add", "radiologist.add"]
    assert [r["action"] for r in app.roster.audit_list(key="1234567893/TX")] == ["license.add"]


def test_a_failed_change_writes_no_audit_row(app: RouterApp) -> None:
    app.roster.radiologists.add(NPI_C, "Doe^Jane", OS_USER)
    app.roster.facilities.add("CT_NORTH", "TX", OS_USER, aliases=["North"])
    with pytest.raises(ConflictError, match="alias 'NORTH' already belongs to facility CT_NORTH"):
        app.roster.facilities.add("CT_SOUTH", "TX", OS_USER, aliases=["South", "North"])
    assert [row[0] for row in audit_rows(app)] == ["radiologist.add", "facility.add"]
    assert [row["ae_title"] for row in app.roster.facilities.list()] == ["CT_NORTH"]


# --------------------------------------------------------------------------- re-evaluation


def test_license_added_routes_a_held_study(app: RouterApp) -> None:
    app.roster.facilities.add("CT_NORTH", "TX", OS_USER)
    app.roster.radiologists.add(NPI_A, "Reader^A", OS_USER)
    add_study(app, "1.2.3.1")
    app.routing.route_due()
    assert study_state(app, "1.2.3.1")["hold_reason"] is HoldReason.NO_ELIGIBLE_RADIOLOGIST
    change = app.roster.licenses.add(NPI_A, "TX", "T-1", D(2027, 6, 30), OS_USER)
    assert [(r.study_instance_uid, r.status, r.assigned_npi, r.previous_status) for r in change.rerouted] == [
        ("1.2.3.1", StudyStatus.ASSIGNED, NPI_A, StudyStatus.HELD)
    ]
    assert change.rerouted[0].describe() == f"study 1.2.3.1: assigned to {NPI_A}"
    assert study_state(app, "1.2.3.1")["current_npi"] == NPI_A
    # an unrelated change re-evaluates too, but reports no study as changed
    assert app.roster.radiologists.add(NPI_B, "Reader^B", OS_USER).rerouted == ()


def test_suspension_of_the_assigned_reader_reassigns_the_study(app: RouterApp) -> None:
    roster_with_readers(app, (NPI_A, "TX"), (NPI_B, "TX"))
    add_study(app, "1.2.3.1")
    app.routing.route_due()
    assert study_state(app, "1.2.3.1")["current_npi"] == NPI_A  # lowest NPI wins the tie
    change = app.roster.licenses.set_status(NPI_A, "TX", "suspended", OS_USER, since=D(2026, 11, 20))
    assert [r.describe() for r in change.rerouted] == [f"study 1.2.3.1: reassigned from {NPI_A} to {NPI_B}"]
    state = study_state(app, "1.2.3.1")
    assert state["status"] is StudyStatus.ASSIGNED and state["current_npi"] == NPI_B and state["needs_review"] is True
    (old_npi, old_superseded, reason), (new_npi, new_superseded, _) = state["assignments"]
    assert (old_npi, old_superseded, new_npi, new_superseded) == (NPI_A, True, NPI_B, False)
    assert (
        reason is not None and "license.set_status" in reason and "license TX-0012 suspended since 2026-11-20" in reason
    )


def test_suspension_of_the_only_reader_holds_the_study(app: RouterApp) -> None:
    roster_with_readers(app, (NPI_A, "TX"))
    add_study(app, "1.2.3.1")
    app.routing.route_due()
    change = app.roster.licenses.set_status(NPI_A, "TX", "revoked", OS_USER)
    assert [r.describe() for r in change.rerouted] == [
        f"study 1.2.3.1: held (no_eligible_radiologist), withdrawn from {NPI_A}"
    ]
    state = study_state(app, "1.2.3.1")
    assert (state["status"], state["hold_reason"], state["current_npi"]) == (
        StudyStatus.HELD,
        HoldReason.NO_ELIGIBLE_RADIOLOGIST,
        None,
    )
    # reinstating the license routes the held study back
    back = app.roster.licenses.set_status(NPI_A, "TX", "active", OS_USER)
    assert [r.describe() for r in back.rerouted] == [f"study 1.2.3.1: assigned to {NPI_A}"]


def test_deactivation_withdraws_and_activation_restores(app: RouterApp) -> None:
    roster_with_readers(app, (NPI_A, "TX"))
    add_study(app, "1.2.3.1")
    app.routing.route_due()
    off = app.roster.radiologists.deactivate(NPI_A, OS_USER)
    assert [(r.status, r.previous_npi) for r in off.rerouted] == [(StudyStatus.HELD, NPI_A)]
    assert app.roster.radiologists.deactivate(NPI_A, OS_USER).changed is False
    on = app.roster.radiologists.activate(NPI_A, OS_USER)
    assert [(r.status, r.assigned_npi) for r in on.rerouted] == [(StudyStatus.ASSIGNED, NPI_A)]
    assert [row[0::3] for row in audit_rows(app) if row[0].startswith("radiologist.") and "activate" in row[0]] == [
        ("radiologist.deactivate", {"active": True}),
        ("radiologist.activate", {"active": False}),
    ]


def test_privilege_revocation_withdraws_where_privileges_are_required(app: RouterApp) -> None:
    roster_with_readers(app, (NPI_A, "TX"), requires_privileges=True)
    add_study(app, "1.2.3.1")
    app.routing.route_due()
    assert study_state(app, "1.2.3.1")["status"] is StudyStatus.HELD
    grant = app.roster.privileges.grant(NPI_A, "CT_NORTH", D(2026, 1, 1), D(2026, 11, 29), OS_USER)
    assert [r.assigned_npi for r in grant.rerouted] == [NPI_A]  # valid through today, included
    revoke = app.roster.privileges.revoke(OS_USER, npi=NPI_A, facility_ae="CT_NORTH")
    assert [(r.status, r.previous_npi) for r in revoke.rerouted] == [(StudyStatus.HELD, NPI_A)]


def test_other_boards_suspension_holds_compact_licenses_until_cleared(app: RouterApp) -> None:
    """Compact section 10: a suspension in OK holds the reader's IMLC license in TX for 90 days."""
    app.roster.facilities.add("CT_NORTH", "TX", OS_USER)
    app.roster.radiologists.add(NPI_A, "Reader^A", OS_USER)
    app.roster.radiologists.set(NPI_A, OS_USER, spl_state="CO")
    app.roster.licenses.add(NPI_A, "CO", "CO-1", D(2028, 1, 1), OS_USER)
    app.roster.licenses.add(NPI_A, "OK", "OK-1", D(2028, 1, 1), OS_USER)
    app.roster.licenses.add(NPI_A, "TX", "TX-1", D(2028, 1, 1), OS_USER, pathway=LicensePathway.IMLC)
    add_study(app, "1.2.3.1")
    app.routing.route_due()
    assert study_state(app, "1.2.3.1")["current_npi"] == NPI_A
    suspended = app.roster.licenses.set_status(NPI_A, "OK", "suspended", OS_USER, since=D(2026, 11, 1))
    assert [(r.status, r.previous_npi) for r in suspended.rerouted] == [(StudyStatus.HELD, NPI_A)]
    # the OK board lifts its suspension: the TX Compact license stays held (the action is history)
    lifted = app.roster.licenses.set_status(NPI_A, "OK", "active", OS_USER)
    assert lifted.rerouted == ()
    with app.sessions() as session:
        assert [(a.state, a.action_date) for a in session.scalars(select(DisciplinaryAction))] == [
            ("OK", D(2026, 11, 1))
        ]
    cleared = app.roster.licenses.clear_hold(NPI_A, "TX", OS_USER)
    assert [(r.status, r.assigned_npi) for r in cleared.rerouted] == [(StudyStatus.ASSIGNED, NPI_A)]


def test_list_and_show(app: RouterApp) -> None:
    roster_with_readers(app, (NPI_A, "TX"), (NPI_A, "OK"), (NPI_B, "CO"))
    app.roster.licenses.set_status(NPI_A, "OK", "suspended", OS_USER, since=D(2026, 11, 2))
    add_study(app, "1.2.3.1")
    app.routing.route_due()
    listed = app.roster.radiologists.list()
    assert [(r["npi"], r["licenses"], r["open_assignments"], r["active"]) for r in listed] == [
        (NPI_A, 2, 1, True),
        (NPI_B, 1, 0, True),
    ]
    shown = app.roster.radiologists.show(NPI_A)
    assert [(x["state"], x["status"]) for x in shown["licenses"]] == [
        ("OK", LicenseStatus.SUSPENDED),
        ("TX", LicenseStatus.ACTIVE),
    ]
    assert shown["open_assignments"] == 1
    assert shown["disciplinary_actions"] == [
        {
            "state": "OK",
            "license_number": "OK-0012",
            "action": LicenseStatus.SUSPENDED,
            "action_date": D(2026, 11, 2),
            "recorded_at": app.clock(),
        }
    ]
    assert [(r["npi"], r["state"]) for r in app.roster.licenses.list(state="tx")] == [(NPI_A, "TX")]
    assert [(r["npi"], r["state"]) for r in app.roster.licenses.list()] == [(NPI_A, "OK"), (NPI_A, "TX"), (NPI_B, "CO")]
    with app.sessions() as session:
        assert session.scalars(select(License.state).order_by(License.state)).all() == ["CO", "OK", "TX"]


def test_unset_marker_is_distinct_from_none() -> None:
    assert UNSET is not None and repr(UNSET) == "UNSET"


def test_a_unique_constraint_violation_becomes_a_conflict(app: RouterApp) -> None:
    """Two admins adding the same NPI at once: the constraint, not the check, refuses the second."""
    runner = ChangeRunner(app.sessions, app.routing, app.clock)

    def work(session: Session, ctx: ChangeContext) -> Outcome:
        for _ in range(2):
            session.add(Radiologist(npi=NPI_C, name="Doe^Jane", active=True, mqsa_qualified=False, created_at=ctx.at))
        session.flush()
        return Outcome("radiologist", NPI_C, None)

    with pytest.raises(
        ConflictError, match=r"radiologist\.add conflicts with a change made at the same time; nothing was saved"
    ):
        runner.run(OS_USER, "radiologist.add", work)
    assert app.roster.radiologists.list() == []


def test_change_is_kept_when_re_evaluation_fails(tmp_path: Path, database_url: str, clock: FakeClock) -> None:
    membership = tmp_path / "imlc.csv"
    shutil.copy(REPO / "config" / "imlc_membership.csv", membership)
    settings = make_settings(tmp_path, database_url).replace("imlc", membership_file=membership)
    with RouterApp.open(settings, upgrade=True, clock=clock) as app:
        roster_with_readers(app, (NPI_A, "CO"))
        add_study(app, "1.2.3.1")
        app.routing.route_due()
        membership.unlink()
        change = app.roster.licenses.add(NPI_A, "TX", "T-1", D(2027, 6, 30), OS_USER)
        assert change.changed and change.rerouted == ()
        assert change.reevaluation_error is not None and change.reevaluation_error.startswith(
            f"cannot read {membership}"
        )
        assert [row["state"] for row in app.roster.licenses.list(npi=NPI_A)] == ["CO", "TX"]
        assert study_state(app, "1.2.3.1")["status"] is StudyStatus.HELD
