"""The synthetic shapes dataset is deterministic, split-disjoint and answers what it draws."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from mixcore_datasets.chatml import ChatmlDataset
from mixcore_datasets.synthetic import COLORS, QUESTIONS, generate_shapes_dataset
from PIL import Image

SIZE = 56


def records(path: Path) -> list[dict]:
    return json.loads(path.read_text(encoding="utf-8"))


def image_of(out_dir: Path, record: dict) -> Path:
    user = record["conversations"][0][0]
    return out_dir / user[len("<img>") : user.index("</img>")]


def read_back(path: Path) -> dict[str, str]:
    """Recover the drawn attributes from the pixels alone, independently of the generator."""
    pixels = np.asarray(Image.open(path).convert("RGB")).astype(int)
    size = pixels.shape[0]
    mask = (pixels != 255).any(axis=2)
    ys, xs = np.nonzero(mask)
    mean = pixels[mask].mean(axis=0)
    color = min(COLORS, key=lambda name: np.abs(np.array(COLORS[name]) - mean).sum())
    cx, cy = (xs.min() + xs.max()) / 2, (ys.min() + ys.max()) / 2
    if abs(cx - size / 2) > abs(cy - size / 2):
        position = "left" if cx < size / 2 else "right"
    else:
        position = "top" if cy < size / 2 else "bottom"
    width, height = xs.max() - xs.min() + 1, ys.max() - ys.min() + 1
    fill = mask.sum() / (width * height)
    box = mask[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
    upper, lower = box[height // 4].sum(), box[3 * height // 4].sum()
    if fill > 0.95:
        shape = "square"
    elif fill > 0.65:
        shape = "circle"
    else:
        shape = "triangle" if lower > upper + 2 else "diamond"
    return {
        "shape": shape,
        "color": color,
        "size": "large" if width > 0.32 * size else "small",
        "position": position,
    }


@pytest.fixture
def dataset(tmp_path) -> tuple[Path, dict[str, Path]]:
    out = tmp_path / "shapes"
    paths = generate_shapes_dataset(
        out, seed=7, n_train=48, n_val=8, n_test=8, image_size=SIZE, question_types=list(QUESTIONS)
    )
    return out, paths


def test_same_seed_gives_identical_files_and_pixels(tmp_path):
    first = generate_shapes_dataset(tmp_path / "a", seed=3, n_train=12, n_val=4, n_test=4)
    second = generate_shapes_dataset(tmp_path / "b", seed=3, n_train=12, n_val=4, n_test=4)
    for split in ("train", "val", "test"):
        assert first[split].read_bytes() == second[split].read_bytes()
        for record in records(first[split]):
            a = np.asarray(Image.open(image_of(tmp_path / "a", record)))
            b = np.asarray(Image.open(image_of(tmp_path / "b", record)))
            assert np.array_equal(a, b)


def test_different_seeds_give_different_data(tmp_path):
    first = generate_shapes_dataset(tmp_path / "a", seed=1, n_train=12, n_val=0, n_test=0)
    second = generate_shapes_dataset(tmp_path / "b", seed=2, n_train=12, n_val=0, n_test=0)
    assert first["train"].read_bytes() != second["train"].read_bytes()


def test_splits_share_no_image_file_content_or_attributes(dataset):
    out, paths = dataset
    files, digests, specs = {}, {}, {}
    for split, path in paths.items():
        recs = records(path)
        files[split] = {image_of(out, r) for r in recs}
        digests[split] = {
            hashlib.sha256(np.asarray(Image.open(image_of(out, r))).tobytes()).hexdigest()
            for r in recs
        }
        specs[split] = {
            tuple(v for k, v in r["meta"].items() if k != "question_type") for r in recs
        }
        assert len(files[split]) == len(digests[split]) == len(specs[split]) == len(recs)
    for a, b in [("train", "val"), ("train", "test"), ("val", "test")]:
        assert not files[a] & files[b]
        assert not digests[a] & digests[b]
        assert not specs[a] & specs[b]


def test_answers_match_what_is_drawn(dataset):
    out, paths = dataset
    for path in paths.values():
        for record in records(path):
            drawn = read_back(image_of(out, record))
            meta = record["meta"]
            assert drawn == {k: meta[k] for k in ("shape", "color", "size", "position")}
            question, answer = record["conversations"][0]
            qtype = meta["question_type"]
            assert question.endswith(QUESTIONS[qtype][0])
            assert answer == drawn[QUESTIONS[qtype][1]]
            assert len(answer.split()) == 1


def test_question_types_rotate_and_held_out_types_never_appear(tmp_path):
    paths = generate_shapes_dataset(
        tmp_path, seed=0, n_train=20, n_val=0, n_test=0, question_types=("shape", "color")
    )
    kinds = Counter(r["meta"]["question_type"] for r in records(paths["train"]))
    assert kinds == {"shape": 10, "color": 10}
    questions = {r["conversations"][0][0].split("\n", 1)[1] for r in records(paths["train"])}
    assert questions == {QUESTIONS["shape"][0], QUESTIONS["color"][0]}


def test_output_is_valid_chatml_with_images_under_images(dataset):
    out, paths = dataset
    data = ChatmlDataset([paths["train"]])
    assert len(data) == 48
    sample = data[0]
    assert sample.messages[0].content.startswith("<image>\n")
    assert sample.images[0].parent == out / "images"
    assert Image.open(sample.images[0]).size == (SIZE, SIZE)


def test_coco_and_vqa_layouts_read_back_with_their_readers(tmp_path):
    from mixcore_datasets.coco import CocoCaptionDataset
    from mixcore_datasets.vqa import VqaDataset

    common = {"seed": 1, "n_train": 6, "n_val": 1, "n_test": 1, "question_types": ("color",)}
    coco = generate_shapes_dataset(tmp_path / "coco", format="coco", **common)["train"]
    vqa = generate_shapes_dataset(tmp_path / "vqa", format="vqa", **common)["train"]
    chat = generate_shapes_dataset(tmp_path / "chat", **common)["train"]
    colours = [r["meta"]["color"] for r in records(chat)]
    layout = json.loads(coco.read_text())
    assert len(layout["images"]) == 6 and len(layout["annotations"]) == 12
    captions = CocoCaptionDataset([coco])
    assert len(captions) == 12  # two captions per image, one sample each
    for n, colour in enumerate(colours):
        assert colour in captions[2 * n].messages[-1].content
    questions = VqaDataset([vqa])
    # Two of three annotators give the drawn colour: the majority answer is the right one.
    assert [s.messages[-1].content for s in questions] == colours
    assert questions[0].images[0].read_bytes() == captions[0].images[0].read_bytes()


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        ({"n_train": 100_000}, "distinct"),
        ({"question_types": ("shape", "texture")}, "unknown question types"),
        ({"question_types": ()}, "empty"),
        ({"question_types": ("shape", "shape")}, "duplicates"),
        ({"format": "parquet"}, "unsupported format"),
        ({"image_size": 8}, "at least 16"),
        ({"n_val": -1}, "non-negative"),
    ],
)
def test_bad_arguments_are_refused(tmp_path, kwargs, reason):
    arguments = {"seed": 0, "n_train": 2, "n_val": 1, "n_test": 1, **kwargs}
    with pytest.raises(ValueError, match=reason):
        generate_shapes_dataset(tmp_path, **arguments)


def _build_shapes(folder: str, base: Path):
    from mixcore_datasets.plugin import build_dataset

    return build_dataset(
        "synthetic_shapes",
        {
            "folder": folder,
            "train_records": 4,
            "val_records": 1,
            "test_records": 1,
            "on_bad_sample": "error",
            "label": "shapes",
        },
        str(base),
    )


def test_never_writes_into_a_folder_it_did_not_make(tmp_path):
    from mixcore.api.errors import DataError

    mine = tmp_path / "my-data"
    mine.mkdir()
    (mine / "train.json").write_text('["the user\'s own records"]')
    with pytest.raises(DataError, match="not made by synthetic_shapes"):
        _build_shapes("my-data", tmp_path)
    assert (mine / "train.json").read_text() == '["the user\'s own records"]'
    assert sorted(p.name for p in mine.iterdir()) == ["train.json"]


def test_regenerates_its_own_folder_and_one_cut_short(tmp_path):
    samples = _build_shapes("gen", tmp_path)
    assert len(samples) == 4
    marker = tmp_path / "gen" / ".complete"
    marker.write_text("generating")  # as a generation killed half-way leaves it
    (tmp_path / "gen" / "train.json").unlink()
    assert len(_build_shapes("gen", tmp_path)) == 4
    assert marker.read_text() != "generating"
