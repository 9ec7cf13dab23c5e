"""What the HTTP app's handlers share: the settings, the process's resources, the trusted proxies."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from fastapi import Request

from config.keys import Keys
from config.settings import ServiceSettings
from worker.http.guards import client_address, parse_networks, trusted_peer
from worker.http.sessions import SessionStore
from worker.http.tokens import TokenStore
from worker.runtime import Runtime


@dataclass
class HttpContext:
    settings: ServiceSettings
    runtime: Runtime
    trusted: tuple[Any, ...] = field(default=())

    @property
    def redis(self) -> Any:
        return self.runtime.redis

    @property
    def keys(self) -> Keys:
        return self.runtime.keys

    @cached_property
    def tokens(self) -> TokenStore:
        return TokenStore(self.redis, self.keys)

    @cached_property
    def sessions(self) -> SessionStore:
        return SessionStore(self.redis, self.keys, self.settings.http_session_ttl)

    def client(self, request: Request) -> str:
        peer = request.client.host if request.client else None
        return client_address(peer, request.headers.get("x-forwarded-for"), self.trusted)

    def https(self, request: Request) -> bool:
        """Whether the browser talks TLS: directly, or to a trusted proxy that says so."""
        if request.url.scheme == "https":
            return True
        peer = request.client.host if request.client else None
        forwarded = request.headers.get("x-forwarded-proto", "")
        return trusted_peer(peer, self.trusted) and forwarded.strip().lower() == "https"


def make_context(settings: ServiceSettings, runtime: Runtime) -> HttpContext:
    return HttpContext(settings, runtime, parse_networks(settings.http_trusted_proxies))


def context_of(request: Request) -> HttpContext:
    context: HttpContext = request.app.state.context
    return context
