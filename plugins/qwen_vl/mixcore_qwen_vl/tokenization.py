"""Qwen-VL's tokenizer (PaddleNLP's QWen tokenizer plus the image and grounding tokens) and a
generator for a tiny offline vocabulary in the same tiktoken format.
"""

from __future__ import annotations

import base64
import itertools
import json
import unicodedata
from collections import Counter
from pathlib import Path
from typing import Any

import regex
import tiktoken
from paddlenlp.transformers.qwen.tokenizer import PAT_STR, QWenTokenizer
from paddlenlp.transformers.tokenizer_utils_base import AddedToken

from mixcore_qwen_vl.special_tokens import (
    BOX_END,
    BOX_START,
    ENDOFTEXT,
    IMG_END,
    IMG_PAD,
    IMG_START,
    QUAD_END,
    QUAD_START,
    REF_END,
    REF_START,
    TINY_NUM_MERGES,
    image_placeholder,
    special_token_ids,
)

VOCAB_FILE_NAME = "qwen.tiktoken"
TOKENIZER_CONFIG_NAME = "tokenizer_config.json"


class QwenVLTokenizer(QWenTokenizer):
    """QWen's byte-level BPE tokenizer with Qwen-VL's nine extra special tokens.

    The extra tokens (``<ref>``, ``</ref>``, ``<box>``, ``</box>``, ``<quad>``, ``</quad>``,
    ``<img>``, ``</img>``, ``<imgpad>``) follow QWen's own special tokens, as in Hugging Face
    Qwen-VL, so the published vocabulary gives ``<img>`` = 151857. Special tokens written in
    text encode as single ids. QWen has no pad token: ``<|endoftext|>`` pads and ends text.
    """

    def __init__(
        self,
        vocab_file: str,
        errors: str = "replace",
        pad_token: str = ENDOFTEXT,
        eos_token: str = ENDOFTEXT,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            vocab_file, errors=errors, pad_token=pad_token, eos_token=eos_token, **kwargs
        )
        # The parent builds its encoding from QWen's fixed special-token list; rebuild it with
        # the Qwen-VL tokens appended (same ids for the shared prefix).
        self.special_tokens = special_token_ids(len(self.mergeable_ranks))
        self.tokenizer = tiktoken.Encoding(
            "QwenVL",
            pat_str=PAT_STR,
            mergeable_ranks=self.mergeable_ranks,
            special_tokens=self.special_tokens,
        )
        self.decoder = {rank: token for token, rank in self.mergeable_ranks.items()}
        self.decoder.update({rank: token for token, rank in self.special_tokens.items()})
        self.eod_id = self.special_tokens[ENDOFTEXT]

    def _add_tokens(self, new_tokens: list[str] | list[AddedToken], special_tokens: bool = False):
        # PaddleNLP calls this for every special token attribute; the vocabulary is fixed, so
        # only tokens it already knows are accepted.
        for token in new_tokens:
            surface = token.content if isinstance(token, AddedToken) else token
            if surface not in self.special_tokens:
                raise ValueError(f"cannot add token {surface!r}: the QWen vocabulary is fixed")
        return 0

    @property
    def img_start_id(self) -> int:
        return self.special_tokens[IMG_START]

    @property
    def img_end_id(self) -> int:
        return self.special_tokens[IMG_END]

    @property
    def img_pad_id(self) -> int:
        return self.special_tokens[IMG_PAD]

    @property
    def ref_start_id(self) -> int:
        return self.special_tokens[REF_START]

    @property
    def ref_end_id(self) -> int:
        return self.special_tokens[REF_END]

    @property
    def box_start_id(self) -> int:
        return self.special_tokens[BOX_START]

    @property
    def box_end_id(self) -> int:
        return self.special_tokens[BOX_END]

    @property
    def quad_start_id(self) -> int:
        return self.special_tokens[QUAD_START]

    @property
    def quad_end_id(self) -> int:
        return self.special_tokens[QUAD_END]

    def encode_ids(self, text: str) -> list[int]:
        """The ids ``encode(text)["input_ids"]`` gives, straight from tiktoken: PaddleNLP's
        wrapper (ids to token bytes and back, ``prepare_for_model``) took half the time of
        measuring a sample. Special tokens written in the text are single ids, as there."""
        return self.tokenizer.encode(
            unicodedata.normalize("NFC", text), allowed_special="all", disallowed_special=()
        )

    def image_placeholder(self, n_queries: int) -> str:
        """Text of one image span (``<img>``, ``n_queries`` x ``<imgpad>``, ``</img>``)."""
        return image_placeholder(n_queries)

    def image_span_ids(self, n_queries: int) -> list[int]:
        """Ids of one image span; the model writes the image's features over the pad ids."""
        return [self.img_start_id, *([self.img_pad_id] * n_queries), self.img_end_id]


