"""The outbox: one durable forwarding job per (study, destination) (DESIGN.md decision 4).

Jobs are written in the same transaction as the assignment, so an assigned study is never
forgotten, and a job for a reader who lost the study is cancelled in the transaction that
withdrew it, so nothing is sent to a reader who may no longer read it.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import CursorResult, select, update
from sqlalchemy.orm import Session

from router.db.models import Assignment, OutboxJob, Radiologist, Study
from router.db.queries import study_by_uid
from router.domain.enums import OutboxStatus
from router.errors import IneligibleError


def destination_of(radiologist: Radiologist) -> str | None:
    """``AE@host:port`` of the reader's C-STORE SCP, or ``None`` when none is configured."""
    if not (radiologist.destination_ae_title and radiologist.destination_host and radiologist.destination_port):
        return None
    return f"{radiologist.destination_ae_title}@{radiologist.destination_host}:{radiologist.destination_port}"


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
    the new destination (from the first instance), or stop being sent when it was removed.

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
        enqueue_forwarding(session, study, radiologist, now)
    return len(studies)


def requeue_study(session: Session, study_instance_uid: str, now: dt.datetime) -> str:
    """Forward a study again to its assigned reader's destination (after ``max_attempts``
    failures, or a workstation that lost it); returns the destination ``AE@host:port``.

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
    enqueue_forwarding(session, study, radiologist, now)
    return destination
