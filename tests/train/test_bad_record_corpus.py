"""A corpus of bad records through `mixcore train`: each stops the run naming its record, or is
skipped and counted with `on_bad_sample: skip`; none crashes and none trains silently.

Each kind of damage is found at its own moment: record checks when the dataset is built (paths,
roles, text), image decoding when a batch is built (lazily, in the data loader), the image-span
check when the sample is tokenized. Runs are in-process through the CLI entry point (the real
command, the real Trainer) to keep the many runs fast.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mixcore.testing import run_cli

pytestmark = pytest.mark.slow

GOOD = 8  # good records first, then one record per kind of damage


def write_images(data: Path, outside: Path, png_claiming_size) -> None:
    images = data / "images"
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(images / "noise.png")
    raw = (images / "noise.png").read_bytes()
    (images / "truncated.png").write_bytes(raw[: len(raw) // 2])
    (images / "huge.png").write_bytes(png_claiming_size(9_500, 9_500))  # just over the budget
    (images / "bomb.png").write_bytes(png_claiming_size(60_000, 60_000))
    (images / "not_an_image.png").write_text("hello, I am text")
    (images / "empty.png").write_bytes(b"")
    Image.new("CMYK", (32, 32), (0, 255, 255, 0)).save(images / "cmyk.jpg", quality=95)
    deep = np.tile(np.linspace(0, 65535, 32, dtype=np.uint16), (32, 1))
    Image.fromarray(deep).save(images / "deep16.png")
    outside.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8)).save(outside / "secret.png")
    os.symlink(outside / "secret.png", images / "link_out.png")


def turn(image: str, question: str = "What colour is the shape?", answer: str = "red") -> dict:
    return {"image": image, "conversations": [[question, answer]]}


#: kind -> (record, fragment of the reason, where it is found). Found "build" means when the
#: dataset is read, "batch" when the sample is loaded for a batch.
BAD = {
    "missing image": (turn("images/nope.png"), "image file not found", "build"),
    "truncated image": (turn("images/truncated.png"), "truncated image", "batch"),
    "huge image": (turn("images/huge.png"), "(90250000 pixels) exceeds limit", "batch"),
    "decompression bomb": (turn("images/bomb.png"), "decompression bomb", "batch"),
    "text file named .png": (turn("images/not_an_image.png"), "not an image", "batch"),
    "empty image file": (turn("images/empty.png"), "not an image", "batch"),
    "empty conversation": ({"image": "images/noise.png", "conversations": []}, "is empty", "build"),
    "empty messages": ({"messages": [], "images": []}, "'messages' is empty", "build"),
    "wrong roles": (
        {
            "messages": [
                {"role": "human", "content": "<image>\nWhat colour?"},
                {"role": "gpt", "content": "red"},
            ],
            "images": ["images/noise.png"],
        },
        "unknown role 'human' (did you mean 'user'?)",
        "build",
    ),
    "non-UTF-8 text": (turn("images/noise.png", "What colour \ud800?"), "not valid UTF-8", "build"),
    "path traversal": (turn("../../etc/passwd"), "leave the data folder", "build"),
    "symlink out of the data folder": (turn("images/link_out.png"), "symlink", "build"),
    "image tokens cut by truncation": (
        turn("images/noise.png", "word " * 15 + "<image>", "red"),
        "cut would fall inside image 1",
        "batch",
    ),
    "placeholder without image": (
        {
            "messages": [
                {"role": "user", "content": "<image>"},
                {"role": "assistant", "content": "x"},
            ]
        },
        "placeholder",
        "build",
    ),
}
# Valid pictures that naive pipelines get wrong; they must train, converted correctly.
CONVERTED = {"CMYK image": turn("images/cmyk.jpg"), "16-bit image": turn("images/deep16.png")}


@pytest.fixture
def corpus(tmp_path: Path, shapes_dir: Path, png_claiming_size) -> tuple[Path, dict[str, int]]:
    """One data file: good records, the converted ones, then one record per bad kind."""
    data = tmp_path / "data"
    shutil.copytree(shapes_dir / "images", data / "images")
    write_images(data, tmp_path / "outside", png_claiming_size)
    records = json.loads((shapes_dir / "train.json").read_text())[:GOOD]
    index = {}
    for kind, record in CONVERTED.items():
        index[kind] = len(records)
        records.append(record)
    for kind, (record, _, _) in BAD.items():
        index[kind] = len(records)
        records.append(record)
    path = data / "train.json"
    path.write_text(json.dumps(records), encoding="utf-8")
    return path, index


def train(tmp_path: Path, data_file: Path, **overrides) -> tuple[int, str, str]:
    config = {
        "model_name_or_path": "qwen_vl/tiny",
        "model_options": {"random_init": True},
        "dataset": {"train": [{"name": "chatml_dataset", "data_files": str(data_file)}]},
        "output_dir": str(tmp_path / "out"),
        "per_device_train_batch_size": 4,
        "num_train_epochs": 1,
        "learning_rate": 1e-3,
        "logging_steps": 1,
        "save_strategy": "no",
        "max_length": 96,
        "seed": 3,
        "disable_tqdm": True,
        **overrides,
    }
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config), encoding="utf-8")
    result = run_cli(["train", "--config", str(path), "--json"], entry_points=True)
    return result.exit_code, result.stdout, result.stderr


def test_corpus_has_at_least_twelve_kinds_of_damage():
    assert len(BAD) >= 12


def test_skip_policy_counts_every_bad_record_and_trains_on_the_rest(tmp_path, corpus):
    data_file, index = corpus
    code, stdout, stderr = train(tmp_path, data_file, on_bad_sample="skip")
    assert code == 0, stderr[-3000:]
    assert "Traceback" not in stdout + stderr
    skipped = json.loads((tmp_path / "out" / "skipped_samples.json").read_text())
    by_index = {entry["index"]: entry for entry in skipped}
    for kind, (_, fragment, stage) in BAD.items():
        entry = by_index.get(index[kind])
        assert entry is not None, f"{kind} was not skipped"
        assert fragment in entry["reason"], (kind, entry["reason"])
        assert entry["stage"] == stage, (kind, entry["stage"])
        assert entry["source"] == str(data_file)
    # Nothing else was skipped: the good and the converted records trained.
    assert set(by_index) == {index[kind] for kind in BAD}
    summary = json.loads(stdout[stdout.index("{\n") :])
    build = sum(stage == "build" for _, _, stage in BAD.values())
    assert summary["skipped"] == {"build": build, "batch": len(BAD) - build}
    assert f"skipped {len(BAD)} sample(s) in all" in stdout
    assert summary["global_step"] >= 1 and summary["train_loss"] > 0


@pytest.mark.parametrize("kind", sorted(BAD))
def test_error_policy_stops_at_the_bad_record_naming_it(tmp_path, corpus, kind):
    data_file, index = corpus
    records = json.loads(data_file.read_text())
    keep = [*records[:GOOD], records[index[kind]]]  # the good records and this one bad record
    single = data_file.with_name("single.json")
    single.write_text(json.dumps(keep), encoding="utf-8")
    code, stdout, stderr = train(tmp_path, single)
    _, fragment, _ = BAD[kind]
    assert code == 2, stdout[-2000:] + stderr[-2000:]
    assert f"single.json record {GOOD}" in stderr and fragment in stderr
    assert "Traceback" not in stderr
    # It did not train on silently: no weights written, no summary printed.
    out = tmp_path / "out"
    assert not out.exists() or not list(out.rglob("*.safetensors"))
    assert '"global_step"' not in stdout


def test_cmyk_and_sixteen_bit_images_train_after_a_correct_conversion(tmp_path, corpus):
    from mixcore.kit.images import load_image

    data_file, index = corpus
    images = data_file.parent / "images"
    red = np.asarray(load_image(images / "cmyk.jpg"))[16, 16].astype(int)
    assert red[0] >= 245 and red[1] <= 10 and red[2] <= 10
    ramp = np.asarray(load_image(images / "deep16.png"))[0, :, 0]
    assert ramp[0] == 0 and ramp[-1] == 255 and (np.diff(ramp.astype(int)) >= 0).all()
    records = json.loads(data_file.read_text())
    keep = records[:GOOD] + [records[index[k]] for k in CONVERTED]
    single = data_file.with_name("converted.json")
    single.write_text(json.dumps(keep), encoding="utf-8")
    code, stdout, stderr = train(tmp_path, single)
    assert code == 0, stderr[-2000:]
    assert "skipped" not in stdout.split("{\n")[0]


def test_a_file_that_is_not_utf8_stops_even_when_skipping(tmp_path, corpus):
    data_file, _ = corpus
    latin1 = data_file.with_name("latin1.json")
    latin1.write_bytes('[{"conversations": [["Café?", "oui"]]}]'.encode("latin-1"))
    code, _, stderr = train(tmp_path, latin1, on_bad_sample="skip")
    assert code == 2 and "not UTF-8" in stderr and "latin1.json" in stderr
    assert "Traceback" not in stderr


def test_a_source_can_skip_while_the_run_stops_on_others(tmp_path, corpus):
    """`on_bad_sample` on a dataset entry overrides the top-level one, at load time too."""
    data_file, index = corpus
    records = json.loads(data_file.read_text())
    with_bad = data_file.with_name("web.json")  # a decode-time problem: found in a batch
    with_bad.write_text(json.dumps([*records[:GOOD], records[index["truncated image"]]]))
    clean = data_file.with_name("clean.json")
    clean.write_text(json.dumps(records[:GOOD]))

    def run(web: str, top: str) -> tuple[int, str, str]:
        sources = [
            {"name": "chatml_dataset", "data_files": str(clean), "label": "clean"},
            {
                "name": "chatml_dataset",
                "data_files": str(with_bad),
                "label": "web",
                "on_bad_sample": web,
            },
        ]
        # The second run replaces the first one's output (a non-empty folder is refused).
        return train(
            tmp_path,
            with_bad,
            dataset={"train": sources},
            on_bad_sample=top,
            overwrite_output_dir=True,
        )

    code, stdout, stderr = run(web="skip", top="error")
    assert code == 0, stderr[-2000:]
    assert json.loads(stdout[stdout.index("{\n") :])["skipped"] == {"batch": 1}
    code, _, stderr = run(web="error", top="skip")
    assert code == 2 and f"web.json record {GOOD}" in stderr and "truncated" in stderr


def test_dry_run_finds_every_bad_record_up_front_and_trains_nothing(tmp_path, corpus):
    data_file, index = corpus
    code, stdout, stderr = train_dry(tmp_path, data_file, on_bad_sample="skip")
    assert code == 0, stderr[-2000:]
    summary = json.loads(stdout[stdout.index("{\n") :])
    build = sum(stage == "build" for _, _, stage in BAD.values())
    # Decode-time problems too, without a single training step.
    assert summary["skipped"] == {"build": build, "batch": len(BAD) - build}
    assert summary["train_checked"] == GOOD + len(CONVERTED) + len(BAD) - build
    assert f"{len(BAD)} would be skipped" in stdout
    assert not (tmp_path / "dry" / "out").exists()

    records = json.loads(data_file.read_text())
    single = data_file.with_name("one_bad.json")
    single.write_text(json.dumps([*records[:GOOD], records[index["truncated image"]]]))
    code, stdout, stderr = train_dry(tmp_path, single)
    assert code == 2 and f"one_bad.json record {GOOD}" in stderr and "truncated" in stderr
    assert "Traceback" not in stderr


def train_dry(tmp_path: Path, data_file: Path, **overrides) -> tuple[int, str, str]:
    folder = tmp_path / "dry"
    folder.mkdir(exist_ok=True)
    config = {
        "model_name_or_path": "qwen_vl/tiny",
        "model_options": {"random_init": True},
        "dataset": {"train": [{"name": "chatml_dataset", "data_files": str(data_file)}]},
        "output_dir": "out",
        "max_length": 96,
        **overrides,
    }
    path = folder / "config.json"
    path.write_text(json.dumps(config), encoding="utf-8")
    result = run_cli(["train", "--config", str(path), "--dry-run", "--json"], entry_points=True)
    return result.exit_code, result.stdout, result.stderr
