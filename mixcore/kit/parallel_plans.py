"""Plan fragments for the toolkit's own layers (:mod:`mixcore.kit.nn`), which BLIP-2 and
VisualGLM share: the pre-norm ViT and the Q-Former. Each returns the keyword arguments of a
:class:`mixcore.api.ParallelPlan` for the layers under ``prefix``; a model plugin adds its
language model's and joins them with :func:`joined`. No Paddle import.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from mixcore.api.parallel import ParallelPlan

__all__ = ["joined", "qformer_plan", "vision_transformer_plan"]


def vision_transformer_plan(prefix: str, qkv_bias: bool = True) -> dict[str, Any]:
    """:class:`~mixcore.kit.nn.vision_transformer.VisionTransformer` under ``prefix``.

    ``qkv`` is ``[all q | all k | all v]`` (3 fused parts) with its q and v biases split like
    the q and v blocks (when the config has them: ``qkv_bias``); ``projection`` and ``fc2`` are row layers, ``fc1`` a column layer. The
    patch embedding, class token, positions and LayerNorms stay whole.
    """
    block = rf"{re.escape(prefix)}\.encoder\.layers\.\d+"
    return {
        "column": (rf"{block}\.self_attn\.qkv", rf"{block}\.mlp\.fc1"),
        "row": (rf"{block}\.self_attn\.projection", rf"{block}\.mlp\.fc2"),
        "fused": {rf"{block}\.self_attn\.qkv\.(weight|lora_B)": 3},
        "split_axes": {rf"{block}\.self_attn\.(q|v)_bias": 0} if qkv_bias else {},
        "heads": {rf"{block}\.self_attn": "num_heads"},
    }


def qformer_plan(prefix: str) -> dict[str, Any]:
    """:class:`~mixcore.kit.nn.qformer.QFormer` under ``prefix``: query, key and value of the
    self- and cross-attention by column, their output ``dense`` by row; the feed-forward
    ``intermediate(_query).dense`` by column and ``output(_query).dense`` by row."""
    layer = rf"{re.escape(prefix)}\.encoder\.layer\.\d+"
    attention = rf"{layer}\.(attention|crossattention)"
    return {
        "column": (
            rf"{attention}\.attention\.(query|key|value)",
            rf"{layer}\.intermediate(_query)?\.dense",
        ),
        "row": (rf"{attention}\.output\.dense", rf"{layer}\.output(_query)?\.dense"),
        "heads": {rf"{attention}\.attention": "num_heads"},
    }


def joined(*parts: Mapping[str, Any], **rest: Any) -> ParallelPlan:
    """One plan from fragments: tuples concatenated, mappings merged, ``rest`` added last."""
    fields: dict[str, Any] = {}
    for part in (*parts, rest):
        for key, value in part.items():
            if isinstance(value, Mapping):
                fields[key] = {**fields.get(key, {}), **value}
            else:
                fields[key] = (*fields.get(key, ()), *value)
    return ParallelPlan(**fields)
