"""SMTP sessions: implicit TLS or StartTLS, certificate checks, AUTH, deadlines, reuse, error classes.

Every failure leaves this module as one `SmtpFailure` (stage, code, text, recipient) whose text a person
can act on; `classify_smtp_error` turns it into what the worker does next (retry, dead-letter, or flag the
realm's settings). Rules that matter for safety:

- StartTLS on means StartTLS or nothing: a server that does not offer it (or an attacker who stripped it
  from the EHLO reply) gets neither AUTH nor mail in plaintext.
- Certificates and host names are verified unless the realm's admin turned `verify_tls` off; that choice
  is logged as a WARNING on every connection.
- Every connect, handshake and command has a deadline (smtplib waits forever by default).
- The password and OAuth token never reach an exception text or a log line (smtplib debug output is off).
- A failure after the whole message and its final "." were written, before the server's reply to them,
  is `ambiguous`: the server may have accepted the message. It is never resent on the spot (a second copy
  is worse than a later retry), and its deadline is the realm's `data_timeout` (RFC 5321 allows the
  server 10 minutes there), not the per-command `timeout`.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import re
import smtplib
import socket
import ssl
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from functools import lru_cache
from typing import Any

from config.errors import MailWorkerError
from config.smtp import SmtpSettings
from worker.message import OutgoingMessage

log = logging.getLogger(__name__)

STAGES = ("connect", "tls", "ehlo", "auth", "mail", "rcpt", "data", "noop")
# The codes by which a server says "your credentials / auth setup is wrong".
AUTH_FAILURE_CODES = frozenset({530, 534, 535, 538})

# Failure kinds that are not an SMTP reply.
KIND_REPLY = "reply"  # the server answered with a code
KIND_TIMEOUT = "timeout"
KIND_DISCONNECTED = "disconnected"
KIND_REFUSED = "refused"
KIND_NETWORK = "network"
KIND_TLS = "tls"  # certificate, host name, handshake, StartTLS missing
KIND_AUTH_UNAVAILABLE = "auth-unavailable"  # auth on, but the server offers no (usable) AUTH
KIND_SMTPUTF8 = "smtputf8"  # the message needs SMTPUTF8, the server lacks it


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
        kind: str | None = None,
        ambiguous: bool = False,
    ) -> None:
        self.code = code
        self.text = text
        self.stage = stage
        self.recipient = recipient
        self.kind = kind or (KIND_REPLY if code is not None else KIND_NETWORK)
        self.ambiguous = ambiguous
        super().__init__(f"{stage}: {code} {text}" if code is not None else f"{stage}: {text}")

    @property
    def reconnect(self) -> bool:
        """True when the session is unusable (dropped, timed out, 421): discard it; retry on a new one, at
        once only when not `ambiguous` (else later: the server may have the message)."""
        return self.code == 421 or self.kind in (KIND_DISCONNECTED, KIND_TIMEOUT, KIND_NETWORK, KIND_REFUSED)


class Outcome(Enum):
    RETRY = "retry"  # transient: try again later
    PERMANENT = "permanent"  # this message will never go through: dead letter at once
    SETTINGS_PROBLEM = "settings"  # the realm's SMTP settings are wrong: dead letter, tell the admin


# The decision table, first match wins. Each row: (why, test, outcome). the README (What happens after an SMTP error) mirrors it.
CLASSIFICATION: tuple[tuple[str, Callable[[SmtpFailure], bool], Outcome], ...] = (
    ("message needs SMTPUTF8, server lacks it", lambda e: e.kind == KIND_SMTPUTF8, Outcome.PERMANENT),
    (
        "TLS: certificate, host name, handshake, no StartTLS",
        lambda e: e.kind == KIND_TLS,
        Outcome.SETTINGS_PROBLEM,
    ),
    ("auth on, server offers no AUTH", lambda e: e.kind == KIND_AUTH_UNAVAILABLE, Outcome.SETTINGS_PROBLEM),
    ("no reply: refused, timeout, disconnect, DNS", lambda e: e.code is None, Outcome.RETRY),
    ("4xx: transient", lambda e: 400 <= (e.code or 0) < 500, Outcome.RETRY),
    ("530/534/535/538: authentication", lambda e: e.code in AUTH_FAILURE_CODES, Outcome.SETTINGS_PROBLEM),
    (
        "5xx before MAIL (greeting, EHLO, STARTTLS, AUTH): server refuses us",
        lambda e: e.stage in ("connect", "ehlo", "tls", "auth") and 500 <= (e.code or 0) < 600,
        Outcome.SETTINGS_PROBLEM,
    ),
    ("other 5xx: the message or recipient", lambda e: 500 <= (e.code or 0) < 600, Outcome.PERMANENT),
)


def classify_smtp_error(error: SmtpFailure) -> Outcome:
    """What to do after a failure: retry later, dead-letter the message, or flag the settings."""
    for _why, test, outcome in CLASSIFICATION:
        if test(error):
            return outcome
    return Outcome.RETRY  # an odd code (e.g. 3xx where 2xx was due): the server is confused, try later


@dataclass
class SendResult:
    accepted: tuple[str, ...]
    refused: dict[str, tuple[int, str]]
    code: int
    reply: str


# ---- failure conversion ---------------------------------------------------------------------------------


def _reply_text(reply: bytes | str) -> str:
    text = reply.decode("utf-8", "replace") if isinstance(reply, bytes) else str(reply)
    return " ".join(text.split())


def _convert(error: BaseException, stage: str, where: str, deadline: float) -> SmtpFailure:
    """One SmtpFailure for any smtplib / socket / ssl exception. `where` is "host:port"."""
    if isinstance(error, SmtpFailure):
        return error
    if isinstance(error, smtplib.SMTPRecipientsRefused):
        rcpt, (code, reply) = next(iter(error.recipients.items()))
        return SmtpFailure(code, _reply_text(reply), "rcpt", recipient=rcpt)
    if isinstance(error, smtplib.SMTPResponseException):
        return SmtpFailure(error.smtp_code, _reply_text(error.smtp_error), stage)
    if isinstance(error, smtplib.SMTPServerDisconnected) and isinstance(error.__context__, TimeoutError):
        error = error.__context__  # smtplib reports a read that timed out as "Connection unexpectedly closed"
    if isinstance(error, smtplib.SMTPServerDisconnected):
        return SmtpFailure(None, f"{where} closed the connection ({stage})", stage, kind=KIND_DISCONNECTED)
    if isinstance(error, smtplib.SMTPNotSupportedError):
        return SmtpFailure(None, f"{where} does not support this ({stage}): {error}", stage, kind=KIND_REPLY)
    if isinstance(error, ssl.SSLCertVerificationError):
        detail = error.verify_message or error.reason or str(error)
        return SmtpFailure(None, f"certificate verify failed for {where}: {detail}", "tls", kind=KIND_TLS)
    if isinstance(error, TimeoutError):  # socket.timeout, including a TLS handshake that timed out
        doing = "connecting to" if stage in ("connect", "tls") else f"waiting for {where} ({stage}) at"
        return SmtpFailure(None, f"timed out after {deadline:g}s {doing} {where}", stage, kind=KIND_TIMEOUT)
    if isinstance(error, ssl.SSLError):
        detail = error.reason or str(error)
        hint = " (is ssl on for a plaintext or StartTLS port?)" if "WRONG_VERSION" in str(detail) else ""
        return SmtpFailure(None, f"TLS handshake with {where} failed: {detail}{hint}", "tls", kind=KIND_TLS)
    if isinstance(error, ConnectionRefusedError):
        return SmtpFailure(None, f"connection refused by {where}", stage, kind=KIND_REFUSED)
    if isinstance(error, ConnectionResetError | BrokenPipeError | ConnectionAbortedError):
        return SmtpFailure(None, f"{where} reset the connection ({stage})", stage, kind=KIND_DISCONNECTED)
    if isinstance(error, socket.gaierror):
        host = where.rsplit(":", 1)[0]
        return SmtpFailure(None, f"cannot resolve {host}: {error.strerror}", stage, kind=KIND_NETWORK)
    if isinstance(error, OSError):
        detail = error.strerror or str(error) or type(error).__name__
        return SmtpFailure(None, f"network error with {where} ({stage}): {detail}", stage, kind=KIND_NETWORK)
    if isinstance(error, smtplib.SMTPException):
        return SmtpFailure(None, f"{where}: {error} ({stage})", stage, kind=KIND_NETWORK)
    raise error


# ---- TLS -------------------------------------------------------------------------------------------------


@lru_cache(maxsize=16)
def tls_context(ca_file: str | None, verify: bool) -> ssl.SSLContext:
    """A client context: verifies certificate and host name by default (against ca_file when given)."""
    context = ssl.create_default_context(cafile=ca_file)
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


@lru_cache(maxsize=1)
def _local_name() -> str:
    """EHLO name without a DNS look-up (smtplib's default calls socket.getfqdn, which can hang)."""
    name = socket.gethostname()
    return name if "." in name else ""


# ---- the session -----------------------------------------------------------------------------------------


class SmtpSession:
    """One open, greeted (and, as configured, encrypted and authenticated) SMTP connection.

    `data_timeout`: the deadline for the reply to the end of DATA (open_session passes the realm's). None
    keeps the socket's current timeout there too, for a caller that runs its own deadline (Test Connection).
    """

    def __init__(
        self, smtp: smtplib.SMTP, settings: SmtpSettings, where: str, *, data_timeout: float | None = None
    ) -> None:
        self._smtp = smtp
        self._settings = settings
        self.where = where
        self.data_timeout = data_timeout
        self.messages_sent = 0
        self.closed = False
        self.tls = isinstance(smtp, smtplib.SMTP_SSL) or settings.starttls

    @property
    def features(self) -> dict[str, str]:
        """The server's EHLO extensions, lower-case names (e.g. {"size": "1000", "smtputf8": ""})."""
        return dict(self._smtp.esmtp_features)

    def _fail(self, error: BaseException, stage: str) -> SmtpFailure:
        failure = _convert(error, stage, self.where, self._settings.timeout)
        if failure.reconnect:
            self._drop()
        return failure

    def _end_of_data_reply(self) -> tuple[int, bytes]:
        """The reply to the final ".", read under `data_timeout`; the socket's timeout is restored after."""
        sock = self._smtp.sock
        if sock is None:
            raise smtplib.SMTPServerDisconnected("please run connect() first")
        previous = sock.gettimeout()
        if self.data_timeout is not None:
            sock.settimeout(self.data_timeout)
        try:
            return self._smtp.getreply()
        finally:
            if self._smtp.sock is not None:  # getreply closes it on a failed read
                self._smtp.sock.settimeout(previous)

    def _no_end_of_data_reply(self, error: BaseException) -> SmtpFailure:
        """The ambiguous failure for a message whose body and final "." went out and got no reply."""
        waited = self.data_timeout if self.data_timeout is not None else self._settings.timeout
        failure = _convert(error, "data", self.where, waited)
        self._drop()  # the reply may still arrive: nothing else can be read on this connection
        if failure.code is not None:  # e.g. smtplib's 500 for an overlong line: a reply, if a broken one
            return failure
        if failure.kind == KIND_TIMEOUT:
            what = f"no reply to the end of data from {self.where} after {waited:g}s"
        elif failure.kind == KIND_DISCONNECTED:
            what = f"{self.where} closed the connection instead of replying to the end of data"
        else:
            what = f"no reply to the end of data from {self.where} ({failure.text})"
        text = f"{what}: the server may have accepted the message"
        return SmtpFailure(None, text, "data", kind=failure.kind, ambiguous=True)

    def send(self, msg: OutgoingMessage, *, on_data: Callable[[], None] | None = None) -> SendResult:
        """MAIL, RCPT per recipient, DATA. Some recipients refused: listed in `refused`; all: SmtpFailure.

        `on_data` runs once the server said 354, right before the body goes out: from then on the server
        may end up with the message whatever happens to this process (the caller records that).
        """
        if self.closed:
            raise SmtpFailure(None, f"session with {self.where} is closed", "mail", kind=KIND_DISCONNECTED)
        smtp = self._smtp
        options: list[str] = []
        if msg.smtputf8:
            if not smtp.has_extn("smtputf8"):
                rcpt = msg.recipients[0] if msg.recipients else None
                raise SmtpFailure(
                    None,
                    f"{rcpt or msg.envelope_from} needs SMTPUTF8 (non-ASCII address) but {self.where} "
                    "does not offer SMTPUTF8",
                    "mail",
                    recipient=rcpt,
                    kind=KIND_SMTPUTF8,
                )
            options.append("SMTPUTF8")
            if smtp.has_extn("8bitmime"):
                options.append("BODY=8BITMIME")
        if smtp.has_extn("size"):
            options.append(f"SIZE={len(msg.data)}")
        stage = "mail"
        try:
            code, reply = smtp.mail(msg.envelope_from, options)
            if code != 250:
                raise self._transaction_failed(code, reply, "mail")
            stage = "rcpt"
            accepted: list[str] = []
            refused: dict[str, tuple[int, str]] = {}
            for rcpt in msg.recipients:
                code, reply = smtp.rcpt(rcpt)
                if code in (250, 251):
                    accepted.append(rcpt)
                elif code == 421:
                    raise self._transaction_failed(code, reply, "rcpt", recipient=rcpt)
                else:
                    refused[rcpt] = (code, _reply_text(reply))
            if not accepted:
                raise self._all_refused(refused)
            stage = "data"
            # smtplib's data() in steps, so a failure after the body is told from one before it.
            code, reply = smtp.docmd("DATA")
            if code != 354:
                raise self._transaction_failed(code, reply, "data")
            if on_data is not None:
                on_data()
            smtp.send(_dot_stuffed(msg.data))
            try:
                code, reply = self._end_of_data_reply()
            except (smtplib.SMTPException, OSError) as error:
                raise self._no_end_of_data_reply(error) from None
            if code != 250:
                raise self._transaction_failed(code, reply, "data")
        except SmtpFailure:
            raise
        except (smtplib.SMTPException, OSError) as error:
            failure = self._fail(error, stage)
            if not self.closed:
                # e.g. DATA answered 451 instead of 354 (smtplib raises): close the open transaction, or
                # the next message on this pooled session gets "503 nested MAIL command" (a 5xx).
                self._rset()
            raise failure from None
        self.messages_sent += 1
        return SendResult(tuple(accepted), refused, code, _reply_text(reply))

    def send_many(
        self, messages: Sequence[OutgoingMessage], on_accepted: Callable[[int], None] | None = None
    ) -> list[SendResult | SmtpFailure]:
        """Several messages in order on this session: one outcome per message, same length as `messages`.

        `on_accepted(i)` runs as soon as the server accepted message i, before the rest are answered: a
        caller can record it early (a slow server makes a group of messages take seconds).

        With PIPELINING (RFC 2920) a message costs one round trip instead of four: the previous message's
        body, MAIL, RCPT and DATA go out in one write and their replies are read together. Without it, each
        message goes through `send`. Once the session ends (dropped, 421) every later message gets that
        failure unattempted; `closed` is then True and the caller reconnects for them. Only a message whose
        body was written and got no reply is `ambiguous`; those after it were never sent and are not.
        """
        if not self._smtp.has_extn("pipelining"):
            return self._send_each(messages, on_accepted)
        return _Pipeline(self, self._smtp, on_accepted).run(messages)

    def _send_each(
        self, messages: Sequence[OutgoingMessage], on_accepted: Callable[[int], None] | None
    ) -> list[SendResult | SmtpFailure]:
        outcomes: list[SendResult | SmtpFailure] = []
        for index, msg in enumerate(messages):
            try:
                outcomes.append(self.send(msg))
                if on_accepted is not None:
                    on_accepted(index)
            except SmtpFailure as failure:
                outcomes.append(failure)
                if self.closed:
                    break
        if len(outcomes) < len(messages):
            ended = outcomes[-1]
            assert isinstance(ended, SmtpFailure)
            if ended.ambiguous:
                ended = self._not_sent(ended)
            outcomes += [ended] * (len(messages) - len(outcomes))
        return outcomes

    def _not_sent(self, ended: SmtpFailure) -> SmtpFailure:
        """What the messages after an ambiguous one get: the session ended before they were sent."""
        text = f"not sent: the session with {self.where} ended while an earlier message awaited its reply"
        return SmtpFailure(None, text, "mail", kind=ended.kind)

    def _mail_options(self, msg: OutgoingMessage) -> list[str]:
        options = []
        if msg.smtputf8:
            options.append("SMTPUTF8")
            if self._smtp.has_extn("8bitmime"):
                options.append("BODY=8BITMIME")
        if self._smtp.has_extn("size"):
            options.append(f"SIZE={len(msg.data)}")
        return options

    def _missing_smtputf8(self, msg: OutgoingMessage) -> SmtpFailure:
        rcpt = msg.recipients[0] if msg.recipients else None
        return SmtpFailure(
            None,
            f"{rcpt or msg.envelope_from} needs SMTPUTF8 (non-ASCII address) but {self.where} does not offer SMTPUTF8",
            "mail",
            recipient=rcpt,
            kind=KIND_SMTPUTF8,
        )

    def _transaction_failed(
        self, code: int, reply: bytes, stage: str, *, recipient: str | None = None
    ) -> SmtpFailure:
        failure = SmtpFailure(code, _reply_text(reply), stage, recipient=recipient)
        if code == 421:  # the server is closing the session
            self._drop()
        else:
            self._rset()
        return failure

    def _all_refused(self, refused: dict[str, tuple[int, str]]) -> SmtpFailure:
        self._rset()
        return _all_refused_failure(refused)

    def _rset(self) -> None:
        try:
            code, _ = self._smtp.rset()
        except (smtplib.SMTPException, OSError):
            self._drop()
            return
        if code != 250:
            # The transaction may still be open on the server: the next MAIL would get "503 nested MAIL
            # command", a 5xx that dead-letters a good message. Start over on a fresh session instead.
            self._drop()

    def check(self) -> bool:
        """NOOP: True while the server still talks to us (False after a drop, a timeout or a 421)."""
        if self.closed:
            return False
        try:
            code, _ = self._smtp.noop()
        except (smtplib.SMTPException, OSError):
            self._drop()
            return False
        if code != 250:
            self.close()
            return False
        return True

    def _drop(self) -> None:
        self.closed = True
        with contextlib.suppress(OSError):
            self._smtp.close()

    def close(self) -> None:
        """QUIT politely; errors ignored (the server may have gone already)."""
        if self.closed:
            return
        self.closed = True
        try:
            self._smtp.quit()
        except (smtplib.SMTPException, OSError):
            pass
        finally:
            self._drop()

    def __enter__(self) -> SmtpSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_LINE_START_DOT = re.compile(rb"(?m)^\.")


def _dot_stuffed(data: bytes) -> bytes:
    """The DATA payload by smtplib's rules (SMTP.data): a dot opening a line (after CRLF or a bare LF, which
    some servers take for a line end) doubled, a last CRLF ensured, then the end mark CRLF.CRLF."""
    data = _LINE_START_DOT.sub(b"..", data)
    if not data.endswith(b"\r\n"):
        data += b"\r\n"
    return data + b".\r\n"


class _Pipeline:
    """RFC 2920 on one session: per message one write (previous body, [RSET], MAIL, RCPT..., DATA), then
    the replies in order. The body waits for the 354 of its DATA, so it travels with the next message.

    The reply to a body is read under the session's `data_timeout`, every other reply under `timeout`.
    A body written in full whose reply never came makes its message ambiguous; nothing else is.
    """

    def __init__(
        self, session: SmtpSession, smtp: smtplib.SMTP, on_accepted: Callable[[int], None] | None = None
    ) -> None:
        self.session = session
        self.smtp = smtp
        self.on_accepted = on_accepted
        self.outcomes: list[SendResult | SmtpFailure | None] = []
        self.body: bytes | None = None  # the accepted message whose body goes out with the next write
        self.body_index = -1
        self.body_accepted: tuple[str, ...] = ()
        self.body_refused: dict[str, tuple[int, str]] = {}
        self.needs_rset = False
        self.stage = "mail"  # the step of the message being set up, for a failure that ends the session
        self.unanswered: int | None = None  # the message whose body went out in full, reply not yet read

    def run(self, messages: Sequence[OutgoingMessage]) -> list[SendResult | SmtpFailure]:
        self.outcomes = [None] * len(messages)
        try:
            for index, msg in enumerate(messages):
                self.stage = "mail"
                if msg.smtputf8 and not self.smtp.has_extn("smtputf8"):
                    self.outcomes[index] = self.session._missing_smtputf8(msg)
                    continue
                self._transaction(index, msg)
            if self.body is not None:
                self.stage = "data"
                self._write(self.body, len(self.body))
                self._body_reply()
        except SmtpFailure as failure:  # a 421: the server ends the session
            self._end(failure)
        except (smtplib.SMTPException, OSError) as error:
            if self.unanswered is not None:
                self.outcomes[self.unanswered] = self.session._no_end_of_data_reply(error)
            self._end(self.session._fail(error, self.stage))
        return [outcome for outcome in self.outcomes if outcome is not None]

    def _write(self, data: bytes, body_size: int) -> None:
        """Send `data`, whose first `body_size` bytes are the body in flight (0: none).

        sendall would not tell how far it got: counting the bytes tells a body that went out in full
        (its final "." is its last byte), and so may have been accepted, from one cut short.
        """
        sock = self.smtp.sock
        if sock is None:
            raise smtplib.SMTPServerDisconnected("please run connect() first")
        view = memoryview(data)
        sent = 0
        try:
            while sent < len(data):
                sent += sock.send(view[sent:])
        finally:
            if body_size and sent >= body_size:
                self.unanswered = self.body_index

    def _transaction(self, index: int, msg: OutgoingMessage) -> None:
        options = self.session._mail_options(msg)
        encoding = "utf-8" if msg.smtputf8 else "ascii"
        command = f"MAIL FROM:<{msg.envelope_from}>{''.join(' ' + o for o in options)}\r\n"
        command += "".join(f"RCPT TO:<{rcpt}>\r\n" for rcpt in msg.recipients) + "DATA\r\n"
        body = self.body or b""
        parts = [body]
        if self.needs_rset:
            parts.append(b"RSET\r\n")
        parts.append(command.encode(encoding))
        self._write(b"".join(parts), len(body))
        if self.body is not None:
            self._body_reply()
        if self.needs_rset:
            self._reply("mail")
            self.needs_rset = False
        code, reply = self._reply("mail")
        failure = SmtpFailure(code, _reply_text(reply), "mail") if code != 250 else None
        self.stage = "rcpt"
        accepted: list[str] = []
        refused: dict[str, tuple[int, str]] = {}
        for rcpt in msg.recipients:
            code, reply = self._reply("rcpt", recipient=rcpt)
            if code in (250, 251):
                accepted.append(rcpt)
            else:
                refused[rcpt] = (code, _reply_text(reply))
        if failure is None and not accepted:
            failure = _all_refused_failure(refused)
        self.stage = "data"
        code, reply = self._reply("data")
        if code == 354 and failure is None:
            self.body = _dot_stuffed(msg.data)
            self.body_index, self.body_accepted, self.body_refused = index, tuple(accepted), refused
            return
        if code == 354:  # DATA accepted without a valid transaction (a confused server): end it empty
            self.smtp.send(b".\r\n")
            self._reply("data")
        self.outcomes[index] = failure or SmtpFailure(code, _reply_text(reply), "data")
        self.needs_rset = True

    def _body_reply(self) -> None:
        index, self.body = self.body_index, None
        code, reply = self.session._end_of_data_reply()
        self.unanswered = None  # answered, whatever the answer: the server has told us
        if code == 421:  # the server is closing the session: nothing after this gets an answer
            self.session._drop()
            raise SmtpFailure(code, _reply_text(reply), "data")
        if code == 250:
            self.session.messages_sent += 1
            self.outcomes[index] = SendResult(self.body_accepted, self.body_refused, code, _reply_text(reply))
            if self.on_accepted is not None:
                self.on_accepted(index)
        else:
            self.outcomes[index] = SmtpFailure(code, _reply_text(reply), "data")

    def _reply(self, stage: str, recipient: str | None = None) -> tuple[int, bytes]:
        code, reply = self.smtp.getreply()
        if code == 421:  # the server is closing the session: nothing after this gets an answer
            self.session._drop()
            raise SmtpFailure(code, _reply_text(reply), stage, recipient=recipient)
        return code, reply

    def _end(self, failure: SmtpFailure) -> None:
        """The session is over: the message in flight and every later one get the failure."""
        self.session._drop()
        for index, outcome in enumerate(self.outcomes):
            if outcome is None:
                self.outcomes[index] = failure


def _all_refused_failure(refused: dict[str, tuple[int, str]]) -> SmtpFailure:
    # A temporary refusal wins: retrying makes sense for that recipient.
    rcpt, (code, text) = next(
        ((r, reply) for r, reply in refused.items() if 400 <= reply[0] < 500), next(iter(refused.items()))
    )
    if len(refused) > 1:
        text = "all recipients refused: " + "; ".join(f"{r}: {c} {t}" for r, (c, t) in refused.items())
    else:
        text = f"{rcpt}: {text}"
    return SmtpFailure(code, text, "rcpt", recipient=rcpt if len(refused) == 1 else None)


def _xoauth2(smtp: smtplib.SMTP, username: str, token: str) -> None:
    blob = base64.b64encode(f"user={username}\x01auth=Bearer {token}\x01\x01".encode()).decode("ascii")
    code, reply = smtp.docmd("AUTH", f"XOAUTH2 {blob}")
    if code == 334:  # the server sent an error challenge (base64 JSON); an empty line gets the final reply
        code, reply = smtp.docmd("")
    if code != 235:
        raise smtplib.SMTPAuthenticationError(code, reply)


def _ehlo(smtp: smtplib.SMTP) -> None:
    code, reply = smtp.ehlo()
    if 400 <= code < 500:
        # "Try again later", not "I do not speak ESMTP": falling back to HELO would lose STARTTLS and AUTH
        # (a StartTLS realm would be dead-lettered as a settings problem on a busy server's hiccup).
        raise smtplib.SMTPHeloError(code, reply)
    if code != 250:
        code, reply = smtp.helo()
        if code != 250:
            raise smtplib.SMTPHeloError(code, reply)


def _scrub(failure: SmtpFailure, secrets: tuple[str | None, ...]) -> SmtpFailure:
    """Belt and braces: a server echoing a credential must not put it into our logs."""
    text = failure.text
    for secret in secrets:
        if secret and len(secret) >= 4 and secret in text:
            text = text.replace(secret, "**********")
    if text == failure.text:
        return failure
    return SmtpFailure(
        failure.code,
        text,
        failure.stage,
        recipient=failure.recipient,
        kind=failure.kind,
        ambiguous=failure.ambiguous,
    )


def open_session(
    settings: SmtpSettings, *, ca_file: str | None = None, oauth_token: str | None = None
) -> SmtpSession:
    """Connect, (Start)TLS, EHLO and AUTH as the settings say. Raises SmtpFailure with the failing stage."""
    where = f"{settings.host}:{settings.port}"
    context: ssl.SSLContext | None = None
    if settings.ssl or settings.starttls:
        context = tls_context(ca_file, settings.verify_tls)
        if not settings.verify_tls:
            log.warning(
                "TLS certificate verification is OFF for %s (verify_tls=false): the connection is encrypted "
                "but the server is not authenticated",
                where,
            )
    smtp: smtplib.SMTP
    if settings.ssl:
        assert context is not None
        smtp = smtplib.SMTP_SSL(local_hostname="localhost", timeout=settings.connect_timeout, context=context)
    else:
        smtp = smtplib.SMTP(local_hostname="localhost", timeout=settings.connect_timeout)
    smtp.set_debuglevel(0)  # debug output would print AUTH exchanges
    stage = "connect"
    deadline = settings.connect_timeout
    password = settings.secret("password") if settings.auth_type == "password" else None
    try:
        # connect() includes the TLS handshake (SMTP_SSL) and reading the greeting, under connect_timeout.
        # smtplib sets _host only in __init__ (which would connect at once); TLS checks the name against it.
        smtp._host = settings.host  # type: ignore[attr-defined]
        code, reply = smtp.connect(settings.host, settings.port)
        if code != 220:
            raise smtplib.SMTPConnectError(code, reply)
        assert smtp.sock is not None
        smtp.local_hostname = _local_name() or f"[{smtp.sock.getsockname()[0]}]"
        smtp.sock.settimeout(settings.timeout)
        deadline = settings.timeout
        stage = "ehlo"
        _ehlo(smtp)
        if settings.starttls:
            stage = "tls"
            if not smtp.has_extn("starttls"):
                raise SmtpFailure(
                    None,
                    "StartTLS is on but the server did not offer it; refusing to continue in plaintext",
                    "tls",
                    kind=KIND_TLS,
                )
            smtp.sock.settimeout(settings.connect_timeout)  # the handshake is part of connecting
            deadline = settings.connect_timeout
            smtp.starttls(context=context)
            smtp.sock.settimeout(settings.timeout)
            deadline = settings.timeout
            stage = "ehlo"
            _ehlo(smtp)
        if settings.auth:
            stage = "auth"
            _authenticate(smtp, settings, oauth_token, password, where)
    except BaseException as error:
        failure = error if isinstance(error, SmtpFailure) else None
        with contextlib.suppress(OSError):
            smtp.close()
        if failure is None:
            if not isinstance(error, smtplib.SMTPException | OSError):
                raise
            failure = _convert(error, stage, where, deadline)
        raise _scrub(failure, (password, oauth_token)) from None
    return SmtpSession(smtp, settings, where, data_timeout=settings.data_timeout)


def _authenticate(
    smtp: smtplib.SMTP, settings: SmtpSettings, oauth_token: str | None, password: str | None, where: str
) -> None:
    offered = smtp.esmtp_features.get("auth")
    if offered is None:
        tls_hint = (
            " (many servers, aiosmtpd among them, offer AUTH only after TLS: turn on starttls or ssl)"
            if not (settings.ssl or settings.starttls)
            else ""
        )
        raise SmtpFailure(
            None, f"auth is on but {where} offers no AUTH{tls_hint}", "auth", kind=KIND_AUTH_UNAVAILABLE
        )
    username = settings.username or ""
    if settings.auth_type == "xoauth2":
        if "XOAUTH2" not in offered.upper().split():
            raise SmtpFailure(
                None,
                f"auth_type is xoauth2 but {where} offers only AUTH {offered}",
                "auth",
                kind=KIND_AUTH_UNAVAILABLE,
            )
        if not oauth_token:
            raise SmtpFailure(
                None,
                "auth_type is xoauth2 but no access token was obtained",
                "auth",
                kind=KIND_AUTH_UNAVAILABLE,
            )
        _xoauth2(smtp, username, oauth_token)
        return
    mechanisms = set(offered.upper().split())
    if {"PLAIN", "LOGIN"} & mechanisms:
        password_auth(smtp, username, password or "", "PLAIN" if "PLAIN" in mechanisms else "LOGIN")
        return
    if "CRAM-MD5" not in mechanisms:
        raise SmtpFailure(
            None,
            f"{where} offers AUTH {offered}, none of PLAIN, LOGIN, CRAM-MD5",
            "auth",
            kind=KIND_AUTH_UNAVAILABLE,
        )
    try:
        smtp.login(username, password or "")
    except UnicodeError:  # smtplib encodes as ASCII; the error object would carry the password
        raise SmtpFailure(
            None,
            "CRAM-MD5 (the only AUTH offered) cannot carry a non-ASCII username or password",
            "auth",
            kind=KIND_AUTH_UNAVAILABLE,
        ) from None


def _b64(text: str) -> str:
    return base64.b64encode(text.encode("utf-8")).decode("ascii")


def password_auth(smtp: smtplib.SMTP, username: str, password: str, mechanism: str) -> tuple[int, bytes]:
    """AUTH PLAIN (RFC 4616) or LOGIN in UTF-8; smtplib.login would fail on a non-ASCII password."""
    if mechanism == "PLAIN":
        code, reply = smtp.docmd("AUTH", f"PLAIN {_b64(chr(0) + username + chr(0) + password)}")
    else:
        code, reply = smtp.docmd("AUTH", f"LOGIN {_b64(username)}")
        if code == 334:
            code, reply = smtp.docmd(_b64(password))
    if code != 235:
        raise smtplib.SMTPAuthenticationError(code, reply)
    return code, reply


# ---- reuse -----------------------------------------------------------------------------------------------


@dataclass
class _Pooled:
    version: int
    session: SmtpSession


@dataclass
class SessionPool:
    """The worker process's open sessions: one per realm, for one settings version.

    Not for concurrent use of one realm's session from several threads (Celery's prefork pool runs one
    task per process). `max_messages` reopens proactively when a provider limits messages per session.
    """

    max_messages: int | None = None
    opener: Callable[..., SmtpSession] = open_session
    _sessions: dict[str, _Pooled] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def session(
        self,
        realm: str,
        version: int,
        settings: SmtpSettings,
        *,
        ca_file: str | None = None,
        oauth_token: str | None = None,
    ) -> SmtpSession:
        """The realm's open session after a NOOP, or a new one (new version, dropped, or at max_messages)."""
        with self._lock:
            pooled = self._sessions.pop(realm, None)
        if pooled is not None:
            usable = (
                pooled.version == version
                and (self.max_messages is None or pooled.session.messages_sent < self.max_messages)
                and pooled.session.check()
            )
            if usable:
                with self._lock:
                    self._sessions[realm] = pooled
                return pooled.session
            pooled.session.close()
        session = self.opener(settings, ca_file=ca_file, oauth_token=oauth_token)
        with self._lock:
            old = self._sessions.pop(realm, None)
            self._sessions[realm] = _Pooled(version, session)
        if old is not None:
            old.session.close()
        return session

    def send(
        self,
        realm: str,
        version: int,
        settings: SmtpSettings,
        msg: OutgoingMessage,
        *,
        ca_file: str | None = None,
        oauth_token: str | None = None,
        on_data: Callable[[], None] | None = None,
    ) -> SendResult:
        """Send on the pooled session; one fresh session when a reused one turns out dropped (421, EOF).

        An ambiguous failure is raised, never resent here: the server may hold the message, so the caller
        retries it later (with back-off and the same Message-ID) rather than making a second copy now.
        """
        for last_try in (False, True):
            session = self.session(realm, version, settings, ca_file=ca_file, oauth_token=oauth_token)
            reused = session.messages_sent > 0
            try:
                return session.send(msg, on_data=on_data)
            except SmtpFailure as error:
                if error.reconnect or session.closed:
                    self.discard(realm)
                if error.reconnect and reused and not last_try and not error.ambiguous:
                    continue
                raise
        raise AssertionError("unreachable")

    def discard(self, realm: str) -> None:
        """Close and forget the realm's session (after an error, or to pick up new settings now)."""
        with self._lock:
            pooled = self._sessions.pop(realm, None)
        if pooled is not None:
            pooled.session.close()

    def close_all(self) -> None:
        with self._lock:
            pooled = list(self._sessions.values())
            self._sessions.clear()
        for item in pooled:
            item.session.close()

    def __len__(self) -> int:
        return len(self._sessions)

    def __contains__(self, realm: Any) -> bool:
        return realm in self._sessions
