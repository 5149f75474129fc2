"""Qwen-VL on PaddlePaddle: the Qwen-VL vision transformer and resampler feeding PaddleNLP's QWen.

Parameter names mirror Hugging Face Qwen-VL (``visual.conv1``, ``visual.transformer.resblocks.N``,
``visual.attn_pool``, ...) so checkpoints convert by renaming and transposing only; the language
model is PaddleNLP's ``QWenForCausalLM`` unchanged under ``llm``, so its LoRA targets keep
PaddleNLP's names (``llm.qwen.h.0.attn.c_attn``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, ClassVar

import numpy as np
import paddle
import paddle.nn.functional as F
from paddle import nn
from paddlenlp.transformers import PretrainedModel
from paddlenlp.transformers.qwen.modeling import QWenForCausalLM

from mixcore.kit.image_features import splice_image_features
from mixcore.kit.nn.segment_attention import SegmentLayout, replaced, segment_attention
from mixcore_qwen_vl.configuration import POSITIONAL_TABLE_SIZE, QwenVLConfig

_VISION_LAYER_NORM_EPS = 1e-6

#: Parameter-name prefixes of each component, relative to the model. ``vision`` is the ViT,
#: ``adapter`` the resampler and output projection, ``language_model`` the QWen decoder.
COMPONENTS: dict[str, tuple[str, ...]] = {
    "vision": (
        "visual.conv1",
        "visual.positional_embedding",
        "visual.ln_pre",
        "visual.transformer",
    ),
    "adapter": ("visual.attn_pool", "visual.ln_post", "visual.proj"),
    "language_model": ("llm",),
}

#: LoRA targets covering every linear layer of the language model's blocks. Patterns are matched
#: with ``re.fullmatch`` by PaddleNLP's LoRAModel; the leading ``.*`` tolerates wrapper prefixes.
DEFAULT_LORA_TARGET_MODULES: tuple[str, ...] = (
    r".*llm\.qwen\.h\.\d+\.attn\.c_attn",
    r".*llm\.qwen\.h\.\d+\.attn\.c_proj",
    r".*llm\.qwen\.h\.\d+\.mlp\.w1",
    r".*llm\.qwen\.h\.\d+\.mlp\.w2",
    r".*llm\.qwen\.h\.\d+\.mlp\.c_proj",
)


def component_of(name: str) -> str | None:
    """The component (``vision``, ``adapter``, ``language_model``) owning a parameter name."""
    for component, prefixes in COMPONENTS.items():
        if any(name == p or name.startswith(p + ".") for p in prefixes):
            return component
    return None


def component_pattern(component: str) -> str:
    """A regex matching the names of one component's parameters and sublayers."""
    alternatives = "|".join(re.escape(p) for p in COMPONENTS[component])
    return rf"^(?:{alternatives})(?:\..*)?$"


def resize_positional_table(table: paddle.Tensor, num_positions: int) -> paddle.Tensor:
    """Bicubically resize a square ``[N, C]`` grid of position embeddings to ``num_positions``.

    Qwen-VL's tables are trained on one grid (16x16 for the ViT, the query grid for the
    resampler's keys) and used on another, so the 2-D table is interpolated like an image.
    """
    src = math.isqrt(table.shape[0])
    dst = math.isqrt(num_positions)
    if dst * dst != num_positions or src * src != table.shape[0]:
        raise ValueError(
            f"position tables need square grids; got {table.shape[0]} -> {num_positions} positions"
        )
    if src == dst:
        return table
    channels = table.shape[1]
    grid = table.astype("float32").reshape([1, src, src, channels]).transpose([0, 3, 1, 2])
    grid = F.interpolate(grid, size=[dst, dst], mode="bicubic", align_corners=False)
    return grid.transpose([0, 2, 3, 1]).reshape([dst * dst, channels]).astype(table.dtype)


