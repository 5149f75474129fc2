"""The training stack imports in the tested environment, and a broken one gets one clear message."""

from __future__ import annotations

import json
from pathlib import Path

from mixcore.environment import TRAINING_STACK, check_training_stack


def test_training_stack_imports_in_this_environment():
    # A broken install must fail the suite, never skip the model tests.
    failed = [f"{c.module}: {c.error}" for c in check_training_stack() if not c.ok]
    assert not failed, failed


def test_doctor_reports_every_module_and_plugin(run_mixcore):
    result = run_mixcore("doctor", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["ok"] is True
    assert [m["module"] for m in report["modules"]] == [m for m, _ in TRAINING_STACK]
    assert all(m["ok"] and m["error"] is None for m in report["modules"])
    assert report["broken_plugins"] == []


def _shadow_broken_module(folder: Path, name: str) -> dict[str, str]:
    """A package earlier on sys.path whose import fails as a missing module would."""
    package = folder / name
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(
        f"raise ModuleNotFoundError(\"No module named '{name}'\", name={name!r})\n"
    )
    return {"PYTHONPATH": str(folder)}


def test_doctor_names_the_missing_module_and_the_fix(run_mixcore, tmp_path):
    env = _shadow_broken_module(tmp_path / "shadow", "scipy")
    result = run_mixcore("doctor", env=env)
    assert result.returncode == 1
    assert "scipy" in result.stdout and "FAILED" in result.stdout
    assert "make install" in result.stdout
    assert "Traceback" not in result.stdout + result.stderr


def test_train_without_the_stack_exits_1_naming_the_module(run_mixcore, tmp_path, write_json):
    env = _shadow_broken_module(tmp_path / "shadow", "sklearn")
    config = write_json(
        tmp_path / "config.json",
        {
            "model_name_or_path": "qwen_vl/tiny",
            "model_options": {"random_init": True},
            "dataset": {"train": [{"name": "synthetic_shapes", "train_records": 8}]},
            "output_dir": str(tmp_path / "out"),
            "max_steps": 1,
        },
    )
    result = run_mixcore("train", "--config", str(config), env=env)
    assert result.returncode == 1, result.stderr
    assert "'sklearn'" in result.stderr and "make install" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()
