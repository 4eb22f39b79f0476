"""``router studies``: list, show, explain, complete, set-state, assign, recheck, forward."""

from __future__ import annotations

import click

from router.cli.context import CliContext, study_uid_argument
from router.cli.output import (
    HELD_STYLE,
    emit_fields,
    emit_json,
    emit_table,
    label,
    short_uid,
    shortened_caption,
    wide_option,
)
from router.domain.eligibility_facts import license_tag
from router.domain.enums import StudyStatus
from router.domain.jurisdictions import normalize_jurisdiction
from router.domain.npi import validate_npi
from router.errors import ValidationError
from router.services.forwarding_queue import requeue_study
from router.services.routing import RouteResult
from router.services.studies import StudyViews
from router.services.study_review import mark_reviewed
from router.timeutil import parse_iso_datetime


def _views(obj: CliContext) -> StudyViews:
    app = obj.app()
    return StudyViews(app.sessions, app.routing)


@click.group("studies")
def studies_group() -> None:
    """Received studies: where they are, who reads them, and why."""


@studies_group.command("list")
@click.option("--status", type=click.Choice(StudyStatus.values()), help="Only studies with this status.")
@click.option("--limit", type=click.IntRange(1, 1_000_000), help="At most this many (newest first).")
@click.option(
    "--needs-review",
    is_flag=True,
    help="Only studies flagged for an admin (a report not billed, an assignment withdrawn, a voided read).",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document (an array of studies).")
@wide_option
@click.pass_obj
def list_studies(
    obj: CliContext, status: str | None, limit: int | None, needs_review: bool, as_json: bool, wide: bool
) -> None:
    """List studies, newest first; held studies (an admin must act) in capitals, studies
    flagged for review marked with "!" (`studies show UID` says why).

    UIDs are shortened to their end in the table; --wide or --json gives them whole.
    """
    rows = _views(obj).list(StudyStatus(status) if status else None, limit, needs_review)
    if as_json:
        emit_json(rows)
        return
    if not rows:
        click.echo(f"no {status + ' ' if status else ''}studies" + (" flagged for review" if needs_review else ""))
        return
    held = StudyStatus.HELD.value
    emit_table(
        None,
        ["study", "status", "exam state (from)", "reader NPI, license", "hold reason", "inst."],
        [
            (
                short_uid(row["study_instance_uid"], wide),
                ("HELD" if row["status"] == held else row["status"]) + (" !" if row["needs_review"] else ""),
                f"{row['exam_state']} ({label(row['exam_state_source'])})" if row["exam_state"] else None,
                " ".join(
                    part
                    for part in (
                        row["assigned_npi"],
                        license_tag(row["license_state"], row["license_number"]) if row["license_state"] else None,
                    )
                    if part
                )
                or None,
                label(row["hold_reason"]),
                row["instance_count"],
            )
            for row in rows
        ],
        wide=wide,
        row_styles=[HELD_STYLE if row["status"] == held else None for row in rows],
        caption=shortened_caption(wide),
    )


@studies_group.command("show")
@click.argument("study_instance_uid", callback=study_uid_argument)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
@click.pass_obj
def show(obj: CliContext, study_instance_uid: str, as_json: bool) -> None:
    """Show a study: instances, senders, exam state and its source, conflicts, assignment, decisions."""
    document = _views(obj).show(study_instance_uid)
    if as_json:
        emit_json(document)
        return
    emit_fields(
        f"Study {document['study_instance_uid']}",
        [
            ("status", document["status"]),
            ("hold reason", document["hold_reason"]),
            ("hold detail", document["hold_detail"]),
            ("exam state", document["exam_state"]),
            ("state source", document["exam_state_source"]),
            ("state detail", document["exam_state_detail"]),
            (
                "conflicts",
                "; ".join(f"{c['source']}: {c['state'] or '-'} ({c['detail']})" for c in document["location_conflicts"])
                or None,
            ),
            ("assigned NPI", document["assigned_npi"]),
            (
                "license relied on",
                license_tag(document["license_state"], document["license_number"])
                if document["license_state"]
                else None,
            ),
            ("accession", document["accession_number"]),
            ("facility", document["facility"]),
            ("instances", document["instance_count"]),
            ("bytes", document["size_bytes"]),
            ("needs review", document["needs_review"]),
        ],
    )
    if document["senders"]:
        emit_table(
            "Senders",
            ["calling AE", "address", "instances", "first", "last"],
            [
                (
                    s["calling_ae_title"],
                    s["peer_address"],
                    s["instance_count"],
                    s["first_received_at"],
                    s["last_received_at"],
                )
                for s in document["senders"]
            ],
        )
    if document["instance_conflicts"]:
        emit_table(
            "Instance conflicts (differing copies kept aside)",
            ["SOP Instance UID", "quarantined as", "from", "received"],
            [
                (c["sop_instance_uid"], c["quarantined_as"], c["calling_ae_title"], c["received_at"])
                for c in document["instance_conflicts"]
            ],
        )
    if document["forwarding"]:
        emit_table(
            "Forwarding to the reader's destination",
            ["destination", "status", "round", "accepted this round", "attempts", "last error"],
            [
                (
                    f["destination"],
                    f["status"],
                    f["send_round"],
                    f["sent_instance_count"],
                    f["attempts"],
                    f["last_error"],
                )
                for f in document["forwarding"]
            ],
        )
    if document["decisions"]:
        last = document["decisions"][-1]
        if last["candidates"]:
            _print_candidates(
                last["candidates"], f"Radiologists considered at {last['decided_at']} ({last['trigger']})"
            )
        if last["not_evaluated_npis"]:
            click.echo(f"ranked after the chosen reader, not evaluated: {', '.join(last['not_evaluated_npis'])}")
        if last["unlicensed_npis"]:
            click.echo(
                f"no license in {last['exam_state']} (at {last['decided_at']}): {', '.join(last['unlicensed_npis'])}"
            )


def _print_candidates(candidates: list[dict[str, object]], title: str) -> None:
    emit_table(
        title,
        ["NPI", "name", "eligible", "license", "why not"],
        [
            (
                c.get("npi"),
                c.get("name"),
                "yes" if c.get("eligible") else "no",
                _license_text(c.get("license")),
                "; ".join(c.get("reasons") or []),  # type: ignore[arg-type]
            )
            for c in candidates
        ],
    )


def _license_text(value: object) -> str | None:
    if isinstance(value, dict):
        return license_tag(str(value.get("state")), str(value.get("number")))
    return None


@studies_group.command("explain")
@click.argument("study_instance_uid", callback=study_uid_argument)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
@click.pass_obj
def explain(obj: CliContext, study_instance_uid: str, as_json: bool) -> None:
    """Explain the exam state and every radiologist's eligibility today, with the fastest path when nobody is eligible."""
    document = _views(obj).explain(study_instance_uid)
    if as_json:
        emit_json(document)
        return
    click.echo(
        f"Study {document['study_instance_uid']}: {document['status']}"
        + (f" ({document['hold_reason']})" if document["hold_reason"] else "")
    )
    click.echo(f"Exam state: {document['exam_state'] or 'unknown'} from {document['exam_state_source'] or '-'}")
    for finding in document["location_findings"]:
        click.echo(f"  {finding['source']}: {finding['state'] or '-'} - {finding['detail']}")
    if document["radiologists"]:
        _print_candidates(document["radiologists"], f"Radiologists judged for {document['judged_on']}")
    if document["fastest_paths"]:
        emit_table(
            "Fastest path to an eligible reader",
            ["NPI", "name", "tier", "path", "detail"],
            [(p["npi"], p["name"], p["tier"], p["path"], p["detail"]) for p in document["fastest_paths"]],
        )
    if document.get("fastest_path_note"):
        click.echo(document["fastest_path_note"])


@studies_group.command("complete")
@click.argument("study_instance_uid", callback=study_uid_argument)
@click.option("--at", "at", help="Interpretation time, ISO-8601 (default now); without an offset, routing.timezone.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
@click.pass_obj
def complete(obj: CliContext, study_instance_uid: str, at: str | None, as_json: bool) -> None:
    """Record the read as reported by the assigned radiologist and write its professional record(s)."""
    app = obj.app()
    moment = None
    if at is not None:
        try:
            moment = parse_iso_datetime(at, app.settings.routing.timezone)
        except ValueError as exc:
            raise click.BadParameter(f"{at!r} is not an ISO-8601 date-time", param_hint="--at") from exc
    done = app.reads.complete(study_instance_uid, moment)
    if as_json:
        emit_json(
            {
                "study_instance_uid": done.study_instance_uid,
                "npi": done.npi,
                "date_of_service": done.date_of_service,
                "ledger_ids": list(done.entry_ids),
                "cpt_codes": list(done.cpt_codes),
            }
        )
        return
    codes = ", ".join(code or "coder review" for code in done.cpt_codes)
    click.echo(
        f"study {done.study_instance_uid}: read by NPI {done.npi}, date of service {done.date_of_service}, billed {codes}"
    )


@studies_group.command("reviewed")
@click.argument("study_instance_uid", callback=study_uid_argument)
@click.option("--note", help="What was done about it (kept in the audit log).")
@click.pass_obj
def reviewed(obj: CliContext, study_instance_uid: str, note: str | None) -> None:
    """Clear a study's review flag once an admin has looked at it (audited as study.reviewed).

    `studies list --needs-review` lists the flagged ones; `studies show UID` gives the reasons.
    """
    app = obj.app()
    mark_reviewed(app.sessions, app.clock, app.settings.routing.timezone, study_instance_uid, obj.os_user(), note)
    click.echo(f"study {study_instance_uid}: review flag cleared")


@studies_group.command("set-state")
@click.argument("study_instance_uid", callback=study_uid_argument)
@click.argument("state")
@click.pass_obj
def set_state(obj: CliContext, study_instance_uid: str, state: str) -> None:
    """Set the exam state by hand (source: manual) and route the study again."""
    code = normalize_jurisdiction(state)
    if code is None:
        raise ValidationError(f"{state!r} is not a US licensing jurisdiction (state, DC or territory)")
    result = obj.app().routing.set_state(study_instance_uid, code, obj.os_user())
    _say(result)


@studies_group.command("assign")
@click.argument("study_instance_uid", callback=study_uid_argument)
@click.option("--npi", required=True, help="NPI of the radiologist to assign.")
@click.pass_obj
def assign(obj: CliContext, study_instance_uid: str, npi: str) -> None:
    """Assign a study to a named radiologist; refused, with the reason, if they are not eligible."""
    result = obj.app().routing.assign_manually(study_instance_uid, validate_npi(npi), obj.os_user())
    _say(result)


@studies_group.command("forward")
@click.argument("study_instance_uid", callback=study_uid_argument)
@click.option(
    "--all",
    "resend_all",
    is_flag=True,
    help="Send every instance again, also those the destination already accepted (a workstation that lost the study).",
)
@click.pass_obj
def forward(obj: CliContext, study_instance_uid: str, resend_all: bool) -> None:
    """Forward a study again to its reader's destination: what it has not accepted yet (after
    the retries ran out), or with --all every instance again.

    A running server with forwarding on sends it at its next timer pass. Every instance sent is
    recorded as transmission in the infrastructure ledger, a resent one again.
    """
    app = obj.app()
    with app.sessions.begin() as session:
        queued = requeue_study(session, study_instance_uid, app.clock(), resend_all=resend_all)
    if queued.to_send == 0:
        click.echo(
            f"study {study_instance_uid}: nothing to send: {queued.destination} has accepted all "
            f"{queued.instances} instance(s); `router studies forward {study_instance_uid} --all` sends them again"
        )
        return
    click.echo(
        f"study {study_instance_uid}: {queued.to_send} of {queued.instances} instance(s) queued for {queued.destination}"
    )
    if not obj.settings.forwarding.enabled:
        click.echo("note: [forwarding] enabled is false in this configuration: only a server with it on sends them")


@studies_group.command("recheck")
@click.pass_obj
def recheck(obj: CliContext) -> None:
    """Re-check every open assignment and held study against today's roster.

    A running server does this every ``routing.recheck_interval`` seconds and after each roster
    command; run it by hand after a roster command that warned its re-evaluation failed. Reads
    past their turnaround target are escalated (reassigned, or flagged for an admin).
    """
    results = obj.app().routing.reevaluate("manual recheck")
    withdrawn = [result for result in results if result.withdrawn_npi is not None]
    assigned = [result for result in results if result.withdrawn_npi is None and result.status == StudyStatus.ASSIGNED]
    for result in [*withdrawn, *assigned]:
        _say(result)
    held = sum(1 for result in results if result.status == StudyStatus.HELD)
    click.echo(
        f"rechecked: {len(withdrawn)} withdrawn from a reader no longer eligible, "
        f"{len(assigned)} held stud{'y' if len(assigned) == 1 else 'ies'} assigned, {held} held"
    )
    from router.services.escalation import escalate_breached

    for result in escalate_breached(obj.app().routing):
        target = f"reassigned to NPI {result.assigned_npi}" if result.withdrawn_npi else "flagged for an admin"
        click.echo(f"{result.study_instance_uid}: turnaround breached, {target}")


def _say(result: RouteResult) -> None:
    uid = (
        f"{result.study_instance_uid} (withdrawn from NPI {result.withdrawn_npi})"
        if result.withdrawn_npi
        else result.study_instance_uid
    )
    if result.status == StudyStatus.ASSIGNED:
        click.echo(f"study {uid}: assigned to NPI {result.assigned_npi} ({result.exam_state})")
    elif result.status == StudyStatus.HELD:
        reason = result.hold_reason.value if result.hold_reason is not None else "no reason recorded"
        click.echo(f"study {uid}: held ({reason})")
    else:
        click.echo(f"study {uid}: {result.status.value}")


def register(cli: click.Group) -> None:
    """Add ``studies`` to the root group."""
    cli.add_command(studies_group)
