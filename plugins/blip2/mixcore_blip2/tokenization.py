"""Tokenizers for the tiny BLIP-2 presets, generated into a folder and loaded from its files.

A tiny model needs a tiny vocabulary, and tests and benchmarks may not download one, so each
language-model family gets a tokenizer trained here on a small built-in corpus: the words of
the synthetic shapes data (shapes, colours, sizes, positions, its questions and captions), the
BLIP-2 prompt words (``Question:``, ``Answer:``, ``a picture of``) and common English. Both can
encode any text: the OPT one is byte-level BPE, the T5 one falls back to bytes. Generation is
deterministic (the same files byte for byte) and takes well under a second.

* OPT (:func:`write_tiny_opt_tokenizer`): ``vocab.json`` + ``merges.txt`` for PaddleNLP's
  ``GPTTokenizer`` (PaddleNLP has no OPT tokenizer class; its OPT documentation uses this one),
  with OPT's ids: ``<s>`` 0, ``<pad>`` 1, ``</s>`` 2 (bos and eos, as Hugging Face's OPT, which
  starts every prompt with ``</s>``), ``<unk>`` 3, then the 256 bytes, the merges and
  ``<image>`` last.
* T5 (:func:`write_tiny_t5_tokenizer`): a sentencepiece BPE model (``spiece.model``) for
  PaddleNLP's ``T5Tokenizer``: ``<pad>`` 0, ``</s>`` 1 (appended to every encoded text, as T5
  does), ``<unk>`` 2, ``<image>`` 3, the 256 byte pieces, then the learned pieces; no
  ``<extra_id_N>`` sentinels.

``<image>`` (:data:`IMAGE_TOKEN`) is the query placeholder: a special token, one id.
"""

from __future__ import annotations

import io
import json
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from itertools import pairwise
from pathlib import Path
from typing import Any

from mixcore.api.errors import UsageError
from mixcore.kit import shapes_vocabulary as vocabulary

__all__ = [
    "FAMILIES",
    "IMAGE_TOKEN",
    "TINY_OPT_VOCAB_SIZE",
    "TINY_T5_VOCAB_SIZE",
    "image_token_id",
    "load_tokenizer",
    "tiny_corpus",
    "tiny_vocab_size",
    "write_tiny_opt_tokenizer",
    "write_tiny_t5_tokenizer",
    "write_tiny_tokenizer",
]

#: The placeholder each query output replaces (one id in both tokenizers).
IMAGE_TOKEN = "<image>"
FAMILIES = ("opt", "t5")
#: The files each family's tokenizer is read from.
TOKENIZER_FILES = {"opt": ("vocab.json", "merges.txt"), "t5": ("spiece.model",)}
#: Ids of the generated tokenizers, ``len(tokenizer)``: size a tiny model's vocabulary by these.
TINY_OPT_VOCAB_SIZE = 768
TINY_T5_VOCAB_SIZE = 768

_OPT_SPECIALS = ("<s>", "<pad>", "</s>", "<unk>")
_T5_SPECIALS = {"pad": "<pad>", "eos": "</s>", "unk": "<unk>"}
_CONFIG_FILE = "tokenizer_config.json"
_SPECIAL_TOKENS_FILE = "special_tokens_map.json"

# --- the corpus ------------------------------------------------------------------------------

#: The generated shapes data's words come from :mod:`mixcore.kit.shapes_vocabulary`.
_PROMPTS = ("Question: {q} Answer:", "Question: {q} Short answer:", "a picture of", "A picture of")

#: Common English, so that other prompts and captions stay a few tokens a word.
_ENGLISH = """
the be to of and a in that have I it for not on with he as you do at this but his by from they
we say her she or an will my one all would there their what so up out if about who get which go
me when make can like time no just him know take people into year your good some could them see
other than then now look only come its over think also back after use two how our work first
well way even new want because any these give day most us is are was were has had been being
image photo picture shows showing show there here object objects colour color colors shape
shapes size sizes position positions where which what how many much big little center middle
above below under near next beside between behind front side corner edge background white black
orange purple pink brown gray grey dark light bright round flat tall short long wide narrow one
two three four five six seven eight nine ten yes no true false answer question describe caption
short brief sentence word words please tell name color? shape? man woman person dog cat car tree
house street table chair room sky water grass road sign people group sitting standing walking
holding looking playing riding red green blue yellow small large left right top bottom
"""
_NUMBERS = " ".join(str(n) for n in range(0, 21))
_PUNCTUATION = ". , ? ! : ; ' \" ( ) - / % & + = # @ * [ ] < >"


def _synthetic_sentences() -> Iterator[str]:
    answers = vocabulary.answers()
    for question in vocabulary.QUESTIONS:
        yield question
        for answer in answers:
            yield f"Question: {question} Answer: {answer}"
            yield answer  # an answer on its own (a reply tokenized alone has no leading space)
            yield f"Answer: {answer}"
    for shape in vocabulary.SHAPES:
        for color in vocabulary.COLORS:
            for size in vocabulary.SIZES:
                for side in vocabulary.SIDES:
                    yield f"A {size} {color} {shape} {side}."
                    yield f"There is a {color} {shape} {side} of the picture."
                    yield f"a picture of a {size} {color} {shape}"


