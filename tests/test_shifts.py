"""Reader shifts (router.domain.shifts) and priorities (router.domain.priority): pure rules."""

from __future__ import annotations

import datetime as dt

import pytest

from router.domain.enums import Priority
from router.domain.priority import study_priority
from router.domain.shifts import Shift, ShiftError, on_shift, parse_clock, parse_weekdays

UTC = dt.UTC


def _utc(*args: int) -> dt.datetime:
    return dt.datetime(*args, tzinfo=UTC)


DAY = Shift(parse_weekdays("mon-fri"), parse_clock("07:00"), parse_clock("19:00"), "America/Chicago")
NIGHT = Shift(parse_weekdays("mon-fri"), parse_clock("19:00"), parse_clock("07:00"), "America/Chicago")


@pytest.mark.parametrize(
    ("moment", "day", "night"),
    [
        # Wednesday 2026-12-02, Chicago is UTC-6 (CST)
        (_utc(2026, 12, 2, 12, 59), False, True),  # 06:59 local: night shift from Tuesday still on
        (_utc(2026, 12, 2, 13, 0), True, False),  # 07:00 local: day starts, night ended (end exclusive)
        (_utc(2026, 12, 3, 0, 59), True, False),  # 18:59 local
        (_utc(2026, 12, 3, 1, 0), False, True),  # 19:00 local: day ended, night started
        # Saturday 2026-12-05 05:00 local: Friday's night shift runs into Saturday morning
        (_utc(2026, 12, 5, 11, 0), False, True),
        (_utc(2026, 12, 5, 13, 0), False, False),  # Saturday 07:00: nothing starts on Saturday
        (_utc(2026, 12, 7, 11, 0), False, False),  # Monday 05:00: Sunday had no night shift
    ],
)
def test_shift_boundaries_day_and_overnight(moment: dt.datetime, day: bool, night: bool) -> None:
    assert DAY.covers(moment) is day
    assert NIGHT.covers(moment) is night


def test_wall_clock_follows_daylight_saving_time() -> None:
    # Monday 2026-03-09, the day after DST starts: Chicago is UTC-5 (CDT), 07:00 local = 12:00 UTC
    assert DAY.covers(_utc(2026, 3, 9, 12, 0)) is True
    assert DAY.covers(_utc(2026, 3, 9, 11, 59)) is False
    # Friday 2026-03-06 (CST, UTC-6): 07:00 local = 13:00 UTC
    assert DAY.covers(_utc(2026, 3, 6, 12, 30)) is False
    assert DAY.covers(_utc(2026, 3, 6, 13, 0)) is True
    # the night of Sat->Sun across the change (daily overnight shift 22:00-06:00): 06:00 CDT = 11:00 UTC
    nightly = Shift(parse_weekdays("daily"), parse_clock("22:00"), parse_clock("06:00"), "America/Chicago")
    assert nightly.covers(_utc(2026, 3, 8, 10, 59)) is True
    assert nightly.covers(_utc(2026, 3, 8, 11, 0)) is False


def test_reader_without_shifts_follows_require_shift() -> None:
    moment = _utc(2026, 12, 5, 11, 0)
    assert on_shift([], moment, require_shift=False) == (True, None)
    assert on_shift([], moment, require_shift=True) == (False, "no shifts defined and routing.require_shift is on")
    ok, reason = on_shift([DAY], moment, require_shift=False)
    assert ok is False and reason == "off shift (mon,tue,wed,thu,fri 07:00-19:00 America/Chicago)"


def test_weekday_and_time_parsing() -> None:
    assert parse_weekdays("mon-fri") == (0, 1, 2, 3, 4)
    assert parse_weekdays("sat,sun") == (5, 6)
    assert parse_weekdays("fri-mon") == (0, 4, 5, 6)
    assert parse_weekdays("daily") == tuple(range(7))
    with pytest.raises(ShiftError, match="unknown weekday"):
        parse_weekdays("funday")
    with pytest.raises(ShiftError, match="HH:MM"):
        parse_clock("7pm")


