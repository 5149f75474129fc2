"""Config checks of a streamed dataset.train: max_steps, all-or-none, weights, workers, globs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from mixcore.config import validate_config
from mixcore.registry import Registry
from mixcore.testing import make_registry


@pytest.fixture(scope="module")
def registry() -> Registry:
    return make_registry(entry_points=True)


def config(**overrides: Any) -> dict[str, Any]:
    base = {
        "model_name_or_path": "qwen_vl/tiny",
        "model_options": {"random_init": True},
        "dataset": {
            "train": [
                {"name": "chatml_dataset", "data_files": "shards/*.jsonl", "streaming": True},
                {
                    "name": "chatml_dataset",
                    "data_files": ["web/a.tar"],
                    "streaming": True,
                    "weight": 2,
                },
            ],
            "stream_buffer": 64,
        },
        "output_dir": "out",
        "max_steps": 10,
    }
    base.update(overrides)
    return base


@pytest.fixture
def data(tmp_path: Path) -> Path:
    (tmp_path / "shards").mkdir()
    (tmp_path / "shards" / "0.jsonl").write_text(json.dumps({"conversations": [["q", "a"]]}))
    (tmp_path / "web").mkdir()
    (tmp_path / "web" / "a.tar").write_bytes(b"")
    return tmp_path


def messages(issues, path):
    return [i.message for i in issues if i.path == path]


def test_a_streamed_config_with_globs_and_tar_shards_is_valid(registry, data):
    assert validate_config(config(), registry, base_dir=data) == []


def test_streaming_without_max_steps_says_what_to_set(registry, data):
    (message,) = messages(
        validate_config(config(max_steps=-1), registry, base_dir=data), "$.max_steps"
    )
    assert "dataset.train[0].streaming is true" in message
    assert "set max_steps" in message


def test_streaming_is_all_or_none_and_mixes_by_weight(registry, data):
    cfg = config()
    cfg["dataset"]["train"][1].pop("streaming")
    cfg["dataset"]["train"][0]["num_samples"] = 5
    cfg["dataset"]["train_samples"] = 100
    cfg["dataset"]["eval"] = [
        {"name": "chatml_dataset", "data_files": "shards/*.jsonl", "streaming": True}
    ]
    issues = validate_config(cfg, registry, base_dir=data)
    assert "either every dataset.train entry streams" in messages(issues, "$.dataset.train[1]")[0]
    assert "give weight instead" in messages(issues, "$.dataset.train[0].num_samples")[0]
    assert messages(issues, "$.dataset.train_samples")
    assert "only dataset.train can stream" in messages(issues, "$.dataset.eval[0].streaming")[0]


def test_streaming_needs_the_loader_in_the_training_process(registry, data):
    issues = validate_config(config(dataloader_num_workers=2), registry, base_dir=data)
    assert "set dataloader_num_workers to 0" in messages(issues, "$.dataloader_num_workers")[0]


def test_a_glob_matching_no_file_is_reported_at_its_path(registry, data):
    cfg = config()
    cfg["dataset"]["train"][0]["data_files"] = "nothing/*.jsonl"
    (message,) = messages(
        validate_config(cfg, registry, base_dir=data), "$.dataset.train[0].data_files"
    )
    assert message.startswith(f"no file matches {data / 'nothing/*.jsonl'}")
