"""Validation of tensor/pipeline degrees against the models' plans: every built-in model has a
plan (and claims it), so a degree above 1 is not refused for want of one (a pipeline degree
only because ``mixcore train`` does not cut stages yet); a model without a plan is refused for
that, and a claim without the hook breaks its plugin."""

from __future__ import annotations

import pytest

from mixcore import hookimpl
from mixcore.config import validate_config
from mixcore.config.parallel_checks import CPU_TENSOR_PARALLEL
from mixcore.testing import make_plugin, make_registry


@pytest.fixture(scope="module")
def registry():
    return make_registry(entry_points=True)


@pytest.mark.parametrize("model", ["qwen_vl", "blip2", "visualglm"])
def test_built_in_models_claim_both_parallel_capabilities(registry, model):
    capabilities = registry.model(model).capabilities
    assert capabilities["tensor_parallel"] and capabilities["pipeline_parallel"]
    assert "parallel_plan" in registry.plugin(registry.model(model).plugin).hooks


def _degree_config(tmp_path, key):
    (tmp_path / "train.json").write_text("[]")
    return {
        "model_name_or_path": "qwen_vl/tiny",
        "model_options": {"random_init": True},
        "dataset": {"train": [{"name": "chatml_dataset", "data_files": "train.json"}]},
        "output_dir": str(tmp_path / "out"),
        key: 2,
    }


def test_pipeline_degree_is_refused_for_training_not_for_want_of_a_plan(registry, tmp_path):
    issues = validate_config(
        _degree_config(tmp_path, "pipeline_parallel_degree"), registry, base_dir=tmp_path
    )
    assert not [i for i in issues if "has no pipeline_parallel plan" in i.message], issues
    # Refused all the same, for what training lacks (and says what to use instead).
    (refusal,) = [i for i in issues if i.path == "$.pipeline_parallel_degree"]
    assert "is not trained by mixcore yet" in refusal.message
    assert "tensor parallel" in refusal.message and "sharding" in refusal.message


def test_tensor_degree_is_trained_on_gpus_and_on_cpus_when_asked(registry, tmp_path, monkeypatch):
    config = _degree_config(tmp_path, "tensor_parallel_degree") | {"device": "cpu"}
    monkeypatch.delenv(CPU_TENSOR_PARALLEL, raising=False)
    (refusal,) = [
        i
        for i in validate_config(config, registry, base_dir=tmp_path)
        if i.path == "$.tensor_parallel_degree"
    ]
    assert "needs GPUs" in refusal.message and CPU_TENSOR_PARALLEL in refusal.message
    monkeypatch.setenv(CPU_TENSOR_PARALLEL, "1")
    assert validate_config(config, registry, base_dir=tmp_path) == []
    # On a GPU device no switch is needed (whether this Paddle can use one is checked at train).
    monkeypatch.delenv(CPU_TENSOR_PARALLEL)
    gpu = config | {"device": "npu"}
    assert not [
        i
        for i in validate_config(gpu, registry, base_dir=tmp_path)
        if i.path == "$.tensor_parallel_degree"
    ]


def test_a_model_without_a_plan_is_refused_and_a_claim_without_the_hook_breaks(tmp_path):
    @hookimpl
    def register_models(register):
        register(name="planless", description="no plan", capabilities={"sft": True})

    @hookimpl
    def load_model(model_name, source, options):
        return None

    @hookimpl
    def preprocess_sample(model_name, sample, bundle, max_length):
        return None

    registry = make_registry(make_plugin("p", register_models, load_model, preprocess_sample))
    config = {"model": "planless", "model_name_or_path": "x", "output_dir": "out"}
    config["tensor_parallel_degree"] = 2
    issues = validate_config(config, registry)
    assert any(
        i.path == "$.tensor_parallel_degree" and "has no tensor_parallel plan" in i.message
        for i in issues
    ), issues

    def register_claiming(register):
        register(name="claims", description="c", capabilities={"tensor_parallel": True})

    claimed = make_registry(
        make_plugin("q", load_model, register_models=hookimpl(register_claiming))
    )
    assert not claimed.plugin("q").ok and "parallel_plan" in claimed.plugin("q").reason
