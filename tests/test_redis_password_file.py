"""MAILWORKER_REDIS_PASSWORD_FILE: the Redis password from a file (a Docker secret), put into the Redis URLs.

The decisions (what the file holds, which URL takes the password and how) are tables; the commands run for
real (`mailworker health` in a process of its own) against a password-protected redis-server of the test's
own on 127.0.0.1.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
import redis

from config.errors import ConfigError
from config.redis import has_password, redact_url, redact_urls_in, with_password
from config.settings import ServiceSettings, load_settings

ROOT = Path(__file__).resolve().parent.parent
URL_VARIABLES = ("MAILWORKER_BROKER_URL", "MAILWORKER_RESULT_BACKEND", "MAILWORKER_STORE_URL")
# What a shell, a URL or a Redis config line would otherwise split, expand or cut.
SPECIAL = "p@ss w/rd:;?#%41&=+\"'`$é"


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # The session points the three URLs at its Redis (no password); a .env in the working directory
    # would be read too.
    monkeypatch.delenv("MAILWORKER_REDIS_PASSWORD_FILE", raising=False)
    for variable in URL_VARIABLES:
        monkeypatch.setenv(variable, "redis://127.0.0.1:6379/0")
    monkeypatch.chdir(tmp_path)


def write(path: Path, content: str | bytes) -> Path:
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


def urls(settings: ServiceSettings) -> set[str]:
    return {settings.broker_url, settings.result_backend, settings.store_url}


# ---- the file ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "password"),
    [
        ("0f1e2d3c4b5a6978", "0f1e2d3c4b5a6978"),
        ("0f1e2d3c4b5a6978\n", "0f1e2d3c4b5a6978"),  # what `openssl rand -hex 32 > file` writes
        ("0f1e2d3c4b5a6978\n\n", "0f1e2d3c4b5a6978"),  # sh's $(cat FILE) drops every trailing newline too
        ("Zm9v+YmFy/YmF6==\n", "Zm9v+YmFy/YmF6=="),  # openssl rand -base64
        (SPECIAL + "\n", SPECIAL),
        ("two words", "two words"),  # white space inside is part of it
    ],
    ids=["hex", "trailing-newline", "two-newlines", "base64", "special", "inner-space"],
)
def test_the_password_comes_from_the_file_into_every_url(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, content: str, password: str
) -> None:
    monkeypatch.setenv("MAILWORKER_REDIS_PASSWORD_FILE", str(write(tmp_path / "pw", content)))
    settings = load_settings()
    assert urls(settings) == {f"redis://:{quote(password, safe='')}@127.0.0.1:6379/0"}
    # What redis-py and kombu (broker, results) make of the URL: the password, every character of it.
    from kombu.utils.url import url_to_parts

    assert redis.connection.parse_url(settings.store_url)["password"] == password
    assert url_to_parts(settings.broker_url).password == password


@pytest.mark.parametrize(
    "variables",
    [{"MAILWORKER_REDIS_PASSWORD_FILE": ""}, {"MAILWORKER_REDIS_PASSWORD_FILE": "  "}, {}],
    ids=["empty-variable", "blank-variable", "unset"],
)
def test_no_file_leaves_the_urls_as_they_are(
    monkeypatch: pytest.MonkeyPatch, variables: dict[str, str]
) -> None:
    # An empty MAILWORKER_REDIS_PASSWORD_FILE (a `..._FILE=` line left in .env) is no file.
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("MAILWORKER_STORE_URL", "redis://:own@127.0.0.1:6379/0")
    settings = load_settings()
    assert settings.store_url == "redis://:own@127.0.0.1:6379/0"
    assert settings.broker_url == "redis://127.0.0.1:6379/0"


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
        (lambda tmp: write(tmp / "pw", ""), "'{path}' is empty (expected the Redis password)"),
        (lambda tmp: write(tmp / "pw", "\n"), "'{path}' is empty (expected the Redis password)"),
        (lambda tmp: write(tmp / "pw", " \t \n"), "'{path}' is empty (expected the Redis password)"),
        (
            lambda tmp: write(tmp / "pw", "pwmark-one\npwmark-two\n"),
            "'{path}' holds more than one line: write the password alone on one line",
        ),
        *[
            (
                lambda tmp, content=content: write(tmp / "pw", content),
                "'{path}' has white space around the password (a space, a tab, a Windows line end): "
                "write the password alone",
            )
            for content in (" pwmark-one\n", "pwmark-one \n", "pwmark-one\t", b"pwmark-one\r\n")
        ],
        (
            lambda tmp: write(tmp / "pw", "pwmark\x00one\n"),
            "'{path}' holds a control character: write the password alone",
        ),
        (
            lambda tmp: write(tmp / "pw", b"\xff\xfepwmark-one"),
            "'{path}' is not UTF-8 text (expected the Redis password)",
        ),
    ],
    ids=[
        "missing", "directory", "empty", "newline-only", "blank", "two-lines", "space-before", "space-after",
        "tab-after", "crlf", "control-character", "not-utf8",
    ],
)  # fmt: skip
def test_a_bad_file_is_one_line_naming_the_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, make: Callable[[Path], Path], problem: str
) -> None:
    path = make(tmp_path)
    monkeypatch.setenv("MAILWORKER_REDIS_PASSWORD_FILE", str(path))
    with pytest.raises(ConfigError) as caught:
        load_settings()
    message = str(caught.value)
    assert message == "MAILWORKER_REDIS_PASSWORD_FILE: " + problem.format(path=path)
    # The file is the password: its content never reaches a message (or a log line).
    assert "pwmark" not in message and "\n" not in message


def test_an_unreadable_file_names_the_refused_user(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path / "pw", "secret-one\n")

    def refuse(self: Path) -> bytes:
        # chmod cannot show this when the tests run as root, who reads any file.
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "read_bytes", refuse)
    monkeypatch.setenv("MAILWORKER_REDIS_PASSWORD_FILE", str(path))
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert str(caught.value) == (
        f"MAILWORKER_REDIS_PASSWORD_FILE: cannot read '{path}' (permission denied for uid {os.getuid()})"
    )


# ---- the URLs ----------------------------------------------------------------------------------------


PW = "a@b/c d"  # quoted: a%40b%2Fc%20d
Q = quote(PW, safe="")

WITH_PASSWORD = [
    ("redis://127.0.0.1:6379/0", f"redis://:{Q}@127.0.0.1:6379/0"),
    ("redis://127.0.0.1", f"redis://:{Q}@127.0.0.1"),
    ("rediss://127.0.0.1:6380/0?ssl_cert_reqs=required", f"rediss://:{Q}@127.0.0.1:6380/0?ssl_cert_reqs=required"),
    # a user name stays: a Redis ACL user, its password from the file
    ("redis://mailer@127.0.0.1:6379/0", f"redis://mailer:{Q}@127.0.0.1:6379/0"),
    ("redis://@127.0.0.1:6379/0", f"redis://:{Q}@127.0.0.1:6379/0"),
    ("unix:///run/redis.sock?db=0", f"unix://:{Q}@/run/redis.sock?db=0"),
    # a `;`-separated list (Sentinel): every URL of it
    ("sentinel://127.0.0.1:26379;sentinel://127.0.0.1:26380",
     f"sentinel://:{Q}@127.0.0.1:26379;sentinel://:{Q}@127.0.0.1:26380"),
    # not a Redis server's: as it is
    ("memory://", "memory://"),
    ("cache+memory://", "cache+memory://"),
    ("amqp://guest:guest@127.0.0.1:5672//", "amqp://guest:guest@127.0.0.1:5672//"),
]  # fmt: skip


@pytest.mark.parametrize(("url", "expected"), WITH_PASSWORD)
def test_with_password(url: str, expected: str) -> None:
    assert not has_password(url)
    assert with_password(url, PW) == expected
    assert PW not in redact_url(expected) and Q not in redact_url(expected)


OWN_PASSWORD = [
    "redis://:ownpw@127.0.0.1:6379/0",
    "redis://default:ownpw@127.0.0.1:6379/0",
    "rediss://:ownpw@127.0.0.1:6380/0",
    "redis://127.0.0.1:6379/0?password=ownpw",
    "redis://127.0.0.1:6379/0?db=0&Password=ownpw",
    "unix://:ownpw@/run/redis.sock",
    "sentinel://127.0.0.1:26379;sentinel://:ownpw@127.0.0.1:26380",
    "redis://:ownpw/with/slashes@127.0.0.1/0",  # malformed (an unescaped `/`): still a password
    "redis://:@127.0.0.1:6379/0",  # an empty one written on purpose is one too
]


@pytest.mark.parametrize("url", OWN_PASSWORD)
def test_a_url_with_a_password_of_its_own(url: str) -> None:
    assert has_password(url)


@pytest.mark.parametrize("url", OWN_PASSWORD)
@pytest.mark.parametrize("variable", URL_VARIABLES)
def test_a_url_with_a_password_of_its_own_next_to_the_file_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, url: str, variable: str
) -> None:
    # Two passwords for one server: whichever one won, the other would be a stale secret that fails one day.
    monkeypatch.setenv("MAILWORKER_REDIS_PASSWORD_FILE", str(write(tmp_path / "pw", "from-the-file\n")))
    monkeypatch.setenv(variable, url)
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert str(caught.value) == (
        f"MAILWORKER_REDIS_PASSWORD_FILE is set and {variable} carries a password of its own: "
        "keep one of them (the URL without its password, or no file)"
    )
    assert "ownpw" not in str(caught.value) and "from-the-file" not in str(caught.value)


def test_every_url_with_a_password_of_its_own_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MAILWORKER_REDIS_PASSWORD_FILE", str(write(tmp_path / "pw", "from-the-file\n")))
    monkeypatch.setenv("MAILWORKER_BROKER_URL", "redis://:ownpw@127.0.0.1:6379/0")
    monkeypatch.setenv("MAILWORKER_STORE_URL", "redis://:ownpw@127.0.0.1:6379/0")
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert str(caught.value) == (
        "MAILWORKER_REDIS_PASSWORD_FILE is set and MAILWORKER_BROKER_URL and MAILWORKER_STORE_URL carry a "
        "password of their own: keep one of them (the URL without its password, or no file)"
    )


def test_the_demo_and_other_brokers_are_left_alone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAILWORKER_REDIS_PASSWORD_FILE", str(write(tmp_path / "pw", "from-the-file\n")))
    monkeypatch.setenv("MAILWORKER_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672//")
    monkeypatch.setenv("MAILWORKER_RESULT_BACKEND", "cache+memory://")
    monkeypatch.setenv("MAILWORKER_STORE_URL", "memory://")
    settings = load_settings()
    assert (settings.broker_url, settings.result_backend, settings.store_url) == (
        "amqp://guest:guest@127.0.0.1:5672//", "cache+memory://", "memory://",
    )  # fmt: skip


def test_the_password_is_hidden_wherever_a_url_is_shown(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MAILWORKER_REDIS_PASSWORD_FILE", str(write(tmp_path / "pw", SPECIAL + "\n")))
    settings = load_settings()
    shown = [
        redact_url(settings.broker_url),
        redact_urls_in(f"cannot connect to {settings.store_url}: refused", settings.store_url),
        redact_urls_in(f"error: {settings.result_backend} failed"),  # found without being told
    ]
    for line in shown:
        assert "***" in line
        assert SPECIAL not in line and quote(SPECIAL, safe="") not in line


# ---- a password-protected Redis, and `mailworker health` ----------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def protected_redis(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """A redis-server of this test's own on 127.0.0.1 requiring a password: (its URL without the password,
    the password)."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed")
    password = SPECIAL + os.urandom(8).hex()
    port = free_port()
    (tmp_path / "redis").mkdir()
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(tmp_path / "redis"), "--requirepass", password],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        client = redis.Redis(host="127.0.0.1", port=port, password=password, socket_timeout=2)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                assert process.poll() is None, "redis-server did not start"
                assert time.monotonic() < deadline, "redis-server did not answer"
                time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0", password
    finally:
        process.terminate()
        process.wait(timeout=10)


