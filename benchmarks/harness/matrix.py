"""The ingest matrix: every (size, sender mode, Nagle, receiver) cell, each on a fresh receiver.

Per run: start the receiver, wait for C-ECHO, read its CPU time, send, read its CPU time again,
check the number of instances it holds, and for the router wait until every study is assigned
(or held) and take the latency. Cells are ordered so every receiver of one cell runs back to
back (less drift between the numbers that are compared).
"""

from __future__ import annotations

import math
import statistics
import sys
from dataclasses import asdict, dataclass, field
from typing import Any

from harness.procs import children_cpu_seconds, cpu_seconds, host_cpu_times, idle_share, steal_share, wait_quiet
from harness.receivers import ROUTERS, Receivers, wait_count
from harness.routerdb import reader_engine, wait_routed
from harness.senders import send
from harness.workload import Workload


@dataclass(frozen=True)
class Cell:
    """What is sent and how."""

    size: str  # small | large
    associations: int  # 1 | 4
    nodelay: bool  # sender's TCP_NODELAY (False: Nagle on)
    # TCP_NODELAY=1 for the DCMTK-based receivers (Orthanc, storescp); None: same as the sender
    receiver_nodelay: bool | None = None

    @property
    def dcmtk_nodelay(self) -> bool:
        """Whether Orthanc and storescp run with TCP_NODELAY=1."""
        return self.nodelay if self.receiver_nodelay is None else self.receiver_nodelay

    @property
    def label(self) -> str:
        text = f"{self.size} x{self.associations} {'nodelay' if self.nodelay else 'nagle'}"
        return text + (
            ""
            if self.receiver_nodelay is None
            else f" (DCMTK receivers {'nodelay' if self.receiver_nodelay else 'as shipped'})"
        )


#: Further attempts at a run the hypervisor slowed (``--max-steal``).
STEAL_RETRIES = 2


@dataclass
class Run:
    """One measured run."""

    receiver: str
    cell: Cell
    rep: int
    instances: int
    bytes_sent: int
    wall_s: float | None = None
    instances_per_s: float | None = None
    mb_per_s: float | None = None
    cpu_s: float | None = None
    cpu_ms_per_instance: float | None = None
    stored: int | None = None
    ok: bool = False
    error: str | None = None
    latency: dict[str, Any] | None = None
    #: share (0-1) of the machine's CPU time taken by the hypervisor during the send
    host_steal: float | None = None
    #: share (0-1) of the machine's CPU time left idle during the send (procs.idle_share)
    host_idle: float | None = None
    #: CPU time of the storescu senders, per instance (procs.children_cpu_seconds)
    sender_cpu_ms_per_instance: float | None = None
    #: seconds from the receiver answering C-ECHO to its start-up CPU settling (procs.wait_quiet)
    quiet_after_s: float | None = None
    sender_returncodes: list[int | None] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["cell"] = asdict(self.cell)
        return data


def _log(message: str) -> None:
    print(f"[ingest] {message}", file=sys.stderr, flush=True)


def run_one(
    receivers: Receivers, receiver: str, cell: Cell, workload: Workload, rep: int, stable_seconds: float = 1.0
) -> Run:
    """Measure one run on a fresh ``receiver``."""
    run = Run(receiver, cell, rep, workload.count, workload.count * workload.file_bytes)
    running = None
    try:
        running = receivers.start(receiver, dcmtk_nodelay=cell.dcmtk_nodelay)
        run.quiet_after_s = wait_quiet(running.proc.pid)
        before = cpu_seconds(running.proc.pid)
        host_before = host_cpu_times()
        senders_before = children_cpu_seconds()
        result = send(
            receivers.registry,
            workload,
            cell.associations,
            cell.nodelay,
            running.port,
            running.called_ae,
            running.folder,
        )
        after = cpu_seconds(running.proc.pid)
        host_after = host_cpu_times()
        senders_cpu = children_cpu_seconds() - senders_before
        run.host_steal = steal_share(host_before, host_after)
        run.host_idle = idle_share(host_before, host_after)
        run.sender_returncodes = list(result.returncodes)
        run.wall_s = result.wall_s
        run.cpu_s = after - before
        run.stored = wait_count(running, workload.count, timeout=2.0)
        if result.timed_out:
            run.error = "sender timed out"
        elif run.stored != workload.count:
            run.error = f"receiver holds {run.stored} of {workload.count} instances"
        elif any(code != 0 for code in result.returncodes):
            run.error = f"storescu exit status {list(result.returncodes)}"
        else:
            run.ok = True
        if run.ok:
            run.instances_per_s = workload.count / result.wall_s
            run.mb_per_s = run.bytes_sent / result.wall_s / 1e6
            run.cpu_ms_per_instance = run.cpu_s / workload.count * 1000 if not math.isnan(run.cpu_s) else None
            run.sender_cpu_ms_per_instance = senders_cpu / workload.count * 1000
        if receiver in ROUTERS and running.database_url:
            engine = reader_engine(running.database_url)
            try:
                run.latency = wait_routed(engine, workload.study_uids, result.finished_at, timeout=stable_seconds + 20)
            finally:
                engine.dispose()
    except Exception as exc:
        run.error = f"{type(exc).__name__}: {exc}"
    finally:
        if running is not None:
            receivers.stop(running)
    cpu = float("nan") if run.cpu_ms_per_instance is None else run.cpu_ms_per_instance
    status = f"{run.instances_per_s:8.1f} inst/s  {cpu:6.2f} ms CPU/inst" if run.ok else f"FAILED: {run.error}"
    extra = ""
    if run.latency:
        extra = f"  routed {run.latency.get('statuses')} last study {run.latency.get('last_study_s')}"
    if run.sender_cpu_ms_per_instance is not None:
        extra += f"  senders {run.sender_cpu_ms_per_instance:.2f} ms CPU/inst"
    if run.host_idle is not None:
        extra += f"  machine idle {run.host_idle:.0%}"
    if run.host_steal is not None:
        extra += f"  host steal {run.host_steal:.0%}"
    _log(f"{cell.label:24s} {receiver:16s} n={workload.count:<5d} {status}{extra}")
    return run


