"""Reader shifts and per-facility reader rules (prefer, exclude), audited like every roster change.

``roster.shifts.add / list / remove`` and ``roster.facility_readers.set_rule / clear_rule / list``.
Each change re-evaluates routing afterwards, so a study held for want of a reader on shift is
assigned as soon as a shift covering now is added.
"""

from __future__ import annotations

import builtins
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from router.db.models import Facility, FacilityReader, Radiologist, ReaderShift
from router.domain.enums import FacilityReaderRule
from router.domain.shifts import ShiftError, check_timezone, format_weekdays, parse_clock, parse_weekdays
from router.domain.subspecialty import parse_subspecialties
from router.errors import NotFoundError, ValidationError
from router.services.audit import ChangeContext, ChangeRunner, Outcome, RosterChange
from router.services.audit_log import record_audit
from router.services.roster_facilities import find_facility
from router.services.roster_people import find_radiologist


def shift_record(row: ReaderShift, npi: str) -> dict[str, Any]:
    """JSON-ready view of a shift (times are local wall-clock ``HH:MM`` in ``timezone``)."""
    return {
        "id": row.id,
        "npi": npi,
        "weekdays": row.weekdays,
        "start": row.start_time.strftime("%H:%M"),
        "end": row.end_time.strftime("%H:%M"),
        "timezone": row.timezone,
        "overnight": row.end_time <= row.start_time,
    }


class ShiftRoster:
    """Adds, lists and removes reader shifts."""

    def __init__(self, runner: ChangeRunner) -> None:
        self._runner = runner

    def add(self, npi: str, weekdays: str, start: str, end: str, timezone: str, os_user: str) -> RosterChange:
        """Add a weekly shift ``weekdays start-end`` in ``timezone`` (end <= start: overnight).

        Raises
        ------
        ValidationError
            Bad NPI, weekday, time or time zone.
        NotFoundError
            Unknown NPI.
        """
        try:
            days = parse_weekdays(weekdays)
            start_time, end_time = parse_clock(start), parse_clock(end)
            zone = check_timezone(timezone.strip())
        except ShiftError as exc:
            raise ValidationError(str(exc)) from exc

        def work(session: Session, ctx: ChangeContext) -> Outcome:
            reader = find_radiologist(session, npi)
            row = ReaderShift(
                radiologist_id=reader.id,
                weekdays=format_weekdays(days),
                start_time=start_time,
                end_time=end_time,
                timezone=zone,
                created_at=ctx.at,
            )
            session.add(row)
            session.flush()
            record = shift_record(row, reader.npi)
            record_audit(session, ctx, "shift.add", "shift", str(row.id), None, record)
            return Outcome("shift", str(row.id), record, radiologist_id=reader.id)

        return self._runner.run(os_user, "shift.add", work)[1]

    def remove(self, shift_id: int, os_user: str) -> RosterChange:
        """Remove a shift by id.

        Raises
        ------
        NotFoundError
            No shift with this id.
        """

        def work(session: Session, ctx: ChangeContext) -> Outcome:
            row = session.get(ReaderShift, shift_id)
            if row is None:
                raise NotFoundError(f"no shift with id {shift_id}")
            npi = session.scalar(select(Radiologist.npi).where(Radiologist.id == row.radiologist_id)) or ""
            old = shift_record(row, npi)
            session.delete(row)
            session.flush()
            record_audit(session, ctx, "shift.remove", "shift", str(shift_id), old, None)
            return Outcome("shift", str(shift_id), None, radiologist_id=row.radiologist_id)

        return self._runner.run(os_user, "shift.remove", work)[1]

    def list(self, npi: str | None = None) -> builtins.list[dict[str, Any]]:
        """Every shift (of one reader with ``npi``), by NPI then id."""
        with self._runner.sessions() as session:
            query = select(ReaderShift, Radiologist.npi).join(Radiologist, Radiologist.id == ReaderShift.radiologist_id)
            if npi is not None:
                query = query.where(Radiologist.id == find_radiologist(session, npi).id)
            rows = session.execute(query.order_by(Radiologist.npi, ReaderShift.id)).all()
            return [shift_record(row, reader_npi) for row, reader_npi in rows]


def _rule_record(facility: Facility, npi: str, rule: FacilityReaderRule | None) -> dict[str, Any]:
    return {"facility": facility.ae_title, "npi": npi, "rule": rule}


