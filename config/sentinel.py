"""Redis Sentinel: `sentinel://` URL lists read into sentinels, database and credentials, and the options.

One spelling for the broker, the result backend and the store: Celery's `sentinel://h1:26379;sentinel://h2:26379/0`,
the master's name in MAILWORKER_SENTINEL_MASTER. kombu and Celery read the database and the password from the
list's first URL only, so the rules here are theirs: a later URL naming another database is refused rather than
silently ignored by one of the three clients.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

SCHEME = "sentinel://"
DEFAULT_PORT = 26379
# The list's separator: a `;` where a scheme follows (a password may hold a `;`).
_URL_LIST = re.compile(r";(?=[A-Za-z][A-Za-z0-9+.-]*://)")


@dataclass(frozen=True)
class Sentinel:
    """What a `sentinel://` URL needs beside itself: the monitored master's name, the sentinels' password."""

    master: str = ""
    password: str | None = None  # the sentinels' own (`requirepass` in sentinel.conf), not the master's

    def transport_options(self) -> dict[str, Any]:
        """kombu's and Celery's transport options for a sentinel:// broker or result backend."""
        options: dict[str, Any] = {"master_name": self.master}
        if self.password:
            options["sentinel_kwargs"] = {"password": self.password}
        return options


@dataclass(frozen=True)
class Target:
    """One `sentinel://` list, read: where the sentinels are, and what to ask the master for."""

    sentinels: tuple[tuple[str, int], ...]
    db: int = 0
    username: str | None = None
    password: str | None = None


def is_sentinel(url: str) -> bool:
    return url[: len(SCHEME)].lower() == SCHEME


def parse(url: str) -> Target:
    """The sentinels, database and master credentials of a `sentinel://` list; ValueError naming what is wrong."""
    sentinels: list[tuple[str, int]] = []
    first: Target | None = None
    for part in _URL_LIST.split(url.strip()):
        if not is_sentinel(part):
            raise ValueError(f"every URL of a Sentinel list starts with {SCHEME} (found {_scheme(part)!r})")
        at = part.rfind("@")
        credentials, hostport = (
            (part[len(SCHEME) : at], part[at + 1 :]) if at >= 0 else (None, part[len(SCHEME) :])
        )
        split = urlsplit("//" + hostport)
        try:
            port = split.port or DEFAULT_PORT
        except ValueError:
            raise ValueError("a sentinel's port is not a number") from None
        if not split.hostname:
            raise ValueError("a sentinel URL names no host")
        db = _db(split.path)
        username, password = _credentials(credentials)
        if first is None:
            first = Target((), db, username, password)
        elif split.path.strip("/") and db != first.db:
            raise ValueError(
                f"the URLs name different databases ({first.db} and {db}): kombu and Celery read the first "
                "URL's only; write the database on the first URL (or the same on each)"
            )
        sentinels.append((split.hostname, port))
    assert first is not None  # split always yields one part
    return Target(tuple(sentinels), first.db, first.username, first.password)


def _scheme(part: str) -> str:
    return part.split("://", 1)[0] + "://" if "://" in part else part[:20]


def _db(path: str) -> int:
    text = path.strip("/")
    if not text:
        return 0
    if not text.isdigit():
        raise ValueError("the database after the last sentinel's port is a number (/0)")
    return int(text)


def _credentials(credentials: str | None) -> tuple[str | None, str | None]:
    if credentials is None:
        return None, None
    user, colon, password = credentials.partition(":")
    if not colon:  # `sentinel://mailer@host`: an ACL user without a password
        return unquote(user) or None, None
    return unquote(user) or None, unquote(password) or None
