"""The value objects eligibility takes: a reader, their licenses, board orders and privileges,
the study, and the configured rules.

The service layer (:mod:`router.services.facts`) turns database rows into these; the rules in
:mod:`router.domain.licensure`, :mod:`router.domain.compact` and
:mod:`router.domain.compact_paths` read them. Dates are calendar dates; a license is valid from
its issue day to its expiry day, both included.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime

from router.domain.enums import FederalFacility, LicensePathway, LicenseStatus
from router.domain.imlc import ImlcMembership
from router.errors import ValidationError


def license_tag(state: str, number: str) -> str:
    """A license as named in reasons and listings: ``TX-123`` for Texas license ``123``.

    Boards often print the state in the number itself (``TX-123``, ``TX 123``); it is not
    repeated (``TX-123``, not ``TX-TX-123``).
    """
    upper = number.upper()
    if upper.startswith(state.upper()) and upper[len(state) : len(state) + 1] in ("-", " ", "_", "."):
        return number
    return f"{state}-{number}"


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
        """``<STATE>-<number>``, as shown in reasons (see :func:`license_tag`)."""
        return license_tag(self.state, self.number)

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
