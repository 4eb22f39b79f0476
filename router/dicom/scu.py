"""C-STORE SCU: send Part 10 files to a DICOM destination (demo, forwarding, tests).

Files are sent byte for byte as stored, in their own transfer syntax (pynetdicom's
``STORE_SEND_CHUNKED_DATASET``: the data set is streamed from the file, never decoded and
re-encoded): one presentation context is proposed per (SOP class, transfer syntax) pair.
A destination reached over DICOM TLS (PS3.15 Annex B.1: TLS 1.2 or later, the server's
certificate checked against the configured CA and, by default, its host name) is written
``tls://AE@host:port`` or listed in ``[forwarding.tls] destinations``.
"""

from __future__ import annotations

import itertools
import logging
import ssl
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset
from pynetdicom import AE, _config
from pynetdicom import association as pynetdicom_association
from pynetdicom.dsutils import split_dataset as _PYNETDICOM_SPLIT
from pynetdicom.presentation import build_context

from router.errors import RouterError
from router.part10 import file_meta_elements

LOG = logging.getLogger(__name__)

#: pynetdicom (and PS3.8 section 9.3.2.2) allows at most 128 presentation contexts.
MAX_CONTEXTS = 128


class SendError(RouterError):
    """The destination could not be reached or refused the association."""


TLS_SCHEME = "tls://"


