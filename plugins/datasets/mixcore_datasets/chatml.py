"""Reader of PaddleMIX's chatml data format.

A chatml data file is a JSON list of records::

    [
      {"image": "images/cat.png",                      # optional: str or list of str
       "system": "You are a vet.",                     # optional (a mixcore extension)
       "conversations": [["<img>images/cat.png</img>\\nWhat is it?", "A cat."],
                         ["And its colour?", "Grey."]]}
    ]

Each ``conversations`` entry is one ``[user, assistant]`` exchange. Images are named either by
Qwen-VL style ``<img>path</img>`` tags inside user turns (what PaddleMIX data uses) or by the
record's ``image`` field. Records become :class:`mixcore.records.Sample` objects in which every
image location is the core's :data:`~mixcore.records.IMAGE_PLACEHOLDER`, so any model plugin can
put its own image tokens there. Record indexes in messages are 0-based positions in the list.

Validation is strict and happens up front (see :class:`ChatmlDataset`) because a broken record
found after an hour of training costs far more than the milliseconds spent checking all records
at start-up. Images are only located and checked for safety here; decoding is left to the model
plugin's preprocessing (:func:`mixcore.data.images.load_image`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, overload

from mixcore.data.images import resolve_image
from mixcore.data.jsonfile import read_json
from mixcore.errors import DataError
from mixcore.records import IMAGE_PLACEHOLDER, Message, Sample

__all__ = ["ChatmlDataset", "parse_image_tags", "read_chatml", "record_to_sample"]

logger = logging.getLogger(__name__)

_OPEN, _CLOSE = "<img>", "</img>"

OnBadSample = Literal["error", "skip"]


def read_chatml(path: Path) -> list[Any]:
    """The raw records of one chatml file, after the checks that concern the whole file.

    Raises :class:`DataError` naming ``path`` when the file is missing or unreadable, is not
    UTF-8 (a UTF-8 byte-order mark is accepted), is not valid JSON (with line and column), or
    does not hold a JSON list. Records themselves are checked by :func:`record_to_sample`, so
    that one bad record can be skipped without losing the file.
    """
    source = str(path)
    data = read_json(path, "data file")
    if not isinstance(data, list):
        raise DataError(
            f"a chatml file must hold a JSON list of records, found a JSON {_json_type(data)}",
            source=source,
        )
    return data


def _json_type(value: Any) -> str:
    names = {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}
    return names.get(type(value), "number")


def parse_image_tags(text: str) -> tuple[str, list[str]]:
    """Replace each ``<img>path</img>`` in ``text`` by the image placeholder.

    Returns the new text and the paths in order (stripped of surrounding whitespace). Raises
    ``ValueError`` with a short reason for an unclosed tag, a stray ``</img>``, a tag inside a
    tag or an empty path; :func:`record_to_sample` turns it into a located :class:`DataError`.
    """
    pieces: list[str] = []
    refs: list[str] = []
    pos = 0
    while True:
        start = text.find(_OPEN, pos)
        stray = text.find(_CLOSE, pos)
        if stray != -1 and (start == -1 or stray < start):
            raise ValueError(f"'{_CLOSE}' without an opening '{_OPEN}' at character {stray}")
        if start == -1:
            pieces.append(text[pos:])
            break
        end = text.find(_CLOSE, start + len(_OPEN))
        nested = text.find(_OPEN, start + len(_OPEN))
        if end == -1 or (nested != -1 and nested < end):
            raise ValueError(f"'{_OPEN}' at character {start} has no closing '{_CLOSE}'")
        ref = text[start + len(_OPEN) : end].strip()
        if not ref:
            raise ValueError(f"empty image path in '{_OPEN}{_CLOSE}' at character {start}")
        pieces.append(text[pos:start])
        pieces.append(IMAGE_PLACEHOLDER)
        refs.append(ref)
        pos = end + len(_CLOSE)
    return "".join(pieces), refs


def _image_field(record: Mapping[str, Any]) -> list[str]:
    value = record.get("image")
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return list(value)
    raise ValueError(f"'image' must be a string or a list of strings, got {value!r}")


def _turns(record: Mapping[str, Any]) -> list[tuple[str, str]]:
    if "conversations" not in record:
        keys = ", ".join(sorted(map(str, record))) or "none"
        raise ValueError(f"record has no 'conversations' (keys: {keys})")
    conversations = record["conversations"]
    if not isinstance(conversations, list):
        raise ValueError(
            f"'conversations' must be a list of [user, assistant] pairs, "
            f"got a JSON {_json_type(conversations)}"
        )
    if not conversations:
        raise ValueError("'conversations' is empty")
    turns = []
    for n, turn in enumerate(conversations):
        if not isinstance(turn, list) or len(turn) != 2:
            if isinstance(turn, list):
                shape = f"{len(turn)} element{'' if len(turn) == 1 else 's'}"
            else:
                shape = f"a JSON {_json_type(turn)}"
            raise ValueError(f"conversation turn {n} must be a [user, assistant] pair, got {shape}")
        for role, text in zip(("user", "assistant"), turn, strict=True):
            if not isinstance(text, str):
                raise ValueError(
                    f"conversation turn {n}: the {role} text must be a string, "
                    f"got a JSON {_json_type(text)}"
                )
        turns.append((turn[0], turn[1]))
    if not any(reply.strip() for _, reply in turns):
        raise ValueError("every assistant reply is empty, so the record has nothing to learn")
    return turns


def _messages_and_refs(record: Mapping[str, Any]) -> tuple[list[Message], list[str]]:
    """Validate a record's structure and return its messages and image references (in order)."""
    turns = _turns(record)
    system = record.get("system")
    if system is not None and not isinstance(system, str):
        raise ValueError(f"'system' must be a string, got a JSON {_json_type(system)}")
    field_refs = _image_field(record)

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
    elif field_refs:
        refs = field_refs
        if literal_placeholders == 0:
            # No location given: the images go first in the first user turn, one per line.
            users[0] = f"{IMAGE_PLACEHOLDER}\n" * len(refs) + users[0]
        elif literal_placeholders != len(refs):
            raise ValueError(
                f"the text has {literal_placeholders} '{IMAGE_PLACEHOLDER}' placeholders but "
                f"'image' names {len(refs)} images"
            )
    else:
        refs = []
        if literal_placeholders:
            raise ValueError(
                f"the text has '{IMAGE_PLACEHOLDER}' placeholders but the record names no image"
            )

    messages = [Message("system", system)] if system is not None else []
    for user, (_, reply) in zip(users, turns, strict=True):
        messages.append(Message("user", user))
        messages.append(Message("assistant", reply))
    return messages, refs


