"""The processed-data cache: a second run reads checked samples and measured lengths back."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from mixcore.api.records import Message, Sample
from mixcore.testing import run_cli
from mixcore.train.data_cache import CachedSamples, DataCache, LengthRecord, write_samples


def test_cached_samples_read_back_what_was_written(tmp_path):
    template = {"system": "be brief", "conversation": ["{{user}}", "{{bot}}"]}
    samples = [
        Sample(
            [Message("user", f"<image>\nq{i} é"), Message("assistant", f"a{i}")],
            images=[tmp_path / f"{i}.png"],
            source="data/train.json",
            index=i,
            dataset="chat",
            chat_template=template if i % 2 else "{{ messages }}",
        )
        for i in range(5)
    ]
    write_samples(tmp_path / "entry", samples, [("data/train.json", 7, "bad record")])
    cached = CachedSamples(tmp_path / "entry")
    assert len(cached) == 5 and list(cached) == samples and cached[-1] == samples[-1]
    assert cached.skipped == [("data/train.json", 7, "bad record")]
    again = pickle.loads(pickle.dumps(cached))  # data-loader workers started by spawn
    assert again[3] == samples[3]
    with pytest.raises(IndexError):
        cached[5]


def test_file_digest_follows_content_not_name(tmp_path):
    cache = DataCache(tmp_path / "cache")
    path = tmp_path / "a.json"
    path.write_text("[1]")
    first = cache.file_digest(path)
    assert cache.file_digest(path) == first
    path.write_text("[2]")
    os.utime(path, ns=(1, 1))  # even with an old modification time, the size or inode tells
    assert cache.file_digest(path) != first


def records(n, bad=()):
    out = []
    for i in range(n):
        if i in bad:
            out.append({"conversations": "not a list"})
        else:
            out.append(
                {"image": "red.png", "conversations": [[f"what is {i}?", "red " * (i % 7 + 1)]]}
            )
    return out


def make_run(tmp_path, write_png, write_json, n=40, bad=(), **dataset):
    write_png(tmp_path / "red.png", (200, 0, 0), 8)
    write_json(tmp_path / "train.json", records(n, bad))
    config = {
        "model_name_or_path": "qwen_vl/tiny",
        "model_options": {"random_init": True},
        "dataset": {"train": [{"name": "chatml_dataset", "data_files": "train.json"}], **dataset},
        "mixtoken": True,
        "max_length": 320,
        "on_bad_sample": "skip",
        "output_dir": "out",
    }
    return write_json(tmp_path / "config.json", config)


def dry_run(config):
    # In process: each run pays the data work, not Python's and Paddle's start again.
    result = run_cli(["train", "--config", str(config), "--dry-run"], entry_points=True)
    assert result.exit_code == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return result.stdout


def test_second_run_reads_samples_and_lengths_from_the_cache(tmp_path, write_png, write_json):
    config = make_run(tmp_path, write_png, write_json, bad=(3,), cache_dir="cache")
    first = dry_run(config)
    assert "from the data cache" not in first
    assert "skipped" in first and "record 3" in first
    entries = list((tmp_path / "cache" / "data" / "sources").iterdir())
    lengths = list((tmp_path / "cache" / "data" / "lengths").rglob("*.npz"))
    assert len(entries) == 1 and len(lengths) == 1

    second = dry_run(config)
    assert "chatml_dataset#0: 39 checked samples from the data cache" in second
    assert "record 3" in second  # the refused record is still reported
    packed = [line for line in second.splitlines() if "packed into" in line]
    assert packed and packed == [line for line in first.splitlines() if "packed into" in line]

    # The lengths are taken from the cache, not measured again: make every sample as long as
    # a whole pack and the plan has one pack per sample.
    with np.load(lengths[0]) as data:
        reasons = data["reasons"]
    np.savez(lengths[0], lengths=np.full(39, 320, dtype=np.int32), reasons=reasons)
    third = dry_run(config)
    assert "packed into 39 sequences of at most 320 tokens (100.0%" in third


def test_a_changed_file_is_read_again(tmp_path, write_png, write_json):
    config = make_run(tmp_path, write_png, write_json, cache_dir="cache")
    dry_run(config)
    write_json(tmp_path / "train.json", records(30))
    out = dry_run(config)
    assert "from the data cache" not in out and "train data: 30 samples" in out


def test_no_cache_when_turned_off(tmp_path, write_png, write_json, monkeypatch):
    config = make_run(tmp_path, write_png, write_json, cache=False, cache_dir="cache")
    dry_run(config)
    assert "from the data cache" not in dry_run(config)
    assert not (tmp_path / "cache").exists()
    monkeypatch.setenv("MIXCORE_CACHE_DIR", "")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    config = make_run(tmp_path, write_png, write_json)
    dry_run(config)
    assert "from the data cache" not in dry_run(config)
    assert not (tmp_path / "home").exists()


def test_an_unwritable_cache_folder_only_costs_the_cache(tmp_path, write_png, write_json):
    (tmp_path / "cache").write_text("a file where the folder would be")
    config = make_run(tmp_path, write_png, write_json, cache_dir="cache")
    out = dry_run(config)
    assert "dry run: every sample checked (40 train)" in out
    assert (tmp_path / "cache").read_text() == "a file where the folder would be"


def test_length_record_round_trip(tmp_path):
    cache = DataCache(tmp_path)
    record = LengthRecord(np.array([3, -1, 9], dtype=np.int32), {1: "cannot encode"})
    cache.write_lengths("source", "model", record)
    back = cache.read_lengths("source", "model")
    assert back is not None and back.lengths.tolist() == [3, -1, 9]
    assert back.reasons == {1: "cannot encode"}
    assert cache.read_lengths("source", "other") is None
    assert Path(cache.lengths_file("source", "model")).parent.is_dir()


def test_bad_records_under_error_stop_the_run_and_leave_no_cache_entry(
    tmp_path, write_png, write_json
):
    config = make_run(tmp_path, write_png, write_json, bad=(3, 9), cache_dir="cache")
    data = json.loads(config.read_text())
    write_json(config, {**data, "on_bad_sample": "error"})
    result = run_cli(["train", "--config", str(config), "--dry-run"], entry_points=True)
    assert result.exit_code != 0
    assert "record 3" in result.stderr and "and 1 more bad record" in result.stderr
    sources = tmp_path / "cache" / "data" / "sources"
    assert not sources.exists() or not any(sources.iterdir())
