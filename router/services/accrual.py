"""Storage cost as it accrues: one record per study per month held, and monthly statements.

:meth:`AccrualService.accrue` writes, for each whole UTC month not accrued yet up to the one
asked for, one ``per_gib_month`` storage record per study with bytes held in that month:
byte-days held (router.domain.infra_cost gives the day-count rule), the rate per GiB-month in
force when the month is accrued, and the study's client. A unique index on (study, month) and
``INSERT ... ON CONFLICT DO NOTHING`` make it idempotent and safe on several nodes at once;
``router serve`` runs it once per ``routing.recheck_interval`` for the whole cluster under a
lease (router.services.cluster), ``router ledger accrue`` by hand.

An instance is held from the UTC day it was received until its retention ends
(``[billing] storage_retention_days`` after that day; 0: until deleted, and the router never
deletes). An instance charged once under the old model (a ``recorded`` storage row, before
migration 0009) accrues from the month after that charge. Months are accrued in order and only
once over, so an instance can join a month already accrued only if a node's clock is wrong at
a month's turn; its days in that month are then not charged (later months are).

:meth:`AccrualService.statement` totals the ledger per client per month: storage and
transmission exactly, the total rounded half up to whole cents once.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections import defaultdict
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

from sqlalchemy import func, select, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, aliased, sessionmaker

from router.db.models import Facility, InfrastructureEntry, Instance, Study
from router.domain.enums import CostBasis, InfrastructureKind
from router.domain.infra_cost import (
    GIB,
    cents_text,
    days_held,
    days_in_month,
    exact_microcents,
    month_start,
    next_month,
    previous_month,
    round_half_up,
    round_half_up_cents,
)
from router.errors import ValidationError
from router.services.ledgers import entry_microcents
from router.timeutil import Clock, utcnow

LOG = logging.getLogger(__name__)


#: Keys of a statement line (:meth:`AccrualService.statement`), in CSV column order.
STATEMENT_COLUMNS = (
    "month",
    "client_ae_title",
    "client_name",
    "storage_records",
    "transmission_records",
    "storage_cents_exact",
    "transmission_cents_exact",
    "total_cents_exact",
    "total_cents",
    "rounding_cents",
)


@dataclass(frozen=True)
class AccrualPolicy:
    """``[billing]`` settings of the accrual: micro-cents per GiB-month, retention in days."""

    storage_microcents_per_gib_month: int
    retention_days: int = 0  # 0: held until deleted


@dataclass
class AccrualReport:
    """What one :meth:`AccrualService.accrue` did: the last month asked for, the months looked
    at (not accrued before), records written."""

    through: dt.date
    months: list[dt.date] = field(default_factory=list)
    written: int = 0

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict: ``through`` and ``months`` as ``YYYY-MM``, ``written`` records."""
        return {
            "through": self.through.strftime("%Y-%m"),
            "months": [month.strftime("%Y-%m") for month in self.months],
            "written": self.written,
        }


@dataclass
class _Held:
    """One study's storage in one month, summed over its instances."""

    study_instance_uid: str
    client_ae_title: str
    client_name: str | None
    instance_count: int = 0
    size_bytes: int = 0
    byte_days: int = 0


