"""Who could become licensed in an exam state fastest through the Interstate Medical Licensure Compact.

The IMLC never makes anyone eligible by itself: it only speeds up obtaining a license in the
exam state (IMLC section 1). A Letter of Qualification is valid for 365 days (secondary sources);
only physicians never disciplined by any licensing agency qualify (section 2(k)). Sources:
``shared/domain/README.md``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import date, timedelta
from typing import Any

from router.domain.compact import (
    compact_capable_license,
    has_disciplinary_record,
    usable_spl_license,
)
from router.domain.eligibility_facts import EligibilityRules, ReaderFacts, StudyFacts
from router.domain.enums import StrEnum
from router.domain.licensure import license_in_state


class FastestPathKind(StrEnum):
    """How a radiologist could become licensed in the exam state through the Compact."""

    LOQ_READY = "imlc_loq_ready"  # tier 1: valid LoQ and an SPL that can serve
    LOQ_NEEDED = "imlc_loq_needed"  # tier 2: license in an SPL-capable state, no valid LoQ


@dataclass(frozen=True)
class FastestPath:
    """One radiologist who could become eligible through the Compact (tier 1 is faster)."""

    npi: str
    name: str
    tier: int
    path: str
    detail: str

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {
            "npi": self.npi,
            "name": self.name,
            "tier": self.tier,
            "path": self.path,
            "detail": self.detail,
        }


def fastest_paths(
    readers: Iterable[ReaderFacts],
    exam_state: str,
    day: date,
    rules: EligibilityRules,
    *,
    study: StudyFacts | None = None,
) -> list[FastestPath]:
    """Who could become licensed in ``exam_state`` fastest through the Compact.

    Only when the exam state is an operating member (``spl`` or ``non_spl``) on ``day``: a state
    that is pending, at risk or not a member issues no Compact licenses, so the only path there is
    an ordinary application to its board, whose timing the router has no data to rank; the list
    is then empty. Skipped: inactive radiologists, those already holding a usable license in the
    exam state, and those with any disciplinary record (section 2(k) excludes them from the
    Compact).

    Pass the held ``study`` when known, so a license whose use depends on it (federal pathways)
    counts as it does in eligibility; without it, federal licenses do not count.

    Tier 1 (``imlc_loq_ready``): a Letter of Qualification valid on ``day`` (issue day plus
    ``rules.loq_valid_days - 1`` days, both included) and a designated SPL that can serve, with a
    usable full license there. Tier 2 (``imlc_loq_needed``): a usable full license in an
    SPL-capable state, so they could get a Letter of Qualification.

    Returns
    -------
    list of FastestPath
        Ordered by tier, then fewest open assignments, then NPI.
    """
    exam = exam_state.strip().upper()
    if not rules.imlc.is_operating(exam, day):
        return []
    probe = replace(study, exam_state=exam) if study is not None else StudyFacts(exam_state=exam)
    ranked: list[tuple[int, int, str, FastestPath]] = []
    for reader in readers:
        if not reader.active or has_disciplinary_record(reader):
            continue
        if license_in_state(reader, exam, day, rules, probe)[0] is not None:
            continue
        spl_license = usable_spl_license(reader, day, rules)
        loq = reader.loq_issued
        loq_last = loq + timedelta(days=rules.loq_valid_days - 1) if loq else None
        loq_valid = loq is not None and loq_last is not None and loq <= day <= loq_last
        if spl_license is not None and loq is not None and loq_last is not None and loq_valid:
            tier, kind = 1, FastestPathKind.LOQ_READY
            detail = (
                f"Letter of Qualification issued {loq.isoformat()}, valid through {loq_last.isoformat()}; "
                f"SPL {spl_license.state} (license {spl_license.tag}): apply for a {exam} Compact license"
            )
        else:
            base = compact_capable_license(reader, day, rules)
            if base is None:
                continue
            tier, kind = 2, FastestPathKind.LOQ_NEEDED
            if loq is None or loq_last is None:
                loq_text = "no Letter of Qualification"
            elif loq_valid:
                spl_text = reader.spl_state or "none"
                loq_text = f"Letter of Qualification valid but designated SPL {spl_text} cannot serve"
            elif day < loq:
                loq_text = f"Letter of Qualification not valid before {loq.isoformat()}"
            else:
                loq_text = f"Letter of Qualification expired {loq_last.isoformat()}"
            detail = (
                f"{loq_text}; active license {base.tag} in SPL-capable {base.state}: "
                f"request a Letter of Qualification with SPL {base.state}, then a {exam} Compact license"
            )
        path = FastestPath(reader.npi, reader.name, tier, kind.value, detail)
        ranked.append((tier, reader.open_assignments, reader.npi, path))
    ranked.sort(key=lambda item: item[:3])
    return [item[3] for item in ranked]
