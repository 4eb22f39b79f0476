"""Text values of printable ASCII, decoded without pydicom: the common case on the hot path.

A received data set's header values (UIDs, accession number, modality, descriptions) are
nearly always plain ASCII. For such a value every character set a data set may declare
decodes the bytes the same way (each is ASCII-compatible in 0x20-0x7E, and without ESC no
ISO 2022 code extension is invoked: PS3.5 section 6.1.2.5), so the text pydicom would build
can be built directly, at a fraction of the cost of pydicom's generic conversion (hooks,
value classes, validation). :func:`text` does that for the value representations the router
reads as text and answers ``None`` for anything else (another VR, a byte outside printable
ASCII and NUL): the caller then converts with pydicom as before.

What it returns is what :func:`router.dicom.extract._text` got from pydicom's value, joined
and stripped, before its own checks: per VR, pydicom's ``convert_string`` (CS, DA, TM, DT, AS),
``convert_text`` (SH, LO, UC: each value right-stripped of spaces and NULs),
``convert_single_string`` (ST, LT, UT: no value splitting) and ``convert_UI`` (each UID
stripped of whitespace). tests/test_ascii_values.py checks it against pydicom value by value.
"""

from __future__ import annotations

import re

#: Bytes taken here: printable ASCII and NUL (the padding of UIDs, PS3.5 section 6.2).
_PLAIN = re.compile(rb"[\x20-\x7e\x00]*")
#: Stripped from both ends of every value (``extract._PADDING``).
PADDING = " \t\r\n\f\x00"
_STRING_VRS = frozenset({"CS", "DA", "TM", "DT", "AS"})
_TEXT_VRS = frozenset({"SH", "LO", "UC"})
_SINGLE_VRS = frozenset({"ST", "LT", "UT"})
#: Value representations :func:`text` handles.
VRS = _STRING_VRS | _TEXT_VRS | _SINGLE_VRS | {"UI"}


def text(value: bytes, vr: str) -> str | None:
    """The stripped text of ``value`` (an element's bytes) as the router reads it, or ``None``
    when ``vr`` is not in :data:`VRS` or ``value`` holds a byte outside printable ASCII and NUL.

    Multiple values are joined with a backslash, as the router joins pydicom's values.
    """
    if vr not in VRS or _PLAIN.fullmatch(value) is None:
        return None
    decoded = value.decode("ascii")
    if vr in _STRING_VRS or vr in _SINGLE_VRS:
        return decoded.strip(PADDING)
    if vr in _TEXT_VRS:
        return "\\".join(item.rstrip("\x00 ") for item in decoded.split("\\")).strip(PADDING)
    return "\\".join(item.strip() for item in decoded.rstrip("\x00 ").split("\\")).strip(PADDING)
