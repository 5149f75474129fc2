"""VisualGLM folders in THUDM's ``visualglm-6b`` layout: the names SwissArmyTransformer gives the
image side, ChatGLM's config with eva_config / qformer_config, safetensors or ``.bin`` shards,
found by ``model_type`` and refused with a reason when they are something else."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import numpy as np
import paddle
import pytest
from mixcore_visualglm.checkpoint import load_folder
from mixcore_visualglm.plugin import plugin

from mixcore.kit.checkpoints import read_weights, write_weights
from mixcore.kit.collation import to_tensors
from mixcore.kit.weights import CheckpointError, WeightMismatchError
from mixcore.testing import run_cli
from tests.visualglm.conftest import question

#: THUDM's names for layer 0 of each stack and the whole-tensor weights (SAT's module names).
THUDM_IMAGE_NAMES = {
    "image_encoder.vit.transformer.word_embeddings.weight",
    "image_encoder.vit.transformer.position_embeddings.weight",
    "image_encoder.vit.mixins.patch_embedding.proj.weight",
    "image_encoder.vit.mixins.patch_embedding.proj.bias",
    "image_encoder.vit.mixins.cls.ln_vision.weight",
    "image_encoder.vit.mixins.cls.ln_vision.bias",
    "image_encoder.qformer.transformer.word_embeddings.weight",
    "image_encoder.qformer.transformer.final_layernorm.weight",
    "image_encoder.qformer.transformer.final_layernorm.bias",
    "image_encoder.glm_proj.weight",
    "image_encoder.glm_proj.bias",
    *(
        f"image_encoder.vit.transformer.layers.0.{part}.{kind}"
        for part in (
            "input_layernorm",
            "attention.query_key_value",
            "attention.dense",
            "post_attention_layernorm",
            "mlp.dense_h_to_4h",
            "mlp.dense_4h_to_h",
        )
        for kind in ("weight", "bias")
    ),
    *(
        f"image_encoder.qformer.transformer.layers.0.{part}.{kind}"
        for part in (
            "input_layernorm",
            "attention.query_key_value",
            "attention.dense",
            "post_attention_layernorm",
            "cross_attention.query",
            "cross_attention.key_value",
            "cross_attention.dense",
            "post_cross_attention_layernorm",
            "mlp.dense_h_to_4h",
            "mlp.dense_4h_to_h",
        )
        for kind in ("weight", "bias")
    ),
}


@pytest.fixture(scope="module")
def saved(tiny_bundle, tmp_path_factory):
    folder = tmp_path_factory.mktemp("visualglm-saved")
    plugin.save(tiny_bundle, str(folder))
    return folder


def _logits(bundle, picture):
    batch = to_tensors(plugin.collate([plugin.encode(question(picture), bundle, 64)], bundle))
    bundle.model.eval()
    with paddle.no_grad():
        return bundle.model(**batch).logits.numpy()


def test_a_saved_folder_has_thudms_layout(saved, tiny_bundle):
    config = json.loads((saved / "config.json").read_text())
    assert config["model_type"] == "chatglm"
    assert config["architectures"] == ["ChatGLMForConditionalGenerationWithImage"]
    assert config["eva_config"]["num_layers"] == 4 and config["image_length"] == 16
    assert config["num_layers"] == 2 and config["gmask_token_id"] == 6
    assert (saved / "ice_text.model").is_file()
    names = set(read_weights(saved))
    layer0 = {n for n in names if not re.search(r"layers\.[1-9]", n)}
    image = {n for n in layer0 if n.startswith("image_encoder.")}
    assert image == THUDM_IMAGE_NAMES
    # Both Q-Former layers cross-attend in the tiny preset (is_decoder [true, true]).
    assert "image_encoder.qformer.transformer.layers.1.cross_attention.key_value.weight" in names
    assert "transformer.word_embeddings.weight" in names and "lm_head.weight" in names
    assert "transformer.layers.0.attention.query_key_value.weight" in names
    state = read_weights(saved)
    hidden = 48
    assert state["image_encoder.vit.transformer.word_embeddings.weight"].shape == (1, hidden)
    assert state["image_encoder.qformer.transformer.word_embeddings.weight"].shape == (16, 48)
    qkv = state["image_encoder.vit.transformer.layers.0.attention.query_key_value.bias"].data
    assert not qkv[hidden : 2 * hidden].any()  # the key third, which changes nothing


def test_a_saved_folder_loads_with_the_same_logits(saved, tiny_bundle, picture):
    loaded = plugin.load(str(saved), {})
    np.testing.assert_array_equal(_logits(loaded, picture), _logits(tiny_bundle, picture))


def test_thudm_bin_shards_without_an_image_token_id_load(
    saved, tiny_bundle, picture, tmp_path, torch_python
):
    """THUDM's folder: ``pytorch_model-*.bin`` shards written by real ``torch.save``, with
    their index, and no image_token_id in config.json (the tokenizer's [sMASK] marks the
    slots): read through the code-free reader, the same logits."""
    folder = tmp_path / "thudm"
    shutil.copytree(saved, folder)
    for name in folder.glob("model*.safetensors*"):
        name.unlink()
    config = json.loads((folder / "config.json").read_text())
    for key in ("image_token_id", "initializer_range", "mixcore"):
        config.pop(key, None)
    (folder / "config.json").write_text(json.dumps(config))
    _write_bin_shards(torch_python, saved, folder)
    loaded = plugin.load(str(folder), {})
    assert loaded.model.config.image_token_id == tiny_bundle.model.config.image_token_id
    np.testing.assert_array_equal(_logits(loaded, picture), _logits(tiny_bundle, picture))


#: Run by the torch venv's Python: mixcore's safetensors as THUDM's two torch.save shards.
_TO_BIN_SHARDS = """
import json, sys
import torch
from safetensors.torch import load_file
source, target = sys.argv[1], sys.argv[2]
state = load_file(source + "/model.safetensors")
names = sorted(state)
weight_map = {}
for number, part in enumerate((names[: len(names) // 2], names[len(names) // 2 :]), start=1):
    shard = f"pytorch_model-{number:05d}-of-00002.bin"
    torch.save({n: state[n] for n in part}, f"{target}/{shard}")
    weight_map.update(dict.fromkeys(part, shard))
json.dump({"weight_map": weight_map}, open(f"{target}/pytorch_model.bin.index.json", "w"))
"""


def _write_bin_shards(python, source, target):
    subprocess.run(
        [str(python), "-c", _TO_BIN_SHARDS, str(source), str(target)],
        check=True,
        capture_output=True,
        timeout=300,
    )


def test_a_folder_is_found_by_model_type_and_answers(saved, picture):
    result = run_cli(
        [
            "infer",
            "--model",
            str(saved),
            "--prompt",
            "What colour?",
            "--image",
            str(picture),
            "--max-new-tokens",
            "3",
        ],
        entry_points=True,
    )
    assert result.exit_code == 0, result.stderr


def test_a_plain_chatglm_folder_is_refused_with_the_reason(saved, tmp_path):
    folder = tmp_path / "chatglm"
    shutil.copytree(saved, folder)
    config = json.loads((folder / "config.json").read_text())
    del config["eva_config"], config["qformer_config"]
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="without VisualGLM's image side"):
        load_folder(folder)


def test_missing_and_unexpected_weights_are_named_in_thudms_terms(saved, tmp_path):
    folder = tmp_path / "broken"
    shutil.copytree(saved, folder)
    state = read_weights(folder)
    del state["image_encoder.qformer.transformer.layers.0.cross_attention.key_value.weight"]
    state["image_encoder.vit.transformer.final_layernorm.weight"] = state[
        "image_encoder.vit.mixins.cls.ln_vision.weight"
    ]
    for name in folder.glob("model*.safetensors*"):
        name.unlink()
    write_weights(folder, state)
    with pytest.raises(WeightMismatchError) as err:
        load_folder(folder)
    message = str(err.value)
    assert "image_encoder.qformer.transformer.layers.0.cross_attention.key_value.weight" in message
    assert "image_encoder.vit.transformer.final_layernorm.weight" in message
