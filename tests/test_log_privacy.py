"""No PHI in logs: names, IDs, birth dates and addresses never reach stderr/stdout at INFO and above.

The end-to-end test runs ``router serve`` as a real process, sends every sample study and a set of
adversarial data sets (invalid dates/times/ages in the patient module, a name that cannot be
decoded under its declared character set, a misspelled character set, a data set answered 0xC210
and one answered 0xC001 that carry a PatientName, an InstitutionAddress that disagrees with the
PatientAddress, a differing copy of an instance), waits for routing, stops it with SIGTERM and
searches everything the process wrote for every synthetic patient's name components, IDs, birth
dates and street addresses, in decoded, raw, escaped and mis-decoded forms.

The in-process tests check :mod:`router.logsafety` itself against the texts pydicom really
produces about invalid values.
"""

from __future__ import annotations

import io
import logging
import os
import re
import signal
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pydicom.config
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from sqlalchemy import create_engine, select, text
from sqlalchemy.exc import IntegrityError

from router.app import RouterApp
from router.config import load_settings
from router.db.models import Study
from router.dicom.status import StoreStatus
from router.logsafety import PhiRedactingFilter, configure_logging, withhold_peer_values
from tests.conftest import DEMO_CONFIG, REPO, SAMPLES, make_settings, running_router
from tests.dicom_bytes import RawAssociation, associate_rq, c_store_command, identifiers, p_data, pdu_item
from tests.dicom_helpers import CT_IMAGE_STORAGE, make_dataset, send_paths, write_part10, write_raw_part10

pytestmark = [pytest.mark.network, pytest.mark.slow]


# --------------------------------------------------------------------------- what must never appear
@dataclass(frozen=True)
class Patient:
    """The PHI of one synthetic patient (as text; raw byte forms are derived)."""

    name: str  # DICOM PN, components separated by ^
    patient_id: str
    birth_date: str = ""
    addresses: tuple[str, ...] = ()  # PatientAddress / InstitutionAddress values


def _sample_patients() -> list[Patient]:
    """Read the patients of sample_dicom/ from the files themselves (so a regeneration is covered)."""
    found: dict[str, Patient] = {}
    for path in sorted(SAMPLES.glob("*/*/*.dcm")):
        ds = dcmread(path, stop_before_pixels=True)
        addresses = tuple(str(ds.get(k, "") or "") for k in ("PatientAddress", "InstitutionAddress") if ds.get(k))
        found[str(ds.PatientID)] = Patient(str(ds.PatientName), str(ds.PatientID), str(ds.PatientBirthDate), addresses)
    return list(found.values())


def _variants(value: str) -> set[bytes]:
    """``value`` as it could reach a log: decoded, raw UTF-8/Latin-1, escaped, mis-decoded, replaced."""
    texts = {value, value.encode("unicode_escape").decode("ascii"), ascii(value)[1:-1]}
    for encoding in ("utf-8", "latin-1"):
        try:
            raw = value.encode(encoding)
        except UnicodeEncodeError:
            continue
        texts |= {
            raw.decode("latin-1"),  # mojibake, e.g. MÃ¼ller
            raw.decode("utf-8", "replace"),  # U+FFFD
            raw.decode("ascii", "replace"),
            raw.decode("ascii", "ignore"),
            str(raw)[2:-1],  # bytes repr, e.g. M\xfcller
        }
    out: set[bytes] = set()
    for item in texts:
        for encoding in ("utf-8", "latin-1"):
            try:
                out.add(item.encode(encoding))
            except UnicodeEncodeError:
                pass
    # long ASCII runs of a non-ASCII value survive every mangling (Zwiebelh, rgentraud)
    out |= {run.encode() for run in re.findall(r"[ -~]{5,}", value)}
    return {item for item in out if item.strip()}


