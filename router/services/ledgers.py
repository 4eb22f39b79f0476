"""The two append-only ledgers: infrastructure cost and the professional component.

Infrastructure records (bytes stored, bytes forwarded) are written when the bytes are kept or
sent; they are never on a claim. Professional records are written when a read is reported.
Both are only ever inserted; a correction is a reversal plus a new record (DESIGN.md decision 5).
Money is integer cents.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from router.db.models import ForwardedInstance, InfrastructureEntry, Instance, ProfessionalEntry, Study
from router.domain.billing import cost_cents
from router.domain.enums import InfrastructureKind
from router.services.claims import CLAIM_COLUMNS
from router.timeutil import iso_utc


def record_storage(session: Session, study: Study, now: dt.datetime, cents_per_gib: int) -> InfrastructureEntry | None:
    """Write one storage record for the study's instances not yet on the ledger.

    Returns the record, or ``None`` when every instance is already accounted for. The
    instances are linked to the record, so each byte is counted exactly once.
    """
    count, size = session.execute(
        select(func.count(Instance.id), func.coalesce(func.sum(Instance.size_bytes), 0)).where(
            Instance.study_id == study.id, Instance.infrastructure_entry_id.is_(None)
        )
    ).one()
    if not count:
        return None
    earlier = session.scalar(
        select(func.count(InfrastructureEntry.id)).where(
            InfrastructureEntry.study_id == study.id, InfrastructureEntry.kind == InfrastructureKind.STORAGE
        )
    )
    entry = InfrastructureEntry(
        study_id=study.id,
        study_instance_uid=study.study_instance_uid,
        kind=InfrastructureKind.STORAGE,
        recorded_at=now,
        instance_count=int(count),
        size_bytes=int(size),
        rate_cents_per_gib=cents_per_gib,
        amount_cents=cost_cents(int(size), cents_per_gib),
        note="late instances" if earlier else "study routed",
    )
    session.add(entry)
    session.flush()
    session.execute(
        update(Instance)
        .where(Instance.study_id == study.id, Instance.infrastructure_entry_id.is_(None))
        .values(infrastructure_entry_id=entry.id)
        .execution_options(synchronize_session=False)
    )
    return entry


def record_transmission(
    session: Session,
    study: Study,
    destination: str,
    forwarded: list[ForwardedInstance],
    now: dt.datetime,
    cents_per_gib: int,
) -> InfrastructureEntry | None:
    """Write one transmission record for instances just accepted by a destination."""
    if not forwarded:
        return None
    size = sum(item.size_bytes for item in forwarded)
    entry = InfrastructureEntry(
        study_id=study.id,
        study_instance_uid=study.study_instance_uid,
        kind=InfrastructureKind.TRANSMISSION,
        recorded_at=now,
        instance_count=len(forwarded),
        size_bytes=size,
        rate_cents_per_gib=cents_per_gib,
        amount_cents=cost_cents(size, cents_per_gib),
        destination=destination,
        note="forwarded to reader",
    )
    session.add(entry)
    session.flush()
    for item in forwarded:
        item.infrastructure_entry_id = entry.id
    return entry


INFRASTRUCTURE_COLUMNS = (
    "id",
    "recorded_at",
    "study_instance_uid",
    "kind",
    "instance_count",
    "size_bytes",
    "rate_cents_per_gib",
    "amount_cents",
    "destination",
    "note",
)

PROFESSIONAL_COLUMNS = (
    "id",
    "recorded_at",
    "kind",
    "reverses_id",
    "study_instance_uid",
    "accession_number",
    "facility_ae_title",
    "facility_name",
    "exam_state",
    "rendering_npi",
    "rendering_name",
    "license_state",
    "license_number",
    "cpt_code",
    "modifier",
    "units",
    "cpt_source",
    "cpt_map_version",
    "coder_review",
    "review_reason",
    "date_of_service",
    "interpreted_at",
    *CLAIM_COLUMNS,
)


@dataclass(frozen=True)
class LedgerService:
    """Read-only views of both ledgers, for export."""

    sessions: sessionmaker[Session]

    def infrastructure(self, since: dt.date | None = None, until: dt.date | None = None) -> list[dict[str, Any]]:
        """Infrastructure records, oldest first, as JSON-ready dicts (money in cents).

        ``since`` and ``until`` (both included) select by the UTC day the record was made.
        """
        query = select(InfrastructureEntry).order_by(InfrastructureEntry.id)
        if since is not None:
            query = query.where(InfrastructureEntry.recorded_at >= _utc_midnight(since))
        if until is not None and until < dt.date.max:
            query = query.where(InfrastructureEntry.recorded_at < _utc_midnight(until + dt.timedelta(days=1)))
        with self.sessions() as session:
            return [_row(entry, INFRASTRUCTURE_COLUMNS) for entry in session.scalars(query).all()]

    def professional(self, since: dt.date | None = None, until: dt.date | None = None) -> list[dict[str, Any]]:
        """Professional records, oldest first, as JSON-ready dicts.

        ``since`` and ``until`` (both included) select by date of service, the day of the
        interpretation (what a billing office closes a period on).
        """
        query = select(ProfessionalEntry).order_by(ProfessionalEntry.id)
        if since is not None:
            query = query.where(ProfessionalEntry.date_of_service >= since)
        if until is not None:
            query = query.where(ProfessionalEntry.date_of_service <= until)
        with self.sessions() as session:
            return [_row(entry, PROFESSIONAL_COLUMNS) for entry in session.scalars(query).all()]


def _utc_midnight(day: dt.date) -> dt.datetime:
    return dt.datetime.combine(day, dt.time(0), tzinfo=dt.UTC)


def _row(entry: Any, columns: tuple[str, ...]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for column in columns:
        value = getattr(entry, column)
        if isinstance(value, dt.datetime):
            value = iso_utc(value)
        elif isinstance(value, dt.date):
            value = value.isoformat()
        elif (hasattr(value, "value") and not isinstance(value, (int, str))) or (
            isinstance(value, str) and hasattr(value, "value")
        ):
            value = value.value
        out[column] = value
    return out
