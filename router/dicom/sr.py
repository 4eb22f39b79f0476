"""Reading the signing facts of a DICOM SR document (PS3.3 C.17.2, SR Document General Module)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from pydicom import dcmread
from pydicom.errors import InvalidDicomError
from pydicom.valuerep import DT

from router.domain.orders import SrReportFacts


def read_sr_facts(path: Path) -> SrReportFacts | None:
    """The signing facts of the SR document in the Part 10 file at ``path``.

    Returns ``None`` when the file cannot be read or has no VerificationFlag (not an SR
    document: the caller stores it as an ordinary instance). Tolerant: an absent or unreadable
    VerifyingObserverSequence or VerificationDateTime gives empty values.
    """
    try:
        dataset = dcmread(path, stop_before_pixels=True)
        verification = str(dataset.get("VerificationFlag", "") or "").strip()
        if not verification:
            return None
        completion = str(dataset.get("CompletionFlag", "") or "").strip()
        predecessor = bool(dataset.get("PredecessorDocumentsSequence"))
        signer_id = family = given = ""
        verified_at: dt.datetime | None = None
        observers = dataset.get("VerifyingObserverSequence") or []
        if observers:
            observer = observers[-1]  # the last verifier signed last
            name = observer.get("VerifyingObserverName")
            if name:
                family, given = str(name.family_name).strip(), str(name.given_name).strip()
            codes = observer.get("VerifyingObserverIdentificationCodeSequence") or []
            if codes:
                signer_id = str(codes[0].get("CodeValue", "") or "").strip()
            stamp = observer.get("VerificationDateTime")
            if stamp:
                verified_at = _datetime(str(stamp))
    except (InvalidDicomError, OSError, ValueError, TypeError, AttributeError, KeyError):
        return None
    return SrReportFacts(
        verification_flag=verification,
        completion_flag=completion,
        has_predecessor=predecessor,
        signer_id=signer_id,
        signer_family=family,
        signer_given=given,
        verified_at=verified_at,
    )


def _datetime(text: str) -> dt.datetime | None:
    try:
        value = DT(text.strip())
    except ValueError:
        return None
    return dt.datetime(
        value.year, value.month, value.day, value.hour, value.minute, value.second, value.microsecond, value.tzinfo
    )
