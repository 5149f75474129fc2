"""Qwen-VL on the toolkit: how its prompts spell an image, and its batches and answers.

Everything generic (templates, labels, truncation, padding, packing, the decoding loop) is
:mod:`mixcore.kit`'s; what is Qwen-VL's own is the image span ``Picture N: <img>`` + one pad token
per resampler query + ``</img>\\n``, numbered from 1 in every message as Qwen-VL-Chat's
``from_list_format`` numbers them per query, and ``<|im_end|>`` as the end of a reply.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from mixcore.api import ModelBundle, Sample
from mixcore.kit.collation import left_pad, pad_batch
from mixcore.kit.conversation import ConversationEncoder, ImageSlot
from mixcore.kit.generation import CausalLMStep, GenerationConfig, generate
from mixcore.kit.weights import parameter_dtype

END_OF_TURN = "<|im_end|>"


def conversation_encoder(tokenizer: Any, n_queries: int) -> ConversationEncoder:
    """The encoder for a Qwen-VL tokenizer whose resampler has ``n_queries`` queries."""

    def tokenize(text: str) -> list[int]:
        return tokenizer.encode(text)["input_ids"]

    newline = tuple(tokenize("\n"))
    span = tuple(tokenizer.image_span_ids(n_queries))

    def image_tokens(number: int) -> ImageSlot:
        prefix = tuple(tokenize(f"Picture {number}: "))
        return ImageSlot(prefix + span + newline, len(prefix), len(prefix) + len(span))

    return ConversationEncoder(tokenize, image_tokens, image_numbering="message")


def _encoder(bundle: ModelBundle) -> ConversationEncoder:
    encoder = bundle.extras.get("encoder")
    if encoder is None:
        encoder = conversation_encoder(bundle.tokenizer, bundle.model.config.n_queries)
        bundle.extras["encoder"] = encoder
    return encoder


def encode_sample(
    sample: Sample, bundle: ModelBundle, max_length: int, *, with_images: bool = True
) -> dict[str, Any]:
    """Features of one sample: ``input_ids``, pre-shifted ``labels`` and ``images``
    (float32 ``[n, 3, size, size]``, only the images whose span survived truncation)."""
    encoded = _encoder(bundle).encode(sample, max_length)
    features = encoded.arrays()
    if with_images:
        features["images"] = bundle.processor.sample_images(sample, len(encoded.image_spans))
    return features


def sample_length(sample: Sample, bundle: ModelBundle) -> int:
    """Tokens of the encoded sample, image spans included, untruncated; reads no image."""
    return _encoder(bundle).length(sample)


def collate(features: Sequence[dict[str, Any]], bundle: ModelBundle) -> dict[str, Any]:
    """Right-padded numpy batch; images of all samples concatenated in reading order."""
    return pad_batch(features, bundle.tokenizer.pad_token_id)


def generate_answers(
    prompts: Sequence[Sample], bundle: ModelBundle, max_new_tokens: int, num_beams: int = 1
) -> list[str]:
    """Answers to prompts (messages ending with a user turn), batched with left padding."""
    import numpy as np
    import paddle

    tokenizer, model = bundle.tokenizer, bundle.model
    budget = int(model.config.seq_length) - max_new_tokens
    encoded = [encode_sample(p, bundle, budget) for p in prompts]
    padded = left_pad([f["input_ids"] for f in encoded], tokenizer.pad_token_id)
    images = [f["images"] for f in encoded if len(f["images"])]
    config = GenerationConfig(
        max_new_tokens=max_new_tokens,
        stop_ids=(tokenizer.convert_tokens_to_ids(END_OF_TURN), tokenizer.eos_token_id),
        num_beams=num_beams,
        vocab_size=len(tokenizer),
    )
    with paddle.no_grad():
        embeds = model.embed_inputs(
            paddle.to_tensor(padded.input_ids),
            paddle.to_tensor(np.concatenate(images)).astype(parameter_dtype(model))
            if images
            else None,
        )
        new = generate(CausalLMStep(model.llm), embeds, padded.attention_mask, config)
    return [tokenizer.decode(tokens).strip() for tokens in new]
