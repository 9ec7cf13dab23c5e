"""The sandboxed Jinja2 environment realm templates run in, with the limits of worker/content/limits.py built in.

Jinja2's ImmutableSandboxedEnvironment keeps a template away from Python internals and from changing its
inputs; it does not bound what a template costs. This environment hooks every place a template builds a
value or spends time:

- the sandbox's own hooks: intercepted operators (`+ - * % **`), `call` (functions, methods, macros),
  `getitem` (slices), and `str.format` (a formatter that counts field by field);
- what the code generator routes here (worker/content/sandbox_codegen.py): `~`, list/tuple/dict literals,
  comparisons, `for` loops, and the counted output buffers of macros and blocks;
- `finalize` on every `{{ ... }}`, `concat` on block references;
- the filter and test tables and `lipsum` (worker/content/sandbox_filters.py).

A hook checks the size of what is about to be built where it can be known in advance, measures the result
otherwise, and checks the render's deadline: a template stops within about one operation of its timeout.
"""

from __future__ import annotations

import types
from collections.abc import Callable, Iterable
from functools import update_wrapper
from time import monotonic
from typing import Any

from jinja2 import BaseLoader, Environment, FileSystemLoader, StrictUndefined, TemplateError
from jinja2.nodes import EvalContext
from jinja2.runtime import BlockReference, Context, LoopContext, Macro
from jinja2.sandbox import ImmutableSandboxedEnvironment, SandboxedFormatter, SecurityError
from jinja2.utils import Namespace, pass_eval_context
from markupsafe import EscapeFormatter, Markup

from worker.content.limits import (
    BUDGET,
    MAX_BUILT_CHARS,
    MAX_CALL_DEPTH,
    MAX_INT_BITS,
    MAX_TEMPLATE_BYTES,
    MAX_VALUE_CHARS,
    TemplateLimitError,
    built,
    check_size,
    collect,
    count_built,
    escaped_size,
    escaped_value_size,
    expired,
    field_size,
    percent_size,
    repr_bound,
    size_of,
    tick,
    ticking,
)
from worker.content.sandbox_codegen import GuardedCodeGenerator, GuardedTemplate, OutputBuffer
from worker.content.sandbox_filters import check_text_method, install_guards

_SEQUENCES = (str, bytes, list, tuple)
_NESTING = (Macro, LoopContext, BlockReference)  # calls that run template code: macros, caller, loop, super
# What Jinja adds to calls inside loops and blocks (the scope's variables; Context.call takes them out).
_JINJA_KWARGS = frozenset({"_loop_vars", "_block_vars"})


@pass_eval_context
def _finalize(eval_ctx: EvalContext, value: Any) -> Any:
    """Every `{{ ... }}`: nothing over the value limit is turned into text (str of a list of shared items,
    escaping). Non-strings are made strings here, once, after their size is known."""
    if not isinstance(value, str):
        check_size(size_of(value), "an output")
        if hasattr(value, "__html__"):
            return value
        value = str(value)
    if eval_ctx.autoescape and 5 * len(value) > MAX_VALUE_CHARS and not hasattr(value, "__html__"):
        check_size(escaped_size(value), "escaping an output")
    return value


