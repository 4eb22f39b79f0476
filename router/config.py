"""Router configuration: TOML file, defaults merged, limits checked when loaded.

The file is chosen by ``router --config PATH`` or the ``ROUTER_CONFIG`` environment variable;
without one the defaults serve. Every key is documented in ``config/router.example.toml``.
An unknown key, a wrong type or a value out of range raises :class:`~router.errors.ConfigError`
naming the dotted key, so the CLI can exit 2 with one line.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import os
import re
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from router.domain.claims import validate_outpatient_pos, validate_pos, validate_tin
from router.domain.enums import ArchiveBackendKind
from router.domain.infra_cost import rate_microcents
from router.domain.jurisdictions import normalize_jurisdiction
from router.domain.npi import validate_npi
from router.errors import ConfigError, ValidationError
from router.resources import PACKAGED_CONFIG_DIR

#: DICOM PS3.8 section 9.3.2 / PS3.5 section 6.2: an AE title is at most 16 characters of the
#: default character repertoire, without backslash or control characters.
AE_TITLE_MAX_LENGTH = 16

#: A node id ([node] id): it names the node's incoming folder, so no path separators.
NODE_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")

#: ``[logging] format`` values.
LOG_FORMATS = ("text", "json")
#: Values of ``database.sqlite_intake_synchronous`` (SQLite's PRAGMA synchronous, in lower case).
SQLITE_INTAKE_SYNCHRONOUS = ("normal", "full")

#: The ``config/`` folder shipped in the package (:mod:`router.resources`): dated data files (IMLC
#: membership, CPT map), the example config and the demo roster. A path in a config file
#: overrides each data file; relative paths there resolve against that file's directory.
CONFIG_DIR = PACKAGED_CONFIG_DIR


def validate_ae_title(value: object, key: str) -> str:
    """Return ``value`` as a stripped AE title.

    Raises
    ------
    ConfigError
        If it is empty, longer than 16 characters, or holds a backslash or control character
        (DICOM PS3.5 section 6.2, VR AE).
    """
    if not isinstance(value, str):
        raise ConfigError(key, "must be a string")
    title = value.strip()
    if not title:
        raise ConfigError(key, "must not be empty")
    if len(title) > AE_TITLE_MAX_LENGTH:
        raise ConfigError(key, f"AE title {title!r} is longer than {AE_TITLE_MAX_LENGTH} characters")
    if "\\" in title or any(ord(ch) < 0x20 or ord(ch) > 0x7E for ch in title):
        raise ConfigError(key, f"AE title {title!r} holds a backslash or a non-printable character")
    return title


@dataclass(frozen=True)
class TlsSettings:
    """DICOM TLS listener (PS3.15 Annex B.1), on its own port."""

    enabled: bool = False
    host: str | None = None  # None: same as listener.host
    port: int = 2762  # IANA "dicom-tls"
    cert_file: Path | None = None
    key_file: Path | None = None
    ca_file: Path | None = None
    require_client_cert: bool = False
    # "AE=NAME": calling AE title AE is accepted on the TLS port only with a client certificate
    # whose subject CN or a DNS/IP subject alternative name is NAME
    ae_title_subjects: tuple[str, ...] = ()

    def subject_bindings(self) -> dict[str, str]:
        """``ae_title_subjects`` as {calling AE title: expected certificate name}."""
        return {entry.partition("=")[0].strip(): entry.partition("=")[2].strip() for entry in self.ae_title_subjects}


@dataclass(frozen=True)
class ForwardingTlsSettings:
    """DICOM TLS towards destinations written ``tls://AE@host:port`` (PS3.15 Annex B.1)."""

    ca_file: Path | None = None  # None: the system's trusted CAs
    cert_file: Path | None = None  # client certificate, for destinations that require one
    key_file: Path | None = None
    check_hostname: bool = True  # the destination's certificate must name its host
    destinations: tuple[str, ...] = ()  # "host:port" always reached over TLS (also: tls://AE@host:port)


