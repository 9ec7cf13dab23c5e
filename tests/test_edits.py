"""The pure edit rules as tables: when a stored secret must be entered again, what an edit changes, and
when a save must be refused because of a pending draft (config/edits.py, config/conflicts.py)."""

from __future__ import annotations

import re
from typing import Any

import pytest

from config.conflicts import DRAFT_CHANGED, DRAFT_GONE, DRAFT_UNSEEN, save_conflict
from config.crypto import MASK
from config.edits import Change, describe_changes, diff_settings, edit_settings, needs_secret_again
from config.errors import InvalidInput
from config.smtp import parse_smtp_settings

PASSWORD = "Pw-edits-unique-71"
CLIENT_SECRET = "cs-edits-unique-72"
BASE = {
    "from": "noreply@acme.example",
    "host": "smtp.acme.example",
    "port": 587,
    "starttls": True,
    "auth": True,
    "username": "bot",
    "password": PASSWORD,
}
XOAUTH2 = {
    **{k: v for k, v in BASE.items() if k != "password"},
    "auth_type": "xoauth2",
    "oauth_token_url": "https://login.example/tenant/token",
    "oauth_client_id": "client",
    "oauth_client_secret": CLIENT_SECRET,
}


@pytest.mark.parametrize(
    "field, before, after, again",
    [
        ("host", "smtp.acme.example", "evil.example", True),
        ("port", 587, 2525, True),
        ("username", "bot", "other", True),
        ("ssl", False, True, True),  # another TLS mode, usually another port
        ("starttls", True, False, True),  # StartTLS off: plaintext
        ("starttls", False, True, True),
        ("verify_tls", True, False, True),  # anyone in the path could present a certificate
        ("verify_tls", False, True, False),  # only narrows who may receive it
        ("auth_type", "password", "xoauth2", True),
        ("oauth_token_url", "https://login.example/t", "https://evil.example/t", True),
        ("host", "smtp.acme.example", "smtp.acme.example", False),
        ("auth", True, False, False),  # not bound: off sends nothing
        ("auth", False, True, False),
        ("timeout", 10.0, 30.0, False),
        ("oauth_scope", "a", "b", False),
    ],
)
def test_which_changes_need_the_secret_again(field: str, before: Any, after: Any, again: bool) -> None:
    assert needs_secret_again(field, before, after) is again


@pytest.mark.parametrize(
    "change, field, words",
    [
        ({"verify_tls": False}, "verify_tls", "verify_tls changed from on to off"),
        ({"starttls": False}, "starttls", "starttls changed from on to off"),
        ({"starttls": False, "ssl": True, "port": 465}, "port", "port changed from 587 to 465"),
        ({"host": "evil.example"}, "host", "host changed from smtp.acme.example to evil.example"),
        ({"username": "someone"}, "username", "username changed from bot to someone"),
    ],
)
@pytest.mark.parametrize("given", [MASK, "absent"])
def test_a_weakening_edit_asks_for_the_password(
    change: dict[str, Any], field: str, words: str, given: str
) -> None:
    changes = dict(change) if given == "absent" else {**change, "password": given}
    with pytest.raises(InvalidInput) as caught:
        edit_settings(parse_smtp_settings(BASE), changes)
    assert caught.value.problems[0][0] == "password"
    assert caught.value.problems[0][1].startswith(words + ": enter the password again")
    # ...and with the password entered again, the same edit is fine
    edited = edit_settings(parse_smtp_settings(BASE), {**change, "password": "typed-again"})
    assert edited.secret("password") == "typed-again"


