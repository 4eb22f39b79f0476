"""Where the router spends its time: py-spy samples the router during a 40 KB run.

``py-spy record`` starts the router itself (attaching to a running process needs ptrace rights
that containers often lack) and writes collapsed stacks (``--format raw``), kept gzipped in ``benchmarks/results/``
(``gunzip`` them, then open with speedscope or flamegraph.pl). Two views: ``cpu`` (default py-spy: only threads on the CPU, every
thread but the main one) and ``wall`` (``--idle``: waiting in fsync, locks and sockets
included; association threads only). The run is not one of the measured ones: sampling slows
the router down.
"""

from __future__ import annotations

import gzip
import os
import re
import signal
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import psutil

from harness.receivers import Receivers
from harness.senders import send
from harness.setup_env import py_spy
from harness.workload import Workload

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")
_PACKAGES = ("router", "pynetdicom", "pydicom", "sqlalchemy", "alembic", "psycopg")


def _log(message: str) -> None:
    print(f"[profile] {message}", file=sys.stderr, flush=True)


def _package(path: str) -> str:
    parts = Path(path).parts
    for name in _PACKAGES:
        if name in parts:
            return name
    if "site-packages" in parts:
        return "other libraries"
    return "python stdlib" if path.endswith(".py") else "native"


def _short(func: str, path: str) -> str:
    parts = Path(path).parts
    for anchor in ("site-packages", "main"):
        if anchor in parts:
            rest = parts[parts.index(anchor) + 1 :]
            return f"{func} ({'/'.join(rest)})"
    return f"{func} ({Path(path).name})"


_KINDS = (
    ("C-STORE handler (router code)", "StoreHandler.__call__"),
    ("association DIMSE (pynetdicom)", "Association.run"),
    ("DUL reactor: socket reads, PDU decoding (pynetdicom)", "DULServiceProvider.run"),
    ("routing timer", "_tick_loop"),
    ("accept loop", "serve_forever"),
    ("association set-up", "process_request_thread"),
)


def _kind(stack: str) -> str:
    for name, marker in _KINDS:
        if marker in stack:
            return name
    return "other threads"


def summarize(raw: Path, top: int = 20, associations_only: bool = False) -> dict[str, Any]:
    """Self and inclusive sample shares per function, and shares per package and thread kind.

    Samples of the main thread (imports, migrations and start-up, then an idle wait) are left
    out: the shares are of the samples taken while serving. ``associations_only`` keeps only
    the association threads (pynetdicom's DIMSE loop and the C-STORE handler): with idle
    samples included, that is where one instance's wall time goes.
    """
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    packages: Counter[str] = Counter()
    kinds: Counter[str] = Counter()
    total = startup = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        if stack.startswith(("_run_module_as_main", "<module>", "_find_and_load")) or not stack.startswith("Thread."):
            startup += count
            continue
        if associations_only and "Association.run" not in stack:
            continue
        total += count
        kinds[_kind(stack)] += count
        frames = []
        for frame in stack.split(";"):
            match = _FRAME.match(frame)
            if match is not None and match.group("file"):
                frames.append((match.group("func"), match.group("file")))
        if not frames:
            continue
        leaf = frames[-1]
        own[_short(*leaf)] += count
        packages[_package(leaf[1])] += count
        for key in {_short(*frame) for frame in frames}:
            inclusive[key] += count

    def share(counter: Counter[str], n: int) -> list[list[Any]]:
        return [[name, round(100.0 * value / total, 1)] for name, value in counter.most_common(n)] if total else []

    generic = {
        "Thread.run (threading.py)",
        "Thread._bootstrap_inner (threading.py)",
        "Thread._bootstrap (threading.py)",
    }
    return {
        "samples": total,
        "main_thread_samples": startup,
        "by_thread": share(kinds, len(kinds)),
        "self": share(own, top),
        "inclusive": [row for row in share(inclusive, top + len(generic)) if row[0] not in generic][:top],
        "self_by_package": share(packages, len(packages)),
    }


def run(receivers: Receivers, workload: Workload, out_dir: Path, stamp: str, idle: bool) -> dict[str, Any]:
    """Profile router-sqlite receiving ``workload`` (1 association, Nagle off)."""
    binary = py_spy()
    view = "wall" if idle else "cpu"
    if binary is None:
        return {"view": view, "error": "py-spy is not installed"}
    raw = receivers.work / f"profile-{view}.txt"
    wrapper = [binary, "record", "--rate", "200", "--format", "raw", "--output", str(raw)]
    if idle:
        wrapper.append("--idle")
    receivers.wrapper = [*wrapper, "--"]
    running = None
    try:
        running = receivers.start("router-sqlite")
        sent = send(receivers.registry, workload, 1, True, running.port, running.called_ae, running.folder)
        # Stop the router itself (not py-spy): it drains and exits, then py-spy writes its file.
        for child in psutil.Process(running.proc.pid).children():
            os.kill(child.pid, signal.SIGTERM)
        running.proc.wait(timeout=60)
    finally:
        receivers.wrapper = []
        if running is not None:
            receivers.stop(running)
    if not raw.exists():
        return {"view": view, "error": "py-spy wrote no profile (see the receiver log)"}
    keep = out_dir / f"{stamp}-profile-{view}.txt.gz"
    # Keep the serving threads' stacks only (the main thread's imports and start-up are noise).
    serving = "".join(
        line for line in raw.read_text(errors="replace").splitlines(keepends=True) if line.startswith("Thread.")
    )
    keep.write_bytes(gzip.compress(serving.encode()))
    summary = summarize(raw, associations_only=idle)
    summary.update({"view": view, "instances": workload.count, "wall_s": sent.wall_s, "raw_file": str(keep.name)})
    _log(
        f"{view}: {summary['samples']} samples; top self: "
        + "; ".join(f"{name} {pct}%" for name, pct in summary["self"][:5])
    )
    return summary
