"""``router radiologists`` and ``router audit``; :func:`register` adds every roster group.

Roster groups: ``radiologists``, ``licenses``, ``imlc`` (:mod:`router.cli.roster_licenses`),
``facilities``, ``privileges`` (:mod:`router.cli.roster_sites`) and ``audit``. Every change is
audited with the OS user and re-evaluates routing at once, so held studies are routed and open
assignments of a reader who became ineligible are withdrawn, whether or not a server is running.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from router.cli.context import CliContext
from router.cli.output import emit_fields, emit_json, emit_table
from router.cli.roster_common import (
    DestinationType,
    IsoDate,
    confirm,
    field,
    json_option,
    license_status_text,
    report,
    roster,
    yes_no,
    yes_option,
)
from router.errors import RouterError, ValidationError
from router.services.roster import UNSET, Destination


@click.group("radiologists")
def radiologists_group() -> None:
    """Radiologists on the roster: add, change, list, show, (de)activate, import and export."""


@radiologists_group.command("add")
@click.option("--npi", required=True, help="National Provider Identifier (10 digits, check digit verified).")
@click.option("--name", required=True, help='Name in DICOM PN form, e.g. "Doe^Jane".')
@click.option("--email", help="Contact e-mail address.")
@json_option
@click.pass_obj
def add(obj: CliContext, npi: str, name: str, email: str | None, as_json: bool) -> None:
    """Put a radiologist on the roster (active, no licenses yet)."""
    change = roster(obj).radiologists.add(npi, name, obj.os_user(), email=email)
    report(change, as_json, f"added radiologist {change.entity_key} ({name.strip()})")


@radiologists_group.command("list")
@json_option
@click.pass_obj
def list_radiologists(obj: CliContext, as_json: bool) -> None:
    """List radiologists by NPI with license and open assignment counts."""
    rows = roster(obj).radiologists.list()
    if as_json:
        emit_json(rows)
        return
    emit_table(
        None,
        ["NPI", "name", "active", "SPL", "LoQ issued", "MQSA", "reads from", "licenses", "open", "destination"],
        [
            (
                r["npi"],
                r["name"],
                yes_no(r["active"]),
                r["spl_state"],
                r["loq_issued"],
                yes_no(r["mqsa_qualified"]),
                r["reading_state"],
                r["licenses"],
                r["open_assignments"],
                r["destination"],
            )
            for r in rows
        ],
    )


@radiologists_group.command("show")
@click.argument("npi")
@json_option
@click.pass_obj
def show(obj: CliContext, npi: str, as_json: bool) -> None:
    """Show a radiologist with licenses, privileges, disciplinary actions and open assignments."""
    doc = roster(obj).radiologists.show(npi)
    if as_json:
        emit_json(doc)
        return
    emit_fields(
        f"Radiologist {doc['npi']}",
        [
            ("name", doc["name"]),
            ("email", doc["email"]),
            ("active", yes_no(doc["active"])),
            ("designated SPL", doc["spl_state"]),
            ("LoQ issued", doc["loq_issued"]),
            ("MQSA qualified", yes_no(doc["mqsa_qualified"])),
            ("reads from", doc["reading_state"]),
            ("destination", doc["destination"]),
            ("open assignments", doc["open_assignments"]),
        ],
    )
    if doc["licenses"]:
        emit_table(
            "Licenses",
            ["state", "number", "pathway", "status", "issued", "expires", "verified", "hold cleared"],
            [
                (
                    x["state"],
                    x["number"],
                    x["pathway"],
                    license_status_text(x),
                    x["issued"],
                    x["expires"],
                    x["verified_on"],
                    x["compact_hold_cleared_on"],
                )
                for x in doc["licenses"]
            ],
        )
    if doc["privileges"]:
        emit_table(
            "Privileges",
            ["id", "facility", "from", "until", "by proxy", "revoked"],
            [
                (p["id"], p["facility"], p["valid_from"], p["valid_until"], yes_no(p["by_proxy"]), p["revoked_on"])
                for p in doc["privileges"]
            ],
        )
    if doc["disciplinary_actions"]:
        emit_table(
            "Disciplinary actions",
            ["state", "license", "action", "date"],
            [(a["state"], a["license_number"], a["action"], a["action_date"]) for a in doc["disciplinary_actions"]],
        )


@radiologists_group.command("set")
@click.argument("npi")
@click.option("--name", help='New name in DICOM PN form, e.g. "Doe^Jane".')
@click.option("--email", help="E-mail address ('none' clears it).")
@click.option(
    "--spl", "spl", metavar="STATE|none", help="Designated IMLC State of Principal License, e.g. CO ('none' clears it)."
)
@click.option(
    "--loq-issued",
    type=IsoDate(clearable=True),
    help="Issue date of the IMLC Letter of Qualification (valid 365 days; 'none' clears it).",
)
@click.option("--mqsa/--no-mqsa", default=None, help="MQSA-qualified to read mammography (21 CFR 900.12).")
@click.option("--reading-state", metavar="STATE|none", help="State the radiologist reads from ('none' clears it).")
@click.option("--destination", type=DestinationType(), help="C-STORE SCP receiving the reader's studies, AE@host:port.")
@click.option("--no-destination", is_flag=True, help="Remove the forwarding destination (the reader uses the archive).")
@json_option
@click.pass_obj
def set_radiologist(
    obj: CliContext,
    npi: str,
    name: str | None,
    email: str | None,
    spl: str | None,
    loq_issued: Any,
    mqsa: bool | None,
    reading_state: str | None,
    destination: Destination | None,
    no_destination: bool,
    as_json: bool,
) -> None:
    """Change a radiologist's name, e-mail, SPL, Letter of Qualification, MQSA, reading state or destination."""
    if destination is not None and no_destination:
        raise click.UsageError("give --destination or --no-destination, not both")
    changes = {
        "name": UNSET if name is None else name,
        "email": field(email),
        "spl_state": field(spl),
        "loq_issued": field(loq_issued),
        "mqsa": UNSET if mqsa is None else mqsa,
        "reading_state": field(reading_state),
        "destination": None if no_destination else (UNSET if destination is None else destination),
    }
    if all(value is UNSET for value in changes.values()):
        raise click.UsageError("nothing to change: give at least one option")
    change = roster(obj).radiologists.set(npi, obj.os_user(), **changes)
    done = f"updated radiologist {change.entity_key}"
    if change.forwarding_requeued is not None:
        what = "stopped" if no_destination else "re-queued for the new destination"
        done += f"; forwarding of {change.forwarding_requeued} open stud(ies) {what}"
    report(change, as_json, done, f"radiologist {change.entity_key}: nothing changed")


