"""Assignment policy: which eligible radiologist gets a study (DESIGN.md "Assignment").

First version: least open workload, ties broken fairly by the longest wait since the last
assignment, then by NPI so the choice is deterministic. Eligibility itself is decided in
:mod:`router.domain.licensure`; this module only ever picks among eligible verdicts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime

from router.domain.eligibility_facts import ReaderFacts
from router.domain.licensure import Verdict


def _wait_key(last_assigned_at: datetime | None) -> tuple[int, float]:
    """Sort key putting the longest wait first: never assigned, then the oldest assignment.

    Times are compared as POSIX timestamps, so aware datetimes in different zones compare
    correctly (naive ones are taken as local time by :meth:`datetime.timestamp`).
    """
    if last_assigned_at is None:
        return (0, 0.0)
    return (1, last_assigned_at.timestamp())


def choose_reader(verdicts: Sequence[Verdict], readers: Mapping[int, ReaderFacts]) -> Verdict | None:
    """Pick the radiologist for a study among the eligible verdicts.

    Order: fewest open assignments (assigned, not completed); then the longest time since the
    last assignment (``None``, never assigned, counts as longest); then the lowest NPI.

    Parameters
    ----------
    verdicts : sequence of Verdict
        One per radiologist considered, eligible or not (from
        :func:`router.domain.licensure.evaluate_readers`).
    readers : mapping of int to ReaderFacts
        Radiologists by ``radiologist_id``; must hold every eligible verdict's radiologist.

    Returns
    -------
    Verdict or None
        The chosen eligible verdict (its ``license`` is the license relied on), or ``None``
        exactly when no verdict is eligible. Never an ineligible verdict.

    Raises
    ------
    KeyError
        An eligible verdict's radiologist is missing from ``readers`` (a caller bug).
    """
    eligible = [v for v in verdicts if v.eligible and not v.reasons and v.license is not None]
    if not eligible:
        return None

    def key(verdict: Verdict) -> tuple[int, tuple[int, float], str, int]:
        reader = readers[verdict.radiologist_id]
        return (reader.open_assignments, _wait_key(reader.last_assigned_at), verdict.npi, verdict.radiologist_id)

    return min(eligible, key=key)
