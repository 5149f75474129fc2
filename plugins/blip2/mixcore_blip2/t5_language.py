"""The Flan-T5 language model of BLIP-2, on PaddleNLP's ``T5ForConditionalGeneration``.

The encoder reads the prompt as embeddings (text embeddings with the projected Q-Former
outputs written over the image placeholders); the decoder writes the answer from
``decoder_start_token_id``.

Where PaddleNLP 2.8.1 differs from the Hugging Face reference, and what is done about it:

* **The LM head.** PaddleNLP ties the head to ``shared`` *and* scales the decoder output by
  ``d_model ** -0.5`` whenever ``tie_word_embeddings`` is true. Hugging Face decides the scaling
  separately: transformers 5 writes ``tie_word_embeddings: true`` for every T5 and keeps the
  decision in ``scale_decoder_outputs`` (false for Flan-T5 / T5 v1.1); transformers 4 read
  ``tie_word_embeddings`` itself (false for Flan-T5). So the model is built untied, with its own
  ``lm_head``, unless the config asks for the scaling (original T5): the published Flan-T5 files
  carry ``lm_head.weight``, and a checkpoint without it gets a copy of ``shared.weight``.
* **Relative position buckets.** PaddleNLP's ``compute_bias`` never passes the config's
  ``relative_attention_max_distance`` (it buckets with the default 128); :func:`build_t5`
  gives each attention layer that owns a bias table a ``compute_bias`` that does.
* ``gated-gelu`` is ``gelu_new`` (the tanh approximation) in both, as is masking with a large
  negative number (-1e4 here, the dtype's minimum there: the same after softmax in float32).

Parameter names are Hugging Face's under ``t5.`` (``lm_head.weight`` stays at the top), plus
two aliases of ``t5.shared.weight`` in the state dict (``t5.encoder.embed_tokens.weight``,
``t5.decoder.embed_tokens.weight``). Every ``Linear`` weight is stored transposed.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from mixcore.kit.weights import (
    CheckpointError,
    StoredTensor,
    WeightMismatchError,
    assign_weights,
    linear_weights,
    state_tensors,
)

__all__ = [
    "SUPPORTED_FEED_FORWARD",
    "T5Cache",
    "T5Step",
    "build_t5",
    "hf_t5_state",
    "load_t5_weights",
    "scales_decoder_outputs",
    "t5_config",
    "t5_forward",
    "t5_lm_logits",
    "t5_model_name",
    "t5_stored_name",
]

#: ``feed_forward_proj`` values PaddleNLP builds as Hugging Face does.
SUPPORTED_FEED_FORWARD = ("gated-gelu", "relu", "gated-silu")
#: Hugging Face ``text_config`` keys that :class:`T5Config` takes as they are.
_CONFIG_KEYS = (
    "vocab_size",
    "d_model",
    "d_kv",
    "d_ff",
    "num_layers",
    "num_decoder_layers",
    "num_heads",
    "relative_attention_num_buckets",
    "relative_attention_max_distance",
    "dropout_rate",
    "layer_norm_epsilon",
    "initializer_factor",
    "feed_forward_proj",
    "pad_token_id",
    "eos_token_id",
    "decoder_start_token_id",
)
_PREFIX = "t5."
_SHARED = "shared.weight"
_HEAD = "lm_head.weight"
#: Hugging Face names of the embedding's aliases (older files store them, newer ones do not).
_ALIASES = ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight")


# --- building ------------------------------------------------------------------------------


def scales_decoder_outputs(text_config: Mapping[str, Any]) -> bool:
    """Whether the decoder output is scaled by ``d_model ** -0.5`` before a head tied to the
    embedding (original T5), as Hugging Face reads the config; False for Flan-T5."""
    if "scale_decoder_outputs" in text_config:
        return bool(text_config["scale_decoder_outputs"])
    return text_config.get("tie_word_embeddings", True) is not False


def t5_config(text_config: Mapping[str, Any]) -> Any:
    """A PaddleNLP ``T5Config`` equivalent to a Hugging Face T5 ``text_config``."""
    from paddlenlp.transformers import T5Config

    proj = text_config.get("feed_forward_proj", "relu")
    if proj not in SUPPORTED_FEED_FORWARD:
        raise CheckpointError(
            f"T5 feed_forward_proj {proj!r} is not supported by PaddleNLP's T5; supported: "
            + ", ".join(SUPPORTED_FEED_FORWARD)
        )
    fields = {key: text_config[key] for key in _CONFIG_KEYS if text_config.get(key) is not None}
    start = fields.pop("decoder_start_token_id", fields.get("pad_token_id", 0))
    return T5Config(
        **fields,
        decoder_start_token_id=start,
        bos_token_id=start,  # what PaddleNLP's _shift_right starts the decoder with
        tie_word_embeddings=scales_decoder_outputs(text_config),
        use_cache=True,
    )


def build_t5(text_config: Mapping[str, Any]) -> Any:
    """A PaddleNLP ``T5ForConditionalGeneration`` computing what the Hugging Face model of
    ``text_config`` computes (see the module notes). Randomly initialised (seed with
    ``paddle.seed`` for the same weights each time); build inside
    :func:`mixcore.kit.checkpoints.building` to choose the dtype or skip the initialisation."""
    from paddlenlp.transformers import T5ForConditionalGeneration
    from paddlenlp.transformers.t5.modeling import T5Attention

    config = t5_config(text_config)
    model = T5ForConditionalGeneration(config)
    for layer in model.sublayers():
        if isinstance(layer, T5Attention) and layer.has_relative_attention_bias:
            layer.compute_bias = functools.partial(
                _relative_bias, layer, config.relative_attention_max_distance
            )
    return model


def _relative_buckets(
    relative: Any, *, bidirectional: bool, num_buckets: int, max_distance: int
) -> Any:
    """T5's bucket of each relative position (key position minus query position): exact
    buckets for short distances, logarithmic ones up to ``max_distance``, the last bucket
    beyond; a bidirectional (encoder) half for each sign, a causal decoder only looks back."""
    import paddle

    if bidirectional:
        num_buckets //= 2
        offset = (relative > 0).astype("int64") * num_buckets
        distance = paddle.abs(relative)
    else:
        offset = paddle.zeros_like(relative)
        distance = paddle.clip(-relative, min=0)
    exact = num_buckets // 2
    scaled = paddle.log(paddle.clip(distance, min=1).astype("float32") / exact)
    scaled = scaled / math.log(max_distance / exact) * (num_buckets - exact)
    far = paddle.clip(exact + scaled.astype("int64"), max=num_buckets - 1)
    return offset + paddle.where(distance < exact, distance, far)


def _relative_bias(attention: Any, max_distance: int, query_length: Any, key_length: Any) -> Any:
    """``T5Attention.compute_bias`` with the configured ``max_distance``:
    ``[1, heads, query_length, key_length]``."""
    import paddle

    query = paddle.arange(query_length, dtype="int64").unsqueeze(-1)
    key = paddle.arange(key_length, dtype="int64").unsqueeze(0)
    buckets = _relative_buckets(
        key - query,
        bidirectional=not attention.is_decoder,
        num_buckets=attention.relative_attention_num_buckets,
        max_distance=max_distance,
    )
    values = attention.relative_attention_bias(buckets)  # [query, key, heads]
    return values.transpose([2, 0, 1]).unsqueeze(0)


# --- weights -------------------------------------------------------------------------------


def t5_model_name(hf_name: str) -> str:
    """The PaddleNLP parameter name of a Hugging Face T5 key (``language_model.`` stripped):
    ``shared.weight`` -> ``t5.shared.weight``; ``lm_head.weight`` is the same in both."""
    return hf_name if hf_name == _HEAD else _PREFIX + hf_name


def t5_stored_name(model_name: str) -> str:
    """The Hugging Face key of a PaddleNLP parameter name (the inverse of
    :func:`t5_model_name`)."""
    return model_name.removeprefix(_PREFIX)


def load_t5_weights(
    model: Any, tensors: Mapping[str, StoredTensor], source: str = "the T5 weights"
) -> None:
    """Copy Hugging Face T5 tensors (keys without ``language_model.``) into ``model``.

    ``Linear`` weights are transposed; the embedding's aliases and, for an untied model
    without ``lm_head.weight`` in the file, the head are filled from ``shared.weight``. For a
    tied model (original T5) a stored head must equal the embedding and is left out. Raises
    :class:`WeightMismatchError` naming every missing, unexpected or misshapen key (in
    Hugging Face names) before anything is changed, and :class:`CheckpointError` when an alias
    disagrees with ``shared.weight``.
    """
    stored = dict(tensors)
    tied = _HEAD not in model.state_dict()
    shared = stored.get(_SHARED)
    if shared is not None:
        for alias in (*_ALIASES, _HEAD) if tied else _ALIASES:
            if alias in stored and not _same(stored[alias], shared):
                raise CheckpointError(
                    f"{source}: {alias} differs from {_SHARED}, but this model shares one table"
                )
        stored.update(dict.fromkeys(_ALIASES, shared))
        if tied:
            stored.pop(_HEAD, None)
        else:
            stored.setdefault(_HEAD, shared)
    try:
        assign_weights(
            model,
            stored,
            source,
            to_model_name=t5_model_name,
            to_stored_name=t5_stored_name,
            transposed=linear_weights(model),
        )
    except WeightMismatchError as err:
        # The aliases stand for shared.weight: name it once.
        missing = [_SHARED if name in _ALIASES else name for name in err.missing]
        raise WeightMismatchError(
            source,
            missing=list(dict.fromkeys(missing)),
            unexpected=err.unexpected,
            mismatched=err.mismatched,
        ) from None


def _same(a: StoredTensor, b: StoredTensor) -> bool:
    return a.shape == b.shape and a.dtype == b.dtype and np.array_equal(a.data, b.data)


def hf_t5_state(model: Any) -> dict[str, StoredTensor]:
    """The model's weights as Hugging Face T5 tensors (``[out, in]`` linear weights, no
    ``language_model.`` prefix, the embedding once): what :func:`load_t5_weights` reads."""
    transposed = linear_weights(model)
    state: dict[str, StoredTensor] = {}
    for name, tensor in state_tensors(model).items():
        hf_name = t5_stored_name(name)
        if hf_name in _ALIASES:
            continue
        state[hf_name] = tensor.transposed() if name in transposed else tensor
    return state


# --- forward and generation ----------------------------------------------------------------


def t5_lm_logits(model: Any, decoder_hidden: Any) -> Any:
    """Vocabulary logits of decoder hidden states, as the model's config asks (a separate
    head, or the scaled embedding for original T5)."""
    import paddle

    if model.t5.config["tie_word_embeddings"]:
        scaled = decoder_hidden * (model.t5.config["d_model"] ** -0.5)
        return paddle.matmul(scaled, model.t5.shared.weight, transpose_y=True)
    return model.lm_head(decoder_hidden)


def _encode(model: Any, inputs_embeds: Any, attention_mask: Any) -> Any:
    return model.t5.encoder(
        inputs_embeds=inputs_embeds, attention_mask=attention_mask, return_dict=True
    ).last_hidden_state


def t5_forward(
    model: Any,
    inputs_embeds: Any,
    attention_mask: Any,
    decoder_input_ids: Any,
    decoder_attention_mask: Any = None,
) -> Any:
    """Decoder logits ``[batch, dec_len, vocab]``: the encoder on ``inputs_embeds``
    ``[batch, len, d_model]`` (``attention_mask`` 1 = real token), the decoder (causal) on
    ``decoder_input_ids`` (teacher forcing: the targets shifted right behind
    ``decoder_start_token_id``)."""
    encoded = _encode(model, inputs_embeds, attention_mask)
    decoded = model.t5.decoder(
        input_ids=decoder_input_ids,
        attention_mask=decoder_attention_mask,
        encoder_hidden_states=encoded,
        encoder_attention_mask=attention_mask,
        use_cache=False,
        return_dict=True,
    ).last_hidden_state
    return t5_lm_logits(model, decoded)


@dataclass(frozen=True)
class T5Cache:
    """What decoding carries between steps: the decoder's key/value cache (per layer: self
    key, self value, cross key, cross value), the encoder output and the encoder's mask."""

    past: tuple[tuple[Any, ...], ...]
    encoder_output: Any
    encoder_mask: Any


