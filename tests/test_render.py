"""The renderer's mechanics: locales and fallback, realm overrides, the sandbox, errors, caching."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

import worker.render as render_module
from config.errors import MailWorkerError
from worker.render import (
    DEFAULT_TEMPLATES_DIR,
    RenderedEmail,
    RenderError,
    TemplateRenderer,
    format_message,
    locale_candidates,
    single_line,
)

CONTEXT: dict[str, Any] = {
    "realm_name": "Acme",
    "user": {"username": "jdoe", "first_name": "Jane"},
    "link": "https://iam.example.com/reset?key=abc",
    "link_expiration": 5,
}


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def write_json(path: Path, data: dict[str, Any]) -> Path:
    return write(path, json.dumps(data, ensure_ascii=False))


def bump_mtime(path: Path) -> None:
    """Make a rewrite visible to the mtime check even on coarse file-system clocks."""
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 2_000_000_000))


@pytest.fixture
def realms(tmp_path: Path) -> Path:
    return tmp_path / "realms"


@pytest.fixture
def renderer(realms: Path) -> TemplateRenderer:
    realms.mkdir()
    return TemplateRenderer(str(realms), reload_interval=0)


# --- locales ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw, candidates",
    [
        ("de", ("de",)),
        ("DE", ("de",)),
        ("de-DE", ("de-de", "de")),
        ("de_DE", ("de-de", "de")),
        ("de_DE.UTF-8", ("de-de", "de")),
        ("pt-BR", ("pt-br", "pt")),
        ("sr-Latn-RS", ("sr-latn-rs", "sr-latn", "sr")),
        (None, ()),
        ("", ()),
        ("../../etc", ()),
        ("d", ()),
    ],
)
def test_locale_candidates(raw: str | None, candidates: tuple[str, ...]) -> None:
    assert locale_candidates(raw) == candidates


@pytest.mark.parametrize("locale", ["de", "de-DE", "de_DE", "DE", "de-CH"])
def test_regional_locales_use_the_language(renderer: TemplateRenderer, locale: str) -> None:
    assert (
        renderer.render("acme", "password-reset", locale, CONTEXT).subject == "Setzen Sie Ihr Passwort zurück"
    )


@pytest.mark.parametrize("locale", ["xx", "xx-YY", None, "", "not a locale"])
def test_unknown_locale_renders_english(renderer: TemplateRenderer, locale: str | None) -> None:
    assert renderer.render("acme", "password-reset", locale, CONTEXT).subject == "Reset your password"


def test_key_missing_in_default_de_falls_back_to_en(tmp_path: Path) -> None:
    defaults = tmp_path / "defaults"
    shutil.copytree(DEFAULT_TEMPLATES_DIR, defaults, ignore=shutil.ignore_patterns("__pycache__", "*.py"))
    de_file = defaults / "messages" / "de.json"
    de = json.loads(de_file.read_text(encoding="utf-8"))
    del de["password-reset.ignore"]
    write_json(de_file, de)

    mail = TemplateRenderer(default_templates_dir=str(defaults)).render(
        "acme", "password-reset", "de", CONTEXT
    )

    assert mail.subject == "Setzen Sie Ihr Passwort zurück"  # the German strings that exist are used
    assert "If you do not want to reset your credentials" in mail.text  # the missing one is English
    assert "Hallo Jane," in mail.text


def test_key_missing_in_realm_de_falls_back_to_realm_en(renderer: TemplateRenderer, realms: Path) -> None:
    """A realm's own template with strings only in its English bundle still renders for German users."""
    write(realms / "acme/text/welcome.txt.j2", "{{ msg('welcome.body', name=user.username) }}")
    write(realms / "acme/html/welcome.html.j2", "<p>{{ msg('welcome.body', name=user.username) }}</p>")
    write_json(realms / "acme/messages/en.json", {"welcome.subject": "Welcome", "welcome.body": "Hi {name}!"})
    write_json(realms / "acme/messages/de.json", {"welcome.subject": "Willkommen"})

    mail = renderer.render("acme", "welcome", "de", CONTEXT)

    assert mail == RenderedEmail(subject="Willkommen", text="Hi jdoe!\n", html="<p>Hi jdoe!</p>\n")


def test_realm_en_override_does_not_replace_a_default_translation(
    renderer: TemplateRenderer, realms: Path
) -> None:
    """Lookup order: realm de, default de, realm en, default en."""
    write_json(realms / "acme/messages/en.json", {"password-reset.subject": "Acme: reset your password"})
    assert renderer.render("acme", "password-reset", "en", CONTEXT).subject == "Acme: reset your password"
    assert (
        renderer.render("acme", "password-reset", "de", CONTEXT).subject == "Setzen Sie Ihr Passwort zurück"
    )


