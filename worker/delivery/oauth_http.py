"""HTTP requests to URLs an admin configured (an OAuth2 token endpoint, the IAM's admin API, a delivery
webhook's receiver): deadlines,
checked addresses only, no redirects. The one HTTP client of the workers.

- Deadlines: connect (and TLS handshake) within `connect_timeout`, each read within `timeout`, the whole
  body within both (worker/delivery/oauth.py explains the budget).
- Addresses: `checked_destination` resolves and checks the host (config/urls.py) and returns what it
  checked (`Pinned`); the connection goes to exactly those addresses, while TLS still verifies the host
  name.
- These endpoints answer, they do not redirect: a 3xx is reported, a form or a bearer token is never
  sent on to another place.
- What the endpoint says comes back to people only through `excerpt`.
"""

from __future__ import annotations

import http.client
import socket
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from config.crypto import MASK
from config.errors import InvalidInput
from config.urls import check_public_url, check_resolved

MAX_BODY_BYTES = 64 * 1024
# How much of what the endpoint says (error_description, a non-JSON body) goes into an error message:
# enough to recognise the problem, too little to carry a page of HTML or a log flood into our logs.
MAX_EXCERPT = 200


# (host, port) -> the checked addresses to connect to, as getaddrinfo gave them: (family, sockaddr).
Pinned = dict[tuple[str, int], list[tuple[int, Any]]]


def _connect_pinned(pinned: Pinned) -> Callable[..., socket.socket]:
    """A socket.create_connection that goes only to the checked addresses of a pinned host."""

    def create_connection(address: tuple[str, int], timeout: Any = None, source: Any = None) -> socket.socket:
        targets = pinned.get((address[0].lower(), address[1]))
        if targets is None:  # not the token host: the proxy, which the operator configured
            return socket.create_connection(address, timeout, source)
        last: OSError = OSError(f"no address to connect to for {address[0]}")
        for family, sockaddr in targets:
            sock = socket.socket(family, socket.SOCK_STREAM)
            try:
                sock.settimeout(timeout)
                sock.connect(sockaddr)
                return sock
            except OSError as error:
                sock.close()
                last = error
        raise last

    return create_connection


class _Timed:
    """Connects to a pinned address under the connect timeout, then reads under `read_timeout`."""

    sock: Any

    def __init__(
        self,
        host: str,
        /,
        *args: Any,
        read_timeout: float = 10.0,
        pinned: Pinned | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(host, *args, **kwargs)  # type: ignore[call-arg]
        self._read_timeout = read_timeout
        self._create_connection = _connect_pinned(pinned or {})

    def connect(self) -> None:
        # TCP (and for HTTPS the TLS handshake, to the host name, not the address) under the connect timeout
        super().connect()  # type: ignore[misc]
        self.sock.settimeout(self._read_timeout)


class _TimedHTTPConnection(_Timed, http.client.HTTPConnection):
    pass


class _TimedHTTPSConnection(_Timed, http.client.HTTPSConnection):
    pass


class _HTTPHandler(urllib.request.HTTPHandler):
    def __init__(self, read_timeout: float, pinned: Pinned) -> None:
        super().__init__()
        self.read_timeout = read_timeout
        self.pinned = pinned

    def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(_TimedHTTPConnection, req, read_timeout=self.read_timeout, pinned=self.pinned)


class _HTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, read_timeout: float, pinned: Pinned) -> None:
        super().__init__(context=ssl.create_default_context())
        self.read_timeout = read_timeout
        self.pinned = pinned

    def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(
            _TimedHTTPSConnection,
            req,
            context=self._context,  # type: ignore[attr-defined]
            read_timeout=self.read_timeout,
            pinned=self.pinned,
        )


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A token endpoint or an admin API answers, it does not redirect: a 3xx is reported, nothing is re-sent."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def _read_body(response: Any, deadline: float) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        if time.monotonic() > deadline:
            raise TimeoutError("the response took too long")
        chunk = response.read1(8192)
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise ValueError(f"the response is larger than {MAX_BODY_BYTES} bytes")
        chunks.append(chunk)


