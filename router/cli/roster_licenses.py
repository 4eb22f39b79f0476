"""``router licenses`` (add, list, set, set-status, clear-hold) and ``router imlc`` (show, check)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import click

from router.cli.context import CliContext
from router.cli.output import emit_json, emit_table
from router.cli.roster_common import (
    IsoDate,
    confirm,
    field,
    json_option,
    license_status_text,
    report,
    roster,
    yes_option,
)
from router.domain.eligibility_facts import license_tag
from router.domain.enums import LicensePathway, LicenseStatus
from router.errors import NotFoundError
from router.services.reference import ReferenceData
from router.services.roster import UNSET
from router.timeutil import local_date, utcnow


@click.group("licenses")
def licenses_group() -> None:
    """State licenses of radiologists: add, list, renew or correct, record status changes."""


@licenses_group.command("add")
@click.option("--npi", required=True, help="NPI of the license holder.")
@click.option("--state", required=True, help="Jurisdiction: state, DC or territory code (TX, DC, PR...).")
@click.option("--number", required=True, help="License number as issued by the board.")
@click.option("--expires", required=True, type=IsoDate(), help="Last day of validity (included).")
@click.option("--issued", type=IsoDate(), help="First day of validity (included).")
@click.option(
    "--pathway",
    type=click.Choice(LicensePathway.values()),
    default=LicensePathway.FULL.value,
    show_default=True,
    help="How the license was obtained.",
)
@click.option(
    "--status",
    type=click.Choice(LicenseStatus.values()),
    default=LicenseStatus.ACTIVE.value,
    show_default=True,
    help="Current status at the board.",
)
@click.option("--verified-on", type=IsoDate(), help="Day the license was last verified with the board.")
@json_option
@click.pass_obj
def add(
    obj: CliContext,
    npi: str,
    state: str,
    number: str,
    expires: dt.date,
    issued: dt.date | None,
    pathway: str,
    status: str,
    verified_on: dt.date | None,
    as_json: bool,
) -> None:
    """Record a radiologist's license in one jurisdiction; held studies there are re-routed."""
    change = roster(obj).licenses.add(
        npi,
        state,
        number,
        expires,
        obj.os_user(),
        issued=issued,
        pathway=pathway,
        status=status,
        verified_on=verified_on,
    )
    record = change.record or {}
    tag = _record_tag(record)
    report(change, as_json, f"added license {tag} ({pathway}, {status}, expires {expires}) for {record.get('npi')}")
    today = local_date(utcnow(), obj.settings.routing.timezone)
    if expires < today:
        click.echo(
            f"note: license {tag} expired on {expires.isoformat()}; it makes no one eligible (recorded for history)",
            err=True,
        )
    elif issued is not None and issued > today:
        click.echo(f"note: license {tag} is valid from {issued.isoformat()}; it counts from that day", err=True)


@licenses_group.command("list")
@click.option("--npi", help="Only this radiologist's licenses.")
@click.option("--state", help="Only licenses in this jurisdiction.")
@json_option
@click.pass_obj
def list_licenses(obj: CliContext, npi: str | None, state: str | None, as_json: bool) -> None:
    """List licenses by NPI and state."""
    rows = roster(obj).licenses.list(npi=npi, state=state)
    if as_json:
        emit_json(rows)
        return
    emit_table(
        None,
        ["NPI", "name", "state", "number", "pathway", "status", "issued", "expires"],
        [
            (
                r["npi"],
                r["name"],
                r["state"],
                r["number"],
                r["pathway"],
                license_status_text(r),
                r["issued"],
                r["expires"],
            )
            for r in rows
        ],
    )


@licenses_group.command("set-status")
@click.option("--npi", required=True, help="NPI of the license holder.")
@click.option("--state", required=True, help="Jurisdiction of the license.")
@click.option("--status", required=True, type=click.Choice(LicenseStatus.values()), help="New status at the board.")
@click.option("--since", type=IsoDate(), help="Day the status took effect (default: today in routing.timezone).")
@click.option(
    "--in-lieu-of-discipline",
    is_flag=True,
    help="The surrender was accepted in lieu of discipline (only with --status surrendered).",
)
@yes_option
@json_option
@click.pass_obj
def set_status(
    obj: CliContext,
    npi: str,
    state: str,
    status: str,
    since: dt.date | None,
    in_lieu_of_discipline: bool,
    yes: bool,
    as_json: bool,
) -> None:
    """Record a board's status change. Suspension, revocation or surrender in lieu of discipline also
    holds the radiologist's IMLC licenses (Compact section 10) and withdraws open assignments that
    relied on them."""
    if in_lieu_of_discipline and status != LicenseStatus.SURRENDERED.value:
        raise click.UsageError("--in-lieu-of-discipline goes only with --status surrendered")
    if status != LicenseStatus.ACTIVE.value:
        # a bad NPI or state, or no such license, fails here, before the question
        if not roster(obj).licenses.list(npi=npi, state=state):
            raise NotFoundError(f"radiologist {npi} holds no license in {state.strip().upper()}")
        confirm(yes, f"Set the {state.upper()} license of {npi} to {status}? Studies relying on it will be withdrawn.")
    change = roster(obj).licenses.set_status(
        npi, state, status, obj.os_user(), since=since, in_lieu_of_discipline=in_lieu_of_discipline
    )
    record = change.record or {}
    day = record.get("status_since")
    report(
        change,
        as_json,
        f"license {_record_tag(record)} of {record.get('npi')}: {status} since {day}",
        f"license {_record_tag(record)} of {record.get('npi')} is already {status} since {day}",
    )


