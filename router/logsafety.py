"""Logging set-up that keeps PHI out of logs at INFO and above.

The router's own messages name work by UIDs, accession numbers and AE titles only. Third-party
libraries may quote data set values: pydicom's warnings about invalid values print them (a
malformed PatientBirthDate, a name that fails to decode), and SQLAlchemy's errors print the
statement's parameters (which may hold an address). So:

- Python warnings are routed into logging and reduced to their category and origin (file and
  line); warnings attributed to pydicom are dropped (pydicom also logs them, see next point);
- the ``pydicom`` logger is silenced below ERROR, and its ERROR records are reduced to their
  origin the same way;
- in a logged traceback the text of an exception raised inside pydicom is withheld, and the
  ``[parameters: ...]`` part of an SQLAlchemy error is withheld (in tracebacks and messages);
- ``pynetdicom`` logs association events at WARNING and above only (its DEBUG dumps may hold
  identifiers); ``-v`` turns DEBUG on for diagnosis, still without data set dumps.

Only the CLI calls :func:`configure_logging`.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import threading
import traceback
import warnings
from typing import Any

import pydicom
from pythonjsonlogger.core import RESERVED_ATTRS
from pythonjsonlogger.json import JsonFormatter

_REDACTED_SOURCES = ("pydicom", "py.warnings")
_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
#: Set on the records :func:`_showwarning` makes: already reduced, shown as they are.
_REDUCED = "router_reduced"
_PYDICOM_DIR = os.path.dirname(os.path.abspath(pydicom.__file__)) + os.sep
#: SQLAlchemy's StatementError text: "... [SQL: ...]\n[parameters: (...)]\n(Background ...)".
_SQL_PARAMETERS = re.compile(r"\[parameters: [^\n]*")
_WITHHELD_PYDICOM = "(text withheld: raised in pydicom, may quote data set values)"
_CAUSE = "\nThe above exception was the direct cause of the following exception:\n\n"
_CONTEXT = "\nDuring handling of the above exception, another exception occurred:\n\n"


def redact_text(text: str) -> str:
    """``text`` with SQLAlchemy's ``[parameters: ...]`` replaced by ``[parameters: withheld]``."""
    return _SQL_PARAMETERS.sub("[parameters: withheld]", text) if "[parameters: " in text else text


def _raised_in_pydicom(exc: BaseException) -> bool:
    if type(exc).__module__.split(".")[0] == "pydicom":
        return True
    frames = traceback.extract_tb(exc.__traceback__)
    return bool(frames) and os.path.abspath(frames[-1].filename).startswith(_PYDICOM_DIR)


def _exception_line(exc: BaseException) -> str:
    cls = type(exc)
    name = cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"
    if _raised_in_pydicom(exc):
        return f"{name}: {_WITHHELD_PYDICOM}\n"
    try:
        text = str(exc)
    except Exception:  # noqa: BLE001 - a broken __str__ must not break logging
        text = "(text unavailable)"
    return f"{name}: {escape_controls(redact_text(text))}\n" if text else f"{name}\n"


def format_exception_safely(exc: BaseException) -> str:
    """A traceback like :func:`traceback.format_exception`, minus texts that may quote PHI.

    Frames (file, line, function, source line) are kept: they hold code, not data. The text of
    an exception raised inside pydicom is withheld (its ValueErrors quote the invalid value);
    SQLAlchemy's statement parameters are withheld.
    """
    chain: list[tuple[BaseException, str | None]] = []
    seen: set[int] = set()
    current: BaseException | None = exc
    link: str | None = None
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        chain.append((current, link))
        if current.__cause__ is not None:
            current, link = current.__cause__, _CAUSE
        elif current.__context__ is not None and not current.__suppress_context__:
            current, link = current.__context__, _CONTEXT
        else:
            current = None
    parts: list[str] = []
    for item, joined_by in reversed(chain):
        if item.__traceback__ is not None:
            parts.append("Traceback (most recent call last):\n")
            parts.extend(traceback.format_tb(item.__traceback__))
        parts.append(_exception_line(item))
        if joined_by is not None:
            parts.append(joined_by)
    return "".join(parts).rstrip("\n")


