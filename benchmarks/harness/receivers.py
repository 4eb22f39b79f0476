"""The receivers, each started fresh for every measured run on a free 127.0.0.1 port.

- ``router-sqlite`` / ``router-postgres``: ``python -m router --config <tmp toml> serve`` with a
  fresh data directory (and a fresh PostgreSQL schema), ``stable_seconds = 1.0``,
  ``poll_interval = 0.2``, every other key at its default (fsync and index before Success);
- ``bare-pynetdicom``: :mod:`benchmarks.bare_scp` (write the received bytes, fsync, Success);
- ``python-floor``: :mod:`benchmarks.floor_scp` (no pynetdicom or pydicom: the least CPU a
  Python receiver spends keeping the router's file fsync, folder fsync and index commit);
  ``python-floor-router-work``: the same with the router's header read and index statements;
  ``python-floor-router-intake``: with the router's header read and whole intake service;
- ``orthanc``: Orthanc with its built-in default configuration except the storage and index
  folders, the DICOM port, and the HTTP server turned off (``SyncStorageArea`` stays at its
  default, true: every file is fsynced);
- ``storescp``: DCMTK ``storescp -od DIR`` (no fsync; one association at a time, as shipped).

DCMTK reads ``TCP_NODELAY`` from the environment on the accepting side too (storescp and
Orthanc's DICOM server both use DCMTK's network layer): as shipped, without it, they leave
Nagle on for their own responses, and a sender then waits for its delayed ACK (about 40 ms)
after every C-STORE whatever it does itself. ``dcmtk_nodelay`` runs them with
``TCP_NODELAY=1`` ("Nagle off at both ends", how the issue's reference numbers were taken) or
without it (as shipped). The router and pynetdicom ignore the variable: the router sets
TCP_NODELAY itself (``listener.tcp_nodelay``, default true), pynetdicom never does.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.procs import LOOPBACK, Registry, free_port, receiver_env, wait_logged, wait_ready
from harness.routerdb import Postgres, SqliteTemplate, instance_count, reader_engine
from harness.setup_env import ORTHANC, STORESCP

BENCH_DIR = Path(__file__).resolve().parent.parent
REPO = BENCH_DIR.parent

RECEIVERS = (
    "router-sqlite",
    "router-postgres",
    "bare-pynetdicom",
    "python-floor",
    "python-floor-router-work",
    "python-floor-router-intake",
    "orthanc",
    "storescp",
)
ROUTERS = ("router-sqlite", "router-postgres")


@dataclass
class Running:
    """A started receiver."""

    name: str
    proc: Any
    port: int
    called_ae: str
    folder: Path
    count: Callable[[], int]
    database_url: str | None = None
    cleanup: list[Callable[[], None]] = field(default_factory=list)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return json.dumps(str(value))


def router_config(path: Path, port: int, data_dir: Path, url: str | None, overrides: dict[str, Any]) -> None:
    """Write the router's TOML: loopback listener, small stable_seconds, ``overrides`` on top.

    ``overrides`` maps ``section.key`` (e.g. ``listener.max_pdu_length``) to a value.
    """
    sections: dict[str, dict[str, Any]] = {
        # listener.workers left at its default (one receiving process per available core)
        "listener": {"ae_title": "ROUTER", "host": LOOPBACK, "port": port},
        "paths": {"data_dir": str(data_dir)},
        "routing": {"stable_seconds": 1.0, "poll_interval": 0.2},
    }
    if url:
        sections["database"] = {"url": url}
    for dotted, value in overrides.items():
        section, key = dotted.rsplit(".", 1)
        sections.setdefault(section, {})[key] = value
    lines = []
    for section, values in sections.items():
        lines.append(f"[{section}]")
        lines.extend(f"{key} = {_toml_value(value)}" for key, value in values.items())
        lines.append("")
    path.write_text("\n".join(lines))


def _count_files(folder: Path, depth: int | None = None) -> int:
    total = 0
    for root, _dirs, files in os.walk(folder):
        rel_depth = len(Path(root).relative_to(folder).parts)
        if depth is None or rel_depth == depth:
            total += len(files)
    return total


class Receivers:
    """Starts receivers of each kind; shared state (SQLite template, PostgreSQL) lives here."""

    def __init__(
        self, registry: Registry, work: Path, postgres: Postgres | None, router_overrides: dict[str, Any]
    ) -> None:
        self.registry = registry
        self.work = work
        self.postgres = postgres
        self.router_overrides = router_overrides
        self._template: SqliteTemplate | None = None
        self._seq = 0
        self._env = receiver_env()
        self.wrapper: list[str] = []  # e.g. py-spy record ... -- (router only)

    def _folder(self, name: str) -> Path:
        self._seq += 1
        folder = self.work / "runs" / f"{self._seq:04d}-{name}"
        folder.mkdir(parents=True)
        return folder

    def start(self, name: str, dcmtk_nodelay: bool = False) -> Running:
        """Start a fresh receiver ``name`` (one of :data:`RECEIVERS`) and wait until it answers C-ECHO.

        ``dcmtk_nodelay``: run DCMTK-based receivers (Orthanc, storescp) with ``TCP_NODELAY=1``.
        """
        folder = self._folder(name)
        self._env = receiver_env(TCP_NODELAY="1") if dcmtk_nodelay else receiver_env()
        starter = {
            "router-sqlite": self._router,
            "router-postgres": self._router,
            "bare-pynetdicom": self._bare,
            "python-floor": self._floor,
            "python-floor-router-work": self._floor,
            "python-floor-router-intake": self._floor,
            "orthanc": self._orthanc,
            "storescp": self._storescp,
        }[name]
        running = starter(name, folder)
        try:
            wait_ready(running.port, running.proc, running.called_ae)
            if name in ("router-sqlite", "router-postgres"):
                wait_logged(folder / "receiver.log", "listening as", running.proc)
        except Exception:
            self.stop(running)
            log = folder / "receiver.log"
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise RuntimeError(f"{name} did not start; log tail:\n{tail}") from None
        return running

    def stop(self, running: Running) -> None:
        """Stop the receiver (SIGTERM: the router drains) and drop its resources."""
        self.registry.stop(running.proc)
        for action in running.cleanup:
            try:
                action()
            except Exception:
                pass

    # ------------------------------------------------------------ kinds
    def _router(self, name: str, folder: Path) -> Running:
        data_dir = folder / "data"
        url: str | None = None
        cleanup: list[Callable[[], None]] = []
        if name == "router-postgres":
            assert self.postgres is not None
            url = self.postgres.new_schema()
            from harness.routerdb import add_bench_roster, settings_for

            add_bench_roster(settings_for(data_dir, url))
            cleanup.append(lambda: self.postgres.drop(url))  # type: ignore[union-attr,arg-type]
        else:
            if self._template is None:
                self._template = SqliteTemplate(self.work)
            self._template.copy_to(data_dir)
        port = free_port()
        config = folder / "router.toml"
        router_config(config, port, data_dir, url, self.router_overrides)
        proc = self.registry.start(
            [*self.wrapper, sys.executable, "-m", "router", "--config", str(config), "serve"],
            env=receiver_env(),
            log=folder / "receiver.log",
            cwd=REPO,
        )
        db_url = url or f"sqlite:///{(data_dir / 'router.db').resolve()}"
        engine = reader_engine(db_url)
        cleanup.insert(0, engine.dispose)
        return Running(name, proc, port, "ROUTER", folder, lambda: instance_count(engine), db_url, cleanup)

    def _bare(self, name: str, folder: Path) -> Running:
        return self._python_script(name, folder, "bare_scp.py", "BARE")

    def _floor(self, name: str, folder: Path) -> Running:
        extra = {"python-floor-router-work": ["--router-work"], "python-floor-router-intake": ["--router-intake"]}
        extra_args = extra.get(name, [])
        return self._python_script(name, folder, "floor_scp.py", "FLOOR", extra_args)

    def _python_script(
        self, name: str, folder: Path, script: str, called_ae: str, extra: list[str] | None = None
    ) -> Running:
        """A receiver of ``benchmarks/``: ``python <script> PORT OUTPUT_DIR [extra]``, one file per instance."""
        port = free_port()
        out = folder / "out"
        proc = self.registry.start(
            [sys.executable, str(BENCH_DIR / script), str(port), str(out), *(extra or [])],
            env=receiver_env(),
            log=folder / "receiver.log",
        )
        return Running(name, proc, port, called_ae, folder, lambda: _count_files(out))

    def _orthanc(self, name: str, folder: Path) -> Running:
        port = free_port()
        storage = folder / "storage"
        storage.mkdir()
        config = {
            "Name": "bench",
            "StorageDirectory": str(storage),
            "IndexDirectory": str(storage),
            "DicomAet": "ORTHANC",
            "DicomPort": port,
            "DicomCheckCalledAet": False,
            "HttpServerEnabled": False,
            "Plugins": [],
        }
        path = folder / "orthanc.json"
        path.write_text(json.dumps(config, indent=2))
        proc = self.registry.start([ORTHANC, str(path)], env=self._env, log=folder / "receiver.log", cwd=folder)
        # Attachments live in <storage>/xx/yy/<uuid>; the index files sit at the top.
        return Running(name, proc, port, "ORTHANC", folder, lambda: _count_files(storage, depth=2))

    def _storescp(self, name: str, folder: Path) -> Running:
        port = free_port()
        out = folder / "out"
        out.mkdir()
        proc = self.registry.start(
            [STORESCP, "-aet", "STORESCP", "-od", str(out), str(port)],
            env=self._env,
            log=folder / "receiver.log",
        )
        return Running(name, proc, port, "STORESCP", folder, lambda: _count_files(out))


def wait_count(running: Running, expected: int, timeout: float = 10.0) -> int:
    """Instances the receiver holds, waiting briefly for it to reach ``expected``."""
    deadline = time.monotonic() + timeout
    count = -1
    while time.monotonic() < deadline:
        try:
            count = running.count()
        except Exception:
            count = -1
        if count >= expected:
            return count
        time.sleep(0.1)
    return count
