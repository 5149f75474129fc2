"""The Qwen-VL tokenizer and the tiny offline vocabulary generator."""

from __future__ import annotations

import time
import unicodedata
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mixcore_qwen_vl.special_tokens import (
    ALL_SPECIAL_TOKENS,
    TINY_NUM_MERGEABLE_RANKS,
    image_placeholder,
    tokenizer_vocab_size,
)
from mixcore_qwen_vl.tokenization import QwenVLTokenizer, learn_merges, write_tiny_vocab
from paddlenlp.transformers.qwen.tokenizer import SPECIAL_TOKENS as QWEN_SPECIAL_TOKENS


def test_tiny_vocab_generation_is_fast_and_deterministic(tmp_path: Path) -> None:
    started = time.perf_counter()
    first = write_tiny_vocab(tmp_path / "a")
    elapsed = time.perf_counter() - started
    second = write_tiny_vocab(tmp_path / "b")
    assert elapsed < 1.0
    for name in ("qwen.tiktoken", "tokenizer_config.json"):
        assert (first / name).read_bytes() == (second / name).read_bytes()
    lines = (first / "qwen.tiktoken").read_text().splitlines()
    assert len(lines) == TINY_NUM_MERGEABLE_RANKS
    assert [int(line.split()[1]) for line in lines] == list(range(len(lines)))


def test_learned_merges_include_frequent_words() -> None:
    merges = learn_merges("the red circle and the red square and the red star " * 3, 12)
    assert b" red" in merges and b" the" in merges
    assert len(merges) == len(set(merges)) == 12
    with pytest.raises(ValueError, match="only supports"):
        learn_merges("ab", 5)


def test_special_tokens_keep_qwens_order_then_add_qwen_vl_tokens() -> None:
    assert ALL_SPECIAL_TOKENS[: len(QWEN_SPECIAL_TOKENS)] == tuple(QWEN_SPECIAL_TOKENS)
    assert ALL_SPECIAL_TOKENS[len(QWEN_SPECIAL_TOKENS) :] == (
        "<ref>",
        "</ref>",
        "<box>",
        "</box>",
        "<quad>",
        "</quad>",
        "<img>",
        "</img>",
        "<imgpad>",
    )


def test_tiny_tokenizer_special_ids(tokenizer: QwenVLTokenizer) -> None:
    assert len(tokenizer) == tokenizer_vocab_size(TINY_NUM_MERGEABLE_RANKS) == 729
    assert (tokenizer.img_start_id, tokenizer.img_end_id, tokenizer.img_pad_id) == (726, 727, 728)
    assert (tokenizer.ref_start_id, tokenizer.box_start_id, tokenizer.quad_end_id) == (
        720,
        722,
        725,
    )
    assert tokenizer.eod_id == tokenizer.pad_token_id == tokenizer.eos_token_id == 512
    assert tokenizer.convert_tokens_to_ids("<|im_start|>") == 513


def test_image_tags_are_single_tokens(tokenizer: QwenVLTokenizer) -> None:
    ids = tokenizer("Look: <img></img> and <ref>the star</ref><box>(1,2),(3,4)</box>")["input_ids"]
    for special in (726, 727, 720, 721, 722, 723):
        assert ids.count(special) == 1
    span = tokenizer(image_placeholder(4))["input_ids"]
    assert span == [726, 728, 728, 728, 728, 727] == tokenizer.image_span_ids(4)


def test_words_from_the_builtin_text_are_compact(tokenizer: QwenVLTokenizer) -> None:
    ids = tokenizer("What is the red circle")["input_ids"]
    assert [tokenizer.decode([i]) for i in ids] == ["What", " is", " the", " red", " circle"]


@pytest.mark.parametrize(
    "text",
    [
        "",
        "plain ascii",
        "日本語のテキスト",
        "emoji 🙂🚀 and ZWJ 👩‍🔬",
        "tabs\tand\nnewlines\r\n",
        "é",
    ],
)
def test_any_text_round_trips(tokenizer: QwenVLTokenizer, text: str) -> None:
    ids = tokenizer(text)["input_ids"]
    assert all(0 <= i < len(tokenizer) for i in ids)
    assert tokenizer.decode(ids) == text


@settings(max_examples=60, deadline=None)
@given(st.text())
def test_arbitrary_unicode_round_trips_after_nfc(
    shared_tokenizer: QwenVLTokenizer, text: str
) -> None:
    ids = shared_tokenizer(text)["input_ids"]
    # QWen normalises to NFC before encoding, like PaddleNLP's and Hugging Face's QWen.
    assert shared_tokenizer.decode(ids) == unicodedata.normalize("NFC", text)


def test_save_and_reload(tokenizer: QwenVLTokenizer, tmp_path: Path) -> None:
    tokenizer.save_pretrained(str(tmp_path))
    again = QwenVLTokenizer.from_pretrained(str(tmp_path))
    text = "A <img></img> red circle"
    assert again(text)["input_ids"] == tokenizer(text)["input_ids"]
    assert again.pad_token_id == 512


def test_padding_uses_endoftext(tokenizer: QwenVLTokenizer) -> None:
    batch = tokenizer(["red circle", "a"], padding=True)
    assert 512 in batch["input_ids"][1]
    assert batch["attention_mask"][1].count(0) == batch["input_ids"][1].count(512)


def test_unknown_special_tokens_cannot_be_added(tokenizer: QwenVLTokenizer) -> None:
    with pytest.raises(ValueError, match="fixed"):
        tokenizer.add_special_tokens({"additional_special_tokens": ["<new>"]})


@pytest.mark.parametrize(
    "text",
    [
        "What is in the picture? A red circle.",
        "<|im_start|>user\nHi<|im_end|>\n",
        "Picture 1: <img></img>\n<ref>the dog</ref><box>(1,2),(3,4)</box>",
        "cafe\u0301 na\u00efve \u00e9t\u00e9 \u4f60\u597d \U0001f600",  # NFC folds e + accent
        "",
        "  spaces\t\tand\nnewlines  ",
        "<|endoftext|>",
    ],
)
def test_fast_ids_equal_paddlenlps_encode(tokenizer: QwenVLTokenizer, text: str) -> None:
    assert tokenizer.encode_ids(text) == tokenizer.encode(text)["input_ids"]
