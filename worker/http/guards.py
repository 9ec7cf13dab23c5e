"""What every request passes before a route sees it: the body size limit, the security headers, and who
the client is behind a proxy. Pure ASGI middleware (no buffering of a streamed bulk upload)."""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# No inline script or style, no other origin, no framing: the console serves its CSS and JS itself.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
SECURITY_HEADERS = [
    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"cache-control", b"no-store"),
]


BULK_UPLOAD = re.compile(r"^/v1/realms/[^/]+/bulk/?\Z")


class BodyTooLarge(Exception):
    pass


def body_limit_for(method: str, path: str, default: int, bulk: int) -> int:
    """A bulk upload (`POST /v1/realms/{realm}/bulk`) may be large, and is read as it streams in."""
    return bulk if method == "POST" and BULK_UPLOAD.match(path) else default


class GuardMiddleware:
    def __init__(self, app: ASGIApp, *, max_body: int, max_bulk_body: int) -> None:
        self.app = app
        self.max_body = max_body
        self.max_bulk_body = max_bulk_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = body_limit_for(scope["method"], scope["path"], self.max_body, self.max_bulk_body)
        length = _header(scope, b"content-length")
        if length is not None and (not length.isdigit() or int(length) > limit):
            await _too_large(send, limit)
            return
        seen = 0
        started = False

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise BodyTooLarge()
            return message

        async def with_headers(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                names = {name.lower() for name, _ in message.get("headers", [])}
                message["headers"] = [*message.get("headers", []),
                                      *((n, v) for n, v in SECURITY_HEADERS if n not in names)]  # fmt: skip
            await send(message)

        try:
            await self.app(scope, counted, with_headers)
        except BodyTooLarge:
            if not started:
                await _too_large(with_headers, limit)


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            return bytes(value).decode("latin-1").strip()
    return None


async def _too_large(send: Send, limit: int) -> None:
    body = json.dumps({"error": f"the body is larger than {limit} bytes"}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
               *SECURITY_HEADERS]  # fmt: skip
    await send({"type": "http.response.start", "status": 413, "headers": headers})
    await send({"type": "http.response.body", "body": body})


# ---- who the client is ---------------------------------------------------------------------------------


def parse_networks(text: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    """MAILWORKER_HTTP_TRUSTED_PROXIES: comma-separated addresses or networks (ValueError naming one)."""
    networks = []
    for item in (part.strip() for part in text.split(",")):
        if item:
            try:
                networks.append(ipaddress.ip_network(item, strict=False))
            except ValueError:
                raise ValueError(f"{item!r} is not an IP address or network") from None
    return tuple(networks)


def client_address(peer: str | None, forwarded_for: str | None, trusted: Sequence[Any]) -> str:
    """The client's address: the peer's, or, when the peer is a trusted proxy, the last address in
    X-Forwarded-For that is not itself a trusted proxy (what a client cannot forge past the proxies)."""
    address = peer or "unknown"
    if not forwarded_for or not _trusted(address, trusted):
        return address
    for hop in reversed([h.strip() for h in forwarded_for.split(",") if h.strip()]):
        if not _trusted(hop, trusted):
            return hop if _is_ip(hop) else address
    return address


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def trusted_peer(address: str | None, trusted: Sequence[Any]) -> bool:
    """Whether `address` is one of the trusted proxies (MAILWORKER_HTTP_TRUSTED_PROXIES)."""
    return address is not None and _trusted(address, trusted)


def _trusted(address: str, trusted: Sequence[Any]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in trusted)
