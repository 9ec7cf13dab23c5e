"""Encryption of stored secrets with the keys of MAILWORKER_SECRET_KEY (comma-separated Fernet keys).

Two formats:

- **Sealed** (settings secrets: SMTP password, OAuth2 client secret): AES-256-GCM, a random 96-bit nonce,
  and associated data chosen by the caller (config/codec.py binds a secret to where it may be sent). The
  AES key is derived with HKDF-SHA256 from each Fernet key, so the key format and the rotation procedure
  stay the same: the first key seals, every key opens. A sealed secret names its key by a short id
  (derived with HKDF too, so it tells nothing about the key): a failed opening can then tell "this key is
  not configured" from "the associated data differ".
- **MAC keys** (`mac_keys`): HMAC keys for signatures the service checks itself (the VERP token,
  worker/bounces/verp.py), derived with HKDF per purpose: the first key signs, every key verifies.
- **Fernet** tokens: the cached OAuth2 access tokens, and settings secrets saved before sealing existed
  (still readable; re-sealed on the next save or `mailworker secrets rotate`).
"""

from __future__ import annotations

import base64
import binascii
import os
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from config.errors import ConfigError

MASK = "**********"
SEALED_VERSION = 2  # 1 would be the plain Fernet token, which is a string rather than an object
NONCE_BYTES = 12
_AES_INFO = b"iam-mail-worker secret sealing v2: aes-256-gcm key"
_KID_INFO = b"iam-mail-worker secret sealing v2: key id"


class KeyNotHeld(ConfigError):
    """No configured key opens a stored secret: the key it was encrypted with was lost or replaced."""

    def __init__(self, kid: str | None) -> None:
        self.kid = kid
        super().__init__(f"a stored secret {self.reason.removeprefix('it ')}: was the key replaced instead of "
                         "rotated (new key first, old key kept after a comma)?")  # fmt: skip

    @property
    def reason(self) -> str:
        """Why the secret cannot be used, for a message about that secret (config/codec.py)."""
        which = f" (key id {self.kid})" if self.kid else ""
        return f"it was encrypted with a key that is not in MAILWORKER_SECRET_KEY{which}"


class SealBroken(Exception):
    """The key is there, but the ciphertext or its associated data are not what was sealed."""


@dataclass(frozen=True)
class Sealed:
    kid: str
    nonce: bytes
    ciphertext: bytes  # with the GCM tag at its end

    def to_json(self) -> dict[str, Any]:
        return {
            "v": SEALED_VERSION,
            "kid": self.kid,
            "nonce": base64.b64encode(self.nonce).decode(),
            "ct": base64.b64encode(self.ciphertext).decode(),
        }

    @classmethod
    def from_json(cls, data: Any) -> Sealed:
        """Raises ValueError when `data` is not a sealed secret of this version."""
        if not isinstance(data, dict) or data.get("v") != SEALED_VERSION:
            raise ValueError("not a sealed secret")
        try:
            nonce = base64.b64decode(str(data["nonce"]), validate=True)
            ciphertext = base64.b64decode(str(data["ct"]), validate=True)
        except (KeyError, binascii.Error):
            raise ValueError("a sealed secret with a damaged nonce or ciphertext") from None
        if len(nonce) != NONCE_BYTES:
            raise ValueError("a sealed secret with a damaged nonce")
        return cls(str(data.get("kid", "")), nonce, ciphertext)


def _derive(raw: bytes, info: bytes, length: int) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=None, info=info).derive(raw)


class SecretBox:
    """Encrypts with the first key, decrypts with any: prepend a new key to rotate, then re-encrypt."""

    def __init__(self, keys: list[str]) -> None:
        if not keys:
            raise ConfigError("MAILWORKER_SECRET_KEY is empty: give at least one Fernet key")
        fernets = []
        self._aes: list[tuple[str, AESGCM]] = []
        self._raw: list[bytes] = []
        for position, key in enumerate(keys, start=1):
            try:
                fernets.append(Fernet(key.encode()))
                raw = base64.urlsafe_b64decode(key.encode())
            except (ValueError, binascii.Error):
                raise ConfigError(
                    f"MAILWORKER_SECRET_KEY: key {position} is not a Fernet key "
                    "(32 url-safe base64-encoded bytes); create one with `mailworker secret-key`"
                ) from None
            self._raw.append(raw)
            kid = _derive(raw, _KID_INFO, 8).hex()
            self._aes.append((kid, AESGCM(_derive(raw, _AES_INFO, 32))))
        self._fernet = MultiFernet(fernets)

    # ---- sealed (AES-GCM with associated data) ---------------------------------------------------------

    def seal(self, plaintext: str, associated_data: bytes) -> Sealed:
        kid, aes = self._aes[0]
        nonce = os.urandom(NONCE_BYTES)
        return Sealed(kid, nonce, aes.encrypt(nonce, plaintext.encode(), associated_data))

    def open(self, sealed: Sealed, associated_data: bytes) -> str:
        """The plaintext; ConfigError when no configured key has the sealed kid, SealBroken when the key
        is there but the ciphertext or the associated data differ from what was sealed."""
        for kid, aes in self._aes:
            if kid == sealed.kid:
                try:
                    return aes.decrypt(sealed.nonce, sealed.ciphertext, associated_data).decode()
                except InvalidTag:
                    raise SealBroken() from None
        raise KeyNotHeld(sealed.kid or "?")

    # ---- MAC keys ---------------------------------------------------------------------------------------

    def mac_keys(self, purpose: bytes) -> list[bytes]:
        """One HMAC key per configured key for `purpose`, the signing one first (rotation as for sealing)."""
        return [_derive(raw, b"iam-mail-worker mac v1: " + purpose, 32) for raw in self._raw]

    # ---- Fernet (cached tokens; settings secrets of the old format) -------------------------------------

    def encrypt(self, plaintext: str) -> str:
        return self._fernet.encrypt(plaintext.encode()).decode()

    def decrypt(self, token: str) -> str:
        try:
            return self._fernet.decrypt(token.encode()).decode()
        except InvalidToken:
            raise KeyNotHeld(None) from None


def new_key() -> str:
    return Fernet.generate_key().decode()
