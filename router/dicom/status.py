"""C-STORE response statuses the router returns (DICOM PS3.4 Annex B.2.3, PS3.7 Annex C).

Every failure has its own code so a sender's log says what went wrong; the handler never
returns a bare number. 0xC211 is deliberately absent: pynetdicom answers it when a handler
raises, so seeing it means a bug in the router.
"""

from __future__ import annotations

from enum import IntEnum


class StoreStatus(IntEnum):
    """Status of a C-STORE response."""

    #: Stored durably (file fsynced and renamed, directory fsynced) and indexed (row committed).
    SUCCESS = 0x0000
    #: Refused: Out of Resources (PS3.4 B.2.3, A7xx): the archive could not write the file
    #: (disk full, read-only, I/O error). The sender should retry later.
    OUT_OF_RESOURCES_ARCHIVE = 0xA700
    #: Refused: Out of Resources (A7xx): the index database could not record the instance
    #: (unavailable, locked past the busy timeout). Retry later.
    OUT_OF_RESOURCES_INDEX = 0xA701
    #: Error: Data Set does not match SOP Class (A9xx): the data set's SOP Instance UID or SOP
    #: Class UID differs from the C-STORE request's Affected SOP Instance/Class UID.
    DATA_SET_MISMATCH = 0xA900
    #: Error: Cannot understand (Cxxx): a required UID is missing or invalid (PS3.5 section 9.1).
    INVALID_STUDY_UID = 0xC001
    INVALID_SERIES_UID = 0xC002
    INVALID_SOP_INSTANCE_UID = 0xC003
    INVALID_SOP_CLASS_UID = 0xC004
    #: Error: Cannot understand: the data set could not be decoded (pynetdicom's own code for
    #: this condition in its storage SCP examples).
    CANNOT_DECODE = 0xC210

    @property
    def is_success(self) -> bool:
        """Whether the sender may discard its copy."""
        return self == StoreStatus.SUCCESS


#: ErrorComment (0000,0902) is LO: at most 64 characters (PS3.7 section E.1).
ERROR_COMMENT_MAX = 64
