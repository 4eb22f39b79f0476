"""Roster files: CSV import and export (one row per license), and the demo loader.

Roster file (issue 4): header exactly ``npi,name,license_state,license_number,pathway,status,
issued,expires``; one row per license; dates ``YYYY-MM-DD`` (``issued`` may be empty). Every
row is validated (NPI check digit, jurisdiction codes including DC and the territories, pathway
and status values, dates, expiry not before issue, one name per NPI, one license per NPI and
state) before anything is written: one bad row rejects the whole file with
``line N: reason``, N counting physical lines with the header as line 1.

Import upserts radiologists (by NPI) and licenses (by NPI and state); it never deletes what the
file does not mention. A status that differs from the stored one is recorded as changed on the
day of the import (the file carries no status date); a suspension, revocation or surrender so
recorded is not taken as in lieu of discipline unless an admin says so with ``licenses
set-status``. A new license imported with a non-active status gets no status date, which the
eligibility rules read as "held until the board acts" (the safe reading).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from router.db.models import Facility, License, Radiologist
from router.domain.enums import LicensePathway, LicenseStatus
from router.domain.npi import validate_npi
from router.errors import ValidationError
from router.services.audit import ChangeContext, Outcome, Rerouted, diff_values, record_audit
from router.services.roster_facilities import (
    FacilitySpec,
    facility_record,
    facility_spec,
    insert_facility,
    update_facility,
)
from router.services.roster_licenses import apply_status
from router.services.roster_people import license_key, license_record, radiologist_record
from router.services.roster_values import (
    check_email,
    check_license_number,
    check_name,
    check_validity,
    parse_bool,
    parse_enum,
    parse_iso_date,
    parse_state,
)

#: Header of a roster file, in order.
ROSTER_COLUMNS: tuple[str, ...] = (
    "npi",
    "name",
    "license_state",
    "license_number",
    "pathway",
    "status",
    "issued",
    "expires",
)
#: Header of the demo facilities file; ``aliases`` are ``|``-separated InstitutionName values.
FACILITY_COLUMNS: tuple[str, ...] = (
    "ae_title",
    "name",
    "state",
    "timezone",
    "requires_privileges",
    "federal",
    "aliases",
)
#: Header of the demo radiologists file (details not carried by the roster file).
RADIOLOGIST_COLUMNS: tuple[str, ...] = ("npi", "email", "spl_state", "loq_issued", "mqsa_qualified", "reading_state")


@dataclass(frozen=True)
class RosterRow:
    """One validated license row of a roster file; ``line`` is its line number in the file."""

    line: int
    npi: str
    name: str
    state: str
    number: str
    pathway: LicensePathway
    status: LicenseStatus
    issued: date | None
    expires: date


@dataclass(frozen=True)
class ReaderDetails:
    """One validated row of the demo radiologists file."""

    line: int
    npi: str
    email: str | None
    spl_state: str | None
    loq_issued: date | None
    mqsa_qualified: bool
    reading_state: str | None


@dataclass(frozen=True)
class ImportResult:
    """Counts of what an import (or the demo loader) added and changed, and the studies re-routed."""

    rows: int
    radiologists_added: int = 0
    radiologists_updated: int = 0
    licenses_added: int = 0
    licenses_updated: int = 0
    licenses_unchanged: int = 0
    facilities_added: int = 0
    facilities_updated: int = 0
    dry_run: bool = False
    rerouted: tuple[Rerouted, ...] = ()
    reevaluation_error: str | None = None

    @property
    def changed(self) -> bool:
        """Whether anything was (or, in a dry run, would be) written."""
        return any(
            (
                self.radiologists_added,
                self.radiologists_updated,
                self.licenses_added,
                self.licenses_updated,
                self.facilities_added,
                self.facilities_updated,
            )
        )

    def __str__(self) -> str:
        parts = [
            f"{self.rows} license rows",
            f"{self.radiologists_added} radiologists added, {self.radiologists_updated} updated",
            f"{self.licenses_added} licenses added, {self.licenses_updated} updated, {self.licenses_unchanged} unchanged",
        ]
        if self.facilities_added or self.facilities_updated:
            parts.append(f"{self.facilities_added} facilities added, {self.facilities_updated} updated")
        return "; ".join(parts)

    def counts(self) -> dict[str, int]:
        """The counts alone."""
        return {
            "rows": self.rows,
            "radiologists_added": self.radiologists_added,
            "radiologists_updated": self.radiologists_updated,
            "licenses_added": self.licenses_added,
            "licenses_updated": self.licenses_updated,
            "licenses_unchanged": self.licenses_unchanged,
            "facilities_added": self.facilities_added,
            "facilities_updated": self.facilities_updated,
        }

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {
            **self.counts(),
            "dry_run": self.dry_run,
            "rerouted": [item.to_json() for item in self.rerouted],
            "reevaluation_error": self.reevaluation_error,
        }


def _prefix(source: str, line: int) -> str:
    return f"{source} line {line}: " if source else f"line {line}: "


def read_csv(text: str, columns: Sequence[str], source: str = "") -> Iterator[tuple[int, dict[str, str]]]:
    """``(line number, cells by column)`` for each non-blank data row; the header must be ``columns``.

    Line numbers are physical lines (header = 1); a UTF-8 byte order mark is ignored.

    Raises
    ------
    ValidationError
        ``line 1: expected header '...'`` or ``line N: expected 8 columns, got 7``.
    """
    reader = csv.reader(io.StringIO(text.removeprefix("\ufeff"), newline=""))
    header_seen, last_line = False, 0
    try:
        for cells in reader:
            line, last_line = last_line + 1, reader.line_num
            if not any(cell.strip() for cell in cells):
                continue
            if not header_seen:
                if tuple(cell.strip() for cell in cells) != tuple(columns):
                    raise ValidationError(
                        _prefix(source, line) + f"expected header {','.join(columns)!r}, got {','.join(cells)!r}"
                    )
                header_seen = True
                continue
            if len(cells) != len(columns):
                raise ValidationError(_prefix(source, line) + f"expected {len(columns)} columns, got {len(cells)}")
            yield line, {column: cell.strip() for column, cell in zip(columns, cells, strict=True)}
    except csv.Error as exc:
        raise ValidationError(_prefix(source, reader.line_num) + f"not valid CSV ({exc})") from exc
    if not header_seen:
        raise ValidationError(_prefix(source, 1) + f"empty file, expected header {','.join(columns)!r}")


def parse_roster_csv(text: str, source: str = "") -> list[RosterRow]:
    """Validate a whole roster file (see the module docstring); nothing is written.

    Raises
    ------
    ValidationError
        On the first bad row: ``line N: reason`` (``source`` first when given).
    """
    rows: list[RosterRow] = []
    names: dict[str, tuple[str, int]] = {}
    seen: dict[tuple[str, str], int] = {}
    for line, cells in read_csv(text, ROSTER_COLUMNS, source):
        try:
            npi = validate_npi(cells["npi"])
            name = check_name(cells["name"])
            state = parse_state(cells["license_state"], "license_state")
            number = check_license_number(cells["license_number"])
            pathway = parse_enum(LicensePathway, cells["pathway"], "pathway")
            status = parse_enum(LicenseStatus, cells["status"], "status")
            issued = parse_iso_date(cells["issued"], "issued") if cells["issued"] else None
            if not cells["expires"]:
                raise ValidationError("expires is required")
            expires = parse_iso_date(cells["expires"], "expires")
            check_validity(issued, expires)
            first = names.setdefault(npi, (name, line))
            if first[0] != name:
                raise ValidationError(f"name {name!r} differs from {first[0]!r} given for NPI {npi} on line {first[1]}")
            if (npi, state) in seen:
                raise ValidationError(f"second license for NPI {npi} in {state} (first on line {seen[(npi, state)]})")
            seen[(npi, state)] = line
        except ValidationError as exc:
            raise ValidationError(_prefix(source, line) + str(exc)) from exc
        rows.append(RosterRow(line, npi, name, state, number, pathway, status, issued, expires))
    return rows


def apply_roster(
    session: Session,
    ctx: ChangeContext,
    rows: Sequence[RosterRow],
    action_prefix: str = "import",
    updated_npis: set[str] | None = None,
) -> dict[str, int]:
    """Upsert validated rows in the caller's transaction, one audit row per change.

    Returns counts: ``radiologists_added``, ``radiologists_updated``, ``licenses_added``,
    ``licenses_updated``, ``licenses_unchanged``. NPIs of radiologists whose name changed are
    added to ``updated_npis`` when given.
    """
    counts = dict.fromkeys(
        ("radiologists_added", "radiologists_updated", "licenses_added", "licenses_updated", "licenses_unchanged"), 0
    )
    people: dict[str, Radiologist] = {}
    for row in rows:
        if row.npi in people:
            continue
        person = session.scalar(select(Radiologist).where(Radiologist.npi == row.npi))
        if person is None:
            person = Radiologist(npi=row.npi, name=row.name, active=True, mqsa_qualified=False, created_at=ctx.at)
            session.add(person)
            session.flush()
            record_audit(
                session, ctx, f"radiologist.{action_prefix}", "radiologist", row.npi, None, radiologist_record(person)
            )
            counts["radiologists_added"] += 1
        elif person.name != row.name:
            record_audit(
                session,
                ctx,
                f"radiologist.{action_prefix}",
                "radiologist",
                row.npi,
                {"name": person.name},
                {"name": row.name},
            )
            person.name = row.name
            counts["radiologists_updated"] += 1
            if updated_npis is not None:
                updated_npis.add(row.npi)
        people[row.npi] = person
    for row in rows:
        person = people[row.npi]
        key = license_key(row.npi, row.state)
        lic = session.scalar(select(License).where(License.radiologist_id == person.id, License.state == row.state))
        if lic is None:
            lic = License(
                radiologist_id=person.id,
                state=row.state,
                number=row.number,
                pathway=row.pathway,
                status=row.status,
                status_since=None,
                in_lieu_of_discipline=False,
                issued=row.issued,
                expires=row.expires,
            )
            session.add(lic)
            session.flush()
            record_audit(session, ctx, f"license.{action_prefix}", "license", key, None, license_record(lic, row.npi))
            counts["licenses_added"] += 1
            continue
        wanted = {"number": row.number, "pathway": row.pathway, "issued": row.issued, "expires": row.expires}
        old, new = diff_values(license_record(lic, row.npi), wanted)
        for field_name, value in new.items():
            setattr(lic, field_name, value)
        if row.status is not lic.status:
            status_old, status_new = apply_status(session, ctx, lic, row.status, ctx.today, False)
            old, new = {**old, **status_old}, {**new, **status_new}
        if new:
            session.flush()
            record_audit(session, ctx, f"license.{action_prefix}", "license", key, old, new)
            counts["licenses_updated"] += 1
        else:
            counts["licenses_unchanged"] += 1
    session.flush()
    return counts


def export_roster(session: Session) -> str:
    """The roster as CSV text (header plus one row per license, by NPI then state).

    Radiologists without a license have no row. The text is accepted by :func:`parse_roster_csv`.
    """
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(ROSTER_COLUMNS)
    rows = session.execute(
        select(Radiologist.npi, Radiologist.name, License)
        .join(License, License.radiologist_id == Radiologist.id)
        .order_by(Radiologist.npi, License.state)
    )
    for npi, name, lic in rows:
        writer.writerow(
            [
                npi,
                name,
                lic.state,
                lic.number,
                lic.pathway.value,
                lic.status.value,
                lic.issued.isoformat() if lic.issued else "",
                lic.expires.isoformat(),
            ]
        )
    return buffer.getvalue()


def parse_facilities_csv(text: str, source: str = "facilities.csv") -> list[FacilitySpec]:
    """Validate the demo facilities file (header :data:`FACILITY_COLUMNS`).

    Raises
    ------
    ValidationError
        ``facilities.csv line N: reason`` for the first bad row or a repeated AE title.
    """
    specs: list[FacilitySpec] = []
    for line, cells in read_csv(text, FACILITY_COLUMNS, source):
        try:
            spec = facility_spec(
                cells["ae_title"],
                cells["state"],
                name=cells["name"] or None,
                timezone=cells["timezone"] or None,
                requires_privileges=parse_bool(cells["requires_privileges"], "requires_privileges"),
                federal=cells["federal"] or None,
                aliases=[alias for alias in cells["aliases"].split("|") if alias.strip()],
            )
            if any(other.ae_title == spec.ae_title for other in specs):
                raise ValidationError(f"facility {spec.ae_title} listed twice")
        except ValidationError as exc:
            raise ValidationError(_prefix(source, line) + str(exc)) from exc
        specs.append(spec)
    return specs


def parse_radiologists_csv(text: str, source: str = "radiologists.csv") -> list[ReaderDetails]:
    """Validate the demo radiologists file (header :data:`RADIOLOGIST_COLUMNS`).

    Raises
    ------
    ValidationError
        ``radiologists.csv line N: reason`` for the first bad row or a repeated NPI.
    """
    details: list[ReaderDetails] = []
    for line, cells in read_csv(text, RADIOLOGIST_COLUMNS, source):
        try:
            npi = validate_npi(cells["npi"])
            if any(other.npi == npi for other in details):
                raise ValidationError(f"NPI {npi} listed twice")
            details.append(
                ReaderDetails(
                    line=line,
                    npi=npi,
                    email=check_email(cells["email"] or None),
                    spl_state=parse_state(cells["spl_state"], "spl_state") if cells["spl_state"] else None,
                    loq_issued=parse_iso_date(cells["loq_issued"], "loq_issued") if cells["loq_issued"] else None,
                    mqsa_qualified=parse_bool(cells["mqsa_qualified"], "mqsa_qualified"),
                    reading_state=parse_state(cells["reading_state"], "reading_state")
                    if cells["reading_state"]
                    else None,
                )
            )
        except ValidationError as exc:
            raise ValidationError(_prefix(source, line) + str(exc)) from exc
    return details


def apply_demo(
    session: Session,
    ctx: ChangeContext,
    facilities: Sequence[FacilitySpec],
    rows: Sequence[RosterRow],
    details: Sequence[ReaderDetails],
) -> dict[str, int]:
    """Write validated demo files in the caller's transaction (facilities, roster, reader details).

    Raises
    ------
    ValidationError
        A radiologists-file NPI is neither in the roster file nor on the roster.
    ConflictError
        A facility alias belongs to another facility.
    """
    added = updated = 0
    for spec in facilities:
        row = session.scalar(select(Facility).where(Facility.ae_title == spec.ae_title))
        if row is None:
            insert_facility(session, ctx, spec)
            added += 1
            continue
        wanted = {key: getattr(spec, key) for key in ("name", "state", "timezone", "requires_privileges", "federal")}
        have = set(facility_record(row)["aliases"])
        if update_facility(session, ctx, row, wanted, [alias for alias in spec.aliases if alias not in have]):
            updated += 1
    existing = set(session.scalars(select(Radiologist.npi).where(Radiologist.npi.in_([item.npi for item in details]))))
    updated_npis: set[str] = set()
    counts = apply_roster(session, ctx, rows, action_prefix="import", updated_npis=updated_npis)
    for item in details:
        person = session.scalar(select(Radiologist).where(Radiologist.npi == item.npi))
        if person is None:
            raise ValidationError(f"radiologists.csv line {item.line}: NPI {item.npi} is not in the roster file")
        wanted = {
            "email": item.email,
            "spl_state": item.spl_state,
            "loq_issued": item.loq_issued,
            "mqsa_qualified": item.mqsa_qualified,
            "reading_state": item.reading_state,
        }
        old, new = diff_values(radiologist_record(person), wanted)
        if new:
            for key, value in new.items():
                setattr(person, key, value)
            record_audit(session, ctx, "radiologist.set", "radiologist", person.npi, old, new)
            if person.npi in existing:
                updated_npis.add(person.npi)
    session.flush()
    return {
        **counts,
        "radiologists_updated": len(updated_npis),
        "facilities_added": added,
        "facilities_updated": updated,
    }


def import_outcome(counts: dict[str, int]) -> Outcome:
    """The :class:`Outcome` of an import: re-check every open assignment when anything changed."""
    changed = any(value for key, value in counts.items() if key != "licenses_unchanged")
    return Outcome("roster", "import", dict(counts), changed=changed, radiologist_id=None)
