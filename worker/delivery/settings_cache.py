"""A worker's cache of realm settings, checked against the stored version (one HGET a realm and second,
config/recent.py; a save is seen within `MAILWORKER_REALM_CACHE_SECONDS`)."""

from __future__ import annotations

import logging
import time

from config.codec import UnusableSettings
from config.crypto import KeyNotHeld
from config.epoch import Epoch, store_empty_error
from config.errors import NotFound
from config.recent import Recent
from config.smtp import SmtpSettings
from config.store import SettingsStore
from worker.liveness.heartbeat import process_name

log = logging.getLogger(__name__)


class SettingsCache:
    def __init__(self, store: SettingsStore, recent_seconds: float = 0.0) -> None:
        self.store = store
        self._versions: Recent[str, int | None] = Recent(recent_seconds)
        self._entries: dict[str, tuple[int, SmtpSettings]] = {}
        self._epoch: Epoch | None = None  # the store's epoch (config/epoch.py) as this process last saw it

    def get(self, realm: str) -> tuple[int, SmtpSettings]:
        """The realm's saved settings and their version; a save is seen within the realm cache's seconds.

        NotFound when the realm has none, or its secret cannot be used (UnusableSettings: a broken
        binding, or a key this worker lacks); StoreUnavailable (retryable) when the store holds no settings
        at all (wiped, or never configured): the job waits for an admin instead of dying.
        """
        version = self._versions.get(realm, lambda: self.store.version(realm))
        cached = self._entries.get(realm)
        if cached is not None and cached[0] == version:
            return cached
        self.check_epoch()
        try:
            saved = self.store.saved(realm)
        except KeyNotHeld as error:
            # This realm's only: a dead letter (reason settings) saying what to do, not a task failure.
            raise UnusableSettings(
                f"realm {realm}: the stored secret cannot be used: {error.reason}; add that key to "
                f"MAILWORKER_SECRET_KEY, or enter the secret again (`mailworker settings save --realm {realm} "
                "--password-stdin`)"
            ) from None
        if saved is None:
            self._entries.pop(realm, None)
            if self._epoch is None:
                raise store_empty_error(self.store.wipe())
            raise NotFound(f"realm {realm} has no saved SMTP settings")
        self._entries[realm] = (saved.version, saved.settings)
        return saved.version, saved.settings

    def check_epoch(self) -> None:
        """On every refresh (and every sweep): a vanished or replaced epoch means Redis lost its data."""
        current = self.store.epoch()
        seen = self._epoch
        if seen is not None and (current is None or current.id != seen.id):
            created = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(seen.created_at))
            log.error(
                "the config store was wiped: its epoch %s (created %s) is %s. Every realm's settings, queued "
                "job, result and dead letter stored before are lost; restore the settings (`mailworker settings "
                "import FILE`) or save each realm again",
                seen.id, created, "gone" if current is None else f"replaced by {current.id}",
            )  # fmt: skip
            self.store.record_wipe(seen, process_name())
            self._entries.clear()
        self._epoch = current
