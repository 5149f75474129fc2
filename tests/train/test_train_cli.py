"""`mixcore train`, `infer` and `merge-lora` end to end on generated data, as a user runs them."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mixcore.kit.collation import to_tensors

pytestmark = pytest.mark.slow


def losses(output_dir):
    history = json.loads((output_dir / "log_history.json").read_text())
    return {h["step"]: h["loss"] for h in history if "loss" in h}


def test_sft_loss_falls_and_answers_beat_chance(
    run_mixcore, tmp_path, shapes_dir, write_train_config
):
    config = write_train_config(max_steps=120, logging_steps=20)
    trained = run_mixcore("train", "--config", str(config), "--json")
    assert trained.returncode == 0, trained.stderr[-3000:]
    out = tmp_path / "out"
    curve = losses(out)
    assert curve[120] < 0.5 * curve[20]
    assert (out / "loss_curve.png").stat().st_size > 1000
    assert (out / "model.safetensors").is_file() and (out / "qwen.tiktoken").is_file()
    assert "language_model" in trained.stdout and "trainable" in trained.stdout

    preds = tmp_path / "preds.jsonl"
    inferred = run_mixcore(
        "infer",
        "--model",
        str(out),
        "--data",
        str(shapes_dir / "test.json"),
        "--output",
        str(preds),
        "--json",
    )
    assert inferred.returncode == 0, inferred.stderr[-3000:]
    summary = json.loads(inferred.stdout)
    rows = [json.loads(line) for line in preds.read_text().splitlines()]
    assert len(rows) == summary["records"] == 64
    # Four colours: chance is 25%.
    assert summary["exact_match"] >= 0.6, rows[:5]

    record = json.loads((shapes_dir / "test.json").read_text())[0]
    image = record["conversations"][0][0].split("<img>")[1].split("</img>")[0]
    single = run_mixcore(
        "infer",
        "--model",
        str(out),
        "--image",
        str(shapes_dir / image),
        "--prompt",
        "What color is the shape?",
        "--json",
    )
    assert single.returncode == 0, single.stderr[-3000:]
    assert json.loads(single.stdout)["prediction"] in {"red", "green", "blue", "yellow"}


@pytest.mark.parametrize(
    "data",
    [
        {},
        # A weighted mixture, packed: the plan is rebuilt from the seed and continues exactly.
        {
            "mixture": [0.7, 0.3],
            "mixtoken": True,
            "max_length": 256,
            "per_device_train_batch_size": 2,
        },
    ],
    ids=["plain", "mixture-packed"],
)
def test_resume_continues_exactly_like_an_uninterrupted_run(
    run_mixcore, tmp_path, write_train_config, shapes_dir, data
):
    data = dict(data)
    if "mixture" in data:
        train = [
            {
                "name": "chatml_dataset",
                "data_files": str(shapes_dir / "train.json"),
                "label": f"part{n}",
                "weight": weight,
            }
            for n, weight in enumerate(data.pop("mixture"))
        ]
        data["dataset"] = {"train": train, "train_samples": 200}
    common = {"max_steps": 8, "save_strategy": "steps", "save_steps": 4, **data}
    straight = write_train_config(output_dir=str(tmp_path / "straight"), **common)
    assert run_mixcore("train", "--config", str(straight)).returncode == 0
    resumed = write_train_config(
        output_dir=str(tmp_path / "resumed"),
        resume_from_checkpoint=str(tmp_path / "straight" / "checkpoint-4"),
        **common,
    )
    result = run_mixcore("train", "--config", str(resumed))
    assert result.returncode == 0, result.stderr[-3000:]
    a, b = losses(tmp_path / "straight"), losses(tmp_path / "resumed")
    for step in (6, 8):
        assert abs(a[step] - b[step]) <= 1e-6
    from safetensors.numpy import load_file

    wa = load_file(tmp_path / "straight" / "model.safetensors")
    wb = load_file(tmp_path / "resumed" / "model.safetensors")
    assert wa.keys() == wb.keys()
    assert all(np.array_equal(wa[k], wb[k]) for k in wa)


def test_freeze_patterns_leave_the_resampler_trainable(run_mixcore, tmp_path, write_train_config):
    config = write_train_config(
        max_steps=1, freeze_include=["*visual*"], freeze_exclude=["*visual.attn_pool*"]
    )
    result = run_mixcore("train", "--config", str(config))
    assert result.returncode == 0, result.stderr[-3000:]
    table = {
        line.split()[0]: line.split()[1:]
        for line in result.stdout.splitlines()
        if line.split() and line.split()[0] in ("vision", "adapter", "language_model")
    }
    assert table["vision"][0] == "0" and table["vision"][1] != "0"
    assert table["adapter"][0] != "0"
    assert table["language_model"][1] == "0"


def test_lora_adapter_merges_into_identical_logits_and_answers(
    run_mixcore, tmp_path, shapes_dir, write_train_config
):
    base = tmp_path / "base"
    first = write_train_config(output_dir=str(base), max_steps=4)
    assert run_mixcore("train", "--config", str(first)).returncode == 0
    lora_dir = tmp_path / "lora"
    lora = write_train_config(
        model_name_or_path=str(base),
        model_options={},
        output_dir=str(lora_dir),
        max_steps=6,
        lora=True,
        lora_rank=4,
        lora_alpha=8,
        learning_rate=0.01,
        freeze_exclude=["*visual.attn_pool*"],
    )
    trained = run_mixcore("train", "--config", str(lora))
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert (lora_dir / "lora_config.json").is_file()
    table = {
        line.split()[0]: line.split()[1:]
        for line in trained.stdout.splitlines()
        if line.split() and line.split()[0] in ("vision", "adapter", "language_model")
    }
    # LoRA weights in the language model, the resampler trained in full (ln_post and proj,
    # the rest of the adapter, stay frozen), the vision tower frozen.
    assert table["vision"][0] == "0"
    assert table["adapter"][0] != "0"
    assert table["language_model"][0] != "0" and table["language_model"][1] != "0"
    merged = tmp_path / "merged"
    result = run_mixcore("merge-lora", "--lora", str(lora_dir), "--output", str(merged))
    assert result.returncode == 0, result.stderr[-3000:]

    import paddle
    from paddlenlp.peft import LoRAModel

    from mixcore.registry import build_registry

    registry = build_registry()
    load = registry.hook.load_model
    samples = registry.hook.build_dataset(
        dataset_name="chatml_dataset", options={"data_files": "test.json"}, base_dir=str(shapes_dir)
    )
    base_bundle = load(model_name="qwen_vl", source=str(base), options={})
    adapted = LoRAModel.from_pretrained(base_bundle.model, str(lora_dir))
    adapted.eval()
    merged_bundle = load(model_name="qwen_vl", source=str(merged), options={})
    merged_bundle.model.eval()
    features = [
        registry.hook.preprocess_sample(
            model_name="qwen_vl", sample=s, bundle=merged_bundle, max_length=96
        )
        for s in samples[:8]
    ]
    batch = to_tensors(
        registry.hook.collate_batch(model_name="qwen_vl", features=features, bundle=merged_bundle)
    )
    batch.pop("labels")
    with paddle.no_grad():
        expected = adapted(**batch)[0].numpy()
        got = merged_bundle.model(**batch)[0].numpy()
    assert np.abs(expected - got).max() <= 1e-5
    # The adapter changed the model (the comparison is not between two copies of the base).
    with paddle.no_grad():
        plain = load(model_name="qwen_vl", source=str(base), options={}).model
        plain.eval()
        assert np.abs(plain(**batch)[0].numpy() - got).max() > 1e-4

    answers = {}
    for name, args in (
        ("adapter", ["--lora", str(lora_dir)]),
        ("merged", ["--model", str(merged)]),
    ):
        out = tmp_path / f"{name}.jsonl"
        run = run_mixcore(
            "infer", *args, "--data", str(shapes_dir / "test.json"), "--output", str(out)
        )
        assert run.returncode == 0, run.stderr[-3000:]
        answers[name] = [json.loads(line)["prediction"] for line in out.read_text().splitlines()]
    assert answers["adapter"] == answers["merged"]