def cores_available() -> int:
    """The CPU cores this process may run on (its affinity mask; the machine's count where the
    platform has no affinity), capped at 8: the default number of receiving processes."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(cores, 8))


@dataclass(frozen=True)
class ListenerSettings:
    """The C-STORE SCP."""

    ae_title: str = "ROUTER"
    host: str = "0.0.0.0"
    port: int = 11112
    enabled: bool = True  # plain (non-TLS) port; turn off to serve TLS only
    max_associations: int = 16  # per process
    # receiving processes sharing the port(s) (one accept queue, the least busy accepts): by
    # default one per available core (at most 8); each is a Python process of about 90 MiB
    workers: int = field(default_factory=cores_available)
    acse_timeout: float = 30.0  # seconds
    dimse_timeout: float = 60.0  # seconds
    network_timeout: float = 120.0  # seconds
    max_pdu_length: int = 262_144  # bytes offered to senders; 0 means unlimited
    tcp_nodelay: bool = True
    allowed_calling_ae_titles: tuple[str, ...] = ()  # empty: every sender is accepted
    require_called_ae_title: bool = False  # refuse associations calling another AE title
    allowed_addresses: tuple[str, ...] = ()  # IPs or CIDR networks; empty: any address
    drain_timeout: float = 30.0  # seconds to finish in-flight associations on SIGTERM
    max_inflated_bytes: int = 1 << 30  # largest inflated deflated data set; more is answered 0xA700
    max_association_request_bytes: int = 1 << 20  # largest A-ASSOCIATE-RQ PDU accepted
    association_request_timeout: float = 10.0  # seconds from connect to a complete A-ASSOCIATE-RQ
    max_connections: int = 64  # TCP connections at once, at any stage, per process
    max_connections_per_address: int = 8  # of those, from one peer IP address
    idle_eviction_seconds: float = 5.0  # when all associations are taken, abort one idle this long; 0: never
    tls: TlsSettings = field(default_factory=TlsSettings)


@dataclass(frozen=True)
class PathSettings:
    """Where the router keeps its files."""

    data_dir: Path = Path("./var")
    archive_dir: Path | None = None  # None: <data_dir>/archive

    @property
    def archive(self) -> Path:
        """Archive root: ``archive_dir`` or ``<data_dir>/archive``."""
        return self.archive_dir if self.archive_dir is not None else self.data_dir / "archive"


@dataclass(frozen=True)
class ArchiveSettings:
    """Archive backend (``[archive]``): the folder under ``paths.archive_dir``, or S3-compatible storage.

    With ``s3`` the local archive folder keeps only this node's ``.incoming`` temporary files;
    credentials not given here come from the standard AWS chain (``AWS_ACCESS_KEY_ID``,
    ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``, profiles, instance roles).
    """

    backend: str = "folder"  # ArchiveBackendKind
    endpoint_url: str | None = None  # None: AWS itself; e.g. "http://minio.internal:9000"
    bucket: str | None = None  # required with backend = "s3"
    prefix: str = ""  # key prefix inside the bucket, e.g. "router/"
    region: str | None = None
    access_key_id: str | None = None
    secret_access_key: str | None = None
    connect_timeout: float = 5.0  # seconds
    read_timeout: float = 60.0  # seconds


@dataclass(frozen=True)
class EncryptionSettings:
    """Encryption at rest (``[encryption]``): archive files and the patient's location text in
    the database, AES-256-GCM under key-encryption keys listed by id (see router/keyring.py)."""

    enabled: bool = False
    keys: tuple[str, ...] = ()  # key ids loaded at start, e.g. ("2026-01", "2026-07")
    active_key: str | None = None  # id new data keys are wrapped with; must be in keys
    key_dir: Path | None = None  # None: <data_dir>/keys; files <id>.key (or ROUTER_KEK_<ID>)


@dataclass(frozen=True)
class DatabaseSettings:
    """The index database."""

    url: str | None = None  # None: sqlite:///<data_dir>/router.db
    busy_timeout: float = 10.0  # seconds to wait for a lock before answering 0xA701
    # PostgreSQL only (docs/scale-out.md); 0 turns a timeout off.
    statement_timeout: float = 30.0  # seconds any one statement may run before 0xA701
    idle_in_transaction_timeout: float = 30.0  # seconds a stalled node may sit inside a transaction
    pool_size: int = 5  # connections kept open per process
    max_overflow: int = 10  # extra connections opened under load
    application_name: str = "router"  # shown in pg_stat_activity as "<name>:<node id>"
    # SQLite only: PRAGMA synchronous of the receiving processes' index transactions. "normal":
    # a commit is not fsynced (the archive file and its folder are; start-up recovery re-indexes
    # a file whose row a power loss took back); "full": SQLite's WAL is fsynced at every commit.
    sqlite_intake_synchronous: str = "normal"


@dataclass(frozen=True)
class RoutingSettings:
    """When and how studies are routed."""

    stable_seconds: float = 30.0  # quiet time after the last instance before routing
    poll_interval: float = 1.0  # seconds between checks of the routing timer
    recheck_interval: float = 300.0  # seconds between re-checks of open assignments and held studies
    timezone: str = "UTC"  # IANA name; "today" where no facility time zone is known
    # fall back to the patient's residence tags: provisional (off by default; issue 13 review)
    use_patient_address: bool = False
    stat_stable_seconds: float = 5.0  # quiet time for a STAT study (skips most of stable_seconds)
    require_shift: bool = False  # a reader with no shifts defined is off duty (else always on duty)
    subspecialty_rules: Path = CONFIG_DIR / "subspecialty_rules.csv"  # study -> required/preferred subspecialty
    work_rvu_file: Path = CONFIG_DIR / "work_rvu_2026.csv"  # work RVU per CPT: workload of open reads
    default_work_rvu: float = 1.0  # a read whose CPT has no work RVU (or no CPT) counts this
    max_open_reads: int = 0  # per-reader cap on open (assigned, unreported) reads; 0: no cap
    tat_stat_minutes: float = 60.0  # turnaround targets from first receipt; breached reads are escalated
    tat_asap_minutes: float = 240.0
    tat_routine_minutes: float = 1440.0
    require_reading_state_license: bool = False  # reader also licensed where they read from


@dataclass(frozen=True)
class BillingSettings:
    """Infrastructure cost rates, the CPT map and fee schedule, and the billing group's identifiers.

    Rates are cents with up to six decimals (2.3 is $0.023), kept exactly (router.domain.infra_cost);
    amounts are rounded only on a statement, per client per month.
    """

    storage_cents_per_gib_month: float = 2.3  # cents per GiB held for a month, prorated by day
    transmission_cents_per_gib: float = 5.0  # cents per GiB forwarded
    storage_retention_days: int = 0  # storage accrues this many days from receipt; 0: until deleted
    # The map for the date-of-service year is cpt_map_<year>.csv in this file's folder.
    cpt_map: Path = CONFIG_DIR / "cpt_map_2026.csv"
    # Charges per CPT (+26); the one for the date-of-service year is fee_schedule_<year>.csv beside it.
    fee_schedule: Path = CONFIG_DIR / "fee_schedule_2026.csv"
    group_npi: str = ""  # billing provider NPI (837P loop 2010AA NM109); "" = not set
    tin: str = ""  # billing provider TIN/EIN (loop 2010AA REF*EI), nine digits
    outpatient_pos: str = "22"  # POS of PV1-2 O exams unless the facility sets its own: 22 or 19
    default_pos: str = ""  # POS when the patient class does not decide it; "" = coder review


@dataclass(frozen=True)
class ImlcSettings:
    """Interstate Medical Licensure Compact data and rules."""

    membership_file: Path = CONFIG_DIR / "imlc_membership.csv"
    max_age_days: int = 180  # `router imlc check` warns when as_of is older
    suspension_hold_days: int = 90  # Compact section 10


@dataclass(frozen=True)
class LicensureSettings:
    """State rules that are data, not code."""

    # Jurisdictions whose telehealth registration covers store-and-forward reads.
    telehealth_registration_states: tuple[str, ...] = ()


@dataclass(frozen=True)
class ForwardingSettings:
    """C-STORE SCU that sends assigned studies to the reader's destination."""

    enabled: bool = True
    calling_ae_title: str | None = None  # None: listener.ae_title
    max_attempts: int = 8
    initial_backoff: float = 5.0  # seconds; doubles per attempt
    max_backoff: float = 600.0  # seconds
    tls: ForwardingTlsSettings = field(default_factory=ForwardingTlsSettings)


