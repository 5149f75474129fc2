"""Sample lengths measured by forked workers equal those measured in one process."""

from __future__ import annotations

import pytest

from mixcore.api.records import Message, Sample
from mixcore.models import load_model_bundle
from mixcore.registry import build_registry
from mixcore.train.data import measure_lengths


@pytest.fixture(scope="module")
def qwen_vl():
    registry = build_registry()
    entry, bundle = load_model_bundle(
        registry, "qwen_vl/tiny", options={"random_init": True}, seed=0
    )
    return registry, entry.name, bundle


def samples(n):
    out = []
    for i in range(n):
        images = ["pic.png"] * (1 if i % 3 else 0)
        user = ("<image>\n" if images else "") + "what is this? " * (i % 11 + 1)
        if i % 97 == 5:
            images = []  # a placeholder without its image: unencodable
        out.append(
            Sample(
                [Message("user", user), Message("assistant", "a circle " * (i % 5 + 1))],
                images=images,
                source="data.json",
                index=i,
            )
        )
    return out


def test_workers_measure_what_one_process_measures(qwen_vl):
    registry, name, bundle = qwen_vl
    data = samples(9000)  # three ranges of 4096 samples, the last short
    alone, _ = measure_lengths(registry, name, bundle, data, workers=1, progress=False)
    forked, _ = measure_lengths(registry, name, bundle, data, workers=2, progress=False)
    assert forked.lengths.tolist() == alone.lengths.tolist()
    unencodable = [i for i in range(9000) if i % 97 == 5 and i % 3]
    assert forked.reasons == alone.reasons and sorted(alone.reasons) == unencodable
    assert all(alone.lengths[i] == -1 for i in alone.reasons)
    assert "placeholder" in alone.reasons[5]
    assert (alone.lengths > 0).sum() == 9000 - len(unencodable)


def test_stop_at_bad_returns_the_first_bad_sample(qwen_vl):
    registry, name, bundle = qwen_vl
    data = samples(200)
    record, bad = measure_lengths(
        registry, name, bundle, data, stop_at_bad=True, workers=1, progress=False
    )
    assert bad is data[5] and list(record.reasons) == [5]
