"""Parallel layouts and launch options are checked before any process starts (no Paddle import
for the config checks), with the JSON path and what to do instead."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from mixcore.config.parallel_checks import paddle_build
from mixcore.testing import run_cli
from mixcore.train.launch import LOG_FOLDER, LaunchPlan, error_lines, launcher_command

CPU_BUILD = paddle_build() == "cpu"


def _config(tmp_path: Path, shapes_dir: Path, **extra: Any) -> Path:
    config = {
        "model_name_or_path": "qwen_vl/tiny",
        "model_options": {"random_init": True},
        "dataset": {
            "train": [{"name": "chatml_dataset", "data_files": str(shapes_dir / "train.json")}]
        },
        "output_dir": str(tmp_path / "out"),
        **extra,
    }
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config), encoding="utf-8")
    return path


def test_the_installed_paddle_build_is_read_without_importing_it() -> None:
    import paddle

    assert paddle_build() == ("gpu" if paddle.device.is_compiled_with_cuda() else "cpu")


@pytest.mark.skipif(not CPU_BUILD, reason="the GPU needs are refused on CPU-only machines")
@pytest.mark.parametrize(
    ("extra", "path", "words"),
    [
        ({"sharding": "stage2", "sharding_parallel_degree": 2}, "$.sharding", "sharding stage2"),
        ({"sharding": "stage3 offload"}, "$.sharding", "sharding stage3"),
        ({"tensor_parallel_degree": 2}, "$.tensor_parallel_degree", "tensor parallel"),
        ({"pipeline_parallel_degree": 2}, "$.pipeline_parallel_degree", "pipeline parallel"),
    ],
)
def test_gpu_only_layouts_fail_validation_on_a_cpu_only_machine(
    tmp_path: Path, shapes_dir: Path, extra: dict[str, Any], path: str, words: str
) -> None:
    config = _config(tmp_path, shapes_dir, **extra)
    result = run_cli(["validate", "--config", str(config), "--world-size", "2"], entry_points=True)
    assert result.exit_code == 2
    # (a model without a pipeline plan says so too, on a line of its own)
    (line,) = [
        line
        for line in result.stdout.splitlines()
        if line.strip().startswith(path) and "needs GPUs" in line
    ]
    assert words in line
    assert "the installed Paddle has no CUDA support" in line
    assert "sharding 'stage1'" in line  # what does run here


def test_device_cpu_refuses_gpu_layouts_whatever_paddle_is_installed(
    tmp_path: Path, shapes_dir: Path
) -> None:
    config = _config(
        tmp_path, shapes_dir, device="cpu", sharding="stage2", sharding_parallel_degree=2
    )
    result = run_cli(["validate", "--config", str(config)], entry_points=True)
    assert result.exit_code == 2
    assert "$.sharding: sharding stage2 needs GPUs" in result.stdout
    assert "device is 'cpu'" in result.stdout


def test_stage2_in_a_single_process_is_no_sharding_and_validates(
    tmp_path: Path, shapes_dir: Path
) -> None:
    """PaddleMIX's published configs ask for stage2 without a degree: over every data-parallel
    rank, which in one process is none (PaddleNLP then trains unsharded)."""
    config = _config(tmp_path, shapes_dir, sharding="stage2")
    for world in ([], ["--world-size", "1"]):
        result = run_cli(["validate", "--config", str(config), *world], entry_points=True)
        assert result.exit_code == 0, result.stdout
    if CPU_BUILD:
        result = run_cli(
            ["validate", "--config", str(config), "--world-size", "2"], entry_points=True
        )
        assert result.exit_code == 2
        assert "sharding stage2 needs GPUs" in result.stdout


def test_stage1_and_data_parallel_validate_on_cpu(tmp_path: Path, shapes_dir: Path) -> None:
    config = _config(tmp_path, shapes_dir, sharding="stage1", sharding_parallel_degree=2)
    result = run_cli(["validate", "--config", str(config), "--world-size", "4"], entry_points=True)
    assert result.exit_code == 0, result.stdout


def test_train_refuses_a_layout_before_any_process_starts(tmp_path: Path, shapes_dir: Path) -> None:
    """The parent checks the world it would launch: 3 processes cannot hold sharding 2, and
    nothing is written (no log folder, no run record)."""
    config = _config(tmp_path, shapes_dir, sharding="stage1", sharding_parallel_degree=2)
    result = run_cli(["train", "--config", str(config), "--nproc-per-node", "3"], entry_points=True)
    assert result.exit_code == 2
    assert "do not divide the 3 process(es)" in result.stderr
    assert "data-parallel degree is world size / (tensor x pipeline x sharding)" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("flags", "words"),
    [
        (["--nproc-per-node", "2", "--nnodes", "2"], "--nnodes 2 needs --master HOST:PORT"),
        (["--nproc-per-node", "2", "--master", "nohost"], "expected HOST:PORT"),
        (
            ["--nproc-per-node", "2", "--nnodes", "2", "--master", "h:1", "--rank", "2"],
            "--rank 2: a node rank from 0 to 1",
        ),
        (["--nnodes", "2"], "need(s) --nproc-per-node N"),
        (["--nproc-per-node", "1", "--nnodes", "2", "--master", "h:1"], "needs --rank R"),
    ],
)
def test_launch_options_that_describe_no_run_are_usage_errors(
    tmp_path: Path, shapes_dir: Path, flags: list[str], words: str
) -> None:
    config = _config(tmp_path, shapes_dir)
    result = run_cli(["train", "--config", str(config), *flags], entry_points=True)
    assert result.exit_code == 2
    assert words in result.stderr
    assert not (tmp_path / "out").exists()


def test_launch_options_inside_a_launch_are_refused(
    tmp_path: Path, shapes_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PADDLE_TRAINERS_NUM", "2")
    config = _config(tmp_path, shapes_dir)
    result = run_cli(["train", "--config", str(config), "--nproc-per-node", "2"], entry_points=True)
    assert result.exit_code == 2
    assert "already one of the 2 processes of a paddle.distributed.launch run" in result.stderr


def test_a_process_of_a_launch_checks_the_degrees_for_its_world(
    tmp_path: Path, shapes_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under the user's own launcher every process validates for the world it is in."""
    monkeypatch.setenv("PADDLE_TRAINERS_NUM", "3")
    config = _config(tmp_path, shapes_dir, sharding="stage1", sharding_parallel_degree=2)
    result = run_cli(["train", "--config", str(config)], entry_points=True)
    assert result.exit_code == 2
    assert "do not divide the 3 process(es)" in result.stderr


