"""What one render of a realm's template may cost, and how a value's size is measured.

Realm admins edit templates, so a template is untrusted code: the sandbox (worker/content/sandbox.py) keeps it
away from Python internals, these limits keep it from exhausting the worker that renders it.

- Value size: every value a template builds (string, list, dict, macro output, `{% set %}` block) renders
  as at most MAX_VALUE_CHARS characters. Where the size can be known in advance (`*`, `+`, `~`, `%`,
  format, join, padding, replace, ...) the check comes before the value is built.
- Built total: everything built during one render adds up to at most MAX_BUILT_CHARS characters, so a loop
  cannot hold on to gigabytes one capped value at a time.
- Output: each part (subject, text, HTML) is at most MAX_OUTPUT_CHARS characters.
- Depth: macros, call blocks, recursive loops and block references nest at most MAX_CALL_DEPTH deep.
- Time: one render runs template code for at most its timeout (RENDER_TIMEOUT by default). The deadline is
  checked at every loop iteration and every sandbox hook, never by a signal: renders run in Celery's
  prefork children and in thread pools alike.

Sizes are counted in characters of the rendered form: `size_of(value)` is an upper bound of
`len(str(value))`, a container counting the `repr` of each item, shared items once per reference.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable, Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from jinja2.environment import TemplateModule
from jinja2.runtime import Undefined
from jinja2.sandbox import SecurityError
from jinja2.utils import Namespace

MAX_TEMPLATE_BYTES = 256 * 1024  # one realm override file (template or message bundle)
MAX_OUTPUT_CHARS = 1024 * 1024  # one rendered part
MAX_VALUE_CHARS = 1024 * 1024  # one value a template builds
MAX_BUILT_CHARS = 4 * MAX_VALUE_CHARS  # all values one render builds
MAX_CALL_DEPTH = 50
MAX_NESTING = 100  # lists in lists in ...: measuring them (and repr) recurses once per level
MAX_INT_BITS = 4096  # any integer a template computes: str() of 4096 bits is 1234 digits
RENDER_TIMEOUT = 2.0  # seconds of template code per render (subject, text and HTML together)

# Objects whose repr does not show their content (functions, generators, macros, loops): their repr's size.
_OPAQUE = 256
_FLOAT = 24  # the longest repr of a float: '-2.2250738585072014e-308'
# Deleting printable ASCII leaves what repr() may escape (controls, non-ASCII), at most 10 characters each.
_PRINTABLE_ASCII = dict.fromkeys(range(0x20, 0x7F))
_DICT_VIEWS: tuple[type, ...] = (type({}.keys()), type({}.values()), type({}.items()))
_DIGITS = re.compile(r"\d+")
_PERCENT_FIELD = re.compile(r"%(?:\(([^)]*)\))?[#0\- +]*(\*|\d*)(?:\.(\*|\d*))?[hlL]?(.?)", re.S)
_FLOAT_DIGITS = 330  # '%f' % 1e308 has 309 digits before the point


class TemplateLimitError(SecurityError):
    """A template went over one of the limits above; the message names the limit."""


@dataclass
class Budget:
    """The running costs of one render (set by `render_budget`, read by the sandbox's hooks)."""

    timeout: float
    deadline: float
    built: int = 0
    depth: int = 0


# The budget of the render running in this thread; the sandbox's hottest hooks read it directly.
BUDGET: ContextVar[Budget | None] = ContextVar("template_budget", default=None)


class BudgetScope:
    """Sets a render's budget for the block (a class: cheaper than @contextmanager, once per message)."""

    __slots__ = ("budget", "token")

    def __init__(self, timeout: float) -> None:
        self.budget = Budget(timeout, time.monotonic() + timeout)

    def __enter__(self) -> Budget:
        self.token = BUDGET.set(self.budget)
        return self.budget

    def __exit__(self, *exc: object) -> None:
        BUDGET.reset(self.token)


def render_budget(timeout: float) -> BudgetScope:
    """Limits for the renders inside the block; per thread (and per asyncio task), like any ContextVar."""
    return BudgetScope(timeout)


def tick() -> None:
    """Fail once the render's deadline has passed (without a render budget, e.g. at compile time: never)."""
    budget = BUDGET.get()
    if budget is not None and time.monotonic() > budget.deadline:
        expired(budget)


def expired(budget: Budget) -> None:
    raise TemplateLimitError(f"rendering took longer than the limit of {budget.timeout:g} s")


def ticking(iterable: Iterable[Any], budget: Budget) -> Iterator[Any]:
    """The items of `iterable`, checking the deadline before each: a loop that only burns CPU stops too."""
    deadline = budget.deadline
    clock = time.monotonic
    for item in iterable:
        if clock() > deadline:
            expired(budget)
        yield item


def check_size(size: int, what: str, limit: int = MAX_VALUE_CHARS) -> None:
    if size > limit:
        raise TemplateLimitError(f"{what} would build a value of over {limit} characters (the value limit)")


def count_built(size: int, budget: Budget | None = None) -> None:
    if budget is None:
        budget = BUDGET.get()
    if budget is not None:
        budget.built += size
        if budget.built > MAX_BUILT_CHARS:
            raise TemplateLimitError(
                f"the template built over {MAX_BUILT_CHARS} characters of values in one render (the limit)"
            )


def built(value: Any, what: str) -> Any:
    """Check and count a value the template just built; returns it."""
    size = size_of(value)
    check_size(size, what)
    count_built(size)
    return value


def collect(chunks: Iterable[str], limit: int, what: str) -> list[str]:
    """Rendered chunks into a list of at most `limit` characters (an empty chunk counts as one: a loop
    of empty outputs must not grow the list without end)."""
    collected: list[str] = []
    size = 0
    for chunk in chunks:
        size += len(chunk) or 1
        if size > limit:
            raise TemplateLimitError(f"{what} is over the limit of {limit} characters")
        collected.append(chunk)
    return collected


def escaped_size(text: str) -> int:
    """len(markupsafe.escape(text)), without building it."""
    return (
        len(text)
        + 4 * (text.count("&") + text.count('"') + text.count("'"))
        + 3 * (text.count("<") + text.count(">"))
    )


def repr_size(text: str) -> int:
    """An upper bound of len(repr(text)), exact for printable text."""
    size = len(text) + 2 + text.count("\\")
    if "'" in text and '"' in text:
        size += text.count("'")
    if not text.isprintable():
        size += 9 * len(text.translate(_PRINTABLE_ASCII))
    return size


def escaped_value_size(value: Any) -> int:
    """An upper bound of len(escape(value))."""
    return escaped_size(value) if isinstance(value, str) else 5 * size_of(value)


def repr_bound(value: Any, conversion: str | None) -> int:
    size = repr_size(value) if isinstance(value, str) else size_of(value)
    return 10 * size if conversion == "a" else size  # ascii() escapes every non-ASCII character


def field_size(value: Any, spec: str, kind: str) -> int:
    """What one format field can produce: the value, plus every number in the spec as padding."""
    padding = sum(int(number) for number in _DIGITS.findall(spec))
    if isinstance(value, float) or (isinstance(value, int) and kind and kind in "eEfFgG%"):
        return padding + _FLOAT_DIGITS
    if isinstance(value, int) and not isinstance(value, bool):
        return padding + value.bit_length() * 4 // 3 + 20  # binary digits and grouping separators
    return padding + size_of(value)


def percent_size(fmt: str | bytes, args: Any) -> int:
    """An upper bound of len(fmt % args), from the format's fields (a `%(name)s` may repeat)."""
    text = fmt.decode("latin-1") if isinstance(fmt, bytes) else fmt
    escaping = hasattr(fmt, "__html__")  # Markup % args escapes the arguments
    mapping = args if isinstance(args, Mapping) else None
    values = iter(args if isinstance(args, tuple) else (args,))
    size = len(text)
    for match in _PERCENT_FIELD.finditer(text):
        key, width, precision, kind = match.groups()
        if kind == "%":
            continue
        if width == "*" or precision == "*":
            raise TemplateLimitError("'*' widths in % formats are not allowed")
        value = mapping.get(key) if key is not None and mapping is not None else next(values, None)
        field = repr_bound(value, kind) if kind in ("r", "a") else field_size(value, "", kind)
        if escaping:
            field = escaped_value_size(value) if isinstance(value, str) else 5 * field
        size += int(width or 0) + int(precision or 0) + field
    return size


def size_of(value: Any, limit: int = MAX_VALUE_CHARS) -> int:
    """An upper bound of len(str(value)); stops measuring (returning more than `limit`) once over it."""
    if type(value) is str:
        return len(value)
    return Measure(limit).run(value)


class _Over(Exception):
    pass


class Measure:
    """Walks a value once: its rendered size, and for pprint/tojson its item count and nesting depth."""

    __slots__ = ("depth", "items", "limit", "open", "total")

    def __init__(self, limit: int = MAX_VALUE_CHARS) -> None:
        self.limit = limit
        self.total = 0
        self.items = 0
        self.depth = 0
        self.open: set[int] = set()  # containers being walked: a namespace may hold itself

    def run(self, value: Any) -> int:
        try:
            self._str(value)
        except _Over:
            return max(self.total, self.limit + 1)
        return self.total

    def _add(self, size: int) -> None:
        self.total += size
        if self.total > self.limit:
            raise _Over

    def _str(self, value: Any) -> None:
        if isinstance(value, str):
            self._add(len(value))
        elif isinstance(value, TemplateModule):  # str() is the imported template's output
            self._add(sum(map(len, value._body_stream)))
        elif not isinstance(value, Undefined):  # str() of an Undefined is '' or an error
            self._repr(value, 0)

    def _repr(self, value: Any, depth: int) -> None:
        kind = type(value)
        if kind is str:
            self._add(repr_size(value))
        elif isinstance(value, str):  # Markup('...')
            self._add(repr_size(value) + len(kind.__name__) + 2)
        elif value is None or isinstance(value, bool | float):
            self._add(_FLOAT)
        elif isinstance(value, int):
            self._add(value.bit_length() // 3 + 2)
        elif isinstance(value, bytes | bytearray):
            self._add(4 * len(value) + 14)
        elif isinstance(value, list | tuple | set | frozenset | dict | Namespace) or kind in _DICT_VIEWS:
            self._container(value, depth)
        else:
            self._add(_OPAQUE)

    def _container(self, value: Any, depth: int) -> None:
        if depth >= MAX_NESTING:
            raise TemplateLimitError(f"values nested deeper than {MAX_NESTING} levels are not allowed")
        self.depth = max(self.depth, depth + 1)
        key = id(value)
        if key in self.open:
            self._add(5)  # repr writes [...] or {...}
            return
        self.open.add(key)
        try:
            kind = type(value)
            # Brackets, and a subclass's or view's name: OrderedDict({...}), dict_items([...]), _GroupTuple(...)
            names = getattr(value, "_fields", ())
            self._add(2 + (0 if kind in (list, tuple, dict) else len(kind.__name__) + 13))
            if names:
                self._add(sum(len(name) + 1 for name in names))
            if isinstance(value, Namespace):
                value = value._Namespace__attrs  # what its repr shows
            pairs = value.items() if isinstance(value, dict) else None
            if pairs is not None:
                for item_key, item in pairs:
                    self.items += 1
                    self._add(4)
                    self._repr(item_key, depth + 1)
                    self._repr(item, depth + 1)
            else:
                for item in value:
                    self.items += 1
                    self._add(2)
                    self._repr(item, depth + 1)
        finally:
            self.open.discard(key)
