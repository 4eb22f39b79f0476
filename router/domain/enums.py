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


class ClaimFrequency(StrEnum):
    """What a professional record is to a claim: X12 005010X222A1 loop 2300 CLM05-3, the claim
    frequency type code (NUBC UB-04 type-of-bill third digit, as 837P uses it)."""

    ORIGINAL = "1"  # an original charge
    REPLACEMENT = "7"  # replacement of a prior charge (``replaces_id``)
    VOID = "8"  # void/cancel of a prior charge (every reversal)


class CorrectionReason(StrEnum):
    """Why a professional charge was reversed (and, for a coding correction, replaced)."""

    ORDER_CANCELLED = "order_cancelled"  # ORC-1 CA after the read was billed
    STUDY_MERGED = "study_merged"  # the images belong to another study's read
    WRONG_PATIENT = "wrong_patient"  # the study was filed under the wrong patient
    READ_REASSIGNED = "read_reassigned"  # the read is taken from the reader who was billed
    CORRECTED_CODING = "corrected_coding"  # a coder changed CPT code, modifiers or units
    CODER_APPROVED = "coder_approved"  # a coder cleared a line held for review


class BillingArrangement(StrEnum):
    """Who a facility's professional reads are billed to (stored on the facility, copied onto each line).

    ``payer``: the group bills the patient's payer on an 837P (CPT + modifier 26).
    ``client``: the group invoices the client facility at a contract rate (not sent to a payer).
    ``global``: the facility bills the global service itself; our line has no modifier 26 and is
    never sent to a payer. ``none``: nothing is billed for the read.
    """

    PAYER = "payer"
    CLIENT = "client"
    GLOBAL = "global"
    NONE = "none"


class DiagnosisSource(StrEnum):
    """Where a professional line's ICD-10-CM codes came from (the report first, then the order)."""

    REPORT = "report"
    ORDER = "order"


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
