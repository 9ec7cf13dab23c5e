"""The "Test Connection" probe: talk to a realm's SMTP server stage by stage and say what is wrong.

Stages, reported in the order they happen (a stage that does not apply is left out; the probe stops at
the first failing stage):

    plain      resolve, connect, ehlo, [auth], [send]
    starttls   resolve, connect, ehlo, tls, [auth], [send]
    ssl        resolve, connect, tls, ehlo, [auth], [send]

- `resolve`: getaddrinfo of the host (bounded by connect_timeout; getaddrinfo itself has no time-out).
- `connect`: TCP connect (connect_timeout).
- `ehlo`: the server's greeting (the 220 banner) and EHLO: the advertised extensions. With StartTLS this is
  the plaintext EHLO; the EHLO sent again after the handshake is part of `tls`, and its extensions (those
  AUTH and the message go by) are the status's `extensions`.
- `tls`: the implicit TLS handshake (ssl) or STARTTLS + handshake + EHLO again (starttls): protocol
  version, cipher, certificate subject, issuer, names and expiry.
- `auth`: only with auth on. Password (CRAM-MD5, PLAIN, LOGIN, as smtplib tries them) or XOAUTH2 with a
  token from `oauth_token_provider`; without a provider the XOAUTH2 login is reported as not tested.
- `send`: only with a message to send: MAIL, RCPT, DATA through the same code the worker sends with.

Every step has a deadline: connect_timeout for resolve, connect and TLS handshakes, timeout per command,
and an overall limit (`default_deadline`) after which a watchdog shuts the socket, so a server that
accepts and never answers cannot hold a worker.

`hint_for` is a pure table from (failed stage, failure kind, settings) to advice in plain words; the
probe never puts the password or the OAuth token into its status.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import re
import smtplib
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from config.errors import MailWorkerError
from config.smtp import SmtpSettings
from worker.message import OutgoingMessage
from worker.smtp import password_auth

# ---- failure kinds (what went wrong, independent of the stage) ------------------------------------------

KIND_DNS = "dns"  # the host name does not resolve
KIND_REFUSED = "refused"  # nothing listens on the port
KIND_TIMEOUT = "timeout"  # no answer within connect_timeout / timeout
KIND_DEADLINE = "deadline"  # the overall limit of the probe ran out
KIND_NETWORK = "network"  # another network error (unreachable, reset)
KIND_CLOSED = "closed"  # the server closed the connection
KIND_NO_GREETING = "no-greeting"  # connected, but no 220 greeting (timeout, close or garbage)
KIND_TLS_HANDSHAKE = "tls-handshake"  # the handshake failed (wrong version number: not TLS on this port)
KIND_CERT_UNTRUSTED = "cert-untrusted"  # self-signed or unknown CA
KIND_CERT_HOSTNAME = "cert-hostname"  # valid certificate, for another host name
KIND_CERT_EXPIRED = "cert-expired"
KIND_NO_STARTTLS = "starttls-not-offered"
KIND_NO_AUTH = "auth-not-offered"
KIND_AUTH_MECHANISM = "auth-mechanism"  # AUTH offered, but no mechanism we speak
KIND_TOKEN = "token"  # XOAUTH2: no access token could be obtained
KIND_REPLY = "reply"  # the server answered with an error code
KIND_MESSAGE = "message"  # the test message could not be built

STAGE_ORDER = ("resolve", "connect", "ehlo", "tls", "auth", "send")
DEFAULT_DEADLINE_CAP_S = 60.0
PASSWORD_MECHANISMS = ("CRAM-MD5", "PLAIN", "LOGIN")  # smtplib's order of preference
EXTENSIONS_SHOWN = ("size", "8bitmime", "smtputf8", "auth", "starttls", "pipelining")

OAuthTokenProvider = Callable[[SmtpSettings], str]
MessageSource = OutgoingMessage | Callable[[], OutgoingMessage]


def mode_of(settings: SmtpSettings) -> str:
    return "ssl" if settings.ssl else "starttls" if settings.starttls else "plain"


def default_deadline(settings: SmtpSettings, cap: float = DEFAULT_DEADLINE_CAP_S) -> float:
    """The overall limit: one connect (with its handshake) and five commands, at most `cap` seconds."""
    return min(cap, settings.connect_timeout + 5 * settings.timeout)


# ---- the status -----------------------------------------------------------------------------------------


@dataclass
class Stage:
    name: str
    ok: bool | None  # None: not tested (e.g. XOAUTH2 without a token provider)
    ms: float
    detail: str
    info: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "ok": self.ok,
            "ms": round(self.ms, 1),
            "detail": self.detail,
            "info": self.info,
        }


@dataclass
class ProbeStatus:
    ok: bool
    host: str
    port: int
    mode: str
    stages: list[Stage]
    failed_stage: str | None = None
    kind: str | None = None  # the failure kind (KIND_*), None when ok
    error: str | None = None  # the failed stage's detail
    smtp_code: int | None = None
    smtp_reply: str | None = None
    hint: str | None = None
    extensions: dict[str, str] = field(default_factory=dict)
    elapsed_ms: float = 0.0
    deadline_s: float = 0.0
    verify_tls: bool = True
    realm: str | None = None
    source: str | None = None  # "draft" | "saved", filled in by the task
    version: int | None = None
    send_to: str | None = None
    message_id: str | None = None

    @property
    def not_tested(self) -> list[str]:
        return [stage.name for stage in self.stages if stage.ok is None]

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "realm": self.realm,
            "source": self.source,
            "version": self.version,
            "host": self.host,
            "port": self.port,
            "mode": self.mode,
            "verify_tls": self.verify_tls,
            "failed_stage": self.failed_stage,
            "kind": self.kind,
            "error": self.error,
            "smtp_code": self.smtp_code,
            "smtp_reply": self.smtp_reply,
            "hint": self.hint,
            "stages": [stage.to_dict() for stage in self.stages],
            "not_tested": self.not_tested,
            "extensions": dict(self.extensions),
            "send_to": self.send_to,
            "message_id": self.message_id,
            "elapsed_ms": round(self.elapsed_ms, 1),
            "deadline_s": self.deadline_s,
        }


class StageFailed(Exception):
    """A stage failed: `kind` is one of KIND_*, `code`/`reply` the server's answer when it gave one."""

    def __init__(self, kind: str, text: str, *, code: int | None = None, reply: str | None = None) -> None:
        super().__init__(text)
        self.kind = kind
        self.text = text
        self.code = code
        self.reply = reply
        self.info: dict[str, Any] = {}


