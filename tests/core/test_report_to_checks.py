"""`report_to` is checked before anything heavy: each logger's package must be installed."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest

from mixcore.config import validate_config
from mixcore.testing import make_registry


@pytest.fixture(scope="module")
def registry():
    return make_registry(entry_points=True)


def _config(report_to):
    return {
        "model_name_or_path": "qwen_vl/tiny",
        "model_options": {"random_init": True},
        "dataset": {"train": [{"name": "synthetic_shapes"}]},
        "output_dir": "out",
        "report_to": report_to,
    }


@pytest.fixture
def without(monkeypatch):
    """``without("wandb", ...)``: those top-level modules look uninstalled to find_spec."""

    def hide(*names: str) -> None:
        real = importlib.util.find_spec

        def find_spec(name, package=None):
            return None if name.split(".")[0] in names else real(name, package)

        monkeypatch.setattr(importlib.util, "find_spec", find_spec)

    return hide


def _issues(registry, report_to):
    return [str(i) for i in validate_config(_config(report_to), registry)]


@pytest.mark.parametrize(
    ("report_to", "hidden", "path", "hint"),
    [
        ("wandb", ("wandb",), "$.report_to", "`pip install wandb`"),
        ("visualdl", ("visualdl",), "$.report_to", "`pip install visualdl`"),
        ("tensorboard", ("tensorboardX", "torch"), "$.report_to", "`pip install tensorboardX`"),
        (["visualdl", "wandb"], ("wandb",), "$.report_to[1]", "`pip install wandb`"),
    ],
)
def test_a_logger_without_its_package_is_refused_with_the_install_hint(
    registry, without, report_to, hidden, path, hint
):
    without(*hidden)
    issues = _issues(registry, report_to)
    assert len(issues) == 1, issues
    assert issues[0].startswith(f"{path}: ") and hint in issues[0]


def test_tensorboard_is_accepted_with_tensorboardx_or_with_torch_and_tensorboard(
    registry, without, monkeypatch
):
    without("torch")  # tensorboardX alone (this environment's lock)
    assert importlib.util.find_spec("tensorboardX") is not None
    assert _issues(registry, "tensorboard") == []
    # tensorboard without torch: PaddleNLP's callback would find no writer and log nothing.
    without("tensorboardX", "torch")
    assert "pip install tensorboardX" in _issues(registry, "tensorboard")[0]


def test_installed_loggers_and_none_are_accepted(registry):
    assert _issues(registry, "none") == []
    assert _issues(registry, ["visualdl", "tensorboard"]) == []


def test_none_beside_a_logger_is_refused(registry):
    # PaddleNLP turns ["none"] into no logger, but stops at ["none", "visualdl"] ("none is
    # not supported") once the model is loaded.
    (issue,) = _issues(registry, ["none", "visualdl"])
    assert issue.startswith("$.report_to: ") and "'none'" in issue


def test_wandb_disabled_by_its_variable_is_named(registry, monkeypatch):
    monkeypatch.setenv("WANDB_DISABLED", "true")
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, package=None: object() if name == "wandb" else real(name, package),
    )
    (issue,) = _issues(registry, "wandb")
    assert "WANDB_DISABLED" in issue


def test_checking_loggers_imports_none_of_them():
    code = (
        "import sys\n"
        "from mixcore.config import validate_config\n"
        "from mixcore.testing import make_registry\n"
        "config = {'model_name_or_path': 'qwen_vl/tiny', 'output_dir': 'out',\n"
        "          'model_options': {'random_init': True},\n"
        "          'dataset': {'train': [{'name': 'synthetic_shapes'}]},\n"
        "          'report_to': ['visualdl', 'tensorboard']}\n"
        "issues = validate_config(config, make_registry(entry_points=True))\n"
        "assert issues == [], issues\n"
        "heavy = {'visualdl', 'tensorboardX', 'paddle', 'paddlenlp', 'google.protobuf'}\n"
        "print(sorted(heavy & set(sys.modules)))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
