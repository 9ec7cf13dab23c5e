"""One vocabulary for what went wrong in SMTP: the kinds, the failure, the conversion of exceptions.

Delivery, bulk and Test Connection all speak it: a failure is one `SmtpFailure` (stage, kind, the server's
code and text when it answered, the recipient it concerns), whose text a person can act on. What happens
next (retry, dead letter, settings problem) is decided in worker/policy.py, not here.
"""

from __future__ import annotations

import re
import smtplib
import socket
import ssl
from collections.abc import Iterable
from enum import StrEnum

from config.errors import MailWorkerError

MASK = "**********"
# Secrets shorter than this are not looked for in texts: masking every "ab" in a reply would garble it.
MIN_SECRET_TO_MASK = 3


class Kind(StrEnum):
    """What went wrong, independent of the stage. The values appear in Test Connection's status JSON."""

    DNS = "dns"  # the host name does not resolve
    REFUSED = "refused"  # nothing listens on the port
    TIMEOUT = "timeout"  # no answer within connect_timeout / timeout / data_timeout
    DEADLINE = "deadline"  # Test Connection's overall limit ran out
    NETWORK = "network"  # another network error (unreachable, ...)
    CLOSED = "closed"  # the server closed or reset the connection
    NO_GREETING = "no-greeting"  # connected, but no 220 greeting (time-out, close, or not SMTP at all)
    TLS_HANDSHAKE = "tls-handshake"  # the handshake failed (e.g. wrong version number: not TLS on this port)
    CERT_UNTRUSTED = "cert-untrusted"  # self-signed or an unknown CA
    CERT_HOSTNAME = "cert-hostname"  # a valid certificate for another host name
    CERT_EXPIRED = "cert-expired"
    NO_STARTTLS = "starttls-not-offered"
    NO_AUTH = "auth-not-offered"
    AUTH_MECHANISM = "auth-mechanism"  # AUTH offered, but no mechanism we speak (or cannot carry the secret)
    TOKEN = "token"  # XOAUTH2: no access token
    REPLY = "reply"  # the server answered with an error code
    SMTPUTF8 = "smtputf8"  # the message needs SMTPUTF8, the server lacks it
    MESSAGE = "message"  # the message could not be built


# The server never answered: nobody there (what the circuit breaker counts, at session set-up).
NO_ANSWER = frozenset({Kind.DNS, Kind.REFUSED, Kind.TIMEOUT, Kind.NETWORK, Kind.NO_GREETING})
# TLS could not be had as the settings want it.
TLS_KINDS = frozenset(
    {Kind.TLS_HANDSHAKE, Kind.CERT_UNTRUSTED, Kind.CERT_HOSTNAME, Kind.CERT_EXPIRED, Kind.NO_STARTTLS}
)
# Auth is on, but cannot happen with this server.
AUTH_KINDS = frozenset({Kind.NO_AUTH, Kind.AUTH_MECHANISM, Kind.TOKEN})
# The session is unusable after these: a new one is needed.
SESSION_OVER = NO_ANSWER | {Kind.CLOSED, Kind.DEADLINE}


class SmtpFailure(MailWorkerError):
    """A failed SMTP step. `code` is the server's reply code, None when the server never answered.

    `ambiguous`: the message and its final "." were written but the reply to them never came (timeout,
    disconnect, reset): the server may have accepted it. Retry later, never at once on a new session.
    """

    def __init__(
        self,
        code: int | None,
        text: str,
        stage: str = "data",
        *,
        recipient: str | None = None,
        kind: Kind | None = None,
        ambiguous: bool = False,
    ) -> None:
        self.code = code
        self.text = text
        self.stage = stage
        self.recipient = recipient
        self.kind = kind or (Kind.REPLY if code is not None else Kind.NETWORK)
        self.ambiguous = ambiguous
        super().__init__(f"{stage}: {code} {text}" if code is not None else f"{stage}: {text}")

    @property
    def reconnect(self) -> bool:
        """True when the session is unusable (dropped, timed out, 421): discard it; retry on a new one, at
        once only when not `ambiguous` (else later: the server may have the message)."""
        return self.code == 421 or self.kind in SESSION_OVER

    def with_text(self, text: str) -> SmtpFailure:
        return SmtpFailure(self.code, text, self.stage, recipient=self.recipient, kind=self.kind,
                           ambiguous=self.ambiguous)  # fmt: skip


