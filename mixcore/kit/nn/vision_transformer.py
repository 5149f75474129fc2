"""The vision transformer of BLIP-2 (EVA-CLIP ViT-g in the published models), in Paddle.

A pre-norm ViT: a strided convolution cuts the image into patches, a learned class token and
learned absolute positions are added, each block is ``x + attn(ln1(x))`` then
``x + mlp(ln2(x))``, and a final LayerNorm closes it. The attention projects q, k and v with
one fused weight; its bias exists for q and v only (the key has none), so the two biases are
separate parameters and the fused bias is assembled in ``forward``: a key bias can never be
trained away from zero.

Parameter names follow the Hugging Face ``Blip2VisionModel`` (``embeddings.class_embedding``,
``encoder.layers.N.self_attn.qkv.weight``, ``...self_attn.q_bias``, ``post_layernorm``...), so
a checkpoint maps onto it by transposing the Linear weights alone.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

import paddle
import paddle.nn.functional as F
from paddle import nn

__all__ = ["VisionConfig", "VisionTransformer", "activation"]


def activation(name: str) -> Any:
    """The activation a Hugging Face config names: ``gelu`` is exact (erf), ``gelu_new`` /
    ``gelu_pytorch_tanh`` the tanh approximation, ``quick_gelu`` ``x * sigmoid(1.702 x)``."""
    if name == "gelu":
        return lambda x: F.gelu(x, approximate=False)
    if name in ("gelu_new", "gelu_pytorch_tanh", "gelu_fast"):
        return lambda x: F.gelu(x, approximate=True)
    if name == "quick_gelu":
        return lambda x: x * F.sigmoid(1.702 * x)
    if name in ("relu", "silu", "tanh"):
        return getattr(F, name)
    raise ValueError(f"unknown activation {name!r}")


@dataclass(frozen=True)
class VisionConfig:
    """Sizes of the vision transformer (the fields of a Hugging Face ``vision_config``)."""

    hidden_size: int = 1408
    intermediate_size: int = 6144
    num_hidden_layers: int = 39
    num_attention_heads: int = 16
    image_size: int = 224
    patch_size: int = 14
    num_channels: int = 3
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-6
    attention_dropout: float = 0.0
    qkv_bias: bool = True
    #: The closing LayerNorm's epsilon where it differs from the blocks' (VisualGLM's EVA ViT
    #: closes with a PyTorch-default LayerNorm, 1e-5, after 1e-6 blocks); None: the same.
    post_layer_norm_eps: float | None = None

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> VisionConfig:
        """The config from a dict, keys this class does not know left out."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})

    @property
    def num_positions(self) -> int:
        return (self.image_size // self.patch_size) ** 2 + 1


class VisionEmbeddings(nn.Layer):
    def __init__(self, config: VisionConfig) -> None:
        super().__init__()
        dim = config.hidden_size
        normal = nn.initializer.TruncatedNormal(std=0.02)
        self.class_embedding = self.create_parameter([1, 1, dim], default_initializer=normal)
        self.patch_embedding = nn.Conv2D(
            config.num_channels, dim, kernel_size=config.patch_size, stride=config.patch_size
        )
        self.position_embedding = self.create_parameter(
            [1, config.num_positions, dim], default_initializer=normal
        )

    def forward(self, pixel_values: paddle.Tensor) -> paddle.Tensor:
        dtype = self.patch_embedding.weight.dtype
        patches = self.patch_embedding(pixel_values.astype(dtype))  # [b, dim, gh, gw]
        patches = patches.flatten(2).transpose([0, 2, 1])
        cls = self.class_embedding.expand([patches.shape[0], 1, -1]).astype(dtype)
        embeddings = paddle.concat([cls, patches], axis=1)
        return embeddings + self.position_embedding[:, : embeddings.shape[1]].astype(dtype)


class VisionAttention(nn.Layer):
    def __init__(self, config: VisionConfig) -> None:
        super().__init__()
        dim = config.hidden_size
        if dim % config.num_attention_heads:
            raise ValueError(
                f"hidden_size {dim} is not a multiple of num_attention_heads "
                f"{config.num_attention_heads}"
            )
        self.num_heads = config.num_attention_heads
        self.head_dim = dim // self.num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias_attr=False)
        if config.qkv_bias:
            zeros = nn.initializer.Constant(0.0)
            self.q_bias = self.create_parameter([dim], is_bias=True, default_initializer=zeros)
            self.v_bias = self.create_parameter([dim], is_bias=True, default_initializer=zeros)
        else:
            self.q_bias = self.v_bias = None
        self.projection = nn.Linear(dim, dim)
        self.dropout = nn.Dropout(config.attention_dropout)

    def forward(self, hidden_states: paddle.Tensor) -> paddle.Tensor:
        batch, length = hidden_states.shape[:2]
        # The layer itself (bias-free), not its weight: a tensor-parallel rank wraps the call.
        qkv = self.qkv(hidden_states)
        if self.q_bias is not None:
            bias = paddle.concat([self.q_bias, paddle.zeros_like(self.v_bias), self.v_bias])
            qkv = qkv + bias
        qkv = qkv.reshape([batch, length, 3, self.num_heads, self.head_dim])
        q, k, v = qkv.transpose([2, 0, 3, 1, 4]).unbind(0)
        scores = paddle.matmul(q, k, transpose_y=True) * self.head_dim**-0.5
        probs = self.dropout(F.softmax(scores, axis=-1))
        # num_heads * head_dim, not dim: a tensor-parallel rank holds some of the heads only.
        width = self.num_heads * self.head_dim
        context = paddle.matmul(probs, v).transpose([0, 2, 1, 3]).reshape([batch, length, width])
        return self.projection(context)


class VisionMLP(nn.Layer):
    def __init__(self, config: VisionConfig) -> None:
        super().__init__()
        self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size)
        self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size)
        self.act = activation(config.hidden_act)

    def forward(self, hidden_states: paddle.Tensor) -> paddle.Tensor:
        return self.fc2(self.act(self.fc1(hidden_states)))


