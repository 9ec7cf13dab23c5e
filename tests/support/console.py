"""The web console in tests without a browser: an httpx client signed in as a browser would be (the
sign-in form's token, then the session cookie), and the CSRF token a page's forms carry.

    with signed_in(api, admin_token) as console:
        page = console.get(f"/console/realms/{realm}/email")
        console.post(f"/console/realms/{realm}/email/revert", data={"csrf": csrf_of(page.text)})
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx

from tests.support.http import ApiServer

# A realm's settings for pages that only show them (nothing is sent: no server listens on this port).
SETTINGS = {
    "from": "noreply@example.com",
    "host": "127.0.0.1",
    "port": 2525,
    "connect_timeout": 5,
    "timeout": 5,
}

_CSRF = re.compile(r'name="csrf" value="([^"]+)"')
_HIDDEN = re.compile(r'<input type="hidden" name="([^"]+)" value="([^"]*)"')


def csrf_of(html: str) -> str:
    found = _CSRF.search(html)
    assert found, "the page has no form with a CSRF token"
    return found.group(1)


def hidden_fields(html: str) -> dict[str, str]:
    """The hidden fields of the page's forms (the first value of each name)."""
    fields: dict[str, str] = {}
    for name, value in _HIDDEN.findall(html):
        fields.setdefault(name, value)
    return fields


def sign_in(client: httpx.Client, token: str) -> httpx.Response:
    form = client.get("/console/sign-in")
    return client.post("/console/sign-in", data={"csrf": csrf_of(form.text), "token": token})


@contextmanager
def signed_in(api: ApiServer, token: str) -> Iterator[httpx.Client]:
    with api.client() as client:
        reply = sign_in(client, token)
        assert reply.status_code == 303 and reply.headers["location"] == "/console/", reply.text
        yield client


def saved_realm(realm: str, **overrides: Any) -> str:
    """`realm` saved as version 1 with SETTINGS and `overrides`."""
    from worker.runtime import runtime

    runtime().store.save(realm, {**SETTINGS, **overrides})
    return realm
