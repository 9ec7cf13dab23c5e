"""A real SMTP server on loopback for tests (aiosmtpd in a thread), with TLS, AUTH and fault injection.

Quick use::

    with SmtpTestServer() as server:                       # plain SMTP on 127.0.0.1:<free port>
        session = open_session(server.settings())          # SmtpSettings pointing at it
        ...
        assert server.received_for("alice@example.com")

Constructor options (all keyword):

- ``tls="none" | "starttls" | "implicit"``: StartTLS offered on the plain port, or TLS from the first byte.
  The certificate comes from the session-wide ``session_ca()`` (a trustme CA); clients pass
  ``server.ca_file`` as ``ca_file``. ``cert_hosts`` (default ``("localhost", "127.0.0.1")``) sets the names
  in the certificate: pass e.g. ``("wrong.example.invalid",)`` for a host-name mismatch.
- ``offer_starttls=False``: the server has TLS but leaves STARTTLS out of its EHLO reply (a stripping
  attacker); with ``tls="none"`` there is no STARTTLS at all.
- ``require_auth=(user, password)``: AUTH PLAIN / LOGIN checked, mail refused (530) until authenticated.
  ``xoauth2=(user, token)``: also offer AUTH XOAUTH2 and check the bearer token (failure: a 334 challenge
  with a JSON error, then 535, as Gmail does). ``auth_exclude=("PLAIN",)`` hides mechanisms.
- ``auth_require_tls=True`` (aiosmtpd's default): AUTH is neither offered nor accepted before STARTTLS.
  Pass False to offer AUTH on a plaintext connection. Implicit TLS always counts as TLS (aiosmtpd itself
  would refuse AUTH there, since it only knows about STARTTLS).
- ``smtputf8=True``: advertise SMTPUTF8 (False: MAIL ... SMTPUTF8 gets 501, as aiosmtpd does).
- ``hostname``: the name in the greeting and EHLO reply.
- ``pipelining=True``: advertise PIPELINING (RFC 2920); aiosmtpd reads pipelined commands in order.

Attributes: ``host`` ("127.0.0.1"), ``port`` (bound to port 0, so never a free-port race), ``ca_file``.
``settings(**overrides)`` returns a validated ``SmtpSettings`` for this server (JSON names, e.g.
``server.settings(verify_tls=False)``; ssl / starttls / auth follow the server's options, timeouts 5 s);
``settings_dict(**overrides)`` the same as a dict.

Behaviour injection (thread-safe, may be called while clients are connected):

- ``fail_next(reply="451 4.3.0 try again", times=1, at="rcpt")``: the next `times` MAIL / RCPT / DATA
  commands (``at="mail" | "rcpt" | "data"``) get `reply` instead of being accepted.
- ``reject_recipient(address, reply="550 5.1.1 no such user")``: RCPT for that address always refused.
- ``drop_after(n_messages, reply=None)``: each connection is closed after its n-th accepted message (with
  `reply`, e.g. "421 4.7.0 too many messages", answered to the next command before closing). None resets.
- ``drop_next_connection(times=1)``: the next connections are closed before the greeting.
- ``drop_next(at="mail", times=1, after=0)``: after `after` such commands went through as usual, the next
  `times` MAIL / RCPT / DATA commands (``at="mail" | "rcpt" | "data"``) get no reply: the connection is
  closed instead. At "data" that is before the 354, so the server never has the body.
- ``lose_reply_next(times=1, after=0)``: after `after` messages answered as usual, the next `times` messages
  are accepted and recorded, then the connection is closed without a reply to their final "." (the
  client cannot know that the message arrived).
- ``delay_data_reply(seconds, times=1, after=0)``: after `after` messages answered as usual, the next `times`
  messages are recorded at once and their 250 to the final "." comes `seconds` later (a server scanning
  or queueing; RFC 5321 allows 10 minutes). `seconds` stays under the server's idle timeout (60 s). A
  client that gives up meanwhile leaves the message recorded, as a real server would have it.

The three count across connections, in the order the server sees commands and messages.
- ``reset()``: clears injected behaviour and recordings.

Recording:

- ``messages``: list of ``ReceivedMessage`` (``mail_from``, ``recipients``, ``data`` raw bytes,
  ``message`` parsed with ``email.policy.default``, ``mail_options``, ``auth`` the credentials the
  connection authenticated with as ``AuthSeen(mechanism, login, secret)`` or None, ``tls``, ``connection``).
  Raw UTF-8 headers (SMTPUTF8 mail) are read as ASCII by the bytes parser: decode ``data`` and use
  ``email.message_from_string`` to inspect those.
- ``auth_attempts``: every AUTH the server checked (``AuthSeen`` with ``success``).
- ``commands``: every command verb received, as ``(connection number, "EHLO")`` pairs (no arguments, so
  no secrets). ``connections``: how many connections were accepted.
- ``verbs()``: just the verbs, in order, e.g. ``["EHLO", "STARTTLS", "EHLO", "AUTH", "MAIL", ...]``.
- ``received_for(address)``: the messages whose envelope recipients include `address`.
- ``wait_for(count, timeout=5.0)``: block until `count` messages arrived (AssertionError otherwise).

Helpers: ``session_ca()`` (session-wide ``TestCA``), ``blackhole_listener()`` (context manager yielding a
port that accepts TCP and never answers, for timeouts), ``closed_port()`` (a port that refuses
connections), ``silent_after_greeting()`` (context manager yielding a port whose server greets and then
never answers: command timeouts), ``smtp_server_fixture(**options)`` (generator for a pytest fixture:
``yield from smtp_server_fixture()``).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import email
import email.policy
import json
import socket
import ssl
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any, Literal

import trustme
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import MISSING, SMTP, AuthResult, Envelope, LoginPassword, Session

LOCALHOST = "127.0.0.1"
TlsMode = Literal["none", "starttls", "implicit"]


# ---- certificates ----------------------------------------------------------------------------------------


class TestCA:
    """A throw-away certificate authority (trustme) whose PEM is written to `ca_file` for clients."""

    __test__ = False  # not a pytest test class

    def __init__(self) -> None:
        self.ca = trustme.CA()
        self.directory = Path(tempfile.mkdtemp(prefix="mw-test-ca-"))
        self.ca_file = str(self.directory / "ca.pem")
        self.ca.cert_pem.write_to_path(self.ca_file)
        self._contexts: dict[tuple[str, ...], ssl.SSLContext] = {}
        self._lock = threading.Lock()

    def server_context(self, *hostnames: str) -> ssl.SSLContext:
        """A server-side SSLContext with a certificate for `hostnames` (default localhost, 127.0.0.1)."""
        names = hostnames or ("localhost", LOCALHOST)
        with self._lock:
            context = self._contexts.get(names)
            if context is None:
                context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
                self.ca.issue_cert(*names).configure_cert(context)
                self._contexts[names] = context
            return context

    def client_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=self.ca_file)


_ca: TestCA | None = None
_ca_lock = threading.Lock()


def session_ca() -> TestCA:
    """The session-wide test CA (created on first use)."""
    global _ca
    with _ca_lock:
        if _ca is None:
            _ca = TestCA()
        return _ca


# ---- recordings ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AuthSeen:
    mechanism: str
    login: str
    secret: str
    success: bool = True


@dataclass
class ReceivedMessage:
    mail_from: str
    recipients: list[str]
    data: bytes
    message: EmailMessage
    mail_options: list[str]
    auth: AuthSeen | None
    tls: bool
    connection: int


@dataclass
class _Behaviour:
    fail: dict[str, list[str]] = field(default_factory=lambda: {"mail": [], "rcpt": [], "data": []})
    rejected: dict[str, str] = field(default_factory=dict)
    drop_after: int | None = None
    drop_reply: str | None = None
    drop_connections: int = 0
    # One entry per coming command / message, consumed in order: drop it? lose its reply? delay it by?
    drop_at: dict[str, list[bool]] = field(default_factory=lambda: {"mail": [], "rcpt": [], "data": []})
    lose_replies: list[bool] = field(default_factory=list)
    reply_delays: list[float] = field(default_factory=list)


# ---- the aiosmtpd side -----------------------------------------------------------------------------------


class _Handler:
    """aiosmtpd hooks; runs in the server's event-loop thread."""

    def __init__(self, server: SmtpTestServer) -> None:
        self.server = server

    async def handle_EHLO(
        self, smtp: SMTP, session: Session, envelope: Envelope, hostname: str, responses: list[str]
    ) -> list[str]:
        session.host_name = hostname  # aiosmtpd leaves this to the 5-argument hook
        if not self.server.offer_starttls:
            responses = [r for r in responses if r[4:].upper() != "STARTTLS"]
        if self.server.pipelining:
            responses = [*responses[:-1], "250-PIPELINING", responses[-1]]
        return responses

    async def handle_MAIL(
        self, smtp: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> Any:
        return self.server._take_failure("mail") or MISSING

    async def handle_RCPT(
        self, smtp: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> Any:
        failure = self.server._take_failure("rcpt")
        if failure:
            return failure
        with self.server._lock:
            rejected = self.server._behaviour.rejected.get(address.lower())
        return rejected or MISSING

    async def handle_DATA(self, smtp: SMTP, session: Session, envelope: Envelope) -> str:
        failure = self.server._take_failure("data")
        if failure:
            return failure
        assert isinstance(smtp, _RecordingSMTP)
        raw = envelope.original_content or b""
        parsed = email.message_from_bytes(raw, policy=email.policy.default)
        assert isinstance(parsed, EmailMessage)
        received = ReceivedMessage(
            mail_from=envelope.mail_from or "",
            recipients=list(envelope.rcpt_tos),
            data=raw,
            message=parsed,
            mail_options=list(envelope.mail_options),
            auth=session.auth_data if isinstance(session.auth_data, AuthSeen) else None,
            tls=smtp.is_tls,
            connection=smtp.connection_number,
        )
        smtp.delivered += 1
        self.server._record(received)
        reply = f"250 2.0.0 OK queued as {len(self.server.messages)}"
        delay = self.server._take_reply_delay()
        if delay:
            await asyncio.sleep(delay)
        if self.server._take_lost_reply():
            smtp._close()  # aiosmtpd's push of the reply below then goes nowhere
        return reply

    async def auth_XOAUTH2(self, smtp: SMTP, args: list[str]) -> AuthResult:
        if len(args) < 2:
            blob = await smtp.challenge_auth("")
            if blob is MISSING:
                return AuthResult(success=False, handled=False)
            assert isinstance(blob, bytes)
        else:
            try:
                blob = base64.b64decode(args[1], validate=True)
            except ValueError:
                await smtp.push("501 5.5.2 Can't decode base64")
                return AuthResult(success=False, handled=True)
        fields = dict(
            part.split("=", 1) for part in blob.decode("utf-8", "replace").split("\x01") if "=" in part
        )
        login = fields.get("user", "")
        token = fields.get("auth", "").removeprefix("Bearer ")
        expected = self.server.xoauth2
        ok = expected is not None and (login, token) == expected
        seen = AuthSeen("XOAUTH2", login, token, ok)
        self.server._record_auth(seen)
        if ok:
            return AuthResult(success=True, auth_data=seen)
        error = json.dumps({"status": "401", "schemes": "Bearer", "scope": "https://mail.example.com/"})
        await smtp.challenge_auth(error)  # the client answers with an empty line
        return AuthResult(
            success=False, handled=False, message="535 5.7.8 Username and Password not accepted"
        )


class _RecordingSMTP(SMTP):
    """aiosmtpd's SMTP with connection numbering, command log, drops and implicit-TLS awareness."""

    def __init__(self, server: SmtpTestServer, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.test_server = server
        self.connection_number = 0
        self.delivered = 0
        self.implicit_tls = server.tls == "implicit"
        self._drop_pending = False
        # Decided here rather than through aiosmtpd's argument, which warns when AUTH is allowed without
        # TLS: implicit TLS counts as TLS (aiosmtpd only knows STARTTLS), plaintext AUTH only on request.
        self._auth_require_tls = server.auth_require_tls and not self.implicit_tls
        self._smtp_methods = {name: self._wrap(name, method) for name, method in self._smtp_methods.items()}

    @property
    def is_tls(self) -> bool:
        return self.implicit_tls or self._tls_protocol is not None

    def _wrap(self, name: str, method: Any) -> Any:
        async def recorded(arg: str | None) -> None:
            self.test_server._record_command(self.connection_number, name)
            if self.test_server._take_drop_at(name):
                self._close()
                return
            if self._drop_pending:
                await self.push(self.test_server._behaviour.drop_reply or "421 4.7.0 closing")
                self._close()
                return
            await method(arg)
            if name == "DATA":
                with self.test_server._lock:
                    limit = self.test_server._behaviour.drop_after
                    reply = self.test_server._behaviour.drop_reply
                if limit is not None and self.delivered >= limit:
                    if reply:
                        self._drop_pending = True
                    else:
                        self._close()

        return recorded

    def _close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    async def _handle_client(self) -> None:
        self.connection_number = self.test_server._new_connection()
        if self.test_server._take_drop():
            self._close()
            return
        await super()._handle_client()


class _Controller(Controller):
    """Binds port 0 (no free-port race) and builds our SMTP subclass."""

    def __init__(self, server: SmtpTestServer, **kwargs: Any) -> None:
        self.test_server = server
        super().__init__(_Handler(server), hostname=LOCALHOST, port=0, **kwargs)

    def factory(self) -> SMTP:
        return _RecordingSMTP(self.test_server, self.handler, **self.SMTP_kwargs)

    def _create_server(self) -> Any:
        async def create() -> asyncio.AbstractServer:
            server = await self.loop.create_server(
                self._factory_invoker, host=self.hostname, port=0, ssl=self.ssl_context
            )
            self.port = server.sockets[0].getsockname()[1]
            return server

        return create()


# ---- the test server -------------------------------------------------------------------------------------


class SmtpTestServer:
    """A real SMTP server on 127.0.0.1 (see the module docstring for options and recordings)."""

    def __init__(
        self,
        *,
        tls: TlsMode = "none",
        cert_hosts: tuple[str, ...] = ("localhost", LOCALHOST),
        offer_starttls: bool = True,
        require_auth: tuple[str, str] | None = None,
        xoauth2: tuple[str, str] | None = None,
        auth_exclude: tuple[str, ...] = (),
        auth_require_tls: bool = True,
        smtputf8: bool = True,
        hostname: str = "smtp.test.local",
        pipelining: bool = False,
    ) -> None:
        if tls not in ("none", "starttls", "implicit"):
            raise ValueError(f"tls must be none, starttls or implicit, not {tls!r}")
        self.tls = tls
        self.cert_hosts = cert_hosts
        self.offer_starttls = offer_starttls
        self.require_auth = require_auth
        self.xoauth2 = xoauth2
        self.auth_exclude = auth_exclude
        self.auth_require_tls = auth_require_tls
        self.smtputf8 = smtputf8
        self.hostname = hostname
        self.pipelining = pipelining
        self.host = LOCALHOST
        self.port = 0
        self.ca = session_ca() if tls != "none" else None
        self.messages: list[ReceivedMessage] = []
        self.auth_attempts: list[AuthSeen] = []
        self.commands: list[tuple[int, str]] = []
        self.connections = 0
        self._behaviour = _Behaviour()
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)
        self._controller: _Controller | None = None

    # -- lifecycle --

    @property
    def ca_file(self) -> str | None:
        """The CA PEM that signed this server's certificate (None without TLS)."""
        return self.ca.ca_file if self.ca else None

    def start(self) -> SmtpTestServer:
        context = self.ca.server_context(*self.cert_hosts) if self.ca else None
        kwargs: dict[str, Any] = {
            "server_hostname": self.hostname,
            "enable_SMTPUTF8": self.smtputf8,
            "decode_data": False,
            "ready_timeout": 10.0,
            "timeout": 60,
        }
        if self.tls == "starttls":
            kwargs["tls_context"] = context
        elif self.tls == "implicit":
            kwargs["ssl_context"] = context
        if self.require_auth or self.xoauth2:
            kwargs["auth_required"] = True
            kwargs["authenticator"] = self._authenticate
        kwargs["auth_exclude_mechanism"] = [*self.auth_exclude, *([] if self.xoauth2 else ["XOAUTH2"])]
        self._controller = _Controller(self, **kwargs)
        self._controller.start()
        self.port = self._controller.port
        self.reset()  # forget the controller's own start-up probe connection
        return self

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    def __enter__(self) -> SmtpTestServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def settings_dict(self, **overrides: Any) -> dict[str, Any]:
        """JSON-named SmtpSettings fields for this server (from noreply@example.com, short timeouts)."""
        data: dict[str, Any] = {
            "from": "noreply@example.com",
            "host": self.host,
            "port": self.port,
            "ssl": self.tls == "implicit",
            "starttls": self.tls == "starttls",
            "connect_timeout": 5,
            "timeout": 5,
        }
        if self.require_auth:
            data.update(auth=True, username=self.require_auth[0], password=self.require_auth[1])
        data.update(overrides)
        return data

    def settings(self, **overrides: Any) -> Any:
        """A validated SmtpSettings for this server; `overrides` use the JSON names."""
        from config.smtp import parse_smtp_settings

        return parse_smtp_settings(self.settings_dict(**overrides))

    # -- behaviour --

    def fail_next(self, reply: str = "451 4.3.0 try again", times: int = 1, at: str = "rcpt") -> None:
        if at not in ("mail", "rcpt", "data"):
            raise ValueError("at must be mail, rcpt or data")
        with self._lock:
            self._behaviour.fail[at].extend([reply] * times)

    def reject_recipient(self, address: str, reply: str = "550 5.1.1 no such user") -> None:
        with self._lock:
            self._behaviour.rejected[address.lower()] = reply

    def drop_after(self, n_messages: int | None, reply: str | None = None) -> None:
        with self._lock:
            self._behaviour.drop_after = n_messages
            self._behaviour.drop_reply = reply

    def drop_next_connection(self, times: int = 1) -> None:
        with self._lock:
            self._behaviour.drop_connections += times

    def drop_next(self, at: str = "mail", times: int = 1, after: int = 0) -> None:
        if at not in ("mail", "rcpt", "data"):
            raise ValueError("at must be mail, rcpt or data")
        with self._lock:
            self._behaviour.drop_at[at] = [False] * after + [True] * times

    def lose_reply_next(self, times: int = 1, after: int = 0) -> None:
        with self._lock:
            self._behaviour.lose_replies = [False] * after + [True] * times

    def delay_data_reply(self, seconds: float, times: int = 1, after: int = 0) -> None:
        if not 0 < seconds < 60:
            raise ValueError("seconds must be above 0 and below the server's idle timeout (60 s)")
        with self._lock:
            self._behaviour.reply_delays = [0.0] * after + [seconds] * times

    def reset(self) -> None:
        with self._lock:
            self._behaviour = _Behaviour()
            self.messages.clear()
            self.auth_attempts.clear()
            self.commands.clear()
            self.connections = 0

    # -- recordings --

    def received_for(self, address: str) -> list[ReceivedMessage]:
        wanted = address.lower()
        with self._lock:
            return [m for m in self.messages if wanted in (r.lower() for r in m.recipients)]

    def wait_for(self, count: int, timeout: float = 5.0) -> list[ReceivedMessage]:
        deadline = time.monotonic() + timeout
        with self._arrived:
            while len(self.messages) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"expected {count} messages within {timeout}s, got {len(self.messages)}"
                    )
                self._arrived.wait(left)
            return list(self.messages)

    def verbs(self) -> list[str]:
        """The command verbs received so far, in order."""
        with self._lock:
            return [verb for _, verb in self.commands]

    # -- called from the server thread --

    def _take_failure(self, at: str) -> str | None:
        with self._lock:
            queue = self._behaviour.fail[at]
            return queue.pop(0) if queue else None

    def _take_drop_at(self, verb: str) -> bool:
        with self._lock:
            queue = self._behaviour.drop_at.get(verb.lower())
            return queue.pop(0) if queue else False

    def _take_lost_reply(self) -> bool:
        with self._lock:
            queue = self._behaviour.lose_replies
            return queue.pop(0) if queue else False

    def _take_reply_delay(self) -> float:
        with self._lock:
            delays = self._behaviour.reply_delays
            return delays.pop(0) if delays else 0.0

    def _take_drop(self) -> bool:
        with self._lock:
            if self._behaviour.drop_connections > 0:
                self._behaviour.drop_connections -= 1
                return True
            return False

    def _new_connection(self) -> int:
        with self._lock:
            self.connections += 1
            return self.connections

    def _record_command(self, connection: int, verb: str) -> None:
        with self._lock:
            self.commands.append((connection, verb))

    def _record(self, message: ReceivedMessage) -> None:
        with self._arrived:
            self.messages.append(message)
            self._arrived.notify_all()

    def _record_auth(self, seen: AuthSeen) -> None:
        with self._lock:
            self.auth_attempts.append(seen)

    def _authenticate(
        self, smtp: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: Any
    ) -> AuthResult:
        assert isinstance(auth_data, LoginPassword)
        login = auth_data.login.decode("utf-8", "replace")
        secret = auth_data.password.decode("utf-8", "replace")
        ok = self.require_auth is not None and (login, secret) == self.require_auth
        seen = AuthSeen(mechanism, login, secret, ok)
        self._record_auth(seen)
        if ok:
            return AuthResult(success=True, auth_data=seen)
        return AuthResult(success=False, handled=False)  # handled=False: aiosmtpd answers 535 itself


# ---- network helpers -------------------------------------------------------------------------------------


@contextlib.contextmanager
def blackhole_listener() -> Iterator[int]:
    """A port on 127.0.0.1 that completes TCP handshakes and never says a word (for timeout tests)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind((LOCALHOST, 0))
        sock.listen(64)
        yield int(sock.getsockname()[1])
    finally:
        sock.close()


@contextlib.contextmanager
def holding_listener(greeting: bytes = b"") -> Iterator[tuple[int, list[float]]]:
    """A port whose server accepts, sends `greeting` (if any) and then holds the connection without a word.

    Yields (port, accept times). With no greeting it is a black hole that also counts connections.
    """
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind((LOCALHOST, 0))
    listener.listen(256)
    listener.settimeout(0.2)
    stop = threading.Event()
    accepted_at: list[float] = []
    held: list[socket.socket] = []

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                continue
            accepted_at.append(time.time())
            if greeting:
                conn.sendall(greeting)
            held.append(conn)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield int(listener.getsockname()[1]), accepted_at
    finally:
        stop.set()
        thread.join(timeout=5)
        for conn in held:
            conn.close()
        listener.close()


@contextlib.contextmanager
def silent_after_greeting(greeting: bytes = b"220 mute.test.local ESMTP\r\n") -> Iterator[int]:
    """A port whose server sends the greeting and then never answers a command (command timeouts)."""
    with holding_listener(greeting) as (port, _accepted_at):
        yield port


_reserved: list[socket.socket] = []


def closed_port() -> int:
    """A port on 127.0.0.1 that refuses connections: bound (so nobody else takes it) but not listening."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((LOCALHOST, 0))
    _reserved.append(sock)
    return int(sock.getsockname()[1])


def smtp_server_fixture(**options: Any) -> Iterator[SmtpTestServer]:
    """Body of a pytest fixture: ``@pytest.fixture def smtp_server(): yield from smtp_server_fixture()``."""
    server = SmtpTestServer(**options).start()
    try:
        yield server
    finally:
        server.stop()
