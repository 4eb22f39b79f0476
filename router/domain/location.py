"""Resolve the exam state of a study from every source, in the order of DESIGN.md "Which state".

Medicine is practised where the patient is at the time of the service (every IMLC statute, e.g.
La. R.S. 37:1310.1; FSMB), and for an image that is where it was acquired. So the sources are
tried in order: 1. the registered facility; 2. InstitutionAddress (0008,0081); 3. when
``use_patient_address`` is on, RegionOfResidence (0010,2152) then PatientAddress (0010,1040),
unless CountryOfResidence (0010,2150) names a non-US country. The first source that gives a
state wins; a lower source never overrides a higher one, and every lower source that names
another state is kept as a conflict for the admin (a Texan imaged in an Oklahoma ER is read under
an Oklahoma license). A source that is explicitly outside the US licensing jurisdictions (foreign,
military) or contradicts itself stops the search: guessing from a lower source could name the
wrong state, which is a legal fault, so the study is held instead. PatientState (0038,0500) is a
clinical state and is never read.
"""

from __future__ import annotations

from dataclasses import dataclass

from router.domain.address import StateFinding, is_foreign_country, parse_address, parse_region
from router.domain.enums import ExamStateSource
from router.domain.jurisdictions import LICENSING_JURISDICTIONS


@dataclass(frozen=True)
class LocationEvidence:
    """What a study says about where it was acquired; every field may be missing."""

    facility_state: str | None = None  # state of a registered facility (already normalized)
    facility_label: str | None = None  # e.g. "CT_NORTH (North Clinic)" for the detail text
    institution_address: str | None = None  # (0008,0081)
    region_of_residence: str | None = None  # (0010,2152)
    patient_address: str | None = None  # (0010,1040)
    country_of_residence: str | None = None  # (0010,2150)


@dataclass(frozen=True)
class SourceFinding:
    """What one source said: a state, or ``None`` with the reason in ``detail``."""

    source: ExamStateSource
    state: str | None
    detail: str


@dataclass(frozen=True)
class ExamLocation:
    """The resolved exam state, the rule that gave it and everything that was looked at."""

    state: str | None
    source: ExamStateSource | None
    detail: str  # why this state (or why none)
    conflicts: tuple[SourceFinding, ...]  # sources naming another state, self-contradicting addresses
    findings: tuple[SourceFinding, ...]  # every source looked at, in order, for `studies explain`

    def conflicts_as_json(self) -> list[dict]:
        """The conflicts as ``[{"source": ..., "state": ... or None, "detail": ...}]`` for storage."""
        return [{"source": str(c.source), "state": c.state, "detail": c.detail} for c in self.conflicts]


@dataclass(frozen=True)
class _Look:
    finding: SourceFinding
    stops: bool = False  # explicitly not in a US jurisdiction, or self-contradicting: hold
    conflict: bool = False  # the address contradicts itself


def _from_address(source: ExamStateSource, tag: str, text: str | None, parsed: StateFinding | None) -> _Look:
    if parsed is None or text is None or not text.strip(" \x00\t\r\n"):
        return _Look(SourceFinding(source, None, f"{tag} not sent"))
    finding = SourceFinding(source, parsed.state, f"{tag}: {parsed.detail}")
    return _Look(finding, stops=parsed.foreign or parsed.conflict, conflict=parsed.conflict)


def _facility(evidence: LocationEvidence) -> _Look:
    source = ExamStateSource.FACILITY
    if evidence.facility_state is None:
        return _Look(SourceFinding(source, None, "no registered facility"))
    label = evidence.facility_label or "registered facility"
    code = evidence.facility_state.strip().upper()
    if code in LICENSING_JURISDICTIONS:
        return _Look(SourceFinding(source, code, f"facility {label} is registered in {code}"))
    return _Look(SourceFinding(source, None, f"facility {label} has state {code!r}, not a licensing jurisdiction"))


def _patient_looks(evidence: LocationEvidence, use_patient_address: bool) -> list[_Look]:
    tags = (
        (ExamStateSource.REGION_OF_RESIDENCE, "RegionOfResidence", evidence.region_of_residence, parse_region),
        (ExamStateSource.PATIENT_ADDRESS, "PatientAddress", evidence.patient_address, parse_address),
    )
    if not use_patient_address:
        return [
            _Look(SourceFinding(source, None, f"{tag} not used: use_patient_address is off"))
            for source, tag, _, _ in tags
        ]
    if is_foreign_country(evidence.country_of_residence):
        country = " ".join(str(evidence.country_of_residence).split()).strip("\x00 ")
        return [
            _Look(SourceFinding(source, None, f"{tag} not used: CountryOfResidence {country} is outside the US"))
            for source, tag, _, _ in tags
        ]
    return [_from_address(source, tag, text, parse(text)) for source, tag, text, parse in tags]


def _is_conflict(look: _Look, chosen: SourceFinding | None) -> bool:
    """A self-contradicting address; a state other than the chosen one (or any, when none is
    chosen); an InstitutionAddress outside the US while a registered facility gave a state."""
    state = look.finding.state
    if look.conflict or (state is not None and (chosen is None or state != chosen.state)):
        return True
    return look.stops and chosen is not None and look.finding.source is ExamStateSource.INSTITUTION_ADDRESS


def resolve_exam_state(evidence: LocationEvidence, *, use_patient_address: bool = True) -> ExamLocation:
    """Resolve the exam state from the facility, InstitutionAddress and the patient's tags.

    Parameters
    ----------
    evidence : LocationEvidence
        The registered facility's state, if any, and the decoded address tags of the study.
    use_patient_address : bool, optional
        Fall back on RegionOfResidence and PatientAddress (DESIGN.md "Which state", rule 3);
        strict deployments turn it off.

    Returns
    -------
    ExamLocation
        ``state`` and ``source`` of the first source that gives a licensing jurisdiction, or
        both ``None`` (hold for an admin) when none does or when a higher source is explicitly
        foreign or military or contradicts itself. ``conflicts`` holds every other source naming
        a different state, every self-contradicting address and an InstitutionAddress outside the
        US under a registered facility; ``findings`` holds all four sources in order. Never raises.
    """
    institution = evidence.institution_address
    looks = [
        _facility(evidence),
        _from_address(
            ExamStateSource.INSTITUTION_ADDRESS, "InstitutionAddress", institution, parse_address(institution)
        ),
        *_patient_looks(evidence, use_patient_address),
    ]
    findings = tuple(look.finding for look in looks)
    chosen: SourceFinding | None = None
    blocker: SourceFinding | None = None
    for look in looks:
        if look.finding.state is not None:
            chosen = look.finding
            break
        if look.stops:
            blocker = look.finding
            break
    conflicts = tuple(look.finding for look in looks if _is_conflict(look, chosen))
    if chosen is not None:
        return ExamLocation(chosen.state, chosen.source, chosen.detail, conflicts, findings)
    if blocker is not None:
        detail = f"no exam state: {blocker.source} stops the search ({blocker.detail}); an admin must set it"
    else:
        detail = "no exam state: " + "; ".join(f"{f.source}: {f.detail}" for f in findings)
    return ExamLocation(None, None, detail, conflicts, findings)
