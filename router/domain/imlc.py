"""Interstate Medical Licensure Compact (IMLC) membership, as dated data.

Membership changes every legislative session, so it is never a code constant: it is read from
``config/imlc_membership.csv`` (the service layer reads the file; this module only parses text)
and carries the date it was last checked (``as_of``). Statuses and their meaning follow
``shared/domain/README.md``:

- ``spl``: operating member that can serve as State of Principal License (Compact section 4);
- ``non_spl``: issues Compact licenses but cannot be designated as SPL;
- ``pending``: enacted, not yet operating;
- ``at_risk``: a sunset or withdrawal date has passed or is near and re-enactment is unconfirmed;
  treated as not operating for new Compact licenses until verified.

File format (UTF-8 text)::

    # as_of: 2026-11-29
    # any other comment line
    state,status,effective_date,note,source
    TX,spl,2023-01-01,,comphealth 2023/2024

Comment lines start with ``#`` (blank lines are ignored); exactly one comment must be
``# as_of: YYYY-MM-DD``. Each data row is one physical line (no quoted line breaks).

A state may have several rows: its dated history. Each row is in force from its
``effective_date`` until the day before the state's next row (e.g. MI ``spl`` from 2019-03-28,
``at_risk`` from 2026-03-28), so the licensure engine asks the status on the day of the read.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date
from types import MappingProxyType

from router.domain.enums import ImlcStatus
from router.domain.jurisdictions import LICENSING_JURISDICTIONS
from router.errors import DataFileError

#: Columns of the membership file, in order.
COLUMNS: tuple[str, ...] = ("state", "status", "effective_date", "note", "source")

_AS_OF = re.compile(r"^#\s*as_of\s*:\s*(?P<value>\S*)\s*$", re.IGNORECASE)
_ISO_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")

#: Statuses under which a member state issues Compact licenses.
_OPERATING = frozenset({ImlcStatus.SPL, ImlcStatus.NON_SPL})


@dataclass(frozen=True)
class MemberJurisdiction:
    """One row of the membership file.

    Attributes
    ----------
    state : str
        Two-letter code of the licensing jurisdiction (``TX``, ``DC``, ``GU``).
    status : ImlcStatus
        Standing in the Compact from ``effective_date`` on.
    effective_date : date
        First day the status is in force (a ``01-01`` date is often known only to the year).
    note, source : str
        Free text: what is known and where it comes from.
    """

    state: str
    status: ImlcStatus
    effective_date: date
    note: str
    source: str


def _parse_date(text: str, line_no: int, what: str, source_name: str) -> date:
    """Parse a strict ``YYYY-MM-DD`` date or raise :class:`DataFileError` naming the line."""
    value = text.strip()
    try:
        if not _ISO_DATE.match(value):
            raise ValueError(value)
        return date.fromisoformat(value)
    except ValueError as exc:
        raise DataFileError(_where(source_name, line_no) + f"bad {what} {value!r} (expected YYYY-MM-DD)") from exc


def _where(source_name: str, line_no: int) -> str:
    """Prefix ``name line N: `` for error messages."""
    prefix = f"{source_name} " if source_name else ""
    return f"{prefix}line {line_no}: "


@dataclass(frozen=True)
class ImlcMembership:
    """Compact membership as of a date, keyed by jurisdiction code.

    Attributes
    ----------
    as_of : date
        Day the data was last checked against the Commission's list.
    members : Mapping[str, MemberJurisdiction]
        Read-only mapping from jurisdiction code to its row. A code that is absent is not a member.
    source_name : str
        Where the text came from (a file name), for messages only.
    """

    as_of: date
    members: Mapping[str, MemberJurisdiction]
    source_name: str = ""
    #: every row of each state, oldest first (``members`` holds the latest one)
    history: Mapping[str, tuple[MemberJurisdiction, ...]] = field(default_factory=lambda: MappingProxyType({}))

    @classmethod
    def from_csv_text(cls, text: str, source_name: str = "") -> ImlcMembership:
        """Parse the membership file's text.

        Parameters
        ----------
        text : str
            Whole file content (see the module docstring for the format).
        source_name : str, optional
            File name used in error messages and kept on the result.

        Returns
        -------
        ImlcMembership

        Raises
        ------
        DataFileError
            Naming the 1-based line number and the reason: missing or repeated ``as_of``,
            bad header, wrong column count, unknown jurisdiction, bad status, bad date,
            duplicate state.
        """
        as_of: date | None = None
        header_seen = False
        history: dict[str, list[MemberJurisdiction]] = {}
        for line_no, line in enumerate(text.splitlines(), start=1):
            stripped = line.strip()
            if not stripped:
                continue
            if stripped.startswith("#"):
                match = _AS_OF.match(stripped)
                if match is not None:
                    if as_of is not None:
                        raise DataFileError(_where(source_name, line_no) + "as_of given twice")
                    as_of = _parse_date(match["value"], line_no, "as_of date", source_name)
                continue
            cells = [cell.strip() for cell in next(csv.reader([line]))]
            if not header_seen:
                if tuple(cell.lower() for cell in cells) != COLUMNS:
                    raise DataFileError(
                        _where(source_name, line_no) + f"expected header {','.join(COLUMNS)!r}, got {stripped!r}"
                    )
                header_seen = True
                continue
            if len(cells) != len(COLUMNS):
                raise DataFileError(_where(source_name, line_no) + f"expected {len(COLUMNS)} columns, got {len(cells)}")
            raw_state, raw_status, raw_date, note, source = cells
            state = raw_state.upper()
            if state not in LICENSING_JURISDICTIONS:
                raise DataFileError(_where(source_name, line_no) + f"unknown state {raw_state!r}")
            try:
                status = ImlcStatus(raw_status.lower())
            except ValueError as exc:
                raise DataFileError(
                    _where(source_name, line_no)
                    + f"bad status {raw_status!r} (expected one of {', '.join(ImlcStatus.values())})"
                ) from exc
            effective = _parse_date(raw_date, line_no, "effective_date", source_name)
            rows = history.setdefault(state, [])
            if any(row.effective_date == effective for row in rows):
                raise DataFileError(
                    _where(source_name, line_no) + f"duplicate state {state} for effective_date {effective}"
                )
            rows.append(MemberJurisdiction(state, status, effective, note, source))
        if as_of is None:
            raise DataFileError(_where(source_name, 1) + "missing '# as_of: YYYY-MM-DD' line")
        if not header_seen:
            raise DataFileError(_where(source_name, 1) + f"missing header {','.join(COLUMNS)!r}")
        ordered = {state: tuple(sorted(rows, key=lambda row: row.effective_date)) for state, rows in history.items()}
        return cls(
            as_of=as_of,
            members=MappingProxyType({state: rows[-1] for state, rows in ordered.items()}),
            source_name=source_name,
            history=MappingProxyType(ordered),
        )

    def status_on(self, state: str, day: date) -> ImlcStatus | None:
        """Compact status of a jurisdiction on a day.

        Parameters
        ----------
        state : str
            Jurisdiction code (any case).
        day : date
            Calendar day asked about.

        Returns
        -------
        ImlcStatus or None
            ``None`` when the jurisdiction is not in the file (not a member). Otherwise the
            status of the state's latest row whose ``effective_date`` is on or before ``day``;
            before its first row, ``PENDING``: an earlier status is not known and the state is
            treated as not operating (the safe reading).
        """
        code = state.strip().upper()
        rows = self.history.get(code)
        if rows is None:
            member = self.members.get(code)  # built without history (direct construction)
            rows = (member,) if member is not None else ()
        if not rows:
            return None
        current = None
        for row in rows:
            if row.effective_date <= day:
                current = row
        return current.status if current is not None else ImlcStatus.PENDING

    def can_serve_as_spl(self, state: str, day: date) -> bool:
        """Whether ``state`` can be designated as State of Principal License on ``day``.

        Only ``spl`` members can (Compact section 4 lets a physician designate a member state
        as SPL; members listed ``non_spl`` have not implemented the SPL role).
        """
        return self.status_on(state, day) is ImlcStatus.SPL

    def is_operating(self, state: str, day: date) -> bool:
        """Whether ``state`` issues Compact licenses on ``day`` (status ``spl`` or ``non_spl``)."""
        return self.status_on(state, day) in _OPERATING

    def age_days(self, today: date) -> int:
        """Days between ``as_of`` and ``today`` (negative if ``as_of`` is in the future)."""
        return (today - self.as_of).days
