"""Bad input over the real listener: odd character sets, odd lengths, private and undefined-length
sequences are stored byte for byte and answered Success; what cannot be decoded counts as absent.
The same SOP Instance UID sent at once by two associations with different bytes: one stored, one
quarantined, both Success (DESIGN.md decision 1; issue 3, "Bad input gets the right answer")."""

from __future__ import annotations

import hashlib
import struct
import threading
from io import BytesIO
from pathlib import Path

import pytest
from pydicom.uid import generate_uid
from pynetdicom.dsutils import decode
from sqlalchemy import select

from router.db.models import Instance, InstanceConflict, Study
from router.dicom.status import StoreStatus
from router.domain.enums import CptSource
from router.server import RouterServer
from tests.dicom_bytes import (
    CT_IMAGE_STORAGE,
    EXPLICIT_LE,
    IMPLICIT_LE,
    RawAssociation,
    c_store_command,
    dataset_bytes,
    explicit,
    explicit_undefined,
    identifiers,
    implicit,
    implicit_undefined,
    item,
    p_data,
    uid,
)
from tests.dicom_helpers import send_paths, write_raw_part10

pytestmark = [pytest.mark.network, pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)]

CAFE = "12 Café Street, Austin, TX 78701"
ASCII_ADDRESS = "1 Main Street, Austin, TX 78701"


def _rows(server: RouterServer, model: type) -> list:
    with server.app.sessions() as session:
        return list(session.scalars(select(model)))


def _send_and_check_stored(
    server: RouterServer, tmp_path: Path, data: bytes, sop_instance_uid: str, transfer_syntax: str = EXPLICIT_LE
) -> tuple[Instance, Study]:
    """Send ``data`` byte for byte; assert Success and that the archive holds exactly those bytes."""
    path = write_raw_part10(
        tmp_path / f"{sop_instance_uid}.dcm", CT_IMAGE_STORAGE, sop_instance_uid, data, transfer_syntax
    )
    assert send_paths(server.ports[0], [path], contexts=[(CT_IMAGE_STORAGE, transfer_syntax)]) == [StoreStatus.SUCCESS]
    (instance,) = _rows(server, Instance)
    assert instance.sop_instance_uid == sop_instance_uid
    stored = server.app.archive.path(instance.relative_path)
    assert dataset_bytes(stored) == data  # byte for byte, odd lengths and all
    assert instance.dataset_sha256 == hashlib.sha256(data).hexdigest()
    assert instance.transfer_syntax_uid == transfer_syntax
    assert list(server.app.archive.incoming.iterdir()) == []
    (study,) = _rows(server, Study)
    return instance, study


def _fields(name: bytes | None = None, address: bytes | None = None, patient_name: bytes | None = None) -> bytes:
    """InstitutionName (LO), InstitutionAddress (ST) and PatientName (PN), as raw values."""
    out = b""
    if name is not None:
        out += explicit(0x00080080, b"LO", name)
    if address is not None:
        out += explicit(0x00080081, b"ST", address)
    if patient_name is not None:
        out += explicit(0x00100010, b"PN", patient_name)
    return out


def _jis(text: str) -> bytes:
    """ISO 2022 IR 87 (JIS X 0208) bytes with their escape sequences, as in PS3.5 Annex H."""
    return text.encode("iso2022_jp")


YAMADA = b"Yamada^Tarou=" + _jis("山田") + b"^" + _jis("太郎") + b"=" + _jis("やまだ") + b"^" + _jis("たろう")


