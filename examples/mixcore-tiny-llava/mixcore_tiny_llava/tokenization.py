"""The tiny preset's tokenizer, generated: a sentencepiece BPE model trained in milliseconds on a
small built-in corpus (never downloaded), loaded by PaddleNLP's ``LlamaTokenizer``, plus the
image token; and the model's default chat template.

Byte fallback spells any character the corpus lacks as UTF-8 bytes, and sentencepiece's
normaliser is off (identity rules, no whitespace folding, no dummy prefix), so every text
encodes and decodes back exactly, including segments tokenized one at a time.
"""

from __future__ import annotations

import io
import string
import tempfile
from pathlib import Path

from paddlenlp.transformers import LlamaTokenizer

#: The token whose run of embeddings the image features replace (added to the vocabulary).
IMAGE_TOKEN = "<image_pad>"
#: Pieces of the generated sentencepiece model (ids 0-3 are unk, <s>, </s>, <pad>).
VOCAB_SIZE = 512

#: A LLaVA-1.5-style layout in PaddleNLP's chat-template form. Each reply is followed by
#: ``</s>``, which the conversation encoder adds (the template cannot spell it in text).
CHAT_TEMPLATE = {
    "system": "{% if system %}{{system}} {% endif %}",
    "conversation": ["USER: {{user}} ASSISTANT:", " {{bot}}"],
    "query": "USER: {{query}} ASSISTANT:",
}

#: What the tokenizer learns from: a chat layout and the words of simple picture questions.
_QUESTIONS = (
    "What shape is in the picture?",
    "What color is the shape?",
    "Is the shape small or large?",
    "Where is the shape in the picture: left, right, top or bottom?",
    "Describe the image. How many are there? Which one is it? Who is this?",
)
_ANSWERS = (
    *("circle", "square", "triangle", "diamond", "red", "green", "blue", "yellow"),
    *("small", "large", "left", "right", "top", "bottom", "yes", "no", "one", "two", "three"),
)


def _corpus() -> list[str]:
    lines = [f"USER: {q} ASSISTANT: {a}" for q in _QUESTIONS for a in _ANSWERS]
    return [*lines, string.printable.strip()]


def write_sentencepiece_model(path: str | Path) -> Path:
    """Train the tiny sentencepiece model (deterministic, well under a second) into ``path``."""
    import sentencepiece as spm

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_corpus()),
        model_writer=model,
        model_type="bpe",
        vocab_size=VOCAB_SIZE,
        byte_fallback=True,
        character_coverage=1.0,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        add_dummy_prefix=False,
        split_digits=True,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=3,
        num_threads=1,
        minloglevel=2,
    )
    path = Path(path)
    path.write_bytes(model.getvalue())
    return path


def tiny_tokenizer() -> LlamaTokenizer:
    """A ``LlamaTokenizer`` over a freshly generated model, with :data:`IMAGE_TOKEN` added as
    id :data:`VOCAB_SIZE`. The model file goes to a new temporary folder (a few KiB), which
    the tokenizer reads again when it is saved."""
    folder = Path(tempfile.mkdtemp(prefix="mixcore-tiny-llava-tokenizer-"))
    spm_file = write_sentencepiece_model(folder / LlamaTokenizer.resource_files_names["vocab_file"])
    tokenizer = LlamaTokenizer(vocab_file=str(spm_file), pad_token="<pad>")
    tokenizer.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]})
    return tokenizer
