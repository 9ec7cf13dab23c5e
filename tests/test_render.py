"""The renderer's mechanics: locales and fallback, realm overrides, the sandbox, errors, caching."""

from __future__ import annotations

import inspect
import json
import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from jinja2.filters import FILTERS
from jinja2.utils import _PassArg

import worker.content.render as render_module
from config.errors import MailWorkerError
from worker.content import limits, sandbox_filters
from worker.content.render import (
    DEFAULT_TEMPLATES_DIR,
    MAX_OUTPUT_CHARS,
    MAX_VALUE_CHARS,
    PARTS,
    RENDER_TIMEOUT,
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
    original = render_module.load_bundles
    monkeypatch.setattr(render_module, "load_bundles", lambda path: loads.append(path) or original(path))
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


# --- limits: template bombs ------------------------------------------------------------------------

# Short budget for the table (the default, RENDER_TIMEOUT, has its own test); the margin covers one
# uninterruptible operation plus scheduling on a busy CI machine.
TIMEOUT = 0.5
MARGIN = 1.5
LIMIT = f"{MAX_VALUE_CHARS} characters \\(the value limit\\)"
DOUBLING_MACRO = (
    "{% macro d(s, n) %}{% if n %}{{ d(s ~ s, n - 1) }}{% else %}{{ s|length }}{% endif %}{% endmacro %}"
    "{{ d('x', 30) }}"
)
TILDE_DOUBLING = (
    "{% set ns = namespace(s='abc') %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}"
    "{{ ns.s|length }}"
)
NESTED_RANGES = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"

BOMBS = [
    # Value building, refused before the value exists.
    pytest.param(
        "{{ ['a' * 1000] * 4000 }}", f"'\\*' would build a value of over {LIMIT}", id="list-times-n"
    ),
    pytest.param("{{ 'x' * 10**7 }}", f"'\\*' would build a value of over {LIMIT}", id="str-times-n"),
    pytest.param(
        "{{ 'a'.encode() * 10**8 }}", f"'\\*' would build a value of over {LIMIT}", id="bytes-times-n"
    ),
    pytest.param(DOUBLING_MACRO, f"macro d would build a value of over {LIMIT}", id="macro-doubling"),
    pytest.param(TILDE_DOUBLING, f"'~' would build a value of over {LIMIT}", id="tilde-doubling"),
    pytest.param("{% set a = 'x' * 600000 %}{{ a + a }}", f"'\\+' would build .* {LIMIT}", id="plus-strings"),
    pytest.param("{% set a = ['x'] * 200000 %}{{ a + a }}", f"'\\+' would build .* {LIMIT}", id="plus-lists"),
    pytest.param(
        "{{ '%(a)s%(a)s%(a)s' % {'a': 'x' * 400000} }}", f"'%' would build .* {LIMIT}", id="percent"
    ),
    pytest.param("{{ '{0}{0}{0}'.format('x' * 400000) }}", f"format would build .* {LIMIT}", id="format"),
    pytest.param("{{ '{:{}}'.format('a', 99999999) }}", f"format would build .* {LIMIT}", id="format-width"),
    pytest.param(
        "{{ '%s%s%s'|format('x' * 400000, 'x' * 400000, 'x' * 400000) }}", LIMIT, id="format-filter"
    ),
    pytest.param("{{ ('y' * 100).join(['x'] * 20000) }}", f"str.join would build .* {LIMIT}", id="str-join"),
    pytest.param(
        "{{ range(20000)|join('y' * 100) }}", f"filter join would build .* {LIMIT}", id="join-filter"
    ),
    pytest.param("{{ 'x'|center(10**9) }}", f"filter center would build .* {LIMIT}", id="center"),
    pytest.param("{{ 'x'.ljust(10**9) }}", f"str.ljust would build .* {LIMIT}", id="ljust"),
    pytest.param("{{ ('a\n' * 400000)|indent(10) }}", f"filter indent would build .* {LIMIT}", id="indent"),
    pytest.param("{{ ('a' * 500000)|replace('a', 'bbb') }}", f"filter replace .* {LIMIT}", id="replace"),
    pytest.param("{{ ('a' * 1000000).replace('', 'xx') }}", f"str.replace .* {LIMIT}", id="replace-empty"),
    pytest.param("{{ ('a ' * 100000)|wordwrap(1, wrapstring='x' * 100) }}", LIMIT, id="wordwrap"),
    pytest.param(
        "{{ ('x' * 500000)|wordwrap(1) }}", "wordwrap: 500000 characters at width 1", id="wordwrap-slow"
    ),
    pytest.param("{{ ('\t' * 100000).expandtabs(100) }}", f"str.expandtabs .* {LIMIT}", id="expandtabs"),
    pytest.param(
        "{{ ('a' * 100000).translate({97: 'b' * 100}) }}", f"str.translate .* {LIMIT}", id="translate"
    ),
    pytest.param("{{ range(1)|batch(100000, 'x' * 100)|list }}", f"filter batch .* {LIMIT}", id="batch-fill"),
    pytest.param("{{ range(10)|slice(10**9)|list }}", f"filter slice .* {LIMIT}", id="slice-many"),
    pytest.param("{{ lipsum(n=100000) }}", f"lipsum .* {LIMIT}", id="lipsum"),
    pytest.param("{{ [[[1]]]|tojson(indent=10**7) }}", f"filter tojson .* {LIMIT}", id="tojson-indent"),
    pytest.param("{% set a = 'x' * 600000 %}{{ [a, a] }}", f"a literal would build .* {LIMIT}", id="literal"),
    pytest.param(
        "{% set a = 'x' * 600000 %}{{ cycler(a, a).items|string }}",
        f"arguments of Cycler .* {LIMIT}",
        id="args",
    ),
    pytest.param(
        "{% set a = 'x' * 600000 %}{% set ns = namespace(p=a) %}{% set ns.q = a %}",
        f"a namespace attribute .* {LIMIT}",
        id="namespace",
    ),
    pytest.param(
        "{{ {}.fromkeys(range(100000), 'x' * 100) }}", f"the result of fromkeys .* {LIMIT}", id="result"
    ),
    pytest.param("{{ ([[1]] * 1000)|sum(start=[]) }}", "filter sum adds numbers only", id="sum-of-lists"),
    pytest.param("{{ 2 ** 5000 }}", "integers over 4096 bits", id="power"),
    pytest.param(
        "{% set ns = namespace(n=3) %}{% for i in range(99) %}{% set ns.n = ns.n * ns.n %}{% endfor %}",
        "integers over 4096 bits",
        id="int-squaring",
    ),
    pytest.param(
        "{% set ns = namespace(l=[1]) %}{% for i in range(150) %}{% set ns.l = [ns.l] %}{% endfor %}",
        "nested deeper than 100 levels",
        id="nesting",
    ),
    # Each value within the limit, but too many of them in one render.
    pytest.param(
        "{% for i in range(1000) %}{% set l = range(100000)|list %}{% endfor %}",
        "built over 4194304 characters of values in one render",
        id="built-total",
    ),
    # Output that grows inside a macro or block, or from an imported template.
    pytest.param(
        "{% macro m() %}{% for i in range(100000) %}{{ 'x' * 1000 }}{% endfor %}{% endmacro %}{{ m() }}",
        "the output of a macro or block is over the limit of 1048576 characters",
        id="macro-output",
    ),
    pytest.param(
        "{% set x %}{% for i in range(100000) %}{% for j in range(100) %}abc{% endfor %}{% endfor %}{% endset %}",
        "the output of a macro or block is over the limit",
        id="set-block-output",
    ),
    pytest.param(
        "{% import 'text/_big.txt.j2' as big %}{{ big }}",
        "the output of an imported template is over the limit",
        id="import-output",
    ),
    # Depth.
    pytest.param(
        "{% macro r(n) %}{{ r(n + 1) }}{% endmacro %}{{ r(0) }}",
        "nest deeper than the limit of 50",
        id="macro-recursion",
    ),
    pytest.param(
        "{% for x in [1] recursive %}{{ loop([1]) }}{% endfor %}",
        "nest deeper than the limit of 50",
        id="loop-recursion",
    ),
    pytest.param(
        "{% block b %}{{ self.b() }}{% endblock %}", "nest deeper than the limit of 50", id="block-recursion"
    ),
    # Time: templates that only burn CPU.
    pytest.param(NESTED_RANGES, r"took longer than the limit of 0\.5 s", id="loop-doing-nothing"),
    pytest.param(
        "{% for i in range(100000) %}{% for j in range(100000) %}{% set k = i * j %}{% endfor %}{% endfor %}",
        r"took longer than the limit of 0\.5 s",
        id="nested-range-loops",
    ),
    pytest.param(
        "{% set s = 'x' * 1000000 %}{% for a in s %}{% for b in s %}{% endfor %}{% endfor %}",
        r"took longer than the limit of 0\.5 s",
        id="loops-over-long-strings",
    ),
    pytest.param(
        "{% macro f(n) %}{% if n %}{{ f(n - 1) }}{{ f(n - 1) }}{% endif %}{% endmacro %}{{ f(40) }}",
        r"took longer than the limit of 0\.5 s",
        id="exponential-macro-calls",
    ),
    pytest.param(
        "{% for x in range(3) recursive %}{% if loop.depth < 40 %}{{ loop(range(100000)) }}{% endif %}"
        "{% endfor %}",
        r"took longer than the limit of 0\.5 s",
        id="wide-recursive-loop",
    ),
    pytest.param(
        "{% set a = 'x' * 1000000 %}{% for i in range(100000) %}{% set b = a[::-1] %}{% endfor %}",
        r"took longer than the limit of 0\.5 s",
        id="slices-in-a-loop",
    ),
]


@pytest.fixture
def bomb_renderer(realms: Path) -> TemplateRenderer:
    realms.mkdir()
    # For the import case: a helper template of the realm whose output has no end.
    write(realms / "bomb/text/_big.txt.j2", "{% for i in range(100000) %}{{ 'x' * 100 }}{% endfor %}")
    return TemplateRenderer(str(realms), reload_interval=0, render_timeout=TIMEOUT)


@pytest.mark.parametrize("source, error", BOMBS)
def test_template_bomb_is_a_render_error_within_the_time_budget(
    bomb_renderer: TemplateRenderer, realms: Path, source: str, error: str
) -> None:
    write(realms / "bomb/text/password-reset.txt.j2", source)
    started = time.monotonic()
    with pytest.raises(RenderError, match=error) as caught:
        bomb_renderer.render("bomb", "password-reset", "en", CONTEXT)
    elapsed = time.monotonic() - started
    assert elapsed < TIMEOUT + MARGIN, f"{elapsed:.2f} s"
    assert str(caught.value).startswith("template password-reset (text") and caught.value.part == "text"
    assert limits.BUDGET.get() is None  # nothing of the render's budget is left behind in this thread


def test_default_render_timeout_is_the_module_constant(realms: Path) -> None:
    realms.mkdir()
    write(realms / "bomb/text/password-reset.txt.j2", NESTED_RANGES)
    renderer = TemplateRenderer(str(realms))
    assert renderer.render_timeout == RENDER_TIMEOUT == 2.0
    started = time.monotonic()
    with pytest.raises(RenderError, match="took longer than the limit of 2 s"):
        renderer.render("bomb", "password-reset", "en", CONTEXT)
    assert RENDER_TIMEOUT <= time.monotonic() - started < RENDER_TIMEOUT + MARGIN


def test_the_deadline_is_per_render_and_per_thread(bomb_renderer: TemplateRenderer, realms: Path) -> None:
    """A bomb in one thread of a pool does not touch renders in another, nor the next render."""
    write(realms / "bomb/text/password-reset.txt.j2", NESTED_RANGES)
    with ThreadPoolExecutor(max_workers=1) as pool:
        started = time.monotonic()
        bomb = pool.submit(bomb_renderer.render, "bomb", "password-reset", "en", CONTEXT)
        while not bomb.done():  # meanwhile, this thread renders normally
            assert (
                bomb_renderer.render("acme", "password-reset", "en", CONTEXT).subject == "Reset your password"
            )
        with pytest.raises(RenderError, match=r"took longer than the limit of 0\.5 s"):
            bomb.result()
        assert time.monotonic() - started < TIMEOUT + MARGIN
        # The pool's thread renders again afterwards, with a fresh budget.
        mail = pool.submit(bomb_renderer.render, "acme", "password-reset", "en", CONTEXT).result()
    assert mail.subject == "Reset your password"


def test_recursion_over_the_limit(bomb_renderer: TemplateRenderer, realms: Path) -> None:
    """r(49) nests 50 calls and renders (see test_values_up_to_the_limits_render); r(50) is one too many."""
    write(
        realms / "bomb/text/password-reset.txt.j2",
        "{% macro r(n) %}{% if n %}{{ r(n - 1) }}{% else %}bottom{% endif %}{% endmacro %}{{ r(50) }}",
    )
    with pytest.raises(RenderError, match="nest deeper than the limit of 50"):
        bomb_renderer.render("bomb", "password-reset", "en", CONTEXT)


@pytest.mark.parametrize("part", ["text", "html"])
def test_a_part_over_the_output_limit_names_the_part_and_the_limit(
    bomb_renderer: TemplateRenderer, realms: Path, part: str
) -> None:
    # 1100 values of 1000 characters: each within the value limit, together over the output limit.
    write(
        realms / f"bomb/{part}/password-reset.{PARTS[part]}.j2",
        "{% for i in range(1100) %}{{ 'x' * 1000 }}{% endfor %}",
    )
    with pytest.raises(RenderError) as caught:
        bomb_renderer.render("bomb", "password-reset", "en", CONTEXT)
    assert str(caught.value) == (
        f"template password-reset ({part}): the output is over the limit of {MAX_OUTPUT_CHARS} characters"
    )
    assert caught.value.part == part


def test_a_subject_over_the_limit_names_the_part_and_the_limit(
    bomb_renderer: TemplateRenderer, realms: Path
) -> None:
    write_json(realms / "bomb/messages/en.json", {"password-reset.subject": "{username}" * 20_000})
    context = CONTEXT | {"user": {"username": "u" * 60}}
    with pytest.raises(RenderError, match=rf"\(subject\): .* over the limit of {MAX_VALUE_CHARS} characters"):
        bomb_renderer.render("bomb", "password-reset", "en", context)


@pytest.mark.parametrize(
    "source, text",
    [
        ("{% set a = 'x' * 524288 %}{{ (a ~ a)|length }}", f"{MAX_VALUE_CHARS}\n"),
        ("{{ (['x'] * 200000)|string|length }}", "1000000\n"),  # ['x', 'x', ...]
        ("{{ ('ab' * 262144)|replace('a', 'c')|length }}", "524288\n"),
        ("{{ ('y' * 1000).join(['x'] * 1000)|length }}", "1000000\n"),
        ("{{ '{0}{0}'.format('x' * 500000)|length }}", "1000000\n"),
        ("{{ 'x'|center(1000000)|length }}", "1000000\n"),
        (
            "{% macro r(n) %}{% if n %}{{ r(n - 1) }}{% else %}bottom{% endif %}{% endmacro %}{{ r(49) }}",
            "bottom\n",
        ),
        ("{% for i in range(300) %}{% for j in range(300) %}{% endfor %}{% endfor %}done", "done\n"),
    ],
)
def test_values_up_to_the_limits_render(
    bomb_renderer: TemplateRenderer, realms: Path, source: str, text: str
) -> None:
    """The caps refuse what is over them, not what comes close."""
    write(realms / "bomb/text/password-reset.txt.j2", source)
    assert bomb_renderer.render("bomb", "password-reset", "en", CONTEXT).text == text


def test_output_up_to_the_limit_renders(bomb_renderer: TemplateRenderer, realms: Path) -> None:
    write(
        realms / "bomb/text/password-reset.txt.j2",
        "{% macro m() %}{% for i in range(1000) %}{{ 'z' * 1000 }}{% endfor %}{% endmacro %}{{ m() }}"
        "{% for i in range(48) %}{{ 'y' * 1000 }}{% endfor %}",
    )
    text = bomb_renderer.render("bomb", "password-reset", "en", CONTEXT).text
    assert text.count("z") == 1_000_000 and text.count("y") == 48_000 and len(text) <= MAX_OUTPUT_CHARS


def test_filter_prechecks_take_the_arguments_of_their_filters() -> None:
    """A pre-check is called with the filter's own arguments: a shifted one would check the wrong value."""
    for name, precheck in sandbox_filters._PRECHECKS.items():
        original = FILTERS[name]
        wrapped = getattr(original, "__wrapped__", original)  # async variants wrap the sync filter
        # After what Jinja passes first (context, environment) and the filtered value: names are keywords.
        wanted = list(inspect.signature(wrapped).parameters)[1 + (_PassArg.from_obj(wrapped) is not None) :]
        given = list(inspect.signature(precheck).parameters)[1 + (_PassArg.from_obj(original) is not None) :]
        assert given == wanted, name


def test_compiling_a_large_override_does_not_count_against_the_deadline(realms: Path) -> None:
    """A template that renders within the timeout must not fail on its first render only, while compiling."""
    realms.mkdir()
    unit = '<p>{{ msg("password-reset.ignore") }}</p>{% if user.first_name %}{{ user.first_name ~ "!" }}{% endif %}\n'
    copies = 250 * 1024 // len(unit)  # close to MAX_TEMPLATE_BYTES: compiling takes about a second
    write(realms / "acme/html/password-reset.html.j2", unit * copies)
    renderer = TemplateRenderer(str(realms), reload_interval=0, render_timeout=0.25)
    started = time.monotonic()
    mail = renderer.render("acme", "password-reset", "en", CONTEXT)
    assert time.monotonic() - started > 0.25  # compiling alone took longer than the timeout
    assert mail.html.count("Jane!") == copies
