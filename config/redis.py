"""Redis connections for the config store and the service's own keys."""

from __future__ import annotations

from typing import Any

import redis

from config.errors import ConfigError


def connect(url: str, *, variable: str = "MAILWORKER_STORE_URL", check: bool = True) -> redis.Redis:
    """A client with timeouts; with check, one PING so an unreachable Redis is one clear line.

    `memory://` is an in-process Redis (fakeredis) for `make demo` on a machine without a Redis server.
    """
    if url.startswith("memory://"):
        return _memory_redis()
    try:
        client = redis.Redis.from_url(
            url,
            decode_responses=True,
            socket_timeout=5,
            socket_connect_timeout=3,
            health_check_interval=10,
            retry_on_timeout=True,
        )
    except ValueError as error:
        raise ConfigError(f"{variable}: {url!r} is not a Redis URL ({error})") from None
    if check:
        try:
            client.ping()
        except redis.RedisError as error:
            raise ConfigError(f"{variable}: cannot reach Redis at {redact_url(url)} ({error})") from None
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


def redact_url(url: str) -> str:
    """A Redis URL with its password hidden, for messages and logs."""
    if "@" not in url or "://" not in url:
        return url
    scheme, rest = url.split("://", 1)
    credentials, host = rest.rsplit("@", 1)
    user = credentials.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}" if ":" in credentials else f"{scheme}://***@{host}"


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