def _address_parts(address: str) -> set[str]:
    """The whole address, each line / HL7 component with a digit or a space (street, city line)."""
    parts = {address}
    for part in re.split(r"\r\n|\n|\r|\^|, ", address):
        part = part.strip()
        if len(part) >= 5 and (" " in part or "-" in part):  # street lines, "Denton, TX 76201", ZIP+4
            parts.add(part)
    parts |= set(re.findall(r"\b\d{5}-\d{4}\b", address))  # ZIP+4 (a 5-digit ZIP alone could be a port)
    return parts


def forbidden(patients: list[Patient]) -> dict[bytes, str]:
    """Byte needles -> what they are (for the failure message)."""
    needles: dict[bytes, str] = {}
    for patient in patients:
        for component in filter(None, re.split(r"[\^=]", patient.name)):
            for form in _variants(component):
                needles[form] = f"name component {component!r} of {patient.patient_id}"
        for form in _variants(patient.name):
            needles[form] = f"name {patient.patient_id}"
        needles[patient.patient_id.encode()] = "patient id"
        if patient.birth_date:
            needles[patient.birth_date.encode()] = f"birth date of {patient.patient_id}"
            if re.fullmatch(r"\d{8}", patient.birth_date):
                d = patient.birth_date
                needles[f"{d[:4]}-{d[4:6]}-{d[6:]}".encode()] = f"birth date of {patient.patient_id}"
        for address in patient.addresses:
            for part in _address_parts(address):
                for form in _variants(part):
                    needles[form] = f"address part {part!r} of {patient.patient_id}"
    return needles


def find_phi(output: bytes, needles: dict[bytes, str]) -> list[str]:
    """Every needle found in ``output`` (words matched whole, case-sensitive), with its line."""
    hits = []
    for needle, what in needles.items():
        pattern = re.compile(rb"(?<![A-Za-z0-9])" + re.escape(needle) + rb"(?![a-z0-9])")
        match = pattern.search(output)
        if match:
            start = output.rfind(b"\n", 0, match.start()) + 1
            end = output.find(b"\n", match.end())
            hits.append(f"{what} ({needle!r}) in: {output[start : end if end != -1 else None]!r}")
    return hits


# --------------------------------------------------------------------------- adversarial data sets
ADVERSARIAL_PATIENTS = [
    Patient(
        "Quarkfeld^Ulrike^Maren",
        "ADV-7781-BD",
        "1999-13-45",
        ("4417 Quasar Court Apartment 12 Building C^^Austin^TX^78701-4417^USA",),
    ),
    Patient("Zwiebelhäuser^Jörgentraud", "ADV-7782-CS", "19810101", ("9 Straßenbahnweg Öde^^Boise^ID^83702^USA",)),
    Patient("Vexmoorling^Öttilie", "ADV-7783-MS", "19720506"),
    Patient("Krumbholzer^Wendeline", "ADV-7784-C210", "19770707"),
    Patient("Pfefferkornig^Isolde", "ADV-7785-C001", "19640229", ("31 Thornapple Row^^Helena^MT^59601^USA",)),
    Patient(
        "Sturmvogelsang^Adelheid",
        "ADV-7786-CF",
        "19590812",
        ("5150 Wobbleton Avenue^^Reno^NV^89501^USA", "88 Juniper Quarry Road\r\nBoise, ID 83702"),
    ),
    Patient("Sturmvogelsang^Brunhildea", "ADV-7786-CF", "19590812"),
]


def _with_raw_bytes(path: Path, replacements: dict[bytes, bytes]) -> Path:
    """Swap same-length placeholders in a written file for raw bytes (undecodable text)."""
    data = path.read_bytes()
    for placeholder, raw in replacements.items():
        assert len(placeholder) == len(raw) and data.count(placeholder) == 1
        data = data.replace(placeholder, raw)
    path.write_bytes(data)
    return path


