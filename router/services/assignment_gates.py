"""Gates applied on top of licensure when choosing a reader: shifts and facility rules.

Licensure decides who *may* read a study (router.domain.licensure); these gates decide who is
*offered* it: a reader off shift (router.domain.shifts) or excluded by the sending facility is
never assigned, and a reader the facility prefers wins ties on workload. Every gate that turns a
reader away gives a reason kept in the routing decision.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from sqlalchemy import select
from sqlalchemy.orm import Session

from router.db.models import Facility, FacilityReader, Radiologist, ReaderShift
from router.domain.enums import FacilityReaderRule, SubspecialtyNeed
from router.domain.shifts import Shift, on_shift, parse_weekdays
from router.domain.subspecialty import SubspecialtyRule


@dataclass(frozen=True)
class Gates:
    """Shift and facility gates for one routing decision at ``moment`` (UTC)."""

    moment: dt.datetime
    require_shift: bool = False
    facility_label: str | None = None
    preferred: frozenset[int] = frozenset()  # radiologist ids
    excluded: frozenset[int] = frozenset()
    shifts: dict[int, tuple[Shift, ...]] = field(default_factory=dict)
    avoid: dict[int, str] = field(default_factory=dict)  # readers passed over for this decision, with why
    max_open_reads: int = 0  # per-reader cap on open reads; 0: no cap
    need: SubspecialtyRule | None = None  # the subspecialty the study asks for
    subspecialties: dict[int, frozenset[str]] = field(default_factory=dict)  # radiologist id -> credentials

    def has_subspecialty(self, radiologist_id: int) -> bool:
        """Whether the reader holds the subspecialty the study asks for (False when it asks none)."""
        return self.need is not None and self.need.subspecialty.value in self.subspecialties.get(radiologist_id, ())

    def credential_reason(self, radiologist_id: int) -> str | None:
        """Why a required subspecialty rules this reader out, or ``None``."""
        if self.need is None or self.need.need is not SubspecialtyNeed.REQUIRED:
            return None
        if self.has_subspecialty(radiologist_id):
            return None
        return f"lacks the {self.need.subspecialty.value} credential the study requires ({self.need.describe()})"

    def availability_reason(self, radiologist_id: int, open_reads: int) -> str | None:
        """Why this reader cannot take another read now (off shift, at the cap), or ``None``."""
        off = self.shift_reason(radiologist_id)
        if off is not None:
            return off
        if self.max_open_reads and open_reads >= self.max_open_reads:
            return f"at the open-read cap ({open_reads} open, routing.max_open_reads = {self.max_open_reads})"
        return None

    def exclusion_reason(self, radiologist_id: int) -> str | None:
        """Why the facility (or an escalation) turns this reader away, or ``None``."""
        if radiologist_id in self.avoid:
            return self.avoid[radiologist_id]
        if radiologist_id in self.excluded:
            return f"excluded by facility {self.facility_label}"
        return self.credential_reason(radiologist_id)

    def shift_reason(self, radiologist_id: int) -> str | None:
        """Why this reader is not on duty at ``moment``, or ``None``."""
        ok, reason = on_shift(self.shifts.get(radiologist_id, ()), self.moment, self.require_shift)
        return None if ok else reason

    def is_preferred(self, radiologist_id: int) -> bool:
        """Whether the facility prefers this reader (wins ties on workload)."""
        return radiologist_id in self.preferred


def shift_facts(row: ReaderShift) -> Shift:
    """The domain shift of a stored row."""
    return Shift(
        weekdays=parse_weekdays(row.weekdays),
        start=row.start_time,
        end=row.end_time,
        timezone=row.timezone,
    )


def load_gates(
    session: Session,
    facility: Facility | None,
    moment: dt.datetime,
    require_shift: bool,
    avoid: dict[int, str] | None = None,
    max_open_reads: int = 0,
    need: SubspecialtyRule | None = None,
) -> Gates:
    """Read every reader's shifts and the facility's rules (two small queries).

    ``avoid`` names readers to pass over for this decision (radiologist id -> reason).
    """
    shifts: dict[int, list[Shift]] = {}
    for row in session.scalars(select(ReaderShift).order_by(ReaderShift.id)):
        shifts.setdefault(row.radiologist_id, []).append(shift_facts(row))
    preferred: set[int] = set()
    excluded: set[int] = set()
    label = None
    if facility is not None:
        label = facility.ae_title
        for rule in session.scalars(select(FacilityReader).where(FacilityReader.facility_id == facility.id)):
            (preferred if rule.rule == FacilityReaderRule.PREFER else excluded).add(rule.radiologist_id)
    return Gates(
        moment=moment,
        require_shift=require_shift,
        facility_label=label,
        preferred=frozenset(preferred),
        excluded=frozenset(excluded),
        shifts={key: tuple(value) for key, value in shifts.items()},
        avoid=dict(avoid or {}),
        max_open_reads=max_open_reads,
        need=need,
        subspecialties=_subspecialties(session) if need is not None else {},
    )


def _subspecialties(session: Session) -> dict[int, frozenset[str]]:
    rows = session.execute(
        select(Radiologist.id, Radiologist.subspecialties).where(Radiologist.subspecialties.is_not(None))
    ).all()
    return {row[0]: frozenset(part for part in (row[1] or "").split(",") if part) for row in rows}
