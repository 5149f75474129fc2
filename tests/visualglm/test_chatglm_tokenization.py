"""The tiny ChatGLM-6B tokenizer: generated deterministically, loaded by PaddleNLP's
ChatGLMTokenizer from its files, with ChatGLM's special symbols and text handling."""

from __future__ import annotations

from itertools import product
from pathlib import Path

import pytest
from mixcore_datasets import synthetic
from mixcore_visualglm import tokenization
from mixcore_visualglm.tokenization import (
    GMASK_TOKEN,
    IMAGE_END,
    IMAGE_START,
    MAX_BLANK_LENGTH,
    TINY_CHATGLM_VOCAB_SIZE,
    TOKENIZER_FILE,
    blank_token,
    load_tokenizer,
    special_ids,
    write_tiny_chatglm_tokenizer,
)

from mixcore.api.errors import UsageError


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return load_tokenizer(write_tiny_chatglm_tokenizer(tmp_path_factory.mktemp("chatglm")))


def _answers() -> list[str]:
    return [*synthetic.SHAPES, *synthetic.COLORS, *synthetic.SIZES, *synthetic.POSITIONS]


def _questions() -> list[str]:
    return [question for question, _ in synthetic.QUESTIONS.values()]


def _texts() -> list[str]:
    specs = [
        synthetic.ShapeSpec(*attributes)
        for attributes in product(
            synthetic.SHAPES, synthetic.COLORS, synthetic.SIZES, synthetic.POSITIONS
        )
    ]
    texts = [caption for spec in specs for caption in synthetic.captions(spec)]
    texts += [f"<img></img>问：{q}\n答：" for q in _questions()]
    return texts + _answers()


def test_generation_is_deterministic(tmp_path):
    first = _files(write_tiny_chatglm_tokenizer(tmp_path / "a"))
    second = _files(write_tiny_chatglm_tokenizer(tmp_path / "b"))
    assert first == second
    assert TOKENIZER_FILE in first


def test_loads_from_files_as_paddlenlps_chatglm_tokenizer(tmp_path, tokenizer):
    from paddlenlp.transformers import AutoTokenizer, ChatGLMTokenizer

    assert type(tokenizer) is ChatGLMTokenizer
    auto = AutoTokenizer.from_pretrained(str(write_tiny_chatglm_tokenizer(tmp_path)))
    assert type(auto) is ChatGLMTokenizer
    assert len(tokenizer) == tokenizer.vocab_size == TINY_CHATGLM_VOCAB_SIZE


def test_special_ids_follow_chatglm(tokenizer):
    ids = special_ids(tokenizer)
    assert (ids.unk, ids.pad, ids.newline) == (0, 3, 4)  # as in ChatGLM-6B's ice_text.model
    assert tokenizer.pad_token_id == ids.pad
    assert tokenizer.gmask_token_id == ids.gmask
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id) == (ids.sop, ids.eop)
    assert tokenizer.convert_ids_to_tokens([ids.gmask, ids.mask, ids.sop, ids.eop]) == [
        "[gMASK]",
        "[MASK]",
        "<sop>",
        "<eop>",
    ]
    assert tokenizer.convert_ids_to_tokens(ids.smask) == "[sMASK]"
    assert len(set(vars(ids).values())) == len(vars(ids))


def test_prompt_ends_with_gmask_then_sop(tokenizer):
    ids = special_ids(tokenizer)
    prompt = tokenizer("<img></img>问：What color is the shape?\n答：")["input_ids"]
    assert prompt[-2:] == [ids.gmask, ids.sop]
    assert ids.gmask not in prompt[:-2] and ids.sop not in prompt[:-2]
    question = tokenizer.encode("问：hi", add_special_tokens=False)["input_ids"]
    answer = tokenizer.encode("red", add_special_tokens=False)["input_ids"]
    built = tokenizer.build_inputs_with_special_tokens(list(question), answer)
    assert built == [*question, ids.gmask, ids.sop, *answer, ids.eop]


def test_special_symbols_in_text_are_single_tokens(tokenizer):
    ids = special_ids(tokenizer)
    text = f"{IMAGE_START}{IMAGE_END}问：x{GMASK_TOKEN}<sop>"
    encoded = tokenizer(text, add_special_tokens=False)["input_ids"]
    image_start, image_end = tokenizer.convert_tokens_to_ids([IMAGE_START, IMAGE_END])
    assert encoded.count(image_start) == encoded.count(image_end) == 1
    assert encoded[-2:] == [ids.gmask, ids.sop]


def test_newlines_round_trip_through_the_newline_token(tokenizer):
    ids = special_ids(tokenizer)
    text = "问：What shape is in the picture?\n答：circle\n\nred"
    encoded = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert encoded.count(ids.newline) == 3
    assert tokenizer.decode(encoded) == text


@pytest.mark.parametrize("run", [2, 3, 7, MAX_BLANK_LENGTH])
def test_runs_of_spaces_are_blank_tokens(tokenizer, run):
    text = "red" + " " * run + "circle"
    encoded = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.convert_tokens_to_ids(blank_token(run)) in encoded
    assert tokenizer.decode(encoded) == text


def test_tabs_and_long_runs_round_trip(tokenizer):
    text = "a\tb" + " " * (MAX_BLANK_LENGTH + 5) + "c"
    encoded = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.convert_tokens_to_ids("<|tab|>") in encoded
    assert tokenizer.convert_tokens_to_ids(blank_token(MAX_BLANK_LENGTH)) in encoded
    assert tokenizer.decode(encoded) == text


def test_synthetic_answers_are_single_tokens(tokenizer):
    for answer in _answers():
        encoded = tokenizer(answer, add_special_tokens=False)["input_ids"]
        assert len(encoded) == 1, (answer, tokenizer.convert_ids_to_tokens(encoded))


def test_synthetic_texts_round_trip_without_unknown(tokenizer):
    for text in _texts():
        encoded = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert tokenizer.unk_token_id not in encoded, text
        assert tokenizer.decode(encoded) == text
        assert len(encoded) <= 2 * len(text.split()) + 8, tokenizer.convert_ids_to_tokens(encoded)


def test_unseen_characters_fall_back_to_bytes(tokenizer):
    text = "naïve café 東京 🙂"
    encoded = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.unk_token_id not in encoded
    assert tokenizer.decode(encoded) == text


def test_corpus_word_lists_match_the_synthetic_data():
    corpus_words = {
        word.strip(".,?:") for line in tokenization.tiny_corpus() for word in line.split()
    }
    for text in _texts():
        if "问" in text:
            continue
        for word in text.split():
            assert word.strip(".,?:") in corpus_words, word


def test_missing_folder_or_model_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="no such tokenizer folder"):
        load_tokenizer(tmp_path / "missing")
    with pytest.raises(UsageError, match=TOKENIZER_FILE):
        load_tokenizer(tmp_path)
