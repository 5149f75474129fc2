"""BLIP-2 configuration: the three sub-configs of a Hugging Face ``Blip2Config``, and presets.

``vision_config``, ``qformer_config`` and ``text_config`` keep the keys and meaning they have in
a Hugging Face BLIP-2 ``config.json`` (``text_config.model_type`` is ``opt`` or ``t5``), so a
downloaded folder's config is read as it is and a saved one stays readable by transformers.
Presets give the published sizes (``Salesforce/blip2-opt-2.7b`` and the PaddleMIX names) and a
tiny size for each language-model family, whose vocabulary is generated
(:mod:`mixcore_blip2.tokenization`).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any, ClassVar

from paddlenlp.transformers import PretrainedConfig

from mixcore.api.errors import UnknownNameError

#: The Hugging Face ``model_type`` of BLIP-2 folders (and of mixcore's own).
MODEL_TYPE = "blip-2"
FAMILIES = ("opt", "t5")


class Blip2Config(PretrainedConfig):
    """Sizes of a BLIP-2 model (see the module docstring). ``image_token_index`` is the id
    whose ``num_query_tokens`` copies stand for the image in ``input_ids`` (None in configs
    written before transformers 4.47; the loader picks an unused id then)."""

    model_type = MODEL_TYPE
    keys_to_ignore_at_inference: ClassVar[list[str]] = ["past_key_values", "loss_terms"]

    def __init__(
        self,
        vision_config: Mapping[str, Any] | None = None,
        qformer_config: Mapping[str, Any] | None = None,
        text_config: Mapping[str, Any] | None = None,
        num_query_tokens: int = 32,
        image_token_index: int | None = None,
        initializer_range: float = 0.02,
        **kwargs: Any,
    ) -> None:
        kwargs.pop("use_decoder_only_language_model", None)  # derived from text_config
        super().__init__(**kwargs)
        self.vision_config = dict(vision_config or {})
        self.qformer_config = dict(qformer_config or {})
        self.text_config = dict(text_config or {"model_type": "opt"})
        self.num_query_tokens = num_query_tokens
        self.image_token_index = image_token_index
        self.initializer_range = initializer_range

    @property
    def family(self) -> str:
        """``opt`` or ``t5``: which language model decodes."""
        family = self.text_config.get("model_type", "opt")
        if family not in FAMILIES:
            raise ValueError(
                f"BLIP-2 with a {family!r} language model is not supported (only {FAMILIES})"
            )
        return family

    @property
    def use_decoder_only_language_model(self) -> bool:
        return self.family == "opt"

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        out["use_decoder_only_language_model"] = self.use_decoder_only_language_model
        return out


# --- presets -------------------------------------------------------------------------------

#: Hugging Face's BLIP-2 vision defaults: EVA-CLIP ViT-g/14 at 224 px.
VISION_PUBLISHED: dict[str, Any] = {
    "hidden_size": 1408,
    "intermediate_size": 6144,
    "num_hidden_layers": 39,
    "num_attention_heads": 16,
    "image_size": 224,
    "patch_size": 14,
    "hidden_act": "gelu",
    "layer_norm_eps": 1e-6,
    "attention_dropout": 0.0,
    "qkv_bias": True,
}
QFORMER_PUBLISHED: dict[str, Any] = {
    "vocab_size": 30522,
    "hidden_size": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "intermediate_size": 3072,
    "hidden_act": "gelu",
    "hidden_dropout_prob": 0.1,
    "attention_probs_dropout_prob": 0.1,
    "max_position_embeddings": 512,
    "layer_norm_eps": 1e-12,
    "cross_attention_frequency": 2,
    "encoder_hidden_size": 1408,
}


def _opt(hidden: int, ffn: int, layers: int, heads: int, vocab: int = 50272) -> dict[str, Any]:
    return {
        "model_type": "opt",
        "vocab_size": vocab,
        "hidden_size": hidden,
        "ffn_dim": ffn,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "max_position_embeddings": 2048,
        "word_embed_proj_dim": hidden,
        "do_layer_norm_before": True,
        "activation_function": "relu",
        "dropout": 0.1,
        "attention_dropout": 0.0,
        "enable_bias": True,
        "pad_token_id": 1,
        "bos_token_id": 2,
        "eos_token_id": 2,
        "tie_word_embeddings": True,
    }


def _t5(d_model: int, d_kv: int, d_ff: int, layers: int, heads: int, vocab: int = 32128):
    return {
        "model_type": "t5",
        "vocab_size": vocab,
        "d_model": d_model,
        "d_kv": d_kv,
        "d_ff": d_ff,
        "num_layers": layers,
        "num_decoder_layers": layers,
        "num_heads": heads,
        "relative_attention_num_buckets": 32,
        "relative_attention_max_distance": 128,
        "dropout_rate": 0.1,
        "layer_norm_epsilon": 1e-6,
        "feed_forward_proj": "gated-gelu",
        "tie_word_embeddings": False,
        "pad_token_id": 0,
        "eos_token_id": 1,
        "decoder_start_token_id": 0,
    }


def _published(text_config: dict[str, Any]) -> dict[str, Any]:
    return {
        "vision_config": dict(VISION_PUBLISHED),
        "qformer_config": dict(QFORMER_PUBLISHED),
        "text_config": text_config,
        "num_query_tokens": 32,
    }


#: Vocabulary of the generated tiny tokenizers is at most this big (the tiny LM's table size).
TINY_VOCAB = 1024


def _tiny(family: str) -> dict[str, Any]:
    # 7-pixel patches and four blocks: with 14-pixel patches and two, the model learns the
    # generated pictures' colours and shapes barely above chance (measured: 49.5% after 12
    # epochs), as the tiny Qwen-VL did.
    vision = {
        "hidden_size": 48,
        "intermediate_size": 96,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "image_size": 56,
        "patch_size": 7,
        "hidden_act": "gelu",
        "layer_norm_eps": 1e-6,
        "attention_dropout": 0.0,
        "qkv_bias": True,
    }
    qformer = {
        "vocab_size": TINY_VOCAB,
        "hidden_size": 48,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "intermediate_size": 96,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0,
        "max_position_embeddings": 64,
        "layer_norm_eps": 1e-12,
        "cross_attention_frequency": 1,
        "encoder_hidden_size": 48,
    }
    if family == "opt":
        text = _opt(64, 128, 2, 4, vocab=TINY_VOCAB)
        text.update(max_position_embeddings=256, dropout=0.0)
    else:
        text = _t5(64, 16, 128, 2, 4, vocab=TINY_VOCAB)
        text.update(relative_attention_num_buckets=8, relative_attention_max_distance=32)
        text.update(dropout_rate=0.0)
    return {
        "vision_config": vision,
        "qformer_config": qformer,
        "text_config": text,
        "num_query_tokens": 16,
        # BERT's 0.02 suits 768-wide layers; at width 48 each linear layer starts by shrinking
        # its input sevenfold and the attention stays uniform for long: trained from scratch the
        # tiny OPT model learnt colours but answered shapes at chance (31% after 20 epochs of
        # benchmarks/blip2_learning.py); at 0.1 it answers 95.5% of both.
        "initializer_range": 0.1,
    }


#: Preset name -> (its config fields, the family of its language model).
PRESETS: dict[str, dict[str, Any]] = {
    "blip2/tiny": _tiny("opt"),
    "blip2/tiny-opt": _tiny("opt"),
    "blip2/tiny-t5": _tiny("t5"),
    "blip2-opt-2.7b": _published(_opt(2560, 10240, 32, 32)),
    "blip2-opt-6.7b": _published(_opt(4096, 16384, 32, 32)),
    "blip2-flan-t5-xl": _published(_t5(2048, 64, 5120, 24, 32)),
}
#: Names a config may use for a preset, and the preset each one means.
PRESET_ALIASES: dict[str, str] = {
    **{name: name for name in PRESETS},
    "Salesforce/blip2-opt-2.7b": "blip2-opt-2.7b",
    "Salesforce/blip2-opt-6.7b": "blip2-opt-6.7b",
    "Salesforce/blip2-flan-t5-xl": "blip2-flan-t5-xl",
    "paddlemix/blip2-caption-opt2.7b": "blip2-opt-2.7b",
    "paddlemix/blip2-pretrained-opt2.7b": "blip2-opt-2.7b",
    "paddlemix/blip2-caption-opt6.7b": "blip2-opt-6.7b",
    "paddlemix/blip2-pretrained-opt6.7b": "blip2-opt-6.7b",
    "paddlemix/blip2-caption-flant5xl": "blip2-flan-t5-xl",
    "paddlemix/blip2-pretrained-flant5xl": "blip2-flan-t5-xl",
}
#: Presets whose vocabulary is generated, so they need no files.
TINY_PRESETS = frozenset({"blip2/tiny", "blip2/tiny-opt", "blip2/tiny-t5"})


def preset_fields(name: str, family: str | None = None) -> dict[str, Any]:
    """The config fields of a preset (a deep copy). ``family`` switches ``blip2/tiny``'s
    language model (the ``language_model`` option); a published preset's is fixed."""
    preset = PRESET_ALIASES.get(name)
    if preset is None:
        raise UnknownNameError("BLIP-2 preset", name, list(PRESET_ALIASES))
    if preset == "blip2/tiny" and family is not None:
        preset = f"blip2/tiny-{family}"
    fields = copy.deepcopy(PRESETS[preset])
    if family is not None and fields["text_config"]["model_type"] != family:
        raise ValueError(
            f"{name} has a {fields['text_config']['model_type']} language model, not {family}"
        )
    return fields


def apply_overrides(fields: dict[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """``fields`` with ``overrides`` applied; a sub-config given as a dict is merged key by key
    (``{"text_config": {"num_hidden_layers": 4}}`` changes one key)."""
    out = copy.deepcopy(fields)
    for key, value in overrides.items():
        if (
            key.endswith("_config")
            and isinstance(value, Mapping)
            and isinstance(out.get(key), dict)
        ):
            out[key].update(value)
        else:
            out[key] = value
    return out
