"""Who may read a study: licensure, privileges and MQSA, with the reason for each verdict.

Plain value objects in (:mod:`router.domain.eligibility_facts`), verdicts out; the service layer
turns database rows into these facts. Sources (``shared/domain/README.md``):

- Medicine is practised where the patient is at the time of the encounter (IMLC section 1; every
  Compact statute, e.g. La. R.S. 37:1310.1), so only a license in the exam state counts, and the
  IMLC never makes anyone eligible by itself: it only speeds up obtaining that license
  (:mod:`router.domain.compact_paths`).
- A Compact license counts only under Compact section 10 and with a license in a designated State
  of Principal License (:mod:`router.domain.compact`).
- Privileges: 42 CFR 482.22(a)(3)-(4) (by proxy), 485.616(c); mammography: MQSA, 21 CFR 900.12.

Dates are calendar dates. A license is valid from its issue day to its expiry day, both included.
The license row carries the board's *current* status only, so a non-active status is applied to
every day asked about (a record of history would be needed to do otherwise; this errs safe).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date
from typing import Any

from router.domain.compact import compact_reason
from router.domain.eligibility_facts import (
    EligibilityRules,
    LicenseFacts,
    ReaderFacts,
    StudyFacts,
)
from router.domain.enums import FederalFacility, LicensePathway, LicenseStatus

_PATHWAY_PREFERENCE = {pathway: rank for rank, pathway in enumerate(LicensePathway)}
_FEDERAL_PATHWAYS = {
    LicensePathway.FEDERAL_VA: (FederalFacility.VA, "VA"),
    LicensePathway.FEDERAL_DOD: (FederalFacility.DOD, "DoD"),
}


def _license_json(lic: LicenseFacts) -> dict[str, Any]:
    return {
        "license_id": lic.license_id,
        "state": lic.state,
        "number": lic.number,
        "pathway": lic.pathway.value,
        "status": lic.status.value,
        "issued": lic.issued.isoformat() if lic.issued else None,
        "expires": lic.expires.isoformat(),
    }


@dataclass(frozen=True)
class Verdict:
    """Whether one radiologist may read one study on one day, and why not.

    ``license`` is the exam-state license relied on, set only when eligible; ``reasons`` is
    empty exactly when eligible.
    """

    npi: str
    name: str
    radiologist_id: int
    eligible: bool
    reasons: tuple[str, ...]
    license: LicenseFacts | None

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict (missing values ``None``)."""
        return {
            "radiologist_id": self.radiologist_id,
            "npi": self.npi,
            "name": self.name,
            "eligible": self.eligible,
            "reasons": list(self.reasons),
            "license": _license_json(self.license) if self.license else None,
        }


def license_standing(
    reader: ReaderFacts, lic: LicenseFacts, day: date, rules: EligibilityRules, study: StudyFacts | None = None
) -> tuple[bool, str | None]:
    """Whether one license may be relied on for a read on ``day``.

    Checks, in order: status ``active``; issue day <= ``day`` <= expiry day; the pathway's own
    limit (a telehealth registration only in ``rules.telehealth_registration_states``; federal
    pathways only for a study from a facility flagged VA or DoD, so never without a study); and
    for a Compact license, Compact section 10 and the SPL requirement (see the module docstring).

    Parameters
    ----------
    reader : ReaderFacts
        Holder of the license (their SPL, other licenses and disciplinary record matter).
    lic : LicenseFacts
        The license asked about.
    day : date
        Day of the read.
    rules : EligibilityRules
    study : StudyFacts, optional
        Needed for the federal pathways.

    Returns
    -------
    tuple of (bool, str or None)
        ``(True, None)`` when usable, else ``(False, reason)`` with the exact reason.
    """
    if lic.status is not LicenseStatus.ACTIVE:
        return False, f"license {lic.tag} {lic.status_text()}"
    if lic.issued is not None and day < lic.issued:
        return False, f"license {lic.tag} not valid before {lic.issued.isoformat()}"
    if day > lic.expires:
        return False, f"license {lic.tag} expired {lic.expires.isoformat()}"
    if lic.pathway is LicensePathway.TELEHEALTH_REGISTRATION and lic.state not in rules.telehealth_registration_states:
        return False, f"telehealth registration in {lic.state} does not cover store-and-forward reads"
    if lic.pathway in _FEDERAL_PATHWAYS:
        kind, label = _FEDERAL_PATHWAYS[lic.pathway]
        if study is None or study.facility_federal is not kind:
            return False, f"{lic.pathway.value} license counts only at {label} facilities"
    if lic.pathway is LicensePathway.IMLC:
        reason = compact_reason(reader, lic, day, rules)
        if reason is not None:
            return False, reason
    return True, None


