"""Reading a sharded source into the data cache with several processes gives the entry one
process gives: the same samples in the same order, the same refused records, the same errors."""

from __future__ import annotations

import json
import os

import pytest
from mixcore_datasets.streaming import ChatmlShards

from mixcore.api.errors import DataError, MixcoreError
from mixcore.api.records import Message, Sample
from mixcore.train import source_reading
from mixcore.train.data_cache import DataCache
from mixcore.train.source_reading import store_source


@pytest.fixture(autouse=True)
def small_sources_in_parallel(monkeypatch):
    # Sources this small are read by one process unless told otherwise.
    monkeypatch.setattr(source_reading, "PARALLEL_READ_MIN", 1)


def record(i):
    if i % 97 == 13:
        return {"conversations": "not a list"}
    return {"image": "red.png", "conversations": [[f"what is {i}?", "red " * (i % 5 + 1)]]}


def chatml_shards(tmp_path, write_png, sizes=(300, 0, 211, 5)):
    """JSON list and JSON Lines shards (one empty) with a bad record now and then."""
    write_png(tmp_path / "red.png", (200, 0, 0), 8)
    files, first = [], 0
    for n, size in enumerate(sizes):
        records = [record(first + i) for i in range(size)]
        first += size
        if n % 2:
            path = tmp_path / f"part{n}.jsonl"
            path.write_text("".join(json.dumps(r) + "\n\n" for r in records))
        else:
            path = tmp_path / f"part{n}.json"
            path.write_text(json.dumps(records))
        files.append(path)
    return ChatmlShards(files, label="chat", on_bad_sample="skip")


def read(tmp_path, source, workers, on_bad_sample="skip", name=None):
    cache = DataCache(tmp_path / "cache")
    return store_source(cache, name or f"w{workers}", source, on_bad_sample, "chat", workers)


def test_records_are_counted_as_read_shard_indexes_them(tmp_path, write_png):
    source = chatml_shards(tmp_path, write_png)
    for shard in range(len(source.shards)):
        indexes = [index for index, _ in source.read_shard(shard)]
        assert source.count_records(shard) == len(indexes)
        assert indexes == list(range(len(indexes)))


@pytest.mark.parametrize("workers", [2, 3, 7])
def test_parallel_entry_equals_the_one_process_entry(tmp_path, write_png, workers):
    source = chatml_shards(tmp_path, write_png)
    alone = read(tmp_path, source, 1)
    together = read(tmp_path, source, workers)
    assert len(alone) == len(together) == 516 - len(alone.skipped)
    assert list(together) == list(alone)
    assert together.skipped == alone.skipped and len(alone.skipped) == 6
    assert [s.index for s in alone[:3]] == [0, 1, 2]
    # Each process wrote a part (numbering names on its own); reading resolves them all.
    meta = json.loads((together.folder / "meta.json").read_text())
    assert len(meta["parts"]) == workers
    assert {s.source for s in together} == {str(p) for p in source.files if "part1" not in p.name}


def test_bad_records_under_error_raise_the_first_with_the_count_and_cache_nothing(
    tmp_path, write_png
):
    source = chatml_shards(tmp_path, write_png)
    errors = []
    for workers in (1, 2):
        with pytest.raises(DataError) as caught:
            read(tmp_path, source, workers, on_bad_sample="error")
        errors.append((caught.value.reason, caught.value.source, caught.value.index))
    assert errors[0] == errors[1]
    assert errors[0][1].endswith("part0.json") and errors[0][2] == 13
    assert "and 5 more bad records" in errors[0][0]
    assert not any((tmp_path / "cache" / "data" / "sources").iterdir())


def test_an_unreadable_shard_raises_as_one_process_does(tmp_path, write_png):
    source = chatml_shards(tmp_path, write_png)
    with open(source.files[1], "ab") as out:
        out.write(b'{"conversations": [["\xff", "x"]]}\n')
    errors = []
    for workers in (1, 2):
        with pytest.raises(DataError) as caught:
            read(tmp_path, source, workers)
        errors.append(str(caught.value))
    assert errors[0] == errors[1] and "not UTF-8" in errors[0]


class Numbers:
    """A sharded source of numbered samples: ``sizes[i]`` records in shard ``i``."""

    def __init__(self, sizes, die_in=None):
        self.sizes, self.die_in, self.parent = sizes, die_in, os.getpid()
        self.shards = [f"numbers-{i}" for i in range(len(sizes))]

    def count_records(self, shard):
        return self.sizes[shard]

    def read_shard(self, shard, start=0):
        for index in range(start, self.sizes[shard]):
            if shard == self.die_in and os.getpid() != self.parent:
                os._exit(3)  # a worker killed mid-read (out of memory, say)
            yield index, Sample([Message("user", f"{shard}.{index}")], source=self.shards[shard])


@pytest.mark.parametrize("sizes", [(10,), (0, 3, 0, 4), (1, 1, 1, 1, 1), (9, 0)])
def test_every_record_is_read_once_in_order_whatever_the_shard_sizes(tmp_path, sizes):
    texts = [m.content for s in read(tmp_path, Numbers(sizes), 4) for m in s.messages]
    assert texts == [f"{shard}.{i}" for shard, n in enumerate(sizes) for i in range(n)]


def test_a_worker_that_dies_is_an_error_not_a_hang(tmp_path):
    with pytest.raises(MixcoreError, match="died"):
        read(tmp_path, Numbers((50, 50), die_in=1), 2)
    assert not any((tmp_path / "cache" / "data" / "sources").iterdir())


def test_a_source_that_cannot_count_is_read_by_one_process(tmp_path, write_png):
    source = chatml_shards(tmp_path, write_png, sizes=(40,))
    source.count_records = lambda shard: None
    entry = read(tmp_path, source, 2)
    assert len(json.loads((entry.folder / "meta.json").read_text())["parts"]) == 1
    assert len(entry) == 40 - len(entry.skipped)
