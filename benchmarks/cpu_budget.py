"""Who uses the machine's CPU in an ingest cell, and how much the router may use (issue 14).

The harness's ingest cells run the senders and the receiver on the same 2 cores, and most of
them keep both cores busy (machine idle 9-15 % in the 4-association cells). A cell's wall time
then follows the CPU time everybody spends on it, not the receiver's alone:

    rate ratio, router against Orthanc  ~  (O + S_O) / (R + S_R)

with O and R the CPU time per instance of Orthanc and of the router, and S_O and S_R that of the
senders (DCMTK ``storescu`` processes, whose start-up alone is about 30 ms of CPU each) sending
to each. For a target ratio T the router may use at most

    R_max = (O + S_O) / T - S_R

milliseconds of CPU per instance, whatever it is written in. This script measures O, R and the
senders' time (user and system apart) in one cell, alternating a fresh router and a fresh
Orthanc as the harness does, and prints the measured rate ratio, R_max for the cell's target
and the ratio CPU alone predicts. The model holds only while the machine is busy: with one
association, or beside other load, receivers also wait (fsync, the network) and the measured
ratio departs from it; each run's idle and host steal shares are printed to tell.

    python benchmarks/cpu_budget.py                              # 512 KB x 40, 4 associations, 3 rounds
    python benchmarks/cpu_budget.py --size small --count 400      # 40 KB x 400
    python benchmarks/cpu_budget.py --count 200 --rounds 2        # the --full size of 512 KB
    python benchmarks/cpu_budget.py --one-instance-associations 60  # CPU per association instead

``--one-instance-associations N`` sends N 40 KB instances, one ``storescu`` process and
association each, one after the other: what one association costs each side.

CPU times come from psutil (the receiver's process tree) and ``getrusage(RUSAGE_CHILDREN)``
(the senders), both counted in clock ticks of 10 ms: use 40 units or more. Needs DCMTK and
Orthanc (``python benchmarks/run.py`` installs them) and ``pydicom-data`` for 512 KB. Stopped
with Ctrl-C or SIGTERM, it stops its receivers and removes its work folder.
"""

from __future__ import annotations

import argparse
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))

from harness import workload  # noqa: E402
from harness.procs import Registry, cpu_times_split, host_cpu_times, idle_share, steal_share, wait_quiet  # noqa: E402
from harness.receivers import Receivers, wait_count  # noqa: E402
from harness.routerdb import SENDER_AE  # noqa: E402
from harness.senders import send, sender_env  # noqa: E402
from harness.setup_env import STORESCU  # noqa: E402

RECEIVERS = ("router-sqlite", "orthanc")
#: The issue's targets: the router's rate against Orthanc's, by associations.
TARGETS = {1: 1.0, 4: 1.2}
#: How the harness and docs/benchmarks.md name the two workloads.
LABELS = {"small": "40 KB", "large": "512 KB"}
#: Fewest units (instances or associations) per run below which the 10 ms clock ticks dominate.
FEWEST_UNITS = 40
#: Longest wait for one storescu, seconds.
SEND_TIMEOUT = 120.0


@dataclass(frozen=True)
class Split:
    """One run: rate and CPU per unit (instance or association), in milliseconds."""

    rate: float  # units per second, sender's wall clock
    receiver_user: float
    receiver_system: float
    senders_user: float
    senders_system: float
    idle: float | None  # share of the machine's CPU time left idle during the send (0-1)
    steal: float | None  # share taken by the hypervisor (0-1)

    @property
    def receiver(self) -> float:
        return self.receiver_user + self.receiver_system

    @property
    def senders(self) -> float:
        return self.senders_user + self.senders_system


def router_budget(orthanc: float, orthanc_senders: float, router_senders: float, target: float) -> float:
    """Most CPU per instance (ms) the router may use for ``target`` times Orthanc's rate, on a
    machine the receiver and its senders keep busy: ``(O + S_O) / target - S_R``."""
    return (orthanc + orthanc_senders) / target - router_senders


def model_ratio(orthanc: float, orthanc_senders: float, router: float, router_senders: float) -> float:
    """The router's rate against Orthanc's that CPU alone predicts: ``(O + S_O) / (R + S_R)``."""
    return (orthanc + orthanc_senders) / (router + router_senders)


def _arguments(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=("small", "large"), help="40 KB or 512 KB instances (default large)")
    parser.add_argument("--count", type=int, help="instances per run (default 40, the harness's 512 KB)")
    parser.add_argument("--associations", type=int, choices=(1, 4), help="storescu processes at once (default 4)")
    parser.add_argument("--rounds", type=int, default=3, help="alternated rounds (router, then Orthanc)")
    parser.add_argument("--target", type=float, help="rate ratio to budget for (default: the issue's for the cell)")
    parser.add_argument(
        "--one-instance-associations",
        type=int,
        metavar="N",
        help="instead: N one-instance 40 KB associations, one after the other; CPU per association",
    )
    args = parser.parse_args(argv)
    if args.one_instance_associations is not None:
        given = [name for name in ("size", "count", "associations", "target") if getattr(args, name) is not None]
        if given:
            parser.error(f"--one-instance-associations sends 40 KB instances one by one: drop --{given[0]}")
        if args.one_instance_associations < 1:
            parser.error("--one-instance-associations must be at least 1")
        args.size, args.count, args.associations = "small", args.one_instance_associations, 1
    else:
        args.size = args.size or "large"
        args.count = 40 if args.count is None else args.count
        args.associations = args.associations or 4
    if args.count < args.associations:
        parser.error(f"--count must be at least the number of associations ({args.associations})")
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    if args.target is not None and args.target <= 0:
        parser.error("--target must be a ratio above 0")
    return args


