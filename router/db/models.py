"""SQLAlchemy 2 declarative models of the router's index, roster and ledgers.

Lengths follow DICOM PS3.5 section 6.2: UI (UID) at most 64 characters, AE at most 16, SH
(accession number) 16, LO 64, PN 64 characters per component group. Times are stored as UTC
(timezone-aware on the Python side); license and privilege validity are calendar dates.

The schema itself is created by the Alembic migrations in ``router/db/migrations``; a test
checks that models and migrations agree.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    Date,
    DateTime,
    Enum,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    Time,
    TypeDecorator,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from router.domain.enums import (
    AckCode,
    BillingArrangement,
    CostBasis,
    CptSource,
    DiagnosisSource,
    ExamStateSource,
    FacilityReaderRule,
    FederalFacility,
    HoldReason,
    InfrastructureKind,
    LicensePathway,
    LicenseStatus,
    OrderStatus,
    OutboxStatus,
    Priority,
    ProfessionalEntryKind,
    ReportOutcome,
    ReportSource,
    ReportStatus,
    StudyStatus,
)

UID_LENGTH = 64
AE_LENGTH = 16
STATE_LENGTH = 2
NPI_LENGTH = 10
NODE_ID_LENGTH = 64

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UtcDateTime(TypeDecorator[dt.datetime]):
    """A timestamp stored in UTC and always returned timezone-aware (UTC).

    SQLite keeps no zone, PostgreSQL ``timestamptz`` does; this type makes both behave alike.
    Naive values are refused rather than guessed.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given for a UTC column")
        return value.astimezone(dt.UTC)

    def process_result_value(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=dt.UTC)
        return value.astimezone(dt.UTC)


def _enum(enum_cls: type, name: str) -> Enum:
    """A portable enum column stored as its string value (VARCHAR + CHECK, no native type)."""
    return Enum(
        enum_cls,
        name=name,
        native_enum=False,
        create_constraint=True,
        length=48,
        values_callable=lambda members: [member.value for member in members],
        validate_strings=True,
    )


class Base(DeclarativeBase):
    """Declarative base with the constraint naming convention."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map: ClassVar[dict[Any, Any]] = {dt.datetime: UtcDateTime(), dict[str, Any]: JSON, list[Any]: JSON}


# --------------------------------------------------------------------------- roster


class Facility(Base):
    """A registered sender (modality or PACS), keyed by its calling AE title."""

    __tablename__ = "facilities"

    id: Mapped[int] = mapped_column(primary_key=True)
    ae_title: Mapped[str] = mapped_column(String(AE_LENGTH), unique=True)
    name: Mapped[str | None] = mapped_column(String(128))
    state: Mapped[str] = mapped_column(String(STATE_LENGTH))
    timezone: Mapped[str | None] = mapped_column(String(64))
    requires_privileges: Mapped[bool] = mapped_column(Boolean, default=False)
    federal: Mapped[FederalFacility | None] = mapped_column(_enum(FederalFacility, "federal_facility"))
    # Claims (router.domain.claims): who its reads are billed to, its outpatient setting (POS 22 or
    # 19; None: billing.outpatient_pos), its POS when the patient class does not decide it, and the
    # client contract rate in percent of the fee schedule (arrangement client).
    billing_arrangement: Mapped[BillingArrangement] = mapped_column(
        _enum(BillingArrangement, "billing_arrangement"),
        default=BillingArrangement.PAYER,
        server_default=BillingArrangement.PAYER.value,
    )
    outpatient_pos: Mapped[str | None] = mapped_column(String(2))
    default_pos: Mapped[str | None] = mapped_column(String(2))
    contract_rate_percent: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[dt.datetime]

    aliases: Mapped[list[FacilityAlias]] = relationship(
        back_populates="facility", cascade="all, delete-orphan", order_by="FacilityAlias.institution_name"
    )


class FacilityAlias(Base):
    """An InstitutionName (0008,0080) value that identifies a registered facility."""

    __tablename__ = "facility_aliases"

    id: Mapped[int] = mapped_column(primary_key=True)
    facility_id: Mapped[int] = mapped_column(ForeignKey("facilities.id", ondelete="CASCADE"))
    # stored upper-cased and whitespace-folded, so matching is exact
    institution_name: Mapped[str] = mapped_column(String(64), unique=True)

    facility: Mapped[Facility] = relationship(back_populates="aliases")


class Radiologist(Base):
    """A reader on the roster."""

    __tablename__ = "radiologists"

    id: Mapped[int] = mapped_column(primary_key=True)
    npi: Mapped[str] = mapped_column(String(NPI_LENGTH), unique=True)
    name: Mapped[str] = mapped_column(String(200))  # DICOM PN form, e.g. Doe^Jane
    email: Mapped[str | None] = mapped_column(String(254))
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    spl_state: Mapped[str | None] = mapped_column(String(STATE_LENGTH))  # designated SPL
    loq_issued: Mapped[dt.date | None] = mapped_column(Date)  # IMLC Letter of Qualification
    mqsa_qualified: Mapped[bool] = mapped_column(Boolean, default=False)
    subspecialties: Mapped[str | None] = mapped_column(String(128))  # comma-joined Subspecialty values
    reading_state: Mapped[str | None] = mapped_column(String(STATE_LENGTH))
    # where assigned studies are forwarded (C-STORE SCP of the reader's workstation or PACS)
    destination_ae_title: Mapped[str | None] = mapped_column(String(AE_LENGTH))
    destination_host: Mapped[str | None] = mapped_column(String(255))
    destination_port: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[dt.datetime]

    licenses: Mapped[list[License]] = relationship(
        back_populates="radiologist", cascade="all, delete-orphan", order_by="License.state"
    )
    privileges: Mapped[list[Privilege]] = relationship(back_populates="radiologist", cascade="all, delete-orphan")


class ReaderShift(Base):
    """A weekly shift of a reader in the reader's own IANA time zone (see router.domain.shifts)."""

    __tablename__ = "reader_shifts"

    id: Mapped[int] = mapped_column(primary_key=True)
    radiologist_id: Mapped[int] = mapped_column(ForeignKey("radiologists.id", ondelete="CASCADE"), index=True)
    weekdays: Mapped[str] = mapped_column(String(32))  # e.g. "mon,tue,wed,thu,fri"
    start_time: Mapped[dt.time] = mapped_column(Time)  # local wall clock
    end_time: Mapped[dt.time] = mapped_column(Time)  # <= start_time: ends the next day
    timezone: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[dt.datetime]


