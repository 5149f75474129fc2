"""Chat templates: turning a conversation into text segments that say what the model learns.

Every renderer produces the same shape of result, a list of ``(text, trainable)`` segments, and
:func:`render_segments` dispatches on the template's form:

* **PaddleNLP form** (a dict, from a ``chat_template.json`` file or inline in the config), so
  templates written for PaddleNLP / PaddleMIX render identically here. It is a JSON object with
  optional ``system`` (a string), ``conversation`` (two strings: the user-turn and the
  assistant-turn template) and ``query`` (the template of a final, unanswered user turn). Each is
  a Jinja2 template rendered in a sandbox with PaddleNLP's settings (``trim_blocks``,
  ``lstrip_blocks``, ``keep_trailing_newline``, a ``raise_exception`` function). Variables:
  ``{{user}}``, ``{{bot}}`` and ``{{index}}`` (0-based turn number) in ``conversation``;
  ``{{query}}`` and ``{{index}}`` in ``query``; and everywhere the context PaddleNLP passes:
  ``is_training``, ``is_first`` / ``is_last`` (per turn), ``length`` (number of turns, prompts
  only, as in PaddleNLP), plus anything given in ``context``. A record's system message is
  available as ``{{system}}`` (a mixcore extension; PaddleNLP has no per-record system text).
* **Hugging Face form** (a str): one Jinja2 template that renders a whole ``messages`` list, as
  in a Hugging Face ``tokenizer_config.json``. Variables: ``messages`` (dicts with ``role`` and
  ``content``), ``add_generation_prompt``, ``bos_token`` / ``eos_token`` (empty unless given in
  ``context``) and the rest of ``context``. Such a template has no notion of "the reply's
  text", so :func:`render_jinja_segments` finds it by rendering the conversation one message at a
  time (see there); that only works for templates whose output grows by appending.
* ``None``: :func:`render_chatml_segments`, the default ChatML layout used by Qwen models.

The ``chat_template`` option of a dataset entry may hold any of these; :func:`resolve_chat_template`
tells them apart (a string with ``{{`` or ``{%`` is a template, any other string a path) and
checks the template when the dataset is built, so a typo stops the run at start-up.

Model plugins tokenize each segment on its own (as PaddleNLP's ``encode_chat_inputs`` encodes
system, user and bot parts separately) and put labels only on tokens of trainable segments.
"""

from __future__ import annotations

import difflib
import functools
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

from mixcore.api.errors import DataError
from mixcore.api.records import IMAGE_PLACEHOLDER, Message
from mixcore.kit.files import read_file, read_json

if TYPE_CHECKING:
    from jinja2 import Template

__all__ = [
    "DEFAULT_SYSTEM",
    "JINJA_MARKERS",
    "JINJA_SUFFIXES",
    "MAX_TEMPLATE_FILE_BYTES",
    "TEMPLATE_KEYS",
    "ChatTemplate",
    "is_jinja_template",
    "load_chat_template",
    "render_chatml_segments",
    "render_jinja_segments",
    "render_segments",
    "resolve_chat_template",
    "validate_chat_template",
    "validate_jinja_template",
]

#: Keys of a PaddleNLP ``chat_template.json`` (the fields of its ``ChatTemplate`` dataclass).
TEMPLATE_KEYS = ("system", "conversation", "query")

#: Qwen's default system prompt, used by :func:`render_chatml_segments`.
DEFAULT_SYSTEM = "You are a helpful assistant."

#: Character pairs that open a Jinja expression or statement. A ``chat_template`` string holding
#: either is a template; any other string is a file path (file names with braces are rare, Jinja
#: templates without either cannot output a message).
JINJA_MARKERS = ("{{", "{%")

#: Suffixes of template files read as one Hugging Face-style Jinja template instead of JSON.
JINJA_SUFFIXES = (".jinja", ".jinja2", ".j2")

#: Largest chat template file read (real ones are a few KiB; Hugging Face's longest, with tool
#: use, are under 20 KiB).
MAX_TEMPLATE_FILE_BYTES = 1024 * 1024

Segments = list[tuple[str, bool]]

#: A loaded chat template: the PaddleNLP form (dict) or a Hugging Face-style Jinja string.
ChatTemplate: TypeAlias = dict[str, Any] | str


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
    data = read_json(path, "chat template file", limit=MAX_TEMPLATE_FILE_BYTES)
    return validate_chat_template(data, source=source)


