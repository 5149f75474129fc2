"""VisualGLM on PaddlePaddle: EVA ViT -> Q-Former -> projection -> PaddleNLP's ChatGLM-6B.

The vision transformer and the Q-Former (in SwissArmyTransformer's LayerNorm order) are the
toolkit's (:mod:`mixcore.kit.nn`), the same modules BLIP-2 builds on; the language model is
PaddleNLP's ``ChatGLMForCausalLM`` under ``language_model``. An image is ``image_length`` slots
in ``input_ids`` right after the tokens of ``<img>``, marked with ``config.image_token_id``; the
projected query outputs are written over their embeddings, as THUDM's code concatenates
``[text before, image features, text after]``.

ChatGLM needs its own mask and positions (bidirectional over the prompt, causal over the answer,
2-row position ids): :mod:`mixcore_visualglm.features` builds them per sample in the collator,
packed rows included; given none (or a 2-D padding mask), :meth:`forward` builds them from
``input_ids``.

Parameter names: ``vision_model.*`` (Hugging Face BLIP-2's vision names), ``query_tokens``,
``qformer.*``, ``language_projection.*`` and ``language_model.*`` (PaddleNLP's ChatGLM);
:mod:`mixcore_visualglm.checkpoint` maps THUDM's names (``image_encoder.vit.*``,
``image_encoder.qformer.*``, ``image_encoder.glm_proj``, ``transformer.*``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import paddle
from paddle import nn
from paddlenlp.transformers import PretrainedModel
from paddlenlp.transformers.model_outputs import ModelOutput

from mixcore.kit.image_features import splice_image_features
from mixcore.kit.nn.losses import token_loss
from mixcore.kit.nn.qformer import QFormer, QFormerConfig
from mixcore.kit.nn.vision_transformer import VisionConfig, VisionTransformer
from mixcore_visualglm.chatglm_language import (
    build_chatglm,
    chatglm_forward,
    packed_positions_and_layout,
    packed_positions_and_mask,
)
from mixcore_visualglm.configuration import VisualGLMConfig

#: Parameter-name prefixes of each component, relative to the model.
COMPONENTS: dict[str, tuple[str, ...]] = {
    "vision": ("vision_model",),
    "qformer": ("query_tokens", "qformer"),
    "projection": ("language_projection",),
    "language_model": ("language_model",),
}

#: Default LoRA targets: ChatGLM's attention (fused q/k/v and output) and MLP projections, and
#: nothing of the Q-Former. (PaddleMIX's default VisualGLM pattern, ``.*query_key_value.*`` and
#: ``.*dense.*``, also matches the Q-Former's ``output.dense`` layers.) Matched with
#: ``re.fullmatch``; the leading ``.*`` tolerates wrapper prefixes.
LORA_TARGETS = (
    r".*language_model\.chatglm\.transformer\.layers\.\d+\."
    r"(attention\.(query_key_value|dense)|mlp\.(dense_h_to_4h|dense_4h_to_h))",
)


@dataclass
class VisualGLMOutput(ModelOutput):
    """``loss`` (mean over labelled tokens) and ``logits`` ``[batch, positions, vocab]``."""

    loss: paddle.Tensor | None = None
    logits: paddle.Tensor | None = None


class VisualGLMPretrainedModel(PretrainedModel):
    """Ties VisualGLM to its config for PaddleNLP (LoRA, the Trainer)."""

    config_class = VisualGLMConfig
    base_model_prefix = "visualglm"

    def _init_weights(self, layer: nn.Layer) -> None:
        # Every Linear layer (ChatGLM's too) gets normal weights at the config's range and zero
        # biases, as BLIP-2's do; the tiny preset needs a wider range than 0.02 to learn.
        std = self.config.initializer_range
        if isinstance(layer, nn.Linear):
            layer.weight.set_value(paddle.normal(0.0, std, layer.weight.shape))
            if layer.bias is not None:
                layer.bias.set_value(paddle.zeros_like(layer.bias))


class VisualGLMForConditionalGeneration(VisualGLMPretrainedModel):
    """VisualGLM for chat and VQA; ``images`` holds one image per sample that has one, in batch
    order, and each fills its sample's run of ``image_length`` slots."""

    COMPONENTS: ClassVar[dict[str, tuple[str, ...]]] = COMPONENTS

    def __init__(self, config: VisualGLMConfig) -> None:
        super().__init__(config)
        vision = VisionConfig.from_dict(config.vision())
        self.vision_model = VisionTransformer(vision)
        qformer = QFormerConfig.from_dict(config.qformer())
        self.query_tokens = self.create_parameter(
            [1, config.image_length, qformer.hidden_size],
            default_initializer=nn.initializer.Normal(std=config.initializer_range),
        )
        self.qformer = QFormer(qformer)
        self.language_model = build_chatglm(config.chatglm())
        self.language_projection = nn.Linear(qformer.hidden_size, int(config.hidden_size))

    @property
    def image_token_id(self) -> int:
        return int(self.config.image_token_id)

    def get_input_embeddings(self) -> nn.Layer:
        return self.language_model.chatglm.transformer.word_embeddings

    def image_features(self, pixel_values: paddle.Tensor) -> paddle.Tensor:
        """What ChatGLM sees of each image: ``[images, image_length, hidden]``."""
        image_embeds = self.vision_model(pixel_values)
        queries = self.query_tokens.expand([image_embeds.shape[0], -1, -1])
        features = self.language_projection(self.qformer(queries, image_embeds))
        return features.astype(self.get_input_embeddings().weight.dtype)

    def embed_inputs(
        self, input_ids: paddle.Tensor, images: paddle.Tensor | None = None
    ) -> paddle.Tensor:
        """Token embeddings with each image's projected query outputs over its slots."""
        count = self.config.image_length
        return splice_image_features(
            self.get_input_embeddings()(input_ids),
            input_ids,
            images,
            self.image_features,
            token_id=self.image_token_id,
            tokens_per_image=count,
            hint=f"each image needs {count} slot tokens (id {self.image_token_id}) after <img> "
            "in its sample's input_ids.",
        )

    def forward(
        self,
        input_ids: paddle.Tensor,
        images: paddle.Tensor | None = None,
        attention_mask: paddle.Tensor | None = None,
        position_ids: paddle.Tensor | None = None,
        labels: paddle.Tensor | None = None,
        return_dict: bool | None = None,
        segment_ids: paddle.Tensor | None = None,
    ) -> VisualGLMOutput:
        """Logits (and the loss, given pre-shifted ``labels``). ``attention_mask`` is ChatGLM's
        4-D ``[batch, 1, L, L]`` mask (True = may attend) with ``position_ids`` ``[batch, 2,
        L]``, as the collator makes them; None or a 2-D padding mask (1 = real token) has them
        built here, each row one sample. With ``segment_ids`` ``[batch, L]`` (packed rows: 1,
        2, ... per sample, 0 padding) each sample attends per segment, as ChatGLM would alone,
        and ``attention_mask`` is not read."""
        if segment_ids is not None:
            positions, attention_mask = packed_positions_and_layout(
                input_ids.numpy(),
                segment_ids.numpy(),
                int(self.config.gmask_token_id),
                int(self.config.bos_token_id),
            )
            if position_ids is None:
                position_ids = paddle.to_tensor(positions)
        elif attention_mask is None or attention_mask.ndim == 2 or position_ids is None:
            attention_mask, position_ids = self.mask_and_positions(input_ids, attention_mask)
        embeds = self.embed_inputs(input_ids, images)
        logits = chatglm_forward(self.language_model, embeds, attention_mask, position_ids)
        loss = token_loss(logits, labels) if labels is not None else None
        return VisualGLMOutput(loss=loss, logits=logits)

    def mask_and_positions(
        self, input_ids: paddle.Tensor, padding: paddle.Tensor | None = None
    ) -> tuple[paddle.Tensor, paddle.Tensor]:
        """ChatGLM's mask and positions for rows of one right-padded sample each."""
        ids = input_ids.numpy()
        real = np.ones_like(ids) if padding is None else (padding.numpy() != 0).astype(np.int64)
        positions, keep = packed_positions_and_mask(
            ids, real, int(self.config.gmask_token_id), int(self.config.bos_token_id)
        )
        return paddle.to_tensor(keep), paddle.to_tensor(positions)
