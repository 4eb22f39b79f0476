"""Eligibility changes with the calendar alone: the server's periodic recheck acts on it; manual
study actions are audited."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from roster_fixtures import NPI_A, NPI_B, OS_USER, add_study, audit_rows, study_state

from router.app import RouterApp
from router.config import Settings
from router.domain.enums import HoldReason, StudyStatus
from router.server import RouterServer
from tests.conftest import FakeClock, make_settings


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    """Reads stay open for days here: a week's routine turnaround keeps escalation out of these tests."""
    return make_settings(tmp_path, database_url, tat_routine_minutes=7 * 1440.0)


def _roster(app: RouterApp, a_expires: dt.date) -> None:
    roster = app.roster
    roster.facilities.add("CT_NORTH", "TX", OS_USER, name="North Imaging")
    roster.radiologists.add(NPI_A, "Reader^A", OS_USER)
    roster.radiologists.add(NPI_B, "Reader^B", OS_USER)
    roster.licenses.add(NPI_A, "TX", "TX-A", a_expires, OS_USER, issued=dt.date(2020, 1, 1))


def test_recheck_withdraws_a_study_whose_readers_license_expired_overnight(app: RouterApp, clock: FakeClock) -> None:
    _roster(app, a_expires=dt.date(2026, 11, 30))  # valid through Nov 30 (both days included)
    app.roster.licenses.add(NPI_B, "TX", "TX-B", dt.date(2028, 6, 30), OS_USER, issued=dt.date(2020, 1, 1))
    add_study(app, "1.2.826.0.1.10")
    app.routing.route_due()
    assert study_state(app, "1.2.826.0.1.10")["current_npi"] == NPI_A  # tie on load: lowest NPI
    server = RouterServer(app)
    clock.set(dt.datetime(2026, 11, 30, 23, 59, tzinfo=dt.UTC))
    server.recheck()
    assert study_state(app, "1.2.826.0.1.10")["current_npi"] == NPI_A  # last valid day
    clock.set(dt.datetime(2026, 12, 1, 0, 0, tzinfo=dt.UTC))
    server.recheck()
    state = study_state(app, "1.2.826.0.1.10")
    assert state["status"] is StudyStatus.ASSIGNED
    assert state["current_npi"] == NPI_B
    assert state["needs_review"] is True
    withdrawn = state["assignments"][0]
    assert withdrawn[0] == NPI_A and withdrawn[1] is True
    assert withdrawn[2].startswith(f"periodic recheck: NPI {NPI_A} no longer eligible: license TX-A expired 2026-11-30")


def test_recheck_holds_when_nobody_is_left_and_assigns_when_someone_becomes_eligible(
    app: RouterApp, clock: FakeClock
) -> None:
    _roster(app, a_expires=dt.date(2026, 11, 30))
    add_study(app, "1.2.826.0.1.11")
    app.routing.route_due()
    server = RouterServer(app)
    clock.set(dt.datetime(2026, 12, 1, 9, 0, tzinfo=dt.UTC))
    server.recheck()
    state = study_state(app, "1.2.826.0.1.11")
    assert (state["status"], state["hold_reason"], state["current_npi"]) == (
        StudyStatus.HELD,
        HoldReason.NO_ELIGIBLE_RADIOLOGIST,
        None,
    )
    # a license whose validity starts tomorrow: added today without effect, counted by tomorrow's recheck
    with app.sessions.begin() as session:  # written straight to the table, as if by another tool: no CLI re-evaluation
        from sqlalchemy import select

        from router.db.models import License, Radiologist

        reader = session.scalars(select(Radiologist).where(Radiologist.npi == NPI_B)).one()
        session.add(
            License(
                radiologist_id=reader.id,
                state="TX",
                number="TX-B2",
                pathway="full",
                status="active",
                issued=dt.date(2026, 12, 2),
                expires=dt.date(2028, 6, 30),
            )
        )
    server.recheck()
    assert study_state(app, "1.2.826.0.1.11")["status"] is StudyStatus.HELD  # Dec 1: not yet issued
    clock.set(dt.datetime(2026, 12, 2, 0, 30, tzinfo=dt.UTC))
    server.recheck()
    state = study_state(app, "1.2.826.0.1.11")
    assert (state["status"], state["current_npi"]) == (StudyStatus.ASSIGNED, NPI_B)


