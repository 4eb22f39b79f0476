"""Helpers shared by the roster tests (the database, clock and app fixtures live in conftest.py).

Studies are made by inserting a ``receiving`` Study row from a registered facility and letting
the real routing timer route it (``RoutingService.route_due``), so assignments are the router's
own, with decisions and candidates.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import select

from router.app import RouterApp
from router.db.models import Assignment, AuditEntry, Radiologist, Study
from router.domain.enums import StudyStatus

OS_USER = "tester"

#: Valid NPIs (CMS check digit), lowest first: the assignment policy breaks ties by lowest NPI.
NPI_A = "1000000012"
NPI_B = "1000000020"
NPI_C = "1234567893"

#: "Today" of the ``clock`` fixture (2026-11-29 15:00 UTC) in the default routing time zone (UTC).
TODAY = dt.date(2026, 11, 29)


def add_study(
    app: RouterApp, uid: str, calling_ae: str = "CT_NORTH", modality: str = "CT", institution_name: str | None = None
) -> None:
    """Insert a study that has been quiet for ten minutes (due for routing)."""
    received = app.clock() - dt.timedelta(minutes=10)
    with app.sessions.begin() as session:
        session.add(
            Study(
                study_instance_uid=uid,
                status=StudyStatus.RECEIVING,
                first_calling_ae_title=calling_ae,
                institution_name=institution_name,
                modalities=modality,
                instance_count=0,
                size_bytes=0,
                first_received_at=received,
                last_received_at=received,
                needs_review=False,
            )
        )


def study_state(app: RouterApp, uid: str) -> dict[str, Any]:
    """Status, hold reason, review flag, current reader and every assignment (oldest first) of a study."""
    with app.sessions() as session:
        study = session.scalars(select(Study).where(Study.study_instance_uid == uid)).one()
        rows = session.execute(
            select(Assignment, Radiologist.npi)
            .join(Radiologist, Radiologist.id == Assignment.radiologist_id)
            .where(Assignment.study_id == study.id)
            .order_by(Assignment.id)
        ).all()
        current = [npi for assignment, npi in rows if assignment.superseded_at is None]
        return {
            "status": study.status,
            "hold_reason": study.hold_reason,
            "needs_review": study.needs_review,
            "facility_id": study.facility_id,
            "current_npi": current[0] if current else None,
            "assignments": [
                (npi, assignment.superseded_at is not None, assignment.superseded_reason) for assignment, npi in rows
            ],
        }


def audit_rows(app: RouterApp) -> list[tuple[str, str, str, dict[str, Any] | None, dict[str, Any] | None]]:
    """``(action, entity_key, os_user, old, new)`` of every audit row, oldest first."""
    with app.sessions() as session:
        rows = session.scalars(select(AuditEntry).order_by(AuditEntry.id))
        return [(row.action, row.entity_key, row.os_user, row.old_values, row.new_values) for row in rows]


def roster_with_readers(
    app: RouterApp, *readers: tuple[str, str], facility_state: str = "TX", requires_privileges: bool = False
) -> None:
    """Register facility CT_NORTH in ``facility_state`` and give each ``(npi, state)`` reader a full active license."""
    roster = app.roster
    roster.facilities.add(
        "CT_NORTH", facility_state, OS_USER, name="North Imaging", requires_privileges=requires_privileges
    )
    for npi, state in readers:
        if npi not in {row["npi"] for row in roster.radiologists.list()}:
            roster.radiologists.add(npi, f"Reader^{npi[-3:]}", OS_USER)
        roster.licenses.add(
            npi, state, f"{state}-{npi[-4:]}", dt.date(2028, 6, 30), OS_USER, issued=dt.date(2020, 1, 1)
        )
