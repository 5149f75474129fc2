"""The Qwen-VL config: presets, validation, and the language-model config handed to PaddleNLP."""

from __future__ import annotations

import pytest
from mixcore_qwen_vl.configuration import PRESETS, QwenVLConfig, config_from_preset
from mixcore_qwen_vl.errors import QwenVLConfigError
from mixcore_qwen_vl.special_tokens import (
    IMG_START,
    QWEN_NUM_MERGEABLE_RANKS,
    TINY_NUM_MERGEABLE_RANKS,
    special_token_ids,
    tokenizer_vocab_size,
)

from mixcore.api.errors import UnknownNameError


def test_chat_7b_preset_has_the_published_sizes() -> None:
    config = config_from_preset("qwen-vl/qwen-vl-chat-7b")
    assert config.visual == {
        "heads": 16,
        "image_size": 448,
        "layers": 48,
        "mlp_ratio": 4.9231,
        "output_dim": 4096,
        "patch_size": 14,
        "width": 1664,
        "n_queries": 256,
        "image_start_id": 151857,
    }
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads) == (
        4096,
        32,
        32,
    )
    assert (config.vocab_size, config.seq_length, config.kv_channels) == (151936, 2048, 128)
    # QWen's intermediate_size counts both MLP branches: each is 11008 wide.
    assert config.intermediate_size == 22016
    assert config.lm_config().intermediate_size // 2 == 11008
    assert (config.image_start_id, config.image_end_id, config.image_pad_id) == (
        151857,
        151858,
        151859,
    )
    assert config.eos_token_id == config.pad_token_id == 151643
    assert config.attn_pool_heads == 32  # Hugging Face: output_dim // 128


def test_published_special_ids_follow_from_the_vocabulary_size() -> None:
    ids = special_token_ids(QWEN_NUM_MERGEABLE_RANKS)
    assert ids["<|endoftext|>"] == 151643
    assert (ids["<img>"], ids["</img>"], ids["<imgpad>"]) == (151857, 151858, 151859)
    assert (ids["<ref>"], ids["</quad>"]) == (151851, 151856)
    assert tokenizer_vocab_size(QWEN_NUM_MERGEABLE_RANKS) == 151860


def test_tiny_preset_uses_the_tiny_vocabulary_ids() -> None:
    config = config_from_preset("qwen_vl/tiny")
    ids = special_token_ids(TINY_NUM_MERGEABLE_RANKS)
    assert config.image_start_id == ids[IMG_START] == 726
    assert (config.image_end_id, config.image_pad_id, config.eos_token_id) == (727, 728, 512)
    assert config.vocab_size >= tokenizer_vocab_size(TINY_NUM_MERGEABLE_RANKS)
    assert config.visual["output_dim"] == config.hidden_size


def test_invalid_sizes_are_all_reported_at_once() -> None:
    with pytest.raises(QwenVLConfigError) as info:
        QwenVLConfig(
            hidden_size=64,
            num_attention_heads=4,
            kv_channels=8,
            vocab_size=100,
            visual={"output_dim": 48, "width": 30, "heads": 4, "n_queries": 10},
        )
    message = str(info.value)
    for fragment in ("kv_channels", "output_dim must equal hidden_size", "width", "n_queries"):
        assert fragment in message
    assert "image_start_id must be a valid id" in message


def test_unknown_preset_names_the_valid_ones() -> None:
    with pytest.raises(UnknownNameError) as info:
        config_from_preset("qwen_vl/tiyn")
    assert "qwen_vl/tiny" in str(info.value)
    assert set(info.value.valid) == set(PRESETS)


def test_overrides_replace_preset_fields() -> None:
    config = config_from_preset("qwen_vl/tiny", num_hidden_layers=1)
    assert config.num_hidden_layers == 1
    assert config_from_preset("qwen_vl/tiny").num_hidden_layers == 2


def test_lm_config_carries_paddlenlp_settings() -> None:
    config = config_from_preset("qwen_vl/tiny", tensor_parallel_degree=1)
    lm = config.lm_config()
    assert type(lm).__name__ == "QWenConfig"
    assert lm.tensor_parallel_degree == 1
    assert (lm.hidden_size, lm.seq_length, lm.vocab_size) == (64, 1024, 768)
    assert not hasattr(lm, "visual")
