"""Output helpers for the CLI: JSON documents on stdout, tables for people, one-line errors.

Only the CLI prints. ``--json`` prints exactly one JSON document (a list is an array of
objects; missing values are ``null``; times are ISO-8601 UTC with ``Z``).
"""

from __future__ import annotations

import csv
import io
import json
import os
import sys
from collections.abc import Iterable, Sequence
from typing import Any

import click
from rich import box
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


#: Characters of a UID kept in a table for people (its end: the start is the organisation's
#: root, the same for every study of a site). ``--wide`` shows UIDs whole.
SHORT_UID_CHARS = 12
_ELLIPSIS = "…"


def short_uid(uid: str | None, wide: bool = False) -> str | None:
    """``uid`` for a table: whole with ``wide`` or when short, else ``…`` and its last 12 characters."""
    if uid is None or wide or len(uid) <= SHORT_UID_CHARS + 1:
        return uid
    return _ELLIPSIS + uid[-SHORT_UID_CHARS:]


def shortened_uid_suffix(text: str) -> str | None:
    """The UID end of a shortened UID as tables show it (``…`` or ``...`` then its last
    characters), or ``None`` when ``text`` is not one."""
    for mark in (_ELLIPSIS, "..."):
        if text.startswith(mark) and len(text) > len(mark):
            return text[len(mark) :]
    return None


def label(value: str | None) -> str | None:
    """An enum value for people: ``no_eligible_radiologist`` -> ``no eligible radiologist`` (wraps
    between words in a narrow column)."""
    return value.replace("_", " ") if value else value


#: Row style of a study that needs an admin (held): stands out on a terminal.
HELD_STYLE = "bold yellow"


def emit_table(
    title: str | None,
    columns: Sequence[str],
    rows: Iterable[Sequence[Any]],
    *,
    wide: bool = False,
    row_styles: Sequence[str | None] | None = None,
    caption: str | None = None,
) -> None:
    """Print a table for people (rich), cells converted with :func:`to_jsonable` and ``-`` for None.

    Fits the terminal (``COLUMNS`` when not a terminal, else 240 columns): cells wrap between
    words, never inside one, as long as the longest words fit. ``wide`` never wraps (full UIDs);
    ``row_styles`` gives each row a rich style (``None``: plain).
    """
    console = Console(file=sys.stdout)
    if wide:
        console = Console(file=sys.stdout, width=max(console.width, 1000))
    elif not console.is_terminal and not os.environ.get("COLUMNS", "").isdigit():
        console = Console(file=sys.stdout, width=240)  # piped or captured
    texts = [["-" if cell is None else str(to_jsonable(cell)) for cell in row] for row in rows]
    # Between two columns: one space of padding and the (blank) column separator.
    widths = _fit_widths([list(columns), *texts], console.width - 2 * (len(columns) - 1))
    table = Table(
        title=title,
        caption=caption,
        show_lines=False,
        header_style="bold",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        show_edge=False,
        padding=(0, 1, 0, 0),
    )
    for column, width in zip(columns, widths, strict=True):
        table.add_column(column, overflow="fold", no_wrap=wide, width=None if wide else width)
    for index, row_texts in enumerate(texts):
        table.add_row(*row_texts, style=row_styles[index] if row_styles is not None else None)
    console.print(table)


def _fit_widths(lines: list[list[str]], available: int) -> list[int | None]:
    """Column widths (characters) that fit ``available``: each column at least its longest word,
    the rest shared in proportion to what each would need unwrapped. ``None``: natural width.

    When even the longest words do not fit, the column with the longest word gives way first (a
    long word of free text is broken; short identifiers, codes and dates never are).
    """
    count = len(lines[0])
    longest = [max(len(row[i]) for row in lines) for i in range(count)]
    if sum(longest) <= available:
        return [None] * count
    words = [max((len(word) for row in lines for word in row[i].split()), default=1) for i in range(count)]
    while sum(words) > available and max(words) > 1:
        words[words.index(max(words))] -= 1
    spare = max(available - sum(words), 0)
    wants = [high - low for high, low in zip(longest, words, strict=True)]
    total = sum(wants) or 1
    widths = [low + spare * want // total for low, want in zip(words, wants, strict=True)]
    return list(widths)


def emit_notes(title: str, notes: Sequence[tuple[str, str]]) -> None:
    """Print ``key: text`` notes under a title, wrapped between words to the terminal width."""
    if not notes:
        return
    console = Console(file=sys.stdout, highlight=False)
    if not console.is_terminal and not os.environ.get("COLUMNS", "").isdigit():
        console = Console(file=sys.stdout, width=240, highlight=False)
    console.print(title, style="bold", markup=False)
    for key, text in notes:
        console.print(f"  {key}: {text}", markup=False)


def shortened_caption(wide: bool) -> str | None:
    """The caption of a table whose UIDs were shortened (``None`` with ``wide``)."""
    return None if wide else f"UIDs shortened to their last {SHORT_UID_CHARS} characters; --wide shows them whole"


def wide_option(function: Any) -> Any:
    """The ``--wide`` flag of a command printing UIDs in a table."""
    return click.option("--wide", is_flag=True, help="Show UIDs whole in tables (lines may pass 80 columns).")(function)


def emit_fields(title: str, fields: Sequence[tuple[str, Any]]) -> None:
    """Print ``name: value`` lines under a title."""
    click.echo(click.style(title, bold=True))
    width = max((len(name) for name, _ in fields), default=0)
    for name, value in fields:
        shown = "-" if value is None else to_jsonable(value)
        click.echo(f"  {name.ljust(width)}  {shown}")
