"""`router serve` as a real process: storescu from another process, the CLI, SIGTERM, SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import dcmread
from pynetdicom import AE
from pynetdicom.sop_class import Verification
from sqlalchemy import create_engine, func, select, text

from router.db.models import Instance, RoutingDecision, Study
from tests.conftest import DCMTK_STORESCU, PG_URL, REPO, SAMPLES
from tests.dicom_helpers import free_port, make_dataset, write_part10

pytestmark = [pytest.mark.network, pytest.mark.slow]


def _config(tmp_path: Path, port: int, stable: float = 1.0, database_url: str | None = None) -> Path:
    config = tmp_path / "router.toml"
    lines = [
        "[listener]",
        'host = "127.0.0.1"',
        f"port = {port}",
        "drain_timeout = 10.0",
        "[paths]",
        f'data_dir = "{tmp_path / "var"}"',
        "[routing]",
        f"stable_seconds = {stable}",
        "poll_interval = 0.2",
    ]
    if database_url:
        lines += ["[database]", f'url = "{database_url}"']
    config.write_text("\n".join(lines) + "\n")
    return config


def _router(config: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "router", "--config", str(config), *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    if check:
        assert result.returncode == 0, result.stderr
    return result


def _start(config: Path, port: int) -> subprocess.Popen[str]:
    process = subprocess.Popen(
        [sys.executable, "-m", "router", "--config", str(config), "serve"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"router serve exited: {process.stderr.read() if process.stderr else ''}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return process
        except OSError:
            time.sleep(0.1)
    process.kill()
    raise AssertionError("router serve did not start listening")


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    try:
        yield started
    finally:
        for process in started:
            if process.poll() is None:
                process.kill()
                process.wait(timeout=10)


def _wait_json(config: Path, predicate, timeout: float = 30.0) -> list[dict]:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        rows = json.loads(_router(config, "studies", "list", "--json").stdout)
        if predicate(rows) or time.monotonic() > deadline:
            return rows
        time.sleep(0.3)


@pytest.mark.skipif(DCMTK_STORESCU is None, reason="DCMTK storescu not installed")
def test_serve_receives_from_storescu_and_the_cli_shows_assignment_and_ledgers(tmp_path: Path, processes: list) -> None:
    port = free_port()
    config = _config(tmp_path, port)
    _router(config, "db", "upgrade")
    _router(config, "facilities", "add", "--ae-title", "CT_NORTH", "--state", "TX", "--timezone", "America/Chicago")
    _router(config, "radiologists", "add", "--npi", "1234567893", "--name", "Doe^Jane")
    _router(
        config,
        "licenses",
        "add",
        "--npi",
        "1234567893",
        "--state",
        "TX",
        "--number",
        "TX-123",
        "--expires",
        "2099-06-30",
    )
    server = _start(config, port)
    processes.append(server)
    files = sorted((SAMPLES / "CT_NORTH").glob("*/*.dcm"))
    sent = subprocess.run(
        [DCMTK_STORESCU, "-aet", "CT_NORTH", "-aec", "ROUTER", "127.0.0.1", str(port), *map(str, files)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert sent.returncode == 0, sent.stderr
    rows = _wait_json(config, lambda rows: rows and rows[0]["status"] == "assigned")
    (row,) = rows
    assert (row["status"], row["exam_state"], row["exam_state_source"], row["assigned_npi"], row["instance_count"]) == (
        "assigned",
        "TX",
        "facility",
        "1234567893",
        len(files),
    )
    # storage accrues per whole month held: this month is not over, so nothing is charged yet
    accrued = json.loads(_router(config, "ledger", "accrue", "--json").stdout)
    assert (accrued["months"], accrued["written"]) == ([], 0)
    assert json.loads(_router(config, "ledger", "infrastructure", "--json").stdout) == []
    _router(config, "studies", "complete", row["study_instance_uid"])
    professional = json.loads(_router(config, "ledger", "professional", "--json").stdout)
    assert [
        (r["cpt_code"], r["modifier"], r["rendering_npi"], r["license_state"], r["license_number"])
        for r in professional
    ] == [("71260", "26", "1234567893", "TX", "TX-123")]
    csv_lines = _router(config, "ledger", "professional", "--csv").stdout.splitlines()
    assert csv_lines[0].startswith("id,recorded_at,kind,") and len(csv_lines) == 2
    server.send_signal(signal.SIGTERM)
    assert server.wait(timeout=30) == 0
    assert "stopped" in server.stderr.read()


def _sender(port: int, paths: list[Path], acked: list[str], calling: str) -> None:
    ae = AE(ae_title=calling)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    ae.add_requested_context("1.2.840.10008.5.1.4.1.1.2", ["1.2.840.10008.1.2.1"])
    try:
        assoc = ae.associate("127.0.0.1", port, ae_title="ROUTER")
        if not assoc.is_established:
            return
        for path in paths:
            ds = dcmread(path)
            try:
                status = assoc.send_c_store(ds)
            except Exception:
                return
            if "Status" in status and status.Status == 0x0000:
                acked.append(str(ds.SOPInstanceUID))
            if not assoc.is_established:
                return
        assoc.release()
    except Exception:
        return


@pytest.mark.parametrize("engine", ["sqlite", "postgresql"])
def test_sigkill_mid_load_loses_nothing_acknowledged_and_routes_each_study_once(
    tmp_path: Path, processes: list, engine: str
) -> None:
    database_url = None
    schema = None
    if engine == "postgresql":
        if not PG_URL:
            pytest.skip("ROUTER_TEST_DATABASE_URL not set")
        schema = f"t_kill_{os.getpid()}_{int(time.time())}"
        admin = create_engine(PG_URL)
        with admin.begin() as connection:
            connection.execute(text(f'CREATE SCHEMA "{schema}"'))
        database_url = f"{PG_URL}?options=-csearch_path%3D{schema}"
    try:
        _kill_and_restart(tmp_path, processes, database_url)
    finally:
        if schema:
            with admin.begin() as connection:
                connection.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
            admin.dispose()


def _kill_and_restart(tmp_path: Path, processes: list, database_url: str | None) -> None:
    port = free_port()
    config = _config(tmp_path, port, stable=1.5, database_url=database_url)
    _router(config, "db", "upgrade")
    # three studies, each sent by its own association, 150 instances each
    batches = []
    for index in range(3):
        study = f"1.2.826.0.1.3680043.10.555.{index + 1}"
        batches.append(
            [
                write_part10(make_dataset(StudyInstanceUID=study), tmp_path / "src" / f"{index}-{n}.dcm")
                for n in range(150)
            ]
        )
    server = _start(config, port)
    processes.append(server)
    acked: list[str] = []
    threads = [
        threading.Thread(target=_sender, args=(port, batch, acked, f"MOD_{i}")) for i, batch in enumerate(batches)
    ]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 30
    while len(acked) < 60 and time.monotonic() < deadline:
        time.sleep(0.01)
    server.send_signal(signal.SIGKILL)
    server.wait(timeout=10)
    for thread in threads:
        thread.join(timeout=30)
    acked_now = set(acked)
    assert 60 <= len(acked_now) < 450, "the kill should land mid-load"
    # restart: recovery runs before listening
    restarted = _start(config, port)
    processes.append(restarted)
    url = database_url or f"sqlite:///{tmp_path / 'var' / 'router.db'}"
    engine = create_engine(url)
    archive = tmp_path / "var" / "archive"
    try:
        with engine.connect() as connection:
            rows = {
                uid: path for uid, path in connection.execute(select(Instance.sop_instance_uid, Instance.relative_path))
            }
        # every acknowledged instance is on disk, readable and indexed
        assert acked_now <= set(rows)
        for uid in acked_now:
            assert str(dcmread(archive / rows[uid]).SOPInstanceUID) == uid
        # no row points at a missing file; no temporary files left
        assert all((archive / path).exists() for path in rows.values())
        assert [p for p in (archive / ".incoming").rglob("*") if p.is_file()] == []
        # the studies that were waiting are routed after restart, exactly once
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with engine.connect() as connection:
                statuses = [row[0] for row in connection.execute(select(Study.status))]
                waiting = connection.scalar(select(func.count(Instance.id)).where(Instance.accounted_at.is_(None)))
            if statuses and all(status != "receiving" for status in statuses) and not waiting:
                break
            time.sleep(0.2)
        with engine.connect() as connection:
            assert connection.scalar(select(func.count(Study.id))) == 3
            decisions = connection.execute(
                select(RoutingDecision.study_id, func.count(RoutingDecision.id))
                .where(RoutingDecision.trigger == "stable")
                .group_by(RoutingDecision.study_id)
            ).all()
            assert sorted(count for _, count in decisions) == [1, 1, 1]
            # every instance taken into account by routing (with its study or as a late instance)
            accounted = connection.execute(
                select(Instance.study_id, func.count(Instance.id))
                .where(Instance.accounted_at.is_not(None))
                .group_by(Instance.study_id)
            ).all()
            counts = dict(connection.execute(select(Study.id, Study.instance_count)).all())
            assert {study_id: int(total) for study_id, total in accounted} == counts
    finally:
        engine.dispose()
        restarted.send_signal(signal.SIGTERM)
        assert restarted.wait(timeout=30) == 0


def test_a_second_serve_on_the_same_data_directory_is_refused(tmp_path: Path, processes: list) -> None:
    """With SO_REUSEPORT a second process could bind the same port and run recovery beside the first."""
    port = free_port()
    config = _config(tmp_path, port)
    first = _start(config, port)
    processes.append(first)
    second = _router(config, "serve", check=False)
    assert second.returncode == 1
    assert second.stderr.strip().splitlines() == [
        f"error: another `router serve` is running on data directory {tmp_path / 'var'} ({tmp_path / 'var' / 'serve.lock'} is locked)"
    ]
    first.send_signal(signal.SIGTERM)
    assert first.wait(timeout=30) == 0
    # the lock goes with the process: the next start is allowed
    again = _start(config, port)
    processes.append(again)
    again.send_signal(signal.SIGTERM)
    assert again.wait(timeout=30) == 0


def test_serve_refuses_to_start_on_a_broken_data_file(tmp_path: Path) -> None:
    membership = tmp_path / "imlc.csv"
    membership.write_text("state,status\nTX,spl\n")  # no as_of line, wrong header
    config = _config(tmp_path, free_port())
    config.write_text(config.read_text() + f'[imlc]\nmembership_file = "{membership}"\n')
    result = _router(config, "serve", check=False)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert lines == [
        "error: imlc.csv line 1: expected header 'state,status,effective_date,note,source', got 'state,status'"
    ]


def test_verbose_reaches_the_receiving_processes(tmp_path: Path) -> None:
    """``router --verbose serve`` with two workers: the workers log pynetdicom's dumps too (they
    were configured without the flag and logged nothing below WARNING)."""
    port = free_port()
    config = _config(tmp_path, port)
    config.write_text(config.read_text().replace("[listener]\n", "[listener]\nworkers = 2\n"))
    log = tmp_path / "serve.log"
    with log.open("w") as stream:
        process = subprocess.Popen(
            [sys.executable, "-m", "router", "--verbose", "--config", str(config), "serve"],
            stdout=stream,
            stderr=subprocess.STDOUT,
            cwd=REPO,
        )
        try:
            deadline = time.monotonic() + 60
            while "listening as" not in log.read_text() and time.monotonic() < deadline:
                time.sleep(0.1)
            ae = AE(ae_title="VERBOSE_SCU")
            ae.add_requested_context(Verification)
            assoc = ae.associate("127.0.0.1", port, ae_title="ROUTER")
            assert assoc.is_established
            assert assoc.send_c_echo().Status == 0x0000
            assoc.release()
        finally:
            process.terminate()
            process.wait(timeout=30)
    text = log.read_text()
    assert "Received Echo Request" in text  # pynetdicom's dump, logged by the worker that served it
