"""``router ledger``: the professional and infrastructure ledgers (append-only)."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from fractions import Fraction
from typing import Any

import click

from router.cli.context import CliContext
from router.cli.output import (
    emit_csv,
    emit_json,
    emit_table,
    label,
    short_uid,
    shortened_caption,
    wide_option,
)
from router.cli.roster_common import IsoDate
from router.domain.eligibility_facts import license_tag
from router.domain.infra_cost import MICROCENTS_PER_CENT, cents_for_people, parse_month
from router.errors import ValidationError
from router.services.accrual import STATEMENT_COLUMNS
from router.services.ledgers import INFRASTRUCTURE_COLUMNS, PROFESSIONAL_COLUMNS

_FORMAT = [
    click.option("--from", "since", type=IsoDate(), help="First day included (YYYY-MM-DD)."),
    click.option("--until", type=IsoDate(), help="Last day included (YYYY-MM-DD)."),
    click.option("--json", "as_json", is_flag=True, help="Print one JSON document (an array of records)."),
    click.option("--csv", "as_csv", is_flag=True, help="Print CSV with a header row."),
]


def _formats(function: Any) -> Any:
    for option in reversed(_FORMAT):
        function = option(function)
    return function


def _check(since: dt.date | None, until: dt.date | None, as_json: bool, as_csv: bool) -> None:
    if as_json and as_csv:
        raise click.UsageError("choose one of --json and --csv")
    if since is not None and until is not None and until < since:
        raise click.UsageError(f"--until {until.isoformat()} is before --from {since.isoformat()}")


@click.group("ledger")
def ledger_group() -> None:
    """Billing ledgers: professional component (claims) and infrastructure cost (never on a claim)."""


@ledger_group.command("professional")
@_formats
@wide_option
@click.pass_obj
def professional(
    obj: CliContext, since: dt.date | None, until: dt.date | None, as_json: bool, as_csv: bool, wide: bool
) -> None:
    """Professional-component records: one per CPT code of each reported read (modifier 26).

    --from/--until select by date of service (the interpretation date). The table shows the
    columns that fit 80 characters and UIDs shortened to their end; --wide shows every column
    and whole UIDs, --csv and --json every field.
    """
    _check(since, until, as_json, as_csv)
    rows = obj.app().ledgers.professional(since, until)
    if as_json:
        emit_json(rows)
    elif as_csv:
        emit_csv(rows, PROFESSIONAL_COLUMNS)
    elif not rows:
        click.echo("no professional records" + _period(since, until))
    else:
        emit_table(
            "Professional ledger (date of service = interpretation date)",
            ["id", "kind", "study", "accession", "NPI", "CPT", "DOS"]
            + (["license", "CPT from", "coder review"] if wide else []),
            [
                (
                    row["id"],
                    row["kind"],
                    short_uid(row["study_instance_uid"], wide),
                    row["accession_number"],
                    row["rendering_npi"],
                    "-".join(part for part in (row["cpt_code"], row["modifier"]) if part)
                    + (" review" if row["coder_review"] and not wide else ""),
                    row["date_of_service"],
                )
                + (
                    (
                        license_tag(row["license_state"], row["license_number"]),
                        label(row["cpt_source"]),
                        row["review_reason"] if row["coder_review"] else "",
                    )
                    if wide
                    else ()
                )
                for row in rows
            ],
            wide=wide,
            caption=shortened_caption(wide),
        )


class Month(click.ParamType):
    """A calendar month written ``YYYY-MM`` (its first day)."""

    name = "month"

    def get_metavar(self, param: click.Parameter, ctx: click.Context | None = None) -> str:
        return "YYYY-MM"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, dt.date) or value is None:
            return value
        try:
            return parse_month(str(value))
        except ValidationError as exc:
            self.fail(str(exc), param, ctx)


@ledger_group.command("infrastructure")
@_formats
@click.option("--month", type=Month(), help="Only the month the cost belongs to (YYYY-MM).")
@click.option(
    "--by",
    type=click.Choice(["facility"]),
    help="A statement: totals per facility/client per month, rounded once per statement.",
)
@wide_option
@click.pass_obj
def infrastructure(
    obj: CliContext,
    since: dt.date | None,
    until: dt.date | None,
    as_json: bool,
    as_csv: bool,
    month: dt.date | None,
    by: str | None,
    wide: bool,
) -> None:
    """Infrastructure cost (never on a claim): storage per GiB-month, transmission per GiB.

    Records: storage accrued per study per month held (`router ledger accrue`), bytes forwarded
    per send; each is attributed to the facility (client) the study came from, or its calling
    AE title when unregistered. Amounts are exact: cents with 4 decimals here, 6 in --json and
    --csv; nothing is rounded per record. --from/--until select by the UTC day a record was
    made, --month by the month its cost belongs to. --by facility prints the statement: per
    client per month, storage and transmission totals and the total rounded half up once
    (exact totals and the rounding in --json/--csv). --wide shows whole UIDs, rate and note.
    """
    _check(since, until, as_json, as_csv)
    app = obj.app()
    if by == "facility":
        if since is not None or until is not None:
            raise click.UsageError("--by facility selects by --month, not --from/--until")
        _statement(app.accrual.statement(month), month, as_json, as_csv)
        return
    rows = app.ledgers.infrastructure(since, until, month)
    if as_json:
        emit_json(rows)
    elif as_csv:
        emit_csv(rows, INFRASTRUCTURE_COLUMNS)
    elif not rows:
        click.echo("no infrastructure records" + (f" for {month:%Y-%m}" if month else _period(since, until)))
    else:
        emit_table(
            "Infrastructure ledger (not billable to payers; cents, exact)",
            ["id", "month", "client", "study", "kind", "bytes", "cents"]
            + (["recorded (UTC)", "GiB-months or GiB", "cents per unit", "note"] if wide else []),
            [
                (
                    row["id"],
                    row["month"],
                    row["client_ae_title"] or "?",
                    short_uid(row["study_instance_uid"], wide),
                    row["kind"],
                    row["size_bytes"],
                    _cents(row["amount_cents"]),
                )
                + (
                    (
                        row["recorded_at"],
                        f"{Decimal(row['quantity']) / Decimal(row['unit_quantity']):.6f}",
                        f"{row['rate_cents']}{_PER[row['basis']]}",
                        row["note"],
                    )
                    if wide
                    else ()
                )
                for row in rows
            ],
            wide=wide,
            caption=shortened_caption(wide),
        )


#: What a record's rate is per, by basis (a ``recorded`` row: the whole cents per GiB charged then).
_PER = {"per_gib": "/GiB", "per_gib_month": "/GiB-month", "recorded": "/GiB (recorded)"}


def _cents(text: str) -> str:
    """Cents as decimal text (six decimals) to four for people, never a misleading 0."""
    return cents_for_people(Fraction(text) * MICROCENTS_PER_CENT)


def _statement(lines: list[dict[str, Any]], month: dt.date | None, as_json: bool, as_csv: bool) -> None:
    if as_json:
        emit_json(lines)
    elif as_csv:
        emit_csv(lines, STATEMENT_COLUMNS)
    elif not lines:
        click.echo("no infrastructure records" + (f" for {month:%Y-%m}" if month else ""))
    else:
        emit_table(
            "Infrastructure statement per client and month (cents; total rounded half up once)",
            ["month", "client", "name", "storage", "transmission", "exact total", "total"],
            [
                (
                    line["month"],
                    line["client_ae_title"] or "?",
                    line["client_name"],
                    _cents(line["storage_cents_exact"]),
                    _cents(line["transmission_cents_exact"]),
                    _cents(line["total_cents_exact"]),
                    line["total_cents"],
                )
                for line in lines
            ],
        )


@ledger_group.command("accrue")
@click.option("--through", type=Month(), help="Last month to accrue (YYYY-MM); default: last month (UTC).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document: months looked at, records written.")
@click.pass_obj
def accrue(obj: CliContext, through: dt.date | None, as_json: bool) -> None:
    """Accrue storage cost for whole months: one record per study per month held.

    GiB-months prorated by the UTC days each instance was held in the month, at
    [billing] storage_cents_per_gib_month. Idempotent: a month already accrued gets nothing
    new, so running it twice, or on several nodes, is safe. `router serve` runs it too.
    """
    report = obj.app().accrual.accrue(through)
    if as_json:
        emit_json(report.to_json())
    elif not report.months:
        click.echo(f"nothing new to accrue through {report.through:%Y-%m}")
    else:
        first, last = report.months[0], report.months[-1]
        click.echo(f"accrued {report.written} storage record(s) for {first:%Y-%m} to {last:%Y-%m}")


def _period(since: dt.date | None, until: dt.date | None) -> str:
    if since is None and until is None:
        return ""
    return f" from {since.isoformat() if since else 'the start'} to {until.isoformat() if until else 'today'}"


def register(cli: click.Group) -> None:
    """Add ``ledger`` to the root group."""
    cli.add_command(ledger_group)
