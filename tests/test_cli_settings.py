"""`mailworker settings ...`, `secret-key` and `secrets rotate`: in-process, and as the real command."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.fernet import Fernet

import worker.runtime
from config.settings import get_settings
from worker.cli import main

PASSWORD = "Hx4-distinctive-cli-password-19"
CREATE = [
    "--from", "noreply@acme.example", "--host", "smtp.acme.example", "--port", "587", "--starttls",
    "--auth", "--username", "bot", "--password-stdin",
]  # fmt: skip
# What the first save prints after its "saved" line: every field it set, the password masked.
CREATED = """changes:
  from: (not set) -> noreply@acme.example
  host: (not set) -> smtp.acme.example
  port: (not set) -> 587
  starttls: (not set) -> on
  auth: (not set) -> on
  username: (not set) -> bot
  password: (not set) -> **********
"""


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch, key_prefix: str) -> Iterator[str]:
    """The CLI on keys of this test's own; the process-wide settings are restored afterwards."""
    with monkeypatch.context() as patch:
        patch.setenv("MAILWORKER_KEY_PREFIX", key_prefix)
        get_settings.cache_clear()
        worker.runtime.reset()
        yield key_prefix
    monkeypatch.undo()  # also what the test patched (e.g. the secret key), before settings are re-read
    get_settings.cache_clear()
    worker.runtime.reset()


def run(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, *argv: str, stdin: str = ""
) -> Any:
    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def create(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, realm: str) -> None:
    code, out, err = run(
        capsys, monkeypatch, "settings", "save", "--realm", realm, *CREATE, stdin=PASSWORD + "\n"
    )
    assert (code, out, err) == (0, f"saved {realm} version 1\n{CREATED}", "")


# ---- in-process -------------------------------------------------------------------------------------


def test_save_show_history(cli: str, capsys: Any, monkeypatch: pytest.MonkeyPatch, realm: str) -> None:
    create(capsys, monkeypatch, realm)
    code, out, _ = run(capsys, monkeypatch, "settings", "show", "--realm", realm)
    assert code == 0
    lines = dict(line.split(None, 1) for line in out.splitlines())
    assert lines["version"] == "1" and lines["source"] == "saved"
    assert lines["host"] == "smtp.acme.example" and lines["password"] == "**********"
    assert lines["starttls"] == "true" and lines["reply_to"] == "-"
    assert PASSWORD not in out
    # the values sit in one column
    assert len({line.index("smtp.acme.example") for line in out.splitlines() if "smtp.acme" in line}) == 1

    code, out, _ = run(capsys, monkeypatch, "settings", "show", "--realm", realm, "--json")
    data = json.loads(out)
    assert (data["version"], data["source"], data["from"]) == (1, "saved", "noreply@acme.example")
    assert data["password"] == "**********"

    run(capsys, monkeypatch, "settings", "save", "--realm", realm, "--timeout", "30", "--note", "slow",
        "--by", "ops-alice")  # fmt: skip
    code, out, _ = run(capsys, monkeypatch, "settings", "history", "--realm", realm)
    assert out.splitlines()[0].split() == ["version", "saved_at", "host", "port", "from", "by", "note"]
    assert [line.split()[0] for line in out.splitlines()[1:]] == ["2", "1"]
    assert "ops-alice" in out.splitlines()[1]
    code, out, _ = run(capsys, monkeypatch, "settings", "history", "--realm", realm, "--json")
    history = json.loads(out)
    assert [h["version"] for h in history] == [2, 1] and history[0]["note"] == "slow"
    assert history[0]["by"] == "ops-alice" and history[1]["by"]  # who saved: --by, else the OS user
    assert history[0]["settings"]["password"] == "**********"
    assert PASSWORD not in out


def test_password_comes_from_stdin_without_its_newline(
    cli: str, capsys: Any, monkeypatch: pytest.MonkeyPatch, realm: str
) -> None:
    from worker.cli.editing import open_store

    create(capsys, monkeypatch, realm)
    assert open_store().saved(realm).settings.secret("password") == PASSWORD  # type: ignore[union-attr]


