"""`mixcore train` never writes over what the user owns, and only one run writes a folder."""

from __future__ import annotations

import json

import pytest

from mixcore.train.output import OutputLock

pytestmark = pytest.mark.slow


def test_non_empty_output_dir_is_refused_before_anything_is_written(
    run_mixcore, tmp_path, write_train_config
):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    (out / "checkpoint-3").mkdir()
    config = write_train_config(save_strategy="steps", save_steps=4)
    result = run_mixcore("train", "--config", str(config))
    assert result.returncode == 2
    assert "$.output_dir" in result.stderr and "not empty" in result.stderr
    assert "resume_from_checkpoint: true" in result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint-3", "notes.txt"]
    assert list((out / "checkpoint-3").iterdir()) == []


@pytest.mark.parametrize("where", ["config", "above_config", "data", "model"])
def test_output_dir_on_a_users_folder_is_refused_even_with_overwrite(
    run_mixcore, tmp_path, write_train_config, shapes_dir, where
):
    model = tmp_path / "base-model"
    model.mkdir()
    (model / "keep.txt").write_text("weights")
    targets = {
        "config": ".",
        "above_config": str(tmp_path.parent),
        "data": str(shapes_dir),
        "model": str(model),
    }
    overrides = {"output_dir": targets[where], "overwrite_output_dir": True}
    if where == "model":
        overrides["model_name_or_path"] = str(model)
    config = write_train_config(**overrides)
    before = config.read_text()
    result = run_mixcore("validate", "--config", str(config), "--json")
    assert result.returncode == 2
    issues = json.loads(result.stdout)["issues"]
    assert any(
        i["path"] == "$.output_dir" and "must be a folder of its own" in i["message"]
        for i in issues
    ), issues
    trained = run_mixcore("train", "--config", str(config))
    assert trained.returncode == 2
    assert config.read_text() == before
    assert (model / "keep.txt").read_text() == "weights"


def test_overwrite_replaces_an_earlier_runs_files_but_never_foreign_ones(
    run_mixcore, tmp_path, write_train_config
):
    config = write_train_config(max_steps=2, save_strategy="steps", save_steps=2)
    assert run_mixcore("train", "--config", str(config)).returncode == 0
    out = tmp_path / "out"
    assert (out / "checkpoint-2").is_dir()
    again = write_train_config(max_steps=1, overwrite_output_dir=True)
    result = run_mixcore("train", "--config", str(again))
    assert result.returncode == 0, result.stderr[-2000:]
    assert not (out / "checkpoint-2").exists()  # two runs' checkpoints are never mixed
    assert json.loads((out / "mixcore_run.json").read_text())["status"] == "finished"

    (out / "user-notes.txt").write_text("mine")
    refused = run_mixcore("train", "--config", str(again))
    assert refused.returncode == 2
    assert "user-notes.txt" in refused.stderr and "no mixcore run wrote" in refused.stderr
    assert (out / "user-notes.txt").read_text() == "mine"
    assert (out / "model.safetensors").is_file()


def test_a_second_train_on_the_same_output_dir_is_refused(
    run_mixcore, tmp_path, write_train_config
):
    config = write_train_config(max_steps=1)
    with OutputLock(tmp_path / "out"):
        result = run_mixcore("train", "--config", str(config))
    assert result.returncode == 2
    assert "in use by another mixcore train" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out" / "model.safetensors").exists()


def test_output_paths_that_cannot_work_are_refused_before_loading(
    run_mixcore, tmp_path, write_train_config
):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    config = write_train_config(output_dir=str(blocker / "out"))
    result = run_mixcore("validate", "--config", str(config), "--json")
    assert result.returncode == 2
    assert any(
        "is a file, not a folder" in i["message"] for i in json.loads(result.stdout)["issues"]
    )

    infer = run_mixcore(
        "infer",
        "--model",
        "qwen_vl/tiny",
        "--model-options",
        '{"random_init": true}',
        "--prompt",
        "hi",
        "--output",
        str(tmp_path / "missing" / "preds.jsonl"),
    )
    assert infer.returncode == 2 and "does not exist" in infer.stderr
    merged = run_mixcore("merge-lora", "--lora", str(tmp_path), "--output", str(blocker))
    assert merged.returncode == 2 and "is a file" in merged.stderr
    assert blocker.read_text() == "x"


def test_do_train_false_trains_and_writes_nothing(run_mixcore, tmp_path, write_train_config):
    config = write_train_config(do_train=False)
    result = run_mixcore("train", "--config", str(config))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "nothing was trained" in result.stdout
    assert not (tmp_path / "out" / "model.safetensors").exists()
    out = tmp_path / "out"
    assert not out.exists() or {p.name for p in out.iterdir()} <= {".mixcore.lock"}
