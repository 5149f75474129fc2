"""A trained Qwen-VL folder exported with `mixcore export` answers through Paddle Inference as
the dynamic model does: the vision features and the language model's logits agree within 1e-4
through the predictor, and `mixcore infer --engine paddle-inference` writes the same greedy
text as the dynamic `mixcore infer`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import paddle
import pytest
from PIL import Image, ImageDraw

from mixcore import inference
from mixcore.exported import MANIFEST_FILE, ExportedModel, read_manifest
from mixcore.testing import make_registry, run_cli

MAX_LENGTH = 96


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("qwen-vl-export")
    registry = make_registry(entry_points=True)
    request = inference.request_model(registry, "qwen_vl/tiny", None, {"random_init": True})
    bundle = inference.load_requested(registry, request)
    model_dir = root / "model"  # a final model folder, as `mixcore train` writes it
    model_dir.mkdir()
    registry.hook.save_model(model_name="qwen_vl", bundle=bundle, folder=str(model_dir))
    export_dir = root / "export"
    result = run_cli(
        ["export", "--model", str(model_dir), "--output", str(export_dir),
         "--max-length", str(MAX_LENGTH)],
        entry_points=True,
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    image = root / "shapes.png"
    picture = Image.new("RGB", (80, 64), (250, 250, 240))
    ImageDraw.Draw(picture).ellipse((10, 8, 60, 50), fill=(200, 30, 30))
    picture.save(image)
    return {"model": model_dir, "export": export_dir, "image": image}


@pytest.fixture(scope="module")
def dynamic(exported: dict[str, Path]):
    registry = make_registry(entry_points=True)
    request = inference.request_model(registry, str(exported["model"]))
    return inference.load_requested(registry, request).model


def test_the_export_folder_is_self_contained_and_complete(exported):
    manifest = read_manifest(exported["export"])
    assert manifest["model"] == "qwen_vl" and manifest["decoding"] == "causal"
    assert set(manifest["parts"]) == {"embed", "vision", "language"}
    language = manifest["parts"]["language"]["inputs"]
    assert language[0]["shape"] == [1, MAX_LENGTH, 64]  # QWen traces with fixed shapes only
    processing = exported["export"] / "processing"
    assert {"qwen.tiktoken", "config.json", "preprocessor_config.json"} <= {
        p.name for p in processing.iterdir()
    }
    assert not list(exported["export"].parent.glob(".export.partial-export-*"))


def test_exported_vision_and_language_parts_match_the_dynamic_model(exported, dynamic):
    runtime = ExportedModel.open(exported["export"])
    rng = np.random.default_rng(0)
    images = rng.standard_normal((3, 3, 56, 56)).astype("float32")
    with paddle.no_grad():
        expected = dynamic.visual(paddle.to_tensor(images)).numpy()
    features = runtime.image_features(images)  # the part takes one image at a time
    assert features.shape == expected.shape
    np.testing.assert_allclose(features, expected, atol=1e-4, rtol=0)

    ids = rng.integers(0, 700, size=40)
    embeds = runtime.embed(ids)
    with paddle.no_grad():
        table = dynamic.get_input_embeddings()(paddle.to_tensor(ids[None])).numpy()[0]
        logits = dynamic.llm(
            inputs_embeds=paddle.to_tensor(table[None]), use_cache=False, return_dict=True
        ).logits.numpy()[0]
    np.testing.assert_allclose(embeds, table, atol=1e-6, rtol=0)
    padded = np.zeros((1, MAX_LENGTH, embeds.shape[1]), dtype="float32")
    padded[0, : len(ids)] = embeds
    every = runtime.parts["language"](padded, np.arange(len(ids), dtype="int64"))[0]
    assert every.shape == logits.shape
    np.testing.assert_allclose(every, logits, atol=1e-4, rtol=0)
    assert np.abs(logits).max() > 1e-3  # the comparison is not between zeros


def _infer(*args: str) -> str:
    result = run_cli(["infer", *args, "--max-new-tokens", "12", "--json"], entry_points=True)
    assert result.exit_code == 0, result.stderr
    return result.json()["prediction"]


def test_paddle_inference_answers_with_the_dynamic_models_greedy_text(exported):
    question = ["--prompt", "What shape is in the picture?", "--image", str(exported["image"])]
    dynamic_text = _infer("--model", str(exported["model"]), *question)
    exported_text = _infer(
        "--engine", "paddle-inference", "--model", str(exported["export"]), *question
    )
    assert exported_text == dynamic_text
    assert dynamic_text  # twelve new tokens of a random model: some text


def test_overwrite_replaces_an_earlier_export_and_nothing_else(exported, tmp_path):
    target = tmp_path / "again"
    shutil.copytree(exported["export"], target)
    (target / "notes.txt").write_text("mine")
    args = ["export", "--model", str(exported["model"]), "--output", str(target), "--overwrite",
            "--max-length", "48"]  # fmt: skip
    refused = run_cli(args, entry_points=True)
    assert refused.exit_code == 2 and "notes.txt" in refused.stderr
    (target / "notes.txt").unlink()
    result = run_cli([*args, "--json"], entry_points=True)
    assert result.exit_code == 0, result.stderr
    assert json.loads((target / MANIFEST_FILE).read_text())["max_length"] == 48
    assert [p.name for p in tmp_path.iterdir()] == ["again"]  # no staging or old folder left


def test_a_prompt_longer_than_the_export_takes_is_refused_not_cut(exported):
    long = " ".join(["circle"] * 200)
    result = run_cli(
        ["infer", "--engine", "paddle-inference", "--model", str(exported["export"]),
         "--prompt", long],
        entry_points=True,
    )  # fmt: skip
    assert result.exit_code == 2
    assert "--max-length" in result.stderr and "Traceback" not in result.stderr
