"""Property-based: malformed data sets and byte strings never crash the C-STORE handler.

Whatever arrives, the handler returns a status from :class:`StoreStatus` (never raises, so
pynetdicom never answers 0xC211), and answers Success only when the data set's bytes are kept
in the archive with a row (issue 3: "A property-based test (hypothesis) feeds malformed data sets
and byte strings to the handler: the listener never crashes and always answers a status")."""

from __future__ import annotations

import hashlib
import struct
import threading
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from pynetdicom import AE
from pynetdicom.sop_class import Verification
from sqlalchemy import func, select

from router.app import RouterApp
from router.db.models import Instance, InstanceConflict
from router.dicom.scp import StoreHandler
from router.dicom.status import ERROR_COMMENT_MAX, StoreStatus
from router.server import RouterServer
from router.services.intake import Sender
from tests.conftest import make_settings
from tests.dicom_bytes import (
    CT_IMAGE_STORAGE,
    EXPLICIT_LE,
    IMPLICIT_LE,
    LONG_VRS,
    dataset_bytes,
    explicit,
    explicit_undefined,
    identifiers,
    item,
)
from tests.dicom_helpers import send_paths, store_event, write_raw_part10

EXPLICIT_BE = "1.2.840.10008.1.2.2"
DEFLATED = "1.2.840.10008.1.2.1.99"
STATUSES = {int(code) for code in StoreStatus}


# ----------------------------------------------------------------------------- the handler, directly
@dataclass(frozen=True)
class Case:
    """One C-STORE: the data set bytes as received, their transfer syntax and the request UIDs."""

    data: bytes
    syntax: str
    sop_instance_uid: str
    sop_class_uid: str = CT_IMAGE_STORAGE


@pytest.fixture
def handler_app(tmp_path: Path) -> Iterator[RouterApp]:
    """A router app on SQLite with its archive folders: a real IntakeService, no listener."""
    app = RouterApp.open(make_settings(tmp_path, f"sqlite:///{tmp_path / 'router.db'}"), upgrade=True)
    app.archive.prepare()
    try:
        yield app
    finally:
        app.close()


def _archive_files(app: RouterApp) -> set[str]:
    root = app.archive.root
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and app.archive.incoming not in p.parents}


def _count(app: RouterApp, model: type) -> int:
    with app.sessions() as session:
        return int(session.scalar(select(func.count()).select_from(model)) or 0)


def _kept_copies(app: RouterApp, sop_instance_uid: str) -> dict[str, bytes]:
    """SHA-256 -> data set bytes of every copy of ``sop_instance_uid`` kept (archived or quarantined)."""
    with app.sessions() as session:
        paths = list(
            session.scalars(select(Instance.relative_path).where(Instance.sop_instance_uid == sop_instance_uid))
        )
        paths += session.scalars(
            select(InstanceConflict.relative_path).where(InstanceConflict.sop_instance_uid == sop_instance_uid)
        )
    copies = {}
    for relative in paths:
        data = dataset_bytes(app.archive.path(relative))
        copies[hashlib.sha256(data).hexdigest()] = data
    return copies


def handle(app: RouterApp, case: Case, name: str = "case") -> int:
    """Run the real StoreHandler on ``case`` as pynetdicom would; check the answer; return the status."""
    # pynetdicom writes the File Meta (from the request and the context) then the data set bytes
    # into a temporary file in the incoming folder, and deletes it after the handler returns.
    temp = write_raw_part10(app.archive.incoming / f"{name}.dcm", CT_IMAGE_STORAGE, "1.2.3.4", case.data, case.syntax)
    files_before, rows_before = _archive_files(app), _count(app, Instance)
    try:
        response = StoreHandler(app.intake, Sender)(
            store_event(temp, case.sop_instance_uid, case.sop_class_uid, "PROP_SCU  ")
        )
    finally:
        temp.unlink(missing_ok=True)
    status = int(response.Status)
    assert status in STATUSES
    if status == StoreStatus.SUCCESS:
        assert "ErrorComment" not in response
        kept = _kept_copies(app, case.sop_instance_uid)
        assert kept.get(hashlib.sha256(case.data).hexdigest()) == case.data  # these very bytes are kept
        assert _count(app, Instance) - rows_before in (0, 1)
    else:
        assert 0 < len(response.ErrorComment) <= ERROR_COMMENT_MAX
        assert _archive_files(app) == files_before  # nothing filed, under any key
        assert _count(app, Instance) == rows_before
    return status


