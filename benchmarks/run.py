"""Measure the router's ingest and routing next to Orthanc, a bare pynetdicom SCP and DCMTK
storescp, in one run, and write the table to ``docs/benchmarks.md``.

    python benchmarks/run.py            # default: about 3-4 minutes on 2 cores
    python benchmarks/run.py --full     # 2,000 + 200 instances, median of 3, PostgreSQL routing too (~16 min)

Installs what it needs when missing (Debian dcmtk and orthanc, PyPI pydicom-data and psutil,
py-spy with --profile). See ``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shlex
import shutil
import signal
import sys
import tempfile
import time
import tomllib
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
sys.path.insert(0, str(BENCH_DIR))


def _reexec_in_venv() -> None:
    """Run under the project's virtual environment if the router is not importable here."""
    try:
        import router  # noqa: F401
    except ImportError:
        venv_python = REPO / ".venv" / "bin" / "python"
        in_venv = Path(sys.prefix).resolve() == (REPO / ".venv").resolve()
        if venv_python.exists() and not in_venv and "ROUTER_BENCH_REEXEC" not in os.environ:
            os.environ["ROUTER_BENCH_REEXEC"] = "1"
            os.execv(str(venv_python), [str(venv_python), *sys.argv])
        raise SystemExit("the router is not importable: activate the project's venv (pip install -e .) first") from None


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--full",
        action="store_true",
        help="2,000 x 40 KB and 200 x 512 KB, median of 3, routing cost on PostgreSQL too (about 16 min)",
    )
    parser.add_argument("--reps", type=int, help="repetitions per cell (default 1, --full 3); the median is reported")
    parser.add_argument("--small", type=int, help="number of 40 KB instances (default 400, --full 2000)")
    parser.add_argument("--large", type=int, help="number of 512 KB instances (default 40, --full 200)")
    parser.add_argument(
        "--nagle-cap",
        type=int,
        default=50,
        help="instances per run where anything runs with Nagle on (default 50; 0 skips those cells)",
    )
    parser.add_argument(
        "--receivers",
        default="router-sqlite,router-postgres,bare-pynetdicom,orthanc,storescp",
        help="comma-separated subset of the receivers",
    )
    parser.add_argument(
        "--router-option",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="extra router config, e.g. listener.max_pdu_length=0 (TOML value); repeatable",
    )
    parser.add_argument("--no-ingest", action="store_true", help="skip the ingest matrix")
    parser.add_argument("--no-routing", action="store_true", help="skip the routing-cost measurement")
    parser.add_argument("--no-memory", action="store_true", help="skip the 500 MB memory measurement")
    parser.add_argument(
        "--routing-postgres", action="store_true", help="routing cost on PostgreSQL too (default only with --full)"
    )
    parser.add_argument(
        "--profile", action="store_true", help="also py-spy the router during a 40 KB run (cpu and wall views)"
    )
    parser.add_argument("--skip-install", action="store_true", help="do not apt-get / pip install anything")
    parser.add_argument("--no-docs", action="store_true", help="do not rewrite docs/benchmarks.md (JSON only)")
    parser.add_argument(
        "--max-steal",
        type=float,
        metavar="SHARE",
        help="measure a run again (at most twice) when the hypervisor took more than SHARE (0-1) of "
        "the machine's CPU time during it (Linux steal; default: keep every run)",
    )
    parser.add_argument(
        "--work-dir", type=Path, help="parent folder of the temporary work folder (default: the system temp dir)"
    )
    parser.add_argument(
        "--keep-work", action="store_true", help="keep the work folder (receiver logs, archives) for inspection"
    )
    parser.add_argument(
        "--report-only",
        type=Path,
        metavar="RESULTS_JSON",
        help="measure nothing: rewrite docs/benchmarks.md from a results file of an earlier run",
    )
    args = parser.parse_args(argv)
    args.reps = args.reps or (3 if args.full else 1)
    args.small = args.small or (2000 if args.full else 400)
    args.large = args.large or (200 if args.full else 40)
    return args


def parse_router_options(items: list[str]) -> dict[str, Any]:
    """``section.key=value`` pairs, values parsed as TOML (bare words as strings)."""
    options: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or "." not in key:
            raise SystemExit(f"--router-option {item!r}: expected SECTION.KEY=VALUE")
        try:
            value = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw
        options[key.strip()] = value
    return options


