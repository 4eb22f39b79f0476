"""Infrastructure cost as it accrues: GiB-months prorated by day, exact sub-cent amounts,
statements rounded once per client per month, transmission per client, migration of old rows.

Instances are real rows (with a series and a study) in SQLite and PostgreSQL, with the sizes
and receipt times a test needs; the accrual, the statement and the CLI read them as they are.
"""

from __future__ import annotations

import datetime as dt
import json
from fractions import Fraction
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import func, insert, select, text
from sqlalchemy.exc import IntegrityError

from router.app import RouterApp
from router.cli import cli
from router.config import settings_from_mapping
from router.db import migrate
from router.db.engine import make_engine, make_session_factory
from router.db.models import (
    ClusterLease,
    Facility,
    ForwardedInstance,
    InfrastructureEntry,
    Instance,
    RoutingDecision,
    Series,
    Study,
)
from router.domain.enums import CostBasis, InfrastructureKind, StudyStatus
from router.domain.infra_cost import (
    GIB,
    cents_for_people,
    cents_text,
    days_held,
    exact_microcents,
    parse_month,
    rate_microcents,
    round_half_up_cents,
)
from router.errors import ConfigError, ValidationError
from router.server import RouterServer
from router.services.accrual import AccrualPolicy, AccrualService, _insert_new_months
from router.services.ledgers import record_transmission
from tests.conftest import FakeClock

RATE = 2_300_000  # 2.3 cents ($0.023) per GiB-month, in micro-cents
NOV = dt.date(2026, 11, 1)
DEC = dt.date(2026, 12, 1)
#: exact accrual of 1,000,000 bytes held Nov 16-30 (15 of 30 days) and Dec 1-30 (30 of 31 days)
NOV_EXACT = Fraction(1_000_000 * 15 * RATE, GIB * 30)
DEC_EXACT = Fraction(1_000_000 * 30 * RATE, GIB * 31)


def _utc(*args: int) -> dt.datetime:
    return dt.datetime(*args, tzinfo=dt.UTC)


def _store(
    app: RouterApp,
    uid: str,
    size: int,
    received_at: dt.datetime,
    calling_ae: str = "CT_NORTH",
    facility: int | None = None,
) -> int:
    """A stored instance of study ``uid`` (the study made on first use); returns the study id."""
    with app.sessions.begin() as session:
        study = session.scalar(select(Study).where(Study.study_instance_uid == uid))
        if study is None:
            study = Study(
                study_instance_uid=uid,
                status=StudyStatus.ASSIGNED,
                first_calling_ae_title=calling_ae,
                facility_id=facility,
                instance_count=0,
                size_bytes=0,
                first_received_at=received_at,
                last_received_at=received_at,
                needs_review=False,
            )
            session.add(study)
            session.flush()
            session.add(Series(study_id=study.id, series_instance_uid=f"{uid}.1"))
            session.flush()
        series_id = session.scalar(select(Series.id).where(Series.study_id == study.id))
        count = session.scalar(select(func.count(Instance.id)).where(Instance.study_id == study.id)) or 0
        session.add(
            Instance(
                study_id=study.id,
                series_id=series_id,
                sop_instance_uid=f"{uid}.1.{count + 1}",
                sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
                transfer_syntax_uid="1.2.840.10008.1.2.1",
                relative_path=f"{uid}/{count + 1}.dcm",
                size_bytes=size,
                dataset_sha256="0" * 64,
                calling_ae_title=calling_ae,
                received_at=received_at,
            )
        )
        return study.id


def _facility(app: RouterApp, ae_title: str, name: str) -> int:
    with app.sessions.begin() as session:
        facility = Facility(ae_title=ae_title, name=name, state="TX", created_at=app.clock())
        session.add(facility)
        session.flush()
        return facility.id


def _accrual(app: RouterApp, clock: FakeClock, retention_days: int = 45) -> AccrualService:
    return AccrualService(app.sessions, AccrualPolicy(RATE, retention_days), clock)


