"""The `mixcore` command: listing, inspection, checking, validation, schema, help."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from mixcore import __version__, hookimpl
from mixcore.testing import make_plugin, run_cli, write_config


@hookimpl
def register_models(register):
    register(
        name="toy",
        description="A toy model",
        options_schema={
            "type": "object",
            "additionalProperties": False,
            "properties": {"depth": {"type": "integer", "description": "layers"}},
        },
        capabilities={"sft": True},
        aliases=["toy/tiny"],
    )


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
            "properties": {"data_files": {"type": "string", "format": "path"}},
        },
    )


TOY = make_plugin("toy_plugin", register_models, load_model, preprocess_sample, register_datasets)


@hookimpl
def broken_register(register):
    raise ImportError("needs libfoo")


BROKEN = make_plugin("broken_plugin", register_models=broken_register)


def test_list_json_reports_plugins_models_capabilities_and_broken_reason():
    result = run_cli(["plugins", "list", "--json"], plugins=[TOY, BROKEN])
    assert result.exit_code == 0
    data = result.json()
    plugins = {p["name"]: p for p in data["plugins"]}
    assert set(plugins) == {"toy_plugin", "broken_plugin"}
    assert plugins["toy_plugin"]["status"] == "ok"
    assert plugins["toy_plugin"]["hooks"] == [
        "load_model",
        "preprocess_sample",
        "register_datasets",
        "register_models",
    ]
    assert plugins["broken_plugin"]["status"] == "broken"
    assert "ImportError: needs libfoo" in plugins["broken_plugin"]["reason"]
    assert data["models"][0]["capabilities"] == {"sft": True}


def test_list_table_shows_status_and_reason():
    result = run_cli(["plugins", "list"], plugins=[TOY, BROKEN])
    assert result.exit_code == 0
    assert "toy (sft)" in result.stdout and "BROKEN" in result.stdout
    assert "broken_plugin: register_models failed: ImportError: needs libfoo" in result.stdout


def test_check_exits_one_when_a_plugin_is_broken_and_zero_otherwise():
    assert run_cli(["plugins", "check"], plugins=[TOY, BROKEN]).exit_code == 1
    ok = run_cli(["plugins", "check"], plugins=[TOY])
    assert ok.exit_code == 0 and "All 1 plugin(s)" in ok.stdout


def test_show_prints_options_and_unknown_name_suggests():
    result = run_cli(["plugins", "show", "toy_plugin"], plugins=[TOY])
    assert result.exit_code == 0
    assert "depth  layers" in result.stdout and "aliases:      toy/tiny" in result.stdout
    missing = run_cli(["plugins", "show", "toy_plugn"], plugins=[TOY])
    assert missing.exit_code == 2 and "did you mean 'toy_plugin'" in missing.stderr


def test_show_broken_plugin_includes_traceback():
    result = run_cli(["plugins", "show", "broken_plugin", "--json"], plugins=[BROKEN])
    assert result.exit_code == 0
    assert "Traceback" in result.json()["detail"]


def valid_config(tmp_path):
    (tmp_path / "train.json").write_text("[]")
    return {
        "model_name_or_path": "toy/tiny",
        "model_options": {"depth": 2},
        "dataset": {"train": [{"name": "toy_data", "data_files": "train.json"}]},
        "output_dir": "out",
    }


def test_validate_accepts_a_valid_config(tmp_path):
    path = write_config(tmp_path, valid_config(tmp_path))
    result = run_cli(["validate", "--config", str(path)], plugins=[TOY])
    assert result.exit_code == 0, result.stdout
    assert "valid" in result.stdout


def test_validate_reports_three_independent_mistakes_at_once(tmp_path):
    config = valid_config(tmp_path)
    config["learning_rte"] = 1e-4
    config["dataset"]["train"].append({"name": "toy_data", "data_files": ["train.json"]})
    config["dataset"]["train"].append({"name": "toy_dat", "data_files": "train.json"})
    path = write_config(tmp_path, config)
    result = run_cli(["validate", "--config", str(path), "--json"], plugins=[TOY])
    assert result.exit_code == 2
    issues = {i["path"]: i["message"] for i in result.json()["issues"]}
    assert set(issues) == {
        "$.learning_rte",
        "$.dataset.train[1].data_files",
        "$.dataset.train[2].name",
    }
    assert "did you mean 'learning_rate'" in issues["$.learning_rte"]
    assert "expected string" in issues["$.dataset.train[1].data_files"]
    assert "did you mean 'toy_data'" in issues["$.dataset.train[2].name"]


def test_validate_checks_model_options_of_the_resolved_model(tmp_path):
    config = valid_config(tmp_path)
    config["model_options"] = {"depht": 2}
    path = write_config(tmp_path, config)
    result = run_cli(["validate", "--config", str(path)], plugins=[TOY])
    assert result.exit_code == 2
    assert "$.model_options.depht: unknown key" in result.stdout


def test_validate_warns_about_broken_plugins_but_still_validates(tmp_path):
    path = write_config(tmp_path, valid_config(tmp_path))
    result = run_cli(["validate", "--config", str(path)], plugins=[TOY, BROKEN])
    assert result.exit_code == 0
    assert "plugin 'broken_plugin' is broken" in result.stderr


def test_schema_includes_plugin_options_and_is_valid_json_schema():
    from jsonschema import Draft202012Validator

    result = run_cli(["schema"], plugins=[TOY])
    schema = result.json()
    Draft202012Validator.check_schema(schema)
    assert schema["$defs"]["datasets"]["toy_data"]["properties"]["data_files"]["format"] == "path"
    assert schema["$defs"]["models"]["toy"]["properties"]["depth"]["type"] == "integer"
    core = run_cli(["schema", "--core"], plugins=[TOY]).json()
    assert "datasets" not in core["$defs"]


def test_version_and_help():
    version = run_cli(["--version"])
    assert version.exit_code == 0 and __version__ in version.stdout + version.stderr
    for argv in (["--help"], ["plugins", "--help"], ["validate", "--help"], ["schema", "--help"]):
        assert run_cli(argv).exit_code == 0
    assert run_cli(["plugins"]).exit_code == 2
    assert run_cli(["no-such-command"]).exit_code == 2


@pytest.mark.parametrize(
    "argv",
    [
        ["plugins", "list"],
        ["plugins", "list", "--json"],
        ["plugins", "check"],
        ["plugins", "show", "qwen_vl"],
        ["schema"],
        ["--help"],
        ["validate", "--help"],
    ],
)
def test_listing_commands_never_import_paddle_or_pillow(argv):
    code = (
        "import sys\n"
        "from mixcore.cli import main\n"
        f"try:\n    main({argv!r})\nexcept SystemExit:\n    pass\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in {'paddle', 'paddlenlp', 'PIL'})\n"
        "print('HEAVY=' + ','.join(heavy))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert "HEAVY=\n" in result.stdout, result.stdout[-500:]


def test_validate_never_imports_paddle(tmp_path):
    path = write_config(tmp_path, {"model_name_or_path": "qwen_vl/tiny", "output_dir": "o"})
    code = (
        "import sys\nfrom mixcore.cli import main\n"
        f"main(['validate', '--config', {str(path)!r}])\n"
        "print('HEAVY', [m for m in sys.modules if m.split('.')[0] in {'paddle', 'paddlenlp', 'PIL'}])"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert "HEAVY []" in result.stdout


def test_installed_console_script_lists_builtin_plugins():
    script = json.loads(
        subprocess.run(
            [sys.executable, "-m", "mixcore", "plugins", "list", "--json"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    names = {p["name"] for p in script["plugins"]}
    assert {"qwen_vl", "blip2", "visualglm", "datasets"} <= names


def test_list_and_check_name_both_plugins_of_a_refused_name():
    rival = make_plugin("rival", register_models, load_model, preprocess_sample)
    listing = run_cli(["plugins", "list"], plugins=[TOY, rival])
    assert listing.exit_code == 0
    row = next(line for line in listing.stdout.splitlines() if line.startswith("rival "))
    assert "CONFLICT" in row
    assert "rival: model 'toy' refused: plugin 'toy_plugin' (in memory)" in listing.stdout
    check = run_cli(["plugins", "check", "--json"], plugins=[TOY, rival])
    assert check.exit_code == 1
    data = check.json()
    assert data["ok"] is False and data["broken"] == []
    assert [p["name"] for p in data["conflicts"]] == ["rival"]


def test_dataset_options_with_local_refs_validate_through_the_composed_schema(tmp_path):
    @hookimpl
    def register_datasets(register):
        register(
            name="reffy",
            description="options with $defs",
            options_schema={
                "type": "object",
                "$defs": {"count": {"type": "integer", "minimum": 1}},
                "properties": {"repeat": {"$ref": "#/$defs/count"}},
            },
        )

    config = {**valid_config(tmp_path), "dataset": {"train": [{"name": "reffy", "repeat": 2}]}}
    plugins = [TOY, make_plugin("reffy_plugin", register_datasets)]
    ok = run_cli(["validate", "--config", str(write_config(tmp_path, config))], plugins=plugins)
    assert ok.exit_code == 0, ok.stdout + ok.stderr
    config["dataset"]["train"][0]["repeat"] = 0
    bad = run_cli(["validate", "--config", str(write_config(tmp_path, config))], plugins=plugins)
    assert bad.exit_code == 2
    assert "$.dataset.train[0].repeat: must be >= 1, got 0" in bad.stdout


@pytest.mark.parametrize("argv", [["schema"], ["plugins", "list", "--json"], ["plugins", "check"]])
def test_closed_stdout_ends_quietly_without_a_traceback(argv):
    # The reader is gone before mixcore writes a byte, like `mixcore schema | head -0`.
    proc = subprocess.Popen(
        [sys.executable, "-m", "mixcore", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    proc.stdout.close()
    stderr = proc.stderr.read()
    proc.stderr.close()
    assert proc.wait(timeout=60) == 141
    assert stderr == ""


def test_output_cut_short_by_head_leaves_no_noise(tmp_path):
    result = subprocess.run(
        f"{sys.executable} -m mixcore schema | head -c 10",
        shell=True,
        capture_output=True,
        text=True,
        executable="/bin/bash",
    )
    assert result.stdout == '{\n  "$sche'
    assert result.stderr == ""
