"""BLIP-2 presets: the published sizes, PaddleMIX's names for them, and the tiny ones."""

from __future__ import annotations

import pytest
from mixcore_blip2 import plugin
from mixcore_blip2.configuration import (
    PRESET_ALIASES,
    TINY_PRESETS,
    Blip2Config,
    apply_overrides,
    preset_fields,
)

from mixcore.api.errors import UnknownNameError


def test_the_entry_module_names_every_preset():
    # The entry module lists them without importing PaddleNLP; the two lists must agree.
    assert set(plugin.PRESET_NAMES) == set(PRESET_ALIASES)
    assert set(plugin.TINY_PRESETS) == set(TINY_PRESETS)


@pytest.mark.parametrize(
    ("name", "family", "text_width", "text_layers"),
    [
        ("Salesforce/blip2-opt-2.7b", "opt", 2560, 32),
        ("paddlemix/blip2-caption-opt2.7b", "opt", 2560, 32),
        ("paddlemix/blip2-pretrained-opt2.7b", "opt", 2560, 32),
        ("blip2-opt-6.7b", "opt", 4096, 32),
        ("blip2-flan-t5-xl", "t5", 2048, 24),
    ],
)
def test_published_presets_have_the_published_sizes(name, family, text_width, text_layers):
    config = Blip2Config(**preset_fields(name))
    assert config.family == family
    assert config.vision_config["hidden_size"] == 1408
    assert config.vision_config["num_hidden_layers"] == 39
    assert config.vision_config["image_size"] == 224
    assert config.qformer_config["hidden_size"] == 768
    assert config.qformer_config["num_hidden_layers"] == 12
    assert config.num_query_tokens == 32
    text = config.text_config
    assert text.get("hidden_size", text.get("d_model")) == text_width
    assert text["num_hidden_layers" if family == "opt" else "num_layers"] == text_layers


def test_tiny_takes_either_language_model_and_overrides_merge_key_by_key():
    assert Blip2Config(**preset_fields("blip2/tiny")).family == "opt"
    assert Blip2Config(**preset_fields("blip2/tiny", "t5")).family == "t5"
    with pytest.raises(ValueError, match="not opt"):
        preset_fields("blip2/tiny-t5", "opt")
    fields = apply_overrides(preset_fields("blip2/tiny"), {"text_config": {"num_hidden_layers": 3}})
    assert fields["text_config"]["num_hidden_layers"] == 3
    assert (
        fields["text_config"]["hidden_size"]
        == preset_fields("blip2/tiny")["text_config"]["hidden_size"]
    )


def test_an_unknown_preset_suggests_the_nearest():
    with pytest.raises(UnknownNameError, match=r"blip2-opt-2\.7b"):
        preset_fields("blip2-opt-2.7")