def sincos_2d_positions(embed_dim: int, grid_size: int) -> np.ndarray:
    """Fixed 2-D sine-cosine position embeddings ``[grid_size**2, embed_dim]`` (MAE style).

    Row-major over the grid; the first half of the channels encodes the column and the second
    half the row (the order of Hugging Face Qwen-VL's table), each half being sines then
    cosines of the position at geometrically spaced frequencies.
    """
    quarter = embed_dim // 4
    freqs = 1.0 / 10000 ** (np.arange(quarter, dtype=np.float64) / quarter)
    rows, cols = np.meshgrid(np.arange(grid_size), np.arange(grid_size), indexing="ij")

    def encode(positions: np.ndarray) -> np.ndarray:
        angles = positions.reshape(-1, 1).astype(np.float64) * freqs[None, :]
        return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)

    return np.concatenate([encode(cols), encode(rows)], axis=1).astype(np.float32)


def _scaled_dot_product(q: paddle.Tensor, k: paddle.Tensor, v: paddle.Tensor) -> paddle.Tensor:
    """Softmax attention on ``[batch, heads, length, head_dim]`` tensors (no mask)."""
    scores = paddle.matmul(q / math.sqrt(q.shape[-1]), k, transpose_y=True)
    return paddle.matmul(F.softmax(scores, axis=-1), v)


def _layer_norm(width: int) -> nn.LayerNorm:
    return nn.LayerNorm(width, epsilon=_VISION_LAYER_NORM_EPS)


class VisualAttention(nn.Layer):
    """Self-attention with one fused ``in_proj``, laid out per head as ``[q | k | v]``.

    That Megatron-style layout (not ``[all q | all k | all v]``) is what Hugging Face Qwen-VL's
    weights use, so they load without reshuffling.
    """

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.head_dim = width // heads
        self.in_proj = nn.Linear(width, 3 * width)
        self.out_proj = nn.Linear(width, width)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        batch, length = x.shape[:2]
        qkv = self.in_proj(x).reshape([batch, length, self.heads, 3 * self.head_dim])
        q, k, v = (t.transpose([0, 2, 1, 3]) for t in paddle.split(qkv, 3, axis=-1))
        context = _scaled_dot_product(q, k, v).transpose([0, 2, 1, 3])
        # heads * head_dim, not the input width: a tensor-parallel rank holds some heads only.
        return self.out_proj(context.reshape([batch, length, self.heads * self.head_dim]))


class VisualMLP(nn.Layer):
    """The ViT feed-forward layer: ``c_fc`` -> exact GELU -> ``c_proj``."""

    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.c_fc = nn.Linear(width, hidden)
        self.gelu = nn.GELU()
        self.c_proj = nn.Linear(hidden, width)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        return self.c_proj(self.gelu(self.c_fc(x)))


