"""Shared fixtures: databases (SQLite always, PostgreSQL when ROUTER_TEST_DATABASE_URL is set),
a controllable clock, a router app, and a running router server on a free local port."""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import shutil
import subprocess
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from pg_pool import SchemaPool
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from router.app import RouterApp
from router.config import Settings
from router.db import migrate
from router.db.engine import make_engine
from router.server import RouterServer

PG_URL = os.environ.get("ROUTER_TEST_DATABASE_URL")
REPO = Path(__file__).resolve().parent.parent
SAMPLES = REPO / "sample_dicom"
DEMO_CONFIG = REPO / "config" / "demo"
#: DCMTK's storescu (pynetdicom installs an app of the same name in the venv's bin: not that one)
DCMTK_STORESCU = shutil.which("storescu", path="/usr/bin:/usr/local/bin")


class FakeClock:
    """A settable UTC clock for services (thread-safe)."""

    def __init__(self, start: dt.datetime) -> None:
        self._now = start
        self._lock = threading.Lock()

    def __call__(self) -> dt.datetime:
        with self._lock:
            return self._now

    def set(self, moment: dt.datetime) -> None:
        with self._lock:
            self._now = moment

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._now += dt.timedelta(seconds=seconds)


@pytest.fixture
def clock() -> FakeClock:
    """A clock pinned at 2026-11-29 15:00 UTC."""
    return FakeClock(dt.datetime(2026, 11, 29, 15, 0, tzinfo=dt.UTC))


def _pg_schema_url() -> Iterator[str]:
    assert PG_URL
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(PG_URL)
    with admin.begin() as connection:
        connection.execute(text(f'CREATE SCHEMA "{schema}"'))
    url = make_url(PG_URL).update_query_dict({"options": f"-csearch_path={schema}"})
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.begin() as connection:
            connection.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite file migrated to the newest schema once per test session (by the migrations
    themselves, so it is exactly what ``router db upgrade`` builds); tests get a copy."""
    path = tmp_path_factory.mktemp("schema") / "router.db"
    engine = make_engine(f"sqlite:///{path}")
    try:
        migrate.upgrade(engine)
    finally:
        engine.dispose()
    return path


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path, sqlite_template: Path) -> Iterator[str]:
    """A fresh database at the newest schema and without rows but those the migrations seed:
    SQLite in tmp_path (a copy of :func:`sqlite_template`), or a PostgreSQL schema from
    :func:`pg_schema_pool` (migrated once, emptied after each test that used it)."""
    if request.param == "sqlite":
        path = tmp_path / "router.db"
        shutil.copyfile(sqlite_template, path)
        yield f"sqlite:///{path}"
        return
    if not PG_URL:
        pytest.skip("ROUTER_TEST_DATABASE_URL not set")
    yield from request.getfixturevalue("pg_schema_pool").lease()


@pytest.fixture(scope="session")
def pg_schema_pool() -> Iterator[SchemaPool]:
    """Migrated PostgreSQL schemas, each emptied after a test and handed to the next."""
    assert PG_URL
    pool = SchemaPool(PG_URL)
    try:
        yield pool
    finally:
        pool.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A database with no schema at all (for tests of the migrations and of `router db upgrade`)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'router.db'}"
        return
    if not PG_URL:
        pytest.skip("ROUTER_TEST_DATABASE_URL not set")
    yield from _pg_schema_url()


@pytest.fixture
def sqlite_url(tmp_path: Path, sqlite_template: Path) -> str:
    """A fresh SQLite database file at the newest schema (for tests that run on one engine only)."""
    path = tmp_path / "router.db"
    shutil.copyfile(sqlite_template, path)
    return f"sqlite:///{path}"


def make_settings(tmp_path: Path, database_url: str, **routing: object) -> Settings:
    """Settings for a test: data in tmp_path, free port on loopback, quick routing."""
    settings = Settings().with_data_dir(tmp_path / "var").replace("database", url=database_url)
    # one receiving process: in-process tests reach the listener's objects (test_workers.py
    # covers several); the default follows the core count
    settings = settings.replace("listener", host="127.0.0.1", port=0, drain_timeout=5.0, workers=1)
    return settings.replace("routing", **{"stable_seconds": 0.3, "poll_interval": 0.1, **routing})


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    return make_settings(tmp_path, database_url)


@pytest.fixture
def app(settings: Settings, clock: FakeClock) -> Iterator[RouterApp]:
    """A router app on a migrated database with a fake clock."""
    router_app = RouterApp.open(settings, upgrade=True, clock=clock)
    try:
        yield router_app
    finally:
        router_app.close()


@pytest.fixture
def live_app(settings: Settings) -> Iterator[RouterApp]:
    """A router app with the real clock (for tests that wait on the routing timer)."""
    router_app = RouterApp.open(settings, upgrade=True)
    try:
        yield router_app
    finally:
        router_app.close()


@pytest.fixture
def server(live_app: RouterApp) -> Iterator[RouterServer]:
    """A started router server on 127.0.0.1 with a free port; stopped after the test."""
    router_server = RouterServer(live_app)
    router_server.start()
    try:
        yield router_server
    finally:
        router_server.stop(drain_timeout=2)


@contextlib.contextmanager
def mounted_tmpfs(mount: Path, size: str, fstype: str = "tmpfs") -> Iterator[Path]:
    """A tmpfs of ``size`` (mount's syntax: ``64k``, ``2m``) at the new folder ``mount``, for a real
    full disk (root ignores file modes); skips the test where mounting is not allowed.
    ``fstype="ramfs"``: a ramfs instead (no size limit; it refuses ``O_DIRECT``)."""
    mount.mkdir()
    options = ["-o", f"size={size}"] if fstype == "tmpfs" else []
    result = subprocess.run(["mount", "-t", fstype, *options, fstype, str(mount)], capture_output=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a {fstype} here: {result.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


@contextlib.contextmanager
def running_router(settings: Settings) -> Iterator[RouterServer]:
    """A router app on a migrated database and its started server; both closed after."""
    app = RouterApp.open(settings, upgrade=True)
    router_server = RouterServer(app)
    router_server.start()
    try:
        yield router_server
    finally:
        router_server.stop(drain_timeout=2)
        app.close()