# ----------------------------------------------------------------------------- strategies
valid_uids = st.from_regex(r"\A[1-9][0-9]{0,3}(\.(0|[1-9][0-9]{0,5})){1,8}\Z")
invalid_uids = st.one_of(
    st.sampled_from(
        [
            "",
            "../../x",
            "1.2.3\x00/../../x",
            "1.2\x003",
            "1.2.x",
            "1." + "2" * 70,
            "1..2",
            ".1.2",
            "1.2.",
            "1.2 3",
            "1\\2",
            "１.２",
        ]
    ),
    st.text(max_size=70),
)
uids = st.one_of(valid_uids, valid_uids, invalid_uids)
#: about one in eight invalid (st.one_of leans towards its later branches)
mostly_valid_uids = st.tuples(st.integers(0, 7), valid_uids, invalid_uids).map(lambda t: t[2] if t[0] == 1 else t[1])
text_values = st.binary(max_size=40)
charsets = st.one_of(
    st.none(),
    st.sampled_from(
        [b"ISO_IR 100", b"ISO IR 100", b"LATIN1", b"ISO_IR 192", b"\\ISO 2022 IR 87", b"GB18030", b"ISO_IR 6"]
    ),
    st.binary(max_size=16),
)
VRS = [
    b"AE",
    b"AS",
    b"AT",
    b"CS",
    b"DA",
    b"DS",
    b"DT",
    b"FD",
    b"FL",
    b"IS",
    b"LO",
    b"LT",
    b"OB",
    b"OD",
    b"OF",
    b"OW",
    b"PN",
    b"SH",
    b"SL",
    b"SQ",
    b"SS",
    b"ST",
    b"TM",
    b"UC",
    b"UI",
    b"UL",
    b"UN",
    b"UR",
    b"US",
    b"UT",
    b"XX",
    b"\x00\x00",
]
TAGS = [
    0x00080005,
    0x00080016,
    0x00080018,
    0x00080050,
    0x00080080,
    0x00080081,
    0x00081032,
    0x00090010,
    0x00091001,
    0x00100010,
    0x0020000D,
    0x0020000E,
    0x00321060,
    0x7FE00010,
    0xFFFEE000,
    0xFFFEE00D,
    0xFFFEE0DD,
]


@st.composite
def random_element(draw: st.DrawFn, implicit_vr: bool) -> bytes:
    """One element with a random tag, VR and value, and sometimes a length that lies."""
    tag = draw(st.one_of(st.sampled_from(TAGS), st.integers(0, 2**32 - 1)))
    value = draw(st.binary(max_size=40))
    length = draw(st.one_of(st.none(), st.sampled_from([0xFFFFFFFF, 0, 1, 2**31]), st.integers(0, 2**32 - 1)))
    length = len(value) if length is None else length
    group, element = tag >> 16, tag & 0xFFFF
    if implicit_vr:
        return struct.pack("<HHI", group, element, length) + value
    vr = draw(st.sampled_from(VRS))
    if vr in LONG_VRS:
        return struct.pack("<HH2sHI", group, element, vr, 0, length) + value
    return struct.pack("<HH2sH", group, element, vr, length & 0xFFFF) + value


@st.composite
def well_formed(draw: st.DrawFn) -> Case:
    """A valid data set carrying random text values, charsets and UIDs (often matching the request)."""
    sop, study, series = draw(mostly_valid_uids), draw(mostly_valid_uids), draw(mostly_valid_uids)
    middle = b""
    if draw(st.booleans()):
        middle += explicit(0x00080080, b"LO", draw(text_values))
    if draw(st.booleans()):
        middle += explicit(0x00080081, b"ST", draw(text_values))
    if draw(st.booleans()):
        middle += explicit(0x00090010, b"LO", b"ACME") + explicit_undefined(
            0x00091001, b"SQ", item(explicit(0x00091002, b"LO", draw(text_values))) * draw(st.integers(0, 3))
        )
    sop_class = draw(st.one_of(mostly_valid_uids, st.just(CT_IMAGE_STORAGE)))
    data = identifiers(
        sop, study, series, charset=draw(charsets), middle=middle, accession=draw(text_values), sop_class_uid=sop_class
    )
    request_uid = draw(st.one_of(st.just(sop), st.just(sop), st.just(sop), uids))
    request_class = draw(st.one_of(st.just(sop_class), st.just(sop_class), st.just(sop_class), uids))
    return Case(data, EXPLICIT_LE, request_uid, request_class)


@st.composite
def truncated(draw: st.DrawFn) -> Case:
    """A valid data set cut anywhere."""
    case = draw(well_formed())
    cut = draw(st.integers(0, len(case.data)))
    return Case(case.data[:cut], case.syntax, case.sop_instance_uid, case.sop_class_uid)


