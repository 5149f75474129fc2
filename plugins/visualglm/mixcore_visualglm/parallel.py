"""VisualGLM's tensor- and pipeline-parallel plan (names only, no Paddle import).

The EVA ViT and the Q-Former split as the toolkit's fragments say
(:mod:`mixcore.kit.parallel_plans`); the query tokens and the projection into ChatGLM stay
whole. ChatGLM-6B follows PaddleNLP's own split (``ChatGLMPretrainedModel.
_get_tensor_parallel_mappings``): ``query_key_value`` and ``dense_h_to_4h`` by column (the
fused projection is laid out per head, ``[q k v]`` of head 0, then head 1, ..., so a plain
column split gives each rank whole heads), ``attention.dense`` and ``dense_4h_to_h`` by row, the
word embeddings by vocabulary rows; the head shares that table, so its logits are gathered.
"""

from __future__ import annotations

from typing import Any

from mixcore.api import ParallelPlan
from mixcore.kit.parallel_plans import joined, qformer_plan, vision_transformer_plan

#: What feeds the language model; it stays on the first pipeline stage.
FIRST_STAGE = ("vision_model", "query_tokens", "qformer", "language_projection")

_GLM = r"language_model\.chatglm\.transformer"
_BLOCK = rf"{_GLM}\.layers\.\d+"


def parallel_plan(config: Any) -> ParallelPlan:
    """The plan of a ``VisualGLMForConditionalGeneration`` with this config."""
    layers = int(config.num_layers)
    stack = "language_model.chatglm.transformer"
    return joined(
        vision_transformer_plan("vision_model", bool(config.vision().get("qkv_bias", True))),
        qformer_plan("qformer"),
        {"pipeline_layers": FIRST_STAGE, "first_stage": FIRST_STAGE},
        column=(rf"{_BLOCK}\.attention\.query_key_value", rf"{_BLOCK}\.mlp\.dense_h_to_4h"),
        row=(rf"{_BLOCK}\.attention\.dense", rf"{_BLOCK}\.mlp\.dense_4h_to_h"),
        vocab=(rf"{_GLM}\.word_embeddings",),
        gathered=(r"language_model\.lm_head",),
        split_axes={r"language_model\.lm_head\.decoder_weight": 0},
        heads={rf"{_BLOCK}\.attention": "num_attention_heads"},
        pipeline_layers=(
            f"{stack}.word_embeddings",
            *(f"{stack}.layers.{i}" for i in range(layers)),
            f"{stack}.final_layernorm",
            "language_model.lm_head",
        ),
    )
