"""BLIP-2's tensor- and pipeline-parallel plan (names only, no Paddle import).

The ViT and the Q-Former split as the toolkit's fragments say
(:mod:`mixcore.kit.parallel_plans`); the query tokens and the language projection stay whole.
The language models follow PaddleNLP's own splits (``_get_tensor_parallel_mappings`` of OPT
and T5): OPT's ``q/k/v_proj`` and ``linear1`` by column, ``out_proj`` and ``linear2`` by row,
the word embeddings by vocabulary rows (the head shares that table, so its logits are
gathered); T5's ``q/k/v``, ``wi``/``wi_0``/``wi_1`` by column, ``o`` and ``wo`` by row,
``shared`` by rows, ``lm_head`` by column with its logits gathered, and each relative-position
table ``[buckets, heads]`` by heads.
"""

from __future__ import annotations

from typing import Any

from mixcore.api import ParallelPlan
from mixcore.kit.parallel_plans import joined, qformer_plan, vision_transformer_plan

#: What feeds the language model; it stays on the first pipeline stage.
FIRST_STAGE = ("vision_model", "query_tokens", "qformer", "language_projection")

_OPT = r"language_model\.opt\.decoder\.layers\.\d+"
_T5 = r"language_model\.t5\.(encoder|decoder)\.block\.\d+\.layer\.\d+"


def _opt(layers: int) -> dict[str, Any]:
    return {
        "column": (rf"{_OPT}\.self_attn\.(q|k|v)_proj", rf"{_OPT}\.linear1"),
        "row": (rf"{_OPT}\.self_attn\.out_proj", rf"{_OPT}\.linear2"),
        "vocab": (r"language_model\.opt\.embeddings\.word_embeddings",),
        "gathered": (r"language_model\.lm_head",),
        "split_axes": {r"language_model\.lm_head\.decoder_weight": 0},
        "heads": {rf"{_OPT}\.self_attn": "num_heads"},
        "pipeline_layers": (
            "language_model.opt.embeddings",
            *(f"language_model.opt.decoder.layers.{i}" for i in range(layers)),
            "language_model.opt.decoder.final_layer_norm",
            "language_model.lm_head",
        ),
    }


def _t5(encoder_layers: int, decoder_layers: int) -> dict[str, Any]:
    attention = rf"{_T5}\.(SelfAttention|EncDecAttention)"
    return {
        "column": (
            rf"{attention}\.(q|k|v)",
            rf"{_T5}\.DenseReluDense\.wi(_0|_1)?",
            r"language_model\.lm_head",
        ),
        "row": (rf"{attention}\.o", rf"{_T5}\.DenseReluDense\.wo"),
        "vocab": (r"language_model\.t5\.shared",),
        "gathered": (r"language_model\.lm_head",),
        "split_axes": {rf"{_T5}\.SelfAttention\.relative_attention_bias\.weight": 1},
        "heads": {attention: ("n_heads", "inner_dim")},
        "pipeline_layers": (
            "language_model.t5.shared",
            *(f"language_model.t5.encoder.block.{i}" for i in range(encoder_layers)),
            "language_model.t5.encoder.final_layer_norm",
            *(f"language_model.t5.decoder.block.{i}" for i in range(decoder_layers)),
            "language_model.t5.decoder.final_layer_norm",
            "language_model.lm_head",
        ),
    }


def parallel_plan(config: Any) -> ParallelPlan:
    """The plan of a ``Blip2ForConditionalGeneration`` with this config (its ``family`` picks
    the language model's part)."""
    text = config.text_config
    if config.family == "opt":
        language = _opt(int(text["num_hidden_layers"]))
    else:
        layers = int(text["num_layers"])
        language = _t5(layers, int(text.get("num_decoder_layers") or layers))
    return joined(
        vision_transformer_plan("vision_model", bool(config.vision_config.get("qkv_bias", True))),
        qformer_plan("qformer"),
        {"pipeline_layers": FIRST_STAGE, "first_stage": FIRST_STAGE},
        language,
    )
