"""The datasets plugin's hooks, called through a registry built from the installed plugins."""

from __future__ import annotations

import json

import pytest

from mixcore.api.errors import DataError
from mixcore.api.records import IMAGE_PLACEHOLDER
from mixcore.registry import build_registry


@pytest.fixture(scope="module")
def registry():
    return build_registry(environ={"MIXCORE_PLUGINS": "datasets"})


def test_datasets_plugin_registers_every_kind_with_described_options(registry):
    assert registry.plugin("datasets").ok
    kinds = {"chatml_dataset", "coco_caption", "vqa", "coco_vqa", "synthetic_shapes"}
    assert kinds <= set(registry.datasets)
    for name in kinds:
        options = registry.datasets[name].options_schema["properties"]
        undescribed = [key for key, schema in options.items() if not schema.get("description")]
        assert undescribed == [], name


def test_synthetic_shapes_generates_once_and_reads_splits(registry, tmp_path):
    options = {"split": "val", "seed": 3, "train_records": 8, "val_records": 4, "test_records": 4}
    samples = registry.hook.build_dataset(
        dataset_name="synthetic_shapes", options=options, base_dir=str(tmp_path)
    )
    assert len(samples) == 4
    first = samples[0]
    assert first.images[0].is_file() and IMAGE_PLACEHOLDER in first.messages[0].content
    assert first.dataset == "synthetic_shapes"
    marker = next(tmp_path.glob(".mixcore-data/*/.complete"))
    stamp = marker.stat().st_mtime_ns
    again = registry.hook.build_dataset(
        dataset_name="synthetic_shapes",
        options={**options, "split": "train"},
        base_dir=str(tmp_path),
    )
    assert len(again) == 8 and marker.stat().st_mtime_ns == stamp


def test_chatml_dataset_reads_paddlemix_records_and_names_bad_ones(registry, tmp_path):
    (tmp_path / "a.png").write_bytes(b"")
    records = [
        {"image": "a.png", "conversations": [["What is it?", "a cat"]]},
        {"conversations": []},
    ]
    (tmp_path / "train.json").write_text(json.dumps(records))
    with pytest.raises(DataError, match=r"train.json record 1"):
        registry.hook.build_dataset(
            dataset_name="chatml_dataset",
            options={"data_files": "train.json"},
            base_dir=str(tmp_path),
        )
    kept = registry.hook.build_dataset(
        dataset_name="chatml_dataset",
        options={"data_files": ["train.json"], "on_bad_sample": "skip", "label": "cats"},
        base_dir=str(tmp_path),
    )
    assert len(kept) == 1 and kept[0].dataset == "cats"
    assert len(kept.skipped) == 1 and kept.skipped[0][1] == 1
