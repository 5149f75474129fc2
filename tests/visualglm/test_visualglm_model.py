"""The VisualGLM model: the same logits as PaddleNLP's own VisualGLM port weight for weight, packed
rows equal to samples alone (losses and gradients), images that reach the language model, and
default LoRA targets that stay out of the Q-Former."""

from __future__ import annotations

import re

import numpy as np
import paddle
import paddle.nn.functional as F
import pytest
from mixcore_visualglm.plugin import plugin

from mixcore.api.constants import IGNORE_INDEX
from mixcore.api.records import Message, Sample
from mixcore.kit.collation import to_tensors
from mixcore.kit.packing import pack_features
from tests.visualglm.conftest import question


def _token_losses(model, batch):
    out = model(**to_tensors(batch))
    labels = paddle.to_tensor(batch["labels"])
    losses = F.cross_entropy(
        out.logits.astype("float32"), labels.unsqueeze(-1), reduction="none", ignore_index=-100
    ).squeeze(-1)
    return losses * (labels != IGNORE_INDEX).astype("float32")


def _features(bundle, picture):
    samples = [
        question(picture),
        Sample([Message("user", "Say hi."), Message("assistant", "hi there")]),
        Sample(
            [
                Message("user", "<image>\nWhat shape?"),
                Message("assistant", "circle"),
                Message("user", "Sure?"),
                Message("assistant", "yes"),
            ],
            [picture],
        ),
    ]
    return [plugin.encode(s, bundle, 512) for s in samples]


def _gradients(model):
    return {n: p.grad.numpy().copy() for n, p in model.named_parameters() if p.grad is not None}


def test_packed_rows_give_each_sample_its_own_losses_and_gradients(tiny_bundle, picture):
    model = tiny_bundle.model
    features = _features(tiny_bundle, picture)
    lengths = [len(f["input_ids"]) for f in features]

    model.clear_gradients()
    unpacked = _token_losses(model, plugin.collate(features, tiny_bundle))
    unpacked.sum().backward()
    grads_unpacked = _gradients(model)
    model.clear_gradients()
    packed = _token_losses(model, plugin.collate([pack_features(features)], tiny_bundle))
    packed.sum().backward()
    grads_packed = _gradients(model)
    model.clear_gradients()

    starts = np.cumsum([0, *lengths[:-1]])
    for row, (start, n) in enumerate(zip(starts, lengths, strict=True)):
        alone = unpacked.numpy()[row, :n]
        np.testing.assert_allclose(packed.numpy()[0, start : start + n], alone, atol=1e-5)
    assert grads_unpacked.keys() == grads_packed.keys()
    assert any(n.startswith("vision_model.") for n in grads_packed), "images reach the loss"
    for name, grad in grads_unpacked.items():
        np.testing.assert_allclose(grads_packed[name], grad, atol=1e-5, err_msg=name)


def test_forward_builds_chatglms_mask_when_given_none(tiny_bundle, picture):
    batch = to_tensors(plugin.collate(_features(tiny_bundle, picture), tiny_bundle))
    with paddle.no_grad():
        full = tiny_bundle.model(**batch).logits.numpy()
        padding = (batch["input_ids"] != tiny_bundle.tokenizer.pad_token_id).astype("int64")
        built = tiny_bundle.model(
            input_ids=batch["input_ids"], images=batch["images"], attention_mask=padding
        ).logits.numpy()
    real = padding.numpy().astype(bool)
    np.testing.assert_allclose(built[real], full[real], atol=1e-6)


def test_the_image_changes_what_the_model_predicts(tiny_bundle, picture, tmp_path):
    from PIL import Image

    blue = tmp_path / "blue.png"
    Image.new("RGB", (40, 40), (0, 0, 255)).save(blue)
    red = to_tensors(
        plugin.collate([plugin.encode(question(picture), tiny_bundle, 64)], tiny_bundle)
    )
    other = to_tensors(
        plugin.collate([plugin.encode(question(blue), tiny_bundle, 64)], tiny_bundle)
    )
    assert np.array_equal(red["input_ids"].numpy(), other["input_ids"].numpy())
    with paddle.no_grad():
        a = tiny_bundle.model(**red).logits.numpy()
        b = tiny_bundle.model(**other).logits.numpy()
    assert np.abs(a[0, -3:] - b[0, -3:]).max() > 1e-3


