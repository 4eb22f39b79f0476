"""Pure rules for orders and reports received from the RIS and the reporting system.

Sources: HL7 v2.5.1 table 0027 (priority), table 0123 (result status), table 0119 (order
control codes), table 0396 (coding systems); DICOM PS3.3 C.17.2 (SR Document General Module:
VerificationFlag, CompletionFlag, PredecessorDocumentsSequence).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from router.domain.enums import Priority, ReportStatus

#: ORC-1 order control codes that withdraw an order (HL7 v2.5.1 table 0119).
CANCEL_CONTROLS = frozenset({"CA", "OC", "DC", "OD"})

_PRIORITY = {
    "S": Priority.STAT,
    "STAT": Priority.STAT,
    "A": Priority.ASAP,
    "ASAP": Priority.ASAP,
    "R": Priority.ROUTINE,
}
_RESULT_STATUS = {"P": ReportStatus.PRELIMINARY, "F": ReportStatus.FINAL, "C": ReportStatus.CORRECTED}


def priority_from_hl7(code: str) -> Priority | None:
    """:class:`Priority` of an HL7 priority component (table 0027: S, A, R; others routine).

    ``""`` gives ``None`` (not sent); P (pre-op), C (callback), T (timing critical) and other
    local codes read as routine, the lowest of the three.
    """
    code = code.strip().upper()
    if not code:
        return None
    return _PRIORITY.get(code, Priority.ROUTINE)


def report_status_from_hl7(code: str) -> ReportStatus | None:
    """:class:`ReportStatus` of OBR-25 (P preliminary, F final, C corrected); ``None`` otherwise."""
    return _RESULT_STATUS.get(code.strip().upper())


def report_status_from_sr(verification_flag: str, completion_flag: str, has_predecessor: bool) -> ReportStatus:
    """:class:`ReportStatus` of an SR document (PS3.3 C.17.2).

    A document with PredecessorDocumentsSequence replaces or adds to an earlier one: corrected.
    Otherwise VERIFIED and COMPLETE is final; anything else (UNVERIFIED, PARTIAL) preliminary.
    """
    if has_predecessor:
        return ReportStatus.CORRECTED
    if verification_flag.strip().upper() == "VERIFIED" and completion_flag.strip().upper() == "COMPLETE":
        return ReportStatus.FINAL
    return ReportStatus.PRELIMINARY


def names_match(roster_name: str, family: str, given: str) -> bool:
    """Whether a roster name (DICOM PN ``Family^Given``) is the signer ``family``/``given``.

    Case and surrounding spaces are ignored; the given name must match when both are known.
    """
    parts = [part.strip().casefold() for part in roster_name.split("^")] + ["", ""]
    if not family.strip() or parts[0] != family.strip().casefold():
        return False
    return not (given.strip() and parts[1]) or parts[1] == given.strip().casefold()


#: Structured Report storage SOP classes that carry a report (PS3.4 Table B.5-1): Basic Text,
#: Enhanced, Comprehensive, Comprehensive 3D and Extensible SR.
REPORT_SR_SOP_CLASSES = frozenset(
    {
        "1.2.840.10008.5.1.4.1.1.88.11",
        "1.2.840.10008.5.1.4.1.1.88.22",
        "1.2.840.10008.5.1.4.1.1.88.33",
        "1.2.840.10008.5.1.4.1.1.88.34",
        "1.2.840.10008.5.1.4.1.1.88.35",
    }
)


@dataclass(frozen=True)
class SrReportFacts:
    """What an SR document says about its signing (PS3.3 C.17.2 SR Document General Module).

    ``signer_id`` is the CodeValue of VerifyingObserverIdentificationCodeSequence (an NPI
    where the reporting system sends one); ``verified_at`` is VerificationDateTime, naive when
    sent without an offset.
    """

    verification_flag: str
    completion_flag: str
    has_predecessor: bool
    signer_id: str
    signer_family: str
    signer_given: str
    verified_at: dt.datetime | None