@dataclass(frozen=True)
class Hl7Settings:
    """HL7 v2 MLLP listener for orders and signed reports (HL7 v2.5.1 Appendix C)."""

    enabled: bool = False
    host: str = "0.0.0.0"
    port: int = 2575  # IANA "hl7"
    max_message_bytes: int = 1_048_576  # a larger frame is answered AR and the connection closed
    timeout: float = 60.0  # seconds of silence before a connection is closed
    max_connections: int = 32  # open MLLP connections in all; more are closed at once
    max_connections_per_address: int = 8  # open MLLP connections from one peer address
    application: str = "ROUTER"  # MSH-3 of the ACKs we send
    tls: bool = False
    cert_file: Path | None = None
    key_file: Path | None = None
    ca_file: Path | None = None  # set: clients must present a certificate it signed


@dataclass(frozen=True)
class NodeSettings:
    """This node of a cluster sharing one database and archive (docs/scale-out.md)."""

    id: str | None = None  # None: a generated id kept in <data_dir>/node_id
    heartbeat_interval: float = 5.0  # seconds between heartbeats in the nodes table
    lease_seconds: float = 30.0  # a node silent this long is dead: its claims are taken over


@dataclass(frozen=True)
class LoggingSettings:
    """Logging (the CLI configures handlers)."""

    level: str = "INFO"
    format: str = "text"  # "text": one line per record; "json": one JSON object per line


