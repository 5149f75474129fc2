"""chatml records become Samples with placeholders; every bad file or record is located."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from mixcore_datasets.chatml import (
    ChatmlDataset,
    parse_image_tags,
    read_chatml,
    record_to_sample,
)

from mixcore.data.images import load_image
from mixcore.errors import DataError
from mixcore.records import IMAGE_PLACEHOLDER, Message

GOOD = {"conversations": [["<img>images/a.png</img>\nWhat is it?", "A square."]]}


@pytest.fixture
def data_dir(tmp_path, write_png) -> Path:
    """A data folder with images/a.png and images/b.png."""
    write_png(tmp_path / "images" / "a.png", color=(255, 0, 0))
    write_png(tmp_path / "images" / "b.png", color=(0, 0, 255))
    return tmp_path


def sample_of(data_dir: Path, record: dict, index: int = 0):
    return record_to_sample(record, index, data_file=data_dir / "train.json", dataset_label="d")


# --- records that work -----------------------------------------------------------------------


def test_img_tags_become_placeholders_and_paths(data_dir):
    record = {
        "conversations": [
            ["Picture 1: <img>images/a.png</img>\nWhat colour?", "Red."],
            ["And <img> images/b.png </img>?", "Blue."],
        ]
    }
    sample = sample_of(data_dir, record, index=3)
    assert sample.messages == [
        Message("user", f"Picture 1: {IMAGE_PLACEHOLDER}\nWhat colour?"),
        Message("assistant", "Red."),
        Message("user", f"And {IMAGE_PLACEHOLDER}?"),
        Message("assistant", "Blue."),
    ]
    assert sample.images == [data_dir / "images" / "a.png", data_dir / "images" / "b.png"]
    assert (sample.source, sample.index, sample.dataset) == (str(data_dir / "train.json"), 3, "d")


def test_image_field_puts_placeholders_at_the_start_of_the_first_user_turn(data_dir):
    record = {"image": ["images/a.png", "images/b.png"], "conversations": [["Compare.", "Same."]]}
    sample = sample_of(data_dir, record)
    expected = f"{IMAGE_PLACEHOLDER}\n{IMAGE_PLACEHOLDER}\nCompare."
    assert sample.messages[0] == Message("user", expected)
    assert len(sample.images) == 2


def test_image_field_with_placeholders_already_in_the_text_keeps_their_places(data_dir):
    record = {"image": "images/a.png", "conversations": [["Look: <image> ok?", "Yes."]]}
    assert sample_of(data_dir, record).messages[0].content == "Look: <image> ok?"


def test_image_field_repeating_the_tags_names_each_image_once(data_dir):
    record = {"image": "images/a.png", **GOOD}
    assert sample_of(data_dir, record).images == [data_dir / "images" / "a.png"]


def test_system_key_becomes_the_first_message(data_dir):
    sample = sample_of(data_dir, {"system": "Be brief.", **GOOD})
    assert sample.messages[0] == Message("system", "Be brief.")
    assert [m.role for m in sample.messages] == ["system", "user", "assistant"]


def test_text_only_records_and_unknown_keys_are_accepted(data_dir):
    sample = sample_of(data_dir, {"id": 9, "conversations": [["Hi", "Hello"]]})
    assert sample.images == [] and sample.messages[1] == Message("assistant", "Hello")


def test_utf8_byte_order_mark_is_accepted(tmp_path):
    path = tmp_path / "bom.json"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps([{"conversations": [["a", "b"]]}]).encode())
    assert len(read_chatml(path)) == 1


def test_parse_image_tags_returns_text_and_references():
    text, refs = parse_image_tags("<img>a.png</img> and <img>b/c.jpg</img>!")
    assert text == f"{IMAGE_PLACEHOLDER} and {IMAGE_PLACEHOLDER}!"
    assert refs == ["a.png", "b/c.jpg"]


# --- file-level errors -----------------------------------------------------------------------


def test_missing_data_file(tmp_path):
    with pytest.raises(DataError, match=r"missing\.json: data file not found"):
        read_chatml(tmp_path / "missing.json")


def test_invalid_json_reports_line_and_column(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('[\n  {"conversations": [["a", "b"]]},\n  {oops}\n]')
    with pytest.raises(DataError, match=r"broken\.json: invalid JSON at line 3 column 4"):
        read_chatml(path)


def test_file_that_is_not_utf8(tmp_path):
    path = tmp_path / "latin.json"
    path.write_bytes('[{"conversations": [["caf\u00e9", "ok"]]}]'.encode("latin-1"))
    with pytest.raises(DataError, match=r"latin\.json: data file is not UTF-8 .*0xe9"):
        read_chatml(path)


def test_top_level_must_be_a_list(tmp_path, write_json):
    path = write_json(tmp_path / "obj.json", {"conversations": []})
    with pytest.raises(DataError, match=r"obj\.json: .*JSON list.*found a JSON object"):
        read_chatml(path)


# --- record-level errors: each names the file and the record index ----------------------------

BAD_RECORDS = [
    pytest.param(["not", "an", "object"], "must be a JSON object", id="record-not-object"),
    pytest.param({"image": "images/a.png"}, "no 'conversations'", id="no-conversations"),
    pytest.param({"conversations": []}, "'conversations' is empty", id="empty-conversations"),
    pytest.param({"conversations": "hi"}, "must be a list", id="conversations-not-list"),
    pytest.param({"conversations": [["q", "a", "x"]]}, "got 3 elements", id="turn-of-three"),
    pytest.param({"conversations": [["q"]]}, "got 1 element", id="turn-of-one"),
    pytest.param({"conversations": ["q"]}, "turn 0 must be a [user, assistant]", id="turn-str"),
    pytest.param({"conversations": [["q", 5]]}, "assistant text must be a string", id="int-turn"),
    pytest.param({"conversations": [[None, "a"]]}, "user text must be a string", id="null-turn"),
    pytest.param({"conversations": [["q", " "]]}, "nothing to learn", id="empty-replies"),
    pytest.param(
        {"conversations": [["<img>images/a.png", "a"]]}, "no closing '</img>'", id="unclosed"
    ),
    pytest.param(
        {"conversations": [["<img>x<img>images/a.png</img>", "a"]]}, "no closing", id="nested"
    ),
    pytest.param({"conversations": [["a.png</img>", "a"]]}, "without an opening", id="stray"),
    pytest.param({"conversations": [["<img> </img>", "a"]]}, "empty image path", id="empty-tag"),
    pytest.param(
        {"conversations": [["q", "see <img>images/a.png</img>"]]},
        "assistant reply cannot contain an image",
        id="image-in-reply",
    ),
    pytest.param(
        {"conversations": [["<img>images/a.png</img> <image>", "a"]]}, "mixes", id="mixed-marks"
    ),
    pytest.param(
        {"image": "images/b.png", **GOOD}, "does not match the '<img>' tags", id="field-vs-tags"
    ),
    pytest.param(
        {"image": "images/a.png", "conversations": [["<image><image>", "a"]]},
        "2 '<image>' placeholders but 'image' names 1",
        id="placeholder-count",
    ),
    pytest.param(
        {"conversations": [["<image> what?", "a"]]}, "names no image", id="placeholder-no-image"
    ),
    pytest.param({"image": 3, **GOOD}, "'image' must be a string", id="image-field-type"),
    pytest.param({"system": ["x"], **GOOD}, "'system' must be a string", id="system-type"),
    pytest.param(
        {"conversations": [["<img>images/missing.png</img>", "a"]]}, "not found", id="missing"
    ),
    pytest.param(
        {"conversations": [["<img>../outside.png</img>", "a"]]}, "'..'", id="dotdot-escape"
    ),
]


@pytest.mark.parametrize(("record", "reason"), BAD_RECORDS)
def test_bad_record_is_a_located_data_error(data_dir, write_png, record, reason):
    write_png(data_dir.parent / "outside.png")
    with pytest.raises(DataError) as excinfo:
        sample_of(data_dir, record, index=4)
    message = str(excinfo.value)
    assert message.startswith(f"{data_dir / 'train.json'} record 4: ")
    assert reason in message
    assert excinfo.value.index == 4


# --- ChatmlDataset ---------------------------------------------------------------------------


def test_dataset_reads_every_file_in_order(data_dir, write_json):
    first = write_json(data_dir / "one.json", [GOOD, GOOD])
    second = write_json(data_dir / "two.json", [GOOD])
    dataset = ChatmlDataset([first, second], label="mix", chat_template={"query": "{{query}}"})
    assert len(dataset) == 3
    assert [(s.source, s.index) for s in dataset] == [
        (str(first), 0),
        (str(first), 1),
        (str(second), 0),
    ]
    assert dataset[-1].dataset == "mix"
    assert dataset[0].chat_template == {"query": "{{query}}"}
    assert dataset.skipped == []


def test_error_mode_raises_the_first_bad_record_and_counts_the_rest(data_dir, write_json):
    path = write_json(data_dir / "train.json", [GOOD, {"conversations": []}, 5, {}])
    with pytest.raises(DataError) as excinfo:
        ChatmlDataset([path])
    message = str(excinfo.value)
    assert message.startswith(f"{path} record 1: 'conversations' is empty")
    assert "and 2 more bad records" in message


def test_skip_mode_drops_and_lists_bad_records(data_dir, write_json, caplog):
    bad_image = {"conversations": [["<img>images/nope.png</img>", "a"]]}
    path = write_json(data_dir / "train.json", [GOOD, {"conversations": []}, GOOD, bad_image])
    with caplog.at_level(logging.WARNING):
        dataset = ChatmlDataset([path], on_bad_sample="skip")
    assert len(dataset) == 2 and [s.index for s in dataset] == [0, 2]
    assert [(source, index) for source, index, _ in dataset.skipped] == [
        (str(path), 1),
        (str(path), 3),
    ]
    assert dataset.skipped[0][2] == "'conversations' is empty"
    assert "not found" in dataset.skipped[1][2] and "nope.png" in dataset.skipped[1][2]
    assert "skipped 2 of 4 records" in caplog.text


def test_skip_mode_still_raises_for_a_broken_file(data_dir, write_json):
    good = write_json(data_dir / "good.json", [GOOD])
    with pytest.raises(DataError, match=r"absent\.json: data file not found"):
        ChatmlDataset([good, data_dir / "absent.json"], on_bad_sample="skip")


def test_unknown_bad_sample_policy_is_refused(data_dir):
    with pytest.raises(ValueError, match="on_bad_sample"):
        ChatmlDataset([], on_bad_sample="ignore")  # type: ignore[arg-type]


def test_images_are_located_up_front_but_decoded_only_on_demand(data_dir, write_json):
    (data_dir / "images" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    record = {"conversations": [["<img>images/corrupt.png</img>", "a"]]}
    dataset = ChatmlDataset([write_json(data_dir / "train.json", [record])])
    sample = dataset[0]
    with pytest.raises(DataError) as excinfo:
        load_image(sample.images[0], source=sample.source, index=sample.index)
    assert "train.json record 0" in str(excinfo.value)
