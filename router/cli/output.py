"""Output helpers for the CLI: JSON documents on stdout, tables for people, one-line errors.

Only the CLI prints. ``--json`` prints exactly one JSON document (a list is an array of
objects; missing values are ``null``; times are ISO-8601 UTC with ``Z``).
"""

from __future__ import annotations

import csv
import io
import json
import sys
from collections.abc import Iterable, Sequence
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from router.services.audit_log import jsonable

#: Dates, datetimes (ISO UTC ``Z``), enums, tuples and sets to JSON-ready values.
to_jsonable = jsonable


def emit_json(document: Any) -> None:
    """Print one JSON document to stdout."""
    click.echo(json.dumps(to_jsonable(document), indent=2, ensure_ascii=False))


def emit_csv(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> None:
    """Print rows as CSV with a header row (empty cells for missing values)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({key: ("" if value is None else to_jsonable(value)) for key, value in row.items()})
    click.echo(buffer.getvalue(), nl=False)


def emit_table(title: str | None, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    """Print a table for people (rich), cells converted with :func:`to_jsonable` and ``-`` for None."""
    table = Table(title=title, show_lines=False, header_style="bold")
    for column in columns:
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*["-" if cell is None else str(to_jsonable(cell)) for cell in row])
    console = Console(file=sys.stdout)
    if not console.is_terminal:
        console = Console(file=sys.stdout, width=240)  # piped or captured: do not wrap UIDs
    console.print(table)


def emit_fields(title: str, fields: Sequence[tuple[str, Any]]) -> None:
    """Print ``name: value`` lines under a title."""
    click.echo(click.style(title, bold=True))
    width = max((len(name) for name, _ in fields), default=0)
    for name, value in fields:
        shown = "-" if value is None else to_jsonable(value)
        click.echo(f"  {name.ljust(width)}  {shown}")
