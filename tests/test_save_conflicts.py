"""A save never applies draft changes its caller did not see (SettingsStore.save on fakeredis).

The rule (config.conflicts.save_conflict): while a draft is pending, a save with changes of its own must
name the draft it reviewed (`draft_id`); a save without changes saves the draft as it is. Every save
returns what it changed.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from config.crypto import SecretBox, new_key
from config.errors import ConflictError
from config.keys import Keys
from config.store import SettingsStore

REALM = "acme"
PASSWORD = "Sc4-distinctive-password-31"
NEW_PASSWORD = "Sc4-rotated-password-32"
BASE = {
    "from": "noreply@acme.example",
    "host": "smtp.acme.example",
    "port": 587,
    "starttls": True,
    "auth": True,
    "username": "bot",
    "password": PASSWORD,
}


@pytest.fixture
def box() -> SecretBox:
    return SecretBox([new_key()])


@pytest.fixture
def alice(fake_redis: Any, box: SecretBox) -> SettingsStore:
    return SettingsStore(fake_redis, Keys("t"), box)


@pytest.fixture
def mallory(fake_redis: Any, box: SecretBox) -> SettingsStore:
    return SettingsStore(fake_redis, Keys("t"), box)


def test_rotating_the_password_does_not_save_someone_elses_pending_host(
    alice: SettingsStore, mallory: SettingsStore
) -> None:
    """The issue: Alice rotates the password with --expect-version; Mallory's draft points the host at a
    server of hers (she had to give some password for that: her own). The save used to go through with
    Mallory's host and Alice's new password."""
    alice.save(REALM, BASE)
    draft = mallory.set_draft(REALM, {"host": "evil.example", "password": "mallorys-own"})
    with pytest.raises(ConflictError) as caught:
        alice.save(REALM, {"password": NEW_PASSWORD}, expected_version=1)
    message = str(caught.value)
    assert message == (
        f"realm acme: a draft is pending (draft {draft.draft_id}, edited from version 1) and this save would "
        "include its changes: host: smtp.acme.example -> evil.example; password: ********** -> ********** "
        "(a new value); look at it (`mailworker settings show --realm acme --draft`), then save it with "
        f"`mailworker settings save --realm acme --draft {draft.draft_id}` (your options may be added), or "
        "discard it with `mailworker settings revert --realm acme` and save again"
    )
    assert "mallorys-own" not in message and PASSWORD not in message
    saved = alice.saved(REALM)
    assert saved is not None and (saved.version, saved.settings.host) == (1, "smtp.acme.example")
    assert saved.settings.secret("password") == PASSWORD

    assert alice.revert(REALM) is True  # Alice discards it, then rotates
    rotated = alice.save(REALM, {"password": NEW_PASSWORD}, expected_version=1)
    assert (rotated.version, rotated.settings.host, rotated.settings.secret("password")) == (
        2, "smtp.acme.example", NEW_PASSWORD)  # fmt: skip
    assert [str(c) for c in rotated.changes] == ["password: ********** -> ********** (a new value)"]


def test_naming_the_reviewed_draft_saves_it_with_the_changes_on_top(alice: SettingsStore) -> None:
    alice.save(REALM, BASE)
    draft = alice.set_draft(REALM, {"timeout": 30})
    saved = alice.save(REALM, {"from_display_name": "ACME"}, draft_id=draft.draft_id)
    assert (saved.settings.timeout, saved.settings.from_display_name) == (30, "ACME")
    assert [str(c) for c in saved.changes] == [
        "from_display_name: (not set) -> ACME",
        "timeout: 10.0 -> 30.0",
    ]
    assert alice.draft(REALM) is None


def test_a_draft_edited_after_it_was_reviewed_is_not_saved(
    alice: SettingsStore, mallory: SettingsStore
) -> None:
    alice.save(REALM, BASE)
    reviewed = alice.set_draft(REALM, {"timeout": 30})
    edited = mallory.set_draft(REALM, {"host": "evil.example", "password": "mallorys-own"})
    assert edited.draft_id != reviewed.draft_id
    for changes in ({}, {"timeout": 40}):
        with pytest.raises(ConflictError) as caught:
            alice.save(REALM, changes, draft_id=reviewed.draft_id)
        assert str(caught.value).startswith(
            f"realm acme: the draft changed since you reviewed it (you named draft {reviewed.draft_id}, pending "
            f"is draft {edited.draft_id}, edited from version 1): host: smtp.acme.example -> evil.example; "
            "password: ********** -> ********** (a new value); timeout: 10.0 -> 30.0; look at it again"
        )
    assert alice.version(REALM) == 1


def test_naming_a_draft_that_is_gone(alice: SettingsStore) -> None:
    alice.save(REALM, BASE)
    draft = alice.set_draft(REALM, {"timeout": 30})
    alice.revert(REALM)
    with pytest.raises(ConflictError, match=f"draft {draft.draft_id} is no longer pending"):
        alice.save(REALM, {"timeout": 40}, draft_id=draft.draft_id)


def test_a_save_without_changes_saves_the_draft_and_says_what_changed(alice: SettingsStore) -> None:
    alice.save(REALM, BASE)
    alice.set_draft(REALM, {"timeout": 30, "reply_to": "help@acme.example"})
    saved = alice.save(REALM)
    assert [str(c) for c in saved.changes] == [
        "reply_to: (not set) -> help@acme.example",
        "timeout: 10.0 -> 30.0",
    ]


def test_a_draft_that_changes_nothing_hides_nothing(alice: SettingsStore) -> None:
    alice.save(REALM, BASE)
    alice.set_draft(REALM, {"timeout": 10})  # the saved value
    assert alice.save(REALM, {"timeout": 20}).settings.timeout == 20


def test_every_edit_gives_the_draft_a_new_id(alice: SettingsStore) -> None:
    first = alice.set_draft(REALM, BASE)
    second = alice.set_draft(REALM, {"timeout": 30})
    assert first.draft_id != second.draft_id and len(second.draft_id) == 8
    assert alice.draft(REALM).draft_id == second.draft_id  # type: ignore[union-attr]


def test_a_draft_written_before_drafts_had_ids_gets_a_stable_one(
    alice: SettingsStore, fake_redis: Any
) -> None:
    alice.save(REALM, BASE)
    alice.set_draft(REALM, {"timeout": 30})
    entry = json.loads(fake_redis.get(Keys("t").draft(REALM)))
    del entry["id"]
    fake_redis.set(Keys("t").draft(REALM), json.dumps(entry))
    draft_id = alice.draft(REALM).draft_id  # type: ignore[union-attr]
    assert draft_id == alice.draft(REALM).draft_id  # type: ignore[union-attr]
    assert alice.rotate_secrets().resealed == 3  # saved, history, draft: the id survives a rotation
    assert alice.save(REALM, {"timeout": 40}, draft_id=draft_id).settings.timeout == 40


def test_the_admin_console_saves_the_draft_it_shows(alice: SettingsStore, mallory: SettingsStore) -> None:
    """The Email tab: it shows the draft (and its id), Save sends the form with the id, Revert discards."""
    alice.save(REALM, BASE)
    shown = alice.set_draft(REALM, {"from_display_name": "ACME"})
    form = {**shown.settings.to_public(), "timeout": 25}  # what the tab sends back, password masked
    saved = alice.save(REALM, form, draft_id=shown.draft_id)
    assert (saved.settings.from_display_name, saved.settings.timeout) == ("ACME", 25)
    assert saved.settings.secret("password") == PASSWORD
    shown = alice.set_draft(REALM, {"timeout": 30})
    mallory.set_draft(REALM, {"reply_to": "mallory@evil.example"})
    with pytest.raises(ConflictError, match=re.escape("reply_to: (not set) -> mallory@evil.example")):
        alice.save(REALM, {**shown.settings.to_public()}, draft_id=shown.draft_id)
    assert alice.revert(REALM) is True and alice.draft(REALM) is None
