"""The ChatGLM-6B (v1) language model of VisualGLM, on PaddleNLP 2.8.1's ``ChatGLMForCausalLM``.

What PaddleNLP's ChatGLM needs around it:

* its config from a Hugging Face ChatGLM-6B ``config.json`` (PaddleNLP names ``num_layers``
  ``num_hidden_layers``; the other keys keep their names);
* the Hugging Face <-> PaddleNLP parameter names: Hugging Face's ``transformer.`` is PaddleNLP's
  ``chatglm.transformer.``, every ``Linear`` weight is stored transposed (Paddle keeps
  ``[in, out]``), and the head is tied to the word embeddings (PaddleNLP's ``lm_head`` reuses
  them, and lists them a second time as ``lm_head.decoder_weight``);
* ChatGLM's inputs. Every sequence is ``context [gMASK] <sop> answer``: attention is
  bidirectional over the context (everything before ``<sop>``) and causal from ``<sop>`` on;
  position ids have two rows, row 0 counting over the context and then staying at the
  ``[gMASK]`` index for ``<sop>`` and the answer, row 1 zero over the context and 1, 2, 3...
  from ``<sop>`` on. The model takes a 4-D ``[batch, 1, query, key]`` mask that it casts to
  bool with **True = may attend** (the opposite of THUDM's Hugging Face code, where True masks)
  and refuses a 2-D one;
* a decoding step for :mod:`mixcore.kit.generation`: PaddleNLP's ChatGLM runs sequence-first,
  its cache is a list of per-layer ``(key, value)`` of ``[seq, batch, heads, head_dim]`` (batch
  on axis 1), passed back as ``cache``.

Packed rows (several samples end to end, ``segment_ids`` 1, 2, ... and 0 for padding) get the
block-diagonal combination of each sample's own mask and positions, so packing is exact. Rather
than building that ``[len, len]`` mask, :func:`packed_positions_and_layout` describes each
segment by its context length (a :class:`~mixcore.kit.nn.segment_attention.SegmentLayout` whose
prefixes are the contexts) and :func:`attending_per_segment` makes ChatGLM's attention layers
compute each segment's diagonal block of that mask on its own.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import paddle
from paddlenlp.transformers import ChatGLMConfig, ChatGLMForCausalLM

from mixcore.kit.nn.segment_attention import SegmentLayout, replaced, segment_attention
from mixcore.kit.weights import (
    CheckpointError,
    StateSubset,
    StoredTensor,
    assign_weights,
    linear_weights,
    state_tensors,
)

__all__ = [
    "TINY_CHATGLM_CONFIG",
    "ChatGLMBatch",
    "ChatGLMCache",
    "ChatGLMStep",
    "attending_per_segment",
    "batch_inputs",
    "build_chatglm",
    "chatglm_config",
    "chatglm_forward",
    "hf_chatglm_name",
    "hf_chatglm_state",
    "load_chatglm_weights",
    "packed_positions_and_layout",
    "packed_positions_and_mask",
    "paddle_chatglm_name",
    "prompt_positions_and_mask",
    "sample_positions_and_mask",
]

#: A tiny ChatGLM-6B config (Hugging Face keys) for tests, sized for the tiny tokenizer of
#: :mod:`mixcore_visualglm.tokenization` (its special ids: ``[MASK]`` 5, ``[gMASK]`` 6,
#: ``<sop>`` 8, ``<eop>`` 9, ``<pad>`` 3).
TINY_CHATGLM_CONFIG: dict[str, Any] = {
    "model_type": "chatglm",
    "hidden_size": 32,
    "num_layers": 2,
    "num_attention_heads": 4,
    "inner_hidden_size": 64,
    "vocab_size": 1024,
    "max_sequence_length": 256,
    "position_encoding_2d": True,
    "layernorm_epsilon": 1e-5,
    "bos_token_id": 8,
    "eos_token_id": 9,
    "mask_token_id": 5,
    "gmask_token_id": 6,
    "pad_token_id": 3,
}

#: Hugging Face ChatGLM-6B keys PaddleNLP's ``ChatGLMConfig`` takes under the same name.
_SAME_KEYS = (
    "hidden_size",
    "num_attention_heads",
    "vocab_size",
    "inner_hidden_size",
    "max_sequence_length",
    "position_encoding_2d",
    "layernorm_epsilon",
    "bos_token_id",
    "eos_token_id",
    "mask_token_id",
    "gmask_token_id",
    "pad_token_id",
)


def chatglm_config(config: Mapping[str, Any]) -> ChatGLMConfig:
    """PaddleNLP's ``ChatGLMConfig`` for a Hugging Face ChatGLM-6B ``config.json``."""
    if config.get("pre_seq_len") is not None:
        raise ValueError("P-tuning ChatGLM (pre_seq_len) is not supported")
    if int(config.get("quantization_bit", 0) or 0):
        raise ValueError("quantized ChatGLM (quantization_bit) is not supported")
    fields = {key: config[key] for key in _SAME_KEYS if key in config}
    fields["num_hidden_layers"] = int(config.get("num_layers", config.get("num_hidden_layers")))
    return ChatGLMConfig(**fields, use_cache=False)


