"""VERP: the envelope sender of a transactional mail names its job, so a bounce finds its way back.

Encoding (docs/bounces.md): `<local>+<token>@<domain>` of the realm's envelope sender, where

    token = base32(HMAC-SHA256(key, realm "\\n" job id))[:16], lower case   (80 bits, [a-z2-7])

`key` comes from MAILWORKER_SECRET_KEY (config/crypto.py `mac_keys`). A job id does not fit in a local part
(64 characters at most, RFC 5321 4.5.3.1.1) next to a signature, so the token is a signature only, and
Redis maps it back to the job (`verp:<token>`, with the bounce window as its expiry). Whoever forges a
bounce cannot compute the token of another job without the key; a token found in Redis is checked against
its own entry (the same realm, the signature recomputed), so a planted entry names nothing either.
The same job gives the same token on every attempt: a retry's bounce maps as well as the first's.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from dataclasses import dataclass
from typing import Any

from config.keys import Keys

TOKEN_LENGTH = 16
MAX_LOCAL_PART = 64  # RFC 5321 4.5.3.1.1
SEPARATOR = "+"
MAC_PURPOSE = b"verp token"
# How long a token maps to its job: DSNs come within days (an MTA gives up after about 5 days of retries),
# late ARF complaints within weeks.
MAPPING_TTL = 30 * 86400


@dataclass(frozen=True)
class VerpTarget:
    """The job a VERP token named."""

    realm: str
    job_id: str
    to: str | None
    template: str | None = None


def token_for(key: bytes, realm: str, job_id: str) -> str:
    digest = hmac.new(key, f"{realm}\n{job_id}".encode(), hashlib.sha256).digest()
    return base64.b32encode(digest).decode("ascii")[:TOKEN_LENGTH].lower()


def verp_address(envelope: str, token: str) -> str | None:
    """`local+token@domain`, or None when the local part would pass 64 characters (VERP is then skipped:
    the bounce still maps by its Message-ID)."""
    local, at, domain = envelope.rpartition("@")
    if not at or not local or len(local) + len(SEPARATOR) + len(token) > MAX_LOCAL_PART:
        return None
    return f"{local}{SEPARATOR}{token}@{domain}"


def split_verp(address: str) -> tuple[str, str | None]:
    """(base address, token) of a recipient address: `a+tok@d` -> (`a@d`, `tok`); no token: (address, None).

    Only a well-formed token counts: `first.last+news@d` of a plain address stays itself.
    """
    local, at, domain = address.strip().strip("<>").rpartition("@")
    base, plus, token = local.rpartition(SEPARATOR)
    if (
        at
        and plus
        and base
        and len(token) == TOKEN_LENGTH
        and all(c in "abcdefghijklmnopqrstuvwxyz234567" for c in token.lower())
    ):
        return f"{base}@{domain}".lower(), token.lower()
    return address.strip().strip("<>").lower(), None


def token_matches(keys: list[bytes], token: str, realm: str, job_id: str) -> bool:
    """Does `token` sign (realm, job id) with any configured key (the old ones verify during rotation)?"""
    return any(hmac.compare_digest(token_for(key, realm, job_id), token) for key in keys)


class VerpMap:
    """Tokens to their jobs in Redis."""

    def __init__(self, redis: Any, keys: Keys, mac_keys: list[bytes], ttl: int = MAPPING_TTL) -> None:
        self.redis = redis
        self.keys = keys
        self.mac_keys = mac_keys
        self.ttl = ttl

    def address(self, envelope: str, target: VerpTarget) -> str | None:
        """The VERP envelope sender for the job, its mapping written first; None when it does not fit."""
        token = token_for(self.mac_keys[0], target.realm, target.job_id)
        address = verp_address(envelope, token)
        if address is not None:
            entry = {
                "realm": target.realm,
                "job_id": target.job_id,
                "to": target.to,
                "template": target.template,
            }
            self.redis.set(self.keys.verp(token), json.dumps(entry), ex=self.ttl)
        return address

    def resolve(self, token: str, realm: str) -> VerpTarget | None:
        """The job a token names, if it is one of `realm`'s and its signature holds; else None."""
        raw = self.redis.get(self.keys.verp(token))
        if raw is None:
            return None
        try:
            entry = json.loads(raw)
            target = VerpTarget(
                str(entry["realm"]), str(entry["job_id"]), entry.get("to"), entry.get("template")
            )
        except (ValueError, KeyError, TypeError):
            return None
        if target.realm != realm or not token_matches(self.mac_keys, token, target.realm, target.job_id):
            return None
        return target
