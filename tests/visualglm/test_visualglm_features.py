"""How VisualGLM spells a sample: THUDM's chat form, the image first, labels on the last answer,
ChatGLM's special tokens where the model expects them, and records named when they cannot fit."""

from __future__ import annotations

import json

import numpy as np
import pytest
from mixcore_visualglm.features import VisualGLMEncoder, collate

from mixcore.api.constants import IGNORE_INDEX
from mixcore.api.errors import DataError
from mixcore.api.records import Message, Sample
from tests.visualglm.conftest import question

SLOTS = 16


@pytest.fixture(scope="module")
def encoder(tiny_tokenizer):
    from mixcore_visualglm.tokenization import special_ids

    return VisualGLMEncoder(tiny_tokenizer, SLOTS, special_ids(tiny_tokenizer).smask)


def _text(tokenizer, ids) -> str:
    return "".join(tokenizer.convert_ids_to_tokens([int(i) for i in ids]))


def test_a_question_takes_the_published_chat_form(encoder, tiny_tokenizer, picture):
    features = encoder.encode(question(picture))
    ids, labels = features["input_ids"], features["labels"]
    ids_ = encoder.ids
    # THUDM: encode("<img>") + image slots + encode("</img>问：{q}\n答："), then [gMASK] <sop>
    # and the answer with <eop>.
    start = encoder.tokenize("<img>")
    assert list(ids[: len(start)]) == start
    assert list(ids[len(start) : len(start) + SLOTS]) == [encoder.image_token_id] * SLOTS
    rest = encoder.tokenize("</img>问：What colour?\n答：")
    prompt_end = len(start) + SLOTS + len(rest)
    assert list(ids[len(start) + SLOTS : prompt_end]) == rest
    answer = encoder.tokenize("red")
    assert list(ids[prompt_end:]) == [ids_.gmask, ids_.sop, *answer, ids_.eop]
    # Pre-shifted labels: <sop> predicts the answer's first token, the last answer token <eop>.
    trained = np.flatnonzero(labels != IGNORE_INDEX)
    assert list(trained) == list(range(prompt_end + 1, len(ids) - 1))
    assert list(labels[trained]) == [*answer, ids_.eop]
    assert labels[-1] == IGNORE_INDEX
    assert "问：What▁colour?<n>答：[gMASK]<sop>" in _text(tiny_tokenizer, ids).replace(" ", "▁")


def test_history_stays_in_the_prompt_and_only_the_last_answer_trains(encoder, picture):
    sample = Sample(
        [
            Message("user", "<image>\nWhat colour?"),
            Message("assistant", "red"),
            Message("user", "What shape?"),
            Message("assistant", "circle"),
        ],
        [picture],
    )
    features = encoder.encode(sample)
    ids = list(features["input_ids"])
    history = encoder.tokenize("</img>问：What colour?\n答：red\n问：What shape?\n答：")
    start = len(encoder.tokenize("<img>")) + SLOTS
    assert ids[start : start + len(history)] == history
    trained = features["labels"][features["labels"] != IGNORE_INDEX]
    assert list(trained) == [*encoder.tokenize("circle"), encoder.ids.eop]


def test_a_prompt_ends_with_gmask_and_sop_and_has_no_labels(encoder, picture):
    features = encoder.encode(question(picture, answer=None))
    assert set(features) == {"input_ids"}
    assert list(features["input_ids"][-2:]) == [encoder.ids.gmask, encoder.ids.sop]
    assert encoder.length(question(picture, answer=None)) == len(features["input_ids"])


def test_a_text_only_sample_has_no_image_tokens(encoder):
    sample = Sample([Message("user", "Say hi."), Message("assistant", "hi")])
    ids = list(encoder.encode(sample)["input_ids"])
    assert encoder.image_token_id not in ids
    assert ids[: len(encoder.tokenize("问：Say hi.\n答："))] == encoder.tokenize(
        "问：Say hi.\n答："
    )