@radiologists_group.command("deactivate")
@click.argument("npi")
@yes_option
@json_option
@click.pass_obj
def deactivate(obj: CliContext, npi: str, yes: bool, as_json: bool) -> None:
    """Take a radiologist off routing; their open assignments are withdrawn and reassigned or held."""
    roster(obj).radiologists.show(npi)  # a bad or unknown NPI fails here, before the question
    confirm(yes, f"Deactivate radiologist {npi}? Their open assignments will be withdrawn.")
    change = roster(obj).radiologists.deactivate(npi, obj.os_user())
    report(
        change,
        as_json,
        f"deactivated radiologist {change.entity_key}",
        f"radiologist {change.entity_key} is already inactive",
    )


@radiologists_group.command("activate")
@click.argument("npi")
@json_option
@click.pass_obj
def activate(obj: CliContext, npi: str, as_json: bool) -> None:
    """Put a deactivated radiologist back into routing (held studies are re-routed)."""
    change = roster(obj).radiologists.activate(npi, obj.os_user())
    report(
        change,
        as_json,
        f"activated radiologist {change.entity_key}",
        f"radiologist {change.entity_key} is already active",
    )


@radiologists_group.command("import")
@click.argument("csv_file", metavar="FILE.csv", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@yes_option
@json_option
@click.pass_obj
def import_roster(obj: CliContext, csv_file: Path, yes: bool, as_json: bool) -> None:
    """Import a roster file, all or nothing (header npi,name,license_state,license_number,pathway,status,issued,expires).

    Radiologists are matched by NPI and licenses by NPI and state; nothing absent from the file
    is deleted. One bad row rejects the file with its line number.
    """
    try:
        text = csv_file.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ValidationError(f"{csv_file} is not UTF-8 text") from exc
    service = roster(obj)
    plan = service.import_csv(text, obj.os_user(), dry_run=True)
    if not plan.changed:
        if as_json:
            emit_json(plan.to_json())
        else:
            click.echo(f"nothing to import: {plan}")
        return
    confirm(yes, f"Import {csv_file.name}: {plan}?")
    result = service.import_csv(text, obj.os_user())
    if as_json:
        emit_json(result.to_json())
    else:
        click.echo(f"imported {csv_file.name}: {result}")
        for item in result.rerouted:
            click.echo(item.describe())
    if result.reevaluation_error:
        click.echo(
            f"warning: import saved, but studies were not re-evaluated: {result.reevaluation_error}; run `router studies recheck` (a running server rechecks every routing.recheck_interval seconds)",
            err=True,
        )
        click.get_current_context().exit(1)


@radiologists_group.command("export")
@click.argument(
    "csv_file", metavar="[FILE]", required=False, type=click.Path(dir_okay=False, writable=True, path_type=Path)
)
@click.option("--force", is_flag=True, help="Overwrite FILE if it exists.")
@click.pass_obj
def export_roster(obj: CliContext, csv_file: Path | None, force: bool) -> None:
    """Export the licenses as CSV, one row per license (stdout when no FILE or -); readable by `import`.

    Not a backup: SPL, LoQ, MQSA, reading state, privileges and facilities are not in it.
    """
    if csv_file is not None and str(csv_file) == "-":
        csv_file = None
    if csv_file is not None and csv_file.exists() and not force:
        raise RouterError(f"{csv_file} exists; give --force to overwrite it")
    text = roster(obj).export_csv()
    if csv_file is None:
        click.echo(text, nl=False)
        return
    csv_file.write_text(text, encoding="utf-8")
    click.echo(f"exported {max(0, text.count(chr(10)) - 1)} license rows to {csv_file}", err=True)


@click.group("audit")
def audit_group() -> None:
    """The append-only audit log of roster and admin changes."""


@audit_group.command("list")
@click.option(
    "--limit",
    type=click.IntRange(1, 1_000_000),
    default=50,
    show_default=True,
    help="At most this many entries, newest first.",
)
@click.option(
    "--entity",
    type=click.Choice(["radiologist", "license", "facility", "privilege", "roster", "study"]),
    help="Only entries about this kind of record.",
)
@click.option(
    "--key", help="Only entries for this key, e.g. an NPI (also finds its licenses and privileges) or 1234567893/TX."
)
@json_option
@click.pass_obj
def audit_list(obj: CliContext, limit: int, entity: str | None, key: str | None, as_json: bool) -> None:
    """Show audit entries, newest first: when, who, what, and the old and new values."""
    rows = roster(obj).audit_list(limit=limit, entity=entity, key=key)
    if as_json:
        emit_json(rows)
        return
    emit_table(
        None,
        ["when (UTC)", "user", "action", "key", "change"],
        [
            (
                r["at"],
                r["os_user"] + (f" (as {r['acting_as']})" if r.get("acting_as") else ""),
                r["action"],
                r["entity_key"],
                _change_text(r["old_values"], r["new_values"]),
            )
            for r in rows
        ],
    )


def _change_text(old: dict[str, Any] | None, new: dict[str, Any] | None) -> str:
    """``status: active -> suspended; ...`` for an update, the non-empty values for a creation."""
    if old is None and new is None:
        return "-"
    if old is None:
        assert new is not None
        return "created: " + ", ".join(f"{key}={_value(value)}" for key, value in new.items() if value is not None)
    if new is None:
        return "removed: " + ", ".join(f"{key}={_value(value)}" for key, value in old.items() if value is not None)
    keys = [*new, *(key for key in old if key not in new)]
    return "; ".join(f"{key}: {_value(old.get(key))} -> {_value(new.get(key))}" for key in keys)


def _value(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list)):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def register(cli: click.Group) -> None:
    """Add the roster groups to the root group: radiologists, licenses, imlc, facilities, privileges, audit."""
    from router.cli import roster_duty, roster_licenses, roster_sites

    cli.add_command(radiologists_group)
    cli.add_command(audit_group)
    roster_licenses.register(cli)
    roster_sites.register(cli)
    roster_duty.register(cli)
