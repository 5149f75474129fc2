"""The querying transformer (Q-Former) of BLIP-2, in Paddle.

A BERT encoder over learned query tokens and, optionally, text tokens. Every
``cross_attention_frequency``-th layer (from layer 0) lets the queries, and only the queries,
cross-attend to the image features; queries and text share the self-attention (who sees whom
is the attention mask's business) but have their own feed-forward blocks
(``intermediate_query`` / ``output_query`` for queries, ``intermediate`` / ``output`` for text).

Used two ways:

* **Image to language model** (BLIP-2 generation, VisualGLM): queries alone, no mask.
  VisualGLM's Q-Former normalises differently (``norm_layout="sat"``, see
  :class:`QFormerConfig`). The
  query outputs, projected, stand in for image tokens of the language model.
* **Stage-1 pretraining** (``text_input=True``): text embeddings (:class:`QFormerTextEmbeddings`)
  ride along; the caller's mask chooses bidirectional (matching), unimodal (contrastive text
  features) or query-to-query plus causal text (image-grounded generation), and
  :class:`QFormerLMHead` predicts text tokens.

Names follow Hugging Face's ``Blip2QFormerModel`` (``layernorm``,
``encoder.layer.N.attention.attention.query``, ``...crossattention.output.LayerNorm``,
``...intermediate_query.dense``...), so checkpoints map by transposing Linear weights.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

import paddle
import paddle.nn.functional as F
from paddle import nn

from mixcore.kit.nn.vision_transformer import activation

__all__ = [
    "QFormer",
    "QFormerConfig",
    "QFormerLMHead",
    "QFormerTextEmbeddings",
    "additive_mask",
]

#: The Q-Former's LayerNorm arrangements (see :class:`QFormerConfig`).
NORM_LAYOUTS = ("bert", "sat")
#: What a masked score gets: far below any real one, yet finite in float16.
MASKED = -1e4


def additive_mask(keep: paddle.Tensor, dtype: str = "float32") -> paddle.Tensor:
    """A 0 / :data:`MASKED` mask from a boolean or 0/1 one (True or 1: may attend). A 2-D
    ``[b, keys]`` padding mask becomes ``[b, 1, 1, keys]``; a 3-D ``[b, queries, keys]`` one
    ``[b, 1, queries, keys]``."""
    keep = keep.astype("bool")
    if keep.ndim == 2:
        keep = keep[:, None, None, :]
    elif keep.ndim == 3:
        keep = keep[:, None, :, :]
    return (1.0 - keep.astype(dtype)) * MASKED


@dataclass(frozen=True)
class QFormerConfig:
    """Sizes of the Q-Former (the fields of a Hugging Face ``qformer_config``).
    ``encoder_hidden_size`` is the width of the image features it cross-attends to;
    ``text_input`` gives the layers their text feed-forward blocks (stage-1 pretraining)."""

    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    layer_norm_eps: float = 1e-12
    cross_attention_frequency: int = 2
    encoder_hidden_size: int = 1408
    vocab_size: int = 30523
    max_position_embeddings: int = 512
    pad_token_id: int = 0
    text_input: bool = False
    #: ``"bert"`` (BLIP-2): one LayerNorm over the inputs, post-norm blocks. ``"sat"``
    #: (VisualGLM, trained with SwissArmyTransformer's post order): each layer normalises its
    #: input first (``input_layernorm``), the attention blocks stay post-norm, the feed-forward
    #: block adds its output unnormalised, and one LayerNorm closes the stack
    #: (``final_layernorm``) instead of opening it.
    norm_layout: str = "bert"

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], **changes: Any) -> QFormerConfig:
        """The config from a dict (``use_qformer_text_input`` read as ``text_input``), keys this
        class does not know left out, ``changes`` applied last."""
        known = {f.name for f in fields(cls)}
        kept = {k: v for k, v in values.items() if k in known}
        if "text_input" not in kept and values.get("use_qformer_text_input"):
            kept["text_input"] = True
        return cls(**{**kept, **changes})


class QFormerMultiHeadAttention(nn.Layer):
    def __init__(self, config: QFormerConfig, cross: bool) -> None:
        super().__init__()
        dim = config.hidden_size
        if dim % config.num_attention_heads:
            raise ValueError(
                f"hidden_size {dim} is not a multiple of num_attention_heads "
                f"{config.num_attention_heads}"
            )
        source = config.encoder_hidden_size if cross else dim
        self.num_heads = config.num_attention_heads
        self.head_dim = dim // self.num_heads
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(source, dim)
        self.value = nn.Linear(source, dim)
        self.dropout = nn.Dropout(config.attention_probs_dropout_prob)

    def _heads(self, x: paddle.Tensor) -> paddle.Tensor:
        batch, length, _ = x.shape
        return x.reshape([batch, length, self.num_heads, self.head_dim]).transpose([0, 2, 1, 3])

    def forward(
        self, hidden_states: paddle.Tensor, states: paddle.Tensor, mask: paddle.Tensor | None
    ) -> paddle.Tensor:
        q = self._heads(self.query(hidden_states))
        k, v = self._heads(self.key(states)), self._heads(self.value(states))
        scores = paddle.matmul(q, k, transpose_y=True) * self.head_dim**-0.5
        if mask is not None:
            scores = scores + mask.astype(scores.dtype)
        probs = self.dropout(F.softmax(scores, axis=-1))
        context = paddle.matmul(probs, v).transpose([0, 2, 1, 3])
        return context.reshape([context.shape[0], context.shape[1], -1])


class QFormerResidual(nn.Layer):
    """``LayerNorm(dense(x) + residual)``: the ``output`` half of a BERT block (without the
    LayerNorm when ``normalise`` is off: the feed-forward block of the ``sat`` layout)."""

    def __init__(self, config: QFormerConfig, width: int, *, normalise: bool = True) -> None:
        super().__init__()
        self.dense = nn.Linear(width, config.hidden_size)
        if normalise:
            self.LayerNorm = nn.LayerNorm(config.hidden_size, epsilon=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden_states: paddle.Tensor, residual: paddle.Tensor) -> paddle.Tensor:
        out = self.dropout(self.dense(hidden_states)) + residual
        return self.LayerNorm(out) if hasattr(self, "LayerNorm") else out


class QFormerAttention(nn.Layer):
    def __init__(self, config: QFormerConfig, cross: bool = False) -> None:
        super().__init__()
        self.attention = QFormerMultiHeadAttention(config, cross)
        self.output = QFormerResidual(config, config.hidden_size)

    def forward(
        self, hidden_states: paddle.Tensor, states: paddle.Tensor, mask: paddle.Tensor | None
    ) -> paddle.Tensor:
        return self.output(self.attention(hidden_states, states, mask), hidden_states)


class QFormerIntermediate(nn.Layer):
    def __init__(self, config: QFormerConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.intermediate_size)
        self.act = activation(config.hidden_act)

    def forward(self, hidden_states: paddle.Tensor) -> paddle.Tensor:
        return self.act(self.dense(hidden_states))


class QFormerLayer(nn.Layer):
    def __init__(self, config: QFormerConfig, index: int) -> None:
        super().__init__()
        if config.norm_layout == "sat":
            self.input_layernorm = nn.LayerNorm(config.hidden_size, epsilon=config.layer_norm_eps)
        self.attention = QFormerAttention(config)
        self.has_cross_attention = index % config.cross_attention_frequency == 0
        if self.has_cross_attention:
            self.crossattention = QFormerAttention(config, cross=True)
        # In the sat layout the next layer's input_layernorm (or the final one) normalises
        # what the feed-forward block adds.
        normalise = config.norm_layout != "sat"
        self.intermediate_query = QFormerIntermediate(config)
        self.output_query = QFormerResidual(config, config.intermediate_size, normalise=normalise)
        if config.text_input:
            self.intermediate = QFormerIntermediate(config)
            self.output = QFormerResidual(config, config.intermediate_size, normalise=normalise)

    def forward(
        self,
        hidden_states: paddle.Tensor,
        mask: paddle.Tensor | None,
        image_embeds: paddle.Tensor | None,
        image_mask: paddle.Tensor | None,
        query_length: int,
    ) -> paddle.Tensor:
        if hasattr(self, "input_layernorm"):
            hidden_states = self.input_layernorm(hidden_states)
        attended = self.attention(hidden_states, hidden_states, mask)
        parts = []
        if query_length > 0:
            queries = attended[:, :query_length]
            if self.has_cross_attention:
                if image_embeds is None:
                    raise ValueError("a cross-attention layer needs image features")
                queries = self.crossattention(queries, image_embeds, image_mask)
            parts.append(self.output_query(self.intermediate_query(queries), queries))
        if attended.shape[1] > query_length:
            if not hasattr(self, "intermediate"):
                raise ValueError("this Q-Former has no text side (text_input is off)")
            text = attended[:, query_length:]
            parts.append(self.output(self.intermediate(text), text))
        return parts[0] if len(parts) == 1 else paddle.concat(parts, axis=1)


class QFormerEncoder(nn.Layer):
    def __init__(self, config: QFormerConfig) -> None:
        super().__init__()
        self.layer = nn.LayerList(
            [QFormerLayer(config, i) for i in range(config.num_hidden_layers)]
        )


class QFormer(nn.Layer):
    """``forward(query_embeds, image_embeds, text_embeds=None, attention_mask=None,
    image_mask=None)`` -> hidden states ``[b, queries + text, hidden]``.

    ``query_embeds`` ``[b, q, hidden]`` (or None: text alone, for contrastive text features),
    ``text_embeds`` ``[b, t, hidden]`` from :class:`QFormerTextEmbeddings`; ``attention_mask``
    an additive mask over the ``q + t`` positions (:func:`additive_mask`), None for all-to-all;
    ``image_mask`` an additive mask over the image features."""

    def __init__(self, config: QFormerConfig) -> None:
        super().__init__()
        if config.norm_layout not in NORM_LAYOUTS:
            raise ValueError(
                f"norm_layout must be one of {', '.join(NORM_LAYOUTS)}, not {config.norm_layout!r}"
            )
        self.config = config
        norm = nn.LayerNorm(config.hidden_size, epsilon=config.layer_norm_eps)
        if config.norm_layout == "sat":
            self.final_layernorm = norm
        else:
            self.layernorm = norm
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.encoder = QFormerEncoder(config)

    def forward(
        self,
        query_embeds: paddle.Tensor | None,
        image_embeds: paddle.Tensor | None = None,
        text_embeds: paddle.Tensor | None = None,
        attention_mask: paddle.Tensor | None = None,
        image_mask: paddle.Tensor | None = None,
    ) -> paddle.Tensor:
        parts = [p for p in (query_embeds, text_embeds) if p is not None]
        if not parts:
            raise ValueError("the Q-Former needs query or text embeddings")
        opening = getattr(self, "layernorm", None)
        closing = getattr(self, "final_layernorm", None)
        dtype = (opening or closing).weight.dtype
        hidden = paddle.concat([p.astype(dtype) for p in parts], axis=1)
        hidden = self.dropout(opening(hidden) if opening is not None else hidden)
        query_length = 0 if query_embeds is None else query_embeds.shape[1]
        if image_embeds is not None:
            image_embeds = image_embeds.astype(dtype)
        for layer in self.encoder.layer:
            hidden = layer(hidden, attention_mask, image_embeds, image_mask, query_length)
        return closing(hidden) if closing is not None else hidden


class QFormerTextEmbeddings(nn.Layer):
    """Word plus learned absolute position embeddings of text tokens (the Q-Former's own
    LayerNorm normalises them together with the queries)."""

    def __init__(self, config: QFormerConfig) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)

    def forward(self, input_ids: paddle.Tensor) -> paddle.Tensor:
        positions = paddle.arange(input_ids.shape[1], dtype="int64").unsqueeze(0)
        return self.word_embeddings(input_ids) + self.position_embeddings(positions)


class QFormerLMHead(nn.Layer):
    """BERT's masked-LM head: dense, activation, LayerNorm, then the word embeddings (tied)
    plus a bias. Predicts text tokens for image-grounded generation."""

    def __init__(self, config: QFormerConfig, word_embeddings: nn.Embedding) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.act = activation(config.hidden_act)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, epsilon=config.layer_norm_eps)
        self.bias = self.create_parameter(
            [config.vocab_size], is_bias=True, default_initializer=nn.initializer.Constant(0.0)
        )
        # A plain attribute would register the embedding twice; keep a reference outside the
        # layer tree and read its weight at call time.
        self._word_embeddings = [word_embeddings]

    def forward(self, hidden_states: paddle.Tensor) -> paddle.Tensor:
        hidden = self.LayerNorm(self.act(self.dense(hidden_states)))
        weight = self._word_embeddings[0].weight
        return paddle.matmul(hidden, weight, transpose_y=True) + self.bias
