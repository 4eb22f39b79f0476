"""Routing cost as the roster grows, measured in-process against the router's own schema.

A database is migrated (``RouterApp.open(..., upgrade=True)``) and filled with bulk inserts
(SQLAlchemy Core, ``executemany``) straight into the router's tables: a registered facility in
Texas, ``radiologists`` readers holding ``licenses_each`` licenses in distinct jurisdictions
(chosen at random with a fixed seed; reader 0 always holds Texas), and ``studies`` past
studies, each with a series, an instance already on the storage ledger, a routing decision and
an assignment (95 % completed, 5 % still open, so the workload counts have something to count).
Then, ``repeats`` times, one new study of 10 instances from the Texas facility is inserted
quiet for an hour, and ``app.routing.route_due()`` (what the server's timer calls) is timed.
"""

from __future__ import annotations

import cProfile
import datetime as dt
import pstats
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from sqlalchemy import Table, text

from harness.routerdb import EXAM_STATE, SENDER_AE, make_npi, settings_for
from router.app import RouterApp
from router.db.models import (
    Assignment,
    Facility,
    InfrastructureEntry,
    Instance,
    License,
    Radiologist,
    RoutingDecision,
    Series,
    Study,
)
from router.domain.enums import (
    CostBasis,
    ExamStateSource,
    InfrastructureKind,
    LicensePathway,
    LicenseStatus,
    StudyStatus,
)
from router.domain.jurisdictions import LICENSING_JURISDICTIONS

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
_BATCH = 5000
_SEQ = {"n": 0}


def _log(message: str) -> None:
    print(f"[routing] {message}", file=sys.stderr, flush=True)


def _uid(kind: int, index: int) -> str:
    return f"2.25.{kind}{index:012d}"


def _insert(conn: Any, table: Table, rows: list[dict[str, Any]]) -> None:
    for start in range(0, len(rows), _BATCH):
        conn.execute(table.insert(), rows[start : start + _BATCH])


