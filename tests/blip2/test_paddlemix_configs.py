"""PaddleMIX's published BLIP-2 configs against the real blip2 plugin: with their data paths
local and a BLIP-2 folder on disk they validate with no problem at all, and the published LoRA
targets land on this model's layers."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from mixcore.config import validate_config
from mixcore.registry import build_registry

_PUBLISHED_TESTS = Path(__file__).resolve().parents[1] / "core" / "test_paddlemix_blip2_configs.py"


def _published_module():
    spec = importlib.util.spec_from_file_location("paddlemix_blip2_published", _PUBLISHED_TESTS)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


PUBLISHED = _published_module()


@pytest.fixture(scope="module")
def registry():
    return build_registry()


@pytest.fixture(scope="module")
def downloaded_folder(registry, tmp_path_factory):
    """A BLIP-2 folder as a download has it: the config names the OPT it was built on."""
    bundle = registry.hook.load_model(
        model_name="blip2", source="blip2/tiny", options={"random_init": True}
    )
    folder = tmp_path_factory.mktemp("blip2-opt")
    registry.hook.save_model(model_name="blip2", bundle=bundle, folder=str(folder))
    config = json.loads((folder / "config.json").read_text())
    config["text_config"]["_name_or_path"] = "facebook/opt-2.7b"
    (folder / "config.json").write_text(json.dumps(config))
    return folder, bundle


@pytest.mark.parametrize(
    "published", [PUBLISHED.BLIP2_SFT, PUBLISHED.BLIP2_LORA], ids=["sft", "lora"]
)
def test_published_config_validates_with_local_data_and_model(
    registry, downloaded_folder, tmp_path, published
):
    folder, _ = downloaded_folder
    config = PUBLISHED.local(published, tmp_path) | {"model_name_or_path": str(folder)}
    assert validate_config(config, registry, base_dir=tmp_path, world_size=1) == []


def test_published_lora_targets_match_the_language_models_attention(downloaded_folder):
    import re

    _, bundle = downloaded_folder
    names = [name for name, _ in bundle.model.named_sublayers()]
    for pattern in PUBLISHED.BLIP2_LORA["lora_target_modules"]:
        hits = [n for n in names if re.fullmatch(pattern, n)]
        assert hits and all(".self_attn." in n for n in hits), pattern
