"""BLIP-2 through the real commands: SFT with each language model (questions for OPT, captions
for T5), LoRA then merge-lora, and stage-1 pretraining whose three losses reach the log and the
loss curve."""

from __future__ import annotations

import json

import numpy as np
import pytest
from safetensors.numpy import load_file

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    from mixcore_datasets.synthetic import generate_shapes_dataset

    folder = tmp_path_factory.mktemp("blip2-shapes")
    generate_shapes_dataset(folder, seed=3, n_train=48, n_val=8, n_test=8)
    captions = tmp_path_factory.mktemp("blip2-captions")
    generate_shapes_dataset(captions, seed=3, n_train=32, n_val=4, n_test=4, format="coco")
    return folder, captions


def _config(tmp_path, shapes, name, **overrides):
    folder, _ = shapes
    config = {
        "model_name_or_path": "blip2/tiny",
        "model_options": {"random_init": True},
        "dataset": {
            "train": [{"name": "chatml_dataset", "data_files": str(folder / "train.json")}]
        },
        "output_dir": str(tmp_path / name),
        "per_device_train_batch_size": 8,
        "learning_rate": 0.002,
        "max_steps": 4,
        "logging_steps": 2,
        "save_strategy": "no",
        "max_length": 64,
        "seed": 3,
    }
    config.update(overrides)
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(config))
    return path


@pytest.mark.parametrize(("family", "data"), [("opt", "vqa"), ("t5", "captions")])
def test_sft_trains_and_the_saved_model_answers(run_mixcore, tmp_path, shapes, family, data):
    extra = {}
    if data == "captions":
        captions = shapes[1] / "train.json"
        extra["dataset"] = {"train": [{"name": "coco_caption", "data_files": str(captions)}]}
    config = _config(
        tmp_path,
        shapes,
        f"sft-{family}",
        model_options={"random_init": True, "language_model": family},
        **extra,
    )
    result = run_mixcore("train", "--config", str(config))
    assert result.returncode == 0, result.stderr[-3000:]
    # Default freezing: the vision encoder and the language model stay as they were.
    assert "vision" in result.stdout and "language_model" in result.stdout
    report = {
        line.split()[0]: line.split()[1:3]
        for line in result.stdout.splitlines()
        if line.split() and line.split()[0] in ("vision", "qformer", "language_model")
    }
    assert report["vision"][0] == "0" and report["language_model"][0] == "0"
    assert report["qformer"][1] == "0"
    out = tmp_path / f"sft-{family}"
    answer = run_mixcore(
        "infer",
        "--model",
        str(out),
        "--prompt",
        "What shape is in the picture?",
        "--image",
        str(shapes[0] / "images" / "test_00000.png"),
        "--max-new-tokens",
        "3",
    )
    assert answer.returncode == 0, answer.stderr[-3000:]


def test_lora_adapter_merges_into_a_standalone_checkpoint(run_mixcore, tmp_path, shapes):
    config = _config(tmp_path, shapes, "lora", lora=True, lora_rank=4, learning_rate=0.01)
    result = run_mixcore("train", "--config", str(config))
    assert result.returncode == 0, result.stderr[-3000:]
    merged = tmp_path / "merged"
    result = run_mixcore("merge-lora", "--lora", str(tmp_path / "lora"), "--output", str(merged))
    assert result.returncode == 0, result.stderr[-3000:]
    weights = load_file(merged / "model.safetensors")
    assert any(
        k.startswith("language_model.model.decoder.layers.0.self_attn.q_proj") for k in weights
    )
    assert not any("lora" in k for k in weights)
    assert json.loads((merged / "config.json").read_text())["model_type"] == "blip-2"


def test_pretraining_logs_its_three_losses(run_mixcore, tmp_path, shapes):
    _, captions = shapes
    config = _config(
        tmp_path,
        shapes,
        "pretrain",
        model_options={"random_init": True, "task": "pretrain", "frozen": []},
        dataset={
            "train": [
                {
                    "name": "coco_caption",
                    "data_files": str(captions / "train.json"),
                }
            ]
        },
        max_steps=6,
        max_length=32,
    )
    result = run_mixcore("train", "--config", str(config))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "itc" in result.stdout and "itg" in result.stdout
    history = json.loads((tmp_path / "pretrain" / "log_history.json").read_text())
    logged = [h for h in history if "loss/itm" in h]
    assert len(logged) == 3
    for row in logged:
        parts = row["loss/itc"] + row["loss/itm"] + row["loss/itg"]
        assert np.isclose(parts, row["loss"], rtol=1e-4), row
    assert (tmp_path / "pretrain" / "loss_curve.png").is_file()
    saved = json.loads((tmp_path / "pretrain" / "config.json").read_text())
    assert saved["architectures"] == ["Blip2QFormerPretraining"]
