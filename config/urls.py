"""The rule for URLs the service calls because an admin typed them (the OAuth2 token endpoint; later
webhooks and admin API URLs): https to a public host, unless the operator allows private ones.

Why: whoever may edit a realm's settings must not make the worker (which sits inside the network) send
requests, and the client secret, to internal services: a cloud metadata endpoint on a link-local address,
an admin API on loopback, a database on a private address. A host name can resolve to such an address
too, and resolve differently later, so names are checked again on every use with the addresses the
connection will actually go to (`check_resolved`); at save only what can be known without DNS is checked.

All functions here are pure (no DNS, no I/O): they raise InvalidInput naming the field and the rule.
"""

from __future__ import annotations

import ipaddress
import re
import socket
import urllib.parse
from dataclasses import dataclass

from config.errors import InvalidInput

ALLOW_PRIVATE_VARIABLE = "MAILWORKER_ALLOW_PRIVATE_URLS"
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
# Names that mean this machine without asking DNS (RFC 6761).
_LOOPBACK_NAMES = ("localhost",)
# The old IPv4 spellings inet_aton accepts (127.1, 0x7f.0.0.1, 2130706433): an address, not a name.
_LEGACY_IPV4 = re.compile(r"^[0-9a-fA-FxX.]+\Z")


@dataclass(frozen=True)
class ParsedUrl:
    scheme: str
    host: str  # lower case, without brackets
    port: int  # the scheme's default when the URL names none
    address: IPAddress | None  # the host when it is an IP address (in any spelling)
    has_userinfo: bool


def parse_url(field: str, url: str) -> ParsedUrl:
    """The parts of an http(s) URL; InvalidInput when it is not one a client could call."""
    if any(ch.isspace() or not ch.isprintable() for ch in url):
        raise InvalidInput.one(field, "must not contain spaces or control characters")
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        raise InvalidInput.one(field, "has a broken [IPv6] host") from None
    try:
        port = parts.port
    except ValueError:
        raise InvalidInput.one(field, "has a port that is not a whole number from 1 to 65535") from None
    if parts.scheme not in ("https", "http"):
        raise InvalidInput.one(field, "must be an https:// URL")
    host = parts.hostname or ""
    if not host:
        raise InvalidInput.one(field, "has no host name (https://host/path)")
    if port == 0:
        raise InvalidInput.one(field, "has a port that is not a whole number from 1 to 65535")
    return ParsedUrl(
        scheme=parts.scheme,
        host=host,
        port=port or (443 if parts.scheme == "https" else 80),
        address=literal_address(host),
        has_userinfo="@" in parts.netloc,
    )


def literal_address(host: str) -> IPAddress | None:
    """`host` as an IP address when it is one (IPv4-mapped IPv6 unwrapped), else None (a name)."""
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        if not _LEGACY_IPV4.match(host):
            return None
        try:
            address = ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def address_kind(address: IPAddress) -> str | None:
    """Why an address is not a public one ("loopback", "private", ...), or None when it is public."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    for kind, test in (
        ("loopback", address.is_loopback),
        ("link-local", address.is_link_local),
        ("unspecified", address.is_unspecified),
        ("multicast", address.is_multicast),
        ("private", address.is_private),
        ("reserved", address.is_reserved),
    ):
        if test:
            return kind
    return None if address.is_global else "non-public"


def _host_kind(parsed: ParsedUrl) -> str | None:
    if parsed.address is not None:
        return address_kind(parsed.address)
    if parsed.host.rstrip(".") in _LOOPBACK_NAMES or parsed.host.rstrip(".").endswith(".localhost"):
        return "loopback"
    return None  # a name: its addresses are checked when it is used


def _refused(what: str, kind: str) -> str:
    return (
        f"{what} is a {kind} address: refused unless {ALLOW_PRIVATE_VARIABLE}=1 "
        "(URLs in settings must not reach services inside the network)"
    )


def check_public_url(field: str, url: str, *, allow_private: bool) -> ParsedUrl:
    """The whole rule at save: an https URL with a host and a valid port, no user info, not pointing at a
    loopback, private or link-local address unless `allow_private`; http only for a loopback host (a test
    endpoint on this machine), which needs `allow_private` like any loopback URL."""
    parsed = parse_url(field, url)
    if parsed.has_userinfo:
        raise InvalidInput.one(field, "must not contain a user name or password (user@host): they would "
                                      "end up in logs; the client secret has a field of its own")  # fmt: skip
    kind = _host_kind(parsed)
    if parsed.scheme == "http" and kind != "loopback":
        raise InvalidInput.one(
            field, f"must be an https:// URL (http only for an endpoint on this machine, with "
                   f"{ALLOW_PRIVATE_VARIABLE}=1)"
        )  # fmt: skip
    if kind is not None and not allow_private:
        raise InvalidInput.one(field, _refused(f"host {parsed.host}", kind))
    return parsed


def check_resolved(field: str, url: str, addresses: list[str], *, allow_private: bool) -> None:
    """On use: every address the URL's host resolved to must pass too (a name may point anywhere)."""
    parsed = check_public_url(field, url, allow_private=allow_private)
    for text in addresses:
        address = literal_address(text)
        if address is None:
            raise InvalidInput.one(field, f"host {parsed.host} resolves to {text!r}, which is not an address")
        kind = address_kind(address)
        if parsed.scheme == "http" and kind != "loopback":
            raise InvalidInput.one(field, f"is http:// but {parsed.host} resolves to {text}, not to this "
                                          "machine: use https")  # fmt: skip
        if kind is not None and not allow_private:
            raise InvalidInput.one(field, _refused(f"host {parsed.host} resolves to {text}, which", kind))