@pytest.mark.parametrize(
    ("charset", "fields", "institution_name", "institution_address"),
    [
        # misspelled defined terms are read as the term they spell
        pytest.param(b"ISO IR 100", _fields(address=CAFE.encode("latin-1")), None, CAFE, id="ISO IR 100"),
        pytest.param(b"ISO_IR100", _fields(address=CAFE.encode("latin-1")), None, CAFE, id="ISO_IR100"),
        pytest.param(b"iso_ir 100", _fields(address=CAFE.encode("latin-1")), None, CAFE, id="lowercase"),
        # an unknown term is no declaration: 8-bit text cannot be decoded, ASCII still can
        pytest.param(
            b"LATIN1", _fields(b"Austin Imaging", CAFE.encode("latin-1")), "Austin Imaging", None, id="LATIN1"
        ),
        pytest.param(
            b"ISO_IR 192\\XYZ", _fields(address="1 Peña Blvd, Denver, CO".encode()), None, None, id="one-unknown-term"
        ),
        # no declaration: default repertoire only (PS3.5 6.1.2.1)
        pytest.param(
            None, _fields(b"Austin Imaging", CAFE.encode("latin-1")), "Austin Imaging", None, id="absent-8-bit"
        ),
        pytest.param(None, _fields(address=ASCII_ADDRESS.encode()), None, ASCII_ADDRESS, id="absent-ascii"),
        pytest.param(None, _fields(address="1 Peña Blvd, Denver, CO".encode()), None, None, id="absent-utf8"),
        # Windows-1252 smart quotes (0x93, 0x94) under Latin-1 are C1 controls, not text
        pytest.param(
            b"ISO_IR 100",
            _fields(b"Austin Imaging", "“Main” Street, Austin, TX".encode("cp1252")),
            "Austin Imaging",
            None,
            id="cp1252-under-latin1",
        ),
        pytest.param(b"ISO_IR 100", _fields(address=CAFE.encode("latin-1")), None, CAFE, id="latin1-under-latin1"),
        pytest.param(
            b"ISO_IR 100",
            _fields(address="東京都千代田区".encode("shift_jis")),
            None,
            None,
            id="shift-jis-under-latin1",
        ),
        pytest.param(
            b"ISO_IR 192",
            _fields(address="1 Peña Blvd, Denver, CO".encode()),
            None,
            "1 Peña Blvd, Denver, CO",
            id="utf8",
        ),
        pytest.param(b"ISO_IR 192", _fields(address=CAFE.encode("latin-1")), None, None, id="latin1-under-utf8"),
        # ISO 2022 with code extensions (PS3.5 6.1.2.5, Annex H)
        pytest.param(
            b"\\ISO 2022 IR 87",
            _fields(_jis("東京病院"), ASCII_ADDRESS.encode(), YAMADA),
            "東京病院",
            ASCII_ADDRESS,
            id="iso2022-ir87",
        ),
        pytest.param(
            b"\\ISO 2022 IR 87",
            _fields(b"\x1b$BEl5~\x1b(", ASCII_ADDRESS.encode(), YAMADA),
            None,
            ASCII_ADDRESS,
            id="broken-escape",
        ),
        pytest.param(
            b"\\ISO 2022 IR 87",
            _fields(b"\x1b$ZEl5~", ASCII_ADDRESS.encode()),
            None,
            ASCII_ADDRESS,
            id="unknown-escape",
        ),
        # control characters: CR LF allowed in ST, others are not (PS3.5 6.1.3)
        pytest.param(
            b"ISO_IR 100",
            _fields(address=b"1 Main Street\r\nAustin, TX 78701"),
            None,
            "1 Main Street\r\nAustin, TX 78701",
            id="crlf",
        ),
        pytest.param(b"ISO_IR 100", _fields(address=b"1 Main\x01 Street, Austin, TX"), None, None, id="c0-control"),
    ],
)
def test_character_set_trouble_is_stored_byte_for_byte_and_undecodable_text_counts_as_absent(
    server: RouterServer,
    tmp_path: Path,
    charset: bytes | None,
    fields: bytes,
    institution_name: str | None,
    institution_address: str | None,
) -> None:
    sop, study_uid, series_uid = generate_uid(), generate_uid(), generate_uid()
    data = identifiers(sop, study_uid, series_uid, charset=charset, middle=fields)
    _, study = _send_and_check_stored(server, tmp_path, data, sop)
    assert study.study_instance_uid == study_uid
    assert study.accession_number == "ACC-1"  # the ASCII fields are still read
    assert study.modalities == "CT"
    assert study.institution_name == institution_name
    assert study.institution_address == institution_address


@pytest.mark.parametrize(
    "odd", ["1.2.826.0.1.3680043.10.543.1", "1.2.826.0.1.3680043.10.543.12"], ids=["28-chars", "29-chars"]
)
def test_odd_length_values_without_padding_are_stored_and_read(server: RouterServer, tmp_path: Path, odd: str) -> None:
    # An odd-length accession number and (for the 29-character UID) an odd-length SOP Instance
    # UID, neither padded: invalid encoding (PS3.5 7.1.1), but nothing that stops a tolerant read.
    data = identifiers(odd, generate_uid(), generate_uid(), accession=b"ACC-123", odd_accession=True, pad_uids=False)
    assert odd.encode() + b"\x08\x00\x50\x00SH\x07\x00ACC-123\x08\x00" in data  # really unpadded, length 7
    instance, study = _send_and_check_stored(server, tmp_path, data, odd)
    assert instance.relative_path.endswith(f"/{odd}.dcm")
    assert study.accession_number == "ACC-123"


