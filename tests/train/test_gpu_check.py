"""benchmarks/gpu_check.py: what can be checked without a GPU (its configs, its FLOP arithmetic,
and that it stops at once, with a message, on a machine without one)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from mixcore.config import validate_config
from mixcore.config.parallel_checks import paddle_build
from mixcore.testing import make_registry

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_check.py"


@pytest.fixture(scope="module")
def gpu_check() -> Iterator[ModuleType]:
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # dataclasses look their module up there
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop("gpu_check", None)


@pytest.mark.skipif(paddle_build() != "cpu", reason="a CPU build of Paddle has no GPU to find")
def test_it_stops_at_once_without_a_gpu() -> None:
    start = time.monotonic()
    done = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True)
    assert done.returncode == 2
    assert "needs a CUDA GPU: the installed Paddle is a CPU build" in done.stderr
    assert time.monotonic() - start < 15


def test_the_7b_overrides_give_qwen_vl_chat_7b_shapes(gpu_check: ModuleType) -> None:
    from mixcore_qwen_vl.configuration import PRESETS, config_from_preset

    tiny = PRESETS["qwen_vl/tiny"]["visual"]
    config = config_from_preset("qwen_vl/tiny", **gpu_check.qwen_vl_7b_overrides(tiny))
    config.validate()
    published = PRESETS["qwen-vl/qwen-vl-chat-7b"]
    for key in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads"):
        assert getattr(config, key) == published[key]
    assert config.intermediate_size == 22016  # two MLP halves of 11008
    for key in ("width", "layers", "heads", "image_size", "patch_size", "n_queries"):
        assert config.visual[key] == published["visual"][key]
    assert config.visual["image_start_id"] == tiny["image_start_id"]  # the tiny tokenizer's


def test_every_stage_config_validates(gpu_check: ModuleType, tmp_path: Path) -> None:
    from mixcore_qwen_vl.configuration import PRESETS

    registry = make_registry(entry_points=True)
    for stage in gpu_check.STAGES:
        config = gpu_check.stage_config(stage, tmp_path, PRESETS["qwen_vl/tiny"]["visual"])
        assert validate_config(config, registry, base_dir=tmp_path) == [], stage
    assert sum(gpu_check.STAGE_LIMITS.values()) <= 8 * 60 - 20


def test_flops_and_utilisation_arithmetic(gpu_check: ModuleType) -> None:
    # 6N per token, plus 12 x layers x width x context per token.
    assert gpu_check.transformer_flops(1e9, 1000, 2, 64, 100) == 6e12 + 12 * 2 * 64 * 100 * 1000
    shape = gpu_check.StepShape(
        llm_params=7e9,
        llm_layers=32,
        llm_width=4096,
        vision_params=1.9e9,
        vision_layers=48,
        vision_width=1664,
        patches_per_image=1024,
    )
    tokens, images, context = 4 * 300, 4, 300
    expected = (6 * 7e9 * tokens + 12 * 32 * 4096 * context * tokens) + (
        6 * 1.9e9 * images * 1024 + 12 * 48 * 1664 * 1024 * images * 1024
    )
    assert shape.flops(tokens, images, context) == pytest.approx(expected)
    assert gpu_check.mfu(989e12 * 0.5, 1.0, 989.0) == pytest.approx(0.5)


def test_the_table_shows_missing_numbers_as_dashes(gpu_check: ModuleType) -> None:
    table = gpu_check.format_table(
        [
            {"stage": "tiny-fp32", "status": "ok", "loss": 1.5, "steps": 15, "step_ms": 12.0,
             "tokens_per_s": 52000.0, "wall_s": 20.0},
            {"stage": "7b-lora-bf16", "status": "TIMEOUT (240 s)"},
        ]
    )  # fmt: skip
    header, first, second = table.splitlines()
    assert "MFU (6N)" in header and "tokens/s" in header
    assert "52,000" in first and "1.500" in first
    assert second.split()[:3] == ["7b-lora-bf16", "TIMEOUT", "(240"]
    assert second.rstrip().endswith("-")
