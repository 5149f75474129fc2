"""Qwen-VL configuration: a QWen language model plus the ``visual`` dict of Hugging Face Qwen-VL.

The language-model fields are those of PaddleNLP's ``QWenConfig`` so that :meth:`lm_config`
can hand them to ``QWenForCausalLM`` unchanged; the ``visual`` dict keeps the keys and meaning of
the ``visual`` entry in Hugging Face Qwen-VL's ``config.json`` so that configs convert both ways.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from typing import Any, ClassVar

from paddlenlp.transformers import PretrainedConfig
from paddlenlp.transformers.qwen.configuration import QWenConfig

from mixcore.api.errors import UnknownNameError
from mixcore_qwen_vl.errors import QwenVLConfigError
from mixcore_qwen_vl.special_tokens import (
    ENDOFTEXT,
    IMG_END,
    IMG_PAD,
    IMG_START,
    QWEN_NUM_MERGEABLE_RANKS,
    TINY_NUM_MERGEABLE_RANKS,
    special_token_ids,
)

#: Rows of the vision tower's learned positional table. Hugging Face Qwen-VL fixes it at 256
#: (a 16x16 grid) whatever the image size and resizes it to the actual patch grid on the fly.
POSITIONAL_TABLE_SIZE = 256

#: Defaults for keys that Hugging Face's ``visual`` dict may omit.
_VISUAL_DEFAULTS: dict[str, Any] = {
    "heads": 16,
    "image_size": 448,
    "layers": 48,
    "mlp_ratio": 4.9231,
    "output_dim": 4096,
    "patch_size": 14,
    "width": 1664,
    "n_queries": 256,
    "image_start_id": special_token_ids(QWEN_NUM_MERGEABLE_RANKS)[IMG_START],
}

_IMG_START_OFFSET = special_token_ids(0)[IMG_START] - special_token_ids(0)[ENDOFTEXT]

#: Configuration keys that belong to Qwen-VL only; everything else configures the language model.
_VL_ONLY_KEYS = frozenset({"visual", "image_start_id", "image_end_id", "image_pad_id", "mixcore"})


class QwenVLConfig(PretrainedConfig):
    """Sizes of a Qwen-VL model: QWen language-model fields plus a ``visual`` dict.

    ``visual`` holds ``heads``, ``image_size``, ``layers``, ``mlp_ratio``, ``output_dim``,
    ``patch_size``, ``width``, ``n_queries`` and ``image_start_id``, as in Hugging Face's
    config.json; an optional ``attn_pool_heads`` overrides the resampler's head count, which
    Hugging Face derives as ``output_dim // 128`` (zero for tiny models, hence the override).
    ``image_end_id`` and ``image_pad_id`` default to the two ids after ``image_start_id``, where
    Qwen-VL's tokenizer puts ``</img>`` and ``<imgpad>``.
    """

    model_type = "qwen_vl"
    keys_to_ignore_at_inference: ClassVar[list[str]] = ["past_key_values"]

    def __init__(
        self,
        vocab_size: int = 151936,
        hidden_size: int = 4096,
        num_hidden_layers: int = 32,
        num_attention_heads: int = 32,
        intermediate_size: int = 22016,
        seq_length: int = 2048,
        max_position_embeddings: int = 8192,
        kv_channels: int = 128,
        rotary_pct: float = 1.0,
        rotary_emb_base: int = 10000,
        layer_norm_epsilon: float = 1e-6,
        initializer_range: float = 0.02,
        emb_dropout_prob: float = 0.0,
        attn_dropout_prob: float = 0.0,
        scale_attn_weights: bool = True,
        use_dynamic_ntk: bool = True,
        use_logn_attn: bool = True,
        use_flash_attention: bool = False,
        use_fused_rms_norm: bool = False,
        use_fused_rope: bool = False,
        no_bias: bool = True,
        recompute_granularity: str = "full",
        use_cache: bool = True,
        tie_word_embeddings: bool = False,
        visual: Mapping[str, Any] | None = None,
        image_start_id: int | None = None,
        image_end_id: int | None = None,
        image_pad_id: int | None = None,
        pad_token_id: int | None = None,
        eos_token_id: int | None = None,
        bos_token_id: int | None = None,
        **kwargs: Any,
    ) -> None:
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.intermediate_size = intermediate_size
        self.seq_length = seq_length
        self.max_position_embeddings = max_position_embeddings
        self.kv_channels = kv_channels
        self.rotary_pct = rotary_pct
        self.rotary_emb_base = rotary_emb_base
        self.layer_norm_epsilon = layer_norm_epsilon
        self.initializer_range = initializer_range
        self.emb_dropout_prob = emb_dropout_prob
        self.attn_dropout_prob = attn_dropout_prob
        self.scale_attn_weights = scale_attn_weights
        self.use_dynamic_ntk = use_dynamic_ntk
        self.use_logn_attn = use_logn_attn
        self.use_fused_rms_norm = use_fused_rms_norm
        self.use_fused_rope = use_fused_rope
        self.no_bias = no_bias
        self.recompute_granularity = recompute_granularity

        merged = dict(_VISUAL_DEFAULTS)
        merged.update(visual or {})
        if image_start_id is not None:
            merged["image_start_id"] = image_start_id
        self.visual = merged
        self.image_start_id = int(merged["image_start_id"])
        self.image_end_id = self.image_start_id + 1 if image_end_id is None else image_end_id
        self.image_pad_id = self.image_start_id + 2 if image_pad_id is None else image_pad_id

        # QWen has one end-of-document token and no pad token, so <|endoftext|> plays both
        # roles; its id follows from <img>'s because both sit in the same special-token block.
        eod = self.image_start_id - _IMG_START_OFFSET
        super().__init__(
            pad_token_id=eod if pad_token_id is None else pad_token_id,
            eos_token_id=eod if eos_token_id is None else eos_token_id,
            bos_token_id=bos_token_id,
            use_cache=use_cache,
            use_flash_attention=use_flash_attention,
            tie_word_embeddings=tie_word_embeddings,
            **kwargs,
        )
        self.validate()

    @property
    def attn_pool_heads(self) -> int:
        """Heads of the resampler's cross-attention (Hugging Face: ``output_dim // 128``)."""
        explicit = self.visual.get("attn_pool_heads")
        if explicit:
            return int(explicit)
        return max(1, int(self.visual["output_dim"]) // 128)

    @property
    def n_queries(self) -> int:
        """Number of image tokens one image becomes (pad tokens per image span)."""
        return int(self.visual["n_queries"])

    def validate(self) -> None:
        """Raise :class:`QwenVLConfigError` naming every size that cannot build the model."""
        v = self.visual
        problems: list[str] = []
        if self.hidden_size % self.num_attention_heads:
            problems.append("hidden_size must be divisible by num_attention_heads")
        elif self.kv_channels * self.num_attention_heads != self.hidden_size:
            # PaddleNLP's QWen attention projects back with a hidden_size-wide c_proj.
            problems.append("kv_channels * num_attention_heads must equal hidden_size")
        if self.intermediate_size % 2:
            problems.append("intermediate_size must be even (QWen's MLP uses half per branch)")
        if int(v["output_dim"]) != self.hidden_size:
            problems.append("visual.output_dim must equal hidden_size (image features are tokens)")
        if int(v["width"]) % int(v["heads"]):
            problems.append("visual.width must be divisible by visual.heads")
        if int(v["output_dim"]) % self.attn_pool_heads:
            problems.append("visual.output_dim must be divisible by the resampler's head count")
        if int(v["output_dim"]) % 4:
            problems.append("visual.output_dim must be divisible by 4 (2-D sin-cos embeddings)")
        if math.isqrt(self.n_queries) ** 2 != self.n_queries:
            problems.append("visual.n_queries must be a square number (a grid of queries)")
        if int(v["image_size"]) < int(v["patch_size"]):
            problems.append("visual.image_size must be at least visual.patch_size")
        for name in ("image_start_id", "image_end_id", "image_pad_id"):
            if not 0 <= getattr(self, name) < self.vocab_size:
                problems.append(f"{name} must be a valid id below vocab_size")
        if problems:
            raise QwenVLConfigError("invalid Qwen-VL config: " + "; ".join(problems))

    def lm_config(self) -> QWenConfig:
        """The language-model part as PaddleNLP's ``QWenConfig``.

        Built from this config's full dictionary so that fields set by PaddleNLP (tensor
        parallel degree, dtype, recompute flags) reach the language model too.
        """
        fields = {k: v for k, v in self.to_dict().items() if k not in _VL_ONLY_KEYS}
        for key in ("model_type", "architectures", "auto_map", "quantization_config"):
            fields.pop(key, None)
        return QWenConfig(**fields)


def _tiny_preset() -> dict[str, Any]:
    ids = special_token_ids(TINY_NUM_MERGEABLE_RANKS)
    return {
        "vocab_size": 768,
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "kv_channels": 16,
        "intermediate_size": 256,
        "seq_length": 1024,
        "max_position_embeddings": 1024,
        # Small patches and four blocks: with 14-pixel patches and two blocks the model learns
        # colours but not shapes of the generated data (measured: chance-level shape answers).
        "visual": {
            "heads": 4,
            "image_size": 56,
            "layers": 4,
            "mlp_ratio": 2.0,
            "output_dim": 64,
            "patch_size": 7,
            "width": 48,
            "n_queries": 16,
            "attn_pool_heads": 4,
            "image_start_id": ids[IMG_START],
        },
        "image_end_id": ids[IMG_END],
        "image_pad_id": ids[IMG_PAD],
        "pad_token_id": ids[ENDOFTEXT],
        "eos_token_id": ids[ENDOFTEXT],
    }


def _chat_7b_preset() -> dict[str, Any]:
    # Published sizes of Qwen-VL-Chat (config.json on the Hugging Face Hub); n_queries is the
    # VisionTransformer default there (256), not a config.json key.
    return {
        "vocab_size": 151936,
        "hidden_size": 4096,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "kv_channels": 128,
        "intermediate_size": 22016,
        "seq_length": 2048,
        "max_position_embeddings": 8192,
        "layer_norm_epsilon": 1e-6,
        "rotary_emb_base": 10000,
        "rotary_pct": 1.0,
        # The published vision tower is what Hugging Face's defaults describe.
        "visual": dict(_VISUAL_DEFAULTS),
    }


#: Named model sizes. ``qwen-vl/qwen-vl-chat-7b`` is PaddleMIX's name for Qwen-VL-Chat.
PRESETS: dict[str, dict[str, Any]] = {
    "qwen-vl/qwen-vl-chat-7b": _chat_7b_preset(),
    "qwen_vl/tiny": _tiny_preset(),
}


def config_from_preset(name: str, **overrides: Any) -> QwenVLConfig:
    """Build the config of a named preset; ``overrides`` replace top-level fields."""
    if name not in PRESETS:
        raise UnknownNameError("Qwen-VL preset", name, list(PRESETS))
    fields = copy.deepcopy(PRESETS[name])
    fields.update(overrides)
    return QwenVLConfig(**fields)
