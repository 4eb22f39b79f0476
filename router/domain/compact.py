"""The Interstate Medical Licensure Compact's effect on a Compact license: section 10 and the SPL.

Sources (``shared/domain/README.md``):

- Compact licenses follow the license in the State of Principal License (SPL) when it is revoked,
  suspended or surrendered in lieu of discipline, and stay encumbered after the SPL reinstates it
  until their own board acts (Compact section 10(b), e.g. W. Va. Code 30-1C-10(b)). Discipline by
  a board suspends the physician's other Compact licenses for 90 days unless their board ends the
  suspension sooner (section 10(d)). A Compact license needs a license in a designated SPL.
- Only physicians never disciplined by any licensing agency qualify for the Compact (section 2(k)).

The license row carries the board's *current* status only, so a non-active status is applied to
every day asked about (a record of history would be needed to do otherwise; this errs safe).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta

from router.domain.eligibility_facts import (
    EligibilityRules,
    LicenseFacts,
    ReaderFacts,
    license_tag,
)
from router.domain.enums import LicensePathway, LicenseStatus

_DISCIPLINE_WORD = {
    LicenseStatus.SUSPENDED: "suspension",
    LicenseStatus.REVOKED: "revocation",
    LicenseStatus.SURRENDERED: "surrender in lieu of discipline",
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


def usable_spl_license(reader: ReaderFacts, day: date, rules: EligibilityRules) -> LicenseFacts | None:
    """The full, active license covering ``day`` in the designated SPL, if that SPL can serve."""
    spl = reader.spl_state
    if spl is None or not rules.imlc.can_serve_as_spl(spl, day):
        return None
    usable = [x for x in reader.licenses if x.state == spl and _full_and_usable(x, day)]
    return max(usable, key=lambda x: (x.expires, x.number), default=None)


def _full_and_usable(lic: LicenseFacts, day: date) -> bool:
    """A full (non-Compact) license, active, covering ``day``: what an SPL license must be."""
    return lic.pathway is LicensePathway.FULL and lic.status is LicenseStatus.ACTIVE and lic.covers(day)


def compact_reason(reader: ReaderFacts, lic: LicenseFacts, day: date, rules: EligibilityRules) -> str | None:
    """Why a Compact (``imlc``) license cannot be used on ``day``, or ``None`` (section 10).

    Checks, in order: a designated SPL; no disciplined license in the SPL (section 10(b)); no SPL
    order on or before ``day`` that this license's board has not yet cleared (section 10(b)); the
    SPL can serve as SPL on ``day``; an active full license there; no order against another of
    the physician's licenses still holding this one (section 10(d), see :func:`_hold_reason`).
    Status, dates and pathway limits are checked by
    :func:`router.domain.licensure.license_standing` before this.

    Returns
    -------
    str or None
        The first reason found, or ``None`` when the Compact license may be relied on.
    """
    tag, spl = lic.tag, reader.spl_state
    if spl is None:
        return f"IMLC license {tag} does not count: no designated SPL"
    key = (lic.state, lic.number)
    in_spl = sorted(
        (x for x in reader.licenses if x.state == spl and (x.state, x.number) != key), key=lambda x: x.number
    )
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
                f"{license_tag(act.state, act.number)} on {act.day.isoformat()} until the {lic.state} board "
                "reinstates it (Compact section 10)"
            )
    if not rules.imlc.can_serve_as_spl(spl, day):
        status = rules.imlc.status_on(spl, day)
        standing = f"Compact status {status.value}" if status else "not a Compact member"
        return (
            f"IMLC license {tag} does not count: designated SPL {spl} cannot serve as SPL on "
            f"{day.isoformat()} ({standing})"
        )
    if usable_spl_license(reader, day, rules) is None:
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
    what = f"{act.state} {_DISCIPLINE_WORD[act.action]} of license {license_tag(act.state, act.number)}"
    if act.day is None:
        return (
            f"IMLC license {lic.tag} held after {what} on an unrecorded date until its board acts (Compact section 10)"
        )
    held = f"IMLC license {lic.tag} held until {end.isoformat()}"
    return f"{held} after {what} on {act.day.isoformat()} (Compact section 10)"


def has_disciplinary_record(reader: ReaderFacts) -> bool:
    """Whether any board order or disciplinary license status is on record (section 2(k)).

    A recorded order, or a license suspended, revoked or surrendered in lieu of discipline,
    excludes the physician from the Compact.
    """
    return bool(_actions(reader))


def compact_capable_license(reader: ReaderFacts, day: date, rules: EligibilityRules) -> LicenseFacts | None:
    """A usable full license in an SPL-capable state, the designated SPL first, else by state."""
    usable = [x for x in reader.licenses if _full_and_usable(x, day) and rules.imlc.can_serve_as_spl(x.state, day)]
    return min(usable, key=lambda x: (x.state != reader.spl_state, x.state, x.number), default=None)