def tiny_corpus() -> list[str]:
    """The training text of both tiny tokenizers, in a fixed order: the synthetic data's
    sentences (which dominate the counts, so their words become single tokens), the prompt
    forms, common English words, numbers and punctuation."""
    lines = list(_synthetic_sentences())
    words = _ENGLISH.split()
    lines += [prompt.format(q=q) for prompt in _PROMPTS for q in vocabulary.QUESTIONS]
    capitalised = [word.capitalize() for word in words]
    for chunk in range(0, len(words), 12):  # twice: common words should end up whole
        lines += [" ".join(words[chunk : chunk + 12]), " ".join(capitalised[chunk : chunk + 12])]
        lines += [" ".join(words[chunk : chunk + 12]), " ".join(capitalised[chunk : chunk + 12])]
    lines += capitalised
    lines += [_NUMBERS, _PUNCTUATION]
    return lines


# --- OPT: byte-level BPE -----------------------------------------------------------------------

#: GPT-2's split of text into chunks before BPE (PaddleNLP's GPTTokenizer uses the Unicode
#: form of it; the corpus is ASCII, where the two agree).
_CHUNKS = re.compile(
    r"'s|'t|'re|'ve|'m|'ll|'d| ?[A-Za-z]+| ?[0-9]+| ?[^\sA-Za-z0-9]+|\s+(?!\S)|\s+"
)


def byte_symbols() -> list[str]:
    """GPT-2's printable stand-in for each byte value 0-255: printable Latin-1 characters
    stand for themselves, the others are moved to code points from 256 up, in byte order."""
    kept = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    symbols: dict[int, str] = {b: chr(b) for b in kept}
    moved = 0
    for b in range(256):
        if b not in symbols:
            symbols[b] = chr(256 + moved)
            moved += 1
    return [symbols[b] for b in range(256)]


def _train_bpe(lines: Iterable[str], new_tokens: int) -> list[tuple[str, str]]:
    """Byte-pair merges learned greedily from ``lines`` until they make ``new_tokens``
    distinct tokens: each step merges the most frequent adjacent pair (ties: the smallest
    pair), as BPE is trained. Fewer when the corpus runs out of pairs."""
    to_symbol = byte_symbols()
    counts: Counter[tuple[str, ...]] = Counter()
    for line in lines:
        for chunk in _CHUNKS.findall(line):
            counts[tuple(to_symbol[b] for b in chunk.encode("utf-8"))] += 1
    words = list(counts.items())
    pairs: Counter[tuple[str, str]] = Counter()
    where: dict[tuple[str, str], set[int]] = {}  # pair -> indices of the words holding it
    for index, (word, count) in enumerate(words):
        for pair in pairwise(word):
            pairs[pair] += count
            where.setdefault(pair, set()).add(index)
    learned: list[tuple[str, str]] = []
    made: set[str] = set(to_symbol)
    while len(made) - 256 < new_tokens and pairs:
        best = min(pairs, key=lambda pair: (-pairs[pair], pair))
        learned.append(best)
        made.add(best[0] + best[1])
        for index in sorted(where.pop(best)):
            word, count = words[index]
            for pair in pairwise(word):
                pairs[pair] -= count
                if pairs[pair] <= 0:
                    del pairs[pair]
            merged = _merge(word, best)
            words[index] = (merged, count)
            for pair in pairwise(merged):
                pairs[pair] += count
                where.setdefault(pair, set()).add(index)
    return learned


def _merge(word: tuple[str, ...], pair: tuple[str, str]) -> tuple[str, ...]:
    if len(word) < 2:
        return word
    out: list[str] = []
    i = 0
    while i < len(word):
        if i + 1 < len(word) and word[i] == pair[0] and word[i + 1] == pair[1]:
            out.append(word[i] + word[i + 1])
            i += 2
        else:
            out.append(word[i])
            i += 1
    return tuple(out)


