"""A plugin package added with `pip install` alone is found, listed, validated and built.

The example plugin under examples/ and a deliberately broken package are installed for real with
pip into a folder put on PYTHONPATH, and the real `mixcore` command runs in a subprocess.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "mixcore-example-plugin"


def write_broken_package(folder: Path) -> Path:
    (folder / "mixcore_broken").mkdir(parents=True)
    (folder / "mixcore_broken" / "__init__.py").write_text("")
    (folder / "mixcore_broken" / "plugin.py").write_text("import libfoo_that_is_missing\n")
    (folder / "pyproject.toml").write_text(
        textwrap.dedent(
            """
            [build-system]
            requires = ["setuptools>=77"]
            build-backend = "setuptools.build_meta"

            [project]
            name = "mixcore-broken-plugin"
            version = "9.9.9"

            [project.entry-points."mixcore.plugins"]
            broken = "mixcore_broken.plugin"
            """
        )
    )
    return folder


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, pip_install) -> Path:
    target = tmp_path_factory.mktemp("site")
    pip_install(EXAMPLE, target)
    pip_install(write_broken_package(tmp_path_factory.mktemp("broken-src")), target)
    return target


def mixcore(
    site: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    environ = {**os.environ, "PYTHONPATH": str(site), **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "mixcore", *args], capture_output=True, text=True, env=environ
    )


def test_installed_example_is_listed_with_version_beside_builtins_and_broken_one(site):
    result = mixcore(site, "plugins", "list", "--json")
    assert result.returncode == 0, result.stderr
    plugins = {p["name"]: p for p in json.loads(result.stdout)["plugins"]}
    assert {"qwen_vl", "blip2", "visualglm", "datasets", "example", "broken"} <= set(plugins)
    example = plugins["example"]
    assert example["status"] == "ok"
    assert example["distribution"] == "mixcore-example-plugin" and example["version"] == "0.2.0"
    assert example["datasets"] == ["jsonl_messages"]
    assert example["hooks"] == ["build_dataset", "register_datasets"]
    broken = plugins["broken"]
    assert broken["status"] == "broken" and broken["version"] == "9.9.9"
    assert (
        "ModuleNotFoundError" in broken["reason"] and "libfoo_that_is_missing" in broken["reason"]
    )
    for name in ("qwen_vl", "blip2", "visualglm", "datasets"):
        assert plugins[name]["status"] == "ok"


def test_check_fails_because_of_the_broken_package_only(site):
    result = mixcore(site, "plugins", "check")
    assert result.returncode == 1
    assert result.stdout.strip().splitlines() == [
        next(line for line in result.stdout.splitlines() if line.startswith("BROKEN broken:"))
    ]
    healthy = mixcore(site, "plugins", "check", env={"MIXCORE_PLUGINS": "example,qwen_vl"})
    assert healthy.returncode == 0, healthy.stdout


def test_config_is_validated_against_the_example_plugins_option_schema(site, tmp_path):
    (tmp_path / "chat.jsonl").write_text(
        '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}\n'
    )
    config = {
        "model_name_or_path": "qwen_vl/tiny",
        "model_options": {"random_init": True},
        "do_train": False,
        "dataset": {"train": [{"name": "jsonl_messages", "data_files": "chat.jsonl"}]},
        "output_dir": "out",
    }
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    assert mixcore(site, "validate", "--config", str(path)).returncode == 0
    config["dataset"]["train"][0]["max_record"] = "5"
    path.write_text(json.dumps(config))
    bad = mixcore(site, "validate", "--config", str(path))
    assert bad.returncode == 2
    assert "$.dataset.train[0].max_record: unknown key" in bad.stdout
    assert "did you mean 'max_records'" in bad.stdout
    assert "Traceback" not in bad.stdout + bad.stderr


def test_example_dataset_builds_samples_through_the_hook(site, tmp_path):
    (tmp_path / "chat.jsonl").write_text(
        '{"messages": [{"role": "user", "content": "<image>what?"}, '
        '{"role": "assistant", "content": "a cat"}], "images": ["cat.png"]}\n'
    )
    code = textwrap.dedent(
        f"""
        from mixcore.registry import build_registry
        registry = build_registry()
        samples = registry.hook.build_dataset(
            dataset_name="jsonl_messages",
            options={{"data_files": "chat.jsonl", "system_prompt": "Be brief."}},
            base_dir={str(tmp_path)!r},
        )
        s = samples[0]
        print([m.role for m in s.messages], s.images[0].name, s.where())
        """
    )
    environ = {**os.environ, "PYTHONPATH": str(site)}
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=environ, check=True
    )
    assert "['system', 'user', 'assistant'] cat.png" in result.stdout
    assert "chat.jsonl record 0" in result.stdout
