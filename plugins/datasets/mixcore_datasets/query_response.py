"""Reader of ms-swift's query/response records: one exchange, earlier ones in ``history``.

::

    {"system": "You are a vet.",                        # optional
     "history": [["<image>What is it?", "A cat."]],     # optional: earlier [query, response] pairs
     "query": "And its colour?",
     "response": "Grey.",
     "images": ["images/cat.png"]}                      # optional: a list, or one string

Each ``<image>`` in a user text (history first, then ``query``) is the next file of ``images``;
images without any ``<image>`` go first in the first user turn, one per line.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mixcore.api.records import IMAGE_PLACEHOLDER, Message
from mixcore_datasets.base import check_text, json_type
from mixcore_datasets.turns import image_list, place_images

__all__ = ["query_response_form"]


def _text(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{what} must be a string, got a JSON {json_type(value)}")
    return check_text(value, what)


def _pairs(record: Mapping[str, Any]) -> list[tuple[str, str]]:
    history = record.get("history")
    if history is None:
        return []
    if not isinstance(history, list):
        raise ValueError(
            f"'history' must be a list of [query, response] pairs, got a JSON {json_type(history)}"
        )
    pairs = []
    for n, pair in enumerate(history):
        if not isinstance(pair, list) or len(pair) != 2:
            raise ValueError(f"'history' entry {n} must be a [query, response] pair")
        pairs.append(
            (
                _text(pair[0], f"'history' entry {n} query"),
                _text(pair[1], f"'history' entry {n} response"),
            )
        )
    return pairs


def query_response_form(record: Mapping[str, Any]) -> tuple[list[Message], list[str]]:
    """Validate a query/response record; return its messages and image references."""
    for key in ("query", "response"):
        if key not in record:
            raise ValueError(f"record has no '{key}'")
    pairs = [
        *_pairs(record),
        (_text(record["query"], "'query'"), _text(record["response"], "'response'")),
    ]
    for n, (_, reply) in enumerate(pairs):
        if IMAGE_PLACEHOLDER in reply:
            what = "'response'" if n == len(pairs) - 1 else f"'history' entry {n} response"
            raise ValueError(f"{what} cannot contain an image")
    if not any(reply.strip() for _, reply in pairs):
        raise ValueError("every response is empty, so the record has nothing to learn")
    if "image" in record and "images" in record:
        raise ValueError("record has both 'image' and 'images'; give one")
    key = "image" if "image" in record else "images"
    refs = image_list(record, key)
    users = place_images([query for query, _ in pairs], refs, key)
    messages = []
    if record.get("system") is not None:
        messages.append(Message("system", _text(record["system"], "'system'")))
    for user, (_, reply) in zip(users, pairs, strict=True):
        messages += [Message("user", user), Message("assistant", reply)]
    return messages, refs
