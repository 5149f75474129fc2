"""Checkpoints are complete or recognisably not, hold no pickle, and resume exactly."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from safetensors.numpy import load_file

from mixcore import run_folder

pytestmark = pytest.mark.slow


def losses(output_dir):
    history = json.loads((output_dir / "log_history.json").read_text())
    return {h["step"]: h["loss"] for h in history if "loss" in h}


def same_weights(a, b, tolerance=1e-6):
    # Bit-equal in every resume seen here; MKL promises equal results only up to rounding when
    # buffers are aligned differently, so the check allows float32 rounding and no more.
    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    return wa.keys() == wb.keys() and all(
        np.allclose(wa[k], wb[k], rtol=0, atol=tolerance) for k in wa
    )


def max_difference(a, b):
    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    return max(float(np.abs(wa[k] - wb[k]).max()) for k in wa)


def same_losses(a, b, after, tolerance=1e-6):
    later = [s for s in a if s > after]
    return bool(later) and all(abs(a[s] - b[s]) <= tolerance for s in later)


# 320 records / batch 16 = 20 steps an epoch: steps 20 and 30 are an epoch end and mid-epoch 2.
EPOCHS = {"max_steps": 44, "save_strategy": "steps", "save_steps": 10, "logging_steps": 2}


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory, shapes_dir, run_mixcore):
    folder = tmp_path_factory.mktemp("straight")
    config = _train_config(folder, shapes_dir, folder / "out", packed=True)
    result = run_mixcore("train", "--config", str(config))
    assert result.returncode == 0, result.stderr[-3000:]
    return folder / "out"


def _train_config(folder, shapes_dir, out, packed=False, **overrides):
    train = [
        {
            "name": "chatml_dataset",
            "data_files": str(shapes_dir / "train.json"),
            "label": f"part{n}",
            "weight": weight,
        }
        for n, weight in enumerate((0.7, 0.3))
    ]
    config = {
        "model_name_or_path": "qwen_vl/tiny",
        "model_options": {"random_init": True},
        "dataset": {"train": train, "train_samples": 320},
        "output_dir": str(out),
        "per_device_train_batch_size": 16,
        "learning_rate": 0.002,
        "max_length": 96,
        "seed": 11,
        "dataloader_num_workers": 2,
        **EPOCHS,
        **({"mixtoken": True} if packed else {}),
        **overrides,
    }
    path = folder / f"config-{out.name}.json"
    path.write_text(json.dumps(config))
    return path


def test_checkpoints_hold_no_pickle_and_record_their_files(straight_run):
    folder = straight_run / "checkpoint-20"
    found = run_folder.status(folder)
    assert found.complete, found.reason
    names = {p.name for p in folder.iterdir()}
    assert not names & set(run_folder.PICKLED_STATE)
    assert {"rng_state.json", "scheduler.json", "mixcore_checkpoint.json"} <= names
    record = json.loads((folder / "mixcore_checkpoint.json").read_text())
    assert record["global_step"] == 20 and record["model"] == "qwen_vl"
    assert set(record["files"]) == names - {"mixcore_checkpoint.json"}


@pytest.mark.parametrize("stop", [20, 30])
def test_resume_is_exact_across_epochs_with_packing_mixture_and_workers(
    run_mixcore, tmp_path, shapes_dir, straight_run, stop
):
    # The straight run's own checkpoint, as a run stopped there leaves it.
    out = tmp_path / "out"
    resumed = _train_config(
        tmp_path,
        shapes_dir,
        out,
        packed=True,
        resume_from_checkpoint=str(straight_run / f"checkpoint-{stop}"),
    )
    result = run_mixcore("train", "--config", str(resumed))
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"resuming from {straight_run / f'checkpoint-{stop}'}" in result.stdout
    a, b = losses(straight_run), losses(out)
    assert same_losses(a, b, stop), [(s, a[s], b[s]) for s in a if s > stop]
    assert same_weights(straight_run, out)


def test_kill_during_a_save_leaves_the_last_complete_checkpoint_and_resume_is_exact(
    run_mixcore, tmp_path, shapes_dir, straight_run
):
    out = tmp_path / "out"
    config = _train_config(tmp_path, shapes_dir, out, packed=True)
    # The real command, killed with SIGKILL while checkpoint-30's files are being flushed.
    driver = tmp_path / "killed_run.py"
    driver.write_text(
        textwrap.dedent(f"""
        import os, signal, sys
        from mixcore.train import checkpoints
        flush = checkpoints.fsync_tree
        def flush_then_die(folder):
            if folder.name == ".partial-checkpoint-30":  # the run and its loader workers
                os.killpg(0, signal.SIGKILL)
            flush(folder)
        checkpoints.fsync_tree = flush_then_die
        from mixcore.cli import main
        sys.exit(main(["train", "--config", {str(config)!r}]))
    """)
    )
    killed = subprocess.run(
        [sys.executable, str(driver)],
        capture_output=True,
        text=True,
        timeout=600,
        start_new_session=True,  # its own process group, which the driver kills whole
        env={**os.environ, "OMP_NUM_THREADS": "2"},
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert (out / ".partial-checkpoint-30").is_dir()
    assert not (out / "checkpoint-30").exists()
    assert run_folder.status(out / "checkpoint-20").complete
    # A checkpoint folder another tool left, newer than the last complete one, is passed over.
    (out / "checkpoint-25").mkdir()
    (out / "checkpoint-25" / "model.safetensors").write_bytes(b"partial")

    resumed = _train_config(tmp_path, shapes_dir, out, packed=True, resume_from_checkpoint=True)
    result = run_mixcore("train", "--config", str(resumed))
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"resuming from {out / 'checkpoint-20'}" in result.stdout
    a, b = losses(straight_run), losses(out)
    # The killed run trained its first 20 steps in another process than the straight run:
    # usually bit-equal, but MKL may round differently from one process to another (seen once
    # in a full suite), so the comparison allows what that rounding grows into over 24 steps.
    # A wrong data order or a lost RNG state moves losses by 0.1 or more.
    assert same_losses(a, b, 20, tolerance=1e-4), [(s, a[s], b.get(s)) for s in a if s > 20]
    assert same_weights(straight_run, out, tolerance=1e-4), max_difference(straight_run, out)
    assert not (out / ".partial-checkpoint-30").exists()


def test_checkpoints_that_cannot_be_resumed_are_named_by_validate(
    run_mixcore, tmp_path, shapes_dir, straight_run, write_train_config
):
    def validate(**overrides):
        config = _train_config(tmp_path, shapes_dir, tmp_path / "new", **overrides)
        result = run_mixcore("validate", "--config", str(config), "--json")
        assert result.returncode == 2, result.stdout
        [issue] = [
            i
            for i in json.loads(result.stdout)["issues"]
            if i["path"] == "$.resume_from_checkpoint"
        ]
        return issue["message"]

    good = straight_run / "checkpoint-20"
    assert "does not exist" in validate(resume_from_checkpoint=str(tmp_path / "nope"))
    empty = tmp_path / "checkpoint-7"
    empty.mkdir()
    assert "it is empty" in validate(resume_from_checkpoint=str(empty))
    truncated = tmp_path / "truncated" / "checkpoint-20"
    truncated.parent.mkdir()
    import shutil

    shutil.copytree(good, truncated)
    weights = truncated / "model-00001-of-00001.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    assert "truncated" in validate(resume_from_checkpoint=str(truncated))
    corrupt = tmp_path / "corrupt" / "checkpoint-20"
    shutil.copytree(good, corrupt)
    weights = corrupt / "model-00001-of-00001.safetensors"
    data = bytearray(weights.read_bytes())
    data[8:20] = b"x" * 12  # same size, header overwritten
    weights.write_bytes(bytes(data))
    assert "is corrupt (the header is not valid JSON" in validate(
        resume_from_checkpoint=str(corrupt)
    )
    assert "no complete checkpoint" in validate(resume_from_checkpoint=True)
    into_lora = validate(resume_from_checkpoint=str(good), lora=True)
    assert "full fine-tuning" in into_lora and "LoRA" in into_lora


def test_a_checkpoint_of_another_shape_or_rank_is_refused_at_start(
    run_mixcore, tmp_path, shapes_dir, write_train_config
):
    lora = write_train_config(
        output_dir=str(tmp_path / "lora"),
        lora=True,
        lora_rank=4,
        max_steps=2,
        save_strategy="steps",
        save_steps=2,
    )
    assert run_mixcore("train", "--config", str(lora)).returncode == 0
    other_rank = write_train_config(
        output_dir=str(tmp_path / "lora2"),
        lora=True,
        lora_rank=8,
        max_steps=4,
        resume_from_checkpoint=str(tmp_path / "lora" / "checkpoint-2"),
    )
    result = run_mixcore("train", "--config", str(other_rank))
    assert result.returncode == 2 and "lora_rank is 4" in result.stderr
    assert not (tmp_path / "lora2").exists()
    # A wider model: same names, other shapes (found when the model is built).
    sft = write_train_config(
        output_dir=str(tmp_path / "sft"), max_steps=2, save_strategy="steps", save_steps=2
    )
    assert run_mixcore("train", "--config", str(sft)).returncode == 0
    wider = write_train_config(
        output_dir=str(tmp_path / "wide"),
        max_steps=4,
        model_options={"random_init": True, "config_overrides": {"intermediate_size": 128}},
        resume_from_checkpoint=str(tmp_path / "sft" / "checkpoint-2"),
    )
    result = run_mixcore("train", "--config", str(wider))
    assert result.returncode == 2, result.stderr[-2000:]
    assert "has shape" in result.stderr and "Traceback" not in result.stderr


def test_a_checkpoint_holding_pickles_is_never_loaded(
    run_mixcore, tmp_path, straight_run, shapes_dir
):
    import shutil

    crafted = tmp_path / "crafted" / "checkpoint-20"
    shutil.copytree(straight_run / "checkpoint-20", crafted)
    marker = tmp_path / "pwned"
    (crafted / "rng_state.pth").write_bytes(
        b"cos\nsystem\n(V" + f"touch {marker}".encode() + b"\ntR."
    )
    config = _train_config(
        tmp_path, shapes_dir, tmp_path / "out", resume_from_checkpoint=str(crafted)
    )
    result = run_mixcore("train", "--config", str(config))
    assert result.returncode == 2
    assert "pickle files (rng_state.pth)" in result.stderr
    assert not marker.exists()


@pytest.fixture
def small_disk(tmp_path):
    """A 6 MiB file system: room for one tiny checkpoint and the final model, not two."""
    import subprocess as sp

    mount = tmp_path / "disk"
    mount.mkdir()
    if sp.run(
        ["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(mount)], capture_output=True
    ).returncode:
        pytest.skip("mounting a small tmpfs needs root")  # CI and sessions here run as root
    yield mount
    sp.run(["umount", "-l", str(mount)], check=False)


def test_disk_full_during_a_save_is_a_clear_error_and_keeps_the_last_checkpoint(
    run_mixcore, tmp_path, shapes_dir, small_disk, write_train_config
):
    out = small_disk / "out"
    config = write_train_config(
        output_dir=str(out), max_steps=8, save_strategy="steps", save_steps=2
    )
    result = run_mixcore("train", "--config", str(config))
    assert result.returncode == 1, result.stderr[-2000:]
    assert "could not save checkpoint-" in result.stderr
    assert "No space left on device" in result.stderr and "Traceback" not in result.stderr
    found = [run_folder.status(p) for p in out.glob("checkpoint-*")]
    assert found and all(f.complete for f in found)
    assert not list(out.glob(".partial-*"))
