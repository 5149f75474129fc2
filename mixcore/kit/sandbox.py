"""A Jinja sandbox whose renderings end quickly and stay small, for chat templates from configs.

Jinja's ``ImmutableSandboxedEnvironment`` stops a template from reaching Python internals, but
not from running for hours or filling memory: ``{% for i in range(10**5) %}`` nested twice,
``{{ 'x' * 10**10 }}`` (which Jinja even evaluates while *compiling*, as a constant), or a string
doubled by ``~`` a few dozen times. A chat template comes from a user's config or a downloaded
``tokenizer_config.json``, and it is rendered several times per sample, so every rendering here
is bounded:

* **loops**: all ``for`` loops of one rendering together may run :data:`MAX_LOOP_ITERATIONS`
  times (``range()`` counts the same way, and may not be longer than that by itself);
* **sizes**: no string or list built by ``*``, ``+``, ``%``, ``~``, or by a padding, joining,
  replacing or formatting filter or string method, may exceed :data:`MAX_VALUE_LENGTH`; ``**`` may not make
  an integer of more than :data:`MAX_POWER_BITS` bits;
* **output**: a rendering may output at most :data:`MAX_VALUE_LENGTH` characters more than the
  text passed to it (the messages).

A template crossing a bound raises :class:`TemplateLimitError`, a Jinja ``TemplateError``, which
the renderers turn into a :class:`~mixcore.api.errors.DataError` naming the template's source.
"""

from __future__ import annotations

import copy
import functools
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from jinja2 import nodes
from jinja2.compiler import CodeGenerator, Frame
from jinja2.exceptions import TemplateError
from jinja2.runtime import Context
from jinja2.sandbox import ImmutableSandboxedEnvironment

#: Loop iterations (``for`` bodies and ``range()`` items) one rendering may run. Real chat
#: templates loop once over the messages, a few times at most.
MAX_LOOP_ITERATIONS = 100_000
#: Longest string or list a template expression may build, and the most characters a rendering
#: may add to its input (about 250k tokens: beyond any model's context).
MAX_VALUE_LENGTH = 1_000_000
#: Largest integer ``**`` may produce, in bits.
MAX_POWER_BITS = 4096

#: Name of the per-rendering budget in a template's context (private: the sandbox refuses
#: attributes starting with "_", so a template cannot reset it).
_BUDGET = "_mixcore_budget"
_BIG_NUMBER = re.compile(r"\d{7,}")  # a width or precision of a million characters or more


class TemplateLimitError(TemplateError):
    """A chat template went past one of the sandbox's bounds."""


class _Budget:
    """Loop iterations left to one rendering."""

    def __init__(self) -> None:
        self._left = MAX_LOOP_ITERATIONS

    def _take(self, n: int = 1) -> None:
        self._left -= n
        if self._left < 0:
            raise TemplateLimitError(
                f"the template's loops ran more than {MAX_LOOP_ITERATIONS:,} times in one "
                "rendering (nested loops, or a loop over a huge range)"
            )


def _length(value: Any) -> int:
    return len(value) if isinstance(value, (str, list, tuple)) else 0


def _check_length(length: int, what: str) -> None:
    if length > MAX_VALUE_LENGTH:
        raise TemplateLimitError(
            f"{what} would be {length:,} long, above the sandbox's limit of "
            f"{MAX_VALUE_LENGTH:,} characters or items"
        )


def check_width(width: Any, what: str) -> None:
    if isinstance(width, int) and width > MAX_VALUE_LENGTH:
        _check_length(width, what)


def _check_format(text: Any, what: str) -> None:
    if isinstance(text, str) and _BIG_NUMBER.search(text):
        raise TemplateLimitError(f"{what} asks for a width or precision of a million or more")


def _replace_length(text: Any, old: Any, new: Any, count: Any = -1) -> int:
    if not isinstance(text, str) or not isinstance(old, str) or not isinstance(new, str):
        return 0
    found = text.count(old) if old else len(text) + 1
    if isinstance(count, int) and count >= 0:
        found = min(found, count)
    return len(text) + found * (len(new) - len(old))


def _join_length(items: Any, separator: Any = "") -> int:
    if not isinstance(items, (list, tuple)):
        return 0
    sep = len(separator) if isinstance(separator, str) else 0
    return sum(len(i) if isinstance(i, str) else 0 for i in items) + sep * len(items)


def _guard_filter(name: str, check: Callable[..., None], filters: dict[str, Any]) -> None:
    """Run ``check`` with a filter's arguments before the filter (same signature, same
    ``pass_context``-style marker, kept by ``functools.wraps``)."""
    original = filters[name]

    @functools.wraps(original)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        check(*args, **kwargs)
        return original(*args, **kwargs)

    filters[name] = guarded


#: String methods a template may call whose result grows with an integer argument.
_WIDTH_METHODS = frozenset({"center", "ljust", "rjust", "zfill", "expandtabs"})


