"""A stored secret goes nowhere weaker than where it was entered for.

- By rule: an edit that weakens where or how a secret is sent (here: certificate checks off) must give the
  secret again; shown end to end with an impostor SMTP server that would capture the credentials.
- By cryptography: each secret is sealed (AES-GCM) with the fields it is bound to as associated data, so
  a destination changed in Redis behind the store's back makes it unusable: the worker dead-letters the
  job with reason `settings`, naming the field, and Test Connection fails at its settings stage.
- Secrets stored in the old format (Fernet, unbound) are still read, and sealed on the next save or
  rotation.
"""

from __future__ import annotations

import json
import re
import ssl
import tempfile
import uuid
from pathlib import Path
from typing import Any

import pytest
import trustme

from config.codec import UnusableSettings, encrypted_name
from config.crypto import MASK, SecretBox, new_key
from config.edits import secretless_data
from config.errors import ConfigError, InvalidInput
from config.keys import Keys
from config.smtp import parse_smtp_settings
from config.store import SettingsStore
from tasks import api
from tasks.connection import connection_status
from tests.support.smtp_server import SmtpTestServer
from worker.runtime import runtime

PASSWORD = "Bd7-distinctive-bound-password-55"
REALM = "acme"
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
    "oauth_client_secret": "cs-distinctive-bound-secret-56",
}
CONTEXT = {"user": {"username": "alice", "email": "alice@example.com"}, "realm_name": "ACME",
           "link": "https://iam.example.com/verify?k=1", "link_expiration": 30}  # fmt: skip


@pytest.fixture
def box() -> SecretBox:
    return SecretBox([new_key()])


@pytest.fixture
def fake_store(fake_redis: Any, box: SecretBox) -> SettingsStore:
    return SettingsStore(fake_redis, Keys("t"), box)


def stored_data(client: Any, keys: Keys, realm: str) -> dict[str, Any]:
    return dict(json.loads(client.hget(keys.saved(realm), "data")))


def write_data(client: Any, keys: Keys, realm: str, data: dict[str, Any], *, bump: bool = False) -> None:
    """What someone with write access to Redis can do (redis-cli HSET), bumping the version so that
    running workers re-read."""
    client.hset(keys.saved(realm), "data", json.dumps(data))
    if bump:
        client.hincrby(keys.saved(realm), "version", 1)


# ---- the stored form -------------------------------------------------------------------------------------


def test_a_secret_is_stored_sealed_with_the_fields_it_is_bound_to(
    fake_store: SettingsStore, fake_redis: Any
) -> None:
    fake_store.save(REALM, BASE)
    sealed = stored_data(fake_redis, Keys("t"), REALM)[encrypted_name("password")]
    assert set(sealed) == {"v", "kid", "nonce", "ct", "bound"} and sealed["v"] == 2
    assert sealed["bound"] == {"host": "smtp.acme.example", "port": 587, "username": "bot", "ssl": False,
                               "starttls": True, "verify_tls": True, "auth_type": "password",
                               "oauth_token_url": None}  # fmt: skip
    assert PASSWORD not in json.dumps(sealed)
    assert fake_store.saved(REALM).settings.secret("password") == PASSWORD  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "field, value, words",
    [
        ("host", "evil.example", "host changed from smtp.acme.example to evil.example since the password was saved"),
        ("port", 2525, "port changed from 587 to 2525 since the password was saved"),
        ("username", "attacker", "username changed from bot to attacker"),
        ("starttls", False, "starttls changed from on to off"),
        ("verify_tls", False, "verify_tls changed from on to off"),
    ],
)  # fmt: skip
def test_a_destination_changed_in_redis_makes_the_secret_unusable(
    fake_store: SettingsStore, fake_redis: Any, field: str, value: Any, words: str
) -> None:
    fake_store.save(REALM, BASE)
    data = stored_data(fake_redis, Keys("t"), REALM)
    write_data(fake_redis, Keys("t"), REALM, {**data, field: value})
    with pytest.raises(UnusableSettings) as caught:
        fake_store.saved(REALM)
    message = str(caught.value)
    assert message.startswith(f"realm {REALM}: the stored password cannot be used: {words}")
    assert "enter it again (`mailworker settings save --realm acme --password-stdin`)" in message
    assert "\n" not in message and PASSWORD not in message


def test_rewriting_the_record_of_bound_fields_too_does_not_help(
    fake_store: SettingsStore, fake_redis: Any
) -> None:
    fake_store.save(REALM, BASE)
    data = stored_data(fake_redis, Keys("t"), REALM)
    data["port"] = 2525
    data[encrypted_name("password")]["bound"]["port"] = 2525
    write_data(fake_redis, Keys("t"), REALM, data)
    with pytest.raises(UnusableSettings, match="does not belong to these settings"):
        fake_store.saved(REALM)


