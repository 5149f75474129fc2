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
