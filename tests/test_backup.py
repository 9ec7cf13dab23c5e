"""Backup and restore of the config store (config/backup.py, `mailworker settings export|import`).

The round trip runs on the session's Redis and ends with a real delivery (AUTH with the restored password)
through the session's worker to an SMTP server on 127.0.0.1; the rules run on a store of their own.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from cryptography.fernet import Fernet

from config.backup import check_export, export_settings, import_settings
from config.crypto import SecretBox
from config.epoch import record_wipe
from config.errors import ConfigError, InvalidInput, NotFound
from config.keys import Keys
from config.records import read_realm
from config.store import SettingsStore
from tasks import api
from tests.support.smtp_server import SmtpTestServer
from worker.runtime import runtime

ROOT = Path(__file__).resolve().parents[1]
KEY = Fernet.generate_key().decode()
SETTINGS = {"from": "noreply@acme.example", "host": "127.0.0.1", "port": 2525, "starttls": True,
            "auth": True, "username": "bot", "password": "pw-of-acme"}  # fmt: skip
CONTEXT = {"user": {"username": "alice"}, "link": "https://iam.example.com/r?k=1", "link_expiration": 30}


def store_of(client: Any, prefix: str, key: str = KEY) -> SettingsStore:
    return SettingsStore(client, Keys(prefix), SecretBox([key]))


def wipe(client: Any, prefix: str) -> None:
    for name in client.scan_iter(match=f"{prefix}:*"):
        client.delete(name)


@pytest.fixture
def filled(fake_redis: Any) -> SettingsStore:
    """Two realms: acme with three versions and a draft, globex with one."""
    store = store_of(fake_redis, "bk")
    store.save("acme", SETTINGS, by="alice")
    store.save("acme", {"from_display_name": "ACME"}, note="a name", by="bob")
    store.save("acme", {"rate_limit_per_second": 5})
    store.set_draft("acme", {"from_display_name": "ACME Corp"})
    store.save("globex", {**SETTINGS, "from": "noreply@globex.example", "port": 2526})
    return store


def imported(client: Any, document: Any, prefix: str = "bk", key: str = KEY, **options: Any) -> Any:
    return import_settings(client, Keys(prefix), SecretBox([key]), document, history_size=20, **options)


def test_an_export_restores_every_realm_as_it_was_into_an_empty_store(
    filled: SettingsStore, fake_redis: Any
) -> None:
    keys = Keys("bk")
    before = {realm: read_realm(fake_redis, keys, realm) for realm in ("acme", "globex")}
    document = json.loads(json.dumps(export_settings(fake_redis, keys)))  # through its file form
    assert "pw-of-acme" not in json.dumps(document)
    assert len(document["key_ids"]) == 1 and document["realms"][0]["realm"] == "acme"
    wipe(fake_redis, "bk")

    report = imported(fake_redis, document)

    assert (report.restored, report.replaced, report.skipped) == (["acme", "globex"], {}, {})
    assert {realm: read_realm(fake_redis, keys, realm) for realm in ("acme", "globex")} == before
    restored = store_of(fake_redis, "bk")
    assert restored.saved("acme").settings.secret("password") == "pw-of-acme"  # type: ignore[union-attr]
    assert [(v["version"], v["by"], v["note"]) for v in restored.public_history("acme")] == [
        (3, None, None), (2, "bob", "a name"), (1, "alice", None)]  # fmt: skip
    assert restored.draft("acme").settings.from_display_name == "ACME Corp"  # type: ignore[union-attr]
    assert restored.epoch() is not None and restored.realms() == ["acme", "globex"]


def test_a_realm_the_store_has_is_skipped_or_saved_on_top_with_replace(
    filled: SettingsStore, fake_redis: Any
) -> None:
    document = export_settings(fake_redis, Keys("bk"))
    filled.save("globex", {"port": 2600, "password": "pw-new"})  # changed since the export: version 2

    report = imported(fake_redis, document)
    assert (report.restored, report.skipped) == ([], {"acme": 3, "globex": 2})
    assert filled.saved("globex").settings.port == 2600  # type: ignore[union-attr]

    report = imported(fake_redis, document, realms=["globex"], replace=True, by="carol")
    assert report.replaced == {"globex": 3}
    saved = filled.saved("globex")
    assert saved is not None and (saved.version, saved.settings.port, saved.by) == (3, 2526, "carol")
    assert saved.note is not None and saved.note.startswith("imported: version 1 of the export of ")
    assert [v["version"] for v in filled.public_history("globex")] == [3, 2, 1]  # history kept


def test_a_realms_secondary_server_is_exported_and_restored_with_its_own_sealed_secret(
    filled: SettingsStore, fake_redis: Any
) -> None:
    secondary = filled.for_server("secondary")
    secondary.save("acme", {**SETTINGS, "host": "127.0.0.2", "password": "pw-of-the-secondary"}, by="alice")
    secondary.set_draft("acme", {"from_display_name": "ACME backup"})
    document = json.loads(json.dumps(export_settings(fake_redis, Keys("bk"))))
    [acme] = [r for r in document["realms"] if r["realm"] == "acme"]
    assert acme["secondary"]["saved"]["version"] == 1 and acme["secondary"]["draft"] is not None
    assert "pw-of-the-secondary" not in json.dumps(document)
    assert "secondary" not in next(r for r in document["realms"] if r["realm"] == "globex")
    wipe(fake_redis, "bk")

    assert imported(fake_redis, document).restored == ["acme", "globex"]
    restored = store_of(fake_redis, "bk").for_server("secondary")
    saved = restored.saved("acme")
    assert saved is not None and (saved.version, saved.settings.host) == (1, "127.0.0.2")
    assert saved.settings.secret("password") == "pw-of-the-secondary"  # sealed to acme:secondary, opened
    assert restored.draft("acme").settings.from_display_name == "ACME backup"  # type: ignore[union-attr]
    assert restored.realms() == ["acme"] and restored.saved("globex") is None

    report = imported(fake_redis, document, realms=["acme"], replace=True)
    assert report.replaced == {"acme": 4} and restored.version("acme") == 2  # each record's next version


def test_a_dry_run_writes_nothing(filled: SettingsStore, fake_redis: Any) -> None:
    document = export_settings(fake_redis, Keys("bk"))
    wipe(fake_redis, "bk")
    report = imported(fake_redis, document, dry_run=True)
    assert report.restored == ["acme", "globex"] and fake_redis.keys("bk:*") == []


def test_secrets_sealed_with_a_key_the_service_does_not_hold_are_refused_before_anything_is_written(
    filled: SettingsStore, fake_redis: Any
) -> None:
    document = export_settings(fake_redis, Keys("bk"))
    with pytest.raises(ConfigError, match=r"realm acme, saved: .*not in MAILWORKER_SECRET_KEY \(key id "):
        imported(fake_redis, document, prefix="other", key=Fernet.generate_key().decode())
    assert fake_redis.keys("other:*") == []
    # With the old key after the new one (a rotation in progress), it opens.
    rotated = SecretBox([Fernet.generate_key().decode(), KEY])
    assert import_settings(fake_redis, Keys("other"), rotated, document, history_size=20).restored == [
        "acme",
        "globex",
    ]


def test_a_wiped_store_gets_a_new_epoch_and_its_wipe_notice_is_cleared(
    filled: SettingsStore, fake_redis: Any
) -> None:
    keys = Keys("bk")
    document = export_settings(fake_redis, keys)
    lost = filled.epoch()
    wipe(fake_redis, "bk")
    record_wipe(fake_redis, keys, lost, "transactional@mx1:42")  # type: ignore[arg-type]

    report = imported(fake_redis, document)

    assert report.wipe_cleared is not None and report.wipe_cleared["noticed_by"] == "transactional@mx1:42"
    assert filled.wipe() is None and filled.epoch() is not None and filled.epoch() != lost


def test_saved_settings_whose_secret_no_longer_matches_are_restored_as_they_were_and_reported(
    filled: SettingsStore, fake_redis: Any
) -> None:
    document = export_settings(fake_redis, Keys("bk"), ["globex"])
    document["realms"][0]["saved"]["data"]["port"] = 2999  # altered by hand: the password is bound to 2526
    report = imported(fake_redis, document, prefix="other")
    assert report.restored == ["globex"]
    assert (
        "realm globex: the stored password cannot be used: port changed from 2526 to 2999"
        in report.unusable["globex"]
    )


def document_with(change: Any) -> dict[str, Any]:
    client = __import__("fakeredis").FakeRedis(decode_responses=True)
    store_of(client, "bk").save("acme", SETTINGS)
    document = export_settings(client, Keys("bk"))
    change(document)
    return document


@pytest.mark.parametrize(
    "change, error, where",
    [
        (lambda d: d.update(format="something else"), InvalidInput, "format: Input should be"),
        (lambda d: d.update(format_version=2), InvalidInput, "format_version: Input should be 1"),
        (lambda d: d.pop("realms"), InvalidInput, "realms: Field required"),
        (lambda d: d["realms"][0].update(realm="../x"), InvalidInput, "realms[0].realm: "),
        (lambda d: d["realms"][0]["saved"].update(version=0), InvalidInput, "realms[0].saved.version: "),
        (lambda d: d["realms"][0]["saved"].update(surprise=1), InvalidInput, "realms[0].saved.surprise: "),
        (lambda d: d["realms"][0]["saved"]["data"].update(port=70000), InvalidInput,
         "realms[0].saved.data: port: must be a whole number from 1 to 65535"),
        (lambda d: d["realms"].append(d["realms"][0]), InvalidInput, "realms[1].realm: acme appears twice"),
        (lambda d: d["realms"][0]["history"][0]["data"].update(host=""), InvalidInput, "realms[0].history[0].data: host"),
    ],
)  # fmt: skip
def test_a_damaged_export_is_refused_naming_where(change: Any, error: type[Exception], where: str) -> None:
    with pytest.raises(error) as raised:
        check_export(document_with(change), SecretBox([KEY]))
    assert where in str(raised.value)


def test_naming_a_realm_the_export_does_not_hold(filled: SettingsStore, fake_redis: Any) -> None:
    with pytest.raises(NotFound, match="the export holds no realm initech"):
        check_export(export_settings(fake_redis, Keys("bk")), SecretBox([KEY]), ["acme", "initech"])
    with pytest.raises(NotFound, match="realm initech has no saved settings to export"):
        export_settings(fake_redis, Keys("bk"), ["initech"])


# ---- the commands, on the session's Redis, and a delivery with what was restored -----------------------------


def mailworker(*argv: str, stdin: str | None = None, key: bool = True) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if key or k != "MAILWORKER_SECRET_KEY"}
    return subprocess.run([sys.executable, "-m", "worker.cli", *argv], cwd=ROOT, env=env, input=stdin,
                          capture_output=True, text=True, timeout=60)  # fmt: skip


@pytest.mark.integration
def test_export_and_import_round_trip_and_the_restored_realm_delivers(
    celery_worker: Any, realm: str, tmp_path: Path
) -> None:
    password = f"pw-{uuid.uuid4().hex}"
    rt = runtime()
    with SmtpTestServer(tls="starttls", require_auth=("mailer", password)) as server:
        rt.store.save(realm, server.settings_dict(), by="alice")
        rt.store.save(realm, {"from_display_name": "Restored"}, by="bob")
        export = tmp_path / "settings.json"
        done = mailworker("settings", "export", "--realm", realm, "--output", str(export), key=False)
        assert done.returncode == 0, done.stderr  # exporting decrypts nothing: no key needed
        assert stat.S_IMODE(export.stat().st_mode) == 0o600
        assert password not in export.read_text() and "exported 1 realm(s), 3 version(s)" in done.stderr
        before = read_realm(rt.redis, rt.keys, realm)
        for name in (rt.keys.saved(realm), rt.keys.history(realm), rt.keys.draft(realm)):
            rt.redis.delete(name)
        rt.redis.srem(rt.keys.realms(), realm)

        dry = mailworker("settings", "import", str(export), "--dry-run")
        assert dry.returncode == 0 and f"{realm}: would be restored as exported" in dry.stdout
        assert rt.store.saved(realm) is None
        done = mailworker("settings", "import", str(export), "--json")
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["restored"] == [realm]
        assert read_realm(rt.redis, rt.keys, realm) == before

        job = api.send_email(
            realm, "password-reset", f"r-{uuid.uuid4().hex[:6]}@example.com", context=CONTEXT
        )
        assert api.wait_for_result(job)["status"] == "sent"
        [received] = server.messages
        assert received.auth is not None and received.auth.secret == password
        assert "Restored" in str(received.message["From"])


@pytest.mark.parametrize(
    "content, message",
    [(b"{not json", "FILE: "), (b"[]", "document: Input should be"), (b"", "FILE: ")],
)
def test_import_of_a_file_that_is_no_export_says_so_in_one_line(
    tmp_path: Path, content: bytes, message: str
) -> None:
    path = tmp_path / "broken.json"
    path.write_bytes(content)
    done = mailworker("settings", "import", str(path))
    assert done.returncode == 1 and message in done.stderr and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
