"""Peak resident memory of a receiver while it takes one ~500 MB multi-frame instance.

The receiver is started fresh; its VmHWM (peak resident set size, from ``/proc/<pid>/status``)
is read once it answers C-ECHO and again after the sender exits, and its RSS is sampled every
20 ms meanwhile (the sampled peak should agree with VmHWM). The instance is sent by DCMTK
storescu, 1 association, Nagle off.
"""

from __future__ import annotations

import sys
import threading
from typing import Any

import psutil

from harness.procs import vm_hwm_kib
from harness.receivers import Receivers, wait_count
from harness.senders import send
from harness.workload import Workload


def _log(message: str) -> None:
    print(f"[memory] {message}", file=sys.stderr, flush=True)


class _Sampler(threading.Thread):
    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.peak = 0
        self.stop = threading.Event()

    def run(self) -> None:
        try:
            proc = psutil.Process(self.pid)
            while not self.stop.wait(0.02):
                rss = proc.memory_info().rss
                for child in proc.children(recursive=True):
                    try:
                        rss += child.memory_info().rss
                    except psutil.NoSuchProcess:
                        continue
                self.peak = max(self.peak, rss)
        except psutil.NoSuchProcess:
            return


def measure(receivers: Receivers, name: str, workload: Workload) -> dict[str, Any]:
    """Peak memory of receiver ``name`` while it receives ``workload`` (one huge instance)."""
    result: dict[str, Any] = {"receiver": name, "instance_bytes": workload.file_bytes, "ok": False}
    running = None
    try:
        running = receivers.start(name, dcmtk_nodelay=True)
        pid = running.proc.pid
        result["hwm_before_mib"] = (vm_hwm_kib(pid) or 0) / 1024
        sampler = _Sampler(pid)
        sampler.start()
        sent = send(receivers.registry, workload, 1, True, running.port, running.called_ae, running.folder, timeout=600)
        sampler.stop.set()
        sampler.join()
        result["hwm_after_mib"] = (vm_hwm_kib(pid) or 0) / 1024
        # With listener.workers > 1 the receiving is done by child processes: report the sum of
        # every process's own peak (an upper bound of the whole server at any one moment).
        try:
            children = psutil.Process(pid).children(recursive=True)
        except psutil.NoSuchProcess:
            children = []
        child_hwm = [(vm_hwm_kib(child.pid) or 0) / 1024 for child in children]
        result["processes"] = 1 + len(child_hwm)
        result["hwm_largest_process_mib"] = max([result["hwm_after_mib"], *child_hwm])
        result["hwm_all_processes_mib"] = result["hwm_after_mib"] + sum(child_hwm)
        result["sampled_peak_mib"] = sampler.peak / 2**20
        result["wall_s"] = sent.wall_s
        result["mb_per_s"] = workload.file_bytes / sent.wall_s / 1e6
        stored = wait_count(running, 1, timeout=5.0)
        result["ok"] = stored == 1 and not sent.timed_out and all(code == 0 for code in sent.returncodes)
        if not result["ok"]:
            result["error"] = f"stored {stored}, storescu {list(sent.returncodes)}, timed out {sent.timed_out}"
    except Exception as exc:
        result["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        if running is not None:
            receivers.stop(running)
    peak = result.get("hwm_all_processes_mib", result.get("hwm_after_mib"))
    _log(
        f"{name:16s} peak RSS {peak if peak is None else round(peak)} MiB over {result.get('processes', 1)} process(es) "
        f"(sampled {round(result.get('sampled_peak_mib', 0))} MiB, before {round(result.get('hwm_before_mib', 0))} MiB) "
        f"in {result.get('wall_s', float('nan')):.1f} s {'' if result['ok'] else result.get('error')}"
    )
    return result