def build_chatglm(config: Mapping[str, Any]) -> ChatGLMForCausalLM:
    """PaddleNLP's ChatGLM for a Hugging Face ChatGLM-6B config (randomly initialised; its
    head shares the word embeddings)."""
    return ChatGLMForCausalLM(chatglm_config(config))


# --- positions and masks -------------------------------------------------------------------


def _layout(length: int, mask_index: int | None, context: int) -> tuple[np.ndarray, np.ndarray]:
    """Positions ``[2, length]`` and keep ``[length, length]`` of one sample whose answer part
    (causal, from ``<sop>``) starts at ``context``, its ``[gMASK]`` at ``mask_index``."""
    position = np.arange(length, dtype=np.int64)
    if mask_index is not None:
        position[context:] = mask_index
    block = np.zeros(length, dtype=np.int64)
    block[context:] = np.arange(1, length - context + 1)
    keep = np.tril(np.ones((length, length), dtype=bool))
    keep[:, :context] = True
    return np.stack([position, block]), keep


def sample_positions_and_mask(
    input_ids: Sequence[int], gmask_id: int, bos_id: int
) -> tuple[np.ndarray, np.ndarray]:
    """ChatGLM-6B's 2-row ``position_ids`` ``[2, L]`` and boolean ``keep`` ``[L, L]`` (True =
    query row may attend key column) for one sample ``context [gMASK] <sop> answer``, as
    PaddleNLP's ``ChatGLMTokenizer._pad`` and ``get_position_ids`` make them.

    The context is everything before the first ``bos_id`` (``<sop>``); without one the whole
    sequence is context. Row 0 of the positions is ``0, 1, ...`` over the context and the index
    of the first ``gmask_id`` from ``<sop>`` on (``0, 1, ...`` throughout when there is no
    ``[gMASK]``); row 1 is 0 over the context and ``1, 2, ...`` from ``<sop>`` on.
    """
    ids = np.asarray(input_ids).reshape(-1)
    sop = np.flatnonzero(ids == bos_id)
    gmask = np.flatnonzero(ids == gmask_id)
    context = int(sop[0]) if len(sop) else len(ids)
    return _layout(len(ids), int(gmask[0]) if len(gmask) else None, context)


def packed_positions_and_mask(
    input_ids: np.ndarray, segment_ids: np.ndarray, gmask_id: int, bos_id: int
) -> tuple[np.ndarray, np.ndarray]:
    """``position_ids`` ``[batch, 2, L]`` and ``keep`` ``[batch, 1, L, L]`` for rows of samples
    laid end to end: ``segment_ids`` ``[batch, L]`` numbers them 1, 2, ... (0: padding). Each
    segment gets :func:`sample_positions_and_mask` of its own tokens, on the diagonal of the
    mask; nothing crosses segments, and padding attends only to itself (position 0)."""
    input_ids, segment_ids = np.asarray(input_ids), np.asarray(segment_ids)
    rows, length = input_ids.shape
    positions = np.zeros((rows, 2, length), dtype=np.int64)
    keep = np.zeros((rows, 1, length, length), dtype=bool)
    for row in range(rows):
        for segment in np.unique(segment_ids[row]):
            where = np.flatnonzero(segment_ids[row] == segment)
            if segment == 0:
                keep[row, 0, where, where] = True
                continue
            start, stop = int(where[0]), int(where[-1]) + 1
            if len(where) != stop - start:
                raise ValueError(f"segment {segment} of row {row} is not contiguous")
            pos, block = sample_positions_and_mask(input_ids[row, start:stop], gmask_id, bos_id)
            positions[row, :, start:stop] = pos
            keep[row, 0, start:stop, start:stop] = block
    return positions, keep