def test_realm_can_add_a_locale(renderer: TemplateRenderer, realms: Path) -> None:
    write_json(realms / "acme/messages/it.json", {"password-reset.subject": "Reimposta la password"})
    assert "it" in renderer.locales("acme")
    assert "it" not in renderer.locales()
    mail = renderer.render("acme", "password-reset", "it-IT", CONTEXT)
    assert mail.subject == "Reimposta la password"
    assert "Hello Jane," in mail.text  # the rest falls back to English
    assert '<html lang="it">' in mail.html
    assert renderer.render("other", "password-reset", "it", CONTEXT).subject == "Reset your password"


# --- realm overrides -------------------------------------------------------------------------------


def test_realm_override_applies_to_that_realm_only(renderer: TemplateRenderer, realms: Path) -> None:
    write(realms / "acme/text/password-reset.txt.j2", "ACME reset for {{ user.username }}: {{ link }}\n")
    write_json(realms / "acme/messages/en.json", {"password-reset.subject": "[{realm_name}] Password reset"})

    acme = renderer.render("acme", "password-reset", "en", CONTEXT)
    other = renderer.render("other-realm", "password-reset", "en", CONTEXT)

    assert acme.subject == "[Acme] Password reset"
    assert acme.text == "ACME reset for jdoe: https://iam.example.com/reset?key=abc\n"
    assert "Someone has asked to change the credentials" in acme.html  # HTML not overridden: default
    assert other.subject == "Reset your password"
    assert "Someone has asked to change the credentials" in other.text


def test_realm_html_override_extends_the_default_layout(renderer: TemplateRenderer, realms: Path) -> None:
    write(
        realms / "acme/html/password-reset.html.j2",
        '{% extends "html/_link_mail.html.j2" %}\n'
        "{% block intro %}Acme wants you back, {{ user.first_name }}.{% endblock %}\n"
        '{% block button %}{{ msg("password-reset.button") }}{% endblock %}\n'
        "{% block ignore %}{% endblock %}\n",
    )
    mail = renderer.render(
        "acme", "password-reset", "de", CONTEXT | {"user": {"username": "x", "first_name": "<b>"}}
    )
    assert "Acme wants you back, &lt;b&gt;." in mail.html  # realm templates are autoescaped too
    assert "Passwort zurücksetzen" in mail.html
    assert "<!DOCTYPE html>" in mail.html  # from the default layout
    assert "Dieser Link ist 5 Minuten lang gültig." in mail.html


def test_realm_partial_layout_override(renderer: TemplateRenderer, realms: Path) -> None:
    """Overriding the layout restyles every mail of the realm."""
    write(realms / "acme/text/_layout.txt.j2", "ACME\n{% block body %}{% endblock %}\n-- Acme support\n")
    mail = renderer.render("acme", "password-reset", "en", CONTEXT)
    assert mail.text.startswith("ACME\n") and mail.text.endswith("-- Acme support\n")
    assert CONTEXT["link"] in mail.text


def test_realm_custom_template_and_exists(renderer: TemplateRenderer, realms: Path) -> None:
    assert not renderer.exists("acme", "welcome")
    write(realms / "acme/text/welcome.txt.j2", "hi")
    assert not renderer.exists("acme", "welcome")  # both bodies are needed
    write(realms / "acme/html/welcome.html.j2", "<p>hi</p>")
    assert renderer.exists("acme", "welcome")
    assert not renderer.exists("other", "welcome")
    assert not renderer.exists(None, "welcome")
    with pytest.raises(RenderError, match=r"template welcome \(subject\).*'welcome.subject' is in no bundle"):
        renderer.render("acme", "welcome", "en", CONTEXT)


def test_changed_realm_files_are_picked_up(renderer: TemplateRenderer, realms: Path) -> None:
    assert renderer.render("acme", "password-reset", "en", CONTEXT).subject == "Reset your password"

    bundle = write_json(realms / "acme/messages/en.json", {"password-reset.subject": "First"})
    assert renderer.render("acme", "password-reset", "en", CONTEXT).subject == "First"

    write_json(bundle, {"password-reset.subject": "Second"})
    bump_mtime(bundle)
    assert renderer.render("acme", "password-reset", "en", CONTEXT).subject == "Second"

    text = write(realms / "acme/text/password-reset.txt.j2", "one {{ link }}")
    assert renderer.render("acme", "password-reset", "en", CONTEXT).text.startswith("one ")
    write(text, "two {{ link }}")
    bump_mtime(text)
    assert renderer.render("acme", "password-reset", "en", CONTEXT).text.startswith("two ")

    shutil.rmtree(realms / "acme")
    mail = renderer.render("acme", "password-reset", "en", CONTEXT)
    assert mail.subject == "Reset your password" and mail.text.startswith("Hello Jane,")


