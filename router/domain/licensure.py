"""Who may read a study: licensure, the IMLC, privileges and MQSA, with the reason for each verdict.

Plain value objects in, verdicts out; the service layer turns database rows into these facts.
Sources (``shared/domain/README.md``):

- Medicine is practised where the patient is at the time of the encounter (IMLC section 1; every
  Compact statute, e.g. La. R.S. 37:1310.1), so only a license in the exam state counts, and the
  IMLC never makes anyone eligible by itself: it only speeds up obtaining that license.
- Compact licenses follow the license in the State of Principal License (SPL) when it is revoked,
  suspended or surrendered in lieu of discipline, and stay encumbered after the SPL reinstates it
  until their own board acts (Compact section 10(b), e.g. W. Va. Code 30-1C-10(b)). Discipline by
  a board suspends the physician's other Compact licenses for 90 days unless their board ends the
  suspension sooner (section 10(d)). A Compact license needs a license in a designated SPL.
- A Letter of Qualification is valid for 365 days (secondary sources); only physicians never
  disciplined by any licensing agency qualify for the Compact (section 2(k)).
- Privileges: 42 CFR 482.22(a)(3)-(4) (by proxy), 485.616(c); mammography: MQSA, 21 CFR 900.12.

Dates are calendar dates. A license is valid from its issue day to its expiry day, both included.
The license row carries the board's *current* status only, so a non-active status is applied to
every day asked about (a record of history would be needed to do otherwise; this errs safe).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import date, datetime, timedelta
from typing import Any

from router.domain.enums import FederalFacility, LicensePathway, LicenseStatus, StrEnum
from router.domain.imlc import ImlcMembership
from router.errors import ValidationError

_DISCIPLINE_WORD = {
    LicenseStatus.SUSPENDED: "suspension",
    LicenseStatus.REVOKED: "revocation",
    LicenseStatus.SURRENDERED: "surrender in lieu of discipline",
}
_PATHWAY_PREFERENCE = {pathway: rank for rank, pathway in enumerate(LicensePathway)}
_FEDERAL_PATHWAYS = {
    LicensePathway.FEDERAL_VA: (FederalFacility.VA, "VA"),
    LicensePathway.FEDERAL_DOD: (FederalFacility.DOD, "DoD"),
}


@dataclass(frozen=True)
class LicenseFacts:
    """One state license; ``issued``/``expires`` both included; ``license_id`` is the DB row id."""

    state: str
    number: str
    pathway: LicensePathway
    status: LicenseStatus
    expires: date
    issued: date | None = None
    status_since: date | None = None
    in_lieu_of_discipline: bool = False
    compact_hold_cleared_on: date | None = None  # board ended the section 10(d) suspension
    license_id: int | None = None

    @property
    def tag(self) -> str:
        """``<STATE>-<number>``, as shown in reasons."""
        return f"{self.state}-{self.number}"

    @property
    def disciplined(self) -> bool:
        """Suspended, revoked, or surrendered in lieu of discipline (a plain surrender is not)."""
        return self.status in (LicenseStatus.SUSPENDED, LicenseStatus.REVOKED) or (
            self.status is LicenseStatus.SURRENDERED and self.in_lieu_of_discipline
        )

    def covers(self, day: date) -> bool:
        """Whether ``issued <= day <= expires`` (no issue date: valid until expiry)."""
        return (self.issued is None or self.issued <= day) and day <= self.expires

    def status_word(self) -> str:
        """Status in words: ``suspended``, ``surrendered in lieu of discipline``..."""
        if self.status is LicenseStatus.SURRENDERED and self.in_lieu_of_discipline:
            return "surrendered in lieu of discipline"
        return self.status.value

    def status_text(self) -> str:
        """Status in words with its date when known, e.g. ``suspended since 2026-10-02``."""
        word = self.status_word()
        return f"{word} since {self.status_since.isoformat()}" if self.status_since else word


@dataclass(frozen=True)
class DisciplinaryActionFacts:
    """A board's order against one license; ``action`` is SUSPENDED, REVOKED or SURRENDERED
    (a recorded surrender is always in lieu of discipline)."""

    state: str
    license_number: str
    action: LicenseStatus
    action_date: date


@dataclass(frozen=True)
class PrivilegeFacts:
    """Privileges at a facility (keyed by calling AE title), ``valid_from..valid_until`` included."""

    facility_ae_title: str
    valid_from: date
    valid_until: date
    by_proxy: bool = False
    revoked_on: date | None = None  # inactive from this day on

    def active_on(self, day: date) -> bool:
        """Whether the grant covers ``day`` and was not revoked on or before it."""
        not_revoked = self.revoked_on is None or self.revoked_on > day
        return self.valid_from <= day <= self.valid_until and not_revoked


@dataclass(frozen=True)
class ReaderFacts:
    """A radiologist and everything eligibility looks at."""

    radiologist_id: int
    npi: str
    name: str
    active: bool = True
    spl_state: str | None = None
    loq_issued: date | None = None
    mqsa_qualified: bool = False
    reading_state: str | None = None
    licenses: tuple[LicenseFacts, ...] = ()
    disciplinary_actions: tuple[DisciplinaryActionFacts, ...] = ()
    privileges: tuple[PrivilegeFacts, ...] = ()
    open_assignments: int = 0
    last_assigned_at: datetime | None = None


@dataclass(frozen=True)
class StudyFacts:
    """What eligibility needs to know about a study."""

    exam_state: str
    modalities: frozenset[str] = frozenset()
    facility_ae_title: str | None = None
    facility_requires_privileges: bool = False
    facility_federal: FederalFacility | None = None


@dataclass(frozen=True)
class EligibilityRules:
    """Configured rules: Compact data, telehealth states, hold and LoQ lengths (days)."""

    imlc: ImlcMembership
    telehealth_registration_states: frozenset[str] = frozenset()
    suspension_hold_days: int = 90
    loq_valid_days: int = 365
    require_reading_state_license: bool = False

    def __post_init__(self) -> None:
        if self.suspension_hold_days < 0:
            raise ValidationError(f"suspension_hold_days must be >= 0, got {self.suspension_hold_days}")
        if self.loq_valid_days < 1:
            raise ValidationError(f"loq_valid_days must be >= 1, got {self.loq_valid_days}")


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


@dataclass(frozen=True)
class _Action:
    """A disciplinary event against one license; ``day`` None when the date was not recorded."""

    state: str
    number: str
    action: LicenseStatus
    day: date | None


def _actions(reader: ReaderFacts) -> list[_Action]:
    """Recorded orders plus licenses whose current status is disciplinary, without duplicates."""
    found = {_Action(a.state, a.license_number, a.action, a.action_date) for a in reader.disciplinary_actions}
    found |= {_Action(x.state, x.number, x.status, x.status_since) for x in reader.licenses if x.disciplined}
    return sorted(found, key=lambda a: (a.day or date.max, a.state, a.number, a.action.value))


def _usable_spl_license(reader: ReaderFacts, day: date, rules: EligibilityRules) -> LicenseFacts | None:
    """The full, active license covering ``day`` in the designated SPL, if that SPL can serve."""
    spl = reader.spl_state
    if spl is None or not rules.imlc.can_serve_as_spl(spl, day):
        return None
    usable = [x for x in reader.licenses if x.state == spl and _full_and_usable(x, day)]
    return max(usable, key=lambda x: (x.expires, x.number), default=None)


def _full_and_usable(lic: LicenseFacts, day: date) -> bool:
    """A full (non-Compact) license, active, covering ``day``: what an SPL license must be."""
    return lic.pathway is LicensePathway.FULL and lic.status is LicenseStatus.ACTIVE and lic.covers(day)


def _compact_reason(reader: ReaderFacts, lic: LicenseFacts, day: date, rules: EligibilityRules) -> str | None:
    """Why a Compact (``imlc``) license cannot be used on ``day``, or ``None`` (section 10)."""
    tag, spl = lic.tag, reader.spl_state
    if spl is None:
        return f"IMLC license {tag} does not count: no designated SPL"
    key = (lic.state, lic.number)
    in_spl = sorted((x for x in reader.licenses if x.state == spl and (x.state, x.number) != key),
                    key=lambda x: x.number)
    for other in in_spl:  # section 10(b): same status as the SPL license
        if other.disciplined:
            since = f" {other.status_since.isoformat()}" if other.status_since else ""
            return f"IMLC license {tag} held because SPL license {other.tag} {other.status_word()}{since}"
    actions = _actions(reader)
    cleared = lic.compact_hold_cleared_on
    for act in actions:  # section 10(b): still encumbered after the SPL reinstates, until this board acts
        if act.state != spl or (act.state, act.number) == key or act.day is None or act.day > day:
            continue
        if cleared is None or cleared < act.day or day < cleared:
            return (
                f"IMLC license {tag} held after SPL {spl} {_DISCIPLINE_WORD[act.action]} of license "
                f"{act.state}-{act.number} on {act.day.isoformat()} until the {lic.state} board "
                "reinstates it (Compact section 10)"
            )
    if not rules.imlc.can_serve_as_spl(spl, day):
        status = rules.imlc.status_on(spl, day)
        standing = f"Compact status {status.value}" if status else "not a Compact member"
        return (
            f"IMLC license {tag} does not count: designated SPL {spl} cannot serve as SPL on "
            f"{day.isoformat()} ({standing})"
        )
    if _usable_spl_license(reader, day, rules) is None:
        return f"IMLC license {tag} does not count: no active license in designated SPL {spl}"
    return _hold_reason(lic, actions, day, rules)


def _hold_reason(lic: LicenseFacts, actions: list[_Action], day: date, rules: EligibilityRules) -> str | None:
    """Section 10(d): another board's order holds this Compact license for the hold period.

    Held on ``action_date <= day < action_date + suspension_hold_days``, ending earlier on the day
    the admin recorded that this license's board acted (``compact_hold_cleared_on`` on or after
    the action date). An order without a recorded date holds until cleared. Orders by any board
    count (the membership of the disciplining board at that date is not checked: erring safe).
    """
    worst: tuple[date, _Action] | None = None
    cleared = lic.compact_hold_cleared_on
    for act in actions:
        if (act.state, act.number) == (lic.state, lic.number):
            continue
        if act.day is not None and day < act.day:
            continue
        end = date.max if act.day is None else act.day + timedelta(days=rules.suspension_hold_days)
        if cleared is not None and (act.day is None or cleared >= act.day):
            end = min(end, cleared)
        if day < end and (worst is None or end > worst[0]):
            worst = (end, act)
    if worst is None:
        return None
    end, act = worst
    what = f"{act.state} {_DISCIPLINE_WORD[act.action]} of license {act.state}-{act.number}"
    if act.day is None:
        return (
            f"IMLC license {lic.tag} held after {what} on an unrecorded date until its board acts "
            "(Compact section 10)"
        )
    held = f"IMLC license {lic.tag} held until {end.isoformat()}"
    return f"{held} after {what} on {act.day.isoformat()} (Compact section 10)"


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
    if lic.pathway is LicensePathway.TELEHEALTH_REGISTRATION:
        if lic.state not in rules.telehealth_registration_states:
            return False, f"telehealth registration in {lic.state} does not cover store-and-forward reads"
    if lic.pathway in _FEDERAL_PATHWAYS:
        kind, label = _FEDERAL_PATHWAYS[lic.pathway]
        if study is None or study.facility_federal is not kind:
            return False, f"{lic.pathway.value} license counts only at {label} facilities"
    if lic.pathway is LicensePathway.IMLC:
        reason = _compact_reason(reader, lic, day, rules)
        if reason is not None:
            return False, reason
    return True, None


def _licenses_in(reader: ReaderFacts, state: str) -> list[LicenseFacts]:
    """Licenses in ``state``, preferred first: full before other pathways, latest expiry first."""
    found = [lic for lic in reader.licenses if lic.state == state]
    return sorted(found, key=lambda x: (_PATHWAY_PREFERENCE[x.pathway], -x.expires.toordinal(), x.number))


def _license_check(
    reader: ReaderFacts, state: str, day: date, rules: EligibilityRules, study: StudyFacts
) -> tuple[LicenseFacts | None, list[str]]:
    """The preferred usable license in ``state``, or ``None`` and one reason per license held."""
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
    relied, license_reasons = _license_check(reader, exam, day, rules, study)
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
            found, reading_reasons = _license_check(reader, reading, day, rules, study)
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
            "npi": self.npi, "name": self.name, "tier": self.tier, "path": self.path, "detail": self.detail,
        }


def _compact_capable_license(reader: ReaderFacts, day: date, rules: EligibilityRules) -> LicenseFacts | None:
    """A usable full license in an SPL-capable state, the designated SPL first, else by state."""
    usable = [x for x in reader.licenses if _full_and_usable(x, day) and rules.imlc.can_serve_as_spl(x.state, day)]
    return min(usable, key=lambda x: (x.state != reader.spl_state, x.state, x.number), default=None)


def fastest_paths(
    readers: Iterable[ReaderFacts], exam_state: str, day: date, rules: EligibilityRules,
    *, study: StudyFacts | None = None,
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
        if not reader.active or _actions(reader):
            continue
        if _license_check(reader, exam, day, rules, probe)[0] is not None:
            continue
        spl_license = _usable_spl_license(reader, day, rules)
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
            base = _compact_capable_license(reader, day, rules)
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
