"""US medical licensing jurisdictions: the 50 states, DC and the five inhabited territories.

Each has its own medical board, so each is a separate jurisdiction for licensure (see
``shared/domain/README.md``). Military pseudo-states (AA, AE, AP) and the freely associated
states (MH, FM, PW) are postal codes, not licensing jurisdictions. Names and codes come from the
``us`` package.
"""

from __future__ import annotations

import us

#: Postal codes of every jurisdiction with a medical board: 50 states, DC, PR, GU, VI, AS, MP.
LICENSING_JURISDICTIONS: frozenset[str] = frozenset(state.abbr for state in us.states.STATES_AND_TERRITORIES) | {"DC"}

#: Postal codes that look like states but have no medical board.
MILITARY_POSTAL_CODES: frozenset[str] = frozenset({"AA", "AE", "AP"})
FREELY_ASSOCIATED_STATES: frozenset[str] = frozenset({"MH", "FM", "PW"})


_BY_NAME: dict[str, str] = {
    " ".join(state.name.lower().split()): state.abbr
    for state in us.states.STATES_AND_TERRITORIES
    if state.abbr in LICENSING_JURISDICTIONS
}


def normalize_jurisdiction(value: str | None) -> str | None:
    """Return the two-letter postal code of a licensing jurisdiction, or ``None``.

    Accepts a postal code in any case (``tx``) or a full name in any case and spacing
    (``Texas``, ``District of Columbia``, ``Puerto Rico``). Matching is exact: a misspelling
    gives ``None`` rather than a phonetic guess (``us.states.lookup`` would turn ``Mane`` into
    Maine), because a wrong state is a licensure fault. Military pseudo-states and freely
    associated states give ``None``.
    """
    if value is None:
        return None
    text = " ".join(value.split())
    if not text:
        return None
    if len(text) == 2:
        code = text.upper()
        return code if code in LICENSING_JURISDICTIONS else None
    return _BY_NAME.get(text.lower())


def jurisdiction_name(code: str) -> str:
    """Full name of a jurisdiction code (``TX`` -> ``Texas``); the code itself if unknown."""
    found = us.states.lookup(code.upper(), field="abbr") if len(code) == 2 else None
    return found.name if found is not None else code
