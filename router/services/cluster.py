"""Several ``router serve`` nodes on one database: node identity, heartbeats, cluster leases.

- Each node has an id: ``[node] id``, else one generated on first start and kept in
  ``<data_dir>/node_id``, so a restarted node (or container with the same data volume) is the
  same node, and two nodes on one host are two nodes.
- Every node writes a heartbeat to the ``nodes`` table every ``heartbeat_interval`` seconds and,
  in the same transaction, renews the claims it holds (outbox jobs, cluster leases) until
  ``now + lease_seconds``. A node killed or frozen stops renewing; once its claims expire the
  other nodes take its work over.
- :meth:`ClusterService.run_once_per_interval` runs a piece of work (the periodic recheck) on one
  node per interval for the whole cluster, under a lease row in ``cluster_leases``.

See docs/scale-out.md for how the locks and leases fit together.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import socket
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
from sqlalchemy import or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, sessionmaker

from router.config import NODE_ID_PATTERN, Settings
from router.db.models import ClusterLease, Node, OutboxJob
from router.errors import ConfigError
from router.timeutil import Clock, utcnow

LOG = logging.getLogger(__name__)

#: File in the data directory that keeps a generated node id.
NODE_ID_FILE = "node_id"


def resolve_node_id(settings: Settings, *, create: bool) -> str | None:
    """This node's id: ``[node] id``, else the one kept in ``<data_dir>/node_id``.

    Parameters
    ----------
    create : bool
        Generate and keep an id (:func:`new_node_id`) when there is none yet. When false and
        there is none, ``None`` is returned (a CLI command that is not a node).

    Raises
    ------
    ConfigError
        The kept id is not a valid node id, or the file cannot be read or written.
    """
    if settings.node.id:
        return settings.node.id
    kept = _read_node_id(settings)
    if kept is not None or not create:
        return kept
    return keep_node_id(settings, new_node_id())


def new_node_id() -> str:
    """A fresh node id: ``<hostname>-<8 hex digits>`` (hostname folded to id characters)."""
    host = "".join(ch if ch.isalnum() or ch in "-_." else "-" for ch in socket.gethostname())[:40].strip("-._")
    return f"{host or 'node'}-{uuid.uuid4().hex[:8]}"


def keep_node_id(settings: Settings, node_id: str) -> str:
    """Keep ``node_id`` in ``<data_dir>/node_id`` unless an id is configured or kept already;
    returns the id in force (a concurrent first start keeps the first one written).

    Raises
    ------
    ConfigError
        The file cannot be read or written.
    """
    if settings.node.id:
        return settings.node.id
    path = Path(settings.paths.data_dir) / NODE_ID_FILE
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "x", encoding="ascii") as handle:  # "x": two starts at once keep the first id
            handle.write(node_id + "\n")
            handle.flush()
            os.fsync(handle.fileno())
    except FileExistsError:
        kept = _read_node_id(settings)
        assert kept is not None
        return kept
    except OSError as exc:
        raise ConfigError("node.id", f"cannot keep a generated node id in {path}: {exc.strerror}") from exc
    LOG.debug("generated node id %s (kept in %s)", node_id, path)
    return node_id


def _read_node_id(settings: Settings) -> str | None:
    path = Path(settings.paths.data_dir) / NODE_ID_FILE
    try:
        kept = path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError("node.id", f"cannot read {path}: {exc}") from exc
    if not NODE_ID_PATTERN.fullmatch(kept):
        raise ConfigError("node.id", f"{path} holds an invalid node id {kept!r}")
    return kept


@dataclass(frozen=True)
class NodeStatus:
    """One node as the ``nodes`` table shows it."""

    node_id: str
    hostname: str
    pid: int
    started_at: dt.datetime
    heartbeat_at: dt.datetime
    stopped_at: dt.datetime | None
    alive: bool  # heartbeat within the lease and not stopped

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict (times ISO 8601 UTC)."""
        return {
            "node_id": self.node_id,
            "hostname": self.hostname,
            "pid": self.pid,
            "started_at": self.started_at.isoformat(),
            "heartbeat_at": self.heartbeat_at.isoformat(),
            "stopped_at": self.stopped_at.isoformat() if self.stopped_at else None,
            "alive": self.alive,
        }


