"""The router's database for a benchmark run: fresh SQLite file or PostgreSQL schema, the roster
that lets the benchmark's studies be assigned, and read-only polling of study states.

The harness never writes to a database the router is serving: the roster is put in before the
router starts (through the router's own roster service, as ``router facilities add`` and
``router licenses add`` do), and polling uses a plain read-only connection.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, func, select, text
from sqlalchemy.engine import Engine

from router.app import RouterApp
from router.config import Settings
from router.db.models import Assignment, Instance, Study
from router.domain.npi import npi_check_digit

SENDER_AE = "BENCHSCU"
EXAM_STATE = "TX"
PG_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def make_npi(index: int) -> str:
    """A valid NPI (Luhn check over 80840 + first nine digits) for a benchmark radiologist."""
    first_nine = f"1{index:08d}"
    return first_nine + str(npi_check_digit(first_nine))


def settings_for(data_dir: Path, url: str | None) -> Settings:
    """Router settings for in-process use (roster set-up, routing cost)."""
    settings = Settings().with_data_dir(data_dir)
    settings = settings.replace("routing", stable_seconds=1.0, poll_interval=0.2)
    if url:
        settings = settings.replace("database", url=url)
    return settings


def add_bench_roster(settings: Settings) -> None:
    """Migrate, register the sender's AE title in Texas and one radiologist licensed there."""
    with RouterApp.open(settings, upgrade=True) as app:
        roster = app.roster
        roster.facilities.add(SENDER_AE, EXAM_STATE, "bench", name="Benchmark sender", timezone="America/Chicago")
        npi = make_npi(1)
        roster.radiologists.add(npi, "Bench^Reader", "bench")
        roster.licenses.add(npi, EXAM_STATE, "TX-BENCH-1", dt.date(2099, 12, 31), "bench", issued=dt.date(2020, 1, 1))


# ---------------------------------------------------------------- PostgreSQL schemas
class Postgres:
    """Fresh schemas in the local PostgreSQL, one per run, dropped at the end."""

    def __init__(self, admin_url: str = PG_ADMIN_URL) -> None:
        self.admin_url = admin_url
        self._engine: Engine | None = None
        self._schemas: list[str] = []
        self._seq = 0

    def available(self) -> str | None:
        """``None`` if reachable, else the reason."""
        try:
            with self._admin().connect() as conn:
                conn.execute(text("SELECT 1"))
        except Exception as exc:
            return f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
        return None

    def _admin(self) -> Engine:
        if self._engine is None:
            self._engine = create_engine(
                self.admin_url, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 3}
            )
        return self._engine

    def info(self) -> dict[str, str]:
        """Server version and the durability settings that matter for commit cost."""
        with self._admin().connect() as conn:
            version = conn.execute(text("SHOW server_version")).scalar_one()
            settings = {
                name: conn.execute(text(f"SHOW {name}")).scalar_one()
                for name in ("fsync", "synchronous_commit", "wal_sync_method")
            }
        return {"postgresql": f"{version} (" + ", ".join(f"{k}={v}" for k, v in settings.items()) + ")"}

    def new_schema(self) -> str:
        """Create an empty schema; returns a router database URL whose search_path is it."""
        self._seq += 1
        name = f"bench_{os.getpid()}_{self._seq}"
        with self._admin().connect() as conn:
            conn.execute(text(f'CREATE SCHEMA "{name}"'))
        self._schemas.append(name)
        return f"{self.admin_url}?options=-csearch_path%3D{name}"

    def drop(self, url: str) -> None:
        """Drop the schema behind ``url`` (from :meth:`new_schema`)."""
        name = url.rsplit("%3D", 1)[1]
        with self._admin().connect() as conn:
            conn.execute(text(f'DROP SCHEMA IF EXISTS "{name}" CASCADE'))
        if name in self._schemas:
            self._schemas.remove(name)

    def drop_all(self) -> None:
        """Drop every schema still around, then close the admin connection."""
        for name in list(self._schemas):
            try:
                self.drop(f"x%3D{name}")
            except Exception:
                pass
        if self._engine is not None:
            self._engine.dispose()


class SqliteTemplate:
    """A migrated SQLite database with the benchmark roster, copied into each fresh data dir."""

    def __init__(self, root: Path) -> None:
        self.root = root / "sqlite-template"
        add_bench_roster(settings_for(self.root, None))

    def copy_to(self, data_dir: Path) -> None:
        """Put the template database into ``data_dir`` (created)."""
        data_dir.mkdir(parents=True, exist_ok=True)
        for suffix in ("", "-wal", "-shm"):
            source = self.root / f"router.db{suffix}"
            if source.exists():
                shutil.copy2(source, data_dir / source.name)


# ---------------------------------------------------------------- read-only polling
def reader_engine(url: str) -> Engine:
    """A plain engine for reading while the router serves (no router pragmas, no write lock)."""
    if url.startswith("sqlite:///"):
        path = url[len("sqlite:///") :]
        return create_engine(f"sqlite:///file:{path}?mode=ro&uri=true")
    return create_engine(url, connect_args={"connect_timeout": 3})


def instance_count(engine: Engine) -> int:
    """Instances indexed."""
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(Instance.__table__)).scalar_one())


@dataclass(frozen=True)
class StudyState:
    """One study's routing state as the router recorded it (router clock, UTC)."""

    uid: str
    status: str
    last_received_at: dt.datetime | None
    decided_at: dt.datetime | None  # assignment time, else routed_at (held)


def study_states(engine: Engine, uids: tuple[str, ...]) -> list[StudyState]:
    """Current state of the given studies."""
    studies, assignments = Study.__table__, Assignment.__table__
    query = (
        select(
            studies.c.study_instance_uid,
            studies.c.status,
            studies.c.last_received_at,
            studies.c.routed_at,
            assignments.c.assigned_at,
        )
        .select_from(
            studies.outerjoin(
                assignments, (assignments.c.study_id == studies.c.id) & assignments.c.superseded_at.is_(None)
            )
        )
        .where(studies.c.study_instance_uid.in_(uids))
    )
    with engine.connect() as conn:
        rows = conn.execute(query).all()
    return [
        StudyState(row[0], str(row[1].value if hasattr(row[1], "value") else row[1]), row[2], row[4] or row[3])
        for row in rows
    ]


def wait_routed(engine: Engine, uids: tuple[str, ...], since: float, timeout: float) -> dict[str, Any]:
    """Poll every 50 ms until no study is ``receiving``; return the latencies.

    ``observed_s``: wall time from ``since`` (the sender's exit, ``time.monotonic()``) until the
    poll saw every study routed. ``last_study_s``: for the study whose last instance arrived
    last, assignment (or hold) time minus last instance time, both from the router's clock.
    """
    deadline = time.monotonic() + timeout
    states: list[StudyState] = []
    while time.monotonic() < deadline:
        try:
            states = study_states(engine, uids)
        except Exception:
            states = []
        if len(states) == len(uids) and all(state.status != "receiving" for state in states):
            break
        time.sleep(0.05)
    else:
        return {"ok": False, "statuses": _counts(states), "observed_s": None, "last_study_s": None}
    observed = time.monotonic() - since
    last = max(states, key=lambda state: state.last_received_at or dt.datetime.min.replace(tzinfo=dt.UTC))
    last_delay = (
        (last.decided_at - last.last_received_at).total_seconds() if last.decided_at and last.last_received_at else None
    )
    return {"ok": True, "statuses": _counts(states), "observed_s": observed, "last_study_s": last_delay}


def _counts(states: list[StudyState]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for state in states:
        counts[state.status] = counts.get(state.status, 0) + 1
    return counts
