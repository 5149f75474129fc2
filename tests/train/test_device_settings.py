"""Device-dependent settings (``device``, ``bf16``/``fp16``): a dry run checks the data and only
notes what this machine lacks; a real run refuses it with a message, never a traceback."""

from __future__ import annotations

import json

import paddle
import pytest

from mixcore.train.run import device_problems

CPU_BUILD = not paddle.device.is_compiled_with_cuda()


def _config(**given):
    return {"bf16": False, "fp16": False, **given}


def test_a_cpu_build_cannot_train_in_half_precision_or_on_a_gpu(monkeypatch) -> None:
    monkeypatch.setattr(paddle.device, "is_compiled_with_cuda", lambda: False)
    assert device_problems(_config()) == []
    assert device_problems(_config(device="cpu")) == []
    (problem,) = device_problems(_config(bf16=True))
    assert problem.startswith("bf16 needs a GPU") and "remove bf16" in problem
    (problem,) = device_problems(_config(device="gpu"))
    assert problem.startswith("device 'gpu': this Paddle build has no gpu support")


def test_a_gpu_build_trains_in_half_precision_unless_told_to_use_the_cpu(monkeypatch) -> None:
    monkeypatch.setattr(paddle.device, "is_compiled_with_cuda", lambda: True)
    assert device_problems(_config(bf16=True)) == []
    assert device_problems(_config(fp16=True, device="gpu")) == []
    (problem,) = device_problems(_config(fp16=True, device="cpu"))
    assert problem.startswith("fp16 needs a GPU") and "device is 'cpu'" in problem


@pytest.mark.slow
@pytest.mark.skipif(not CPU_BUILD, reason="needs a CPU build of Paddle")
@pytest.mark.parametrize("given", [{"bf16": True}, {"device": "gpu"}], ids=["bf16", "gpu"])
def test_dry_run_checks_the_data_and_only_notes_the_device(
    run_mixcore, write_train_config, shapes_dir, given
) -> None:
    # Eight records are enough: the dry run's work is the data, the note is the point here.
    records = json.loads((shapes_dir / "train.json").read_text(encoding="utf-8"))[:8]
    few = shapes_dir / "device_settings_few.json"  # beside the images its records name
    few.write_text(json.dumps(records), encoding="utf-8")
    entry = {"name": "chatml_dataset", "data_files": str(few)}
    path = write_train_config(dataset={"train": [entry]}, **given)
    dry = run_mixcore("train", "--config", str(path), "--dry-run")
    assert dry.returncode == 0, dry.stderr[-2000:]
    assert "a real run on this machine would stop: " in dry.stdout
    real = run_mixcore("train", "--config", str(path))
    assert real.returncode != 0
    assert "Traceback" not in real.stderr
    assert "this Paddle build" in real.stderr or "needs a GPU" in real.stderr