def write_tiny_opt_tokenizer(folder: str | Path) -> Path:
    """Write the tiny OPT tokenizer (``vocab.json``, ``merges.txt``, ``tokenizer_config.json``,
    ``special_tokens_map.json``) into ``folder`` (created if needed); returns the folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    merges = _train_bpe(tiny_corpus(), TINY_OPT_VOCAB_SIZE - len(_OPT_SPECIALS) - 256 - 1)
    vocab: dict[str, int] = {}
    for token in (*_OPT_SPECIALS, *byte_symbols(), *(a + b for a, b in merges), IMAGE_TOKEN):
        vocab.setdefault(token, len(vocab))  # two merges may spell one token
    if len(vocab) != TINY_OPT_VOCAB_SIZE:  # the corpus is fixed: only an edit to it gets here
        raise RuntimeError(f"the tiny corpus makes {len(vocab)} tokens, not {TINY_OPT_VOCAB_SIZE}")
    _write_json(folder / "vocab.json", vocab)
    merge_lines = "".join(f"{a} {b}\n" for a, b in merges)
    (folder / "merges.txt").write_text("#version: 0.2\n" + merge_lines, encoding="utf-8")
    specials = {
        "bos_token": "</s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "pad_token": "<pad>",
        "additional_special_tokens": [IMAGE_TOKEN],
    }
    config = {
        "tokenizer_class": "GPTTokenizer",
        **specials,
        "add_bos_token": True,
        "add_prefix_space": False,
        "errors": "replace",
        "model_max_length": 2048,
        "padding_side": "right",
    }
    _write_json(folder / _CONFIG_FILE, config)
    _write_json(folder / _SPECIAL_TOKENS_FILE, specials)
    return folder


# --- T5: sentencepiece ---------------------------------------------------------------------------


def write_tiny_t5_tokenizer(folder: str | Path) -> Path:
    """Write the tiny T5 tokenizer (``spiece.model``, ``tokenizer_config.json``,
    ``special_tokens_map.json``) into ``folder`` (created if needed); returns the folder."""
    import sentencepiece as spm

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(tiny_corpus()),
        model_writer=model,
        model_type="bpe",
        vocab_size=TINY_T5_VOCAB_SIZE,
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        pad_piece=_T5_SPECIALS["pad"],
        eos_piece=_T5_SPECIALS["eos"],
        unk_piece=_T5_SPECIALS["unk"],
        user_defined_symbols=[IMAGE_TOKEN],
        byte_fallback=True,
        character_coverage=1.0,
        normalization_rule_name="identity",
        split_digits=True,
        num_threads=1,
        shuffle_input_sentence=False,
        minloglevel=2,
    )
    (folder / "spiece.model").write_bytes(model.getvalue())
    specials = {
        "eos_token": _T5_SPECIALS["eos"],
        "unk_token": _T5_SPECIALS["unk"],
        "pad_token": _T5_SPECIALS["pad"],
        "additional_special_tokens": [IMAGE_TOKEN],
    }
    config = {
        "tokenizer_class": "T5Tokenizer",
        **specials,
        "extra_ids": 0,
        "do_lower_case": False,
        "remove_space": True,
        "keep_accents": True,
        "model_max_length": 512,
        "padding_side": "right",
    }
    _write_json(folder / _CONFIG_FILE, config)
    _write_json(folder / _SPECIAL_TOKENS_FILE, specials)
    return folder


# --- either ------------------------------------------------------------------------------------


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")


def _check_family(family: str) -> None:
    if family not in FAMILIES:
        raise UsageError(f"unknown language-model family {family!r}; known: {', '.join(FAMILIES)}")


def write_tiny_tokenizer(folder: str | Path, family: str) -> Path:
    """:func:`write_tiny_opt_tokenizer` or :func:`write_tiny_t5_tokenizer` by ``family``."""
    _check_family(family)
    writer = write_tiny_opt_tokenizer if family == "opt" else write_tiny_t5_tokenizer
    return writer(folder)


def tiny_vocab_size(family: str) -> int:
    """How many ids the tiny tokenizer of ``family`` has (``len(tokenizer)``)."""
    _check_family(family)
    return TINY_OPT_VOCAB_SIZE if family == "opt" else TINY_T5_VOCAB_SIZE


def load_tokenizer(folder: str | Path, family: str) -> Any:
    """The PaddleNLP tokenizer of ``family`` ("opt": ``GPTTokenizer``, "t5": ``T5Tokenizer``)
    from the files in ``folder`` (nothing is downloaded)."""
    _check_family(family)
    folder = Path(folder)
    if not folder.is_dir():
        raise UsageError(f"{folder}: no such tokenizer folder")
    missing = [name for name in TOKENIZER_FILES[family] if not (folder / name).is_file()]
    if missing:
        # PaddleNLP would take the folder for a hub name and try to download; mixcore never does.
        raise UsageError(
            f"{folder} has no {' or '.join(missing)}: the {family.upper()} tokenizer's files "
            f"({', '.join(TOKENIZER_FILES[family])}) must be in the checkpoint folder"
        )
    from paddlenlp.transformers import GPTTokenizer, T5Tokenizer

    tokenizer_class = GPTTokenizer if family == "opt" else T5Tokenizer
    return tokenizer_class.from_pretrained(str(folder))


def image_token_id(tokenizer: Any) -> int:
    """The id of :data:`IMAGE_TOKEN` in ``tokenizer``; a :class:`UsageError` when it has none."""
    token_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    if token_id is None or token_id == tokenizer.unk_token_id:
        raise UsageError(f"the tokenizer has no {IMAGE_TOKEN} token (BLIP-2's query placeholder)")
    return int(token_id)
