"""A hung (not refused) PostgreSQL turns into 0xA701 within ``database.statement_timeout``
(issue 12): another session holds a conflicting lock on the index tables; the C-STORE is
answered, not left hanging, and the association and listener carry on."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from router.dicom.status import StoreStatus
from tests.conftest import PG_URL, make_settings, running_router
from tests.dicom_helpers import make_dataset, send_datasets

pytestmark = [pytest.mark.network, pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)]


@pytest.mark.skipif(not PG_URL, reason="ROUTER_TEST_DATABASE_URL not set")
def test_locked_index_tables_are_answered_0xA701_within_the_statement_timeout(
    tmp_path: Path, database_url: str
) -> None:
    settings = make_settings(tmp_path, database_url).replace("database", busy_timeout=60.0, statement_timeout=1.0)
    with running_router(settings) as server:
        port = server.ports[0]
        (first,) = send_datasets(port, [make_dataset()])
        assert first.Status == StoreStatus.SUCCESS
        blocker = create_engine(database_url)
        try:
            with blocker.connect() as connection:
                transaction = connection.begin()
                connection.execute(text("LOCK TABLE studies, series, instances IN ACCESS EXCLUSIVE MODE"))
                started = time.monotonic()
                (held,) = send_datasets(port, [make_dataset()])
                waited = time.monotonic() - started
                transaction.rollback()
        finally:
            blocker.dispose()
        assert held.Status == StoreStatus.OUT_OF_RESOURCES_INDEX
        assert waited < 5  # statement_timeout (1 s), not lock_timeout (busy_timeout, 60 s)
        (after,) = send_datasets(port, [make_dataset()])
        assert after.Status == StoreStatus.SUCCESS