def _power_too_big(base: Any, exponent: Any) -> bool:
    if not (isinstance(base, int) and isinstance(exponent, int)) or abs(base) < 2 or exponent < 1:
        return False
    return abs(base).bit_length() * exponent > MAX_POWER_BITS


class _BoundedCodeGenerator(CodeGenerator):
    """Jinja's code generator with every ``for`` loop's iterable counted against the rendering's
    budget and every ``~`` concatenation's result measured (neither goes through a hook of the
    sandbox otherwise)."""

    def visit_For(self, node: nodes.For, frame: Frame) -> None:
        counted = nodes.Call(
            nodes.EnvironmentAttribute("mixcore_counted"),
            [nodes.ContextReference(), node.iter],
            [],
            None,
            None,
            lineno=node.lineno,
        )
        counted_loop = copy.copy(node)
        counted_loop.iter = counted
        super().visit_For(counted_loop, frame)

    def visit_Concat(self, node: nodes.Concat, frame: Frame) -> None:
        self.write("environment.mixcore_measured(")
        super().visit_Concat(node, frame)
        self.write(")")


class BoundedSandbox(ImmutableSandboxedEnvironment):
    """The immutable sandbox with the bounds of this module's docstring."""

    code_generator_class = _BoundedCodeGenerator
    # Intercepted operators are also never folded into constants at compile time.
    intercepted_binops = frozenset({"*", "**", "+", "%"})

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.globals["range"] = self._range
        # Jinja's own filters, by their signatures (replace and join take the evaluation
        # context first).
        guard = functools.partial(_guard_filter, filters=self.filters)
        guard("center", lambda s, width=80: check_width(width, "the result of 'center'"))
        guard("indent", lambda s, width=4, *a, **k: check_width(width, "the result of 'indent'"))
        guard(
            "replace",
            lambda ctx, s, old, new, count=None: _check_length(
                _replace_length(s, old, new, -1 if count is None else count),
                "the result of 'replace'",
            ),
        )
        guard(
            "join",
            lambda ctx, value, d="", attribute=None: _check_length(
                _join_length(value, d), "the result of 'join'"
            ),
        )
        guard("format", lambda value, *a, **k: _check_format(value, "'format'"))

    @staticmethod
    def _range(*args: int) -> range:
        numbers = range(*args)
        if len(numbers) > MAX_LOOP_ITERATIONS:
            raise TemplateLimitError(
                f"range() of {len(numbers):,} numbers is above the sandbox's limit of "
                f"{MAX_LOOP_ITERATIONS:,}"
            )
        return numbers

    def mixcore_counted(self, context: Context, iterable: Iterable[Any]) -> Iterator[Any]:
        budget = context.get(_BUDGET)
        for item in iterable:
            if isinstance(budget, _Budget):
                budget._take()
            yield item

    def mixcore_measured(self, value: Any) -> Any:
        _check_length(_length(value), "a string joined with '~'")
        return value

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        if operator == "*":
            for seq, n in ((left, right), (right, left)):
                if isinstance(n, int) and not isinstance(n, bool) and _length(seq):
                    _check_length(_length(seq) * n, "a repeated string or list")
        elif operator == "+":
            _check_length(_length(left) + _length(right), "a joined string or list")
        elif operator == "**" and _power_too_big(left, right):
            raise TemplateLimitError(
                f"{left} ** {right} would be an integer of more than {MAX_POWER_BITS} bits"
            )
        elif operator == "%":
            _check_format(left, "a '%' format")
        result = super().call_binop(context, operator, left, right)
        if operator == "%":
            _check_length(_length(result), "a '%' format's result")
        return result

    def call(__self, __context: Context, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        name = getattr(__obj, "__name__", "")
        if isinstance(getattr(__obj, "__self__", None), str):
            text = __obj.__self__
            if name in _WIDTH_METHODS:
                for value in (*args, *kwargs.values()):
                    check_width(value, f"the result of str.{name}")
            elif name == "replace":
                _check_length(_replace_length(text, *args, **kwargs), "the result of replace")
            elif name == "join" and args:
                items = list(args[0])
                _check_length(_join_length(items, text), "the result of join")
                args = (items, *args[1:])
            elif name == "format":
                _check_format(text, "str.format")
        return super().call(__context, __obj, *args, **kwargs)


def render_bounded(template: Any, variables: Mapping[str, Any], *, input_length: int) -> str:
    """Render ``template`` (compiled by a :class:`BoundedSandbox`) with ``variables``.

    ``input_length`` is the number of characters passed in (the messages' text): the output may
    exceed it by :data:`MAX_VALUE_LENGTH`. Raises :class:`TemplateLimitError` past a bound.
    """
    limit = input_length + MAX_VALUE_LENGTH
    parts: list[str] = []
    total = 0
    for chunk in template.generate({**variables, _BUDGET: _Budget()}):
        total += len(chunk)
        if total > limit:
            raise TemplateLimitError(
                f"the template's output passed {limit:,} characters ({MAX_VALUE_LENGTH:,} more "
                "than the text of the messages)"
            )
        parts.append(chunk)
    return "".join(parts)