@pytest.mark.parametrize(
    ("stored", "priority"),
    [
        ("STAT", Priority.STAT),
        ("HIGH", Priority.ASAP),
        ("ROUTINE", Priority.ROUTINE),
        ("MEDIUM", Priority.ROUTINE),
        ("LOW", Priority.ROUTINE),
        (None, Priority.ROUTINE),
        ("", Priority.ROUTINE),
        ("stat", Priority.STAT),  # the order's Priority value, written by the HL7 orders service
        ("asap", Priority.ASAP),
        ("routine", Priority.ROUTINE),
        (" STAT\x00", Priority.STAT),
        ("URGENT", Priority.ROUTINE),  # not a defined term
    ],
)
def test_study_priority_maps_dicom_terms_and_order_values(stored: str | None, priority: Priority) -> None:
    assert study_priority(stored) is priority


# --------------------------------------------------------------------------- exam-state day


def test_exam_state_day_is_the_cautious_one_where_a_state_spans_zones() -> None:
    from router.domain.state_zones import state_local_date

    # 05:30 UTC Dec 1: 23:30 Nov 30 in Chicago and 22:30 in Denver (El Paso): both Nov 30
    assert state_local_date("TX", _utc(2026, 12, 1, 5, 30)) == (dt.date(2026, 11, 30), "America/Chicago")
    # 06:30 UTC: Dec 1 in Houston, still Nov 30 in El Paso: Dec 1 (a license expiring Nov 30 has lapsed)
    assert state_local_date("TX", _utc(2026, 12, 1, 6, 30)) == (dt.date(2026, 12, 1), "America/Chicago")
    # UTC would already say Dec 1 at 05:30; Hawaii is still on Nov 30 at 09:59 UTC
    assert state_local_date("HI", _utc(2026, 12, 1, 9, 59)) == (dt.date(2026, 11, 30), "Pacific/Honolulu")
    assert state_local_date("HI", _utc(2026, 12, 1, 10, 0))[0] == dt.date(2026, 12, 1)
    assert state_local_date("ZZ", _utc(2026, 12, 1, 5, 30), "UTC") == (dt.date(2026, 12, 1), "UTC")


def test_subspecialty_rules_first_match_and_bad_rows() -> None:
    from router.domain.enums import Subspecialty, SubspecialtyNeed
    from router.domain.subspecialty import SubspecialtyRules, parse_subspecialties
    from router.errors import DataFileError

    rules = SubspecialtyRules.from_csv_text(
        "# c\nmodality,body_part,description_keywords,subspecialty,need\n"
        "MG,,,breast,required\nCT|MR,,stroke,neuro,required\nCT,HEAD,,neuro,preferred\n"
    )
    assert rules.rule_for(["MG"], None, None).subspecialty is Subspecialty.BREAST  # type: ignore[union-attr]
    stroke = rules.rule_for(["CT", "SR"], "HEAD", "CT Head Stroke Protocol")
    assert (stroke.need, stroke.line) == (SubspecialtyNeed.REQUIRED, 4)  # type: ignore[union-attr]
    assert rules.rule_for(["CT"], "HEAD", "routine").need is SubspecialtyNeed.PREFERRED  # type: ignore[union-attr]
    assert rules.rule_for(["CT"], "CHEST", "routine") is None
    with pytest.raises(DataFileError, match="line 2: subspecialty must be one of"):
        SubspecialtyRules.from_csv_text(
            "modality,body_part,description_keywords,subspecialty,need\nCT,,,dental,required\n"
        )
    assert parse_subspecialties(["msk,neuro", "neuro"]) == (Subspecialty.NEURO, Subspecialty.MSK)
    with pytest.raises(ValueError, match="unknown subspecialty 'dental'"):
        parse_subspecialties(["dental"])
