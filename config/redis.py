"""Redis connections for the config store and the service's own keys."""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import redis
from redis.sentinel import Sentinel as RedisSentinel

from config.errors import ConfigError
from config.sentinel import Sentinel, is_sentinel
from config.sentinel import parse as parse_sentinel

MASK = "***"
# kombu and Sentinel take `;`-separated URLs. Split only where a scheme follows, so that a password holding
# a `;` stays in one piece, and masked.
_URL_LIST = re.compile(r";(?=[A-Za-z][A-Za-z0-9+.-]*://)")
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")
# A credential in the query; a quote closing the value is where a message quoted the URL, and stays.
_SECRET_PARAM = re.compile(
    r"(?P<lead>[?&;])(?P<name>[^=&;?#]*(?:pass|pwd|secret|token|auth|cred)[^=&;?#]*)=(?P<value>[^&;#]*?)(?=['\"]?(?:[&;#\s]|\Z))",
    re.IGNORECASE,
)
_PLAIN_USER = re.compile(r"[^/?#@\s]*\Z")
# A URL inside free text ends at white space: not at a quote, which a password may hold (a quote after
# the URL is left as it is, since only what precedes the last `@` is masked).
_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://\S*")
_DELIMITERS = re.compile(r"[/?#@:;&=%]")
_QUOTED = re.compile(r"'([^']+)'|\"([^\"]+)\"")
# Shorter pieces of a password are left in free text: masking them would mask ordinary words and numbers.
_MIN_PIECE = 4


# URLs of a Redis server (kombu's Redis transport, and its Sentinel lists); `memory://` is the demo's stand-in.
REDIS_SCHEMES = ("redis://", "rediss://", "unix://", "sentinel://")


def connect(
    url: str,
    *,
    variable: str = "MAILWORKER_STORE_URL",
    check: bool = True,
    sentinel: Sentinel | None = None,
    decode_responses: bool = True,
    socket_timeout: float = 5,
) -> redis.Redis:
    """A client with timeouts; with check, one PING so an unreachable Redis is one clear line.

    `memory://` is an in-process Redis (fakeredis) for `make demo` on a machine without a Redis server.
    `sentinel://` lists (config/sentinel.py) give a client of the master `sentinel.master` names: its pool
    asks the sentinels for the master's address on every new connection, and drops a connection to a
    server that became a replica (READONLY), so the client follows a failover by itself.
    """
    if url.startswith("memory://"):
        return _memory_redis()
    options: dict[str, Any] = dict(
        decode_responses=decode_responses,
        socket_timeout=socket_timeout,
        socket_connect_timeout=3,
        health_check_interval=10,
        retry_on_timeout=True,
    )
    try:
        client = (
            _sentinel_client(url, sentinel, options)
            if is_sentinel(url)
            else redis.Redis.from_url(url, **options)
        )
    except ValueError as error:
        reason = redact_urls_in(str(error), url)
        raise ConfigError(f"{variable}: {redact_url(url)!r} is not a Redis URL ({reason})") from None
    if check:
        try:
            client.ping()
        except redis.RedisError as error:
            reason = redact_urls_in(str(error), url)
            raise ConfigError(f"{variable}: cannot reach Redis at {redact_url(url)} ({reason})") from None
    return client


def _sentinel_client(url: str, sentinel: Sentinel | None, options: dict[str, Any]) -> redis.Redis:
    if sentinel is None or not sentinel.master:
        raise ValueError("a sentinel:// URL needs the master's name: set MAILWORKER_SENTINEL_MASTER")
    target = parse_sentinel(url)
    timeouts = {k: v for k, v in options.items() if k.startswith("socket_")}
    manager = RedisSentinel(
        list(target.sentinels),
        sentinel_kwargs={**timeouts, **({"password": sentinel.password} if sentinel.password else {})},
    )
    credentials = {k: v for k, v in (("username", target.username), ("password", target.password)) if v}
    client: redis.Redis = manager.master_for(
        sentinel.master, redis_class=redis.Redis, db=target.db, **credentials, **options
    )
    return client