def is_jinja_template(text: str) -> bool:
    """Whether a ``chat_template`` string is an inline Jinja template (else it is a path)."""
    return any(marker in text for marker in JINJA_MARKERS)


def validate_jinja_template(text: Any, *, source: str = "chat template") -> str:
    """Check a Hugging Face-style Jinja chat template and return it unchanged.

    The template is compiled now, so a syntax error is reported with its line when the dataset
    is built rather than at the first batch, and it must use ``messages``: a template that never
    reads the conversation would train on the same text for every sample. Raises
    :class:`DataError` naming ``source`` (the file, or the config option it came from).
    """
    if not isinstance(text, str) or not text.strip():
        raise DataError(
            f"a Jinja chat template must be a non-empty string, got {text!r}", source=source
        )
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise DataError(
            f"the chat template is not valid UTF-8 text (lone surrogate at character {exc.start})",
            source=source,
        ) from None

    from jinja2 import TemplateSyntaxError, meta

    try:
        _compile_jinja(text)
        names = meta.find_undeclared_variables(_jinja_environment().parse(text))
    except TemplateSyntaxError as exc:
        raise DataError(
            f"Jinja chat template syntax error at line {exc.lineno}: {exc.message}", source=source
        ) from None
    if "messages" not in names:
        raise DataError(
            "the Jinja chat template never uses 'messages', so it cannot render a conversation; "
            "a Hugging Face-style template loops over messages "
            "({% for message in messages %}...{% endfor %})",
            source=source,
        )
    _probe_prefix_stability(text, source)
    return text


#: A small conversation every trainable template must render prefix-stably (two answered turns,
#: so a template that rewrites earlier replies shows it).
_PROBE = (
    Message("user", "Hello?"),
    Message("assistant", "Hi."),
    Message("user", "And then?"),
    Message("assistant", "Done."),
)


def _probe_prefix_stability(text: str, source: str) -> None:
    """Render :data:`_PROBE` now, so a template that rewrites earlier turns fails at start-up.

    Only the prefix-stability verdict and the sandbox's bounds are kept: other render errors (a
    template that insists on a system message, say) depend on the conversation and are
    reported per sample.
    """
    from mixcore.kit.sandbox import TemplateLimitError

    try:
        render_jinja_segments(text, _PROBE, source=source)
    except DataError as exc:
        if "not prefix-stable" in exc.reason or isinstance(exc.__cause__, TemplateLimitError):
            raise DataError(exc.reason, source=source) from None


def resolve_chat_template(
    value: Any, *, base_dir: Path, source: str = "option chat_template"
) -> ChatTemplate:
    """Load the ``chat_template`` option of a dataset entry in whichever form it is given.

    * a dict: an inline PaddleNLP template, checked by :func:`validate_chat_template`;
    * a string holding ``{{`` or ``{%``: an inline Hugging Face-style Jinja template, checked by
      :func:`validate_jinja_template`;
    * any other string: a path relative to ``base_dir`` (the config file's folder) of a PaddleNLP
      ``chat_template.json``, or, with a :data:`JINJA_SUFFIXES` suffix, of a file holding one
      Jinja template.

    Inline templates are reported under ``source`` (say ``dataset vqa#0 option chat_template``),
    files under their path. Raises :class:`DataError`.
    """
    if isinstance(value, dict):
        return validate_chat_template(value, source=source)
    if not isinstance(value, str) or not value:
        raise DataError(
            "chat_template must be a file path, a Jinja template string or a JSON object, "
            f"got {value!r}",
            source=source,
        )
    if is_jinja_template(value):
        return validate_jinja_template(value, source=source)
    path = Path(base_dir) / value
    if path.suffix.lower() in JINJA_SUFFIXES:
        return _load_jinja_file(path)
    return load_chat_template(path)


def _load_jinja_file(path: Path) -> str:
    source = str(path)
    raw = read_file(path, "chat template file", limit=MAX_TEMPLATE_FILE_BYTES)
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(
            f"chat template file is not UTF-8 text (invalid byte at offset {exc.start})",
            source=source,
        ) from None
    return validate_jinja_template(text, source=source)


