"""`mixcore train` on mixtures, with MIXToken packing, over-long policies and loader workers."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def split_into_sources(tmp_path, shapes_dir, sizes=(60, 40, 20)):
    """Three data files cut from the generated shapes set, sharing its image folder."""
    data = tmp_path / "data"
    shutil.copytree(shapes_dir / "images", data / "images")
    records = json.loads((shapes_dir / "train.json").read_text())
    files, start = [], 0
    for n, size in enumerate(sizes):
        path = data / f"part{n}.json"
        path.write_text(json.dumps(records[start : start + size]))
        files.append(path)
        start += size
    return files


def test_weighted_mixture_reports_draws_and_logs_loss_per_source(
    run_mixcore, tmp_path, shapes_dir, write_train_config
):
    files = split_into_sources(tmp_path, shapes_dir)
    train = [
        {"name": "chatml_dataset", "data_files": str(f), "label": label, "weight": w}
        for f, label, w in zip(files, ("big", "mid", "small"), (0.5, 0.3, 0.2), strict=True)
    ]
    config = write_train_config(
        dataset={"train": train, "train_samples": 200},
        max_steps=4,
        logging_steps=2,
        per_device_train_batch_size=8,
    )
    result = run_mixcore("train", "--config", str(config))
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert "train data: 200 samples (seed 11)" in out
    assert "big" in out and "100 drawn ( 50.0%) of 60 usable, 1.67x each  [weight 0.5]" in out
    assert "60 drawn ( 30.0%) of 40 usable" in out and "40 drawn ( 20.0%) of 20 usable" in out
    history = json.loads((tmp_path / "out" / "log_history.json").read_text())
    logged = [h for h in history if "loss" in h]
    assert logged and all({"loss/big", "loss/mid", "loss/small"} <= set(h) for h in logged)
    # Per-source token losses of an untrained model sit near the overall loss, each its own.
    for h in logged:
        parts = [h["loss/big"], h["loss/mid"], h["loss/small"]]
        assert all(0 < p < 20 and abs(p - h["loss"]) < 1.0 for p in parts)
        assert len(set(parts)) == 3
    line = out.split("step 2/4: ", 1)[1].splitlines()[0]
    assert line.startswith("loss ") and ", big " in line and ", small " in line


def test_mixtoken_packs_and_trains(run_mixcore, tmp_path, shapes_dir, write_train_config):
    config = write_train_config(
        mixtoken=True, max_length=256, per_device_train_batch_size=2, max_steps=3
    )
    result = run_mixcore("train", "--config", str(config), "--json")
    assert result.returncode == 0, result.stderr[-3000:]
    line = next(x for x in result.stdout.splitlines() if "packed into" in x)
    # A shapes sample is ~80 tokens with its image and system prompt: three fit in 256.
    packs = int(line.split("packed into ")[1].split(" ")[0].replace(",", ""))
    filled = float(line.split("(")[1].split("%")[0])
    assert packs <= 320 / 3 + 1 and filled > 80
    summary = json.loads(result.stdout[result.stdout.index("{\n") :])
    assert summary["global_step"] == 3 and summary["train_loss"] > 0


def test_overlong_samples_follow_the_policy(run_mixcore, tmp_path, shapes_dir, write_train_config):
    data = tmp_path / "data"
    shutil.copytree(shapes_dir / "images", data / "images")
    records = json.loads((shapes_dir / "train.json").read_text())[:6]
    records[4]["conversations"][0][1] = "long " * 200  # far beyond max_length 96
    (data / "train.json").write_text(json.dumps(records))
    dataset = {"train": [{"name": "chatml_dataset", "data_files": str(data / "train.json")}]}

    config = write_train_config(dataset=dataset, overlong_policy="error", max_steps=1)
    failed = run_mixcore("train", "--config", str(config))
    assert failed.returncode == 2 and "Traceback" not in failed.stderr
    assert "train.json record 4" in failed.stderr and "exceed max_length 96" in failed.stderr

    config = write_train_config(dataset=dataset, overlong_policy="drop", max_steps=1)
    dropped = run_mixcore("train", "--config", str(config), "--json")
    assert dropped.returncode == 0, dropped.stderr[-2000:]
    assert "train data: 5 samples" in dropped.stdout
    summary = json.loads(dropped.stdout[dropped.stdout.index("{\n") :])
    assert summary["skipped"] == {"overlong": 1}
    skipped = json.loads((tmp_path / "out" / "skipped_samples.json").read_text())
    assert skipped[0]["index"] == 4 and "exceed max_length 96" in skipped[0]["reason"]


def test_loader_workers_feed_the_trainer_and_bad_images_still_stop_or_count(
    run_mixcore, tmp_path, shapes_dir, write_train_config
):
    data = tmp_path / "data"
    shutil.copytree(shapes_dir / "images", data / "images")
    records = json.loads((shapes_dir / "train.json").read_text())[:12]
    (data / "images" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    records[7] = {"image": "images/broken.png", "conversations": [["What colour?", "red"]]}
    (data / "train.json").write_text(json.dumps(records))
    dataset = {"train": [{"name": "chatml_dataset", "data_files": str(data / "train.json")}]}
    common = {"dataset": dataset, "dataloader_num_workers": 2, "per_device_train_batch_size": 4}

    config = write_train_config(**common, max_steps=3)
    failed = run_mixcore("train", "--config", str(config))
    assert failed.returncode == 2, failed.stderr[-2000:]
    assert "train.json record 7" in failed.stderr and "broken.png" in failed.stderr
    assert "Traceback" not in failed.stderr

    config = write_train_config(**common, max_steps=6, on_bad_sample="skip")
    ok = run_mixcore("train", "--config", str(config), "--json")
    assert ok.returncode == 0, ok.stderr[-2000:]
    summary = json.loads(ok.stdout[ok.stdout.index("{\n") :])
    assert summary["skipped"] == {"batch": 1}
    assert 0 <= summary["data_wait_fraction"] < 1
    assert "waited for batches" in ok.stdout and "dataloader_num_workers=2" in ok.stdout


def test_example_mixture_of_caption_vqa_and_chat_sources_trains_packed(run_mixcore, tmp_path):
    """The shipped example: three layouts, three readers, weights, packing, eval per source."""
    example = Path(__file__).parents[2] / "examples" / "configs" / "qwen_vl_mixture_mixtoken.json"
    config = json.loads(example.read_text())
    for entry in config["dataset"]["train"] + config["dataset"]["eval"]:
        entry["train_records"] = 60
        entry["val_records"] = 8
    config["dataset"]["train_samples"] = 100
    config.update(output_dir=str(tmp_path / "out"), logging_steps=2, max_steps=4)
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    result = run_mixcore("train", "--config", str(path))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "captions        50 drawn ( 50.0%) of 120 usable" in result.stdout  # 2 captions/image
    assert "packed into" in result.stdout
    history = json.loads((tmp_path / "out" / "log_history.json").read_text())
    train = next(h for h in history if "loss" in h)
    assert {"loss/captions", "loss/vqa", "loss/chat"} <= set(train)
    evaluation = next(h for h in history if "eval_loss" in h)
    assert {"eval_loss/vqa", "eval_loss/chat"} <= set(evaluation)
    assert "eval_loss/captions" not in evaluation
