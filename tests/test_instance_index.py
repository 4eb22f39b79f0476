"""The hot-path index write (router.db.instance_index) on both engines: the rows it writes, the
error a second copy raises, and on PostgreSQL the four statements in one pipeline (2 round
trips per instance instead of 6, docs/benchmarks.md)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

import pytest
from sqlalchemy import Engine, select
from sqlalchemy.exc import IntegrityError

from router.db.engine import make_engine
from router.db.instance_index import IndexRow, InstanceIndex
from router.db.models import Instance, Series, Study, StudySender

RECEIVED = dt.datetime(2026, 12, 6, 1, 0, tzinfo=dt.UTC)


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    made = make_engine(database_url)
    try:
        yield made
    finally:
        made.dispose()


def _row(sop: str, series: str = "1.2.3.2", study: str = "1.2.3.1", **overrides: object) -> IndexRow:
    values: dict[str, object] = {
        "study_instance_uid": study,
        "series_instance_uid": series,
        "sop_instance_uid": sop,
        "sop_class_uid": "1.2.840.10008.5.1.4.1.1.2",
        "transfer_syntax_uid": "1.2.840.10008.1.2.1",
        "relative_path": f"{study}/{series}/{sop}.dcm",
        "size_bytes": 1000,
        "dataset_sha256": "ab" * 32,
        "calling_ae_title": "CT_NORTH",
        "peer_address": "10.0.0.7",
        "received_at": RECEIVED,
        "modality": "CT",
        "series_body_part": "CHEST",
        "series_description": None,
        "evidence": {"accession_number": "ACC-1"},
    }
    values.update(overrides)
    return IndexRow(**values)  # type: ignore[arg-type]


def test_rows_find_their_parents_and_a_second_copy_raises(engine: Engine) -> None:
    index = InstanceIndex(engine.dialect)
    assert index.pipelined is (engine.dialect.name == "postgresql")
    with engine.begin() as connection:
        first = index.record(connection, _row("1.2.3.3.1"))
        assert index.record(connection, _row("1.2.3.3.2", evidence={"accession_number": "ACC-2"})) == first
        other_series = index.record(connection, _row("1.2.3.3.3", series="1.2.3.4", modality="SR"))
        other_study = index.record(connection, _row("1.2.3.3.4", series="1.2.3.6", study="1.2.3.5"))
    assert first == other_series != other_study
    with engine.connect() as connection:
        studies = {
            uid: (key, count, size, accession)
            for uid, key, count, size, accession in connection.execute(
                select(
                    Study.study_instance_uid, Study.id, Study.instance_count, Study.size_bytes, Study.accession_number
                )
            )
        }
        series = dict(connection.execute(select(Series.series_instance_uid, Series.study_id)).all())
        instances = {
            sop: (study_id, series_uid)
            for sop, study_id, series_uid in connection.execute(
                select(Instance.sop_instance_uid, Instance.study_id, Series.series_instance_uid).join(
                    Series, Series.id == Instance.series_id
                )
            )
        }
        senders = connection.execute(
            select(StudySender.study_id, StudySender.calling_ae_title, StudySender.instance_count)
        ).all()
    assert studies == {"1.2.3.1": (first, 3, 3000, "ACC-1"), "1.2.3.5": (other_study, 1, 1000, "ACC-1")}
    assert series == {"1.2.3.2": first, "1.2.3.4": first, "1.2.3.6": other_study}
    assert instances == {
        "1.2.3.3.1": (first, "1.2.3.2"),
        "1.2.3.3.2": (first, "1.2.3.2"),
        "1.2.3.3.3": (first, "1.2.3.4"),
        "1.2.3.3.4": (other_study, "1.2.3.6"),
    }
    assert sorted(senders) == sorted([(first, "CT_NORTH", 3), (other_study, "CT_NORTH", 1)])

    # a second copy of a SOP Instance UID: IntegrityError, and nothing of it is kept
    with pytest.raises(IntegrityError), engine.begin() as connection:
        index.record(connection, _row("1.2.3.3.1"))
    with engine.connect() as connection:
        assert connection.execute(select(Study.instance_count).where(Study.id == first)).scalar_one() == 3
        # the connection that failed is usable again (the pipeline was synced and rolled back)
    with engine.begin() as connection:
        assert index.record(connection, _row("1.2.3.3.5")) == first


def test_a_duplicate_in_a_savepoint_leaves_the_transaction_usable(engine: Engine) -> None:
    """The group commit's batch: each instance in a savepoint; a second copy rolls back only its own."""
    index = InstanceIndex(engine.dialect)
    with engine.begin() as connection:
        index.record(connection, _row("1.2.3.3.1"))
    with engine.begin() as connection:
        savepoint = connection.begin_nested()
        with pytest.raises(IntegrityError):
            index.record(connection, _row("1.2.3.3.1"))
        savepoint.rollback()
        savepoint = connection.begin_nested()
        index.record(connection, _row("1.2.3.3.2"))
        savepoint.commit()
    with engine.connect() as connection:
        assert sorted(connection.execute(select(Instance.sop_instance_uid)).scalars()) == ["1.2.3.3.1", "1.2.3.3.2"]
        assert connection.execute(select(Study.instance_count)).scalar_one() == 2
