"""The OPT language model of BLIP-2, on PaddleNLP 2.8.1's ``OPTForCausalLM``.

What PaddleNLP's OPT needs around it: its config from a Hugging Face ``text_config`` (its own
key names: ``intermediate_size`` for ``ffn_dim``, ``normalize_before`` for
``do_layer_norm_before``...), a language-model head tied to the word embeddings as in Hugging
Face's OPT (PaddleNLP's ``OPTForCausalLM`` makes a separate head), the Hugging Face <-> PaddleNLP
parameter names, and a decoding step for :mod:`mixcore.kit.generation` (PaddleNLP's OPT takes
its key/value cache as ``cache``, not ``past_key_values``, and derives positions from the mask).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import numpy as np
import paddle
from paddlenlp.transformers import OPTConfig, OPTForCausalLM
from paddlenlp.transformers.opt.modeling import OPTLMHead

from mixcore.kit.weights import (
    CheckpointError,
    StoredTensor,
    assign_weights,
    linear_weights,
    state_tensors,
)

__all__ = [
    "OPTStep",
    "build_opt",
    "hf_opt_name",
    "hf_opt_state",
    "load_opt_weights",
    "opt_forward",
    "paddle_opt_name",
]


def opt_config(text_config: Mapping[str, Any]) -> OPTConfig:
    """PaddleNLP's ``OPTConfig`` for a Hugging Face OPT ``text_config``."""
    if not text_config.get("do_layer_norm_before", True):
        # Post-norm OPT (opt-350m) also drops the final LayerNorm in Hugging Face; no BLIP-2
        # checkpoint uses it.
        raise ValueError("BLIP-2 supports pre-norm OPT only (do_layer_norm_before true)")
    hidden = int(text_config["hidden_size"])
    return OPTConfig(
        vocab_size=int(text_config["vocab_size"]),
        hidden_size=hidden,
        word_embed_proj_dim=int(text_config.get("word_embed_proj_dim", hidden)),
        num_hidden_layers=int(text_config["num_hidden_layers"]),
        num_attention_heads=int(text_config["num_attention_heads"]),
        intermediate_size=int(text_config["ffn_dim"]),
        max_position_embeddings=int(text_config["max_position_embeddings"]),
        hidden_act=text_config.get("activation_function", "relu"),
        normalize_before=True,
        hidden_dropout_prob=float(text_config.get("dropout", 0.1)),
        attention_probs_dropout_prob=float(text_config.get("attention_dropout", 0.0)),
        enable_bias=bool(text_config.get("enable_bias", True)),
        pad_token_id=int(text_config.get("pad_token_id", 1)),
        bos_token_id=int(text_config.get("bos_token_id", 2)),
        eos_token_id=int(text_config.get("eos_token_id", 2)),
    )


def build_opt(text_config: Mapping[str, Any]) -> OPTForCausalLM:
    """PaddleNLP's OPT for a Hugging Face ``text_config``, its head tied to the embeddings
    unless ``tie_word_embeddings`` is false."""
    model = OPTForCausalLM(opt_config(text_config))
    if text_config.get("tie_word_embeddings", True):
        embeddings = model.opt.embeddings.word_embeddings.weight
        model.lm_head = OPTLMHead(model.config, embedding_weights=embeddings)
    return model


def is_tied(model: OPTForCausalLM) -> bool:
    return model.lm_head.decoder_weight is model.opt.embeddings.word_embeddings.weight


def opt_forward(model: OPTForCausalLM, inputs_embeds: paddle.Tensor, attention_mask: Any):
    """Logits ``[batch, len, vocab]`` of the embedded (right-padded) sequence."""
    return model(
        inputs_embeds=inputs_embeds, attention_mask=attention_mask, return_dict=True
    ).logits


# --- names ---------------------------------------------------------------------------------

