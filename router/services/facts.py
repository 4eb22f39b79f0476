"""Load roster rows into the plain value objects the licensure rules take.

Only radiologists who could matter are loaded in full: those holding a license in the exam
state (plus, when asked, everyone, for the fastest-path list). Everyone else is summarised as
"no license in XX" without loading their licenses, so routing time does not grow with the size
of the roster.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence

from sqlalchemy import func, select
from sqlalchemy.orm import Session, selectinload

from router.db.models import (
    Assignment,
    DisciplinaryAction,
    Facility,
    License,
    Privilege,
    Radiologist,
    Study,
)
from router.domain.eligibility_facts import (
    DisciplinaryActionFacts,
    LicenseFacts,
    PrivilegeFacts,
    ReaderFacts,
    StudyFacts,
)


def license_facts(row: License) -> LicenseFacts:
    """A :class:`LicenseFacts` from a license row."""
    return LicenseFacts(
        state=row.state,
        number=row.number,
        pathway=row.pathway,
        status=row.status,
        expires=row.expires,
        issued=row.issued,
        status_since=row.status_since,
        in_lieu_of_discipline=row.in_lieu_of_discipline,
        compact_hold_cleared_on=row.compact_hold_cleared_on,
        license_id=row.id,
    )


def _reader_query() -> object:
    return select(Radiologist).options(
        selectinload(Radiologist.licenses),
        selectinload(Radiologist.privileges).selectinload(Privilege.facility),
    )


def load_readers(session: Session, radiologist_ids: Iterable[int] | None = None) -> list[ReaderFacts]:
    """Reader facts for the given radiologists (all when ``None``), ordered by NPI."""
    statement = _reader_query()
    if radiologist_ids is not None:
        ids = list(radiologist_ids)
        if not ids:
            return []
        statement = statement.where(Radiologist.id.in_(ids))  # type: ignore[attr-defined]
    rows = list(session.scalars(statement.order_by(Radiologist.npi)))  # type: ignore[attr-defined]
    return _to_facts(session, rows)


def unlicensed_npis(session: Session, state: str) -> list[str]:
    """NPIs of radiologists with no license row in ``state``, in NPI order."""
    licensed = select(License.radiologist_id).where(License.state == state)
    return list(
        session.scalars(select(Radiologist.npi).where(Radiologist.id.not_in(licensed)).order_by(Radiologist.npi))
    )


def _to_facts(session: Session, rows: Sequence[Radiologist]) -> list[ReaderFacts]:
    ids = [row.id for row in rows]
    if not ids:
        return []
    open_counts = dict(
        session.execute(
            select(Assignment.radiologist_id, func.count(Assignment.id))
            .where(
                Assignment.radiologist_id.in_(ids),
                Assignment.superseded_at.is_(None),
                Assignment.completed_at.is_(None),
            )
            .group_by(Assignment.radiologist_id)
        ).all()
    )
    last_assigned = dict(
        session.execute(
            select(Assignment.radiologist_id, func.max(Assignment.assigned_at))
            .where(Assignment.radiologist_id.in_(ids))
            .group_by(Assignment.radiologist_id)
        ).all()
    )
    numbers = {lic.id: lic.number for row in rows for lic in row.licenses}
    actions: dict[int, list[DisciplinaryActionFacts]] = {}
    for action in session.scalars(select(DisciplinaryAction).where(DisciplinaryAction.radiologist_id.in_(ids))):
        number = numbers.get(action.license_id, "")
        actions.setdefault(action.radiologist_id, []).append(
            DisciplinaryActionFacts(
                state=action.state, license_number=number, action=action.action, action_date=action.action_date
            )
        )
    facts = []
    for row in rows:
        last = last_assigned.get(row.id)
        if last is not None and last.tzinfo is None:
            last = last.replace(tzinfo=dt.UTC)
        facts.append(
            ReaderFacts(
                radiologist_id=row.id,
                npi=row.npi,
                name=row.name,
                active=row.active,
                spl_state=row.spl_state,
                loq_issued=row.loq_issued,
                mqsa_qualified=row.mqsa_qualified,
                reading_state=row.reading_state,
                licenses=tuple(license_facts(lic) for lic in row.licenses),
                disciplinary_actions=tuple(actions.get(row.id, ())),
                privileges=tuple(
                    PrivilegeFacts(
                        facility_ae_title=priv.facility.ae_title,
                        valid_from=priv.valid_from,
                        valid_until=priv.valid_until,
                        by_proxy=priv.by_proxy,
                        revoked_on=priv.revoked_on,
                    )
                    for priv in row.privileges
                ),
                open_assignments=int(open_counts.get(row.id, 0)),
                last_assigned_at=last,
            )
        )
    return facts


def study_facts(study: Study, exam_state: str, facility: Facility | None) -> StudyFacts:
    """The study attributes the eligibility rules look at."""
    modalities = frozenset(item for item in (study.modalities or "").split("\\") if item)
    return StudyFacts(
        exam_state=exam_state,
        modalities=modalities,
        facility_ae_title=facility.ae_title if facility is not None else None,
        facility_requires_privileges=bool(facility.requires_privileges) if facility is not None else False,
        facility_federal=facility.federal if facility is not None else None,
    )


__all__ = [
    "license_facts",
    "load_readers",
    "study_facts",
    "unlicensed_npis",
]
