"""Pieces shared by the roster commands: date and destination parameters, confirmation, change reports."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable
from typing import Any, TypeVar

import click

from router.cli.context import CliContext
from router.cli.output import emit_json
from router.errors import ValidationError
from router.services.roster import UNSET, Destination, RosterChange, RosterService, parse_destination

F = TypeVar("F", bound=Callable[..., Any])

_ISO_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")

#: Typed to clear an optional value (``--spl none``).
CLEAR_WORD = "none"


class IsoDate(click.ParamType):
    """A calendar date written ``YYYY-MM-DD``; with ``clearable``, ``none`` is passed through."""

    name = "date"

    def __init__(self, clearable: bool = False) -> None:
        self.clearable = clearable

    def get_metavar(self, param: click.Parameter, ctx: click.Context | None = None) -> str:
        return "YYYY-MM-DD|none" if self.clearable else "YYYY-MM-DD"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, dt.date) or value is None:
            return value
        text = str(value).strip()
        if self.clearable and text.lower() == CLEAR_WORD:
            return CLEAR_WORD
        try:
            if not _ISO_DATE.match(text):
                raise ValueError(text)
            return dt.date.fromisoformat(text)
        except ValueError:
            self.fail(f"{text!r} is not a date in YYYY-MM-DD form", param, ctx)


class DestinationType(click.ParamType):
    """A C-STORE destination written ``AE@host:port``."""

    name = "AE@host:port"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, Destination):
            return value
        try:
            return parse_destination(str(value))
        except ValidationError as exc:
            self.fail(str(exc), param, ctx)


def field(value: Any) -> Any:
    """An option value for a partial update: not given -> ``UNSET``; ``none`` -> ``None``."""
    if value is None:
        return UNSET
    if isinstance(value, str) and value.strip().lower() == CLEAR_WORD:
        return None
    return value


def json_option(func: F) -> F:
    """``--json``: print one JSON document on stdout."""
    return click.option("--json", "as_json", is_flag=True, help="Print one JSON document on stdout.")(func)


def yes_option(func: F) -> F:
    """``--yes``: skip the confirmation question (for scripts)."""
    return click.option("--yes", "-y", "yes", is_flag=True, help="Do not ask for confirmation.")(func)


def confirm(yes: bool, question: str) -> None:
    """Ask ``question`` on stderr unless ``yes``; a "no" (or end of input) aborts with exit 1."""
    if not yes:
        click.confirm(question, abort=True, err=True)


def roster(obj: CliContext) -> RosterService:
    """The roster service of this invocation."""
    return obj.app().roster


def report(change: RosterChange, as_json: bool, done: str, unchanged: str | None = None) -> None:
    """Print a change: JSON (record plus ``rerouted``), or one confirmation line and one line per re-routed study.

    A change that committed but whose re-evaluation failed is reported, then a warning goes to
    stderr and the exit status is 1 (held studies need the admin's attention).
    """
    if as_json:
        emit_json(change.to_json())
    else:
        click.echo(done if change.changed or unchanged is None else unchanged)
        for item in change.rerouted:
            click.echo(item.describe())
    if change.reevaluation_error:
        click.echo(
            f"warning: change saved, but studies were not re-evaluated: {change.reevaluation_error}; run `router studies recheck` (a running server rechecks every routing.recheck_interval seconds)",
            err=True,
        )
        click.get_current_context().exit(1)


def yes_no(value: object) -> str | None:
    """``yes``/``no`` for a boolean (``None`` stays ``None``) in tables."""
    if value is None:
        return None
    return "yes" if value else "no"


def license_status_text(lic: dict[str, Any]) -> str:
    """``suspended since 2026-10-02``, ``surrendered in lieu of discipline``, ``active``."""
    status = str(getattr(lic["status"], "value", lic["status"]))
    if lic["in_lieu_of_discipline"]:
        status += " in lieu of discipline"
    return f"{status} since {lic['status_since']}" if lic["status_since"] else status