def _send_one_by_one(load: workload.Workload, port: int, called_ae: str) -> None:
    env = sender_env(nodelay=True)
    for path in load.files:
        command = [STORESCU, "-aet", SENDER_AE, "-aec", called_ae, "127.0.0.1", str(port), str(path)]
        try:
            subprocess.run(command, check=True, env=env, capture_output=True, timeout=SEND_TIMEOUT)
        except subprocess.CalledProcessError as exc:
            raise SystemExit(f"storescu exited {exc.returncode} sending {path.name}") from None
        except subprocess.TimeoutExpired:
            raise SystemExit(f"storescu took over {SEND_TIMEOUT:.0f} s sending {path.name}") from None


def _measure(
    receivers: Receivers, registry: Registry, name: str, load: workload.Workload, args: argparse.Namespace
) -> Split:
    running = receivers.start(name, dcmtk_nodelay=True)
    try:
        wait_quiet(running.proc.pid)
        user_before, system_before = cpu_times_split(running.proc.pid)
        senders_before = resource.getrusage(resource.RUSAGE_CHILDREN)
        host_before = host_cpu_times()
        if args.one_instance_associations:
            started = time.monotonic()
            _send_one_by_one(load, running.port, running.called_ae)
            wall = time.monotonic() - started
        else:
            result = send(registry, load, args.associations, True, running.port, running.called_ae, running.folder)
            if result.timed_out or any(code != 0 for code in result.returncodes):
                raise SystemExit(f"{name}: storescu failed (exit status {list(result.returncodes)})")
            wall = result.wall_s
        user_after, system_after = cpu_times_split(running.proc.pid)
        senders_after = resource.getrusage(resource.RUSAGE_CHILDREN)
        host_after = host_cpu_times()
        stored = wait_count(running, load.count, timeout=3.0)
        if stored != load.count:
            raise SystemExit(f"{name} holds {stored} of {load.count} instances")
    finally:
        receivers.stop(running)
    per_unit = 1000 / load.count
    return Split(
        rate=load.count / wall,
        receiver_user=(user_after - user_before) * per_unit,
        receiver_system=(system_after - system_before) * per_unit,
        senders_user=(senders_after.ru_utime - senders_before.ru_utime) * per_unit,
        senders_system=(senders_after.ru_stime - senders_before.ru_stime) * per_unit,
        idle=idle_share(host_before, host_after),
        steal=steal_share(host_before, host_after),
    )


def _share(value: float | None) -> str:
    return "  n/a" if value is None else f"{value:5.0%}"


def _summary(splits: dict[str, list[Split]], target: float, unit: str) -> str:
    median = statistics.median
    router, orthanc = splits["router-sqlite"], splits["orthanc"]
    measured = median(split.rate for split in router) / median(split.rate for split in orthanc)
    o, r = median(split.receiver for split in orthanc), median(split.receiver for split in router)
    s_o, s_r = median(split.senders for split in orthanc), median(split.senders for split in router)
    lines = [
        f"medians per {unit}: Orthanc {o:.2f} ms (its senders {s_o:.2f}), router {r:.2f} ms (its senders {s_r:.2f})",
        f"rate ratio, router against Orthanc: measured {measured:.2f}x",
    ]
    if unit == "instance":
        budget = router_budget(o, s_o, s_r, target)
        share = f" ({budget / o:.0%} of Orthanc's)" if o > 0 else ""
        predicted = f"{model_ratio(o, s_o, r, s_r):.2f}x" if r + s_r > 0 else "n/a (no CPU counted)"
        lines.append(
            f"for {target:.2f}x the router may use at most {budget:.2f} ms{share}; "
            f"CPU alone predicts {predicted} (holds while the machine is busy: idle near 0)"
        )
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    args = _arguments(argv)

    def _terminate(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGHUP, _terminate)
    work = Path(tempfile.mkdtemp(prefix="router-cpu-budget-"))
    registry = Registry()
    try:
        receivers = Receivers(registry, work, None, {})
        load = workload.build(args.size, args.count, work / "workload")
        unit = "association" if args.one_instance_associations else "instance"
        shape = "one association each" if args.one_instance_associations else f"{args.associations} association(s)"
        print(f"{args.count} x {LABELS[args.size]}, {shape}; ms of CPU per {unit}")
        if args.count < FEWEST_UNITS:
            print(f"note: under {FEWEST_UNITS} {unit}s per run, the 10 ms CPU clock ticks dominate these numbers")
        print(
            f"{'receiver':14s} {'rate/s':>7s} {'recv user':>9s} {'sys':>5s} {'senders user':>12s} {'sys':>5s} {'idle':>5s} {'steal':>5s}"
        )
        splits: dict[str, list[Split]] = {name: [] for name in RECEIVERS}
        for _ in range(args.rounds):
            for name in RECEIVERS:
                split = _measure(receivers, registry, name, load, args)
                splits[name].append(split)
                print(
                    f"{name:14s} {split.rate:7.1f} {split.receiver_user:9.2f} {split.receiver_system:5.2f} "
                    f"{split.senders_user:12.2f} {split.senders_system:5.2f} {_share(split.idle)} {_share(split.steal)}",
                    flush=True,
                )
        target = args.target if args.target is not None else TARGETS[args.associations]
        print(_summary(splits, target, unit))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        registry.stop_all()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
