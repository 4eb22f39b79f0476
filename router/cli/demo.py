"""``router demo``: the main job end to end on the embedded default, in one command.

Fresh data directory (SQLite + archive folder), the real listener on a free local port, the
sample roster and facilities from ``config/demo/``, every study in ``sample_dicom/`` sent over
real C-STORE (the first folder under ``sample_dicom/`` is the calling AE title) after its order
(ORM^O01 over MLLP, from ``config/demo/orders.csv``), routing, then a final signed report
(ORU^R01 over MLLP) from each assigned radiologist, which completes the read and bills it; then
the assignments and both ledgers printed. No read is marked complete by hand.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import click
from pydicom import dcmread

from router.app import RouterApp
from router.cli.context import CliContext
from router.cli.output import HELD_STYLE, emit_notes, emit_table, label, wide_option
from router.config import Settings
from router.dicom.scu import Destination, SendError, send_files
from router.domain.enums import Priority, StudyStatus
from router.domain.infra_cost import next_month
from router.errors import RouterError
from router.hl7.compose import compose_order, compose_report
from router.hl7.mllp import MllpError, send_message
from router.resources import PACKAGED_CONFIG_DIR, PACKAGED_SAMPLES_DIR
from router.server import RouterServer
from router.services.accrual import AccrualService
from router.services.studies import StudyViews

DEFAULT_SAMPLES = PACKAGED_SAMPLES_DIR
DEFAULT_DEMO_CONFIG = PACKAGED_CONFIG_DIR / "demo"


def sample_studies(samples: Path) -> list[tuple[str, Path, list[Path]]]:
    """``(calling AE title, case folder, files)`` for every case under ``samples``, sorted."""
    cases = []
    for ae_dir in sorted(p for p in samples.iterdir() if p.is_dir() and not p.name.startswith((".", "_"))):
        for case_dir in sorted(p for p in ae_dir.iterdir() if p.is_dir()):
            files = sorted(case_dir.glob("*.dcm"))
            if files:
                cases.append((ae_dir.name, case_dir, files))
    return cases


@click.command("demo")
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Data directory (default: a fresh temporary one).",
)
@click.option(
    "--samples",
    type=click.Path(file_okay=False, exists=True, path_type=Path),
    default=DEFAULT_SAMPLES,
    show_default=True,
    help="Folder of sample studies: <calling AE>/<case>/*.dcm.",
)
@click.option(
    "--roster-dir",
    type=click.Path(file_okay=False, exists=True, path_type=Path),
    default=DEFAULT_DEMO_CONFIG,
    show_default=True,
    help="Folder with facilities.csv, roster.csv and radiologists.csv.",
)
@click.option(
    "--stable-seconds",
    type=click.FloatRange(0.0, 60.0),
    default=2.0,
    show_default=True,
    help="Quiet time before a study is routed.",
)
@wide_option
@click.pass_obj
def demo(
    obj: CliContext, data_dir: Path | None, samples: Path, roster_dir: Path, stable_seconds: float, wide: bool
) -> None:
    """Run the whole job on the embedded default and print assignments and both ledgers.

    The demo loads a sample roster, marks every read reported and bills it: it only ever runs in
    a new or empty data directory, never on a real one.
    """
    data_dir = data_dir or obj.data_dir_option  # `router --data-dir DIR demo` too
    if data_dir is not None and data_dir.exists() and (not data_dir.is_dir() or any(data_dir.iterdir())):
        raise RouterError(
            f"--data-dir {data_dir} is not empty: the demo loads a sample roster and bills sample reads, so it only runs in a new or empty folder"
        )
    data_dir = data_dir or Path(tempfile.mkdtemp(prefix="router-demo-"))
    settings = (
        obj.settings.with_data_dir(data_dir)
        .replace("database", url=None)
        .replace("paths", archive_dir=None)
        .replace("listener", host="127.0.0.1", port=0, workers=1, allowed_calling_ae_titles=(), allowed_addresses=())
        .replace("routing", stable_seconds=stable_seconds, poll_interval=0.25)
        .replace("http", enabled=False)
        .replace("hl7", enabled=True, host="127.0.0.1", port=0, tls=False)
    )
    if not settings.billing.group_npi:  # sample billing group identifiers, so the claim lines are complete
        settings = settings.replace("billing", group_npi=DEMO_GROUP_NPI, tin=settings.billing.tin or DEMO_TIN)
    if not obj.verbose:
        settings = settings.replace("logging", level="WARNING")
    obj.settings = settings
    app = obj.app(upgrade=True)
    click.echo(f"data directory: {data_dir}", err=True)
    loaded = app.roster.load_demo(
        (roster_dir / "facilities.csv").read_text(encoding="utf-8"),
        (roster_dir / "roster.csv").read_text(encoding="utf-8"),
        (roster_dir / "radiologists.csv").read_text(encoding="utf-8"),
        obj.os_user(),
    )
    click.echo(f"roster loaded: {loaded}", err=True)
    server = RouterServer(app)
    server.start()
    try:
        destination = Destination(settings.listener.ae_title, "127.0.0.1", server.ports[0])
        cases = sample_studies(samples)
        if not cases:
            raise RouterError(f"no sample studies under {samples}")
        assert server.hl7_port is not None
        hl7_port = server.hl7_port
        orders = _demo_orders(roster_dir / "orders.csv")
        for accession, row in orders.items():
            _send_hl7(
                hl7_port,
                compose_order(
                    accession,
                    row["cpt"],
                    row["description"],
                    Priority(row["priority"]),
                    f"DEMO-ORD-{accession}",
                    app.clock(),
                    referring_npi=row.get("referring_npi") or "",
                    referring_name=row.get("referring_name") or "",
                    patient_class=row.get("patient_class") or "",
                    diagnoses=[code for code in (row.get("diagnoses") or "").split("|") if code],
                ),
            )
        click.echo(f"sent {len(orders)} order(s) over MLLP to port {hl7_port}", err=True)
        sent = 0
        for calling_ae, case_dir, files in cases:
            try:
                results = send_files(files, destination, calling_ae_title=calling_ae)
            except SendError as exc:
                raise RouterError(f"sending {case_dir.name} failed: {exc}") from exc
            bad = [f"{r.path.name}: {r.status}" for r in results if not r.ok]
            if bad:
                raise RouterError(f"C-STORE of {case_dir.name} failed: {', '.join(bad)}")
            sent += len(results)
        click.echo(
            f"sent {sent} instance(s) of {len(cases)} stud(ies) over C-STORE to port {server.ports[0]}", err=True
        )
        views = StudyViews(app.sessions, app.routing)
        deadline = time.monotonic() + stable_seconds + 30
        while time.monotonic() < deadline:
            if not any(row["status"] == StudyStatus.RECEIVING.value for row in views.list()):
                break
            time.sleep(0.2)
        else:
            raise RouterError("studies were not routed in time")
        reports = 0
        for row in views.list():
            if row["status"] != StudyStatus.ASSIGNED.value or not row["accession_number"]:
                continue
            reader = _current(views.show(row["study_instance_uid"]))
            if reader is None:
                continue
            family, _, given = str(reader["name"]).partition("^")
            now = app.clock()
            _send_hl7(
                hl7_port,
                compose_report(
                    str(row["accession_number"]),
                    "F",
                    str(reader["npi"]),
                    family,
                    given,
                    now.replace(microsecond=0),
                    f"DEMO-RPT-{row['accession_number']}",
                    now,
                ),
            )
            reports += 1
        click.echo(f"sent {reports} final signed report(s) over MLLP: each completes its read", err=True)
    finally:
        server.stop(drain_timeout=5)
    case_of = {_study_uid(files[0]): f"{case_dir.name}" for _, case_dir, files in cases}
    rows = sorted(views.list(), key=lambda row: case_of.get(row["study_instance_uid"], row["study_instance_uid"]))
    details = {row["study_instance_uid"]: views.show(row["study_instance_uid"]) for row in rows}
    held = [row["status"] == StudyStatus.HELD.value for row in rows]
    case_names = [label(case_of.get(row["study_instance_uid"])) or "?" for row in rows]
    emit_table(
        "Assignments (reads completed by the signed HL7 reports: status completed)",
        ["case", "sender AE", "status", "exam state (from)", "radiologist", "license relied on"]
        + (["hold reason / note", "study"] if wide else []),
        [
            (
                case,
                row["calling_ae_title"],
                "HELD" if is_held else row["status"],
                f"{row['exam_state']} ({label(row['exam_state_source'])})" if row["exam_state"] else None,
                _reader(details[row["study_instance_uid"]], wide),
                f"{row['license_state']}-{row['license_number']}" if row["license_state"] else None,
            )
            + ((_note(row, details[row["study_instance_uid"]]), row["study_instance_uid"]) if wide else ())
            for case, row, is_held in zip(case_names, rows, held, strict=True)
        ],
        wide=wide,
        row_styles=[HELD_STYLE if is_held else None for is_held in held],
    )
    if not wide:
        hold_notes = [
            (case, _note(row, details[row["study_instance_uid"]])) for case, row in zip(case_names, rows, strict=True)
        ]
        emit_notes("Hold reasons and location conflicts", [(case, note) for case, note in hold_notes if note])
    _print_ledgers(app, case_of, wide)
    config = _write_demo_config(data_dir, settings)
    click.echo(
        f"explore further: router --config {config} studies list  (also: studies explain UID, ledger export --format csv)",
        err=True,
    )


#: Billing group identifiers the demo uses when the config sets none (a valid NPI; a sample TIN).
DEMO_GROUP_NPI = "1999999992"
DEMO_TIN = "123456789"


def _print_ledgers(app: RouterApp, case_of: dict[str, str], wide: bool) -> None:
    """Both ledgers, one row per record; without ``wide`` the columns that fit 80 characters."""
    professional = app.ledgers.professional()
    emit_table(
        "Professional ledger: claim lines (CPT-26, POS, ICD-10-CM, cents; DOS = signed)",
        ["case", "accession", "CPT", "POS", "ICD-10-CM", "cents", "DOS"]
        + (["rendering NPI", "referring NPI", "billing", "CPT from", "license", "coder review"] if wide else []),
        [
            (
                label(case_of.get(entry["study_instance_uid"])),
                entry["accession_number"],
                "-".join([entry["cpt_code"] or "?", *(entry["modifiers"] or [])])
                + (" review" if entry["coder_review"] and not wide else ""),
                entry["place_of_service"],
                " ".join(entry["diagnosis_codes"] or []) or None,
                entry["charge_cents"],
                entry["date_of_service"],
            )
            + (
                (
                    entry["rendering_npi"],
                    entry["referring_npi"],
                    entry["billing_arrangement"],
                    label(entry["cpt_source"]),
                    f"{entry['license_state']}-{entry['license_number']}",
                    entry["review_reason"] or "no",
                )
                if wide
                else ()
            )
            for entry in professional
        ],
        wide=wide,
    )
    # Storage accrues for whole months; the demo's month is not over, so it is accrued as if it
    # were (a throwaway database): each study's bytes from the day received to the month's end.
    month_over = dt.datetime.combine(next_month(app.clock().date()), dt.time(0), tzinfo=dt.UTC)
    AccrualService(app.sessions, app.accrual.policy, lambda: month_over).accrue()
    rate = app.settings.billing.storage_cents_per_gib_month
    emit_table(
        f"Infrastructure ledger: cost, never on a claim ({rate} cents/GiB-month stored, this month as if it ended)",
        ["case", "kind", "instances", "bytes", "cents (exact)", "note"],
        [
            (
                label(case_of.get(entry["study_instance_uid"])),
                entry["kind"],
                entry["instance_count"],
                entry["size_bytes"],
                entry["amount_cents"],  # six decimals: sample files are a few kB
                entry["note"],
            )
            for entry in app.ledgers.infrastructure()
        ],
        wide=wide,
    )
    emit_table(
        "Infrastructure statement per client (total rounded half up once, never per record)",
        ["month", "client", "records", "exact cents", "total cents"],
        [
            (
                line["month"],
                line["client_ae_title"],
                line["storage_records"] + line["transmission_records"],
                line["total_cents_exact"],
                line["total_cents"],
            )
            for line in app.accrual.statement()
        ],
        wide=wide,
    )


def _demo_orders(path: Path) -> dict[str, dict[str, str]]:
    """``accession -> row`` of the demo's orders.csv (none if absent): cpt, description, priority and,
    when the file has them, patient_class (PV1-2), diagnoses (ICD-10-CM, ``|``-separated), referring_npi
    and referring_name (``family^given``)."""
    if not path.exists():
        return {}
    with path.open(encoding="utf-8", newline="") as handle:
        return {row["accession"]: row for row in csv.DictReader(handle)}


def _send_hl7(port: int, payload: bytes) -> None:
    try:
        ack = send_message("127.0.0.1", port, payload, timeout=10)
    except (OSError, MllpError) as exc:
        raise RouterError(f"sending HL7 to the demo listener failed: {exc}") from exc
    if b"MSA|AA|" not in ack:
        raise RouterError(f"the demo listener did not accept a message: {ack.decode('utf-8', 'replace')!r}")


def _current(document: dict[str, object]) -> dict[str, object] | None:
    """The open assignment of a ``studies show`` document (``None`` if there is none)."""
    assignments = document.get("assignments")
    if not isinstance(assignments, list):
        return None
    open_ones = [a for a in assignments if isinstance(a, dict) and not a.get("superseded_at")]
    return open_ones[-1] if open_ones else None


def _study_uid(path: Path) -> str:
    return str(dcmread(path, stop_before_pixels=True, specific_tags=["StudyInstanceUID"]).StudyInstanceUID)


def _note(row: dict[str, Any], document: dict[str, Any]) -> str | None:
    if row["hold_reason"]:
        reason, detail = label(str(row["hold_reason"])), str(row["hold_detail"] or "")
        return detail if detail.startswith(f"{reason}:") else f"{reason}: {detail}"
    conflicts = document.get("location_conflicts") or []
    if conflicts:
        return "conflict: " + "; ".join(f"{c['source']} says {c['state']}" for c in conflicts)
    return None


def _reader(document: dict[str, Any], wide: bool = False) -> str | None:
    assignments = [a for a in document.get("assignments", []) if not a.get("superseded_at")]
    if not assignments:
        return None
    current = assignments[-1]
    return f"{current['name']} ({current['npi']})" if wide else str(current["name"])


def register(cli: click.Group) -> None:
    """Add ``demo`` to the root group."""
    cli.add_command(demo)


def _write_demo_config(data_dir: Path, settings: Settings) -> Path:
    """``<data_dir>/router.toml``: the demo's data directory and its sample billing group, so reads
    completed or corrected after the demo carry the same billing NPI and TIN (0600, like the data)."""
    path = data_dir / "router.toml"
    billing = settings.billing
    lines = [
        "# written by `router demo`: its data directory and sample billing group identifiers",
        "[paths]",
        f"data_dir = {json.dumps(str(data_dir))}",
        "[billing]",
        f"group_npi = {json.dumps(billing.group_npi or '')}",
        f"tin = {json.dumps(billing.tin or '')}",
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    path.chmod(0o600)
    return path
