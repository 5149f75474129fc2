"""The tiny LLaVA example, installed with pip, works through the real `mixcore` command: listed
with its capabilities, configs using it validated, LoRA-trained on generated pictures, merged,
and the merged folder loaded again to answer questions."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import paddle
import pytest
from paddlenlp.peft import LoRAModel

from mixcore.kit.collation import to_tensors
from mixcore.registry import build_registry

COLOURS = {"red", "green", "blue", "yellow"}


def mixcore(site: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(site), "OMP_NUM_THREADS": "2"}
    return subprocess.run(
        [sys.executable, "-m", "mixcore", *args], capture_output=True, text=True, env=env
    )


def write_config(folder: Path, **overrides) -> Path:
    config = {
        "model_name_or_path": "tiny_llava/tiny",
        "model_options": {"random_init": True},
        "dataset": {
            "train": [
                {
                    "name": "synthetic_shapes",
                    "split": "train",
                    "seed": 3,
                    "train_records": 48,
                    "val_records": 4,
                    "test_records": 8,
                    "image_size": 32,
                    "question_types": ["color"],
                    "folder": "shapes",
                }
            ]
        },
        "output_dir": "lora",
        "per_device_train_batch_size": 8,
        "learning_rate": 0.02,
        "max_steps": 40,
        "logging_steps": 10,
        "save_strategy": "no",
        "max_length": 64,
        "seed": 5,
        "lora": True,
        "lora_rank": 8,
        "lora_alpha": 16,
        "freeze_exclude": ["*projector*"],
        **overrides,
    }
    path = folder / "config.json"
    path.write_text(json.dumps(config), encoding="utf-8")
    return path


def test_listed_with_its_model_capabilities_and_hooks(tiny_llava_site):
    result = mixcore(tiny_llava_site, "plugins", "list", "--json")
    assert result.returncode == 0, result.stderr
    listing = json.loads(result.stdout)
    plugin = next(p for p in listing["plugins"] if p["name"] == "tiny_llava")
    assert plugin["status"] == "ok", plugin["reason"]
    assert plugin["distribution"] == "mixcore-tiny-llava" and plugin["version"] == "0.1.0"
    assert plugin["module"] == "mixcore_tiny_llava.plugin:plugin"
    model = next(m for m in listing["models"] if m["name"] == "tiny_llava")
    assert model["capabilities"] == {"inference": True, "sft": True, "lora": True, "packing": True}
    assert model["aliases"] == ["tiny_llava/tiny"] and model["model_types"] == ["tiny_llava"]
    assert "load_model" in plugin["hooks"] and "generate" in plugin["hooks"]
    assert "parallel_plan" not in plugin["hooks"]  # not implemented, so not a hook


def test_its_entry_module_imports_no_paddle_paddlenlp_numpy_or_pillow(tiny_llava_site):
    code = (
        "import sys, mixcore_tiny_llava.plugin\n"
        "print(sorted({'paddle', 'paddlenlp', 'numpy', 'PIL'} & set(sys.modules)))"
    )
    env = {**os.environ, "PYTHONPATH": str(tiny_llava_site)}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_a_config_using_it_validates_and_misspelt_or_missing_options_are_named(
    tiny_llava_site, tmp_path
):
    config = write_config(tmp_path)
    result = mixcore(tiny_llava_site, "validate", "--config", str(config))
    assert result.returncode == 0, result.stdout + result.stderr
    bad = write_config(tmp_path, model_options={"random_int": True})
    result = mixcore(tiny_llava_site, "validate", "--config", str(bad))
    assert result.returncode == 2
    assert "$.model_options.random_int: unknown key" in result.stdout
    assert "did you mean 'random_init'" in result.stdout
    untrained = write_config(tmp_path, model_options={})  # the preset has no weights
    result = mixcore(tiny_llava_site, "validate", "--config", str(untrained))
    assert result.returncode == 2
    assert "$.model_options: 'tiny_llava/tiny': give a checkpoint folder" in result.stdout


@pytest.mark.slow
def test_lora_training_merge_and_inference_through_the_installed_plugin(
    tiny_llava_site, tiny_llava, tmp_path
):
    config = write_config(tmp_path)
    trained = mixcore(tiny_llava_site, "train", "--config", str(config))
    assert trained.returncode == 0, trained.stderr[-3000:]
    lora = tmp_path / "lora"
    assert (lora / "lora_config.json").is_file()
    history = json.loads((lora / "log_history.json").read_text())
    losses = [h["loss"] for h in history if "loss" in h]
    assert len(losses) == 4 and losses[-1] < losses[0]
    table = {
        line.split()[0]: line.split()[1:] for line in trained.stdout.splitlines() if line.split()
    }
    assert table["vision"][0] == "0"  # frozen by LoRA
    assert table["adapter"][0] != "0" and table["adapter"][1] == "0"  # freeze_exclude: trained
    assert table["language_model"][0] != "0" and table["language_model"][1] != "0"

    merged = tmp_path / "merged"
    result = mixcore(tiny_llava_site, "merge-lora", "--lora", str(lora), "--output", str(merged))
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads((merged / "config.json").read_text())
    assert record["model_type"] == "tiny_llava"
    assert record["mixcore"]["plugin"] == record["mixcore"]["model"] == "tiny_llava"

    predictions = tmp_path / "predictions.jsonl"
    shapes = tmp_path / "shapes"  # generated by the synthetic_shapes dataset during training
    args = (
        "--model",
        str(merged),
        "--data",
        str(shapes / "test.json"),
        "--output",
        str(predictions),
    )
    inferred = mixcore(tiny_llava_site, "infer", *args, "--json")
    assert inferred.returncode == 0, inferred.stderr[-3000:]
    assert json.loads(inferred.stdout)["records"] == 8
    answers = [json.loads(line)["prediction"] for line in predictions.read_text().splitlines()]
    assert len(answers) == 8 and set(answers) <= COLOURS  # it learned to answer with a colour

    # The merged weights are the adapter folded in: same logits as the base with the adapter.
    paddle.seed(5)  # the config's seed rebuilds the random base the adapter was trained on
    base = tiny_llava.load("tiny_llava/tiny", {"random_init": True})
    adapted = LoRAModel.from_pretrained(base.model, str(lora))
    folded = tiny_llava.load(str(merged), {})
    adapted.eval()
    folded.model.eval()
    samples = build_registry().hook.build_dataset(
        dataset_name="chatml_dataset", options={"data_files": "test.json"}, base_dir=str(shapes)
    )
    features = [tiny_llava.encode(sample, folded, 64) for sample in samples[:4]]
    batch = to_tensors(tiny_llava.collate(features, folded))
    with paddle.no_grad():
        expected = adapted(**batch).logits.numpy()
        got = folded.model(**batch).logits.numpy()
    assert np.abs(expected - got).max() <= 1e-5
    paddle.seed(5)
    untrained = tiny_llava.load("tiny_llava/tiny", {"random_init": True}).model
    untrained.eval()
    with paddle.no_grad():  # and the adapter did change the model
        assert np.abs(untrained(**batch).logits.numpy() - got).max() > 1e-3
