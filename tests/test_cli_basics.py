"""What a script leans on in every command: --version, durations, usage errors pointing to the right help,
one line when Redis does not answer, and what `health` says of the secret key. Redis on 127.0.0.1."""

from __future__ import annotations

import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest
from cryptography.fernet import Fernet

from config.crypto import SecretBox
from config.errors import InvalidInput
from config.keys import Keys
from config.store import SettingsStore
from tests.support.redis_server import free_port
from worker.cli.formats import duration
from worker.cli.health_cmd import FAIL, OK, WARN, secrets_check

ROOT = Path(__file__).resolve().parents[1]


def mailworker(*argv: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "worker.cli", *argv], cwd=ROOT, env={**os.environ, **env},
                          capture_output=True, text=True, timeout=60)  # fmt: skip


def test_version() -> None:
    done = mailworker("--version")
    assert (done.returncode, done.stdout.strip()) == (0, f"mailworker {metadata.version('iam-mail-worker')}")


@pytest.mark.parametrize(
    "text, seconds",
    [("90", 90), ("90s", 90), ("15m", 900), ("12h", 43_200), ("1d", 86_400), ("2w", 1_209_600),
     ("1.5h", 5400), (" 1D ", 86_400)],
)  # fmt: skip
def test_a_duration(text: str, seconds: float) -> None:
    assert duration(text) == seconds


@pytest.mark.parametrize("text", ["", "1y", "-1d", "d", "1 d x", "1e3"])
def test_not_a_duration(text: str) -> None:
    with pytest.raises(InvalidInput, match="is not a duration like 90s"):
        duration(text)


@pytest.mark.parametrize(
    "argv, help_of",
    [(["dead", "list", "--bogus"], "mailworker dead list"), (["settings", "history", "--nope"], "mailworker settings history"),
     (["nosuchcommand"], "mailworker"), (["dead", "purge", "--older-than"], "mailworker dead purge")],
)  # fmt: skip
def test_a_usage_error_is_exit_2_and_points_to_the_commands_help(argv: list[str], help_of: str) -> None:
    done = mailworker(*argv)
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.rstrip().endswith(f"(see `{help_of} --help`)"), done.stderr


@pytest.mark.parametrize("argv", [["stats"], ["status", "x"], ["dead", "list"], ["realms"], ["job", "list"]])
def test_redis_that_does_not_answer_is_one_line_naming_the_variable(argv: list[str]) -> None:
    closed = f"redis://:secret-pw@127.0.0.1:{free_port()}/0"
    done = mailworker(*argv, MAILWORKER_STORE_URL=closed, MAILWORKER_BROKER_URL=closed,
                      MAILWORKER_RESULT_BACKEND=closed)  # fmt: skip
    assert done.returncode == 1 and done.stderr.count("\n") == 1, done.stderr
    assert "MAILWORKER_" in done.stderr and "Traceback" not in done.stderr
    assert "secret-pw" not in done.stderr + done.stdout


class Settings:
    def __init__(self, key: str | None) -> None:
        self.secret_key, self.secret_key_file = key, None


def test_health_says_which_realms_the_key_cannot_open(fake_redis: Any) -> None:
    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    settings = {"from": "a@example.com", "host": "127.0.0.1", "port": 2525, "starttls": True, "auth": True,
                "username": "u", "password": "pw"}  # fmt: skip
    SettingsStore(fake_redis, Keys("h"), SecretBox([old])).save("acme", settings)
    with_new = SettingsStore(fake_redis, Keys("h"), SecretBox([new]))
    level, line = secrets_check(Settings(new), with_new)
    assert level == FAIL and "(acme)" in line and "key id" in line
    assert secrets_check(Settings(f"{new},{old}"), SettingsStore(fake_redis, Keys("h"), SecretBox([new, old]))) == (
        OK, "secrets the key opens the saved secrets of 1 realm(s)")  # fmt: skip
    assert secrets_check(Settings(None), with_new)[0] == WARN