def populate(app: RouterApp, radiologists: int, licenses_each: int, studies: int, seed: int = 5) -> dict[str, int]:
    """Bulk-insert the roster and the past studies; returns row counts."""
    rng = random.Random(seed)
    now = dt.datetime.now(dt.UTC)
    states = sorted(LICENSING_JURISDICTIONS)
    rad_rows, lic_rows = [], []
    licenses_of: list[list[tuple[int, str, str]]] = []
    lic_id = 0
    for index in range(radiologists):
        rid = index + 1
        rad_rows.append(
            {
                "id": rid,
                "npi": make_npi(100 + index),
                "name": f"Reader^R{index:05d}",
                "active": True,
                "mqsa_qualified": False,
                "created_at": now,
            }
        )
        chosen = rng.sample(states, licenses_each)
        if index == 0 and EXAM_STATE not in chosen:
            chosen[0] = EXAM_STATE
        mine = []
        for state in chosen:
            lic_id += 1
            number = f"{state}-{index:05d}"
            lic_rows.append(
                {
                    "id": lic_id,
                    "radiologist_id": rid,
                    "state": state,
                    "number": number,
                    "pathway": LicensePathway.FULL,
                    "status": LicenseStatus.ACTIVE,
                    "in_lieu_of_discipline": False,
                    "issued": dt.date(2015, 1, 1),
                    "expires": dt.date(2099, 12, 31),
                }
            )
            mine.append((lic_id, state, number))
        licenses_of.append(mine)
    study_rows, series_rows, ledger_rows, instance_rows, decision_rows, assignment_rows = [], [], [], [], [], []
    for index in range(studies):
        sid = index + 1
        rad = index % radiologists
        license_id, state, number = licenses_of[rad][index % licenses_each]
        received = now - dt.timedelta(days=1 + index % 700, minutes=index % 1440)
        open_read = index % 20 == 0
        study_rows.append(
            {
                "id": sid,
                "study_instance_uid": _uid(1, index),
                "status": StudyStatus.ASSIGNED if open_read else StudyStatus.COMPLETED,
                "accession_number": f"A{index:09d}",
                "modalities": "CT",
                "first_calling_ae_title": SENDER_AE,
                "facility_id": 1,
                "exam_state": state,
                "exam_state_source": ExamStateSource.FACILITY,
                "instance_count": 1,
                "size_bytes": 40_000,
                "first_received_at": received,
                "last_received_at": received,
                "routed_at": received,
                "needs_review": False,
            }
        )
        series_rows.append({"id": sid, "study_id": sid, "series_instance_uid": _uid(2, index), "modality": "CT"})
        ledger_rows.append(
            {
                "id": sid,
                "study_id": sid,
                "study_instance_uid": _uid(1, index),
                "kind": InfrastructureKind.STORAGE,
                "basis": CostBasis.PER_GIB_MONTH,
                "recorded_at": received,
                "period_month": received.date().replace(day=1),
                "client_ae_title": SENDER_AE,
                "instance_count": 1,
                "size_bytes": 40_000,
                "quantity": 40_000 * 30,
                "unit_quantity": 2**30 * 30,
                "rate_microcents": 2_300_000,
                "amount_microcents": 86,
                "note": "storage accrued for the month",
            }
        )
        instance_rows.append(
            {
                "id": sid,
                "study_id": sid,
                "series_id": sid,
                "sop_instance_uid": _uid(3, index),
                "sop_class_uid": CT_IMAGE_STORAGE,
                "transfer_syntax_uid": EXPLICIT_LE,
                "relative_path": f"{_uid(1, index)}/{_uid(2, index)}/{_uid(3, index)}.dcm",
                "size_bytes": 40_000,
                "dataset_sha256": "0" * 64,
                "calling_ae_title": SENDER_AE,
                "received_at": received,
                "accounted_at": received,  # routed: not a late instance
            }
        )
        decision_rows.append(
            {
                "id": sid,
                "study_id": sid,
                "decided_at": received,
                "read_date": received.date(),
                "trigger": "stable",
                "exam_state": state,
                "exam_state_source": ExamStateSource.FACILITY,
                "outcome": StudyStatus.ASSIGNED,
                "chosen_npi": rad_rows[rad]["npi"],
                "candidates": [],
            }
        )
        assignment_rows.append(
            {
                "id": sid,
                "study_id": sid,
                "radiologist_id": rad + 1,
                "decision_id": sid,
                "license_id": license_id,
                "license_state": state,
                "license_number": number,
                "assigned_at": received,
                "assigned_by": "router",
                "completed_at": None if open_read else received + dt.timedelta(hours=2),
            }
        )
    tables: list[tuple[Table, list[dict[str, Any]]]] = [
        (
            Facility.__table__,
            [
                {
                    "id": 1,
                    "ae_title": SENDER_AE,
                    "name": "Benchmark sender",
                    "state": EXAM_STATE,
                    "timezone": "America/Chicago",
                    "requires_privileges": False,
                    "created_at": now,
                }
            ],
        ),
        (Radiologist.__table__, rad_rows),
        (License.__table__, lic_rows),
        (Study.__table__, study_rows),
        (Series.__table__, series_rows),
        (InfrastructureEntry.__table__, ledger_rows),
        (Instance.__table__, instance_rows),
        (RoutingDecision.__table__, decision_rows),
        (Assignment.__table__, assignment_rows),
    ]
    with app.engine.begin() as conn:
        for table, rows in tables:
            _insert(conn, table, rows)
        if app.engine.dialect.name == "postgresql":
            for table, _rows in tables:
                conn.execute(
                    text(
                        f"SELECT setval(pg_get_serial_sequence('{table.name}', 'id'), (SELECT max(id) FROM {table.name}))"
                    )
                )
        else:
            conn.exec_driver_sql("ANALYZE")
    if app.engine.dialect.name == "postgresql":
        with app.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("ANALYZE"))
    return {table.name: len(rows) for table, rows in tables}