# ---- hints: a pure table -------------------------------------------------------------------------------


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
    how = "the handshake got no answer" if f.kind == KIND_TIMEOUT else "the server did not answer with TLS"
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


# (why, test, hint): first match wins. the README (Test Connection, Hints) mirrors this table.
HINTS: tuple[
    tuple[str, Callable[[Failure, SmtpSettings], bool], Callable[[Failure, SmtpSettings], str]], ...
] = (
    (
        "the overall limit ran out",
        lambda f, s: f.kind == KIND_DEADLINE,
        lambda f, s: (
            "The test ran out of time as a whole: the server answers very slowly. Check the network "
            "to the server, or raise timeout / connect_timeout."
        ),
    ),
    (
        "DNS failure",
        lambda f, s: f.kind == KIND_DNS,
        lambda f, s: (
            f"The host name {s.host!r} does not resolve (DNS): check its spelling, or use the server's "
            "IP address, or fix DNS on the worker hosts."
        ),
    ),
    (
        "connection refused",
        lambda f, s: f.kind == KIND_REFUSED,
        lambda f, s: (
            f"Nothing accepts connections on {s.host}:{s.port} (connection refused): the port is "
            "wrong (usually 587 with StartTLS, 465 with SSL, 25 plain) or the server is down."
        ),
    ),
    (
        "connect timed out",
        lambda f, s: f.stage in ("resolve", "connect") and f.kind == KIND_TIMEOUT,
        lambda f, s: (
            f"No answer from {s.host}:{s.port} within {s.connect_timeout:g}s: a firewall drops the "
            "connection (many networks block outgoing port 25) or the host is wrong."
        ),
    ),
    (
        "network unreachable",
        lambda f, s: f.stage in ("resolve", "connect") and f.kind == KIND_NETWORK,
        lambda f, s: f"The worker cannot reach {s.host}: check the host and the worker's network route.",
    ),
    (
        "SSL on a port that speaks plaintext first",
        lambda f, s: (
            f.stage == "tls"
            and s.ssl
            and (
                (f.kind == KIND_TLS_HANDSHAKE and _text_has(f, _WRONG_PROTOCOL_MARKERS))
                or f.kind in (KIND_TIMEOUT, KIND_CLOSED)
            )
        ),
        _hint_ssl_on_plain_port,
    ),
    (
        "plaintext/StartTLS on an implicit-TLS port: no greeting",
        lambda f, s: f.kind == KIND_NO_GREETING and not s.ssl,
        _hint_no_greeting,
    ),
    (
        "StartTLS on but not offered",
        lambda f, s: f.kind == KIND_NO_STARTTLS,
        lambda f, s: (
            f"StartTLS is on but {s.host}:{s.port} does not offer STARTTLS: use the port that does "
            "(usually 587), or ssl on port 465. Turning StartTLS off would send the password in clear."
        ),
    ),
    (
        "certificate for another host name",
        lambda f, s: f.kind == KIND_CERT_HOSTNAME,
        _hint_cert_hostname,
    ),
    (
        "certificate expired",
        lambda f, s: f.kind == KIND_CERT_EXPIRED,
        lambda f, s: (
            "The server's certificate has expired (or is not valid yet): renew it on the server, "
            "and check the worker's clock."
        ),
    ),
    (
        "certificate not trusted",
        lambda f, s: f.kind == KIND_CERT_UNTRUSTED,
        lambda f, s: (
            "The server's certificate is not trusted (self-signed or issued by an unknown CA): set "
            "MAILWORKER_SMTP_CA_FILE on the workers to the PEM file of the CA that signed it, or install a "
            "certificate from a public CA on the server. verify_tls=false is a last resort: it encrypts but "
            "does not check who answers."
        ),
    ),
    (
        "STARTTLS refused",
        lambda f, s: f.stage == "tls" and f.kind == KIND_REPLY,
        lambda f, s: (
            f"The server offers STARTTLS but refused it ({f.code}): its TLS setup is broken; check "
            "the server's certificate and TLS configuration."
        ),
    ),
    (
        "TLS handshake failed",
        lambda f, s: f.kind == KIND_TLS_HANDSHAKE,
        lambda f, s: (
            "The TLS handshake failed: the server may only offer old TLS versions or ciphers this "
            "worker refuses; update the server's TLS configuration."
        ),
    ),
    ("AUTH not offered", lambda f, s: f.kind == KIND_NO_AUTH, _hint_auth_not_offered),
    (
        "no AUTH mechanism in common",
        lambda f, s: f.kind == KIND_AUTH_MECHANISM,
        lambda f, s: (
            "The server offers AUTH, but not a mechanism for this auth_type (password: PLAIN, LOGIN, "
            "CRAM-MD5; xoauth2: XOAUTH2): change auth_type, or enable the mechanism on the server."
        ),
    ),
    (
        "no XOAUTH2 token",
        lambda f, s: f.kind == KIND_TOKEN,
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
        "send: the test message could not be built",
        lambda f, s: f.kind == KIND_MESSAGE,
        lambda f, s: (
            "The test message could not be built: check the from / reply_to addresses and the "
            "address to send to."
        ),
    ),
    (
        "the server refuses this client at the greeting or EHLO",
        lambda f, s: f.stage == "ehlo" and f.kind == KIND_REPLY and (f.code or 0) >= 500,
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
        lambda f, s: f.kind == KIND_TIMEOUT,
        lambda f, s: (
            f"The server stopped answering for {s.timeout:g}s during {f.stage}: check the server; "
            "raise timeout if it is only slow."
        ),
    ),
    (
        "the server closed the connection",
        lambda f, s: f.kind in (KIND_CLOSED, KIND_NETWORK),
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


# ---- deadline -------------------------------------------------------------------------------------------


class Deadline:
    """The probe's overall limit: each step waits at most min(its own time-out, what is left).

    A watchdog also shuts down the watched socket at the limit, so even a step that ignores the time-out
    (a slow trickle of bytes) cannot run past it.
    """

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.started = time.monotonic()
        self.expired = False
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True
        self._timer.start()

    def remaining(self) -> float:
        return self.seconds - (time.monotonic() - self.started)

    def limit(self, step_timeout: float) -> float:
        """The time-out for the next step; StageFailed(deadline) when nothing is left."""
        left = self.remaining()
        if left <= 0.001:
            raise StageFailed(KIND_DEADLINE, f"the overall limit of {self.seconds:g}s ran out")
        return min(step_timeout, left)

    def watch(self, sock: socket.socket | None) -> None:
        with self._lock:
            self._sock = sock
            if self.expired and sock is not None:
                _shutdown(sock)

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            if self._sock is not None:
                _shutdown(self._sock)

    def cancel(self) -> None:
        self._timer.cancel()


def _shutdown(sock: socket.socket) -> None:
    # socket.socket.shutdown, also for an SSLSocket: the raw shutdown(2) wakes a blocked reader at once.
    with contextlib.suppress(OSError):
        socket.socket.shutdown(sock, socket.SHUT_RDWR)


# ---- the probe ------------------------------------------------------------------------------------------


class _Probe:
    def __init__(
        self,
        settings: SmtpSettings,
        deadline: Deadline,
        ca_file: str | None,
        oauth_token_provider: OAuthTokenProvider | None,
    ) -> None:
        self.settings = settings
        self.deadline = deadline
        self.ca_file = ca_file
        self.oauth_token_provider = oauth_token_provider
        self.where = f"{settings.host}:{settings.port}"
        self.stages: list[Stage] = []
        self.addresses: list[tuple[Any, ...]] = []
        self.sock: socket.socket | None = None
        self.smtp: smtplib.SMTP | None = None
        self.last_reply: tuple[int, str] | None = None
        self.secrets: list[str] = []
        self.message_id: str | None = None

    # -- helpers --

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[Stage]:
        """Times one stage; the body fills in detail/info; StageFailed or an exception ends it as failed."""
        record = Stage(name, True, 0.0, "")
        started = time.monotonic()
        try:
            yield record
        except StageFailed as failure:
            record.ok = False
            record.detail = failure.text
            record.info.update(failure.info)
            raise
        except Exception as error:
            converted = self.convert(error, name)
            record.ok = False
            record.detail = converted.text
            record.info.update(converted.info)
            raise converted from None
        finally:
            record.ms = (time.monotonic() - started) * 1000
            self.stages.append(record)

    def command_timeout(self) -> None:
        assert self.sock is not None
        self.sock.settimeout(self.deadline.limit(self.settings.timeout))

    def convert(self, error: BaseException, stage: str) -> StageFailed:
        """One StageFailed for a smtplib / socket / ssl exception, in words a person can act on."""
        if self.deadline.expired:
            return StageFailed(
                KIND_DEADLINE, f"the overall limit of {self.deadline.seconds:g}s ran out ({stage})"
            )
        if isinstance(error, smtplib.SMTPServerDisconnected) and isinstance(error.__context__, OSError):
            error = (
                error.__context__
            )  # smtplib reports a read that timed out as "Connection unexpectedly closed"
        if isinstance(error, smtplib.SMTPResponseException):
            reply = _reply_text(error.smtp_error)
            return StageFailed(KIND_REPLY, f"{error.smtp_code} {reply}", code=error.smtp_code, reply=reply)
        if isinstance(error, ssl.SSLCertVerificationError):
            return self.certificate_failure(error)
        if isinstance(error, TimeoutError):
            waited = (
                self.settings.connect_timeout
                if stage in ("resolve", "connect", "tls")
                else self.settings.timeout
            )
            return StageFailed(KIND_TIMEOUT, f"no answer from {self.where} within {waited:g}s ({stage})")
        if isinstance(error, ssl.SSLError):
            detail = re.sub(r"\s*\(_ssl\.c:\d+\)$", "", str(error)) or error.reason or type(error).__name__
            return StageFailed(KIND_TLS_HANDSHAKE, f"TLS handshake with {self.where} failed: {detail}")
        if isinstance(error, ConnectionRefusedError):
            return StageFailed(KIND_REFUSED, f"connection refused by {self.where}")
        if isinstance(
            error, smtplib.SMTPServerDisconnected | ConnectionResetError | BrokenPipeError | EOFError
        ):
            return StageFailed(KIND_CLOSED, f"{self.where} closed the connection ({stage})")
        if isinstance(error, socket.gaierror):
            return StageFailed(KIND_DNS, f"cannot resolve {self.settings.host}: {error.strerror}")
        if isinstance(error, OSError):
            detail = error.strerror or str(error) or type(error).__name__
            return StageFailed(KIND_NETWORK, f"network error with {self.where} ({stage}): {detail}")
        if isinstance(error, MailWorkerError):
            return StageFailed(KIND_MESSAGE if stage == "send" else KIND_NETWORK, str(error))
        return StageFailed(KIND_NETWORK, f"{type(error).__name__}: {error} ({stage})")

    def certificate_failure(self, error: ssl.SSLCertVerificationError) -> StageFailed:
        message = error.verify_message or error.reason or str(error)
        lowered = message.lower()
        if "mismatch" in lowered or "not valid for" in lowered:
            kind = KIND_CERT_HOSTNAME
        elif "expired" in lowered or "not yet valid" in lowered:
            kind = KIND_CERT_EXPIRED
        else:
            kind = KIND_CERT_UNTRUSTED
        failure = StageFailed(kind, f"certificate verify failed for {self.where}: {message}")
        # Show whose certificate it is: one more handshake without verification (best effort, in time).
        certificate = self.fetch_certificate()
        if certificate:
            failure.info["certificate"] = certificate
            names = ", ".join(certificate.get("names") or []) or certificate.get("subject", "?")
            failure.text += f" (the certificate is for {names}; issuer {certificate.get('issuer', '?')})"
        return failure

    def reply(self, code: int, message: bytes | str) -> tuple[int, str]:
        text = _reply_text(message)
        self.last_reply = (code, text)
        return code, text

    def tls_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=self.ca_file)
        if not self.settings.verify_tls:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context

    # -- stages --

    def resolve(self) -> None:
        with self.stage("resolve") as record:
            timeout = self.deadline.limit(self.settings.connect_timeout)
            self.addresses = _getaddrinfo(self.settings.host, self.settings.port, timeout)
            shown = sorted({str(address[4][0]) for address in self.addresses})
            record.detail = f"{self.settings.host} -> {', '.join(shown)}"
            record.info["addresses"] = shown

    def connect(self) -> None:
        with self.stage("connect") as record:
            last_error: BaseException | None = None
            for family, kind, proto, _name, address in self.addresses:
                sock = socket.socket(family, kind, proto)
                self.deadline.watch(sock)
                try:
                    sock.settimeout(self.deadline.limit(self.settings.connect_timeout))
                    sock.connect(address)
                except OSError as error:
                    last_error = error
                    sock.close()
                    self.deadline.watch(None)
                    if self.deadline.expired or isinstance(error, TimeoutError):
                        raise
                    continue
                self.sock = sock
                record.detail = f"connected to {address[0]} port {address[1]}"
                record.info["address"] = address[0]
                return
            raise last_error or OSError(f"no address to connect to for {self.settings.host}")

    def handshake(self, sock: socket.socket, context: ssl.SSLContext) -> ssl.SSLSocket:
        sock.settimeout(self.deadline.limit(self.settings.connect_timeout))
        tls = context.wrap_socket(sock, server_hostname=self.settings.host)
        self.deadline.watch(tls)
        return tls

    def implicit_tls(self) -> None:
        with self.stage("tls") as record:
            assert self.sock is not None
            self.sock = self.handshake(self.sock, self.tls_context())
            self.describe_tls(record, self.sock)

    def greeting_and_ehlo(self) -> None:
        with self.stage("ehlo") as record:
            smtp = self.smtp = _smtp_on(self.sock, self.settings.host)
            self.command_timeout()
            try:
                code, banner = self.reply(*smtp.getreply())
            except (smtplib.SMTPServerDisconnected, OSError) as error:
                failure = self.convert(error, "ehlo")
                if failure.kind in (KIND_TIMEOUT, KIND_CLOSED):
                    raise StageFailed(
                        KIND_NO_GREETING, f"connected, but {self.where} sent no SMTP greeting: {failure.text}"
                    ) from None
                raise failure from None
            if code == -1:  # smtplib: the reply did not start with a number (TLS bytes, another protocol)
                raise StageFailed(KIND_NO_GREETING, f"{self.where} answered with something that is not SMTP")
            if code != 220:
                raise StageFailed(KIND_REPLY, f"greeting {code} {banner}", code=code, reply=banner)
            record.info["banner"] = banner
            self.ehlo(record)
            offered = " ".join(_shown_extensions(smtp.esmtp_features))
            record.detail = f"{banner} | {offered or 'no extensions'}"

    def ehlo(self, record: Stage) -> None:
        smtp = self.smtp
        assert smtp is not None
        assert self.sock is not None
        smtp.local_hostname = _ehlo_name(self.sock)
        self.command_timeout()
        code, reply = self.reply(*smtp.ehlo())
        if code != 250:
            self.command_timeout()
            code, reply = self.reply(*smtp.helo())
            if code != 250:
                raise StageFailed(KIND_REPLY, f"EHLO/HELO refused: {code} {reply}", code=code, reply=reply)
            record.info["helo_only"] = True
        record.info["extensions"] = _extensions(smtp)

    def starttls(self) -> None:
        with self.stage("tls") as record:
            smtp = self.smtp
            assert smtp is not None and self.sock is not None
            if not smtp.has_extn("starttls"):
                raise StageFailed(
                    KIND_NO_STARTTLS,
                    f"StartTLS is on but {self.where} did not offer STARTTLS; not continuing in plaintext",
                )
            self.command_timeout()
            code, reply = self.reply(*smtp.docmd("STARTTLS"))
            if code != 220:
                raise StageFailed(KIND_REPLY, f"STARTTLS refused: {code} {reply}", code=code, reply=reply)
            self.sock = self.handshake(self.sock, self.tls_context())
            smtp.sock = self.sock
            smtp.file = None
            # RFC 3207: forget what the server said before TLS, ask again.
            smtp.helo_resp = smtp.ehlo_resp = None
            smtp.esmtp_features = {}
            smtp.does_esmtp = False
            self.describe_tls(record, self.sock)
            self.ehlo(record)
            offered = " ".join(_shown_extensions(smtp.esmtp_features))
            record.detail += f" | after TLS: {offered or 'no extensions'}"

    def describe_tls(self, record: Stage, sock: ssl.SSLSocket) -> None:
        cipher = sock.cipher()
        info: dict[str, Any] = {"protocol": sock.version(), "cipher": cipher[0] if cipher else None}
        der = sock.getpeercert(binary_form=True)
        if der:
            info.update(_certificate_info(der))
        info["verified"] = self.settings.verify_tls
        record.info.update(info)
        parts = [f"{info['protocol']} {info['cipher']}"]
        if "subject" in info:
            parts.append(
                f"certificate {info['subject']} issued by {info['issuer']}, expires {info['not_after']}"
            )
        if not self.settings.verify_tls:
            parts.append("WARNING: verify_tls is off, the certificate and host name were NOT checked")
        record.detail = "; ".join(parts)

    def fetch_certificate(self) -> dict[str, Any] | None:
        """The server's certificate without verification, to tell the admin whose it is. Best effort."""
        if self.deadline.remaining() < 0.2 or not self.addresses:
            return None
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        timeout = min(
            self.settings.connect_timeout, self.settings.timeout, self.deadline.remaining() / 2, 5.0
        )
        family, kind, proto, _name, address = self.addresses[0]
        try:
            with socket.socket(family, kind, proto) as raw:
                raw.settimeout(timeout)
                raw.connect(address)
                if self.settings.starttls:
                    smtp = _smtp_on(raw, self.settings.host)
                    smtp.local_hostname = "localhost"
                    if smtp.getreply()[0] != 220 or smtp.ehlo()[0] != 250 or smtp.docmd("STARTTLS")[0] != 220:
                        return None
                with context.wrap_socket(raw, server_hostname=self.settings.host) as tls:
                    der = tls.getpeercert(binary_form=True)
                    return _certificate_info(der) if der else None
        except (OSError, smtplib.SMTPException, ValueError):
            return None

    def authenticate(self) -> None:
        with self.stage("auth") as record:
            smtp = self.smtp
            assert smtp is not None
            settings = self.settings
            offered = smtp.esmtp_features.get("auth")
            if offered is None:
                plain = "" if settings.ssl or settings.starttls else " on an unencrypted connection"
                raise StageFailed(KIND_NO_AUTH, f"auth is on but {self.where} offers no AUTH{plain}")
            mechanisms = offered.upper().split()
            record.info["offered"] = mechanisms
            username = settings.username or ""
            if settings.auth_type == "xoauth2":
                self.xoauth2(record, mechanisms, username)
                return
            password = settings.secret("password") or ""
            self.secrets.append(password)
            usable = [m for m in PASSWORD_MECHANISMS if m in mechanisms]
            if not usable:
                raise StageFailed(
                    KIND_AUTH_MECHANISM, f"{self.where} offers AUTH {offered}, none of PLAIN, LOGIN, CRAM-MD5"
                )
            smtp.user, smtp.password = username, password
            last: smtplib.SMTPAuthenticationError | None = None
            try:
                for mechanism in usable:
                    self.command_timeout()
                    try:
                        code, reply = self.reply(*self.login(smtp, mechanism, username, password))
                    except smtplib.SMTPAuthenticationError as error:
                        last = error
                        continue
                    record.info["mechanism"] = mechanism
                    record.detail = f"logged in as {username} with {mechanism} ({code} {reply})"
                    return
            finally:
                smtp.password = ""
            assert last is not None
            raise last

    @staticmethod
    def login(smtp: smtplib.SMTP, mechanism: str, username: str, password: str) -> tuple[int, bytes]:
        """One AUTH attempt, the way delivery logs in (PLAIN and LOGIN in UTF-8: non-ASCII passwords work)."""
        if mechanism in ("PLAIN", "LOGIN"):
            return password_auth(smtp, username, password, mechanism)
        try:
            return smtp.auth(mechanism, smtp.auth_cram_md5, initial_response_ok=True)
        except UnicodeError:  # smtplib encodes CRAM-MD5 as ASCII; the error object would carry the password
            raise smtplib.SMTPAuthenticationError(
                535, b"CRAM-MD5 cannot carry a non-ASCII password"
            ) from None

    def xoauth2(self, record: Stage, mechanisms: list[str], username: str) -> None:
        if "XOAUTH2" not in mechanisms:
            raise StageFailed(
                KIND_AUTH_MECHANISM,
                f"auth_type is xoauth2 but {self.where} offers only AUTH {' '.join(mechanisms)}",
            )
        if self.oauth_token_provider is None:
            record.ok = None
            record.detail = "not tested: XOAUTH2 is offered, but no access token provider is available here"
            return
        try:
            token = self.oauth_token_provider(self.settings)
        except Exception as error:
            raise StageFailed(KIND_TOKEN, f"could not obtain an XOAUTH2 access token: {error}") from None
        if not token:
            raise StageFailed(
                KIND_TOKEN, "could not obtain an XOAUTH2 access token: the provider returned none"
            )
        self.secrets.append(token)
        smtp = self.smtp
        assert smtp is not None
        blob = base64.b64encode(f"user={username}\x01auth=Bearer {token}\x01\x01".encode()).decode("ascii")
        self.command_timeout()
        code, reply = self.reply(*smtp.docmd("AUTH", f"XOAUTH2 {blob}"))
        if code == 334:  # an error challenge (base64 JSON): an empty line gets the final reply
            self.command_timeout()
            code, reply = self.reply(*smtp.docmd(""))
        if code != 235:
            raise StageFailed(KIND_REPLY, f"{code} {reply}", code=code, reply=reply)
        record.info["mechanism"] = "XOAUTH2"
        record.detail = f"logged in as {username} with XOAUTH2 ({code} {reply})"

    def send(self, source: MessageSource) -> None:
        from worker.smtp import SmtpFailure, SmtpSession

        with self.stage("send") as record:
            message = source() if callable(source) else source
            self.message_id = message.message_id
            smtp = self.smtp
            assert smtp is not None
            self.command_timeout()
            session = SmtpSession(smtp, self.settings, self.where)
            try:
                result = session.send(message)
            except SmtpFailure as failure:
                if failure.code is not None:
                    text = f"{failure.stage.upper()}: {failure.code} {failure.text}"
                    raise StageFailed(KIND_REPLY, text, code=failure.code, reply=failure.text) from None
                kind = _SEND_KINDS.get(failure.kind, KIND_NETWORK)
                if self.deadline.expired:
                    kind = KIND_DEADLINE
                raise StageFailed(kind, f"{failure.stage.upper()}: {failure.text}") from None
            self.reply(result.code, result.reply)
            record.info.update({"recipients": list(result.accepted), "message_id": message.message_id,
                                "size": len(message.data)})  # fmt: skip
            refused = "; ".join(f"{r}: {c} {t}" for r, (c, t) in result.refused.items())
            record.detail = f"{', '.join(result.accepted)} accepted: {result.code} {result.reply}"
            if refused:
                record.detail += f"; refused {refused}"

    def quit(self) -> None:
        if self.smtp is not None and self.sock is not None and not self.deadline.expired:
            with contextlib.suppress(Exception):
                self.sock.settimeout(min(1.0, max(self.deadline.remaining(), 0.01)))
                self.smtp.quit()
        if self.sock is not None:
            with contextlib.suppress(OSError):
                self.sock.close()
        self.deadline.watch(None)


# worker.smtp's failure kinds (no server reply) as the probe's.
_SEND_KINDS = {
    "timeout": KIND_TIMEOUT,
    "disconnected": KIND_CLOSED,
    "refused": KIND_REFUSED,
    "smtputf8": KIND_MESSAGE,
}


def probe_smtp(
    settings: SmtpSettings,
    *,
    ca_file: str | None = None,
    send: MessageSource | None = None,
    deadline_s: float | None = None,
    oauth_token_provider: OAuthTokenProvider | None = None,
) -> ProbeStatus:
    """Test `settings` stage by stage; never raises for a server problem: the status says what failed."""
    limit = deadline_s if deadline_s is not None else default_deadline(settings)
    deadline = Deadline(limit)
    probe = _Probe(settings, deadline, ca_file, oauth_token_provider)
    status = ProbeStatus(
        ok=False,
        host=settings.host,
        port=settings.port,
        mode=mode_of(settings),
        stages=probe.stages,
        deadline_s=limit,
        verify_tls=settings.verify_tls,
    )
    if settings.auth and settings.auth_type == "password":
        probe.secrets.append(settings.secret("password") or "")
    try:
        probe.resolve()
        probe.connect()
        if settings.ssl:
            probe.implicit_tls()
            probe.greeting_and_ehlo()
        else:
            probe.greeting_and_ehlo()
            if settings.starttls:
                probe.starttls()
        if settings.auth:
            probe.authenticate()
        if send is not None:
            probe.send(send)
    except StageFailed as failure:
        # A step whose time-out was cut to what was left fails a hair before the watchdog fires: the overall
        # limit is what ended it all the same.
        if failure.kind != KIND_DEADLINE and (deadline.expired or deadline.remaining() <= 0.05):
            failure.kind = KIND_DEADLINE
        failed = probe.stages[-1] if probe.stages else Stage("resolve", False, 0.0, failure.text)
        status.failed_stage = failed.name
        status.kind = failure.kind
        status.error = failure.text
        status.smtp_code = failure.code
        status.smtp_reply = failure.reply
        status.hint = hint_for(failed.name, failure.kind, settings, text=failure.text, code=failure.code)
    else:
        status.ok = True
        if probe.last_reply is not None:
            status.smtp_code, status.smtp_reply = probe.last_reply
    finally:
        if probe.smtp is not None:
            status.extensions = _extensions(probe.smtp)  # before QUIT, which forgets them
        probe.quit()
        deadline.cancel()
    status.message_id = probe.message_id
    status.elapsed_ms = (time.monotonic() - deadline.started) * 1000
    return _scrubbed(status, probe.secrets)


# ---- small helpers --------------------------------------------------------------------------------------


def _getaddrinfo(host: str, port: int, timeout: float) -> list[tuple[Any, ...]]:
    """getaddrinfo with a time-out: it runs in a daemon thread, abandoned when it takes too long."""
    outcome: dict[str, Any] = {}

    def look_up() -> None:
        try:
            outcome["result"] = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except BaseException as error:
            outcome["error"] = error

    thread = threading.Thread(target=look_up, name=f"probe-resolve-{host}", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise StageFailed(
            KIND_TIMEOUT, f"resolving {host} took longer than {timeout:g}s (DNS does not answer)"
        )
    if "error" in outcome:
        raise outcome["error"]
    return list(outcome["result"])


def _smtp_on(sock: socket.socket | None, host: str) -> smtplib.SMTP:
    """An smtplib.SMTP driving an already connected socket (smtplib.connect would connect itself)."""
    smtp = smtplib.SMTP(local_hostname="localhost")
    smtp.set_debuglevel(0)  # debug output would print the AUTH exchange
    smtp.sock = sock
    smtp.file = None
    smtp._host = host  # type: ignore[attr-defined]  # what smtplib.starttls would use as server_hostname
    return smtp


def _ehlo_name(sock: socket.socket) -> str:
    """The name we EHLO with, without a DNS look-up (smtplib's default calls getfqdn, which can hang)."""
    name = socket.gethostname()
    if "." in name:
        return name
    address = str(sock.getsockname()[0])
    return f"[IPv6:{address}]" if ":" in address else f"[{address}]"


def _reply_text(reply: bytes | str) -> str:
    text = reply.decode("utf-8", "replace") if isinstance(reply, bytes) else str(reply)
    return " ".join(text.split())


def _extensions(smtp: smtplib.SMTP) -> dict[str, str]:
    return {name: value.strip() for name, value in smtp.esmtp_features.items()}


def _shown_extensions(features: dict[str, str]) -> list[str]:
    shown = []
    for name in EXTENSIONS_SHOWN:
        if name in features:
            value = features[name].strip()
            shown.append(f"{name.upper()} {value}" if value else name.upper())
    return shown


def _certificate_info(der: bytes) -> dict[str, Any]:
    from cryptography import x509

    try:
        certificate = x509.load_der_x509_certificate(der)
    except ValueError:
        return {}
    names: list[str] = []
    with contextlib.suppress(x509.ExtensionNotFound):
        san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = [*san.get_values_for_type(x509.DNSName), *map(str, san.get_values_for_type(x509.IPAddress))]
    not_after = certificate.not_valid_after_utc
    return {
        "subject": certificate.subject.rfc4514_string() or "(empty)",
        "issuer": certificate.issuer.rfc4514_string() or "(empty)",
        "names": names,
        "not_after": not_after.strftime("%Y-%m-%d %H:%M UTC"),
        "days_left": (not_after - dt.datetime.now(dt.UTC)).days,
    }


def _scrub_value(value: Any, secrets: list[str]) -> Any:
    if isinstance(value, str):
        for secret in secrets:
            if secret in value:
                value = value.replace(secret, "**********")
        return value
    if isinstance(value, dict):
        return {key: _scrub_value(item, secrets) for key, item in value.items()}
    if isinstance(value, list):
        return [_scrub_value(item, secrets) for item in value]
    return value


def _scrubbed(status: ProbeStatus, secrets: list[str]) -> ProbeStatus:
    """Belt and braces: a server echoing a credential must not put it into the status."""
    secrets = [secret for secret in secrets if secret and len(secret) >= 3]
    if not secrets:
        return status
    for stage in status.stages:
        stage.detail = _scrub_value(stage.detail, secrets)
        stage.info = _scrub_value(stage.info, secrets)
    status.error = _scrub_value(status.error, secrets)
    status.smtp_reply = _scrub_value(status.smtp_reply, secrets)
    return status
