"""IMLC membership data: parsing, dated status, and the real config/imlc_membership.csv."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest

from router.domain.enums import ImlcStatus
from router.domain.imlc import ImlcMembership
from router.errors import DataFileError

CONFIG_FILE = Path(__file__).resolve().parents[1] / "config" / "imlc_membership.csv"
HEADER = "state,status,effective_date,note,source"

SMALL = f"""# as_of: 2026-11-29
# a comment
{HEADER}
TX,spl,2023-01-01,,src
CT,non_spl,2022-01-01,"issues, but not SPL",src
NC,pending,2026-01-01,,src
MI,at_risk,2026-03-28,,src
PA,spl,2025-07-07,,src
"""


@pytest.fixture(scope="module")
def real() -> ImlcMembership:
    return ImlcMembership.from_csv_text(CONFIG_FILE.read_text(encoding="utf-8"), source_name=CONFIG_FILE.name)


@pytest.fixture(scope="module")
def small() -> ImlcMembership:
    return ImlcMembership.from_csv_text(SMALL, source_name="small.csv")


def test_small_file_parsed(small: ImlcMembership) -> None:
    assert small.as_of == date(2026, 11, 29)
    assert small.source_name == "small.csv"
    assert sorted(small.members) == ["CT", "MI", "NC", "PA", "TX"]
    assert small.members["CT"].note == "issues, but not SPL"
    assert small.members["PA"].effective_date == date(2025, 7, 7)
    with pytest.raises(TypeError):
        small.members["XX"] = small.members["TX"]  # type: ignore[index]


@pytest.mark.parametrize(
    ("state", "day", "status", "spl", "operating"),
    [
        ("TX", date(2026, 12, 1), ImlcStatus.SPL, True, True),
        ("TX", date(2022, 12, 31), ImlcStatus.PENDING, False, False),  # day before effective date
        ("TX", date(2023, 1, 1), ImlcStatus.SPL, True, True),  # effective date itself
        ("tx", date(2026, 12, 1), ImlcStatus.SPL, True, True),  # any case
        ("CT", date(2026, 12, 1), ImlcStatus.NON_SPL, False, True),
        ("NC", date(2026, 12, 1), ImlcStatus.PENDING, False, False),
        ("MI", date(2026, 3, 28), ImlcStatus.AT_RISK, False, False),
        ("PA", date(2025, 7, 6), ImlcStatus.PENDING, False, False),
        ("PA", date(2025, 7, 7), ImlcStatus.SPL, True, True),
        ("CA", date(2026, 12, 1), None, False, False),
    ],
)
def test_status_on_small(
    small: ImlcMembership, state: str, day: date, status: ImlcStatus | None, spl: bool, operating: bool
) -> None:
    assert small.status_on(state, day) == status
    assert small.can_serve_as_spl(state, day) is spl
    assert small.is_operating(state, day) is operating


@pytest.mark.parametrize(
    ("state", "day", "status"),
    [
        ("TX", date(2026, 11, 29), ImlcStatus.SPL),
        ("CO", date(2026, 11, 29), ImlcStatus.SPL),
        ("CT", date(2026, 11, 29), ImlcStatus.NON_SPL),
        ("VT", date(2026, 11, 29), ImlcStatus.NON_SPL),
        ("NC", date(2026, 11, 29), ImlcStatus.PENDING),
        ("FL", date(2026, 11, 29), ImlcStatus.PENDING),
        ("MI", date(2026, 11, 29), ImlcStatus.AT_RISK),
        ("RI", date(2026, 11, 29), ImlcStatus.AT_RISK),
        ("DC", date(2026, 11, 29), ImlcStatus.SPL),
        ("GU", date(2026, 11, 29), ImlcStatus.SPL),
        # dated history rows (issue 13): the status on the day asked, both sides of each change
        ("PA", date(2024, 8, 25), ImlcStatus.PENDING),  # before its first row
        ("PA", date(2024, 8, 26), ImlcStatus.NON_SPL),  # issuing Compact licenses
        ("PA", date(2025, 7, 6), ImlcStatus.NON_SPL),
        ("PA", date(2025, 7, 7), ImlcStatus.SPL),
        ("AL", date(2024, 10, 28), ImlcStatus.NON_SPL),
        ("AL", date(2024, 10, 29), ImlcStatus.SPL),
        ("MI", date(2026, 3, 27), ImlcStatus.SPL),
        ("MI", date(2026, 3, 28), ImlcStatus.AT_RISK),
        ("CA", date(2026, 11, 29), None),
        ("NY", date(2026, 11, 29), None),
        ("AK", date(2026, 11, 29), None),
        ("PR", date(2026, 11, 29), None),
    ],
)
def test_real_file_values(real: ImlcMembership, state: str, day: date, status: ImlcStatus | None) -> None:
    assert real.status_on(state, day) == status


def test_real_file_header_and_size(real: ImlcMembership) -> None:
    assert real.as_of == date(2026, 11, 29)
    assert len(real.members) == 44
    not_members = {"AK", "CA", "MA", "NM", "NY", "OR", "SC", "VA", "PR", "VI", "AS", "MP"}
    assert not_members.isdisjoint(real.members)
    assert real.members["TX"].source


@pytest.mark.parametrize(
    ("today", "age"),
    [(date(2026, 11, 29), 0), (date(2026, 11, 30), 1), (date(2027, 2, 27), 90), (date(2026, 11, 28), -1)],
)
def test_age_days(small: ImlcMembership, today: date, age: int) -> None:
    assert small.age_days(today) == age


def _file(*rows: str, as_of: str | None = "# as_of: 2026-11-29") -> str:
    lines = ([as_of] if as_of is not None else []) + [HEADER, *rows]
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (_file("TX,spl,2023-01-01,,s", as_of=None), "line 1: missing '# as_of"),
        (_file("TX,spl,2023-01-01,,s", as_of="# as_of: 2026-13-01"), "line 1: bad as_of date '2026-13-01'"),
        (_file("TX,spl,2023-01-01,,s", as_of="# as_of:"), "line 1: bad as_of date ''"),
        (_file("XX,spl,2023-01-01,,s"), "line 3: unknown state 'XX'"),
        (_file("TX,spl,2023-01-01,,s", "AA,spl,2023-01-01,,s"), "line 4: unknown state 'AA'"),
        (_file("TX,member,2023-01-01,,s"), "line 3: bad status 'member'"),
        (_file("TX,spl,2023-02-30,,s"), "line 3: bad effective_date '2023-02-30'"),
        (_file("TX,spl,20230101,,s"), "line 3: bad effective_date '20230101'"),
        (
            _file("TX,spl,2023-01-01,,s", "CO,spl,2016-01-01,,s", "TX,non_spl,2023-01-01,,s"),
            "line 5: duplicate state TX for effective_date 2023-01-01",
        ),
        (_file("TX,spl,2023-01-01,s"), "line 3: expected 5 columns, got 4"),
        ("# as_of: 2026-11-29\nstate,status,date,note,source\n", "line 2: expected header"),
        ("# as_of: 2026-11-29\n# as_of: 2026-11-30\n" + HEADER + "\n", "line 2: as_of given twice"),
        ("# as_of: 2026-11-29\n", "line 1: missing header"),
    ],
)
def test_malformed_files_rejected_with_line(text: str, expected: str) -> None:
    with pytest.raises(DataFileError) as info:
        ImlcMembership.from_csv_text(text, source_name="m.csv")
    assert str(info.value).startswith("m.csv ")
    assert expected in str(info.value)


def test_blank_lines_and_line_numbers_counted() -> None:
    text = "# as_of: 2026-11-29\n\n" + HEADER + "\n\nTX,spl,2023-01-01,,s\nZZ,spl,2023-01-01,,s\n"
    with pytest.raises(DataFileError, match="line 6: unknown state 'ZZ'"):
        ImlcMembership.from_csv_text(text)


def test_empty_member_list_is_allowed() -> None:
    parsed = ImlcMembership.from_csv_text(_file())
    assert dict(parsed.members) == {}
    assert parsed.status_on("TX", date(2026, 1, 1)) is None


def test_history_rows_in_any_order_and_latest_as_member() -> None:
    parsed = ImlcMembership.from_csv_text(
        f"# as_of: 2026-11-29\n{HEADER}\nMI,at_risk,2026-03-28,,s\nMI,spl,2019-03-28,,s\nTX,spl,2023-01-01,,s\n"
    )
    assert [row.status for row in parsed.history["MI"]] == [ImlcStatus.SPL, ImlcStatus.AT_RISK]
    assert parsed.members["MI"].status is ImlcStatus.AT_RISK
    assert parsed.status_on("MI", date(2019, 3, 27)) is ImlcStatus.PENDING
    assert parsed.status_on("MI", date(2019, 3, 28)) is ImlcStatus.SPL
    assert parsed.status_on("MI", date(2026, 3, 27)) is ImlcStatus.SPL
    assert parsed.can_serve_as_spl("MI", date(2026, 3, 28)) is False
