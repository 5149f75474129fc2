"""VisualGLM configuration in the published form, and its presets.

``THUDM/visualglm-6b``'s ``config.json`` is a ChatGLM-6B config (``model_type: chatglm``, its
keys at the top level) plus the image side in SwissArmyTransformer's argument names:
``eva_config`` (the EVA ViT), ``qformer_config`` (the Q-Former) and ``image_length`` (32 query
outputs stand for an image). :class:`VisualGLMConfig` keeps exactly that, so a downloaded folder
is read as it is and a saved one has the published layout; :meth:`VisualGLMConfig.vision`,
:meth:`~VisualGLMConfig.qformer` and :meth:`~VisualGLMConfig.chatglm` translate the three parts
into the toolkit's and PaddleNLP's terms.

The translation, from SwissArmyTransformer's ``ViTModel`` / ``BaseModel`` as VisualGLM builds
them: the ViT is pre-norm (``layernorm_order: pre``) without a final LayerNorm of its own, closed
by ``ln_vision``, a PyTorch-default LayerNorm (epsilon 1e-5); the Q-Former runs SAT's ``post``
order (the toolkit's ``norm_layout="sat"``) with cross-attention on the layers its
``is_decoder`` list marks, which must be every ``k``-th from layer 0; both use exact GELU; the
Q-Former's "vocabulary" is its query tokens (``vocab_size`` 32).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any, ClassVar

from paddlenlp.transformers import PretrainedConfig

from mixcore.api.errors import UnknownNameError

#: What THUDM's folders (and mixcore's) say in ``model_type``.
PUBLISHED_MODEL_TYPE = "chatglm"
#: The architecture a folder with an image side names.
ARCHITECTURE = "ChatGLMForConditionalGenerationWithImage"
#: ``ln_vision`` is ``torch.nn.LayerNorm(hidden)``: PyTorch's default epsilon.
LN_VISION_EPS = 1e-5

#: ChatGLM-6B's own keys (Hugging Face names) in a VisualGLM config.
CHATGLM_KEYS = (
    "hidden_size",
    "num_layers",
    "num_attention_heads",
    "inner_hidden_size",
    "vocab_size",
    "max_sequence_length",
    "position_encoding_2d",
    "layernorm_epsilon",
    "bos_token_id",
    "eos_token_id",
    "mask_token_id",
    "gmask_token_id",
    "pad_token_id",
    "pre_seq_len",
    "quantization_bit",
)


class VisualGLMConfig(PretrainedConfig):
    """A VisualGLM config (see the module docstring). ``image_token_id`` is the id whose
    ``image_length`` copies mark the image in mixcore's ``input_ids`` (the query outputs are
    written over them); it is mixcore's, absent from THUDM's configs, where the tokenizer's
    ``[sMASK]`` (a ChatGLM-6B symbol no text encodes to) is taken."""

    model_type = "visualglm"
    keys_to_ignore_at_inference: ClassVar[list[str]] = ["past_key_values"]

    def __init__(
        self,
        eva_config: Mapping[str, Any] | None = None,
        qformer_config: Mapping[str, Any] | None = None,
        image_length: int = 32,
        image_token_id: int | None = None,
        initializer_range: float = 0.02,
        **kwargs: Any,
    ) -> None:
        text = {key: kwargs.pop(key) for key in CHATGLM_KEYS if key in kwargs}
        super().__init__(**kwargs)
        self.eva_config = dict(eva_config or {})
        self.qformer_config = dict(qformer_config or {})
        self.image_length = int(image_length)
        self.image_token_id = image_token_id
        self.initializer_range = initializer_range
        # ChatGLM's keys live at the top level, as in THUDM's config.json; PretrainedConfig has
        # some of them (vocab_size, the token ids), so they are set after its __init__.
        for key, value in text.items():
            setattr(self, key, value)

    def chatglm(self) -> dict[str, Any]:
        """The ChatGLM-6B keys of this config (what ``chatglm_language.chatglm_config`` takes)."""
        return {key: getattr(self, key) for key in CHATGLM_KEYS if hasattr(self, key)}

    def vision(self) -> dict[str, Any]:
        """The EVA ViT as a :class:`mixcore.kit.nn.vision_transformer.VisionConfig` dict."""
        eva = self.eva_config
        if eva.get("layernorm_order", "pre") != "pre" or eva.get("use_final_layernorm", False):
            raise ValueError(
                "eva_config: only the pre-norm ViT without a final LayerNorm (VisualGLM's: "
                "layernorm_order pre, use_final_layernorm false) is supported"
            )
        size = eva.get("image_size", 224)
        height, width = (size, size) if isinstance(size, int) else tuple(size)
        if height != width:
            raise ValueError(f"eva_config.image_size {list(size)} is not square")
        hidden = int(eva["hidden_size"])
        return {
            "hidden_size": hidden,
            "intermediate_size": int(eva.get("inner_hidden_size") or 4 * hidden),
            "num_hidden_layers": int(eva["num_layers"]),
            "num_attention_heads": int(eva["num_attention_heads"]),
            "image_size": int(height),
            "patch_size": int(eva.get("patch_size", 14)),
            "num_channels": int(eva.get("in_channels", 3)),
            "hidden_act": "gelu",
            "layer_norm_eps": float(eva.get("layernorm_epsilon", 1e-5)),
            "post_layer_norm_eps": LN_VISION_EPS,
            "attention_dropout": float(eva.get("attention_dropout", 0.0)),
            "qkv_bias": True,
        }

    def qformer(self) -> dict[str, Any]:
        """The Q-Former as a :class:`mixcore.kit.nn.qformer.QFormerConfig` dict (sat layout)."""
        q = self.qformer_config
        if q.get("layernorm_order", "post") != "post":
            raise ValueError("qformer_config: only SwissArmyTransformer's post order is supported")
        layers = int(q["num_layers"])
        hidden = int(q["hidden_size"])
        return {
            "hidden_size": hidden,
            "num_hidden_layers": layers,
            "num_attention_heads": int(q["num_attention_heads"]),
            "intermediate_size": int(q.get("inner_hidden_size") or 4 * hidden),
            "hidden_act": "gelu",
            "hidden_dropout_prob": float(q.get("hidden_dropout", 0.1)),
            "attention_probs_dropout_prob": float(q.get("attention_dropout", 0.1)),
            "layer_norm_eps": float(q.get("layernorm_epsilon", 1e-12)),
            "cross_attention_frequency": cross_attention_frequency(q.get("is_decoder"), layers),
            "encoder_hidden_size": int(q["cross_attn_hidden_size"]),
            "norm_layout": "sat",
        }


def cross_attention_frequency(is_decoder: Any, layers: int) -> int:
    """The ``k`` such that exactly the layers ``0, k, 2k, ...`` cross-attend, from SAT's
    ``is_decoder`` (a list of one flag per layer, or one flag for all)."""
    flags = [bool(is_decoder)] * layers if not isinstance(is_decoder, list) else is_decoder
    if len(flags) != layers:
        raise ValueError(f"qformer_config.is_decoder has {len(flags)} flags for {layers} layers")
    marked = [i for i, flag in enumerate(flags) if flag]
    if not marked:
        raise ValueError("qformer_config.is_decoder marks no cross-attention layer")
    step = marked[1] - marked[0] if len(marked) > 1 else layers
    if marked[0] != 0 or marked != list(range(0, layers, step)):
        raise ValueError(
            f"qformer_config.is_decoder marks layers {marked}; only every k-th layer from layer "
            "0 can cross-attend"
        )
    return step


# --- presets -------------------------------------------------------------------------------

#: The published sizes, as THUDM/visualglm-6b's config.json gives them.
VISUALGLM_6B: dict[str, Any] = {
    "hidden_size": 4096,
    "num_layers": 28,
    "num_attention_heads": 32,
    "inner_hidden_size": 16384,
    "vocab_size": 130528,
    "max_sequence_length": 2048,
    "position_encoding_2d": True,
    "layernorm_epsilon": 1e-5,
    "bos_token_id": 130004,
    "eos_token_id": 130005,
    "mask_token_id": 130000,
    "gmask_token_id": 130001,
    "pad_token_id": 3,
    "image_length": 32,
    "eva_config": {
        "num_layers": 39,
        "hidden_size": 1408,
        "num_attention_heads": 16,
        "vocab_size": 1,
        "layernorm_order": "pre",
        "model_parallel_size": 1,
        "max_sequence_length": 257,
        "inner_hidden_size": 6144,
        "use_final_layernorm": False,
        "layernorm_epsilon": 1e-6,
        "image_size": [224, 224],
        "pre_len": 1,
        "post_len": 0,
        "in_channels": 3,
        "num_classes": 0,
        "patch_size": 14,
    },
    "qformer_config": {
        "num_layers": 12,
        "hidden_size": 768,
        "num_attention_heads": 12,
        "vocab_size": 32,
        "layernorm_order": "post",
        "model_parallel_size": 1,
        "max_sequence_length": 0,
        "is_decoder": [True, False] * 6,
        "cross_attn_hidden_size": 1408,
        "layernorm_epsilon": 1e-12,
    },
}

#: A tiny VisualGLM for tests and demos, sized as BLIP-2's tiny preset: 56 px pictures in 7 px
#: patches, a 4-layer ViT, a 2-layer Q-Former with 16 queries and a 2-layer ChatGLM over the
#: generated 1024-token vocabulary (:mod:`mixcore_visualglm.tokenization`). At these widths
#: the wider initialiser range is what lets it learn shapes (0.02 stays near chance).
TINY: dict[str, Any] = {
    "hidden_size": 64,
    "num_layers": 2,
    "num_attention_heads": 4,
    "inner_hidden_size": 128,
    "vocab_size": 1024,
    "max_sequence_length": 512,
    "position_encoding_2d": True,
    "layernorm_epsilon": 1e-5,
    "bos_token_id": 8,
    "eos_token_id": 9,
    "mask_token_id": 5,
    "gmask_token_id": 6,
    "pad_token_id": 3,
    "image_length": 16,
    "initializer_range": 0.1,
    "eva_config": {
        "num_layers": 4,
        "hidden_size": 48,
        "num_attention_heads": 4,
        "inner_hidden_size": 96,
        "layernorm_order": "pre",
        "use_final_layernorm": False,
        "layernorm_epsilon": 1e-6,
        "image_size": [56, 56],
        "in_channels": 3,
        "patch_size": 7,
    },
    "qformer_config": {
        "num_layers": 2,
        "hidden_size": 48,
        "num_attention_heads": 4,
        "inner_hidden_size": 96,
        "vocab_size": 16,
        "layernorm_order": "post",
        # Cross-attention in both layers, as BLIP-2's tiny Q-Former: with it in the first only,
        # the tiny model answered shapes 68% (colours 100%) after 20 epochs.
        "is_decoder": [True, True],
        "cross_attn_hidden_size": 48,
        "layernorm_epsilon": 1e-12,
        "hidden_dropout": 0.0,
        "attention_dropout": 0.0,
    },
}

TINY_PRESET = "visualglm/tiny"
PRESETS: dict[str, dict[str, Any]] = {
    TINY_PRESET: TINY,
    "visualglm-6b": VISUALGLM_6B,
    "THUDM/visualglm-6b": VISUALGLM_6B,
}


def preset_fields(name: str) -> dict[str, Any]:
    """A copy of a preset's config fields."""
    if name not in PRESETS:
        raise UnknownNameError("VisualGLM preset", name, sorted(PRESETS))
    return copy.deepcopy(PRESETS[name])


def apply_overrides(fields: dict[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """``fields`` with ``overrides`` applied; ``eva_config`` and ``qformer_config`` merge key by
    key, so ``{"eva_config": {"num_layers": 2}}`` changes one size."""
    out = copy.deepcopy(fields)
    for key, value in overrides.items():
        if key in ("eva_config", "qformer_config") and isinstance(value, Mapping):
            out[key] = {**out.get(key, {}), **value}
        else:
            out[key] = copy.deepcopy(value)
    return out
