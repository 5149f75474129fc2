"""PaddleNLP's LoRA wraps the Qwen-VL model and trains only the adapters."""

from __future__ import annotations

import re

import numpy as np
import paddle
from mixcore_qwen_vl.modeling import DEFAULT_LORA_TARGET_MODULES
from paddlenlp.peft import LoRAConfig, LoRAModel


def _lora(model, **options) -> LoRAModel:
    paddle.seed(11)  # LoRA's own initialisation draws random numbers
    return LoRAModel(model, LoRAConfig(r=4, lora_alpha=8, **options))


def test_lora_wraps_qwen_vl_and_only_lora_weights_train(model, image_prompt, make_images):
    model.train()
    wrapped = _lora(model, target_modules=[".*c_attn.*"])
    wrapped.mark_only_lora_as_trainable()

    trainable = [name for name, p in wrapped.named_parameters() if not p.stop_gradient]
    assert trainable
    assert all(re.search(r"lora_[AB]$", name) for name in trainable)
    assert {name.rsplit(".", 1)[0] for name in trainable} == {
        "model.llm.qwen.h.0.attn.c_attn",
        "model.llm.qwen.h.1.attn.c_attn",
    }

    prompt = image_prompt()
    labels = paddle.to_tensor([[-100] * (len(prompt) - 1) + [prompt[-1]]])
    out = wrapped(
        input_ids=paddle.to_tensor([prompt]),
        images=make_images(1),
        labels=labels,
        return_dict=True,
    )
    out.loss.backward()
    with_grad = {name for name, p in wrapped.named_parameters() if p.grad is not None}
    assert with_grad == set(trainable)


def test_lora_starts_as_the_identity(model, image_prompt, make_images) -> None:
    prompt = paddle.to_tensor([image_prompt()])
    images = make_images(1)
    before = model(prompt, images=images, return_dict=True).logits.numpy()
    wrapped = _lora(model, target_modules=list(DEFAULT_LORA_TARGET_MODULES))
    wrapped.eval()
    after = wrapped(input_ids=prompt, images=images, return_dict=True).logits.numpy()
    np.testing.assert_allclose(before, after, atol=1e-6)  # lora_B starts at zero


def test_default_targets_cover_every_language_model_linear_and_no_vision_layer(model) -> None:
    linear = [
        name for name, layer in model.named_sublayers() if isinstance(layer, paddle.nn.Linear)
    ]
    targeted = {
        name for name in linear if any(re.fullmatch(p, name) for p in DEFAULT_LORA_TARGET_MODULES)
    }
    assert targeted == {name for name in linear if name.startswith("llm.qwen.h.")}
    assert len(targeted) == 2 * 5


def test_trainable_modules_stay_fully_trainable(model) -> None:
    wrapped = _lora(
        model, target_modules=[".*c_attn.*"], trainable_modules=[r".*visual\.attn_pool.*"]
    )
    wrapped.mark_only_lora_as_trainable()
    trainable = {name for name, p in wrapped.named_parameters() if not p.stop_gradient}
    assert "model.visual.attn_pool.query" in trainable
    assert "model.visual.conv1.weight" not in trainable