def adversarial_files(directory: Path) -> list[tuple[str, Path, int]]:
    """(label, file, expected C-STORE status) for every adversarial case."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom objects to the invalid values written on purpose
        return _adversarial_files(directory)


def _adversarial_files(directory: Path) -> list[tuple[str, Path, int]]:
    cases: list[tuple[str, Path, int]] = []

    # invalid DA / TM / AS in the patient module, and an over-long PatientAddress (LO is 64 max)
    ds = make_dataset(PatientName="Quarkfeld^Ulrike^Maren", PatientID="ADV-7781-BD")
    ds.add_new("PatientBirthDate", "DA", "1999-13-45")
    ds.add_new("PatientBirthTime", "TM", "25:61:99")
    ds.add_new("PatientAge", "AS", "12Y3")
    ds.add_new("PatientAddress", "LO", "4417 Quasar Court Apartment 12 Building C^^Austin^TX^78701-4417^USA")
    cases.append(("invalid dates", write_part10(ds, directory / "bad_dates.dcm"), StoreStatus.SUCCESS))

    # name and address that fail to decode under the declared UTF-8 (Latin-1 bytes sent)
    ds = make_dataset(
        SpecificCharacterSet="ISO_IR 192",
        PatientName="ZwiebelhXuser^JXrgentraud",
        PatientID="ADV-7782-CS",
        PatientBirthDate="19810101",
        PatientAddress="9 StraXenbahnweg Xde^^Boise^ID^83702^USA",
    )
    path = write_part10(ds, directory / "undecodable.dcm")
    _with_raw_bytes(
        path,
        {
            b"ZwiebelhXuser^JXrgentraud": "Zwiebelhäuser^Jörgentraud".encode("latin-1"),
            b"StraXenbahnweg Xde": "Straßenbahnweg Öde".encode("latin-1"),
        },
    )
    cases.append(("undecodable name", path, StoreStatus.SUCCESS))

    # misspelled SpecificCharacterSet with Latin-1 bytes
    ds = make_dataset(
        SpecificCharacterSet="ISO_IR100",
        PatientName="Vexmoorling^Xttilie",
        PatientID="ADV-7783-MS",
        PatientBirthDate="19720506",
    )
    path = _with_raw_bytes(
        write_part10(ds, directory / "misspelled.dcm"),
        {b"Vexmoorling^Xttilie": "Vexmoorling^Öttilie".encode("latin-1")},
    )
    cases.append(("misspelled charset", path, StoreStatus.SUCCESS))

    # 0xC210: a PatientName, then an element claiming more bytes than were sent
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = CT_IMAGE_STORAGE
    ds.SOPInstanceUID = "1.2.826.0.1.3680043.10.7784.1"
    ds.PatientName = "Krumbholzer^Wendeline"
    ds.PatientID = "ADV-7784-C210"
    ds.PatientBirthDate = "19770707"
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, False
    write_dataset(buffer, ds)
    truncated = b"\x10\x00\x40\x10LO\x40\x00" + b"Krumbholzer Street"  # PatientAddress, 64 bytes claimed
    cases.append(
        (
            "0xC210",
            write_raw_part10(
                directory / "c210.dcm", CT_IMAGE_STORAGE, ds.SOPInstanceUID, buffer.getvalue() + truncated
            ),
            StoreStatus.CANNOT_DECODE,
        )
    )

    # 0xC001: no StudyInstanceUID, PatientName set
    ds = make_dataset(
        StudyInstanceUID=None,
        PatientName="Pfefferkornig^Isolde",
        PatientID="ADV-7785-C001",
        PatientBirthDate="19640229",
        PatientAddress="31 Thornapple Row^^Helena^MT^59601^USA",
    )
    cases.append(("0xC001", write_part10(ds, directory / "c001.dcm"), StoreStatus.INVALID_STUDY_UID))

    # InstitutionAddress (ID) that disagrees with the PatientAddress (NV): a location conflict;
    # then a differing copy of the same instance: quarantined as a conflict
    ds = make_dataset(
        PatientName="Sturmvogelsang^Adelheid",
        PatientID="ADV-7786-CF",
        PatientBirthDate="19590812",
        PatientAddress="5150 Wobbleton Avenue^^Reno^NV^89501^USA",
        InstitutionAddress="88 Juniper Quarry Road\r\nBoise, ID 83702",
        InstitutionName="Sample Boise Clinic",
    )
    cases.append(("address conflict", write_part10(ds, directory / "conflict.dcm"), StoreStatus.SUCCESS))
    ds.PatientName = "Sturmvogelsang^Brunhildea"
    cases.append(("differing copy", write_part10(ds, directory / "conflict_copy.dcm"), StoreStatus.SUCCESS))
    return cases


# --------------------------------------------------------------------------- the router process
@dataclass
class Served:
    process: subprocess.Popen
    stdout: Path
    stderr: Path
    port: int


def _write_config(tmp_path: Path) -> Path:
    config = tmp_path / "router.toml"
    config.write_text(
        "\n".join(
            [
                "[listener]",
                'host = "127.0.0.1"',
                "port = 0",
                "drain_timeout = 10.0",
                "[paths]",
                f'data_dir = "{(tmp_path / "var").as_posix()}"',
                "[routing]",
                "stable_seconds = 0.5",
                "poll_interval = 0.2",
                "[logging]",
                'level = "INFO"',
                "",
            ]
        ),
        encoding="utf-8",
    )
    return config


def _load_demo_roster(config: Path) -> None:
    app = RouterApp.open(load_settings(config), upgrade=True)
    try:
        app.roster.load_demo(
            *(
                (DEMO_CONFIG / name).read_text(encoding="utf-8")
                for name in ("facilities.csv", "roster.csv", "radiologists.csv")
            ),
            "tester",
        )
    finally:
        app.close()


@pytest.fixture
def serve(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Served]:
    """``python -m router --config <toml> [-v] serve`` with its output in files; killed if left running."""
    config = _write_config(tmp_path)
    _load_demo_roster(config)
    stdout, stderr = tmp_path / "stdout.log", tmp_path / "stderr.log"
    verbose = ["-v"] if getattr(request, "param", "INFO") == "DEBUG" else []
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONWARNINGS": "default"}
    env.pop("ROUTER_CONFIG", None)
    with open(stdout, "wb") as out, open(stderr, "wb") as err:
        process = subprocess.Popen(
            [sys.executable, "-m", "router", "--config", str(config), *verbose, "serve"],
            stdout=out,
            stderr=err,
            cwd=REPO,
            env=env,
        )
    try:
        deadline = time.monotonic() + 60
        port = None
        while port is None:
            match = re.search(rb"listening on \S+ port\(s\) (\d+)", stderr.read_bytes())
            if match:
                port = int(match.group(1))
            elif process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(
                    f"router serve did not start (exit {process.returncode}): {stderr.read_text(errors='replace')}"
                )
            else:
                time.sleep(0.1)
        yield Served(process, stdout, stderr, port)
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=15)


def _wait_until_routed(tmp_path: Path, expected_studies: int) -> dict[str, str]:
    engine = create_engine(f"sqlite:///{tmp_path / 'var' / 'router.db'}")
    try:
        deadline = time.monotonic() + 60
        while True:
            with engine.connect() as connection:
                rows = dict(connection.execute(select(Study.study_instance_uid, Study.status)).all())
            if len(rows) >= expected_studies and all(status != "receiving" for status in rows.values()):
                return {uid: str(status) for uid, status in rows.items()}
            assert time.monotonic() < deadline, f"not routed in time: {rows}"
            time.sleep(0.2)
    finally:
        engine.dispose()


@pytest.mark.filterwarnings("ignore:Unknown encoding:UserWarning")  # the test's own reads of the samples
@pytest.mark.parametrize("serve", ["INFO", "DEBUG"], indirect=True)
def test_router_serve_logs_no_phi(serve: Served, tmp_path: Path) -> None:
    # every sample study, under its own calling AE title
    sample_studies = set()
    for case in sorted(p for p in SAMPLES.glob("*/*") if p.is_dir()):
        files = sorted(case.glob("*.dcm"))
        assert send_paths(serve.port, files, calling_ae=case.parent.name) == [0x0000] * len(files), case
        sample_studies.add(str(dcmread(files[0], stop_before_pixels=True).StudyInstanceUID))
    assert len(sample_studies) == 8

    adversarial = adversarial_files(tmp_path)
    statuses = {label: send_paths(serve.port, [path], calling_ae="ADVERSARY")[0] for label, path, _ in adversarial}
    assert statuses == {label: int(status) for label, _, status in adversarial}

    # 8 samples + bad dates + undecodable + misspelled + conflict (its copy joins the same study)
    routed = _wait_until_routed(tmp_path, expected_studies=12)
    assert len(routed) == 12 and set(routed.values()) <= {"held", "assigned"}

    serve.process.send_signal(signal.SIGTERM)
    assert serve.process.wait(timeout=30) == 0
    stderr = serve.stderr.read_bytes()
    output = serve.stdout.read_bytes() + b"\n" + stderr
    lines = stderr.decode("utf-8", "replace").splitlines()
    assert "stopped" in lines  # drained: the CLI's last word
    assert any(line.endswith("router.server: stopped") for line in lines)  # full drain, nothing aborted

    # the log is not silent: it speaks of the work, by UID / accession / AE title
    assert re.search(rb"INFO router\.server: listening as ROUTER", output)
    assert re.search(
        rb"INFO router\.services\.routing: study [\d.]+ \(accession SYNACC0001\) assigned to NPI 10000000\d\d", output
    )
    assert re.search(rb"INFO router\.services\.routing: study [\d.]+ held: no_eligible_radiologist", output)
    assert b"C-STORE of 1.2.826.0.1.3680043.10.7784.1 from ADVERSARY: data set could not be decoded" in output
    assert re.search(rb"C-STORE of [\d.]+ from ADVERSARY refused with 0xC001: StudyInstanceUID missing", output)
    assert re.search(rb"SOP Instance [\d.]+ from ADVERSARY differs from the stored copy: quarantined", output)

    hits = find_phi(output, forbidden(_sample_patients() + ADVERSARIAL_PATIENTS))
    assert hits == []


def test_the_needles_find_what_they_should() -> None:
    """The search itself: every form of a name/address is found, and innocent text is not."""
    needles = forbidden(
        [Patient("Müller^Zoë", "SYN0004", "19920118", ("742 Evergreen Terrace, Springfield 62704-1234",))]
    )
    for leaked in [
        "name Müller".encode(),
        "name Müller".encode("latin-1"),
        b"value 'M\\xfcller^Zo\\xeb'",
        "MÃ¼ller".encode(),
        "M\ufffdller".encode(),
        b"patient SYN0004 here",
        b"born 1992-01-18",
        b"at 742 Evergreen Terrace",
        b"zip 62704-1234",
        "Zoë".encode("latin-1"),
    ]:
        assert find_phi(leaked, needles), leaked
    for innocent in [b"accession SYNACC0004 from US_CLINIC", b"study 2.25.19920118123 held", b"state IL"]:
        assert find_phi(innocent, needles) == [], innocent


# --------------------------------------------------------------------------- logsafety in-process
@pytest.fixture
def router_logging() -> Iterator[Callable[[], io.StringIO]]:
    """configure_logging() as the CLI does, writing to a buffer; global state restored afterwards.

    The test calls the returned function itself: pytest swaps ``warnings.showwarning`` per test
    phase, so the router's must be installed during the test's own phase to be the one in force
    (pytest restores its own at the end of the phase).
    """
    root = logging.getLogger()
    saved_handlers, saved_level = list(root.handlers), root.level
    saved_levels = {name: logging.getLogger(name).level for name in ("pydicom", "pynetdicom", "alembic")}
    stream = io.StringIO()

    def install() -> io.StringIO:
        configure_logging("INFO")
        for handler in root.handlers:
            if getattr(handler, "_router_handler", False):
                handler.setStream(stream)  # type: ignore[attr-defined]
        return stream

    try:
        yield install
    finally:
        for handler in list(root.handlers):
            if getattr(handler, "_router_handler", False):
                root.removeHandler(handler)
            else:
                handler.filters = [f for f in handler.filters if not isinstance(f, PhiRedactingFilter)]
        for handler in saved_handlers:
            if handler not in root.handlers:
                root.addHandler(handler)
        root.setLevel(saved_level)
        for name, level in saved_levels.items():
            logging.getLogger(name).setLevel(level)


def test_pydicom_warnings_about_invalid_values_are_reduced_to_category_and_origin(
    router_logging: Callable[[], io.StringIO], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # pydicom's default: warn about invalid values (a listener in this process may have turned
    # its reading validation off, router.dicom.scp.configure_pynetdicom)
    monkeypatch.setattr(pydicom.config.settings, "reading_validation_mode", pydicom.config.WARN)
    path = write_part10(make_dataset(PatientName="Quarkfeld^Ulrike"), tmp_path / "x.dcm")
    with warnings.catch_warnings(record=True) as raw:  # what pydicom would have printed
        warnings.simplefilter("always")
        read = dcmread(path)
        read.PatientBirthDate = "1999-13-45"
        read.PatientAge = "12Y3"
    assert [str(w.message).split(".")[0] for w in raw] == [
        "Invalid value for VR DA: '1999-13-45'",
        "Invalid value for VR AS: '12Y3'",
    ]
    # the same under the router's logging set-up
    logged_to = router_logging()
    read = dcmread(path)
    read.PatientBirthDate = "1999-13-45"
    read.PatientAge = "12Y3"
    warnings.warn(
        "patient Quarkfeld^Ulrike born 1999-13-45", UserWarning, stacklevel=1
    )  # not from pydicom: reduced too
    logging.getLogger("pydicom").warning("Invalid value for VR DA: '1999-13-45'")
    logging.getLogger("pydicom.valuerep").error("Invalid value for VR AS: '12Y3' of Quarkfeld")
    logging.getLogger("router.test").info("study 1.2.3 held: no_exam_state")
    logged = logged_to.getvalue()
    for value in ("1999-13-45", "12Y3", "Quarkfeld", "Ulrike"):
        assert value not in logged
    assert re.search(r"WARNING py\.warnings: UserWarning at \S*test_log_privacy\.py:\d+", logged)
    assert re.search(r"ERROR pydicom\.valuerep: pydicom\.valuerep error at \S+ \(text withheld", logged)
    assert "INFO router.test: study 1.2.3 held: no_exam_state" in logged
    assert "WARNING pydicom:" not in logged  # silenced below ERROR


def _raise_from_pydicom(value: str) -> None:
    from pydicom import config
    from pydicom.valuerep import validate_value

    validate_value("DA", value, config.RAISE)  # ValueError quoting the value


def test_tracebacks_withhold_messages_that_may_quote_values(router_logging: Callable[[], io.StringIO]) -> None:
    logged_to = router_logging()
    log = logging.getLogger("router.test")
    try:
        _raise_from_pydicom("-".join(["1999", "13", "45"]))
    except ValueError:
        log.exception("routing study id %s failed", 7)
    engine = create_engine("sqlite://")
    with engine.begin() as connection:
        connection.execute(text("CREATE TABLE t (a TEXT UNIQUE)"))
        address = " ".join(["123", "Elm", "St^^Denver^CO"])  # not a literal: source lines are in tracebacks
        connection.execute(text("INSERT INTO t VALUES (:a)"), {"a": address})
    try:
        with engine.begin() as connection:
            connection.execute(text("INSERT INTO t VALUES (:a)"), {"a": address})
    except IntegrityError as exc:
        assert "123 Elm St" in str(exc)  # SQLAlchemy quotes the parameters
        log.exception("index write failed")
    try:
        raise RuntimeError("outer") from KeyError("inner")
    except RuntimeError:
        log.exception("ours")
    logged = logged_to.getvalue()
    assert "1999-13-45" not in logged and "123 Elm St" not in logged
    assert "ERROR router.test: routing study id 7 failed" in logged
    assert "Traceback (most recent call last):" in logged
    assert "ValueError: (text withheld: raised in pydicom, may quote data set values)" in logged
    assert "[parameters: withheld]" in logged
    assert "sqlite3.IntegrityError" in logged or "IntegrityError" in logged
    assert "RuntimeError: outer" in logged and "KeyError: 'inner'" in logged  # our own texts stay


def test_filter_leaves_other_records_alone() -> None:
    record = logging.LogRecord("router.server", logging.INFO, __file__, 1, "listening as %s", ("ROUTER",), None)
    assert PhiRedactingFilter().filter(record) is True
    assert record.getMessage() == "listening as ROUTER"


def test_a_value_with_line_breaks_cannot_forge_a_log_line(router_logging: Callable[[], io.StringIO]) -> None:
    """A sender controls accession numbers and UIDs; one record stays one line, whoever logs it."""
    logged_to = router_logging()
    logging.getLogger("router.services.routing").info(
        "study %s (accession %s) assigned to NPI %s", "1.2.3", "ACC\nINFO router.server: stopped", "1000000012"
    )
    logging.getLogger("pynetdicom.events").warning("Exception in handler for SOP %s", "1.2.3\r\n4\x1b[2J")
    lines = logged_to.getvalue().splitlines()
    assert [line.split(" ", 2)[2] for line in lines] == [  # after the date and time
        "INFO router.services.routing: study 1.2.3 (accession ACC\\nINFO router.server: stopped) assigned to NPI 1000000012",
        "WARNING pynetdicom.events: Exception in handler for SOP 1.2.3\\r\\n4\\x1b[2J",
    ]


def test_a_thread_killed_by_an_exception_is_logged_through_the_filter(
    router_logging: Callable[[], io.StringIO],
) -> None:
    """pynetdicom's network threads can die on a malformed message; Python would print the
    traceback, exception text included, straight to stderr."""
    import threading

    logged_to = router_logging()
    thread = threading.Thread(target=_raise_from_pydicom, args=("-".join(["1999", "13", "45"]),), name="dul-test")
    thread.start()
    thread.join()
    logged = logged_to.getvalue()
    assert "ERROR router.threads: thread dul-test stopped on an uncaught ValueError" in logged
    assert "ValueError: (text withheld: raised in pydicom, may quote data set values)" in logged
    assert "1999-13-45" not in logged


def test_exception_text_with_line_breaks_stays_on_its_line(router_logging: Callable[[], io.StringIO]) -> None:
    """pynetdicom's error for a calling AE title with a line break quotes the title."""
    logged_to = router_logging()
    try:
        raise ValueError(
            "Invalid 'Calling AE Title' value 'X\nINFO router.server: stopped' - must not contain control characters"
        )
    except ValueError:
        logging.getLogger("pynetdicom.fsm").exception("State Machine received an exception")
    lines = logged_to.getvalue().splitlines()
    assert (
        lines[-1]
        == "ValueError: Invalid 'Calling AE Title' value 'X\\nINFO router.server: stopped' - must not contain control characters"
    )
    assert not any(line.startswith("INFO router.server: stopped") for line in lines)


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        (
            "Invalid 'Implementation Class UID' value 'DOE^JOHN 1970' - must not exceed 64 characters",
            "Invalid 'Implementation Class UID' value (13 characters withheld) - must not exceed 64 characters",
        ),
        (
            "Non-conformant 'Abstract Syntax Name' value 'it's 1.2.x'",
            "Non-conformant 'Abstract Syntax Name' value (10 characters withheld)",
        ),
        (
            "Invalid 'Calling AE Title' value - must not be an empty str",
            "Invalid 'Calling AE Title' value - must not be an empty str",
        ),
        (
            "The Transfer Syntax Name 'MARKER-PHI-123' is non-conformant",
            "The Transfer Syntax Name (14 characters withheld) is non-conformant",
        ),
        (
            "The Related General SOP Class UID 'MARKER' is non-conformant",
            "The Related General SOP Class UID (6 characters withheld) is non-conformant",
        ),
        ("Accepting Association", "Accepting Association"),
    ],
)
def test_pynetdicom_reports_of_a_peers_value_withhold_it(message: str, expected: str) -> None:
    assert withhold_peer_values(message) == expected


