"""check_model_options: what a model's option schema cannot say is found by `mixcore validate`.

The problems a plugin returns are reported at `$.model_options` with exit code 2, by `validate`
and by `train`, `infer` and `merge-lora` before any of them imports Paddle.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mixcore import hookimpl
from mixcore.testing import make_plugin, run_cli, write_config

NO_WEIGHTS = "the toy/tiny preset has no pretrained weights; set model_options.random_init: true"
calls: list[tuple[str, str, dict]] = []


@hookimpl
def register_models(register):
    register(
        name="toy",
        description="A toy model",
        options_schema={
            "type": "object",
            "additionalProperties": False,
            "properties": {"random_init": {"type": "boolean"}, "depth": {"type": "integer"}},
        },
        capabilities={"sft": True},
        aliases=["toy/tiny"],
        model_types=["toy"],
    )


@hookimpl
def check_model_options(model_name, source, options):
    if model_name != "toy":
        return None
    calls.append((model_name, source, options))
    if source == "toy/tiny" and not options.get("random_init"):
        return [NO_WEIGHTS]
    return []


@hookimpl
def load_model(model_name, source, options):
    return None


@hookimpl
def preprocess_sample(model_name, sample, bundle, max_length):
    return None


@hookimpl
def register_datasets(register):
    register(
        name="toy_data",
        description="Toy data",
        options_schema={
            "type": "object",
            "required": ["data_files"],
            "properties": {
                "data_files": {"type": "string", "format": "path"},
                "prompt": {"type": "string", "minLength": 1},
            },
        },
    )


TOY = make_plugin(
    "toy_plugin",
    register_models,
    check_model_options,
    load_model,
    preprocess_sample,
    register_datasets,
)


@pytest.fixture(autouse=True)
def fresh_calls(monkeypatch):
    calls.clear()

    def paddle_is_not_for_this(*args, **kwargs):
        raise AssertionError("the command went on to import Paddle")

    monkeypatch.setattr("mixcore.cli._prepare_paddle", paddle_is_not_for_this)


def toy_config(tmp_path: Path, **fields) -> Path:
    (tmp_path / "data.json").write_text("[]")
    config = {
        "model_name_or_path": "toy/tiny",
        "dataset": {"train": [{"name": "toy_data", "data_files": "data.json"}]},
        "output_dir": "out",
        **fields,
    }
    return write_config(tmp_path, config)


def test_validate_reports_the_plugins_problem_at_model_options(tmp_path):
    config = toy_config(tmp_path)
    result = run_cli(["validate", "--config", str(config)], plugins=[TOY])
    assert result.exit_code == 2, result.stderr
    assert f"$.model_options: {NO_WEIGHTS}" in result.stdout
    issues = run_cli(["validate", "--config", str(config), "--json"], plugins=[TOY]).json()
    assert issues["valid"] is False
    assert issues["issues"] == [{"path": "$.model_options", "message": NO_WEIGHTS}]
    assert calls[0] == ("toy", "toy/tiny", {})


def test_options_the_plugin_accepts_are_valid(tmp_path):
    config = toy_config(tmp_path, model_options={"random_init": True})
    result = run_cli(["validate", "--config", str(config)], plugins=[TOY])
    assert result.exit_code == 0, result.stdout
    assert calls == [("toy", "toy/tiny", {"random_init": True})]


@pytest.mark.parametrize("explicit", [False, True])
def test_the_plugin_sees_only_options_that_passed_the_schema(tmp_path, explicit):
    fields = {"model_options": {"depth": "deep"}} | ({"model": "toy"} if explicit else {})
    config = toy_config(tmp_path, **fields)
    issues = run_cli(["validate", "--config", str(config), "--json"], plugins=[TOY]).json()
    assert [i["path"] for i in issues["issues"]] == ["$.model_options.depth"]
    assert calls == []


def test_with_an_explicit_model_the_plugin_checks_too(tmp_path):
    config = toy_config(tmp_path, model="toy")
    issues = run_cli(["validate", "--config", str(config), "--json"], plugins=[TOY]).json()
    assert issues["issues"] == [{"path": "$.model_options", "message": NO_WEIGHTS}]


def test_a_checkpoint_folder_reaches_the_plugin_as_an_absolute_path(tmp_path):
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "config.json").write_text('{"model_type": "toy"}')
    config = toy_config(tmp_path, model_name_or_path="ckpt")
    result = run_cli(["validate", "--config", str(config)], plugins=[TOY])
    assert result.exit_code == 0, result.stdout
    assert calls == [("toy", str((tmp_path / "ckpt").resolve()), {})]


def test_an_answer_that_is_not_a_list_of_strings_is_the_plugins_fault(tmp_path):
    @hookimpl
    def check_model_options(model_name, source, options):
        return "set random_init"

    plugin = make_plugin(
        "sloppy", register_models, check_model_options, load_model, preprocess_sample
    )
    config = toy_config(tmp_path, dataset={"train": [{"name": "chatml_dataset"}]})
    result = run_cli(["validate", "--config", str(config)], plugins=[plugin])
    assert result.exit_code == 1
    assert "plugin 'sloppy' answered check_model_options" in result.stderr
    assert "must return a list of strings" in result.stderr


def test_another_plugin_answering_for_every_model_is_not_asked(tmp_path):
    @hookimpl
    def check_model_options(model_name, source, options):
        return ["not mine to say"]

    config = toy_config(tmp_path, model_options={"random_init": True})
    result = run_cli(
        ["validate", "--config", str(config)],
        plugins=[TOY, make_plugin("meddler", check_model_options)],
    )
    assert result.exit_code == 0, result.stdout


def test_train_stops_at_the_problem_before_paddle(tmp_path):
    result = run_cli(["train", "--config", str(toy_config(tmp_path))], plugins=[TOY])
    assert result.exit_code == 2
    assert f"$.model_options: {NO_WEIGHTS}" in result.stderr


def test_infer_checks_the_model_options_before_paddle(tmp_path):
    result = run_cli(["infer", "--model", "toy/tiny", "--prompt", "hi"], plugins=[TOY])
    assert result.exit_code == 2
    assert "--model-options: 1 problem(s)" in result.stderr
    assert f"$: {NO_WEIGHTS}" in result.stderr
    schema = run_cli(
        ["infer", "--model", "toy/tiny", "--model-options", '{"depth": "x"}', "--prompt", "hi"],
        plugins=[TOY],
    )
    assert schema.exit_code == 2
    assert '$.depth: expected integer, got string "x"' in schema.stderr


def test_merge_lora_checks_the_recorded_base_options_before_paddle(tmp_path):
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    base = {"model": "toy", "model_name_or_path": "toy/tiny", "model_options": {}, "seed": 1}
    (adapter / "mixcore_lora_base.json").write_text(json.dumps(base))
    argv = ["merge-lora", "--lora", str(adapter), "--output", str(tmp_path / "merged")]
    result = run_cli(argv, plugins=[TOY])
    assert result.exit_code == 2
    assert NO_WEIGHTS in result.stderr
    assert not (tmp_path / "merged").exists()


# -- infer --data: the data file's entry is checked like a config's dataset entry -----------------


def infer_data(tmp_path: Path, *extra: str):
    (tmp_path / "data.json").write_text("[]")
    argv = ["infer", "--model", "toy/tiny", "--model-options", '{"random_init": true}']
    return run_cli([*argv, "--dataset-name", "toy_data", *extra], plugins=[TOY])


def test_infer_data_reports_a_bad_dataset_option_with_its_path(tmp_path):
    data = str(tmp_path / "data.json")
    result = infer_data(tmp_path, "--data", data, "--data-options", '{"promt": "Q?"}')
    assert result.exit_code == 2
    assert "--data: 1 problem(s)" in result.stderr
    assert "$.promt: unknown key \"promt\" (did you mean 'prompt'?)" in result.stderr
    empty = infer_data(tmp_path, "--data", data, "--data-options", '{"prompt": ""}')
    assert empty.exit_code == 2 and "$.prompt: must not be empty" in empty.stderr


def test_infer_data_names_a_missing_file_and_an_unknown_kind(tmp_path):
    missing = infer_data(tmp_path, "--data", str(tmp_path / "nope.json"))
    assert missing.exit_code == 2
    assert f"$.data_files: file not found: {tmp_path / 'nope.json'}" in missing.stderr
    data = ["--data", str(tmp_path / "data.json"), "--dataset-name", "toy_dta"]
    result = run_cli(
        ["infer", "--model", "toy/tiny", "--model-options", '{"random_init": true}', *data],
        plugins=[TOY],
    )
    assert result.exit_code == 2
    assert '$.name: got "toy_dta"; allowed: "toy_data" (did you mean \'toy_data\'?)' in (
        result.stderr
    )


def test_data_options_need_data():
    result = run_cli(
        ["infer", "--model", "toy/tiny", "--prompt", "hi", "--data-options", "{}"], plugins=[TOY]
    )
    assert result.exit_code == 2 and "--data-options needs --data" in result.stderr
