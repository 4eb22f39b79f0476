"""Scale-out: three `router serve` processes on one PostgreSQL schema and one archive folder.

The instances of every study are spread over the nodes (as a TCP load balancer would), one node
is killed (SIGKILL) while studies are arriving, another is frozen (SIGSTOP, then SIGCONT) while
the cluster routes and forwards, and a reader's license is suspended under load. Two real
receiving SCPs (pynetdicom) count every SOP Instance UID they get. Asserted exactly: one current
assignment per study, none to the suspended reader committed after the suspension, every
instance delivered to its study's reader once (no duplicates, none missing), and the
infrastructure ledger's bytes equal to the bytes stored (storage accrued by three nodes racing) and sent. PostgreSQL only.
"""

from __future__ import annotations

import datetime as dt
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE, AllStoragePresentationContexts, evt
from sqlalchemy import func, select

from router.app import RouterApp
from router.config import load_settings
from router.db.models import Assignment, ClusterLease, InfrastructureEntry, Instance, Node, Radiologist, Study
from router.domain.enums import InfrastructureKind, StudyStatus
from router.domain.infra_cost import next_month
from router.services.accrual import AccrualService
from tests.conftest import PG_URL, REPO, _pg_schema_url
from tests.dicom_helpers import free_port, make_dataset, send_datasets
from tests.roster_fixtures import NPI_A, NPI_B, OS_USER, roster_with_readers
from tests.test_cluster import install_commit_order_log, suspended_assignments

pytestmark = [pytest.mark.network, pytest.mark.slow]

NODES = 3
STUDIES = 9
INSTANCES_PER_STUDY = 6


class ReceivingScp:
    """A reader's workstation: a real C-STORE SCP counting the SOP Instance UIDs it receives."""

    def __init__(self, ae_title: str) -> None:
        self.ae_title = ae_title
        self.port = free_port()
        self.received: Counter[str] = Counter()
        self._lock = threading.Lock()
        ae = AE(ae_title=ae_title)
        ae.supported_contexts = AllStoragePresentationContexts
        self._server = ae.start_server(
            ("127.0.0.1", self.port), block=False, evt_handlers=[(evt.EVT_C_STORE, self._on_store)]
        )

    def _on_store(self, event: evt.Event) -> int:
        with self._lock:
            self.received[str(event.request.AffectedSOPInstanceUID)] += 1
        return 0x0000

    @property
    def destination(self) -> str:
        return f"{self.ae_title}@127.0.0.1:{self.port}"

    def snapshot(self) -> Counter[str]:
        with self._lock:
            return Counter(self.received)

    def stop(self) -> None:
        self._server.shutdown()


def _config(tmp_path: Path, index: int, port: int, url: str) -> Path:
    path = tmp_path / f"node{index}.toml"
    path.write_text(
        "\n".join(
            [
                "[listener]",
                'host = "127.0.0.1"',
                f"port = {port}",
                "drain_timeout = 5.0",
                "[paths]",
                f'data_dir = "{tmp_path / f"node{index}"}"',
                f'archive_dir = "{tmp_path / "archive"}"',
                "[database]",
                f'url = "{url}"',
                "idle_in_transaction_timeout = 4.0",
                "statement_timeout = 20.0",
                "pool_size = 3",
                "[node]",
                f'id = "node-{index}"',
                "heartbeat_interval = 0.5",
                "lease_seconds = 6.0",
                "[routing]",
                "stable_seconds = 6.0",
                "poll_interval = 0.2",
                "recheck_interval = 2.0",
                "[forwarding]",
                "initial_backoff = 0.5",
                "max_backoff = 2.0",
                "[logging]",
                'level = "WARNING"',
            ]
        )
        + "\n"
    )
    return path


