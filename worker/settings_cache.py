"""A worker's cache of realm settings, checked against the stored version on every use (one HGET)."""

from __future__ import annotations

from config.errors import NotFound
from config.smtp import SmtpSettings
from config.store import SettingsStore


class SettingsCache:
    def __init__(self, store: SettingsStore) -> None:
        self.store = store
        self._entries: dict[str, tuple[int, SmtpSettings]] = {}

    def get(self, realm: str) -> tuple[int, SmtpSettings]:
        """The realm's saved settings and their version; a save is seen by the very next message."""
        version = self.store.version(realm)
        cached = self._entries.get(realm)
        if cached is not None and cached[0] == version:
            return cached
        saved = self.store.saved(realm)
        if saved is None:
            self._entries.pop(realm, None)
            raise NotFound(f"realm {realm} has no saved SMTP settings")
        self._entries[realm] = (saved.version, saved.settings)
        return saved.version, saved.settings
