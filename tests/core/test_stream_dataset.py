"""The streamed training dataset on in-memory sharded sources: mixing, packing, exact resume."""

from __future__ import annotations

import json
from collections import Counter
from types import SimpleNamespace

import numpy as np
import pytest

from mixcore.api.errors import DataError
from mixcore.api.records import Message, Sample, ShardedSource
from mixcore.train.data import PROBLEMS_KEY, SOURCE_IDS_KEY
from mixcore.train.stream import (
    STREAM_STATE_FILE,
    SequenceShards,
    StreamError,
    StreamingDataset,
    StreamSpec,
)


class Shards:
    """``shards`` shards of ``records`` records; sample ``(shard, i)`` is ``length(shard, i)``
    tokens long; records listed in ``bad`` are yielded as DataErrors."""

    def __init__(self, name: str, shards: int, records: int, bad=(), length=None) -> None:
        self.name, self.records, self.bad = name, records, set(bad)
        self.shards = [f"{name}/{k}" for k in range(shards)]
        self.length = length or (lambda shard, i: 3 + (shard * 7 + i) % 9)
        self.opened: list[tuple[int, int]] = []

    def read_shard(self, shard: int, start: int = 0):
        self.opened.append((shard, start))
        for i in range(start, self.records):
            source = self.shards[shard]
            if (shard, i) in self.bad:
                yield i, DataError("broken record", source=source, index=i)
                continue
            text = f"{self.length(shard, i)}"
            yield (
                i,
                Sample([Message("user", "q"), Message("assistant", text)], source=source, index=i),
            )


def preprocess(sample: Sample) -> dict:
    n = int(sample.messages[1].content)
    tag = hash((sample.source, sample.index)) % 1000
    return {"input_ids": np.full(n, tag, dtype=np.int64), "labels": np.full(n, tag, dtype=np.int64)}


def measure(sample: Sample) -> int:
    return int(sample.messages[1].content)


def stream(sources, weights=None, seed=3, **kw) -> StreamingDataset:
    weights = weights or [1.0] * len(sources)
    specs = [
        StreamSpec(
            label=s.name, source=s, weight=w, on_bad_sample=kw.pop(f"policy_{s.name}", "skip")
        )
        for s, w in zip(sources, weights, strict=True)
    ]
    kw.setdefault("max_length", 32)
    return StreamingDataset(specs, preprocess, seed=seed, **kw)


def take(dataset, n):
    out = []
    for item in dataset:
        out.append(item)
        if len(out) == n:
            return out
    return out


def ids(items):
    return [item["input_ids"].tolist() for item in items]


def args(batch=2, accumulation=1, world=1):
    return SimpleNamespace(
        per_device_train_batch_size=batch,
        gradient_accumulation_steps=accumulation,
        dataset_world_size=world,
    )


def test_sharded_sources_match_the_protocol():
    assert isinstance(Shards("a", 2, 3), ShardedSource)
    assert isinstance(SequenceShards([], "x"), ShardedSource)


def test_mixing_follows_the_weights():
    a, b = Shards("a", 4, 50), Shards("b", 3, 40)
    items = take(stream([a, b], [0.75, 0.25], buffer=100), 2000)
    counts = Counter(int(item[SOURCE_IDS_KEY][0]) for item in items)
    assert abs(counts[0] / 2000 - 0.75) < 0.03 and abs(counts[1] / 2000 - 0.25) < 0.03


def test_the_stream_is_a_function_of_the_seed():
    def run(seed):
        return ids(take(stream([Shards("a", 3, 7), Shards("b", 2, 5)], seed=seed, buffer=8), 60))

    assert run(3) == run(3)
    assert run(3) != run(4)


def test_sources_wrap_around_and_shuffle_each_pass():
    source = Shards("a", 3, 4)
    take(stream([source], buffer=5), 36)  # three passes over the 12 records
    shards = [shard for shard, start in source.opened]
    passes = [shards[0:3], shards[3:6], shards[6:9]]
    assert all(sorted(p) == [0, 1, 2] for p in passes)
    assert len({tuple(p) for p in passes}) > 1  # seed 3 draws different orders


def test_packs_over_the_buffer_stay_within_capacity():
    dataset = stream(
        [Shards("a", 3, 20), Shards("b", 2, 15)],
        buffer=16,
        pack=True,
        max_length=20,
        measure=measure,
    )
    items = take(dataset, 80)
    assert all(len(item["input_ids"]) <= 20 for item in items)
    assert any(item["segment_ids"].max() > 1 for item in items)  # samples really were packed
    assert all(item[PROBLEMS_KEY]["fatal"] is None for item in items)


