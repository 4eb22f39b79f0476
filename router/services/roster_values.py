"""Checks and parsers for roster values typed by an admin or read from a roster file.

Each raises :class:`~router.errors.ValidationError` with a one-line reason naming the value
(never patient data: roster values are about providers and facilities).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import re
import unicodedata
from dataclasses import dataclass
from enum import Enum
from typing import TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from router.config import validate_ae_title
from router.domain.enums import StrEnum
from router.domain.jurisdictions import normalize_jurisdiction
from router.errors import ConfigError, ValidationError

E = TypeVar("E", bound=StrEnum)

_ISO_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_TRUE = frozenset({"true", "yes", "1", "y", "t"})
_FALSE = frozenset({"false", "no", "0", "n", "f", ""})

#: Longest radiologist name kept (``radiologists.name`` column).
NAME_MAX_LENGTH = 200
#: Longest license number kept (``licenses.number`` column).
LICENSE_NUMBER_MAX_LENGTH = 64
#: Longest facility name kept (``facilities.name`` column).
FACILITY_NAME_MAX_LENGTH = 128


def parse_state(value: str | None, what: str = "state") -> str:
    """The two-letter code of a US licensing jurisdiction (50 states, DC, PR, GU, VI, AS, MP).

    Accepts any case and full names (``Texas``). Military AA/AE/AP and the freely associated
    states MH/FM/PW have no medical board and are refused (shared/domain/README.md).

    Raises
    ------
    ValidationError
        ``unknown state 'ZZ' (not a US licensing jurisdiction)``.
    """
    code = normalize_jurisdiction(value)
    if code is None:
        raise ValidationError(f"unknown {what} {value!r} (not a US licensing jurisdiction)")
    return code


def parse_iso_date(text: str, what: str = "date") -> dt.date:
    """A calendar date written strictly as ``YYYY-MM-DD``.

    Raises
    ------
    ValidationError
        ``bad expires '2027-6-30' (expected YYYY-MM-DD)``.
    """
    value = text.strip()
    try:
        if not _ISO_DATE.match(value):
            raise ValueError(value)
        return dt.date.fromisoformat(value)
    except ValueError as exc:
        raise ValidationError(f"bad {what} {value!r} (expected YYYY-MM-DD)") from exc


def check_validity(issued: dt.date | None, expires: dt.date | None, what: str = "license") -> None:
    """Refuse an expiry before the issue date (both days are included in the validity).

    Raises
    ------
    ValidationError
        ``license expires 2020-01-01 before it is issued 2021-01-01``.
    """
    if issued is not None and expires is not None and expires < issued:
        raise ValidationError(f"{what} expires {expires.isoformat()} before it is issued {issued.isoformat()}")


def check_not_future(day: dt.date | None, today: dt.date, what: str) -> None:
    """Refuse a date after ``today`` for facts that must already have happened.

    Raises
    ------
    ValidationError
        ``since 2027-01-01 is in the future (today is 2026-12-01)``.
    """
    if day is not None and day > today:
        raise ValidationError(f"{what} {day.isoformat()} is in the future (today is {today.isoformat()})")


def check_name(value: str, what: str = "name", max_length: int = NAME_MAX_LENGTH) -> str:
    """A stripped, non-empty name of at most ``max_length`` characters.

    Raises
    ------
    ValidationError
        If empty, too long, or holding a control character (a line break in a name would end
        up in listings, CSV exports and claims).
    """
    text = (value or "").strip()
    if not text:
        raise ValidationError(f"{what} must not be empty")
    if len(text) > max_length:
        raise ValidationError(f"{what} is longer than {max_length} characters")
    if any(ord(char) < 0x20 or 0x7F <= ord(char) < 0xA0 or unicodedata.category(char) in ("Zl", "Zp") for char in text):
        raise ValidationError(f"{what} must not contain control characters (line breaks, tabs...)")
    if "\\" in text:
        raise ValidationError(f"{what} must not contain a backslash (the DICOM value separator)")
    return text


def check_email(value: str | None) -> str | None:
    """A stripped e-mail address (``local@domain.tld``), or ``None`` for none.

    Raises
    ------
    ValidationError
        ``bad email 'jane' (expected name@domain)``.
    """
    if value is None or not value.strip():
        return None
    text = value.strip()
    if len(text) > 254 or not _EMAIL.match(text):
        raise ValidationError(f"bad email {text!r} (expected name@domain)")
    return text


def check_license_number(value: str) -> str:
    """A stripped, non-empty license number of at most 64 characters.

    Raises
    ------
    ValidationError
        If empty or too long.
    """
    return check_name(value, "license number", LICENSE_NUMBER_MAX_LENGTH)


def check_ae_title(value: str, what: str = "AE title") -> str:
    """A stripped AE title: 1-16 printable characters, no backslash (DICOM PS3.5 section 6.2, VR AE).

    Same rule as :func:`router.config.validate_ae_title`, raised as a validation error.

    Raises
    ------
    ValidationError
        ``AE title 'TOO_LONG_FOR_DICOM_X' is longer than 16 characters``, ``AE title must not
        be empty``.
    """
    try:
        return validate_ae_title(value, what)
    except ConfigError as exc:
        reason = str(exc).removeprefix(f"{exc.key}: ")
        if not reason.startswith("AE title"):
            reason = f"{what} {reason}"
        raise ValidationError(reason) from exc


def check_timezone(value: str | None) -> str | None:
    """An IANA time zone name (``America/Chicago``), or ``None``.

    Raises
    ------
    ValidationError
        ``unknown time zone 'Mars/Base'``.
    """
    if value is None or not value.strip():
        return None
    text = value.strip()
    try:
        ZoneInfo(text)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValidationError(f"unknown time zone {text!r} (expected an IANA name such as America/Chicago)") from exc
    return text


def parse_enum(enum_cls: type[E], value: str | E, what: str) -> E:
    """An enum member from its value in any case (or the member itself).

    Raises
    ------
    ValidationError
        ``bad pathway 'compact' (expected one of full, imlc, ...)``.
    """
    if isinstance(value, enum_cls):
        return value
    try:
        return enum_cls(str(value).strip().lower())
    except ValueError as exc:
        raise ValidationError(f"bad {what} {value!r} (expected one of {', '.join(enum_cls.values())})") from exc


def parse_bool(value: str, what: str) -> bool:
    """``true``/``false`` (also yes/no, 1/0; empty is false) in any case.

    Raises
    ------
    ValidationError
        ``bad requires_privileges 'maybe' (expected true or false)``.
    """
    text = value.strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValidationError(f"bad {what} {value!r} (expected true or false)")


@dataclass(frozen=True)
class Destination:
    """Where a reader's studies are forwarded: a C-STORE SCP (DICOM PS3.4 Annex B).

    Attributes
    ----------
    ae_title : str
        Called AE title, 1-16 characters.
    host : str
        Host name or IP address (IPv6 without brackets).
    port : int
        TCP port, 1-65535.
    """

    ae_title: str
    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.ae_title}@{host}:{self.port}"


def parse_destination(text: str) -> Destination:
    """Parse ``AE@host:port`` (IPv6 hosts in brackets: ``AE@[::1]:104``).

    Raises
    ------
    ValidationError
        If a part is missing, the AE title is invalid, or the port is not 1-65535.
    """
    value = text.strip()
    ae_title, at, rest = value.partition("@")
    host, colon, port_text = rest.rpartition(":")
    if not at or not colon or not ae_title or not host or not port_text:
        raise ValidationError(f"bad destination {value!r} (expected AE@host:port)")
    bracketed = host.startswith("[") and host.endswith("]")
    if bracketed:
        host = host[1:-1]
    if not _valid_host(host, bracketed):
        raise ValidationError(f"bad destination host {host!r} (expected a host name, an IPv4 address or [IPv6])")
    if not (port_text.isascii() and port_text.isdigit()) or not 1 <= int(port_text) <= 65535:
        raise ValidationError(f"bad destination port {port_text!r} (expected 1-65535)")
    return Destination(check_ae_title(ae_title, "destination AE title"), host, int(port_text))


_HOST_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")


def _valid_host(host: str, bracketed: bool) -> bool:
    """An IPv6 address (only in brackets), a dotted-quad IPv4 address, or a DNS name (RFC 1123)."""
    if bracketed:
        try:
            return isinstance(ipaddress.ip_address(host), ipaddress.IPv6Address)
        except ValueError:
            return False
    if not host or len(host) > 253 or not host.isascii():
        return False
    labels = host.rstrip(".").split(".")
    if all(label.isdigit() for label in labels):  # looks like IPv4: must be one
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            return False
        return True
    return all(_HOST_LABEL.match(label) for label in labels)


def enum_value(value: Enum | None) -> str | None:
    """The value of an enum member, or ``None``."""
    return value.value if value is not None else None
