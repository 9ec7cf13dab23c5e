"""Jinja2 rendering of the e-mail templates (subject, text, HTML), per realm and locale.

Layout (defaults in the `templates` package, realm overrides under `<realm_templates_dir>/<realm>/`):

    text/<name>.txt.j2      plain-text body (not escaped)
    html/<name>.html.j2     HTML body (autoescaped), usually extending html/_layout.html.j2
    messages/<locale>.json  flat key -> string; the subject is the key `<name>.subject`

Templates are shared by all locales; every translated string comes from a message bundle through the
`msg(key, **args)` helper. A key is looked up in: the realm's bundle for the locale, the default bundle
for the locale, the realm's `en` bundle, the default `en` bundle. An unknown locale renders in `en`.

Every template runs in Jinja2's immutable sandbox with `StrictUndefined`: a realm admin's template
cannot reach Python internals, and a missing required variable fails the render instead of sending a
mail with a hole in it. Any failure is a `RenderError`, which is permanent: rendering is deterministic,
so a retry would fail the same way (the job goes to the dead letters).

Cost: environments are built once per realm (templates compiled once, Jinja's cache), bundles are read
once and merged per locale. A realm's override directory is checked for changes (file names, sizes,
mtimes) at most every `reload_interval` seconds; the default templates are read once per process.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any

from jinja2 import (
    BaseLoader,
    ChoiceLoader,
    Environment,
    FileSystemLoader,
    StrictUndefined,
    TemplateError,
    TemplateNotFound,
    TemplateSyntaxError,
)
from jinja2.filters import FILTERS as DEFAULT_FILTERS
from jinja2.runtime import Context
from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError
from jinja2.utils import Namespace

import templates as _templates_package
from config.errors import MailWorkerError

TEMPLATE_NAMES = (
    "email-verification",
    "password-reset",
    "execute-actions",
    "email-update-confirmation",
    "identity-provider-link",
    "email-test",
    "event-login_error",
    "event-update_password",
    "event-update_totp",
    "event-remove_totp",
    "event-update_credential",
    "event-remove_credential",
    "notice",
)


@dataclass(frozen=True)
class RenderedEmail:
    subject: str
    text: str
    html: str


DEFAULT_LOCALE = "en"
DEFAULT_TEMPLATES_DIR = Path(_templates_package.__file__).resolve().parent
PARTS = {"text": "txt", "html": "html"}

# A realm name becomes a path component: letters, digits, '.', '_', '-', never '..' (same rule as jobs).
REALM_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}\Z")
# Same rule as worker/jobs.py; names starting with '_' (layouts, macros) cannot be rendered directly.
TEMPLATE_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}\Z")
_LOCALE_TAG = re.compile(r"^[a-z]{2,8}(-[a-z0-9]{1,8})*\Z")
_PLACEHOLDER = re.compile(r"\{\{|\}\}|\{([A-Za-z_][A-Za-z0-9_]*)\}")
_BLANK_RUNS = re.compile(r"\n[ \t]*(?:\n[ \t]*)+\n")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
# Names the renderer puts into every template's context (they win over the job's context).
RESERVED_NAMES = ("msg", "has_msg", "human_duration", "format_time", "realm", "locale", "subject")


class RenderError(MailWorkerError):
    """A template could not be rendered: names the template, the part, the line and the variable."""

    def __init__(self, message: str, *, template: str | None = None, part: str | None = None) -> None:
        super().__init__(message)
        self.template = template
        self.part = part


@dataclass(frozen=True)
class TemplateVariables:
    """What a template needs from the job's context (documentation; tests hold the templates to it)."""

    required: tuple[str, ...]
    optional: tuple[str, ...]


_LINK_MAIL = TemplateVariables(required=("user", "link"), optional=("realm_name", "link_expiration"))
_EVENT_MAIL = TemplateVariables(required=("user", "event"), optional=("realm_name",))
TEMPLATE_VARIABLES: dict[str, TemplateVariables] = {
    "email-verification": _LINK_MAIL,
    "password-reset": _LINK_MAIL,
    "execute-actions": TemplateVariables(
        required=("user", "link", "required_actions"), optional=("realm_name", "link_expiration")
    ),
    "email-update-confirmation": TemplateVariables(
        required=("user", "link", "new_email"), optional=("realm_name", "link_expiration")
    ),
    "identity-provider-link": TemplateVariables(
        required=("user", "link", "identity_provider"),
        optional=("realm_name", "link_expiration", "identity_provider_username"),
    ),
    "email-test": TemplateVariables(required=(), optional=("realm_name", "user")),
    "notice": TemplateVariables(required=("notice",), optional=("realm_name", "user")),
    **{name: _EVENT_MAIL for name in TEMPLATE_NAMES if name.startswith("event-")},
}


