"""chatml_dataset with ``streaming: true``: JSON Lines, JSON and webdataset .tar shards read
record by record from any position, globs in data_files, bad records named by shard and index."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest

from mixcore.api.errors import DataError
from mixcore.api.records import IMAGE_PLACEHOLDER, Sample, ShardedSource
from mixcore.registry import build_registry


@pytest.fixture(scope="module")
def registry():
    return build_registry(environ={"MIXCORE_PLUGINS": "datasets"})


def build(registry, base: Path, **options):
    options = {"name": "chatml_dataset", "label": "s", "on_bad_sample": "skip", **options}
    return registry.hook.build_dataset(
        dataset_name="chatml_dataset", options={"streaming": True, **options}, base_dir=str(base)
    )


def record(n: int, **extra):
    return {"conversations": [[f"question {n}", f"answer {n}"]], **extra}


def add(archive: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    archive.addfile(info, io.BytesIO(data))


def test_json_lines_shards_from_a_glob_read_from_any_record(registry, tmp_path):
    for k in range(2):
        lines = [json.dumps(record(10 * k + i)) for i in range(4)]
        lines.insert(2, "")  # blank lines are not records
        (tmp_path / f"part-{k}.jsonl").write_text("\n".join(lines))
    source = build(registry, tmp_path, data_files="part-*.jsonl")
    assert isinstance(source, ShardedSource)
    assert source.shards == [str(tmp_path / "part-0.jsonl"), str(tmp_path / "part-1.jsonl")]
    whole = list(source.read_shard(1))
    assert [i for i, _ in whole] == [0, 1, 2, 3]
    assert whole[3][1].messages[1].content == "answer 13"
    assert [(i, s.messages[1].content) for i, s in source.read_shard(1, start=2)] == [
        (2, "answer 12"),
        (3, "answer 13"),
    ]


def test_a_bad_json_line_is_a_bad_record_named_with_its_shard_and_index(registry, tmp_path):
    (tmp_path / "a.jsonl").write_text(
        json.dumps(record(0)) + "\n{not json\n" + json.dumps({"x": 1}) + "\n"
    )
    items = list(build(registry, tmp_path, data_files="a.jsonl").read_shard(0))
    assert isinstance(items[0][1], Sample)
    for i in (1, 2):
        error = items[i][1]
        assert isinstance(error, DataError)
        assert (error.source, error.index) == (str(tmp_path / "a.jsonl"), i)
    assert "invalid JSON on line 2" in items[1][1].reason


def test_json_list_shards_read_from_a_position(registry, tmp_path):
    (tmp_path / "a.json").write_text(json.dumps([record(i) for i in range(3)]))
    source = build(registry, tmp_path, data_files=["a.json"])
    assert [i for i, _ in source.read_shard(0, start=1)] == [1, 2]


def test_webdataset_tar_samples_get_their_image_members(registry, tmp_path, write_png):
    png = write_png(tmp_path / "x.png").read_bytes()
    with tarfile.open(tmp_path / "shard.tar", "w") as archive:
        add(archive, "a/000.json", json.dumps(record(0)).encode())
        add(archive, "a/000.png", png)
        # An image named by the record, relative to the shard.
        add(archive, "a/001.json", json.dumps(record(1, image="a/001.side.png")).encode())
        add(archive, "a/001.side.png", png)
        add(archive, "a/002.txt", b"no record")
        add(archive, "a/003.json", json.dumps(record(3)).encode())
    source = build(registry, tmp_path, data_files="shard.tar", extract_dir="cache")
    items = list(source.read_shard(0))
    assert [i for i, _ in items] == [0, 1, 2, 3]
    first, second, third, fourth = (item for _, item in items)
    assert first.images[0].read_bytes() == png
    assert (tmp_path / "cache") in first.images[0].parents
    assert first.messages[0].content.startswith(f"{IMAGE_PLACEHOLDER}\n")
    assert first.source == str(tmp_path / "shard.tar") and first.index == 0
    assert second.images[0].name == "001.side.png"
    assert isinstance(third, DataError) and third.index == 2
    assert "sample 'a/002' has no a/002.json member" in third.reason
    assert fourth.images == []
    # From a position: the earlier samples are passed over.
    assert [i for i, _ in source.read_shard(0, start=3)] == [3]


def test_a_tar_member_leaving_the_shard_is_a_bad_record(registry, tmp_path):
    with tarfile.open(tmp_path / "shard.tar", "w") as archive:
        add(archive, "../evil.json", json.dumps(record(0)).encode())
    ((_, item),) = build(registry, tmp_path, data_files="shard.tar").read_shard(0)
    assert isinstance(item, DataError) and "leaves the shard" in item.reason


def test_a_glob_matching_nothing_is_reported(registry, tmp_path):
    with pytest.raises(DataError, match="no file matches"):
        build(registry, tmp_path, data_files="missing-*.jsonl")