def _log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def main(argv: list[str]) -> int:
    _reexec_in_venv()
    args = parse_args(argv)
    if args.report_only:
        from harness import report

        report.write_docs(REPO / "docs" / "benchmarks.md", report.markdown(json.loads(args.report_only.read_text())))
        _log(f"docs/benchmarks.md rewritten from {args.report_only}")
        return 0
    from harness import setup_env

    if not args.skip_install:
        setup_env.ensure_debian_packages()
        setup_env.ensure_pip_packages(profiler=args.profile)

    from harness import matrix, memory, profile, report, routing_cost, workload
    from harness.procs import Registry
    from harness.receivers import RECEIVERS, Receivers
    from harness.routerdb import Postgres

    names = [name.strip() for name in args.receivers.split(",") if name.strip()]
    unknown = set(names) - set(RECEIVERS)
    if unknown:
        raise SystemExit(f"unknown receivers {sorted(unknown)}; choose from {', '.join(RECEIVERS)}")
    router_options = parse_router_options(args.router_option)
    started = time.monotonic()
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    mode = "full" if args.full else "default"
    command = "python benchmarks/run.py" + (" " + shlex.join(argv) if argv else "")
    work = Path(tempfile.mkdtemp(prefix="router-bench-", dir=args.work_dir))
    registry = Registry()
    postgres = Postgres()
    notes: list[str] = []
    phases: dict[str, float] = {}
    results: dict[str, Any] = {
        "command": command,
        "started_utc": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M"),
        "config": {
            "mode": mode,
            "small": args.small,
            "large": args.large,
            "nagle_cap": args.nagle_cap,
            "reps": args.reps,
            "max_steal": args.max_steal,
            "stable_seconds": 1.0,
            "receivers": names,
            "router_options": router_options,
        },
        "notes": notes,
        "phases_s": phases,
    }
    if router_options:
        notes.append(f"router config overrides: {router_options}")

    def _terminate(signum: int, _frame: Any) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, _terminate)
    try:
        reason = postgres.available()
        if reason is not None:
            notes.append(f"PostgreSQL at 127.0.0.1:5432 not reachable ({reason}): router-postgres skipped")
            names = [name for name in names if name != "router-postgres"]
            pg: Postgres | None = None
        else:
            pg = postgres
        results["versions"] = setup_env.versions(REPO, pg.info() if pg else None)
        results["machine"] = {**setup_env.machine(), "disk": setup_env.disk(work)}
        load = os.getloadavg()[0]
        results["machine"]["load average at start"] = f"{load:.2f}"
        if load > 0.5:
            notes.append(
                f"the machine was not idle: load average {load:.2f} at start (other processes share the 2 cores); "
                "compare receivers within this run, and re-run before trusting small differences"
            )
        receivers = Receivers(registry, work, pg, router_options)
        _log(f"work folder {work}; building workloads")
        loads = {
            "small": workload.build("small", args.small, work / "workload"),
            "large": workload.build("large", args.large, work / "workload"),
        }
        results["workloads"] = {
            k: {"instances": w.count, "file_bytes": w.file_bytes, "studies": len(w.chunks)} for k, w in loads.items()
        }
        if not args.no_ingest:
            plan: list[tuple[matrix.Cell, list[str]]] = []
            for size in ("small", "large"):
                for nodelay in (True, False):
                    for assoc in (1, 4):
                        plan.append((matrix.Cell(size, assoc, nodelay), names))
            dcmtk = [name for name in names if name in ("orthanc", "storescp")]
            if dcmtk:
                # Diagnostic: a Nagle-off sender against the DCMTK receivers as shipped.
                plan.append((matrix.Cell("small", 1, True, receiver_nodelay=False), dcmtk))
            phase = time.monotonic()
            runs = matrix.run_matrix(receivers, plan, loads, args.nagle_cap, args.reps, args.max_steal)
            phases["ingest"] = time.monotonic() - phase
            results["ingest"] = {"runs": [run.to_json() for run in runs], "summary": matrix.summarize(runs)}
        else:
            results["ingest"] = {"runs": [], "summary": []}
        if not args.no_routing:
            phase = time.monotonic()
            results["routing"] = []
            backends: list[tuple[str, Postgres | None]] = [("sqlite", None)]
            if pg is not None and (args.full or args.routing_postgres):
                backends.append(("postgresql", pg))
            for backend, server in backends:
                for label, rads, studies in (("small", 20, 100), ("large", 2000, 100_000)):
                    url = server.new_schema() if server else None
                    try:
                        results["routing"].append(
                            routing_cost.measure(work, f"{backend} {label}", url, rads, 15, studies, repeats=7)
                        )
                    finally:
                        if server and url:
                            server.drop(url)
            phases["routing"] = time.monotonic() - phase
        if not args.no_memory:
            phase = time.monotonic()
            huge = workload.build_multiframe(work / "workload")
            mem_receivers = [
                name
                for name in ("router-sqlite", "router-postgres", "bare-pynetdicom", "orthanc", "storescp")
                if name in names
            ]
            if not args.full:
                mem_receivers = [name for name in mem_receivers if name != "router-postgres"]
            results["memory"] = [memory.measure(receivers, name, huge) for name in mem_receivers]
            huge.files[0].unlink()
            phases["memory"] = time.monotonic() - phase
        if args.profile:
            results_dir = BENCH_DIR / "results"
            results_dir.mkdir(exist_ok=True)
            phase = time.monotonic()
            results["profile"] = [
                profile.run(receivers, loads["small"], results_dir, stamp, idle) for idle in (False, True)
            ]
            phases["profile"] = time.monotonic() - phase
    finally:
        registry.stop_all()
        postgres.drop_all()
        if args.keep_work:
            _log(f"work folder kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    results["elapsed_s"] = time.monotonic() - started
    results.setdefault("machine", {})["load average at end"] = f"{os.getloadavg()[0]:.2f}"
    out_dir = BENCH_DIR / "results"
    out_dir.mkdir(exist_ok=True)
    json_path = out_dir / f"{stamp}-{mode}.json"
    results["json_name"] = json_path.name
    json_path.write_text(json.dumps(results, indent=1, default=str))
    _log(f"results: {json_path}")
    if not args.no_docs:
        docs = REPO / "docs" / "benchmarks.md"
        report.write_docs(docs, report.markdown(results))
        _log(f"table written to {docs}")
    _log(
        f"done in {results['elapsed_s'] / 60:.1f} min (" + ", ".join(f"{k} {v:.0f} s" for k, v in phases.items()) + ")"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