def test_manual_state_and_assignment_are_audited(app: RouterApp) -> None:
    _roster(app, a_expires=dt.date(2028, 6, 30))
    app.roster.licenses.add(NPI_A, "OK", "OK-A", dt.date(2028, 6, 30), OS_USER, issued=dt.date(2020, 1, 1))
    app.roster.licenses.add(NPI_B, "OK", "OK-B", dt.date(2028, 6, 30), OS_USER, issued=dt.date(2020, 1, 1))
    add_study(app, "1.2.826.0.1.12")
    app.routing.route_due()
    before = len(audit_rows(app))
    app.routing.set_state("1.2.826.0.1.12", "OK", "admin1")
    app.routing.assign_manually("1.2.826.0.1.12", NPI_B, "admin2")
    rows = audit_rows(app)[before:]
    assert rows == [
        (
            "study.set_state",
            "1.2.826.0.1.12",
            "admin1",
            {
                "exam_state": "TX",
                "exam_state_source": "facility",
                "exam_state_detail": "facility CT_NORTH (North Imaging) is registered in TX",
            },
            {"exam_state": "OK", "exam_state_source": "manual"},
        ),
        (
            "study.assign",
            "1.2.826.0.1.12",
            "admin2",
            {"status": "assigned", "assigned_npi": NPI_A, "hold_reason": None},
            {"status": "assigned", "assigned_npi": NPI_B, "exam_state": "OK"},
        ),
    ]


def test_recheck_result_names_the_reader_it_took_the_study_from(app: RouterApp, clock: FakeClock) -> None:
    _roster(app, a_expires=dt.date(2026, 11, 30))
    add_study(app, "1.2.826.0.1.13")
    add_study(app, "1.2.826.0.1.14", calling_ae="NOWHERE")  # no exam state: held, not withdrawn
    app.routing.route_due()
    clock.set(dt.datetime(2026, 12, 1, 9, 0, tzinfo=dt.UTC))
    results = {
        r.study_instance_uid: (r.status, r.hold_reason, r.withdrawn_npi)
        for r in app.routing.reevaluate("manual recheck")
    }
    assert results == {
        "1.2.826.0.1.13": (StudyStatus.HELD, HoldReason.NO_ELIGIBLE_RADIOLOGIST, NPI_A),
        "1.2.826.0.1.14": (StudyStatus.HELD, HoldReason.NO_EXAM_STATE, None),
    }


def test_a_compact_hold_cannot_be_cleared_ahead_of_the_action(app: RouterApp, clock: FakeClock) -> None:
    """Compact section 10(d): every disciplinary action holds the other Compact licenses 90 days.
    A clear recorded before an action must not cover it (found by QA: a pre-emptive clear-hold
    let a reader take a Colorado study the day another board suspended them)."""
    import pytest

    from router.errors import ValidationError

    roster = app.roster
    roster.facilities.add("CT_DENVER", "CO", OS_USER)
    roster.radiologists.add(NPI_A, "Reader^A", OS_USER)
    roster.radiologists.set(NPI_A, OS_USER, spl_state="TX", loq_issued=dt.date(2026, 6, 1))
    roster.licenses.add(NPI_A, "TX", "TXA", dt.date(2029, 1, 1), OS_USER, issued=dt.date(2020, 1, 1))
    roster.licenses.add(NPI_A, "CO", "COA", dt.date(2029, 1, 1), OS_USER, issued=dt.date(2026, 7, 1), pathway="imlc")
    roster.licenses.add(NPI_A, "OK", "OKA", dt.date(2029, 1, 1), OS_USER, issued=dt.date(2020, 1, 1))
    roster.licenses.add(NPI_A, "NV", "NVA", dt.date(2029, 1, 1), OS_USER, issued=dt.date(2020, 1, 1))
    with pytest.raises(ValidationError, match="has no Compact hold to clear"):
        roster.licenses.clear_hold(NPI_A, "CO", OS_USER)
    add_study(app, "1.2.826.0.1.20", calling_ae="CT_DENVER")
    app.routing.route_due()
    assert study_state(app, "1.2.826.0.1.20")["current_npi"] == NPI_A

    roster.licenses.set_status(NPI_A, "OK", "suspended", OS_USER, since=dt.date(2026, 11, 20))
    state = study_state(app, "1.2.826.0.1.20")
    assert (state["status"], state["current_npi"]) == (StudyStatus.HELD, None)
    assert "IMLC license CO-COA held" in state["assignments"][0][2]

    roster.licenses.clear_hold(NPI_A, "CO", OS_USER)  # the Colorado board acted on the OK suspension
    assert study_state(app, "1.2.826.0.1.20")["current_npi"] == NPI_A

    roster.licenses.set_status(NPI_A, "NV", "revoked", OS_USER, since=dt.date(2026, 11, 29))  # a new action
    state = study_state(app, "1.2.826.0.1.20")
    assert (state["status"], state["current_npi"]) == (StudyStatus.HELD, None)
    resets = [row for row in audit_rows(app) if row[0] == "license.hold_reset"]
    assert resets == [
        (
            "license.hold_reset",
            f"{NPI_A}/CO",
            OS_USER,
            {"compact_hold_cleared_on": "2026-11-29"},
            {"compact_hold_cleared_on": None},
        )
    ]