def one_line(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def excerpt(text: str, secrets: Sequence[str] = (), limit: int = MAX_EXCERPT) -> str:
    """What a remote party said, fit for one log line: secrets masked (before anything is cut, so no
    half of one survives), control and format characters (ANSI escapes, bidi overrides) gone, white
    space collapsed, at most `limit` characters."""
    for secret in secrets:
        if len(secret) >= 4:
            for form in {secret, urllib.parse.quote_plus(secret), urllib.parse.quote(secret, safe="")}:
                text = text.replace(form, MASK)
    text = "".join(ch if ch.isprintable() else " " for ch in text)
    return one_line(text, limit)


def proxy_for(url: str, host: str) -> str | None:
    """The proxy urllib will use for `url` (the environment's HTTPS_PROXY / NO_PROXY), if any."""
    scheme = urllib.parse.urlsplit(url).scheme
    proxy = urllib.request.getproxies().get(scheme)
    return proxy if proxy and not urllib.request.proxy_bypass(host) else None


def network_reason(error: BaseException) -> BaseException:
    return (
        error.reason
        if isinstance(error, urllib.error.URLError) and isinstance(error.reason, BaseException)
        else error
    )


def checked_destination(field: str, url: str, *, allow_private: bool) -> Pinned:
    """Check `url` (config/urls.py) and every address its host resolves to now; the addresses to connect
    to (nothing pinned when a proxy connects for us: the proxy resolves the name, and the local answer,
    when there is one, is checked). Raises InvalidInput when refused, socket.gaierror when the name does
    not resolve."""
    parsed = check_public_url(field, url, allow_private=allow_private)
    proxy = proxy_for(url, parsed.host)
    try:
        infos = socket.getaddrinfo(parsed.host, parsed.port, type=socket.SOCK_STREAM)
    except socket.gaierror:
        if proxy is not None:  # the proxy may know names this machine's DNS does not
            return {}
        raise
    except UnicodeError:
        raise InvalidInput.one(field, f"{parsed.host} is not a valid host name") from None
    check_resolved(field, url, [str(info[4][0]) for info in infos], allow_private=allow_private)
    if proxy is not None:
        return {}
    return {(parsed.host.lower(), parsed.port): [(info[0], info[4]) for info in infos]}


def post_form(
    url: str, form: Mapping[str, str], *, pinned: Pinned, connect_timeout: float, timeout: float
) -> tuple[int, bytes]:
    """(status, body) of the POST; an HTTP error status is an answer too. Raises OSError,
    http.client.HTTPException or ValueError when there is no answer (see `network_reason`)."""
    headers = {"Content-Type": "application/x-www-form-urlencoded", "Accept": "application/json"}
    return send(urllib.request.Request(url, data=urllib.parse.urlencode(form).encode(), headers=headers,
                                       method="POST"), pinned, connect_timeout, timeout)  # fmt: skip


def post_bytes(
    url: str,
    body: bytes,
    headers: Mapping[str, str],
    *,
    pinned: Pinned,
    connect_timeout: float,
    timeout: float,
) -> tuple[int, bytes]:
    """(status, body) of a POST of `body` with `headers` (a delivery webhook); fails as `post_form` does."""
    request = urllib.request.Request(url, data=body, headers=dict(headers), method="POST")
    return send(request, pinned, connect_timeout, timeout)


def get_json(
    url: str, headers: Mapping[str, str], *, pinned: Pinned, connect_timeout: float, timeout: float
) -> tuple[int, bytes]:
    """(status, body) of a GET asking for JSON; fails as `post_form` does."""
    request = urllib.request.Request(url, headers={**headers, "Accept": "application/json"}, method="GET")
    return send(request, pinned, connect_timeout, timeout)


def send(
    request: urllib.request.Request, pinned: Pinned, connect_timeout: float, timeout: float
) -> tuple[int, bytes]:
    opener = urllib.request.build_opener(
        _HTTPHandler(timeout, pinned), _HTTPSHandler(timeout, pinned), _NoRedirect()
    )
    deadline = time.monotonic() + connect_timeout + timeout
    try:
        with opener.open(request, timeout=connect_timeout) as response:
            return response.status, _read_body(response, deadline)
    except urllib.error.HTTPError as error:
        try:
            return error.code, _read_body(error, deadline)
        except (OSError, ValueError, http.client.HTTPException):
            return error.code, b""
        finally:
            error.close()
