"""Names the whole service agrees on: queues, tasks, and the rule for realm names.

Realm names become parts of Redis keys and of template directory paths, so one strict rule.
"""

from __future__ import annotations

import re
from typing import Any

from config.errors import InvalidInput

# Queues: transactional mail (and IAM events), bulk chunks, and the control queue (Test Connection).
TRANSACTIONAL = "transactional"
BULK = "bulk"
CONTROL = "control"
QUEUES = (TRANSACTIONAL, BULK, CONTROL)

# Celery task names (what producers publish; renaming one strands the messages already queued).
SEND_TASK = "mail.send"
EVENT_TASK = "mail.event"
TEST_CONNECTION_TASK = "mail.test_connection"
BULK_START_TASK = "mail.bulk.start"
BULK_CHUNK_TASK = "mail.bulk.chunk"

REALM_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}\Z")


def check_realm(realm: Any) -> str:
    if not isinstance(realm, str) or not REALM_PATTERN.match(realm) or ".." in realm:
        raise InvalidInput.one(
            "realm", "must be 1-128 letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    return realm