def test_set_then_save_then_revert(
    cli: str, capsys: Any, monkeypatch: pytest.MonkeyPatch, realm: str
) -> None:
    create(capsys, monkeypatch, realm)
    code, out, _ = run(capsys, monkeypatch, "settings", "set", "--realm", realm, "--timeout", "25")
    assert code == 0
    draft_id = json.loads(
        run(capsys, monkeypatch, "settings", "show", "--realm", realm, "--draft", "--json")[1]
    )["draft_id"]
    assert out == (
        f"draft {draft_id} of {realm} updated (from version 1); test it with `mailworker settings test --realm "
        f"{realm}`, then `mailworker settings save --realm {realm} --draft {draft_id}`\n"
        "pending changes:\n  timeout: 10.0 -> 25.0\n"
    )
    code, out, _ = run(capsys, monkeypatch, "settings", "show", "--realm", realm, "--draft", "--json")
    assert json.loads(out)["timeout"] == 25 and json.loads(out)["source"] == "draft"
    code, out, _ = run(capsys, monkeypatch, "settings", "show", "--realm", realm, "--draft")
    assert f"draft_id               {draft_id}" in out and out.endswith(
        "pending changes:\n  timeout: 10.0 -> 25.0\n"
    )
    code, out, _ = run(capsys, monkeypatch, "settings", "show", "--realm", realm)
    assert f"(draft {draft_id} is pending: `mailworker settings show --realm {realm} --draft`)" in out
    code, out, _ = run(capsys, monkeypatch, "settings", "revert", "--realm", realm)
    assert out == f"draft of {realm} discarded\n"
    code, out, _ = run(capsys, monkeypatch, "settings", "revert", "--realm", realm)
    assert (code, out) == (0, f"{realm} has no draft: nothing to revert\n")
    code, out, _ = run(capsys, monkeypatch, "settings", "set", "--realm", realm, "--port", "2525", "--json")
    assert code == 1  # port is bound to the stored password


def test_masked_password_rule_on_the_cli(
    cli: str, capsys: Any, monkeypatch: pytest.MonkeyPatch, realm: str
) -> None:
    create(capsys, monkeypatch, realm)
    code, out, err = run(capsys, monkeypatch, "settings", "save", "--realm", realm, "--host", "evil.example")
    assert code == 1 and out == ""
    assert err == (
        "error: password: host changed from smtp.acme.example to evil.example: enter the password again "
        "(a stored password is never sent to a new server, or over a weaker connection)\n"
    )
    code, out, err = run(capsys, monkeypatch, "settings", "save", "--realm", realm, "--no-verify-tls")
    assert (code, out) == (1, "") and err.startswith("error: password: verify_tls changed from on to off: ")
    argv = ["settings", "save", "--realm", realm, "--host", "new.example", "--password-stdin"]
    code, out, err = run(capsys, monkeypatch, *argv, stdin="new-password")
    assert (code, out) == (
        0,
        f"saved {realm} version 2\nchanges:\n  host: smtp.acme.example -> new.example\n"
        "  password: ********** -> ********** (a new value)\n",
    )


def test_save_json_and_rollback(cli: str, capsys: Any, monkeypatch: pytest.MonkeyPatch, realm: str) -> None:
    create(capsys, monkeypatch, realm)
    code, out, _ = run(capsys, monkeypatch, "settings", "save", "--realm", realm, "--timeout", "40", "--json")
    data = json.loads(out)
    assert (data["version"], data["timeout"], data["password"]) == (2, 40, "**********")
    assert data["changes"] == [{"field": "timeout", "before": 10.0, "after": 40.0}]
    code, out, _ = run(capsys, monkeypatch, "settings", "rollback", "--realm", realm, "--to", "1")
    assert (code, out) == (
        0,
        f"saved {realm} version 3 (rollback to version 1)\nchanges:\n  timeout: 40.0 -> 10.0\n",
    )
    code, out, err = run(capsys, monkeypatch, "settings", "rollback", "--realm", realm, "--to", "9")
    assert code == 1 and err.startswith(f"error: realm {realm} has no version 9 in its history")


def test_expect_version_conflict(cli: str, capsys: Any, monkeypatch: pytest.MonkeyPatch, realm: str) -> None:
    create(capsys, monkeypatch, realm)
    run(capsys, monkeypatch, "settings", "save", "--realm", realm, "--timeout", "20")
    code, _, err = run(
        capsys, monkeypatch, "settings", "save", "--realm", realm, "--timeout", "30", "--expect-version", "1"
    )
    assert code == 1
    assert "saved by someone else since this edit started (edit from version 1, now version 2)" in err
    assert err.count("\n") == 1


