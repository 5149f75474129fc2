"""A record that no layout reads says which layout it looks closest to, in which file and where."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from mixcore.api.errors import DataError
from mixcore.registry import build_registry
from mixcore.testing import run_cli

GOOD_SHAREGPT = {
    "image": "a.png",
    "conversations": [{"from": "human", "value": "<image>\nHi?"}, {"from": "gpt", "value": "Hi."}],
}


def build(base: Path, name: str = "chatml_dataset", **options: Any):
    return build_registry().hook.build_dataset(
        dataset_name=name, options=options, base_dir=str(base)
    )


def dataset_error(base: Path, records: list[Any], file: str = "data.json", **options) -> str:
    path = base / file
    if file.endswith(".jsonl"):
        path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    else:
        path.write_text(json.dumps(records), encoding="utf-8")
    with pytest.raises(DataError) as excinfo:
        build(base, data_files=file, **options)
    return str(excinfo.value)


@pytest.fixture
def base(tmp_path, write_png) -> Path:
    write_png(tmp_path / "a.png")
    return tmp_path


BAD = [
    pytest.param(
        {"conversations": [GOOD_SHAREGPT["conversations"][0], {"from": "gpt"}]},
        "looks like ShareGPT/LLaVA (has 'conversations' of {from, value} turns) but turn 1 "
        "has no 'value'",
        id="sharegpt-no-value",
    ),
    pytest.param(
        {"conversations": [{"from": "humna", "value": "q"}, {"from": "gpt", "value": "a"}]},
        "looks like ShareGPT/LLaVA (has 'conversations' of {from, value} turns) but turn 0: "
        "unknown speaker 'humna' (did you mean 'human'?); allowed speakers: human, user, gpt, "
        "assistant, system",
        id="sharegpt-speaker-typo",
    ),
    pytest.param(
        {
            "conversations": [
                {"from": "human", "value": "q"},
                {"from": "function_call", "value": "{}"},
            ]
        },
        "turn 1: 'function_call' turns (tool use) are not supported",
        id="sharegpt-tool-turn",
    ),
    pytest.param(
        {"conversations": [{"from": "gpt", "value": "a"}, {"from": "human", "value": "q"}]},
        "looks like ShareGPT/LLaVA (has 'conversations' of {from, value} turns) but message 0: "
        "expected a 'user' message, got 'assistant'",
        id="sharegpt-reply-first",
    ),
    pytest.param(
        {
            "conversations": [
                {"from": "human", "value": "<image>q"},
                {"from": "gpt", "value": "a"},
            ]
        },
        "but the text has '<image>' placeholders but the record names no image",
        id="sharegpt-placeholder-without-image",
    ),
    pytest.param(
        {
            "images": [{"id": 0, "url": "a.png"}],
            "conversations": [
                {"from": "user", "value": "<image>1</image> q"},
                {"from": "assistant", "value": "a"},
            ],
        },
        "'<image>1</image>' names image id 1, which 'images' does not list (ids: 0)",
        id="datacopilot-unknown-id",
    ),
    pytest.param(
        {"messages": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]},
        "looks like the messages form (has 'messages') but message 0 has 'from' and 'value' "
        "(ShareGPT style)",
        id="messages-with-sharegpt-turns",
    ),
    pytest.param(
        {"query": "q", "history": [["only one"]]},
        "looks like ms-swift query/response (has 'query') but record has no 'response'",
        id="swift-no-response",
    ),
    pytest.param(
        {"query": "q", "response": "a", "history": [["q0"]]},
        "but 'history' entry 0 must be a [query, response] pair",
        id="swift-bad-history",
    ),
    pytest.param(
        {"conversations": [["q", "a", "extra"]]},
        "looks like PaddleMIX chatml (has 'conversations' of [user, assistant] pairs) but "
        "conversation turn 0 must be a [user, assistant] pair, got 3 elements",
        id="chatml-pair-of-three",
    ),
    pytest.param(
        {"image": "a.png", "question": "What?", "answer": "This."},
        "record has no 'conversations', 'messages' or 'query'/'response', so it matches no "
        "conversation layout (keys: answer, image, question); it looks like a VQA record "
        "('question', 'answer'): read it with the vqa dataset",
        id="vqa-record-in-chatml",
    ),
    pytest.param(
        {"conversations": [], "messages": []},
        "record has both 'conversations' and 'messages'; use one form per record",
        id="two-layouts",
    ),
]


@pytest.mark.parametrize(("record", "reason"), BAD)
@pytest.mark.parametrize("file", ["data.json", "data.jsonl"])
def test_bad_record_names_file_index_and_closest_layout(base, record, reason, file):
    message = dataset_error(base, [GOOD_SHAREGPT] * 3 + [record], file)
    assert message.startswith(f"{base / file} record 3: ")
    assert reason in message


def test_pinned_format_refuses_another_layout_and_names_the_right_one(base):
    message = dataset_error(base, [GOOD_SHAREGPT], format="messages")
    assert message == (
        f"{base / 'data.json'} record 0: format is 'messages' (the messages form) but the record "
        "looks like ShareGPT/LLaVA (has 'conversations' of {from, value} turns); set format to "
        "'sharegpt' or 'auto'"
    )


def test_pinned_format_reads_its_own_layout_and_reports_in_its_terms(base):
    assert len(build(base, data_files=_write(base, [GOOD_SHAREGPT]), format="llava")) == 1
    message = dataset_error(base, [{"id": 1}], format="sharegpt")
    assert message.endswith(
        "record 0: not ShareGPT/LLaVA (format 'sharegpt'): record has no 'conversations'"
    )


def _write(base: Path, records: list[Any], name: str = "ok.json") -> str:
    (base / name).write_text(json.dumps(records), encoding="utf-8")
    return name


def test_invalid_json_line_names_line_and_record(base):
    path = base / "data.jsonl"
    path.write_text(json.dumps(GOOD_SHAREGPT) + "\n\n{broken\n", encoding="utf-8")
    with pytest.raises(DataError) as excinfo:
        build(base, data_files="data.jsonl")
    assert str(excinfo.value).startswith(f"{path}: invalid JSON on line 3 (record 1) column 2")


def test_image_root_confines_relative_and_absolute_paths(tmp_path, write_png):
    inside = write_png(tmp_path / "images" / "in.png")
    outside = write_png(tmp_path / "elsewhere" / "out.png")
    data = tmp_path / "data"
    data.mkdir()

    def record(ref: str) -> dict:
        return {**GOOD_SHAREGPT, "image": ref}

    ok = build(data, data_files=_write(data, [record(str(inside))]), image_root="../images")
    assert ok[0].images == [inside]
    for ref, reason in ((str(outside), "absolute image path"), ("../elsewhere/out.png", "'..'")):
        message = dataset_error(data, [record(ref)], image_root="../images")
        assert message.startswith(f"{data / 'data.json'} record 0: ") and reason in message
        assert str(tmp_path / "images") in message
    # Without image_root an absolute path outside the data folder is refused too.
    message = dataset_error(data, [record(str(inside))])
    assert "absolute image path" in message


def test_missing_image_root_names_the_option(base):
    message = dataset_error(base, [GOOD_SHAREGPT], image_root="nowhere")
    assert "image folder not found" in message and "image_root" in message


KARPATHY = {
    "images": [
        {"filepath": "", "filename": "a.png", "split": "train", "sentences": [{"raw": "A."}]},
        {"filename": "a.png", "split": "test", "sentences": [{"tokens": ["b"]}]},
        {"filename": "a.png", "split": "val", "sentences": [{"raw": "C."}]},
    ]
}


def test_karpathy_file_needs_split_and_names_it(base):
    (base / "dataset_coco.json").write_text(json.dumps(KARPATHY))
    with pytest.raises(DataError, match=r"set the option split .*train, val, test, restval"):
        build(base, "coco_caption", data_files="dataset_coco.json")
    samples = build(base, "coco_caption", data_files="dataset_coco.json", split="train")
    assert [sample.messages[-1].content for sample in samples] == ["A."]
    assert [sample.index for sample in samples] == [0]
    with pytest.raises(DataError) as excinfo:
        build(base, "coco_caption", data_files="dataset_coco.json", split=["train", "test"])
    assert str(excinfo.value).startswith(f"{base / 'dataset_coco.json'} record 1: ")
    assert "'sentences' entry 0 is not an object with 'raw'" in str(excinfo.value)


def test_split_on_a_file_without_splits_is_refused(base):
    (base / "caps.json").write_text(json.dumps([{"image": "a.png", "caption": "A."}]))
    with pytest.raises(DataError, match=r"not one .*remove split"):
        build(base, "coco_caption", data_files="caps.json", split="train")


def test_dry_run_reports_the_closest_layout_without_a_traceback(base):
    bad = {"conversations": [{"from": "human", "value": "q"}, {"from": "gpt"}]}
    (base / "train.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in [GOOD_SHAREGPT, bad]), encoding="utf-8"
    )
    config = {
        "model_name_or_path": "qwen_vl/tiny",
        "model_options": {"random_init": True},
        "dataset": {"train": [{"name": "chatml_dataset", "data_files": "train.jsonl"}]},
        "output_dir": "out",
    }
    (base / "config.json").write_text(json.dumps(config))
    result = run_cli(
        ["train", "--config", str(base / "config.json"), "--dry-run"], entry_points=True
    )
    assert result.exit_code == 2
    assert "train.jsonl record 1: looks like ShareGPT/LLaVA" in result.stderr
    assert "turn 1 has no 'value'" in result.stderr
    assert "Traceback" not in result.stderr


def test_one_file_may_mix_layouts_when_detected(base):
    records = [
        GOOD_SHAREGPT,
        {"conversations": [["<image>\nHi?", "Hi."]], "image": "a.png"},
        {"messages": [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hi."}]},
        {"query": "Hi?", "response": "Hi.", "images": ["a.png"]},
    ]
    samples = build(base, data_files=_write(base, records))
    assert [sample.messages[-1].content for sample in samples] == ["Hi."] * 4
    assert [len(sample.images) for sample in samples] == [1, 1, 0, 1]
    # Pinned to one layout, the same file stops at the first record in another.
    message = dataset_error(base, records, format="chatml")
    assert message.startswith(f"{base / 'data.json'} record 0: format is 'chatml'")


def test_json_lines_accept_a_byte_order_mark_and_refuse_other_encodings(base):
    path = base / "bom.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(GOOD_SHAREGPT).encode() + b"\r\n")
    assert len(build(base, data_files="bom.jsonl")) == 1
    path.write_bytes(json.dumps(GOOD_SHAREGPT).encode("utf-16"))
    with pytest.raises(DataError, match=r"bom\.jsonl: data file is not UTF-8 text"):
        build(base, data_files="bom.jsonl")
