"""Who uses the machine's CPU in an ingest cell, and how much the router may use (issue 14).

The harness's ingest cells run the senders and the receiver on the same 2 cores, and most of
them keep both cores busy (machine idle 9-15 % in the 4-association cells). A cell's wall time
then follows the CPU time everybody spends on it, not the receiver's alone:

    rate ratio, router against Orthanc  ~  (O + S) / (R + S)

with O, R and S the CPU time per instance of Orthanc, the router and the senders (DCMTK
``storescu`` processes, whose start-up alone is about 30 ms of CPU each). For a target ratio T
the router may use at most

    R_max = (O + S) / T - S

milliseconds of CPU per instance, whatever it is written in. This script measures O, R and S
(user and system time apart) in one cell, alternating a fresh router and a fresh Orthanc as the
harness does, and prints R_max for the cell's target.

    python benchmarks/cpu_budget.py                              # 512 KB x 40, 4 associations, 3 rounds
    python benchmarks/cpu_budget.py --size small --count 400      # 40 KB x 400
    python benchmarks/cpu_budget.py --associations 1 --target 1.0
    python benchmarks/cpu_budget.py --one-instance-associations 60  # CPU per association instead

``--one-instance-associations N`` sends N 40 KB instances, one ``storescu`` process and
association each, one after the other: what one association costs each side.

CPU times come from psutil (the receiver's process tree) and ``getrusage(RUSAGE_CHILDREN)``
(the senders), both counted in clock ticks of 10 ms: use 40 instances or more. Needs DCMTK
and Orthanc (``python benchmarks/run.py`` installs them) and ``pydicom-data`` for 512 KB.
"""

from __future__ import annotations

import argparse
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))

import psutil  # noqa: E402
from harness import workload  # noqa: E402
from harness.procs import Registry, wait_quiet  # noqa: E402
from harness.receivers import Receivers, wait_count  # noqa: E402
from harness.routerdb import SENDER_AE  # noqa: E402
from harness.senders import send, sender_env  # noqa: E402
from harness.setup_env import STORESCU  # noqa: E402

RECEIVERS = ("router-sqlite", "orthanc")
#: The issue's targets: the router's rate against Orthanc's, by associations.
TARGETS = {1: 1.0, 4: 1.2}


@dataclass(frozen=True)
class Split:
    """CPU per unit (instance or association), in milliseconds."""

    rate: float  # units per second, sender's wall clock
    receiver_user: float
    receiver_system: float
    senders_user: float
    senders_system: float

    @property
    def receiver(self) -> float:
        return self.receiver_user + self.receiver_system

    @property
    def senders(self) -> float:
        return self.senders_user + self.senders_system


def _arguments(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=("small", "large"), default="large", help="40 KB or 512 KB instances")
    parser.add_argument("--count", type=int, default=40, help="instances per run (default 40, the harness's 512 KB)")
    parser.add_argument("--associations", type=int, choices=(1, 4), default=4, help="storescu processes at once")
    parser.add_argument("--rounds", type=int, default=3, help="alternated rounds (router, then Orthanc)")
    parser.add_argument("--target", type=float, help="rate ratio to budget for (default: the issue's for the cell)")
    parser.add_argument(
        "--one-instance-associations",
        type=int,
        metavar="N",
        help="instead: N one-instance associations, one after the other; CPU per association",
    )
    args = parser.parse_args(argv)
    if args.count < args.associations:
        parser.error(f"--count must be at least the number of associations ({args.associations})")
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    if args.target is not None and args.target <= 0:
        parser.error("--target must be a ratio above 0")
    if args.one_instance_associations is not None and args.one_instance_associations < 1:
        parser.error("--one-instance-associations must be at least 1")
    return args


def _tree_cpu(pid: int) -> tuple[float, float]:
    """User and system CPU seconds of a process and its live descendants."""
    user = system = 0.0
    root = psutil.Process(pid)
    for process in [root, *root.children(recursive=True)]:
        try:
            times = process.cpu_times()
        except psutil.NoSuchProcess:
            continue
        user += times.user
        system += times.system
    return user, system


