"""`mixcore validate` refuses best-model settings PaddleNLP would reject after an epoch."""

from __future__ import annotations

import pytest

from mixcore.config import validate_config
from mixcore.testing import make_registry


@pytest.fixture(scope="module")
def registry():
    return make_registry(entry_points=True)


def _config(**fields):
    return {
        "model_name_or_path": "qwen_vl/tiny",
        "model_options": {"random_init": True},
        "dataset": {
            "train": [{"name": "synthetic_shapes"}],
            "eval": [{"name": "synthetic_shapes", "split": "val"}],
        },
        "output_dir": "out",
        **fields,
    }


@pytest.mark.parametrize(
    ("fields", "path", "fragment"),
    [
        ({"load_best_model_at_end": True}, "$.load_best_model_at_end", "'no' and 'epoch'"),
        (
            {
                "load_best_model_at_end": True,
                "evaluation_strategy": "steps",
                "save_strategy": "steps",
                "save_steps": 30,
                "eval_steps": 20,
            },
            "$.save_steps",
            "multiple of eval_steps (20)",
        ),
        (
            {
                "load_best_model_at_end": True,
                "evaluation_strategy": "epoch",
                "metric_for_best_model": "accuracy",
            },
            "$.metric_for_best_model",
            "no metric 'accuracy'",
        ),
        (
            {
                "load_best_model_at_end": True,
                "evaluation_strategy": "epoch",
                "dataset": {"train": [{"name": "synthetic_shapes"}]},
            },
            "$.load_best_model_at_end",
            "needs dataset.eval",
        ),
    ],
)
def test_best_model_settings_paddlenlp_rejects_are_refused(registry, fields, path, fragment):
    issues = validate_config(_config(**fields), registry)
    assert any(i.path == path and fragment in i.message for i in issues), issues


def test_matching_best_model_settings_are_accepted(registry):
    config = _config(
        load_best_model_at_end=True, evaluation_strategy="epoch", metric_for_best_model="eval_loss"
    )
    assert validate_config(config, registry) == []
