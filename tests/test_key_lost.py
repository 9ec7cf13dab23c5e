"""A lost (or replaced) MAILWORKER_SECRET_KEY: what still works, what says so, and the way back.

The way back is entering each secret again: a secret no configured key opens is one that cannot be used,
like a secret whose binding broke (config/codec.py), so `settings save --password-stdin` replaces it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography.fernet import Fernet

from config.codec import UnusableSettings
from config.crypto import KeyNotHeld, SecretBox
from config.errors import InvalidInput
from config.keys import Keys
from config.rotation import KeyCheck
from config.store import SettingsStore
from tests.support.smtp_server import SmtpTestServer
from worker.delivery.settings_cache import SettingsCache
from worker.runtime import runtime

ROOT = Path(__file__).resolve().parents[1]
LOST, NEW = Fernet.generate_key().decode(), Fernet.generate_key().decode()
SETTINGS = {"from": "noreply@acme.example", "host": "127.0.0.1", "port": 2525, "starttls": True,
            "auth": True, "username": "bot", "password": "pw-sealed-with-the-lost-key"}  # fmt: skip


@pytest.fixture
def after_the_loss(fake_redis: Any) -> SettingsStore:
    """acme saved with a key that is gone; globex saved without a secret; the store now has a new key."""
    SettingsStore(fake_redis, Keys("kl"), SecretBox([LOST])).save("acme", SETTINGS)
    store = SettingsStore(fake_redis, Keys("kl"), SecretBox([NEW]))
    store.save("globex", {**SETTINGS, "auth": False, "password": None})
    return store


def test_the_realm_can_be_shown_and_its_secret_entered_again(after_the_loss: SettingsStore) -> None:
    store = after_the_loss
    with pytest.raises(KeyNotHeld):
        store.saved("acme")  # what a worker reads: strict
    shown = store.saved("acme", lenient=True)
    assert (
        shown is not None
        and "encrypted with a key that is not in MAILWORKER_SECRET_KEY (key id "
        in (shown.unusable["password"])
    )
    assert store.check_key().lost.keys() == {"acme"}
    # Keeping the closed secret is refused, as for a broken binding...
    with pytest.raises(
        InvalidInput, match=r"password: it was encrypted with a key .*: enter the password again"
    ):
        store.save("acme", {"from_display_name": "ACME"})
    # ... entering it again is the way back.
    saved = store.save("acme", {"password": "pw-entered-again"})
    assert saved.settings.secret("password") == "pw-entered-again"
    assert store.saved("acme").settings.secret("password") == "pw-entered-again"  # type: ignore[union-attr]
    assert store.check_key() == KeyCheck(opened=["acme"], lost={})


def test_a_worker_dead_letters_that_realms_jobs_with_what_to_do(after_the_loss: SettingsStore) -> None:
    cache = SettingsCache(after_the_loss)
    with pytest.raises(UnusableSettings, match=r"realm acme: the stored secret cannot be used: it was encrypted"
                                               r" with a key .*enter the secret again"):  # fmt: skip
        cache.get("acme")  # UnusableSettings is a NotFound: the job's dead letter says reason settings
    assert cache.get("globex")[1].host == "127.0.0.1"  # the other realms go on


@pytest.mark.parametrize(
    "check, problem",
    [
        (KeyCheck(), None),
        (KeyCheck(opened=["a"]), None),
        (KeyCheck(lost={"b": "it was encrypted with a key that is not in MAILWORKER_SECRET_KEY (key id 1f)"}),
         "the saved secrets of 1 realm(s) (b) were encrypted with a key that is not in MAILWORKER_SECRET_KEY "
         "(key id 1f): add that key"),
        (KeyCheck(lost={f"r{i}": "it was encrypted with a key" for i in range(7)}),
         "the saved secrets of 7 realm(s) (r0, r1, r2, r3, r4 and 2 more) were encrypted with a key:"),
    ],
)  # fmt: skip
def test_what_the_key_check_says(check: KeyCheck, problem: str | None) -> None:
    said = check.problem()
    assert said == problem if problem is None else (said or "").startswith(problem)


@pytest.mark.integration
def test_a_worker_whose_key_opens_some_realms_starts_and_names_the_others(
    realm: str, smtp_server: SmtpTestServer
) -> None:
    """Mail of the realms it can serve must go on; the one it cannot is named at ERROR."""
    rt = runtime()
    other = f"{realm}-lost"
    rt.store.save(realm, smtp_server.settings_dict(auth=True, username="u", password="pw-open"))
    SettingsStore(rt.redis, rt.keys, SecretBox([LOST])).save(
        other, smtp_server.settings_dict(auth=True, username="u", password="pw-closed")
    )
    worker = subprocess.Popen(
        [sys.executable, "-m", "worker.cli", "worker", "--queues", "control", "--pool", "solo", "-n", f"{realm}@%h"],
        cwd=ROOT, env=dict(os.environ), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    lines: list[str] = []
    try:
        deadline = time.monotonic() + 60
        while not any(" ready." in line for line in lines) and worker.poll() is None:
            assert time.monotonic() < deadline, lines
            lines.append(worker.stderr.readline())  # type: ignore[union-attr]
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=30)
        # The session's other tests check the key on every realm: leave none it cannot open.
        for name in (rt.keys.saved(other), rt.keys.history(other), rt.keys.draft(other)):
            rt.redis.delete(name)
        rt.redis.srem(rt.keys.realms(), other)
    [said] = [line for line in lines if "ERROR mailworker.supervisor: MAILWORKER_SECRET_KEY:" in line]
    assert other in said and "pw-" not in "".join(lines)
    assert any(" ready." in line for line in lines)  # it started