def test_a_password_rotation_does_not_save_another_admins_pending_draft(
    cli: str, capsys: Any, monkeypatch: pytest.MonkeyPatch, realm: str
) -> None:
    """The issue, as typed: `save --expect-version N --password-stdin` used to save the pending draft of
    someone else (`--host evil.example`) together with the new password."""
    create(capsys, monkeypatch, realm)
    code, out, err = run(capsys, monkeypatch, "settings", "set", "--realm", realm, "--host", "evil.example",
                         "--password-stdin", stdin="mallorys-own\n")  # fmt: skip
    assert code == 0, err
    argv = ["settings", "save", "--realm", realm, "--expect-version", "1", "--password-stdin"]
    code, out, err = run(capsys, monkeypatch, *argv, stdin="rotated-password\n")
    assert (code, out) == (1, "") and err.count("\n") == 1
    assert err.startswith(f"error: realm {realm}: a draft is pending (draft ")
    assert "host: smtp.acme.example -> evil.example; password: ********** -> ********** (a new value)" in err
    assert f"`mailworker settings revert --realm {realm}`" in err
    assert "mallorys-own" not in err and "rotated-password" not in err
    code, out, _ = run(capsys, monkeypatch, "settings", "show", "--realm", realm, "--json")
    assert (json.loads(out)["host"], json.loads(out)["version"]) == ("smtp.acme.example", 1)

    # Reviewed and saved on purpose: named by its id, the draft is saved, the changes printed.
    draft_id = json.loads(
        run(capsys, monkeypatch, "settings", "show", "--realm", realm, "--draft", "--json")[1]
    )["draft_id"]
    code, out, err = run(capsys, monkeypatch, "settings", "save", "--realm", realm, "--draft", draft_id,
                         "--timeout", "20")  # fmt: skip
    assert (code, err) == (0, "")
    assert out == (
        f"saved {realm} version 2\nchanges:\n  host: smtp.acme.example -> evil.example\n"
        "  password: ********** -> ********** (a new value)\n  timeout: 10.0 -> 20.0\n"
    )


def test_show_says_when_a_stored_password_cannot_be_used(
    cli: str, capsys: Any, monkeypatch: pytest.MonkeyPatch, realm: str
) -> None:
    from worker.runtime import runtime

    create(capsys, monkeypatch, realm)
    rt = runtime()
    data = json.loads(rt.redis.hget(rt.keys.saved(realm), "data"))
    rt.redis.hset(rt.keys.saved(realm), "data", json.dumps({**data, "host": "evil.example"}))
    code, out, _ = run(capsys, monkeypatch, "settings", "show", "--realm", realm)
    assert code == 0 and "evil.example" in out
    assert (
        "warning: the stored password cannot be used: host changed from smtp.acme.example to evil.example "
        "since the password was saved, outside `mailworker settings`; enter it again"
    ) in out
    code, out, _ = run(capsys, monkeypatch, "settings", "show", "--realm", realm, "--json")
    assert "host changed" in json.loads(out)["unusable"]["password"]
    code, out, _ = run(capsys, monkeypatch, "secrets", "rotate")
    assert code == 1 and "re-encrypted 1 stored secret(s)" in out  # the history entry; not the tampered one
    assert f"not re-encrypted: {realm} (saved): host changed from smtp.acme.example to evil.example" in out
    argv = ["settings", "save", "--realm", realm, "--host", "smtp.acme.example", "--password-stdin"]
    assert run(capsys, monkeypatch, *argv, stdin=PASSWORD)[0] == 0
    assert runtime().store.saved(realm).settings.secret("password") == PASSWORD  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--ssl", "--starttls"], "error: ssl: ssl and starttls cannot both be on"),
        (["--port", "x"], "error: port: must be a whole number from 1 to 65535"),
        (["--from", "a@b.com\r\nBcc: x@y.com"], "error: from: must not contain CR, LF or NUL"),
        (["--from", "jörg@acme.example"], "error: from: not a valid address"),
        (["--notify-events", "LOGIN_ERROR,UPDATE_TOTP"], None),
    ],
)
def test_field_rules(
    cli: str, capsys: Any, monkeypatch: pytest.MonkeyPatch, realm: str, argv: list[str], message: str | None
) -> None:
    minimal = ["--from", "noreply@acme.example", "--host", "smtp.acme.example"]
    code, out, err = run(capsys, monkeypatch, "settings", "set", "--realm", realm, *minimal, *argv)
    if message is None:
        assert (code, err) == (0, "")
        return
    assert code == 1 and out == ""
    assert err.startswith(message) and err.count("\n") == 1


def test_nothing_to_change(cli: str, capsys: Any, monkeypatch: pytest.MonkeyPatch, realm: str) -> None:
    code, _, err = run(capsys, monkeypatch, "settings", "set", "--realm", realm)
    assert code == 1 and "nothing to change" in err
    code, _, err = run(capsys, monkeypatch, "settings", "show", "--realm", realm)
    assert err == (
        f"error: realm {realm} has no SMTP settings: run `mailworker settings save --realm {realm} "
        "--from ... --host ...`\n"
    )


def test_empty_value_clears_a_field(
    cli: str, capsys: Any, monkeypatch: pytest.MonkeyPatch, realm: str
) -> None:
    create(capsys, monkeypatch, realm)
    run(capsys, monkeypatch, "settings", "save", "--realm", realm, "--reply-to", "help@acme.example")
    _, out, _ = run(capsys, monkeypatch, "settings", "save", "--realm", realm, "--reply-to", "", "--json")
    assert json.loads(out)["reply_to"] is None