@licenses_group.command("set")
@click.option("--npi", required=True, help="NPI of the license holder.")
@click.option("--state", required=True, help="Jurisdiction of the license.")
@click.option("--expires", type=IsoDate(), help="New last day of validity (renewal).")
@click.option("--issued", type=IsoDate(clearable=True), help="First day of validity ('none' clears it).")
@click.option("--number", help="Corrected license number.")
@click.option(
    "--verified-on", type=IsoDate(clearable=True), help="Day last verified with the board ('none' clears it)."
)
@click.option("--pathway", type=click.Choice(LicensePathway.values()), help="Corrected pathway.")
@json_option
@click.pass_obj
def set_license(
    obj: CliContext,
    npi: str,
    state: str,
    expires: dt.date | None,
    issued: Any,
    number: str | None,
    verified_on: Any,
    pathway: str | None,
    as_json: bool,
) -> None:
    """Renew or correct a license (expiry, issue date, number, verification date, pathway); status changes use set-status."""
    changes = {
        "expires": field(expires),
        "issued": field(issued),
        "number": UNSET if number is None else number,
        "verified_on": field(verified_on),
        "pathway": field(pathway),
    }
    if all(value is UNSET for value in changes.values()):
        raise click.UsageError(
            "nothing to change: give at least one of --expires, --issued, --number, --verified-on, --pathway"
        )
    change = roster(obj).licenses.set(npi, state, obj.os_user(), **changes)
    record = change.record or {}
    report(
        change,
        as_json,
        f"updated license {_record_tag(record)} of {record.get('npi')} (expires {record.get('expires')})",
        f"license {_record_tag(record)} of {record.get('npi')}: nothing changed",
    )


@licenses_group.command("clear-hold")
@click.option("--npi", required=True, help="NPI of the license holder.")
@click.option("--state", required=True, help="Jurisdiction of the IMLC license whose board has acted.")
@click.option("--on", "on", type=IsoDate(), help="Day the board acted (default: today in routing.timezone).")
@json_option
@click.pass_obj
def clear_hold(obj: CliContext, npi: str, state: str, on: dt.date | None, as_json: bool) -> None:
    """Record that an IMLC license's board has acted, ending the 90-day Compact section 10 hold early."""
    change = roster(obj).licenses.clear_hold(npi, state, obj.os_user(), on=on)
    record = change.record or {}
    report(
        change,
        as_json,
        f"license {_record_tag(record)} of {record.get('npi')}: Compact hold cleared on {record.get('compact_hold_cleared_on')}",
        f"license {_record_tag(record)} of {record.get('npi')}: hold already cleared on {record.get('compact_hold_cleared_on')}",
    )


@click.group("imlc")
def imlc_group() -> None:
    """Interstate Medical Licensure Compact membership (dated data under config/)."""


def _membership(obj: CliContext) -> tuple[Any, str]:
    settings = obj.settings
    path = settings.imlc.membership_file
    return ReferenceData(path, settings.billing.cpt_map).imlc(), str(path)


@imlc_group.command("show")
@json_option
@click.pass_obj
def imlc_show(obj: CliContext, as_json: bool) -> None:
    """Print the Compact membership table with its as_of date and source file."""
    membership, source = _membership(obj)
    today = local_date(utcnow(), obj.settings.routing.timezone)
    rows = [
        {"state": m.state, "status": m.status, "effective_date": m.effective_date, "note": m.note, "source": m.source}
        for m in sorted(membership.members.values(), key=lambda m: m.state)
    ]
    if as_json:
        emit_json({"as_of": membership.as_of, "age_days": membership.age_days(today), "file": source, "members": rows})
        return
    click.echo(
        f"IMLC membership as_of {membership.as_of.isoformat()} ({membership.age_days(today)} days old), from {source}"
    )
    emit_table(
        None,
        ["state", "status", "effective", "note", "source"],
        [(r["state"], r["status"], r["effective_date"], r["note"], r["source"]) for r in rows],
    )


@imlc_group.command("check")
@click.pass_obj
def imlc_check(obj: CliContext) -> None:
    """Exit 1 with a warning when the membership data is older than [imlc] max_age_days, else 0."""
    membership, source = _membership(obj)
    today = local_date(utcnow(), obj.settings.routing.timezone)
    age, limit = membership.age_days(today), obj.settings.imlc.max_age_days
    if age > limit:
        click.echo(
            f"warning: IMLC membership data as_of {membership.as_of.isoformat()} is {age} days old (limit {limit}); "
            f"check the Commission's list and update {source}",
            err=True,
        )
        click.get_current_context().exit(1)
    click.echo(f"ok: IMLC membership data as_of {membership.as_of.isoformat()} is {age} days old (limit {limit})")


def register(cli: click.Group) -> None:
    """Add ``licenses`` and ``imlc`` to the root group."""
    cli.add_command(licenses_group)
    cli.add_command(imlc_group)


def _record_tag(record: dict[str, Any]) -> str:
    """The license of a change record as named everywhere (``TX-123``)."""
    return license_tag(str(record.get("state")), str(record.get("number")))