# --- locales and message bundles -------------------------------------------------------------------


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


def _load_bundles(messages_dir: Path) -> dict[str, dict[str, str]]:
    """Every `<locale>.json` in the directory; a broken bundle is a RenderError naming file and key."""
    bundles: dict[str, dict[str, str]] = {}
    if not messages_dir.is_dir():
        return bundles
    for path in sorted(messages_dir.glob("*.json")):
        locale = _bundle_locale(path.name)
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
    """
    if "{" not in text and "}" not in text:
        return text

    def fill(match: re.Match[str]) -> str:
        name = match.group(1)
        if name is None:
            return match.group(0)[0]
        try:
            value = args[name]
        except KeyError:
            raise RenderError(f"message {key!r}: no value for placeholder {{{name}}}") from None
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
    return _DEFAULT_BUNDLES.messages(locale)


def human_duration(minutes: int, locale: str) -> str:
    """`link_expiration` (minutes) for humans with the default bundles: 90, 'en' -> '1 hour 30 minutes'."""
    return _default_messages(locale).duration(minutes)


class _Bundles:
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


_DEFAULT_BUNDLES = _Bundles(_load_bundles(DEFAULT_TEMPLATES_DIR / "messages"))


# --- environments ----------------------------------------------------------------------------------


def _autoescape(name: str | None) -> bool:
    return name is not None and name.endswith(".html.j2")


# Realm admins edit templates: the sandbox keeps them away from Python internals, and these caps keep a
# template from making a worker allocate gigabytes ("{{ 'a' * 10**9 }}", "{{ '%999999999d' % 1 }}").
MAX_TEMPLATE_BYTES = 256 * 1024  # one realm override file
MAX_VALUE_CHARS = 1_000_000  # one string or list a template builds with *, +, %, format, padding, namespace
_MAX_POWER_BITS = 4096
_SEQUENCES = (str, list, tuple)
# A width or precision of five digits or more, in %-style or {}-style format strings (or a '*' width).
_BIG_WIDTH = re.compile(r"%[#0\- +]*(\*|\d{5,}|\d*\.(\*|\d{5,}))|\{[^{}]*:[^{}]*?\d{5,}[^{}]*\}")
_PADDING_METHODS = frozenset({"center", "ljust", "rjust", "zfill", "expandtabs"})


def _too_big(size: float) -> None:
    if size > MAX_VALUE_CHARS:
        raise SecurityError(f"a value of {size:.0f} items is over the template limit of {MAX_VALUE_CHARS}")


def _check_format(fmt: Any) -> None:
    if isinstance(fmt, str) and _BIG_WIDTH.search(fmt):
        raise SecurityError(f"format widths of 10000 or more (or '*') are not allowed: {fmt[:40]!r}")


class _SizedLoader(FileSystemLoader):
    """A realm's override directory: a file over MAX_TEMPLATE_BYTES is an error of that template."""

    def get_source(self, environment: Environment, template: str) -> tuple[str, str, Callable[[], bool]]:
        source, filename, uptodate = super().get_source(environment, template)
        if len(source) > MAX_TEMPLATE_BYTES:
            raise TemplateError(f"{template} has {len(source)} characters; the limit is {MAX_TEMPLATE_BYTES}")
        return source, filename, uptodate


class _CappedNamespace(Namespace):
    """`namespace()` whose attributes cannot grow past the limit (`{% set ns.x = ns.x ~ ns.x %}` loops)."""

    def __setitem__(self, name: str, value: Any) -> None:
        if isinstance(value, _SEQUENCES):
            _too_big(len(value))
        super().__setitem__(name, value)