def test_a_secret_copied_to_another_realm_does_not_open(fake_store: SettingsStore, fake_redis: Any) -> None:
    fake_store.save(REALM, BASE)
    fake_store.save("other", {**BASE, "password": "others-password"})
    stolen = stored_data(fake_redis, Keys("t"), REALM)[encrypted_name("password")]
    data = stored_data(fake_redis, Keys("t"), "other")
    write_data(fake_redis, Keys("t"), "other", {**data, encrypted_name("password"): stolen})
    with pytest.raises(UnusableSettings, match="does not belong to these settings"):
        fake_store.saved("other")


def test_the_client_secret_is_bound_too(fake_store: SettingsStore, fake_redis: Any) -> None:
    fake_store.save(REALM, XOAUTH2)
    data = stored_data(fake_redis, Keys("t"), REALM)
    write_data(fake_redis, Keys("t"), REALM, {**data, "oauth_token_url": "https://evil.example/token"})
    with pytest.raises(UnusableSettings, match=re.escape(
        "the stored OAuth2 client secret cannot be used: oauth_token_url changed from "
        "https://login.example/tenant/token to https://evil.example/token")):  # fmt: skip
        fake_store.saved(REALM)


def test_fields_that_are_not_bound_may_change(fake_store: SettingsStore, fake_redis: Any) -> None:
    fake_store.save(REALM, BASE)
    write_data(fake_redis, Keys("t"), REALM, {**stored_data(fake_redis, Keys("t"), REALM), "timeout": 42})
    saved = fake_store.saved(REALM)
    assert saved is not None and (saved.settings.timeout, saved.settings.secret("password")) == (42, PASSWORD)


def test_a_key_that_is_not_configured_is_a_key_problem(fake_redis: Any, box: SecretBox) -> None:
    SettingsStore(fake_redis, Keys("t"), box).save(REALM, BASE)
    with pytest.raises(ConfigError, match="encrypted with a key that is not in MAILWORKER_SECRET_KEY"):
        SettingsStore(fake_redis, Keys("t"), SecretBox([new_key()])).saved(REALM)


def test_after_tampering_the_admin_sees_why_and_enters_the_password_again(
    fake_store: SettingsStore, fake_redis: Any
) -> None:
    fake_store.save(REALM, BASE)
    write_data(fake_redis, Keys("t"), REALM, {**stored_data(fake_redis, Keys("t"), REALM), "port": 2525})
    shown = fake_store.saved(REALM, lenient=True)
    assert shown is not None and shown.settings.port == 2525
    assert shown.unusable == {"password": "port changed from 587 to 2525 since the password was saved, outside "
                                          "`mailworker settings`"}  # fmt: skip
    with pytest.raises(InvalidInput) as caught:  # the unusable password is never carried on
        fake_store.save(REALM, {"timeout": 20, "password": MASK})
    assert caught.value.problems[0][0] == "password" and "enter the password again" in str(caught.value)
    saved = fake_store.save(REALM, {"port": 587, "password": PASSWORD})
    assert fake_store.saved(REALM).settings.secret("password") == PASSWORD  # type: ignore[union-attr]
    assert [str(c) for c in saved.changes] == [
        "port: 2525 -> 587",
        "password: ********** -> ********** (a new value)",
    ]


# ---- the old format ------------------------------------------------------------------------------------


def legacy_data(box: SecretBox, settings: dict[str, Any]) -> dict[str, Any]:
    """What the store wrote before sealing: the public fields and a Fernet token, bound to nothing."""
    parsed = parse_smtp_settings(settings)
    data = secretless_data(parsed)
    data[encrypted_name("password")] = box.encrypt(PASSWORD)
    return data


def test_an_old_format_store_is_read_and_sealed_on_the_next_save(
    fake_store: SettingsStore, fake_redis: Any, box: SecretBox
) -> None:
    fake_store.save(REALM, {**BASE, "password": "to-be-replaced"})
    write_data(fake_redis, Keys("t"), REALM, legacy_data(box, BASE))
    assert fake_store.saved(REALM).settings.secret("password") == PASSWORD  # type: ignore[union-attr]
    fake_store.save(REALM, {"timeout": 20})
    sealed = stored_data(fake_redis, Keys("t"), REALM)[encrypted_name("password")]
    assert isinstance(sealed, dict) and sealed["bound"]["port"] == 587
    assert fake_store.saved(REALM).settings.secret("password") == PASSWORD  # type: ignore[union-attr]