#: pynetdicom's reports of a value a peer sent that does not conform (``pynetdicom.utils``:
#: ``set_ae``, ``set_uid``; an A-ASSOCIATE-RQ's UIDs, implementation version name, AE titles):
#: they quote the value, which a misconfigured or hostile peer fills with anything (up to 64 KiB).
_PEER_VALUES = (
    re.compile(r"^(?P<head>(?:Invalid|Non-conformant) '[^']*' value )'(?P<value>.*)'(?P<tail>( - [^']*)?)$", re.DOTALL),
    # ``pynetdicom.presentation``, ``pynetdicom.pdu_primitives``: "The Transfer Syntax Name '...'
    # is non-conformant", "The Related General SOP Class UID '...' is non-conformant"
    re.compile(r"^(?P<head>The [A-Za-z ]+ )'(?P<value>.*)'(?P<tail> is non-conformant)$", re.DOTALL),
)


def withhold_peer_values(message: str) -> str:
    """``message`` with the value quoted by pynetdicom's "Invalid 'X' value '...' - reason",
    "Non-conformant 'X' value '...'" and "The X '...' is non-conformant" replaced by its length;
    other messages unchanged."""
    for pattern in _PEER_VALUES:
        match = pattern.match(message)
        if match is not None:
            return f"{match['head']}({len(match['value'])} characters withheld){match['tail']}"
    return message


class PhiRedactingFilter(logging.Filter):
    """Keeps data set values that libraries may quote out of log records.

    - records from ``pydicom`` (and raw ``py.warnings`` records not made by this module) are
      reduced to their logger, level and origin;
    - any record's traceback is formatted by :func:`format_exception_safely`;
    - SQLAlchemy parameters in a message are withheld;
    - control characters in a message are escaped (one record is one line; its traceback, if
      any, follows on lines of its own);
    - a value a peer sent, quoted by pynetdicom's reports of non-conforming values, is withheld
      (:func:`withhold_peer_values`).
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.startswith(_REDACTED_SOURCES) and not getattr(record, _REDUCED, False):
            record.msg = f"{record.name} {record.levelname.lower()} at {record.module}:{record.lineno} (text withheld: may quote data set values)"
            record.args = None
            record.exc_info = None
            record.exc_text = None
            return True
        if record.exc_info and record.exc_info[1] is not None and not getattr(record, "router_safe_exc", False):
            record.exc_text = format_exception_safely(record.exc_info[1])
            record.router_safe_exc = True
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - leave a malformed record to logging's own error path
            return True
        cleaned = escape_controls(redact_text(message))
        if record.name.startswith("pynetdicom"):
            cleaned = withhold_peer_values(cleaned)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True


#: C0 controls (but TAB) and DEL, written as escapes: a value with a line break (an accession
#: number "A1\nFAKE LINE" from a sender) cannot start a forged log line.
_CONTROL_ESCAPES = {code: f"\\x{code:02x}" for code in [*range(0x09), *range(0x0A, 0x20), 0x7F]}
_CONTROL_ESCAPES.update({0x0A: "\\n", 0x0D: "\\r"})


def uid_for_log(value: object) -> str:
    """A UID for a log line: as sent when it is digits and dots, at most 64 (PS3.5 section 9.1;
    it may still be invalid, e.g. a leading zero); otherwise only its length, since a sender can
    put any text in that field."""
    text = str(value or "")
    if not text:
        return "(none)"
    if len(text) <= 64 and all(ch in "0123456789." for ch in text):
        return text
    return f"(not a UID: {len(text)} characters)"


def escape_controls(text: str) -> str:
    """``text`` with line breaks and other control characters written as ``\\n``, ``\\x1b``..."""
    return text.translate(_CONTROL_ESCAPES)


def _showwarning(
    message: warnings.WarningMessage | Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: object = None,
    line: str | None = None,
) -> None:
    """``warnings.showwarning`` replacement: the category and origin only, never the text."""
    logging.getLogger("py.warnings").warning("%s at %s:%s", category.__name__, filename, lineno, extra={_REDUCED: True})


def configure_logging(level: str = "INFO", *, verbose: bool = False, log_format: str = "text") -> None:
    """Send log records to stderr with the PHI filter installed. Idempotent.

    ``log_format`` ``"json"`` writes one JSON object per line (``time``, ``level``, ``logger``,
    ``message``, and ``exc_info`` with the redacted traceback) for log collectors; ``"text"``
    one line per record.
    """
    root = logging.getLogger()
    chosen = logging.DEBUG if verbose else getattr(logging, level.upper(), logging.INFO)
    existing: list[logging.Handler] = [item for item in root.handlers if getattr(item, "_router_handler", False)]
    if not existing:
        handler = logging.StreamHandler(sys.stderr)
        handler.addFilter(PhiRedactingFilter())
        handler._router_handler = True  # type: ignore[attr-defined]
        root.addHandler(handler)
        existing = [handler]
    for item in existing:
        item.setFormatter(_formatter(log_format))
    root.setLevel(chosen)
    install_library_guards(verbose=verbose)


class _SafeJsonFormatter(JsonFormatter):
    """python-json-logger's formatter, with tracebacks through :func:`format_exception_safely`."""

    def formatException(self, ei: Any) -> str:
        return format_exception_safely(ei[1]) if ei and ei[1] is not None else ""


