"""The roster service: radiologists, licenses, facilities and privileges, audited.

One object, :class:`RosterService`, gathers the admin's roster operations::

    roster.radiologists.add / set / list / show / deactivate / activate
    roster.licenses.add / set / set_status / clear_hold / list
    roster.facilities.add / set / list / show / remove
    roster.privileges.grant / list / revoke
    roster.import_csv / export_csv / load_demo / audit_list

Each change runs in its own transaction together with its audit row (OS user, time, action,
entity, key, old and new values), then routing re-checks open assignments and re-routes held
studies, so the change takes effect whether or not a server is running (issue 2 "Roster,
assignment and reads"; issue 4 "Every decision explained, every change audited"). Changes return
a :class:`~router.services.audit.RosterChange`: the record after the change and the studies whose
routing changed.
"""

from __future__ import annotations

from typing import Any, TypedDict

from sqlalchemy.orm import Session, sessionmaker

from router.services.audit import UNSET, ChangeContext, ChangeRunner, Rerouted, RosterChange, audit_entries
from router.services.roster_duty import CredentialRoster, FacilityReaderRoster, ShiftRoster
from router.services.roster_facilities import FacilityRoster
from router.services.roster_import import (
    ImportResult,
    apply_demo,
    apply_roster,
    export_roster,
    import_outcome,
    parse_facilities_csv,
    parse_radiologists_csv,
    parse_roster_csv,
)
from router.services.roster_licenses import LicenseRoster
from router.services.roster_people import RadiologistRoster
from router.services.roster_privileges import PrivilegeRoster
from router.services.roster_values import Destination, parse_destination
from router.services.routing import RoutingService
from router.timeutil import Clock, utcnow


class RosterService:
    """Admin operations on the roster (see the module docstring).

    Parameters
    ----------
    sessions : sessionmaker
        Session factory; each change opens its own transaction.
    routing : RoutingService
        Re-evaluates routing after each change (its policy's time zone gives "today").
    clock : callable
        Returns the current UTC time (tests pin it).
    """

    def __init__(self, sessions: sessionmaker[Session], routing: RoutingService, clock: Clock = utcnow) -> None:
        self._runner = ChangeRunner(sessions, routing, clock)
        self.radiologists = RadiologistRoster(self._runner)
        self.licenses = LicenseRoster(self._runner)
        self.facilities = FacilityRoster(self._runner)
        self.privileges = PrivilegeRoster(self._runner)
        self.shifts = ShiftRoster(self._runner)
        self.facility_readers = FacilityReaderRoster(self._runner)
        self.credentials = CredentialRoster(self._runner)

    def import_csv(self, text: str, os_user: str, *, dry_run: bool = False) -> ImportResult:
        """Import a roster file (one row per license), all or nothing.

        Every row is validated first; then radiologists (by NPI) and licenses (by NPI and state)
        are upserted in one transaction with one audit row per change, and routing is
        re-evaluated once. ``dry_run`` validates and counts without writing.

        Raises
        ------
        ValidationError
            ``line N: reason`` for the first bad row (header = line 1); nothing is written.
        """
        rows = parse_roster_csv(text)

        def work(session: Session, ctx: ChangeContext) -> Any:
            return import_outcome(apply_roster(session, ctx, rows))

        outcome, change = self._runner.run(os_user, "roster.import", work, dry_run=dry_run)
        return ImportResult(
            rows=len(rows),
            dry_run=dry_run,
            rerouted=change.rerouted,
            reevaluation_error=change.reevaluation_error,
            **_counts(outcome.record),
        )

    def export_csv(self) -> str:
        """The roster as CSV text in the import format (header plus one row per license)."""
        with self._runner.sessions() as session:
            return export_roster(session)

    def load_demo(
        self, facilities_csv_text: str, roster_csv_text: str, radiologists_csv_text: str, os_user: str
    ) -> ImportResult:
        """Load the demo files of ``config/demo/`` in one transaction, then re-evaluate routing.

        Parameters
        ----------
        facilities_csv_text : str
            ``ae_title,name,state,timezone,requires_privileges,federal,aliases`` (aliases
            ``|``-separated); existing facilities are updated.
        roster_csv_text : str
            A roster file, as for :meth:`import_csv`.
        radiologists_csv_text : str
            ``npi,email,spl_state,loq_issued,mqsa_qualified,reading_state`` for NPIs of the roster.

        Raises
        ------
        ValidationError
            ``<file> line N: reason``; nothing is written.
        ConflictError
            A facility alias belongs to another facility.
        """
        facilities = parse_facilities_csv(facilities_csv_text)
        rows = parse_roster_csv(roster_csv_text, source="roster.csv")
        details = parse_radiologists_csv(radiologists_csv_text)

        def work(session: Session, ctx: ChangeContext) -> Any:
            return import_outcome(apply_demo(session, ctx, facilities, rows, details))

        outcome, change = self._runner.run(os_user, "roster.demo", work)
        return ImportResult(
            rows=len(rows),
            rerouted=change.rerouted,
            reevaluation_error=change.reevaluation_error,
            **_counts(outcome.record),
        )

    def audit_list(self, limit: int = 50, entity: str | None = None, key: str | None = None) -> list[dict[str, Any]]:
        """Audit rows, newest first (see :func:`router.services.audit.audit_entries`)."""
        with self._runner.sessions() as session:
            return audit_entries(session, limit=limit, entity=entity, key=key)


class _ImportCounts(TypedDict):
    radiologists_added: int
    radiologists_updated: int
    licenses_added: int
    licenses_updated: int
    licenses_unchanged: int
    facilities_added: int
    facilities_updated: int


def _counts(record: dict[str, Any] | None) -> _ImportCounts:
    values = record or {}
    return _ImportCounts(
        radiologists_added=int(values.get("radiologists_added", 0)),
        radiologists_updated=int(values.get("radiologists_updated", 0)),
        licenses_added=int(values.get("licenses_added", 0)),
        licenses_updated=int(values.get("licenses_updated", 0)),
        licenses_unchanged=int(values.get("licenses_unchanged", 0)),
        facilities_added=int(values.get("facilities_added", 0)),
        facilities_updated=int(values.get("facilities_updated", 0)),
    )


__all__ = ["UNSET", "Destination", "ImportResult", "Rerouted", "RosterChange", "RosterService", "parse_destination"]