@functools.lru_cache(maxsize=1)
def _environment() -> Any:
    """A sandboxed Jinja2 environment configured exactly like PaddleNLP's ``ChatTemplate``."""
    from jinja2.exceptions import TemplateError

    from mixcore.kit.sandbox import BoundedSandbox

    def raise_exception(message: str) -> None:
        raise TemplateError(message)

    env = BoundedSandbox(trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)
    env.globals["raise_exception"] = raise_exception
    return env


@functools.lru_cache(maxsize=256)
def _compile(text: str) -> Template:
    return _environment().from_string(text)


@functools.lru_cache(maxsize=1)
def _jinja_environment() -> Any:
    """A sandboxed Jinja2 environment for whole-conversation templates.

    Configured the way Hugging Face ``apply_chat_template`` renders (``trim_blocks``,
    ``lstrip_blocks``, no kept trailing newline, loop controls, a ``raise_exception`` function and
    a ``tojson`` that keeps non-ASCII text), because those are the settings such templates are
    written and tested against; rendering them otherwise would shift whitespace in the labels.
    """
    from jinja2.exceptions import TemplateError

    from mixcore.kit.sandbox import BoundedSandbox, check_width

    def raise_exception(message: str) -> None:
        raise TemplateError(message)

    def tojson(value: Any, indent: int | None = None) -> str:
        check_width(indent, "the indent of tojson")
        return json.dumps(value, ensure_ascii=False, indent=indent)

    env = BoundedSandbox(
        trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"]
    )
    env.globals["raise_exception"] = raise_exception
    env.filters["tojson"] = tojson
    return env


