"""Several processes through Paddle's own launcher, on CPU over gloo: data parallel and sharding
stage 1 train exactly as one process with the doubled batch.

Why the numbers can be equal: mixcore's sampler gives rank ``r`` the ``r``-th share of each
global batch, so two ranks of batch ``b`` see the samples one process of batch ``2b`` sees. The
loss of a batch is the mean over its label tokens; the run's loss (and the gradient the ranks
average) is the mean of the ranks' means, which equals the mean over the whole batch only when
every rank's batch holds as many label tokens. The data here makes that hold honestly: every
record asks the same question and answers with a shape name of two tokens (``diamond``, six
tokens in the tiny vocabulary, is left out), so every sample has the same label tokens and the
same length. The per-source losses of the mixture are sums of token losses and counts, reduced
across the ranks, so they are equal whatever the token counts.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mixcore.testing import run_cli

TOLERANCE = 1e-5
STEPS = 3


@pytest.fixture(scope="module")
def two_sources(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two chatml files of shape questions whose answers are two tokens each."""
    from mixcore_datasets.synthetic import generate_shapes_dataset

    folder = tmp_path_factory.mktemp("equal-tokens")
    paths = generate_shapes_dataset(
        folder, seed=5, n_train=64, n_val=0, n_test=0, question_types=("shape",)
    )
    records = json.loads(paths["train"].read_text(encoding="utf-8"))
    kept = [r for r in records if r["conversations"][0][1] != "diamond"]
    assert len(kept) >= 4 * 8, "enough records for the batches of 3 steps"
    a, b = folder / "a.json", folder / "b.json"
    a.write_text(json.dumps(kept[0::2]), encoding="utf-8")
    b.write_text(json.dumps(kept[1::2]), encoding="utf-8")
    return a, b


def _config(sources: tuple[Path, Path], output: Path, batch: int, **extra: Any) -> dict[str, Any]:
    return {
        "model_name_or_path": "qwen_vl/tiny",
        "model_options": {"random_init": True},
        "dataset": {
            "train": [
                {"name": "chatml_dataset", "data_files": str(sources[0]), "label": "a"},
                {"name": "chatml_dataset", "data_files": str(sources[1]), "label": "b"},
            ],
            "cache": False,
        },
        "output_dir": str(output),
        "per_device_train_batch_size": batch,
        # Adam divides each step by sqrt(v) + eps: a weight whose gradient is near eps takes a
        # step that float rounding (8 samples summed at once vs 2 x 4) moves by a fraction of
        # the learning rate. Measured with 2e-3 and eps 1e-8: one weight of 300k off by 1.4e-5,
        # the rest below 3e-6. A larger eps keeps such weights' steps small.
        "learning_rate": 0.001,
        "adam_epsilon": 1e-6,
        "max_steps": STEPS,
        "logging_steps": 1,
        "save_strategy": "no",
        "max_length": 96,
        "seed": 11,
        **extra,
    }


