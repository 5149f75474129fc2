"""vqa: records become image + question -> answer samples; annotator lists train on the majority."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mixcore_datasets.vqa import VqaDataset, check_prompt_template, majority_answer
from PIL import Image

from mixcore.api.errors import DataError
from mixcore.api.records import IMAGE_PLACEHOLDER, Message
from mixcore.registry import build_registry


@pytest.fixture(scope="module")
def registry():
    return build_registry(environ={"MIXCORE_PLUGINS": "datasets"})


@pytest.fixture
def data_dir(tmp_path, write_png) -> Path:
    write_png(tmp_path / "images" / "dog.png", color=(120, 80, 40))
    return tmp_path


def vqa_file(folder: Path, *records) -> Path:
    path = folder / "vqa.json"
    path.write_text(json.dumps(list(records)), encoding="utf-8")
    return path


def answer_of(folder: Path, record: dict) -> str:
    (sample,) = VqaDataset([vqa_file(folder, {"image": "images/dog.png", **record})])
    return sample.messages[1].content


# --- records that work -----------------------------------------------------------------------


def test_record_becomes_image_question_and_answer(data_dir):
    path = vqa_file(
        data_dir,
        {"image": "images/dog.png", "question": "What animal?", "answer": "dog", "question_id": 7},
    )
    (sample,) = VqaDataset([path], label="vqa#0")
    assert sample.messages == [
        Message("user", f"{IMAGE_PLACEHOLDER}\nWhat animal?"),
        Message("assistant", "dog"),
    ]
    assert sample.images == [data_dir / "images" / "dog.png"]
    assert (sample.source, sample.index, sample.dataset) == (str(path), 0, "vqa#0")


@pytest.mark.parametrize(
    ("answers", "expected"),
    [
        (["cat", "dog", "dog", "cat", "dog"], "dog"),
        (["cat", "dog", "dog", "cat"], "cat"),  # a tie goes to the answer given first
        (["  yes ", "yes", "no"], "yes"),  # compared whitespace-stripped
        ([{"answer": "2", "answer_confidence": "yes", "answer_id": 1}, {"answer": "two"}], "2"),
        ([{"answer": "two"}, "2", {"answer": "2"}], "2"),
    ],
)
def test_annotator_answers_train_on_the_most_common(data_dir, answers, expected):
    assert answer_of(data_dir, {"question": "How many?", "answers": answers}) == expected
    assert answer_of(data_dir, {"question": "How many?", "answer": answers}) == expected


def test_majority_answer_breaks_ties_by_first_occurrence():
    assert majority_answer(["b", "a", "a", "b", "c"]) == "b"
    assert majority_answer(["only"]) == "only"


def test_prompt_template_wraps_the_question(data_dir):
    path = vqa_file(data_dir, {"image": "images/dog.png", "question": "Colour?", "answer": "brown"})
    template = "Question: {question} Answer in one word {{like this}}."
    (sample,) = VqaDataset([path], prompt_template=template)
    expected = f"{IMAGE_PLACEHOLDER}\nQuestion: Colour? Answer in one word {{like this}}."
    assert sample.messages[0].content == expected


def test_image_root_moves_where_images_are_looked_up(tmp_path, write_png):
    write_png(tmp_path / "coco" / "val2014" / "x.png")
    path = tmp_path / "questions" / "vqa.json"
    path.parent.mkdir()
    path.write_text(json.dumps([{"image": "val2014/x.png", "question": "Q?", "answer": "a"}]))
    (sample,) = VqaDataset([path], image_root=tmp_path / "coco")
    assert sample.images == [tmp_path / "coco" / "val2014" / "x.png"]


# --- prompt_template -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("template", "reason"),
    [
        ("Q: {question} A: {answer}", "may only use the field {question}, found {answer}"),
        ("{} {question}", "found {}"),
        ("{0}", "found {0}"),
        ("{question!r}", "found {question!r}"),
        ("{question:>20}", "found {question:>20}"),
        ("Ask {question", "not a valid template"),
        ("Ask } {question}", "not a valid template"),
        ("No question here", "has no {question}"),
        ("{{question}}", "has no {question}"),
        ("<image> {question}", "contains '<image>'"),
    ],
)
def test_bad_prompt_templates_are_explained(template, reason):
    with pytest.raises(ValueError) as excinfo:
        check_prompt_template(template)
    assert reason in str(excinfo.value)


def test_bad_prompt_template_names_the_dataset_option(data_dir):
    path = vqa_file(data_dir)
    with pytest.raises(DataError, match=r"^dataset vqa#1 option prompt_template: .*\{answer\}"):
        VqaDataset([path], prompt_template="{question} {answer}", label="vqa#1")


# --- bad records -----------------------------------------------------------------------------

BAD_RECORDS = [
    pytest.param([1, 2], "got a JSON array", id="record-not-object"),
    pytest.param({"question": "Q?", "answer": "a"}, "record has no 'image'", id="no-image"),
    pytest.param({"image": "images/dog.png", "answer": "a"}, "no 'question'", id="no-question"),
    pytest.param(
        {"image": "images/dog.png", "question": "Q?"},
        "record has no 'answer' or 'answers' (keys: image, question)",
        id="no-answer",
    ),
    pytest.param(
        {"image": "images/dog.png", "question": "Q?", "answer": "a", "answers": ["a"]},
        "both 'answer' and 'answers'",
        id="both-answer-keys",
    ),
    pytest.param(
        {"image": "images/dog.png", "question": " ", "answer": "a"},
        "'question' is empty",
        id="empty-question",
    ),
    pytest.param(
        {"image": "images/dog.png", "question": "Q?", "answer": ""},
        "'answer' is empty",
        id="empty-answer",
    ),
    pytest.param(
        {"image": "images/dog.png", "question": "Q?", "answers": []},
        "'answers' is an empty list",
        id="empty-answers",
    ),
    pytest.param(
        {"image": "images/dog.png", "question": "Q?", "answers": ["a", 3]},
        "'answers' entry 1 must be a string, got a JSON number",
        id="answer-number",
    ),
    pytest.param(
        {"image": "images/dog.png", "question": "Q?", "answers": [{"text": "a"}]},
        "'answers' entry 0 is an object without an 'answer' key",
        id="answer-object-without-answer",
    ),
    pytest.param(
        {"image": "images/dog.png", "question": "Q?", "answers": [{"answer": None}]},
        "'answers' entry 0 'answer' must be a string, got a JSON null",
        id="answer-object-null",
    ),
    pytest.param(
        {"image": "images/dog.png", "question": "Q?", "answer": {"answer": "a"}},
        "'answer' must be a string or a list of answers, got a JSON object",
        id="answer-object",
    ),
    pytest.param(
        {"image": "images/dog.png", "question": "Q\ud800?", "answer": "a"},
        "'question' is not valid UTF-8 text",
        id="surrogate-question",
    ),
    pytest.param(
        {"image": "images/dog.png", "question": "Q?", "answers": ["a", "\udfff"]},
        "'answers' entry 1 is not valid UTF-8 text: it holds a lone surrogate U+DFFF",
        id="surrogate-answer",
    ),
    pytest.param(
        {"image": "images/dog.png", "question": "What is <image>?", "answer": "a"},
        "'question' contains '<image>'",
        id="placeholder-in-question",
    ),
    pytest.param(
        {"image": "images/cat.png", "question": "Q?", "answer": "a"},
        "image file not found",
        id="missing-image",
    ),
    pytest.param(
        {"image": "/etc/passwd", "question": "Q?", "answer": "a"},
        "lies outside the data folder",
        id="absolute-outside",
    ),
]


@pytest.mark.parametrize(("record", "reason"), BAD_RECORDS)
def test_bad_record_is_a_located_data_error(data_dir, record, reason):
    good = {"image": "images/dog.png", "question": "Q?", "answer": "a"}
    path = vqa_file(data_dir, good, record)
    with pytest.raises(DataError) as excinfo:
        VqaDataset([path])
    assert str(excinfo.value).startswith(f"{path} record 1: ")
    assert reason in str(excinfo.value)


def test_skip_mode_keeps_good_records_and_lists_bad_ones(data_dir, caplog):
    good = {"image": "images/dog.png", "question": "Q?", "answer": "a"}
    path = vqa_file(data_dir, good, {"image": "images/dog.png"}, good, "junk")
    dataset = VqaDataset([path], on_bad_sample="skip")
    assert [s.index for s in dataset] == [0, 2]
    assert [(index, reason) for _, index, reason in dataset.skipped] == [
        (1, "record has no 'question' (keys: image)"),
        (3, "a record must be an object with 'image', 'question' and 'answer', got a JSON string"),
    ]
    assert "skipped 2 of 4 records" in caplog.text


def test_file_that_is_not_a_list_is_refused(data_dir, write_json):
    path = write_json(data_dir / "q.json", {"data": []})
    with pytest.raises(DataError, match=r"q\.json: a VQA file must hold a JSON list"):
        VqaDataset([path], on_bad_sample="skip")


# --- through the plugin ----------------------------------------------------------------------


def test_plugin_builds_vqa_with_a_jinja_chat_template(registry, data_dir):
    vqa_file(data_dir, {"image": "images/dog.png", "question": "Q?", "answers": ["a", "b", "b"]})
    template = "{% for m in messages %}[{{ m.role }}] {{ m.content }}\n{% endfor %}"
    options = {
        "data_files": ["vqa.json"],
        "prompt_template": "Short answer: {question}",
        "chat_template": template,
    }
    (sample,) = registry.hook.build_dataset(
        dataset_name="vqa", options=options, base_dir=str(data_dir)
    )
    assert sample.messages[0].content == f"{IMAGE_PLACEHOLDER}\nShort answer: Q?"
    assert sample.messages[1].content == "b"
    assert sample.chat_template == template
    assert sample.dataset == "vqa"


def test_plugin_reports_a_broken_jinja_chat_template_at_build_time(registry, data_dir):
    vqa_file(data_dir, {"image": "images/dog.png", "question": "Q?", "answer": "a"})
    options = {
        "data_files": "vqa.json",
        "label": "vqa#2",
        "chat_template": "{% for m in messages %}{{ m.content }}",
    }
    with pytest.raises(DataError) as excinfo:
        registry.hook.build_dataset(dataset_name="vqa", options=options, base_dir=str(data_dir))
    message = str(excinfo.value)
    assert message.startswith(
        "dataset vqa#2 option chat_template: Jinja chat template syntax error"
    )
    assert "line 1" in message


# -- the official VQA v2 layout: a questions file and an annotations file --------------------------


def write_vqa_v2(folder: Path) -> tuple[Path, Path]:
    (folder / "val2014").mkdir(parents=True)
    for image_id in (9, 42):
        Image.new("RGB", (8, 8)).save(folder / "val2014" / f"COCO_val2014_{image_id:012d}.jpg")
    questions = {
        "questions": [
            {"image_id": 42, "question": "What colour is it?", "question_id": 420},
            {"image_id": 9, "question": "How many?", "question_id": 90},
            {"image_id": 7, "question": "Where?", "question_id": 70},  # image not there
        ]
    }
    annotations = {
        "annotations": [
            {
                "question_id": 420,
                "answers": [{"answer": "red"}, {"answer": "red"}, {"answer": "x"}],
            },
            {"question_id": 90, "answers": [{"answer": "2"}, {"answer": "3"}, {"answer": "3"}]},
            {"question_id": 70, "answers": [{"answer": "left"}]},
        ]
    }
    q = folder / "v2_OpenEnded_mscoco_val2014_questions.json"
    a = folder / "v2_mscoco_val2014_annotations.json"
    q.write_text(json.dumps(questions))
    a.write_text(json.dumps(annotations))
    return q, a


def test_vqa_v2_questions_and_annotations_files_are_joined(tmp_path):
    questions, annotations = write_vqa_v2(tmp_path)
    data = VqaDataset(
        [questions],
        annotations_file=annotations,
        image_pattern="val2014/COCO_val2014_{image_id:012d}.jpg",
        on_bad_sample="skip",
    )
    assert [s.messages[-1].content for s in data] == ["red", "3"]
    assert data[0].images[0].name == "COCO_val2014_000000000042.jpg"
    assert data[0].messages[0].content == "<image>\nWhat colour is it?"
    assert [(index, "not found" in reason) for _, index, reason in data.skipped] == [(2, True)]


def test_vqa_v2_questions_file_without_its_options_says_what_is_missing(tmp_path):
    questions, _ = write_vqa_v2(tmp_path)
    with pytest.raises(
        DataError, match="needs the option\\(s\\) annotations_file and image_pattern"
    ):
        VqaDataset([questions])


def test_vqa_v2_image_pattern_with_other_fields_is_refused(tmp_path):
    questions, annotations = write_vqa_v2(tmp_path)
    with pytest.raises(DataError, match=r"option image_pattern: .*only \{image_id\}"):
        VqaDataset(
            [questions], annotations_file=annotations, image_pattern="{split}/{image_id}.jpg"
        )
