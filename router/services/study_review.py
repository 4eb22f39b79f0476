"""An admin's review of a flagged study: the flag cleared, with who and why in the audit log.

A study is flagged (``needs_review``) when something about it needs a person: a signed report
that was not billed (signed by someone else, before the assignment, in the future), an
assignment withdrawn by a roster change, an order cancelled, a read voided. The reasons stay
where they were recorded (reports, routing decisions, ledger, audit); clearing the flag only says
an admin has looked (``router studies reviewed UID``).
"""

from __future__ import annotations

from sqlalchemy.orm import Session, sessionmaker

from router.db.queries import locked_study
from router.errors import ValidationError
from router.services.audit_log import ChangeContext, record_audit
from router.timeutil import Clock


def mark_reviewed(
    sessions: sessionmaker[Session], clock: Clock, timezone: str, study_instance_uid: str, actor: str, note: str | None
) -> None:
    """Clear the study's review flag, audited as ``study.reviewed`` (``note``: what was done).

    Raises
    ------
    NotFoundError
        Unknown study.
    ValidationError
        The study is not flagged.
    """
    at = clock()
    with sessions.begin() as session:
        study = locked_study(session, study_instance_uid)
        if not study.needs_review:
            raise ValidationError(f"study {study_instance_uid} is not flagged for review")
        study.needs_review = False
        context = ChangeContext.of(actor, at, timezone)
        record_audit(
            session,
            context,
            "study.reviewed",
            "study",
            study_instance_uid,
            {"needs_review": True},
            {"needs_review": False, "note": note},
        )
