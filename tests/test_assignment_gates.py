"""Priority, shifts, facility preferences/exclusions and the facility/address conflict hold, on a real database.

The clock fixture is Sunday 2026-11-29 15:00 UTC (09:00 in Chicago, CST, UTC-6).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from roster_fixtures import NPI_A, NPI_B, NPI_C, OS_USER, study_state
from sqlalchemy import select

from router.app import RouterApp
from router.cli import cli
from router.db.models import RoutingDecision, Series, Study
from router.domain.enums import HoldReason, StudyStatus
from router.server import RouterServer
from tests.conftest import FakeClock, make_settings

CHICAGO = "America/Chicago"


@pytest.fixture
def app(tmp_path: Path, database_url: str, clock: FakeClock) -> Iterator[RouterApp]:
    settings = make_settings(tmp_path, database_url, stable_seconds=60.0, stat_stable_seconds=5.0)
    router_app = RouterApp.open(settings, upgrade=True, clock=clock)
    try:
        yield router_app
    finally:
        router_app.close()


def _roster(app: RouterApp, *npis: str) -> None:
    app.roster.facilities.add("CT_NORTH", "TX", OS_USER, name="North Imaging", timezone=CHICAGO)
    for index, npi in enumerate(npis):
        app.roster.radiologists.add(npi, f"Reader^{index}", OS_USER)
        app.roster.licenses.add(npi, "TX", f"TX-{index}", dt.date(2028, 6, 30), OS_USER, issued=dt.date(2020, 1, 1))


def _study(
    app: RouterApp,
    uid: str,
    quiet_seconds: float,
    priority: str | None = None,
    institution_address: str | None = None,
    calling_ae: str = "CT_NORTH",
    modality: str = "CT",
    body_part: str | None = None,
    description: str | None = None,
) -> None:
    received = app.clock() - dt.timedelta(seconds=quiet_seconds)
    with app.sessions.begin() as session:
        session.add(
            Study(
                study_instance_uid=uid,
                status=StudyStatus.RECEIVING,
                first_calling_ae_title=calling_ae,
                modalities=modality,
                body_part=body_part,
                study_description=description,
                priority=priority,
                institution_address=institution_address,
                instance_count=0,
                size_bytes=0,
                first_received_at=received,
                last_received_at=received,
                needs_review=False,
                series=[Series(series_instance_uid=f"{uid}.1", modality=modality, body_part=body_part)],
            )
        )


def _last_decision(app: RouterApp, uid: str) -> RoutingDecision:
    with app.sessions() as session:
        study = session.scalars(select(Study).where(Study.study_instance_uid == uid)).one()
        return session.scalars(
            select(RoutingDecision).where(RoutingDecision.study_id == study.id).order_by(RoutingDecision.id.desc())
        ).first()


def _reasons(decision: RoutingDecision) -> dict[str, list[str]]:
    return {c["npi"]: c["reasons"] for c in decision.candidates}


def test_stat_study_skips_the_quiet_period_and_is_assigned_first_to_an_on_shift_reader(app: RouterApp) -> None:
    _roster(app, NPI_A, NPI_B, NPI_C)
    app.roster.shifts.add(NPI_A, "mon-fri", "07:00", "19:00", CHICAGO, OS_USER)  # off on Sunday
    app.roster.shifts.add(NPI_B, "daily", "07:00", "19:00", CHICAGO, OS_USER)
    app.roster.shifts.add(NPI_C, "daily", "07:00", "19:00", CHICAGO, OS_USER)
    _study(app, "1.2.3.1", quiet_seconds=120)  # routine, quiet longest
    _study(app, "1.2.3.2", quiet_seconds=10, priority="STAT")  # quiet 10 s: past stat_stable_seconds (5)
    _study(app, "1.2.3.3", quiet_seconds=10, priority="ROUTINE")  # not quiet for stable_seconds (60) yet
    results = app.routing.route_due()
    assert [r.study_instance_uid for r in results] == ["1.2.3.2", "1.2.3.1"]  # STAT first
    assert study_state(app, "1.2.3.2")["current_npi"] == NPI_B  # first on-shift reader of the tie
    assert study_state(app, "1.2.3.1")["current_npi"] == NPI_C  # B now has one open read
    assert study_state(app, "1.2.3.3")["status"] is StudyStatus.RECEIVING
    stat = _last_decision(app, "1.2.3.2")
    assert _reasons(stat)[NPI_A] == ["off shift (mon,tue,wed,thu,fri 07:00-19:00 America/Chicago)"]
    assert {c["npi"]: c["eligible"] for c in stat.candidates}[NPI_A] is False


def test_off_shift_reader_is_never_assigned_and_the_study_waits_for_the_shift(app: RouterApp, clock: FakeClock) -> None:
    _roster(app, NPI_A)
    app.roster.shifts.add(NPI_A, "mon-fri", "07:00", "19:00", CHICAGO, OS_USER)
    _study(app, "1.2.3.10", quiet_seconds=120)
    app.routing.route_due()
    state = study_state(app, "1.2.3.10")
    assert (state["status"], state["hold_reason"]) == (StudyStatus.HELD, HoldReason.NO_READER_ON_SHIFT)
    assert _last_decision(app, "1.2.3.10").hold_reason is HoldReason.NO_READER_ON_SHIFT
    from router.services.studies import StudyViews

    explained = StudyViews(app.sessions, app.routing).explain("1.2.3.10")
    reader = next(item for item in explained["radiologists"] if item["npi"] == NPI_A)
    assert (reader["eligible"], reader["offered_now"]) == (True, False)
    assert reader["reasons"] == ["off shift (mon,tue,wed,thu,fri 07:00-19:00 America/Chicago)"]
    assert explained["decisions"][-1]["hold_reason"] == "no_reader_on_shift"
    server = RouterServer(app)
    clock.set(dt.datetime(2026, 11, 30, 12, 59, tzinfo=dt.UTC))  # Monday 06:59 CST
    server.recheck()
    assert study_state(app, "1.2.3.10")["status"] is StudyStatus.HELD
    clock.set(dt.datetime(2026, 11, 30, 13, 0, tzinfo=dt.UTC))  # Monday 07:00 CST: the shift starts
    server.recheck()
    state = study_state(app, "1.2.3.10")
    assert (state["status"], state["current_npi"]) == (StudyStatus.ASSIGNED, NPI_A)


def test_overnight_shift_covers_the_early_morning_only(app: RouterApp, clock: FakeClock) -> None:
    _roster(app, NPI_A)
    app.roster.shifts.add(NPI_A, "sat", "19:00", "07:00", CHICAGO, OS_USER)  # Sat 19:00 -> Sun 07:00
    clock.set(dt.datetime(2026, 11, 29, 12, 59, tzinfo=dt.UTC))  # Sunday 06:59 CST: still on
    _study(app, "1.2.3.20", quiet_seconds=120)
    app.routing.route_due()
    assert study_state(app, "1.2.3.20")["current_npi"] == NPI_A
    clock.set(dt.datetime(2026, 11, 29, 13, 0, tzinfo=dt.UTC))  # Sunday 07:00: ended
    _study(app, "1.2.3.21", quiet_seconds=120)
    app.routing.route_due()
    assert study_state(app, "1.2.3.21")["hold_reason"] is HoldReason.NO_READER_ON_SHIFT


def test_require_shift_holds_for_readers_without_shifts(tmp_path: Path, database_url: str, clock: FakeClock) -> None:
    settings = make_settings(tmp_path, database_url, stable_seconds=60.0, require_shift=True)
    with RouterApp.open(settings, upgrade=True, clock=clock) as router_app:
        _roster(router_app, NPI_A)
        _study(router_app, "1.2.3.30", quiet_seconds=120)
        router_app.routing.route_due()
        assert study_state(router_app, "1.2.3.30")["hold_reason"] is HoldReason.NO_READER_ON_SHIFT
        assert _reasons(_last_decision(router_app, "1.2.3.30"))[NPI_A] == [
            "no shifts defined and routing.require_shift is on"
        ]


def test_excluded_reader_is_never_assigned_and_loses_open_reads(app: RouterApp) -> None:
    _roster(app, NPI_A, NPI_B)
    _study(app, "1.2.3.40", quiet_seconds=120)
    app.routing.route_due()
    assert study_state(app, "1.2.3.40")["current_npi"] == NPI_A  # tie: lowest NPI
    change = app.roster.facility_readers.set_rule("CT_NORTH", NPI_A, "exclude", OS_USER)
    assert [item.describe() for item in change.rerouted]  # the open read moved
    state = study_state(app, "1.2.3.40")
    assert state["current_npi"] == NPI_B
    assert state["assignments"][0][2].endswith(f"NPI {NPI_A} no longer eligible: excluded by facility CT_NORTH")
    _study(app, "1.2.3.41", quiet_seconds=120)
    app.routing.route_due()
    assert study_state(app, "1.2.3.41")["current_npi"] == NPI_B  # B has more open work, A is still excluded
    assert _reasons(_last_decision(app, "1.2.3.41"))[NPI_A] == ["excluded by facility CT_NORTH"]


def test_preferred_reader_wins_a_tie(app: RouterApp) -> None:
    _roster(app, NPI_A, NPI_B)
    app.roster.facility_readers.set_rule("CT_NORTH", NPI_B, "prefer", OS_USER)
    _study(app, "1.2.3.50", quiet_seconds=120)
    app.routing.route_due()
    assert study_state(app, "1.2.3.50")["current_npi"] == NPI_B
    _study(app, "1.2.3.51", quiet_seconds=120)
    app.routing.route_due()
    assert study_state(app, "1.2.3.51")["current_npi"] == NPI_A  # no tie any more: B has one open read


def test_facility_state_contradicted_by_institution_address_is_held_for_review(app: RouterApp) -> None:
    _roster(app, NPI_A)
    _study(app, "1.2.3.60", quiet_seconds=120, institution_address="100 Main St, Tulsa, OK 74103")
    app.routing.route_due()
    state = study_state(app, "1.2.3.60")
    assert (state["status"], state["hold_reason"]) == (StudyStatus.HELD, HoldReason.FACILITY_ADDRESS_CONFLICT)
    with app.sessions() as session:
        detail = session.scalars(select(Study.hold_detail).where(Study.study_instance_uid == "1.2.3.60")).one()
    assert detail.startswith("facility registered in TX but InstitutionAddress names OK")
    result = app.routing.set_state("1.2.3.60", "TX", OS_USER)  # the admin resolves it
    assert (result.status, result.assigned_npi) == (StudyStatus.ASSIGNED, NPI_A)
    _study(app, "1.2.3.61", quiet_seconds=120, institution_address="1 Elm St, Dallas, TX 75201")  # agrees
    app.routing.route_due()
    assert study_state(app, "1.2.3.61")["current_npi"] == NPI_A


def test_shift_and_facility_rule_commands(app: RouterApp, tmp_path: Path) -> None:
    _roster(app, NPI_A)
    config = tmp_path / "router.toml"
    config.write_text(
        f'[paths]\ndata_dir = "{app.settings.paths.data_dir}"\n[database]\nurl = "{app.settings.database_url}"\n'
        '[logging]\nlevel = "WARNING"\n',
        encoding="utf-8",
    )
    runner = CliRunner()

    def run(*args: str) -> tuple[int, str]:
        result = runner.invoke(cli, ["--config", str(config), *args])
        assert "Traceback" not in result.output
        return result.exit_code, result.stdout

    code, out = run(
        "shifts", "add", "--npi", NPI_A, "--weekday", "mon-fri", "--start", "19:00", "--end", "07:00",
        "--timezone", CHICAGO,
    )  # fmt: skip
    assert code == 0 and out.startswith(f"added shift 1 for NPI {NPI_A}: mon,tue,wed,thu,fri 19:00-07:00")
    code, out = run("shifts", "list", "--json")
    assert code == 0 and '"overnight": true' in out and '"timezone": "America/Chicago"' in out
    code, _ = run("shifts", "add", "--npi", NPI_A, "--weekday", "someday", "--start", "07:00", "--end", "08:00",
                  "--timezone", CHICAGO)  # fmt: skip
    assert code == 1
    code, _ = run("shifts", "add", "--npi", NPI_A, "--weekday", "mon", "--start", "07:00", "--end", "08:00",
                  "--timezone", "Mars/Olympus")  # fmt: skip
    assert code == 1
    assert run("facilities", "exclude", "CT_NORTH", "--npi", NPI_A)[0] == 0
    code, out = run("facilities", "readers", "--json")
    assert code == 0 and '"rule": "exclude"' in out
    assert run("facilities", "clear-reader", "CT_NORTH", "--npi", NPI_A)[0] == 0
    assert run("shifts", "remove", "1", "--yes")[0] == 0
    code, out = run("shifts", "list", "--json")
    assert code == 0 and out.strip() == "[]"


def test_today_without_a_facility_is_the_exam_states_day_not_utc(app: RouterApp, clock: FakeClock) -> None:
    app.roster.radiologists.add(NPI_A, "Reader^A", OS_USER)
    app.roster.licenses.add(NPI_A, "HI", "HI-A", dt.date(2026, 11, 30), OS_USER, issued=dt.date(2020, 1, 1))
    clock.set(dt.datetime(2026, 12, 1, 9, 59, tzinfo=dt.UTC))  # Dec 1 in UTC, 23:59 Nov 30 in Honolulu
    _study(app, "1.2.3.70", quiet_seconds=120, institution_address="1 Kalakaua Ave, Honolulu, HI 96815", calling_ae="X")
    app.routing.route_due()
    assert study_state(app, "1.2.3.70")["current_npi"] == NPI_A
    assert _last_decision(app, "1.2.3.70").read_date == dt.date(2026, 11, 30)
    clock.set(dt.datetime(2026, 12, 1, 10, 0, tzinfo=dt.UTC))  # midnight in Honolulu: the license lapsed
    _study(app, "1.2.3.71", quiet_seconds=120, institution_address="1 Kalakaua Ave, Honolulu, HI 96815", calling_ae="X")
    app.routing.route_due()
    assert study_state(app, "1.2.3.71")["hold_reason"] is HoldReason.NO_ELIGIBLE_RADIOLOGIST


def test_breached_turnaround_reassigns_to_another_on_shift_reader_once(app: RouterApp, clock: FakeClock) -> None:
    from router.services.escalation import escalate_breached

    _roster(app, NPI_A, NPI_B, NPI_C)
    app.roster.shifts.add(NPI_B, "mon-fri", "07:00", "19:00", CHICAGO, OS_USER)  # off on Sunday
    _study(app, "1.2.3.80", quiet_seconds=10, priority="STAT")  # received 14:59:50 UTC, due 15:59:50
    app.routing.route_due()
    assert study_state(app, "1.2.3.80")["current_npi"] == NPI_A
    clock.set(dt.datetime(2026, 11, 29, 15, 59, 49, tzinfo=dt.UTC))
    assert escalate_breached(app.routing) == []  # one second before the STAT target
    clock.set(dt.datetime(2026, 11, 29, 15, 59, 50, tzinfo=dt.UTC))
    results = escalate_breached(app.routing)
    assert [(r.withdrawn_npi, r.assigned_npi) for r in results] == [(NPI_A, NPI_C)]  # B is off shift
    state = study_state(app, "1.2.3.80")
    assert state["current_npi"] == NPI_C and state["needs_review"] is True
    assert state["assignments"][0][2] == (
        f"turnaround breached: stat read due 2026-11-29T15:59+00:00 still open with NPI {NPI_A}"
    )
    decision = _last_decision(app, "1.2.3.80")
    assert decision.trigger == "tat_escalation" and decision.chosen_npi == NPI_C
    assert _reasons(decision)[NPI_A] == [state["assignments"][0][2]]
    assert _reasons(decision)[NPI_B][0].startswith("off shift")
    clock.set(dt.datetime(2026, 11, 29, 18, 0, tzinfo=dt.UTC))
    assert escalate_breached(app.routing) == []  # escalated once: no ping-pong between readers
    with app.sessions() as session:
        from router.db.models import AuditEntry

        actions = list(session.scalars(select(AuditEntry.action).where(AuditEntry.action == "study.escalate")))
    assert actions == ["study.escalate"]


def test_breached_turnaround_with_nobody_else_flags_an_admin(app: RouterApp, clock: FakeClock) -> None:
    from router.services.escalation import escalate_breached

    _roster(app, NPI_A)
    _study(app, "1.2.3.81", quiet_seconds=120)  # routine: received 14:58 UTC, due 24 h later
    app.routing.route_due()
    clock.set(dt.datetime(2026, 11, 30, 14, 57, 59, tzinfo=dt.UTC))
    assert escalate_breached(app.routing) == []
    clock.set(dt.datetime(2026, 11, 30, 14, 58, tzinfo=dt.UTC))
    results = escalate_breached(app.routing)
    assert [(r.withdrawn_npi, r.assigned_npi) for r in results] == [(None, NPI_A)]
    state = study_state(app, "1.2.3.81")
    assert (state["current_npi"], state["needs_review"], len(state["assignments"])) == (NPI_A, True, 1)
    decision = _last_decision(app, "1.2.3.81")
    assert decision.trigger == "tat_escalation"
    assert decision.note.endswith("no other eligible reader on shift: flagged for an admin")


def test_open_read_cap_skips_a_full_reader_and_holds_when_everyone_is_full(
    tmp_path: Path, database_url: str, clock: FakeClock
) -> None:
    settings = make_settings(tmp_path, database_url, stable_seconds=60.0, max_open_reads=1)
    with RouterApp.open(settings, upgrade=True, clock=clock) as router_app:
        _roster(router_app, NPI_A, NPI_B)
        for uid in ("1.2.3.90", "1.2.3.91", "1.2.3.92"):
            _study(router_app, uid, quiet_seconds=120)
        router_app.routing.route_due()
        assert [study_state(router_app, uid)["current_npi"] for uid in ("1.2.3.90", "1.2.3.91")] == [NPI_A, NPI_B]
        assert study_state(router_app, "1.2.3.92")["hold_reason"] is HoldReason.NO_READER_ON_SHIFT
        reasons = _reasons(_last_decision(router_app, "1.2.3.92"))
        assert reasons[NPI_A] == ["at the open-read cap (1 open, routing.max_open_reads = 1)"]


def test_required_subspecialty_limits_readers(tmp_path: Path, database_url: str, clock: FakeClock) -> None:
    rules = tmp_path / "rules.csv"
    rules.write_text(
        "# test rules\nmodality,body_part,description_keywords,subspecialty,need\n"
        "MG,,,breast,preferred\n"
        "CT|MR,,stroke|cta head,neuro,required\n",
        encoding="utf-8",
    )
    settings = make_settings(tmp_path, database_url, stable_seconds=60.0, subspecialty_rules=rules)
    with RouterApp.open(settings, upgrade=True, clock=clock) as app:
        _required_subspecialty_case(app)


def _required_subspecialty_case(app: RouterApp) -> None:
    _roster(app, NPI_A, NPI_B)
    app.roster.credentials.set(NPI_B, ["neuro"], OS_USER)
    # CT head "stroke" protocol: neuro required (line 4 of the rules file)
    _study(app, "1.2.3.100", quiet_seconds=120, body_part="HEAD", description="CT HEAD STROKE PROTOCOL")
    app.routing.route_due()
    assert study_state(app, "1.2.3.100")["current_npi"] == NPI_B
    assert _reasons(_last_decision(app, "1.2.3.100"))[NPI_A] == [
        "lacks the neuro credential the study requires (neuro required (subspecialty rule line 4))"
    ]
    app.roster.credentials.set(NPI_B, [], OS_USER)
    _study(app, "1.2.3.101", quiet_seconds=120, body_part="HEAD", description="CTA HEAD")
    app.routing.route_due()
    assert study_state(app, "1.2.3.101")["hold_reason"] is HoldReason.NO_ELIGIBLE_RADIOLOGIST
    app.roster.credentials.set(NPI_B, ["neuro", "msk"], OS_USER)  # held study re-routed by the change
    assert study_state(app, "1.2.3.101")["current_npi"] == NPI_B
    assert app.roster.credentials.list()[1]["subspecialties"] == ["neuro", "msk"]


def test_preferred_subspecialty_wins_a_tie_on_workload(app: RouterApp) -> None:
    _roster(app, NPI_A, NPI_B)
    app.roster.credentials.set(NPI_B, ["neuro"], OS_USER)
    _study(app, "1.2.3.110", quiet_seconds=120, body_part="HEAD", description="CT HEAD WO")  # neuro preferred
    app.routing.route_due()
    assert study_state(app, "1.2.3.110")["current_npi"] == NPI_B  # without the credential: A (lowest NPI)
    decision = _last_decision(app, "1.2.3.110")
    assert {c["npi"]: c.get("subspecialty_match") for c in decision.candidates}[NPI_B] is True


def test_workload_is_open_work_rvus_not_open_count(app: RouterApp) -> None:
    _roster(app, NPI_A, NPI_B)
    cases = [
        ("1.2.3.120", "CT", "ABDOMEN", "CT ABDOMEN PELVIS WITH CONTRAST"),  # 74177: 1.82 wRVU
        ("1.2.3.121", "CR", "CHEST", "CHEST 2 VIEWS"),  # 71046: 0.22
        ("1.2.3.122", "CR", "CHEST", "CHEST 1 VIEW"),  # 71045: 0.18
        ("1.2.3.123", "CR", "CHEST", "CHEST 1 VIEW"),
    ]
    for offset, (uid, modality, body_part, description) in enumerate(cases):
        _study(app, uid, quiet_seconds=120 - offset, modality=modality, body_part=body_part, description=description)
        app.routing.route_due()
    assert [study_state(app, uid)["current_npi"] for uid, *_ in cases] == [NPI_A, NPI_B, NPI_B, NPI_B]
    # by open count, the third read would have gone to A (one open read each, A waiting longest)
    loads = {c["npi"]: c["open_work_rvu"] for c in _last_decision(app, "1.2.3.123").candidates}
    assert loads == {NPI_B: 0.40}  # B chosen first in rank order; A (1.82) ranked after, not evaluated
    with app.sessions() as session:
        from router.db.models import Assignment

        centi = sorted(session.scalars(select(Assignment.work_rvu_centi)))
    assert centi == [18, 18, 22, 182]