def packed_positions_and_layout(
    input_ids: np.ndarray, segment_ids: np.ndarray, gmask_id: int, bos_id: int
) -> tuple[np.ndarray, SegmentLayout]:
    """What :func:`packed_positions_and_mask` says without the ``[L, L]`` mask: the same
    ``position_ids`` ``[batch, 2, L]`` and the segments' :class:`SegmentLayout` whose prefix
    lengths are the segments' contexts (attended both ways; causal from ``<sop>`` on)."""
    input_ids, segment_ids = np.asarray(input_ids), np.asarray(segment_ids)
    layout = SegmentLayout.from_segment_ids(segment_ids)
    positions = np.zeros((*input_ids.shape[:1], 2, input_ids.shape[1]), dtype=np.int64)
    contexts = []
    for s in layout.segments:
        ids = input_ids[s.row, s.start : s.stop]
        sop = np.flatnonzero(ids == bos_id)
        gmask = np.flatnonzero(ids == gmask_id)
        context = int(sop[0]) if len(sop) else s.length
        position = np.arange(s.length, dtype=np.int64)
        if len(gmask):
            position[context:] = int(gmask[0])
        block = np.zeros(s.length, dtype=np.int64)
        block[context:] = np.arange(1, s.length - context + 1)
        positions[s.row, 0, s.start : s.stop] = position
        positions[s.row, 1, s.start : s.stop] = block
        contexts.append(context)
    return positions, SegmentLayout.from_segment_ids(segment_ids, contexts)


@contextmanager
def attending_per_segment(model: ChatGLMForCausalLM, layout: SegmentLayout) -> Iterator[None]:
    """Within the block, every ``ChatGLMAttention`` of ``model`` attends per segment of
    ``layout`` (prefix = the segment's context): its own projections and rotary embeddings, then
    :func:`~mixcore.kit.nn.segment_attention.segment_attention` in place of the scores over the
    whole ``[L, L]`` mask, which it no longer reads (pass a ``[batch, 1, 1, 1]`` one). Without
    a KV cache; only these instances change, only for the block."""

    def attention(layer: Any):
        def forward(
            hidden_states,
            attention_mask,
            position_ids,
            use_cache=False,
            cache=None,
            layer_id=0,
            rotary_embeds=None,
        ):
            if cache is not None:
                raise ValueError("segment attention takes no KV cache")
            length, rows = hidden_states.shape[:2]
            heads, head_dim = layer.num_attention_heads, layer.attention_head_size
            mixed = layer.query_key_value(hidden_states)
            mixed = mixed.reshape([length, rows, heads, 3 * head_dim])
            q, k, v = paddle.split(mixed, 3, axis=-1)
            q, k = layer._core_attention(q, k, position_ids, rotary_embeds)
            present = (k, v) if use_cache else None
            # ChatGLM divides the queries by sqrt(d) * (layer_id + 1) and multiplies the scores
            # by (layer_id + 1) again: the same scale, up to rounding.
            scale = 1.0 / math.sqrt(head_dim) if layer.attention_scale else float(layer_id) + 1.0
            q, k, v = (t.transpose([1, 0, 2, 3]) for t in (q, k, v))
            out = segment_attention(q, k, v, layout, scale=scale)
            out = out.transpose([1, 0, 2, 3]).reshape([length, rows, heads * head_dim])
            return layer.dense(out), present, None

        return forward

    layers = [block.attention for block in model.chatglm.transformer.layers]
    with replaced(layers, "forward", attention):
        yield


@dataclass(frozen=True)
class ChatGLMBatch:
    """Right-padded ChatGLM inputs as numpy arrays: ``input_ids`` ``[batch, L]``,
    ``position_ids`` ``[batch, 2, L]``, ``keep`` ``[batch, 1, L, L]`` (bool, True = attend)
    and ``segment_ids`` ``[batch, L]`` (1, 2, ... per sample, 0 padding)."""

    input_ids: np.ndarray
    position_ids: np.ndarray
    keep: np.ndarray
    segment_ids: np.ndarray


