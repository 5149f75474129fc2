"""BLIP-2 stage 1: the Q-Former learns to pull language-relevant features out of the frozen ViT.

Three losses over a batch of image-text pairs, as in the BLIP-2 paper (section 3.2), summed:

* **ITC**, image-text contrastive: each image's query outputs and its text's ``[CLS]`` output are
  projected and normalised; an image-text similarity is the best query's dot product, divided by
  a learned temperature; cross-entropy over the batch both ways (label smoothing 0.1). Queries
  and text do not see each other (the text runs alone).
* **ITM**, image-text matching: queries and text attend to each other; a binary head on the mean
  query output tells matched pairs from mismatched ones. Each text gets one hard negative image
  and each image one hard negative text, drawn in proportion to the ITC similarity (never the
  pair itself).
* **ITG**, image-grounded text generation: the first text token becomes ``[DEC]``; the text
  attends to the queries and causally to itself, the queries only to themselves, and the tied
  masked-LM head predicts each next token (label smoothing 0.1).

A batch of one has no negatives: ITC and ITM are left out of it (ITG still trains). Similarities
are taken within the batch of each process.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import paddle
import paddle.nn.functional as F
from paddle import nn
from paddlenlp.transformers.model_outputs import ModelOutput

from mixcore.api.constants import IGNORE_INDEX
from mixcore.kit.nn.qformer import (
    MASKED,
    QFormer,
    QFormerConfig,
    QFormerLMHead,
    QFormerTextEmbeddings,
    additive_mask,
)
from mixcore.kit.nn.vision_transformer import VisionConfig, VisionTransformer
from mixcore_blip2.configuration import Blip2Config
from mixcore_blip2.modeling import Blip2PretrainedModel

__all__ = ["Blip2QFormerPretraining", "PretrainingOutput"]

COMPONENTS: dict[str, tuple[str, ...]] = {
    "vision": ("vision_model",),
    "qformer": ("query_tokens", "qformer", "embeddings", "lm_head"),
    "projection": ("vision_projection", "text_projection", "itm_head", "temp"),
}
#: Width of the shared image-text embedding space (Hugging Face's ``image_text_hidden_size``).
EMBED_DIM = 256
LABEL_SMOOTHING = 0.1


def smoothed_cross_entropy(logits: paddle.Tensor, targets: paddle.Tensor) -> paddle.Tensor:
    """Per-row cross-entropy against targets mixed with the uniform distribution
    (``LABEL_SMOOTHING`` of the mass), as PyTorch's ``label_smoothing`` defines it."""
    logp = F.log_softmax(logits.astype("float32"), axis=-1)
    nll = -paddle.take_along_axis(logp, targets.unsqueeze(-1), axis=-1).squeeze(-1)
    return (1 - LABEL_SMOOTHING) * nll - LABEL_SMOOTHING * logp.mean(axis=-1)


@dataclass
class PretrainingOutput(ModelOutput):
    """The summed ``loss`` and its parts under ``loss_terms`` (:data:`mixcore.api.LOSS_TERMS_KEY`),
    which the trainer logs as ``loss/itc``, ``loss/itm``, ``loss/itg``."""

    loss: paddle.Tensor | None = None
    logits: paddle.Tensor | None = None
    loss_terms: dict[str, paddle.Tensor] | None = None


