"""Prometheus metrics of one router node (prometheus-client), served by :mod:`router.http`.

Two kinds of numbers, each from where it is true:

- **Events counted by the process that sees them**: C-STORE requests answered by DICOM status,
  bytes received, C-STORE handling time (:class:`ReceiveMetrics`, in whichever process
  listens), and the routing pass time (:class:`ServerMetrics`, in the parent). With several
  receiving processes (``listener.workers``) each worker writes its counters to files in a
  private folder (prometheus-client's multiprocess mode, ``PROMETHEUS_MULTIPROC_DIR``) and the
  parent sums them at scrape time.
- **State read from the database at scrape time** (:class:`DatabaseCollector`): studies by
  status, held studies by reason, forwarding queue depth and given-up jobs. The database is
  the truth shared by every process and node; nothing is counted twice or lost on restart.

Every metric lives in a registry made per server (no module-level registry or metric).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from router.db.models import OutboxJob, Study
from router.dicom.scp import StoreHandler, received_spool
from router.domain.enums import HoldReason, OutboxStatus, StudyStatus

LOG = logging.getLogger(__name__)

#: prometheus-client reads this environment variable when it is imported, in each process.
MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"

#: C-STORE handling time buckets, in seconds (an fsync and a commit: milliseconds on a healthy disk).
CSTORE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
#: Routing pass buckets, in seconds.
ROUTING_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class ReceiveMetrics:
    """What the C-STORE SCP of one process counts.

    - ``router_instances_received_total{status}``: C-STORE requests answered, by the DICOM status
      sent (``0x0000``, ``0xA700``, ``0xC210``...; PS3.4 Annex B.2.3);
    - ``router_received_bytes_total``: bytes of the data sets received (as written to the
      archive's incoming folder, File Meta Information included), whatever the answer;
    - ``router_cstore_duration_seconds``: from the data set fully received to the response
      (decode the header, fsync, rename, commit), in seconds.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self.instances = Counter(
            "router_instances_received",
            "C-STORE requests answered, by DICOM status (PS3.4 B.2.3)",
            ["status"],
            registry=registry,
        )
        self.bytes = Counter(
            "router_received_bytes", "Bytes of C-STORE data sets received (Part 10 file size)", registry=registry
        )
        self.latency = Histogram(
            "router_cstore_duration_seconds",
            "Seconds from a C-STORE data set fully received to its response",
            buckets=CSTORE_BUCKETS,
            registry=registry,
        )
        self._by_status: dict[int, Any] = {}  # the labelled counter of each status seen

    def observe(self, status: int, size_bytes: int | None, seconds: float) -> None:
        """Count one answered C-STORE."""
        counter = self._by_status.get(status)
        if counter is None:
            counter = self._by_status[status] = self.instances.labels(status=f"0x{status:04X}")
        counter.inc()
        if size_bytes:
            self.bytes.inc(size_bytes)
        self.latency.observe(seconds)


class ServerMetrics:
    """What the parent process of ``router serve`` counts: routing passes.

    - ``router_routing_pass_duration_seconds``: one pass of the routing timer that routed at
      least one study (locate, eligibility, assignment, decision record, outbox), in seconds.
      The time from a study's last instance to its assignment is this plus
      ``routing.stable_seconds`` and up to one ``routing.poll_interval``;
    - ``router_studies_routed_total{status}``: routing outcomes (``assigned``, ``held``).
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self.routing_pass = Histogram(
            "router_routing_pass_duration_seconds",
            "Seconds of a routing pass that routed at least one study",
            buckets=ROUTING_BUCKETS,
            registry=registry,
        )
        self.routed = Counter(
            "router_studies_routed", "Studies routed, by the outcome (assigned or held)", ["status"], registry=registry
        )

    def observe_routing(self, statuses: list[str], seconds: float) -> None:
        """Record one routing pass; a pass that routed nothing is not observed."""
        if not statuses:
            return
        self.routing_pass.observe(seconds)
        for status in statuses:
            self.routed.labels(status=status).inc()


class DatabaseCollector(Collector):
    """Gauges read from the database at scrape time (every status and reason, zeros included).

    - ``router_studies{status}``: studies by :class:`~router.domain.enums.StudyStatus`;
    - ``router_held_studies{reason}``: held studies by :class:`~router.domain.enums.HoldReason`;
    - ``router_forwarding_jobs{status}``: outbox jobs (one per study and destination) by
      :class:`~router.domain.enums.OutboxStatus`; ``pending`` is the queue depth, ``failed`` the
      jobs that gave up after ``forwarding.max_attempts``;
    - ``router_forwarding_retrying``: pending jobs that have failed at least once;
    - ``router_database_up``: 1 if these could be read, else 0 (and the others are left out).
    """

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self._sessions = sessions

    def describe(self) -> list[Metric]:
        """Nothing up front: the registry must not call :meth:`collect` (a query) on registration."""
        return []

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("router_database_up", "1 if the index database answered the scrape's queries")
        try:
            with self._sessions() as session:
                studies = dict(session.execute(select(Study.status, func.count()).group_by(Study.status)).all())
                held = dict(
                    session.execute(
                        select(Study.hold_reason, func.count())
                        .where(Study.status == StudyStatus.HELD)
                        .group_by(Study.hold_reason)
                    ).all()
                )
                jobs = dict(session.execute(select(OutboxJob.status, func.count()).group_by(OutboxJob.status)).all())
                retrying = session.scalar(
                    select(func.count()).where(OutboxJob.status == OutboxStatus.PENDING, OutboxJob.attempts > 0)
                )
        except SQLAlchemyError as exc:
            LOG.warning("metrics: database not readable: %s", type(exc).__name__)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield _by_label("router_studies", "Studies by status", "status", StudyStatus, studies)
        yield _by_label("router_held_studies", "Held studies by hold reason", "reason", HoldReason, held)
        yield _by_label("router_forwarding_jobs", "Forwarding outbox jobs by status", "status", OutboxStatus, jobs)
        pending_retry = GaugeMetricFamily(
            "router_forwarding_retrying", "Pending forwarding jobs that failed at least once"
        )
        pending_retry.add_metric([], int(retrying or 0))
        yield pending_retry


def _by_label(name: str, documentation: str, label: str, members: Any, counts: dict[Any, int]) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, documentation, labels=[label])
    for member in members:
        family.add_metric([member.value], int(counts.get(member, 0)))
    return family


@dataclass
class MeteredStoreHandler(StoreHandler):
    """The C-STORE handler, counting each answer in :class:`ReceiveMetrics`."""

    metrics: ReceiveMetrics | None = None

    def __call__(self, event: Any) -> Any:
        started = time.perf_counter()
        size = _received_size(event)
        response = super().__call__(event)
        if self.metrics is not None:
            self.metrics.observe(int(response.Status), size, time.perf_counter() - started)
        return response


def _received_size(event: Any) -> int | None:
    """Size in bytes of the received data set's temporary file (chunked reception), if known:
    as its spool file counted it, else from the file system."""
    spool = received_spool(event)
    if spool is not None and not spool.failed:
        return spool.size
    try:
        return os.stat(event.dataset_path).st_size
    except (AttributeError, OSError, TypeError):
        return None


def server_registry(sessions: sessionmaker[Session], multiprocess_dir: Path | None) -> CollectorRegistry:
    """The registry of a server: database gauges, plus the worker processes' counters when
    ``multiprocess_dir`` (the folder they write to) is given."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DatabaseCollector(sessions))
    if multiprocess_dir is not None:
        MultiProcessCollector(registry, path=str(multiprocess_dir))
    return registry


__all__ = [
    "MULTIPROCESS_ENV",
    "DatabaseCollector",
    "MeteredStoreHandler",
    "ReceiveMetrics",
    "ServerMetrics",
    "server_registry",
]
