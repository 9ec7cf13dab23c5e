"""Opening an SMTP session: the one way delivery, bulk and Test Connection connect, step by step.

    resolve -> connect -> [tls: implicit] -> ehlo (greeting + EHLO) -> [tls: STARTTLS + EHLO] -> [auth]

`open_session` runs the steps for delivery; the Test Connection probe (worker/probe/) runs the very same
steps one by one, timing and describing each, under its overall deadline. Rules that matter for safety:

- StartTLS on means StartTLS or nothing: a server that does not offer it (or an attacker who stripped it
  from the EHLO reply) gets neither AUTH nor mail in plaintext.
- Certificates and host names are verified unless the realm's admin turned `verify_tls` off; that choice
  is logged as a WARNING on every connection.
- Every step has a deadline: connect_timeout for resolving, connecting and TLS handshakes, timeout per
  command. Resolving runs in a thread of its own (getaddrinfo has no time-out).
- One EHLO rule: a 4xx is "try later" (never fall back to HELO: that would lose STARTTLS and AUTH), any
  other refusal falls back to HELO. One EHLO name without a DNS look-up (an RFC 5321 address literal when
  the host has no dotted name).
- One AUTH order, one attempt: PLAIN, else LOGIN, else CRAM-MD5 (a second mechanism after a 535 only
  counts against the account's lock-out); XOAUTH2 with the realm's token.
- The password and the OAuth token never reach an exception text or a log line (smtplib's debug output is
  off, failures are scrubbed).
"""

from __future__ import annotations

import contextlib
import logging
import smtplib
import socket
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Protocol

from config.smtp import SmtpSettings
from worker.smtp.auth import password_login, password_mechanism, xoauth2_login
from worker.smtp.failures import Kind, SmtpFailure, convert, reply_text, scrubbed
from worker.smtp.session import SmtpSession

log = logging.getLogger(__name__)


class Limits(Protocol):
    """How long a step may take: delivery gives each step its own time-out; Test Connection also cuts it to
    what is left of its overall limit, and watches the socket to shut it at that limit."""

    def limit(self, step_timeout: float) -> float: ...

    def watch(self, sock: socket.socket | None) -> None: ...


class StepTimeouts:
    """Each step its own time-out, nothing more (delivery)."""

    def limit(self, step_timeout: float) -> float:
        return step_timeout

    def watch(self, sock: socket.socket | None) -> None:
        return None


@dataclass
class StepResult:
    """What a step found, for Test Connection's report (delivery ignores it)."""

    detail: str = ""
    info: dict[str, Any] = field(default_factory=dict)


@lru_cache(maxsize=16)
def tls_context(ca_file: str | None, verify: bool) -> ssl.SSLContext:
    """A client context: verifies certificate and host name by default (against ca_file when given)."""
    context = ssl.create_default_context(cafile=ca_file)
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def ehlo_name(sock: socket.socket) -> str:
    """The name we EHLO with, without a DNS look-up (smtplib's default calls getfqdn, which can hang)."""
    name = socket.gethostname()
    if "." in name:
        return name
    address = str(sock.getsockname()[0])
    return f"[IPv6:{address}]" if ":" in address else f"[{address}]"  # RFC 5321 address literals