@pytest.mark.parametrize(
    "change, field",
    [
        ({"verify_tls": False}, "verify_tls"),
        ({"starttls": False, "ssl": True}, "ssl"),
        ({"host": "smtp.other.example"}, "host"),
        ({"oauth_token_url": "https://login.example/other-tenant/token"}, "oauth_token_url"),
    ],
)
def test_a_weakening_edit_asks_for_the_client_secret(change: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        edit_settings(parse_smtp_settings(XOAUTH2), {**change, "oauth_client_secret": MASK})
    assert caught.value.problems[0][0] == "oauth_client_secret"
    assert caught.value.problems[0][1].startswith(f"{field} changed from ")
    assert "enter the OAuth2 client secret again" in caught.value.problems[0][1]


def test_edits_that_do_not_weaken_keep_the_secret() -> None:
    base = parse_smtp_settings({**BASE, "verify_tls": False})
    edited = edit_settings(base, {"verify_tls": True, "timeout": 20, "password": MASK})
    assert (edited.verify_tls, edited.secret("password")) == (True, PASSWORD)
    assert edit_settings(parse_smtp_settings(BASE), {"auth": False}).secret("password") == PASSWORD


def test_switching_auth_type_with_a_masked_password_is_refused() -> None:
    change = {k: v for k, v in XOAUTH2.items() if k.startswith("oauth_") or k == "auth_type"}
    with pytest.raises(InvalidInput, match="password: auth_type changed from password to xoauth2"):
        edit_settings(parse_smtp_settings(BASE), {**change, "password": MASK})


def test_an_unusable_stored_secret_is_never_kept() -> None:
    why = "port changed from 587 to 2525 since the password was saved, outside `mailworker settings`"
    base = parse_smtp_settings(BASE)
    with pytest.raises(InvalidInput) as caught:
        edit_settings(base, {"timeout": 20}, unusable={"password": why})
    assert caught.value.problems == [("password", f"{why}: enter the password again")]
    assert edit_settings(base, {"password": "new"}, unusable={"password": why}).secret("password") == "new"


def test_the_token_url_rule_applies_at_edit() -> None:
    local = {**XOAUTH2, "oauth_token_url": "http://127.0.0.1:8080/token"}
    with pytest.raises(
        InvalidInput, match=re.escape("oauth_token_url: host 127.0.0.1 is a loopback address")
    ):
        edit_settings(None, local)
    assert edit_settings(None, local, allow_private_urls=True).oauth_token_url == local["oauth_token_url"]


def test_diff_lists_fields_with_secrets_masked() -> None:
    before = parse_smtp_settings(BASE)
    after = parse_smtp_settings(
        {**BASE, "host": "evil.example", "password": "other", "reply_to": "a@b.example"}
    )
    changes = diff_settings(before, after)
    assert [str(c) for c in changes] == [
        "reply_to: (not set) -> a@b.example",
        "host: smtp.acme.example -> evil.example",
        "password: ********** -> ********** (a new value)",
    ]
    assert "other" not in describe_changes(changes) and PASSWORD not in describe_changes(changes)
    assert diff_settings(before, before) == []


def test_diff_from_nothing_lists_what_is_set() -> None:
    fields = [c.field for c in diff_settings(None, parse_smtp_settings(BASE))]
    assert fields == ["from", "host", "port", "starttls", "auth", "username", "password"]


def test_describe_changes_is_one_bounded_line() -> None:
    changes = [Change(f"f{i}", "x\nnew line", "y" * 500) for i in range(30)]
    text = describe_changes(changes)
    assert text.endswith("; and 18 more") and len(text) < 12 * 200 and "\n" not in text
    assert describe_changes([]) == "no field changes"


@pytest.mark.parametrize(
    "pending, reviewed, gives_changes, draft_differs, outcome",
    [
        (None, None, True, False, None),  # no draft: changes go onto the saved settings
        (None, None, False, False, None),
        (None, "d1", False, False, DRAFT_GONE),  # the reviewed draft was saved or discarded meanwhile
        ("d1", "d1", True, True, None),  # the draft the caller reviewed: its changes go on top
        ("d1", "d1", False, True, None),
        ("d1", "d0", False, True, DRAFT_CHANGED),  # edited since it was reviewed
        ("d1", "d0", True, True, DRAFT_CHANGED),
        ("d1", None, True, True, DRAFT_UNSEEN),  # the issue: someone else's edits saved unseen
        ("d1", None, False, True, None),  # "save the draft", nothing of one's own: saved, changes shown
        ("d1", None, True, False, None),  # a draft that changes nothing hides nothing
    ],
)
def test_when_a_save_is_refused_because_of_a_draft(
    pending: str | None, reviewed: str | None, gives_changes: bool, draft_differs: bool, outcome: str | None
) -> None:
    assert (
        save_conflict(pending, reviewed, gives_changes=gives_changes, draft_differs=draft_differs) == outcome
    )
