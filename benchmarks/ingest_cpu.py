"""CPU time of the router's ingest steps, in-process, without the network (issue 14).

Measures ``time.process_time`` (this process's user + system CPU, so other processes on the
machine do not count) per instance for: the header read (``read_header``), the data set hash,
and the whole of ``IntakeService.store`` (hash, file fsync, index statements, rename,
directory fsync, commit) on a fresh SQLite or PostgreSQL database, one thread or several.
Wall time is printed too, but on a shared machine only the CPU column is comparable.

    python benchmarks/ingest_cpu.py                      # SQLite, 500 instances of CT_small
    python benchmarks/ingest_cpu.py --threads 4          # 4 threads storing at once
    python benchmarks/ingest_cpu.py --processes 2 --threads 2   # 2 processes x 2 threads, one database
    python benchmarks/ingest_cpu.py --pixel-kib 512      # 512 KiB of pixel data per instance
    python benchmarks/ingest_cpu.py --database-url postgresql+psycopg://postgres@127.0.0.1:5432/test
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import shutil
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from router.app import RouterApp  # noqa: E402
from router.archive import dataset_sha256  # noqa: E402
from router.config import Settings  # noqa: E402
from router.dicom.extract import read_header  # noqa: E402
from router.services.intake import Sender  # noqa: E402


def _workload(folder: Path, count: int, pixel_kib: int | None = None) -> list[Path]:
    source = dcmread(get_testdata_file("CT_small.dcm"))
    if pixel_kib:  # a larger instance: CT_small's header with pixel_kib KiB of 16-bit pixels
        source.Rows, source.Columns = 512, pixel_kib
        source.PixelData = bytes(range(256)) * (4 * pixel_kib)
    study, series = generate_uid(), generate_uid()
    paths = []
    for index in range(count):
        source.StudyInstanceUID = study
        source.SeriesInstanceUID = series
        source.SOPInstanceUID = generate_uid()
        source.file_meta.MediaStorageSOPInstanceUID = source.SOPInstanceUID
        path = folder / f"{index}.dcm"
        source.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def _cpu(label: str, count: int, step: object) -> None:
    wall, cpu = time.perf_counter(), time.process_time()
    step()  # type: ignore[operator]
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    print(f"{label:34s} {cpu / count * 1000:7.3f} ms CPU/instance  {wall / count * 1000:7.3f} ms wall/instance")


def _store_all(app: RouterApp, files: list[Path], threads: int) -> tuple[float, float, int]:
    """Store copies of ``files`` with ``threads`` threads: (CPU seconds of this process per
    instance, wall seconds, largest group-commit batch)."""
    headers = [read_header(path) for path in files]
    temps = []
    for path in files:
        temp = app.archive.new_temp_path()
        shutil.copyfile(path, temp)
        temps.append(temp)
    sender = Sender("BENCHSCU", "127.0.0.1")
    chunks = [list(range(i, len(files), threads)) for i in range(threads)]

    def run(indices: list[int]) -> None:
        for i in indices:
            app.intake.store(headers[i], temps[i], sender)

    workers = [threading.Thread(target=run, args=(chunk,)) for chunk in chunks]
    wall, cpu = time.perf_counter(), time.process_time()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    return cpu / len(files), wall, app.intake.commits.largest_batch


def _process_main(settings: Settings, files: list[Path], threads: int, start: Any, results: Any) -> None:
    app = RouterApp.open(settings)
    start.wait()
    results.put(_store_all(app, files, threads))
    app.close()


def _store_in_processes(settings: Settings, files: list[Path], processes: int, threads: int) -> None:
    """Each process stores its share of ``files`` into the one database, all at once (as the
    receiving processes of ``listener.workers`` do); prints each one's CPU per instance."""
    context = multiprocessing.get_context("spawn")
    start, results = context.Barrier(processes), context.Queue()
    shares = [files[i::processes] for i in range(processes)]
    children = [
        context.Process(target=_process_main, args=(settings, share, threads, start, results)) for share in shares
    ]
    for child in children:
        child.start()
    measured = [results.get() for _ in children]
    for child in children:
        child.join()
    label = f"intake.store ({processes} processes x {threads} thread(s))"
    cpu = ", ".join(f"{item[0] * 1000:.3f}" for item in measured)
    rate = len(files) / max(item[1] for item in measured)
    print(f"{label:34s} {cpu} ms CPU/instance  {rate:.0f} instances/s  largest batch {max(m[2] for m in measured)}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=500)
    parser.add_argument("--threads", type=int, default=1, help="threads storing at once (per process)")
    parser.add_argument("--processes", type=int, default=1, help="processes storing into one database at once")
    parser.add_argument("--database-url", default=None)
    parser.add_argument("--pixel-kib", type=int, default=None, help="pixel data size in KiB (default: CT_small's 32)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ingest-cpu-"))
    schema = None
    try:
        files = _workload(work / "src", args.count, args.pixel_kib) if (work / "src").mkdir() is None else []
        _cpu("read_header", args.count, lambda: [read_header(path) for path in files])
        _cpu("dataset_sha256", args.count, lambda: [dataset_sha256(path) for path in files])
        url = args.database_url or f"sqlite:///{work / 'router.db'}"
        if args.database_url and url.startswith("postgresql"):
            from sqlalchemy import create_engine, text
            from sqlalchemy.engine import make_url

            schema = f"bench_{uuid.uuid4().hex[:12]}"
            admin = create_engine(url)
            with admin.begin() as connection:
                connection.execute(text(f'CREATE SCHEMA "{schema}"'))
            url = make_url(url).update_query_dict({"options": f"-csearch_path={schema}"}).render_as_string(False)
        settings = Settings().with_data_dir(work / "var").replace("database", url=url)
        app = RouterApp.open(settings, upgrade=True)
        app.archive.prepare()
        if args.processes == 1:
            cpu, wall, _ = _store_all(app, files, args.threads)
            print(
                f"{f'intake.store ({args.threads} thread(s))':34s} {cpu * 1000:7.3f} ms CPU/instance  "
                f"{wall / args.count * 1000:7.3f} ms wall/instance"
            )
            app.close()
        else:
            app.close()  # each process opens its own
            _store_in_processes(settings, files, args.processes, args.threads)
        print(f"load average {os.getloadavg()[0]:.2f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if schema is not None:
            with admin.begin() as connection:
                connection.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
