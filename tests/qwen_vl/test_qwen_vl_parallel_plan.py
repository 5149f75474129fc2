"""Qwen-VL's tensor-parallel plan: weights split for 2 and 4 ranks merge back bit for bit, and
the split model run rank by rank (heads divided, row outputs summed, vocab lookups summed,
logits gathered) gives the full model's logits."""

from __future__ import annotations

import numpy as np
import paddle
import pytest
from mixcore_qwen_vl.parallel import parallel_plan

from mixcore.kit import tensor_parallel as tp


@pytest.mark.parametrize("degree", [2, 4])
def test_split_merge_and_simulated_forward_equal_full(
    model, config, make_images, image_prompt, degree
):
    plan = parallel_plan(config)
    resolved = tp.resolve_plan(model, plan, degree)
    state = {name: t.numpy() for name, t in model.state_dict().items()}
    shards = tp.split_state(state, resolved.splits, degree)
    # Each rank holds 1/degree of every split tensor; merging gives the same bits back.
    c_attn = "llm.qwen.h.0.attn.c_attn.weight"
    assert shards[0][c_attn].shape == (64, 3 * 64 // degree)
    assert shards[0]["llm.qwen.wte.weight"].shape == (768 // degree, 64)
    merged = tp.merge_state(shards, resolved.splits)
    assert merged.keys() == state.keys()
    for name, value in state.items():
        assert merged[name].dtype == value.dtype and np.array_equal(merged[name], value), name

    ids = paddle.to_tensor([image_prompt(images=1)])
    images = make_images(1)
    full = model(input_ids=ids, images=images, return_dict=True).logits.numpy()
    sim = tp.simulate(
        model, plan, degree, lambda m: m(input_ids=ids, images=images, return_dict=True).logits
    )
    # Every split layer took part: 4 ViT blocks and 2 QWen blocks sum two row outputs each.
    assert sim.collectives.count("llm.qwen.wte") == 1 and sim.collectives[-1] == "llm.lm_head"
    assert len(sim.collectives) == 4 * 2 + 2 * 2 + 2
    for out in sim.outputs:
        assert out.shape == full.shape
        np.testing.assert_allclose(out.numpy(), full, atol=1e-5, rtol=0)


def test_fused_qkv_split_as_one_block_is_caught(model, config, make_images, image_prompt):
    # Without the fused entry rank 0 would get all of q and half of k: the simulation shows it.
    from dataclasses import replace

    plan = replace(parallel_plan(config), fused={})
    ids = paddle.to_tensor([image_prompt(images=1)])
    images = make_images(1)
    full = model(input_ids=ids, images=images, return_dict=True).logits.numpy()
    sim = tp.simulate(
        model, plan, 2, lambda m: m(input_ids=ids, images=images, return_dict=True).logits
    )
    assert np.abs(sim.outputs[0].numpy() - full).max() > 1e-3


def test_pipeline_stages_keep_the_vision_tower_first_and_cover_every_weight(model, config):
    plan = parallel_plan(config)
    stages = tp.pipeline_stages(model, plan, 2)
    assert stages[0][0] == "visual" and stages[-1][-1] == "llm.lm_head"
    assert [n for s in stages for n in s] == list(plan.pipeline_layers)


def test_applied_plan_leaves_each_rank_its_shard_marked_for_fleet(model, config):
    import types

    resolved = tp.resolve_plan(model, parallel_plan(config), 2)
    full = model.llm.qwen.h[0].attn.c_attn.weight.numpy()
    # Only the rank and size of the model-parallel group are read before a forward pass.
    group = types.SimpleNamespace(nranks=2, rank=1)
    split = tp.apply_tensor_parallel(model, resolved, group)
    assert split.full_shapes["llm.qwen.h.0.attn.c_attn.weight"] == [64, 192]
    attn = model.llm.qwen.h[0].attn
    assert attn.num_heads == 2 and model.visual.transformer.resblocks[0].attn.heads == 2
    weight = attn.c_attn.weight
    assert weight.shape == [64, 96] and weight.is_distributed and weight.split_axis == 1
    q, k, v = np.split(full, 3, axis=1)
    expected = np.concatenate([q[:, 32:], k[:, 32:], v[:, 32:]], axis=1)
    assert np.array_equal(weight.numpy(), expected)
    assert model.llm.qwen.wte.weight.shape == [384, 64]
    assert not getattr(model.llm.qwen.ln_f.weight, "is_distributed", False)


def test_lora_wrapped_layers_split_as_megatron_lora(model, config, make_images, image_prompt):
    # Column layers keep lora_A whole and split lora_B by column; row layers split lora_A by
    # row and keep lora_B whole. Non-zero adapters, so the deltas matter to the logits.
    from mixcore_qwen_vl.modeling import DEFAULT_LORA_TARGET_MODULES
    from paddlenlp.peft import LoRAConfig, LoRAModel

    LoRAModel(model, LoRAConfig(target_modules=list(DEFAULT_LORA_TARGET_MODULES), r=4))
    rng = np.random.default_rng(0)
    for name, param in model.named_parameters():
        if "lora_B" in name:
            param.set_value(rng.standard_normal(param.shape).astype("float32") * 0.1)
    model.train()  # unmerged: the forward adds x @ A @ B itself
    resolved = tp.resolve_plan(model, parallel_plan(config), 2)
    c_attn, c_proj = "llm.qwen.h.0.attn.c_attn", "llm.qwen.h.0.attn.c_proj"
    assert resolved.splits[f"{c_attn}.lora_B"] == tp.Split(axis=1, parts=3)
    assert f"{c_attn}.lora_A" not in resolved.splits
    assert resolved.splits[f"{c_proj}.lora_A"] == tp.Split(axis=0)
    assert f"{c_proj}.lora_B" not in resolved.splits

    ids = paddle.to_tensor([image_prompt(images=1)])
    images = make_images(1)

    def logits(m):
        return m(input_ids=ids, images=images, return_dict=True).logits

    with paddle.no_grad():
        full = logits(model).numpy()
    sim = tp.simulate(model, parallel_plan(config), 2, logits, train_mode=True)
    for out in sim.outputs:
        np.testing.assert_allclose(out.numpy(), full, atol=1e-5, rtol=0)
