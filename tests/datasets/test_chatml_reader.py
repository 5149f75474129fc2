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

from mixcore.api.errors import DataError
from mixcore.api.records import IMAGE_PLACEHOLDER, Message
from mixcore.kit.images import load_image

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
    pytest.param(
        {"conversations": [["ok", "bad \ud800"]]},
        "conversation turn 0: the assistant text is not valid UTF-8 text: it holds a lone "
        "surrogate U+D800 at character 4",
        id="surrogate-reply",
    ),
    pytest.param(
        {"system": "\udc00", **GOOD}, "'system' is not valid UTF-8 text", id="surrogate-system"
    ),
    pytest.param(
        {"image": ["images/a.png", "images/\ud83d.png"], "conversations": [["q", "a"]]},
        "'image' entry 1 is not valid UTF-8 text",
        id="surrogate-image-field",
    ),
    pytest.param(
        {"conversations": [["<img>images/\ud83d.png</img>", "a"]]},
        "turn 0: the user text is not valid UTF-8",
        id="surrogate-image-tag",
    ),
    pytest.param(
        {**GOOD, "messages": [{"role": "user", "content": "q"}]},
        "both 'conversations' and 'messages'",
        id="both-forms",
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


# --- the messages form -----------------------------------------------------------------------


def msg(role: str, content: str) -> dict:
    return {"role": role, "content": content}


def test_messages_form_keeps_roles_and_placeholders(data_dir):
    record = {
        "messages": [
            msg("system", "Be brief."),
            msg("user", "First <image>, then <image>: same?"),
            msg("assistant", "No."),
            msg("user", "Why?"),
            msg("assistant", "Colours."),
        ],
        "images": ["images/a.png", "images/b.png"],
        "id": "x1",
    }
    sample = sample_of(data_dir, record, index=2)
    assert sample.messages == [
        Message("system", "Be brief."),
        Message("user", f"First {IMAGE_PLACEHOLDER}, then {IMAGE_PLACEHOLDER}: same?"),
        Message("assistant", "No."),
        Message("user", "Why?"),
        Message("assistant", "Colours."),
    ]
    assert sample.images == [data_dir / "images" / "a.png", data_dir / "images" / "b.png"]
    assert (sample.index, sample.dataset) == (2, "d")


def test_messages_form_puts_unplaced_images_at_the_start_of_the_first_user_turn(data_dir):
    record = {
        "messages": [msg("system", "S"), msg("user", "Compare."), msg("assistant", "Same.")],
        "images": ["images/a.png", "images/b.png"],
    }
    sample = sample_of(data_dir, record)
    assert sample.messages[1] == Message(
        "user", f"{IMAGE_PLACEHOLDER}\n{IMAGE_PLACEHOLDER}\nCompare."
    )


def test_messages_form_accepts_one_image_as_a_string_and_text_only_records(data_dir):
    one = {"messages": [msg("user", "<image> hi"), msg("assistant", "a")], "images": "images/a.png"}
    assert sample_of(data_dir, one).images == [data_dir / "images" / "a.png"]
    text_only = {"messages": [msg("user", "hi"), msg("assistant", "hello")]}
    assert sample_of(data_dir, text_only).images == []


def test_both_forms_mix_in_one_file(data_dir, write_json):
    messages_record = {
        "messages": [msg("user", "<image>"), msg("assistant", "red")],
        "images": ["images/a.png"],
    }
    path = write_json(data_dir / "mixed.json", [GOOD, messages_record])
    dataset = ChatmlDataset([path])
    assert [s.messages[-1].content for s in dataset] == ["A square.", "red"]


BAD_MESSAGES = [
    pytest.param({"messages": []}, "'messages' is empty", id="empty"),
    pytest.param({"messages": "hi"}, "'messages' must be a list", id="not-list"),
    pytest.param({"messages": ["hi"]}, "message 0 must be an object", id="message-str"),
    pytest.param(
        {"messages": [{"role": "user"}, msg("assistant", "a")]},
        "message 0 has no 'content'",
        id="no-content",
    ),
    pytest.param(
        {"messages": [{"from": "human", "value": "q"}]},
        "message 0 has 'from' and 'value' (ShareGPT style)",
        id="sharegpt",
    ),
    pytest.param(
        {"messages": [msg("human", "q"), msg("gpt", "a")]},
        "message 0: unknown role 'human' (did you mean 'user'?); allowed roles: system, user, assistant",
        id="role-human",
    ),
    pytest.param(
        {"messages": [msg("user", "q"), msg("gpt", "a")]},
        "message 1: unknown role 'gpt' (did you mean 'assistant'?); allowed roles: system, user, "
        "assistant",
        id="role-gpt",
    ),
    pytest.param(
        {"messages": [msg("User", "q"), msg("assistant", "a")]},
        "unknown role 'User' (did you mean 'user'?)",
        id="role-case",
    ),
    pytest.param(
        {"messages": [msg("narrator", "q"), msg("assistant", "a")]},
        "unknown role 'narrator'; allowed roles: system, user, assistant",
        id="role-unrelated",
    ),
    pytest.param(
        {"messages": [{"role": 1, "content": "q"}]}, "'role' must be a string", id="role-number"
    ),
    pytest.param(
        {"messages": [msg("user", "q"), {"role": "assistant", "content": ["a"]}]},
        "message 1: 'content' must be a string, got a JSON array",
        id="content-list",
    ),
    pytest.param(
        {"messages": [msg("user", "q"), msg("system", "s"), msg("assistant", "a")]},
        "message 1: a 'system' message may only come first",
        id="late-system",
    ),
    pytest.param(
        {"messages": [msg("assistant", "a")]},
        "message 0: expected a 'user' message, got 'assistant'",
        id="starts-with-assistant",
    ),
    pytest.param(
        {"messages": [msg("user", "q"), msg("user", "q2"), msg("assistant", "a")]},
        "message 1: expected an 'assistant' message, got 'user'",
        id="two-users",
    ),
    pytest.param(
        {"messages": [msg("user", "q"), msg("assistant", "a"), msg("user", "q2")]},
        "the last message must be an assistant reply to learn from, got a 'user' message",
        id="ends-with-user",
    ),
    pytest.param(
        {"messages": [msg("system", "s")]},
        "the last message must be an assistant reply",
        id="only-system",
    ),
    pytest.param(
        {"messages": [msg("user", "q"), msg("assistant", " ")]},
        "nothing to learn",
        id="empty-reply",
    ),
    pytest.param(
        {
            "messages": [msg("user", "q"), msg("assistant", "see <image>")],
            "images": ["images/a.png"],
        },
        "message 1: an assistant reply cannot contain an image",
        id="image-in-reply",
    ),
    pytest.param(
        {"messages": [msg("system", "<image>"), msg("user", "q"), msg("assistant", "a")]},
        "message 0: a system message cannot contain an image",
        id="image-in-system",
    ),
    pytest.param(
        {
            "messages": [msg("user", "<image><image>"), msg("assistant", "a")],
            "images": ["images/a.png"],
        },
        "2 '<image>' placeholders but 'images' names 1 images",
        id="placeholder-count",
    ),
    pytest.param(
        {"messages": [msg("user", "<image>"), msg("assistant", "a")]},
        "placeholders but the record names no image",
        id="placeholder-without-images",
    ),
    pytest.param(
        {"messages": [msg("user", "<img>images/a.png</img>"), msg("assistant", "a")]},
        "tags belong to the 'conversations' form",
        id="img-tags",
    ),
    pytest.param(
        {"messages": [msg("user", "q"), msg("assistant", "a")], "image": "images/a.png"},
        "cannot have 'image'",
        id="image-key",
    ),
    pytest.param(
        {"messages": [msg("user", "q"), msg("assistant", "a")], "system": "s"},
        "cannot have 'system'",
        id="system-key",
    ),
    pytest.param(
        {"messages": [msg("user", "q"), msg("assistant", "a")], "images": [1]},
        "'images' must be a string or a list of strings",
        id="images-type",
    ),
    pytest.param(
        {"messages": [msg("user", "<image>"), msg("assistant", "a")], "images": ["images/zz.png"]},
        "image file not found",
        id="missing-image",
    ),
    pytest.param(
        {"messages": [msg("user", "<image>"), msg("assistant", "a")], "images": ["../outside.png"]},
        "uses '..'",
        id="dotdot-escape",
    ),
    pytest.param(
        {"messages": [msg("user", "q\ud800"), msg("assistant", "a")]},
        "message 0 content is not valid UTF-8 text: it holds a lone surrogate U+D800",
        id="surrogate-content",
    ),
    pytest.param(
        {"messages": [msg("user", "<image>"), msg("assistant", "a")], "images": ["\udc80.png"]},
        "'images' entry 0 is not valid UTF-8 text",
        id="surrogate-image",
    ),
]


@pytest.mark.parametrize(("record", "reason"), BAD_MESSAGES)
def test_bad_messages_record_is_a_located_data_error(data_dir, write_png, record, reason):
    write_png(data_dir.parent / "outside.png")
    with pytest.raises(DataError) as excinfo:
        sample_of(data_dir, record, index=6)
    message = str(excinfo.value)
    assert message.startswith(f"{data_dir / 'train.json'} record 6: ")
    assert reason in message


def test_lone_surrogate_read_from_a_file_is_a_data_error_not_a_crash(data_dir):
    # json.dumps would escape it the same way; written by hand to show the bytes users have.
    path = data_dir / "train.json"
    path.write_text(
        '[{"messages": [{"role": "user", "content": "hi"}, '
        '{"role": "assistant", "content": "\\ud800"}]}]',
        encoding="utf-8",
    )
    dataset = ChatmlDataset([path], on_bad_sample="skip")
    assert len(dataset) == 0
    assert "message 1 content is not valid UTF-8 text" in dataset.skipped[0][2]
