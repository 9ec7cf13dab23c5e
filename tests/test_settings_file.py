"""MAILWORKER_SECRET_KEY_FILE: the key from a file (a Docker secret), read once when the settings load."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from config.crypto import SecretBox
from config.errors import ConfigError
from config.settings import ServiceSettings, load_settings

KEY_A = Fernet.generate_key().decode()
KEY_B = Fernet.generate_key().decode()


@pytest.fixture(autouse=True)
def no_key_in_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # The session sets MAILWORKER_SECRET_KEY for every other test; a .env in the working directory would
    # be read too.
    monkeypatch.delenv("MAILWORKER_SECRET_KEY", raising=False)
    monkeypatch.delenv("MAILWORKER_SECRET_KEY_FILE", raising=False)
    monkeypatch.chdir(tmp_path)


def write(path: Path, content: str | bytes) -> Path:
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("content", "keys"),
    [
        (KEY_A, [KEY_A]),
        (f"{KEY_A}\n", [KEY_A]),  # what `mailworker secret-key > file` writes
        (f"{KEY_A},{KEY_B}", [KEY_A, KEY_B]),  # rotation: new key first
        (f"  {KEY_A} , {KEY_B}  \r\n\n", [KEY_A, KEY_B]),
    ],
    ids=["one-key", "trailing-newline", "two-keys", "spaces-and-crlf"],
)
def test_keys_come_from_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, content: str, keys: list[str]
) -> None:
    monkeypatch.setenv("MAILWORKER_SECRET_KEY_FILE", str(write(tmp_path / "key", content)))
    assert load_settings().secret_keys() == keys


def test_a_key_from_a_file_opens_what_the_same_key_from_the_environment_sealed(tmp_path: Path) -> None:
    sealed = SecretBox(ServiceSettings(secret_key=KEY_A).secret_keys()).encrypt("smtp-password")
    from_file = ServiceSettings(secret_key_file=str(write(tmp_path / "key", f"{KEY_B},{KEY_A}\n")))
    assert SecretBox(from_file.secret_keys()).decrypt(sealed) == "smtp-password"


@pytest.mark.parametrize(
    ("variables", "keys"),
    [
        # An empty MAILWORKER_SECRET_KEY (a `KEY=` line left in .env) is no key: the file counts.
        ({"MAILWORKER_SECRET_KEY": "", "MAILWORKER_SECRET_KEY_FILE": "{file}"}, [KEY_B]),
        ({"MAILWORKER_SECRET_KEY": "   ", "MAILWORKER_SECRET_KEY_FILE": "{file}"}, [KEY_B]),
        # An empty MAILWORKER_SECRET_KEY_FILE is no file: the key counts.
        ({"MAILWORKER_SECRET_KEY": KEY_A, "MAILWORKER_SECRET_KEY_FILE": ""}, [KEY_A]),
        ({"MAILWORKER_SECRET_KEY": KEY_A}, [KEY_A]),
    ],
    ids=["empty-key-and-file", "blank-key-and-file", "key-and-empty-file-variable", "key-only"],
)
def test_which_source_counts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, variables: dict[str, str], keys: list[str]
) -> None:
    key_file = write(tmp_path / "key", KEY_B)
    for name, value in variables.items():
        monkeypatch.setenv(name, value.format(file=key_file))
    assert load_settings().secret_keys() == keys


def test_neither_source_is_the_error_naming_both(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAILWORKER_SECRET_KEY_FILE", "")
    settings = load_settings()  # no key is fine until something must decrypt
    with pytest.raises(ConfigError) as caught:
        settings.secret_keys()
    message = str(caught.value)
    assert message.startswith("MAILWORKER_SECRET_KEY is not set")
    assert "MAILWORKER_SECRET_KEY_FILE" in message


def test_both_sources_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAILWORKER_SECRET_KEY", KEY_A)
    monkeypatch.setenv("MAILWORKER_SECRET_KEY_FILE", str(write(tmp_path / "key", KEY_B)))
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert str(caught.value) == (
        "MAILWORKER_SECRET_KEY and MAILWORKER_SECRET_KEY_FILE are both set: keep one of them"
    )


def _missing(tmp_path: Path) -> Path:
    return tmp_path / "absent"


def _directory(tmp_path: Path) -> Path:
    # What Docker mounts when a bind-mounted secret's host file does not exist.
    (tmp_path / "dir").mkdir()
    return tmp_path / "dir"


@pytest.mark.parametrize(
    ("make", "problem"),
    [
        (_missing, "cannot read '{path}' (No such file or directory)"),
        (_directory, "cannot read '{path}' (Is a directory)"),
        (lambda tmp: write(tmp / "key", ""), "'{path}' is empty (expected comma-separated Fernet keys)"),
        (lambda tmp: write(tmp / "key", " \n\n"), "'{path}' is empty (expected comma-separated Fernet keys)"),
        (
            lambda tmp: write(tmp / "key", f"{KEY_A}\n{KEY_B}\n"),
            "'{path}' holds more than one line: write the keys on one line, comma-separated",
        ),
        (
            lambda tmp: write(tmp / "key", b"\xff\xfe" + KEY_A.encode()),
            "'{path}' is not UTF-8 text (expected comma-separated Fernet keys)",
        ),
    ],
    ids=["missing", "directory", "empty", "blank", "two-lines", "not-utf8"],
)
def test_a_bad_file_is_one_line_naming_the_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, make: Callable[[Path], Path], problem: str
) -> None:
    path = make(tmp_path)
    monkeypatch.setenv("MAILWORKER_SECRET_KEY_FILE", str(path))
    with pytest.raises(ConfigError) as caught:
        load_settings()
    message = str(caught.value)
    assert message == "MAILWORKER_SECRET_KEY_FILE: " + problem.format(path=path)
    # The file is the key: its content never reaches a message (or a log line).
    assert KEY_A not in message and KEY_B not in message


def test_an_unreadable_file_names_the_refused_user(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    path = write(tmp_path / "key", KEY_A)

    def refuse(self: Path, *args: object, **kwargs: object) -> str:
        # chmod cannot show this when the tests run as root, who reads any file.
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "read_text", refuse)
    monkeypatch.setenv("MAILWORKER_SECRET_KEY_FILE", str(path))
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert str(caught.value) == (
        f"MAILWORKER_SECRET_KEY_FILE: cannot read '{path}' (permission denied for uid {os.getuid()})"
    )