def resolve(host: str, port: int, timeout: float) -> list[tuple[Any, ...]]:
    """getaddrinfo with a time-out: it runs in a daemon thread, abandoned when it takes too long."""
    outcome: dict[str, Any] = {}

    def look_up() -> None:
        try:
            outcome["result"] = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except BaseException as error:
            outcome["error"] = error

    thread = threading.Thread(target=look_up, name=f"smtp-resolve-{host}", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise SmtpFailure(None, f"resolving {host} took longer than {timeout:g}s (DNS does not answer)",
                          "resolve", kind=Kind.TIMEOUT)  # fmt: skip
    if "error" in outcome:
        raise outcome["error"]
    return list(outcome["result"])


class Opener:
    """The steps of opening one session (see the module docstring). Each step raises SmtpFailure naming
    its stage; `plan()` lists the steps the settings call for, in order."""

    def __init__(
        self,
        settings: SmtpSettings,
        *,
        ca_file: str | None = None,
        oauth_token: str | None = None,
        limits: Limits | None = None,
    ) -> None:
        self.settings = settings
        self.ca_file = ca_file
        self.oauth_token = oauth_token
        self.limits: Limits = limits or StepTimeouts()
        self.where = f"{settings.host}:{settings.port}"
        self.addresses: list[tuple[Any, ...]] = []
        self.sock: socket.socket | None = None
        self.smtp: smtplib.SMTP | None = None
        self.last_reply: tuple[int, str] | None = None
        self.password = settings.secret("password") if settings.auth_type == "password" else None

    @property
    def secrets(self) -> tuple[str | None, ...]:
        return (self.password, self.oauth_token)

    def plan(self) -> list[tuple[str, Callable[[], StepResult]]]:
        steps: list[tuple[str, Callable[[], StepResult]]] = [
            ("resolve", self.resolve),
            ("connect", self.connect),
        ]
        if self.settings.ssl:
            steps += [("tls", self.implicit_tls), ("ehlo", self.greet_and_ehlo)]
        else:
            steps.append(("ehlo", self.greet_and_ehlo))
            if self.settings.starttls:
                steps.append(("tls", self.starttls))
        if self.settings.auth:
            steps.append(("auth", self.authenticate))
        return steps

    def step(self, stage: str, run: Callable[[], StepResult]) -> StepResult:
        """Run one step; any failure leaves as an SmtpFailure of `stage`, scrubbed of the secrets."""
        try:
            return run()
        except SmtpFailure as failure:
            raise scrubbed(failure, self.secrets) from None
        except (smtplib.SMTPException, OSError, ValueError, OverflowError) as error:
            waited = (
                self.settings.connect_timeout
                if stage in ("resolve", "connect", "tls")
                else self.settings.timeout
            )
            converted = convert(error, stage, self.where, waited)
            if converted.stage != stage:
                converted = SmtpFailure(converted.code, converted.text, stage, kind=converted.kind)
            raise scrubbed(converted, self.secrets) from None

    def open(self) -> SmtpSession:
        """Every step of the plan, then the session (delivery). The connection is closed on a failure."""
        try:
            for stage, run in self.plan():
                self.step(stage, run)
        except BaseException:
            self.close()
            raise
        return self.session(self.settings.data_timeout)

    def session(self, data_timeout: float | None) -> SmtpSession:
        """The opened session; `data_timeout` None keeps the socket's time-out for the end of data too."""
        assert self.smtp is not None and self.sock is not None
        self.sock.settimeout(self.settings.timeout)
        return SmtpSession(self.smtp, self.settings, self.where, data_timeout=data_timeout)

    def close(self) -> None:
        if self.sock is not None:
            with contextlib.suppress(OSError):
                self.sock.close()
        self.limits.watch(None)

    # -- the steps --

    def resolve(self) -> StepResult:
        self.addresses = resolve(
            self.settings.host, self.settings.port, self.limits.limit(self.settings.connect_timeout)
        )
        shown = sorted({str(address[4][0]) for address in self.addresses})
        return StepResult(f"{self.settings.host} -> {', '.join(shown)}", {"addresses": shown})

    def connect(self) -> StepResult:
        last_error: BaseException | None = None
        for family, kind, proto, _name, address in self.addresses:
            sock = socket.socket(family, kind, proto)
            self.limits.watch(sock)
            try:
                sock.settimeout(self.limits.limit(self.settings.connect_timeout))
                sock.connect(address)
            except OSError as error:
                last_error = error
                sock.close()
                self.limits.watch(None)
                if isinstance(error, TimeoutError):
                    raise
                continue
            self.sock = sock
            return StepResult(f"connected to {address[0]} port {address[1]}", {"address": address[0]})
        raise last_error or OSError(f"no address to connect to for {self.settings.host}")

    def _handshake(self) -> ssl.SSLSocket:
        assert self.sock is not None
        if not self.settings.verify_tls:
            log.warning("TLS certificate verification is OFF for %s (verify_tls=false): the connection is "
                        "encrypted but the server is not authenticated", self.where)  # fmt: skip
        self.sock.settimeout(self.limits.limit(self.settings.connect_timeout))
        context = tls_context(self.ca_file, self.settings.verify_tls)
        tls = context.wrap_socket(self.sock, server_hostname=self.settings.host)
        self.limits.watch(tls)
        self.sock = tls
        return tls

    def implicit_tls(self) -> StepResult:
        return _tls_result(self._handshake(), self.settings.verify_tls)

    def greet_and_ehlo(self) -> StepResult:
        smtp = self.smtp = _smtp_on(self.sock, self.settings.host)
        assert self.sock is not None
        # The greeting is part of connecting: a port that accepts and never greets is nobody answering.
        self.sock.settimeout(self.limits.limit(self.settings.connect_timeout))
        try:
            code, banner = self._reply(*smtp.getreply())
        except (smtplib.SMTPServerDisconnected, OSError) as error:
            failure = convert(error, "ehlo", self.where, self.settings.connect_timeout)
            if failure.kind in (Kind.TIMEOUT, Kind.CLOSED):
                raise SmtpFailure(None, f"connected, but {self.where} sent no SMTP greeting: {failure.text}",
                                  "ehlo", kind=Kind.NO_GREETING) from None  # fmt: skip
            raise failure from None
        if code == -1:  # the reply did not start with a number: TLS bytes, or another protocol
            raise SmtpFailure(None, f"{self.where} answered with something that is not SMTP", "ehlo",
                              kind=Kind.NO_GREETING)  # fmt: skip
        if code != 220:
            raise SmtpFailure(code, f"greeting: {banner}", "ehlo")
        result = self._ehlo()
        result.info["banner"] = banner
        result.detail = f"{banner} | {result.detail}"
        return result

    def starttls(self) -> StepResult:
        smtp = self.smtp
        assert smtp is not None
        if not smtp.has_extn("starttls"):
            raise SmtpFailure(None, f"StartTLS is on but {self.where} did not offer STARTTLS; not continuing "
                              "in plaintext", "tls", kind=Kind.NO_STARTTLS)  # fmt: skip
        self._command_timeout()
        code, reply = self._reply(*smtp.docmd("STARTTLS"))
        if code != 220:
            raise SmtpFailure(code, f"STARTTLS refused: {reply}", "tls")
        tls = self._handshake()
        smtp.sock, smtp.file = tls, None
        # RFC 3207: forget what the server said before TLS, ask again.
        smtp.helo_resp = smtp.ehlo_resp = None
        smtp.esmtp_features, smtp.does_esmtp = {}, False
        result = _tls_result(tls, self.settings.verify_tls)
        after = self._ehlo()
        result.info.update(after.info)
        result.detail += f" | after TLS: {after.detail}"
        return result

    def authenticate(self) -> StepResult:
        smtp = self.smtp
        assert smtp is not None
        settings = self.settings
        offered = smtp.esmtp_features.get("auth")
        if offered is None:
            plain = (
                " on an unencrypted connection (most servers offer AUTH only after TLS: turn on starttls or ssl)"
                if not (settings.ssl or settings.starttls)
                else ""
            )
            raise SmtpFailure(
                None, f"auth is on but {self.where} offers no AUTH{plain}", "auth", kind=Kind.NO_AUTH
            )
        mechanisms = offered.upper().split()
        username = settings.username or ""
        if settings.auth_type == "xoauth2":
            if "XOAUTH2" not in mechanisms:
                raise SmtpFailure(None, f"auth_type is xoauth2 but {self.where} offers only AUTH {offered}",
                                  "auth", kind=Kind.AUTH_MECHANISM)  # fmt: skip
            if not self.oauth_token:
                raise SmtpFailure(None, "auth_type is xoauth2 but no access token was obtained", "auth",
                                  kind=Kind.TOKEN)  # fmt: skip
            self._command_timeout()
            code, reply = self._reply(*xoauth2_login(smtp, username, self.oauth_token, self._command_timeout))
            return StepResult(f"logged in as {username} with XOAUTH2 ({code} {reply})",
                              {"offered": mechanisms, "mechanism": "XOAUTH2"})  # fmt: skip
        mechanism = password_mechanism(mechanisms)
        if mechanism is None:
            raise SmtpFailure(None, f"{self.where} offers AUTH {offered}, none of PLAIN, LOGIN, CRAM-MD5",
                              "auth", kind=Kind.AUTH_MECHANISM)  # fmt: skip
        self._command_timeout()
        code, reply = self._reply(*password_login(smtp, mechanism, username, self.password or ""))
        return StepResult(f"logged in as {username} with {mechanism} ({code} {reply})",
                          {"offered": mechanisms, "mechanism": mechanism})  # fmt: skip

    # -- helpers --

    def _command_timeout(self) -> None:
        assert self.sock is not None
        self.sock.settimeout(self.limits.limit(self.settings.timeout))

    def _reply(self, code: int, message: bytes | str) -> tuple[int, str]:
        text = reply_text(message)
        self.last_reply = (code, text)
        return code, text

    def _ehlo(self) -> StepResult:
        smtp = self.smtp
        assert smtp is not None and self.sock is not None
        smtp.local_hostname = ehlo_name(self.sock)
        self._command_timeout()
        code, reply = self._reply(*smtp.ehlo())
        info: dict[str, Any] = {}
        if 400 <= code < 500:
            # "Try again later", not "I do not speak ESMTP": HELO would lose STARTTLS and AUTH.
            raise SmtpFailure(code, f"EHLO: {reply}", "ehlo")
        if code != 250:
            self._command_timeout()
            code, reply = self._reply(*smtp.helo())
            if code != 250:
                raise SmtpFailure(code, f"EHLO/HELO refused: {reply}", "ehlo")
            info["helo_only"] = True
        info["extensions"] = {name: value.strip() for name, value in smtp.esmtp_features.items()}
        offered = " ".join(shown_extensions(smtp.esmtp_features))
        return StepResult(offered or "no extensions", info)


EXTENSIONS_SHOWN = ("size", "8bitmime", "smtputf8", "auth", "starttls", "pipelining")


def shown_extensions(features: dict[str, str]) -> list[str]:
    shown = []
    for name in EXTENSIONS_SHOWN:
        if name in features:
            value = features[name].strip()
            shown.append(f"{name.upper()} {value}" if value else name.upper())
    return shown


def _tls_result(sock: ssl.SSLSocket, verified: bool) -> StepResult:
    cipher = sock.cipher()
    info: dict[str, Any] = {
        "protocol": sock.version(),
        "cipher": cipher[0] if cipher else None,
        "verified": verified,
    }
    der = sock.getpeercert(binary_form=True)
    if der:
        info["der"] = der
    return StepResult(f"{info['protocol']} {info['cipher']}", info)


def _smtp_on(sock: socket.socket | None, host: str) -> smtplib.SMTP:
    """An smtplib.SMTP driving an already connected socket (smtplib.connect would connect itself)."""
    smtp = smtplib.SMTP(local_hostname="localhost")
    smtp.set_debuglevel(0)  # debug output would print the AUTH exchange
    smtp.sock = sock
    smtp.file = None
    smtp._host = host  # type: ignore[attr-defined]  # what smtplib.starttls would use as server_hostname
    return smtp


def open_session(
    settings: SmtpSettings, *, ca_file: str | None = None, oauth_token: str | None = None
) -> SmtpSession:
    """Connect, (Start)TLS, EHLO and AUTH as the settings say. Raises SmtpFailure naming the failing stage."""
    return Opener(settings, ca_file=ca_file, oauth_token=oauth_token).open()
