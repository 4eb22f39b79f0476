"""Start-up reconciliation of the archive and the index after a crash.

Runs before the listener accepts associations:

1. temporary files in this node's incoming folder (``.incoming/<node id>``) are deleted (nothing
   there was ever acknowledged); other nodes' folders are never touched: their transfers may be
   in progress;
2. if the previous run of this node (by node id) did not stop cleanly, instance files modified since the last
   clean shutdown (found through study-folder modification times, not a full walk) are checked:
   a file without a row is indexed when its header names exactly its path, as received from the
   AE title its File Meta Information names (its index row may have been taken back by a power
   loss: ``database.sqlite_intake_synchronous``), else quarantined;
3. rows received since then whose file is missing are reported (logged and returned).

Studies that were waiting to be routed are still ``receiving`` (routing commits its outcome
with its claim), so the routing timer routes them, exactly once.
"""

from __future__ import annotations

import datetime as dt
import itertools
import logging
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from router.archive import QUARANTINE
from router.archive_backend import ArchiveBackend
from router.db.models import Instance, NodeRun
from router.domain.instance import InstanceHeader, uid_problem
from router.errors import ArchiveError, IndexWriteError
from router.services.intake import IntakeService, Sender
from router.timeutil import Clock, utcnow

LOG = logging.getLogger(__name__)

#: Calling AE title recorded for files indexed by recovery whose File Meta Information names no
#: sender (Sending Application Entity Title, 0002,0017): the real sender is unknown.
RECOVERY_AE_TITLE = "RECOVERY"
_MARGIN = dt.timedelta(seconds=5)
#: Most files (or rows) named one by one in the log after an unclean stop.
_FILES_LOGGED = 20


@dataclass
class RecoveryReport:
    """What start-up reconciliation found and did."""

    temp_files_removed: int = 0
    scanned_since: dt.datetime | None = None
    clean_previous_shutdown: bool = True
    files_checked: int = 0
    indexed: list[str] = field(default_factory=list)  # relative paths
    quarantined: list[str] = field(default_factory=list)
    missing_files: list[str] = field(default_factory=list)  # SOP Instance UIDs