@st.composite
def random_elements(draw: st.DrawFn) -> Case:
    """Random elements (any tag, VR, value, length), with or without the identifying ones."""
    syntax = draw(st.sampled_from([EXPLICIT_LE, IMPLICIT_LE, EXPLICIT_BE]))
    implicit_vr = syntax == IMPLICIT_LE
    parts = draw(st.lists(random_element(implicit_vr), max_size=10))
    sop = draw(valid_uids)
    if draw(st.booleans()) and syntax == EXPLICIT_LE:
        parts.insert(draw(st.integers(0, len(parts))), identifiers(sop, draw(valid_uids), draw(valid_uids)))
    return Case(b"".join(parts), syntax, sop)


@st.composite
def arbitrary_bytes(draw: st.DrawFn) -> Case:
    """Any bytes after a valid File Meta, in any supported transfer syntax (deflated included)."""
    syntax = draw(st.sampled_from([EXPLICIT_LE, IMPLICIT_LE, EXPLICIT_BE, DEFLATED]))
    data = draw(st.one_of(st.binary(max_size=16), st.binary(min_size=32, max_size=300)))
    if syntax == DEFLATED and draw(st.booleans()):
        packer = zlib.compressobj(wbits=-zlib.MAX_WBITS)
        data = packer.compress(data) + packer.flush()
    return Case(data, syntax, draw(uids))


cases = st.one_of(well_formed(), well_formed(), well_formed(), truncated(), random_elements(), arbitrary_bytes())


@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(case=cases)
def test_handler_always_answers_a_store_status(handler_app: RouterApp, case: Case) -> None:
    event(f"0x{handle(handler_app, case):04X}")  # the spread shows with --hypothesis-show-statistics


# ----------------------------------------------------------------------------- known cases, exact answers
def _valid(sop: str = "1.2.826.0.1.3680043.10.1.1", **kwargs: object) -> bytes:
    return identifiers(sop, "1.2.826.0.1.3680043.10.1.2", "1.2.826.0.1.3680043.10.1.3", **kwargs)  # type: ignore[arg-type]


_SOP = "1.2.826.0.1.3680043.10.1.1"
# 60 bytes at the end: a private creator (12), then an undefined-length SQ (header 12) whose item
# (header 8) holds one LO (12), then the item (8) and sequence (8) delimiters.
_SEQ = explicit(0x00090010, b"LO", b"ACME") + explicit_undefined(
    0x00091001, b"SQ", item(explicit(0x00091002, b"LO", b"abcd"))
)
_WITH_SEQ = _valid(tail=_SEQ)
_deflated_garbage = Case(b"this is not deflate data", DEFLATED, _SOP)
_packer = zlib.compressobj(wbits=-zlib.MAX_WBITS)
_deflated_valid = Case(_packer.compress(_valid()) + _packer.flush(), DEFLATED, _SOP)


@pytest.mark.parametrize(
    ("case", "status"),
    [
        pytest.param(Case(_valid(), EXPLICIT_LE, _SOP), StoreStatus.SUCCESS, id="valid"),
        pytest.param(_deflated_valid, StoreStatus.SUCCESS, id="deflated"),
        pytest.param(_deflated_garbage, StoreStatus.CANNOT_DECODE, id="deflated-garbage"),  # was zlib.error: 0xC211
        pytest.param(Case(_valid()[:-3], EXPLICIT_LE, _SOP), StoreStatus.CANNOT_DECODE, id="last-value-cut"),
        pytest.param(
            Case(_WITH_SEQ, EXPLICIT_LE, _SOP), StoreStatus.SUCCESS, id="undefined-length-sequence"
        ),  # was 0xC210
        pytest.param(
            Case(_WITH_SEQ[:-38], EXPLICIT_LE, _SOP), StoreStatus.CANNOT_DECODE, id="cut-in-an-item-tag"
        ),  # was 0xC211
        pytest.param(
            Case(_WITH_SEQ[:-44], EXPLICIT_LE, _SOP), StoreStatus.CANNOT_DECODE, id="cut-in-an-element-header"
        ),  # was 0x0000
        pytest.param(Case(_WITH_SEQ[:-48], EXPLICIT_LE, _SOP), StoreStatus.SUCCESS, id="cut-between-elements"),
        pytest.param(Case(b"", EXPLICIT_LE, _SOP), StoreStatus.INVALID_STUDY_UID, id="empty-data-set"),
        pytest.param(
            Case(_valid("1.2\x003"), EXPLICIT_LE, "1.2\x003"), StoreStatus.INVALID_SOP_INSTANCE_UID, id="embedded-nul"
        ),  # was read as 1.23
        pytest.param(
            Case(_valid(), EXPLICIT_LE, "1.2.826.0.1.3680043.10.1.9"),
            StoreStatus.DATA_SET_MISMATCH,
            id="other-instance",
        ),
        pytest.param(
            Case(_valid(), EXPLICIT_LE, _SOP, "1.2.840.10008.5.1.4.1.1.4"),
            StoreStatus.DATA_SET_MISMATCH,
            id="other-class",
        ),
    ],
)
def test_known_malformed_inputs_get_their_status(handler_app: RouterApp, case: Case, status: StoreStatus) -> None:
    assert handle(handler_app, case) == status


