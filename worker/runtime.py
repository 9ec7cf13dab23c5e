"""Per-process resources of a worker or a producer, built once from the service settings.

Celery forks worker processes: sockets must not be shared across a fork, so `reset()` runs in every new
child (worker/app.py connects it to `worker_process_init`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import redis

from config.crypto import SecretBox
from config.keys import Keys
from config.redis import connect
from config.settings import ServiceSettings, get_settings


@dataclass
class Runtime:
    settings: ServiceSettings
    _cache: dict[str, object] = field(default_factory=dict)

    @cached_property
    def keys(self) -> Keys:
        return Keys(self.settings.key_prefix)

    @cached_property
    def redis(self) -> redis.Redis:
        return connect(self.settings.store_url)

    @cached_property
    def box(self) -> SecretBox:
        return SecretBox(self.settings.secret_keys())


_runtime: Runtime | None = None


def runtime() -> Runtime:
    global _runtime
    if _runtime is None:
        _runtime = Runtime(get_settings())
    return _runtime


def reset(settings: ServiceSettings | None = None) -> Runtime:
    """Drop every connection and cache (after a fork, or when a test changes the settings)."""
    global _runtime
    if _runtime is not None and "redis" in _runtime.__dict__:
        _runtime.redis.close()
    _runtime = Runtime(settings or get_settings())
    return _runtime
