"""Radiologists: the admin's changes, each audited and followed by re-routing; row lookups.

Rules applied here (sources in shared/domain/README.md):

- NPIs are validated (45 CFR 162.406; CMS check-digit rule, :mod:`router.domain.npi`).
- The designated State of Principal License and the IMLC Letter of Qualification are recorded
  on the radiologist (Compact section 4), with MQSA qualification (21 CFR 900.12) and the state
  the radiologist reads from; the eligibility rules read them.
- A deactivated radiologist is never assigned; their open assignments are withdrawn and the
  studies reassigned or held by the re-evaluation that follows.
"""

from __future__ import annotations

import builtins
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session, selectinload

from router.db.models import Assignment, DisciplinaryAction, License, Privilege, Radiologist
from router.db.queries import radiologist_by_npi
from router.domain.npi import validate_npi
from router.errors import ConflictError, NotFoundError, ValidationError
from router.services.audit import UNSET, ChangeContext, ChangeRunner, Outcome, RosterChange, diff_values, record_audit
from router.services.forwarding_queue import requeue_for_reader
from router.services.roster_values import (
    Destination,
    check_email,
    check_name,
    check_not_future,
    parse_destination,
    parse_state,
)


def radiologist_record(row: Radiologist) -> dict[str, Any]:
    """The radiologist's own fields (no licenses), destination as ``AE@host:port``."""
    destination = None
    if row.destination_ae_title and row.destination_host and row.destination_port:
        destination = str(Destination(row.destination_ae_title, row.destination_host, row.destination_port))
    return {
        "npi": row.npi,
        "name": row.name,
        "email": row.email,
        "active": row.active,
        "spl_state": row.spl_state,
        "loq_issued": row.loq_issued,
        "mqsa_qualified": row.mqsa_qualified,
        "reading_state": row.reading_state,
        "destination": destination,
    }


def license_record(row: License, npi: str) -> dict[str, Any]:
    """A license's fields with the holder's NPI."""
    return {
        "npi": npi,
        "state": row.state,
        "number": row.number,
        "pathway": row.pathway,
        "status": row.status,
        "status_since": row.status_since,
        "in_lieu_of_discipline": row.in_lieu_of_discipline,
        "issued": row.issued,
        "expires": row.expires,
        "verified_on": row.verified_on,
        "compact_hold_cleared_on": row.compact_hold_cleared_on,
    }


def license_key(npi: str, state: str) -> str:
    """Audit key of a license: ``NPI/STATE``."""
    return f"{npi}/{state}"


def find_radiologist(session: Session, npi: str) -> Radiologist:
    """The radiologist with this (validated) NPI.

    Raises
    ------
    ValidationError
        If the NPI is malformed.
    NotFoundError
        If nobody on the roster has it.
    """
    return radiologist_by_npi(session, validate_npi(npi))


def find_license(session: Session, npi: str, state: str) -> License:
    """The license of radiologist ``npi`` in ``state``.

    Raises
    ------
    ValidationError
        Bad NPI or unknown state.
    NotFoundError
        Unknown NPI, or no license in that state.
    """
    radiologist = find_radiologist(session, npi)
    code = parse_state(state)
    found = session.scalar(select(License).where(License.radiologist_id == radiologist.id, License.state == code))
    if found is None:
        raise NotFoundError(f"NPI {radiologist.npi} holds no license in {code}")
    return found


