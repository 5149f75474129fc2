"""Fixtures for end-to-end training tests: generated data and a runner for the real command."""

from __future__ import annotations

import json
import re
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


ESCAPE = re.compile(r"\x1b\[(\d*)([A-Za-z])")


def _screen(output: str) -> list[str]:
    """The lines a terminal shows after ``output``: ``\\r`` returns to the start of the line,
    characters overwrite, ``ESC[nA`` moves up and ``ESC[K`` clears to the end of the line."""
    rows = [""]
    row = col = 0
    i = 0
    while i < len(output):
        match = ESCAPE.match(output, i)
        if match:
            n = int(match.group(1) or 1)
            if match.group(2) == "A":
                row = max(0, row - n)
            elif match.group(2) == "K":
                rows[row] = rows[row][:col]
            i = match.end()
            continue
        char = output[i]
        if char == "\r":
            col = 0
        elif char == "\n":
            row, col = row + 1, 0
            rows.extend([""] * (row + 1 - len(rows)))
        else:
            line = rows[row].ljust(col)
            rows[row] = line[:col] + char + line[col + 1 :]
            col += 1
        i += 1
    return [r.rstrip() for r in rows if r.strip()]


@pytest.fixture(scope="session")
def screen() -> Callable[[str], list[str]]:
    """``screen(output)``: the non-empty lines a terminal shows after printing ``output``."""
    return _screen
