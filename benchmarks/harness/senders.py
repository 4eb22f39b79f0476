"""The sender: DCMTK ``/usr/bin/storescu`` (never the pynetdicom app of the same name that a
virtual environment may put first on PATH), with 1 association or 4 in parallel.

``TCP_NODELAY=1`` in storescu's environment makes DCMTK set TCP_NODELAY on its socket (Nagle
off); without it the socket is left as the kernel makes it (Nagle on, as most modalities run).
The wall time runs from just before the first storescu starts to the exit of the last one (seen
when it happens, :func:`~harness.procs.wait_exits`); each
run is bounded by a timeout, after which the senders are killed and the run is marked failed.
"""

from __future__ import annotations

import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.procs import LOOPBACK, Registry, wait_exits
from harness.routerdb import SENDER_AE
from harness.setup_env import STORESCU
from harness.workload import Workload


@dataclass(frozen=True)
class SendResult:
    """One sender run."""

    wall_s: float
    finished_at: float  # time.monotonic() when the last storescu exited
    returncodes: tuple[int | None, ...]
    timed_out: bool


def sender_env(nodelay: bool) -> dict[str, str]:
    """The environment for storescu: TCP_NODELAY=1 or no TCP_NODELAY at all."""
    env = {k: v for k, v in os.environ.items() if k != "TCP_NODELAY"}
    if nodelay:
        env["TCP_NODELAY"] = "1"
    return env


def timeout_for(workload: Workload, nodelay: bool) -> float:
    """A generous bound: 30 s plus a per-instance allowance that grows with the file size."""
    per_instance = 0.05 + workload.file_bytes / 5e6
    if not nodelay:
        per_instance += 0.25  # delayed-ACK stalls
    return 30.0 + workload.count * per_instance


def send(
    registry: Registry,
    workload: Workload,
    associations: int,
    nodelay: bool,
    port: int,
    called_ae: str,
    log_dir: Path,
    timeout: float | None = None,
    options: tuple[str, ...] = (),
) -> SendResult:
    """Send ``workload`` with ``associations`` storescu processes (1, or one per study chunk);
    ``options``: more storescu options (``("--max-send-pdu", "16384")``)."""
    if associations == 1:
        groups = [workload.files]
    else:
        groups = [list(chunk) for chunk in workload.chunks]
        if len(groups) != associations:
            raise ValueError(f"workload has {len(groups)} studies, {associations} associations asked")
    env = sender_env(nodelay)
    limit = timeout if timeout is not None else timeout_for(workload, nodelay)
    procs: list[subprocess.Popen[Any]] = []
    start = time.monotonic()
    for index, files in enumerate(groups):
        args = [STORESCU, "-aet", SENDER_AE, "-aec", called_ae, *options, LOOPBACK, str(port), *map(str, files)]
        procs.append(registry.start(args, env=env, log=log_dir / f"storescu-{index}.log"))
    finished = wait_exits(procs, start + limit)
    timed_out = finished is None
    if finished is None:
        finished = time.monotonic()
        for proc in procs:
            registry.stop(proc, grace=1.0)
    else:
        for proc in procs:
            registry.stop(proc)  # already exited: just forget it
    return SendResult(finished - start, finished, tuple(proc.returncode for proc in procs), timed_out)