def _private_implicit_sequence() -> bytes:
    nested = implicit(0x00091002, b"abcd") + implicit_undefined(0x00091003, item(implicit(0x00091004, b"xyzw")))
    return implicit(0x00090010, b"ACME 1.0") + implicit_undefined(
        0x00091001, item(nested) + item(b"") + item(implicit(0x00091005, b"defined "), undefined=False)
    )


def _implicit_identifiers(sop: str, study_uid: str, series_uid: str, middle: bytes) -> bytes:
    return (
        implicit(0x00080005, b"ISO_IR 100")
        + implicit(0x00080016, uid(CT_IMAGE_STORAGE))
        + implicit(0x00080018, uid(sop))
        + implicit(0x00080050, b"ACC-1 ")
        + implicit(0x00080060, b"CT")
        + middle
        + implicit(0x0020000D, uid(study_uid))
        + implicit(0x0020000E, uid(series_uid))
    )


def _deep_sq(depth: int) -> bytes:
    body = explicit(0x00091006, b"LO", b"deep")
    for level in range(depth):
        body = explicit(0x00091004, b"LO", f"level {level}".encode()) + explicit_undefined(
            0x00091003, b"SQ", item(body)
        )
    return body


# Items of a UN element of undefined length are implicit VR little endian (PS3.5 6.2.2).
_UN_ITEMS = item(implicit(0x00091002, b"abcd") + implicit_undefined(0x00091003, item(implicit(0x00091004, b"xyzw"))))
_CPT = item(
    explicit(0x00080100, b"SH", b"71260")
    + explicit(0x00080102, b"SH", b"C4")
    + explicit(0x00080104, b"LO", b"CT chest with contrast")
)


@pytest.mark.parametrize(
    ("syntax", "middle", "codes"),
    [
        pytest.param(IMPLICIT_LE, _private_implicit_sequence(), None, id="implicit-private-undefined"),
        pytest.param(
            EXPLICIT_LE,
            explicit(0x00090010, b"LO", b"ACME 1.0") + explicit_undefined(0x00091001, b"UN", _UN_ITEMS),
            None,
            id="explicit-UN-undefined",
        ),
        pytest.param(
            EXPLICIT_LE,
            explicit(0x00090010, b"LO", b"ACME 1.0")
            + explicit_undefined(0x00091001, b"SQ", item(_deep_sq(6)) + item(b"")),
            None,
            id="explicit-SQ-nested-6-deep",
        ),
        pytest.param(
            EXPLICIT_LE,
            explicit(0x00090010, b"LO", b"ACME 1.0") + explicit(0x00091001, b"SQ", item(_deep_sq(2), undefined=False)),
            None,
            id="defined-SQ-holding-undefined",
        ),
        # a standard sequence of undefined length still yields its derived fields
        pytest.param(
            EXPLICIT_LE,
            explicit_undefined(0x00081032, b"SQ", _CPT),
            [
                {
                    "value": "71260",
                    "scheme": "C4",
                    "meaning": "CT chest with contrast",
                    "source": CptSource.PROCEDURE_CODE_SEQUENCE.value,
                }
            ],
            id="procedure-code-sequence-undefined",
        ),
    ],
)
def test_private_and_undefined_length_sequences_are_stored_byte_for_byte(
    server: RouterServer, tmp_path: Path, syntax: str, middle: bytes, codes: list | None
) -> None:
    sop, study_uid, series_uid = generate_uid(), generate_uid(), generate_uid()
    if syntax == IMPLICIT_LE:
        data = _implicit_identifiers(sop, study_uid, series_uid, middle)
    else:
        data = identifiers(sop, study_uid, series_uid, middle=middle)
    instance, study = _send_and_check_stored(server, tmp_path, data, sop, syntax)
    # The UIDs come after the sequence: reading them proves the walk got past it.
    assert instance.relative_path == f"{study_uid}/{series_uid}/{sop}.dcm"
    assert study.accession_number == "ACC-1"
    assert study.procedure_codes == codes


