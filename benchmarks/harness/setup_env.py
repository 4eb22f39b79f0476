"""Install what the benchmark needs when it is missing, and describe the machine and versions.

Standard library only: this runs before the Python packages it installs can be imported.

- Debian ``dcmtk`` (``/usr/bin/storescu``, ``storescp``, ``echoscu``) and ``orthanc``
  (``/usr/sbin/Orthanc``), after ``apt-get update``. The package's service must not start: a
  ``policy-rc.d`` that denies every start is put in place for the install (and removed after if
  it was ours), and a service found running is stopped and disabled. Orthanc is then run by hand
  by :mod:`harness.receivers` with a throwaway configuration.
- ``pydicom-data`` (the 512x512 CT ``693_UNCR.dcm``), ``psutil`` and ``py-spy`` from PyPI into
  the running interpreter's environment.
"""

from __future__ import annotations

import importlib.util
import os
import platform
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

STORESCU = "/usr/bin/storescu"
STORESCP = "/usr/bin/storescp"
ECHOSCU = "/usr/bin/echoscu"
ORTHANC = "/usr/sbin/Orthanc"
POLICY_RC_D = Path("/usr/sbin/policy-rc.d")
PIP_PACKAGES = {"data_store": "pydicom-data", "psutil": "psutil"}
PROFILER_PACKAGE = "py-spy"


def _log(message: str) -> None:
    print(f"[setup] {message}", file=sys.stderr, flush=True)


def _run(args: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, check=True, text=True, **kwargs)


def ensure_debian_packages() -> None:
    """apt-get install dcmtk and orthanc if their binaries are missing; keep Orthanc's service off."""
    missing = [pkg for pkg, binary in (("dcmtk", STORESCU), ("orthanc", ORTHANC)) if not Path(binary).exists()]
    if missing:
        if os.geteuid() != 0:
            raise SystemExit(f"missing Debian packages {missing}: run as root or `apt-get install {' '.join(missing)}`")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        ours = False
        if not POLICY_RC_D.exists():
            # Deny every service start during the install (invoke-rc.d honours exit 101).
            POLICY_RC_D.write_text("#!/bin/sh\nexit 101\n")
            POLICY_RC_D.chmod(0o755)
            ours = True
        try:
            _log("apt-get update")
            _run(["apt-get", "update", "-qq"], env=env, stdout=subprocess.DEVNULL)
            _log(f"apt-get install {' '.join(missing)}")
            _run(
                ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing],
                env=env,
                stdout=subprocess.DEVNULL,
            )
        finally:
            if ours:
                POLICY_RC_D.unlink(missing_ok=True)
    stop_orthanc_service()


def stop_orthanc_service() -> None:
    """Stop and disable the packaged Orthanc service if it runs (we run our own on loopback)."""
    # Only the packaged service reads /etc/orthanc; ours gets a throwaway config in a temp dir.
    found = subprocess.run(["pgrep", "-f", "^/usr/sbin/Orthanc .*/etc/orthanc"], capture_output=True, text=True)
    if found.returncode != 0:
        return
    _log("the packaged Orthanc service is running: stopping and disabling it")
    for command in (
        ["service", "orthanc", "stop"],
        ["systemctl", "disable", "--now", "orthanc"],
        ["update-rc.d", "orthanc", "disable"],
    ):
        if shutil.which(command[0]):
            subprocess.run(command, capture_output=True)


def ensure_pip_packages(profiler: bool) -> None:
    """pip install the PyPI packages the benchmark imports, into this interpreter's environment."""
    wanted = dict(PIP_PACKAGES)
    missing = [name for module, name in wanted.items() if importlib.util.find_spec(module) is None]
    if profiler and not Path(sys.executable).with_name("py-spy").exists() and shutil.which("py-spy") is None:
        missing.append(PROFILER_PACKAGE)
    if missing:
        _log(f"pip install {' '.join(missing)}")
        _run([sys.executable, "-m", "pip", "install", "-q", *missing])
        importlib.invalidate_caches()


def py_spy() -> str | None:
    """Path of the py-spy binary, if installed."""
    candidate = Path(sys.executable).with_name("py-spy")
    return str(candidate) if candidate.exists() else shutil.which("py-spy")


def _first_line(args: list[str], pattern: str = "") -> str:
    try:
        out = subprocess.run(args, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return "not available"
    for line in (out.stdout + out.stderr).splitlines():
        if not pattern or re.search(pattern, line):
            return line.strip()
    return "unknown"


def versions(repo: Path, postgres_info: dict[str, str] | None) -> dict[str, str]:
    """Versions of everything measured (router commit, Python, libraries, DCMTK, Orthanc, PostgreSQL)."""
    import sqlite3

    import pydicom
    import pynetdicom
    import sqlalchemy

    commit = _first_line(["git", "-C", str(repo), "rev-parse", "--short=12", "HEAD"])
    changed = subprocess.run(
        ["git", "--no-optional-locks", "-C", str(repo), "status", "--porcelain", "--", "router"],
        capture_output=True,
        text=True,
    ).stdout.splitlines()
    info = {
        "router_commit": commit + _dirty_note(changed),
        "python": platform.python_version(),
        "pydicom": pydicom.__version__,
        "pynetdicom": pynetdicom.__version__,
        "sqlalchemy": sqlalchemy.__version__,
        "sqlite": sqlite3.sqlite_version,
        "dcmtk": _first_line([STORESCU, "--version"], r"\$dcmtk|storescu").replace("$dcmtk:", "").strip(" $"),
        "orthanc": _first_line([ORTHANC, "--version"], r"Orthanc \d").rsplit("/", 1)[-1],
    }
    if postgres_info:
        info.update(postgres_info)
    return info


def _dirty_note(porcelain: list[str]) -> str:
    """`` (+ uncommitted: a, b, ...)`` from ``git status --porcelain`` lines, or empty."""
    if not porcelain:
        return ""
    names = [line[3:].strip() for line in porcelain]
    shown = ", ".join(names[:6]) + (f" and {len(names) - 6} more" if len(names) > 6 else "")
    return f" (+ uncommitted changes measured: {shown})"


def machine() -> dict[str, str]:
    """nproc, CPU model, memory, kernel and the disk the work directory lives on."""
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = "unknown"
    try:
        kb = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1))  # type: ignore[union-attr]
        mem = f"{kb / 1024 / 1024:.1f} GiB"
    except (OSError, AttributeError):
        pass
    return {"nproc": str(os.cpu_count()), "cpu": cpu, "memory": mem, "kernel": platform.release()}


def disk(path: Path) -> str:
    """Device and file system holding ``path``, and the median cost of a 4 KiB write + fsync there."""
    import statistics
    import time

    out = subprocess.run(["findmnt", "-no", "SOURCE,FSTYPE", "-T", str(path)], capture_output=True, text=True)
    text = " ".join(out.stdout.split()) or "unknown device"
    probe = path / "fsync-probe"
    timings = []
    try:
        with open(probe, "wb") as handle:
            for _ in range(100):
                start = time.perf_counter()
                handle.write(b"\0" * 4096)
                handle.flush()
                os.fsync(handle.fileno())
                timings.append(time.perf_counter() - start)
    finally:
        probe.unlink(missing_ok=True)
    return f"{text}, 4 KiB write + fsync {statistics.median(timings) * 1000:.2f} ms (median of 100)"
