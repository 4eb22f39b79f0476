"""Find the US licensing jurisdiction named by a DICOM address string.

Inputs are InstitutionAddress (0008,0081, ST), PatientAddress (0010,1040, LO), RegionOfResidence
(0010,2152, LO) and CountryOfResidence (0010,2150, LO), already decoded to ``str`` (DICOM PS3.6
section 6, PS3.5 section 6.2 for the VRs). They arrive in two shapes: HL7 v2 XAD with ``^``
components (HL7 v2 data type XAD: ``street^other^city^state^zip^country``, the country from
HL7 table 0399, ISO 3166-1; and the common variant without the second street line) and free text
split by commas or lines.

The state is read only from the *state position*: the component or words right before the ZIP,
or the last component or words once a trailing country is removed, so the city in ``Kansas City,
MO`` or ``Indiana, PA`` never counts. A ZIP is the strong signal (USPS ZIP data from the
``zipcodes`` package). DC and the territories PR, GU, VI, AS, MP are jurisdictions of their own;
military APO/FPO/DPO addresses (AA, AE, AP) and the freely associated states (MH, FM, PW) are
not (``shared/domain/README.md``). When one address says two things (state TX, ZIP in OK; a US
state with a foreign country) no state is returned and ``conflict`` is set: a wrong state is a
legal fault, holding is safer than guessing. Nothing here raises on any text.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

import zipcodes

from router.domain.address_names import (
    COUNTRY_ALPHA2,
    COUNTRY_NAMES,
    REGIONS,
    US_COUNTRY,
    US_TERRITORIES,
    classify_country,
    clean_text,
    name_key,
    tokens,
    trailing_name,
)
from router.domain.enums import StrEnum
from router.domain.jurisdictions import (
    FREELY_ASSOCIATED_STATES,
    LICENSING_JURISDICTIONS,
    MILITARY_POSTAL_CODES,
)


class FindingBasis(StrEnum):
    """What in the address gave the state."""

    ZIP = "zip"  # a US ZIP code: the strong signal
    STATE_CODE = "state_code"  # a two-letter postal code in the state position
    STATE_NAME = "state_name"  # a full or abbreviated name in the state position
    NONE = "none"  # no state


@dataclass(frozen=True)
class StateFinding:
    """What one address string says about the US licensing jurisdiction.

    ``detail`` is a short explanation stored in the database and shown to admins; it may quote
    the state token or ZIP, never the street, and must not be logged.
    """

    state: str | None  # licensing jurisdiction code or None
    basis: FindingBasis
    detail: str
    foreign: bool = False  # explicitly outside every US licensing jurisdiction
    conflict: bool = False  # the address contradicts itself
    military: bool = False  # APO/FPO/DPO address (AA, AE, AP); also ``foreign``


_NONE_EMPTY = StateFinding(None, FindingBasis.NONE, "no address")

# ---------------------------------------------------------------- patterns and ZIPs
_SEGMENT_SEP = re.compile(r"[\r\n,;\\|\t~]+")
_ZIP = re.compile(r"^(\d{5})(?:-?\d{4})?$")
_CA_POSTAL = re.compile(r"^[A-Z]\d[A-Z]\d[A-Z]\d$")
_ISO_SUBDIVISION = re.compile(r"^([A-Z]{2})-([A-Z0-9]{1,3})$")
_MILITARY_MARKERS = frozenset({"APO", "FPO", "DPO"})
_STREET_SUFFIX_CODES = frozenset({"CT", "WY"})  # Court, Way: USPS street suffixes that are state codes


@functools.cache
def _zip_states() -> dict[str, str]:
    """ZIP -> USPS state code (also AA/AE/AP, MH/FM/PW), active and retired ZIPs alike."""
    return {row["zip_code"]: row["state"] for row in zipcodes.list_all()}


# ---------------------------------------------------------------- signals of one address
@dataclass
class _Signals:
    zip_code: str | None = None
    zip_state: str | None = None
    region: str | None = None  # matched key in REGIONS
    country: str | None = None  # matched country text
    country_alpha2: str | None = None
    ca_postal: bool = False
    marker: str | None = None  # APO, FPO or DPO


def _take_postal(words: list[str], sig: _Signals) -> list[str]:
    """Remove a trailing ZIP, ZIP+4 or Canadian postal code from ``words`` into ``sig``."""
    if len(words) >= 2 and re.fullmatch(r"\d{4}", words[-1]) and re.fullmatch(r"\d{5}", words[-2]):
        words = words[:-1]  # "74103 1234"
    if words and (found := _ZIP.match(words[-1])) and (len(words) < 2 or words[-2] != "BOX"):
        sig.zip_code = found.group(1)
        sig.zip_state = _zip_states().get(sig.zip_code)
        return words[:-1]
    if words and _CA_POSTAL.match(words[-1]):
        sig.ca_postal = True
        return words[:-1]
    if len(words) >= 2 and _CA_POSTAL.match(words[-2] + words[-1]):
        sig.ca_postal = True
        return words[:-2]
    return words


def _read_state_position(words: list[str], sig: _Signals) -> None:
    sig.marker = next((w for w in words if w in _MILITARY_MARKERS), sig.marker)
    count, key, region, _ = trailing_name(words)
    if count and region is not None:
        sig.region = key


def _set_country(text_key: str, sig: _Signals, *, allow_alpha2: bool) -> bool:
    alpha2 = COUNTRY_NAMES.get(text_key) or (COUNTRY_ALPHA2.get(text_key) if allow_alpha2 else None)
    if alpha2 is None:
        return False
    sig.country, sig.country_alpha2 = text_key, alpha2
    return True


def _signals_free_text(text: str) -> _Signals:
    sig = _Signals()
    segments = [words for part in _SEGMENT_SEP.split(text) if (words := tokens(part))]
    if segments:
        count, key, region, _ = trailing_name(segments[-1])
        after_zip = count < len(segments[-1]) and _ZIP.match(segments[-1][-count - 1]) is not None
        if region is not None and REGIONS[region][1] in US_TERRITORIES and after_zip:
            sig.country, sig.country_alpha2 = key, REGIONS[region][1]  # "San Juan PR 00901 Puerto Rico"
        elif not (count and region is None and _set_country(key, sig, allow_alpha2=False)):
            count = 0
        if count:
            segments[-1] = segments[-1][:-count]
            segments = [words for words in segments if words]
    if not segments:
        return sig
    last = _take_postal(segments[-1], sig)
    position = last if last or len(segments) < 2 else segments[-2]
    sig.marker = next((w for w in segments[-1] if w in _MILITARY_MARKERS), None)
    _read_state_position(position, sig)
    is_street_line = len(segments) == 1 and position[0][0].isdigit() if position else False
    if sig.region in _STREET_SUFFIX_CODES and is_street_line and sig.zip_code is None and sig.country is None:
        sig.region = None  # "123 Oak Ct": a street suffix, not Connecticut
    return sig


def _signals_hl7(text: str) -> _Signals:
    """XAD: street^other^city^state^zip^country^type...; also street^city^state^zip^country."""
    sig = _Signals()
    comps = [" ".join(tokens(c)) for c in text.split("^")][:6]
    filled = [i for i in range(1, len(comps)) if comps[i]]
    zip_at = [i for i in filled if not _take_postal(comps[i].split(), probe := _Signals()) and probe.zip_code]
    state_at, country_at = None, None
    if zip_at:
        state_at, postal_at = zip_at[-1] - 1, zip_at[-1]
        country_at = postal_at + 1 if postal_at + 1 < len(comps) else None
    elif filled:
        last = filled[-1]
        before_has_digit = any(ch.isdigit() for ch in comps[last - 1])
        if (
            last == 5
            or (comps[last] in COUNTRY_NAMES and comps[last] not in REGIONS)
            or (comps[last] in COUNTRY_ALPHA2 and before_has_digit)
        ):
            country_at = last
            rest = [i for i in filled if i < last]
            last = rest[-1] if rest else 0
        if any(ch.isdigit() for ch in comps[last]) and last >= 1:
            state_at, postal_at = last - 1, last
        else:
            state_at, postal_at = last, None
    else:
        return sig
    if country_at is not None and comps[country_at]:
        _set_country(comps[country_at], sig, allow_alpha2=True)
    words = comps[state_at].split() if state_at else []
    if state_at is not None and postal_at is not None:
        words = words + comps[postal_at].split()
    if state_at:
        sig.marker = next((w for w in comps[state_at - 1].split() if w in _MILITARY_MARKERS), None)
    _read_state_position(_take_postal(words, sig), sig)
    return sig


# ---------------------------------------------------------------- decision
def _decide(sig: _Signals) -> StateFinding:
    us_claims: list[tuple[str, str, FindingBasis]] = []  # (state, what said it, basis)
    outside: list[tuple[str, bool]] = []  # (description, military)
    if sig.region is not None:
        kind, code = REGIONS[sig.region]
        if kind == "us":
            basis = FindingBasis.STATE_CODE if sig.region == code else FindingBasis.STATE_NAME
            said = f"state code {code}" if basis is FindingBasis.STATE_CODE else f"state name {sig.region} ({code})"
            us_claims.append((code, said, basis))
        elif kind == "military":
            outside.append((f"military address ({sig.marker + ' ' if sig.marker else ''}{code})", True))
        elif kind == "fas":
            outside.append((f"freely associated state {code}, not a US licensing jurisdiction", False))
        else:
            outside.append((f"foreign address (Canadian province {code})", False))
    if sig.zip_state in LICENSING_JURISDICTIONS:
        us_claims.append((sig.zip_state, f"ZIP {sig.zip_code} ({sig.zip_state})", FindingBasis.ZIP))
    elif sig.zip_state in MILITARY_POSTAL_CODES:
        outside.append((f"military ZIP {sig.zip_code} ({sig.zip_state})", True))
    elif sig.zip_state in FREELY_ASSOCIATED_STATES:
        outside.append((f"ZIP {sig.zip_code} is in freely associated state {sig.zip_state}", False))
    if sig.ca_postal:
        outside.append(("foreign address (Canadian postal code)", False))
    if sig.country_alpha2 is not None:
        country_class = classify_country(sig.country_alpha2)
        if country_class == "territory":
            us_claims.append((sig.country_alpha2, f"country {sig.country}", FindingBasis.STATE_NAME))
        elif country_class != "us":
            outside.insert(0, (f"foreign address (country {sig.country})", False))
    states = {state for state, _, _ in us_claims}
    if us_claims and (outside or len(states) > 1):
        said = " and ".join([what for _, what, _ in us_claims] + [what for what, _ in outside])
        return StateFinding(None, FindingBasis.NONE, f"{said} disagree", conflict=True)
    if us_claims:
        state, said, basis = min(us_claims, key=lambda claim: claim[2] is not FindingBasis.ZIP)
        if basis is not FindingBasis.ZIP:
            unknown = f" (ZIP {sig.zip_code} not known)" if sig.zip_code else ""
            return StateFinding(state, basis, said + unknown)
        others = [what for _, what, other in us_claims if other is not FindingBasis.ZIP]
        agree = f" ({' and '.join(others)} {'agrees' if len(others) == 1 else 'agree'})" if others else ""
        return StateFinding(state, basis, f"ZIP {sig.zip_code} is in {state}{agree}")
    if outside:
        military = any(flag for _, flag in outside)
        what = next(w for w, flag in outside if flag == military)
        return StateFinding(None, FindingBasis.NONE, what, foreign=True, military=military)
    if sig.zip_code is not None:
        return StateFinding(None, FindingBasis.NONE, f"ZIP {sig.zip_code} is not a known US ZIP code")
    if sig.country_alpha2 is not None:
        return StateFinding(None, FindingBasis.NONE, f"US address (country {sig.country}) without a state or ZIP")
    return StateFinding(None, FindingBasis.NONE, "no US state, ZIP or country in the state position")


def _parse_one(text: str) -> StateFinding:
    return _decide(_signals_hl7(text) if "^" in text else _signals_free_text(text))


# ---------------------------------------------------------------- public API
def parse_address(text: str | None) -> StateFinding:
    """Find the licensing jurisdiction of an InstitutionAddress or PatientAddress value.

    Parameters
    ----------
    text : str or None
        The decoded element value (DICOM PS3.6: (0008,0081) ST, (0010,1040) LO), HL7 XAD
        (``^`` components, ``~`` repetitions) or free text (commas, lines, ``\\``).

    Returns
    -------
    StateFinding
        ``state`` is a code of ``LICENSING_JURISDICTIONS`` or ``None``. A US ZIP gives ``basis``
        ZIP; otherwise the state code or name in the state position gives STATE_CODE or
        STATE_NAME. ``foreign`` is set for a non-US country, a Canadian province or postal
        code, a freely associated state (MH, FM, PW) or a military address (AA, AE, AP; then
        ``military`` too). ``conflict`` is set, with no state, when the parts disagree (state
        TX with a ZIP in OK, a US state with a foreign country, repetitions naming different
        states): holding for an admin is safer than guessing, since a read under the wrong
        state's license is a legal fault.

    Notes
    -----
    Never raises: ``None``, empty or garbage text gives ``basis`` NONE. A name that is both a
    US state and a country (``Georgia``) is read as the state.
    """
    if not isinstance(text, str):
        return _NONE_EMPTY
    cleaned = clean_text(text)
    parts = [part for part in cleaned.split("~") if tokens(part)] if "^" in cleaned else [cleaned]
    if not parts or not tokens(parts[0]):
        return _NONE_EMPTY
    findings = [_parse_one(part) for part in parts]
    if len(findings) == 1:
        return findings[0]
    informative = [f for f in findings if f.basis is not FindingBasis.NONE or f.foreign or f.conflict]
    states = {f.state for f in informative}
    if len(states) > 1 or any(f.conflict for f in informative):
        return StateFinding(None, FindingBasis.NONE, "repeated addresses disagree", conflict=True)
    return informative[0] if informative else findings[0]


def parse_region(text: str | None) -> StateFinding:
    """Find the licensing jurisdiction of a RegionOfResidence (0010,2152) value.

    Usually a state code or name (``TX``, ``Texas``); also accepted: an ISO 3166-2 code
    (``US-TX``; ``CA-ON`` is foreign) and anything :func:`parse_address` reads.

    Parameters
    ----------
    text : str or None
        The decoded LO value (DICOM PS3.6).

    Returns
    -------
    StateFinding
        As :func:`parse_address`; never raises.
    """
    if not isinstance(text, str):
        return _NONE_EMPTY
    words = tokens(clean_text(text))
    if len(words) == 1 and (found := _ISO_SUBDIVISION.match(words[0])):
        country, sub = found.groups()
        if country in US_COUNTRY and REGIONS.get(sub, ("",))[0] in ("us", "military", "fas"):
            return _decide(_Signals(region=sub))
        if country in COUNTRY_ALPHA2 and country not in US_COUNTRY:
            return _decide(_Signals(country=words[0], country_alpha2=country))
    return parse_address(text)


def is_foreign_country(text: str | None) -> bool | None:
    """Say whether a CountryOfResidence (0010,2150) value names a country outside the US.

    Parameters
    ----------
    text : str or None
        An ISO 3166-1 name, alpha-2 or alpha-3 code (pycountry) or a common alias
        (``USA``, ``U.S.A.``, ``United States``, ``UK``, ``England``).

    Returns
    -------
    bool or None
        ``False`` for the US and its territories (PR, GU, VI, AS, MP, UM), ``True`` for any
        other country including the freely associated states (MH, FM, PW), ``None`` when empty,
        unknown or ambiguous (``Georgia``: a US state and a country). Here ``CA`` is Canada.
        Never raises.
    """
    if not isinstance(text, str):
        return None
    key = name_key(text)
    alpha2 = COUNTRY_NAMES.get(key) or COUNTRY_ALPHA2.get(key)
    if alpha2 is None:
        return None
    country_class = classify_country(alpha2)
    if country_class in ("us", "territory"):
        return False
    if len(key) > 3 and REGIONS.get(key, ("", ""))[0] == "us":
        return None
    return True
