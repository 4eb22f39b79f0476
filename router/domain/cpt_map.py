"""CPT codes and the year-versioned CPT map that infers a code from DICOM hints.

A CPT code is five characters (AMA CPT code structure); codes deleted from CPT are never billed
(:data:`DELETED_CPT_CODES`). The map (``config/cpt_map_<year>.csv``, CPT codes change every
January) lists, per code, the Modality (0008,0060), BodyPartExamined (0018,0015) and description
hints that suggest it and whether it has a professional/technical split (PC/TC indicator 1 in the
CMS Medicare Physician Fee Schedule). A code inferred from the map is provisional, for coder
review (:func:`router.domain.billing.resolve_billing_lines`).
"""

from __future__ import annotations

import csv
import itertools
import re
from collections.abc import Iterable
from dataclasses import dataclass
from types import MappingProxyType

from router.errors import DataFileError, ValidationError

# --- CPT codes -------------------------------------------------------------------------------

_CPT_FORMAT = re.compile(r"[0-9]{4}[0-9FT]")

#: Codes deleted from CPT that old lists and old modality worklists still show, with the CPT year
#: of deletion. CPT 2018 replaced chest radiography 71010-71035 by 71045-71048 and abdomen
#: radiography 74000/74010/74020 by 74018/74019/74021 (shared/domain/README.md names 71010, 71020,
#: 74000 and 74020). They are never billed, wherever they appear.
DELETED_CPT_CODES = MappingProxyType(
    dict.fromkeys(("71010", "71015", "71020", "71021", "71022", "71023", "71030", "71034", "71035"), 2018)
    | dict.fromkeys(("74000", "74010", "74020"), 2018)
)


def validate_cpt_code(value: str) -> str:
    """Return the normalized CPT code (stripped, upper case) or raise with the reason.

    A CPT code is five characters: five digits (Category I), or four digits followed by ``F``
    (Category II) or ``T`` (Category III) (AMA CPT code structure).

    Raises
    ------
    ValidationError
        ``CPT code '...' must be 5 digits or 4 digits followed by F or T``, or
        ``CPT code 71020 was deleted in CPT 2018`` (see :data:`DELETED_CPT_CODES`).
    """
    text = value.strip().upper() if isinstance(value, str) else ""
    if not _CPT_FORMAT.fullmatch(text):
        raise ValidationError(f"CPT code {value!r} must be 5 digits or 4 digits followed by F or T")
    if text in DELETED_CPT_CODES:
        raise ValidationError(f"CPT code {text} was deleted in CPT {DELETED_CPT_CODES[text]}")
    return text


# --- Normalizing DICOM hints -------------------------------------------------------------------

#: BodyPartExamined (0018,0015) variants -> the defined term the map uses (DICOM PS3.16 Annex L
#: defined terms such as CHEST, ABDOMEN, ABDOMENPELVIS, CSPINE, LSPINE, HEAD, BRAIN), applied after
#: upper-casing and dropping everything but letters and digits (``L-SPINE`` -> ``LSPINE``).
BODY_PART_SYNONYMS = MappingProxyType(
    {
        "THORAX": "CHEST",
        "LUNG": "CHEST",
        "LUNGS": "CHEST",
        "ABD": "ABDOMEN",
        "SKULL": "HEAD",
        "ABDPELVIS": "ABDOMENPELVIS",
        "ABDOMENANDPELVIS": "ABDOMENPELVIS",
        "ABDPEL": "ABDOMENPELVIS",
        "CERVICALSPINE": "CSPINE",
        "LUMBARSPINE": "LSPINE",
        "BREASTS": "BREAST",
        "KIDNEYS": "KIDNEY",
        "RENAL": "KIDNEY",
        "SINUSES": "SINUS",
        "MAXILLOFACIAL": "FACE",
        "LOWEREXTREMITY": "LEG",
        "UPPEREXTREMITY": "EXTREMITY",
        "ARM": "EXTREMITY",
        "CAROTIDS": "CAROTID",
        "GB": "GALLBLADDER",
    }
)

#: Abbreviations common in StudyDescription / RequestedProcedureDescription, rewritten before the
#: text is split into words (order matters: the combined forms first).
_DESCRIPTION_REWRITES = (
    (re.compile(r"\bw\s*/?\s*(?:and|&|\+|-)?\s*w\s*/?\s*o\b"), " without and with "),  # w/wo, w/w/o
    (re.compile(r"\bw\s*/\s*o\s*(?:and|&|\+|-)?\s*w\b/?"), " without and with "),  # w/o & w
    (re.compile(r"\bw\s*/\s*o\b|\bwo\b"), " without "),
    (re.compile(r"\bw\s*/|\bw\b"), " with "),
    (re.compile(r"\b(\d+)\s*v(?:iews?)?\b"), r" \1 view "),  # 2v, 2 views -> 2 view
    (re.compile(r"\bcon(?:t|tr)?\b"), " contrast "),
)

