"""Exceptions raised by the router's library code.

The CLI turns every :class:`RouterError` into one readable line and a non-zero exit status;
anything else is a bug and is allowed to surface.
"""

from __future__ import annotations


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message, or ``""``.

    For a SQLAlchemy DBAPI error, the driver's own error (``exc.orig``): SQLAlchemy's wrapper
    adds the statement, and its parameters may hold PHI.
    """
    text = str(getattr(exc, "orig", None) or exc).strip()
    return text.splitlines()[0] if text else ""


def database_error(exc: BaseException) -> str:
    """``"<driver exception type>: <first line>"`` of a database error, at most about 250
    characters: the driver's own error (``exc.orig``) when SQLAlchemy wrapped one, never the
    statement or its parameters (which may hold PHI)."""
    return f"{type(getattr(exc, 'orig', None) or exc).__name__}: {first_line(exc)[:200]}"


class RouterError(Exception):
    """Base class of every error the router raises on purpose."""


class ConfigError(RouterError):
    """The configuration file or a setting in it is invalid.

    Attributes
    ----------
    key : str
        Dotted name of the offending key, e.g. ``listener.port``.
    """

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key


class ValidationError(RouterError):
    """A value given by a user or a data file is not acceptable (bad NPI, unknown state...)."""


class NotFoundError(RouterError):
    """A referenced record (radiologist, license, facility, study...) does not exist."""


class ConflictError(RouterError):
    """The change would contradict existing records (duplicate NPI, study already completed...)."""


class IneligibleError(RouterError):
    """A radiologist may not take or complete a read; the message carries the exact reason."""


class ArchiveError(RouterError):
    """The archive could not durably store or read a file (maps to C-STORE status 0xA700)."""


class IndexWriteError(RouterError):
    """The database could not record an instance (maps to C-STORE status 0xA701)."""


class DatabaseUnavailable(RouterError):
    """The configured database cannot be used: bad URL, missing driver, no server, no file."""


class DataFileError(RouterError):
    """A dated data file under ``config/`` (IMLC membership, CPT map) is malformed."""
