"""The dry run checks every sample but decodes each distinct image once."""

from __future__ import annotations

import json

from mixcore.testing import run_cli


def test_shared_images_are_decoded_once_and_a_broken_one_is_named_for_each_sample(
    tmp_path, write_png, write_json
):
    write_png(tmp_path / "red.png", (200, 0, 0), 8)
    write_png(tmp_path / "blue.png", (0, 0, 200), 8)
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    records = [
        {"image": name, "conversations": [[f"what is {i}?", "a colour " * (i % 4 + 1)]]}
        for i, name in enumerate(["red.png", "blue.png"] * 20 + ["broken.png"] * 3)
    ]
    records.append({"image": "red.png", "conversations": [["long " * 300, "reply"]]})
    write_json(tmp_path / "train.json", records)
    config = {
        "model_name_or_path": "qwen_vl/tiny",
        "model_options": {"random_init": True},
        "dataset": {"train": [{"name": "chatml_dataset", "data_files": "train.json"}]},
        "max_length": 128,
        "on_bad_sample": "skip",
        "output_dir": "out",
    }
    write_json(tmp_path / "config.json", config)
    result = run_cli(
        ["train", "--config", str(tmp_path / "config.json"), "--dry-run", "--json"],
        entry_points=True,
    )
    assert result.exit_code == 0, result.stderr[-2000:]
    summary = json.loads(result.stdout[result.stdout.index("{\n") :])
    assert summary["train_checked"] == 44
    # red, blue, the three samples of the broken picture, and the one cut by truncation.
    assert summary["train_preprocessed"] == 6
    for index in (40, 41, 42):
        assert f"record {index}:" in result.stdout
    assert "record 43: no reply token is left within max_length 128" in result.stdout
    assert summary["skipped"] == {"batch": 4}
