"""How VisualGLM spells a sample, and how a batch of them is masked and positioned.

The published chat form (THUDM's ``build_inputs_with_image`` and ``finetune_visualglm.py``)::

    <img>[image x 32]</img>问：{question 1}\\n答：{answer 1}\\n问：{question}\\n答：[gMASK] <sop> {answer} <eop>

* The image, at most one, always comes first, wherever its placeholder was: the tokens of
  ``<img>``, ``image_length`` slot ids (``config.image_token_id``, which the model overwrites
  with the image's query outputs), then ``</img>`` and the text.
* Earlier turns are history inside the prompt (``问：q\\n答：a\\n``); ChatGLM attends to the
  whole prompt both ways, so only the last answer, after ``[gMASK] <sop>``, is trained on, with
  its ``<eop>`` (what ChatGLM-6B's own fine-tuning does with multi-turn records).
* Labels are pre-shifted: ``labels[t]`` is the token after ``t`` where that token is part of the
  answer or its ``<eop>``, so the ``<sop>`` position predicts the first answer token.
* Too long: the answer is cut (its ``<eop>`` first); a prompt that leaves no room for one answer
  token is a :class:`DataError` naming the record.

The collator pads right and gives each row ChatGLM's 4-D mask and 2-row positions, per sample
(:func:`mixcore_visualglm.chatglm_language.packed_positions_and_mask`), so a packed row (MIXToken)
gives each of its samples exactly the loss it has alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from mixcore.api.errors import DataError
from mixcore.api.records import Message, Sample
from mixcore.kit.conversation import UNLIMITED, shifted_labels, without_image
from mixcore.kit.templates import render_segments
from mixcore_visualglm.tokenization import IMAGE_END, IMAGE_START, special_ids

#: VisualGLM's prompt form (Chinese "question" / "answer" markers, as in the published model).
VISUALGLM_TEMPLATE = {
    "system": "{% if system %}{{system}}\n{% endif %}",
    "conversation": ["问：{{user}}\n答：", "{{bot}}\n"],
    "query": "问：{{query}}\n答：",
}


class VisualGLMEncoder:
    """Encodes samples for one VisualGLM model (see the module docstring)."""

    def __init__(self, tokenizer: Any, image_length: int, image_token_id: int) -> None:
        self.tokenizer = tokenizer
        self.ids = special_ids(tokenizer)
        self.image_token_id = int(image_token_id)
        self.slots = [self.image_token_id] * int(image_length)
        # Ids that fix ChatGLM's layout: text that spells them would move the prompt's end or
        # the image.
        self._reserved = {self.ids.gmask: "[gMASK]", self.ids.sop: "<sop>"}
        self._reserved.setdefault(self.image_token_id, "the image slot token")

    def tokenize(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def encode(self, sample: Sample, max_length: int = UNLIMITED) -> dict[str, np.ndarray]:
        """``input_ids`` (and ``labels`` when the sample ends with an answer)."""
        bare, has_image = without_image(sample)
        messages = list(bare.messages)
        reply = None
        if messages and messages[-1].role == "assistant":
            reply = messages.pop().content.strip()
        if not messages or messages[-1].role != "user":
            raise DataError(
                "a VisualGLM sample ends with a question, or a question and its answer",
                source=sample.source,
                index=sample.index,
            )
        prompt = self._prompt_text(bare, messages)
        if has_image:
            text = self.tokenize(IMAGE_START)
            context = [*text, *self.slots, *self.tokenize(IMAGE_END + prompt)]
            self._check_text(sample, text + context[len(text) + len(self.slots) :])
        else:
            context = self.tokenize(prompt)
            self._check_text(sample, context)
        ids = [*context, self.ids.gmask, self.ids.sop]
        if reply is None:
            return {"input_ids": np.asarray(ids, dtype=np.int64)}
        answer = [*self.tokenize(reply), self.ids.eop]
        room = max_length - len(ids)
        if room < 1:
            raise DataError(
                f"the prompt takes {len(ids)} tokens (image slots included), leaving no room "
                f"for the answer within max_length {max_length}; raise max_length",
                source=sample.source,
                index=sample.index,
            )
        answer = answer[:room]
        ids += answer
        trainable = [False] * (len(ids) - len(answer)) + [True] * len(answer)
        return {
            "input_ids": np.asarray(ids, dtype=np.int64),
            "labels": np.asarray(shifted_labels(ids, trainable), dtype=np.int64),
        }

    def length(self, sample: Sample) -> int:
        """Tokens of the encoded sample, untruncated; reads no image."""
        return len(self.encode(sample)["input_ids"])

    def _prompt_text(self, bare: Sample, messages: Sequence[Message]) -> str:
        template = bare.chat_template if bare.chat_template is not None else VISUALGLM_TEMPLATE
        segments = render_segments(template, messages, source=bare.source, index=bare.index)
        return "".join(text for text, _ in segments)

    def _check_text(self, sample: Sample, ids: Sequence[int]) -> None:
        spelled = sorted({self._reserved[i] for i in ids if i in self._reserved})
        if spelled:
            raise DataError(
                f"the text spells {', '.join(spelled)}, which VisualGLM's input layout reserves",
                source=sample.source,
                index=sample.index,
            )


def collate(
    features: Sequence[dict[str, Any]], pad_id: int, gmask_id: int, bos_id: int
) -> dict[str, Any]:
    """A right-padded batch: ``input_ids``, ``labels``, ``images`` (concatenated in reading
    order), ChatGLM's ``attention_mask`` ``[batch, 1, L, L]`` (bool, True = may attend) and
    ``position_ids`` ``[batch, 2, L]``. A batch of packed rows (features with ``segment_ids``)
    has each segment positioned as if it were alone and, instead of the ``[L, L]`` mask,
    ``segment_ids`` ``[batch, L]`` (0 on padding), which the model turns into attention per
    segment (:func:`mixcore_visualglm.chatglm_language.attending_per_segment`)."""
    from mixcore.kit.collation import pad_batch
    from mixcore_visualglm.chatglm_language import (
        packed_positions_and_layout,
        packed_positions_and_mask,
    )

    rows = [
        {k: v for k, v in f.items() if k not in ("segment_ids", "position_ids")} for f in features
    ]
    batch = pad_batch(rows, pad_id)
    segments = np.zeros(batch["input_ids"].shape, dtype=np.int64)
    for row, f in enumerate(features):
        n = len(f["input_ids"])
        segments[row, :n] = np.asarray(f["segment_ids"]) if "segment_ids" in f else 1
    if any("segment_ids" in f for f in features):
        positions, _ = packed_positions_and_layout(batch["input_ids"], segments, gmask_id, bos_id)
        batch["attention_mask"] = (segments > 0).astype(np.int64)
        batch["segment_ids"] = segments
    else:
        positions, keep = packed_positions_and_mask(batch["input_ids"], segments, gmask_id, bos_id)
        batch["attention_mask"] = keep
    batch["position_ids"] = positions
    return batch
