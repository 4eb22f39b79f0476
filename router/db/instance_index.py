"""The hot-path index write of one received instance: four statements, no ORM.

Study and series rows are upserted (``INSERT ... ON CONFLICT DO UPDATE ... RETURNING id``, one
round trip each, race-free on SQLite and PostgreSQL), the instance row inserted (its unique SOP
Instance UID raises ``IntegrityError`` for a second copy), and the sender row upserted. The
statements are built and compiled once per dialect, then run on the raw DBAPI cursor of the
caller's connection (:class:`_Prepared`): the same SQL and the same bind conversions as
SQLAlchemy's, without its per-execution bookkeeping (docs/benchmarks.md). Like every query
helper here, :meth:`InstanceIndex.record` never commits: the caller owns the transaction.

On PostgreSQL with psycopg 3 the four statements go in one round trip (psycopg's pipeline
mode, PostgreSQL's extended query protocol with one Sync; libpq 14+): the series, instance and
sender rows find their study and series ids by subquery on the UIDs instead of waiting for the
previous statement's ``RETURNING``. Per instance that is 2 round trips (the statements with the
transaction's implicit BEGIN, then COMMIT) instead of 6. An error in any of them (the instance
row's unique SOP Instance UID) is raised, as SQLAlchemy's wrapper, once the pipeline is synced;
the statements after it were not run and the transaction is rolled back by its owner as before.

Study-level evidence (accession number, addresses, procedure codes...) is filled from the first
instance that carries it (``COALESCE``): a later instance never overwrites what is known.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import Connection, Dialect, Table, bindparam, func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.expression import ClauseElement

from router.db.models import Instance, Series, Study, StudySender
from router.domain.enums import StudyStatus

# A declarative class's __table__ is a Table (SQLAlchemy types it as the wider FromClause).
_STUDY = cast(Table, Study.__table__)
_SERIES = cast(Table, Series.__table__)
_INSTANCE = cast(Table, Instance.__table__)
_SENDER = cast(Table, StudySender.__table__)

#: Study columns filled from the first instance that has a value.
_EVIDENCE = (
    "modalities",  # first modality seen; routing sets the full list from the series
    "accession_number",
    "study_date",
    "study_description",
    "body_part",
    "priority",
    "procedure_codes",
    "institution_name",
    "institution_address",
    "patient_address",
    "region_of_residence",
    "country_of_residence",
)


@dataclass(frozen=True)
class IndexRow:
    """Everything the index records about one instance (strings already cut to column length)."""

    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    relative_path: str
    size_bytes: int
    dataset_sha256: str
    calling_ae_title: str
    peer_address: str
    received_at: dt.datetime
    modality: str | None
    series_body_part: str | None
    series_description: str | None
    evidence: dict[str, Any]  # keys: _EVIDENCE


def _insert(dialect: str, table: Table) -> postgresql.Insert | sqlite.Insert:
    if dialect == "postgresql":
        return postgresql.insert(table)
    if dialect == "sqlite":
        return sqlite.insert(table)
    raise NotImplementedError(f"database dialect {dialect!r} is not supported")  # pragma: no cover


class _Prepared:
    """One statement compiled once for a dialect, run on the raw DBAPI cursor.

    Parameters are converted by the bind processors SQLAlchemy would apply (``UtcDateTime``,
    ``JSON``, ...), and passed in the dialect's parameter style. A driver error is raised as
    SQLAlchemy's wrapper (``IntegrityError``, ``OperationalError``...), as ``execute`` would.
    """

    def __init__(self, statement: ClauseElement, dialect: Dialect) -> None:
        compiled = cast(SQLCompiler, statement.compile(dialect=dialect))
        self._dialect = dialect
        self.sql = compiled.string
        self._order = compiled.positiontup  # parameter names in order; None: named parameters
        self._literals = {name: bind.value for name, bind in compiled.binds.items() if not bind.required}
        self._convert = {
            name: processor
            for name, bind in compiled.binds.items()
            if (processor := bind.type.dialect_impl(dialect).bind_processor(dialect)) is not None
        }

    def run(self, connection: Connection, params: dict[str, Any]) -> None:
        """Execute with ``params`` (by bind name) in ``connection``'s transaction."""
        self._execute(connection, params).close()

    def scalar(self, connection: Connection, params: dict[str, Any]) -> Any:
        """Execute a RETURNING statement; the one value of the one row it gave."""
        cursor = self._execute(connection, params)
        try:
            (value,) = cursor.fetchone()
            return value
        finally:
            cursor.close()

    def send(self, raw_connection: Any, params: dict[str, Any]) -> Any:
        """Queue the statement in ``raw_connection``'s open pipeline; returns its cursor (its
        rows can be fetched once the pipeline is synced). Errors surface at the sync."""
        cursor = raw_connection.cursor()
        cursor.execute(self.sql, self._arguments(params))
        return cursor

    def _arguments(self, params: dict[str, Any]) -> Any:
        values = {**self._literals, **params}
        for name, convert in self._convert.items():
            values[name] = convert(values[name])
        return values if self._order is None else [values[name] for name in self._order]

    def _execute(self, connection: Connection, params: dict[str, Any]) -> Any:
        cursor = connection.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
        try:
            cursor.execute(self.sql, self._arguments(params))
        except self._dialect.loaded_dbapi.Error as exc:
            cursor.close()
            raise DBAPIError.instance(
                self.sql, None, exc, self._dialect.loaded_dbapi.Error, hide_parameters=True, dialect=self._dialect
            ) from exc
        return cursor