def test_logits_equal_paddlenlps_visualglm_port(picture):
    """PaddleNLP 2.8.1 ships its own port of VisualGLM (vision model, Q-Former, ChatGLM with
    the image spliced after ``pre_image_length`` tokens): the same weights give the same
    logits, so mixcore's assembly (slots, projection, masks, positions) is VisualGLM's."""
    from paddlenlp.transformers.visualglm.configuration import VisualGLMConfig as PNConfig
    from paddlenlp.transformers.visualglm.modeling import (
        VisualGLMForConditionalGeneration as PNVisualGLM,
    )

    paddle.seed(2)
    # The port splits 32 image positions off, as the published model has.
    tiny_bundle = plugin.load(
        "visualglm/tiny",
        {"random_init": True, "config_overrides": {"image_length": 32}},
    )
    ours = tiny_bundle.model
    ours.eval()
    config = ours.config
    vision, qformer = config.vision(), config.qformer()
    reference_config = PNConfig(
        vision_config={
            **vision,
            # PaddleNLP closes its ViT with the blocks' epsilon; mixcore with ln_vision's.
            "layer_norm_eps": vision["post_layer_norm_eps"],
            "initializer_range": 0.02,
        },
        qformer_config={**qformer, "encoder_hidden_size": vision["hidden_size"]},
        text_config={**ours.language_model.config.to_dict()},
        num_query_tokens=config.image_length,
    )
    paddle.seed(1)
    reference = PNVisualGLM(reference_config)
    reference.eval()
    mine = ours.state_dict()
    theirs = reference.state_dict()
    for name, tensor in theirs.items():
        fused = re.fullmatch(r"(vision_model\.encoder\.layers\.\d+\.self_attn)\.qkv\.bias", name)
        if fused:
            q, v = mine[f"{fused.group(1)}.q_bias"], mine[f"{fused.group(1)}.v_bias"]
            tensor.set_value(paddle.concat([q, paddle.zeros_like(q), v]))
        else:
            assert list(tensor.shape) == list(mine[name].shape), name
            tensor.set_value(mine[name])
    # Our model runs with the blocks' epsilon everywhere but the closing LayerNorm, as theirs
    # does once given that epsilon for all: set the blocks to match.
    for layer in ours.vision_model.encoder.layers:
        assert layer.layer_norm1._epsilon == vision["layer_norm_eps"]
    for layer in reference.vision_model.encoder.layers:
        layer.layer_norm1._epsilon = layer.layer_norm2._epsilon = vision["layer_norm_eps"]

    features = plugin.encode(question(picture), tiny_bundle, 512)
    batch = to_tensors(plugin.collate([features], tiny_bundle))
    ids = features["input_ids"]
    pre_image = int(np.flatnonzero(ids == config.image_token_id)[0])
    with paddle.no_grad():
        expected = ours(**batch).logits.numpy()
        image_features = reference.encode_images(batch["images"])
        found = reference.language_model(
            image_features=image_features,
            input_ids=batch["input_ids"],
            position_ids=batch["position_ids"],
            attention_mask=batch["attention_mask"],
            pre_image_length=pre_image,
            return_dict=True,
        ).logits.numpy()
    np.testing.assert_allclose(found, expected, atol=1e-5)


def test_default_lora_targets_hit_chatglm_attention_and_mlp_only(tiny_bundle):
    names = [n for n, _ in tiny_bundle.model.named_sublayers()]
    targets = plugin.lora_targets(tiny_bundle)
    hit = [n for n in names if any(re.fullmatch(t, n) for t in targets)]
    layers = tiny_bundle.model.config.num_layers
    assert len(hit) == 4 * layers
    assert all(n.startswith("language_model.chatglm.transformer.layers.") for n in hit)
    assert {n.rsplit(".", 2)[-2] + "." + n.rsplit(".", 1)[-1] for n in hit} == {
        "attention.query_key_value",
        "attention.dense",
        "mlp.dense_h_to_4h",
        "mlp.dense_4h_to_h",
    }
    # PaddleMIX's published pattern also adapts Q-Former layers (see docs/models.md).
    paddlemix = [r".*query_key_value.*", r".*dense.*"]
    assert any(
        n.startswith("qformer.") for n in names if any(re.fullmatch(t, n) for t in paddlemix)
    )


@pytest.mark.parametrize("frozen", [None, []])
def test_the_vision_transformer_is_frozen_by_default(frozen):
    options = {"random_init": True} if frozen is None else {"random_init": True, "frozen": frozen}
    bundle = plugin.load("visualglm/tiny", options)
    frozen_names = {n for n, p in bundle.model.named_parameters() if p.stop_gradient}
    if frozen is None:
        assert frozen_names and all(n.startswith("vision_model.") for n in frozen_names)
        assert not any(
            n.startswith("vision_model.")
            for n, p in bundle.model.named_parameters()
            if not p.stop_gradient
        )
    else:
        assert not frozen_names
