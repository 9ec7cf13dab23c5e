"""Standard Webhooks signatures (https://www.standardwebhooks.com): `webhook-signature: v1,<base64 of
HMAC-SHA256 over "{id}.{timestamp}.{body}">`, keyed with the base64 part of the `whsec_` secret.

Written here rather than taken from the `standardwebhooks` package: the scheme is these few lines, and the
package would bring a generated HTTP client we do not use.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os

SECRET_PREFIX = "whsec_"
SECRET_BYTES = 32


def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(os.urandom(SECRET_BYTES)).decode()


def signature(secret: str, webhook_id: str, timestamp: int, body: bytes) -> str:
    key = base64.b64decode(secret.removeprefix(SECRET_PREFIX))
    signed = f"{webhook_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


def signed_headers(secret: str, webhook_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The three headers the receiver verifies (the timestamp is that of this attempt, the id is not)."""
    return {
        "webhook-id": webhook_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature(secret, webhook_id, timestamp, body),
        "Content-Type": "application/json",
    }