def health(url: str, password_file: Path | None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **dict.fromkeys(URL_VARIABLES, url)}
    env.pop("MAILWORKER_REDIS_PASSWORD_FILE", None)
    if password_file is not None:
        env["MAILWORKER_REDIS_PASSWORD_FILE"] = str(password_file)
    return subprocess.run(
        [sys.executable, "-m", "worker.cli", "health", "--timeout", "2"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def line_of(done: subprocess.CompletedProcess[str], check: str) -> str:
    [line] = [line for line in done.stdout.splitlines() if line.split()[1] == check]
    return line


def test_health_reaches_a_protected_redis_with_the_password_from_the_file(
    protected_redis: tuple[str, str], tmp_path: Path
) -> None:
    url, password = protected_redis
    done = health(url, write(tmp_path / "redis_password", password + "\n"))
    shown = url.replace("redis://", "redis://:***@")
    assert line_of(done, "store").startswith(f"ok    store   {shown} answers"), done.stdout + done.stderr
    assert line_of(done, "broker").startswith(f"ok    broker  {shown} answers"), done.stdout + done.stderr
    output = done.stdout + done.stderr
    assert password not in output and quote(password, safe="") not in output
    assert password[-16:] not in output  # not even its random tail


@pytest.mark.parametrize("wrong", ["not-the-password", None], ids=["wrong-password", "no-file"])
def test_health_against_a_protected_redis_without_the_right_password_fails_without_showing_one(
    protected_redis: tuple[str, str], tmp_path: Path, wrong: str | None
) -> None:
    url, password = protected_redis
    password_file = write(tmp_path / "redis_password", wrong + "\n") if wrong is not None else None
    done = health(url, password_file)
    assert done.returncode == 1
    assert line_of(done, "store").startswith("FAIL  store   ") and "MAILWORKER_STORE_URL" in done.stdout
    assert line_of(done, "broker").startswith("FAIL  broker  ") and "MAILWORKER_BROKER_URL" in done.stdout
    output = done.stdout + done.stderr
    assert password[-16:] not in output
    if wrong is not None:
        assert wrong not in output