_WORD_SYNONYMS = MappingProxyType(
    {
        "lateral": "lat",
        "one": "1",
        "single": "1",
        "two": "2",
        "three": "3",
        "bilat": "bilateral",
        "unilat": "unilateral",
        "screen": "screening",
        "diag": "diagnostic",
        "dexa": "dxa",
    }
)


def description_words(text: str | None) -> frozenset[str]:
    """Words of a free-text description, lower case, with common abbreviations expanded.

    ``"CT ABD/PELVIS W/WO CONTR"`` -> ``{"ct", "abd", "pelvis", "without", "and", "with",
    "contrast"}``. The same function is applied to the map's description hints, so a hint matches
    when all its words are among the description's words (case and order do not matter).
    """
    if not text:
        return frozenset()
    lowered = text.lower()
    for pattern, replacement in _DESCRIPTION_REWRITES:
        lowered = pattern.sub(replacement, lowered)
    return frozenset(_WORD_SYNONYMS.get(word, word) for word in re.findall(r"[a-z0-9]+", lowered))


def body_part_key(text: str | None) -> str | None:
    """Canonical BodyPartExamined term (see :data:`BODY_PART_SYNONYMS`), or ``None`` if blank."""
    if not text:
        return None
    key = re.sub(r"[^A-Z0-9]", "", text.upper())
    return BODY_PART_SYNONYMS.get(key, key) or None


# --- The CPT map --------------------------------------------------------------------------------

_MAP_COLUMNS = ("cpt", "modality", "body_part_hints", "description_hints", "summary", "pc_tc_split")


@dataclass(frozen=True)
class CptMapRow:
    """One row of the CPT map: a code and the DICOM hints that suggest it.

    Attributes
    ----------
    cpt : str
        Validated CPT code.
    modalities : frozenset of str
        Modality (0008,0060) values, upper case, at least one.
    body_parts : tuple of str
        Canonical BodyPartExamined terms (:func:`body_part_key`); empty: any body part.
    description_hints : tuple of str
        Phrases as written in the map; see :func:`description_words`.
    summary : str
        Short human description of the code.
    pc_tc_split : bool
        True when the code has a professional/technical split (CMS PFS PC/TC indicator 1), i.e.
        the reading radiologist bills it with modifier 26.
    """

    cpt: str
    modalities: frozenset[str]
    body_parts: tuple[str, ...]
    description_hints: tuple[str, ...]
    summary: str
    pc_tc_split: bool


def _split_hints(field: str) -> list[str]:
    return [part.strip() for part in field.split("|") if part.strip()]


