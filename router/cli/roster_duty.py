"""``router shifts`` (add, list, remove) and facility reader rules (``router facilities prefer|exclude|...``)."""

from __future__ import annotations

import click

from router.cli.context import CliContext
from router.cli.output import emit_json, emit_table
from router.cli.roster_common import confirm, json_option, report, roster, yes_option
from router.domain.enums import FacilityReaderRule, Subspecialty


@click.group("shifts")
def shifts_group() -> None:
    """Reader shifts in the reader's own time zone: nobody is assigned a study off shift."""


@shifts_group.command("add")
@click.option("--npi", required=True, help="The reader's NPI.")
@click.option("--weekday", "weekdays", required=True, help="Days the shift starts on: mon-fri, sat,sun, daily...")
@click.option("--start", required=True, help="Local start time, HH:MM (24-hour).")
@click.option("--end", required=True, help="Local end time, HH:MM; at or before --start: ends the next day.")
@click.option("--timezone", required=True, help="The reader's IANA time zone, e.g. America/Chicago.")
@json_option
@click.pass_obj
def add_shift(obj: CliContext, npi: str, weekdays: str, start: str, end: str, timezone: str, as_json: bool) -> None:
    """Add a weekly shift; held studies are re-routed (one may now be covered)."""
    change = roster(obj).shifts.add(npi, weekdays, start, end, timezone, obj.os_user())
    record = change.record or {}
    report(
        change,
        as_json,
        f"added shift {change.entity_key} for NPI {record.get('npi')}: {record.get('weekdays')} "
        f"{record.get('start')}-{record.get('end')} {record.get('timezone')}",
    )


@shifts_group.command("list")
@click.option("--npi", help="Only this reader's shifts.")
@json_option
@click.pass_obj
def list_shifts(obj: CliContext, npi: str | None, as_json: bool) -> None:
    """List shifts by NPI (times are local to each shift's time zone)."""
    rows = roster(obj).shifts.list(npi)
    if as_json:
        emit_json(rows)
        return
    emit_table(
        "Shifts",
        ["id", "npi", "weekdays", "start", "end", "timezone", "overnight"],
        [
            [r["id"], r["npi"], r["weekdays"], r["start"], r["end"], r["timezone"], "yes" if r["overnight"] else "no"]
            for r in rows
        ],
    )


@shifts_group.command("remove")
@click.argument("shift_id", type=int)
@yes_option
@json_option
@click.pass_obj
def remove_shift(obj: CliContext, shift_id: int, yes: bool, as_json: bool) -> None:
    """Remove a shift by id (see `router shifts list`)."""
    confirm(yes, f"Remove shift {shift_id}?")
    change = roster(obj).shifts.remove(shift_id, obj.os_user())
    report(change, as_json, f"removed shift {shift_id}")


def _rule_command(rule: FacilityReaderRule, help_text: str) -> click.Command:
    @click.command(rule.value, help=help_text)
    @click.argument("ae_title")
    @click.option("--npi", required=True, help="The reader's NPI.")
    @json_option
    @click.pass_obj
    def command(obj: CliContext, ae_title: str, npi: str, as_json: bool) -> None:
        change = roster(obj).facility_readers.set_rule(ae_title, npi, rule, obj.os_user())
        report(
            change,
            as_json,
            f"facility {ae_title.strip()}: {rule.value} NPI {npi}",
            f"facility {ae_title.strip()}: NPI {npi} already {rule.value}",
        )

    return command


@click.command("clear-reader")
@click.argument("ae_title")
@click.option("--npi", required=True, help="The reader's NPI.")
@json_option
@click.pass_obj
def clear_reader(obj: CliContext, ae_title: str, npi: str, as_json: bool) -> None:
    """Remove the facility's preference for, or exclusion of, a reader."""
    change = roster(obj).facility_readers.clear_rule(ae_title, npi, obj.os_user())
    report(change, as_json, f"facility {ae_title.strip()}: no rule about NPI {npi} any more")


@click.command("readers")
@click.argument("ae_title", required=False)
@json_option
@click.pass_obj
def list_readers(obj: CliContext, ae_title: str | None, as_json: bool) -> None:
    """List facility reader rules (prefer, exclude), of one facility or all."""
    rows = roster(obj).facility_readers.list(ae_title)
    if as_json:
        emit_json(rows)
        return
    emit_table(
        "Facility reader rules", ["facility", "npi", "rule"], [[r["facility"], r["npi"], r["rule"]] for r in rows]
    )


@click.group("credentials")
def credentials_group() -> None:
    """Readers' subspecialty credentials, matched against config/subspecialty_rules.csv."""


@credentials_group.command("set")
@click.argument("npi")
@click.option(
    "--subspecialty",
    "subspecialties",
    multiple=True,
    type=click.Choice(Subspecialty.values()),
    help="A subspecialty the reader is credentialed in; repeatable. None given: clears them.",
)
@json_option
@click.pass_obj
def set_credentials(obj: CliContext, npi: str, subspecialties: tuple[str, ...], as_json: bool) -> None:
    """Replace a reader's subspecialties; held studies are re-routed."""
    change = roster(obj).credentials.set(npi, list(subspecialties), obj.os_user())
    subs = (change.record or {}).get("subspecialties") or "none"
    report(change, as_json, f"NPI {npi}: subspecialties {subs}", f"NPI {npi}: subspecialties unchanged ({subs})")


@credentials_group.command("list")
@json_option
@click.pass_obj
def list_credentials(obj: CliContext, as_json: bool) -> None:
    """List readers' subspecialties and MQSA qualification."""
    rows = roster(obj).credentials.list()
    if as_json:
        emit_json(rows)
        return
    emit_table(
        "Credentials",
        ["npi", "name", "subspecialties", "MQSA"],
        [[r["npi"], r["name"], ", ".join(r["subspecialties"]), "yes" if r["mqsa_qualified"] else "no"] for r in rows],
    )


def register(cli: click.Group) -> None:
    """Add ``shifts`` to the root group and the reader-rule commands to ``facilities``."""
    from router.cli.roster_sites import facilities_group

    cli.add_command(shifts_group)
    cli.add_command(credentials_group)
    facilities_group.add_command(
        _rule_command(FacilityReaderRule.PREFER, "Prefer a reader at a facility: wins ties on workload.")
    )
    facilities_group.add_command(
        _rule_command(FacilityReaderRule.EXCLUDE, "Exclude a reader at a facility: never assigned its studies.")
    )
    facilities_group.add_command(clear_reader)
    facilities_group.add_command(list_readers)
