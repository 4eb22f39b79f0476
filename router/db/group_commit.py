"""Group commit: the index writes of concurrent C-STOREs share one transaction and one WAL flush.

Each association thread hands its unit of work (the index statements of one instance and the
placing of its file) to :meth:`GroupCommit.run` and blocks until the transaction holding it has
committed or failed. The first thread to arrive when no transaction is running leads: it runs
its own unit alone, at once, so a single association waits for nobody. Units that arrive while
a transaction runs queue up; when it ends, the oldest waiting thread leads the next transaction
with every unit queued at that moment (at most :data:`MAX_BATCH`). One commit, so one fsync of
SQLite's WAL or PostgreSQL's, serves the whole batch.

Every unit still learns its own outcome, and only after the commit:

- a unit that fails on its own (``IntegrityError``: its SOP Instance UID is already indexed;
  ``ArchiveError``: its file could not be placed) is rolled back to its savepoint and gets that
  exception; the rest of the batch goes on;
- any other database error, or a failed commit, fails the whole batch: nothing of it is kept
  and every member gets :class:`~router.errors.IndexWriteError` (the C-STORE handler answers
  0xA701, PS3.4 section B.2.3), whatever it was doing when the error came.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import IntegrityError

from router.errors import ArchiveError, IndexWriteError, database_error

T = TypeVar("T")

#: Most units in one transaction (bounds how long the database write lock is held).
MAX_BATCH = 32
#: Exceptions that fail only the unit that raised them (rolled back to its savepoint).
UNIT_FAILURES: tuple[type[Exception], ...] = (IntegrityError, ArchiveError)
#: A unit's savepoint in a shared SQLite transaction (one at a time: each is released before the next).
_SAVEPOINT = "SAVEPOINT group_commit_unit"
_ROLLBACK_TO_SAVEPOINT = "ROLLBACK TO SAVEPOINT group_commit_unit"
_RELEASE_SAVEPOINT = "RELEASE SAVEPOINT group_commit_unit"


@dataclass(eq=False)
class _Unit(Generic[T]):
    work: Callable[[Connection], T]
    key: str
    wake: threading.Event = field(default_factory=threading.Event)
    finished: bool = False
    result: T | None = None
    error: BaseException | None = None


class GroupCommit:
    """Runs units of work from many threads, batched into shared transactions. Thread-safe."""

    def __init__(
        self, engine: Engine, max_batch: int = MAX_BATCH, prepare: Callable[[Connection], None] | None = None
    ) -> None:
        """``prepare`` is called with each connection the group commit checks out, before its
        first transaction (e.g. a per-connection SQLite PRAGMA). A connection so prepared is
        discarded, not returned to the engine's pool, when the group commit lets go of it: its
        settings are not the pool's."""
        self._engine = engine
        self._max_batch = max_batch
        self._prepare = prepare
        self._lock = threading.Lock()
        self._queue: list[_Unit[object]] = []
        self._leading = False  # a thread is running a transaction (or about to)
        # The leader's connection, kept between transactions (only one leader runs at a time):
        # a pool check-out per transaction cost about as much CPU as two of the statements.
        self._connection: Connection | None = None
        #: Members of the largest batch committed or failed so far (for tests and the benchmark).
        self.largest_batch = 0

    @property
    def waiting(self) -> int:
        """Units queued for the next transaction."""
        with self._lock:
            return len(self._queue)

    @property
    def busy(self) -> bool:
        """Whether a transaction is running."""
        with self._lock:
            return self._leading

    def run(self, work: Callable[[Connection], T], key: str = "") -> T:
        """Run ``work(connection)`` inside a transaction shared with concurrent callers.

        Returns once that transaction has committed, with what ``work`` returned. Units run in
        the order of their ``key`` (the Study Instance UID): transactions of several processes
        then take the study rows' locks in one order and cannot deadlock on them.

        Raises
        ------
        sqlalchemy.exc.IntegrityError, ArchiveError
            Raised by ``work`` itself: its writes were rolled back, the others' committed.
        IndexWriteError
            The transaction failed (another database error, or the commit): nothing of it was
            kept.
        """
        unit: _Unit[T] = _Unit(work, key)
        with self._lock:
            self._queue.append(unit)  # type: ignore[arg-type]
            lead = not self._leading
            self._leading = True
        if not lead:
            unit.wake.wait()
        if not unit.finished:
            self._lead()
        if unit.error is not None:
            raise unit.error
        return unit.result  # type: ignore[return-value]

    def _lead(self) -> None:
        """Run one transaction with the queued units, then hand over to the next waiting thread."""
        with self._lock:
            batch, self._queue = self._queue[: self._max_batch], self._queue[self._max_batch :]
            self.largest_batch = max(self.largest_batch, len(batch))
        try:
            self._transaction(batch)
        except BaseException as exc:  # every member must learn the outcome, whatever happened
            for unit in batch:
                if unit.error is None:  # a unit's own failure stands: it was never going to be kept
                    unit.result, unit.error = None, _batch_failure(exc, len(batch))
            if not isinstance(exc, Exception):
                raise
        finally:
            with self._lock:
                if self._queue:
                    self._queue[0].wake.set()  # it leads the next transaction
                else:
                    self._leading = False
            for unit in batch:
                unit.finished = True
                unit.wake.set()

    def close(self) -> None:
        """Return the kept connection to the pool (the next transaction checks one out again)."""
        with self._lock:
            connection, self._connection = self._connection, None
        if connection is None:
            return
        if self._prepare is not None and not connection.invalidated:
            connection.invalidate()
        connection.close()

    def _transaction(self, batch: list[_Unit[object]]) -> None:
        """One transaction: each unit's result or own failure is set on it; raises if it failed.
        A failed one also gives back its connection (it may be the database's fault)."""
        if self._connection is None or self._connection.invalidated:
            connection = self._engine.connect()
            if self._prepare is not None:
                try:
                    self._prepare(connection)
                except BaseException:
                    connection.invalidate()
                    connection.close()
                    raise
            self._connection = connection
        try:
            self._run_transaction(self._connection, batch)
        except BaseException:
            self.close()
            raise

    @staticmethod
    def _run_transaction(connection: Connection, batch: list[_Unit[object]]) -> None:
        transaction = connection.begin()
        try:
            if len(batch) == 1:  # alone: the transaction is its savepoint
                _run(batch[0], connection)
                if batch[0].error is not None:
                    transaction.rollback()
                    return
            elif connection.dialect.name == "sqlite":
                _run_in_driver_savepoints(connection, batch)
            else:
                for unit in sorted(batch, key=lambda member: member.key):
                    savepoint = connection.begin_nested()
                    _run(unit, connection)
                    if unit.error is None:
                        savepoint.commit()
                    else:
                        savepoint.rollback()
        except BaseException:
            transaction.rollback()
            raise
        try:
            transaction.commit()
        except BaseException:
            # SQLite keeps the transaction open after a failed COMMIT (a deferred constraint)
            # and SQLAlchemy would pool the connection as it is: discard it instead.
            connection.invalidate()
            raise


