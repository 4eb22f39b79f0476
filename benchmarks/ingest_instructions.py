"""Instructions the router executes per received instance, counted by callgrind (issue 14).

The network benchmark's rates and CPU times move by 20-30 % between runs minutes apart on a
shared virtual machine (docs/benchmarks.md), more than most single levers change them. This
script counts instead of timing: `router serve` runs under ``valgrind --tool=callgrind`` with
instrumentation off while it starts, DCMTK ``storescu`` sends the benchmark's workload, and only
the receiving is counted (user-space instructions of every router process, ``Ir``), then
divided by the instances sent. The same code, workload and configuration give the same count
within about 1 % (docs/benchmarks.md, lever 29), whatever else the machine is doing.

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
    python benchmarks/ingest_instructions.py --repo /tmp/other-clone  # another checkout's router

Needs ``valgrind`` and DCMTK (``apt-get install valgrind dcmtk``) and the benchmark's workload
files (``pydicom-data`` for the 512 KB one). About 20 s of start-up plus 0.1 s per 40 KB
instance.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))

from harness import workload  # noqa: E402
from harness.procs import LOOPBACK, free_port  # noqa: E402
from harness.receivers import router_config  # noqa: E402
from harness.routerdb import SENDER_AE  # noqa: E402
from harness.setup_env import STORESCU  # noqa: E402

CALLED_AE = "ROUTER"
#: Longest wait for the router to log "listening as" under valgrind, in seconds.
START_TIMEOUT = 600.0
_SUMMARY = re.compile(rb"^summary: (\d+)$", re.MULTILINE)


def _arguments(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=("small", "large"), default="small", help="40 KB or 512 KB instances")
    parser.add_argument("--count", type=int, default=100, help="instances sent (default 100)")
    parser.add_argument("--associations", type=int, choices=(1, 4), default=1, help="storescu processes at once")
    parser.add_argument("--workers", type=int, default=None, help="listener.workers (default: the router's)")
    parser.add_argument("--repo", type=Path, default=BENCH_DIR.parent, help="checkout whose router runs")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (callgrind files)")
    return parser.parse_args(argv)


def _wait_listening(log: Path, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while b"listening as" not in log.read_bytes():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"the router did not start under valgrind; log tail:\n{log.read_text()[-2000:]}")
        time.sleep(0.5)


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
        env = {**os.environ, "TCP_NODELAY": "1"}
        env.pop("ROUTER_CONFIG", None)
        env.pop("ROUTER_DATA_DIR", None)
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
        with log.open("wb") as out:
            router = subprocess.Popen(
                command, cwd=args.repo, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        try:
            _wait_listening(log, router)
            time.sleep(2.0)  # the receiving processes' own start-up settles
            subprocess.run(["callgrind_control", "--instr=on"], check=True, capture_output=True)
            groups = [load.files] if args.associations == 1 else [list(chunk) for chunk in load.chunks]
            started = time.monotonic()
            senders = [
                subprocess.Popen(
                    [STORESCU, "-aet", SENDER_AE, "-aec", CALLED_AE, LOOPBACK, str(port), *map(str, files)],
                    env=env,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
                for files in groups
            ]
            codes = [sender.wait() for sender in senders]
            seconds = time.monotonic() - started
            subprocess.run(["callgrind_control", "--dump"], check=True, capture_output=True)
        finally:
            os.killpg(router.pid, signal.SIGTERM)
            try:
                router.wait(timeout=120)
            except subprocess.TimeoutExpired:
                os.killpg(router.pid, signal.SIGKILL)
                router.wait()
        if any(codes):
            raise SystemExit(f"storescu exited with {codes}; router log: {log}")
        total = _counted(dumps)
        print(
            f"{args.repo}: {args.size} x {load.count}, {args.associations} association(s): "
            f"{total / load.count / 1e6:.3f} million instructions per instance "
            f"({total:,} in all, {seconds:.0f} s under valgrind)"
        )
        return 0
    finally:
        if args.keep:
            print(f"work folder kept: {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
