"""The operations endpoint: /metrics scraped after real C-STOREs (DCMTK storescu and a
pynetdicom SCU against the real listener), /healthz 200 and 503, in one and several processes."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from router.config import Settings
from router.server import RouterServer
from tests.conftest import DCMTK_STORESCU, SAMPLES, make_settings, running_router
from tests.dicom_helpers import make_dataset, send_datasets

pytestmark = pytest.mark.network

CASE = SAMPLES / "ER_SOUTH" / "institution_address_ok"  # 2 instances, InstitutionAddress in OK


def _http_settings(tmp_path: Path, database_url: str, **listener: object) -> Settings:
    settings = make_settings(tmp_path, database_url).replace("http", enabled=True, host="127.0.0.1", port=0)
    return settings.replace("listener", **listener) if listener else settings


def _get(server: RouterServer, path: str) -> tuple[int, str]:
    assert server.http is not None
    url = f"http://127.0.0.1:{server.http.bound_port}{path}"
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """``{(sample name, sorted labels): value}`` from a Prometheus text exposition."""
    values = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            values[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return values


def _storescu(port: int, files: list[Path], calling_ae: str = "ER_SOUTH") -> None:
    assert DCMTK_STORESCU is not None
    result = subprocess.run(
        [DCMTK_STORESCU, "-aet", calling_ae, "-aec", "ROUTER", "127.0.0.1", str(port), *map(str, files)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr


def _wait_for(
    server: RouterServer, predicate: object, what: str
) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    deadline = time.monotonic() + 20
    while True:
        values = _samples(_get(server, "/metrics")[1])
        if predicate(values):  # type: ignore[operator]
            return values
        assert time.monotonic() < deadline, f"timed out waiting for {what}: {values}"
        time.sleep(0.1)


def _archived_bytes(settings: Settings) -> int:
    return sum(path.stat().st_size for path in settings.paths.archive.rglob("*.dcm") if ".quarantine" not in path.parts)


@pytest.mark.skipif(DCMTK_STORESCU is None, reason="DCMTK storescu not installed")
def test_metrics_after_real_c_stores(tmp_path: Path, database_url: str) -> None:
    settings = _http_settings(tmp_path, database_url)
    files = sorted(CASE.glob("*.dcm"))
    with running_router(settings) as server:
        before = _samples(_get(server, "/metrics")[1])
        assert before[("router_studies", (("status", "receiving"),))] == 0
        assert ("router_instances_received_total", (("status", "0x0000"),)) not in before

        _storescu(server.ports[0], files)
        bad = make_dataset(StudyInstanceUID=None)  # no Study Instance UID: 0xC001
        assert int(send_datasets(server.ports[0], [bad])[0].Status) == 0xC001

        values = _wait_for(
            server, lambda v: v.get(("router_studies", (("status", "held"),))) == 1, "the study to be routed (held)"
        )
    assert values[("router_instances_received_total", (("status", "0x0000"),))] == 2
    assert values[("router_instances_received_total", (("status", "0xC001"),))] == 1
    assert values[("router_cstore_duration_seconds_count", ())] == 3
    assert 0 < values[("router_cstore_duration_seconds_sum", ())] < 30
    # Every byte received: the two archived files (as written on receipt) plus the refused data set.
    archived = _archived_bytes(settings)
    assert archived > 0
    assert archived < values[("router_received_bytes_total", ())] < archived + 2000
    # From the database: the study is held (OK has no licensed reader: nobody is on the roster).
    assert values[("router_studies", (("status", "held"),))] == 1
    assert values[("router_studies", (("status", "assigned"),))] == 0
    assert values[("router_held_studies", (("reason", "no_eligible_radiologist"),))] == 1
    assert values[("router_held_studies", (("reason", "no_exam_state"),))] == 0
    assert values[("router_forwarding_jobs", (("status", "pending"),))] == 0
    assert values[("router_forwarding_retrying", ())] == 0
    assert values[("router_database_up", ())] == 1
    assert values[("router_studies_routed_total", (("status", "held"),))] == 1
    assert values[("router_routing_pass_duration_seconds_count", ())] == 1


@pytest.mark.skipif(DCMTK_STORESCU is None, reason="DCMTK storescu not installed")
def test_metrics_from_worker_processes(tmp_path: Path, sqlite_url: str) -> None:
    """Two receiving processes: their counters reach the parent's /metrics (multiprocess mode)."""
    settings = _http_settings(tmp_path, sqlite_url, workers=2)
    files = sorted(CASE.glob("*.dcm"))
    with running_router(settings) as server:
        assert server.workers is not None and server.receive_metrics is None
        _storescu(server.ports[0], files)
        _storescu(server.ports[0], files[:1])  # a resend of the same instance: still Success
        values = _wait_for(
            server,
            lambda v: v.get(("router_instances_received_total", (("status", "0x0000"),))) == 3,
            "three successes counted by the workers",
        )
        metrics_dir = server._metrics_dir
        assert metrics_dir is not None and any(metrics_dir.iterdir())
        assert values[("router_cstore_duration_seconds_count", ())] == 3
        assert values[("router_received_bytes_total", ())] >= _archived_bytes(settings) > 0
    assert not metrics_dir.exists()  # removed at stop


def test_healthz_ok_then_archive_not_writable(tmp_path: Path, database_url: str) -> None:
    settings = _http_settings(tmp_path, database_url)
    with running_router(settings) as server:
        status, body = _get(server, "/healthz")
        assert status == 200, body
        document = json.loads(body)
        assert document["status"] == "ok"
        assert {name: check["ok"] for name, check in document["checks"].items()} == {
            "listener": True,
            "database": True,
            "archive": True,
        }
        assert str(server.ports[0]) in document["checks"]["listener"]["detail"]
        assert not [p for p in server.app.archive.incoming.iterdir() if p.name.startswith(".healthz-")]

        # The archive's incoming folder becomes a file: nothing can be written there (as root too).
        incoming = server.app.archive.incoming
        shutil.rmtree(incoming)
        incoming.write_bytes(b"not a folder")
        status, body = _get(server, "/healthz")
        assert status == 503, body
        document = json.loads(body)
        assert document["status"] == "failing"
        assert document["checks"]["archive"]["ok"] is False
        assert "NotADirectoryError" in document["checks"]["archive"]["detail"]
        assert document["checks"]["database"]["ok"] is True
        assert document["checks"]["listener"]["ok"] is True
        assert _get(server, "/nope")[0] == 404
        incoming.unlink()
        incoming.mkdir()


def test_http_is_off_by_default(tmp_path: Path, sqlite_url: str) -> None:
    assert Settings().http.enabled is False
    with running_router(make_settings(tmp_path, sqlite_url)) as server:
        assert server.http is None
