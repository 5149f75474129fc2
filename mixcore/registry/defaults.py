"""The core's default hook implementations, registered like any plugin but tried last."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from mixcore.api.markers import hookimpl
from mixcore.api.records import ModelBundle

manifest = {"api_version": 1, "description": "mixcore's default hook implementations"}

IGNORE_INDEX = -100


@hookimpl(trylast=True)
def collate_batch(
    model_name: str, features: Sequence[dict[str, Any]], bundle: ModelBundle
) -> dict[str, Any]:
    """Right-pad ``input_ids`` (pad id), ``labels`` (-100) and ``attention_mask`` (0); stack the
    rest, as numpy arrays. Keys whose arrays differ in shape across the batch must be collated by
    the plugin."""
    import numpy as np

    pad_id = getattr(bundle.tokenizer, "pad_token_id", None)
    pad_id = 0 if pad_id is None else pad_id
    longest = max(len(f["input_ids"]) for f in features)
    batch: dict[str, Any] = {}
    padding = {"input_ids": pad_id, "labels": IGNORE_INDEX, "attention_mask": 0}
    for key in features[0]:
        values = [np.asarray(f[key]) for f in features]
        if key in padding:
            out = np.full((len(values), longest), padding[key], dtype=np.int64)
            for row, value in enumerate(values):
                out[row, : len(value)] = value
            batch[key] = out
        else:
            batch[key] = np.stack(values)
    if "attention_mask" not in batch:
        mask = np.zeros((len(features), longest), dtype=np.int64)
        for row, f in enumerate(features):
            mask[row, : len(f["input_ids"])] = 1
        batch["attention_mask"] = mask
    return batch


@hookimpl(trylast=True)
def save_model(model_name: str, bundle: ModelBundle, folder: str) -> str:
    """Save with PaddleNLP's own ``save_pretrained`` (safetensors weights)."""
    bundle.model.save_pretrained(folder, safe_serialization=True)
    if bundle.tokenizer is not None:
        bundle.tokenizer.save_pretrained(folder)
    return folder
