"""BLIP-2 exported with `mixcore export` (OPT: causal; Flan-T5: encoder and decoder) answers
through Paddle Inference as the dynamic model does: vision features, encoder states and logits
within 1e-4 through the predictor, and the same greedy text from `mixcore infer`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import paddle
import pytest
from PIL import Image, ImageDraw

from mixcore import inference
from mixcore.exported import ExportedModel, read_manifest
from mixcore.testing import make_registry, run_cli

MAX_LENGTH = 64


@pytest.fixture(scope="module", params=["opt", "t5"])
def exported(request, tmp_path_factory: pytest.TempPathFactory) -> dict:
    family = request.param
    root = tmp_path_factory.mktemp(f"blip2-{family}-export")
    registry = make_registry(entry_points=True)
    options = {"random_init": True, "language_model": family}
    bundle = inference.load_requested(
        registry, inference.request_model(registry, "blip2/tiny", None, options)
    )
    model_dir = root / "model"
    model_dir.mkdir()
    registry.hook.save_model(model_name="blip2", bundle=bundle, folder=str(model_dir))
    export_dir = root / "export"
    result = run_cli(
        ["export", "--model", str(model_dir), "--output", str(export_dir),
         "--max-length", str(MAX_LENGTH)],
        entry_points=True,
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    image = root / "shapes.png"
    picture = Image.new("RGB", (64, 72), (240, 240, 250))
    ImageDraw.Draw(picture).rectangle((12, 10, 50, 40), fill=(30, 30, 200))
    picture.save(image)
    model = inference.load_requested(registry, inference.request_model(registry, str(model_dir)))
    return {"family": family, "model": model_dir, "export": export_dir, "image": image,
            "dynamic": model.model}  # fmt: skip


def test_exported_parts_match_the_dynamic_model(exported):
    model, family = exported["dynamic"], exported["family"]
    runtime = ExportedModel.open(exported["export"])
    manifest = read_manifest(exported["export"])
    assert manifest["decoding"] == ("causal" if family == "opt" else "encoder_decoder")
    rng = np.random.default_rng(1)
    images = rng.standard_normal((2, 3, 56, 56)).astype("float32")
    with paddle.no_grad():
        expected = model.image_features(paddle.to_tensor(images)).numpy()
    np.testing.assert_allclose(runtime.image_features(images), expected, atol=1e-4, rtol=0)

    ids = rng.integers(3, 200, size=21)
    embeds = runtime.embed(ids)
    with paddle.no_grad():
        table = model.get_input_embeddings()(paddle.to_tensor(ids[None]))
        np.testing.assert_allclose(embeds, table.numpy()[0], atol=1e-6, rtol=0)
        mask = paddle.ones([1, len(ids)], dtype="int64")
        if family == "opt":
            from mixcore_blip2.opt_language import opt_forward

            logits = opt_forward(model.language_model, table, mask).numpy()[0]
            padded = np.zeros((1, MAX_LENGTH, embeds.shape[1]), dtype="float32")
            padded[0, : len(ids)] = embeds
            every = runtime.parts["language"](padded, np.arange(len(ids), dtype="int64"))[0]
        else:
            from mixcore_blip2.t5_language import t5_forward

            decoder_ids = np.array([[0, 7, 9, 11]], dtype="int64")
            logits = t5_forward(
                model.language_model, table, mask, paddle.to_tensor(decoder_ids)
            ).numpy()[0]
            states = model.language_model.t5.encoder(
                inputs_embeds=table, attention_mask=mask, return_dict=True
            ).last_hidden_state.numpy()
            encoded = runtime.parts["encoder"](embeds[None])
            np.testing.assert_allclose(encoded, states, atol=1e-4, rtol=0)
            every = runtime.parts["decoder"](decoder_ids, encoded, np.arange(4, dtype="int64"))[0]
    assert every.shape == logits.shape
    np.testing.assert_allclose(every, logits, atol=1e-4, rtol=0)
    assert np.abs(logits).max() > 1e-3


def _infer(*args: str) -> str:
    result = run_cli(["infer", *args, "--max-new-tokens", "10", "--json"], entry_points=True)
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)["prediction"]


def test_paddle_inference_answers_with_the_dynamic_models_greedy_text(exported):
    question = ["--prompt", "What is in the picture?", "--image", str(exported["image"])]
    dynamic_text = _infer("--model", str(exported["model"]), *question)
    exported_text = _infer(
        "--engine", "paddle-inference", "--model", str(exported["export"]), *question
    )
    assert exported_text == dynamic_text and dynamic_text


def test_a_stage_one_model_is_refused_with_the_reason(tmp_path: Path):
    result = run_cli(
        ["export", "--model", "blip2/tiny", "--model-options",
         '{"random_init": true, "task": "pretrain"}', "--output", str(tmp_path / "out")],
        entry_points=True,
    )  # fmt: skip
    assert result.exit_code == 2, result.stderr
    assert "stage-1" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir()] == []  # the staging folder is gone too
