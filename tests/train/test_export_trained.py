"""`mixcore export` takes what `mixcore train` writes: the final model in output_dir and a LoRA
run (refused as --model with the hint, merged on the fly with --lora);
each export answers through Paddle Inference with the dynamic model's greedy text."""

from __future__ import annotations

import json

import pytest

from mixcore.testing import run_cli

pytestmark = pytest.mark.slow


def _train(tmp_path, shapes_dir, name, **extra):
    config = {
        "model_name_or_path": "qwen_vl/tiny",
        "model_options": {"random_init": True},
        "dataset": {
            "train": [{"name": "chatml_dataset", "data_files": str(shapes_dir / "train.json")}]
        },
        "output_dir": str(tmp_path / name),
        "per_device_train_batch_size": 8,
        "learning_rate": 0.005,
        "max_steps": 2,
        "max_length": 96,
        "seed": 3,
        **extra,
    }
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(config))
    result = run_cli(["train", "--config", str(path)], entry_points=True)
    assert result.exit_code == 0, result.stderr[-3000:]
    return tmp_path / name


def _answer(*args, image):
    question = ["--prompt", "What colour is the shape?", "--image", str(image)]
    result = run_cli(
        ["infer", *args, *question, "--max-new-tokens", "6", "--json"], entry_points=True
    )
    assert result.exit_code == 0, result.stderr[-3000:]
    return json.loads(result.stdout)["prediction"]


def _export(*args):
    result = run_cli(["export", *args, "--max-length", "96"], entry_points=True)
    return result


def test_the_final_model_of_a_run_exports_and_answers_alike(tmp_path, shapes_dir):
    run = _train(tmp_path, shapes_dir, "sft", save_strategy="no")
    image = next((shapes_dir / "images").glob("*.png"))
    for source in (run,):
        target = tmp_path / f"export-{source.name}"
        result = _export("--model", str(source), "--output", str(target))
        assert result.exit_code == 0, result.stderr[-3000:]
        dynamic = _answer("--model", str(source), image=image)
        assert _answer("--engine", "paddle-inference", "--model", str(target), image=image) == (
            dynamic
        )
    answers = {}
    for engine, model in (("dynamic", run), ("paddle-inference", target)):
        out = tmp_path / f"{engine}.jsonl"
        result = run_cli(
            ["infer", "--engine", engine, "--model", str(model), "--max-new-tokens", "6",
             "--data", str(shapes_dir / "test.json"), "--output", str(out), "--json"],
            entry_points=True,
        )  # fmt: skip
        assert result.exit_code == 0, result.stderr[-3000:]
        answers[engine] = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(answers["dynamic"]) == 64
    assert answers["paddle-inference"] == answers["dynamic"]


def test_a_lora_run_is_merged_on_the_fly_and_refused_as_a_model(tmp_path, shapes_dir):
    adapter = _train(tmp_path, shapes_dir, "lora", lora=True, lora_rank=4, save_strategy="no")
    refused = _export("--model", str(adapter), "--output", str(tmp_path / "nope"))
    assert refused.exit_code == 2 and "merge-lora" in refused.stderr
    assert not (tmp_path / "nope").exists()
    target = tmp_path / "export-lora"
    result = _export("--lora", str(adapter), "--output", str(target))
    assert result.exit_code == 0, result.stderr[-3000:]
    image = next((shapes_dir / "images").glob("*.png"))
    dynamic = _answer("--lora", str(adapter), image=image)
    assert _answer("--engine", "paddle-inference", "--model", str(target), image=image) == dynamic
