"""Key-encryption keys (KEKs) for encryption at rest, by id, and AES-256-GCM of short values.

A KEK is 32 random bytes, base64 (or 64 hex digits) in the environment variable
``ROUTER_KEK_<ID>`` (upper case, ``-`` as ``_``) or in the file ``<key_dir>/<id>.key``
(mode 0600). ``[encryption] keys`` lists the ids the node loads at start (each must be found);
``active_key`` is the one new data keys are wrapped with. An id met in a file header but not
listed is looked up in ``key_dir`` when first needed, so a running node reads files that
``router keys rotate`` re-wrapped to a key added after it started.

Short database values (the patient's address and residence) are encrypted with the active KEK
directly: ``enc1:<key id>:<base64(nonce || ciphertext || tag)>``, the key id and the column
name as associated data (NIST SP 800-38D; 96-bit random nonces).
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import threading
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from router.errors import RouterError

KEY_BYTES = 32  # AES-256
NONCE_BYTES = 12
_KEY_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
VALUE_PREFIX = "enc1:"


class KeyRingError(RouterError):
    """A key is missing, malformed, or does not authenticate the data (wrong key or tampering)."""


def valid_key_id(key_id: str) -> bool:
    """Whether ``key_id`` is 1-64 of ``A-Z a-z 0-9 _ . -``, starting with a letter or digit."""
    return bool(_KEY_ID.match(key_id))


def env_name(key_id: str) -> str:
    """Environment variable holding KEK ``key_id``: ``ROUTER_KEK_<ID>``."""
    return "ROUTER_KEK_" + re.sub(r"[^A-Z0-9]", "_", key_id.upper())


def parse_key(text: str, source: str) -> bytes:
    """32 key bytes from base64 or 64 hex digits.

    Raises
    ------
    KeyRingError
        If ``text`` is neither, or not 32 bytes long.
    """
    text = text.strip()
    try:
        raw = bytes.fromhex(text) if re.fullmatch(r"[0-9a-fA-F]{64}", text) else base64.b64decode(text, validate=True)
    except (ValueError, binascii.Error) as exc:
        raise KeyRingError(f"{source}: not base64 or hex") from exc
    if len(raw) != KEY_BYTES:
        raise KeyRingError(f"{source}: a key is {KEY_BYTES} bytes, got {len(raw)}")
    return raw


def new_key_text() -> str:
    """A fresh random KEK, base64."""
    return base64.b64encode(os.urandom(KEY_BYTES)).decode("ascii")


class KeyRing:
    """KEKs by id and the active one. Thread-safe (a lock guards the lazy look-ups).

    Parameters
    ----------
    keys : dict[str, bytes]
        KEKs loaded at start, by id.
    active_key_id : str
        Id of the KEK new data keys are wrapped with (must be in ``keys``).
    key_dir : Path or None
        Where unlisted ids are looked up (``<id>.key``).
    """

    def __init__(self, keys: dict[str, bytes], active_key_id: str, key_dir: Path | None = None) -> None:
        if active_key_id not in keys:
            raise KeyRingError(f"active key {active_key_id!r} is not loaded")
        self._keys = dict(keys)
        self.active_key_id = active_key_id
        self._key_dir = key_dir
        self._lock = threading.Lock()

    @classmethod
    def load(cls, key_ids: tuple[str, ...], active_key_id: str, key_dir: Path | None) -> KeyRing:
        """Load every listed KEK from its environment variable or key file.

        Raises
        ------
        KeyRingError
            If a key is missing or malformed (the message names the id, never the key).
        """
        keys = {key_id: _read_key(key_id, key_dir, env=True) for key_id in key_ids}
        return cls(keys, active_key_id, key_dir)

    @property
    def active_key(self) -> bytes:
        """The active KEK."""
        return self._keys[self.active_key_id]

    def key(self, key_id: str) -> bytes:
        """The KEK ``key_id`` (looked up in ``key_dir`` if not loaded).

        Raises
        ------
        KeyRingError
            If it cannot be found.
        """
        with self._lock:
            found = self._keys.get(key_id)
            if found is None:
                if not valid_key_id(key_id) or self._key_dir is None:
                    raise KeyRingError(f"key {key_id!r} is not in the key ring")
                found = _read_key(key_id, self._key_dir, env=False)
                self._keys[key_id] = found
            return found

    # ------------------------------------------------------------------ short values
    def encrypt_value(self, value: str | None, column: str) -> str | None:
        """``enc1:<key id>:<base64>`` of ``value`` (``None`` stays ``None``)."""
        if value is None:
            return None
        nonce = os.urandom(NONCE_BYTES)
        aad = f"{self.active_key_id}:{column}".encode()
        sealed = AESGCM(self.active_key).encrypt(nonce, value.encode("utf-8"), aad)
        return f"{VALUE_PREFIX}{self.active_key_id}:{base64.b64encode(nonce + sealed).decode('ascii')}"

    def decrypt_value(self, stored: str | None, column: str) -> str | None:
        """The plain text of a value from :meth:`encrypt_value`; plain values pass unchanged.

        Raises
        ------
        KeyRingError
            If the key is unknown or the value does not authenticate.
        """
        if stored is None or not stored.startswith(VALUE_PREFIX):
            return stored
        key_id, _, payload = stored[len(VALUE_PREFIX) :].partition(":")
        try:
            raw = base64.b64decode(payload, validate=True)
            plain = AESGCM(self.key(key_id)).decrypt(
                raw[:NONCE_BYTES], raw[NONCE_BYTES:], f"{key_id}:{column}".encode()
            )
        except (InvalidTag, ValueError, binascii.Error) as exc:
            raise KeyRingError(f"an encrypted {column} value does not authenticate with key {key_id!r}") from exc
        return plain.decode("utf-8")

    def value_key_id(self, stored: str | None) -> str | None:
        """Key id of an encrypted value (``None`` for plain values)."""
        if stored is None or not stored.startswith(VALUE_PREFIX):
            return None
        return stored[len(VALUE_PREFIX) :].partition(":")[0]


def _read_key(key_id: str, key_dir: Path | None, env: bool) -> bytes:
    if not valid_key_id(key_id):
        raise KeyRingError(f"invalid key id {key_id!r}")
    if env and (text := os.environ.get(env_name(key_id))):
        return parse_key(text, env_name(key_id))
    if key_dir is None:
        raise KeyRingError(f"key {key_id!r}: set {env_name(key_id)} or encryption.key_dir")
    path = Path(key_dir) / f"{key_id}.key"
    try:
        return parse_key(path.read_text(encoding="ascii"), str(path))
    except FileNotFoundError as exc:
        raise KeyRingError(f"key {key_id!r}: neither {env_name(key_id)} nor {path} exists") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise KeyRingError(f"key {key_id!r}: cannot read {path}") from exc
