"""Reading priority of a study from the value stored in ``studies.priority``.

The column holds either DICOM Requested Procedure Priority (0040,1003) (PS3.3 C.4.11 defined
terms STAT, HIGH, ROUTINE, MEDIUM, LOW) as received, or a :class:`Priority` value written from
the order (HL7 v2.5.1 table 0027). Both are read here; anything else, or nothing, is routine.
"""

from __future__ import annotations

from router.domain.enums import Priority

_DICOM = {
    "STAT": Priority.STAT,
    "HIGH": Priority.ASAP,
    "ASAP": Priority.ASAP,
    "ROUTINE": Priority.ROUTINE,
    "MEDIUM": Priority.ROUTINE,
    "LOW": Priority.ROUTINE,
    "S": Priority.STAT,  # HL7 table 0027 codes, should one be stored as is
    "A": Priority.ASAP,
    "R": Priority.ROUTINE,
}

#: Sort rank, most urgent first.
RANK = {Priority.STAT: 0, Priority.ASAP: 1, Priority.ROUTINE: 2}


def study_priority(value: str | Priority | None) -> Priority:
    """Map a stored priority (DICOM defined term, HL7 code or :class:`Priority` value) to the enum.

    Parameters
    ----------
    value : str, Priority or None
        Case and padding are ignored. ``None``, empty or unknown terms give ``ROUTINE``.

    Returns
    -------
    Priority
        DICOM STAT -> STAT, HIGH -> ASAP, ROUTINE/MEDIUM/LOW/absent -> ROUTINE.
    """
    if value is None:
        return Priority.ROUTINE
    text = str(value).strip(" \x00").upper()
    return _DICOM.get(text, Priority.ROUTINE)
