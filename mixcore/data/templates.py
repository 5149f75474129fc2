"""Chat templates: turning a conversation into text segments that say what the model learns.

Two renderers produce the same shape of result, a list of ``(text, trainable)`` segments:

* :func:`render_segments` follows PaddleNLP 2.8.1's ``chat_template.json`` form, so templates
  written for PaddleNLP / PaddleMIX render identically here. The file is a JSON object with
  optional ``system`` (a string), ``conversation`` (two strings: the user-turn and the
  assistant-turn template) and ``query`` (the template of a final, unanswered user turn). Each is
  a Jinja2 template rendered in a sandbox with PaddleNLP's settings (``trim_blocks``,
  ``lstrip_blocks``, ``keep_trailing_newline``, a ``raise_exception`` function). Variables:
  ``{{user}}``, ``{{bot}}`` and ``{{index}}`` (0-based turn number) in ``conversation``;
  ``{{query}}`` and ``{{index}}`` in ``query``; and everywhere the context PaddleNLP passes:
  ``is_training``, ``is_first`` / ``is_last`` (per turn), ``length`` (number of turns, prompts
  only, as in PaddleNLP), plus anything given in ``context``. A record's system message is
  available as ``{{system}}`` (a mixcore extension; PaddleNLP has no per-record system text).
* :func:`render_chatml_segments` is the default ChatML layout used by Qwen models.

Model plugins tokenize each segment on its own (as PaddleNLP's ``encode_chat_inputs`` encodes
system, user and bot parts separately) and put labels only on tokens of trainable segments.
"""

from __future__ import annotations

import difflib
import functools
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mixcore.data.jsonfile import read_json
from mixcore.errors import DataError
from mixcore.records import Message

if TYPE_CHECKING:
    from jinja2 import Template

__all__ = [
    "DEFAULT_SYSTEM",
    "TEMPLATE_KEYS",
    "load_chat_template",
    "render_chatml_segments",
    "render_segments",
    "validate_chat_template",
]

#: Keys of a PaddleNLP ``chat_template.json`` (the fields of its ``ChatTemplate`` dataclass).
TEMPLATE_KEYS = ("system", "conversation", "query")

#: Qwen's default system prompt, used by :func:`render_chatml_segments`.
DEFAULT_SYSTEM = "You are a helpful assistant."

Segments = list[tuple[str, bool]]


def validate_chat_template(template: Any, *, source: str = "chat template") -> dict[str, Any]:
    """Check a template dict and return it normalised to all of :data:`TEMPLATE_KEYS`.

    Absent keys become None, matching PaddleNLP's dataclass defaults. Every Jinja2 string is
    compiled now, so a syntax error is reported with its key and line when the config is loaded,
    not when the first batch is built. Raises :class:`DataError` naming ``source`` and the key.
    """

    def fail(reason: str) -> DataError:
        return DataError(reason, source=source)

    if not isinstance(template, dict):
        raise fail(f"a chat template must be a JSON object, got {type(template).__name__}")
    for key in template:
        if key not in TEMPLATE_KEYS:
            hint = difflib.get_close_matches(str(key), TEMPLATE_KEYS, n=1)
            did_you_mean = f" (did you mean {hint[0]!r}?)" if hint else ""
            raise fail(
                f"unknown key {key!r}{did_you_mean}; a chat template has "
                + ", ".join(repr(k) for k in TEMPLATE_KEYS)
            )
    result: dict[str, Any] = {key: template.get(key) for key in TEMPLATE_KEYS}
    for key in ("system", "query"):
        if result[key] is not None and not isinstance(result[key], str):
            raise fail(f"key {key!r} must be a string, got {type(result[key]).__name__}")
    conversation = result["conversation"]
    if conversation is not None:
        if (
            not isinstance(conversation, list)
            or len(conversation) != 2
            or not all(isinstance(part, str) for part in conversation)
        ):
            raise fail(
                "key 'conversation' must be a list of two strings: the user-turn template and "
                f"the assistant-turn template, got {conversation!r}"
            )
        result["conversation"] = list(conversation)
    if all(result[key] is None for key in TEMPLATE_KEYS):
        raise fail("the chat template defines none of " + ", ".join(TEMPLATE_KEYS))

    from jinja2 import TemplateSyntaxError

    named = [("system", result["system"]), ("query", result["query"])]
    if conversation is not None:
        named += [("conversation[0]", conversation[0]), ("conversation[1]", conversation[1])]
    for key, text in named:
        if text is None:
            continue
        try:
            _compile(text)
        except TemplateSyntaxError as exc:
            raise fail(
                f"key {key!r}: template syntax error at line {exc.lineno}: {exc.message}"
            ) from None
    return result


