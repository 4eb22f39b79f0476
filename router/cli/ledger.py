"""``router ledger``: the professional and infrastructure ledgers (append-only)."""

from __future__ import annotations

import datetime as dt

import click

from router.cli.context import CliContext
from router.cli.output import emit_csv, emit_json, emit_table
from router.cli.roster_common import IsoDate
from router.domain.eligibility_facts import license_tag
from router.services.ledgers import INFRASTRUCTURE_COLUMNS, PROFESSIONAL_COLUMNS

_FORMAT = [
    click.option("--from", "since", type=IsoDate(), help="First day included (YYYY-MM-DD)."),
    click.option("--until", type=IsoDate(), help="Last day included (YYYY-MM-DD)."),
    click.option("--json", "as_json", is_flag=True, help="Print one JSON document (an array of records)."),
    click.option("--csv", "as_csv", is_flag=True, help="Print CSV with a header row."),
]


def _formats(function):  # type: ignore[no-untyped-def]
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
@click.pass_obj
def professional(obj: CliContext, since: dt.date | None, until: dt.date | None, as_json: bool, as_csv: bool) -> None:
    """Professional-component records: one per CPT code of each reported read (modifier 26).

    --from/--until select by date of service (the interpretation date).
    """
    _check(since, until, as_json, as_csv)
    rows = obj.app().ledgers.professional(since, until)
    if as_json:
        emit_json(rows)
    elif as_csv:
        emit_csv(rows, PROFESSIONAL_COLUMNS)
    else:
        emit_table(
            "Professional ledger (date of service = interpretation date)",
            ["id", "kind", "study", "accession", "NPI", "license", "CPT", "mod", "source", "review", "DOS"],
            [
                (
                    row["id"],
                    row["kind"],
                    row["study_instance_uid"],
                    row["accession_number"],
                    row["rendering_npi"],
                    license_tag(row["license_state"], row["license_number"]),
                    row["cpt_code"],
                    row["modifier"],
                    row["cpt_source"],
                    row["review_reason"] if row["coder_review"] else "",
                    row["date_of_service"],
                )
                for row in rows
            ],
        )


@ledger_group.command("infrastructure")
@_formats
@click.pass_obj
def infrastructure(obj: CliContext, since: dt.date | None, until: dt.date | None, as_json: bool, as_csv: bool) -> None:
    """Infrastructure cost records: bytes stored and bytes forwarded, in cents.

    --from/--until select by the UTC day the record was made.
    """
    _check(since, until, as_json, as_csv)
    rows = obj.app().ledgers.infrastructure(since, until)
    if as_json:
        emit_json(rows)
    elif as_csv:
        emit_csv(rows, INFRASTRUCTURE_COLUMNS)
    else:
        emit_table(
            "Infrastructure ledger (not billable to payers)",
            ["id", "recorded", "study", "kind", "instances", "bytes", "cents/GiB", "cents", "note"],
            [
                (
                    row["id"],
                    row["recorded_at"],
                    row["study_instance_uid"],
                    row["kind"],
                    row["instance_count"],
                    row["size_bytes"],
                    row["rate_cents_per_gib"],
                    row["amount_cents"],
                    row["note"],
                )
                for row in rows
            ],
        )


def register(cli: click.Group) -> None:
    """Add ``ledger`` to the root group."""
    cli.add_command(ledger_group)
