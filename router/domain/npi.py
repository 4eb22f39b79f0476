"""National Provider Identifier (NPI) validation.

The NPI is the HIPAA standard unique health identifier for health care providers
(45 CFR 162.406). It is ten digits: nine identifier digits and a check digit. The first
digit is 1 or 2 (the ranges CMS enumerates from). The check digit is the Luhn (ISO/IEC 7812)
check digit computed over the card-issuer prefix ``80840`` followed by the first nine digits;
CMS gives the shortcut of adding the constant 24 (the contribution of ``80840``) to the Luhn
sum of the nine digits alone (CMS, "Requirements for National Provider Identifier (NPI) and
NPI Enumerator Check Digit Calculation", worked example: ``123456789`` -> check digit 3).

An NPI identifies a provider, not a patient, so it may appear in error messages.
"""

from __future__ import annotations

import re

from router.errors import ValidationError

_NINE_DIGITS = re.compile(r"[0-9]{9}")
_TEN_DIGITS = re.compile(r"[0-9]{10}")

#: Luhn sum contributed by the issuer prefix 80840 when it precedes the nine NPI digits
#: (CMS NPI check-digit rule). In ``80840`` + nine digits + check digit the 4 is doubled and the
#: 8s are not: 8 + 0*2 + 8 + 4*2 + 0 = 24.
_PREFIX_80840_SUM = 24


def npi_check_digit(first_nine: str) -> int:
    """Return the NPI check digit for the nine identifier digits.

    Parameters
    ----------
    first_nine : str
        Exactly nine ASCII digits (the NPI without its last digit).

    Returns
    -------
    int
        The check digit, 0-9: the Luhn check digit of ``"80840" + first_nine``, computed as
        CMS describes (double every other digit starting from the rightmost, sum the digits of
        the products and the undoubled digits, add 24 for the prefix, subtract from the next
        multiple of ten).

    Raises
    ------
    ValidationError
        If ``first_nine`` is not nine ASCII digits.
    """
    if not isinstance(first_nine, str) or not _NINE_DIGITS.fullmatch(first_nine):
        raise ValidationError("NPI check digit needs exactly 9 digits")
    total = _PREFIX_80840_SUM
    # The rightmost of the nine digits is doubled (the check digit will sit to its right).
    for position, char in enumerate(reversed(first_nine)):
        digit = int(char)
        if position % 2 == 0:
            doubled = digit * 2
            total += doubled - 9 if doubled > 9 else doubled
        else:
            total += digit
    return (10 - total % 10) % 10


def validate_npi(value: str) -> str:
    """Return the normalized NPI or raise with the reason it is invalid.

    Parameters
    ----------
    value : str
        The NPI as typed or stored; surrounding whitespace is ignored.

    Returns
    -------
    str
        The 10-digit NPI.

    Raises
    ------
    ValidationError
        With a one-line reason: ``NPI must be 10 digits``, ``NPI must start with 1 or 2``,
        or ``NPI 1234567890 fails the check digit (expected 3)``
        (45 CFR 162.406; CMS NPI check-digit rule).
    """
    text = value.strip() if isinstance(value, str) else ""
    if not _TEN_DIGITS.fullmatch(text):
        raise ValidationError("NPI must be 10 digits")
    if text[0] not in "12":
        raise ValidationError("NPI must start with 1 or 2")
    expected = npi_check_digit(text[:9])
    if int(text[9]) != expected:
        raise ValidationError(f"NPI {text} fails the check digit (expected {expected})")
    return text


def is_valid_npi(value: str) -> bool:
    """Return whether ``value`` is a valid NPI (see :func:`validate_npi`); never raises."""
    try:
        validate_npi(value)
    except ValidationError:
        return False
    return True
