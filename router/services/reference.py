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
    ) -> None:
        self.imlc_file = Path(imlc_file)
        self.cpt_map_file = Path(cpt_map_file)
        self.subspecialty_file = Path(subspecialty_file) if subspecialty_file is not None else None
        self._subspecialty: _FileCache[SubspecialtyRules] = _FileCache()
        self.work_rvu_file = Path(work_rvu_file) if work_rvu_file is not None else None
        self._work_rvu: _FileCache[WorkRvuTable] = _FileCache()
        self._imlc: _FileCache[ImlcMembership] = _FileCache()
        self._cpt: _FileCache[CptMap] = _FileCache()

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
