"""Which subspecialty a study asks for, from dated rules in ``config/subspecialty_rules.csv``.

File format (UTF-8; ``#`` comment lines; one header)::

    modality,body_part,description_keywords,subspecialty,need
    MG,,,breast,required
    MR,BRAIN|HEAD,,neuro,preferred
    CT|MR,,stroke|cta head,neuro,required

``modality`` and ``body_part`` are ``|``-separated alternatives matched exactly (upper case;
empty matches anything); ``description_keywords`` are ``|``-separated phrases, one of which must
appear in StudyDescription (case-insensitive; empty matches anything). The first matching row
wins. The rules are the group's own practice (credentialing policy), kept as data so they can be
changed without a release. Mammography's MQSA requirement (21 CFR 900.12) is separate and stays.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable
from dataclasses import dataclass

from router.domain.enums import Subspecialty, SubspecialtyNeed
from router.errors import DataFileError

COLUMNS = ("modality", "body_part", "description_keywords", "subspecialty", "need")


def _alternatives(text: str) -> frozenset[str]:
    return frozenset(part.strip().upper() for part in text.split("|") if part.strip())


@dataclass(frozen=True)
class SubspecialtyRule:
    """One rule row; ``line`` is its line number in the file, for the decision record."""

    modalities: frozenset[str]
    body_parts: frozenset[str]
    keywords: frozenset[str]
    subspecialty: Subspecialty
    need: SubspecialtyNeed
    line: int

    def matches(self, modalities: Iterable[str], body_part: str | None, description: str | None) -> bool:
        """Whether a study with these attributes falls under the rule."""
        if self.modalities and not self.modalities & {m.strip().upper() for m in modalities}:
            return False
        if self.body_parts and (body_part or "").strip().upper() not in self.body_parts:
            return False
        text = " ".join((description or "").upper().split())
        return not self.keywords or any(keyword in text for keyword in self.keywords)

    def describe(self) -> str:
        """e.g. ``neuro required (subspecialty rule line 4)``."""
        return f"{self.subspecialty.value} {self.need.value} (subspecialty rule line {self.line})"


@dataclass(frozen=True)
class SubspecialtyRules:
    """The parsed rules, in file order."""

    rules: tuple[SubspecialtyRule, ...] = ()

    @classmethod
    def from_csv_text(cls, text: str, source_name: str = "") -> SubspecialtyRules:
        """Parse the rules file.

        Raises
        ------
        DataFileError
            Bad header, column count, subspecialty or need (the message names the line).
        """
        rules: list[SubspecialtyRule] = []
        header = False
        prefix = f"{source_name} " if source_name else ""
        for line_no, line in enumerate(text.splitlines(), start=1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            cells = [cell.strip() for cell in next(csv.reader([line]))]
            if not header:
                if tuple(cell.lower() for cell in cells) != COLUMNS:
                    raise DataFileError(f"{prefix}line {line_no}: expected header {','.join(COLUMNS)}")
                header = True
                continue
            if len(cells) != len(COLUMNS):
                raise DataFileError(f"{prefix}line {line_no}: expected {len(COLUMNS)} columns, got {len(cells)}")
            try:
                subspecialty = Subspecialty(cells[3].lower())
                need = SubspecialtyNeed(cells[4].lower())
            except ValueError as exc:
                raise DataFileError(
                    f"{prefix}line {line_no}: subspecialty must be one of {', '.join(Subspecialty.values())} "
                    f"and need one of {', '.join(SubspecialtyNeed.values())}"
                ) from exc
            rules.append(
                SubspecialtyRule(
                    _alternatives(cells[0]),
                    _alternatives(cells[1]),
                    _alternatives(cells[2]),
                    subspecialty,
                    need,
                    line_no,
                )
            )
        return cls(tuple(rules))

    def rule_for(
        self, modalities: Iterable[str], body_part: str | None, description: str | None
    ) -> SubspecialtyRule | None:
        """The first rule matching the study, or ``None`` (any reader will do)."""
        modalities = tuple(modalities)
        return next((rule for rule in self.rules if rule.matches(modalities, body_part, description)), None)


def parse_subspecialties(values: Iterable[str]) -> tuple[Subspecialty, ...]:
    """Subspecialties from CLI or CSV values (comma-separated allowed), sorted and unique.

    Raises
    ------
    ValueError
        An unknown subspecialty (the message lists the known ones).
    """
    found: set[Subspecialty] = set()
    for value in values:
        for part in str(value).split(","):
            part = part.strip().lower()
            if not part:
                continue
            try:
                found.add(Subspecialty(part))
            except ValueError as exc:
                raise ValueError(
                    f"unknown subspecialty {part!r}; use one of {', '.join(Subspecialty.values())}"
                ) from exc
    return tuple(sorted(found, key=lambda item: Subspecialty.values().index(item.value)))
