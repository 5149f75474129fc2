"""Pack planning, feature packing and the block-diagonal mask, without a model."""

from __future__ import annotations

import random

import numpy as np
import pytest

from mixcore.kit.packing import (
    block_diagonal_causal_mask,
    pack_features,
    packing_efficiency,
    plan_packs,
)


def test_plan_respects_capacity_and_uses_every_sample_once():
    rng = random.Random(0)
    lengths = [rng.choice([20, 30, 45]) for _ in range(900)] + [
        rng.randint(300, 512) for _ in range(40)
    ]
    packs = plan_packs(lengths, 512, seed=1)
    assert sorted(i for pack in packs for i in pack) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in pack) <= 512 for pack in packs)
    # A skewed length mix packs tightly.
    assert packing_efficiency(lengths, packs, 512) > 0.95


def test_plan_is_deterministic_per_seed():
    lengths = [random.Random(i).randint(1, 100) for i in range(300)]
    assert plan_packs(lengths, 128, seed=5) == plan_packs(lengths, 128, seed=5)


def test_plan_refuses_a_sample_longer_than_the_capacity():
    with pytest.raises(ValueError, match="#1 with 200 tokens"):
        plan_packs([10, 200, 30], 128)


def test_pack_features_concatenates_tokens_and_images_in_order():
    a = {
        "input_ids": np.array([1, 2, 3]),
        "labels": np.array([2, 3, -100]),
        "images": np.zeros((1, 3, 4, 4), dtype=np.float32),
    }
    text_only = {"input_ids": np.array([7, 8]), "labels": np.array([8, -100])}
    b = {
        "input_ids": np.array([4, 5]),
        "labels": np.array([5, -100]),
        "images": np.ones((2, 3, 4, 4), dtype=np.float32),
    }
    packed = pack_features([a, text_only, b])
    assert packed["input_ids"].tolist() == [1, 2, 3, 7, 8, 4, 5]
    assert packed["labels"].tolist() == [2, 3, -100, 8, -100, 5, -100]
    assert packed["segment_ids"].tolist() == [1, 1, 1, 2, 2, 3, 3]
    assert packed["position_ids"].tolist() == [0, 1, 2, 0, 1, 0, 1]
    assert packed["images"].shape == (3, 3, 4, 4)
    assert packed["images"][0].sum() == 0 and packed["images"][1:].min() == 1


def test_mask_keeps_each_segment_to_itself_and_is_causal():
    segments = np.array([[1, 1, 2, 2, 2, 0]])
    mask = block_diagonal_causal_mask(segments)[0, 0]
    assert mask.shape == (6, 6)
    assert mask[1, 0] and mask[1, 1] and not mask[0, 1]  # causal inside segment 1
    assert not mask[2, 1] and not mask[3, 0]  # segment 2 never sees segment 1
    assert mask[4, 2] and mask[4, 3] and mask[4, 4]
    assert mask[5].tolist() == [False] * 5 + [True]  # padding sees only itself
    assert mask.sum(axis=1).min() >= 1  # no row without a key: no NaN in softmax
