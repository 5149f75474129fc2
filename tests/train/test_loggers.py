"""`report_to` loggers, the loss of short runs, and what a run prints: real `mixcore train` runs.

One run with VisualDL and TensorBoard, piped as a log file would be, is shared by the tests that
read its output folder and its output; one runs under a pseudo-terminal to see the progress bar
as a user does; one with ``--verbose``.
"""

from __future__ import annotations

import fcntl
import importlib.util
import json
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.slow

ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
#: PaddleNLP's log line prefix: ``[2026-12-02 13:08:39,739] [    INFO] ...``
PADDLENLP_LINE = re.compile(r"\[\d{4}-\d\d-\d\d [\d:,]+\] \[ *[A-Z]+\]")


def tiny_config(folder: Path, shapes_dir: Path, **overrides: Any) -> Path:
    config = {
        "model_name_or_path": "qwen_vl/tiny",
        "model_options": {"random_init": True},
        "dataset": {
            "train": [{"name": "chatml_dataset", "data_files": str(shapes_dir / "train.json")}]
        },
        "output_dir": str(folder / "out"),
        "per_device_train_batch_size": 8,
        "save_strategy": "no",
        "max_length": 96,
        "seed": 11,
        **overrides,
    }
    path = folder / "config.json"
    path.write_text(json.dumps(config), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def logged_run(run_mixcore, shapes_dir, tmp_path_factory):
    """3 steps with logging_steps 10, to VisualDL and TensorBoard; stdout and stderr are pipes.
    OMP_NUM_THREADS=2, which makes ``import paddle`` print its thread warning."""
    folder = tmp_path_factory.mktemp("loggers")
    config = tiny_config(
        folder, shapes_dir, max_steps=3, logging_steps=10, report_to=["visualdl", "tensorboard"]
    )
    result = run_mixcore("train", "--config", str(config), env={"OMP_NUM_THREADS": "2"})
    assert result.returncode == 0, result.stderr[-3000:]
    return folder / "out", result


def test_visualdl_and_tensorboard_write_the_losses_into_output_dir(logged_run):
    out, _ = logged_run
    (visualdl,) = out.glob("runs/*/vdlrecords.*.log")
    (events,) = out.glob("runs/*/events.out.tfevents.*")
    for path in (visualdl, events):
        assert b"train/loss" in path.read_bytes(), path
    # The loggers' folder is the run's: a later run with overwrite_output_dir may replace it.
    record = json.loads((out / "mixcore_run.json").read_text())
    assert "runs" in record["files"] and record["status"] == "finished"


def test_logging_dir_is_relative_to_the_config_and_its_files_are_the_runs(
    run_mixcore, shapes_dir, tmp_path
):
    # logging_dir "out" is output_dir itself: the event files land beside the model.
    config = tiny_config(tmp_path, shapes_dir, max_steps=1, report_to="tensorboard")
    config.write_text(
        json.dumps({**json.loads(config.read_text()), "logging_dir": "out"}), encoding="utf-8"
    )
    elsewhere = tmp_path / "elsewhere"  # where the command runs
    elsewhere.mkdir()
    result = run_mixcore("train", "--config", str(config), cwd=elsewhere)
    assert result.returncode == 0, result.stderr[-3000:]
    out = tmp_path / "out"
    (events,) = out.glob("events.out.tfevents.*")
    assert events.name in json.loads((out / "mixcore_run.json").read_text())["files"]
    assert list(elsewhere.iterdir()) == []


def test_a_run_shorter_than_logging_steps_logs_its_loss_and_draws_it(logged_run):
    out, result = logged_run
    history = json.loads((out / "log_history.json").read_text())
    assert [h["step"] for h in history if "loss" in h] == [3]
    assert "step 3/3: loss " in result.stdout
    assert (out / "loss_curve.png").stat().st_size > 1000


def test_piped_output_has_no_bar_colours_or_library_noise(logged_run):
    _, result = logged_run
    for name, text in (("stdout", result.stdout), ("stderr", result.stderr)):
        assert "\r" not in text and "%|" not in text, (name, text[-2000:])
        assert not ANSI.search(text), (name, text[-2000:])
        assert not PADDLENLP_LINE.search(text), (name, text[-2000:])
        assert "OMP_NUM_THREADS" not in text, (name, text[-2000:])
    assert result.stderr == ""


def run_in_terminal(args: list[str], timeout: float = 600) -> tuple[int, str]:
    """Run ``python -m mixcore ARGS`` with stdout and stderr on a 100-column pseudo-terminal."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 100, 0, 0))  # rows, columns
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    process = subprocess.Popen(
        [sys.executable, "-m", "mixcore", *args],
        stdin=subprocess.DEVNULL,
        stdout=slave,
        stderr=slave,
        env=env,
    )
    os.close(slave)
    chunks = []
    try:
        while True:
            ready, _, _ = select.select([master], [], [], timeout)
            if not ready:
                process.kill()
                raise TimeoutError("mixcore train under a terminal did not finish")
            try:
                data = os.read(master, 65536)
            except OSError:  # the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
    finally:
        os.close(master)
    return process.wait(timeout=60), b"".join(chunks).decode("utf-8", "replace")


def test_on_a_terminal_the_bar_stays_below_whole_step_and_eval_lines(shapes_dir, tmp_path, screen):
    config = tiny_config(
        tmp_path,
        shapes_dir,
        max_steps=4,
        logging_steps=2,
        evaluation_strategy="steps",
        eval_steps=2,
        dataset={
            "train": [{"name": "chatml_dataset", "data_files": str(shapes_dir / "train.json")}],
            "eval": [{"name": "chatml_dataset", "data_files": str(shapes_dir / "val.json")}],
        },
    )
    code, output = run_in_terminal(["train", "--config", str(config)])
    assert code == 0, output[-3000:]
    assert "\r" in output  # the bar was drawn, and redrawn
    shown = screen(output)
    steps = [line for line in shown if re.match(r"step \d", line)]
    assert steps == [
        line
        for line in shown
        if "step " in line and ("loss" in line) and not line.startswith("done")
    ]
    assert [s.split(":")[0] for s in steps] == ["step 2/4", "step 2", "step 4/4", "step 4"]
    assert all(re.fullmatch(r"step [\d/]+: (eval )?loss \d+\.\d{4}(, lr \S+)?", s) for s in steps)
    bars = [line for line in shown if "%|" in line]
    assert len(bars) == 1 and bars[0].startswith("training: 100%"), shown
    # The bar is left below the last step line, before the closing report.
    assert shown.index(bars[0]) == shown.index(steps[-1]) + 1
    # The last step is a logging step: its loss is logged once.
    history = json.loads((tmp_path / "out" / "log_history.json").read_text())
    assert [h["step"] for h in history if "loss" in h] == [2, 4]


def test_verbose_keeps_paddlenlp_and_paddle_output(run_mixcore, shapes_dir, tmp_path):
    config = tiny_config(tmp_path, shapes_dir, max_steps=1, logging_steps=1)
    result = run_mixcore(
        "train", "--config", str(config), "--verbose", env={"OMP_NUM_THREADS": "2"}
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "OMP_NUM_THREADS set to 2" in result.stderr
    assert PADDLENLP_LINE.search(result.stderr), result.stderr[-2000:]
    assert "step 1/1: loss " in result.stdout


@pytest.mark.skipif(importlib.util.find_spec("wandb") is not None, reason="wandb is installed")
@pytest.mark.parametrize("command", ["validate", "train"])
def test_a_logger_whose_package_is_absent_is_refused_before_anything_loads(
    run_mixcore, shapes_dir, tmp_path, command
):
    config = tiny_config(tmp_path, shapes_dir, max_steps=1, report_to="wandb")
    result = run_mixcore(command, "--config", str(config))
    said = result.stdout + result.stderr  # validate's report is its output; train's an error
    assert result.returncode == 2, said[-3000:]
    assert "$.report_to" in said and "`pip install wandb`" in said
    assert "Traceback" not in said
    assert "trainable" not in result.stdout  # no model was built
    assert not (tmp_path / "out").exists()