class GuardedSandbox(ImmutableSandboxedEnvironment):
    code_generator_class = GuardedCodeGenerator
    template_class = GuardedTemplate
    intercepted_binops = frozenset({"+", "-", "*", "%", "**"})

    def __init__(self, **options: Any) -> None:
        super().__init__(finalize=_finalize, **options)
        self.globals["namespace"] = CappedNamespace
        install_guards(self)

    def compile(self, *args: Any, **kwargs: Any) -> Any:
        # Templates are compiled on first use, inside a render (layouts and includes too, lazily); a
        # 256 KiB override takes seconds. Not the template's running time: a template that fits the
        # deadline must not fail on its first render only.
        started = monotonic()
        try:
            return super().compile(*args, **kwargs)
        finally:
            budget = BUDGET.get()
            if budget is not None:
                budget.deadline += monotonic() - started

    # -- what the code generator routes here --------------------------------------------------------------

    def output_buffer(self) -> OutputBuffer:
        return OutputBuffer()

    def concat(self, chunks: Iterable[str]) -> str:
        if isinstance(chunks, OutputBuffer):
            # Counted as it was written; the join is a new value, and straight-line `{% set %}` blocks
            # could each escape a long value without any other deadline check.
            tick()
            count_built(chunks.size)
            return "".join(chunks)
        # A block reference (`self.body()`, `super()`) renders a block through here.
        return "".join(collect(chunks, MAX_VALUE_CHARS, "the output of a block"))

    def guard_iter(self, iterable: Any) -> Any:
        budget = BUDGET.get()
        return iterable if budget is None else ticking(iterable, budget)

    def literal(self, value: Any) -> Any:
        tick()
        check_size(size_of(value), "a literal")
        return value

    def ticked(self, value: Any) -> Any:
        budget = BUDGET.get()
        if budget is not None and monotonic() > budget.deadline:
            expired(budget)
        return value

    def parts(self, parts: tuple[Any, ...]) -> tuple[Any, ...]:
        """The operands of `~`, once their joined size is known to be within the limit."""
        budget = BUDGET.get()
        if budget is not None and monotonic() > budget.deadline:
            expired(budget)
        size = 0
        for part in parts:
            if type(part) is not str:  # markup_join escapes the plain parts as soon as one part is markup
                escaping = any(hasattr(part, "__html__") for part in parts)
                size = sum(
                    escaped_value_size(part) if escaping and not hasattr(part, "__html__") else size_of(part)
                    for part in parts
                )
                break
            size += len(part)
        if size > MAX_VALUE_CHARS:
            check_size(size, "'~'")
        if budget is not None:
            budget.built += size
            if budget.built > MAX_BUILT_CHARS:
                count_built(0, budget)  # raises, naming the limit
        return parts

    # -- the sandbox's hooks ------------------------------------------------------------------------------

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        tick()
        size = _binop_size(operator, left, right)
        result = super().call_binop(context, operator, left, right)
        if isinstance(result, int):
            _check_bits(result.bit_length())  # `+` and `-` grow integers a bit at a time
        elif size is not None:
            count_built(size)
        return result

    def call(__self, __context: Context, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        # The hottest hook (every `msg()`, `super()`, method and macro call): labels are built on failure only.
        budget = BUDGET.get()
        if budget is not None and monotonic() > budget.deadline:
            expired(budget)
        # Together, not each: `cycler(x, x, x, ...)` keeps every argument, and `.items` hands them back.
        size = 0
        for arg in args:
            size += len(arg) if type(arg) is str else size_of(arg)
        for key, arg in kwargs.items():
            if key not in _JINJA_KWARGS:
                size += len(arg) if type(arg) is str else size_of(arg)
        if size > MAX_VALUE_CHARS:
            check_size(size, f"the arguments of {_name(__obj)}")
        if type(__obj) is types.BuiltinMethodType and isinstance(__obj.__self__, str | bytes):
            args = check_text_method(__obj.__self__, __obj.__name__, args, kwargs)
        elif type(__obj) is LoopContext and args:  # `loop(children)` of a recursive loop
            args = (__self.guard_iter(args[0]), *args[1:])
        if not __self.is_safe_callable(__obj):
            raise SecurityError(f"{__obj!r} is not safely callable")
        if budget is None or not isinstance(__obj, _NESTING):
            result = __context.call(__obj, *args, **kwargs)
        else:
            if budget.depth >= MAX_CALL_DEPTH:
                raise TemplateLimitError(
                    f"macros, call blocks, recursive loops and blocks nest deeper than the limit of "
                    f"{MAX_CALL_DEPTH}"
                )
            budget.depth += 1
            try:
                result = __context.call(__obj, *args, **kwargs)
            finally:
                budget.depth -= 1
        size = len(result) if isinstance(result, str) else size_of(result)
        if size > MAX_VALUE_CHARS:
            check_size(size, f"the result of {_name(__obj)}")
        if budget is not None:
            budget.built += size
            if budget.built > MAX_BUILT_CHARS:
                count_built(0, budget)  # raises, naming the limit
        return result

    def getitem(self, obj: Any, argument: Any) -> Any:
        # Lookups cost little and need no deadline check; a slice copies.
        value = super().getitem(obj, argument)
        if isinstance(argument, slice):
            tick()
            built(value, "a slice")
        return value

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        """Jinja's, with a formatter that checks each field before formatting it (`'{:{}}'`, `'{0}{0}'`)."""
        if not isinstance(value, types.MethodType | types.BuiltinMethodType) or value.__name__ not in (
            "format",
            "format_map",
        ):
            return None
        text = value.__self__
        if not isinstance(text, str):
            return None
        str_type = type(text)
        is_format_map = value.__name__ == "format_map"

        def wrapper(*args: Any, **kwargs: Any) -> str:
            if is_format_map:
                if kwargs:
                    raise TypeError("format_map() takes no keyword arguments")
                if len(args) != 1:
                    raise TypeError(f"format_map() takes exactly one argument ({len(args)} given)")
                kwargs, args = args[0], ()
            formatter: _CountingFormatter
            if isinstance(text, Markup):
                formatter = _CountingEscapeFormatter(self, escape=text.escape)
            else:
                formatter = _CountingFormatter(self)
            return str_type(formatter.vformat(text, args, kwargs))

        return update_wrapper(wrapper, value)


class CappedNamespace(Namespace):
    """`namespace()`: its attributes together render as at most MAX_VALUE_CHARS characters."""

    def __setitem__(self, name: str, value: Any) -> None:
        tick()
        attributes = {**self._Namespace__attrs, name: value}
        check_size(size_of(attributes), "a namespace attribute")
        super().__setitem__(name, value)


class _CountingFormatter(SandboxedFormatter):
    """str.format, checking each field's size (value, width, precision) before formatting it."""

    size = 0

    def vformat(self, format_string: str, args: Any, kwargs: Any) -> str:
        self.size = len(format_string)
        return super().vformat(format_string, args, kwargs)

    def convert_field(self, value: Any, conversion: str | None) -> Any:
        if conversion in ("r", "a"):
            check_size(self.size + repr_bound(value, conversion), "format")
        return super().convert_field(value, conversion)

    def format_field(self, value: Any, format_spec: str) -> Any:
        tick()
        check_size(self.size + field_size(value, format_spec, format_spec[-1:]), "format")
        text = super().format_field(value, format_spec)
        self.size += len(text)
        check_size(self.size, "format")
        return text


class _CountingEscapeFormatter(_CountingFormatter, EscapeFormatter):
    pass


def _binop_size(operator: str, left: Any, right: Any) -> int | None:
    """The size of what the operator builds, checked before it runs; None if it builds no sequence."""
    size = None
    if operator == "*":
        if isinstance(left, _SEQUENCES) and isinstance(right, int):
            size = _repeated_size(left, right)
        elif isinstance(right, _SEQUENCES) and isinstance(left, int):
            size = _repeated_size(right, left)
        elif isinstance(left, int) and isinstance(right, int):
            _check_bits(left.bit_length() + right.bit_length())
    elif (
        operator == "**" and isinstance(left, int) and isinstance(right, int) and abs(left) > 1 and right > 0
    ):
        _check_bits(right * abs(left).bit_length())
    elif operator == "%" and isinstance(left, str | bytes):
        size = percent_size(left, right)
    elif operator == "+" and isinstance(left, _SEQUENCES) and isinstance(right, _SEQUENCES):
        html_left, html_right = hasattr(left, "__html__"), hasattr(right, "__html__")
        # Markup + str escapes the str (either side).
        left_size = escaped_value_size(left) if html_right and not html_left else size_of(left)
        right_size = escaped_value_size(right) if html_left and not html_right else size_of(right)
        size = left_size + right_size
    if size is not None:
        check_size(size, f"'{operator}'")
    return size


def _repeated_size(sequence: Any, times: int) -> int:
    times = max(times, 0)
    if isinstance(sequence, list | tuple):  # one pair of brackets around all the copies
        return 2 + (size_of(sequence) - 2) * times
    return size_of(sequence) * times


def _check_bits(bits: int) -> None:
    # str() of 4096 bits is 1234 digits; beyond, `*` and `//` get slow and cannot be interrupted.
    if bits > MAX_INT_BITS:
        raise TemplateLimitError(f"integers over {MAX_INT_BITS} bits are not allowed")


def _name(obj: Any) -> str:
    if isinstance(obj, Macro):
        return f"macro {obj.name}"
    return getattr(getattr(obj, "__wrapped__", obj), "__name__", None) or type(obj).__name__


def _autoescape(name: str | None) -> bool:
    return name is not None and name.endswith(".html.j2")


class SizedLoader(FileSystemLoader):
    """A realm's override directory: a file over MAX_TEMPLATE_BYTES is an error of that template."""

    def get_source(self, environment: Environment, template: str) -> tuple[str, str, Callable[[], bool]]:
        source, filename, uptodate = super().get_source(environment, template)
        if len(source) > MAX_TEMPLATE_BYTES:
            raise TemplateError(f"{template} has {len(source)} characters; the limit is {MAX_TEMPLATE_BYTES}")
        return source, filename, uptodate


def new_environment(loader: BaseLoader) -> GuardedSandbox:
    # One environment type for defaults and realm overrides: a default template copied into a realm
    # directory behaves the same there, and the defaults are held to the same limits.
    return GuardedSandbox(
        loader=loader,
        undefined=StrictUndefined,
        autoescape=_autoescape,
        trim_blocks=True,
        lstrip_blocks=True,
        auto_reload=False,  # realm directories are watched by the renderer; defaults never change at runtime
        cache_size=1000,
    )