def test_truncated_undefined_length_sequence_is_undecodable(server: RouterServer, tmp_path: Path) -> None:
    sop = generate_uid()
    whole = identifiers(
        sop,
        generate_uid(),
        generate_uid(),
        tail=explicit(0x00090010, b"LO", b"ACME") + explicit_undefined(0x00091001, b"SQ", item(_deep_sq(2))),
    )
    for cut in (len(whole) - 8, len(whole) - 12):  # without the sequence delimiter; inside the last item
        path = write_raw_part10(tmp_path / f"cut{cut}.dcm", CT_IMAGE_STORAGE, sop, whole[:cut])
        assert send_paths(server.ports[0], [path], contexts=[(CT_IMAGE_STORAGE, EXPLICIT_LE)]) == [
            StoreStatus.CANNOT_DECODE
        ]
    assert _rows(server, Instance) == []
    assert list(server.app.archive.incoming.iterdir()) == []


@pytest.mark.parametrize("cut", [1, 7, 11], ids=["1-byte", "7-bytes", "11-bytes"])
def test_a_data_set_shorter_than_its_first_element_header_is_undecodable(server: RouterServer, cut: int) -> None:
    """Regression: a data set cut inside its first element header was read as empty (its bytes
    taken for a File Meta element cut short) and answered 0xC001, missing Study UID. Sent raw:
    pynetdicom's SCU reads the file the same way and would send an empty data set."""
    sop = generate_uid()
    whole = identifiers(sop, generate_uid(), generate_uid())
    raw = RawAssociation(server.ports[0])
    try:
        assert raw.associate(max_pdu=0) == 0x02  # A-ASSOCIATE-AC
        raw.send(p_data(c_store_command(CT_IMAGE_STORAGE, sop), command=True, last=True))
        raw.send(p_data(whole[:cut], command=False, last=True))
        kind, pdu = raw.read_pdu()
    finally:
        raw.close()
    assert kind == 0x04  # P-DATA-TF: the C-STORE-RSP
    assert decode(BytesIO(pdu[6:]), True, True).Status == StoreStatus.CANNOT_DECODE
    assert _rows(server, Instance) == []


def _big_variant(sop: str, study_uid: str, series_uid: str, fill: int) -> bytes:
    # about 4 MB of private OB so that the two transfers overlap in time
    blob = explicit(0x00090010, b"LO", b"ACME") + explicit(0x00091010, b"OB", bytes([fill]) * (4 << 20))
    return identifiers(sop, study_uid, series_uid, tail=blob)