def test_realm_files_are_checked_at_most_every_reload_interval(realms: Path) -> None:
    realms.mkdir()
    renderer = TemplateRenderer(str(realms), reload_interval=3600)
    assert renderer.render("acme", "password-reset", "en", CONTEXT).subject == "Reset your password"
    write_json(realms / "acme/messages/en.json", {"password-reset.subject": "Later"})
    assert renderer.render("acme", "password-reset", "en", CONTEXT).subject == "Reset your password"
    renderer.reload()
    assert renderer.render("acme", "password-reset", "en", CONTEXT).subject == "Later"


def test_bundles_and_templates_are_not_read_per_render(
    renderer: TemplateRenderer, realms: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_json(realms / "acme/messages/en.json", {"password-reset.subject": "Acme"})
    renderer.reload_interval = 3600
    renderer.render("acme", "password-reset", "en", CONTEXT)
    loads: list[Path] = []
    original = render_module._load_bundles
    monkeypatch.setattr(render_module, "_load_bundles", lambda path: loads.append(path) or original(path))
    env = renderer._source("acme").env
    compiled = env.get_template("text/password-reset.txt.j2")
    for _ in range(50):
        renderer.render("acme", "password-reset", "de", CONTEXT)
        renderer.render("other", "password-reset", "fr", CONTEXT)
    assert loads == []
    assert env.get_template("text/password-reset.txt.j2") is compiled


# --- the sandbox -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "expression",
    [
        "{{ ''.__class__.__mro__ }}",
        "{{ cycler.__init__.__globals__ }}",
        "{{ user.__class__.__subclasses__() }}",
        "{{ msg.__self__.strings }}",
        "{{ msg.__globals__ }}",
        "{{ ''.__class__.__base__.__subclasses__() }}",
        "{{ lipsum.__globals__['os'] }}",
        "{{ '{0.__class__}'.format(user) }}",
        "{% set _ = user.update({'username': 'x'}) %}",
    ],
)
def test_sandbox_blocks_python_internals(renderer: TemplateRenderer, realms: Path, expression: str) -> None:
    write(realms / "evil/text/password-reset.txt.j2", expression)
    with pytest.raises(RenderError) as caught:
        renderer.render("evil", "password-reset", "en", CONTEXT)
    message = str(caught.value)
    assert message.startswith(
        "template password-reset (text, realm override text/password-reset.txt.j2 line 1)"
    )
    assert "unsafe" in message or "not safely callable" in message or "undefined" in message


def test_sandbox_escape_in_html_override(renderer: TemplateRenderer, realms: Path) -> None:
    write(realms / "evil/html/password-reset.html.j2", "<p>\n{{ cycler.__init__.__globals__ }}</p>")
    with pytest.raises(
        RenderError, match=r"\(html, realm override html/password-reset.html.j2 line 2\).*unsafe"
    ):
        renderer.render("evil", "password-reset", "en", CONTEXT)


def test_bundle_placeholders_cannot_reach_attributes(renderer: TemplateRenderer, realms: Path) -> None:
    write_json(
        realms / "evil/messages/en.json", {"password-reset.subject": "x {user.__class__} {0} {realm_name}"}
    )
    assert renderer.render("evil", "password-reset", "en", CONTEXT).subject == "x {user.__class__} {0} Acme"


# --- errors ----------------------------------------------------------------------------------------


def test_render_error_is_a_mail_worker_error() -> None:
    assert issubclass(RenderError, MailWorkerError)


def test_undefined_variable_names_template_part_and_line(renderer: TemplateRenderer) -> None:
    context = {key: value for key, value in CONTEXT.items() if key != "link"}
    with pytest.raises(RenderError) as caught:
        renderer.render("acme", "password-reset", "en", context)
    assert (
        str(caught.value)
        == "template password-reset (text, text/_link_mail.txt.j2 line 9): 'link' is undefined"
    )
    assert caught.value.template == "password-reset" and caught.value.part == "text"


def test_syntax_error_names_file_and_line(renderer: TemplateRenderer, realms: Path) -> None:
    write(realms / "acme/html/password-reset.html.j2", "<p>fine</p>\n<p>{% if %}</p>\n")
    with pytest.raises(
        RenderError, match=r"\(html, realm override html/password-reset.html.j2 line 2\): syntax error"
    ):
        renderer.render("acme", "password-reset", "en", CONTEXT)


def test_runtime_error_in_template_is_a_render_error(renderer: TemplateRenderer, realms: Path) -> None:
    write(realms / "acme/text/password-reset.txt.j2", "{{ link }}\n{{ 1 // 0 }}")
    with pytest.raises(RenderError, match=r"line 2\): ZeroDivisionError"):
        renderer.render("acme", "password-reset", "en", CONTEXT)


