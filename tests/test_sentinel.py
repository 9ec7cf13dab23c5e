"""Redis Sentinel settings: `sentinel://` lists read into sentinels, database and credentials (a table), the
settings' rules, and the options every client gets (Celery's broker and result backend, the store's client).

The failover itself runs with real processes in tests/reliability/test_sentinel.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from redis.sentinel import SentinelConnectionPool

from config.errors import ConfigError
from config.redis import connect, redact_url
from config.sentinel import Sentinel, Target, is_sentinel, parse
from config.settings import ServiceSettings, load_settings
from worker.app import celery_config

S1, S2 = "sentinel://127.0.0.1:26379", "sentinel://127.0.0.1:26380"
URL_VARIABLES = ("MAILWORKER_BROKER_URL", "MAILWORKER_RESULT_BACKEND", "MAILWORKER_STORE_URL")


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for variable in (
        "MAILWORKER_REDIS_PASSWORD_FILE",
        "MAILWORKER_SENTINEL_MASTER",
        "MAILWORKER_SENTINEL_PASSWORD_FILE",
    ):
        monkeypatch.delenv(variable, raising=False)
    for variable in URL_VARIABLES:
        monkeypatch.setenv(variable, "redis://127.0.0.1:6379/0")
    monkeypatch.chdir(tmp_path)  # no .env of the working directory


@pytest.mark.parametrize(
    ("url", "target"),
    [
        (S1, Target((("127.0.0.1", 26379),))),
        (f"{S1}/3;{S2}/3", Target((("127.0.0.1", 26379), ("127.0.0.1", 26380)), 3)),
        (f"{S1}/3;{S2}", Target((("127.0.0.1", 26379), ("127.0.0.1", 26380)), 3)),
        ("sentinel://127.0.0.1", Target((("127.0.0.1", 26379),))),
        ("SENTINEL://127.0.0.1:26381/1", Target((("127.0.0.1", 26381),), 1)),
        ("sentinel://:p%40ss@127.0.0.1:26379/0", Target((("127.0.0.1", 26379),), 0, None, "p@ss")),
        ("sentinel://mailer:pw@127.0.0.1/0;sentinel://mailer:pw@127.0.0.1:26380/0",
         Target((("127.0.0.1", 26379), ("127.0.0.1", 26380)), 0, "mailer", "pw")),
        ("sentinel://mailer@127.0.0.1/0", Target((("127.0.0.1", 26379),), 0, "mailer", None)),
        ("sentinel://:a;b@127.0.0.1/0", Target((("127.0.0.1", 26379),), 0, None, "a;b")),  # `;` in a password
    ],
)  # fmt: skip
def test_parse(url: str, target: Target) -> None:
    assert parse(url) == target


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        (f"{S1};redis://127.0.0.1:6379/0", "every URL of a Sentinel list starts with sentinel://"),
        ("sentinel://127.0.0.1:port/0", "port is not a number"),
        ("sentinel:///0", "names no host"),
        (f"{S1}/zero", "database after the last sentinel's port is a number"),
        (f"{S1}/1;{S2}/2", "different databases"),
        (f"{S1};{S2}/2", "different databases"),  # kombu and Celery would both use database 0
    ],
)
def test_parse_refuses(url: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        parse(url)


@pytest.mark.parametrize(
    ("url", "expected"),
    [(S1, True), ("Sentinel://h", True), ("redis://h:6379/0", False), ("memory://", False)],
)
def test_is_sentinel(url: str, expected: bool) -> None:
    assert is_sentinel(url) is expected


@pytest.mark.parametrize(
    ("sentinel", "options"),
    [
        (Sentinel("mymaster"), {"master_name": "mymaster"}),
        (
            Sentinel("mymaster", "s3cret"),
            {"master_name": "mymaster", "sentinel_kwargs": {"password": "s3cret"}},
        ),
    ],
)
def test_transport_options(sentinel: Sentinel, options: dict) -> None:
    assert sentinel.transport_options() == options


# ---- the settings ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("environ", "problem"),
    [
        ({"MAILWORKER_BROKER_URL": S1}, "MAILWORKER_BROKER_URL names Redis sentinels: set MAILWORKER_SENTINEL_MASTER"),
        ({"MAILWORKER_STORE_URL": S1, "MAILWORKER_BROKER_URL": S1}, "MAILWORKER_BROKER_URL and MAILWORKER_STORE_URL name"),
        ({"MAILWORKER_STORE_URL": S1, "MAILWORKER_BROKER_URL": S1, "MAILWORKER_RESULT_BACKEND": S1},
         "MAILWORKER_BROKER_URL, MAILWORKER_RESULT_BACKEND and MAILWORKER_STORE_URL name"),
        ({"MAILWORKER_SENTINEL_MASTER": "m"}, "no Redis URL is a sentinel:// list"),
        ({"MAILWORKER_STORE_URL": f"{S1}/1;{S2}/2", "MAILWORKER_SENTINEL_MASTER": "m"},
         "MAILWORKER_STORE_URL: the URLs name different databases"),
        ({"MAILWORKER_STORE_URL": S1, "MAILWORKER_SENTINEL_MASTER": "m",
          "MAILWORKER_SENTINEL_PASSWORD_FILE": "/nonexistent/sentinel_password"},
         "MAILWORKER_SENTINEL_PASSWORD_FILE: cannot read '/nonexistent/sentinel_password'"),
    ],
)  # fmt: skip
def test_settings_refuse(monkeypatch: pytest.MonkeyPatch, environ: dict[str, str], problem: str) -> None:
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=problem):
        load_settings()


def test_the_redis_password_file_goes_to_the_master_and_the_sentinel_file_to_the_sentinels(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / "redis").write_text("master-pw\n")
    (tmp_path / "sentinel").write_text("sentinel-pw\n")
    url = f"{S1}/0;{S2}/0"
    for variable in URL_VARIABLES:
        monkeypatch.setenv(variable, url)
    monkeypatch.setenv("MAILWORKER_SENTINEL_MASTER", " mailworker ")
    monkeypatch.setenv("MAILWORKER_REDIS_PASSWORD_FILE", str(tmp_path / "redis"))
    monkeypatch.setenv("MAILWORKER_SENTINEL_PASSWORD_FILE", str(tmp_path / "sentinel"))
    settings = load_settings()
    assert settings.sentinel == Sentinel("mailworker", "sentinel-pw")
    assert parse(settings.store_url).password == "master-pw"
    assert "master-pw" not in redact_url(settings.broker_url)
    config = celery_config(settings)
    for options in (config["broker_transport_options"], config["result_backend_transport_options"]):
        assert options["master_name"] == "mailworker"
        assert options["sentinel_kwargs"] == {"password": "sentinel-pw"}
    assert config["worker_disable_prefetch"] is True  # kombu's Sentinel transport is its Redis transport


def test_plain_redis_gets_no_sentinel_options() -> None:
    config = celery_config(ServiceSettings())
    assert "master_name" not in config["broker_transport_options"]
    assert "master_name" not in config["result_backend_transport_options"]


# ---- the store's client ---------------------------------------------------------------------------------


def test_the_store_client_asks_the_sentinels_for_its_master() -> None:
    client = connect(
        f"sentinel://:pw@127.0.0.1:26379/2;{S2}/2", check=False, sentinel=Sentinel("mailworker", "sp")
    )
    pool = client.connection_pool
    assert isinstance(pool, SentinelConnectionPool) and pool.service_name == "mailworker"
    assert pool.connection_kwargs["db"] == 2 and pool.connection_kwargs["password"] == "pw"
    assert pool.connection_kwargs["decode_responses"] is True
    sentinels = pool.sentinel_manager.sentinels
    assert [s.connection_pool.connection_kwargs["port"] for s in sentinels] == [26379, 26380]
    assert all(s.connection_pool.connection_kwargs["password"] == "sp" for s in sentinels)
    assert all(s.connection_pool.connection_kwargs["host"] == "127.0.0.1" for s in sentinels)


def test_a_sentinel_url_without_a_master_name_is_one_line() -> None:
    with pytest.raises(ConfigError, match=r"MAILWORKER_STORE_URL: .* set MAILWORKER_SENTINEL_MASTER"):
        connect(S1, check=False)


def test_an_unreachable_sentinel_is_one_line_without_the_password() -> None:
    with pytest.raises(ConfigError, match="cannot reach Redis") as raised:
        connect("sentinel://:hunter22@127.0.0.1:1/0", sentinel=Sentinel("mailworker"))
    assert "hunter22" not in str(raised.value)
