"""Dated reference data read from files under ``config/``: IMLC membership and the CPT map.

The domain parses the text; this module only reads the files (and re-reads them when they
change on disk, so an admin's update takes effect without a restart).
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Generic, TypeVar

from router.domain.claims import FeeSchedule
from router.domain.cpt_map import CptMap
from router.domain.imlc import ImlcMembership
from router.domain.subspecialty import SubspecialtyRules
from router.domain.workload import WorkRvuTable
from router.errors import DataFileError

T = TypeVar("T")


class _FileCache(Generic[T]):
    """Parses a file once per modification time."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cached: dict[Path, tuple[int, T]] = {}

    def get(self, path: Path, parse: Callable[[str], T]) -> T:
        try:
            stamp = path.stat().st_mtime_ns
        except OSError as exc:
            raise DataFileError(f"cannot read {path}: {exc.strerror}") from exc
        with self._lock:
            hit = self._cached.get(path)
            if hit is not None and hit[0] == stamp:
                return hit[1]
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise DataFileError(f"cannot read {path}: {exc}") from exc
        value = parse(text)
        with self._lock:
            self._cached[path] = (stamp, value)
        return value


class ReferenceData:
    """Loads and caches the IMLC membership file and the CPT map."""

    def __init__(
        self,
        imlc_file: Path,
        cpt_map_file: Path,
        subspecialty_file: Path | None = None,
        work_rvu_file: Path | None = None,
        fee_schedule_file: Path | None = None,
    ) -> None:
        self.imlc_file = Path(imlc_file)
        self.cpt_map_file = Path(cpt_map_file)
        self.subspecialty_file = Path(subspecialty_file) if subspecialty_file is not None else None
        self._subspecialty: _FileCache[SubspecialtyRules] = _FileCache()
        self.work_rvu_file = Path(work_rvu_file) if work_rvu_file is not None else None
        self._work_rvu: _FileCache[WorkRvuTable] = _FileCache()
        self._imlc: _FileCache[ImlcMembership] = _FileCache()
        self._cpt: _FileCache[CptMap] = _FileCache()
        self.fee_schedule_file = Path(fee_schedule_file) if fee_schedule_file is not None else None
        self._fees: _FileCache[FeeSchedule] = _FileCache()

    def imlc(self) -> ImlcMembership:
        """The IMLC membership table.

        Raises
        ------
        DataFileError
            If the file is missing or malformed (the message names the line).
        """
        return self._imlc.get(
            self.imlc_file, lambda text: ImlcMembership.from_csv_text(text, source_name=self.imlc_file.name)
        )

    def cpt_map(self) -> CptMap:
        """The CPT map; its version is taken from the file name (``cpt_map_2026.csv`` -> 2026).

        Raises
        ------
        DataFileError
            If the file is missing or malformed.
        """
        match = re.search(r"(\d{4})", self.cpt_map_file.stem)
        version = match.group(1) if match else self.cpt_map_file.stem
        return self._cpt.get(self.cpt_map_file, lambda text: CptMap.from_csv_text(text, version=version))

    def cpt_map_for_year(self, year: int) -> CptMap | None:
        """The CPT map of a date-of-service year: ``cpt_map_<year>.csv`` beside the configured map.

        CPT codes change every January, so a line is coded with the map of its DOS year
        (shared/domain/README.md). Returns ``None`` when there is no map for that year.

        Raises
        ------
        DataFileError
            If the year's file exists but is malformed.
        """
        path = _year_file(self.cpt_map_file, "cpt_map", year)
        if path is None:
            return None
        if path == self.cpt_map_file:
            return self.cpt_map()
        return self._cpt.get(path, lambda text: CptMap.from_csv_text(text, version=str(year)))

    def fee_schedule_for_year(self, year: int) -> FeeSchedule | None:
        """The fee schedule of a date-of-service year: ``fee_schedule_<year>.csv`` beside the configured one.

        Returns ``None`` when no fee schedule is configured or none exists for that year.

        Raises
        ------
        DataFileError
            If the year's file exists but is malformed (the message names the line).
        """
        if self.fee_schedule_file is None:
            return None
        path = _year_file(self.fee_schedule_file, "fee_schedule", year)
        if path is None:
            return None
        return self._fees.get(path, lambda text: FeeSchedule.from_csv_text(text, version=str(year)))

    def year_file_name(self, kind: str, year: int) -> str:
        """Where :meth:`cpt_map_for_year` (``kind`` ``cpt_map``) or :meth:`fee_schedule_for_year` looks."""
        base = self.cpt_map_file if kind == "cpt_map" else self.fee_schedule_file
        folder = base.parent if base is not None else Path(".")
        return str(folder / f"{kind}_{year}.csv")

    def subspecialty_rules(self) -> SubspecialtyRules:
        """The subspecialty rules (none when no file is configured).

        Raises
        ------
        DataFileError
            If the file is missing or malformed.
        """
        path = self.subspecialty_file
        if path is None:
            return SubspecialtyRules()
        return self._subspecialty.get(path, lambda text: SubspecialtyRules.from_csv_text(text, source_name=path.name))

    def work_rvus(self) -> WorkRvuTable:
        """The work RVU table (empty when no file is configured: every read counts the default).

        Raises
        ------
        DataFileError
            If the file is missing or malformed.
        """
        path = self.work_rvu_file
        if path is None:
            return WorkRvuTable()
        return self._work_rvu.get(path, lambda text: WorkRvuTable.from_csv_text(text, source_name=path.name))


def _year_file(configured: Path, kind: str, year: int) -> Path | None:
    """The configured file when its name carries ``year`` (or no year at all), else
    ``<kind>_<year>.csv`` in its folder; None when neither exists."""
    match = re.search(r"(\d{4})", configured.stem)
    if (match is None or int(match.group(1)) == year) and configured.is_file():
        return configured  # a file named without a year serves every year
    candidate = configured.parent / f"{kind}_{year}.csv"
    return candidate if candidate.is_file() else None