def test_the_launcher_runs_this_interpreter_on_mixcore_with_logs_in_the_output(
    tmp_path: Path,
) -> None:
    logs = tmp_path / "out" / LOG_FOLDER
    plan = LaunchPlan(4, nnodes=2, master="10.0.0.1:8090", rank=1)
    command = launcher_command(plan, logs, ["--config", "c.json"])
    assert command[:3] == [sys.executable, "-m", "paddle.distributed.launch"]
    flags = dict(zip(command[3:-7:2], command[4:-7:2], strict=True))
    assert flags == {
        "--nproc_per_node": "4",
        "--nnodes": "2",
        "--log_dir": str(logs),
        "--job_id": "mixcore",
        "--master": "10.0.0.1:8090",
        "--rank": "1",
        "--log_level": "WARNING",
    }
    # The launcher's training program is the interpreter: it cannot run `-m mixcore` itself.
    assert command[-7:] == [sys.executable, "-u", "-m", "mixcore", "train", "--config", "c.json"]
    assert plan.world_size == 8


def test_a_failed_process_is_told_by_its_error_lines(tmp_path: Path) -> None:
    log = tmp_path / "workerlog.1"
    log.write_text("step 1/3: loss 6.1\nerror: record 5: not an image\n\n", encoding="utf-8")
    assert error_lines(log) == ["error: record 5: not an image"]
    log.write_text("a\nb\nTraceback\nValueError: x\n", encoding="utf-8")
    assert error_lines(log, last=2) == ["Traceback", "ValueError: x"]


def test_a_launch_into_a_folder_a_run_is_training_in_is_refused_untouched(
    tmp_path: Path, shapes_dir: Path
) -> None:
    """The parent checks the folder's lock before it touches the log folder or starts a rank."""
    from mixcore.train.output import OutputLock

    out = tmp_path / "out"
    (out / LOG_FOLDER).mkdir(parents=True)
    (out / LOG_FOLDER / "workerlog.0").write_text("the running run's log\n", encoding="utf-8")
    (out / "mixcore_run.json").write_text(
        json.dumps({"status": "running", "files": [LOG_FOLDER]}), encoding="utf-8"
    )
    config = _config(tmp_path, shapes_dir, overwrite_output_dir=True)
    with OutputLock(out):
        result = run_cli(
            ["train", "--config", str(config), "--nproc-per-node", "2"], entry_points=True
        )
    assert result.exit_code == 2
    assert "in use by another mixcore train" in result.stderr
    assert (out / LOG_FOLDER / "workerlog.0").read_text(encoding="utf-8").startswith("the running")
