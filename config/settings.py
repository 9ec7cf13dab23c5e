"""The service's own settings, read once from the environment (prefix MAILWORKER_, `.env` supported).

This is the one place configuration comes from; every other module receives a `ServiceSettings`.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from config.errors import ConfigError
from config.redis import has_password, with_password
from config.sentinel import Sentinel, is_sentinel
from config.sentinel import parse as parse_sentinel
from config.variables import variable_problem

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
# The settings that name a Redis server: MAILWORKER_REDIS_PASSWORD_FILE gives each its password.
REDIS_URL_FIELDS = ("broker_url", "result_backend", "store_url")
_SENTINEL_PASSWORD = ("MAILWORKER_SENTINEL_PASSWORD_FILE", "the sentinels' password")


class ServiceSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MAILWORKER_", env_file=".env", extra="ignore")

    broker_url: str = DEFAULT_REDIS_URL
    result_backend: str = DEFAULT_REDIS_URL
    store_url: str = DEFAULT_REDIS_URL
    # A file holding the password of the Redis URLs above (a Docker secret, /run/secrets/redis_password),
    # for URLs written without one: a password in a URL shows in `docker compose config`, `docker inspect`
    # and the environment of every child process. A URL with a password of its own next to it is refused.
    redis_password_file: str | None = None
    # Redis Sentinel (docs/operations.md): the name of the master the sentinels monitor, for the URLs above
    # written as `sentinel://host:26379;sentinel://host2:26379/0` lists; and a file holding the sentinels'
    # own password (`requirepass` in sentinel.conf), when they have one. The master's password is the
    # URLs' (or MAILWORKER_REDIS_PASSWORD_FILE's), as for a plain Redis.
    sentinel_master: str = ""
    sentinel_password_file: str | None = None
    # Comma-separated Fernet keys; the first encrypts, all decrypt (rotation: prepend the new key).
    secret_key: SecretStr | None = None
    # A file holding that value instead (a Docker or Kubernetes secret, /run/secrets/<name>): a key in the
    # environment shows in `docker inspect`, `docker compose config` and every child process.
    secret_key_file: str | None = None
    # Every Redis key the service writes starts with this; tests use their own prefix.
    key_prefix: str = "mailworker"
    # Prefix for the broker's own keys (kombu's global_keyprefix); empty in production, set by tests.
    broker_key_prefix: str = ""

    realm_templates_dir: str | None = Field(
        default=None, description="directory with one sub-directory per realm overriding templates"
    )
    smtp_ca_file: str | None = Field(default=None, description="CA bundle (PEM) for verifying SMTP servers")
    # URLs from settings (the OAuth2 token endpoint) may point at loopback, private or link-local addresses,
    # and http:// at this machine: only for tests and on-premises endpoints (config/urls.py says why).
    allow_private_urls: bool = False

    # Liveness (worker/liveness/heartbeat.py): every worker process keeps a heartbeat, and a job (or bulk chunk, or
    # broker message) held by a process whose heartbeat lapsed this long goes to another worker. The
    # heartbeat beats five times per lease, so a busy process never loses what it holds.
    worker_lease: int = Field(default=15, ge=3, le=300)
    # The longest one task may run: a send may wait `data_timeout` (10 minutes by default, RFC 5321) for
    # the server's reply to the end of the data, so this stays above that.
    task_time_limit: int = Field(default=900, ge=60)
    # Celery task events (task-sent, -received, -started, -succeeded): about four Redis PUBLISHes per message
    # that nobody reads unless Flower or `celery events` runs; Flower turns them on by itself (it sends
    # `enable_events` to the workers every few seconds), so this is for other listeners.
    task_events: bool = False
    result_expires: int = Field(default=86_400, ge=60, description="seconds task results are kept")
    # How long an idempotency key (and a job's delivered record) keeps a repeat from being sent.
    delivered_marker_ttl: int = Field(default=7 * 86_400, ge=60)
    dead_letter_ttl: int = Field(default=30 * 86_400, ge=60)

    # Retries (worker/policy.py): backoff from `retry_base_delay` doubling up to `retry_max_delay`. A job
    # retries until its link expires, or for `retry_max_age` seconds when it has no link (MTAs keep mail
    # for days; identity mail is stale after a day). `max_attempts` 0 means no limit by count.
    max_attempts: int = Field(default=0, ge=0, le=10_000)
    retry_base_delay: float = Field(default=5.0, gt=0)
    retry_max_delay: float = Field(default=300.0, gt=0, le=3600)
    retry_max_age: int = Field(default=86_400, ge=60)

    # A job without news (no attempt, no end) for this long is published again (the broker lost it).
    # Workers sweep every `sweep_interval` seconds.
    lost_job_grace: int = Field(default=1800, ge=60)
    sweep_interval: int = Field(default=30, ge=1)

    # What a process read of a realm (its settings version, circuit breaker, suppression list; a producer's
    # realm check) is trusted this long (seconds; config/recent.py): one Redis command per realm and second
    # instead of one per message. A save, a breaker another process opened or a new suppression is seen
    # within this time. 0 reads every time.
    realm_cache_seconds: float = Field(default=1.0, ge=0, le=60)

    # The stats, outcome and metric counters are summed in each process and written this often (seconds;
    # worker/outcomes/buffer.py): a few Redis commands a second instead of four a message. A process
    # killed with SIGKILL loses up to this much of its counts (never mail). 0 writes with every count.
    counter_flush_interval: float = Field(default=1.0, ge=0, le=60)

    # One mail per recipient and template in this window (e-mail bombing guard); 0 turns it off.
    recipient_cooldown: int = Field(default=30, ge=0)

    # Per-realm circuit breaker (worker/delivery/breaker.py): after `breaker_threshold` connection failures
    # (timeouts, refusals) within `breaker_window` seconds, the realm's jobs stop connecting for
    # `breaker_cooloff` seconds (doubled after each failed probe, up to `breaker_max_cooloff`).
    breaker_threshold: int = Field(default=3, ge=1)
    breaker_window: float = Field(default=60.0, gt=0)
    breaker_cooloff: float = Field(default=30.0, gt=0)
    breaker_max_cooloff: float = Field(default=240.0, gt=0)

    # The HTTP API and web console (`mailworker serve`, worker/http/).
    http_host: str = "127.0.0.1"
    http_port: int = Field(default=8025, ge=1, le=65535)
    # The largest request body (bytes), but for a bulk upload streamed as NDJSON (its own limit below).
    http_max_body: int = Field(default=1_048_576, ge=1024)
    # The largest bulk upload (bytes): 100,000 recipients are about 5 MB; it is read as it comes.
    http_max_bulk_body: int = Field(default=256 * 1_048_576, ge=1024)
    # Origins a browser may call the API from (comma-separated); none by default: no CORS headers at all.
    http_cors_origins: str = ""
    # Reverse proxies (comma-separated addresses or networks) whose X-Forwarded-For and X-Forwarded-Proto
    # are believed: the client address for the sign-in rate limit, https for the Secure cookie.
    http_trusted_proxies: str = ""
    # A console session ends after this many seconds without a request.
    http_session_ttl: int = Field(default=8 * 3600, ge=60)
    # Failed authentications per client address and minute before the API answers 429.
    http_auth_failures_per_minute: int = Field(default=10, ge=1, le=10_000)

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"
    log_format: Literal["text", "json"] = "text"

    @field_validator("log_level", "log_format", mode="before")
    @classmethod
    def _any_case(cls, value: Any) -> Any:
        # LOG_FORMAT=JSON or LOG_LEVEL=debug are what operators type: the same words in any case.
        if not isinstance(value, str):
            return value
        return value.strip().upper() if value.strip().upper() in _LEVELS else value.strip().lower()

    @model_validator(mode="after")
    def _retries_fit(self) -> ServiceSettings:
        if self.retry_base_delay > self.retry_max_delay:
            raise ValueError(
                f"MAILWORKER_RETRY_BASE_DELAY ({self.retry_base_delay:g}s) must not exceed "
                f"MAILWORKER_RETRY_MAX_DELAY ({self.retry_max_delay:g}s)"
            )
        return self

    @model_validator(mode="after")
    def _secret_key_from_file(self) -> ServiceSettings:
        if not (self.secret_key_file or "").strip():
            return self
        if self.secret_key is not None and self.secret_key.get_secret_value().strip():
            # Two sources would disagree after a rotation that updated only one of them.
            raise ValueError(
                "MAILWORKER_SECRET_KEY and MAILWORKER_SECRET_KEY_FILE are both set: keep one of them"
            )
        self.secret_key = SecretStr(read_key_file(self.secret_key_file or ""))
        return self

    @model_validator(mode="after")
    def _redis_password_from_file(self) -> ServiceSettings:
        if not (self.redis_password_file or "").strip():
            return self
        password = read_password_file(self.redis_password_file or "")
        own = [f"MAILWORKER_{name.upper()}" for name in REDIS_URL_FIELDS if has_password(getattr(self, name))]
        if own:
            # Two passwords for one server: whichever won, the other is a stale secret that fails one day.
            raise ValueError(
                f"MAILWORKER_REDIS_PASSWORD_FILE is set and {' and '.join(own)} "
                f"{'carries a password of its' if len(own) == 1 else 'carry a password of their'} own: "
                "keep one of them (the URL without its password, or no file)"
            )
        for name in REDIS_URL_FIELDS:
            setattr(self, name, with_password(getattr(self, name), password))
        return self

    @model_validator(mode="after")
    def _sentinel_urls(self) -> ServiceSettings:
        listed = [name for name in REDIS_URL_FIELDS if is_sentinel(getattr(self, name))]
        for name in listed:
            try:
                parse_sentinel(getattr(self, name))
            except ValueError as error:
                raise ValueError(f"MAILWORKER_{name.upper()}: {error}") from None
        self.sentinel_master = self.sentinel_master.strip()
        names = [f"MAILWORKER_{name.upper()}" for name in listed]
        variables = " and ".join([", ".join(names[:-1]), names[-1]] if len(names) > 2 else names)
        if listed and not self.sentinel_master:
            raise ValueError(
                f"{variables} {'names' if len(listed) == 1 else 'name'} Redis sentinels: set "
                "MAILWORKER_SENTINEL_MASTER to the name of the master they monitor (`sentinel monitor NAME ...`)"
            )
        if not listed and (self.sentinel_master or (self.sentinel_password_file or "").strip()):
            # A leftover of a move away from Sentinel: say so rather than ignore it.
            raise ValueError(
                "MAILWORKER_SENTINEL_MASTER or MAILWORKER_SENTINEL_PASSWORD_FILE is set but no Redis URL is a "
                "sentinel:// list: remove it, or write the URLs as sentinel://HOST:26379;sentinel://HOST2:26379/0"
            )
        if (self.sentinel_password_file or "").strip():
            read_password_file(
                self.sentinel_password_file or "", *_SENTINEL_PASSWORD
            )  # one line now, not later
        return self

    @property
    def sentinel(self) -> Sentinel:
        """The master's name and the sentinels' password, for every client of a sentinel:// URL."""
        path = (self.sentinel_password_file or "").strip()
        if not path:
            return Sentinel(self.sentinel_master)
        return Sentinel(self.sentinel_master, read_password_file(path, *_SENTINEL_PASSWORD))

    @property
    def heartbeat_interval(self) -> float:
        return self.worker_lease / 5

    def secret_keys(self) -> list[str]:
        if self.secret_key is None or not self.secret_key.get_secret_value().strip():
            raise ConfigError(
                "MAILWORKER_SECRET_KEY is not set: it encrypts stored SMTP passwords; "
                "create one with `mailworker secret-key` and export it (or name a file holding it in "
                "MAILWORKER_SECRET_KEY_FILE)"
            )
        return [k.strip() for k in self.secret_key.get_secret_value().split(",") if k.strip()]


