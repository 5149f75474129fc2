"""MIXToken packing: several samples in one sequence, each attending only to itself.

Packing removes padding: instead of right-padding every sample of a batch to the longest one,
samples are laid end to end in sequences of at most ``max_length`` tokens (image tokens
included). Done naively (PaddleMIX's MIXToken: concatenate and keep a plain causal mask) this
changes what the model learns: a token can attend to the samples packed before it, and position
ids run on through the pack, so the same sample gets a different loss packed and unpacked.

Here each packed sample is a *segment*. :func:`pack_features` concatenates the features of the
segments and adds ``segment_ids`` (1, 2, ... per token; 0 is padding) and ``position_ids`` that
restart at 0 in every segment. Labels need no change: features carry next-token labels that end
with -100 in each sample, so no label points across a boundary. A model plugin that claims the
``packing`` capability turns ``segment_ids`` into a block-diagonal causal mask in its
``collate_batch`` (:func:`block_diagonal_causal_mask` builds one), and the packed batch gives every
sample the loss and gradients it gets alone (``tests/core/test_packing.py`` and the model tests
prove it).

The plan (:func:`plan_packs`) is best-fit decreasing bin packing over the sample lengths, which
leaves a few percent of padding at most on realistic length mixes, in ``O(n log n)``
(:mod:`mixcore.kit.pack_plan`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from mixcore.kit.pack_plan import PackPlan, plan_pack_array

__all__ = [
    "PER_TOKEN_KEYS",
    "PackPlan",
    "block_diagonal_causal_mask",
    "pack_features",
    "packing_efficiency",
    "plan_pack_array",
    "plan_packs",
]

#: Feature keys that hold one value per token and are therefore concatenated along the sequence.
#: Every other array is concatenated along its first axis (images: ``[n_images, ...]``).
PER_TOKEN_KEYS = ("input_ids", "labels", "attention_mask", "token_type_ids", "source_ids")


def plan_packs(lengths: Sequence[int], capacity: int, seed: int = 0) -> list[list[int]]:
    """Group sample indexes into packs whose lengths sum to at most ``capacity``, as lists.

    Best-fit decreasing (:func:`mixcore.kit.pack_plan.plan_pack_array`, which returns the same
    plan as arrays, the form to use for millions of samples): samples are taken longest first
    (ties in a seeded random order) and each goes into the open pack with the least room that
    still fits it, or a new pack; within a pack the indexes keep the order they were placed in.
    The same ``lengths`` and ``seed`` always give the same plan. A sample longer than
    ``capacity`` is a ``ValueError``: callers apply their over-long policy first.
    """
    return plan_pack_array(lengths, capacity, seed).to_lists()


def packing_efficiency(lengths: Sequence[int], packs: Sequence[Sequence[int]], capacity: int):
    """Share of the packed sequences' ``capacity`` slots that hold real tokens (0..1)."""
    if not packs:
        return 0.0
    return sum(lengths[i] for pack in packs for i in pack) / (len(packs) * capacity)


def pack_features(features: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Concatenate per-sample features into one packed sample.

    Keys in :data:`PER_TOKEN_KEYS` (1-D, one value per token) are joined along the sequence; any
    other array is joined along its first axis in segment order (so the i-th image of the pack is
    the i-th image span in ``input_ids``); features lacking a key another segment has (a
    text-only sample beside an image sample) simply contribute nothing to it. Adds
    ``segment_ids`` (1-based per sample) and ``position_ids`` (restarting at 0 per sample).
    Non-array values (strings, lists) are collected into a list under the same key.
    """
    if not features:
        raise ValueError("cannot pack an empty list of features")
    lengths = [len(f["input_ids"]) for f in features]
    keys: list[str] = []
    for f in features:
        keys.extend(k for k in f if k not in keys)
    packed: dict[str, Any] = {}
    for key in keys:
        present = [f[key] for f in features if key in f]
        if key in PER_TOKEN_KEYS:
            if len(present) != len(features):
                raise ValueError(f"per-token feature {key!r} is missing from some samples")
            packed[key] = np.concatenate([np.asarray(v) for v in present])
        elif all(isinstance(v, np.ndarray) for v in present):
            present = [v for v in present if v.ndim > 0 and v.shape[0] > 0] or present[:1]
            packed[key] = np.concatenate(present) if present[0].ndim > 0 else np.stack(present)
        else:
            packed[key] = list(present)
    packed["segment_ids"] = np.concatenate(
        [np.full(n, s + 1, dtype=np.int64) for s, n in enumerate(lengths)]
    )
    packed["position_ids"] = np.concatenate([np.arange(n, dtype=np.int64) for n in lengths])
    return packed


def block_diagonal_causal_mask(segment_ids: np.ndarray) -> np.ndarray:
    """A boolean "may attend" mask ``[batch, 1, len, len]`` from ``segment_ids`` ``[batch, len]``.

    Query ``q`` may attend key ``k`` when both lie in the same segment and ``k <= q``. Padding
    (segment 0) attends only to itself, so every row has one allowed key and softmax never sees
    a row of nothing (which would be NaN); its labels are -100, so it carries no loss.
    """
    segment_ids = np.asarray(segment_ids)
    length = segment_ids.shape[-1]
    same = segment_ids[:, :, None] == segment_ids[:, None, :]
    causal = np.tril(np.ones((length, length), dtype=bool))
    mask = same & causal[None]
    padding = segment_ids == 0
    if padding.any():
        eye = np.eye(length, dtype=bool)[None]
        mask = np.where(padding[:, :, None], eye, mask)
    return mask[:, None, :, :]
