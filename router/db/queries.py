"""Query helpers. Each takes the session first and never commits: the calling service owns the
unit of work (``with session.begin():``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Select, Table, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from router.db.models import Facility, FacilityAlias, Instance, Radiologist, RosterVersion, Study
from router.errors import NotFoundError


def _insert(session: Session, table: Table) -> Any:
    """A dialect-specific INSERT that supports ON CONFLICT (SQLite and PostgreSQL)."""
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        return postgresql.insert(table)
    if dialect == "sqlite":
        return sqlite.insert(table)
    raise NotImplementedError(f"database dialect {dialect!r} is not supported")  # pragma: no cover


def insert_ignore(session: Session, table: Table, values: dict[str, Any], conflict_columns: Sequence[str]) -> None:
    """INSERT a row unless one with the same ``conflict_columns`` exists (race-free)."""
    statement = _insert(session, table).values(**values).on_conflict_do_nothing(index_elements=list(conflict_columns))
    session.execute(statement)


def upsert(
    session: Session,
    table: Table,
    values: dict[str, Any],
    conflict_columns: Sequence[str],
    update: dict[str, Any],
) -> None:
    """INSERT a row, or apply ``update`` (column -> SQL expression) to the existing one."""
    statement = _insert(session, table).values(**values)
    statement = statement.on_conflict_do_update(index_elements=list(conflict_columns), set_=update)
    session.execute(statement)


def for_update(statement: Select[Any], session: Session) -> Select[Any]:
    """Lock the rows until commit where the database has row locks (SQLite serialises writers
    anyway): ``FOR NO KEY UPDATE`` on PostgreSQL.

    ``NO KEY`` because the router never changes a key it locks: the lock still excludes every
    other writer of the row (their ``UPDATE`` or lock waits), but not the ``FOR KEY SHARE`` a
    foreign key check takes when a child row is inserted (a ledger record, an instance, an
    outbox job). With plain ``FOR UPDATE`` a node holding a study row and waiting for a job row
    deadlocked with a node holding that job and inserting a ledger record for the study
    (PostgreSQL 15 documentation, "Row-Level Locks").
    """
    if session.get_bind().dialect.name == "postgresql":
        return statement.with_for_update(key_share=True)
    return statement


def skip_locked(statement: Select[Any]) -> Select[Any]:
    """Claim rows: ``FOR NO KEY UPDATE SKIP LOCKED`` on PostgreSQL, so a row another node holds
    (even a stalled one) is passed over instead of waited for (``NO KEY``: see
    :func:`for_update`). SQLite drops the clause: its ``BEGIN IMMEDIATE`` already gives one
    writer at a time (:mod:`router.db.engine`)."""
    return statement.with_for_update(skip_locked=True, key_share=True)


def share_roster(session: Session) -> None:
    """Hold the roster version row ``FOR SHARE`` until commit (PostgreSQL; no-op on SQLite).

    Routing takes it before it reads the roster for a decision; a roster change takes it
    ``FOR UPDATE`` (:func:`bump_roster_version`). Decisions run side by side, but none commits
    on a roster state that a change committed meanwhile has superseded: the change waits for
    the decisions under way, and decisions started after it wait for it and read its result.
    """
    if session.get_bind().dialect.name == "postgresql":
        session.execute(select(RosterVersion.version).where(RosterVersion.id == 1).with_for_update(read=True))


def bump_roster_version(session: Session) -> None:
    """Count a roster change and hold the roster version row ``FOR UPDATE`` until commit
    (see :func:`share_roster`); creates the row if a database lacks it."""
    changed = _rowcount(
        session.execute(
            update(RosterVersion)
            .where(RosterVersion.id == 1)
            .values(version=RosterVersion.version + 1)
            .execution_options(synchronize_session=False)
        )
    )
    if not changed:
        session.add(RosterVersion(id=1, version=1))
        session.flush()


def study_by_uid(session: Session, study_instance_uid: str) -> Study:
    """The study with this Study Instance UID.

    Raises
    ------
    NotFoundError
        If there is none.
    """
    study = session.scalar(select(Study).where(Study.study_instance_uid == study_instance_uid))
    if study is None:
        raise NotFoundError(f"no study {study_instance_uid}")
    return study


def locked_study(session: Session, study_instance_uid: str) -> Study:
    """The study with this Study Instance UID, its row locked until commit (:func:`for_update`).

    Raises
    ------
    NotFoundError
        If there is none.
    """
    study = session.scalars(
        for_update(select(Study).where(Study.study_instance_uid == study_instance_uid), session)
    ).one_or_none()
    if study is None:
        raise NotFoundError(f"no study {study_instance_uid}")
    return study


def study_uids_ending_with(session: Session, suffix: str, limit: int = 3) -> list[str]:
    """Up to ``limit`` Study Instance UIDs that end with ``suffix`` (a shortened UID from a
    table), in UID order. ``suffix`` holds only UID characters (digits and dots)."""
    if not suffix or any(char not in "0123456789." for char in suffix):
        return []
    statement = (
        select(Study.study_instance_uid)
        .where(Study.study_instance_uid.endswith(suffix, autoescape=True))
        .order_by(Study.study_instance_uid)
        .limit(limit)
    )
    return list(session.scalars(statement))


def radiologist_by_npi(session: Session, npi: str) -> Radiologist:
    """The radiologist with this NPI.

    Raises
    ------
    NotFoundError
        If there is none.
    """
    radiologist = session.scalar(select(Radiologist).where(Radiologist.npi == npi))
    if radiologist is None:
        raise NotFoundError(f"no radiologist with NPI {npi}")
    return radiologist


def facility_by_ae_title(session: Session, ae_title: str) -> Facility | None:
    """The registered facility with this calling AE title, or ``None``."""
    return session.scalar(select(Facility).where(Facility.ae_title == ae_title))


def facility_by_institution_name(session: Session, institution_name: str | None) -> Facility | None:
    """The facility one of whose aliases is this InstitutionName (compared folded), or ``None``."""
    if not institution_name:
        return None
    key = fold_institution_name(institution_name)
    alias = session.scalar(select(FacilityAlias).where(FacilityAlias.institution_name == key))
    return alias.facility if alias is not None else None


def fold_institution_name(name: str) -> str:
    """Upper-case and collapse white space, so aliases match regardless of formatting."""
    return " ".join(name.upper().split())[:64]


def instance_paths_for_study(session: Session, study_id: int) -> list[tuple[int, str, int]]:
    """``(instance id, relative path, size in bytes)`` of every instance of a study, in arrival order."""
    rows = session.execute(
        select(Instance.id, Instance.relative_path, Instance.size_bytes)
        .where(Instance.study_id == study_id)
        .order_by(Instance.id)
    )
    return [(row[0], row[1], row[2]) for row in rows]


def _rowcount(result: object) -> int:
    """Rows an UPDATE matched (``CursorResult.rowcount``)."""
    return int(getattr(result, "rowcount", 0) or 0)
