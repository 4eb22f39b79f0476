"""Licenses: the admin's changes, each audited and followed by re-routing.

Rules applied here (sources in shared/domain/README.md):

- One license per radiologist and jurisdiction; validity is issue day to expiry day, both
  included; only an active license valid on the day of the read counts (issue 4).
- A license suspended, revoked, or surrendered in lieu of discipline is a disciplinary action by
  its board. It is kept as history (:class:`~router.db.models.DisciplinaryAction`) because the
  radiologist's other Compact licenses are held for 90 days from its date even if the license is
  later reinstated, and Compact licenses follow the SPL license (IMLC Compact section 10, e.g.
  W. Va. Code 30-1C-10). A plain surrender is not discipline.
- An admin may record that a Compact license's board has acted, which ends the section 10 hold
  early (``compact_hold_cleared_on``).
"""

from __future__ import annotations

import builtins
import datetime as dt
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from router.db.models import DisciplinaryAction, License, Radiologist
from router.domain.eligibility_facts import license_tag
from router.domain.enums import LicensePathway, LicenseStatus
from router.errors import ConflictError, ValidationError
from router.services.audit import (
    UNSET,
    ChangeContext,
    ChangeRunner,
    Outcome,
    RosterChange,
    diff_values,
    record_audit,
)
from router.services.roster_people import (
    find_license,
    find_radiologist,
    license_key,
    license_record,
)
from router.services.roster_values import (
    check_license_number,
    check_not_future,
    check_validity,
    parse_enum,
    parse_state,
)

#: License statuses that are a board's disciplinary action (a surrender only in lieu of discipline).
DISCIPLINARY_STATUSES = frozenset({LicenseStatus.SUSPENDED, LicenseStatus.REVOKED})


def is_disciplinary(status: LicenseStatus, in_lieu_of_discipline: bool) -> bool:
    """Suspension, revocation, or surrender in lieu of discipline (Compact section 10)."""
    return status in DISCIPLINARY_STATUSES or (status is LicenseStatus.SURRENDERED and in_lieu_of_discipline)