def test_unknown_message_key_in_template(renderer: TemplateRenderer, realms: Path) -> None:
    write(realms / "acme/text/password-reset.txt.j2", "{{ msg('no.such.key') }}")
    with pytest.raises(RenderError, match=r"'no.such.key' is in no bundle"):
        renderer.render("acme", "password-reset", "en", CONTEXT)


def test_subject_placeholder_without_value(renderer: TemplateRenderer, realms: Path) -> None:
    write_json(realms / "acme/messages/en.json", {"password-reset.subject": "Hi {nickname}"})
    with pytest.raises(RenderError, match=r"template password-reset \(subject\).*placeholder \{nickname\}"):
        renderer.render("acme", "password-reset", "en", CONTEXT)


def test_empty_subject_is_refused(renderer: TemplateRenderer, realms: Path) -> None:
    write_json(realms / "acme/messages/en.json", {"password-reset.subject": " \r\n "})
    with pytest.raises(RenderError, match="is empty"):
        renderer.render("acme", "password-reset", "en", CONTEXT)


def test_broken_realm_bundle(renderer: TemplateRenderer, realms: Path) -> None:
    write(realms / "acme/messages/en.json", "{not json")
    with pytest.raises(RenderError, match="not valid JSON"):
        renderer.render("acme", "password-reset", "en", CONTEXT)
    write_json(realms / "acme/messages/en.json", {"password-reset.subject": ["a list"]})
    with pytest.raises(RenderError, match="must map to a string"):
        renderer.render("acme", "password-reset", "en", CONTEXT)


@pytest.mark.parametrize("realm", ["..", "../etc", "a/b", "a\\b", ".hidden", "", "a..b", "x" * 129, "ac me"])
def test_bad_realm_names_never_reach_the_file_system(renderer: TemplateRenderer, realm: str) -> None:
    with pytest.raises(RenderError, match="realm"):
        renderer.render(realm, "password-reset", "en", CONTEXT)
    assert not renderer.exists(realm, "password-reset")


@pytest.mark.parametrize("template", ["../password-reset", "_layout", "Password-Reset", "a/b", ""])
def test_bad_template_names(renderer: TemplateRenderer, template: str) -> None:
    with pytest.raises(RenderError, match="template"):
        renderer.render("acme", template, "en", CONTEXT)
    assert not renderer.exists("acme", template)


def test_unknown_template(renderer: TemplateRenderer) -> None:
    with pytest.raises(RenderError, match=r"template no-such \(text\): not found"):
        renderer.render("acme", "no-such", "en", CONTEXT)


def test_context_must_be_a_mapping(renderer: TemplateRenderer) -> None:
    with pytest.raises(RenderError, match="context"):
        renderer.render("acme", "password-reset", "en", ["not", "a", "dict"])  # type: ignore[arg-type]


def test_reserved_names_in_context_cannot_break_helpers(renderer: TemplateRenderer) -> None:
    mail = renderer.render(
        "acme", "password-reset", "de", CONTEXT | {"msg": "x", "locale": "en", "realm": "z"}
    )
    assert mail.subject == "Setzen Sie Ihr Passwort zurück"


def test_without_realm_directory_everyone_gets_defaults() -> None:
    renderer = TemplateRenderer()
    assert renderer.render("acme", "password-reset", "en", CONTEXT).subject == "Reset your password"
    with pytest.raises(RenderError, match="realm"):
        renderer.render("../x", "password-reset", "en", CONTEXT)


# --- small pure helpers ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, args, result",
    [
        ("Hello {name}", {"name": "Jane"}, "Hello Jane"),
        ("{a}{b}", {"a": 1, "b": "2"}, "12"),
        ("literal {{braces}}", {}, "literal {braces}"),
        ("no placeholders", {"unused": 1}, "no placeholders"),
        ("{obj.attr} {0} {}", {}, "{obj.attr} {0} {}"),
    ],
)
def test_format_message(text: str, args: dict[str, Any], result: str) -> None:
    assert format_message(text, args) == result


def test_format_message_missing_placeholder() -> None:
    with pytest.raises(RenderError, match=r"'k': no value for placeholder \{name\}"):
        format_message("Hello {name}", {}, "k")


@pytest.mark.parametrize(
    "raw, line",
    [
        ("Reset\r\nBcc: x@y", "Reset Bcc: x@y"),
        ("  a \t b\n", "a b"),
        ("a\x00b\x1bc", "a b c"),
        ("a\u2028b\x85c", "a b c"),
    ],
)
def test_single_line(raw: str, line: str) -> None:
    assert single_line(raw) == line
