"""``router ledger export``: claim lines as CSV, or 837P service lines (X12 loop 2400) by arrangement."""

from __future__ import annotations

import datetime as dt

import click

from router.cli.context import CliContext
from router.cli.output import emit_csv
from router.cli.roster_common import IsoDate
from router.services.claim_export import claim_export
from router.services.ledgers import PROFESSIONAL_COLUMNS

FORMATS = ("csv", "x12-837p-lines")


@click.command("export")
@click.option("--format", "fmt", type=click.Choice(FORMATS), required=True, help="csv or x12-837p-lines.")
@click.option("--from", "since", type=IsoDate(), help="First date of service included (YYYY-MM-DD).")
@click.option("--until", type=IsoDate(), help="Last date of service included (YYYY-MM-DD).")
@click.pass_obj
def export(obj: CliContext, fmt: str, since: dt.date | None, until: dt.date | None) -> None:
    """Export professional lines for a billing office, selected by date of service.

    csv: one row per ledger record (charges and reversals) with every claim field (POS,
    ICD-10-CM codes and pointers, modifiers, referring/rendering/billing NPI, TIN, charge in
    cents...). x12-837p-lines: for each billable line the loop 2400 segments of an 837P
    (ASC X12 005010X222A1: LX, SV1, DTP*472, REF*6R, NM1*82, NM1*DK), grouped by the facility's
    billing arrangement with a '#' header per group; not a full interchange. Lines needing
    coder review, reversals and lines of 'none' facilities are left out and listed on stderr.
    """
    if since is not None and until is not None and until < since:
        raise click.UsageError(f"--until {until.isoformat()} is before --from {since.isoformat()}")
    result = claim_export(obj.app().ledgers, since, until)
    if fmt == "csv":
        emit_csv(result.csv_rows(), PROFESSIONAL_COLUMNS)
        return
    for line in result.x12_lines():
        click.echo(line)
    for ledger_id, reason in result.excluded:
        click.echo(f"left out: line {ledger_id}: {reason}", err=True)
    for warning in result.warnings():
        click.echo(f"warning: {warning}", err=True)
