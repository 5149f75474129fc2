"""How BLIP-2 spells a sample: the image's query placeholders first, then the prompt and answer.

BLIP-2 takes at most one image, always before the text (its query outputs precede the prompt in
every published model), so the ``<image>`` placeholder is taken out of the messages and
``num_query_tokens`` placeholder ids start the sequence. The text is rendered with the dataset's
chat template, by default the VQA form BLIP-2 was tuned with: ``Question: {q} Answer: {a}``.

* **OPT** (decoder only): ``[image x n] </s> Question: q Answer: a\\n``; labels on the answer and
  its newline (LAVIS ends OPT targets with ``\\n``, and the published models stop there), shifted
  by the toolkit's conversation encoder.
* **T5** (encoder-decoder): the encoder reads ``[image x n] Question: q Answer:</s>`` (earlier
  turns included), the decoder ``<pad> a </s>``, and ``labels[t]`` is ``decoder_input_ids[t+1]``
  (the answer and its ``</s>``), the last label ignored, as for a decoder-only model.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from mixcore.api.constants import IGNORE_INDEX
from mixcore.api.errors import DataError
from mixcore.api.records import Message, Sample
from mixcore.kit.conversation import UNLIMITED, ConversationEncoder, without_image
from mixcore.kit.templates import render_segments

#: BLIP-2's prompt form for questions (captions use it too: the caption prompt is the question).
OPT_TEMPLATE = {
    "conversation": ["Question: {{user}} Answer:", " {{bot}}\n"],
    "query": "Question: {{query}} Answer:",
}
#: T5's sentencepiece has no newline; an answer ends with </s> instead.
T5_TEMPLATE = {
    "conversation": ["Question: {{user}} Answer:", " {{bot}} "],
    "query": "Question: {{query}} Answer:",
}


class Blip2Encoder:
    """Encodes samples for one BLIP-2 model (see the module docstring)."""

    def __init__(self, tokenizer: Any, family: str, num_queries: int, image_token_id: int) -> None:
        self.tokenizer = tokenizer
        self.family = family
        self.placeholders = [int(image_token_id)] * int(num_queries)
        self.template = OPT_TEMPLATE if family == "opt" else T5_TEMPLATE
        self.eos_id = int(tokenizer.eos_token_id)
        bos = [int(tokenizer.bos_token_id)] if family == "opt" else []
        self._text = {
            has_image: ConversationEncoder(
                self.tokenize,
                default_template=self.template,
                bos_ids=(self.placeholders if has_image else []) + bos,
            )
            for has_image in (False, True)
        }

    def tokenize(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    # --- training samples ---------------------------------------------------------------

    def encode(self, sample: Sample, max_length: int = UNLIMITED) -> dict[str, np.ndarray]:
        """``input_ids`` and ``labels`` (T5: and ``decoder_input_ids``); the image's features go
        over the first ``num_query_tokens`` ids when the sample has one."""
        bare, has_image = without_image(sample)
        if self.family == "opt":
            return self._text[has_image].encode(bare, max_length).arrays()
        return self._encode_t5(bare, has_image, max_length)

    def length(self, sample: Sample) -> int:
        """Tokens of the encoded sample (T5: encoder plus decoder), untruncated."""
        features = self.encode(sample)
        return len(features["input_ids"]) + len(features.get("decoder_input_ids", ()))

    def _encode_t5(self, bare: Sample, has_image: bool, max_length: int) -> dict[str, np.ndarray]:
        messages = list(bare.messages)
        reply = None
        if messages and messages[-1].role == "assistant":
            reply = messages.pop().content.strip()
        prompt = self._render_prompt(bare, messages)
        prefix = self.placeholders if has_image else []
        encoder_text = self.tokenize(prompt)
        decoder = [] if reply is None else [*self.tokenize(reply), self.eos_id]
        room = max_length - len(prefix) - 1 - (len(decoder) + 1 if decoder else 0)
        if room < 0 and decoder:
            # Not even the placeholders, </s> and the whole answer fit: cut the answer.
            keep = len(decoder) + room
            if keep < 1:
                raise DataError(
                    f"max_length {max_length} leaves no room for the answer after the "
                    f"{len(prefix)} image tokens; raise max_length",
                    source=bare.source,
                    index=bare.index,
                )
            decoder, room = decoder[:keep], 0
        if room < 0:
            raise DataError(
                f"max_length {max_length} is shorter than the {len(prefix)} image tokens",
                source=bare.source,
                index=bare.index,
            )
        input_ids = prefix + encoder_text[:room] + [self.eos_id]
        out = {"input_ids": np.asarray(input_ids, dtype=np.int64)}
        if decoder:
            start = int(self.tokenizer.pad_token_id)
            out["decoder_input_ids"] = np.asarray([start, *decoder], dtype=np.int64)
            out["labels"] = np.asarray([*decoder, IGNORE_INDEX], dtype=np.int64)
        return out

    def _render_prompt(self, bare: Sample, messages: Sequence[Message]) -> str:
        segments = render_segments(
            bare.chat_template if bare.chat_template is not None else self.template,
            messages,
            source=bare.source,
            index=bare.index,
        )
        return "".join(text for text, _ in segments).strip()


def collate_t5(features: Sequence[dict[str, Any]], pad_id: int) -> dict[str, np.ndarray]:
    """Right-padded T5 batch: encoder ``input_ids`` / ``attention_mask``, ``decoder_input_ids``
    / ``decoder_attention_mask`` and ``labels`` (aligned with the decoder), images concatenated."""
    from mixcore.kit.collation import pad_batch

    encoder = pad_batch(
        [{k: v for k, v in f.items() if k in ("input_ids", "images")} for f in features], pad_id
    )
    if not all("decoder_input_ids" in f for f in features):
        return encoder
    decoder = pad_batch(
        [{"input_ids": f["decoder_input_ids"], "labels": f["labels"]} for f in features],
        pad_id,
        image_key=None,
    )
    encoder["decoder_input_ids"] = decoder["input_ids"]
    encoder["decoder_attention_mask"] = decoder["attention_mask"]
    encoder["labels"] = decoder["labels"]
    return encoder


def stop_ids(tokenizer: Any, family: str) -> tuple[int, ...]:
    """Tokens that end an answer: ``</s>``, and for OPT the newline its targets end with."""
    stops = [int(tokenizer.eos_token_id)]
    if family == "opt":
        newline = tokenizer("\n", add_special_tokens=False)["input_ids"]
        if len(newline) == 1:
            stops.append(int(newline[0]))
    return tuple(stops)


class CaptionEncoder:
    """Encodes samples for stage-1 pretraining: the caption (the sample's last reply) as
    ``[CLS] text [SEP]`` in ``input_ids``, ``labels[t] = input_ids[t+1]`` for image-grounded
    generation (the first position, ``[DEC]`` in that loss, predicts the first word)."""

    def __init__(self, tokenizer: Any, cls_id: int) -> None:
        self.tokenizer = tokenizer
        self.cls_id = int(cls_id)
        self.sep_id = int(tokenizer.eos_token_id)

    def encode(self, sample: Sample, max_length: int = UNLIMITED) -> dict[str, np.ndarray]:
        bare, has_image = without_image(sample)
        replies = [m.content for m in bare.messages if m.role == "assistant"]
        if not has_image or not replies:
            raise DataError(
                "stage-1 pretraining needs an image and its caption (an assistant reply)",
                source=sample.source,
                index=sample.index,
            )
        text = self.tokenizer(replies[-1].strip(), add_special_tokens=False)["input_ids"]
        ids = [*[self.cls_id, *text][: max(max_length - 1, 1)], self.sep_id]
        labels = [*ids[1:], IGNORE_INDEX]
        return {
            "input_ids": np.asarray(ids, dtype=np.int64),
            "labels": np.asarray(labels, dtype=np.int64),
        }

    def length(self, sample: Sample) -> int:
        return len(self.encode(sample)["input_ids"])