class VisionBlock(nn.Layer):
    def __init__(self, config: VisionConfig) -> None:
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(config.hidden_size, epsilon=config.layer_norm_eps)
        self.self_attn = VisionAttention(config)
        self.layer_norm2 = nn.LayerNorm(config.hidden_size, epsilon=config.layer_norm_eps)
        self.mlp = VisionMLP(config)

    def forward(self, hidden_states: paddle.Tensor) -> paddle.Tensor:
        hidden_states = hidden_states + self.self_attn(self.layer_norm1(hidden_states))
        return hidden_states + self.mlp(self.layer_norm2(hidden_states))


class VisionEncoder(nn.Layer):
    def __init__(self, config: VisionConfig) -> None:
        super().__init__()
        self.layers = nn.LayerList([VisionBlock(config) for _ in range(config.num_hidden_layers)])

    def forward(self, hidden_states: paddle.Tensor) -> paddle.Tensor:
        for layer in self.layers:
            hidden_states = layer(hidden_states)
        return hidden_states


class VisionTransformer(nn.Layer):
    """``forward(pixel_values [b, 3, H, W])`` -> the normalised hidden states of the class
    token and every patch, ``[b, 1 + patches, hidden_size]``."""

    def __init__(self, config: VisionConfig) -> None:
        super().__init__()
        self.config = config
        self.embeddings = VisionEmbeddings(config)
        self.encoder = VisionEncoder(config)
        post_eps = config.post_layer_norm_eps
        self.post_layernorm = nn.LayerNorm(
            config.hidden_size, epsilon=config.layer_norm_eps if post_eps is None else post_eps
        )

    def forward(self, pixel_values: paddle.Tensor) -> paddle.Tensor:
        return self.post_layernorm(self.encoder(self.embeddings(pixel_values)))
