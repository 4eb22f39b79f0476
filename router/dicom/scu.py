"""C-STORE SCU: send Part 10 files to a DICOM destination (demo, forwarding, tests).

Files are sent byte for byte as stored, in their own transfer syntax (pynetdicom's
``STORE_SEND_CHUNKED_DATASET``: the data set is streamed from the file, never decoded and
re-encoded): one presentation context is proposed per (SOP class, transfer syntax) pair.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pydicom import dcmread
from pynetdicom import AE, _config
from pynetdicom.presentation import build_context

from router.errors import RouterError

LOG = logging.getLogger(__name__)

#: pynetdicom (and PS3.8 section 9.3.2.2) allows at most 128 presentation contexts.
MAX_CONTEXTS = 128


class SendError(RouterError):
    """The destination could not be reached or refused the association."""


@dataclass(frozen=True)
class Destination:
    """A C-STORE SCP: AE title, host and TCP port."""

    ae_title: str
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> Destination:
        """Parse ``AE@host:port``.

        Raises
        ------
        ValueError
            If the text is not of that form.
        """
        ae_title, _, rest = text.partition("@")
        host, _, port = rest.rpartition(":")
        if not ae_title or not host or not port.isdigit():
            raise ValueError(f"{text!r} is not AE@host:port")
        return cls(ae_title=ae_title, host=host.strip("[]"), port=int(port))

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"


@dataclass(frozen=True)
class SendResult:
    """Status of one file sent: ``status`` is the C-STORE status, or ``None`` if no response."""

    path: Path
    status: int | None

    @property
    def ok(self) -> bool:
        """Whether the destination answered Success (0x0000) or a warning (0xB000-0xBFFF)."""
        return self.status is not None and (self.status == 0 or 0xB000 <= self.status <= 0xBFFF)


def send_files(
    paths: Sequence[Path],
    destination: Destination,
    calling_ae_title: str = "ROUTER",
    timeout: float = 30.0,
    max_pdu: int = 0,
) -> list[SendResult]:
    """Send files over one association and return one result per file, in order.

    Raises
    ------
    SendError
        If the association is refused, aborted before it starts, or no file can be read.
    """
    # Send the stored bytes as they are (never decoded and re-encoded): process-wide, idempotent.
    _config.STORE_SEND_CHUNKED_DATASET = True
    headers = []
    for path in paths:
        dataset = dcmread(path, stop_before_pixels=True, specific_tags=["SOPClassUID"])
        headers.append((path, str(dataset.SOPClassUID), str(dataset.file_meta.TransferSyntaxUID)))
    ae = AE(ae_title=calling_ae_title)
    ae.acse_timeout = timeout
    ae.dimse_timeout = timeout
    ae.network_timeout = timeout
    ae.maximum_pdu_size = max_pdu
    pairs: dict[str, set[str]] = {}
    for _, sop_class, syntax in headers:
        pairs.setdefault(sop_class, set()).add(syntax)
    contexts = []
    for sop_class, syntaxes in sorted(pairs.items()):
        ordered = sorted(syntaxes)
        for syntax in ordered:
            contexts.append(build_context(sop_class, [syntax]))
    if len(contexts) > MAX_CONTEXTS:
        raise SendError(f"{len(contexts)} presentation contexts needed; at most {MAX_CONTEXTS} per association")
    ae.requested_contexts = contexts
    assoc = ae.associate(destination.host, destination.port, ae_title=destination.ae_title)
    if not assoc.is_established:
        raise SendError(f"association with {destination} was not accepted")
    results: list[SendResult] = []
    try:
        for path, _, _ in headers:
            if not assoc.is_established:
                results.append(SendResult(path, None))
                continue
            status = assoc.send_c_store(path)
            results.append(SendResult(path, int(status.Status) if "Status" in status else None))
    finally:
        if assoc.is_established:
            assoc.release()
    return results


def echo(destination: Destination, calling_ae_title: str = "ROUTER", timeout: float = 10.0) -> int | None:
    """C-ECHO a destination; returns its status or ``None`` when there is no answer."""
    from router.dicom.scp import VERIFICATION_SOP_CLASS

    ae = AE(ae_title=calling_ae_title)
    ae.acse_timeout = timeout
    ae.dimse_timeout = timeout
    ae.network_timeout = timeout
    ae.add_requested_context(VERIFICATION_SOP_CLASS)
    assoc = ae.associate(destination.host, destination.port, ae_title=destination.ae_title)
    if not assoc.is_established:
        return None
    try:
        status = assoc.send_c_echo()
        return int(status.Status) if "Status" in status else None
    finally:
        assoc.release()