def test_secret_key_prints_a_fernet_key(cli: str, capsys: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    code, out, _ = run(capsys, monkeypatch, "secret-key")
    assert code == 0
    Fernet(out.strip().encode())  # raises if it is not a key


def test_secrets_rotate(cli: str, capsys: Any, monkeypatch: pytest.MonkeyPatch, realm: str) -> None:
    from worker.cli.editing import open_store

    create(capsys, monkeypatch, realm)
    new = Fernet.generate_key().decode()
    monkeypatch.setenv("MAILWORKER_SECRET_KEY", f"{new},{os.environ['MAILWORKER_SECRET_KEY']}")
    get_settings.cache_clear()
    worker.runtime.reset()
    code, out, _ = run(capsys, monkeypatch, "secrets", "rotate")
    assert (code, out) == (0, "re-encrypted 2 stored secret(s) with the first key of MAILWORKER_SECRET_KEY\n")
    monkeypatch.setenv("MAILWORKER_SECRET_KEY", new)
    get_settings.cache_clear()
    worker.runtime.reset()
    assert open_store().saved(realm).settings.secret("password") == PASSWORD  # type: ignore[union-attr]


def test_redis_error_mid_command_names_the_variable(
    cli: str, capsys: Any, monkeypatch: pytest.MonkeyPatch, realm: str
) -> None:
    import redis

    from config.store import SettingsStore

    def broken(self: SettingsStore, realm: str) -> bool:
        raise redis.ConnectionError("Connection reset by peer")

    monkeypatch.setattr(SettingsStore, "revert", broken)
    code, _, err = run(capsys, monkeypatch, "settings", "revert", "--realm", realm)
    assert code == 1
    assert err.startswith("error: MAILWORKER_STORE_URL: Redis at redis://") and err.count("\n") == 1


# ---- the real console command -----------------------------------------------------------------------


def command() -> list[str]:
    script = Path(sys.executable).with_name("mailworker")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "import sys; from worker.cli import main; sys.exit(main())"]


def console(
    argv: list[str], env: dict[str, str], cwd: Path, stdin: str = ""
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*command(), *argv], input=stdin, env=env, cwd=cwd, capture_output=True, text=True, timeout=60
    )


@pytest.fixture
def env(key_prefix: str) -> dict[str, str]:
    return {**os.environ, "MAILWORKER_KEY_PREFIX": key_prefix}


def test_console_password_never_shown(env: dict[str, str], tmp_path: Path, realm: str) -> None:
    saved = console(["settings", "save", "--realm", realm, *CREATE], env, tmp_path, stdin=PASSWORD + "\n")
    assert (saved.returncode, saved.stdout, saved.stderr) == (0, f"saved {realm} version 1\n{CREATED}", "")
    for command_line in ("show", "show --json", "history --json", "history"):
        shown = console(["settings", *command_line.split(), "--realm", realm], env, tmp_path)
        assert shown.returncode == 0 and "smtp.acme.example" in shown.stdout
        assert PASSWORD not in shown.stdout + shown.stderr
        assert "**********" in shown.stdout or command_line == "history"


def test_console_ssl_and_starttls_refused(env: dict[str, str], tmp_path: Path, realm: str) -> None:
    argv = ["settings", "save", "--realm", realm, "--from", "a@acme.example", "--host", "h.example"]
    result = console([*argv, "--ssl", "--starttls"], env, tmp_path)
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr == (
        "error: ssl: ssl and starttls cannot both be on: implicit TLS (ssl, usually port 465) "
        "or StartTLS (usually 587), not both\n"
    )


def test_console_header_injection_refused(env: dict[str, str], tmp_path: Path, realm: str) -> None:
    injected = "a@b.com\r\nBcc: x@y.com"  # a real CR LF inside one argv string
    argv = ["settings", "save", "--realm", realm, "--from", injected, "--host", "h.example"]
    result = console(argv, env, tmp_path)
    assert result.returncode == 1
    assert result.stderr == "error: from: must not contain CR, LF or NUL (header injection)\n"


def test_console_missing_secret_key(env: dict[str, str], tmp_path: Path, realm: str) -> None:
    del env["MAILWORKER_SECRET_KEY"]
    result = console(["settings", "show", "--realm", realm], env, tmp_path)  # tmp cwd: no .env read
    assert result.returncode == 1
    assert result.stderr.startswith("error: MAILWORKER_SECRET_KEY is not set")
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr


def test_console_unreachable_redis(env: dict[str, str], tmp_path: Path, realm: str) -> None:
    env["MAILWORKER_STORE_URL"] = "redis://127.0.0.1:1/0"
    result = console(["settings", "show", "--realm", realm], env, tmp_path)
    assert result.returncode == 1
    assert result.stderr.startswith(
        "error: MAILWORKER_STORE_URL: cannot reach Redis at redis://127.0.0.1:1/0"
    )
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
