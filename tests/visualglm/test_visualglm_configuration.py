"""VisualGLM's config in THUDM's layout, translated into the toolkit's vision and Q-Former sizes
and PaddleNLP's ChatGLM; the presets the entry module names."""

from __future__ import annotations

import pytest
from mixcore_visualglm import plugin as entry
from mixcore_visualglm.configuration import (
    PRESETS,
    VisualGLMConfig,
    apply_overrides,
    cross_attention_frequency,
    preset_fields,
)

from mixcore.api.errors import UnknownNameError


def test_the_entry_module_names_every_preset():
    assert set(entry.PRESET_NAMES) == set(PRESETS)


def test_the_published_preset_has_visualglm_6bs_sizes():
    config = VisualGLMConfig(**preset_fields("THUDM/visualglm-6b"))
    vision, qformer, chatglm = config.vision(), config.qformer(), config.chatglm()
    assert (vision["hidden_size"], vision["num_hidden_layers"], vision["num_attention_heads"]) == (
        1408,
        39,
        16,
    )
    assert (vision["intermediate_size"], vision["image_size"], vision["patch_size"]) == (
        6144,
        224,
        14,
    )
    assert (vision["layer_norm_eps"], vision["post_layer_norm_eps"]) == (1e-6, 1e-5)
    assert qformer["hidden_size"] == 768 and qformer["num_hidden_layers"] == 12
    assert qformer["intermediate_size"] == 3072 and qformer["cross_attention_frequency"] == 2
    assert qformer["encoder_hidden_size"] == 1408 and qformer["norm_layout"] == "sat"
    assert config.image_length == 32
    assert (chatglm["hidden_size"], chatglm["num_layers"], chatglm["vocab_size"]) == (
        4096,
        28,
        130528,
    )
    assert (chatglm["gmask_token_id"], chatglm["bos_token_id"], chatglm["eos_token_id"]) == (
        130001,
        130004,
        130005,
    )


def test_overrides_merge_the_image_side_key_by_key():
    fields = apply_overrides(
        preset_fields("visualglm/tiny"), {"eva_config": {"num_layers": 1}, "num_layers": 1}
    )
    config = VisualGLMConfig(**fields)
    assert config.vision()["num_hidden_layers"] == 1
    assert config.vision()["hidden_size"] == 48  # kept
    assert config.chatglm()["num_layers"] == 1


@pytest.mark.parametrize(
    ("flags", "layers", "expected"),
    [([True, False] * 6, 12, 2), ([True, True], 2, 1), (True, 3, 1), ([True, False, False], 3, 3)],
)
def test_cross_attention_frequency_from_sats_is_decoder(flags, layers, expected):
    assert cross_attention_frequency(flags, layers) == expected


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ([False, True], "every k-th"),
        ([True, True, False, True], "every k-th"),
        ([False, False], "no cross-attention"),
        ([True], "1 flags for 2 layers"),
    ],
)
def test_irregular_cross_attention_is_refused(flags, message):
    with pytest.raises(ValueError, match=message):
        cross_attention_frequency(flags, 4 if len(flags) == 4 else 2)


def test_an_unsupported_vit_is_refused_with_the_reason():
    fields = apply_overrides(
        preset_fields("visualglm/tiny"), {"eva_config": {"use_final_layernorm": True}}
    )
    with pytest.raises(ValueError, match="without a final LayerNorm"):
        VisualGLMConfig(**fields).vision()


def test_an_unknown_preset_suggests_the_nearest():
    with pytest.raises(UnknownNameError, match="visualglm/tiny"):
        preset_fields("visualglm/tiy")
