"""Checkpoints: mixcore's folder format, Hugging Face Qwen-VL's sharded layout, clear errors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import paddle
import pytest
from mixcore_qwen_vl.checkpoint import (
    HF_INDEX_NAME,
    build_model,
    detect_format,
    load_checkpoint,
    load_hf_checkpoint,
    load_pretrained,
    read_hf_weights,
    save_checkpoint,
    write_hf_checkpoint,
)

from mixcore.kit.images import ImagePreprocessor
from mixcore.kit.weights import (
    CheckpointError,
    StoredTensor,
    WeightMismatchError,
    WeightsNotFoundError,
    from_paddle,
    read_safetensors,
    write_safetensors,
)


@pytest.fixture
def processor(config) -> ImagePreprocessor:
    return ImagePreprocessor(int(config.visual["image_size"]))


@pytest.fixture
def probe(image_prompt, make_images):
    """Logits of a fixed image+text input: ``probe(model) -> ndarray``."""
    long, short = image_prompt(), image_prompt(after=" Blue?")
    input_ids = paddle.to_tensor([long, short + [0] * (len(long) - len(short))])
    images = make_images(2, seed=9)

    def run(model) -> np.ndarray:
        model.eval()
        return model(input_ids, images=images, return_dict=True).logits.numpy()

    return run


@pytest.fixture
def hf_folder(tmp_path: Path, model, tokenizer) -> Path:
    return write_hf_checkpoint(model, tmp_path / "hf", shards=2, tokenizer=tokenizer)


def _rewrite_shards(folder: Path, edit) -> None:
    """Apply ``edit(tensors) -> tensors`` to every shard and rebuild the index."""
    index_path = folder / HF_INDEX_NAME
    index = json.loads(index_path.read_text())
    weight_map = {}
    for file_name in sorted(set(index["weight_map"].values())):
        tensors = edit(read_safetensors(folder / file_name))
        write_safetensors(folder / file_name, tensors, {"format": "pt"})
        weight_map.update(dict.fromkeys(tensors, file_name))
    index["weight_map"] = weight_map
    index_path.write_text(json.dumps(index))


# --- mixcore format ------------------------------------------------------------------------


def test_mixcore_round_trip_gives_identical_logits(
    tmp_path, model, tokenizer, processor, probe
) -> None:
    folder = save_checkpoint(model, tokenizer, processor, tmp_path / "ckpt")

    names = {p.name for p in folder.iterdir()}
    assert {
        "config.json",
        "model.safetensors",
        "qwen.tiktoken",
        "preprocessor_config.json",
    } <= names
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "qwen_vl"
    assert config["mixcore"]["plugin"] == "qwen_vl"
    assert config["mixcore"]["version"] and config["mixcore"]["model"] == "qwen_vl"

    loaded, loaded_tokenizer, loaded_processor = load_checkpoint(folder)
    np.testing.assert_array_equal(probe(loaded), probe(model))
    assert loaded_tokenizer.img_pad_id == tokenizer.img_pad_id
    assert loaded_processor.to_dict() == processor.to_dict()
    assert loaded.config.visual == model.config.visual
    assert detect_format(folder) == "mixcore"


def test_mixcore_checkpoint_with_a_missing_weight_names_it(
    tmp_path, model, tokenizer, processor
) -> None:
    folder = save_checkpoint(model, tokenizer, processor, tmp_path / "ckpt")
    tensors = read_safetensors(folder / "model.safetensors")
    del tensors["visual.ln_post.bias"]
    write_safetensors(folder / "model.safetensors", tensors, {"format": "np"})
    with pytest.raises(WeightMismatchError) as info:
        load_checkpoint(folder)
    assert info.value.missing == ["visual.ln_post.bias"]
    assert "visual.ln_post.bias" in str(info.value)


def test_saving_a_lora_wrapped_model_asks_for_a_merge(tmp_path, model, tokenizer) -> None:
    from paddlenlp.peft import LoRAConfig, LoRAModel

    wrapped = LoRAModel(model, LoRAConfig(target_modules=[".*c_attn.*"], r=2))
    with pytest.raises(CheckpointError, match="merge LoRA"):
        save_checkpoint(wrapped, tokenizer, None, tmp_path / "ckpt")


# --- Hugging Face layout -------------------------------------------------------------------


def test_hf_layout_write_then_load_gives_identical_logits(hf_folder, model, probe) -> None:
    index = json.loads((hf_folder / HF_INDEX_NAME).read_text())
    assert sorted(set(index["weight_map"].values())) == [
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
    ]
    config = json.loads((hf_folder / "config.json").read_text())
    assert config["model_type"] == "qwen"
    assert config["visual"]["image_start_id"] == model.config.image_start_id

    loaded, tokenizer, processor = load_hf_checkpoint(hf_folder)

    assert np.abs(probe(loaded) - probe(model)).max() <= 1e-6
    assert tokenizer.img_start_id == model.config.image_start_id
    assert processor.image_size == model.config.visual["image_size"]
    assert detect_format(hf_folder) == "hf"
    assert np.abs(probe(load_pretrained(hf_folder)[0]) - probe(model)).max() <= 1e-6


def test_hf_names_and_torch_layouts(hf_folder, model) -> None:
    tensors = read_hf_weights(hf_folder)
    expected_names = {
        "transformer.visual.conv1.weight",
        "transformer.visual.positional_embedding",
        "transformer.visual.ln_pre.weight",
        "transformer.visual.transformer.resblocks.0.attn.in_proj.weight",
        "transformer.visual.transformer.resblocks.1.mlp.c_fc.bias",
        "transformer.visual.attn_pool.query",
        "transformer.visual.attn_pool.pos_embed",
        "transformer.visual.attn_pool.kv_proj.weight",
        "transformer.visual.attn_pool.attn.in_proj_weight",
        "transformer.visual.attn_pool.attn.out_proj.bias",
        "transformer.visual.attn_pool.ln_q.weight",
        "transformer.visual.attn_pool.ln_kv.bias",
        "transformer.visual.ln_post.weight",
        "transformer.visual.proj",
        "transformer.wte.weight",
        "transformer.h.1.attn.c_attn.bias",
        "transformer.h.0.mlp.w1.weight",
        "transformer.ln_f.weight",
        "lm_head.weight",
    }
    assert expected_names <= set(tensors)
    assert len(tensors) == len(model.state_dict())
    # torch Linear weights are [out, in]; Paddle's are [in, out].
    c_attn = model.llm.qwen.h[0].attn.c_attn.weight.numpy()
    np.testing.assert_array_equal(tensors["transformer.h.0.attn.c_attn.weight"].data, c_attn.T)
    lm_head = model.llm.lm_head.weight.numpy()
    np.testing.assert_array_equal(tensors["lm_head.weight"].data, lm_head.T)
    # Embeddings, convolutions and raw matrices keep their layout.
    wte = model.llm.qwen.wte.weight.numpy()
    np.testing.assert_array_equal(tensors["transformer.wte.weight"].data, wte)
    visual = model.config.visual
    patch = visual["patch_size"]
    assert tensors["transformer.visual.conv1.weight"].shape == (visual["width"], 3, patch, patch)
    np.testing.assert_array_equal(
        tensors["transformer.visual.proj"].data, model.visual.proj.numpy()
    )
    assert tensors["transformer.visual.attn_pool.attn.in_proj_weight"].shape == (192, 64)


def test_hf_checkpoint_with_missing_and_unexpected_keys_reports_both(hf_folder) -> None:
    def edit(tensors):
        tensors.pop("transformer.visual.proj", None)
        tensors.pop("transformer.h.1.mlp.w2.weight", None)
        if "lm_head.weight" in tensors:
            tensors["transformer.visual.extra_head.weight"] = tensors["lm_head.weight"]
        return tensors

    _rewrite_shards(hf_folder, edit)
    with pytest.raises(WeightMismatchError) as info:
        load_hf_checkpoint(hf_folder)
    error = info.value
    assert sorted(error.missing) == ["transformer.h.1.mlp.w2.weight", "transformer.visual.proj"]
    assert error.unexpected == ["transformer.visual.extra_head.weight"]
    message = str(error)
    assert "2 missing keys" in message and "transformer.visual.proj" in message
    assert "1 unexpected keys" in message and "extra_head" in message


def test_hf_checkpoint_with_wrong_shapes_reports_them(hf_folder) -> None:
    config = json.loads((hf_folder / "config.json").read_text())
    config["vocab_size"] = 832
    (hf_folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(WeightMismatchError) as info:
        load_hf_checkpoint(hf_folder)
    mismatched = {name: (got, want) for name, got, want in info.value.mismatched}
    assert mismatched["transformer.wte.weight"] == ((768, 64), (832, 64))
    assert mismatched["lm_head.weight"] == ((768, 64), (832, 64))
    assert "shape mismatches" in str(info.value)


def test_stored_rotary_frequencies_are_ignored(hf_folder, model, probe) -> None:
    def edit(tensors):
        if "transformer.h.0.attn.c_attn.weight" in tensors:
            tensors["transformer.h.0.attn.rotary_emb.inv_freq"] = StoredTensor(
                np.ones(8, dtype=np.float32), "F32"
            )
        return tensors

    _rewrite_shards(hf_folder, edit)
    assert np.abs(probe(load_hf_checkpoint(hf_folder)[0]) - probe(model)).max() <= 1e-6


def test_index_listing_a_missing_shard_is_an_error(hf_folder) -> None:
    (hf_folder / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(WeightsNotFoundError, match="model-00002-of-00002"):
        load_hf_checkpoint(hf_folder)


def test_pytorch_bin_that_is_no_checkpoint_is_refused_naming_it(tmp_path, hf_folder) -> None:
    from mixcore.kit.torch_bin import TorchBinError

    for shard in hf_folder.glob("*.safetensors"):
        shard.unlink()
    (hf_folder / HF_INDEX_NAME).unlink()
    (hf_folder / "pytorch_model.bin").write_bytes(b"not read")
    with pytest.raises(TorchBinError, match=r"pytorch_model\.bin is not a zip checkpoint"):
        load_hf_checkpoint(hf_folder)


def test_vocabulary_of_another_model_is_refused(hf_folder) -> None:
    config = json.loads((hf_folder / "config.json").read_text())
    config["visual"]["image_start_id"] = 700
    config["eos_token_id"] = config["pad_token_id"] = 486
    (hf_folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="does not belong"):
        load_hf_checkpoint(hf_folder)


def test_hf_weights_follow_reference_attention_math(hf_folder, model) -> None:
    """The stored torch-layout tensors, used as Hugging Face Qwen-VL uses them (written out
    in numpy), give what our Paddle layers give: the conversion keeps each tensor's meaning."""
    t = {
        name: stored.data.astype(np.float64) for name, stored in read_hf_weights(hf_folder).items()
    }
    rng = np.random.default_rng(0)
    patches = rng.standard_normal((16, model.config.visual["width"]))

    block = "transformer.visual.transformer.resblocks.0."
    ours = model.visual.transformer.resblocks[0](paddle.to_tensor(patches[None], "float32"))
    np.testing.assert_allclose(
        ours.numpy()[0], _reference_vision_block(t, block, patches, heads=4), atol=1e-4
    )

    pool = "transformer.visual.attn_pool."
    ours = model.visual.attn_pool(paddle.to_tensor(patches[None], "float32"))
    ours = paddle.matmul(model.visual.ln_post(ours), model.visual.proj)
    expected = _reference_resampler(t, pool, patches, heads=4)
    expected = (
        _layer_norm(expected, t, "transformer.visual.ln_post.") @ t["transformer.visual.proj"]
    )
    np.testing.assert_allclose(ours.numpy()[0], expected, atol=1e-4)


