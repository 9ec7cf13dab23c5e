"""Encryption of stored secrets (SMTP password, OAuth2 client secret) with rotatable Fernet keys."""

from __future__ import annotations

import binascii

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from config.errors import ConfigError

MASK = "**********"


class SecretBox:
    """Encrypts with the first key, decrypts with any: prepend a new key to rotate, then re-encrypt."""

    def __init__(self, keys: list[str]) -> None:
        if not keys:
            raise ConfigError("MAILWORKER_SECRET_KEY is empty: give at least one Fernet key")
        fernets = []
        for position, key in enumerate(keys, start=1):
            try:
                fernets.append(Fernet(key.encode()))
            except (ValueError, binascii.Error):
                raise ConfigError(
                    f"MAILWORKER_SECRET_KEY: key {position} is not a Fernet key "
                    "(32 url-safe base64-encoded bytes); create one with `mailworker secret-key`"
                ) from None
        self._fernet = MultiFernet(fernets)

    def encrypt(self, plaintext: str) -> str:
        return self._fernet.encrypt(plaintext.encode()).decode()

    def decrypt(self, token: str) -> str:
        try:
            return self._fernet.decrypt(token.encode()).decode()
        except InvalidToken:
            raise ConfigError(
                "a stored secret cannot be decrypted with MAILWORKER_SECRET_KEY: "
                "was the key replaced instead of rotated (new key first, old key kept after a comma)?"
            ) from None

    def rotate(self, token: str) -> str:
        """Re-encrypt with the first key (after a rotation)."""
        try:
            return self._fernet.rotate(token.encode()).decode()
        except InvalidToken:
            raise ConfigError(
                "a stored secret cannot be decrypted with any key of MAILWORKER_SECRET_KEY"
            ) from None


def new_key() -> str:
    return Fernet.generate_key().decode()
