"""Rendering of the e-mail templates (subject, text, HTML) with Jinja2, per realm and locale.

Layout (defaults in the `templates` package, realm overrides under `<realm_templates_dir>/<realm>/`):

    text/<name>.txt.j2      plain-text body (not escaped)
    html/<name>.html.j2     HTML body (autoescaped), usually extending html/_layout.html.j2
    messages/<locale>.json  flat key -> string; the subject is the key `<name>.subject` (worker/content/i18n.py)

Every template runs in a sandbox (worker/content/sandbox.py) with `StrictUndefined`: a realm admin's template
cannot reach Python internals, cannot make the worker build huge values or output, nest macros without
end, or run longer than the renderer's `render_timeout` (worker/content/limits.py); and a missing required variable
fails the render instead of sending a mail with a hole in it. Any failure is a `RenderError`, which is
permanent: rendering is deterministic, so a retry would fail the same way (the job goes to the dead letters).

Cost: environments are built once per realm (templates compiled once, Jinja's cache), bundles are read
once and merged per locale. A realm's override directory is checked for changes (file names, sizes,
mtimes) at most every `reload_interval` seconds; the default templates are read once per process.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Generator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, cast

from jinja2 import ChoiceLoader, FileSystemLoader, TemplateError, TemplateNotFound, TemplateSyntaxError
from jinja2.sandbox import SecurityError

from config.names import valid_realm, valid_template
from templates.catalogue import CATALOGUE, TEMPLATE_NAMES
from worker.content.i18n import (
    DEFAULT_BUNDLES,
    DEFAULT_LOCALE,
    DEFAULT_TEMPLATES_DIR,
    Bundles,
    Messages,
    format_message,
    human_duration,
    load_bundles,
    locale_candidates,
    parse_time,
)
from worker.content.limits import (
    MAX_OUTPUT_CHARS,
    MAX_TEMPLATE_BYTES,
    MAX_VALUE_CHARS,
    RENDER_TIMEOUT,
    collect,
    render_budget,
)
from worker.content.render_error import RenderError
from worker.content.sandbox import GuardedSandbox, SizedLoader, new_environment

__all__ = [
    "DEFAULT_LOCALE",
    "DEFAULT_TEMPLATES_DIR",
    "MAX_OUTPUT_CHARS",
    "MAX_TEMPLATE_BYTES",
    "MAX_VALUE_CHARS",
    "RENDER_TIMEOUT",
    "RESERVED_NAMES",
    "TEMPLATE_NAMES",
    "TEMPLATE_VARIABLES",
    "RenderError",
    "RenderedEmail",
    "TemplateRenderer",
    "TemplateVariables",
    "format_message",
    "human_duration",
    "locale_candidates",
    "parse_time",
    "single_line",
]


@dataclass(frozen=True)
class RenderedEmail:
    subject: str
    text: str
    html: str


PARTS = {"text": "txt", "html": "html"}

_BLANK_RUNS = re.compile(r"\n[ \t]*(?:\n[ \t]*)+\n")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
# Names the renderer puts into every template's context (they win over the job's context).
RESERVED_NAMES = ("msg", "has_msg", "human_duration", "format_time", "realm", "locale", "subject")


@dataclass(frozen=True)
class TemplateVariables:
    """What a template needs from the job's context (documentation; tests hold the templates to it)."""

    required: tuple[str, ...]
    optional: tuple[str, ...]


TEMPLATE_VARIABLES: dict[str, TemplateVariables] = {
    name: TemplateVariables(template.required, template.optional) for name, template in CATALOGUE.items()
}


@dataclass
class _Source:
    """What one realm renders with: its environment (realm dir, then defaults) and merged bundles."""

    env: GuardedSandbox
    bundles: Bundles
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
        render_timeout: float = RENDER_TIMEOUT,
    ) -> None:
        self.realm_root = Path(realm_templates_dir) if realm_templates_dir else None
        self.default_dir = Path(default_templates_dir) if default_templates_dir else DEFAULT_TEMPLATES_DIR
        self.reload_interval = reload_interval
        self.render_timeout = render_timeout  # seconds of template code per render(), all parts together
        if self.default_dir == DEFAULT_TEMPLATES_DIR:
            default_bundles = DEFAULT_BUNDLES
        else:
            default_bundles = Bundles(load_bundles(self.default_dir / "messages"))
        self._default_loader = FileSystemLoader(str(self.default_dir))
        self._default = _Source(new_environment(self._default_loader), default_bundles, (self.default_dir,))
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
        with render_budget(self.render_timeout):
            # Text first: a missing required variable is then reported by its name, not by a subject placeholder.
            text = self._render_part(source, template, "text", variables)
            subject = self._subject(messages, realm, template, context)
            variables["subject"] = subject
            html = self._render_part(source, template, "html", variables)
        return RenderedEmail(subject=subject, text=text, html=html)

    def exists(self, realm: str | None, template: str) -> bool:
        """True when both bodies (text and HTML) exist for the realm (override or default)."""
        if not valid_template(template):
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
        bundles = Bundles(self._default.bundles.default, load_bundles(realm_dir / "messages"))
        # Realm directory first, then the defaults: an override can extend the default _layout.
        loader = ChoiceLoader([SizedLoader(str(realm_dir)), self._default_loader])
        return _Source(new_environment(loader), bundles, (realm_dir, self.default_dir))

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
        if len(subject) > MAX_OUTPUT_CHARS:
            raise RenderError(
                f"template {template} (subject): the output is over the limit of {MAX_OUTPUT_CHARS} characters",
                template=template,
                part="subject",
            )
        return subject

    def _render_part(self, source: _Source, template: str, part: str, variables: dict[str, Any]) -> str:
        name = _file_name(template, part)
        try:
            chunks = cast(Generator[str, None, None], source.env.get_template(name).generate(variables))
            try:
                # Streamed and counted: a template's output is refused before it is all in memory.
                output = "".join(collect(chunks, MAX_OUTPUT_CHARS, "the output"))
            finally:
                chunks.close()
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
    return valid_realm(realm)


def _file_name(template: str, part: str) -> str:
    return f"{part}/{template}.{PARTS[part]}.j2"


def _check_template(template: str) -> None:
    if not valid_template(template):
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