@pytest.mark.parametrize("pack", [False, True])
@pytest.mark.parametrize("consumed", [0, 6, 14, 30])
def test_a_restored_stream_continues_exactly_where_it_stopped(tmp_path, pack, consumed):
    def make():
        return stream(
            [Shards("a", 3, 11, bad=[(1, 4)]), Shards("b", 2, 9)],
            [0.6, 0.4],
            buffer=10,
            pack=pack,
            measure=measure if pack else None,
        )

    straight = take(make(), 50)
    first = make()
    took = take(first, consumed + 8)  # the loader reads ahead of what was trained
    assert ids(took) == ids(straight[: consumed + 8])
    first.save_state(tmp_path, consumed // 2, args(batch=2))
    state = json.loads((tmp_path / STREAM_STATE_FILE).read_text())
    assert state["items"] == consumed
    second = make()
    second.restore(tmp_path)
    assert ids(take(second, 50 - consumed)) == ids(straight[consumed:])


def test_resume_reads_shards_from_the_saved_record(tmp_path):
    a = Shards("a", 2, 1000)
    first = stream([a], buffer=4)
    take(first, 30)
    first.save_state(tmp_path, 10, args(batch=2))  # 20 items
    b = Shards("a", 2, 1000)
    second = stream([b], buffer=4)
    second.restore(tmp_path)
    take(second, 1)
    # Item 20 ends block 4 (4 samples a block), which began at record 16: the resumed stream
    # rebuilds that block from there and skips its items, never reading records 0-15.
    assert b.opened == [(a.opened[0][0], 16)]


def test_a_changed_source_refuses_the_saved_position(tmp_path):
    first = stream([Shards("a", 2, 5)], buffer=4)
    take(first, 3)
    first.save_state(tmp_path, 1, args())
    other = stream([Shards("a", 3, 5)], buffer=4)
    with pytest.raises(StreamError, match=r"sources of dataset\.train changed"):
        other.restore(tmp_path)
    with pytest.raises(StreamError, match=r"has no stream_state\.json"):
        other.restore(tmp_path / "missing")


def test_bad_records_are_skipped_with_their_shard_and_index():
    source = Shards("a", 1, 6, bad=[(0, 2)])
    items = take(stream([source], buffer=3), 5)
    notes = [n for item in items for n in item[PROBLEMS_KEY]["skipped"]]
    assert notes == [["a/0", 2, "broken record"]]
    assert len(items) == 5  # the slot was filled by the next record


def test_a_bad_record_under_error_stops_the_stream_naming_it():
    source = Shards("a", 1, 6, bad=[(0, 2)])
    items = take(stream([source], buffer=3, policy_a="error"), 10)
    assert items[-1][PROBLEMS_KEY]["fatal"] == ["a/0", 2, "broken record"]
    assert len(items) == 1  # stops when the block holding it is drawn


def test_a_source_with_no_usable_record_stops_instead_of_spinning():
    source = Shards("a", 2, 2, bad=[(0, 0), (0, 1), (1, 0), (1, 1)])
    items = take(stream([source], buffer=3), 3)
    assert items[-1][PROBLEMS_KEY]["fatal"] is None
    assert "no usable sample" in items[-1][PROBLEMS_KEY]["error"]["reason"]


def test_overlong_samples_are_dropped_under_drop():
    long = Shards("a", 1, 10, length=lambda shard, i: 40 if i % 2 else 5)
    items = take(stream([long], buffer=4, max_length=32, measure=measure, overlong="drop"), 6)
    assert all(len(item["input_ids"]) == 5 for item in items)
    assert any(
        "exceed max_length 32" in n[2] for item in items for n in item[PROBLEMS_KEY]["skipped"]
    )


def test_a_plain_sequence_streams_as_one_shard():
    samples = [
        Sample([Message("user", "q"), Message("assistant", "4")], source="f", index=i)
        for i in range(3)
    ]
    spec = StreamSpec("seq", SequenceShards(samples, "seq"), 1.0, "error")
    items = take(StreamingDataset([spec], preprocess, seed=0, buffer=2, max_length=8), 7)
    assert len(items) == 7 and all(len(item["input_ids"]) == 4 for item in items)
