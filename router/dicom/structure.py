"""Structural checks of a received data set that never hold its values in memory.

Two pieces used by :func:`router.dicom.extract.read_header`:

- :func:`inflate_dataset`: a Deflated Explicit VR Little Endian data set (PS3.5 section A.5) is
  inflated to a file in bounded steps (``zlib.decompressobj`` with ``max_length``), at most
  ``limit`` bytes: a 2 MiB message that inflates to gigabytes (a "zip bomb") costs at most the
  limit in disk and a few MiB of memory, and is refused with :class:`InflationLimitExceeded`;
- :func:`check_to_end`: the elements after Pixel Data (private groups, Digital Signatures,
  Data Set Trailing Padding) are walked by their headers to the last byte, so trailing garbage,
  an element whose length runs past the end, or an unterminated sequence is found without
  reading Pixel Data or any other value.
"""

from __future__ import annotations

import struct
import zlib
from typing import Any, BinaryIO

#: Size of each inflated step and of each compressed read, in bytes.
INFLATE_STEP = 1 << 20
_UNDEFINED_LENGTH = 0xFFFFFFFF
#: Value representations of PS3.5 section 6.2 (Table 6.2-1), as encoded in explicit VR.
_VRS = frozenset(
    b"AE AS AT CS DA DS DT FD FL IS LO LT OB OD OF OL OV OW PN SH SL SQ SS ST SV TM UC UI UL UN UR US UT UV".split()
)
#: Explicit VRs with a 2-byte reserved field and a 4-byte length (PS3.5 section 7.1.2).
_LONG_VRS = frozenset(b"OB OD OF OL OV OW SQ SV UC UN UR UT UV".split())
_ITEM = 0xFFFEE000
_ITEM_DELIMITER = 0xFFFEE00D
_SEQUENCE_DELIMITER = 0xFFFEE0DD
_PIXEL_TAGS = frozenset({0x7FE00008, 0x7FE00009, 0x7FE00010})
#: Deepest sequence nesting walked; deeper is treated as malformed (no real IOD comes close).
MAX_DEPTH = 64


class MalformedDataSet(Exception):
    """The data set's encoding is broken (PS3.5 section 7); the handler answers 0xC210."""


