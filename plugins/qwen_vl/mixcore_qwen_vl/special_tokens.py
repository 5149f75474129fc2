"""Qwen-VL's special tokens and how their ids follow from the size of a vocabulary.

Kept free of heavy imports so that preprocessing code (and the plugin's entry module) can compute
image-token-aware lengths without importing PaddleNLP.

QWen places its special tokens right after the mergeable (BPE) ranks: ``<|endoftext|>``,
``<|im_start|>``, ``<|im_end|>``, 205 ``<|extra_N|>`` tokens, then Qwen-VL appends its nine
grounding and image tokens. With the published 151643-rank vocabulary this gives
``<img>`` = 151857, ``</img>`` = 151858 and ``<imgpad>`` = 151859.
"""

from __future__ import annotations

ENDOFTEXT = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
EXTRAS: tuple[str, ...] = tuple(f"<|extra_{i}|>" for i in range(205))

REF_START = "<ref>"
REF_END = "</ref>"
BOX_START = "<box>"
BOX_END = "</box>"
QUAD_START = "<quad>"
QUAD_END = "</quad>"
IMG_START = "<img>"
IMG_END = "</img>"
IMG_PAD = "<imgpad>"

QWEN_SPECIAL_TOKENS: tuple[str, ...] = (ENDOFTEXT, IM_START, IM_END, *EXTRAS)
VL_SPECIAL_TOKENS: tuple[str, ...] = (
    REF_START,
    REF_END,
    BOX_START,
    BOX_END,
    QUAD_START,
    QUAD_END,
    IMG_START,
    IMG_END,
    IMG_PAD,
)
ALL_SPECIAL_TOKENS: tuple[str, ...] = QWEN_SPECIAL_TOKENS + VL_SPECIAL_TOKENS

#: Mergeable ranks of the published QWen vocabulary (``qwen.tiktoken``).
QWEN_NUM_MERGEABLE_RANKS = 151643
#: The tiny generated vocabulary: 256 single bytes plus 256 merges. The tiny model preset derives
#: its special-token ids from this number, so the generator and the preset cannot drift apart.
TINY_NUM_MERGES = 256
TINY_NUM_MERGEABLE_RANKS = 256 + TINY_NUM_MERGES


def special_token_ids(num_mergeable_ranks: int) -> dict[str, int]:
    """Map every special token to its id for a vocabulary with ``num_mergeable_ranks`` BPE ranks."""
    return {token: num_mergeable_ranks + i for i, token in enumerate(ALL_SPECIAL_TOKENS)}


def tokenizer_vocab_size(num_mergeable_ranks: int) -> int:
    """Number of ids the tokenizer can produce (the model's embedding table may be larger)."""
    return num_mergeable_ranks + len(ALL_SPECIAL_TOKENS)


def image_placeholder(n_queries: int) -> str:
    """Text of one image span: ``<img>``, ``n_queries`` pad tokens the model fills with image
    features, then ``</img>``."""
    return IMG_START + IMG_PAD * n_queries + IMG_END