class AccrualService:
    """Monthly storage accrual and per-client statements."""

    def __init__(self, sessions: sessionmaker[Session], policy: AccrualPolicy, clock: Clock = utcnow) -> None:
        self._sessions = sessions
        self.policy = policy
        self._clock = clock

    def accrue(self, through: dt.date | None = None) -> AccrualReport:
        """Accrue storage for every whole month not accrued yet, up to ``through``'s month.

        Parameters
        ----------
        through : date or None
            Any day of the last month to accrue; default: the month before today (UTC).

        Raises
        ------
        ValidationError
            If ``through`` is in the current UTC month or later (a month accrues once it is over).
        """
        current = month_start(self._clock().astimezone(dt.UTC).date())
        last = previous_month(current) if through is None else month_start(through)
        if last >= current:
            raise ValidationError(
                f"{last:%Y-%m} is not over yet: storage accrues for whole months (latest {previous_month(current):%Y-%m})"
            )
        report = AccrualReport(last)
        month = self._first_open_month()
        while month is not None and month <= last:
            report.months.append(month)
            report.written += self.accrue_month(month)
            month = next_month(month)
        if report.written:
            LOG.info("storage accrual: %d record(s) for %d month(s)", report.written, len(report.months))
        return report

    def _first_open_month(self) -> dt.date | None:
        """The month after the latest accrued one, else the month of the first instance."""
        with self._sessions() as session:
            latest = session.scalar(
                select(func.max(InfrastructureEntry.period_month)).where(
                    InfrastructureEntry.basis == CostBasis.PER_GIB_MONTH
                )
            )
            if latest is not None:
                return next_month(latest)
            first = session.scalar(select(func.min(Instance.received_at)))
        return None if first is None else month_start(first.date())

    def accrue_month(self, month: dt.date) -> int:
        """Write the storage records of ``month``'s month; returns how many were new.

        A study that already has its record for the month is left alone (the unique index
        decides, so two nodes at once write each record once).
        """
        month = month_start(month)
        now = self._clock()
        with self._sessions.begin() as session:
            held = self._held(session, month)
            done = set(
                session.scalars(
                    select(InfrastructureEntry.study_id).where(
                        InfrastructureEntry.basis == CostBasis.PER_GIB_MONTH,
                        InfrastructureEntry.period_month == month,
                    )
                )
            )
            rate = self.policy.storage_microcents_per_gib_month
            unit = GIB * days_in_month(month)
            rows = [
                {
                    "study_id": study_id,
                    "study_instance_uid": item.study_instance_uid,
                    "kind": InfrastructureKind.STORAGE,
                    "basis": CostBasis.PER_GIB_MONTH,
                    "recorded_at": now,
                    "period_month": month,
                    "client_ae_title": item.client_ae_title,
                    "client_name": item.client_name,
                    "instance_count": item.instance_count,
                    "size_bytes": item.size_bytes,
                    "quantity": item.byte_days,
                    "unit_quantity": unit,
                    "rate_microcents": rate,
                    "amount_microcents": round_half_up(exact_microcents(item.byte_days, rate, unit)),
                    "note": "storage accrued for the month",
                }
                for study_id, item in sorted(held.items())
                if study_id not in done
            ]
            if not rows:
                return 0
            # RETURNING counts only the rows this call wrote (another node may have raced it)
            table: Any = InfrastructureEntry.__table__
            return len(session.execute(_insert_new_months(session).returning(table.c.id), rows).all())

    def _held(self, session: Session, month: dt.date) -> dict[int, _Held]:
        """Per study: instances held in ``month``, their bytes and byte-days."""
        begin = dt.datetime.combine(month, dt.time(0), tzinfo=dt.UTC)
        end = dt.datetime.combine(next_month(month), dt.time(0), tzinfo=dt.UTC)
        retention = dt.timedelta(days=self.policy.retention_days) if self.policy.retention_days else None
        legacy = aliased(InfrastructureEntry)
        query = (
            select(
                Instance.study_id,
                Instance.size_bytes,
                Instance.received_at,
                legacy.period_month,
                Study.study_instance_uid,
                Study.first_calling_ae_title,
                Facility.ae_title,
                Facility.name,
            )
            .join(Study, Study.id == Instance.study_id)
            .outerjoin(Facility, Facility.id == Study.facility_id)
            .outerjoin(
                legacy,
                (legacy.id == Instance.infrastructure_entry_id)
                & (legacy.basis == CostBasis.RECORDED)
                & (legacy.kind == InfrastructureKind.STORAGE),
            )
            .where(Instance.received_at < end)
        )
        if retention is not None:
            query = query.where(Instance.received_at >= begin - retention)
        held: dict[int, _Held] = {}
        for study_id, size, received_at, charged_month, uid, calling, facility_ae, facility_name in session.execute(
            query
        ):
            first_day = received_at.astimezone(dt.UTC).date()
            if charged_month is not None:  # charged once before 0009: covered through that month
                first_day = max(first_day, next_month(charged_month))
            days = days_held(first_day, first_day + retention if retention is not None else None, month)
            if days <= 0:
                continue
            item = held.get(study_id)
            if item is None:
                client = facility_ae if facility_ae is not None else (calling or "")
                item = held[study_id] = _Held(uid, client, facility_name)
            item.instance_count += 1
            item.size_bytes += size
            item.byte_days += size * days
        return held

    def statement(self, month: dt.date | None = None) -> list[dict[str, Any]]:
        """Per client per month: storage and transmission totals, exact and rounded.

        Each dict: ``month`` (``YYYY-MM``), ``client_ae_title``, ``client_name``,
        ``storage_records``, ``transmission_records``, ``storage_cents_exact``,
        ``transmission_cents_exact``, ``total_cents_exact`` (cents as decimal text, six
        decimals), ``total_cents`` (int: the exact total rounded half up, once, never per row)
        and ``rounding_cents`` (``total_cents`` minus the exact total, six decimals). Ordered
        by month, then client. ``month`` (its first day) selects one month.
        """
        query = select(InfrastructureEntry).order_by(InfrastructureEntry.id)
        if month is not None:
            query = query.where(InfrastructureEntry.period_month == month_start(month))
        totals: dict[tuple[dt.date, str], dict[str, Any]] = {}
        sums: defaultdict[tuple[dt.date, str, InfrastructureKind], Fraction] = defaultdict(Fraction)
        with self._sessions() as session:
            for entry in session.scalars(query):
                key = (entry.period_month, entry.client_ae_title)
                line = totals.setdefault(
                    key,
                    {
                        "month": entry.period_month.strftime("%Y-%m"),
                        "client_ae_title": entry.client_ae_title,
                        "client_name": entry.client_name,
                        "storage_records": 0,
                        "transmission_records": 0,
                    },
                )
                line["client_name"] = line["client_name"] or entry.client_name
                line[f"{entry.kind.value}_records"] += 1
                sums[(*key, entry.kind)] += entry_microcents(entry)
        out = []
        for key in sorted(totals):
            line = totals[key]
            storage = sums[(*key, InfrastructureKind.STORAGE)]
            transmission = sums[(*key, InfrastructureKind.TRANSMISSION)]
            total = storage + transmission
            rounded = round_half_up_cents(total)
            line["storage_cents_exact"] = cents_text(storage)
            line["transmission_cents_exact"] = cents_text(transmission)
            line["total_cents_exact"] = cents_text(total)
            line["total_cents"] = rounded
            line["rounding_cents"] = cents_text(rounded * 10**6 - total)
            out.append(line)
        return out


def _insert_new_months(session: Session) -> Any:
    """``INSERT`` into the ledger that skips a (study, month) storage record already there."""
    table: Any = InfrastructureEntry.__table__
    columns = ["study_id", "period_month"]
    where = text("basis = 'per_gib_month'")  # the predicate of the unique index
    if session.get_bind().dialect.name == "postgresql":
        return postgresql.insert(table).on_conflict_do_nothing(index_elements=columns, index_where=where)
    return sqlite.insert(table).on_conflict_do_nothing(index_elements=columns, index_where=where)