class VisualBlock(nn.Layer):
    """Pre-LayerNorm transformer block of the vision tower."""

    def __init__(self, width: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.ln_1 = _layer_norm(width)
        self.attn = VisualAttention(width, heads)
        self.ln_2 = _layer_norm(width)
        self.mlp = VisualMLP(width, int(width * mlp_ratio))

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class VisualTransformer(nn.Layer):
    """The stack of vision blocks (named ``transformer.resblocks`` as in Hugging Face)."""

    def __init__(self, width: int, layers: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.resblocks = nn.LayerList([VisualBlock(width, heads, mlp_ratio) for _ in range(layers)])

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        for block in self.resblocks:
            x = block(x)
        return x


class ResamplerAttention(nn.Layer):
    """Cross-attention with the parameter layout of ``torch.nn.MultiheadAttention``.

    ``in_proj_weight`` is stored Paddle-style ``[embed, 3 * embed]`` (columns: all queries, all
    keys, all values), i.e. the transpose of PyTorch's tensor of the same name.
    """

    def __init__(self, embed_dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.embed_dim = embed_dim
        self.in_proj_weight = self.create_parameter(
            [embed_dim, 3 * embed_dim], default_initializer=nn.initializer.XavierUniform()
        )
        self.in_proj_bias = self.create_parameter(
            [3 * embed_dim], is_bias=True, default_initializer=nn.initializer.Constant(0.0)
        )
        self.out_proj = nn.Linear(embed_dim, embed_dim)

    def _heads(self, x: paddle.Tensor) -> paddle.Tensor:
        batch, length, _ = x.shape
        return x.reshape([batch, length, self.heads, -1]).transpose([0, 2, 1, 3])

    def forward(self, query: paddle.Tensor, key: paddle.Tensor, value: paddle.Tensor):
        w_q, w_k, w_v = paddle.split(self.in_proj_weight, 3, axis=1)
        b_q, b_k, b_v = paddle.split(self.in_proj_bias, 3, axis=0)
        q = self._heads(paddle.matmul(query, w_q) + b_q)
        k = self._heads(paddle.matmul(key, w_k) + b_k)
        v = self._heads(paddle.matmul(value, w_v) + b_v)
        context = _scaled_dot_product(q, k, v).transpose([0, 2, 1, 3])
        batch, length = context.shape[:2]
        return self.out_proj(context.reshape([batch, length, self.embed_dim]))


class Resampler(nn.Layer):
    """Compresses any number of patch features to ``n_queries`` tokens with one cross-attention.

    Learned queries (plus fixed 2-D sin-cos positions) attend over the projected patch features
    (plus the same positions resized to the patch grid), so every image costs the language model
    the same number of tokens whatever its resolution.
    """

    def __init__(self, n_queries: int, embed_dim: int, heads: int, kv_dim: int) -> None:
        super().__init__()
        grid = math.isqrt(n_queries)
        self.query = self.create_parameter(
            [n_queries, embed_dim], default_initializer=nn.initializer.TruncatedNormal(std=0.02)
        )
        # A fixed table, not a trainable weight; persistable so checkpoints carry it as
        # Hugging Face's do (there it is a parameter with requires_grad=False).
        self.register_buffer(
            "pos_embed", paddle.to_tensor(sincos_2d_positions(embed_dim, grid)), persistable=True
        )
        self.kv_proj = (
            nn.Linear(kv_dim, embed_dim, bias_attr=False) if kv_dim != embed_dim else nn.Identity()
        )
        self.attn = ResamplerAttention(embed_dim, heads)
        self.ln_q = _layer_norm(embed_dim)
        self.ln_kv = _layer_norm(embed_dim)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        key_positions = resize_positional_table(self.pos_embed, x.shape[1]).astype(x.dtype)
        x = self.ln_kv(self.kv_proj(x))
        queries = self.ln_q(self.query) + self.pos_embed.astype(x.dtype)
        queries = queries.unsqueeze(0).expand([x.shape[0], *queries.shape])
        return self.attn(queries, x + key_positions, x)


class QwenVisionTransformer(nn.Layer):
    """Qwen-VL's vision encoder: images ``[N, 3, H, W]`` -> features ``[N, n_queries, hidden]``."""

    def __init__(self, config: QwenVLConfig) -> None:
        super().__init__()
        v = config.visual
        width, patch, output_dim = int(v["width"]), int(v["patch_size"]), int(v["output_dim"])
        self.conv1 = nn.Conv2D(3, width, kernel_size=patch, stride=patch, bias_attr=False)
        self.positional_embedding = self.create_parameter(
            [POSITIONAL_TABLE_SIZE, width],
            default_initializer=nn.initializer.Normal(std=width**-0.5),
        )
        self.ln_pre = _layer_norm(width)
        self.transformer = VisualTransformer(
            width, int(v["layers"]), int(v["heads"]), float(v["mlp_ratio"])
        )
        self.attn_pool = Resampler(config.n_queries, output_dim, config.attn_pool_heads, width)
        self.ln_post = _layer_norm(output_dim)
        self.proj = self.create_parameter(
            [output_dim, output_dim],
            default_initializer=nn.initializer.Normal(std=output_dim**-0.5),
        )

    def forward(self, images: paddle.Tensor) -> paddle.Tensor:
        x = self.conv1(images.astype(self.conv1.weight.dtype))
        batch, width = x.shape[:2]
        x = x.reshape([batch, width, -1]).transpose([0, 2, 1])
        x = x + resize_positional_table(self.positional_embedding, x.shape[1])
        x = self.transformer(self.ln_pre(x))
        x = self.ln_post(self.attn_pool(x))
        return paddle.matmul(x, self.proj)


@contextmanager
def attending_per_segment(qwen: nn.Layer, layout: SegmentLayout) -> Iterator[None]:
    """Within the block, PaddleNLP's ``QWenModel`` ``qwen`` attends per segment of ``layout``.

    Each block's attention core (``QWenAttention._attn``, which gets the rotated queries and
    keys) becomes :func:`~mixcore.kit.nn.segment_attention.segment_attention`, and the model's
    mask builder (``get_masks``, which would expand any mask it is given to ``[batch, 1, len,
    len]`` and then to a float copy) returns a ``[batch, 1, 1, 1]`` placeholder the new core
    never reads. Only these instances change, only for the block.
    """

    def core(layer: nn.Layer):
        def attend(query, key, value, attention_mask=None):
            dropout = float(layer.config.attn_dropout_prob)
            out = segment_attention(
                query, key, value, layout, dropout=dropout, training=layer.training
            )
            return out, None

        return attend

    def no_mask(model: nn.Layer):
        def get_masks(batch_size, seq_length, past_length, padding_mask=None):
            return paddle.ones([batch_size, 1, 1, 1], dtype="bool")

        return get_masks

    with (
        replaced([block.attn for block in qwen.h], "_attn", core),
        replaced([qwen], "get_masks", no_mask),
    ):
        yield


class QwenVLPretrainedModel(PretrainedModel):
    """Base class tying Qwen-VL to its config for PaddleNLP (LoRA, Trainer, saving)."""

    config_class = QwenVLConfig
    base_model_prefix = "qwen_vl"

    def _init_weights(self, layer: nn.Layer) -> None:
        # QWenForCausalLM initialises itself before this runs, so only the vision tower's linear
        # layers reach here; they follow QWen's scheme (normal weights, zero bias).
        if isinstance(layer, nn.Linear):
            layer.weight.set_value(
                paddle.normal(0.0, self.config.initializer_range, layer.weight.shape).astype(
                    layer.weight.dtype
                )
            )
            if layer.bias is not None:
                layer.bias.set_value(paddle.zeros_like(layer.bias))


class QwenVLForConditionalGeneration(QwenVLPretrainedModel):
    """Qwen-VL: image features replace the ``<imgpad>`` tokens of the text, QWen does the rest.

    ``images`` holds every image of the batch in reading order (sample 0's images first); the
    i-th image fills the i-th run of ``n_queries`` pad tokens.
    """

    COMPONENTS: ClassVar[dict[str, tuple[str, ...]]] = COMPONENTS

    def __init__(self, config: QwenVLConfig) -> None:
        super().__init__(config)
        self.visual = QwenVisionTransformer(config)
        self.llm = QWenForCausalLM(config.lm_config())

    def get_input_embeddings(self) -> nn.Layer:
        return self.llm.qwen.wte

    def named_parameters_by_component(self) -> dict[str, list[tuple[str, paddle.Tensor]]]:
        """This model's parameters grouped by component (see :data:`COMPONENTS`)."""
        groups: dict[str, list[tuple[str, paddle.Tensor]]] = {name: [] for name in COMPONENTS}
        for name, param in self.named_parameters():
            component = component_of(name)
            if component is not None:
                groups[component].append((name, param))
        return groups

    def embed_inputs(
        self, input_ids: paddle.Tensor, images: paddle.Tensor | None = None
    ) -> paddle.Tensor:
        """Token embeddings with each image's features written over its pad tokens."""
        n_queries = self.config.n_queries
        return splice_image_features(
            self.get_input_embeddings()(input_ids),
            input_ids,
            images,
            self.visual,
            token_id=self.config.image_pad_id,
            tokens_per_image=n_queries,
            hint=f"each image needs one span of <img>, {n_queries} x <imgpad>, </img>. Check "
            "that no span was truncated and that every image passed has a span.",
        )

    def forward(
        self,
        input_ids: paddle.Tensor,
        images: paddle.Tensor | None = None,
        attention_mask: paddle.Tensor | None = None,
        position_ids: paddle.Tensor | None = None,
        labels: paddle.Tensor | None = None,
        past_key_values: Any = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        segment_ids: paddle.Tensor | None = None,
    ):
        """Run the language model on text and image embeddings.

        ``attention_mask`` may be 2-D padding (1 = real token) or a 4-D boolean
        ``[batch, 1, q_len, kv_len]`` "may attend" mask (PaddleNLP ANDs it with the causal mask;
        additive float masks are *not* understood). ``labels`` must already be shifted
        (PaddleNLP's QWen does not shift; -100 is ignored). Returns what ``QWenForCausalLM``
        returns: a ``CausalLMOutputWithPast`` when ``return_dict`` (default: the config's), else
        the tuple ``(loss?, logits, past_key_values?, ...)``.

        ``segment_ids`` ``[batch, len]`` (packed rows: 1, 2, ... per sample, 0 for padding, with
        per-sample ``position_ids``) makes each sample attend only to itself, computed per
        segment (:func:`attending_per_segment`) without any ``len x len`` mask;
        ``attention_mask`` is then not read.
        """
        inputs_embeds = self.embed_inputs(input_ids, images)

        def run(mask):
            return self.llm(
                inputs_embeds=inputs_embeds,
                attention_mask=mask,
                position_ids=position_ids,
                labels=labels,
                past_key_values=past_key_values,
                use_cache=use_cache,
                output_attentions=output_attentions,
                output_hidden_states=output_hidden_states,
                return_dict=self.config.use_return_dict if return_dict is None else return_dict,
            )

        if segment_ids is None:
            return run(attention_mask)
        if past_key_values is not None:
            raise ValueError("segment_ids (packed rows) cannot be combined with past_key_values")
        with attending_per_segment(self.llm.qwen, SegmentLayout.from_segment_ids(segment_ids)):
            return run(None)

    @paddle.no_grad()
    def generate_greedy(
        self,
        input_ids: paddle.Tensor,
        images: paddle.Tensor | None = None,
        max_new_tokens: int = 32,
        eos_token_id: int | None = None,
        attention_mask: paddle.Tensor | None = None,
        tokenizer_vocab_size: int | None = None,
    ) -> paddle.Tensor:
        """Greedy decoding with the key/value cache; returns the new tokens ``[batch, n]``.

        Prompts may be left-padded (pass their 2-D ``attention_mask``). Position ids are always
        passed explicitly because PaddleNLP's QWen otherwise rotates a cached step as if it were
        position 0. Once a sequence emits ``eos_token_id`` it keeps emitting it; decoding stops
        when all have. ``tokenizer_vocab_size`` keeps ids the tokenizer cannot decode (the
        embedding table is usually padded beyond the vocabulary) from being chosen.
        """
        was_training = self.training
        self.eval()
        try:
            if attention_mask is None:
                attention_mask = paddle.ones(input_ids.shape, dtype="int64")
            attention_mask = attention_mask.astype("int64")
            position_ids = paddle.clip(paddle.cumsum(attention_mask, axis=-1) - 1, min=0)
            out = self.llm(
                inputs_embeds=self.embed_inputs(input_ids, images),
                attention_mask=attention_mask,
                position_ids=position_ids,
                use_cache=True,
                return_dict=True,
            )
            next_position = position_ids[:, -1:] + 1
            finished = paddle.zeros([input_ids.shape[0]], dtype="bool")
            generated: list[paddle.Tensor] = []
            for step in range(max_new_tokens):
                logits = out.logits[:, -1, :]
                if tokenizer_vocab_size is not None:
                    logits = logits[:, :tokenizer_vocab_size]
                token = paddle.argmax(logits, axis=-1)
                if eos_token_id is not None:
                    token = paddle.where(finished, paddle.full_like(token, eos_token_id), token)
                    finished = paddle.logical_or(finished, token == eos_token_id)
                generated.append(token)
                if step + 1 == max_new_tokens or (eos_token_id is not None and finished.all()):
                    break
                attention_mask = paddle.concat(
                    [attention_mask, paddle.ones([input_ids.shape[0], 1], dtype="int64")], axis=-1
                )
                out = self.llm(
                    input_ids=token.unsqueeze(-1),
                    past_key_values=out.past_key_values,
                    attention_mask=attention_mask,
                    position_ids=next_position,
                    use_cache=True,
                    return_dict=True,
                )
                next_position = next_position + 1
        finally:
            self.train(was_training)
        if not generated:
            return paddle.zeros([input_ids.shape[0], 0], dtype="int64")
        return paddle.stack(generated, axis=1)
