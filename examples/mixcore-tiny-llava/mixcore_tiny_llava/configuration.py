"""Sizes of a tiny LLaVA: vision encoder, projector, and the LLaMA language model's own config.

The language model's fields are kept as a nested ``text_config`` dict of PaddleNLP
``LlamaConfig`` keys (as Hugging Face's LLaVA keeps them), so any LLaMA size is one dict away.
"""

from __future__ import annotations

from typing import Any

from paddlenlp.transformers import LlamaConfig, PretrainedConfig

#: The ``tiny_llava/tiny`` preset: about 200 thousand parameters, a 32x32 image is 16 tokens.
TINY_TEXT_CONFIG: dict[str, Any] = {
    "vocab_size": 528,  # the generated tokenizer's 513 ids, padded to a multiple of 16
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 512,
    "rms_norm_eps": 1e-6,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "pad_token_id": 3,
    "tie_word_embeddings": False,
    "use_flash_attention": False,
}


class TinyLlavaConfig(PretrainedConfig):
    """``image_size`` / ``patch_size``: the encoder sees ``(image_size // patch_size) ** 2``
    patches, and each becomes one image token; ``vision_*``: the encoder's transformer;
    ``projector_hidden_size``: the hidden width of the 2-layer MLP from the encoder's width to
    the language model's; ``image_token_id``: the token whose run of embeddings the image
    features replace; ``text_config``: PaddleNLP ``LlamaConfig`` fields."""

    model_type = "tiny_llava"

    def __init__(
        self,
        image_size: int = 32,
        patch_size: int = 8,
        vision_hidden_size: int = 32,
        vision_num_layers: int = 1,
        vision_num_heads: int = 2,
        vision_intermediate_size: int = 64,
        projector_hidden_size: int = 64,
        image_token_id: int = 512,
        text_config: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        self.image_size = image_size
        self.patch_size = patch_size
        self.vision_hidden_size = vision_hidden_size
        self.vision_num_layers = vision_num_layers
        self.vision_num_heads = vision_num_heads
        self.vision_intermediate_size = vision_intermediate_size
        self.projector_hidden_size = projector_hidden_size
        self.image_token_id = image_token_id
        self.text_config = {**TINY_TEXT_CONFIG, **(text_config or {})}
        super().__init__(**kwargs)

    @property
    def image_tokens(self) -> int:
        """Tokens (and encoder patches) per image."""
        return (self.image_size // self.patch_size) ** 2

    def llama_config(self) -> LlamaConfig:
        return LlamaConfig(**self.text_config)
