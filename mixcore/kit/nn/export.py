"""Paddle layers that shape a model's pieces for ``paddle.jit.to_static`` (``mixcore export``).

A part's layer takes exactly its :class:`mixcore.api.records.TensorSpec` inputs as positional
arguments. :class:`SelectedLogits` and :class:`SelectedDecoderLogits` are what the core puts
around a plugin's ``language`` / ``decoder`` layer: only the logits of the requested positions
leave the program (one position per decoding step, not ``length x vocab`` floats).
:func:`warm_rotary_caches` fills PaddleNLP's rotary-embedding caches before tracing, so the
traced program reads them instead of writing layer state (which would leave the dynamic model
holding static values).
"""

from __future__ import annotations

from typing import Any

import paddle
from paddle import nn

#: The longest sequence an export takes when ``--max-length`` is not given (or the model's limit).
DEFAULT_EXPORT_LENGTH = 512

__all__ = [
    "DEFAULT_EXPORT_LENGTH",
    "SelectedDecoderLogits",
    "SelectedLogits",
    "SelectedPromptLogits",
    "export_length",
    "warm_rotary_caches",
]


def export_length(requested: int | None, limit: int | None, what: str) -> int:
    """The sequence length to export: ``requested`` (``--max-length``), which may not exceed
    the model's ``limit`` (``what`` names it in the error), or without one the smaller of the
    limit and :data:`DEFAULT_EXPORT_LENGTH`."""
    from mixcore.api import UsageError

    if requested is None:
        return DEFAULT_EXPORT_LENGTH if limit is None else min(limit, DEFAULT_EXPORT_LENGTH)
    if limit is not None and requested > limit:
        raise UsageError(f"--max-length {requested} is longer than this model's {what} ({limit})")
    return requested


class SelectedLogits(nn.Layer):
    """``inner(inputs_embeds)`` -> logits ``[b, n, vocab]``, kept at ``positions`` only."""

    def __init__(self, inner: nn.Layer) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, inputs_embeds: paddle.Tensor, positions: paddle.Tensor) -> paddle.Tensor:
        return paddle.index_select(self.inner(inputs_embeds), positions, axis=1)


class SelectedPromptLogits(nn.Layer):
    """``inner(inputs_embeds, prompt_length)`` -> logits, kept at ``positions`` only (a
    language model whose attention over the prompt is not causal needs the prompt's length)."""

    def __init__(self, inner: nn.Layer) -> None:
        super().__init__()
        self.inner = inner

    def forward(
        self, inputs_embeds: paddle.Tensor, prompt_length: paddle.Tensor, positions: paddle.Tensor
    ) -> paddle.Tensor:
        return paddle.index_select(self.inner(inputs_embeds, prompt_length), positions, axis=1)


class SelectedDecoderLogits(nn.Layer):
    """``inner(decoder_input_ids, encoder_hidden_states)`` -> logits, kept at ``positions``."""

    def __init__(self, inner: nn.Layer) -> None:
        super().__init__()
        self.inner = inner

    def forward(
        self,
        decoder_input_ids: paddle.Tensor,
        encoder_hidden_states: paddle.Tensor,
        positions: paddle.Tensor,
    ) -> paddle.Tensor:
        logits = self.inner(decoder_input_ids, encoder_hidden_states)
        return paddle.index_select(logits, positions, axis=1)


def warm_rotary_caches(model: nn.Layer, length: int) -> int:
    """Fill every sublayer's rotary cos/sin cache (PaddleNLP's ``update_cos_sin_cache``) for
    ``length`` positions, in dynamic mode; returns how many caches were filled."""
    filled = 0
    for layer in model.sublayers(include_self=True):
        update: Any = getattr(type(layer), "update_cos_sin_cache", None)
        if callable(update):
            layer.update_cos_sin_cache(length)
            filled += 1
    return filled
