"""What the router needs from one received SOP instance, as plain values.

The DICOM layer fills :class:`InstanceHeader` from the data set; the intake service stores it.
Text values are already decoded with the data set's Specific Character Set (0008,0005); a value
that could not be decoded is ``None`` (absent), never a guess.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, field

from router.domain.billing import ProcedureCode

#: DICOM PS3.5 section 9.1: a UID is at most 64 characters of digits and dots.
UID_MAX_LENGTH = 64
_UID_SHAPE = re.compile(r"^[0-9]+(\.[0-9]+)*$")


def uid_problem(value: str | None) -> str | None:
    """Why ``value`` is not usable as a UID (and as an archive path component), or ``None``.

    The rule is PS3.5 section 9.1 (digits and dots, at most 64 characters, no empty
    component) without its "no leading zero" clause: modalities in the field send such UIDs,
    and they are as safe in a path as any other. Anything else (empty, ``../x``, a NUL, a
    space, a letter) is refused, so no file is ever stored under a made-up or escaping key.
    """
    if value is None or value == "":
        return "missing"
    if len(value) > UID_MAX_LENGTH:
        return f"longer than {UID_MAX_LENGTH} characters"
    if not _UID_SHAPE.match(value):
        return "not digits and dots"
    return None


@dataclass(frozen=True)
class InstanceHeader:
    """Identifying and routing attributes of one SOP instance.

    UIDs are stripped of padding but not yet validated; see :func:`uid_problem`.
    """

    sop_class_uid: str | None
    sop_instance_uid: str | None
    study_instance_uid: str | None
    series_instance_uid: str | None
    transfer_syntax_uid: str
    accession_number: str | None = None
    study_date: dt.date | None = None
    study_description: str | None = None
    modality: str | None = None
    body_part: str | None = None
    series_description: str | None = None
    priority: str | None = None
    institution_name: str | None = None
    institution_address: str | None = None
    patient_address: str | None = None
    region_of_residence: str | None = None
    country_of_residence: str | None = None
    procedure_codes: tuple[ProcedureCode, ...] = field(default_factory=tuple)
    #: Sending Application Entity Title (0002,0017) of the file's File Meta Information (PS3.10
    #: section 7.1): the calling AE title of the association the router received it on.
    sending_ae_title: str | None = None