class InflationLimitExceeded(Exception):
    """A deflated data set inflates to more than the configured limit (``listener.max_inflated_bytes``)."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"the deflated data set inflates to more than {limit} bytes")
        self.limit = limit


def inflate_dataset(source: BinaryIO, target: BinaryIO, limit: int) -> int:
    """Inflate the rest of ``source`` (a raw deflate stream, RFC 1951) into ``target``.

    PS3.5 section A.5: the data set after the File Meta Information is deflated without a zlib
    header. Memory stays at about :data:`INFLATE_STEP` whatever the ratio.

    Parameters
    ----------
    source, target : binary file objects
        ``source`` positioned at the start of the deflated data set.
    limit : int
        Most inflated bytes accepted.

    Returns
    -------
    int
        Inflated size, in bytes.

    Raises
    ------
    InflationLimitExceeded
        Once more than ``limit`` bytes come out (nothing more is inflated).
    MalformedDataSet
        If the stream is not valid deflate data or ends before its last block.
    """
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    total = 0
    try:
        while not inflater.eof:
            chunk = inflater.unconsumed_tail or source.read(INFLATE_STEP)
            if not chunk:
                break
            out = inflater.decompress(chunk, INFLATE_STEP)
            total += len(out)
            if total > limit:
                raise InflationLimitExceeded(limit)
            target.write(out)
    except zlib.error as exc:
        raise MalformedDataSet(f"the deflated data set is not valid deflate data ({exc})") from exc
    if not inflater.eof:
        raise MalformedDataSet("the deflated data set ends before its last deflate block")
    return total


def check_to_end(reader: Any, implicit: bool, little_endian: bool, size: int, previous_tag: int) -> None:
    """Walk the top-level elements from ``reader``'s position to byte ``size``, by their headers.

    Used after Pixel Data (whose tag is ``previous_tag``): each element must follow the one
    before in ascending tag order (PS3.5 section 7.1), carry a known VR (explicit VR), fit in
    what was received, and every sequence and item of undefined length must end with its
    delimiter (PS3.5 section 7.5). Values are skipped with ``seek``, never read.

    Raises
    ------
    MalformedDataSet
        On anything that does not parse to exactly the end of the data set.
    """
    walker = _Walker(reader, implicit, little_endian, size)
    walker.dataset(end=size, previous_tag=previous_tag, ordered=True, depth=0)


class _Walker:
    def __init__(self, reader: Any, implicit: bool, little_endian: bool, size: int) -> None:
        self.reader = reader
        self.implicit = implicit
        self.order = "<" if little_endian else ">"
        self.size = size

    def _read(self, count: int, what: str) -> bytes:
        data = self.reader.read(count)
        if len(data) < count:
            raise MalformedDataSet(f"the data set ends inside {what}")
        return bytes(data)

    def _tag(self) -> int:
        group, element = struct.unpack(f"{self.order}HH", self._read(4, "an element header"))
        return int(group) << 16 | int(element)

    def dataset(self, end: int | None, previous_tag: int, ordered: bool, depth: int) -> None:
        """Elements up to ``end`` (defined length) or to an item delimiter (``end`` None)."""
        if depth > MAX_DEPTH:
            raise MalformedDataSet(f"sequences nested more than {MAX_DEPTH} deep")
        while True:
            position = self.reader.tell()
            if end is not None and position == end:
                return
            if end is not None and position > end:
                raise MalformedDataSet("an element runs past the end of its item")
            tag = self._tag()
            if tag == _ITEM_DELIMITER:
                self._read(4, "an item delimiter")
                if end is None:
                    return
                raise MalformedDataSet("an item delimiter inside an item of defined length")
            if tag >> 16 == 0xFFFE:
                raise MalformedDataSet(f"({tag >> 16:04X},{tag & 0xFFFF:04X}) outside a sequence")
            if ordered and tag <= previous_tag:
                raise MalformedDataSet(
                    f"({tag >> 16:04X},{tag & 0xFFFF:04X}) after ({previous_tag >> 16:04X},{previous_tag & 0xFFFF:04X}): "
                    "elements out of order (PS3.5 section 7.1)"
                )
            previous_tag = tag
            self._element(tag, end, depth)

    def _element(self, tag: int, end: int | None, depth: int) -> None:
        vr = b""
        if self.implicit:
            (length,) = struct.unpack(f"{self.order}L", self._read(4, "an element header"))
        else:
            vr = self._read(2, "an element header")
            if vr not in _VRS:
                raise MalformedDataSet(f"({tag >> 16:04X},{tag & 0xFFFF:04X}) has no valid VR")
            if vr in _LONG_VRS:
                (length,) = struct.unpack(f"{self.order}2xL", self._read(6, "an element header"))
            else:
                (length,) = struct.unpack(f"{self.order}H", self._read(2, "an element header"))
        bound = self.size if end is None else end
        if length == _UNDEFINED_LENGTH:
            if tag in _PIXEL_TAGS and vr in (b"OB", b"OW", b""):
                self._fragments()
            elif vr in (b"SQ", b"UN", b""):
                # UN of undefined length holds implicit VR little endian items (PS3.5 section 6.2.2)
                saved = self.implicit, self.order
                if vr == b"UN":
                    self.implicit, self.order = True, "<"
                try:
                    self.sequence(None, depth + 1)
                finally:
                    self.implicit, self.order = saved
            else:
                raise MalformedDataSet(f"({tag >> 16:04X},{tag & 0xFFFF:04X}) {vr.decode()} of undefined length")
            return
        value_end = self.reader.tell() + length
        if value_end > bound:
            raise MalformedDataSet(f"({tag >> 16:04X},{tag & 0xFFFF:04X}) is longer than the data set")
        if vr == b"SQ":
            self.sequence(value_end, depth + 1)
        else:
            self.reader.seek(value_end)

    def sequence(self, end: int | None, depth: int) -> None:
        """Items up to ``end`` (defined length) or to the sequence delimiter (``end`` None)."""
        while True:
            position = self.reader.tell()
            if end is not None and position == end:
                return
            tag = self._tag()
            (length,) = struct.unpack(f"{self.order}L", self._read(4, "an item header"))
            if tag == _SEQUENCE_DELIMITER:
                if end is None:
                    return
                raise MalformedDataSet("a sequence delimiter inside a sequence of defined length")
            if tag != _ITEM:
                raise MalformedDataSet(f"({tag >> 16:04X},{tag & 0xFFFF:04X}) where a sequence item belongs")
            if length == _UNDEFINED_LENGTH:
                self.dataset(None, previous_tag=-1, ordered=False, depth=depth)
                continue
            item_end = self.reader.tell() + length
            if item_end > (self.size if end is None else end):
                raise MalformedDataSet("a sequence item is longer than its sequence")
            self.dataset(item_end, previous_tag=-1, ordered=False, depth=depth)

    def _fragments(self) -> None:
        """Encapsulated pixel data (PS3.5 section A.4): items of defined length, then the delimiter."""
        while True:
            tag = self._tag()
            (length,) = struct.unpack(f"{self.order}L", self._read(4, "a fragment header"))
            if tag == _SEQUENCE_DELIMITER:
                return
            if tag != _ITEM or length == _UNDEFINED_LENGTH:
                raise MalformedDataSet("encapsulated pixel data holds something other than fragments")
            fragment_end = self.reader.tell() + length
            if fragment_end > self.size:
                raise MalformedDataSet("a pixel data fragment is longer than the data set")
            self.reader.seek(fragment_end)
