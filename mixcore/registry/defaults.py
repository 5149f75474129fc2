"""The core's default hook implementations, registered like any plugin but tried last."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from mixcore.api.markers import hookimpl
from mixcore.api.records import ModelBundle

manifest = {"api_version": 1, "description": "mixcore's default hook implementations"}


@hookimpl(trylast=True)
def collate_batch(
    model_name: str, features: Sequence[dict[str, Any]], bundle: ModelBundle
) -> dict[str, Any]:
    """Right-pad ``input_ids`` (pad id), ``labels`` (-100) and ``attention_mask`` (0); stack the
    rest, as numpy arrays (:func:`mixcore.kit.collation.pad_batch`). Keys whose arrays differ in
    shape across the batch must be collated by the plugin."""
    from mixcore.kit.collation import pad_batch

    pad_id = getattr(bundle.tokenizer, "pad_token_id", None)
    return pad_batch(features, 0 if pad_id is None else pad_id, image_key=None)


@hookimpl(trylast=True)
def save_model(model_name: str, bundle: ModelBundle, folder: str) -> str:
    """Save with PaddleNLP's own ``save_pretrained`` (safetensors weights)."""
    bundle.model.save_pretrained(folder, safe_serialization=True)
    if bundle.tokenizer is not None:
        bundle.tokenizer.save_pretrained(folder)
    return folder
