"""Every shipped example config validates against the installed plugins.

Some examples start from files an earlier step makes (the SFT example's output folder, the
user's own data and Qwen-VL-Chat folder for the PaddleMIX example); those are checked for
everything but that.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from mixcore.config import load_config, validate_config
from mixcore.registry import build_registry

FOLDER = Path(__file__).parents[2] / "examples" / "configs"
EXAMPLES = sorted(FOLDER.glob("*.json"))
#: Examples whose inputs come from an earlier step, and the issues that leaves open.
NEEDS_EARLIER_STEP = {
    "qwen_vl_shapes_lora.json": {"$.model_name_or_path"},
    "visualglm_shapes_lora.json": {"$.model_name_or_path"},
    "paddlemix_qwen_vl_lora.json": {
        "$.model_options",  # the published weights are the user's to put on disk
        "$.dataset.train[0].data_files",
        "$.dataset.train[0].chat_template",
        "$.dataset.eval[0].data_files",
        "$.dataset.eval[0].chat_template",
    },
}


@pytest.fixture(scope="module")
def registry():
    return build_registry()


def test_examples_exist():
    assert {p.name for p in EXAMPLES} >= {"qwen_vl_shapes_sft.json", *NEEDS_EARLIER_STEP}


@pytest.mark.parametrize("config", EXAMPLES, ids=lambda p: p.name)
def test_example_config_is_valid(registry, config):
    issues = validate_config(load_config(config), registry, base_dir=FOLDER)
    open_paths = NEEDS_EARLIER_STEP.get(config.name, set())
    assert {issue.path for issue in issues} <= open_paths, issues
