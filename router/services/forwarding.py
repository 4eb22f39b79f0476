"""Forwarding: send assigned studies to their reader's destination from the durable outbox.

Each destination is worked by its own thread, so one dead workstation never delays the others
(DESIGN.md decision 4). A job is re-checked before sending: if its radiologist is no longer the
study's current assignee the job is cancelled, so nothing goes to a reader who lost the study.
Instances already accepted by the destination are not sent again; failures back off
exponentially (``initial_backoff * 2**(attempt-1)``, capped) up to ``max_attempts``.
The bytes sent go to the infrastructure ledger.

Several nodes work one outbox: a job is claimed (``claimed_by``/``claimed_until``, taken with
``FOR UPDATE SKIP LOCKED`` on PostgreSQL) before it is sent, the claim is renewed by the node's
heartbeat while it sends, and it is given back when the outcome is recorded. A claim that a dead
or frozen node stopped renewing expires and another node takes the job over.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker
from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_fixed

from router.archive_backend import ArchiveBackend
from router.db.models import Assignment, ForwardedInstance, Instance, OutboxJob, Study
from router.db.queries import skip_locked
from router.domain.enums import OutboxStatus
from router.errors import database_error
from router.services.forwarding_queue import accepted_in_round, unsent_count
from router.services.ledgers import record_transmission
from router.timeutil import Clock, utcnow

LOG = logging.getLogger(__name__)

#: send(paths, destination "AE@host:port", calling AE title) -> accepted flags, one per path the
#: destination answered, in order (shorter when the association ended early: the rest were not
#: stored). Raises any exception when the destination cannot be reached.
Sender = Callable[[Sequence[Path], str, str], list[bool]]


@dataclass(frozen=True)
class ForwardingPolicy:
    """Settings of the forwarder (``[forwarding]``; ``[billing] transmission_cents_per_gib`` in micro-cents)."""

    calling_ae_title: str = "ROUTER"
    max_attempts: int = 8
    initial_backoff: float = 5.0
    max_backoff: float = 600.0
    transmission_microcents_per_gib: int = 5_000_000

    def backoff(self, attempts: int) -> dt.timedelta:
        """Delay before attempt ``attempts + 1``, in seconds (exponential, capped)."""
        return dt.timedelta(seconds=min(self.max_backoff, self.initial_backoff * 2 ** max(0, attempts - 1)))


class ForwardingService:
    """Works the outbox."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        archive: ArchiveBackend,
        send: Sender,
        policy: ForwardingPolicy,
        clock: Clock = utcnow,
        *,
        node_id: str = "local",
        claim_seconds: float = 30.0,
    ) -> None:
        self._sessions = sessions
        self.node_id = node_id
        self._claim = dt.timedelta(seconds=claim_seconds)
        self._archive = archive
        self._send = send
        self.policy = policy
        self._clock = clock
        self._busy: set[str] = set()
        self._lock = threading.Lock()

    def run_due(self, wait: bool = False) -> list[threading.Thread]:
        """Start one worker per destination that has due jobs and no worker running.

        ``wait=True`` joins the workers (tests, the demo). Returns the threads started.
        """
        now = self._clock()
        with self._sessions() as session:
            destinations = list(
                session.scalars(
                    select(OutboxJob.destination)
                    .where(OutboxJob.status == OutboxStatus.PENDING, OutboxJob.next_attempt_at <= now, _unclaimed(now))
                    .distinct()
                )
            )
        started = []
        for destination in destinations:
            with self._lock:
                if destination in self._busy:
                    continue
                self._busy.add(destination)
            thread = threading.Thread(
                target=self._work_destination, args=(destination,), name=f"forward:{destination}", daemon=True
            )
            thread.start()
            started.append(thread)
        if wait:
            for thread in started:
                thread.join()
        return started

    def _work_destination(self, destination: str) -> None:
        try:
            while True:
                job_id = self._claim_next(destination)
                if job_id is None:
                    return
                try:
                    ok = self._work_job(job_id)
                except BaseException:
                    self._release(job_id)
                    raise
                if not ok:
                    return  # destination failing: leave its other jobs for the next tick
        except SQLAlchemyError as exc:
            # The index database failed (restarted, unreachable, a connection ended by the
            # server, a lock timeout): an operating condition, not a fault of this code. The job
            # stays pending, or its claim expires, and the next pass of the timer tries again.
            LOG.warning(
                "forwarding to %s paused: index database error %s; retried on the next pass",
                destination,
                database_error(exc),  # the driver's message, never SQL parameters (PHI)
            )
            LOG.debug("forwarding to %s: index database error", destination, exc_info=True)
        except Exception:
            LOG.exception("forwarding to %s stopped on an unexpected error", destination)
        finally:
            with self._lock:
                self._busy.discard(destination)

    def _claim_next(self, destination: str) -> int | None:
        """Claim the next due job of ``destination`` for this node; ``None`` when there is none.

        Jobs claimed by a live node are passed over (and, on PostgreSQL, so are rows another
        transaction holds: ``SKIP LOCKED``); a claim past ``claimed_until`` is taken over.
        """
        now = self._clock()
        with self._sessions.begin() as session:
            job = session.scalar(
                skip_locked(
                    select(OutboxJob)
                    .where(
                        OutboxJob.destination == destination,
                        OutboxJob.status == OutboxStatus.PENDING,
                        OutboxJob.next_attempt_at <= now,
                        _unclaimed(now),
                    )
                    .order_by(OutboxJob.next_attempt_at, OutboxJob.id)
                    .limit(1)
                )
            )
            if job is None:
                return None
            if job.claimed_by is not None and job.claimed_by != self.node_id:
                LOG.warning(
                    "outbox job %d to %s taken over from node %s (its claim expired)",
                    job.id,
                    destination,
                    job.claimed_by,
                )
            job.claimed_by = self.node_id
            job.claimed_until = now + self._claim
            return job.id

    def _release(self, job_id: int) -> None:
        """Give a claim back after an unexpected error (else it expires with the lease)."""
        try:
            with self._sessions.begin() as session:
                job = session.get(OutboxJob, job_id)
                if job is not None and job.claimed_by == self.node_id:
                    job.claimed_by = None
                    job.claimed_until = None
        except Exception:  # the claim then expires after claim_seconds
            LOG.debug("could not release outbox job %d", job_id, exc_info=True)

    def _work_job(self, job_id: int) -> bool:
        """Send what is unsent of one claimed job; returns False when the destination failed."""
        with self._sessions.begin() as session:
            job = session.get(OutboxJob, job_id)
            if job is None or job.status != OutboxStatus.PENDING or job.claimed_by != self.node_id:
                return True
            current = session.scalar(
                select(Assignment).where(Assignment.study_id == job.study_id, Assignment.superseded_at.is_(None))
            )
            if current is None or current.radiologist_id != job.radiologist_id:
                job.status = OutboxStatus.FAILED
                job.last_error = "cancelled: the radiologist is no longer assigned this study"
                job.updated_at = self._clock()
                job.claimed_by = None
                job.claimed_until = None
                return True
            send_round = job.send_round
            sent_ids = set(session.scalars(accepted_in_round(job.id, send_round)))
            pending = [
                (instance_id, relative, size)
                for instance_id, relative, size in session.execute(
                    select(Instance.id, Instance.relative_path, Instance.size_bytes)
                    .where(Instance.study_id == job.study_id)
                    .order_by(Instance.id)
                ).all()
                if instance_id not in sent_ids
            ]
            destination = job.destination
            study_uid = session.scalar(select(Study.study_instance_uid).where(Study.id == job.study_id))
        if not pending:
            self._finish(job_id, send_round, [], None)
            return True
        try:
            # Local copies of what the backend holds (the folder's own files; a download from
            # object storage, removed once sent).
            with contextlib.ExitStack() as copies:
                paths = [copies.enter_context(self._archive.local_copy(relative)) for _, relative, _ in pending]
                accepted = self._send(paths, destination, self.policy.calling_ae_title)
            error = _send_error(len(paths), accepted)
        except Exception as exc:  # noqa: BLE001 - any failure to read the archive or reach the destination is retried
            accepted = [False] * len(pending)
            error = f"{type(exc).__name__}: {str(exc)[:200]}"
        # A sender that stopped early answers for fewer files: the rest were not sent.
        done = [(instance_id, size) for (instance_id, _, size), ok in zip(pending, accepted, strict=False) if ok]
        if error:  # before the outcome is recorded, which may log that the retries ran out
            LOG.warning("forwarding study %s to %s failed: %s", study_uid, destination, error)
        self._finish(job_id, send_round, done, error)
        return error is None

    def _finish(self, job_id: int, send_round: int, done: list[tuple[int, int]], error: str | None) -> None:
        """Record the outcome of a send; retried on a new connection when the database dropped
        this one (e.g. ``idle_in_transaction_timeout`` ended a node frozen mid-transaction), or
        rolled the transaction back on a deadlock, since the instances were sent: unrecorded,
        they would be sent again."""
        for attempt in Retrying(
            retry=retry_if_exception(_worth_recording_again),
            stop=stop_after_attempt(3),
            wait=wait_fixed(0.2),
            reraise=True,
        ):
            with attempt:
                self._record(job_id, send_round, done, error)

    def _record(self, job_id: int, send_round: int, done: list[tuple[int, int]], error: str | None) -> None:
        """Record what the destination accepted (ledger: the bytes sent) and give the claim back.

        The job is locked while recorded; an instance already recorded (by a node that took the
        job over from this one while it was frozen) is not recorded twice. A job that gained
        instances while it was being sent (late instances) stays pending for the rest. What was
        sent counts for ``send_round``, the round it was sent in: a new round asked for while it
        was being sent (``router studies forward --all``) still sends every instance.
        """
        now = self._clock()
        with self._sessions.begin() as session:
            job = session.get(OutboxJob, job_id, with_for_update={"key_share": True})  # see queries.for_update
            assert job is not None
            if job.claimed_by != self.node_id:
                LOG.warning("outbox job %d: this node's claim expired while it was sending", job.id)
            recorded = set(
                session.scalars(
                    accepted_in_round(job.id, send_round).where(
                        ForwardedInstance.instance_id.in_([iid for iid, _ in done]),
                    )
                )
            )
            forwarded = [
                ForwardedInstance(
                    outbox_id=job.id, instance_id=iid, size_bytes=size, sent_at=now, send_round=send_round
                )
                for iid, size in done
                if iid not in recorded
            ]
            session.add_all(forwarded)
            session.flush()
            study = session.get(Study, job.study_id)
            assert study is not None
            record_transmission(
                session, study, job.destination, forwarded, now, self.policy.transmission_microcents_per_gib
            )
            if send_round == job.send_round:
                job.sent_instance_count += len(forwarded)
            job.updated_at = now
            if job.claimed_by == self.node_id:
                job.claimed_by = None
                job.claimed_until = None
            if job.status != OutboxStatus.PENDING:
                return  # cancelled while sending (the study was reassigned): keep the cancellation
            if send_round != job.send_round:
                return  # a new round began while this one was sent: its own sends count from now
            if error is None:
                if unsent_count(session, job) == 0:
                    job.status = OutboxStatus.SENT
                    job.last_error = None
                else:
                    job.next_attempt_at = now  # late instances arrived while sending: send them next
                return
            job.attempts += 1
            job.last_error = error
            if job.attempts >= self.policy.max_attempts:
                job.status = OutboxStatus.FAILED
                LOG.error(
                    "forwarding study %s to %s failed %d times; giving up",
                    study.study_instance_uid,
                    job.destination,
                    job.attempts,
                )
            else:
                job.next_attempt_at = now + self.policy.backoff(job.attempts)