def _licenses_in(reader: ReaderFacts, state: str) -> list[LicenseFacts]:
    """Licenses in ``state``, preferred first: full before other pathways, latest expiry first."""
    found = [lic for lic in reader.licenses if lic.state == state]
    return sorted(found, key=lambda x: (_PATHWAY_PREFERENCE[x.pathway], -x.expires.toordinal(), x.number))


def license_in_state(
    reader: ReaderFacts, state: str, day: date, rules: EligibilityRules, study: StudyFacts
) -> tuple[LicenseFacts | None, list[str]]:
    """The preferred usable license in ``state``, or ``None`` and one reason per license held.

    Licenses are tried full pathway first, then latest expiry (each with :func:`license_standing`).

    Returns
    -------
    tuple of (LicenseFacts or None, list of str)
        ``(license, [])`` for the first usable license; else ``(None, reasons)``, one reason per
        license held in ``state``, or ``["no license in <state>"]`` when there is none.
    """
    candidates = _licenses_in(reader, state)
    if not candidates:
        return None, [f"no license in {state}"]
    reasons = []
    for lic in candidates:
        usable, reason = license_standing(reader, lic, day, rules, study)
        if usable:
            return lic, []
        reasons.append(str(reason))
    return None, reasons


def _privilege_reason(reader: ReaderFacts, study: StudyFacts, day: date) -> str | None:
    """Why the reader lacks privileges active on ``day`` at the study's facility, or ``None``."""
    facility = (study.facility_ae_title or "").strip()
    if not facility:
        return "privileges required but the facility is unknown"
    grants = [p for p in reader.privileges if p.facility_ae_title.strip() == facility]
    if not grants:
        return f"no privileges at facility {facility}"
    if any(p.active_on(day) for p in grants):
        return None
    latest = max(grants, key=lambda p: (p.valid_until, p.valid_from))
    if latest.revoked_on is not None and latest.revoked_on <= day:
        return f"privileges at facility {facility} revoked {latest.revoked_on.isoformat()}"
    if day < latest.valid_from:
        return f"privileges at facility {facility} not valid before {latest.valid_from.isoformat()}"
    return f"privileges at facility {facility} ended {latest.valid_until.isoformat()}"


def evaluate_reader(reader: ReaderFacts, study: StudyFacts, day: date, rules: EligibilityRules) -> Verdict:
    """Verdict for one radiologist, one study, one day, with every failing reason.

    Eligible when all hold: the radiologist is active; a license in the exam state is usable on
    ``day`` (:func:`license_standing`); privileges at the facility are active on ``day`` when the
    facility requires them (42 CFR 482.22(a)(3)-(4)); MQSA qualification when a modality is MG
    (21 CFR 900.12); and, under ``rules.require_reading_state_license``, a usable license in the
    state the radiologist reads from.

    Parameters
    ----------
    reader, study : ReaderFacts, StudyFacts
    day : date
        Day of the read: the day of assignment, and again the day the read is reported.
    rules : EligibilityRules

    Returns
    -------
    Verdict
        ``license`` is the exam-state license relied on (full pathway preferred) when eligible.
    """
    exam = study.exam_state.strip().upper()
    reasons: list[str] = [] if reader.active else ["inactive"]
    relied, license_reasons = license_in_state(reader, exam, day, rules, study)
    reasons.extend(license_reasons)
    if study.facility_requires_privileges:
        privilege_reason = _privilege_reason(reader, study, day)
        if privilege_reason:
            reasons.append(privilege_reason)
    if "MG" in {m.strip().upper() for m in study.modalities} and not reader.mqsa_qualified:
        reasons.append("not MQSA qualified (mammography)")
    if rules.require_reading_state_license:
        reading = (reader.reading_state or "").strip().upper()
        if not reading:
            reasons.append("reading state unknown (a license where the radiologist reads from is required)")
        elif reading != exam:
            found, reading_reasons = license_in_state(reader, reading, day, rules, study)
            if found is None:
                reasons.extend(f"reading state {reading}: {r}" for r in reading_reasons)
    eligible = not reasons
    relied = relied if eligible else None
    return Verdict(reader.npi, reader.name, reader.radiologist_id, eligible, tuple(reasons), relied)


def evaluate_readers(
    readers: Iterable[ReaderFacts], study: StudyFacts, day: date, rules: EligibilityRules
) -> list[Verdict]:
    """:func:`evaluate_reader` for each radiologist, in the order given."""
    return [evaluate_reader(reader, study, day, rules) for reader in readers]