class T5Step:
    """:class:`mixcore.kit.generation.DecodeStep` for T5: ``prefill`` encodes the prompt and
    runs the decoder on ``decoder_start_token_id``; ``advance`` runs one decoder step over the
    cache. The decoding loop's attention mask and positions are the prompt's and grow with the
    answer; T5 keeps the encoder's mask (from ``prefill``) in the cache instead and needs no
    positions (its attention biases are relative, so left padding masked out changes nothing)."""

    def __init__(self, model: Any) -> None:
        self.model = model

    def prefill(
        self, inputs_embeds: Any, attention_mask: Any, position_ids: Any
    ) -> tuple[Any, T5Cache]:
        import paddle

        encoded = _encode(self.model, inputs_embeds, attention_mask)
        start_id = self.model.t5.config["decoder_start_token_id"]
        start = paddle.full([int(inputs_embeds.shape[0]), 1], start_id, dtype="int64")
        return self._decode(start, T5Cache((), encoded, attention_mask))

    def advance(
        self, token_ids: Any, cache: T5Cache, attention_mask: Any, position_ids: Any
    ) -> tuple[Any, T5Cache]:
        return self._decode(token_ids, cache)

    def reorder(self, cache: T5Cache, rows: Any) -> T5Cache:
        import paddle

        def pick(tensor: Any) -> Any:
            return paddle.index_select(tensor, rows, axis=0)

        return T5Cache(
            tuple(tuple(pick(part) for part in layer) for layer in cache.past),
            pick(cache.encoder_output),
            pick(cache.encoder_mask),
        )

    def _decode(self, token_ids: Any, cache: T5Cache) -> tuple[Any, T5Cache]:
        out = self.model.t5.decoder(
            input_ids=token_ids,
            encoder_hidden_states=cache.encoder_output,
            encoder_attention_mask=cache.encoder_mask,
            cache=cache.past or None,
            use_cache=True,
            return_dict=True,
        )
        logits = t5_lm_logits(self.model, out.last_hidden_state[:, -1, :])
        past = tuple(tuple(layer) for layer in out.past_key_values)
        return logits, T5Cache(past, cache.encoder_output, cache.encoder_mask)