#: SQLSTATEs after which the same transaction, run again, succeeds: deadlock_detected and
#: serialization_failure (PostgreSQL Appendix A, class 40 "Transaction Rollback").
_TRANSIENT_SQLSTATES = frozenset({"40P01", "40001"})


def _worth_recording_again(exc: BaseException) -> bool:
    """Whether recording again is safe and may succeed: the connection was dropped, or the
    database rolled the transaction back to break a deadlock or a serialization conflict."""
    if not isinstance(exc, DBAPIError):
        return False
    return exc.connection_invalidated or getattr(exc.orig, "sqlstate", None) in _TRANSIENT_SQLSTATES


def _unclaimed(now: dt.datetime) -> Any:
    """Jobs no live node holds: never claimed, given back, or claimed past ``claimed_until``."""
    return or_(OutboxJob.claimed_until.is_(None), OutboxJob.claimed_until < now)


def _send_error(sent: int, accepted: list[bool]) -> str | None:
    """What went wrong sending ``sent`` instances, of which the destination answered
    ``len(accepted)`` (a failure status: refused), or ``None`` if it stored every one."""
    problems = []
    if refused := accepted.count(False):
        problems.append(f"{refused} of {sent} instance(s) refused")
    if unanswered := sent - len(accepted):
        problems.append(
            f"{unanswered} of {sent} instance(s) not answered (the association was aborted, closed or timed out)"
        )
    return "; ".join(problems) or None
