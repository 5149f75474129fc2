"""Qwen-VL as published: a Hugging Face folder is found by its own model_type, its dtype is
honoured where the device computes in it, and multi-turn prompts number images per turn."""

from __future__ import annotations

import json
from pathlib import Path

import paddle
import pytest
from mixcore_qwen_vl.checkpoint import save_checkpoint, write_hf_checkpoint
from mixcore_qwen_vl.plugin import QwenVL, plugin
from PIL import Image

from mixcore.api import IMAGE_PLACEHOLDER, Message, Sample
from mixcore.testing import make_registry


@pytest.fixture
def bundle():
    paddle.seed(7)
    return plugin.load("qwen_vl/tiny", {"random_init": True})


@pytest.fixture
def hf_folder(tmp_path, bundle) -> Path:
    folder = write_hf_checkpoint(
        bundle.model, tmp_path / "Qwen-VL-Chat", tokenizer=bundle.tokenizer
    )
    assert json.loads((folder / "config.json").read_text())["model_type"] == "qwen"
    return folder


def test_a_hugging_face_folder_is_resolved_by_model_type_qwen(hf_folder):
    registry = make_registry(entry_points=True)
    assert registry.resolve_model(str(hf_folder)).name == "qwen_vl"


def test_infer_answers_from_a_hugging_face_folder(hf_folder, run_mixcore, tmp_path):
    image = tmp_path / "red.png"
    Image.new("RGB", (32, 32), (200, 10, 10)).save(image)
    result = run_mixcore(
        "infer",
        "--model",
        str(hf_folder),
        "--prompt",
        "What colour?",
        "--image",
        str(image),
        "--max-new-tokens",
        "3",
        "--json",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "prediction" in result.stdout


def test_a_dtype_can_be_chosen_and_the_checkpoint_records_its_own(tmp_path, bundle):
    folder = tmp_path / "saved"
    save_checkpoint(bundle.model, bundle.tokenizer, bundle.processor, folder)
    assert json.loads((folder / "config.json").read_text())["torch_dtype"] == "float32"
    halved = plugin.load(str(folder), {"dtype": "bfloat16"})
    assert {p.dtype for p in halved.model.parameters()} == {paddle.bfloat16}
    # bfloat16 weights on a CPU are computed in float32 (auto), bit-exactly upcast.
    save_checkpoint(halved.model, halved.tokenizer, halved.processor, tmp_path / "bf16")
    recorded = json.loads((tmp_path / "bf16" / "config.json").read_text())["torch_dtype"]
    assert recorded == "bfloat16"
    auto = plugin.load(str(tmp_path / "bf16"), {})
    assert {p.dtype for p in auto.model.parameters()} == {paddle.float32}


def test_images_are_numbered_from_one_in_each_turn_as_qwen_vl_chat_does(tmp_path, bundle):
    images = []
    for n, colour in enumerate([(255, 0, 0), (0, 255, 0), (0, 0, 255)]):
        images.append(tmp_path / f"{n}.png")
        Image.new("RGB", (16, 16), colour).save(images[-1])
    sample = Sample(
        [
            Message("user", f"{IMAGE_PLACEHOLDER}{IMAGE_PLACEHOLDER}Same shape?"),
            Message("assistant", "No."),
            Message("user", f"{IMAGE_PLACEHOLDER}And this one?"),
            Message("assistant", "A circle."),
        ],
        images=images,
    )
    features = plugin.encode(sample, bundle, 4096)
    text = bundle.tokenizer.decode(features["input_ids"].tolist())
    assert [text.count(f"Picture {n}:") for n in (1, 2, 3)] == [2, 1, 0]
    assert features["images"].shape[0] == 3


def test_validate_time_checks_of_the_options():
    assert QwenVL().check_options("qwen_vl/tiny", {"random_init": True}) == []
    (problem,) = QwenVL().check_options("qwen_vl/tiny", {})
    assert "random_init" in problem
    (problem,) = QwenVL().check_options("Qwen/Qwen-VL-Chat", {})
    assert "never downloads" in problem
