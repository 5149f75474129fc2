"""`mixcore validate` checks the options of every dataset kind of the datasets plugin."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from mixcore.testing import run_cli, write_config

QWEN_JINJA = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def config_with(*entries: dict[str, Any]) -> dict[str, Any]:
    return {
        "model_name_or_path": "qwen_vl/tiny",
        "model_options": {"random_init": True},
        "dataset": {"train": list(entries)},
        "output_dir": "out",
        "do_train": False,  # independent of which capabilities the qwen_vl plugin claims today
    }


def validate(folder: Path, *entries: dict[str, Any]) -> tuple[int, list[str]]:
    (folder / "data.json").write_text("[]")
    path = write_config(folder, config_with(*entries))
    result = run_cli(["validate", "--config", str(path)], entry_points=True)
    return result.exit_code, result.stdout.splitlines()[1:]


def test_new_kinds_with_every_option_validate(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "chat_template.json").write_text('{"query": "{{query}}"}')
    code, issues = validate(
        tmp_path,
        {
            "name": "coco_caption",
            "data_files": ["data.json"],
            "image_root": "images",
            "prompt": "Caption it.",
            "captions": "first",
            "chat_template": "chat_template.json",
        },
        {
            "name": "vqa",
            "data_files": "data.json",
            "image_root": "images",
            "prompt_template": "Question: {question} {{short}}",
            "chat_template": {"conversation": ["{{user}}", "{{bot}}"]},
        },
    )
    assert (code, issues) == (0, [])


def test_misspelled_options_are_reported_with_their_json_path(tmp_path):
    code, issues = validate(
        tmp_path,
        {"name": "coco_caption", "data_files": "data.json", "captoins": "first"},
        {"name": "vqa", "data_files": "data.json", "promt_template": "{question}"},
    )
    assert code == 2
    assert issues == [
        "  $.dataset.train[0].captoins: unknown key \"captoins\" (did you mean 'captions'?)",
        '  $.dataset.train[1].promt_template: unknown key "promt_template" '
        "(did you mean 'prompt_template'?)",
    ]


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        (
            {"name": "coco_caption", "data_files": "data.json", "captions": "all"},
            '$.dataset.train[0].captions: got "all"; allowed: "each", "first"',
        ),
        (
            {"name": "coco_caption", "data_files": "data.json", "prompt": ""},
            "$.dataset.train[0].prompt: must not be empty",
        ),
        (
            {"name": "vqa", "data_files": "data.json", "prompt_template": "{question} {answer}"},
            '$.dataset.train[0].prompt_template: "{question} {answer}" does not match',
        ),
        (
            {"name": "vqa", "data_files": "data.json", "image_root": "nowhere"},
            "$.dataset.train[0].image_root: folder not found",
        ),
        (
            {"name": "vqa", "data_files": "data.json", "chat_template": 5},
            "$.dataset.train[0].chat_template: expected string or object, got integer 5",
        ),
        (
            {"name": "vqa", "data_files": "data.json", "chat_template": {"conversations": []}},
            "$.dataset.train[0].chat_template.conversations: unknown key",
        ),
        (
            {"name": "coco_caption", "data_files": "data.json", "chat_template": "tpl.json"},
            "$.dataset.train[0].chat_template: file not found",
        ),
        (
            {"name": "coco_caption"},
            '$.dataset.train[0]: missing required key "data_files"',
        ),
    ],
)
def test_bad_option_values_are_reported(tmp_path, entry, expected):
    code, issues = validate(tmp_path, entry)
    assert code == 2
    assert len(issues) == 1 and issues[0].strip().startswith(expected), issues


def test_jinja_chat_template_string_is_not_looked_up_as_a_file(tmp_path):
    code, issues = validate(
        tmp_path,
        {"name": "vqa", "data_files": "data.json", "chat_template": QWEN_JINJA},
        {"name": "chatml_dataset", "data_files": "data.json", "chat_template": "{{ messages }}"},
    )
    assert (code, issues) == (0, [])


def test_format_image_root_and_split_options_validate(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "data.jsonl").write_text("")
    code, issues = validate(
        tmp_path,
        {"name": "chatml_dataset", "data_files": "data.jsonl", "image_root": "images"},
        *(
            {"name": "chatml_dataset", "data_files": "data.json", "format": fmt}
            for fmt in ("auto", "chatml", "sharegpt", "llava", "messages", "swift_query")
        ),
        {"name": "coco_caption", "data_files": "data.json", "split": "test"},
        {"name": "coco_caption", "data_files": "data.json", "split": ["train", "restval"]},
    )
    assert (code, issues) == (0, [])


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        (
            {"name": "chatml_dataset", "data_files": "data.json", "format": "alpaca"},
            '$.dataset.train[0].format: got "alpaca"; allowed: "auto", "chatml", "sharegpt", '
            '"llava", "messages", "swift_query"',
        ),
        (
            {"name": "chatml_dataset", "data_files": "data.json", "image_root": "nowhere"},
            "$.dataset.train[0].image_root: folder not found",
        ),
        (
            {"name": "coco_caption", "data_files": "data.json", "split": "training"},
            "$.dataset.train[0].split",
        ),
    ],
)
def test_bad_new_option_values_are_reported(tmp_path, entry, expected):
    code, issues = validate(tmp_path, entry)
    assert code == 2
    assert len(issues) == 1 and issues[0].strip().startswith(expected), issues
