"""User information sub-items of a type this router does not know are skipped, not fatal.

The User Information item of an A-ASSOCIATE-RQ or -AC (PS3.8 section 9.3.2.3, 9.3.3.3) is the
extension point of association negotiation: PS3.7 Annex D.3.3 defines its sub-items (item types
0x51 to 0x59), and later editions or a vendor may add others. DCMTK and fo-dicom skip a sub-item
they do not know. pynetdicom 3.0 looks each type up in its table of all PDU items: an unknown
type raised ``KeyError`` in its network thread, so the whole association was aborted (with a
traceback at ERROR), and a misplaced item of another level (an Application Context item, 0x10)
was decoded as that item inside the user information.

:func:`install` makes the User Information item decode only the sub-items PS3.7 defines and
skip the others by their length, logging each at DEBUG (its type and length, never its bytes).
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from pynetdicom.pdu_items import PDU_ITEM_TYPES, UserInformationItem

LOG = logging.getLogger(__name__)

#: Sub-item types of the User Information item (PS3.7 Annex D.3.3, PS3.8 Annex D.1-D.3):
#: maximum length, implementation class UID, asynchronous operations window, SCP/SCU role
#: selection, implementation version name, SOP class extended and common extended
#: negotiation, user identity (RQ and AC).
USER_SUB_ITEM_TYPES = frozenset(range(0x51, 0x5A))

#: User Identity Type values of a User Identity sub-item (PS3.7 Table D.3-14): username,
#: username and passcode, Kerberos, SAML, JSON Web Token.
USER_IDENTITY_TYPES = frozenset(bytes([kind]) for kind in range(1, 6))

_LOCK = threading.Lock()
_INSTALLED = False


def known_sub_items(bytestream: bytes) -> list[Any]:
    """The decoded sub-items of a User Information item's value ``bytestream``, in order,
    without those whose type is not in :data:`USER_SUB_ITEM_TYPES` and User Identity sub-items
    of a user identity type not in :data:`USER_IDENTITY_TYPES`.

    Raises what pynetdicom raises for a sub-item that runs past the end of ``bytestream``
    (``AssertionError``) or a malformed known sub-item: the association is aborted, as before.
    """
    items: list[Any] = []
    for item_type, item_bytes in UserInformationItem._generate_items(bytestream):
        if item_type not in USER_SUB_ITEM_TYPES:
            LOG.debug("user information sub-item of type 0x%02X ignored (%d bytes)", item_type, len(item_bytes))
            continue
        if item_type == 0x58 and item_bytes[4:5] not in USER_IDENTITY_TYPES:
            # pynetdicom refuses the type only when making the primitive, in its network thread,
            # which then dies without answering; the router negotiates no user identity anyway
            LOG.debug("user identity sub-item of an undefined user identity type ignored (%d bytes)", len(item_bytes))
            continue
        item = PDU_ITEM_TYPES[item_type]()
        item.decode(item_bytes)
        items.append(item)
    return items


def install() -> None:
    """Decode User Information items with :func:`known_sub_items` from now on (idempotent)."""
    global _INSTALLED
    with _LOCK:
        if not _INSTALLED:

            def _wrap_generate_items(self: UserInformationItem, bytestream: bytes) -> list[Any]:
                return known_sub_items(bytestream)

            UserInformationItem._wrap_generate_items = _wrap_generate_items  # type: ignore[assignment, method-assign]
            _INSTALLED = True
