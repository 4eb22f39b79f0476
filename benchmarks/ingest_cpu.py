"""CPU time of the router's ingest steps, in-process, without the network (issue 14).

Measures ``time.process_time`` (this process's user + system CPU, so other processes on the
machine do not count) per instance for: the header read (``read_header``), the data set hash,
and the whole of ``IntakeService.store`` (hash, file fsync, index statements, rename,
directory fsync, commit) on a fresh SQLite or PostgreSQL database, one thread or several.
Wall time is printed too, but on a shared machine only the CPU column is comparable.

    python benchmarks/ingest_cpu.py                      # SQLite, 500 instances of CT_small
    python benchmarks/ingest_cpu.py --threads 4          # 4 threads storing at once
    python benchmarks/ingest_cpu.py --pixel-kib 512      # 512 KiB of pixel data per instance
    python benchmarks/ingest_cpu.py --database-url postgresql+psycopg://postgres@127.0.0.1:5432/test
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=500)
    parser.add_argument("--threads", type=int, default=1)
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
        headers = [read_header(path) for path in files]
        temps = []
        for path in files:
            temp = app.archive.new_temp_path()
            shutil.copyfile(path, temp)
            temps.append(temp)
        sender = Sender("BENCHSCU", "127.0.0.1")
        chunks = [list(range(i, args.count, args.threads)) for i in range(args.threads)]

        def store_all() -> None:
            def run(indices: list[int]) -> None:
                for i in indices:
                    app.intake.store(headers[i], temps[i], sender)

            threads = [threading.Thread(target=run, args=(chunk,)) for chunk in chunks]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()

        _cpu(f"intake.store ({args.threads} thread(s))", args.count, store_all)
        print(f"load average {os.getloadavg()[0]:.2f}")
        app.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if schema is not None:
            with admin.begin() as connection:
                connection.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
