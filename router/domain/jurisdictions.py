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


def normalize_jurisdiction(value: str | None) -> str | None:
    """Return the two-letter postal code of a licensing jurisdiction, or ``None``.

    Accepts a postal code in any case (``tx``), a full name (``Texas``, ``District of
    Columbia``, ``Puerto Rico``), as the ``us`` package knows them. Military
    pseudo-states and freely associated states give ``None``.
    """
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    if len(text) == 2 and text.upper() in LICENSING_JURISDICTIONS:
        return text.upper()
    if len(text) == 2:
        return None
    found = us.states.lookup(text)
    if found is None:
        return None
    return found.abbr if found.abbr in LICENSING_JURISDICTIONS else None


def jurisdiction_name(code: str) -> str:
    """Full name of a jurisdiction code (``TX`` -> ``Texas``); the code itself if unknown."""
    found = us.states.lookup(code)
    return found.name if found is not None else code
