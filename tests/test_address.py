"""Tests for router.domain.address: the licensing jurisdiction named by a DICOM address."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from router.domain.address import FindingBasis, StateFinding, is_foreign_country, parse_address, parse_region
from router.domain.jurisdictions import LICENSING_JURISDICTIONS

ZIP, CODE, NAME, NONE = FindingBasis.ZIP, FindingBasis.STATE_CODE, FindingBasis.STATE_NAME, FindingBasis.NONE


@pytest.mark.parametrize(
    ("text", "state", "basis"),
    [
        # HL7 v2 XAD: street^other^city^state^zip^country, and the variant without "other"
        ("123 Main St^^Dallas^TX^75201^USA", "TX", ZIP),
        ("123 Main St^Dallas^TX^75201", "TX", ZIP),
        ("123 Main St^Dallas^TX^75201^USA^H", "TX", ZIP),
        ("^^Tulsa^OK", "OK", CODE),
        ("^Tulsa^OK", "OK", CODE),
        ("Tulsa^OK^USA", "OK", CODE),
        ("^^Tulsa^Oklahoma^^USA", "OK", NAME),
        ("^^Nevada^^64772", "MO", ZIP),  # city named like a state, empty state component
        ("123 Main St^^Dallas^TX 75201", "TX", ZIP),  # state and ZIP in one component
        ("12345^^Dallas^TX^75201", "TX", ZIP),  # numeric street line is not the ZIP
        ("1 Main&Suite 4^^Dallas^TX^75201-1234^USA", "TX", ZIP),
        ("^^Sacramento^CA^95814^USA", "CA", ZIP),  # CA in the state component is California
        ("^^San Juan^PR^00901^PRI", "PR", ZIP),
        ("^^Hagatna^GU^96910^GUM", "GU", ZIP),
        ("^^Dallas^TX^75201~^^Dallas^TX", "TX", ZIP),  # repetitions that agree
        # free text, commas and lines
        ("1 Elm St, Tulsa, OK 74103", "OK", ZIP),
        ("1 Elm St\nTulsa OK 74103-1234", "OK", ZIP),
        ("1 Elm St\r\nTulsa OK 741031234", "OK", ZIP),
        ("1 Elm St, Tulsa OK 74103 1234", "OK", ZIP),
        ("Tulsa, OK, 74103", "OK", ZIP),
        ("Tulsa, Oklahoma", "OK", NAME),
        ("tulsa, oklahoma", "OK", NAME),
        ("Dallas TX", "TX", CODE),
        ("dallas tx", "TX", CODE),
        ("San Juan, PR 00901", "PR", ZIP),
        ("Washington, DC 20001", "DC", ZIP),
        ("Hagatna, Guam 96910", "GU", ZIP),
        ("St Thomas, US Virgin Islands 00802", "VI", ZIP),
        ("Saipan, MP 96950", "MP", ZIP),
        ("Pago Pago, American Samoa 96799", "AS", ZIP),
        ("San Juan PR 00901 Puerto Rico", "PR", ZIP),
        ("Dallas TX 75201 USA", "TX", ZIP),
        ("Dallas, TX, United States of America", "TX", CODE),
        ("Dallas, TX, U.S.A.", "TX", CODE),
        ("1 Elm St\\Tulsa OK 74103", "OK", ZIP),  # backslash-separated lines
        # multi-word names: the longest name in the state position wins
        ("New York, New York", "NY", NAME),
        ("Charleston, West Virginia", "WV", NAME),
        ("Richmond, Virginia", "VA", NAME),
        ("Raleigh, North Carolina", "NC", NAME),
        ("Trenton New Jersey", "NJ", NAME),
        ("Santa Fe, New Mexico", "NM", NAME),
        ("Charleston, W. Va. 25301", "WV", ZIP),
        ("Tulsa, Okla. 74103", "OK", ZIP),
        ("St. Louis, Mo.", "MO", CODE),
        # DC spellings
        ("Washington, D.C.", "DC", CODE),
        ("Washington DC", "DC", NAME),  # "WASHINGTON DC" is read as one name
        ("District of Columbia", "DC", NAME),
        ("Washington D C 20001", "DC", ZIP),
        # city names that contain state names: only the state position counts
        ("Kansas City, MO 64105", "MO", ZIP),
        ("Kansas City MO 64105", "MO", ZIP),
        ("Virginia Beach, VA", "VA", CODE),
        ("Indiana, PA 15701", "PA", ZIP),
        ("Nevada, MO", "MO", CODE),
        ("Washington", "WA", NAME),
        ("Atlanta, Georgia", "GA", NAME),  # a US state name wins over the country Georgia
        # ZIP alone
        ("74103", "OK", ZIP),
        ("74103-1234", "OK", ZIP),
        ("00501", "NY", ZIP),
        # odd whitespace, NULs, padding
        ("  Dallas,\tTX 75201 \x00\x00", "TX", ZIP),
        ("Dallas TX 75201 USA\x00 ", "TX", ZIP),
        ("1 Elm St\n\n\nTulsa, OK\n", "OK", CODE),
        ("Sainte-Geneviève, MO", "MO", CODE),
    ],
)
def test_us_addresses(text: str, state: str, basis: FindingBasis) -> None:
    found = parse_address(text)
    assert (found.state, found.basis, found.foreign, found.conflict) == (state, basis, False, False)


@pytest.mark.parametrize(
    ("text", "military"),
    [
        ("APO AE 09012", True),
        ("FPO AP 96601", True),
        ("DPO AA 34001", True),
        ("PSC 123 Box 4, APO AE 09012", True),
        ("Unit 2050 Box 4190\nAPO AP 96278", True),
        ("^^APO^AE^09012", True),
        ("Armed Forces Europe", True),
        ("Majuro, MH 96960", False),
        ("Koror, Palau", False),
        ("Pohnpei, Federated States of Micronesia", False),
        ("Toronto ON M5V 2T6 Canada", False),
        ("Toronto ON M5V 2T6", False),  # postal code alone says Canada
        ("Toronto, Ontario", False),
        ("Toronto, ON", False),
        ("^^Vancouver^BC^V6B 1A1^CAN", False),
        ("123 Main^Vancouver^BC^V6B 1A1^CA", False),  # CA after a foreign postal code: Canada
        ("^^Toronto^ON^^CAN", False),
        ("^^Mexico City^^^Mexico", False),
        ("Mexico", False),
        ("London, United Kingdom", False),
        ("Manchester, England", False),
        ("Paris, France", False),
        ("Seoul, South Korea", False),
        ("Road Town, British Virgin Islands", False),  # not the US Virgin Islands
        ("Apia, Samoa", False),  # not American Samoa
    ],
)
def test_outside_us_licensing(text: str, military: bool) -> None:
    found = parse_address(text)
    assert (found.state, found.basis, found.foreign, found.conflict) == (None, NONE, True, False)
    assert found.military is military


@pytest.mark.parametrize(
    ("text", "detail"),
    [
        ("1 Elm St, Tulsa, OK 74103", "ZIP 74103 is in OK (state code OK agrees)"),
        ("74103", "ZIP 74103 is in OK"),
        ("Dallas TX", "state code TX"),
        ("Tulsa, Oklahoma", "state name OKLAHOMA (OK)"),
        ("Toronto ON M5V 2T6 Canada", "foreign address (country CANADA)"),
        ("APO AE 09012", "military address (APO AE)"),
        ("Dallas, TX 74103", "state code TX and ZIP 74103 (OK) disagree"),
        ("Tulsa, OK 00000", "state code OK (ZIP 00000 not known)"),
        ("Box 9, Nowhere 00000", "ZIP 00000 is not a known US ZIP code"),
        ("^^^^^USA", "US address (country USA) without a state or ZIP"),
    ],
)
def test_detail_text(text: str, detail: str) -> None:
    assert parse_address(text).detail == detail


@pytest.mark.parametrize(
    "text",
    [
        "Dallas, TX 74103",  # state TX, ZIP in OK
        "^^Dallas^TX^74103^USA",
        "^^Sacramento^CA^95814^CA",  # US state and ZIP but country component Canada
        "Dallas, TX 75201, Canada",
        "Tulsa AE 74103",  # military code with an OK ZIP
        "^^Dallas^TX^75201~^^Tulsa^OK^74103",  # repetitions naming two states
        "^^Dallas^TX^75201~^^Toronto^ON^^CAN",
        "Nevada, 64772",  # free text: city before a lone ZIP is read as the state
    ],
)
def test_self_contradicting_addresses_give_no_state(text: str) -> None:
    found = parse_address(text)
    assert (found.state, found.basis, found.conflict, found.foreign) == (None, NONE, True, False)


@pytest.mark.parametrize(
    "text",
    [
        None,
        "",
        "   ",
        "\x00\x00",
        "^^^^",
        "~~",
        "garbage!!",
        "N/A",
        "Unknown",
        "123 Main St",
        "123 Oak Ct",  # Court, not Connecticut
        "55 Long Wy",  # Way, not Wyoming
        "PO Box 12345",  # a box number, not a ZIP
        "Kansas City",  # a city named like a state is not in the state position
        "Tulsa, OK, Tulsa County",
        "Box 9, Nowhere 00000",  # unknown ZIP
        "Lyon FR",  # two-letter country codes are not read from free text
        12345,
    ],
)
def test_no_state(text: object) -> None:
    found = parse_address(text)  # type: ignore[arg-type]
    assert (found.state, found.basis, found.foreign, found.conflict) == (None, NONE, False, False)


@pytest.mark.parametrize(
    ("text", "state"),
    [
        ("123 Main St Hartford CT 06103", "CT"),  # with a ZIP the suffix guard does not apply
        ("Hartford, CT", "CT"),  # a second line makes CT the state position
        ("Tulsa, OK 00000", "OK"),  # unknown ZIP: the state code still counts
    ],
)
def test_boundaries_of_the_guards(text: str, state: str) -> None:
    assert parse_address(text).state == state


@pytest.mark.parametrize(
    ("text", "state", "foreign"),
    [
        ("TX", "TX", False),
        ("tx ", "TX", False),
        ("Texas", "TX", False),
        ("West Virginia", "WV", False),
        ("District of Columbia", "DC", False),
        ("Puerto Rico", "PR", False),
        ("US-TX", "TX", False),
        ("us-dc", "DC", False),
        ("Tulsa, OK 74103", "OK", False),
        ("CA", "CA", False),  # a region code CA is California
        ("CA-ON", None, True),
        ("Ontario", None, True),
        ("Canada", None, True),
        ("US-AE", None, True),
        ("AE", None, True),
        ("PW", None, True),
        ("US-ZZ", None, False),
        ("XX-ON", None, False),
        ("Kansas City", None, False),
        ("", None, False),
        (None, None, False),
    ],
)
def test_parse_region(text: str | None, state: str | None, foreign: bool) -> None:
    found = parse_region(text)
    assert (found.state, found.foreign) == (state, foreign)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("USA", False),
        ("US", False),
        ("U.S.A.", False),
        ("united states", False),
        ("United States of America", False),
        ("Puerto Rico", False),
        ("PRI", False),
        ("GU", False),
        ("UM", False),
        ("Canada", True),
        ("CAN", True),
        ("CA", True),
        ("Mexico", True),
        ("MEX", True),
        ("United Kingdom", True),
        ("UK", True),
        ("England", True),
        ("DEU", True),
        ("Palau", True),
        ("Micronesia", True),
        ("Marshall Islands", True),
        ("Côte d'Ivoire", True),
        ("Georgia", None),  # a US state and a country
        ("Texas", None),
        ("TX", None),
        ("xyz", None),
        ("", None),
        ("  \x00", None),
        (None, None),
        (840, None),
    ],
)
def test_is_foreign_country(text: object, expected: bool | None) -> None:
    assert is_foreign_country(text) is expected  # type: ignore[arg-type]


def test_finding_is_frozen_and_basis_values() -> None:
    found = parse_address("Dallas TX")
    assert isinstance(found, StateFinding)
    with pytest.raises(AttributeError):
        found.state = "OK"  # type: ignore[misc]
    assert FindingBasis.values() == ["zip", "state_code", "state_name", "none"]


ADDRESS_PIECES = st.sampled_from(
    [
        "^",
        "~",
        ",",
        "\n",
        "\r\n",
        "\\",
        " ",
        ".",
        "-",
        "\x00",
        "TX",
        "OK",
        "CA",
        "AE",
        "MH",
        "ON",
        "Tulsa",
        "Kansas City",
        "New",
        "York",
        "West",
        "Virginia",
        "D.C.",
        "USA",
        "Canada",
        "CAN",
        "APO",
        "Box",
        "74103",
        "1234",
        "09012",
        "00000",
        "M5V",
        "2T6",
        "US-TX",
        "Puerto Rico",
        "Georgia",
    ]
)


@settings(max_examples=500, deadline=None)
@given(
    st.one_of(
        st.text(),
        st.lists(ADDRESS_PIECES, max_size=14).map(" ".join),
        st.lists(ADDRESS_PIECES, max_size=14).map("".join),
    )
)
def test_any_text_never_raises(text: str) -> None:
    for parse in (parse_address, parse_region):
        found = parse(text)
        assert found.state is None or found.state in LICENSING_JURISDICTIONS
        assert found.state is None or not (found.foreign or found.conflict)
        assert (found.state is None) == (found.basis is NONE)
    assert is_foreign_country(text) in (True, False, None)
