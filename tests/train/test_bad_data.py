"""Bad records stop `mixcore train` with the file and record named, or are skipped and counted."""

from __future__ import annotations

import json
import os
import shutil

import pytest

pytestmark = pytest.mark.slow


def make_data(tmp_path, shapes_dir, record):
    """A data folder with two good records from the generated set plus ``record`` at index 2."""
    data = tmp_path / "data"
    shutil.copytree(shapes_dir / "images", data / "images")
    good = json.loads((shapes_dir / "train.json").read_text())[:2]
    (data / "train.json").write_text(json.dumps([*good, record]))
    return data


BAD_RECORDS = {
    "missing image": (
        {"image": "images/nope.png", "conversations": [["What color?", "red"]]},
        "nope.png",
    ),
    "no conversations": ({"image": "images/train_00000.png"}, "conversations"),
    "non-string turn": (
        {"image": "images/train_00000.png", "conversations": [["What color?", 7]]},
        "string",
    ),
    "path escaping the data folder": (
        {"image": "../../etc/passwd", "conversations": [["What color?", "red"]]},
        "leave the data folder",
    ),
}


@pytest.mark.parametrize("kind", sorted(BAD_RECORDS))
def test_bad_record_stops_training_naming_file_and_index(
    run_mixcore, kind, tmp_path, shapes_dir, write_train_config
):
    record, fragment = BAD_RECORDS[kind]
    data = make_data(tmp_path, shapes_dir, record)
    config = write_train_config(
        dataset={"train": [{"name": "chatml_dataset", "data_files": str(data / "train.json")}]}
    )
    result = run_mixcore("train", "--config", str(config))
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    assert "train.json record 2" in result.stderr
    assert fragment in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out" / "model.safetensors").exists()


def test_unreadable_image_is_found_when_used_and_named(
    run_mixcore, tmp_path, shapes_dir, write_train_config
):
    data = make_data(
        tmp_path, shapes_dir, {"image": "images/broken.png", "conversations": [["Q?", "red"]]}
    )
    (data / "images" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    config = write_train_config(
        dataset={"train": [{"name": "chatml_dataset", "data_files": str(data / "train.json")}]},
        per_device_train_batch_size=3,
        max_steps=2,
    )
    result = run_mixcore("train", "--config", str(config))
    assert result.returncode == 2
    assert "train.json record 2" in result.stderr and "broken.png" in result.stderr
    assert "Traceback" not in result.stderr


def test_skip_policy_trains_on_good_records_and_counts_the_bad(
    run_mixcore, tmp_path, shapes_dir, write_train_config
):
    data = make_data(
        tmp_path, shapes_dir, {"image": "images/broken.png", "conversations": [["Q?", "red"]]}
    )
    (data / "images" / "broken.png").write_bytes(b"not a png")
    records = json.loads((data / "train.json").read_text())
    records.append({"conversations": [["only a question"]]})
    (data / "train.json").write_text(json.dumps(records))
    config = write_train_config(
        dataset={"train": [{"name": "chatml_dataset", "data_files": str(data / "train.json")}]},
        on_bad_sample="skip",
        per_device_train_batch_size=3,
        max_steps=2,
    )
    result = run_mixcore("train", "--config", str(config), "--json")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "skipped" in result.stdout and "record 3" in result.stdout
    assert "record 2" in result.stdout
    summary = json.loads(result.stdout[result.stdout.index("{\n") :])
    assert summary["skipped"] == {"build": 1, "batch": 1}
    assert os.path.exists(tmp_path / "out" / "model.safetensors")
