"""The worker process's open sessions, one per realm and settings version, reused across messages."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from config.smtp import SmtpSettings
from worker.content.message import OutgoingMessage
from worker.smtp.connect import open_session
from worker.smtp.failures import SmtpFailure
from worker.smtp.session import SmtpSession
from worker.smtp.wire import SendResult


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
