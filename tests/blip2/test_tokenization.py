"""The tiny BLIP-2 tokenizers: generated deterministically, loaded by PaddleNLP from files."""

from __future__ import annotations

import json
from itertools import product
from pathlib import Path

import pytest
from mixcore_blip2 import tokenization
from mixcore_blip2.tokenization import (
    IMAGE_TOKEN,
    image_token_id,
    load_tokenizer,
    tiny_vocab_size,
    write_tiny_opt_tokenizer,
    write_tiny_t5_tokenizer,
    write_tiny_tokenizer,
)
from mixcore_datasets import synthetic

from mixcore.api.errors import UsageError

FAMILIES = ("opt", "t5")
UNICODE = "Ünïcödé: naïve café, 東京 🙂 — ½ ∑ \u200b done"


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("tokenizers")
    return {
        family: load_tokenizer(write_tiny_tokenizer(root / family, family), family)
        for family in FAMILIES
    }


def _texts() -> list[str]:
    specs = [
        synthetic.ShapeSpec(shape, color, size, position)
        for shape, color, size, position in product(
            synthetic.SHAPES, synthetic.COLORS, synthetic.SIZES, synthetic.POSITIONS
        )
    ]
    questions = [question for question, _ in synthetic.QUESTIONS.values()]
    texts = [caption for spec in specs for caption in synthetic.captions(spec)]
    texts += [f"Question: {q} Answer:" for q in questions]
    texts += ["a picture of", "Question: What is in the picture? Short answer: a blue circle"]
    return texts


@pytest.mark.parametrize("writer", [write_tiny_opt_tokenizer, write_tiny_t5_tokenizer])
def test_generation_is_deterministic(tmp_path, writer):
    first = _files(writer(tmp_path / "a"))
    second = _files(writer(tmp_path / "b"))
    assert first == second
    assert first


def test_opt_files_are_byte_level_bpe_with_versioned_merges(tmp_path):
    folder = write_tiny_opt_tokenizer(tmp_path)
    assert {"vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json"} <= set(
        _files(folder)
    )
    merges = (folder / "merges.txt").read_text(encoding="utf-8").split("\n")
    assert merges[0] == "#version: 0.2"
    assert merges[-1] == ""  # PaddleNLP drops the last line: it must be the empty one
    assert all(len(line.split()) == 2 for line in merges[1:-1])


def test_byte_symbols_are_gpt2s(tmp_path):
    from paddlenlp.transformers.gpt.tokenizer import bytes_to_unicode

    expected = bytes_to_unicode()
    assert tokenization.byte_symbols() == [expected[b] for b in range(256)]


def test_tokenizers_load_from_files_as_the_paddlenlp_classes(tokenizers):
    from paddlenlp.transformers import GPTTokenizer, T5Tokenizer

    assert type(tokenizers["opt"]) is GPTTokenizer
    assert type(tokenizers["t5"]) is T5Tokenizer


@pytest.mark.parametrize("family", FAMILIES)
def test_auto_tokenizer_picks_the_same_class(tmp_path, family, tokenizers):
    from paddlenlp.transformers import AutoTokenizer

    loaded = AutoTokenizer.from_pretrained(str(write_tiny_tokenizer(tmp_path, family)))
    assert type(loaded) is type(tokenizers[family])


def test_opt_special_ids_are_opts(tokenizers):
    tok = tokenizers["opt"]
    assert tok.convert_tokens_to_ids(["<s>", "<pad>", "</s>", "<unk>"]) == [0, 1, 2, 3]
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id, tok.unk_token_id) == (1, 2, 2, 3)
    assert tok("a red circle")["input_ids"][0] == 2  # OPT prompts start with </s>
    assert tok("a red circle", add_special_tokens=False)["input_ids"][0] != 2


def test_t5_special_ids_are_t5s(tokenizers):
    tok = tokenizers["t5"]
    assert (tok.pad_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2)
    assert tok("a red circle")["input_ids"][-1] == 1  # T5 ends every text with </s>
    assert not any(token.startswith("<extra_id_") for token in tok.get_vocab())


