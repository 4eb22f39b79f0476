"""Place names an address can end with, keyed by normalized text, and how to normalize text.

Tables: US states, DC and territories (USPS codes, names and AP abbreviations from the ``us``
package, plus common variants), military postal codes AA/AE/AP, the freely associated states
MH/FM/PW, Canadian provinces (ISO 3166-2:CA via ``pycountry``) and countries (ISO 3166-1 names,
alpha-2 and alpha-3 codes via ``pycountry``, plus common aliases). Built once at import; used by
:mod:`router.domain.address`, which decides what an address says.
"""

from __future__ import annotations

import re
import unicodedata

import pycountry
import us

from router.domain.jurisdictions import (
    FREELY_ASSOCIATED_STATES,
    LICENSING_JURISDICTIONS,
    MILITARY_POSTAL_CODES,
)

# ---------------------------------------------------------------- text normalization
_ABBR_DOT = re.compile(r"(?<=\b[A-Z])\.")  # D.C. -> DC, U.S.A. -> USA; other dots split words
_TOKEN = re.compile(r"[A-Z0-9]+(?:-[A-Z0-9]+)*")


def clean_text(text: str) -> str:
    """Upper-case, strip accents, turn NUL and other control characters into spaces."""
    text = unicodedata.normalize("NFKD", text)
    kept = (ch for ch in text if not unicodedata.combining(ch))
    text = "".join(ch if ch.isprintable() or ch in "\r\n\t" else " " for ch in kept)
    return text.upper()


def tokens(text: str) -> list[str]:
    """Words of cleaned text: letters and digits, hyphenated runs kept (``D.C.`` -> ``DC``)."""
    return _TOKEN.findall(_ABBR_DOT.sub("", text))


def name_key(text: str) -> str:
    """The table key of ``text``: cleaned, tokenized, words joined by one space."""
    return " ".join(tokens(clean_text(text)))


# ---------------------------------------------------------------- name tables
US_COUNTRY = frozenset({"US", "UM"})  # United States; US Minor Outlying Islands (no board)
US_TERRITORIES = frozenset(state.abbr for state in us.states.TERRITORIES) & LICENSING_JURISDICTIONS

# Region table: key -> (kind, code); kind is "us", "military", "fas" or "province".
_EXTRA_REGIONS = {
    "DC": ("WASHINGTON DC", "DIST OF COLUMBIA", "D C", "WASHINGTON D C"),
    "VI": (
        "US VIRGIN ISLANDS",
        "USVI",
        "U S VIRGIN ISLANDS",
        "UNITED STATES VIRGIN ISLANDS",
        "VIRGIN ISLANDS OF THE UNITED STATES",
        "VIRGIN ISLANDS US",
    ),
    "MP": ("CNMI", "NORTHERN MARIANAS", "COMMONWEALTH OF THE NORTHERN MARIANA ISLANDS"),
    "WV": ("W VA",),
    "TX": ("TEX",),
    "PA": ("PENNA",),
    "WI": ("WISC",),
    "NE": ("NEBR",),
    "OR": ("OREG",),
    "KS": ("KANS",),
}
_MILITARY_NAMES = {
    "ARMED FORCES AMERICAS": "AA",
    "ARMED FORCES EUROPE": "AE",
    "ARMED FORCES AFRICA": "AE",
    "ARMED FORCES MIDDLE EAST": "AE",
    "ARMED FORCES CANADA": "AE",
    "ARMED FORCES PACIFIC": "AP",
}
_FAS_NAMES = {"MICRONESIA": "FM", "REPUBLIC OF PALAU": "PW", "REPUBLIC OF THE MARSHALL ISLANDS": "MH"}
_PROVINCE_CODES = ("AB", "BC", "MB", "NB", "NL", "NS", "NT", "NU", "ON", "PE", "QC", "SK", "YT")


def _build_regions() -> dict[str, tuple[str, str]]:
    table: dict[str, tuple[str, str]] = {}
    for sub in pycountry.subdivisions.get(country_code="CA"):
        table[name_key(sub.name)] = ("province", sub.code[-2:])
    table.update({code: ("province", code) for code in _PROVINCE_CODES} | {"PEI": ("province", "PE")})
    for state in us.states.ASSOCIATED_STATES:
        table[name_key(state.name)] = table[state.abbr] = ("fas", state.abbr)
    table.update({name: ("fas", code) for name, code in _FAS_NAMES.items()})
    table.update({name: ("military", code) for name, code in _MILITARY_NAMES.items()})
    table.update({code: ("military", code) for code in MILITARY_POSTAL_CODES})
    for state in [*us.states.STATES_AND_TERRITORIES, us.states.DC]:
        for name in (state.name, state.ap_abbr, state.abbr, *_EXTRA_REGIONS.get(state.abbr, ())):
            if name:
                table[name_key(name)] = ("us", state.abbr)
    return table


_COUNTRY_ALIASES = {
    "US": "US",
    "U S": "US",
    "U S A": "US",
    "AMERICA": "US",
    "UNITED STATES OF AMERICA": "US",
    "UK": "GB",
    "GREAT BRITAIN": "GB",
    "BRITAIN": "GB",
    "ENGLAND": "GB",
    "SCOTLAND": "GB",
    "WALES": "GB",
    "NORTHERN IRELAND": "GB",
    "RUSSIA": "RU",
    "KOREA": "KR",
    "TURKEY": "TR",
    "CZECH REPUBLIC": "CZ",
    "HOLLAND": "NL",
    "THE NETHERLANDS": "NL",
    "IVORY COAST": "CI",
    "BURMA": "MM",
    "UAE": "AE",
    "MACEDONIA": "MK",
    "SWAZILAND": "SZ",
    "CAPE VERDE": "CV",
    "VATICAN": "VA",
    "PALESTINE": "PS",
    "PRC": "CN",
    "MICRONESIA": "FM",
    "FEDERATED STATES OF MICRONESIA": "FM",
}


def _build_countries() -> tuple[dict[str, str], dict[str, str]]:
    """Return (names and alpha-3 codes -> alpha-2, alpha-2 -> alpha-2); ISO 3166-1 via pycountry."""
    names: dict[str, str] = {}
    for country in pycountry.countries:
        for name in (
            country.alpha_3,
            country.name,
            getattr(country, "official_name", None),
            getattr(country, "common_name", None),
        ):
            if name:
                names[name_key(name)] = country.alpha_2
    names.update(_COUNTRY_ALIASES)
    return names, {country.alpha_2: country.alpha_2 for country in pycountry.countries}


REGIONS = _build_regions()
COUNTRY_NAMES, COUNTRY_ALPHA2 = _build_countries()
_MAX_WORDS = max(len(key.split()) for key in [*REGIONS, *COUNTRY_NAMES])


def classify_country(alpha2: str) -> str:
    """'us', 'territory' (own board), 'fas' or 'foreign'."""
    if alpha2 in US_COUNTRY:
        return "us"
    if alpha2 in US_TERRITORIES:
        return "territory"
    return "fas" if alpha2 in FREELY_ASSOCIATED_STATES else "foreign"


def trailing_name(words: list[str]) -> tuple[int, str, str | None, str | None]:
    """Longest run of trailing words naming a region or a country (a US name wins a tie).

    Returns (number of words, key, region key or None, country alpha-2 or None).
    """
    for n in range(min(_MAX_WORDS, len(words)), 0, -1):
        key = " ".join(words[-n:])
        if key in REGIONS:
            return n, key, key, None
        if key in COUNTRY_NAMES:
            return n, key, None, COUNTRY_NAMES[key]
    return 0, "", None, None
