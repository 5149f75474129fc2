"""Reader of conversation data files (``chatml_dataset``): every layout, told apart per record.

A data file is a JSON list of records, or a JSON Lines file of them (:mod:`.record_files`). Each
record is in one of four layouts, detected from its keys (:mod:`.layouts`) or pinned by the
``format`` option: PaddleMIX's chatml pairs (read here), ShareGPT / LLaVA ``{from, value}`` turns
(:mod:`.sharegpt`), the ``messages`` form (read here) and ms-swift's query/response
(:mod:`.query_response`). PaddleMIX's form::

    [
      {"image": "images/cat.png",                      # optional: str or list of str
       "system": "You are a vet.",                     # optional (a mixcore extension)
       "conversations": [["<img>images/cat.png</img>\\nWhat is it?", "A cat."],
                         ["And its colour?", "Grey."]]}
    ]

Each ``conversations`` entry is one ``[user, assistant]`` exchange. Images are named either by
Qwen-VL style ``<img>path</img>`` tags inside user turns (what PaddleMIX data uses) or by the
record's ``image`` field. The ``messages`` form (OpenAI / Hugging Face, ms-swift, LLaMA-Factory)::

    [
      {"messages": [{"role": "system", "content": "You are a vet."},
                    {"role": "user", "content": "<image>\\nWhat is it?"},
                    {"role": "assistant", "content": "A cat."}],
       "images": ["images/cat.png"]}
    ]

has an optional first system message, then user and assistant messages alternating and ending
with an assistant reply; each ``<image>`` in a user message is the next file of ``images``.

Records become :class:`mixcore.api.records.Sample` objects in which every image location is the
core's :data:`~mixcore.api.records.IMAGE_PLACEHOLDER`, so any model plugin can put its own image
tokens there. In every layout, images named without any location in the text go first in the
first user turn, one per line. Record indexes in messages are 0-based positions in the file. A
bad record's reason names the layout it was read as and why (:func:`record_layout`).

Validation is strict and happens up front (see :class:`ChatmlDataset`). Images are only located
and checked for safety here (relative to ``image_root`` when given, else the data file's folder);
decoding is left to the model plugin's preprocessing (:func:`mixcore.kit.images.load_image`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from mixcore.api.errors import DataError
from mixcore.api.records import IMAGE_PLACEHOLDER, ROLES, Message, Sample
from mixcore.kit.images import ImageResolver
from mixcore_datasets.base import OnBadSample, RecordDataset, check_text, json_type, option_source
from mixcore_datasets.layouts import (
    FORMATS,
    LAYOUT_NAMES,
    detect_layout,
    no_layout_reason,
    pinned_layout,
)
from mixcore_datasets.query_response import query_response_form
from mixcore_datasets.record_files import iter_records, read_document
from mixcore_datasets.sharegpt import sharegpt_form
from mixcore_datasets.turns import (
    _CLOSE,
    _OPEN,
    check_order,
    image_list,
    parse_image_tags,
    place_images,
    role_hint,
)

__all__ = [
    "ChatmlDataset",
    "parse_image_tags",
    "read_chatml",
    "record_layout",
    "record_to_sample",
]


def read_chatml(path: Path) -> list[Any]:
    """The raw records of one chatml file, after the checks that concern the whole file.

    Raises :class:`DataError` naming ``path`` when the file is missing or unreadable, is not
    UTF-8 (a UTF-8 byte-order mark is accepted), is not valid JSON (with line and column), or
    does not hold a JSON list. Records themselves are checked by :func:`record_to_sample`, so
    that one bad record can be skipped without losing the file.
    """
    source = str(path)
    data = read_document(path, "data file")
    if not isinstance(data, list):
        raise DataError(
            f"a chatml file must hold a JSON list of records, found a JSON {json_type(data)}",
            source=source,
        )
    return data


def _turns(record: Mapping[str, Any]) -> list[tuple[str, str]]:
    if "conversations" not in record:
        keys = ", ".join(sorted(map(str, record))) or "none"
        raise ValueError(f"record has no 'conversations' or 'messages' (keys: {keys})")
    conversations = record["conversations"]
    if not isinstance(conversations, list):
        raise ValueError(
            f"'conversations' must be a list of [user, assistant] pairs, "
            f"got a JSON {json_type(conversations)}"
        )
    if not conversations:
        raise ValueError("'conversations' is empty")
    turns = []
    for n, turn in enumerate(conversations):
        if not isinstance(turn, list) or len(turn) != 2:
            if isinstance(turn, list):
                shape = f"{len(turn)} element{'' if len(turn) == 1 else 's'}"
            else:
                shape = f"a JSON {json_type(turn)}"
            raise ValueError(f"conversation turn {n} must be a [user, assistant] pair, got {shape}")
        for role, text in zip(("user", "assistant"), turn, strict=True):
            if not isinstance(text, str):
                raise ValueError(
                    f"conversation turn {n}: the {role} text must be a string, "
                    f"got a JSON {json_type(text)}"
                )
            check_text(text, f"conversation turn {n}: the {role} text")
        turns.append((turn[0], turn[1]))
    if not any(reply.strip() for _, reply in turns):
        raise ValueError("every assistant reply is empty, so the record has nothing to learn")
    return turns


def _conversations_form(record: Mapping[str, Any]) -> tuple[list[Message], list[str]]:
    """Validate a PaddleMIX ``conversations`` record; return its messages and image references."""
    turns = _turns(record)
    system = record.get("system")
    if system is not None:
        if not isinstance(system, str):
            raise ValueError(f"'system' must be a string, got a JSON {json_type(system)}")
        check_text(system, "'system'")
    field_refs = image_list(record, "image")

    users: list[str] = []
    tag_refs: list[str] = []
    literal_placeholders = 0
    for n, (user, reply) in enumerate(turns):
        if _OPEN in reply or _CLOSE in reply or IMAGE_PLACEHOLDER in reply:
            raise ValueError(f"conversation turn {n}: an assistant reply cannot contain an image")
        literal_placeholders += user.count(IMAGE_PLACEHOLDER)
        try:
            text, refs = parse_image_tags(user)
        except ValueError as exc:
            raise ValueError(f"conversation turn {n}: {exc}") from None
        users.append(text)
        tag_refs.extend(refs)

    if tag_refs:
        if literal_placeholders:
            raise ValueError(
                f"record mixes '{_OPEN}' tags with literal '{IMAGE_PLACEHOLDER}' placeholders; "
                "use one convention"
            )
        if field_refs and field_refs != tag_refs:
            raise ValueError(
                f"'image' {field_refs} does not match the '{_OPEN}' tags {tag_refs}; "
                "name each image once"
            )
        refs = tag_refs
    else:
        refs = field_refs
        users = place_images(users, refs, "image")

    messages = [Message("system", system)] if system is not None else []
    for user, (_, reply) in zip(users, turns, strict=True):
        messages.append(Message("user", user))
        messages.append(Message("assistant", reply))
    return messages, refs


def _message(item: Any, n: int) -> Message:
    """One entry of a ``messages`` list as a :class:`Message`, with its role and text checked."""
    if not isinstance(item, dict):
        raise ValueError(
            f"message {n} must be an object with 'role' and 'content', got a JSON {json_type(item)}"
        )
    if "role" not in item or "content" not in item:
        if "from" in item and "value" in item:
            raise ValueError(
                f"message {n} has 'from' and 'value' (ShareGPT style); "
                "the 'messages' form uses 'role' and 'content'"
            )
        missing = "role" if "role" not in item else "content"
        raise ValueError(f"message {n} has no '{missing}'")
    role, content = item["role"], item["content"]
    if not isinstance(role, str):
        raise ValueError(f"message {n}: 'role' must be a string, got a JSON {json_type(role)}")
    if role not in ROLES:
        raise ValueError(
            f"message {n}: unknown role {role!r}{role_hint(role)}; allowed roles: "
            + ", ".join(ROLES)
        )
    if not isinstance(content, str):
        raise ValueError(
            f"message {n}: 'content' must be a string, got a JSON {json_type(content)}"
        )
    check_text(content, f"message {n} content")
    return Message(role, content)


def _messages_form(record: Mapping[str, Any]) -> tuple[list[Message], list[str]]:
    """Validate a ``messages`` record; return its messages and image references."""
    for key, where in (("image", "'images'"), ("system", "a first 'system' message")):
        if key in record:
            raise ValueError(
                f"a 'messages' record cannot have '{key}': the 'messages' form puts it in {where}"
            )
    raw = record["messages"]
    if not isinstance(raw, list):
        raise ValueError(
            f"'messages' must be a list of {{role, content}} objects, got a JSON {json_type(raw)}"
        )
    if not raw:
        raise ValueError("'messages' is empty")
    messages = [_message(item, n) for n, item in enumerate(raw)]
    check_order(messages)
    for n, message in enumerate(messages):
        if message.role == "user":
            if _OPEN in message.content or _CLOSE in message.content:
                raise ValueError(
                    f"message {n}: '{_OPEN}path{_CLOSE}' tags belong to the 'conversations' "
                    f"form; in the 'messages' form write '{IMAGE_PLACEHOLDER}' and list the "
                    "file in 'images'"
                )
        elif IMAGE_PLACEHOLDER in message.content or _OPEN in message.content:
            owner = "an assistant reply" if message.role == "assistant" else "a system message"
            raise ValueError(f"message {n}: {owner} cannot contain an image")
    if not any(m.content.strip() for m in messages if m.role == "assistant"):
        raise ValueError("every assistant reply is empty, so the record has nothing to learn")

    refs = image_list(record, "images")
    users = [n for n, message in enumerate(messages) if message.role == "user"]
    placed = place_images([messages[n].content for n in users], refs, "images")
    for n, text in zip(users, placed, strict=True):
        messages[n] = Message("user", text)
    return messages, refs


_FORMS = {
    "chatml": _conversations_form,
    "sharegpt": sharegpt_form,
    "messages": _messages_form,
    "swift_query": query_response_form,
}


def record_layout(record: dict[str, Any], fmt: str = "auto") -> tuple[list[Message], list[str]]:
    """The messages and image references of a record in any layout (see :mod:`layouts`).

    ``fmt`` is the dataset's ``format`` option. A reason for a bad record says which layout the
    record was read as and why: ``looks like ShareGPT/LLaVA (has 'conversations' of {from,
    value} turns) but turn 2 has no 'value'``.
    """
    layout, evidence = detect_layout(record)
    pinned = pinned_layout(fmt)
    if pinned is not None:
        if layout is not None and layout != pinned:
            raise ValueError(
                f"format is {fmt!r} ({LAYOUT_NAMES[pinned]}) but the record looks like "
                f"{LAYOUT_NAMES[layout]} ({evidence}); set format to {layout!r} or 'auto'"
            )
        try:
            if layout is None and pinned != "chatml":
                needed = {"sharegpt": "conversations", "messages": "messages"}.get(pinned, "query")
                raise ValueError(f"record has no '{needed}'")
            return _FORMS[pinned](record)
        except ValueError as exc:
            raise ValueError(f"not {LAYOUT_NAMES[pinned]} (format {fmt!r}): {exc}") from None
    if layout is None:
        raise ValueError(no_layout_reason(record))
    if not evidence:
        return _FORMS[layout](record)
    try:
        return _FORMS[layout](record)
    except ValueError as exc:
        raise ValueError(f"looks like {LAYOUT_NAMES[layout]} ({evidence}) but {exc}") from None


def record_to_sample(
    record: Any,
    index: int,
    *,
    data_file: Path,
    dataset_label: str = "",
    chat_template: dict[str, Any] | str | None = None,
    allowed_image_roots: Sequence[Path] = (),
    image_root: Path | None = None,
    fmt: str = "auto",
    resolver: ImageResolver | None = None,
) -> Sample:
    """Validate one raw record (any layout, or the one ``fmt`` pins) into a :class:`Sample`.

    Image references are resolved relative to ``image_root`` (default: ``data_file``'s folder)
    and checked with :func:`~mixcore.kit.images.resolve_image` (existence, no escape from that
    folder or ``allowed_image_roots``), but not opened: decoding happens lazily in
    preprocessing; ``resolver`` (whose roots then count, not ``allowed_image_roots``) lets a
    reader resolve each distinct reference once. Unknown record keys (``id``, ``meta``, ...)
    are ignored. Raises
    :class:`DataError` naming ``data_file`` and ``index``.
    """
    source = str(data_file)
    if not isinstance(record, dict):
        raise DataError(
            f"a record must be a JSON object, got a JSON {json_type(record)}",
            source=source,
            index=index,
        )
    try:
        messages, refs = record_layout(record, fmt)
    except ValueError as exc:
        raise DataError(str(exc), source=source, index=index) from None
    folder = Path(image_root) if image_root is not None else Path(data_file).parent
    resolve = resolver if resolver is not None else ImageResolver(allowed_image_roots)
    images = [resolve(folder, ref, source=source, index=index) for ref in refs]
    return Sample(
        messages=messages,
        images=images,
        source=source,
        index=index,
        dataset=dataset_label,
        chat_template=chat_template,
    )


class ChatmlDataset(RecordDataset):
    """All records of one or more conversation files, validated when the dataset is built.

    Every record is checked at construction (structure, image tags, image paths), without
    decoding images; ``on_bad_sample`` and :attr:`skipped` work as described in
    :class:`~mixcore_datasets.base.RecordDataset`. Each record becomes one sample. ``format``
    is one of :data:`~mixcore_datasets.layouts.FORMATS` (``auto``: detected per record);
    ``image_root`` is the folder image paths are relative to (default: each data file's folder).
    """

    def __init__(
        self,
        data_files: Iterable[Path],
        *,
        on_bad_sample: OnBadSample = "error",
        label: str = "",
        chat_template: dict[str, Any] | str | None = None,
        allowed_image_roots: Sequence[Path] = (),
        image_root: Path | None = None,
        format: str = "auto",
    ) -> None:
        if format not in FORMATS:
            raise DataError(
                f"format must be one of {', '.join(FORMATS)}, got {format!r}",
                source=option_source(label, "format"),
            )
        if image_root is not None and not Path(image_root).is_dir():
            raise DataError(
                f"image folder not found: {image_root}", source=option_source(label, "image_root")
            )
        self.allowed_image_roots = tuple(Path(root) for root in allowed_image_roots)
        self.resolver = ImageResolver(self.allowed_image_roots)
        self.image_root = None if image_root is None else Path(image_root)
        self.format = format
        super().__init__(
            data_files, on_bad_sample=on_bad_sample, label=label, chat_template=chat_template
        )

    def read_records(self, data_file: Path) -> list[Any]:
        return read_chatml(data_file)

    def stream_records(self, data_file: Path) -> Iterator[Any]:
        try:
            yield from iter_records(data_file, "data file")
        except ValueError as exc:  # the file holds another JSON value than a list
            raise DataError(
                f"a chatml file must hold a JSON list of records, found a JSON {exc}",
                source=str(data_file),
            ) from None

    def record_samples(self, record: Any, index: int, data_file: Path) -> list[Sample]:
        sample = record_to_sample(
            record,
            index,
            data_file=data_file,
            dataset_label=self.label,
            chat_template=self.chat_template,
            allowed_image_roots=self.allowed_image_roots,
            image_root=self.image_root,
            fmt=self.format,
            resolver=self.resolver,
        )
        return [sample]
