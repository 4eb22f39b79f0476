"""The outbox: one durable forwarding job per (study, destination) (DESIGN.md decision 4).

Jobs are written in the same transaction as the assignment, so an assigned study is never
forgotten, and a job for a reader who lost the study is cancelled in the transaction that
withdrew it, so nothing is sent to a reader who may no longer read it.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from sqlalchemy import CursorResult, Select, func, select, update
from sqlalchemy.orm import Session

from router.db.models import Assignment, ForwardedInstance, Instance, OutboxJob, Radiologist, Study
from router.db.queries import study_by_uid
from router.domain.enums import OutboxStatus
from router.errors import IneligibleError
from router.services.roster_values import Destination


def destination_of(radiologist: Radiologist) -> str | None:
    """``AE@host:port`` of the reader's C-STORE SCP (an IPv6 host in brackets, as it is typed:
    ``AE@[::1]:104``), or ``None`` when none is configured."""
    if not (radiologist.destination_ae_title and radiologist.destination_host and radiologist.destination_port):
        return None
    return str(
        Destination(radiologist.destination_ae_title, radiologist.destination_host, radiologist.destination_port)
    )


def enqueue_forwarding(session: Session, study: Study, radiologist: Radiologist, now: dt.datetime) -> OutboxJob | None:
    """Make sure a pending job sends the study's unsent instances to the reader's destination.

    Jobs of the study for other radiologists that have not finished are cancelled. Returns the
    job, or ``None`` when the reader has no destination (they read from the archive instead).
    """
    cancel_forwarding(session, study.id, keep_radiologist_id=radiologist.id, reason="study reassigned", now=now)
    destination = destination_of(radiologist)
    if destination is None:
        return None
    job = session.scalar(select(OutboxJob).where(OutboxJob.study_id == study.id, OutboxJob.destination == destination))
    if job is None:
        job = OutboxJob(
            study_id=study.id,
            radiologist_id=radiologist.id,
            destination=destination,
            status=OutboxStatus.PENDING,
            attempts=0,
            next_attempt_at=now,
            sent_instance_count=0,
            updated_at=now,
        )
        session.add(job)
    else:
        job.radiologist_id = radiologist.id
        job.status = OutboxStatus.PENDING
        job.attempts = 0
        job.next_attempt_at = now
        job.updated_at = now
    session.flush()
    return job


def cancel_forwarding(
    session: Session, study_id: int, keep_radiologist_id: int | None, reason: str, now: dt.datetime
) -> int:
    """Mark unfinished jobs of a study for other radiologists as failed; returns how many."""
    statement = update(OutboxJob).where(OutboxJob.study_id == study_id, OutboxJob.status == OutboxStatus.PENDING)
    if keep_radiologist_id is not None:
        statement = statement.where(OutboxJob.radiologist_id != keep_radiologist_id)
    result = session.execute(
        statement.values(
            status=OutboxStatus.FAILED, last_error=f"cancelled: {reason}", updated_at=now
        ).execution_options(synchronize_session=False)
    )
    assert isinstance(result, CursorResult)  # an UPDATE's result carries its row count
    return int(result.rowcount or 0)


def requeue_for_reader(session: Session, radiologist: Radiologist, now: dt.datetime) -> int:
    """After a reader's destination changed: their open studies that were being forwarded go to
    the new destination (from the first instance, also to a destination the reader had before),
    or stop being sent when it was removed.

    Only studies that already had a job are touched, so nothing is queued where forwarding is
    off. Returns the number of studies re-queued or stopped.
    """
    studies = session.scalars(
        select(Study)
        .join(Assignment, Assignment.study_id == Study.id)
        .where(
            Assignment.radiologist_id == radiologist.id,
            Assignment.superseded_at.is_(None),
            Assignment.completed_at.is_(None),
            Study.id.in_(select(OutboxJob.study_id).where(OutboxJob.radiologist_id == radiologist.id)),
        )
    ).all()
    for study in studies:
        cancel_forwarding(session, study.id, keep_radiologist_id=None, reason="destination changed", now=now)
        job = enqueue_forwarding(session, study, radiologist, now)
        if job is not None and session.scalar(select(accepted_in_round(job.id, job.send_round).exists())):
            # a destination the reader had used before for this study (back to an earlier
            # workstation): what it accepted then is not counted on, the study goes again in full
            start_round(job)
    return len(studies)


def start_round(job: OutboxJob) -> None:
    """Start a new round of ``job``: every instance of its study counts as unsent again."""
    job.send_round += 1
    job.sent_instance_count = 0


@dataclass(frozen=True)
class Requeued:
    """A study queued again for its reader's destination (``router studies forward``)."""

    destination: str  # AE@host:port
    to_send: int  # instances the destination has not accepted in this round
    instances: int  # instances of the study


def requeue_study(session: Session, study_instance_uid: str, now: dt.datetime, resend_all: bool = False) -> Requeued:
    """Forward a study again to its assigned reader's destination: what it has not accepted yet
    (after ``max_attempts`` failures), or with ``resend_all`` every instance again, in a new
    round of the job (a workstation that lost the study; each instance sent is billed again as
    transmission).

    Raises
    ------
    NotFoundError
        Unknown study.
    IneligibleError
        The study has no open assignment, or its reader has no destination.
    """
    study = study_by_uid(session, study_instance_uid)
    assignment = session.scalar(
        select(Assignment).where(
            Assignment.study_id == study.id, Assignment.superseded_at.is_(None), Assignment.completed_at.is_(None)
        )
    )
    if assignment is None:
        raise IneligibleError(
            f"study {study_instance_uid} has no open assignment to forward (status {study.status.value})"
        )
    radiologist = session.get(Radiologist, assignment.radiologist_id)
    assert radiologist is not None
    destination = destination_of(radiologist)
    if destination is None:
        raise IneligibleError(
            f"NPI {radiologist.npi} has no destination (`router radiologists set {radiologist.npi} --destination AE@host:port`)"
        )
    job = enqueue_forwarding(session, study, radiologist, now)
    assert job is not None  # the reader has a destination
    if resend_all:
        start_round(job)
        session.flush()
    instances = int(session.scalar(select(func.count(Instance.id)).where(Instance.study_id == study.id)) or 0)
    return Requeued(destination, unsent_count(session, job), instances)


def accepted_in_round(job_id: int, send_round: int) -> Select[int]:
    """The ids of the instances the job's destination accepted in round ``send_round``."""
    return select(ForwardedInstance.instance_id).where(
        ForwardedInstance.outbox_id == job_id, ForwardedInstance.send_round == send_round
    )


def unsent_count(session: Session, job: OutboxJob) -> int:
    """Instances of the job's study that its destination has not accepted in this round."""
    return int(
        session.scalar(
            select(func.count(Instance.id)).where(
                Instance.study_id == job.study_id, Instance.id.not_in(accepted_in_round(job.id, job.send_round))
            )
        )
        or 0
    )
