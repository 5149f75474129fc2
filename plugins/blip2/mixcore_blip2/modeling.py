"""BLIP-2 on PaddlePaddle: ViT -> Q-Former -> projection -> PaddleNLP OPT or T5.

The vision transformer and the Q-Former are the toolkit's (:mod:`mixcore.kit.nn`); the language
model is PaddleNLP's ``OPTForCausalLM`` or ``T5ForConditionalGeneration`` under
``language_model``. As in transformers 4.47 and later, ``input_ids`` carry ``num_query_tokens``
copies of ``image_token_index`` where the image goes (the start of the text, or of the encoder
input for T5), and the projected query outputs are written over their embeddings; this is the
same sequence older BLIP-2 code builds by prepending the query outputs.

Parameter names mirror Hugging Face's ``Blip2ForConditionalGeneration`` down to the language
model (``vision_model.*``, ``query_tokens``, ``qformer.*``, ``language_projection.*``), where
they are PaddleNLP's; :mod:`mixcore_blip2.checkpoint` maps the Hugging Face names.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import paddle
from paddle import nn
from paddlenlp.transformers import PretrainedModel
from paddlenlp.transformers.model_outputs import ModelOutput

from mixcore.kit.image_features import splice_image_features
from mixcore.kit.nn.losses import token_loss
from mixcore.kit.nn.qformer import QFormer, QFormerConfig
from mixcore.kit.nn.vision_transformer import VisionConfig, VisionTransformer
from mixcore_blip2.configuration import Blip2Config

#: Parameter-name prefixes of each component, relative to the model.
COMPONENTS: dict[str, tuple[str, ...]] = {
    "vision": ("vision_model",),
    "qformer": ("query_tokens", "qformer"),
    "projection": ("language_projection",),
    "language_model": ("language_model",),
}

#: LoRA targets: the attention projections of the language model (PaddleNLP names, matched
#: with ``re.fullmatch``; the leading ``.*`` tolerates wrapper prefixes).
LORA_TARGETS: dict[str, tuple[str, ...]] = {
    "opt": (r".*language_model\.opt\.decoder\.layers\.\d+\.self_attn\.(q|k|v|out)_proj",),
    "t5": (
        r".*language_model\.t5\.(encoder|decoder)\.block\.\d+\.layer\.\d+\."
        r"(SelfAttention|EncDecAttention)\.(q|k|v|o)",
    ),
}
#: Added to the LoRA targets where the ``lora_qformer`` option asks for it.
QFORMER_LORA_TARGETS = (
    r".*qformer\.encoder\.layer\.\d+\.(attention|crossattention)\.attention\.(query|key|value)",
)


@dataclass
class Blip2Output(ModelOutput):
    """``loss`` (mean over labelled tokens) and ``logits`` ``[batch, positions, vocab]`` (the
    decoder's positions for T5)."""

    loss: paddle.Tensor | None = None
    logits: paddle.Tensor | None = None


class Blip2PretrainedModel(PretrainedModel):
    """Ties BLIP-2 to its config for PaddleNLP (LoRA, the Trainer)."""

    config_class = Blip2Config
    base_model_prefix = "blip2"

    def _init_weights(self, layer: nn.Layer) -> None:
        # PaddleNLP's language models initialise themselves; the vision tower and Q-Former
        # layers get BERT's scheme (normal weights, zero biases, unit LayerNorm).
        std = self.config.initializer_range
        if isinstance(layer, nn.Linear):
            layer.weight.set_value(paddle.normal(0.0, std, layer.weight.shape))
            if layer.bias is not None:
                layer.bias.set_value(paddle.zeros_like(layer.bias))


class Blip2ForConditionalGeneration(Blip2PretrainedModel):
    """BLIP-2 for captioning and VQA; ``images`` holds one image per sample that has one, in
    batch order, and each fills its sample's run of ``num_query_tokens`` placeholders."""

    COMPONENTS: ClassVar[dict[str, tuple[str, ...]]] = COMPONENTS

    def __init__(self, config: Blip2Config) -> None:
        super().__init__(config)
        vision = VisionConfig.from_dict(config.vision_config)
        self.vision_model = VisionTransformer(vision)
        qformer = QFormerConfig.from_dict(
            config.qformer_config, encoder_hidden_size=vision.hidden_size
        )
        self.query_tokens = self.create_parameter(
            [1, config.num_query_tokens, qformer.hidden_size],
            default_initializer=nn.initializer.Normal(std=config.initializer_range),
        )
        self.qformer = QFormer(qformer)
        if config.family == "opt":
            from mixcore_blip2.opt_language import build_opt

            self.language_model = build_opt(config.text_config)
            text_hidden = config.text_config["hidden_size"]
        else:
            from mixcore_blip2.t5_language import build_t5

            self.language_model = build_t5(config.text_config)
            text_hidden = config.text_config["d_model"]
        self.language_projection = nn.Linear(qformer.hidden_size, text_hidden)

    @property
    def family(self) -> str:
        return self.config.family

    @property
    def image_token_id(self) -> int:
        return int(self.config.image_token_index)

    def get_input_embeddings(self) -> nn.Layer:
        if self.family == "opt":
            return self.language_model.opt.embeddings.word_embeddings
        return self.language_model.t5.shared

    def query_features(self, pixel_values: paddle.Tensor) -> paddle.Tensor:
        """The Q-Former's query outputs ``[images, num_query_tokens, qformer hidden]``."""
        image_embeds = self.vision_model(pixel_values)
        queries = self.query_tokens.expand([image_embeds.shape[0], -1, -1])
        return self.qformer(queries, image_embeds)

    def image_features(self, pixel_values: paddle.Tensor) -> paddle.Tensor:
        """What the language model sees of each image: ``[images, queries, text hidden]``."""
        features = self.language_projection(self.query_features(pixel_values))
        return features.astype(self.get_input_embeddings().weight.dtype)

    def embed_inputs(
        self, input_ids: paddle.Tensor, images: paddle.Tensor | None = None
    ) -> paddle.Tensor:
        """Token embeddings with each image's projected query outputs over its placeholders."""
        count = self.config.num_query_tokens
        return splice_image_features(
            self.get_input_embeddings()(input_ids),
            input_ids,
            images,
            self.image_features,
            token_id=self.image_token_id,
            tokens_per_image=count,
            hint=f"each image needs {count} placeholder tokens (id {self.image_token_id}) at the "
            "start of its sample's input_ids.",
        )

    def forward(
        self,
        input_ids: paddle.Tensor,
        images: paddle.Tensor | None = None,
        attention_mask: paddle.Tensor | None = None,
        labels: paddle.Tensor | None = None,
        decoder_input_ids: paddle.Tensor | None = None,
        decoder_attention_mask: paddle.Tensor | None = None,
        return_dict: bool | None = None,
    ) -> Blip2Output:
        """Logits (and the loss, given pre-shifted ``labels``). OPT: ``attention_mask`` is the
        2-D padding mask over ``input_ids``. T5: ``input_ids`` / ``attention_mask`` are the
        encoder's; ``decoder_input_ids`` start with ``decoder_start_token_id`` and ``labels``
        align with them."""
        embeds = self.embed_inputs(input_ids, images)
        if attention_mask is None:
            attention_mask = paddle.ones(input_ids.shape, dtype="int64")
        if self.family == "opt":
            from mixcore_blip2.opt_language import opt_forward

            logits = opt_forward(self.language_model, embeds, attention_mask)
        else:
            from mixcore_blip2.t5_language import t5_forward

            if decoder_input_ids is None:
                raise ValueError("a T5 BLIP-2 needs decoder_input_ids")
            logits = t5_forward(
                self.language_model,
                embeds,
                attention_mask,
                decoder_input_ids,
                decoder_attention_mask,
            )
        loss = token_loss(logits, labels) if labels is not None else None
        return Blip2Output(loss=loss, logits=logits)