def _process_running(pid: int) -> bool:
    """Whether process ``pid`` of this host may still run.

    This very process counts as ended (a process restarted under the same pid, as a container's
    first process is, is not its own predecessor), and so does a zombie: a ``kill -9``-ed router
    stays one until its parent reaps it, which can be after its successor starts. A process that
    cannot be inspected (another user's) counts as running.
    """
    if pid <= 0 or pid == os.getpid():
        return False
    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False
    except psutil.Error:
        return True


class ClusterService:
    """Heartbeats, claim renewal and once-per-cluster work for one node."""

    def __init__(
        self, sessions: sessionmaker[Session], node_id: str, lease_seconds: float = 30.0, clock: Clock = utcnow
    ) -> None:
        self._sessions = sessions
        self.node_id = node_id
        self.lease = dt.timedelta(seconds=lease_seconds)
        self._clock = clock
        self._hostname = socket.gethostname()[:255]
        self._others_seen: set[tuple[int, str]] = set()  # (pid, host) of others using this node id
        self._started_at: dt.datetime | None = None  # set by register()

    def register(self) -> None:
        """Record that this node started (its first heartbeat).

        A heartbeat of this node id still within the lease, from a process that is not known to
        have ended, is logged as a WARNING (the same ``[node] id`` configured twice); one from a
        process of this host that no longer runs (killed, or the host restarted) only as INFO.
        """
        now = self._clock()
        hostname = self._hostname
        with self._sessions.begin() as session:
            node = session.get(Node, self.node_id, with_for_update=session.get_bind().dialect.name == "postgresql")
            if node is not None and node.stopped_at is None and node.heartbeat_at + self.lease > now:
                if node.hostname == hostname and not _process_running(node.pid):
                    LOG.info(
                        "node id %s: its previous process (pid %d) ended without a clean stop; taking over",
                        self.node_id,
                        node.pid,
                    )
                else:
                    LOG.warning(
                        "node id %s already has a live heartbeat (pid %d on %s): "
                        "is the same [node] id configured twice?",
                        self.node_id,
                        node.pid,
                        node.hostname,
                    )
            if node is None:
                node = Node(node_id=self.node_id, hostname="", pid=0, started_at=now, heartbeat_at=now)
                session.add(node)
            node.hostname = hostname
            node.pid = os.getpid()
            node.started_at = now
            self._started_at = now
            node.heartbeat_at = now
            node.stopped_at = None

    def heartbeat(self) -> int:
        """Refresh this node's heartbeat and renew its claims; returns the claims renewed.

        The node's row is marked running again (a process that stopped cleanly under the same
        node id marked it stopped), and a row last registered by another process (another pid,
        or another host) is logged as a WARNING once per such process and written back to this
        process's pid, host and start: the same ``[node] id`` configured twice is found while
        both run, and the row names a process that runs, so the other's next start warns again.
        """
        now = self._clock()
        until = now + self.lease
        with self._sessions.begin() as session:
            values: dict[str, Any] = {"heartbeat_at": now, "stopped_at": None}
            registered = session.execute(select(Node.pid, Node.hostname).where(Node.node_id == self.node_id)).first()
            if registered is not None and (registered.pid, registered.hostname) != (os.getpid(), self._hostname):
                other = (int(registered.pid), str(registered.hostname))
                if other not in self._others_seen:
                    self._others_seen.add(other)
                    LOG.warning(
                        "node id %s is also used by pid %d on %s (this process: pid %d on %s): "
                        "is the same [node] id configured twice?",
                        self.node_id,
                        other[0],
                        other[1],
                        os.getpid(),
                        self._hostname,
                    )
                if self._started_at is not None:
                    values.update(pid=os.getpid(), hostname=self._hostname, started_at=self._started_at)
            session.execute(
                update(Node)
                .where(Node.node_id == self.node_id)
                .values(**values)
                .execution_options(synchronize_session=False)
            )
            jobs = _rowcount(
                session.execute(
                    update(OutboxJob)
                    .where(OutboxJob.claimed_by == self.node_id, OutboxJob.claimed_until.is_not(None))
                    .values(claimed_until=until)
                    .execution_options(synchronize_session=False)
                )
            )
            leases = _rowcount(
                session.execute(
                    update(ClusterLease)
                    .where(ClusterLease.holder == self.node_id)
                    .values(expires_at=until)
                    .execution_options(synchronize_session=False)
                )
            )
        return int(jobs or 0) + int(leases or 0)

    def stop(self) -> None:
        """Record a clean stop and give this node's claims back at once."""
        now = self._clock()
        with self._sessions.begin() as session:
            session.execute(
                update(Node)
                .where(Node.node_id == self.node_id)
                .values(stopped_at=now, heartbeat_at=now)
                .execution_options(synchronize_session=False)
            )
            session.execute(
                update(OutboxJob)
                .where(OutboxJob.claimed_by == self.node_id)
                .values(claimed_by=None, claimed_until=None)
                .execution_options(synchronize_session=False)
            )
            session.execute(
                update(ClusterLease)
                .where(ClusterLease.holder == self.node_id)
                .values(holder=None, expires_at=None)
                .execution_options(synchronize_session=False)
            )

    def nodes(self) -> list[NodeStatus]:
        """Every node that ever ran against this database, by node id."""
        now = self._clock()
        with self._sessions() as session:
            rows = list(session.scalars(select(Node).order_by(Node.node_id)))
        return [
            NodeStatus(
                node_id=row.node_id,
                hostname=row.hostname,
                pid=row.pid,
                started_at=row.started_at,
                heartbeat_at=row.heartbeat_at,
                stopped_at=row.stopped_at,
                alive=row.stopped_at is None and row.heartbeat_at + self.lease > now,
            )
            for row in rows
        ]

    def run_once_per_interval(self, name: str, interval_seconds: float, work: Callable[[], object]) -> bool:
        """Run ``work`` here if the cluster has not run ``name`` in the last ``interval_seconds``.

        The lease row is taken in a short transaction (``FOR UPDATE SKIP LOCKED`` on
        PostgreSQL: a node holding it never blocks the others), ``work`` runs outside any
        transaction while the heartbeat renews the lease, and ``last_run_at`` is written only
        when it succeeds. A holder that dies loses the lease ``lease_seconds`` after its last
        heartbeat. Returns whether ``work`` ran here. Exceptions of ``work`` propagate.
        """
        now = self._clock()
        due_before = now - dt.timedelta(seconds=interval_seconds)
        with self._sessions.begin() as session:
            _ensure_lease_row(session, name)
            statement = select(ClusterLease).where(
                ClusterLease.name == name,
                or_(ClusterLease.last_run_at.is_(None), ClusterLease.last_run_at <= due_before),
                or_(
                    ClusterLease.holder.is_(None),
                    ClusterLease.holder == self.node_id,
                    ClusterLease.expires_at < now,
                ),
            )
            if session.get_bind().dialect.name == "postgresql":
                statement = statement.with_for_update(skip_locked=True)
            lease = session.scalar(statement)
            if lease is None:
                return False
            lease.holder = self.node_id
            lease.expires_at = now + self.lease
        finished = False
        try:
            work()
            finished = True
        finally:
            with self._sessions.begin() as session:
                values: dict[str, object] = {"holder": None, "expires_at": None}
                if finished:
                    values["last_run_at"] = self._clock()
                session.execute(
                    update(ClusterLease)
                    .where(ClusterLease.name == name, ClusterLease.holder == self.node_id)
                    .values(**values)
                    .execution_options(synchronize_session=False)
                )
        return True


def _ensure_lease_row(session: Session, name: str) -> None:
    """Insert the lease row if missing; a concurrent insert by another node is not an error."""
    dialect = session.get_bind().dialect.name
    table: Any = ClusterLease.__table__
    if dialect == "postgresql":
        session.execute(postgresql.insert(table).values(name=name).on_conflict_do_nothing())
    elif dialect == "sqlite":
        session.execute(sqlite.insert(table).values(name=name).on_conflict_do_nothing())
    elif session.get(ClusterLease, name) is None:  # pragma: no cover - other engines are not supported
        session.add(ClusterLease(name=name))
        session.flush()


__all__ = ["NODE_ID_FILE", "ClusterService", "NodeStatus", "keep_node_id", "new_node_id", "resolve_node_id"]


def _rowcount(result: object) -> int:
    """Rows an UPDATE matched (``CursorResult.rowcount``)."""
    return int(getattr(result, "rowcount", 0) or 0)
