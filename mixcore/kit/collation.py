"""Batches from features: right padding for training, left padding for generation.

Collators run inside data-loader worker processes. Creating Paddle tensors there (in a process
forked from one that already runs Paddle) crashes workers now and then with a segmentation fault,
so collators return numpy arrays and Paddle's data loader converts them in the training process.
Code that calls a collator itself, outside a data loader, converts with :func:`to_tensors`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from mixcore.api.constants import IGNORE_INDEX
from mixcore.kit.packing import PER_TOKEN_KEYS, block_diagonal_causal_mask

__all__ = ["LeftPadded", "left_pad", "pad_batch", "to_tensors"]

#: What padding positions of each per-token key hold.
_PAD_VALUES = {"labels": IGNORE_INDEX, "attention_mask": 0, "token_type_ids": 0}


def pad_batch(
    features: Sequence[dict[str, Any]],
    pad_id: int,
    *,
    images: Literal["concat", "stack"] = "concat",
    image_key: str | None = "images",
    image_counts: str | None = None,
    packed_attention: Literal["mask", "segments"] = "mask",
) -> dict[str, Any]:
    """Right-pad per-sample features into one batch of numpy arrays.

    ``input_ids`` pad with ``pad_id``, ``labels`` with :data:`~mixcore.api.IGNORE_INDEX`, and
    ``attention_mask`` (2-D, 1 = real token) is made when absent. Packed features (every one
    with ``segment_ids``, see :mod:`mixcore.kit.packing`) get a 4-D boolean block-diagonal
    causal mask ``[batch, 1, len, len]`` instead and their per-sample ``position_ids``, so each
    packed sample sees only itself and is positioned as if it were alone. With
    ``packed_attention="segments"`` packed batches keep ``segment_ids`` ``[batch, len]`` (0 on
    padding) and the 2-D ``attention_mask`` instead of the ``len x len`` mask, for a model that
    attends per segment (:mod:`mixcore.kit.nn.segment_attention`).

    Images (``image_key``) are ``"concat"``-enated in reading order (sample 0's first), for
    models that fill image slots in order, or ``"stack"``-ed one per sample ``[batch, ...]``;
    with ``image_counts`` the number of images of each sample is added under that key;
    ``image_key=None`` treats images like any other key. Any
    other array key is stacked (equal shapes) or, when shapes differ, a ``ValueError`` naming
    the key: such a key is the plugin's to collate.
    """
    if not features:
        raise ValueError("cannot collate an empty list of features")
    rows = len(features)
    longest = max(len(f["input_ids"]) for f in features)
    packed = all("segment_ids" in f for f in features)
    batch: dict[str, Any] = {}
    token_keys = [k for k in PER_TOKEN_KEYS if k in features[0] and k != "source_ids"]
    if packed:
        token_keys += ["segment_ids", "position_ids"]
    for key in token_keys:
        fill = pad_id if key == "input_ids" else _PAD_VALUES.get(key, 0)
        out = np.full((rows, longest), fill, dtype=np.int64)
        for row, f in enumerate(features):
            value = np.asarray(f[key])
            out[row, : len(value)] = value
        batch[key] = out
    if "attention_mask" not in batch:
        mask = np.zeros((rows, longest), dtype=np.int64)
        for row, f in enumerate(features):
            mask[row, : len(f["input_ids"])] = 1
        batch["attention_mask"] = mask
    if packed and packed_attention == "mask":
        batch["attention_mask"] = block_diagonal_causal_mask(batch.pop("segment_ids"))
    elif packed and packed_attention != "segments":
        raise ValueError(f"packed_attention must be 'mask' or 'segments', not {packed_attention!r}")
    if image_key is not None and any(image_key in f for f in features):
        batch.update(_images(features, image_key, images, image_counts))
    for key in features[0]:
        if key in batch or key in token_keys or key in (image_key, "segment_ids", "source_ids"):
            continue
        values = [np.asarray(f[key]) for f in features]
        if len({v.shape for v in values}) > 1:
            raise ValueError(
                f"feature {key!r} has different shapes across the batch; the model plugin must "
                "collate it"
            )
        batch[key] = np.stack(values)
    return batch


def _images(
    features: Sequence[dict[str, Any]], key: str, mode: str, counts_key: str | None
) -> dict[str, Any]:
    arrays = [np.asarray(f[key]) for f in features if key in f]
    counts = [len(f[key]) if key in f else 0 for f in features]
    out: dict[str, Any] = {}
    if mode == "stack":
        if any(n != 1 for n in counts):
            raise ValueError(f"stacked images need one image per sample, got counts {counts}")
        out[key] = np.concatenate(arrays)
    elif mode == "concat":
        present = [a for a in arrays if len(a)]
        if present:
            out[key] = np.concatenate(present)
    else:
        raise ValueError(f"images must be 'concat' or 'stack', not {mode!r}")
    if counts_key:
        out[counts_key] = np.asarray(counts, dtype=np.int64)
    return out


@dataclass(frozen=True)
class LeftPadded:
    """Prompts left-padded for generation: ``input_ids`` and ``attention_mask`` ``[batch, len]``
    (int64), so every prompt's last token sits in the last column. The decoding loop counts
    positions from the mask (real tokens only), as each prompt would have them alone."""

    input_ids: np.ndarray
    attention_mask: np.ndarray


def left_pad(sequences: Sequence[Sequence[int]], pad_id: int) -> LeftPadded:
    """Left-pad token id sequences to the longest one."""
    if not sequences:
        raise ValueError("no prompts to pad")
    longest = max(len(s) for s in sequences)
    ids = np.full((len(sequences), longest), pad_id, dtype=np.int64)
    mask = np.zeros((len(sequences), longest), dtype=np.int64)
    for row, seq in enumerate(sequences):
        if len(seq):
            ids[row, longest - len(seq) :] = seq
            mask[row, longest - len(seq) :] = 1
    return LeftPadded(ids, mask)


def to_tensors(batch: dict[str, Any]) -> dict[str, Any]:
    """The same batch with every numpy array turned into a Paddle tensor; other values kept."""
    import paddle

    return {
        key: paddle.to_tensor(value) if isinstance(value, np.ndarray) else value
        for key, value in batch.items()
    }
