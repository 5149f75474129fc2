"""BLIP-2 computes what Hugging Face's computes: a tiny random ``Blip2ForConditionalGeneration``
saved by transformers (PyTorch CPU, in its own venv) loads through mixcore's loader, and its
logits on the same image and text match within 1e-4 (fp32), for OPT and for T5; and a folder
mixcore saves loads in transformers with no missing or unexpected weight and the same logits."""

from __future__ import annotations

import shutil

import numpy as np
import paddle
import pytest
from mixcore_blip2.checkpoint import assign_hf_weights, build_model, config_from_fields

from mixcore.kit.checkpoints import read_config, read_weights

ATOL = 1e-4


def _load(folder):
    config = config_from_fields(read_config(folder))
    model = build_model(config, random_init=False)
    assign_hf_weights(model, read_weights(folder), str(folder))
    model.eval()
    return model


def _logits(model, ref):
    inputs = {
        "input_ids": paddle.to_tensor(ref["input_ids"]),
        "images": paddle.to_tensor(ref["pixel_values"]),
        "attention_mask": paddle.to_tensor(ref["attention_mask"]),
    }
    if "decoder_input_ids" in ref:
        inputs["decoder_input_ids"] = paddle.to_tensor(ref["decoder_input_ids"])
    with paddle.no_grad():
        return model(**inputs).logits.numpy()


@pytest.mark.parametrize("variant", ["opt", "t5"])
def test_logits_match_hugging_face(hf_blip2_reference, variant):
    folder = hf_blip2_reference / variant
    ref = np.load(folder / "reference.npz")
    model = _load(folder)
    logits = _logits(model, ref)
    assert logits.shape == ref["logits"].shape
    if variant == "opt":
        real = ref["attention_mask"].astype(bool)
        diff = np.abs(logits - ref["logits"])[real]
    else:
        diff = np.abs(logits - ref["logits"])
    assert diff.max() <= ATOL, f"max |logit difference| {diff.max():.2e}"
    # The comparison has teeth: the logits are far from zero and differ between samples.
    assert np.abs(ref["logits"]).max() > 1.0


@pytest.mark.parametrize("variant", ["opt", "t5"])
def test_intermediate_features_match(hf_blip2_reference, variant):
    folder = hf_blip2_reference / variant
    ref = np.load(folder / "reference.npz")
    model = _load(folder)
    pixels = paddle.to_tensor(ref["pixel_values"])
    with paddle.no_grad():
        vision = model.vision_model(pixels).numpy()
        queries = model.query_features(pixels).numpy()
        projected = model.image_features(pixels).numpy()
    np.testing.assert_allclose(vision, ref["vision_last_hidden_state"], atol=ATOL)
    np.testing.assert_allclose(queries, ref["qformer_last_hidden_state"], atol=ATOL)
    np.testing.assert_allclose(projected, ref["language_model_inputs"], atol=ATOL)


@pytest.mark.parametrize("variant", ["opt", "t5"])
def test_torch_bin_copy_loads_the_same_weights(hf_blip2_reference, variant):
    safe = _load(hf_blip2_reference / variant)
    binary = _load(hf_blip2_reference / f"{variant}-bin")
    for (name, a), (_, b) in zip(
        safe.state_dict().items(), binary.state_dict().items(), strict=True
    ):
        assert np.array_equal(a.numpy(), b.numpy()), name


def test_published_split_vision_biases_load(hf_blip2_reference, tmp_path):
    """Checkpoints written by transformers 4 store q_bias / v_bias instead of the fused bias."""
    from mixcore_blip2.checkpoint import split_fused_biases

    from mixcore.kit.checkpoints import write_weights

    source = hf_blip2_reference / "opt"
    folder = tmp_path / "published-layout"
    folder.mkdir()
    shutil.copy(source / "config.json", folder / "config.json")
    stored = split_fused_biases(read_weights(source))
    assert any(name.endswith("self_attn.q_bias") for name in stored)
    write_weights(folder, stored, shards=3)
    ref = np.load(source / "reference.npz")
    a, b = _logits(_load(source), ref), _logits(_load(folder), ref)
    assert np.array_equal(a, b)


#: Run inside the torch venv: load each saved folder with transformers, print the largest
#: logit difference from what mixcore computed on the same inputs.
_TRANSFORMERS_SIDE = """
import json, sys
import numpy as np, torch
from transformers import Blip2ForConditionalGeneration
folder, arrays = sys.argv[1], np.load(sys.argv[2])
model, info = Blip2ForConditionalGeneration.from_pretrained(folder, output_loading_info=True)
names = ("input_ids", "attention_mask", "pixel_values", "decoder_input_ids")
inputs = {k: torch.from_numpy(arrays[k]) for k in names if k in arrays}
with torch.no_grad():
    logits = model.eval()(**inputs).logits.numpy()
problems = {k: v for k, v in info.items() if v}
print(json.dumps({"diff": float(np.abs(logits - arrays["logits"]).max()), "problems": str(problems)}))
"""


@pytest.mark.parametrize("variant", ["opt", "t5"])
def test_a_saved_folder_gives_the_same_logits_in_transformers(
    hf_blip2_reference, tmp_path, variant
):
    import json
    import os
    import subprocess

    from mixcore.registry import build_registry

    registry = build_registry()
    bundle = registry.hook.load_model(
        model_name="blip2",
        source="blip2/tiny",
        options={"random_init": True, "language_model": variant},
    )
    folder = tmp_path / variant
    registry.hook.save_model(model_name="blip2", bundle=bundle, folder=str(folder))
    model = bundle.model
    model.eval()
    rng = np.random.default_rng(0)
    n, placeholder = model.config.num_query_tokens, model.config.image_token_index
    ids = np.concatenate(
        [np.full((2, n), placeholder), rng.integers(4, 700, size=(2, 6))], axis=1
    ).astype("int64")
    arrays = {
        "input_ids": ids,
        "attention_mask": np.ones_like(ids),
        "pixel_values": rng.standard_normal((2, 3, 56, 56)).astype("float32"),
    }
    if variant == "t5":
        decoder = rng.integers(4, 700, size=(2, 4)).astype("int64")
        decoder[:, 0] = 0
        arrays["decoder_input_ids"] = decoder
    mine = {
        ("images" if k == "pixel_values" else k): paddle.to_tensor(v) for k, v in arrays.items()
    }
    with paddle.no_grad():
        arrays["logits"] = model(**mine).logits.numpy()
    np.savez(tmp_path / "inputs.npz", **arrays)
    python = hf_blip2_reference.parent / "venv" / "bin" / "python"
    result = subprocess.run(
        [str(python), "-c", _TRANSFORMERS_SIDE, str(folder), str(tmp_path / "inputs.npz")],
        capture_output=True,
        text=True,
        timeout=300,
        env={
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "PATH": "/usr/bin:/bin",
            "HOME": os.environ.get("HOME", str(tmp_path)),
        },
    )
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["problems"] == "{}", report["problems"]
    assert report["diff"] <= ATOL, report
