"""Registered facilities (senders keyed by calling AE title) and radiologists' privileges there.

A registered facility is the strongest evidence of the exam state (DESIGN.md "Which state":
medicine is practised where the patient is, and for an image that is where it was acquired).
Its InstitutionName (0008,0080) aliases are stored folded (upper case, single spaces) so matching
is exact. A facility may require the reader to hold clinical privileges there, granted directly
or by proxy (42 CFR 482.12(e), 482.22(a)(3)-(4); critical access hospitals 485.616(c)), and may
be flagged VA or DoD so federal license pathways count there.
"""

from __future__ import annotations

import builtins
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session, selectinload

from router.db.models import Facility, FacilityAlias, Privilege, Study
from router.db.queries import facility_by_ae_title, fold_institution_name
from router.domain.claims import validate_outpatient_pos, validate_pos
from router.domain.enums import BillingArrangement, FederalFacility
from router.errors import ConflictError, NotFoundError, ValidationError
from router.services.audit import UNSET, ChangeContext, ChangeRunner, Outcome, RosterChange, diff_values, record_audit
from router.services.roster_values import (
    FACILITY_NAME_MAX_LENGTH,
    check_ae_title,
    check_name,
    check_timezone,
    parse_enum,
    parse_state,
)


def facility_record(row: Facility) -> dict[str, Any]:
    """A facility's fields with its aliases (folded, sorted)."""
    return {
        "ae_title": row.ae_title,
        "name": row.name,
        "state": row.state,
        "timezone": row.timezone,
        "requires_privileges": row.requires_privileges,
        "federal": row.federal,
        "billing_arrangement": row.billing_arrangement,
        "outpatient_pos": row.outpatient_pos,
        "default_pos": row.default_pos,
        "contract_rate_percent": row.contract_rate_percent,
        "aliases": sorted(alias.institution_name for alias in row.aliases),
    }


def privilege_record(row: Privilege) -> dict[str, Any]:
    """A grant of privileges with the holder's NPI and the facility's AE title."""
    return {
        "id": row.id,
        "npi": row.radiologist.npi,
        "facility": row.facility.ae_title,
        "valid_from": row.valid_from,
        "valid_until": row.valid_until,
        "by_proxy": row.by_proxy,
        "revoked_on": row.revoked_on,
    }


@dataclass(frozen=True)
class FacilitySpec:
    """A validated facility registration (see :func:`facility_spec`)."""

    ae_title: str
    state: str
    name: str | None
    timezone: str | None
    requires_privileges: bool
    federal: FederalFacility | None
    aliases: tuple[str, ...]
    billing: dict[str, Any] = field(default_factory=dict)  # billing_fields(), defaults applied on insert


def fold_aliases(names: Iterable[str]) -> tuple[str, ...]:
    """InstitutionName aliases folded as stored, without blanks and duplicates, in order.

    Raises
    ------
    ValidationError
        If an alias is longer than 64 characters (DICOM LO, PS3.5 section 6.2).
    """
    folded: list[str] = []
    for name in names:
        if len(name.strip()) > 64:
            raise ValidationError(f"alias {name.strip()!r} is longer than 64 characters (InstitutionName is LO)")
        key = fold_institution_name(name)
        if key and key not in folded:
            folded.append(key)
    return tuple(folded)


def billing_fields(
    arrangement: BillingArrangement | str | Any | None = UNSET,
    outpatient_pos: str | Any | None = UNSET,
    default_pos: str | Any | None = UNSET,
    contract_rate_percent: int | Any | None = UNSET,
) -> dict[str, Any]:
    """Validated billing settings of a facility; ``UNSET`` leaves a field out, ``None`` clears it.

    Raises
    ------
    ValidationError
        Unknown arrangement; a POS that is not a CMS code or is telehealth (02, 10: a
        teleradiology read takes the POS of the exam, CMS CR 7631); an outpatient POS other than
        22/19; a contract rate outside 1-100 percent.
    """
    out: dict[str, Any] = {}
    if arrangement is not UNSET:
        if arrangement is None:
            raise ValidationError("a billing arrangement is required: payer, client, global or none")
        out["billing_arrangement"] = parse_enum(BillingArrangement, arrangement, "billing arrangement")
    if outpatient_pos is not UNSET:
        out["outpatient_pos"] = validate_outpatient_pos(outpatient_pos) if outpatient_pos else None
    if default_pos is not UNSET:
        out["default_pos"] = validate_pos(default_pos, "default place of service") if default_pos else None
    if contract_rate_percent is not UNSET:
        if contract_rate_percent is not None and not (
            isinstance(contract_rate_percent, int) and 1 <= contract_rate_percent <= 100
        ):
            raise ValidationError(
                f"contract rate must be 1-100 percent of the fee schedule, got {contract_rate_percent}"
            )
        out["contract_rate_percent"] = contract_rate_percent
    return out


