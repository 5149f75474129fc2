"""Qwen-VL's tensor- and pipeline-parallel plan (no Paddle import: the plan is names only).

The language model follows PaddleNLP's own QWen split (``QWenPretrainedModel.
_get_tensor_parallel_mappings``): ``c_attn`` (``[all q | all k | all v]``, so split per block),
``w1`` and ``w2`` by column, ``c_proj`` by row, ``wte`` by vocabulary rows, ``lm_head`` by
column with its logits gathered. The vision tower's blocks split the same way; their ``in_proj``
is laid out per head (``[q k v]`` of head 0, then head 1, ...), so a plain column split gives
each rank whole heads. The resampler (one cross-attention over all patches) and the final
projection stay whole on every rank.
"""

from __future__ import annotations

from typing import Any

from mixcore.api import ParallelPlan

_VIT = r"visual\.transformer\.resblocks\.\d+"
_LM = r"llm\.qwen\.h\.\d+"


def parallel_plan(config: Any) -> ParallelPlan:
    """The plan of a Qwen-VL model with this :class:`~mixcore_qwen_vl.configuration.QwenVLConfig`."""
    blocks = [f"llm.qwen.h.{i}" for i in range(int(config.num_hidden_layers))]
    return ParallelPlan(
        column=(
            rf"{_VIT}\.attn\.in_proj",
            rf"{_VIT}\.mlp\.c_fc",
            rf"{_LM}\.attn\.c_attn",
            rf"{_LM}\.mlp\.w[12]",
            r"llm\.lm_head",
        ),
        row=(rf"{_VIT}\.attn\.out_proj", rf"{_VIT}\.mlp\.c_proj", rf"{_LM}\.(attn|mlp)\.c_proj"),
        vocab=(r"llm\.qwen\.wte",),
        gathered=(r"llm\.lm_head",),
        fused={rf"{_LM}\.attn\.c_attn\.(weight|bias|lora_B)": 3},
        heads={rf"{_VIT}\.attn": "heads", rf"{_LM}\.attn": "num_heads"},
        pipeline_layers=("visual", "llm.qwen.wte", *blocks, "llm.qwen.ln_f", "llm.lm_head"),
        first_stage=("visual",),
    )
