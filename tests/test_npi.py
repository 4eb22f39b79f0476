"""NPI validation (45 CFR 162.406; CMS NPI check-digit rule).

The expected check digits come from ``python-stdnum``'s generic Luhn over ``80840`` + the nine
digits, an implementation independent of ours (which uses CMS's "add 24" shortcut), and from the
worked example in the CMS check-digit document (123456789 -> 3).
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from stdnum import luhn

from router.domain.npi import is_valid_npi, npi_check_digit, validate_npi
from router.errors import ValidationError


def oracle_check_digit(first_nine: str) -> int:
    """Luhn check digit of the ISO 7812 card number 80840 + NPI digits (stdnum)."""
    return int(luhn.calc_check_digit("80840" + first_nine))


@pytest.mark.parametrize(
    ("first_nine", "expected"),
    [
        ("123456789", 3),  # CMS worked example
        ("100000000", None),
        ("199999999", None),
        ("200000000", None),
        ("299999999", None),
        ("104567321", None),
        ("245319870", None),
        ("111111111", None),
        ("222222222", None),
    ],
)
def test_check_digit_matches_cms_and_independent_luhn(first_nine: str, expected: int | None) -> None:
    oracle = oracle_check_digit(first_nine)
    if expected is not None:
        assert oracle == expected
    assert npi_check_digit(first_nine) == oracle
    npi = first_nine + str(oracle)
    assert luhn.is_valid("80840" + npi)
    assert validate_npi(npi) == npi
    assert is_valid_npi(npi)


@given(st.sampled_from("12"), st.text(alphabet="0123456789", min_size=8, max_size=8))
def test_check_digit_agrees_with_stdnum_everywhere(first: str, rest: str) -> None:
    first_nine = first + rest
    assert npi_check_digit(first_nine) == oracle_check_digit(first_nine)


def test_exactly_one_last_digit_is_valid() -> None:
    valid = [d for d in "0123456789" if is_valid_npi("123456789" + d)]
    assert valid == ["3"]


@pytest.mark.parametrize(
    ("value", "normalized"),
    [
        ("1234567893", "1234567893"),
        ("  1234567893\n", "1234567893"),
        ("\t1234567893 ", "1234567893"),
    ],
)
def test_valid_npi_is_normalized(value: str, normalized: str) -> None:
    assert validate_npi(value) == normalized
    assert is_valid_npi(value)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("1234567890", "NPI 1234567890 fails the check digit (expected 3)"),
        ("1234567894", "NPI 1234567894 fails the check digit (expected 3)"),
        ("123456789", "NPI must be 10 digits"),  # 9 digits
        ("12345678930", "NPI must be 10 digits"),  # 11 digits
        ("12345678a3", "NPI must be 10 digits"),  # a letter
        ("A234567893", "NPI must be 10 digits"),
        ("12345 67893", "NPI must be 10 digits"),  # inner space
        ("１２３４５６７８９３", "NPI must be 10 digits"),  # full-width digits are not ASCII
        ("", "NPI must be 10 digits"),
        ("0234567893", "NPI must start with 1 or 2"),
        ("3234567893", "NPI must start with 1 or 2"),
        ("9234567893", "NPI must start with 1 or 2"),
    ],
)
def test_invalid_npi_reason(value: str, message: str) -> None:
    with pytest.raises(ValidationError) as info:
        validate_npi(value)
    assert str(info.value) == message
    assert not is_valid_npi(value)


@pytest.mark.parametrize("first", ["0", "3"])
def test_leading_digit_is_checked_even_when_the_luhn_passes(first: str) -> None:
    npi = first + "23456789" + str(oracle_check_digit(first + "23456789"))
    assert luhn.is_valid("80840" + npi)
    with pytest.raises(ValidationError, match=r"^NPI must start with 1 or 2$"):
        validate_npi(npi)


@pytest.mark.parametrize("first", ["1", "2"])
def test_both_leading_digits_accepted(first: str) -> None:
    npi = first + "23456789" + str(oracle_check_digit(first + "23456789"))
    assert validate_npi(npi) == npi


@pytest.mark.parametrize("value", [None, 1234567893])
def test_non_string_is_invalid(value: object) -> None:
    assert not is_valid_npi(value)  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match=r"^NPI must be 10 digits$"):
        validate_npi(value)  # type: ignore[arg-type]


@pytest.mark.parametrize("first_nine", ["12345678", "1234567890", "12345678a", "", " 23456789"])
def test_check_digit_needs_nine_digits(first_nine: str) -> None:
    with pytest.raises(ValidationError, match="exactly 9 digits"):
        npi_check_digit(first_nine)
