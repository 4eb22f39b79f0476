"""Assignment policy: least open workload, then longest wait, then NPI; never an ineligible reader."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone

import pytest

from router.domain.assignment import choose_reader
from router.domain.eligibility_facts import LicenseFacts, ReaderFacts
from router.domain.enums import LicensePathway, LicenseStatus
from router.domain.licensure import Verdict

UTC = UTC
T0 = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)
TX1 = LicenseFacts("TX", "1", LicensePathway.FULL, LicenseStatus.ACTIVE, date(2028, 1, 1))


def _reader(rid: int, open_assignments: int = 0, last: datetime | None = None) -> ReaderFacts:
    return ReaderFacts(
        radiologist_id=rid,
        npi=f"10000000{rid:02d}",
        name=f"R^{rid}",
        open_assignments=open_assignments,
        last_assigned_at=last,
    )


def _verdict(r: ReaderFacts, eligible: bool = True) -> Verdict:
    if eligible:
        return Verdict(r.npi, r.name, r.radiologist_id, True, (), TX1)
    return Verdict(r.npi, r.name, r.radiologist_id, False, ("no license in TX",), None)


@pytest.mark.parametrize(
    ("specs", "expected"),
    [
        # (id, open, last_assigned_at, eligible)
        ([(1, 2, None, True), (2, 1, None, True)], 2),  # fewest open assignments
        ([(1, 1, T0, True), (2, 1, None, True)], 2),  # never assigned waits longest
        ([(1, 1, T0, True), (2, 1, T0 - timedelta(seconds=1), True)], 2),  # older last assignment
        ([(1, 1, T0, True), (2, 1, T0, True)], 1),  # full tie: lowest NPI
        ([(2, 1, T0, True), (1, 1, T0, True)], 1),  # input order does not matter
        ([(1, 0, None, False), (2, 5, T0, True)], 2),  # the ineligible one is never chosen
        ([(1, 1, T0, True), (2, 1, T0.astimezone(timezone(timedelta(hours=-6))) - timedelta(minutes=1), True)], 2),
        ([(1, 0, None, False), (2, 0, None, False)], None),
        ([], None),
    ],
)
def test_choose_reader(specs: list[tuple[int, int, datetime | None, bool]], expected: int | None) -> None:
    readers = {rid: _reader(rid, n, last) for rid, n, last, _ in specs}
    verdicts = [_verdict(readers[rid], ok) for rid, _, _, ok in specs]
    chosen = choose_reader(verdicts, readers)
    assert (chosen.radiologist_id if chosen else None) == expected
    if chosen is not None:
        assert chosen.eligible and chosen.license is not None


def test_inconsistent_verdict_is_not_chosen() -> None:
    r = _reader(1)
    forged = Verdict(r.npi, r.name, 1, True, ("inactive",), TX1)
    no_license = Verdict(r.npi, r.name, 1, True, (), None)
    assert choose_reader([forged, no_license], {1: r}) is None


def test_missing_reader_is_a_caller_bug() -> None:
    with pytest.raises(KeyError):
        choose_reader([_verdict(_reader(1)), _verdict(_reader(2))], {1: _reader(1)})