class FacilityReader(Base):
    """A facility's preference for, or exclusion of, one reader (one rule per pair)."""

    __tablename__ = "facility_readers"
    __table_args__ = (UniqueConstraint("facility_id", "radiologist_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    facility_id: Mapped[int] = mapped_column(ForeignKey("facilities.id", ondelete="CASCADE"))
    radiologist_id: Mapped[int] = mapped_column(ForeignKey("radiologists.id", ondelete="CASCADE"))
    rule: Mapped[FacilityReaderRule] = mapped_column(_enum(FacilityReaderRule, "facility_reader_rule"))
    created_at: Mapped[dt.datetime]


class License(Base):
    """A state license (or registration) held by a radiologist; one per jurisdiction."""

    __tablename__ = "licenses"
    __table_args__ = (
        UniqueConstraint("radiologist_id", "state"),
        Index("ix_licenses_state_radiologist", "state", "radiologist_id"),  # who holds a license in X
        CheckConstraint("issued IS NULL OR expires IS NULL OR issued <= expires", name="issued_before_expiry"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    radiologist_id: Mapped[int] = mapped_column(ForeignKey("radiologists.id", ondelete="CASCADE"))
    state: Mapped[str] = mapped_column(String(STATE_LENGTH))
    number: Mapped[str] = mapped_column(String(64))
    pathway: Mapped[LicensePathway] = mapped_column(_enum(LicensePathway, "license_pathway"))
    status: Mapped[LicenseStatus] = mapped_column(_enum(LicenseStatus, "license_status"))
    status_since: Mapped[dt.date | None] = mapped_column(Date)
    in_lieu_of_discipline: Mapped[bool] = mapped_column(Boolean, default=False)
    issued: Mapped[dt.date | None] = mapped_column(Date)
    expires: Mapped[dt.date] = mapped_column(Date)
    verified_on: Mapped[dt.date | None] = mapped_column(Date)
    # IMLC section 10 hold on this Compact license cleared by an admin: the board has acted on
    # disciplinary actions dated on or before this day.
    compact_hold_cleared_on: Mapped[dt.date | None] = mapped_column(Date)

    radiologist: Mapped[Radiologist] = relationship(back_populates="licenses")


class DisciplinaryAction(Base):
    """A board's suspension, revocation or acceptance of a surrender in lieu of discipline.

    Kept as history because the IMLC 90-day hold on the other Compact licenses runs from the
    action's date even if the license is later reinstated (Compact section 10).
    """

    __tablename__ = "disciplinary_actions"
    __table_args__ = (UniqueConstraint("license_id", "action", "action_date"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    radiologist_id: Mapped[int] = mapped_column(ForeignKey("radiologists.id", ondelete="CASCADE"), index=True)
    license_id: Mapped[int] = mapped_column(ForeignKey("licenses.id", ondelete="CASCADE"))
    state: Mapped[str] = mapped_column(String(STATE_LENGTH))
    action: Mapped[LicenseStatus] = mapped_column(_enum(LicenseStatus, "disciplinary_action_kind"))
    action_date: Mapped[dt.date] = mapped_column(Date)
    recorded_at: Mapped[dt.datetime]


class Privilege(Base):
    """Clinical privileges of a radiologist at a facility, granted directly or by proxy."""

    __tablename__ = "privileges"
    __table_args__ = (CheckConstraint("valid_from <= valid_until", name="from_before_until"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    radiologist_id: Mapped[int] = mapped_column(ForeignKey("radiologists.id", ondelete="CASCADE"), index=True)
    facility_id: Mapped[int] = mapped_column(ForeignKey("facilities.id", ondelete="CASCADE"), index=True)
    valid_from: Mapped[dt.date] = mapped_column(Date)
    valid_until: Mapped[dt.date] = mapped_column(Date)
    by_proxy: Mapped[bool] = mapped_column(Boolean, default=False)  # 42 CFR 482.22(a)(3)-(4)
    revoked_on: Mapped[dt.date | None] = mapped_column(Date)
    created_at: Mapped[dt.datetime]

    radiologist: Mapped[Radiologist] = relationship(back_populates="privileges")
    facility: Mapped[Facility] = relationship()


# --------------------------------------------------------------------------- index


class Study(Base):
    """A study as received, with the evidence used to locate it and its routing state.

    The location evidence (InstitutionAddress, the patient's residence tags) is PHI-bearing
    text kept in the database for routing and audit; it is never logged.
    """

    __tablename__ = "studies"
    # the routing timer's question: which studies are still receiving and quiet since <cutoff>
    __table_args__ = (Index("ix_studies_status_last_received_at", "status", "last_received_at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    study_instance_uid: Mapped[str] = mapped_column(String(UID_LENGTH), unique=True)
    status: Mapped[StudyStatus] = mapped_column(_enum(StudyStatus, "study_status"))
    hold_reason: Mapped[HoldReason | None] = mapped_column(_enum(HoldReason, "hold_reason"))
    hold_detail: Mapped[str | None] = mapped_column(Text)
    accession_number: Mapped[str | None] = mapped_column(String(64))
    study_date: Mapped[dt.date | None] = mapped_column(Date)
    study_description: Mapped[str | None] = mapped_column(String(128))
    modalities: Mapped[str | None] = mapped_column(String(64))  # backslash-joined, e.g. CT\SR; set when routed
    body_part: Mapped[str | None] = mapped_column(String(64))
    priority: Mapped[str | None] = mapped_column(String(16))  # RequestedProcedurePriority
    # [{value, scheme, meaning, source}]; SQL NULL when absent (so COALESCE fills it later)
    procedure_codes: Mapped[list[Any] | None] = mapped_column(JSON(none_as_null=True))
    institution_name: Mapped[str | None] = mapped_column(String(128))
    institution_address: Mapped[str | None] = mapped_column(Text)
    patient_address: Mapped[str | None] = mapped_column(Text)  # encrypted when encryption is on
    region_of_residence: Mapped[str | None] = mapped_column(Text)  # encrypted when encryption is on
    country_of_residence: Mapped[str | None] = mapped_column(Text)  # encrypted when encryption is on
    first_calling_ae_title: Mapped[str | None] = mapped_column(String(AE_LENGTH))
    facility_id: Mapped[int | None] = mapped_column(ForeignKey("facilities.id", ondelete="SET NULL"))
    exam_state: Mapped[str | None] = mapped_column(String(STATE_LENGTH))
    exam_state_source: Mapped[ExamStateSource | None] = mapped_column(_enum(ExamStateSource, "exam_state_source"))
    exam_state_detail: Mapped[str | None] = mapped_column(Text)  # how the source gave it (no PHI)
    location_conflicts: Mapped[list[Any] | None] = mapped_column(JSON)
    instance_count: Mapped[int] = mapped_column(Integer, default=0)
    size_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    first_received_at: Mapped[dt.datetime]
    last_received_at: Mapped[dt.datetime]
    routed_at: Mapped[dt.datetime | None]
    needs_review: Mapped[bool] = mapped_column(Boolean, default=False)  # flagged by a roster change

    facility: Mapped[Facility | None] = relationship()
    series: Mapped[list[Series]] = relationship(back_populates="study", order_by="Series.id")
    senders: Mapped[list[StudySender]] = relationship(back_populates="study", order_by="StudySender.id")


class Series(Base):
    """A series of a study."""

    __tablename__ = "series"

    id: Mapped[int] = mapped_column(primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id", ondelete="CASCADE"), index=True)
    series_instance_uid: Mapped[str] = mapped_column(String(UID_LENGTH), unique=True)
    modality: Mapped[str | None] = mapped_column(String(16))
    body_part: Mapped[str | None] = mapped_column(String(64))
    description: Mapped[str | None] = mapped_column(String(128))

    study: Mapped[Study] = relationship(back_populates="series")


class Instance(Base):
    """A stored SOP instance: one Part 10 file in the archive."""

    __tablename__ = "instances"

    id: Mapped[int] = mapped_column(primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id", ondelete="CASCADE"), index=True)
    series_id: Mapped[int] = mapped_column(ForeignKey("series.id", ondelete="CASCADE"), index=True)
    sop_instance_uid: Mapped[str] = mapped_column(String(UID_LENGTH), unique=True)
    sop_class_uid: Mapped[str] = mapped_column(String(UID_LENGTH))
    transfer_syntax_uid: Mapped[str] = mapped_column(String(UID_LENGTH))
    relative_path: Mapped[str] = mapped_column(String(255))  # under the archive root
    size_bytes: Mapped[int] = mapped_column(BigInteger)  # whole file, meta included
    dataset_sha256: Mapped[str] = mapped_column(String(64))  # of the data set bytes as received
    calling_ae_title: Mapped[str] = mapped_column(String(AE_LENGTH))
    received_at: Mapped[dt.datetime]  # storage accrues from this UTC day (router.services.accrual)
    # when routing took it into account (routed with its study, or joined as a late instance);
    # NULL: not yet, which is what the routing timer looks for (late instances)
    accounted_at: Mapped[dt.datetime | None] = mapped_column(index=True)
    # the one-time storage charge of this instance written before migration 0009 (the month it
    # covered is not accrued again); storage now accrues per study per month, unlinked
    infrastructure_entry_id: Mapped[int | None] = mapped_column(
        ForeignKey("infrastructure_ledger.id", ondelete="RESTRICT"), index=True
    )


class InstanceConflict(Base):
    """A second copy of a SOP Instance UID whose data set differs from the stored one.

    The first copy stays in place; this copy is kept under the archive's quarantine folder.
    """

    __tablename__ = "instance_conflicts"
    __table_args__ = (UniqueConstraint("sop_instance_uid", "dataset_sha256"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    study_id: Mapped[int | None] = mapped_column(ForeignKey("studies.id", ondelete="SET NULL"), index=True)
    sop_instance_uid: Mapped[str] = mapped_column(String(UID_LENGTH))
    relative_path: Mapped[str] = mapped_column(String(255))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    dataset_sha256: Mapped[str] = mapped_column(String(64))
    calling_ae_title: Mapped[str] = mapped_column(String(AE_LENGTH))
    peer_address: Mapped[str | None] = mapped_column(String(64))
    reason: Mapped[str] = mapped_column(Text)
    received_at: Mapped[dt.datetime]


class StudySender(Base):
    """A sender of (part of) a study: calling AE title and peer address."""

    __tablename__ = "study_senders"
    __table_args__ = (UniqueConstraint("study_id", "calling_ae_title", "peer_address"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id", ondelete="CASCADE"))
    calling_ae_title: Mapped[str] = mapped_column(String(AE_LENGTH))
    peer_address: Mapped[str] = mapped_column(String(64))
    first_received_at: Mapped[dt.datetime]
    last_received_at: Mapped[dt.datetime]
    instance_count: Mapped[int] = mapped_column(Integer, default=0)

    study: Mapped[Study] = relationship(back_populates="senders")


# --------------------------------------------------------------------------- routing


class RoutingDecision(Base):
    """One evaluation of a study: the outcome and every radiologist considered, with reasons.

    Append-only. Kept so an auditor sees later why a study went where it went, even after the
    roster changed.
    """

    __tablename__ = "routing_decisions"

    id: Mapped[int] = mapped_column(primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id", ondelete="CASCADE"), index=True)
    decided_at: Mapped[dt.datetime]
    read_date: Mapped[dt.date | None] = mapped_column(Date)  # the day eligibility was judged for
    trigger: Mapped[str] = mapped_column(String(64))  # e.g. stable, roster_change, manual_assign
    exam_state: Mapped[str | None] = mapped_column(String(STATE_LENGTH))
    exam_state_source: Mapped[ExamStateSource | None] = mapped_column(_enum(ExamStateSource, "decision_state_source"))
    outcome: Mapped[StudyStatus] = mapped_column(_enum(StudyStatus, "decision_outcome"))
    hold_reason: Mapped[HoldReason | None] = mapped_column(_enum(HoldReason, "decision_hold_reason"))
    chosen_npi: Mapped[str | None] = mapped_column(String(NPI_LENGTH))
    # [{npi, name, eligible, reasons: [...], license: {...} | None, open_assignments}]
    candidates: Mapped[list[Any]] = mapped_column(JSON)
    # radiologists holding no license in the exam state, NPIs only (reason: "no license in XX");
    # kept apart so a large roster does not bloat every decision
    unlicensed_npis: Mapped[list[Any] | None] = mapped_column(JSON)
    # readers ranked after the chosen one, in rank order, not evaluated (NPIs only, as above)
    not_evaluated_npis: Mapped[list[Any] | None] = mapped_column(JSON)
    # fastest path to eligibility when nobody was eligible: [{npi, name, path, detail}]
    fastest_paths: Mapped[list[Any] | None] = mapped_column(JSON)
    note: Mapped[str | None] = mapped_column(Text)


class Assignment(Base):
    """A study given to a radiologist. At most one current (not superseded) per study."""

    __tablename__ = "assignments"
    __table_args__ = (
        Index(
            "uq_assignments_current_study",
            "study_id",
            unique=True,
            sqlite_where=text("superseded_at IS NULL"),
            postgresql_where=text("superseded_at IS NULL"),
        ),
        # open workload per reader (assignment policy), and last assignment per reader (ties)
        Index(
            "ix_assignments_open_by_radiologist",
            "radiologist_id",
            sqlite_where=text("superseded_at IS NULL AND completed_at IS NULL"),
            postgresql_where=text("superseded_at IS NULL AND completed_at IS NULL"),
        ),
        Index("ix_assignments_radiologist_assigned_at", "radiologist_id", "assigned_at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id", ondelete="CASCADE"), index=True)
    radiologist_id: Mapped[int] = mapped_column(ForeignKey("radiologists.id", ondelete="RESTRICT"))
    decision_id: Mapped[int] = mapped_column(ForeignKey("routing_decisions.id", ondelete="RESTRICT"))
    license_id: Mapped[int | None] = mapped_column(ForeignKey("licenses.id", ondelete="SET NULL"))
    license_state: Mapped[str] = mapped_column(String(STATE_LENGTH))  # snapshot of what was relied on
    license_number: Mapped[str] = mapped_column(String(64))
    assigned_at: Mapped[dt.datetime]
    assigned_by: Mapped[str] = mapped_column(String(64))  # "router" or the OS user of a manual assignment
    work_rvu_centi: Mapped[int | None] = mapped_column(Integer)  # the read's work RVUs x 100 (workload)
    completed_at: Mapped[dt.datetime | None]
    superseded_at: Mapped[dt.datetime | None]
    superseded_reason: Mapped[str | None] = mapped_column(Text)

    radiologist: Mapped[Radiologist] = relationship()
    decision: Mapped[RoutingDecision] = relationship()


class OutboxJob(Base):
    """Forwarding of a study to one destination; retried with backoff, isolated per destination."""

    __tablename__ = "outbox"
    __table_args__ = (UniqueConstraint("study_id", "destination"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id", ondelete="CASCADE"), index=True)
    radiologist_id: Mapped[int] = mapped_column(ForeignKey("radiologists.id", ondelete="CASCADE"))
    destination: Mapped[str] = mapped_column(String(300))  # AE@host:port
    status: Mapped[OutboxStatus] = mapped_column(_enum(OutboxStatus, "outbox_status"), index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[dt.datetime]
    last_error: Mapped[str | None] = mapped_column(Text)
    sent_instance_count: Mapped[int] = mapped_column(Integer, default=0)  # accepted in this round
    #: Round of sending: ``router studies forward UID --all`` starts a new one, in which every
    #: instance of the study counts as unsent (a workstation that lost the study).
    send_round: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    updated_at: Mapped[dt.datetime]
    # The node working the job and until when its claim holds (renewed by its heartbeat); a
    # claim past ``claimed_until`` belongs to a dead or frozen node and may be taken over.
    claimed_by: Mapped[str | None] = mapped_column(String(NODE_ID_LENGTH))
    claimed_until: Mapped[dt.datetime | None]


class ForwardedInstance(Base):
    """An instance accepted by a destination in one round of its job (so a retry or a late
    instance sends only the rest); earlier rounds' rows stay as the record of what was sent."""

    __tablename__ = "forwarded_instances"
    __table_args__ = (UniqueConstraint("outbox_id", "instance_id", "send_round"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    outbox_id: Mapped[int] = mapped_column(ForeignKey("outbox.id", ondelete="CASCADE"))
    instance_id: Mapped[int] = mapped_column(ForeignKey("instances.id", ondelete="CASCADE"))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    sent_at: Mapped[dt.datetime]
    send_round: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    infrastructure_entry_id: Mapped[int | None] = mapped_column(
        ForeignKey("infrastructure_ledger.id", ondelete="RESTRICT")
    )


# --------------------------------------------------------------------------- ledgers


class InfrastructureEntry(Base):
    """Append-only infrastructure cost record (bytes stored or sent). Never on a claim.

    Money is exact (router.domain.infra_cost): the row's amount is ``quantity *
    rate_microcents / unit_quantity`` micro-cents (for ``basis`` ``recorded``, rows written
    before migration 0009, it is ``amount_microcents``); ``amount_microcents`` is that amount
    rounded half up to a micro-cent, for people and quick sums. Statements round per client
    per month, never per row. Storage accrues monthly: one ``per_gib_month`` row per study per
    month (a unique index makes a second one impossible). ``client_ae_title`` is the registered
    facility's AE title, else the calling AE title the study came from.
    """

    __tablename__ = "infrastructure_ledger"
    __table_args__ = (
        Index(
            "uq_infrastructure_ledger_storage_month",
            "study_id",
            "period_month",
            unique=True,
            sqlite_where=text("basis = 'per_gib_month'"),
            postgresql_where=text("basis = 'per_gib_month'"),
        ),
        Index("ix_infrastructure_ledger_period_month", "period_month", "client_ae_title"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id", ondelete="RESTRICT"), index=True)
    study_instance_uid: Mapped[str] = mapped_column(String(UID_LENGTH))
    kind: Mapped[InfrastructureKind] = mapped_column(_enum(InfrastructureKind, "infrastructure_kind"))
    basis: Mapped[CostBasis] = mapped_column(_enum(CostBasis, "infrastructure_basis"))
    recorded_at: Mapped[dt.datetime]
    period_month: Mapped[dt.date] = mapped_column(Date)  # first day of the UTC month the cost belongs to
    client_ae_title: Mapped[str] = mapped_column(String(AE_LENGTH))  # "" when the sender is unknown
    client_name: Mapped[str | None] = mapped_column(String(128))  # the facility's name, when registered
    instance_count: Mapped[int] = mapped_column(Integer)
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    quantity: Mapped[int] = mapped_column(BigInteger)  # bytes (per GiB) or byte-days (per GiB-month)
    unit_quantity: Mapped[int] = mapped_column(BigInteger)  # quantity in one unit the rate is per
    # per GiB or per GiB-month; SQLite's INTEGER is 64-bit already (the column predates 0009)
    rate_microcents: Mapped[int] = mapped_column(BigInteger().with_variant(Integer(), "sqlite"))
    amount_microcents: Mapped[int] = mapped_column(BigInteger)
    destination: Mapped[str | None] = mapped_column(String(300))
    note: Mapped[str | None] = mapped_column(Text)


class ProfessionalEntry(Base):
    """Append-only professional-component record: one CPT code of one completed read.

    A correction is a ``reversal`` record pointing at the charge it cancels, then a new charge.
    """

    __tablename__ = "professional_ledger"
    __table_args__ = (
        UniqueConstraint("reverses_id"),
        CheckConstraint("(kind = 'reversal') = (reverses_id IS NOT NULL)", name="reversal_points_at_charge"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[ProfessionalEntryKind] = mapped_column(_enum(ProfessionalEntryKind, "professional_entry_kind"))
    reverses_id: Mapped[int | None] = mapped_column(ForeignKey("professional_ledger.id", ondelete="RESTRICT"))
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id", ondelete="RESTRICT"), index=True)
    assignment_id: Mapped[int] = mapped_column(ForeignKey("assignments.id", ondelete="RESTRICT"), index=True)
    study_instance_uid: Mapped[str] = mapped_column(String(UID_LENGTH))
    accession_number: Mapped[str | None] = mapped_column(String(64))
    facility_ae_title: Mapped[str | None] = mapped_column(String(AE_LENGTH))
    facility_name: Mapped[str | None] = mapped_column(String(128))
    exam_state: Mapped[str] = mapped_column(String(STATE_LENGTH))
    rendering_npi: Mapped[str] = mapped_column(String(NPI_LENGTH))
    rendering_name: Mapped[str] = mapped_column(String(200))
    license_state: Mapped[str] = mapped_column(String(STATE_LENGTH))
    license_number: Mapped[str] = mapped_column(String(64))
    cpt_code: Mapped[str | None] = mapped_column(String(5))
    cpt_source: Mapped[CptSource] = mapped_column(_enum(CptSource, "cpt_source"))
    cpt_map_version: Mapped[str | None] = mapped_column(String(32))
    modifier: Mapped[str | None] = mapped_column(String(2))  # "26" for the professional component
    units: Mapped[int] = mapped_column(Integer, default=1)
    coder_review: Mapped[bool] = mapped_column(Boolean, default=False)
    review_reason: Mapped[str | None] = mapped_column(Text)
    date_of_service: Mapped[dt.date] = mapped_column(Date)  # interpretation date (CMS MLN SE17023)
    interpreted_at: Mapped[dt.datetime]
    recorded_at: Mapped[dt.datetime]
    # X12 837P CLM05-3 claim frequency type code: 1 original, 7 replacement, 8 void (ClaimFrequency)
    claim_frequency: Mapped[str] = mapped_column(String(1), default="1", server_default="1")
    # no ON DELETE action: SQLite adds the column in place (migration 0010); deletes are refused anyway
    replaces_id: Mapped[int | None] = mapped_column(ForeignKey("professional_ledger.id"))
    correction_reason: Mapped[str | None] = mapped_column(String(32))  # CorrectionReason value
    correction_note: Mapped[str | None] = mapped_column(Text)
    # 837P service line fields (router.services.claims; NULL on records written before 0008)
    billing_arrangement: Mapped[BillingArrangement | None] = mapped_column(
        _enum(BillingArrangement, "line_billing_arrangement")
    )
    modifiers: Mapped[list[Any] | None] = mapped_column(JSON)  # up to 4, 26 first (SV101-3..6)
    place_of_service: Mapped[str | None] = mapped_column(String(2))  # CMS POS code (SV105)
    diagnosis_codes: Mapped[list[Any] | None] = mapped_column(JSON)  # ICD-10-CM, up to 12 (HI, 2300)
    diagnosis_pointers: Mapped[list[Any] | None] = mapped_column(JSON)  # 1-based, up to 4 (SV107)
    diagnosis_source: Mapped[DiagnosisSource | None] = mapped_column(_enum(DiagnosisSource, "diagnosis_source"))
    referring_npi: Mapped[str | None] = mapped_column(String(NPI_LENGTH))  # order (NM1*DK, 2420F)
    referring_name: Mapped[str | None] = mapped_column(String(200))  # family^given, from the order
    billing_npi: Mapped[str | None] = mapped_column(String(NPI_LENGTH))  # billing.group_npi (2010AA)
    billing_tin: Mapped[str | None] = mapped_column(String(9))  # billing.tin (2010AA REF*EI)
    reading_state: Mapped[str | None] = mapped_column(String(STATE_LENGTH))  # where the reader read
    exam_date: Mapped[dt.date | None] = mapped_column(Date)  # StudyDate (0008,0020)
    charge_cents: Mapped[int | None] = mapped_column(Integer)  # SV102, whole cents
    fee_schedule_version: Mapped[str | None] = mapped_column(String(32))
    contract_rate_percent: Mapped[int | None] = mapped_column(Integer)  # client arrangement


# --------------------------------------------------------------------------- operations


class AuditEntry(Base):
    """Append-only audit of roster and admin changes."""

    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(primary_key=True)
    at: Mapped[dt.datetime] = mapped_column(index=True)
    os_user: Mapped[str] = mapped_column(String(128))  # the process's real account (getpwuid)
    acting_as: Mapped[str | None] = mapped_column(String(128))  # `router --as NAME`, a claim beside it
    action: Mapped[str] = mapped_column(String(64))  # e.g. license.set_status
    entity: Mapped[str] = mapped_column(String(32))  # radiologist, license, facility, privilege, study
    entity_key: Mapped[str] = mapped_column(String(128))  # e.g. "1234567893/TX"
    old_values: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    new_values: Mapped[dict[str, Any] | None] = mapped_column(JSON)


class NodeRun(Base):
    """A run of ``router serve`` on a node; a clean shutdown sets ``stopped_at``.

    Start-up reconciliation only looks at archive files newer than the last clean shutdown.
    """

    __tablename__ = "node_runs"

    id: Mapped[int] = mapped_column(primary_key=True)
    node: Mapped[str] = mapped_column(String(255))  # the node id ([node] id)
    pid: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[dt.datetime]
    stopped_at: Mapped[dt.datetime | None]


class Node(Base):
    """A ``router serve`` node of the cluster and its heartbeat (migration 0011).

    A node whose ``heartbeat_at`` is older than its lease is dead or frozen: its claims
    (outbox jobs, cluster leases) may be taken over by the others.
    """

    __tablename__ = "nodes"

    node_id: Mapped[str] = mapped_column(String(NODE_ID_LENGTH), primary_key=True)
    hostname: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[dt.datetime]
    heartbeat_at: Mapped[dt.datetime]
    stopped_at: Mapped[dt.datetime | None]


class ClusterLease(Base):
    """Work done once per interval for the whole cluster (e.g. the periodic recheck).

    ``holder`` may run it until ``expires_at``; ``last_run_at`` is when it last finished.
    """

    __tablename__ = "cluster_leases"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    holder: Mapped[str | None] = mapped_column(String(NODE_ID_LENGTH))
    expires_at: Mapped[dt.datetime | None]
    last_run_at: Mapped[dt.datetime | None]


class RosterVersion(Base):
    """One row counting roster changes: a change holds it ``FOR UPDATE``, routing ``FOR SHARE``.

    So no assignment commits on a roster state a concurrent change already superseded.
    """

    __tablename__ = "roster_version"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    version: Mapped[int] = mapped_column(BigInteger)


APPEND_ONLY_TABLES = (
    "infrastructure_ledger",
    "professional_ledger",
    "audit_log",
    "routing_decisions",
)  # see migration 0002


# --------------------------------------------------------------------------- orders and reports


class Hl7Message(Base):
    """Every HL7 v2 message received over MLLP, as received, with the answer given.

    ``accepted_key`` (``MSH-3|MSH-4|MSH-10``) is set only on accepted (AA) messages and is
    unique: a duplicate of an accepted message gets the stored ACK again and has no effect,
    while a message once answered AE/AR may be sent again and is processed again.
    """

    __tablename__ = "hl7_messages"

    id: Mapped[int] = mapped_column(primary_key=True)
    control_id: Mapped[str | None] = mapped_column(String(199))  # MSH-10
    message_type: Mapped[str | None] = mapped_column(String(16))  # MSH-9, e.g. ORM^O01
    sending_application: Mapped[str | None] = mapped_column(String(180))  # MSH-3.1
    sending_facility: Mapped[str | None] = mapped_column(String(180))  # MSH-4.1
    version: Mapped[str | None] = mapped_column(String(16))  # MSH-12
    peer_address: Mapped[str | None] = mapped_column(String(64))
    received_at: Mapped[dt.datetime]
    size_bytes: Mapped[int] = mapped_column(Integer)
    raw: Mapped[bytes] = mapped_column(LargeBinary)
    ack_code: Mapped[AckCode] = mapped_column(_enum(AckCode, "ack_code"))
    outcome: Mapped[str | None] = mapped_column(Text)  # what it did, or why it was refused (no PHI)
    ack: Mapped[bytes | None] = mapped_column(LargeBinary)
    accepted_key: Mapped[str | None] = mapped_column(String(600), unique=True)


class Order(Base):
    """The current state of an order (ORM^O01 / OMI^O23), one row per accession number."""

    __tablename__ = "orders"

    id: Mapped[int] = mapped_column(primary_key=True)
    accession_number: Mapped[str] = mapped_column(String(64), unique=True)
    placer_order_number: Mapped[str | None] = mapped_column(String(64))
    status: Mapped[OrderStatus] = mapped_column(_enum(OrderStatus, "order_status"))
    order_control: Mapped[str] = mapped_column(String(8))  # ORC-1 of the last message
    procedures: Mapped[list[Any]] = mapped_column(JSON)  # [{code, text, system}] as ordered
    diagnoses: Mapped[list[Any]] = mapped_column(JSON)  # [{code, text, system}]
    priority: Mapped[Priority | None] = mapped_column(_enum(Priority, "order_priority"))
    priority_code: Mapped[str | None] = mapped_column(String(8))  # as sent
    referring_npi: Mapped[str | None] = mapped_column(String(NPI_LENGTH))  # only a valid NPI
    referring_id: Mapped[str | None] = mapped_column(String(64))  # OBR-16.1 / ORC-12.1 as sent
    referring_name: Mapped[str | None] = mapped_column(String(200))  # family^given of the same XCN
    ordering_facility: Mapped[str | None] = mapped_column(String(128))
    patient_class: Mapped[str | None] = mapped_column(String(8))  # PV1-2
    patient_location: Mapped[str | None] = mapped_column(String(128))  # PV1-3
    study_id: Mapped[int | None] = mapped_column(ForeignKey("studies.id", ondelete="SET NULL"), index=True)
    hl7_message_id: Mapped[int] = mapped_column(ForeignKey("hl7_messages.id", ondelete="RESTRICT"))
    received_at: Mapped[dt.datetime]
    updated_at: Mapped[dt.datetime]
    cancelled_at: Mapped[dt.datetime | None]


class Report(Base):
    """A received report (ORU^R01 or SR) and what it did; the reason when it was not billed."""

    __tablename__ = "reports"

    id: Mapped[int] = mapped_column(primary_key=True)
    source: Mapped[ReportSource] = mapped_column(_enum(ReportSource, "report_source"))
    accession_number: Mapped[str | None] = mapped_column(String(64))
    study_id: Mapped[int | None] = mapped_column(ForeignKey("studies.id", ondelete="SET NULL"), index=True)
    status: Mapped[ReportStatus] = mapped_column(_enum(ReportStatus, "report_status"))
    outcome: Mapped[ReportOutcome] = mapped_column(_enum(ReportOutcome, "report_outcome"))
    reason: Mapped[str | None] = mapped_column(Text)
    signer_npi: Mapped[str | None] = mapped_column(String(NPI_LENGTH))
    signer_name: Mapped[str | None] = mapped_column(String(200))
    signed_at: Mapped[dt.datetime | None]
    hl7_message_id: Mapped[int | None] = mapped_column(ForeignKey("hl7_messages.id", ondelete="RESTRICT"))
    sop_instance_uid: Mapped[str | None] = mapped_column(String(UID_LENGTH))
    # SR: where the document is kept, relative to the archive root (``.sr``: not an image file,
    # so start-up recovery never adopts it as an instance)
    archive_path: Mapped[str | None] = mapped_column(String(400))
    professional_entry_ids: Mapped[list[Any] | None] = mapped_column(JSON)
    received_at: Mapped[dt.datetime]