def check_billing(arrangement: BillingArrangement, contract_rate_percent: int | None) -> None:
    """A facility's arrangement and contract rate agree: ``client`` needs a rate (its reads are
    invoiced at it); ``payer`` and ``none`` take none (a payer pays the fee schedule, ``none``
    bills nothing); ``global`` may have one (the group's share of the facility's global bill).

    Raises
    ------
    ValidationError
        They disagree.
    """
    if arrangement is BillingArrangement.CLIENT and contract_rate_percent is None:
        raise ValidationError("billing client needs --contract-rate (the percent of the fee schedule the client pays)")
    if arrangement in (BillingArrangement.PAYER, BillingArrangement.NONE) and contract_rate_percent is not None:
        raise ValidationError(
            f"billing {arrangement.value} takes no contract rate (only client and global do): "
            "give --contract-rate none, or another --billing"
        )


def facility_spec(
    ae_title: str,
    state: str,
    name: str | None = None,
    timezone: str | None = None,
    requires_privileges: bool = False,
    federal: FederalFacility | str | None = None,
    aliases: Iterable[str] = (),
    billing: dict[str, Any] | None = None,
) -> FacilitySpec:
    """Validate a facility registration (``billing``: the output of :func:`billing_fields`).

    Raises
    ------
    ValidationError
        Bad AE title (1-16 characters, DICOM PS3.5 6.2), unknown state or time zone, bad
        federal kind, name or alias too long.
    """
    return FacilitySpec(
        ae_title=check_ae_title(ae_title),
        state=parse_state(state),
        name=check_name(name, "facility name", FACILITY_NAME_MAX_LENGTH) if name and name.strip() else None,
        timezone=check_timezone(timezone),
        requires_privileges=bool(requires_privileges),
        federal=parse_enum(FederalFacility, federal, "federal") if federal else None,
        aliases=fold_aliases(aliases),
        billing=dict(billing or {}),
    )


def _claim_aliases(session: Session, facility: Facility, aliases: Sequence[str]) -> None:
    """Attach aliases to ``facility``; an alias held by another facility is a conflict."""
    have = {alias.institution_name for alias in facility.aliases}
    for key in aliases:
        if key in have:
            continue
        owner = session.scalar(select(FacilityAlias).where(FacilityAlias.institution_name == key))
        if owner is not None:
            raise ConflictError(f"alias {key!r} already belongs to facility {owner.facility.ae_title}")
        facility.aliases.append(FacilityAlias(institution_name=key))
        have.add(key)


def insert_facility(session: Session, ctx: ChangeContext, spec: FacilitySpec) -> Facility:
    """Register a facility in the caller's transaction, audited as ``facility.add``.

    Raises
    ------
    ConflictError
        The AE title is registered already, or an alias belongs to another facility.
    """
    if facility_by_ae_title(session, spec.ae_title) is not None:
        raise ConflictError(f"facility {spec.ae_title} is already registered; change it with `router facilities set`")
    row = Facility(
        ae_title=spec.ae_title,
        name=spec.name,
        state=spec.state,
        timezone=spec.timezone,
        requires_privileges=spec.requires_privileges,
        federal=spec.federal,
        created_at=ctx.at,
        aliases=[],
        **({"billing_arrangement": BillingArrangement.PAYER} | spec.billing),
    )
    check_billing(BillingArrangement(row.billing_arrangement), row.contract_rate_percent)
    session.add(row)
    _claim_aliases(session, row, spec.aliases)
    session.flush()
    record_audit(session, ctx, "facility.add", "facility", row.ae_title, None, facility_record(row))
    return row


def update_facility(
    session: Session,
    ctx: ChangeContext,
    row: Facility,
    wanted: dict[str, Any],
    add_aliases: Sequence[str] = (),
    remove_aliases: Sequence[str] = (),
) -> bool:
    """Apply field changes and alias additions/removals, audited as ``facility.set``; whether anything changed.

    Raises
    ------
    NotFoundError
        An alias to remove is not the facility's.
    ConflictError
        An alias to add belongs to another facility.
    """
    before = facility_record(row)
    for key in remove_aliases:
        match = next((alias for alias in row.aliases if alias.institution_name == key), None)
        if match is None:
            raise NotFoundError(f"facility {row.ae_title} has no alias {key!r}")
        row.aliases.remove(match)
    session.flush()
    _claim_aliases(session, row, add_aliases)
    for key, value in diff_values(before, wanted)[1].items():
        setattr(row, key, value)
    check_billing(BillingArrangement(row.billing_arrangement), row.contract_rate_percent)
    session.flush()
    old, new = diff_values(before, facility_record(row))
    if new:
        record_audit(session, ctx, "facility.set", "facility", row.ae_title, old, new)
    return bool(new)


def find_facility(session: Session, ae_title: str) -> Facility:
    row = facility_by_ae_title(session, check_ae_title(ae_title))
    if row is None:
        raise NotFoundError(f"no facility with AE title {ae_title.strip()}")
    return row


