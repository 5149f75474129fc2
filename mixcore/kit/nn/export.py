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

import json
from pathlib import Path
from typing import Any

import paddle
from paddle import nn

from mixcore.api.records import ExportPart, ModelBundle, TensorSpec

#: The longest sequence an export takes when ``--max-length`` is not given (or the model's limit).
DEFAULT_EXPORT_LENGTH = 512

__all__ = [
    "DEFAULT_EXPORT_LENGTH",
    "ImageFeatures",
    "SelectedDecoderLogits",
    "SelectedLogits",
    "SelectedPromptLogits",
    "TokenEmbedding",
    "embed_part",
    "export_length",
    "vision_part",
    "warm_rotary_caches",
    "write_processing_files",
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


class TokenEmbedding(nn.Layer):
    """A language model's token table as a part: ids ``[1, n]`` -> embeddings."""

    def __init__(self, table: nn.Layer) -> None:
        super().__init__()
        self.table = table

    def forward(self, input_ids: paddle.Tensor) -> paddle.Tensor:
        return self.table(input_ids)


class ImageFeatures(nn.Layer):
    """Images -> the features a model splices into its prompt: ``owner(images)``, or
    ``owner.<method>(images)``. ``owner`` should hold only what the features need (the vision
    tower, or the model whose method reads only its vision side)."""

    def __init__(self, owner: nn.Layer, method: str | None = None) -> None:
        super().__init__()
        self.owner = owner
        self._method = method

    def forward(self, images: paddle.Tensor) -> paddle.Tensor:
        if self._method is None:
            return self.owner(images)
        return getattr(self.owner, self._method)(images)


def embed_part(model: nn.Layer) -> ExportPart:
    """The ``embed`` part of a model with ``get_input_embeddings()``: any number of ids."""
    return ExportPart(
        "embed",
        TokenEmbedding(model.get_input_embeddings()),
        (TensorSpec("input_ids", (1, None), "int64"),),
    )


def vision_part(layer: ImageFeatures, size: int, images: int | None = None) -> ExportPart:
    """The ``vision`` part: ``images`` pictures of ``size`` x ``size`` at a time (None: any
    number)."""
    return ExportPart("vision", layer, (TensorSpec("images", (images, 3, size, size), "float32"),))


def write_processing_files(folder: Path, config: dict[str, Any], bundle: ModelBundle) -> None:
    """What an export needs to encode prompts without the weights: ``config`` as
    ``config.json``, the tokenizer's files and the image processor's (when it has one)."""
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    bundle.tokenizer.save_pretrained(str(folder))
    if bundle.processor is not None:
        bundle.processor.save_pretrained(folder)


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
