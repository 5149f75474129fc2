"""VisualGLM for ``mixcore export``: its parts as Paddle static programs, and the prompt side.

Parts (roles of :data:`mixcore.api.EXPORT_ROLES`): ``embed`` is ChatGLM's token table,
``vision`` the ViT, Q-Former and projection (any number of images), ``language`` PaddleNLP's
ChatGLM-6B on ``inputs_embeds`` and the prompt's length, at a fixed sequence length. The prompt
ends in ``[gMASK] <sop>`` (as for the dynamic model's ``ChatGLMStep``); the part builds
ChatGLM's 2-row position ids and its mask (both ways over the prompt before ``<sop>``, causal
from it) from that length inside the program. PaddleNLP's rotary embedding sizes its cos/sin
table from ``position_ids.max()``, a value, and writes it into the layer; the export's model
gets a rotary layer computing the same table for the whole fixed length instead.
"""

from __future__ import annotations

from pathlib import Path

import paddle
from paddle import nn

from mixcore.api import ModelBundle, ModelExport, TensorSpec
from mixcore.api.records import ExportPart
from mixcore.kit.checkpoints import read_config
from mixcore.kit.images import ImagePreprocessor
from mixcore.kit.nn.export import (
    ImageFeatures,
    embed_part,
    export_length,
    vision_part,
    write_processing_files,
)
from mixcore_visualglm.checkpoint import (
    PREPROCESSOR_NAME,
    config_from_fields,
    image_preprocessor,
    published_config,
)
from mixcore_visualglm.features import VisualGLMEncoder
from mixcore_visualglm.tokenization import load_tokenizer, special_ids


class FixedLengthRotary(nn.Layer):
    """PaddleNLP's ChatGLM ``RotaryEmbeddings`` with its cos/sin table computed for ``length``
    positions on every call (the same values at every position the original computes), so a
    traced program neither branches on ``position_ids.max()`` nor writes layer state."""

    def __init__(self, inner: nn.Layer, length: int) -> None:
        super().__init__()
        self.inner = inner
        self.length = length

    def forward(self, position_ids: paddle.Tensor) -> paddle.Tensor:
        inner = self.inner
        steps = paddle.arange(self.length, dtype="float32")
        freqs = paddle.einsum("i,j->ij", steps, inner.inv_freq)
        table = paddle.concat([freqs, freqs], axis=-1)
        cos = table.cos().unsqueeze(1).cast(inner.default_dtype)
        sin = table.sin().unsqueeze(1).cast(inner.default_dtype)
        if inner.position_encoding_2d:
            positions = position_ids[:, 0, :].transpose([1, 0])
            blocks = position_ids[:, 1, :].transpose([1, 0])
            return paddle.stack(
                [
                    inner.get_rotary_embeds(cos, sin, positions),
                    inner.get_rotary_embeds(cos, sin, blocks),
                ],
                axis=0,
            )
        return inner.get_rotary_embeds(cos, sin, position_ids.transpose([1, 0]))


class _Language(nn.Layer):
    """ChatGLM on ``[1, L, hidden]`` embeddings of a prompt of ``prompt_length`` tokens (ending
    ``[gMASK] <sop>``) and the answer so far, padded on the right."""

    def __init__(self, chatglm: nn.Layer) -> None:
        super().__init__()
        self.chatglm = chatglm

    def forward(self, inputs_embeds: paddle.Tensor, prompt_length: paddle.Tensor) -> paddle.Tensor:
        length = inputs_embeds.shape[1]
        steps = paddle.arange(length, dtype="int64")
        context = prompt_length - 1  # <sop> and what follows attend causally
        in_context = steps < context
        positions = paddle.where(in_context, steps, paddle.zeros_like(steps) + prompt_length - 2)
        blocks = paddle.where(in_context, paddle.zeros_like(steps), steps - context + 1)
        position_ids = paddle.stack([positions, blocks]).unsqueeze(0)
        keep = paddle.logical_or(steps.unsqueeze(0) <= steps.unsqueeze(1), in_context.unsqueeze(0))
        return self.chatglm.forward(
            inputs_embeds=inputs_embeds,
            attention_mask=keep.unsqueeze([0, 1]),
            position_ids=position_ids,
            use_cache=False,
            return_dict=True,
        ).logits


def export_parts(bundle: ModelBundle, folder: str, max_length: int | None) -> ModelExport:
    """The parts of a loaded VisualGLM, with its prompt-side files written into ``folder``.
    The bundle's ChatGLM gets :class:`FixedLengthRotary` (the loaded model serves the export
    only)."""
    model = bundle.model
    config = model.config
    max_length = export_length(max_length, int(config.max_sequence_length), "max_sequence_length")
    write_processing(bundle, Path(folder))
    chatglm = model.language_model
    stack = chatglm.chatglm.transformer
    if not isinstance(stack.rotary_embeddings, FixedLengthRotary):
        stack.rotary_embeddings = FixedLengthRotary(stack.rotary_embeddings, max_length)
    size = int(config.vision()["image_size"])
    hidden = int(model.get_input_embeddings().weight.shape[1])
    tokenizer = bundle.tokenizer
    return ModelExport(
        parts=[
            embed_part(model),
            vision_part(ImageFeatures(model, "image_features"), size),
            ExportPart(
                "language",
                _Language(chatglm),
                (
                    TensorSpec("inputs_embeds", (1, max_length, hidden), "float32"),
                    TensorSpec("prompt_length", (1,), "int64"),
                ),
            ),
        ],
        decoding="causal",
        image_token_id=model.image_token_id,
        tokens_per_image=int(config.image_length),
        stop_ids=(int(special_ids(tokenizer).eop),),
        vocab_size=len(tokenizer),
        max_length=max_length,
        notes=[
            f"the ChatGLM language part takes exactly {max_length} positions and the prompt's "
            "length; shorter sequences are padded on the right"
        ],
    )


def write_processing(bundle: ModelBundle, folder: Path) -> None:
    """VisualGLM's config in THUDM's layout (no weights), tokenizer and image processor files."""
    config = published_config(bundle.model)
    write_processing_files(folder, config, bundle)


def load_processing(name: str, folder: str) -> ModelBundle:
    """The bundle (no model) that encodes prompts as the exported VisualGLM was trained on."""
    folder_path = Path(folder)
    config = config_from_fields(read_config(folder_path))
    tokenizer = load_tokenizer(folder_path)
    if config.image_token_id is None:
        config.image_token_id = special_ids(tokenizer).smask
    if (folder_path / PREPROCESSOR_NAME).is_file():
        processor = ImagePreprocessor.from_pretrained(folder_path)
    else:
        processor = image_preprocessor(config)
    encoder = VisualGLMEncoder(tokenizer, config.image_length, config.image_token_id)
    return ModelBundle(
        name=name, model=None, tokenizer=tokenizer, processor=processor, extras={"encoder": encoder}
    )
