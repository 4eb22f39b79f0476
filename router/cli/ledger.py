"""``router ledger``: the professional and infrastructure ledgers (append-only)."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from fractions import Fraction
from typing import Any

import click

from router.cli.context import CliContext, study_uid_argument
from router.cli.ledger_export import export
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
from router.domain.enums import CorrectionReason
from router.domain.infra_cost import MICROCENTS_PER_CENT, cents_for_people, parse_month
from router.errors import ValidationError
from router.services.accrual import STATEMENT_COLUMNS
from router.services.corrections import REPLACEMENT_REASONS, STUDY_VOID_REASONS, Correction
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


def _reason_choice(reasons: tuple[CorrectionReason, ...]) -> click.Choice:
    return click.Choice([reason.value.replace("_", "-") for reason in reasons])


def _reason(value: str) -> CorrectionReason:
    return CorrectionReason(value.replace("-", "_"))


def _say_correction(done: Correction) -> None:
    written = [f"reversal(s) {', '.join(map(str, done.reversal_ids))}"]
    if done.replacement_ids:
        written.append(f"replacement charge(s) {', '.join(map(str, done.replacement_ids))}")
    click.echo(f"study {done.study_instance_uid}: {done.reason.value}: wrote {' and '.join(written)}")
    if done.reason is CorrectionReason.READ_REASSIGNED:
        click.echo(
            f"the read now goes to NPI {done.rerouted_to}"
            if done.rerouted_to
            else "no other reader could take the read: the study is held (see `router studies explain`)"
        )


@ledger_group.command("correct")
@click.argument("entry_id", type=click.IntRange(min=1))
@click.option(
    "--reason",
    type=_reason_choice(REPLACEMENT_REASONS),
    default="corrected-coding",
    show_default=True,
    help="corrected-coding: change the code, modifier or units; coder-approved: clear a line held for review.",
)
@click.option("--cpt", help="The CPT code to bill instead (repriced; modifier 26 follows the CPT map of the DOS year).")
@click.option(
    "--modifier",
    "modifiers",
    multiple=True,
    help="A modifier besides 26 (LT, RT, 50, 59, XE, XP, XS, XU, 76, 77, 52); repeat for several. Replaces the line's.",
)
@click.option("--no-modifiers", is_flag=True, help="Bill the line with no modifier besides 26.")
@click.option("--units", type=click.IntRange(1, 99), help="Units of service (the charge follows).")
@click.option("--pos", help="CMS place of service code where the exam was done (never 02/10).")
@click.option(
    "--icd10", "diagnoses", multiple=True, help="An ICD-10-CM code; repeat for several (replaces the line's)."
)
@click.option("--referring-npi", help="NPI of the referring provider (a payer claim needs one).")
@click.option("--note", help="The coder's note, kept on both records and in the audit log.")
@click.pass_obj
def correct(
    obj: CliContext,
    entry_id: int,
    reason: str,
    cpt: str | None,
    modifiers: tuple[str, ...],
    no_modifiers: bool,
    units: int | None,
    pos: str | None,
    diagnoses: tuple[str, ...],
    referring_npi: str | None,
    note: str | None,
) -> None:
    """Replace professional charge ENTRY_ID after coder review (audited).

    Writes the charge's reversal (claim frequency 8) and a replacement charge (claim frequency
    7, or 1 when the line was held for review and so never billed). The ledger is never edited.
    """
    if modifiers and no_modifiers:
        raise click.UsageError("choose one of --modifier and --no-modifiers")
    done = obj.app().corrections.correct(
        entry_id,
        _reason(reason),
        obj.os_user(),
        cpt=cpt,
        modifiers=list(modifiers) if modifiers else ([] if no_modifiers else None),
        units=units,
        place_of_service=pos,
        diagnoses=list(diagnoses) or None,
        referring_npi=referring_npi,
        note=note,
    )
    _say_correction(done)


@ledger_group.command("void")
@click.argument("entry_id", type=click.IntRange(min=1), required=False)
@click.option(
    "--study",
    "study_instance_uid",
    callback=study_uid_argument,
    help="Void every standing charge of this study (whole or shortened UID) instead of one record.",
)
@click.option("--reason", type=_reason_choice(STUDY_VOID_REASONS), required=True, help="Why the read is voided.")
@click.option("--note", help="A note kept on the reversal(s) and in the audit log.")
@click.pass_obj
def void(obj: CliContext, entry_id: int | None, study_instance_uid: str | None, reason: str, note: str | None) -> None:
    """Void professional charge ENTRY_ID, or every charge of --study (audited).

    Each voided charge gets a reversal (claim frequency 8). read-reassigned (with --study) also
    withdraws the completed assignment and routes the study again away from the billed reader;
    the other reasons flag the study for review.
    """
    if (entry_id is None) == (study_instance_uid is None):
        raise click.UsageError("give either a ledger record id or --study UID")
    corrections = obj.app().corrections
    if study_instance_uid is not None:
        done = corrections.void_study(study_instance_uid, _reason(reason), obj.os_user(), note)
    else:
        if _reason(reason) is CorrectionReason.READ_REASSIGNED:
            raise click.UsageError("read-reassigned voids the whole read: use --study UID")
        assert entry_id is not None
        done = corrections.void(entry_id, _reason(reason), obj.os_user(), note)
    _say_correction(done)


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
    """Add ``ledger`` (with ``ledger export``) to the root group."""
    ledger_group.add_command(export)
    cli.add_command(ledger_group)