def _measure(
    receivers: Receivers, registry: Registry, name: str, load: workload.Workload, args: argparse.Namespace
) -> Split:
    running = receivers.start(name, dcmtk_nodelay=True)
    try:
        wait_quiet(running.proc.pid)
        user_before, system_before = _tree_cpu(running.proc.pid)
        senders_before = resource.getrusage(resource.RUSAGE_CHILDREN)
        if args.one_instance_associations:
            units = load.count
            env = sender_env(nodelay=True)
            started = time.monotonic()
            for path in load.files:
                command = [STORESCU, "-aet", SENDER_AE, "-aec", running.called_ae, "127.0.0.1", str(running.port)]
                subprocess.run([*command, str(path)], check=True, env=env, capture_output=True)
            wall = time.monotonic() - started
        else:
            result = send(registry, load, args.associations, True, running.port, running.called_ae, running.folder)
            if result.timed_out or any(code != 0 for code in result.returncodes):
                raise SystemExit(f"{name}: storescu failed {list(result.returncodes)}")
            units, wall = load.count, result.wall_s
        user_after, system_after = _tree_cpu(running.proc.pid)
        senders_after = resource.getrusage(resource.RUSAGE_CHILDREN)
        stored = wait_count(running, load.count, timeout=3.0)
        if stored != load.count:
            raise SystemExit(f"{name} holds {stored} of {load.count} instances")
    finally:
        receivers.stop(running)
    per_unit = 1000 / units
    return Split(
        rate=units / wall,
        receiver_user=(user_after - user_before) * per_unit,
        receiver_system=(system_after - system_before) * per_unit,
        senders_user=(senders_after.ru_utime - senders_before.ru_utime) * per_unit,
        senders_system=(senders_after.ru_stime - senders_before.ru_stime) * per_unit,
    )


def main(argv: list[str]) -> int:
    args = _arguments(argv)
    if args.one_instance_associations:
        args.size, args.count = "small", args.one_instance_associations
    work = Path(tempfile.mkdtemp(prefix="router-cpu-budget-"))
    registry = Registry()
    try:
        receivers = Receivers(registry, work, None, {})
        load = workload.build(args.size, args.count, work / "workload")
        unit = "association" if args.one_instance_associations else "instance"
        shape = "one association each" if args.one_instance_associations else f"{args.associations} association(s)"
        print(f"{args.count} x {load.file_bytes // 1000} KB, {shape}; ms of CPU per {unit}")
        print(f"{'receiver':14s} {'rate/s':>7s} {'recv user':>9s} {'sys':>5s} {'senders user':>12s} {'sys':>5s}")
        splits: dict[str, list[Split]] = {name: [] for name in RECEIVERS}
        for _ in range(args.rounds):
            for name in RECEIVERS:
                split = _measure(receivers, registry, name, load, args)
                splits[name].append(split)
                print(
                    f"{name:14s} {split.rate:7.1f} {split.receiver_user:9.2f} {split.receiver_system:5.2f} "
                    f"{split.senders_user:12.2f} {split.senders_system:5.2f}",
                    flush=True,
                )
        if not args.one_instance_associations:
            target = args.target or TARGETS[args.associations]
            orthanc = statistics.median(split.receiver for split in splits["orthanc"])
            senders = statistics.median(split.senders for split in splits["orthanc"] + splits["router-sqlite"])
            router = statistics.median(split.receiver for split in splits["router-sqlite"])
            budget = (orthanc + senders) / target - senders
            print(
                f"medians: Orthanc {orthanc:.2f}, senders {senders:.2f}, router {router:.2f} ms per instance; "
                f"for {target:.2f}x Orthanc's rate the router may use at most {budget:.2f} ms "
                f"({budget / orthanc:.0%} of Orthanc's); model ratio now {(orthanc + senders) / (router + senders):.2f}x"
            )
    finally:
        registry.stop_all()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