def record_to_sample(
    record: Any,
    index: int,
    *,
    data_file: Path,
    dataset_label: str = "",
    chat_template: dict[str, Any] | None = None,
    allowed_image_roots: Sequence[Path] = (),
) -> Sample:
    """Validate one raw record and turn it into a :class:`Sample`.

    Image references are resolved relative to ``data_file``'s folder and checked with
    :func:`~mixcore.data.images.resolve_image` (existence, no escape from the data folder or
    ``allowed_image_roots``), but not opened: decoding happens lazily in preprocessing.
    Unknown record keys (``id``, ``meta``, ...) are ignored. Raises :class:`DataError` naming
    ``data_file`` and ``index``.
    """
    source = str(data_file)
    if not isinstance(record, dict):
        raise DataError(
            f"a record must be a JSON object, got a JSON {_json_type(record)}",
            source=source,
            index=index,
        )
    try:
        messages, refs = _messages_and_refs(record)
    except ValueError as exc:
        raise DataError(str(exc), source=source, index=index) from None
    folder = Path(data_file).parent
    images = [
        resolve_image(folder, ref, source=source, index=index, allowed_roots=allowed_image_roots)
        for ref in refs
    ]
    return Sample(
        messages=messages,
        images=images,
        source=source,
        index=index,
        dataset=dataset_label,
        chat_template=chat_template,
    )


def _reason(error: DataError) -> str:
    """The message of ``error`` without the location prefix :class:`DataError` adds."""
    return error.reason


class ChatmlDataset(Sequence[Sample]):
    """All records of one or more chatml files, validated when the dataset is built.

    Every record is checked at construction (structure, image tags, image paths), without
    decoding images, so a broken record stops the run before training starts rather than in the
    middle of an epoch. With ``on_bad_sample="error"`` the first bad record is raised as a
    :class:`DataError` whose message also counts the other bad records, so one run shows the
    scale of the problem. With ``"skip"`` bad records are dropped, listed in :attr:`skipped` as
    ``(source, index, reason)`` and summarised in one log warning per file. Problems with a
    whole file (missing, invalid JSON, not a list) are always raised: skipping a file silently
    would change the data mixture behind the user's back.
    """

    def __init__(
        self,
        data_files: Iterable[Path],
        *,
        on_bad_sample: OnBadSample = "error",
        label: str = "",
        chat_template: dict[str, Any] | None = None,
        allowed_image_roots: Sequence[Path] = (),
    ) -> None:
        if on_bad_sample not in ("error", "skip"):
            raise ValueError(f"on_bad_sample must be 'error' or 'skip', got {on_bad_sample!r}")
        self.data_files: list[Path] = [Path(path) for path in data_files]
        self.on_bad_sample: OnBadSample = on_bad_sample
        self.label = label
        self.samples: list[Sample] = []
        self.skipped: list[tuple[str, int, str]] = []
        errors: list[DataError] = []
        for data_file in self.data_files:
            records = read_chatml(data_file)
            bad_before = len(errors)
            for index, record in enumerate(records):
                try:
                    sample = record_to_sample(
                        record,
                        index,
                        data_file=data_file,
                        dataset_label=label,
                        chat_template=chat_template,
                        allowed_image_roots=allowed_image_roots,
                    )
                except DataError as exc:
                    errors.append(exc)
                    self.skipped.append((str(data_file), index, _reason(exc)))
                    continue
                self.samples.append(sample)
            bad = len(errors) - bad_before
            if bad and on_bad_sample == "skip":
                logger.warning(
                    "%s: skipped %d of %d records; first: %s",
                    data_file,
                    bad,
                    len(records),
                    errors[bad_before],
                )
        if errors and on_bad_sample == "error":
            self.skipped = []
            first = errors[0]
            more = len(errors) - 1
            reason = _reason(first)
            if more:
                reason += (
                    f" (and {more} more bad record{'s' if more > 1 else ''}; "
                    "fix them or set on_bad_sample to 'skip')"
                )
            raise DataError(reason, source=first.source, index=first.index) from first

    def __len__(self) -> int:
        return len(self.samples)

    @overload
    def __getitem__(self, item: int) -> Sample: ...

    @overload
    def __getitem__(self, item: slice) -> list[Sample]: ...

    def __getitem__(self, item: int | slice) -> Sample | list[Sample]:
        return self.samples[item]

    def __repr__(self) -> str:
        files = ", ".join(str(path) for path in self.data_files)
        return f"ChatmlDataset([{files}], {len(self)} samples, {len(self.skipped)} skipped)"
