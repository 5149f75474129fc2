"""Sample -> features for Qwen-VL: ChatML rendering, image token spans, shifted labels, batches."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from mixcore.api.errors import DataError
from mixcore.api.records import IMAGE_PLACEHOLDER, ModelBundle, Sample
from mixcore.kit.images import load_image
from mixcore.kit.templates import render_segments

IGNORE_INDEX = -100


def _tokenize_segment(
    text: str, tokenizer: Any, n_queries: int, first_picture: int
) -> tuple[list[int], list[tuple[int, int]], int]:
    """Token ids of one segment, the (start, end) of each image span in it, and pictures used.

    Each image placeholder becomes Qwen-VL's ``Picture N: <img>`` + pad tokens + ``</img>\\n``;
    the pad tokens are where the model writes the image features.
    """
    ids: list[int] = []
    spans: list[tuple[int, int]] = []
    parts = text.split(IMAGE_PLACEHOLDER)
    for i, part in enumerate(parts):
        if i > 0:
            picture = first_picture + i
            ids.extend(tokenizer.encode(f"Picture {picture}: ")["input_ids"])
            start = len(ids)
            ids.extend(tokenizer.image_span_ids(n_queries))
            spans.append((start, len(ids)))
            ids.extend(tokenizer.encode("\n")["input_ids"])
        if part:
            ids.extend(tokenizer.encode(part)["input_ids"])
    return ids, spans, len(parts) - 1


def encode_sample(
    sample: Sample, bundle: ModelBundle, max_length: int, *, with_images: bool = True
) -> dict[str, Any]:
    """Features of one sample: ``input_ids``, next-token ``labels`` and ``images``.

    Labels are already shifted (PaddleNLP's QWen does not shift them): ``labels[t]`` is the
    token at ``t + 1`` when that token belongs to an assistant reply, else -100. A sample
    longer than ``max_length`` loses text from its end, but never an image or part of one; when
    the cut would reach an image, or no reply token would be left, it is a :class:`DataError`.
    """
    tokenizer, config = bundle.tokenizer, bundle.model.config
    n_queries = config.n_queries
    segments = render_segments(
        sample.chat_template, sample.messages, source=sample.source, index=sample.index
    )
    ids: list[int] = []
    trainable: list[bool] = []
    spans: list[tuple[int, int]] = []
    pictures = 0
    for text, is_reply in segments:
        seg_ids, seg_spans, used = _tokenize_segment(text, tokenizer, n_queries, pictures)
        spans.extend((start + len(ids), end + len(ids)) for start, end in seg_spans)
        pictures += used
        ids.extend(seg_ids)
        trainable.extend([is_reply] * len(seg_ids))
    if pictures != len(sample.images):
        raise DataError(
            f"{pictures} image placeholder(s) but {len(sample.images)} image(s)",
            source=sample.source,
            index=sample.index,
        )
    had_reply = any(trainable)
    if len(ids) > max_length:
        lost = [n for n, (_, end) in enumerate(spans) if end > max_length]
        if lost:
            where = "inside" if spans[lost[0]][0] < max_length else "before"
            raise DataError(
                f"{len(ids)} tokens (with {n_queries} per image) exceed max_length {max_length} "
                f"and the cut would fall {where} image {lost[0] + 1}; raise max_length",
                source=sample.source,
                index=sample.index,
            )
        ids, trainable = ids[:max_length], trainable[:max_length]
    labels = [ids[t + 1] if trainable[t + 1] else IGNORE_INDEX for t in range(len(ids) - 1)]
    labels.append(IGNORE_INDEX)
    if had_reply and all(label == IGNORE_INDEX for label in labels):
        raise DataError(
            f"no reply token is left within max_length {max_length}; raise max_length",
            source=sample.source,
            index=sample.index,
        )
    features: dict[str, Any] = {
        "input_ids": np.asarray(ids, dtype=np.int64),
        "labels": np.asarray(labels, dtype=np.int64),
    }
    if with_images:
        features["images"] = load_images(sample, bundle, count=len(spans))
    return features


def load_images(sample: Sample, bundle: ModelBundle, count: int | None = None) -> np.ndarray:
    """The sample's first ``count`` images, preprocessed: float32 ``[n, 3, size, size]``."""
    paths = sample.images if count is None else sample.images[:count]
    size = bundle.processor.image_size
    if not paths:
        return np.zeros((0, 3, size, size), dtype=np.float32)
    images = [load_image(p, source=sample.source, index=sample.index) for p in paths]
    return np.stack([bundle.processor.preprocess(image) for image in images])


def sample_length(sample: Sample, bundle: ModelBundle) -> int:
    """Tokens of the encoded sample, image spans included, untruncated; reads no image."""
    return len(encode_sample(sample, bundle, 2**31 - 1, with_images=False)["input_ids"])


def collate(features: Sequence[dict[str, Any]], bundle: ModelBundle) -> dict[str, Any]:
    """Right-pad a batch (numpy arrays); images of all samples are concatenated in reading order.

    Packed features (with ``segment_ids``, see :mod:`mixcore.kit.packing`) get a 4-D boolean
    block-diagonal causal mask and their per-sample ``position_ids``, so each packed sample sees
    only itself and is rotated as if it were alone; plain features get a 2-D padding mask.
    """
    pad_id = bundle.tokenizer.pad_token_id
    longest = max(len(f["input_ids"]) for f in features)
    input_ids = np.full((len(features), longest), pad_id, dtype=np.int64)
    labels = np.full((len(features), longest), IGNORE_INDEX, dtype=np.int64)
    mask = np.zeros((len(features), longest), dtype=np.int64)
    packed = all("segment_ids" in f for f in features)
    segments = np.zeros((len(features), longest), dtype=np.int64)
    positions = np.zeros((len(features), longest), dtype=np.int64)
    for row, f in enumerate(features):
        n = len(f["input_ids"])
        input_ids[row, :n], labels[row, :n], mask[row, :n] = f["input_ids"], f["labels"], 1
        if packed:
            segments[row, :n], positions[row, :n] = f["segment_ids"], f["position_ids"]
    batch = {"input_ids": input_ids, "labels": labels, "attention_mask": mask}
    if packed:
        from mixcore.kit.packing import block_diagonal_causal_mask

        batch["attention_mask"] = block_diagonal_causal_mask(segments)
        batch["position_ids"] = positions
    images = [f["images"] for f in features if len(f.get("images", ()))]
    if images:
        batch["images"] = np.concatenate(images)
    return batch


def generate_answers(
    prompts: Sequence[Sample], bundle: ModelBundle, max_new_tokens: int
) -> list[str]:
    """Greedy answers to prompts (messages ending with a user turn), batched with left padding."""
    import paddle

    tokenizer, model = bundle.tokenizer, bundle.model
    budget = int(model.config.seq_length) - max_new_tokens
    encoded = [encode_sample(p, bundle, budget) for p in prompts]
    longest = max(len(f["input_ids"]) for f in encoded)
    ids = np.full((len(encoded), longest), tokenizer.pad_token_id, dtype=np.int64)
    mask = np.zeros((len(encoded), longest), dtype=np.int64)
    for row, f in enumerate(encoded):
        n = len(f["input_ids"])
        ids[row, longest - n :], mask[row, longest - n :] = f["input_ids"], 1
    images = [f["images"] for f in encoded if len(f["images"])]
    end_of_turn = tokenizer.convert_tokens_to_ids("<|im_end|>")
    with paddle.no_grad():
        new = model.generate_greedy(
            paddle.to_tensor(ids),
            images=paddle.to_tensor(np.concatenate(images)) if images else None,
            max_new_tokens=max_new_tokens,
            eos_token_id=end_of_turn,
            attention_mask=paddle.to_tensor(mask),
            tokenizer_vocab_size=len(tokenizer),
        ).numpy()
    answers = []
    stops = {end_of_turn, tokenizer.eos_token_id}
    for row in new.tolist():
        kept = []
        for token in row:
            if token in stops:
                break
            kept.append(token)
        answers.append(tokenizer.decode(kept).strip())
    return answers
