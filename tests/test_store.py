"""SettingsStore on fakeredis: versions, draft, revert, history, rollback, mask rule, conflicts, rotation."""

from __future__ import annotations

import json
from typing import Any

import pytest

from config.crypto import MASK, SecretBox, new_key
from config.errors import ConfigError, ConflictError, InvalidInput, NotFound
from config.keys import Keys
from config.smtp import parse_smtp_settings
from config.store import (
    SettingsStore,
    apply_changes,
    decode_settings,
    edit_settings,
    encode_settings,
    weakening_change,
)

REALM = "acme"
PASSWORD = "Pw-7f3e-unique"
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
def store(fake_redis: Any, box: SecretBox) -> SettingsStore:
    return SettingsStore(fake_redis, Keys("t"), box)


# ---- pure helpers -------------------------------------------------------------------------------------


def test_apply_changes_sets_and_clears() -> None:
    merged = apply_changes({"host": "a", "port": 25, "reply_to": "x@y.z"}, {"port": 587, "reply_to": None})
    assert merged == {"host": "a", "port": 587}


def test_apply_changes_accepts_the_python_name_of_from() -> None:
    assert apply_changes({"from": "a@b.c"}, {"from_address": "d@e.f"}) == {"from": "d@e.f"}


@pytest.mark.parametrize(
    "change, field",
    [
        ({"host": "evil.example"}, "host"),
        ({"port": 465, "starttls": False, "ssl": True}, "port"),
        ({"username": "other"}, "username"),
        ({"starttls": False}, "starttls"),
        ({"starttls": False, "ssl": True}, "ssl"),
        ({"verify_tls": False}, "verify_tls"),
        ({"auth_type": "xoauth2", "oauth_token_url": "https://login.example/t", "oauth_client_id": "i",
          "oauth_client_secret": "s"}, "auth_type"),
    ],
)  # fmt: skip
def test_weakening_change(change: dict[str, Any], field: str) -> None:
    before = parse_smtp_settings(BASE)
    after = parse_smtp_settings({**BASE, **change})
    assert weakening_change(before, after) is not None
    assert weakening_change(before, after)[0] == field  # type: ignore[index]
    assert weakening_change(before, parse_smtp_settings({**BASE, "timeout": 30})) is None


def test_edit_keeps_the_masked_password_when_nothing_it_is_bound_to_changed() -> None:
    base = parse_smtp_settings(BASE)
    edited = edit_settings(base, {"password": MASK, "timeout": 30, "from_display_name": "Acme"})
    assert edited.secret("password") == PASSWORD
    assert edited.timeout == 30


@pytest.mark.parametrize(
    "change, field",
    [
        ({"host": "evil.example"}, "host"),
        ({"port": 2525}, "port"),
        ({"username": "other"}, "username"),
        ({"starttls": False}, "starttls"),
        ({"starttls": False, "ssl": True, "port": 587}, "ssl"),
    ],
)
@pytest.mark.parametrize("password", [MASK, "absent"])
def test_edit_refuses_to_carry_the_password_to_changed_credentials(
    change: dict[str, Any], field: str, password: str
) -> None:
    changes = dict(change) if password == "absent" else {**change, "password": password}
    with pytest.raises(InvalidInput) as caught:
        edit_settings(parse_smtp_settings(BASE), changes)
    assert caught.value.problems[0][0] == "password"
    assert caught.value.problems[0][1].startswith(f"{field} changed from ")
    assert (
        "enter the password again (a stored password is never sent to a new server, or over a weaker "
        "connection)" in str(caught.value)
    )


def test_edit_names_old_and_new_host() -> None:
    with pytest.raises(InvalidInput, match=r"host changed from smtp\.acme\.example to evil\.example"):
        edit_settings(parse_smtp_settings(BASE), {"host": "evil.example", "password": MASK})


def test_edit_with_a_new_password_may_change_the_host() -> None:
    edited = edit_settings(parse_smtp_settings(BASE), {"host": "new.example", "password": "new-pw"})
    assert (edited.host, edited.secret("password")) == ("new.example", "new-pw")


def test_edit_may_clear_the_password_when_changing_the_host() -> None:
    edited = edit_settings(
        parse_smtp_settings(BASE), {"host": "new.example", "auth": False, "password": None}
    )
    assert edited.password is None


