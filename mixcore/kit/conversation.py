"""Conversation encoding: a :class:`~mixcore.api.Sample` -> token ids, labels and image slots.

The steps every chat model repeats, done once: the chat template renders the messages into
``(text, trainable)`` segments (:func:`mixcore.kit.templates.render_segments`); each segment is
tokenized on its own; each image placeholder becomes the model's image tokens (its
:data:`ImageTokens` callable says which, and where in them the image features go); labels are
the next token where that token belongs to a reply, pre-shifted, with the last label
:data:`~mixcore.api.IGNORE_INDEX`; over-long samples lose text from the end, never an image or
part of one.

Labels are shifted here, not in the model, because packing (:mod:`mixcore.kit.packing`) lays
samples end to end: a label computed inside a sample never points into the next one.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from mixcore.api.constants import IGNORE_INDEX
from mixcore.api.errors import DataError
from mixcore.api.records import IMAGE_PLACEHOLDER, Message, Sample
from mixcore.kit.templates import render_segments

__all__ = [
    "ConversationEncoder",
    "EncodedConversation",
    "ImageSlot",
    "ImageTokens",
    "shifted_labels",
    "without_image",
]

#: Longer than any real sample: "do not truncate".
UNLIMITED = 2**31 - 1


@dataclass(frozen=True)
class ImageSlot:
    """The tokens that stand for one image: ``ids`` replace its placeholder, and
    ``ids[start:end]`` is the image's span, which truncation never cuts into (the model writes
    the image's features over tokens of it; text around it, such as Qwen-VL's ``Picture 1:``,
    may be cut like any text)."""

    ids: tuple[int, ...]
    start: int
    end: int


#: ``image_tokens(number)`` -> the :class:`ImageSlot` for image ``number`` (1-based, counted as
#: the encoder's ``image_numbering`` says).
ImageTokens = Callable[[int], ImageSlot]


@dataclass
class EncodedConversation:
    """One encoded sample. ``image_spans[i]`` is the ``(start, end)`` of image ``i``'s span in
    ``input_ids`` (see :class:`ImageSlot`); ``labels`` has the length of ``input_ids``."""

    input_ids: list[int]
    labels: list[int]
    image_spans: list[tuple[int, int]] = field(default_factory=list)

    def arrays(self) -> dict[str, np.ndarray]:
        """``input_ids`` and ``labels`` as int64 arrays: the start of a feature dict."""
        return {
            "input_ids": np.asarray(self.input_ids, dtype=np.int64),
            "labels": np.asarray(self.labels, dtype=np.int64),
        }


def shifted_labels(ids: Sequence[int], trainable: Sequence[bool]) -> list[int]:
    """Next-token labels: ``labels[t] = ids[t + 1]`` where token ``t + 1`` is trainable, else
    :data:`IGNORE_INDEX`; the last label is always :data:`IGNORE_INDEX`."""
    labels = [ids[t + 1] if trainable[t + 1] else IGNORE_INDEX for t in range(len(ids) - 1)]
    labels.append(IGNORE_INDEX)
    return labels[: len(ids)]


#: Texts up to this many characters are tokenised once per encoder and remembered.
_SHORT_TEXT = 48


class ConversationEncoder:
    """Encodes samples for one model.

    ``tokenize(text)`` returns the ids of a piece of text without special tokens added.
    ``image_tokens`` gives each image's tokens (see :data:`ImageTokens`). ``image_numbering``:
    ``"conversation"`` numbers images 1, 2, ... across the whole sample; ``"message"`` restarts
    at 1 in every message, as Qwen-VL's ``from_list_format`` does per query. ``default_template``
    is used for samples whose dataset chose none (None: the ChatML layout). ``bos_ids`` start
    every sample (never trained on); ``end_of_turn_ids`` follow every reply and are trained on,
    so the model learns to stop, for tokenizers that cannot spell their stop token in text.
    ``template_context`` reaches Jinja templates as extra variables (``bos_token``, ...).
    """

    def __init__(
        self,
        tokenize: Callable[[str], Sequence[int]],
        image_tokens: ImageTokens | None = None,
        *,
        image_numbering: Literal["conversation", "message"] = "conversation",
        default_template: Mapping[str, Any] | str | None = None,
        bos_ids: Sequence[int] = (),
        end_of_turn_ids: Sequence[int] = (),
        template_context: Mapping[str, Any] | None = None,
    ) -> None:
        if image_numbering not in ("conversation", "message"):
            raise ValueError(
                f"image_numbering must be 'conversation' or 'message', not {image_numbering!r}"
            )
        self.tokenize = tokenize
        # Templates wrap every turn in the same short texts ("<|im_start|>user\n", ...):
        # tokenised once each, measuring a million samples skips millions of calls.
        self._tokenize_short = functools.lru_cache(maxsize=4096)(lambda text: tuple(tokenize(text)))
        self.image_tokens = image_tokens
        self.image_numbering = image_numbering
        self.default_template = default_template
        self.bos_ids = list(bos_ids)
        self.end_of_turn_ids = list(end_of_turn_ids)
        self.template_context = dict(template_context or {})

    def encode(self, sample: Sample, max_length: int = UNLIMITED) -> EncodedConversation:
        """Encode ``sample``, truncated to ``max_length`` tokens.

        A sample whose cut would reach into or before an image, or that would keep no reply
        token although it had one, is a :class:`DataError` naming its record; so is a sample
        whose placeholders and images differ in number.
        """
        ids, trainable, spans = self._tokens(sample)
        had_reply = any(trainable)
        if len(ids) > max_length:
            self._check_cut(sample, ids, spans, max_length)
            ids, trainable = ids[:max_length], trainable[:max_length]
        labels = shifted_labels(ids, trainable)
        if had_reply and all(label == IGNORE_INDEX for label in labels):
            raise DataError(
                f"no reply token is left within max_length {max_length}; raise max_length",
                source=sample.source,
                index=sample.index,
            )
        return EncodedConversation(ids, labels, spans)

    def length(self, sample: Sample) -> int:
        """Tokens of the encoded sample, image tokens included, untruncated; reads no image.

        Raises what :meth:`encode` without a length limit raises, without making its labels.
        """
        ids, trainable, _ = self._tokens(sample)
        if any(trainable) and not any(trainable[1:]):  # encode's "no reply token is left"
            self.encode(sample)
        return len(ids)

    def _tokens(self, sample: Sample) -> tuple[list[int], list[bool], list[tuple[int, int]]]:
        """The untruncated ids, whether each is trained on, and the image spans."""
        template = (
            sample.chat_template if sample.chat_template is not None else self.default_template
        )
        segments = render_segments(
            template,
            sample.messages,
            context=self.template_context or None,
            source=sample.source,
            index=sample.index,
        )
        placeholders = sum(text.count(IMAGE_PLACEHOLDER) for text, _ in segments)
        if placeholders != len(sample.images) or (placeholders and self.image_tokens is None):
            raise DataError(
                f"{placeholders} image placeholder(s) but {len(sample.images)} image(s)"
                + ("" if self.image_tokens else "; this model takes no images"),
                source=sample.source,
                index=sample.index,
            )
        numbers = self._image_numbers(sample, placeholders)
        ids: list[int] = list(self.bos_ids)
        trainable: list[bool] = [False] * len(ids)
        spans: list[tuple[int, int]] = []
        for text, is_reply in segments:
            parts = text.split(IMAGE_PLACEHOLDER)
            for n, part in enumerate(parts):
                if n > 0:
                    assert self.image_tokens is not None  # checked above
                    slot = self.image_tokens(numbers[len(spans)])
                    spans.append((len(ids) + slot.start, len(ids) + slot.end))
                    ids.extend(slot.ids)
                    trainable.extend([is_reply] * len(slot.ids))
                if part:
                    piece = (
                        self._tokenize_short(part)
                        if len(part) <= _SHORT_TEXT
                        else self.tokenize(part)
                    )
                    ids.extend(piece)
                    trainable.extend([is_reply] * len(piece))
            if is_reply and self.end_of_turn_ids:
                ids.extend(self.end_of_turn_ids)
                trainable.extend([True] * len(self.end_of_turn_ids))
        return ids, trainable, spans

    def _image_numbers(self, sample: Sample, placeholders: int) -> list[int]:
        """The number each placeholder's image gets, in placeholder order.

        Per-message numbering needs the rendered text to hold the messages' placeholders in
        their order; a template that adds or drops some gets numbering across the sample.
        """
        counts = [m.content.count(IMAGE_PLACEHOLDER) for m in sample.messages]
        if self.image_numbering == "conversation" or sum(counts) != placeholders:
            return list(range(1, placeholders + 1))
        return [n for count in counts for n in range(1, count + 1)]

    @staticmethod
    def _check_cut(
        sample: Sample, ids: Sequence[int], spans: Sequence[tuple[int, int]], max_length: int
    ) -> None:
        lost = [n for n, (_, end) in enumerate(spans) if end > max_length]
        if lost:
            where = "inside" if spans[lost[0]][0] < max_length else "before"
            raise DataError(
                f"{len(ids)} tokens (image tokens included) exceed max_length {max_length} "
                f"and the cut would fall {where} image {lost[0] + 1}; raise max_length",
                source=sample.source,
                index=sample.index,
            )


def without_image(sample: Sample) -> tuple[Sample, bool]:
    """``sample`` with its image placeholder taken out of the text and its image list emptied,
    and whether it had an image: for models that take at most one image, at a fixed place of
    their own (BLIP-2, VisualGLM). More than one image, or placeholders and images that differ
    in number, is a :class:`DataError` naming the record."""
    count = sum(m.content.count(IMAGE_PLACEHOLDER) for m in sample.messages)
    if count > 1 or len(sample.images) > 1:
        raise DataError(
            f"this model takes one image per sample; this one has {max(count, len(sample.images))}",
            source=sample.source,
            index=sample.index,
        )
    if count != len(sample.images):
        raise DataError(
            f"{count} image placeholder(s) but {len(sample.images)} image(s)",
            source=sample.source,
            index=sample.index,
        )
    messages = [
        Message(m.role, m.content.replace(IMAGE_PLACEHOLDER, "").strip())
        if IMAGE_PLACEHOLDER in m.content
        else m
        for m in sample.messages
    ]
    return dataclasses.replace(sample, messages=messages, images=[]), count == 1
