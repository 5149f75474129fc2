"""Pieces every conversation layout shares: image tags, image lists, placement and turn order.

The chatml, ShareGPT and query/response readers all end in the same checks: ``<img>path</img>``
tags become image placeholders, a record's image field is a string or a list of strings, images
named without a place in the text go first in the first user turn, and turns alternate user /
assistant after an optional system message, ending with a reply.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from mixcore.api.records import IMAGE_PLACEHOLDER, ROLES, Message
from mixcore.kit.names import nearest
from mixcore_datasets.base import check_text

__all__ = ["check_order", "image_list", "parse_image_tags", "place_images", "role_hint"]

_OPEN, _CLOSE = "<img>", "</img>"

#: Role names other conventions use, mapped to ours for the did-you-mean of an unknown role.
_ROLE_ALIASES = {
    "human": "user",
    "gpt": "assistant",
    "bot": "assistant",
    "model": "assistant",
    "ai": "assistant",
}


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


def image_list(record: Mapping[str, Any], key: str) -> list[str]:
    """The image references of field ``key`` (a string or a list of strings), checked as text."""
    value = record.get(key)
    if value is None:
        return []
    if isinstance(value, str):
        refs = [value]
    elif isinstance(value, list) and all(isinstance(item, str) for item in value):
        refs = list(value)
    else:
        raise ValueError(f"'{key}' must be a string or a list of strings, got {value!r}")
    for n, ref in enumerate(refs):
        check_text(ref, f"'{key}'" if isinstance(value, str) else f"'{key}' entry {n}")
    return refs


def place_images(user_texts: list[str], refs: list[str], key: str) -> list[str]:
    """Check the ``<image>`` placeholders of the user texts against the images a field names.

    Without any placeholder the images go first in the first user text, one per line (how
    PaddleMIX feeds an ``image`` field to Qwen-VL); otherwise the counts must agree.
    """
    count = sum(text.count(IMAGE_PLACEHOLDER) for text in user_texts)
    if refs:
        if count == 0:
            return [f"{IMAGE_PLACEHOLDER}\n" * len(refs) + user_texts[0], *user_texts[1:]]
        if count != len(refs):
            raise ValueError(
                f"the text has {count} '{IMAGE_PLACEHOLDER}' placeholders but "
                f"'{key}' names {len(refs)} images"
            )
    elif count:
        raise ValueError(
            f"the text has '{IMAGE_PLACEHOLDER}' placeholders but the record names no image"
        )
    return user_texts


def role_hint(role: str) -> str:
    folded = role.strip().lower()
    hint = folded if folded in ROLES else _ROLE_ALIASES.get(folded) or nearest(folded, ROLES)
    return f" (did you mean {hint!r}?)" if hint else ""


def check_order(messages: Sequence[Message]) -> None:
    """An optional system message, then user / assistant alternating, ending with a reply."""
    expected = "user"
    for n, message in enumerate(messages):
        if message.role == "system":
            if n:
                raise ValueError(f"message {n}: a 'system' message may only come first")
            continue
        if message.role != expected:
            article = "an" if expected == "assistant" else "a"
            raise ValueError(
                f"message {n}: expected {article} '{expected}' message, got '{message.role}' "
                "(after an optional system message, user and assistant messages alternate, "
                "user first)"
            )
        expected = "assistant" if expected == "user" else "user"
    last = messages[-1].role
    if last != "assistant":
        raise ValueError(
            f"the last message must be an assistant reply to learn from, got a '{last}' message"
        )