class _GuardedSandbox(ImmutableSandboxedEnvironment):
    intercepted_binops = frozenset({"*", "**", "%", "+"})

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        if operator == "*":
            for seq, n in ((left, right), (right, left)):
                if isinstance(seq, _SEQUENCES) and isinstance(n, int):
                    _too_big(len(seq) * max(n, 0))
        elif operator == "**":
            big = isinstance(left, int) and isinstance(right, int) and abs(left) > 1 and right > 0
            if big and right * abs(left).bit_length() > _MAX_POWER_BITS:
                raise SecurityError(f"{left} ** {right} is too large for a template")
        elif operator == "%":
            _check_format(left)
        elif operator == "+" and isinstance(left, _SEQUENCES) and isinstance(right, _SEQUENCES):
            _too_big(len(left) + len(right))
        return super().call_binop(context, operator, left, right)

    def call(__self, __context: Context, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        target = getattr(__obj, "__wrapped__", __obj)  # str.format comes wrapped by the sandbox
        owner = getattr(target, "__self__", None)
        name = getattr(target, "__name__", "")
        if isinstance(owner, str):
            if name in ("format", "format_map"):
                _check_format(owner)
            elif name in _PADDING_METHODS:
                _too_big(max([len(owner), *(a for a in args if isinstance(a, int))]))
            elif name == "replace" and len(args) >= 2 and isinstance(args[1], str):
                _too_big(len(owner) * max(len(args[1]), 1) if args[0] == "" else len(owner) + len(args[1]))
            elif name == "join":
                items = list(args[0]) if args else []
                _too_big(sum(len(str(i)) for i in items) + len(owner) * len(items))
                args = (items, *args[1:])
        return super().call(__context, __obj, *args, **kwargs)


def _guarded_filter(name: str, check: Callable[..., None]) -> Callable[..., Any]:
    original = DEFAULT_FILTERS[name]

    def guarded(*args: Any, **kwargs: Any) -> Any:
        check(*args, **kwargs)
        return original(*args, **kwargs)

    # Keep Jinja's pass_eval_context / pass_environment markers of the original.
    guarded.__dict__.update(original.__dict__)
    return guarded


def _check_width_filter(value: Any, width: Any = 80, *_: Any, **__: Any) -> None:
    if isinstance(width, int):
        _too_big(width)


def _check_replace_filter(_ctx: Any, value: Any, old: Any, new: Any, *_: Any, **__: Any) -> None:
    text, new = str(value), str(new)
    _too_big(len(text) * max(len(new), 1) if old == "" else len(text) + len(new))


def _guarded_join(ctx: Any, value: Any, d: Any = "", attribute: Any = None) -> Any:
    items = list(value)  # a range or a generator: its length is only known once it is listed
    _too_big(sum(len(str(i)) for i in items) + len(str(d)) * len(items))
    return DEFAULT_FILTERS["join"](ctx, items, d, attribute)


_FILTER_GUARDS: dict[str, Callable[..., None]] = {
    "format": lambda value, *_, **__: _check_format(value),
    "center": _check_width_filter,
    "indent": _check_width_filter,
    "replace": _check_replace_filter,
}


def _environment(loader: BaseLoader) -> ImmutableSandboxedEnvironment:
    # One environment type for defaults and realm overrides: the sandbox costs little once templates are
    # compiled, and a default template copied into a realm directory behaves the same there.
    env = _GuardedSandbox(
        loader=loader,
        undefined=StrictUndefined,
        autoescape=_autoescape,
        trim_blocks=True,
        lstrip_blocks=True,
        auto_reload=False,  # realm directories are watched by _RealmEntry; defaults never change at runtime
        cache_size=1000,
    )
    env.globals["namespace"] = _CappedNamespace
    for name, check in _FILTER_GUARDS.items():
        env.filters[name] = _guarded_filter(name, check)
    _guarded_join.__dict__.update(DEFAULT_FILTERS["join"].__dict__)  # pass_eval_context, like the original
    env.filters["join"] = _guarded_join
    return env


@dataclass
class _Source:
    """What one realm renders with: its environment (realm dir, then defaults) and merged bundles."""

    env: ImmutableSandboxedEnvironment
    bundles: _Bundles
    dirs: tuple[Path, ...]  # where template files are looked up, first wins

    def template_file(self, name: str) -> Path | None:
        for directory in self.dirs:
            path = directory / name
            if path.is_file():
                return path
        return None


@dataclass
class _RealmEntry:
    source: _Source
    signature: tuple[tuple[str, int, int], ...] | None
    checked_at: float


def _signature(realm_dir: Path) -> tuple[tuple[str, int, int], ...] | None:
    """Names, sizes and mtimes of a realm's override files; None when it overrides nothing."""
    entries: list[tuple[str, int, int]] = []
    for sub in ("text", "html", "messages"):
        try:
            with os.scandir(realm_dir / sub) as scan:
                for entry in scan:
                    if entry.is_file():
                        stat = entry.stat()
                        entries.append((f"{sub}/{entry.name}", stat.st_size, stat.st_mtime_ns))
        except (FileNotFoundError, NotADirectoryError):
            continue
    return tuple(sorted(entries)) or None


def _subject_args(realm: str, context: Mapping[str, Any]) -> dict[str, Any]:
    """Values a `<name>.subject` string may use as placeholders (only those present in the context)."""
    args: dict[str, Any] = {"realm_name": context.get("realm_name") or realm}

    def take(name: str, value: Any) -> None:
        if value is not None and value != "" and not isinstance(value, Mapping | list):
            args[name] = value

    user = context.get("user")
    if isinstance(user, Mapping):
        for field in ("username", "first_name", "last_name", "email"):
            take(field, user.get(field))
        take("name", user.get("first_name") or user.get("username"))
    take("new_email", context.get("new_email"))
    take("identity_provider_username", context.get("identity_provider_username"))
    provider = context.get("identity_provider")
    if isinstance(provider, Mapping):
        take("identity_provider", provider.get("display_name") or provider.get("alias"))
    notice = context.get("notice")
    if isinstance(notice, Mapping):
        take("notice_subject", notice.get("subject"))
    event = context.get("event")
    if isinstance(event, Mapping):
        take("event_type", event.get("type"))
        take("client_id", event.get("client_id"))
        take("ip_address", event.get("ip_address"))
    return args


def single_line(text: str) -> str:
    """Control characters and whitespace runs (CR, LF, tabs, ...) become one space: no header injection."""
    return " ".join(_CONTROL.sub(" ", text).split())


class TemplateRenderer:
    """Renders a template for a realm and locale. Build one per process and reuse it."""

    def __init__(
        self,
        realm_templates_dir: str | None = None,
        *,
        default_templates_dir: str | None = None,
        reload_interval: float = 2.0,
    ) -> None:
        self.realm_root = Path(realm_templates_dir) if realm_templates_dir else None
        self.default_dir = Path(default_templates_dir) if default_templates_dir else DEFAULT_TEMPLATES_DIR
        self.reload_interval = reload_interval
        if self.default_dir == DEFAULT_TEMPLATES_DIR:
            default_bundles = _DEFAULT_BUNDLES
        else:
            default_bundles = _Bundles(_load_bundles(self.default_dir / "messages"))
        self._default_loader = FileSystemLoader(str(self.default_dir))
        self._default = _Source(_environment(self._default_loader), default_bundles, (self.default_dir,))
        self._realms: dict[str, _RealmEntry] = {}

    # -- public ---------------------------------------------------------------------------------------

    def render(
        self, realm: str, template: str, locale: str | None, context: Mapping[str, Any]
    ) -> RenderedEmail:
        source = self._source(realm)
        _check_template(template)
        if not isinstance(context, Mapping):
            raise RenderError(f"template {template}: the context must be a JSON object", template=template)
        messages = source.bundles.messages(locale)
        variables = {**context, **messages.helpers, "realm": realm, "locale": messages.locale}
        # Text first: a missing required variable is then reported by its name, not by a subject placeholder.
        text = self._render_part(source, template, "text", variables)
        subject = self._subject(messages, realm, template, context)
        variables["subject"] = subject
        html = self._render_part(source, template, "html", variables)
        return RenderedEmail(subject=subject, text=text, html=html)

    def exists(self, realm: str | None, template: str) -> bool:
        """True when both bodies (text and HTML) exist for the realm (override or default)."""
        if not isinstance(template, str) or not TEMPLATE_PATTERN.match(template):
            return False
        if realm is not None and not _valid_realm(realm):
            return False
        source = self._default if realm is None else self._source(realm)
        return all(source.template_file(_file_name(template, part)) is not None for part in PARTS)

    def locales(self, realm: str | None = None) -> list[str]:
        """Locales with a bundle (defaults, plus the realm's own when given)."""
        source = self._default if realm is None else self._source(realm)
        return sorted(source.bundles.available)

    def reload(self) -> None:
        """Forget every realm's environment and bundles (they are rebuilt on next use)."""
        self._realms.clear()

    # -- internals ------------------------------------------------------------------------------------

    def _source(self, realm: str) -> _Source:
        if not _valid_realm(realm):
            raise RenderError(
                f"realm {realm!r}: must be 1-128 letters, digits, '.', '_' or '-', starting with a letter "
                "or digit, without '..'"
            )
        if self.realm_root is None:
            return self._default
        now = time.monotonic()
        entry = self._realms.get(realm)
        if entry is not None and now - entry.checked_at < self.reload_interval:
            return entry.source
        realm_dir = self.realm_root / realm
        signature = _signature(realm_dir)
        if entry is not None and entry.signature == signature:
            entry.checked_at = now
            return entry.source
        source = self._default if signature is None else self._realm_source(realm_dir)
        self._realms[realm] = _RealmEntry(source, signature, now)
        return source

    def _realm_source(self, realm_dir: Path) -> _Source:
        bundles = _Bundles(self._default.bundles.default, _load_bundles(realm_dir / "messages"))
        # Realm directory first, then the defaults: an override can extend the default _layout.
        loader = ChoiceLoader([_SizedLoader(str(realm_dir)), self._default_loader])
        return _Source(_environment(loader), bundles, (realm_dir, self.default_dir))

    def _subject(self, messages: Messages, realm: str, template: str, context: Mapping[str, Any]) -> str:
        key = f"{template}.subject"
        try:
            subject = single_line(messages.msg(key, **_subject_args(realm, context)))
        except RenderError as error:
            raise RenderError(
                f"template {template} (subject): {error}", template=template, part="subject"
            ) from None
        if not subject:
            raise RenderError(
                f"template {template} (subject): message {key!r} is empty", template=template, part="subject"
            )
        return subject

    def _render_part(self, source: _Source, template: str, part: str, variables: dict[str, Any]) -> str:
        name = _file_name(template, part)
        try:
            output = source.env.get_template(name).render(variables)
        except TemplateNotFound as error:
            missing = error.name if error.name != name else f"no {name}"
            raise RenderError(
                f"template {template} ({part}): not found: {missing}", template=template, part=part
            ) from None
        except TemplateSyntaxError as error:
            where = self._where(source, name, part, error.filename, error.lineno)
            raise RenderError(
                f"template {template} ({where}): syntax error: {error.message}", template=template, part=part
            ) from None
        except (SecurityError, TemplateError, RenderError) as error:
            where = self._where(source, name, part, *_template_frame(error.__traceback__))
            raise RenderError(
                f"template {template} ({where}): {error}", template=template, part=part
            ) from None
        except (ArithmeticError, LookupError, TypeError, ValueError, RecursionError) as error:
            # Deterministic failures inside a template (a bad value, a realm admin's loop): permanent.
            where = self._where(source, name, part, *_template_frame(error.__traceback__))
            raise RenderError(
                f"template {template} ({where}): {type(error).__name__}: {error}",
                template=template,
                part=part,
            ) from None
        if part == "text":
            # Optional sections left out leave blank runs behind: at most one empty line in a row.
            output = _BLANK_RUNS.sub("\n\n", output)
        return output.strip() + "\n"

    def _where(self, source: _Source, name: str, part: str, filename: str | None, line: int | None) -> str:
        """'text, line 4' or 'html, realm override html/_layout.html.j2 line 9'."""
        file = None
        if filename:
            path = Path(filename)
            for directory in source.dirs:
                if path.is_relative_to(directory):
                    relative = path.relative_to(directory).as_posix()
                    override = directory != self.default_dir
                    if relative != name or override:
                        file = f"realm override {relative}" if override else relative
                    break
        if file and line:
            return f"{part}, {file} line {line}"
        if line:
            return f"{part}, line {line}"
        return f"{part}, {file}" if file else part


def _valid_realm(realm: object) -> bool:
    return isinstance(realm, str) and REALM_PATTERN.match(realm) is not None and ".." not in realm


def _file_name(template: str, part: str) -> str:
    return f"{part}/{template}.{PARTS[part]}.j2"


def _check_template(template: str) -> None:
    if not isinstance(template, str) or not TEMPLATE_PATTERN.match(template):
        raise RenderError(f"template {template!r}: not a template name like 'password-reset'")


def _template_frame(tb: TracebackType | None) -> tuple[str | None, int | None]:
    """The innermost template frame of a traceback (Jinja rewrites frames to template file and line)."""
    found: tuple[str | None, int | None] = (None, None)
    while tb is not None:
        filename = tb.tb_frame.f_code.co_filename
        if filename.endswith(".j2"):
            found = (filename, tb.tb_lineno)
        tb = tb.tb_next
    return found