@functools.lru_cache(maxsize=64)
def _compile_jinja(text: str) -> Template:
    return _jinja_environment().from_string(text)


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
    template: Mapping[str, Any] | str | None,
    messages: Sequence[Message],
    *,
    context: Mapping[str, Any] | None = None,
    source: str = "",
    index: int | None = None,
) -> Segments:
    """Render ``messages`` with a chat template into ``(text, trainable)`` pairs.

    ``template`` is a PaddleNLP-form dict (described below), a Hugging Face-style Jinja string
    (rendered by :func:`render_jinja_segments`, which ``context`` reaches as extra variables) or
    None for the ChatML default.

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
    if isinstance(template, str):
        return render_jinja_segments(
            template, messages, context=context, source=source, index=index
        )
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

    from mixcore.kit.sandbox import render_bounded

    size = sum(len(m.content) for m in messages)
    training = query is None
    ctx: dict[str, Any] = {"is_training": training, **(context or {})}
    if system is not None:
        ctx["system"] = system
    segments: Segments = []
    try:
        if template["system"]:
            _append(
                segments,
                render_bounded(_compile(template["system"]), ctx, input_length=size),
                False,
            )
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
            _append(
                segments, render_bounded(_compile(user_part), variables, input_length=size), False
            )
            _append(
                segments, render_bounded(_compile(bot_part), variables, input_length=size), True
            )
        if query is not None:
            if template["query"] is None:
                _append(segments, query, False)
            else:
                variables = {"query": query, "index": len(turns), **ctx}
                compiled = _compile(template["query"])
                _append(segments, render_bounded(compiled, variables, input_length=size), False)
    except DataError:
        raise
    except Exception as exc:  # the template's code is the user's: any failure is theirs
        raise DataError(_render_failure(exc), source=source, index=index) from exc
    return segments


def render_jinja_segments(
    template: str,
    messages: Sequence[Message],
    *,
    context: Mapping[str, Any] | None = None,
    source: str = "",
    index: int | None = None,
) -> Segments:
    """Render ``messages`` with a Hugging Face-style Jinja template into labelled segments.

    A whole-conversation template does not say which characters are the reply, so they are
    found by incremental rendering. Writing ``R(n)`` for the rendering of the first ``n``
    messages and ``G(n)`` for the same with ``add_generation_prompt=True``, the assistant
    message ``k`` contributes:

    * ``R(k)`` beyond what earlier messages produced: the user turn (and system text), context;
    * ``G(k)`` beyond ``R(k)``: the generation header (``<|im_start|>assistant\\n``), context;
    * ``R(k + 1)`` beyond ``G(k)``: the reply with whatever the template closes it with
      (an end-of-turn token), trainable, so the model learns to stop.

    That needs each rendering to extend the one before it. A template that rewrites earlier
    text as messages are added (say, one that strips reasoning from all but the last reply) is
    not *prefix-stable*; that is a :class:`DataError` explaining where the renderings diverge,
    never silently wrong labels. A conversation ending with a user message is a prompt: it ends
    with ``G(n)``'s generation header and only earlier replies are trainable. Adjacent segments
    with the same flag are merged. ``bos_token`` / ``eos_token`` are empty strings unless
    ``context`` gives them. Errors name ``source`` / ``index``.
    """
    try:
        _split(messages)
    except ValueError as exc:
        raise DataError(str(exc), source=source, index=index) from None

    from jinja2 import TemplateSyntaxError

    try:
        compiled = _compile_jinja(template)
    except TemplateSyntaxError as exc:
        raise DataError(
            f"Jinja chat template syntax error at line {exc.lineno}: {exc.message}",
            source=source,
            index=index,
        ) from None
    from mixcore.kit.sandbox import render_bounded

    variables = {"bos_token": "", "eos_token": "", **(context or {})}
    conversation = [{"role": m.role, "content": m.content} for m in messages]
    size = sum(len(m.content) for m in messages)

    def render(count: int, generation: bool) -> str:
        try:
            return render_bounded(
                compiled,
                {
                    **variables,
                    "messages": conversation[:count],
                    "add_generation_prompt": generation,
                },
                input_length=size,
            )
        except Exception as exc:  # the template's code is the user's: any failure is theirs
            raise DataError(_render_failure(exc), source=source, index=index) from exc

    segments: Segments = []
    done = ""  # the text already assigned to segments

    def take(text: str, trainable: bool, what: str) -> None:
        """Append what ``text`` adds to ``done``; it must extend ``done``."""
        nonlocal done
        if not text.startswith(done):
            raise DataError(
                f"the Jinja chat template is not prefix-stable: {what}; "
                f"{_divergence(done, text)}. mixcore finds each reply by rendering the "
                "conversation one message at a time, which needs a template that only appends "
                "text as messages are added; use such a template (or the PaddleNLP form) for "
                "training",
                source=source,
                index=index,
            )
        _append(segments, text[len(done) :], trainable)
        done = text

    for k, message in enumerate(messages):
        if message.role == "assistant":
            take(render(k, False), False, f"the first {k} messages rewrite earlier text")
            take(
                render(k, True),
                False,
                f"with add_generation_prompt the first {k} messages render differently, "
                "not just with a header added",
            )
            take(
                render(k + 1, False),
                True,
                f"adding reply message {k} rewrites the text before it",
            )
    if messages[-1].role != "assistant":
        take(
            render(len(messages), True),
            False,
            "the prompt rewrites the text of earlier turns",
        )

    wanted = sum(m.content.count(IMAGE_PLACEHOLDER) for m in messages)
    found = sum(text.count(IMAGE_PLACEHOLDER) for text, _ in segments)
    if found != wanted:
        raise DataError(
            f"the chat template output holds {found} '{IMAGE_PLACEHOLDER}' placeholder(s) but "
            f"the messages hold {wanted}; the template must output every message's content "
            "exactly once",
            source=source,
            index=index,
        )
    return _merged(segments)


def _render_failure(exc: Exception) -> str:
    """A rendering failure in words: Jinja's own errors as they are, others with their type
    (``TypeError: can only concatenate str``...: the template's bug, not mixcore's)."""
    from jinja2 import TemplateError

    text = " ".join(str(exc).split())[:500]
    return "chat template failed to render: " + (
        text if isinstance(exc, TemplateError) else f"{type(exc).__name__}: {text}"
    )


def _divergence(shorter: str, longer: str) -> str:
    """Where two renderings part, shown with a little context, for a prefix-stability error."""
    at = next(
        (i for i, (a, b) in enumerate(zip(shorter, longer, strict=False)) if a != b),
        min(len(shorter), len(longer)),
    )
    start = max(0, at - 20)
    return (
        f"they differ from character {at}: {shorter[start : at + 20]!r} became "
        f"{longer[start : at + 20]!r}"
    )


def _merged(segments: Segments) -> Segments:
    """Join neighbouring segments with the same trainable flag (fewer, longer tokenizer calls)."""
    merged: Segments = []
    for text, trainable in segments:
        if merged and merged[-1][1] == trainable:
            merged[-1] = (merged[-1][0] + text, trainable)
        else:
            merged.append((text, trainable))
    return merged


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