def run_matrix(
    receivers: Receivers,
    plan: list[tuple[Cell, list[str]]],
    workloads: dict[str, Workload],
    nagle_cap: int,
    reps: int,
    max_steal: float | None = None,
) -> list[Run]:
    """Every cell on each of its receivers, ``reps`` times, in reverse order every other time.

    A cell where anything runs with Nagle on (the sender, or DCMTK receivers as shipped) sends
    at most ``nagle_cap`` instances: each costs a delayed-ACK stall; with ``nagle_cap`` 0 those
    cells are skipped. With ``max_steal``, a run during which the hypervisor took more than that
    share of the machine's CPU time is measured again, at most :data:`STEAL_RETRIES` times; the
    last attempt is kept (its steal is in the results).
    """
    runs: list[Run] = []
    for rep in range(reps):
        for cell, names in plan:
            capped = not cell.nodelay or not cell.dcmtk_nodelay
            if capped and nagle_cap <= 0:
                continue
            workload = workloads[cell.size].capped(nagle_cap) if capped else workloads[cell.size]
            # Every other repetition runs the receivers in reverse order, so each follows another
            # receiver than before and the first goes last: what a run leaves behind (the page
            # cache, or on ext4 without a journal the inodes a clean-up freed less than a minute
            # ago, docs/benchmarks.md) does not always fall on the same one.
            for name in names if rep % 2 == 0 else names[::-1]:
                run = run_one(receivers, name, cell, workload, rep)
                for _ in range(STEAL_RETRIES):
                    if max_steal is None or run.host_steal is None or run.host_steal <= max_steal:
                        break
                    _log(f"host steal {run.host_steal:.0%} > {max_steal:.0%}: measuring that run again")
                    run = run_one(receivers, name, cell, workload, rep)
                runs.append(run)
    return runs


def summarize(runs: list[Run]) -> list[dict[str, Any]]:
    """Median (and range) per (cell, receiver) over the successful repetitions."""
    groups: dict[tuple[Cell, str], list[Run]] = {}
    for run in runs:
        groups.setdefault((run.cell, run.receiver), []).append(run)
    rows = []
    for (cell, receiver), items in groups.items():
        good = [run for run in items if run.ok]
        row: dict[str, Any] = {
            "size": cell.size,
            "associations": cell.associations,
            "nodelay": cell.nodelay,
            "dcmtk_receiver_nodelay": cell.dcmtk_nodelay,
            "diagnostic": cell.receiver_nodelay is not None,
            "receiver": receiver,
            "instances": items[0].instances,
            "reps": len(items),
            "ok_reps": len(good),
            "errors": sorted({run.error for run in items if run.error}),
        }
        if good:
            rates = [run.instances_per_s for run in good if run.instances_per_s]
            row["instances_per_s"] = statistics.median(rates)
            row["instances_per_s_range"] = [min(rates), max(rates)]
            row["mb_per_s"] = statistics.median(run.mb_per_s for run in good if run.mb_per_s)
            cpus = [run.cpu_ms_per_instance for run in good if run.cpu_ms_per_instance is not None]
            row["cpu_ms_per_instance"] = statistics.median(cpus) if cpus else None
            senders = [run.sender_cpu_ms_per_instance for run in good if run.sender_cpu_ms_per_instance is not None]
            row["sender_cpu_ms_per_instance"] = statistics.median(senders) if senders else None
            idles = [run.host_idle for run in good if run.host_idle is not None]
            row["host_idle"] = statistics.median(idles) if idles else None
            steals = [run.host_steal for run in good if run.host_steal is not None]
            row["host_steal_max"] = max(steals) if steals else None
        lat = [run.latency for run in items if run.latency and run.latency.get("ok")]
        if lat:
            row["latency_last_study_s"] = statistics.median(
                item["last_study_s"] for item in lat if item["last_study_s"] is not None
            )
            row["latency_observed_s"] = statistics.median(item["observed_s"] for item in lat)
            row["routed_statuses"] = lat[-1]["statuses"]
        elif any(run.latency for run in items):
            row["routed_statuses"] = next(run.latency for run in items if run.latency)["statuses"]  # type: ignore[index]
        rows.append(row)
    return rows
