"""Reader of ShareGPT-style records: ``conversations`` as a list of ``{from, value}`` turns.

One layout, written by many tools::

    {"id": "000000033471",
     "image": "coco/train2017/000000033471.jpg",       # or "images": [...]; absent: text only
     "conversations": [{"from": "human", "value": "<image>\\nWhat is on the bus?"},
                       {"from": "gpt", "value": "An advertisement."}]}

* LLaVA-Instruct-150K, LLaVA-1.5's mix665k (text-only records included) and ShareGPT4V: roles
  ``human`` / ``gpt``, one ``image``, ``<image>`` before or after the question's text;
* LLaMA-Factory's ``sharegpt`` form: an ``images`` list, an optional ``system`` key, and a
  ``system`` turn allowed first;
* PaddleMIX's Qwen-VL fine-tuning files: roles ``user`` / ``assistant`` and the images inside the
  text as ``Picture 1: <img>path</img>``;
* PaddleMIX DataCopilot's ``MIX`` schema: ``images`` as ``[{"id": 0, "url": path}]`` (or null)
  and each image written ``<image>0</image>`` (by its ``id``) in the user text.

Turns may also use ``role`` / ``content`` instead of ``from`` / ``value``. After an optional system
turn, user and assistant turns alternate, user first, ending with a reply. Images named in a
field without a place in the text go first in the first user turn, one per line.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from mixcore.api.records import IMAGE_PLACEHOLDER, Message
from mixcore.kit.names import nearest
from mixcore_datasets.base import check_text, json_type
from mixcore_datasets.turns import check_order, image_list, parse_image_tags, place_images

__all__ = ["SPEAKERS", "sharegpt_form"]

#: Speaker names of each role (``from`` values; ``role`` values map the same way).
SPEAKERS = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "system": "system",
}

#: Tool-use speakers of LLaMA-Factory's sharegpt form, which supervised image-text tuning lacks.
_TOOL_SPEAKERS = ("function_call", "observation", "tool")

#: DataCopilot's image mark: ``<image>N</image>`` names the image whose ``id`` is N.
_NUMBERED = re.compile(r"<image>\s*(\d+)\s*</image>")


def _turn(item: Any, n: int) -> tuple[str, str]:
    """The role and text of conversation turn ``n``."""
    if not isinstance(item, dict):
        raise ValueError(
            f"turn {n} must be an object with 'from' and 'value', got a JSON {json_type(item)}"
        )
    if "from" in item or "value" in item:
        speaker_key, text_key = "from", "value"
    elif "role" in item or "content" in item:
        speaker_key, text_key = "role", "content"
    else:
        keys = ", ".join(sorted(map(str, item))) or "none"
        raise ValueError(f"turn {n} has no 'from' and 'value' (keys: {keys})")
    for key in (speaker_key, text_key):
        if key not in item:
            raise ValueError(f"turn {n} has no '{key}'")
    speaker, text = item[speaker_key], item[text_key]
    if not isinstance(speaker, str):
        raise ValueError(f"turn {n}: '{speaker_key}' must be a string, got {json_type(speaker)}")
    role = SPEAKERS.get(speaker.strip().lower())
    if role is None:
        if speaker in _TOOL_SPEAKERS:
            raise ValueError(
                f"turn {n}: '{speaker}' turns (tool use) are not supported; "
                "allowed speakers: " + ", ".join(SPEAKERS)
            )
        hint = nearest(speaker.lower(), list(SPEAKERS))
        raise ValueError(
            f"turn {n}: unknown speaker {speaker!r}"
            + (f" (did you mean {hint!r}?)" if hint else "")
            + "; allowed speakers: "
            + ", ".join(SPEAKERS)
        )
    if not isinstance(text, str):
        raise ValueError(f"turn {n}: '{text_key}' must be a string, got a JSON {json_type(text)}")
    check_text(text, f"turn {n} '{text_key}'")
    return role, text


def _system(record: Mapping[str, Any], messages: list[Message]) -> list[Message]:
    """``messages`` with the record's ``system`` key, if any, as the first message."""
    if "system" not in record or record["system"] is None:
        return messages
    system = record["system"]
    if not isinstance(system, str):
        raise ValueError(f"'system' must be a string, got a JSON {json_type(system)}")
    check_text(system, "'system'")
    if messages and messages[0].role == "system":
        raise ValueError("record has a 'system' key and a first 'system' turn; give one")
    return [Message("system", system), *messages]


