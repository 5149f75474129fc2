"""Config defaults live in the schema and are filled in once; a run reads a prepared config."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from mixcore.api.errors import ConfigError
from mixcore.config import apply_defaults, load_run_config, prepare_config
from mixcore.config.schema import CORE_PROPERTIES
from mixcore.issues import validate
from mixcore.testing import make_registry, write_config

ROOT = Path(__file__).resolve().parents[2]
DEFAULTED = sorted(key for key, schema in CORE_PROPERTIES.items() if "default" in schema)


@pytest.fixture(scope="module")
def registry():
    return make_registry(entry_points=True)


def minimal() -> dict:
    return {
        "model_name_or_path": "qwen_vl/tiny",
        "model_options": {"random_init": True},
        "dataset": {
            "train": [
                {"name": "chatml_dataset", "data_files": "train.json"},
                {"name": "chatml_dataset", "data_files": "train.json", "label": "mine"},
            ],
            "eval": [
                {"name": "chatml_dataset", "data_files": "train.json", "on_bad_sample": "skip"}
            ],
        },
        "output_dir": "out",
        "on_bad_sample": "skip",
    }


@pytest.mark.parametrize("key", DEFAULTED)
def test_every_default_is_valid_for_its_field(key):
    assert validate(CORE_PROPERTIES[key]["default"], CORE_PROPERTIES[key]) == []


def test_apply_defaults_fills_what_is_left_out_and_keeps_what_is_given():
    config = minimal() | {"seed": 7, "lora": True}
    filled = apply_defaults(config)
    for key in DEFAULTED:
        expected = config[key] if key in config else CORE_PROPERTIES[key]["default"]
        assert filled[key] == expected, key
    assert filled["max_length"] == 2048 and filled["logging_steps"] == 10
    assert [(e["label"], e["on_bad_sample"]) for e in filled["dataset"]["train"]] == [
        ("chatml_dataset#0", "skip"),
        ("mine", "skip"),
    ]
    assert filled["dataset"]["eval"][0]["label"] == "chatml_dataset#0"
    assert "label" not in config["dataset"]["train"][0] and "max_length" not in config
    # Mutable defaults are copies: a run changing its list changes no other config's.
    filled["freeze_include"].append("*x*")
    assert apply_defaults(minimal())["freeze_include"] == []


def test_readers_take_no_default_of_their_own():
    """A default written at a reader (`config.get("seed", 42)`) is a second source of truth."""
    pattern = re.compile(r"""config\.get\(\s*["'](\w+)["']\s*,""")
    found = [
        f"{path.relative_to(ROOT)}: config.get({key!r}, ...)"
        for path in sorted((ROOT / "mixcore").rglob("*.py"))
        for key in pattern.findall(path.read_text())
        if key in DEFAULTED
    ]
    assert found == []


def test_prepare_config_checks_fills_in_and_makes_paths_absolute(registry, tmp_path):
    (tmp_path / "train.json").write_text("[]")
    (tmp_path / "base").mkdir()
    (tmp_path / "base" / "config.json").write_text('{"model_type": "qwen_vl"}')
    config = minimal() | {"model_name_or_path": "base", "model_options": {}}
    prepared = prepare_config(config, registry, base_dir=tmp_path)
    assert prepared["model_name_or_path"] == str(tmp_path / "base")
    assert prepared["output_dir"] == str(tmp_path / "out")
    assert prepared["seed"] == 42 and prepared["dataset"]["train"][1]["label"] == "mine"
    with pytest.raises(ConfigError) as caught:
        prepare_config(config | {"seed": -1}, registry, base_dir=tmp_path, source="c.json")
    assert [str(i) for i in caught.value.issues] == ["$.seed: must be >= 0, got -1"]


def test_command_line_overrides_are_relative_to_where_the_command_runs(
    registry, tmp_path, monkeypatch
):
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "train.json").write_text("[]")
    path = write_config(tmp_path / "cfg", minimal())
    monkeypatch.chdir(tmp_path)
    config, base_dir = load_run_config(path, registry, output_dir="elsewhere", max_steps=3)
    assert base_dir == tmp_path / "cfg"
    assert config["output_dir"] == str(tmp_path / "elsewhere") and config["max_steps"] == 3
    unchanged, _ = load_run_config(path, registry)
    assert unchanged["output_dir"] == str(tmp_path / "cfg" / "out")