def _storage_rows(app: RouterApp) -> list[tuple[str, dt.date, int, int, int, int, str]]:
    with app.sessions() as session:
        return [
            (
                e.study_instance_uid,
                e.period_month,
                e.quantity,
                e.unit_quantity,
                e.rate_microcents,
                e.amount_microcents,
                e.client_ae_title,
            )
            for e in session.scalars(
                select(InfrastructureEntry)
                .where(InfrastructureEntry.basis == CostBasis.PER_GIB_MONTH)
                .order_by(InfrastructureEntry.period_month, InfrastructureEntry.study_id)
            )
        ]


def test_a_study_held_45_days_across_two_months_accrues_exactly_per_month(app: RouterApp, clock: FakeClock) -> None:
    _store(app, "1.2.3.45", 1_000_000, _utc(2026, 11, 16, 10))
    clock.set(_utc(2027, 1, 5, 8))
    accrual = _accrual(app, clock)

    report = accrual.accrue()  # through December 2026, the last month that is over

    assert report.to_json() == {"through": "2026-12", "months": ["2026-11", "2026-12"], "written": 2}
    assert _storage_rows(app) == [
        ("1.2.3.45", NOV, 15_000_000, GIB * 30, RATE, 1071, "CT_NORTH"),  # 15 of 30 days
        ("1.2.3.45", DEC, 30_000_000, GIB * 31, RATE, 2073, "CT_NORTH"),  # 30 of 31 days; ends Dec 31
    ]
    rows = {row["month"]: row for row in app.ledgers.infrastructure()}
    assert rows["2026-11"]["amount_cents"] == cents_text(NOV_EXACT) == "0.001071"
    assert rows["2026-12"]["amount_cents"] == "0.002073"
    assert rows["2026-11"]["rate_cents"] == "2.300000"
    assert float(NOV_EXACT) == pytest.approx(1071.0209608, abs=1e-6)


def test_accrual_is_idempotent_and_a_duplicate_insert_writes_nothing(app: RouterApp, clock: FakeClock) -> None:
    study_id = _store(app, "1.2.3.46", 1_000_000, _utc(2026, 11, 16, 10))
    clock.set(_utc(2027, 1, 5, 8))
    accrual = _accrual(app, clock)
    assert accrual.accrue().written == 2
    before = _storage_rows(app)

    assert accrual.accrue().to_json() == {"through": "2026-12", "months": [], "written": 0}
    assert accrual.accrue_month(NOV) == 0  # asked again for a month already accrued
    duplicate = {
        "study_id": study_id,
        "study_instance_uid": "1.2.3.46",
        "kind": InfrastructureKind.STORAGE,
        "basis": CostBasis.PER_GIB_MONTH,
        "recorded_at": clock(),
        "period_month": NOV,
        "client_ae_title": "CT_NORTH",
        "instance_count": 1,
        "size_bytes": 1_000_000,
        "quantity": 1,
        "unit_quantity": 1,
        "rate_microcents": 1,
        "amount_microcents": 1,
    }
    with app.sessions.begin() as session:  # what a second node racing this one does: skipped
        session.execute(_insert_new_months(session), duplicate)
    with pytest.raises(IntegrityError), app.sessions.begin() as session:  # the unique index itself
        session.execute(insert(InfrastructureEntry), duplicate)
    assert _storage_rows(app) == before


def test_months_not_over_are_refused_and_late_instances_prorate(app: RouterApp, clock: FakeClock) -> None:
    _store(app, "1.2.3.47", 2 * GIB, _utc(2026, 11, 1, 0))  # whole November
    _store(app, "1.2.3.47", GIB, _utc(2026, 11, 30, 23, 59))  # a late instance: its last day counts
    clock.set(_utc(2026, 12, 10, 12))
    accrual = _accrual(app, clock, retention_days=0)
    with pytest.raises(ValidationError, match="2026-12 is not over yet"):
        accrual.accrue(DEC)
    assert accrual.accrue(NOV).written == 1
    ((_, month, byte_days, unit, _, micro, _),) = _storage_rows(app)
    assert (month, byte_days, unit) == (NOV, 2 * GIB * 30 + GIB * 1, GIB * 30)
    assert micro == 4_676_667  # (2 + 1/30) GiB-months at 2.3 cents = 4.676667 cents


