"""Closed sets of the domain, used everywhere they appear (DB column, CLI choice, JSON value).

Each enum is a ``str`` enum so its value is what is stored and shown.
"""

from __future__ import annotations

import enum


class StrEnum(enum.StrEnum):
    """A ``str`` enum whose ``str()`` is its value, with a list of its values."""

    @classmethod
    def values(cls) -> list[str]:
        """All values, in declaration order (for CLI choices and DB enums)."""
        return [member.value for member in cls]


class StudyStatus(StrEnum):
    """Life cycle of a study in the router."""

    RECEIVING = "receiving"  # instances are arriving; not routed yet
    HELD = "held"  # routing could not assign it; see HoldReason
    ASSIGNED = "assigned"  # a licensed radiologist has it; read not reported yet
    COMPLETED = "completed"  # the read was reported and billed


class HoldReason(StrEnum):
    """Why a study is held for a human."""

    NO_EXAM_STATE = "no_exam_state"
    NO_ELIGIBLE_RADIOLOGIST = "no_eligible_radiologist"
    NO_READER_ON_SHIFT = "no_reader_on_shift"  # licensed readers exist, none on shift (or all at their cap)
    FACILITY_ADDRESS_CONFLICT = "facility_address_conflict"  # facility state != InstitutionAddress state


class ExamStateSource(StrEnum):
    """Which rule gave the exam state (DESIGN.md "Which state")."""

    FACILITY = "facility"
    INSTITUTION_ADDRESS = "institution_address"
    REGION_OF_RESIDENCE = "region_of_residence"
    PATIENT_ADDRESS = "patient_address"
    MANUAL = "manual"


class LicensePathway(StrEnum):
    """How a state license was obtained."""

    FULL = "full"
    IMLC = "imlc"
    TELEHEALTH_REGISTRATION = "telehealth_registration"
    FEDERAL_VA = "federal_va"
    FEDERAL_DOD = "federal_dod"


class LicenseStatus(StrEnum):
    """Status of a license as recorded by its board."""

    ACTIVE = "active"
    EXPIRED = "expired"
    SUSPENDED = "suspended"
    REVOKED = "revoked"
    SURRENDERED = "surrendered"


class ImlcStatus(StrEnum):
    """A jurisdiction's standing in the Interstate Medical Licensure Compact."""

    SPL = "spl"  # operating member that can serve as State of Principal License
    NON_SPL = "non_spl"  # issues Compact licenses, cannot be the SPL
    PENDING = "pending"  # enacted, not yet operating
    AT_RISK = "at_risk"  # sunset/withdrawal passed or near; treat as not operating


class FederalFacility(StrEnum):
    """Federal facility kinds whose readers may rely on a federal license pathway."""

    VA = "va"
    DOD = "dod"


class CptSource(StrEnum):
    """Where a professional ledger record's CPT code came from."""

    PROCEDURE_CODE_SEQUENCE = "procedure_code_sequence"
    REQUESTED_PROCEDURE_CODE_SEQUENCE = "requested_procedure_code_sequence"
    MAP = "map"
    NONE = "none"  # no code found: coder review


class ProfessionalEntryKind(StrEnum):
    """Kind of an append-only professional ledger record."""

    CHARGE = "charge"
    REVERSAL = "reversal"


class InfrastructureKind(StrEnum):
    """Kind of an append-only infrastructure ledger record."""

    STORAGE = "storage"  # bytes kept in the archive
    TRANSMISSION = "transmission"  # bytes forwarded to a reader's destination


class CostBasis(StrEnum):
    """What an infrastructure record's quantity and rate are (router.domain.infra_cost)."""

    RECORDED = "recorded"  # written before migration 0009: amount_microcents is the whole-cent amount charged then
    PER_GIB = "per_gib"  # quantity in bytes, rate per GiB (2**30 bytes): transmission
    PER_GIB_MONTH = "per_gib_month"  # quantity in byte-days, unit 2**30 x days in the month: storage accrual


class OutboxStatus(StrEnum):
    """State of a forwarding job (one per study and destination)."""

    PENDING = "pending"
    SENT = "sent"
    FAILED = "failed"  # gave up after the configured attempts; an admin can retry


class Priority(StrEnum):
    """How urgently a study must be read, highest first.

    From the order (HL7 v2 ORC-7 / TQ1-9 / OBR-27 priority component: ``S`` stat, ``A`` ASAP,
    ``R`` routine; HL7 v2.5.1 table 0027) or, without an order, from DICOM Requested Procedure
    Priority (0040,1003) (PS3.3 C.4.11: STAT, HIGH, ROUTINE, MEDIUM, LOW; HIGH is read as ASAP).
    """

    STAT = "stat"
    ASAP = "asap"
    ROUTINE = "routine"


class AckCode(StrEnum):
    """MSA-1 acknowledgment code (HL7 v2.5.1 table 0008, original mode)."""

    AA = "AA"  # accepted: the message and its effects are committed
    AE = "AE"  # error: the message could not be processed (reason in MSA-3 / ERR)
    AR = "AR"  # rejected: unknown message type, unreadable header or frame


class OrderStatus(StrEnum):
    """State of an order received from the RIS."""

    ACTIVE = "active"
    CANCELLED = "cancelled"  # ORC-1 CA (cancel request) or OC (order cancelled)


class ReportStatus(StrEnum):
    """Status of a received report (HL7 v2.5.1 table 0123 OBR-25; DICOM SR flags, PS3.3 C.17.2)."""

    PRELIMINARY = "preliminary"  # OBR-25 P; SR UNVERIFIED or PARTIAL
    FINAL = "final"  # OBR-25 F; SR VERIFIED and COMPLETE
    CORRECTED = "corrected"  # OBR-25 C; SR with PredecessorDocumentsSequence (amendment/addendum)


class ReportOutcome(StrEnum):
    """What a received report did."""

    BILLED = "billed"  # completed the read: professional records written
    NOT_BILLED = "not_billed"  # preliminary, or a correction of a read already billed
    FLAGGED = "flagged"  # never billed: signed by someone else / not eligible; admin to review


class ReportSource(StrEnum):
    """How a report reached the router."""

    HL7 = "hl7"  # ORU^R01 over MLLP
    DICOM_SR = "dicom_sr"  # Basic/Enhanced/Comprehensive SR by C-STORE


class ArchiveBackendKind(StrEnum):
    """Where archive files are kept (``[archive] backend``)."""

    FOLDER = "folder"  # a POSIX folder: temp file, fsync, rename, folder fsync
    S3 = "s3"  # an S3-compatible object store: PUT with Content-MD5 after a local fsync


class FacilityReaderRule(StrEnum):
    """A facility's standing instruction about one reader."""

    PREFER = "prefer"  # wins ties against readers with the same workload
    EXCLUDE = "exclude"  # never assigned studies from this facility


class Subspecialty(StrEnum):
    """Radiology subspecialty credentials a reader may hold (ABR subspecialty areas, in practice terms)."""

    NEURO = "neuro"
    MSK = "msk"
    BREAST = "breast"
    PEDS = "peds"
    BODY = "body"
    CHEST = "chest"
    CARDIAC = "cardiac"
    IR = "ir"
    NUCLEAR = "nuclear"


class SubspecialtyNeed(StrEnum):
    """How strongly a subspecialty rule asks for its credential."""

    REQUIRED = "required"  # only credentialed readers may be assigned
    PREFERRED = "preferred"  # credentialed readers win ties on workload
