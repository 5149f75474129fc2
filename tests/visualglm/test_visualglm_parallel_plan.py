"""VisualGLM's tensor-parallel plan: weights split for 2 and 4 ranks merge back bit for bit,
and the split model run rank by rank (EVA ViT, Q-Former and ChatGLM on a share of the heads
each, row outputs and vocab lookups summed, logits gathered) gives the full model's logits."""

from __future__ import annotations

import numpy as np
import pytest
from mixcore_visualglm.parallel import FIRST_STAGE
from mixcore_visualglm.plugin import plugin

from mixcore.kit import tensor_parallel as tp
from mixcore.kit.collation import to_tensors
from tests.visualglm.conftest import question


@pytest.mark.parametrize("degree", [2, 4])
def test_split_merge_and_simulated_forward_equal_full(tiny_bundle, picture, degree):
    model = tiny_bundle.model
    plan = plugin.plan(tiny_bundle)
    assert plan.pipeline_layers[: len(FIRST_STAGE)] == FIRST_STAGE
    stages = tp.pipeline_stages(model, plan, degree)
    assert stages[0][: len(FIRST_STAGE)] == list(FIRST_STAGE) and len(stages) == degree
    batch = to_tensors(
        plugin.collate([plugin.encode(question(picture), tiny_bundle, 64)], tiny_bundle)
    )
    batch.pop("labels", None)
    full = model(**batch).logits.numpy()

    resolved = tp.resolve_plan(model, plan, degree)
    state = {name: t.numpy() for name, t in model.state_dict().items()}
    shards = tp.split_state(state, resolved.splits, degree)
    qkv = "language_model.chatglm.transformer.layers.0.attention.query_key_value.weight"
    assert shards[0][qkv].shape == (64, 192 // degree)
    merged = tp.merge_state(shards, resolved.splits)
    assert merged.keys() == state.keys()
    assert all(np.array_equal(merged[n], v) for n, v in state.items())

    sim = tp.simulate(model, plan, degree, lambda m: m(**batch).logits)
    assert sum(c.startswith("vision_model.") for c in sim.collectives) == 2 * len(
        model.vision_model.encoder.layers
    )
    assert sum(c.startswith("language_model.chatglm") for c in sim.collectives) == 1 + 2 * 2
    assert sim.collectives[-1] == "language_model.lm_head"
    for out in sim.outputs:
        np.testing.assert_allclose(out.numpy(), full, atol=1e-5, rtol=0)