def test_mask_without_a_stored_password_is_refused() -> None:
    with pytest.raises(InvalidInput, match="password: is masked"):
        edit_settings(parse_smtp_settings({**BASE, "auth": False, "password": None}), {"password": MASK})


def test_masked_client_secret_follows_the_same_rule() -> None:
    xoauth = {
        **BASE,
        "password": None,
        "auth_type": "xoauth2",
        "oauth_token_url": "https://login.example/token",
        "oauth_client_id": "id",
        "oauth_client_secret": "cs-unique",
    }
    base = parse_smtp_settings({k: v for k, v in xoauth.items() if v is not None})
    assert edit_settings(base, {"oauth_client_secret": MASK}).secret("oauth_client_secret") == "cs-unique"
    with pytest.raises(InvalidInput) as caught:
        edit_settings(base, {"oauth_client_secret": MASK, "oauth_token_url": "https://evil.example/token"})
    assert caught.value.problems[0][0] == "oauth_client_secret"
    assert "oauth_token_url changed" in caught.value.problems[0][1]


def test_encoded_settings_hold_no_clear_secret(box: SecretBox) -> None:
    encoded = encode_settings(parse_smtp_settings(BASE), box, realm=REALM)
    assert "password" not in encoded and PASSWORD not in json.dumps(encoded)
    assert decode_settings(encoded, box, realm=REALM).secret("password") == PASSWORD


def test_decoding_with_the_wrong_key_is_a_config_error(box: SecretBox) -> None:
    encoded = encode_settings(parse_smtp_settings(BASE), box, realm=REALM)
    with pytest.raises(ConfigError, match="MAILWORKER_SECRET_KEY"):
        decode_settings(encoded, SecretBox([new_key()]), realm=REALM)


# ---- versions, draft, revert --------------------------------------------------------------------------


def test_never_saved_realm_has_version_zero(store: SettingsStore) -> None:
    assert store.version(REALM) == 0
    assert store.saved(REALM) is None and store.draft(REALM) is None


def test_save_increments_the_version(store: SettingsStore) -> None:
    assert store.save(REALM, BASE).version == 1
    assert store.save(REALM, {"timeout": 20}).version == 2
    assert store.version(REALM) == 2
    saved = store.saved(REALM)
    assert (
        saved is not None and saved.settings.timeout == 20 and saved.settings.secret("password") == PASSWORD
    )
    assert store.realms() == [REALM]


def test_version_is_one_hget(store: SettingsStore, fake_redis: Any) -> None:
    store.save(REALM, BASE)
    calls: list[str] = []
    original = fake_redis.execute_command

    def spy(*args: Any, **kwargs: Any) -> Any:
        calls.append(str(args[0]))
        return original(*args, **kwargs)

    fake_redis.execute_command = spy
    assert store.version(REALM) == 1
    assert calls == ["HGET"]


def test_draft_then_save(store: SettingsStore) -> None:
    store.save(REALM, BASE)
    draft = store.set_draft(REALM, {"port": 2525, "password": "new-pw"})
    assert draft.base_version == 1 and draft.settings.port == 2525
    assert store.saved(REALM).settings.port == 587  # type: ignore[union-attr]
    store.set_draft(REALM, {"timeout": 30})  # continues the draft, not the saved settings
    saved = store.save(REALM)
    assert (saved.version, saved.settings.port, saved.settings.timeout) == (2, 2525, 30)
    assert saved.settings.secret("password") == "new-pw"
    assert store.draft(REALM) is None


def test_first_draft_starts_from_nothing(store: SettingsStore) -> None:
    draft = store.set_draft(REALM, BASE)
    assert draft.base_version == 0
    assert store.version(REALM) == 0
    assert store.save(REALM).version == 1


def test_draft_is_validated(store: SettingsStore) -> None:
    store.save(REALM, BASE)
    with pytest.raises(InvalidInput) as caught:
        store.set_draft(REALM, {"ssl": True})
    assert caught.value.problems[0][0] == "ssl"
    assert store.draft(REALM) is None


def test_none_clears_a_field_back_to_its_default(store: SettingsStore) -> None:
    store.save(REALM, {**BASE, "timeout": 30})
    assert store.save(REALM, {"timeout": None}).settings.timeout == 10.0


def test_revert_discards_the_draft(store: SettingsStore) -> None:
    store.save(REALM, BASE)
    store.set_draft(REALM, {"timeout": 30})
    assert store.revert(REALM) is True
    assert store.draft(REALM) is None
    assert store.revert(REALM) is False
    assert store.saved(REALM).settings.timeout == 10.0  # type: ignore[union-attr]


