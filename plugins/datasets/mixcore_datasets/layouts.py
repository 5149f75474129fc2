"""Which conversation layout a record is in, told from its keys, and how errors name it.

:func:`detect_layout` looks at one record: ``messages`` is the messages form; ``query`` /
``response`` is ms-swift's; ``conversations`` holding ``{from, value}`` objects is ShareGPT,
holding ``[user, assistant]`` pairs PaddleMIX's chatml. These keys never overlap in the formats
that use them, so detection is per record and one file may mix layouts. The dataset's ``format``
option pins one layout instead (``auto``, the default, detects).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["FORMATS", "LAYOUT_NAMES", "detect_layout", "no_layout_reason", "pinned_layout"]

#: Layout id -> the name errors use for it.
LAYOUT_NAMES = {
    "chatml": "PaddleMIX chatml",
    "sharegpt": "ShareGPT/LLaVA",
    "messages": "the messages form",
    "swift_query": "ms-swift query/response",
}

#: Values of the ``format`` option; ``llava`` is another name of ``sharegpt``.
FORMATS = ("auto", "chatml", "sharegpt", "llava", "messages", "swift_query")

#: Keys of other dataset kinds' records, for the hint of a record that is no conversation.
_OTHER_KINDS = (
    (("question",), "a VQA record ('question', 'answer'): read it with the vqa dataset"),
    (("caption",), "a caption record ('image', 'caption'): read it with coco_caption"),
    (("sentences",), "a Karpathy COCO entry ('sentences'): read it with coco_caption"),
    (("instruction", "output"), "an Alpaca record ('instruction', 'output'), which has no images"),
)


def pinned_layout(fmt: str) -> str | None:
    """The layout a ``format`` value pins, or None for ``auto``."""
    if fmt == "auto":
        return None
    return "sharegpt" if fmt == "llava" else fmt


def detect_layout(record: Mapping[str, Any]) -> tuple[str | None, str]:
    """The layout of ``record`` and the evidence (for messages, empty when weak), or
    ``(None, "")``.

    Raises ``ValueError`` for a record that holds two layouts' keys.
    """
    found = [key for key in ("conversations", "messages", "query") if key in record]
    if len(found) > 1:
        listed = " and ".join(f"'{key}'" for key in found)
        raise ValueError(f"record has both {listed}; use one form per record")
    if "messages" in record:
        return "messages", "has 'messages'"
    if "query" in record or "response" in record:
        return "swift_query", "has 'query'" if "query" in record else "has 'response'"
    if "conversations" not in record:
        return None, ""
    turns = record["conversations"]
    if isinstance(turns, list) and turns:
        first = turns[0]
        if isinstance(first, dict) or (
            not isinstance(first, list) and any(isinstance(t, dict) for t in turns)
        ):
            return "sharegpt", "has 'conversations' of {from, value} turns"
        if isinstance(first, list):
            return "chatml", "has 'conversations' of [user, assistant] pairs"
    # Empty, or not a list: either conversations layout; its reason needs no layout named.
    return "chatml", ""


def no_layout_reason(record: Mapping[str, Any]) -> str:
    """Why a record matches no layout, with the closest other dataset kind when one fits."""
    keys = ", ".join(sorted(map(str, record))) or "none"
    reason = (
        "record has no 'conversations', 'messages' or 'query'/'response', so it matches no "
        f"conversation layout (keys: {keys})"
    )
    for needed, hint in _OTHER_KINDS:
        if all(key in record for key in needed):
            return f"{reason}; it looks like {hint}"
    return reason