@dataclass(frozen=True)
class Destination:
    """A C-STORE SCP: AE title, host and TCP port; ``tls`` when reached over DICOM TLS."""

    ae_title: str
    host: str
    port: int
    tls: bool = False

    @classmethod
    def parse(cls, text: str) -> Destination:
        """Parse ``AE@host:port`` or ``tls://AE@host:port`` (IPv6 host in brackets).

        Raises
        ------
        ValueError
            If the text is not of that form.
        """
        tls = text.startswith(TLS_SCHEME)
        body = text[len(TLS_SCHEME) :] if tls else text
        ae_title, _, rest = body.partition("@")
        host, _, port = rest.rpartition(":")
        if not ae_title or not host or not port.isdigit():
            raise ValueError(f"{text!r} is not AE@host:port or tls://AE@host:port")
        return cls(ae_title=ae_title, host=host.strip("[]"), port=int(port), tls=tls)

    @property
    def address(self) -> str:
        """``host:port`` (IPv6 host in brackets), as listed in ``[forwarding.tls] destinations``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def __str__(self) -> str:
        return f"{TLS_SCHEME if self.tls else ''}{self.ae_title}@{self.address}"


def client_tls_context(
    ca_file: Path | None = None,
    cert_file: Path | None = None,
    key_file: Path | None = None,
    check_hostname: bool = True,
) -> ssl.SSLContext:
    """A client-side TLS context for DICOM TLS (PS3.15 Annex B.1; TLS 1.2 or later).

    The destination's certificate must chain to ``ca_file`` (or to the system's trusted CAs)
    and, with ``check_hostname``, name the host it is reached at; ``cert_file``/``key_file``
    are presented to destinations that ask for a client certificate.

    Raises
    ------
    SendError
        If a file cannot be loaded.
    """
    try:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca_file) if ca_file else None)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.check_hostname = check_hostname
        if cert_file is not None:
            context.load_cert_chain(str(cert_file), str(key_file) if key_file else None)
    except (OSError, ssl.SSLError) as exc:
        raise SendError(f"cannot load the forwarding TLS CA, certificate or key: {exc}") from exc
    return context


class Forwarder:
    """Sends files to destinations given as text, over TLS where asked (the forwarding service's ``send``).

    Parameters
    ----------
    tls_context : ssl.SSLContext, optional
        Used for ``tls://`` destinations and those whose ``host:port`` is in ``tls_addresses``;
        without one, such a destination fails with :class:`SendError` (never sent in the clear).
    tls_addresses : iterable of str
        ``host:port`` of destinations always reached over TLS.
    """

    def __init__(self, tls_context: ssl.SSLContext | None = None, tls_addresses: Iterable[str] = ()) -> None:
        self.tls_context = tls_context
        self.tls_addresses = frozenset(address.strip().lower() for address in tls_addresses)

    def destination(self, text: str) -> Destination:
        """The destination ``text`` names, with ``tls`` set when it is to be reached over TLS."""
        destination = Destination.parse(text)
        if not destination.tls and destination.address.lower() in self.tls_addresses:
            destination = Destination(destination.ae_title, destination.host, destination.port, tls=True)
        return destination

    def __call__(self, paths: Sequence[Path], destination: str, calling_ae_title: str) -> list[bool]:
        """Send ``paths`` to ``destination``; one accepted flag per path the destination answered,
        in order, up to the first without an answer (a shorter list: the association ended). A
        file the destination accepted no presentation context for counts as refused (False).

        Raises
        ------
        SendError
            As :func:`send_files`.
        """
        results = send_files(
            list(paths), self.destination(destination), calling_ae_title=calling_ae_title, tls_context=self.tls_context
        )
        answered = itertools.takewhile(lambda result: result.status is not None or result.refused_context, results)
        return [result.ok for result in answered]


@dataclass(frozen=True)
class SendResult:
    """Status of one file sent: ``status`` is the C-STORE status, or ``None`` if no response.

    ``refused_context`` is set (the reason) for a file not sent at all because the destination
    accepted no presentation context for its SOP class and transfer syntax (the Result of its
    presentation context item in the A-ASSOCIATE-AC, PS3.8 section 9.3.3.2):
    the association went on with the other files.
    """

    path: Path
    status: int | None
    refused_context: str | None = None

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
    tls_context: ssl.SSLContext | None = None,
) -> list[SendResult]:
    """Send files over one association and return one result per file, in order.

    Sending stops at the first file without a response (the peer aborted or closed the
    association, or ``timeout`` seconds passed); it and every file after it get status
    ``None`` (not stored, as far as the router knows). A file whose SOP class and transfer
    syntax the destination accepted no presentation context for is skipped
    (``refused_context``), and the others are still sent; if it accepted none at all, every
    file is refused so (no :class:`SendError`: it answered, and retrying will not help).

    A ``destination.tls`` destination is reached over DICOM TLS with ``tls_context``, the
    host name checked by the context's rules (server name indication is the host).

    Raises
    ------
    SendError
        If the association is refused, aborted before it starts (a failed TLS handshake
        included), no file can be read, or a TLS destination is given without ``tls_context``.
    """
    # Send the stored bytes as they are (never decoded and re-encoded): process-wide, idempotent.
    _config.STORE_SEND_CHUNKED_DATASET = True
    pynetdicom_association.split_dataset = split_file
    headers = []
    for path in paths:
        file_meta, _ = split_file(path)
        headers.append((path, str(file_meta.MediaStorageSOPClassUID), str(file_meta.TransferSyntaxUID)))
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
    assoc = ae.associate(
        destination.host, destination.port, ae_title=destination.ae_title, tls_args=_tls_args(destination, tls_context)
    )
    if not assoc.is_established and assoc.rejected_contexts and not assoc.accepted_contexts:
        # The destination answered and accepted none of the presentation contexts proposed
        # (pynetdicom then aborts): not one file can go, each is refused for its context.
        refused = []
        for path, sop_class, syntax in headers:
            _log_refused_context(destination, sop_class, syntax, path)
            refused.append(SendResult(path, None, refused_context="no presentation context accepted for it"))
        return refused
    if not assoc.is_established:
        if assoc.is_rejected:
            raise SendError(f"association with {destination} was rejected")
        raise SendError(
            f"association with {destination} was not established: no answer within {timeout:g} s, "
            "or the connection was closed or aborted"
        )
    results: list[SendResult] = []
    ended = False
    try:
        for path, sop_class, syntax in headers:
            try:
                status = assoc.send_c_store(path) if assoc.is_established else None
            except ValueError as exc:
                # pynetdicom: no accepted presentation context fits the file (the destination
                # does not take that SOP class, or not in that transfer syntax)
                _log_refused_context(destination, sop_class, syntax, path)
                results.append(SendResult(path, None, refused_context=str(exc).splitlines()[0][:200]))
                continue
            results.append(SendResult(path, int(status.Status) if status and "Status" in status else None))
            if results[-1].status is None:
                # No response: the peer aborted or closed the association, or it timed out.
                # Nothing more can go over it. The association thread may not have noticed
                # yet: another C-STORE, or an A-RELEASE-RQ, would wait out the whole timeout
                # for an answer that cannot come.
                ended = True
                break
    finally:
        if ended:
            assoc.abort()
        elif assoc.is_established:
            assoc.release()
    results.extend(SendResult(path, None) for path, _, _ in headers[len(results) :])
    return results


def split_file(path: Path) -> tuple[Dataset, int]:
    """The File Meta Information of the Part 10 file at ``path`` and the byte offset of its data
    set, the meta read only up to its group length (0002,0000), as PS3.10 section 7.1 lays it out.

    pynetdicom's ``split_dataset``, which its C-STORE of a file calls, reads every group 0002
    element at the start of the file as File Meta: a data set that itself begins with such
    elements (a sender put them there; the router stores it as sent) was then sent without
    them, under the transfer syntax they named, and refused or mislabelled by the reader (found
    by a trial). :func:`send_files` makes pynetdicom use this instead. A file without a group
    length (not one the router wrote) is split by pynetdicom's own reading.

    Raises
    ------
    OSError
        If the file cannot be read.
    """
    try:
        meta, offset = file_meta_elements(path)
    except ValueError:
        return _PYNETDICOM_SPLIT(path)
    return read_dataset(BytesIO(meta), is_implicit_VR=False, is_little_endian=True), offset


def _log_refused_context(destination: Destination, sop_class: str, syntax: str, path: Path) -> None:
    LOG.warning(
        "%s did not accept SOP class %s in transfer syntax %s: %s not sent", destination, sop_class, syntax, path.name
    )


def _tls_args(destination: Destination, context: ssl.SSLContext | None) -> tuple[ssl.SSLContext, str] | None:
    if not destination.tls:
        return None
    if context is None:
        raise SendError(f"{destination} is a TLS destination and no TLS context is configured ([forwarding.tls])")
    return context, destination.host


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
