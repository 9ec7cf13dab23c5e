"""Locales and message bundles: which strings a mail is rendered with, and the helpers templates call.

Templates are shared by all locales; every translated string comes from a message bundle
(`messages/<locale>.json`, flat key -> string) through the `msg(key, **args)` helper. A key is looked up
in: the realm's bundle for the locale, the default bundle for the locale, the realm's `en` bundle, the
default `en` bundle. An unknown locale renders in `en`. Bundles are read once and merged per locale.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import templates as _templates_package
from worker.content.limits import MAX_TEMPLATE_BYTES, MAX_VALUE_CHARS, size_of
from worker.content.render_error import RenderError

DEFAULT_LOCALE = "en"
DEFAULT_TEMPLATES_DIR = Path(_templates_package.__file__).resolve().parent

_LOCALE_TAG = re.compile(r"^[a-z]{2,8}(-[a-z0-9]{1,8})*\Z")
_PLACEHOLDER = re.compile(r"\{\{|\}\}|\{([A-Za-z_][A-Za-z0-9_]*)\}")


def locale_candidates(locale: str | None) -> tuple[str, ...]:
    """'de_DE.UTF-8' -> ('de-de', 'de'); 'DE' -> ('de',); junk or None -> (). Most specific first."""
    if not locale or not isinstance(locale, str):
        return ()
    tag = locale.split(".", 1)[0].split("@", 1)[0].strip().lower().replace("_", "-")
    if not _LOCALE_TAG.match(tag):
        return ()
    parts = tag.split("-")
    return tuple("-".join(parts[:n]) for n in range(len(parts), 0, -1))


def _bundle_locale(file_name: str) -> str:
    tag = file_name.removesuffix(".json").lower().replace("_", "-")
    if not _LOCALE_TAG.match(tag):
        raise RenderError(
            f"messages/{file_name}: the file name must be a locale tag like de.json or pt-BR.json"
        )
    return tag


def load_bundles(messages_dir: Path) -> dict[str, dict[str, str]]:
    """Every `<locale>.json` in the directory; a broken bundle is a RenderError naming file and key."""
    bundles: dict[str, dict[str, str]] = {}
    if not messages_dir.is_dir():
        return bundles
    for path in sorted(messages_dir.glob("*.json")):
        locale = _bundle_locale(path.name)
        size = path.stat().st_size
        if size > MAX_TEMPLATE_BYTES:  # read whole, and `msg` placeholders multiply what it holds
            raise RenderError(f"{path}: {size} bytes; the limit is {MAX_TEMPLATE_BYTES}")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as error:
            raise RenderError(f"{path}: not valid JSON: {error}") from None
        if not isinstance(data, dict):
            raise RenderError(f"{path}: must be a JSON object of key -> string")
        for key, value in data.items():
            if not isinstance(value, str):
                raise RenderError(f"{path}: key {key!r} must map to a string, not {type(value).__name__}")
        bundles.setdefault(locale, {}).update(data)
    return bundles


def format_message(text: str, args: Mapping[str, Any], key: str = "") -> str:
    """Fill `{name}` placeholders from args (`{{` and `}}` are literal braces).

    Deliberately not str.format: that would let a bundle reach attributes (`{user.__class__}`).
    The result is capped at MAX_VALUE_CHARS, counted as it is filled: a bundle string repeating `{name}`
    multiplies a template's value.
    """
    if "{" not in text and "}" not in text:
        return text
    size = len(text)

    def fill(match: re.Match[str]) -> str:
        nonlocal size
        name = match.group(1)
        if name is None:
            return match.group(0)[0]
        try:
            value = args[name]
        except KeyError:
            raise RenderError(f"message {key!r}: no value for placeholder {{{name}}}") from None
        size += size_of(value)
        if size > MAX_VALUE_CHARS:
            raise RenderError(f"message {key!r}: over the limit of {MAX_VALUE_CHARS} characters once filled")
        return str(value)

    return _PLACEHOLDER.sub(fill, text)


# Plural rules by language: does the count take the singular form? (French: 0 and 1 do.)
_SINGULAR: dict[str, Callable[[int], bool]] = {"fr": lambda n: n in (0, 1), "pt": lambda n: n in (0, 1)}


def _singular(locale: str, n: int) -> bool:
    return _SINGULAR.get(locale.split("-", 1)[0], lambda n: n == 1)(n)


class Messages:
    """The merged strings of one locale (for one realm), and the helpers templates call."""

    def __init__(self, locale: str, strings: dict[str, str]) -> None:
        self.locale = locale
        self.strings = strings
        self._durations: dict[int, str] = {}  # link lifetimes repeat: a handful of values per realm
        # Bound once and reused by every render: the per-render cost is a dict merge.
        self.helpers: dict[str, Any] = {
            "msg": self.msg,
            "has_msg": self.has,
            "human_duration": self.duration,
            "format_time": self.time,
        }

    def has(self, key: str) -> bool:
        return key in self.strings

    def msg(self, key: str, /, **args: Any) -> str:
        try:
            text = self.strings[key]
        except KeyError:
            raise RenderError(
                f"message {key!r} is in no bundle (locale {self.locale}, fallback en)"
            ) from None
        return format_message(text, args, key)

    def duration(self, minutes: Any) -> str:
        """Minutes for humans: 90 -> '1 hour 30 minutes', 1440 -> '1 day' (in this locale)."""
        n = _whole_minutes(minutes)
        found = self._durations.get(n)
        if found is None:
            days, rest = divmod(n, 1440)
            hours, mins = divmod(rest, 60)
            parts = [
                (unit, count) for unit, count in (("day", days), ("hour", hours), ("minute", mins)) if count
            ]
            found = " ".join(
                self.msg(f"duration.{unit}.{'one' if _singular(self.locale, count) else 'other'}", n=count)
                for unit, count in parts or [("minute", 0)]
            )
            if len(self._durations) < 256:
                self._durations[n] = found
        return found

    def time(self, value: Any) -> str:
        """An event time (ISO 8601, or epoch milliseconds as IAM servers send) in words, in UTC.

        A value that is neither is shown as it came: a notice must not be lost over a date format.
        """
        moment = parse_time(value)
        if moment is None:
            return str(value)
        return self.msg(
            "datetime.format",
            year=moment.year,
            month=moment.month,
            month_name=self.msg(f"month.{moment.month}"),
            day=moment.day,
            time=f"{moment:%H:%M}",
        )


def _whole_minutes(minutes: Any) -> int:
    if isinstance(minutes, str) and minutes.strip().isdigit():
        minutes = int(minutes)
    if isinstance(minutes, bool) or not isinstance(minutes, int | float) or minutes != minutes:
        raise ValueError(f"link_expiration must be a number of minutes, not {minutes!r}")
    if minutes < 0:
        raise ValueError(f"link_expiration must not be negative ({minutes})")
    return round(minutes)


# Below this a number is taken as epoch seconds, above as milliseconds (1e11 ms is March 1973).
_EPOCH_MS_THRESHOLD = 100_000_000_000


def parse_time(value: Any) -> datetime | None:
    """ISO 8601 string (naive means UTC) or epoch milliseconds (or seconds) -> aware UTC datetime."""
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    try:
        if isinstance(value, int | float) and not isinstance(value, bool):
            seconds = value / 1000 if abs(value) >= _EPOCH_MS_THRESHOLD else value
            return datetime.fromtimestamp(seconds, UTC)
        if isinstance(value, str):
            moment = datetime.fromisoformat(value.strip())
            return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    except (ValueError, OverflowError, OSError):
        return None
    return None


def _default_messages(locale: str) -> Messages:
    return DEFAULT_BUNDLES.messages(locale)


def human_duration(minutes: int, locale: str) -> str:
    """`link_expiration` (minutes) for humans with the default bundles: 90, 'en' -> '1 hour 30 minutes'."""
    return _default_messages(locale).duration(minutes)


class Bundles:
    """Default bundles plus (optionally) a realm's, merged per locale on first use."""

    def __init__(self, default: dict[str, dict[str, str]], realm: dict[str, dict[str, str]] | None = None):
        if DEFAULT_LOCALE not in default:
            raise RenderError(f"the default templates have no messages/{DEFAULT_LOCALE}.json")
        self.default = default
        self.realm = realm or {}
        self.available = frozenset(default) | frozenset(self.realm)
        self._merged: dict[str, Messages] = {}
        self._resolved: dict[str | None, str] = {}

    def resolve(self, locale: str | None) -> str:
        resolved = self._resolved.get(locale)
        if resolved is None:
            candidates = [tag for tag in locale_candidates(locale) if tag in self.available]
            resolved = candidates[0] if candidates else DEFAULT_LOCALE
            if len(self._resolved) < 1000:  # bounded: locales come from jobs
                self._resolved[locale] = resolved
        return resolved

    def messages(self, locale: str | None) -> Messages:
        resolved = self.resolve(locale)
        found = self._merged.get(resolved)
        if found is None:
            strings: dict[str, str] = {}
            for tag in dict.fromkeys((DEFAULT_LOCALE, *reversed(locale_candidates(resolved)))):
                strings.update(self.default.get(tag, {}))
                strings.update(self.realm.get(tag, {}))
            found = self._merged[resolved] = Messages(resolved, strings)
        return found


DEFAULT_BUNDLES = Bundles(load_bundles(DEFAULT_TEMPLATES_DIR / "messages"))
