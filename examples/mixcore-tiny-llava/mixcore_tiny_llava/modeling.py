"""A tiny LLaVA: a vision encoder's patch features, through a 2-layer MLP projector, replace the
run of image tokens in the text embeddings of PaddleNLP's ``LlamaForCausalLM``.

Parameter names: ``vision.*`` (the encoder), ``projector.*`` and ``language_model.*`` (PaddleNLP's
LLaMA unchanged, so its LoRA targets keep PaddleNLP's names:
``language_model.llama.layers.0.self_attn.q_proj``).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import paddle
import paddlenlp.transformers.llama.modeling as llama_modeling
from paddle import nn
from paddlenlp.transformers import LlamaForCausalLM, PretrainedModel

from mixcore.kit.image_features import splice_image_features
from mixcore.kit.nn.segment_attention import SegmentLayout, replaced, segment_attention
from mixcore_tiny_llava.configuration import TinyLlavaConfig

#: Parameter-name patterns of each component, for mixcore's trainable-parameter report.
COMPONENTS = {
    "vision": r"vision\.",
    "adapter": r"projector\.",
    "language_model": r"language_model\.",
}


class VisionEncoder(nn.Layer):
    """Patch embedding (a strided convolution), learned positions, pre-norm transformer blocks:
    ``[n, 3, size, size]`` images -> ``[n, patches, vision_hidden_size]`` features."""

    def __init__(self, config: TinyLlavaConfig) -> None:
        super().__init__()
        width, patch = config.vision_hidden_size, config.patch_size
        self.patch_embed = nn.Conv2D(3, width, patch, stride=patch)
        self.position_embedding = self.create_parameter(
            [1, config.image_tokens, width], default_initializer=nn.initializer.Normal(std=0.02)
        )
        block = nn.TransformerEncoderLayer(
            width,
            config.vision_num_heads,
            config.vision_intermediate_size,
            dropout=0.0,
            activation="gelu",
            normalize_before=True,
        )
        self.blocks = nn.TransformerEncoder(block, config.vision_num_layers)
        self.norm = nn.LayerNorm(width)

    def forward(self, images: paddle.Tensor) -> paddle.Tensor:
        patches = self.patch_embed(images).flatten(2).transpose([0, 2, 1])
        return self.norm(self.blocks(patches + self.position_embedding))


@contextmanager
def attending_per_segment(llama: nn.Layer, layout: SegmentLayout) -> Iterator[None]:
    """Within the block, PaddleNLP's ``LlamaModel`` ``llama`` attends per segment of ``layout``.

    PaddleNLP's LLaMA layers call the module function ``scaled_dot_product_attention`` with
    their config; for the duration it is one that sends calls made with *this* model's config to
    :func:`~mixcore.kit.nn.segment_attention.segment_attention` (any other model's calls go to
    the original), and this model's mask builder returns a ``[batch, 1, 1, 1]`` placeholder
    instead of a ``[batch, 1, len, len]`` mask.
    """
    original = llama_modeling.scaled_dot_product_attention
    config = llama.config

    def attention(_module: Any):
        def attend(query, cfg, key, value, attention_mask, output_attentions, *args, **kwargs):
            if cfg is not config:
                return original(
                    query, cfg, key, value, attention_mask, output_attentions, *args, **kwargs
                )
            out = segment_attention(query, key, value, layout)
            out = out.reshape([*out.shape[:2], -1])
            return (out, None) if output_attentions else out

        return attend

    def no_mask(_model: Any):
        def prepare(attention_mask, input_shape, past_key_values_length, dtype):
            return paddle.zeros([input_shape[0], 1, 1, 1], dtype=dtype)

        return prepare

    with (
        replaced([llama_modeling], "scaled_dot_product_attention", attention),
        replaced([llama], "_prepare_decoder_attention_mask", no_mask),
    ):
        yield


class TinyLlavaPretrainedModel(PretrainedModel):
    """Ties the model to its config for PaddleNLP (``LoRAModel`` reads the config, the Trainer
    saves it). LLaMA initialises its own layers; the encoder keeps Paddle's initialisers."""

    config_class = TinyLlavaConfig
    base_model_prefix = "tiny_llava"


class TinyLlavaForConditionalGeneration(TinyLlavaPretrainedModel):
    """``images`` holds every image of the batch in reading order (sample 0's first); the i-th
    image fills the i-th run of ``config.image_tokens`` image tokens."""

    def __init__(self, config: TinyLlavaConfig) -> None:
        super().__init__(config)
        text = config.llama_config()
        self.vision = VisionEncoder(config)
        self.projector = nn.Sequential(
            nn.Linear(config.vision_hidden_size, config.projector_hidden_size),
            nn.GELU(),
            nn.Linear(config.projector_hidden_size, text.hidden_size),
        )
        self.language_model = LlamaForCausalLM(text)

    def get_input_embeddings(self) -> nn.Layer:
        return self.language_model.get_input_embeddings()

    def embed_inputs(
        self, input_ids: paddle.Tensor, images: paddle.Tensor | None = None
    ) -> paddle.Tensor:
        """Token embeddings with the projected image features written over the image tokens."""
        embeds = self.get_input_embeddings()(input_ids)
        return splice_image_features(
            embeds,
            input_ids,
            images,
            lambda pixels: self.projector(self.vision(pixels.astype(embeds.dtype))),
            token_id=self.config.image_token_id,
            tokens_per_image=self.config.image_tokens,
        )

    def forward(
        self,
        input_ids: paddle.Tensor,
        images: paddle.Tensor | None = None,
        attention_mask: paddle.Tensor | None = None,
        position_ids: paddle.Tensor | None = None,
        labels: paddle.Tensor | None = None,
        return_dict: bool = True,
        segment_ids: paddle.Tensor | None = None,
        **kwargs: Any,
    ) -> Any:
        """What ``LlamaForCausalLM`` returns for the spliced embeddings: ``.loss`` (when
        ``labels``) and ``.logits`` ``[batch, len, vocab]``, or the tuple ``(loss?, logits, ...)``
        with ``return_dict=False``. ``labels`` are pre-shifted (LLaMA's criterion does not
        shift). ``attention_mask`` is 2-D padding or a 4-D boolean ``[batch, 1, len, len]``
        mask, which LLaMA uses as it is. Packed rows come with ``segment_ids`` ``[batch, len]``
        (1, 2, ... per sample, 0 padding) instead: each sample attends only to itself, computed
        per segment (:func:`attending_per_segment`), and ``attention_mask`` is not read."""
        embeds = self.embed_inputs(input_ids, images)

        def run(mask):
            return self.language_model(
                inputs_embeds=embeds,
                attention_mask=mask,
                position_ids=position_ids,
                labels=labels,
                return_dict=return_dict,
                **kwargs,
            )

        if segment_ids is None:
            return run(attention_mask)
        if kwargs.get("past_key_values") is not None:
            raise ValueError("segment_ids (packed rows) cannot be combined with past_key_values")
        layout = SegmentLayout.from_segment_ids(segment_ids)
        with attending_per_segment(self.language_model.llama, layout):
            return run(None)
