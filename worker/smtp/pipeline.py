"""RFC 2920 PIPELINING on one session: several messages, one round trip each (bulk's fast path)."""

from __future__ import annotations

import smtplib
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from worker.content.message import OutgoingMessage
from worker.smtp.failures import SmtpFailure, reply_text
from worker.smtp.wire import SendResult, all_refused_failure, dot_stuffed

if TYPE_CHECKING:
    from worker.smtp.session import SmtpSession


class Pipeline:
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
        failure = SmtpFailure(code, reply_text(reply), "mail") if code != 250 else None
        self.stage = "rcpt"
        accepted: list[str] = []
        refused: dict[str, tuple[int, str]] = {}
        for rcpt in msg.recipients:
            code, reply = self._reply("rcpt", recipient=rcpt)
            if code in (250, 251):
                accepted.append(rcpt)
            else:
                refused[rcpt] = (code, reply_text(reply))
        if failure is None and not accepted:
            failure = all_refused_failure(refused)
        self.stage = "data"
        code, reply = self._reply("data")
        if code == 354 and failure is None:
            self.body = dot_stuffed(msg.data)
            self.body_index, self.body_accepted, self.body_refused = index, tuple(accepted), refused
            return
        if code == 354:  # DATA accepted without a valid transaction (a confused server): end it empty
            self.smtp.send(b".\r\n")
            self._reply("data")
        self.outcomes[index] = failure or SmtpFailure(code, reply_text(reply), "data")
        self.needs_rset = True

    def _body_reply(self) -> None:
        index, self.body = self.body_index, None
        code, reply = self.session._end_of_data_reply()
        self.unanswered = None  # answered, whatever the answer: the server has told us
        if code == 421:  # the server is closing the session: nothing after this gets an answer
            self.session._drop()
            raise SmtpFailure(code, reply_text(reply), "data")
        if code == 250:
            self.session.messages_sent += 1
            self.outcomes[index] = SendResult(self.body_accepted, self.body_refused, code, reply_text(reply))
            if self.on_accepted is not None:
                self.on_accepted(index)
        else:
            self.outcomes[index] = SmtpFailure(code, reply_text(reply), "data")

    def _reply(self, stage: str, recipient: str | None = None) -> tuple[int, bytes]:
        code, reply = self.smtp.getreply()
        if code == 421:  # the server is closing the session: nothing after this gets an answer
            self.session._drop()
            raise SmtpFailure(code, reply_text(reply), stage, recipient=recipient)
        return code, reply

    def _end(self, failure: SmtpFailure) -> None:
        """The session is over: the message in flight and every later one get the failure."""
        self.session._drop()
        for index, outcome in enumerate(self.outcomes):
            if outcome is None:
                self.outcomes[index] = failure
