"""Work RVUs of a read (router.domain.workload) and the shipped work RVU table."""

from __future__ import annotations

from pathlib import Path

import pytest

from router.domain.billing import ProcedureCode
from router.domain.cpt_map import CptMap
from router.domain.enums import CptSource
from router.domain.workload import WorkRvuTable, read_work_rvu_centi
from router.errors import DataFileError

CONFIG = Path(__file__).resolve().parents[1] / "config"


@pytest.fixture(scope="module")
def cpt_map() -> CptMap:
    return CptMap.from_csv_text((CONFIG / "cpt_map_2026.csv").read_text(encoding="utf-8"), version="2026")


@pytest.fixture(scope="module")
def table() -> WorkRvuTable:
    return WorkRvuTable.from_csv_text((CONFIG / "work_rvu_2026.csv").read_text(encoding="utf-8"))


def test_every_mapped_cpt_has_a_work_rvu(cpt_map: CptMap, table: WorkRvuTable) -> None:
    codes = {line.split(",")[0] for line in (CONFIG / "cpt_map_2026.csv").read_text().splitlines()[2:] if line}
    assert codes <= set(table.centi)
    assert table.centi["74177"] == 182 and table.centi["71045"] == 18


def test_read_work_rvus_from_sent_codes_inferred_code_or_default(cpt_map: CptMap, table: WorkRvuTable) -> None:
    sent = [
        ProcedureCode("70553", "C4", "MRI brain", CptSource.PROCEDURE_CODE_SEQUENCE),
        ProcedureCode("72141", "C4", "MRI c-spine", CptSource.PROCEDURE_CODE_SEQUENCE),
    ]
    assert read_work_rvu_centi(sent, ["MR"], None, None, cpt_map, table, 100) == 229 + 148  # one per line
    assert read_work_rvu_centi([], ["CT"], "ABDOMEN", "CT ABD PELVIS WITH CONTRAST", cpt_map, table, 100) == 182
    assert read_work_rvu_centi([], ["OT"], None, None, cpt_map, table, 100) == 100  # nothing known: default
    unknown = [ProcedureCode("99999", "C4", "?", CptSource.PROCEDURE_CODE_SEQUENCE)]
    assert read_work_rvu_centi(unknown, ["CT"], None, None, cpt_map, table, 150) == 150


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ("71045,abc", "line 2: work_rvu 'abc' is not a number"),
        ("71045,-1", "line 2: work_rvu must be a non-negative number"),
        ("71045,0.18\n71045,0.2", "line 3: duplicate CPT 71045"),
    ],
)
def test_bad_work_rvu_rows_rejected_with_line(row: str, message: str) -> None:
    with pytest.raises(DataFileError, match=message):
        WorkRvuTable.from_csv_text(f"cpt,work_rvu\n{row}\n")