def test_rotation_seals_old_format_secrets_and_leaves_unusable_ones_alone(fake_redis: Any) -> None:
    old, new = new_key(), new_key()
    keys = Keys("t")
    old_store = SettingsStore(fake_redis, keys, SecretBox([old]))
    old_store.save(REALM, BASE)
    old_store.save("legacy", BASE)
    write_data(fake_redis, keys, "legacy", legacy_data(SecretBox([old]), BASE))
    old_store.save("tampered", BASE)
    write_data(
        fake_redis, keys, "tampered", {**stored_data(fake_redis, keys, "tampered"), "host": "evil.example"}
    )

    rotation = SettingsStore(fake_redis, keys, SecretBox([new, old])).rotate_secrets()

    # saved + history of each realm; the tampered realm's saved secret is not sealed to the new host
    assert (rotation.resealed, rotation.migrated) == (5, 1)
    assert rotation.skipped == ["tampered (saved): host changed from smtp.acme.example to evil.example since "
                                "the password was saved, outside `mailworker settings`"]  # fmt: skip
    new_only = SettingsStore(fake_redis, keys, SecretBox([new]))
    for realm in (REALM, "legacy"):
        assert new_only.saved(realm).settings.secret("password") == PASSWORD  # type: ignore[union-attr]
    assert isinstance(stored_data(fake_redis, keys, "legacy")[encrypted_name("password")], dict)
    with pytest.raises(UnusableSettings, match="host changed"):  # left as it was, and still refused
        new_only.saved("tampered")


# ---- end to end: a real worker, real SMTP servers on loopback --------------------------------------------


class SelfSigned:
    """Stands in for the test CA of SmtpTestServer: the server presents a certificate nobody trusts."""

    def __init__(self) -> None:
        self.authority = trustme.CA()
        self.ca_file = None

    def server_context(self, *_names: str) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        with tempfile.TemporaryDirectory() as directory:
            cert, key = Path(directory, "cert.pem"), Path(directory, "key.pem")
            self.authority.cert_pem.write_to_path(str(cert))
            self.authority.private_key_pem.write_to_path(str(key))
            context.load_cert_chain(str(cert), str(key))
        return context


def send(realm: str) -> dict[str, Any]:
    job_id = api.send_email(
        realm, "email-verification", f"u-{uuid.uuid4().hex[:8]}@example.com", context=CONTEXT
    )
    return dict(api.wait_for_result(job_id))


@pytest.mark.integration
@pytest.mark.usefixtures("celery_worker")
def test_turning_certificate_checks_off_does_not_hand_the_password_to_an_impostor(realm: str) -> None:
    """The issue: an admin who never knew the password turns verify_tls off and keeps the stored one;
    whoever intercepts the connection (here: the server at the configured address, with a certificate of
    its own) would receive it."""
    impostor = SmtpTestServer(tls="starttls", require_auth=("mailer", "the-impostor-does-not-know-it"))
    impostor.ca = SelfSigned()  # type: ignore[assignment]
    with impostor:
        store = runtime().store
        store.save(realm, impostor.settings_dict(username="mailer", password=PASSWORD))
        refused = send(realm)
        assert (refused["status"], refused["reason"]) == ("dead-lettered", "settings")
        assert "certificate verify failed" in refused["error"]

        for edit in (store.save, store.set_draft):
            with pytest.raises(InvalidInput) as caught:
                edit(realm, {"verify_tls": False, "password": MASK})
            assert str(caught.value) == (
                "password: verify_tls changed from on to off: enter the password again (a stored password is "
                "never sent to a new server, or over a weaker connection)"
            )
        with pytest.raises(InvalidInput, match="password: verify_tls changed from on to off"):
            store.save(realm, {"verify_tls": False})  # the password left out: the same
        assert store.saved(realm).settings.verify_tls is True  # type: ignore[union-attr]

        assert send(realm)["status"] == "dead-lettered"
        assert impostor.auth_attempts == [] and impostor.messages == []


@pytest.mark.integration
@pytest.mark.usefixtures("celery_worker")
def test_a_port_changed_in_redis_is_refused_by_the_worker_and_by_test_connection(
    realm: str, real_redis: Any
) -> None:
    """The issue: whoever can write to Redis changes the realm's port in the stored JSON (redis-cli), and
    the worker logs in with the stored password at the new destination."""
    keys = runtime().keys
    with (
        SmtpTestServer(tls="starttls", require_auth=("mailer", PASSWORD)) as server,
        SmtpTestServer(tls="starttls", require_auth=("mailer", "the-impostor-does-not-know-it")) as impostor,
    ):
        runtime().store.save(realm, server.settings_dict())
        assert send(realm)["status"] == "sent"

        data = stored_data(real_redis, keys, realm)
        write_data(real_redis, keys, realm, {**data, "port": impostor.port}, bump=True)

        result = send(realm)
        assert (result["status"], result["reason"]) == ("dead-lettered", "settings")
        expected = (
            f"realm {realm}: the stored password cannot be used: port changed from {server.port} to "
            f"{impostor.port} since the password was saved, outside `mailworker settings`; enter it again "
            f"(`mailworker settings save --realm {realm} --password-stdin`) or roll back (`mailworker settings "
            f"history --realm {realm}`)"
        )
        assert result["error"] == expected
        assert runtime().dead_letters.get(result["job_id"]).reason == "settings"

        status = connection_status(realm)
        assert (status["ok"], status["failed_stage"], status["error"]) == (False, "settings", expected)
        assert impostor.connections == 0 and impostor.auth_attempts == []
        assert len(server.messages) == 1