@pytest.mark.parametrize("family", FAMILIES)
def test_vocabulary_size_is_the_published_constant(tokenizers, family):
    assert len(tokenizers[family]) == tiny_vocab_size(family)
    assert tokenizers[family].vocab_size == tiny_vocab_size(family)
    assert 256 < tiny_vocab_size(family) <= 1024


@pytest.mark.parametrize("family", FAMILIES)
def test_image_token_is_one_special_id(tokenizers, family):
    tok = tokenizers[family]
    image = image_token_id(tok)
    assert IMAGE_TOKEN in tok.all_special_tokens
    ids = tok(
        IMAGE_TOKEN * 4 + "Question: What color is the shape? Answer:", add_special_tokens=False
    )
    assert ids["input_ids"][:4] == [image] * 4
    assert image not in ids["input_ids"][4:]
    assert image_token_id(tok) < len(tok)


@pytest.mark.parametrize("family", FAMILIES)
def test_synthetic_captions_and_questions_round_trip(tokenizers, family):
    tok = tokenizers[family]
    for text in _texts():
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert tok.unk_token_id not in ids, text
        assert tok.decode(ids, skip_special_tokens=True) == text


@pytest.mark.parametrize("family", FAMILIES)
def test_synthetic_words_are_single_tokens(tokenizers, family):
    tok = tokenizers[family]
    answers = [*synthetic.SHAPES, *synthetic.COLORS, *synthetic.SIZES, *synthetic.POSITIONS]
    for word in answers:
        assert len(tok(word, add_special_tokens=False)["input_ids"]) == 1, word
        assert len(tok("Answer: " + word, add_special_tokens=False)["input_ids"]) == 3, word
    for text in _texts():
        ids = tok(text, add_special_tokens=False)["input_ids"]
        words = len(text.split())
        assert len(ids) <= 2 * words, (text, tok.convert_ids_to_tokens(ids))


def test_corpus_holds_every_synthetic_word():
    corpus_words = {
        word.strip(".,?:") for line in tokenization.tiny_corpus() for word in line.split()
    }
    for text in _texts():
        for word in text.split():
            assert word.strip(".,?:") in corpus_words, word


def test_opt_encodes_any_unicode_without_unknown(tokenizers):
    tok = tokenizers["opt"]
    ids = tok(UNICODE, add_special_tokens=False)["input_ids"]
    assert tok.unk_token_id not in ids
    assert tok.decode(ids) == UNICODE


def test_t5_falls_back_to_bytes_for_unseen_characters(tokenizers):
    tok = tokenizers["t5"]
    text = "naïve café 東京 🙂"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.unk_token_id not in ids
    assert tok.decode(ids, skip_special_tokens=True) == text


def test_special_tokens_map_names_the_image_token(tmp_path):
    for family in FAMILIES:
        folder = write_tiny_tokenizer(tmp_path / family, family)
        specials = json.loads((folder / "special_tokens_map.json").read_text())
        assert specials["additional_special_tokens"] == [IMAGE_TOKEN]


def test_unknown_family_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="unknown language-model family 'llama'"):
        load_tokenizer(tmp_path, "llama")
    with pytest.raises(UsageError, match="no such tokenizer folder"):
        load_tokenizer(tmp_path / "missing", "opt")


def test_tokenizer_without_image_token_is_refused(tmp_path):
    from paddlenlp.transformers import GPTTokenizer

    folder = write_tiny_opt_tokenizer(tmp_path)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    vocab = json.loads((folder / "vocab.json").read_text())
    del vocab[IMAGE_TOKEN]
    config.pop("additional_special_tokens")
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    (folder / "special_tokens_map.json").unlink()
    with pytest.raises(UsageError, match="no <image> token"):
        image_token_id(GPTTokenizer.from_pretrained(str(folder)))


@pytest.mark.parametrize("family", ["opt", "t5"])
def test_a_folder_without_tokenizer_files_names_them(tmp_path, family):
    from mixcore_blip2.tokenization import TOKENIZER_FILES, load_tokenizer

    from mixcore.api.errors import UsageError

    with pytest.raises(UsageError, match=TOKENIZER_FILES[family][0]):
        load_tokenizer(tmp_path, family)