class RadiologistRoster:
    """Adds, changes, lists and (de)activates radiologists."""

    def __init__(self, runner: ChangeRunner) -> None:
        self._runner = runner

    def add(self, npi: str, name: str, os_user: str, email: str | None = None) -> RosterChange:
        """Put a radiologist on the roster (active, no licenses yet).

        Raises
        ------
        ValidationError
            Bad NPI (10 digits, first 1 or 2, Luhn check over 80840 + nine digits), empty
            name, bad e-mail.
        ConflictError
            The NPI is already on the roster.
        """
        code, clean_name, clean_email = validate_npi(npi), check_name(name), check_email(email)

        def work(session: Session, ctx: ChangeContext) -> Outcome:
            if session.scalar(select(Radiologist.id).where(Radiologist.npi == code)) is not None:
                raise ConflictError(f"NPI {code} is already on the roster")
            row = Radiologist(
                npi=code, name=clean_name, email=clean_email, active=True, mqsa_qualified=False, created_at=ctx.at
            )
            session.add(row)
            session.flush()
            record = radiologist_record(row)
            record_audit(session, ctx, "radiologist.add", "radiologist", code, None, record)
            return Outcome("radiologist", code, record, radiologist_id=row.id)

        return self._runner.run(os_user, "radiologist.add", work)[1]

    def set(
        self,
        npi: str,
        os_user: str,
        *,
        name: Any = UNSET,
        email: Any = UNSET,
        spl_state: Any = UNSET,
        loq_issued: Any = UNSET,
        mqsa: Any = UNSET,
        reading_state: Any = UNSET,
        destination: Any = UNSET,
    ) -> RosterChange:
        """Change some of a radiologist's fields; ``UNSET`` leaves a field, ``None`` clears it.

        Parameters
        ----------
        spl_state : str or None
            Designated State of Principal License (Compact section 4).
        loq_issued : date or None
            Issue day of the IMLC Letter of Qualification (valid 365 days: days 0-364).
        mqsa : bool
            MQSA-qualified to read mammography (21 CFR 900.12).
        reading_state : str or None
            Jurisdiction the radiologist reads from.
        destination : Destination, str or None
            C-STORE SCP that receives the reader's studies (``AE@host:port`` accepted).

        Raises
        ------
        ValidationError
            Bad NPI, unknown state, empty name, bad e-mail, a LoQ dated in the future.
        NotFoundError
            Unknown NPI.
        """
        wanted: dict[str, Any] = {}
        if name is not UNSET:
            wanted["name"] = check_name(name)
        if email is not UNSET:
            wanted["email"] = check_email(email)
        if spl_state is not UNSET:
            wanted["spl_state"] = None if spl_state is None else parse_state(spl_state, "SPL state")
        if loq_issued is not UNSET:
            wanted["loq_issued"] = loq_issued
        if mqsa is not UNSET:
            wanted["mqsa_qualified"] = bool(mqsa)
        if reading_state is not UNSET:
            wanted["reading_state"] = None if reading_state is None else parse_state(reading_state, "reading state")
        if isinstance(destination, str):
            destination = parse_destination(destination)
        if destination is not UNSET:
            if destination is not None and not isinstance(destination, Destination):
                raise ValidationError("destination must be AE@host:port")
            wanted["destination"] = None if destination is None else str(destination)
        if not wanted:
            raise ValidationError("nothing to change: give at least one field")

        def work(session: Session, ctx: ChangeContext) -> Outcome:
            row = find_radiologist(session, npi)
            check_not_future(wanted.get("loq_issued"), ctx.today, "Letter of Qualification issue date")
            old, new = diff_values(radiologist_record(row), wanted)
            if not new:
                return Outcome("radiologist", row.npi, radiologist_record(row), changed=False, radiologist_id=row.id)
            for key, value in new.items():
                if key == "destination":
                    row.destination_ae_title = destination.ae_title if destination else None
                    row.destination_host = destination.host if destination else None
                    row.destination_port = destination.port if destination else None
                else:
                    setattr(row, key, value)
            session.flush()
            extra = {}
            if "destination" in new:
                extra["forwarding_requeued"] = requeue_for_reader(session, row, ctx.at)
            record_audit(session, ctx, "radiologist.set", "radiologist", row.npi, old, new)
            return Outcome("radiologist", row.npi, radiologist_record(row), radiologist_id=row.id, extra=extra)

        return self._runner.run(os_user, "radiologist.set", work)[1]

    def deactivate(self, npi: str, os_user: str) -> RosterChange:
        """Take a radiologist off routing; their open assignments are withdrawn and reassigned or held.

        Raises
        ------
        ValidationError, NotFoundError
            Bad or unknown NPI.
        """
        return self._set_active(npi, os_user, False)

    def activate(self, npi: str, os_user: str) -> RosterChange:
        """Put a deactivated radiologist back into routing (held studies are re-routed).

        Raises
        ------
        ValidationError, NotFoundError
            Bad or unknown NPI.
        """
        return self._set_active(npi, os_user, True)

    def _set_active(self, npi: str, os_user: str, active: bool) -> RosterChange:
        action = "radiologist.activate" if active else "radiologist.deactivate"

        def work(session: Session, ctx: ChangeContext) -> Outcome:
            row = find_radiologist(session, npi)
            if row.active == active:
                return Outcome("radiologist", row.npi, radiologist_record(row), changed=False, radiologist_id=row.id)
            row.active = active
            session.flush()
            record_audit(session, ctx, action, "radiologist", row.npi, {"active": not active}, {"active": active})
            return Outcome("radiologist", row.npi, radiologist_record(row), radiologist_id=row.id)

        return self._runner.run(os_user, action, work)[1]

    def show(self, npi: str) -> dict[str, Any]:
        """A radiologist with licenses, privileges, disciplinary actions and open assignment count.

        Raises
        ------
        ValidationError, NotFoundError
            Bad or unknown NPI.
        """
        with self._runner.sessions() as session:
            row = find_radiologist(session, npi)
            open_count = session.scalar(
                select(func.count(Assignment.id)).where(
                    Assignment.radiologist_id == row.id,
                    Assignment.superseded_at.is_(None),
                    Assignment.completed_at.is_(None),
                )
            )
            numbers = {lic.id: lic.number for lic in row.licenses}
            actions = session.scalars(
                select(DisciplinaryAction)
                .where(DisciplinaryAction.radiologist_id == row.id)
                .order_by(DisciplinaryAction.action_date)
            )
            privileges = session.scalars(
                select(Privilege)
                .where(Privilege.radiologist_id == row.id)
                .options(selectinload(Privilege.facility))
                .order_by(Privilege.id)
            )
            return {
                **radiologist_record(row),
                "created_at": row.created_at,
                "open_assignments": int(open_count or 0),
                "licenses": [license_record(lic, row.npi) for lic in row.licenses],
                "privileges": [
                    {
                        "id": priv.id,
                        "facility": priv.facility.ae_title,
                        "valid_from": priv.valid_from,
                        "valid_until": priv.valid_until,
                        "by_proxy": priv.by_proxy,
                        "revoked_on": priv.revoked_on,
                    }
                    for priv in privileges
                ],
                "disciplinary_actions": [
                    {
                        "state": act.state,
                        "license_number": numbers.get(act.license_id),
                        "action": act.action,
                        "action_date": act.action_date,
                        "recorded_at": act.recorded_at,
                    }
                    for act in actions
                ],
            }

    def list(self) -> builtins.list[dict[str, Any]]:
        """Every radiologist by NPI, with license and open assignment counts."""
        with self._runner.sessions() as session:
            open_counts = dict(
                session.execute(
                    select(Assignment.radiologist_id, func.count(Assignment.id))
                    .where(Assignment.superseded_at.is_(None), Assignment.completed_at.is_(None))
                    .group_by(Assignment.radiologist_id)
                ).all()
            )
            license_counts = dict(
                session.execute(
                    select(License.radiologist_id, func.count(License.id)).group_by(License.radiologist_id)
                ).all()
            )
            rows = session.scalars(select(Radiologist).order_by(Radiologist.npi))
            return [
                {
                    **radiologist_record(row),
                    "licenses": int(license_counts.get(row.id, 0)),
                    "open_assignments": int(open_counts.get(row.id, 0)),
                }
                for row in rows
            ]