def _new_receiving_study(app: RouterApp, instances: int = 10) -> str:
    _SEQ["n"] += 1
    n = _SEQ["n"]
    quiet_since = dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
    study_uid, series_uid = _uid(7, n), _uid(8, n)
    with app.engine.begin() as conn:
        study_id = conn.execute(
            Study.__table__.insert().returning(Study.__table__.c.id),
            {
                "study_instance_uid": study_uid,
                "status": StudyStatus.RECEIVING,
                "modalities": "CT",
                "first_calling_ae_title": SENDER_AE,
                "instance_count": instances,
                "size_bytes": 40_000 * instances,
                "first_received_at": quiet_since,
                "last_received_at": quiet_since,
                "needs_review": False,
                "accession_number": f"R{n:09d}",
            },
        ).scalar_one()
        series_id = conn.execute(
            Series.__table__.insert().returning(Series.__table__.c.id),
            {"study_id": study_id, "series_instance_uid": series_uid, "modality": "CT"},
        ).scalar_one()
        conn.execute(
            Instance.__table__.insert(),
            [
                {
                    "study_id": study_id,
                    "series_id": series_id,
                    "sop_instance_uid": _uid(9, n * 1000 + k),
                    "sop_class_uid": CT_IMAGE_STORAGE,
                    "transfer_syntax_uid": EXPLICIT_LE,
                    "relative_path": f"{study_uid}/{series_uid}/{k}.dcm",
                    "size_bytes": 40_000,
                    "dataset_sha256": "0" * 64,
                    "calling_ae_title": SENDER_AE,
                    "received_at": quiet_since,
                }
                for k in range(instances)
            ],
        )
    return study_uid


def hotspots(profiler: cProfile.Profile, top: int = 12) -> dict[str, list[list[Any]]]:
    """Router functions by cumulative time, and every function by own time: [name, calls, ms]."""
    stats = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
    rows = []
    for (path, line, func), (_cc, calls, own, cumulative, _callers) in stats.items():
        short = (
            path.split("site-packages/")[-1]
            if "site-packages/" in path
            else path.split("/work/main/")[-1]
            if "/router/" in path
            else Path(path).name
        )
        rows.append(
            (
                f"{func} ({short}:{line})",
                calls,
                own * 1000,
                cumulative * 1000,
                "/router/" in path and "site-packages" not in path,
            )
        )
    ours = sorted((r for r in rows if r[4]), key=lambda r: -r[3])[:top]
    own_time = sorted(rows, key=lambda r: -r[2])[:top]
    return {
        "router_by_cumulative_ms": [[r[0], r[1], round(r[3], 1)] for r in ours],
        "all_by_own_ms": [[r[0], r[1], round(r[2], 1)] for r in own_time],
    }


def measure(
    work: Path, label: str, url: str | None, radiologists: int, licenses_each: int, studies: int, repeats: int
) -> dict[str, Any]:
    """Populate a fresh database and time ``route_due()`` for one stable study, ``repeats`` times."""
    data_dir = work / f"routing-{label}"
    settings = settings_for(data_dir, url)
    started = time.monotonic()
    with RouterApp.open(settings, upgrade=True) as app:
        counts = populate(app, radiologists, licenses_each, studies)
        populate_s = time.monotonic() - started
        with app.engine.connect() as conn:
            licensed = conn.execute(
                text("SELECT count(DISTINCT radiologist_id) FROM licenses WHERE state = :s"), {"s": EXAM_STATE}
            ).scalar_one()
        timings, outcomes = [], []
        for _ in range(repeats):
            uid = _new_receiving_study(app)
            start = time.perf_counter()
            results = app.routing.route_due()
            timings.append(time.perf_counter() - start)
            outcome = next((r for r in results if r.study_instance_uid == uid), None)
            outcomes.append(str(outcome.status) if outcome else "not routed")
        # One more, untimed, under cProfile: where routing one study goes.
        _new_receiving_study(app)
        profiler = cProfile.Profile()
        profiler.enable()
        app.routing.route_due()
        profiler.disable()
    result = {
        "label": label,
        "backend": "postgresql" if url else "sqlite",
        "radiologists": radiologists,
        "licenses_each": licenses_each,
        "studies": studies,
        "licensed_in_exam_state": int(licensed),
        "rows": counts,
        "populate_s": populate_s,
        "route_s": timings,
        "route_first_s": timings[0],
        "route_median_s": statistics.median(timings[1:] or timings),
        "outcomes": outcomes,
        "cprofile": hotspots(profiler),
    }
    _log(
        f"{label:28s} populate {populate_s:5.1f} s; route_due first {timings[0] * 1000:7.1f} ms, "
        f"median {result['route_median_s'] * 1000:7.1f} ms ({', '.join(sorted(set(outcomes)))}); "
        f"{licensed} readers licensed in {EXAM_STATE}"
    )
    return result