def _run_in_driver_savepoints(connection: Connection, batch: list[_Unit[object]]) -> None:
    """SQLite: each unit in a savepoint of its own, set, released and rolled back to on the
    driver's cursor. Through SQLAlchemy (``begin_nested``) each was compiled and executed as a
    new statement, about 75 µs a unit against 1 µs (docs/benchmarks.md, lever 56). Not on
    PostgreSQL: psycopg's pipelined prepared statements went missing after a unit's rollback to
    a savepoint set this way (``prepared statement "_pg3_25" does not exist``, the whole batch
    answered 0xA701; found by the lever's hostile trial)."""
    cursor = connection.connection.cursor()
    try:
        for unit in sorted(batch, key=lambda member: member.key):
            cursor.execute(_SAVEPOINT)
            _run(unit, connection)
            if unit.error is not None:
                cursor.execute(_ROLLBACK_TO_SAVEPOINT)
            cursor.execute(_RELEASE_SAVEPOINT)
    finally:
        cursor.close()


def _run(unit: _Unit[object], connection: Connection) -> None:
    """Run one unit: its result, or its own failure (which does not fail the transaction)."""
    try:
        unit.result = unit.work(connection)
    except UNIT_FAILURES as exc:
        unit.error = exc


def _batch_failure(exc: BaseException, members: int) -> IndexWriteError:
    """The error a member of a failed transaction gets (a new instance per thread that raises it).

    The reason names the exception type and its first line, never SQL parameters (PHI).
    """
    reason = str(exc) if isinstance(exc, IndexWriteError) else f"index database error: {database_error(exc)}"
    if members > 1:
        reason += f" (transaction shared by {members} instances)"
    failure = IndexWriteError(reason)
    failure.__cause__ = exc
    return failure