class FacilityRoster:
    """Registers, changes, lists and removes facilities."""

    def __init__(self, runner: ChangeRunner) -> None:
        self._runner = runner

    def add(
        self,
        ae_title: str,
        state: str,
        os_user: str,
        *,
        name: str | None = None,
        timezone: str | None = None,
        requires_privileges: bool = False,
        federal: FederalFacility | str | None = None,
        aliases: Iterable[str] = (),
        billing: dict[str, Any] | None = None,
    ) -> RosterChange:
        """Register a sender by calling AE title; held studies from it are re-routed.

        ``billing`` holds :func:`billing_fields` (arrangement, POS, contract rate); default: payer.

        Raises
        ------
        ValidationError
            See :func:`facility_spec`.
        ConflictError
            The AE title is registered, or an alias belongs to another facility.
        """
        spec = facility_spec(ae_title, state, name, timezone, requires_privileges, federal, aliases, billing)

        def work(session: Session, ctx: ChangeContext) -> Outcome:
            row = insert_facility(session, ctx, spec)
            return Outcome("facility", row.ae_title, facility_record(row))

        return self._runner.run(os_user, "facility.add", work)[1]

    def set(
        self,
        ae_title: str,
        os_user: str,
        *,
        name: Any = UNSET,
        state: Any = UNSET,
        timezone: Any = UNSET,
        requires_privileges: Any = UNSET,
        federal: Any = UNSET,
        add_aliases: Iterable[str] = (),
        remove_aliases: Iterable[str] = (),
        billing: dict[str, Any] | None = None,
    ) -> RosterChange:
        """Change a facility; ``UNSET`` leaves a field, ``None`` clears name, time zone or federal.

        ``billing`` holds the output of :func:`billing_fields` (only the fields to change).

        Every open assignment is re-checked afterwards (a facility that now requires privileges,
        or sits in another state, can make its readers ineligible).

        Raises
        ------
        ValidationError
            Nothing to change, or a bad value (see :func:`facility_spec`).
        NotFoundError
            Unknown AE title, or an alias to remove that the facility does not have.
        ConflictError
            An alias to add belongs to another facility.
        """
        wanted: dict[str, Any] = {}
        if name is not UNSET:
            wanted["name"] = (
                check_name(name, "facility name", FACILITY_NAME_MAX_LENGTH) if name and name.strip() else None
            )
        if state is not UNSET:
            wanted["state"] = parse_state(state)
        if timezone is not UNSET:
            wanted["timezone"] = check_timezone(timezone)
        if requires_privileges is not UNSET:
            wanted["requires_privileges"] = bool(requires_privileges)
        if federal is not UNSET:
            wanted["federal"] = parse_enum(FederalFacility, federal, "federal") if federal else None
        wanted.update(billing or {})
        adding, removing = fold_aliases(add_aliases), fold_aliases(remove_aliases)
        if not wanted and not adding and not removing:
            raise ValidationError("nothing to change: give at least one field")

        def work(session: Session, ctx: ChangeContext) -> Outcome:
            row = find_facility(session, ae_title)
            changed = update_facility(session, ctx, row, wanted, adding, removing)
            return Outcome("facility", row.ae_title, facility_record(row), changed=changed)

        return self._runner.run(os_user, "facility.set", work)[1]

    def remove(self, ae_title: str, os_user: str, *, force: bool = False) -> RosterChange:
        """Unregister a facility. Its studies stay (their facility link is cleared).

        Privileges granted there are history an auditor may need, so a facility with
        privileges is removed only with ``force`` (which deletes them, listed in the audit row).

        Raises
        ------
        NotFoundError
            Unknown AE title.
        ConflictError
            Privileges reference the facility and ``force`` is false.
        """

        def work(session: Session, ctx: ChangeContext) -> Outcome:
            row = find_facility(session, ae_title)
            grants = list(
                session.scalars(select(Privilege).where(Privilege.facility_id == row.id).order_by(Privilege.id))
            )
            if grants and not force:
                raise ConflictError(
                    f"facility {row.ae_title} has {len(grants)} privilege grant(s); revoke them, or remove with --force to delete them"
                )
            old = {**facility_record(row), "privileges": [privilege_record(grant) for grant in grants]}
            for grant in grants:
                session.delete(grant)
            session.delete(row)
            session.flush()
            record_audit(session, ctx, "facility.remove", "facility", old["ae_title"], old, None)
            return Outcome("facility", old["ae_title"], None)

        return self._runner.run(os_user, "facility.remove", work)[1]

    def show(self, ae_title: str) -> dict[str, Any]:
        """A facility with its privilege grants and the number of its studies.

        Raises
        ------
        ValidationError, NotFoundError
            Bad or unknown AE title.
        """
        with self._runner.sessions() as session:
            row = find_facility(session, ae_title)
            grants = session.scalars(
                select(Privilege)
                .where(Privilege.facility_id == row.id)
                .options(selectinload(Privilege.radiologist))
                .order_by(Privilege.id)
            )
            studies = session.scalar(select(func.count(Study.id)).where(Study.facility_id == row.id))
            return {
                **facility_record(row),
                "created_at": row.created_at,
                "study_count": int(studies or 0),
                "privileges": [privilege_record(grant) for grant in grants],
            }

    def list(self) -> builtins.list[dict[str, Any]]:
        """Every registered facility by AE title."""
        with self._runner.sessions() as session:
            rows = session.scalars(select(Facility).options(selectinload(Facility.aliases)).order_by(Facility.ae_title))
            return [facility_record(row) for row in rows]
