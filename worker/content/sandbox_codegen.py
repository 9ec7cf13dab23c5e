"""What the sandbox changes in compiled templates: loops, literals, `~` and comparisons call back into the
environment (worker/content/sandbox.py), output buffers count what is written to them, `{% import %}` is counted.

Jinja allows no custom node types, so these are small overrides of its code generator's methods; the
generated code is Jinja's own with a call wrapped around the value (`environment.guard_iter(...)`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from jinja2 import nodes
from jinja2.compiler import CodeGenerator as JinjaCodeGenerator
from jinja2.compiler import Frame, optimizeconst
from jinja2.environment import Template as JinjaTemplate
from jinja2.environment import TemplateModule

from worker.content.limits import MAX_VALUE_CHARS, TemplateLimitError, collect


class GuardedCodeGenerator(JinjaCodeGenerator):
    _loop_iterables: set[int] | None = None  # ids of `for` iterables not written yet

    def buffer(self, frame: Frame) -> None:
        frame.buffer = self.temporary_identifier()
        self.writeline(f"{frame.buffer} = environment.output_buffer()")

    def visit_For(self, node: nodes.For, frame: Frame) -> None:
        if self._loop_iterables is None:
            self._loop_iterables = set()
        self._loop_iterables.add(id(node.iter))
        super().visit_For(node, frame)

    def visit(self, node: nodes.Node, *args: Any, **kwargs: Any) -> Any:
        # Jinja allows no custom node types: a loop's iterable is wrapped when it is written.
        if self._loop_iterables and id(node) in self._loop_iterables:
            self._loop_iterables.discard(id(node))
            self.write("environment.guard_iter(")
            super().visit(node, *args, **kwargs)
            self.write(")")
            return None
        return super().visit(node, *args, **kwargs)

    def visit_List(self, node: nodes.List, frame: Frame) -> None:
        self.write("environment.literal(")
        super().visit_List(node, frame)
        self.write(")")

    def visit_Dict(self, node: nodes.Dict, frame: Frame) -> None:
        self.write("environment.literal(")
        super().visit_Dict(node, frame)
        self.write(")")

    def visit_Tuple(self, node: nodes.Tuple, frame: Frame) -> None:
        if node.ctx != "load":  # `for a, b in ...`, `{% set a, b = ... %}`: assignment targets
            super().visit_Tuple(node, frame)
            return
        self.write("environment.literal(")
        super().visit_Tuple(node, frame)
        self.write(")")

    def visit_Compare(self, node: nodes.Compare, frame: Frame) -> None:
        # `in` and `==` on long values cost a little each; thousands in one expression must not add up unseen.
        self.write("environment.ticked(")
        super().visit_Compare(node, frame)
        self.write(")")

    @optimizeconst
    def visit_Concat(self, node: nodes.Concat, frame: Frame) -> None:
        # As Jinja's, with the parts measured before they are joined.
        if frame.eval_ctx.volatile:
            func_name = "(markup_join if context.eval_ctx.volatile else str_join)"
        elif frame.eval_ctx.autoescape:
            func_name = "markup_join"
        else:
            func_name = "str_join"
        self.write(f"{func_name}(environment.parts((")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write(")))")


class OutputBuffer(list[str]):
    """The output of a macro, call or filter block or `{% set %}` block, counted as it is written."""

    __slots__ = ("size",)

    def __init__(self) -> None:
        super().__init__()
        self.size = 0

    def append(self, chunk: str) -> None:
        self.size += len(chunk) or 1  # empty chunks count: a loop of them must not grow the list unseen
        if self.size > MAX_VALUE_CHARS:
            raise TemplateLimitError(
                f"the output of a macro or block is over the limit of {MAX_VALUE_CHARS} characters"
            )
        super().append(chunk)

    def extend(self, chunks: Iterable[str]) -> None:
        for chunk in chunks:
            self.append(chunk)


class GuardedTemplate(JinjaTemplate):
    def make_module(
        self,
        vars: dict[str, Any] | None = None,
        shared: bool = False,
        locals: Mapping[str, Any] | None = None,
    ) -> TemplateModule:
        # `{% import %}` renders the whole template into a list before it is used: counted like a buffer.
        context = self.new_context(vars, shared, locals)
        body = collect(self.root_render_func(context), MAX_VALUE_CHARS, "the output of an imported template")
        return TemplateModule(self, context, body)