@pytest.mark.integration
@pytest.mark.usefixtures("celery_worker")
def test_a_realm_saved_in_the_old_format_still_sends(realm: str, real_redis: Any) -> None:
    keys = runtime().keys
    with SmtpTestServer(tls="starttls", require_auth=("mailer", PASSWORD)) as server:
        runtime().store.save(realm, server.settings_dict(password="replaced-below"))
        write_data(real_redis, keys, realm, legacy_data(runtime().box, server.settings_dict()), bump=True)
        assert send(realm)["status"] == "sent"
        assert [(a.login, a.secret, a.success) for a in server.auth_attempts] == [("mailer", PASSWORD, True)]


# ---- the IAM client secret (user look-ups): bound to its own fields --------------------------------------

IAM = {
    "iam_url": "https://iam.acme.example",
    "iam_client_id": "mailer",
    "iam_client_secret": "iam-distinctive-57",
}


def test_the_iam_client_secret_is_sealed_to_iam_url_and_iam_client_id_only(
    fake_store: SettingsStore, fake_redis: Any
) -> None:
    fake_store.save(REALM, {**BASE, **IAM})
    data = stored_data(fake_redis, Keys("t"), REALM)
    sealed = data[encrypted_name("iam_client_secret")]
    assert sealed["bound"] == {"iam_url": "https://iam.acme.example", "iam_client_id": "mailer"}
    assert "iam-distinctive-57" not in json.dumps(data)
    # Moved behind the store's back: the IAM URL breaks the IAM secret, not the SMTP password ...
    write_data(fake_redis, Keys("t"), REALM, {**data, "iam_url": "https://evil.example"})
    with pytest.raises(UnusableSettings) as caught:
        fake_store.saved(REALM)
    assert "the stored IAM client secret cannot be used: iam_url changed" in str(caught.value)
    assert "--iam-client-secret-stdin" in str(caught.value)
    # ... and the SMTP host breaks the password, not the IAM secret.
    decoded = fake_store.saved(REALM, lenient=True)
    assert decoded is not None and set(decoded.unusable) == {"iam_client_secret"}  # type: ignore[attr-defined]
    write_data(fake_redis, Keys("t"), REALM, {**data, "host": "evil.example"})
    decoded = fake_store.saved(REALM, lenient=True)
    assert decoded is not None and set(decoded.unusable) == {"password"}  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "change, asks",
    [
        ({"iam_url": "https://iam2.acme.example"}, True),
        ({"iam_client_id": "someone"}, True),
        ({"iam_realm": "other", "host": "smtp2.acme.example", "password": PASSWORD}, False),
        ({"iam_client_secret": MASK}, False),
        ({"iam_url": "https://iam2.acme.example", "iam_client_secret": "iam-new-58"}, False),
    ],
)
def test_changing_where_the_iam_secret_goes_asks_for_it_again(
    fake_store: SettingsStore, change: dict[str, Any], asks: bool
) -> None:
    fake_store.save(REALM, {**BASE, **IAM})
    if asks:
        with pytest.raises(InvalidInput) as caught:
            fake_store.save(REALM, change)
        [(field, rule)] = caught.value.problems
        assert field == "iam_client_secret" and "enter the IAM client secret again" in rule
    else:
        fake_store.save(REALM, change)
        assert fake_store.saved(REALM).settings.secret("iam_client_secret")  # type: ignore[union-attr]


def test_clearing_iam_url_forgets_the_iam_secret(fake_store: SettingsStore) -> None:
    fake_store.save(REALM, {**BASE, **IAM})
    fake_store.save(REALM, {"iam_url": None, "iam_client_id": None})
    settings = fake_store.saved(REALM).settings  # type: ignore[union-attr]
    assert (settings.iam_url, settings.iam_client_id, settings.iam_client_secret) == (None, None, None)
    assert settings.secret("password") == PASSWORD  # the SMTP password stays