def test_long_answers_are_cut_and_a_prompt_without_room_names_the_record(encoder, picture):
    full = encoder.encode(question(picture, answer="red " * 20))
    cut = encoder.encode(question(picture, answer="red " * 20), max_length=40)
    assert len(cut["input_ids"]) == 40
    assert list(cut["input_ids"]) == list(full["input_ids"][:40])
    assert (cut["labels"] != IGNORE_INDEX).sum() > 0
    with pytest.raises(DataError, match="no room for the answer") as err:
        encoder.encode(question(picture), max_length=SLOTS + 4)
    assert "data.json" in str(err.value) and "7" in str(err.value)


def test_text_that_spells_chatglms_layout_tokens_is_refused(encoder, picture):
    with pytest.raises(DataError, match=r"\[gMASK\]"):
        encoder.encode(question(picture, text="What is [gMASK]?"))
    with pytest.raises(DataError, match="one image per sample"):
        encoder.encode(
            Sample(
                [Message("user", "<image><image>"), Message("assistant", "x")], [picture, picture]
            )
        )


def test_the_image_field_and_an_img_tag_give_the_same_features(encoder, tmp_path):
    from PIL import Image

    from mixcore.registry import build_registry

    Image.new("RGB", (20, 20), (0, 0, 255)).save(tmp_path / "blue.png")
    records = [
        {"image": "blue.png", "conversations": [["What colour?", "blue"]]},
        {"conversations": [["<img>blue.png</img>\nWhat colour?", "blue"]]},
    ]
    (tmp_path / "data.json").write_text(json.dumps(records))
    samples = build_registry().hook.build_dataset(
        dataset_name="chatml_dataset", options={"data_files": "data.json"}, base_dir=str(tmp_path)
    )
    first, second = (encoder.encode(s) for s in samples)
    assert np.array_equal(first["input_ids"], second["input_ids"])
    assert np.array_equal(first["labels"], second["labels"])
    assert (
        [p.name for p in samples[0].images] == [p.name for p in samples[1].images] == ["blue.png"]
    )


def test_collate_masks_and_positions_each_sample_as_chatglm_does(encoder, picture):
    from mixcore_visualglm.chatglm_language import sample_positions_and_mask

    from mixcore.kit.packing import pack_features

    one = encoder.encode(question(picture))
    two = encoder.encode(Sample([Message("user", "Say hi."), Message("assistant", "hi there")]))
    ids = encoder.ids
    batch = collate([one, two], ids.pad, ids.gmask, ids.sop)
    assert batch["attention_mask"].shape == (2, 1, len(one["input_ids"]), len(one["input_ids"]))
    for row, f in enumerate((one, two)):
        n = len(f["input_ids"])
        positions, keep = sample_positions_and_mask(f["input_ids"], ids.gmask, ids.sop)
        assert np.array_equal(batch["position_ids"][row, :, :n], positions)
        assert np.array_equal(batch["attention_mask"][row, 0, :n, :n], keep)
    # Packed: segment ids instead of the [L, L] mask (the model attends per segment); the
    # layout they make holds the same blocks on the diagonal, nothing across samples.
    from mixcore_visualglm.chatglm_language import packed_positions_and_layout

    packed = collate([pack_features([one, two])], ids.pad, ids.gmask, ids.sop)
    n = len(one["input_ids"])
    assert packed["attention_mask"].shape == packed["segment_ids"].shape
    assert packed["segment_ids"].tolist() == [[1] * n + [2] * len(two["input_ids"])]
    _, layout = packed_positions_and_layout(
        packed["input_ids"], packed["segment_ids"], ids.gmask, ids.sop
    )
    mask = layout.keep_mask()[0, 0]
    assert np.array_equal(mask[:n, :n], batch["attention_mask"][0, 0, :n, :n])
    assert not mask[n:, :n].any() and not mask[:n, n:].any()
    assert np.array_equal(
        packed["position_ids"][0, :, n:], batch["position_ids"][1, :, : len(two["input_ids"])]
    )