@dataclass(frozen=True)
class CptMap:
    """The year-versioned CPT map (``config/cpt_map_<year>.csv``): CPT codes change every January.

    Attributes
    ----------
    version : str
        The CPT year the map is for, e.g. ``"2026"``.
    rows : tuple of CptMapRow
        In file order; earlier rows win ties in :meth:`infer`.
    """

    version: str
    rows: tuple[CptMapRow, ...]

    @classmethod
    def from_csv_text(cls, text: str, version: str) -> CptMap:
        """Parse the map's CSV text.

        Lines starting with ``#`` and blank lines are skipped; a ``# version: YEAR`` comment, if
        present, must agree with ``version``. Columns: ``cpt, modality, body_part_hints,
        description_hints, summary, pc_tc_split``; multi-valued fields are ``|``-separated.

        Raises
        ------
        DataFileError
            ``CPT map 2026 line N: <reason>`` for a wrong header, a malformed or deleted code,
            a missing modality, a ``pc_tc_split`` other than 0/1, a duplicate code, a version
            comment that disagrees, or a map without rows.
        """

        def fail(line_no: int, reason: str) -> DataFileError:
            return DataFileError(f"CPT map {version} line {line_no}: {reason}")

        header: dict[str, int] | None = None
        rows: list[CptMapRow] = []
        seen: dict[str, int] = {}
        for line_no, line in enumerate(text.splitlines(), start=1):
            stripped = line.strip()
            if not stripped:
                continue
            if stripped.startswith("#"):
                found = re.match(r"#\s*version\s*:\s*(\S+)", stripped, re.IGNORECASE)
                if found and found.group(1) != version:
                    raise fail(line_no, f"file says version {found.group(1)}, expected {version}")
                continue
            fields = [field.strip() for field in next(csv.reader([line]))]
            if header is None:
                if sorted(fields) != sorted(_MAP_COLUMNS):
                    raise fail(line_no, f"header must be {','.join(_MAP_COLUMNS)}")
                header = {name: index for index, name in enumerate(fields)}
                continue
            if len(fields) != len(_MAP_COLUMNS):
                raise fail(line_no, f"expected {len(_MAP_COLUMNS)} fields, got {len(fields)}")
            value = {name: fields[index] for name, index in header.items()}
            try:
                cpt = validate_cpt_code(value["cpt"])
            except ValidationError as exc:
                raise fail(line_no, str(exc)) from exc
            if cpt in seen:
                raise fail(line_no, f"duplicate CPT code {cpt} (first on line {seen[cpt]})")
            seen[cpt] = line_no
            modalities = frozenset(part.upper() for part in _split_hints(value["modality"]))
            if not modalities:
                raise fail(line_no, f"CPT code {cpt} has no modality")
            if value["pc_tc_split"] not in ("0", "1"):
                raise fail(line_no, f"pc_tc_split must be 0 or 1, got {value['pc_tc_split']!r}")
            rows.append(
                CptMapRow(
                    cpt=cpt,
                    modalities=modalities,
                    body_parts=tuple(key for key in map(body_part_key, _split_hints(value["body_part_hints"])) if key),
                    description_hints=tuple(_split_hints(value["description_hints"])),
                    summary=value["summary"],
                    pc_tc_split=value["pc_tc_split"] == "1",
                )
            )
        if not rows:
            raise DataFileError(f"CPT map {version}: no rows")
        return cls(version=version, rows=tuple(rows))

    def row_for(self, cpt: str) -> CptMapRow | None:
        """The map row of a CPT code (normalized as :func:`validate_cpt_code` does), or None."""
        code = cpt.strip().upper()
        return next((row for row in self.rows if row.cpt == code), None)

    def has_professional_component(self, cpt: str) -> bool | None:
        """Whether ``cpt`` takes modifier 26 (PC/TC indicator 1); ``None`` if the map lacks it."""
        row = self.row_for(cpt)
        return None if row is None else row.pc_tc_split

    def infer(self, modality: str | None, body_part: str | None, description: str | None) -> CptMapRow | None:
        """Best map row for one modality, BodyPartExamined and a description; see :meth:`infer_any`."""
        return self.infer_any([modality] if modality else [], body_part, description)

    def infer_any(self, modalities: Iterable[str], body_part: str | None, description: str | None) -> CptMapRow | None:
        """Best map row for a study's modalities, body part and description, or ``None``.

        Scoring (deterministic):

        1. The row must list one of ``modalities``.
        2. When ``body_part`` (BodyPartExamined) is given, a row that lists body parts none of
           which is it is excluded (a hand is never a chest). Rows listing no body part fit any.
           Without ``body_part``, body-part words in the description (``chest``, ``abdomen
           pelvis``) count as body-part evidence but exclude nothing.
        3. ``hint_words``: the word count of the longest description hint whose words all occur
           in the description (so ``without and with`` beats ``with contrast``).
        4. The row needs a body-part match or a hint match; modality alone is not evidence.
        5. Highest ``(any hint matched, body_part_match, hint_words)`` wins; ties go to the
           earlier row in the map. A hint match outranks a body-part match because rows that
           survive step 2 already fit the body part and a hint is the more specific signal (DXA
           of the spine, OB of the pelvis); among hint matches the body part decides before the
           hint's length (``CT ABD/PELVIS W/WO`` is 74178, not the head's longer hint).
        """
        if isinstance(modalities, str):
            modalities = [modalities]
        wanted = {m.strip().upper() for m in modalities if m and m.strip()}
        if not wanted:
            return None
        words = description_words(description)
        explicit = body_part_key(body_part)
        if explicit is not None:
            evidence = {explicit}
        else:
            ordered = re.findall(r"[a-z0-9]+", (description or "").lower())
            pairs = [a + b for a, b in itertools.pairwise(ordered)]
            evidence = {key for key in map(body_part_key, ordered + pairs) if key}
        best: tuple[int, int, int, int] | None = None
        best_row: CptMapRow | None = None
        for index, row in enumerate(self.rows):
            if not wanted & row.modalities:
                continue
            body_match = bool(evidence & set(row.body_parts))
            if explicit is not None and row.body_parts and not body_match:
                continue
            hint_words = max(
                (len(hint) for hint in map(description_words, row.description_hints) if hint and hint <= words),
                default=0,
            )
            if not body_match and hint_words == 0:
                continue
            score = (int(hint_words > 0), int(body_match), hint_words, -index)
            if best is None or score > best:
                best, best_row = score, row
        return best_row