def reply_text(reply: bytes | str) -> str:
    text = reply.decode("utf-8", "replace") if isinstance(reply, bytes) else str(reply)
    return " ".join(text.split())


def _certificate_kind(message: str) -> Kind:
    lowered = message.lower()
    if "mismatch" in lowered or "not valid for" in lowered:
        return Kind.CERT_HOSTNAME
    if "expired" in lowered or "not yet valid" in lowered:
        return Kind.CERT_EXPIRED
    return Kind.CERT_UNTRUSTED


def convert(error: BaseException, stage: str, where: str, waited: float) -> SmtpFailure:
    """One SmtpFailure for any smtplib / socket / ssl exception. `where` is "host:port"; `waited` the time-out
    that ran out, if one did."""
    if isinstance(error, SmtpFailure):
        return error
    if isinstance(error, smtplib.SMTPRecipientsRefused):
        rcpt, (code, reply) = next(iter(error.recipients.items()))
        return SmtpFailure(code, reply_text(reply), "rcpt", recipient=rcpt)
    if isinstance(error, smtplib.SMTPResponseException):
        return SmtpFailure(error.smtp_code, reply_text(error.smtp_error), stage)
    if isinstance(error, smtplib.SMTPServerDisconnected) and isinstance(error.__context__, OSError):
        error = error.__context__  # smtplib reports a read that timed out as "Connection unexpectedly closed"
    if isinstance(error, ssl.SSLCertVerificationError):
        detail = error.verify_message or error.reason or str(error)
        return SmtpFailure(None, f"certificate verify failed for {where}: {detail}", "tls",
                           kind=_certificate_kind(str(detail)))  # fmt: skip
    if isinstance(error, TimeoutError):  # socket.timeout, a TLS handshake that timed out too
        return SmtpFailure(
            None, f"no answer from {where} within {waited:g}s ({stage})", stage, kind=Kind.TIMEOUT
        )
    if isinstance(error, ssl.SSLError):
        detail = re.sub(r"\s*\(_ssl\.c:\d+\)$", "", str(error)) or str(error.reason or type(error).__name__)
        hint = " (is ssl on for a plaintext or StartTLS port?)" if "WRONG_VERSION" in detail.upper() else ""
        return SmtpFailure(None, f"TLS handshake with {where} failed: {detail}{hint}", "tls",
                           kind=Kind.TLS_HANDSHAKE)  # fmt: skip
    if isinstance(error, ConnectionRefusedError):
        return SmtpFailure(None, f"connection refused by {where}", stage, kind=Kind.REFUSED)
    if isinstance(error, smtplib.SMTPServerDisconnected | ConnectionError | EOFError):
        return SmtpFailure(None, f"{where} closed the connection ({stage})", stage, kind=Kind.CLOSED)
    if isinstance(error, smtplib.SMTPNotSupportedError):
        return SmtpFailure(None, f"{where} does not support this ({stage}): {error}", stage, kind=Kind.REPLY)
    if isinstance(error, socket.gaierror):
        host = where.rsplit(":", 1)[0]
        return SmtpFailure(None, f"cannot resolve {host}: {error.strerror}", stage, kind=Kind.DNS)
    if isinstance(error, OSError):
        detail = error.strerror or str(error) or type(error).__name__
        return SmtpFailure(None, f"network error with {where} ({stage}): {detail}", stage, kind=Kind.NETWORK)
    if isinstance(error, smtplib.SMTPException | ValueError | OverflowError):  # e.g. a port out of range
        return SmtpFailure(None, f"{where}: {error} ({stage})", stage, kind=Kind.NETWORK)
    raise error


def scrub(text: str, secrets: Iterable[str | None]) -> str:
    """Belt and braces: a server echoing a credential must not put it into a log, a result or a status."""
    for secret in secrets:
        if secret and len(secret) >= MIN_SECRET_TO_MASK and secret in text:
            text = text.replace(secret, MASK)
    return text


def scrubbed(failure: SmtpFailure, secrets: Iterable[str | None]) -> SmtpFailure:
    text = scrub(failure.text, secrets)
    return failure if text == failure.text else failure.with_text(text)