def _layer_norm(x, t, prefix, eps=1e-6):
    mean = x.mean(-1, keepdims=True)
    var = x.var(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * t[prefix + "weight"] + t[prefix + "bias"]


def _linear(x, t, prefix):
    out = x @ t[prefix + "weight"].T  # torch layout [out, in]
    return out + t[prefix + "bias"] if prefix + "bias" in t else out


def _softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _attend(q, k, v):
    return _softmax(q @ np.swapaxes(k, -1, -2) / math.sqrt(q.shape[-1])) @ v


def _reference_vision_block(t, prefix, x, heads):
    length, width = x.shape
    head_dim = width // heads
    qkv = _linear(_layer_norm(x, t, prefix + "ln_1."), t, prefix + "attn.in_proj.")
    qkv = qkv.reshape(length, heads, 3 * head_dim).transpose(1, 0, 2)  # per head: [q | k | v]
    q, k, v = np.split(qkv, 3, axis=-1)
    context = _attend(q, k, v).transpose(1, 0, 2).reshape(length, width)
    x = x + _linear(context, t, prefix + "attn.out_proj.")
    hidden = _linear(_layer_norm(x, t, prefix + "ln_2."), t, prefix + "mlp.c_fc.")
    gelu = 0.5 * hidden * (1 + np.vectorize(math.erf)(hidden / math.sqrt(2)))
    return x + _linear(gelu, t, prefix + "mlp.c_proj.")


def _reference_resampler(t, prefix, x, heads):
    # torch.nn.MultiheadAttention: in_proj_weight rows are [all q; all k; all v].
    kv = _layer_norm(x @ t[prefix + "kv_proj.weight"].T, t, prefix + "ln_kv.")
    pos = t[prefix + "pos_embed"]  # 16 patches == 16 queries: no resize needed
    queries = _layer_norm(t[prefix + "query"], t, prefix + "ln_q.") + pos
    w_q, w_k, w_v = np.split(t[prefix + "attn.in_proj_weight"], 3, axis=0)
    b_q, b_k, b_v = np.split(t[prefix + "attn.in_proj_bias"], 3)
    dim = queries.shape[-1]

    def heads_of(m):
        return m.reshape(m.shape[0], heads, dim // heads).transpose(1, 0, 2)

    q = heads_of(queries @ w_q.T + b_q)
    k = heads_of((kv + pos) @ w_k.T + b_k)
    v = heads_of(kv @ w_v.T + b_v)
    context = _attend(q, k, v).transpose(1, 0, 2).reshape(-1, dim)
    return _linear(context, t, prefix + "attn.out_proj.")


# --- bfloat16 ------------------------------------------------------------------------------


def test_bfloat16_tensors_survive_safetensors_bit_exactly(tmp_path) -> None:
    values = paddle.to_tensor([[1.0, -2.5, 3.140625], [1e-3, 65504.0, -0.0]]).astype("bfloat16")
    stored = from_paddle(values)
    assert stored.dtype == "BF16"
    write_safetensors(tmp_path / "w.safetensors", {"w": stored}, {"format": "pt"})
    again = read_safetensors(tmp_path / "w.safetensors")["w"]
    assert again.dtype == "BF16"
    np.testing.assert_array_equal(again.data, stored.data)
    as_float = again.to_paddle(paddle.float32).numpy()
    np.testing.assert_array_equal(as_float, values.astype("float32").numpy())


def test_bfloat16_hf_checkpoint_loads_into_a_float32_model(hf_folder, model, probe) -> None:
    def to_bf16(tensors):
        return {
            name: from_paddle(stored.to_paddle(paddle.float32).astype("bfloat16"))
            for name, stored in tensors.items()
        }

    _rewrite_shards(hf_folder, to_bf16)
    loaded, _, _ = load_hf_checkpoint(hf_folder)
    assert loaded.visual.proj.dtype == paddle.float32
    # bfloat16 keeps ~3 significant digits; the logits move a little, not a lot.
    assert np.abs(probe(loaded) - probe(model)).max() < 0.05


# --- building ------------------------------------------------------------------------------


def test_build_without_weights_says_where_to_put_them(tmp_path) -> None:
    with pytest.raises(WeightsNotFoundError) as info:
        build_model("qwen-vl/qwen-vl-chat-7b", random_init=False, weights_dir=tmp_path)
    message = str(info.value)
    assert str(tmp_path.resolve()) in message
    assert "model.safetensors.index.json" in message and "qwen.tiktoken" in message
    assert "never downloads" in message
    with pytest.raises(WeightsNotFoundError, match="model_name_or_path"):
        build_model("qwen_vl/tiny", random_init=False)


def test_build_with_weights_loads_either_format(
    tmp_path, hf_folder, model, tokenizer, processor, probe
) -> None:
    from_hf = build_model("qwen_vl/tiny", random_init=False, weights_dir=hf_folder)
    assert np.abs(probe(from_hf) - probe(model)).max() <= 1e-6
    mixcore_folder = save_checkpoint(model, tokenizer, processor, tmp_path / "mx")
    from_mixcore = build_model(model.config, random_init=False, weights_dir=mixcore_folder)
    np.testing.assert_array_equal(probe(from_mixcore), probe(model))


def test_random_init_builds_from_a_mapping() -> None:
    paddle.seed(3)
    built = build_model(
        {
            "hidden_size": 32,
            "num_attention_heads": 2,
            "kv_channels": 16,
            "vocab_size": 768,
            "num_hidden_layers": 1,
            "intermediate_size": 64,
            "visual": {
                "width": 16,
                "heads": 2,
                "layers": 1,
                "output_dim": 32,
                "image_size": 28,
                "n_queries": 4,
                "attn_pool_heads": 2,
                "image_start_id": 726,
            },
        },
        random_init=True,
    )
    assert built.visual(paddle.zeros([1, 3, 28, 28])).shape == [1, 4, 32]
