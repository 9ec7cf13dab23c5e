"""Names the whole service agrees on: queues, tasks, and the rule for realm names.

Realm names become parts of Redis keys and of template directory paths, so one strict rule.
"""

from __future__ import annotations

import re
from typing import Any

from config.errors import InvalidInput

# Queues: transactional mail (and IAM events), bulk chunks, the control queue (Test Connection), and the
# delivery webhooks (callbacks: a slow receiver must never hold a process that mail needs).
TRANSACTIONAL = "transactional"
BULK = "bulk"
CONTROL = "control"
CALLBACKS = "callbacks"
QUEUES = (TRANSACTIONAL, BULK, CONTROL, CALLBACKS)

# Celery task names (what producers publish; renaming one strands the messages already queued).
SEND_TASK = "mail.send"
EVENT_TASK = "mail.event"
TEST_CONNECTION_TASK = "mail.test_connection"
BULK_START_TASK = "mail.bulk.start"
BULK_CHUNK_TASK = "mail.bulk.chunk"
WEBHOOK_TASK = "mail.webhook"
# The message header with the time a message was published (worker/app.py sets it, /metrics reads it).
PUBLISHED_AT = "mailworker_published_at"

# A realm name becomes a part of Redis keys and of template directory paths: letters, digits, '.', '_',
# '-', never '..'.
REALM_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}\Z")
# A template name: lower case; names starting with '_' (layouts, macros) cannot be rendered directly.
TEMPLATE_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}\Z")
# RFC 5646 4.4.1: 35 characters hold any tag a registry can produce. The renderer's locale fallback is
# quadratic in the tag's length, so the limit is part of the pattern (checked before the rest of it).
MAX_LOCALE_LENGTH = 35
LOCALE_PATTERN = re.compile(rf"^(?=.{{2,{MAX_LOCALE_LENGTH}}}\Z)[A-Za-z]{{2,3}}([_-][A-Za-z0-9]{{2,8}})*\Z")


def valid_realm(realm: Any) -> bool:
    return isinstance(realm, str) and REALM_PATTERN.match(realm) is not None and ".." not in realm


def check_realm(realm: Any) -> str:
    if not valid_realm(realm):
        raise InvalidInput.one(
            "realm", "must be 1-128 letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    return str(realm)


def valid_template(name: Any) -> bool:
    return isinstance(name, str) and TEMPLATE_PATTERN.match(name) is not None


def check_template_name(name: Any, field: str = "template") -> str:
    if not valid_template(name):
        raise InvalidInput.one(field, "must be a template name like 'password-reset'")
    return str(name)


def check_locale(field: str, value: Any) -> str | None:
    """A language tag (or None: the realm's default)."""
    if value is not None and (not isinstance(value, str) or not LOCALE_PATTERN.match(value)):
        raise InvalidInput.one(
            field,
            f"must be a language tag like 'en', 'de' or 'pt-BR' (at most {MAX_LOCALE_LENGTH} characters)",
        )
    return value