def test_statement_rounds_once_per_client_and_month(app: RouterApp, clock: FakeClock) -> None:
    north = _facility(app, "CT_NORTH", "North Clinic")
    a = _store(app, "1.2.3.48", GIB, _utc(2026, 11, 2), facility=north)
    b = _store(app, "1.2.3.49", GIB, _utc(2026, 11, 3), calling_ae="MR_SOUTH")  # not registered
    clock.set(_utc(2026, 11, 20, 9))
    with app.sessions.begin() as session:
        for study_id, sends in ((a, 3), (b, 5)):
            study = session.get(Study, study_id)
            assert study is not None
            for _ in range(sends):  # 0.4 cents each for North (3 x 1 GiB), 0.1 for South (5 x 1 GiB)
                rate = 400_000 if study_id == a else 100_000
                record_transmission(session, study, "READER@h:104", [ForwardedInstance(size_bytes=GIB)], clock(), rate)
    rows = app.ledgers.infrastructure(month=NOV)
    assert [(row["client_ae_title"], row["client_name"], row["amount_cents"]) for row in rows] == [
        ("CT_NORTH", "North Clinic", "0.400000")
    ] * 3 + [("MR_SOUTH", None, "0.100000")] * 5

    lines = _accrual(app, clock).statement(NOV)

    assert [
        (
            line["client_ae_title"],
            line["transmission_records"],
            line["total_cents_exact"],
            line["total_cents"],
            line["rounding_cents"],
        )
        for line in lines
    ] == [
        ("CT_NORTH", 3, "1.200000", 1, "-0.200000"),  # each row alone would have been 0 cents
        ("MR_SOUTH", 5, "0.500000", 1, "0.500000"),  # exactly half a cent: half up
    ]
    assert lines[0]["client_name"] == "North Clinic" and lines[0]["storage_cents_exact"] == "0.000000"


def _cli(config: Path, *args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, ["--config", str(config), *args], env={"COLUMNS": "100"})
    return result.exit_code, result.stdout, result.stderr


def test_cli_accrue_rows_and_statement(app: RouterApp, clock: FakeClock, tmp_path: Path) -> None:
    north = _facility(app, "CT_NORTH", "North Clinic")
    _store(app, "1.2.3.50", 1_000_000, _utc(2026, 11, 16, 10), facility=north)
    _store(app, "1.2.3.51", 3 * GIB, _utc(2026, 11, 1), calling_ae="MR_SOUTH")
    config = tmp_path / "cli.toml"
    config.write_text(
        f'[paths]\ndata_dir = "{app.settings.paths.data_dir}"\n[database]\nurl = "{app.settings.database_url}"\n'
        "[billing]\nstorage_cents_per_gib_month = 2.3\nstorage_retention_days = 45\n"
    )
    code, out, err = _cli(config, "ledger", "accrue", "--through", "2026-11")
    assert (code, out) == (0, "accrued 2 storage record(s) for 2026-11 to 2026-11\n"), err
    assert json.loads(_cli(config, "ledger", "accrue", "--through", "2026-11", "--json")[1]) == {
        "through": "2026-11",
        "months": [],
        "written": 0,
    }
    assert _cli(config, "ledger", "accrue", "--through", "2026-11")[1] == "nothing new to accrue through 2026-11\n"
    code, _, err = _cli(config, "ledger", "accrue", "--through", "2999-01")
    assert code == 1 and "is not over yet" in err and "Traceback" not in err
    code, _, err = _cli(config, "ledger", "accrue", "--through", "2026-13")
    assert code == 2 and "'2026-13' is not a month (YYYY-MM)" in err

    code, out, err = _cli(config, "ledger", "infrastructure", "--by", "facility", "--month", "2026-11", "--json")
    assert code == 0, err
    assert [(x["client_ae_title"], x["storage_cents_exact"], x["total_cents"]) for x in json.loads(out)] == [
        ("CT_NORTH", "0.001071", 0),
        ("MR_SOUTH", "6.900000", 7),  # 3 GiB for the whole month at 2.3 cents
    ]
    code, out, _ = _cli(config, "ledger", "infrastructure", "--by", "facility", "--csv")
    assert out.splitlines()[1] == "2026-11,CT_NORTH,North Clinic,1,0,0.001071,0.000000,0.001071,0,-0.001071"
    code, out, _ = _cli(config, "ledger", "infrastructure", "--month", "2026-11")
    assert code == 0 and "0.0011" in out and "6.9000" in out
    code, out, _ = _cli(config, "ledger", "infrastructure", "--by", "facility")
    assert code == 0 and "North Clinic" in out and "0.0011" in out and "6.9000" in out
    code, out, _ = _cli(config, "ledger", "infrastructure", "--month", "2026-10")
    assert (code, out) == (0, "no infrastructure records for 2026-10\n")
    code, _, err = _cli(config, "ledger", "infrastructure", "--by", "facility", "--from", "2026-11-01")
    assert code == 2 and "--by facility selects by --month" in err