def test_effective_prefers_the_draft(store: SettingsStore) -> None:
    with pytest.raises(NotFound, match=f"realm {REALM} has no SMTP settings: run `mailworker settings save"):
        store.effective(REALM)
    store.save(REALM, BASE)
    store.set_draft(REALM, {"timeout": 30})
    settings, source, version = store.effective(REALM)
    assert (settings.timeout, source, version) == (30, "draft", 1)
    settings, source, version = store.effective(REALM, use_draft=False)
    assert (settings.timeout, source, version) == (10.0, "saved", 1)


def test_effective_saved_only_with_a_draft_says_so(store: SettingsStore) -> None:
    store.set_draft(REALM, BASE)
    with pytest.raises(NotFound, match="only a draft"):
        store.effective(REALM, use_draft=False)


def test_save_without_anything_is_not_found(store: SettingsStore) -> None:
    with pytest.raises(NotFound, match="no SMTP settings"):
        store.save(REALM)


def test_realm_names_are_checked(store: SettingsStore) -> None:
    with pytest.raises(InvalidInput, match="realm"):
        store.save("bad realm", BASE)


# ---- the mask rule through the store ------------------------------------------------------------------


def test_masked_password_is_kept_through_save(store: SettingsStore) -> None:
    store.save(REALM, BASE)
    public = store.saved(REALM).settings.to_public()  # type: ignore[union-attr]
    # What a UI sends back: everything it showed, the password masked.
    saved = store.save(REALM, {**public, "timeout": 15})
    assert saved.settings.secret("password") == PASSWORD and saved.settings.timeout == 15


@pytest.mark.parametrize(
    "change", [{"host": "evil.example"}, {"port": 2525}, {"username": "x"}, {"ssl": True, "starttls": False}]
)
def test_masked_password_refused_after_credential_change(
    store: SettingsStore, change: dict[str, Any]
) -> None:
    store.save(REALM, BASE)
    with pytest.raises(InvalidInput, match="enter the password again"):
        store.set_draft(REALM, {**change, "password": MASK})
    with pytest.raises(InvalidInput, match="enter the password again"):
        store.save(REALM, {**change, "password": MASK})
    assert store.version(REALM) == 1


def test_mask_compares_with_the_draft_that_holds_the_password(store: SettingsStore) -> None:
    store.save(REALM, BASE)
    draft = store.set_draft(REALM, {"host": "new.example", "password": "new-pw"})
    saved = store.save(REALM, {"password": MASK}, draft_id=draft.draft_id)
    assert (saved.settings.host, saved.settings.secret("password")) == ("new.example", "new-pw")


# ---- history and rollback -----------------------------------------------------------------------------


def test_history_newest_first_and_trimmed(store: SettingsStore) -> None:
    store.save(REALM, BASE)
    for n in range(2, 26):
        store.save(REALM, {"timeout": n})
    history = store.history(REALM)
    assert store.history_size == 20
    assert [h.version for h in history] == list(range(25, 5, -1))
    assert history[0].settings.timeout == 25 and history[0].settings.secret("password") == PASSWORD


def test_history_size_below_ten_is_refused(fake_redis: Any, box: SecretBox) -> None:
    with pytest.raises(ValueError, match="at least 10"):
        SettingsStore(fake_redis, Keys("t"), box, history_size=5)


def test_rollback_saves_an_old_version_as_new(store: SettingsStore) -> None:
    store.save(REALM, BASE)
    store.save(REALM, {"timeout": 20})
    store.save(REALM, {"timeout": 30})
    rolled = store.rollback(REALM, 1)
    assert (rolled.version, rolled.settings.timeout, rolled.note) == (4, 10.0, "rollback to version 1")
    assert store.saved(REALM).settings.timeout == 10.0  # type: ignore[union-attr]
    assert [h.version for h in store.history(REALM)] == [4, 3, 2, 1]


def test_rollback_to_an_unknown_version(store: SettingsStore) -> None:
    store.save(REALM, BASE)
    with pytest.raises(NotFound, match=r"realm acme has no version 7 in its history \(kept: 1\)"):
        store.rollback(REALM, 7)


def test_note_is_kept(store: SettingsStore) -> None:
    store.save(REALM, BASE, note="initial")
    assert store.saved(REALM).note == "initial"  # type: ignore[union-attr]
    assert store.history(REALM)[0].note == "initial"


