"""The "Test Connection" probe: the delivery path's own steps, one by one, timed and described.

Stages, in the order they happen (a stage that does not apply is left out; the probe stops at the first
failing stage):

    plain      resolve, connect, ehlo, [auth], [send]
    starttls   resolve, connect, ehlo, tls, [auth], [send]
    ssl        resolve, connect, tls, ehlo, [auth], [send]

Each stage is a step of worker/smtp/connect.py's Opener (the code every delivery opens its sessions
with), and `send` is SmtpSession.send (the code every message goes out with): a passing test proves the
path delivery takes. What the probe adds: an overall deadline whose watchdog shuts the socket (a server
that accepts and never answers cannot hold a worker), a record of each stage (time, detail, TLS
certificate), the XOAUTH2 token from a provider, and a hint for the failure (worker/probe/hints.py).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import smtplib
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from config.smtp import SmtpSettings
from worker.content.message import OutgoingMessage
from worker.probe.hints import hint_for
from worker.probe.status import ProbeStatus, Stage, default_deadline, mode_of
from worker.smtp.connect import Opener, StepResult
from worker.smtp.failures import TLS_KINDS, Kind, SmtpFailure, scrub

OAuthTokenProvider = Callable[[SmtpSettings], str]
MessageSource = OutgoingMessage | Callable[[], OutgoingMessage]


class Deadline:
    """The probe's overall limit: each step waits at most min(its own time-out, what is left).

    A watchdog also shuts down the watched socket at the limit, so even a step that ignores the time-out
    (a slow trickle of bytes) cannot run past it. Plays the Opener's `Limits`.
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
        """The time-out for the next step; a DEADLINE failure when nothing is left."""
        left = self.remaining()
        if left <= 0.001:
            raise SmtpFailure(None, f"the overall limit of {self.seconds:g}s ran out", "deadline",
                              kind=Kind.DEADLINE)  # fmt: skip
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


class _Probe:
    def __init__(self, opener: Opener, deadline: Deadline) -> None:
        self.opener = opener
        self.settings = opener.settings
        self.deadline = deadline
        self.stages: list[Stage] = []
        self.message_id: str | None = None

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[Stage]:
        """Times one stage; the body fills in detail/info; a failure ends it as failed and is re-raised."""
        record = Stage(name, True, 0.0, "")
        started = time.monotonic()
        try:
            yield record
        except SmtpFailure as failure:
            record.ok = False
            record.detail = f"{failure.code} {failure.text}" if failure.code is not None else failure.text
            raise
        finally:
            record.ms = (time.monotonic() - started) * 1000
            self.stages.append(record)

    def run_step(self, name: str, step: Callable[[], StepResult]) -> None:
        with self.stage(name) as record:
            try:
                result = self.opener.step(name, step)
            except SmtpFailure as failure:
                if failure.kind in TLS_KINDS and failure.kind != Kind.NO_STARTTLS:
                    record.info["certificate"] = self.certificate_of_the_server()
                    if record.info["certificate"]:
                        names = ", ".join(record.info["certificate"].get("names") or [])
                        raise failure.with_text(
                            f"{failure.text} (the certificate is for {names or record.info['certificate']['subject']};"
                            f" issuer {record.info['certificate'].get('issuer', '?')})"
                        ) from None
                raise
            record.detail, record.info = describe(name, result, self.settings.verify_tls)

    def authenticate(self, provider: OAuthTokenProvider | None) -> None:
        """The auth step; for XOAUTH2 the token comes from `provider` (without one: not tested)."""
        if self.settings.auth_type == "xoauth2":
            if provider is None:
                self.stages.append(Stage("auth", None, 0.0,
                                         "not tested: no XOAUTH2 access token provider is available here"))  # fmt: skip
                return
            try:
                self.opener.oauth_token = provider(self.settings)
            except Exception as error:
                with self.stage("auth"):
                    raise SmtpFailure(None, f"could not obtain an XOAUTH2 access token: {error}", "auth",
                                      kind=Kind.TOKEN) from None  # fmt: skip
        self.run_step("auth", self.opener.authenticate)

    def send(self, source: MessageSource) -> None:
        with self.stage("send") as record:
            try:
                message = source() if callable(source) else source
            except Exception as error:  # the test message could not be built (an address, the template)
                raise SmtpFailure(None, str(error), "send", kind=Kind.MESSAGE) from None
            self.message_id = message.message_id
            session = self.opener.session(data_timeout=None)  # the probe's own deadline governs
            assert self.opener.sock is not None
            self.opener.sock.settimeout(self.deadline.limit(self.settings.timeout))
            try:
                result = session.send(message)
            except SmtpFailure as failure:
                raise SmtpFailure(failure.code, f"{failure.stage.upper()}: {failure.text}", "send",
                                  kind=failure.kind, ambiguous=failure.ambiguous) from None  # fmt: skip
            self.opener.last_reply = (result.code, result.reply)
            record.info.update({"recipients": list(result.accepted), "message_id": message.message_id,
                                "size": len(message.data)})  # fmt: skip
            record.detail = f"{', '.join(result.accepted)} accepted: {result.code} {result.reply}"
            refused = "; ".join(f"{r}: {c} {t}" for r, (c, t) in result.refused.items())
            if refused:
                record.detail += f"; refused {refused}"

    def certificate_of_the_server(self) -> dict[str, Any] | None:
        """The server's certificate without verification, to tell the admin whose it is. Best effort."""
        if self.deadline.remaining() < 0.2 or not self.opener.addresses:
            return None
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        timeout = min(
            self.settings.connect_timeout, self.settings.timeout, self.deadline.remaining() / 2, 5.0
        )
        family, kind, proto, _name, address = self.opener.addresses[0]
        try:
            with socket.socket(family, kind, proto) as raw:
                raw.settimeout(timeout)
                raw.connect(address)
                if self.settings.starttls:
                    smtp = smtplib.SMTP(local_hostname="localhost")
                    smtp.sock, smtp.file = raw, None
                    if smtp.getreply()[0] != 220 or smtp.ehlo()[0] != 250 or smtp.docmd("STARTTLS")[0] != 220:
                        return None
                with context.wrap_socket(raw, server_hostname=self.settings.host) as tls:
                    der = tls.getpeercert(binary_form=True)
                    return certificate_info(der) if der else None
        except (OSError, smtplib.SMTPException, ValueError):
            return None

    def quit(self) -> None:
        smtp, sock = self.opener.smtp, self.opener.sock
        if smtp is not None and sock is not None and not self.deadline.expired:
            with contextlib.suppress(Exception):
                sock.settimeout(min(1.0, max(self.deadline.remaining(), 0.01)))
                smtp.quit()
        self.opener.close()


