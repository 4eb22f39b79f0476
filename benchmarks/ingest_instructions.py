"""Instructions the router executes per received instance, counted by callgrind (issue 14).

The network benchmark's rates and CPU times move by 20-30 % between runs minutes apart on a
shared virtual machine (docs/benchmarks.md), more than most single levers change them. This
script counts instead of timing: `router serve` runs under ``valgrind --tool=callgrind`` with
instrumentation off while it starts, DCMTK ``storescu`` sends the benchmark's workload, and only
the receiving is counted (user-space instructions of every router process, ``Ir``), then
divided by the instances sent. The same code, workload and configuration give the same count
within a few percent (1-4 % in docs/benchmarks.md, section "Evening of 2026-12-06"), whatever
else the machine is doing.

What it does not see: time in the kernel (system calls, the copy into the page cache, fsync
waits, context switches), waits, and the hardware's speed. Two caveats when reading counts:
valgrind runs SHA-256 without the CPU's SHA extensions (OpenSSL's software path, about 28
instructions per byte hashed, where the hardware path takes a fraction of that time), and it
counts each byte a ``rep movsb`` copies as one instruction, so large memory copies weigh far
more here than in CPU time. Compare two builds with the same workload; use the network
benchmark for rates.

    python benchmarks/ingest_instructions.py                          # 40 KB x 100, 1 association
    python benchmarks/ingest_instructions.py --size large --count 40  # 512 KB instances
    python benchmarks/ingest_instructions.py --associations 4         # 4 storescu at once
    python benchmarks/ingest_instructions.py --size large --max-send-pdu 16384  # 16 KiB PDUs
    python benchmarks/ingest_instructions.py --repo /tmp/other-clone  # another checkout's router

Needs ``valgrind`` and DCMTK (``apt-get install valgrind dcmtk``) and the benchmark's workload
files (``pydicom-data`` for the 512 KB one). About 20 s of start-up plus 0.1 s per 40 KB
instance.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))

from harness import workload  # noqa: E402
from harness.procs import Registry, free_port, receiver_env, wait_logged  # noqa: E402
from harness.receivers import router_config  # noqa: E402
from harness.senders import send  # noqa: E402
from harness.setup_env import STORESCU  # noqa: E402

CALLED_AE = "ROUTER"
#: Longest wait, under valgrind, for the router to log "listening as" and for the sending, in seconds.
START_TIMEOUT = 600.0
_SUMMARY = re.compile(rb"^summary: (\d+)$", re.MULTILINE)


def _arguments(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=("small", "large"), default="small", help="40 KB or 512 KB instances")
    parser.add_argument("--count", type=int, default=100, help="instances sent (default 100)")
    parser.add_argument("--associations", type=int, choices=(1, 4), default=1, help="storescu processes at once")
    parser.add_argument(
        "--max-send-pdu",
        type=int,
        default=None,
        help="storescu's largest PDU in bytes (its --max-send-pdu; default: what the router offers, up to 128 KiB)",
    )
    parser.add_argument("--workers", type=int, default=None, help="listener.workers (default: the router's)")
    parser.add_argument("--repo", type=Path, default=BENCH_DIR.parent, help="checkout whose router runs")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (callgrind files)")
    return parser.parse_args(argv)


def _counted(folder: Path) -> int:
    """Instructions in the dumps taken at the end of the sending (``<pid>.1`` files), summed."""
    return sum(
        int(match.group(1))
        for dump in folder.glob("callgrind.*.1")
        if (match := _SUMMARY.search(dump.read_bytes())) is not None
    )


def main(argv: list[str]) -> int:
    args = _arguments(argv)
    for tool in ("valgrind", "callgrind_control", STORESCU):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} not found (apt-get install valgrind dcmtk)")
    work = Path(tempfile.mkdtemp(prefix="router-instructions-"))
    try:
        load = workload.build(args.size, args.count, work / "workload")
        if args.associations > 1 and len(load.chunks) != args.associations:
            raise SystemExit(f"the workload has {len(load.chunks)} studies; --associations 4 needs 4")
        port = free_port()
        config = work / "router.toml"
        overrides = {} if args.workers is None else {"listener.workers": args.workers}
        router_config(config, port, work / "data", None, overrides)
        dumps = work / "callgrind"
        dumps.mkdir()
        log = work / "router.log"
        command = [
            "valgrind",
            "--tool=callgrind",
            "--trace-children=yes",
            "--instr-atstart=no",
            f"--callgrind-out-file={dumps}/callgrind.%p",
            sys.executable,
            "-m",
            "router",
            "--config",
            str(config),
            "serve",
        ]
        registry = Registry()
        router = registry.start(command, env=receiver_env(), log=log, cwd=args.repo)
        try:
            try:
                wait_logged(log, "listening as", router, timeout=START_TIMEOUT)
            except (RuntimeError, TimeoutError) as exc:
                raise SystemExit(
                    f"the router did not start under valgrind ({exc}); log tail:\n{log.read_text()[-2000:]}"
                ) from None
            time.sleep(2.0)  # the receiving processes' own start-up settles
            subprocess.run(["callgrind_control", "--instr=on"], check=True, capture_output=True)
            options = () if args.max_send_pdu is None else ("--max-send-pdu", str(args.max_send_pdu))
            sent = send(
                registry, load, args.associations, True, port, CALLED_AE, work, timeout=START_TIMEOUT, options=options
            )
            subprocess.run(["callgrind_control", "--dump"], check=True, capture_output=True)
        finally:
            registry.stop_all()
        if sent.timed_out or any(sent.returncodes):
            raise SystemExit(f"storescu exited with {sent.returncodes} (--keep keeps the logs in {work})")
        total = _counted(dumps)
        print(
            f"{args.repo}: {args.size} x {load.count}, {args.associations} association(s)"
            f"{'' if args.max_send_pdu is None else f', PDUs of at most {args.max_send_pdu} bytes'}: "
            f"{total / load.count / 1e6:.3f} million instructions per instance "
            f"({total:,} in all, {sent.wall_s:.0f} s under valgrind)"
        )
        return 0
    finally:
        if args.keep:
            print(f"work folder kept: {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