def _wait(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


@pytest.fixture
def cluster_url() -> Iterator[str]:
    if not PG_URL:
        pytest.skip("ROUTER_TEST_DATABASE_URL not set")
    yield from _pg_schema_url()


def test_three_nodes_route_and_forward_exactly_once_through_a_kill_a_freeze_and_a_suspension(
    tmp_path: Path, cluster_url: str
) -> None:
    ports = [free_port() for _ in range(NODES)]
    configs = [_config(tmp_path, index, ports[index], cluster_url) for index in range(NODES)]
    readers = {NPI_A: ReceivingScp("READER_A"), NPI_B: ReceivingScp("READER_B")}
    processes: list[subprocess.Popen[bytes]] = []
    logs = []
    try:
        # All three start at once on an empty schema: the migration runs once, under the advisory lock.
        for index, config in enumerate(configs):
            log = open(tmp_path / f"node{index}.log", "wb")  # noqa: SIM115 - closed in finally
            logs.append(log)
            processes.append(
                subprocess.Popen(
                    [sys.executable, "-m", "router", "--config", str(config), "serve"],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=REPO,
                )
            )
        _wait(lambda: all(_listening(port) for port in ports), 40, "three nodes listening")
        assert all(process.poll() is None for process in processes)

        with RouterApp.open(load_settings(configs[0])) as admin:
            roster_with_readers(admin, (NPI_A, "TX"), (NPI_B, "TX"))
            for npi, scp in readers.items():
                admin.roster.radiologists.set(npi, OS_USER, destination=scp.destination)
            install_commit_order_log(admin)
            _run_workload(admin, processes, ports)
            _assert_exact_outcome(admin, readers, tmp_path / "archive")
            if os.environ.get("SCALE_OUT_REPORT"):
                with admin.sessions() as session:
                    superseded = session.scalar(
                        select(func.count(Assignment.id)).where(Assignment.superseded_at.is_not(None))
                    )
                print(f"\nA received {sum(readers[NPI_A].snapshot().values())}, superseded {superseded}")
    finally:
        for process in processes:
            if process.poll() is None:
                process.send_signal(signal.SIGCONT)
                process.terminate()
        for process in processes:
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for log in logs:
            log.close()
        for index in range(len(logs)):  # no node hit an unexpected error (e.g. a unique-key race)
            text = (tmp_path / f"node{index}.log").read_text()
            assert "Traceback" not in text and "IntegrityError" not in text, text[-3000:]
        if os.environ.get("SCALE_OUT_REPORT"):
            for index in range(len(logs)):
                print(f"--- node{index}.log\n" + (tmp_path / f"node{index}.log").read_text()[-3000:])
        for scp in readers.values():
            scp.stop()


def _run_workload(admin: RouterApp, processes: list[subprocess.Popen[bytes]], ports: list[int]) -> None:
    studies = [generate_uid() for _ in range(STUDIES)]
    series = {uid: generate_uid() for uid in studies}
    rounds = [
        [
            make_dataset(StudyInstanceUID=uid, SeriesInstanceUID=series[uid], AccessionNumber=f"ACC{n:04d}")
            for n, uid in enumerate(studies)
        ]
        for _ in range(INSTANCES_PER_STUDY)
    ]
    alive = [0, 1, 2]
    killed, frozen = 2, 1

    def send(batch: list[Dataset], first: int) -> None:
        """One association per batch; a node that fails is skipped like a load balancer would."""
        for attempt in range(len(alive)):
            port = ports[alive[(first + attempt) % len(alive)]]
            try:
                statuses = send_datasets(port, batch, calling_ae="CT_NORTH")
            except (AssertionError, OSError):
                continue
            if all(status.Status == 0x0000 for status in statuses):
                return
        raise AssertionError("no node stored the batch")

    # Round 1-2: every study's instances arrive on all three nodes (one batch per node).
    for number, batch in enumerate(rounds[:2]):
        for node in range(NODES):
            send(batch[node::NODES], number + node)
    # A node dies mid-ingest (nothing of it stable yet, so nothing of it is being forwarded: a
    # node killed between a reader's Success and its own record of it would send that instance
    # again after its lease, the one duplicate a crash can cause; see docs/scale-out.md).
    assert _studies(admin, StudyStatus.RECEIVING, negate=True) == 0, "a study was routed before the kill"
    processes[killed].send_signal(signal.SIGKILL)
    processes[killed].wait(timeout=10)
    alive.remove(killed)
    for number, batch in enumerate(rounds[2:4]):
        for node in range(NODES):
            send(batch[node::NODES], number + node)
    # The cluster now routes and forwards; a node freezes in the middle of it.
    _wait(lambda: _studies(admin, StudyStatus.RECEIVING, negate=True) >= 1, 20, "first study routed")
    processes[frozen].send_signal(signal.SIGSTOP)
    thawed_at = time.monotonic() + 2.0  # less than node.lease_seconds: nothing of it is taken over
    alive.remove(frozen)
    # Under load: reader A's license is suspended (the CLI's code path: change, then re-evaluation).
    # It waits while the frozen node is inside a routing decision (the roster lock), and no longer.
    changes: list[object] = []
    suspension = threading.Thread(
        target=lambda: changes.append(admin.roster.licenses.set_status(NPI_A, "TX", "suspended", OS_USER))
    )
    suspension.start()
    send([ds for batch in rounds[4:] for ds in batch], 0)  # late instances of every study, to node 0 alone
    time.sleep(max(0.0, thawed_at - time.monotonic()))
    processes[frozen].send_signal(signal.SIGCONT)
    suspension.join(timeout=30)
    assert len(changes) == 1 and getattr(changes[0], "reevaluation_error", "?") is None
    _wait(
        lambda: _studies(admin, StudyStatus.ASSIGNED) == STUDIES and _unaccounted_instances(admin) == 0,
        30,
        "every study assigned and every late instance taken into account",
    )


def _studies(app: RouterApp, status: StudyStatus, *, negate: bool = False) -> int:
    condition = Study.status != status if negate else Study.status == status
    with app.sessions() as session:
        return int(session.scalar(select(func.count(Study.id)).where(condition)) or 0)


def _unaccounted_instances(app: RouterApp) -> int:
    with app.sessions() as session:
        return int(session.scalar(select(func.count(Instance.id)).where(Instance.accounted_at.is_(None))) or 0)


def _accrue_on_three_nodes_at_once(app: RouterApp) -> list[int]:
    """Storage accrual of this month (as if it were over) run by three services at once, as
    three nodes would; returns what each wrote."""
    month_over = dt.datetime.combine(next_month(dt.datetime.now(dt.UTC).date()), dt.time(0), tzinfo=dt.UTC)
    start = threading.Barrier(3)

    def accrue() -> int:
        service = AccrualService(app.sessions, app.accrual.policy, lambda: month_over)
        start.wait()
        return service.accrue().written

    with ThreadPoolExecutor(3) as pool:
        return list(pool.map(lambda _: accrue(), range(3)))


def _assert_exact_outcome(app: RouterApp, readers: dict[str, ReceivingScp], archive: Path) -> None:
    # every study's storage accrued exactly once, whichever of three racing nodes wrote it
    assert sum(_accrue_on_three_nodes_at_once(app)) == STUDIES
    with app.sessions() as session:
        instances = {
            sop: (study_id, size)
            for sop, study_id, size in session.execute(
                select(Instance.sop_instance_uid, Instance.study_id, Instance.size_bytes)
            )
        }
        current = dict(
            session.execute(
                select(Assignment.study_id, Radiologist.npi)
                .join(Radiologist, Radiologist.id == Assignment.radiologist_id)
                .where(Assignment.superseded_at.is_(None))
            ).all()
        )
        current_count = session.scalar(select(func.count(Assignment.id)).where(Assignment.superseded_at.is_(None)))
        paths = list(session.scalars(select(Instance.relative_path)))
        storage = session.scalar(
            select(func.sum(InfrastructureEntry.size_bytes)).where(
                InfrastructureEntry.kind == InfrastructureKind.STORAGE
            )
        )
        recheck = session.get(ClusterLease, "recheck")
        nodes = {node.node_id for node in session.scalars(select(Node))}
    # every instance stored once, on disk, whichever node received it
    assert len(instances) == STUDIES * INSTANCES_PER_STUDY
    assert storage == sum(size for _, size in instances.values()) == sum((archive / p).stat().st_size for p in paths)
    # one current assignment per study; reader A lost everything after the suspension
    assert current_count == STUDIES == len(current)
    assert set(current.values()) == {NPI_B}
    assert suspended_assignments(app) == []
    # every instance reached its study's reader exactly once; nothing is still pending
    expected_b = set(instances)
    _wait(lambda: set(readers[NPI_B].snapshot()) == expected_b, 30, "reader B has every instance")
    received_b, received_a = readers[NPI_B].snapshot(), readers[NPI_A].snapshot()
    assert max(received_b.values()) == 1 and set(received_b) == expected_b
    assert not received_a or max(received_a.values()) == 1  # what A got before the suspension, once

    # the transmission ledger counts exactly the bytes the two SCPs received (by archive file size)
    def sent() -> int:
        return sum(instances[sop][1] for scp in readers.values() for sop in scp.snapshot().elements())

    _wait(lambda: _transmitted(app) == sent(), 10, f"transmission ledger ({_transmitted(app)} bytes) to be {sent()}")
    assert recheck is not None and recheck.last_run_at is not None  # the cluster's recheck ran
    assert nodes == {"node-0", "node-1", "node-2"}
    # each node received into its own incoming folder
    assert {path.name for path in (archive / ".incoming").iterdir()} <= nodes


def _transmitted(app: RouterApp) -> int:
    with app.sessions() as session:
        return int(
            session.scalar(
                select(func.sum(InfrastructureEntry.size_bytes)).where(
                    InfrastructureEntry.kind == InfrastructureKind.TRANSMISSION
                )
            )
            or 0
        )