def describe(stage: str, result: StepResult, verified: bool) -> tuple[str, dict[str, Any]]:
    """A step's result as the status shows it (the certificate decoded, no raw bytes)."""
    info = dict(result.info)
    detail = result.detail
    der = info.pop("der", None)
    if der:
        info.update(certificate_info(der))
    if stage == "tls":
        parts = [detail]
        if "subject" in info:
            parts[0] = detail.split(" | ")[0]
            parts.append(
                f"certificate {info['subject']} issued by {info['issuer']}, expires {info['not_after']}"
            )
        if not verified:
            parts.append("WARNING: verify_tls is off, the certificate and host name were NOT checked")
        after = detail.split(" | ", 1)[1] if " | " in detail else ""
        detail = "; ".join(parts) + (f" | {after}" if after else "")
    return detail, info


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
    opener = Opener(settings, ca_file=ca_file, limits=deadline)
    probe = _Probe(opener, deadline)
    status = ProbeStatus(ok=False, host=settings.host, port=settings.port, mode=mode_of(settings),
                         stages=probe.stages, deadline_s=limit, verify_tls=settings.verify_tls)  # fmt: skip
    try:
        for name, step in opener.plan():
            if name == "auth":
                probe.authenticate(oauth_token_provider)
            else:
                probe.run_step(name, step)
        if send is not None:
            probe.send(send)
    except SmtpFailure as failure:
        # A step whose time-out was cut to what was left fails a hair before the watchdog fires: the overall
        # limit is what ended it all the same.
        kind = failure.kind
        if deadline.expired or deadline.remaining() <= 0.05:
            kind = Kind.DEADLINE
        failed = probe.stages[-1] if probe.stages else Stage("resolve", False, 0.0, failure.text)
        failed.ok = False
        status.failed_stage, status.kind, status.error = failed.name, str(kind), failed.detail or failure.text
        if kind == Kind.DEADLINE and "overall limit" not in status.error:
            status.error = f"the overall limit of {limit:g}s ran out ({failed.name}): {status.error}"
        status.smtp_code = failure.code
        status.smtp_reply = failure.text if failure.code is not None else None
        status.hint = hint_for(failed.name, kind, settings, text=failure.text, code=failure.code)
    else:
        status.ok = True
        if opener.last_reply is not None:
            status.smtp_code, status.smtp_reply = opener.last_reply
    finally:
        if opener.smtp is not None:
            status.extensions = {name: value.strip() for name, value in opener.smtp.esmtp_features.items()}
        probe.quit()
        deadline.cancel()
    status.message_id = probe.message_id
    status.elapsed_ms = (time.monotonic() - deadline.started) * 1000
    return _scrubbed(status, opener.secrets)


def certificate_info(der: bytes) -> dict[str, Any]:
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


def _scrub_value(value: Any, secrets: tuple[str | None, ...]) -> Any:
    if isinstance(value, str):
        return scrub(value, secrets)
    if isinstance(value, dict):
        return {key: _scrub_value(item, secrets) for key, item in value.items()}
    if isinstance(value, list):
        return [_scrub_value(item, secrets) for item in value]
    return value


def _scrubbed(status: ProbeStatus, secrets: tuple[str | None, ...]) -> ProbeStatus:
    """Belt and braces: a server echoing a credential must not put it into the status (the same scrubber
    as delivery's failures)."""
    for stage in status.stages:
        stage.detail = _scrub_value(stage.detail, secrets)
        stage.info = _scrub_value(stage.info, secrets)
    status.error = _scrub_value(status.error, secrets)
    status.smtp_reply = _scrub_value(status.smtp_reply, secrets)
    return status
