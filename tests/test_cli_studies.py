"""`router studies ...` and `router ledger ...` through the CLI, on a database filled over real C-STORE."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
import time
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from click.testing import CliRunner
from sqlalchemy import select

from router.cli import cli
from router.config import Settings
from router.db.models import Study
from router.domain.enums import StudyStatus
from router.domain.infra_cost import next_month
from router.server import RouterServer
from router.services.accrual import AccrualService
from tests.conftest import DEMO_CONFIG, SAMPLES, make_settings
from tests.dicom_helpers import send_paths

pytestmark = pytest.mark.network


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    """These tests show the patient-residence conflicts, so the provisional source is switched on."""
    return make_settings(tmp_path, database_url, use_patient_address=True)


@pytest.fixture
def routed(server: RouterServer, tmp_path: Path) -> tuple[RouterServer, Path, dict[str, str]]:
    """The demo roster loaded and every sample routed; returns the server, a config and case -> UID."""
    app = server.app
    app.roster.load_demo(
        *((DEMO_CONFIG / name).read_text() for name in ("facilities.csv", "roster.csv", "radiologists.csv")), "tester"
    )
    cases: dict[str, str] = {}
    from pydicom import dcmread

    for ae_dir in sorted(p for p in SAMPLES.iterdir() if p.is_dir()):
        for case_dir in sorted(p for p in ae_dir.iterdir() if p.is_dir()):
            files = sorted(case_dir.glob("*.dcm"))
            assert send_paths(server.ports[0], files, calling_ae=ae_dir.name) == [0] * len(files)
            cases[case_dir.name] = str(dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        with app.sessions() as session:
            statuses = [s.status for s in session.scalars(select(Study))]
        if len(statuses) == len(cases) and StudyStatus.RECEIVING not in statuses:
            break
        time.sleep(0.1)
    config = tmp_path / "cli.toml"
    config.write_text(
        f'[paths]\ndata_dir = "{app.settings.paths.data_dir}"\n[database]\nurl = "{app.settings.database_url}"\n'
    )
    return server, config, cases


def _run(config: Path, *args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, ["--config", str(config), *args])
    return result.exit_code, result.stdout, result.stderr


def test_list_json_is_one_document_with_the_contract_fields(routed) -> None:  # type: ignore[no-untyped-def]
    _, config, cases = routed
    code, out, _ = _run(config, "studies", "list", "--json")
    assert code == 0
    rows = {row["study_instance_uid"]: row for row in json.loads(out)}
    assert set(rows) == set(cases.values())
    facility = rows[cases["facility_tx"]]
    assert (facility["status"], facility["exam_state"], facility["exam_state_source"], facility["instance_count"]) == (
        "assigned",
        "TX",
        "facility",
        3,
    )
    assert facility["assigned_npi"] in {"1000000012", "1000000020"}
    held = rows[cases["no_state"]]
    assert (held["status"], held["hold_reason"], held["exam_state"], held["assigned_npi"]) == (
        "held",
        "no_exam_state",
        None,
        None,
    )
    code, out, _ = _run(config, "studies", "list", "--status", "held", "--json")
    assert {row["study_instance_uid"] for row in json.loads(out)} == {cases["no_state"], cases["territory_pr"]}


def test_show_lists_senders_conflicts_and_considered_readers(routed) -> None:  # type: ignore[no-untyped-def]
    _, config, cases = routed
    code, out, _ = _run(config, "studies", "show", cases["conflict_ok_tx"], "--json")
    assert code == 0
    shown = json.loads(out)
    assert shown["exam_state"] == "OK" and shown["exam_state_source"] == "institution_address"
    assert [(c["source"], c["state"]) for c in shown["location_conflicts"]] == [("patient_address", "TX")]
    assert [s["calling_ae_title"] for s in shown["senders"]] == ["ER_TULSA"]
    decision = shown["decisions"][-1]
    assert decision["outcome"] == "assigned" and decision["exam_state"] == "OK"
    assert {c["npi"]: c["eligible"] for c in decision["candidates"]} == {"1000000012": True}
    assert set(decision["unlicensed_npis"]) == {"1000000020", "1000000038", "1000000046", "1000000053"}


def test_explain_gives_reasons_and_mqsa(routed) -> None:  # type: ignore[no-untyped-def]
    _, config, cases = routed
    code, out, _ = _run(config, "studies", "explain", cases["mammo_wy"], "--json")
    assert code == 0
    document = json.loads(out)
    verdicts = {v["npi"]: v for v in document["radiologists"]}
    assert verdicts["1000000046"]["eligible"] is True
    assert verdicts["1000000053"]["eligible"] is False
    assert "not MQSA qualified (mammography)" in verdicts["1000000053"]["reasons"]
    assert verdicts["1000000012"]["reasons"][0] == "no license in WY"
    code, out, _ = _run(config, "studies", "explain", cases["territory_pr"])
    assert code == 0 and "PR is not an operating IMLC member" in out


def test_assign_refuses_an_ineligible_reader_with_the_reason(routed) -> None:  # type: ignore[no-untyped-def]
    _, config, cases = routed
    code, _, err = _run(config, "studies", "assign", cases["territory_pr"], "--npi", "1000000012")
    assert code == 1
    assert err.strip() == f"error: NPI 1000000012 may not read study {cases['territory_pr']}: no license in PR"
    code, _, err = _run(config, "studies", "assign", cases["territory_pr"], "--npi", "1234567890")
    assert code == 1 and "check digit" in err and "Traceback" not in err


def test_set_state_then_complete_bills_modifier_26(routed) -> None:  # type: ignore[no-untyped-def]
    _, config, cases = routed
    code, out, _ = _run(config, "studies", "set-state", cases["no_state"], "Colorado")
    assert code == 0 and "assigned to NPI" in out and "(CO)" in out
    moment = dt.datetime.now(dt.timezone(dt.timedelta(hours=-7))).replace(microsecond=0)
    code, out, err = _run(config, "studies", "complete", cases["no_state"], "--at", moment.isoformat(), "--json")
    assert code == 0, err
    done = json.loads(out)
    # no registered facility: the date of service is the interpretation date where the exam
    # happened, in the exam state's zone (router.domain.state_zones; Colorado: America/Denver),
    # not routing.timezone (UTC): the two differ from 00:00 to 07:00 UTC
    assert done["date_of_service"] == moment.astimezone(ZoneInfo("America/Denver")).date().isoformat()
    code, out, _ = _run(config, "ledger", "professional", "--json")
    (entry,) = [e for e in json.loads(out) if e["study_instance_uid"] == cases["no_state"]]
    # CR KNEE "Knee 3 views": from the map, provisional, with 26
    assert (entry["exam_state"], entry["modifier"], entry["cpt_source"], entry["coder_review"]) == (
        "CO",
        "26",
        "map",
        True,
    )
    assert entry["cpt_code"] == "73562"
    code, _, err = _run(config, "studies", "complete", cases["no_state"])
    assert code == 1 and "already completed" in err


def test_bad_inputs_give_one_line_and_the_right_exit_code(routed) -> None:  # type: ignore[no-untyped-def]
    _, config, cases = routed
    code, _, err = _run(config, "studies", "show", "1.2.3.404")
    assert (code, err.strip()) == (1, "error: no study 1.2.3.404")
    code, _, err = _run(config, "studies", "set-state", cases["no_state"], "APO")
    assert code == 1 and "not a US licensing jurisdiction" in err
    code, _, err = _run(config, "studies", "complete", cases["facility_tx"], "--at", "yesterday")
    assert code == 2 and "ISO-8601" in err
    code, _, err = _run(config, "studies", "list", "--status", "lost")
    assert code == 2
    code, _, err = _run(config, "ledger", "professional", "--json", "--csv")
    assert code == 2


def test_ledgers_select_a_period(routed) -> None:  # type: ignore[no-untyped-def]
    _, config, cases = routed
    code, _, err = _run(config, "studies", "complete", cases["facility_tx"])
    assert code == 0, err
    # the date of service is the read's day at the facility (CT_NORTH: America/Chicago)
    service_day = dt.datetime.now(ZoneInfo("America/Chicago")).date()
    today = dt.datetime.now(dt.UTC).date()
    yesterday = today - dt.timedelta(days=1)

    def uids(*args: str) -> list[str]:
        code, out, err = _run(config, "ledger", *args, "--json")
        assert code == 0, err
        return [entry["study_instance_uid"] for entry in json.loads(out)]

    day = service_day.isoformat()
    assert cases["facility_tx"] in uids("professional", "--from", day, "--until", day)
    assert uids("professional", "--until", (service_day - dt.timedelta(days=1)).isoformat()) == []
    assert uids("professional", "--from", (service_day + dt.timedelta(days=1)).isoformat()) == []
    # storage accrues once a month is over: accrued as if this one were, the records are made then
    server, _, _ = routed
    month_over = dt.datetime.combine(next_month(today), dt.time(0), tzinfo=dt.UTC)
    AccrualService(server.app.sessions, server.app.accrual.policy, lambda: month_over).accrue()
    every = uids("infrastructure")
    assert len(every) >= 8  # one storage record per routed study
    assert uids("infrastructure", "--from", month_over.date().isoformat()) == every
    assert uids("infrastructure", "--until", (month_over.date() - dt.timedelta(days=1)).isoformat()) == []
    assert uids("infrastructure", "--month", today.strftime("%Y-%m")) == every
    code, _, err = _run(
        config, "ledger", "infrastructure", "--from", today.isoformat(), "--until", yesterday.isoformat()
    )
    assert code == 2 and f"--until {yesterday.isoformat()} is before --from {today.isoformat()}" in err


def test_extreme_dates_are_one_line_errors(routed) -> None:  # type: ignore[no-untyped-def]
    _, config, cases = routed
    for at in ("9999-12-31T23:59:59-12:00", "0001-01-01T00:00+05:00"):
        code, _, err = _run(config, "studies", "complete", cases["facility_tx"], "--at", at)
        assert code == 2 and "is not an ISO-8601 date-time" in err and "Traceback" not in err
    code, out, err = _run(config, "ledger", "infrastructure", "--until", "9999-12-31", "--json")
    assert code == 0, err
    assert isinstance(json.loads(out), list)


def test_after_a_reassignment_the_read_cannot_predate_it(routed) -> None:  # type: ignore[no-untyped-def]
    _, config, cases = routed
    code, out, err = _run(config, "studies", "show", cases["facility_tx"], "--json")
    first = json.loads(out)["assigned_npi"]
    other = next(npi for npi in ("1000000012", "1000000020", "1000000038", "1000000046", "1000000053") if npi != first)
    code, _, err = _run(config, "studies", "assign", cases["facility_tx"], "--npi", other)
    assert code == 0, err  # the demo roster has a second reader licensed in Texas
    two_minutes_ago = (dt.datetime.now(dt.UTC) - dt.timedelta(minutes=2)).isoformat()
    code, _, err = _run(config, "studies", "complete", cases["facility_tx"], "--at", two_minutes_ago)
    assert (code, err.strip()) == (1, "error: interpretation time is before the study was assigned to this radiologist")
    code, _, err = _run(config, "studies", "complete", cases["facility_tx"])
    assert code == 0, err


def test_output_into_a_closed_pipe_ends_quietly(tmp_path: Path) -> None:
    """`router studies list | head`: the reader stopping early is not an error to print."""
    command = [sys.executable, "-m", "router", "--data-dir", str(tmp_path / "var")]
    subprocess.run([*command, "db", "upgrade"], check=True, capture_output=True, timeout=120)
    listing = subprocess.Popen([*command, "studies", "list"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert listing.stdout is not None and listing.stderr is not None
    listing.stdout.close()  # before it writes: its first write finds the pipe closed
    errors = listing.stderr.read()
    assert (listing.wait(timeout=120), errors) == (1, b"")  # was "error: Broken pipe"
