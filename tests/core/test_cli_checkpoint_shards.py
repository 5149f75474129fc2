"""`mixcore checkpoint split` / `merge`: a saved tiny Qwen-VL split for 2 and 4 ranks and merged
back gives the original weights bit for bit and a folder that loads; incomplete sets and
non-empty outputs are refused with exit 2."""

from __future__ import annotations

import numpy as np
import pytest

from mixcore.kit.checkpoints import read_weights
from mixcore.testing import run_cli


def _save(tmp_path_factory, preset, options):
    from mixcore.models import load_model_bundle
    from mixcore.registry import build_registry

    folder = tmp_path_factory.mktemp(preset.replace("/", "-"))
    registry = build_registry()
    entry, bundle = load_model_bundle(registry, preset, options=options, seed=3)
    registry.hook.save_model(model_name=entry.name, bundle=bundle, folder=str(folder))
    return folder


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    return _save(tmp_path_factory, "qwen_vl/tiny", {"random_init": True})


@pytest.mark.parametrize(
    ("preset", "options", "degree"),
    [
        ("qwen_vl/tiny", {"random_init": True}, 4),
        # Hugging Face's layout (transposed Linears, q and v biases fused with a zero k bias).
        ("blip2/tiny", {"random_init": True, "language_model": "t5"}, 2),
        ("blip2/tiny", {"random_init": True, "language_model": "opt"}, 4),
        # THUDM's layout (the image side renamed and its fused rows).
        ("visualglm/tiny", {"random_init": True}, 2),
    ],
)
def test_split_then_merge_gives_the_same_checkpoint(
    tmp_path_factory, tmp_path, preset, options, degree
):
    full = _save(tmp_path_factory, preset, options)
    shards = tmp_path / "shards"
    result = run_cli(
        [
            "checkpoint",
            "split",
            "--model",
            str(full),
            "--degree",
            str(degree),
            "--output",
            str(shards),
            "--json",
        ],
        entry_points=True,
    )
    assert result.exit_code == 0, result.stderr
    summary = result.json()
    assert summary["rank_files"] == [
        f"model.tp{r:02d}-of-{degree:02d}.safetensors" for r in range(degree)
    ]
    assert summary["split_tensors"] > 0
    assert "config.json" in summary["other_files"] and not (shards / "model.safetensors").exists()

    merged = tmp_path / "merged"
    result = run_cli(
        ["checkpoint", "merge", "--model", str(shards), "--output", str(merged)],
        entry_points=True,
    )
    assert result.exit_code == 0, result.stderr
    original, back = read_weights(full), read_weights(merged)
    assert original.keys() == back.keys()
    for name, tensor in original.items():
        assert back[name].dtype == tensor.dtype, name
        assert np.array_equal(back[name].data, tensor.data), name
    # The merged folder is an ordinary checkpoint again: its plugin loads it.
    from mixcore.registry import build_registry

    registry = build_registry()
    entry = registry.resolve_model(str(merged))
    bundle = registry.hook.load_model(model_name=entry.name, source=str(merged), options={})
    assert bundle is not None and bundle.model is not None


def test_incomplete_set_and_non_empty_output_are_refused(saved, tmp_path):
    shards = tmp_path / "shards"
    assert (
        run_cli(
            [
                "checkpoint",
                "split",
                "--model",
                str(saved),
                "--degree",
                "4",
                "--output",
                str(shards),
            ],
            entry_points=True,
        ).exit_code
        == 0
    )
    (shards / "model.tp03-of-04.safetensors").unlink()
    result = run_cli(
        ["checkpoint", "merge", "--model", str(shards), "--output", str(tmp_path / "m")],
        entry_points=True,
    )
    assert result.exit_code == 2
    assert "incomplete set of 4 rank files" in result.stderr and "model.tp03-of-04" in result.stderr
    assert "Traceback" not in result.stderr
    result = run_cli(
        ["checkpoint", "split", "--model", str(saved), "--degree", "2", "--output", str(shards)],
        entry_points=True,
    )
    assert result.exit_code == 2 and "exists and is not empty" in result.stderr


def test_a_degree_the_heads_do_not_divide_is_a_usage_error(saved, tmp_path):
    result = run_cli(
        [
            "checkpoint",
            "split",
            "--model",
            str(saved),
            "--degree",
            "3",
            "--output",
            str(tmp_path / "s"),
        ],
        entry_points=True,
    )
    assert result.exit_code == 2
    assert "model 'qwen_vl': the model cannot be split over 3 ranks" in result.stderr
    assert "not divisible by 3" in result.stderr and not (tmp_path / "s").exists()