@dataclass(frozen=True)
class HttpSettings:
    """The operations endpoint of ``router serve``: ``/healthz`` and ``/metrics`` (no authentication)."""

    enabled: bool = False
    host: str = "127.0.0.1"  # a management address; 0.0.0.0 exposes it to the network
    port: int = 9464  # 0 picks a free port


@dataclass(frozen=True)
class Settings:
    """All router settings. Build with :func:`load_settings`."""

    listener: ListenerSettings = field(default_factory=ListenerSettings)
    paths: PathSettings = field(default_factory=PathSettings)
    archive: ArchiveSettings = field(default_factory=ArchiveSettings)
    encryption: EncryptionSettings = field(default_factory=EncryptionSettings)
    database: DatabaseSettings = field(default_factory=DatabaseSettings)
    routing: RoutingSettings = field(default_factory=RoutingSettings)
    billing: BillingSettings = field(default_factory=BillingSettings)
    imlc: ImlcSettings = field(default_factory=ImlcSettings)
    licensure: LicensureSettings = field(default_factory=LicensureSettings)
    forwarding: ForwardingSettings = field(default_factory=ForwardingSettings)
    node: NodeSettings = field(default_factory=NodeSettings)
    logging: LoggingSettings = field(default_factory=LoggingSettings)
    http: HttpSettings = field(default_factory=HttpSettings)
    hl7: Hl7Settings = field(default_factory=Hl7Settings)

    @property
    def database_url(self) -> str:
        """SQLAlchemy URL: ``database.url`` or SQLite at ``<data_dir>/router.db``."""
        if self.database.url:
            return self.database.url
        return f"sqlite:///{(self.paths.data_dir / 'router.db').resolve()}"

    @property
    def key_dir(self) -> Path:
        """Folder of key-encryption key files: ``encryption.key_dir`` or ``<data_dir>/keys``."""
        key_dir = self.encryption.key_dir
        return key_dir if key_dir is not None else self.paths.data_dir / "keys"

    def with_data_dir(self, data_dir: Path) -> Settings:
        """A copy whose data directory (and so default database and archive) is ``data_dir``."""
        return dataclasses.replace(self, paths=dataclasses.replace(self.paths, data_dir=data_dir))

    def replace(self, section: str, **changes: Any) -> Settings:
        """A copy with ``changes`` applied to one section, e.g. ``replace("listener", port=0)``."""
        return dataclasses.replace(self, **{section: dataclasses.replace(getattr(self, section), **changes)})


def load_settings(path: Path | None) -> Settings:
    """Read and validate a TOML config file; ``None`` gives the defaults.

    Relative paths in the file are resolved against the file's directory.

    Raises
    ------
    ConfigError
        If the file cannot be read or parsed, or a key is unknown, mistyped or out of range.
    """
    if path is None:
        return _validate(Settings())
    try:
        raw = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ConfigError("config", f"file not found: {path}") from exc
    except OSError as exc:
        raise ConfigError("config", f"cannot read {path}: {exc.strerror}") from exc
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError("config", f"{path} is not valid TOML: {exc}") from exc
    return settings_from_mapping(raw, base_dir=Path(path).resolve().parent)