class InstanceIndex:
    """Prepared statements for one dialect."""

    def __init__(self, dialect: Dialect) -> None:
        #: The four statements go in one pipeline (PostgreSQL with psycopg 3 on libpq 14+).
        self.pipelined = dialect.name == "postgresql" and dialect.driver == "psycopg" and _pipeline_supported()
        # Pipelined, a row finds its parents by subquery (the parent's RETURNING is not back yet).
        study_id: Any = bindparam("study_id")
        series_id: Any = bindparam("series_id")
        if self.pipelined:
            study_id = (
                select(_STUDY.c.id)
                .where(_STUDY.c.study_instance_uid == bindparam("study_instance_uid"))
                .scalar_subquery()
            )
            series_id = (
                select(_SERIES.c.id)
                .where(_SERIES.c.series_instance_uid == bindparam("series_instance_uid"))
                .scalar_subquery()
            )
        study = _insert(dialect.name, _STUDY).values(
            study_instance_uid=bindparam("study_instance_uid"),
            status=StudyStatus.RECEIVING.value,
            first_calling_ae_title=bindparam("calling_ae_title"),
            first_received_at=bindparam("received_at"),
            last_received_at=bindparam("received_at"),
            instance_count=1,
            size_bytes=bindparam("size_bytes"),
            needs_review=False,
            **{column: bindparam(column, type_=_STUDY.c[column].type) for column in _EVIDENCE},
        )
        self._study = _Prepared(
            study.on_conflict_do_update(
                index_elements=["study_instance_uid"],
                set_={
                    "instance_count": _STUDY.c.instance_count + 1,
                    "size_bytes": _STUDY.c.size_bytes + study.excluded.size_bytes,
                    "last_received_at": study.excluded.last_received_at,
                    **{column: func.coalesce(_STUDY.c[column], study.excluded[column]) for column in _EVIDENCE},
                },
            ).returning(_STUDY.c.id),
            dialect,
        )
        series = _insert(dialect.name, _SERIES).values(
            study_id=study_id,
            series_instance_uid=bindparam("series_instance_uid"),
            modality=bindparam("modality"),
            body_part=bindparam("series_body_part"),
            description=bindparam("series_description"),
        )
        series_upsert = series.on_conflict_do_update(
            index_elements=["series_instance_uid"],
            set_={"modality": func.coalesce(_SERIES.c.modality, series.excluded.modality)},
        )
        self._series = _Prepared(series_upsert if self.pipelined else series_upsert.returning(_SERIES.c.id), dialect)
        self._instance = _Prepared(
            _INSTANCE.insert().values(
                study_id=study_id,
                series_id=series_id,
                sop_instance_uid=bindparam("sop_instance_uid"),
                sop_class_uid=bindparam("sop_class_uid"),
                transfer_syntax_uid=bindparam("transfer_syntax_uid"),
                relative_path=bindparam("relative_path"),
                size_bytes=bindparam("size_bytes"),
                dataset_sha256=bindparam("dataset_sha256"),
                calling_ae_title=bindparam("calling_ae_title"),
                received_at=bindparam("received_at"),
            ),
            dialect,
        )
        sender = _insert(dialect.name, _SENDER).values(
            study_id=study_id,
            calling_ae_title=bindparam("calling_ae_title"),
            peer_address=bindparam("peer_address"),
            first_received_at=bindparam("received_at"),
            last_received_at=bindparam("received_at"),
            instance_count=1,
        )
        self._sender = _Prepared(
            sender.on_conflict_do_update(
                index_elements=["study_id", "calling_ae_title", "peer_address"],
                set_={
                    "last_received_at": sender.excluded.last_received_at,
                    "instance_count": _SENDER.c.instance_count + 1,
                },
            ),
            dialect,
        )

    def record(self, connection: Connection, row: IndexRow) -> int:
        """Write the rows of one instance; returns the study id. Does not commit.

        Raises
        ------
        sqlalchemy.exc.IntegrityError
            The SOP Instance UID is already indexed (the caller decides duplicate or conflict).
        sqlalchemy.exc.DBAPIError
            Any other database error (the transaction must be rolled back).
        """
        study: dict[str, Any] = {
            "study_instance_uid": row.study_instance_uid,
            "calling_ae_title": row.calling_ae_title,
            "received_at": row.received_at,
            "size_bytes": row.size_bytes,
            **{column: row.evidence.get(column) for column in _EVIDENCE},
        }
        parents = {"study_instance_uid": row.study_instance_uid, "series_instance_uid": row.series_instance_uid}
        series: dict[str, Any] = {
            **parents,
            "modality": row.modality,
            "series_body_part": row.series_body_part,
            "series_description": row.series_description,
        }
        instance: dict[str, Any] = {
            **parents,
            "sop_instance_uid": row.sop_instance_uid,
            "sop_class_uid": row.sop_class_uid,
            "transfer_syntax_uid": row.transfer_syntax_uid,
            "relative_path": row.relative_path,
            "size_bytes": row.size_bytes,
            "dataset_sha256": row.dataset_sha256,
            "calling_ae_title": row.calling_ae_title,
            "received_at": row.received_at,
        }
        sender: dict[str, Any] = {
            **parents,
            "calling_ae_title": row.calling_ae_title,
            "peer_address": row.peer_address,
            "received_at": row.received_at,
        }
        if self.pipelined:
            return self._record_pipelined(connection, study, series, instance, sender)
        study_id = self._study.scalar(connection, study)
        series["study_id"] = instance["study_id"] = sender["study_id"] = study_id
        instance["series_id"] = self._series.scalar(connection, series)
        self._instance.run(connection, instance)
        self._sender.run(connection, sender)
        return int(study_id)

    def _record_pipelined(
        self,
        connection: Connection,
        study: dict[str, Any],
        series: dict[str, Any],
        instance: dict[str, Any],
        sender: dict[str, Any],
    ) -> int:
        raw: Any = connection.connection.dbapi_connection
        cursors: list[Any] = []
        try:
            with raw.pipeline():  # synced (one round trip) when the block ends
                for statement, params in (
                    (self._study, study),
                    (self._series, series),
                    (self._instance, instance),
                    (self._sender, sender),
                ):
                    cursors.append(statement.send(raw, params))
            (study_id,) = cursors[0].fetchone()
        except raw.Error as exc:
            # PostgreSQL skips the statements after the one that failed, up to the Sync
            raise DBAPIError.instance(
                _PIPELINE, None, exc, raw.Error, hide_parameters=True, dialect=connection.dialect
            ) from exc
        finally:
            for cursor in cursors:
                cursor.close()
        return int(study_id)


#: How a failed pipelined index write is named in its error (the SQL of four statements).
_PIPELINE = "pipelined index write: upsert study, upsert series, insert instance, upsert study sender"


def _pipeline_supported() -> bool:
    """Whether psycopg 3 can run pipelines here (libpq 14 or newer)."""
    try:
        import psycopg
    except ImportError:  # pragma: no cover - the dialect says psycopg
        return False
    return bool(psycopg.Pipeline.is_supported())
