"""``router facilities`` (add, set, list, show, remove) and ``router privileges`` (grant, list, revoke)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import click

from router.cli.context import CliContext
from router.cli.output import emit_fields, emit_json, emit_table
from router.cli.roster_common import IsoDate, confirm, field, json_option, report, roster, yes_no, yes_option
from router.domain.enums import BillingArrangement, FederalFacility
from router.errors import NotFoundError
from router.services.roster import UNSET
from router.services.roster_facilities import billing_fields

_BILLING_OPTIONS = [
    click.option(
        "--billing",
        "arrangement",
        type=click.Choice(BillingArrangement.values()),
        help="Who its reads are billed to: payer (837P, CPT-26), client (the facility, at --contract-rate), "
        "global (the facility bills globally: no 26, not sent to a payer) or none. Default payer.",
    ),
    click.option(
        "--outpatient-pos",
        metavar="22|19",
        help="Place of service of its outpatient (PV1-2 O) exams: 22 on-campus or 19 off-campus outpatient "
        "hospital ('none': billing.outpatient_pos).",
    ),
    click.option(
        "--default-pos",
        metavar="POS",
        help="CMS place of service when the order's patient class does not decide it, e.g. 11 office "
        "('none' clears; telehealth 02/10 refused).",
    ),
    click.option(
        "--contract-rate",
        metavar="PERCENT",
        help="Client contract rate, 1-100 percent of the fee schedule ('none' clears).",
    ),
]


def _billing_options(function: Any) -> Any:
    for option in reversed(_BILLING_OPTIONS):
        function = option(function)
    return function


def _billing(
    arrangement: str | None, outpatient_pos: str | None, default_pos: str | None, contract_rate: str | None
) -> dict[str, Any]:
    """The facility billing fields given on the command line (see billing_fields)."""
    rate: Any = field(contract_rate)
    if isinstance(rate, str):
        text = rate.strip().rstrip("%")
        if not text.isdigit():
            raise click.UsageError(f"--contract-rate must be a whole percent (1-100) or 'none', got {contract_rate!r}")
        rate = int(text)
    # 'none' is an arrangement here (no bill), not the word that clears a value
    return billing_fields(arrangement or UNSET, field(outpatient_pos), field(default_pos), rate)


@click.group("facilities")
def facilities_group() -> None:
    """Registered senders (by calling AE title): the strongest evidence of the exam state."""


@facilities_group.command("add")
@click.option("--ae-title", required=True, help="Calling AE title the facility sends with (1-16 characters).")
@click.option("--state", required=True, help="Jurisdiction where its exams are performed (TX, DC, PR...).")
@click.option("--name", help="Facility name, for people.")
@click.option("--timezone", help="IANA time zone of the facility, e.g. America/Chicago (default: routing.timezone).")
@click.option(
    "--requires-privileges", is_flag=True, help="Readers must hold privileges here active on the day of the read."
)
@click.option(
    "--federal",
    type=click.Choice(FederalFacility.values()),
    help="VA or DoD facility (federal license pathways count here).",
)
@click.option(
    "--alias",
    "aliases",
    multiple=True,
    metavar="NAME",
    help="InstitutionName (0008,0080) value identifying it; repeatable.",
)
@_billing_options
@json_option
@click.pass_obj
def add(
    obj: CliContext,
    ae_title: str,
    state: str,
    name: str | None,
    timezone: str | None,
    requires_privileges: bool,
    federal: str | None,
    aliases: tuple[str, ...],
    arrangement: str | None,
    outpatient_pos: str | None,
    default_pos: str | None,
    contract_rate: str | None,
    as_json: bool,
) -> None:
    """Register a facility; held studies it sent are re-routed."""
    change = roster(obj).facilities.add(
        ae_title,
        state,
        obj.os_user(),
        name=name,
        timezone=timezone,
        requires_privileges=requires_privileges,
        federal=federal,
        aliases=aliases,
        billing=_billing(arrangement, outpatient_pos, default_pos, contract_rate),
    )
    record = change.record or {}
    report(change, as_json, f"registered facility {change.entity_key} in {record.get('state')}")


@facilities_group.command("set")
@click.argument("ae_title")
@click.option("--name", help="Facility name ('none' clears it).")
@click.option("--state", help="Jurisdiction where its exams are performed.")
@click.option("--timezone", help="IANA time zone ('none' clears it: routing.timezone applies).")
@click.option(
    "--requires-privileges/--no-requires-privileges", default=None, help="Whether readers need privileges here."
)
@click.option("--federal", type=click.Choice([*FederalFacility.values(), "none"]), help="VA, DoD, or none.")
@click.option("--alias", "aliases", multiple=True, metavar="NAME", help="Add an InstitutionName alias; repeatable.")
@click.option("--remove-alias", "remove_aliases", multiple=True, metavar="NAME", help="Remove an alias; repeatable.")
@_billing_options
@json_option
@click.pass_obj
def set_facility(
    obj: CliContext,
    ae_title: str,
    name: str | None,
    state: str | None,
    timezone: str | None,
    requires_privileges: bool | None,
    federal: str | None,
    aliases: tuple[str, ...],
    remove_aliases: tuple[str, ...],
    arrangement: str | None,
    outpatient_pos: str | None,
    default_pos: str | None,
    contract_rate: str | None,
    as_json: bool,
) -> None:
    """Change a facility; every open assignment is re-checked afterwards."""
    changes = {
        "name": field(name),
        "state": UNSET if state is None else state,
        "timezone": field(timezone),
        "requires_privileges": UNSET if requires_privileges is None else requires_privileges,
        "federal": field(federal),
    }
    billing = _billing(arrangement, outpatient_pos, default_pos, contract_rate)
    if all(value is UNSET for value in changes.values()) and not aliases and not remove_aliases and not billing:
        raise click.UsageError("nothing to change: give at least one option")
    change = roster(obj).facilities.set(
        ae_title, obj.os_user(), add_aliases=aliases, remove_aliases=remove_aliases, billing=billing, **changes
    )
    report(change, as_json, f"updated facility {change.entity_key}", f"facility {change.entity_key}: nothing changed")


@facilities_group.command("list")
@json_option
@click.pass_obj
def list_facilities(obj: CliContext, as_json: bool) -> None:
    """List registered facilities by AE title."""
    rows = roster(obj).facilities.list()
    if as_json:
        emit_json(rows)
        return
    emit_table(
        None,
        ["AE title", "name", "state", "time zone", "privileges required", "federal", "billing", "aliases"],
        [
            (
                r["ae_title"],
                r["name"],
                r["state"],
                r["timezone"],
                yes_no(r["requires_privileges"]),
                r["federal"],
                _billing_summary(r),
                " | ".join(r["aliases"]) or None,
            )
            for r in rows
        ],
    )


@facilities_group.command("show")
@click.argument("ae_title")
@json_option
@click.pass_obj
def show(obj: CliContext, ae_title: str, as_json: bool) -> None:
    """Show a facility with its aliases, privilege grants and number of studies."""
    doc = roster(obj).facilities.show(ae_title)
    if as_json:
        emit_json(doc)
        return
    emit_fields(
        f"Facility {doc['ae_title']}",
        [
            ("name", doc["name"]),
            ("state", doc["state"]),
            ("time zone", doc["timezone"]),
            ("privileges required", yes_no(doc["requires_privileges"])),
            ("federal", doc["federal"]),
            ("aliases", " | ".join(doc["aliases"]) or None),
            ("billing", _billing_summary(doc)),
            ("outpatient POS", doc["outpatient_pos"] or "billing.outpatient_pos"),
            ("default POS", doc["default_pos"] or "none (coder review)"),
            ("studies", doc["study_count"]),
        ],
    )
    if doc["privileges"]:
        emit_table(
            "Privileges",
            ["id", "NPI", "from", "until", "by proxy", "revoked"],
            [
                (p["id"], p["npi"], p["valid_from"], p["valid_until"], yes_no(p["by_proxy"]), p["revoked_on"])
                for p in doc["privileges"]
            ],
        )


def _billing_summary(record: dict[str, Any]) -> str:
    arrangement = str(record["billing_arrangement"])
    rate = record["contract_rate_percent"]
    return f"{arrangement} {rate}%" if rate is not None else arrangement


@facilities_group.command("remove")
@click.argument("ae_title")
@click.option(
    "--force", is_flag=True, help="Also delete the privilege grants at this facility (listed in the audit log)."
)
@yes_option
@json_option
@click.pass_obj
def remove(obj: CliContext, ae_title: str, force: bool, yes: bool, as_json: bool) -> None:
    """Unregister a facility; its studies stay. Refused while privileges reference it, unless --force."""
    roster(obj).facilities.show(ae_title)  # an unknown AE title fails here, before the question
    confirm(yes, f"Remove facility {ae_title}? Studies it sends will be located by address instead.")
    change = roster(obj).facilities.remove(ae_title, obj.os_user(), force=force)
    report(change, as_json, f"removed facility {change.entity_key}")


@click.group("privileges")
def privileges_group() -> None:
    """Clinical privileges of radiologists at facilities (granted directly or by proxy)."""


@privileges_group.command("grant")
@click.option("--npi", required=True, help="NPI of the radiologist.")
@click.option("--facility", required=True, metavar="AE_TITLE", help="AE title of the registered facility.")
@click.option("--from", "valid_from", required=True, type=IsoDate(), help="First day of the privileges (included).")
@click.option("--until", "valid_until", required=True, type=IsoDate(), help="Last day of the privileges (included).")
@click.option(
    "--by-proxy",
    is_flag=True,
    help="Granted by proxy, relying on the distant site's credentialing (42 CFR 482.22(a)(3)).",
)
@json_option
@click.pass_obj
def grant(
    obj: CliContext, npi: str, facility: str, valid_from: dt.date, valid_until: dt.date, by_proxy: bool, as_json: bool
) -> None:
    """Grant privileges at a facility for a period; held studies from it are re-routed."""
    change = roster(obj).privileges.grant(npi, facility, valid_from, valid_until, obj.os_user(), by_proxy=by_proxy)
    record = change.record or {}
    report(
        change,
        as_json,
        f"granted privilege {record.get('id')}: {change.entity_key} from {valid_from} until {valid_until}{' by proxy' if by_proxy else ''}",
    )


@privileges_group.command("list")
@click.option("--npi", help="Only this radiologist's privileges.")
@click.option("--facility", metavar="AE_TITLE", help="Only privileges at this facility.")
@json_option
@click.pass_obj
def list_privileges(obj: CliContext, npi: str | None, facility: str | None, as_json: bool) -> None:
    """List privilege grants by NPI and facility."""
    rows = roster(obj).privileges.list(npi=npi, facility=facility)
    if as_json:
        emit_json(rows)
        return
    emit_table(
        None,
        ["id", "NPI", "name", "facility", "from", "until", "by proxy", "revoked"],
        [
            (
                r["id"],
                r["npi"],
                r["name"],
                r["facility"],
                r["valid_from"],
                r["valid_until"],
                yes_no(r["by_proxy"]),
                r["revoked_on"],
            )
            for r in rows
        ],
    )


@privileges_group.command("revoke")
@click.argument("privilege_id", metavar="[ID]", required=False, type=click.IntRange(1, 2**31 - 1))
@click.option("--npi", help="NPI of the radiologist (with --facility, instead of ID).")
@click.option("--facility", metavar="AE_TITLE", help="AE title of the facility (with --npi, instead of ID).")
@click.option("--on", "on", type=IsoDate(), help="First day without the privileges (default: today at the facility).")
@yes_option
@json_option
@click.pass_obj
def revoke(
    obj: CliContext,
    privilege_id: int | None,
    npi: str | None,
    facility: str | None,
    on: dt.date | None,
    yes: bool,
    as_json: bool,
) -> None:
    """Revoke privileges by ID, or all of a radiologist's at a facility; studies relying on them are withdrawn."""
    if privilege_id is not None and (npi or facility):
        raise click.UsageError("give an ID, or --npi and --facility, not both")
    if privilege_id is None and not (npi and facility):
        raise click.UsageError("give an ID, or both --npi and --facility")
    target = f"privilege {privilege_id}" if privilege_id is not None else f"the privileges of {npi} at {facility}"
    # unknown NPI, facility or ID fail here, before the question
    existing = roster(obj).privileges.list(npi=npi, facility=facility)
    if privilege_id is not None and all(item["id"] != privilege_id for item in existing):
        raise NotFoundError(f"no privilege with id {privilege_id}")
    confirm(yes, f"Revoke {target}? Studies relying on them will be withdrawn.")
    change = roster(obj).privileges.revoke(
        obj.os_user(), privilege_id=privilege_id, npi=npi, facility_ae=facility, on=on
    )
    record = change.record or {}
    ids = ", ".join(str(item["id"]) for item in record.get("revoked", []))
    report(change, as_json, f"revoked privilege {ids} ({change.entity_key}) from {record.get('revoked_on')}")


def register(cli: click.Group) -> None:
    """Add ``facilities`` and ``privileges`` to the root group."""
    cli.add_command(facilities_group)
    cli.add_command(privileges_group)