def persistence(client: Any) -> tuple[bool | None, str]:
    """(keeps data on disk?, what) of a Redis server; None when it does not say (CONFIG disabled)."""
    try:
        config = client.config_get("appendonly")
        config.update(client.config_get("save"))
    except redis.ResponseError:  # managed Redis often renames CONFIG; INFO still tells about AOF
        info = client.info("persistence")
        if int(info.get("aof_enabled") or 0):
            return True, "AOF on"
        return None, "persistence unknown (CONFIG is not available): make sure it has AOF or snapshots"
    aof = str(config.get("appendonly", "no")).lower() == "yes"
    save = str(config.get("save") or "").strip()
    if aof or save:
        return True, ", ".join(
            x for x in ("AOF on" if aof else "", f"snapshots ({save})" if save else "") if x
        )
    return False, (
        "keeps nothing on disk (appendonly no, no save points): a restart loses queued mail, results and "
        "every realm's settings; turn on AOF (docs/reliability.md)"
    )


@dataclass(frozen=True)
class Memory:
    used: int  # bytes
    maximum: int  # bytes; 0: no maxmemory (Redis grows until the machine runs out)
    policy: str  # maxmemory-policy: noeviction refuses writes when full; the others delete keys


def memory(client: Any) -> Memory:
    """How full a Redis server is (INFO memory: works on managed Redis without CONFIG)."""
    info = client.info("memory")
    return Memory(int(info.get("used_memory") or 0), int(info.get("maxmemory") or 0),
                  str(info.get("maxmemory_policy") or "unknown"))  # fmt: skip


# The URLs that take the password of MAILWORKER_REDIS_PASSWORD_FILE: a Redis server's, and Sentinel's (kombu
# and Celery authenticate to the master with the password of its sentinel:// URLs).
_PASSWORD_SCHEMES = REDIS_SCHEMES
# redis-py reads a password from the query too.
_PASSWORD_PARAM = re.compile(r"[?&]password=", re.IGNORECASE)


def has_password(url: str) -> bool:
    """Whether a Redis URL of `url` (one, or a `;`-separated list) carries a password of its own.

    What redaction takes for a credential counts: whatever comes before the last `@`, unless it is a plain
    user name without a `:` (`redis://mailer@host/0`: a Redis ACL user); and a `password=` query parameter
    (redis-py reads it). URLs of anything else (`memory://`) never take the file's password: not counted.
    """
    for part in _URL_LIST.split(url):
        prefix, credentials, rest = _parts(part)
        if prefix.lower() not in _PASSWORD_SCHEMES:
            continue
        if _PASSWORD_PARAM.search(rest) or (credentials is not None and not _user_only(prefix, credentials)):
            return True
    return False


def with_password(url: str, password: str) -> str:
    """`url` with `password` in each of its Redis URLs (each URL of a `;`-separated list, Sentinel's too).

    The password is percent-quoted, so any character works: redis-py, kombu and Celery unquote it. A user
    name in the URL stays (`redis://mailer@host/0` becomes `redis://mailer:PASSWORD@host/0`, for a Redis
    ACL user). URLs of anything else (`memory://`, `cache+memory://`) are returned as they are. The caller
    makes sure the URL carries no password of its own (has_password): this one would replace it.
    """
    quoted = quote(password, safe="")
    parts = []
    for part in _URL_LIST.split(url):
        prefix, credentials, rest = _parts(part)
        if prefix.lower() in _PASSWORD_SCHEMES:
            user = credentials if credentials is not None and _user_only(prefix, credentials) else ""
            part = f"{prefix}{user}:{quoted}{rest if credentials is not None else '@' + rest}"
        parts.append(part)
    return ";".join(parts)


def unusable_url(variable: str, what: str, url: str, error: BaseException) -> ConfigError:
    """One line naming the variable to check, the URL and the library's error without credentials."""
    reason = redact_urls_in(f"{type(error).__name__}: {error}", url)
    return ConfigError(f"{variable}: {what} at {redact_url(url)} failed ({reason})")