def load_chat_template(path: Path) -> dict[str, Any]:
    """Read and validate a PaddleNLP ``chat_template.json``; errors name ``path`` and the key."""
    source = str(path)
    data = read_json(path, "chat template file")
    return validate_chat_template(data, source=source)


@functools.lru_cache(maxsize=1)
def _environment() -> Any:
    """A sandboxed Jinja2 environment configured exactly like PaddleNLP's ``ChatTemplate``."""
    from jinja2.exceptions import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise TemplateError(message)

    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True
    )
    env.globals["raise_exception"] = raise_exception
    return env


@functools.lru_cache(maxsize=256)
def _compile(text: str) -> Template:
    return _environment().from_string(text)


def _referenced_names(template: Mapping[str, Any]) -> frozenset[str]:
    texts = (template["system"], template["query"], *(template["conversation"] or ()))
    return _names_in(tuple(text for text in texts if text is not None))


@functools.lru_cache(maxsize=64)
def _names_in(texts: tuple[str, ...]) -> frozenset[str]:
    from jinja2 import meta

    names: set[str] = set()
    for text in texts:
        names |= meta.find_undeclared_variables(_environment().parse(text))
    return frozenset(names)


def _split(
    messages: Sequence[Message],
) -> tuple[str | None, list[tuple[str, str]], str | None]:
    """Split messages into (system, answered turns, trailing unanswered user text)."""
    rest = list(messages)
    system = None
    if rest and rest[0].role == "system":
        system = rest.pop(0).content
    turns: list[tuple[str, str]] = []
    for n in range(0, len(rest) - 1, 2):
        user, reply = rest[n], rest[n + 1]
        if user.role != "user" or reply.role != "assistant":
            raise ValueError(
                f"messages {n} and {n + 1} after the system message must be a user and an "
                f"assistant message, got {user.role!r} and {reply.role!r}"
            )
        turns.append((user.content, reply.content))
    query = None
    if len(rest) % 2:
        last = rest[-1]
        if last.role != "user":
            raise ValueError(f"an unanswered last message must be from the user, got {last.role!r}")
        query = last.content
    if not turns and query is None:
        raise ValueError("the conversation has no user message")
    return system, turns, query


def _append(segments: Segments, text: str, trainable: bool) -> None:
    if text:
        segments.append((text, trainable))


