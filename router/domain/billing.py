"""Billing arithmetic: the CPT lines of a professional read (infrastructure cost: infra_cost).

Two ledgers, never mixed (DESIGN.md "Billing"): the infrastructure ledger holds what storing and
sending bytes cost (:mod:`router.domain.infra_cost`); the professional ledger holds what the reading
radiologist bills (:func:`resolve_billing_lines`): CPT code + modifier 26 on codes with a
professional/technical split (PC/TC indicator 1 in the CMS Medicare Physician Fee Schedule).

CPT codes come, in this order, from ProcedureCodeSequence (0008,1032), RequestedProcedureCodeSequence
(0032,1064) (DICOM PS3.3 C.4.10 and C.4.11; Code Sequence Macro PS3.3 Table 8.8-1), with coding
scheme designator ``C4`` (CPT-4, DICOM PS3.16 Section 8) or the variants ``CPT``, ``CPT4``,
``CPT-4``; else from the year-versioned CPT map in ``config/`` (provisional, coder review); else
nothing, for coder review. CPT code validation and the map are in :mod:`router.domain.cpt_map`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from types import MappingProxyType

from router.domain.cpt_map import CptMap, validate_cpt_code
from router.domain.enums import CptSource
from router.errors import ValidationError

# --- Professional billing lines --------------------------------------------------------------

#: Coding scheme designators taken as CPT (DICOM PS3.16 Section 8: ``C4`` is CPT-4; the others are
#: spellings seen in the field). Compared after stripping and upper-casing.
CPT_SCHEMES = frozenset({"C4", "CPT", "CPT4", "CPT-4"})

#: DICOM keyword of each code sequence a CPT code can come from.
_SEQUENCE_NAMES = MappingProxyType(
    {
        CptSource.PROCEDURE_CODE_SEQUENCE: "ProcedureCodeSequence",
        CptSource.REQUESTED_PROCEDURE_CODE_SEQUENCE: "RequestedProcedureCodeSequence",
    }
)


@dataclass(frozen=True)
class ProcedureCode:
    """One item of ProcedureCodeSequence (0008,1032) or RequestedProcedureCodeSequence (0032,1064).

    Attributes are the Code Sequence Macro's CodeValue, CodingSchemeDesignator and CodeMeaning
    (DICOM PS3.3 Table 8.8-1); ``source`` says which sequence it came from (a ``CptSource``
    member or its value).

    Raises
    ------
    ValidationError
        If ``source`` is not one of the two sequence sources.
    """

    value: str
    scheme: str
    meaning: str = ""
    source: CptSource = CptSource.PROCEDURE_CODE_SEQUENCE
    modifiers: tuple[str, ...] = ()  # from the order (OBR-45), in order; never 26 by itself

    def __post_init__(self) -> None:
        object.__setattr__(self, "modifiers", tuple(self.modifiers))
        try:
            source = CptSource(self.source)
        except ValueError as exc:
            raise ValidationError(f"ProcedureCode source {self.source!r} is not a CptSource") from exc
        if source not in _SEQUENCE_NAMES:
            raise ValidationError(f"ProcedureCode source must be a code sequence, got {source.value!r}")
        object.__setattr__(self, "source", source)

    @property
    def is_cpt(self) -> bool:
        """Whether the coding scheme designator names CPT (see :data:`CPT_SCHEMES`)."""
        return (self.scheme or "").strip().upper() in CPT_SCHEMES


#: review_reason of a line inferred from the map (a code inferred from hints is provisional).
MAP_INFERRED_REASON = "inferred from map, provisional"
NO_CODE_REASON = "no CPT code in ProcedureCodeSequence or RequestedProcedureCodeSequence and no CPT map match"


@dataclass(frozen=True)
class BillingLine:
    """One professional-component line of a read.

    Attributes
    ----------
    cpt_code : str or None
        The CPT code billed; ``None`` when there is none to bill (coder review).
    cpt_source : CptSource
        Where the code came from.
    modifier : str or None
        ``"26"`` (professional component) or ``None``.
    coder_review : bool
        True when a coder must look at the line before it is billed.
    review_reason : str or None
        Why, when ``coder_review``; a rejected code sent in DICOM is named here.
    order_modifiers : tuple of str
        Modifiers the order gives the procedure (OBR-45), as sent; checked when the claim line is
        built (:func:`router.domain.claims.line_modifiers`).
    """

    cpt_code: str | None
    cpt_source: CptSource
    modifier: str | None
    coder_review: bool
    review_reason: str | None
    order_modifiers: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.modifier not in (None, "26"):
            raise ValidationError(f"modifier must be 26 or None, got {self.modifier!r}")
        if self.coder_review != bool(self.review_reason):
            raise ValidationError("a billing line has a review reason exactly when it needs coder review")
        if self.cpt_code is None and not self.coder_review:
            raise ValidationError("a billing line without a CPT code needs coder review")


def _line_for_sent_code(code: str, source: CptSource, cpt_map: CptMap, modifiers: tuple[str, ...] = ()) -> BillingLine:
    """The line for one CPT code sent in DICOM or the order (taken as sent, not provisional)."""
    sequence = _SEQUENCE_NAMES[source]
    try:
        cpt = validate_cpt_code(code)
    except ValidationError as exc:
        return BillingLine(None, source, None, True, f"{sequence}: {exc}; not billed", modifiers)
    split = cpt_map.has_professional_component(cpt)
    if split is None:
        reason = f"code not in CPT map {cpt_map.version}: modifier 26 not applied"
        return BillingLine(cpt, source, None, True, reason, modifiers)
    return BillingLine(cpt, source, "26" if split else None, False, None, modifiers)


def resolve_billing_lines(
    codes: Sequence[ProcedureCode],
    modalities: Sequence[str],
    body_part: str | None,
    description: str | None,
    cpt_map: CptMap,
) -> list[BillingLine]:
    """The professional billing lines of a read (DESIGN.md "Billing"; shared/domain/README.md).

    1. CPT codes (scheme ``C4``/``CPT``/``CPT4``/``CPT-4``, any case) from ProcedureCodeSequence,
       the procedure performed; if it holds none, from RequestedProcedureCodeSequence. One line
       per distinct code and modifiers (an order may list 73030-LT and 73030-RT), in the order sent. A valid code is taken as sent, with modifier 26 when
       the map gives it a PC/TC split (indicator 1), no modifier when the map says it has none,
       and coder review without modifier when the map does not know it. A malformed or deleted
       code (:data:`~router.domain.cpt_map.DELETED_CPT_CODES`) is never billed: ``cpt_code``
       None, coder review, the sent value in ``review_reason``.
    2. No CPT code sent: one line inferred by :meth:`CptMap.infer_any`, source ``MAP``, modifier
       per the map, coder review ``"inferred from map, provisional"``.
    3. Nothing: one line with ``cpt_code`` None, source ``NONE``, coder review.

    Parameters
    ----------
    codes : sequence of ProcedureCode
        Items of both sequences, any scheme; ``source`` tells them apart.
    modalities : sequence of str
        The study's Modality values (e.g. ``["PT", "CT"]``).
    body_part : str or None
        BodyPartExamined (0018,0015).
    description : str or None
        StudyDescription or RequestedProcedureDescription.
    cpt_map : CptMap
        The map for the year of the date of service.

    Returns
    -------
    list of BillingLine
        At least one line.
    """
    for source in (CptSource.PROCEDURE_CODE_SEQUENCE, CptSource.REQUESTED_PROCEDURE_CODE_SEQUENCE):
        # (normalized code, modifiers) -> as sent (stripped), first occurrence, in order
        sent: dict[tuple[str, tuple[str, ...]], str] = {}
        for code in codes:
            value = (code.value or "").strip()
            if code.source is source and code.is_cpt and value:
                sent.setdefault((value.upper(), code.modifiers), value)
        if sent:
            return [_line_for_sent_code(value, source, cpt_map, modifiers) for (_, modifiers), value in sent.items()]
    row = cpt_map.infer_any(modalities, body_part, description)
    if row is not None:
        return [BillingLine(row.cpt, CptSource.MAP, "26" if row.pc_tc_split else None, True, MAP_INFERRED_REASON)]
    return [BillingLine(None, CptSource.NONE, None, True, NO_CODE_REASON)]