def redact_url(url: object) -> str:
    """A Redis URL, or a `;`-separated list of them (Sentinel), with every credential hidden.

    For messages and logs, so it never raises and never trusts the URL to be well-formed: whatever comes
    before the last `@` of a URL is a credential (a password may hold `/`, `?`, `#` or `@` unescaped, and
    then no two parsers agree where it ends); only a plain user name before a `:` is kept. Query
    parameters named like a credential (`?password=...`, redis-py reads it) are masked too.
    """
    text = url if isinstance(url, str) else str(url)
    return ";".join(_redact_one(part) for part in _URL_LIST.split(text))


def redact_urls_in(text: str, *urls: str) -> str:
    """`text` (an exception's message, a log line) with the credentials of `urls` and of any URL in it hidden.

    A library's error may quote a piece of a malformed URL ("Port could not be cast to integer value as
    'pa'" for `redis://:pa/ss@host`): pieces of the known URLs' credentials are masked wherever they appear,
    and any quoted piece of one.
    """
    for url in urls:
        if not url:
            continue
        text = text.replace(url, redact_url(url))
        secrets, pieces = _secrets(url)
        for piece in pieces:
            text = text.replace(piece, MASK)
        if secrets:
            text = _QUOTED.sub(functools.partial(_mask_quoted, secrets=secrets), text)
    if "://" in text:
        text = _URL_IN_TEXT.sub(lambda m: redact_url(m.group(0)), text)
    return text


def _parts(url: str) -> tuple[str, str | None, str]:
    """(scheme://, credentials or None, the rest from the `@` on) of one URL of a list."""
    scheme = _SCHEME.match(url)
    prefix = scheme.group(0) if scheme else ""
    rest = url[len(prefix) :]
    at = rest.rfind("@")
    return (prefix, None, rest) if at < 0 else (prefix, rest[:at], rest[at:])


def _user_kept(prefix: str, credentials: str) -> str | None:
    user, colon, _ = credentials.partition(":")
    return user if prefix and colon and _PLAIN_USER.match(user) else None


def _user_only(prefix: str, credentials: str) -> bool:
    return bool(prefix) and ":" not in credentials and _PLAIN_USER.match(credentials) is not None


def _redact_one(url: str) -> str:
    prefix, credentials, rest = _parts(url)
    rest = _SECRET_PARAM.sub(lambda m: f"{m['lead']}{m['name']}={MASK}", rest)
    if credentials is None:
        return prefix + rest
    user = _user_kept(prefix, credentials)
    return prefix + (f"{user}:{MASK}" if user is not None else MASK) + rest


@functools.lru_cache(maxsize=16)
def _secrets(url: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(the credentials in `url`, the pieces of them to mask in free text, longest first)."""
    found: list[str] = []
    for part in _URL_LIST.split(url):
        prefix, credentials, rest = _parts(part)
        if credentials:
            user = _user_kept(prefix, credentials)
            found.append(credentials if user is None else credentials[len(user) + 1 :])
        found += [m["value"] for m in _SECRET_PARAM.finditer(rest)]
    secrets = tuple(secret for secret in found if secret)
    pieces = {piece for secret in secrets for piece in (secret, *_DELIMITERS.split(secret))}
    return secrets, tuple(sorted((p for p in pieces if len(p) >= _MIN_PIECE), key=len, reverse=True))


def _mask_quoted(match: re.Match[str], secrets: tuple[str, ...]) -> str:
    quoted = match.group(1) or match.group(2)
    return match.group(0) if not any(quoted in secret for secret in secrets) else f"'{MASK}'"


def _memory_redis() -> redis.Redis:
    try:
        import fakeredis
    except ImportError:
        raise ConfigError(
            "MAILWORKER_STORE_URL=memory:// needs fakeredis: pip install 'iam-mail-worker[test]'"
        ) from None
    global _memory_server
    if _memory_server is None:
        _memory_server = fakeredis.FakeServer()
    return fakeredis.FakeRedis(server=_memory_server, decode_responses=True)


_memory_server: Any = None  # one in-process server, so every client of the process sees the same data