def test_serve_accrues_last_month_once_per_interval_for_the_cluster(app: RouterApp, clock: FakeClock) -> None:
    _store(app, "1.2.3.52", GIB, _utc(2026, 11, 1))
    server = RouterServer(app)  # not started: its periodic work is called by hand
    assert server.accrue_if_due()  # the clock is 2026-11-29: November is not over, nothing to do
    assert _storage_rows(app) == []
    clock.set(_utc(2026, 12, 1, 0, 1))
    assert server.accrue_if_due()
    assert [(row[1], row[2], row[5]) for row in _storage_rows(app)] == [(NOV, 30 * GIB, 2_300_000)]
    clock.advance(60)
    assert not server.accrue_if_due()  # ran less than routing.recheck_interval ago, on some node
    clock.advance(app.settings.routing.recheck_interval)
    assert server.accrue_if_due()
    assert len(_storage_rows(app)) == 1  # nothing new
    with app.sessions() as session:
        lease = session.get(ClusterLease, "storage_accrual")
        assert lease is not None and lease.last_run_at == clock() and lease.holder is None


def test_routing_writes_no_storage_charge_and_sees_late_instances_once(app: RouterApp, clock: FakeClock) -> None:
    study_id = _store(app, "1.2.3.53", GIB, clock() - dt.timedelta(minutes=10))
    with app.sessions.begin() as session:
        study = session.get(Study, study_id)
        assert study is not None
        study.status = StudyStatus.RECEIVING  # quiet for ten minutes: due

    def decisions() -> int:
        with app.sessions() as session:
            return int(session.scalar(select(func.count(RoutingDecision.id))) or 0)

    def unaccounted() -> int:
        with app.sessions() as session:
            return int(session.scalar(select(func.count(Instance.id)).where(Instance.accounted_at.is_(None))) or 0)

    assert [result.status for result in app.routing.route_due()] == [StudyStatus.HELD]  # no roster
    assert (decisions(), unaccounted()) == (1, 0)
    assert app.routing.route_due() == [] and decisions() == 1  # nothing late: no new decision
    _store(app, "1.2.3.53", GIB, clock())  # a late instance
    clock.advance(600)
    assert [result.status for result in app.routing.route_due()] == [StudyStatus.HELD]  # decided again
    assert (decisions(), unaccounted()) == (2, 0)
    assert app.routing.route_due() == []
    with app.sessions() as session:
        assert session.scalar(select(func.count(InfrastructureEntry.id))) == 0  # storage accrues monthly


def test_rates_and_day_count_rules() -> None:
    assert rate_microcents(2.3) == 2_300_000
    assert rate_microcents(0.000001) == 1
    assert rate_microcents(5) == 5_000_000
    for bad, message in ((0.0000001, "more than 6 decimals"), (-1, "zero or more"), (True, "number of cents")):
        with pytest.raises(ValidationError, match=message):
            rate_microcents(bad)
    assert days_held(dt.date(2026, 11, 16), dt.date(2026, 12, 31), NOV) == 15
    assert days_held(dt.date(2026, 11, 16), dt.date(2026, 12, 31), DEC) == 30
    assert days_held(dt.date(2026, 11, 16), None, dt.date(2027, 2, 1)) == 28
    assert days_held(dt.date(2026, 11, 16), dt.date(2026, 11, 16), NOV) == 0
    assert parse_month("2026-02") == dt.date(2026, 2, 1)
    assert round_half_up_cents(Fraction(1_500_000)) == 2 and round_half_up_cents(Fraction(1_499_999)) == 1
    assert cents_text(Fraction(7, 1000)) == "0.000000007" and cents_text(Fraction(-1, 3)) == "-0.0000003"
    assert cents_text(0) == "0.000000" and cents_text(Fraction(1, 2)) == "0.000001"  # half a micro-cent: up
    assert cents_for_people(1) == "<0.0001" and cents_for_people(0) == "0.0000" and cents_for_people(50) == "0.0001"