def batch_inputs(
    rows: Sequence[Sequence[int] | Sequence[Sequence[int]]],
    pad_id: int,
    gmask_id: int,
    bos_id: int,
) -> ChatGLMBatch:
    """A right-padded batch: each row is one sample (a list of ids) or several samples packed
    end to end (a list of id lists), each positioned and masked as if it were alone."""
    if not rows:
        raise ValueError("no samples to batch")
    packs = [
        [list(row)] if not len(row) or np.isscalar(row[0]) else [list(s) for s in row]
        for row in rows
    ]
    length = max(sum(len(sample) for sample in pack) for pack in packs)
    ids = np.full((len(packs), length), pad_id, dtype=np.int64)
    segments = np.zeros((len(packs), length), dtype=np.int64)
    for row, pack in enumerate(packs):
        at = 0
        for number, sample in enumerate(pack, start=1):
            ids[row, at : at + len(sample)] = sample
            segments[row, at : at + len(sample)] = number
            at += len(sample)
    positions, keep = packed_positions_and_mask(ids, segments, gmask_id, bos_id)
    return ChatGLMBatch(ids, positions, keep, segments)


def prompt_positions_and_mask(attention_mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``position_ids`` ``[rows, 2, L]`` and ``keep`` ``[rows, 1, L, L]`` for left-padded
    prompts (``attention_mask`` ``[rows, L]``, 1 = real token) that each end in ``[gMASK]
    <sop>``, as ChatGLM-6B prompts for generation do: positions count from the first real
    token, padding is neither attended nor positioned (it attends only to itself)."""
    attention_mask = np.asarray(attention_mask)
    rows, length = attention_mask.shape
    positions = np.zeros((rows, 2, length), dtype=np.int64)
    keep = np.zeros((rows, 1, length, length), dtype=bool)
    for row in range(rows):
        real = int(attention_mask[row].sum())
        if real < 2:
            raise ValueError(f"prompt {row} has {real} tokens; it must end in [gMASK] <sop>")
        pad = length - real
        pos, block = _layout(real, real - 2, real - 1)
        positions[row, :, pad:] = pos
        keep[row, 0, pad:, pad:] = block
        keep[row, 0, np.arange(pad), np.arange(pad)] = True
    return positions, keep


def chatglm_forward(
    model: ChatGLMForCausalLM, inputs_embeds: Any, keep: Any, position_ids: Any
) -> Any:
    """Logits ``[batch, L, vocab]`` (float32) of embedded sequences with their ``keep`` mask
    ``[batch, 1, L, L]`` (True = attend) and 2-row ``position_ids`` ``[batch, 2, L]``. ``keep``
    may instead be a :class:`SegmentLayout` (from :func:`packed_positions_and_layout`): then
    each segment attends only to itself, computed per segment, and no ``[L, L]`` mask exists."""
    if isinstance(keep, SegmentLayout):
        with attending_per_segment(model, keep):
            return chatglm_forward(
                model,
                inputs_embeds,
                paddle.ones([keep.rows, 1, 1, 1], dtype="bool"),
                position_ids,
            )
    out = model(
        inputs_embeds=inputs_embeds,
        attention_mask=_tensor(keep, "bool"),
        position_ids=_tensor(position_ids, "int64"),
        use_cache=False,
        return_dict=True,
    )
    return out.logits


def _tensor(value: Any, dtype: str) -> Any:
    tensor = value if isinstance(value, paddle.Tensor) else paddle.to_tensor(np.asarray(value))
    return tensor if tensor.dtype == getattr(paddle, dtype) else tensor.astype(dtype)


# --- decoding ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ChatGLMCache:
    """What :class:`ChatGLMStep` carries between steps: PaddleNLP's per-layer ``(key, value)``
    cache (``[seq, rows, heads, head_dim]``), each row's ``[gMASK]`` position and the position
    of its ``<sop>`` (both ``[rows, 1]``, counted from the row's first real token)."""

    layers: Any
    mask_position: Any
    sop_position: Any


class ChatGLMStep:
    """:class:`mixcore.kit.generation.DecodeStep` for PaddleNLP's ChatGLM.

    Prompts are left-padded and each ends in ``[gMASK] <sop>`` (as ``ChatGLMTokenizer`` builds
    them); their positions and mask come from :func:`prompt_positions_and_mask`, so the loop's
    1-row positions are used only to count: a new token at real index ``p`` gets positions
    ``(index of [gMASK], p - index of <sop> + 1)`` and attends to every real token before it.
    """

    def __init__(self, language_model: ChatGLMForCausalLM) -> None:
        self.language_model = language_model

    def prefill(self, inputs_embeds: Any, attention_mask: Any, position_ids: Any):
        mask = np.asarray(_tensor(attention_mask, "int64").numpy())
        positions, keep = prompt_positions_and_mask(mask)
        out = self.language_model(
            inputs_embeds=inputs_embeds,
            attention_mask=paddle.to_tensor(keep),
            position_ids=paddle.to_tensor(positions),
            use_cache=True,
            return_dict=True,
        )
        real = mask.sum(axis=1, keepdims=True)
        cache = ChatGLMCache(
            out.past_key_values, paddle.to_tensor(real - 2), paddle.to_tensor(real - 1)
        )
        return out.logits[:, -1, :], cache

    def advance(self, token_ids: Any, cache: ChatGLMCache, attention_mask: Any, position_ids: Any):
        step = _tensor(position_ids, "int64")
        positions = paddle.stack([cache.mask_position, step - cache.sop_position + 1], axis=1)
        keep = _tensor(attention_mask, "bool").unsqueeze(1).unsqueeze(1)
        out = self.language_model(
            input_ids=token_ids,
            attention_mask=keep,
            position_ids=positions,
            cache=cache.layers,
            use_cache=True,
            return_dict=True,
        )
        return out.logits[:, -1, :], ChatGLMCache(
            out.past_key_values, cache.mask_position, cache.sop_position
        )

    def reorder(self, cache: ChatGLMCache, rows: Any) -> ChatGLMCache:
        layers = [
            tuple(paddle.index_select(part, rows, axis=1) for part in layer)
            for layer in cache.layers
        ]
        return ChatGLMCache(
            layers,
            paddle.index_select(cache.mask_position, rows, axis=0),
            paddle.index_select(cache.sop_position, rows, axis=0),
        )


# --- names and weights ---------------------------------------------------------------------

_HF_EMBED = "transformer.word_embeddings.weight"
_HF_HEAD = "lm_head.weight"
_PADDLE_HEAD = "lm_head.decoder_weight"
#: Buffers of THUDM's checkpoints that PaddleNLP recomputes.
_IGNORED = re.compile(r"(^|\.)rotary_emb(eddings)?\.inv_freq$")


def paddle_chatglm_name(hf_name: str) -> str | None:
    """PaddleNLP's name of a Hugging Face ChatGLM-6B weight (None: no such weight)."""
    if hf_name.startswith("transformer."):
        return "chatglm." + hf_name
    if hf_name == _HF_HEAD:
        return _PADDLE_HEAD
    return None


def hf_chatglm_name(paddle_name: str) -> str:
    """Hugging Face's name of a PaddleNLP ChatGLM weight."""
    if paddle_name.startswith("chatglm.transformer."):
        return paddle_name.removeprefix("chatglm.")
    if paddle_name == _PADDLE_HEAD:
        return _HF_HEAD
    return paddle_name


def load_chatglm_weights(
    model: ChatGLMForCausalLM,
    tensors: Mapping[str, StoredTensor],
    source: str = "the ChatGLM weights",
) -> None:
    """Copy Hugging Face ChatGLM-6B tensors into ``model``: Linear weights transposed, rotary
    ``inv_freq`` buffers skipped; the head is the word embeddings, so a stored
    ``lm_head.weight`` must equal them (it is left out otherwise)."""
    stored = dict(tensors)
    head, embed = stored.pop(_HF_HEAD, None), stored.get(_HF_EMBED)
    if head is not None and embed is not None and not np.array_equal(head.data, embed.data):
        raise CheckpointError(
            f"{source}: {_HF_HEAD} differs from {_HF_EMBED}, but PaddleNLP's ChatGLM ties them"
        )
    assign_weights(
        StateSubset(model, lambda name: name != _PADDLE_HEAD),
        stored,
        source,
        to_model_name=paddle_chatglm_name,
        to_stored_name=hf_chatglm_name,
        transposed=linear_weights(model),
        ignore=_IGNORED,
    )


def hf_chatglm_state(model: ChatGLMForCausalLM) -> dict[str, StoredTensor]:
    """The model's weights as Hugging Face ChatGLM-6B tensors (``[out, in]`` Linear weights),
    ``lm_head.weight`` included as THUDM's checkpoints hold it (equal to the embeddings)."""
    transposed = linear_weights(model)
    out = {}
    for name, tensor in state_tensors(model).items():
        out[hf_chatglm_name(name)] = tensor.transposed() if name in transposed else tensor
    return out