def _numbered_images(record: Mapping[str, Any]) -> dict[str, str]:
    """DataCopilot's ``images`` table: ``id`` (as text) -> path."""
    table: dict[str, str] = {}
    entries = record.get("images") or []
    if not isinstance(entries, list):
        raise ValueError(f"'images' must be a list, got a JSON {json_type(entries)}")
    for n, entry in enumerate(entries):
        if not isinstance(entry, dict) or "url" not in entry or "id" not in entry:
            raise ValueError(f"'images' entry {n} must be an object with 'id' and 'url'")
        url = entry["url"]
        if not isinstance(url, str) or not url.strip():
            raise ValueError(f"'images' entry {n}: 'url' must be a non-empty string")
        table[str(entry["id"])] = check_text(url, f"'images' entry {n} 'url'")
    return table


def _field_images(record: Mapping[str, Any]) -> tuple[list[str], str]:
    """The images a record lists in ``image`` or ``images`` (strings or ``{url}`` objects)."""
    if "image" in record and "images" in record:
        raise ValueError("record has both 'image' and 'images'; give one")
    key = "images" if "images" in record else "image"
    value = record.get(key)
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        return list(_numbered_images(record).values()), key
    return image_list(record, key), key


def sharegpt_form(record: Mapping[str, Any]) -> tuple[list[Message], list[str]]:
    """Validate a ShareGPT-style record; return its messages and image references."""
    conversations = record["conversations"]
    if not isinstance(conversations, list):
        raise ValueError(
            f"'conversations' must be a list of {{from, value}} turns, "
            f"got a JSON {json_type(conversations)}"
        )
    if not conversations:
        raise ValueError("'conversations' is empty")
    messages = _system(record, [Message(*_turn(item, n)) for n, item in enumerate(conversations)])
    offset = len(messages) - len(conversations)  # 1 when a 'system' key was prepended
    check_order(messages)
    for n, message in enumerate(messages):
        if message.role != "user":
            text = message.content
            if IMAGE_PLACEHOLDER in text or "<img>" in text:
                owner = "an assistant reply" if message.role == "assistant" else "a system turn"
                raise ValueError(f"turn {n - offset}: {owner} cannot contain an image")
    if not any(m.content.strip() for m in messages if m.role == "assistant"):
        raise ValueError("every assistant reply is empty, so the record has nothing to learn")

    users = [n for n, message in enumerate(messages) if message.role == "user"]
    texts = [messages[n].content for n in users]
    if any("<img>" in text or "</img>" in text for text in texts):
        texts, refs = _tagged(record, texts, users, offset)
    elif any(_NUMBERED.search(text) for text in texts):
        texts, refs = _numbered(record, texts)
    else:
        refs, key = _field_images(record)
        texts = place_images(texts, refs, key)
    for n, text in zip(users, texts, strict=True):
        messages[n] = Message("user", text)
    return messages, refs


def _tagged(
    record: Mapping[str, Any], texts: list[str], users: list[int], offset: int
) -> tuple[list[str], list[str]]:
    """Qwen-VL's ``<img>path</img>`` tags: the images are where the tags are."""
    placed, refs = [], []
    for n, text in zip(users, texts, strict=True):
        if IMAGE_PLACEHOLDER in text:
            raise ValueError(
                f"turn {n - offset} mixes '<img>' tags with '{IMAGE_PLACEHOLDER}' placeholders; "
                "use one convention"
            )
        try:
            new, found = parse_image_tags(text)
        except ValueError as exc:
            raise ValueError(f"turn {n - offset}: {exc}") from None
        placed.append(new)
        refs.extend(found)
    listed, key = _field_images(record)
    if listed and listed != refs:
        raise ValueError(
            f"'{key}' {listed} does not match the '<img>' tags {refs}; name each image once"
        )
    return placed, refs


def _numbered(record: Mapping[str, Any], texts: list[str]) -> tuple[list[str], list[str]]:
    """DataCopilot's ``<image>N</image>`` marks, each naming an ``images`` entry by ``id``."""
    table = _numbered_images(record)
    refs: list[str] = []

    def place(match: re.Match[str]) -> str:
        if match.group(1) not in table:
            known = ", ".join(table) or "none"
            raise ValueError(
                f"'{match.group(0)}' names image id {match.group(1)}, which 'images' does not "
                f"list (ids: {known})"
            )
        refs.append(table[match.group(1)])
        return IMAGE_PLACEHOLDER

    placed = [_NUMBERED.sub(place, text) for text in texts]
    if sum(text.count(IMAGE_PLACEHOLDER) for text in placed) != len(refs):
        raise ValueError(
            f"record mixes '<image>N</image>' marks with bare '{IMAGE_PLACEHOLDER}' placeholders"
        )
    return placed, refs
