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
from router.domain.enums import ClaimFrequency, CorrectionReason, InfrastructureKind, ProfessionalEntryKind
from router.errors import ConflictError, ValidationError
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


#: Columns a reversal or a replacement copies from the charge it corrects.
LEDGER_COPIED_COLUMNS = tuple(
    column.key
    for column in ProfessionalEntry.__table__.columns
    if column.key
    not in {
        "id",
        "kind",
        "reverses_id",
        "recorded_at",
        "claim_frequency",
        "replaces_id",
        "correction_reason",
        "correction_note",
    }
)


def open_charges(session: Session, study_id: int) -> list[ProfessionalEntry]:
    """The study's charges not yet reversed, oldest first."""
    reversed_ids = select(ProfessionalEntry.reverses_id).where(
        ProfessionalEntry.study_id == study_id, ProfessionalEntry.reverses_id.is_not(None)
    )
    return list(
        session.scalars(
            select(ProfessionalEntry)
            .where(
                ProfessionalEntry.study_id == study_id,
                ProfessionalEntry.kind == ProfessionalEntryKind.CHARGE,
                ProfessionalEntry.id.not_in(reversed_ids),
            )
            .order_by(ProfessionalEntry.id)
        )
    )


def reverse_charge(
    session: Session, charge: ProfessionalEntry, reason: CorrectionReason, now: dt.datetime, note: str | None = None
) -> ProfessionalEntry:
    """Append the reversal (void, claim frequency ``8``) of ``charge`` to the caller's transaction.

    The reversal copies every billing field of the charge (same CPT, modifier, units, date of
    service), so summing a charge and its reversal nets to nothing.

    Raises
    ------
    ValidationError
        ``charge`` is itself a reversal.
    ConflictError
        ``charge`` is already reversed.
    """
    if charge.kind != ProfessionalEntryKind.CHARGE:
        raise ValidationError(f"ledger record {charge.id} is a reversal; only a charge can be reversed")
    already = session.scalar(select(ProfessionalEntry.id).where(ProfessionalEntry.reverses_id == charge.id))
    if already is not None:
        raise ConflictError(f"ledger record {charge.id} is already reversed by record {already}")
    reversal = ProfessionalEntry(
        kind=ProfessionalEntryKind.REVERSAL,
        reverses_id=charge.id,
        recorded_at=now,
        claim_frequency=ClaimFrequency.VOID.value,
        correction_reason=reason.value,
        correction_note=note,
        **{column: getattr(charge, column) for column in LEDGER_COPIED_COLUMNS},
    )
    session.add(reversal)
    session.flush()
    return reversal


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
    "claim_frequency",
    "replaces_id",
    "correction_reason",
    "correction_note",
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
