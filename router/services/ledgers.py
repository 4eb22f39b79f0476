"""The two append-only ledgers: infrastructure cost and the professional component.

Infrastructure records are never on a claim: bytes forwarded are written when sent, storage is
accrued per study per month (router.services.accrual); money there is exact, in micro-cents
(router.domain.infra_cost), rounded only on a statement. Professional records are written when
a read is reported, in integer cents. Both are only ever inserted; a correction is a reversal
plus a new record (DESIGN.md decision 5).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from router.db.models import ForwardedInstance, InfrastructureEntry, ProfessionalEntry, Study
from router.domain.enums import ClaimFrequency, CorrectionReason, CostBasis, InfrastructureKind, ProfessionalEntryKind
from router.domain.infra_cost import GIB, cents_text, exact_microcents, month_start, round_half_up
from router.errors import ConflictError, ValidationError
from router.services.claims import CLAIM_COLUMNS
from router.timeutil import iso_utc


def client_of(study: Study) -> tuple[str, str | None]:
    """The client a study's infrastructure cost is attributed to: ``(AE title, name)``.

    The registered facility (set when the study is routed) if any, else the calling AE title
    the study first came from (name ``None``), else ``("", None)``.
    """
    if study.facility is not None:
        return study.facility.ae_title, study.facility.name
    return study.first_calling_ae_title or "", None


def record_transmission(
    session: Session,
    study: Study,
    destination: str,
    forwarded: list[ForwardedInstance],
    now: dt.datetime,
    microcents_per_gib: int,
) -> InfrastructureEntry | None:
    """Write one transmission record for instances just accepted by a destination.

    The amount is exact: ``bytes * microcents_per_gib / 2**30`` micro-cents (kept as its
    integers; ``amount_microcents`` holds it rounded half up to a micro-cent), in the UTC month
    of ``now``, attributed to the study's client (:func:`client_of`).
    """
    if not forwarded:
        return None
    size = sum(item.size_bytes for item in forwarded)
    client, name = client_of(study)
    entry = InfrastructureEntry(
        study_id=study.id,
        study_instance_uid=study.study_instance_uid,
        kind=InfrastructureKind.TRANSMISSION,
        basis=CostBasis.PER_GIB,
        recorded_at=now,
        period_month=month_start(now.astimezone(dt.UTC).date()),
        client_ae_title=client,
        client_name=name,
        instance_count=len(forwarded),
        size_bytes=size,
        quantity=size,
        unit_quantity=GIB,
        rate_microcents=microcents_per_gib,
        amount_microcents=round_half_up(exact_microcents(size, microcents_per_gib, GIB)),
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


def check_not_reversed(session: Session, charge: ProfessionalEntry) -> None:
    """Raise :class:`ConflictError` naming the reversal if ``charge`` is already reversed."""
    already = session.scalar(select(ProfessionalEntry.id).where(ProfessionalEntry.reverses_id == charge.id))
    if already is not None:
        raise ConflictError(f"ledger record {charge.id} is already reversed by record {already}")


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
    check_not_reversed(session, charge)
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
    "month",
    "client_ae_title",
    "client_name",
    "study_instance_uid",
    "kind",
    "basis",
    "instance_count",
    "size_bytes",
    "quantity",
    "unit_quantity",
    "rate_cents",
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

    def infrastructure(
        self, since: dt.date | None = None, until: dt.date | None = None, month: dt.date | None = None
    ) -> list[dict[str, Any]]:
        """Infrastructure records, oldest first, as JSON-ready dicts.

        ``since`` and ``until`` (both included) select by the UTC day the record was made,
        ``month`` (its first day) by the month the cost belongs to. Money is cents as decimal
        text with six decimals (a micro-cent): ``amount_cents`` the row's exact amount (see
        :mod:`router.domain.infra_cost`), ``rate_cents`` per GiB or per GiB-month (``basis``).
        ``quantity`` is bytes or byte-days, ``unit_quantity`` the quantity the rate is per.
        """
        query = select(InfrastructureEntry).order_by(InfrastructureEntry.id)
        if month is not None:
            query = query.where(InfrastructureEntry.period_month == month)
        if since is not None:
            query = query.where(InfrastructureEntry.recorded_at >= _utc_midnight(since))
        if until is not None and until < dt.date.max:
            query = query.where(InfrastructureEntry.recorded_at < _utc_midnight(until + dt.timedelta(days=1)))
        with self.sessions() as session:
            return [infrastructure_row(entry) for entry in session.scalars(query).all()]

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


def infrastructure_row(entry: InfrastructureEntry) -> dict[str, Any]:
    """One infrastructure record as a JSON-ready dict (keys: :data:`INFRASTRUCTURE_COLUMNS`)."""
    row = _row(
        entry,
        tuple(name for name in INFRASTRUCTURE_COLUMNS if name not in {"month", "rate_cents", "amount_cents"}),
    )
    row["month"] = entry.period_month.strftime("%Y-%m")
    row["rate_cents"] = cents_text(entry.rate_microcents)
    row["amount_cents"] = cents_text(entry_microcents(entry))
    return {name: row[name] for name in INFRASTRUCTURE_COLUMNS}


def entry_microcents(entry: InfrastructureEntry) -> Fraction:
    """The exact amount of a record, in micro-cents (a ``recorded`` row: as charged then)."""
    if entry.basis == CostBasis.RECORDED:
        return Fraction(entry.amount_microcents)
    return exact_microcents(entry.quantity, entry.rate_microcents, entry.unit_quantity)


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
