"""``router ledger``: the professional and infrastructure ledgers (append-only)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import click

from router.cli.context import CliContext
from router.cli.ledger_export import export
from router.cli.output import (
    emit_csv,
    emit_json,
    emit_table,
    label,
    short_uid,
    shortened_caption,
    to_jsonable,
    wide_option,
)
from router.cli.roster_common import IsoDate
from router.domain.eligibility_facts import license_tag
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
    """Professional-component records: one claim line per ordered CPT code of each reported read.

    --from/--until select by date of service (the interpretation date). The table shows the
    columns that fit 80 characters and UIDs shortened to their end; --wide adds the license,
    POS, ICD-10-CM codes, charge and billing arrangement, --csv and --json every field (for
    837P service lines: `router ledger export`).
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
            + (["license", "CPT from", "POS", "ICD-10-CM", "cents", "billing", "coder review"] if wide else []),
            [
                (
                    row["id"],
                    row["kind"],
                    short_uid(row["study_instance_uid"], wide),
                    row["accession_number"],
                    row["rendering_npi"],
                    "-".join(part for part in (row["cpt_code"], *(row["modifiers"] or [row["modifier"]])) if part)
                    + (" review" if row["coder_review"] and not wide else ""),
                    row["date_of_service"],
                )
                + (
                    (
                        license_tag(row["license_state"], row["license_number"]),
                        label(row["cpt_source"]),
                        row["place_of_service"],
                        " ".join(row["diagnosis_codes"] or []) or None,
                        row["charge_cents"],
                        row["billing_arrangement"],
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


@ledger_group.command("infrastructure")
@_formats
@wide_option
@click.pass_obj
def infrastructure(
    obj: CliContext, since: dt.date | None, until: dt.date | None, as_json: bool, as_csv: bool, wide: bool
) -> None:
    """Infrastructure cost records: bytes stored and bytes forwarded, in cents.

    --from/--until select by the UTC day the record was made. --wide shows whole UIDs and the rate.
    """
    _check(since, until, as_json, as_csv)
    rows = obj.app().ledgers.infrastructure(since, until)
    if as_json:
        emit_json(rows)
    elif as_csv:
        emit_csv(rows, INFRASTRUCTURE_COLUMNS)
    elif not rows:
        click.echo("no infrastructure records" + _period(since, until))
    else:
        emit_table(
            "Infrastructure ledger (not billable to payers)",
            ["id", "recorded (UTC)", "study", "kind", "inst.", "bytes", "cents"]
            + (["cents/GiB", "note"] if wide else ["note"]),
            [
                (
                    row["id"],
                    row["recorded_at"] if wide else str(to_jsonable(row["recorded_at"])).replace("T", " ").rstrip("Z"),
                    short_uid(row["study_instance_uid"], wide),
                    row["kind"],
                    row["instance_count"],
                    row["size_bytes"],
                    row["amount_cents"],
                )
                + ((row["rate_cents_per_gib"], row["note"]) if wide else (row["note"],))
                for row in rows
            ],
            wide=wide,
            caption=shortened_caption(wide),
        )


def _period(since: dt.date | None, until: dt.date | None) -> str:
    if since is None and until is None:
        return ""
    return f" from {since.isoformat() if since else 'the start'} to {until.isoformat() if until else 'today'}"


def register(cli: click.Group) -> None:
    """Add ``ledger`` (with ``ledger export``) to the root group."""
    ledger_group.add_command(export)
    cli.add_command(ledger_group)