def render_segments(
    template: Mapping[str, Any] | None,
    messages: Sequence[Message],
    *,
    context: Mapping[str, Any] | None = None,
    source: str = "",
    index: int | None = None,
) -> Segments:
    """Render ``messages`` with a PaddleNLP-form chat template into ``(text, trainable)`` pairs.

    ``messages`` is an optional system message followed by alternating user / assistant
    messages. If it ends with an assistant reply it is rendered as training data, mirroring
    PaddleNLP's ``encode_chat_inputs`` with ``is_training`` true: the rendered ``system``, then
    per turn the rendered ``conversation[0]`` (not trainable) and ``conversation[1]``
    (trainable). If it ends with a user message it is rendered as a prompt, mirroring
    ``ChatTemplate.__call__``: system, earlier turns through ``conversation``, the last user text
    through ``query`` (or verbatim when the template has none); nothing but earlier replies is
    flagged trainable. Empty segments are dropped.

    ``template`` None means the default ChatML layout (:func:`render_chatml_segments`); model
    plugins whose own default is not ChatML should pass their template instead. A system message
    in ``messages`` needs a template that uses ``{{system}}``, or it would silently vanish.
    Errors (bad message order, template errors) are :class:`DataError` naming ``source`` /
    ``index``, which callers set from the sample.
    """
    if template is None:
        return render_chatml_segments(messages, source=source, index=index)
    try:
        system, turns, query = _split(messages)
    except ValueError as exc:
        raise DataError(str(exc), source=source, index=index) from None
    template = validate_chat_template(template, source=source or "chat template")
    if system is not None and "system" not in _referenced_names(template):
        raise DataError(
            "the sample has a system message but the chat template never uses {{system}}; "
            "add it to the template's 'system' entry or drop the message",
            source=source,
            index=index,
        )

    from jinja2 import TemplateError

    training = query is None
    ctx: dict[str, Any] = {"is_training": training, **(context or {})}
    if system is not None:
        ctx["system"] = system
    segments: Segments = []
    try:
        if template["system"]:
            _append(segments, _compile(template["system"]).render(**ctx), False)
        if turns and template["conversation"] is None:
            raise DataError(
                "the chat template has no 'conversation' entry, needed for answered turns",
                source=source,
                index=index,
            )
        if not training:
            ctx["length"] = len(turns) + 1
        for n, (user, reply) in enumerate(turns):
            ctx["is_first"] = n == 0
            ctx["is_last"] = training and n == len(turns) - 1
            variables = {"user": user, "bot": reply, "index": n, **ctx}
            user_part, bot_part = template["conversation"]
            _append(segments, _compile(user_part).render(variables), False)
            _append(segments, _compile(bot_part).render(variables), True)
        if query is not None:
            if template["query"] is None:
                _append(segments, query, False)
            else:
                variables = {"query": query, "index": len(turns), **ctx}
                _append(segments, _compile(template["query"]).render(variables), False)
    except TemplateError as exc:
        raise DataError(
            f"chat template failed to render: {exc}", source=source, index=index
        ) from exc
    return segments


def render_chatml_segments(
    messages: Sequence[Message],
    system: str | None = DEFAULT_SYSTEM,
    *,
    source: str = "",
    index: int | None = None,
) -> Segments:
    """Render ``messages`` in the ChatML layout Qwen models are trained with.

    Layout::

        <|im_start|>system\\n{system}<|im_end|>\\n
        <|im_start|>user\\n{user}<|im_end|>\\n<|im_start|>assistant\\n{reply}<|im_end|>
        \\n<|im_start|>user\\n...

    A system message in ``messages`` replaces ``system``; ``system=None`` with no system message
    leaves the system block out. Trainable: each reply *and its closing* ``<|im_end|>``, so the
    model learns to stop; the role headers, the user turns and the newline between turns are
    context, not targets (the newline follows a stop token, so predicting it teaches nothing).
    A conversation ending with a user message ends with the open ``<|im_start|>assistant\\n``
    header, ready for generation. A bad message order is a :class:`DataError` naming ``source``
    and ``index``.
    """
    try:
        head, turns, query = _split(messages)
    except ValueError as exc:
        raise DataError(str(exc), source=source, index=index) from None
    if head is not None:
        system = head
    segments: Segments = []
    prefix = f"<|im_start|>system\n{system}<|im_end|>\n" if system is not None else ""
    for user, reply in turns:
        segments.append(
            (f"{prefix}<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n", False)
        )
        segments.append((f"{reply}<|im_end|>", True))
        prefix = "\n"
    if query is not None:
        segments.append(
            (f"{prefix}<|im_start|>user\n{query}<|im_end|>\n<|im_start|>assistant\n", False)
        )
    return segments
