"""Billing arithmetic: professional CPT lines (infrastructure cost: tests/test_accrual.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from router.domain.billing import (
    MAP_INFERRED_REASON,
    BillingLine,
    ProcedureCode,
    resolve_billing_lines,
)
from router.domain.cpt_map import (
    CptMap,
    body_part_key,
    description_words,
    validate_cpt_code,
)
from router.domain.enums import CptSource
from router.errors import DataFileError, ValidationError

CONFIG_MAP = Path(__file__).resolve().parent.parent / "config" / "cpt_map_2026.csv"
HEADER = "cpt,modality,body_part_hints,description_hints,summary,pc_tc_split"

PCS = CptSource.PROCEDURE_CODE_SEQUENCE
RPCS = CptSource.REQUESTED_PROCEDURE_CODE_SEQUENCE


@pytest.fixture(scope="module")
def cpt_map() -> CptMap:
    return CptMap.from_csv_text(CONFIG_MAP.read_text(encoding="utf-8"), "2026")


# --- CPT code format --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [("71046", "71046"), (" 71046 ", "71046"), ("0042T", "0042T"), ("0042t", "0042T"), ("3008F", "3008F")],
)
def test_valid_cpt_codes(value: str, expected: str) -> None:
    assert validate_cpt_code(value) == expected


@pytest.mark.parametrize("value", ["7104", "710466", "7104A", "F1046", "0042X", "71O46", "", "00 42T", "0042TT"])
def test_malformed_cpt_codes(value: str) -> None:
    with pytest.raises(ValidationError, match="must be 5 digits or 4 digits followed by F or T"):
        validate_cpt_code(value)


@pytest.mark.parametrize("value", ["71010", "71020", "74000", "74020", "71035", "74010"])
def test_deleted_cpt_codes(value: str) -> None:
    with pytest.raises(ValidationError, match=f"^CPT code {value} was deleted in CPT 2018$"):
        validate_cpt_code(value)


# --- The map file ----------------------------------------------------------------------------


def test_config_map_loads(cpt_map: CptMap) -> None:
    assert CONFIG_MAP.read_text(encoding="utf-8").startswith(
        "# version: 2026 (CPT codes change every January; version the map by year)\n"
    )
    assert cpt_map.version == "2026"
    assert len(cpt_map.rows) == 45
    assert cpt_map.rows[0].cpt == "71045"
    assert all(row.pc_tc_split for row in cpt_map.rows)
    chest = cpt_map.row_for("71046")
    assert chest is not None
    assert chest.modalities == frozenset({"CR", "DX"})
    assert chest.body_parts == ("CHEST",)
    assert chest.description_hints == ("2 views", "PA LAT")
    obstetric = cpt_map.row_for("76801")
    assert obstetric is not None and obstetric.body_parts == ()


@pytest.mark.parametrize(("code", "expected"), [("71046", True), ("77067", True), ("72131", None), ("0042T", None)])
def test_has_professional_component(cpt_map: CptMap, code: str, expected: bool | None) -> None:
    assert cpt_map.has_professional_component(code) is expected


def _map_text(*rows: str, comment: str = "# version: 2026") -> str:
    return "\n".join([comment, HEADER, *rows]) + "\n"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            _map_text("71020,CR|DX,CHEST,,chest two views,1"),
            "CPT map 2026 line 3: CPT code 71020 was deleted in CPT 2018",
        ),
        (_map_text("74000,CR,ABDOMEN,,abdomen,1"), "line 3: CPT code 74000 was deleted"),
        (_map_text("7104,CR,CHEST,,chest,1"), "line 3: CPT code '7104' must be 5 digits"),
        (_map_text("71046,CR,CHEST,,chest,2"), "line 3: pc_tc_split must be 0 or 1, got '2'"),
        (_map_text("71046,CR,CHEST,,chest,"), "line 3: pc_tc_split must be 0 or 1, got ''"),
        (
            _map_text("71046,CR,CHEST,,a,1", "71045,CR,CHEST,,b,1", "71046,DX,CHEST,,c,1"),
            "line 5: duplicate CPT code 71046 (first on line 3)",
        ),
        (_map_text("71046,,CHEST,,chest,1"), "line 3: CPT code 71046 has no modality"),
        (_map_text("71046,CR,CHEST,chest,1"), "line 3: expected 6 fields, got 5"),
        (
            "# version: 2026\ncpt,modality,body_part,description_hints,summary,pc_tc_split\n",
            "line 2: header must be",
        ),
        (
            _map_text("71046,CR,CHEST,,chest,1", comment="# version: 2025"),
            "line 1: file says version 2025, expected 2026",
        ),
        (_map_text(), "CPT map 2026: no rows"),
    ],
)
def test_map_errors_name_line_and_reason(text: str, message: str) -> None:
    with pytest.raises(DataFileError, match=message.replace("(", r"\(").replace(")", r"\)")):
        CptMap.from_csv_text(text, "2026")


def test_map_skips_comments_and_blank_lines_and_accepts_reordered_columns() -> None:
    text = (
        "# a note\n\nmodality,cpt,body_part_hints,description_hints,summary,pc_tc_split\n"
        "# more\nMR,70551,brain,,mri,0\n"
    )
    parsed = CptMap.from_csv_text(text, "2027")
    assert parsed.rows[0].cpt == "70551"
    assert parsed.rows[0].body_parts == ("BRAIN",)
    assert parsed.has_professional_component("70551") is False


# --- Map inference -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("modality", "body_part", "description", "expected"),
    [
        ("CT", "CHEST", "CT chest with contrast", "71260"),
        ("CT", "CHEST", "CT CHEST W/O CONTRAST", "71250"),
        ("CT", "CHEST", "CTA chest PE protocol", "71275"),
        ("CR", "CHEST", "PA LAT", "71046"),
        ("DX", "CHEST", "Chest 2V", "71046"),
        ("CR", "CHEST", "Chest 1 view portable", "71045"),
        ("MR", "BRAIN", "MRI brain without contrast", "70551"),
        ("MR", "HEAD", "MRI BRAIN W WO CONTRAST", "70553"),
        ("MR", "BRAIN", "MRI brain with and without contrast", "70553"),
        ("MG", "BREAST", "Screening mammogram bilateral", "77067"),
        ("MG", "BREAST", "Diagnostic mammogram bilat", "77066"),
        ("MG", "BREAST", "Diagnostic mammogram unilateral", "77065"),
        ("MG", "BREAST", None, "77067"),  # no hint: earliest MG row
        ("CT", "ABDOMENPELVIS", "CT abd pelvis w contrast", "74177"),
        ("CT", "ABD/PELVIS", "CT ABD/PELVIS W/WO CONTR", "74178"),
        ("CT", None, "CT ABD/PELVIS W/WO CONTR", "74178"),  # body part from the description
        ("CT", None, "CT abdomen pelvis with contrast", "74177"),
        ("CT", "HEAD", "CT head without contrast", "70450"),
        ("CT", "BRAIN", "CT head without and with contrast", "70470"),
        ("CT", "C-SPINE", None, "72125"),
        ("CR", "HAND", "1 view", "73130"),  # a hand is never a chest
        ("DX", "LSPINE", "DEXA bone density", "77080"),
        ("US", "PELVIS", "OB first trimester", "76801"),
        ("US", "LOWER EXTREMITY", "Duplex venous bilateral", "93970"),
        ("US", "LEG", "duplex venous left", "93971"),
        ("ct", "chest", "ct chest with contrast", "71260"),  # case-insensitive
    ],
)
def test_infer(cpt_map: CptMap, modality: str, body_part: str | None, description: str | None, expected: str) -> None:
    row = cpt_map.infer(modality, body_part, description)
    assert row is not None
    assert row.cpt == expected


@pytest.mark.parametrize(
    ("modality", "body_part", "description"),
    [
        ("CR", "ELBOW", "2 views"),  # chest hint, but the body part says elbow
        ("CT", "LSPINE", None),  # no CT lumbar spine row
        ("CT", None, None),  # modality alone is no evidence
        ("OT", None, "report"),
        ("SR", "CHEST", "CT chest with contrast"),  # modality must match
        (None, "CHEST", "CT chest with contrast"),
    ],
)
def test_infer_finds_nothing(
    cpt_map: CptMap, modality: str | None, body_part: str | None, description: str | None
) -> None:
    assert cpt_map.infer(modality, body_part, description) is None


def test_infer_any_uses_every_study_modality(cpt_map: CptMap) -> None:
    row = cpt_map.infer_any(["PT", "CT", "SR"], "WHOLEBODY", "PET/CT skull base to mid-thigh")
    assert row is not None and row.cpt == "78815"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("CT ABD/PELVIS W/WO CONTR", {"ct", "abd", "pelvis", "without", "and", "with", "contrast"}),
        ("w/o & w contrast", {"without", "and", "with", "contrast"}),
        ("CHEST PA & LATERAL 2 VIEWS", {"chest", "pa", "lat", "2", "view"}),
        ("WITHOUT contrast", {"without", "contrast"}),
        ("", set()),
        (None, set()),
    ],
)
def test_description_words(text: str | None, expected: set[str]) -> None:
    assert description_words(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("CHEST", "CHEST"),
        ("thorax", "CHEST"),
        ("L-SPINE", "LSPINE"),
        ("Abd Pelvis", "ABDOMENPELVIS"),
        ("ABDOMENPELVIS", "ABDOMENPELVIS"),
        ("  ", None),
        (None, None),
    ],
)
def test_body_part_key(text: str | None, expected: str | None) -> None:
    assert body_part_key(text) == expected


# --- Billing lines ---------------------------------------------------------------------------


def line(
    cpt: str | None, source: CptSource, modifier: str | None, review: bool = False, reason: str | None = None
) -> BillingLine:
    return BillingLine(cpt, source, modifier, review, reason)


@pytest.mark.parametrize("scheme", ["C4", "CPT", "CPT4", "CPT-4", "cpt4", " c4 ", "Cpt-4"])
def test_cpt_schemes_taken_as_sent(cpt_map: CptMap, scheme: str) -> None:
    codes = [ProcedureCode("71046", scheme, "XR CHEST 2V")]
    assert resolve_billing_lines(codes, ["CR"], "CHEST", "Chest 1 view", cpt_map) == [line("71046", PCS, "26")]


@pytest.mark.parametrize("scheme", ["DCM", "LN", "SCT", "99LOCAL", "C5", "", "CPT5"])
def test_other_schemes_are_ignored(cpt_map: CptMap, scheme: str) -> None:
    codes = [ProcedureCode("71046", scheme)]
    assert resolve_billing_lines(codes, ["OT"], None, None, cpt_map) == [
        line(
            None,
            CptSource.NONE,
            None,
            True,
            "no CPT code in ProcedureCodeSequence or RequestedProcedureCodeSequence and no CPT map match",
        )
    ]


def test_performed_code_wins_over_requested(cpt_map: CptMap) -> None:
    codes = [ProcedureCode("71250", "C4", source=RPCS), ProcedureCode("71260", "C4", source=PCS)]
    assert resolve_billing_lines(codes, ["CT"], "CHEST", None, cpt_map) == [line("71260", PCS, "26")]


@pytest.mark.parametrize(
    "performed",
    [[], [ProcedureCode("CTCHEST", "99LOCAL")], [ProcedureCode("   ", "C4")]],
)
def test_requested_code_used_when_no_performed_cpt(cpt_map: CptMap, performed: list[ProcedureCode]) -> None:
    codes = [*performed, ProcedureCode("71250", "CPT4", source="requested_procedure_code_sequence")]
    assert resolve_billing_lines(codes, ["CT"], "CHEST", "with contrast", cpt_map) == [line("71250", RPCS, "26")]


def test_multiple_distinct_codes_in_order(cpt_map: CptMap) -> None:
    codes = [
        ProcedureCode("71260", "C4"),
        ProcedureCode("74177", "CPT"),
        ProcedureCode("71260 ", "CPT4"),  # the same code again, another spelling
        ProcedureCode("0042t", "C4"),  # a Category III code, lower case: normalized
        ProcedureCode("0042T", "C4"),
        ProcedureCode("71046", "C4", source=RPCS),  # requested: ignored, performed codes exist
    ]
    expected = [
        line("71260", PCS, "26"),
        line("74177", PCS, "26"),
        line("0042T", PCS, None, True, "code not in CPT map 2026: modifier 26 not applied"),
    ]
    assert resolve_billing_lines(codes, ["CT"], None, None, cpt_map) == expected


@pytest.mark.parametrize("code", ["72131", "0042T", "3008F"])
def test_code_unknown_to_map_goes_to_review_without_26(cpt_map: CptMap, code: str) -> None:
    assert resolve_billing_lines([ProcedureCode(code, "C4")], ["CT"], "LSPINE", None, cpt_map) == [
        line(code, PCS, None, True, "code not in CPT map 2026: modifier 26 not applied")
    ]


def test_code_without_split_gets_no_26_and_no_review() -> None:
    no_split = CptMap.from_csv_text(_map_text("70551,MR,BRAIN,,mri,0"), "2026")
    sent = resolve_billing_lines([ProcedureCode("70551", "C4")], ["MR"], None, None, no_split)
    assert sent == [line("70551", PCS, None)]
    inferred = resolve_billing_lines([], ["MR"], "BRAIN", None, no_split)
    assert inferred == [line("70551", CptSource.MAP, None, True, MAP_INFERRED_REASON)]


@pytest.mark.parametrize(("code", "source"), [("71010", PCS), ("71020", RPCS), ("74000", PCS), ("74020", RPCS)])
def test_deleted_codes_never_billed(cpt_map: CptMap, code: str, source: CptSource) -> None:
    lines = resolve_billing_lines([ProcedureCode(code, "C4", source=source)], ["CR"], "CHEST", "PA LAT", cpt_map)
    name = "ProcedureCodeSequence" if source is PCS else "RequestedProcedureCodeSequence"
    reason = f"{name}: CPT code {code} was deleted in CPT 2018; not billed"
    assert lines == [line(None, source, None, True, reason)]


def test_deleted_code_beside_a_valid_one(cpt_map: CptMap) -> None:
    codes = [ProcedureCode("71020", "C4"), ProcedureCode("71046", "C4")]
    lines = resolve_billing_lines(codes, ["CR"], "CHEST", None, cpt_map)
    summary = [(x.cpt_code, x.modifier, x.coder_review) for x in lines]
    assert summary == [(None, None, True), ("71046", "26", False)]
    assert "71020" in (lines[0].review_reason or "")


def test_malformed_code_goes_to_review(cpt_map: CptMap) -> None:
    codes = [ProcedureCode("7104", "C4"), ProcedureCode("xr2v", "CPT")]
    lines = resolve_billing_lines(codes, ["CR"], "CHEST", None, cpt_map)
    assert lines == [
        line(
            None,
            PCS,
            None,
            True,
            "ProcedureCodeSequence: CPT code '7104' must be 5 digits or 4 digits followed by F or T; not billed",
        ),
        line(
            None,
            PCS,
            None,
            True,
            "ProcedureCodeSequence: CPT code 'xr2v' must be 5 digits or 4 digits followed by F or T; not billed",
        ),
    ]


@pytest.mark.parametrize(
    ("modalities", "body_part", "description", "expected"),
    [
        (["CT"], "CHEST", "CT chest with contrast", "71260"),
        (["CR"], "CHEST", "PA LAT", "71046"),
        (["MR"], "BRAIN", "MRI brain without contrast", "70551"),
        (["MG"], "BREAST", "MG screening bilateral", "77067"),
        (["PT", "CT"], "WHOLEBODY", "PET CT", "78815"),
    ],
)
def test_inferred_line_is_provisional(
    cpt_map: CptMap, modalities: list[str], body_part: str, description: str, expected: str
) -> None:
    codes = [ProcedureCode("CT123", "99LOCAL")]
    assert resolve_billing_lines(codes, modalities, body_part, description, cpt_map) == [
        line(expected, CptSource.MAP, "26", True, "inferred from map, provisional")
    ]


@pytest.mark.parametrize(
    ("modalities", "body_part", "description"),
    [([], None, None), (["CR"], "ELBOW", "elbow 2 views"), (["SR"], "CHEST", "PA LAT")],
)
def test_nothing_found_goes_to_review(
    cpt_map: CptMap, modalities: list[str], body_part: str | None, description: str | None
) -> None:
    [only] = resolve_billing_lines([], modalities, body_part, description, cpt_map)
    assert (only.cpt_code, only.cpt_source, only.modifier, only.coder_review) == (None, CptSource.NONE, None, True)
    assert only.review_reason


@pytest.mark.parametrize("source", [CptSource.MAP, CptSource.NONE, "map", "bogus"])
def test_procedure_code_source_must_be_a_sequence(source: object) -> None:
    with pytest.raises(ValidationError, match="ProcedureCode source"):
        ProcedureCode("71046", "C4", source=source)  # type: ignore[arg-type]


def test_procedure_code_source_string_becomes_enum() -> None:
    assert ProcedureCode("71046", "C4", source="requested_procedure_code_sequence").source is RPCS


@pytest.mark.parametrize(
    "args",
    [
        ("71046", PCS, "TC", False, None),  # only 26
        ("71046", PCS, "26", True, None),  # review without reason
        ("71046", PCS, "26", False, "why"),  # reason without review
        (None, CptSource.NONE, None, False, None),  # nothing to bill must be reviewed
    ],
)
def test_billing_line_invariants(args: tuple) -> None:
    with pytest.raises(ValidationError):
        BillingLine(*args)
