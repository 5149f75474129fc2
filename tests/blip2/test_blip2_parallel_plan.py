"""BLIP-2's tensor-parallel plan, with OPT and with Flan-T5: weights split for 2 and 4 ranks
merge back bit for bit, and the split model run rank by rank (ViT, Q-Former and language model
on a share of the heads each, row outputs and vocab lookups summed, logits gathered) gives the
full model's logits."""

from __future__ import annotations

import numpy as np
import pytest
from mixcore_blip2.parallel import FIRST_STAGE
from PIL import Image

from mixcore.api import IMAGE_PLACEHOLDER, Message, Sample
from mixcore.kit import tensor_parallel as tp
from mixcore.kit.collation import to_tensors
from mixcore.registry import build_registry


@pytest.fixture(scope="module")
def registry():
    return build_registry()


def _bundle_and_batch(registry, family, tmp_path):
    bundle = registry.hook.load_model(
        model_name="blip2",
        source="blip2/tiny",
        options={"random_init": True, "language_model": family},
    )
    picture = tmp_path / "red.png"
    Image.new("RGB", (40, 40), (220, 30, 30)).save(picture)
    sample = Sample(
        [Message("user", f"{IMAGE_PLACEHOLDER}\nWhat colour?"), Message("assistant", "red")],
        [picture],
    )
    features = registry.hook.preprocess_sample(
        model_name="blip2", sample=sample, bundle=bundle, max_length=48
    )
    batch = to_tensors(
        registry.hook.collate_batch(model_name="blip2", features=[features], bundle=bundle)
    )
    batch.pop("labels", None)
    return bundle, batch


@pytest.mark.parametrize("family", ["opt", "t5"])
def test_split_merge_and_simulated_forward_equal_full(registry, family, tmp_path):
    bundle, batch = _bundle_and_batch(registry, family, tmp_path)
    model = bundle.model
    model.eval()
    plan = registry.hook.parallel_plan(model_name="blip2", bundle=bundle)
    assert plan.first_stage == FIRST_STAGE and plan.pipeline_layers[-1] == "language_model.lm_head"
    # Pipeline stages hold every weight once (the OPT head shares the embedding table).
    stages = tp.pipeline_stages(model, plan, 3)
    assert stages[0][: len(FIRST_STAGE)] == list(FIRST_STAGE)
    state = {name: t.numpy() for name, t in model.state_dict().items()}
    full = model(**batch).logits.numpy()
    for degree in (2, 4):
        resolved = tp.resolve_plan(model, plan, degree)
        shards = tp.split_state(state, resolved.splits, degree)
        qkv = "vision_model.encoder.layers.0.self_attn.qkv.weight"
        assert shards[degree - 1][qkv].shape == (48, 3 * 48 // degree)
        merged = tp.merge_state(shards, resolved.splits)
        assert merged.keys() == state.keys()
        assert all(np.array_equal(merged[n], v) for n, v in state.items())

        sim = tp.simulate(model, plan, degree, lambda m: m(**batch).logits)
        # 4 ViT blocks, 2 Q-Former layers (self- and cross-attention, feed-forward) and the
        # language model's blocks all met in collectives.
        assert sum(c.startswith("vision_model.") for c in sim.collectives) == 4 * 2
        assert sum(c.startswith("qformer.") for c in sim.collectives) == 2 * 3
        assert sim.collectives[-1] == "language_model.lm_head"
        for out in sim.outputs:
            np.testing.assert_allclose(out.numpy(), full, atol=1e-5, rtol=0)


def test_plugin_claims_tensor_and_pipeline_parallel(registry):
    capabilities = registry.model("blip2").capabilities
    assert capabilities["tensor_parallel"] and capabilities["pipeline_parallel"]
