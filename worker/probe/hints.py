"""Advice in plain words for a failed Test Connection: a pure table from (stage, kind, settings) to a hint.

The table is first match wins; docs/test-connection.md lists it (a test keeps the page and the table in step).
The kinds are the SMTP path's own (worker/smtp/failures.py Kind): the probe and delivery name a failure alike.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from config.smtp import SmtpSettings
from worker.smtp.failures import Kind


@dataclass(frozen=True)
class Failure:
    """What `hint_for` looks at: the failed stage, the kind, the text (lower-cased on use), the code."""

    stage: str
    kind: str
    text: str = ""
    code: int | None = None


_WRONG_PROTOCOL_MARKERS = (
    "wrong version number",
    "wrong_version",
    "unknown protocol",
    "record layer",
    "record_layer",
    "packet length too long",
    "http request",
    "unexpected eof",
)
_RELAY_MARKERS = ("relay", "5.7.1", "not permitted", "not allowed", "denied")


def _text_has(failure: Failure, markers: tuple[str, ...]) -> bool:
    text = failure.text.lower()
    return any(marker in text for marker in markers)


def _hint_ssl_on_plain_port(f: Failure, s: SmtpSettings) -> str:
    how = "the handshake got no answer" if f.kind == Kind.TIMEOUT else "the server did not answer with TLS"
    return (
        f"SSL (implicit TLS) is on, but {how}: port {s.port} probably starts in plaintext "
        "(StartTLS or plain, usually 587 or 25). Turn ssl off and starttls on, or use the server's "
        "implicit-TLS port (usually 465)."
    )


def _hint_no_greeting(f: Failure, s: SmtpSettings) -> str:
    if s.port == 465:
        return (
            f"Connected, but {s.host}:465 sent no SMTP greeting: port 465 expects implicit TLS. "
            "Turn ssl on (and starttls off), or use port 587 with StartTLS."
        )
    return (
        f"Connected, but {s.host}:{s.port} sent no SMTP greeting: the port probably expects implicit TLS "
        "(usually 465): turn ssl on and starttls off. If it does not, the server or a proxy/firewall in "
        "between is holding the connection."
    )


def _hint_cert_hostname(f: Failure, s: SmtpSettings) -> str:
    return (
        f"The server's certificate is valid, but not for {s.host!r}: set host to a name the certificate "
        "lists (see the tls detail), or install a certificate for this name on the server."
    )


def _hint_auth_not_offered(f: Failure, s: SmtpSettings) -> str:
    if not (s.ssl or s.starttls):
        return (
            "Auth is on but the server offers no AUTH on this unencrypted connection: most servers allow "
            "login only over TLS. Turn on StartTLS (usually port 587) or SSL (usually 465)."
        )
    return (
        "Auth is on but the server offers no AUTH: turn auth off if the server accepts mail from this worker "
        "without login (an internal relay), or enable authentication on the server."
    )


# (why, test, hint): first match wins.
HINTS: tuple[
    tuple[str, Callable[[Failure, SmtpSettings], bool], Callable[[Failure, SmtpSettings], str]], ...
] = (
    (
        "the overall limit ran out",
        lambda f, s: f.kind == Kind.DEADLINE,
        lambda f, s: (
            "The test ran out of time as a whole: the server answers very slowly. Check the network "
            "to the server, or raise timeout / connect_timeout."
        ),
    ),
    (
        "DNS failure",
        lambda f, s: f.kind == Kind.DNS,
        lambda f, s: (
            f"The host name {s.host!r} does not resolve (DNS): check its spelling, or use the server's "
            "IP address, or fix DNS on the worker hosts."
        ),
    ),
    (
        "connection refused",
        lambda f, s: f.kind == Kind.REFUSED,
        lambda f, s: (
            f"Nothing accepts connections on {s.host}:{s.port} (connection refused): the port is "
            "wrong (usually 587 with StartTLS, 465 with SSL, 25 plain) or the server is down."
        ),
    ),
    (
        "connect timed out",
        lambda f, s: f.stage in ("resolve", "connect") and f.kind == Kind.TIMEOUT,
        lambda f, s: (
            f"No answer from {s.host}:{s.port} within {s.connect_timeout:g}s: a firewall drops the "
            "connection (many networks block outgoing port 25) or the host is wrong."
        ),
    ),
    (
        "network unreachable",
        lambda f, s: f.stage in ("resolve", "connect") and f.kind == Kind.NETWORK,
        lambda f, s: f"The worker cannot reach {s.host}: check the host and the worker's network route.",
    ),
    (
        "SSL on a port that speaks plaintext first",
        lambda f, s: (
            f.stage == "tls"
            and s.ssl
            and (
                (f.kind == Kind.TLS_HANDSHAKE and _text_has(f, _WRONG_PROTOCOL_MARKERS))
                or f.kind in (Kind.TIMEOUT, Kind.CLOSED)
            )
        ),
        _hint_ssl_on_plain_port,
    ),
    (
        "plaintext/StartTLS on an implicit-TLS port: no greeting",
        lambda f, s: f.kind == Kind.NO_GREETING and not s.ssl,
        _hint_no_greeting,
    ),
    (
        "StartTLS on but not offered",
        lambda f, s: f.kind == Kind.NO_STARTTLS,
        lambda f, s: (
            f"StartTLS is on but {s.host}:{s.port} does not offer STARTTLS: use the port that does "
            "(usually 587), or ssl on port 465. Turning StartTLS off would send the password in clear."
        ),
    ),
    (
        "certificate for another host name",
        lambda f, s: f.kind == Kind.CERT_HOSTNAME,
        _hint_cert_hostname,
    ),
    (
        "certificate expired",
        lambda f, s: f.kind == Kind.CERT_EXPIRED,
        lambda f, s: (
            "The server's certificate has expired (or is not valid yet): renew it on the server, "
            "and check the worker's clock."
        ),
    ),
    (
        "certificate not trusted",
        lambda f, s: f.kind == Kind.CERT_UNTRUSTED,
        lambda f, s: (
            "The server's certificate is not trusted (self-signed or issued by an unknown CA): set "
            "MAILWORKER_SMTP_CA_FILE on the workers to the PEM file of the CA that signed it, or install a "
            "certificate from a public CA on the server. verify_tls=false is a last resort: it encrypts but "
            "does not check who answers."
        ),
    ),
    (
        "STARTTLS refused",
        lambda f, s: f.stage == "tls" and f.kind == Kind.REPLY,
        lambda f, s: (
            f"The server offers STARTTLS but refused it ({f.code}): its TLS setup is broken; check "
            "the server's certificate and TLS configuration."
        ),
    ),
    (
        "TLS handshake failed",
        lambda f, s: f.kind == Kind.TLS_HANDSHAKE,
        lambda f, s: (
            "The TLS handshake failed: the server may only offer old TLS versions or ciphers this "
            "worker refuses; update the server's TLS configuration."
        ),
    ),
    ("AUTH not offered", lambda f, s: f.kind == Kind.NO_AUTH, _hint_auth_not_offered),
    (
        "no AUTH mechanism in common",
        lambda f, s: f.kind == Kind.AUTH_MECHANISM,
        lambda f, s: (
            "The server offers AUTH, but not a mechanism for this auth_type (password: PLAIN, LOGIN, "
            "CRAM-MD5; xoauth2: XOAUTH2): change auth_type, or enable the mechanism on the server."
        ),
    ),
    (
        "no XOAUTH2 token",
        lambda f, s: f.kind == Kind.TOKEN,
        lambda f, s: (
            "No XOAUTH2 access token could be obtained: check oauth_token_url, oauth_client_id, "
            "oauth_client_secret and oauth_scope."
        ),
    ),
    (
        "535 wrong credentials",
        lambda f, s: f.stage == "auth" and f.code == 535,
        lambda f, s: (
            "The server rejected the user name or password (535): check both. Providers with 2-step "
            "verification need an app password, or auth_type xoauth2."
        ),
    ),
    (
        "534 stronger login required",
        lambda f, s: f.stage == "auth" and f.code == 534,
        lambda f, s: (
            "The server refuses this way of logging in (534): the provider wants an app password "
            "or OAuth (auth_type xoauth2)."
        ),
    ),
    (
        "530 encryption required before login",
        lambda f, s: f.stage == "auth" and f.code == 530,
        lambda f, s: (
            "The server wants an encrypted connection before login (530): turn on StartTLS "
            "(usually port 587) or SSL (465)."
        ),
    ),
    (
        "send: authentication required",
        lambda f, s: f.stage == "send" and (f.code == 530 or _text_has(f, ("authentication required",))),
        lambda f, s: "The server accepts mail only after login: turn auth on and set username and password.",
    ),
    (
        "send: sender refused",
        lambda f, s: (
            f.stage == "send" and f.code in (550, 553, 554) and _text_has(f, ("sender", "mail from"))
        ),
        lambda f, s: (
            f"The server refused the sender {s.envelope_sender}: use a from / envelope_from address "
            "the account is allowed to send as."
        ),
    ),
    (
        "send: relaying denied",
        lambda f, s: f.stage == "send" and f.code in (550, 551, 553, 554) and _text_has(f, _RELAY_MARKERS),
        lambda f, s: (
            "The server refused to relay this message: turn auth on (or allow the worker's IP on the "
            "server), and use a from address the account may send as."
        ),
    ),
    (
        "send: the address needs SMTPUTF8",
        lambda f, s: f.kind == Kind.SMTPUTF8,
        lambda f, s: (
            "The test message needs SMTPUTF8 (a non-ASCII address) and the server does not offer it: send "
            "to an ASCII address, or use a server that offers SMTPUTF8."
        ),
    ),
    (
        "send: the test message could not be built",
        lambda f, s: f.kind == Kind.MESSAGE,
        lambda f, s: (
            "The test message could not be built: check the from / reply_to addresses and the "
            "address to send to."
        ),
    ),
    (
        "the server refuses this client at the greeting or EHLO",
        lambda f, s: f.stage == "ehlo" and f.kind == Kind.REPLY and (f.code or 0) >= 500,
        lambda f, s: (
            f"The server refuses to talk to this worker ({f.code}): it may block the worker's IP "
            "address or want a proper host name in EHLO; its logs say why."
        ),
    ),
    (
        "421 service not available",
        lambda f, s: f.code == 421,
        lambda f, s: (
            "The server is not taking connections right now (421): try again later; if it lasts, "
            "check the server, or whether it blocks this worker's IP."
        ),
    ),
    (
        "the server stopped answering",
        lambda f, s: f.kind == Kind.TIMEOUT,
        lambda f, s: (
            f"The server stopped answering for {s.timeout:g}s during {f.stage}: check the server; "
            "raise timeout if it is only slow."
        ),
    ),
    (
        "the server closed the connection",
        lambda f, s: f.kind in (Kind.CLOSED, Kind.NETWORK),
        lambda f, s: (
            f"The server dropped the connection during {f.stage}: its logs say why (it may refuse "
            "this worker's IP address or TLS version)."
        ),
    ),
)


def hint_for(
    stage: str, kind: str, settings: SmtpSettings, *, text: str = "", code: int | None = None
) -> str | None:
    """Advice in plain words for a failed stage, or None when there is nothing better than the error."""
    failure = Failure(stage, kind, text, code)
    for _why, test, hint in HINTS:
        if test(failure, settings):
            return hint(failure, settings)
    return None
