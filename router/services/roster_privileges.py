"""Clinical privileges of radiologists at registered facilities, audited.

Where a facility requires them, the reader must hold privileges there active on the day of the
read, granted directly or by proxy (42 CFR 482.12(e), 482.22(a)(3)-(4); critical access
hospitals 485.616(c)). A grant is valid from ``valid_from`` to ``valid_until``, both days
included; a revocation makes it inactive from its date on.
"""

from __future__ import annotations

import builtins
import datetime as dt
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from router.db.models import Facility, Privilege, Radiologist
from router.errors import ConflictError, NotFoundError, ValidationError
from router.services.audit import ChangeContext, ChangeRunner, Outcome, RosterChange, record_audit
from router.services.roster_facilities import find_facility, privilege_record
from router.services.roster_people import find_radiologist
from router.timeutil import local_date


class PrivilegeRoster:
    """Grants, lists and revokes privileges of radiologists at facilities."""

    def __init__(self, runner: ChangeRunner) -> None:
        self._runner = runner

    def grant(
        self,
        npi: str,
        facility_ae: str,
        valid_from: dt.date,
        valid_until: dt.date,
        os_user: str,
        *,
        by_proxy: bool = False,
    ) -> RosterChange:
        """Grant privileges valid ``valid_from`` to ``valid_until``, both days included.

        ``by_proxy``: granted by relying on the distant-site hospital's credentialing
        (42 CFR 482.22(a)(3)-(4)).

        Raises
        ------
        ValidationError
            Bad NPI or AE title, or ``valid_until`` before ``valid_from``.
        NotFoundError
            Unknown NPI or facility.
        ConflictError
            The same grant (same dates, not revoked) exists.
        """
        if valid_until < valid_from:
            raise ValidationError(
                f"privileges end {valid_until.isoformat()} before they start {valid_from.isoformat()}"
            )

        def work(session: Session, ctx: ChangeContext) -> Outcome:
            radiologist = find_radiologist(session, npi)
            facility = find_facility(session, facility_ae)
            key = f"{radiologist.npi}/{facility.ae_title}"
            same = session.scalar(
                select(Privilege.id).where(
                    Privilege.radiologist_id == radiologist.id,
                    Privilege.facility_id == facility.id,
                    Privilege.valid_from == valid_from,
                    Privilege.valid_until == valid_until,
                    Privilege.revoked_on.is_(None),
                )
            )
            if same is not None:
                raise ConflictError(
                    f"privilege {same} already grants {key} from {valid_from.isoformat()} to {valid_until.isoformat()}"
                )
            row = Privilege(
                radiologist=radiologist,
                facility=facility,
                valid_from=valid_from,
                valid_until=valid_until,
                by_proxy=by_proxy,
                created_at=ctx.at,
            )
            session.add(row)
            session.flush()
            record = privilege_record(row)
            record_audit(session, ctx, "privilege.grant", "privilege", key, None, record)
            return Outcome("privilege", key, record, radiologist_id=radiologist.id)

        return self._runner.run(os_user, "privilege.grant", work)[1]

    def revoke(
        self,
        os_user: str,
        *,
        privilege_id: int | None = None,
        npi: str | None = None,
        facility_ae: str | None = None,
        on: dt.date | None = None,
    ) -> RosterChange:
        """Revoke privileges from ``on`` (default: today at the facility): inactive from that day.

        Give either ``privilege_id``, or ``npi`` and ``facility_ae`` (every unrevoked grant of
        that radiologist there is revoked). The record returned lists the revoked grants.

        Raises
        ------
        ValidationError
            Neither or both ways of naming the grant; bad NPI or AE title.
        NotFoundError
            Unknown privilege id, NPI or facility, or no unrevoked grant there.
        ConflictError
            The privilege id names a grant already revoked.
        """
        by_id, by_pair = privilege_id is not None, npi is not None or facility_ae is not None
        if by_id == by_pair or (by_pair and (npi is None or facility_ae is None)):
            raise ValidationError("name the privilege by its id, or by NPI and facility AE title")

        def work(session: Session, ctx: ChangeContext) -> Outcome:
            if privilege_id is not None:
                grant = session.get(Privilege, privilege_id)
                if grant is None:
                    raise NotFoundError(f"no privilege with id {privilege_id}")
                if grant.revoked_on is not None:
                    raise ConflictError(
                        f"privilege {privilege_id} was already revoked on {grant.revoked_on.isoformat()}"
                    )
                grants = [grant]
            else:
                assert npi is not None and facility_ae is not None
                radiologist, facility = find_radiologist(session, npi), find_facility(session, facility_ae)
                grants = list(
                    session.scalars(
                        select(Privilege)
                        .where(
                            Privilege.radiologist_id == radiologist.id,
                            Privilege.facility_id == facility.id,
                            Privilege.revoked_on.is_(None),
                        )
                        .order_by(Privilege.id)
                    )
                )
                if not grants:
                    raise NotFoundError(f"NPI {radiologist.npi} holds no unrevoked privileges at {facility.ae_title}")
            facility_row = grants[0].facility
            day = (
                on
                if on is not None
                else (local_date(ctx.at, facility_row.timezone) if facility_row.timezone else ctx.today)
            )
            key = f"{grants[0].radiologist.npi}/{facility_row.ae_title}"
            for grant in grants:
                grant.revoked_on = day
                record_audit(
                    session,
                    ctx,
                    "privilege.revoke",
                    "privilege",
                    key,
                    {"id": grant.id, "revoked_on": None},
                    {"id": grant.id, "revoked_on": day},
                )
            session.flush()
            record = {"revoked_on": day, "revoked": [privilege_record(grant) for grant in grants]}
            return Outcome("privilege", key, record, radiologist_id=grants[0].radiologist_id)

        return self._runner.run(os_user, "privilege.revoke", work)[1]

    def list(self, npi: str | None = None, facility: str | None = None) -> builtins.list[dict[str, Any]]:
        """Privilege grants by NPI, facility and start, optionally filtered.

        Raises
        ------
        ValidationError, NotFoundError
            Bad or unknown NPI or facility filter.
        """
        with self._runner.sessions() as session:
            statement = (
                select(Privilege)
                .join(Radiologist, Radiologist.id == Privilege.radiologist_id)
                .join(Facility, Facility.id == Privilege.facility_id)
                .options(selectinload(Privilege.radiologist), selectinload(Privilege.facility))
            )
            if npi is not None:
                statement = statement.where(Privilege.radiologist_id == find_radiologist(session, npi).id)
            if facility is not None:
                statement = statement.where(Privilege.facility_id == find_facility(session, facility).id)
            rows = session.scalars(
                statement.order_by(Radiologist.npi, Facility.ae_title, Privilege.valid_from, Privilege.id)
            )
            return [{**privilege_record(row), "name": row.radiologist.name} for row in rows]