@pytest.mark.parametrize("round_", range(3))
def test_same_uid_sent_concurrently_with_different_bytes(server: RouterServer, tmp_path: Path, round_: int) -> None:
    sop, study_uid, series_uid = generate_uid(), generate_uid(), generate_uid()
    variants = [_big_variant(sop, study_uid, series_uid, fill) for fill in (0x11, 0x22)]
    paths = [write_raw_part10(tmp_path / f"v{i}.dcm", CT_IMAGE_STORAGE, sop, data) for i, data in enumerate(variants)]
    start = threading.Barrier(2)
    statuses: dict[int, list[int | None]] = {}

    def send(index: int) -> None:
        start.wait()
        statuses[index] = send_paths(
            server.ports[0], [paths[index]], calling_ae=f"SENDER_{index}", contexts=[(CT_IMAGE_STORAGE, EXPLICIT_LE)]
        )

    threads = [threading.Thread(target=send, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert statuses == {0: [StoreStatus.SUCCESS], 1: [StoreStatus.SUCCESS]}

    (instance,) = _rows(server, Instance)
    (conflict,) = _rows(server, InstanceConflict)
    archive = server.app.archive
    kept = dataset_bytes(archive.path(instance.relative_path))
    quarantined = dataset_bytes(archive.path(conflict.relative_path))
    assert {kept, quarantined} == set(variants)  # one of each, nothing overwritten or lost
    assert instance.dataset_sha256 == hashlib.sha256(kept).hexdigest()
    assert conflict.dataset_sha256 == hashlib.sha256(quarantined).hexdigest()
    assert conflict.sop_instance_uid == sop
    assert conflict.relative_path == f".quarantine/{sop}/{conflict.dataset_sha256}.dcm"
    winner = 0 if kept == variants[0] else 1
    assert (instance.calling_ae_title, conflict.calling_ae_title) == (f"SENDER_{winner}", f"SENDER_{1 - winner}")
    (study,) = _rows(server, Study)
    assert study.instance_count == 1
    assert list(archive.incoming.iterdir()) == []


JPEG_BASELINE = "1.2.840.10008.1.2.4.50"


def _encapsulated(fragments: list[bytes]) -> bytes:
    """Encapsulated Pixel Data (PS3.5 A.4): empty Basic Offset Table, fragments, delimiter."""
    return explicit_undefined(
        0x7FE00010, b"OB", item(b"", undefined=False) + b"".join(item(f, undefined=False) for f in fragments)
    )


def test_encapsulated_pixel_data_is_checked_to_its_delimiter(server: RouterServer, tmp_path: Path) -> None:
    """A compressed image cut short in transfer is refused (the sender keeps and resends it),
    not stored as if whole; the whole one is stored byte for byte."""
    sop, study_uid, series_uid = generate_uid(), generate_uid(), generate_uid()
    whole = identifiers(
        sop,
        study_uid,
        series_uid,
        tail=_encapsulated([b"\xff\xd8" + bytes(1000) + b"\xff\xd9", b"\xff\xd8" + bytes(500) + b"\xff\xd9"]),
    )
    context = [(CT_IMAGE_STORAGE, JPEG_BASELINE)]
    for cut in (8, 100, 600):  # no delimiter; inside the second fragment; inside the first
        path = write_raw_part10(
            tmp_path / f"cut{cut}.dcm", CT_IMAGE_STORAGE, sop, whole[:-cut], transfer_syntax=JPEG_BASELINE
        )
        assert send_paths(server.ports[0], [path], contexts=context) == [StoreStatus.CANNOT_DECODE]
    wrong_item = whole[:-8] + struct.pack("<HHI", 0xFFFE, 0xE00D, 0)  # an item delimiter where the sequence ends
    path = write_raw_part10(tmp_path / "wrong.dcm", CT_IMAGE_STORAGE, sop, wrong_item, transfer_syntax=JPEG_BASELINE)
    assert send_paths(server.ports[0], [path], contexts=context) == [StoreStatus.CANNOT_DECODE]
    assert _rows(server, Instance) == []
    path = write_raw_part10(tmp_path / "whole.dcm", CT_IMAGE_STORAGE, sop, whole, transfer_syntax=JPEG_BASELINE)
    assert send_paths(server.ports[0], [path], contexts=context) == [StoreStatus.SUCCESS]
    (instance,) = _rows(server, Instance)
    assert dataset_bytes(server.app.archive.path(instance.relative_path)) == whole


@pytest.mark.parametrize(
    ("syntax", "frames", "fragments", "status"),
    [
        pytest.param(JPEG_BASELINE, 3, 3, StoreStatus.SUCCESS, id="one-fragment-per-frame"),
        pytest.param(JPEG_BASELINE, 3, 4, StoreStatus.SUCCESS, id="a-frame-in-two-fragments"),
        pytest.param(JPEG_BASELINE, 3, 2, StoreStatus.CANNOT_DECODE, id="a-frame-missing"),
        pytest.param("1.2.840.10008.1.2.4.102", 30, 1, StoreStatus.SUCCESS, id="MPEG-4-one-stream"),
    ],
)
def test_fragments_cannot_be_fewer_than_frames(
    server: RouterServer, tmp_path: Path, syntax: str, frames: int, fragments: int, status: int
) -> None:
    """PS3.5 A.4: a fragment holds data of one frame only (video streams excepted)."""
    sop = generate_uid()
    pixel = _encapsulated([b"\xff\xd8" + bytes(100) + b"\xff\xd9"] * fragments)
    data = identifiers(
        sop, generate_uid(), generate_uid(), tail=explicit(0x00280008, b"IS", str(frames).encode()) + pixel
    )
    path = write_raw_part10(tmp_path / "frames.dcm", CT_IMAGE_STORAGE, sop, data, transfer_syntax=syntax)
    assert send_paths(server.ports[0], [path], contexts=[(CT_IMAGE_STORAGE, syntax)]) == [status]
    assert len(_rows(server, Instance)) == (1 if status == StoreStatus.SUCCESS else 0)
