"""An association request naming an application context other than DICOM's is rejected.

PS3.7 Annex A.2.1 defines one application context name for DICOM, 1.2.840.10008.3.1.1.1, and
PS3.8 section 9.3.4 (Table 9-21) gives the acceptor its answer to any other: A-ASSOCIATE-RJ,
rejected-permanent (1), source DICOM UL service-user (1), reason
application-context-name-not-supported (2). DCMTK (``storescp``) and Orthanc answer so.
pynetdicom 3.0 never looks at the name: it accepted such a request and went on as if it were
DICOM.

:func:`install` makes pynetdicom's acceptor check the name first (before the AE titles and the
presentation contexts), answer the A-ASSOCIATE-RJ above and fire ``EVT_REJECTED``, whose
handler (:func:`router.dicom.listener._log_rejected`) logs one WARNING with
:func:`application_context_problem` as the reason.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from pynetdicom import evt
from pynetdicom.acse import ACSE

from router.logsafety import uid_for_log

#: The DICOM Application Context Name (PS3.7 Annex A.2.1).
DICOM_APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"
#: A-ASSOCIATE-RJ (result, source, reason): rejected-permanent, DICOM UL service-user,
#: application-context-name-not-supported (PS3.8 Table 9-21).
REJECT_APPLICATION_CONTEXT = (0x01, 0x01, 0x02)

_LOCK = threading.Lock()
_INSTALLED = False


def application_context_problem(request: Any) -> str | None:
    """Why the A-ASSOCIATE primitive ``request`` must be rejected for its application context
    name, or None when it is DICOM's. The peer's value is named as
    :func:`router.logsafety.uid_for_log` names a UID."""
    # Padding beyond PS3.8's one NUL (DCMTK compares the name as a C string) is tolerated.
    name = str(getattr(request, "application_context_name", None) or "").rstrip("\x00 ")
    if name == DICOM_APPLICATION_CONTEXT:
        return None
    if not name:
        return "no application context name (PS3.8 section 9.3.2); answered application-context-name-not-supported"
    return (
        f"application context name {uid_for_log(name)} is not DICOM's ({DICOM_APPLICATION_CONTEXT}, PS3.7 Annex A.2.1); "
        "answered application-context-name-not-supported"
    )


def _checking(negotiate: Callable[[ACSE], None]) -> Callable[[ACSE], None]:
    def negotiate_as_acceptor(self: ACSE) -> None:
        if application_context_problem(self.requestor.primitive) is None:
            negotiate(self)
            return
        # As pynetdicom rejects for an AE title (acse.ACSE._negotiate_as_acceptor).
        self.send_reject(*REJECT_APPLICATION_CONTEXT)
        evt.trigger(self.assoc, evt.EVT_REJECTED, {})
        self.assoc.kill()

    return negotiate_as_acceptor


def install() -> None:
    """Check the application context name of every association request from now on (idempotent)."""
    global _INSTALLED
    with _LOCK:
        if not _INSTALLED:
            target: Any = ACSE
            target._negotiate_as_acceptor = _checking(target._negotiate_as_acceptor)
            _INSTALLED = True