@pytest.mark.network
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_peers_malformed_user_information_is_not_quoted_in_the_log(
    router_logging: Callable[[], io.StringIO], tmp_path: Path, database_url: str
) -> None:
    """Found by a hostile-peer trial: pynetdicom quoted a malformed Implementation Class UID or
    Version Name at ERROR, whole (a sub-item holds up to 64 KiB): a peer could put anything,
    PHI included, into the router's log. The association is still refused as before."""
    logged_to = router_logging()
    needle = "-".join(["DOE^JOHN", "19700101", "MRN12345678"]) * 20
    with running_router(make_settings(tmp_path, database_url)) as server:
        for kind in (0x52, 0x55):
            raw = RawAssociation(server.ports[0])
            try:
                raw.send(associate_rq(extra_user_items=pdu_item(kind, needle.encode())))
                answer, _ = raw.read_pdu()
            finally:
                raw.close()
            assert answer in (0x02, 0x07)  # accepted (the second sub-item ignored) or aborted
        time.sleep(0.3)
    logged = logged_to.getvalue()
    assert "DOE^JOHN" not in logged
    assert "characters withheld" in logged


@pytest.mark.network
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_non_ascii_ae_title_is_one_line_without_a_traceback(
    router_logging: Callable[[], io.StringIO], tmp_path: Path, database_url: str
) -> None:
    """Found by a hostile-peer trial: pynetdicom.utils logged a calling AE title it cannot
    decode as ASCII with a whole traceback at ERROR; the association is aborted either way."""
    logged_to = router_logging()
    with running_router(make_settings(tmp_path, database_url)) as server:
        raw = RawAssociation(server.ports[0])
        try:
            raw.send(associate_rq(calling="CT_NÖRTH"))
            raw.read_pdu()
        finally:
            raw.close()
        time.sleep(0.3)
    logged = logged_to.getvalue()
    assert "pynetdicom.utils" in logged
    assert "Traceback" not in logged


@pytest.mark.network
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_an_affected_sop_instance_uid_that_is_not_a_uid_is_not_quoted(
    router_logging: Callable[[], io.StringIO], tmp_path: Path, database_url: str
) -> None:
    """Found by a hostile-peer trial: the router's own refusal line quoted an invalid Affected
    SOP Instance UID (any 64 printable characters a sender chose); now only its length."""
    logged_to = router_logging()
    affected = "1.2.3." + "-".join(["DOE", "JOHN", "MARKER"])
    with running_router(make_settings(tmp_path, database_url)) as server:
        raw = RawAssociation(server.ports[0])
        try:
            assert raw.associate() == 0x02
            raw.send(p_data(c_store_command(CT_IMAGE_STORAGE, affected), command=True, last=True))
            raw.send(p_data(identifiers(affected, "1.2.3", "1.2.4"), command=False, last=True))
            assert raw.read_pdu()[0] in (0x04, 0x07)  # refused with a status, or aborted
        finally:
            raw.close()
        time.sleep(0.3)
    logged = logged_to.getvalue()
    assert "DOE-JOHN" not in logged