# ---- conflicts ----------------------------------------------------------------------------------------


def test_expected_version_conflict(store: SettingsStore) -> None:
    store.save(REALM, BASE)
    store.save(REALM, {"timeout": 20})
    with pytest.raises(ConflictError) as caught:
        store.save(REALM, {"timeout": 30}, expected_version=1)
    assert str(caught.value) == (
        "realm acme: the settings were saved by someone else since this edit started (edit from version 1, "
        "now version 2); run `mailworker settings show --realm acme`, re-apply your change and save again"
    )
    assert store.version(REALM) == 2
    assert store.save(REALM, {"timeout": 30}, expected_version=2).version == 3


def test_stale_draft_conflicts(fake_redis: Any, box: SecretBox) -> None:
    alice, bob = SettingsStore(fake_redis, Keys("t"), box), SettingsStore(fake_redis, Keys("t"), box)
    alice.save(REALM, BASE)
    alice.save(REALM, {"timeout": 20})
    alice.set_draft(REALM, {"timeout": 30})  # edit from version 2
    bob.rollback(REALM, 1)  # version 3; the pending draft is left alone
    with pytest.raises(
        ConflictError, match=r"edit from version 2, now version 3.*settings revert --realm acme"
    ):
        alice.save(REALM)
    assert alice.saved(REALM).settings.timeout == 10.0  # type: ignore[union-attr]
    assert alice.draft(REALM) is not None


def test_a_save_between_read_and_commit_is_detected(fake_redis: Any, box: SecretBox) -> None:
    """The version check is atomic with the write: a save landing after our read makes ours fail."""
    alice, bob = SettingsStore(fake_redis, Keys("t"), box), SettingsStore(fake_redis, Keys("t"), box)
    alice.save(REALM, BASE)
    original = alice._queue_write

    def bob_saves_first(pipe: Any, record: Any) -> None:
        bob.save(REALM, {"timeout": 40})
        original(pipe, record)

    alice._queue_write = bob_saves_first  # type: ignore[method-assign]
    with pytest.raises(ConflictError, match="edit from version 1, now version 2"):
        alice.save(REALM, {"timeout": 30})
    assert alice.saved(REALM).settings.timeout == 40  # type: ignore[union-attr]
    assert alice.version(REALM) == 2


# ---- key rotation -------------------------------------------------------------------------------------


def test_rotate_secrets_with_two_keys(fake_redis: Any) -> None:
    old_key, new = new_key(), new_key()
    keys = Keys("t")
    old_store = SettingsStore(fake_redis, keys, SecretBox([old_key]))
    old_store.save(REALM, BASE)
    old_store.save(REALM, {"timeout": 20})
    old_store.set_draft(REALM, {"timeout": 30})
    old_store.set_draft("other", {**BASE, "password": "draft-only"})  # a realm with only a draft

    rotating = SettingsStore(fake_redis, keys, SecretBox([new, old_key]))
    assert rotating.saved(REALM).settings.secret("password") == PASSWORD  # type: ignore[union-attr]
    # saved (1) + draft (1) + history (2) + the other realm's draft (1)
    rotation = rotating.rotate_secrets()
    assert (rotation.resealed, rotation.migrated, rotation.skipped) == (5, 0, [])

    new_only = SettingsStore(fake_redis, keys, SecretBox([new]))
    assert new_only.saved(REALM).settings.secret("password") == PASSWORD  # type: ignore[union-attr]
    assert new_only.draft(REALM).settings.timeout == 30  # type: ignore[union-attr]
    assert new_only.draft("other").settings.secret("password") == "draft-only"  # type: ignore[union-attr]
    assert [h.settings.secret("password") for h in new_only.history(REALM)] == [PASSWORD, PASSWORD]
    with pytest.raises(ConfigError):
        old_store.saved(REALM)


def test_stored_data_has_no_clear_password(store: SettingsStore, fake_redis: Any) -> None:
    store.save(REALM, BASE)
    store.set_draft(REALM, {"timeout": 30})
    dumped = json.dumps(
        [
            fake_redis.hgetall(Keys("t").saved(REALM)),
            fake_redis.get(Keys("t").draft(REALM)),
            *fake_redis.lrange(Keys("t").history(REALM), 0, -1),
        ]
    )
    assert PASSWORD not in dumped
    assert "password_encrypted" in dumped
