"""`mixcore train` on streamed, sharded sources: weighted mixing, packing per buffer, exact resume.

Two sources: JSON Lines shards (images beside them) and webdataset ``.tar`` shards whose samples
are ``KEY.json`` + ``KEY.png``. A run stopped mid-shard and resumed from its checkpoint trains on
exactly what the uninterrupted run trained on, with the same losses and weights.
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

COLORS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}
JSONL_SHARDS, JSONL_RECORDS = 3, 10
TAR_SHARDS, TAR_RECORDS = 2, 9


def _png(color: tuple[int, int, int]) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), color).save(buffer, format="PNG")
    return buffer.getvalue()


def write_sharded_sources(folder: Path, bad_tar_record: tuple[int, int] | None = None) -> Path:
    """``folder/jsonl/part-*.jsonl`` (with ``images/``) and ``folder/tar/shard-*.tar``."""
    names = list(COLORS)
    jsonl = folder / "jsonl"
    (jsonl / "images").mkdir(parents=True)
    for name, color in COLORS.items():
        (jsonl / "images" / f"{name}.png").write_bytes(_png(color))
    for shard in range(JSONL_SHARDS):
        lines = []
        for r in range(JSONL_RECORDS):
            color = names[(shard * 7 + r) % 3]
            lines.append(
                json.dumps(
                    {
                        "image": f"images/{color}.png",
                        "conversations": [[f"What colour is it? ({shard}.{r})", color]],
                    }
                )
            )
        (jsonl / f"part-{shard}.jsonl").write_text("\n".join(lines) + "\n")
    tars = folder / "tar"
    tars.mkdir()
    for shard in range(TAR_SHARDS):
        with tarfile.open(tars / f"shard-{shard}.tar", "w") as archive:
            for r in range(TAR_RECORDS):
                key = f"s{shard}-{r:04d}"
                color = names[(shard + r * 2) % 3]
                record = {
                    "messages": [
                        {"role": "user", "content": f"Name the colour, sample {key}."},
                        {"role": "assistant", "content": color},
                    ]
                }
                if bad_tar_record == (shard, r):
                    record = {"messages": [{"role": "user", "content": "no reply"}]}
                for ext, data in (
                    ("json", json.dumps(record).encode()),
                    ("png", _png(COLORS[color])),
                ):
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size = len(data)
                    archive.addfile(info, io.BytesIO(data))
    return folder


def stream_config(folder: Path, out: Path, **overrides):
    config = {
        "model_name_or_path": "qwen_vl/tiny",
        "model_options": {"random_init": True},
        "dataset": {
            "train": [
                {
                    "name": "chatml_dataset",
                    "data_files": "data/jsonl/part-*.jsonl",
                    "label": "jsonl",
                    "weight": 0.6,
                    "streaming": True,
                },
                {
                    "name": "chatml_dataset",
                    "data_files": ["data/tar/shard-0.tar", "data/tar/shard-1.tar"],
                    "label": "tar",
                    "weight": 0.4,
                    "streaming": True,
                },
            ],
            "stream_buffer": 10,
        },
        "output_dir": str(out),
        "per_device_train_batch_size": 4,
        "learning_rate": 0.002,
        "max_steps": 10,
        "logging_steps": 1,
        "save_strategy": "steps",
        "save_steps": 3,
        "max_length": 96,
        # Constant, so that a run stopped early (a smaller max_steps) has the same schedule.
        "lr_scheduler_type": "constant",
        "mixtoken": True,
        "seed": 5,
        **overrides,
    }
    path = folder / f"config-{out.name}.json"
    path.write_text(json.dumps(config))
    return path


def losses(out: Path) -> dict[int, float]:
    history = json.loads((out / "log_history.json").read_text())
    return {h["step"]: h["loss"] for h in history if "loss" in h}


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("stream")
    write_sharded_sources(root / "data")
    return root


@pytest.fixture(scope="module")
def straight(data_root, run_mixcore):
    out = data_root / "straight"
    result = run_mixcore("train", "--config", str(stream_config(data_root, out)))
    assert result.returncode == 0, result.stderr[-3000:]
    return out, result.stdout


def test_streamed_mixture_trains_and_reports_its_sources(straight):
    out, stdout = straight
    assert "train data: a stream of 2 source(s), drawn in blocks of 10 samples (seed 5)" in stdout
    assert "jsonl  weight 0.6 ( 60.0%), 3 shards" in stdout
    assert "tar    weight 0.4 ( 40.0%), 2 shards" in stdout
    steps = losses(out)
    assert sorted(steps) == list(range(1, 11))
    history = json.loads((out / "log_history.json").read_text())
    assert any("loss/jsonl" in h and "loss/tar" in h for h in history)
    state = json.loads((out / "checkpoint-3" / "stream_state.json").read_text())
    assert state["items"] == 12 and state["seed"] == 5 and state["pack"] is True
    record = json.loads((out / "checkpoint-3" / "mixcore_checkpoint.json").read_text())
    assert "stream_state.json" in record["files"]


def same_weights(a: Path, b: Path, tolerance: float = 1e-6) -> bool:
    import numpy as np
    from safetensors.numpy import load_file

    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    return wa.keys() == wb.keys() and all(
        np.allclose(wa[k], wb[k], rtol=0, atol=tolerance) for k in wa
    )


@pytest.mark.parametrize("stop", [3, 6])
def test_stream_resumed_mid_shard_gives_the_uninterrupted_losses(
    data_root, straight, run_mixcore, stop
):
    out, _ = straight
    checkpoint = out / f"checkpoint-{stop}"
    state = json.loads((checkpoint / "stream_state.json").read_text())
    # Stopped inside a block of the buffer and inside a shard of a source, not at a boundary.
    assert state["items"] == stop * 4 and state["offset"] > 0
    assert any(record > 0 for _, _, record in state["positions"]), state
    resumed = data_root / f"resumed-{stop}"
    config = stream_config(data_root, resumed, resume_from_checkpoint=str(checkpoint))
    result = run_mixcore("train", "--config", str(config))
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"resuming from {checkpoint}" in result.stdout
    a, b = losses(out), losses(resumed)
    later = sorted(s for s in b if s > stop)  # the history before the stop comes with it
    assert later == list(range(stop + 1, 11))
    assert all(abs(a[s] - b[s]) <= 1e-6 for s in later), [(s, a[s], b[s]) for s in later]
    assert same_weights(out, resumed)


def test_a_run_stopped_mid_shard_and_resumed_gives_the_uninterrupted_losses(
    data_root, straight, run_mixcore
):
    out, _ = straight
    stopped = data_root / "stopped"
    config = stream_config(data_root, stopped, max_steps=5, save_steps=5)
    result = run_mixcore("train", "--config", str(config))
    assert result.returncode == 0, result.stderr[-3000:]
    checkpoint = stopped / "checkpoint-5"
    state = json.loads((checkpoint / "stream_state.json").read_text())
    assert state["items"] == 20 and any(record > 0 for _, _, record in state["positions"])
    resumed = data_root / "resumed-after-stop"
    config = stream_config(data_root, resumed, resume_from_checkpoint=str(checkpoint))
    result = run_mixcore("train", "--config", str(config))
    assert result.returncode == 0, result.stderr[-3000:]
    a, b = losses(out), losses(resumed)
    later = sorted(s for s in b if s > 5)
    assert later == list(range(6, 11))
    assert all(abs(a[s] - b[s]) <= 1e-6 for s in later), [(s, a[s], b[s]) for s in later]
    assert same_weights(out, resumed)


def test_streaming_without_max_steps_is_a_config_error(data_root, run_mixcore):
    config = stream_config(data_root, data_root / "no-steps", max_steps=-1)
    result = run_mixcore("validate", "--config", str(config))
    assert result.returncode != 0
    assert "$.max_steps" in result.stdout + result.stderr
    assert "set max_steps" in result.stdout + result.stderr


def test_bad_tar_record_is_skipped_and_named_with_its_shard_and_index(tmp_path, run_mixcore):
    write_sharded_sources(tmp_path / "data", bad_tar_record=(0, 2))
    config = stream_config(
        tmp_path,
        tmp_path / "out",
        on_bad_sample="skip",
        max_steps=4,
        save_strategy="no",
        mixtoken=False,
    )
    result = run_mixcore("train", "--config", str(config))
    assert result.returncode == 0, result.stderr[-3000:]
    shard = tmp_path / "data" / "tar" / "shard-0.tar"
    assert f"skipped {shard} record 2: sample 's0-0002'" in result.stdout
    skipped = json.loads((tmp_path / "out" / "skipped_samples.json").read_text())
    assert [(s["source"], s["index"]) for s in skipped] == [(str(shard), 2)]