def _write(folder: Path, config: dict[str, Any], name: str) -> Path:
    path = folder / name
    path.write_text(json.dumps(config), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def one_process(
    two_sources: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Path]:
    """The reference: one process with the doubled batch (8)."""
    folder = tmp_path_factory.mktemp("one-process")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MIXCORE_CACHE_DIR", str(folder / "cache"))
        config = _write(folder, _config(two_sources, folder / "out", batch=8), "config.json")
        result = run_cli(["train", "--config", str(config)], entry_points=True)
    assert result.exit_code == 0, result.stderr
    yield folder / "out"


def _losses(output: Path) -> dict[int, dict[str, float]]:
    history = json.loads((output / "log_history.json").read_text(encoding="utf-8"))
    return {
        h["step"]: {k: v for k, v in h.items() if k == "loss" or k.startswith("loss/")}
        for h in history
        if "loss" in h
    }


def _weights(output: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(str(output / "model.safetensors"))


def _assert_same_run(output: Path, reference: Path) -> None:
    losses, expected = _losses(output), _losses(reference)
    assert sorted(losses) == list(range(1, STEPS + 1))
    assert sorted(losses) == sorted(expected)
    for step, logged in losses.items():
        # The mixture's sources too: each rank's sums of token losses, reduced across ranks.
        assert sorted(logged) == ["loss", "loss/a", "loss/b"]
        for key, value in logged.items():
            assert abs(value - expected[step][key]) < TOLERANCE, (step, key, value)
    weights, reference_weights = _weights(output), _weights(reference)
    assert sorted(weights) == sorted(reference_weights)
    worst = max(float(np.abs(weights[k] - reference_weights[k]).max()) for k in weights)
    assert worst < TOLERANCE


def _environment(**extra: str) -> dict[str, str]:
    # One thread per process: the two ranks share this machine's cores.
    return {**os.environ, "OMP_NUM_THREADS": "1", **extra}


def _run(command: list[str], timeout: float = 300, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        command, capture_output=True, text=True, env=_environment(**env), timeout=timeout
    )


def test_two_processes_train_as_one_process_with_the_doubled_batch(
    two_sources: tuple[Path, Path], one_process: Path, tmp_path: Path
) -> None:
    """`mixcore train --nproc-per-node 2`, data parallel over gloo, and a resume of it."""
    output = tmp_path / "out"
    config = _config(two_sources, output, batch=4, save_strategy="steps", save_steps=2)
    path = _write(tmp_path, config, "config.json")
    command = [sys.executable, "-m", "mixcore", "train", "--config", str(path),
               "--nproc-per-node", "2"]  # fmt: skip
    result = _run(command)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "launching 2 process(es) of 2 in all" in result.stdout
    _assert_same_run(output, one_process)
    # Every rank's log is in output_dir, recorded as the run's own; rank 0 alone wrote the rest.
    logs = output / "logs"
    for rank in (0, 1):
        log = (logs / f"workerlog.{rank}").read_text(encoding="utf-8")
        assert f"step {STEPS}/{STEPS}: loss" in log
        assert (logs / f"rank_exit.{rank}").read_text().strip() == "0"
    assert "loss curve:" in (logs / "workerlog.0").read_text(encoding="utf-8")
    assert "loss curve:" not in (logs / "workerlog.1").read_text(encoding="utf-8")
    record = json.loads((output / "mixcore_run.json").read_text(encoding="utf-8"))
    assert record["status"] == "finished"
    assert "logs" in record["files"] and "model.safetensors" in record["files"]
    # Resumed in 2 processes from the checkpoint both wrote at step 2: the same last step and
    # weights (the optimizer read by rank 0 as one card reads it, then broadcast).
    resumed = _run([*command, "--resume-from-checkpoint", str(output / "checkpoint-2")])
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "resuming from" in resumed.stdout
    _assert_same_run(output, one_process)


def test_sharding_stage1_under_paddles_launcher_trains_as_one_process(
    two_sources: tuple[Path, Path], one_process: Path, tmp_path: Path
) -> None:
    """The user's own `python -m paddle.distributed.launch`, its logs in output_dir, sharding
    stage 1 over both ranks (optimizer states split in two), and a checkpoint saved on the way."""
    output = tmp_path / "out"
    config = _config(
        two_sources,
        output,
        batch=4,
        sharding="stage1",
        sharding_parallel_degree=2,
        save_strategy="steps",
        save_steps=2,
    )
    path = _write(tmp_path, config, "config.json")
    result = _run([
        sys.executable, "-m", "paddle.distributed.launch", "--nproc_per_node", "2",
        "--log_dir", str(output / "logs"),
        sys.executable, "-m", "mixcore", "train", "--config", str(path),
    ])  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    log = (output / "logs" / "workerlog.0").read_text(encoding="utf-8")
    assert "sharding_degree: 2" in log and "dp_degree: 1" in log
    _assert_same_run(output, one_process)
    checkpoint = output / "checkpoint-2"
    assert (checkpoint / "mixcore_checkpoint.json").is_file()
    assert len(list(checkpoint.glob("optimizer-*-of-00002.safetensors"))) == 2
    record = json.loads((output / "mixcore_run.json").read_text(encoding="utf-8"))
    assert "logs" in record["files"]


def test_a_failing_rank_ends_the_launch_with_its_exit_code(
    two_sources: tuple[Path, Path], tmp_path: Path
) -> None:
    """One record's image is not an image: the rank whose batch holds it stops with the data
    error (exit 2), the launcher stops the other, which waited for it in a collective, and
    the command says which process failed and why, with its exit code, instead of hanging."""
    shutil.copytree(two_sources[0].parent / "images", tmp_path / "images")
    records = json.loads(two_sources[0].read_text(encoding="utf-8"))
    image = records[3]["conversations"][0][0].split("<img>")[1].split("</img>")[0]
    (tmp_path / image).write_bytes(b"not a picture")
    data = tmp_path / "a.json"
    data.write_text(json.dumps(records), encoding="utf-8")
    config = _config((data, two_sources[1]), tmp_path / "out", batch=4)
    path = _write(tmp_path, config, "config.json")
    start = time.monotonic()
    # 7 steps of 8 samples reach every one of the 49 samples: the bad one is in one rank's batch.
    result = _run([sys.executable, "-m", "mixcore", "train", "--config", str(path),
                   "--nproc-per-node", "2", "--max-steps", "7"], timeout=240)  # fmt: skip
    assert result.returncode == 2, result.stdout[-3000:] + result.stderr[-3000:]
    assert time.monotonic() - start < 200
    assert "of this node failed (exit code 2)" in result.stdout
    assert "not an image" in result.stdout


def test_two_machines_of_one_process_each_train_as_one_process(
    two_sources: tuple[Path, Path], one_process: Path, tmp_path: Path
) -> None:
    """`--nnodes 2 --master HOST:PORT --rank R` started twice on this machine, as two machines
    sharing output_dir would: one rendezvous, each machine's logs in logs/node-R."""
    import socket

    with socket.socket() as probe:  # a free port for the rendezvous
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    output = tmp_path / "out"
    path = _write(tmp_path, _config(two_sources, output, batch=4), "config.json")
    command = [sys.executable, "-m", "mixcore", "train", "--config", str(path),
               "--nproc-per-node", "1", "--nnodes", "2", "--master", f"127.0.0.1:{port}"]  # fmt: skip
    nodes = [
        subprocess.Popen(
            [*command, "--rank", str(rank)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=_environment(),
        )
        for rank in (0, 1)
    ]
    outputs = [node.communicate(timeout=300)[0] for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], outputs[0][-2000:] + outputs[1][-2000:]
    _assert_same_run(output, one_process)
    for rank in (0, 1):
        assert (output / "logs" / f"node-{rank}" / "workerlog.0").is_file()
    assert "loss curve:" in outputs[0] and "loss curve:" not in outputs[1]


# Tensor parallel on CPUs: the layout is checked over gloo when asked (validation refuses it
# on a CPU-only machine otherwise: it is for GPUs).
CPU_TP = {"MIXCORE_CPU_TENSOR_PARALLEL": "1"}


def test_tensor_parallel_ranks_train_as_one_process_and_save_whole_checkpoints(
    two_sources: tuple[Path, Path], one_process: Path, tmp_path: Path
) -> None:
    """tensor_parallel_degree 2 over 2 processes: each rank holds half of every split weight
    and the same batch of 8, so the run is the one process of batch 8. Its checkpoints hold
    the whole weights (gathered), so it resumes at degree 2 and on one card alike."""
    output = tmp_path / "out"
    config = _config(
        two_sources, output, batch=8, tensor_parallel_degree=2,
        save_strategy="steps", save_steps=2,
    )  # fmt: skip
    path = _write(tmp_path, config, "config.json")
    command = [sys.executable, "-m", "mixcore", "train", "--config", str(path),
               "--nproc-per-node", "2"]  # fmt: skip
    result = _run(command, **CPU_TP)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for rank in (0, 1):
        log = (output / "logs" / f"workerlog.{rank}").read_text(encoding="utf-8")
        assert f"weights split over 2 ranks (this is rank {rank})" in log
        assert "mp_degree: 2" in log and "dp_degree: 1" in log
    _assert_same_run(output, one_process)
    # The checkpoint is whole: the shapes of one card's model, in one card's layout.
    from safetensors.numpy import load_file

    checkpoint = output / "checkpoint-2"
    weights = load_file(str(checkpoint / "model-00001-of-00001.safetensors"))
    meta = json.loads((checkpoint / "mixcore_checkpoint.json").read_text(encoding="utf-8"))
    assert {k: list(v.shape) for k, v in weights.items()} == meta["tensors"]
    assert weights["llm.qwen.h.0.attn.c_attn.weight"].shape == (64, 192)
    states = load_file(str(checkpoint / "optimizer-00001-of-00001.safetensors"))
    assert states["llm.qwen.h.0.attn.c_attn.weight/moment1_0"].shape == (64, 192)
    assert not list(checkpoint.glob("*tp0*"))
    on_one_card = tmp_path / "one-card"
    shutil.copytree(output, on_one_card)
    # Resumed at degree 2: the same last step and weights.
    resumed = _run([*command, "--resume-from-checkpoint", str(checkpoint)], **CPU_TP)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    _assert_same_run(output, one_process)
    # Resumed on one card, from the same checkpoint of the degree-2 run.
    single = _write(tmp_path, _config(two_sources, on_one_card, batch=8), "single.json")
    result = run_cli(
        ["train", "--config", str(single), "--resume-from-checkpoint",
         str(on_one_card / "checkpoint-2")],
        entry_points=True,
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    _assert_same_run(on_one_card, one_process)


def test_tensor_parallel_lora_trains_as_one_process(
    two_sources: tuple[Path, Path], tmp_path: Path
) -> None:
    """LoRA on the split layers: a column layer's lora_B and a row layer's lora_A are split,
    the other matrix is whole on every rank and sums its gradient over them."""
    from safetensors.numpy import load_file

    lora = {"lora": True, "lora_rank": 4}
    reference = tmp_path / "one"
    config = _write(tmp_path, _config(two_sources, reference, batch=8, **lora), "one.json")
    assert run_cli(["train", "--config", str(config)], entry_points=True).exit_code == 0
    output = tmp_path / "tp"
    config = _config(two_sources, output, batch=8, tensor_parallel_degree=2, **lora)
    path = _write(tmp_path, config, "tp.json")
    result = _run(
        [sys.executable, "-m", "mixcore", "train", "--config", str(path), "--nproc-per-node", "2"],
        **CPU_TP,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    losses, expected = _losses(output), _losses(reference)
    assert sorted(losses) == sorted(expected) == list(range(1, STEPS + 1))
    for step, logged in losses.items():
        assert abs(logged["loss"] - expected[step]["loss"]) < TOLERANCE, (step, logged)
    adapter = "peft_model-00001-of-00001.safetensors"
    trained, wanted = load_file(str(output / adapter)), load_file(str(reference / adapter))
    assert sorted(trained) == sorted(wanted)
    assert any(np.abs(v).max() > 0 for k, v in wanted.items() if "lora_B" in k)  # it moved
    assert max(float(np.abs(trained[k] - wanted[k]).max()) for k in wanted) < TOLERANCE


@pytest.mark.parametrize("model", ["blip2/tiny", "blip2/tiny-t5", "visualglm/tiny"])
def test_tensor_parallel_trains_every_family_as_one_process(
    two_sources: tuple[Path, Path], tmp_path: Path, model: str
) -> None:
    """BLIP-2's OPT (a head on the tied embedding table, fed the decoder's output object) and
    Flan-T5, VisualGLM's ChatGLM (a tied head): split by their plans at degree 2, the same
    losses and final weights as one process."""
    reference = tmp_path / "one"
    extra = {"model_name_or_path": model, "save_strategy": "no"}
    config = _write(tmp_path, _config(two_sources, reference, batch=8) | extra, "one.json")
    result = run_cli(["train", "--config", str(config)], entry_points=True)
    assert result.exit_code == 0, result.stderr
    output = tmp_path / "tp"
    config = _config(two_sources, output, batch=8, tensor_parallel_degree=2) | extra
    path = _write(tmp_path, config, "tp.json")
    result = _run(
        [sys.executable, "-m", "mixcore", "train", "--config", str(path), "--nproc-per-node", "2"],
        **CPU_TP,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "weights split over 2 ranks" in (output / "logs" / "workerlog.1").read_text("utf-8")
    _assert_same_run(output, reference)
