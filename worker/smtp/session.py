"""One open SMTP session: send a message (MAIL, RCPT, DATA), or several (pipelined), check it, close it.

A failure after the whole message and its final "." were written, before the server's reply to them, is
`ambiguous`: the server may have accepted the message. It is never resent on the spot (a second copy is
worse than a later retry), and its deadline is the realm's `data_timeout` (RFC 5321 allows the server 10
minutes there), not the per-command `timeout`.
"""

from __future__ import annotations

import contextlib
import smtplib
from collections.abc import Callable, Sequence

from config.smtp import SmtpSettings
from worker.content.message import OutgoingMessage
from worker.smtp.failures import Kind, SmtpFailure, convert, reply_text
from worker.smtp.wire import SendResult, all_refused_failure, dot_stuffed


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
        failure = convert(error, stage, self.where, self._settings.timeout)
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
        failure = convert(error, "data", self.where, waited)
        self._drop()  # the reply may still arrive: nothing else can be read on this connection
        if failure.code is not None:  # e.g. smtplib's 500 for an overlong line: a reply, if a broken one
            return failure
        if failure.kind == Kind.TIMEOUT:
            what = f"no reply to the end of data from {self.where} after {waited:g}s"
        elif failure.kind == Kind.CLOSED:
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
            raise SmtpFailure(None, f"session with {self.where} is closed", "mail", kind=Kind.CLOSED)
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
                    kind=Kind.SMTPUTF8,
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
                    refused[rcpt] = (code, reply_text(reply))
            if not accepted:
                raise self._all_refused(refused)
            stage = "data"
            # smtplib's data() in steps, so a failure after the body is told from one before it.
            code, reply = smtp.docmd("DATA")
            if code != 354:
                raise self._transaction_failed(code, reply, "data")
            if on_data is not None:
                on_data()
            smtp.send(dot_stuffed(msg.data))
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
        return SendResult(tuple(accepted), refused, code, reply_text(reply))

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
        from worker.smtp.pipeline import Pipeline  # it drives this session

        return Pipeline(self, self._smtp, on_accepted).run(messages)

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
            kind=Kind.SMTPUTF8,
        )

    def _transaction_failed(
        self, code: int, reply: bytes, stage: str, *, recipient: str | None = None
    ) -> SmtpFailure:
        failure = SmtpFailure(code, reply_text(reply), stage, recipient=recipient)
        if code == 421:  # the server is closing the session
            self._drop()
        else:
            self._rset()
        return failure

    def _all_refused(self, refused: dict[str, tuple[int, str]]) -> SmtpFailure:
        self._rset()
        return all_refused_failure(refused)

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