def _formatter(log_format: str) -> logging.Formatter:
    if log_format == "json":
        return _SafeJsonFormatter(
            "%(levelname)s %(name)s %(message)s",
            rename_fields={"levelname": "level", "name": "logger"},
            timestamp="time",  # ISO-8601 UTC
            reserved_attrs=[*RESERVED_ATTRS, "router_safe_exc", _REDUCED],
            json_ensure_ascii=False,
        )
    return logging.Formatter(_FORMAT)


#: pynetdicom's loggers that report a PDU or DIMSE message from the peer that could not be decoded.
_PEER_DECODING_LOGGERS = ("pynetdicom.dul", "pynetdicom.dimse", "pynetdicom.utils")


class OneLineTraceback(logging.Filter):
    """A record's traceback reduced to the exception's type, on the record's one line.

    For pynetdicom's decoding of what a peer sent: malformed input (garbage in a P-DATA-TF, a
    command set pydicom cannot parse) is the peer's fault, the association is aborted either
    way, and a traceback into pynetdicom at ERROR alarms an administrator for nothing. With
    ``--verbose`` the full traceback is logged.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[0] is not None:
            try:
                message = record.getMessage()
            except Exception:  # noqa: BLE001 - leave a malformed record to logging's own error path
                return True
            kind = record.exc_info[0].__name__
            record.msg = f"{message}: {kind}" if message and message != str(record.exc_info[1]) else kind
            record.args = None
            record.exc_info = None
            record.exc_text = None
        return True


class IdlePeerLevel(logging.Filter):
    """pynetdicom's "Network timeout reached" at WARNING, not ERROR: the peer sent nothing for
    ``network_timeout`` seconds and the association is aborted (``listener.network_timeout``;
    an idle modality or reader, not a fault of the router)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno > logging.WARNING and record.msg == "Network timeout reached":
            record.msg = "Network timeout reached: no PDU for network_timeout seconds; association aborted"
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


def install_library_guards(*, verbose: bool = False) -> None:
    """Quiet and redact third-party loggers and warnings (safe to call more than once)."""
    logging.getLogger("pydicom").setLevel(logging.ERROR)
    logging.getLogger("alembic").setLevel(logging.DEBUG if verbose else logging.WARNING)
    logging.getLogger("pynetdicom").setLevel(logging.DEBUG if verbose else logging.WARNING)
    for name in _PEER_DECODING_LOGGERS:
        peer_logger = logging.getLogger(name)
        for existing in [item for item in peer_logger.filters if isinstance(item, OneLineTraceback)]:
            peer_logger.removeFilter(existing)
        if not verbose:
            peer_logger.addFilter(OneLineTraceback())
    association_logger = logging.getLogger("pynetdicom.association")
    if not any(isinstance(item, IdlePeerLevel) for item in association_logger.filters):
        association_logger.addFilter(IdlePeerLevel())
    for handler in logging.getLogger().handlers:
        if not any(isinstance(item, PhiRedactingFilter) for item in handler.filters):
            handler.addFilter(PhiRedactingFilter())
    warnings.showwarning = _showwarning
    warnings.filterwarnings("ignore", module=r"pydicom(\..*)?$")
    # An exception that kills a thread (pynetdicom's network threads) goes through the log and
    # its filter, not straight to stderr with the exception text as it is.
    threading.excepthook = _thread_excepthook


def _thread_excepthook(args: threading.ExceptHookArgs) -> None:
    if args.exc_type is SystemExit:
        return
    name = args.thread.name if args.thread is not None else "?"
    logging.getLogger("router.threads").error(
        "thread %s stopped on an uncaught %s",
        name,
        args.exc_type.__name__,
        exc_info=(args.exc_type, args.exc_value, args.exc_traceback) if args.exc_value is not None else None,
    )


__all__ = [
    "PhiRedactingFilter",
    "configure_logging",
    "escape_controls",
    "format_exception_safely",
    "install_library_guards",
    "redact_text",
    "withhold_peer_values",
]