def settings_from_mapping(raw: dict[str, Any], base_dir: Path = Path(".")) -> Settings:
    """Build validated :class:`Settings` from a parsed TOML mapping.

    Raises
    ------
    ConfigError
        On an unknown key, a wrong type or a value out of range.
    """
    sections: dict[str, Any] = {}
    for name, value in raw.items():
        if name not in _SECTION_TYPES or "." in name:
            raise ConfigError(name, "unknown section")
        if not isinstance(value, dict):
            raise ConfigError(name, "must be a table")
        sections[name] = _build(value, name, base_dir)
    return _validate(Settings(**sections))


_SECTION_TYPES: dict[str, type] = {
    "listener": ListenerSettings,
    "listener.tls": TlsSettings,
    "paths": PathSettings,
    "archive": ArchiveSettings,
    "encryption": EncryptionSettings,
    "database": DatabaseSettings,
    "routing": RoutingSettings,
    "billing": BillingSettings,
    "imlc": ImlcSettings,
    "licensure": LicensureSettings,
    "forwarding": ForwardingSettings,
    "node": NodeSettings,
    "forwarding.tls": ForwardingTlsSettings,
    "logging": LoggingSettings,
    "http": HttpSettings,
    "hl7": Hl7Settings,
}


def _build(values: dict[str, Any], prefix: str, base_dir: Path) -> Any:
    cls = _SECTION_TYPES[prefix]
    known = {f.name: f for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        dotted = f"{prefix}.{key}"
        if dotted in _RENAMED:
            raise ConfigError(dotted, _RENAMED[dotted])
        if key not in known:
            raise ConfigError(dotted, "unknown key")
        if f"{prefix}.{key}" in _SECTION_TYPES:
            if not isinstance(value, dict):
                raise ConfigError(dotted, "must be a table")
            kwargs[key] = _build(value, dotted, base_dir)
            continue
        spec = known[key]
        default = spec.default_factory() if spec.default_factory is not dataclasses.MISSING else spec.default
        kwargs[key] = _coerce(dotted, default, value, base_dir)
    return cls(**kwargs)


def _coerce(key: str, default: Any, value: Any, base_dir: Path) -> Any:
    """Check ``value`` against the type of the field's default and convert it."""
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(key, "must be true or false")
        return value
    if isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(key, "must be a whole number")
        return value
    if isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(key, "must be a number")
        if not math.isfinite(value):
            raise ConfigError(key, f"must be a finite number, got {value}")
        return float(value)
    if isinstance(default, tuple):
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            raise ConfigError(key, "must be a list of strings")
        return tuple(value)
    if isinstance(default, Path) or key in _OPTIONAL_PATHS:
        if not isinstance(value, str) or not value:
            raise ConfigError(key, "must be a non-empty path string")
        candidate = Path(value).expanduser()
        return candidate if candidate.is_absolute() else (base_dir / candidate)
    if isinstance(default, str) or key in _OPTIONAL_STRINGS:
        if not isinstance(value, str):
            raise ConfigError(key, "must be a string")
        return value
    raise ConfigError(key, "unsupported value")  # pragma: no cover - every field is covered


#: Keys that changed meaning: refused with what to write instead (never silently reinterpreted).
_RENAMED = {
    "billing.storage_cents_per_gib": "renamed: storage is charged per GiB-month now; "
    "set billing.storage_cents_per_gib_month (cents, decimals allowed, e.g. 2.3)",
}

_OPTIONAL_PATHS = {
    "paths.archive_dir",
    "encryption.key_dir",
    "listener.tls.cert_file",
    "listener.tls.key_file",
    "listener.tls.ca_file",
    "forwarding.tls.ca_file",
    "forwarding.tls.cert_file",
    "forwarding.tls.key_file",
    "hl7.cert_file",
    "hl7.key_file",
    "hl7.ca_file",
}
_OPTIONAL_STRINGS = {
    "database.url",
    "node.id",
    "forwarding.calling_ae_title",
    "listener.tls.host",
    "archive.endpoint_url",
    "archive.bucket",
    "archive.region",
    "archive.access_key_id",
    "archive.secret_access_key",
    "encryption.active_key",
}


def _check_port(key: str, port: int, allow_zero: bool = True) -> None:
    low = 0 if allow_zero else 1
    if not low <= port <= 65535:
        raise ConfigError(key, f"port {port} is out of range {low}-65535")


#: Upper bound of every duration in the config (seconds): a year. Larger values overflow the
#: clocks and timers they feed (``threading.Event.wait``, ``datetime.timedelta``).
_MAX_SECONDS = 365 * 24 * 3600.0


def _check_positive(
    key: str, value: float, allow_zero: bool = False, maximum: float | None = None, unit: str = ""
) -> None:
    if value < 0 or (value == 0 and not allow_zero):
        raise ConfigError(key, f"must be {'zero or more' if allow_zero else 'greater than zero'}, got {value}")
    if maximum is not None and value > maximum:
        raise ConfigError(key, f"must be at most {maximum:.0f}{unit}, got {value}")


def _check_seconds(key: str, value: float, allow_zero: bool = False) -> None:
    _check_positive(key, value, allow_zero, maximum=_MAX_SECONDS, unit=" seconds (a year)")


def _validate_archive(archive: ArchiveSettings) -> None:
    kinds = [kind.value for kind in ArchiveBackendKind]
    if archive.backend not in kinds:
        raise ConfigError("archive.backend", f"must be one of {', '.join(kinds)}, got {archive.backend!r}")
    if archive.backend == ArchiveBackendKind.S3 and not archive.bucket:
        raise ConfigError("archive.bucket", "is required when backend is s3")
    if (archive.access_key_id is None) != (archive.secret_access_key is None):
        raise ConfigError("archive.secret_access_key", "access_key_id and secret_access_key go together")
    if archive.endpoint_url is not None and not archive.endpoint_url.startswith(("http://", "https://")):
        raise ConfigError("archive.endpoint_url", "must start with http:// or https://")
    if archive.prefix.startswith("/") or "\\" in archive.prefix:
        raise ConfigError("archive.prefix", "must not start with / or contain a backslash")
    _check_seconds("archive.connect_timeout", archive.connect_timeout)
    _check_seconds("archive.read_timeout", archive.read_timeout)


def _validate_encryption(encryption: EncryptionSettings) -> None:
    for index, key_id in enumerate(encryption.keys):
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", key_id):
            raise ConfigError(f"encryption.keys[{index}]", f"{key_id!r} is not a key id (letters, digits, _ . -)")
    if encryption.enabled:
        if not encryption.keys:
            raise ConfigError("encryption.keys", "list at least one key id when encryption is enabled")
        if encryption.active_key not in encryption.keys:
            raise ConfigError("encryption.active_key", "must be one of encryption.keys")


def _validate(settings: Settings) -> Settings:
    """Check cross-field limits; returns ``settings`` unchanged."""
    listener = settings.listener
    validate_ae_title(listener.ae_title, "listener.ae_title")
    _check_port("listener.port", listener.port)
    if listener.max_associations < 1:
        raise ConfigError("listener.max_associations", "must be at least 1")
    if not 1 <= listener.workers <= 64:
        raise ConfigError("listener.workers", "must be 1-64 processes")
    for key in ("acse_timeout", "dimse_timeout", "network_timeout", "drain_timeout", "association_request_timeout"):
        _check_seconds(f"listener.{key}", getattr(listener, key))
    _validate_peer_limits(listener)
    if listener.max_pdu_length != 0 and not 4096 <= listener.max_pdu_length <= 2**32 - 1:
        raise ConfigError("listener.max_pdu_length", "must be 0 (unlimited) or 4096-4294967295 bytes")
    for index, title in enumerate(listener.allowed_calling_ae_titles):
        validate_ae_title(title, f"listener.allowed_calling_ae_titles[{index}]")
    for index, address in enumerate(listener.allowed_addresses):
        try:
            ipaddress.ip_network(address, strict=False)
        except ValueError as exc:
            raise ConfigError(
                f"listener.allowed_addresses[{index}]", f"{address!r} is not an IP address or network"
            ) from exc
    tls = listener.tls
    if tls.enabled:
        _check_port("listener.tls.port", tls.port)
        for key in ("cert_file", "key_file"):
            if getattr(tls, key) is None:
                raise ConfigError(f"listener.tls.{key}", "is required when TLS is enabled")
        if tls.require_client_cert and tls.ca_file is None:
            raise ConfigError("listener.tls.ca_file", "is required when require_client_cert is true")
    for index, entry in enumerate(tls.ae_title_subjects):
        key = f"listener.tls.ae_title_subjects[{index}]"
        title, equals, name = entry.partition("=")
        if not equals or not name.strip():
            raise ConfigError(key, f"{entry!r} is not AE_TITLE=certificate name")
        validate_ae_title(title, key)
    if tls.ae_title_subjects and tls.ca_file is None:
        raise ConfigError("listener.tls.ca_file", "is required when ae_title_subjects is set")
    if not listener.enabled and not tls.enabled:
        raise ConfigError("listener.enabled", "the plain listener is off and TLS is not enabled")
    for key, path in (
        ("imlc.membership_file", settings.imlc.membership_file),
        ("billing.cpt_map", settings.billing.cpt_map),
        ("billing.fee_schedule", settings.billing.fee_schedule),
        ("routing.subspecialty_rules", settings.routing.subspecialty_rules),
        ("routing.work_rvu_file", settings.routing.work_rvu_file),
    ):
        if not path.exists():
            raise ConfigError(key, f"file not found: {path} (a relative path is read from the config file's folder)")
        if not path.is_file():
            raise ConfigError(key, f"{path} is not a file")
    routing = settings.routing
    _check_seconds("routing.stable_seconds", routing.stable_seconds, allow_zero=True)
    _check_seconds("routing.stat_stable_seconds", routing.stat_stable_seconds, allow_zero=True)
    _check_positive("routing.default_work_rvu", routing.default_work_rvu, False, maximum=100.0, unit="")
    if routing.max_open_reads < 0:
        raise ConfigError("routing.max_open_reads", "must be 0 (no cap) or a positive count")
    for key in ("tat_stat_minutes", "tat_asap_minutes", "tat_routine_minutes"):
        _check_seconds(f"routing.{key}", getattr(routing, key))
    _check_seconds("routing.poll_interval", routing.poll_interval)
    _check_seconds("routing.recheck_interval", routing.recheck_interval)
    try:
        ZoneInfo(routing.timezone)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ConfigError("routing.timezone", f"unknown IANA time zone {routing.timezone!r}") from exc
    _check_seconds("listener.idle_eviction_seconds", listener.idle_eviction_seconds, allow_zero=True)
    _check_seconds("database.busy_timeout", settings.database.busy_timeout)
    database = settings.database
    _check_seconds("database.statement_timeout", database.statement_timeout, allow_zero=True)
    _check_seconds("database.idle_in_transaction_timeout", database.idle_in_transaction_timeout, allow_zero=True)
    _check_positive("database.pool_size", database.pool_size, maximum=1000, unit="")
    _check_positive("database.max_overflow", database.max_overflow, allow_zero=True, maximum=1000, unit="")
    if (
        not database.application_name
        or len(database.application_name) > 40
        or not database.application_name.isprintable()
    ):
        raise ConfigError("database.application_name", "must be 1 to 40 printable characters")
    if database.sqlite_intake_synchronous not in SQLITE_INTAKE_SYNCHRONOUS:
        raise ConfigError(
            "database.sqlite_intake_synchronous",
            f"{database.sqlite_intake_synchronous!r} must be one of {', '.join(map(repr, SQLITE_INTAKE_SYNCHRONOUS))}",
        )
    node = settings.node
    if node.id is not None and not NODE_ID_PATTERN.fullmatch(node.id):
        raise ConfigError("node.id", f"{node.id!r} must be 1 to 64 letters, digits, '.', '_' or '-'")
    _check_seconds("node.heartbeat_interval", node.heartbeat_interval)
    _check_seconds("node.lease_seconds", node.lease_seconds)
    if node.lease_seconds < 2 * node.heartbeat_interval:
        raise ConfigError("node.lease_seconds", "must be at least twice node.heartbeat_interval")
    _validate_archive(settings.archive)
    _validate_encryption(settings.encryption)
    billing = settings.billing
    for key in ("storage_cents_per_gib_month", "transmission_cents_per_gib"):
        try:
            rate_microcents(getattr(billing, key), "rate")
        except ValidationError as exc:
            raise ConfigError(f"billing.{key}", str(exc).removeprefix("rate ")) from exc
    _check_positive(
        "billing.storage_retention_days", billing.storage_retention_days, allow_zero=True, maximum=36500, unit=" days"
    )
    _validate_claims(billing)
    _check_positive("imlc.max_age_days", settings.imlc.max_age_days, maximum=36500, unit=" days")
    _check_positive(
        "imlc.suspension_hold_days", settings.imlc.suspension_hold_days, allow_zero=True, maximum=36500, unit=" days"
    )
    forwarding = settings.forwarding
    if forwarding.calling_ae_title is not None:
        validate_ae_title(forwarding.calling_ae_title, "forwarding.calling_ae_title")
    if forwarding.max_attempts < 1:
        raise ConfigError("forwarding.max_attempts", "must be at least 1")
    _check_seconds("forwarding.initial_backoff", forwarding.initial_backoff)
    _check_seconds("forwarding.max_backoff", forwarding.max_backoff)
    if (forwarding.tls.cert_file is None) != (forwarding.tls.key_file is None):
        raise ConfigError("forwarding.tls.key_file", "cert_file and key_file go together")
    for index, address in enumerate(forwarding.tls.destinations):
        host, colon, port = address.rpartition(":")
        if not colon or not host or not (port.isascii() and port.isdigit() and 1 <= int(port) <= 65535):
            raise ConfigError(f"forwarding.tls.destinations[{index}]", f"{address!r} is not host:port")
    for index, state in enumerate(settings.licensure.telehealth_registration_states):
        if normalize_jurisdiction(state) is None:
            raise ConfigError(
                f"licensure.telehealth_registration_states[{index}]", f"{state!r} is not a US licensing jurisdiction"
            )
    _validate_hl7(settings.hl7)
    level = settings.logging.level.upper()
    if level not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
        raise ConfigError("logging.level", f"unknown level {settings.logging.level!r}")
    if settings.logging.format not in LOG_FORMATS:
        raise ConfigError("logging.format", f"must be one of {', '.join(LOG_FORMATS)}, got {settings.logging.format!r}")
    _check_port("http.port", settings.http.port)
    return settings


def _validate_claims(billing: BillingSettings) -> None:
    """The billing group's NPI (CMS check digit), TIN (nine digits) and POS defaults (never telehealth)."""
    checks: list[tuple[str, str, Callable[[str], object]]] = [
        ("billing.group_npi", billing.group_npi, validate_npi),
        ("billing.tin", billing.tin, validate_tin),
        ("billing.outpatient_pos", billing.outpatient_pos, validate_outpatient_pos),
        ("billing.default_pos", billing.default_pos, validate_pos),
    ]
    for key, value, check in checks:
        if value == "" and key != "billing.outpatient_pos":
            continue
        try:
            check(value)
        except ValidationError as exc:
            raise ConfigError(key, str(exc)) from exc


def _validate_peer_limits(listener: ListenerSettings) -> None:
    """Limits that bound what one hostile peer can hold (bytes, connections)."""
    if listener.max_inflated_bytes < 1 << 20:
        raise ConfigError("listener.max_inflated_bytes", "must be at least 1048576 bytes (1 MiB)")
    if not 16_384 <= listener.max_association_request_bytes <= 1 << 30:
        raise ConfigError("listener.max_association_request_bytes", "must be 16384-1073741824 bytes")
    if listener.max_connections < 1:
        raise ConfigError("listener.max_connections", "must be at least 1 (max_associations is used if larger)")
    if listener.max_connections_per_address < 1:
        raise ConfigError("listener.max_connections_per_address", "must be at least 1")


def _validate_hl7(hl7: Hl7Settings) -> None:
    _check_port("hl7.port", hl7.port)
    if not 1024 <= hl7.max_message_bytes <= 256 * 1024 * 1024:
        raise ConfigError("hl7.max_message_bytes", "must be 1024-268435456 bytes")
    _check_seconds("hl7.timeout", hl7.timeout)
    if not 1 <= hl7.max_connections <= 10_000:
        raise ConfigError("hl7.max_connections", "must be 1-10000")
    if not 1 <= hl7.max_connections_per_address <= hl7.max_connections:
        raise ConfigError("hl7.max_connections_per_address", "must be 1 to hl7.max_connections")
    if not hl7.application or len(hl7.application) > 180 or any(ch in hl7.application for ch in "|^~\\&\r\n"):
        raise ConfigError("hl7.application", "must be 1-180 characters without HL7 delimiters")
    if hl7.tls:
        for key in ("cert_file", "key_file"):
            if getattr(hl7, key) is None:
                raise ConfigError(f"hl7.{key}", "is required when hl7.tls is true")