# A small English text about coloured shapes and questions on pictures. The tiny vocabulary's
# merges are learned from it, so the words the tests and synthetic data use become few tokens.
_TINY_CORPUS = """
What is in the picture? The picture shows a red circle on a white background.
What colour is the square? The square is blue. What shape is green? The green shape is a triangle.
Describe the image. There is a small yellow star next to a large purple square.
How many circles are there? There are two circles and one triangle in the image.
Is the circle above the square? Yes, the red circle is above the blue square.
Where is the triangle? The triangle is to the left of the circle, near the bottom.
The orange rectangle is below the black line. A grey ellipse is at the top right corner.
Which shape is the largest? The largest shape is the brown hexagon in the middle.
Count the stars: one star, two stars, three stars. The stars are pink and white.
user: What do you see? assistant: I see a cyan diamond and a magenta heart.
system: You are a helpful assistant that describes pictures of simple shapes.
Question: what colour is the background? Answer: the background is white.
Caption: a red circle, a green triangle and a blue square drawn on a canvas.
The small shapes are red, green and blue; the big shapes are yellow, orange and purple.
Please answer with one word. Red. Blue. Green. Yellow. Circle. Square. Triangle. Star.
The image has 3 shapes, 2 colours and 1 line. Left, right, top, bottom, center, middle.
Is there a dog in this photo? No, there is no dog, only shapes and colours.
"""


def _pretokenize(text: str) -> Counter[bytes]:
    """Split text exactly as QWen's tokenizer does before BPE, counting each piece."""
    return Counter(piece.encode("utf-8") for piece in regex.findall(PAT_STR, text))


def learn_merges(text: str, num_merges: int) -> list[bytes]:
    """Learn ``num_merges`` byte-pair merges from ``text``, deterministically.

    Classic BPE: repeatedly merge the most frequent adjacent pair (ties broken by the pair's
    bytes) and record each new token once.
    """
    words: Counter[tuple[bytes, ...]] = Counter()
    for piece, count in _pretokenize(text).items():
        words[tuple(bytes([b]) for b in piece)] += count
    known = {bytes([b]) for b in range(256)}
    merges: list[bytes] = []
    while len(merges) < num_merges:
        pairs: Counter[tuple[bytes, bytes]] = Counter()
        for word, count in words.items():
            for pair in itertools.pairwise(word):
                pairs[pair] += count
        if not pairs:
            raise ValueError(f"text only supports {len(merges)} merges, {num_merges} requested")
        best = min(pairs, key=lambda pair: (-pairs[pair], pair))
        joined = best[0] + best[1]
        merged_words: Counter[tuple[bytes, ...]] = Counter()
        for word, count in words.items():
            merged_words[_merge_pair(word, best, joined)] += count
        words = merged_words
        if joined not in known:
            known.add(joined)
            merges.append(joined)
    return merges


def _merge_pair(
    word: tuple[bytes, ...], pair: tuple[bytes, bytes], joined: bytes
) -> tuple[bytes, ...]:
    out: list[bytes] = []
    i = 0
    while i < len(word):
        if i + 1 < len(word) and (word[i], word[i + 1]) == pair:
            out.append(joined)
            i += 2
        else:
            out.append(word[i])
            i += 1
    return tuple(out)


def write_tiny_vocab(folder: str | Path) -> Path:
    """Write a tiny QWen-format tokenizer (``qwen.tiktoken`` + ``tokenizer_config.json``).

    256 single bytes (so any text encodes) then :data:`TINY_NUM_MERGES` merges learned from a
    built-in English text; identical bytes on every call. Load it offline with
    ``QwenVLTokenizer.from_pretrained(folder)``. Returns the folder.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    ranks = [bytes([b]) for b in range(256)] + learn_merges(_TINY_CORPUS, TINY_NUM_MERGES)
    lines = [
        f"{base64.b64encode(token).decode('ascii')} {rank}" for rank, token in enumerate(ranks)
    ]
    (folder / VOCAB_FILE_NAME).write_text("\n".join(lines) + "\n", encoding="utf-8")
    config = {"tokenizer_class": QwenVLTokenizer.__name__, "model_max_length": 8192}
    (folder / TOKENIZER_CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
    return folder
