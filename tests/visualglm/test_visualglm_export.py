"""VisualGLM exported with `mixcore export` answers through Paddle Inference as the dynamic
model does: vision features and ChatGLM's logits (2-row positions and the prompt's two-way
mask built inside the program) within 1e-4, the same greedy tokens over a growing answer, and
the same text from `mixcore infer`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import paddle
import pytest
from PIL import Image, ImageDraw

from mixcore import inference
from mixcore.exported import ExportedModel, read_manifest
from mixcore.kit.generation import GenerationConfig, generate_from_features
from mixcore.testing import make_registry, run_cli

MAX_LENGTH = 96


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("visualglm-export")
    registry = make_registry(entry_points=True)
    request = inference.request_model(registry, "visualglm/tiny", None, {"random_init": True})
    bundle = inference.load_requested(registry, request)
    model_dir = root / "model"
    model_dir.mkdir()
    registry.hook.save_model(model_name="visualglm", bundle=bundle, folder=str(model_dir))
    export_dir = root / "export"
    result = run_cli(
        ["export", "--model", str(model_dir), "--output", str(export_dir),
         "--max-length", str(MAX_LENGTH)],
        entry_points=True,
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    image = root / "shapes.png"
    picture = Image.new("RGB", (60, 60), (250, 245, 240))
    ImageDraw.Draw(picture).ellipse((8, 8, 40, 52), fill=(20, 160, 40))
    picture.save(image)
    dynamic = inference.load_requested(registry, inference.request_model(registry, str(model_dir)))
    return {"registry": registry, "model": model_dir, "export": export_dir, "image": image,
            "bundle": dynamic}  # fmt: skip


def test_exported_parts_match_the_dynamic_model(exported):
    model = exported["bundle"].model
    runtime = ExportedModel.open(exported["export"])
    language = read_manifest(exported["export"])["parts"]["language"]["inputs"]
    assert [spec["name"] for spec in language] == ["inputs_embeds", "prompt_length", "positions"]
    rng = np.random.default_rng(2)
    size = int(model.config.vision()["image_size"])
    images = rng.standard_normal((2, 3, size, size)).astype("float32")
    with paddle.no_grad():
        expected = model.image_features(paddle.to_tensor(images)).numpy()
    np.testing.assert_allclose(runtime.image_features(images), expected, atol=1e-4, rtol=0)

    from mixcore_visualglm.chatglm_language import _layout, chatglm_forward

    prompt, total = 17, 25  # a prompt ending [gMASK] <sop>, then 8 answer tokens
    embeds = rng.standard_normal((total, model.get_input_embeddings().weight.shape[1]))
    embeds = embeds.astype("float32")
    positions, keep = _layout(total, prompt - 2, prompt - 1)
    with paddle.no_grad():
        logits = chatglm_forward(
            model.language_model, paddle.to_tensor(embeds[None]), keep[None, None], positions[None]
        ).numpy()[0]
    padded = np.zeros((1, MAX_LENGTH, embeds.shape[1]), dtype="float32")
    padded[0, :total] = embeds
    every = runtime.parts["language"](
        padded, np.array([prompt], dtype="int64"), np.arange(total, dtype="int64")
    )[0]
    np.testing.assert_allclose(every, logits, atol=1e-4, rtol=0)
    assert np.abs(logits).max() > 1e-3


def test_greedy_tokens_over_a_growing_answer_equal_the_dynamic_loop(exported):
    # The tiny random model ends its answers at once; without stop tokens both loops must
    # still agree token by token as the answer grows (positions, mask and cache all matter).
    registry, bundle = exported["registry"], exported["bundle"]
    prompt = inference.single_prompt("What shape is it?", exported["image"])
    features = registry.hook.preprocess_sample(
        model_name="visualglm", sample=prompt, bundle=bundle, max_length=2**31 - 1
    )
    from mixcore_visualglm.chatglm_language import ChatGLMStep

    model = bundle.model
    config = GenerationConfig(max_new_tokens=10, stop_ids=(), vocab_size=len(bundle.tokenizer))
    with paddle.no_grad():
        [dynamic] = generate_from_features(
            ChatGLMStep(model.language_model),
            model.embed_inputs,
            [features],
            bundle.tokenizer.pad_token_id,
            config,
        )
    runtime = ExportedModel.open(exported["export"])
    runtime.manifest["stop_ids"] = []
    tokens = runtime.generate(features["input_ids"], features["images"], 10)
    assert len(dynamic) == 10 and tokens == dynamic


def test_paddle_inference_answers_with_the_dynamic_models_greedy_text(exported):
    question = ["--prompt", "What shape is it?", "--image", str(exported["image"])]

    def infer(*args: str) -> str:
        result = run_cli(["infer", *args, *question, "--json"], entry_points=True)
        assert result.exit_code == 0, result.stderr
        return json.loads(result.stdout)["prediction"]

    assert infer("--engine", "paddle-inference", "--model", str(exported["export"])) == infer(
        "--model", str(exported["model"])
    )


def test_max_length_beyond_the_models_positions_is_refused(exported, tmp_path: Path):
    result = run_cli(
        ["export", "--model", str(exported["model"]), "--output", str(tmp_path / "out"),
         "--max-length", "100000"],
        entry_points=True,
    )  # fmt: skip
    assert result.exit_code == 2 and "max_sequence_length" in result.stderr
    assert list(tmp_path.iterdir()) == []