def test_same_bytes_again_and_different_bytes_under_one_uid(handler_app: RouterApp) -> None:
    first, second = Case(_valid(), EXPLICIT_LE, _SOP), Case(_valid(accession=b"OTHER"), EXPLICIT_LE, _SOP)
    assert [handle(handler_app, c, f"n{i}") for i, c in enumerate([first, first, second, second])] == [0, 0, 0, 0]
    assert _count(handler_app, Instance) == 1
    assert _count(handler_app, InstanceConflict) == 1
    assert set(_kept_copies(handler_app, _SOP).values()) == {first.data, second.data}


def test_two_router_nodes_racing_on_one_uid_never_overwrite(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # DESIGN.md decision 6: nodes share one database and one archive; a per-process lock cannot
    # order them. Both nodes are held until each has its file fsynced and ready to index.
    settings = make_settings(tmp_path, f"sqlite:///{tmp_path / 'router.db'}")
    nodes = [RouterApp.open(settings, upgrade=True), RouterApp.open(settings)]
    nodes[0].archive.prepare()
    both_ready = threading.Barrier(2, timeout=10)
    for node in nodes:
        original = node.intake.archive.sync_temp

        def ready_then_wait(path, original=original):  # type: ignore[no-untyped-def]
            original(path)
            both_ready.wait()

        monkeypatch.setattr(node.intake.archive, "sync_temp", ready_then_wait)
    copies = [
        Case(_valid(accession=b"NODE-A"), EXPLICIT_LE, _SOP),
        Case(_valid(accession=b"NODE-B"), EXPLICIT_LE, _SOP),
    ]
    statuses: dict[int, int] = {}

    def store(index: int) -> None:
        node, case = nodes[index], copies[index]
        temp = write_raw_part10(node.archive.incoming / f"node{index}.dcm", CT_IMAGE_STORAGE, _SOP, case.data)
        response = StoreHandler(node.intake, Sender)(store_event(temp, _SOP, CT_IMAGE_STORAGE, "PROP_SCU  "))
        temp.unlink(missing_ok=True)
        statuses[index] = int(response.Status)

    try:
        threads = [threading.Thread(target=store, args=(i,)) for i in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert statuses == {0: StoreStatus.SUCCESS, 1: StoreStatus.SUCCESS}
        app = nodes[0]
        assert (_count(app, Instance), _count(app, InstanceConflict)) == (1, 1)
        with app.sessions() as session:
            row = session.scalars(select(Instance)).one()
        archived = dataset_bytes(app.archive.path(row.relative_path))
        assert row.dataset_sha256 == hashlib.sha256(archived).hexdigest()  # the row describes the file
        assert set(_kept_copies(app, _SOP).values()) == {copies[0].data, copies[1].data}
    finally:
        for node in nodes:
            node.close()


# ----------------------------------------------------------------------------- over the network
def _echo(port: int) -> int:
    ae = AE(ae_title="ECHO_SCU")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title="ROUTER")
    assert assoc.is_established
    try:
        return int(assoc.send_c_echo().Status)
    finally:
        assoc.release()


network_cases = st.one_of(well_formed(), truncated(), random_elements(), arbitrary_bytes()).filter(
    lambda c: c.syntax in (EXPLICIT_LE, IMPLICIT_LE)
)


@pytest.mark.network
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
@settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.filter_too_much],
)
@given(case=network_cases, request_uid=valid_uids)
def test_listener_answers_generated_input_over_the_network(
    server: RouterServer, tmp_path_factory: pytest.TempPathFactory, case: Case, request_uid: str
) -> None:
    # pynetdicom, as a sender, refuses invalid UIDs in the request: send a valid one.
    path = write_raw_part10(
        tmp_path_factory.mktemp("gen") / "x.dcm", CT_IMAGE_STORAGE, request_uid, case.data, case.syntax
    )
    (status,) = send_paths(server.ports[0], [path], contexts=[(CT_IMAGE_STORAGE, case.syntax)])
    assert status in STATUSES
    if status == StoreStatus.SUCCESS:
        assert hashlib.sha256(case.data).hexdigest() in _kept_copies(server.app, request_uid)
    assert _echo(server.ports[0]) == 0x0000  # the listener still serves
