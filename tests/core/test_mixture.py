"""Weighted dataset mixtures: exact shares, seeded draws, every sample used evenly."""

from __future__ import annotations

from collections import Counter

import pytest

from mixcore.mixture import MixtureSource, allocate, draw_mixture


def three_sources(sizes=(4000, 2500, 900)):
    return [
        MixtureSource("coco", sizes[0], weight=0.5),
        MixtureSource("vqa", sizes[1], weight=0.3),
        MixtureSource("chat", sizes[2], weight=0.2),
    ]


def test_weights_draw_their_share_of_ten_thousand_samples():
    pairs = draw_mixture(three_sources(), seed=3, budget=10_000)
    assert len(pairs) == 10_000
    shares = Counter(source for source, _ in pairs)
    for number, weight in enumerate((0.5, 0.3, 0.2)):
        assert abs(shares[number] / 10_000 - weight) <= 0.02
    # Allocation is exact, not merely close.
    assert [shares[i] for i in range(3)] == [5000, 3000, 2000]


def test_same_seed_same_mixture_other_seed_other_draws():
    assert draw_mixture(three_sources(), 3, 10_000) == draw_mixture(three_sources(), 3, 10_000)
    drawn = {seed: draw_mixture(three_sources(), seed, 10_000) for seed in (3, 4)}
    # The 1,000 samples of the 4,000-sample source that are seen twice depend on the seed.
    twice = {
        seed: {i for i, n in Counter(i for s, i in pairs if s == 0).items() if n == 2}
        for seed, pairs in drawn.items()
    }
    assert len(twice[3]) == len(twice[4]) == 1000 and twice[3] != twice[4]


def test_a_source_used_whole_keeps_its_order():
    pairs = draw_mixture([MixtureSource("a", 5), MixtureSource("b", 3)], seed=9)
    assert pairs == [(0, 0), (0, 1), (0, 2), (0, 3), (0, 4), (1, 0), (1, 1), (1, 2)]


def test_oversampled_source_repeats_every_sample_evenly():
    pairs = draw_mixture(three_sources(), seed=0, budget=10_000)
    chat = Counter(index for source, index in pairs if source == 2)  # 2000 draws of 900
    assert set(chat) == set(range(900))
    assert set(chat.values()) <= {2, 3}


def test_undersampled_source_takes_a_subset_without_repeats():
    pairs = draw_mixture(three_sources(), seed=0, budget=10_000)
    coco = [index for source, index in pairs if source == 0]  # 5000 draws of 4000: 1.25 passes
    counts = Counter(coco)
    assert set(counts.values()) <= {1, 2} and len(counts) == 4000
    small = draw_mixture([MixtureSource("a", 100, weight=1.0)], seed=1, budget=30)
    assert len({i for _, i in small}) == 30


def test_default_budget_is_the_weighted_sources_total_size():
    counts = allocate(three_sources((100, 100, 100)))
    assert counts == [150, 90, 60]


def test_num_samples_and_unweighted_sources():
    sources = [
        MixtureSource("fixed", 50, num_samples=120),
        MixtureSource("all", 30),
        MixtureSource("a", 10, weight=1),
        MixtureSource("b", 10, weight=3),
    ]
    assert allocate(sources) == [120, 30, 5, 15]
    assert allocate(sources, budget=7) == [120, 30, 2, 5]


def test_largest_remainder_keeps_the_total():
    sources = [MixtureSource(str(i), 10, weight=1.0) for i in range(3)]
    assert sum(allocate(sources, budget=10)) == 10
    assert sorted(allocate(sources, budget=10)) == [3, 3, 4]


def test_empty_source_cannot_be_drawn_from():
    with pytest.raises(ValueError, match="no samples"):
        draw_mixture([MixtureSource("empty", 0, num_samples=3)], seed=0)