def read_key_file(path: str) -> str:
    """The keys in the file MAILWORKER_SECRET_KEY_FILE names; what is wrong with it as one line.

    The messages never quote the file's content: it is the key.
    """
    variable = "MAILWORKER_SECRET_KEY_FILE"
    try:
        text = Path(path).read_text(encoding="utf-8").strip()
    except OSError as error:
        raise _unreadable(variable, path, error) from None
    except UnicodeDecodeError:
        raise ValueError(
            f"{variable}: {path!r} is not UTF-8 text (expected comma-separated Fernet keys)"
        ) from None
    if not text:
        raise ValueError(f"{variable}: {path!r} is empty (expected comma-separated Fernet keys)")
    if "\n" in text:
        raise ValueError(
            f"{variable}: {path!r} holds more than one line: write the keys on one line, comma-separated"
        )
    return text


def read_password_file(
    path: str, variable: str = "MAILWORKER_REDIS_PASSWORD_FILE", what: str = "the Redis password"
) -> str:
    """The Redis password in the file MAILWORKER_REDIS_PASSWORD_FILE names; what is wrong with it as one line.

    The password is the file's content without its trailing newline: exactly what `$(cat FILE)` gives
    redis-server in docker-compose.yml, so that the server and its clients agree on it. White space around
    it (a Windows line end), a second line or a control character is refused rather than dropped: the
    server would keep it, and every connection would fail with a password that looks right. The messages
    never quote the file's content: it is the password.
    """
    try:
        data = Path(path).read_bytes()  # bytes: text mode would turn a \r\n into the \n the server keeps
    except OSError as error:
        raise _unreadable(variable, path, error) from None
    try:
        password = data.decode("utf-8").rstrip("\n")
    except UnicodeDecodeError:
        raise ValueError(f"{variable}: {path!r} is not UTF-8 text (expected {what})") from None
    if not password.strip():
        raise ValueError(f"{variable}: {path!r} is empty (expected {what})")
    if "\n" in password:
        raise ValueError(
            f"{variable}: {path!r} holds more than one line: write the password alone on one line"
        )
    if password != password.strip():
        raise ValueError(
            f"{variable}: {path!r} has white space around the password (a space, a tab, a Windows line end): "
            "write the password alone"
        )
    if any(ord(char) < 32 or ord(char) == 127 for char in password):
        raise ValueError(f"{variable}: {path!r} holds a control character: write the password alone")
    return password


def _unreadable(variable: str, path: str, error: OSError) -> ValueError:
    if isinstance(error, PermissionError):
        # A secret mounted into a container keeps its owner on the host: name the user that was refused.
        return ValueError(f"{variable}: cannot read {path!r} (permission denied for uid {os.getuid()})")
    return ValueError(f"{variable}: cannot read {path!r} ({error.strerror or type(error).__name__})")


def load_settings() -> ServiceSettings:
    """Read the environment; a bad value becomes one ConfigError naming the variable."""
    problem = variable_problem(os.environ, ServiceSettings.model_fields)
    if problem is not None:
        raise ConfigError(problem)
    try:
        return ServiceSettings()
    except ValidationError as error:
        first = error.errors()[0]
        variable = "MAILWORKER_" + "_".join(str(p) for p in first["loc"]).upper() if first["loc"] else ""
        message = first["msg"].removeprefix("Value error, ")
        raise ConfigError(f"{variable}: {message}" if variable else message) from None


@lru_cache(maxsize=1)
def get_settings() -> ServiceSettings:
    return load_settings()
