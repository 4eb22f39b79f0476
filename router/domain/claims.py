"""Claim fields of a professional line: place of service, ICD-10-CM codes, modifiers, charge.

Pure rules for what an 837P service line needs beyond the CPT code (ASC X12 005010X222A1,
Health Care Claim: Professional). Sources:

- Place of service: the CMS Place of Service code set (CMS Pub. 100-04, Medicare Claims Processing
  Manual, chapter 26, section 10.5). The professional component of a diagnostic test takes the
  POS where the patient received the technical component (CMS CR 7631); a teleradiology read is
  not a Medicare telehealth service, so POS 02 and 10 (telehealth) are never used
  (shared/domain/README.md).
- HL7 v2.5.1 table 0004 patient class (PV1-2): ``I`` inpatient -> POS 21, ``O`` outpatient -> POS
  22 (on-campus outpatient hospital) or 19 (off-campus) as configured, ``E`` emergency -> POS 23.
- ICD-10-CM code shape (CDC/NCHS ICD-10-CM tabular list: a letter, a digit, a letter or digit,
  then up to four letters or digits after the point). On the 837P the codes go in the claim's HI
  segment (loop 2300, up to 12) without the point, and each service line points at up to four of
  them (SV107, loop 2400).
- Modifiers: up to four per line (SV101-3 to SV101-6); modifier 26 first when billed. The known
  set is the one teleradiology orders carry: LT/RT/50 (laterality, bilateral), 59/XE/XP/XS/XU
  (distinct procedural service, CMS NCCI), 76/77 (repeat procedure), 52 (reduced services).
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from types import MappingProxyType

from router.domain.cpt_map import validate_cpt_code
from router.errors import DataFileError, ValidationError

# --- Place of service ------------------------------------------------------------------------

#: CMS Place of Service codes (Pub. 100-04 chapter 26 section 10.5), code -> short name.
POS_CODES = MappingProxyType(
    {
        "01": "Pharmacy",
        "02": "Telehealth provided other than in patient's home",
        "03": "School",
        "04": "Homeless shelter",
        "05": "Indian Health Service free-standing facility",
        "06": "Indian Health Service provider-based facility",
        "07": "Tribal 638 free-standing facility",
        "08": "Tribal 638 provider-based facility",
        "09": "Prison/correctional facility",
        "10": "Telehealth provided in patient's home",
        "11": "Office",
        "12": "Home",
        "13": "Assisted living facility",
        "14": "Group home",
        "15": "Mobile unit",
        "16": "Temporary lodging",
        "17": "Walk-in retail health clinic",
        "18": "Place of employment-worksite",
        "19": "Off campus-outpatient hospital",
        "20": "Urgent care facility",
        "21": "Inpatient hospital",
        "22": "On campus-outpatient hospital",
        "23": "Emergency room-hospital",
        "24": "Ambulatory surgical center",
        "25": "Birthing center",
        "26": "Military treatment facility",
        "31": "Skilled nursing facility",
        "32": "Nursing facility",
        "33": "Custodial care facility",
        "34": "Hospice",
        "41": "Ambulance-land",
        "42": "Ambulance-air or water",
        "49": "Independent clinic",
        "50": "Federally qualified health center",
        "51": "Inpatient psychiatric facility",
        "52": "Psychiatric facility-partial hospitalization",
        "53": "Community mental health center",
        "54": "Intermediate care facility/individuals with intellectual disabilities",
        "55": "Residential substance abuse treatment facility",
        "56": "Psychiatric residential treatment center",
        "57": "Non-residential substance abuse treatment facility",
        "60": "Mass immunization center",
        "61": "Comprehensive inpatient rehabilitation facility",
        "62": "Comprehensive outpatient rehabilitation facility",
        "65": "End-stage renal disease treatment facility",
        "71": "Public health clinic",
        "72": "Rural health clinic",
        "81": "Independent laboratory",
        "99": "Other place of service",
    }
)
#: Telehealth POS codes: never on a separately billed interpretation (CMS CR 7631; a
#: teleradiology read is not a Medicare telehealth service).
TELEHEALTH_POS = frozenset({"02", "10"})
#: The two outpatient hospital settings an outpatient (PV1-2 ``O``) exam can have.
OUTPATIENT_POS = frozenset({"19", "22"})
#: PV1-2 patient class (HL7 v2.5.1 table 0004) -> POS, where the class alone decides it.
PATIENT_CLASS_POS = MappingProxyType({"I": "21", "E": "23"})


def validate_pos(value: str, what: str = "place of service") -> str:
    """Return the two-digit CMS POS code ``value`` (stripped; ``"9"`` is not ``"09"``).

    Raises
    ------
    ValidationError
        Not a CMS POS code, or a telehealth POS (02, 10), which a separately billed
        interpretation never takes (CMS CR 7631).
    """
    code = value.strip() if isinstance(value, str) else ""
    if code in TELEHEALTH_POS:
        raise ValidationError(
            f"{what} {code} is a telehealth POS: a teleradiology interpretation takes the POS where the exam was done (CMS CR 7631)"
        )
    if code not in POS_CODES:
        raise ValidationError(f"{what} {value!r} is not a CMS place of service code")
    return code


def validate_outpatient_pos(value: str, what: str = "outpatient place of service") -> str:
    """Return ``"19"`` or ``"22"``; anything else raises :class:`ValidationError` (telehealth named)."""
    code = validate_pos(value, what)
    if code not in OUTPATIENT_POS:
        raise ValidationError(f"{what} must be 22 (on-campus) or 19 (off-campus outpatient hospital), got {code}")
    return code


def place_of_service(
    patient_class: str | None, outpatient_pos: str, default_pos: str | None
) -> tuple[str | None, str | None]:
    """The POS of an exam and, when there is none, why (for coder review).

    Parameters
    ----------
    patient_class : str or None
        PV1-2 of the order (HL7 table 0004), any case.
    outpatient_pos : str
        ``"22"`` or ``"19"``: the facility's outpatient setting (else the configured default).
    default_pos : str or None
        The facility's default POS for any other class, or no order at all.

    Returns
    -------
    (str or None, str or None)
        ``(pos, None)``, or ``(None, reason)`` when a coder must choose.
    """
    cls = (patient_class or "").strip().upper()
    if cls in PATIENT_CLASS_POS:
        return PATIENT_CLASS_POS[cls], None
    if cls == "O":
        return outpatient_pos, None
    if default_pos:
        return default_pos, None
    shown = f"patient class {cls!r}" if cls else "no patient class (PV1-2)"
    return None, f"no place of service: {shown} and the facility has no default POS"


# --- ICD-10-CM -------------------------------------------------------------------------------

_ICD10CM = re.compile(r"([A-Z][0-9][0-9A-Z])\.?([0-9A-Z]{1,4})?")
#: Most diagnosis codes on one 837P claim (HI segment, loop 2300).
MAX_DIAGNOSES = 12
#: Most diagnosis pointers on one service line (SV107, loop 2400).
MAX_POINTERS = 4


def validate_icd10cm(value: str) -> str:
    """Return the ICD-10-CM code with its point after the third character (``R07.9``, ``R51``).

    Raises
    ------
    ValidationError
        Not the ICD-10-CM shape (letter, digit, letter-or-digit, then up to 4 after the point).
    """
    text = value.strip().upper() if isinstance(value, str) else ""
    match = _ICD10CM.fullmatch(text)
    if match is None:
        raise ValidationError(f"{value!r} is not an ICD-10-CM code")
    return match.group(1) + (f".{match.group(2)}" if match.group(2) else "")


def diagnosis_codes(values: Iterable[str], source: str) -> tuple[tuple[str, ...], list[str]]:
    """Valid ICD-10-CM codes of ``values`` (distinct, in order, at most 12) and the problems found.

    ``source`` names where they came from in the problem texts (``"order"``, ``"report"``).
    """
    codes: list[str] = []
    problems: list[str] = []
    for value in values:
        try:
            code = validate_icd10cm(value)
        except ValidationError as exc:
            problems.append(f"{source} diagnosis {exc}")
            continue
        if code not in codes:
            codes.append(code)
    if len(codes) > MAX_DIAGNOSES:
        problems.append(f"{source} has {len(codes)} diagnoses: the first {MAX_DIAGNOSES} are kept (837P HI limit)")
        codes = codes[:MAX_DIAGNOSES]
    return tuple(codes), problems


def diagnosis_pointers(count: int) -> tuple[int, ...]:
    """SV107 pointers of a line with ``count`` claim diagnoses: ``1..min(count, 4)``."""
    return tuple(range(1, min(count, MAX_POINTERS) + 1))


# --- Modifiers -------------------------------------------------------------------------------

PROFESSIONAL_MODIFIER = "26"
#: Modifiers a line may carry beyond 26, with what they mean (CPT appendix A; CMS NCCI for X{EPSU}).
KNOWN_MODIFIERS = MappingProxyType(
    {
        "LT": "left side",
        "RT": "right side",
        "50": "bilateral procedure",
        "52": "reduced services",
        "59": "distinct procedural service",
        "XE": "separate encounter",
        "XP": "separate practitioner",
        "XS": "separate structure",
        "XU": "unusual non-overlapping service",
        "76": "repeat procedure by the same physician",
        "77": "repeat procedure by another physician",
    }
)
#: Telehealth modifiers: never on a teleradiology read (shared/domain/README.md).
TELEHEALTH_MODIFIERS = frozenset({"95", "GT", "GQ", "G0"})
#: Most modifiers on one 837P service line (SV101-3 to SV101-6).
MAX_MODIFIERS = 4


def line_modifiers(professional: bool, ordered: Sequence[str]) -> tuple[tuple[str, ...], list[str]]:
    """The modifiers of a line in order (26 first when ``professional``) and the problems found.

    Unknown, telehealth or contradictory modifiers (LT with RT, 50 with LT or RT) and more than
    four are problems for coder review; a problem modifier is left off the line.
    """
    out = [PROFESSIONAL_MODIFIER] if professional else []
    problems: list[str] = []
    for raw in ordered:
        code = raw.strip().upper()
        if not code or code in out:
            continue
        if code in TELEHEALTH_MODIFIERS:
            problems.append(f"modifier {code} is a telehealth modifier: not used on a teleradiology read")
        elif code == PROFESSIONAL_MODIFIER or code == "TC":
            problems.append(f"modifier {code} from the order ignored: the arrangement decides 26")
        elif code not in KNOWN_MODIFIERS:
            problems.append(f"modifier {code!r} is not one of {', '.join(KNOWN_MODIFIERS)}")
        else:
            out.append(code)
    sides = {"LT", "RT", "50"} & set(out)
    if len(sides) > 1:
        problems.append(f"modifiers {' and '.join(sorted(sides))} contradict each other")
    if len(out) > MAX_MODIFIERS:
        problems.append(f"{len(out)} modifiers: an 837P line carries at most {MAX_MODIFIERS}")
        out = out[:MAX_MODIFIERS]
    return tuple(out), problems


# --- Fee schedule ----------------------------------------------------------------------------


@dataclass(frozen=True)
class FeeSchedule:
    """Charge per CPT code and pricing modifier (``26`` or none) in cents, for one year.

    File format (``config/fee_schedule_<year>.csv``): comment lines starting ``#``, then a header
    ``cpt,modifier,charge_cents,source``. ``modifier`` is ``26`` or empty (the global service);
    ``source`` says where an amount comes from (``placeholder`` when it is not sourced).
    """

    version: str
    charges: MappingProxyType[tuple[str, str], int]
    sources: MappingProxyType[tuple[str, str], str]

    @classmethod
    def from_csv_text(cls, text: str, version: str) -> FeeSchedule:
        """Parse the file text.

        Raises
        ------
        DataFileError
            ``fee schedule line N: reason`` for a bad code, modifier, amount or repeated key.
        """
        lines = [
            (number, line)
            for number, line in enumerate(text.splitlines(), 1)
            if line.strip() and not line.startswith("#")
        ]
        reader = csv.DictReader([line for _, line in lines])
        if reader.fieldnames is None or not {"cpt", "modifier", "charge_cents"} <= set(reader.fieldnames):
            raise DataFileError("fee schedule: the header must name cpt, modifier, charge_cents")
        charges: dict[tuple[str, str], int] = {}
        sources: dict[tuple[str, str], str] = {}
        for (number, _), row in zip(lines[1:], reader, strict=False):
            try:
                cpt = validate_cpt_code(row["cpt"] or "")
                modifier = (row["modifier"] or "").strip().upper()
                if modifier not in ("", PROFESSIONAL_MODIFIER):
                    raise ValidationError(f"modifier must be 26 or empty, got {modifier!r}")
                amount = (row["charge_cents"] or "").strip()
                if not amount.isdigit():
                    raise ValidationError(f"charge_cents must be whole cents, got {amount!r}")
                if (cpt, modifier) in charges:
                    raise ValidationError(f"{cpt}{'-' + modifier if modifier else ''} listed twice")
            except ValidationError as exc:
                raise DataFileError(f"fee schedule line {number}: {exc}") from exc
            charges[(cpt, modifier)] = int(amount)
            sources[(cpt, modifier)] = (row.get("source") or "").strip()
        return cls(version, MappingProxyType(charges), MappingProxyType(sources))

    def charge(self, cpt: str, professional: bool) -> int | None:
        """Cents for one unit of ``cpt`` (with 26 when ``professional``), or None when not listed."""
        return self.charges.get((cpt, PROFESSIONAL_MODIFIER if professional else ""))

    def is_placeholder(self, cpt: str, professional: bool) -> bool:
        """Whether the amount is marked ``placeholder`` (not sourced)."""
        return self.sources.get((cpt, PROFESSIONAL_MODIFIER if professional else "")) == "placeholder"


def contract_charge(fee_cents: int, percent: int) -> int:
    """``fee_cents * percent / 100`` in whole cents, rounded half up (exact integer arithmetic)."""
    return (fee_cents * percent * 2 + 100) // 200


def validate_tin(value: str, what: str = "TIN") -> str:
    """The nine digits of a federal tax identification number (EIN ``NN-NNNNNNN`` or nine digits).

    Raises
    ------
    ValidationError
        Not nine digits (a hyphen after the second digit is allowed).
    """
    text = value.strip() if isinstance(value, str) else ""
    digits = text.replace("-", "", 1) if re.fullmatch(r"[0-9]{2}-[0-9]{7}", text) else text
    if not re.fullmatch(r"[0-9]{9}", digits):
        raise ValidationError(f"{what} {value!r} must be nine digits (an EIN may be written NN-NNNNNNN)")
    return digits