#: The Hugging Face name of the word embeddings, which a tied head is.
_EMBED = "model.decoder.embed_tokens.weight"
#: (Hugging Face, PaddleNLP) name pieces, relative to ``language_model.``.
_RENAMES = (
    (r"^model\.decoder\.embed_tokens\.", "opt.embeddings.word_embeddings."),
    (r"^model\.decoder\.embed_positions\.", "opt.embeddings.position_embeddings."),
    (r"^model\.decoder\.project_in\.", "opt.embeddings.project_in."),
    (r"^model\.decoder\.project_out\.", "opt.decoder.project_out."),
    (r"^model\.decoder\.final_layer_norm\.", "opt.decoder.final_layer_norm."),
    (r"^model\.decoder\.layers\.(\d+)\.self_attn\.", r"opt.decoder.layers.\1.self_attn."),
    (r"^model\.decoder\.layers\.(\d+)\.self_attn_layer_norm\.", r"opt.decoder.layers.\1.norm1."),
    (r"^model\.decoder\.layers\.(\d+)\.final_layer_norm\.", r"opt.decoder.layers.\1.norm2."),
    (r"^model\.decoder\.layers\.(\d+)\.fc1\.", r"opt.decoder.layers.\1.linear1."),
    (r"^model\.decoder\.layers\.(\d+)\.fc2\.", r"opt.decoder.layers.\1.linear2."),
    (r"^lm_head\.weight$", "lm_head.decoder_weight"),
)
_BACK = (
    (r"^opt\.embeddings\.word_embeddings\.", "model.decoder.embed_tokens."),
    (r"^opt\.embeddings\.position_embeddings\.", "model.decoder.embed_positions."),
    (r"^opt\.embeddings\.project_in\.", "model.decoder.project_in."),
    (r"^opt\.decoder\.project_out\.", "model.decoder.project_out."),
    (r"^opt\.decoder\.final_layer_norm\.", "model.decoder.final_layer_norm."),
    (r"^opt\.decoder\.layers\.(\d+)\.self_attn\.", r"model.decoder.layers.\1.self_attn."),
    (r"^opt\.decoder\.layers\.(\d+)\.norm1\.", r"model.decoder.layers.\1.self_attn_layer_norm."),
    (r"^opt\.decoder\.layers\.(\d+)\.norm2\.", r"model.decoder.layers.\1.final_layer_norm."),
    (r"^opt\.decoder\.layers\.(\d+)\.linear1\.", r"model.decoder.layers.\1.fc1."),
    (r"^opt\.decoder\.layers\.(\d+)\.linear2\.", r"model.decoder.layers.\1.fc2."),
    (r"^lm_head\.decoder_weight$", "lm_head.weight"),
)


def _rename(name: str, table: tuple[tuple[str, str], ...]) -> str | None:
    for pattern, replacement in table:
        renamed, hits = re.subn(pattern, replacement, name)
        if hits:
            return renamed
    return None


def paddle_opt_name(hf_name: str) -> str | None:
    """PaddleNLP's name of a Hugging Face OPT weight (relative to ``language_model.``)."""
    return _rename(hf_name, _RENAMES)


def hf_opt_name(paddle_name: str) -> str:
    """Hugging Face's name of a PaddleNLP OPT weight (relative to ``language_model.``)."""
    renamed = _rename(paddle_name, _BACK)
    return paddle_name if renamed is None else renamed


# --- decoding ------------------------------------------------------------------------------


class OPTStep:
    """:class:`mixcore.kit.generation.DecodeStep` for PaddleNLP's OPT. Positions come from the
    attention mask inside the model (as Hugging Face's OPT derives them), so the loop's
    ``position_ids`` are not passed; the cache is a list of per-layer ``(k, v)`` with batch
    first."""

    def __init__(self, language_model: OPTForCausalLM) -> None:
        self.language_model = language_model

    def prefill(self, inputs_embeds: Any, attention_mask: Any, position_ids: Any):
        out = self.language_model(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            use_cache=True,
            return_dict=True,
        )
        return out.logits[:, -1, :], out.past_key_values

    def advance(self, token_ids: Any, cache: Any, attention_mask: Any, position_ids: Any):
        out = self.language_model(
            input_ids=token_ids,
            attention_mask=attention_mask,
            cache=cache,
            use_cache=True,
            return_dict=True,
        )
        return out.logits[:, -1, :], out.past_key_values

    def reorder(self, cache: Any, rows: Any) -> Any:
        return [
            type(layer)(*(paddle.index_select(part, rows, axis=0) for part in layer))
            for layer in cache
        ]


# --- weights -------------------------------------------------------------------------------


def load_opt_weights(
    model: OPTForCausalLM, tensors: Mapping[str, StoredTensor], source: str = "the OPT weights"
) -> None:
    """Copy Hugging Face OPT tensors (keys without ``language_model.``) into ``model``:
    Linear weights transposed; a tied head is the embeddings (a stored ``lm_head.weight`` must
    equal them), an untied one needs its own ``lm_head.weight``."""
    from mixcore.kit.weights import StateSubset

    stored = dict(tensors)
    hidden: set[str] = set()
    if is_tied(model):
        head, embed = stored.pop("lm_head.weight", None), stored.get(_EMBED)
        if head is not None and embed is not None and not np.array_equal(head.data, embed.data):
            raise CheckpointError(
                f"{source}: lm_head.weight differs from {_EMBED}, but this OPT ties them "
                "(set tie_word_embeddings false in text_config for a separate head)"
            )
        hidden.add("lm_head.decoder_weight")
    assign_weights(
        StateSubset(model, lambda name: name not in hidden),
        stored,
        source,
        to_model_name=paddle_opt_name,
        to_stored_name=hf_opt_name,
        transposed=linear_weights(model),
    )


def hf_opt_state(model: OPTForCausalLM) -> dict[str, StoredTensor]:
    """The model's weights as Hugging Face OPT tensors (``[out, in]`` Linear weights, no
    ``language_model.`` prefix; a tied head left out, as transformers saves it)."""
    transposed = linear_weights(model)
    tied = is_tied(model)
    out = {}
    for name, tensor in state_tensors(model).items():
        if tied and name == "lm_head.decoder_weight":
            continue
        out[hf_opt_name(name)] = tensor.transposed() if name in transposed else tensor
    return out
