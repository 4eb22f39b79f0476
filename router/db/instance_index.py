"""The hot-path index write of one received instance: four statements, no ORM.

Study and series rows are upserted (``INSERT ... ON CONFLICT DO UPDATE ... RETURNING id``, one
round trip each, race-free on SQLite and PostgreSQL), the instance row inserted (its unique SOP
Instance UID raises ``IntegrityError`` for a second copy), and the sender row upserted. The
statements are built and compiled once per dialect, then run on the raw DBAPI cursor of the
caller's connection (:class:`_Prepared`): the same SQL and the same bind conversions as
SQLAlchemy's, without its per-execution bookkeeping (docs/benchmarks.md). Like every query
helper here, :meth:`InstanceIndex.record` never commits: the caller owns the transaction.

Study-level evidence (accession number, addresses, procedure codes...) is filled from the first
instance that carries it (``COALESCE``): a later instance never overwrites what is known.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import Connection, Dialect, Table, bindparam, func
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

    def _execute(self, connection: Connection, params: dict[str, Any]) -> Any:
        values = {**self._literals, **params}
        for name, convert in self._convert.items():
            values[name] = convert(values[name])
        arguments: Any = values if self._order is None else [values[name] for name in self._order]
        cursor = connection.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
        try:
            cursor.execute(self.sql, arguments)
        except self._dialect.loaded_dbapi.Error as exc:
            cursor.close()
            raise DBAPIError.instance(
                self.sql, None, exc, self._dialect.loaded_dbapi.Error, hide_parameters=True, dialect=self._dialect
            ) from exc
        return cursor


class InstanceIndex:
    """Prepared statements for one dialect."""

    def __init__(self, dialect: Dialect) -> None:
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
            study_id=bindparam("study_id"),
            series_instance_uid=bindparam("series_instance_uid"),
            modality=bindparam("modality"),
            body_part=bindparam("series_body_part"),
            description=bindparam("series_description"),
        )
        self._series = _Prepared(
            series.on_conflict_do_update(
                index_elements=["series_instance_uid"],
                set_={"modality": func.coalesce(_SERIES.c.modality, series.excluded.modality)},
            ).returning(_SERIES.c.id),
            dialect,
        )
        self._instance = _Prepared(
            _INSTANCE.insert().values(
                study_id=bindparam("study_id"),
                series_id=bindparam("series_id"),
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
            study_id=bindparam("study_id"),
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
        """
        params: dict[str, Any] = {
            "study_instance_uid": row.study_instance_uid,
            "calling_ae_title": row.calling_ae_title,
            "received_at": row.received_at,
            "size_bytes": row.size_bytes,
            **{column: row.evidence.get(column) for column in _EVIDENCE},
        }
        study_id = self._study.scalar(connection, params)
        series_id = self._series.scalar(
            connection,
            {
                "study_id": study_id,
                "series_instance_uid": row.series_instance_uid,
                "modality": row.modality,
                "series_body_part": row.series_body_part,
                "series_description": row.series_description,
            },
        )
        self._instance.run(
            connection,
            {
                "study_id": study_id,
                "series_id": series_id,
                "sop_instance_uid": row.sop_instance_uid,
                "sop_class_uid": row.sop_class_uid,
                "transfer_syntax_uid": row.transfer_syntax_uid,
                "relative_path": row.relative_path,
                "size_bytes": row.size_bytes,
                "dataset_sha256": row.dataset_sha256,
                "calling_ae_title": row.calling_ae_title,
                "received_at": row.received_at,
            },
        )
        self._sender.run(
            connection,
            {
                "study_id": study_id,
                "calling_ae_title": row.calling_ae_title,
                "peer_address": row.peer_address,
                "received_at": row.received_at,
            },
        )
        return int(study_id)