class RecoveryService:
    """Reconciles the archive with the index; records node runs for the next start."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        archive: ArchiveBackend,
        intake: IntakeService,
        read_header: Callable[[Path], InstanceHeader],
        clock: Clock = utcnow,
        node_id: str | None = None,
    ) -> None:
        self._sessions = sessions
        self._archive = archive
        self._intake = intake
        self._read_header = read_header
        self._clock = clock
        # The node id ([node] id); without one (single node, old callers) host and archive path.
        self.node = node_id or f"{socket.gethostname()}:{archive.root}"[:255]

    def reconcile(self) -> RecoveryReport:
        """Run the three steps above; returns what was done."""
        report = RecoveryReport(temp_files_removed=self._archive.clean_incoming(0))
        since = self._unclean_since()
        if since is None:
            return report
        report.clean_previous_shutdown = False
        report.scanned_since = since
        known = self._known_paths(since) if self._archive.scans_for_orphans else set()
        candidates = []
        for relative in self._archive.files_modified_since(since.timestamp()):
            report.files_checked += 1
            if relative not in known:
                candidates.append(relative)
        # a file indexed earlier than the window (received_at is the first receipt; a resend
        # rewrites the file) is known too: only files with no index row are orphans
        indexed = self._indexed_paths(candidates) if candidates else set()
        for relative in candidates:
            if relative not in indexed:
                self._adopt_or_quarantine(relative, report)
        report.missing_files = self._rows_without_files(since)
        if report.indexed or report.quarantined or report.missing_files:
            LOG.warning(
                "recovery after an unclean shutdown: %d file(s) indexed, %d quarantined, %d indexed instance(s) without a file",
                len(report.indexed),
                len(report.quarantined),
                len(report.missing_files),
            )
        if len(report.indexed) > _FILES_LOGGED:
            LOG.info("recovery indexed %d more file(s) not listed", len(report.indexed) - _FILES_LOGGED)
        for uid in report.missing_files[:_FILES_LOGGED]:
            LOG.warning("indexed SOP Instance %s has no file in the archive", uid)
        return report

    def start_run(self) -> int:
        """Record that this node started serving; returns the run id."""
        with self._sessions.begin() as session:
            run = NodeRun(node=self.node, pid=os.getpid(), started_at=self._clock())
            session.add(run)
            session.flush()
            return run.id

    def finish_run(self, run_id: int) -> None:
        """Record a clean shutdown of run ``run_id``."""
        with self._sessions.begin() as session:
            run = session.get(NodeRun, run_id)
            if run is not None:
                run.stopped_at = self._clock()

    # ------------------------------------------------------------------ internals
    def _unclean_since(self) -> dt.datetime | None:
        """Scan start if the latest run did not stop cleanly (``None``: nothing to scan)."""
        with self._sessions() as session:
            runs = list(
                session.scalars(select(NodeRun).where(NodeRun.node == self.node).order_by(NodeRun.id.desc()).limit(50))
            )
        if not runs:
            with self._sessions() as session:
                other_nodes_ran = session.scalar(select(NodeRun.id).limit(1)) is not None
            if other_nodes_ran:
                return None  # a new node joining a cluster: the archive is the others' and indexed
            # First start of the first node: an archive that predates the index is scanned whole.
            has_files = (
                any(not name.startswith(".") and name != "lost+found" for name in os.listdir(self._archive.root))
                if self._archive.root.exists()
                else False
            )
            return dt.datetime.fromtimestamp(0, dt.UTC) if has_files else None
        if runs[0].stopped_at is not None:
            return None
        # The runs since the last clean stop (newest first), and that stop. A start recorded
        # before that stop means the clock was stepped back since (NTP, a real-time clock behind
        # after a reboot): the files of that run are older than the stop, so the scan starts at
        # the earliest of them (found by a trial).
        unclean = list(itertools.takewhile(lambda run: run.stopped_at is None, runs))
        last_stop = next((run.stopped_at for run in runs if run.stopped_at is not None), None)
        if last_stop is None:
            return min(run.started_at for run in runs) - _MARGIN
        return min([last_stop, *(run.started_at for run in unclean)]) - _MARGIN

    def _known_paths(self, since: dt.datetime) -> set[str]:
        with self._sessions() as session:
            return set(
                session.scalars(
                    select(Instance.relative_path).where(Instance.received_at >= since - dt.timedelta(days=1))
                )
            )

    def _indexed_paths(self, paths: list[str], chunk: int = 500) -> set[str]:
        """Which of ``paths`` (relative to the archive) have an index row."""
        found: set[str] = set()
        with self._sessions() as session:
            for start in range(0, len(paths), chunk):
                part = paths[start : start + chunk]
                found.update(session.scalars(select(Instance.relative_path).where(Instance.relative_path.in_(part))))
        return found

    def _adopt_or_quarantine(self, relative: str, report: RecoveryReport) -> None:
        reason = None
        header = None
        try:
            with self._archive.local_copy(relative) as path:
                header = self._read_header(path)
        except Exception as exc:  # noqa: BLE001 - any unreadable file is set aside, never deleted
            reason = f"unreadable ({type(exc).__name__})"
        if header is not None:
            problems = [
                uid_problem(uid)
                for uid in (header.study_instance_uid, header.series_instance_uid, header.sop_instance_uid)
            ]
            if any(problems):
                reason = "invalid UIDs"
            elif relative != f"{header.study_instance_uid}/{header.series_instance_uid}/{header.sop_instance_uid}.dcm":
                reason = "path does not match the data set's UIDs"
        if reason is None and header is not None:
            try:
                # The sender named in the file (router.dicom.store_codec writes it), so that its
                # study is routed as any other from that AE title.
                sender = header.sending_ae_title or RECOVERY_AE_TITLE
                self._intake.adopt(header, relative, Sender(sender, "-"))
                report.indexed.append(relative)
                if len(report.indexed) <= _FILES_LOGGED:
                    LOG.info("recovery indexed %s as received from %r", relative, sender)
                return
            except (ArchiveError, IndexWriteError) as exc:
                reason = str(exc)
        target = f"{QUARANTINE}/orphans/{relative.replace('/', '_')}"
        try:
            self._archive.move(relative, target)
        except ArchiveError as exc:
            LOG.error("could not quarantine orphan file %s: %s", relative, exc)
            return
        LOG.warning("orphan file %s quarantined as %s: %s", relative, target, reason)
        report.quarantined.append(target)

    def _rows_without_files(self, since: dt.datetime) -> list[str]:
        with self._sessions() as session:
            rows = session.execute(
                select(Instance.sop_instance_uid, Instance.relative_path).where(Instance.received_at >= since)
            ).all()
        missing = []
        for uid, relative in rows:
            try:
                if not self._archive.exists(relative):
                    missing.append(uid)
            except ArchiveError as exc:  # object storage unreachable: start anyway, intake answers 0xA700
                LOG.warning("could not check archive files after an unclean shutdown: %s", exc)
                break
        return missing
