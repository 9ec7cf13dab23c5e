"""Realm names: they become parts of Redis keys and of template directory paths, so one strict rule."""

from __future__ import annotations

import re
from typing import Any

from config.errors import InvalidInput

REALM_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}\Z")


def check_realm(realm: Any) -> str:
    if not isinstance(realm, str) or not REALM_PATTERN.match(realm) or ".." in realm:
        raise InvalidInput.one(
            "realm", "must be 1-128 letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    return realm
