"""The sandbox's filters, tests, `lipsum`, and the str/bytes methods a template calls, held to the limits.

Every filter checks the render's deadline and has its result measured (and counted) against the value
limit. Filters whose output a parameter can multiply (a width, a count, a separator, a fill value, a wrap
string, an indent) are checked before they run, from their arguments; so are the ones that only grow
their input by a bounded factor but would otherwise allocate several times the limit first (escaping,
URL encoding, JSON, urlize). Filters that at most triple their input (upper, title, ...) are measured after.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from time import monotonic
from typing import TYPE_CHECKING, Any

from jinja2.filters import FILTERS, make_attrgetter
from jinja2.nodes import EvalContext
from jinja2.utils import generate_lorem_ipsum, pass_eval_context

from worker.content.limits import (
    BUDGET,
    MAX_VALUE_CHARS,
    Measure,
    TemplateLimitError,
    built,
    check_size,
    count_built,
    escaped_size,
    escaped_value_size,
    expired,
    percent_size,
    size_of,
    tick,
)

if TYPE_CHECKING:
    from jinja2 import Environment

# textwrap copies the rest of a long word for every line it cuts off it: about n * n / width characters
# copied in all. Above this (~0.3 s on a slow core) a wordwrap could not be stopped by the deadline.
_WRAP_WORK = 2 * 10**10
_LINE_BREAKS = ("\n", "\r", "\v", "\f", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029")
# Tests that look at a value's type or a number, never walk it: no deadline check needed (`is defined` is
# everywhere in templates).
_CONSTANT_TIME_TESTS = frozenset(
    {"defined", "undefined", "none", "boolean", "true", "false", "integer", "float", "number", "string",
     "mapping", "sequence", "iterable", "callable", "sameas", "escaped", "filter", "test", "odd", "even",
     "divisibleby"}
)  # fmt: skip
_LOREM_WORD = 16  # the longest lorem ipsum word with its separator and markup share


def _int(value: Any) -> int:
    """A size argument as the callee will see it; anything else fails in the callee with its own error."""
    return value if isinstance(value, int) else 0


def _text_size(value: Any, escaping: bool) -> int:
    return escaped_value_size(value) if escaping and not hasattr(value, "__html__") else size_of(value)


# -- filters --------------------------------------------------------------------------------------------


def _center(value: Any, width: Any = 80) -> None:
    check_size(max(size_of(value), _int(width)), "filter center")


def _indent(value: Any, width: Any = 4, first: bool = False, blank: bool = False) -> None:
    text = str(value)
    pad = len(width) if isinstance(width, str) else _int(width)
    check_size(len(text) + (text.count("\n") + 1) * pad, "filter indent")


def _replace(eval_ctx: EvalContext, value: Any, old: Any, new: Any, count: Any = None) -> None:
    text, old, new = str(value), str(old), str(new)
    if eval_ctx.autoescape:  # escaped first: occurrences are bounded by the escaped length
        size = escaped_size(text)
        hits = size // max(len(old), 1) + 1
        new_size = escaped_size(new)
    else:
        size, new_size = len(text), len(new)
        hits = len(text) + 1 if not old else text.count(old)
    if isinstance(count, int) and count >= 0:
        hits = min(hits, count)
    check_size(size + hits * max(new_size - len(old), 0), "filter replace")


def _wordwrap(
    environment: Environment,
    value: Any,
    width: Any = 79,
    break_long_words: bool = True,
    wrapstring: Any = None,
    break_on_hyphens: bool = True,
) -> None:
    text = str(value)
    wrap = len(wrapstring) if isinstance(wrapstring, str) else len(environment.newline_sequence)
    lines = len(text) // max(_int(width), 1) + text.count("\n") + 1
    check_size(len(text) + lines * wrap, "filter wordwrap")
    if break_long_words and len(text) * (len(text) // max(_int(width), 1)) > _WRAP_WORK:
        raise TemplateLimitError(f"filter wordwrap: {len(text)} characters at width {width} take too long")


def _format(value: Any, *args: Any, **kwargs: Any) -> None:
    check_size(percent_size(value if isinstance(value, str) else str(value), kwargs or args), "filter format")


def _sum(environment: Environment, iterable: Any, attribute: Any = None, start: Any = 0) -> None:
    if not isinstance(start, int | float):  # sum() of lists copies the growing list each step: quadratic
        raise TemplateLimitError("filter sum adds numbers only")


def _batch(value: Any, linecount: Any, fill_with: Any = None) -> None:
    if fill_with is not None:
        check_size(_int(linecount) * (size_of(fill_with) + 2), "filter batch")


def _slice(eval_ctx: EvalContext, value: Any, slices: Any, fill_with: Any = None) -> None:
    fill = 0 if fill_with is None else size_of(fill_with) + 2
    check_size(_int(slices) * (4 + fill), "filter slice")


def _pprint(value: Any) -> None:
    measure = Measure()
    size = measure.run(value)
    check_size(size + (measure.items + 1) * (measure.depth + 2), "filter pprint")  # a line per item, indented


def _tojson(eval_ctx: EvalContext, value: Any, indent: Any = None) -> None:
    measure = Measure()
    size = measure.run(value)
    step = len(indent) if isinstance(indent, str) else _int(indent)
    # \u003c for <, \ud83d\ude00 for one emoji: 12 characters for one at most.
    check_size(12 * size + (measure.items + 1) * (measure.depth * step + 1), "filter tojson")


def _urlize(
    eval_ctx: EvalContext,
    value: Any,
    trim_url_limit: Any = None,
    nofollow: bool = False,
    target: Any = None,
    rel: Any = None,
    extra_schemes: Any = None,
) -> None:
    text = str(value)
    words = text.count(" ") + text.count("\n") + 1
    extra = sum(len(part) for part in (target, rel) if isinstance(part, str))
    check_size(10 * len(text) + words * extra, "filter urlize")  # <a href="url" rel="noopener">url</a>


def _escape(value: Any) -> None:
    check_size(_text_size(value, escaping=True), "escaping")


def _urlencode(value: Any) -> None:
    check_size(12 * size_of(value), "filter urlencode")  # %F0%9F%98%80 for one emoji


_PRECHECKS: dict[str, Callable[..., None]] = {
    "center": _center,
    "indent": _indent,
    "replace": _replace,
    "wordwrap": _wordwrap,
    "format": _format,
    "sum": _sum,
    "batch": _batch,
    "slice": _slice,
    "pprint": _pprint,
    "tojson": _tojson,
    "urlize": _urlize,
    "escape": _escape,
    "e": _escape,
    "forceescape": _escape,
    "urlencode": _urlencode,
}


@pass_eval_context
def _join(eval_ctx: EvalContext, value: Any, d: Any = "", attribute: Any = None) -> Any:
    tick()
    items = list(value)  # a range or a generator: its size is only known once it is listed
    if attribute is not None:  # an attribute can be bigger than its item (a method's repr)
        items = list(map(make_attrgetter(eval_ctx.environment, attribute), items))
    # Autoescaped output escapes every plain item once the separator or any item is markup.
    escaping = eval_ctx.autoescape and (
        hasattr(d, "__html__") or any(hasattr(item, "__html__") for item in items)
    )
    size = sum(_text_size(item, escaping) for item in items)
    check_size(size + _text_size(d, escaping) * max(len(items) - 1, 0), "filter join")
    return built(FILTERS["join"](eval_ctx, items, d), "filter join")


def _guarded(name: str, original: Callable[..., Any]) -> Callable[..., Any]:
    precheck = _PRECHECKS.get(name)
    what = f"filter {name}"

    def guarded(*args: Any, **kwargs: Any) -> Any:
        budget = BUDGET.get()
        if budget is not None and monotonic() > budget.deadline:
            expired(budget)
        if precheck is not None:
            precheck(*args, **kwargs)
        result = original(*args, **kwargs)
        size = len(result) if isinstance(result, str) else size_of(result)
        if size > MAX_VALUE_CHARS:
            check_size(size, what)
        count_built(size, budget)
        return result

    # Keeps Jinja's pass_context / pass_eval_context / pass_environment markers.
    guarded.__dict__.update(getattr(original, "__dict__", {}))
    return guarded


def _ticking_test(original: Any) -> Callable[..., Any]:
    def test(*args: Any, **kwargs: Any) -> Any:
        budget = BUDGET.get()
        if budget is not None and monotonic() > budget.deadline:
            expired(budget)
        return original(*args, **kwargs)

    test.__dict__.update(getattr(original, "__dict__", {}))
    return test


def _lipsum(n: int = 5, html: bool = True, min: int = 20, max: int = 100) -> str:
    check_size(_int(n) * _int(max) * _LOREM_WORD, "lipsum")
    return generate_lorem_ipsum(n, html, min, max)


def install_guards(env: Environment) -> None:
    """Every filter and test of `env`, and `lipsum`, replaced by its guarded version."""
    for name, original in list(env.filters.items()):
        env.filters[name] = _guarded(name, original)
    env.filters["join"] = _join
    for name, original in list(env.tests.items()):
        if name not in _CONSTANT_TIME_TESTS:
            env.tests[name] = _ticking_test(original)
    env.globals["lipsum"] = _lipsum


# -- str and bytes methods --------------------------------------------------------------------------------


def check_text_method(
    owner: Any, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[Any, ...]:
    """Check what a str/bytes method is about to build; returns the arguments to call it with (join's
    iterable listed: a generator can only be iterated once)."""
    n = len(owner)
    first = args[0] if args else None
    if name in ("center", "ljust", "rjust", "zfill"):
        size = max(n, _int(args[0] if args else kwargs.get("width")))
    elif name == "expandtabs":
        tab = "\t" if isinstance(owner, str) else b"\t"
        size = n + owner.count(tab) * max(_int(first if args else kwargs.get("tabsize", 8)), 0)
    elif name == "replace" and len(args) >= 2:
        old, new = args[0], args[1]
        count = args[2] if len(args) > 2 else kwargs.get("count", -1)
        hits = n + 1 if not old else owner.count(old)
        if isinstance(count, int) and count >= 0:
            hits = min(hits, count)
        new_size = len(new) if isinstance(new, str | bytes) else 0
        size = n + hits * max(new_size - len(old), 0)
    elif name == "join" and args:
        items = list(args[0])
        size = sum(len(item) if isinstance(item, str | bytes) else size_of(item) for item in items)
        size += n * max(len(items) - 1, 0)
        args = (items, *args[1:])
    elif name == "translate" and isinstance(owner, str) and args:
        table = first
        values = (
            table.values() if isinstance(table, Mapping) else table if isinstance(table, list | tuple) else ()
        )
        size = n * max((len(value) for value in values if isinstance(value, str)), default=1)
    elif name in ("split", "rsplit"):
        sep = first if args else kwargs.get("sep")
        limit = args[1] if len(args) > 1 else kwargs.get("maxsplit", -1)
        pieces = owner.count(sep) + 1 if sep else n // 2 + 1
        if isinstance(limit, int) and limit >= 0:
            pieces = min(pieces, limit + 1)
        size = n + 4 * pieces  # quotes and separator of each item in the list
    elif name == "splitlines":
        breaks = _LINE_BREAKS if isinstance(owner, str) else ("\n", "\r")
        pieces = 1 + sum(owner.count(b if isinstance(owner, str) else b.encode()) for b in breaks)
        size = n + 4 * pieces
    elif name == "encode":
        size = 10 * n  # unicode_escape: \U0001f600 for one character
    else:
        return args
    check_size(size, f"{type(owner).__name__}.{name}")
    return args
