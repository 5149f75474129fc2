"""How Qwen-VL's prompts spell an image, for the toolkit's conversation encoder.

Everything generic (templates, labels, truncation, padding, packing, the decoding loop) is
:mod:`mixcore.kit`'s; what is Qwen-VL's own is the image span ``Picture N: <img>`` + one pad token
per resampler query + ``</img>\\n``, numbered from 1 in every message as Qwen-VL-Chat's
``from_list_format`` numbers them per query, and ``<|im_end|>`` as the end of a reply.
"""

from __future__ import annotations

from typing import Any

from mixcore.kit.conversation import ConversationEncoder, ImageSlot

END_OF_TURN = "<|im_end|>"


def conversation_encoder(tokenizer: Any, n_queries: int) -> ConversationEncoder:
    """The encoder for a Qwen-VL tokenizer whose resampler has ``n_queries`` queries."""

    def tokenize(text: str) -> list[int]:
        return tokenizer.encode_ids(text)

    newline = tuple(tokenize("\n"))
    span = tuple(tokenizer.image_span_ids(n_queries))

    def image_tokens(number: int) -> ImageSlot:
        prefix = tuple(tokenize(f"Picture {number}: "))
        return ImageSlot(prefix + span + newline, len(prefix), len(prefix) + len(span))

    return ConversationEncoder(tokenize, image_tokens, image_numbering="message")


def stop_ids(tokenizer: Any) -> tuple[int, ...]:
    """Tokens that end an answer: the end of a turn, and of the text."""
    return (tokenizer.convert_tokens_to_ids(END_OF_TURN), tokenizer.eos_token_id)
