"""Fixtures for end-to-end training tests: generated data and a runner for the real command."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest


@pytest.fixture(scope="session")
def shapes_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small generated shapes dataset (colour questions only, which a tiny model learns fast)."""
    from mixcore_datasets.synthetic import generate_shapes_dataset

    folder = tmp_path_factory.mktemp("shapes")
    generate_shapes_dataset(
        folder, seed=7, n_train=320, n_val=32, n_test=64, question_types=("color",)
    )
    return folder


@pytest.fixture
def write_train_config(tmp_path: Path, shapes_dir: Path) -> Callable[..., Path]:
    """Write a config training qwen_vl/tiny on ``shapes_dir``; keyword arguments override."""

    def write(**overrides: Any) -> Path:
        config = {
            "model_name_or_path": "qwen_vl/tiny",
            "model_options": {"random_init": True},
            "dataset": {
                "train": [{"name": "chatml_dataset", "data_files": str(shapes_dir / "train.json")}]
            },
            "output_dir": str(tmp_path / "out"),
            "per_device_train_batch_size": 16,
            "learning_rate": 0.002,
            "max_steps": 8,
            "logging_steps": 2,
            "save_strategy": "no",
            "max_length": 96,
            "seed": 11,
        }
        config.update(overrides)
        path = tmp_path / "config.json"
        path.write_text(json.dumps(config), encoding="utf-8")
        return path

    return write