class Blip2QFormerPretraining(Blip2PretrainedModel):
    """ViT + Q-Former with its text side, the two projections, the matching head and the LM
    head. ``forward(input_ids, images, attention_mask, labels)``: ``input_ids`` are the
    captions, ``[CLS] text [SEP]`` and right-padded; ``labels`` the next-token labels of ITG."""

    COMPONENTS: ClassVar[dict[str, tuple[str, ...]]] = COMPONENTS

    def __init__(self, config: Blip2Config) -> None:
        super().__init__(config)
        vision = VisionConfig.from_dict(config.vision_config)
        self.vision_model = VisionTransformer(vision)
        qformer = QFormerConfig.from_dict(
            config.qformer_config, encoder_hidden_size=vision.hidden_size, text_input=True
        )
        hidden = qformer.hidden_size
        self.query_tokens = self.create_parameter(
            [1, config.num_query_tokens, hidden],
            default_initializer=nn.initializer.Normal(std=config.initializer_range),
        )
        self.embeddings = QFormerTextEmbeddings(qformer)
        self.qformer = QFormer(qformer)
        embed_dim = int(config.qformer_config.get("image_text_hidden_size", EMBED_DIM))
        self.vision_projection = nn.Linear(hidden, embed_dim)
        self.text_projection = nn.Linear(hidden, embed_dim)
        self.itm_head = nn.Linear(hidden, 2)
        self.lm_head = QFormerLMHead(qformer, self.embeddings.word_embeddings)
        self.temp = self.create_parameter([1], default_initializer=nn.initializer.Constant(0.07))

    @property
    def family(self) -> str:
        return "qformer"

    def get_input_embeddings(self) -> nn.Layer:
        return self.embeddings.word_embeddings

    def forward(
        self,
        input_ids: paddle.Tensor,
        images: paddle.Tensor,
        attention_mask: paddle.Tensor | None = None,
        labels: paddle.Tensor | None = None,
    ) -> PretrainingOutput:
        if attention_mask is None:
            attention_mask = paddle.ones(input_ids.shape, dtype="int64")
        batch = input_ids.shape[0]
        image_embeds = self.vision_model(images)
        queries = self.query_tokens.expand([batch, -1, -1])
        text_mask = attention_mask.astype("int64")
        terms: dict[str, paddle.Tensor] = {}
        if batch > 1:
            query_out = self.qformer(queries, image_embeds)
            image_feats = F.normalize(self.vision_projection(query_out), axis=-1)  # [b, q, e]
            text_out = self.qformer(
                None,
                text_embeds=self.embeddings(input_ids),
                attention_mask=additive_mask(text_mask),
            )
            text_feat = F.normalize(self.text_projection(text_out[:, 0]), axis=-1)  # [b, e]
            terms["itc"], sim_i2t, sim_t2i = self._contrastive(image_feats, text_feat)
            terms["itm"] = self._matching(
                input_ids, text_mask, image_embeds, queries, sim_i2t, sim_t2i
            )
        terms["itg"] = self._generation(input_ids, text_mask, image_embeds, queries, labels)
        loss = paddle.add_n(list(terms.values()))
        return PretrainingOutput(loss=loss, loss_terms={k: v.detach() for k, v in terms.items()})

    def _contrastive(self, image_feats, text_feat):
        temp = paddle.clip(self.temp, 0.001, 0.5)
        # [b_img, b_txt, q]: each query of each image against each text; the best query counts.
        sim_q2t = paddle.einsum("iqe,te->itq", image_feats, text_feat)
        sim_i2t = sim_q2t.max(axis=-1) / temp
        sim_t2i = sim_i2t.transpose([1, 0])
        targets = paddle.arange(sim_i2t.shape[0], dtype="int64")
        loss = (
            smoothed_cross_entropy(sim_i2t, targets).mean()
            + smoothed_cross_entropy(sim_t2i, targets).mean()
        ) / 2
        return loss, sim_i2t, sim_t2i

    def _matching(self, input_ids, text_mask, image_embeds, queries, sim_i2t, sim_t2i):
        batch = input_ids.shape[0]
        with paddle.no_grad():
            eye = paddle.eye(batch, dtype="int64") > 0
            # The pair itself is never its own negative.
            weights_t2i = F.softmax(paddle.where(eye, paddle.full_like(sim_t2i, MASKED), sim_t2i))
            weights_i2t = F.softmax(paddle.where(eye, paddle.full_like(sim_i2t, MASKED), sim_i2t))
            negative_images = paddle.multinomial(weights_t2i, 1).squeeze(-1)
            negative_texts = paddle.multinomial(weights_i2t, 1).squeeze(-1)
        texts = paddle.concat([input_ids, input_ids, input_ids[negative_texts]], axis=0)
        masks = paddle.concat([text_mask, text_mask, text_mask[negative_texts]], axis=0)
        images = paddle.concat([image_embeds, image_embeds[negative_images], image_embeds], axis=0)
        query_all = paddle.concat([queries] * 3, axis=0)
        keep = paddle.concat([paddle.ones(query_all.shape[:2], dtype="int64"), masks], axis=1)
        out = self.qformer(
            query_all,
            images,
            text_embeds=self.embeddings(texts),
            attention_mask=additive_mask(keep),
        )
        logits = self.itm_head(out[:, : queries.shape[1]]).mean(axis=1)
        targets = paddle.concat(
            [paddle.ones([batch], dtype="int64"), paddle.zeros([2 * batch], dtype="int64")]
        )
        return F.cross_entropy(logits, targets)

    def _generation(self, input_ids, text_mask, image_embeds, queries, labels):
        batch, length = input_ids.shape
        count = queries.shape[1]
        dec_id = int(self.config.qformer_config["dec_token_id"])
        decoder_ids = paddle.concat(
            [paddle.full([batch, 1], dec_id, dtype="int64"), input_ids[:, 1:]], axis=1
        )
        total = count + length
        row = paddle.arange(total).unsqueeze(1)
        col = paddle.arange(total).unsqueeze(0)
        # Queries see queries; text sees every query and the text up to itself.
        keep = paddle.logical_or(col < count, paddle.logical_and(row >= count, col <= row))
        pad = paddle.concat([paddle.ones([batch, count], dtype="int64"), text_mask], axis=1).astype(
            "bool"
        )
        keep = paddle.logical_and(keep.unsqueeze(0), pad.unsqueeze(1))
        out = self.qformer(
            queries,
            image_embeds,
            text_embeds=self.embeddings(decoder_ids),
            attention_mask=additive_mask(keep),
        )
        scores = self.lm_head(out[:, count:])
        if labels is None:
            labels = paddle.concat(
                [input_ids[:, 1:], paddle.full([batch, 1], IGNORE_INDEX, dtype="int64")], axis=1
            )
            labels = paddle.where(
                paddle.concat([text_mask[:, 1:], paddle.zeros([batch, 1], dtype="int64")], 1) > 0,
                labels,
                paddle.full_like(labels, IGNORE_INDEX),
            )
        live = labels != IGNORE_INDEX
        token = smoothed_cross_entropy(
            scores, paddle.where(live, labels, paddle.zeros_like(labels))
        )
        mask = live.astype("float32")
        return (token * mask).sum() / paddle.clip(mask.sum(), min=1.0)
