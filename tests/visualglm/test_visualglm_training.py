"""VisualGLM through the real commands: SFT that learns from the pictures (shuffled images cost a
clearly higher loss afterwards), LoRA on ChatGLM then merge-lora, answers from a saved folder."""

from __future__ import annotations

import json

import paddle
import pytest
from safetensors.numpy import load_file

from mixcore.kit.collation import to_tensors

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def colours(tmp_path_factory):
    from mixcore_datasets.synthetic import generate_shapes_dataset

    folder = tmp_path_factory.mktemp("visualglm-colours")
    generate_shapes_dataset(
        folder, seed=5, n_train=128, n_val=8, n_test=32, question_types=("color",)
    )
    return folder


def _config(tmp_path, data, name, **overrides):
    config = {
        "model_name_or_path": "visualglm/tiny",
        "model_options": {"random_init": True, "frozen": []},
        "dataset": {"train": [{"name": "chatml_dataset", "data_files": str(data / "train.json")}]},
        "output_dir": str(tmp_path / name),
        "per_device_train_batch_size": 16,
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


def _mean_loss(bundle, samples):
    from mixcore_visualglm.plugin import plugin

    features = [plugin.encode(s, bundle, 64) for s in samples]
    batch = to_tensors(plugin.collate(features, bundle))
    bundle.model.eval()
    with paddle.no_grad():
        return float(bundle.model(**batch).loss)


def test_trained_model_needs_the_right_pictures(run_mixcore, tmp_path, colours):
    config = _config(tmp_path, colours, "sft", max_steps=150, warmup_steps=10, learning_rate=0.003)
    result = run_mixcore("train", "--config", str(config))
    assert result.returncode == 0, result.stderr[-3000:]

    import dataclasses

    from mixcore_visualglm.plugin import plugin

    from mixcore.registry import build_registry

    bundle = plugin.load(str(tmp_path / "sft"), {})
    samples = build_registry().hook.build_dataset(
        dataset_name="chatml_dataset",
        options={"data_files": "test.json"},
        base_dir=str(colours),
    )
    answers = [s.messages[-1].content for s in samples]
    # Each picture moved to a question whose answer differs (a derangement by answer).
    shuffled = []
    for n, sample in enumerate(samples):
        other = next(
            samples[(n + k) % len(samples)]
            for k in range(1, len(samples))
            if answers[(n + k) % len(samples)] != answers[n]
        )
        shuffled.append(dataclasses.replace(sample, images=other.images))
    right, wrong = _mean_loss(bundle, samples), _mean_loss(bundle, shuffled)
    # PaddleMIX's VisualGLM collator drops the images in training; here they reach the model.
    assert wrong > right + 0.5 and wrong > 2 * right, (right, wrong)


def test_lora_adapter_merges_and_the_merged_folder_answers(run_mixcore, tmp_path, colours):
    config = _config(tmp_path, colours, "lora", lora=True, lora_rank=4, learning_rate=0.01)
    result = run_mixcore("train", "--config", str(config))
    assert result.returncode == 0, result.stderr[-3000:]
    merged = tmp_path / "merged"
    result = run_mixcore("merge-lora", "--lora", str(tmp_path / "lora"), "--output", str(merged))
    assert result.returncode == 0, result.stderr[-3000:]
    weights = load_file(merged / "model.safetensors")
    assert "transformer.layers.0.attention.query_key_value.weight" in weights
    assert not any("lora" in k for k in weights)
    assert json.loads((merged / "config.json").read_text())["model_type"] == "chatglm"
    image = str(colours / "images" / "test_00000.png")
    question = ["--prompt", "What color is the shape?", "--image", image, "--max-new-tokens", "3"]
    merged_answer = run_mixcore("infer", "--model", str(merged), *question)
    adapter_answer = run_mixcore("infer", "--lora", str(tmp_path / "lora"), *question)
    assert merged_answer.returncode == 0, merged_answer.stderr[-3000:]
    assert adapter_answer.returncode == 0, adapter_answer.stderr[-3000:]
    # The merged folder answers as the base model with its adapter does.
    assert merged_answer.stdout == adapter_answer.stdout
