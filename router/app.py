"""Composition root: builds the engine, archive, reference data and services from settings.

Nothing here is global: the CLI (or a test) opens a :class:`RouterApp`, uses it and closes it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from router.archive_backend import ArchiveBackend, open_archive, open_keyring
from router.config import Settings
from router.db import migrate
from router.db.engine import ServerOptions, check_connection, make_engine, make_session_factory
from router.dicom.sr import read_sr_facts
from router.domain.claims import validate_tin
from router.domain.enums import Priority
from router.domain.infra_cost import rate_microcents
from router.errors import RouterError
from router.keyring import KeyRing
from router.services.accrual import AccrualPolicy, AccrualService
from router.services.claims import ClaimDefaults
from router.services.cluster import keep_node_id, new_node_id, resolve_node_id
from router.services.corrections import CorrectionService
from router.services.intake import IntakeService
from router.services.ledgers import LedgerService
from router.services.reads import ReadService
from router.services.reference import ReferenceData
from router.services.reports import ReportService
from router.services.roster import RosterService
from router.services.routing import RoutingPolicy, RoutingService
from router.services.sr_reports import SrReportIntake
from router.timeutil import Clock, utcnow


class DatabaseNotReady(RouterError):
    """The database schema is missing or older than the code (run ``router db upgrade``)."""


def routing_policy(settings: Settings, keyring: KeyRing | None = None) -> RoutingPolicy:
    """The routing policy the settings describe."""
    return RoutingPolicy(
        stable_seconds=settings.routing.stable_seconds,
        timezone=settings.routing.timezone,
        use_patient_address=settings.routing.use_patient_address,
        stat_stable_seconds=settings.routing.stat_stable_seconds,
        require_shift=settings.routing.require_shift,
        max_open_reads=settings.routing.max_open_reads,
        default_work_rvu_centi=round(settings.routing.default_work_rvu * 100),
        turnaround_seconds=(
            (Priority.STAT, settings.routing.tat_stat_minutes * 60.0),
            (Priority.ASAP, settings.routing.tat_asap_minutes * 60.0),
            (Priority.ROUTINE, settings.routing.tat_routine_minutes * 60.0),
        ),
        require_reading_state_license=settings.routing.require_reading_state_license,
        telehealth_registration_states=frozenset(s.upper() for s in settings.licensure.telehealth_registration_states),
        suspension_hold_days=settings.imlc.suspension_hold_days,
        forwarding_enabled=settings.forwarding.enabled,
        keyring=keyring,
    )


def claim_defaults(settings: Settings) -> ClaimDefaults:
    """``[billing]`` values of every claim line (validated when the config was loaded)."""
    billing = settings.billing
    return ClaimDefaults(
        group_npi=billing.group_npi or None,
        tin=validate_tin(billing.tin) if billing.tin else None,
        outpatient_pos=billing.outpatient_pos,
        default_pos=billing.default_pos or None,
    )


def accrual_policy(settings: Settings) -> AccrualPolicy:
    """The storage accrual's ``[billing]`` settings (the rate validated when loaded)."""
    return AccrualPolicy(
        storage_microcents_per_gib_month=rate_microcents(settings.billing.storage_cents_per_gib_month),
        retention_days=settings.billing.storage_retention_days,
    )


def server_options(settings: Settings, node_id: str | None) -> ServerOptions:
    """PostgreSQL session settings and pool size from ``[database]``; the application name
    carries the node id (``router:<node id>``, or ``router:cli`` for other commands)."""
    database = settings.database
    return ServerOptions(
        statement_timeout=database.statement_timeout,
        idle_in_transaction_timeout=database.idle_in_transaction_timeout,
        application_name=f"{database.application_name}:{node_id or 'cli'}",
        pool_size=database.pool_size,
        max_overflow=database.max_overflow,
    )


@dataclass
class RouterApp:
    """Everything a command needs, wired together."""

    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    archive: ArchiveBackend
    reference: ReferenceData
    intake: IntakeService
    routing: RoutingService
    reads: ReadService
    ledgers: LedgerService
    corrections: CorrectionService
    accrual: AccrualService
    roster: RosterService
    clock: Clock = field(default=utcnow)
    node_id: str | None = None  # None: a command that is not a node (no id kept yet)
    keyring: KeyRing | None = None  # encryption at rest; None when off

    @classmethod
    def open(cls, settings: Settings, *, clock: Clock = utcnow, upgrade: bool = False) -> RouterApp:
        """Connect to the database and build the services.

        Parameters
        ----------
        upgrade : bool
            Run the migrations first (``serve`` and ``demo`` do; other commands require an
            up-to-date schema and say how to get one).

        Raises
        ------
        DatabaseUnavailable
            If the database cannot be reached (or, without ``upgrade``, its SQLite file does not
            exist).
        DatabaseNotReady
            If the schema is not at the newest revision and ``upgrade`` is false.
        """
        node_id = resolve_node_id(settings, create=False)
        # serve/demo are nodes: a new id is generated now and kept once the database is usable
        fresh = new_node_id() if node_id is None and upgrade else None
        keyring = open_keyring(settings)
        engine = make_engine(
            settings.database_url,
            busy_timeout=settings.database.busy_timeout,
            create=upgrade,
            server=server_options(settings, node_id or fresh),
        )
        try:
            check_connection(engine)
            if upgrade:
                migrate.upgrade(engine)
            elif not migrate.is_current(engine):
                raise DatabaseNotReady("the database schema is not up to date: run `router db upgrade`")
            if fresh is not None:
                node_id = keep_node_id(settings, fresh)
        except Exception:
            engine.dispose()
            raise
        sessions = make_session_factory(engine)
        archive = open_archive(settings, keyring, node_id=node_id)
        reference = ReferenceData(
            settings.imlc.membership_file,
            settings.billing.cpt_map,
            settings.routing.subspecialty_rules,
            settings.routing.work_rvu_file,
            settings.billing.fee_schedule,
        )
        routing = RoutingService(sessions, reference, routing_policy(settings, keyring), clock)
        reads = ReadService(sessions, reference, routing, clock, claim_defaults(settings))
        # Recovery re-indexes a local archive's files whose rows a power loss took back
        # (database.sqlite_intake_synchronous); it does not list an S3 bucket, so there intake
        # commits stay fsynced.
        intake = IntakeService(
            sessions,
            archive,
            clock,
            keyring,
            sqlite_synchronous_level=settings.database.sqlite_intake_synchronous if archive.scans_for_orphans else None,
        )
        intake.report_hook = SrReportIntake(sessions, archive, ReportService(reads, routing), read_sr_facts, clock)
        return cls(
            settings=settings,
            engine=engine,
            sessions=sessions,
            archive=archive,
            reference=reference,
            intake=intake,
            routing=routing,
            reads=reads,
            ledgers=LedgerService(sessions),
            corrections=CorrectionService(sessions, reference, routing, clock),
            accrual=AccrualService(sessions, accrual_policy(settings), clock),
            roster=RosterService(sessions, routing, clock),
            clock=clock,
            node_id=node_id,
            keyring=keyring,
        )

    def close(self) -> None:
        """Release database connections."""
        self.intake.commits.close()
        self.engine.dispose()

    def __enter__(self) -> RouterApp:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