def apply_status(
    session: Session,
    ctx: ChangeContext,
    lic: License,
    status: LicenseStatus,
    since: dt.date,
    in_lieu_of_discipline: bool,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Set a license's status, recording a disciplinary action when it is one.

    Returns the changed fields as ``(old, new)``; both empty when nothing changed. The new
    values include ``disciplinary_action`` when a :class:`DisciplinaryAction` row was added
    (at most one per license, action and date).
    """
    in_lieu = bool(in_lieu_of_discipline and status is LicenseStatus.SURRENDERED)
    before = {
        "status": lic.status,
        "status_since": lic.status_since,
        "in_lieu_of_discipline": lic.in_lieu_of_discipline,
    }
    after = {"status": status, "status_since": since, "in_lieu_of_discipline": in_lieu}
    old, new = diff_values(before, after)
    if not new:
        return {}, {}
    lic.status, lic.status_since, lic.in_lieu_of_discipline = status, since, in_lieu
    if is_disciplinary(status, in_lieu):
        exists = session.scalar(
            select(DisciplinaryAction.id).where(
                DisciplinaryAction.license_id == lic.id,
                DisciplinaryAction.action == status,
                DisciplinaryAction.action_date == since,
            )
        )
        if exists is None:
            session.add(
                DisciplinaryAction(
                    radiologist_id=lic.radiologist_id,
                    license_id=lic.id,
                    state=lic.state,
                    action=status,
                    action_date=since,
                    recorded_at=ctx.at,
                )
            )
            new["disciplinary_action"] = {"state": lic.state, "action": status, "action_date": since}
            reset = _reset_cleared_holds(session, ctx, lic)
            if reset:
                new["compact_holds_reset"] = reset
    session.flush()
    return old, new


def _reset_cleared_holds(session: Session, ctx: ChangeContext, disciplined: License) -> list[str]:
    """A new disciplinary action: forget the holds cleared on the holder's other Compact licenses.

    A clear records that a board acted on the actions known then; it cannot cover an action
    recorded after it (Compact section 10(d): each action suspends the other Compact licenses
    for 90 days). The cleared date is reset, so every action in its 90 days holds again until
    an admin records that the boards acted on this one too (``licenses clear-hold``): a hold
    too many, never a read on a license that may be suspended. Returns the reset licenses' tags.
    """
    reset: list[str] = []
    others = session.scalars(
        select(License).where(
            License.radiologist_id == disciplined.radiologist_id,
            License.id != disciplined.id,
            License.pathway == LicensePathway.IMLC,
            License.compact_hold_cleared_on.is_not(None),
        )
    )
    for other in others:
        npi_code = other.radiologist.npi
        record_audit(
            session,
            ctx,
            "license.hold_reset",
            "license",
            license_key(npi_code, other.state),
            {"compact_hold_cleared_on": other.compact_hold_cleared_on},
            {"compact_hold_cleared_on": None},
        )
        other.compact_hold_cleared_on = None
        reset.append(license_tag(other.state, other.number))
    return reset


class LicenseRoster:
    """Adds, changes and lists licenses; records status changes and Compact holds cleared."""

    def __init__(self, runner: ChangeRunner) -> None:
        self._runner = runner

    def add(
        self,
        npi: str,
        state: str,
        number: str,
        expires: dt.date,
        os_user: str,
        *,
        issued: dt.date | None = None,
        pathway: LicensePathway | str = LicensePathway.FULL,
        status: LicenseStatus | str = LicenseStatus.ACTIVE,
        verified_on: dt.date | None = None,
    ) -> RosterChange:
        """Record a license (or registration) of a radiologist in one jurisdiction.

        Raises
        ------
        ValidationError
            Bad NPI, unknown state, empty number, expiry before issue, bad pathway or status,
            a verification date in the future.
        NotFoundError
            Unknown NPI.
        ConflictError
            The radiologist already holds a license in that state (change it with ``set``).
        """
        code, clean_number = parse_state(state), check_license_number(number)
        pathway_value = parse_enum(LicensePathway, pathway, "pathway")
        status_value = parse_enum(LicenseStatus, status, "status")
        check_validity(issued, expires)

        def work(session: Session, ctx: ChangeContext) -> Outcome:
            radiologist = find_radiologist(session, npi)
            check_not_future(verified_on, ctx.today, "verified-on date")
            key = license_key(radiologist.npi, code)
            taken = session.scalar(
                select(License.id).where(License.radiologist_id == radiologist.id, License.state == code)
            )
            if taken is not None:
                raise ConflictError(
                    f"NPI {radiologist.npi} already holds a license in {code}; change it with `router licenses set`"
                )
            row = License(
                radiologist_id=radiologist.id,
                state=code,
                number=clean_number,
                pathway=pathway_value,
                status=status_value,
                status_since=None,
                in_lieu_of_discipline=False,
                issued=issued,
                expires=expires,
                verified_on=verified_on,
            )
            session.add(row)
            session.flush()
            record = license_record(row, radiologist.npi)
            record_audit(session, ctx, "license.add", "license", key, None, record)
            return Outcome("license", key, record, radiologist_id=radiologist.id)

        return self._runner.run(os_user, "license.add", work)[1]

    def set_status(
        self,
        npi: str,
        state: str,
        status: LicenseStatus | str,
        os_user: str,
        *,
        since: dt.date | None = None,
        in_lieu_of_discipline: bool = False,
    ) -> RosterChange:
        """Record a board's status change of a license, dated ``since`` (default: today).

        Suspended, revoked, or surrendered in lieu of discipline also records a disciplinary
        action dated ``since``: Compact licenses that follow this one and the radiologist's other
        Compact licenses are then held (Compact section 10). Open assignments that relied on the
        license are withdrawn by the re-evaluation that follows.

        Raises
        ------
        ValidationError
            Bad NPI, unknown state, bad status, ``since`` in the future, or
            ``in_lieu_of_discipline`` with a status other than surrendered.
        NotFoundError
            Unknown NPI or no license in that state.
        """
        status_value = parse_enum(LicenseStatus, status, "status")
        if in_lieu_of_discipline and status_value is not LicenseStatus.SURRENDERED:
            raise ValidationError("in lieu of discipline applies only to status surrendered")

        def work(session: Session, ctx: ChangeContext) -> Outcome:
            lic = find_license(session, npi, state)
            day = since if since is not None else ctx.today
            check_not_future(day, ctx.today, "since")
            npi_code = lic.radiologist.npi
            key = license_key(npi_code, lic.state)
            old, new = apply_status(session, ctx, lic, status_value, day, in_lieu_of_discipline)
            if new:
                record_audit(session, ctx, "license.set_status", "license", key, old, new)
            return Outcome(
                "license", key, license_record(lic, npi_code), changed=bool(new), radiologist_id=lic.radiologist_id
            )

        return self._runner.run(os_user, "license.set_status", work)[1]

    def set(
        self,
        npi: str,
        state: str,
        os_user: str,
        *,
        expires: Any = UNSET,
        issued: Any = UNSET,
        number: Any = UNSET,
        verified_on: Any = UNSET,
        pathway: Any = UNSET,
    ) -> RosterChange:
        """Renew or correct a license: expiry, issue date, number, verification date, pathway.

        ``UNSET`` leaves a field; ``issued`` and ``verified_on`` may be cleared with ``None``.
        The status is changed with :meth:`set_status` only.

        Raises
        ------
        ValidationError
            Bad NPI, unknown state, nothing to change, expiry before issue, empty number,
            verification in the future, bad pathway.
        NotFoundError
            Unknown NPI or no license in that state.
        """
        wanted: dict[str, Any] = {}
        if expires is not UNSET:
            if expires is None:
                raise ValidationError("a license must have an expiry date")
            wanted["expires"] = expires
        if issued is not UNSET:
            wanted["issued"] = issued
        if number is not UNSET:
            wanted["number"] = check_license_number(number)
        if verified_on is not UNSET:
            wanted["verified_on"] = verified_on
        if pathway is not UNSET:
            wanted["pathway"] = parse_enum(LicensePathway, pathway, "pathway")
        if not wanted:
            raise ValidationError("nothing to change: give at least one field")

        def work(session: Session, ctx: ChangeContext) -> Outcome:
            lic = find_license(session, npi, state)
            check_not_future(wanted.get("verified_on"), ctx.today, "verified-on date")
            check_validity(wanted.get("issued", lic.issued), wanted.get("expires", lic.expires))
            npi_code = lic.radiologist.npi
            key = license_key(npi_code, lic.state)
            old, new = diff_values(license_record(lic, npi_code), wanted)
            for field_name, value in new.items():
                setattr(lic, field_name, value)
            if new:
                session.flush()
                record_audit(session, ctx, "license.set", "license", key, old, new)
            return Outcome(
                "license", key, license_record(lic, npi_code), changed=bool(new), radiologist_id=lic.radiologist_id
            )

        return self._runner.run(os_user, "license.set", work)[1]

    def clear_hold(self, npi: str, state: str, os_user: str, *, on: dt.date | None = None) -> RosterChange:
        """Record that the board of this Compact license acted on ``on`` (default: today).

        Ends the Compact section 10 hold that another board's disciplinary action dated on or
        before ``on`` put on this license.

        Raises
        ------
        ValidationError
            Bad NPI, unknown state, ``on`` in the future, or the license is not an IMLC license.
        NotFoundError
            Unknown NPI or no license in that state.
        """

        def work(session: Session, ctx: ChangeContext) -> Outcome:
            lic = find_license(session, npi, state)
            day = on if on is not None else ctx.today
            check_not_future(day, ctx.today, "hold cleared date")
            if lic.pathway is not LicensePathway.IMLC:
                raise ValidationError(
                    f"license {license_tag(lic.state, lic.number)} is a {lic.pathway.value} license; only IMLC licenses are held"
                )
            actions = session.scalar(
                select(func.count())
                .select_from(DisciplinaryAction)
                .where(DisciplinaryAction.radiologist_id == lic.radiologist_id)
            )
            if not actions:
                raise ValidationError(
                    f"license {license_tag(lic.state, lic.number)} has no Compact hold to clear: no disciplinary action is recorded "
                    "for this radiologist (a clear cannot be recorded ahead of an action)"
                )
            npi_code = lic.radiologist.npi
            key = license_key(npi_code, lic.state)
            old, new = diff_values(
                {"compact_hold_cleared_on": lic.compact_hold_cleared_on}, {"compact_hold_cleared_on": day}
            )
            if new:
                lic.compact_hold_cleared_on = day
                session.flush()
                record_audit(session, ctx, "license.clear_hold", "license", key, old, new)
            return Outcome(
                "license", key, license_record(lic, npi_code), changed=bool(new), radiologist_id=lic.radiologist_id
            )

        return self._runner.run(os_user, "license.clear_hold", work)[1]

    def list(self, npi: str | None = None, state: str | None = None) -> builtins.list[dict[str, Any]]:
        """Licenses by NPI then state, optionally of one radiologist and/or one state.

        Raises
        ------
        ValidationError
            Bad NPI or unknown state filter.
        NotFoundError
            Unknown NPI.
        """
        with self._runner.sessions() as session:
            statement = select(License, Radiologist.npi, Radiologist.name).join(
                Radiologist, Radiologist.id == License.radiologist_id
            )
            if npi is not None:
                statement = statement.where(License.radiologist_id == find_radiologist(session, npi).id)
            if state is not None:
                statement = statement.where(License.state == parse_state(state))
            rows = session.execute(statement.order_by(Radiologist.npi, License.state))
            return [{**license_record(lic, holder_npi), "name": name} for lic, holder_npi, name in rows]
