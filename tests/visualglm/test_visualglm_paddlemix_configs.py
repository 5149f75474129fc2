"""PaddleMIX's published VisualGLM configs against the real visualglm plugin: with their data
files local and a VisualGLM folder on disk they validate with no problem at all; and their
LoRA pattern reaches into the Q-Former, which mixcore's default targets do not."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest
from mixcore_visualglm.plugin import plugin

from mixcore.config import validate_config
from mixcore.registry import build_registry

_PUBLISHED_TESTS = (
    Path(__file__).resolve().parents[1] / "core" / "test_paddlemix_visualglm_configs.py"
)


def _published_module():
    spec = importlib.util.spec_from_file_location("paddlemix_visualglm_published", _PUBLISHED_TESTS)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


PUBLISHED = _published_module()


@pytest.fixture(scope="module")
def downloaded_folder(tiny_bundle, tmp_path_factory):
    folder = tmp_path_factory.mktemp("visualglm-6b")
    plugin.save(tiny_bundle, str(folder))
    return folder


@pytest.mark.parametrize(
    "published", [PUBLISHED.VISUALGLM_SFT, PUBLISHED.VISUALGLM_LORA], ids=["sft", "lora"]
)
def test_published_config_validates_with_local_data_and_model(
    downloaded_folder, tmp_path, published
):
    config = PUBLISHED.local(published, tmp_path) | {"model_name_or_path": str(downloaded_folder)}
    assert validate_config(config, build_registry(), base_dir=tmp_path, world_size=1) == []


def test_published_lora_pattern_reaches_the_qformer_and_the_default_does_not(tiny_bundle):
    names = [n for n, _ in tiny_bundle.model.named_sublayers()]
    published = PUBLISHED.VISUALGLM_LORA["lora_target_modules"]
    hit = {n for n in names if any(re.fullmatch(p, n) for p in published)}
    assert any(n.startswith("qformer.") for n in hit)
    default = {
        n for n in names if any(re.fullmatch(p, n) for p in plugin.lora_targets(tiny_bundle))
    }
    assert default and not any(n.startswith("qformer.") for n in default)
    assert default <= hit  # the published pattern covers ChatGLM's projections too
