"""Logging set-up that keeps PHI out of logs at INFO and above.

The router's own messages name work by UIDs, accession numbers and AE titles only. Third-party
libraries may quote data set values: pydicom's warnings about invalid values print them (a
malformed PatientBirthDate, a name that fails to decode). So:

- Python warnings are routed into logging and reduced to their category and origin;
- the ``pydicom`` logger is silenced below ERROR, and its ERROR records are reduced the same way;
- ``pynetdicom`` logs association events at WARNING and above only (its DEBUG dumps may hold
  identifiers); ``-v`` turns DEBUG on for diagnosis, still without data set dumps.

Only the CLI calls :func:`configure_logging`.
"""

from __future__ import annotations

import logging
import sys
import warnings

_REDACTED_SOURCES = ("pydicom", "py.warnings")
_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class PhiRedactingFilter(logging.Filter):
    """Replaces the text of records from libraries that may quote data set values."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.startswith(_REDACTED_SOURCES):
            record.msg = f"{record.name} {record.levelname.lower()} at {record.module}:{record.lineno} (text withheld: may quote data set values)"
            record.args = None
            record.exc_info = None
            record.exc_text = None
        return True


def _showwarning(message: warnings.WarningMessage | Warning | str, category: type[Warning], filename: str, lineno: int, file: object = None, line: str | None = None) -> None:
    logging.getLogger("py.warnings").warning("%s at %s:%s", category.__name__, filename, lineno)


def configure_logging(level: str = "INFO", *, verbose: bool = False) -> None:
    """Send log records to stderr with the PHI filter installed. Idempotent."""
    root = logging.getLogger()
    chosen = logging.DEBUG if verbose else getattr(logging, level.upper(), logging.INFO)
    if not any(getattr(handler, "_router_handler", False) for handler in root.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(_FORMAT))
        handler.addFilter(PhiRedactingFilter())
        handler._router_handler = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    root.setLevel(chosen)
    install_library_guards(verbose=verbose)


def install_library_guards(*, verbose: bool = False) -> None:
    """Quiet and redact third-party loggers and warnings (safe to call more than once)."""
    logging.getLogger("pydicom").setLevel(logging.ERROR)
    logging.getLogger("alembic").setLevel(logging.DEBUG if verbose else logging.WARNING)
    logging.getLogger("pynetdicom").setLevel(logging.DEBUG if verbose else logging.WARNING)
    for handler in logging.getLogger().handlers:
        if not any(isinstance(item, PhiRedactingFilter) for item in handler.filters):
            handler.addFilter(PhiRedactingFilter())
    warnings.showwarning = _showwarning  # type: ignore[assignment]
    warnings.filterwarnings("ignore", module=r"pydicom(\..*)?$")