class FacilityReaderRoster:
    """A facility's preferred and excluded readers (one rule per facility and reader)."""

    def __init__(self, runner: ChangeRunner) -> None:
        self._runner = runner

    def set_rule(self, ae_title: str, npi: str, rule: FacilityReaderRule | str, os_user: str) -> RosterChange:
        """Prefer or exclude a reader at a facility (replaces an earlier rule for the pair).

        An excluded reader's open assignments from the facility are withdrawn by the re-check.

        Raises
        ------
        ValidationError, NotFoundError
            Unknown rule, facility or NPI.
        """
        try:
            wanted = FacilityReaderRule(str(rule).strip().lower())
        except ValueError as exc:
            raise ValidationError(f"rule must be one of {', '.join(FacilityReaderRule.values())}") from exc

        def work(session: Session, ctx: ChangeContext) -> Outcome:
            facility = find_facility(session, ae_title)
            reader = find_radiologist(session, npi)
            row = session.scalar(
                select(FacilityReader).where(
                    FacilityReader.facility_id == facility.id, FacilityReader.radiologist_id == reader.id
                )
            )
            key = f"{facility.ae_title}/{reader.npi}"
            old = _rule_record(facility, reader.npi, row.rule) if row is not None else None
            if row is not None and row.rule == wanted:
                return Outcome("facility_reader", key, old, changed=False)
            if row is None:
                row = FacilityReader(facility_id=facility.id, radiologist_id=reader.id, rule=wanted, created_at=ctx.at)
                session.add(row)
            else:
                row.rule = wanted
            session.flush()
            new = _rule_record(facility, reader.npi, wanted)
            record_audit(session, ctx, f"facility.{wanted.value}", "facility_reader", key, old, new)
            return Outcome("facility_reader", key, new)

        return self._runner.run(os_user, f"facility.{wanted.value}", work)[1]

    def clear_rule(self, ae_title: str, npi: str, os_user: str) -> RosterChange:
        """Remove the facility's rule about a reader.

        Raises
        ------
        NotFoundError
            Unknown facility or NPI, or no rule for the pair.
        """

        def work(session: Session, ctx: ChangeContext) -> Outcome:
            facility = find_facility(session, ae_title)
            reader = find_radiologist(session, npi)
            row = session.scalar(
                select(FacilityReader).where(
                    FacilityReader.facility_id == facility.id, FacilityReader.radiologist_id == reader.id
                )
            )
            if row is None:
                raise NotFoundError(f"facility {facility.ae_title} has no rule about NPI {reader.npi}")
            key = f"{facility.ae_title}/{reader.npi}"
            old = _rule_record(facility, reader.npi, row.rule)
            session.delete(row)
            session.flush()
            record_audit(session, ctx, "facility.clear_reader_rule", "facility_reader", key, old, None)
            return Outcome("facility_reader", key, None)

        return self._runner.run(os_user, "facility.clear_reader_rule", work)[1]

    def list(self, ae_title: str | None = None) -> builtins.list[dict[str, Any]]:
        """Every rule (of one facility), by AE title then NPI."""
        with self._runner.sessions() as session:
            query = (
                select(FacilityReader, Facility, Radiologist.npi)
                .join(Facility, Facility.id == FacilityReader.facility_id)
                .join(Radiologist, Radiologist.id == FacilityReader.radiologist_id)
            )
            if ae_title is not None:
                query = query.where(Facility.id == find_facility(session, ae_title).id)
            rows = session.execute(query.order_by(Facility.ae_title, Radiologist.npi)).all()
            return [_rule_record(facility, npi, row.rule) for row, facility, npi in rows]


class CredentialRoster:
    """Readers' subspecialty credentials (router.domain.subspecialty)."""

    def __init__(self, runner: ChangeRunner) -> None:
        self._runner = runner

    def set(self, npi: str, subspecialties: builtins.list[str], os_user: str) -> RosterChange:
        """Replace a reader's subspecialties (an empty list clears them); held studies are re-routed.

        Raises
        ------
        ValidationError
            Unknown subspecialty or bad NPI.
        NotFoundError
            Unknown NPI.
        """
        try:
            wanted = ",".join(item.value for item in parse_subspecialties(subspecialties)) or None
        except ValueError as exc:
            raise ValidationError(str(exc)) from exc

        def work(session: Session, ctx: ChangeContext) -> Outcome:
            reader = find_radiologist(session, npi)
            old = {"npi": reader.npi, "subspecialties": reader.subspecialties}
            new = {"npi": reader.npi, "subspecialties": wanted}
            if reader.subspecialties == wanted:
                return Outcome("radiologist", reader.npi, new, changed=False)
            reader.subspecialties = wanted
            session.flush()
            record_audit(session, ctx, "radiologist.credentials", "radiologist", reader.npi, old, new)
            return Outcome("radiologist", reader.npi, new, radiologist_id=reader.id)

        return self._runner.run(os_user, "radiologist.credentials", work)[1]

    def list(self) -> builtins.list[dict[str, Any]]:
        """Every reader's subspecialties, by NPI."""
        with self._runner.sessions() as session:
            rows = session.execute(
                select(
                    Radiologist.npi, Radiologist.name, Radiologist.subspecialties, Radiologist.mqsa_qualified
                ).order_by(Radiologist.npi)
            ).all()
        return [
            {
                "npi": npi,
                "name": name,
                "subspecialties": (subs or "").split(",") if subs else [],
                "mqsa_qualified": mqsa,
            }
            for npi, name, subs, mqsa in rows
        ]
