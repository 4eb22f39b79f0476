"""Engine and session factory. No module-level engine: callers build and pass their own.

SQLite (the embedded default) runs in WAL mode with ``synchronous=FULL`` so that a committed
row survives power loss, foreign keys on, and a busy timeout so concurrent association threads
wait for the write lock instead of failing at once; the receiving processes' index
transactions may set their own connection's ``synchronous`` (:func:`sqlite_synchronous`,
``database.sqlite_intake_synchronous``). PostgreSQL is used as is.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from router.errors import DatabaseUnavailable, first_line


@dataclass(frozen=True)
class ServerOptions:
    """PostgreSQL session settings and pool size (``[database]``); SQLite ignores them.

    Timeouts are in seconds; 0 turns one off. ``application_name`` shows in
    ``pg_stat_activity`` (PostgreSQL truncates it to 63 bytes).
    """

    statement_timeout: float = 0.0
    idle_in_transaction_timeout: float = 0.0
    application_name: str | None = None
    pool_size: int = 5
    max_overflow: int = 10


def make_engine(
    url: str,
    busy_timeout: float = 10.0,
    *,
    create: bool = True,
    server: ServerOptions | None = None,
    **kwargs: Any,
) -> Engine:
    """Create an engine for ``url``.

    Parameters
    ----------
    url : str
        SQLAlchemy URL, e.g. ``sqlite:////var/router/router.db`` or
        ``postgresql+psycopg://user@host/db``.
    busy_timeout : float
        Seconds to wait for a lock (SQLite ``busy_timeout``; PostgreSQL ``lock_timeout``)
        before the write fails.
    create : bool
        SQLite only: create the database file (and its folder) if missing. When false, a
        missing file raises instead, so a mistyped ``--data-dir`` does not create an empty
        database in the wrong place.
    server : ServerOptions, optional
        PostgreSQL only: ``statement_timeout``, ``idle_in_transaction_session_timeout``,
        ``application_name`` and the pool size (a stalled node's transaction is ended by the
        server, so its row locks cost other nodes at most that long). With a statement timeout,
        a statement stuck behind anything (a lock, a saturated server) fails with an error the
        C-STORE handler answers 0xA701 instead of holding the association thread; TCP
        keepalives with ``tcp_user_timeout`` (libpq connection parameters) give up on a server
        that stops answering at the TCP level after about that long plus 5 s. SQLite waits at
        most ``busy_timeout`` for its lock and has no other wait.

    Raises
    ------
    DatabaseUnavailable
        The URL cannot be parsed, its driver is not installed, the SQLite folder cannot be
        created, or (``create`` false) the SQLite file does not exist.

    SQL parameters are never put into exception messages (``hide_parameters``): the database
    holds patient addresses, and exception text can reach logs.
    """
    try:
        return _make_engine(url, busy_timeout, create, server or ServerOptions(), **kwargs)
    except (ArgumentError, NoSuchModuleError, ImportError, ValueError) as exc:
        raise DatabaseUnavailable(
            f"database.url {_safe(url)!r} cannot be used: {first_line(exc) or type(exc).__name__}"
        ) from exc


def safe_url(url: URL) -> str:
    """``url`` for messages: the password hidden, also where given as a query parameter."""
    secrets = {key: "HIDDEN" for key in url.query if "pass" in key.lower()}
    return (url.update_query_dict(secrets) if secrets else url).render_as_string(hide_password=True)


def _safe(url: str) -> str:
    """``url`` with its password hidden (or only its scheme if it does not parse)."""
    try:
        return safe_url(make_url(url))
    except (ArgumentError, ValueError):
        return url.split(":", 1)[0] + ":..." if "@" in url or "?" in url else url


def check_connection(engine: Engine) -> None:
    """Connect once, so a wrong host, port, database or credentials fail with one line.

    Raises
    ------
    DatabaseUnavailable
        With the URL (password hidden) and the driver's first line of explanation.
    """
    try:
        with engine.connect():
            pass
    except DBAPIError as exc:
        raise DatabaseUnavailable(
            f"cannot connect to {safe_url(engine.url)}: {first_line(exc) or type(exc).__name__}"
        ) from exc


#: Seconds between the first two tries to take SQLite's write lock (``BEGIN IMMEDIATE``).
SQLITE_BEGIN_FIRST_PAUSE = 0.0002
#: Most seconds between two tries. Another receiving process holds the lock about 1.3 ms per
#: index transaction (statements and the WAL's fsync); a waiter asleep for up to 2 ms, as
#: before, left it free for that long after a release (docs/benchmarks.md, lever 23). In a
#: receiving process only the group commit's leader waits here, so the shorter pause costs
#: little CPU.
SQLITE_BEGIN_MAX_PAUSE = 0.0005


def _make_engine(url: str, busy_timeout: float, create: bool, server: ServerOptions, **kwargs: Any) -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database
        if database and database != ":memory:":
            _sqlite_file(parsed, Path(database), create)
        engine = create_engine(
            url,
            connect_args={"check_same_thread": False, "timeout": busy_timeout},
            hide_parameters=True,
            **kwargs,
        )
        timeout_ms = int(busy_timeout * 1000)
        # Taking the write lock is retried here in short steps: SQLite's own busy handler sleeps
        # 1, 2, 5, 10, 15, 20, 25 ... 100 ms between tries, so a writer of another router
        # process (listener.workers > 1) that holds the lock for a millisecond would cost the
        # waiter tens of milliseconds. Statements inside the transaction keep the busy timeout.
        lock_timeout_ms = int(busy_timeout * 1000)

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
            # pysqlite opens transactions lazily; let SQLAlchemy's BEGIN be explicit instead
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=FULL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute(f"PRAGMA busy_timeout={timeout_ms}")
            cursor.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(connection: Any) -> None:
            # IMMEDIATE takes the write lock up front, so two writers never deadlock upgrading
            # a read lock.
            raw = connection.connection.dbapi_connection
            raw.execute("PRAGMA busy_timeout=0")
            deadline = time.monotonic() + busy_timeout
            pause = SQLITE_BEGIN_FIRST_PAUSE
            try:
                while True:
                    try:
                        raw.execute("BEGIN IMMEDIATE")
                        return
                    except sqlite3.OperationalError as exc:
                        if "locked" not in str(exc) and "busy" not in str(exc):
                            raise
                        if time.monotonic() >= deadline:
                            raise OperationalError("BEGIN IMMEDIATE", None, exc) from exc
                        time.sleep(pause)
                        pause = min(pause * 1.5, SQLITE_BEGIN_MAX_PAUSE)
            finally:
                raw.execute(f"PRAGMA busy_timeout={lock_timeout_ms}")

        return engine
    connect_args = kwargs.pop("connect_args", {})
    if parsed.get_backend_name() == "postgresql":
        timeout_ms = int(busy_timeout * 1000)
        # Keep options given in the URL (e.g. -csearch_path=...) and add the lock timeout.
        url_options = parsed.query.get("options")
        base = url_options if isinstance(url_options, str) else " ".join(url_options or ())
        options = f"{base} -c lock_timeout={timeout_ms}"
        if server.statement_timeout > 0:
            statement_ms = max(1, int(server.statement_timeout * 1000))
            options += f" -c statement_timeout={statement_ms}"
            connect_args.setdefault("keepalives", 1)
            connect_args.setdefault("keepalives_idle", max(1, int(server.statement_timeout)))
            connect_args.setdefault("keepalives_interval", 5)
            connect_args.setdefault("keepalives_count", 3)
            connect_args.setdefault("tcp_user_timeout", statement_ms + 5000)
        if server.idle_in_transaction_timeout > 0:
            idle_ms = max(1, int(server.idle_in_transaction_timeout * 1000))
            options += f" -c idle_in_transaction_session_timeout={idle_ms}"
        connect_args.setdefault("options", options.strip())
        connect_args.setdefault("connect_timeout", max(1, int(busy_timeout)))
        if server.application_name:
            connect_args.setdefault("application_name", server.application_name[:63])
        kwargs.setdefault("pool_size", server.pool_size)
        kwargs.setdefault("max_overflow", server.max_overflow)
    return create_engine(url, pool_pre_ping=True, connect_args=connect_args, hide_parameters=True, **kwargs)


def _sqlite_file(url: URL, path: Path, create: bool) -> None:
    """Make sure the SQLite database's folder exists (``create``) or that the file does."""
    if not create:
        if not path.is_file():
            raise DatabaseUnavailable(
                f"no database at {path}: run `router db upgrade` first, or check --data-dir, "
                "paths.data_dir and database.url"
            )
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DatabaseUnavailable(f"cannot create the folder of {url.database}: {exc.strerror}") from exc
    # router.db holds PHI-bearing text: owner-only whatever the umask. SQLite gives its -wal and
    # -shm files the database file's mode.
    try:
        os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
        if path.stat().st_mode & 0o077:
            os.chmod(path, 0o600)
    except OSError as exc:
        raise DatabaseUnavailable(f"cannot create {url.database}: {exc.strerror}") from exc


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    """A session factory bound to ``engine``; objects stay usable after commit."""
    return sessionmaker(bind=engine, expire_on_commit=False)


def is_sqlite(engine: Engine) -> bool:
    """Whether ``engine`` talks to SQLite."""
    return engine.dialect.name == "sqlite"


def sqlite_synchronous(level: str) -> Callable[[Connection], None]:
    """What sets SQLite's ``PRAGMA synchronous`` to ``level`` ("normal" or "full") on one
    connection, on its DBAPI connection (no transaction is begun for it).

    In WAL mode (https://www.sqlite.org/pragma.html#pragma_synchronous) NORMAL fsyncs the WAL
    only at checkpoints: a commit is atomic and survives a crash or kill of the process, but the
    last ones may roll back after a power loss or an operating system crash. FULL fsyncs the
    WAL at every commit. The setting is the connection's own; a later FULL commit on another
    connection fsyncs the WAL with every frame before it.
    """
    statement = f"PRAGMA synchronous={ {'normal': 'NORMAL', 'full': 'FULL'}[level] }"

    def prepare(connection: Connection) -> None:
        connection.connection.dbapi_connection.execute(statement)  # type: ignore[union-attr]

    return prepare