def test_config_takes_decimal_rates_and_names_the_old_key(tmp_path: Path) -> None:
    settings = settings_from_mapping(
        {"billing": {"storage_cents_per_gib_month": 0.099, "storage_retention_days": 2555}}
    )
    assert (settings.billing.storage_cents_per_gib_month, settings.billing.storage_retention_days) == (0.099, 2555)
    with pytest.raises(ConfigError, match=r"billing\.storage_cents_per_gib: renamed"):
        settings_from_mapping({"billing": {"storage_cents_per_gib": 10}})
    with pytest.raises(ConfigError, match=r"billing\.transmission_cents_per_gib: has more than 6 decimals"):
        settings_from_mapping({"billing": {"transmission_cents_per_gib": 0.12345678}})


def test_migration_keeps_old_records_and_their_amounts(empty_database_url: str) -> None:
    engine = make_engine(empty_database_url)
    try:
        migrate.upgrade(engine, "0007_cluster")
        at = dt.datetime(2026, 10, 31, 23, 30, tzinfo=dt.UTC)
        with engine.begin() as connection:
            connection.execute(
                text(
                    "INSERT INTO facilities (id, ae_title, name, state, requires_privileges, created_at) "
                    "VALUES (1, 'CT_NORTH', 'North Clinic', 'TX', false, :at)"
                ),
                {"at": at},
            )
            for study_id, facility in ((1, 1), (2, None)):
                connection.execute(
                    text(
                        "INSERT INTO studies (id, study_instance_uid, status, first_calling_ae_title, facility_id, "
                        "instance_count, size_bytes, first_received_at, last_received_at, needs_review) "
                        "VALUES (:id, :uid, 'assigned', :ae, :facility, 1, 100, :at, :at, false)"
                    ),
                    {
                        "id": study_id,
                        "uid": f"9.{study_id}",
                        "ae": "MR_SOUTH" if facility is None else "CT_NORTH",
                        "facility": facility,
                        "at": at,
                    },
                )
                connection.execute(
                    text(
                        "INSERT INTO infrastructure_ledger (study_id, study_instance_uid, kind, recorded_at, "
                        "instance_count, size_bytes, rate_cents_per_gib, amount_cents) "
                        "VALUES (:id, :uid, 'storage', :at, 1, :size, 10, :cents)"
                    ),
                    {
                        "id": study_id,
                        "uid": f"9.{study_id}",
                        "at": at,
                        "size": 100 if facility else GIB,
                        "cents": 0 if facility else 10,
                    },
                )
            charged = connection.scalar(text("SELECT id FROM infrastructure_ledger WHERE study_id = 2"))
            for study_id in (1, 2):
                connection.execute(
                    text("INSERT INTO series (id, study_id, series_instance_uid) VALUES (:id, :id, :uid)"),
                    {"id": study_id, "uid": f"9.{study_id}.1"},
                )
                connection.execute(
                    text(
                        "INSERT INTO instances (study_id, series_id, sop_instance_uid, sop_class_uid, "
                        "transfer_syntax_uid, relative_path, size_bytes, dataset_sha256, calling_ae_title, "
                        "received_at, infrastructure_entry_id) VALUES (:id, :id, :sop, '1.2.840.10008.5.1.4.1.1.2', "
                        "'1.2.840.10008.1.2.1', :path, :size, :sha, 'CT_NORTH', :at, :charged)"
                    ),
                    {
                        "id": study_id,
                        "sop": f"9.{study_id}.1.1",
                        "path": f"9.{study_id}/1.dcm",
                        "size": GIB,
                        "sha": "0" * 64,
                        "at": at,
                        "charged": charged if study_id == 2 else None,
                    },
                )
        migrate.upgrade(engine)
        with engine.connect() as connection:
            rows = connection.execute(
                select(
                    InfrastructureEntry.study_id,
                    InfrastructureEntry.basis,
                    InfrastructureEntry.period_month,
                    InfrastructureEntry.client_ae_title,
                    InfrastructureEntry.client_name,
                    InfrastructureEntry.quantity,
                    InfrastructureEntry.unit_quantity,
                    InfrastructureEntry.rate_microcents,
                    InfrastructureEntry.amount_microcents,
                ).order_by(InfrastructureEntry.study_id)
            ).all()
        assert [tuple(row) for row in rows] == [
            (1, CostBasis.RECORDED, dt.date(2026, 10, 1), "CT_NORTH", "North Clinic", 100, GIB, 10_000_000, 0),
            (2, CostBasis.RECORDED, dt.date(2026, 10, 1), "MR_SOUTH", None, GIB, GIB, 10_000_000, 10_000_000),
        ]
        # an instance charged once by an old row is covered through that month; others accrue from receipt
        sessions = make_session_factory(engine)
        with sessions() as session:  # the link to the old charge is the late-instance marker no more
            marked = dict(session.execute(select(Instance.study_id, Instance.accounted_at)).all())
        assert marked == {1: None, 2: at}
        AccrualService(sessions, AccrualPolicy(RATE), FakeClock(_utc(2026, 12, 10))).accrue()
        with sessions() as session:
            accrued = session.execute(
                select(InfrastructureEntry.study_id, InfrastructureEntry.period_month, InfrastructureEntry.quantity)
                .where(InfrastructureEntry.basis == CostBasis.PER_GIB_MONTH)
                .order_by(InfrastructureEntry.study_id, InfrastructureEntry.period_month)
            ).all()
        assert [tuple(row) for row in accrued] == [
            (1, dt.date(2026, 10, 1), GIB * 1),  # received Oct 31: one day of October
            (1, NOV, GIB * 30),
            (2, NOV, GIB * 30),  # its October was charged by the old row
        ]
        with pytest.raises(Exception, match="append-only"), engine.begin() as connection:
            connection.execute(text("UPDATE infrastructure_ledger SET note = 'x'"))
        with pytest.raises(Exception, match=r"(?i)check"), engine.begin() as connection:
            connection.execute(
                text(
                    "INSERT INTO infrastructure_ledger (study_id, study_instance_uid, kind, basis, recorded_at, "
                    "period_month, client_ae_title, instance_count, size_bytes, quantity, unit_quantity, "
                    "rate_microcents, amount_microcents) "
                    "VALUES (1, '9.1', 'storage', 'bogus', :at, '2026-10-01', '', 1, 1, 1, 1, 1, 1)"
                ),
                {"at": at},
            )
    finally:
        engine.dispose()


