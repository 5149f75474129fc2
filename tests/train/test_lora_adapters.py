"""LoRA adapters are safetensors, rebuild exactly their base, and never run a pickle's code."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
from safetensors.numpy import load_file

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def adapter(tmp_path_factory, shapes_dir, run_mixcore):
    """A LoRA adapter trained on the random-init tiny preset (no base folder on disk)."""
    folder = tmp_path_factory.mktemp("adapter")
    config = {
        "model_name_or_path": "qwen_vl/tiny",
        "model_options": {"random_init": True},
        "dataset": {
            "train": [{"name": "chatml_dataset", "data_files": str(shapes_dir / "train.json")}]
        },
        "output_dir": str(folder / "lora"),
        "per_device_train_batch_size": 16,
        "learning_rate": 0.01,
        "max_steps": 4,
        "save_strategy": "no",
        "max_length": 96,
        "seed": 5,
        "lora": True,
        "lora_rank": 4,
        "freeze_exclude": ["*lm_head*"],
    }
    path = folder / "lora.json"
    path.write_text(json.dumps(config))
    result = run_mixcore("train", "--config", str(path))
    assert result.returncode == 0, result.stderr[-3000:]
    return folder / "lora"


def _merge(run_mixcore, lora, out):
    result = run_mixcore("merge-lora", "--lora", str(lora), "--output", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    return load_file(out / "model.safetensors")


def test_adapter_is_safetensors_and_rebuilds_the_same_random_init_base(
    run_mixcore, tmp_path, adapter
):
    names = {p.name for p in adapter.iterdir()}
    assert "peft_model-00001-of-00001.safetensors" in names
    assert not any(n.endswith((".pdparams", ".pth", ".bin")) for n in names)
    first = _merge(run_mixcore, adapter, tmp_path / "m1")
    second = _merge(run_mixcore, adapter, tmp_path / "m2")
    assert first.keys() == second.keys()
    assert all(np.array_equal(first[k], second[k]) for k in first)


def test_a_different_base_is_refused(run_mixcore, tmp_path, adapter):
    other = tmp_path / "adapter"
    import shutil

    shutil.copytree(adapter, other)
    record = json.loads((other / "mixcore_lora_base.json").read_text())
    record["seed"] += 1  # the preset would be built with other random weights
    (other / "mixcore_lora_base.json").write_text(json.dumps(record))
    result = run_mixcore("merge-lora", "--lora", str(other), "--output", str(tmp_path / "m"))
    assert result.returncode == 2
    assert "not the one the adapter was trained on" in result.stderr
    assert not (tmp_path / "m").exists()


def test_paddlenlp_pickled_adapter_loads_as_arrays_and_a_crafted_one_runs_nothing(
    run_mixcore, tmp_path, adapter
):
    import shutil

    import paddle

    legacy = tmp_path / "legacy"
    shutil.copytree(adapter, legacy)
    weights = load_file(legacy / "peft_model-00001-of-00001.safetensors")
    for name in ("peft_model-00001-of-00001.safetensors", "peft_model.safetensors.index.json"):
        (legacy / name).unlink()
    paddle.save(
        {k: paddle.to_tensor(v) for k, v in weights.items()},
        str(legacy / "lora_model_state.pdparams"),
    )
    expected = _merge(run_mixcore, adapter, tmp_path / "from-safetensors")
    got = _merge(run_mixcore, legacy, tmp_path / "from-pickle")
    assert all(np.array_equal(expected[k], got[k]) for k in expected)

    marker = tmp_path / "pwned"

    class RunsCode:
        def __reduce__(self):
            import os

            return (os.system, (f"touch {marker}",))

    (legacy / "lora_model_state.pdparams").write_bytes(pickle.dumps({"x": RunsCode()}))
    for command in (
        ["merge-lora", "--output", str(tmp_path / "evil")],
        ["infer", "--prompt", "hi"],
    ):
        result = run_mixcore(command[0], "--lora", str(legacy), *command[1:])
        assert result.returncode == 2, result.stderr[-2000:]
        assert "could run code" in result.stderr and "Traceback" not in result.stderr
    assert not marker.exists()