# --- one per-GiB amount rounded on a statement (formerly cost_cents) ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size_bytes", "cents_per_gib", "expected"),
    [
        (0, 100, 0),
        (1, 1, 0),
        (GIB, 100, 100),
        (GIB // 2 - 1, 1, 0),  # 0.4999... cents
        (GIB // 2, 1, 1),  # exactly 0.5 cent: half up (banker's rounding would give 0)
        (3 * GIB // 2 - 1, 1, 1),  # 1.4999...
        (3 * GIB // 2, 1, 2),  # exactly 1.5
        (GIB // 2 - 1, 5, 2),  # 2.4999...
        (GIB // 2, 5, 3),  # exactly 2.5 (banker's would give 2)
        (512 * 2**20 - 1, 23, 11),  # a CT study just under 512 MiB at 23 c/GiB: 11.4999...
        (512 * 2**20, 23, 12),  # 11.5
        (10 * 1024 * GIB, 2, 20480),  # 10 TiB at 2 c/GiB
        (2**62, 3, 3 * 2**32),  # big values stay exact
        (GIB, 0, 0),
    ],
)
def test_a_statement_total_rounds_half_up_exactly(size_bytes: int, cents_per_gib: int, expected: int) -> None:
    assert round_half_up_cents(exact_microcents(size_bytes, cents_per_gib * 10**6, GIB)) == expected
